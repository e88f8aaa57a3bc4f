//! The relay's monitor: counters and a bounded history of the last
//! [`MAX_FAILURES`] failures, each with its [`Kind`] (where it happened).
//! The [`Monitor`] is held by the [`Gateway`](crate::gateway::Gateway), so
//! every connection thread reaches it; the proxy layer records what the
//! lower layers return (a head that failed, a dial's error, a tunnel's or a
//! direct connection's end, the gateway's first answer). The status page
//! ([`super::status`]) shows what it holds.
//!
//! Nothing here ever holds the token: failure details are the Display texts
//! of the relay's error types, which never carry it, and control characters
//! in details and hosts become `?`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use log::warn;

use super::policy::{BlockedHost, BlockedHosts};
use crate::gateway::GatewayError;
use crate::gateway::Generation;
use crate::http::request_head::{HeadError, RequestHead};
use crate::sys::lock::lock;
use crate::tunnel::End;
use crate::tunnel::dial::OpenError;
use crate::tunnel::pipe::{Direction, PipeEnd, PipeSide};

/// How many failures the history keeps.
pub const MAX_FAILURES: usize = 20;
/// Longest detail and host kept per failure, in characters.
const MAX_DETAIL: usize = 400;
const MAX_HOST: usize = 260;

/// What went wrong, by where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TLS ClientHello came to the proxy port (`HTTPS_PROXY=https://…`).
    TlsToRelay,
    /// The request head grew past its bound.
    HeaderTooLong,
    /// The request head was not complete in time.
    HeadTimeout,
    /// The request line or a header was not HTTP/1.x.
    BadRequest,
    /// A request that is neither CONNECT nor a forwardable absolute URL.
    NotConnect,
    /// The gateway answered the CONNECT with 4xx or 5xx.
    ConnectRejected,
    /// The WebSocket failed (I/O, TLS, protocol, unreadable message).
    WsError,
    /// No WebSocket could be opened (agent proxy, any reason).
    WsOpenFailed,
    /// The WebSocket closed before the exchange was over.
    WsClosedMidExchange,
    /// The gateway did not acknowledge tunnel protocol v2.
    V2NotAcked,
    /// The gateway took no client byte for the stall bound.
    UploadStalled,
    /// The gateway, known to answer WebSocket pings, answered nothing
    /// within the liveness deadline (a frozen process or host), or its
    /// kernel stopped acknowledging bytes (`TCP_USER_TIMEOUT`).
    GatewayUnresponsive,
    /// Upstream proxy: the gateway could not be reached.
    GatewayUnreachable,
    /// Upstream proxy: connect, TLS and upgrade did not finish in time.
    UpgradeTimeout,
    /// Upstream proxy: the upgrade was answered with another status.
    UpgradeRefused,
    /// The gateway did not answer the CONNECT in time.
    NoAnswer,
    /// A local process the access rule does not allow.
    ClientRefused,
    /// Selective mode: a direct connection cut short by the target, a
    /// client that took nothing for the stall bound, or an internal error.
    DirectFailed,
    /// Selective mode: a routing or direct-dial failure.
    Selective(crate::proxy::route::FailureKind),
    /// The gateway ended a tunnel, sending nothing back, right after the
    /// client's TLS ClientHello: it refused the handshake.
    TlsHandshakeRefused,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::TlsToRelay => "tls_to_relay",
            Kind::HeaderTooLong => "header_too_long",
            Kind::HeadTimeout => "head_timeout",
            Kind::BadRequest => "bad_request",
            Kind::NotConnect => "not_connect",
            Kind::ConnectRejected => "connect_rejected",
            Kind::WsError => "ws_error",
            Kind::WsOpenFailed => "ws_open_failed",
            Kind::WsClosedMidExchange => "ws_closed_mid_exchange",
            Kind::V2NotAcked => "v2_not_acked",
            Kind::UploadStalled => "upload_stalled",
            Kind::GatewayUnresponsive => "gateway_unresponsive",
            Kind::GatewayUnreachable => "gateway_unreachable",
            Kind::UpgradeTimeout => "upgrade_timeout",
            Kind::UpgradeRefused => "upgrade_refused",
            Kind::NoAnswer => "no_answer",
            Kind::ClientRefused => "client_refused",
            Kind::DirectFailed => "direct_failed",
            Kind::Selective(kind) => kind.as_str(),
            Kind::TlsHandshakeRefused => "tls_handshake_refused",
        }
    }
}

/// A CONNECT the gateway answered with 4xx or 5xx, for the tunnel's log
/// line: `HTTP/1.1 407 Proxy Authentication Required: wrong session id or
/// token` (the status line, control characters replaced, and a hint when
/// the status has a usual cause).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// The gateway's status line.
    pub line: String,
    /// What the status usually means here; empty when nothing is known.
    pub hint: &'static str,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)?;
        if !self.hint.is_empty() {
            write!(f, ": {}", self.hint)?;
        }
        Ok(())
    }
}

/// One recorded failure.
#[derive(Debug, Clone)]
pub struct Failure {
    pub ts: SystemTime,
    pub kind: Kind,
    pub detail: String,
    pub host: String,
}

/// Facts start-up decided, set once the relay is bound.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub port: u16,
    pub ca_bundle_path: String,
    pub has_system_ca: bool,
    /// The `NO_PROXY` children get.
    pub no_proxy: String,
    pub standalone: bool,
    pub selective: bool,
    /// The Java truststore start-up wrote, if it did.
    pub java_trust_store_path: Option<String>,
    /// The agent's README start-up wrote, if it did.
    pub readme_path: Option<String>,
    /// The git settings children get through `GIT_CONFIG_*`, as `key=value`.
    pub git_config_injection: Vec<String>,
    /// Whether those settings rewrite GitHub SSH remotes to HTTPS.
    pub git_ssh_rewrite: bool,
}

/// Counters and the failure history of one relay.
pub struct Monitor {
    pub(super) started: Instant,
    pub(super) failures: Mutex<VecDeque<Failure>>,
    pub(super) open_tunnels: AtomicU64,
    pub(super) tunnels_served: AtomicU64,
    pub(super) http_requests: AtomicU64,
    pub(super) bytes_up: AtomicU64,
    pub(super) bytes_down: AtomicU64,
    pub(super) info: Mutex<Option<Info>>,
    /// What the trust installers did, as they finish.
    pub(super) trust: Mutex<TrustNotes>,
    /// The git settings start-up found that send git around the proxy (set
    /// by the background check once it finishes).
    pub(super) git_conflicts: OnceLock<Vec<String>>,
    /// The hosts the gateway's policy refused.
    pub(super) blocked: Mutex<BlockedHosts>,
}

/// What the trust installers did (some run in the background after
/// start-up): what was installed where, and the reason codes of the steps
/// that failed.
#[derive(Debug, Default, Clone)]
pub struct TrustNotes {
    pub installed: Vec<(String, String)>,
    pub failure_codes: Vec<String>,
}

impl Default for Monitor {
    fn default() -> Monitor {
        Monitor {
            started: Instant::now(),
            failures: Mutex::new(VecDeque::with_capacity(MAX_FAILURES)),
            open_tunnels: AtomicU64::new(0),
            tunnels_served: AtomicU64::new(0),
            http_requests: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            info: Mutex::new(None),
            trust: Mutex::new(TrustNotes::default()),
            git_conflicts: OnceLock::new(),
            blocked: Mutex::new(BlockedHosts::default()),
        }
    }
}

pub use crate::sys::text::sanitize;

/// Decrements the open-tunnel count when the tunnel ends.
pub struct OpenTunnel<'a>(&'a Monitor);

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.0.open_tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Monitor {
    /// Sets what start-up decided.
    pub fn set_info(&self, info: Info) {
        *lock(&self.info) = Some(info);
    }

    /// Records a tunnel that fell back to the first generation's semantics
    /// because the gateway did not acknowledge HELLO (`why`), if it did.
    pub fn opened(&self, opened: &crate::tunnel::dial::Opened, target: &str) {
        if let Some(why) = opened.fell_back {
            self.record(
                Kind::V2NotAcked,
                &format!("{why}; falling back to the first generation's semantics"),
                target,
            );
        }
    }

    /// What the gateway client's liveness check calls when it drops a
    /// pooled WebSocket: a `gateway_unresponsive` failure here.
    pub fn unresponsive_recorder(self: &Arc<Self>) -> crate::gateway::liveness::Recorder {
        let monitor = Arc::clone(self);
        Arc::new(move |detail: &str| monitor.record(Kind::GatewayUnresponsive, detail, ""))
    }

    /// Adds what an installer run did to what the status page shows.
    pub fn note_trust(&self, done: TrustNotes) {
        let mut trust = lock(&self.trust);
        trust.installed.extend(done.installed);
        trust.failure_codes.extend(done.failure_codes);
    }

    /// Adds the reason code of a trust step that failed outside the
    /// installers (the JDK's `cacerts` unreadable, say), once.
    pub fn note_trust_failure(&self, code: &str) {
        let mut trust = lock(&self.trust);
        if !trust.failure_codes.iter().any(|c| c == code) {
            trust.failure_codes.push(code.to_string());
        }
    }

    /// Records what the start-up git check found.
    pub fn set_git_conflicts(&self, found: Vec<String>) {
        let _ = self.git_conflicts.set(found);
    }

    /// Adds a failure, dropping the oldest beyond [`MAX_FAILURES`].
    pub fn record(&self, kind: Kind, detail: &str, host: &str) {
        let failure = Failure {
            ts: SystemTime::now(),
            kind,
            detail: sanitize(detail, MAX_DETAIL),
            host: sanitize(host, MAX_HOST),
        };
        let mut ring = lock(&self.failures);
        while ring.len() >= MAX_FAILURES {
            ring.pop_front();
        }
        ring.push_back(failure);
    }

    /// The history, oldest first.
    pub fn failures(&self) -> Vec<Failure> {
        lock(&self.failures).iter().cloned().collect()
    }

    /// A request head that could not be read or served; `head` when it was
    /// read (its target is the host). A TLS handshake is also a warning.
    pub fn head_failed(&self, e: &HeadError, head: Option<&RequestHead>) {
        let kind = match e {
            HeadError::TlsHandshake => {
                warn!("{e}");
                Kind::TlsToRelay
            }
            HeadError::TooLarge => Kind::HeaderTooLong,
            HeadError::Timeout => Kind::HeadTimeout,
            HeadError::MethodNotAllowed(_) => Kind::NotConnect,
            HeadError::Malformed(_) if head.is_some_and(|h| h.method != "CONNECT") => {
                Kind::NotConnect
            }
            HeadError::Malformed(_) => Kind::BadRequest,
            HeadError::Closed(_) => return,
        };
        self.record(kind, &e.to_string(), head.map_or("", |h| &h.target));
    }

    /// A tunnel that could not be opened (`generation` picks the kinds).
    pub fn open_failed(&self, generation: Generation, e: &OpenError, host: &str) {
        let kind = match e {
            OpenError::Dial { error, .. } => match (generation, error) {
                (Generation::AgentProxy, _) => Kind::WsOpenFailed,
                (_, GatewayError::Unreachable(_)) => Kind::GatewayUnreachable,
                (_, GatewayError::Timeout) => Kind::UpgradeTimeout,
                (_, GatewayError::Refused(_)) => Kind::UpgradeRefused,
                _ => Kind::WsOpenFailed,
            },
            OpenError::NotAcknowledged(_) => Kind::V2NotAcked,
            OpenError::ClosedSilently => Kind::WsClosedMidExchange,
            OpenError::NoAnswer(_) => Kind::NoAnswer,
            OpenError::Ws(_) | OpenError::Malformed(_) => Kind::WsError,
        };
        self.record(kind, &e.to_string(), host);
    }

    /// The gateway's first answer bytes: a 4xx or 5xx status line is a
    /// rejected CONNECT (recorded, and returned for the tunnel's log line).
    pub fn check_answer(&self, answer: &[u8], host: &str) -> Option<Rejection> {
        let line_end = answer
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(answer.len());
        let line = sanitize(&String::from_utf8_lossy(&answer[..line_end.min(200)]), 200);
        let status = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok())?;
        if !(400..=599).contains(&status) {
            return None;
        }
        let rejection = Rejection {
            status,
            hint: match status {
                407 => "wrong session id or token",
                _ => "",
            },
            line,
        };
        let detail = format!("the gateway answered the CONNECT with {rejection}");
        self.record(Kind::ConnectRejected, &detail, host);
        Some(rejection)
    }

    /// A tunnel starts: counted open until the guard drops.
    pub fn tunnel_opened(&self) -> OpenTunnel<'_> {
        self.open_tunnels.fetch_add(1, Ordering::Relaxed);
        OpenTunnel(self)
    }

    /// A tunnel ended: totals, and its end if that is a failure (`v2`: a
    /// WebSocket close without FIN cut the exchange).
    pub fn tunnel_ended(&self, end: &End, v2: bool, up: u64, down: u64, host: &str) {
        self.tunnels_served.fetch_add(1, Ordering::Relaxed);
        self.add_bytes(up, down);
        let kind = match end {
            End::UploadStalled(_) => Kind::UploadStalled,
            End::GatewayUnresponsive(_) => Kind::GatewayUnresponsive,
            // The kernel gave up on bytes the gateway's host never acknowledged.
            End::WsError(tungstenite::Error::Io(e))
                if e.raw_os_error() == Some(libc::ETIMEDOUT) =>
            {
                Kind::GatewayUnresponsive
            }
            End::WsError(_) | End::Malformed(_) => Kind::WsError,
            End::WsClosed if v2 => Kind::WsClosedMidExchange,
            _ => return,
        };
        let detail = match kind {
            Kind::WsClosedMidExchange => {
                format!("WebSocket closed without FIN after up {up} B, down {down} B")
            }
            _ => format!("{end} (after up {up} B, down {down} B)"),
        };
        self.record(kind, &detail, host);
    }

    /// A direct connection (selective mode) ended: its bytes count (`up`
    /// includes what came with the request head), and an end that cut it
    /// short is a failure: a stall toward the target is `upload_stalled`,
    /// as for a tunnel; the target failing, a stall toward the client or
    /// an internal error is `direct_failed`. A client that goes away or
    /// resets is the client's choice, not recorded.
    pub fn direct_ended(&self, end: &PipeEnd, up: u64, down: u64, host: &str) {
        self.tunnels_served.fetch_add(1, Ordering::Relaxed);
        self.add_bytes(up, down);
        let kind = match end {
            PipeEnd::Stalled(Direction::Up, _) => Kind::UploadStalled,
            PipeEnd::Stalled(Direction::Down, _)
            | PipeEnd::Error(PipeSide::Target, _)
            | PipeEnd::Internal(_) => Kind::DirectFailed,
            PipeEnd::Closed | PipeEnd::Aborted | PipeEnd::Error(PipeSide::Client, _) => return,
        };
        let detail = format!("direct connection: {end} (after up {up} B, down {down} B)");
        self.record(kind, &detail, host);
    }

    /// The gateway's policy refused `host` (no port) for the program
    /// `client`, saying `reason`: kept for the status page; the host's
    /// first denial is also a warning.
    pub fn policy_denied(&self, host: &str, client: &str, reason: &str) {
        let first = lock(&self.blocked).record(host, client, reason, SystemTime::now());
        if first {
            warn!(
                "the gateway's policy blocked {} (asked by {}): {}; blocked hosts and the allowlist to ask for are on the status page (`ccr-relay status`, or GET {} on the proxy port)",
                sanitize(host, MAX_HOST),
                sanitize(client, 64),
                sanitize(reason, 200),
                super::status::STATUS_PATH
            );
        }
    }

    /// The hosts the gateway's policy refused, least recently denied first.
    pub fn blocked_hosts(&self) -> Vec<BlockedHost> {
        lock(&self.blocked).hosts().to_vec()
    }

    /// A tunnel whose TLS handshake the gateway refused (see
    /// [`super::policy::refused_handshake`]): counted like any tunnel and
    /// recorded as `tls_handshake_refused` with the program that asked.
    pub fn handshake_refused(&self, up: u64, host: &str, client: &str) {
        self.tunnels_served.fetch_add(1, Ordering::Relaxed);
        self.add_bytes(up, 0);
        let detail = format!(
            "the gateway refused the TLS handshake of {client}: it ended the tunnel right after the ClientHello without a byte back (some gateways refuse TLS features that browsers send, such as Encrypted Client Hello)"
        );
        self.record(Kind::TlsHandshakeRefused, &detail, host);
    }

    /// One plain-HTTP request forwarded.
    pub fn http_served(&self, up: u64, down: u64) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
        self.add_bytes(up, down);
    }

    fn add_bytes(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    #[test]
    fn the_ring_keeps_the_last_twenty_and_replaces_controls() {
        let m = Monitor::default();
        for i in 0..25 {
            m.record(
                Kind::WsError,
                &format!("failure {i}\r\nX: y"),
                "h\u{1b}st:443",
            );
        }
        let all = m.failures();
        assert_eq!(all.len(), MAX_FAILURES);
        assert_eq!(all[0].detail, "failure 5??X: y");
        assert_eq!(all[19].detail, "failure 24??X: y");
        assert_eq!(all[19].host, "h?st:443");
    }

    #[test]
    fn rejected_connect_answers_are_recorded_and_200_is_not() {
        let m = Monitor::default();
        assert_eq!(
            m.check_answer(b"HTTP/1.1 200 Connection Established\r\n\r\n", "a:443"),
            None
        );
        let auth = m
            .check_answer(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                "b:443",
            )
            .unwrap();
        assert_eq!(
            auth.to_string(),
            "HTTP/1.1 407 Proxy Authentication Required: wrong session id or token"
        );
        let bad = m
            .check_answer(b"HTTP/1.0 502 Bad\x1bGateway\r\n", "c:443")
            .unwrap();
        assert_eq!(
            (bad.status, bad.to_string()),
            (502, "HTTP/1.0 502 Bad?Gateway".into())
        );
        assert_eq!(m.check_answer(b"junk", "d:443"), None);
        assert_eq!(m.check_answer(b"HTTP/1.1 3", "e:443"), None);
        let all = m.failures();
        let got: Vec<(&str, &str)> = all
            .iter()
            .map(|f| (f.kind.name(), f.host.as_str()))
            .collect();
        assert_eq!(
            got,
            [("connect_rejected", "b:443"), ("connect_rejected", "c:443")]
        );
        assert!(
            all[0]
                .detail
                .contains("407 Proxy Authentication Required: wrong session id")
        );
    }

    #[test]
    fn tunnel_ends_count_and_record_only_failures() {
        let m = Monitor::default();
        let guard = m.tunnel_opened();
        assert_eq!(m.open_tunnels.load(Ordering::Relaxed), 1);
        drop(guard);
        assert_eq!(m.open_tunnels.load(Ordering::Relaxed), 0);
        m.tunnel_ended(&End::ServerFin, true, 10, 20, "a:443");
        m.tunnel_ended(&End::WsClosed, false, 1, 2, "v1:443");
        m.tunnel_ended(&End::SocketClosed, true, 1, 2, "b:443");
        m.tunnel_ended(&End::WsClosed, true, 300, 4000, "c:443");
        m.tunnel_ended(
            &End::UploadStalled(Duration::from_secs(180)),
            true,
            5,
            6,
            "d:443",
        );
        m.tunnel_ended(
            &End::GatewayUnresponsive(Duration::from_secs(30)),
            false,
            0,
            0,
            "e:443",
        );
        let kernel_gave_up = io::Error::from_raw_os_error(libc::ETIMEDOUT);
        m.tunnel_ended(
            &End::WsError(tungstenite::Error::Io(kernel_gave_up)),
            true,
            0,
            0,
            "f:443",
        );
        // A bound of the relay's own (FIN_ACK's) is not the gateway's silence.
        let own_bound = io::Error::from(io::ErrorKind::TimedOut);
        m.tunnel_ended(
            &End::WsError(tungstenite::Error::Io(own_bound)),
            true,
            0,
            0,
            "g:443",
        );
        assert_eq!(m.tunnels_served.load(Ordering::Relaxed), 8);
        assert_eq!(m.bytes_up.load(Ordering::Relaxed), 317);
        assert_eq!(m.bytes_down.load(Ordering::Relaxed), 4030);
        let got: Vec<(&str, String, String)> = m
            .failures()
            .into_iter()
            .map(|f| (f.kind.name(), f.host, f.detail))
            .collect();
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(
            (got[0].0, got[0].1.as_str()),
            ("ws_closed_mid_exchange", "c:443")
        );
        assert!(got[0].2.contains("up 300 B, down 4000 B"), "{got:?}");
        assert_eq!((got[1].0, got[1].1.as_str()), ("upload_stalled", "d:443"));
        assert_eq!(
            (got[2].0, got[2].1.as_str()),
            ("gateway_unresponsive", "e:443")
        );
        assert!(got[2].2.contains("30 s"), "{got:?}");
        assert_eq!(
            (got[3].0, got[3].1.as_str()),
            ("gateway_unresponsive", "f:443")
        );
        assert_eq!((got[4].0, got[4].1.as_str()), ("ws_error", "g:443"));
    }

    #[test]
    fn direct_ends_count_and_record_what_cut_them_short() {
        use std::io::ErrorKind;
        let m = Monitor::default();
        let stall = Duration::from_secs(3);
        m.direct_ended(&PipeEnd::Closed, 10, 20, "a:443");
        m.direct_ended(&PipeEnd::Aborted, 1, 1, "b:443");
        let reset = io::Error::from(ErrorKind::ConnectionReset);
        m.direct_ended(&PipeEnd::Error(PipeSide::Client, reset), 1, 1, "c:443");
        m.direct_ended(&PipeEnd::Stalled(Direction::Up, stall), 500, 0, "d:443");
        let reset = io::Error::from(ErrorKind::ConnectionReset);
        m.direct_ended(&PipeEnd::Error(PipeSide::Target, reset), 7, 8, "e:443");
        m.direct_ended(&PipeEnd::Stalled(Direction::Down, stall), 0, 9, "f:443");
        m.direct_ended(&PipeEnd::Internal("x"), 0, 0, "g:443");
        assert_eq!(m.tunnels_served.load(Ordering::Relaxed), 7);
        assert_eq!(m.bytes_up.load(Ordering::Relaxed), 519);
        assert_eq!(m.bytes_down.load(Ordering::Relaxed), 39);
        let got: Vec<(&str, String)> = m
            .failures()
            .into_iter()
            .map(|f| (f.kind.name(), f.host))
            .collect();
        let want = [
            ("upload_stalled", "d:443"),
            ("direct_failed", "e:443"),
            ("direct_failed", "f:443"),
            ("direct_failed", "g:443"),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((k, h), (wk, wh)) in got.iter().zip(want) {
            assert_eq!((*k, h.as_str()), (wk, wh));
        }
        assert!(m.failures()[1].detail.contains("after up 7 B, down 8 B"));
    }

    #[test]
    fn head_failures_get_their_kinds() {
        let m = Monitor::default();
        let connect =
            crate::http::request_head::parse_head(b"CONNECT a..b:443 HTTP/1.1\r\n\r\n").unwrap();
        let get = crate::http::request_head::parse_head(b"GET /x HTTP/1.1\r\n\r\n").unwrap();
        m.head_failed(&HeadError::TlsHandshake, None);
        m.head_failed(&HeadError::TooLarge, None);
        m.head_failed(&HeadError::Timeout, None);
        m.head_failed(&HeadError::Malformed("x"), None);
        m.head_failed(&HeadError::Malformed("x"), Some(&get));
        m.head_failed(&HeadError::MethodNotAllowed("TRACE".into()), None);
        m.head_failed(&HeadError::Closed(None), None);
        m.head_failed(&HeadError::Malformed("bad host name"), Some(&connect));
        let kinds: Vec<&str> = m.failures().iter().map(|f| f.kind.name()).collect();
        let want = [
            "tls_to_relay",
            "header_too_long",
            "head_timeout",
            "bad_request",
            "not_connect",
            "not_connect",
            "bad_request",
        ];
        assert_eq!(kinds, want);
        assert_eq!(m.failures()[4].host, "/x");
    }

    #[test]
    fn a_tls_client_hello_is_told_apart_at_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // The start of a ClientHello record: no blank line ever comes.
        client
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .unwrap();
        let started = Instant::now();
        let got = crate::http::request_head::read_head(&server, 8192, Duration::from_secs(10));
        assert!(matches!(got, Err(HeadError::TlsHandshake)), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // An ordinary request still reads.
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client
            .write_all(b"CONNECT a.test:443 HTTP/1.1\r\n\r\n")
            .unwrap();
        let (head, _) =
            crate::http::request_head::read_head(&server, 8192, Duration::from_secs(10)).unwrap();
        assert_eq!(head.target, "a.test:443");
    }
}
