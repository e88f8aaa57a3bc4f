//! Development and test support for `ccr-relay`: a stand-in for the CCR
//! gateway ([`gateway`], binary `ccr-dev-gateway`), a test HTTP(S) origin
//! ([`origin`], binary `ccr-dev-origin`), and what end-to-end tests need to
//! drive them and the relay: certificates ([`pki`]), child processes that
//! clean up after themselves ([`procs`]), scratch directories ([`temp`]) and
//! a byte pattern to check transfers against ([`pattern`]).
//!
//! Typical test:
//!
//! ```no_run
//! use ccr_integration::{DevGateway, DevOrigin, GatewayOptions};
//! let origin = DevOrigin::start(None);
//! let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
//! // start `bin_path("ccr-relay")` with ANTHROPIC_BASE_URL = gw.base_url(),
//! // then curl through it to http://origin.test/hello …
//! gw.wait_for_event_prefix("tunnel-end origin.test:80", std::time::Duration::from_secs(5));
//! ```

pub mod accept;
pub mod args;
pub mod bench;
pub mod delay;
pub mod demo;
pub mod events;
pub mod faults;
pub mod gateway;
pub mod head;
pub mod http;
pub mod mitm;
pub mod origin;
pub mod pattern;
pub mod pki;
pub mod procs;
pub mod pump;
pub mod relay;
pub mod session_env;
pub mod stream;
pub mod temp;
pub mod wire;

pub use gateway::{Generation, ServerKind};
pub use procs::{ChildGuard, DevGateway, DevOrigin, GatewayOptions, bin_path};
pub use temp::{TempDir, temp_dir};

/// Sets up logging to stderr for the development binaries: `RUST_LOG`
/// when set, else `info`.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

/// Prints `listening on ADDR` on stdout and flushes: the one line the test
/// harness waits for.
pub fn announce(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()
}
