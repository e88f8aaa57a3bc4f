//! The development origin on its own, through real `curl` where a client
//! matters (keep-alive, HTTPS with a test CA, chunked uploads).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use ccr_integration::pattern;
use ccr_integration::pki::TestCa;
use ccr_integration::{DevOrigin, temp_dir};

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn routes_over_http_with_keep_alive() {
    let origin = DevOrigin::start(None);
    let base = format!("http://{}", origin.addr);
    assert_eq!(curl(&[&format!("{base}/hello")]), b"hello from origin\n");

    // Two requests on one connection, the pattern checked byte for byte.
    let dir = temp_dir("origin-http");
    let file = dir.join("bytes");
    let out = Command::new("curl")
        .args(["-sS", "-v", "--fail", "-o"])
        .arg(&file)
        .arg(format!("{base}/bytes/3000000"))
        .arg("-o")
        .arg(dir.join("hello"))
        .arg(format!("{base}/hello"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Re-using existing connection"), "{log}");
    pattern::verify_file(&file, 3_000_000).unwrap();

    // Uploads: chunked echo and digests.
    let upload = dir.join("upload");
    std::fs::write(&upload, vec![7u8; 1_000_001]).unwrap();
    let at_upload = format!("@{}", upload.display());
    let echoed = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &at_upload,
        &format!("{base}/echo"),
    ]);
    assert!(echoed == vec![7u8; 1_000_001], "echo differs");
    let digest = curl(&["--data-binary", &at_upload, &format!("{base}/sha256")]);
    let want = pattern::hex(&openssl::sha::sha256(&vec![7u8; 1_000_001]));
    assert_eq!(
        String::from_utf8(digest).unwrap(),
        format!("len=1000001 sha256={want}\n")
    );
    assert_eq!(
        curl(&["--data-binary", &at_upload, &format!("{base}/count")]),
        b"len=1000001\n"
    );

    let headers =
        String::from_utf8(curl(&["-H", "X-Injected: yes", &format!("{base}/headers")])).unwrap();
    assert!(headers.starts_with("GET /headers HTTP/1.1\n"), "{headers}");
    assert!(headers.contains("\nX-Injected: yes"), "{headers}");

    let started = std::time::Instant::now();
    let slow = curl(&[&format!("{base}/slow/20000?rate=40000")]);
    assert_eq!(slow.len(), 20000);
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    assert_eq!(curl(&[&format!("{base}/idle/0.1")]), b"idle\n");

    let mut s = TcpStream::connect(origin.addr).unwrap();
    s.write_all(b"GET /nothing-here HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
}

#[test]
fn https_with_a_test_ca_certificate() {
    let dir = temp_dir("origin-tls");
    let ca = TestCa::new(dir.path()).unwrap();
    let (cert, key) = ca.issue_leaf(&["origin.test"]);
    let origin = DevOrigin::start(Some((&cert, &key)));
    let port = origin.port();
    let resolve = format!("origin.test:{port}:127.0.0.1");
    let cacert = ca.cert_path();
    let cacert = cacert.to_str().unwrap();
    let url = format!("https://origin.test:{port}/hello");
    assert_eq!(
        curl(&["--cacert", cacert, "--resolve", &resolve, &url]),
        b"hello from origin\n"
    );
    // By address too: the leaf names 127.0.0.1.
    let url = format!("https://127.0.0.1:{port}/bytes/100000");
    let body = curl(&["--cacert", cacert, &url]);
    pattern::verify_reader(&body[..], 100_000).unwrap();
}
