//! The command line and the commands: arguments ([`args`]), `run`, `serve`
//! and `status` ([`commands`]), `doctor` (and [`doctor_closed`], what it
//! says outside a session), and what `--version` says.

pub mod args;
pub mod commands;
pub mod doctor;
pub mod doctor_closed;
pub mod version;
