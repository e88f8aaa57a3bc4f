//! Installing the gateway's CA where tools ignore CA variables.

pub mod command;
