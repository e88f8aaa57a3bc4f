//! Which contract the relay speaks to the gateway: the first generation
//! ("upstream proxy", tunnel protocol v1) or the second ("agent proxy",
//! tunnel protocol v2), with the paths each serves. A plain type low in the
//! layers: start-up's gates choose it, and every layer above the gateway
//! client reads it.

use std::fmt;

/// Which contract the relay speaks to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// Generation 1, tunnel protocol v1.
    UpstreamProxy,
    /// Generation 2, tunnel protocol v2.
    AgentProxy,
}

impl Generation {
    /// The name used on the status page and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Generation::UpstreamProxy => "upstream-proxy",
            Generation::AgentProxy => "agent-proxy",
        }
    }

    /// The name in a sentence.
    pub fn title(self) -> &'static str {
        match self {
            Generation::UpstreamProxy => "the upstream proxy",
            Generation::AgentProxy => "the agent proxy",
        }
    }

    /// The WebSocket path, appended to the base URL.
    pub fn ws_path(self) -> &'static str {
        match self {
            Generation::UpstreamProxy => "/v1/code/upstreamproxy/ws",
            Generation::AgentProxy => "/v1/code/agent-proxy/ws",
        }
    }

    /// The CA certificate path, appended to the base URL.
    pub fn ca_cert_path(self) -> &'static str {
        match self {
            Generation::UpstreamProxy => "/v1/code/upstreamproxy/ca-cert",
            Generation::AgentProxy => "/v1/code/agent-proxy/ca-cert",
        }
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
