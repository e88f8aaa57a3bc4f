//! Backpressure through the real relay: a client that reads slowly makes the
//! relay read the gateway slowly, so the relay's memory stays flat however
//! much the origin could send.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ccr_integration::pattern::PatternChecker;
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, bin_path, temp_dir};

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("relay is running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

#[test]
fn slow_reader_keeps_relay_memory_flat() {
    const TOTAL: u64 = 96 << 20;
    const RATE: u64 = 16 << 20; // bytes per second the client reads

    let dir = temp_dir("backpressure");
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("bulk.test:80", origin.addr));
    let token = dir.join("token");
    std::fs::write(&token, &gw.token).unwrap();
    let env_file = dir.join("relay.env");
    let mut relay = Command::new(bin_path("ccr-relay"))
        .args(["serve", "--base-url", &gw.base_url()])
        .arg("--token-file")
        .arg(&token)
        .arg("--ca-bundle")
        .arg(dir.join("ca-bundle.crt"))
        .arg("--env-file")
        .arg(&env_file)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("CCR_RELAY_INSTALL_ROOT", dir.join("root"))
        .env("CLAUDE_CODE_REMOTE", "1")
        .env("CCR_UPSTREAM_PROXY_ENABLED", "1")
        .env("CLAUDE_CODE_REMOTE_SESSION_ID", &gw.session_id)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the relay");
    let started = Instant::now();
    while !env_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "relay did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let env = std::fs::read_to_string(&env_file).unwrap();
    let proxy = env
        .lines()
        .find_map(|l| l.strip_prefix("export HTTPS_PROXY='http://"))
        .map(|v| v.trim_end_matches('\'').to_string())
        .expect("HTTPS_PROXY in the env file");

    let mut client = TcpStream::connect(&proxy).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client
        .write_all(b"CONNECT bulk.test:80 HTTP/1.1\r\nHost: bulk.test:80\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    let baseline = vm_rss_kib(relay.id());
    write!(
        client,
        "GET /bytes/{TOTAL} HTTP/1.1\r\nHost: bulk.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The response head, then the body at RATE.
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut checker = PatternChecker::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got: u64 = 0;
    let mut peak = baseline;
    let body_start = Instant::now();
    while got < TOTAL {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "download ended early at {got} bytes");
        checker.feed(&buf[..n]);
        got += n as u64;
        let due = Duration::from_secs_f64(got as f64 / RATE as f64);
        if let Some(wait) = due.checked_sub(body_start.elapsed()) {
            std::thread::sleep(wait);
        }
        if got % (4 << 20) < n as u64 {
            peak = peak.max(vm_rss_kib(relay.id()));
        }
    }
    checker
        .verify(TOTAL)
        .expect("downloaded bytes match the pattern");
    let growth = peak.saturating_sub(baseline);
    eprintln!("relay RSS: baseline {baseline} KiB, peak {peak} KiB, growth {growth} KiB");
    // Without backpressure the relay would buffer most of the 96 MiB the
    // origin can send in a fraction of the time the client takes to read it.
    assert!(
        growth < 16 * 1024,
        "relay memory grew by {growth} KiB while a slow client read {TOTAL} bytes"
    );
    let _ = relay.kill();
    let _ = relay.wait();
}
