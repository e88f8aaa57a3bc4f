//! `ccr-relay`: a local HTTP(S) proxy that carries every outbound connection
//! of a container over its own WebSocket to the organisation's gateway, and
//! a launcher that gives child processes the proxy and CA settings they need.
//!
//! The modules are layers, each a folder, and each uses only the ones below
//! it (docs/ARCHITECTURE.md draws them): [`cli`] (the command line and the
//! commands), [`startup`] (gates, token, the start-up sequence), [`env`]
//! (what children get), [`trust`] (the CA bundle and the installers),
//! [`proxy`] (the listener and the per-connection flow), [`tunnel`] (one
//! tunnel's pumps and dial), [`gateway`] (the gateway client and its
//! codecs), [`http`] (HTTP/1 heads, the relay's own answers) and [`sys`]
//! (sockets, signals, files). [`config`] holds every setting as plain types
//! that every layer may read.

/// `println!` for reports on standard output (`doctor`): a reader that
/// went away (`ccr-relay doctor | head`) ends the output quietly instead
/// of panicking; the work goes on and the exit status still says what it
/// found.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod cli;
pub mod config;
pub mod env;
pub mod gateway;
pub mod http;
pub mod proxy;
pub mod startup;
pub mod sys;
pub mod trust;
pub mod tunnel;

#[cfg(test)]
mod test_support;
