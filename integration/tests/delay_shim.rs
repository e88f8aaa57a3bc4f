//! `ccr-delay-shim` holds bytes for its delay in each direction: a one-byte
//! echo through it takes at least twice the delay, and the end of the
//! stream passes through too.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::{ChildGuard, bin_path, temp_dir};

const DELAY_MS: u64 = 150;

#[test]
fn echo_round_trip_takes_twice_the_delay() {
    // An echo server: every byte back, then the end of the stream.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    thread::spawn(move || {
        for conn in echo.incoming().flatten() {
            thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let dir = temp_dir("delay-shim");
    let mut cmd = Command::new(bin_path("ccr-delay-shim"));
    cmd.arg("--target")
        .arg(echo_addr.to_string())
        .arg("--delay-ms")
        .arg(DELAY_MS.to_string());
    let (_shim, addr) = ChildGuard::spawn_listening(cmd, dir.join("stderr.log"));

    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.set_nodelay(true).unwrap();
    let min = Duration::from_millis(2 * DELAY_MS);
    for byte in [b'x', b'y'] {
        let started = Instant::now();
        conn.write_all(&[byte]).unwrap();
        let mut got = [0u8; 1];
        conn.read_exact(&mut got).unwrap();
        let took = started.elapsed();
        assert_eq!(got, [byte]);
        assert!(took >= min, "round trip took {took:?}, less than {min:?}");
        assert!(took < Duration::from_secs(5), "round trip took {took:?}");
    }
    // Half-close passes through (delayed), and the echo's end comes back.
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}
