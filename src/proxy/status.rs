//! The relay explains itself while it runs: `GET /__agentproxy/status` on
//! the proxy port answers with what the [`Monitor`] holds (counters and
//! the last failures) and what start-up decided, as pretty-printed JSON
//! (or, with `?format=text`, plain text for a person); `ccr-relay status`
//! fetches the text form with the crate's one HTTP client
//! ([`crate::http::client`]).
//!
//! Nothing here ever holds the token: failure details are the Display texts
//! of the relay's error types, which never carry it, and control characters
//! in details and hosts become `?`.

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::shared::Shared;
use crate::gateway::Gateway;
use crate::gateway::Generation;
use crate::http::client::{self, ClientError, Exchange};
use crate::http::request_head::RequestHead;
use crate::sys::lock::lock;

pub use super::monitor::{
    Failure, Info, Kind, MAX_FAILURES, Monitor, Rejection, TrustNotes, sanitize,
};

/// The path of the relay's own page.
pub const STATUS_PATH: &str = "/__agentproxy/status";

/// A JSON value, enough for the status page.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(u64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

impl Json {
    fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    fn opt(s: Option<String>) -> Json {
        s.map_or(Json::Null, Json::Str)
    }

    fn strings(items: &[String]) -> Json {
        Json::Arr(items.iter().cloned().map(Json::Str).collect())
    }

    /// Pretty-printed, two spaces an indent.
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        self.write_pretty(&mut out, 0);
        out.push('\n');
        out
    }

    fn write_pretty(&self, out: &mut String, depth: usize) {
        let pad = |out: &mut String, d: usize| out.extend(std::iter::repeat_n("  ", d));
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => out.push_str(&n.to_string()),
            Json::Float(x) if x.is_finite() => out.push_str(&format!("{x:.3}")),
            Json::Float(_) => out.push_str("null"),
            Json::Str(s) => escape_into(out, s),
            Json::Arr(items) if items.is_empty() => out.push_str("[]"),
            Json::Obj(fields) if fields.is_empty() => out.push_str("{}"),
            Json::Arr(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    pad(out, depth + 1);
                    item.write_pretty(out, depth + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(out, depth);
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push_str("{\n");
                for (i, (key, value)) in fields.iter().enumerate() {
                    pad(out, depth + 1);
                    escape_into(out, key);
                    out.push_str(": ");
                    value.write_pretty(out, depth + 1);
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                pad(out, depth);
                out.push('}');
            }
        }
    }

    /// The same content for a person: `key: value` lines, lists indented.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let Json::Obj(fields) = self {
            for (key, value) in fields {
                write_text_field(&mut out, key, value, 0);
            }
        }
        out
    }

    /// A scalar, or a list of scalars as `a,b` (`-` when empty), as text on
    /// one line.
    fn inline_text(&self) -> Option<String> {
        match self {
            Json::Arr(items) if items.is_empty() => Some("-".into()),
            Json::Arr(items) => items
                .iter()
                .map(Json::scalar_text)
                .collect::<Option<Vec<String>>>()
                .map(|texts| texts.join(",")),
            other => other.scalar_text(),
        }
    }

    /// A scalar as text (no quotes); composite values are not scalars.
    fn scalar_text(&self) -> Option<String> {
        match self {
            Json::Null => Some("none".into()),
            Json::Bool(b) => Some(b.to_string()),
            Json::Num(n) => Some(n.to_string()),
            Json::Float(x) => Some(format!("{x:.3}")),
            Json::Str(s) => Some(sanitize(s, usize::MAX)),
            _ => None,
        }
    }
}

fn write_text_field(out: &mut String, key: &str, value: &Json, depth: usize) {
    let pad = "  ".repeat(depth);
    if let Some(text) = value.scalar_text() {
        out.push_str(&format!("{pad}{key}: {text}\n"));
        return;
    }
    match value {
        Json::Arr(items) if items.is_empty() => out.push_str(&format!("{pad}{key}: none\n")),
        Json::Arr(items) => {
            out.push_str(&format!("{pad}{key}:\n"));
            for item in items {
                match item {
                    // `a b c: last` (a failure: `ts kind host: detail`).
                    Json::Obj(fields) => {
                        let mut parts: Vec<String> = fields
                            .iter()
                            .filter_map(|(_, v)| v.inline_text())
                            .filter(|s| !s.is_empty())
                            .collect();
                        let last = parts.pop().unwrap_or_default();
                        let lead = match parts.is_empty() {
                            true => String::new(),
                            false => format!("{}: ", parts.join(" ")),
                        };
                        out.push_str(&format!("{pad}  - {lead}{last}\n"));
                    }
                    other => out.push_str(&format!(
                        "{pad}  - {}\n",
                        other.scalar_text().unwrap_or_default()
                    )),
                }
            }
        }
        Json::Obj(fields) => {
            out.push_str(&format!("{pad}{key}:\n"));
            for (k, v) in fields {
                write_text_field(out, k, v, depth + 1);
            }
        }
        _ => {}
    }
}

/// Writes `s` as a JSON string: quotes, backslashes and control characters
/// escaped; everything else (non-ASCII included) as UTF-8.
pub fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-12-01T12:13:43.123Z` (UTC) for a time after the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The relay's state as JSON (see the module's documentation).
pub fn snapshot(gateway: &Gateway, m: &Monitor) -> Json {
    let info = lock(&m.info).clone();
    let agent = gateway.generation == Generation::AgentProxy;
    let protocol = match gateway.generation {
        Generation::UpstreamProxy => "v1",
        Generation::AgentProxy if gateway.state.v2_unacknowledged() => "v1-fallback",
        Generation::AgentProxy if gateway.state.v2_acknowledged() => "v2",
        Generation::AgentProxy => "unknown",
    };
    let i = info.clone().unwrap_or_default();
    let trust = lock(&m.trust).clone();
    let installed = trust
        .installed
        .iter()
        .map(|(what, path)| Json::Obj(vec![("what", Json::str(what)), ("path", Json::str(path))]))
        .collect();
    let load = |a: &AtomicU64| Json::Num(a.load(Ordering::Relaxed));
    Json::Obj(vec![
        ("relay", Json::str("ccr-relay")),
        ("version", Json::str(env!("CARGO_PKG_VERSION"))),
        ("enabled", Json::Bool(info.is_some())),
        ("generation", Json::str(gateway.generation.name())),
        ("protocol", Json::str(protocol)),
        ("requireV2", Json::Bool(agent && gateway.require_v2)),
        ("gatewayUrl", Json::str(gateway.endpoint.http_url(""))),
        ("port", Json::Num(u64::from(i.port))),
        ("caBundlePath", Json::str(i.ca_bundle_path)),
        ("hasSystemCa", Json::Bool(i.has_system_ca)),
        ("noProxy", Json::str(i.no_proxy)),
        ("standalone", Json::Bool(i.standalone)),
        ("selective", Json::Bool(i.selective)),
        ("javaTrustStorePath", Json::opt(i.java_trust_store_path)),
        ("readmePath", Json::opt(i.readme_path)),
        ("gitConfigInjection", Json::strings(&i.git_config_injection)),
        ("gitSshRewrite", Json::Bool(i.git_ssh_rewrite)),
        ("startupError", Json::opt(gateway.state.startup_error())),
        (
            "uptimeSeconds",
            Json::Float(m.started.elapsed().as_secs_f64()),
        ),
        ("pool", pool(gateway)),
        ("openTunnels", load(&m.open_tunnels)),
        ("tunnelsServed", load(&m.tunnels_served)),
        ("httpRequestsServed", load(&m.http_requests)),
        ("bytesUp", load(&m.bytes_up)),
        ("bytesDown", load(&m.bytes_down)),
        ("trustInstalled", Json::Arr(installed)),
        ("toolTrustFailureCodes", Json::strings(&trust.failure_codes)),
        (
            "gitConfigConflicts",
            Json::strings(m.git_conflicts.get().map_or(&[][..], Vec::as_slice)),
        ),
        ("blockedHosts", blocked_hosts(m)),
        ("allowlist", allowlist(m)),
        ("recentRelayFailures", recent_failures(m)),
    ])
}

/// The pool of idle WebSockets (agent proxy), with the warm one.
fn pool(gateway: &Gateway) -> Json {
    let Some(pool) = &gateway.pool else {
        return Json::Null;
    };
    Json::Obj(vec![
        ("idle", Json::Num(pool.len() as u64)),
        ("keepWarm", Json::Bool(pool.keeps_warm())),
        (
            "warm",
            pool.warm().map_or(Json::Null, |warm| {
                Json::Obj(vec![
                    ("ageSeconds", Json::Float(warm.age.as_secs_f64())),
                    ("idleSeconds", Json::Float(warm.idle.as_secs_f64())),
                ])
            }),
        ),
    ])
}

/// The recent failures, newest first.
fn recent_failures(m: &Monitor) -> Json {
    Json::Arr(
        m.failures()
            .into_iter()
            .rev()
            .map(|f| {
                Json::Obj(vec![
                    ("ts", Json::str(rfc3339(f.ts))),
                    ("kind", Json::str(f.kind.name())),
                    ("host", Json::Str(f.host)),
                    ("detail", Json::Str(f.detail)),
                ])
            })
            .collect(),
    )
}

/// The hosts the gateway's policy refused, most recently denied first.
fn blocked_hosts(m: &Monitor) -> Json {
    let hosts = m.blocked_hosts().into_iter().rev().map(|h| {
        Json::Obj(vec![
            ("host", Json::Str(h.host)),
            ("count", Json::Num(h.count)),
            ("firstTs", Json::str(rfc3339(h.first_ts))),
            ("lastTs", Json::str(rfc3339(h.last_ts))),
            ("clients", Json::strings(&h.clients)),
            ("reason", Json::Str(h.reason)),
        ])
    });
    Json::Arr(hosts.collect())
}

/// The blocked hosts as one comma-separated list a user can paste into the
/// environment's network settings (`null` when none was blocked).
fn allowlist(m: &Monitor) -> Json {
    let hosts: Vec<String> = m.blocked_hosts().into_iter().map(|h| h.host).collect();
    match hosts.is_empty() {
        true => Json::Null,
        false => Json::Str(hosts.join(",")),
    }
}

/// Whether `head` asks for the status page: `GET` of [`STATUS_PATH`] in
/// origin form, any query.
pub fn is_status_request(head: &RequestHead) -> bool {
    head.method == "GET"
        && head
            .target
            .strip_prefix(STATUS_PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'))
}

/// Answers the status request `head`: `200`, JSON (or text with
/// `format=text` in the query), then close.
pub(super) fn serve(shared: &Shared, client: &TcpStream, head: &RequestHead) {
    let text = head
        .target
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p == "format=text"));
    let state = snapshot(&shared.gateway, &shared.monitor);
    let (body, content_type) = if text {
        (state.text(), "text/plain; charset=utf-8")
    } else {
        (state.pretty(), "application/json")
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    crate::http::reply::send_and_close(client, response.as_bytes());
}

/// Why `ccr-relay status` could not show the relay's state.
#[derive(Debug)]
pub enum StatusError {
    /// No `--proxy` and no `HTTPS_PROXY` in the environment.
    NoProxy,
    /// The proxy URL is not `http://host:port`.
    BadUrl(String),
    /// Nothing answers there.
    Connect { addr: String, error: io::Error },
    /// Sending the request or reading the answer failed.
    Fetch(ClientError),
    /// Something answered, but not a ccr-relay status page.
    NotARelay(String),
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusError::NoProxy => f.write_str(
                "no relay to ask: HTTPS_PROXY is not set; pass --proxy http://127.0.0.1:PORT",
            ),
            StatusError::BadUrl(url) => write!(
                f,
                "the proxy URL {url:?} is not http://HOST:PORT (the relay speaks plain HTTP, never https://)"
            ),
            StatusError::Connect { addr, error } => {
                write!(f, "no relay running at {addr}: {error}")
            }
            StatusError::Fetch(e) => write!(f, "reading the relay's status failed: {e}"),
            StatusError::NotARelay(why) => write!(f, "not a ccr-relay: {why}"),
        }
    }
}

impl std::error::Error for StatusError {}

/// How long `ccr-relay status` waits for the relay.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest status answer read.
const FETCH_MAX: usize = 1 << 20;

/// `host:port` of an `http://host:port[/]` proxy URL.
fn proxy_authority(url: &str) -> Result<String, StatusError> {
    let bad = || StatusError::BadUrl(sanitize(url, 200));
    let rest = url.trim();
    let rest = rest
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &rest[7..])
        .ok_or_else(bad)?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
        return Err(bad());
    }
    // A port is needed: the relay never listens on 80 by default.
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(authority.to_string())
        }
        _ => Err(bad()),
    }
}

/// Fetches the text status page from the relay at `proxy_url`: one
/// request, its answer framed as its head says, all within
/// [`FETCH_TIMEOUT`] and [`FETCH_MAX`].
pub fn fetch_text(proxy_url: &str) -> Result<String, StatusError> {
    let authority = proxy_authority(proxy_url)?;
    let deadline = client::deadline_after(FETCH_TIMEOUT);
    let tcp = client::connect(&authority, deadline).map_err(|error| StatusError::Connect {
        addr: authority.clone(),
        error,
    })?;
    let mut exchange = Exchange::new(tcp, deadline);
    let request = format!(
        "GET {STATUS_PATH}?format=text HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    );
    exchange
        .send(request.as_bytes())
        .map_err(StatusError::Fetch)?;
    let head = exchange.read_head().map_err(|e| match e {
        ClientError::ClosedBeforeAnswer | ClientError::Malformed(_) => {
            StatusError::NotARelay("no HTTP answer".into())
        }
        other => StatusError::Fetch(other),
    })?;
    if head.status != 200 || head.minor_version != 1 {
        return Err(StatusError::NotARelay(format!(
            "it answered {:?}",
            sanitize(&head.status_line(), 100)
        )));
    }
    let body = exchange
        .read_body(&head.headers, FETCH_MAX)
        .map_err(StatusError::Fetch)?;
    let body = String::from_utf8_lossy(&body);
    if !body.starts_with("relay: ccr-relay\n") {
        return Err(StatusError::NotARelay(
            "the answer is not the relay's status page".into(),
        ));
    }
    Ok(body.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::dial::OpenError;
    use std::io::{Read, Write};

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        escape_into(&mut out, s);
        out
    }

    #[test]
    fn escaping_quotes_backslashes_controls_and_non_ascii() {
        assert_eq!(escaped(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(escaped("l1\nl2\r\t"), r#""l1\nl2\r\t""#);
        assert_eq!(escaped("\u{0}\u{1f}\u{7f}"), r#""\u0000\u001f\u007f""#);
        assert_eq!(escaped("héllo → 日本 🦀"), "\"héllo → 日本 🦀\"");
        assert_eq!(escaped(""), "\"\"");
    }

    #[test]
    fn pretty_json_nests_and_separates() {
        let v = Json::Obj(vec![
            ("a", Json::Num(1)),
            ("b", Json::Arr(vec![Json::Bool(true), Json::Null])),
            ("c", Json::Arr(vec![])),
            ("d", Json::Obj(vec![("e", Json::str("x\"y"))])),
        ]);
        assert_eq!(
            v.pretty(),
            "{\n  \"a\": 1,\n  \"b\": [\n    true,\n    null\n  ],\n  \"c\": [],\n  \"d\": {\n    \"e\": \"x\\\"y\"\n  }\n}\n"
        );
    }

    /// A gateway whose token is `TOKEN`, at a local listener that answers
    /// every upgrade with `answer` and closes.
    fn refusing_gateway(generation: Generation, answer: &'static [u8]) -> Gateway {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer);
            }
        });
        Gateway::new(
            crate::gateway::Endpoint::parse(&format!("http://{addr}")).unwrap(),
            crate::gateway::Credentials {
                session_id: "sess-id".into(),
                token: crate::gateway::token::TokenSource::fixed(
                    crate::gateway::token::SessionToken::new(TOKEN).unwrap(),
                    crate::gateway::token::TokenOrigin::TokenFile,
                ),
            },
            native_tls::TlsConnector::new().unwrap(),
            Duration::from_secs(2),
        )
        .with_generation(generation, None)
    }

    const TOKEN: &str = "Zq7xK2tokenVALUE";

    #[test]
    fn the_page_never_carries_the_token() {
        for generation in [Generation::UpstreamProxy, Generation::AgentProxy] {
            for answer in [
                &b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"[..],
                &b""[..],
            ] {
                let gw = refusing_gateway(generation, answer);
                let error = gw.open_websocket().err().unwrap();
                let e = OpenError::Dial {
                    error,
                    attempts: 1,
                    startup_error: None,
                };
                let monitor = Monitor::default();
                monitor.open_failed(generation, &e, "origin.test:443");
                monitor.check_answer(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                    "origin.test:443",
                );
                let page = snapshot(&gw, &monitor);
                let basic = crate::gateway::base64(format!("sess-id:{TOKEN}").as_bytes());
                for form in [page.pretty(), page.text()] {
                    assert!(form.contains("origin.test:443"), "{form}");
                    for secret in [TOKEN, basic.as_str(), &basic[..basic.len() - 4]] {
                        assert!(!form.contains(secret), "{secret} in {form}");
                    }
                }
                let kinds: Vec<&str> = monitor.failures().iter().map(|f| f.kind.name()).collect();
                let first = match (generation, answer.is_empty()) {
                    (Generation::AgentProxy, _) => "ws_open_failed",
                    (_, false) => "upgrade_refused",
                    (_, true) => "ws_open_failed",
                };
                assert_eq!(kinds, [first, "connect_rejected"]);
            }
        }
    }

    #[test]
    fn blocked_hosts_show_with_their_programs_and_an_allowlist_line() {
        let gw = refusing_gateway(Generation::AgentProxy, b"");
        let monitor = Monitor::default();
        let empty = snapshot(&gw, &monitor).text();
        assert!(
            empty.contains("\nblockedHosts: none\nallowlist: none\n"),
            "{empty}"
        );
        monitor.policy_denied("a.test", "curl", "not\u{1b} allowed");
        monitor.policy_denied("b.test", "python3", "request blocked");
        monitor.policy_denied("a.test", "python3", "not allowed");
        let page = snapshot(&gw, &monitor);
        let text = page.text();
        let lines: Vec<&str> = text.lines().collect();
        let at = lines.iter().position(|l| *l == "blockedHosts:").unwrap();
        fn entry(line: &str) -> (&str, &str, String) {
            let words: Vec<&str> = line.split(' ').collect();
            (words[3], words[4], words[7].to_string())
        }
        assert_eq!(
            entry(lines[at + 1]),
            ("a.test", "2", "curl,python3:".to_string()),
            "{text}"
        );
        assert!(lines[at + 1].ends_with(": not allowed"), "{text}");
        assert_eq!(entry(lines[at + 2]).0, "b.test");
        assert_eq!(lines[at + 3], "allowlist: b.test,a.test");
        let json = page.pretty();
        assert!(
            json.contains("\"clients\": [\n        \"curl\",\n        \"python3\"\n      ]"),
            "{json}"
        );
        assert!(json.contains("\"firstTs\": \"20"), "{json}");
    }

    #[test]
    fn status_requests_are_recognised() {
        let head = |line: &str| crate::http::request_head::parse_head(line.as_bytes()).unwrap();
        assert!(is_status_request(&head(
            "GET /__agentproxy/status HTTP/1.1\r\n\r\n"
        )));
        assert!(is_status_request(&head(
            "GET /__agentproxy/status?format=text HTTP/1.1\r\n\r\n"
        )));
        assert!(!is_status_request(&head(
            "GET /__agentproxy/statusx HTTP/1.1\r\n\r\n"
        )));
        assert!(!is_status_request(&head(
            "POST /__agentproxy/status HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        )));
        assert!(!is_status_request(&head(
            "GET http://x/__agentproxy/status HTTP/1.1\r\n\r\n"
        )));
    }

    /// A one-shot relay stand-in at a local port: reads the request head,
    /// writes `answer`, closes. Returns the proxy URL and the request.
    fn one_answer(answer: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            stream.write_all(&answer).unwrap();
            String::from_utf8_lossy(&head).into_owned()
        });
        (url, server)
    }

    #[test]
    fn the_status_client_honours_content_length() {
        let page = "relay: ccr-relay\nversion: 1\n";
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{page}EXTRA BYTES\r\n\r\nmore",
            page.len()
        );
        let (url, server) = one_answer(answer.into_bytes());
        assert_eq!(fetch_text(&url).unwrap(), page);
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /__agentproxy/status?format=text HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[test]
    fn the_status_client_reads_chunked_and_close_delimited_pages() {
        let page = "relay: ccr-relay\nversion: 1\n";
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\nEXTRA",
            &page[..5],
            page.len() - 5,
            &page[5..]
        );
        let (url, server) = one_answer(chunked.into_bytes());
        assert_eq!(fetch_text(&url).unwrap(), page);
        server.join().unwrap();
        let to_the_close = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{page}");
        let (url, server) = one_answer(to_the_close.into_bytes());
        assert_eq!(fetch_text(&url).unwrap(), page);
        server.join().unwrap();
    }

    #[test]
    fn proxy_urls_must_be_plain_http_with_a_port() {
        assert_eq!(
            proxy_authority("http://127.0.0.1:8080/").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(proxy_authority("HTTP://[::1]:9").unwrap(), "[::1]:9");
        for bad in [
            "https://127.0.0.1:8080",
            "127.0.0.1:8080",
            "http://127.0.0.1",
            "http://u:p@127.0.0.1:1",
            "http://127.0.0.1:1/x",
        ] {
            assert!(proxy_authority(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day: 2024-02-29 12:00:00 UTC.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_208_000)),
            "2024-02-29T12:00:00.000Z"
        );
    }

    #[test]
    fn text_form_lists_fields_and_failures() {
        let v = Json::Obj(vec![
            ("relay", Json::str("ccr-relay")),
            ("startupError", Json::Null),
            (
                "recentRelayFailures",
                Json::Arr(vec![
                    Json::Obj(vec![
                        ("kind", Json::str("ws_error")),
                        ("host", Json::str("a:1")),
                        ("detail", Json::str("it broke")),
                    ]),
                    Json::Obj(vec![
                        ("kind", Json::str("tls_to_relay")),
                        ("host", Json::str("")),
                        ("detail", Json::str("use http://")),
                    ]),
                ]),
            ),
            ("gitConfigConflicts", Json::Arr(vec![])),
        ]);
        assert_eq!(
            v.text(),
            "relay: ccr-relay\nstartupError: none\nrecentRelayFailures:\n  - ws_error a:1: it broke\n  - tls_to_relay: use http://\ngitConfigConflicts: none\n"
        );
    }
}
