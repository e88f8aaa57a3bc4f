//! The first hour of a new user, outside a session: `serve` says in one
//! line why it does not serve (which gate, which variable) instead of
//! exiting in silence, while `run` keeps gate 1 silent; `doctor` with a
//! closed gate contacts nothing (a local listener as the base URL proves
//! it: no connection arrives), prints no environment children would not
//! get, and says what would happen and how to open the gates by hand; and
//! the command-line errors name every command; the development gateway
//! logs the relay's start-up probe as a probe, not as a refused tunnel.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use ccr_integration::session_env::{ENABLED, REMOTE, SESSION_ID, Session};
use ccr_integration::{DevGateway, GatewayOptions, ServerKind, bin_path};

/// A listener nobody would answer on: the base URL of a gateway that must
/// never be contacted. Non-blocking, so [`assert_untouched`] can look.
fn silent_gateway() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local listener");
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// Fails if any connection reached `listener`.
fn assert_untouched(listener: &TcpListener, what: &str) {
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("{what}: the gateway was contacted (from {peer})"),
        Err(e) => panic!("{what}: accept: {e}"),
    }
}

/// A session with `gate` (1 to 4) closed, and what names it (the gate
/// and its variable or option).
fn closed_gate(gate: u8, tag: &str, url: &str) -> (Session, [&'static str; 2]) {
    let s = Session::new(&format!("first-hour-{tag}-gate{gate}"), url);
    match gate {
        1 => (s.unset(REMOTE), ["gate 1", REMOTE]),
        2 => (s.env(ENABLED, "0"), ["gate 2", ENABLED]),
        3 => (s.unset(SESSION_ID), ["gate 3", SESSION_ID]),
        _ => {
            std::fs::remove_file(&s.token_file).unwrap();
            (s, ["gate 4", "--token-file"])
        }
    }
}

#[test]
fn serve_outside_a_session_says_why_in_one_line() {
    let (listener, url) = silent_gateway();
    for gate in 1..=4 {
        for rust_log in ["", "info"] {
            let (s, names) = closed_gate(gate, "serve", &url);
            let s = s.env("RUST_LOG", rust_log);
            let out = s
                .spawn("serve", &[])
                .finish(ccr_integration::session_env::RUN_TIMEOUT);
            let what = format!("{} (RUST_LOG={rust_log:?})", names[0]);
            assert_eq!(out.code(), Some(0), "{what}: {}", out.describe());
            let lines = out.stderr_lines();
            assert_eq!(lines.len(), 1, "{what}: one line: {}", out.describe());
            for name in names {
                assert!(
                    lines[0].contains(name),
                    "{what}: {name} not named: {lines:?}"
                );
            }
            assert!(
                !lines[0].contains(&s.token),
                "{what}: the token in {lines:?}"
            );
        }
    }
    assert_untouched(&listener, "serve");
    // `run` keeps gate 1 silent, as the contract says.
    let s = Session::new("first-hour-run", &url).unset(REMOTE);
    let out = s.env("RUST_LOG", "info").run(&["true"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.stderr, "", "run with gate 1 closed: {}", out.describe());
}

#[test]
fn doctor_outside_a_session_contacts_nothing_and_says_what_would_happen() {
    let (listener, url) = silent_gateway();
    for gate in 1..=4 {
        let (s, names) = closed_gate(gate, "doctor", &url);
        let out = s.doctor();
        let what = names[0];
        assert_eq!(out.code(), Some(1), "{what}: {}", out.describe());
        let text = &out.stdout;
        // Nothing children would not get, nothing start-up would not write.
        assert!(
            !text
                .lines()
                .any(|l| l.trim_start().starts_with("HTTPS_PROXY=")),
            "{what}: {}",
            out.describe()
        );
        assert!(
            !text.contains("children would get") && !text.contains("what start-up would write"),
            "{what}: {}",
            out.describe()
        );
        assert!(
            text.contains(&format!(
                "skip  gateway CA: {what} is closed, so start-up stops there; doctor contacts nothing"
            )),
            "{what}: {}",
            out.describe()
        );
        // What would happen, and how to open the gates by hand.
        assert!(
            text.contains("run: the command runs without the proxy, as if the relay were absent"),
            "{what}: {}",
            out.describe()
        );
        assert!(
            text.contains("serve: says why in one line on stderr and exits 0"),
            "{what}: {}",
            out.describe()
        );
        for needle in [
            "to open the gates by hand",
            "CLAUDE_CODE_REMOTE=1",
            "CCR_UPSTREAM_PROXY_ENABLED=1",
            "CCR_AGENT_PROXY_ENABLED=1",
            "CLAUDE_CODE_REMOTE_SESSION_ID=",
            "--token-file",
        ] {
            assert!(
                text.contains(needle),
                "{what}: no {needle:?}: {}",
                out.describe()
            );
        }
        assert!(
            text.contains(&format!(
                "verdict: the proxy would stay off ({what} is closed); commands run without it"
            )),
            "{what}: {}",
            out.describe()
        );
        assert!(!text.contains(&s.token), "{what}: the token in the report");
        assert_untouched(&listener, what);
    }
}

#[test]
fn command_line_errors_list_every_command() {
    for args in [&[][..], &["frobnicate"][..]] {
        let out = Command::new(bin_path("ccr-relay"))
            .args(args)
            .output()
            .expect("run ccr-relay");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("run, serve, doctor or status"),
            "{args:?}: {stderr}"
        );
    }
}

/// The relay's start-up probe (a WebSocket opened and closed before any
/// CONNECT) is no refused tunnel: the development gateway logs it as a
/// probe, in both generations.
#[test]
fn the_development_gateway_logs_the_start_up_probe_as_a_probe() {
    for agent in [false, true] {
        let opts = if agent {
            GatewayOptions::default().agent_proxy(ServerKind::Late)
        } else {
            GatewayOptions::default()
        };
        let gw = DevGateway::start(opts);
        let s = Session::for_gateway(&format!("probe-log-{agent}"), &gw);
        let s = if agent { s.agent_proxy() } else { s };
        let out = s.run(&["true"]);
        assert_eq!(out.code(), Some(0), "{}", out.describe());
        let log = gw.dir.join("stderr.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("probe") || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            text.contains("closed before any CONNECT: the relay's start-up probe"),
            "agent proxy {agent}: {text}"
        );
        assert!(
            !text.contains("tunnel refused"),
            "agent proxy {agent}: {text}"
        );
        assert_eq!(gw.count_events("tunnel refused"), 0, "agent proxy {agent}");
    }
}
