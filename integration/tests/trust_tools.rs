//! The trust files and child environment checked with the real tools that
//! read them: `keytool` lists the JKS truststore, `wget` takes the
//! generated wgetrc, a JVM takes the proxy options and trusts the store,
//! and the system bundle openssl-probe finds is a real bundle. These need a
//! JDK, wget and the system's CA files, so they live here rather than in
//! the library's unit tests, which need nothing but Rust.

use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use ccr_integration::pki::{TestCert, self_signed};
use ccr_integration::session_env::parent_of;
use ccr_integration::temp::temp_dir;
use ccr_relay::env::{ClientFiles, ProxyEnv, child_vars, write_wgetrc};
use ccr_relay::sys::command::find_on_path;
use ccr_relay::trust::jdk::{find_cacerts, read_cacerts};
use ccr_relay::trust::jks::{PASSWORD, Written, write_jks};
use ccr_relay::trust::{bundle, extract_certificates, system_bundle, user_cas};

fn certs() -> &'static [TestCert; 4] {
    static CERTS: OnceLock<[TestCert; 4]> = OnceLock::new();
    CERTS.get_or_init(|| ["ccr-system", "ccr-gateway", "ccr-corp", "ccr-wget"].map(self_signed))
}

fn no_parent(_: &str) -> Option<String> {
    None
}

// -- the system bundle ----------------------------------------------------

#[test]
fn the_system_bundle_found_is_a_real_bundle() {
    let found = system_bundle(None).expect("openssl-probe finds no system CA bundle");
    let certs = extract_certificates(&fs::read(&found).unwrap());
    assert!(certs.len() > 50, "{}: {}", found.display(), certs.len());
}

// -- keytool --------------------------------------------------------------

/// `keytool -list` of `path`; panics (never skips) without keytool.
fn keytool_list(path: &Path, password: &str) -> std::process::Output {
    Command::new("keytool")
        .args(["-list", "-v", "-keystore"])
        .arg(path)
        .args(["-storepass", password, "-storetype", "JKS"])
        .output()
        .expect("keytool (a JDK) is needed for this test: install openjdk-17-jdk-headless")
}

#[test]
fn keytool_lists_every_certificate() {
    let dir = temp_dir("keytool");
    let path = dir.join("ca-bundle.jks");
    let mut pems: Vec<String> = (0..3)
        .map(|i| self_signed(&format!("ccr truststore test {i}")).pem)
        .collect();
    pems.push(pems[0].clone()); // a duplicate is stored once
    let written = write_jks(&path, &pems).unwrap();
    assert_eq!(
        written,
        Written {
            certs: 3,
            skipped: 0
        }
    );
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);

    let out = keytool_list(&path, PASSWORD);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Your keystore contains 3 entries"), "{text}");
    for i in 0..3 {
        assert!(
            text.contains(&format!("Alias name: ccr-relay-000{}", i + 1)),
            "{text}"
        );
        assert!(
            text.contains(&format!("CN=ccr truststore test {i}")),
            "{text}"
        );
    }
    assert_eq!(text.matches("Entry type: trustedCertEntry").count(), 3);

    // The digest is checked: a wrong password is refused.
    let out = keytool_list(&path, "wrong-password");
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("password was incorrect"), "{all}");

    // The real system bundle: every certificate in it lands in the store.
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
    let system_certs = extract_certificates(&fs::read(system).unwrap());
    assert!(system_certs.len() > 50, "{}", system_certs.len());
    let written = write_jks(&path, &system_certs).unwrap();
    assert_eq!(written.certs, system_certs.len());
    let out = keytool_list(&path, PASSWORD);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "Your keystore contains {} entries",
            system_certs.len()
        )),
        "{text}"
    );
}

// -- wget -----------------------------------------------------------------

/// Accepts one connection on a fresh port and returns its first line.
fn first_line_server() -> (u16, thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut line = String::new();
        let _ = io::BufReader::new(&stream).read_line(&mut line);
        line
    });
    (port, handle)
}

#[test]
fn real_wget_reads_the_generated_wgetrc() {
    let dir = temp_dir("wget");
    let home = dir.join("home");
    fs::create_dir_all(home.join(".ccr")).unwrap();
    // The user's own wgetrc points at a dead proxy and turns proxies off.
    fs::write(
        home.join(".wgetrc"),
        "use_proxy = off\nhttps_proxy = http://127.0.0.1:1/\n",
    )
    .unwrap();
    let (port, server) = first_line_server();
    let env = ProxyEnv {
        proxy_url: format!("http://127.0.0.1:{port}"),
        ca_bundle: home.join(".ccr").join("ca-bundle.crt"),
        no_proxy_extra: vec![],
        no_proxy_default: Default::default(),
        mode: Default::default(),
        system_bundle: true,
    };
    fs::write(&env.ca_bundle, &certs()[0].pem).unwrap();
    let home_s = home.to_string_lossy().into_owned();
    let files = ClientFiles {
        truststore: None,
        wgetrc: Some(write_wgetrc(&env, parent_of(&[("HOME", &home_s)])).unwrap()),
    };
    let vars = child_vars(&env, &files, no_parent);
    let out = Command::new("wget")
        .args([
            "-t",
            "1",
            "-T",
            "5",
            "-q",
            "-O",
            "-",
            "https://wget-test.example/",
        ])
        .env_clear()
        .env("HOME", &home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("wget is needed for this test");
    assert!(!out.status.success()); // the fake proxy answers nothing
    assert_eq!(
        server.join().unwrap(),
        "CONNECT wget-test.example:443 HTTP/1.1\r\n"
    );
}

// -- a real JVM --------------------------------------------------------

const JAVA_PROBE: &str = r#"
import java.net.*;
import java.io.*;
public class Probe {
public static void main(String[] args) throws Exception {
    for (String key : new String[] {"https.proxyHost", "https.proxyPort", "http.proxyHost",
            "http.proxyPort", "javax.net.ssl.trustStore", "javax.net.ssl.trustStoreType"}) {
        System.out.println(key + "=" + System.getProperty(key));
    }
    for (int i = 1; i < args.length; i++) {
        java.util.List<Proxy> p = ProxySelector.getDefault().select(new URI(args[i]));
        System.out.println("select " + args[i] + " " + (p.get(0).type() == Proxy.Type.DIRECT ? "DIRECT" : "PROXY"));
    }
    HttpURLConnection c = (HttpURLConnection) new URL(args[0]).openConnection();
    try (InputStream in = c.getInputStream()) {
        System.out.println("body " + new String(in.readAllBytes(), "UTF-8"));
    } catch (Exception e) {
        System.out.println("error " + e);
    }
}
}
"#;

/// An https server on 127.0.0.1 with `cert`, answering one request.
fn tls_server(cert: &TestCert) -> (u16, thread::JoinHandle<()>) {
    let identity =
        native_tls::Identity::from_pkcs8(cert.pem.as_bytes(), cert.key.as_bytes()).unwrap();
    let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let Ok(mut tls) = acceptor.accept(stream) else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let _ = tls
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
        let _ = tls.shutdown();
    });
    (port, handle)
}

fn run_probe(dir: &Path, vars: &[(String, String)], args: &[String]) -> String {
    let source = dir.join("Probe.java");
    fs::write(&source, JAVA_PROBE).unwrap();
    let out = Command::new("java")
        .arg(&source)
        .args(args)
        .env_remove("JAVA_TOOL_OPTIONS")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("java (a JDK 11+) is needed for this test: install openjdk-17-jdk-headless");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_real_jvm_takes_the_proxy_and_trusts_the_generated_store() {
    let [system, gateway, corp, _] = certs();
    let dir = temp_dir("java");
    let ccr = dir.join("a dir").join(".ccr"); // a space: the option is quoted
    fs::create_dir_all(&ccr).unwrap();
    let bundle = ccr.join("ca-bundle.crt");
    let system_path = dir.join("system.pem");
    fs::write(&system_path, &system.pem).unwrap();
    // The server's certificate is the user's corporate CA: trusted only
    // if the merge rule put it in the bundle and the store.
    let corp_path = dir.join("corp.pem");
    fs::write(&corp_path, &corp.pem).unwrap();
    let corp_s = corp_path.to_string_lossy().into_owned();
    let parent = parent_of(&[
        ("SSL_CERT_FILE", corp_s.as_str()),
        ("JAVA_TOOL_OPTIONS", "-Dccr.test.parent=kept"),
        ("NO_PROXY", ".corp.example"),
    ]);
    let built = bundle::merge(
        &bundle,
        Some(system_path),
        vec![gateway.pem.clone()],
        user_cas::user_ca_files(&parent, &bundle),
    );
    assert_eq!(built.built.warnings, Vec::<String>::new());
    built.write().unwrap();
    let files = ClientFiles {
        truststore: Some(built.write_truststore().unwrap()),
        wgetrc: None,
    };
    let env = ProxyEnv {
        proxy_url: "http://127.0.0.1:4321".into(),
        ca_bundle: bundle.clone(),
        no_proxy_extra: vec![],
        no_proxy_default: Default::default(),
        mode: Default::default(),
        system_bundle: true,
    };
    let vars = child_vars(&env, &files, &parent);
    let (port, server) = tls_server(corp);
    let selects = [
        "https://example.com/",
        "http://example.com/",
        "https://api.anthropic.com/",
        "https://anthropic.com/",
        "https://x.corp.example/",
        "https://10.1.2.3/",
        "https://172.20.0.1/",
        "https://172.32.0.1/",
        "https://169.254.169.254/",
        "https://raw.githubusercontent.com/",
    ];
    let mut args = vec![format!("https://127.0.0.1:{port}/")];
    args.extend(selects.iter().map(|s| s.to_string()));
    let out = run_probe(dir.path(), &vars, &args);
    server.join().unwrap();
    let store = ccr.join("ca-bundle.jks");
    for line in [
        "https.proxyHost=127.0.0.1".to_string(),
        "https.proxyPort=4321".to_string(),
        "http.proxyHost=127.0.0.1".to_string(),
        "http.proxyPort=4321".to_string(),
        format!("javax.net.ssl.trustStore={}", store.display()),
        "javax.net.ssl.trustStoreType=JKS".to_string(),
        "select https://example.com/ PROXY".to_string(),
        "select http://example.com/ PROXY".to_string(),
        "select https://api.anthropic.com/ DIRECT".to_string(),
        "select https://anthropic.com/ DIRECT".to_string(),
        "select https://x.corp.example/ DIRECT".to_string(),
        "select https://10.1.2.3/ DIRECT".to_string(),
        "select https://172.20.0.1/ DIRECT".to_string(),
        "select https://172.32.0.1/ PROXY".to_string(),
        "select https://169.254.169.254/ DIRECT".to_string(),
        // GitHub goes through the gateway (it injects GitHub's credentials).
        "select https://raw.githubusercontent.com/ PROXY".to_string(),
        "body hello".to_string(),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "{line:?} missing from:\n{out}"
        );
    }

    // Without the relay's options the JVM's own roots refuse the server:
    // the store is what made it trusted.
    let (port, server) = tls_server(corp);
    let out = run_probe(dir.path(), &[], &[format!("https://127.0.0.1:{port}/")]);
    server.join().unwrap();
    assert!(
        out.contains("error javax.net.ssl.SSLHandshakeException"),
        "{out}"
    );
}

// -- the machine's JDK ----------------------------------------------------

/// The machine's JDK, when there is one: its real cacerts parses, with
/// the count `keytool` reports.
#[test]
fn the_machines_jdk_cacerts_parses_like_keytool_says() {
    let parent = |n: &str| std::env::var(n).ok();
    let Some(path) = find_cacerts(parent) else {
        panic!("no JDK on this machine: install default-jdk-headless (.ci/run does)");
    };
    let pems = read_cacerts(&path).unwrap();
    assert!(pems.len() > 50, "{} certificates", pems.len());
    let Some(keytool) = find_on_path("keytool", &std::env::var_os("PATH").unwrap()) else {
        panic!("keytool is not on PATH: install default-jdk-headless (.ci/run does)");
    };
    let out = std::process::Command::new(keytool)
        .args(["-list", "-storepass", "changeit", "-keystore"])
        .arg(&path)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let entries = listing
        .lines()
        .filter(|l| l.contains("trustedCertEntry"))
        .count();
    assert_eq!(pems.len(), entries, "{listing}");
}
