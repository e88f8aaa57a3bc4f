//! `ccr-demo` (what `make run` runs): the relay working end to end on this
//! machine alone. A development gateway, an HTTPS development origin and
//! `ccr-relay run -- sh -c 'curl …'`, all on loopback, in scratch
//! directories that are removed afterwards; a few readable lines say what
//! happened.
//!
//! Each [`Scenario`] sets up its own gateway and origin, runs the relay
//! once, checks what came back and prints its lines; adding one is adding a
//! function and an entry in [`SCENARIOS`]. A failure (a check that does not
//! hold, or a helper that panics) is reported with its reason and makes
//! the exit status non-zero; every process and directory is cleaned up
//! either way (they are owned by guards that kill and remove on drop).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::pki::TestCa;
use crate::relay::{BlindPki, RelayOptions, SYSTEM_CA, relay_command};
use crate::{DevGateway, DevOrigin, GatewayOptions, temp_dir};

/// How long one `ccr-relay run` may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long to wait for a gateway event after the run.
const EVENT_WAIT: Duration = Duration::from_secs(5);
/// The download the blind scenario times.
const BIG: u64 = 10 * 1024 * 1024;

/// One demonstration: a name to pick it by, a heading, and the steps.
pub struct Scenario {
    pub name: &'static str,
    pub heading: &'static str,
    pub run: fn(&mut Out) -> Result<(), String>,
}

/// The scenarios, in the order `ccr-demo` runs them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "blind",
        heading: "upstream proxy (first generation), blind mode: the gateway passes the client's TLS through untouched",
        run: blind,
    },
    Scenario {
        name: "mitm",
        heading: "upstream proxy, MITM mode: the gateway terminates TLS and adds a credential header",
        run: mitm,
    },
    Scenario {
        name: "agent",
        heading: "agent proxy (second generation): protocol v2, a reused WebSocket, the status page",
        run: agent,
    },
];

const USAGE: &str = "\
usage: ccr-demo [SCENARIO...]

Runs ccr-relay end to end against a local development gateway and HTTPS
origin (no internet, no root) and says what happened. Scenarios: blind, mitm
(the first generation, the upstream proxy), agent (the second, the agent
proxy) (default: all). Needs `cargo build --workspace --bins` first, and curl.
CCR_KEEP_TEMP=1 keeps the scratch directories.
";

/// Where a scenario's lines go: `  label    text`.
pub struct Out;

impl Out {
    pub fn line(&mut self, label: &str, text: impl AsRef<str>) {
        println!("  {label:<8} {}", text.as_ref());
        let _ = std::io::stdout().flush();
    }
}

/// Runs the scenarios named in `args` (all when none); the exit status.
pub fn main(args: Vec<String>) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return 0;
    }
    let mut chosen = Vec::new();
    for a in &args {
        match SCENARIOS.iter().find(|s| s.name == a) {
            Some(s) => chosen.push(s),
            None => {
                eprintln!("ccr-demo: no scenario {a:?} (have: blind, mitm, agent)\n{USAGE}");
                return 2;
            }
        }
    }
    if chosen.is_empty() {
        chosen = SCENARIOS.iter().collect();
    }
    install_quiet_panic_hook();
    println!("ccr-relay demo (everything local, no internet)");
    if let Err(why) = preflight() {
        println!("FAILED: {why}");
        return 1;
    }
    let mut failed = Vec::new();
    for s in chosen {
        println!();
        println!("{}", s.heading);
        let mut out = Out;
        let result =
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (s.run)(&mut out))) {
                Ok(r) => r,
                Err(_) => Err(take_panic_message()),
            };
        match result {
            Ok(()) => println!("  ok"),
            Err(why) => {
                println!("  FAILED: {}", why.trim_end().replace('\n', "\n          "));
                failed.push(s.name);
            }
        }
    }
    println!();
    if failed.is_empty() {
        println!("ok");
        0
    } else {
        println!("FAILED: {}", failed.join(", "));
        1
    }
}

thread_local! {
    static PANIC_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The helpers report trouble by panicking (with the child's stderr in the
/// message); keep the message for the report instead of the default
/// `thread 'main' panicked at …` noise.
pub(crate) fn install_quiet_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "panic".to_string()
        };
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(format!("{msg}{at}")));
    }));
}

pub(crate) fn take_panic_message() -> String {
    PANIC_MESSAGE
        .with(|m| m.borrow_mut().take())
        .unwrap_or_else(|| "panicked".into())
}

/// What must be there before anything starts: the workspace's binaries and curl.
fn preflight() -> Result<(), String> {
    for name in ["ccr-relay", "ccr-dev-gateway", "ccr-dev-origin"] {
        let found = std::panic::catch_unwind(|| crate::bin_path(name));
        if found.is_err() {
            return Err(take_panic_message());
        }
    }
    let curl = std::process::Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match curl {
        Ok(s) if s.success() => Ok(()),
        _ => Err("curl is not installed (the demo drives a real curl through the relay)".into()),
    }
}

/// What one `ccr-relay run -- sh -c SCRIPT` did.
struct RunResult {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// The `::key value` lines of stdout.
    marks: BTreeMap<String, Vec<String>>,
    /// The merged bundle the relay wrote.
    bundle: PathBuf,
}

impl RunResult {
    /// The first value of `@key`, or an error showing both outputs.
    fn mark(&self, key: &str) -> Result<&str, String> {
        self.marks
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
            .ok_or_else(|| self.failure(&format!("the script printed no ::{key} line")))
    }

    /// An error unless the command ran with the relay's proxy (the script
    /// prints `::proxy $HTTPS_PROXY` and `::token present|removed`).
    fn require_relay_on(&self) -> Result<(), String> {
        if self.mark("proxy")?.is_empty() {
            return Err(self.failure(&format!(
                "the relay did not turn on: the command got no HTTPS_PROXY (token file {})",
                self.mark("token")?
            )));
        }
        Ok(())
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "{what} ({})\n--- stdout ---\n{}--- stderr (relay and curl) ---\n{}",
            self.status,
            self.stdout,
            tail(&self.stderr, 3000)
        )
    }
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// `ccr-relay run -- sh -c SCRIPT` against `gw`, with the activation
/// environment, a fresh token file, `HOME` and the bundle in `dir`, and
/// `RUST_LOG=info` (one relay log line per tunnel). In `SCRIPT`, `$TOKEN_FILE`
/// names the token file; after it, the script prints `::token present|removed`,
/// `::proxy $HTTPS_PROXY` and `::bundle $SSL_CERT_FILE`. Killed with everything it started after
/// [`RUN_TIMEOUT`].
fn relay_run(gw: &DevGateway, dir: &Path, script: &str) -> Result<RunResult, String> {
    relay_run_with(gw, &RelayOptions::default(), dir, script)
}

/// [`relay_run`] with `opts` (the agent proxy's gate 2, say).
fn relay_run_with(
    gw: &DevGateway,
    opts: &RelayOptions,
    dir: &Path,
    script: &str,
) -> Result<RunResult, String> {
    let (mut cmd, token_file) = relay_command("run", gw, opts, dir);
    let script = format!(
        "{script}\nif [ -e \"$TOKEN_FILE\" ]; then echo '::token present'; else echo '::token removed'; fi\n\
         echo \"::proxy ${{HTTPS_PROXY:-}}\"\necho \"::bundle ${{SSL_CERT_FILE:-}}\"\n"
    );
    cmd.env("TOKEN_FILE", &token_file)
        .arg("--")
        .args(["sh", "-c", &script])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start ccr-relay: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > RUN_TIMEOUT => {
                // SAFETY: kill(2) on the process group our unreaped child leads.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "ccr-relay run did not finish within {RUN_TIMEOUT:?}; its stderr:\n{}",
                    tail(&err_reader.join().unwrap_or_default(), 3000)
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("lost track of ccr-relay run: {e}")),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let mut marks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("::") {
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            marks.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    Ok(RunResult {
        status,
        stdout,
        stderr,
        marks,
        bundle: dir.join("ca-bundle.crt"),
    })
}

/// The lines of the relay's log about tunnels (`RUST_LOG=info`).
fn relay_tunnel_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("ccr-relay: info "))
        .filter(|l| l.starts_with("tunnel "))
        .collect()
}

fn count_certs(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

fn contains_pem(bundle: &str, pem: &[u8]) -> bool {
    bundle.contains(String::from_utf8_lossy(pem).trim())
}

/// `HTTP_CODE SSL_VERIFY_RESULT` after a curl that wrote its body to a file.
const CURL_STATUS: &str = "%{http_code} %{ssl_verify_result}";

/// Blind mode, as the real gateway runs for most traffic: the origin's
/// certificate is issued by the CA the gateway serves on its CA endpoint,
/// so a client through the relay verifies it with the merged bundle alone.
fn blind(out: &mut Out) -> Result<(), String> {
    let pki = BlindPki::new();
    let origin = pki.https_origin(&["origin.test"]);
    let gw = DevGateway::start(
        pki.gateway_options(false)
            .map("origin.test:443", origin.addr),
    );
    out.line(
        "gateway",
        format!("{} (development gateway, blind mode)", ws_url(&gw)),
    );
    out.line(
        "origin",
        format!(
            "https://origin.test -> {} (certificate from the gateway's CA)",
            origin.addr
        ),
    );
    let dir = temp_dir("demo-blind");
    let body = dir.join("hello.txt");
    let big_file = dir.join("big.bin");
    let script = format!(
        r#"
curl -sS --max-time 20 -o '{body}' -w '::hello {CURL_STATUS}\n' https://origin.test/hello
curl -sS --max-time 60 -o '{big}' -w '::big %{{http_code}} %{{size_download}} %{{speed_download}}\n' https://origin.test/bytes/{BIG}
curl -sS --max-time 20 --cacert {SYSTEM_CA} -o /dev/null https://origin.test/hello 2>/dev/null
echo "::control $?"
"#,
        body = body.display(),
        big = big_file.display(),
    );
    out.line(
        "relay",
        "ccr-relay run -- sh -c 'curl https://origin.test/hello; curl …/bytes/10485760; …'",
    );
    let run = relay_run(&gw, dir.path(), &script)?;
    if !run.status.success() {
        return Err(run.failure("the script through the relay failed"));
    }

    run.require_relay_on()?;
    let hello = run.mark("hello")?;
    let text = std::fs::read_to_string(&body).unwrap_or_default();
    if hello != "200 0" || text != "hello from origin\n" {
        return Err(run.failure(&format!(
            "curl https://origin.test/hello: status and TLS verify result {hello:?}, body {text:?}"
        )));
    }
    out.line(
        "curl",
        format!(
            "HTTP 200 {:?}  (TLS verified with the relay's merged CA bundle)",
            text.trim_end()
        ),
    );

    let big: Vec<&str> = run.mark("big")?.split(' ').collect();
    let expect_size = BIG.to_string();
    if big.len() != 3 || big[0] != "200" || big[1] != expect_size {
        return Err(run.failure(&format!("the 10 MiB download: code, size, speed = {big:?}")));
    }
    crate::pattern::verify_file(&big_file, BIG)
        .map_err(|e| format!("the 10 MiB download is not what the origin sent: {e}"))?;
    let mbps = big[2].parse::<f64>().unwrap_or(0.0) / 1e6;
    out.line(
        "curl",
        format!(
            "HTTP 200, 10 MiB from /bytes/{BIG}, byte-exact, {mbps:.0} MB/s{}",
            if cfg!(debug_assertions) {
                " (debug build)"
            } else {
                ""
            }
        ),
    );

    let control = run.mark("control")?;
    if control != "60" {
        return Err(run.failure(&format!(
            "control: curl with the system CAs only should fail to verify (exit 60), got exit {control}"
        )));
    }
    out.line(
        "control",
        "the same request trusting only the system CAs: refused (curl exit 60)",
    );

    let proxy = run.mark("proxy")?;
    let bundle_var = run.mark("bundle")?;
    out.line(
        "env",
        format!("HTTPS_PROXY={proxy}  SSL_CERT_FILE={bundle_var}"),
    );
    let bundle = std::fs::read_to_string(&run.bundle).map_err(|e| {
        format!(
            "cannot read the merged bundle {}: {e}",
            run.bundle.display()
        )
    })?;
    let served = std::fs::read(pki.served_ca_pem()).map_err(|e| e.to_string())?;
    if !contains_pem(&bundle, &served) {
        return Err("the merged bundle does not hold the gateway's CA".into());
    }
    out.line(
        "bundle",
        format!(
            "{} certificates: the system's, then the gateway's CA (fetched from /v1/code/upstreamproxy/ca-cert)",
            count_certs(&bundle)
        ),
    );

    let token = run.mark("token")?;
    if token != "removed" {
        return Err(run.failure("the token file was still there while the relay served"));
    }
    out.line("token", "file removed once the relay listened: yes");

    let tunnels = gw.count_events("connect origin.test:443");
    out.line(
        "gateway",
        format!("{tunnels} tunnels to origin.test:443, one WebSocket each"),
    );
    if let Some(line) = relay_tunnel_lines(&run.stderr)
        .into_iter()
        .find(|l| l.contains(" closed: "))
    {
        out.line("log", format!("relay: {line}"));
    }
    Ok(())
}

/// MITM mode, as the real gateway runs for hosts it adds credentials to:
/// it forges a leaf for the host from its CA, checks the origin's real
/// certificate against a CA the client never sees, and injects a header.
fn mitm(out: &mut Out) -> Result<(), String> {
    let dir = temp_dir("demo-mitm");
    let origin_ca = TestCa::new(&dir.join("origin-ca")).map_err(|e| e.to_string())?;
    let (cert, key) = origin_ca.issue_leaf(&["origin.test"]);
    let origin = DevOrigin::start(Some((&cert, &key)));
    let gw = DevGateway::start(
        GatewayOptions::default()
            .mitm(&origin_ca.cert_path())
            .inject("origin.test", "X-Api-Key", "injected-secret")
            .map("origin.test:443", origin.addr),
    );
    out.line(
        "gateway",
        format!(
            "{} (development gateway, MITM mode, injects X-Api-Key for origin.test)",
            ws_url(&gw)
        ),
    );
    out.line(
        "origin",
        format!(
            "https://origin.test -> {} (certificate from a CA the client never sees)",
            origin.addr
        ),
    );
    let seen = dir.join("headers.txt");
    let script = format!(
        r#"
curl -sS --max-time 20 -H 'X-Api-Key: from-the-client' -o '{seen}' -w '::headers {CURL_STATUS}\n' https://origin.test/headers
"#,
        seen = seen.display(),
    );
    out.line(
        "relay",
        "ccr-relay run -- curl -H 'X-Api-Key: from-the-client' https://origin.test/headers",
    );
    let run = relay_run(&gw, dir.path(), &script)?;
    run.require_relay_on()?;
    if !run.status.success() {
        return Err(run.failure("curl through the relay failed"));
    }
    let status = run.mark("headers")?;
    if status != "200 0" {
        return Err(run.failure(&format!(
            "curl https://origin.test/headers: status and TLS verify result {status:?}"
        )));
    }
    out.line(
        "curl",
        "HTTP 200  (verified the gateway's forged leaf with the relay's merged CA bundle)",
    );
    let text = std::fs::read_to_string(&seen).unwrap_or_default();
    let keys: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case("x-api-key"))
        })
        .collect();
    if keys != ["X-Api-Key: injected-secret"] {
        return Err(format!(
            "the origin should see only the gateway's X-Api-Key; it saw:\n{text}"
        ));
    }
    out.line(
        "origin",
        "saw \"X-Api-Key: injected-secret\" (the client sent \"from-the-client\")",
    );
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gw.wait_for_event(EVENT_WAIT, |l| l == "mitm origin.test leaf-issued");
    }));
    if waited.is_err() {
        return Err(take_panic_message());
    }
    let bundle = std::fs::read_to_string(&run.bundle).unwrap_or_default();
    let gw_ca = std::fs::read(&gw.ca_pem_path).map_err(|e| e.to_string())?;
    if !contains_pem(&bundle, &gw_ca) || contains_pem(&bundle, &origin_ca.cert_pem()) {
        return Err("the merged bundle should hold the gateway's CA and not the origin's".into());
    }
    out.line(
        "bundle",
        "holds the gateway's CA, not the origin's: the client trusts the gateway alone",
    );
    Ok(())
}

/// The agent proxy, the second generation: HELLO acknowledged on a fresh
/// WebSocket, the client process named in the CONNECT, the server's FIN,
/// the WebSocket pooled and reused by the next tunnel, and the relay's
/// status page read with `ccr-relay status`.
fn agent(out: &mut Out) -> Result<(), String> {
    let pki = BlindPki::new();
    let origin = pki.https_origin(&["origin.test"]);
    let gw = DevGateway::start(
        pki.gateway_options(false)
            .agent_proxy(crate::ServerKind::Late)
            .map("origin.test:443", origin.addr),
    );
    out.line(
        "gateway",
        format!(
            "{} (development gateway, agent proxy, protocol v2)",
            ws_url(&gw)
        ),
    );
    let dir = temp_dir("demo-agent");
    let status_file = dir.join("status.txt");
    let script = format!(
        r#"
curl -sS --max-time 20 -o /dev/null -w '::first {CURL_STATUS}\n' https://origin.test/hello
curl -sS --max-time 20 -o /dev/null -w '::second {CURL_STATUS}\n' https://origin.test/hello
'{relay}' status > '{status}'
echo "::status $?"
"#,
        relay = crate::bin_path("ccr-relay").display(),
        status = status_file.display(),
    );
    out.line(
        "relay",
        "CCR_AGENT_PROXY_ENABLED=1 ccr-relay run -- sh -c 'curl https://origin.test/hello; curl …; ccr-relay status'",
    );
    let opts = RelayOptions {
        generation: crate::Generation::AgentProxy,
        ..RelayOptions::default()
    };
    let run = relay_run_with(&gw, &opts, dir.path(), &script)?;
    if !run.status.success() {
        return Err(run.failure("the script through the relay failed"));
    }
    run.require_relay_on()?;
    for key in ["first", "second"] {
        let got = run.mark(key)?;
        if got != "200 0" {
            return Err(run.failure(&format!(
                "the {key} curl: status and TLS verify result {got:?}"
            )));
        }
    }
    out.line(
        "curl",
        "HTTP 200 twice  (TLS verified with the relay's merged CA bundle)",
    );
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gw.wait_for_event(EVENT_WAIT, |l| {
            l.starts_with("v2 fin-ack ws=") && l.ends_with(" tunnel=2")
        })
    }));
    let second = match waited {
        Ok(line) => line,
        Err(_) => return Err(run.failure(&take_panic_message())),
    };
    let ws = second
        .split(' ')
        .find_map(|w| w.strip_prefix("ws="))
        .unwrap_or("?");
    if gw.count_events(&format!("v2 hello-ack ws={ws}")) != 1 {
        return Err(run.failure(&format!(
            "the WebSocket of both tunnels (ws={ws}) was not acknowledged as v2: {:?}",
            gw.events()
        )));
    }
    out.line(
        "gateway",
        format!("HELLO acknowledged (HELLO_ACK) on WebSocket {ws}"),
    );
    let process = gw
        .events()
        .into_iter()
        .find_map(|l| {
            l.strip_prefix(&format!("v2 client-process ws={ws} tunnel=1 "))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "-".into());
    out.line(
        "gateway",
        format!(
            "both tunnels on WebSocket {ws}: the first, FIN, FIN_ACK; the second reused it (client process {process})"
        ),
    );
    let lines = relay_tunnel_lines(&run.stderr);
    let Some(reused) = lines.iter().find(|l| l.contains("v2 reused WebSocket")) else {
        return Err(run.failure("no relay log line for a tunnel on a reused WebSocket"));
    };
    out.line("log", format!("relay: {reused}"));
    if run.mark("status")? != "0" {
        return Err(run.failure("ccr-relay status failed"));
    }
    let status = std::fs::read_to_string(&status_file).unwrap_or_default();
    let wanted = [
        "generation: agent-proxy",
        "protocol: v2",
        "tunnelsServed: 2",
    ];
    let shown: Vec<&str> = status
        .lines()
        .filter(|l| wanted.iter().any(|w| l.trim_start().starts_with(w)))
        .collect();
    if shown.len() != wanted.len() {
        return Err(run.failure(&format!(
            "ccr-relay status does not show {wanted:?}:\n{status}"
        )));
    }
    out.line("status", format!("ccr-relay status: {}", shown.join(", ")));
    Ok(())
}

fn ws_url(gw: &DevGateway) -> String {
    let url = gw.ws_url();
    url.strip_suffix(crate::wire::WS_PATH)
        .map(str::to_string)
        .unwrap_or(url)
}
