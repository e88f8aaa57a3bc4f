//! `doctor` tells the truth: it runs the start-up code of `run` and
//! `serve` without their side effects and predicts what they do. Each test
//! here asks `doctor` first and then checks the prediction against the real
//! `run` or `serve`: a CA that cannot be fetched for a reason that may pass
//! (serve asks again) or for good (both stay off), a probe verdict that
//! comes after the 2 s that start-up waits for it, a gateway that stalls
//! the upgrade (the exact text tunnels then end with), standalone mode end
//! to end, the `--listen` warning, and a token descriptor doctor must leave
//! unread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::pki::TestCa;
use ccr_integration::relay::{BlindPki, parse_env_file, read_response};
use ccr_integration::session_env::{
    ENABLED, Outcome, Reply, Running, Session, TinyServer, closed_port, http_answer,
};
use ccr_integration::wire::base64;
use ccr_integration::{DevGateway, GatewayOptions, ServerKind, temp_dir};

/// The lines of `out`'s stdout holding `needle`; panics when there is none.
fn line_with<'a>(out: &'a Outcome, needle: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no stdout line holds {needle:?}: {}", out.describe()))
}

/// `ccr-relay serve --env-file ENV_FILE` in `s`, with `vars` set too.
fn spawn_serve(s: &Session, env_file: &std::path::Path, vars: &[(&str, &str)]) -> Running {
    let mut cmd = s.command("serve", &[]);
    cmd.arg("--env-file")
        .arg(env_file)
        .envs(vars.iter().copied());
    Running::spawn(cmd)
}

/// Waits up to `timeout` for `running`'s stderr to hold `needle`.
fn wait_stderr(running: &Running, timeout: Duration, needle: &str) {
    let deadline = Instant::now() + timeout;
    while !running.stderr_so_far().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "stderr never held {needle:?} within {timeout:?}:\n{}",
            running.stderr_so_far()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// -- 1. the CA fetch: run fails open, serve retries (or not) --------------

#[test]
fn ca_that_may_come_later_run_fails_open_and_serve_retries() {
    let server = TinyServer::start(Reply::Bytes(http_answer(
        "503 Service Unavailable",
        "text/plain",
        b"busy",
    )));
    let s = Session::new("doctor-ca-503", &server.base_url()).agent_proxy();
    let out = s.doctor();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let ca = line_with(&out, "FAIL  gateway CA");
    assert!(ca.contains("503"), "{ca}");
    line_with(
        &out,
        "info  run: the command would start at once without the proxy (it fails open)",
    );
    let serve = line_with(&out, "info  serve: the proxy stays off for now");
    assert!(
        serve.contains("asks for the CA again after 1 s, 2 s, 4 s, ... (doubling, at most 300 s)"),
        "{serve}"
    );
    assert!(serve.contains("brings the proxy up"), "{serve}");
    line_with(
        &out,
        "verdict: the proxy would stay off for now (1 check(s) failed); run's command runs without it, serve brings it up once the gateway's CA can be fetched",
    );

    // What run does: the command runs at once, without the proxy.
    let run = s.run(&["sh", "-c", "echo child-ran; env"]);
    assert!(run.stdout.starts_with("child-ran\n"), "{}", run.describe());
    assert_eq!(run.var("HTTPS_PROXY"), None, "{}", run.describe());
    // What serve does: it stays and asks again after the first wait doctor named.
    let env_file = s.dir.join("serve.env");
    let running = spawn_serve(&s, &env_file, &[]);
    wait_stderr(
        &running,
        Duration::from_secs(20),
        "trying the gateway's CA again in 1 s",
    );
    let hits = server.hits();
    wait_stderr(
        &running,
        Duration::from_secs(20),
        "trying the gateway's CA again in 2 s",
    );
    assert!(server.hits() > hits, "serve did not ask the gateway again");
    assert!(
        running.child.id() > 0 && !env_file.exists(),
        "serve wrote its env file without a proxy"
    );
}

#[test]
fn ca_refused_for_good_both_stay_off_and_serve_exits() {
    let server = TinyServer::start(Reply::Bytes(http_answer(
        "404 Not Found",
        "text/plain",
        b"no such path",
    )));
    let s = Session::new("doctor-ca-404", &server.base_url()).agent_proxy();
    let out = s.doctor();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(line_with(&out, "FAIL  gateway CA").contains("404"));
    line_with(
        &out,
        "info  run and serve: the proxy stays off; this failure is not retried",
    );
    assert!(
        !out.stdout.contains("serve asks for the CA again"),
        "{}",
        out.describe()
    );
    line_with(
        &out,
        "verdict: the proxy would stay off (1 check(s) failed)",
    );

    // serve exits at once (status 0, fail open), as doctor said.
    let env_file = s.dir.join("serve.env");
    let served = spawn_serve(&s, &env_file, &[]);
    let done = served.finish(Duration::from_secs(20));
    assert_eq!(done.code(), Some(0), "{}", done.describe());
    assert!(
        !done.stderr.contains("trying the gateway's CA again"),
        "{}",
        done.describe()
    );
}

// -- 2. a probe verdict that comes after run's wait ------------------------

/// A gateway stand-in: the CA endpoint answers at once with `ca_pem`; any
/// other request (the WebSocket upgrade) gets `401` after `delay`.
fn slow_refusing_gateway(ca_pem: Vec<u8>, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let ca_pem = ca_pem.clone();
            thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let answer = if head.starts_with(b"GET /v1/code/agent-proxy/ca-cert ") {
                    http_answer("200 OK", "application/x-pem-file", &ca_pem)
                } else {
                    thread::sleep(delay);
                    http_answer("401 Unauthorized", "text/plain", b"no")
                };
                let _ = conn.write_all(&answer);
            });
        }
    });
    addr
}

#[test]
fn a_401_after_the_wait_is_judged_as_run_judges_it() {
    let dir = temp_dir("doctor-late-401");
    let ca = TestCa::new(&dir.join("ca")).expect("make a CA");
    let addr = slow_refusing_gateway(ca.cert_pem(), Duration::from_secs(3));
    let s = Session::new("doctor-late-401", &format!("http://{addr}")).agent_proxy();
    let out = s.doctor();
    // The proxy would start: the refusal comes too late to keep it off.
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    line_with(
        &out,
        "no verdict within 2 s, as long as run and serve wait for it: both would start the proxy (run its command too)",
    );
    let late = line_with(&out, "too late to keep the proxy off");
    assert!(late.contains("401"), "{late}");
    assert!(
        late.contains("run and serve would print a warning"),
        "{late}"
    );
    line_with(&out, "verdict: the proxy would start");
    assert!(!out.stdout.contains("FAIL"), "{}", out.describe());

    // What run does: the command starts with the proxy on, and the refusal
    // that comes while it runs is a warning.
    let run = s.run(&["sh", "-c", "env; sleep 4"]);
    assert!(
        run.var("HTTPS_PROXY")
            .is_some_and(|v| v.starts_with("http://127.0.0.1:")),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("refused the session's credentials") && run.stderr.contains("401"),
        "{}",
        run.describe()
    );
}

// -- 3. a gateway that stalls the upgrade ----------------------------------

#[test]
fn stalled_upgrade_prediction_is_what_tunnels_then_say() {
    let gw = DevGateway::start(GatewayOptions {
        stall_upgrade: true,
        ..GatewayOptions::default()
    });
    let s = Session::for_gateway("doctor-stall", &gw)
        .arg("--upgrade-timeout")
        .arg("1");
    let out = s.doctor();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    line_with(&out, "no verdict within 2 s");
    let warn = line_with(
        &out,
        "the proxy would be on, and from then on each tunnel would dial once",
    );
    assert!(
        warn.starts_with("  warn  gateway WebSocket  ws://"),
        "{warn}"
    );
    let quoted = warn
        .rsplit_once("would end with \"")
        .map(|(_, q)| q.trim_end_matches('"').to_string())
        .unwrap_or_else(|| panic!("no quoted text: {warn}"));
    assert!(
        quoted.starts_with("gateway unreachable at start-up: "),
        "{quoted}"
    );

    // What serve does: once its probe gave up, a tunnel dials once and
    // its answer ends with exactly that text.
    let env_file = s.dir.join("serve.env");
    let running = spawn_serve(&s, &env_file, &[("RUST_LOG", "info")]);
    wait_stderr(
        &running,
        Duration::from_secs(20),
        "tunnels will try once each",
    );
    let vars = parse_env_file(&std::fs::read_to_string(&env_file).expect("the env file"));
    let proxy = vars
        .iter()
        .find(|(k, _)| k == "HTTPS_PROXY")
        .map(|(_, v)| v.trim_start_matches("http://").to_string())
        .expect("HTTPS_PROXY in the env file");
    let mut conn = TcpStream::connect(&proxy).expect("connect to the relay");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.write_all(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut conn).expect("the relay's answer");
    assert!(head.starts_with("HTTP/1.1 50"), "{head}");
    // The error is the body's first line (a hint about the status page
    // follows).
    let body = String::from_utf8_lossy(&body);
    let error = body.lines().next().unwrap_or_default();
    assert!(
        error.ends_with(&quoted) && error.starts_with("ccr-relay: "),
        "doctor predicted the answer would end with {quoted:?}; it is {body:?}"
    );
    assert!(
        !body.contains("attempts"),
        "the tunnel dialled more than once: {body}"
    );
}

// -- 4. standalone mode end to end ----------------------------------------

#[test]
fn standalone_url_and_token_win_and_never_reach_the_child() {
    let pki = BlindPki::new();
    let origin = pki.https_origin(&["origin.test"]);
    let gw = DevGateway::start(
        GatewayOptions {
            token: "standalone-fixed-7q".into(),
            ..pki.gateway_options(false)
        }
        .agent_proxy(ServerKind::Late)
        .map("origin.test:443", origin.addr),
    );
    // --base-url names a port nothing listens on, the token file a token
    // the gateway refuses, and neither gate-2 variable is set.
    let mut s = Session::new(
        "doctor-standalone",
        &format!("http://127.0.0.1:{}", closed_port()),
    )
    .unset(ENABLED)
    .env("CLAUDE_CODE_REMOTE_SESSION_ID", &gw.session_id)
    .env("AGENT_PROXY_URL", &gw.base_url())
    .env("AGENT_PROXY_AUTH_TOKEN", &gw.token);
    s.write_token("not-the-gateways-token");

    let doctor = s.doctor();
    assert_eq!(doctor.code(), Some(0), "{}", doctor.describe());
    line_with(
        &doctor,
        "info  standalone mode: the gateway is AGENT_PROXY_URL",
    );
    line_with(&doctor, &format!("ok    gateway URL {}", gw.base_url()));
    line_with(&doctor, "info  token from AGENT_PROXY_AUTH_TOKEN");
    assert!(
        !doctor.stdout.contains(&gw.token),
        "the token in doctor's output"
    );

    let out = s.run(&[
        "sh",
        "-c",
        "env; echo ---; curl -sS --max-time 20 https://origin.test/hello",
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stdout.ends_with("---\nhello from origin\n"),
        "{}",
        out.describe()
    );
    for name in ["AGENT_PROXY_URL", "AGENT_PROXY_AUTH_TOKEN"] {
        assert_eq!(out.var(name), None, "{name} reached the child");
    }
    assert!(
        !out.stdout.contains(&gw.token),
        "the token reached the child"
    );
    // Bearer: the upgrade was accepted (the dev gateway answers a wrong one
    // with 401). Basic: the preamble carries session:token.
    assert_eq!(gw.count_events("upgrade refused"), 0, "{:?}", gw.events());
    assert!(gw.count_events("upgrade ok") >= 1, "{:?}", gw.events());
    let basic = base64(format!("{}:{}", gw.session_id, gw.token).as_bytes());
    assert!(
        gw.events()
            .iter()
            .any(|e| e.starts_with("v2 preamble") && e.contains(&format!("Basic {basic}"))),
        "no preamble with the fixed token's Basic credential: {:?}",
        gw.events()
    );
}

// -- 5. the --listen warning -----------------------------------------------

#[test]
fn listen_warning_says_what_happens_to_other_hosts() {
    let gw = DevGateway::start(GatewayOptions::default());
    let checked = Session::for_gateway("doctor-listen", &gw)
        .arg("--listen")
        .arg("0.0.0.0:0")
        .run(&["true"]);
    assert_eq!(checked.code(), Some(0), "{}", checked.describe());
    assert!(
        checked.stderr.contains(
            "other hosts that reach it will be refused (403), since the uid check finds no owner"
        ),
        "{}",
        checked.describe()
    );
    assert!(
        !checked
            .stderr
            .contains("any host that can reach it can use"),
        "{}",
        checked.describe()
    );
    let open = Session::for_gateway("doctor-listen-any", &gw)
        .arg("--listen")
        .arg("0.0.0.0:0")
        .arg("--allow-any-uid")
        .run(&["true"]);
    assert!(
        open.stderr
            .contains("any host that can reach it can use this session's credentials"),
        "{}",
        open.describe()
    );
}

// -- 6. a token descriptor is left for run --------------------------------

/// A pipe holding `bytes`; the read end is inheritable, as a token
/// descriptor is.
fn token_pipe(bytes: &[u8]) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: F_SETFD on a descriptor we own.
    assert_eq!(unsafe { libc::fcntl(fds[0], libc::F_SETFD, 0) }, 0);
    // SAFETY: writes from a buffer of that length.
    let n = unsafe { libc::write(fds[1], bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize);
    // SAFETY: both are ours and open.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn doctor_leaves_the_token_descriptor_for_run() {
    let gw = DevGateway::start(
        GatewayOptions {
            token: "fd-token-5k".into(),
            ..GatewayOptions::default()
        }
        .agent_proxy(ServerKind::Late),
    );
    let s = Session::for_gateway("doctor-fd", &gw).agent_proxy();
    std::fs::remove_file(&s.token_file).expect("remove the token file");
    let (r, _w) = token_pipe(b"fd-token-5k\n");
    let fd = r.as_raw_fd();
    let ingress = s.dir.join("no-ingress").display().to_string();
    let s = s
        .env(
            "CLAUDE_CODE_WEBSOCKET_AUTH_FILE_DESCRIPTOR",
            &fd.to_string(),
        )
        .env("CLAUDE_SESSION_INGRESS_TOKEN_FILE", &ingress);

    let out = s.doctor();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let gate = line_with(&out, "gate 4");
    assert!(
        gate.starts_with("  ?     gate 4")
            && gate.contains(&format!("would be read from descriptor {fd}"))
            && gate.contains("which doctor leaves unread since it can be read only once")
            && gate.contains("a pipe, 12 byte(s) waiting"),
        "{gate}"
    );
    line_with(
        &out,
        &format!("skip  gateway WebSocket: needs the token, which is in descriptor {fd}"),
    );
    line_with(
        &out,
        &format!("verdict: the proxy would start if descriptor {fd} holds a token"),
    );
    assert!(
        !out.stdout.contains("fd-token-5k"),
        "the token in doctor's output"
    );
    assert_eq!(
        gw.count_events("upgrade"),
        0,
        "doctor dialled without a token"
    );

    // Still all there: run reads it and the gateway accepts it.
    let run = s.run(&["sh", "-c", "env"]);
    assert!(
        run.var("HTTPS_PROXY").is_some(),
        "run found no token in the descriptor doctor looked at: {}",
        run.describe()
    );
    assert!(gw.count_events("upgrade ok") >= 1, "{:?}", gw.events());
    assert_eq!(gw.count_events("upgrade refused"), 0, "{:?}", gw.events());
}

// -- 7. options that do not parse: run fails open, serve refuses -----------

#[test]
fn options_that_do_not_parse_doctor_refuses_and_run_fails_open() {
    let server = TinyServer::start(Reply::Bytes(http_answer(
        "200 OK",
        "application/x-pem-file",
        &TestCa::new(&temp_dir("doctor-cli-ca").join("ca"))
            .unwrap()
            .cert_pem(),
    )));
    let s = Session::new("doctor-cli", &server.base_url()).arg("--some-new-flag");

    let out = s.doctor();
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr
            .contains("unknown option --some-new-flag for `doctor`"),
        "{}",
        out.describe()
    );
    let run = line_with(&out, "run: ");
    assert!(
        run.contains("would warn (unknown option --some-new-flag")
            && run.contains("run the command without the proxy, as if the relay were absent"),
        "{run}"
    );
    line_with(&out, "serve: would refuse them (exit 2)");
    assert_eq!(server.hits(), 0, "doctor went on after a usage error");

    // The prediction holds: run warns and runs its command without the proxy.
    let out = s.run(&["sh", "-c", "echo ran; env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.starts_with("ran\n"), "{}", out.describe());
    assert!(out.var("HTTPS_PROXY").is_none(), "{}", out.describe());
    assert!(
        out.stderr.contains("--some-new-flag") && out.stderr.contains("without the proxy"),
        "{}",
        out.describe()
    );
    // And serve refuses them.
    let out = s.spawn("serve", &[]).finish(Duration::from_secs(10));
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert_eq!(server.hits(), 0);
}
