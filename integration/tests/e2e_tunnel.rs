//! CONNECT tunnels through the real `ccr-relay` binary: curl over `ws://`
//! and `wss://` gateways, verifying the origin with nothing but the bundle
//! the relay wrote; large transfers byte for byte; many tunnels at once;
//! both directions at full speed; keepalives and pings on idle tunnels.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ccr_integration::pattern::{self, PatternReader};
use ccr_integration::relay::{
    BlindPki, RelayOptions, RelayProcess, duplex_echo, read_response, run_relay,
};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, temp_dir};

const WAIT: Duration = Duration::from_secs(10);
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTPS origin for `origin.test` whose certificate the gateway's served
/// CA signed, and a blind gateway (over `wss://` when `tls`) mapping
/// `origin.test:443` to it.
fn https_setup(tls: bool) -> (BlindPki, DevOrigin, DevGateway, RelayOptions) {
    let pki = BlindPki::new();
    let origin = pki.https_origin(&["origin.test"]);
    let gw = DevGateway::start(pki.gateway_options(tls).map("origin.test:443", origin.addr));
    let mut opts = RelayOptions::default();
    if tls {
        opts = opts.gateway_ca(&pki.gateway_tls_ca_pem());
    }
    (pki, origin, gw, opts)
}

fn curl_hello(tls: bool) {
    let (_pki, _origin, gw, opts) = https_setup(tls);
    // No -k, no --cacert: curl trusts the origin through CURL_CA_BUNDLE,
    // the merged bundle the relay wrote, and reaches it through HTTPS_PROXY.
    let out = run_relay(
        &gw,
        &opts,
        &[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "20",
            "https://origin.test/hello",
        ],
        RUN_TIMEOUT,
    );
    out.assert_success();
    assert_eq!(out.stdout_text(), "hello from origin\n");
    let end = gw.wait_for_event_prefix("tunnel-end origin.test:443 ", WAIT);
    assert!(
        !end.contains(" in=0 "),
        "the TLS handshake went through: {end}"
    );
    assert!(
        out.stderr.contains("tunnel origin.test:443 closed: up "),
        "the relay logs the tunnel:\n{}",
        out.stderr
    );
}

#[test]
fn curl_https_through_relay_over_ws_gateway() {
    curl_hello(false);
}

#[test]
fn curl_https_through_relay_over_wss_gateway() {
    curl_hello(true);
}

#[test]
fn download_64_mib_byte_exact() {
    const LEN: u64 = 64 << 20;
    let (_pki, _origin, gw, opts) = https_setup(false);
    let dir = temp_dir("e2e-download");
    let file = dir.join("download.bin");
    let out = run_relay(
        &gw,
        &opts,
        &[
            "curl".as_ref(),
            "-sS".as_ref(),
            "--fail".as_ref(),
            "--max-time".as_ref(),
            "50".as_ref(),
            "-o".as_ref(),
            file.as_os_str(),
            format!("https://origin.test/bytes/{LEN}").as_ref(),
        ],
        RUN_TIMEOUT,
    );
    out.assert_success();
    pattern::verify_file(&file, LEN).expect("downloaded file is the pattern");
    eprintln!("64 MiB download through the relay: {:?}", out.elapsed);
}

#[test]
fn upload_64_mib_byte_exact() {
    const LEN: u64 = 64 << 20;
    let (_pki, _origin, gw, opts) = https_setup(false);
    let dir = temp_dir("e2e-upload");
    let file = dir.join("upload.bin");
    std::io::copy(
        &mut PatternReader::new(LEN),
        &mut std::fs::File::create(&file).unwrap(),
    )
    .unwrap();
    let data = format!("@{}", file.display());
    let out = run_relay(
        &gw,
        &opts,
        &[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "50",
            "-H",
            "Expect:",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &data,
            "https://origin.test/sha256",
        ],
        RUN_TIMEOUT,
    );
    out.assert_success();
    assert_eq!(
        out.stdout_text(),
        format!("len={LEN} sha256={}\n", pattern::sha256_hex(LEN))
    );
    eprintln!("64 MiB upload through the relay: {:?}", out.elapsed);
}

#[test]
fn fifty_parallel_tunnels() {
    const N: usize = 50;
    let (_pki, _origin, gw, opts) = https_setup(false);
    let dir = temp_dir("e2e-parallel");
    // Each response trickles for about half a second, so all 50 transfers
    // are in flight at once and curl cannot reuse a finished connection.
    let mut args: Vec<String> = [
        "curl",
        "-sS",
        "--fail",
        "--http1.1",
        "--max-time",
        "40",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "50",
    ]
    .map(String::from)
    .to_vec();
    let len = |i: usize| 100_000 + i as u64 * 1000;
    for i in 0..N {
        args.push("-o".into());
        args.push(dir.join(format!("{i}.bin")).to_string_lossy().into_owned());
        args.push(format!("https://origin.test/slow/{}?rate=250000", len(i)));
    }
    let out = run_relay(&gw, &opts, &args, RUN_TIMEOUT);
    out.assert_success();
    for i in 0..N {
        pattern::verify_file(&dir.join(format!("{i}.bin")), len(i))
            .unwrap_or_else(|e| panic!("transfer {i}: {e}"));
    }
    let tunnels = gw.count_events("connect origin.test:443");
    assert_eq!(tunnels, N, "one tunnel per transfer");
    // Done one after another they would take 50 x 0.4 s at least.
    assert!(
        out.elapsed < Duration::from_secs(15),
        "50 parallel transfers took {:?}",
        out.elapsed
    );
    let closed = out
        .stderr
        .lines()
        .filter(|l| l.contains("tunnel origin.test:443 closed: "))
        .count();
    assert_eq!(closed, N, "one log line per tunnel:\n{}", out.stderr);
}

/// A raw client writes 32 MiB while reading the 32 MiB echo, through the
/// real relay; returns MB/s.
fn full_duplex(tls: bool) -> f64 {
    const LEN: u64 = 32 << 20;
    let pki = BlindPki::new();
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(pki.gateway_options(tls).map("echo.test:443", origin.addr));
    let mut opts = RelayOptions::default();
    if tls {
        opts = opts.gateway_ca(&pki.gateway_tls_ca_pem());
    }
    let relay = RelayProcess::serve(&gw, opts);
    let client = relay.connect_tunnel("echo.test:443");
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mbps = duplex_echo(client, LEN);
    let end = gw.wait_for_event_prefix("tunnel-end echo.test:443 ", WAIT);
    // Everything the client wrote reached the origin: the request head and the body.
    let head_len = format!(
        "POST /echo HTTP/1.1\r\nHost: echo.test\r\nContent-Length: {LEN}\r\nConnection: close\r\n\r\n"
    )
    .len() as u64;
    assert!(end.contains(&format!(" in={} ", head_len + LEN)), "{end}");
    mbps
}

#[test]
fn full_duplex_32_mib_over_ws_gateway() {
    let mbps = full_duplex(false);
    eprintln!("ws:// full duplex through the relay: {mbps:.0} MB/s");
}

#[test]
fn full_duplex_32_mib_over_wss_gateway() {
    let mbps = full_duplex(true);
    eprintln!("wss:// full duplex through the relay: {mbps:.0} MB/s");
}

/// GET /hello over an open tunnel (keep-alive) and check the answer.
fn hello_over(client: &mut std::net::TcpStream) {
    client
        .write_all(b"GET /hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(client).expect("a response through the tunnel");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"hello from origin\n");
}

#[test]
fn idle_tunnel_sends_keepalives_and_still_works() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let relay = RelayProcess::serve(&gw, RelayOptions::default().arg("--keepalive").arg("0.3"));
    let mut client = relay.connect_tunnel("origin.test:80");
    let opened = Instant::now();
    // The idle period is the thing under test, not a synchronisation.
    std::thread::sleep(Duration::from_millis(1500));
    let keepalives = gw.count_events("keepalive");
    let idle = opened.elapsed().as_secs_f64();
    assert!(
        keepalives >= 3,
        "{keepalives} keepalive(s) in {idle:.2} s of idleness at 0.3 s; events:\n{}",
        gw.events().join("\n")
    );
    // At most one per interval (and some slack): not a flood.
    assert!(
        keepalives as f64 <= idle / 0.3 + 2.0,
        "{keepalives} keepalives in {idle:.2} s"
    );
    assert_eq!(gw.count_events("tunnel-end"), 0, "the tunnel stayed open");
    hello_over(&mut client);
    drop(client);
    gw.wait_for_event_prefix("tunnel-end origin.test:80 ", WAIT);
}

#[test]
fn gateway_pings_are_answered() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions {
        ping_every: Some(Duration::from_millis(200)),
        ..GatewayOptions::default().map("origin.test:80", origin.addr)
    });
    let relay = RelayProcess::serve(&gw, RelayOptions::default());
    let mut client = relay.connect_tunnel("origin.test:80");
    // An idle tunnel: the relay must answer pings without client traffic.
    let deadline = Instant::now() + WAIT;
    while gw.count_events("pong-received") < 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 pongs within {WAIT:?}; events:\n{}",
            gw.events().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gw.count_events("ping-sent") >= 3);
    hello_over(&mut client);
    let mut rest = Vec::new();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn bytes_after_the_connect_head_are_sent_first_and_in_order() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let relay = RelayProcess::serve(&gw, RelayOptions::default());
    let mut c = relay.connect();
    // One write: the CONNECT and the first request, as a TLS client sends
    // its ClientHello right behind the CONNECT.
    c.write_all(
        b"CONNECT origin.test:80 HTTP/1.1\r\nHost: origin.test:80\r\n\r\n\
          GET /bytes/3000 HTTP/1.1\r\nHost: origin.test\r\n\r\n\
          GET /hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        ccr_integration::relay::read_head(&mut c).unwrap(),
        ccr_integration::relay::ESTABLISHED
    );
    let (head, body) = read_response(&mut c).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    pattern::verify_reader(&body[..], 3000).unwrap();
    let (head, body) = read_response(&mut c).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, b"hello from origin\n");
}

#[test]
fn keepalives_go_out_while_only_the_download_streams() {
    const LEN: u64 = 1_500_000;
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let relay = RelayProcess::serve(&gw, RelayOptions::default().arg("--keepalive").arg("0.3"));
    let mut c = relay.connect_tunnel("origin.test:80");
    // About 1.5 s of download at 1 MB/s; the client sends nothing more.
    write!(
        c,
        "GET /slow/{LEN}?rate=1000000 HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let head = ccr_integration::relay::read_head(&mut c).unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
    pattern::verify_reader(&mut c, LEN).expect("the download is the pattern");
    let keepalives = gw.count_events("keepalive");
    // The relay has sent nothing for 1.5 s: the gateway's sidecar would
    // count that as silence from the relay's side.
    assert!(
        keepalives >= 3,
        "{keepalives} keepalive(s) during a 1.5 s download with an idle upload; events:\n{}",
        gw.events().join("\n")
    );
}

#[test]
fn client_half_close_still_gets_the_whole_response() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let relay = RelayProcess::serve(&gw, RelayOptions::default());
    let mut c = relay.connect_tunnel("origin.test:80");
    // The origin thinks for 0.3 s, then answers with a 1 MiB body.
    c.write_all(
        b"GET /idle/0.3 HTTP/1.1\r\nHost: origin.test\r\n\r\n\
          GET /bytes/1048576 HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    // Done sending, as `nc -N` or a shell pipe does; the answers must still
    // come. (No half-close exists in the chunk protocol: the relay may end
    // the tunnel once the gateway is done, but not before the answer.)
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let ended = c.read_to_end(&mut got);
    let end = gw.wait_for_event_prefix("tunnel-end origin.test:80 ", WAIT);
    let relay_line = relay.wait_for_log(WAIT, |l| l.contains(" closed: "));
    let context = format!(
        "read ended with {ended:?} after {} bytes; gateway: {end}; relay: {relay_line:?}",
        got.len()
    );
    let mut r = &got[..];
    let (head, body) = read_response(&mut r).unwrap_or_else(|e| panic!("{e}; {context}"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{context}");
    assert_eq!(body, b"idle\n", "{context}");
    let (head, body) = read_response(&mut r).unwrap_or_else(|e| panic!("{e}; {context}"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{context}");
    pattern::verify_reader(&body[..], 1 << 20).unwrap_or_else(|e| panic!("{e}; {context}"));
    assert!(r.is_empty(), "{context}");
}
