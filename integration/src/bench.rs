//! `ccr-bench` (what `make bench` runs, release build): the relay's figures,
//! measured on this machine against local baselines in one run, so that
//! ratios are comparable even when absolute numbers are noisy.
//!
//! Everything is local: curl (or this process) → `ccr-relay serve` →
//! development gateway over `ws://` (blind mode) → HTTPS development origin
//! whose certificate the gateway's CA issued.
//!
//! | row | how |
//! |---|---|
//! | a. throughput | curl downloads `/bytes/N` (1 GiB) straight from the origin, then through the relay (`-x`, `--cacert` the merged bundle); `%{speed_download}` of each and the ratio |
//! | b. CPU per GiB | the relay's `utime + stime` (`/proc/PID/stat`) over that download, against `socat -b 262144` relaying the same download (its rusage from `wait4`) |
//! | c. latency | 1,000 sequential CONNECTs by this process, time from `connect()` to the whole `HTTP/1.1 200` head |
//! | d. memory | a fresh relay's `VmRSS` before and after 200 tunnels are opened and left idle (CONNECT only, then with a TLS handshake to the origin through each), per tunnel; the relay's thread count then |
//! | e. agent proxy latency | 200 sequential tunnels per case, `ccr-delay-shim` (20 ms each way) between relay and gateway: `ws://` and `wss://`, each WebSocket reused from the pool (late v2) or fresh (an early-v2 gateway, which pools nothing); p50 and p99 in ms and RTTs (module `bench_agent.rs`) |
//! | f. pooled memory | fresh relays: `VmRSS` with 4 idle WebSockets pooled against the same relay after the same 4 concurrent tunnels ended without pooling; per WebSocket, median of the rounds |
//!
//! Prints the table, writes it to `BENCH.md` at the workspace root with the
//! date and the machine, and exits 0 unless a measurement could not run (a
//! missed target is a finding, not a failure).

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::ssl::{SslConnector, SslMethod, SslStream};

#[path = "bench_agent.rs"]
mod agent;
#[path = "bench_warm.rs"]
mod warm;

use crate::demo::{install_quiet_panic_hook, take_panic_message};
use crate::relay::{BlindPki, RelayOptions, RelayProcess};
use crate::{DevGateway, DevOrigin};

const GIB: u64 = 1 << 30;

const USAGE: &str = "\
usage: ccr-bench [--size BYTES] [--rounds N] [--connects N] [--idle N]
                 [--tunnels N] [--delay-ms D] [--pool-rounds N] [--warm-tunnels N]
                 [--warm-idle SECS] [--rows LETTERS] [--out PATH]

Measures ccr-relay (release build: run `make bench`) against local baselines
and prints a table; also writes it to BENCH.md at the workspace root
(--out PATH: elsewhere; --out -: nowhere). Defaults: --size 1073741824
and --rounds 3 (the downloads of rows a and b, each figure the median of
the rounds), --connects 1000 (row c), --idle 200 (row d), --tunnels 200
and --delay-ms 20 (row e: sequential agent-proxy tunnels per case, with
the delay shim holding every byte D ms each way between relay and
gateway), --pool-rounds 5 (row f: fresh relays whose pool is measured),
--warm-tunnels 5 and --warm-idle 12 (row h: tunnels each after that many
seconds of idle, through the same delay shim).
--rows LETTERS runs only those rows (e.g. --rows ef; a and b go together).
Needs curl; socat for the CPU baseline (row b is SKIPPED without it).
";

/// What the command line asks for.
#[derive(Debug)]
struct Options {
    size: u64,
    connects: usize,
    idle: usize,
    rounds: usize,
    tunnels: usize,
    delay_ms: u64,
    pool_rounds: usize,
    warm_tunnels: usize,
    warm_idle_secs: u64,
    /// Which rows to run (letters a to h).
    rows: String,
    out: Option<PathBuf>,
}

impl Options {
    fn runs(&self, row: char) -> bool {
        self.rows.contains(row)
    }
}

impl Options {
    fn parse(args: Vec<String>) -> Result<Option<Options>, String> {
        let mut o = Options {
            size: GIB,
            connects: 1000,
            idle: 200,
            rounds: 3,
            tunnels: 200,
            delay_ms: 20,
            pool_rounds: 5,
            warm_tunnels: 5,
            warm_idle_secs: 12,
            rows: "abcdefgh".into(),
            out: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCH.md")),
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value"));
            let number = |v: String| {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("{flag} {v:?}: expected a positive number"))
            };
            match flag.as_str() {
                "--help" | "-h" => return Ok(None),
                "--size" => o.size = number(value()?)?,
                "--connects" => o.connects = number(value()?)? as usize,
                "--idle" => o.idle = number(value()?)? as usize,
                "--rounds" => o.rounds = number(value()?)? as usize,
                "--tunnels" => o.tunnels = number(value()?)? as usize,
                "--delay-ms" => o.delay_ms = number(value()?)?,
                "--pool-rounds" => o.pool_rounds = number(value()?)? as usize,
                "--warm-tunnels" => o.warm_tunnels = number(value()?)? as usize,
                "--warm-idle" => o.warm_idle_secs = number(value()?)?,
                "--rows" => {
                    let v = value()?;
                    if v.is_empty() || !v.chars().all(|c| ('a'..='h').contains(&c)) {
                        return Err(format!("--rows {v:?}: expected letters a to h"));
                    }
                    o.rows = v;
                }
                "--out" => {
                    let v = value()?;
                    o.out = (v != "-").then(|| PathBuf::from(v));
                }
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        Ok(Some(o))
    }
}

/// How a row came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Miss,
    /// A figure without a target (a baseline, a detail).
    Info,
    /// Not measured, and said so loudly.
    Skipped,
    /// The measurement could not run.
    Failed,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Info => "",
            Verdict::Skipped => "SKIPPED",
            Verdict::Failed => "FAILED",
        }
    }
}

struct Row {
    what: String,
    value: String,
    target: String,
    verdict: Verdict,
}

fn info(what: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        what: what.into(),
        value: value.into(),
        target: String::new(),
        verdict: Verdict::Info,
    }
}

/// A row with a target: `Pass` when `ok`.
fn judged(what: impl Into<String>, value: String, target: &str, ok: bool) -> Row {
    Row {
        what: what.into(),
        value,
        target: target.into(),
        verdict: if ok { Verdict::Pass } else { Verdict::Miss },
    }
}

fn failed(what: impl Into<String>, why: &str) -> Row {
    Row {
        what: what.into(),
        value: first_line(why).to_string(),
        target: String::new(),
        verdict: Verdict::Failed,
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Runs the bench with `args` (without the program name); the exit status.
pub fn main(args: Vec<String>) -> i32 {
    let opts = match Options::parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("ccr-bench: {e}\n{USAGE}");
            return 2;
        }
    };
    // The development binaries log one line per connection at `info`; the
    // bench wants them quiet. Set before any thread exists.
    // SAFETY: single-threaded here; nothing reads the environment concurrently.
    unsafe { std::env::set_var("RUST_LOG", "warn") };
    install_quiet_panic_hook();
    let machine = Machine::probe();
    println!(
        "ccr-relay bench: {} CPU(s), {}, Linux {}",
        machine.cpus, machine.model, machine.kernel
    );
    if cfg!(debug_assertions) {
        println!("note: ccr-bench itself is a debug build; `make bench` builds and runs release");
    }
    if !have("curl") {
        println!("FAILED: curl is not installed; the throughput rows drive a real curl");
        return 1;
    }
    let started = Instant::now();
    let rows = match catch(|| run_all(&opts)) {
        Ok(rows) => rows,
        Err(why) => {
            println!("FAILED: cannot set up the bench: {why}");
            return 1;
        }
    };
    let elapsed = started.elapsed();
    println!();
    print!("{}", text_table(&rows));
    println!("\n({:.0} s)", elapsed.as_secs_f64());
    if let Some(path) = &opts.out {
        let md = markdown(&rows, &machine, &opts, elapsed);
        match fs::write(path, md) {
            Ok(()) => println!(
                "written to {}",
                fs::canonicalize(path).unwrap_or(path.clone()).display()
            ),
            Err(e) => println!("cannot write {}: {e}", path.display()),
        }
    }
    if rows.iter().any(|r| r.verdict == Verdict::Failed) {
        1
    } else {
        0
    }
}

/// `f()`, with a panic (the helpers' way of failing) turned into its message.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| take_panic_message())
}

/// Progress on stderr, so the table on stdout stays clean.
fn progress(what: &str) {
    eprintln!("ccr-bench: {what}");
}

/// The gateway, the origin and the certificates every measurement uses.
struct Scene {
    pki: BlindPki,
    origin: DevOrigin,
    gw: DevGateway,
}

impl Scene {
    fn start() -> Scene {
        let pki = BlindPki::new();
        let origin = pki.https_origin(&["origin.test"]);
        let gw = DevGateway::start(
            pki.gateway_options(false)
                .map("origin.test:443", origin.addr),
        );
        Scene { pki, origin, gw }
    }

    /// A fresh `ccr-relay serve` (warnings only, as in production).
    fn relay(&self) -> RelayProcess {
        RelayProcess::serve(
            &self.gw,
            RelayOptions {
                rust_log: None,
                ..RelayOptions::default()
            },
        )
    }
}

fn run_all(opts: &Options) -> Vec<Row> {
    progress("starting the development gateway, the HTTPS origin and the relay");
    let scene = Scene::start();
    let mut rows = Vec::new();
    let relay = scene.relay();
    if opts.runs('a') || opts.runs('b') {
        let mut transfers = Transfers::default();
        if let Err(why) =
            catch(|| throughput_and_cpu(&scene, &relay, opts.size, opts.rounds, &mut transfers))
        {
            rows.push(failed("a/b. throughput and CPU", &why));
        }
        // What was measured before a failure still counts.
        rows.extend(transfers.rows(opts.size));
    }
    if opts.runs('c') {
        match catch(|| latency(&relay, opts.connects)) {
            Ok(r) => rows.extend(r),
            Err(why) => rows.push(failed("c. connect-to-200 latency", &why)),
        }
    }
    drop(relay);
    if opts.runs('d') {
        match catch(|| idle_memory(&scene, opts.idle)) {
            Ok(r) => rows.extend(r),
            Err(why) => rows.push(failed("d. memory per idle tunnel", &why)),
        }
    }
    drop(scene);
    if opts.runs('e') {
        let delay = Duration::from_millis(opts.delay_ms);
        match catch(|| agent::latency_rows(opts.tunnels, delay)) {
            Ok(r) => rows.extend(r),
            Err(why) => rows.push(failed("e. agent proxy connect-to-200 latency", &why)),
        }
    }
    if opts.runs('f') {
        match catch(|| agent::pooled_memory_rows(opts.pool_rounds)) {
            Ok(r) => rows.extend(r),
            Err(why) => rows.push(failed("f. memory per pooled WebSocket", &why)),
        }
    }
    if opts.runs('g') {
        match catch(|| access_decision(1000, 1000)) {
            Ok(r) => rows.extend(r),
            Err(why) => rows.push(failed("g. uid check per connection", &why)),
        }
    }
    if opts.runs('h') {
        let delay = Duration::from_millis(opts.delay_ms);
        let idle = Duration::from_secs(opts.warm_idle_secs);
        match catch(|| warm::rows(opts.warm_tunnels, idle, delay)) {
            Ok(r) => rows.extend(r),
            Err(why) => rows.push(failed("h. connect-to-200 after idle", &why)),
        }
    }
    rows
}

/// Row g: the relay's access check (who owns this connection?) timed
/// from accept to decision, `n` times, with `others` other loopback
/// connections open on the machine meanwhile (2 sockets each), in this
/// process, with the relay library's own code.
fn access_decision(others: usize, n: usize) -> Vec<Row> {
    use ccr_relay::proxy::access::{Access, Decision};
    progress(&format!(
        "g. uid check: {n} connections with {others} others open"
    ));
    let crowd = TcpListener::bind("127.0.0.1:0").expect("bind");
    let crowd_addr = crowd.local_addr().expect("address");
    let mut held = Vec::with_capacity(2 * others);
    for _ in 0..others {
        let c = TcpStream::connect(crowd_addr).expect("connect");
        let (a, _) = crowd.accept().expect("accept");
        held.push(c);
        held.push(a);
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let local = listener.local_addr().expect("address");
    let access = Access::session(&[]);
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let _client = TcpStream::connect(local).expect("connect");
        let started = Instant::now();
        let (_accepted, peer) = listener.accept().expect("accept");
        let decision = access.decide(peer, local);
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(
            matches!(decision, Decision::Allowed(_)),
            "own connections are allowed"
        );
    }
    drop(held);
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    let (p50, p99) = (pick(0.50), pick(0.99));
    vec![
        info(
            format!("g. uid check accept-to-decision p50 ({others} other connections open)"),
            format!("{p50:.3} ms"),
        ),
        judged(
            "g. uid check accept-to-decision p99",
            format!("{p99:.3} ms"),
            "< 1 ms",
            p99 < 1.0,
        ),
    ]
}

/// Rows a and b: rounds of three downloads of the same bytes from the
/// same origin (direct, through the relay, through socat), interleaved so
/// that a burst of load elsewhere on the machine hits all three alike.
#[derive(Default)]
struct Transfers {
    rounds: usize,
    direct_mbps: Vec<f64>,
    relay_mbps: Vec<f64>,
    relay_cpu_s: Vec<f64>,
    socat_cpu_s: Vec<f64>,
    socat_mbps: Vec<f64>,
    /// Why there is no socat figure.
    socat_missing: Option<String>,
}

/// The median (the mean of the middle two of an even count).
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// `0.65 (0.60-0.69)`: a median ratio and the range of the rounds.
fn with_spread(ratio: f64, all: &[f64]) -> String {
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if all.len() > 1 {
        format!("{ratio:.2} ({lo:.2}-{hi:.2})")
    } else {
        format!("{ratio:.2}")
    }
}

impl Transfers {
    fn rows(&self, size: u64) -> Vec<Row> {
        let mut rows = Vec::new();
        let (Some(direct), Some(relay), Some(cpu)) = (
            median(&self.direct_mbps),
            median(&self.relay_mbps),
            median(&self.relay_cpu_s),
        ) else {
            return rows;
        };
        let gib = size as f64 / GIB as f64;
        let of = if self.rounds > 1 {
            format!(", median of {}", self.rounds)
        } else {
            String::new()
        };
        let size_text = human_size(size);
        rows.push(info(
            format!("a. download {size_text}, direct (curl -> origin){of}"),
            format!("{direct:.0} MB/s"),
        ));
        rows.push(info(
            format!("a. download {size_text}, through the relay{of}"),
            format!("{relay:.0} MB/s"),
        ));
        // Ratios per round (the two downloads of a round ran back to
        // back), then their median, with the spread.
        let ratios: Vec<f64> = self
            .relay_mbps
            .iter()
            .zip(&self.direct_mbps)
            .map(|(r, d)| r / d)
            .collect();
        let ratio = median(&ratios).unwrap_or(relay / direct);
        rows.push(judged(
            "a. relay / direct throughput",
            with_spread(ratio, &ratios),
            ">= 0.50",
            ratio >= 0.5,
        ));
        let relay_per_gib = cpu / gib;
        rows.push(info(
            format!("b. relay CPU per GiB (user+sys){of}"),
            format!("{relay_per_gib:.2} s"),
        ));
        match (
            &self.socat_missing,
            median(&self.socat_cpu_s),
            median(&self.socat_mbps),
        ) {
            (None, Some(socat_cpu), Some(socat_mbps)) => {
                let socat_per_gib = socat_cpu / gib;
                rows.push(info(
                    format!("b. socat -b 262144 CPU per GiB (user+sys){of}"),
                    format!("{socat_per_gib:.2} s ({socat_mbps:.0} MB/s)"),
                ));
                let ratios: Vec<f64> = self
                    .relay_cpu_s
                    .iter()
                    .zip(&self.socat_cpu_s)
                    .map(|(r, s)| r / s)
                    .collect();
                let ratio = median(&ratios).unwrap_or(relay_per_gib / socat_per_gib);
                rows.push(judged(
                    "b. relay / socat CPU",
                    with_spread(ratio, &ratios),
                    "<= 1.50",
                    ratio <= 1.5,
                ));
            }
            (why, _, _) => {
                let why = why.clone().unwrap_or_else(|| "not measured".into());
                rows.push(Row {
                    what: "b. relay / socat CPU".into(),
                    value: why.clone(),
                    target: "<= 1.50".into(),
                    verdict: if why.contains("not installed") {
                        Verdict::Skipped
                    } else {
                        Verdict::Failed
                    },
                })
            }
        }
        rows
    }
}

fn throughput_and_cpu(
    scene: &Scene,
    relay: &RelayProcess,
    size: u64,
    rounds: usize,
    t: &mut Transfers,
) {
    let served_ca = scene.pki.served_ca_pem();
    let ca = served_ca.to_string_lossy();
    let bundle = relay
        .var("SSL_CERT_FILE")
        .expect("the relay exports SSL_CERT_FILE")
        .to_string();
    let path = format!("/bytes/{size}");
    let direct_url = format!("https://127.0.0.1:{}{path}", scene.origin.addr.port());
    let relayed = ["-x", &relay.proxy_url, "--cacert", &bundle];
    if !have("socat") {
        t.socat_missing = Some("SKIPPED (socat not installed)".into());
    }

    // Warm-up: a small download through the relay (first-use costs out of the way).
    curl_download(
        &relayed,
        &format!("https://origin.test/bytes/{}", 1 << 20),
        1 << 20,
    );
    let size_text = human_size(size);
    for round in 1..=rounds {
        t.rounds = round;
        progress(&format!(
            "a/b. round {round}/{rounds}: {size_text} direct, through the relay, through socat"
        ));
        t.direct_mbps
            .push(curl_download(&["--cacert", &ca], &direct_url, size));

        let before = cpu_seconds(relay.pid());
        t.relay_mbps.push(curl_download(
            &relayed,
            &format!("https://origin.test{path}"),
            size,
        ));
        t.relay_cpu_s.push(cpu_seconds(relay.pid()) - before);

        if t.socat_missing.is_none() {
            match catch(|| socat_download(scene.origin.addr, &ca, &path, size)) {
                Ok((cpu, mbps)) => {
                    t.socat_cpu_s.push(cpu);
                    t.socat_mbps.push(mbps);
                }
                Err(why) => t.socat_missing = Some(first_line(&why).to_string()),
            }
        }
    }
}

/// Downloads `url` with curl (`extra` options first) to `/dev/null`;
/// checks the status and the size; returns MB/s (10^6 bytes per second).
fn curl_download(extra: &[&str], url: &str, size: u64) -> f64 {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "120", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{size_download} %{speed_download}"])
        .args(extra)
        .arg(url)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .output()
        .expect("start curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let size_text = size.to_string();
    if !out.status.success() || fields.len() != 3 || fields[0] != "200" || fields[1] != size_text {
        panic!(
            "curl {} {url}: {} (code, size, speed: {text:?}); stderr: {}",
            extra.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    fields[2].parse::<f64>().unwrap_or(0.0) / 1e6
}

/// Row b's baseline: `socat -b 262144` copying the origin's TCP stream to
/// curl, one connection, then exits; its CPU from `wait4`'s rusage.
/// Returns (CPU seconds, MB/s).
fn socat_download(origin: SocketAddr, ca: &str, path: &str, size: u64) -> (f64, f64) {
    let port = free_port();
    let child = Command::new("socat")
        .args([
            "-b",
            "262144",
            &format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"),
            &format!("TCP:{origin}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start socat");
    let mut socat = Reaped::new(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_listening(port) {
        if Instant::now() > deadline || socat.try_reap().is_some() {
            panic!("socat did not listen on 127.0.0.1:{port}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let mbps = curl_download(
        &["--cacert", ca],
        &format!("https://127.0.0.1:{port}{path}"),
        size,
    );
    // Without `fork`, socat exits when its one connection is done.
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage = loop {
        if let Some(usage) = socat.try_reap() {
            break usage;
        }
        if Instant::now() > deadline {
            panic!("socat did not exit after the download");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime) + secs(usage.ru_stime), mbps)
}

/// A child reaped with `wait4`, for its resource usage; killed and reaped
/// on drop if it has not exited by then.
struct Reaped {
    child: std::process::Child,
    reaped: bool,
}

impl Reaped {
    fn new(child: std::process::Child) -> Reaped {
        Reaped {
            child,
            reaped: false,
        }
    }

    /// Reaps the child if it has exited: its rusage.
    fn try_reap(&mut self) -> Option<libc::rusage> {
        if self.reaped {
            return None;
        }
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: wait4 on our own child, not reaped yet, valid pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            self.reaped = true;
            Some(usage)
        } else {
            None
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Row c: `n` tunnels opened one after the other; p50 and p99 of the time
/// from `connect()` to the complete `HTTP/1.1 200` head.
fn latency(relay: &RelayProcess, n: usize) -> Vec<Row> {
    progress(&format!("c. {n} CONNECTs, one after the other"));
    for _ in 0..20 {
        drop(open_tunnel(relay.proxy_addr).expect("warm-up tunnel"));
    }
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let s = open_tunnel(relay.proxy_addr).unwrap_or_else(|e| panic!("tunnel {i}: {e}"));
        times.push(started.elapsed());
        drop(s);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    vec![
        info(
            format!("c. connect-to-200 p50 ({n} sequential tunnels)"),
            format!("{:.2} ms", ms(pct(0.50))),
        ),
        info(
            format!("c. connect-to-200 p99 ({n} sequential tunnels)"),
            format!("{:.2} ms", ms(pct(0.99))),
        ),
    ]
}

/// Connects to the relay, sends a CONNECT for `origin.test:443`, reads the
/// whole answer head; it must be a `200`.
fn open_tunnel(relay: SocketAddr) -> io::Result<TcpStream> {
    open_tunnel_to(relay, "origin.test:443")
}

/// [`open_tunnel`] to `target` (`host:port`). The targets here never speak
/// first, so reading in blocks cannot take bytes past the head.
fn open_tunnel_to(relay: SocketAddr, target: &str) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(relay)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer head too long",
            ));
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF after {:?}", String::from_utf8_lossy(&head)),
            ));
        }
        head.extend_from_slice(&buf[..n]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(io::Error::other(format!(
            "the relay answered {:?}",
            String::from_utf8_lossy(&head)
        )));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

/// Row d: a fresh relay's resident memory per idle tunnel, and its threads.
fn idle_memory(scene: &Scene, n: usize) -> Vec<Row> {
    progress(&format!("d. {n} idle tunnels on a fresh relay"));
    let relay = scene.relay();
    let pid = relay.pid();
    let connector = {
        let mut b = SslConnector::builder(SslMethod::tls_client()).expect("TLS client");
        b.set_ca_file(relay.var("SSL_CERT_FILE").expect("SSL_CERT_FILE"))
            .expect("load the merged bundle");
        b.build()
    };
    // Warm-up: one tunnel with a TLS handshake, opened and closed, so
    // one-time costs (first allocations, lazily built state) are not
    // counted per tunnel.
    for _ in 0..2 {
        let s = open_tunnel(relay.proxy_addr).expect("warm-up tunnel");
        drop(connector.connect("origin.test", s).expect("warm-up TLS"));
    }
    thread::sleep(Duration::from_millis(500));
    let threads_before = threads(pid);
    let rss0 = vm_rss_kib(pid);
    let mut plain = Vec::with_capacity(n);
    for i in 0..n {
        plain.push(open_tunnel(relay.proxy_addr).unwrap_or_else(|e| panic!("tunnel {i}: {e}")));
    }
    thread::sleep(Duration::from_secs(1));
    let rss1 = vm_rss_kib(pid);
    let mut tls: Vec<SslStream<TcpStream>> = Vec::with_capacity(n);
    for (i, s) in plain.into_iter().enumerate() {
        tls.push(
            connector
                .connect("origin.test", s)
                .unwrap_or_else(|e| panic!("TLS through tunnel {i}: {e}")),
        );
    }
    thread::sleep(Duration::from_secs(1));
    let rss2 = vm_rss_kib(pid);
    let threads_tls = threads(pid);
    drop(tls);
    let per = |after: u64| (after as f64 - rss0 as f64) / n as f64;
    vec![
        info(
            format!("d. relay RSS, fresh / {n} idle tunnels (CONNECT) / + TLS handshake"),
            format!("{} / {} / {} KiB", rss0, rss1, rss2),
        ),
        info(
            "d. RSS per idle tunnel, CONNECT + 200 only",
            format!("{:.1} KiB", per(rss1)),
        ),
        judged(
            "d. RSS per idle tunnel, after a TLS handshake through it",
            format!("{:.1} KiB", per(rss2)),
            "<= 64 KiB",
            per(rss2) <= 64.0,
        ),
        info(
            format!("d. relay threads, idle / with {n} idle tunnels"),
            format!("{threads_before} / {threads_tls}"),
        ),
    ]
}

/// `utime + stime` of process `pid`, all its threads, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat has (comm)") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz.max(1) as f64
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A port nobody listens on right now (bound and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Whether something listens on `127.0.0.1:port` (`/proc/net/tcp`), found
/// without connecting: a connection would use up socat's only one.
fn is_listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(program);
            fs::metadata(&p).is_ok_and(|m| m.is_file())
        })
    })
}

fn human_size(n: u64) -> String {
    if n.is_multiple_of(GIB) {
        format!("{} GiB", n / GIB)
    } else if n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} B")
    }
}

/// The machine the figures come from.
struct Machine {
    cpus: usize,
    model: String,
    kernel: String,
}

impl Machine {
    fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Machine {
            cpus: thread::available_parallelism().map_or(1, |n| n.get()),
            model,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

fn text_table(rows: &[Row]) -> String {
    let w0 = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0).max(5);
    let w2 = rows
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<w0$}  {:>w1$}  {:<w2$}  result",
        "measure", "value", "target"
    );
    let _ = writeln!(s, "{}", "-".repeat(w0 + w1 + w2 + 12));
    for r in rows {
        let _ = writeln!(
            s,
            "{:<w0$}  {:>w1$}  {:<w2$}  {}",
            r.what,
            r.value,
            r.target,
            r.verdict.text()
        );
    }
    s
}

fn markdown(rows: &[Row], machine: &Machine, opts: &Options, elapsed: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# ccr-relay: measured figures\n");
    let _ = writeln!(
        s,
        "Measured by `make bench` (`ccr-bench`, release build) on {}, in {:.0} s.  ",
        utc_now(),
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "Machine: {} CPU(s) (`nproc`), {}, Linux {}.\n",
        machine.cpus, machine.model, machine.kernel
    );
    let _ = writeln!(s, "| measure | value | target | result |");
    let _ = writeln!(s, "|---|---:|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            r.what.replace('|', "\\|"),
            r.value.replace('|', "\\|"),
            r.target,
            r.verdict.text()
        );
    }
    let _ = write!(
        s,
        "
Everything runs on loopback on this one machine: curl (or the bench) →
`ccr-relay serve` → the development gateway over `ws://` in blind mode →
an HTTPS development origin whose certificate the gateway's CA issued (so
curl verifies it with the relay's merged bundle alone). The relay, the
gateway, the origin and the client share the CPUs, so absolute figures are
noisy and low; compare the ratios, each measured against its baseline in
the same run.

- **a.** `curl -o /dev/null -w %{{speed_download}}` of `/bytes/{size}`
  straight from the origin, then through the relay (`-x`, `--cacert` the
  merged bundle). MB/s = 10^6 bytes per second. {rounds} rounds of direct,
  relay, socat (row b), one after the other; each figure is the median of
  the rounds, each ratio the median of the rounds' ratios (range in
  brackets).
- **b.** The relay's `utime + stime` (`/proc/PID/stat`, all threads) over
  the download of row a, against `socat -b 262144` copying the same
  download between plain TCP sockets (its rusage from `wait4`).
- **c.** {connects} tunnels opened one after the other by the bench:
  `connect()`, `CONNECT origin.test:443`, until the whole `HTTP/1.1 200`
  head is read (the gateway dials the origin before it answers).
- **d.** A fresh relay: `VmRSS` (`/proc/PID/status`) before and after
  {idle} tunnels are opened and left idle, first with the CONNECT and its
  `200` only, then after a TLS handshake with the origin through each;
  the difference over {idle}.
- **e.** The agent proxy (`CCR_AGENT_PROXY_ENABLED=1`, protocol v2) with a
  real round trip: `ccr-delay-shim --delay-ms {delay}` sits between the
  relay and the gateway only (the relay's `--base-url` points at the
  shim), so RTT = {rtt} ms. Per case, a gateway, a shim and a relay of its
  own, one warm-up tunnel, then {tunnels} tunnels one after the other, each
  timed from the client's `connect()` to the relay until the gateway's
  whole `HTTP/1.1 200` head is read. Each tunnel then carries
  `GET /hello` with `Connection: close` to a plain HTTP origin and is read
  to its end, so the origin closes and a late-v2 gateway sends FIN.
  *Reused*: a late-v2 gateway; after each tunnel the bench waits for the
  gateway's `v2 fin-ack` event and 50 ms more, so the relay has the
  WebSocket back in its pool; the row below counts the WebSockets that
  carried the measured tunnels (`v2 preamble` events) and the upgrades
  during them (both must be 1 and 0). *Fresh*: a gateway playing an
  early-v2 server (`--server early`), which never acknowledges v2, so the
  relay pools nothing and every tunnel dials (the row counts the
  upgrades). Waiting out the 10 s idle limit instead would take over half
  an hour per case. The late gateway's first tunnel (fresh, with
  HELLO/HELLO_ACK) is shown as one sample for comparison.
  **Targets**, in round trips of the network the relay would face: a
  reused WebSocket needs only the CONNECT's (preamble out, `200` back),
  so p50 ≤ 1.25 RTT. A fresh one needs TCP's handshake (1: the request
  can go with the handshake's last ACK), TLS (1 for TLS 1.3, 2 for 1.2;
  none for `ws://`), the WebSocket upgrade (1: request, `101`) and the
  CONNECT (1: HELLO and the preamble go out together as soon as the
  upgrade is answered; HELLO_ACK and the `200` come back together), so
  p50 ≤ 3 RTT over `ws://`, 4 over `wss://` with TLS 1.3, 5 with TLS 1.2.
  The TLS version is what the `wss://` gateway negotiates with this
  machine's OpenSSL defaults (the library the relay's TLS uses); the
  development gateway's TLS stack offers TLS 1.2 only, so its target
  counts 2. The shim delays bytes, not TCP's handshake (the relay's
  `connect()` to the local shim completes at once), so the figures here
  lack TCP's round trip: each value also says how far it is above the
  round trips the shim does impose (1 reused; 2 fresh `ws://`; TLS + 2
  fresh `wss://`), which is the relay's own cost plus the gateway's and
  the scheduling noise of a loaded 2-core machine.
- **f.** {pool_rounds} rounds, each on a fresh relay (`--fin-grace 0.2`)
  against a late-v2 gateway with no shim that closes WebSockets idle
  1.5 s between tunnels (`--close-idle-after 1500`). First 4 tunnels
  open at once and end by the client closing first (no FIN, so nothing
  is pooled: the relay closes each WebSocket after the FIN grace); the
  relay's `VmRSS` then is the baseline (same threads, buffers and
  WebSockets once used, none held). Then 4 tunnels open at once and end
  with the gateway's FIN: the pool (at most 4) holds all 4, fresh ones
  (checked from the gateway's events: 4 new upgrades, none closed yet),
  and `VmRSS` is read again. Per pooled WebSocket: the difference over 4;
  the median of the rounds, range in brackets. The third RSS figure is
  after the gateway closed them and the relay retired them (the
  allocator keeps most freed memory, so it hardly drops).
",
        tunnels = opts.tunnels,
        delay = opts.delay_ms,
        rtt = 2 * opts.delay_ms,
        pool_rounds = opts.pool_rounds,
        size = opts.size,
        rounds = opts.rounds,
        connects = opts.connects,
        idle = opts.idle,
    );
    s
}

/// `YYYY-MM-DD HH:MM UTC`, from the system clock.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        Options::parse(args.iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn agent_proxy_options() {
        let o = parse(&[]).unwrap().unwrap();
        assert_eq!((o.tunnels, o.delay_ms, o.pool_rounds), (200, 20, 5));
        assert!("abcdef".chars().all(|c| o.runs(c)));
        let o = parse(&["--rows", "ef", "--tunnels", "20", "--delay-ms", "5"])
            .unwrap()
            .unwrap();
        assert!(o.runs('e') && o.runs('f') && !o.runs('a') && !o.runs('d'));
        assert_eq!((o.tunnels, o.delay_ms), (20, 5));
        assert!(parse(&["--rows", "xz"]).unwrap_err().contains("--rows"));
        assert!(parse(&["--rows", ""]).is_err());
        assert!(parse(&["--pool-rounds", "0"]).is_err());
    }
}
