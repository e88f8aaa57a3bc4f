//! What the gateway's policy refused, through the real binaries, real curl
//! and real python3, in both generations: the development gateway denies
//! hosts (`--deny`: `403` with `x-deny-reason`, or the body alone) and
//! ends tunnels that open with a TLS ClientHello (`--refuse-client-hello`).
//! The status page lists the blocked hosts with their counts, the programs
//! that asked and the reasons; `ccr-relay status` prints them and an
//! `allowlist:` line; the first denial of a host is one warning; a refused
//! handshake is `tls_handshake_refused` with its host and program.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::relay::{BlindPki, RelayOptions, RelayProcess, curl_via};
use ccr_integration::{DevGateway, Generation, ServerKind, bin_path};

const REASON: &str = "org policy: blocked.test is not on the allowlist";
const BODY_REASON: &str = "request blocked: no rule or allowlist entry allows host \"other.test\"";

/// The status page's JSON, fetched directly (not through the proxy).
fn status_json(relay: &RelayProcess) -> String {
    let url = format!("http://{}/__agentproxy/status", relay.proxy_addr);
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--noproxy", "*"])
        .arg(&url)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("start curl");
    assert!(out.status.success(), "curl {url}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs python3 on the JSON: one `B|host|count|clients|reason` line per
/// blocked host, one `F|kind|host|detail` line per failure. Checks that
/// each entry has exactly the contract's fields and that the times parse.
fn summary(json: &str) -> String {
    let script = r#"
import json, sys
d = json.load(sys.stdin)
for b in d["blockedHosts"]:
    assert set(b) == {"host", "count", "firstTs", "lastTs", "clients", "reason"}, b
    assert b["firstTs"] <= b["lastTs"], b
    print("B|%s|%d|%s|%s" % (b["host"], b["count"], ",".join(b["clients"]), b["reason"]))
for f in d["recentRelayFailures"]:
    print("F|%s|%s|%s" % (f["kind"], f["host"], f["detail"]))
"#;
    ccr_integration::procs::python_with_input(script, json.as_bytes())
        .unwrap_or_else(|e| panic!("{e}\n{json}"))
}

/// Polls the status page until `pred` holds for its summary (bounded).
fn wait_for_summary(relay: &RelayProcess, pred: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let got = summary(&status_json(relay));
        if pred(&got) || started.elapsed() > Duration::from_secs(20) {
            return got;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `ccr-relay status` against `relay`: what it printed.
fn status_command(relay: &RelayProcess) -> String {
    let out = Command::new(bin_path("ccr-relay"))
        .arg("status")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HTTPS_PROXY", &relay.proxy_url)
        .output()
        .expect("run ccr-relay status");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// python3 asks the relay for a tunnel to `host:443` (a CONNECT, as any
/// python client behind a proxy does); the gateway's refusal fails it.
fn python_connect(relay: &RelayProcess, host: &str) {
    let script = format!(
        "import http.client\n\
         c = http.client.HTTPSConnection('{}', {}, timeout=20)\n\
         c.set_tunnel('{host}', 443)\n\
         try:\n    c.connect()\nexcept OSError as e:\n    print('refused:', e)\nelse:\n    print('connected')\n",
        relay.proxy_addr.ip(),
        relay.proxy_addr.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("start python3");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("refused:") && said.contains("403"), "{said}");
}

fn scene(generation: Generation, extra: &[&str]) -> (BlindPki, DevGateway, RelayOptions) {
    let pki = BlindPki::new();
    let mut gw_opts = pki.gateway_options(false).args(extra);
    let mut opts = RelayOptions::default();
    if generation == Generation::AgentProxy {
        gw_opts = gw_opts.agent_proxy(ServerKind::Late);
        opts = opts.agent_proxy();
    }
    (pki, DevGateway::start(gw_opts), opts)
}

fn blocked_hosts_are_collected(generation: Generation) {
    let deny = format!("blocked.test={REASON}");
    let (pki, gw, opts) = scene(generation, &["--deny", &deny, "--deny", "other.test"]);
    // The first generation with its tunnel log line off: the program is
    // still named.
    let relay = RelayProcess::serve(&gw, opts.rust_log("warn"));
    let ca = pki.served_ca_pem();
    for _ in 0..2 {
        let out = curl_via(&relay.proxy_url, &ca, "https://blocked.test/", &[]);
        assert!(!out.status.success(), "a denied host was reached");
        assert!(out.stderr.contains("403"), "{}", out.stderr);
    }
    python_connect(&relay, "blocked.test");
    // Plain HTTP: the gateway denies its CONNECT; the body alone says why,
    // and the client gets the gateway's answer.
    let plain = curl_via(&relay.proxy_url, &ca, "http://other.test/", &[]);
    assert!(!plain.status.success());
    assert!(plain.stderr.contains("403"), "{}", plain.stderr);

    let got = wait_for_summary(&relay, |s| {
        s.contains("B|blocked.test|3|") && s.contains("B|other.test|1|")
    });
    let line = |host: &str| {
        got.lines()
            .find(|l| l.starts_with(&format!("B|{host}|")))
            .unwrap_or_else(|| panic!("no {host} in {got}"))
            .to_string()
    };
    let blocked: Vec<String> = line("blocked.test").split('|').map(String::from).collect();
    assert_eq!(blocked[2], "3", "{got}");
    let clients: Vec<&str> = blocked[3].split(',').collect();
    assert_eq!(clients.len(), 2, "{got}");
    assert_eq!(clients[0], "curl", "{got}");
    assert!(clients[1].starts_with("python"), "{got}");
    assert_eq!(blocked[4], REASON);
    assert_eq!(
        line("other.test"),
        format!("B|other.test|1|curl|{BODY_REASON}")
    );
    // Most recently denied first.
    assert!(got.find("B|other.test").unwrap() < got.find("B|blocked.test").unwrap());

    let printed = status_command(&relay);
    assert!(printed.contains("\nblockedHosts:\n"), "{printed}");
    let entry = printed
        .lines()
        .find(|l| l.starts_with("  - blocked.test 3 "))
        .unwrap_or_else(|| panic!("no blocked.test entry in {printed}"));
    assert!(
        entry.contains(" curl,python") && entry.ends_with(&format!(": {REASON}")),
        "{entry}"
    );
    assert!(
        printed.contains("\nallowlist: blocked.test,other.test\n"),
        "{printed}"
    );

    // One warning per host, at its first denial, naming the program and
    // the status page.
    let warned = relay.wait_for_log(Duration::from_secs(10), |l| {
        l.contains("the gateway's policy blocked other.test")
    });
    assert!(warned[0].contains("asked by curl"), "{warned:?}");
    let stderr = relay.stderr();
    let first: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("the gateway's policy blocked blocked.test"))
        .collect();
    assert_eq!(first.len(), 1, "{stderr}");
    assert!(
        first[0].contains("asked by curl") && first[0].contains("ccr-relay status"),
        "{first:?}"
    );
    assert!(first[0].contains(REASON), "{first:?}");
}

fn refused_handshakes_are_recorded(generation: Generation) {
    let (pki, _gw_holder, opts) = {
        let pki = BlindPki::new();
        let origin = pki.https_origin(&["origin.test"]);
        let mut gw_opts = pki
            .gateway_options(false)
            .map("origin.test:443", origin.addr)
            .args(&["--refuse-client-hello"]);
        let mut opts = RelayOptions::default();
        if generation == Generation::AgentProxy {
            gw_opts = gw_opts.agent_proxy(ServerKind::Late);
            opts = opts.agent_proxy();
        }
        (pki, (DevGateway::start(gw_opts), origin), opts)
    };
    let gw = &_gw_holder.0;
    let relay = RelayProcess::serve(gw, opts);
    let out = curl_via(
        &relay.proxy_url,
        &pki.served_ca_pem(),
        "https://origin.test/",
        &[],
    );
    assert!(!out.status.success(), "the handshake went through");
    gw.wait_for_event(Duration::from_secs(10), |e| {
        e.starts_with("client-hello-refused origin.test:443")
    });
    let got = wait_for_summary(&relay, |s| s.contains("F|tls_handshake_refused|"));
    let refused = got
        .lines()
        .find(|l| l.starts_with("F|tls_handshake_refused|"))
        .unwrap_or_else(|| panic!("no tls_handshake_refused in {got}"));
    assert!(
        refused.starts_with("F|tls_handshake_refused|origin.test:443|")
            && refused.contains("refused the TLS handshake of curl"),
        "{refused}"
    );
    // Not also a broken WebSocket.
    assert!(!got.contains("F|ws_closed_mid_exchange|"), "{got}");
    let printed = status_command(&relay);
    assert!(
        printed.contains(
            " tls_handshake_refused origin.test:443: the gateway refused the TLS handshake of curl"
        ),
        "{printed}"
    );
    assert!(printed.contains("Encrypted Client Hello"), "{printed}");
}

#[test]
fn blocked_hosts_upstream_proxy() {
    blocked_hosts_are_collected(Generation::UpstreamProxy);
}

#[test]
fn blocked_hosts_agent_proxy() {
    blocked_hosts_are_collected(Generation::AgentProxy);
}

#[test]
fn refused_handshake_upstream_proxy() {
    refused_handshakes_are_recorded(Generation::UpstreamProxy);
}

#[test]
fn refused_handshake_agent_proxy() {
    refused_handshakes_are_recorded(Generation::AgentProxy);
}
