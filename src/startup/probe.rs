//! The start-up probe (docs/PROTOCOL.md section 2a): one WebSocket opened
//! and closed right after the listener is bound, in both generations. Its
//! verdict says whether the gateway takes the session's credentials (a
//! refusal turns the proxy off) or cannot be reached (the proxy serves with
//! a start-up error). `run` and `serve` run it in a thread of its own
//! ([`start_probe`]); `doctor` runs [`probe`] itself.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use log::{info, warn};

use crate::gateway::{Gateway, GatewayError};

/// How long `run` and `serve` wait for the probe's verdict before going on.
pub const PROBE_VERDICT_WAIT: Duration = Duration::from_secs(2);

/// Pauses between the probe's three attempts.
const PROBE_PAUSES: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(400)];

/// What the start-up probe found.
#[derive(Debug)]
pub enum ProbeVerdict {
    /// A WebSocket opened (and was closed again).
    Opened,
    /// The upgrade was refused with 401 or 403: the proxy stays off.
    CredentialsRefused(GatewayError),
    /// No WebSocket opened in three attempts: the proxy serves with a
    /// start-up error.
    Unreachable(GatewayError),
}

/// The probe: one WebSocket opened and closed, three attempts 200 ms then
/// 400 ms apart, each within the upgrade bound. 401 and 403 end it at once.
pub fn probe(gateway: &Gateway) -> ProbeVerdict {
    let mut attempt = 0;
    loop {
        match gateway.open_websocket() {
            Ok(mut ws) => {
                let _ = ws.close(None);
                let _ = ws.flush();
                return ProbeVerdict::Opened;
            }
            Err(e) if e.refuses_credentials() => return ProbeVerdict::CredentialsRefused(e),
            Err(e) if attempt < PROBE_PAUSES.len() => {
                thread::sleep(PROBE_PAUSES[attempt]);
                attempt += 1;
                let _ = e;
            }
            Err(e) => return ProbeVerdict::Unreachable(e),
        }
    }
}

/// The start-up error a probe that found no gateway leaves, as tunnels'
/// `502` answers end with it.
pub fn startup_error_text(e: &GatewayError) -> String {
    format!("gateway unreachable at start-up: {e}")
}

/// Runs the probe in its own thread; its verdict comes on the channel and
/// is also recorded on the gateway: an unreachable gateway (while no
/// tunnel has opened yet) leaves the start-up error, and a refusal that
/// comes after the wait is a warning and a start-up error too.
pub(crate) fn start_probe(gateway: Arc<Gateway>) -> mpsc::Receiver<ProbeVerdict> {
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("probe".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let verdict = probe(&gateway);
            match &verdict {
                ProbeVerdict::Opened => gateway.state.set_startup_error(None),
                ProbeVerdict::Unreachable(e) => {
                    let text = startup_error_text(e);
                    // Not a warning on stderr: the proxy is on, and each
                    // tunnel's answer says it (doctor too).
                    info!("{text}; tunnels will try once each");
                    gateway.state.set_startup_error_unless_opened(text);
                }
                ProbeVerdict::CredentialsRefused(e) => {
                    let text = format!("the gateway refused the session's credentials: {e}");
                    gateway.state.set_startup_error_unless_opened(text);
                }
            }
            if let Err(mpsc::SendError(ProbeVerdict::CredentialsRefused(e))) = tx.send(verdict) {
                eprintln!(
                    "ccr-relay: warning: the gateway refused the session's credentials ({e}); tunnels will fail"
                );
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the gateway probe: {e}");
    }
    rx
}
