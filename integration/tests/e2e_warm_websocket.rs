//! The warm WebSocket (the relay's own addition to the agent proxy's pool)
//! end to end: the real `ccr-relay` binary, real `curl`, the development
//! gateway playing a late-v2 server. With `--pool-idle 1` so the tests take
//! seconds: the newest pooled WebSocket carries a tunnel after an idle
//! longer than the pool's idle limit (one upgrade for both tunnels) and the
//! status page shows it held and its age; it is not used past its age
//! (`--pool-max-age`); when the gateway closes it, it is dropped and
//! nothing dials until a tunnel needs a WebSocket; a warm WebSocket that
//! died unnoticed is redialled safely (the request reaches the origin
//! once); `--keep-warm=off` restores the idle rule.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::relay::{BlindPki, RelayOptions, RelayProcess, curl_via};
use ccr_integration::{DevGateway, DevOrigin, ServerKind};

const WAIT: Duration = Duration::from_secs(10);
/// Longer than the relay's FIN grace (10 s), for events that may wait on it.
const FIN_WAIT: Duration = Duration::from_secs(15);
const URL: &str = "https://origin.test/hello";
const HELLO_BODY: &str = "hello from origin\n";
/// Makes the origin close after its answer, so the gateway's FIN follows
/// at once and the WebSocket is back in the pool before the next curl.
const CLOSE: &[&str] = &["-H", "Connection: close"];
/// The pool's idle limit in these tests (`--pool-idle`).
const POOL_IDLE: Duration = Duration::from_secs(1);

/// An HTTPS origin for `origin.test` and a late-v2 gateway mapping
/// `origin.test:443` to it, with `more` arguments.
fn setup(more: &[&str]) -> (BlindPki, DevOrigin, DevGateway) {
    let pki = BlindPki::new();
    let origin = pki.https_origin(&["origin.test"]);
    let gw = DevGateway::start(
        pki.gateway_options(false)
            .agent_proxy(ServerKind::Late)
            .map("origin.test:443", origin.addr)
            .args(more),
    );
    (pki, origin, gw)
}

/// `ccr-relay serve` (agent proxy) with `--pool-idle 1` and `more`.
fn serve(gw: &DevGateway, more: &[&str]) -> RelayProcess {
    let mut opts = RelayOptions::default()
        .agent_proxy()
        .arg("--pool-idle")
        .arg("1");
    for arg in more {
        opts = opts.arg(*arg);
    }
    RelayProcess::serve(gw, opts)
}

fn curl_hello(relay: &RelayProcess, pki: &BlindPki, gw: &DevGateway) {
    let out = curl_via(&relay.proxy_url, &pki.served_ca_pem(), URL, CLOSE);
    assert!(
        out.status.success() && out.stdout_text() == HELLO_BODY,
        "curl failed ({}): {:?}; {}",
        out.status,
        out.stderr,
        context(relay, gw)
    );
}

fn context(relay: &RelayProcess, gw: &DevGateway) -> String {
    format!(
        "status page:\n{}\nrelay log:\n{}\ngateway events:\n{}",
        status(relay),
        relay.stderr(),
        gw.events().join("\n")
    )
}

/// `(ws, tunnel)` of every `v2 preamble ws=<n> tunnel=<k> …` event.
fn preambles(gw: &DevGateway) -> Vec<(u64, u64)> {
    gw.events()
        .iter()
        .filter_map(|l| {
            let mut words = l.strip_prefix("v2 preamble ")?.split(' ');
            let ws = words.next()?.strip_prefix("ws=")?.parse().ok()?;
            let tunnel = words.next()?.strip_prefix("tunnel=")?.parse().ok()?;
            Some((ws, tunnel))
        })
        .collect()
}

/// The WebSockets that carried a tunnel.
fn tunnel_websockets(gw: &DevGateway) -> BTreeSet<u64> {
    preambles(gw).into_iter().map(|(ws, _)| ws).collect()
}

/// `upgrade ok` events: every WebSocket the relay opened (the start-up
/// probe's included).
fn upgrades(gw: &DevGateway) -> usize {
    gw.count_events("upgrade ok ")
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

/// The number after `"key":` in the pool's part of the page.
fn pool_number(page: &str, key: &str) -> Option<f64> {
    let after = &page[page.find("\"pool\"")?..];
    let name = format!("\"{key}\":");
    let after = &after[after.find(&name)? + name.len()..];
    let number: String = after
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().ok()
}

/// How many WebSockets are pooled.
fn pooled(relay: &RelayProcess) -> Option<f64> {
    pool_number(&status(relay), "idle")
}

/// The warm WebSocket's `(ageSeconds, idleSeconds)`, if one is held.
fn warm(relay: &RelayProcess) -> Option<(f64, f64)> {
    let page = status(relay);
    Some((
        pool_number(&page, "ageSeconds")?,
        pool_number(&page, "idleSeconds")?,
    ))
}

/// Polls `cond` every 50 ms for at most `bound`.
fn eventually(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// One curl, and its WebSocket back in the pool; returns that WebSocket.
fn first_tunnel_pooled(relay: &RelayProcess, pki: &BlindPki, gw: &DevGateway) -> u64 {
    curl_hello(relay, pki, gw);
    let ws = preambles(gw)[0].0;
    gw.wait_for_event_prefix(&format!("v2 fin-ack ws={ws} tunnel=1"), FIN_WAIT);
    assert!(
        eventually(WAIT, || pooled(relay).is_some_and(|n| n >= 1.0)),
        "not pooled; {}",
        context(relay, gw)
    );
    ws
}

/// Waits until the pooled WebSocket has idled well past `--pool-idle`.
fn idle_past_the_limit(relay: &RelayProcess, gw: &DevGateway) {
    let past = POOL_IDLE.as_secs_f64() * 2.5;
    assert!(
        eventually(WAIT, || warm(relay).is_some_and(|(_, idle)| idle >= past)),
        "no warm WebSocket idle for {past} s; {}",
        context(relay, gw)
    );
}

#[test]
fn a_warm_websocket_carries_the_next_tunnel_after_an_idle_past_the_limit() {
    let (pki, _origin, gw) = setup(&[]);
    let relay = serve(&gw, &[]);
    let ws = first_tunnel_pooled(&relay, &pki, &gw);
    let upgraded = upgrades(&gw);
    idle_past_the_limit(&relay, &gw);
    let (age, idle) = warm(&relay).expect("a warm WebSocket on the status page");
    assert!(age >= idle, "age {age} < idle {idle}");
    curl_hello(&relay, &pki, &gw);
    assert_eq!(
        preambles(&gw),
        vec![(ws, 1), (ws, 2)],
        "the second tunnel did not use the warm WebSocket; {}",
        context(&relay, &gw)
    );
    assert_eq!(upgrades(&gw), upgraded, "{}", context(&relay, &gw));
    assert_eq!(gw.count_events("connect origin.test:443"), 2);
}

#[test]
fn a_warm_websocket_is_not_used_past_its_max_age() {
    let (pki, _origin, gw) = setup(&[]);
    let relay = serve(&gw, &["--pool-max-age", "3"]);
    let ws = first_tunnel_pooled(&relay, &pki, &gw);
    // Kept past the idle limit, then retired at its age.
    idle_past_the_limit(&relay, &gw);
    assert!(
        eventually(WAIT, || pooled(&relay) == Some(0.0)),
        "still pooled past its max age; {}",
        context(&relay, &gw)
    );
    assert!(warm(&relay).is_none(), "{}", status(&relay));
    gw.wait_for_event_prefix(&format!("v2 ws-end ws={ws} tunnels=1 "), WAIT);
    curl_hello(&relay, &pki, &gw);
    let fresh = preambles(&gw)[1];
    assert_ne!(fresh.0, ws, "{}", context(&relay, &gw));
    assert_eq!(fresh.1, 1);
}

#[test]
fn a_warm_websocket_the_gateway_closes_is_dropped_and_not_redialled_until_needed() {
    let (pki, _origin, gw) = setup(&["--close-idle-after", "2000"]);
    let relay = serve(&gw, &["--keepalive", "0.5"]);
    let ws = first_tunnel_pooled(&relay, &pki, &gw);
    gw.wait_for_event_prefix(&format!("v2 idle-close ws={ws} "), WAIT);
    assert!(
        eventually(WAIT, || pooled(&relay) == Some(0.0)),
        "the closed WebSocket stayed pooled; {}",
        context(&relay, &gw)
    );
    assert!(warm(&relay).is_none(), "{}", status(&relay));
    // Nothing dials just to stay warm: no upgrade while no tunnel asks.
    let upgraded = upgrades(&gw);
    thread::sleep(POOL_IDLE * 3);
    assert_eq!(upgrades(&gw), upgraded, "{}", context(&relay, &gw));
    curl_hello(&relay, &pki, &gw);
    assert_eq!(upgrades(&gw), upgraded + 1, "{}", context(&relay, &gw));
    let websockets = tunnel_websockets(&gw);
    assert_eq!(websockets.len(), 2, "{}", context(&relay, &gw));
}

#[test]
fn a_warm_websocket_that_died_unnoticed_is_redialled_safely() {
    // The gateway cuts a reused WebSocket's tunnel before answering: the
    // warm one looked alive but cannot carry the tunnel.
    let (pki, _origin, gw) = setup(&["--on-reuse", "cut"]);
    let relay = serve(&gw, &[]);
    let ws = first_tunnel_pooled(&relay, &pki, &gw);
    idle_past_the_limit(&relay, &gw);
    curl_hello(&relay, &pki, &gw);
    let events = gw.events();
    assert!(
        events.contains(&format!("v2 reuse-fault cut ws={ws} tunnel=2")),
        "the warm WebSocket was not tried; {}",
        context(&relay, &gw)
    );
    let websockets = tunnel_websockets(&gw);
    assert_eq!(websockets.len(), 2, "{}", context(&relay, &gw));
    // The origin was asked once per curl: the redial replayed nothing the
    // gateway had passed on.
    assert_eq!(gw.count_events("connect origin.test:443"), 2);
}

#[test]
fn keep_warm_off_restores_the_idle_limit() {
    let (pki, _origin, gw) = setup(&[]);
    let relay = serve(&gw, &["--keep-warm=off"]);
    let ws = first_tunnel_pooled(&relay, &pki, &gw);
    let started = Instant::now();
    assert!(
        eventually(WAIT, || pooled(&relay) == Some(0.0)),
        "still pooled past the idle limit; {}",
        context(&relay, &gw)
    );
    assert!(started.elapsed() < POOL_IDLE * 3, "{:?}", started.elapsed());
    curl_hello(&relay, &pki, &gw);
    let fresh = preambles(&gw)[1];
    assert_ne!(fresh.0, ws, "{}", context(&relay, &gw));
}
