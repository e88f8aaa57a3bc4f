//! Selective mode's direct path against real sockets on private addresses:
//! `ccr_relay::proxy::direct::dial` and `Pipe` in a network namespace the test
//! creates.
//!
//! The direct path must reach private addresses (`10.x`) and must refuse
//! loopback and metadata addresses however they are named. To have a
//! `10.x` address to dial, and names that resolve where the test says, the
//! test re-executes itself (one `#[ignore]`d helper test) under
//! `unshare -n -m`: a fresh network namespace with `lo` up and a veth pair
//! (the kernel may lack the dummy device) carrying `10.77.0.1/24`, a
//! permanent neighbour entry for `10.77.0.99` whose frames nobody takes
//! (a black hole: connects there time out), and a private `/etc/hosts`
//! bind-mounted over the real one, visible only inside.
//!
//! `unshare` (util-linux) and `ip` (iproute2) are required: missing, the
//! test fails and names the package. Not root: it tries a user namespace
//! (`unshare -r`) and fails loudly if that is not allowed either.

use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::pattern::{PatternSource, verify_reader};
use ccr_integration::temp_dir;
use ccr_relay::proxy::direct::{self, DirectError, Pipe, PipeEnd, PipeOptions};
use ccr_relay::proxy::route::FailureKind;

/// Set in the environment of the re-executed helper.
const INNER: &str = "CCR_DIRECT_ROUTE_INNER";
const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const HOSTS: &str = "10.77.0.1 direct.test\n\
                     127.0.0.1 sneaky.test\n\
                     169.254.169.254 meta.test\n\
                     10.77.0.99 blackhole.test\n";

fn require_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    ccr_relay::sys::command::find_on_path(name, &path).unwrap_or_else(|| {
        panic!("{name} is needed by this test and is not on PATH: install the `{package}` package")
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn direct_dials_in_a_network_namespace() {
    require_tool("unshare", "util-linux");
    let ip = require_tool("ip", "iproute2");
    let dir = temp_dir("direct-route");
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, HOSTS).unwrap();
    let script = "set -e\n\
        \"$IP\" link set lo up\n\
        \"$IP\" link add d0 type veth peer name d1\n\
        \"$IP\" addr add 10.77.0.1/24 dev d0\n\
        \"$IP\" link set d0 up\n\
        \"$IP\" link set d1 up\n\
        \"$IP\" neigh replace 10.77.0.99 lladdr 02:00:00:00:00:99 dev d0 nud permanent\n\
        mount --bind \"$HOSTS\" /etc/hosts\n\
        exec \"$SELF\" inner_ --ignored --nocapture --test-threads=1\n";
    let mut cmd = Command::new("unshare");
    if !is_root() {
        cmd.arg("-r");
    }
    cmd.args([
        "-n",
        "-m",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
    ])
    .env("IP", &ip)
    .env("HOSTS", &hosts)
    .env("SELF", std::env::current_exe().unwrap())
    .env(INNER, "1");
    let out = cmd.output().expect("cannot run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "--- inner_direct_dials (private network namespace) stdout:\n{stdout}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the namespaced run failed: {:?}",
        out.status
    );
    for helper in [
        "inner_direct_dials",
        "inner_relay_routes_off_list_hosts_directly",
    ] {
        assert!(
            stdout.contains(&format!("{helper}: all checks passed")),
            "{helper} did not run its checks"
        );
    }
}

/// The relay binary in selective mode, inside the namespace: a host on
/// the include list goes through the development gateway, one off it is
/// dialled by the relay on its private address, byte-exact both ways, and
/// the gateway never hears of it.
#[test]
#[ignore = "run inside a network namespace by direct_dials_in_a_network_namespace"]
fn inner_relay_routes_off_list_hosts_directly() {
    use ccr_integration::relay::{BlindPki, RelayOptions, RelayProcess, read_head};
    use ccr_integration::{DevGateway, ServerKind};
    use std::io::{Read, Write};
    if std::env::var_os(INNER).is_none() {
        return;
    }
    let pki = BlindPki::new();
    let origin = pki.https_origin(&["origin.test"]);
    let plain_origin = ccr_integration::DevOrigin::start(None);
    let gw = DevGateway::start(
        pki.gateway_options(false)
            .agent_proxy(ServerKind::Late)
            .map("origin.test:443", origin.addr)
            .map("plain.test:80", plain_origin.addr),
    );
    let relay = RelayProcess::serve(
        &gw,
        RelayOptions::default()
            .agent_proxy()
            .env("CCR_AGENT_PROXY_RELAY_MODE", "selective")
            .env("CCR_AGENT_PROXY_INCLUDE_HOSTS", "origin.test,plain.test")
            // Short, for the stalled direct connection below; the echo
            // above moves its bytes long before it.
            .arg("--upload-stall")
            .arg("3"),
    );
    // An echo server on the private address.
    let listener = TcpListener::bind((PRIVATE, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 65536];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    for target in [format!("direct.test:{port}"), format!("10.77.0.1:{port}")] {
        let mut c = relay.connect();
        write!(c, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
        let head = read_head(&mut c).unwrap();
        if target.starts_with("10.") {
            // The echo server serves one connection: the second dial is
            // refused by the kernel, and the relay says so itself.
            assert!(
                head.starts_with(b"HTTP/1.1 502"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            continue;
        }
        assert_eq!(head, b"HTTP/1.1 200 Connection Established\r\n\r\n");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let writer = {
            let mut c = c.try_clone().unwrap();
            let data = data.clone();
            thread::spawn(move || {
                c.write_all(&data).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
            })
        };
        let mut back = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert!(back == data, "echo through the direct path differs");
    }
    assert_eq!(
        gw.count_events("connect "),
        0,
        "the gateway heard of a direct host"
    );
    plain_http_routing(&relay, &gw);
    direct_accounting(&relay);
    println!("inner_relay_routes_off_list_hosts_directly: all checks passed");
}

/// One plain-HTTP request through the relay on a connection of its own:
/// the answer's head and body (read to the end: the origins close).
fn plain_request(relay: &ccr_integration::relay::RelayProcess, url: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut c = relay.connect();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    write!(
        c,
        "GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    let got = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = got.split_once("\r\n\r\n").unwrap_or((&got, ""));
    (head.to_string(), body.to_string())
}

/// Plain HTTP follows CONNECT's routing: a host on the include list goes
/// through the gateway, one off it is dialled by the relay (the gateway
/// never hears of it), with the same refusals of local and metadata
/// addresses, by name and by the address a name resolves to.
fn plain_http_routing(
    relay: &ccr_integration::relay::RelayProcess,
    gw: &ccr_integration::DevGateway,
) {
    use std::io::{Read, Write};
    // An origin on the private address: answers with the request line it got.
    let listener = TcpListener::bind((PRIVATE, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let origin = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let line = text.lines().next().unwrap_or("").to_string();
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{line}",
            line.len()
        )
        .unwrap();
        text
    });
    let (head, body) = plain_request(relay, &format!("http://direct.test:{port}/direct/path?q=1"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "GET /direct/path?q=1 HTTP/1.1");
    let seen = origin.join().unwrap();
    assert!(
        seen.to_ascii_lowercase()
            .contains(&format!("\r\nhost: direct.test:{port}\r\n")),
        "{seen}"
    );
    assert_eq!(
        gw.count_events("connect direct.test"),
        0,
        "the gateway heard of a plain request to a host off the list"
    );
    println!("plain http off the list dialled directly: ok");

    // The same refusals as CONNECT's direct dial: by name, by the address
    // a name resolves to (a name that resolves to loopback is not
    // loopback: only `localhost`, `*.localhost` and the literals are), by
    // literal.
    for (url, why) in [
        (
            "http://ip6-localhost:8080/",
            "the name belongs to this machine",
        ),
        ("http://sneaky.test/", "the address is loopback"),
        (
            "http://meta.test/latest/meta-data/",
            "the address is link-local",
        ),
        ("http://0x7f.1/", "canonical dotted quad"),
    ] {
        let (head, body) = plain_request(relay, url);
        assert!(head.starts_with("HTTP/1.1 403"), "{url}: {head}\n{body}");
        assert!(body.contains(why), "{url}: {body}");
    }
    assert_eq!(
        gw.count_events("connect "),
        0,
        "a refused host reached the gateway"
    );
    println!("plain http direct refusals: ok");

    // A host on the list still goes through the gateway.
    let (head, body) = plain_request(relay, "http://plain.test/hello");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "hello from origin\n");
    assert_eq!(gw.count_events("connect plain.test:80"), 1);
    println!("plain http on the list through the gateway: ok");
}

/// The relay's status page (JSON), fetched directly.
fn status_json(relay: &ccr_integration::relay::RelayProcess) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(relay.proxy_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /__agentproxy/status HTTP/1.1\r\nHost: relay\r\n\r\n")
        .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    got.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// A number field of the pretty-printed status JSON.
fn json_num(body: &str, key: &str) -> u64 {
    let tag = format!("\"{key}\": ");
    let at = body
        .find(&tag)
        .unwrap_or_else(|| panic!("no {key} in {body}"));
    let rest = &body[at + tag.len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap();
    rest[..end].parse().unwrap()
}

/// Waits (bounded) for the status page to satisfy `pred`; returns it.
fn wait_status(
    relay: &ccr_integration::relay::RelayProcess,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = status_json(relay);
        if pred(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not on the page:\n{body}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Direct connections count every byte the client sent, those that came
/// with its CONNECT head included, and one cut short by a stalled or
/// resetting target is a recorded failure.
fn direct_accounting(relay: &ccr_integration::relay::RelayProcess) {
    use ccr_integration::relay::read_head;
    use std::io::{Read, Write};

    // Bytes in the same write as the head: the relay reads them with it.
    let listener = TcpListener::bind((PRIVATE, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let echo = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let before = json_num(&status_json(relay), "bytesUp");
    let mut c = relay.connect();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let early = b"sent-with-the-head";
    let mut opening = format!("CONNECT direct.test:{port} HTTP/1.1\r\n\r\n").into_bytes();
    opening.extend_from_slice(early);
    c.write_all(&opening).unwrap();
    assert_eq!(
        read_head(&mut c).unwrap(),
        b"HTTP/1.1 200 Connection Established\r\n\r\n"
    );
    let late = vec![b'x'; 1000];
    c.write_all(&late).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), early.len() + late.len(), "echoed back");
    echo.join().unwrap();
    let sent = (early.len() + late.len()) as u64;
    let line = relay.wait_for_log(Duration::from_secs(10), |l| {
        l.contains(&format!("direct direct.test:{port} closed: "))
    });
    assert!(
        line[0].contains(&format!("closed: up {sent} B, down {sent} B")),
        "{line:?}"
    );
    let body = wait_status(relay, "bytesUp", |b| {
        json_num(b, "bytesUp") >= before + sent
    });
    assert_eq!(json_num(&body, "bytesUp"), before + sent, "{body}");
    println!("direct bytes up counted with those sent with the head: ok");

    // A target that accepts and never reads: the stall bound (3 s) ends
    // the connection, recorded as upload_stalled.
    let listener = TcpListener::bind((PRIVATE, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let deaf = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let _ = hold_rx.recv_timeout(Duration::from_secs(60));
        drop(s);
    });
    let mut c = relay.connect();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(c, "CONNECT direct.test:{port} HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(
        read_head(&mut c).unwrap(),
        b"HTTP/1.1 200 Connection Established\r\n\r\n"
    );
    let writer = {
        let mut c = c.try_clone().unwrap();
        thread::spawn(move || {
            c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            let chunk = vec![7u8; 64 * 1024];
            let mut total = 0u64;
            // Until the relay gives up on the connection (bounded anyway).
            while total < 512 << 20 && c.write_all(&chunk).is_ok() {
                total += chunk.len() as u64;
            }
            total
        })
    };
    let host = format!("direct.test:{port}");
    let body = wait_status(relay, "upload_stalled", |b| {
        b.contains(&format!(
            "\"kind\": \"upload_stalled\",\n      \"host\": \"{host}\""
        ))
    });
    assert!(body.contains("target took no byte for 3s"), "{body}");
    let total = writer.join().unwrap();
    assert!(total < 512 << 20, "the relay kept taking bytes");
    let _ = hold_tx.send(());
    deaf.join().unwrap();
    println!("stalled direct connection recorded: ok");

    // A target that resets: recorded as direct_failed.
    let listener = TcpListener::bind((PRIVATE, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let resetter = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 5];
        let _ = s.read_exact(&mut buf);
        ccr_relay::sys::socket::reset_on_close(&s).unwrap();
        drop(s);
    });
    let mut c = relay.connect();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(c, "CONNECT direct.test:{port} HTTP/1.1\r\n\r\nhello").unwrap();
    assert_eq!(
        read_head(&mut c).unwrap(),
        b"HTTP/1.1 200 Connection Established\r\n\r\n"
    );
    resetter.join().unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let host = format!("direct.test:{port}");
    let body = wait_status(relay, "direct_failed", |b| {
        b.contains(&format!(
            "\"kind\": \"direct_failed\",\n      \"host\": \"{host}\""
        ))
    });
    assert!(body.contains("target connection failed"), "{body}");
    println!("reset direct connection recorded: ok");
}

/// A TCP pair on loopback: (far end the test drives, end the pipe gets).
fn client_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let far = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (near, _) = l.accept().unwrap();
    (far, near)
}

fn refused_kind(result: Result<TcpStream, DirectError>) -> (FailureKind, u16, String) {
    match result {
        Ok(s) => panic!("dial succeeded, to {:?}", s.peer_addr()),
        Err(e) => (e.kind(), e.status().0, e.to_string()),
    }
}

/// Dials `host` on the private address's listener and moves `up` bytes of
/// the pattern up and `down` bytes down through a pipe, checking both.
fn dial_and_pipe(host: &str, up: u64, down: u64) {
    let listener = TcpListener::bind((PRIVATE, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    // The target: reads everything to EOF (checked), then answers and closes.
    let target = thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let read = verify_reader(&mut s, up);
        PatternSource::new(64 * 1024)
            .write_range(&mut s, 0, down)
            .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        (read, peer)
    });
    let stream = direct::dial(host, port, direct::DIAL_TIMEOUT).unwrap();
    assert_eq!(stream.peer_addr().unwrap().ip(), IpAddr::V4(PRIVATE));
    let (client_far, client) = client_pair();
    let pipe = Pipe::new(client, stream, PipeOptions::default()).unwrap();
    let runner = {
        let pipe = Arc::clone(&pipe);
        thread::spawn(move || pipe.run())
    };
    let writer = {
        let mut c = client_far.try_clone().unwrap();
        thread::spawn(move || {
            PatternSource::new(64 * 1024)
                .write_range(&mut c, 0, up)
                .unwrap();
            c.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut c = client_far;
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(verify_reader(&mut c, down), Ok(()), "{host}: download");
    writer.join().unwrap();
    let (read, peer) = target.join().unwrap();
    assert_eq!(read, Ok(()), "{host}: upload");
    assert_eq!(peer.ip(), IpAddr::V4(PRIVATE));
    let report = runner.join().unwrap();
    assert!(matches!(report.end, PipeEnd::Closed), "{}", report.end);
    assert_eq!((report.up, report.down), (up, down));
    assert_eq!(pipe.bytes(), (up, down));
}

#[test]
#[ignore = "helper: run by direct_dials_in_a_network_namespace in a private network namespace"]
fn inner_direct_dials() {
    if std::env::var_os(INNER).is_none() {
        eprintln!(
            "inner_direct_dials is run by direct_dials_in_a_network_namespace; nothing to do"
        );
        return;
    }

    // A private literal and a name resolving to it: dialled, piped byte-exact.
    dial_and_pipe("10.77.0.1", 3 * 1024 * 1024 + 5, 2 * 1024 * 1024 + 17);
    dial_and_pipe("direct.test", 100_000, 1);
    println!("direct dial to a private address: ok");

    // A harmless-looking name resolving to loopback or to the metadata
    // address: refused by peer address, and nothing reaches the listener.
    let lo = TcpListener::bind("127.0.0.1:0").unwrap();
    lo.set_nonblocking(true).unwrap();
    let lo_port = lo.local_addr().unwrap().port();
    for host in ["sneaky.test", "127.0.0.1", "meta.test", "169.254.169.254"] {
        let (kind, code, text) = refused_kind(direct::dial(host, lo_port, Duration::from_secs(5)));
        assert_eq!(kind, FailureKind::DirectPeerBlocked, "{host}: {text}");
        assert_eq!(code, 403, "{host}");
        assert!(
            text.starts_with(&format!("direct connection to {host} refused: ")),
            "{text}"
        );
    }
    assert!(
        lo.accept().is_err(),
        "a refused dial reached the loopback listener"
    );
    println!("refused by peer: ok");

    // Refused by name and by non-canonical literal, whatever listens there.
    for host in [
        "localhost",
        "x.localhost",
        "0x7f.1",
        "2130706433",
        "0177.0.0.1",
        "127.1",
        "[::1]",
    ] {
        let (kind, code, text) = refused_kind(direct::dial(host, lo_port, Duration::from_secs(5)));
        assert_eq!(kind, FailureKind::DirectBlocked, "{host}: {text}");
        assert_eq!(code, 403, "{host}");
    }
    assert!(
        lo.accept().is_err(),
        "a refused dial reached the loopback listener"
    );
    let (kind, code, _) = refused_kind(direct::dial("direct.test", 0, Duration::from_secs(5)));
    assert_eq!((kind, code), (FailureKind::BadConnectPort, 400));
    println!("refused by name: ok");

    // A closed port: connection refused, 502, at once.
    let closed_port = {
        let l = TcpListener::bind((PRIVATE, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let (kind, code, text) = refused_kind(direct::dial(
        "10.77.0.1",
        closed_port,
        Duration::from_secs(5),
    ));
    assert_eq!((kind, code), (FailureKind::DirectDialFailed, 502), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // No route at all (the namespace has no default route): 502 as well.
    let (kind, code, text) = refused_kind(direct::dial("8.8.8.8", 443, Duration::from_secs(5)));
    assert_eq!((kind, code), (FailureKind::DirectDialFailed, 502), "{text}");
    println!("refused and unreachable: ok");

    // A black hole: the dial gives up at its bound with 504.
    for host in ["10.77.0.99", "blackhole.test"] {
        let started = Instant::now();
        let (kind, code, text) = refused_kind(direct::dial(host, 443, Duration::from_millis(1500)));
        let took = started.elapsed();
        assert_eq!(
            (kind, code),
            (FailureKind::DirectDialTimeout, 504),
            "{host}: {text}"
        );
        assert_eq!(text, "direct dial timed out");
        assert!(
            took >= Duration::from_millis(1400),
            "{host}: gave up early, {took:?}"
        );
        assert!(
            took < Duration::from_secs(6),
            "{host}: bound not kept, {took:?}"
        );
    }
    println!("black hole: ok");

    println!("inner_direct_dials: all checks passed");
}
