//! What `ccr_relay::env::credentials` gives children, checked with a real `git`:
//! GitHub SSH remotes go out as HTTPS through the proxy (a `CONNECT
//! github.com:443` reaches it) unless the session has SSH of its own, and a
//! server asking for a password makes git fail at once instead of prompting.
//!
//! The "proxy" and the "server" are local listeners that record the request
//! line and answer with a canned response: nothing leaves the machine.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ccr_relay::env::credentials::credential_vars;

/// A listener that records each request's first line and answers `reply`.
struct Recorder {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start(reply: &'static str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                seen.lock()
                    .unwrap()
                    .push(text.lines().next().unwrap_or("").to_string());
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        Recorder { addr, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

fn git() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ccr_relay::sys::command::find_on_path("git", &path)
        .unwrap_or_else(|| panic!("git is needed by this test and is not on PATH: install `git`"))
}

/// Runs git with a bare environment plus `parent` and, when `with_vars`,
/// what the relay would add for that parent; no controlling terminal.
fn run_git(args: &[&str], parent: &[(&str, &str)], with_vars: bool) -> (Output, Duration) {
    let map: HashMap<String, String> = parent
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut cmd = Command::new("setsid");
    cmd.arg("-w")
        .arg(git())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .envs(&map);
    if with_vars {
        cmd.envs(credential_vars(|k| map.get(k).cloned(), false));
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    (out, start.elapsed())
}

#[test]
fn github_ssh_remote_goes_through_the_proxy_as_https() {
    let proxy = Recorder::start("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    let proxy_url = format!("http://{}", proxy.addr);
    // GIT_SSH=false: an SSH attempt fails at once instead of dialling out.
    let base = [("HTTPS_PROXY", proxy_url.as_str()), ("GIT_SSH", "false")];

    let (out, _) = run_git(&["ls-remote", "git@github.com:octo/repo.git"], &base, false);
    assert!(!out.status.success());
    assert!(
        proxy.lines().is_empty(),
        "without the variables git used SSH: {:?}",
        proxy.lines()
    );

    let (out, _) = run_git(&["ls-remote", "git@github.com:octo/repo.git"], &base, true);
    assert!(!out.status.success(), "the proxy refused, git must fail");
    let (out2, _) = run_git(
        &["ls-remote", "ssh://git@github.com/octo/repo.git"],
        &base,
        true,
    );
    assert!(!out2.status.success());
    let lines = proxy.lines();
    assert_eq!(lines.len(), 2, "{lines:?} {out:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("CONNECT github.com:443 ")),
        "{lines:?}"
    );

    // A session with its own SSH agent keeps SSH.
    let mut own = base.to_vec();
    own.push(("SSH_AUTH_SOCK", "/tmp/ccr-no-agent.sock"));
    let (out, _) = run_git(&["ls-remote", "git@github.com:octo/repo.git"], &own, true);
    assert!(!out.status.success());
    assert_eq!(
        proxy.lines().len(),
        2,
        "git went through the proxy despite SSH_AUTH_SOCK"
    );
}

#[test]
fn a_password_request_fails_at_once_instead_of_prompting() {
    let server = Recorder::start(
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let url = format!("http://{}/repo.git", server.addr);
    let stderr_of = |parent: &[(&str, &str)], with_vars: bool| {
        let (out, took) = run_git(&["ls-remote", &url], parent, with_vars);
        assert!(!out.status.success());
        assert!(took < Duration::from_secs(20), "{took:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Without the variables git tries the terminal (and, here, has none).
    let bare = stderr_of(&[], false);
    assert!(bare.contains("No such device or address"), "{bare}");
    // With them, credential.interactive=false stops it before any prompt.
    let all = stderr_of(&[], true);
    assert!(all.contains("unable to get password from user"), "{all}");
    // A user's own GIT_CONFIG_COUNT is kept: then GIT_TERMINAL_PROMPT=0 does it.
    let own = [
        ("GIT_CONFIG_COUNT", "1"),
        ("GIT_CONFIG_KEY_0", "user.name"),
        ("GIT_CONFIG_VALUE_0", "me"),
    ];
    let own = stderr_of(&own, true);
    assert!(own.contains("terminal prompts disabled"), "{own}");
    assert!(!server.lines().is_empty(), "git never asked the server");
}
