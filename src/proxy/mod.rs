//! The local proxy: the listener and its caps, who may use it ([`access`],
//! [`client_process`]), routing, the per-connection flow, plain HTTP
//! ([`forward`]), the direct path, and the status page with its monitor.

pub mod access;
pub mod client_process;
mod connection;
pub mod direct;
pub mod forward;
pub mod listener;
mod monitor;
pub mod policy;
pub mod route;
mod shared;
pub mod status;
