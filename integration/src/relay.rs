//! Driving the real `ccr-relay` binary from tests: `serve` in the
//! background ([`RelayProcess`]), or `run -- COMMAND` to completion
//! ([`run_relay`]), always with the activation environment, a fresh token
//! file (the relay unlinks it), and `HOME`, the CA bundle and the logs in a
//! scratch directory of their own.
//!
//! ```no_run
//! use ccr_integration::relay::{RelayOptions, RelayProcess};
//! use ccr_integration::{DevGateway, DevOrigin, GatewayOptions};
//! let origin = DevOrigin::start(None);
//! let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
//! let relay = RelayProcess::serve(&gw, RelayOptions::default());
//! let client = relay.connect_tunnel("origin.test:80");
//! ```

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::gateway::Generation;
use crate::pattern::{PatternReader, verify_reader};
use crate::pki::TestCa;
use crate::procs::{DevGateway, DevOrigin, GatewayOptions, bin_path};
use crate::temp::{TempDir, temp_dir};

/// How long `serve` has to write its env file.
pub const RELAY_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The machine's CA bundle, given to the relay as `--system-ca`.
pub const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The gateway's `200` inside a tunnel, as the relay passes it on.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// How to start the relay. `Default`: the development gateway's default
/// credentials, `RUST_LOG=info`, the first generation
/// (`CCR_UPSTREAM_PROXY_ENABLED=1`), no extra options.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// `CLAUDE_CODE_REMOTE_SESSION_ID`; `None`: the gateway's.
    pub session_id: Option<String>,
    /// Written to the token file; `None`: the gateway's.
    pub token: Option<String>,
    /// `--base-url`; `None`: the gateway's base URL.
    pub base_url: Option<String>,
    /// `--gateway-ca`: roots the relay trusts for a `wss://` gateway.
    pub gateway_ca: Option<PathBuf>,
    /// `RUST_LOG` for the relay (`None`: unset, so warnings only).
    pub rust_log: Option<String>,
    /// More options before the command / after `serve`, e.g. `--keepalive 0.3`.
    pub args: Vec<String>,
    /// Which gate-2 variable is set: `CCR_UPSTREAM_PROXY_ENABLED=1` or
    /// `CCR_AGENT_PROXY_ENABLED=1`.
    pub generation: Generation,
    /// More environment variables for the relay, e.g.
    /// `CLAUDE_SESSION_INGRESS_TOKEN_FILE`.
    pub env: Vec<(String, String)>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            session_id: None,
            token: None,
            base_url: None,
            gateway_ca: None,
            rust_log: Some("info".into()),
            args: Vec::new(),
            generation: Generation::UpstreamProxy,
            env: Vec::new(),
        }
    }
}

impl RelayOptions {
    /// Adds options, e.g. `.arg("--keepalive").arg("0.3")`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// `--gateway-ca PATH`.
    pub fn gateway_ca(mut self, path: &Path) -> Self {
        self.gateway_ca = Some(path.to_path_buf());
        self
    }

    /// `RUST_LOG=spec`.
    pub fn rust_log(mut self, spec: &str) -> Self {
        self.rust_log = Some(spec.into());
        self
    }

    /// The second generation: `CCR_AGENT_PROXY_ENABLED=1` instead of
    /// `CCR_UPSTREAM_PROXY_ENABLED=1`.
    pub fn agent_proxy(mut self) -> Self {
        self.generation = Generation::AgentProxy;
        self
    }

    /// Sets one more variable in the relay's environment.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The token written to the token file (instead of the gateway's).
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// The gate-2 variable that chooses `generation`.
pub fn gate_2_var(generation: Generation) -> &'static str {
    match generation {
        Generation::UpstreamProxy => "CCR_UPSTREAM_PROXY_ENABLED",
        Generation::AgentProxy => "CCR_AGENT_PROXY_ENABLED",
    }
}

/// The relay command for `sub` (`run` or `serve`) with everything a test
/// relay needs: a fresh token file in `dir`, `--ca-bundle` and `HOME` in
/// `dir`, the machine's system bundle, a clean environment (only `PATH`,
/// `HOME`, the activation variables and `RUST_LOG`). Returns the command
/// and the token file's path.
pub fn relay_command(
    sub: &str,
    gw: &DevGateway,
    opts: &RelayOptions,
    dir: &Path,
) -> (Command, PathBuf) {
    let token_file = dir.join("session_token");
    let token = opts.token.as_deref().unwrap_or(&gw.token);
    fs::write(&token_file, format!("{token}\n"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", token_file.display()));
    let home = dir.join("home");
    fs::create_dir_all(&home).expect("create HOME for the relay");
    let mut cmd = Command::new(bin_path("ccr-relay"));
    cmd.arg(sub)
        .arg("--base-url")
        .arg(opts.base_url.clone().unwrap_or_else(|| gw.base_url()))
        .arg("--token-file")
        .arg(&token_file)
        .arg("--ca-bundle")
        .arg(dir.join("ca-bundle.crt"))
        .arg("--system-ca")
        .arg(SYSTEM_CA);
    if let Some(ca) = &opts.gateway_ca {
        cmd.arg("--gateway-ca").arg(ca);
    }
    cmd.args(&opts.args);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        // The trust installers write under the scratch directory, never
        // the machine's /etc (the tests run as root).
        .env("CCR_RELAY_INSTALL_ROOT", dir.join("root"))
        .env("CLAUDE_CODE_REMOTE", "1")
        .env(gate_2_var(opts.generation), "1")
        .env(
            "CLAUDE_CODE_REMOTE_SESSION_ID",
            opts.session_id.as_deref().unwrap_or(&gw.session_id),
        );
    if let Some(spec) = &opts.rust_log {
        cmd.env("RUST_LOG", spec);
    }
    cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
    crate::procs::default_signals(&mut cmd);
    (cmd, token_file)
}

/// A `ccr-relay serve` process, killed (and reaped) on drop. When a test
/// panics while it runs, the tail of its stderr is printed.
pub struct RelayProcess {
    pub child: Child,
    /// `127.0.0.1:PORT`, from `HTTPS_PROXY` in the env file.
    pub proxy_addr: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub proxy_url: String,
    /// The variables the relay wrote to its env file, in order.
    pub vars: Vec<(String, String)>,
    pub env_file: PathBuf,
    pub token_file: PathBuf,
    pub stderr_log: PathBuf,
    /// Holds the token file, `HOME`, the CA bundle, the env file and the log.
    pub dir: TempDir,
}

impl RelayProcess {
    /// Starts `ccr-relay serve --env-file …` against `gw` and waits (up to
    /// [`RELAY_START_TIMEOUT`]) for the env file, which the relay writes
    /// once it listens.
    pub fn serve(gw: &DevGateway, opts: RelayOptions) -> RelayProcess {
        let dir = temp_dir("relay");
        let env_file = dir.join("relay.env");
        let stderr_log = dir.join("stderr.log");
        let (mut cmd, token_file) = relay_command("serve", gw, &opts, dir.path());
        cmd.arg("--env-file").arg(&env_file);
        let log = fs::File::create(&stderr_log).expect("create the relay's stderr log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = cmd.spawn().expect("start ccr-relay serve");
        let mut relay = RelayProcess {
            child,
            proxy_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            proxy_url: String::new(),
            vars: Vec::new(),
            env_file,
            token_file,
            stderr_log,
            dir,
        };
        let started = Instant::now();
        let text = loop {
            if let Ok(text) = fs::read_to_string(&relay.env_file) {
                break text;
            }
            if let Ok(Some(status)) = relay.child.try_wait() {
                panic!(
                    "ccr-relay serve exited ({status}) without writing its env file; stderr:\n{}",
                    relay.stderr()
                );
            }
            if started.elapsed() > RELAY_START_TIMEOUT {
                panic!(
                    "ccr-relay serve wrote no env file within {RELAY_START_TIMEOUT:?}; stderr:\n{}",
                    relay.stderr()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        relay.vars = parse_env_file(&text);
        relay.proxy_url = relay
            .var("HTTPS_PROXY")
            .unwrap_or_else(|| panic!("no HTTPS_PROXY in the env file:\n{text}"))
            .to_string();
        relay.proxy_addr = relay
            .proxy_url
            .strip_prefix("http://")
            .and_then(|a| a.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("HTTPS_PROXY {:?} is not http://IP:PORT", relay.proxy_url));
        relay
    }

    /// A variable from the env file.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the relay wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr_log).unwrap_or_default()).into_owned()
    }

    /// Waits until the relay's stderr has a line satisfying `pred`, up to
    /// `timeout`; returns all matching lines then. Panics with the log.
    pub fn wait_for_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.stderr();
            let lines: Vec<String> = log
                .lines()
                .filter(|l| pred(l))
                .map(str::to_string)
                .collect();
            if !lines.is_empty() {
                return lines;
            }
            if Instant::now() >= deadline {
                panic!("no matching relay log line within {timeout:?}; log:\n{log}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; the exit
    /// status and how long it took, or `None` if still running.
    pub fn terminate(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        // SAFETY: kill(2) with the pid of a child this value owns, not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((status, started.elapsed()));
            }
            if started.elapsed() >= timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// A raw connection to the relay's proxy port, with 10 s timeouts.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.proxy_addr).expect("connect to the relay");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Opens a CONNECT tunnel to `target` and reads the relay's whole
    /// answer head, which must be the gateway's `200`; returns the client
    /// socket, positioned just after the head.
    pub fn connect_tunnel(&self, target: &str) -> TcpStream {
        let mut s = self.connect();
        write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
        let head = read_head(&mut s).expect("read the CONNECT answer");
        assert_eq!(
            head,
            ESTABLISHED,
            "CONNECT {target}: the relay answered {:?}",
            String::from_utf8_lossy(&head)
        );
        s
    }

    /// The number of threads and open file descriptors of the relay
    /// (`/proc/PID/task`, `/proc/PID/fd`).
    pub fn threads_and_fds(&self) -> (usize, usize) {
        let count = |what: &str| {
            let dir = format!("/proc/{}/{what}", self.pid());
            fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
                .count()
        };
        (count("task"), count("fd"))
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let running = matches!(self.child.try_wait(), Ok(None));
        if running && thread::panicking() {
            let log = self.stderr();
            let start = log.len().saturating_sub(4096);
            let start = (start..log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(0);
            eprintln!(
                "--- stderr of ccr-relay serve (pid {}) ---\n{}--- end ---",
                self.child.id(),
                &log[start..]
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a response head byte by byte up to and including the blank line
/// (so nothing after it is consumed). At most 64 KiB.
pub fn read_head<R: Read>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        match r.read(&mut byte) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "EOF after {:?}",
                        String::from_utf8_lossy(&head).into_owned()
                    ),
                ));
            }
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(head)
}

/// Reads one HTTP/1.1 response with a `Content-Length` body from `r`:
/// `(head, body)`.
pub fn read_response<R: Read>(r: &mut R) -> io::Result<(String, Vec<u8>)> {
    let head = String::from_utf8_lossy(&read_head(r)?).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Content-Length"))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((head, body))
}

/// The `export NAME='value'` lines of an env file, unquoted.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(name, value)| (name.to_string(), unquote_sh(value)))
        .collect()
}

/// Undoes sh single quoting: `'a'\''b'` is `a'b`.
fn unquote_sh(value: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '\\' if !quoted => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// What a `ccr-relay run` did.
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// The relay's and the command's stderr.
    pub stderr: String,
    pub elapsed: Duration,
}

impl RunOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with both outputs unless the command exited 0.
    pub fn assert_success(&self) -> &RunOutput {
        assert!(
            self.status.success(),
            "ccr-relay run exited with {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout_text(),
            self.stderr
        );
        self
    }
}

/// Runs `ccr-relay run [opts] -- command…` against `gw` and waits for it,
/// at most `timeout` (then kills it and panics with what it printed).
pub fn run_relay<S: AsRef<std::ffi::OsStr>>(
    gw: &DevGateway,
    opts: &RelayOptions,
    command: &[S],
    timeout: Duration,
) -> RunOutput {
    let dir = temp_dir("relay-run");
    let (mut cmd, _token) = relay_command("run", gw, opts, dir.path());
    cmd.arg("--");
    cmd.args(command.iter().map(|a| OsString::from(a.as_ref())));
    // Its own process group, so a timeout can kill the command it started too.
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start ccr-relay run");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for ccr-relay run") {
            break status;
        }
        if started.elapsed() > timeout {
            // The relay and whatever it started: the group it leads.
            // SAFETY: kill(2) on the process group of our unreaped child.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "ccr-relay run did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    RunOutput {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
        elapsed,
    }
}

/// Runs `curl -sS --fail` for `url` through the HTTP proxy at `proxy_url`
/// (`--proxy`, so no proxy variable matters: curl gets only `PATH`),
/// trusting only `cacert`, with `extra` options before the URL; bounded by
/// curl's `--max-time 20`. Returns what curl did and how long it took.
pub fn curl_via(proxy_url: &str, cacert: &Path, url: &str, extra: &[&str]) -> RunOutput {
    let started = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20", "--proxy", proxy_url])
        .arg("--cacert")
        .arg(cacert)
        .args(extra)
        .arg(url)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .expect("start curl");
    RunOutput {
        status: out.status,
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Certificates for blind-mode HTTPS tests: the CA the gateway serves on
/// its CA endpoint (`origin_ca`, which also signs the HTTPS origins, so a
/// client through the relay verifies them with the relay's merged bundle
/// alone), and a separate CA for the gateway's own `wss://` certificate
/// (`gateway_tls_ca`, which the relay is told about with `--gateway-ca`).
pub struct BlindPki {
    pub origin_ca: TestCa,
    pub gateway_tls_ca: TestCa,
    /// The gateway's `wss://` certificate and key.
    pub gateway_tls: (PathBuf, PathBuf),
    pub dir: TempDir,
}

impl BlindPki {
    pub fn new() -> BlindPki {
        let dir = temp_dir("blind-pki");
        let origin_ca = TestCa::new(&dir.join("served-ca")).expect("make the served CA");
        let gateway_tls_ca = TestCa::new(&dir.join("gateway-tls-ca")).expect("make the TLS CA");
        let gateway_tls = gateway_tls_ca.issue_leaf(&["gateway.test"]);
        BlindPki {
            origin_ca,
            gateway_tls_ca,
            gateway_tls,
            dir,
        }
    }

    /// An HTTPS origin with a certificate for `names` from the served CA.
    pub fn https_origin(&self, names: &[&str]) -> DevOrigin {
        let (cert, key) = self.origin_ca.issue_leaf(names);
        DevOrigin::start(Some((&cert, &key)))
    }

    /// Gateway options serving the served CA (`--ca-dir` pointing at it;
    /// the last `--ca-dir` wins, so the gateway's `ca_pem_path` is not the
    /// served CA then: use [`BlindPki::served_ca_pem`]), over `wss://` when
    /// `tls`.
    pub fn gateway_options(&self, tls: bool) -> GatewayOptions {
        GatewayOptions {
            extra_args: vec![
                "--ca-dir".into(),
                self.dir.join("served-ca").to_string_lossy().into_owned(),
            ],
            tls: tls.then(|| self.gateway_tls.clone()),
            ..GatewayOptions::default()
        }
    }

    /// The CA certificate the gateway serves.
    pub fn served_ca_pem(&self) -> PathBuf {
        self.dir.join("served-ca").join(crate::pki::CA_CERT_FILE)
    }

    /// The CA certificate that signed the gateway's `wss://` certificate.
    pub fn gateway_tls_ca_pem(&self) -> PathBuf {
        self.dir
            .join("gateway-tls-ca")
            .join(crate::pki::CA_CERT_FILE)
    }
}

impl Default for BlindPki {
    fn default() -> Self {
        BlindPki::new()
    }
}

/// Over an open tunnel to a development origin: `POST /echo` with `len`
/// pattern bytes, written on one thread while the echo is read and
/// checked byte for byte on this one. Returns MB/s, both directions
/// counted.
pub fn duplex_echo(client: TcpStream, len: u64) -> f64 {
    let started = Instant::now();
    let mut writer = client.try_clone().unwrap();
    let upload = thread::spawn(move || -> io::Result<()> {
        write!(
            writer,
            "POST /echo HTTP/1.1\r\nHost: echo.test\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )?;
        io::copy(&mut PatternReader::new(len), &mut writer)?;
        Ok(())
    });
    let mut reader = io::BufReader::with_capacity(256 * 1024, client);
    let head = read_head(&mut reader).expect("echo response head");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let echoed = verify_reader(&mut reader, len);
    upload.join().unwrap().expect("upload through the tunnel");
    echoed.unwrap_or_else(|e| panic!("echoed bytes: {e}"));
    2.0 * len as f64 / started.elapsed().as_secs_f64() / 1e6
}
