//! The session token as the gateway client holds it: [`SessionToken`],
//! whose `Debug` and `Display` print a placeholder, so no log line, error
//! or panic message can carry it (the only way to its bytes is the explicit
//! [`SessionToken::expose`], used where the gateway's headers are built);
//! where it came from ([`TokenOrigin`]); and the [`TokenSource`] every
//! tunnel asks for the token to present, which re-reads the session-ingress
//! file the platform may rewrite. Finding the token at start-up, and
//! guarding it, is start-up's (`crate::startup::token`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Source 2 of the agent proxy: the token itself.
pub const ACCESS_TOKEN_VAR: &str = "CLAUDE_CODE_SESSION_ACCESS_TOKEN";

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
    /// Every source of the agent-proxy generation failed: one line per
    /// source, saying which and why (never a token).
    NoSource(Vec<String>),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Unreadable(e) => write!(f, "cannot read it: {e}"),
            TokenError::Empty => f.write_str("it is empty"),
            TokenError::NotText => f.write_str("it is not UTF-8 text"),
            TokenError::NoSource(tried) => {
                write!(f, "no source holds a token ({})", tried.join("; "))
            }
        }
    }
}

impl std::error::Error for TokenError {}

/// Largest token file read; a token is a few hundred bytes.
pub(crate) const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Which file a path named: its device and inode. A file renamed over the
/// path since (a token rewritten by a supervisor) has another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Reads and trims the token file.
///
/// Only a regular file is read, and it is opened without blocking, so a FIFO
/// planted at the path cannot hang the relay.
pub fn read_token_file(path: &Path) -> Result<SessionToken, TokenError> {
    read_token_file_identified(path).map(|(token, _)| token)
}

/// [`read_token_file`], and which file the token was read from (for
/// [`remove_token_file`]).
pub fn read_token_file_identified(path: &Path) -> Result<(SessionToken, FileIdentity), TokenError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = Vec::new();
    let identity = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| {
            let meta = f.metadata()?;
            if !meta.is_file() {
                return Err(io::Error::other("not a regular file"));
            }
            f.take(MAX_TOKEN_FILE).read_to_end(&mut bytes)?;
            Ok(FileIdentity::of(&meta))
        })
        .map_err(TokenError::Unreadable)?;
    Ok((token_from_bytes(bytes)?, identity))
}

pub(crate) fn token_from_bytes(bytes: Vec<u8>) -> Result<SessionToken, TokenError> {
    let text = String::from_utf8(bytes).map_err(|_| TokenError::NotText)?;
    SessionToken::new(&text).ok_or(TokenError::Empty)
}

/// Where the start-up token came from (for `doctor` and the status page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOrigin {
    /// The token file (`/run/ccr/session_token` or `--token-file`).
    TokenFile,
    /// `CLAUDE_CODE_SESSION_ACCESS_TOKEN`.
    AccessTokenVar,
    /// The descriptor named by `CLAUDE_CODE_WEBSOCKET_AUTH_FILE_DESCRIPTOR`.
    AuthFd,
    /// The session-ingress token file.
    IngressFile,
    /// `AGENT_PROXY_AUTH_TOKEN` (standalone mode): fixed, never re-read.
    Standalone,
}

impl TokenOrigin {
    /// A short phrase naming the source.
    pub fn describe(self) -> &'static str {
        match self {
            TokenOrigin::TokenFile => "the token file",
            TokenOrigin::AccessTokenVar => ACCESS_TOKEN_VAR,
            TokenOrigin::AuthFd => {
                "the descriptor named by CLAUDE_CODE_WEBSOCKET_AUTH_FILE_DESCRIPTOR"
            }
            TokenOrigin::IngressFile => "the session-ingress token file",
            TokenOrigin::Standalone => "AGENT_PROXY_AUTH_TOKEN",
        }
    }
}

struct SourceInner {
    startup: SessionToken,
    origin: TokenOrigin,
    /// The session-ingress file to re-read; `None` for a fixed token.
    ingress: Option<PathBuf>,
    /// The token file the start-up token was read from.
    token_file: Option<FileIdentity>,
}

/// The token to present, shared by every tunnel: cheap to clone (one
/// `Arc`), `Send` and `Sync`. Redacted when printed.
#[derive(Clone)]
pub struct TokenSource(Arc<SourceInner>);

impl TokenSource {
    /// A token that never changes (the upstream proxy, standalone mode).
    pub fn fixed(token: SessionToken, origin: TokenOrigin) -> TokenSource {
        TokenSource(Arc::new(SourceInner {
            startup: token,
            origin,
            ingress: None,
            token_file: None,
        }))
    }

    /// A start-up token that the session-ingress file at `ingress_file`
    /// overrides whenever that file holds a non-empty token.
    pub fn rereading(
        startup: SessionToken,
        origin: TokenOrigin,
        ingress_file: PathBuf,
    ) -> TokenSource {
        TokenSource(Arc::new(SourceInner {
            startup,
            origin,
            ingress: Some(ingress_file),
            token_file: None,
        }))
    }

    /// The same source, its start-up token read from the token file that
    /// is `file`.
    pub fn read_from(self, file: FileIdentity) -> TokenSource {
        TokenSource(Arc::new(SourceInner {
            startup: self.0.startup.clone(),
            origin: self.0.origin,
            ingress: self.0.ingress.clone(),
            token_file: Some(file),
        }))
    }

    /// The token file the start-up token was read from, if it was.
    pub fn token_file(&self) -> Option<FileIdentity> {
        self.0.token_file
    }

    /// The token for new credentials (a new WebSocket's `Bearer`, a CONNECT
    /// preamble's `Basic`): the session-ingress file's token if it holds a
    /// non-empty one now, else the start-up token. Reads at most one small
    /// regular file.
    pub fn current(&self) -> SessionToken {
        self.0
            .ingress
            .as_deref()
            .and_then(|p| read_token_file(p).ok())
            .unwrap_or_else(|| self.0.startup.clone())
    }

    /// The token found at start-up.
    pub fn startup(&self) -> &SessionToken {
        &self.0.startup
    }

    /// Where the start-up token came from.
    pub fn origin(&self) -> TokenOrigin {
        self.0.origin
    }

    /// The file [`TokenSource::current`] re-reads, if any.
    pub fn ingress_file(&self) -> Option<&Path> {
        self.0.ingress.as_deref()
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("startup", &self.0.startup)
            .field("origin", &self.0.origin)
            .field("ingress", &self.0.ingress)
            .field("token_file", &self.0.token_file)
            .finish()
    }
}
