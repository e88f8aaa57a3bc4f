//! Start-up: the activation gates, the session token and its guard, the
//! start-up sequence and its probe, what start-up writes outside the relay's
//! directory, and the README written for the agent.

pub mod agent_readme;
pub mod gates;
pub mod outside;
pub mod sequence;
pub mod token;
