//! A session's surroundings for lifecycle tests of the real `ccr-relay`
//! binary: a scratch directory holding the token file, `HOME` and the CA
//! bundle; an environment built from nothing (only `PATH`, `HOME` and what
//! the test asks for, so the CI machine's `SSL_CERT_DIR`, `PIP_CERT` and the
//! like never leak in); `ccr-relay run|serve|doctor` started from it, always
//! bounded in time ([`Session`]); and a tiny HTTP server that answers every
//! request with fixed bytes, or never ([`TinyServer`]), to play a broken
//! gateway's CA endpoint.
//!
//! ```no_run
//! use ccr_integration::session_env::Session;
//! let s = Session::new("doc", "http://127.0.0.1:1").env("CLAUDE_CODE_REMOTE", "0");
//! let out = s.run(&["sh", "-c", "env"]);
//! assert!(out.var("HTTPS_PROXY").is_none());
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::procs::{DevGateway, bin_path};
use crate::temp::{TempDir, temp_dir};

/// The machine's CA bundle, given as `--system-ca`.
pub const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Default bound on one `ccr-relay` invocation.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// The token written by [`Session::new`].
pub const DEFAULT_TOKEN: &str = "test-token";
/// The session id set by [`Session::new`].
pub const DEFAULT_SESSION: &str = "test-session";
/// The four activation variables' names.
pub const REMOTE: &str = "CLAUDE_CODE_REMOTE";
pub const ENABLED: &str = "CCR_UPSTREAM_PROXY_ENABLED";
pub const SESSION_ID: &str = "CLAUDE_CODE_REMOTE_SESSION_ID";
/// Gate 2 of the second generation (the agent proxy).
pub const AGENT_ENABLED: &str = "CCR_AGENT_PROXY_ENABLED";

/// `setpriv` arguments that drop from root to `nobody:nogroup`.
pub const AS_NOBODY: &[&str] = &[
    "setpriv",
    "--reuid=nobody",
    "--regid=nogroup",
    "--clear-groups",
];
/// uid and gid of `nobody` and `nogroup` on Debian.
pub const NOBODY_UID: u32 = 65534;
pub const NOGROUP_GID: u32 = 65534;

/// A session's files and environment, from which the relay is started.
/// Every gate passes by default; tests close them with [`Session::env`],
/// [`Session::unset`] and the token-file helpers.
pub struct Session {
    /// Holds the token file, `HOME` and (by default) the bundle.
    pub dir: TempDir,
    pub home: PathBuf,
    pub token_file: PathBuf,
    /// The token written to [`Session::token_file`].
    pub token: String,
    /// `--ca-bundle` (default `<dir>/b/ca-bundle.crt`).
    pub bundle: PathBuf,
    /// `--base-url`.
    pub base_url: String,
    /// `--system-ca`.
    pub system_ca: PathBuf,
    env: BTreeMap<String, String>,
    args: Vec<OsString>,
    wrapper: Vec<OsString>,
    cwd: Option<PathBuf>,
    bundle_arg: bool,
}

impl Session {
    /// A session whose four gates pass (`CLAUDE_CODE_REMOTE=1`,
    /// `CCR_UPSTREAM_PROXY_ENABLED=1`, session [`DEFAULT_SESSION`], a token
    /// file holding [`DEFAULT_TOKEN`]), against the gateway at `base_url`.
    pub fn new(name: &str, base_url: &str) -> Session {
        let dir = temp_dir(&format!("lifecycle-{name}"));
        let home = dir.join("home");
        fs::create_dir_all(&home).expect("create HOME");
        let mut s = Session {
            token_file: dir.join("session_token"),
            bundle: dir.join("b").join("ca-bundle.crt"),
            home,
            dir,
            token: String::new(),
            base_url: base_url.to_string(),
            system_ca: PathBuf::from(SYSTEM_CA),
            env: BTreeMap::new(),
            args: Vec::new(),
            wrapper: Vec::new(),
            cwd: None,
            bundle_arg: true,
        };
        s.env.insert(REMOTE.into(), "1".into());
        s.env.insert(ENABLED.into(), "1".into());
        s.env.insert(SESSION_ID.into(), DEFAULT_SESSION.into());
        s.write_token(DEFAULT_TOKEN);
        s
    }

    /// A session with `gw`'s base URL, token and session id.
    pub fn for_gateway(name: &str, gw: &DevGateway) -> Session {
        let mut s = Session::new(name, &gw.base_url());
        s.write_token(&gw.token);
        s.env.insert(SESSION_ID.into(), gw.session_id.clone());
        s
    }

    /// (Re)writes the token file with `token` and a newline.
    pub fn write_token(&mut self, token: &str) {
        self.token = token.to_string();
        fs::write(&self.token_file, format!("{token}\n"))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.token_file.display()));
    }

    /// Sets a variable in the relay's environment.
    pub fn env(mut self, name: &str, value: &str) -> Session {
        self.env.insert(name.into(), value.into());
        self
    }

    /// The second generation: `CCR_AGENT_PROXY_ENABLED=1` instead of
    /// `CCR_UPSTREAM_PROXY_ENABLED=1`.
    pub fn agent_proxy(self) -> Session {
        self.unset(ENABLED).env(AGENT_ENABLED, "1")
    }

    /// Removes a variable from the relay's environment.
    pub fn unset(mut self, name: &str) -> Session {
        self.env.remove(name);
        self
    }

    /// Adds relay options (after the defaults, so a repeated option wins).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Session {
        self.args.push(arg.into());
        self
    }

    /// `--ca-bundle PATH` instead of the default.
    pub fn bundle_at(mut self, path: impl Into<PathBuf>) -> Session {
        self.bundle = path.into();
        self
    }

    /// No `--ca-bundle`: the relay's default, `$HOME/.ccr/ca-bundle.crt`.
    pub fn default_bundle(mut self) -> Session {
        self.bundle = self.home.join(".ccr").join("ca-bundle.crt");
        self.bundle_arg = false;
        self
    }

    /// `--system-ca PATH` instead of the machine's bundle.
    pub fn system_ca(mut self, path: impl Into<PathBuf>) -> Session {
        self.system_ca = path.into();
        self
    }

    /// The relay's working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Session {
        self.cwd = Some(dir.into());
        self
    }

    /// Runs the relay as `nobody:nogroup` (through `setpriv`), and hands
    /// the scratch directory to them so the relay can use it.
    pub fn as_nobody(mut self) -> Session {
        self.wrapper = AS_NOBODY.iter().map(OsString::from).collect();
        chown_tree(self.dir.path(), NOBODY_UID, NOGROUP_GID);
        self
    }

    /// Runs the relay through `wrapper` (a program and its arguments, the
    /// relay's path and arguments appended), e.g. to start it in a sandbox.
    pub fn wrapped(mut self, wrapper: &[&str]) -> Session {
        self.wrapper = wrapper.iter().map(OsString::from).collect();
        self
    }

    /// Whether the token file is still there holding what was written.
    pub fn token_file_intact(&self) -> bool {
        fs::read_to_string(&self.token_file).is_ok_and(|t| t == format!("{}\n", self.token))
    }

    /// `ccr-relay SUB [options] [-- COMMAND…]` with the session's
    /// environment and nothing else, in its own process group.
    pub fn command(&self, sub: &str, command: &[&str]) -> Command {
        let relay = bin_path("ccr-relay");
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&relay);
                c
            }
            None => Command::new(&relay),
        };
        cmd.arg(sub)
            .arg("--base-url")
            .arg(&self.base_url)
            .arg("--token-file")
            .arg(&self.token_file);
        if self.bundle_arg {
            cmd.arg("--ca-bundle").arg(&self.bundle);
        }
        cmd.arg("--system-ca").arg(&self.system_ca).args(&self.args);
        if !command.is_empty() {
            cmd.arg("--").args(command);
        }
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            // The trust installers write under the scratch directory, never
            // the machine's /etc (the tests run as root).
            .env("CCR_RELAY_INSTALL_ROOT", self.dir.join("root"))
            .envs(&self.env)
            .process_group(0);
        crate::procs::default_signals(&mut cmd);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// `ccr-relay run -- COMMAND…`, at most [`RUN_TIMEOUT`].
    pub fn run(&self, command: &[&str]) -> Outcome {
        self.run_within(command, RUN_TIMEOUT)
    }

    /// `ccr-relay run -- COMMAND…`, at most `timeout` (then the relay's
    /// process group is killed and the test panics with what it printed).
    pub fn run_within(&self, command: &[&str], timeout: Duration) -> Outcome {
        self.spawn("run", command).finish(timeout)
    }

    /// `ccr-relay doctor`, at most [`RUN_TIMEOUT`].
    pub fn doctor(&self) -> Outcome {
        self.spawn("doctor", &[]).finish(RUN_TIMEOUT)
    }

    /// Starts `ccr-relay SUB … [-- COMMAND…]` with stdout read line by line.
    pub fn spawn(&self, sub: &str, command: &[&str]) -> Running {
        Running::spawn(self.command(sub, command))
    }
}

/// Gives `path` and everything under it to `uid:gid`.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() && !path.is_symlink() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

/// A started relay: its stdout arrives line by line, its stderr is
/// collected; killed with its process group on drop.
pub struct Running {
    pub child: Child,
    started: Instant,
    lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts `cmd` with stdin closed and both outputs piped.
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        let out = child.stdout.take().expect("stdout is piped");
        let mut err = child.stderr.take().expect("stderr is piped");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let all_out = Arc::clone(&stdout);
        let out_reader = thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        all_out.lock().unwrap().push_str(&text);
                        let _ = tx.send(text.trim_end_matches('\n').to_string());
                    }
                }
            }
        });
        let all_err = Arc::clone(&stderr);
        let err_reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match err.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all_err
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        Running {
            child,
            started,
            lines,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Sends `sig` to the relay alone (not its process group).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on a child this value owns and has not reaped.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// What the relay has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a stdout line satisfying `pred`, and
    /// returns it; panics with both outputs otherwise.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no matching stdout line within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout.lock().unwrap(),
                    self.stderr_so_far()
                ),
            }
        }
    }

    /// Waits up to `timeout` for the relay to exit, then for its outputs
    /// to close (a grandchild holding them open gets 5 s more); on timeout
    /// kills the process group and panics with what it printed.
    pub fn finish(mut self, timeout: Duration) -> Outcome {
        let waiting_since = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the relay") {
                break status;
            }
            if waiting_since.elapsed() > timeout {
                self.kill_group();
                let _ = self.child.wait();
                panic!(
                    "the relay did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout.lock().unwrap(),
                    self.stderr_so_far()
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.started.elapsed();
        let deadline = Instant::now() + Duration::from_secs(5);
        for reader in self.readers.drain(..) {
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        Outcome {
            status,
            stdout: self.stdout.lock().unwrap().clone(),
            stderr: self.stderr_so_far(),
            elapsed,
        }
    }

    fn kill_group(&self) {
        // SAFETY: kill(2) on the process group our unreaped child leads.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
            let _ = self.child.wait();
        }
    }
}

/// What one relay invocation did.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// The exit code (`None` if the relay itself died of a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The signal that killed the relay itself, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    /// The status as a shell's `$?` shows it: the exit code, or 128+N when
    /// signal N killed the relay itself (as it does when it became the
    /// command with `exec`).
    pub fn shell_status(&self) -> i32 {
        self.status
            .code()
            .or_else(|| self.status.signal().map(|s| 128 + s))
            .unwrap_or(-1)
    }

    /// stderr's non-empty lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// The `NAME=value` lines of stdout (as `env` prints them) as a map;
    /// other lines are skipped.
    pub fn env(&self) -> BTreeMap<String, String> {
        parse_env(&self.stdout)
    }

    /// One variable from [`Outcome::env`].
    pub fn var(&self, name: &str) -> Option<String> {
        self.env().get(name).cloned()
    }

    /// Both outputs, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status {} after {:?}\n--- stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// The `NAME=value` lines of `text` (as `env` prints them).
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// What a [`TinyServer`] does with each request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Reads the request head, writes these bytes, closes.
    Bytes(Vec<u8>),
    /// Accepts the connection and never answers or closes it.
    Never,
    /// Reads the request head, writes `head`, then one byte of body every
    /// `every`, for as long as the client stays (a slow-loris answer).
    Trickle { head: Vec<u8>, every: Duration },
}

/// A one-thread HTTP server on loopback answering every request the same
/// way; counts connections; stops on drop.
pub struct TinyServer {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TinyServer {
    pub fn start(reply: Reply) -> TinyServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (Arc::clone(&hits), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                match &reply {
                    Reply::Never => held.push(conn),
                    Reply::Trickle { head, every } => {
                        let (head, every, s) = (head.clone(), *every, Arc::clone(&s));
                        thread::spawn(move || {
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                            let _ = read_request_head(&mut conn);
                            if conn.write_all(&head).is_err() {
                                return;
                            }
                            while !s.load(Ordering::SeqCst) && conn.write_all(b"A").is_ok() {
                                thread::sleep(every);
                            }
                        });
                    }
                    Reply::Bytes(bytes) => {
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = read_request_head(&mut conn);
                        let _ = conn.write_all(bytes);
                        let _ = conn.flush();
                        let _ = conn.shutdown(std::net::Shutdown::Both);
                    }
                }
            }
        });
        TinyServer {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request_head(conn: &mut TcpStream) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        if conn.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(())
}

/// An HTTP/1.1 answer with `Content-Length` and `Connection: close`.
pub fn http_answer(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Every variable name the relay may give a child (docs/PROTOCOL.md section 6
/// and the clients CLIENTS.md adds).
pub fn relay_var_names() -> Vec<&'static str> {
    use ccr_relay::env::*;
    let mut names: Vec<&'static str> = Vec::new();
    names.extend(PROXY_VARS);
    names.extend(NO_PROXY_VARS);
    names.extend(CA_VARS);
    names.extend([NODE_USE_ENV_PROXY, WGETRC, JAVA_TOOL_OPTIONS, MAVEN_OPTS]);
    // Section 6b: placeholders and git's settings.
    names.extend([
        "GH_TOKEN",
        "GITHUB_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "CLOUDSDK_AUTH_ACCESS_TOKEN",
        "GIT_TERMINAL_PROMPT",
        "GIT_ASKPASS",
        "GCM_INTERACTIVE",
        "GIT_CONFIG_COUNT",
        "GIT_CONFIG_KEY_0",
        "GIT_CONFIG_VALUE_0",
        "GIT_CONFIG_KEY_1",
        "GIT_CONFIG_VALUE_1",
        "GIT_CONFIG_KEY_2",
        "GIT_CONFIG_VALUE_2",
    ]);
    names
}

/// The relay's variables present in `env` (empty when the relay stayed out).
pub fn relay_vars_in(env: &BTreeMap<String, String>) -> Vec<String> {
    relay_var_names()
        .into_iter()
        .filter(|n| env.contains_key(*n))
        .map(|n| format!("{n}={}", env[n]))
        .collect()
}

/// A parent environment of exactly `pairs`, in the shape the relay's
/// library functions take one (`name -> value`), for tests that call them
/// directly rather than through the binary.
pub fn parent_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}
