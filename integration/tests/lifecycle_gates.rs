//! The four activation gates (docs/PROTOCOL.md section 1) seen from outside:
//! `ccr-relay run -- sh -c env` under each closed gate. Gate 1 closed is
//! the developer's laptop: not a byte on stderr, nothing written, no
//! network. Gates 2 to 4 closed: exactly one warning line naming the gate,
//! the command runs as if the relay were absent, with its own exit status,
//! and the token file stays for a supervisor to retry.
//!
//! The CA endpoint is a server that would answer with a valid certificate,
//! so a relay that ignored a closed gate would start and be caught (its
//! variables would show up, the server would count a request).

use ccr_integration::pki::TestCa;
use ccr_integration::session_env::{
    ENABLED, REMOTE, Reply, SESSION_ID, Session, TinyServer, http_answer, relay_vars_in,
};
use ccr_integration::{TempDir, temp_dir};

/// A CA endpoint answering every request with a fresh CA certificate.
fn working_ca_endpoint() -> (TinyServer, TempDir) {
    let dir = temp_dir("lifecycle-gates-ca");
    let ca = TestCa::new(&dir.join("ca")).expect("make a CA");
    let server = TinyServer::start(Reply::Bytes(http_answer(
        "200 OK",
        "application/x-pem-file",
        &ca.cert_pem(),
    )));
    (server, dir)
}

/// Sets `name` to `value`, or removes it for `None`.
fn with_var(s: Session, name: &str, value: Option<&str>) -> Session {
    match value {
        Some(v) => s.env(name, v),
        None => s.unset(name),
    }
}

#[test]
fn gate_1_closed_is_silent_writes_nothing_and_runs_the_command() {
    let (server, _ca) = working_ca_endpoint();
    for value in [None, Some("0"), Some("false"), Some("nope")] {
        let s = with_var(Session::new("gate1", &server.base_url()), REMOTE, value);
        let out = s.run(&["sh", "-c", "echo child-ran; env"]);
        let what = format!("{REMOTE}={value:?}");
        assert_eq!(out.code(), Some(0), "{what}: {}", out.describe());
        assert!(
            out.stdout.starts_with("child-ran\n"),
            "{what}: {}",
            out.describe()
        );
        assert_eq!(
            relay_vars_in(&out.env()),
            Vec::<String>::new(),
            "{what}: the relay's variables reached the child"
        );
        assert_eq!(
            out.stderr,
            "",
            "{what}: gate 1 closed must be silent: {}",
            out.describe()
        );
        assert!(
            !s.bundle.exists() && !s.bundle.parent().unwrap().exists(),
            "{what}: the bundle (or its directory) was written"
        );
        assert!(
            !s.home.join(".ccr").exists(),
            "{what}: $HOME/.ccr was created"
        );
        assert!(s.token_file_intact(), "{what}: the token file was touched");
    }
    assert_eq!(
        server.hits(),
        0,
        "gate 1 closed, yet the CA endpoint was asked"
    );
}

#[test]
fn gate_1_truthy_forms_open_it() {
    let (server, _ca) = working_ca_endpoint();
    for value in [" TRUE ", "On", "yes", "1"] {
        let s = Session::new("gate1-open", &server.base_url()).env(REMOTE, value);
        let out = s.run(&["sh", "-c", "env"]);
        let what = format!("{REMOTE}={value:?}");
        assert_eq!(out.code(), Some(0), "{what}: {}", out.describe());
        let proxy = out.var("HTTPS_PROXY");
        assert!(
            proxy
                .as_deref()
                .is_some_and(|p| p.starts_with("http://127.0.0.1:")),
            "{what}: the proxy did not start: {}",
            out.describe()
        );
        assert!(s.bundle.is_file(), "{what}: no bundle written");
        assert!(
            !s.token_file.exists(),
            "{what}: the token file was not unlinked"
        );
    }
}

/// Runs `sh -c 'echo child-ran; env; exit 9'` and checks the fail-open
/// shape of a closed gate 2, 3 or 4: one warning line holding every one of
/// `needles`, no relay variables in the child, exit 9, nothing fetched.
fn assert_closed_gate(s: &Session, server: &TinyServer, what: &str, needles: &[&str]) {
    let hits = server.hits();
    let out = s.run(&["sh", "-c", "echo child-ran; env; exit 9"]);
    assert_eq!(
        out.code(),
        Some(9),
        "{what}: the command's status: {}",
        out.describe()
    );
    assert!(
        out.stdout.starts_with("child-ran\n"),
        "{what}: {}",
        out.describe()
    );
    assert_eq!(
        relay_vars_in(&out.env()),
        Vec::<String>::new(),
        "{what}: the relay's variables reached the child"
    );
    let lines = out.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "{what}: want exactly one warning line: {}",
        out.describe()
    );
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{what}: the warning does not name {needle:?}: {:?}",
            lines[0]
        );
    }
    assert!(
        !lines[0].contains(&s.token),
        "{what}: the warning holds the token"
    );
    assert_eq!(
        server.hits(),
        hits,
        "{what}: the CA endpoint was asked although a gate is closed"
    );
    assert!(!s.bundle.exists(), "{what}: a bundle was written");
}

/// For each of `values` of `var` (`None`: unset), `gate` is closed: the
/// relay warns once naming it and `var`, and leaves the token file as it
/// was.
fn gate_closed_for(tag: &str, gate: &str, var: &str, values: &[Option<&str>]) {
    let (server, _ca) = working_ca_endpoint();
    for &value in values {
        let s = with_var(Session::new(tag, &server.base_url()), var, value);
        let what = format!("{var}={value:?}");
        assert_closed_gate(&s, &server, &what, &[gate, var]);
        assert!(
            s.token_file_intact(),
            "{what}: the token file was unlinked or changed"
        );
    }
}

#[test]
fn gate_2_closed_warns_once_and_keeps_the_token_file() {
    let values = [None, Some("0"), Some("false"), Some("nope"), Some("")];
    gate_closed_for("gate2", "gate 2", ENABLED, &values);
}

#[test]
fn gate_3_closed_warns_once_and_keeps_the_token_file() {
    let values = [None, Some(""), Some("   "), Some(" \t ")];
    gate_closed_for("gate3", "gate 3", SESSION_ID, &values);
}

#[test]
fn gate_4_missing_token_file_warns_once() {
    let (server, _ca) = working_ca_endpoint();
    let s = Session::new("gate4-missing", &server.base_url());
    std::fs::remove_file(&s.token_file).unwrap();
    assert_closed_gate(&s, &server, "missing token file", &["gate 4", "token"]);
    assert!(!s.token_file.exists());
}

#[test]
fn gate_4_empty_or_blank_token_file_warns_once_and_is_not_unlinked() {
    let (server, _ca) = working_ca_endpoint();
    for content in ["", "   ", "\n", " \t\n \n"] {
        let s = Session::new("gate4-blank", &server.base_url());
        std::fs::write(&s.token_file, content).unwrap();
        let what = format!("token file holding {content:?}");
        assert_closed_gate(&s, &server, &what, &["gate 4", "token"]);
        assert_eq!(
            std::fs::read_to_string(&s.token_file).ok().as_deref(),
            Some(content),
            "{what}: the token file was unlinked or changed"
        );
    }
}

#[test]
fn doctor_into_a_closed_pipe_ends_quietly() {
    // `head -c 1` reads one byte and goes away: the report's next lines
    // meet a closed pipe.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "\"$0\" doctor | head -c 1 >/dev/null; sleep 0.2; \"$0\" --help | head -c 1 >/dev/null",
        )
        .arg(ccr_integration::bin_path("ccr-relay"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}
