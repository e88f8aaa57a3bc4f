//! The command line and the commands: arguments ([`args`]), `run`, `serve`
//! and `status` ([`commands`]), `doctor`, and what `--version` says.

pub mod args;
pub mod commands;
pub mod doctor;
pub mod version;
