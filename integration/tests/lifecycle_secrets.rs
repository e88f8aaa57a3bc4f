//! Keeping the session token secret over the relay's life: `doctor` looks
//! without touching (never prints the token, never unlinks the token file,
//! writes no bundle); a running relay cannot be ptraced nor have its
//! `/proc/PID/environ` read by another process of the same user; and its
//! most verbose log, over real traffic, holds neither the token nor the
//! Basic credentials built from it.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::relay::BlindPki;
use ccr_integration::session_env::{AS_NOBODY, ENABLED, Outcome, Running, Session};
use ccr_integration::wire::base64;
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions};

const TOKEN: &str = "tok-secret-5e0b7a13c9d24f68";
const SESSION: &str = "sess-secret-a41c";
const WAIT: Duration = Duration::from_secs(10);

fn gateway() -> DevGateway {
    DevGateway::start(GatewayOptions {
        token: TOKEN.into(),
        session_id: SESSION.into(),
        ..GatewayOptions::default()
    })
}

/// Neither the token nor base64(session:token) in stdout or stderr.
fn assert_no_secret(out: &Outcome, what: &str) {
    let basic = base64(format!("{SESSION}:{TOKEN}").as_bytes());
    for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !text.contains(TOKEN),
            "{what}: the token is on {stream}:\n{text}"
        );
        assert!(
            !text.contains(&basic),
            "{what}: base64(session:token) is on {stream}:\n{text}"
        );
    }
}

/// Neither the bundle nor its directory exists.
fn assert_no_bundle(s: &Session, what: &str) {
    assert!(
        !s.bundle.exists() && !s.bundle.parent().unwrap().exists(),
        "{what}: doctor wrote {}",
        s.bundle.display()
    );
}

#[test]
fn doctor_with_a_working_gateway_says_the_proxy_would_start() {
    let gw = gateway();
    let s = Session::for_gateway("doctor-ok", &gw);
    let out = s.doctor();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    for gate in 1..=4 {
        let ok = out
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("ok    gate {gate} ")));
        assert!(ok, "no ok line for gate {gate}: {}", out.describe());
    }
    assert!(
        !out.stdout.contains("FAIL"),
        "a check failed: {}",
        out.describe()
    );
    assert!(
        out.stdout.contains("the proxy would start"),
        "{}",
        out.describe()
    );
    assert_no_secret(&out, "doctor");
    assert!(s.token_file_intact(), "doctor unlinked the token file");
    assert_no_bundle(&s, "doctor");
}

#[test]
fn doctor_with_gate_2_closed_fails_it_and_exits_1() {
    let gw = gateway();
    let s = Session::for_gateway("doctor-gate2", &gw).env(ENABLED, "0");
    let out = s.doctor();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("gate 2"))
        .unwrap_or_else(|| panic!("no gate 2 line: {}", out.describe()));
    assert!(
        line.trim_start().starts_with("FAIL"),
        "gate 2 is not FAIL: {line:?}"
    );
    assert!(
        !out.stdout.contains("the proxy would start"),
        "{}",
        out.describe()
    );
    assert_no_secret(&out, "doctor");
    assert!(s.token_file_intact(), "doctor unlinked the token file");
    assert_no_bundle(&s, "doctor");
}

/// Attaches with `PTRACE_ATTACH` (16), waits for the stop, detaches (17).
const PTRACE_PROBE: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pid = int(sys.argv[1])
if libc.ptrace(16, pid, None, None) != 0:
    e = ctypes.get_errno()
    print("attach-failed", e, os.strerror(e))
    sys.exit(1)
os.waitpid(pid, 0x40000000)
libc.ptrace(17, pid, None, None)
print("attach-ok")
"#;

/// The prefix that runs a probe as the relay's user: `nobody` through
/// `setpriv` when the tests run as root, else the current user as is.
fn same_user_prefix() -> Vec<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        AS_NOBODY.to_vec()
    } else {
        Vec::new()
    }
}

fn command(argv: &[&str]) -> Command {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/")
        // Never the machine's /etc from a test (the tests run as root).
        .env("CCR_RELAY_INSTALL", "0");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// Runs a probe as the relay's user: `(succeeded, what it printed)`.
fn probe(argv: &[&str]) -> (bool, String) {
    let mut full = same_user_prefix();
    full.extend_from_slice(argv);
    let out = Running::spawn(command(&full)).finish(WAIT);
    let text = format!("{}{}", out.stdout, out.stderr).trim().to_string();
    (out.code() == Some(0), text)
}

fn ptrace_probe(pid: i32) -> (bool, String) {
    let pid = pid.to_string();
    probe(&["/usr/bin/python3", "-c", PTRACE_PROBE, &pid])
}

fn environ_probe(pid: i32) -> (bool, String) {
    let path = format!("/proc/{pid}/environ");
    let (ok, text) = probe(&["/bin/cat", &path]);
    // Printable, for messages: the environ is NUL-separated.
    (ok, text.replace('\0', " "))
}

fn uid_of(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn same_uid_process_can_neither_ptrace_the_relay_nor_read_its_environ() {
    let prefix = same_user_prefix();
    if prefix.is_empty() {
        eprintln!("not root: relay and probes run as the current user");
    }
    let gw = gateway();
    let mut s = Session::for_gateway("guard", &gw);
    let env_file = s.dir.join("relay.env");
    s = s.arg("--env-file").arg(&env_file);
    if !prefix.is_empty() {
        s = s.as_nobody();
    }
    // The relay, as that user.
    let relay = s.spawn("serve", &[]);
    let started = Instant::now();
    while !env_file.exists() {
        assert!(
            started.elapsed() < WAIT,
            "the relay wrote no env file within {WAIT:?}; stderr:\n{}",
            relay.stderr_so_far()
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !s.token_file.exists(),
        "the relay is not active (token file still there)"
    );
    let relay_pid = relay.pid();
    let exe = std::fs::read_link(format!("/proc/{relay_pid}/exe")).unwrap();
    assert_eq!(
        exe.file_name().and_then(|n| n.to_str()),
        Some("ccr-relay"),
        "pid {relay_pid} is {}",
        exe.display()
    );
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let user = if prefix.is_empty() { me } else { 65534 };
    assert_eq!(uid_of(relay_pid), Some(user), "the relay's uid");

    // The control: an ordinary process of the same user.
    let mut control_argv = prefix.clone();
    control_argv.extend(["/bin/sleep", "30"]);
    let control = Running::spawn(command(&control_argv));
    let control_pid = control.pid();
    let deadline = Instant::now() + WAIT;
    while std::fs::read_link(format!("/proc/{control_pid}/exe")).map_or(true, |p| {
        p != Path::new("/usr/bin/sleep") && p != Path::new("/bin/sleep")
    }) {
        assert!(Instant::now() < deadline, "the control never became sleep");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(uid_of(control_pid), Some(user), "the control's uid");

    let (environ_ok, environ_text) = environ_probe(control_pid);
    assert!(
        environ_ok && environ_text.contains("PATH="),
        "the environ probe cannot read an ordinary same-user process, so it proves nothing: {environ_text}"
    );
    let (ptrace_ok, ptrace_text) = ptrace_probe(control_pid);
    let ptrace_live = ptrace_ok && ptrace_text.contains("attach-ok");
    if !ptrace_live {
        let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
            .unwrap_or_else(|_| "absent".into());
        eprintln!(
            "!!!!! WARNING: the ptrace probe cannot attach even to an ordinary same-user \
             process ({ptrace_text}; yama ptrace_scope: {}), so the ptrace half of this \
             test is NOT checked; the /proc/PID/environ read is the check that counts !!!!!",
            yama.trim()
        );
    }

    let (relay_environ_ok, relay_environ) = environ_probe(relay_pid);
    assert!(
        !relay_environ_ok,
        "a same-user process read the relay's /proc/{relay_pid}/environ: {relay_environ}"
    );
    if ptrace_live {
        let (relay_ptrace_ok, relay_ptrace) = ptrace_probe(relay_pid);
        assert!(
            !relay_ptrace_ok && relay_ptrace.contains("attach-failed"),
            "a same-user process ptrace-attached to the relay: {relay_ptrace}"
        );
        eprintln!("ptrace on the relay: {relay_ptrace}");
    }
    eprintln!("environ of the relay: {relay_environ}");
    // The relay is still serving after the probes.
    assert!(
        std::net::TcpStream::connect(
            std::fs::read_to_string(&env_file)
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("export HTTPS_PROXY='http://"))
                .map(|a| a.trim_end_matches('\'').to_string())
                .expect("HTTPS_PROXY in the env file")
        )
        .is_ok(),
        "the relay stopped accepting after the probes"
    );
    drop(control);
    drop(relay);
}

#[test]
fn trace_log_over_real_traffic_holds_neither_token_nor_basic_credentials() {
    let pki = BlindPki::new();
    let https = pki.https_origin(&["origin.test"]);
    let plain = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions {
        token: TOKEN.into(),
        session_id: SESSION.into(),
        ..pki
            .gateway_options(true)
            .map("origin.test:443", https.addr)
            .map("plain.test:80", plain.addr)
    });
    let s = Session::for_gateway("trace", &gw)
        .arg("--gateway-ca")
        .arg(pki.gateway_tls_ca_pem())
        .env("RUST_LOG", "trace");
    let script = r#"
        set -e
        curl -sS --fail --max-time 20 https://origin.test/hello
        curl -sS --fail --max-time 20 -x "$HTTPS_PROXY" http://plain.test/hello
        curl -sS --max-time 20 https://unmapped.test/ || true
    "#;
    let out = s.run(&["sh", "-c", script]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(
        out.stdout,
        "hello from origin\nhello from origin\n",
        "{}",
        out.describe()
    );
    assert!(
        gw.count_events("connect origin.test:443") >= 1,
        "no tunnel reached the gateway"
    );
    let verbose = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("ccr-relay: debug") || l.starts_with("ccr-relay: trace"))
        .count();
    eprintln!(
        "{} stderr lines, {verbose} at debug/trace",
        out.stderr.lines().count()
    );
    assert!(
        out.stderr.contains("origin.test:443"),
        "the log does not show the traffic, so it proves nothing: {}",
        out.describe()
    );
    assert_no_secret(&out, "RUST_LOG=trace");
}
