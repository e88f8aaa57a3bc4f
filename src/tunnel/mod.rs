//! One tunnel's data path: bytes from a plain TCP socket go out as chunks on
//! a WebSocket, chunks coming in are written to the socket, both directions
//! at once, until either side closes.
//!
//! The relay uses it with the client's socket on one side and the gateway's
//! WebSocket on the other. (The development gateway has its own pump,
//! modelled on this one, in the integration crate.)
//!
//! Two threads, one per direction. The socket is a `TcpStream` both threads
//! can use at once (reads on one, writes on the other). The WebSocket is one
//! object over one (maybe TLS) stream, so it sits behind a mutex; to keep
//! either direction from starving the other, its socket is non-blocking and
//! the lock is held only while bytes move: each thread waits for readiness
//! with `poll(2)` without the lock, then locks, moves what it can, unlocks.
//! The thread writing to the socket does so without the lock, so a slow
//! reader slows only its own direction, and, since nothing more is read from
//! the WebSocket meanwhile, the far side too (backpressure, memory flat).
//!
//! Either side ending closes the whole tunnel: `shutdown(2)` on both sockets
//! wakes whichever thread is still waiting.
//!
//! On a WebSocket that acknowledged protocol v2 the end can keep the
//! WebSocket: the server's FIN ends the socket side gracefully (FIN after
//! every byte received) and, once both pumps stopped, the relay answers
//! FIN_ACK and the WebSocket may go back to the pool
//! ([`Tunnel::take_websocket`]). When the client closes first, the relay
//! sends nothing and waits up to the FIN grace for the server's FIN. A v2
//! WebSocket that closes or fails without FIN resets the client's
//! connection: the answer was cut, and a FIN would make it look complete.
//! Opening a tunnel (HELLO, preamble, the wait for the answer) is not done
//! here but in [`crate::tunnel::dial`], before the pumps start.
//!
//! Liveness ([`crate::gateway::liveness`]): the thread reading the WebSocket, when it
//! would wait anyway, pings a gateway it has heard nothing from for one
//! keepalive interval, and ends the tunnel ([`End::GatewayUnresponsive`],
//! the client reset) when nothing at all comes back within the deadline.
//! The gateway taking bytes again after its socket was full also counts as
//! a sign of life: during a long upload into a slow gateway the Pong waits
//! behind what the buffers hold, and `--upload-stall` is the bound there.

pub mod dial;
pub mod pipe;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Message, WebSocket};

use crate::gateway::GatewayStream;
use crate::gateway::chunk;
use crate::gateway::liveness::{self, Liveness, Step, Watch};
use crate::gateway::message_v2;
use crate::gateway::wire::{Incoming, Malformed, Wire};
use crate::sys::lock::lock;
pub use crate::sys::socket::wait_ready;
use crate::sys::socket::{self, Mode};

/// Stack for the second pump thread: a copy loop needs little, and pages
/// never touched cost no memory.
const PUMP_STACK: usize = 128 * 1024;

/// Room in front of read data for the chunk's tag and length varint, so a
/// chunk is built around the bytes where they were read, without a copy.
const HEADROOM: usize = chunk::MAX_OVERHEAD;

/// How long the far side has to finish closing once the socket side is done.
const LINGER: Duration = Duration::from_secs(2);

/// How long the close frame that ends a WebSocket may take to go out.
const CLOSE_BOUND: Duration = Duration::from_secs(1);

/// How long FIN_ACK may take to go out before the WebSocket is given up.
const FIN_ACK_BOUND: Duration = Duration::from_secs(2);

/// How a tunnel is pumped.
#[derive(Debug, Clone)]
pub struct PumpOptions {
    /// An empty chunk goes out when nothing was sent for this long.
    pub keepalive_interval: Duration,
    /// Largest read from the socket, and so the largest chunk sent.
    pub read_size: usize,
    /// Written to the socket if the WebSocket side ends before it sent any
    /// data (the relay's `502`); never once data has flowed.
    pub reply_if_silent: Option<&'static [u8]>,
    /// How the WebSocket's messages are read.
    pub wire: Wire,
    /// The gateway acknowledged protocol v2 on this WebSocket: its FIN ends
    /// the tunnel and keeps the WebSocket.
    pub v2: bool,
    /// v2: how long the server has to send FIN once the client closed.
    pub fin_grace: Duration,
    /// No client byte taken by the WebSocket for this long: the tunnel ends
    /// ([`End::UploadStalled`]).
    pub upload_stall: Duration,
    /// The gateway's liveness: Pings after a keepalive interval of silence,
    /// and the deadline once the gateway is known to answer them. `None`:
    /// no Pings.
    pub liveness: Option<Liveness>,
}

impl Default for PumpOptions {
    fn default() -> Self {
        PumpOptions {
            keepalive_interval: Duration::from_secs(30),
            read_size: 64 * 1024,
            reply_if_silent: None,
            wire: Wire::V1,
            v2: false,
            fin_grace: Duration::from_secs(10),
            upload_stall: Duration::from_secs(180),
            liveness: None,
        }
    }
}

/// How a tunnel ended: the first thing that stopped it.
#[derive(Debug)]
pub enum End {
    /// The socket side sent EOF.
    SocketClosed,
    /// Reading from or writing to the socket failed.
    SocketError(io::Error),
    /// The WebSocket side closed (close frame or EOF).
    WsClosed,
    /// The server finished the tunnel with FIN (v2).
    ServerFin,
    /// The WebSocket took no client byte for the stall bound.
    UploadStalled(Duration),
    /// Nothing came back from the gateway within this deadline of a Ping
    /// (a gateway known to answer them): frozen.
    GatewayUnresponsive(Duration),
    /// The WebSocket failed (I/O, TLS or protocol).
    WsError(tungstenite::Error),
    /// The far side sent something the relay cannot read.
    Malformed(Malformed),
    /// [`Tunnel::abort`] was called (relay shutting down).
    Aborted,
    /// A pump thread could not be started or panicked.
    Internal(Internal),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::SocketClosed => f.write_str("socket closed"),
            End::SocketError(e) => write!(f, "socket error: {e}"),
            End::WsClosed => f.write_str("websocket closed"),
            End::ServerFin => f.write_str("server FIN"),
            End::UploadStalled(t) => write!(
                f,
                "upload stalled: the gateway took no byte for {} s",
                t.as_secs()
            ),
            End::GatewayUnresponsive(t) => write!(
                f,
                "gateway unresponsive: nothing back within {} of a WebSocket Ping",
                liveness::show_secs(*t)
            ),
            End::WsError(e) => write!(f, "websocket error: {e}"),
            End::Malformed(e) => write!(f, "{e}"),
            End::Aborted => f.write_str("aborted"),
            End::Internal(Internal::Panicked) => {
                f.write_str("internal error: pump thread panicked")
            }
            End::Internal(Internal::Spawn(e)) => {
                write!(f, "internal error: cannot start pump thread: {e}")
            }
            End::Internal(Internal::NoReason) => {
                f.write_str("internal error: tunnel ended without a reason")
            }
        }
    }
}

impl std::error::Error for End {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            End::SocketError(e) => Some(e),
            End::WsError(e) => Some(e),
            End::Malformed(e) => Some(e),
            End::Internal(Internal::Spawn(e)) => Some(e),
            _ => None,
        }
    }
}

/// What went wrong inside the relay itself.
#[derive(Debug)]
pub enum Internal {
    /// A pump thread panicked.
    Panicked,
    /// The second pump thread could not be started.
    Spawn(io::Error),
    /// Both pumps stopped and neither said why (a bug).
    NoReason,
}

/// What a finished tunnel did.
#[derive(Debug)]
pub struct TunnelReport {
    /// Data bytes read from the socket and sent as chunks.
    pub bytes_socket_to_ws: u64,
    /// Data bytes received in chunks and written to the socket.
    pub bytes_ws_to_socket: u64,
    /// What ended it first.
    pub end: End,
    pub duration: Duration,
    /// The server's FIN ended it on a v2 WebSocket and FIN_ACK went out:
    /// [`Tunnel::take_websocket`] gives a WebSocket fit for reuse.
    pub reusable: bool,
    /// The first bytes (up to [`FIRST_UP_KEPT`]) read from the socket: a
    /// TLS ClientHello the gateway ended the tunnel after is told by them.
    pub first_up: Vec<u8>,
}

/// How many of the socket's first bytes a [`TunnelReport`] keeps.
pub const FIRST_UP_KEPT: usize = 3;

/// Tests only: what [`Tunnel`]'s socket pump calls before each send.
#[cfg(test)]
type SendHook = Box<dyn Fn(&Tunnel) + Send + Sync>;

/// A socket and a WebSocket joined into one tunnel. Shared by its two pump
/// threads and, for [`Tunnel::abort`], by whoever tracks open tunnels.
pub struct Tunnel {
    socket: TcpStream,
    /// `None` once taken for reuse ([`Tunnel::take_websocket`]).
    ws: Mutex<Option<WebSocket<GatewayStream>>>,
    /// The WebSocket's TCP socket, for `poll` and `shutdown` without the
    /// lock. Valid as long as `self` is: the stream it belongs to lives in `ws`.
    ws_fd: RawFd,
    opts: PumpOptions,
    closing: AtomicBool,
    aborted: AtomicBool,
    /// The server's FIN arrived (v2): nothing more goes out for this tunnel
    /// but FIN_ACK. Set under the `ws` lock, and checked under it before
    /// each send.
    fin: AtomicBool,
    /// FIN_ACK went out after the server's FIN: the WebSocket may be reused.
    reusable: AtomicBool,
    /// Set when the socket side sent EOF: the far side has until then to
    /// finish its close, and its last bytes still reach the socket.
    linger_until: Mutex<Option<Instant>>,
    end: Mutex<Option<End>>,
    bytes_socket_to_ws: AtomicU64,
    bytes_ws_to_socket: AtomicU64,
    /// The socket's first bytes (see [`TunnelReport::first_up`]).
    first_up: Mutex<Vec<u8>>,
    /// Counts the times the WebSocket's socket, full, took bytes again: the
    /// gateway is reading. A sign of life for liveness, as a frame back is
    /// (a Pong may wait behind megabytes queued for a slow gateway); a
    /// frozen gateway stops taking bytes once the buffers fill.
    write_progress: AtomicU64,
    started: Instant,
    /// Tests only: called by the socket pump between reading client bytes
    /// and sending them, to force an interleaving with the other pump.
    #[cfg(test)]
    before_send: std::sync::OnceLock<SendHook>,
}

impl Tunnel {
    /// Joins `socket` and `ws`; the WebSocket's stream becomes non-blocking,
    /// the socket blocking without timeouts (the pumps wait with `poll`).
    pub fn new(
        socket: TcpStream,
        ws: WebSocket<GatewayStream>,
        opts: PumpOptions,
    ) -> io::Result<Arc<Tunnel>> {
        let tcp = ws.get_ref().tcp();
        socket::set_mode(tcp, Mode::NonBlocking)?;
        socket::set_mode(&socket, Mode::BLOCKING)?;
        let ws_fd = tcp.as_raw_fd();
        Ok(Arc::new(Tunnel {
            socket,
            ws: Mutex::new(Some(ws)),
            ws_fd,
            opts,
            closing: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            fin: AtomicBool::new(false),
            reusable: AtomicBool::new(false),
            linger_until: Mutex::new(None),
            end: Mutex::new(None),
            bytes_socket_to_ws: AtomicU64::new(0),
            bytes_ws_to_socket: AtomicU64::new(0),
            first_up: Mutex::new(Vec::new()),
            write_progress: AtomicU64::new(0),
            started: Instant::now(),
            #[cfg(test)]
            before_send: std::sync::OnceLock::new(),
        }))
    }

    /// The socket side, for an answer of the relay's own before pumping starts.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Pumps both directions until the tunnel ends; spawns one thread.
    pub fn run(self: &Arc<Self>) -> TunnelReport {
        let down = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("tunnel-ws-to-socket".into())
            .stack_size(PUMP_STACK)
            .spawn(move || {
                let _guard = CloseOnDrop(&down);
                let end = down.pump_ws_to_socket();
                let side = Side::of(&end);
                down.finish(end, side);
            });
        match spawned {
            Ok(handle) => {
                {
                    let _guard = CloseOnDrop(self);
                    let end = self.pump_socket_to_ws();
                    let side = Side::of(&end);
                    self.finish(end, side);
                }
                if handle.join().is_err() {
                    self.finish(End::Internal(Internal::Panicked), Side::Abort);
                }
                if !self.keep_after_fin() {
                    self.send_close();
                    self.shut_down_both();
                }
            }
            Err(e) => self.finish(End::Internal(Internal::Spawn(e)), Side::Abort),
        }
        let end = lock(&self.end)
            .take()
            .unwrap_or(End::Internal(Internal::NoReason));
        TunnelReport {
            bytes_socket_to_ws: self.bytes_socket_to_ws.load(Ordering::Relaxed),
            bytes_ws_to_socket: self.bytes_ws_to_socket.load(Ordering::Relaxed),
            end,
            duration: self.started.elapsed(),
            reusable: self.reusable.load(Ordering::SeqCst),
            first_up: std::mem::take(&mut *lock(&self.first_up)),
        }
    }

    /// After the server's FIN on a v2 WebSocket, with both pumps stopped:
    /// answers FIN_ACK and keeps the WebSocket for reuse. False (and the
    /// WebSocket is closed as usual) for any other end, or if FIN_ACK
    /// cannot go out.
    fn keep_after_fin(&self) -> bool {
        if !self.opts.v2 || !self.fin.load(Ordering::SeqCst) || self.aborted.load(Ordering::SeqCst)
        {
            return false;
        }
        let deadline = Instant::now() + FIN_ACK_BOUND;
        let sent = self.send_chunk(
            Bytes::from_static(&message_v2::FIN_ACK),
            Outgoing::FinAck(deadline),
        );
        let ok = sent.is_ok();
        self.reusable.store(ok, Ordering::SeqCst);
        ok
    }

    /// Tells the far side politely before cutting: a close frame, pushed
    /// out within [`CLOSE_BOUND`] (never longer: a gateway that stopped
    /// reading does not hold the tunnel). Both pumps have stopped, so the
    /// lock is free but for a moment; a WebSocket already shut down (abort,
    /// error, stall) fails at once.
    fn send_close(&self) {
        let deadline = Instant::now() + CLOSE_BOUND;
        let mut guard = self.lock_ws();
        let Some(ws) = guard.as_mut() else {
            return;
        };
        let mut result = ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        loop {
            match result {
                Err(tungstenite::Error::Io(e)) if is_transient(&e) => {
                    drop(guard);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero()
                        || !matches!(wait_ready(self.ws_fd, libc::POLLOUT, Some(left)), Ok(true))
                    {
                        return;
                    }
                    guard = self.lock_ws();
                    let Some(ws) = guard.as_mut() else {
                        return;
                    };
                    result = ws.flush();
                }
                _ => return,
            }
        }
    }

    /// The WebSocket, for reuse, once [`Tunnel::run`] reported it reusable.
    pub fn take_websocket(&self) -> Option<WebSocket<GatewayStream>> {
        if !self.reusable.load(Ordering::SeqCst) {
            return None;
        }
        lock(&self.ws).take()
    }

    /// Ends the tunnel from outside: both sockets are shut down, which wakes
    /// both pump threads. Safe to call at any time, any number of times.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        self.finish(End::Aborted, Side::Abort);
    }

    /// Socket to WebSocket: wait for the socket to be readable, read once,
    /// send the bytes as one chunk. Sends a keepalive when idle.
    fn pump_socket_to_ws(&self) -> End {
        let socket_fd = self.socket.as_raw_fd();
        let mut last_sent = Instant::now();
        loop {
            if self.closing.load(Ordering::SeqCst) {
                return End::Aborted;
            }
            let idle_left = self
                .opts
                .keepalive_interval
                .saturating_sub(last_sent.elapsed());
            match wait_ready(socket_fd, libc::POLLIN, Some(idle_left)) {
                Ok(true) => {}
                Ok(false) => {
                    if let Err(end) =
                        self.send_chunk(Bytes::from(chunk::keepalive()), Outgoing::Tunnel)
                    {
                        return end;
                    }
                    last_sent = Instant::now();
                    continue;
                }
                Err(e) => return End::SocketError(e),
            }
            // A fresh buffer per read: it moves into the outgoing frame, and
            // an idle tunnel holds none.
            let mut buf = vec![0u8; HEADROOM + self.opts.read_size];
            let n = match (&self.socket).read(&mut buf[HEADROOM..]) {
                Ok(0) => return End::SocketClosed,
                Ok(n) => n,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return End::SocketError(e),
            };
            {
                let mut first = lock(&self.first_up);
                if first.is_empty() {
                    first.extend_from_slice(&buf[HEADROOM..HEADROOM + n.min(FIRST_UP_KEPT)]);
                }
            }
            let start = HEADROOM - chunk::header_len(n);
            chunk::write_header(&mut buf[start..HEADROOM], n);
            buf.truncate(HEADROOM + n);
            let frame = Bytes::from(buf).slice(start..);
            #[cfg(test)]
            if let Some(hook) = self.before_send.get() {
                hook(self);
            }
            if let Err(end) = self.send_chunk(frame, Outgoing::Tunnel) {
                return end;
            }
            self.bytes_socket_to_ws
                .fetch_add(n as u64, Ordering::Relaxed);
            last_sent = Instant::now();
        }
    }

    /// Sends one encoded message, waiting for the WebSocket to take it all
    /// (see [`Outgoing`]). Fails with the end it makes.
    fn send_chunk(&self, encoded: Bytes, outgoing: Outgoing) -> Result<(), End> {
        let (stall, deadline) = match outgoing {
            Outgoing::Tunnel => (true, Instant::now() + self.opts.upload_stall),
            Outgoing::FinAck(deadline) => (false, deadline),
        };
        let mut guard = self.lock_ws();
        let Some(mut ws) = guard.as_mut() else {
            return Err(End::Aborted);
        };
        // The server's FIN is recorded under this same lock, when it is
        // read: checked here, no chunk can start after it (the contract,
        // section 5). Client bytes not yet sent are dropped.
        if outgoing == Outgoing::Tunnel && self.fin.load(Ordering::SeqCst) {
            return Err(End::ServerFin);
        }
        match ws.write(Message::Binary(encoded)) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if is_transient(&e) => {}
            Err(e) => return Err(End::WsError(e)),
        }
        loop {
            match ws.flush() {
                Ok(()) => return Ok(()),
                Err(tungstenite::Error::Io(e)) if is_transient(&e) => {
                    drop(guard);
                    // A tunnel closing for another reason stops waiting here,
                    // except for the FIN_ACK that ends a kept WebSocket.
                    if self.closing.load(Ordering::SeqCst) && stall {
                        return Err(End::Aborted);
                    }
                    let wait = deadline.saturating_duration_since(Instant::now());
                    // Client data waits for the gateway, but never for a
                    // client that is gone (reset): that ends the tunnel now.
                    let watch = stall.then(|| self.socket.as_raw_fd());
                    let ready = wait_writable(self.ws_fd, watch, wait)
                        .map_err(|e| End::WsError(tungstenite::Error::Io(e)))?;
                    if ready == Writable::SocketGone {
                        return Err(End::SocketError(io::ErrorKind::ConnectionReset.into()));
                    }
                    if ready == Writable::Ready {
                        self.write_progress.fetch_add(1, Ordering::Relaxed);
                    }
                    if ready == Writable::TimedOut {
                        return Err(if stall {
                            End::UploadStalled(self.opts.upload_stall)
                        } else {
                            End::WsError(tungstenite::Error::Io(io::ErrorKind::TimedOut.into()))
                        });
                    }
                    guard = self.lock_ws();
                    ws = match guard.as_mut() {
                        Some(ws) => ws,
                        None => return Err(End::Aborted),
                    };
                }
                Err(e) => return Err(End::WsError(e)),
            }
        }
    }

    /// WebSocket to socket: read messages until none is buffered (bytes left
    /// inside TLS do not wake `poll`), writing each chunk's data to the
    /// socket with the lock released.
    fn pump_ws_to_socket(&self) -> End {
        let wire = self.opts.wire;
        // v2: the client went away (reset); the gateway's bytes are dropped
        // until its FIN, so that the WebSocket can still be reused.
        let mut client_gone = false;
        let mut watch = Watch::new(Instant::now());
        // A frame arrived since the last look: set per message, looked at
        // only when the thread would wait (no clock read per chunk).
        let mut heard = false;
        // `write_progress` at the last look.
        let mut progress_seen = 0;
        loop {
            let message = {
                let mut guard = self.lock_ws();
                let Some(ws) = guard.as_mut() else {
                    return End::Aborted;
                };
                let message = ws.read();
                // Recorded before the lock is released: the other pump
                // checks it under the lock before each send, so nothing of
                // this tunnel goes out after the FIN but FIN_ACK.
                if let Ok(Message::Binary(encoded)) = &message
                    && wire.decode(encoded) == Ok(Incoming::Fin)
                {
                    self.fin.store(true, Ordering::SeqCst);
                }
                message
            };
            if message.is_ok() {
                heard = true;
            }
            match message {
                Ok(Message::Binary(encoded)) => match wire.decode(&encoded) {
                    Ok(Incoming::Data([]) | Incoming::HelloAck { .. } | Incoming::Ignored) => {}
                    Ok(Incoming::Fin) => return End::ServerFin,
                    Ok(Incoming::Data(_)) if client_gone => {}
                    Ok(Incoming::Data(data)) => {
                        if let Err(e) = (&self.socket).write_all(data) {
                            if !self.opts.v2 {
                                return End::SocketError(e);
                            }
                            client_gone = true;
                            continue;
                        }
                        self.bytes_ws_to_socket
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        let mut linger = lock(&self.linger_until);
                        if let Some(until) = linger.as_mut() {
                            *until = (*until).max(Instant::now() + LINGER);
                        }
                    }
                    Err(e) => return End::Malformed(e),
                },
                Ok(Message::Text(_)) => return End::Malformed(wire.text_frame()),
                // Pongs to pings are queued by `read` and go out on the next call.
                Ok(Message::Ping(_) | Message::Frame(_)) => {}
                Ok(Message::Pong(payload)) => {
                    if let Some(liveness) = &self.opts.liveness {
                        liveness.pong(&payload);
                    }
                }
                Ok(Message::Close(_)) => return End::WsClosed,
                Err(tungstenite::Error::Io(e)) if is_transient(&e) => {
                    let mut wait = self.opts.keepalive_interval;
                    if let Some(liveness) = &self.opts.liveness
                        && !self.closing.load(Ordering::SeqCst)
                    {
                        let now = Instant::now();
                        let progress = self.write_progress.load(Ordering::Relaxed);
                        let wrote = std::mem::replace(&mut progress_seen, progress) != progress;
                        if std::mem::take(&mut heard) || wrote {
                            watch.heard(now);
                        }
                        match watch.step(
                            now,
                            self.opts.keepalive_interval,
                            liveness.enforced_deadline(),
                        ) {
                            Step::WaitUntil(at) => {
                                wait = wait.min(at.saturating_duration_since(now))
                            }
                            Step::Ping => {
                                if let Err(end) = self.send_ping() {
                                    return end;
                                }
                                watch.pinged(now);
                                continue;
                            }
                            Step::Unresponsive => {
                                return End::GatewayUnresponsive(liveness.deadline());
                            }
                        }
                    }
                    if self.closing.load(Ordering::SeqCst) {
                        let linger = *lock(&self.linger_until);
                        match linger.map(|t| t.saturating_duration_since(Instant::now())) {
                            Some(left) if !left.is_zero() => wait = left,
                            // The linger is over: the socket side's own end
                            // stands, and `run` closes the WebSocket with a
                            // close frame (an abort would cut it first).
                            Some(_) => return End::SocketClosed,
                            None => return End::Aborted,
                        }
                    }
                    if self.closing.load(Ordering::SeqCst) {
                        if let Err(e) = wait_ready(self.ws_fd, libc::POLLIN, Some(wait)) {
                            return End::WsError(tungstenite::Error::Io(e));
                        }
                        continue;
                    }
                    // Also wake when the socket side sends EOF, so the linger
                    // that starts then is kept by this thread.
                    match wait_either(self.ws_fd, self.socket.as_raw_fd(), wait) {
                        Ok(true) => {}
                        // The socket side sent EOF and the other thread is
                        // about to record it, which starts the linger: until
                        // then wait on the WebSocket alone (the EOF stays
                        // pending), no longer than a linger.
                        Ok(false) => {
                            if let Err(e) =
                                wait_ready(self.ws_fd, libc::POLLIN, Some(LINGER.min(wait)))
                            {
                                return End::WsError(tungstenite::Error::Io(e));
                            }
                        }
                        Err(e) => return End::WsError(tungstenite::Error::Io(e)),
                    }
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return End::WsClosed;
                }
                Err(e) => return End::WsError(e),
            }
        }
    }

    /// Queues the liveness Ping and pushes out what the socket takes now;
    /// the rest goes with the next write or flush (the Ping waits behind
    /// data already queued, so its deadline also covers a gateway that
    /// stopped reading).
    fn send_ping(&self) -> Result<(), End> {
        let mut guard = self.lock_ws();
        let Some(ws) = guard.as_mut() else {
            return Err(End::Aborted);
        };
        match ws.write(liveness::ping()).and_then(|()| ws.flush()) {
            Ok(()) => Ok(()),
            Err(tungstenite::Error::Io(e)) if is_transient(&e) => Ok(()),
            // A full write buffer: the gateway takes nothing; the deadline
            // runs all the same.
            Err(tungstenite::Error::WriteBufferFull(_)) => Ok(()),
            Err(e) => Err(End::WsError(e)),
        }
    }

    /// Records the first end and starts closing; later calls only close
    /// what is still open.
    ///
    /// - Socket side EOF: a close frame goes to the far side, which answers
    ///   and closes; until it does (at most [`LINGER`]) its last bytes still
    ///   reach the socket. Cutting the WebSocket at once could make the
    ///   kernel reset it and lose bytes the far side has yet to send.
    /// - WebSocket side ended: the socket gets anything the relay must say,
    ///   then FIN after every byte already queued.
    /// - Abort: both sockets shut down at once.
    fn finish(&self, end: End, side: Side) {
        // On v2 a client that reset its connection has closed it, like one
        // that sent EOF: the server's FIN is still awaited.
        let side = match (&end, side) {
            (End::SocketError(_), Side::Abort)
                if self.opts.v2 && !self.aborted.load(Ordering::SeqCst) =>
            {
                Side::Socket
            }
            _ => side,
        };
        // v2: the WebSocket broke without the server's FIN. The tunnel
        // started only once the answer had begun, so the client holds part
        // of a response: a graceful FIN would make it look complete, a
        // reset says it is not (the contract, section 5).
        // (The reset wakes the other pump, so it comes once this end is
        // recorded.)
        let broken = side == Side::Ws
            && self.opts.v2
            && !self.fin.load(Ordering::SeqCst)
            && !self.aborted.load(Ordering::SeqCst);
        if self.closing.swap(true, Ordering::SeqCst) {
            // A pump that stopped only because the tunnel is closing adds
            // nothing: the first end closed what it had to (after a server
            // FIN the WebSocket stays open for FIN_ACK and reuse).
            if matches!(end, End::Aborted) && !self.aborted.load(Ordering::SeqCst) {
                return;
            }
            if broken {
                self.reset_client();
            }
            match side {
                Side::Socket => {}
                Side::Fin => self.shut_down_socket(),
                Side::Ws | Side::Abort => self.shut_down_both(),
            }
            return;
        }
        *lock(&self.end) = Some(end);
        if broken {
            self.reset_client();
        }
        let silent = self.bytes_ws_to_socket.load(Ordering::Relaxed) == 0;
        match side {
            Side::Socket if !thread::panicking() => {
                // The socket side may only have half-closed and still want
                // the answer: keep passing the far side's bytes to it while
                // they keep coming, up to LINGER of silence. On v2 the
                // server's FIN is awaited up to the FIN grace (nothing is
                // sent to say the client closed).
                let wait = if self.opts.v2 {
                    self.opts.fin_grace
                } else {
                    LINGER
                };
                *lock(&self.linger_until) = Some(Instant::now() + wait);
                return;
            }
            Side::Fin => {
                // Graceful: FIN to the client after every byte written; the
                // WebSocket stays open for FIN_ACK and reuse.
                self.shut_down_socket();
                return;
            }
            Side::Ws if silent && !self.aborted.load(Ordering::SeqCst) => {
                if let Some(reply) = self.opts.reply_if_silent {
                    let _ = (&self.socket).write_all(reply);
                }
            }
            _ => {}
        }
        if matches!(
            lock(&self.end).as_ref(),
            Some(End::UploadStalled(_) | End::GatewayUnresponsive(_))
        ) {
            // The client's bytes were not delivered (or the answer is cut):
            // it gets a reset, not a FIN. A client blocked writing into the
            // full connection never notices a FIN (it waits on a zero window
            // for many minutes).
            self.reset_client();
        }
        self.shut_down_both();
    }

    /// Resets the client's connection at once (no FIN first); wakes a
    /// pump blocked on it.
    fn reset_client(&self) {
        if let Err(e) = socket::reset_now(&self.socket) {
            log::debug!("cannot reset the client's connection: {e}");
        }
    }

    fn shut_down_both(&self) {
        let ws = self.lock_ws();
        if ws.is_some() {
            // SAFETY: ws_fd belongs to the stream owned by self.ws, which is
            // still there (checked under the lock).
            unsafe { libc::shutdown(self.ws_fd, libc::SHUT_RDWR) };
        }
        drop(ws);
        self.shut_down_socket();
    }

    /// Ends the socket side: FIN after what was written, and a wake-up for
    /// the pump waiting to read it.
    fn shut_down_socket(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    fn lock_ws(&self) -> MutexGuard<'_, Option<WebSocket<GatewayStream>>> {
        // A panic elsewhere cannot leave a tunnel stuck: take the WebSocket anyway.
        lock(&self.ws)
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // Closing a socket with unread input makes the kernel send RST, which
        // can destroy bytes still on their way to the peer. Drain both first
        // (the WebSocket only if it was not taken for reuse).
        let ws_here = self.ws.get_mut().map_or(true, |ws| ws.is_some());
        let fds = [Some(self.socket.as_raw_fd()), ws_here.then_some(self.ws_fd)];
        for fd in fds.into_iter().flatten() {
            let mut sink = [0u8; 4096];
            for _ in 0..64 {
                // SAFETY: a valid fd owned by self and a buffer of the given length.
                let n = unsafe {
                    libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT)
                };
                if n <= 0 {
                    break;
                }
            }
        }
    }
}

/// What [`Tunnel::send_chunk`] sends, which decides how long it waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    /// Client bytes or a keepalive: never once the server's FIN is in, and
    /// waited for while the gateway keeps taking bytes within the
    /// upload-stall bound.
    Tunnel,
    /// FIN_ACK, the one message after the FIN: waited for until the instant.
    FinAck(Instant),
}

/// Which side a tunnel's end came from, which decides how it closes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The socket side finished sending (EOF): close gracefully.
    Socket,
    /// The WebSocket side ended or failed.
    Ws,
    /// The server's FIN (v2): end the socket side, keep the WebSocket.
    Fin,
    /// Broken socket, abort or internal error: close everything now.
    Abort,
}

impl Side {
    fn of(end: &End) -> Side {
        match end {
            End::SocketClosed => Side::Socket,
            End::SocketError(_)
            | End::Aborted
            | End::Internal(_)
            | End::UploadStalled(_)
            | End::GatewayUnresponsive(_) => Side::Abort,
            End::ServerFin => Side::Fin,
            End::WsClosed | End::WsError(_) | End::Malformed(_) => Side::Ws,
        }
    }
}

/// Ends the tunnel if a pump thread leaves its loop any way at all,
/// panics included.
struct CloseOnDrop<'a>(&'a Tunnel);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0
                .finish(End::Internal(Internal::Panicked), Side::Abort);
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// What [`wait_writable`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writable {
    Ready,
    TimedOut,
    /// The watched socket was reset or closed both ways.
    SocketGone,
}

/// Waits until `ws_fd` takes bytes, or, if `socket_fd` is given, that
/// socket hangs up or fails (`POLLHUP`/`POLLERR`: a reset, not a
/// half-close, which only ends the client's sending).
fn wait_writable(
    ws_fd: RawFd,
    socket_fd: Option<RawFd>,
    timeout: Duration,
) -> io::Result<Writable> {
    let mut fds = [
        libc::pollfd {
            fd: ws_fd,
            events: libc::POLLOUT,
            revents: 0,
        },
        libc::pollfd {
            // A negative fd is skipped by poll(2).
            fd: socket_fd.unwrap_or(-1),
            events: 0,
            revents: 0,
        },
    ];
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: two pollfds, the second ignored when its fd is negative.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if rc >= 0 {
            return Ok(if fds[1].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                Writable::SocketGone
            } else if rc == 0 {
                Writable::TimedOut
            } else {
                Writable::Ready
            });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits until `ws_fd` is readable or the peer of `socket_fd` shut down
/// its writing. `Ok(true)` for the first (or a timeout), `Ok(false)` when
/// only the socket's EOF is pending.
fn wait_either(ws_fd: RawFd, socket_fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd: ws_fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: socket_fd,
            events: libc::POLLRDHUP,
            revents: 0,
        },
    ];
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: two valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if rc >= 0 {
            return Ok(rc == 0 || fds[0].revents != 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use tungstenite::protocol::Role;

    /// A connected pair of TCP sockets on loopback.
    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    /// Two tunnels back to back over a real WebSocket on loopback:
    /// `near` ⇄ tunnel (client role) ⇄ ws ⇄ tunnel (server role) ⇄ `far`.
    fn back_to_back(
        opts: PumpOptions,
    ) -> (TcpStream, TcpStream, Vec<thread::JoinHandle<TunnelReport>>) {
        let (ws_client, ws_server) = socket_pair();
        let (near, near_inner) = socket_pair();
        let (far_inner, far) = socket_pair();
        let client_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_client), Role::Client, None);
        let server_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_server), Role::Server, None);
        let mut handles = Vec::new();
        for (socket, ws) in [(near_inner, client_ws), (far_inner, server_ws)] {
            let tunnel = Tunnel::new(socket, ws, opts.clone()).unwrap();
            handles.push(thread::spawn(move || tunnel.run()));
        }
        (near, far, handles)
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn streams_both_ways_at_once_byte_exact() {
        let (near, far, handles) = back_to_back(PumpOptions::default());
        let up = pattern(1, 16 << 20);
        let down = pattern(2, 16 << 20);
        let (up2, down2) = (up.clone(), down.clone());
        let mut near_w = near.try_clone().unwrap();
        let mut far_w = far.try_clone().unwrap();
        let writers = [
            thread::spawn(move || near_w.write_all(&up2).unwrap()),
            thread::spawn(move || far_w.write_all(&down2).unwrap()),
        ];
        let read_n = |mut s: TcpStream, n: usize| {
            thread::spawn(move || {
                let mut got = vec![0; n];
                s.read_exact(&mut got).unwrap();
                got
            })
        };
        let at_far = read_n(far.try_clone().unwrap(), up.len());
        let at_near = read_n(near.try_clone().unwrap(), down.len());
        assert!(at_far.join().unwrap() == up, "upload corrupted");
        assert!(at_near.join().unwrap() == down, "download corrupted");
        for w in writers {
            w.join().unwrap();
        }
        drop(near);
        let reports: Vec<TunnelReport> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(reports[0].bytes_socket_to_ws, up.len() as u64);
        assert_eq!(reports[0].bytes_ws_to_socket, down.len() as u64);
        assert!(
            matches!(reports[0].end, End::SocketClosed),
            "{}",
            reports[0].end
        );
        // The far end saw the tunnel close.
        let mut rest = Vec::new();
        (&far).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn idle_tunnel_sends_keepalives_and_abort_ends_it() {
        let (ws_client, ws_server) = socket_pair();
        let (near, near_inner) = socket_pair();
        let client_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_client), Role::Client, None);
        let mut server_ws = WebSocket::from_raw_socket(ws_server, Role::Server, None);
        let opts = PumpOptions {
            keepalive_interval: Duration::from_millis(100),
            ..PumpOptions::default()
        };
        let tunnel = Tunnel::new(near_inner, client_ws, opts).unwrap();
        let runner = {
            let t = Arc::clone(&tunnel);
            thread::spawn(move || t.run())
        };
        let started = Instant::now();
        let mut keepalives = 0;
        while keepalives < 3 {
            match server_ws.read().unwrap() {
                Message::Binary(b) => {
                    assert_eq!(chunk::decode(&b).unwrap(), b"");
                    keepalives += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
        tunnel.abort();
        let report = runner.join().unwrap();
        assert!(matches!(report.end, End::Aborted), "{}", report.end);
        let mut rest = Vec::new();
        (&near).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "abort must not write into the stream");
    }

    #[test]
    fn malformed_chunk_ends_the_tunnel_and_silent_reply_is_sent() {
        let (ws_client, ws_server) = socket_pair();
        let (near, near_inner) = socket_pair();
        let client_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_client), Role::Client, None);
        let mut server_ws = WebSocket::from_raw_socket(ws_server, Role::Server, None);
        let opts = PumpOptions {
            reply_if_silent: Some(b"HTTP/1.1 502 Bad Gateway\r\n\r\n"),
            ..PumpOptions::default()
        };
        let tunnel = Tunnel::new(near_inner, client_ws, opts).unwrap();
        let runner = thread::spawn(move || tunnel.run());
        server_ws
            .send(Message::Binary(vec![0x12, 0x00].into()))
            .unwrap();
        let report = runner.join().unwrap();
        assert!(
            matches!(
                report.end,
                End::Malformed(Malformed::Chunk(chunk::ChunkError::WrongTag(0x12)))
            ),
            "{}",
            report.end
        );
        let mut got = Vec::new();
        (&near).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
    }

    #[test]
    fn no_reply_of_its_own_once_data_flowed() {
        let (ws_client, ws_server) = socket_pair();
        let (near, near_inner) = socket_pair();
        let client_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_client), Role::Client, None);
        let mut server_ws = WebSocket::from_raw_socket(ws_server, Role::Server, None);
        let opts = PumpOptions {
            reply_if_silent: Some(b"HTTP/1.1 502 Bad Gateway\r\n\r\n"),
            ..PumpOptions::default()
        };
        let tunnel = Tunnel::new(near_inner, client_ws, opts).unwrap();
        let runner = thread::spawn(move || tunnel.run());
        server_ws
            .send(Message::Binary(
                chunk::encode(b"HTTP/1.1 200 OK\r\n\r\n").into(),
            ))
            .unwrap();
        server_ws.send(Message::Text("nope".into())).unwrap();
        let report = runner.join().unwrap();
        assert!(
            matches!(
                report.end,
                End::Malformed(Malformed::Chunk(chunk::ChunkError::TextFrame))
            ),
            "{}",
            report.end
        );
        let mut got = Vec::new();
        (&near).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn answers_pings() {
        let (ws_client, ws_server) = socket_pair();
        let (_near, near_inner) = socket_pair();
        let client_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_client), Role::Client, None);
        let mut server_ws = WebSocket::from_raw_socket(ws_server, Role::Server, None);
        let tunnel = Tunnel::new(near_inner, client_ws, PumpOptions::default()).unwrap();
        let runner = {
            let t = Arc::clone(&tunnel);
            thread::spawn(move || t.run())
        };
        server_ws
            .send(Message::Ping(b"are you there".to_vec().into()))
            .unwrap();
        match server_ws.read().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
            other => panic!("expected a pong, got {other:?}"),
        }
        tunnel.abort();
        runner.join().unwrap();
    }

    /// Pings after 100 ms of silence; a 300 ms deadline once `liveness`
    /// knows the gateway answers.
    fn watched(liveness: &Liveness) -> PumpOptions {
        PumpOptions {
            keepalive_interval: Duration::from_millis(100),
            liveness: Some(liveness.clone()),
            ..PumpOptions::default()
        }
    }

    /// A tunnel whose server side never reads (a frozen gateway); its
    /// WebSocket is returned so that it stays open.
    fn frozen_gateway(
        opts: PumpOptions,
    ) -> (
        TcpStream,
        WebSocket<TcpStream>,
        thread::JoinHandle<TunnelReport>,
    ) {
        let (ws_client, ws_server) = socket_pair();
        let (near, near_inner) = socket_pair();
        let client_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_client), Role::Client, None);
        let server_ws = WebSocket::from_raw_socket(ws_server, Role::Server, None);
        let tunnel = Tunnel::new(near_inner, client_ws, opts).unwrap();
        (near, server_ws, thread::spawn(move || tunnel.run()))
    }

    #[test]
    fn a_silent_gateway_known_to_answer_pings_ends_the_tunnel_and_resets_the_client() {
        for v2 in [false, true] {
            let liveness = Liveness::new(Duration::from_millis(300));
            liveness.pong(liveness::PING_PAYLOAD);
            let opts = PumpOptions {
                wire: if v2 { Wire::V2 } else { Wire::V1 },
                v2,
                ..watched(&liveness)
            };
            let started = Instant::now();
            let (near, _server, runner) = frozen_gateway(opts);
            let (_, err) = read_until_end(&near);
            let report = runner.join().unwrap();
            let took = started.elapsed();
            assert!(
                matches!(report.end, End::GatewayUnresponsive(d) if d == Duration::from_millis(300)),
                "v2 {v2}: {}",
                report.end
            );
            assert!(took >= Duration::from_millis(400), "v2 {v2}: {took:?}");
            assert!(took < Duration::from_secs(5), "v2 {v2}: {took:?}");
            let err = err.expect("a reset, not a clean end");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "v2 {v2}: {err}");
            assert!(report.end.to_string().contains("0.3 s"), "{}", report.end);
        }
    }

    #[test]
    fn a_silent_gateway_not_known_to_answer_pings_keeps_the_tunnel() {
        let liveness = Liveness::new(Duration::from_millis(300));
        let opts = watched(&liveness);
        let (ws_client, ws_server) = socket_pair();
        let (_near, near_inner) = socket_pair();
        let client_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_client), Role::Client, None);
        let _server = WebSocket::from_raw_socket(ws_server, Role::Server, None);
        let tunnel = Tunnel::new(near_inner, client_ws, opts).unwrap();
        let runner = {
            let t = Arc::clone(&tunnel);
            thread::spawn(move || t.run())
        };
        thread::sleep(Duration::from_millis(1500));
        assert!(
            !runner.is_finished(),
            "ended: {}",
            runner.join().unwrap().end
        );
        tunnel.abort();
        assert!(matches!(runner.join().unwrap().end, End::Aborted));
    }

    #[test]
    fn an_idle_gateway_that_answers_pings_keeps_the_tunnel() {
        let liveness = Liveness::new(Duration::from_millis(300));
        let (ws_client, ws_server) = socket_pair();
        let (_near, near_inner) = socket_pair();
        let client_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_client), Role::Client, None);
        let mut server = WebSocket::from_raw_socket(ws_server, Role::Server, None);
        let tunnel = Tunnel::new(near_inner, client_ws, watched(&liveness)).unwrap();
        let runner = {
            let t = Arc::clone(&tunnel);
            thread::spawn(move || t.run())
        };
        // The gateway reads (so answers pings) and sends nothing else.
        let gateway = thread::spawn(move || {
            let mut pings = 0;
            while let Ok(message) = server.read() {
                if matches!(message, Message::Ping(p) if p[..] == *liveness::PING_PAYLOAD) {
                    pings += 1;
                }
            }
            pings
        });
        thread::sleep(Duration::from_millis(1500));
        assert!(
            !runner.is_finished(),
            "ended: {}",
            runner.join().unwrap().end
        );
        assert!(liveness.answers_pings());
        tunnel.abort();
        assert!(matches!(runner.join().unwrap().end, End::Aborted));
        assert!(
            gateway.join().unwrap() >= 3,
            "a Ping after each silent interval"
        );
    }

    /// Sets a socket option of `int` size (the buffer sizes below).
    fn set_int_opt(socket: &TcpStream, name: libc::c_int, value: libc::c_int) {
        // SAFETY: an open socket and an int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    }

    #[test]
    fn a_slow_reading_gateway_that_answers_pings_keeps_a_long_upload() {
        let liveness = Liveness::new(Duration::from_millis(300));
        liveness.pong(liveness::PING_PAYLOAD);
        let (ws_client, ws_server) = socket_pair();
        // Small buffers, so the relay's writes move as the gateway reads.
        set_int_opt(&ws_client, libc::SO_SNDBUF, 32 * 1024);
        set_int_opt(&ws_server, libc::SO_RCVBUF, 32 * 1024);
        let (near, near_inner) = socket_pair();
        let client_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_client), Role::Client, None);
        let mut server = WebSocket::from_raw_socket(ws_server, Role::Server, None);
        let opts = PumpOptions {
            read_size: 8 * 1024,
            ..watched(&liveness)
        };
        let tunnel = Tunnel::new(near_inner, client_ws, opts).unwrap();
        let runner = {
            let t = Arc::clone(&tunnel);
            thread::spawn(move || t.run())
        };
        // The client uploads without pause, for as long as the tunnel lasts.
        let uploader = {
            let mut near = near.try_clone().unwrap();
            thread::spawn(move || {
                let block = pattern(3, 64 * 1024);
                while near.write_all(&block).is_ok() {}
            })
        };
        // The gateway reads one message per 20 ms (about 400 KB/s): its
        // Pongs wait behind what the buffers hold, longer than the
        // deadline, and it never sends anything else.
        let gateway = thread::spawn(move || {
            while server.read().is_ok() {
                thread::sleep(Duration::from_millis(20));
            }
        });
        thread::sleep(Duration::from_millis(2500));
        assert!(
            !runner.is_finished(),
            "a healthy slow upload was cut: {}",
            runner.join().unwrap().end
        );
        tunnel.abort();
        let report = runner.join().unwrap();
        assert!(matches!(report.end, End::Aborted), "{}", report.end);
        assert!(
            report.bytes_socket_to_ws > 512 * 1024,
            "the upload moved: {} B",
            report.bytes_socket_to_ws
        );
        let _ = near.shutdown(std::net::Shutdown::Both);
        let _ = uploader.join();
        let _ = gateway.join();
    }

    /// A tunnel on a v2 WebSocket with its far (server) side in the test's
    /// hands: `near` is the client's socket, `server` the gateway's end.
    fn v2_tunnel(opts: PumpOptions) -> V2Tunnel {
        v2_tunnel_hooked(opts, None)
    }

    type V2Tunnel = (
        TcpStream,
        WebSocket<TcpStream>,
        Arc<Tunnel>,
        thread::JoinHandle<TunnelReport>,
    );

    /// [`v2_tunnel`] with a hook the socket pump calls before each send.
    fn v2_tunnel_hooked(opts: PumpOptions, before_send: Option<SendHook>) -> V2Tunnel {
        let (ws_client, ws_server) = socket_pair();
        let (near, near_inner) = socket_pair();
        let client_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_client), Role::Client, None);
        let server_ws = WebSocket::from_raw_socket(ws_server, Role::Server, None);
        server_ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let opts = PumpOptions {
            wire: Wire::V2,
            v2: true,
            ..opts
        };
        let tunnel = Tunnel::new(near_inner, client_ws, opts).unwrap();
        if let Some(hook) = before_send {
            let _ = tunnel.before_send.set(hook);
        }
        let runner = {
            let t = Arc::clone(&tunnel);
            thread::spawn(move || t.run())
        };
        (near, server_ws, tunnel, runner)
    }

    /// The gateway's FIN (control 3) for the tunnel on `server`.
    fn send_fin(server: &mut WebSocket<TcpStream>) {
        server
            .send(Message::Binary(vec![0x10, 0x03].into()))
            .unwrap();
    }

    /// The next message the server side gets that is not a keepalive.
    fn next_message(server: &mut WebSocket<TcpStream>) -> Vec<u8> {
        loop {
            match server.read().unwrap() {
                Message::Binary(b) if b[..] == message_v2::KEEPALIVE[..] => {}
                Message::Binary(b) => return b.to_vec(),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn server_fin_ends_the_socket_gracefully_and_keeps_the_websocket() {
        let (near, mut server, tunnel, runner) = v2_tunnel(PumpOptions::default());
        server
            .send(Message::Binary(message_v2::encode_data(b"answer").into()))
            .unwrap();
        send_fin(&mut server);
        // Every byte before the FIN, then the end of the stream.
        let mut got = Vec::new();
        near.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (&near).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"answer");
        assert_eq!(next_message(&mut server), message_v2::FIN_ACK);
        let report = runner.join().unwrap();
        assert!(matches!(report.end, End::ServerFin), "{}", report.end);
        assert!(report.reusable);
        // The WebSocket still works: the gateway hears a message sent on it.
        let mut ws = tunnel.take_websocket().expect("kept for reuse");
        socket::set_mode(ws.get_ref().tcp(), Mode::BLOCKING).unwrap();
        ws.send(Message::Binary(message_v2::encode_data(b"next").into()))
            .unwrap();
        assert_eq!(next_message(&mut server), message_v2::encode_data(b"next"));
    }

    #[test]
    fn no_chunk_follows_the_servers_fin() {
        // The client's bytes are read before the server's FIN arrives and
        // sent only once the other pump has taken it in: the hook holds the
        // send until then. They must be dropped, never sent after the FIN.
        let (reached, reached_rx) = std::sync::mpsc::channel();
        let hook = move |t: &Tunnel| {
            let _ = reached.send(());
            let deadline = Instant::now() + Duration::from_secs(10);
            while !t.fin.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
        };
        let (near, mut server, tunnel, runner) =
            v2_tunnel_hooked(PumpOptions::default(), Some(Box::new(hook)));
        (&near).write_all(b"late").unwrap();
        reached_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the socket pump read the client's bytes");
        send_fin(&mut server);
        assert_eq!(
            next_message(&mut server),
            message_v2::FIN_ACK,
            "a chunk followed the server's FIN"
        );
        let report = runner.join().unwrap();
        assert!(report.reusable, "{}", report.end);
        assert_eq!(report.bytes_socket_to_ws, 0);
        assert!(tunnel.take_websocket().is_some());
    }

    /// Reads everything `near` gets: the bytes, and the error that ended
    /// the stream (`None`: a clean end of stream).
    fn read_until_end(near: &TcpStream) -> (Vec<u8>, Option<io::Error>) {
        near.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match (&*near).read(&mut buf) {
                Ok(0) => return (got, None),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Some(e)),
            }
        }
    }

    /// A v2 WebSocket that ends without FIN once the answer began: the
    /// client's connection is reset, never ended with a FIN that would make
    /// the cut answer look complete.
    fn broken_without_fin(how: fn(WebSocket<TcpStream>)) -> TunnelReport {
        let (near, mut server, _tunnel, runner) = v2_tunnel(PumpOptions::default());
        server
            .send(Message::Binary(
                message_v2::encode_data(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
                    .into(),
            ))
            .unwrap();
        let mut head = [0u8; 44];
        near.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (&near).read_exact(&mut head).unwrap();
        how(server);
        let (_, err) = read_until_end(&near);
        let err = err.expect("a clean end of stream after a broken v2 WebSocket");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        runner.join().unwrap()
    }

    #[test]
    fn a_v2_websocket_closed_without_fin_resets_the_client() {
        let report = broken_without_fin(|mut server| {
            server.close(None).unwrap();
            let _ = server.flush();
            thread::sleep(Duration::from_millis(200));
        });
        assert!(matches!(report.end, End::WsClosed), "{}", report.end);
        assert!(!report.reusable);
    }

    #[test]
    fn a_v2_websocket_cut_without_a_close_frame_resets_the_client() {
        let report = broken_without_fin(|server| {
            server.get_ref().shutdown(Shutdown::Both).unwrap();
        });
        assert!(matches!(report.end, End::WsError(_)), "{}", report.end);
    }

    #[test]
    fn a_first_generation_websocket_closing_ends_the_client_gracefully() {
        let (ws_client, ws_server) = socket_pair();
        let (near, near_inner) = socket_pair();
        let client_ws =
            WebSocket::from_raw_socket(GatewayStream::Plain(ws_client), Role::Client, None);
        let mut server = WebSocket::from_raw_socket(ws_server, Role::Server, None);
        let opts = PumpOptions {
            wire: Wire::V2,
            v2: false,
            ..PumpOptions::default()
        };
        let tunnel = Tunnel::new(near_inner, client_ws, opts).unwrap();
        let runner = thread::spawn(move || tunnel.run());
        server
            .send(Message::Binary(
                message_v2::encode_data(b"whole answer").into(),
            ))
            .unwrap();
        server.close(None).unwrap();
        let _ = server.flush();
        let (got, err) = read_until_end(&near);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, b"whole answer");
        runner.join().unwrap();
    }

    #[test]
    fn a_fin_while_the_client_is_still_sending_keeps_the_websocket() {
        // The client never stops writing, so its pump is mid-send or about
        // to loop when the FIN lands: however it stops, the WebSocket must
        // stay open for FIN_ACK (a pump that stops because the tunnel is
        // closing once cut it, and the WebSocket was lost to the pool).
        for round in 0..20 {
            let (near, mut server, tunnel, runner) = v2_tunnel(PumpOptions::default());
            let writer = {
                let near = near.try_clone().unwrap();
                thread::spawn(move || {
                    let block = [7u8; 1024];
                    while (&near).write_all(&block).is_ok() {}
                })
            };
            // Let the upload flow, then finish the tunnel from the server.
            let mut seen = 0;
            while seen < 64 {
                if let Message::Binary(_) = server.read().unwrap() {
                    seen += 1;
                }
            }
            send_fin(&mut server);
            loop {
                match server.read().unwrap() {
                    Message::Binary(b) if b[..] == message_v2::FIN_ACK[..] => break,
                    Message::Binary(_) => {}
                    other => panic!("round {round}: {other:?} instead of FIN_ACK"),
                }
            }
            let report = runner.join().unwrap();
            assert!(report.reusable, "round {round}: {}", report.end);
            assert!(tunnel.take_websocket().is_some(), "round {round}");
            // The writer may be blocked on a full connection: wake it.
            let _ = near.shutdown(Shutdown::Both);
            writer.join().unwrap();
        }
    }

    #[test]
    fn client_closing_first_waits_for_the_fin_and_sends_nothing() {
        let opts = PumpOptions {
            fin_grace: Duration::from_secs(5),
            ..PumpOptions::default()
        };
        let (near, mut server, tunnel, runner) = v2_tunnel(opts);
        (&near).write_all(b"request").unwrap();
        assert_eq!(
            next_message(&mut server),
            message_v2::encode_data(b"request")
        );
        near.shutdown(Shutdown::Write).unwrap();
        // Nothing says the client closed: the next thing the server could
        // read would be its own FIN's answer.
        thread::sleep(Duration::from_millis(300));
        server
            .send(Message::Binary(message_v2::encode_data(b"late").into()))
            .unwrap();
        send_fin(&mut server);
        assert_eq!(next_message(&mut server), message_v2::FIN_ACK);
        let report = runner.join().unwrap();
        assert!(report.reusable, "{}", report.end);
        let mut got = Vec::new();
        (&near).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"late", "the half-closed client still gets the answer");
        assert!(tunnel.take_websocket().is_some());
    }

    #[test]
    fn no_fin_within_the_grace_closes_the_websocket() {
        let opts = PumpOptions {
            fin_grace: Duration::from_millis(400),
            ..PumpOptions::default()
        };
        let (near, mut server, tunnel, runner) = v2_tunnel(opts);
        let started = Instant::now();
        near.shutdown(Shutdown::Both).unwrap();
        let report = runner.join().unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert!(!report.reusable);
        assert!(tunnel.take_websocket().is_none());
        // The gateway sees the WebSocket close, never a FIN_ACK.
        loop {
            match server.read() {
                Ok(Message::Binary(b)) => assert_ne!(b[..], message_v2::FIN_ACK[..]),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    #[test]
    fn a_gateway_that_stops_reading_ends_the_upload_at_the_stall_bound() {
        let opts = PumpOptions {
            upload_stall: Duration::from_millis(500),
            ..PumpOptions::default()
        };
        // The server side never reads: the client's upload fills every buffer.
        let (near, _server, tunnel, runner) = v2_tunnel(opts);
        let writer = {
            let mut near = near.try_clone().unwrap();
            near.set_write_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            thread::spawn(move || {
                let block = vec![7u8; 64 * 1024];
                for _ in 0..4096 {
                    if near.write_all(&block).is_err() {
                        break;
                    }
                }
            })
        };
        let report = runner.join().unwrap();
        assert!(
            matches!(report.end, End::UploadStalled(_)),
            "{}",
            report.end
        );
        assert!(!report.reusable);
        // Gone with the tunnel: the client's socket closes.
        drop(tunnel);
        drop(near);
        writer.join().unwrap();
    }

    #[test]
    fn a_client_reset_ends_a_tunnel_whose_gateway_stopped_reading() {
        // The stall bound is far away: only the reset may end the tunnel
        // (after the FIN grace, on v2).
        let opts = PumpOptions {
            upload_stall: Duration::from_secs(600),
            fin_grace: Duration::from_millis(300),
            ..PumpOptions::default()
        };
        let (mut near, _server, _tunnel, runner) = v2_tunnel(opts);
        near.set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let block = vec![7u8; 64 * 1024];
        while near.write_all(&block).is_ok() {}
        socket::reset_on_close(&near).unwrap();
        drop(near);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !runner.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(runner.is_finished(), "the tunnel outlived its client");
        let report = runner.join().unwrap();
        assert!(matches!(report.end, End::SocketError(_)), "{}", report.end);
    }

    #[test]
    fn a_client_that_resets_still_lets_the_fin_keep_the_websocket() {
        let (near, mut server, tunnel, runner) = v2_tunnel(PumpOptions::default());
        server
            .send(Message::Binary(
                message_v2::encode_data(b"part of the answer").into(),
            ))
            .unwrap();
        let mut got = [0u8; 18];
        (&near).read_exact(&mut got).unwrap();
        // Unread data at close plus a zero linger: the kernel sends RST.
        server
            .send(Message::Binary(message_v2::encode_data(b"unread").into()))
            .unwrap();
        thread::sleep(Duration::from_millis(100));
        socket::reset_on_close(&near).unwrap();
        drop(near);
        thread::sleep(Duration::from_millis(200));
        server
            .send(Message::Binary(message_v2::encode_data(b"more").into()))
            .unwrap();
        send_fin(&mut server);
        assert_eq!(next_message(&mut server), message_v2::FIN_ACK);
        let report = runner.join().unwrap();
        assert!(report.reusable, "{}", report.end);
        assert!(tunnel.take_websocket().is_some());
    }
}
