//! `ccr-relay run` as a process supervisor: the command's exit status is
//! the relay's (a code, 128+N for a signal, 127 when it cannot be started),
//! whether the relay is active or off; termination signals sent to the
//! relay reach the command, and the relay keeps serving tunnels until the
//! command has exited, then stops.

use std::net::TcpStream;
use std::time::Duration;

use ccr_integration::session_env::{REMOTE, Reply, Session, TinyServer, http_answer};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, temp_dir};

const WAIT: Duration = Duration::from_secs(10);

/// An active session (the relay starts), or one with gate 1 closed.
fn session(name: &str, active: bool) -> (Session, TinyServer, ccr_integration::TempDir) {
    let dir = temp_dir("lifecycle-run-ca");
    let ca = ccr_integration::pki::TestCa::new(&dir.join("ca")).unwrap();
    let server = TinyServer::start(Reply::Bytes(http_answer(
        "200 OK",
        "application/x-pem-file",
        &ca.cert_pem(),
    )));
    let s = Session::new(name, &server.base_url());
    let s = if active { s } else { s.unset(REMOTE) };
    (s, server, dir)
}

/// Runs `command` and checks the relay was (or was not) active for it.
fn run_checked(
    name: &str,
    active: bool,
    command: &[&str],
) -> ccr_integration::session_env::Outcome {
    let (s, _server, _dir) = session(name, active);
    let out = s.run(command);
    assert_eq!(
        !s.token_file.exists(),
        active,
        "the relay was {}expected to start: {}",
        if active { "" } else { "not " },
        out.describe()
    );
    out
}

fn exit_7(active: bool) {
    let out = run_checked("exit7", active, &["sh", "-c", "echo ran; exit 7"]);
    assert_eq!(out.code(), Some(7), "{}", out.describe());
    assert_eq!(out.stdout, "ran\n");
    assert_eq!(out.stderr, "", "{}", out.describe());
}

fn killed_by_sigkill(active: bool) {
    let out = run_checked("sigkill", active, &["sh", "-c", "kill -9 $$"]);
    // Active, the relay reports it as exit code 137; off, the relay has
    // become the command (exec) and dies of the signal itself, which a
    // shell's `$?` shows as 137 too.
    eprintln!("raw status: {}", out.status);
    assert_eq!(
        out.shell_status(),
        137,
        "a command killed by SIGKILL must give 128+9: {}",
        out.describe()
    );
    if active {
        assert_eq!(out.code(), Some(137), "{}", out.describe());
    }
}

fn command_not_found(active: bool) {
    let name = "ccr-lifecycle-no-such-command";
    let out = run_checked("notfound", active, &[name, "arg"]);
    assert_eq!(out.code(), Some(127), "{}", out.describe());
    let lines = out.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "want one line saying why: {}",
        out.describe()
    );
    assert!(
        lines[0].contains(name),
        "the reason does not name the command: {:?}",
        lines[0]
    );
}

#[test]
fn exit_status_passes_through_active() {
    exit_7(true);
}

#[test]
fn exit_status_passes_through_disabled() {
    exit_7(false);
}

#[test]
fn killed_by_sigkill_is_137_active() {
    killed_by_sigkill(true);
}

#[test]
fn killed_by_sigkill_is_137_disabled() {
    killed_by_sigkill(false);
}

#[test]
fn missing_command_is_127_with_one_line_active() {
    command_not_found(true);
}

#[test]
fn missing_command_is_127_with_one_line_disabled() {
    command_not_found(false);
}

/// Starts `sh -c 'trap "echo got-SIG; exit 3" SIG; echo ready; loop'` under
/// an active relay, sends `sig` to the relay after `ready`, and checks the
/// command heard it and its status came back.
fn signal_reaches_the_command(sig: libc::c_int, trap: &str) {
    let (s, _server, _dir) = session(&format!("signal-{trap}"), true);
    let script =
        format!("trap 'echo got-{trap}; exit 3' {trap}; echo ready; while :; do sleep 0.1; done");
    let running = s.spawn("run", &["sh", "-c", &script]);
    running.wait_line(WAIT, |l| l == "ready");
    assert!(!s.token_file.exists(), "the relay did not start");
    running.signal(sig);
    let out = running.finish(WAIT);
    assert!(
        out.stdout.contains(&format!("got-{trap}\n")),
        "the command never got SIG{trap}: {}",
        out.describe()
    );
    assert_eq!(
        out.code(),
        Some(3),
        "the relay's status is not the command's: {}",
        out.describe()
    );
}

#[test]
fn sigterm_reaches_the_command_and_its_status_comes_back() {
    signal_reaches_the_command(libc::SIGTERM, "TERM");
}

#[test]
fn sigint_reaches_the_command_and_its_status_comes_back() {
    signal_reaches_the_command(libc::SIGINT, "INT");
}

#[test]
fn sighup_reaches_the_command_and_its_status_comes_back() {
    signal_reaches_the_command(libc::SIGHUP, "HUP");
}

#[test]
fn relay_serves_tunnels_until_the_command_exits_even_after_sigterm() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let s = Session::for_gateway("signal-serving", &gw);
    // A CONNECT tunnel (-p) through the relay before the signal, and one
    // from inside the trap, after the relay got SIGTERM.
    let curl = r#"curl -sS --max-time 10 -p -x "$HTTPS_PROXY" http://origin.test/hello"#;
    let script = format!(
        "trap '{curl}; echo got-term; exit 3' TERM; \
         echo proxy=$HTTPS_PROXY; {curl}; echo ready; while :; do sleep 0.1; done"
    );
    let running = s.spawn("run", &["sh", "-c", &script]);
    let proxy = running.wait_line(WAIT, |l| l.starts_with("proxy="));
    let addr = proxy
        .strip_prefix("proxy=http://")
        .unwrap_or_else(|| panic!("the relay did not start: {proxy:?}"))
        .to_string();
    running.wait_line(WAIT, |l| l == "ready");
    assert_eq!(gw.count_events("connect origin.test:80"), 1);
    running.signal(libc::SIGTERM);
    let out = running.finish(WAIT);
    assert_eq!(out.code(), Some(3), "{}", out.describe());
    assert_eq!(
        out.stdout,
        format!("{proxy}\nhello from origin\nready\nhello from origin\ngot-term\n"),
        "the tunnel opened after SIGTERM, while the command still ran, failed: {}",
        out.describe()
    );
    assert_eq!(gw.count_events("connect origin.test:80"), 2);
    // Once the command is gone, so is the listener.
    assert!(
        TcpStream::connect(&addr).is_err(),
        "the relay's port {addr} still accepts after the relay exited"
    );
}

/// The command's own view of its signal mask, as the kernel reports it
/// (`grep` is exec'd directly and leaves its mask alone; a shell would
/// clear it and hide the problem).
fn blocked_signals_of_the_command(active: bool) {
    let (s, _server, _dir) = session("sigmask", active);
    let out = s.run(&["grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(!s.token_file.exists(), active, "{}", out.describe());
    let blocked = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{}", out.describe()));
    let mask = u64::from_str_radix(blocked, 16).unwrap();
    let names: Vec<i32> = (1..=64).filter(|n| mask & (1u64 << (n - 1)) != 0).collect();
    assert_eq!(
        mask,
        0,
        "the command starts with signals {names:?} blocked (relay {}): it will never \
         see SIGTERM/SIGINT/SIGHUP, from the relay or a terminal\n{}",
        if active { "active" } else { "off" },
        out.stdout
    );
}

#[test]
fn command_starts_with_no_blocked_signals_active() {
    blocked_signals_of_the_command(true);
}

#[test]
fn command_starts_with_no_blocked_signals_disabled() {
    blocked_signals_of_the_command(false);
}

/// A command that keeps the default dispositions and does not touch its
/// mask (Python, unlike `sh`, which clears the mask at start-up): `sig`
/// sent to the relay must end it, and the relay reports 128+N.
fn default_handler_command_dies_of(active: bool, sig: libc::c_int, status: i32) {
    let (s, _server, _dir) = session(&format!("sig-default-{sig}"), active);
    let running = s.spawn(
        "run",
        &[
            "/usr/bin/python3",
            "-c",
            // Short sleeps: CPython's handler only sets a flag, and a SIGINT
            // landing between the flag check and a long sleep would go
            // unnoticed until the sleep ends.
            "import time; print('ready', flush=True); [time.sleep(0.05) for _ in range(600)]",
        ],
    );
    running.wait_line(WAIT, |l| l == "ready");
    running.signal(sig);
    // Python's default SIGINT handler raises KeyboardInterrupt, which
    // ends the program with SIGINT again: 130 as well. Either dies at
    // once; 5 s is plenty.
    let out = running.finish(Duration::from_secs(5));
    assert_eq!(
        out.shell_status(),
        status,
        "signal {sig} to the relay (active: {active}) did not end the command: {}",
        out.describe()
    );
}

#[test]
fn sigterm_ends_a_command_with_default_handlers_active() {
    default_handler_command_dies_of(true, libc::SIGTERM, 143);
}

#[test]
fn sigterm_ends_a_command_with_default_handlers_disabled() {
    default_handler_command_dies_of(false, libc::SIGTERM, 143);
}

#[test]
fn sigint_ends_a_command_with_default_handlers_active() {
    default_handler_command_dies_of(true, libc::SIGINT, 130);
}

#[test]
fn sigint_ends_a_command_with_default_handlers_disabled() {
    default_handler_command_dies_of(false, libc::SIGINT, 130);
}
