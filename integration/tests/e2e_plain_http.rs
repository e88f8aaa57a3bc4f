//! Plain `http://` through the real relay: absolute-form requests are
//! forwarded through a tunnel to the origin, kept-alive connections reuse
//! their tunnel, chunked bodies arrive intact, and `HEAD` answers end where
//! they should. The hostile-framing section sends raw bytes both ways:
//! ambiguous framings are refused, an origin's bytes beyond its response
//! never answer a later request, a stalled or cut-off response head gets a
//! bounded answer naming the origin, and `Expect: 100-continue` bodies
//! always reach an origin that answers before reading them.

use std::io::{Read, Write};
use std::time::Duration;

use ccr_integration::pattern::{self, PatternReader};
use ccr_integration::relay::{RelayOptions, RelayProcess, read_head, run_relay};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, temp_dir};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn setup() -> (DevOrigin, DevGateway) {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(
        GatewayOptions::default()
            .map("plain.test:80", origin.addr)
            .map("other.test:8080", origin.addr),
    );
    (origin, gw)
}

/// `ccr-relay run -- sh -c "curl -x $HTTPS_PROXY …"` (the relay does not
/// set `HTTP_PROXY` yet, so the script names the proxy itself).
fn curl_via_relay(gw: &DevGateway, curl_args: &str) -> ccr_integration::relay::RunOutput {
    let script = format!("exec curl -sS --max-time 30 -x \"$HTTPS_PROXY\" {curl_args}");
    let out = run_relay(
        gw,
        &RelayOptions::default(),
        &["sh", "-c", &script],
        RUN_TIMEOUT,
    );
    out.assert_success();
    out
}

#[test]
fn plain_get_is_forwarded() {
    let (_origin, gw) = setup();
    let out = curl_via_relay(&gw, "--fail http://plain.test/hello");
    assert_eq!(out.stdout_text(), "hello from origin\n");
    assert_eq!(gw.count_events("connect plain.test:80"), 1);
    // The origin saw an origin-form request with the Host, and no proxy headers.
    let out = curl_via_relay(
        &gw,
        "--fail -H 'Proxy-Authorization: Basic c2VjcmV0' http://plain.test/headers",
    );
    let seen = out.stdout_text();
    assert!(seen.starts_with("GET /headers HTTP/1.1\n"), "{seen}");
    assert!(
        seen.to_ascii_lowercase().contains("\nhost: plain.test"),
        "{seen}"
    );
    assert!(
        !seen.to_ascii_lowercase().contains("proxy-authorization"),
        "{seen}"
    );
}

#[test]
fn keep_alive_reuses_one_tunnel_for_one_host() {
    let (_origin, gw) = setup();
    let out = curl_via_relay(
        &gw,
        "--fail http://plain.test/hello http://plain.test/bytes/5000 http://plain.test/hello",
    );
    let mut want = b"hello from origin\n".to_vec();
    PatternReader::new(5000).read_to_end(&mut want).unwrap();
    want.extend_from_slice(b"hello from origin\n");
    assert!(out.stdout == want, "three bodies, in order");
    assert_eq!(
        gw.count_events("connect plain.test:80"),
        1,
        "one tunnel for three requests; events:\n{}",
        gw.events().join("\n")
    );
}

#[test]
fn chunked_post_is_forwarded_intact() {
    const LEN: u64 = 3 << 20;
    let (_origin, gw) = setup();
    let dir = temp_dir("e2e-chunked");
    let file = dir.join("body.bin");
    std::io::copy(
        &mut PatternReader::new(LEN),
        &mut std::fs::File::create(&file).unwrap(),
    )
    .unwrap();
    let out = curl_via_relay(
        &gw,
        &format!(
            "--fail -H 'Expect:' -H 'Transfer-Encoding: chunked' --data-binary @{} http://plain.test/sha256",
            file.display()
        ),
    );
    assert_eq!(
        out.stdout_text(),
        format!("len={LEN} sha256={}\n", pattern::sha256_hex(LEN))
    );
}

/// A minimal HTTP/1.1 origin on loopback that answers `HEAD` (the
/// development origin answers `HEAD` only for `--root` files): `HEAD` of
/// any path gets `Content-Length: 12345` and no body, `GET` gets
/// `hello from origin`. Keep-alive; one thread per connection.
fn head_origin() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                while let Ok(head) = read_head(&mut conn) {
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let answer: &[u8] = if head.starts_with("HEAD ") {
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 12345\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 18\r\n\r\nhello from origin\n"
                    };
                    if conn.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn head_request_works_and_the_connection_stays_usable() {
    let gw = DevGateway::start(GatewayOptions::default().map("plain.test:80", head_origin()));
    // HEAD, then GET on the same connection: if the relay waited for a
    // body after the HEAD answer, or passed one on, the GET would hang or
    // read garbage.
    let out = curl_via_relay(
        &gw,
        "--fail -I http://plain.test/bytes --next -x \"$HTTPS_PROXY\" --fail http://plain.test/hello",
    );
    let text = out.stdout_text();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-length: 12345\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nhello from origin\n"), "{text:?}");
    assert_eq!(gw.count_events("connect plain.test:80"), 1);
}

#[test]
fn raw_head_request_gets_a_bodiless_answer() {
    let gw = DevGateway::start(GatewayOptions::default().map("plain.test:80", head_origin()));
    let relay = RelayProcess::serve(&gw, RelayOptions::default());
    let mut c = relay.connect();
    c.write_all(
        b"HEAD http://plain.test/bytes HTTP/1.1\r\nHost: plain.test\r\n\r\n\
          GET http://plain.test/hello HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let head = String::from_utf8(read_head(&mut c).unwrap()).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-length: 12345\r\n"),
        "{head}"
    );
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest:?}");
    assert!(rest.ends_with("\r\n\r\nhello from origin\n"), "{rest:?}");
}

#[test]
fn another_host_on_the_same_connection_gets_its_own_tunnel() {
    let (_origin, gw) = setup();
    // curl keeps one connection to an HTTP proxy for all hosts.
    let out = curl_via_relay(
        &gw,
        "-v --fail http://plain.test/hello http://other.test:8080/hello http://plain.test/hello",
    );
    assert_eq!(out.stdout_text(), "hello from origin\n".repeat(3));
    assert!(
        out.stderr.contains("Re-using existing connection"),
        "curl reused its proxy connection:\n{}",
        out.stderr
    );
    assert_eq!(gw.count_events("connect other.test:8080"), 1);
    let plain = gw.count_events("connect plain.test:80");
    assert!(
        (1..=2).contains(&plain),
        "{plain} tunnels to plain.test; events:\n{}",
        gw.events().join("\n")
    );
}

#[test]
fn chunked_upload_echoed_back_chunked_is_intact() {
    const LEN: u64 = 3 << 20;
    let (_origin, gw) = setup();
    let dir = temp_dir("e2e-chunked-echo");
    let file = dir.join("body.bin");
    let echoed = dir.join("echoed.bin");
    std::io::copy(
        &mut PatternReader::new(LEN),
        &mut std::fs::File::create(&file).unwrap(),
    )
    .unwrap();
    curl_via_relay(
        &gw,
        &format!(
            "--fail -H 'Expect:' -H 'Transfer-Encoding: chunked' --data-binary @{} -o {} http://plain.test/echo",
            file.display(),
            echoed.display()
        ),
    );
    pattern::verify_file(&echoed, LEN).expect("the echo is the upload");
}

#[test]
fn large_plain_download_is_byte_exact() {
    const LEN: u64 = 32 << 20;
    let (_origin, gw) = setup();
    let dir = temp_dir("e2e-plain-download");
    let file = dir.join("download.bin");
    curl_via_relay(
        &gw,
        &format!("--fail -o {} http://plain.test/bytes/{LEN}", file.display()),
    );
    pattern::verify_file(&file, LEN).expect("the download is the pattern");
}

#[test]
fn refused_plain_request_gets_502() {
    let (_origin, gw) = setup();
    let out = curl_via_relay(
        &gw,
        "-o /dev/null -w '%{http_code}' http://unmapped.test/hello",
    );
    assert_eq!(out.stdout_text(), "502");
    gw.wait_for_event_prefix("tunnel refused 502", Duration::from_secs(5));
}

#[test]
fn plain_request_then_half_close_still_gets_the_answer() {
    let (_origin, gw) = setup();
    let relay = RelayProcess::serve(&gw, RelayOptions::default());
    let mut c = relay.connect();
    c.write_all(b"GET http://plain.test/bytes/100000 HTTP/1.1\r\nHost: plain.test\r\n\r\n")
        .unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let head = String::from_utf8(read_head(&mut c).unwrap()).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let mut body = Vec::new();
    c.read_to_end(&mut body).unwrap();
    pattern::verify_reader(&body[..], 100_000).unwrap();
}

/// What a hostile-framing origin saw of one request: the head, and the
/// body as it arrived (framing included).
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// A raw origin for framing tests. Per connection: reads the request head,
/// then (if `read_body`) the body as framed by one `Content-Length` or
/// canonical chunked (the relay's output is read literally, no parser),
/// reports what it saw, writes `answer`, closes.
fn raw_origin(
    answer: &'static [u8],
    read_body: bool,
) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<Seen>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let Ok(head) = read_head(&mut conn) else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).into_owned();
                let lower = head.to_ascii_lowercase();
                let mut body = Vec::new();
                if read_body {
                    if let Some(len) = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                    {
                        body.resize(len, 0);
                        let _ = conn.read_exact(&mut body);
                    } else if lower.contains("\r\ntransfer-encoding: chunked\r\n") {
                        let mut byte = [0u8];
                        while !body.ends_with(b"\r\n\r\n")
                            && body != b"\r\n"
                            && conn.read(&mut byte).is_ok_and(|n| n == 1)
                        {
                            body.push(byte[0]);
                        }
                    }
                }
                let _ = tx.send(Seen { head, body });
                let _ = conn.write_all(answer);
                let _ = conn.shutdown(std::net::Shutdown::Write);
                let mut rest = Vec::new();
                let _ = conn.read_to_end(&mut rest);
            });
        }
    });
    (addr, rx)
}

const OK_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// A gateway mapping `origin.test:80` to `origin`, and a relay in front.
fn relay_to(origin: std::net::SocketAddr) -> (DevGateway, RelayProcess) {
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin));
    let relay = RelayProcess::serve(&gw, RelayOptions::default());
    (gw, relay)
}

/// Sends raw bytes to the relay, reads until it closes.
fn send_raw(relay: &RelayProcess, request: &[u8]) -> String {
    let mut c = relay.connect();
    let _ = c.write_all(request);
    let mut got = Vec::new();
    if let Err(e) = c.read_to_end(&mut got) {
        assert!(
            e.kind() == std::io::ErrorKind::ConnectionReset && !got.is_empty(),
            "no close from the relay ({e}); got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn ambiguous_request_framing_is_400_and_never_reaches_the_origin() {
    let (addr, seen) = raw_origin(OK_CLOSE, true);
    let (_gw, relay) = relay_to(addr);
    for request in [
        &b"POST http://origin.test/ HTTP/1.1\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"POST http://origin.test/ HTTP/1.1\r\nConnection: close, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST http://origin.test/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST http://origin.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST http://origin.test/ HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST http://origin.test/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST http://origin.test/ HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello!",
        b"POST http://origin.test/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nHost: evil.test\r\n\r\n",
        b"GET http://origin..test/ HTTP/1.1\r\n\r\n",
    ] {
        let got = send_raw(&relay, request);
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{:?} got {got:?}",
            String::from_utf8_lossy(request)
        );
        assert!(
            got.contains("\r\n\r\nccr-relay: ")
                && got.ends_with("GET /__agentproxy/status on this port shows the proxy's state and recent failures.\n"),
            "{got:?}"
        );
    }
    assert!(
        seen.recv_timeout(Duration::from_millis(500)).is_err(),
        "the origin saw a request"
    );
}

#[test]
fn malformed_chunked_request_bodies_are_400() {
    let (addr, seen) = raw_origin(OK_CLOSE, true);
    let (_gw, relay) = relay_to(addr);
    for body in [
        &b"+5\r\nhello\r\n0\r\n\r\n"[..],
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"zz\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut request =
            b"POST http://origin.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        let got = send_raw(&relay, &request);
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{:?} got {got:?}",
            String::from_utf8_lossy(body)
        );
        // The origin got the head and a broken-off body, never the bad line.
        if let Ok(s) = seen.recv_timeout(Duration::from_secs(5)) {
            assert!(
                !s.body.windows(2).any(|w| w == b"+5" || w == b"zz"),
                "{:?}",
                s.body
            );
        }
    }
}

#[test]
fn loose_request_framing_reaches_the_origin_normalised() {
    let (addr, seen) = raw_origin(OK_CLOSE, true);
    let (_gw, relay) = relay_to(addr);
    let cases: [(&[u8], &str, &[u8]); 4] = [
        (
            b"POST http://origin.test/a HTTP/1.1\r\nHost: evil.test\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            "content-length: 5\r\n",
            b"hello",
        ),
        (
            b"POST http://origin.test/b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5 \r\nhello\r\n3;ext=\"x\"\r\n!!!\r\n0\r\nContent-Length: 99\r\nX-Sum: 1\r\n\r\n",
            "transfer-encoding: chunked\r\n",
            b"5\r\nhello\r\n3\r\n!!!\r\n0\r\nX-Sum: 1\r\n\r\n",
        ),
        (
            b"POST http://origin.test/c HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n000a\r\n0123456789\r\n0\r\n\r\n",
            "transfer-encoding: chunked\r\n",
            b"a\r\n0123456789\r\n0\r\n\r\n",
        ),
        (
            b"GET http://origin.test/d HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
            "host: origin.test\r\n",
            b"",
        ),
    ];
    for (request, framing, body) in cases {
        let got = send_raw(&relay, request);
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got:?}");
        assert!(got.ends_with("\r\n\r\nok"), "{got:?}");
        let s = seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the origin saw it");
        let head = s.head.to_ascii_lowercase();
        assert!(head.contains(&format!("\r\n{framing}")), "{head:?}");
        assert!(head.contains("\r\nhost: origin.test\r\n"), "{head:?}");
        assert!(!head.contains("evil.test"), "{head:?}");
        for name in ["content-length:", "transfer-encoding:", "host:"] {
            assert!(head.matches(name).count() <= 1, "one {name} {head:?}");
        }
        assert!(
            !(head.contains("content-length:") && head.contains("transfer-encoding:")),
            "{head:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&s.body),
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn ambiguous_response_framing_is_502() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let (addr, _seen) = raw_origin(answer, true);
        let (_gw, relay) = relay_to(addr);
        let got = send_raw(&relay, b"GET http://origin.test/ HTTP/1.1\r\n\r\n");
        assert!(
            got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{:?} got {got:?}",
            String::from_utf8_lossy(answer)
        );
        assert!(!got.contains("hello"), "{got:?}");
    }
}

#[test]
fn loose_response_framing_reaches_the_client_normalised() {
    let cases: [(&'static [u8], &str, &str); 3] = [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5 \r\nhello\r\n0\r\nContent-Length: 7\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
            "hello",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2;x=y\r\nhi\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            "2\r\nhi\r\n0\r\n\r\n",
        ),
    ];
    for (answer, head, body) in cases {
        let (addr, _seen) = raw_origin(answer, true);
        let (_gw, relay) = relay_to(addr);
        let got = send_raw(&relay, b"GET http://origin.test/ HTTP/1.1\r\n\r\n");
        assert_eq!(
            got,
            format!("{head}{body}"),
            "{:?}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[test]
fn an_early_answer_to_an_unsent_body_reaches_the_client() {
    // The origin answers after the head and closes: the client, which
    // announced a body it never sends, gets that answer at once.
    let (addr, seen) = raw_origin(
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n",
        false,
    );
    let (_gw, relay) = relay_to(addr);
    let mut c = relay.connect();
    c.write_all(
        b"POST http://origin.test/up HTTP/1.1\r\nContent-Length: 1000000\r\n\r\nfirst bytes",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("the relay closes after the answer");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 413 Content Too Large\r\n"),
        "{got:?}"
    );
    assert!(got.ends_with("\r\n\r\ntoo big\n"), "{got:?}");
    // Well inside the 30 s the relay waits for a body.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(seen.recv_timeout(Duration::from_secs(1)).is_ok());
}

/// A gateway mapping `origin.test:80` to `origin` and a relay with `args`.
fn relay_with(origin: std::net::SocketAddr, args: &[&str]) -> (DevGateway, RelayProcess) {
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin));
    let mut opts = RelayOptions::default();
    for a in args {
        opts = opts.arg(*a);
    }
    let relay = RelayProcess::serve(&gw, opts);
    (gw, relay)
}

/// Reads until the relay closes, failing (rather than hanging) past `limit`.
fn read_all_within(c: &mut std::net::TcpStream, limit: Duration) -> String {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let r = c.read_to_end(&mut got);
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "no close from the relay within {limit:?} ({r:?}); got {:?}",
        String::from_utf8_lossy(&got)
    );
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn expect_continue_post_always_gets_its_body_echoed() {
    // The development origin's /echo writes its head before it reads the
    // body: the relay sees the answer begin while the client, told
    // 100 Continue, is about to send. The body must still go on.
    let origin = DevOrigin::start(None);
    let (_gw, relay) = relay_with(origin.addr, &[]);
    for i in 0..50 {
        let mut c = relay.connect();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(
            b"POST http://origin.test/echo HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let interim = String::from_utf8(read_head(&mut c).unwrap()).unwrap();
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue\r\n"),
            "{i}: {interim:?}"
        );
        c.write_all(b"hello").unwrap();
        let got = read_all_within(&mut c, Duration::from_secs(20));
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{i}: {got:?}");
        assert!(
            got.to_ascii_lowercase()
                .contains("\r\ncontent-length: 5\r\n"),
            "{i}: {got:?}"
        );
        assert!(got.ends_with("\r\n\r\nhello"), "iteration {i}: {got:?}");
    }
}

/// An origin that answers each connection's first request head with
/// `partial` and then holds the connection open, silent, for `hold`.
fn stalling_origin(partial: &'static [u8], hold: Duration) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                if read_head(&mut conn).is_ok() && conn.write_all(partial).is_ok() {
                    std::thread::sleep(hold);
                }
            });
        }
    });
    addr
}

#[test]
fn a_stalled_response_head_gets_504_within_the_bound() {
    let origin = stalling_origin(b"HTTP/1.1 200 OK\r\nContent-Le", Duration::from_secs(60));
    let (_gw, relay) = relay_with(origin, &["--response-timeout", "2"]);
    let mut c = relay.connect();
    c.write_all(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let got = read_all_within(&mut c, Duration::from_secs(30));
    let took = started.elapsed();
    assert!(
        got.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
        "{got:?}"
    );
    assert!(
        got.contains("the origin origin.test:80 sent no complete response head in time"),
        "{got:?}"
    );
    assert!(
        !got.contains("Content-Le\r\n"),
        "the partial head leaked: {got:?}"
    );
    // 2 s bound; generous margins either way for a loaded machine.
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn a_response_head_cut_off_by_the_origin_is_502_naming_the_origin() {
    let (addr, _seen) = raw_origin(b"HTTP/1.1 200 OK\r\nContent-Le", false);
    let (_gw, relay) = relay_to(addr);
    let mut c = relay.connect();
    c.write_all(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .unwrap();
    let got = read_all_within(&mut c, Duration::from_secs(30));
    assert!(got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{got:?}");
    assert!(
        got.contains("the origin origin.test:80 closed before its response head was complete"),
        "{got:?}"
    );
    assert!(!got.contains("client closed"), "{got:?}");
}

/// An origin answering every request head on a connection with `answer`,
/// keeping the connection open; counts connections.
fn answering_origin(
    answer: &'static [u8],
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = conns.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                while read_head(&mut conn).is_ok() {
                    if conn.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

const TWO_REQUESTS: &[u8] = b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n\r\n\
GET http://origin.test/b HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n";

#[test]
fn a_response_with_both_framings_is_502_and_smuggles_nothing() {
    let (addr, _conns) = answering_origin(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSMUGGL",
    );
    let (_gw, relay) = relay_to(addr);
    let mut c = relay.connect();
    c.write_all(TWO_REQUESTS).unwrap();
    let got = read_all_within(&mut c, Duration::from_secs(30));
    assert!(got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{got:?}");
    assert!(
        got.contains("both Content-Length and Transfer-Encoding"),
        "{got:?}"
    );
    assert_eq!(
        got.matches("HTTP/1.1 ").count(),
        1,
        "one answer, then close: {got:?}"
    );
    assert!(!got.contains("SMUGGL"), "{got:?}");
}

#[test]
fn bytes_beyond_a_response_never_answer_the_next_request() {
    let (addr, conns) = answering_origin(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSMUGGL",
    );
    let (gw, relay) = relay_to(addr);
    let mut c = relay.connect();
    c.write_all(TWO_REQUESTS).unwrap();
    let got = read_all_within(&mut c, Duration::from_secs(30));
    assert_eq!(
        got.matches("HTTP/1.1 204 No Content\r\n").count(),
        2,
        "each request answered by its own 204: {got:?}"
    );
    assert!(
        !got.contains("200 OK") && !got.contains("SMUGGL"),
        "{got:?}"
    );
    // The second request went through a fresh tunnel to a fresh connection.
    assert_eq!(
        gw.count_events("connect origin.test:80"),
        2,
        "{:?}",
        gw.events()
    );
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn a_fragment_in_the_target_is_400_naming_it() {
    let (addr, seen) = raw_origin(OK_CLOSE, false);
    let (_gw, relay) = relay_to(addr);
    for target in ["http://127.0.0.1:18999#f", "http://origin.test/a#f"] {
        let mut c = relay.connect();
        c.write_all(format!("GET {target} HTTP/1.1\r\nHost: origin.test\r\n\r\n").as_bytes())
            .unwrap();
        let got = read_all_within(&mut c, Duration::from_secs(30));
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{target}: {got:?}"
        );
        assert!(got.contains("fragment"), "{target}: {got:?}");
        assert!(!got.contains("bad port"), "{target}: {got:?}");
    }
    assert!(seen.recv_timeout(Duration::from_millis(300)).is_err());
}
