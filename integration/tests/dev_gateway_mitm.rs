//! The development gateway's MITM mode, with a hand-written client (not
//! the relay): a WebSocket tunnel carrying TLS from an OpenSSL client that
//! trusts only the gateway's CA, as served on its CA endpoint. The origins
//! have certificates from a different test CA, which the gateway is told
//! to trust with `--upstream-ca`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use ccr_integration::gateway::Mode;
use ccr_integration::head::read_head_bytes;
use ccr_integration::http::header_lines;
use ccr_integration::pattern::{self, PatternChecker, PatternSource};
use ccr_integration::pki::TestCa;
use ccr_integration::stream::GatewayStream;
use ccr_integration::wire::{self as chunk, base64};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, temp_dir};
use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Bytes, Message, WebSocket};

const WAIT: Duration = Duration::from_secs(10);
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// A CONNECT tunnel through the gateway, as a byte stream: writes become
/// chunks, chunks become reads; the gateway closing is the end of file.
struct Tunnel {
    ws: WebSocket<GatewayStream>,
    buf: Vec<u8>,
    pos: usize,
}

impl Tunnel {
    /// Upgrades, sends the CONNECT for `target` and checks the `200`.
    fn open(gw: &DevGateway, target: &str) -> Tunnel {
        let tcp = TcpStream::connect(gw.addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let mut request = gw.ws_url().into_client_request().unwrap();
        let headers = request.headers_mut();
        let bearer = format!("Bearer {}", gw.token);
        headers.insert("Authorization", HeaderValue::from_str(&bearer).unwrap());
        headers.insert(
            "Content-Type",
            HeaderValue::from_static("application/proto"),
        );
        let (ws, _) = tungstenite::client::client(request, GatewayStream::Plain(tcp))
            .unwrap_or_else(|e| panic!("upgrade failed: {e}"));
        let mut tunnel = Tunnel {
            ws,
            buf: Vec::new(),
            pos: 0,
        };
        let basic = base64(format!("{}:{}", gw.session_id, gw.token).as_bytes());
        let connect =
            format!("CONNECT {target} HTTP/1.1\r\nProxy-Authorization: Basic {basic}\r\n\r\n");
        tunnel.write_all(connect.as_bytes()).unwrap();
        let mut answer = vec![0u8; ESTABLISHED.len()];
        tunnel.read_exact(&mut answer).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&answer),
            String::from_utf8_lossy(ESTABLISHED)
        );
        tunnel
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tunnel")
    }
}

impl Read for Tunnel {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.ws.read() {
                Ok(Message::Binary(b)) => {
                    let data = chunk::decode(&b).map_err(|e| io::Error::other(e.to_string()))?;
                    self.buf = data.to_vec();
                    self.pos = 0;
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
                ) => return Ok(0),
                Err(tungstenite::Error::Io(e)) => return Err(e),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Tunnel {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(256 * 1024);
        self.ws
            .send(Message::Binary(Bytes::from(chunk::encode(&data[..n]))))
            .map_err(io::Error::other)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.ws.flush().map_err(io::Error::other)
    }
}

/// The gateway's CA certificate, fetched from its CA endpoint.
fn gateway_ca(gw: &DevGateway) -> X509 {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /v1/code/upstreamproxy/ca-cert HTTP/1.1\r\nHost: g\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let start = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    X509::from_pem(&all[start..]).expect("the CA endpoint serves a PEM certificate")
}

/// A TLS client that trusts `ca` and nothing else.
fn connector(ca: &X509) -> SslConnector {
    let mut store = X509StoreBuilder::new().unwrap();
    store.add_cert(ca.clone()).unwrap();
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_cert_store(store.build());
    b.build()
}

/// An HTTP/1.1 client connection (keep-alive).
struct Http<S: Read + Write> {
    reader: BufReader<S>,
}

impl<S: Read + Write> Http<S> {
    fn new(stream: S) -> Self {
        Http {
            reader: BufReader::with_capacity(64 * 1024, stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let s = self.reader.get_mut();
        s.write_all(bytes).unwrap();
        s.flush().unwrap();
    }

    /// Reads one response with a `Content-Length` body: (head, body).
    fn response(&mut self) -> (String, Vec<u8>) {
        let head = read_head_bytes(&mut self.reader, 64 * 1024)
            .unwrap_or_else(|e| panic!("no response head: {e}"));
        let head = String::from_utf8(head).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no Content-Length in {head}"));
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).unwrap();
        (head, body)
    }

    fn request(&mut self, bytes: &[u8]) -> (String, Vec<u8>) {
        self.send(bytes);
        self.response()
    }

    /// Whether the server closed the connection (nothing more comes).
    fn at_eof(&mut self) -> bool {
        matches!(self.reader.fill_buf(), Ok([]))
    }
}

/// `GET /headers`, with extra header lines; the header lines the origin saw.
fn headers_seen<S: Read + Write>(http: &mut Http<S>, extra: &str) -> String {
    let (head, body) = http
        .request(format!("GET /headers HTTP/1.1\r\nHost: origin.test\r\n{extra}\r\n").as_bytes());
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    String::from_utf8(body).unwrap()
}

/// The origin saw exactly one `X-Api-Key`, with `value`.
fn assert_api_key(seen: &str, value: &str) {
    assert_eq!(
        header_lines(seen, "X-Api-Key"),
        [format!("X-Api-Key: {value}")],
        "{seen}"
    );
}

/// Uploads `len` pattern bytes to `/sha256` (chunked when asked) and
/// checks the digest the origin computed.
fn upload_and_check<S: Read + Write>(http: &mut Http<S>, len: u64, chunked: bool) {
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    http.send(
        format!("POST /sha256 HTTP/1.1\r\nHost: origin.test\r\n{framing}\r\n\r\n").as_bytes(),
    );
    let src = PatternSource::new(512 * 1024);
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(100_003) as usize;
        let data = src.slice(sent, n);
        if chunked {
            http.send(format!("{n:x}\r\n").as_bytes());
            http.send(data);
            http.send(b"\r\n");
        } else {
            http.send(data);
        }
        sent += n as u64;
    }
    if chunked {
        http.send(b"0\r\n\r\n");
    }
    let (head, body) = http.response();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("len={len} sha256={}\n", pattern::sha256_hex(len))
    );
}

/// A TLS origin for `origin.test` with a certificate from its own CA.
fn tls_origin(dir: &Path) -> (TestCa, DevOrigin) {
    let ca = TestCa::new(dir).unwrap();
    let (cert, key) = ca.issue_leaf(&["origin.test"]);
    let origin = DevOrigin::start(Some((&cert, &key)));
    (ca, origin)
}

fn mitm_gateway(origin_ca: &Path, origin: &DevOrigin, port: u16) -> DevGateway {
    DevGateway::start(
        GatewayOptions::default()
            .mitm(origin_ca)
            .inject("origin.test", "X-Api-Key", "injected-secret")
            .map(&format!("origin.test:{port}"), origin.addr),
    )
}

#[test]
fn forged_leaf_verifies_with_the_gateway_ca_and_every_request_gets_the_header() {
    let certs = temp_dir("mitm-certs");
    let (origin_ca, origin) = tls_origin(certs.path());
    let gw = mitm_gateway(&origin_ca.cert_path(), &origin, 443);
    let gw_ca = gateway_ca(&gw);
    assert_ne!(
        gw_ca.to_pem().unwrap(),
        origin_ca.cert_pem(),
        "the gateway CA is not the origin's"
    );
    let client = connector(&gw_ca);

    let tls = client
        .connect("origin.test", Tunnel::open(&gw, "origin.test:443"))
        .expect("the forged leaf verifies with only the gateway CA");
    let leaf = tls.ssl().peer_certificate().unwrap();
    let sans = leaf.subject_alt_names().unwrap();
    let dns: Vec<_> = sans.iter().filter_map(|n| n.dnsname()).collect();
    assert_eq!(dns, ["origin.test"]);
    assert_eq!(sans.len(), 1, "no other names");
    assert!(leaf.verify(&gw_ca.public_key().unwrap()).unwrap());
    let mut http = Http::new(tls);

    // The client's own value is replaced, whatever case it is sent in.
    let seen = headers_seen(&mut http, "x-api-key: client-value\r\nX-Other: kept\r\n");
    assert_api_key(&seen, "injected-secret");
    assert_eq!(header_lines(&seen, "X-Other"), ["X-Other: kept"], "{seen}");
    // The second request on the same connection gets it too.
    let seen = headers_seen(&mut http, "");
    assert_api_key(&seen, "injected-secret");
    // Bodies arrive intact, both framings, and keep-alive goes on after them.
    upload_and_check(&mut http, 1 << 20, false);
    upload_and_check(&mut http, 700_000, true);
    // A large download streams back byte-exact.
    let len: u64 = 8 << 20;
    http.send(format!("GET /bytes/{len} HTTP/1.1\r\nHost: origin.test\r\n\r\n").as_bytes());
    let head = read_head_bytes(&mut http.reader, 64 * 1024).unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200 "));
    let mut check = PatternChecker::new();
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = http
            .reader
            .read(&mut buf[..left.min(64 * 1024) as usize])
            .unwrap();
        assert!(n > 0, "download cut short with {left} bytes left");
        check.feed(&buf[..n]);
        left -= n as u64;
    }
    check.verify(len).unwrap();
    // Connection: close ends the tunnel after the response.
    let (head, body) =
        http.request(b"GET /hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, b"hello from origin\n");
    assert!(http.at_eof());
    // Read the tunnel to its end too: that answers the gateway's close.
    let mut rest = Vec::new();
    http.reader
        .get_mut()
        .get_mut()
        .read_to_end(&mut rest)
        .unwrap();
    assert!(rest.is_empty(), "nothing after close_notify: {rest:?}");
    gw.wait_for_event_prefix("mitm origin.test end ", WAIT);
    gw.wait_for_event_prefix("tunnel-end origin.test:443 ", WAIT);

    // A second connection: same leaf (cached), header injected.
    let tls = client
        .connect("origin.test", Tunnel::open(&gw, "origin.test:443"))
        .unwrap();
    let again = tls.ssl().peer_certificate().unwrap();
    assert_eq!(again.to_der().unwrap(), leaf.to_der().unwrap());
    let mut http = Http::new(tls);
    let seen = headers_seen(&mut http, "X-Api-Key: other\r\n");
    assert_api_key(&seen, "injected-secret");

    let events = gw.events();
    assert_eq!(
        gw.count_events("mitm origin.test leaf-issued"),
        1,
        "{events:#?}"
    );
    assert_eq!(gw.count_events("mitm origin.test tls"), 2, "{events:#?}");
    // /headers twice, two uploads, /bytes, /hello, then /headers again.
    assert_eq!(
        gw.count_events("mitm origin.test inject X-Api-Key"),
        7,
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|l| l.contains("injected-secret")),
        "{events:#?}"
    );
}

#[test]
fn ip_targets_get_an_ip_leaf_and_other_hosts_no_header() {
    let certs = temp_dir("mitm-ip-certs");
    // The test CA's leaves also name 127.0.0.1.
    let (origin_ca, origin) = tls_origin(certs.path());
    let gw = mitm_gateway(&origin_ca.cert_path(), &origin, 443);
    let client = connector(&gateway_ca(&gw));
    let target = format!("127.0.0.1:{}", origin.port());
    let tls = client
        .connect("127.0.0.1", Tunnel::open(&gw, &target))
        .expect("the IP leaf verifies for the address");
    let leaf = tls.ssl().peer_certificate().unwrap();
    let sans = leaf.subject_alt_names().unwrap();
    assert_eq!(sans.len(), 1);
    assert_eq!(
        sans.get(0).unwrap().ipaddress(),
        Some(&[127u8, 0, 0, 1][..])
    );
    let mut http = Http::new(tls);
    let seen = headers_seen(&mut http, "X-Api-Key: client-value\r\n");
    assert_api_key(&seen, "client-value");
    gw.wait_for_event(WAIT, |l| l == "mitm 127.0.0.1 leaf-issued");
    assert_eq!(gw.count_events("mitm 127.0.0.1 inject "), 0);
}

#[test]
fn origin_failing_verification_gets_a_502_inside_working_tls() {
    let certs = temp_dir("mitm-bad-certs");
    let trusted = TestCa::new(&certs.join("trusted")).unwrap();
    // The origin's certificate comes from a CA the gateway does not trust.
    let (_, origin) = tls_origin(&certs.join("untrusted"));
    let gw = mitm_gateway(&trusted.cert_path(), &origin, 443);
    // A client that does not trust the gateway CA refuses the forged leaf.
    assert!(
        connector(trusted.cert())
            .connect("origin.test", Tunnel::open(&gw, "origin.test:443"))
            .is_err()
    );
    gw.wait_for_event(WAIT, |l| l == "mitm origin.test client-tls-failed");
    let client = connector(&gateway_ca(&gw));
    let tls = client
        .connect("origin.test", Tunnel::open(&gw, "origin.test:443"))
        .expect("the client's TLS to the gateway works");
    let mut http = Http::new(tls);
    let (head, body) = http.request(b"GET /hello HTTP/1.1\r\nHost: origin.test\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{head}");
    assert!(head.contains("Connection: close\r\n"), "{head}");
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("certificate verify failed"), "{body}");
    assert!(http.at_eof());
    let event = gw.wait_for_event_prefix("mitm origin.test upstream-tls-failed ", WAIT);
    assert!(event.contains("certificate verify failed"), "{event}");
}

#[test]
fn plain_http_tunnels_are_rewritten_too() {
    let origin = DevOrigin::start(None);
    // MITM mode without --upstream-ca: plain tunnels do not need it.
    let gw = DevGateway::start(GatewayOptions {
        mode: Mode::Mitm,
        ..GatewayOptions::default()
            .inject("origin.test", "X-Api-Key", "injected-secret")
            .map("origin.test:80", origin.addr)
    });
    let mut http = Http::new(Tunnel::open(&gw, "origin.test:80"));
    let seen = headers_seen(&mut http, "X-Api-Key: client-value\r\n");
    assert_api_key(&seen, "injected-secret");
    upload_and_check(&mut http, 300_000, true);
    upload_and_check(&mut http, 1 << 20, false);
    let seen = headers_seen(&mut http, "");
    assert_api_key(&seen, "injected-secret");
    gw.wait_for_event(WAIT, |l| l == "mitm origin.test plain");
    assert_eq!(gw.count_events("mitm origin.test inject X-Api-Key"), 4);
    assert_eq!(gw.count_events("mitm origin.test leaf-issued"), 0);
}

#[test]
fn blind_mode_passes_the_origin_certificate_and_headers_through() {
    let certs = temp_dir("blind-certs");
    let (origin_ca, origin) = tls_origin(certs.path());
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:443", origin.addr));
    let gw_ca = gateway_ca(&gw);
    assert!(
        connector(&gw_ca)
            .connect("origin.test", Tunnel::open(&gw, "origin.test:443"))
            .is_err(),
        "a blind gateway forges nothing"
    );
    let tls = connector(origin_ca.cert())
        .connect("origin.test", Tunnel::open(&gw, "origin.test:443"))
        .expect("the origin's own certificate");
    let mut http = Http::new(tls);
    let seen = headers_seen(&mut http, "X-Api-Key: client-value\r\n");
    assert_api_key(&seen, "client-value");
    assert_eq!(gw.count_events("mitm "), 0);
}
