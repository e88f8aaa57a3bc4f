//! Routing decisions: which targets go through the gateway, which the relay
//! dials itself (loopback in every mode, selective mode's hosts off the
//! include list), and what a direct dial refuses.
//!
//! Pure functions over host text and addresses, no I/O: [`is_loopback`]
//! names the targets only this machine can reach, [`IncludeList`]
//! holds the include patterns, [`route`] decides tunnel or direct,
//! [`check_direct_name`] refuses targets by name, literal and port before
//! any lookup, and [`check_peer`] refuses addresses a direct connection must
//! never reach (loopback, link-local, cloud metadata, ...). The dial itself
//! is in [`crate::proxy::direct`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::http::host::is_dns_name;
use crate::http::reply::Status;
use crate::http::request_head::Host;
use crate::sys::text::sanitize;

/// The answer for a refused direct dial.
pub const FORBIDDEN: Status = (403, "Forbidden");

/// Longest host text a [`Refusal`] keeps for its message.
const HOST_SHOWN_MAX: usize = 255;

/// Selective mode's failure kinds, as the failure history names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// A CONNECT host with control characters (tunnelled, recorded).
    SelectiveInvalidHost,
    /// A direct dial refused by the target's name or literal form.
    DirectBlocked,
    /// A direct dial refused by the address it resolved or connected to.
    DirectPeerBlocked,
    /// A port outside 1..=65535.
    BadConnectPort,
    /// The direct dial did not complete within its bound.
    DirectDialTimeout,
    /// The direct dial failed (refused, unreachable, no address).
    DirectDialFailed,
    /// A loopback target asked for by a uid other than the relay's own.
    LoopbackForbidden,
}

impl FailureKind {
    /// The kind's name in the status page's `recentRelayFailures`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::SelectiveInvalidHost => "selective_invalid_host",
            FailureKind::DirectBlocked => "direct_blocked",
            FailureKind::DirectPeerBlocked => "direct_peer_blocked",
            FailureKind::BadConnectPort => "bad_connect_port",
            FailureKind::DirectDialTimeout => "direct_dial_timeout",
            FailureKind::DirectDialFailed => "direct_dial_failed",
            FailureKind::LoopbackForbidden => "loopback_forbidden",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a direct dial is refused: the kind, the target (control characters
/// replaced, length capped) and a fixed one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: FailureKind,
    /// The host as the client named it, safe to log and answer with.
    pub host: String,
    pub reason: &'static str,
    /// For a peer refusal: the address that was refused.
    pub peer: Option<IpAddr>,
}

impl Refusal {
    fn new(kind: FailureKind, host: &str, reason: &'static str) -> Refusal {
        Refusal {
            kind,
            host: shown_host(host),
            reason,
            peer: None,
        }
    }

    /// A loopback target asked for by another uid than the relay's own:
    /// the relay must not lend its identity to this machine's services.
    pub fn loopback_forbidden(host: &str) -> Refusal {
        Refusal::new(
            FailureKind::LoopbackForbidden,
            host,
            "loopback is served only to processes of the relay's own uid",
        )
    }

    /// A peer refusal, named after the host that led to it.
    pub fn for_host(mut self, host: &str) -> Refusal {
        self.host = shown_host(host);
        self
    }

    /// `400` for a bad port, `403` for every other refusal.
    pub fn status(&self) -> Status {
        match self.kind {
            FailureKind::BadConnectPort => crate::http::reply::BAD_REQUEST,
            _ => FORBIDDEN,
        }
    }
}

impl std::error::Error for Refusal {}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer {
            Some(peer) if peer.to_string() != self.host => write!(
                f,
                "direct connection to {} refused: {} ({peer})",
                self.host, self.reason
            ),
            _ => write!(
                f,
                "direct connection to {} refused: {}",
                self.host, self.reason
            ),
        }
    }
}

/// Host text fit for a log line or an answer: control characters become
/// `?`, and it is cut at a bound.
fn shown_host(host: &str) -> String {
    sanitize(host, HOST_SHOWN_MAX)
}

/// One label of a pattern: `*` inside a label stands for one or more
/// characters other than `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelGlob(String);

impl LabelGlob {
    fn matches(&self, label: &str) -> bool {
        if !self.0.contains('*') {
            return self.0 == label;
        }
        glob_match(self.0.as_bytes(), label.as_bytes())
    }
}

/// `*` matches one or more bytes (the label never holds a `.`).
fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    match pat.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (1..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

/// One include pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: every host.
    All,
    /// No `*`: this host exactly.
    Exact(String),
    /// Labels, each matching exactly one host label; `under`: the pattern
    /// began with `*.`, so one or more labels come before them.
    Labels { under: bool, labels: Vec<LabelGlob> },
}

impl Pattern {
    fn parse(text: &str) -> Option<Pattern> {
        let text = normalise(text);
        if text.is_empty() {
            return None;
        }
        if text == "*" {
            return Some(Pattern::All);
        }
        if !text.contains('*') {
            return Some(Pattern::Exact(text));
        }
        let (under, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let labels: Vec<LabelGlob> = rest.split('.').map(|l| LabelGlob(l.to_owned())).collect();
        if labels.iter().any(|l| l.0.is_empty()) {
            // `a..b` or `*.` matches nothing sensible: drop the pattern.
            return None;
        }
        Some(Pattern::Labels { under, labels })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Exact(name) => name == host,
            Pattern::Labels { under, labels } => {
                let host_labels: Vec<&str> = host.split('.').collect();
                let fits = if *under {
                    host_labels.len() > labels.len()
                } else {
                    host_labels.len() == labels.len()
                };
                fits && host_labels[host_labels.len() - labels.len()..]
                    .iter()
                    .zip(labels)
                    .all(|(h, p)| p.matches(h))
            }
        }
    }
}

/// Lower case, trailing dots dropped, surrounding blanks trimmed.
fn normalise(text: &str) -> String {
    text.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `CCR_AGENT_PROXY_INCLUDE_HOSTS`: the hosts selective mode sends through
/// the gateway.
///
/// ```
/// use ccr_relay::proxy::route::IncludeList;
/// let list = IncludeList::parse("API.Example.com., *.corp.test, svc.*.internal");
/// assert!(list.matches("api.example.com"));
/// assert!(list.matches("a.b.corp.test") && !list.matches("corp.test"));
/// assert!(list.matches("svc.eu.internal") && !list.matches("svc.eu.x.internal"));
/// assert!(!list.matches("example.com"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncludeList {
    patterns: Vec<Pattern>,
}

impl IncludeList {
    /// Comma-separated patterns; empty entries are dropped.
    pub fn parse(text: &str) -> IncludeList {
        IncludeList {
            patterns: text.split(',').filter_map(Pattern::parse).collect(),
        }
    }

    /// No usable pattern: selective mode falls back to tunnelling everything.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// How many patterns were kept.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether `host` (any case, trailing dots allowed) matches a pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = normalise(host);
        self.patterns.iter().any(|p| p.matches(&host))
    }
}

/// Where a CONNECT or a plain-HTTP request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through the gateway, as in every other mode.
    Tunnel,
    /// Dialled by the relay itself ([`crate::proxy::direct`]): selective
    /// mode, a host off the include list.
    Direct,
    /// This machine's loopback, which the gateway cannot reach: dialled by
    /// the relay itself for a client of its own uid, refused for any other
    /// ([`is_loopback`]).
    Loopback,
}

/// Whether `host` names this machine's loopback: `localhost`, a name under
/// `.localhost` (any case, trailing dot allowed), a canonical IPv4 literal
/// in `127.0.0.0/8`, or `[::1]`. Decided by the text alone, never by what
/// a name resolves to: another name that resolves to `127.0.0.1` (DNS
/// rebinding, an `/etc/hosts` entry) is not loopback here, so it keeps its
/// route and, when dialled directly, the peer refusal.
///
/// ```
/// use ccr_relay::http::request_head::Host;
/// use ccr_relay::proxy::route::is_loopback;
/// assert!(is_loopback(&Host::Name("app.localhost.".into())));
/// assert!(!is_loopback(&Host::Name("localhost.example.com".into())));
/// ```
pub fn is_loopback(host: &Host) -> bool {
    match host {
        Host::Name(name) => {
            let name = normalise(name);
            name == "localhost" || name.ends_with(".localhost")
        }
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => *ip == Ipv6Addr::LOCALHOST,
    }
}

/// Decides where a CONNECT to `host` goes, and the failure to record, if
/// any. `host` is the host as the client sent it (a bracketed IPv6
/// literal, a dotted quad or a name).
///
/// An empty list tunnels everything (the fall-back for a selective mode
/// without usable patterns), so a direct dial never happens by mistake.
pub fn route(host: &str, list: &IncludeList) -> (Route, Option<FailureKind>) {
    if host.chars().any(char::is_control) {
        return (Route::Tunnel, Some(FailureKind::SelectiveInvalidHost));
    }
    if list.is_empty() {
        return (Route::Tunnel, None);
    }
    let name = normalise(host);
    if let Some(ip) = canonical_ipv4(&name)
        && is_public_ipv4(ip)
    {
        return (Route::Tunnel, None);
    }
    if list.matches(&name) {
        (Route::Tunnel, None)
    } else {
        (Route::Direct, None)
    }
}

/// [`route`] for a parsed host.
pub fn route_host(host: &Host, list: &IncludeList) -> (Route, Option<FailureKind>) {
    route(&host.to_string(), list)
}

/// Refuses a port outside 1 to 65535 (`400`), for any dial of the relay's
/// own, loopback included.
pub fn check_port(host: &str, port: u32) -> Result<(), Refusal> {
    if (1..=65535).contains(&port) {
        return Ok(());
    }
    Err(Refusal::new(
        FailureKind::BadConnectPort,
        host,
        "the port must be 1 to 65535",
    ))
}

/// Outside `0/8`, `10/8`, `100.64/10`, `127/8`, `169.254/16`, `172.16/12`,
/// `192.168/16`: such a literal is tunnelled, never dialled directly.
fn is_public_ipv4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(a == 0
        || a == 10
        || (a == 100 && (64..128).contains(&b))
        || a == 127
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168))
}

/// A dotted quad in its one canonical form: four decimal parts, 0 to 255,
/// no leading zeros, no signs, nothing else.
pub fn canonical_ipv4(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        let canonical = !part.is_empty()
            && part.len() <= 3
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part == "0" || !part.starts_with('0'));
        if !canonical {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// Whether a name's last label is a number (decimal, octal or `0x` hex):
/// what URL parsers and `inet_aton` take for an IPv4 address (`0x7f.1`,
/// `2130706433`, `127.1`), since no real top-level domain is numeric.
fn looks_numeric(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    let digits = match last.strip_prefix("0x") {
        Some(hex) => return hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => last,
    };
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Names that always mean this machine or a cloud's metadata service.
const BLOCKED_NAMES: &[&str] = &[
    "localhost",
    "ip6-localhost",
    "ip6-loopback",
    "metadata.google.internal",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Refuses a direct dial by its target alone, before any lookup: a port
/// outside 1..=65535 (`400`), names of this machine or of metadata
/// services, IPv6 literals, and IPv4 in any form but the canonical dotted
/// quad (`403`). Canonical IPv4 literals pass here; [`check_peer`] judges
/// the address.
pub fn check_direct_name(host: &str, port: u32) -> Result<(), Refusal> {
    check_port(host, port)?;
    let blocked = |reason| Err(Refusal::new(FailureKind::DirectBlocked, host, reason));
    if host.starts_with('[') || host.contains(':') {
        return blocked("IPv6 literals are not dialled directly");
    }
    let name = normalise(host);
    // Trailing dots are gone (`normalise`); IPv4 literals pass as names
    // here and are judged below.
    if !is_dns_name(&name) {
        return blocked("not a valid host name");
    }
    if BLOCKED_NAMES.contains(&name.as_str()) || name.ends_with(".localhost") {
        return blocked("the name belongs to this machine or a metadata service");
    }
    if looks_numeric(&name) && canonical_ipv4(&name).is_none() {
        return blocked("IPv4 addresses must be written as a canonical dotted quad");
    }
    Ok(())
}

/// Cloud metadata services reachable at ordinary-looking addresses.
const METADATA_V4: &[Ipv4Addr] = &[
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
    Ipv4Addr::new(192, 0, 0, 192),
];

/// Refuses an address a direct connection must not reach: unspecified,
/// loopback, link-local, unique-local, cloud metadata, IPv6 outside
/// `2000::/3`. IPv4 inside IPv6 (mapped, compatible, `64:ff9b::/96`,
/// 6to4, Teredo) is judged as the IPv4 address.
pub fn check_peer(addr: IpAddr) -> Result<(), Refusal> {
    let reason = match addr {
        IpAddr::V4(v4) => ipv4_refusal(v4),
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => ipv4_refusal(v4),
            None => ipv6_refusal(v6),
        },
    };
    match reason {
        None => Ok(()),
        Some(reason) => {
            let mut refusal =
                Refusal::new(FailureKind::DirectPeerBlocked, &addr.to_string(), reason);
            refusal.peer = Some(addr);
            Err(refusal)
        }
    }
}

fn ipv4_refusal(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if a == 0 {
        Some("the address is unspecified")
    } else if a == 127 {
        Some("the address is loopback")
    } else if a == 169 && b == 254 {
        Some("the address is link-local")
    } else if METADATA_V4.contains(&ip) {
        Some("the address is a cloud metadata service")
    } else {
        None
    }
}

fn ipv6_refusal(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        Some("the address is unspecified")
    } else if ip.is_loopback() {
        Some("the address is loopback")
    } else if first & 0xffc0 == 0xfe80 {
        Some("the address is link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("the address is unique-local")
    } else if first & 0xe000 != 0x2000 {
        Some("the address is outside global unicast (2000::/3)")
    } else {
        None
    }
}

/// The IPv4 address inside a mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`, but not `::` or `::1`), NAT64 (`64:ff9b::/96`), 6to4
/// (`2002:AABB:CCDD::/48`) or Teredo (`2001:0::/32`, the client's address
/// in the last 32 bits, inverted) address: each can carry packets to that
/// IPv4 address, so it is judged as that address.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    let low = v4(s[6], s[7]);
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        return Some(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(v4(s[1], s[2]));
    }
    if s[..2] == [0x2001, 0] {
        return Some(Ipv4Addr::from(u32::from(low) ^ 0xffff_ffff));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> IncludeList {
        IncludeList::parse(text)
    }

    #[test]
    fn star_matches_everything() {
        let l = list("*");
        assert!(l.matches("example.com") && l.matches("a") && l.matches("10.0.0.1"));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn exact_patterns_are_case_and_trailing_dot_insensitive() {
        let l = list(" Example.COM.. ");
        assert!(l.matches("example.com"));
        assert!(l.matches("EXAMPLE.com."));
        assert!(!l.matches("www.example.com"));
        assert!(!l.matches("example.co"));
        assert!(!l.matches("xexample.com"));
    }

    #[test]
    fn leading_star_matches_names_under_but_not_the_domain() {
        let l = list("*.example.com");
        assert!(l.matches("a.example.com"));
        assert!(l.matches("a.b.c.example.com"));
        assert!(!l.matches("example.com"));
        assert!(!l.matches("badexample.com"));
        assert!(!l.matches("example.com.evil"));
    }

    #[test]
    fn other_stars_stand_for_exactly_one_label() {
        let l = list("api.*.example.com");
        assert!(l.matches("api.eu.example.com"));
        assert!(!l.matches("api.example.com"));
        assert!(!l.matches("api.a.b.example.com"));
        let l = list("example.*");
        assert!(l.matches("example.org"));
        assert!(!l.matches("example.co.uk"));
        assert!(!l.matches("example"));
        let l = list("web*.test");
        assert!(l.matches("web1.test"));
        assert!(
            !l.matches("web.test"),
            "* stands for at least one character"
        );
        assert!(!l.matches("web1.x.test"));
    }

    #[test]
    fn empty_and_broken_entries_are_dropped() {
        assert!(list("").is_empty());
        assert!(list(" , ,,.").is_empty());
        assert!(list("a..*").is_empty());
        let l = list(",a.test,,b.test,");
        assert_eq!(l.len(), 2);
        assert!(l.matches("a.test") && l.matches("b.test"));
    }

    #[test]
    fn routing_follows_the_list() {
        let l = list("*.anthropic.com,github.com");
        assert_eq!(route("api.anthropic.com", &l), (Route::Tunnel, None));
        assert_eq!(route("GitHub.com.", &l), (Route::Tunnel, None));
        assert_eq!(route("example.org", &l), (Route::Direct, None));
        assert_eq!(route("anthropic.com", &l), (Route::Direct, None));
        assert_eq!(
            route_host(&Host::Name("github.com".into()), &l),
            (Route::Tunnel, None)
        );
    }

    #[test]
    fn control_characters_are_tunnelled_and_recorded() {
        let l = list("a.test");
        for host in ["evil\r\n.test", "x\0", "\u{7f}y", "tab\there"] {
            assert_eq!(
                route(host, &l),
                (Route::Tunnel, Some(FailureKind::SelectiveInvalidHost)),
                "{host:?}"
            );
        }
    }

    #[test]
    fn public_ipv4_literals_are_tunnelled() {
        let l = list("a.test");
        for host in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "169.253.0.1",
            "11.0.0.1",
        ] {
            assert_eq!(route(host, &l), (Route::Tunnel, None), "{host}");
        }
        assert_eq!(
            route_host(&Host::Ipv4(Ipv4Addr::new(9, 9, 9, 9)), &l),
            (Route::Tunnel, None)
        );
    }

    #[test]
    fn private_and_special_ipv4_literals_go_direct() {
        let l = list("a.test");
        for host in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
        ] {
            assert_eq!(route(host, &l), (Route::Direct, None), "{host}");
        }
    }

    #[test]
    fn non_canonical_ipv4_is_not_taken_for_public() {
        // `0x08.8.8.8` is not a canonical literal, so it is not tunnelled
        // as public; the direct path then refuses it by name.
        let l = list("a.test");
        for host in ["0x8.8.8.8", "010.8.8.8", "134744072", "8.8.2056"] {
            assert_eq!(route(host, &l), (Route::Direct, None), "{host}");
            assert_eq!(
                check_direct_name(host, 443).map_err(|r| r.kind),
                Err(FailureKind::DirectBlocked),
                "{host}"
            );
        }
    }

    #[test]
    fn an_empty_list_tunnels_everything() {
        let l = list("");
        assert_eq!(route("example.org", &l), (Route::Tunnel, None));
        assert_eq!(route("10.0.0.1", &l), (Route::Tunnel, None));
    }

    #[test]
    fn ipv6_literals_route_by_list_and_are_refused_direct() {
        let l = list("a.test");
        assert_eq!(
            route_host(&Host::Ipv6(Ipv6Addr::LOCALHOST), &l),
            (Route::Direct, None)
        );
        for host in ["[::1]", "[2001:db8::1]", "::1", "[::ffff:10.0.0.1]"] {
            let r = check_direct_name(host, 443).unwrap_err();
            assert_eq!(r.kind, FailureKind::DirectBlocked, "{host}");
            assert_eq!(r.status(), (403, "Forbidden"));
        }
    }

    #[test]
    fn canonical_ipv4_parsing() {
        assert_eq!(
            canonical_ipv4("10.77.0.1"),
            Some(Ipv4Addr::new(10, 77, 0, 1))
        );
        assert_eq!(canonical_ipv4("0.0.0.0"), Some(Ipv4Addr::UNSPECIFIED));
        assert_eq!(canonical_ipv4("255.255.255.255"), Some(Ipv4Addr::BROADCAST));
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.256",
            "1.2.3.-4",
            "1.2.3.+4",
            "0x1.2.3.4",
            "1..3.4",
            "1.2.3.4.",
            " 1.2.3.4",
            "1.2.3.0004",
        ] {
            assert_eq!(canonical_ipv4(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn blocked_names_are_refused() {
        for host in [
            "localhost",
            "LOCALHOST.",
            "foo.localhost",
            "a.b.localhost",
            "ip6-localhost",
            "ip6-loopback",
            "metadata.google.internal",
            "Metadata.Google.Internal.",
            "instance-data",
            "instance-data.ec2.internal",
        ] {
            let r = check_direct_name(host, 443).unwrap_err();
            assert_eq!(r.kind, FailureKind::DirectBlocked, "{host}");
            assert_eq!(r.status(), FORBIDDEN);
        }
        for host in [
            "localhost.example.com",
            "notlocalhost",
            "metadata.google.internal.example",
            "instance-data2",
            "example.com",
            "10.77.0.1",
            "127.0.0.1",
            "169.254.169.254",
        ] {
            assert_eq!(check_direct_name(host, 443), Ok(()), "{host}");
        }
    }

    #[test]
    fn non_canonical_ipv4_forms_are_refused() {
        for host in [
            "0x7f.1",
            "0x7f000001",
            "0X7F.0.0.1",
            "0177.0.0.1",
            "0177.1",
            "127.000.000.001",
            "2130706433",
            "127.1",
            "127.0.1",
            "10.1",
            "0",
            "1.2.3.4.5",
            "999.1.1.1",
            "example.0x10",
            "example.123",
        ] {
            let r = check_direct_name(host, 443).unwrap_err();
            assert_eq!(r.kind, FailureKind::DirectBlocked, "{host}");
            assert!(r.reason.contains("canonical"), "{host}: {}", r.reason);
        }
        // A numeric label elsewhere is an ordinary name.
        assert_eq!(check_direct_name("123.example.com", 443), Ok(()));
        assert_eq!(check_direct_name("0x7f.example.com", 443), Ok(()));
    }

    #[test]
    fn invalid_names_are_refused() {
        for host in ["", ".", "a b", "a..b", "évil.test", "a/b", "x\r\ny"] {
            let r = check_direct_name(host, 443).unwrap_err();
            assert_eq!(r.kind, FailureKind::DirectBlocked, "{host:?}");
            assert!(!r.to_string().contains('\r') && !r.to_string().contains('\n'));
        }
    }

    #[test]
    fn names_follow_the_dns_rule() {
        // A label may neither begin nor end with `-` (the old rule took both).
        for host in [
            "-a.example.com",
            "a.-example.com",
            "a-.example.com",
            "a.example-",
        ] {
            let r = check_direct_name(host, 443).unwrap_err();
            assert_eq!(r.kind, FailureKind::DirectBlocked, "{host:?}");
            assert_eq!(r.reason, "not a valid host name", "{host:?}");
        }
        let label63 = "a".repeat(63);
        assert_eq!(check_direct_name(&format!("{label63}.test"), 443), Ok(()));
        assert!(check_direct_name(&format!("{label63}a.test"), 443).is_err());
        for host in ["_svc.a-b.example.com", "Example.COM.", "a.example.com.."] {
            assert_eq!(check_direct_name(host, 443), Ok(()), "{host:?}");
        }
    }

    #[test]
    fn ports_must_be_in_range() {
        for port in [0, 65536, 70000, u32::MAX] {
            let r = check_direct_name("example.com", port).unwrap_err();
            assert_eq!(r.kind, FailureKind::BadConnectPort, "{port}");
            assert_eq!(r.status(), (400, "Bad Request"));
        }
        assert_eq!(check_direct_name("example.com", 1), Ok(()));
        assert_eq!(check_direct_name("example.com", 65535), Ok(()));
    }

    fn peer_kind(text: &str) -> Result<(), FailureKind> {
        let ip: IpAddr = text.parse().unwrap();
        check_peer(ip).map_err(|r| r.kind)
    }

    #[test]
    fn refused_ipv4_peers() {
        for ip in [
            "0.0.0.0",
            "0.255.1.2",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "169.254.0.1",
            "100.100.100.200",
            "168.63.129.16",
            "192.0.0.192",
        ] {
            assert_eq!(peer_kind(ip), Err(FailureKind::DirectPeerBlocked), "{ip}");
        }
    }

    #[test]
    fn allowed_ipv4_peers() {
        for ip in [
            "10.77.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "100.100.100.201",
            "168.63.129.17",
            "192.0.0.193",
            "8.8.8.8",
            "1.0.0.1",
            "128.0.0.1",
        ] {
            assert_eq!(peer_kind(ip), Ok(()), "{ip}");
        }
    }

    #[test]
    fn refused_ipv6_peers() {
        for ip in [
            "::",
            "::1",
            "fe80::1",
            "febf:ffff::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "100::1",
            "::2:0:0:0:1",
            "4000::1",
            "1fff:ffff::1",
        ] {
            assert_eq!(peer_kind(ip), Err(FailureKind::DirectPeerBlocked), "{ip}");
        }
    }

    #[test]
    fn allowed_ipv6_peers() {
        for ip in ["2001:db8::1", "2606:4700::1111", "3fff:ffff::1"] {
            assert_eq!(peer_kind(ip), Ok(()), "{ip}");
        }
    }

    #[test]
    fn embedded_ipv4_is_judged_as_ipv4() {
        // Mapped.
        for ip in [
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::ffff:100.100.100.200",
        ] {
            assert_eq!(peer_kind(ip), Err(FailureKind::DirectPeerBlocked), "{ip}");
        }
        assert_eq!(peer_kind("::ffff:8.8.8.8"), Ok(()));
        assert_eq!(peer_kind("::ffff:10.0.0.1"), Ok(()));
        // Compatible.
        for ip in ["::127.0.0.1", "::169.254.169.254", "::168.63.129.16"] {
            assert_eq!(peer_kind(ip), Err(FailureKind::DirectPeerBlocked), "{ip}");
        }
        assert_eq!(peer_kind("::8.8.8.8"), Ok(()));
        // NAT64.
        for ip in [
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::192.0.0.192",
        ] {
            assert_eq!(peer_kind(ip), Err(FailureKind::DirectPeerBlocked), "{ip}");
        }
        assert_eq!(peer_kind("64:ff9b::8.8.8.8"), Ok(()));
        // Not NAT64: another prefix is judged as IPv6 (outside 2000::/3).
        assert_eq!(
            peer_kind("64:ff9c::8.8.8.8"),
            Err(FailureKind::DirectPeerBlocked)
        );
    }

    #[test]
    fn ipv4_in_6to4_and_teredo_is_judged_as_ipv4() {
        // 6to4: 2002:AABB:CCDD::/48 carries a.b.c.d in bits 16 to 47.
        for ip in [
            "2002:7f00:1::",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2002:a9fe:a9fe:1234:5678:9abc:def0:1",
            "2002:0:1::1",
            "2002:6464:64c8::",
            "2002:a83f:8110::1",
        ] {
            assert_eq!(peer_kind(ip), Err(FailureKind::DirectPeerBlocked), "{ip}");
        }
        assert_eq!(peer_kind("2002:808:808::1"), Ok(()));
        assert_eq!(peer_kind("2002:a00:1::1"), Ok(()));
        // Teredo: 2001:0::/32, the client's IPv4 in the last 32 bits, each
        // bit inverted (the server's IPv4 in bits 32 to 63 is not dialled).
        for ip in [
            // 127.0.0.1 is 7f00:0001, inverted 80ff:fffe.
            "2001:0:4136:e378:8000:f227:80ff:fffe",
            // 169.254.169.254 inverted: 5601:5601.
            "2001:0:4136:e378:8000:f227:5601:5601",
            // 0.0.0.0 inverted.
            "2001::ffff:ffff",
            // 168.63.129.16 inverted: 57c0:7eef.
            "2001:0:808:808::57c0:7eef",
        ] {
            assert_eq!(peer_kind(ip), Err(FailureKind::DirectPeerBlocked), "{ip}");
        }
        // 8.8.8.8 inverted: f7f7:f7f7.
        assert_eq!(peer_kind("2001:0:4136:e378:8000:f227:f7f7:f7f7"), Ok(()));
        // 2001:db8::/32 is not Teredo: judged as IPv6.
        assert_eq!(peer_kind("2001:db8::80ff:fffe"), Ok(()));
    }

    #[test]
    fn refusals_show_only_host_and_reason() {
        let r = check_direct_name("localhost", 443).unwrap_err();
        assert_eq!(
            r.to_string(),
            "direct connection to localhost refused: the name belongs to this machine or a metadata service"
        );
        let r = check_peer("127.0.0.1".parse().unwrap())
            .unwrap_err()
            .for_host("evil.test");
        assert_eq!(
            r.to_string(),
            "direct connection to evil.test refused: the address is loopback (127.0.0.1)"
        );
        let long = "a".repeat(5000);
        let r = check_direct_name(&long, 443).unwrap_err();
        assert!(r.to_string().len() < 400);
    }

    #[test]
    fn loopback_is_known_by_its_text_alone() {
        for host in [
            Host::Name("localhost".into()),
            Host::Name("LocalHost.".into()),
            Host::Name("app.localhost".into()),
            Host::Name("a.b.localhost.".into()),
            Host::Ipv4(Ipv4Addr::LOCALHOST),
            Host::Ipv4(Ipv4Addr::new(127, 1, 2, 3)),
            Host::Ipv6(Ipv6Addr::LOCALHOST),
        ] {
            assert!(is_loopback(&host), "{host}");
        }
        for host in [
            // Names that merely resolve to loopback stay what they are.
            Host::Name("sneaky.test".into()),
            Host::Name("localhost.example.com".into()),
            Host::Name("notlocalhost".into()),
            Host::Name("ip6-localhost".into()),
            // Non-canonical forms are names, refused by the direct path.
            Host::Name("127.1".into()),
            Host::Name("0x7f.1".into()),
            Host::Ipv4(Ipv4Addr::new(128, 0, 0, 1)),
            Host::Ipv4(Ipv4Addr::UNSPECIFIED),
            Host::Ipv6(Ipv6Addr::UNSPECIFIED),
            Host::Ipv6("::ffff:127.0.0.1".parse().unwrap()),
        ] {
            assert!(!is_loopback(&host), "{host}");
        }
    }

    #[test]
    fn loopback_refusal_names_the_rule() {
        let r = Refusal::loopback_forbidden("localhost");
        assert_eq!(r.kind, FailureKind::LoopbackForbidden);
        assert_eq!(r.status(), FORBIDDEN);
        assert_eq!(
            r.to_string(),
            "direct connection to localhost refused: loopback is served only to processes of the relay's own uid"
        );
    }

    #[test]
    fn failure_kind_names() {
        let all = [
            (FailureKind::SelectiveInvalidHost, "selective_invalid_host"),
            (FailureKind::DirectBlocked, "direct_blocked"),
            (FailureKind::DirectPeerBlocked, "direct_peer_blocked"),
            (FailureKind::BadConnectPort, "bad_connect_port"),
            (FailureKind::DirectDialTimeout, "direct_dial_timeout"),
            (FailureKind::DirectDialFailed, "direct_dial_failed"),
            (FailureKind::LoopbackForbidden, "loopback_forbidden"),
        ];
        for (kind, name) in all {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
        }
    }
}
