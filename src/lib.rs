//! `ccr-relay`: a local HTTP(S) proxy that carries every outbound connection
//! of a container over its own WebSocket to the organisation's gateway, and
//! a launcher that gives child processes the proxy and CA settings they need.
//!
//! The data path, top to bottom: [`listener`] accepts a client, [`request_head`]
//! reads what it asks for, [`gateway`] opens the tunnel's WebSocket, [`tunnel`]
//! pumps bytes both ways as [`chunk`]s until either side closes. Plain
//! `http://` requests go through [`forward`], which reads and rebuilds them
//! with [`http1`]; the relay's own error answers come from [`reply`].

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

pub mod access;
pub mod agent_readme;
pub mod app;
pub mod atomic_file;
pub mod child_env;
pub mod chunk;
pub mod cli;
pub mod client_process;
pub mod config;
pub mod credentials;
pub mod dial;
pub mod direct;
pub mod doctor;
pub mod forward;
pub mod gates;
pub mod gateway;
pub mod heap;
pub mod http1;
pub mod install;
pub mod listener;
pub mod liveness;
pub mod message_v2;
pub mod outside;
pub mod pool;
pub mod reply;
pub mod request_head;
pub mod route;
pub mod session;
pub mod signals;
pub mod socket;
pub mod status;
pub mod token;
pub mod trust;
pub mod tunnel;
pub mod version;
pub mod wire;

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod test_cert;
