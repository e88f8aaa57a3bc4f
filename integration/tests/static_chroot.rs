//! The static release (`make static`, STATIC.md) in an empty root: a temp
//! dir holding nothing but the binary and the token file (no libc, no
//! /etc/ssl, no shell) is the root of `chroot ROOT /ccr-relay serve …`. The
//! development gateway and an HTTPS origin run outside the chroot on
//! 127.0.0.1 (a chroot shares the network namespace); curl, outside too,
//! goes through the relay's port and trusts the origin with the bundle the
//! relay wrote into the root, and nothing else.
//!
//! The relay's own TLS to a `wss://` gateway needs roots in such an image:
//! `--gateway-ca FILE`, `SSL_CERT_FILE` or `SSL_CERT_DIR`, each checked
//! here with the vendored OpenSSL (whose compiled-in default paths are not
//! /etc/ssl), and a root with none of them must fail open.
//!
//! Every test is `#[ignore]`: they need the static binary, which `make
//! test` does not build, and root (for chroot). CI runs them after `make
//! static`:
//!
//! ```text
//! make static
//! cargo test -p ccr-integration --test static_chroot -- --ignored
//! ```
//!
//! A missing binary, a dynamically linked one, or one older than the
//! sources is a failure that says to run `make static`, never a skip.
//! `CCR_STATIC_BIN` names another binary to test.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ccr_integration::pattern;
use ccr_integration::relay::{BlindPki, curl_via, parse_env_file};
use ccr_integration::{DevGateway, DevOrigin, TempDir, temp_dir};

const TARGET: &str = "x86_64-unknown-linux-musl";
const WAIT: Duration = Duration::from_secs(10);
/// The relay's stderr line when the root has no system CA bundle.
const NO_SYSTEM_BUNDLE: &str = "ccr-relay: warning: no system CA bundle found";
const HELLO: &str = "hello from origin\n";

// ---------------------------------------------------------------------------
// The binary, root, chroot(8)

/// The workspace's target directory: the test runs from
/// `target/<profile>/deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let mut dir = exe.parent().expect("in a directory").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.pop();
    dir
}

/// The newest modification time of the files the binary is built from.
fn newest_source() -> Option<(SystemTime, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ is in the workspace");
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut consider = |path: PathBuf| {
        if let Ok(t) = fs::metadata(&path).and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(n, _)| t > *n)
        {
            newest = Some((t, path));
        }
    };
    consider(root.join("Cargo.toml"));
    consider(root.join("Cargo.lock"));
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                consider(path);
            }
        }
    }
    newest
}

/// Whether the ELF file at `path` asks for a program interpreter (a
/// dynamic loader): `Some(true)` for a dynamically linked executable.
fn has_interpreter(path: &Path) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    let elf = fs::read(path).ok()?;
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None; // not a 64-bit ELF file
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let phoff = u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?) as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    let mut interp = false;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?);
        interp |= p_type == PT_INTERP;
    }
    Some(interp)
}

/// The static binary, checked: it exists, has no dynamic loader, and is
/// not older than the sources. Any failure says what to run.
fn static_binary() -> PathBuf {
    let path = match std::env::var_os("CCR_STATIC_BIN") {
        Some(p) => PathBuf::from(p),
        None => target_dir().join(TARGET).join("release").join("ccr-relay"),
    };
    if !path.is_file() {
        panic!(
            "the static binary {} does not exist: run `make static` first \
             (this test never skips; CCR_STATIC_BIN names another binary)",
            path.display()
        );
    }
    match has_interpreter(&path) {
        Some(false) => {}
        Some(true) => panic!(
            "{} is dynamically linked (it names a program interpreter): run `make static`",
            path.display()
        ),
        None => panic!("{} is not a 64-bit ELF executable", path.display()),
    }
    if std::env::var_os("CCR_STATIC_BIN").is_none() {
        let built = fs::metadata(&path).and_then(|m| m.modified()).ok();
        if let (Some(built), Some((source, source_path))) = (built, newest_source())
            && source > built
        {
            panic!(
                "the static binary {} is older than {}: run `make static` again",
                path.display(),
                source_path.display()
            );
        }
    }
    path
}

/// chroot(2) needs CAP_SYS_CHROOT: CI runs as root.
fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests chroot and must run as root (CI does); run them with sudo"
    );
}

/// chroot(8): on PATH, else where Debian puts it.
fn chroot_program() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .expect("chroot(8) not found: install coreutils")
}

/// A fresh root holding the static binary as `/ccr-relay` (mode 0755) and
/// nothing else.
fn empty_root() -> TempDir {
    let binary = static_binary();
    let root = temp_dir("static-root");
    let dest = root.join("ccr-relay");
    fs::copy(&binary, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", binary.display()));
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).unwrap();
    // The temp dir is 0700 by umask on some machines; a root dir is 0755.
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// Every file and directory under `root`, as absolute paths inside it.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let inside = path.strip_prefix(root).unwrap().to_string_lossy();
            out.push(format!("/{inside}"));
            if path.is_dir() {
                dirs.push(path);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// The relay in the root

/// How the relay inside the root finds the roots for a `wss://` gateway.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Roots {
    /// A `ws://` gateway: no TLS of its own.
    None,
    /// `--gateway-ca /gw-ca.pem`.
    GatewayCa,
    /// `SSL_CERT_FILE=/gw-ca.pem`.
    CertFile,
    /// `SSL_CERT_DIR=/certs`, holding the CA under its OpenSSL hash name.
    CertDir,
}

/// `chroot ROOT /ccr-relay serve …`, killed (and reaped) on drop; its
/// stderr is printed when a test panics while it runs.
struct ChrootRelay {
    child: Child,
    stderr_log: PathBuf,
    /// Outside the root: holds the stderr log.
    _logs: TempDir,
}

impl ChrootRelay {
    /// Writes `/token` into `root` and starts the relay there against `gw`,
    /// with the activation environment and nothing else (no PATH, no HOME,
    /// none of the host's SSL_CERT_* variables) but `env`.
    fn start(root: &Path, gw: &DevGateway, args: &[&str], env: &[(&str, &str)]) -> ChrootRelay {
        fs::write(root.join("token"), format!("{}\n", gw.token)).unwrap();
        let logs = temp_dir("static-logs");
        let stderr_log = logs.join("stderr.log");
        let mut cmd = Command::new(chroot_program());
        cmd.arg(root)
            .arg("/ccr-relay")
            .arg("serve")
            .arg("--base-url")
            .arg(gw.base_url())
            .arg("--token-file")
            .arg("/token")
            .arg("--ca-bundle")
            .arg("/ccr/ca-bundle.crt")
            .arg("--env-file")
            .arg("/env.sh")
            .args(args)
            .env_clear()
            .env("CLAUDE_CODE_REMOTE", "1")
            .env("CCR_UPSTREAM_PROXY_ENABLED", "1")
            .env("CLAUDE_CODE_REMOTE_SESSION_ID", &gw.session_id)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_log).unwrap());
        let child = cmd.spawn().expect("start chroot ROOT /ccr-relay serve");
        ChrootRelay {
            child,
            stderr_log,
            _logs: logs,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr_log).unwrap_or_default()).into_owned()
    }

    /// Waits for `ROOT/env.sh` (written once the relay listens); its
    /// variables. Panics with the relay's stderr if it exits first.
    fn wait_env_file(&mut self, root: &Path) -> Vec<(String, String)> {
        let path = root.join("env.sh");
        let started = Instant::now();
        loop {
            if let Ok(text) = fs::read_to_string(&path)
                && text.ends_with('\n')
            {
                return parse_env_file(&text);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the relay in the root exited ({status}) without writing /env.sh; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                started.elapsed() < WAIT,
                "the relay in the root wrote no /env.sh within {WAIT:?}; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for the relay to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "the relay did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM (chroot(8) execs the relay, so this is the relay's pid);
    /// the exit status.
    fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) with the pid of a child this value owns, not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(5))
    }
}

impl Drop for ChrootRelay {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) && thread::panicking() {
            eprintln!(
                "--- stderr of the relay in the root ---\n{}--- end ---",
                self.stderr()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl outside the root, through `proxy`, trusting `cacert` alone, with a
/// clean environment (none of the host's proxy or CA variables): stdout.
fn curl(proxy: &str, cacert: &Path, extra: &[&str], url: &str) -> Vec<u8> {
    // A later --max-time overrides curl_via's 20 s: these requests keep
    // their 30 s bound.
    let extra = [&["--max-time", "30"], extra].concat();
    let out = curl_via(proxy, cacert, url, &extra);
    assert!(
        out.status.success(),
        "curl {url} through {proxy}: {}\n{}",
        out.status,
        out.stderr
    );
    out.stdout
}

fn var<'a>(vars: &'a [(String, String)], name: &str) -> &'a str {
    vars.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in /env.sh: {vars:?}"))
}

/// PEM text with one trailing newline, for comparing bundles.
fn pem(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{}\n", text.trim_end())
}

/// The whole scene: an HTTPS origin for `origin.test` signed by the CA the
/// gateway serves, the gateway (`wss://` unless `roots` is
/// [`Roots::None`]), the static relay in an empty root given `roots`;
/// then the checks of the issue: the warning, the bundle, real traffic,
/// SIGTERM → 0.
fn relay_in_empty_root(roots: Roots) {
    let pki = BlindPki::new();
    let origin: DevOrigin = pki.https_origin(&["origin.test"]);
    let tls = roots != Roots::None;
    let gw = DevGateway::start(pki.gateway_options(tls).map("origin.test:443", origin.addr));
    let root = empty_root();

    let gw_ca = pki.gateway_tls_ca_pem();
    let mut args: Vec<&str> = Vec::new();
    let mut env: Vec<(&str, &str)> = Vec::new();
    match roots {
        Roots::None => {}
        Roots::GatewayCa => {
            fs::copy(&gw_ca, root.join("gw-ca.pem")).unwrap();
            args.extend(["--gateway-ca", "/gw-ca.pem"]);
        }
        Roots::CertFile => {
            fs::copy(&gw_ca, root.join("gw-ca.pem")).unwrap();
            env.push(("SSL_CERT_FILE", "/gw-ca.pem"));
        }
        Roots::CertDir => {
            // What c_rehash makes: the certificate under its subject hash.
            let cert = openssl::x509::X509::from_pem(&fs::read(&gw_ca).unwrap()).unwrap();
            fs::create_dir(root.join("certs")).unwrap();
            let name = format!("{:08x}.0", cert.subject_name_hash());
            fs::copy(&gw_ca, root.join("certs").join(name)).unwrap();
            env.push(("SSL_CERT_DIR", "/certs"));
        }
    }
    let before = listing(root.path());
    let mut relay = ChrootRelay::start(root.path(), &gw, &args, &env);
    let vars = relay.wait_env_file(root.path());
    let stderr = relay.stderr();

    // The system bundle: none in an empty root, except that SSL_CERT_FILE
    // names one (openssl-probe honours it).
    let bundle_path = root.join("ccr").join("ca-bundle.crt");
    let bundle = pem(&bundle_path);
    let served = pem(&pki.served_ca_pem());
    if roots == Roots::CertFile {
        assert!(!stderr.contains(NO_SYSTEM_BUNDLE), "{stderr}");
        assert_eq!(
            bundle,
            format!("{}{served}", pem(&gw_ca)),
            "SSL_CERT_FILE's file is the system part, then the gateway's CA"
        );
    } else {
        assert!(
            stderr.lines().any(|l| l.starts_with(NO_SYSTEM_BUNDLE)),
            "the relay warns that it found no system bundle; stderr:\n{stderr}"
        );
        assert_eq!(
            bundle, served,
            "the bundle holds exactly the CA the gateway serves"
        );
    }
    assert_eq!(var(&vars, "SSL_CERT_FILE"), "/ccr/ca-bundle.crt");
    assert_eq!(var(&vars, "CURL_CA_BUNDLE"), "/ccr/ca-bundle.crt");
    assert!(
        !root.join("token").exists(),
        "the token file is unlinked once the relay listens"
    );
    assert!(
        !stderr.contains(&gw.token),
        "the token never appears on stderr"
    );

    // Real traffic, from outside the root, trusting the written bundle only.
    let proxy = var(&vars, "HTTPS_PROXY").to_string();
    let proxy_addr: SocketAddr = proxy
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("HTTPS_PROXY {proxy:?} is not http://IP:PORT"));
    assert!(proxy_addr.ip().is_loopback(), "{proxy}");
    let body = curl(&proxy, &bundle_path, &[], "https://origin.test/hello");
    assert_eq!(String::from_utf8_lossy(&body), HELLO);
    const LEN: u64 = 8 << 20;
    let download = temp_dir("static-download");
    let file = download.join("bytes.bin");
    curl(
        &proxy,
        &bundle_path,
        &["-o", file.to_str().unwrap()],
        &format!("https://origin.test/bytes/{LEN}"),
    );
    pattern::verify_file(&file, LEN).expect("8 MiB through the relay, byte for byte");
    let end = gw.wait_for_event_prefix("tunnel-end origin.test:443 ", WAIT);
    assert!(!end.contains(" in=0 "), "bytes went through: {end}");

    let status = relay.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM → exit 0 ({status}); stderr:\n{}",
        relay.stderr()
    );
    // What the relay added to the root: the bundle and its companions, the
    // env file; the token is gone.
    let after = listing(root.path());
    let added: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
    eprintln!("{roots:?}: the relay wrote {added:?}");
    assert!(added.contains(&&"/ccr/ca-bundle.crt".to_string()));
    assert!(added.contains(&&"/env.sh".to_string()));
    assert!(
        added
            .iter()
            .all(|p| p.starts_with("/ccr") || *p == "/env.sh"),
        "the relay writes only next to its bundle and the env file: {added:?}"
    );
}

// ---------------------------------------------------------------------------
// The tests

#[test]
#[ignore = "needs `make static` and root; .ci/run runs it after `make static`"]
fn static_binary_is_static_and_names_musl_and_openssl() {
    require_root();
    let root = empty_root();
    let out = Command::new(chroot_program())
        .arg(root.path())
        .args(["/ccr-relay", "--version"])
        .env_clear()
        .output()
        .expect("chroot ROOT /ccr-relay --version");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--version in an empty root: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("chroot ROOT /ccr-relay --version: {}", stdout.trim_end());
    assert!(stdout.starts_with("ccr-relay "), "{stdout}");
    assert!(
        stdout.contains(" (x86_64-linux-musl, OpenSSL 3."),
        "--version names the musl target and the vendored OpenSSL: {stdout}"
    );
    let size = fs::metadata(static_binary()).unwrap().len();
    eprintln!(
        "static binary: {size} bytes ({:.2} MiB)",
        size as f64 / (1 << 20) as f64
    );
}

#[test]
#[ignore = "needs `make static` and root; .ci/run runs it after `make static`"]
fn empty_root_relays_https_over_ws_gateway() {
    require_root();
    relay_in_empty_root(Roots::None);
}

#[test]
#[ignore = "needs `make static` and root; .ci/run runs it after `make static`"]
fn empty_root_wss_gateway_with_gateway_ca_flag() {
    require_root();
    relay_in_empty_root(Roots::GatewayCa);
}

#[test]
#[ignore = "needs `make static` and root; .ci/run runs it after `make static`"]
fn empty_root_wss_gateway_with_ssl_cert_file() {
    require_root();
    relay_in_empty_root(Roots::CertFile);
}

#[test]
#[ignore = "needs `make static` and root; .ci/run runs it after `make static`"]
fn empty_root_wss_gateway_with_ssl_cert_dir() {
    require_root();
    relay_in_empty_root(Roots::CertDir);
}

/// The image's entrypoint, `ccr-relay run -- <agent>`, with the defaults
/// such an image has: the token at `/run/ccr/session_token`, the gateway
/// in `ANTHROPIC_BASE_URL`, no `HOME`, no shell. The only program in the
/// root is the relay itself, so it is the agent too (`--version`).
#[test]
#[ignore = "needs `make static` and root; .ci/run runs it after `make static`"]
fn empty_root_run_wraps_the_agent() {
    require_root();
    let pki = BlindPki::new();
    let gw = DevGateway::start(pki.gateway_options(false));
    let root = empty_root();
    fs::create_dir_all(root.join("run/ccr")).unwrap();
    fs::write(
        root.join("run/ccr/session_token"),
        format!("{}\n", gw.token),
    )
    .unwrap();
    let out = Command::new(chroot_program())
        .arg(root.path())
        .args(["/ccr-relay", "run", "--", "/ccr-relay", "--version"])
        .env_clear()
        .env("CLAUDE_CODE_REMOTE", "1")
        .env("CCR_UPSTREAM_PROXY_ENABLED", "1")
        .env("CLAUDE_CODE_REMOTE_SESSION_ID", &gw.session_id)
        .env("ANTHROPIC_BASE_URL", gw.base_url())
        .stdin(Stdio::null())
        .output()
        .expect("chroot ROOT /ccr-relay run -- /ccr-relay --version");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "run in an empty root: {}\n{stdout}{stderr}",
        out.status
    );
    assert!(stdout.starts_with("ccr-relay "), "the agent ran: {stdout}");
    assert!(
        !stderr.contains("continuing without the proxy"),
        "the proxy started: {stderr}"
    );
    assert!(
        !root.join("run/ccr/session_token").exists(),
        "the relay started and unlinked the token file; stderr:\n{stderr}"
    );
}

/// With no roots at all, the vendored OpenSSL trusts nothing (its
/// compiled-in paths are not the host's /etc/ssl): the relay fails open,
/// says why, writes no env file and exits 0.
#[test]
#[ignore = "needs `make static` and root; .ci/run runs it after `make static`"]
fn empty_root_wss_gateway_without_roots_fails_open() {
    require_root();
    let pki = BlindPki::new();
    let gw = DevGateway::start(pki.gateway_options(true));
    let root = empty_root();
    let mut relay = ChrootRelay::start(root.path(), &gw, &[], &[]);
    let status = relay.wait_exit(Duration::from_secs(15));
    let stderr = relay.stderr();
    assert_eq!(status.code(), Some(0), "fails open: {status}\n{stderr}");
    assert!(
        stderr.contains("TLS to the gateway failed") && stderr.contains("--gateway-ca"),
        "the warning names the TLS failure and the way out:\n{stderr}"
    );
    assert!(!root.join("env.sh").exists(), "no env file: proxy off");
    assert!(
        root.join("token").exists(),
        "the token file stays for a retry"
    );
}
