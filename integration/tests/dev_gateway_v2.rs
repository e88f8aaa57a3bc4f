//! The development gateway's agent-proxy generation (protocol v2) on its
//! own, driven by a hand-written v2 client (not the relay): the HELLO
//! exchange byte for byte, FIN and FIN_ACK, a second tunnel on the same
//! WebSocket, the early and v1-only servers, and the faults tests use
//! (`--refuse-first`, `--close-idle-after`, `--token-file`, a wrong Bearer).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ccr_integration::events::escape;
use ccr_integration::stream::GatewayStream;
use ccr_integration::wire::base64;
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, ServerKind};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::{Bytes, Message, WebSocket};

const WAIT: Duration = Duration::from_secs(10);
const HELLO: &[u8] = &[0x10, 0x01, 0x18, 0x02];
const HELLO_ACK: &[u8] = &[0x10, 0x02, 0x18, 0x02];
const FIN: &[u8] = &[0x10, 0x03];
const FIN_ACK: &[u8] = &[0x10, 0x04];
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";
const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n";

type Ws = WebSocket<GatewayStream>;

fn gateway(server: ServerKind, origin: &DevOrigin, more: &[&str]) -> DevGateway {
    DevGateway::start(
        GatewayOptions::default()
            .agent_proxy(server)
            .map("origin.test:80", origin.addr)
            .args(more),
    )
}

/// Upgrades with this Bearer token; `Err(status)` when refused.
fn upgrade(gw: &DevGateway, token: &str) -> Result<Ws, u16> {
    let mut request = gw.ws_url().into_client_request().unwrap();
    let h = request.headers_mut();
    h.insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h.insert(
        "Content-Type",
        HeaderValue::from_static("application/proto"),
    );
    let tcp = TcpStream::connect(gw.addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    match tungstenite::client::client(request, GatewayStream::Plain(tcp)) {
        Ok((ws, _)) => Ok(ws),
        Err(HandshakeError::Failure(tungstenite::Error::Http(r))) => Err(r.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

fn data_message(data: &[u8]) -> Vec<u8> {
    // Written out here rather than taken from the crate, so a codec bug
    // shared with the gateway cannot hide (lengths below 16 KiB only).
    assert!(data.len() < 1 << 14);
    let mut m = vec![0x0A];
    if data.len() < 0x80 {
        m.push(data.len() as u8);
    } else {
        m.push((data.len() & 0x7F) as u8 | 0x80);
        m.push((data.len() >> 7) as u8);
    }
    m.extend_from_slice(data);
    m
}

fn send(ws: &mut Ws, bytes: &[u8]) {
    ws.send(Message::Binary(Bytes::copy_from_slice(bytes)))
        .unwrap();
}

/// The CONNECT preamble a v2 relay sends.
fn preamble(gw: &DevGateway, token: &str, process: &str) -> Vec<u8> {
    let basic = base64(format!("{}:{token}", gw.session_id).as_bytes());
    format!(
        "CONNECT origin.test:80 HTTP/1.1\r\nProxy-Authorization: Basic {basic}\r\nX-Agent-Proxy-Client-Process: {process}\r\n\r\n"
    )
    .into_bytes()
}

/// What the gateway sent next: a raw binary message, or `None` once closed.
fn next(ws: &mut Ws) -> Option<Vec<u8>> {
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => return Some(b.to_vec()),
            Ok(Message::Text(t)) => panic!("text frame: {t}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("nothing from the gateway within {WAIT:?}")
            }
            Err(_) => return None,
        }
    }
}

/// Decodes a data message written as `0A len data` (what the gateway sends).
fn data_of(message: &[u8]) -> Vec<u8> {
    assert_eq!(message[0], 0x0A, "not a data message: {message:02x?}");
    let (len, at) = if message[1] & 0x80 == 0 {
        (message[1] as usize, 2)
    } else {
        let mut len = 0usize;
        let mut i = 1;
        let mut shift = 0;
        loop {
            len |= ((message[i] & 0x7F) as usize) << shift;
            i += 1;
            if message[i - 1] & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        (len, i)
    };
    assert_eq!(message.len(), at + len, "trailing bytes");
    message[at..].to_vec()
}

/// Reads data messages until a FIN (returned as `true`) or the close
/// (`false`); the bytes are appended to `out`.
fn read_tunnel(ws: &mut Ws, out: &mut Vec<u8>) -> bool {
    while let Some(m) = next(ws) {
        if m == FIN {
            return true;
        }
        out.extend(data_of(&m));
    }
    false
}

/// One tunnel on an open WebSocket: preamble and request in one message,
/// then the whole answer.
fn one_tunnel(gw: &DevGateway, ws: &mut Ws, token: &str) -> (Vec<u8>, bool) {
    let mut msg = preamble(gw, token, "curl");
    msg.extend_from_slice(REQUEST);
    send(ws, &data_message(&msg));
    let mut got = Vec::new();
    let fin = read_tunnel(ws, &mut got);
    (got, fin)
}

fn assert_hello_answer(got: &[u8]) {
    assert!(got.starts_with(ESTABLISHED), "{}", escape(got));
    assert!(got.ends_with(b"hello from origin\n"), "{}", escape(got));
}

#[test]
fn late_server_acknowledges_sends_fin_and_reuses_the_websocket() {
    let origin = DevOrigin::start(None);
    let gw = gateway(ServerKind::Late, &origin, &[]);
    let mut ws = upgrade(&gw, &gw.token).unwrap();
    send(&mut ws, HELLO);
    assert_eq!(next(&mut ws).unwrap(), HELLO_ACK, "HELLO_ACK byte for byte");
    send(&mut ws, &[0x0A, 0x00]); // keepalive before the preamble

    // Preamble alone, then the request in a second message.
    let first = preamble(&gw, &gw.token, "curl");
    send(&mut ws, &data_message(&first));
    assert_eq!(data_of(&next(&mut ws).unwrap()), ESTABLISHED);
    send(&mut ws, &data_message(REQUEST));
    send(&mut ws, &[]); // an empty message is a keepalive too
    let mut got = ESTABLISHED.to_vec();
    assert!(
        read_tunnel(&mut ws, &mut got),
        "FIN after the target closed"
    );
    assert_hello_answer(&got);
    send(&mut ws, FIN_ACK);

    // Second tunnel on the same WebSocket: no HELLO.
    let (got, fin) = one_tunnel(&gw, &mut ws, &gw.token);
    assert!(fin);
    assert_hello_answer(&got);
    send(&mut ws, FIN_ACK);

    let events = || gw.events();
    gw.wait_for_event_prefix("v2 fin-ack ws=1 tunnel=2", WAIT);
    assert_eq!(gw.count_events("upgrade ok"), 1, "{:?}", events());
    assert_eq!(gw.count_events("upgrade ok ws=1"), 1);
    assert_eq!(gw.count_events("v2 first-message ws=1 hex=10011802"), 1);
    assert_eq!(gw.count_events("v2 hello ws=1 version=2"), 1);
    assert_eq!(gw.count_events("v2 hello-ack ws=1"), 1);
    let line = format!("v2 preamble ws=1 tunnel=1 {}", escape(&first));
    assert!(events().contains(&line), "{line} in {:?}", events());
    assert_eq!(gw.count_events("v2 client-process ws=1 tunnel=1 curl"), 1);
    assert_eq!(gw.count_events("v2 client-process ws=1 tunnel=2 curl"), 1);
    for k in [1, 2] {
        let tag = format!(" ws=1 tunnel={k}");
        assert_eq!(gw.count_events(&format!("fin-sent{tag}")), 1);
        let end = events()
            .into_iter()
            .find(|l| l.starts_with("tunnel-end origin.test:80 ") && l.ends_with(&tag))
            .unwrap_or_else(|| panic!("no tunnel-end{tag}: {:?}", events()));
        assert!(end.contains(" end=target_closed "), "{end}");
    }
    assert!(gw.count_events("keepalive") >= 2, "{:?}", events());
    assert_eq!(gw.count_events("v2 ws-end"), 0, "the WebSocket stays open");

    // The relay closing the idle WebSocket ends it.
    ws.close(None).unwrap();
    while next(&mut ws).is_some() {}
    let end = gw.wait_for_event_prefix("v2 ws-end ws=1 ", WAIT);
    assert!(end.contains("tunnels=2"), "{end}");
}

#[test]
fn early_server_ignores_hello_and_serves_one_tunnel_without_fin() {
    let origin = DevOrigin::start(None);
    let gw = gateway(ServerKind::Early, &origin, &[]);
    let mut ws = upgrade(&gw, &gw.token).unwrap();
    send(&mut ws, HELLO);
    let (got, fin) = one_tunnel(&gw, &mut ws, &gw.token);
    assert!(!fin, "an early server sends no FIN");
    assert_hello_answer(&got);
    gw.wait_for_event_prefix("v2 ws-end ws=1 tunnels=1", WAIT);
    assert_eq!(gw.count_events("v2 hello-ignored ws=1 version=2"), 1);
    assert_eq!(gw.count_events("v2 hello-ack"), 0);
    assert_eq!(gw.count_events("fin-sent"), 0);
}

#[test]
fn v1_only_server_drops_control_messages() {
    let origin = DevOrigin::start(None);
    let gw = gateway(ServerKind::V1Only, &origin, &[]);
    let mut ws = upgrade(&gw, &gw.token).unwrap();
    send(&mut ws, HELLO);
    send(&mut ws, FIN_ACK); // stray control message: dropped too
    let (got, fin) = one_tunnel(&gw, &mut ws, &gw.token);
    assert!(!fin);
    assert_hello_answer(&got);
    gw.wait_for_event_prefix("v2 ws-end ws=1 tunnels=1", WAIT);
    assert_eq!(gw.count_events("v2 control-dropped ws=1 control=1"), 1);
    assert_eq!(gw.count_events("v2 control-dropped ws=1 control=4"), 1);
    assert_eq!(gw.count_events("v2 hello"), 0);
    assert_eq!(gw.count_events("fin-sent"), 0);
}

#[test]
fn refuse_first_answers_503_then_upgrades() {
    let origin = DevOrigin::start(None);
    let gw = gateway(ServerKind::Late, &origin, &["--refuse-first", "2"]);
    assert_eq!(upgrade(&gw, &gw.token).err(), Some(503));
    assert_eq!(upgrade(&gw, &gw.token).err(), Some(503));
    let mut ws = upgrade(&gw, &gw.token).unwrap();
    send(&mut ws, HELLO);
    assert_eq!(next(&mut ws).unwrap(), HELLO_ACK);
    assert_eq!(
        gw.count_events("upgrade refused 503 --refuse-first ws=1"),
        1
    );
    assert_eq!(
        gw.count_events("upgrade refused 503 --refuse-first ws=2"),
        1
    );
    gw.wait_for_event_prefix("upgrade ok ws=3", WAIT);
}

#[test]
fn idle_websocket_is_closed_after_close_idle_after() {
    let origin = DevOrigin::start(None);
    let gw = gateway(ServerKind::Late, &origin, &["--close-idle-after", "400"]);
    let mut ws = upgrade(&gw, &gw.token).unwrap();
    send(&mut ws, HELLO);
    assert_eq!(next(&mut ws).unwrap(), HELLO_ACK);
    let (got, fin) = one_tunnel(&gw, &mut ws, &gw.token);
    assert!(fin);
    assert_hello_answer(&got);
    send(&mut ws, FIN_ACK);
    let idle_from = Instant::now();
    send(&mut ws, &[0x0A, 0x00]); // keepalives do not count as activity
    assert_eq!(next(&mut ws), None, "the gateway closes the idle WebSocket");
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(350), "closed after {idle:?}");
    assert!(idle < Duration::from_secs(8), "closed after {idle:?}");
    gw.wait_for_event_prefix("v2 idle-close ws=1 after_ms=400", WAIT);
    gw.wait_for_event_prefix("v2 ws-end ws=1 tunnels=1 why=idle", WAIT);
}

#[test]
fn token_file_rotation_and_wrong_bearer() {
    let origin = DevOrigin::start(None);
    let dir = ccr_integration::temp_dir("gw-v2-token");
    let file = dir.join("token");
    std::fs::write(&file, "tok-a\n").unwrap();
    let gw = gateway(
        ServerKind::Late,
        &origin,
        &["--token-file", file.to_str().unwrap()],
    );
    assert_eq!(upgrade(&gw, "tok-b").err(), Some(401));
    gw.wait_for_event_prefix("upgrade refused 401 wrong bearer token ws=1", WAIT);
    let mut ws = upgrade(&gw, "tok-a").unwrap();
    send(&mut ws, HELLO);
    assert_eq!(next(&mut ws).unwrap(), HELLO_ACK);
    let (got, fin) = one_tunnel(&gw, &mut ws, "tok-a");
    assert!(fin);
    assert_hello_answer(&got);
    send(&mut ws, FIN_ACK);

    // Rotated: the open WebSocket stays, but the next CONNECT must carry
    // the new token. The old one is refused inside the tunnel (with FIN).
    std::fs::write(&file, "tok-b").unwrap();
    let (got, fin) = one_tunnel(&gw, &mut ws, "tok-a");
    assert!(fin, "{}: {:?}", escape(&got), gw.events());
    assert!(got.starts_with(b"HTTP/1.1 407 "), "{}", escape(&got));
    send(&mut ws, FIN_ACK);
    gw.wait_for_event_prefix("v2 fin-ack ws=2 tunnel=2", WAIT);
    let (got, fin) = one_tunnel(&gw, &mut ws, "tok-b");
    assert!(fin);
    assert_hello_answer(&got);
    send(&mut ws, FIN_ACK);
    assert_eq!(upgrade(&gw, "tok-a").err(), Some(401));
    let _ws = upgrade(&gw, "tok-b").unwrap();
    gw.wait_for_event_prefix("upgrade ok ws=4", WAIT);
    assert_eq!(
        gw.count_events("tunnel refused 407 wrong Proxy-Authorization"),
        1
    );
    // The --token value (test-token) is not accepted while the file has one.
    assert_eq!(upgrade(&gw, &gw.token).err(), Some(401));
}

#[test]
fn only_the_chosen_generations_paths_are_served() {
    let origin = DevOrigin::start(None);
    let gw = gateway(ServerKind::Late, &origin, &[]);
    let get = |path: &str| {
        let mut tcp = TcpStream::connect(gw.addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        write!(tcp, "GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        answer
    };
    let ca = get("/v1/code/agent-proxy/ca-cert");
    assert!(ca.starts_with("HTTP/1.1 200 "), "{ca}");
    assert!(ca.contains("-----BEGIN CERTIFICATE-----"), "{ca}");
    for path in [
        "/v1/code/upstreamproxy/ca-cert",
        "/v1/code/upstreamproxy/ws",
    ] {
        let answer = get(path);
        assert!(answer.starts_with("HTTP/1.1 404 "), "{path}: {answer}");
    }
    assert!(gw.ws_url().ends_with("/v1/code/agent-proxy/ws"));
}
