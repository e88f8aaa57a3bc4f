//! The local proxy: accepts clients on `127.0.0.1:<port>`, gives each its own
//! thread, answers what it cannot serve, and turns each CONNECT into a
//! [`Tunnel`] through the gateway. Tracks open tunnels so that stopping the
//! relay closes them all.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use super::connection;
use super::monitor::Monitor;
pub use super::shared::ProxyState;
use super::shared::{Abort, Shared};
use crate::gateway::Gateway;
use crate::http::reply;
use crate::sys::lock::{lock, wait_timeout};
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

impl Relay {
    /// Binds the listener. Nothing is accepted until [`Relay::serve`].
    pub fn bind(addr: SocketAddr, gateway: Gateway, state: ProxyState) -> io::Result<Relay> {
        let listener = TcpListener::bind(addr)?;
        Ok(Relay {
            shared: Arc::new(Shared::new(listener, gateway, state)),
        })
    }

    /// The monitor the status page reads (start-up hands it its report).
    pub fn monitor(&self) -> Arc<Monitor> {
        Arc::clone(&self.shared.monitor)
    }

    /// Whether selective mode is on (some hosts are dialled directly).
    pub fn is_selective(&self) -> bool {
        self.shared.selective.is_some()
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
        loop {
            let accepted = shared.listener.accept();
            if shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            let (client, peer) = match accepted {
                Ok(accepted) => accepted,
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
            // Numbered in accept order: the oldest connection without its
            // head is the one evicted when room is needed.
            let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
            let conn_shared = Arc::clone(shared);
            *lock(&shared.live) += 1;
            let spawned = thread::Builder::new()
                .name("connection".into())
                .stack_size(CONNECTION_STACK)
                .spawn(move || {
                    let _done = LiveGuard(&conn_shared);
                    connection::handle(&conn_shared, client, peer, conn);
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
            live = wait_timeout(&shared.all_done, live, left);
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
            crate::sys::heap::release_free();
        }
    }
}

/// The answer to a connection over `--max-connections`.
const TOO_MANY_CONNECTIONS: &str = "too many connections (--max-connections), try again later";
