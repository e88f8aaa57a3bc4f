//! The activation gates of docs/PROTOCOL.md section 1, checked in order:
//! a remote session (`CLAUDE_CODE_REMOTE`), a proxy the server enabled
//! (gate 2), a session id (`CLAUDE_CODE_REMOTE_SESSION_ID`) and a session
//! token. The environment comes in as a lookup function so tests never touch
//! the process environment. A closed gate is a [`GateClosed`] that names the
//! gate and what to do, and never holds the token.
//!
//! Two generations exist ([`Generation`]): the upstream proxy (gate 2 is
//! `CCR_UPSTREAM_PROXY_ENABLED`, the token is the token file) and the agent
//! proxy (gate 2 is `CCR_AGENT_PROXY_ENABLED`, the token comes from the
//! sources of [`crate::startup::token::resolve_agent_proxy_token`]). When both
//! variables are truthy the agent proxy wins. [`check`] is the upstream
//! proxy alone; [`activate`] chooses the generation and says why.
//!
//! Standalone mode ([`take_standalone_env`]): `AGENT_PROXY_URL` names the
//! gateway's base URL and `AGENT_PROXY_AUTH_TOKEN`, when also set, is a fixed
//! token. How it meets the gates (our decision; the contract only says "use
//! this base URL"):
//! - a non-empty `AGENT_PROXY_URL` opens gate 2 by itself and chooses the
//!   agent proxy: the variable belongs to that generation, and naming a
//!   gateway is as explicit a request as the server's flag;
//! - gates 1 and 3 still apply: outside a remote session the relay stays
//!   silent whatever is set, and the CONNECT preamble needs the session id;
//! - gate 4 is `AGENT_PROXY_AUTH_TOKEN` when set (fixed, never re-read),
//!   else the agent proxy's usual sources;
//! - `AGENT_PROXY_AUTH_TOKEN` without `AGENT_PROXY_URL` is ignored (and
//!   still removed), which [`Standalone::token_ignored`] lets `doctor` say.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::startup::token::{
    AUTH_FD_VAR, SessionToken, TOKEN_SOURCE_VARS, TokenError, TokenOrigin, TokenSource,
    read_token_file, read_token_file_identified, resolve_agent_proxy_token,
};

/// Gate 1: set (truthy) in a cloud container.
pub const REMOTE_VAR: &str = "CLAUDE_CODE_REMOTE";
/// Gate 2 of the upstream proxy: set (truthy) when the server enabled it.
pub const PROXY_ENABLED_VAR: &str = "CCR_UPSTREAM_PROXY_ENABLED";
/// Gate 2 of the agent proxy: set (truthy) when the server enabled it.
pub const AGENT_PROXY_ENABLED_VAR: &str = "CCR_AGENT_PROXY_ENABLED";
/// Gate 3: the session id, set and non-empty.
pub const SESSION_ID_VAR: &str = "CLAUDE_CODE_REMOTE_SESSION_ID";
/// Standalone mode: the gateway's base URL.
pub const STANDALONE_URL_VAR: &str = "AGENT_PROXY_URL";
/// Standalone mode: a fixed token.
pub const STANDALONE_TOKEN_VAR: &str = "AGENT_PROXY_AUTH_TOKEN";

/// The standalone variables, removed from the relay's own environment at
/// start-up (and so from every child's).
pub const STANDALONE_VARS: &[&str] = &[STANDALONE_URL_VAR, STANDALONE_TOKEN_VAR];

/// Every variable this module and [`crate::startup::token`] know that must never
/// reach a child: the token sources and the standalone pair.
pub fn child_removed_vars() -> impl Iterator<Item = &'static str> {
    TOKEN_SOURCE_VARS.iter().chain(STANDALONE_VARS).copied()
}

pub use crate::gateway::generation::Generation;

/// The gate-2 variable of `generation`.
pub fn enabled_var(generation: Generation) -> &'static str {
    match generation {
        Generation::UpstreamProxy => PROXY_ENABLED_VAR,
        Generation::AgentProxy => AGENT_PROXY_ENABLED_VAR,
    }
}

/// The generation gate 2 chose, and a sentence saying why (for `doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationChoice {
    pub generation: Generation,
    pub reason: String,
}

/// Gate 2: which generation, if any, is enabled. `standalone` is whether
/// [`Standalone::is_active`]; it chooses the agent proxy on its own.
pub fn choose_generation(
    env: impl Fn(&str) -> Option<String>,
    standalone: bool,
) -> Option<GenerationChoice> {
    // A truthy value is one of four short words: safe to repeat.
    let truthy = |name: &str| {
        env(name)
            .filter(|v| is_truthy(v))
            .map(|v| v.trim().to_string())
    };
    let agent = truthy(AGENT_PROXY_ENABLED_VAR);
    let upstream = truthy(PROXY_ENABLED_VAR);
    let also = if upstream.is_some() {
        format!(" ({PROXY_ENABLED_VAR} is also set; the agent proxy wins)")
    } else {
        String::new()
    };
    let (generation, reason) = if standalone {
        (
            Generation::AgentProxy,
            format!("{STANDALONE_URL_VAR} is set (standalone mode), which chose the agent proxy"),
        )
    } else if let Some(v) = agent {
        (
            Generation::AgentProxy,
            format!("{AGENT_PROXY_ENABLED_VAR}={v} chose the agent proxy{also}"),
        )
    } else if let Some(v) = upstream {
        (
            Generation::UpstreamProxy,
            format!("{PROXY_ENABLED_VAR}={v} chose the upstream proxy"),
        )
    } else {
        return None;
    };
    Some(GenerationChoice { generation, reason })
}

/// The standalone variables, as read at start-up. Never printed whole: its
/// `Debug` redacts the token and any credentials in the URL.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Standalone {
    base_url: Option<String>,
    token: Option<SessionToken>,
}

impl Standalone {
    /// Reads the standalone variables through `env` (pure; for tests and for
    /// [`take_standalone_env`]). Blank values count as unset.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Standalone {
        let base_url = env(STANDALONE_URL_VAR)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        let token = env(STANDALONE_TOKEN_VAR).and_then(|v| SessionToken::new(&v));
        Standalone { base_url, token }
    }

    /// Standalone mode is on: `AGENT_PROXY_URL` was set.
    pub fn is_active(&self) -> bool {
        self.base_url.is_some()
    }

    /// The base URL `AGENT_PROXY_URL` named.
    pub fn base_url(&self) -> Option<&str> {
        self.base_url.as_deref()
    }

    /// The base URL to use: `AGENT_PROXY_URL` first, then `configured`
    /// (which already holds `--base-url`, else `ANTHROPIC_BASE_URL`, else
    /// the default).
    pub fn base_url_or<'a>(&'a self, configured: &'a str) -> &'a str {
        self.base_url.as_deref().unwrap_or(configured)
    }

    /// The fixed token, in standalone mode only.
    pub fn token(&self) -> Option<&SessionToken> {
        self.token.as_ref().filter(|_| self.is_active())
    }

    /// `AGENT_PROXY_AUTH_TOKEN` was set without `AGENT_PROXY_URL`, and so
    /// is not used: worth a warning.
    pub fn token_ignored(&self) -> bool {
        self.token.is_some() && !self.is_active()
    }
}

/// A URL with any `user:password@` replaced by `[redacted]@`.
fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}[redacted]@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

impl fmt::Debug for Standalone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Standalone")
            .field("base_url", &self.base_url.as_deref().map(redact_userinfo))
            .field("token", &self.token)
            .finish()
    }
}

/// Reads `AGENT_PROXY_URL` and `AGENT_PROXY_AUTH_TOKEN` and removes both
/// from this process's environment, whether or not the proxy ends up on, so
/// no child ever sees them.
///
/// # Safety
///
/// Changes the process environment: call it first thing in `main`, before
/// any thread is started (and so before anything else could read the
/// environment concurrently), as `std::env::remove_var` requires.
pub unsafe fn take_standalone_env() -> Standalone {
    let standalone = Standalone::from_env(|name| {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    });
    for name in STANDALONE_VARS {
        // SAFETY: the caller guarantees no other thread is running.
        unsafe { std::env::remove_var(name) };
    }
    standalone
}

/// Whether an environment value means "on": `1`, `true`, `yes` or `on`, in
/// any case, with surrounding white space ignored. Anything else (`0`, `no`,
/// an empty string, `2`) is off.
pub fn is_truthy(value: &str) -> bool {
    let v = value.trim();
    ["1", "true", "yes", "on"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t))
}

/// All four gates passed: what the relay needs to speak to the gateway.
#[derive(Debug, Clone)]
pub struct Activation {
    /// `CLAUDE_CODE_REMOTE_SESSION_ID`, trimmed of surrounding white space.
    pub session_id: String,
    /// The token read from the token file (redacted when printed).
    pub token: SessionToken,
}

/// The first gate that failed. Only [`GateClosed::NotRemote`] is the normal,
/// silent case; the others deserve one warning line (their `Display`).
#[derive(Debug)]
pub enum GateClosed {
    /// Gate 1: `CLAUDE_CODE_REMOTE` is not truthy (a developer's laptop).
    NotRemote,
    /// Gate 2: neither `CCR_UPSTREAM_PROXY_ENABLED` nor (for [`activate`])
    /// `CCR_AGENT_PROXY_ENABLED` is truthy, and no standalone URL is set.
    ProxyDisabled,
    /// Gate 3: `CLAUDE_CODE_REMOTE_SESSION_ID` is unset or blank.
    NoSessionId,
    /// Gate 4: the token file is missing, unreadable, not text or empty
    /// ([`TokenError::NoSource`]: every agent-proxy source failed).
    Token(TokenError),
}

impl GateClosed {
    /// True only for gate 1: outside a remote session the relay says nothing.
    pub fn is_silent(&self) -> bool {
        matches!(self, GateClosed::NotRemote)
    }

    /// The gate's number in docs/PROTOCOL.md section 1 (1 to 4).
    pub fn gate(&self) -> u8 {
        match self {
            GateClosed::NotRemote => 1,
            GateClosed::ProxyDisabled => 2,
            GateClosed::NoSessionId => 3,
            GateClosed::Token(_) => 4,
        }
    }
}

impl fmt::Display for GateClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateClosed::NotRemote => write!(
                f,
                "gate 1: {REMOTE_VAR} is not set to a true value; not in a remote session, so the proxy stays off"
            ),
            GateClosed::ProxyDisabled => write!(
                f,
                "gate 2: neither {PROXY_ENABLED_VAR} nor {AGENT_PROXY_ENABLED_VAR} is set to a true value; the server has not enabled the proxy"
            ),
            GateClosed::NoSessionId => write!(
                f,
                "gate 3: {SESSION_ID_VAR} is unset or empty; the session must provide its id"
            ),
            GateClosed::Token(e @ TokenError::NoSource(_)) => write!(
                f,
                "gate 4: {e}; the session must provide a token (see --token-file)"
            ),
            GateClosed::Token(e) => write!(
                f,
                "gate 4: the session token file is not usable ({e}); the session must provide a readable, non-empty token file (see --token-file)"
            ),
        }
    }
}

impl std::error::Error for GateClosed {}

/// Checks the four gates of the upstream proxy (generation 1) in order:
/// gate 2 is `CCR_UPSTREAM_PROXY_ENABLED` only, the token the token file.
/// The token file is read only when gates 1 to 3 pass, so a laptop never
/// touches it. [`activate`] covers both generations.
pub fn check(
    env: impl Fn(&str) -> Option<String>,
    token_file: &Path,
) -> Result<Activation, GateClosed> {
    let truthy = |name: &str| env(name).is_some_and(|v| is_truthy(&v));
    if !truthy(REMOTE_VAR) {
        return Err(GateClosed::NotRemote);
    }
    if !truthy(PROXY_ENABLED_VAR) {
        return Err(GateClosed::ProxyDisabled);
    }
    let session_id = env(SESSION_ID_VAR)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or(GateClosed::NoSessionId)?;
    let token = read_token_file(token_file).map_err(GateClosed::Token)?;
    Ok(Activation { session_id, token })
}

/// All gates passed, in either generation.
#[derive(Debug, Clone)]
pub struct Activated {
    /// The generation gate 2 chose, and why.
    pub choice: GenerationChoice,
    /// Standalone mode is on (base URL and maybe token from its variables).
    pub standalone: bool,
    /// `CLAUDE_CODE_REMOTE_SESSION_ID`, trimmed.
    pub session_id: String,
    /// The token to present (redacted when printed): fixed for the upstream
    /// proxy and a standalone token, else re-reading the ingress file.
    pub token: TokenSource,
}

impl Activated {
    pub fn generation(&self) -> Generation {
        self.choice.generation
    }
}

/// Checks the gates for either generation, in order: gate 1, gate 2 (which
/// also chooses the generation; see the module's notes on standalone mode),
/// gate 3, then the token, which is looked for only once gates 1 to 3 pass.
/// `fd_timeout` bounds the read of a token descriptor
/// ([`crate::startup::token::FD_READ_TIMEOUT`] is the usual value). Call once, at
/// start-up: a token descriptor is read only once.
pub fn activate(
    env: impl Fn(&str) -> Option<String>,
    token_file: &Path,
    standalone: &Standalone,
    fd_timeout: Duration,
) -> Result<Activated, GateClosed> {
    if !env(REMOTE_VAR).is_some_and(|v| is_truthy(&v)) {
        return Err(GateClosed::NotRemote);
    }
    let choice =
        choose_generation(&env, standalone.is_active()).ok_or(GateClosed::ProxyDisabled)?;
    let session_id = env(SESSION_ID_VAR)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or(GateClosed::NoSessionId)?;
    let token = match (choice.generation, standalone.token()) {
        (Generation::AgentProxy, Some(fixed)) => {
            TokenSource::fixed(fixed.clone(), TokenOrigin::Standalone)
        }
        (Generation::AgentProxy, None) => {
            resolve_agent_proxy_token(&env, token_file, fd_timeout).map_err(GateClosed::Token)?
        }
        (Generation::UpstreamProxy, _) => {
            let (token, file) =
                read_token_file_identified(token_file).map_err(GateClosed::Token)?;
            TokenSource::fixed(token, TokenOrigin::TokenFile).read_from(file)
        }
    };
    Ok(Activated {
        choice,
        standalone: standalone.is_active(),
        session_id,
        token,
    })
}

/// The token descriptor `doctor` found but did not read: a descriptor is
/// read only once, so reading it would leave `run` and `serve` without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadDescriptor {
    /// The number `CLAUDE_CODE_WEBSOCKET_AUTH_FILE_DESCRIPTOR` names.
    pub fd: i32,
    /// What `fstat` and `FIONREAD` tell about it without reading, or why
    /// it is not usable (then `run` would skip it).
    pub state: Result<String, UnusableDescriptor>,
}

/// Why `run` could not read a token from a descriptor `doctor` inspected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnusableDescriptor {
    /// 0, 1 or 2.
    #[error("descriptor {0} is standard input, output or error")]
    Standard(i32),
    /// `fstat` failed with this `errno` (`EBADF`: nothing open there).
    #[error("not open: {}", std::io::Error::from_raw_os_error(*.0))]
    NotOpen(i32),
}

/// What `doctor` learns from the gates without side effects.
#[derive(Debug)]
pub struct DryActivation {
    /// The gates as [`activate`] would find them, except that the token
    /// descriptor is not read: when `run` would read it, this is what it
    /// would find if the descriptor held no token.
    pub result: Result<Activated, GateClosed>,
    /// Set when `run` would read the token descriptor: it comes before the
    /// source `result` used (or every source failed).
    pub descriptor: Option<UnreadDescriptor>,
}

impl DryActivation {
    /// `run` would read an open descriptor whose content decides gate 4
    /// (every other source failed): `doctor` cannot tell the outcome.
    pub fn undecided(&self) -> Option<&UnreadDescriptor> {
        self.descriptor
            .as_ref()
            .filter(|d| d.state.is_ok() && self.result.is_err())
    }
}

/// [`activate`] for `doctor`: the same gates and sources in the same
/// order, but the token descriptor is neither read nor marked
/// close-on-exec. When `run` would get to the descriptor, its state is
/// told from `fstat` and the bytes waiting in it, which read nothing.
pub fn activate_leaving_fd(
    env: impl Fn(&str) -> Option<String>,
    token_file: &Path,
    standalone: &Standalone,
) -> DryActivation {
    let hidden = |name: &str| {
        if name == AUTH_FD_VAR { None } else { env(name) }
    };
    let mut result = activate(hidden, token_file, standalone, Duration::ZERO);
    let fd = env(AUTH_FD_VAR).map(|v| v.trim().parse::<i32>().ok());
    // The descriptor comes after the token file and the access-token
    // variable and before the session-ingress file.
    let reached = match &result {
        Ok(a) => a.token.origin() == TokenOrigin::IngressFile,
        Err(GateClosed::Token(_)) => choose_generation(&env, standalone.is_active())
            .is_some_and(|c| c.generation == Generation::AgentProxy),
        Err(_) => false,
    };
    let descriptor = match fd {
        Some(Some(fd)) if reached => Some(UnreadDescriptor {
            fd,
            state: inspect_descriptor(fd),
        }),
        _ => None,
    };
    // The list of sources tried says what the descriptor is, as `run`'s
    // would, not "unset".
    let entry_text = match (&descriptor, fd) {
        (Some(d), _) => Some(match &d.state {
            Ok(state) => format!("{AUTH_FD_VAR} ({}): not read by doctor ({state})", d.fd),
            Err(why) => format!("{AUTH_FD_VAR} ({}): {why}", d.fd),
        }),
        (None, Some(None)) => Some(format!("{AUTH_FD_VAR}: not a descriptor number")),
        _ => None,
    };
    if let (Some(text), Err(GateClosed::Token(TokenError::NoSource(tried)))) =
        (entry_text, &mut result)
    {
        for entry in tried.iter_mut() {
            if entry.starts_with(AUTH_FD_VAR) {
                *entry = text.clone();
            }
        }
    }
    DryActivation { result, descriptor }
}

/// What a descriptor is, without reading it: its kind and how many bytes
/// wait in it; an error when `run` could not read a token from it.
fn inspect_descriptor(fd: i32) -> Result<String, UnusableDescriptor> {
    if fd <= 2 {
        return Err(UnusableDescriptor::Standard(fd));
    }
    // SAFETY: fstat fills a stat buffer we own; an invalid descriptor
    // fails with EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(UnusableDescriptor::NotOpen(errno));
    }
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO => "a pipe",
        libc::S_IFSOCK => "a socket",
        libc::S_IFREG => "a regular file",
        libc::S_IFCHR => "a character device",
        _ => "open",
    };
    let waiting = match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO | libc::S_IFSOCK => {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int; it reads no data.
            (unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } == 0).then_some(n as i64)
        }
        libc::S_IFREG => {
            // SAFETY: SEEK_CUR with offset 0 only reports the offset.
            let at = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
            (at >= 0).then_some(st.st_size - at)
        }
        _ => None,
    };
    Ok(match waiting {
        Some(n) => format!("{kind}, {n} byte(s) waiting"),
        None => kind.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::test_support::TempDir;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const ALL_OPEN: &[(&str, &str)] = &[
        (REMOTE_VAR, "true"),
        (PROXY_ENABLED_VAR, "1"),
        (SESSION_ID_VAR, "sess-123"),
    ];

    #[test]
    fn truthy_rule() {
        for yes in [
            "1", "true", "yes", "on", " TRUE ", "On", "YES", "\ttrue\n", "oN",
        ] {
            assert!(is_truthy(yes), "{yes:?} should be truthy");
        }
        for no in [
            "", " ", "0", "no", "off", "false", "2", "y", "t", "enabled", "true1", "o n", "1.0",
        ] {
            assert!(!is_truthy(no), "{no:?} should not be truthy");
        }
    }

    #[test]
    fn all_gates_open() {
        let dir = TempDir::new("open");
        let token = dir.0.join("session_token");
        std::fs::write(&token, "  tok-abc\n").unwrap();
        let env = env_of(&[
            (REMOTE_VAR, " Yes "),
            (PROXY_ENABLED_VAR, "ON"),
            (SESSION_ID_VAR, " sess-123\n"),
        ]);
        let a = check(env, &token).unwrap();
        assert_eq!(a.session_id, "sess-123");
        assert_eq!(a.token.expose(), "tok-abc");
        // The file is left in place: unlinking it is a later start-up step.
        assert!(token.exists());
    }

    #[test]
    fn gate_1_not_remote_is_silent() {
        // Even with everything else present, gate 1 decides first.
        let mut pairs = ALL_OPEN.to_vec();
        for value in [None, Some("0"), Some(""), Some("no"), Some("2")] {
            pairs.retain(|(k, _)| *k != REMOTE_VAR);
            if let Some(v) = value {
                pairs.push((REMOTE_VAR, v));
            }
            let err = check(env_of(&pairs), Path::new("/nonexistent/token")).unwrap_err();
            assert!(matches!(err, GateClosed::NotRemote), "{value:?}: {err}");
            assert!(err.is_silent());
            assert_eq!(err.gate(), 1);
        }
    }

    #[test]
    fn gate_2_proxy_disabled() {
        for value in [None, Some("false"), Some(" "), Some("off")] {
            let mut pairs = vec![(REMOTE_VAR, "1"), (SESSION_ID_VAR, "s")];
            if let Some(v) = value {
                pairs.push((PROXY_ENABLED_VAR, v));
            }
            let err = check(env_of(&pairs), Path::new("/nonexistent/token")).unwrap_err();
            assert!(matches!(err, GateClosed::ProxyDisabled), "{value:?}: {err}");
            assert!(!err.is_silent());
            let text = err.to_string();
            assert!(text.starts_with("gate 2: "), "{text}");
            assert!(text.contains(PROXY_ENABLED_VAR), "{text}");
        }
    }

    #[test]
    fn gate_3_no_session_id() {
        for value in [None, Some(""), Some("  \n")] {
            let mut pairs = vec![(REMOTE_VAR, "1"), (PROXY_ENABLED_VAR, "1")];
            if let Some(v) = value {
                pairs.push((SESSION_ID_VAR, v));
            }
            let err = check(env_of(&pairs), Path::new("/nonexistent/token")).unwrap_err();
            assert!(matches!(err, GateClosed::NoSessionId), "{value:?}: {err}");
            assert!(!err.is_silent());
            assert!(err.to_string().starts_with("gate 3: "));
            assert!(err.to_string().contains(SESSION_ID_VAR));
        }
    }

    #[test]
    fn gate_4_token_file() {
        let dir = TempDir::new("gate4");
        let missing = dir.0.join("missing");
        let err = check(env_of(ALL_OPEN), &missing).unwrap_err();
        assert!(
            matches!(err, GateClosed::Token(TokenError::Unreadable(_))),
            "{err}"
        );
        assert!(!err.is_silent());
        assert_eq!(err.gate(), 4);
        assert!(err.to_string().starts_with("gate 4: "), "{err}");

        let blank = dir.0.join("blank");
        std::fs::write(&blank, " \n\t").unwrap();
        let err = check(env_of(ALL_OPEN), &blank).unwrap_err();
        assert!(matches!(err, GateClosed::Token(TokenError::Empty)), "{err}");
    }

    #[test]
    fn token_file_untouched_until_gates_1_to_3_pass() {
        // A lookup that records what was asked shows the order; a token file
        // that is a directory would fail to read, yet gates 1-3 win first.
        use std::cell::RefCell;
        let dir = TempDir::new("order");
        let asked = RefCell::new(Vec::new());
        let env = |name: &str| {
            asked.borrow_mut().push(name.to_string());
            match name {
                REMOTE_VAR => Some("1".to_string()),
                _ => None,
            }
        };
        let err = check(env, &dir.0).unwrap_err();
        assert!(matches!(err, GateClosed::ProxyDisabled));
        assert_eq!(*asked.borrow(), vec![REMOTE_VAR, PROXY_ENABLED_VAR]);
    }

    #[test]
    fn messages_never_carry_the_token() {
        let dir = TempDir::new("secret");
        let token = dir.0.join("session_token");
        std::fs::write(&token, "s3cr3t-token").unwrap();
        let a = check(env_of(ALL_OPEN), &token).unwrap();
        let printed = format!("{a:?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
    }

    /// A token that is no substring of any field, variable or type name.
    const SECRET: &str = "zq8Xv71kPw";

    #[test]
    fn generations_name_their_paths() {
        let g = Generation::UpstreamProxy;
        assert_eq!(
            (g.name(), enabled_var(g), g.ws_path(), g.ca_cert_path()),
            (
                "upstream-proxy",
                "CCR_UPSTREAM_PROXY_ENABLED",
                "/v1/code/upstreamproxy/ws",
                "/v1/code/upstreamproxy/ca-cert"
            )
        );
        let g = Generation::AgentProxy;
        assert_eq!(
            (g.name(), enabled_var(g), g.ws_path(), g.ca_cert_path()),
            (
                "agent-proxy",
                "CCR_AGENT_PROXY_ENABLED",
                "/v1/code/agent-proxy/ws",
                "/v1/code/agent-proxy/ca-cert"
            )
        );
        assert_eq!(g.to_string(), "agent-proxy");
        assert_eq!(g.title(), "the agent proxy");
    }

    #[test]
    fn gate_2_chooses_a_generation() {
        let choose =
            |pairs: &[(&str, &str)], standalone| choose_generation(env_of(pairs), standalone);
        assert_eq!(choose(&[], false), None);
        assert_eq!(
            choose(
                &[(AGENT_PROXY_ENABLED_VAR, "0"), (PROXY_ENABLED_VAR, "no")],
                false
            ),
            None
        );

        let c = choose(&[(AGENT_PROXY_ENABLED_VAR, "1")], false).unwrap();
        assert_eq!(c.generation, Generation::AgentProxy);
        assert_eq!(c.reason, "CCR_AGENT_PROXY_ENABLED=1 chose the agent proxy");

        let c = choose(&[(PROXY_ENABLED_VAR, " true ")], false).unwrap();
        assert_eq!(c.generation, Generation::UpstreamProxy);
        assert_eq!(
            c.reason,
            "CCR_UPSTREAM_PROXY_ENABLED=true chose the upstream proxy"
        );

        // Both: the agent proxy wins, and says so.
        let c = choose(
            &[(PROXY_ENABLED_VAR, "1"), (AGENT_PROXY_ENABLED_VAR, "yes")],
            false,
        )
        .unwrap();
        assert_eq!(c.generation, Generation::AgentProxy);
        assert_eq!(
            c.reason,
            "CCR_AGENT_PROXY_ENABLED=yes chose the agent proxy (CCR_UPSTREAM_PROXY_ENABLED is also set; the agent proxy wins)"
        );
        // A false agent variable leaves the upstream proxy.
        let c = choose(
            &[(PROXY_ENABLED_VAR, "1"), (AGENT_PROXY_ENABLED_VAR, "0")],
            false,
        )
        .unwrap();
        assert_eq!(c.generation, Generation::UpstreamProxy);

        // Standalone chooses the agent proxy by itself.
        let c = choose(&[(PROXY_ENABLED_VAR, "1")], true).unwrap();
        assert_eq!(c.generation, Generation::AgentProxy);
        assert!(
            c.reason
                .starts_with("AGENT_PROXY_URL is set (standalone mode)"),
            "{}",
            c.reason
        );
    }

    fn standalone(url: Option<&str>, token: Option<&str>) -> Standalone {
        let mut pairs = Vec::new();
        if let Some(u) = url {
            pairs.push((STANDALONE_URL_VAR, u));
        }
        if let Some(t) = token {
            pairs.push((STANDALONE_TOKEN_VAR, t));
        }
        Standalone::from_env(env_of(&pairs))
    }

    #[test]
    fn standalone_variables() {
        let off = standalone(None, None);
        assert!(!off.is_active());
        assert_eq!(off, Standalone::default());
        assert_eq!(off.base_url_or("https://configured"), "https://configured");
        assert!(standalone(Some("  "), None) == off);

        let on = standalone(Some(" https://gw.example:8443 "), Some(SECRET));
        assert!(on.is_active());
        assert_eq!(on.base_url(), Some("https://gw.example:8443"));
        assert_eq!(
            on.base_url_or("https://configured"),
            "https://gw.example:8443"
        );
        assert_eq!(on.token().map(|t| t.expose()), Some(SECRET));
        assert!(!on.token_ignored());

        // A token alone is not used.
        let token_only = standalone(None, Some(SECRET));
        assert!(!token_only.is_active());
        assert!(token_only.token().is_none());
        assert!(token_only.token_ignored());
        assert!(standalone(Some("http://x"), Some(" ")).token().is_none());
    }

    #[test]
    fn standalone_never_prints_secrets() {
        let on = standalone(
            Some("https://user:pa55w0rd@gw.example/base?q=a@b"),
            Some(SECRET),
        );
        let printed = format!("{on:?} {on:#?}");
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(!printed.contains("pa55w0rd"), "{printed}");
        assert!(
            printed.contains("https://[redacted]@gw.example/base?q=a@b"),
            "{printed}"
        );
        assert_eq!(redact_userinfo("http://gw:80/x@y"), "http://gw:80/x@y");
        assert_eq!(redact_userinfo("gw@host"), "[redacted]@host");
    }

    #[test]
    fn child_removal_list() {
        let vars: Vec<_> = child_removed_vars().collect();
        for v in [
            "CLAUDE_CODE_SESSION_ACCESS_TOKEN",
            "CLAUDE_CODE_WEBSOCKET_AUTH_FILE_DESCRIPTOR",
            "CLAUDE_SESSION_INGRESS_TOKEN_FILE",
            "AGENT_PROXY_URL",
            "AGENT_PROXY_AUTH_TOKEN",
        ] {
            assert!(vars.contains(&v), "{v} missing from {vars:?}");
        }
    }

    const WAIT: Duration = Duration::from_millis(200);

    #[test]
    fn activate_upstream_proxy_uses_the_token_file_only() {
        let dir = TempDir::new("act-up");
        let token = dir.0.join("session_token");
        let ingress = dir.0.join("ingress");
        std::fs::write(&token, "from-file").unwrap();
        std::fs::write(&ingress, "from-ingress").unwrap();
        let ingress_s = ingress.to_str().unwrap();
        let mut pairs = ALL_OPEN.to_vec();
        pairs.push(("CLAUDE_SESSION_INGRESS_TOKEN_FILE", ingress_s));
        pairs.push(("CLAUDE_CODE_SESSION_ACCESS_TOKEN", "from-env"));
        let a = activate(env_of(&pairs), &token, &Standalone::default(), WAIT).unwrap();
        assert_eq!(a.generation(), Generation::UpstreamProxy);
        assert!(!a.standalone);
        assert_eq!(a.session_id, "sess-123");
        assert_eq!(a.token.origin(), TokenOrigin::TokenFile);
        // Generation 1 never re-reads the ingress file.
        assert_eq!(a.token.current().expose(), "from-file");
        // The file read is known, so that only it is unlinked later.
        assert_eq!(
            crate::startup::token::remove_token_file(&token, &a.token).unwrap(),
            crate::startup::token::TokenFileRemoval::Removed
        );
        // Nor looks past the token file.
        let err = activate(env_of(&pairs), &token, &Standalone::default(), WAIT).unwrap_err();
        assert!(
            matches!(err, GateClosed::Token(TokenError::Unreadable(_))),
            "{err}"
        );
    }

    #[test]
    fn activate_agent_proxy_uses_every_source() {
        let dir = TempDir::new("act-agent");
        let token = dir.0.join("session_token");
        let ingress = dir.0.join("ingress");
        let ingress_s = ingress.to_str().unwrap();
        let pairs = [
            (REMOTE_VAR, "1"),
            (AGENT_PROXY_ENABLED_VAR, "1"),
            (PROXY_ENABLED_VAR, "1"),
            (SESSION_ID_VAR, "sess-9"),
            ("CLAUDE_SESSION_INGRESS_TOKEN_FILE", ingress_s),
            ("CLAUDE_CODE_SESSION_ACCESS_TOKEN", "from-env"),
        ];
        let a = activate(env_of(&pairs), &token, &Standalone::default(), WAIT).unwrap();
        assert_eq!(a.generation(), Generation::AgentProxy);
        assert!(a.choice.reason.contains("also set"), "{}", a.choice.reason);
        assert_eq!(a.token.origin(), TokenOrigin::AccessTokenVar);
        assert_eq!(a.token.current().expose(), "from-env");
        // The platform rewrites the ingress file: new credentials use it.
        std::fs::write(&ingress, "rotated").unwrap();
        assert_eq!(a.token.current().expose(), "rotated");

        // No source at all: gate 4 names every source tried.
        std::fs::remove_file(&ingress).unwrap();
        let err = activate(env_of(&pairs[..5]), &token, &Standalone::default(), WAIT).unwrap_err();
        assert_eq!(err.gate(), 4);
        let text = err.to_string();
        assert!(
            text.starts_with("gate 4: no source holds a token ("),
            "{text}"
        );
        assert!(
            text.contains("CLAUDE_CODE_SESSION_ACCESS_TOKEN: unset"),
            "{text}"
        );
        assert!(text.contains(ingress_s), "{text}");
    }

    #[test]
    fn activate_standalone() {
        let dir = TempDir::new("act-alone");
        let missing = dir.0.join("missing");
        let base = [(REMOTE_VAR, "1"), (SESSION_ID_VAR, "s")];
        // With a token: gate 2 opens, the token is fixed, no file needed.
        let on = standalone(Some("http://127.0.0.1:9"), Some(SECRET));
        let a = activate(env_of(&base), &missing, &on, WAIT).unwrap();
        assert_eq!(a.generation(), Generation::AgentProxy);
        assert!(a.standalone);
        assert_eq!(a.token.origin(), TokenOrigin::Standalone);
        assert_eq!(a.token.current().expose(), SECRET);
        let printed = format!("{a:?} {a:#?}");
        assert!(!printed.contains(SECRET), "{printed}");
        // Even over the upstream proxy's flag.
        let mut both = base.to_vec();
        both.push((PROXY_ENABLED_VAR, "1"));
        let a = activate(env_of(&both), &missing, &on, WAIT).unwrap();
        assert_eq!(a.generation(), Generation::AgentProxy);
        // Without a token: the usual sources.
        let url_only = standalone(Some("http://127.0.0.1:9"), None);
        let mut with_env = base.to_vec();
        with_env.push(("CLAUDE_CODE_SESSION_ACCESS_TOKEN", "from-env"));
        let a = activate(env_of(&with_env), &missing, &url_only, WAIT).unwrap();
        assert_eq!(a.token.origin(), TokenOrigin::AccessTokenVar);
        // Gates 1 and 3 still hold.
        let err = activate(env_of(&[(SESSION_ID_VAR, "s")]), &missing, &on, WAIT).unwrap_err();
        assert!(matches!(err, GateClosed::NotRemote));
        let err = activate(env_of(&[(REMOTE_VAR, "1")]), &missing, &on, WAIT).unwrap_err();
        assert!(matches!(err, GateClosed::NoSessionId));
    }

    #[test]
    fn activate_keeps_the_gate_order() {
        use std::cell::RefCell;
        let dir = TempDir::new("act-order");
        let asked = RefCell::new(Vec::new());
        let env = |name: &str| {
            asked.borrow_mut().push(name.to_string());
            (name == REMOTE_VAR).then(|| "1".to_string())
        };
        let err = activate(env, &dir.0, &Standalone::default(), WAIT).unwrap_err();
        assert!(matches!(err, GateClosed::ProxyDisabled));
        assert_eq!(asked.borrow()[0], REMOTE_VAR);
        // No token source was consulted before gate 2 failed.
        assert!(
            !asked
                .borrow()
                .iter()
                .any(|n| n.starts_with("CLAUDE_CODE_SESSION")
                    || n.starts_with("CLAUDE_SESSION")
                    || n.contains("AUTH_FILE")),
            "{:?}",
            asked.borrow()
        );
        let text = err.to_string();
        assert!(
            text.contains(PROXY_ENABLED_VAR) && text.contains(AGENT_PROXY_ENABLED_VAR),
            "{text}"
        );
    }

    #[test]
    fn the_upstream_check_ignores_the_agent_flag() {
        let env = env_of(&[
            (REMOTE_VAR, "1"),
            (AGENT_PROXY_ENABLED_VAR, "1"),
            (SESSION_ID_VAR, "s"),
        ]);
        assert!(matches!(
            check(env, Path::new("/nonexistent/token")),
            Err(GateClosed::ProxyDisabled)
        ));
    }

    /// A pipe whose read end the test owns, holding `bytes`.
    fn pipe_holding(bytes: &[u8]) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors that we then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // The read end inheritable, as a token descriptor is.
        // SAFETY: F_SETFD on a descriptor we own.
        assert_eq!(unsafe { libc::fcntl(fds[0], libc::F_SETFD, 0) }, 0);
        // SAFETY: as above; writes from a buffer of that length.
        let n = unsafe { libc::write(fds[1], bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize);
        // SAFETY: both are ours and open.
        unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn doctor_leaves_the_token_descriptor_unread() {
        use std::os::fd::AsRawFd;
        let dir = TempDir::new("dry-fd");
        let missing = dir.0.join("no-token-file");
        let (r, _w) = pipe_holding(b"fd-secret-42\n");
        let fd = r.as_raw_fd().to_string();
        let ingress = dir.0.join("no-ingress").display().to_string();
        let pairs = [
            (REMOTE_VAR, "1"),
            (AGENT_PROXY_ENABLED_VAR, "1"),
            (SESSION_ID_VAR, "sess"),
            (AUTH_FD_VAR, fd.as_str()),
            (crate::startup::token::INGRESS_FILE_VAR, ingress.as_str()),
        ];
        let dry = activate_leaving_fd(env_of(&pairs), &missing, &Standalone::default());
        let Some(d) = dry.undecided() else {
            panic!("the descriptor decides gate 4: {dry:?}");
        };
        assert_eq!(d.fd, r.as_raw_fd());
        assert_eq!(d.state.as_deref(), Ok("a pipe, 13 byte(s) waiting"));
        // Unusable descriptors say why, typed.
        assert_eq!(inspect_descriptor(2), Err(UnusableDescriptor::Standard(2)));
        let closed = inspect_descriptor(i32::MAX).unwrap_err();
        assert_eq!(closed, UnusableDescriptor::NotOpen(libc::EBADF));
        assert!(
            closed
                .to_string()
                .starts_with("not open: Bad file descriptor"),
            "{closed}"
        );
        let text = dry
            .result
            .as_ref()
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(
            text.contains(&format!("{AUTH_FD_VAR} ({fd}): not read by doctor")),
            "{text}"
        );
        // Not consumed, and not marked close-on-exec: run would read it all.
        // SAFETY: F_GETFD on a descriptor we own.
        assert_eq!(
            unsafe { libc::fcntl(r.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
        let token = crate::startup::token::read_token_fd(r.as_raw_fd(), Duration::from_secs(5));
        assert_eq!(
            token.ok().map(|t| t.expose().to_string()).as_deref(),
            Some("fd-secret-42")
        );

        // A token file comes first: the descriptor plays no part.
        let file = dir.0.join("token");
        std::fs::write(&file, "from-file").unwrap();
        let (r2, _w2) = pipe_holding(b"x");
        let fd2 = r2.as_raw_fd().to_string();
        let mut pairs2 = pairs;
        pairs2[3] = (AUTH_FD_VAR, fd2.as_str());
        let dry = activate_leaving_fd(env_of(&pairs2), &file, &Standalone::default());
        assert!(dry.descriptor.is_none() && dry.result.is_ok(), "{dry:?}");

        // A number that is no open descriptor: run would skip it, and
        // doctor says so instead of "unset".
        drop(r2);
        let dry = activate_leaving_fd(env_of(&pairs2), &missing, &Standalone::default());
        assert!(dry.undecided().is_none());
        let text = dry
            .result
            .as_ref()
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(
            text.contains(&format!("{AUTH_FD_VAR} ({fd2}): not open")),
            "{text}"
        );
    }
}
