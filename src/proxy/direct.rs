//! The relay's own dials: a CONNECT the include list does not cover
//! (selective mode) is dialled by the relay itself ([`dial`]), and so is a
//! loopback target, in every mode, for a client of the relay's own uid
//! ([`dial_loopback`]); once the relay answered
//! `200 Connection Established`, the client is joined to it by a raw byte
//! [`Pipe`], without the gateway. [`route_target`] is the one decision,
//! for CONNECT and plain-HTTP requests alike, and [`dial_target`] the one
//! dial both make (plain HTTP then speaks HTTP over it, `crate::proxy::forward`).
//!
//! Loopback is known by the target's text alone ([`route::is_loopback`]):
//! `localhost` and names under it are dialled at `127.0.0.1` then `::1`
//! without a name lookup, and any other name keeps its route, so a name
//! that resolves to loopback is still refused by [`dial`]'s peer check.
//! Another uid is refused loopback even when admitted: the relay (often
//! root) must not lend its identity to this machine's local services.
//!
//! The dial refuses what [`crate::proxy::route`] refuses: by name and port before
//! any lookup, by address before connecting to it, and by the connected
//! peer's address again after connecting (so a harmless-looking name that
//! resolves to `127.0.0.1` or `169.254.169.254` never gets a byte). Every
//! step shares one deadline, the name lookup included.
//!
//! The pipe has a tunnel's guarantees: backpressure (a direction writes
//! before it reads again, so memory stays at one buffer per direction),
//! half-close passed on, either side's failure ends both, a direction that
//! cannot write for the stall bound ends it, and [`Pipe::abort`] ends it
//! from outside (relay shutdown).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::access::Owner;
use super::shared::Shared;
use crate::http::reply::{self, Status};
use crate::http::request_head::{Authority, Host};
use crate::proxy::route::{self, FailureKind, Refusal, Route};
use crate::proxy::status::{self, Monitor};
pub use crate::tunnel::pipe::{Direction, Pipe, PipeEnd, PipeOptions, PipeReport, PipeSide, pipe};

/// The direct dial's bound, name lookup included.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Name lookups (each on its own thread, since `getaddrinfo` has no
/// deadline) in flight at once; more fail at once rather than pile up.
const MAX_LOOKUPS: usize = 32;

/// Stack for a lookup thread: `getaddrinfo` needs more than a copy loop.
const LOOKUP_STACK: usize = 256 * 1024;

/// Addresses of one name tried at most.
const MAX_ADDRS: usize = 8;

static LOOKUPS: AtomicUsize = AtomicUsize::new(0);

/// Why a direct dial did not give a connection; each maps to one answer.
#[derive(Debug)]
pub enum DirectError {
    /// Refused by name, literal, port or peer address (`403`, `400` for a port).
    Refused(Refusal),
    /// Lookup and connect did not finish within the bound (`504`).
    Timeout,
    /// The name did not resolve, or the connection was refused or
    /// unreachable (`502`).
    Failed(&'static str, Option<io::Error>),
}

impl DirectError {
    /// The status the relay answers the client with.
    pub fn status(&self) -> Status {
        match self {
            DirectError::Refused(r) => r.status(),
            DirectError::Timeout => reply::GATEWAY_TIMEOUT,
            DirectError::Failed(..) => reply::BAD_GATEWAY,
        }
    }

    /// The failure kind to record.
    pub fn kind(&self) -> FailureKind {
        match self {
            DirectError::Refused(r) => r.kind,
            DirectError::Timeout => FailureKind::DirectDialTimeout,
            DirectError::Failed(..) => FailureKind::DirectDialFailed,
        }
    }
}

impl std::error::Error for DirectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DirectError::Refused(r) => Some(r),
            DirectError::Failed(_, Some(e)) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for DirectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectError::Refused(r) => r.fmt(f),
            DirectError::Timeout => f.write_str("direct dial timed out"),
            DirectError::Failed(what, None) => write!(f, "direct dial failed: {what}"),
            DirectError::Failed(what, Some(e)) => write!(f, "direct dial failed: {what}: {e}"),
        }
    }
}

/// Where a client's `target` goes, a CONNECT's or a plain-HTTP request's:
/// loopback to the relay's own dial in every mode (the gateway cannot
/// reach this machine's loopback), else through the gateway, or (selective
/// mode, a host off the include list) dialled by the relay. A host with
/// control characters is tunnelled and recorded on the status page.
pub(super) fn route_target(shared: &Shared, target: &Authority) -> Route {
    if route::is_loopback(&target.host) {
        return Route::Loopback;
    }
    let Some(list) = &shared.selective else {
        return Route::Tunnel;
    };
    let (route, note) = route::route_host(&target.host, list);
    if let Some(kind) = note {
        shared.monitor.record(
            status::Kind::Selective(kind),
            "a host with control characters goes through the gateway",
            &target.to_string(),
        );
    }
    route
}

/// The relay's own dial for a client's `target` that [`route_target`] did
/// not send through the gateway, within [`DIAL_TIMEOUT`]: [`dial`] for
/// [`Route::Direct`]; for [`Route::Loopback`], [`dial_loopback`] when
/// `owner` is the relay's own uid, else refused. A failure is recorded on
/// the status page (the caller logs it and answers with its status and
/// line).
pub fn dial_target(
    monitor: &Monitor,
    route: Route,
    owner: &Owner,
    target: &Authority,
) -> Result<TcpStream, DirectError> {
    let dialled = match route {
        Route::Loopback if owner.is_relay() => dial_loopback(target, DIAL_TIMEOUT),
        Route::Loopback => Err(DirectError::Refused(Refusal::loopback_forbidden(
            &target.host.to_string(),
        ))),
        Route::Direct | Route::Tunnel => dial(&target.host.to_string(), target.port, DIAL_TIMEOUT),
    };
    dialled.inspect_err(|e| {
        monitor.record(
            status::Kind::Selective(e.kind()),
            &e.to_string(),
            &target.to_string(),
        );
    })
}

/// Dials `host:port` directly: refusals by name first, a lookup, a connect
/// to the first address that is neither refused nor failing, and the
/// connected peer checked again. All within `timeout` (the relay uses
/// [`DIAL_TIMEOUT`]). The stream comes back blocking, without timeouts,
/// `TCP_NODELAY` set.
///
/// `host` is the host as the CONNECT line names it: a name, a dotted quad,
/// or a bracketed IPv6 literal (refused).
pub fn dial(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, DirectError> {
    route::check_direct_name(host, port.into()).map_err(DirectError::Refused)?;
    let deadline = Instant::now() + timeout;
    let addrs = resolve(host, port, deadline)?;
    let mut blocked = None;
    let mut timed_out = false;
    let mut last_error = None;
    for addr in addrs.into_iter().take(MAX_ADDRS) {
        // Never send even a SYN to a refused address.
        if let Err(r) = route::check_peer(addr.ip()) {
            blocked.get_or_insert(r);
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return checked(stream, host),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                timed_out = true;
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    if let Some(r) = blocked {
        return Err(DirectError::Refused(r.for_host(host)));
    }
    if timed_out {
        return Err(DirectError::Timeout);
    }
    Err(DirectError::Failed("could not connect", last_error))
}

/// Dials a loopback target ([`route::is_loopback`]) within `timeout`,
/// without a name lookup: a literal as it is, `localhost` and names under
/// it at `127.0.0.1`, then `[::1]`. The connected peer must be loopback.
/// Any other target goes to [`dial`], with its refusals. Only for a client
/// of the relay's own uid ([`dial_target`] decides).
pub fn dial_loopback(target: &Authority, timeout: Duration) -> Result<TcpStream, DirectError> {
    let host = target.host.to_string();
    if !route::is_loopback(&target.host) {
        return dial(&host, target.port, timeout);
    }
    route::check_port(&host, target.port.into()).map_err(DirectError::Refused)?;
    let addrs: Vec<IpAddr> = match &target.host {
        Host::Ipv4(ip) => vec![IpAddr::V4(*ip)],
        Host::Ipv6(ip) => vec![IpAddr::V6(*ip)],
        Host::Name(_) => vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
    };
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    for ip in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DirectError::Timeout);
        }
        match TcpStream::connect_timeout(&SocketAddr::new(ip, target.port), left) {
            Ok(stream) => {
                let reached = stream.peer_addr().map(|peer| peer.ip().is_loopback());
                if !matches!(reached, Ok(true)) {
                    let _ = stream.shutdown(Shutdown::Both);
                    return Err(DirectError::Failed("the peer is not loopback", None));
                }
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(DirectError::Timeout),
            Err(e) => last_error = Some(e),
        }
    }
    Err(DirectError::Failed("could not connect", last_error))
}

/// The peer check after connecting: the address the socket really reached.
fn checked(stream: TcpStream, host: &str) -> Result<TcpStream, DirectError> {
    let peer = stream
        .peer_addr()
        .map_err(|e| DirectError::Failed("connection lost at once", Some(e)))?;
    if let Err(r) = route::check_peer(peer.ip()) {
        let _ = stream.shutdown(Shutdown::Both);
        return Err(DirectError::Refused(r.for_host(host)));
    }
    // Interactive protocols (TLS handshakes, SSH) go through: no Nagle delay.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The addresses of `host`: a canonical dotted quad as it is, a name
/// through the system's resolver on a thread of its own, abandoned (left
/// to finish alone) when the deadline passes.
fn resolve(host: &str, port: u16, deadline: Instant) -> Result<Vec<SocketAddr>, DirectError> {
    let name = host.trim_end_matches('.');
    if let Some(ip) = route::canonical_ipv4(name) {
        return Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)]);
    }
    if LOOKUPS.fetch_add(1, Ordering::SeqCst) >= MAX_LOOKUPS {
        LOOKUPS.fetch_sub(1, Ordering::SeqCst);
        return Err(DirectError::Failed(
            "too many name lookups in progress",
            None,
        ));
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let name = name.to_owned();
    let spawned = thread::Builder::new()
        .name("direct-lookup".into())
        .stack_size(LOOKUP_STACK)
        .spawn(move || {
            let result = (name.as_str(), port)
                .to_socket_addrs()
                .map(|addrs| addrs.take(MAX_ADDRS).collect::<Vec<_>>());
            LOOKUPS.fetch_sub(1, Ordering::SeqCst);
            // The dialler may have given up: nobody to tell then.
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        LOOKUPS.fetch_sub(1, Ordering::SeqCst);
        return Err(DirectError::Failed("cannot start a name lookup", Some(e)));
    }
    let wait = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(wait) {
        Ok(Ok(addrs)) if addrs.is_empty() => {
            Err(DirectError::Failed("the name has no address", None))
        }
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(DirectError::Failed("name lookup failed", Some(e))),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(DirectError::Timeout),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(DirectError::Failed(
            "name lookup ended without an answer",
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn refusals_come_before_any_lookup() {
        for (host, port, kind, code) in [
            ("localhost", 443, FailureKind::DirectBlocked, 403),
            ("0x7f.1", 443, FailureKind::DirectBlocked, 403),
            ("2130706433", 80, FailureKind::DirectBlocked, 403),
            ("0177.0.0.1", 80, FailureKind::DirectBlocked, 403),
            ("[::1]", 443, FailureKind::DirectBlocked, 403),
            ("example.com", 0, FailureKind::BadConnectPort, 400),
        ] {
            let e = dial(host, port, Duration::from_secs(1)).unwrap_err();
            assert_eq!(e.kind(), kind, "{host}");
            assert_eq!(e.status().0, code, "{host}");
        }
    }

    #[test]
    fn loopback_literal_is_refused_without_connecting() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let e = dial("127.0.0.1", port, Duration::from_secs(2)).unwrap_err();
        assert_eq!(e.kind(), FailureKind::DirectPeerBlocked);
        assert_eq!(e.status(), (403, "Forbidden"));
        assert_eq!(
            e.to_string(),
            "direct connection to 127.0.0.1 refused: the address is loopback"
        );
        assert!(l.accept().is_err(), "no connection reached the listener");
    }

    fn authority(text: &str) -> Authority {
        Authority::parse(text, None).unwrap()
    }

    #[test]
    fn loopback_targets_are_dialled_without_a_lookup() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        for host in ["127.0.0.1", "localhost", "App.LOCALHOST."] {
            let s = dial_loopback(
                &authority(&format!("{host}:{port}")),
                Duration::from_secs(2),
            )
            .unwrap_or_else(|e| panic!("{host}: {e}"));
            let (accepted, _) = l.accept().unwrap();
            assert_eq!(accepted.peer_addr().unwrap(), s.local_addr().unwrap());
        }
    }

    #[test]
    fn dial_loopback_keeps_the_refusals_for_other_targets() {
        // A name that is not loopback by its text goes to `dial`.
        let e = dial_loopback(&authority("ip6-localhost:443"), Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), FailureKind::DirectBlocked);
        let port_zero = Authority {
            host: Host::Name("localhost".into()),
            port: 0,
        };
        let e = dial_loopback(&port_zero, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), FailureKind::BadConnectPort);
    }

    #[test]
    fn loopback_is_refused_for_another_uid_without_connecting() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let monitor = Monitor::default();
        let other = Owner::Uid(crate::proxy::access::relay_uid().wrapping_add(1));
        for owner in [other, Owner::Unknown] {
            let target = authority(&format!("localhost:{port}"));
            let e = dial_target(&monitor, Route::Loopback, &owner, &target).unwrap_err();
            assert_eq!(e.kind(), FailureKind::LoopbackForbidden);
            assert_eq!(e.status(), (403, "Forbidden"));
        }
        assert!(l.accept().is_err(), "no connection reached the listener");
        let own = Owner::Uid(crate::proxy::access::relay_uid());
        let target = authority(&format!("127.0.0.1:{port}"));
        assert!(dial_target(&monitor, Route::Loopback, &own, &target).is_ok());
    }

    #[test]
    fn error_answers() {
        assert_eq!(DirectError::Timeout.status(), (504, "Gateway Timeout"));
        assert_eq!(DirectError::Timeout.to_string(), "direct dial timed out");
        assert_eq!(DirectError::Timeout.kind(), FailureKind::DirectDialTimeout);
        let e = DirectError::Failed(
            "could not connect",
            Some(io::ErrorKind::ConnectionRefused.into()),
        );
        assert_eq!(e.status(), (502, "Bad Gateway"));
        assert_eq!(e.kind(), FailureKind::DirectDialFailed);
    }

    #[test]
    fn pipe_copies_both_ways_and_passes_half_close_on() {
        let (client_far, client) = pair();
        let (target, target_far) = pair();
        let p = Pipe::new(client, target, PipeOptions::default()).unwrap();
        let runner = {
            let p = Arc::clone(&p);
            thread::spawn(move || p.run())
        };
        let up: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let writer = {
            let up = up.clone();
            let mut c = client_far.try_clone().unwrap();
            thread::spawn(move || {
                c.write_all(&up).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
            })
        };
        let mut t = target_far;
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got_up = Vec::new();
        t.read_to_end(&mut got_up).unwrap();
        assert!(got_up == up, "upload arrives whole, then EOF");
        writer.join().unwrap();
        // The target answers after the client's half-close.
        t.write_all(&down).unwrap();
        t.shutdown(Shutdown::Write).unwrap();
        let mut c = client_far;
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got_down = Vec::new();
        c.read_to_end(&mut got_down).unwrap();
        assert!(got_down == down);
        let report = runner.join().unwrap();
        assert!(matches!(report.end, PipeEnd::Closed), "{}", report.end);
        assert_eq!(
            (report.up, report.down),
            (up.len() as u64, down.len() as u64)
        );
    }

    #[test]
    fn abort_ends_an_idle_pipe() {
        let (_client_far, client) = pair();
        let (target, mut target_far) = pair();
        let p = Pipe::new(client, target, PipeOptions::default()).unwrap();
        let runner = {
            let p = Arc::clone(&p);
            thread::spawn(move || p.run())
        };
        thread::sleep(Duration::from_millis(100));
        p.abort();
        let report = runner.join().unwrap();
        assert!(matches!(report.end, PipeEnd::Aborted), "{}", report.end);
        target_far
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        assert_eq!(target_far.read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn a_target_that_stops_reading_ends_the_pipe_after_the_stall_bound() {
        let (client_far, client) = pair();
        let (target, _target_far_never_reads) = pair();
        let opts = PipeOptions {
            stall: Duration::from_millis(500),
            ..PipeOptions::default()
        };
        let p = Pipe::new(client, target, opts).unwrap();
        // Only the runner holds the pipe: its end closes the sockets, which
        // fails the writer below.
        let runner = thread::spawn(move || p.run());
        // Keep sending until the pipe gives up (our writes then fail).
        let mut c = client_far;
        c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let started = Instant::now();
        while c.write_all(&chunk).is_ok() && started.elapsed() < Duration::from_secs(30) {}
        let report = runner.join().unwrap();
        assert!(
            matches!(report.end, PipeEnd::Stalled(Direction::Up, _)),
            "{}",
            report.end
        );
        assert!(report.up > 0);
    }
}
