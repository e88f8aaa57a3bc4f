//! Row h of `ccr-bench`: connect-to-200 after an agent's pause. An agent
//! runs its commands seconds to minutes apart, longer than the pool's
//! 10 s idle limit; the relay keeps its newest pooled WebSocket warm past
//! that limit, so the next command's first tunnel should cost one round
//! trip (the CONNECT and its answer), not a fresh dial. Each measured
//! tunnel comes after `idle` of silence, through the delay shim, to a
//! late-v2 gateway over `ws://` and `wss://`; the row gives p50, p99 and
//! the upgrades the measured tunnels cost.

use std::thread;
use std::time::{Duration, Instant};

use super::agent::{POOL_PAUSE, Shim, TARGET, finish, percentile, wait_count};
use super::{Row, info, judged, open_tunnel_to, progress};
use crate::relay::{BlindPki, RelayOptions, RelayProcess};
use crate::{DevGateway, DevOrigin, ServerKind};

/// What one scheme measured.
struct Measured {
    /// Connect-to-200 of the measured tunnels, sorted.
    times: Vec<Duration>,
    /// Upgrades the gateway accepted during the measured tunnels.
    upgrades: usize,
}

/// Rows h: `n` tunnels per scheme, each after `idle`, `delay` each way.
pub(super) fn rows(n: usize, idle: Duration, delay: Duration) -> Vec<Row> {
    let pki = BlindPki::new();
    let origin = DevOrigin::start(None);
    let rtt_ms = (delay * 2).as_secs_f64() * 1e3;
    let mut rows = Vec::new();
    for tls in [false, true] {
        let scheme = if tls { "wss://" } else { "ws://" };
        let label = format!(
            "h. {scheme} after {} s idle (late v2, warm WebSocket)",
            idle.as_secs_f64()
        );
        progress(&format!(
            "h. {n} tunnels, {label}, {} ms each way",
            delay.as_millis()
        ));
        let m = match super::catch(|| measure(&pki, &origin, tls, n, idle, delay)) {
            Ok(m) => m,
            Err(why) => {
                rows.push(super::failed(label, &why));
                continue;
            }
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let fig = |d: Duration| format!("{:.1} ms = {:.2} RTT", ms(d), ms(d) / rtt_ms);
        let p50 = percentile(&m.times, 0.50);
        rows.push(judged(
            format!("{label}: connect-to-200 p50, {n} tunnels, RTT {rtt_ms:.0} ms"),
            fig(p50),
            "<= 1.25 RTT",
            ms(p50) <= 1.25 * rtt_ms,
        ));
        rows.push(info(
            format!("{label}: connect-to-200 p99"),
            fig(percentile(&m.times, 0.99)),
        ));
        rows.push(judged(
            format!("{label}: upgrades for the {n} tunnels"),
            m.upgrades.to_string(),
            "0",
            m.upgrades == 0,
        ));
    }
    rows
}

/// One scheme on its own gateway, shim and relay (the relay's defaults:
/// a 10 s idle limit, the warm WebSocket on).
fn measure(
    pki: &BlindPki,
    origin: &DevOrigin,
    tls: bool,
    n: usize,
    idle: Duration,
    delay: Duration,
) -> Measured {
    let gw = DevGateway::start(
        pki.gateway_options(tls)
            .agent_proxy(ServerKind::Late)
            .map(TARGET, origin.addr),
    );
    let shim = Shim::start(gw.addr, delay);
    let scheme = if tls { "https" } else { "http" };
    let relay = RelayProcess::serve(
        &gw,
        RelayOptions {
            rust_log: None,
            base_url: Some(format!("{scheme}://{}", shim.addr)),
            gateway_ca: tls.then(|| pki.gateway_tls_ca_pem()),
            ..RelayOptions::default()
        }
        .agent_proxy(),
    );
    // Warm-up: the first tunnel dials; its WebSocket goes to the pool.
    let s = open_tunnel_to(relay.proxy_addr, TARGET).expect("the first tunnel");
    finish(s).expect("the first tunnel's request");
    let mut fin_acks = 1;
    wait_count(&gw, "v2 fin-ack ws=", fin_acks);
    thread::sleep(POOL_PAUSE);
    let upgrades_before = gw.count_events("upgrade ok ");
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        thread::sleep(idle);
        let started = Instant::now();
        let s =
            open_tunnel_to(relay.proxy_addr, TARGET).unwrap_or_else(|e| panic!("tunnel {i}: {e}"));
        times.push(started.elapsed());
        finish(s).unwrap_or_else(|e| panic!("tunnel {i}'s request: {e}"));
        fin_acks += 1;
        wait_count(&gw, "v2 fin-ack ws=", fin_acks);
    }
    times.sort();
    Measured {
        times,
        upgrades: gw.count_events("upgrade ok ") - upgrades_before,
    }
}
