//! The development gateway's data path: joins the target's TCP socket and
//! the relay's WebSocket, both directions at once.
//!
//! The WebSocket is non-blocking behind a mutex; each direction waits for
//! readiness with `poll(2)` without the lock, and socket writes happen
//! without the lock. An observer hears about incoming keepalives, data
//! chunks and pongs; pings go out on demand; the close is graceful (close
//! frame, `FIN`, then draining) so that the last response bytes reach the
//! relay before the connection goes away.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::stream::{GatewayStream, wait_ready};
use crate::wire as chunk;
use tungstenite::{Bytes, Message, WebSocket};

/// How long the gateway keeps reading (and discarding) from the relay
/// after it closed a tunnel, so its close is a `FIN`, not a reset that
/// could destroy response bytes still in flight.
const DRAIN_FOR: Duration = Duration::from_secs(2);

/// How long the gateway waits for the relay's FIN_ACK after its FIN.
pub const FIN_ACK_WAIT: Duration = Duration::from_secs(10);

/// Stack of the second pump thread.
const PUMP_STACK: usize = 256 * 1024;

/// How one tunnel is pumped.
#[derive(Debug, Clone)]
pub struct PumpConfig {
    /// Largest read from the target, and so the largest chunk sent.
    pub read_size: usize,
    /// Send a WebSocket ping this often (`--ping-every`).
    pub ping_every: Option<Duration>,
    /// How the relay's messages are read.
    pub framing: Framing,
}

/// The wire format of one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Generation 1: strict chunks.
    V1,
    /// Protocol v2 messages. Control messages are reported and otherwise
    /// ignored, except with `fin`: when the target ends, the gateway sends
    /// FIN, waits for FIN_ACK (discarding late data) and hands the
    /// WebSocket back for the next tunnel.
    V2 { fin: bool },
}

/// Things the observer hears about, as they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEvent {
    /// An empty chunk (or empty message) came from the relay.
    Keepalive,
    /// A data chunk of this many bytes came from the relay.
    ChunkIn(usize),
    PingSent,
    PongReceived,
    /// A WebSocket ping came from the relay (the library answers it).
    PingReceived,
    /// A v2 control message (other than an awaited FIN_ACK), ignored.
    Control(u64),
    /// The gateway sent FIN.
    FinSent,
    /// Data that came after the FIN, discarded.
    AfterFin(usize),
}

/// What a finished tunnel did.
#[derive(Debug)]
pub struct PumpReport {
    /// Data bytes from the relay written to the target.
    pub bytes_in: u64,
    /// Data bytes from the target sent to the relay.
    pub bytes_out: u64,
    /// What ended it first, in words.
    pub end: String,
    /// v2 with FIN: FIN went out.
    pub fin_sent: bool,
    /// v2 with FIN: the relay's FIN_ACK came, and here is the WebSocket,
    /// blocking again, for the next tunnel.
    pub reusable: Option<WebSocket<GatewayStream>>,
}

struct Shared {
    target: TcpStream,
    ws: Mutex<WebSocket<GatewayStream>>,
    /// The WebSocket's TCP socket, for `poll` and `shutdown` without the lock.
    ws_fd: RawFd,
    cfg: PumpConfig,
    closing: AtomicBool,
    fin_sent: AtomicBool,
    fin_acked: AtomicBool,
    end: Mutex<Option<String>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The target ended (or the send to the relay failed): close gracefully.
    Target,
    /// The relay's side ended.
    Ws,
}

/// Pumps until either side ends, calling `observe` for each [`PumpEvent`].
/// Uses the calling thread and one more.
pub fn run(
    target: TcpStream,
    ws: WebSocket<GatewayStream>,
    cfg: PumpConfig,
    observe: &(dyn Fn(PumpEvent) + Sync),
) -> io::Result<PumpReport> {
    let tcp = ws.get_ref().tcp();
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(None)?;
    tcp.set_nonblocking(true)?;
    target.set_read_timeout(None)?;
    target.set_write_timeout(None)?;
    let ws_fd = tcp.as_raw_fd();
    let shared = Shared {
        target,
        ws: Mutex::new(ws),
        ws_fd,
        cfg,
        closing: AtomicBool::new(false),
        fin_sent: AtomicBool::new(false),
        fin_acked: AtomicBool::new(false),
        end: Mutex::new(None),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
    };
    thread::scope(|s| {
        let down = thread::Builder::new()
            .name("gw-ws-to-target".into())
            .stack_size(PUMP_STACK)
            .spawn_scoped(s, || {
                let end = shared.ws_to_target(observe);
                shared.finish(end, Side::Ws);
            });
        match down {
            Ok(handle) => {
                let end = shared.target_to_ws(observe);
                shared.finish(end, Side::Target);
                if handle.join().is_err() {
                    shared.finish("pump thread panicked".into(), Side::Ws);
                }
            }
            Err(e) => shared.finish(format!("cannot start pump thread: {e}"), Side::Ws),
        }
    });
    let end = shared
        .end
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_else(|| "unknown".into());
    let fin_sent = shared.fin_sent.load(Ordering::SeqCst);
    let reusable = if shared.fin_acked.load(Ordering::SeqCst) {
        let ws = shared.ws.into_inner().unwrap_or_else(|p| p.into_inner());
        ws.get_ref().tcp().set_nonblocking(false)?;
        Some(ws)
    } else {
        if fin_sent {
            // FIN without FIN_ACK: the WebSocket is not reusable.
            // SAFETY: ws_fd belongs to the stream inside shared.ws, alive here.
            unsafe { libc::shutdown(ws_fd, libc::SHUT_RDWR) };
        }
        None
    };
    Ok(PumpReport {
        bytes_in: shared.bytes_in.load(Ordering::Relaxed),
        bytes_out: shared.bytes_out.load(Ordering::Relaxed),
        end,
        fin_sent,
        reusable,
    })
}

impl Shared {
    fn lock_ws(&self) -> MutexGuard<'_, WebSocket<GatewayStream>> {
        self.ws.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Target to relay: one chunk per read, pings when due.
    fn target_to_ws(&self, observe: &(dyn Fn(PumpEvent) + Sync)) -> String {
        let fd = self.target.as_raw_fd();
        let headroom = chunk::MAX_OVERHEAD;
        let mut next_ping = self.cfg.ping_every.map(|p| Instant::now() + p);
        loop {
            if self.closing.load(Ordering::SeqCst) {
                return "closing".into();
            }
            if let (Some(due), Some(every)) = (next_ping, self.cfg.ping_every)
                && Instant::now() >= due
            {
                let ping = Message::Ping(Bytes::from_static(b"ccr-dev-gateway"));
                if let Err(e) = self.send(ping) {
                    return format!("websocket error: {e}");
                }
                observe(PumpEvent::PingSent);
                next_ping = Some(Instant::now() + every);
                continue;
            }
            let wait = next_ping.map(|d| d.saturating_duration_since(Instant::now()));
            match wait_ready(fd, libc::POLLIN, wait) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return format!("target poll failed: {e}"),
            }
            // A fresh buffer per read: it moves into the frame without a copy.
            let mut buf = vec![0u8; headroom + self.cfg.read_size];
            let n = match (&self.target).read(&mut buf[headroom..]) {
                Ok(0) => {
                    if self.cfg.framing == (Framing::V2 { fin: true }) {
                        // Marked before sending: the FIN_ACK can come back
                        // before `send` returns, and must be recognised.
                        self.end
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert_with(|| "target closed".into());
                        self.fin_sent.store(true, Ordering::SeqCst);
                        let fin = Message::Binary(Bytes::from_static(chunk::FIN));
                        match self.send(fin) {
                            Ok(()) => observe(PumpEvent::FinSent),
                            Err(e) => return format!("cannot send FIN: {e}"),
                        }
                    }
                    return "target closed".into();
                }
                Ok(n) => n,
                Err(e) if transient(&e) => continue,
                Err(e) => return format!("target read failed: {e}"),
            };
            let start = headroom - chunk::header_len(n);
            chunk::write_header(&mut buf[start..headroom], n);
            buf.truncate(headroom + n);
            if let Err(e) = self.send(Message::Binary(Bytes::from(buf).slice(start..))) {
                return format!("websocket error: {e}");
            }
            self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Sends one message, waiting (without the lock) until it is all written.
    fn send(&self, message: Message) -> Result<(), String> {
        let mut ws = self.lock_ws();
        match ws.write(message) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if transient(&e) => {}
            Err(e) => return Err(e.to_string()),
        }
        loop {
            match ws.flush() {
                Ok(()) => return Ok(()),
                Err(tungstenite::Error::Io(e)) if transient(&e) => {
                    drop(ws);
                    if self.closing.load(Ordering::SeqCst) {
                        return Err("tunnel closing".into());
                    }
                    wait_ready(self.ws_fd, libc::POLLOUT, Some(Duration::from_secs(1)))
                        .map_err(|e| e.to_string())?;
                    ws = self.lock_ws();
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Relay to target: every message until none is buffered, chunk data
    /// written to the target without the lock. Once the tunnel is closing,
    /// reads on (discarding) until the relay closes or `DRAIN_FOR` passes.
    fn ws_to_target(&self, observe: &(dyn Fn(PumpEvent) + Sync)) -> String {
        let mut drain_until: Option<Instant> = None;
        loop {
            if drain_until.is_none() {
                if self.fin_sent.load(Ordering::SeqCst) {
                    drain_until = Some(Instant::now() + FIN_ACK_WAIT);
                } else if self.closing.load(Ordering::SeqCst) {
                    drain_until = Some(Instant::now() + DRAIN_FOR);
                }
            }
            let message = self.lock_ws().read();
            let draining = drain_until.is_some();
            let fin_sent = self.fin_sent.load(Ordering::SeqCst);
            match message {
                Ok(Message::Binary(encoded)) => match self.decode(&encoded) {
                    Ok(Incoming::Control(chunk::CONTROL_FIN_ACK)) if fin_sent => {
                        self.fin_acked.store(true, Ordering::SeqCst);
                        return "fin-ack".into();
                    }
                    Ok(Incoming::Control(c)) => observe(PumpEvent::Control(c)),
                    Ok(Incoming::Data([])) => observe(PumpEvent::Keepalive),
                    Ok(Incoming::Data(data)) if fin_sent => {
                        observe(PumpEvent::AfterFin(data.len()))
                    }
                    Ok(Incoming::Data(data)) => {
                        observe(PumpEvent::ChunkIn(data.len()));
                        if draining {
                            continue;
                        }
                        if let Err(e) = (&self.target).write_all(data) {
                            if self.closing.load(Ordering::SeqCst) {
                                continue;
                            }
                            return format!("target write failed: {e}");
                        }
                        self.bytes_in
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) if draining => {}
                    Err(e) => return format!("malformed chunk from the relay: {e}"),
                },
                Ok(Message::Text(_)) if draining => {}
                Ok(Message::Text(_)) => return "relay sent a text frame".into(),
                Ok(Message::Pong(_)) => observe(PumpEvent::PongReceived),
                Ok(Message::Ping(_)) => observe(PumpEvent::PingReceived),
                Ok(Message::Frame(_)) => {}
                Ok(Message::Close(_)) => {
                    // Send the queued close reply if the socket takes it now.
                    let _ = self.lock_ws().flush();
                    return "relay closed the websocket".into();
                }
                Err(tungstenite::Error::Io(e)) if transient(&e) => {
                    let wait = match drain_until {
                        Some(until) => {
                            let left = until.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return "drained".into();
                            }
                            left
                        }
                        None => Duration::from_secs(1),
                    };
                    if let Err(e) = wait_ready(self.ws_fd, libc::POLLIN, Some(wait)) {
                        return format!("websocket poll failed: {e}");
                    }
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return "relay closed the websocket".into();
                }
                Err(tungstenite::Error::Io(e))
                    if e.kind() == io::ErrorKind::UnexpectedEof || draining =>
                {
                    return format!("relay connection ended: {e}");
                }
                Err(e) => return format!("websocket error: {e}"),
            }
        }
    }

    /// One message from the relay, read as this tunnel's framing says.
    fn decode<'a>(&self, message: &'a [u8]) -> Result<Incoming<'a>, chunk::WireError> {
        match self.cfg.framing {
            Framing::V1 => chunk::decode(message).map(Incoming::Data),
            Framing::V2 { .. } => {
                let m = chunk::decode_v2(message)?;
                Ok(match m.control {
                    0 => Incoming::Data(m.data),
                    c => Incoming::Control(c),
                })
            }
        }
    }

    /// Records the first end and closes the tunnel; later calls only let
    /// their thread go.
    fn finish(&self, end: String, side: Side) {
        if self.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        log::debug!("tunnel ending: {end}");
        self.end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(end);
        match side {
            // FIN is out: the WebSocket stays open while FIN_ACK is awaited
            // (the FIN_ACK may even end the pump first); `run` shuts it
            // down if none came.
            _ if self.fin_sent.load(Ordering::SeqCst) => {}
            Side::Target => {
                // Graceful: close frame, then FIN once it is out; the other
                // thread drains until the relay closes too.
                let deadline = Instant::now() + DRAIN_FOR;
                let mut ws = self.lock_ws();
                let mut result = ws.close(None);
                loop {
                    match result {
                        Err(tungstenite::Error::Io(e)) if transient(&e) => {
                            drop(ws);
                            let left = deadline.saturating_duration_since(Instant::now());
                            if left.is_zero()
                                || !matches!(
                                    wait_ready(self.ws_fd, libc::POLLOUT, Some(left)),
                                    Ok(true)
                                )
                            {
                                break;
                            }
                            ws = self.lock_ws();
                            result = ws.flush();
                        }
                        _ => break,
                    }
                }
                // SAFETY: ws_fd belongs to the stream inside self.ws, alive as long as self.
                unsafe { libc::shutdown(self.ws_fd, libc::SHUT_WR) };
            }
            Side::Ws => {
                // SAFETY: as above.
                unsafe { libc::shutdown(self.ws_fd, libc::SHUT_RDWR) };
            }
        }
        let _ = self.target.shutdown(Shutdown::Both);
    }
}

/// A decoded message from the relay.
enum Incoming<'a> {
    /// Tunnel bytes (empty: a keepalive).
    Data(&'a [u8]),
    /// A v2 control message.
    Control(u64),
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
