//! Faults around a busy relay, through the real binaries: SIGTERM with
//! 200 busy tunnels, the gateway killed in the middle of 50 downloads, a
//! gateway that stops reading while its client keeps sending, a client
//! that resets mid-download and one that never reads. In every case the
//! tunnel ends within its bound, the relay keeps serving the others, and
//! no thread is left behind.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::faults::{self, DeafGateway, baseline, eventually, reset};
use ccr_integration::relay::{
    ESTABLISHED, RelayOptions, RelayProcess, duplex_echo, read_head, read_response,
};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions};

const WAIT: Duration = Duration::from_secs(10);

/// What the relay promises after SIGTERM however busy it is: exit within
/// 2 s (its shutdown grace, `Limits::shutdown_grace`, is 1.5 s; an exit
/// typically takes 0.2 s with 200 busy tunnels).
const SHUTDOWN_BOUND: Duration = Duration::from_secs(2);

/// How long a tunnel whose far side is gone may take to end (the 2 s
/// linger at most, plus room for a loaded machine).
const END_BOUND: Duration = Duration::from_secs(5);

/// A relay in front of a development gateway mapping `origin.test:80` to a
/// plain development origin.
fn setup(relay_opts: RelayOptions) -> (DevOrigin, DevGateway, RelayProcess) {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let relay = RelayProcess::serve(&gw, relay_opts);
    (origin, gw, relay)
}

/// Waits until the relay is back to `threads` threads (at most `bound`);
/// how long that took, or a panic naming the count.
fn threads_back(relay: &RelayProcess, threads: usize, bound: Duration) -> Duration {
    let started = Instant::now();
    assert!(
        eventually(bound, || relay.threads_and_fds().0 <= threads),
        "threads left behind: {:?} (threads, fds) now, {threads} threads before",
        relay.threads_and_fds()
    );
    started.elapsed()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("the relay is running and has a VmRSS line")
}

/// Opens a tunnel to `origin.test:80` without panicking (for worker
/// threads): the client socket after the gateway's `200`.
fn open(proxy: SocketAddr) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(WAIT))?;
    s.set_write_timeout(Some(WAIT))?;
    s.write_all(b"CONNECT origin.test:80 HTTP/1.1\r\nHost: origin.test:80\r\n\r\n")?;
    let head = read_head(&mut s)?;
    if head != ESTABLISHED {
        return Err(io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(s)
}

/// Starts a download of `len` pattern bytes at `rate` bytes a second in
/// the tunnel `s` and reads the origin's `200` head.
fn start_download(s: &mut TcpStream, len: u64, rate: u64) -> io::Result<()> {
    write!(
        s,
        "GET /slow/{len}?rate={rate} HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    )?;
    let head = read_head(s)?;
    if !head.starts_with(b"HTTP/1.1 200 OK\r\n") {
        return Err(io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(())
}

/// Whether a read or write error means "the connection ended" (reset,
/// broken pipe) rather than "nothing happened in time".
fn is_end(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Reads `s` until it ends (EOF or reset), counting into `moved`; when it
/// ended, or `None` when a read timed out first (the connection hung).
fn read_until_end(s: &mut TcpStream, moved: &AtomicU64) -> Option<Instant> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(Instant::now()),
            Ok(n) => {
                moved.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_end(&e) => return Some(Instant::now()),
            Err(_) => return None,
        }
    }
}

/// Bytes waiting unread in `s`'s receive queue.
fn queued(s: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD on an open socket writes one int.
    unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    n.max(0) as usize
}

/// One short exchange through a fresh tunnel: the relay still serves.
fn hello(relay: &RelayProcess) {
    let mut c = relay.connect_tunnel("origin.test:80");
    c.write_all(b"GET /hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut c).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, b"hello from origin\n");
}

// ---------------------------------------------------------------------------
// Stop under load
// ---------------------------------------------------------------------------

/// What one busy client saw.
struct Busy {
    /// Bytes it moved (downloaded or uploaded).
    moved: Arc<AtomicU64>,
    /// When its connection ended; `None` when it hung instead.
    worker: thread::JoinHandle<Option<Instant>>,
}

/// A client streaming through its own tunnel: a download it reads as it
/// comes, or an upload it writes at `RATE`, until the connection ends.
fn busy_client(proxy: SocketAddr, download: bool) -> Busy {
    const RATE: u64 = 128 * 1024;
    const LEN: u64 = 1 << 30;
    let moved = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&moved);
    let worker = thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut s = open(proxy).expect("open a tunnel");
            if download {
                start_download(&mut s, LEN, RATE).expect("start a download");
                return read_until_end(&mut s, &counter);
            }
            write!(
                s,
                "POST /count HTTP/1.1\r\nHost: origin.test\r\nContent-Length: {LEN}\r\n\r\n"
            )
            .expect("send the upload's head");
            let block = vec![0x42u8; 16 * 1024];
            let started = Instant::now();
            loop {
                match s.write(&block) {
                    Ok(n) => {
                        let sent = counter.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        let due = Duration::from_secs_f64(sent as f64 / RATE as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            thread::sleep(wait);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if is_end(&e) => return Some(Instant::now()),
                    Err(_) => return None,
                }
            }
        })
        .expect("spawn a client thread");
    Busy { moved, worker }
}

#[test]
fn sigterm_with_200_busy_tunnels_exits_0_within_the_grace_and_ends_every_client() {
    const TUNNELS: usize = 200;
    let (_origin, gw, mut relay) = setup(RelayOptions::default().rust_log("warn"));
    let busy: Vec<Busy> = (0..TUNNELS)
        .map(|i| busy_client(relay.proxy_addr, i % 2 == 0))
        .collect();
    // Every tunnel is moving bytes, and keeps moving them.
    let flowing = |at_least: u64| {
        busy.iter()
            .all(|b| b.moved.load(Ordering::Relaxed) >= at_least)
    };
    assert!(
        eventually(Duration::from_secs(30), || flowing(32 * 1024)),
        "not every tunnel is streaming: {} of {TUNNELS}",
        busy.iter()
            .filter(|b| b.moved.load(Ordering::Relaxed) >= 32 * 1024)
            .count()
    );
    let before: Vec<u64> = busy
        .iter()
        .map(|b| b.moved.load(Ordering::Relaxed))
        .collect();
    assert!(
        eventually(WAIT, || busy
            .iter()
            .zip(&before)
            .all(|(b, was)| b.moved.load(Ordering::Relaxed) > *was)),
        "some tunnels stopped moving before the signal"
    );
    assert_eq!(gw.count_events("tunnel-end"), 0, "a tunnel ended early");

    let signalled = Instant::now();
    let (status, took) = relay.terminate(SHUTDOWN_BOUND).unwrap_or_else(|| {
        panic!(
            "still running {SHUTDOWN_BOUND:?} after SIGTERM with {TUNNELS} busy tunnels:\n{}",
            relay.stderr()
        )
    });
    assert!(status.success(), "exit status {status} after SIGTERM");
    eprintln!("relay exited {took:?} after SIGTERM with {TUNNELS} busy tunnels");

    let mut latest = Duration::ZERO;
    for (i, b) in busy.into_iter().enumerate() {
        let ended = b
            .worker
            .join()
            .unwrap_or_else(|_| panic!("client {i} panicked"))
            .unwrap_or_else(|| panic!("client {i}: its connection hung, no EOF or reset"));
        latest = latest.max(ended.saturating_duration_since(signalled));
    }
    eprintln!("the last client saw its connection end {latest:?} after SIGTERM");
    // A client notices only at its next read or write (an uploader writes
    // about every 125 ms): a little room beyond the relay's own bound.
    assert!(
        latest < SHUTDOWN_BOUND + Duration::from_millis(500),
        "a client saw its connection end only {latest:?} after SIGTERM"
    );
}

// ---------------------------------------------------------------------------
// The gateway killed mid-transfer
// ---------------------------------------------------------------------------

#[test]
fn gateway_killed_during_50_downloads_ends_them_all_and_a_new_gateway_is_served() {
    const DOWNLOADS: usize = 50;
    let origin = DevOrigin::start(None);
    let gw_opts = GatewayOptions::default().map("origin.test:80", origin.addr);
    let mut gw = DevGateway::start(gw_opts.clone());
    let gw_addr = gw.addr;
    let relay = RelayProcess::serve(&gw, RelayOptions::default());
    let (threads_before, _) = baseline(&relay);

    let proxy = relay.proxy_addr;
    let downloads: Vec<Busy> = (0..DOWNLOADS)
        .map(|_| {
            let moved = Arc::new(AtomicU64::new(0));
            let counter = Arc::clone(&moved);
            let worker = thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut s = open(proxy).expect("open a tunnel");
                    start_download(&mut s, 1 << 30, 256 * 1024).expect("start a download");
                    read_until_end(&mut s, &counter)
                })
                .expect("spawn a client thread");
            Busy { moved, worker }
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(30), || downloads
            .iter()
            .all(|d| d.moved.load(Ordering::Relaxed) >= 64 * 1024)),
        "not every download is flowing"
    );
    let (threads_busy, _) = relay.threads_and_fds();
    assert!(
        threads_busy >= threads_before + DOWNLOADS,
        "{threads_busy} threads with {DOWNLOADS} tunnels, {threads_before} before"
    );

    gw.child.child.kill().unwrap();
    gw.child.child.wait().unwrap();
    let killed = Instant::now();
    let mut latest = Duration::ZERO;
    for (i, d) in downloads.into_iter().enumerate() {
        let ended = d
            .worker
            .join()
            .unwrap_or_else(|_| panic!("download {i} panicked"))
            .unwrap_or_else(|| panic!("download {i}: its connection hung after the gateway died"));
        latest = latest.max(ended.saturating_duration_since(killed));
    }
    eprintln!("the last download ended {latest:?} after the gateway died");
    assert!(latest < END_BOUND, "a download ended only {latest:?} after");
    let took = threads_back(&relay, threads_before, END_BOUND);
    eprintln!("threads back to {threads_before} {took:?} after the downloads ended");

    // A new gateway on the same address: the relay dials it for the next
    // tunnel, and that tunnel carries bytes both ways.
    let gw2 = DevGateway::start(gw_opts.args(&["--listen", &gw_addr.to_string()]));
    assert_eq!(gw2.addr, gw_addr);
    duplex_echo(relay.connect_tunnel("origin.test:80"), 1 << 20);
    hello(&relay);
    assert!(eventually(WAIT, || gw2
        .count_events("tunnel-end origin.test:80")
        == 2));
    threads_back(&relay, threads_before, END_BOUND);
}

// ---------------------------------------------------------------------------
// A gateway that stops reading
// ---------------------------------------------------------------------------

/// A relay in front of a [`DeafGateway`] with the given upload stall.
fn deaf_setup(upload_stall: &str) -> (DevGateway, DeafGateway, RelayProcess) {
    faults::deaf_setup(&["--upload-stall", upload_stall])
}

/// What a client pushing into a deaf gateway saw.
struct Push {
    sent: u64,
    /// When the last write that took bytes returned.
    last_progress: Instant,
    /// When the connection ended (a write failed); `None` when `for_at_most`
    /// ran out or a write timed out first.
    ended: Option<Instant>,
}

/// Writes up to `total` bytes to `s` as fast as the relay takes them, for
/// at most `for_at_most`.
fn push(mut s: TcpStream, total: u64, for_at_most: Duration) -> Push {
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let block = vec![0x5Au8; 64 * 1024];
    let started = Instant::now();
    let mut out = Push {
        sent: 0,
        last_progress: started,
        ended: None,
    };
    while out.sent < total && started.elapsed() < for_at_most {
        match s.write(&block) {
            Ok(n) => {
                out.sent += n as u64;
                out.last_progress = Instant::now();
            }
            Err(e) if is_end(&e) => {
                out.ended = Some(Instant::now());
                break;
            }
            Err(_) => {}
        }
    }
    out
}

#[test]
fn a_deaf_gateway_keeps_relay_memory_flat_while_the_client_pushes_200_mib() {
    const TOTAL: u64 = 200 << 20;
    // The stall bound is far away: the client pushes for the whole time.
    let (_gw, _deaf, relay) = deaf_setup("600");
    let client = relay.connect_tunnel("deaf.test:443");
    let rss_before = vm_rss_kib(relay.pid());
    let pid = relay.pid();
    let peak = Arc::new(Mutex::new(rss_before));
    let sampling = Arc::new(AtomicU64::new(1));
    let sampler = {
        let (peak, sampling) = (Arc::clone(&peak), Arc::clone(&sampling));
        thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) == 1 {
                let now = vm_rss_kib(pid);
                let mut p = peak.lock().unwrap();
                *p = (*p).max(now);
                drop(p);
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let pushed = push(client.try_clone().unwrap(), TOTAL, Duration::from_secs(4));
    sampling.store(0, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = *peak.lock().unwrap();
    let growth = peak.saturating_sub(rss_before);
    eprintln!(
        "pushed {} KiB into a deaf gateway; relay RSS {rss_before} KiB, peak {peak} KiB",
        pushed.sent / 1024
    );
    assert!(pushed.ended.is_none(), "the tunnel ended early");
    assert!(
        pushed.sent > 64 * 1024,
        "only {} bytes went in: the tunnel never moved",
        pushed.sent
    );
    // Socket buffers on the way hold a few MiB at most; a relay that
    // queued the client's bytes would take (and hold) all 200 MiB.
    assert!(
        pushed.sent < TOTAL / 4,
        "the relay took {} bytes",
        pushed.sent
    );
    assert!(
        growth < 4 * 1024,
        "relay memory grew by {growth} KiB while the client pushed {} bytes",
        pushed.sent
    );
    reset(client);
}

#[test]
fn a_deaf_gateway_ends_the_tunnel_at_the_upload_stall_bound_and_says_so() {
    const STALL: Duration = Duration::from_secs(2);
    let (_gw, _deaf, relay) = deaf_setup("2");
    let (threads_before, _) = baseline(&relay);
    let client = relay.connect_tunnel("deaf.test:443");
    let started = Instant::now();
    let pushed = push(client, 200 << 20, Duration::from_secs(15));
    let ended = pushed.ended.unwrap_or_else(|| {
        panic!(
            "the client saw no end (EOF or reset) within 15 s ({} bytes pushed); relay (threads, fds) {:?}, {threads_before} threads before",
            pushed.sent,
            relay.threads_and_fds()
        )
    });
    let after_progress = ended.duration_since(pushed.last_progress);
    eprintln!(
        "tunnel ended {after_progress:?} after the relay last took bytes ({:?} after the start)",
        ended.duration_since(started)
    );
    // The relay's stall clock starts no later than the client's last
    // progress (its own last write to the gateway came first).
    assert!(
        after_progress < STALL + Duration::from_secs(3),
        "ended {after_progress:?} after the last progress"
    );
    relay.wait_for_log(WAIT, |l| {
        l.contains("tunnel deaf.test:443 closed") && l.contains("stall")
    });
    let mut status = relay.connect();
    status
        .write_all(b"GET /__agentproxy/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut page = Vec::new();
    let _ = status.read_to_end(&mut page);
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("upload_stalled") && page.contains("deaf.test"),
        "the status page does not record the stall:\n{page}"
    );
    threads_back(&relay, threads_before, END_BOUND);
}

// ---------------------------------------------------------------------------
// Clients that reset or never read
// ---------------------------------------------------------------------------

#[test]
fn a_client_resetting_mid_download_ends_its_tunnel_while_others_are_served() {
    let (_origin, gw, relay) = setup(RelayOptions::default());
    let (threads_before, _) = baseline(&relay);
    let mut client = relay.connect_tunnel("origin.test:80");
    start_download(&mut client, 1 << 30, 4 << 20).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 1 << 20 {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "the download ended at {got}");
        got += n;
    }
    // Another client is served while the download runs.
    let other = relay.connect_tunnel("origin.test:80");
    duplex_echo(other, 256 * 1024);
    let reset_at = Instant::now();
    reset(client);
    let took = threads_back(&relay, threads_before, END_BOUND);
    eprintln!("the reset tunnel's threads gone {took:?} after the reset");
    // The gateway's side ended too (the echo tunnel's end, and this one's).
    assert!(
        eventually(WAIT, || gw.count_events("tunnel-end origin.test:80") == 2),
        "{}",
        gw.events().join("\n")
    );
    assert!(reset_at.elapsed() < END_BOUND + WAIT);
    hello(&relay);
}

#[test]
fn a_client_that_never_reads_pins_only_its_own_tunnel_which_ends_when_it_goes() {
    let (_origin, gw, relay) = setup(RelayOptions::default());
    let (threads_before, _) = baseline(&relay);
    let mut client = relay.connect_tunnel("origin.test:80");
    // A download as fast as the origin can send it, never read: the relay
    // is soon blocked writing to this client.
    write!(
        client,
        "GET /bytes/{} HTTP/1.1\r\nHost: origin.test\r\n\r\n",
        1u64 << 32
    )
    .unwrap();
    let mut last = 0;
    assert!(
        eventually(WAIT, || {
            let now = queued(&client);
            let full = now >= 64 * 1024 && now == last;
            last = now;
            thread::sleep(Duration::from_millis(100));
            full
        }),
        "the client's receive queue never filled ({} bytes)",
        queued(&client)
    );
    let rss_blocked = vm_rss_kib(relay.pid());
    // Others are served meanwhile, both ways.
    duplex_echo(relay.connect_tunnel("origin.test:80"), 1 << 20);
    hello(&relay);
    // Backpressure: the blocked download did not pile up in the relay.
    thread::sleep(Duration::from_millis(500));
    let growth = vm_rss_kib(relay.pid()).saturating_sub(rss_blocked);
    assert!(growth < 8 * 1024, "relay memory grew by {growth} KiB");
    // The client goes, unread bytes and all (its kernel answers with a
    // reset): the tunnel ends at once and its threads are gone.
    assert!(eventually(WAIT, || gw
        .count_events("tunnel-end origin.test:80")
        == 2));
    drop(client);
    let took = threads_back(&relay, threads_before, END_BOUND);
    eprintln!("the unread tunnel's threads gone {took:?} after its client went");
    assert!(
        eventually(WAIT, || gw.count_events("tunnel-end origin.test:80") == 3),
        "{}",
        gw.events().join("\n")
    );
    hello(&relay);
}

#[test]
fn a_gateway_that_resets_mid_stream_ends_the_tunnel_and_the_relay_serves_on() {
    let gw = DevGateway::start(GatewayOptions::default());
    let resetting = DeafGateway::start_resetting(256 * 1024);
    let relay = RelayProcess::serve(
        &gw,
        RelayOptions {
            base_url: Some(format!("http://{}", resetting.addr)),
            ..RelayOptions::default()
        },
    );
    let (threads_before, _) = baseline(&relay);
    for round in 0..2 {
        // Each tunnel is answered, gets its data, then the gateway's RST.
        let mut s = open(relay.proxy_addr).expect("the tunnel is answered");
        let started = Instant::now();
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e) if is_end(&e) => break true,
                Err(_) => break false,
            }
        };
        assert!(ended, "round {round}: the client's connection did not end");
        assert!(
            started.elapsed() < END_BOUND,
            "round {round}: ended after {:?}",
            started.elapsed()
        );
        assert!(got > 0, "round {round}: some data came before the reset");
    }
    assert_eq!(resetting.answered(), 2, "the relay served a second tunnel");
    threads_back(&relay, threads_before, END_BOUND);
}
