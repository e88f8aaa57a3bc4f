//! The client matrix: real clients, each run as `ccr-relay run -- CLIENT …`
//! with nothing but the environment the relay gives it (no flag or file of
//! their own for the proxy or the CA), against local origins behind the
//! development gateway in MITM mode.
//!
//! The origins' certificates come from a test CA no client is told about;
//! the gateway forges a leaf for each host from its own CA, which a client
//! can only trust through what the relay set up (the merged bundle, the
//! variables naming it, the wgetrc, the Java truststore). The `.test` names
//! resolve nowhere: the only way to them is the relay's proxy. So a row
//! passes only if the client takes both the proxy and the CA from the
//! relay.
//!
//! One origin serves HTTPS for `origin.test`, `pypi.test`, `git.test` and
//! `npm.test`, another plain HTTP for `origin.test`; both serve a directory
//! (`ccr-dev-origin --root`) holding a PEP 503 index with a wheel, a bare
//! git repository prepared for dumb HTTP, and an npm registry document.
//!
//! A client missing from the machine fails its row, naming what CI must
//! install (`.ci/run` installs them); rows are never skipped.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::pki::TestCa;
use ccr_integration::relay::{RelayOptions, SYSTEM_CA, relay_command};
use ccr_integration::{ChildGuard, DevGateway, GatewayOptions, TempDir, bin_path, temp_dir};

const WAIT: Duration = Duration::from_secs(10);
/// Longest a client may take (a JVM compiling its source on a busy machine
/// is the slowest).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const HELLO: &str = "hello from origin\n";
const INJECTED: &str = "X-Api-Key: injected-secret";

/// The HTTPS names the gateway maps to the TLS origin.
const TLS_NAMES: &[&str] = &["origin.test", "pypi.test", "git.test", "npm.test"];

// ---------------------------------------------------------------------------
// The scene

struct Scene {
    dir: TempDir,
    _tls_origin: ChildGuard,
    _plain_origin: ChildGuard,
    gw: DevGateway,
}

/// Starts `ccr-dev-origin --root root` (HTTPS with `tls`), its stderr in
/// `dir`.
fn start_origin(dir: &Path, root: &Path, tls: Option<(&Path, &Path)>) -> (ChildGuard, SocketAddr) {
    let mut cmd = Command::new(bin_path("ccr-dev-origin"));
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--root")
        .arg(root);
    if let Some((cert, key)) = tls {
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    let name = if tls.is_some() { "https" } else { "http" };
    ChildGuard::spawn_listening(cmd, dir.join(format!("origin-{name}.stderr.log")))
}

impl Scene {
    fn start(name: &str) -> Scene {
        let dir = temp_dir(&format!("clients-{name}"));
        // `home` is the relay's (and so the clients') HOME: relay_command
        // puts it there.
        for sub in ["root", "home", "work"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let origin_ca = TestCa::new(&dir.join("origin-ca")).unwrap();
        let (cert, key) = origin_ca.issue_leaf(TLS_NAMES);
        let root = dir.join("root");
        let (tls_origin, tls_addr) = start_origin(dir.path(), &root, Some((&cert, &key)));
        let (plain_origin, plain_addr) = start_origin(dir.path(), &root, None);
        let mut opts = GatewayOptions::default()
            .mitm(&origin_ca.cert_path())
            .inject("origin.test", "X-Api-Key", "injected-secret")
            .map("origin.test:80", plain_addr);
        for name in TLS_NAMES {
            opts = opts.map(&format!("{name}:443"), tls_addr);
        }
        let gw = DevGateway::start(opts);
        Scene {
            dir,
            _tls_origin: tls_origin,
            _plain_origin: plain_origin,
            gw,
        }
    }

    /// The directory the origins serve.
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The clients' working directory.
    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// `ccr-relay run -- COMMAND…` in [`Self::work`], as
    /// [`relay_command`] makes it: the four gates open, a fresh token file,
    /// `HOME` and the bundle in the scene's directory, no environment but
    /// `PATH` and `HOME` (the machine's own proxy and CA variables do not
    /// leak in). Killed, with what it started, after [`CLIENT_TIMEOUT`].
    /// Panics if the relay did not start.
    fn run(&self, command: &[&str]) -> Output {
        self.run_with(command, &[])
    }

    /// [`Self::run`] with `parent` added to the relay's environment (what
    /// the container already set before the relay started).
    fn run_with(&self, command: &[&str], parent: &[(&str, &str)]) -> Output {
        let stdout_path = self.dir.join("client.stdout");
        let stderr_path = self.dir.join("client.stderr");
        let (mut cmd, token) =
            relay_command("run", &self.gw, &RelayOptions::default(), self.dir.path());
        cmd.envs(parent.iter().copied())
            .arg("--")
            .args(command)
            .current_dir(self.work())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap());
        let mut child = cmd.spawn().expect("start ccr-relay run");
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let Some(status) = status else {
            // The relay and the client: the process group the relay leads.
            // SAFETY: kill(2) on the process group of our unreaped child.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "{command:?} did not finish within {CLIENT_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- gateway events ---\n{}",
                fs::read_to_string(&stdout_path).unwrap_or_default(),
                fs::read_to_string(&stderr_path).unwrap_or_default(),
                self.gw.events().join("\n")
            );
        };
        let out = Output {
            status,
            stdout: fs::read(&stdout_path).unwrap(),
            stderr: fs::read(&stderr_path).unwrap(),
        };
        assert!(
            !token.exists(),
            "the relay did not start (the token file is still there), so {command:?} ran \
             without a proxy; its stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `command` through the relay and returns its stdout; panics with
    /// everything there is to know if it fails.
    fn run_ok(&self, command: &[&str]) -> String {
        self.run_ok_with(command, &[])
    }

    /// [`Self::run_ok`] with `parent` added to the relay's environment.
    fn run_ok_with(&self, command: &[&str], parent: &[(&str, &str)]) -> String {
        let out = self.run_with(command, parent);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{command:?} failed through the relay ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}\n--- gateway events ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.gw.events().join("\n")
        );
        stdout
    }

    /// Waits for the gateway to have terminated TLS for `host` (the client
    /// came through the relay and trusted a forged leaf) or, for plain HTTP,
    /// to have rewritten a plain tunnel to it.
    fn expect_mitm(&self, host: &str, tls: bool) {
        let event = if tls {
            format!("mitm {host} tls")
        } else {
            format!("mitm {host} plain")
        };
        self.gw.wait_for_event_prefix(&event, WAIT);
    }
}

/// What a container with its own CA set-up (this kind of machine among
/// them) exports before the relay starts: every CA variable naming the
/// system bundle, which lacks the gateway CA. The relay must override them.
const CONTAINER_CA_VARS: &[(&str, &str)] = &[
    ("SSL_CERT_FILE", SYSTEM_CA),
    ("SSL_CERT_DIR", "/etc/ssl/certs"),
    ("NODE_EXTRA_CA_CERTS", SYSTEM_CA),
    ("REQUESTS_CA_BUNDLE", SYSTEM_CA),
    ("CURL_CA_BUNDLE", SYSTEM_CA),
    ("GIT_SSL_CAINFO", SYSTEM_CA),
    ("PIP_CERT", SYSTEM_CA),
    ("AWS_CA_BUNDLE", SYSTEM_CA),
    ("NIX_SSL_CERT_FILE", SYSTEM_CA),
    ("HTTPLIB2_CA_CERTS", SYSTEM_CA),
    ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", SYSTEM_CA),
    ("CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", SYSTEM_CA),
];

// ---------------------------------------------------------------------------
// What a row needs from the machine

/// Whether `program` is an executable file on `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Fails the row, loudly, when `program` is missing: CI must install
/// `package`.
fn require(program: &str, package: &str) {
    assert!(
        on_path(program),
        "client `{program}` is not installed on this machine, so this row of the client matrix \
         cannot run (it is never skipped): CI must install {package} (see .ci/run)"
    );
}

/// Fails the row when `python3` cannot import `module`.
fn require_python_module(module: &str, package: &str) {
    require("python3", "the apt package `python3`");
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("import {module}"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 cannot import `{module}`, so this row of the client matrix cannot run (it is \
         never skipped): CI must install {package} (see .ci/run)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a set-up command (not through the relay) and panics if it fails.
fn setup(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "set-up step {cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    ccr_integration::pattern::hex(&openssl::sha::sha256(bytes))
}

// ---------------------------------------------------------------------------
// curl

/// The whole of a `/headers` row: `command` through the relay (with
/// `parent` added to its environment) prints `prefix` then the request
/// head the origin received, which carries the gateway's injected header,
/// and the gateway terminated TLS (`tls`) or rewrote a plain tunnel.
fn headers_row(name: &str, command: &[&str], parent: &[(&str, &str)], prefix: &str, tls: bool) {
    let scene = Scene::start(name);
    let body = scene.run_ok_with(command, parent);
    assert!(body.starts_with(prefix), "{body}");
    assert!(body.lines().any(|l| l == INJECTED), "{body}");
    scene.expect_mitm("origin.test", tls);
}

/// What curl and wget print for `/headers`: the head alone.
const HEAD: &str = "GET /headers HTTP/1.1\n";

#[test]
fn curl_https() {
    require("curl", "the apt package `curl`");
    let url = "https://origin.test/headers";
    let curl = ["curl", "-sS", "--fail", "--max-time", "30", url];
    headers_row("curl-https", &curl, &[], HEAD, true);
}

#[test]
fn curl_http() {
    require("curl", "the apt package `curl`");
    let url = "http://origin.test/headers";
    let curl = ["curl", "-sS", "--fail", "--max-time", "30", url];
    headers_row("curl-http", &curl, &[], HEAD, false);
}

// ---------------------------------------------------------------------------
// wget

#[test]
fn wget_https() {
    require("wget", "the apt package `wget`");
    let url = "https://origin.test/headers";
    let wget = ["wget", "-q", "-t", "1", "-T", "30", "-O", "-", url];
    headers_row("wget-https", &wget, &[], HEAD, true);
}

// ---------------------------------------------------------------------------
// Python

const URLLIB: &str = "\
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=30) as r:
    sys.stdout.write('status %d\\n' % r.status)
    sys.stdout.write(r.read().decode())
";

const REQUESTS: &str = "\
import sys, requests
r = requests.get(sys.argv[1], timeout=30)
sys.stdout.write('status %d\\n' % r.status_code)
sys.stdout.write(r.text)
";

fn python_row(name: &str, script: &str, url: &str, tls: bool) {
    python_row_with(name, script, url, tls, &[]);
}

fn python_row_with(name: &str, script: &str, url: &str, tls: bool, parent: &[(&str, &str)]) {
    let command = ["python3", "-c", script, url];
    headers_row(
        name,
        &command,
        parent,
        "status 200\nGET /headers HTTP/1.1\n",
        tls,
    );
}

#[test]
fn python_urllib_https() {
    require("python3", "the apt package `python3`");
    python_row("urllib-https", URLLIB, "https://origin.test/headers", true);
}

#[test]
fn python_urllib_http() {
    require("python3", "the apt package `python3`");
    python_row("urllib-http", URLLIB, "http://origin.test/headers", false);
}

#[test]
fn python_requests_https() {
    require_python_module("requests", "the pip package `requests`");
    python_row(
        "requests-https",
        REQUESTS,
        "https://origin.test/headers",
        true,
    );
}

#[test]
fn python_requests_http() {
    require_python_module("requests", "the pip package `requests`");
    python_row(
        "requests-http",
        REQUESTS,
        "http://origin.test/headers",
        false,
    );
}

#[test]
fn python_requests_https_with_the_containers_ca_variables() {
    require_python_module("requests", "the pip package `requests`");
    python_row_with(
        "requests-container",
        REQUESTS,
        "https://origin.test/headers",
        true,
        CONTAINER_CA_VARS,
    );
}

// ---------------------------------------------------------------------------
// pip

const WHEEL: &str = "ccr_probe-1.0.0-py3-none-any.whl";

/// Writes a minimal pure-Python wheel for `ccr-probe 1.0.0` to `path`.
fn build_wheel(path: &Path) {
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "ccr_probe/__init__.py": b"VALUE = 'ccr-probe'\n",
    "ccr_probe-1.0.0.dist-info/METADATA":
        b"Metadata-Version: 2.1\nName: ccr-probe\nVersion: 1.0.0\nSummary: ccr-relay test package\n",
    "ccr_probe-1.0.0.dist-info/WHEEL":
        b"Wheel-Version: 1.0\nGenerator: ccr-relay-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += "%s,sha256=%s,%d\n" % (name, digest, len(data))
record += "ccr_probe-1.0.0.dist-info/RECORD,,\n"
files["ccr_probe-1.0.0.dist-info/RECORD"] = record.encode()
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    for name, data in files.items():
        z.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data)
"#;
    setup(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default()),
    );
}

#[test]
fn pip_download_from_a_pep503_index() {
    require("python3", "the apt package `python3`");
    let scene = Scene::start("pip");
    let root = scene.root();
    fs::create_dir_all(root.join("packages")).unwrap();
    fs::create_dir_all(root.join("simple/ccr-probe")).unwrap();
    let wheel_path = root.join("packages").join(WHEEL);
    build_wheel(&wheel_path);
    let wheel = fs::read(&wheel_path).unwrap();
    fs::write(
        root.join("simple/index.html"),
        "<!DOCTYPE html>\n<html><body><a href=\"/simple/ccr-probe/\">ccr-probe</a></body></html>\n",
    )
    .unwrap();
    fs::write(
        root.join("simple/ccr-probe/index.html"),
        format!(
            "<!DOCTYPE html>\n<html><body>\n<a href=\"/packages/{WHEEL}#sha256={}\">{WHEEL}</a>\n</body></html>\n",
            sha256_hex(&wheel)
        ),
    )
    .unwrap();
    let out = scene.run(&["python3", "-m", "pip", "--version"]);
    assert!(
        out.status.success(),
        "pip is not installed for python3, so this row of the client matrix cannot run (it is \
         never skipped): CI must install the apt package `python3-pip` (see .ci/run)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = scene.work().join("downloads");
    let dest_s = dest.to_string_lossy().into_owned();
    scene.run_ok(&[
        "python3",
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--timeout",
        "30",
        "--retries",
        "0",
        "-d",
        &dest_s,
        "--index-url",
        "https://pypi.test/simple/",
        "ccr-probe",
    ]);
    let got = fs::read(dest.join(WHEEL)).expect("pip downloaded the wheel");
    assert_eq!(got, wheel, "the downloaded wheel is the one served");
    scene.expect_mitm("pypi.test", true);
}

// ---------------------------------------------------------------------------
// git

#[test]
fn git_clone_over_dumb_http() {
    git_row("git", &[]);
}

#[test]
fn git_clone_with_the_containers_ca_variables() {
    git_row("git-container", CONTAINER_CA_VARS);
}

fn git_row(name: &str, parent: &[(&str, &str)]) {
    require("git", "the apt package `git`");
    let scene = Scene::start(name);
    let bare = scene.root().join("repo.git");
    let src = scene.dir.join("src");
    let git = |dir: &Path| {
        let mut cmd = Command::new("git");
        cmd.current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", scene.home())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args([
                "-c",
                "user.name=ccr",
                "-c",
                "user.email=ccr@example.invalid",
            ]);
        cmd
    };
    fs::create_dir_all(&src).unwrap();
    let content = "cloned through ccr-relay\n";
    fs::write(src.join("README"), content).unwrap();
    setup(
        git(scene.dir.path())
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare),
    );
    setup(git(&src).args(["init", "-q", "-b", "main"]));
    setup(git(&src).args(["add", "README"]));
    setup(git(&src).args(["commit", "-q", "-m", "first"]));
    setup(git(&src).arg("push").arg("-q").arg(&bare).arg("main"));
    setup(git(&bare).arg("update-server-info"));

    scene.run_ok_with(
        &["git", "clone", "-q", "https://git.test/repo.git", "clone"],
        parent,
    );
    let cloned = fs::read_to_string(scene.work().join("clone").join("README"))
        .expect("the clone has the committed file");
    assert_eq!(cloned, content);
    scene.expect_mitm("git.test", true);
}

// ---------------------------------------------------------------------------
// npm

/// Writes the registry document of `ccr-probe` (latest 2.3.4) where
/// `https://npm.test/ccr-probe` finds it.
fn npm_registry(scene: &Scene) {
    let doc = scene.root().join("ccr-probe");
    fs::create_dir_all(&doc).unwrap();
    fs::write(
        doc.join("index.json"),
        r#"{
  "name": "ccr-probe",
  "dist-tags": { "latest": "2.3.4" },
  "versions": {
    "1.0.0": {
      "name": "ccr-probe",
      "version": "1.0.0",
      "dist": { "tarball": "https://npm.test/ccr-probe/-/ccr-probe-1.0.0.tgz" }
    },
    "2.3.4": {
      "name": "ccr-probe",
      "version": "2.3.4",
      "description": "ccr-relay test package",
      "dist": { "tarball": "https://npm.test/ccr-probe/-/ccr-probe-2.3.4.tgz" }
    }
  },
  "time": { "1.0.0": "2020-01-01T00:00:00.000Z", "2.3.4": "2021-01-01T00:00:00.000Z" }
}
"#,
    )
    .unwrap();
}

/// `npm view ccr-probe version` through the relay, with `extra` arguments.
fn npm_view(scene: &Scene, extra: &[&str]) {
    let mut command = vec![
        "npm",
        "view",
        "ccr-probe",
        "version",
        "--registry",
        "https://npm.test/",
        "--no-update-notifier",
        "--fetch-retries",
        "0",
    ];
    command.extend_from_slice(extra);
    let out = scene.run_ok(&command);
    assert_eq!(out.trim(), "2.3.4");
    scene.expect_mitm("npm.test", true);
}

/// npm as the machine has it configured (its global npmrc may name a
/// `cafile`, as images that set up a corporate CA often do).
#[test]
fn npm_view_from_a_registry_document() {
    require("npm", "the apt packages `nodejs npm`");
    let scene = Scene::start("npm");
    npm_registry(&scene);
    npm_view(&scene, &[]);
}

/// npm with no npmrc at all: the proxy variables and
/// `NODE_EXTRA_CA_CERTS` are all it has.
#[test]
fn npm_view_without_any_npmrc() {
    require("npm", "the apt packages `nodejs npm`");
    let scene = Scene::start("npm-bare");
    npm_registry(&scene);
    for name in ["global.npmrc", "user.npmrc"] {
        fs::write(scene.work().join(name), "").unwrap();
    }
    npm_view(
        &scene,
        &[
            "--globalconfig",
            "global.npmrc",
            "--userconfig",
            "user.npmrc",
        ],
    );
}

/// A user whose `~/.npmrc` names a `cafile` (the system bundle, as
/// Debian-based images with a corporate CA set it): npm then trusts that
/// file instead of Node's roots, and `NODE_EXTRA_CA_CERTS` no longer
/// applies. The relay must point npm's `cafile` at the merged bundle.
#[test]
fn npm_view_with_a_user_npmrc_naming_a_cafile() {
    require("npm", "the apt packages `nodejs npm`");
    let scene = Scene::start("npm-cafile");
    npm_registry(&scene);
    fs::write(scene.work().join("global.npmrc"), "").unwrap();
    fs::write(scene.home().join(".npmrc"), format!("cafile={SYSTEM_CA}\n")).unwrap();
    npm_view(&scene, &["--globalconfig", "global.npmrc"]);
}

// ---------------------------------------------------------------------------
// Java

const JAVA_MAIN: &str = r#"
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Main {
    public static void main(String[] args) throws Exception {
        // The default client: the default ProxySelector (the proxy system
        // properties) and the default SSLContext (the truststore properties).
        HttpClient client = HttpClient.newHttpClient();
        HttpRequest request = HttpRequest.newBuilder(URI.create(args[0]))
                .timeout(Duration.ofSeconds(30))
                .build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
        System.out.println("status " + response.statusCode());
        System.out.print(response.body());
        System.exit(response.statusCode() == 200 ? 0 : 1);
    }
}
"#;

fn java_row(name: &str, url: &str, tls: bool, parent: &[(&str, &str)]) {
    require("java", "the apt package `default-jdk-headless` (a JDK 11+)");
    let scene = Scene::start(name);
    let main = scene.work().join("Main.java");
    fs::write(&main, JAVA_MAIN).unwrap();
    let out = scene.run_ok_with(&["java", "Main.java", url], parent);
    assert_eq!(out, format!("status 200\n{HELLO}"));
    scene.expect_mitm("origin.test", tls);
}

#[test]
fn java_httpclient_https() {
    java_row("java-https", "https://origin.test/hello", true, &[]);
}

#[test]
fn java_httpclient_http() {
    java_row("java-http", "http://origin.test/hello", false, &[]);
}

/// The container already points Java at its own truststore: the relay
/// respects it and does not name its own (the contract; the system store
/// installer is what brings the gateway CA to a JDK's `cacerts` as root).
/// Here the container's store holds the gateway CA, and the JVM uses it.
#[test]
fn java_httpclient_https_with_the_containers_truststore_option() {
    require("java", "the apt package `default-jdk-headless` (a JDK 11+)");
    let scene = Scene::start("java-container");
    let store = scene.dir.join("container.jks");
    let gw_ca = fs::read(&scene.gw.ca_pem_path).unwrap();
    let certs = ccr_relay::trust::extract_certificates(&gw_ca);
    ccr_relay::trust::jks::write_jks(&store, &certs).unwrap();
    let options = format!(
        "-Djavax.net.ssl.trustStore={} -Djavax.net.ssl.trustStorePassword=changeit -Dccr.test=kept",
        store.display()
    );
    let parent = [("JAVA_TOOL_OPTIONS", options.as_str())];
    let seen = scene.run_ok_with(&["sh", "-c", "printf %s \"$JAVA_TOOL_OPTIONS\""], &parent);
    assert!(seen.starts_with(&options), "{seen}");
    assert!(
        !seen.contains(".jks\" ") && seen.matches("trustStore=").count() == 1,
        "{seen}"
    );
    let main = scene.work().join("Main.java");
    fs::write(&main, JAVA_MAIN).unwrap();
    let out = scene.run_ok_with(&["java", "Main.java", "https://origin.test/hello"], &parent);
    assert_eq!(out, format!("status 200\n{HELLO}"));
    scene.expect_mitm("origin.test", true);
}
