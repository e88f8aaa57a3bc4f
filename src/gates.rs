//! The four activation gates of PROTOCOL.md section 1, checked in order:
//! a remote session (`CLAUDE_CODE_REMOTE`), a proxy the server enabled
//! (`CCR_UPSTREAM_PROXY_ENABLED`), a session id
//! (`CLAUDE_CODE_REMOTE_SESSION_ID`) and a session token (a file). [`check`]
//! is pure apart from reading the token file, which it touches only once the
//! first three gates pass; the environment comes in as a lookup function so
//! tests never touch the process environment. A closed gate is a
//! [`GateClosed`] that names the gate and what to do, and never holds the
//! token.

use std::fmt;
use std::path::Path;

use crate::token::{SessionToken, TokenError, read_token_file};

/// Gate 1: set (truthy) in a cloud container.
pub const REMOTE_VAR: &str = "CLAUDE_CODE_REMOTE";
/// Gate 2: set (truthy) when the server enabled the upstream proxy.
pub const PROXY_ENABLED_VAR: &str = "CCR_UPSTREAM_PROXY_ENABLED";
/// Gate 3: the session id, set and non-empty.
pub const SESSION_ID_VAR: &str = "CLAUDE_CODE_REMOTE_SESSION_ID";

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
    /// Gate 2: `CCR_UPSTREAM_PROXY_ENABLED` is not truthy.
    ProxyDisabled,
    /// Gate 3: `CLAUDE_CODE_REMOTE_SESSION_ID` is unset or blank.
    NoSessionId,
    /// Gate 4: the token file is missing, unreadable, not text or empty.
    Token(TokenError),
}

impl GateClosed {
    /// True only for gate 1: outside a remote session the relay says nothing.
    pub fn is_silent(&self) -> bool {
        matches!(self, GateClosed::NotRemote)
    }

    /// The gate's number in PROTOCOL.md section 1 (1 to 4).
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
                "gate 2: {PROXY_ENABLED_VAR} is not set to a true value; the server has not enabled the upstream proxy"
            ),
            GateClosed::NoSessionId => write!(
                f,
                "gate 3: {SESSION_ID_VAR} is unset or empty; the session must provide its id"
            ),
            GateClosed::Token(e) => write!(
                f,
                "gate 4: the session token file is not usable ({e}); the session must provide a readable, non-empty token file (see --token-file)"
            ),
        }
    }
}

impl std::error::Error for GateClosed {}

/// Checks the four gates in order. The token file is read only when gates
/// 1 to 3 pass, so a laptop never touches it.
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
}
