//! The relay in front of a gateway that terminates TLS (MITM mode), as the
//! real one does: it forges a leaf for each host from its own CA, checks the
//! origin's real certificate against a different CA (`--upstream-ca`), and
//! adds a header to every request (`--inject`). A client run with
//! `ccr-relay run` verifies the forged leaf with nothing but the merged
//! bundle the relay wrote and the variables it exported: no `-k`, no
//! `--cacert`, no `-x`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use ccr_integration::http::header_lines;
use ccr_integration::pki::TestCa;
use ccr_integration::relay::{RelayOptions, SYSTEM_CA, relay_command};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, TempDir, temp_dir};

const WAIT: Duration = Duration::from_secs(10);

/// An HTTPS origin for `origin.test` (certificate from a test CA the client
/// never sees), a plain one, and a MITM gateway mapping `origin.test:443`
/// and `origin.test:80` to them and injecting `X-Api-Key`.
struct Scene {
    dir: TempDir,
    origin_ca: TestCa,
    _tls_origin: DevOrigin,
    _plain_origin: DevOrigin,
    gw: DevGateway,
}

impl Scene {
    fn start() -> Scene {
        let dir = temp_dir("e2e-mitm");
        let origin_ca = TestCa::new(&dir.join("origin-ca")).unwrap();
        let (cert, key) = origin_ca.issue_leaf(&["origin.test"]);
        let tls_origin = DevOrigin::start(Some((&cert, &key)));
        let plain_origin = DevOrigin::start(None);
        let gw = DevGateway::start(
            GatewayOptions::default()
                .mitm(&origin_ca.cert_path())
                .inject("origin.test", "X-Api-Key", "injected-secret")
                .map("origin.test:443", tls_origin.addr)
                .map("origin.test:80", plain_origin.addr),
        );
        Scene {
            dir,
            origin_ca,
            _tls_origin: tls_origin,
            _plain_origin: plain_origin,
            gw,
        }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.join("ca-bundle.crt")
    }

    /// `ccr-relay run -- COMMAND...` as [`relay_command`] makes it: the
    /// four gates open, a fresh token file, `HOME` and the bundle in the
    /// scene's directory, and no environment but `PATH` and `HOME` (the
    /// machine's own proxy and CA variables do not leak in).
    fn run(&self, command: &[&str]) -> Output {
        let (mut cmd, token) =
            relay_command("run", &self.gw, &RelayOptions::default(), self.dir.path());
        let out = cmd
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .output()
            .expect("start ccr-relay");
        assert!(
            !token.exists(),
            "the relay did not start (the token file is still there); its stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `curl URL` through the relay, sending its own `X-Api-Key`; what the
    /// origin saw (its `/headers` echo), or a panic if curl failed.
    fn curl_with_own_key(&self, url: &str) -> String {
        let out = self.run(&[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "20",
            "-H",
            "X-Api-Key: from-the-client",
            url,
        ]);
        success(&out, &format!("curl {url}"))
    }
}

/// stdout, or a panic showing both streams and the exit status.
fn success(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn pem_in(bundle: &Path, pem: &[u8]) -> bool {
    let text = std::fs::read_to_string(bundle).unwrap();
    text.contains(String::from_utf8_lossy(pem).trim())
}

#[test]
fn curl_https_verifies_the_forged_leaf_with_the_merged_bundle_and_gets_the_header() {
    let scene = Scene::start();
    let seen = scene.curl_with_own_key("https://origin.test/headers");
    assert_eq!(
        seen.lines().next(),
        Some("GET /headers HTTP/1.1"),
        "the origin saw: {seen}"
    );
    assert_eq!(header_lines(&seen, "Host"), ["Host: origin.test"], "{seen}");
    assert_eq!(
        header_lines(&seen, "X-Api-Key"),
        ["X-Api-Key: injected-secret"],
        "the gateway's header replaces the client's: {seen}"
    );
    // The TLS was the gateway's (a forged leaf), not the origin's.
    scene
        .gw
        .wait_for_event(WAIT, |l| l == "mitm origin.test leaf-issued");
    scene
        .gw
        .wait_for_event_prefix("mitm origin.test inject X-Api-Key", WAIT);
    // The bundle curl used holds the gateway CA and not the origin's CA: the
    // forged leaf verified against the gateway CA.
    let gw_ca = std::fs::read(&scene.gw.ca_pem_path).unwrap();
    assert!(pem_in(&scene.bundle(), &gw_ca), "gateway CA in the bundle");
    assert!(
        !pem_in(&scene.bundle(), &scene.origin_ca.cert_pem()),
        "the origin's CA must not be in the bundle"
    );
}

#[test]
fn curl_verifies_for_real_a_bundle_without_the_gateway_ca_fails() {
    // Control: the same request with the system bundle alone (overriding the
    // relay's) is refused, so the success above is the merged bundle's doing.
    let scene = Scene::start();
    let out = scene.run(&[
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "20",
        "--cacert",
        SYSTEM_CA,
        "https://origin.test/headers",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(60),
        "curl: certificate problem\n{stderr}"
    );
    scene
        .gw
        .wait_for_event(WAIT, |l| l == "mitm origin.test client-tls-failed");
}

#[test]
fn curl_plain_http_is_forwarded_and_gets_the_header() {
    let scene = Scene::start();
    // No -x: the relay exports http_proxy / HTTP_PROXY for plain http://.
    let seen = scene.curl_with_own_key("http://origin.test/headers");
    assert_eq!(
        seen.lines().next(),
        Some("GET /headers HTTP/1.1"),
        "origin form, not the proxy's absolute form: {seen}"
    );
    assert_eq!(header_lines(&seen, "Host"), ["Host: origin.test"], "{seen}");
    assert_eq!(
        header_lines(&seen, "X-Api-Key"),
        ["X-Api-Key: injected-secret"],
        "{seen}"
    );
    assert!(
        header_lines(&seen, "Proxy-Connection").is_empty()
            && header_lines(&seen, "Proxy-Authorization").is_empty(),
        "proxy headers are not forwarded: {seen}"
    );
    scene
        .gw
        .wait_for_event(WAIT, |l| l == "mitm origin.test plain");
    scene
        .gw
        .wait_for_event_prefix("mitm origin.test inject X-Api-Key", WAIT);
}

#[test]
fn the_child_gets_the_proxy_and_the_bundle_but_never_the_token() {
    let scene = Scene::start();
    let out = scene.run(&["env"]);
    let env = success(&out, "env");
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let proxy = var("HTTPS_PROXY").expect("HTTPS_PROXY exported");
    assert!(proxy.starts_with("http://127.0.0.1:"), "{proxy}");
    for name in ["https_proxy", "HTTP_PROXY", "http_proxy"] {
        assert_eq!(var(name).as_deref(), Some(proxy.as_str()), "{name}");
    }
    let bundle = scene.bundle().display().to_string();
    for name in [
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    ] {
        assert_eq!(var(name).as_deref(), Some(bundle.as_str()), "{name}");
    }
    // The token lives in the relay's memory only: not in the environment,
    // and its file is gone (checked by `run`).
    assert!(!env.contains(&scene.gw.token), "the token leaked:\n{env}");
}
