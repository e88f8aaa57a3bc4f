//! The relay under attack, through the real binaries: hostile request heads
//! never add a line to what the gateway receives; floods of idle
//! connections are answered `503` at once while real clients keep being
//! served; a first-generation tunnel ends with a close frame; a gateway
//! that stops reading never pins a tunnel whose client is gone; and many
//! tunnels, at once or one after another, leave no thread or descriptor
//! behind.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::faults::{baseline, deaf_setup, eventually, reset};
use ccr_integration::relay::{
    ESTABLISHED, RelayOptions, RelayProcess, curl_via, duplex_echo, read_head,
};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions};

const WAIT: Duration = Duration::from_secs(10);

/// A relay in front of a development gateway mapping `origin.test:80` to a
/// plain development origin.
fn setup(relay_opts: RelayOptions) -> (DevOrigin, DevGateway, RelayProcess) {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let relay = RelayProcess::serve(&gw, relay_opts);
    (origin, gw, relay)
}

/// Sends `request` (a write error ignored: the relay may answer and close
/// first), then reads until the relay closes or 10 s pass.
fn exchange(relay: &RelayProcess, request: &[u8]) -> Vec<u8> {
    let mut s = relay.connect();
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `request` and reads the answer: a tunnel's `200` head alone (the
/// tunnel is dropped), else everything until the relay closes.
fn answer(relay: &RelayProcess, request: &[u8]) -> Vec<u8> {
    let mut s = relay.connect();
    let _ = s.write_all(request);
    let Ok(mut got) = read_head(&mut s) else {
        return Vec::new();
    };
    if got != ESTABLISHED {
        let _ = s.read_to_end(&mut got);
    }
    got
}

// ---------------------------------------------------------------------------
// Header injection
// ---------------------------------------------------------------------------

/// CONNECT targets the relay accepts, with the authority it must send on.
const ACCEPTED: &[(&str, &str)] = &[
    ("origin.test:80", "origin.test:80"),
    ("ORIGIN.Test:80", "origin.test:80"),
    ("origin.test:080", "origin.test:80"),
    ("a_b-c.test:443", "a_b-c.test:443"),
    // Not loopback: the relay dials loopback itself (tests/loopback.rs).
    ("192.0.2.1:9", "192.0.2.1:9"),
    ("[2001:db8::1]:9", "[2001:db8::1]:9"),
    ("[2001:DB8:0:0:0:0:0:1]:9", "[2001:db8::1]:9"),
    ("[::FFFF:127.0.0.1]:9", "[::ffff:127.0.0.1]:9"),
];

/// CONNECT targets (raw bytes, hostile ones included) the relay refuses.
const REFUSED: &[&[u8]] = &[
    b"origin.test",
    b"origin.test:0",
    b"origin.test:65536",
    b"origin.test:",
    b"user@origin.test:80",
    b"user:pw@origin.test:80",
    b"origin%2Etest:80",
    b"origin.test%0d%0aX-Evil:%201:80",
    b"origin.test:80%0d%0a",
    b"origin.test:80%00",
    b"[::1",
    b"[::1]x:80",
    b"[fe80::1%25eth0]:80",
    b"-bad.test:80",
    b"origin..test:80",
    b"http://origin.test:80",
    b"origin.test:80/path",
    b"origin.test\r\nX-Evil: 1\r\n:80",
    b"origin.test:80\r\nX-Evil: 1",
    b"origin.test\n:80",
    b"origin.test\r:80",
    b"origin.test\0:80",
    b"origin.test :80",
    b"origin.test\t:80",
    b"origin.test:80\x7f",
    b"orig\xc3\xa9n.test:80",
];

/// Header lines a client may add; the relay must forward none of them.
const DECORATIONS: &[&[u8]] = &[
    b"",
    b"Host: origin.test:80\r\n",
    b"Proxy-Authorization: Basic ZXZpbDpldmls\r\n",
    b"X-Agent-Proxy-Client-Process: evil\r\n",
    b"X-Evil: a\rb\r\n",
    b"X-Evil: a\0b\r\n",
    b"Host: x\r\n Folded: continuation\r\n",
    b"X-Pct: %0d%0aX-Evil: 1\r\n",
    b"X-Utf8: \xc3\xa9\r\n",
    b"X-Evil: 1\r\n\r\nCONNECT evil.test:1 HTTP/1.1\r\n",
];

/// One hostile head: request line with `target`, `decoration`, blank
/// line; bare LF line ends when `lf`.
fn hostile_head(target: &[u8], decoration: &[u8], lf: bool) -> Vec<u8> {
    let mut head = b"CONNECT ".to_vec();
    head.extend_from_slice(target);
    head.extend_from_slice(b" HTTP/1.1\r\n");
    head.extend_from_slice(decoration);
    head.extend_from_slice(b"\r\n");
    if lf {
        // Only the line ends this code wrote become bare LFs.
        let text = String::from_utf8_lossy(&head).into_owned();
        if text.as_bytes() == head.as_slice() {
            head = text.replace("\r\n", "\n").into_bytes();
        }
    }
    head
}

/// An escaped preamble with the client process's value (v2) blanked:
/// the lookup may time out on a loaded machine. The value is still one
/// field on one line.
fn without_process(escaped: &str) -> String {
    const NAME: &str = "X-Agent-Proxy-Client-Process: ";
    let Some(start) = escaped.find(NAME).map(|i| i + NAME.len()) else {
        return escaped.to_string();
    };
    let len = escaped[start..]
        .find(r"\r\n")
        .expect("the field ends its line");
    format!("{}*{}", &escaped[..start], &escaped[start + len..])
}

/// The gateway's view of every accepted head is the relay's canonical
/// preamble (`lines` lines: the CONNECT line with the canonical authority,
/// the credentials, v2's client process) and nothing else; every refused
/// head is the relay's own 400 without a WebSocket.
fn hostile_heads_add_no_line(agent: bool) {
    let origin = DevOrigin::start(None);
    let mut gw_opts = GatewayOptions::default().map("origin.test:80", origin.addr);
    let mut relay_opts = RelayOptions::default();
    if agent {
        gw_opts = gw_opts.agent_proxy(ccr_integration::ServerKind::Late);
        relay_opts = relay_opts.agent_proxy();
    }
    let gw = DevGateway::start(gw_opts);
    let relay = RelayProcess::serve(&gw, relay_opts);
    let prefix = if agent { "v2 preamble" } else { "first-chunk " };
    // The gateway's view of one accepted head, as escaped data.
    let preambles = || -> Vec<String> {
        gw.events()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l[l.find('"').unwrap_or(0)..].to_string())
            .collect()
    };
    // A benign CONNECT gives the lines after the first, which no client
    // input may change.
    let got = answer(&relay, b"CONNECT origin.test:80 HTTP/1.1\r\n\r\n");
    assert_eq!(got, ESTABLISHED, "{}", String::from_utf8_lossy(&got));
    assert!(eventually(WAIT, || preambles().len() == 1));
    let first = preambles().remove(0);
    let tail = first
        .strip_prefix(r#""CONNECT origin.test:80 HTTP/1.1\r\n"#)
        .unwrap_or_else(|| panic!("unexpected preamble {first}"))
        .to_string();
    let lines = if agent { 3 } else { 2 };
    assert_eq!(
        tail.matches(r"\r\n").count(),
        lines,
        "preamble lines: {first}"
    );
    assert!(tail.ends_with(r#"\r\n\r\n""#), "{first}");

    let mut accepted = 1;
    let mut refused = 0;
    let mut cases: Vec<(Vec<u8>, Option<&str>)> = Vec::new();
    for decoration in DECORATIONS {
        for lf in [false, true] {
            for (target, canonical) in ACCEPTED {
                cases.push((
                    hostile_head(target.as_bytes(), decoration, lf),
                    Some(canonical),
                ));
            }
            for target in REFUSED {
                cases.push((hostile_head(target, decoration, lf), None));
            }
        }
    }
    assert!(cases.len() >= 300, "{} cases", cases.len());
    for (head, canonical) in &cases {
        let shown = String::from_utf8_lossy(head).escape_debug().to_string();
        let got = answer(&relay, head);
        let text = String::from_utf8_lossy(&got);
        if text.contains("\r\n\r\nccr-relay: ") {
            // The relay's own answer: only for a target it must refuse,
            // or a header line no HTTP parser may take.
            assert!(
                text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{shown}: {text}"
            );
            let hostile_header = head.contains(&0)
                || head.windows(2).any(|w| w == b"\rb")
                || head.windows(2).any(|w| w == b"\n ");
            assert!(
                canonical.is_none() || hostile_header,
                "{shown}: refused a good target: {text}"
            );
            refused += 1;
            continue;
        }
        let canonical = canonical.unwrap_or_else(|| panic!("{shown}: accepted: {text}"));
        accepted += 1;
        assert!(
            eventually(WAIT, || preambles().len() >= accepted),
            "{shown}: the gateway saw no preamble"
        );
        // Exactly the canonical preamble (anything after the head is
        // tunnel data, in a message of its own). On v2 the client
        // process's name may be a lookup's placeholder under load.
        let want = format!("\"CONNECT {canonical} HTTP/1.1\\r\\n{tail}");
        let seen = preambles().remove(accepted - 1);
        assert_eq!(
            without_process(&seen),
            without_process(&want),
            "{shown}: the gateway's view"
        );
    }
    assert!(
        refused >= REFUSED.len() * DECORATIONS.len(),
        "{refused} refused"
    );
    assert_eq!(preambles().len(), accepted, "preambles at the gateway");
    // Refused heads never reached the gateway: one WebSocket per accepted
    // head, and the start-up probe.
    let upgrades = gw.count_events("upgrade ok");
    if agent {
        assert!(
            upgrades <= accepted + 1,
            "{upgrades} upgrades, {accepted} accepted"
        );
    } else {
        assert_eq!(upgrades, accepted + 1, "upgrades");
    }
}

#[test]
fn hostile_heads_add_no_line_to_the_first_generation_preamble() {
    hostile_heads_add_no_line(false);
}

#[test]
fn hostile_heads_add_no_line_to_the_v2_preamble() {
    hostile_heads_add_no_line(true);
}

// ---------------------------------------------------------------------------
// Connection limits
// ---------------------------------------------------------------------------

/// Reads what arrived within `wait`, without waiting for a close.
fn read_within(s: &mut TcpStream, wait: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

fn is_503(got: &[u8]) -> bool {
    got.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n")
}

#[test]
fn idle_flood_is_answered_503_at_once_while_a_real_connect_succeeds() {
    const LIMIT: usize = 16;
    const FLOOD: usize = 120;
    let (_origin, gw, relay) = setup(
        RelayOptions::default()
            .arg("--max-pending-heads")
            .arg(LIMIT.to_string()),
    );
    let (threads_before, _) = baseline(&relay);
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..FLOOD).map(|_| relay.connect()).collect();
    // Every connection beyond the limit made an older one give way: those
    // got 503 at once (far sooner than the 10 s head timeout), the newest
    // LIMIT are still open and unanswered.
    let answers: Vec<Vec<u8>> = idle[..FLOOD - LIMIT]
        .iter_mut()
        .map(|s| read_within(s, Duration::from_secs(5)))
        .collect();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let refused = answers.iter().filter(|a| is_503(a)).count();
    assert_eq!(refused, FLOOD - LIMIT, "503 answers");
    assert!(
        idle[FLOOD - LIMIT..]
            .iter_mut()
            .all(|s| read_within(s, Duration::from_millis(100)).is_empty()),
        "the newest connections wait for their head"
    );
    let text = String::from_utf8_lossy(&answers[0]);
    assert!(text.contains("--max-pending-heads"), "{text}");
    let (threads_flooded, _) = relay.threads_and_fds();
    assert!(
        threads_flooded <= threads_before + LIMIT + 2,
        "{threads_flooded} threads during the flood, {threads_before} before"
    );

    // During the flood (the newest LIMIT idle connections still held, and
    // more coming), a real client is served. The client starts only once
    // the flood has made twice the limit of new connections, and the flood
    // goes on until the client is done, however fast this machine is.
    let flooding = Arc::new(AtomicBool::new(true));
    let opened = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (flooding, opened) = (Arc::clone(&flooding), Arc::clone(&opened));
        let addr = relay.proxy_addr;
        thread::spawn(move || {
            let mut held = Vec::new();
            while flooding.load(Ordering::SeqCst) {
                if let Ok(s) = TcpStream::connect(addr) {
                    held.push(s);
                    opened.store(held.len(), Ordering::SeqCst);
                }
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    assert!(
        eventually(WAIT, || opened.load(Ordering::SeqCst) >= 2 * LIMIT),
        "the flood made only {} connections",
        opened.load(Ordering::SeqCst)
    );
    let out = curl_via(
        &relay.proxy_url,
        &relay.dir.join("ca-bundle.crt"),
        "http://origin.test/hello",
        &["--proxytunnel"],
    );
    let tunnel = relay.connect_tunnel("origin.test:80");
    duplex_echo(tunnel, 64 * 1024);
    let during = opened.load(Ordering::SeqCst);
    flooding.store(false, Ordering::SeqCst);
    flood.join().expect("the flood thread");
    out.assert_success();
    assert_eq!(out.stdout_text(), "hello from origin\n");
    assert!(during >= 2 * LIMIT, "{during} flood connections");
    assert!(gw.count_events("connect origin.test:80") >= 2);
}

#[test]
fn connections_over_the_total_limit_get_503_at_once() {
    const LIMIT: usize = 6;
    let (_origin, _gw, relay) = setup(
        RelayOptions::default()
            .arg("--max-connections")
            .arg(LIMIT.to_string()),
    );
    // LIMIT open tunnels fill the relay.
    let tunnels: Vec<TcpStream> = (0..LIMIT)
        .map(|_| relay.connect_tunnel("origin.test:80"))
        .collect();
    let started = Instant::now();
    let got = exchange(&relay, b"CONNECT origin.test:80 HTTP/1.1\r\n\r\n");
    assert!(is_503(&got), "{}", String::from_utf8_lossy(&got));
    assert!(String::from_utf8_lossy(&got).contains("--max-connections"));
    assert!(started.elapsed() < Duration::from_secs(3));
    // The tunnels within the limit still carry bytes; once one closes, a
    // new client is served again.
    let mut tunnels = tunnels.into_iter();
    duplex_echo(tunnels.next().unwrap(), 256 * 1024);
    assert!(eventually(WAIT, || {
        answer(&relay, b"CONNECT origin.test:80 HTTP/1.1\r\n\r\n") == ESTABLISHED
    }));
}

// ---------------------------------------------------------------------------
// Close means close
// ---------------------------------------------------------------------------

#[test]
fn a_tunnel_whose_client_closed_ends_with_a_close_frame() {
    // A target that accepts and then just holds its connection: only the
    // relay's side can end the tunnel.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let holder_addr = holder.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = Arc::clone(&held);
        thread::spawn(move || {
            for conn in holder.incoming().flatten() {
                held.lock().unwrap().push(conn);
            }
        });
    }
    let gw = DevGateway::start(GatewayOptions::default().map("holder.test:80", holder_addr));
    let relay = RelayProcess::serve(&gw, RelayOptions::default());
    let mut client = relay.connect_tunnel("holder.test:80");
    client.write_all(b"bytes, then EOF").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    // After the linger (2 s), the relay closes the WebSocket with a close
    // frame; the gateway logs how the WebSocket ended.
    let end = gw.wait_for_event(WAIT, |l| l.starts_with("tunnel-end holder.test:80 "));
    assert!(
        end.contains("end=relay_closed_the_websocket"),
        "the gateway saw no close frame: {end}"
    );
    // And the client's connection is closed too.
    assert!(read_within(&mut client, WAIT).is_empty());
}

// ---------------------------------------------------------------------------
// A gateway that stops reading
// ---------------------------------------------------------------------------

/// Writes to `s` until the relay stops taking bytes (everything between
/// here and the deaf gateway full); the bytes written.
fn fill(s: &mut TcpStream) -> usize {
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let block = vec![0x5Au8; 64 * 1024];
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match s.write(&block) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    sent
}

#[test]
fn a_deaf_gateway_never_pins_a_tunnel_whose_client_reset() {
    // The stall bound is far away: only the client's reset may end it.
    let (_gw, deaf, relay) = deaf_setup(&["--upload-stall", "600"]);
    let (threads_before, fds_before) = baseline(&relay);
    let mut client = relay.connect_tunnel("deaf.test:443");
    let sent = fill(&mut client);
    assert!(sent > 64 * 1024, "only {sent} bytes went in");
    let (threads_busy, _) = relay.threads_and_fds();
    assert!(
        threads_busy >= threads_before + 2,
        "{threads_busy} vs {threads_before}"
    );
    let reset_at = Instant::now();
    reset(client);
    assert!(
        eventually(Duration::from_secs(8), || relay.threads_and_fds().0
            <= threads_before),
        "the tunnel's threads are still there: {:?} (before {threads_before})",
        relay.threads_and_fds()
    );
    let gone_after = reset_at.elapsed();
    assert!(gone_after < Duration::from_secs(8), "{gone_after:?}");
    assert!(
        eventually(WAIT, || relay.threads_and_fds().1 <= fds_before),
        "descriptors: {:?}, before {fds_before}",
        relay.threads_and_fds()
    );
    // The relay keeps serving.
    let _other = relay.connect_tunnel("deaf.test:443");
    assert!(
        eventually(WAIT, || deaf.answered() == 2),
        "{} answered",
        deaf.answered()
    );
}

#[test]
fn a_deaf_gateway_ends_the_tunnel_at_the_upload_stall_bound() {
    let (_gw, _deaf, relay) = deaf_setup(&["--upload-stall", "1"]);
    let (threads_before, _) = baseline(&relay);
    let mut client = relay.connect_tunnel("deaf.test:443");
    let started = Instant::now();
    fill(&mut client);
    // The client stays; the stall bound ends the tunnel and closes it.
    let mut buf = [0u8; 16];
    client.set_read_timeout(Some(WAIT)).unwrap();
    let ended = matches!(client.read(&mut buf), Ok(0) | Err(_));
    assert!(ended);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    relay.wait_for_log(WAIT, |l| {
        l.contains("tunnel deaf.test:443 closed") && l.contains("stall")
    });
    assert!(eventually(WAIT, || relay.threads_and_fds().0 <= threads_before));
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

#[test]
fn concurrent_and_sequential_tunnels_leave_nothing_behind() {
    const CONCURRENT: usize = 200;
    const SEQUENTIAL: usize = 2000;
    const LEN: u64 = 1 << 20;
    let (_origin, gw, relay) = setup(RelayOptions::default().rust_log("warn"));
    let (threads_before, fds_before) = baseline(&relay);

    let proxy = relay.proxy_addr;
    let open = |addr: SocketAddr| -> io::Result<TcpStream> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(b"CONNECT origin.test:80 HTTP/1.1\r\n\r\n")?;
        let head = read_head(&mut s)?;
        if head != ESTABLISHED {
            return Err(io::Error::other(
                String::from_utf8_lossy(&head).into_owned(),
            ));
        }
        Ok(s)
    };
    let workers: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || duplex_echo(open(proxy).expect("open a tunnel"), LEN))
                .unwrap()
        })
        .collect();
    let failures = workers
        .into_iter()
        .map(|w| w.join())
        .filter(Result::is_err)
        .count();
    assert_eq!(failures, 0, "tunnels failed under load");

    for i in 0..SEQUENTIAL {
        let mut s = open(proxy).unwrap_or_else(|e| panic!("tunnel {i}: {e}"));
        write!(
            s,
            "GET /hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        assert!(answer.ends_with(b"hello from origin\n"), "tunnel {i}");
    }
    // Back to the baseline once the lingers are over.
    let settled = eventually(Duration::from_secs(15), || {
        let (threads, fds) = relay.threads_and_fds();
        threads <= threads_before + 1 && fds <= fds_before + 2
    });
    assert!(
        settled,
        "threads and descriptors now {:?}, before ({threads_before}, {fds_before})",
        relay.threads_and_fds()
    );
    // Every tunnel reached the origin and ended there cleanly.
    let ends = || gw.count_events("tunnel-end origin.test:80 ");
    assert!(
        eventually(WAIT, || ends() == CONCURRENT + SEQUENTIAL),
        "{} tunnel ends at the gateway",
        ends()
    );
}
