//! Each start-up step that can fail (docs/PROTOCOL.md section 2) fails open:
//! one warning line on stderr, the command runs anyway with its own exit
//! status and without a single proxy variable, and the token file stays
//! where it was (the relay unlinks it only once listening) so a supervisor
//! can retry. Broken CA endpoints are played by a tiny server in the test.
//! `run`'s own options fail open too: one it cannot parse leaves the relay
//! off and the command running, where the command can be found.

use std::net::TcpListener;
use std::time::Duration;

use ccr_integration::pki::TestCa;
use ccr_integration::session_env::{
    Outcome, RUN_TIMEOUT, Reply, Running, Session, TinyServer, closed_port, http_answer,
    relay_vars_in,
};
use ccr_integration::temp_dir;

/// What the wrapped command prints first and exits with.
const SCRIPT: &str = "echo child-ran; env; exit 42";

/// The fail-open shape: the command ran, exit 42, no relay variables, one
/// stderr line holding each of `needles` (case-insensitive) and not the
/// token, the token file intact.
fn assert_failed_open(s: &Session, out: &Outcome, needles: &[&str]) {
    assert_eq!(
        out.code(),
        Some(42),
        "the command's exit status was not passed through: {}",
        out.describe()
    );
    assert!(
        out.stdout.starts_with("child-ran\n"),
        "the command did not run: {}",
        out.describe()
    );
    assert_eq!(
        relay_vars_in(&out.env()),
        Vec::<String>::new(),
        "proxy variables reached the child of a relay that failed to start"
    );
    let lines = out.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "want exactly one warning line: {}",
        out.describe()
    );
    let line = lines[0].to_ascii_lowercase();
    for needle in needles {
        assert!(
            line.contains(&needle.to_ascii_lowercase()),
            "the warning does not mention {needle:?}: {:?}",
            lines[0]
        );
    }
    assert!(!lines[0].contains(&s.token), "the warning holds the token");
    assert!(
        s.token_file_intact(),
        "the token file was unlinked although the relay did not start"
    );
}

/// A session whose CA endpoint answers every request with `answer`; runs
/// [`SCRIPT`] and checks the fail-open shape and that no bundle was written.
fn fetch_fails_open(name: &str, answer: Vec<u8>, needles: &[&str]) {
    let server = TinyServer::start(Reply::Bytes(answer));
    let s = Session::new(name, &server.base_url());
    let out = s.run(&["sh", "-c", SCRIPT]);
    assert!(server.hits() >= 1, "the relay never asked the CA endpoint");
    assert_failed_open(&s, &out, needles);
    assert!(
        !s.bundle.exists(),
        "a bundle was written from a failed fetch"
    );
}

fn a_ca_pem() -> Vec<u8> {
    let dir = temp_dir("lifecycle-failopen-ca");
    TestCa::new(&dir.join("ca")).expect("make a CA").cert_pem()
}

#[test]
fn ca_fetch_refused() {
    let s = Session::new("refused", &format!("http://127.0.0.1:{}", closed_port()));
    let out = s.run(&["sh", "-c", SCRIPT]);
    assert_failed_open(&s, &out, &["CA"]);
    assert!(!s.bundle.exists());
}

#[test]
fn ca_fetch_404() {
    fetch_fails_open(
        "404",
        http_answer("404 Not Found", "text/plain", b"not found\n"),
        &["CA", "404"],
    );
}

#[test]
fn ca_fetch_html_body() {
    fetch_fails_open(
        "html",
        http_answer(
            "200 OK",
            "text/html",
            b"<!doctype html><html><head><title>Sign in</title></head><body>login</body></html>\n",
        ),
        &["CA"],
    );
}

#[test]
fn ca_fetch_json_body() {
    fetch_fails_open(
        "json",
        http_answer(
            "200 OK",
            "application/json",
            br#"{"error":{"type":"not_found_error","message":"no such endpoint"}}"#,
        ),
        &["CA"],
    );
}

#[test]
fn ca_fetch_empty_body() {
    fetch_fails_open(
        "empty",
        http_answer("200 OK", "application/x-pem-file", b""),
        &["CA"],
    );
}

#[test]
fn ca_fetch_pem_looking_garbage() {
    let real = String::from_utf8(a_ca_pem()).unwrap();
    let truncated: String = real.lines().take(5).collect::<Vec<_>>().join("\n");
    for (what, body) in [
        (
            "not base64",
            "-----BEGIN CERTIFICATE-----\nthis is not base64 at all!\n-----END CERTIFICATE-----\n"
                .to_string(),
        ),
        (
            "base64 of text",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQgdGhpcyBpcyBub3QgYSBjZXJ0aWZpY2F0ZQ==\n-----END CERTIFICATE-----\n"
                .to_string(),
        ),
        (
            "empty block",
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_string(),
        ),
        ("truncated certificate", format!("{truncated}\n")),
    ] {
        eprintln!("case: {what}");
        fetch_fails_open(
            "garbage",
            http_answer("200 OK", "application/x-pem-file", body.as_bytes()),
            &["CA"],
        );
    }
}

#[test]
fn ca_fetch_that_never_answers_is_bounded() {
    let server = TinyServer::start(Reply::Never);
    let s = Session::new("silent", &server.base_url());
    let out = s.run_within(&["sh", "-c", SCRIPT], Duration::from_secs(20));
    assert!(server.hits() >= 1, "the relay never connected");
    eprintln!("the command ran {:?} after start", out.elapsed);
    assert!(
        out.elapsed < Duration::from_secs(7),
        "the CA fetch is not bounded at ~5 s: the command finished after {:?}",
        out.elapsed
    );
    assert_failed_open(&s, &out, &["CA"]);
    assert!(!s.bundle.exists());
}

#[test]
fn ca_answer_that_trickles_forever_is_bounded() {
    // Headers at once, then one body byte every 200 ms: each read
    // succeeds, so only a deadline on the whole exchange stops it.
    let server = TinyServer::start(Reply::Trickle {
        head: b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\nContent-Length: 100000\r\n\r\n"
            .to_vec(),
        every: Duration::from_millis(200),
    });
    let s = Session::new("trickle", &server.base_url());
    let out = s.run_within(&["sh", "-c", SCRIPT], Duration::from_secs(20));
    assert!(server.hits() >= 1, "the relay never connected");
    eprintln!("the command ran {:?} after start", out.elapsed);
    assert!(
        out.elapsed < Duration::from_secs(7),
        "the CA fetch is not bounded at ~5 s overall: the command finished after {:?}",
        out.elapsed
    );
    assert_failed_open(&s, &out, &["CA"]);
    assert!(!s.bundle.exists());
}

#[test]
fn bundle_directory_that_cannot_be_created() {
    let server = TinyServer::start(Reply::Bytes(http_answer(
        "200 OK",
        "application/x-pem-file",
        &a_ca_pem(),
    )));
    let s = Session::new("bundle-dir", &server.base_url());
    // A regular file where a directory should be: even root cannot create
    // a directory under it.
    let file = s.dir.join("not-a-dir");
    std::fs::write(&file, "a file\n").unwrap();
    let s = s.bundle_at(file.join("b").join("ca-bundle.crt"));
    let out = s.run(&["sh", "-c", SCRIPT]);
    assert!(server.hits() >= 1, "the relay never fetched the CA");
    assert_failed_open(&s, &out, &["bundle"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a file\n");
}

#[test]
fn listen_port_already_taken() {
    let server = TinyServer::start(Reply::Bytes(http_answer(
        "200 OK",
        "application/x-pem-file",
        &a_ca_pem(),
    )));
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let s = Session::new("listen", &server.base_url())
        .arg("--listen")
        .arg(addr.to_string());
    let out = s.run(&["sh", "-c", SCRIPT]);
    assert_failed_open(&s, &out, &["listen", &addr.to_string()]);
    drop(held);
}

/// Failing open keeps the command's environment, but for the token and the
/// variables naming where a token is: those never reach a child, in either
/// generation.
#[test]
fn failing_open_still_keeps_every_token_source_from_the_child() {
    const SECRET: &str = "env-token-that-must-stay-in-the-relay";
    for agent_proxy in [false, true] {
        let server = TinyServer::start(Reply::Bytes(http_answer(
            "404 Not Found",
            "text/plain",
            b"no",
        )));
        let mut s = Session::new("failopen-token-vars", &server.base_url())
            .env("CLAUDE_CODE_SESSION_ACCESS_TOKEN", SECRET)
            .env("CLAUDE_SESSION_INGRESS_TOKEN_FILE", "/nonexistent/ingress")
            .env("CLAUDE_CODE_WEBSOCKET_AUTH_FILE_DESCRIPTOR", "99")
            .env("KEPT_BY_THE_COMMAND", "yes");
        if agent_proxy {
            s = s.agent_proxy();
        }
        let out = s.run(&["sh", "-c", SCRIPT]);
        assert_failed_open(&s, &out, &["ca"]);
        let env = out.env();
        for name in [
            "CLAUDE_CODE_SESSION_ACCESS_TOKEN",
            "CLAUDE_SESSION_INGRESS_TOKEN_FILE",
            "CLAUDE_CODE_WEBSOCKET_AUTH_FILE_DESCRIPTOR",
        ] {
            assert!(
                !env.contains_key(name),
                "{name} reached the child (agent proxy: {agent_proxy})"
            );
        }
        assert!(!out.stdout.contains(SECRET), "the token reached the child");
        assert!(
            !out.stdout.contains(&s.token),
            "the token reached the child"
        );
        assert_eq!(
            env.get("KEPT_BY_THE_COMMAND").map(String::as_str),
            Some("yes")
        );
    }
}

/// A session whose gateway would work: a relay that parsed its options
/// would start (and ask the CA endpoint, which counts the asking).
fn working_session(name: &str) -> (Session, TinyServer) {
    let server = TinyServer::start(Reply::Bytes(http_answer(
        "200 OK",
        "application/x-pem-file",
        &a_ca_pem(),
    )));
    let s = Session::new(name, &server.base_url())
        .env(
            "CLAUDE_CODE_SESSION_ACCESS_TOKEN",
            "cli-token-kept-from-the-child",
        )
        .env("KEPT_BY_THE_COMMAND", "yes");
    (s, server)
}

/// The command ran as if the relay were absent: the fail-open shape with
/// one warning naming `option`, the relay never started (the CA endpoint
/// was not asked), the token variables still gone, the rest passed through.
fn assert_ran_without_relay(s: &Session, server: &TinyServer, out: &Outcome, option: &str) {
    assert_failed_open(s, out, &[option, "without the proxy"]);
    assert_eq!(
        server.hits(),
        0,
        "the relay started although its options did not parse"
    );
    let env = out.env();
    assert!(
        !env.contains_key("CLAUDE_CODE_SESSION_ACCESS_TOKEN"),
        "the token variable reached the child: {}",
        out.describe()
    );
    assert!(!out.stdout.contains("cli-token-kept-from-the-child"));
    assert_eq!(
        env.get("KEPT_BY_THE_COMMAND").map(String::as_str),
        Some("yes")
    );
}

/// An entrypoint written for a newer relay (or with a typo) still starts
/// its command: an unknown option, a bad value, a missing value.
#[test]
fn run_options_that_do_not_parse_still_run_the_command() {
    for (name, args, option) in [
        ("cli-unknown", &["--some-new-flag"][..], "--some-new-flag"),
        (
            "cli-unknown-value",
            &["--some-new-flag", "v"][..],
            "--some-new-flag",
        ),
        ("cli-bad-value", &["--listen", "nope"][..], "--listen"),
        // `--keepalive $UNSET -- COMMAND`: `--` is not a value.
        ("cli-missing-value", &["--keepalive"][..], "--keepalive"),
    ] {
        let (mut s, server) = working_session(name);
        for arg in args {
            s = s.arg(arg);
        }
        let out = s.run(&["sh", "-c", SCRIPT]);
        assert_ran_without_relay(&s, &server, &out, option);
    }
}

/// Without `--`, the command is the first argument that is no option and
/// no option's value; after an unknown option written without `=` that
/// cannot be told, and `run` refuses (exit 2) rather than guess.
#[test]
fn run_without_double_dash_fails_open_only_where_the_command_is_certain() {
    let (s, server) = working_session("cli-no-dashes");
    let mut cmd = s.command("run", &[]);
    cmd.args(["--some-new-flag=1", "sh", "-c", SCRIPT]);
    let out = Running::spawn(cmd).finish(RUN_TIMEOUT);
    assert_ran_without_relay(&s, &server, &out, "--some-new-flag");

    for (args, needle) in [
        (
            &["--some-new-flag", "sh", "-c", SCRIPT][..],
            "put -- before the command",
        ),
        (&["--some-new-flag"][..], "run needs a command"),
    ] {
        let mut cmd = s.command("run", &[]);
        cmd.args(args);
        let out = Running::spawn(cmd).finish(RUN_TIMEOUT);
        assert_eq!(out.code(), Some(2), "{args:?}: {}", out.describe());
        assert_eq!(out.stdout, "", "{args:?}: the command ran");
        assert!(
            out.stderr.contains("--some-new-flag") && out.stderr.contains(needle),
            "{args:?}: {}",
            out.describe()
        );
    }
    assert_eq!(server.hits(), 0);
    assert!(s.token_file_intact());
}
