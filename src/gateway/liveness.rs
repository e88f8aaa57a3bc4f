//! Liveness of the gateway: noticing a gateway process that is frozen (a
//! stopped process, a hung host) while its kernel keeps ACKing, which
//! keepalives alone never do.
//!
//! A WebSocket on which nothing has arrived from the gateway for one
//! keepalive interval gets a WebSocket Ping; when no frame of any kind
//! comes back within the deadline the WebSocket is given up (its tunnel's
//! client is reset, a pooled one is dropped) and `gateway_unresponsive` is
//! recorded. A gateway that never answers pings must not lose healthy
//! tunnels, so the deadline applies only once this gateway has answered a
//! Ping: the relay sends one as each WebSocket opens ([`crate::tunnel::dial`]) and
//! [`Liveness`] remembers, for the rest of the process, whether an answer
//! ever came.
//!
//! [`Watch`] is one WebSocket's state, kept by whoever reads it (a
//! tunnel's pump, the pool's keeper) and looked at only when that reader
//! would wait anyway: nothing is added per data chunk but a flag.
//!
//! The gateway's TCP socket also gets `TCP_USER_TIMEOUT`
//! ([`TCP_USER_TIMEOUT`]), so bytes the gateway's host never acknowledges
//! end the connection within a minute instead of the kernel's ~15.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tungstenite::{Bytes, Message};

/// How long a Ping may go unanswered by default (`--gateway-deadline`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// How long bytes sent to the gateway may go unacknowledged before the
/// kernel ends the connection. On Linux it also ends a connection whose
/// peer keeps its receive window shut this long, which cuts an upload
/// into a stopped reader before `--upload-stall` (180 s). Kept at 60 s
/// all the same: it is the only bound on a hung host of a gateway that
/// never answers pings, and on a plain-HTTP request body written into a
/// frozen gateway (blocking writes, no liveness check).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// The payload of the relay's Pings; a Pong carrying it is an answer.
pub const PING_PAYLOAD: &[u8] = b"ccr-relay liveness";

/// The relay's Ping.
pub fn ping() -> Message {
    Message::Ping(Bytes::from_static(PING_PAYLOAD))
}

/// What the relay knows about its gateway's liveness, shared by every
/// WebSocket to it (cheap to clone).
#[derive(Clone)]
pub struct Liveness {
    shared: Arc<Shared>,
}

struct Shared {
    deadline: Duration,
    /// The gateway answered one of the relay's Pings at least once.
    answers_pings: AtomicBool,
    /// Where a dropped pooled WebSocket is recorded (the relay's monitor,
    /// which lives above this layer: handed down as a callback).
    on_pooled_unresponsive: Option<Recorder>,
}

impl fmt::Debug for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Liveness")
            .field("deadline", &self.shared.deadline)
            .field("answers_pings", &self.answers_pings())
            .finish_non_exhaustive()
    }
}

/// Records a pooled WebSocket dropped for its gateway's silence, with what
/// happened (`gateway_unresponsive` on the status page).
pub type Recorder = Arc<dyn Fn(&str) + Send + Sync>;

impl Liveness {
    /// A gateway not yet known to answer pings, with this deadline.
    pub fn new(deadline: Duration) -> Liveness {
        Liveness::with_recorder(deadline, None)
    }

    /// The same, telling `record` of dropped pooled WebSockets.
    pub fn with_recorder(deadline: Duration, record: Option<Recorder>) -> Liveness {
        Liveness {
            shared: Arc::new(Shared {
                deadline,
                answers_pings: AtomicBool::new(false),
                on_pooled_unresponsive: record,
            }),
        }
    }

    /// The same, recording to the relay's monitor (for tests).
    #[cfg(test)]
    pub fn with_monitor(
        deadline: Duration,
        monitor: Option<Arc<crate::proxy::status::Monitor>>,
    ) -> Liveness {
        let record = monitor.map(|monitor| -> Recorder {
            Arc::new(move |detail: &str| {
                monitor.record(crate::proxy::status::Kind::GatewayUnresponsive, detail, "")
            })
        });
        Liveness::with_recorder(deadline, record)
    }

    pub fn deadline(&self) -> Duration {
        self.shared.deadline
    }

    /// Whether the gateway has ever answered one of the relay's Pings.
    pub fn answers_pings(&self) -> bool {
        self.shared.answers_pings.load(Ordering::Relaxed)
    }

    /// The deadline that applies now: none until the gateway has shown
    /// that it answers pings.
    pub fn enforced_deadline(&self) -> Option<Duration> {
        self.answers_pings().then_some(self.shared.deadline)
    }

    /// A Pong arrived: one carrying the relay's payload shows the gateway
    /// answers pings (remembered for the rest of the process).
    pub fn pong(&self, payload: &[u8]) {
        if payload == PING_PAYLOAD && !self.answers_pings() {
            self.shared.answers_pings.store(true, Ordering::Relaxed);
            log::debug!("the gateway answers WebSocket pings: liveness deadline on");
        }
    }

    /// A pooled WebSocket was dropped for its gateway's silence.
    pub fn record_pooled_unresponsive(&self) {
        if let Some(record) = &self.shared.on_pooled_unresponsive {
            record(&format!(
                "pooled WebSocket: nothing back within {} of a Ping; dropped",
                show_secs(self.shared.deadline)
            ));
        }
    }
}

/// `30 s`, `0.6 s`: a duration as the flags take it.
pub fn show_secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// What one WebSocket's reader does next for liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing until this instant (or until a frame arrives).
    WaitUntil(Instant),
    /// Send a Ping now, then call [`Watch::pinged`].
    Ping,
    /// The Ping went unanswered past the deadline: give the WebSocket up.
    Unresponsive,
}

/// One WebSocket's liveness: when the gateway was last heard, and whether
/// a Ping is out.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    quiet_since: Instant,
    pinged_at: Option<Instant>,
}

impl Watch {
    /// A WebSocket just heard from (or just opened) at `now`.
    pub fn new(now: Instant) -> Watch {
        Watch {
            quiet_since: now,
            pinged_at: None,
        }
    }

    /// Some frame arrived from the gateway by `now`: it is alive.
    pub fn heard(&mut self, now: Instant) {
        self.quiet_since = now;
        self.pinged_at = None;
    }

    /// The Ping that [`Step::Ping`] asked for went out at `now`.
    pub fn pinged(&mut self, now: Instant) {
        self.pinged_at = Some(now);
    }

    /// What to do at `now`: a Ping after `interval` of silence, then the
    /// end once `deadline` (if one applies) has passed since the Ping.
    /// Without a deadline one Ping per silence is enough: the next look is
    /// an interval away, in case the gateway turns out to answer pings.
    pub fn step(&self, now: Instant, interval: Duration, deadline: Option<Duration>) -> Step {
        match (self.pinged_at, deadline) {
            (None, _) => {
                let due = self.quiet_since + interval;
                if now >= due {
                    Step::Ping
                } else {
                    Step::WaitUntil(due)
                }
            }
            (Some(at), Some(deadline)) => {
                let end = at + deadline;
                if now >= end {
                    Step::Unresponsive
                } else {
                    Step::WaitUntil(end)
                }
            }
            (Some(_), None) => Step::WaitUntil(now + interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::status::{Kind, Monitor};

    const INTERVAL: Duration = Duration::from_secs(30);
    const DEADLINE: Duration = Duration::from_secs(30);

    #[test]
    fn a_ping_after_one_interval_of_silence() {
        let t0 = Instant::now();
        let watch = Watch::new(t0);
        assert_eq!(
            watch.step(t0, INTERVAL, Some(DEADLINE)),
            Step::WaitUntil(t0 + INTERVAL)
        );
        assert_eq!(
            watch.step(
                t0 + INTERVAL - Duration::from_millis(1),
                INTERVAL,
                Some(DEADLINE)
            ),
            Step::WaitUntil(t0 + INTERVAL)
        );
        assert_eq!(watch.step(t0 + INTERVAL, INTERVAL, None), Step::Ping);
    }

    #[test]
    fn no_frame_within_the_deadline_of_the_ping_is_the_end() {
        let t0 = Instant::now();
        let mut watch = Watch::new(t0);
        let ping = t0 + INTERVAL;
        watch.pinged(ping);
        assert_eq!(
            watch.step(
                ping + DEADLINE - Duration::from_millis(1),
                INTERVAL,
                Some(DEADLINE)
            ),
            Step::WaitUntil(ping + DEADLINE)
        );
        assert_eq!(
            watch.step(ping + DEADLINE, INTERVAL, Some(DEADLINE)),
            Step::Unresponsive
        );
    }

    #[test]
    fn any_frame_clears_the_ping_and_restarts_the_interval() {
        let t0 = Instant::now();
        let mut watch = Watch::new(t0);
        watch.pinged(t0 + INTERVAL);
        let heard = t0 + INTERVAL + Duration::from_secs(5);
        watch.heard(heard);
        let late = t0 + INTERVAL + DEADLINE + Duration::from_secs(1);
        assert_eq!(
            watch.step(late, INTERVAL, Some(DEADLINE)),
            Step::WaitUntil(heard + INTERVAL)
        );
    }

    #[test]
    fn without_a_deadline_an_unanswered_ping_never_ends_it() {
        let t0 = Instant::now();
        let mut watch = Watch::new(t0);
        watch.pinged(t0 + INTERVAL);
        let much_later = t0 + Duration::from_secs(3600);
        assert_eq!(
            watch.step(much_later, INTERVAL, None),
            Step::WaitUntil(much_later + INTERVAL)
        );
        // Once the gateway is known to answer pings, the old Ping counts.
        assert_eq!(
            watch.step(much_later, INTERVAL, Some(DEADLINE)),
            Step::Unresponsive
        );
    }

    #[test]
    fn the_deadline_applies_once_a_pong_with_the_relays_payload_came() {
        let liveness = Liveness::new(DEADLINE);
        assert_eq!(liveness.enforced_deadline(), None);
        liveness.pong(b"someone else's");
        assert_eq!(liveness.enforced_deadline(), None, "not an answer to ours");
        let clone = liveness.clone();
        clone.pong(PING_PAYLOAD);
        assert_eq!(liveness.enforced_deadline(), Some(DEADLINE));
        assert!(matches!(ping(), Message::Ping(p) if p[..] == *PING_PAYLOAD));
    }

    #[test]
    fn a_dropped_pooled_websocket_is_recorded() {
        let monitor = Arc::new(Monitor::default());
        let liveness = Liveness::with_monitor(Duration::from_millis(600), Some(monitor.clone()));
        liveness.record_pooled_unresponsive();
        let failures = monitor.failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].kind, Kind::GatewayUnresponsive);
        assert!(
            failures[0].detail.contains("0.6 s"),
            "{}",
            failures[0].detail
        );
    }
}
