//! Liveness of the gateway, through the real binaries: a development
//! gateway process frozen with SIGSTOP (its kernel still ACKs, so TCP
//! alone never notices) ends an idle tunnel, its client reset, and a
//! pooled WebSocket within the keepalive interval plus the liveness
//! deadline, both recorded as `gateway_unresponsive`; a gateway that never
//! answers pings keeps a healthy idle tunnel open across many intervals.
//! Intervals are set short by the relay's flags, so each scene takes
//! seconds.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::faults::eventually;
use ccr_integration::relay::{RelayOptions, RelayProcess, read_response};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, Generation, ServerKind};

/// The relay's keepalive interval in these scenes: one this long without
/// a frame from the gateway brings a WebSocket Ping.
const INTERVAL: Duration = Duration::from_millis(300);
/// The relay's liveness deadline in these scenes (`--gateway-deadline`).
const DEADLINE: Duration = Duration::from_millis(600);
/// Room for a loaded machine beyond interval plus deadline.
const SLACK: Duration = Duration::from_secs(2);
/// Longer than any bound here: a wait that reaches it means "never".
const NEVER: Duration = Duration::from_secs(10);

fn secs(d: Duration) -> String {
    d.as_secs_f64().to_string()
}

/// A plain origin, a development gateway of `generation` mapping
/// `origin.test:80` to it (with `gateway_args`), and a relay with the
/// short interval and deadline.
fn scene(generation: Generation, gateway_args: &[&str]) -> (DevOrigin, DevGateway, RelayProcess) {
    let origin = DevOrigin::start(None);
    let mut gw_opts = GatewayOptions::default()
        .map("origin.test:80", origin.addr)
        .args(gateway_args);
    let mut relay_opts = RelayOptions::default()
        .arg("--keepalive")
        .arg(secs(INTERVAL))
        .arg("--gateway-deadline")
        .arg(secs(DEADLINE));
    if generation == Generation::AgentProxy {
        gw_opts = gw_opts.agent_proxy(ServerKind::Late);
        relay_opts = relay_opts.agent_proxy();
    }
    let gw = DevGateway::start(gw_opts);
    let relay = RelayProcess::serve(&gw, relay_opts);
    (origin, gw, relay)
}

/// The gateway process stopped (SIGSTOP) while this lives; continued
/// (SIGCONT) when it drops, a failing test's unwinding included, so the
/// gateway's own guard can then end it as usual.
struct Frozen(libc::pid_t);

impl Frozen {
    fn stop(gw: &DevGateway) -> Frozen {
        let pid = gw.child.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the gateway child this test started and has not reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(rc, 0, "SIGSTOP: {}", io::Error::last_os_error());
        let frozen = Frozen(pid);
        // Stopped means the state letter T in /proc/PID/stat.
        let stopped = eventually(NEVER, || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                .unwrap_or(false)
        });
        assert!(stopped, "the gateway process did not stop");
        frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as in `stop`; the child is reaped only after this guard goes.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// The relay's status page (JSON).
fn status(relay: &RelayProcess) -> String {
    let mut s = relay.connect();
    s.write_all(b"GET /__agentproxy/status HTTP/1.1\r\nHost: relay\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    page
}

/// The pool's size on the status page (`"pool": {"idle": N}`).
fn pool_idle(page: &str) -> Option<u64> {
    let after = &page[page.find("\"pool\"")?..];
    let after = &after[after.find("\"idle\":")? + "\"idle\":".len()..];
    let digits: String = after
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// `GET /hello` in an open tunnel, answered in full (the connection kept).
fn hello(c: &mut TcpStream) {
    c.write_all(b"GET /hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(c).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, b"hello from origin\n");
}

/// Reads `c` until it ends: how long that took and the error that ended
/// it (`None`: a clean end of stream). Panics if nothing ends it in
/// [`NEVER`].
fn wait_for_end(c: &mut TcpStream) -> (Duration, Option<io::Error>) {
    read_until_end(c, false, "the tunnel")
}

/// Reads `c` until it ends (bytes are taken when `bytes_may_come`, else a
/// byte fails the test): how long that took and the error that ended it.
/// Panics, naming `what`, if nothing ends it in [`NEVER`].
fn read_until_end(
    c: &mut TcpStream,
    bytes_may_come: bool,
    what: &str,
) -> (Duration, Option<io::Error>) {
    let started = Instant::now();
    c.set_read_timeout(Some(NEVER)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (started.elapsed(), None),
            Ok(n) if !bytes_may_come => panic!("a frozen gateway sent {n} bytes"),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "{what} outlived its frozen gateway by {:?}",
                    started.elapsed()
                )
            }
            Err(e) => return (started.elapsed(), Some(e)),
        }
    }
}

fn frozen_gateway_ends_an_idle_tunnel(generation: Generation) {
    let (_origin, gw, relay) = scene(generation, &[]);
    let mut c = relay.connect_tunnel("origin.test:80");
    // The gateway read the relay's opening Ping before this request, and
    // its pong came back before the answer: the relay knows it answers.
    hello(&mut c);
    let frozen = Frozen::stop(&gw);
    let (took, err) = wait_for_end(&mut c);
    let bound = INTERVAL + DEADLINE + SLACK;
    assert!(
        took <= bound,
        "the tunnel ended {took:?} after the freeze, past {bound:?}"
    );
    let err = err.expect("the client is reset, not ended as if the answer were whole");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    // The client is reset before the tunnel's thread records its end: poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut page = status(&relay);
    while !(page.contains("\"gateway_unresponsive\"") && page.contains("origin.test:80"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        page = status(&relay);
    }
    assert!(
        page.contains("\"gateway_unresponsive\"") && page.contains("origin.test:80"),
        "no gateway_unresponsive failure for the tunnel on the status page:\n{page}\nrelay log:\n{}",
        relay.stderr()
    );
    // The relay still serves: a new tunnel once the gateway runs again.
    drop(frozen);
    let mut c = relay.connect_tunnel("origin.test:80");
    hello(&mut c);
}

#[test]
fn frozen_gateway_ends_an_idle_tunnel_upstream_proxy() {
    frozen_gateway_ends_an_idle_tunnel(Generation::UpstreamProxy);
}

#[test]
fn frozen_gateway_ends_an_idle_tunnel_agent_proxy() {
    frozen_gateway_ends_an_idle_tunnel(Generation::AgentProxy);
}

#[test]
fn frozen_gateway_drops_a_pooled_websocket() {
    let (_origin, gw, relay) = scene(Generation::AgentProxy, &[]);
    let mut c = relay.connect_tunnel("origin.test:80");
    // The origin closes after this answer: the gateway's FIN follows, and
    // the WebSocket goes back to the pool.
    c.write_all(b"GET /hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    assert!(answer.ends_with(b"hello from origin\n"));
    assert!(
        eventually(NEVER, || pool_idle(&status(&relay)) == Some(1)),
        "the WebSocket was not pooled: {}",
        status(&relay)
    );
    // Healthy while pooled: pings answered, the socket stays (for less
    // than the pool's 10 s idle limit).
    thread::sleep(INTERVAL * 3 + DEADLINE);
    assert_eq!(pool_idle(&status(&relay)), Some(1), "{}", status(&relay));
    let _frozen = Frozen::stop(&gw);
    let started = Instant::now();
    let bound = INTERVAL + DEADLINE + SLACK;
    let dropped = eventually(bound, || {
        let page = status(&relay);
        pool_idle(&page) == Some(0) && page.contains("\"gateway_unresponsive\"")
    });
    assert!(
        dropped,
        "after {:?} the frozen gateway's WebSocket is still pooled or not recorded:\n{}\nrelay log:\n{}",
        started.elapsed(),
        status(&relay),
        relay.stderr()
    );
}

fn gateway_that_never_answers_pings_keeps_an_idle_tunnel(generation: Generation) {
    let (_origin, gw, relay) = scene(generation, &["--no-pong"]);
    let mut c = relay.connect_tunnel("origin.test:80");
    hello(&mut c);
    // Idle for many intervals and deadlines: the relay pings (the opening
    // Ping, then one after an interval of silence), nothing answers, and
    // the tunnel must stay, for this gateway never showed it answers.
    let idle = (INTERVAL + DEADLINE) * 5;
    gw.wait_for_event(NEVER, |_| gw.count_events("ping-received") >= 2);
    thread::sleep(idle);
    hello(&mut c);
    let page = status(&relay);
    assert!(
        !page.contains("gateway_unresponsive"),
        "a gateway that never answers pings was taken for unresponsive:\n{page}"
    );
}

#[test]
fn gateway_that_never_answers_pings_keeps_an_idle_tunnel_upstream_proxy() {
    gateway_that_never_answers_pings_keeps_an_idle_tunnel(Generation::UpstreamProxy);
}

#[test]
fn gateway_that_never_answers_pings_keeps_an_idle_tunnel_agent_proxy() {
    gateway_that_never_answers_pings_keeps_an_idle_tunnel(Generation::AgentProxy);
}

/// Reads the head of an answer from `c`, byte by byte (nothing after it
/// is taken).
fn read_answer_head(c: &mut TcpStream) -> String {
    c.set_read_timeout(Some(NEVER)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut byte).expect("the answer's head");
        assert_eq!(n, 1, "the connection ended inside the head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads `c` until it ends, taking whatever bytes still come: how long
/// that took and the error that ended it (`None`: end of stream). Panics
/// if nothing ends it in [`NEVER`].
fn drain_until_end(c: &mut TcpStream) -> (Duration, Option<io::Error>) {
    read_until_end(c, true, "the plain request")
}

/// A plain-HTTP request (no CONNECT) whose origin sent its head and then
/// trickles its body: a gateway frozen meanwhile ends the client's
/// connection within interval plus deadline, reset (the body was cut), and
/// `gateway_unresponsive` is recorded.
fn frozen_gateway_ends_a_plain_request(generation: Generation) {
    let (_origin, gw, relay) = scene(generation, &[]);
    let mut c = relay.connect();
    // One byte a second for a long while: the answer's head, then a stall.
    c.write_all(b"GET http://origin.test/slow/100000?rate=1 HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .unwrap();
    let head = read_answer_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Some silence first, so the relay pings, learns the gateway answers.
    thread::sleep(INTERVAL * 2);
    let frozen = Frozen::stop(&gw);
    let (took, err) = drain_until_end(&mut c);
    let bound = INTERVAL + DEADLINE + SLACK;
    assert!(
        took <= bound,
        "the plain request ended {took:?} after the freeze, past {bound:?}"
    );
    let err = err.expect("the client is reset, not ended as if the answer were whole");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let recorded = eventually(Duration::from_secs(5), || {
        status(&relay).contains("\"gateway_unresponsive\"")
    });
    assert!(
        recorded,
        "no gateway_unresponsive failure on the status page:\n{}\nrelay log:\n{}",
        status(&relay),
        relay.stderr()
    );
    drop(frozen);
}

#[test]
fn frozen_gateway_ends_a_plain_request_upstream_proxy() {
    frozen_gateway_ends_a_plain_request(Generation::UpstreamProxy);
}

#[test]
fn frozen_gateway_ends_a_plain_request_agent_proxy() {
    frozen_gateway_ends_a_plain_request(Generation::AgentProxy);
}
