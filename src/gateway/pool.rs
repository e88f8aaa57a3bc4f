//! The pool of idle gateway WebSockets (protocol v2): a tunnel that ended
//! with the server's FIN hands its WebSocket back here, and the next CONNECT
//! takes it instead of dialling, which saves a TCP, TLS and upgrade round
//! trip per connection.
//!
//! The contract's rules: at most 4 pooled; the most recently pooled is taken
//! first (last in, first out); one idle over 10 s (`--pool-idle`) or older than 45 min, or
//! one the gateway has closed, is never handed out; keepalives continue while
//! pooled.
//!
//! The warm WebSocket (ours, not the contract's; `--keep-warm`, on by
//! default): the newest pooled WebSocket is exempt from the idle limit and
//! stays pooled up to its age limit, kept by the same keepalives and
//! liveness, so an agent's next command, seconds or minutes later, finds a
//! WebSocket instead of dialling. The others expire at the idle limit. The
//! pool never dials: once the gateway closes the warm one, the next tunnel
//! dials as it would without it.
//!
//! How, without a thread per pooled socket:
//!
//! - One keeper thread (`ws-pool`, small stack) `poll(2)`s every pooled
//!   socket's fd for readability, plus the read end of a socket pair that
//!   [`Pool::put`] and [`Pool::shutdown`] write one byte to (the wake-up). It
//!   sleeps until the earliest of: a keepalive due, an idle expiry, an age
//!   expiry, or a wake.
//! - After every wake, under the pool's lock, it looks at every pooled
//!   socket (at most a handful): expired ones are closed; each is read,
//!   non-blocking, until `WouldBlock`, because a TLS stream may hold
//!   decrypted bytes that do not wake `poll`. A ping is fine (tungstenite
//!   queues the pong, which is flushed), so is an empty data message
//!   (`0A 00`, or an empty binary message). Anything else (a close, data,
//!   text, an error, EOF) means the socket can no longer carry a tunnel: it
//!   is retired (a best-effort close frame, then dropped).
//! - A keepalive (`0A 00`, the v2 empty data message) goes out on a pooled
//!   socket when `keepalive_interval` has passed since the last send.
//! - Liveness ([`crate::gateway::liveness`]): a pooled socket that heard nothing
//!   from the gateway for `keepalive_interval` gets a WebSocket Ping; when
//!   nothing comes back within the deadline (once the gateway is known to
//!   answer pings) it is retired and `gateway_unresponsive` recorded.
//! - The keeper never maps an fd back to a socket: it polls a snapshot of
//!   fds without the lock, then re-examines the pool under the lock. An fd
//!   number reused once a tunnel took its socket and closed it can only cause
//!   a spurious wake, which is harmless. Sockets carry a unique id for logs.
//! - [`Pool::take`] and the keeper work under one lock, and `take` removes
//!   the socket from the pool before releasing it, so the keeper never
//!   touches a socket a tunnel now owns. `take` also reads the socket once
//!   more (non-blocking) before handing it out, so a close that arrived a
//!   moment ago is noticed even if the keeper has not run yet.
//!
//! The keeper thread and its look at each socket are in `keeper`.
//!
//! Pooled sockets are non-blocking, and [`Pool::take`] hands them back that
//! way. A pooled socket holds nothing beyond the WebSocket itself and a few
//! timestamps.
//!
//! ```
//! use std::time::Duration;
//! use ccr_relay::gateway::pool::{Pool, PoolConfig};
//!
//! let pool = Pool::new(PoolConfig {
//!     idle_timeout: Duration::from_secs(5),
//!     ..PoolConfig::default()
//! })?;
//! assert_eq!(pool.len(), 0);
//! assert!(pool.take().is_none());
//! pool.shutdown();
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tungstenite::WebSocket;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::gateway::GatewayStream;
use crate::gateway::liveness::{Liveness, Watch};
use crate::sys::lock::lock;

mod keeper;

use keeper::{keeper, look_after};

/// Stack for the keeper thread: it reads small control frames (TLS
/// included) and writes keepalives; untouched pages cost no memory.
const KEEPER_STACK: usize = 128 * 1024;

/// The v2 keepalive: a data message with empty data.
const KEEPALIVE: [u8; 2] = [0x0A, 0x00];

/// How the pool behaves. The defaults are the contract's.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most WebSockets pooled at once; when full, the oldest pooled one is
    /// closed to make room. 0 disables pooling (every `put` is refused).
    pub max_idle: usize,
    /// A WebSocket pooled longer than this is closed, never handed out.
    pub idle_timeout: Duration,
    /// A WebSocket opened longer ago than this is closed, never handed out
    /// (and refused by `put`).
    pub max_age: Duration,
    /// A keepalive goes out on a pooled WebSocket when nothing was sent on it
    /// for this long. `Duration::ZERO` disables keepalives (and Pings).
    pub keepalive_interval: Duration,
    /// The gateway's liveness: a pooled WebSocket silent for
    /// `keepalive_interval` gets a Ping, and is retired when the deadline
    /// passes without an answer. `None`: no Pings.
    pub liveness: Option<Liveness>,
    /// The newest pooled WebSocket is exempt from `idle_timeout` (it still
    /// expires at `max_age`).
    pub keep_warm: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle: 4,
            idle_timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(45 * 60),
            keepalive_interval: Duration::from_secs(30),
            liveness: None,
            keep_warm: true,
        }
    }
}

/// The warm WebSocket, as the status page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warm {
    /// Since the WebSocket was opened.
    pub age: Duration,
    /// Since it was pooled.
    pub idle: Duration,
}

/// A WebSocket taken from the pool, with its timestamps.
pub struct Pooled {
    /// Non-blocking, as it was pooled; any pong or keepalive the keeper
    /// queued but could not yet write goes out with the next flush.
    pub ws: WebSocket<GatewayStream>,
    /// When the WebSocket was opened (as given to [`Pool::put`]).
    pub opened: Instant,
    /// When it went into the pool.
    pub pooled_at: Instant,
}

impl fmt::Debug for Pooled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("opened", &self.opened)
            .field("pooled_at", &self.pooled_at)
            .finish_non_exhaustive()
    }
}

/// The pool of idle WebSockets. Cheap to clone: clones share one pool. The
/// pool shuts down (closing every pooled WebSocket and stopping the keeper)
/// on [`Pool::shutdown`] or when the last clone is dropped.
///
/// How a tunnel uses it (`gateway`, `tunnel_ended_with_fin` stand for the
/// caller's own):
///
/// ```no_run
/// # use std::time::Instant;
/// # use ccr_relay::gateway::pool::{Pool, PoolConfig};
/// # fn demo(gateway: &ccr_relay::gateway::Gateway, tunnel_ended_with_fin: bool)
/// #     -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(PoolConfig::default())?;
/// let (ws, opened) = match pool.take() {
///     // A reused WebSocket: no HELLO, send the preamble with fresh credentials.
///     Some(pooled) => (pooled.ws, pooled.opened),
///     None => (gateway.open_websocket().map_err(|e| e.to_string())?, Instant::now()),
/// };
/// // ... pump the tunnel over `ws` ...
/// if tunnel_ended_with_fin {
///     pool.put(ws, opened); // closes it itself if refused
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pool {
    handle: Arc<Handle>,
}

/// What the clones of a [`Pool`] share. Dropping it shuts the pool down;
/// the keeper holds only [`Shared`], so it never keeps this alive.
struct Handle {
    shared: Arc<Shared>,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

/// What the pool's users and the keeper share.
struct Shared {
    config: PoolConfig,
    state: Mutex<State>,
    /// Written to (one byte, non-blocking) to wake the keeper.
    wake_tx: UnixStream,
}

struct State {
    /// Oldest first; `take` pops from the end (last in, first out).
    entries: Vec<Entry>,
    stopped: bool,
    next_id: u64,
}

/// One pooled WebSocket.
struct Entry {
    id: u64,
    ws: WebSocket<GatewayStream>,
    opened: Instant,
    pooled_at: Instant,
    /// Last keepalive sent (or when pooled: the tunnel had just sent FIN_ACK).
    last_sent: Instant,
    /// A pong or keepalive is queued but the socket would not take it yet.
    flush_pending: bool,
    /// The last look stopped at [`keeper::MAX_READS_PER_LOOK`]: what is left may sit
    /// inside TLS, where it does not wake `poll`, so look again soon.
    more_to_read: bool,
    /// When the gateway was last heard on it, and the Ping out, if any.
    watch: Watch,
}

/// Why a WebSocket left the pool other than by `take`.
#[derive(Debug)]
enum Retire {
    Closed,
    Idle,
    TooOld,
    /// The gateway sent something a pooled socket must not get.
    Unexpected(&'static str),
    Error(String),
    /// Nothing came back within the liveness deadline of a Ping.
    Unresponsive,
    Full,
    Shutdown,
}

impl fmt::Display for Retire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retire::Closed => f.write_str("closed"),
            Retire::Idle => f.write_str("idle too long"),
            Retire::TooOld => f.write_str("too old"),
            Retire::Unexpected(what) => write!(f, "gateway sent {what} while pooled"),
            Retire::Error(e) => write!(f, "error while pooled: {e}"),
            Retire::Unresponsive => f.write_str("gateway unresponsive: a Ping went unanswered"),
            Retire::Full => f.write_str("pool full, oldest makes room"),
            Retire::Shutdown => f.write_str("pool shutting down"),
        }
    }
}

impl Pool {
    /// Creates an empty pool and starts its keeper thread.
    pub fn new(config: PoolConfig) -> io::Result<Pool> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                entries: Vec::new(),
                stopped: false,
                next_id: 1,
            }),
            wake_tx,
        });
        let for_keeper = Arc::clone(&shared);
        let keeper = thread::Builder::new()
            .name("ws-pool".into())
            .stack_size(KEEPER_STACK)
            .spawn(move || keeper(&for_keeper, wake_rx))?;
        Ok(Pool {
            handle: Arc::new(Handle {
                shared,
                keeper: Mutex::new(Some(keeper)),
            }),
        })
    }

    /// Pools `ws`, opened at `opened`. The caller has checked the contract's
    /// conditions (v2, the tunnel got an answer and ended with the server's
    /// FIN, FIN_ACK sent). Returns `false` if refused (closed, as old as
    /// `max_age`, pooling disabled, pool shut down); a refused WebSocket is
    /// closed here. When the pool is full, the oldest pooled one is closed to
    /// make room. The WebSocket's socket becomes non-blocking.
    pub fn put(&self, ws: WebSocket<GatewayStream>, opened: Instant) -> bool {
        let shared = &self.handle.shared;
        let config = &shared.config;
        let now = Instant::now();
        let refusal = if config.max_idle == 0 {
            Some(Retire::Full)
        } else if !ws.can_write() {
            Some(Retire::Closed)
        } else if now.saturating_duration_since(opened) >= config.max_age {
            Some(Retire::TooOld)
        } else if let Err(e) = ws.get_ref().tcp().set_nonblocking(true) {
            Some(Retire::Error(e.to_string()))
        } else {
            None
        };
        if let Some(why) = refusal {
            log::debug!("websocket not pooled: {why}");
            close_quietly(ws);
            return false;
        }
        let mut evicted = Vec::new();
        {
            let mut state = shared.lock();
            if state.stopped {
                drop(state);
                log::debug!("websocket not pooled: {}", Retire::Shutdown);
                close_quietly(ws);
                return false;
            }
            while state.entries.len() >= config.max_idle {
                let oldest = state.entries.remove(0);
                evicted.push((oldest, Retire::Full));
            }
            let id = state.next_id;
            state.next_id += 1;
            state.entries.push(Entry {
                id,
                ws,
                opened,
                pooled_at: now,
                last_sent: now,
                flush_pending: false,
                more_to_read: false,
                watch: Watch::new(now),
            });
            log::debug!("websocket #{id} pooled ({} idle)", state.entries.len());
        }
        shared.wake();
        retire_all(evicted);
        true
    }

    /// Takes the most recently pooled WebSocket that can still carry a
    /// tunnel, closing any on the way that is closed, idle over
    /// `idle_timeout`, or older than `max_age`. `None` when there is none
    /// (dial a fresh one).
    pub fn take(&self) -> Option<Pooled> {
        let shared = &self.handle.shared;
        let mut retired = Vec::new();
        let found = {
            let mut state = shared.lock();
            let mut found = None;
            // Only the newest is warm: one popped after it was not, and may
            // have passed the idle limit before the keeper looked.
            let mut warm = shared.config.keep_warm;
            while let Some(mut entry) = state.entries.pop() {
                match look_after(&mut entry, &shared.config, Instant::now(), warm) {
                    Ok(()) => {
                        found = Some(entry);
                        break;
                    }
                    Err(why) => retired.push((entry, why)),
                }
                warm = false;
            }
            found
        };
        retire_all(retired);
        found.map(|entry| {
            log::debug!("websocket #{} taken from the pool", entry.id);
            Pooled {
                ws: entry.ws,
                opened: entry.opened,
                pooled_at: entry.pooled_at,
            }
        })
    }

    /// How many WebSockets are pooled right now.
    pub fn len(&self) -> usize {
        self.handle.shared.lock().entries.len()
    }

    /// The warm WebSocket, if one is held: the newest pooled one, when
    /// `keep_warm` is on.
    pub fn warm(&self) -> Option<Warm> {
        let shared = &self.handle.shared;
        if !shared.config.keep_warm {
            return None;
        }
        let state = shared.lock();
        let newest = state.entries.last()?;
        let now = Instant::now();
        Some(Warm {
            age: now.saturating_duration_since(newest.opened),
            idle: now.saturating_duration_since(newest.pooled_at),
        })
    }

    /// Whether the newest pooled WebSocket is kept past the idle limit.
    pub fn keeps_warm(&self) -> bool {
        self.handle.shared.config.keep_warm
    }

    /// Whether no WebSocket is pooled right now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every pooled WebSocket and stops the keeper (waiting for it).
    /// Later `put`s are refused. Idempotent; dropping the last clone of the
    /// pool does the same.
    pub fn shutdown(&self) {
        self.handle.shutdown();
    }

    /// Lets a test see whether the keeper still holds the shared state.
    #[cfg(test)]
    fn shared_weak(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.handle.shared)
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.handle.shared.config)
            .field("len", &self.len())
            .finish()
    }
}

impl Handle {
    fn shutdown(&self) {
        let entries = {
            let mut state = self.shared.lock();
            state.stopped = true;
            std::mem::take(&mut state.entries)
        };
        self.shared.wake();
        retire_all(entries.into_iter().map(|e| (e, Retire::Shutdown)).collect());
        let keeper = lock(&self.keeper).take();
        if let Some(keeper) = keeper {
            // The keeper only ever holds the lock briefly and wakes on the
            // byte just written, so this join is short.
            if keeper.join().is_err() {
                log::warn!("websocket pool keeper panicked");
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not leave the pool unusable: sockets in it
        // are still whole (every change to `entries` is a single push/pop).
        lock(&self.state)
    }

    fn wake(&self) {
        // WouldBlock means wake-ups are already pending: good enough.
        let _ = (&self.wake_tx).write(&[1]);
    }
}

/// Closes retired WebSockets; called without the pool's lock.
fn retire_all(entries: Vec<(Entry, Retire)>) {
    for (entry, why) in entries {
        log::debug!("pooled websocket #{} retired: {why}", entry.id);
        close_quietly(entry.ws);
    }
}

/// Best-effort close frame, then drop. Never waits: the socket is (or is
/// made) non-blocking, and a frame that does not fit is abandoned.
fn close_quietly(mut ws: WebSocket<GatewayStream>) {
    let tcp = ws.get_ref().tcp();
    let _ = tcp.set_nonblocking(true);
    let _ = ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }));
    // Closing a socket with unread input makes the kernel reset it, which
    // can destroy the close frame on its way. Drain a bounded amount first.
    let fd = ws.get_ref().tcp().as_raw_fd();
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        // SAFETY: a valid fd owned by `ws` and a buffer of the given length.
        let n = unsafe { libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keeper::MAX_READS_PER_LOOK;
    use super::*;
    use crate::gateway::liveness;
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::OnceLock;
    use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
    use tungstenite::{Bytes, Message};

    /// Every wait in these tests ends by this bound.
    const BOUND: Duration = Duration::from_secs(10);

    /// What the server side of one WebSocket observed.
    #[derive(Debug)]
    enum Event {
        Msg(Message),
        /// The connection ended (EOF, error or after the close handshake);
        /// the reason shows in assertion messages.
        #[allow(dead_code)]
        Ended(String),
    }

    /// The server (gateway) side of one WebSocket, run by a real tungstenite
    /// server in its own thread; commands in, observations out.
    struct Far {
        events: Receiver<Event>,
        cmds: Sender<Message>,
    }

    impl Far {
        fn send(&self, msg: Message) {
            self.cmds.send(msg).unwrap();
        }

        /// Waits (bounded) for an event matching `want`; false if none came.
        fn saw(&self, want: impl Fn(&Event) -> bool) -> bool {
            let deadline = Instant::now() + BOUND;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.events.recv_timeout(left) {
                    Ok(e) if want(&e) => return true,
                    Ok(_) => {}
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                        return false;
                    }
                }
            }
        }

        fn saw_close(&self) -> bool {
            self.saw(|e| matches!(e, Event::Msg(Message::Close(_))))
        }

        /// Collects every event for `during` (for "nothing happened" checks).
        fn events_for(&self, during: Duration) -> Vec<Event> {
            let deadline = Instant::now() + during;
            let mut out = Vec::new();
            while let Ok(e) = self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                out.push(e);
            }
            out
        }
    }

    /// Runs the server side of a WebSocket over `stream` until the
    /// connection ends, the test drops its [`Far`], or 60 s pass.
    fn serve<S: Read + Write>(
        stream: S,
        tcp: TcpStream,
        events: Sender<Event>,
        cmds: Receiver<Message>,
    ) {
        let mut ws = match tungstenite::accept(stream) {
            Ok(ws) => ws,
            Err(e) => {
                let _ = events.send(Event::Ended(format!("handshake: {e}")));
                return;
            }
        };
        // A short read timeout lets one thread both read and obey commands.
        tcp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            loop {
                match cmds.try_recv() {
                    // Buffered, then written at once: several frames can
                    // share one TCP segment (and one TLS record).
                    Ok(msg) => {
                        let _ = ws.write(msg);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            let _ = ws.flush();
            match ws.read() {
                Ok(msg) => {
                    if events.send(Event::Msg(msg)).is_err() {
                        return;
                    }
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    let _ = events.send(Event::Ended(e.to_string()));
                    return;
                }
            }
        }
    }

    /// A self-signed certificate and key for `localhost`, made once, in memory.
    fn identity() -> native_tls::Identity {
        static PEM: OnceLock<crate::test_support::TestCert> = OnceLock::new();
        let cert = PEM.get_or_init(|| crate::test_support::self_signed("localhost"));
        native_tls::Identity::from_pkcs8(cert.pem.as_bytes(), cert.key.as_bytes()).unwrap()
    }

    /// A real WebSocket on loopback: the client side as the relay holds it,
    /// the server side in a thread. `tls` for wss.
    fn connect(tls: bool) -> (WebSocket<GatewayStream>, Far) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (event_tx, events) = mpsc::channel();
        let (cmds, cmd_rx) = mpsc::channel();
        let acceptor = tls.then(|| native_tls::TlsAcceptor::new(identity()).unwrap());
        thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let tcp_ref = tcp.try_clone().unwrap();
            match acceptor {
                Some(acceptor) => match acceptor.accept(tcp) {
                    Ok(tls) => serve(tls, tcp_ref, event_tx, cmd_rx),
                    Err(e) => {
                        let _ = event_tx.send(Event::Ended(format!("tls: {e}")));
                    }
                },
                None => serve(tcp, tcp_ref, event_tx, cmd_rx),
            }
        });
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(BOUND)).unwrap();
        let stream = if tls {
            let connector = native_tls::TlsConnector::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap();
            GatewayStream::Tls(Box::new(connector.connect("localhost", tcp).unwrap()))
        } else {
            GatewayStream::Plain(tcp)
        };
        let scheme = if tls { "wss" } else { "ws" };
        let (ws, _) = tungstenite::client(format!("{scheme}://localhost/ws"), stream).unwrap();
        ws.get_ref().tcp().set_read_timeout(None).unwrap();
        (ws, Far { events, cmds })
    }

    fn port(ws: &WebSocket<GatewayStream>) -> u16 {
        ws.get_ref().tcp().local_addr().unwrap().port()
    }

    /// Polls `cond` every 10 ms, at most [`BOUND`].
    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + BOUND;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        cond()
    }

    /// Sends one data message on a taken WebSocket and checks the server
    /// side of `far` gets it: the WebSocket still works.
    fn still_works(ws: &mut WebSocket<GatewayStream>, far: &Far) {
        let payload = Bytes::from_static(&[0x0A, 0x02, b'h', b'i']);
        let _ = ws.write(Message::Binary(payload.clone()));
        assert!(eventually(|| ws.flush().is_ok()));
        assert!(far.saw(|e| matches!(e, Event::Msg(Message::Binary(b)) if *b == payload)));
    }

    fn quiet() -> PoolConfig {
        PoolConfig {
            max_idle: 4,
            idle_timeout: Duration::from_secs(60),
            max_age: Duration::from_secs(600),
            keepalive_interval: Duration::from_secs(60),
            liveness: None,
            keep_warm: false,
        }
    }

    /// Idle limit 300 ms, the newest kept warm.
    fn warm_after_300ms() -> PoolConfig {
        PoolConfig {
            idle_timeout: Duration::from_millis(300),
            keep_warm: true,
            ..quiet()
        }
    }

    #[test]
    fn the_newest_stays_pooled_past_the_idle_limit_the_others_expire() {
        let pool = Pool::new(warm_after_300ms()).unwrap();
        let (older, older_far) = connect(false);
        assert!(pool.put(older, Instant::now()));
        let (newest, newest_far) = connect(false);
        let newest_port = port(&newest);
        assert!(pool.put(newest, Instant::now()));
        // The older one goes at the idle limit, by the keeper.
        assert!(older_far.saw_close(), "the older one was not closed");
        assert!(eventually(|| pool.len() == 1));
        // The newest outlives the limit several times over, then carries a
        // tunnel.
        thread::sleep(Duration::from_millis(1000));
        assert_eq!(pool.len(), 1);
        let warm = pool.warm().expect("a warm WebSocket");
        assert!(warm.idle >= Duration::from_millis(1000), "{warm:?}");
        assert!(warm.age >= warm.idle, "{warm:?}");
        let mut pooled = pool.take().expect("the warm one");
        assert_eq!(port(&pooled.ws), newest_port);
        still_works(&mut pooled.ws, &newest_far);
        assert!(pool.warm().is_none());
    }

    #[test]
    fn a_warm_one_expires_at_its_max_age() {
        let max_age = Duration::from_millis(900);
        let pool = Pool::new(PoolConfig {
            max_age,
            ..warm_after_300ms()
        })
        .unwrap();
        let (ws, far) = connect(false);
        let opened = Instant::now();
        assert!(pool.put(ws, opened));
        assert!(far.saw_close(), "not closed at its max age");
        assert!(opened.elapsed() >= max_age, "{:?}", opened.elapsed());
        assert!(pool.is_empty());
        assert!(pool.take().is_none());
    }

    #[test]
    fn without_keep_warm_no_warm_one_is_shown() {
        let pool = Pool::new(quiet()).unwrap();
        let (ws, _far) = connect(false);
        assert!(pool.put(ws, Instant::now()));
        assert!(!pool.keeps_warm());
        assert!(pool.warm().is_none());
        let pool = Pool::new(warm_after_300ms()).unwrap();
        assert!(pool.keeps_warm());
        assert!(pool.warm().is_none(), "none pooled yet");
    }

    /// A WebSocket whose server side, after the handshake, never reads or
    /// writes again (a frozen gateway) until the returned sender drops.
    fn connect_silent() -> (WebSocket<GatewayStream>, Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold, held) = mpsc::channel::<()>();
        thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let ws = tungstenite::accept(tcp).unwrap();
            let _ = held.recv_timeout(Duration::from_secs(60));
            drop(ws);
        });
        let tcp = TcpStream::connect(addr).unwrap();
        let (ws, _) = tungstenite::client("ws://localhost/ws", GatewayStream::Plain(tcp)).unwrap();
        (ws, hold)
    }

    /// Pings after 200 ms of silence, a 300 ms deadline.
    fn watched(liveness: &Liveness) -> PoolConfig {
        PoolConfig {
            keepalive_interval: Duration::from_millis(200),
            liveness: Some(liveness.clone()),
            ..quiet()
        }
    }

    #[test]
    fn a_silent_gateway_known_to_answer_pings_is_retired_and_recorded() {
        let monitor = Arc::new(crate::proxy::status::Monitor::default());
        let liveness = Liveness::with_monitor(Duration::from_millis(300), Some(monitor.clone()));
        liveness.pong(liveness::PING_PAYLOAD);
        let pool = Pool::new(watched(&liveness)).unwrap();
        let (ws, _hold) = connect_silent();
        let put_at = Instant::now();
        assert!(pool.put(ws, Instant::now()));
        assert!(eventually(|| pool.is_empty()), "still pooled");
        let took = put_at.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        let failures = monitor.failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(
            failures[0].kind,
            crate::proxy::status::Kind::GatewayUnresponsive
        );
    }

    #[test]
    fn a_silent_gateway_not_known_to_answer_pings_stays_pooled() {
        let liveness = Liveness::new(Duration::from_millis(300));
        let pool = Pool::new(watched(&liveness)).unwrap();
        let (ws, _hold) = connect_silent();
        assert!(pool.put(ws, Instant::now()));
        thread::sleep(Duration::from_millis(1500));
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn a_gateway_answering_pings_stays_pooled_past_many_deadlines() {
        let liveness = Liveness::new(Duration::from_millis(300));
        let pool = Pool::new(watched(&liveness)).unwrap();
        let (ws, far) = connect(false);
        assert!(pool.put(ws, Instant::now()));
        assert!(far.saw(
            |e| matches!(e, Event::Msg(Message::Ping(p)) if p[..] == *liveness::PING_PAYLOAD)
        ));
        assert!(
            eventually(|| liveness.answers_pings()),
            "the pong was not noted"
        );
        thread::sleep(Duration::from_millis(1500));
        assert_eq!(pool.len(), 1);
        let mut pooled = pool.take().expect("still pooled");
        still_works(&mut pooled.ws, &far);
    }

    #[test]
    fn last_in_first_out() {
        let pool = Pool::new(quiet()).unwrap();
        let mut fars = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..3 {
            let (ws, far) = connect(false);
            ports.push(port(&ws));
            assert!(pool.put(ws, Instant::now()));
            fars.push(far);
        }
        assert_eq!(pool.len(), 3);
        for i in (0..3).rev() {
            let mut pooled = pool.take().expect("a pooled websocket");
            assert_eq!(port(&pooled.ws), ports[i]);
            assert!(pooled.pooled_at >= pooled.opened);
            still_works(&mut pooled.ws, &fars[i]);
        }
        assert!(pool.take().is_none());
        assert!(pool.is_empty());
    }

    #[test]
    fn full_pool_closes_the_oldest() {
        let pool = Pool::new(quiet()).unwrap();
        let mut fars = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..5 {
            let (ws, far) = connect(false);
            ports.push(port(&ws));
            assert!(pool.put(ws, Instant::now()));
            fars.push(far);
        }
        assert_eq!(pool.len(), 4);
        assert!(fars[0].saw_close(), "the oldest was closed");
        for i in (1..5).rev() {
            let pooled = pool.take().expect("a pooled websocket");
            assert_eq!(port(&pooled.ws), ports[i]);
        }
        assert!(pool.take().is_none());
    }

    #[test]
    fn idle_ones_expire_and_are_closed_by_the_keeper() {
        let pool = Pool::new(PoolConfig {
            idle_timeout: Duration::from_millis(300),
            ..quiet()
        })
        .unwrap();
        let (ws, far) = connect(false);
        let put_at = Instant::now();
        assert!(pool.put(ws, Instant::now()));
        assert!(eventually(|| pool.is_empty()), "keeper retired it");
        assert!(put_at.elapsed() >= Duration::from_millis(300));
        assert!(far.saw_close());
        assert!(pool.take().is_none());
    }

    #[test]
    fn take_skips_expired_ones_without_the_keeper() {
        // The keeper could race the take here; either way the expired one
        // must never be handed out.
        let pool = Pool::new(PoolConfig {
            idle_timeout: Duration::from_millis(200),
            ..quiet()
        })
        .unwrap();
        let (ws, _far) = connect(false);
        assert!(pool.put(ws, Instant::now()));
        thread::sleep(Duration::from_millis(250));
        assert!(pool.take().is_none());
    }

    #[test]
    fn old_ones_expire_and_too_old_ones_are_refused() {
        let max_age = Duration::from_millis(800);
        let pool = Pool::new(PoolConfig { max_age, ..quiet() }).unwrap();

        let (ws, far) = connect(false);
        let Some(long_ago) = Instant::now().checked_sub(max_age) else {
            return; // the clock is younger than max_age: nothing to test
        };
        assert!(!pool.put(ws, long_ago), "too old to pool");
        assert!(far.saw_close());

        let (ws, far) = connect(false);
        let opened = Instant::now()
            .checked_sub(Duration::from_millis(500))
            .unwrap();
        assert!(pool.put(ws, opened));
        assert_eq!(pool.len(), 1);
        assert!(eventually(|| pool.is_empty()), "keeper retired it");
        assert!(opened.elapsed() >= max_age);
        assert!(far.saw_close());
        assert!(pool.take().is_none());
    }

    #[test]
    fn a_close_from_the_gateway_is_noticed_while_pooled() {
        let pool = Pool::new(quiet()).unwrap();
        let (ws, far) = connect(false);
        assert!(pool.put(ws, Instant::now()));
        far.send(Message::Close(None));
        assert!(eventually(|| pool.is_empty()), "keeper noticed the close");
        // The close handshake completes: the server side gets the answer.
        assert!(far.saw_close());
    }

    #[test]
    fn a_ping_is_answered_and_keepalives_leave_it_pooled() {
        let pool = Pool::new(quiet()).unwrap();
        let (ws, far) = connect(false);
        assert!(pool.put(ws, Instant::now()));
        far.send(Message::Binary(Bytes::from_static(&KEEPALIVE)));
        far.send(Message::Binary(Bytes::new()));
        far.send(Message::Ping(Bytes::from_static(b"p1")));
        assert!(far.saw(|e| matches!(e, Event::Msg(Message::Pong(b)) if &b[..] == b"p1")));
        // Messages are handled in order: the keepalives were seen first.
        assert_eq!(pool.len(), 1);
        let mut pooled = pool.take().expect("still pooled");
        still_works(&mut pooled.ws, &far);
    }

    #[test]
    fn a_burst_of_pings_beyond_one_look_is_all_answered() {
        let pool = Pool::new(quiet()).unwrap();
        let (ws, far) = connect(false);
        assert!(pool.put(ws, Instant::now()));
        // One write: after the first read every ping sits in tungstenite's
        // buffer, where it does not wake poll; the keeper must come back.
        let n = 3 * MAX_READS_PER_LOOK;
        for i in 0..n {
            far.send(Message::Ping(Bytes::from(format!("{i}"))));
        }
        let last = format!("{}", n - 1);
        assert!(
            far.saw(|e| matches!(e, Event::Msg(Message::Pong(b)) if b[..] == *last.as_bytes()))
        );
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn data_from_the_gateway_retires_it() {
        let pool = Pool::new(quiet()).unwrap();
        let (ws, far) = connect(false);
        assert!(pool.put(ws, Instant::now()));
        far.send(Message::Binary(Bytes::from_static(&[0x0A, 0x01, b'x'])));
        assert!(eventually(|| pool.is_empty()), "keeper retired it");
        assert!(far.saw_close());

        let (ws, far) = connect(false);
        assert!(pool.put(ws, Instant::now()));
        far.send(Message::text("hello"));
        assert!(eventually(|| pool.is_empty()), "keeper retired it");
        assert!(far.saw_close());
    }

    #[test]
    fn keepalives_go_out_while_pooled() {
        let pool = Pool::new(PoolConfig {
            keepalive_interval: Duration::from_millis(200),
            ..quiet()
        })
        .unwrap();
        let (ws, far) = connect(false);
        let start = Instant::now();
        assert!(pool.put(ws, Instant::now()));
        let keepalive =
            |e: &Event| matches!(e, Event::Msg(Message::Binary(b)) if b[..] == KEEPALIVE);
        assert!(far.saw(keepalive));
        assert!(far.saw(keepalive));
        assert!(start.elapsed() >= Duration::from_millis(400));
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn nothing_is_sent_while_pooled_before_the_keepalive_is_due() {
        let pool = Pool::new(quiet()).unwrap();
        let (ws, far) = connect(false);
        assert!(pool.put(ws, Instant::now()));
        let seen = far.events_for(Duration::from_millis(500));
        assert!(seen.is_empty(), "{seen:?}");
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn shutdown_closes_all_stops_the_keeper_and_refuses_puts() {
        let pool = Pool::new(quiet()).unwrap();
        let keeper = pool.shared_weak();
        let mut fars = Vec::new();
        for _ in 0..2 {
            let (ws, far) = connect(false);
            assert!(pool.put(ws, Instant::now()));
            fars.push(far);
        }
        let (done_tx, done) = mpsc::channel();
        let other = pool.clone();
        thread::spawn(move || {
            other.shutdown();
            let _ = done_tx.send(());
        });
        done.recv_timeout(BOUND).expect("shutdown returned");
        assert!(pool.is_empty());
        for far in &fars {
            assert!(far.saw_close());
        }
        // The keeper thread has ended: only the handles still hold the state.
        assert_eq!(keeper.strong_count(), 1);

        let (ws, far) = connect(false);
        assert!(!pool.put(ws, Instant::now()));
        assert!(far.saw_close());
        pool.shutdown(); // idempotent
        assert!(pool.take().is_none());
    }

    #[test]
    fn dropping_the_last_clone_shuts_down() {
        let pool = Pool::new(quiet()).unwrap();
        let keeper = pool.shared_weak();
        let (ws, far) = connect(false);
        assert!(pool.put(ws, Instant::now()));
        let clone = pool.clone();
        drop(pool);
        assert_eq!(clone.len(), 1, "a clone keeps the pool alive");
        drop(clone);
        assert!(far.saw_close());
        assert!(keeper.upgrade().is_none(), "keeper thread ended");
    }

    #[test]
    fn over_tls_pings_keepalives_and_data_are_handled() {
        let pool = Pool::new(PoolConfig {
            keepalive_interval: Duration::from_millis(200),
            ..quiet()
        })
        .unwrap();
        let (ws, far) = connect(true);
        assert!(pool.put(ws, Instant::now()));
        assert!(far.saw(|e| matches!(e, Event::Msg(Message::Binary(b)) if b[..] == KEEPALIVE)));
        far.send(Message::Ping(Bytes::from_static(b"p2")));
        assert!(far.saw(|e| matches!(e, Event::Msg(Message::Pong(b)) if &b[..] == b"p2")));
        assert_eq!(pool.len(), 1);
        // A ping and data in one TLS record: both are read, the data retires it.
        far.send(Message::Ping(Bytes::from_static(b"p3")));
        far.send(Message::Binary(Bytes::from_static(&[0x0A, 0x01, b'x'])));
        assert!(eventually(|| pool.is_empty()), "keeper retired it");
        assert!(far.saw_close());
    }
}
