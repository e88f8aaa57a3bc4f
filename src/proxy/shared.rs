//! What every connection thread of one relay shares: the listener, the
//! gateway client, the access rule and limits, the connections still
//! sending their head (evicted oldest first when room is needed), and the
//! registry of open tunnels and pipes that a stop closes.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

use super::access::Access;
use super::monitor::Monitor;
use super::route::IncludeList;
use crate::config::Limits;
use crate::gateway::Gateway;
use crate::sys::lock::lock;
use crate::tunnel::Tunnel;
use crate::tunnel::pipe::Pipe;

/// The proxy's own state, apart from the gateway client: who may use it,
/// its limits, its routes, and the monitor the status page reads.
pub struct ProxyState {
    pub access: Access,
    pub limits: Limits,
    pub monitor: Arc<Monitor>,
    pub selective: Option<IncludeList>,
}

/// The relay's shared state.
pub(super) struct Shared {
    pub(super) listener: TcpListener,
    pub(super) gateway: Arc<Gateway>,
    /// Who may use the proxy.
    pub(super) access: Access,
    pub(super) limits: Limits,
    /// Counters and recent failures, for the status page.
    pub(super) monitor: Arc<Monitor>,
    /// Selective mode (agent proxy): only hosts on this list go through
    /// the gateway; the others are dialled directly. `None`: all tunnelled.
    pub(super) selective: Option<IncludeList>,
    pub(super) stopping: AtomicBool,
    pub(super) tunnels: Mutex<HashMap<u64, Weak<dyn Abort>>>,
    pub(super) next_id: AtomicU64,
    /// Connection threads alive, with a condvar to wait for them at shutdown.
    pub(super) live: Mutex<usize>,
    pub(super) all_done: Condvar,
    /// Connections whose request head has not arrived yet, oldest first
    /// (by accept order), with a handle to evict them.
    pub(super) pending_heads: Mutex<BTreeMap<u64, Pending>>,
    pub(super) next_conn: AtomicU64,
}

/// A connection still waiting for its head, as the accept loop sees it.
pub(super) struct Pending {
    /// A second handle on the client's socket, to wake its thread.
    socket: TcpStream,
    /// Set when it is evicted: its thread answers 503.
    evicted: Arc<AtomicBool>,
}

/// The answer to the oldest connection without its head when a new one
/// needs its place (`--max-pending-heads`).
pub(super) const EVICTED: &str =
    "too many connections still sending their request (--max-pending-heads), try again later";

/// Records connection `id` as waiting for its head, evicting the oldest
/// such connection if there are already `max_pending_heads`.
pub(super) fn track_pending<'a>(
    shared: &'a Shared,
    id: u64,
    client: &TcpStream,
) -> io::Result<PendingHead<'a>> {
    let socket = client.try_clone()?;
    let evicted = Arc::new(AtomicBool::new(false));
    let mut pending = lock(&shared.pending_heads);
    while pending.len() >= shared.limits.max_pending_heads {
        // Threads reach this in any order: a connection older than every
        // one tracked gives way itself, so the oldest by accept order
        // always goes first.
        if pending
            .first_key_value()
            .is_none_or(|(&oldest, _)| oldest > id)
        {
            evicted.store(true, Ordering::SeqCst);
            return Ok(PendingHead {
                shared,
                id,
                evicted,
            });
        }
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
    Ok(PendingHead {
        shared,
        id,
        evicted,
    })
}

/// Counts a connection as waiting for its head until dropped (the head
/// arrived, or the connection ended without one).
pub(super) struct PendingHead<'a> {
    shared: &'a Shared,
    id: u64,
    evicted: Arc<AtomicBool>,
}

impl PendingHead<'_> {
    /// Whether the connection was evicted to make room for a newer one.
    pub(super) fn evicted(&self) -> bool {
        self.evicted.load(Ordering::SeqCst)
    }
}

impl Drop for PendingHead<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending_heads).remove(&self.id);
    }
}

impl Shared {
    pub(super) fn new(listener: TcpListener, gateway: Gateway, state: ProxyState) -> Shared {
        Shared {
            listener,
            gateway: Arc::new(gateway),
            access: state.access,
            limits: state.limits,
            monitor: state.monitor,
            selective: state.selective,
            stopping: AtomicBool::new(false),
            tunnels: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            live: Mutex::new(0),
            all_done: Condvar::new(),
            pending_heads: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(0),
        }
    }

    /// Whether the relay is stopping.
    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Registers an open tunnel or pipe so that a stop closes it, until the
    /// returned guard is dropped. A stop that came while it was opening has
    /// missed it: it is closed at once.
    pub(super) fn register<T: Abort + 'static>(&self, open: Arc<T>) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let registered: Arc<dyn Abort> = open;
        lock(&self.tunnels).insert(id, Arc::downgrade(&registered));
        if self.is_stopping() {
            registered.abort();
        }
        Registration { shared: self, id }
    }
}

/// An open tunnel or pipe in the shutdown registry, removed on drop.
pub(super) struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        lock(&self.shared.tunnels).remove(&self.id);
    }
}

/// What the shutdown registry can end: a tunnel or a direct pipe.
pub(super) trait Abort: Send + Sync {
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
