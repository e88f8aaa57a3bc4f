//! The answers the relay gives itself (docs/PROTOCOL.md section 5's error
//! table), each through the real binary with the exact status line; and
//! the other half of the rule: once a gateway byte reached the client, the
//! relay never writes bytes of its own, it only closes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::pattern::PatternChecker;
use ccr_integration::pki::TestCa;
use ccr_integration::relay::{
    BlindPki, ESTABLISHED, RelayOptions, RelayProcess, read_head, read_response,
};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, temp_dir};

const WAIT: Duration = Duration::from_secs(10);

/// Upper bound for an answer the relay owes after a 0.5 s timeout (or at
/// once): far below the 10 s defaults it would take were the option
/// ignored, with room for a loaded machine.
const PROMPT: Duration = Duration::from_secs(5);

/// A relay in front of a plain gateway that maps `origin.test:80`.
fn setup(
    gw_opts: GatewayOptions,
    relay_opts: RelayOptions,
) -> (DevOrigin, DevGateway, RelayProcess) {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(gw_opts.map("origin.test:80", origin.addr));
    let relay = RelayProcess::serve(&gw, relay_opts);
    (origin, gw, relay)
}

/// Sends `request` (errors writing it ignored: the relay may answer and
/// close before taking it all), then reads until the relay closes.
fn exchange(relay: &RelayProcess, request: &[u8]) -> (Vec<u8>, Duration) {
    let mut s = relay.connect();
    let started = Instant::now();
    let _ = s.write_all(request);
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        // A reset after the answer is still an answer; a timeout is not.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !got.is_empty() => {}
        Err(e) => panic!(
            "no close from the relay ({e}); got {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
    (got, started.elapsed())
}

/// Checks the answer's status line and that it is a whole, closing response.
fn assert_answer(got: &[u8], status_line: &str) {
    let text = String::from_utf8_lossy(got);
    assert!(
        text.starts_with(&format!("{status_line}\r\n")),
        "expected {status_line:?}, got {text:?}"
    );
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
    assert!(
        head.to_ascii_lowercase().contains("\r\nconnection: close"),
        "{head}"
    );
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Content-Length");
    assert_eq!(
        body.len(),
        len,
        "exactly the body, then the close: {text:?}"
    );
    // The relay's own style: plain UTF-8 text, the problem on one line,
    // where to look on the next.
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-type: text/plain; charset=utf-8"),
        "{head}"
    );
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "{body:?}");
    assert!(lines[0].starts_with("ccr-relay: "), "{body:?}");
    assert_eq!(
        lines[1],
        "GET /__agentproxy/status on this port shows the proxy's state and recent failures."
    );
}

#[test]
fn malformed_request_line_is_400() {
    let (_o, gw, relay) = setup(GatewayOptions::default(), RelayOptions::default());
    let (got, _) = exchange(&relay, b"HELLO THERE\r\n\r\n");
    assert_answer(&got, "HTTP/1.1 400 Bad Request");
    let (got, _) = exchange(&relay, b"CONNECT origin.test:80 HTTP/2.0\r\n\r\n");
    assert_answer(&got, "HTTP/1.1 400 Bad Request");
    assert_eq!(tunnel_upgrades(&gw), 0, "nothing reached the gateway");
}

#[test]
fn origin_form_request_is_400() {
    let (_o, gw, relay) = setup(GatewayOptions::default(), RelayOptions::default());
    let (got, _) = exchange(&relay, b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n");
    assert_answer(&got, "HTTP/1.1 400 Bad Request");
    assert_eq!(tunnel_upgrades(&gw), 0);
}

#[test]
fn unproxied_method_is_405() {
    let (_o, gw, relay) = setup(GatewayOptions::default(), RelayOptions::default());
    let (got, _) = exchange(
        &relay,
        b"BREW http://pot.test/ HTTP/1.1\r\nHost: pot.test\r\n\r\n",
    );
    assert_answer(&got, "HTTP/1.1 405 Method Not Allowed");
    let (got, _) = exchange(&relay, b"TRACE http://origin.test/ HTTP/1.1\r\n\r\n");
    assert_answer(&got, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(tunnel_upgrades(&gw), 0);
}

#[test]
fn head_over_8_kib_is_431() {
    let (_o, gw, relay) = setup(GatewayOptions::default(), RelayOptions::default());
    let mut request = b"CONNECT origin.test:80 HTTP/1.1\r\nX-Filler: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 9000));
    request.extend_from_slice(b"\r\n\r\n");
    let (got, _) = exchange(&relay, &request);
    assert_answer(&got, "HTTP/1.1 431 Request Header Fields Too Large");
    // Just under the bound is fine.
    let mut request = b"CONNECT origin.test:80 HTTP/1.1\r\nX-Filler: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 8000));
    request.extend_from_slice(b"\r\n\r\n");
    let mut s = relay.connect();
    s.write_all(&request).unwrap();
    assert_eq!(read_head(&mut s).unwrap(), ESTABLISHED);
    assert_eq!(gw.count_events("connect origin.test:80"), 1);
}

#[test]
fn incomplete_head_is_408_after_the_head_timeout() {
    let (_o, gw, relay) = setup(
        GatewayOptions::default(),
        RelayOptions::default().arg("--head-timeout").arg("0.5"),
    );
    let (got, took) = exchange(&relay, b"CONNECT origin.test:80 HTTP/1.1\r\nHost: orig");
    assert_answer(&got, "HTTP/1.1 408 Request Timeout");
    assert!(
        took >= Duration::from_millis(450) && took < PROMPT,
        "answered after {took:?} with --head-timeout 0.5"
    );
    assert_eq!(tunnel_upgrades(&gw), 0);
}

#[test]
fn gateway_unreachable_is_502() {
    let (_o, mut gw, relay) = setup(GatewayOptions::default(), RelayOptions::default());
    // Started while the gateway was there (the CA fetch), now it is gone.
    gw.child.child.kill().unwrap();
    gw.child.child.wait().unwrap();
    let (got, took) = exchange(&relay, b"CONNECT origin.test:80 HTTP/1.1\r\n\r\n");
    assert_answer(&got, "HTTP/1.1 502 Bad Gateway");
    assert!(took < PROMPT, "{took:?}");
}

#[test]
fn upgrade_refused_is_502() {
    let (_o, gw, relay) = setup(
        GatewayOptions {
            refuse_upgrade: Some(503),
            ..GatewayOptions::default()
        },
        RelayOptions::default(),
    );
    let (got, _) = exchange(&relay, b"CONNECT origin.test:80 HTTP/1.1\r\n\r\n");
    assert_answer(&got, "HTTP/1.1 502 Bad Gateway");
    gw.wait_for_event_prefix("upgrade refused 503", WAIT);
}

#[test]
fn upgrade_not_finished_is_504_after_the_upgrade_timeout() {
    let (_o, gw, relay) = setup(
        GatewayOptions {
            stall_upgrade: true,
            ..GatewayOptions::default()
        },
        RelayOptions::default().arg("--upgrade-timeout").arg("0.5"),
    );
    let (got, took) = exchange(&relay, b"CONNECT origin.test:80 HTTP/1.1\r\n\r\n");
    assert_answer(&got, "HTTP/1.1 504 Gateway Timeout");
    assert!(
        took >= Duration::from_millis(450) && took < PROMPT,
        "answered after {took:?} with --upgrade-timeout 0.5"
    );
    gw.wait_for_event_prefix("upgrade stalled", WAIT);
}

/// A TCP forwarder on loopback whose destination can be switched: new
/// connections go wherever it points at the time.
struct Forwarder {
    addr: SocketAddr,
    to: Arc<Mutex<SocketAddr>>,
}

impl Forwarder {
    fn start(to: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let to = Arc::new(Mutex::new(to));
        let dest = Arc::clone(&to);
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let target = *dest.lock().unwrap();
                thread::spawn(move || {
                    let Ok(server) = TcpStream::connect(target) else {
                        return;
                    };
                    let (mut c2, mut s2) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let up = thread::spawn(move || {
                        let _ = io::copy(&mut c2, &mut s2);
                        let _ = s2.shutdown(Shutdown::Write);
                    });
                    let (mut s, mut c) = (server, client);
                    let _ = io::copy(&mut s, &mut c);
                    let _ = c.shutdown(Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        Forwarder { addr, to }
    }

    fn point_at(&self, to: SocketAddr) {
        *self.to.lock().unwrap() = to;
    }
}

/// Through the binary: the relay starts against a `wss://` gateway it
/// trusts (`--gateway-ca`), reached through a forwarder; then the
/// forwarder sends new connections to a gateway whose certificate comes
/// from a CA the relay does not trust. The next CONNECT fails in the TLS
/// handshake: `502`.
#[test]
fn tls_failure_to_the_gateway_is_502() {
    let pki = BlindPki::new();
    let origin = DevOrigin::start(None);
    let trusted = DevGateway::start(pki.gateway_options(true).map("origin.test:80", origin.addr));
    let other_ca_dir = temp_dir("untrusted-ca");
    let other_ca = TestCa::new(other_ca_dir.path()).unwrap();
    let untrusted = DevGateway::start(GatewayOptions {
        tls: Some(other_ca.issue_leaf(&["gateway.test"])),
        ..GatewayOptions::default().map("origin.test:80", origin.addr)
    });
    let forwarder = Forwarder::start(trusted.addr);
    let opts = RelayOptions {
        base_url: Some(format!("https://{}", forwarder.addr)),
        ..RelayOptions::default().gateway_ca(&pki.gateway_tls_ca_pem())
    };
    let relay = RelayProcess::serve(&trusted, opts);
    // Control: through the trusted gateway a tunnel works.
    let mut ok = relay.connect_tunnel("origin.test:80");
    ok.write_all(b"GET /hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut ok).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    drop(ok);

    forwarder.point_at(untrusted.addr);
    let (got, took) = exchange(&relay, b"CONNECT origin.test:80 HTTP/1.1\r\n\r\n");
    assert_answer(&got, "HTTP/1.1 502 Bad Gateway");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        untrusted.count_events("upgrade"),
        0,
        "the handshake failed first"
    );
    let log = relay.wait_for_log(WAIT, |l| l.contains("TLS to the gateway failed"));
    assert!(log[0].contains("origin.test:80"), "{log:?}");
}

/// Opens a tunnel to a slow download, reads `upto` bytes of body (0: only
/// the gateway's `200`), kills the gateway, reads on until the relay closes.
/// Everything after the `200` must be the origin's head and a valid prefix
/// of the pattern: nothing the relay made up.
fn kill_gateway_mid_stream(upto: u64) {
    const LEN: u64 = 64 << 20;
    let origin = DevOrigin::start(None);
    let mut gw = DevGateway::start(GatewayOptions::default().map("bulk.test:80", origin.addr));
    let relay = RelayProcess::serve(&gw, RelayOptions::default());
    let mut client = relay.connect_tunnel("bulk.test:80");
    let mut checker = PatternChecker::new();
    let mut origin_head = None;
    if upto > 0 {
        write!(
            client,
            "GET /slow/{LEN}?rate=4000000 HTTP/1.1\r\nHost: bulk.test\r\n\r\n"
        )
        .unwrap();
        origin_head = Some(read_head(&mut client).unwrap());
        let mut buf = vec![0u8; 64 * 1024];
        while checker.seen() < upto {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0, "download ended at {}", checker.seen());
            checker.feed(&buf[..n]);
        }
    } else {
        gw.wait_for_event_prefix("connect bulk.test:80", WAIT);
    }
    gw.child.child.kill().unwrap();
    gw.child.child.wait().unwrap();
    let killed = Instant::now();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    let ended = client.read_to_end(&mut rest);
    let took = killed.elapsed();
    match &ended {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the relay did not close the client ({e}) within {WAIT:?}"),
    }
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    if let Some(head) = origin_head {
        assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
        checker.feed(&rest);
        assert!(
            checker.seen() < LEN,
            "the whole download arrived: the gateway was not killed mid-stream"
        );
        checker.verify(checker.seen()).unwrap_or_else(|e| {
            let tail = &rest[rest.len().saturating_sub(200)..];
            panic!(
                "bytes after the kill are not the pattern ({e}); last bytes: {:?}",
                String::from_utf8_lossy(tail)
            )
        });
    } else {
        assert!(
            rest.is_empty(),
            "after the gateway's 200 the relay wrote {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

#[test]
fn gateway_killed_mid_download_closes_without_injected_bytes() {
    kill_gateway_mid_stream(1 << 20);
}

#[test]
fn gateway_killed_after_its_200_closes_without_injected_bytes() {
    kill_gateway_mid_stream(0);
}

#[test]
fn trickled_head_still_times_out_at_the_head_timeout() {
    let (_o, gw, relay) = setup(
        GatewayOptions::default(),
        RelayOptions::default().arg("--head-timeout").arg("0.5"),
    );
    let mut s = relay.connect();
    let started = Instant::now();
    let mut request = b"CONNECT origin.test:80 HTTP/1.1\r\nX-Slow: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 300));
    let writer = {
        let mut s = s.try_clone().unwrap();
        thread::spawn(move || {
            // One byte every 50 ms: always progress, never done (the
            // trickle lasts 17 s and never ends its head).
            for b in request {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let took = started.elapsed();
    assert_answer(&got, "HTTP/1.1 408 Request Timeout");
    assert!(
        took < PROMPT,
        "a trickling client held the relay for {took:?} with --head-timeout 0.5"
    );
    let _ = writer.join();
    assert_eq!(tunnel_upgrades(&gw), 0);
}

#[test]
fn stalled_tls_handshake_to_the_gateway_is_504() {
    let pki = BlindPki::new();
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(pki.gateway_options(true).map("origin.test:80", origin.addr));
    let forwarder = Forwarder::start(gw.addr);
    let opts = RelayOptions {
        base_url: Some(format!("https://{}", forwarder.addr)),
        ..RelayOptions::default()
            .gateway_ca(&pki.gateway_tls_ca_pem())
            .arg("--upgrade-timeout")
            .arg("0.5")
    };
    let relay = RelayProcess::serve(&gw, opts);
    // A "gateway" that accepts TCP (the kernel completes connections in
    // the backlog) and never says a word, not even in TLS.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    forwarder.point_at(silent_addr);
    let (got, took) = exchange(&relay, b"CONNECT origin.test:80 HTTP/1.1\r\n\r\n");
    assert_answer(&got, "HTTP/1.1 504 Gateway Timeout");
    assert!(
        took >= Duration::from_millis(450) && took < PROMPT,
        "answered after {took:?} with --upgrade-timeout 0.5"
    );
    drop(silent);
}

#[test]
fn gateway_refusal_inside_the_tunnel_reaches_the_client_unchanged() {
    let (_o, gw, relay) = setup(GatewayOptions::default(), RelayOptions::default());
    // The gateway upgrades, then answers the CONNECT for an unmapped host
    // with its own 502 head inside the tunnel and closes.
    let (got, _) = exchange(&relay, b"CONNECT unmapped.test:443 HTTP/1.1\r\n\r\n");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "HTTP/1.1 502 Bad Gateway\r\n\r\n",
        "the gateway's bytes, nothing added"
    );
    gw.wait_for_event_prefix("tunnel refused 502", WAIT);
}

/// A CONNECT head of exactly `len` bytes, blank line included.
fn connect_head_of(len: usize) -> Vec<u8> {
    let start = b"CONNECT origin.test:80 HTTP/1.1\r\nX-Filler: ".to_vec();
    let fill = len - start.len() - 4;
    let mut head = start;
    head.extend(std::iter::repeat_n(b'a', fill));
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), len);
    head
}

#[test]
fn head_of_exactly_8_kib_is_accepted_and_one_byte_more_is_431() {
    let (_o, gw, relay) = setup(GatewayOptions::default(), RelayOptions::default());
    let mut s = relay.connect();
    s.write_all(&connect_head_of(8192)).unwrap();
    let head = read_head(&mut s).unwrap();
    assert_eq!(
        head,
        ESTABLISHED,
        "an 8192-byte head: {:?}",
        String::from_utf8_lossy(&head)
    );
    let (got, _) = exchange(&relay, &connect_head_of(8193));
    assert_answer(&got, "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(gw.count_events("connect origin.test:80"), 1);
}

#[test]
fn gateway_closing_a_tunnel_at_once_is_a_502_in_the_relay_style() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    // The relay fetches its CA through the forwarder from the real gateway.
    let forwarder = Forwarder::start(gw.addr);
    let opts = RelayOptions {
        base_url: Some(format!("http://{}", forwarder.addr)),
        ..RelayOptions::default()
    };
    let relay = RelayProcess::serve(&gw, opts);
    // A "gateway" that finishes the WebSocket upgrade, then closes it
    // without a byte of data.
    let closer = TcpListener::bind("127.0.0.1:0").unwrap();
    let closer_addr = closer.local_addr().unwrap();
    thread::spawn(move || {
        for conn in closer.incoming() {
            let Ok(conn) = conn else { return };
            if let Ok(mut ws) = tungstenite::accept(conn) {
                let _ = ws.close(None);
                let _ = ws.flush();
                // Let the close frame go out before the socket does.
                let _ = ws.read();
            }
        }
    });
    forwarder.point_at(closer_addr);
    let (got, _) = exchange(&relay, b"CONNECT origin.test:80 HTTP/1.1\r\n\r\n");
    assert_answer(&got, "HTTP/1.1 502 Bad Gateway");
    assert!(
        String::from_utf8_lossy(&got).contains("gateway closed the tunnel at once"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// Upgrades the gateway saw beyond the relay's start-up probe (one
/// WebSocket opened and closed before `serve` wrote its env file).
fn tunnel_upgrades(gw: &DevGateway) -> usize {
    gw.count_events("upgrade ok").saturating_sub(1)
}
