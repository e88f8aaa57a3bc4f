//! What the gateway's policy refused, so a session can tell which hosts to
//! add to its network allowlist: a `403` answer to a CONNECT read as a
//! policy denial ([`denial_reason`]), the table of blocked hosts the status
//! page shows ([`BlockedHosts`]: per host, how often, when, which programs
//! asked, why; bounded), and a tunnel the gateway ended, sending nothing
//! back, right after the client's TLS ClientHello ([`refused_handshake`]).
//!
//! Everything kept here came from outside (the gateway's answer, a process
//! name): it is bounded and its control characters are replaced before it
//! is stored ([`crate::sys::text`]).

use std::net::TcpStream;
use std::time::SystemTime;

use super::client_process::{DEFAULT_BUDGET, LOOKUP_FAILED, lookup};
use crate::http::http1::parse_response_head;
use crate::sys::text::sanitize;
use crate::tunnel::End;

/// How many hosts the table keeps; the least recently denied goes first.
pub const MAX_BLOCKED_HOSTS: usize = 100;
/// Longest reason kept, in characters.
pub const MAX_REASON: usize = 200;
/// How many program names one host keeps (the first ones that asked).
pub const MAX_CLIENTS: usize = 16;
/// Longest host kept, in characters.
const MAX_HOST: usize = 260;
/// Longest program name kept, in characters.
const MAX_CLIENT: usize = 64;

/// The header a gateway names its reason in.
pub const DENY_REASON_HEADER: &str = "x-deny-reason";

/// Why the gateway's answer `answer` (its head and whatever of its body
/// came with it) is a policy denial: the `x-deny-reason` header's value,
/// else the body's first line when it says the host is not allowed
/// (`request blocked: no rule or allowlist entry allows host "H"`).
/// `None` for any other answer. The reason is bounded and sanitized.
pub fn denial_reason(answer: &[u8]) -> Option<String> {
    let (head, used) = parse_response_head(answer).ok().flatten()?;
    if head.status != 403 {
        return None;
    }
    if let Some(reason) = head.header(DENY_REASON_HEADER) {
        return Some(sanitize(reason.trim(), MAX_REASON));
    }
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let body = String::from_utf8_lossy(&answer[used..]);
    let mut lines = body.lines().map(str::trim).filter(|l| !l.is_empty());
    if chunked {
        lines.next(); // the first chunk's size
    }
    let first = lines.next()?;
    let lower = first.to_ascii_lowercase();
    let says_blocked = lower.contains("request blocked")
        || lower.contains("allowlist")
        || lower.contains("not allowed");
    says_blocked.then(|| sanitize(first, MAX_REASON))
}

/// Whether a tunnel's end says the gateway refused the client's TLS
/// handshake: the client's first bytes were a TLS ClientHello (`16 03`),
/// the gateway's answer was a `2xx` head with nothing after it
/// (`answer`), no byte came back since (`down`), and the gateway ended the
/// tunnel (close, FIN or an error such as a reset).
pub fn refused_handshake(first_up: &[u8], answer: &[u8], down: u64, end: &End) -> bool {
    let hello = first_up.starts_with(&[0x16, 0x03]);
    let bare_answer = matches!(
        parse_response_head(answer),
        Ok(Some((head, used))) if (200..300).contains(&head.status) && used == answer.len()
    );
    let gateway_ended = matches!(end, End::WsClosed | End::ServerFin | End::WsError(_));
    hello && bare_answer && down == 0 && gateway_ended
}

/// The name of the program at the other end of `client` (a connection to
/// the proxy), looked up now within the usual budget.
pub fn program_of(client: &TcpStream) -> String {
    match (client.peer_addr(), client.local_addr()) {
        (Ok(peer), Ok(local)) => lookup(peer, local, DEFAULT_BUDGET).name,
        _ => LOOKUP_FAILED.to_string(),
    }
}

/// One host the gateway's policy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedHost {
    pub host: String,
    pub count: u64,
    pub first_ts: SystemTime,
    pub last_ts: SystemTime,
    /// The programs that asked, in the order they first did.
    pub clients: Vec<String>,
    /// The latest denial's reason.
    pub reason: String,
}

/// The hosts the gateway's policy refused, least recently denied first,
/// at most [`MAX_BLOCKED_HOSTS`].
#[derive(Debug, Default)]
pub struct BlockedHosts {
    hosts: Vec<BlockedHost>,
}

impl BlockedHosts {
    /// Records a denial of `host` asked for by `client`; `true` when it is
    /// the host's first (the table has not seen it, or dropped it since).
    pub fn record(&mut self, host: &str, client: &str, reason: &str, now: SystemTime) -> bool {
        let host = sanitize(host, MAX_HOST);
        let client = sanitize(client, MAX_CLIENT);
        let reason = sanitize(reason, MAX_REASON);
        let (mut entry, first) = match self.hosts.iter().position(|h| h.host == host) {
            Some(i) => (self.hosts.remove(i), false),
            None => {
                let entry = BlockedHost {
                    host,
                    count: 0,
                    first_ts: now,
                    last_ts: now,
                    clients: Vec::new(),
                    reason: String::new(),
                };
                (entry, true)
            }
        };
        entry.count += 1;
        entry.last_ts = now;
        entry.reason = reason;
        let new_client = !client.is_empty() && !entry.clients.contains(&client);
        if new_client && entry.clients.len() < MAX_CLIENTS {
            entry.clients.push(client);
        }
        while self.hosts.len() >= MAX_BLOCKED_HOSTS {
            self.hosts.remove(0);
        }
        self.hosts.push(entry);
        first
    }

    /// The table, least recently denied first.
    pub fn hosts(&self) -> &[BlockedHost] {
        &self.hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::time::{Duration, UNIX_EPOCH};

    const BODY_DENIAL: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 71\r\n\r\nrequest blocked: no rule or allowlist entry allows host \"blocked.test\"\n";

    #[test]
    fn a_403_with_the_header_or_the_body_is_a_denial_and_nothing_else_is() {
        let header = b"HTTP/1.1 403 Forbidden\r\nX-Deny-Reason: not on the\t allowlist\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            denial_reason(header).as_deref(),
            Some("not on the? allowlist")
        );
        assert_eq!(
            denial_reason(BODY_DENIAL).as_deref(),
            Some("request blocked: no rule or allowlist entry allows host \"blocked.test\"")
        );
        let chunked = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n1f\r\nrequest blocked: host not allowed\r\n0\r\n\r\n";
        assert_eq!(
            denial_reason(chunked).as_deref(),
            Some("request blocked: host not allowed")
        );
        for other in [
            &b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nforbidden",
            b"HTTP/1.1 407 Proxy Authentication Required\r\nX-Deny-Reason: x\r\n\r\n",
            b"HTTP/1.1 200 Connection Established\r\n\r\n",
            b"HTTP/1.1 403 Forb",
            b"garbage",
        ] {
            assert_eq!(
                denial_reason(other),
                None,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn a_long_reason_is_cut_and_its_controls_replaced() {
        let long = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 999\r\n\r\nrequest blocked: \x1b[31m{}\n",
            "x".repeat(500)
        );
        let reason = denial_reason(long.as_bytes()).unwrap();
        assert_eq!(reason.chars().count(), MAX_REASON);
        assert!(reason.starts_with("request blocked: ?[31mxxx"), "{reason}");
        let mut table = BlockedHosts::default();
        table.record("h\r\nX", "cu\u{7}rl", &"r\n".repeat(300), UNIX_EPOCH);
        let entry = &table.hosts()[0];
        assert_eq!(entry.host, "h??X");
        assert_eq!(entry.clients, ["cu?rl"]);
        assert_eq!(entry.reason, "r?".repeat(100));
    }

    #[test]
    fn the_table_counts_per_host_and_drops_the_least_recently_denied() {
        let mut table = BlockedHosts::default();
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert!(table.record("a.test", "curl", "r1", at(1)));
        assert!(!table.record("a.test", "python3", "r2", at(2)));
        assert!(!table.record("a.test", "curl", "r3", at(3)));
        let a = &table.hosts()[0];
        assert_eq!((a.count, a.first_ts, a.last_ts), (3, at(1), at(3)));
        assert_eq!(a.clients, ["curl", "python3"]);
        assert_eq!(a.reason, "r3");
        // 100 more hosts: a.test, denied again meanwhile, stays; b0 goes.
        for i in 0..MAX_BLOCKED_HOSTS as u64 {
            table.record(&format!("b{i}.test"), "curl", "r", at(10 + i));
            if i == 50 {
                table.record("a.test", "curl", "r", at(10 + i));
            }
        }
        let hosts: Vec<&str> = table.hosts().iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts.len(), MAX_BLOCKED_HOSTS);
        assert!(hosts.contains(&"a.test"));
        assert!(!hosts.contains(&"b0.test"));
        assert_eq!(hosts[0], "b1.test");
        assert_eq!(*hosts.last().unwrap(), "b99.test");
        // A dropped host is new again.
        assert!(table.record("b0.test", "curl", "r", at(999)));
        assert!(!table.hosts().iter().any(|h| h.host == "b1.test"));
    }

    #[test]
    fn one_host_keeps_a_bounded_list_of_programs() {
        let mut table = BlockedHosts::default();
        for i in 0..40 {
            table.record("a.test", &format!("p{i}"), "r", UNIX_EPOCH);
        }
        table.record("a.test", "", "r", UNIX_EPOCH);
        let a = &table.hosts()[0];
        assert_eq!(a.count, 41);
        assert_eq!(a.clients.len(), MAX_CLIENTS);
        assert_eq!(a.clients[0], "p0");
    }

    #[test]
    fn a_gateway_ending_the_tunnel_right_after_a_client_hello_refused_the_handshake() {
        let hello = [0x16, 0x03, 0x01];
        let ok = b"HTTP/1.1 200 Connection Established\r\n\r\n";
        assert!(refused_handshake(&hello, ok, 0, &End::WsClosed));
        assert!(refused_handshake(&hello, ok, 0, &End::ServerFin));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(refused_handshake(
            &hello,
            ok,
            0,
            &End::WsError(tungstenite::Error::Io(reset))
        ));
        // Something came back, or the client ended it, or no ClientHello.
        assert!(!refused_handshake(&hello, ok, 1, &End::WsClosed));
        let mut with_data = ok.to_vec();
        with_data.push(0x16);
        assert!(!refused_handshake(&hello, &with_data, 0, &End::WsClosed));
        assert!(!refused_handshake(&hello, ok, 0, &End::SocketClosed));
        assert!(!refused_handshake(b"GET / HTTP/1.1", ok, 0, &End::WsClosed));
        assert!(!refused_handshake(&[], ok, 0, &End::WsClosed));
        let refused = b"HTTP/1.1 403 Forbidden\r\n\r\n";
        assert!(!refused_handshake(&hello, refused, 0, &End::WsClosed));
    }
}
