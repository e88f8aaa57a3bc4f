//! One client connection, start to end, read in one screen ([`handle`]):
//! who the client is (before anything it sends is read), its request head,
//! where the request goes (the status page, plain HTTP, the direct path or
//! a tunnel through the gateway), and the log line. Each step is a named
//! function; a step that ends the connection has answered the client itself.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Instant;

use log::{debug, info, warn};

use super::access::{Access, Decision, Owner};
use super::client_process;
use super::direct::{self, Pipe, PipeOptions};
use super::forward;
use super::policy;
use super::route::Route;
use super::shared::{EVICTED, Shared, track_pending};
use super::status::{self, Rejection};
use crate::gateway::Generation;
use crate::http::reply;
use crate::http::request_head::{Authority, ProxyRequest, RequestHead, read_head};
use crate::sys::lock::lock;
use crate::sys::socket::{self, Mode};
use crate::tunnel::dial::{self, Opened};
use crate::tunnel::{PumpOptions, Tunnel, TunnelReport};

/// One client, start to end.
pub(super) fn handle(shared: &Shared, client: TcpStream, peer: SocketAddr, conn: u64) {
    // Only the session's own processes: decided from the addresses accept()
    // gave, before a byte of the request is read or a pending-head slot is
    // taken, so another uid can neither reach the gateway nor evict the
    // session's clients.
    let owner = match admit(shared, &client, peer) {
        Ok(owner) => owner,
        Err(refusal) => return refuse(shared, &client, peer, &refusal),
    };
    let Some((head, leftover)) = read_request(shared, &client, peer, conn) else {
        return;
    };
    if status::is_status_request(&head) {
        return status::serve(shared, &client, &head);
    }
    let target = match ProxyRequest::from_head(&head) {
        Ok(ProxyRequest::Connect(target)) => target,
        Ok(ProxyRequest::Forward { .. }) => {
            return forward::serve(shared, &client, &owner, head, leftover);
        }
        Err(e) => {
            debug!("client {peer}: {e}");
            shared.monitor.head_failed(&e, Some(&head));
            if let Some(status) = e.status() {
                reply::answer(&client, status, &e.to_string());
            }
            return;
        }
    };
    match direct::route_target(shared, &target) {
        Route::Tunnel => serve_tunnel(shared, client, peer, &target, &leftover),
        route => serve_direct(shared, client, (route, &owner), &target, &leftover),
    }
}

/// Why a connection is not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// Its socket belongs to a uid the access rule does not allow.
    OtherUid(u32),
    /// Its owner could not be established: refused, never waved through.
    OwnerUnknown(String),
}

impl Refusal {
    /// The answer's text (also what the status page records).
    fn problem(&self) -> String {
        match self {
            Refusal::OtherUid(uid) => format!(
                "the proxy serves only the session's own processes; uid {uid} is not allowed (see --allow-uid)"
            ),
            Refusal::OwnerUnknown(why) => format!(
                "the proxy serves only the session's own processes; this connection's owner cannot be found ({why})"
            ),
        }
    }
}

/// Decides whether the connection from `peer` may use the proxy, and who
/// owns it (what the loopback route asks later). The local
/// end is the listener's own port on the address the client reached (the
/// accepted socket's, when the listener is bound to every address): both
/// come from accept() and the listener, never from a later look at a socket
/// the client may already have reset.
fn admit(shared: &Shared, client: &TcpStream, peer: SocketAddr) -> Result<Owner, Refusal> {
    let local = match local_end(&shared.listener, client) {
        Ok(local) => local,
        // Admitted anyway, but never taken for the relay's own uid.
        Err(_) if shared.access == Access::Anyone => return Ok(Owner::Unknown),
        Err(e) => {
            return Err(Refusal::OwnerUnknown(format!(
                "the connection's local address: {e}"
            )));
        }
    };
    match shared.access.decide(peer, local) {
        Decision::Allowed(owner) => Ok(owner),
        Decision::Refused { uid } => Err(Refusal::OtherUid(uid)),
        Decision::Unknown(why) => Err(Refusal::OwnerUnknown(why)),
    }
}

/// The address and port a client reached: the listener's, or, when it is
/// bound to every address, the accepted socket's address on the listener's
/// port.
fn local_end(listener: &TcpListener, client: &TcpStream) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    let mut local = client.local_addr()?;
    local.set_port(bound.port());
    Ok(local)
}

/// Answers a refused client `403` without reading its request (what it
/// sent is drained unread, within the answer's short bounds; a client
/// already gone is just closed), and records it.
fn refuse(shared: &Shared, client: &TcpStream, peer: SocketAddr, refusal: &Refusal) {
    let problem = refusal.problem();
    match refusal {
        Refusal::OtherUid(uid) => {
            // Named while the client is still there to be found.
            let name = match local_end(&shared.listener, client) {
                Ok(local) => {
                    client_process::lookup(peer, local, client_process::DEFAULT_BUDGET).name
                }
                Err(_) => "<gone>".to_string(),
            };
            warn!("client {peer} refused: uid {uid} ({name}) may not use the proxy");
        }
        Refusal::OwnerUnknown(why) => {
            warn!("client {peer} refused: its owner cannot be found ({why})");
        }
    }
    reply::answer(client, reply::FORBIDDEN, &problem);
    shared
        .monitor
        .record(status::Kind::ClientRefused, &problem, &peer.to_string());
}

/// Reads the request head (and whatever came with it), holding a
/// pending-head slot meanwhile; `None` when the connection was answered
/// instead (evicted for a newer one, a head too slow, too long or
/// malformed) or is gone.
fn read_request(
    shared: &Shared,
    client: &TcpStream,
    peer: SocketAddr,
    conn: u64,
) -> Option<(RequestHead, Vec<u8>)> {
    let pending = match track_pending(shared, conn, client) {
        Ok(pending) => pending,
        Err(e) => {
            warn!("client {peer}: cannot track the connection: {e}");
            return None;
        }
    };
    let limits = &shared.limits;
    // A connection that gave way at once has nothing of its head read.
    let read =
        (!pending.evicted()).then(|| read_head(client, limits.max_head_bytes, limits.head_timeout));
    let evicted = pending.evicted();
    drop(pending);
    if evicted {
        debug!("client {peer}: evicted while sending its head");
        reply::answer(client, reply::SERVICE_UNAVAILABLE, EVICTED);
        return None;
    }
    match read? {
        Ok(read) => Some(read),
        Err(e) => {
            debug!("client {peer}: {e}");
            shared.monitor.head_failed(&e, None);
            if let Some(status) = e.status() {
                reply::answer(client, status, &e.to_string());
            }
            None
        }
    }
}

/// A CONNECT through the gateway: open the tunnel (dial, preamble, the
/// gateway's first answer bytes), hand the answer to the client, pump until
/// either side ends, give a reusable WebSocket back to the pool, log.
fn serve_tunnel(
    shared: &Shared,
    client: TcpStream,
    peer: SocketAddr,
    target: &Authority,
    leftover: &[u8],
) {
    let started = Instant::now();
    let gateway = &shared.gateway;
    let host = target.to_string();
    let lookup = ClientLookup::start(gateway.generation, &client, peer);
    let Some(opened) = open_tunnel(shared, &client, target, leftover, &lookup) else {
        return;
    };
    let rejection = shared.monitor.check_answer(&opened.answer, &host);
    let answered = TunnelFacts::of(&opened, gateway.generation, rejection);
    let Some(ended) = pump(shared, client, opened) else {
        return;
    };
    // The bytes that came with the head went up with the opening, the
    // answer's first bytes came down with it: neither passed the pumps.
    let (up, down) = (
        ended.report.bytes_socket_to_ws + leftover.len() as u64,
        ended.report.bytes_ws_to_socket + answered.answer_len,
    );
    // The client's first bytes: those that came with the head, if any.
    let first_up = match leftover.is_empty() {
        true => &ended.report.first_up[..],
        false => leftover,
    };
    if policy::refused_handshake(
        first_up,
        &answered.answer,
        ended.report.bytes_ws_to_socket,
        &ended.report.end,
    ) {
        shared.monitor.handshake_refused(up, &host, &lookup.name());
    } else {
        shared.monitor.tunnel_ended(
            &ended.report.end,
            answered.v2 && answered.rejection.is_none(),
            up,
            down,
            &host,
        );
    }
    let line = format!(
        "tunnel {target} closed{}: up {up} B, down {down} B, {:.3} s, {}{}, {} {} WebSocket{}",
        answered
            .rejection
            .as_ref()
            .map(|r| format!(" (the gateway answered {r})"))
            .unwrap_or_default(),
        started.elapsed().as_secs_f64(),
        ended.report.end,
        lookup.note(),
        answered.wire_name,
        if answered.reused { "reused" } else { "fresh" },
        if ended.pooled { ", pooled" } else { "" },
    );
    // A refusal with a known cause (wrong credentials) is the relay's
    // configuration, not one target: it must be seen at the default level.
    match &answered.rejection {
        Some(r) if !r.hint.is_empty() => warn!("{line}"),
        _ => info!("{line}"),
    }
}

/// Dials the tunnel and writes the gateway's first answer bytes to the
/// client; `None` when it failed (the client was answered) or the client
/// went away.
fn open_tunnel(
    shared: &Shared,
    client: &TcpStream,
    target: &Authority,
    leftover: &[u8],
    lookup: &ClientLookup,
) -> Option<Opened> {
    let gateway = &shared.gateway;
    let client_process = |reused: bool| lookup.for_preamble(reused);
    let request = dial::Request {
        target,
        client_process: &client_process,
        leftover,
    };
    let opened = match dial::open(gateway, &shared.limits, &request) {
        Ok(opened) => opened,
        Err(e) => {
            warn!("tunnel {target}: {e}");
            shared
                .monitor
                .open_failed(gateway.generation, &e, &target.to_string());
            reply::answer(client, e.status(), &e.to_string());
            return None;
        }
    };
    shared.monitor.opened(&opened, &target.to_string());
    // Named while the client still waits for the answer.
    if let Some(reason) = policy::denial_reason(&opened.answer) {
        let host = target.host.to_string();
        shared.monitor.policy_denied(&host, &lookup.name(), &reason);
    }
    if let Err(e) = socket::set_mode(client, Mode::bounded(shared.limits.upgrade_timeout))
        .and_then(|()| (&*client).write_all(&opened.answer))
    {
        debug!("tunnel {target}: client gone before the answer: {e}");
        return None;
    }
    Some(opened)
}

/// What the log line and the monitor need of an opened tunnel once its
/// WebSocket has gone to the pumps.
struct TunnelFacts {
    /// The gateway's first answer bytes.
    answer: tungstenite::Bytes,
    answer_len: u64,
    v2: bool,
    reused: bool,
    wire_name: &'static str,
    rejection: Option<Rejection>,
}

impl TunnelFacts {
    fn of(opened: &Opened, generation: Generation, rejection: Option<Rejection>) -> TunnelFacts {
        let agent = generation == Generation::AgentProxy;
        TunnelFacts {
            answer: opened.answer.clone(),
            answer_len: opened.answer.len() as u64,
            v2: opened.v2,
            reused: opened.reused,
            wire_name: if agent && !opened.v2 {
                "v1-fallback"
            } else {
                opened.wire.name()
            },
            rejection,
        }
    }
}

/// How a tunnel's pumps ended, and whether its WebSocket went to the pool.
struct Ended {
    report: TunnelReport,
    pooled: bool,
}

/// Runs the tunnel's pumps, registered so that a stop closes it, and gives
/// a WebSocket that may carry another tunnel back to the pool.
fn pump(shared: &Shared, client: TcpStream, opened: Opened) -> Option<Ended> {
    let gateway = &shared.gateway;
    let opts = pump_options(shared, &opened);
    let opened_at = opened.opened_at;
    let tunnel = match Tunnel::new(client, opened.ws, opts) {
        Ok(t) => t,
        Err(e) => {
            warn!("tunnel: {e}");
            return None;
        }
    };
    let registration = shared.register(tunnel.clone());
    let open_tunnel = shared.monitor.tunnel_opened();
    let report = tunnel.run();
    drop(open_tunnel);
    drop(registration);
    let pooled = match (&gateway.pool, tunnel.take_websocket()) {
        (Some(pool), Some(ws)) if !shared.is_stopping() => pool.put(ws, opened_at),
        _ => false,
    };
    Some(Ended { report, pooled })
}

/// The pumps' settings for one opened tunnel.
fn pump_options(shared: &Shared, opened: &Opened) -> PumpOptions {
    let limits = &shared.limits;
    PumpOptions {
        keepalive_interval: limits.keepalive_interval,
        read_size: limits.max_chunk.min(64 * 1024),
        reply_if_silent: None,
        wire: opened.wire,
        v2: opened.v2,
        fin_grace: limits.fin_grace,
        upload_stall: limits.upload_stall,
        liveness: Some(shared.gateway.liveness.clone()),
    }
}

/// Which process asks, looked up on a helper thread while the WebSocket is
/// dialled, within its budget. Both generations log it; the agent proxy
/// also sends it in the preamble. The first generation only logs it, at
/// info: not looked up when that line is off (a lookup scans every
/// process's descriptors; thousands of quick connections would pay for a
/// line nobody reads).
struct ClientLookup {
    agent: bool,
    lookup: Option<Mutex<client_process::Background>>,
    /// The connection's two ends, for a lookup on demand ([`Self::name`]).
    ends: (SocketAddr, std::io::Result<SocketAddr>),
}

impl ClientLookup {
    fn start(generation: Generation, client: &TcpStream, peer: SocketAddr) -> ClientLookup {
        let agent = generation == Generation::AgentProxy;
        let wants_name = agent || log::log_enabled!(log::Level::Info);
        let lookup = wants_name.then(|| {
            Mutex::new(client_process::Background::start(
                Ok(peer),
                client.local_addr(),
                client_process::DEFAULT_BUDGET,
            ))
        });
        ClientLookup {
            agent,
            lookup,
            ends: (peer, client.local_addr()),
        }
    }

    /// The program's name: the background lookup's, or, when none was
    /// started (the first generation with its log line off), one looked up
    /// now (a denial or a refused handshake is worth it).
    fn name(&self) -> String {
        match (&self.lookup, &self.ends) {
            (Some(lookup), _) => lock(lookup).name_within(client_process::DEFAULT_BUDGET),
            (None, (peer, Ok(local))) => {
                client_process::lookup(*peer, *local, client_process::DEFAULT_BUDGET).name
            }
            (None, (_, Err(_))) => client_process::LOOKUP_FAILED.to_string(),
        }
    }

    /// For the preamble: a fresh WebSocket's dial has hidden the lookup's
    /// time, so what is left of its budget is waited for; a reused one had
    /// no dial, and the contract allows only a few milliseconds then. Not
    /// sent in the first generation: never waited for there.
    fn for_preamble(&self, reused: bool) -> String {
        if !self.agent {
            return String::new();
        }
        let bound = if reused {
            client_process::REUSE_WAIT
        } else {
            client_process::DEFAULT_BUDGET
        };
        match &self.lookup {
            Some(lookup) => lock(lookup).name_within(bound),
            None => String::new(),
        }
    }

    /// `, client NAME` for the log line (the lookup ended long ago: its
    /// budget is far shorter than a tunnel), or nothing.
    fn note(&self) -> String {
        match &self.lookup {
            Some(lookup) => format!(
                ", client {}",
                lock(lookup).name_within(client_process::DEFAULT_BUDGET)
            ),
            None => String::new(),
        }
    }
}

/// A target the relay dials itself: selective mode's host off the include
/// list (refusing local and metadata addresses, by name and by the peer
/// it reached), or loopback for the relay's own uid (any other gets
/// `403`). Answered with the relay's own `200`, and piped raw.
fn serve_direct(
    shared: &Shared,
    client: TcpStream,
    (route, owner): (Route, &Owner),
    target: &Authority,
    leftover: &[u8],
) {
    let started = Instant::now();
    let monitor = &shared.monitor;
    let host = target.to_string();
    let path = if route == Route::Loopback {
        "loopback"
    } else {
        "direct"
    };
    let stream = match direct::dial_target(monitor, route, owner, target) {
        Ok(stream) => stream,
        Err(e) => {
            warn!("{path} {target}: {e}");
            reply::answer(&client, e.status(), &e.to_string());
            return;
        }
    };
    let opening = socket::set_mode(&client, Mode::bounded(shared.limits.upgrade_timeout))
        .and_then(|()| (&client).write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n"))
        .and_then(|()| (&stream).write_all(leftover));
    if let Err(e) = opening {
        debug!("{path} {target}: {e}");
        return;
    }
    let opts = PipeOptions {
        stall: shared.limits.upload_stall,
        ..PipeOptions::default()
    };
    let pipe = match Pipe::new(client, stream, opts) {
        Ok(pipe) => pipe,
        Err(e) => {
            warn!("{path} {target}: {e}");
            return;
        }
    };
    let _open = monitor.tunnel_opened();
    let registration = shared.register(pipe.clone());
    let report = pipe.run();
    drop(registration);
    // The bytes that came with the head went up before the pipe started.
    let up = report.up + leftover.len() as u64;
    monitor.direct_ended(&report.end, up, report.down, &host);
    info!(
        "{path} {target} closed: up {up} B, down {} B, {:.3} s, {}",
        report.down,
        started.elapsed().as_secs_f64(),
        report.end
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::gateway::Gateway;
    use crate::gateway::chunk;
    use crate::proxy::access::Access;
    use crate::test_support::gateway::{
        BOUND, FakeGateway, hold, next_binary, send, stay_silent, upgrade,
    };
    use std::io::Read;
    use std::net::Shutdown;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc::{self, Receiver};
    use std::thread::{self, JoinHandle};
    use std::time::Duration;

    const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

    fn limits() -> Limits {
        Limits {
            head_timeout: Duration::from_secs(5),
            upgrade_timeout: Duration::from_secs(2),
            answer_timeout: Duration::from_secs(5),
            ..Limits::default()
        }
    }

    /// The proxy's shared state around a fresh loopback listener.
    fn shared(gateway: Gateway, limits: Limits, access: Access) -> Arc<Shared> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let state = super::super::shared::ProxyState {
            access,
            limits,
            monitor: Arc::default(),
            selective: None,
        };
        Arc::new(Shared::new(listener, gateway, state))
    }

    /// A client connected to the proxy's listener, its connection handled
    /// (as number `conn`) on a thread of its own.
    fn connect(shared: &Arc<Shared>, conn: u64) -> (TcpStream, JoinHandle<()>) {
        let client = TcpStream::connect(shared.listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(BOUND)).unwrap();
        let (accepted, peer) = shared.listener.accept().unwrap();
        let shared = Arc::clone(shared);
        let handler = thread::spawn(move || handle(&shared, accepted, peer, conn));
        (client, handler)
    }

    /// Everything the proxy sends until it closes.
    fn read_all(mut client: &TcpStream) -> String {
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        String::from_utf8_lossy(&got).into_owned()
    }

    fn kinds(shared: &Shared) -> Vec<&'static str> {
        shared
            .monitor
            .failures()
            .iter()
            .map(|f| f.kind.name())
            .collect()
    }

    /// A first-generation gateway that answers every CONNECT with `answer`
    /// and then sends back each chunk it gets upper-cased; what each
    /// connection received (the preamble first) goes to the channel.
    fn answering(answer: &'static [u8], then_close: bool) -> (FakeGateway, Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let fake = FakeGateway::start(move |_, stream| {
            let Some(mut ws) = upgrade(stream) else {
                return;
            };
            let Some(preamble) = next_binary(&mut ws) else {
                return;
            };
            let _ = tx
                .lock()
                .unwrap()
                .send(chunk::decode(&preamble).unwrap().to_vec());
            send(&mut ws, &chunk::encode(answer));
            if then_close {
                let _ = ws.close(None);
                return hold(&mut ws);
            }
            while let Some(message) = next_binary(&mut ws) {
                let data = chunk::decode(&message).unwrap();
                if !data.is_empty() {
                    let _ = tx.lock().unwrap().send(data.to_vec());
                    send(&mut ws, &chunk::encode(&data.to_ascii_uppercase()));
                }
            }
        });
        (fake, rx)
    }

    #[test]
    fn a_connect_reaches_the_gateway_and_bytes_flow_both_ways() {
        let (fake, received) = answering(ESTABLISHED, false);
        let gateway = fake.client(Generation::UpstreamProxy, Duration::from_secs(2), None);
        let shared = shared(gateway, limits(), Access::Anyone);
        let (mut client, handler) = connect(&shared, 1);
        client
            .write_all(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\nhello")
            .unwrap();
        let mut got = vec![0; ESTABLISHED.len() + 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, [ESTABLISHED, b"HELLO"].concat());
        client.write_all(b"ping").unwrap();
        let mut got = [0; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"PING");
        // The preamble, then the bytes that came with the head, then later ones.
        let preamble = received.recv_timeout(BOUND).unwrap();
        assert_eq!(
            preamble,
            shared
                .gateway
                .connect_head(&Authority::parse("origin.test:443", None).unwrap(), "")
        );
        assert_eq!(received.recv_timeout(BOUND).unwrap(), b"hello");
        assert_eq!(received.recv_timeout(BOUND).unwrap(), b"ping");
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&client), "", "nothing after the tunnel ends");
        handler.join().unwrap();
        let monitor = &shared.monitor;
        assert_eq!(monitor.tunnels_served.load(Ordering::Relaxed), 1);
        assert_eq!(monitor.open_tunnels.load(Ordering::Relaxed), 0);
        assert_eq!(monitor.bytes_up.load(Ordering::Relaxed), 9);
        assert_eq!(
            monitor.bytes_down.load(Ordering::Relaxed),
            ESTABLISHED.len() as u64 + 9
        );
        assert_eq!(kinds(&shared), Vec::<&str>::new());
        assert_eq!(fake.accepted(), 1);
    }

    #[test]
    fn the_gateways_refusal_of_the_connect_is_passed_to_the_client() {
        for answer in [
            &b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"[..],
            &b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"[..],
        ] {
            let (fake, _received) = answering(answer, true);
            let gateway = fake.client(Generation::UpstreamProxy, Duration::from_secs(2), None);
            let shared = shared(gateway, limits(), Access::Anyone);
            let (mut client, handler) = connect(&shared, 1);
            client
                .write_all(b"CONNECT origin.test:443 HTTP/1.1\r\n\r\n")
                .unwrap();
            assert_eq!(read_all(&client).as_bytes(), answer);
            handler.join().unwrap();
            let failures = shared.monitor.failures();
            assert_eq!(kinds(&shared), ["connect_rejected"]);
            assert!(
                failures[0]
                    .detail
                    .contains(&String::from_utf8_lossy(&answer[..12]).to_string())
            );
            assert_eq!(failures[0].host, "origin.test:443");
        }
    }

    #[test]
    fn a_gateway_that_cannot_be_dialled_is_answered_502() {
        let fake = FakeGateway::start(|_, stream| {
            crate::test_support::gateway::refuse_upgrade(stream, "503 Service Unavailable")
        });
        let gateway = fake.client(Generation::UpstreamProxy, Duration::from_secs(2), None);
        let shared = shared(gateway, limits(), Access::Anyone);
        let (mut client, handler) = connect(&shared, 1);
        client
            .write_all(b"CONNECT origin.test:443 HTTP/1.1\r\n\r\n")
            .unwrap();
        let answer = read_all(&client);
        assert!(
            answer.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{answer}"
        );
        assert!(answer.contains("HTTP 503"), "{answer}");
        handler.join().unwrap();
        assert_eq!(kinds(&shared), ["upgrade_refused"]);
        assert_eq!(fake.accepted(), 1);
    }

    /// A gateway that must not be reached: it only counts.
    fn untouched() -> (FakeGateway, Gateway) {
        let fake = FakeGateway::start(|_, stream| stay_silent(stream));
        let gateway = fake.client(Generation::UpstreamProxy, Duration::from_secs(2), None);
        (fake, gateway)
    }

    #[test]
    fn a_malformed_head_is_answered_400_and_nothing_reaches_the_gateway() {
        let (fake, gateway) = untouched();
        let shared = shared(gateway, limits(), Access::Anyone);
        let (mut client, handler) = connect(&shared, 1);
        client
            .write_all(b"CONNECT origin.test:443 HTTP/1.1\r\nno colon here\r\n\r\n")
            .unwrap();
        let answer = read_all(&client);
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        handler.join().unwrap();
        assert_eq!(kinds(&shared), ["bad_request"]);
        assert_eq!(fake.accepted(), 0);
    }

    #[test]
    fn the_oldest_pending_head_gives_way_with_503() {
        let (fake, gateway) = untouched();
        let limits = Limits {
            max_pending_heads: 1,
            ..limits()
        };
        let shared = shared(gateway, limits, Access::Anyone);
        let (older, older_handler) = connect(&shared, 1);
        // The older connection holds the one slot before the newer comes.
        let deadline = Instant::now() + BOUND;
        while lock(&shared.pending_heads).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the first connection took no slot"
            );
            thread::sleep(Duration::from_millis(2));
        }
        let (mut newer, newer_handler) = connect(&shared, 2);
        let answer = read_all(&older);
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        assert!(answer.contains(EVICTED), "{answer}");
        older_handler.join().unwrap();
        // The newer one is served as usual.
        newer
            .write_all(b"GET /__agentproxy/status HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(read_all(&newer).starts_with("HTTP/1.1 200 OK\r\n"));
        newer_handler.join().unwrap();
        assert!(lock(&shared.pending_heads).is_empty());
        assert_eq!(fake.accepted(), 0);
    }

    #[test]
    fn a_client_of_another_uid_is_refused_403_and_nothing_reaches_the_gateway() {
        let (fake, gateway) = untouched();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let shared = shared(gateway, limits(), Access::Uids(vec![me.wrapping_add(1)]));
        let (mut client, handler) = connect(&shared, 1);
        client
            .write_all(b"CONNECT origin.test:443 HTTP/1.1\r\n\r\n")
            .unwrap();
        let answer = read_all(&client);
        assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
        assert!(
            answer.contains("the proxy serves only the session's own processes"),
            "{answer}"
        );
        handler.join().unwrap();
        assert_eq!(kinds(&shared), ["client_refused"]);
        assert_eq!(fake.accepted(), 0);
    }

    #[test]
    fn the_status_request_is_served() {
        let (fake, gateway) = untouched();
        let shared = shared(gateway, limits(), Access::Anyone);
        let (mut client, handler) = connect(&shared, 1);
        client
            .write_all(b"GET /__agentproxy/status HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let answer = read_all(&client);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("Content-Type: application/json"),
            "{answer}"
        );
        assert!(answer.contains("\"recentRelayFailures\""), "{answer}");
        handler.join().unwrap();
        assert_eq!(fake.accepted(), 0);
    }

    #[test]
    fn local_end_is_the_listeners_port_on_the_address_reached() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(local_end(&listener, &accepted).unwrap(), addr);
        drop(client);
        let any = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = any.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = any.accept().unwrap();
        assert_eq!(
            local_end(&any, &accepted).unwrap(),
            SocketAddr::from(([127, 0, 0, 1], port))
        );
    }

    #[test]
    fn refusals_say_why_and_what_to_do() {
        assert!(
            Refusal::OtherUid(65534)
                .problem()
                .contains("uid 65534 is not allowed (see --allow-uid)")
        );
        assert!(
            Refusal::OwnerUnknown("no socket row".into())
                .problem()
                .contains("owner cannot be found (no socket row)")
        );
    }
}
