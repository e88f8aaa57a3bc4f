//! The development gateway on its own: a hand-written WebSocket client
//! (not the relay) checks the CA endpoint, the upgrade's checks, the
//! CONNECT inside the tunnel, refusals, misbehaviour on demand, and a
//! tunnel over `wss://` with a certificate from a test CA.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ccr_integration::events::escape;
use ccr_integration::pattern::{self, PatternChecker};
use ccr_integration::pki::TestCa;
use ccr_integration::stream::GatewayStream;
use ccr_integration::wire::{self as chunk, base64};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, temp_dir};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::{Bytes, Message, WebSocket};

const WAIT: Duration = Duration::from_secs(10);

/// Opens a TCP (and, for a TLS gateway, TLS) connection to the gateway.
fn connect_stream(gw: &DevGateway) -> GatewayStream {
    let tcp = TcpStream::connect(gw.addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    if !gw.tls {
        return GatewayStream::Plain(tcp);
    }
    let ca = std::fs::read(gw_test_ca_path(gw)).unwrap();
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    GatewayStream::Tls(Box::new(connector.connect("127.0.0.1", tcp).unwrap()))
}

/// The CA that signed a TLS gateway's certificate: the tests below keep it
/// in the gateway's temp dir as `server-ca.pem`.
fn gw_test_ca_path(gw: &DevGateway) -> std::path::PathBuf {
    gw.dir.join("server-ca.pem")
}

/// Upgrades with exactly these extra headers; `Err(status)` if refused.
fn upgrade(gw: &DevGateway, headers: &[(&str, &str)]) -> Result<WebSocket<GatewayStream>, u16> {
    let mut request = gw.ws_url().into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    match tungstenite::client::client(request, connect_stream(gw)) {
        Ok((ws, response)) => {
            assert_eq!(response.status(), 101);
            Ok(ws)
        }
        Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

/// Upgrades with the right credentials.
fn open(gw: &DevGateway) -> WebSocket<GatewayStream> {
    let bearer = format!("Bearer {}", gw.token);
    upgrade(
        gw,
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/proto"),
        ],
    )
    .expect("upgrade with good credentials")
}

/// The CONNECT head the relay would send.
fn connect_head(gw: &DevGateway, target: &str) -> Vec<u8> {
    let basic = base64(format!("{}:{}", gw.session_id, gw.token).as_bytes());
    format!("CONNECT {target} HTTP/1.1\r\nProxy-Authorization: Basic {basic}\r\n\r\n").into_bytes()
}

fn send_chunk(ws: &mut WebSocket<GatewayStream>, data: &[u8]) {
    ws.send(Message::Binary(Bytes::from(chunk::encode(data))))
        .unwrap();
}

/// The next chunk carrying data, or `None` once the gateway closed.
fn read_data(ws: &mut WebSocket<GatewayStream>) -> Option<Vec<u8>> {
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => {
                let data = chunk::decode(&b).expect("gateway sends well-formed chunks");
                assert!(data.len() <= 256 * 1024, "chunk of {} bytes", data.len());
                if !data.is_empty() {
                    return Some(data.to_vec());
                }
            }
            Ok(Message::Close(_)) => {}
            Ok(Message::Text(t)) => panic!("gateway sent a text frame: {t}"),
            Ok(_) => {}
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ),
            ) => {
                return None;
            }
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return None;
            }
            Err(e) => panic!("reading from the gateway: {e}"),
        }
    }
}

/// Everything the gateway sends until it closes.
fn read_all(ws: &mut WebSocket<GatewayStream>) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(data) = read_data(ws) {
        all.extend(data);
    }
    all
}

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// Reads an HTTP response on a plain connection: (head, body) with the
/// body read to EOF.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    split_response(&all)
}

fn split_response(all: &[u8]) -> (String, Vec<u8>) {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole response head")
        + 4;
    (
        String::from_utf8_lossy(&all[..end]).into_owned(),
        all[end..].to_vec(),
    )
}

#[test]
fn ca_endpoint_serves_the_gateway_certificate() {
    let gw = DevGateway::start(GatewayOptions::default());
    let (head, body) = http_get(gw.addr, "/v1/code/upstreamproxy/ca-cert");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Content-Type: application/x-pem-file\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", body.len())),
        "{head}"
    );
    let cert = openssl::x509::X509::from_pem(&body).expect("a PEM certificate");
    assert_eq!(body, std::fs::read(&gw.ca_pem_path).unwrap());
    let cn = cert
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .unwrap();
    assert_eq!(cn.data().to_string().unwrap(), "ccr dev gateway CA");

    let (head, _) = http_get(gw.addr, "/v1/elsewhere");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
}

#[test]
fn upgrade_needs_bearer_token_and_proto_content_type() {
    let gw = DevGateway::start(GatewayOptions::default());
    let bearer = format!("Bearer {}", gw.token);
    let proto = ("Content-Type", "application/proto");
    assert_eq!(upgrade(&gw, &[proto]).err(), Some(401));
    assert_eq!(
        upgrade(&gw, &[("Authorization", "Bearer wrong"), proto]).err(),
        Some(401)
    );
    assert_eq!(upgrade(&gw, &[("Authorization", &bearer)]).err(), Some(415));
    assert_eq!(
        upgrade(
            &gw,
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json")
            ]
        )
        .err(),
        Some(415)
    );
    let mut ws = upgrade(&gw, &[("Authorization", &bearer), proto]).expect("101");
    ws.close(None).unwrap();

    gw.wait_for_event_prefix("upgrade ok", WAIT);
    let events = gw.events();
    assert_eq!(
        events
            .iter()
            .filter(|l| l.starts_with("upgrade refused 401 "))
            .count(),
        2,
        "{events:?}"
    );
    assert_eq!(gw.count_events("upgrade refused 415 "), 2, "{events:?}");
    assert!(
        !events.iter().any(|l| l.contains(&gw.token)),
        "the token never appears in events: {events:?}"
    );
}

#[test]
fn tunnel_to_a_mapped_origin_carries_http() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let mut ws = open(&gw);
    let head = connect_head(&gw, "origin.test:80");
    send_chunk(&mut ws, &head);
    assert_eq!(read_data(&mut ws).unwrap(), ESTABLISHED);
    send_chunk(
        &mut ws,
        b"GET /hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n",
    );
    let (resp_head, body) = split_response(&read_all(&mut ws));
    assert!(resp_head.starts_with("HTTP/1.1 200 OK\r\n"), "{resp_head}");
    assert_eq!(body, b"hello from origin\n");

    assert_eq!(
        gw.wait_for_event_prefix("first-chunk ", WAIT),
        format!("first-chunk {}", escape(&head))
    );
    gw.wait_for_event(WAIT, |l| l == "connect origin.test:80");
    let end = gw.wait_for_event_prefix("tunnel-end origin.test:80 ", WAIT);
    assert!(end.contains(" in=61 "), "{end}");
    assert!(
        end.contains(&format!(" out={} ", 18 + resp_head.len())),
        "{end}"
    );
}

#[test]
fn tunnel_moves_large_bodies_byte_exact_and_sees_keepalives_and_pongs() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions {
        ping_every: Some(Duration::from_millis(100)),
        ..GatewayOptions::default().map("origin.test:80", origin.addr)
    });
    let mut ws = open(&gw);
    send_chunk(&mut ws, &connect_head(&gw, "origin.test:80"));
    assert_eq!(read_data(&mut ws).unwrap(), ESTABLISHED);

    // A keepalive from our side, then a ping answered while we wait.
    ws.send(Message::Binary(Bytes::from(chunk::keepalive())))
        .unwrap();
    gw.wait_for_event(WAIT, |l| l == "keepalive");
    ws.get_ref()
        .tcp()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Reading is what answers pings: read (only pings come) for a while.
    let mut pings = 0;
    while pings < 2 {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected only pings, got {other:?}"),
        }
    }
    ws.get_ref().tcp().set_read_timeout(Some(WAIT)).unwrap();
    gw.wait_for_event(WAIT, |l| l == "pong-received");
    assert!(gw.count_events("ping-sent") >= 1);

    // Upload 8 MiB of the pattern; the origin answers its digest.
    let len: u64 = 8 << 20;
    let head = format!("POST /sha256 HTTP/1.1\r\nHost: o\r\nContent-Length: {len}\r\n\r\n");
    send_chunk(&mut ws, head.as_bytes());
    let src = pattern::PatternSource::new(512 * 1024);
    let mut sent = 0;
    while sent < len {
        let n = (len - sent).min(300_000);
        send_chunk(&mut ws, src.slice(sent, n as usize));
        sent += n;
    }
    let mut got = Vec::new();
    while !got.ends_with(b"\n") || !got.windows(4).any(|w| w == b"\r\n\r\n") {
        got.extend(read_data(&mut ws).expect("an answer"));
    }
    let (_, body) = split_response(&got);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("len={len} sha256={}\n", pattern::sha256_hex(len))
    );

    // Download 16 MiB and check every byte.
    let len: u64 = 16 << 20;
    send_chunk(
        &mut ws,
        format!("GET /bytes/{len} HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut head = Vec::new();
    let mut check = PatternChecker::new();
    while let Some(data) = read_data(&mut ws) {
        if let Some(end) = head_end(&head, &data) {
            check.feed(&data[end..]);
            head.push(b'!');
        } else if head.ends_with(b"!") {
            check.feed(&data);
        } else {
            head.extend(data);
        }
    }
    check.verify(len).unwrap();
    gw.wait_for_event_prefix("tunnel-end origin.test:80 ", WAIT);
}

/// Where the body starts in `data` if the head (collected in `head`, which
/// ends with `!` once past it) ends inside it.
fn head_end(head: &[u8], data: &[u8]) -> Option<usize> {
    if head.ends_with(b"!") {
        return None;
    }
    let mut all = head.to_vec();
    all.extend_from_slice(data);
    let end = all.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some(end - head.len())
}

#[test]
fn wrong_or_missing_proxy_authorization_gets_407() {
    let gw = DevGateway::start(GatewayOptions::default());
    for head in [
        "CONNECT 127.0.0.1:9 HTTP/1.1\r\nProxy-Authorization: Basic d3Jvbmc6d3Jvbmc=\r\n\r\n",
        "CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n",
    ] {
        let mut ws = open(&gw);
        send_chunk(&mut ws, head.as_bytes());
        assert_eq!(
            read_all(&mut ws),
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"
        );
    }
    gw.wait_for_event(WAIT, |l| l == "tunnel refused 407 no Proxy-Authorization");
    assert_eq!(gw.count_events("tunnel refused 407 "), 2);
    assert_eq!(gw.count_events("connect "), 0);
}

#[test]
fn unmapped_or_unreachable_targets_get_502() {
    let gw = DevGateway::start(GatewayOptions::default());
    // A port nobody listens on: bind, note it, close.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for target in [
        "unmapped.test:443".to_string(),
        "192.0.2.1:443".to_string(),
        format!("127.0.0.1:{closed_port}"),
    ] {
        let mut ws = open(&gw);
        send_chunk(&mut ws, &connect_head(&gw, &target));
        assert_eq!(
            read_all(&mut ws),
            b"HTTP/1.1 502 Bad Gateway\r\n\r\n",
            "{target}"
        );
    }
    assert_eq!(gw.count_events("tunnel refused 502 "), 3);
}

#[test]
fn malformed_tunnels_are_refused_and_the_gateway_keeps_serving() {
    let gw = DevGateway::start(GatewayOptions::default());
    // Not a CONNECT head, a bare-LF head, a text frame, a bad chunk.
    let mut ws = open(&gw);
    send_chunk(&mut ws, b"GET / HTTP/1.1\r\n\r\n");
    assert!(read_all(&mut ws).starts_with(b"HTTP/1.1 405 "));
    let mut ws = open(&gw);
    send_chunk(&mut ws, b"CONNECT a.test:1 HTTP/1.1\n\n");
    assert!(read_all(&mut ws).starts_with(b"HTTP/1.1 400 "));
    let mut ws = open(&gw);
    ws.send(Message::Text("CONNECT".into())).unwrap();
    assert!(read_all(&mut ws).starts_with(b"HTTP/1.1 400 "));
    let mut ws = open(&gw);
    ws.send(Message::Binary(Bytes::from_static(&[0x12, 0x01, 0x00])))
        .unwrap();
    assert!(read_all(&mut ws).starts_with(b"HTTP/1.1 400 "));
    // Garbage instead of HTTP, and a head that never ends.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"\x16\x03\x01 not http\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 400 "), "{answer:?}");
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let _ = s.write_all(&vec![b'a'; 64 * 1024]);
    drop(s);
    // Still serving.
    let (head, _) = http_get(gw.addr, "/v1/code/upstreamproxy/ca-cert");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(gw.count_events("tunnel refused 400 "), 3);
}

#[test]
fn stalled_upgrade_is_never_answered_but_the_ca_still_is() {
    let gw = DevGateway::start(GatewayOptions {
        stall_upgrade: true,
        ..GatewayOptions::default()
    });
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    write!(
        s,
        "GET /v1/code/upstreamproxy/ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/proto\r\n\r\n",
        gw.addr, gw.token
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a stalled upgrade answered: {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(1900));
    gw.wait_for_event(WAIT, |l| l == "upgrade stalled");
    let (head, _) = http_get(gw.addr, "/v1/code/upstreamproxy/ca-cert");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
}

#[test]
fn refused_upgrade_answers_with_the_status_asked_for() {
    let gw = DevGateway::start(GatewayOptions {
        refuse_upgrade: Some(503),
        ..GatewayOptions::default()
    });
    let bearer = format!("Bearer {}", gw.token);
    assert_eq!(
        upgrade(
            &gw,
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/proto")
            ]
        )
        .err(),
        Some(503)
    );
    gw.wait_for_event_prefix("upgrade refused 503 ", WAIT);
}

#[test]
fn wss_gateway_with_a_test_ca_certificate() {
    let certs = temp_dir("wss-certs");
    let ca = TestCa::new(certs.path()).unwrap();
    let (cert, key) = ca.issue_leaf(&["gateway.test"]);
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions {
        tls: Some((cert, key)),
        ..GatewayOptions::default().map("origin.test:8080", origin.addr)
    });
    std::fs::copy(ca.cert_path(), gw_test_ca_path(&gw)).unwrap();
    assert!(gw.base_url().starts_with("https://127.0.0.1:"));

    // The CA endpoint over https.
    let mut tls = connect_stream(&gw);
    tls.write_all(b"GET /v1/code/upstreamproxy/ca-cert HTTP/1.1\r\nHost: g\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let _ = tls.read_to_end(&mut all);
    let (head, body) = split_response(&all);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, std::fs::read(&gw.ca_pem_path).unwrap());

    // A tunnel whose first chunk also carries the request (as a relay
    // sends a ClientHello that came with the CONNECT).
    let mut ws = open(&gw);
    let mut first = connect_head(&gw, "origin.test:8080");
    first.extend_from_slice(b"GET /hello HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n");
    send_chunk(&mut ws, &first);
    let all = read_all(&mut ws);
    assert!(
        all.starts_with(ESTABLISHED),
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    let (head, body) = split_response(&all[ESTABLISHED.len()..]);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, b"hello from origin\n");
    gw.wait_for_event_prefix("tunnel-end origin.test:8080 in=51 ", WAIT);
}

#[test]
fn sigterm_stops_the_gateway_promptly_even_with_an_open_tunnel() {
    let origin = DevOrigin::start(None);
    let mut gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let mut ws = open(&gw);
    send_chunk(&mut ws, &connect_head(&gw, "origin.test:80"));
    assert_eq!(read_data(&mut ws).unwrap(), ESTABLISHED);
    assert!(gw.child.terminate(Duration::from_secs(2)), "still running");
    assert_eq!(read_data(&mut ws), None);
}
