//! Plain `http://` through the real relay: absolute-form requests are
//! forwarded through a tunnel to the origin, kept-alive connections reuse
//! their tunnel, chunked bodies arrive intact, and `HEAD` answers end where
//! they should.

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
