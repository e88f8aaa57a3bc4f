//! The agent proxy's figures for `ccr-bench` (rows e and f): connect-to-200
//! latency with a real round trip between the relay and the gateway (the
//! delay shim in between), on a fresh WebSocket per tunnel and on a reused
//! (pooled) one, over `ws://` and `wss://`; and the relay's resident memory
//! per idle WebSocket in its pool.
//!
//! Every tunnel goes to a plain HTTP origin, sends `GET /hello` with
//! `Connection: close` and reads the answer to its end: the origin closes,
//! so a late-v2 gateway sends FIN, the relay answers FIN_ACK and pools the
//! WebSocket, and the next tunnel reuses it. "Fresh" rows use a gateway
//! playing an early-v2 server (`--server early`), which never acknowledges
//! v2, so nothing is pooled and every tunnel dials its own WebSocket.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

use super::{Row, info, judged, median, open_tunnel_to, progress, vm_rss_kib};
use crate::relay::{BlindPki, RelayOptions, RelayProcess, read_response};
use crate::temp::temp_dir;
use crate::{ChildGuard, DevGateway, DevOrigin, ServerKind, bin_path};

/// The CONNECT target: the plain HTTP origin, as the gateway maps it.
pub(super) const TARGET: &str = "origin.test:80";
/// The request every tunnel carries: the origin closes after answering.
const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n";
/// The same without `Connection: close`: the origin keeps the connection,
/// so no FIN comes and the client closes first.
const REQUEST_KEEP: &[u8] = b"GET /hello HTTP/1.1\r\nHost: origin.test\r\n\r\n";
/// Bound on every wait for the gateway or the relay.
pub(super) const WAIT: Duration = Duration::from_secs(15);
/// Pause after the gateway saw FIN_ACK, for the relay to pool the socket.
pub(super) const POOL_PAUSE: Duration = Duration::from_millis(50);
/// The pool's capacity (the contract's).
const POOL_MAX: usize = 4;

/// A running `ccr-delay-shim` in front of `target`; killed on drop.
pub(super) struct Shim {
    pub(super) addr: SocketAddr,
    _child: ChildGuard,
    _dir: crate::TempDir,
}

impl Shim {
    pub(super) fn start(target: SocketAddr, delay: Duration) -> Shim {
        let dir = temp_dir("delay-shim");
        let mut cmd = Command::new(bin_path("ccr-delay-shim"));
        cmd.arg("--target")
            .arg(target.to_string())
            .arg("--delay-ms")
            .arg(delay.as_millis().to_string());
        let (child, addr) = ChildGuard::spawn_listening(cmd, dir.join("stderr.log"));
        Shim {
            addr,
            _child: child,
            _dir: dir,
        }
    }
}

/// One latency case: which scheme, and whether tunnels reuse a WebSocket.
#[derive(Clone, Copy)]
struct Case {
    tls: bool,
    reuse: bool,
    /// The gateway offers TLS 1.2 at most (`--tls-max 1.2`): the fresh
    /// `wss://` figure as it was before the gateway offered 1.3.
    tls12: bool,
}

impl Case {
    fn scheme(self) -> &'static str {
        match (self.tls, self.tls12) {
            (false, _) => "ws://",
            (true, false) => "wss://",
            (true, true) => "wss:// (TLS 1.2)",
        }
    }
}

/// What one case measured.
struct Measured {
    /// Connect-to-200 of the measured tunnels, sorted.
    times: Vec<Duration>,
    /// The warm-up tunnel's (the first, always on a fresh WebSocket).
    first: Duration,
    /// Upgrades the gateway accepted during the measured tunnels.
    upgrades: usize,
    /// WebSockets that carried the measured tunnels (`v2 preamble` events).
    websockets: usize,
}

/// Rows e: the four latency cases, `n` tunnels each, `delay` each way.
pub(super) fn latency_rows(n: usize, delay: Duration) -> Vec<Row> {
    let pki = BlindPki::new();
    let origin = DevOrigin::start(None);
    let rtt = delay * 2;
    let rtt_ms = rtt.as_secs_f64() * 1e3;
    let mut rows = Vec::new();
    let tls_version = catch_row(
        &mut rows,
        "e. TLS version the wss:// gateway negotiates",
        || {
            let gw = DevGateway::start(pki.gateway_options(true));
            tls_version(gw.addr, &pki.gateway_tls_ca_pem())
        },
    );
    // TLS 1.3: one round trip; 1.2 (or unknown): two.
    let tls_rtts = match tls_version.as_deref() {
        Some("TLSv1.3") => 1,
        _ => 2,
    };
    if let Some(v) = &tls_version {
        rows.push(info(
            "e. TLS version the wss:// gateway negotiates (this OpenSSL's defaults)",
            v.clone(),
        ));
    }
    let case = |tls, reuse, tls12| Case { tls, reuse, tls12 };
    for case in [
        case(false, true, false),
        case(false, false, false),
        case(true, true, false),
        case(true, false, false),
        case(true, false, true),
    ] {
        // TLS 1.3: one round trip; 1.2 (or unknown): two.
        let tls_rtts = if case.tls12 { 2 } else { tls_rtts };
        let label = format!(
            "e. {} {}",
            case.scheme(),
            if case.reuse {
                "reused WebSocket (late v2, pooled)"
            } else {
                "fresh WebSocket (gateway --server early: nothing pooled)"
            }
        );
        progress(&format!(
            "e. {n} sequential tunnels, {label}, {} ms each way",
            delay.as_millis()
        ));
        let m = match super::catch(|| measure_case(&pki, &origin, case, n, delay)) {
            Ok(m) => m,
            Err(why) => {
                rows.push(super::failed(label, &why));
                continue;
            }
        };
        // The round trips the shim imposes: it delays bytes, not TCP's
        // handshake (the relay connects to the local shim at once, the shim
        // to the local gateway), so TCP's round trip is not among them.
        let shim_rtts = match (case.reuse, case.tls) {
            (true, _) => 1,
            (false, false) => 2,
            (false, true) => tls_rtts + 2,
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let fig = |d: Duration, rtts: u32| {
            format!(
                "{:.1} ms = {:.2} RTT ({:+.1} ms over the shim's {rtts})",
                ms(d),
                ms(d) / rtt_ms,
                ms(d) - f64::from(rtts) * rtt_ms
            )
        };
        let p50 = percentile(&m.times, 0.50);
        let p99 = percentile(&m.times, 0.99);
        let (target_rtts, why) = if case.reuse {
            (1.25, "1.25 RTT".to_string())
        } else if case.tls {
            let t = 1 + tls_rtts + 1 + 1;
            (
                t as f64,
                format!("{t} RTT (TCP 1 + TLS {tls_rtts} + upgrade 1 + CONNECT 1)"),
            )
        } else {
            (3.0, "3 RTT (TCP 1 + upgrade 1 + CONNECT 1)".to_string())
        };
        rows.push(judged(
            format!("{label}: connect-to-200 p50, {n} tunnels, RTT {rtt_ms:.0} ms"),
            fig(p50, shim_rtts),
            &format!("<= {why}"),
            ms(p50) <= target_rtts * rtt_ms,
        ));
        rows.push(info(
            format!("{label}: connect-to-200 p99"),
            fig(p99, shim_rtts),
        ));
        if case.reuse {
            rows.push(judged(
                format!("{label}: WebSockets carrying the {n} tunnels"),
                format!("{} (new upgrades: {})", m.websockets, m.upgrades),
                "1",
                m.websockets == 1 && m.upgrades == 0,
            ));
            rows.push(info(
                format!("{label}: first tunnel (fresh WebSocket, HELLO_ACK), one sample"),
                fig(m.first, if case.tls { tls_rtts + 2 } else { 2 }),
            ));
        } else {
            rows.push(judged(
                format!("{label}: WebSockets (upgrades) for the {n} tunnels"),
                m.upgrades.to_string(),
                &n.to_string(),
                m.upgrades == n,
            ));
        }
    }
    rows
}

/// Runs `f`; on a panic pushes a failed row and returns `None`.
fn catch_row<T>(rows: &mut Vec<Row>, what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match super::catch(f) {
        Ok(v) => Some(v),
        Err(why) => {
            rows.push(super::failed(what, &why));
            None
        }
    }
}

/// The `p` quantile of sorted `times` (nearest rank).
pub(super) fn percentile(times: &[Duration], p: f64) -> Duration {
    let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len().max(1)) - 1;
    times.get(i).copied().unwrap_or_default()
}

/// The TLS version a default OpenSSL client negotiates with the gateway
/// at `addr` (the relay's native-tls uses the same library and defaults).
fn tls_version(addr: SocketAddr, ca: &Path) -> String {
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("TLS client");
    b.set_ca_file(ca).expect("load the gateway's CA");
    // Only the version is wanted here; the relay verifies for real.
    b.set_verify(SslVerifyMode::NONE);
    let tcp = TcpStream::connect(addr).expect("connect to the wss:// gateway");
    tcp.set_read_timeout(Some(WAIT))
        .expect("set a read timeout");
    let tls = b
        .build()
        .configure()
        .expect("TLS configuration")
        .verify_hostname(false)
        .connect("gateway.test", tcp)
        .unwrap_or_else(|e| panic!("TLS handshake with the gateway: {e}"));
    tls.ssl().version_str().to_string()
}

/// One latency case on its own gateway, shim and relay.
fn measure_case(
    pki: &BlindPki,
    origin: &DevOrigin,
    case: Case,
    n: usize,
    delay: Duration,
) -> Measured {
    let server = if case.reuse {
        ServerKind::Late
    } else {
        ServerKind::Early
    };
    let mut options = pki.gateway_options(case.tls).agent_proxy(server);
    if case.tls12 {
        options = options.args(&["--tls-max", "1.2"]);
    }
    let gw = DevGateway::start(options.map(TARGET, origin.addr));
    let shim = Shim::start(gw.addr, delay);
    let scheme = if case.tls { "https" } else { "http" };
    let relay = RelayProcess::serve(
        &gw,
        RelayOptions {
            rust_log: None,
            base_url: Some(format!("{scheme}://{}", shim.addr)),
            gateway_ca: case.tls.then(|| pki.gateway_tls_ca_pem()),
            ..RelayOptions::default()
        }
        .agent_proxy(),
    );
    // Warm-up: the first tunnel (fresh in every case; on a late gateway
    // it leaves the WebSocket in the pool).
    let started = Instant::now();
    let s = open_tunnel_to(relay.proxy_addr, TARGET).expect("the first tunnel");
    let first = started.elapsed();
    finish(s).expect("the first tunnel's request");
    let mut fin_acks = 0;
    if case.reuse {
        fin_acks += 1;
        wait_count(&gw, "v2 fin-ack ws=", fin_acks);
        thread::sleep(POOL_PAUSE);
    }
    let upgrades_before = gw.count_events("upgrade ok ");
    let preambles_before = gw.count_events("v2 preamble ");
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let s =
            open_tunnel_to(relay.proxy_addr, TARGET).unwrap_or_else(|e| panic!("tunnel {i}: {e}"));
        times.push(started.elapsed());
        finish(s).unwrap_or_else(|e| panic!("tunnel {i}'s request: {e}"));
        if case.reuse {
            // Back in the pool before the next: the gateway saw FIN_ACK.
            fin_acks += 1;
            wait_count(&gw, "v2 fin-ack ws=", fin_acks);
            thread::sleep(POOL_PAUSE);
        }
    }
    times.sort();
    let websockets: BTreeSet<String> = gw
        .events()
        .iter()
        .filter(|l| l.starts_with("v2 preamble "))
        .skip(preambles_before)
        .filter_map(|l| l.split(' ').nth(2).map(str::to_string))
        .collect();
    Measured {
        times,
        first,
        upgrades: gw.count_events("upgrade ok ") - upgrades_before,
        websockets: websockets.len(),
    }
}

/// Over an open tunnel: the request with `Connection: close`, its whole
/// answer, then the end of the stream (the relay ends the client's side
/// after the gateway's FIN, or when the WebSocket closes).
pub(super) fn finish(mut s: TcpStream) -> io::Result<()> {
    s.set_read_timeout(Some(WAIT))?;
    s.write_all(REQUEST)?;
    let (head, _) = read_response(&mut s)?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("the origin answered {head:?}")));
    }
    let mut rest = [0u8; 256];
    loop {
        match s.read(&mut rest) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Waits (bounded) until the gateway logged `want` events starting with `prefix`.
pub(super) fn wait_count(gw: &DevGateway, prefix: &str, want: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let have = gw.count_events(prefix);
        if have >= want {
            return;
        }
        if Instant::now() > deadline {
            panic!("{have} `{prefix}` gateway events after {WAIT:?}, expected {want}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Rows f: a fresh relay per round; `VmRSS` with [`POOL_MAX`] idle
/// WebSockets pooled against the same relay just before, when it had run
/// the same [`POOL_MAX`] concurrent tunnels but kept none. Per pooled
/// WebSocket: the difference over [`POOL_MAX`]; the median of `rounds`.
pub(super) fn pooled_memory_rows(rounds: usize) -> Vec<Row> {
    let origin = DevOrigin::start(None);
    // No shim: memory does not depend on the round trip. The gateway
    // closes a WebSocket idle 1.5 s between tunnels, so the pool empties
    // by itself after each measurement.
    let gw = DevGateway::start(
        crate::GatewayOptions::default()
            .agent_proxy(ServerKind::Late)
            .map(TARGET, origin.addr)
            .args(&["--close-idle-after", "1500"]),
    );
    let mut per = Vec::new();
    let (mut base, mut pooled, mut retired) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        progress(&format!(
            "f. round {round}/{rounds}: {POOL_MAX} WebSockets into a fresh relay's pool"
        ));
        let r = memory_round(&gw);
        per.push((r.pooled as f64 - r.base as f64) / POOL_MAX as f64);
        base.push(r.base as f64);
        pooled.push(r.pooled as f64);
        retired.push(r.retired as f64);
    }
    let med = |v: &[f64]| median(v).unwrap_or(0.0);
    let lo = per.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = per.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let p = med(&per);
    vec![
        info(
            format!(
                "f. relay RSS: {POOL_MAX} tunnels done, none pooled / {POOL_MAX} pooled / after the gateway closed them (medians of {rounds})"
            ),
            format!(
                "{:.0} / {:.0} / {:.0} KiB",
                med(&base),
                med(&pooled),
                med(&retired)
            ),
        ),
        judged(
            format!("f. RSS per pooled idle WebSocket (median of {rounds} fresh relays)"),
            format!("{p:.1} KiB ({lo:.1} to {hi:.1})"),
            "<= 64 KiB",
            p <= 64.0,
        ),
    ]
}

/// `VmRSS` at the three moments of one memory round, KiB.
struct MemoryRound {
    base: u64,
    pooled: u64,
    retired: u64,
}

fn memory_round(gw: &DevGateway) -> MemoryRound {
    // A FIN grace of 0.2 s: a tunnel the client ends first (no FIN) gives
    // its WebSocket up quickly.
    let relay = RelayProcess::serve(
        gw,
        RelayOptions {
            rust_log: None,
            ..RelayOptions::default()
        }
        .agent_proxy()
        .arg("--fin-grace")
        .arg("0.2"),
    );
    let pid = relay.pid();
    // The baseline: the same concurrent tunnels, ended by the client
    // first, so the relay ran as many threads and WebSockets but pools
    // none of them.
    let ends = gw.count_events("v2 ws-end ");
    concurrent_tunnels(relay.proxy_addr, false);
    wait_count(gw, "v2 ws-end ", ends + POOL_MAX);
    thread::sleep(Duration::from_millis(300));
    let base = vm_rss_kib(pid);

    let (upgrades, fin_acks) = (
        gw.count_events("upgrade ok "),
        gw.count_events("v2 fin-ack ws="),
    );
    let (ends, idle_closes) = (
        gw.count_events("v2 ws-end "),
        gw.count_events("v2 idle-close "),
    );
    concurrent_tunnels(relay.proxy_addr, true);
    wait_count(gw, "v2 fin-ack ws=", fin_acks + POOL_MAX);
    thread::sleep(Duration::from_millis(150));
    let pooled = vm_rss_kib(pid);
    // They were all fresh, and all still pooled when measured.
    let new_upgrades = gw.count_events("upgrade ok ") - upgrades;
    if new_upgrades != POOL_MAX
        || gw.count_events("v2 ws-end ") != ends
        || gw.count_events("v2 idle-close ") != idle_closes
    {
        panic!(
            "the pool did not hold {POOL_MAX} fresh WebSockets when measured ({new_upgrades} upgrades)"
        );
    }
    wait_count(gw, "v2 idle-close ", idle_closes + POOL_MAX);
    thread::sleep(Duration::from_millis(500));
    let retired = vm_rss_kib(pid);
    MemoryRound {
        base,
        pooled,
        retired,
    }
}

/// [`POOL_MAX`] tunnels open at once (each has its `200` before any goes
/// on), each carrying one `GET /hello`; with `fin` the origin closes (the
/// gateway's FIN ends the tunnel, which pools its WebSocket), without it
/// the client closes first.
fn concurrent_tunnels(relay: SocketAddr, fin: bool) {
    let all_open = Barrier::new(POOL_MAX);
    thread::scope(|s| {
        let handles: Vec<_> = (0..POOL_MAX)
            .map(|_| {
                s.spawn(|| -> io::Result<()> {
                    let t = open_tunnel_to(relay, TARGET);
                    all_open.wait();
                    let t = t?;
                    if fin {
                        finish(t)
                    } else {
                        let mut t = t;
                        t.set_read_timeout(Some(WAIT))?;
                        t.write_all(REQUEST_KEEP)?;
                        read_response(&mut t).map(drop)
                    }
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("concurrent tunnel {i}: {e}"),
                Err(_) => panic!("concurrent tunnel {i} panicked"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_the_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let times: Vec<Duration> = (1..=200).map(ms).collect();
        assert_eq!(percentile(&times, 0.50), ms(100));
        assert_eq!(percentile(&times, 0.99), ms(198));
        assert_eq!(percentile(&[ms(7)], 0.99), ms(7));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
