//! The relay's second generation (the agent proxy, tunnel protocol v2) end
//! to end: the real `ccr-relay` binary, real `curl`, the development
//! gateway playing a late-v2, early-v2 or v1-only server. What is checked:
//! which generation the gates choose (and the paths it uses), the HELLO
//! and the CONNECT preamble byte for byte, reuse of a WebSocket for
//! sequential tunnels and a fresh one after the idle limit, a redial when
//! the gateway closed a pooled WebSocket, the safe redial of a reused
//! WebSocket that fails before answering (cut, or silent for the reuse
//! answer timeout: same preamble and bytes on a fresh one, the origin asked
//! once), no replay and a reset client once the answer began, the fallback
//! for servers that do not acknowledge v2 (remembered: no HELLO on later
//! WebSockets; on data before HELLO_ACK or on the HELLO_ACK timeout; and
//! `--require-v2` refusing it), retried upgrades (client bytes written
//! meanwhile arrive intact), a rotated session-ingress token (on fresh and
//! reused WebSockets), the start-up probe failing open (401) or never
//! answering, and the client process in the relay's log.
//!
//! The relay may open one WebSocket at start-up that carries no tunnel
//! (the contract's start-up probe); WebSocket counts below are of the
//! WebSockets that carried tunnels, and at most one tunnel-less one is
//! tolerated besides ([`Census`]).

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::events::escape;
use ccr_integration::relay::{BlindPki, RelayOptions, RelayProcess, RunOutput, curl_via};
use ccr_integration::relay::{read_response, run_relay};
use ccr_integration::session_env::{Outcome, Session, relay_vars_in};
use ccr_integration::wire::{self, base64};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, ServerKind, TempDir, temp_dir};

const WAIT: Duration = Duration::from_secs(10);
/// Longer than the relay's FIN grace (10 s), for events that may wait on it.
const FIN_WAIT: Duration = Duration::from_secs(15);
const URL: &str = "https://origin.test/hello";
const HELLO_BODY: &str = "hello from origin\n";
/// Makes the origin close after its answer, so the gateway's FIN follows
/// at once and the WebSocket is back in the pool before the next curl.
const CLOSE: &[&str] = &["-H", "Connection: close"];

/// An HTTPS origin for `origin.test` (signed by the CA the gateway serves)
/// and an agent-proxy gateway playing `server`, mapping `origin.test:443`
/// to it, with `more` arguments.
fn setup(server: ServerKind, more: &[&str]) -> (BlindPki, DevOrigin, DevGateway) {
    let pki = BlindPki::new();
    let origin = pki.https_origin(&["origin.test"]);
    let gw = DevGateway::start(
        pki.gateway_options(false)
            .agent_proxy(server)
            .map("origin.test:443", origin.addr)
            .args(more),
    );
    (pki, origin, gw)
}

/// A second-generation `ccr-relay serve` against `gw`.
fn serve_v2(gw: &DevGateway, opts: RelayOptions) -> RelayProcess {
    RelayProcess::serve(gw, opts.agent_proxy())
}

/// `curl https://origin.test/hello` through `relay`; panics unless it got
/// the origin's answer.
fn curl_hello(relay: &RelayProcess, pki: &BlindPki, gw: &DevGateway) -> RunOutput {
    let out = curl_via(&relay.proxy_url, &pki.served_ca_pem(), URL, CLOSE);
    assert!(
        out.status.success() && out.stdout_text() == HELLO_BODY,
        "curl through the relay failed ({} after {:?}): stdout {:?}, stderr {:?}\nrelay log:\n{}\ngateway events:\n{}",
        out.status,
        out.elapsed,
        out.stdout_text(),
        out.stderr,
        relay.stderr(),
        events_of(gw).join("\n")
    );
    out
}

/// `(ws, tunnel)` of every `v2 preamble ws=<n> tunnel=<k> …` event, in order.
fn preambles(gw: &DevGateway) -> Vec<(u64, u64)> {
    events_of(gw)
        .iter()
        .filter_map(|l| tag_of(l.strip_prefix("v2 preamble ")?))
        .collect()
}

/// Parses `ws=<n> tunnel=<k>` at the start of `rest`.
fn tag_of(rest: &str) -> Option<(u64, u64)> {
    let mut words = rest.split(' ');
    let ws = words.next()?.strip_prefix("ws=")?.parse().ok()?;
    let tunnel = words.next()?.strip_prefix("tunnel=")?.parse().ok()?;
    Some((ws, tunnel))
}

/// The `ws=<n>` at the end of an `upgrade …` event.
fn ws_of_upgrade(line: &str) -> Option<u64> {
    line.rsplit(' ').next()?.strip_prefix("ws=")?.parse().ok()
}

/// What the gateway saw of the relay's WebSockets.
#[derive(Debug)]
struct Census {
    /// `upgrade ok` events.
    upgrades: BTreeSet<u64>,
    /// WebSockets that carried at least one tunnel.
    with_tunnels: BTreeSet<u64>,
    /// WebSockets that ended without a tunnel (the start-up probe).
    empty: BTreeSet<u64>,
}

fn census(gw: &DevGateway) -> Census {
    let events = events_of(gw);
    let upgrades = events
        .iter()
        .filter(|l| l.starts_with("upgrade ok "))
        .filter_map(|l| ws_of_upgrade(l))
        .collect();
    let with_tunnels = preambles(gw).into_iter().map(|(ws, _)| ws).collect();
    let empty = events
        .iter()
        .filter_map(|l| l.strip_prefix("v2 ws-end ws="))
        .filter_map(|rest| {
            let (ws, rest) = rest.split_once(' ')?;
            rest.starts_with("tunnels=0 ").then(|| ws.parse().ok())?
        })
        .collect();
    Census {
        upgrades,
        with_tunnels,
        empty,
    }
}

/// Asserts that the relay opened exactly `tunnel_websockets` WebSockets
/// that carried tunnels and at most one other (the start-up probe, opened
/// before any tunnel and closed without one). Waits up to 5 s for the
/// probe's end to be logged.
fn assert_websockets(gw: &DevGateway, tunnel_websockets: usize) -> Census {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = census(gw);
        let accounted = c.with_tunnels.len() + c.empty.len() == c.upgrades.len();
        if accounted || Instant::now() >= deadline {
            assert_eq!(
                c.with_tunnels.len(),
                tunnel_websockets,
                "WebSockets carrying tunnels: {c:?}; events:\n{}",
                events_of(gw).join("\n")
            );
            assert!(
                accounted && c.empty.len() <= 1,
                "upgrades beyond the tunnels' and one probe's: {c:?}; events:\n{}",
                events_of(gw).join("\n")
            );
            if let (Some(probe), Some(first)) = (c.empty.first(), c.with_tunnels.first()) {
                assert!(
                    probe < first,
                    "a tunnel-less WebSocket after the first tunnel: {c:?}"
                );
            }
            return c;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The CONNECT preamble a second-generation relay must send for curl.
fn expected_preamble(session: &str, token: &str) -> Vec<u8> {
    let basic = base64(format!("{session}:{token}").as_bytes());
    format!(
        "CONNECT origin.test:443 HTTP/1.1\r\nProxy-Authorization: Basic {basic}\r\nX-Agent-Proxy-Client-Process: curl\r\n\r\n"
    )
    .into_bytes()
}

/// What the relay sends when a loaded machine has not found the client
/// process in time (the contract lets the lookup delay a tunnel by a few
/// milliseconds at most).
const LOOKUP_TIMED_OUT: &str = "<lookup-timed-out>";

/// The gateway's events, with a client process not found in time read as
/// `curl`, the process every tunnel here comes from: a preamble is
/// compared whole, and a busy test machine must not fail it.
fn events_of(gw: &DevGateway) -> Vec<String> {
    gw.events()
        .into_iter()
        .map(|e| e.replace(LOOKUP_TIMED_OUT, "curl"))
        .collect()
}

/// An escaped preamble with the client process's value left out.
fn without_client_process(preamble: &str) -> String {
    const NAME: &str = "X-Agent-Proxy-Client-Process: ";
    match preamble.find(NAME) {
        Some(at) => {
            let value = at + NAME.len();
            let end = preamble[value..]
                .find("\\r\\n")
                .map_or(preamble.len(), |e| value + e);
            format!("{}*{}", &preamble[..value], &preamble[end..])
        }
        None => preamble.to_string(),
    }
}

/// The relay's log and the gateway's events, for a failing assertion.
fn failure_context(relay: &RelayProcess, gw: &DevGateway) -> String {
    format!(
        "relay log:\n{}\ngateway events:\n{}",
        relay.stderr(),
        events_of(gw).join("\n")
    )
}

/// The client read the recording origin's whole answer to `request`, and
/// a clean end after it.
fn assert_whole_answer(
    got: &[u8],
    err: Option<io::Error>,
    request: &[u8],
    context: impl Fn() -> String,
) {
    assert!(err.is_none(), "{err:?}; {}", context());
    assert_eq!(
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(&recorded_answer(request)),
        "{}",
        context()
    );
}

/// Waits until the relay answered the gateway's FIN for `ws`/`tunnel`,
/// then until its status page shows a WebSocket in the pool (a loaded
/// machine may take a while between FIN_ACK and putting it there).
fn wait_pooled(gw: &DevGateway, relay: &RelayProcess, ws: u64, tunnel: u64) {
    gw.wait_for_event_prefix(&format!("v2 fin-ack ws={ws} tunnel={tunnel}"), FIN_WAIT);
    let deadline = Instant::now() + WAIT;
    loop {
        let idle = pool_idle(relay);
        if idle.is_some_and(|n| n > 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no pooled WebSocket after FIN_ACK (pool: {idle:?}); relay log:\n{}",
            relay.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The relay's pool size from its status page (`"pool": {"idle": N}`).
fn pool_idle(relay: &RelayProcess) -> Option<u64> {
    let mut s = relay.connect();
    s.write_all(b"GET /__agentproxy/status HTTP/1.1\r\nHost: relay\r\n\r\n")
        .ok()?;
    let mut page = String::new();
    s.read_to_string(&mut page).ok()?;
    let after = &page[page.find("\"pool\"")?..];
    let after = &after[after.find("\"idle\":")? + "\"idle\":".len()..];
    let digits: String = after
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[test]
fn hello_and_preamble_byte_for_byte_on_the_agent_proxy_paths() {
    let (pki, _origin, gw) = setup(ServerKind::Late, &[]);
    let relay = serve_v2(&gw, RelayOptions::default());
    curl_hello(&relay, &pki, &gw);
    let c = assert_websockets(&gw, 1);
    let ws = *c.with_tunnels.first().unwrap();
    let events = events_of(&gw);
    let first = format!("v2 first-message ws={ws} hex=10011802");
    assert!(
        events.contains(&first),
        "{first} not in:\n{}",
        events.join("\n")
    );
    assert!(events.contains(&format!("v2 hello-ack ws={ws}")));
    let preamble = format!(
        "v2 preamble ws={ws} tunnel=1 {}",
        escape(&expected_preamble(&gw.session_id, &gw.token))
    );
    assert!(
        events.contains(&preamble),
        "want exactly\n{preamble}\nin:\n{}",
        events.join("\n")
    );
    assert!(events.contains(&format!("v2 client-process ws={ws} tunnel=1 curl")));
    assert_eq!(gw.count_events("connect origin.test:443"), 1);
    // The CA came from the agent-proxy path (the gateway serves no other).
    let gw_log = fs::read_to_string(&gw.child.stderr_log).unwrap_or_default();
    assert!(
        gw_log.contains("GET /v1/code/agent-proxy/ca-cert"),
        "the relay did not fetch the CA from the agent-proxy path; gateway log:\n{gw_log}"
    );
    assert!(!gw_log.contains("/v1/code/upstreamproxy/"), "{gw_log}");
}

#[test]
fn tunnel_log_line_names_the_client_process() {
    let (pki, _origin, gw) = setup(ServerKind::Late, &[]);
    let relay = serve_v2(&gw, RelayOptions::default().rust_log("info"));
    curl_hello(&relay, &pki, &gw);
    let lines = relay.wait_for_log(FIN_WAIT, |l| {
        l.contains("origin.test:443") && l.contains("client curl")
    });
    assert!(!lines.is_empty());
}

#[test]
fn sequential_curls_share_one_websocket_and_idle_over_the_pool_limit_opens_a_new_one() {
    let (pki, _origin, gw) = setup(ServerKind::Late, &[]);
    // The pool's 10 s idle limit, made 3 s so the test need not wait it out.
    // Without the warm WebSocket: that one is exempt from the idle limit.
    let relay = serve_v2(
        &gw,
        RelayOptions::default()
            .arg("--pool-idle")
            .arg("3")
            .arg("--keep-warm=off"),
    );
    curl_hello(&relay, &pki, &gw);
    let ws = preambles(&gw)[0].0;
    wait_pooled(&gw, &relay, ws, 1);
    curl_hello(&relay, &pki, &gw);
    assert_eq!(
        preambles(&gw),
        vec![(ws, 1), (ws, 2)],
        "the second tunnel reuses the first WebSocket; events:\n{}",
        events_of(&gw).join("\n")
    );
    assert_websockets(&gw, 1);
    let events = events_of(&gw);
    // No second HELLO on the reused WebSocket (the gateway would log one
    // between tunnels as control-ignored), and fresh credentials in the
    // second preamble.
    assert_eq!(gw.count_events(&format!("v2 hello ws={ws} ")), 1);
    assert_eq!(
        gw.count_events(&format!("v2 control-ignored ws={ws} control=1")),
        0,
        "{}",
        events.join("\n")
    );
    let second = format!(
        "v2 preamble ws={ws} tunnel=2 {}",
        escape(&expected_preamble(&gw.session_id, &gw.token))
    );
    assert!(events.contains(&second), "{second}: {}", events.join("\n"));
    wait_pooled(&gw, &relay, ws, 2);

    // Idle past the limit: the pooled WebSocket is discarded (not before
    // the limit: it was reused above within it).
    let deadline = Instant::now() + WAIT;
    while pool_idle(&relay) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the idle WebSocket stayed pooled"
        );
        thread::sleep(Duration::from_millis(50));
    }
    curl_hello(&relay, &pki, &gw);
    let c = assert_websockets(&gw, 2);
    let fresh = *c.with_tunnels.last().unwrap();
    assert_ne!(fresh, ws);
    assert_eq!(preambles(&gw), vec![(ws, 1), (ws, 2), (fresh, 1)]);
    // The stale one was closed, not kept.
    gw.wait_for_event_prefix(&format!("v2 ws-end ws={ws} tunnels=2 "), WAIT);
    // Each request reached the gateway once: no replay.
    assert_eq!(gw.count_events("connect origin.test:443"), 3);
}

#[test]
fn pooled_websocket_closed_by_the_gateway_is_redialled() {
    let (pki, _origin, gw) = setup(ServerKind::Late, &["--close-idle-after", "500"]);
    let relay = serve_v2(&gw, RelayOptions::default());
    curl_hello(&relay, &pki, &gw);
    let ws = preambles(&gw)[0].0;
    // (The pool may be empty again by the time it is looked at: the
    // gateway closes the WebSocket after 500 ms.)
    gw.wait_for_event_prefix(&format!("v2 fin-ack ws={ws} tunnel=1"), FIN_WAIT);
    gw.wait_for_event_prefix(&format!("v2 idle-close ws={ws} "), WAIT);
    gw.wait_for_event_prefix(&format!("v2 ws-end ws={ws} tunnels=1 "), WAIT);
    let out = curl_hello(&relay, &pki, &gw);
    assert_eq!(out.status.code(), Some(0));
    let c = assert_websockets(&gw, 2);
    let fresh = *c.with_tunnels.last().unwrap();
    assert!(fresh > ws);
    // The dead WebSocket may have been tried first; the request still
    // reached the origin through the gateway exactly once per curl.
    assert_eq!(gw.count_events("connect origin.test:443"), 2);
    assert_eq!(
        preambles(&gw).iter().filter(|(w, _)| *w == fresh).count(),
        1
    );
}

/// Two curls against a server that never acknowledges v2: both work, fast,
/// each on its own WebSocket (no pooling without v2), no FIN either way.
fn without_v2_acknowledgement(server: ServerKind) {
    let (pki, _origin, gw) = setup(server, &[]);
    let relay = serve_v2(&gw, RelayOptions::default());
    let first = curl_hello(&relay, &pki, &gw);
    let ws = preambles(&gw)[0].0;
    gw.wait_for_event_prefix(&format!("v2 ws-end ws={ws} tunnels=1 "), FIN_WAIT);
    let second = curl_hello(&relay, &pki, &gw);
    assert!(
        second.elapsed < Duration::from_secs(5),
        "the second tunnel took {:?} (the first {:?}): it waited for a HELLO_ACK",
        second.elapsed,
        first.elapsed
    );
    let c = assert_websockets(&gw, 2);
    let events = events_of(&gw);
    let first_ws = format!("v2 first-message ws={ws} hex=10011802");
    assert!(events.contains(&first_ws), "{}", events.join("\n"));
    let seen = match server {
        ServerKind::Early => format!("v2 hello-ignored ws={ws} version=2"),
        _ => format!("v2 control-dropped ws={ws} control=1"),
    };
    assert!(events.contains(&seen), "{seen}: {}", events.join("\n"));
    assert_eq!(gw.count_events("fin-sent"), 0, "{c:?}");
    assert_eq!(gw.count_events("v2 fin-ack"), 0);
    assert_eq!(gw.count_events("v2 hello-ack"), 0);
    assert_eq!(gw.count_events("connect origin.test:443"), 2);
    assert_eq!(preambles(&gw).len(), 2);
    // The fallback is remembered: the second WebSocket opens with the
    // preamble itself, no HELLO first.
    let second_ws = *c.with_tunnels.last().unwrap();
    assert_ne!(second_ws, ws);
    assert_opens_with_the_preamble(&gw, second_ws);
}

/// Asserts that the first message on WebSocket `ws` was the CONNECT
/// preamble as a data message (`0A len …`), not HELLO (`10 01 18 02`).
fn assert_opens_with_the_preamble(gw: &DevGateway, ws: u64) {
    let events = events_of(gw);
    let want = format!(
        "v2 first-message ws={ws} hex={}",
        wire::hex(&wire::encode(&expected_preamble(&gw.session_id, &gw.token)))
    );
    let timed_out = String::from_utf8(expected_preamble(&gw.session_id, &gw.token))
        .expect("an ASCII preamble")
        .replace(": curl\r\n", &format!(": {LOOKUP_TIMED_OUT}\r\n"));
    let or_timed_out = format!(
        "v2 first-message ws={ws} hex={}",
        wire::hex(&wire::encode(timed_out.as_bytes()))
    );
    assert!(
        events.contains(&want) || events.contains(&or_timed_out),
        "WebSocket {ws} did not open with the preamble; want\n{want}\nin:\n{}",
        events.join("\n")
    );
    assert!(events.contains(&format!("v2 no-hello ws={ws}")));
    assert_eq!(
        gw.count_events(&format!("v2 first-message ws={ws} hex=10011802")),
        0
    );
}

#[test]
fn hello_ack_timeout_falls_back_and_later_websockets_send_no_hello() {
    // An early server that answers each CONNECT only after 2.5 s: the
    // relay's 0.5 s HELLO_ACK wait ends first, so it falls back on the
    // timeout, not on data before a HELLO_ACK.
    let (pki, _origin, gw) = setup(ServerKind::Early, &["--answer-delay", "2500"]);
    let relay = serve_v2(
        &gw,
        RelayOptions::default().arg("--hello-timeout").arg("0.5"),
    );
    curl_hello(&relay, &pki, &gw);
    let ws = preambles(&gw)[0].0;
    gw.wait_for_event_prefix(&format!("v2 ws-end ws={ws} tunnels=1 "), FIN_WAIT);
    let page = curl_via(
        &relay.proxy_url,
        &pki.served_ca_pem(),
        &format!("{}/__agentproxy/status", relay.proxy_url),
        &["--noproxy", "*"],
    );
    let json = page.stdout_text();
    assert!(
        json.contains("v2_not_acked") && json.contains("no HELLO_ACK within the wait"),
        "the fallback was not the HELLO_ACK timeout: {json}"
    );
    assert!(json.contains("v1-fallback"), "{json}");
    curl_hello(&relay, &pki, &gw);
    let c = assert_websockets(&gw, 2);
    assert!(events_of(&gw).contains(&format!("v2 first-message ws={ws} hex=10011802")));
    assert_opens_with_the_preamble(&gw, *c.with_tunnels.last().unwrap());
    assert_eq!(gw.count_events("v2 hello-ignored "), 1);
    assert_eq!(gw.count_events("connect origin.test:443"), 2);

    // With --require-v2 the same timeout is a 502 that says so, long
    // before the gateway's late answer.
    let strict = serve_v2(
        &gw,
        RelayOptions::default()
            .arg("--hello-timeout")
            .arg("0.5")
            .arg("--require-v2"),
    );
    let started = Instant::now();
    let (status, body) = connect_raw(&strict, "origin.test:443");
    assert_eq!(status, "HTTP/1.1 502 Bad Gateway", "{body}");
    assert!(
        body.lines().next().unwrap_or_default().contains(
            "gateway did not acknowledge tunnel protocol v2 (no HELLO_ACK within the wait)"
        ),
        "{body:?}"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2400), "the 502 took {took:?}");
}

#[test]
fn early_v2_server_works_without_fin_and_without_waiting() {
    without_v2_acknowledgement(ServerKind::Early);
}

#[test]
fn v1_only_server_works_without_fin_and_without_waiting() {
    without_v2_acknowledgement(ServerKind::V1Only);
}

#[test]
fn require_v2_against_an_early_server_answers_502() {
    let (_pki, _origin, gw) = setup(ServerKind::Early, &[]);
    let relay = serve_v2(&gw, RelayOptions::default().arg("--require-v2"));
    let mut client = relay.connect();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    client
        .write_all(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut client).unwrap_or_else(|e| {
        panic!(
            "no answer from the relay: {e}; relay log:\n{}",
            relay.stderr()
        )
    });
    assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
    let body = String::from_utf8_lossy(&body);
    let first_line = body.lines().next().unwrap_or_default();
    assert!(
        first_line.contains("gateway did not acknowledge tunnel protocol v2"),
        "{body:?}"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "the 502 took {took:?}");
}

/// A late gateway on `addr` (the address a previous one had), with `more`.
fn gateway_at(pki: &BlindPki, origin: &DevOrigin, addr: SocketAddr, more: &[&str]) -> DevGateway {
    let listen = addr.to_string();
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(more);
    DevGateway::start(
        pki.gateway_options(false)
            .agent_proxy(ServerKind::Late)
            .map("origin.test:443", origin.addr)
            .args(&args),
    )
}

/// Waits up to 3 s for the start-up probe's upgrade (if the relay makes
/// one), so it is over before the test swaps the gateway.
fn let_the_probe_pass(gw: &DevGateway) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && gw.count_events("upgrade") == 0 {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
}

#[test]
fn refused_upgrades_are_retried_and_the_third_succeeds() {
    let (pki, origin, first_gw) = setup(ServerKind::Late, &[]);
    let relay = serve_v2(&first_gw, RelayOptions::default());
    // The start-up probe would use up the refusals: it talks to a first
    // gateway; the tunnel then meets a second one on the same address that
    // refuses its first two upgrades.
    let_the_probe_pass(&first_gw);
    let addr = first_gw.addr;
    drop(first_gw);
    let gw = gateway_at(&pki, &origin, addr, &["--refuse-first", "2"]);
    let out = curl_hello(&relay, &pki, &gw);
    assert_eq!(out.status.code(), Some(0));
    let events = events_of(&gw);
    let upgrades: Vec<&String> = events
        .iter()
        .filter(|l| l.starts_with("upgrade "))
        .collect();
    assert_eq!(
        upgrades,
        [
            "upgrade refused 503 --refuse-first ws=1",
            "upgrade refused 503 --refuse-first ws=2",
            "upgrade ok ws=3",
        ],
        "three upgrade attempts; events:\n{}",
        events.join("\n")
    );
    assert_eq!(preambles(&gw), vec![(3, 1)]);
    assert_eq!(gw.count_events("connect origin.test:443"), 1);
}

/// A late gateway accepting only the token in its token file, and a relay
/// whose session-ingress token file holds `token-a` too: the platform can
/// rotate both at once ([`Rotation::rotate_to`]).
struct Rotation {
    _dir: TempDir,
    gw_tokens: PathBuf,
    ingress: PathBuf,
    pki: BlindPki,
    _origin: DevOrigin,
    gw: DevGateway,
    relay: RelayProcess,
}

impl Rotation {
    fn start(name: &str, more_gateway_args: &[&str]) -> Rotation {
        let dir = temp_dir(name);
        let gw_tokens = dir.join("gateway-token");
        let ingress = dir.join("session_ingress_token");
        fs::write(&gw_tokens, "token-a\n").unwrap();
        fs::write(&ingress, "token-a\n").unwrap();
        let gw_tokens_arg = gw_tokens.to_string_lossy().into_owned();
        let mut args = vec!["--token-file", &gw_tokens_arg];
        args.extend_from_slice(more_gateway_args);
        let (pki, origin, gw) = setup(ServerKind::Late, &args);
        let relay = serve_v2(
            &gw,
            RelayOptions::default().token("token-a").env(
                "CLAUDE_SESSION_INGRESS_TOKEN_FILE",
                &ingress.to_string_lossy(),
            ),
        );
        Rotation {
            _dir: dir,
            gw_tokens,
            ingress,
            pki,
            _origin: origin,
            gw,
            relay,
        }
    }

    /// The platform rewrites the ingress token; the gateway takes only it.
    fn rotate_to(&self, token: &str) {
        fs::write(&self.ingress, format!("{token}\n")).unwrap();
        fs::write(&self.gw_tokens, format!("{token}\n")).unwrap();
    }

    fn assert_no_token_in_log(&self) {
        let log = self.relay.stderr();
        assert!(
            !log.contains("token-a") && !log.contains("token-b"),
            "a token in the relay's log:\n{log}"
        );
    }
}

#[test]
fn rotated_ingress_token_is_used_for_the_next_websocket_and_preamble() {
    let scene = Rotation::start("e2e-v2-rotation", &["--close-idle-after", "500"]);
    let (pki, gw, relay) = (&scene.pki, &scene.gw, &scene.relay);
    curl_hello(relay, pki, gw);
    let ws = preambles(gw)[0].0;
    let events = events_of(gw);
    let with_a = format!(
        "v2 preamble ws={ws} tunnel=1 {}",
        escape(&expected_preamble(&gw.session_id, "token-a"))
    );
    assert!(events.contains(&with_a), "{}", events.join("\n"));
    gw.wait_for_event_prefix(&format!("v2 fin-ack ws={ws} tunnel=1"), FIN_WAIT);
    gw.wait_for_event_prefix(&format!("v2 ws-end ws={ws} "), WAIT);

    // The platform rotates the token; the gateway accepts only the new one.
    scene.rotate_to("token-b");
    curl_hello(relay, pki, gw);
    let c = assert_websockets(gw, 2);
    let fresh = *c.with_tunnels.last().unwrap();
    let events = events_of(gw);
    // `upgrade ok` now means the upgrade carried `Bearer token-b`.
    assert!(
        events.contains(&format!("upgrade ok ws={fresh}")),
        "{}",
        events.join("\n")
    );
    let with_b = format!(
        "v2 preamble ws={fresh} tunnel=1 {}",
        escape(&expected_preamble(&gw.session_id, "token-b"))
    );
    assert!(
        events.contains(&with_b),
        "want\n{with_b}\nin:\n{}",
        events.join("\n")
    );
    assert_eq!(gw.count_events("upgrade refused"), 0);
    assert_eq!(gw.count_events("tunnel refused"), 0);
    scene.assert_no_token_in_log();
}

/// `run` fails open (one warning naming the 401, no proxy variable) and
/// `doctor` says the proxy would stay off, naming the 401, when the
/// gateway refuses the relay's token.
fn probe_refused_with_401(s: Session) {
    let out = s.run(&["sh", "-c", "echo child-ran; env"]);
    assert!(
        out.stdout.starts_with("child-ran\n") && out.code() == Some(0),
        "{}",
        out.describe()
    );
    assert_eq!(
        relay_vars_in(&out.env()),
        Vec::<String>::new(),
        "proxy variables although the gateway refused the token: {}",
        out.describe()
    );
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one warning: {}", out.describe());
    assert!(lines[0].contains("401"), "{}", out.describe());
    assert!(!out.stderr.contains(&s.token), "the token in a warning");

    let doctor = s.doctor();
    assert_eq!(doctor.code(), Some(1), "{}", doctor.describe());
    let text = format!("{}{}", doctor.stdout, doctor.stderr);
    assert!(text.contains("401"), "{}", doctor.describe());
    assert!(text.contains("would stay off"), "{}", doctor.describe());
    assert!(!text.contains(&s.token), "the token in doctor's output");
}

#[test]
fn probe_refused_with_401_fails_open_agent_proxy() {
    let (_pki, _origin, gw) = setup(ServerKind::Late, &[]);
    let mut s = Session::for_gateway("v2-401", &gw).agent_proxy();
    s.write_token("not-the-gateways-token");
    probe_refused_with_401(s);
    assert!(gw.count_events("upgrade refused 401 ") >= 1);
}

#[test]
fn probe_refused_with_401_fails_open_upstream_proxy() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let mut s = Session::for_gateway("v1-401", &gw);
    s.write_token("not-the-gateways-token");
    probe_refused_with_401(s);
    assert!(gw.count_events("upgrade refused 401 ") >= 1);
}

#[test]
fn stalled_probe_does_not_hold_the_command_back() {
    let (_pki, _origin, gw) = {
        let pki = BlindPki::new();
        let origin = pki.https_origin(&["origin.test"]);
        let mut opts = pki
            .gateway_options(false)
            .agent_proxy(ServerKind::Late)
            .map("origin.test:443", origin.addr);
        opts.stall_upgrade = true;
        let gw = DevGateway::start(opts);
        (pki, origin, gw)
    };
    let s = Session::for_gateway("v2-stall", &gw).agent_proxy();
    let started = Instant::now();
    let running = s.spawn("run", &["sh", "-c", "echo started; env"]);
    running.wait_line(Duration::from_secs(8), |l| l == "started");
    let took = started.elapsed();
    let out: Outcome = running.finish(Duration::from_secs(30));
    assert!(
        took < Duration::from_secs(8),
        "the command started after {took:?}"
    );
    assert!(
        out.var("HTTPS_PROXY")
            .is_some_and(|v| v.starts_with("http://127.0.0.1:")),
        "the proxy serves although the probe got no answer: {}",
        out.describe()
    );
    assert!(gw.count_events("upgrade stalled") >= 1);
}

/// The doctor line that names the agent proxy as the chosen generation
/// and `CCR_AGENT_PROXY_ENABLED` as the reason (a URL's
/// `/v1/code/agent-proxy/` path does not count as naming it).
fn agent_proxy_line(out: &Outcome) -> String {
    out.stdout
        .lines()
        .find(|l| {
            l.contains("CCR_AGENT_PROXY_ENABLED")
                && l.replace("/v1/code/agent-proxy/", "")
                    .contains("agent-proxy")
        })
        .unwrap_or_else(|| {
            panic!(
                "no line naming agent-proxy and CCR_AGENT_PROXY_ENABLED: {}",
                out.describe()
            )
        })
        .to_string()
}

#[test]
fn doctor_names_the_agent_proxy_and_why() {
    let (_pki, _origin, gw) = setup(ServerKind::Late, &[]);
    let s = Session::for_gateway("v2-doctor", &gw).agent_proxy();
    let out = s.doctor();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    agent_proxy_line(&out);
    assert!(
        out.stdout.contains("the proxy would start"),
        "{}",
        out.describe()
    );
}

#[test]
fn both_gate_2_variables_set_choose_the_agent_proxy() {
    let (_pki, _origin, gw) = setup(ServerKind::Late, &[]);
    let s = Session::for_gateway("v2-both", &gw)
        .agent_proxy()
        .env(ccr_integration::session_env::ENABLED, "1");
    let out = s.doctor();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    agent_proxy_line(&out);
    // And end to end: only the agent-proxy paths exist on this gateway. A
    // gateway of its own, since doctor's probe opened a WebSocket too.
    let (pki, _origin, gw) = setup(ServerKind::Late, &[]);
    let opts = RelayOptions::default()
        .agent_proxy()
        .env("CCR_UPSTREAM_PROXY_ENABLED", "1");
    let relay = RelayProcess::serve(&gw, opts);
    curl_hello(&relay, &pki, &gw);
    assert_websockets(&gw, 1);
}

#[test]
fn upstream_proxy_gate_alone_keeps_the_first_generation_paths() {
    // A first-generation relay against an agent-proxy gateway: its CA path
    // is not served there, so it fails open ...
    let (_pki, _origin, v2_gw) = setup(ServerKind::Late, &[]);
    let s = Session::for_gateway("v1-on-v2", &v2_gw);
    let out = s.run(&["sh", "-c", "echo child-ran; env"]);
    assert!(out.stdout.starts_with("child-ran\n"), "{}", out.describe());
    assert_eq!(relay_vars_in(&out.env()), Vec::<String>::new());
    let gw_log = fs::read_to_string(&v2_gw.child.stderr_log).unwrap_or_default();
    assert!(
        gw_log.contains("GET /v1/code/upstreamproxy/ca-cert"),
        "{gw_log}"
    );
    // ... and through a first-generation gateway it works.
    let pki = BlindPki::new();
    let origin = pki.https_origin(&["origin.test"]);
    let v1_gw = DevGateway::start(
        pki.gateway_options(false)
            .map("origin.test:443", origin.addr),
    );
    let out = run_relay(
        &v1_gw,
        &RelayOptions::default(),
        &["curl", "-sS", "--fail", "--max-time", "20", URL],
        Duration::from_secs(60),
    );
    out.assert_success();
    assert_eq!(out.stdout_text(), HELLO_BODY);
    assert_eq!(v1_gw.count_events("connect origin.test:443"), 1);
    assert_eq!(v1_gw.count_events("v2 "), 0);
}

#[test]
fn agent_proxy_gate_against_a_first_generation_gateway_fails_open() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let s = Session::for_gateway("v2-on-v1", &gw).agent_proxy();
    let out = s.run(&["sh", "-c", "echo child-ran; env"]);
    assert!(out.stdout.starts_with("child-ran\n"), "{}", out.describe());
    assert_eq!(
        relay_vars_in(&out.env()),
        Vec::<String>::new(),
        "{}",
        out.describe()
    );
    let gw_log = fs::read_to_string(&gw.child.stderr_log).unwrap_or_default();
    assert!(
        gw_log.contains("GET /v1/code/agent-proxy/ca-cert"),
        "the relay did not ask the agent-proxy CA path; gateway log:\n{gw_log}"
    );
    assert_eq!(gw.count_events("upgrade"), 0);
}

#[test]
fn unreachable_probe_makes_tunnels_dial_once_and_say_why() {
    let pki = BlindPki::new();
    let origin = pki.https_origin(&["origin.test"]);
    let mut opts = pki
        .gateway_options(false)
        .agent_proxy(ServerKind::Late)
        .map("origin.test:443", origin.addr);
    opts.stall_upgrade = true;
    let gw = DevGateway::start(opts);
    // Three probe attempts of 0.3 s each, 0.2 s and 0.4 s apart: the
    // verdict comes within the relay's 2 s wait.
    let relay = serve_v2(
        &gw,
        RelayOptions::default().arg("--upgrade-timeout").arg("0.3"),
    );
    let probe_upgrades = gw.count_events("upgrade stalled");
    assert_eq!(probe_upgrades, 3, "the probe tries three times");
    let mut s = relay.connect();
    s.write_all(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s).unwrap();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    let body = String::from_utf8_lossy(&body);
    let first_line = body.lines().next().unwrap_or_default();
    assert!(
        first_line.ends_with(
            "; gateway unreachable at start-up: gateway did not complete the upgrade in time"
        ),
        "{body:?}"
    );
    // One dial attempt while the start-up error stands, not three.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(gw.count_events("upgrade stalled"), probe_upgrades + 1);
}

#[test]
fn serve_brings_the_proxy_up_when_the_ca_can_be_fetched_at_last() {
    let (pki, origin, first_gw) = setup(ServerKind::Late, &[]);
    let addr = first_gw.addr;
    let dir = temp_dir("e2e-v2-ca-retry");
    let env_file = dir.join("relay.env");
    let stderr_log = dir.join("stderr.log");
    let (mut cmd, _token) = ccr_integration::relay::relay_command(
        "serve",
        &first_gw,
        &RelayOptions::default().agent_proxy(),
        dir.path(),
    );
    // Nobody listens on the gateway's address while the relay starts.
    drop(first_gw);
    cmd.arg("--env-file")
        .arg(&env_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&stderr_log).unwrap());
    let mut child = cmd.spawn().expect("start ccr-relay serve");
    // Until the first retry is announced (the CA fetch has failed).
    let deadline = Instant::now() + WAIT;
    let mut log = String::new();
    while !log.contains("trying the gateway's CA again in") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        log = fs::read_to_string(&stderr_log).unwrap_or_default();
    }
    assert!(!env_file.exists(), "no proxy without the CA: {log}");
    assert!(
        log.contains("trying the gateway's CA again in"),
        "a retry is announced: {log}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "serve keeps running: {log}"
    );
    // The gateway comes back: the next retry brings the proxy up.
    let gw = gateway_at(&pki, &origin, addr, &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !env_file.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let text = fs::read_to_string(&env_file).unwrap_or_else(|e| {
        let _ = child.kill();
        panic!(
            "no env file ({e}); stderr:\n{}",
            fs::read_to_string(&stderr_log).unwrap_or_default()
        )
    });
    let proxy = ccr_integration::relay::parse_env_file(&text)
        .into_iter()
        .find(|(k, _)| k == "HTTPS_PROXY")
        .map(|(_, v)| v)
        .expect("HTTPS_PROXY in the env file");
    let out = curl_via(&proxy, &pki.served_ca_pem(), URL, CLOSE);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success() && out.stdout_text() == HELLO_BODY,
        "curl through the late proxy: {:?} {:?}; gateway events:\n{}",
        out.status,
        out.stderr,
        events_of(&gw).join("\n")
    );
}

/// A raw CONNECT to `target` through `relay`: the status line and body.
fn connect_raw(relay: &RelayProcess, target: &str) -> (String, String) {
    let mut s = relay.connect();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .unwrap();
    let (head, body) = read_response(&mut s).unwrap();
    (
        head.lines().next().unwrap_or_default().to_string(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[test]
fn selective_mode_tunnels_included_hosts_and_dials_the_rest_with_refusals() {
    let (pki, _origin, gw) = setup(ServerKind::Late, &[]);
    let relay = serve_v2(
        &gw,
        RelayOptions::default()
            .env("CCR_AGENT_PROXY_RELAY_MODE", "selective")
            .env("CCR_AGENT_PROXY_INCLUDE_HOSTS", "*.test"),
    );
    // Neither variable reaches children.
    for name in [
        "CCR_AGENT_PROXY_RELAY_MODE",
        "CCR_AGENT_PROXY_INCLUDE_HOSTS",
    ] {
        assert!(relay.var(name).is_none(), "{name} in the env file");
    }
    // An included host goes through the gateway.
    curl_hello(&relay, &pki, &gw);
    assert_eq!(gw.count_events("connect origin.test:443"), 1);
    // Hosts off the list are dialled by the relay, which refuses local and
    // metadata destinations by name, by literal and by non-canonical form
    // (`localhost` and `127.0.0.1` are loopback, which the relay dials for
    // its own uid: tests/loopback.rs).
    for target in [
        "ip6-localhost:80",
        "metadata.google.internal:80",
        "169.254.169.254:80",
        "0x7f.1:80",
        "2130706433:80",
        "0177.0.0.1:80",
    ] {
        let (status, body) = connect_raw(&relay, target);
        assert_eq!(status, "HTTP/1.1 403 Forbidden", "{target}: {body}");
        assert!(
            body.starts_with("ccr-relay: direct connection to "),
            "{body}"
        );
    }
    // A name that does not resolve: the relay's own 502, not the gateway's.
    let (status, body) = connect_raw(&relay, "nowhere.invalid:443");
    assert_eq!(status, "HTTP/1.1 502 Bad Gateway", "{body}");
    assert_eq!(
        gw.count_events("connect "),
        1,
        "nothing off the list reached the gateway"
    );
    // The status page says so.
    let page = curl_via(
        &relay.proxy_url,
        &pki.served_ca_pem(),
        &format!("{}/__agentproxy/status", relay.proxy_url),
        &["--noproxy", "*"],
    );
    let json = page.stdout_text();
    assert!(json.contains("\"selective\": true"), "{json}");
    for kind in [
        "direct_blocked",
        "direct_peer_blocked",
        "direct_dial_failed",
    ] {
        assert!(json.contains(kind), "{kind} in the failure history: {json}");
    }
}

/// A plain-HTTP origin of the test's own: it records every request it
/// gets, byte for byte (head and `Content-Length` body), answers
/// `got <n> bytes`, and closes.
struct RecordingOrigin {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RecordingOrigin {
    fn start() -> RecordingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let seen = Arc::clone(&seen);
                thread::spawn(move || serve_recorded(conn, &seen));
            }
        });
        RecordingOrigin { addr, requests }
    }

    fn requests(&self) -> Vec<Vec<u8>> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `--map` argument sending `plain.test:80` here.
    fn map_arg(&self) -> String {
        format!("plain.test:80={}", self.addr)
    }
}

fn serve_recorded(mut conn: TcpStream, seen: &Mutex<Vec<Vec<u8>>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut want = None;
    while want.is_none_or(|w| got.len() < w) && got.len() < 8 << 20 {
        if want.is_none()
            && let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            want = Some(end + 4 + len);
            continue;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let answer = format!("got {} bytes\n", got.len());
    seen.lock().unwrap_or_else(|p| p.into_inner()).push(got);
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = conn.shutdown(Shutdown::Write);
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
}

const PLAIN_CONNECT: &[u8] = b"CONNECT plain.test:80 HTTP/1.1\r\nHost: plain.test:80\r\n\r\n";

/// A small POST for the recording origin, `body` its body.
fn post(body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: plain.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// The gateway's answer to a CONNECT, then the recording origin's.
fn recorded_answer(request: &[u8]) -> Vec<u8> {
    let answer = format!("got {} bytes\n", request.len());
    format!(
        "HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )
    .into_bytes()
}

/// Reads what `s` gets until the stream ends: the bytes, and the error
/// that ended it (`None`: a clean end of stream, the peer's FIN).
fn read_until_end(mut s: &TcpStream, timeout: Duration) -> (Vec<u8>, Option<io::Error>) {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e)),
        }
    }
}

/// The escaped data of the `v2 preamble ws=<ws> tunnel=<tunnel>` event.
fn preamble_of(gw: &DevGateway, ws: u64, tunnel: u64) -> Option<String> {
    let prefix = format!("v2 preamble ws={ws} tunnel={tunnel} ");
    events_of(gw)
        .iter()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

/// A late gateway with `--on-reuse fault` and a recording origin behind
/// `plain.test:80`, a relay, and one curl whose WebSocket is back in the
/// pool: the next tunnel reuses it and meets the fault. Returns the
/// pooled WebSocket's number too.
fn pooled_then(
    fault: &str,
) -> (
    BlindPki,
    DevOrigin,
    DevGateway,
    RecordingOrigin,
    RelayProcess,
    u64,
) {
    let plain = RecordingOrigin::start();
    let map = plain.map_arg();
    let (pki, origin, gw) = setup(ServerKind::Late, &["--map", &map, "--on-reuse", fault]);
    let relay = serve_v2(&gw, RelayOptions::default());
    curl_hello(&relay, &pki, &gw);
    let ws = preambles(&gw)[0].0;
    wait_pooled(&gw, &relay, ws, 1);
    (pki, origin, gw, plain, relay, ws)
}

/// A reused WebSocket fails before any answer (`fault`: cut or silent):
/// the tunnel is redialled on a fresh WebSocket with the same preamble and
/// the same client bytes, the client gets its whole answer with a clean
/// end, and the origin sees the request once. Returns how long the client
/// waited.
fn reused_websocket_failing_before_the_answer(fault: &str) -> Duration {
    let (_pki, _origin, gw, plain, relay, ws) = pooled_then(fault);
    let request = post(b"hello through a redial");
    // The request comes with the CONNECT: the relay holds it when it
    // opens, sends it on the reused WebSocket, and must replay it.
    let client = relay.connect();
    let started = Instant::now();
    (&client)
        .write_all(&[PLAIN_CONNECT, &request[..]].concat())
        .unwrap();
    let (got, err) = read_until_end(&client, Duration::from_secs(40));
    let waited = started.elapsed();
    let context = || failure_context(&relay, &gw);
    assert_whole_answer(&got, err, &request, context);
    // The fault met the reused WebSocket's second tunnel ...
    let events = events_of(&gw);
    assert!(
        events.contains(&format!("v2 reuse-fault {fault} ws={ws} tunnel=2")),
        "{}",
        context()
    );
    // ... which had the preamble and the client bytes ...
    let reused = preamble_of(&gw, ws, 2).expect("a preamble on the reused WebSocket");
    assert!(
        reused.starts_with(
            &escape(b"CONNECT plain.test:80 HTTP/1.1\r\nProxy-Authorization: Basic ")
                .trim_end_matches('"')
                .to_string()
        ),
        "{reused}"
    );
    assert!(
        events.contains(&format!(
            "v2 swallowed ws={ws} tunnel=2 {}",
            escape(&request)
        )),
        "the client bytes did not follow the preamble on the reused WebSocket; {}",
        context()
    );
    // ... and a fresh WebSocket got the same preamble, then the same bytes
    // (the origin got exactly them, once).
    let c = assert_websockets(&gw, 2);
    let fresh = *c.with_tunnels.last().unwrap();
    assert!(fresh > ws, "{c:?}");
    // The same preamble, but for the client process: the redial asks again
    // and may find it where the reused WebSocket's few milliseconds did not.
    assert_eq!(
        preamble_of(&gw, fresh, 1).map(|p| without_client_process(&p)),
        Some(without_client_process(&reused)),
        "{}",
        context()
    );
    assert_eq!(preambles(&gw), vec![(ws, 1), (ws, 2), (fresh, 1)]);
    assert_eq!(plain.requests(), vec![request.clone()], "{}", context());
    assert_eq!(gw.count_events("connect plain.test:80"), 1);
    let end = gw.wait_for_event_prefix("tunnel-end plain.test:80 ", WAIT);
    assert!(
        end.starts_with(&format!("tunnel-end plain.test:80 in={} ", request.len()))
            && end.ends_with(&format!(" ws={fresh} tunnel=1")),
        "{end}"
    );
    waited
}

#[test]
fn reused_websocket_cut_before_the_answer_is_redialled_with_the_same_bytes() {
    let waited = reused_websocket_failing_before_the_answer("cut");
    assert!(waited < Duration::from_secs(8), "took {waited:?}");
}

#[test]
fn reused_websocket_silent_for_the_reuse_answer_timeout_is_redialled() {
    // The relay's reuse answer timeout is the contract's 10 s (it has no
    // command-line flag), so the client waits that long, then a little.
    let waited = reused_websocket_failing_before_the_answer("silent");
    assert!(
        waited >= Duration::from_millis(9500) && waited < Duration::from_secs(30),
        "the redial came after {waited:?}, not after the 10 s reuse answer timeout"
    );
}

#[test]
fn reused_websocket_cut_after_the_answer_began_is_not_replayed_and_resets_the_client() {
    let (_pki, _origin, gw, plain, relay, ws) = pooled_then("answer-then-cut");
    let request = post(b"asked once");
    let client = relay.connect();
    (&client)
        .write_all(&[PLAIN_CONNECT, &request[..]].concat())
        .unwrap();
    let (got, err) = read_until_end(&client, Duration::from_secs(30));
    let context = format!(
        "got {:?}; relay log:\n{}\ngateway events:\n{}",
        String::from_utf8_lossy(&got),
        relay.stderr(),
        events_of(&gw).join("\n")
    );
    // The answer began, then the connection was reset: no clean end that
    // would make the partial answer look complete.
    assert!(
        got.starts_with(b"HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{context}"
    );
    let err = err.unwrap_or_else(|| panic!("a clean end of stream after a cut tunnel; {context}"));
    assert_eq!(
        err.kind(),
        io::ErrorKind::ConnectionReset,
        "{err}; {context}"
    );
    // One CONNECT for the request, on the reused WebSocket, and no replay
    // on another (nor a new WebSocket for it).
    thread::sleep(Duration::from_millis(500));
    assert!(events_of(&gw).contains(&format!("v2 reuse-fault answer-then-cut ws={ws} tunnel=2")));
    assert_eq!(gw.count_events("connect plain.test:80"), 1, "{context}");
    assert_eq!(preambles(&gw), vec![(ws, 1), (ws, 2)], "{context}");
    assert_websockets(&gw, 1);
    assert!(plain.requests().is_empty());
}

#[test]
fn rotated_ingress_token_goes_into_the_preamble_on_a_reused_websocket() {
    let scene = Rotation::start("e2e-v2-rotation-reuse", &[]);
    let (pki, gw, relay) = (&scene.pki, &scene.gw, &scene.relay);
    curl_hello(relay, pki, gw);
    let ws = preambles(gw)[0].0;
    wait_pooled(gw, relay, ws, 1);

    // Rotated while the WebSocket (opened with `Bearer token-a`) is pooled;
    // the gateway accepts only token-b in a CONNECT from now on.
    scene.rotate_to("token-b");
    curl_hello(relay, pki, gw);
    assert_eq!(
        preambles(gw),
        vec![(ws, 1), (ws, 2)],
        "the second tunnel reuses the WebSocket; events:\n{}",
        events_of(gw).join("\n")
    );
    assert_websockets(gw, 1);
    assert_eq!(
        preamble_of(gw, ws, 2),
        Some(escape(&expected_preamble(&gw.session_id, "token-b"))),
        "events:\n{}",
        events_of(gw).join("\n")
    );
    assert_eq!(gw.count_events("tunnel refused"), 0);
    scene.assert_no_token_in_log();
}

#[test]
fn bytes_written_while_the_dial_is_retried_reach_the_origin_intact() {
    let plain = RecordingOrigin::start();
    let map = plain.map_arg();
    let (pki, origin, first_gw) = setup(ServerKind::Late, &["--map", &map]);
    let relay = serve_v2(&first_gw, RelayOptions::default());
    // As in the retry test: the probe meets a first gateway, the tunnel a
    // second one on the same address that refuses two upgrades (100 ms and
    // 200 ms pauses: the dial takes 300 ms at least).
    let_the_probe_pass(&first_gw);
    let addr = first_gw.addr;
    drop(first_gw);
    let gw = gateway_at(&pki, &origin, addr, &["--refuse-first", "2", "--map", &map]);
    let body: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let request = post(&body);
    let client = relay.connect();
    // Part of the request comes with the CONNECT; the rest in pieces while
    // the relay is still dialling (from a thread: the writes may block).
    let split = 100;
    (&client)
        .write_all(&[PLAIN_CONNECT, &request[..split]].concat())
        .unwrap();
    let writer = {
        let client = client.try_clone().unwrap();
        let rest = request[split..].to_vec();
        thread::spawn(move || {
            for piece in rest.chunks(64 * 1024) {
                thread::sleep(Duration::from_millis(40));
                (&client).write_all(piece).unwrap();
            }
        })
    };
    let (got, err) = read_until_end(&client, Duration::from_secs(30));
    writer.join().unwrap();
    let context = || failure_context(&relay, &gw);
    assert_whole_answer(&got, err, &request, context);
    let upgrades = gw.count_events("upgrade refused 503 --refuse-first");
    assert_eq!(upgrades, 2, "{}", context());
    let requests = plain.requests();
    assert_eq!(requests.len(), 1, "{}", context());
    assert!(requests[0] == request, "the request arrived altered");
}
