//! Start-up: the activation gates, the session token and its guard, the
//! start-up sequence, its probe and the TLS settings for the gateway, what
//! start-up writes outside the relay's directory, and the README written
//! for the agent.

pub mod agent_readme;
pub mod gates;
pub mod outside;
pub mod probe;
pub mod selective;
pub mod sequence;
pub mod tls;
pub mod token;
