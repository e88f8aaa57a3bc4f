//! The session token, where it comes from, and its guard.
//!
//! The token is the one secret the relay holds. It lives in [`SessionToken`],
//! whose `Debug` and `Display` print a placeholder, so no log line, error or
//! panic message can carry it; the only way to its bytes is the explicit
//! [`SessionToken::expose`], used where the gateway's headers are built.
//! [`forbid_dumping`] keeps same-uid processes from ptracing the relay or
//! reading its memory and environment.
//!
//! The upstream-proxy generation reads one token file ([`read_token_file`]).
//! The agent-proxy generation tries four sources in order
//! ([`resolve_agent_proxy_token`]): the token file, the variable
//! `CLAUDE_CODE_SESSION_ACCESS_TOKEN`, the file descriptor named by
//! `CLAUDE_CODE_WEBSOCKET_AUTH_FILE_DESCRIPTOR` (read once), and the
//! session-ingress token file. The platform may rewrite that last file while
//! the session runs, so a [`TokenSource`] re-reads it each time credentials
//! are built ([`TokenSource::current`]) and falls back to the start-up token.
//! The variables naming these sources never reach children
//! ([`TOKEN_SOURCE_VARS`]).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What [`remove_token_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFileRemoval {
    /// The file the start-up token was read from is gone.
    Removed,
    /// Another file is at the path now (a token rewritten since): left alone.
    Replaced,
    /// Nothing is at the path.
    Absent,
    /// The start-up token did not come from the token file: left alone.
    NotRead,
}

/// Unlinks the token file at `path` once the token lives in memory alone,
/// if `token` was read from it and it is still that file (same device and
/// inode). A file put there since, a token a supervisor rewrote (a rename
/// over it), is another file and is left alone.
///
/// The path is looked at as the read did (a link followed), then unlinked:
/// a rename in the moment between the two could still be removed, but not
/// one in the seconds between the read and the listener being up.
pub fn remove_token_file(path: &Path, token: &TokenSource) -> io::Result<TokenFileRemoval> {
    let Some(read) = token.token_file() else {
        return Ok(TokenFileRemoval::NotRead);
    };
    let absent = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let now = match std::fs::metadata(path) {
        Ok(meta) => FileIdentity::of(&meta),
        Err(e) if absent(&e) => return Ok(TokenFileRemoval::Absent),
        Err(e) => return Err(e),
    };
    if now != read {
        return Ok(TokenFileRemoval::Replaced);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(TokenFileRemoval::Removed),
        Err(e) if absent(&e) => Ok(TokenFileRemoval::Absent),
        Err(e) => Err(e),
    }
}

pub use crate::gateway::token::{
    ACCESS_TOKEN_VAR, FileIdentity, REDACTED, SessionToken, TokenError, TokenOrigin, TokenSource,
    read_token_file, read_token_file_identified,
};
use crate::gateway::token::{MAX_TOKEN_FILE, token_from_bytes};
/// Source 3: the number of an inherited file descriptor holding the token.
pub const AUTH_FD_VAR: &str = "CLAUDE_CODE_WEBSOCKET_AUTH_FILE_DESCRIPTOR";
/// Source 4: the session-ingress token file, re-read while the relay runs.
pub const INGRESS_FILE_VAR: &str = "CLAUDE_SESSION_INGRESS_TOKEN_FILE";
/// Source 4 when [`INGRESS_FILE_VAR`] is unset or blank.
pub const DEFAULT_INGRESS_FILE: &str = "/home/claude/.claude/remote/.session_ingress_token";

/// Variables that name or hold a token source: removed from every child's
/// environment.
pub const TOKEN_SOURCE_VARS: &[&str] = &[ACCESS_TOKEN_VAR, AUTH_FD_VAR, INGRESS_FILE_VAR];

/// How long [`read_token_fd`] waits for the descriptor's writer in all.
pub const FD_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Once some bytes have arrived, how long a quiet descriptor whose writer
/// keeps it open is given before what arrived is taken as the token.
const FD_SETTLE: Duration = Duration::from_millis(100);

/// Reads the token from an inherited descriptor, once: until end of file,
/// [`MAX_TOKEN_FILE`] bytes, or the writer going quiet (within `timeout` in
/// all). Standard input, output and error are refused. The descriptor is
/// then marked close-on-exec, so no child inherits it and reads what is left.
pub fn read_token_fd(fd: i32, timeout: Duration) -> Result<SessionToken, TokenError> {
    if fd <= 2 {
        return Err(TokenError::Unreadable(io::Error::other(format!(
            "descriptor {fd} is standard input, output or error"
        ))));
    }
    // SAFETY: F_GETFD only inspects the descriptor table.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(TokenError::Unreadable(io::Error::last_os_error()));
    }
    // SAFETY: as above; setting FD_CLOEXEC changes no data.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline || bytes.len() as u64 >= MAX_TOKEN_FILE {
            break;
        }
        let mut wait = deadline - now;
        if !bytes.is_empty() {
            wait = wait.min(FD_SETTLE);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, its count, a finite timeout.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(TokenError::Unreadable(e));
        }
        if ready == 0 {
            if bytes.is_empty() {
                continue; // the loop head ends it at the deadline
            }
            break; // the writer went quiet after writing: take what came
        }
        let room = buf
            .len()
            .min((MAX_TOKEN_FILE - bytes.len() as u64) as usize);
        // SAFETY: reads at most `room` bytes into a buffer that long.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), room) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                _ => return Err(TokenError::Unreadable(e)),
            }
        }
        if n == 0 {
            break; // end of file
        }
        bytes.extend_from_slice(&buf[..n as usize]);
    }
    if bytes.is_empty() && Instant::now() >= deadline {
        return Err(TokenError::Unreadable(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("nothing arrived within {} ms", timeout.as_millis()),
        )));
    }
    token_from_bytes(bytes)
}

/// The session-ingress file: `CLAUDE_SESSION_INGRESS_TOKEN_FILE`, or the
/// default when that is unset or blank.
pub fn ingress_file(env: &impl Fn(&str) -> Option<String>) -> PathBuf {
    env(INGRESS_FILE_VAR)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_INGRESS_FILE), PathBuf::from)
}

/// The agent-proxy generation's token: the first source that holds one, in
/// the contract's order (token file, `CLAUDE_CODE_SESSION_ACCESS_TOKEN`, the
/// descriptor, the session-ingress file), as a source that re-reads the
/// session-ingress file later. The descriptor is read only when the sources
/// before it fail (and at most `fd_timeout`); it is marked close-on-exec in
/// every case, so no child inherits it. Call once, at start-up.
pub fn resolve_agent_proxy_token(
    env: impl Fn(&str) -> Option<String>,
    token_file: &Path,
    fd_timeout: Duration,
) -> Result<TokenSource, TokenError> {
    let ingress = ingress_file(&env);
    let fd = env(AUTH_FD_VAR).map(|v| v.trim().parse::<i32>().map_err(|_| v));
    if let Some(Ok(fd)) = fd
        && fd > 2
    {
        // SAFETY: F_GETFD/F_SETFD only touch the descriptor's flags; an
        // invalid number fails harmlessly with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    let found = |token, origin| Ok(TokenSource::rereading(token, origin, ingress.clone()));
    let mut tried = Vec::new();

    match read_token_file_identified(token_file) {
        Ok((t, file)) => return found(t, TokenOrigin::TokenFile).map(|s| s.read_from(file)),
        Err(e) => tried.push(format!("token file {}: {e}", token_file.display())),
    }
    match env(ACCESS_TOKEN_VAR).as_deref().map(SessionToken::new) {
        Some(Some(t)) => return found(t, TokenOrigin::AccessTokenVar),
        Some(None) => tried.push(format!("{ACCESS_TOKEN_VAR}: empty")),
        None => tried.push(format!("{ACCESS_TOKEN_VAR}: unset")),
    }
    match fd {
        Some(Ok(n)) => match read_token_fd(n, fd_timeout) {
            Ok(t) => return found(t, TokenOrigin::AuthFd),
            Err(e) => tried.push(format!("{AUTH_FD_VAR} ({n}): {e}")),
        },
        // The value is not a number, so it is no secret: but it is not
        // shown either, in case a token was put there by mistake.
        Some(Err(_)) => tried.push(format!("{AUTH_FD_VAR}: not a descriptor number")),
        None => tried.push(format!("{AUTH_FD_VAR}: unset")),
    }
    match read_token_file(&ingress) {
        Ok(t) => return found(t, TokenOrigin::IngressFile),
        Err(e) => tried.push(format!("session-ingress file {}: {e}", ingress.display())),
    }
    Err(TokenError::NoSource(tried))
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

    use crate::test_support::TempDir;
    use std::collections::HashMap;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A token that is no substring of any field, variable or type name.
    const SECRET: &str = "zq8Xv71kPw";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// A pipe: (read end, write end). Close-on-exec, so a child another
    /// test spawns meanwhile cannot hold the write end open; the read end's
    /// flag is then cleared, so the tests can see the code under test set it.
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors we then own; F_SETFD on one.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        assert_eq!(unsafe { libc::fcntl(fds[0], libc::F_SETFD, 0) }, 0);
        // SAFETY: both are fresh descriptors owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn write_fd(fd: &OwnedFd, bytes: &[u8]) {
        // SAFETY: writes from a valid buffer of that length.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize);
    }

    fn cloexec(fd: &OwnedFd) -> bool {
        // SAFETY: F_GETFD on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    #[test]
    fn a_fifo_token_file_does_not_hang() {
        let dir = TempDir::new("fifo");
        let path = dir.0.join("fifo");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = Instant::now();
        assert!(matches!(
            read_token_file(&path),
            Err(TokenError::Unreadable(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            read_token_file(&dir.0),
            Err(TokenError::Unreadable(_))
        ));
    }

    #[test]
    fn descriptor_read_to_end_of_file() {
        let (r, w) = pipe();
        write_fd(&w, format!("  {SECRET}\n").as_bytes());
        drop(w);
        let t = read_token_fd(r.as_raw_fd(), Duration::from_secs(10)).unwrap();
        assert_eq!(t.expose(), SECRET);
        assert!(cloexec(&r), "a child could inherit the descriptor");
    }

    #[test]
    fn descriptor_whose_writer_stays_open() {
        // Bytes then silence: taken after the settle time, not the timeout.
        let (r, w) = pipe();
        write_fd(&w, SECRET.as_bytes());
        let started = Instant::now();
        let t = read_token_fd(r.as_raw_fd(), Duration::from_secs(20)).unwrap();
        assert_eq!(t.expose(), SECRET);
        assert!(started.elapsed() < Duration::from_secs(10));
        // Nothing at all: an error once the timeout passes.
        let (r2, _w2) = pipe();
        let started = Instant::now();
        let err = read_token_fd(r2.as_raw_fd(), Duration::from_millis(300)).unwrap_err();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        assert!(err.to_string().contains("nothing arrived"), "{err}");
        drop(w);
    }

    #[test]
    fn descriptor_refusals() {
        for fd in [0, 1, 2, -1] {
            assert!(matches!(
                read_token_fd(fd, Duration::from_millis(10)),
                Err(TokenError::Unreadable(_))
            ));
        }
        // A number that is no open descriptor.
        assert!(matches!(
            read_token_fd(1_000_000, Duration::from_millis(10)),
            Err(TokenError::Unreadable(_))
        ));
        let (r, w) = pipe();
        write_fd(&w, b" \n");
        drop(w);
        assert!(matches!(
            read_token_fd(r.as_raw_fd(), Duration::from_secs(5)),
            Err(TokenError::Empty)
        ));
    }

    #[test]
    fn agent_proxy_sources_in_order() {
        let dir = TempDir::new("sources");
        let file = dir.0.join("session_token");
        let ingress = dir.0.join("ingress");
        let ingress_s = ingress.to_str().unwrap().to_string();
        let (r, w) = pipe();
        write_fd(&w, b"from-fd");
        drop(w);
        let fd_s = r.as_raw_fd().to_string();
        std::fs::write(&ingress, "from-ingress").unwrap();
        let all = [
            (ACCESS_TOKEN_VAR, "from-env"),
            (AUTH_FD_VAR, fd_s.as_str()),
            (INGRESS_FILE_VAR, ingress_s.as_str()),
        ];
        let t = Duration::from_secs(5);

        // 1. The token file wins; the descriptor is not read, but no child
        // may inherit it.
        std::fs::write(&file, "from-file\n").unwrap();
        let src = resolve_agent_proxy_token(env_of(&all), &file, t).unwrap();
        assert_eq!(src.origin(), TokenOrigin::TokenFile);
        assert_eq!(src.startup().expose(), "from-file");
        assert_eq!(src.ingress_file(), Some(ingress.as_path()));
        assert!(cloexec(&r));

        // 2. Then the variable.
        std::fs::remove_file(&file).unwrap();
        let src = resolve_agent_proxy_token(env_of(&all), &file, t).unwrap();
        assert_eq!(src.origin(), TokenOrigin::AccessTokenVar);
        assert_eq!(src.startup().expose(), "from-env");

        // 3. Then the descriptor (a blank variable does not count).
        let mut no_env = all;
        no_env[0].1 = "  ";
        let src = resolve_agent_proxy_token(env_of(&no_env), &file, t).unwrap();
        assert_eq!(src.origin(), TokenOrigin::AuthFd);
        assert_eq!(src.startup().expose(), "from-fd");

        // 4. Then the session-ingress file (the descriptor is spent now).
        let src =
            resolve_agent_proxy_token(env_of(&no_env), &file, Duration::from_millis(200)).unwrap();
        assert_eq!(src.origin(), TokenOrigin::IngressFile);
        assert_eq!(src.startup().expose(), "from-ingress");

        // Nothing anywhere: every source says why, in order.
        std::fs::remove_file(&ingress).unwrap();
        let env = env_of(&[(AUTH_FD_VAR, "abc"), (INGRESS_FILE_VAR, &ingress_s)]);
        let err = resolve_agent_proxy_token(env, &file, t).unwrap_err();
        let TokenError::NoSource(tried) = &err else {
            panic!("{err}");
        };
        assert_eq!(tried.len(), 4, "{tried:?}");
        assert!(tried[0].starts_with("token file "), "{tried:?}");
        assert_eq!(tried[1], format!("{ACCESS_TOKEN_VAR}: unset"));
        assert_eq!(tried[2], format!("{AUTH_FD_VAR}: not a descriptor number"));
        assert!(tried[3].starts_with("session-ingress file "), "{tried:?}");
    }

    #[test]
    fn the_token_file_is_removed_only_if_it_is_still_the_file_read() {
        let dir = TempDir::new("token-unlink");
        let file = dir.0.join("session_token");
        let t = Duration::from_secs(1);
        // Still the file read: removed.
        std::fs::write(&file, "first").unwrap();
        let src = resolve_agent_proxy_token(env_of(&[]), &file, t).unwrap();
        assert_eq!(
            remove_token_file(&file, &src).unwrap(),
            TokenFileRemoval::Removed
        );
        assert!(!file.exists());
        assert_eq!(
            remove_token_file(&file, &src).unwrap(),
            TokenFileRemoval::Absent
        );
        // A supervisor renamed a fresh token over it since: left alone.
        std::fs::write(&file, "first").unwrap();
        let src = resolve_agent_proxy_token(env_of(&[]), &file, t).unwrap();
        let fresh = dir.0.join("session_token.new");
        std::fs::write(&fresh, "second").unwrap();
        std::fs::rename(&fresh, &file).unwrap();
        assert_eq!(
            remove_token_file(&file, &src).unwrap(),
            TokenFileRemoval::Replaced
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "second");
        // The token came from elsewhere: the token file is not the relay's.
        let env = env_of(&[(ACCESS_TOKEN_VAR, "from-env")]);
        std::fs::remove_file(&file).unwrap();
        let src = resolve_agent_proxy_token(env, &file, t).unwrap();
        std::fs::write(&file, "written later").unwrap();
        assert_eq!(
            remove_token_file(&file, &src).unwrap(),
            TokenFileRemoval::NotRead
        );
        assert!(file.exists());
    }

    #[test]
    fn default_ingress_file() {
        assert_eq!(ingress_file(&env_of(&[])), Path::new(DEFAULT_INGRESS_FILE));
        assert_eq!(
            ingress_file(&env_of(&[(INGRESS_FILE_VAR, " ")])),
            Path::new(DEFAULT_INGRESS_FILE)
        );
        assert_eq!(
            ingress_file(&env_of(&[(INGRESS_FILE_VAR, "/x/y")])),
            Path::new("/x/y")
        );
    }

    #[test]
    fn current_token_follows_the_ingress_file() {
        let dir = TempDir::new("current");
        let ingress = dir.0.join("ingress");
        let startup = SessionToken::new("startup").unwrap();
        let src = TokenSource::rereading(startup.clone(), TokenOrigin::TokenFile, ingress.clone());
        let shared = src.clone();
        // No file: the start-up token.
        assert_eq!(src.current().expose(), "startup");
        std::fs::write(&ingress, "rotated-1\n").unwrap();
        assert_eq!(src.current().expose(), "rotated-1");
        // A clone sees the same file.
        assert_eq!(shared.current().expose(), "rotated-1");
        std::fs::write(&ingress, "rotated-2").unwrap();
        assert_eq!(src.current().expose(), "rotated-2");
        // Blank or not text: back to the start-up token.
        std::fs::write(&ingress, " \n").unwrap();
        assert_eq!(src.current().expose(), "startup");
        std::fs::write(&ingress, [0xff, 0xfe]).unwrap();
        assert_eq!(src.current().expose(), "startup");
        // A fixed token ignores the file.
        std::fs::write(&ingress, "rotated-3").unwrap();
        let fixed = TokenSource::fixed(startup, TokenOrigin::Standalone);
        assert_eq!(fixed.current().expose(), "startup");
        assert_eq!(fixed.ingress_file(), None);
        // Usable from other threads.
        fn send_sync<T: Send + Sync + Clone + 'static>() {}
        send_sync::<TokenSource>();
        let t = std::thread::spawn(move || shared.current().expose().to_string());
        assert_eq!(t.join().unwrap(), "rotated-3");
    }

    #[test]
    fn sources_and_errors_never_print_the_token() {
        let dir = TempDir::new("redact");
        let ingress = dir.0.join("ingress");
        std::fs::write(&ingress, SECRET).unwrap();
        let src = TokenSource::rereading(
            SessionToken::new(SECRET).unwrap(),
            TokenOrigin::AccessTokenVar,
            ingress,
        );
        let err = resolve_agent_proxy_token(
            env_of(&[(AUTH_FD_VAR, SECRET), (ACCESS_TOKEN_VAR, "")]),
            &dir.0.join("missing"),
            Duration::from_millis(10),
        )
        .unwrap_err();
        for printed in [
            format!("{src:?}"),
            format!("{src:#?}"),
            format!("{:?}", src.current()),
            format!("{}", src.current()),
            format!("{err}"),
            format!("{err:?}"),
        ] {
            assert!(!printed.contains(SECRET), "{printed}");
        }
    }
}
