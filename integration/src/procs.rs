//! Starting the development binaries from tests: find them, start them,
//! wait for their `listening on` line, kill them when the handle drops.
//!
//! Each child's stderr goes to a log file in its own temp dir; when a test
//! panics while a child is alive, the tail of that log is printed, so a
//! failure shows what the gateway or origin saw.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::gateway::{Generation, Mode, ServerKind};
use crate::mitm::Injection;
use crate::temp::{TempDir, temp_dir};

/// How long a child has to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The variable that lets a test this machine cannot run be skipped.
pub const ALLOW_SKIP_VAR: &str = "CCR_TEST_ALLOW_SKIP";

/// A test that cannot run here (`why`) fails, unless [`ALLOW_SKIP_VAR`] is
/// `1`: then it says so loudly on stderr and the caller returns. A skip is
/// never counted as a pass without someone having asked for it.
pub fn skip_or_fail(test: &str, why: &str) -> bool {
    if std::env::var(ALLOW_SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("SKIPPED, NOT PASSED: {test}: {why} ({ALLOW_SKIP_VAR}=1)");
        return true;
    }
    panic!("{test} cannot run here: {why}. Set {ALLOW_SKIP_VAR}=1 to skip it knowingly.")
}

/// Starts `cmd` with the default disposition of the signals the relay
/// forwards or stops on, whatever the test runner inherited (`nohup make
/// test` ignores SIGHUP; a background job ignores SIGINT and SIGQUIT, and an
/// ignored signal never reaches the relay's `sigwait`).
pub fn default_signals(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        })
    }
}

/// Path of a binary built by this workspace, e.g. `bin_path("ccr-relay")`.
///
/// Tests run from `target/<profile>/deps/`; binaries live in
/// `target/<profile>/`. `CCR_BIN_DIR` overrides the directory. Panics with
/// Runs a Python script with `input` on its standard input (a status page
/// to check, say): its standard output, or its standard error when it
/// failed.
pub fn python_with_input(script: &str, input: &[u8]) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start python3: {e}"))?;
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(input));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() || !matches!(written, Some(Ok(()))) {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// what to do when the binary is not there.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("CCR_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test binary knows its path");
            let mut dir = exe
                .parent()
                .expect("the test binary is in a directory")
                .to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "binary {name} not found at {}: run `cargo build --workspace` first \
             (or set CCR_BIN_DIR to the directory holding it)",
            path.display()
        );
    }
    path
}

/// A running child process, killed (and reaped) on drop.
pub struct ChildGuard {
    pub child: Child,
    /// What the child wrote to stderr.
    pub stderr_log: PathBuf,
    name: String,
}

impl ChildGuard {
    /// Starts `cmd` with stdout piped and stderr going to `stderr_log`, and
    /// waits up to [`START_TIMEOUT`] for a stdout line starting with
    /// `listening on `; returns the guard and the address on that line.
    /// Later stdout output is read and discarded.
    pub fn spawn_listening(mut cmd: Command, stderr_log: PathBuf) -> (ChildGuard, SocketAddr) {
        let name = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log = fs::File::create(&stderr_log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", stderr_log.display()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let guard = ChildGuard {
            child,
            stderr_log,
            name: name.clone(),
        };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => panic!(
                "{name} exited before listening; its stderr:\n{}",
                guard.stderr_tail()
            ),
            Err(_) => panic!(
                "{name} printed no `listening on` line within {START_TIMEOUT:?}; its stderr:\n{}",
                guard.stderr_tail()
            ),
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} printed {line:?}, not `listening on IP:PORT`"));
        (guard, addr)
    }

    /// The last 4 KiB of the child's stderr.
    pub fn stderr_tail(&self) -> String {
        let text = fs::read(&self.stderr_log).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// Sends SIGTERM and waits up to `timeout` for the child to exit;
    /// `true` if it did.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        // SAFETY: kill(2) with a pid this guard owns and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let running = matches!(self.child.try_wait(), Ok(None));
        if running && thread::panicking() {
            eprintln!(
                "--- stderr of {} (pid {}) ---\n{}--- end ---",
                self.name,
                self.child.id(),
                self.stderr_tail()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start a development gateway; `Default` gives a plain `ws://`
/// gateway with token `test-token` and session `test-session`.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub token: String,
    pub session_id: String,
    /// `(cert, key)` PEM files: serve `wss://` / `https://`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `(name:port, address)` pairs for `--map`.
    pub maps: Vec<(String, SocketAddr)>,
    pub events_verbose: bool,
    pub ping_every: Option<Duration>,
    pub stall_upgrade: bool,
    pub refuse_upgrade: Option<u16>,
    /// `--mode` (default [`Mode::Blind`]).
    pub mode: Mode,
    /// `--upstream-ca`: PEM file of the CAs origin certificates must chain
    /// to in MITM mode (`None`: the system roots).
    pub upstream_ca: Option<PathBuf>,
    /// `--inject` headers (MITM mode).
    pub inject: Vec<Injection>,
    /// `--generation` (default upstream proxy).
    pub generation: Generation,
    /// `--server` (agent proxy only; `None`: the gateway's default, late).
    pub server: Option<ServerKind>,
    /// More arguments, passed as they are.
    pub extra_args: Vec<String>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            token: "test-token".into(),
            session_id: "test-session".into(),
            tls: None,
            maps: Vec::new(),
            events_verbose: false,
            ping_every: None,
            stall_upgrade: false,
            refuse_upgrade: None,
            mode: Mode::Blind,
            upstream_ca: None,
            inject: Vec::new(),
            generation: Generation::UpstreamProxy,
            server: None,
            extra_args: Vec::new(),
        }
    }
}

impl GatewayOptions {
    /// Adds a `--map name:port=addr`.
    pub fn map(mut self, name_port: &str, addr: SocketAddr) -> Self {
        self.maps.push((name_port.to_string(), addr));
        self
    }

    /// MITM mode, trusting `upstream_ca` (a PEM file) for origins.
    ///
    /// ```no_run
    /// # let (origin_ca, addr) = (std::path::PathBuf::new(), "127.0.0.1:1".parse().unwrap());
    /// use ccr_integration::GatewayOptions;
    /// let opts = GatewayOptions::default()
    ///     .mitm(&origin_ca)
    ///     .inject("origin.test", "X-Api-Key", "injected-secret")
    ///     .map("origin.test:443", addr);
    /// ```
    pub fn mitm(mut self, upstream_ca: &Path) -> Self {
        self.mode = Mode::Mitm;
        self.upstream_ca = Some(upstream_ca.to_path_buf());
        self
    }

    /// The agent-proxy generation, playing `server`.
    pub fn agent_proxy(mut self, server: ServerKind) -> Self {
        self.generation = Generation::AgentProxy;
        self.server = Some(server);
        self
    }

    /// Adds more arguments, as they are.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Adds an `--inject host=name: value`.
    pub fn inject(mut self, host: &str, name: &str, value: &str) -> Self {
        self.inject.push(Injection::new(host, name, value));
        self
    }
}

/// A running `ccr-dev-gateway`, killed on drop.
pub struct DevGateway {
    pub addr: SocketAddr,
    /// Whether it serves TLS (`wss://`, `https://`).
    pub tls: bool,
    /// What it does with tunnels.
    pub mode: Mode,
    /// Which contract it serves.
    pub generation: Generation,
    /// The gateway CA's certificate, as served on its CA endpoint.
    pub ca_pem_path: PathBuf,
    pub events_path: PathBuf,
    pub token: String,
    pub session_id: String,
    pub child: ChildGuard,
    /// Holds the CA, the event file and the stderr log.
    pub dir: TempDir,
}

impl DevGateway {
    /// Starts a gateway and waits until it listens (panics after 10 s).
    pub fn start(opts: GatewayOptions) -> DevGateway {
        let dir = temp_dir("gateway");
        let ca_dir = dir.join("ca");
        let events_path = dir.join("events.log");
        let mut cmd = Command::new(bin_path("ccr-dev-gateway"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--token")
            .arg(&opts.token)
            .arg("--session-id")
            .arg(&opts.session_id)
            .arg("--ca-dir")
            .arg(&ca_dir)
            .arg("--events")
            .arg(&events_path);
        if let Some((cert, key)) = &opts.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        for (name, addr) in &opts.maps {
            cmd.arg("--map").arg(format!("{name}={addr}"));
        }
        if opts.events_verbose {
            cmd.arg("--events-verbose");
        }
        if let Some(every) = opts.ping_every {
            cmd.arg("--ping-every")
                .arg(every.as_millis().max(1).to_string());
        }
        if opts.stall_upgrade {
            cmd.arg("--stall-upgrade");
        }
        if let Some(status) = opts.refuse_upgrade {
            cmd.arg("--refuse-upgrade").arg(status.to_string());
        }
        if opts.mode != Mode::Blind {
            cmd.arg("--mode").arg(opts.mode.as_str());
        }
        if let Some(ca) = &opts.upstream_ca {
            cmd.arg("--upstream-ca").arg(ca);
        }
        for injection in &opts.inject {
            cmd.arg("--inject").arg(injection.to_string());
        }
        if opts.generation != Generation::UpstreamProxy {
            cmd.arg("--generation").arg(opts.generation.as_str());
        }
        if let Some(server) = opts.server {
            cmd.arg("--server").arg(server.as_str());
        }
        cmd.args(&opts.extra_args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let (child, addr) = ChildGuard::spawn_listening(cmd, dir.join("stderr.log"));
        DevGateway {
            addr,
            tls: opts.tls.is_some(),
            mode: opts.mode,
            generation: opts.generation,
            ca_pem_path: ca_dir.join(crate::pki::CA_CERT_FILE),
            events_path,
            token: opts.token,
            session_id: opts.session_id,
            child,
            dir,
        }
    }

    /// `http://127.0.0.1:PORT` or `https://…`: the relay's `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT/v1/code/upstreamproxy/ws` (or the agent-proxy
    /// path) or `wss://…`.
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.addr, self.generation.paths().0)
    }

    /// The event lines so far.
    pub fn events(&self) -> Vec<String> {
        fs::read_to_string(&self.events_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until an event line satisfies `pred` and returns it; panics
    /// with all events after `timeout`.
    pub fn wait_for_event(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events();
            if let Some(line) = events.iter().find(|l| pred(l)) {
                return line.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "no matching gateway event within {timeout:?}; events:\n{}",
                    events.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for an event line starting with `prefix`.
    pub fn wait_for_event_prefix(&self, prefix: &str, timeout: Duration) -> String {
        self.wait_for_event(timeout, |l| l.starts_with(prefix))
    }

    /// How many event lines start with `prefix`.
    pub fn count_events(&self, prefix: &str) -> usize {
        self.events()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }
}

/// A running `ccr-dev-origin`, killed on drop.
pub struct DevOrigin {
    pub addr: SocketAddr,
    pub tls: bool,
    pub child: ChildGuard,
    pub dir: TempDir,
}

impl DevOrigin {
    /// Starts an origin, HTTPS when given `(cert, key)` PEM files, and
    /// waits until it listens (panics after 10 s).
    pub fn start(tls: Option<(&Path, &Path)>) -> DevOrigin {
        DevOrigin::start_serving(tls, None)
    }

    /// [`DevOrigin::start`] with `--root`: files under `root` are served
    /// for paths no built-in route takes (a bare git repository after
    /// `git update-server-info` is a dumb-HTTP git remote).
    pub fn start_serving(tls: Option<(&Path, &Path)>, root: Option<&Path>) -> DevOrigin {
        let dir = temp_dir("origin");
        let mut cmd = Command::new(bin_path("ccr-dev-origin"));
        cmd.arg("--listen").arg("127.0.0.1:0");
        if let Some(root) = root {
            cmd.arg("--root").arg(root);
        }
        if let Some((cert, key)) = tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let (child, addr) = ChildGuard::spawn_listening(cmd, dir.join("stderr.log"));
        DevOrigin {
            addr,
            tls: tls.is_some(),
            child,
            dir,
        }
    }

    /// The origin's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}
