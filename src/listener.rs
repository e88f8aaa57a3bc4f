//! The local proxy: accepts clients on `127.0.0.1:<port>`, gives each its own
//! thread, answers what it cannot serve, and turns each CONNECT into a
//! [`Tunnel`] through the gateway. Tracks open tunnels so that stopping the
//! relay closes them all.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::access::{Access, Decision};
use crate::client_process;
use crate::config::Limits;
use crate::dial;
use crate::direct::{self, Pipe, PipeOptions};
use crate::forward;
use crate::gates::Generation;
use crate::gateway::Gateway;
use crate::reply;
use crate::request_head::{Authority, ProxyRequest, read_head};
use crate::route::{self, Route};
use crate::socket::{self, Mode};
use crate::status;
use crate::tunnel::{PumpOptions, Tunnel};
use log::{debug, info, warn};

/// Stack of a connection thread. It runs the TLS handshake to the gateway,
/// the deepest call it makes; untouched pages cost nothing.
const CONNECTION_STACK: usize = 256 * 1024;

/// A bound, not yet serving, relay.
pub struct Relay {
    shared: Arc<Shared>,
}

/// Stops a serving [`Relay`] from another thread (a signal handler thread).
#[derive(Clone)]
pub struct StopHandle {
    shared: Arc<Shared>,
}

struct Shared {
    listener: TcpListener,
    gateway: Arc<Gateway>,
    /// Who may use the proxy.
    access: Access,
    limits: Limits,
    stopping: AtomicBool,
    tunnels: Mutex<HashMap<u64, Weak<dyn Abort>>>,
    next_id: AtomicU64,
    /// Connection threads alive, with a condvar to wait for them at shutdown.
    live: Mutex<usize>,
    all_done: Condvar,
    /// Connections whose request head has not arrived yet, oldest first
    /// (by accept order), with a handle to evict them.
    pending_heads: Mutex<BTreeMap<u64, Pending>>,
    next_conn: AtomicU64,
}

/// A connection still waiting for its head, as the accept loop sees it.
struct Pending {
    /// A second handle on the client's socket, to wake its thread.
    socket: TcpStream,
    /// Set when it is evicted: its thread answers 503.
    evicted: Arc<AtomicBool>,
}

impl Relay {
    /// Binds the listener. Nothing is accepted until [`Relay::serve`].
    pub fn bind(
        addr: SocketAddr,
        gateway: Gateway,
        limits: Limits,
        access: Access,
    ) -> io::Result<Relay> {
        let listener = TcpListener::bind(addr)?;
        Ok(Relay {
            shared: Arc::new(Shared {
                listener,
                gateway: Arc::new(gateway),
                access,
                limits,
                stopping: AtomicBool::new(false),
                tunnels: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                live: Mutex::new(0),
                all_done: Condvar::new(),
                pending_heads: Mutex::new(BTreeMap::new()),
                next_conn: AtomicU64::new(0),
            }),
        })
    }

    /// The gateway client the relay serves with (for the start-up probe).
    pub fn gateway(&self) -> Arc<Gateway> {
        Arc::clone(&self.shared.gateway)
    }

    /// The address clients connect to (the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.listener.local_addr()
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Accepts and serves clients until stopped, then closes every open
    /// tunnel and waits (at most the shutdown grace) for their threads.
    pub fn serve(self) {
        let shared = &self.shared;
        for accepted in shared.listener.incoming() {
            if shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            let client = match accepted {
                Ok(client) => client,
                Err(e) => {
                    // Out of file descriptors or the like: back off, keep serving.
                    warn!("accept failed: {e}");
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            // Over the limit of connections in all: answered at once,
            // without a thread.
            if *lock(&shared.live) >= shared.limits.max_connections {
                debug!("refused a connection: too many connections");
                reply::refuse_now(&client, reply::SERVICE_UNAVAILABLE, TOO_MANY_CONNECTIONS);
                continue;
            }
            // Room for one more connection without its head: the oldest
            // such connection gives way (503). A flood of idle connections
            // thus evicts itself, while a real client, which sends its
            // head at once, is never the oldest and gets served.
            let pending = match track_pending(shared, &client) {
                Ok(pending) => pending,
                Err(e) => {
                    warn!("cannot track a new connection: {e}");
                    continue;
                }
            };
            let conn_shared = Arc::clone(shared);
            *lock(&shared.live) += 1;
            let spawned = thread::Builder::new()
                .name("connection".into())
                .stack_size(CONNECTION_STACK)
                .spawn(move || {
                    let _done = LiveGuard(&conn_shared);
                    let pending = PendingHead {
                        shared: &conn_shared,
                        id: pending.0,
                        evicted: pending.1,
                    };
                    handle_connection(&conn_shared, client, pending);
                });
            if let Err(e) = spawned {
                *lock(&shared.live) -= 1;
                warn!("cannot start a connection thread: {e}");
            }
        }
        self.shutdown();
    }

    fn shutdown(&self) {
        let shared = &self.shared;
        let open: Vec<Arc<dyn Abort>> = lock(&shared.tunnels)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        if !open.is_empty() {
            info!("stopping: closing {} open tunnel(s)", open.len());
        }
        for tunnel in &open {
            tunnel.abort();
        }
        drop(open);
        let deadline = Instant::now() + shared.limits.shutdown_grace;
        let mut live = lock(&shared.live);
        while *live > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                debug!("{} connection thread(s) still running at exit", *live);
                break;
            }
            live = shared
                .all_done
                .wait_timeout(live, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

impl StopHandle {
    /// Stops accepting and makes [`Relay::serve`] return.
    pub fn stop(&self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wakes the thread blocked in accept(): Linux fails it with EINVAL.
        // SAFETY: the listener lives in `shared`, which we hold.
        unsafe { libc::shutdown(self.shared.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

struct LiveGuard<'a>(&'a Shared);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        let idle = {
            let mut live = lock(&self.0.live);
            *live -= 1;
            *live == 0
        };
        self.0.all_done.notify_all();
        if idle {
            // The last connection's memory is free now: give it back.
            crate::heap::release_free();
        }
    }
}

/// The answer to a connection over `--max-connections`.
const TOO_MANY_CONNECTIONS: &str = "too many connections (--max-connections), try again later";

/// The answer to the oldest connection without its head when a new one
/// needs its place (`--max-pending-heads`).
const EVICTED: &str =
    "too many connections still sending their request (--max-pending-heads), try again later";

/// Records a new connection as waiting for its head, evicting the oldest
/// such connection if there are already `max_pending_heads`. Returns its
/// number and eviction flag.
fn track_pending(shared: &Shared, client: &TcpStream) -> io::Result<(u64, Arc<AtomicBool>)> {
    let socket = client.try_clone()?;
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let evicted = Arc::new(AtomicBool::new(false));
    let mut pending = lock(&shared.pending_heads);
    while pending.len() >= shared.limits.max_pending_heads {
        let Some((_, oldest)) = pending.pop_first() else {
            break;
        };
        oldest.evicted.store(true, Ordering::SeqCst);
        // Ends its head read (EOF) so its thread answers and goes.
        let _ = oldest.socket.shutdown(Shutdown::Read);
    }
    pending.insert(
        id,
        Pending {
            socket,
            evicted: Arc::clone(&evicted),
        },
    );
    Ok((id, evicted))
}

/// Counts a connection as waiting for its head until dropped (the head
/// arrived, or the connection ended without one).
struct PendingHead<'a> {
    shared: &'a Shared,
    id: u64,
    evicted: Arc<AtomicBool>,
}

impl PendingHead<'_> {
    /// Whether the connection was evicted to make room for a newer one.
    fn evicted(&self) -> bool {
        self.evicted.load(Ordering::SeqCst)
    }
}

impl Drop for PendingHead<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending_heads).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One client, start to end: read its request, open the tunnel, pump.
fn handle_connection(shared: &Shared, client: TcpStream, pending: PendingHead<'_>) {
    let peer = client
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let limits = &shared.limits;
    let read = read_head(&client, limits.max_head_bytes, limits.head_timeout);
    let evicted = pending.evicted();
    drop(pending);
    if evicted {
        debug!("client {peer}: evicted while sending its head");
        reply::answer(&client, reply::SERVICE_UNAVAILABLE, EVICTED);
        return;
    }
    let (head, leftover) = match read {
        Ok(read) => read,
        Err(e) => {
            debug!("client {peer}: {e}");
            shared.gateway.monitor.head_failed(&e, None);
            if let Some(status) = e.status() {
                reply::answer(&client, status, &e.to_string());
            }
            return;
        }
    };
    // Only the session's own processes: checked before anything reaches
    // the gateway.
    if let (Ok(peer_addr), Ok(local)) = (client.peer_addr(), client.local_addr()) {
        let refused = match shared.access.decide(peer_addr, local) {
            Decision::Allowed => None,
            Decision::Refused { uid } => {
                let name =
                    client_process::lookup(peer_addr, local, client_process::DEFAULT_BUDGET).name;
                warn!("client {peer} refused: uid {uid} ({name}) may not use the proxy");
                Some(format!(
                    "the proxy serves only the session's own processes; uid {uid} is not allowed (see --allow-uid)"
                ))
            }
            Decision::Unknown(why) => {
                warn!("client {peer} refused: its owner cannot be found ({why})");
                Some(format!(
                    "the proxy serves only the session's own processes; this connection's owner cannot be found ({why})"
                ))
            }
        };
        if let Some(problem) = refused {
            shared
                .gateway
                .monitor
                .record(status::Kind::ClientRefused, &problem, &peer);
            reply::answer(&client, reply::FORBIDDEN, &problem);
            return;
        }
    }
    if status::is_status_request(&head) {
        return status::serve(&shared.gateway, &client, &head);
    }
    let target = match ProxyRequest::from_head(&head) {
        Ok(ProxyRequest::Connect(target)) => target,
        Ok(ProxyRequest::Forward { .. }) => {
            forward::serve(&shared.gateway, limits, &client, head, leftover);
            return;
        }
        Err(e) => {
            debug!("client {peer}: {e}");
            shared.gateway.monitor.head_failed(&e, Some(&head));
            if let Some(status) = e.status() {
                reply::answer(&client, status, &e.to_string());
            }
            return;
        }
    };
    let started = Instant::now();
    let gateway = &shared.gateway;
    if let Some(list) = &gateway.selective {
        let (route, note) = route::route_host(&target.host, list);
        if let Some(kind) = note {
            gateway.monitor.record(
                status::Kind::Selective(kind),
                "a host with control characters goes through the gateway",
                &target.to_string(),
            );
        }
        if route == Route::Direct {
            return serve_direct(shared, client, &target, &leftover);
        }
    }
    let agent = gateway.generation == Generation::AgentProxy;
    // Who asks (both generations log it; the agent proxy also sends it in
    // the preamble): looked up on a helper thread while the WebSocket is
    // dialled, within its budget.
    // The first generation only logs it, at info: not looked up when that
    // line is off (a lookup scans every process's descriptors; thousands
    // of quick connections would pay for a line nobody reads).
    let wants_name = agent || log::log_enabled!(log::Level::Info);
    let lookup = wants_name.then(|| {
        Mutex::new(client_process::Background::start(
            client.peer_addr(),
            client.local_addr(),
            client_process::DEFAULT_BUDGET,
        ))
    });
    // For the preamble: a fresh WebSocket's dial has hidden the lookup's
    // time, so what is left of its budget is waited for; a reused one had
    // no dial, and the contract allows only a few milliseconds then.
    let client_process = |reused: bool| {
        if !agent {
            // Not sent in the first generation: never waited for here.
            return String::new();
        }
        let bound = if reused {
            client_process::REUSE_WAIT
        } else {
            client_process::DEFAULT_BUDGET
        };
        match &lookup {
            Some(lookup) => lock(lookup).name_within(bound),
            None => String::new(),
        }
    };
    let request = dial::Request {
        target: &target,
        client_process: &client_process,
        leftover: &leftover,
    };
    let opened = match dial::open(gateway, limits, &request) {
        Ok(opened) => opened,
        Err(e) => {
            warn!("tunnel {target}: {e}");
            gateway
                .monitor
                .open_failed(gateway.generation, &e, &target.to_string());
            reply::answer(&client, e.status(), &e.to_string());
            return;
        }
    };
    // The gateway's first answer bytes, then the pumps.
    if let Err(e) = socket::set_mode(&client, Mode::bounded(limits.upgrade_timeout))
        .and_then(|()| (&client).write_all(&opened.answer))
    {
        debug!("tunnel {target}: client gone before the answer: {e}");
        return;
    }
    let answer_len = opened.answer.len() as u64;
    let rejection = gateway
        .monitor
        .check_answer(&opened.answer, &target.to_string());
    let rejected = rejection.is_some();
    let opts = PumpOptions {
        keepalive_interval: limits.keepalive_interval,
        read_size: limits.max_chunk.min(64 * 1024),
        reply_if_silent: None,
        wire: opened.wire,
        v2: opened.v2,
        fin_grace: limits.fin_grace,
        upload_stall: limits.upload_stall,
        liveness: Some(gateway.liveness.clone()),
    };
    let (reused, opened_at, wire_name) = (
        opened.reused,
        opened.opened_at,
        if agent && !opened.v2 {
            "v1-fallback"
        } else {
            opened.wire.name()
        },
    );
    let tunnel = match Tunnel::new(client, opened.ws, opts) {
        Ok(t) => t,
        Err(e) => {
            warn!("tunnel {target}: {e}");
            return;
        }
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let registered: Arc<dyn Abort> = tunnel.clone();
    lock(&shared.tunnels).insert(id, Arc::downgrade(&registered));
    drop(registered);
    // A stop that came while the tunnel was opening has missed it: close it now.
    if shared.stopping.load(Ordering::SeqCst) {
        tunnel.abort();
    }
    let open_tunnel = gateway.monitor.tunnel_opened();
    let report = tunnel.run();
    drop(open_tunnel);
    lock(&shared.tunnels).remove(&id);
    let pooled = match (&gateway.pool, tunnel.take_websocket()) {
        (Some(pool), Some(ws)) if !shared.stopping.load(Ordering::SeqCst) => {
            pool.put(ws, opened_at)
        }
        _ => false,
    };
    let (up, down) = (
        report.bytes_socket_to_ws,
        report.bytes_ws_to_socket + answer_len,
    );
    gateway.monitor.tunnel_ended(
        &report.end,
        opened.v2 && !rejected,
        up,
        down,
        &target.to_string(),
    );
    // The lookup ended long ago (its budget is far shorter than a tunnel).
    let client_note = match &lookup {
        Some(lookup) => format!(
            ", client {}",
            lock(lookup).name_within(client_process::DEFAULT_BUDGET)
        ),
        None => String::new(),
    };
    let line = format!(
        "tunnel {target} closed{}: up {} B, down {} B, {:.3} s, {}{client_note}, {} {} WebSocket{}",
        rejection
            .as_ref()
            .map(|r| format!(" (the gateway answered {r})"))
            .unwrap_or_default(),
        report.bytes_socket_to_ws,
        report.bytes_ws_to_socket + answer_len,
        started.elapsed().as_secs_f64(),
        report.end,
        wire_name,
        if reused { "reused" } else { "fresh" },
        if pooled { ", pooled" } else { "" },
    );
    // A refusal with a known cause (wrong credentials) is the relay's
    // configuration, not one target: it must be seen at the default level.
    match &rejection {
        Some(r) if !r.hint.is_empty() => warn!("{line}"),
        _ => info!("{line}"),
    }
}

/// What the shutdown registry can end: a tunnel or a direct pipe.
trait Abort: Send + Sync {
    fn abort(&self);
}

impl Abort for Tunnel {
    fn abort(&self) {
        Tunnel::abort(self);
    }
}

impl Abort for Pipe {
    fn abort(&self) {
        Pipe::abort(self);
    }
}

/// Selective mode: a host off the include list is dialled by the relay
/// itself (refusing local and metadata addresses, by name and by the peer
/// it reached), answered with the relay's own `200`, and piped raw.
fn serve_direct(shared: &Shared, client: TcpStream, target: &Authority, leftover: &[u8]) {
    let started = Instant::now();
    let monitor = &shared.gateway.monitor;
    let host = target.to_string();
    let stream = match direct::dial(&target.host.to_string(), target.port, direct::DIAL_TIMEOUT) {
        Ok(stream) => stream,
        Err(e) => {
            warn!("direct {target}: {e}");
            monitor.record(status::Kind::Selective(e.kind()), &e.to_string(), &host);
            reply::answer(&client, e.status(), &e.to_string());
            return;
        }
    };
    let opening = socket::set_mode(&client, Mode::bounded(shared.limits.upgrade_timeout))
        .and_then(|()| (&client).write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n"))
        .and_then(|()| (&stream).write_all(leftover));
    if let Err(e) = opening {
        debug!("direct {target}: {e}");
        return;
    }
    let opts = PipeOptions {
        stall: shared.limits.upload_stall,
        ..PipeOptions::default()
    };
    let pipe = match Pipe::new(client, stream, opts) {
        Ok(pipe) => pipe,
        Err(e) => {
            warn!("direct {target}: {e}");
            return;
        }
    };
    let _open = monitor.tunnel_opened();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let registered: Arc<dyn Abort> = pipe.clone();
    lock(&shared.tunnels).insert(id, Arc::downgrade(&registered));
    drop(registered);
    if shared.stopping.load(Ordering::SeqCst) {
        pipe.abort();
    }
    let report = pipe.run();
    lock(&shared.tunnels).remove(&id);
    // The bytes that came with the head went up before the pipe started.
    let up = report.up + leftover.len() as u64;
    monitor.direct_ended(&report.end, up, report.down, &host);
    info!(
        "direct {target} closed: up {up} B, down {} B, {:.3} s, {}",
        report.down,
        started.elapsed().as_secs_f64(),
        report.end
    );
}
