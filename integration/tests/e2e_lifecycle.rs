//! The relay as a process: it stops promptly on SIGTERM and closes its
//! tunnels; threads and file descriptors come back after many tunnels;
//! `RUST_LOG=info` logs one line per tunnel; and the session's secrets
//! appear neither in the most verbose log nor in a child's environment.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::gateway::Mode;
use ccr_integration::relay::{
    BlindPki, ESTABLISHED, RelayOptions, RelayProcess, read_response, run_relay,
};
use ccr_integration::wire::base64;
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions};

const WAIT: Duration = Duration::from_secs(10);
/// The shutdown grace (1.5 s) plus room for a loaded machine.
const SHUTDOWN_BOUND: Duration = Duration::from_millis(1500 + 3000);

fn plain_setup(relay_opts: RelayOptions) -> (DevOrigin, DevGateway, RelayProcess) {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let relay = RelayProcess::serve(&gw, relay_opts);
    (origin, gw, relay)
}

#[test]
fn sigterm_with_open_tunnels_exits_0_within_the_grace_and_closes_them() {
    let (_origin, gw, mut relay) = plain_setup(RelayOptions::default());
    let mut clients: Vec<TcpStream> = (0..5)
        .map(|_| relay.connect_tunnel("origin.test:80"))
        .collect();
    // The tunnels carry traffic, then sit idle.
    for c in &mut clients {
        c.write_all(b"GET /hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
            .unwrap();
        let (head, _) = read_response(c).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    }
    // A sixth tunnel is busy: a download its client does not read, so the
    // relay is blocked writing to it when the signal comes.
    let mut busy = relay.connect_tunnel("origin.test:80");
    busy.write_all(b"GET /bytes/1073741824 HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .unwrap();
    wait_until_receive_queue_is_full(&busy);
    assert_eq!(gw.count_events("tunnel-end"), 0);
    // The relay promises to exit within its shutdown grace (1.5 s) once
    // its tunnels are told to close; 3 s more covers a loaded machine,
    // and is still far from "waits for the busy download".
    let (status, took) = relay.terminate(SHUTDOWN_BOUND).unwrap_or_else(|| {
        panic!(
            "still running {SHUTDOWN_BOUND:?} after SIGTERM:\n{}",
            relay.stderr()
        )
    });
    assert!(status.success(), "exit status {status} after SIGTERM");
    eprintln!("relay exited {took:?} after SIGTERM");
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        let got = c.read_to_end(&mut rest);
        assert!(
            matches!(got, Ok(0)),
            "client {i}: expected EOF, got {got:?} after {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    // The busy one: what was queued, then the end.
    busy.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = vec![0u8; 1 << 20];
    loop {
        match busy.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the busy tunnel's client saw no end: {e}"),
        }
    }
    // And the gateway's side of each tunnel ended too.
    let deadline = Instant::now() + WAIT;
    while gw.count_events("tunnel-end origin.test:80") < 6 {
        assert!(Instant::now() < deadline, "{}", gw.events().join("\n"));
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigint_stops_serve_too() {
    let (_origin, _gw, relay) = plain_setup(RelayOptions::default());
    let mut c = relay.connect_tunnel("origin.test:80");
    let started = Instant::now();
    // SAFETY: kill(2) with the pid of the relay this test started.
    unsafe { libc::kill(relay.pid() as libc::pid_t, libc::SIGINT) };
    let mut relay = relay;
    let status = loop {
        if let Some(status) = relay.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < SHUTDOWN_BOUND,
            "still running {SHUTDOWN_BOUND:?} after SIGINT"
        );
        thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "exit status {status} after SIGINT");
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    assert!(matches!(c.read_to_end(&mut rest), Ok(0)), "{rest:?}");
}

/// Waits (at most 10 s) until `s` holds at least 64 KiB unread and the
/// amount stopped growing: whoever writes to it is blocked.
fn wait_until_receive_queue_is_full(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let queued = || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on an open socket writes one int.
        unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
        n
    };
    let deadline = Instant::now() + WAIT;
    let mut last = -1;
    loop {
        let now = queued();
        if now >= 64 * 1024 && now == last {
            return;
        }
        assert!(Instant::now() < deadline, "only {now} bytes queued");
        last = now;
        thread::sleep(Duration::from_millis(100));
    }
}

/// One short tunnel: CONNECT, `200`, `GET /hello`, its answer, close.
fn one_tunnel(relay: &RelayProcess) {
    let mut c = relay.connect_tunnel("origin.test:80");
    c.write_all(b"GET /hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut c).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, b"hello from origin\n");
}

/// Waits up to 5 s for the relay's thread and fd counts to come back to
/// `base`; returns the last counts seen.
fn settle(relay: &RelayProcess, base: (usize, usize), fd_slack: usize) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = relay.threads_and_fds();
        if (now.0 <= base.0 && now.1 <= base.1 + fd_slack) || Instant::now() >= deadline {
            return now;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_thousand_tunnels_leak_no_threads_and_no_fds() {
    const BATCH: usize = 20;
    const BATCHES: usize = 50;
    let (_origin, gw, relay) = plain_setup(RelayOptions::default());
    // Warm up: whatever is set up once (TLS library state, the logger) is
    // set up by now, so the baseline is the steady state of an idle relay.
    for _ in 0..3 {
        one_tunnel(&relay);
    }
    let warm = gw.count_events("connect origin.test:80");
    let deadline = Instant::now() + WAIT;
    while gw.count_events("tunnel-end") < warm {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(20));
    }
    let base = stable_counts(&relay);
    eprintln!("baseline: {} threads, {} fds", base.0, base.1);
    let started = Instant::now();
    let mut peak = base;
    for _ in 0..BATCHES {
        thread::scope(|s| {
            for _ in 0..BATCH {
                s.spawn(|| one_tunnel(&relay));
            }
        });
        let now = relay.threads_and_fds();
        peak = (peak.0.max(now.0), peak.1.max(now.1));
    }
    eprintln!(
        "{} tunnels in {:?}; peak {} threads, {} fds",
        BATCH * BATCHES,
        started.elapsed(),
        peak.0,
        peak.1
    );
    assert_eq!(
        gw.count_events("connect origin.test:80"),
        warm + BATCH * BATCHES
    );
    // Strict: the same threads; the same fds (one more tolerated, for a
    // descriptor the relay may cache lazily, e.g. a reopened log or /dev/urandom).
    let after = settle(&relay, base, 0);
    assert!(
        after.0 <= base.0,
        "threads: {} before, {} after 1,000 tunnels (settled 5 s)",
        base.0,
        after.0
    );
    assert!(
        after.1 <= base.1 + 1,
        "fds: {} before, {} after 1,000 tunnels (settled 5 s); /proc/{}/fd:\n{}",
        base.1,
        after.1,
        relay.pid(),
        fd_listing(relay.pid())
    );
}

/// The counts once three readings 100 ms apart agree (at most 5 s).
fn stable_counts(relay: &RelayProcess) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = relay.threads_and_fds();
    let mut same = 0;
    while same < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let now = relay.threads_and_fds();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

fn split_response(response: &[u8]) -> (&[u8], &[u8]) {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    response.split_at(end)
}

fn fd_listing(pid: u32) -> String {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    format!(
                        "{} -> {}",
                        e.file_name().to_string_lossy(),
                        std::fs::read_link(e.path())
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[test]
fn info_log_has_one_line_per_tunnel_with_target_and_byte_counts() {
    let (_origin, _gw, relay) = plain_setup(RelayOptions::default().rust_log("info"));
    let mut expected = Vec::new();
    for len in [1000u64, 2000, 3000] {
        let mut c = relay.connect_tunnel("origin.test:80");
        let request =
            format!("GET /bytes/{len} HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n");
        c.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        c.read_to_end(&mut response).unwrap();
        let (head, body) = split_response(&response);
        assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!(body.len() as u64, len);
        // Down counts what came out of the tunnel: the gateway's 200 too.
        expected.push(format!(
            "ccr-relay: info tunnel origin.test:80 closed: up {} B, down {} B, ",
            request.len(),
            ESTABLISHED.len() + response.len()
        ));
    }
    let deadline = Instant::now() + WAIT;
    let lines = loop {
        let log = relay.stderr();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains(" closed: "))
            .map(str::to_string)
            .collect();
        if lines.len() >= 3 || Instant::now() >= deadline {
            break lines;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 3, "one line per tunnel:\n{}", relay.stderr());
    for want in &expected {
        let n = lines
            .iter()
            .filter(|l| l.starts_with(want.as_str()))
            .count();
        assert_eq!(
            n,
            1,
            "want one line starting {want:?} in:\n{}",
            lines.join("\n")
        );
    }
    // `T s, <how it ended>`.
    for l in &lines {
        let tail = l.split(" B, ").last().unwrap();
        let (secs, how) = tail.split_once(" s, ").unwrap_or_else(|| panic!("{l}"));
        secs.parse::<f64>().unwrap_or_else(|_| panic!("{l}"));
        assert!(!how.trim().is_empty(), "{l}");
    }
}

const TOKEN: &str = "tok-9f3c7d1e5ab24e0f8d6c";
const SESSION: &str = "sess-4b1a9e7c2d";

/// Runs `script` under `ccr-relay run` at `RUST_LOG=trace` with real
/// traffic available: `https://origin.test` (blind, `wss://` gateway) and
/// `http://plain.test`, with a recognisable token and session id.
fn run_with_secrets(script: &str) -> (DevGateway, ccr_integration::relay::RunOutput) {
    let pki = BlindPki::new();
    let https = pki.https_origin(&["origin.test"]);
    let plain = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions {
        token: TOKEN.into(),
        session_id: SESSION.into(),
        mode: Mode::Blind,
        ..pki
            .gateway_options(true)
            .map("origin.test:443", https.addr)
            .map("plain.test:80", plain.addr)
    });
    let opts = RelayOptions::default()
        .rust_log("trace")
        .gateway_ca(&pki.gateway_tls_ca_pem());
    let out = run_relay(&gw, &opts, &["sh", "-c", script], Duration::from_secs(60));
    out.assert_success();
    (gw, out)
}

#[test]
fn trace_log_never_holds_the_token() {
    let script = r#"
        set -e
        curl -sS --fail --max-time 20 https://origin.test/hello
        curl -sS --fail --max-time 20 -x "$HTTPS_PROXY" http://plain.test/hello
        curl -sS --fail --max-time 20 -x "$HTTPS_PROXY" http://plain.test/hello http://plain.test/bytes/10
        curl -sS --max-time 20 -x "$HTTPS_PROXY" http://unmapped.test/ || true
    "#;
    let (gw, out) = run_with_secrets(script);
    assert!(
        out.stdout_text()
            .starts_with("hello from origin\nhello from origin\n")
    );
    // Real traffic went through both paths.
    assert!(
        out.stderr.contains("tunnel origin.test:443 closed:"),
        "{}",
        out.stderr
    );
    assert_eq!(gw.count_events("connect plain.test:80"), 2);
    let basic = base64(format!("{SESSION}:{TOKEN}").as_bytes());
    for (what, text) in [
        ("stderr (trace log)", &out.stderr),
        ("stdout", &out.stdout_text()),
    ] {
        assert!(!text.contains(TOKEN), "the token is in the {what}:\n{text}");
        assert!(
            !text.contains(&basic),
            "base64(session:token) is in the {what}:\n{text}"
        );
    }
}

#[test]
fn child_environment_holds_no_token_and_the_inherited_session_id_unchanged() {
    let script = r#"
        set -e
        curl -sS --fail --max-time 20 https://origin.test/hello >/dev/null
        echo ENV-BEGIN
        env
    "#;
    let (_gw, out) = run_with_secrets(script);
    let stdout = out.stdout_text();
    assert!(stdout.contains("ENV-BEGIN\n"), "{stdout}");
    assert!(
        stdout.contains("\nHTTPS_PROXY=http://127.0.0.1:"),
        "{stdout}"
    );
    let basic = base64(format!("{SESSION}:{TOKEN}").as_bytes());
    assert!(
        !stdout.contains(TOKEN),
        "the token is in the child's environment:\n{stdout}"
    );
    assert!(!stdout.contains(&basic), "{stdout}");
    // The session id is not a secret: inherited, it passes through as it
    // was, and the relay adds it nowhere else.
    let holding: Vec<&str> = stdout.lines().filter(|l| l.contains(SESSION)).collect();
    assert_eq!(
        holding,
        [format!("CLAUDE_CODE_REMOTE_SESSION_ID={SESSION}")],
        "the session id reaches the child unchanged, and only there"
    );
}

/// A helper the relay runs at start-up never outlives it: a relay killed
/// (SIGKILL: no clean-up of its own) while `certutil` works takes
/// `certutil` with it. An orphaned `certutil` whose database directory was
/// then removed was seen spinning on a CPU for over an hour.
#[test]
fn a_helper_dies_with_a_killed_relay() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let dir = ccr_integration::temp_dir("helper-dies");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(dir.join("home/.pki/nssdb")).unwrap();
    let pid_file = dir.join("certutil.pid");
    // Only the "add" call lingers (the NSS installer lists, deletes, adds).
    let fake = bin.join("certutil");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$1\" in -A) echo $$ > '{}'; exec sleep 60;; esac\nexit 0\n",
            pid_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (mut cmd, _token) = ccr_integration::relay::relay_command(
        "serve",
        &gw,
        &RelayOptions::default().env("PATH", &path),
        dir.path(),
    );
    let mut relay = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the relay");
    let deadline = Instant::now() + WAIT;
    let helper: libc::pid_t = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the relay never ran certutil -A");
        thread::sleep(Duration::from_millis(20));
    };
    let alive = |pid: libc::pid_t| {
        // A zombie (not yet reaped by init) counts as gone.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    assert!(alive(helper));
    relay.kill().expect("SIGKILL the relay");
    let _ = relay.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(helper) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let survived = alive(helper);
    if survived {
        // SAFETY: kill(2) on the helper this test made the relay start.
        unsafe { libc::kill(helper, libc::SIGKILL) };
    }
    assert!(
        !survived,
        "certutil (pid {helper}) outlived the killed relay"
    );
}
