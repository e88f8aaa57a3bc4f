//! The relay library's client end (`ccr_relay::gateway::Gateway`,
//! `ccr_relay::tunnel::dial` and `ccr_relay::tunnel::Tunnel`) against the development gateway, without
//! the relay binary: both ends of the wire contract agree, over `ws://` and
//! `wss://`, both directions at once, byte for byte.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::pattern::{PatternChecker, PatternReader};
use ccr_integration::pki::TestCa;
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, temp_dir};
use ccr_relay::config::Limits;
use ccr_relay::gateway::{Credentials, Endpoint, Gateway};
use ccr_relay::http::request_head::Authority;
use ccr_relay::startup::token::{SessionToken, TokenOrigin, TokenSource};
use ccr_relay::tunnel::dial;
use ccr_relay::tunnel::{PumpOptions, Tunnel, TunnelReport};

const WAIT: Duration = Duration::from_secs(10);

/// The relay's gateway client for `gw`, trusting `roots` (PEM) if given.
fn client_for(gw: &DevGateway, roots: Option<&[u8]>) -> Gateway {
    let mut tls = native_tls::TlsConnector::builder();
    if let Some(pem) = roots {
        tls.add_root_certificate(native_tls::Certificate::from_pem(pem).unwrap());
    }
    Gateway::new(
        Endpoint::parse(&gw.base_url()).unwrap(),
        Credentials {
            session_id: gw.session_id.clone(),
            token: TokenSource::fixed(
                SessionToken::new(&gw.token).unwrap(),
                TokenOrigin::TokenFile,
            ),
        },
        tls.build().unwrap(),
        Duration::from_secs(5),
    )
}

/// Opens a tunnel to `target` the way the relay does; returns the client's
/// end of it (after the gateway's `200`), the tunnel and its pump thread.
fn open_tunnel(
    gateway: &Gateway,
    target: &str,
    opts: PumpOptions,
) -> (TcpStream, Arc<Tunnel>, thread::JoinHandle<TunnelReport>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (inner, _) = listener.accept().unwrap();
    let target = Authority::parse(target, None).unwrap();
    let request = dial::Request {
        target: &target,
        client_process: &|_| "relay_interop".to_string(),
        leftover: &[],
    };
    let opened = dial::open(gateway, &Limits::default(), &request).expect("open");
    // The gateway's answer so far goes to the client, as the relay does.
    (&inner).write_all(&opened.answer).unwrap();
    let tunnel = Tunnel::new(inner, opened.ws, opts).unwrap();
    let runner = {
        let t = Arc::clone(&tunnel);
        thread::spawn(move || t.run())
    };
    client.set_read_timeout(Some(WAIT)).unwrap();
    let want = b"HTTP/1.1 200 Connection Established\r\n\r\n";
    let mut got = vec![0u8; want.len()];
    (&client).read_exact(&mut got).unwrap();
    assert_eq!(got, want);
    (client, tunnel, runner)
}

/// `POST /echo` of `len` pattern bytes, sent and read back at once.
fn echo_both_ways(client: TcpStream, len: u64) -> f64 {
    let started = Instant::now();
    let mut writer = client.try_clone().unwrap();
    let upload = thread::spawn(move || {
        write!(
            writer,
            "POST /echo HTTP/1.1\r\nHost: o\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        std::io::copy(&mut PatternReader::new(len), &mut writer).unwrap();
    });
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, client);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        reader.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let mut check = PatternChecker::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        check.feed(&buf[..n]);
    }
    upload.join().unwrap();
    check.verify(len).unwrap();
    2.0 * len as f64 / started.elapsed().as_secs_f64() / 1e6
}

#[test]
fn relay_client_over_ws_full_duplex_byte_exact() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let gateway = client_for(&gw, None);
    let (client, _tunnel, runner) = open_tunnel(&gateway, "origin.test:80", PumpOptions::default());
    // CCR_INTEROP_BYTES raises the size for a throughput check (release build).
    let len = std::env::var("CCR_INTEROP_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 << 20);
    let mbps = echo_both_ways(client, len);
    eprintln!("ws:// echo, both directions: {mbps:.0} MB/s");
    let report = runner.join().unwrap();
    let end = gw.wait_for_event_prefix("tunnel-end origin.test:80 ", WAIT);
    // The gateway's `200` came in its own message, read by `dial::open`
    // before the pumps: the tunnel counts only what followed, as the
    // gateway counts only what it read from the target.
    let out = format!(" out={} ", report.bytes_ws_to_socket);
    assert!(end.contains(&out), "{end} vs {report:?}");
}

#[test]
fn relay_client_over_wss_with_keepalives_and_pings() {
    let certs = temp_dir("interop-certs");
    let ca = TestCa::new(certs.path()).unwrap();
    let (cert, key) = ca.issue_leaf(&["gateway.test"]);
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions {
        tls: Some((cert, key)),
        ping_every: Some(Duration::from_millis(100)),
        ..GatewayOptions::default().map("origin.test:443", origin.addr)
    });
    let gateway = client_for(&gw, Some(&ca.cert_pem()));
    let opts = PumpOptions {
        keepalive_interval: Duration::from_millis(100),
        ..PumpOptions::default()
    };
    let (client, tunnel, runner) = open_tunnel(&gateway, "origin.test:443", opts);
    gw.wait_for_event(WAIT, |l| l == "keepalive");
    gw.wait_for_event(WAIT, |l| l == "pong-received");
    let mbps = echo_both_ways(client, 16 << 20);
    eprintln!("wss:// echo, both directions: {mbps:.0} MB/s");
    tunnel.abort();
    runner.join().unwrap();
    gw.wait_for_event_prefix("tunnel-end origin.test:443 ", WAIT);
}
