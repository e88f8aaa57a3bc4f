//! The pool's keeper: the thread that sleeps in `poll(2)` on every pooled
//! socket and the wake-up pair, and the look it takes at each pooled
//! WebSocket (expiry, what the gateway sent, liveness, keepalive, flush),
//! which [`Pool::take`](super::Pool::take) takes too before handing one out.
//! See the parent module for why it works this way.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::{Bytes, Message};

use super::{Entry, KEEPALIVE, PoolConfig, Retire, Shared, retire_all};
use crate::gateway::liveness::{self, Step};

/// Most messages read from one pooled socket in one look, so a gateway that
/// floods pings cannot hold the pool's lock for long; the rest waits for the
/// next wake.
pub(super) const MAX_READS_PER_LOOK: usize = 64;

/// How soon the keeper looks again at a socket it stopped reading at
/// [`MAX_READS_PER_LOOK`].
const FLOOD_PAUSE: Duration = Duration::from_millis(10);

/// Checks one pooled WebSocket and does its chores: expiry, reading what
/// the gateway sent, liveness, keepalive, flushing. `warm`: it is the warm
/// WebSocket, exempt from the idle limit. `Err` means it must be retired.
pub(super) fn look_after(
    entry: &mut Entry,
    config: &PoolConfig,
    now: Instant,
    warm: bool,
) -> Result<(), Retire> {
    check_expiry(entry, config, now, warm)?;
    read_what_arrived(entry, config, now)?;
    watch_liveness(entry, config, now)?;
    send_keepalive_if_due(entry, config, now)?;
    flush_if_pending(entry)
}

/// Closed, older than `max_age`, or idle over `idle_timeout` (unless warm).
fn check_expiry(
    entry: &Entry,
    config: &PoolConfig,
    now: Instant,
    warm: bool,
) -> Result<(), Retire> {
    if !entry.ws.can_write() {
        return Err(Retire::Closed);
    }
    if now.saturating_duration_since(entry.opened) >= config.max_age {
        return Err(Retire::TooOld);
    }
    if !warm && now.saturating_duration_since(entry.pooled_at) >= config.idle_timeout {
        return Err(Retire::Idle);
    }
    Ok(())
}

/// Reads, non-blocking, until `WouldBlock` (at most
/// [`MAX_READS_PER_LOOK`] messages): pings, pongs and empty data are fine,
/// anything else retires the socket.
fn read_what_arrived(entry: &mut Entry, config: &PoolConfig, now: Instant) -> Result<(), Retire> {
    // Until WouldBlock: bytes already decrypted inside TLS do not wake poll.
    entry.more_to_read = true;
    for _ in 0..MAX_READS_PER_LOOK {
        let message = entry.ws.read();
        if message.is_ok() {
            entry.watch.heard(now);
        }
        match message {
            Ok(Message::Ping(_)) => entry.flush_pending = true,
            Ok(Message::Pong(payload)) => {
                if let Some(liveness) = &config.liveness {
                    liveness.pong(&payload);
                }
            }
            Ok(Message::Binary(data)) if data.is_empty() || data[..] == KEEPALIVE => {}
            Ok(Message::Binary(_)) => return Err(Retire::Unexpected("data")),
            Ok(Message::Text(_)) => return Err(Retire::Unexpected("text")),
            Ok(Message::Close(_)) => return Err(Retire::Unexpected("a close")),
            Ok(Message::Frame(_)) => return Err(Retire::Unexpected("a raw frame")),
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                entry.more_to_read = false;
                break;
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Err(Retire::Closed);
            }
            Err(e) => return Err(Retire::Error(e.to_string())),
        }
    }
    Ok(())
}

/// A Ping after a silent keepalive interval; retired (and recorded) when
/// the gateway, known to answer pings, let the deadline pass.
fn watch_liveness(entry: &mut Entry, config: &PoolConfig, now: Instant) -> Result<(), Retire> {
    let Some(liveness) = config
        .liveness
        .as_ref()
        .filter(|_| !config.keepalive_interval.is_zero())
    else {
        return Ok(());
    };
    match entry
        .watch
        .step(now, config.keepalive_interval, liveness.enforced_deadline())
    {
        Step::WaitUntil(_) => {}
        Step::Ping => {
            match entry.ws.write(liveness::ping()) {
                Ok(()) => {}
                // Queued; the flush below or a later one sends it.
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Retire::Error(e.to_string())),
            }
            entry.watch.pinged(now);
            entry.flush_pending = true;
        }
        Step::Unresponsive => {
            liveness.record_pooled_unresponsive();
            return Err(Retire::Unresponsive);
        }
    }
    Ok(())
}

/// A keepalive when `keepalive_interval` has passed since the last send.
fn send_keepalive_if_due(
    entry: &mut Entry,
    config: &PoolConfig,
    now: Instant,
) -> Result<(), Retire> {
    if !config.keepalive_interval.is_zero()
        && now.saturating_duration_since(entry.last_sent) >= config.keepalive_interval
    {
        match entry
            .ws
            .write(Message::Binary(Bytes::from_static(&KEEPALIVE)))
        {
            Ok(()) => {}
            // Queued; the flush below or a later one sends it.
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Retire::Error(e.to_string())),
        }
        entry.last_sent = now;
        entry.flush_pending = true;
    }
    Ok(())
}

/// Flushes a queued pong, Ping or keepalive; one the socket will not take
/// yet stays pending.
fn flush_if_pending(entry: &mut Entry) -> Result<(), Retire> {
    if entry.flush_pending {
        match entry.ws.flush() {
            Ok(()) => entry.flush_pending = false,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Retire::Error(e.to_string())),
        }
    }
    Ok(())
}

/// When the keeper must next look at `entry` even if nothing arrives
/// (`warm`: no idle expiry).
fn next_due(entry: &Entry, config: &PoolConfig, warm: bool) -> Option<Instant> {
    let keepalive = if config.keepalive_interval.is_zero() {
        None
    } else {
        entry.last_sent.checked_add(config.keepalive_interval)
    };
    let liveness = match &config.liveness {
        Some(liveness) if !config.keepalive_interval.is_zero() => {
            match entry.watch.step(
                Instant::now(),
                config.keepalive_interval,
                liveness.enforced_deadline(),
            ) {
                Step::WaitUntil(at) => Some(at),
                // Due now: the next look does it.
                Step::Ping | Step::Unresponsive => Some(Instant::now()),
            }
        }
        _ => None,
    };
    [
        entry.opened.checked_add(config.max_age),
        (!warm)
            .then(|| entry.pooled_at.checked_add(config.idle_timeout))
            .flatten(),
        keepalive,
        liveness,
    ]
    .into_iter()
    .flatten()
    .min()
}

/// The keeper thread: sleeps in `poll(2)` until a pooled socket is readable
/// (or writable, with a flush pending), a deadline passes, or a wake byte
/// arrives; then looks after every pooled socket under the lock.
pub(super) fn keeper(shared: &Shared, wake_rx: UnixStream) {
    // However the loop ends (panics included), stop the pool and close
    // whatever is left, so nothing sits pooled without a keeper.
    struct OnExit<'a>(&'a Shared);
    impl Drop for OnExit<'_> {
        fn drop(&mut self) {
            let entries = {
                let mut state = self.0.lock();
                state.stopped = true;
                std::mem::take(&mut state.entries)
            };
            retire_all(entries.into_iter().map(|e| (e, Retire::Shutdown)).collect());
        }
    }
    let _on_exit = OnExit(shared);

    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(shared.config.max_idle.min(64) + 1);
    loop {
        let mut retired = Vec::new();
        let timeout = {
            let mut state = shared.lock();
            if state.stopped {
                return;
            }
            let now = Instant::now();
            let mut i = 0;
            while i < state.entries.len() {
                // The newest is warm; if it is retired below, the one
                // before it was already held to the idle limit.
                let warm = shared.config.keep_warm && i + 1 == state.entries.len();
                match look_after(&mut state.entries[i], &shared.config, now, warm) {
                    Ok(()) => i += 1,
                    Err(why) => retired.push((state.entries.remove(i), why)),
                }
            }
            fds.clear();
            fds.push(pollfd(wake_rx.as_raw_fd(), libc::POLLIN));
            for entry in &state.entries {
                let mut events = libc::POLLIN;
                if entry.flush_pending {
                    events |= libc::POLLOUT;
                }
                fds.push(pollfd(entry.ws.get_ref().tcp().as_raw_fd(), events));
            }
            let newest = state.entries.len().saturating_sub(1);
            let due = state
                .entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    next_due(e, &shared.config, shared.config.keep_warm && i == newest)
                })
                .min()
                .map(|due| due.saturating_duration_since(now));
            if state.entries.iter().any(|e| e.more_to_read) {
                Some(due.map_or(FLOOD_PAUSE, |d| d.min(FLOOD_PAUSE)))
            } else {
                due
            }
        };
        retire_all(retired);

        let ms = match timeout {
            None => -1,
            // Round up, so the next look is at or after the deadline.
            Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds. An fd in it
        // may be closed meanwhile (its socket taken by a tunnel); poll then
        // reports on a stale or reused fd, which only makes a spurious wake.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                log::warn!("websocket pool keeper: poll failed: {err}");
                thread::sleep(Duration::from_millis(100));
            }
        }
        // Drain the wake-ups; the loop re-reads the state anyway.
        let mut sink = [0u8; 64];
        while matches!((&wake_rx).read(&mut sink), Ok(n) if n > 0) {}
    }
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
