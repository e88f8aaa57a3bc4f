//! Every setting of the relay in one place: plain structs with the defaults
//! of docs/PROTOCOL.md, filled in by the command line (`cli`) and read by the
//! rest of the crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The gateway base URL used when neither `--base-url` nor
/// `ANTHROPIC_BASE_URL` is given.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// Where the session token lives (a tmpfs in the container).
pub const DEFAULT_TOKEN_FILE: &str = "/run/ccr/session_token";

/// How long a fresh tunnel waits for the gateway's answer, and a plain-HTTP
/// origin for its response head.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the relay needs to start; built by `cli`, tests build it directly.
#[derive(Debug, Clone)]
pub struct Config {
    /// Gateway base URL (`http://` or `https://`).
    pub base_url: String,
    /// What set `base_url`, for hints that name it.
    pub base_url_from: BaseUrlFrom,
    /// File holding the session token.
    pub token_file: PathBuf,
    /// Where the merged CA bundle is written (by default
    /// [`crate::sys::state_dir::default_bundle`]: a `mkdtemp` template when there
    /// is no `HOME`, made at start by [`crate::sys::state_dir::resolve`]).
    pub ca_bundle: PathBuf,
    /// System CA bundle to merge; `None` means "ask openssl-probe".
    pub system_ca: Option<PathBuf>,
    /// Extra roots the relay trusts for its own TLS connection to the gateway.
    pub gateway_ca: Option<PathBuf>,
    /// Address the local proxy listens on.
    pub listen: SocketAddr,
    /// `--no-proxy` entries appended to the default `NO_PROXY` list;
    /// `-HOST` removes `HOST` from it instead.
    pub no_proxy_extra: Vec<String>,
    /// `--allow-uid`: uids besides the relay's own and root that may use
    /// the proxy.
    pub allow_uids: Vec<u32>,
    /// `--allow-any-uid`: every local process may use the proxy.
    pub allow_any_uid: bool,
    /// `--require-uid-check`: where connection owners cannot be told
    /// apart, the proxy stays off instead of opening to every process.
    pub require_uid_check: bool,
    /// `--no-proxy-default`: the list starts as the reference list, or empty.
    pub no_proxy_default: crate::env::NoProxyDefault,
    /// `--require-v2`: an agent-proxy gateway that does not acknowledge
    /// tunnel protocol v2 gets its tunnels refused (`502`) instead of the
    /// first-generation fallback.
    pub require_v2: bool,
    /// `AGENT_PROXY_URL` / `AGENT_PROXY_AUTH_TOKEN`, taken out of the
    /// environment before anything else ran (redacted when printed).
    pub standalone: crate::startup::gates::Standalone,
    /// `--keep-trust`: a clean stop leaves the machine-wide trust entries
    /// (system-store anchor, NSS entry, bazelrc block, login-shell script)
    /// in place, for image builds that snapshot the container.
    pub keep_trust: bool,
    /// `--keep-warm` (on unless `--keep-warm=off`): the newest pooled
    /// WebSocket stays pooled past the idle limit, up to its max age.
    pub keep_warm: bool,
    /// Bounds on time and size.
    pub limits: Limits,
}

impl Config {
    /// Makes the paths handed to children absolute: they may run anywhere.
    pub fn with_absolute_paths(mut self) -> Config {
        if let Ok(abs) = std::path::absolute(&self.ca_bundle) {
            self.ca_bundle = abs;
        }
        self
    }

    /// What set the gateway's base URL, as a hint names it: `AGENT_PROXY_URL`
    /// (standalone mode), `--base-url`, `ANTHROPIC_BASE_URL`, or neither.
    pub fn base_url_name(&self) -> &'static str {
        if self.standalone.is_active() {
            return "AGENT_PROXY_URL";
        }
        match self.base_url_from {
            BaseUrlFrom::Flag => "--base-url",
            BaseUrlFrom::Env => "ANTHROPIC_BASE_URL",
            BaseUrlFrom::Default => "--base-url or ANTHROPIC_BASE_URL (neither is set)",
        }
    }

    /// The defaults, with `ANTHROPIC_BASE_URL`, `HOME` and (without `HOME`)
    /// `XDG_RUNTIME_DIR` read from the environment as docs/PROTOCOL.md says.
    pub fn from_env() -> Config {
        let from_env = std::env::var("ANTHROPIC_BASE_URL")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let base_url_from = match from_env {
            Some(_) => BaseUrlFrom::Env,
            None => BaseUrlFrom::Default,
        };
        let base_url = from_env.unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        Config {
            base_url,
            base_url_from,
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            ca_bundle: crate::sys::state_dir::default_bundle(|name| std::env::var_os(name)),
            system_ca: None,
            gateway_ca: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            no_proxy_extra: Vec::new(),
            allow_uids: Vec::new(),
            allow_any_uid: false,
            require_uid_check: false,
            no_proxy_default: crate::env::NoProxyDefault::Reference,
            require_v2: false,
            standalone: crate::startup::gates::Standalone::default(),
            keep_trust: false,
            keep_warm: true,
            limits: Limits::default(),
        }
    }
}

/// What set [`Config::base_url`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseUrlFrom {
    /// Neither `--base-url` nor `ANTHROPIC_BASE_URL`: [`DEFAULT_BASE_URL`].
    Default,
    /// `ANTHROPIC_BASE_URL`.
    Env,
    /// `--base-url`.
    Flag,
}

/// Bounds on time and size. The defaults are the contract's; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head a client may send (431 past it).
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head (408 past it).
    pub head_timeout: Duration,
    /// Time to reach the gateway and finish the WebSocket upgrade, TCP
    /// connect and TLS included (504 past it).
    pub upgrade_timeout: Duration,
    /// An idle tunnel sends an empty chunk this often; a WebSocket that
    /// heard nothing from the gateway this long gets a WebSocket Ping.
    pub keepalive_interval: Duration,
    /// Liveness: a Ping unanswered (no frame of any kind back) this long
    /// ends the WebSocket, once the gateway is known to answer pings.
    pub gateway_deadline: Duration,
    /// Protocol v2: how long an idle WebSocket stays in the pool (the warm
    /// one excepted).
    pub pool_idle: Duration,
    /// Protocol v2: a WebSocket opened this long ago is never pooled or
    /// handed out again, the warm one included (the contract's 45 min).
    pub pool_max_age: Duration,
    /// Largest data payload of one chunk the relay sends.
    pub max_chunk: usize,
    /// The whole CA fetch, connect to last byte.
    pub ca_fetch_timeout: Duration,
    /// Largest CA answer accepted.
    pub max_ca_bytes: usize,
    /// Time open tunnels get to close when the relay stops.
    pub shutdown_grace: Duration,
    /// Protocol v2: how long a tunnel whose client closed first waits for
    /// the server's FIN before closing the WebSocket (late v2 uses 10 s).
    pub fin_grace: Duration,
    /// Protocol v2: how long a fresh WebSocket waits for HELLO_ACK.
    pub hello_ack_timeout: Duration,
    /// How long a fresh tunnel waits for the gateway's answer to the CONNECT
    /// (the gateway dials the target meanwhile; keepalives go out while it
    /// waits).
    pub answer_timeout: Duration,
    /// Protocol v2: how long a reused WebSocket has to start answering
    /// before the tunnel is redialled on a fresh one.
    pub reuse_answer_timeout: Duration,
    /// No client byte taken by the WebSocket for this long while the client
    /// has more: the tunnel is ended (`upload_stalled`).
    pub upload_stall: Duration,
    /// Connections whose request head has not arrived yet; more are
    /// answered `503` at once (each costs a thread until its head timeout).
    pub max_pending_heads: usize,
    /// Connections in all, tunnels included; more are answered `503` at once.
    pub max_connections: usize,
    /// Plain HTTP: time an origin has, once the request is passed on, to
    /// send its whole response head (`504` past it); the same 60 s a fresh
    /// tunnel waits for the gateway's answer.
    pub response_head_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8 * 1024,
            head_timeout: Duration::from_secs(10),
            upgrade_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            gateway_deadline: Duration::from_secs(30),
            pool_idle: Duration::from_secs(10),
            pool_max_age: Duration::from_secs(45 * 60),
            max_chunk: crate::gateway::chunk::MAX_CHUNK_DATA,
            ca_fetch_timeout: Duration::from_secs(5),
            max_ca_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_millis(1500),
            fin_grace: Duration::from_secs(10),
            hello_ack_timeout: Duration::from_secs(10),
            answer_timeout: ANSWER_TIMEOUT,
            reuse_answer_timeout: Duration::from_secs(10),
            upload_stall: Duration::from_secs(180),
            max_pending_heads: 1024,
            max_connections: 4096,
            response_head_timeout: ANSWER_TIMEOUT,
        }
    }
}
