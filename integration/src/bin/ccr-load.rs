//! `make bench`, the load part: 1,000 concurrent tunnels each moving
//! 1 MiB both ways through the development gateway (checked byte for
//! byte), then 10,000 sequential short tunnels; the relay's threads, file
//! descriptors and resident memory must come back to their baseline. The
//! scaled-down version (200 / 2,000) runs in `make test`
//! (`integration/tests/e2e_attack.rs`). Resident memory must be back
//! within a small margin of its baseline afterwards (the relay returns
//! free heap memory when its last connection ends, `src/sys/heap.rs`), and the
//! sequential tunnels must not grow it.
//!
//! `ccr-load [CONCURRENT SEQUENTIAL]`; exits 1 when a tunnel failed or
//! something did not come back.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::relay::{ESTABLISHED, RelayOptions, RelayProcess, duplex_echo, read_head};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions};

/// Bytes each concurrent tunnel moves each way.
const LEN: u64 = 1 << 20;

/// How much the sequential tunnels may grow resident memory: churn must
/// not accumulate anything.
const RSS_MARGIN_KIB: u64 = 2 * 1024;

/// How far above its baseline resident memory may end: what stays is
/// live state (cached thread stacks, the gateway pool, grown tables), not
/// the burst's buffers.
const RSS_BASELINE_MARGIN_KIB: u64 = 4 * 1024;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let concurrent = args.first().copied().unwrap_or(1000);
    let sequential = args.get(1).copied().unwrap_or(10_000);
    match run(concurrent, sequential) {
        Ok(()) => {}
        Err(why) => {
            eprintln!("ccr-load: FAILED: {why}");
            std::process::exit(1);
        }
    }
}

/// `VmRSS` in KiB, threads and open descriptors of `pid`.
fn usage(pid: u32) -> (u64, usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (field("VmRSS:"), field("Threads:") as usize, fds)
}

fn open(proxy: SocketAddr) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.write_all(b"CONNECT origin.test:80 HTTP/1.1\r\n\r\n")?;
    let head = read_head(&mut s)?;
    if head != ESTABLISHED {
        return Err(io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(s)
}

fn short_tunnel(proxy: SocketAddr) -> io::Result<()> {
    let mut s = open(proxy)?;
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    if !answer.ends_with(b"hello from origin\n") {
        return Err(io::Error::other("wrong answer"));
    }
    Ok(())
}

/// Waits (up to 20 s) for threads and descriptors to be back at `base`;
/// the last reading.
fn settle(pid: u32, base: (u64, usize, usize)) -> (u64, usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = usage(pid);
        if (now.1 <= base.1 && now.2 <= base.2) || Instant::now() >= deadline {
            return now;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn run(concurrent: usize, sequential: usize) -> Result<(), String> {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let mut options = RelayOptions::default().rust_log("warn");
    // Allocator experiments (`GLIBC_TUNABLES=glibc.malloc.arena_max=2`)
    // reach the relay, whose environment is otherwise cleared.
    if let Ok(tunables) = std::env::var("GLIBC_TUNABLES") {
        options = options.env("GLIBC_TUNABLES", &tunables);
    }
    let relay = RelayProcess::serve(&gw, options);
    let proxy = relay.proxy_addr;
    let pid = relay.pid();
    // Warm up (allocator arenas, the first TLS-less tunnels), then settle.
    for _ in 0..20 {
        short_tunnel(proxy).map_err(|e| format!("warm-up tunnel: {e}"))?;
    }
    thread::sleep(Duration::from_secs(3));
    let base = usage(pid);
    println!(
        "baseline: {} KiB resident, {} threads, {} descriptors",
        base.0, base.1, base.2
    );

    let started = Instant::now();
    let workers: Vec<_> = (0..concurrent)
        .map(|_| {
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || -> Result<f64, String> {
                    let s = open(proxy).map_err(|e| e.to_string())?;
                    Ok(duplex_echo(s, LEN))
                })
                .map_err(|e| format!("cannot start a client thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let peak = usage(pid);
    let mut failed = 0;
    for w in workers {
        match w.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                failed += 1;
                eprintln!("tunnel failed: {e}");
            }
            Err(_) => failed += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{concurrent} concurrent tunnels, 1 MiB each way: {failed} failed, {secs:.1} s, \
         {:.0} MB/s in all; relay during: {} KiB, {} threads",
        2.0 * concurrent as f64 * LEN as f64 / secs / 1e6,
        peak.0,
        peak.1
    );
    let after_concurrent = settle(pid, base);

    let started = Instant::now();
    let mut seq_failed = 0;
    for _ in 0..sequential {
        if short_tunnel(proxy).is_err() {
            seq_failed += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{sequential} sequential tunnels: {seq_failed} failed, {secs:.1} s ({:.2} ms each)",
        secs * 1e3 / sequential.max(1) as f64
    );
    let after = settle(pid, base);
    println!(
        "after: {} KiB resident (+{} KiB), {} threads, {} descriptors \
         (after the concurrent tunnels: {} KiB, {} threads, {} descriptors)",
        after.0,
        after.0.saturating_sub(base.0),
        after.1,
        after.2,
        after_concurrent.0,
        after_concurrent.1,
        after_concurrent.2
    );
    let mut problems = Vec::new();
    if failed + seq_failed > 0 {
        problems.push(format!("{} tunnel(s) failed", failed + seq_failed));
    }
    if after.1 > base.1 || after.2 > base.2 {
        problems.push("threads or descriptors left behind".to_string());
    }
    if after.0 > base.0 + RSS_BASELINE_MARGIN_KIB {
        problems.push(format!(
            "resident memory {} KiB above its baseline after the tunnels",
            after.0 - base.0
        ));
    }
    if after.0 > after_concurrent.0 + RSS_MARGIN_KIB {
        problems.push(format!(
            "resident memory grew {} KiB over the sequential tunnels",
            after.0 - after_concurrent.0
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
