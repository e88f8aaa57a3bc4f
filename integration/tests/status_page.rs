//! The relay's own status page, through the real binaries and real curl,
//! in both generations: after a set of provoked failures (a bad request
//! line, an oversized head, a request that is not CONNECT, a CONNECT the
//! gateway refuses, a wrong session id, a TLS handshake from
//! `curl --proxy https://…`, a gateway that closes at once),
//! `GET /__agentproxy/status` answers JSON that parses and names each
//! failure with its kind and host, and holds neither the token nor the
//! CONNECT's Basic credential; `ccr-relay status` prints the text form.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::relay::{BlindPki, RelayOptions, RelayProcess, curl_via, relay_command};
use ccr_integration::{DevGateway, Generation, ServerKind, bin_path, temp_dir};
use data_encoding::BASE64;

/// A token that appears nowhere else: its absence means it was not printed.
const TOKEN: &str = "Tq9statusSECRET7731";
const SESSION: &str = "sess-status-4411";
const URL: &str = "https://origin.test/hello";

/// Sends `request`, reads until the relay closes (bounded), returns it.
fn exchange(relay: &RelayProcess, request: &[u8]) -> String {
    let mut s = TcpStream::connect(relay.proxy_addr).expect("connect to the relay");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// `curl` of the status page (JSON, or `query` appended), directly.
fn fetch_status(relay: &RelayProcess, query: &str) -> (String, String) {
    let url = format!("http://{}/__agentproxy/status{query}", relay.proxy_addr);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "*", "-D", "-"])
        .arg(&url)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .expect("start curl");
    assert!(out.status.success(), "curl {url}: {:?}", out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    (head.to_string(), body.to_string())
}

/// Runs python3 on the JSON `body`: checks it parses, and prints one
/// `kind|host|detail` line per failure, then `KEY=value` lines of fields.
fn parsed(body: &str) -> String {
    let script = r#"
import json, sys
d = json.load(sys.stdin)
for f in d["recentRelayFailures"]:
    assert set(f) == {"ts", "kind", "detail", "host"}, f
    print("F|%s|%s|%s" % (f["kind"], f["host"], f["detail"]))
for k in ["enabled", "generation", "protocol", "port", "caBundlePath", "hasSystemCa",
          "noProxy", "standalone", "selective", "startupError", "openTunnels",
          "tunnelsServed", "bytesUp", "bytesDown", "uptimeSeconds", "version",
          "toolTrustFailureCodes", "gitConfigConflicts", "trustInstalled", "pool"]:
    print("%s=%s" % (k, json.dumps(d[k])))
"#;
    ccr_integration::procs::python_with_input(script, body.as_bytes())
        .unwrap_or_else(|e| panic!("the status JSON does not parse or lacks a field: {e}\n{body}"))
}

/// Waits (bounded) until `pred` holds for the parsed status.
fn wait_for_status(relay: &RelayProcess, pred: impl Fn(&str) -> bool) -> (String, String) {
    let started = Instant::now();
    loop {
        let (_, body) = fetch_status(relay, "");
        let fields = parsed(&body);
        if pred(&fields) || started.elapsed() > Duration::from_secs(20) {
            return (body, fields);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Neither the token nor the Basic credential, in any base64 alignment.
fn assert_no_secret(text: &str) {
    let basic = BASE64.encode(format!("{SESSION}:{TOKEN}").as_bytes());
    let mut secrets = vec![TOKEN.to_string(), basic.clone()];
    // The token's base64 at each of the three alignments, trimmed of the
    // characters that depend on its neighbours.
    for pad in 0..3 {
        let shifted = format!("{}{TOKEN}", "x".repeat(pad));
        let enc = BASE64.encode(shifted.as_bytes());
        secrets.push(enc[4..enc.len() - 4].to_string());
    }
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "{secret} in:\n{text}");
    }
}

fn failures(fields: &str) -> Vec<(String, String, String)> {
    fields
        .lines()
        .filter_map(|l| l.strip_prefix("F|"))
        .map(|l| {
            let mut parts = l.splitn(3, '|');
            let mut next = || parts.next().unwrap_or_default().to_string();
            (next(), next(), next())
        })
        .collect()
}

fn field<'a>(fields: &'a str, key: &str) -> &'a str {
    fields
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {fields}"))
}

fn provoke_and_check(generation: Generation) {
    let pki = BlindPki::new();
    let origin = pki.https_origin(&["origin.test"]);
    let mut gw_opts = pki
        .gateway_options(false)
        .map("origin.test:443", origin.addr);
    gw_opts.token = TOKEN.into();
    gw_opts.session_id = SESSION.into();
    let mut opts = RelayOptions::default();
    if generation == Generation::AgentProxy {
        gw_opts = gw_opts.agent_proxy(ServerKind::Late);
        opts = opts.agent_proxy();
    }
    let gw = DevGateway::start(gw_opts);
    let relay = RelayProcess::serve(&gw, opts.clone().rust_log("debug"));

    // A tunnel that works: counted, bytes both ways.
    let ok = curl_via(&relay.proxy_url, &pki.served_ca_pem(), URL, &[]);
    assert!(ok.status.success(), "{:?}\n{}", ok.stderr, relay.stderr());
    // Its log line names the client's process, in both generations.
    relay.wait_for_log(Duration::from_secs(10), |l| {
        l.contains("tunnel origin.test:443 closed: up ") && l.contains(", client curl, ")
    });

    // Failures of the client's request.
    let bad = exchange(&relay, b"NOT A REQUEST\r\n\r\n");
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    assert!(
        bad.ends_with(
            "GET /__agentproxy/status on this port shows the proxy's state and recent failures.\n"
        ),
        "{bad}"
    );
    let big = format!(
        "CONNECT big.test:443 HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert!(exchange(&relay, big.as_bytes()).starts_with("HTTP/1.1 431 "));
    let not_connect = exchange(&relay, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(not_connect.starts_with("HTTP/1.1 400 "), "{not_connect}");

    // The gateway refuses a host it does not map.
    let refused = curl_via(
        &relay.proxy_url,
        &pki.served_ca_pem(),
        "https://unmapped.test/",
        &[],
    );
    assert!(!refused.status.success());

    // A TLS handshake to the proxy port: no HTTP answer, a warning.
    let proxy_https = format!("https://{}", relay.proxy_addr);
    let tls = curl_via(
        &proxy_https,
        &pki.served_ca_pem(),
        URL,
        &["--proxy-insecure"],
    );
    assert!(
        !tls.status.success(),
        "curl over https:// to the relay succeeded"
    );
    assert!(!tls.stderr.contains("HTTP/1.1"), "{}", tls.stderr);
    relay.wait_for_log(Duration::from_secs(10), |l| {
        l.contains("warn") && l.contains("HTTPS_PROXY must be an http:// URL")
    });

    // A wrong session id: the gateway answers 407 inside the tunnel.
    let mut wrong = opts.clone();
    wrong.session_id = Some("wrong-session".into());
    let wrong_relay = RelayProcess::serve(&gw, wrong);
    let out = curl_via(&wrong_relay.proxy_url, &pki.served_ca_pem(), URL, &[]);
    assert!(!out.status.success());
    let (body, fields) = wait_for_status(&wrong_relay, |f| f.contains("F|connect_rejected"));
    assert_no_secret(&body);
    assert!(
        failures(&fields)
            .iter()
            .any(|(k, h, d)| k == "connect_rejected"
                && h == "origin.test:443"
                && d.contains("407")),
        "{fields}"
    );
    // The tunnel's log line says what the gateway answered, and why,
    // at the default level (a warning), without the token.
    let line = wrong_relay.wait_for_log(Duration::from_secs(10), |l| {
        l.contains("tunnel origin.test:443 closed (the gateway answered HTTP/1.1 407 ")
    });
    assert!(
        line[0].contains(": wrong session id or token): up ") && line[0].contains(" warn "),
        "{line:?}"
    );
    assert_no_secret(&wrong_relay.stderr());
    drop(wrong_relay);

    // Then the gateway goes away and something that closes at once takes its port.
    let gw_addr = gw.addr;
    drop(gw);
    let closer = TcpListener::bind(gw_addr).expect("take the gateway's port");
    thread::spawn(move || {
        for conn in closer.incoming() {
            drop(conn);
        }
    });
    let gone = curl_via(&relay.proxy_url, &pki.served_ca_pem(), URL, &[]);
    assert!(!gone.status.success());

    let (head, body) = fetch_status(&relay, "");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    assert!(body.starts_with("{\n  \""), "not pretty-printed: {body}");
    assert_no_secret(&body);
    let fields = parsed(&body);
    let got = failures(&fields);
    let has = |kind: &str, host: &str| got.iter().any(|(k, h, _)| k == kind && h == host);
    let open_kind = "ws_open_failed";
    for (kind, host) in [
        ("bad_request", ""),
        ("header_too_long", ""),
        ("not_connect", "/plain"),
        ("connect_rejected", "unmapped.test:443"),
        ("tls_to_relay", ""),
        (open_kind, "origin.test:443"),
    ] {
        assert!(has(kind, host), "no {kind} for {host:?} in:\n{fields}");
    }
    assert!(
        got.iter()
            .any(|(k, _, d)| k == "connect_rejected" && d.contains("502")),
        "{fields}"
    );
    let gen_name = match generation {
        Generation::AgentProxy => "\"agent-proxy\"",
        _ => "\"upstream-proxy\"",
    };
    assert_eq!(field(&fields, "generation"), gen_name);
    assert_eq!(field(&fields, "enabled"), "true");
    assert_eq!(field(&fields, "port"), relay.proxy_addr.port().to_string());
    let protocol = field(&fields, "protocol");
    match generation {
        // The late server acknowledges v2.
        Generation::AgentProxy => assert_eq!(protocol, "\"v2\""),
        _ => assert_eq!(protocol, "\"v1\""),
    }
    assert_eq!(field(&fields, "selective"), "false");
    // Every installer failure the relay warned about is on the page.
    let warned: Vec<String> = relay
        .stderr()
        .lines()
        .filter_map(|l| l.split_once(" not installed (")?.1.split_once(')'))
        .map(|(code, _)| format!("\"{code}\""))
        .collect();
    let (_, later) = wait_for_status(&relay, |f| {
        warned
            .iter()
            .all(|c| field(f, "toolTrustFailureCodes").contains(c.as_str()))
    });
    for code in &warned {
        assert!(
            field(&later, "toolTrustFailureCodes").contains(code.as_str()),
            "{code} warned but not on the page: {later}"
        );
    }
    assert_eq!(field(&fields, "openTunnels"), "0");
    let served: u64 = field(&fields, "tunnelsServed").parse().unwrap();
    assert!(served >= 2, "{fields}");
    let down: u64 = field(&fields, "bytesDown").parse().unwrap();
    assert!(down > 1000, "a TLS exchange moved more than that: {fields}");
    assert_eq!(
        field(&fields, "noProxy"),
        format!("\"{}\"", relay.var("NO_PROXY").unwrap())
    );
    assert!(
        field(&fields, "caBundlePath").contains("ca-bundle"),
        "{fields}"
    );

    // The text form, for a person, through `ccr-relay status`.
    let (text_head, text) = fetch_status(&relay, "?format=text");
    assert!(text_head.contains("text/plain"), "{text_head}");
    assert_no_secret(&text);
    let status = Command::new(bin_path("ccr-relay"))
        .arg("status")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HTTPS_PROXY", &relay.proxy_url)
        .output()
        .expect("run ccr-relay status");
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status:?}");
    assert!(printed.starts_with("relay: ccr-relay\n"), "{printed}");
    assert!(
        printed.contains(&format!("generation: {}", gen_name.trim_matches('"'))),
        "{printed}"
    );
    assert!(
        printed.contains(" tls_to_relay: a client sent a TLS handshake"),
        "{printed}"
    );
    assert!(
        printed.contains(
            " connect_rejected unmapped.test:443: the gateway answered the CONNECT with HTTP/1.1 502"
        ),
        "{printed}"
    );
    assert!(printed.contains("\ntunnelsServed: "), "{printed}");
    assert_no_secret(&printed);
    assert_no_secret(&relay.stderr());
}

#[test]
fn status_page_after_failures_upstream_proxy() {
    provoke_and_check(Generation::UpstreamProxy);
}

#[test]
fn status_page_after_failures_agent_proxy() {
    provoke_and_check(Generation::AgentProxy);
}

#[test]
fn status_command_fails_clearly_without_a_relay() {
    let run = |proxy: Option<&str>, env: Option<&str>| {
        let mut cmd = Command::new(bin_path("ccr-relay"));
        cmd.arg("status")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        if let Some(p) = proxy {
            cmd.args(["--proxy", p]);
        }
        if let Some(e) = env {
            cmd.env("HTTPS_PROXY", e);
        }
        let out = cmd.output().expect("run ccr-relay status");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(None, None);
    assert_eq!(code, Some(1));
    assert!(err.contains("pass --proxy"), "{err}");
    // A port nobody listens on.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, err) = run(Some(&format!("http://{free}")), None);
    assert_eq!(code, Some(1));
    assert!(err.contains("no relay running at"), "{err}");
    let (code, err) = run(None, Some(&format!("https://{free}")));
    assert_eq!(code, Some(1));
    assert!(err.contains("never https://"), "{err}");
    // Something that answers HTTP, but is not the relay.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap();
    thread::spawn(move || {
        if let Ok((mut s, _)) = other.accept() {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let (code, err) = run(Some(&format!("http://{addr}")), None);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a ccr-relay"), "{err}");
}

/// A user whose git settings send git around the proxy (`http.proxy`
/// pointing elsewhere) and whose JDK `cacerts` cannot be read: start-up
/// warns about both, the status page lists them (`gitConfigConflicts`,
/// `toolTrustFailureCodes`), and `doctor` names the git setting.
#[test]
fn git_settings_that_defeat_the_proxy_and_an_unreadable_jdk_store_are_reported() {
    let dir = temp_dir("status-conflicts");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join(".gitconfig"),
        "[http]\n\tproxy = http://elsewhere.test:3128\n",
    )
    .unwrap();
    let jdk = dir.join("jdk");
    std::fs::create_dir_all(jdk.join("lib/security")).unwrap();
    std::fs::write(jdk.join("lib/security/cacerts"), b"not a keystore").unwrap();
    let (home_s, jdk_s) = (home.to_string_lossy(), jdk.to_string_lossy());
    let gw = DevGateway::start(ccr_integration::GatewayOptions::default());
    let opts = RelayOptions::default()
        .env("HOME", &home_s)
        .env("JAVA_HOME", &jdk_s);
    let relay = RelayProcess::serve(&gw, opts.clone());

    let warned = relay.wait_for_log(Duration::from_secs(20), |l| {
        l.contains("warning: git settings that send git around the proxy: ")
    });
    assert!(
        warned[0].contains("http.proxy=http://elsewhere.test:3128"),
        "{warned:?}"
    );
    relay.wait_for_log(Duration::from_secs(10), |l| {
        l.contains("warning: java_cacerts_unreadable: ")
    });
    let (_, fields) = wait_for_status(&relay, |f| {
        field(f, "gitConfigConflicts").contains("http.proxy")
            && field(f, "toolTrustFailureCodes").contains("java_cacerts_unreadable")
    });
    let conflicts = field(&fields, "gitConfigConflicts");
    assert!(
        conflicts.contains("http.proxy=http://elsewhere.test:3128"),
        "{fields}"
    );
    assert!(
        field(&fields, "toolTrustFailureCodes").contains("\"java_cacerts_unreadable\""),
        "{fields}"
    );

    // doctor, with the same HOME, names the setting.
    let doctor_dir = temp_dir("status-conflicts-doctor");
    let (mut cmd, _) = relay_command("doctor", &gw, &opts, doctor_dir.path());
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run ccr-relay doctor");
    let printed = String::from_utf8_lossy(&out.stdout);
    let section = printed
        .split_once("git settings that defeat the proxy\n")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no git section in:\n{printed}"));
    assert!(
        section
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("  warn  http.proxy=http://elsewhere.test:3128")),
        "{printed}"
    );
}
