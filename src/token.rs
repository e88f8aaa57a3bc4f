//! The session token and its guard.
//!
//! The token is the one secret the relay holds. It lives in [`SessionToken`],
//! whose `Debug` and `Display` print a placeholder, so no log line, error or
//! panic message can carry it; the only way to its bytes is the explicit
//! [`SessionToken::expose`], used where the gateway's headers are built.
//! [`forbid_dumping`] keeps same-uid processes from ptracing the relay or
//! reading its memory and environment.

use std::fmt;
use std::io;
use std::path::Path;

/// What a redacted secret prints as.
pub const REDACTED: &str = "[redacted]";

/// The session token, redacted in every printed form.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// Wraps a token (trimmed of surrounding white space). `None` when empty.
    pub fn new(raw: &str) -> Option<SessionToken> {
        let trimmed = raw.trim();
        (!trimmed.is_empty()).then(|| SessionToken(trimmed.to_string()))
    }

    /// The token's text, for building the gateway's auth headers only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionToken({REDACTED})")
    }
}

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Why the token could not be read (gate 4). Never holds the token.
#[derive(Debug)]
pub enum TokenError {
    /// The file could not be read.
    Unreadable(io::Error),
    /// The file holds only white space.
    Empty,
    /// The file is not UTF-8 text.
    NotText,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Unreadable(e) => write!(f, "cannot read it: {e}"),
            TokenError::Empty => f.write_str("it is empty"),
            TokenError::NotText => f.write_str("it is not UTF-8 text"),
        }
    }
}

/// Largest token file read; a token is a few hundred bytes.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Reads and trims the token file.
pub fn read_token_file(path: &Path) -> Result<SessionToken, TokenError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE).read_to_end(&mut bytes))
        .map_err(TokenError::Unreadable)?;
    let text = String::from_utf8(bytes).map_err(|_| TokenError::NotText)?;
    SessionToken::new(&text).ok_or(TokenError::Empty)
}

/// Makes this process non-dumpable: same-uid processes can no longer
/// ptrace it or read `/proc/PID/mem` and `/proc/PID/environ`.
pub fn forbid_dumping() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Read it back: a seccomp filter could have turned the call into a no-op.
    // SAFETY: as above.
    let now = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    if now != 0 {
        return Err(io::Error::other(format!(
            "PR_GET_DUMPABLE still reports {now}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printing_never_shows_the_token() {
        let token = SessionToken::new("  s3cr3t-token\n").unwrap();
        assert_eq!(token.expose(), "s3cr3t-token");
        for printed in [
            format!("{token}"),
            format!("{token:?}"),
            format!("{token:#?}"),
            format!("{:?}", Some(&token)),
        ] {
            assert!(!printed.contains("s3cr3t"), "{printed}");
        }
    }

    #[test]
    fn blank_tokens_are_refused() {
        assert!(SessionToken::new("").is_none());
        assert!(SessionToken::new(" \n\t ").is_none());
    }

    #[test]
    fn reads_and_trims_the_file() {
        let dir = std::env::temp_dir().join(format!("ccr-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("session_token");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap().expose(), "abc");
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(read_token_file(&path), Err(TokenError::Empty)));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_token_file(&path), Err(TokenError::NotText)));
        assert!(matches!(
            read_token_file(&dir.join("missing")),
            Err(TokenError::Unreadable(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
