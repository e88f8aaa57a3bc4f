//! `doctor` with an activation gate closed (outside a session): start-up
//! stops at the gates, so nothing is fetched or probed and no environment
//! is computed. What `doctor` says instead: the steps it skips and why,
//! what `run` and `serve` would do, and how to open the gates by hand.

use crate::config::Config;
use crate::startup::gates;

/// The network steps, skipped: start-up never reaches them.
pub fn skipped_steps(gate: u8) {
    out!(
        "  skip  gateway CA: gate {gate} is closed, so start-up stops there; doctor contacts nothing"
    );
    out!("  skip  gateway WebSocket: needs the gates to pass");
}

/// What `run` and `serve` would do, how to open the gates by hand (a
/// session of one's own), and the verdict; returns doctor's exit status.
pub fn what_would_happen(gate: u8, config: &Config) -> i32 {
    let run = match gate {
        1 => "silently",
        _ => "after one warning line naming the gate",
    };
    out!();
    out!("what would happen");
    out!(
        "  run: the command runs without the proxy, as if the relay were absent ({run}), with its own exit status"
    );
    out!("  serve: says why in one line on stderr and exits 0");
    out!();
    out!(
        "to open the gates by hand (a session of your own, against a gateway you run; see the README's \"Trying a real session by hand\"):"
    );
    out!("  gate 1  {}=1", gates::REMOTE_VAR);
    out!(
        "  gate 2  {}=1 (upstream proxy) or {}=1 (agent proxy)",
        gates::PROXY_ENABLED_VAR,
        gates::AGENT_PROXY_ENABLED_VAR
    );
    out!("  gate 3  {}=<the session id>", gates::SESSION_ID_VAR);
    out!(
        "  gate 4  the session token in {} (--token-file), not empty",
        config.token_file.display()
    );
    out!();
    out!("verdict: the proxy would stay off (gate {gate} is closed); commands run without it");
    1
}
