//! The development gateway: the far end of the relay's wire contract
//! (docs/PROTOCOL.md), for tests and demos on one machine.
//!
//! One listener serves both what the real gateway serves: the CA endpoint
//! (`GET /v1/code/upstreamproxy/ca-cert`) and the tunnel WebSocket
//! (`/v1/code/upstreamproxy/ws`), over plain TCP or TLS. Each connection
//! gets a thread. A tunnel checks the upgrade (`Authorization: Bearer`,
//! `Content-Type: application/proto`, failing loudly with 401 and 415 where
//! the real gateway would fail silently), reads the CONNECT head from the
//! first chunk, checks its `Proxy-Authorization`, dials the target (names
//! are resolved only through `--map`; loopback IP literals are dialled
//! directly) and then pumps bytes both ways ([`crate::pump`]).
//!
//! With `--mode mitm` the pumped bytes go to an in-process MITM handler
//! instead ([`crate::mitm`]): it terminates the client's TLS with a leaf
//! for the CONNECT's host signed by the gateway CA, opens TLS to the origin
//! (verified against `--upstream-ca`), and injects `--inject` headers into
//! the requests; plain-HTTP tunnels get the headers too.
//!
//! What it saw goes to an event file ([`crate::events`]) that tests read.
//! Misbehaviour on demand: `--stall-upgrade` (never answers the upgrade),
//! `--refuse-upgrade STATUS`, `--refuse-first N`, `--answer-delay MS`,
//! `--no-pong` (never answers a WebSocket ping), and for the agent proxy `--close-idle-after MS` and `--on-reuse` (a reused
//! WebSocket that fails, [`ReuseFault`]). A policy of its own on demand:
//! `--deny HOST[=REASON]` answers CONNECTs to HOST `403` the way a gateway
//! whose allowlist lacks it does, and `--refuse-client-hello` ends a
//! tunnel whose first client bytes are a TLS ClientHello, sending nothing
//! back (as a gateway refusing a handshake's features does).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Bytes, Message, WebSocket};

use crate::args::{Args, UsageError};
use crate::events::{EventLog, escape};
use crate::head::{Authority, Host, RequestHead, head_end, parse_head, read_head_bytes};
use crate::http::{path_of, reason, response};
use crate::mitm::{Injection, Mitm, loopback_pair};
use crate::pki::TestCa;
use crate::pump::{self, Framing, PumpConfig, PumpEvent};
use crate::stream::GatewayStream;
use crate::wire::{self as chunk, V1_CA_CERT_PATH as CA_CERT_PATH, V1_WS_PATH as WS_PATH, base64};
use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod, SslVersion};
use openssl::x509::X509;

mod agent;

/// Largest chunk of data the gateway sends the relay.
pub const SEND_CHUNK: usize = 256 * 1024;
/// Bound on the request head of the upgrade or CA request.
const MAX_HEAD: usize = 16 * 1024;
/// Time a client has for TLS and its request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the relay has to send the CONNECT chunk after the upgrade.
const FIRST_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on dialling a target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Stack of a connection thread (TLS handshakes need some).
const CONN_STACK: usize = 512 * 1024;

/// Command-line help for `ccr-dev-gateway`.
pub const USAGE: &str = "\
usage: ccr-dev-gateway --token T|--token-file F --session-id S --ca-dir DIR [options]

A development stand-in for the CCR upstream-proxy gateway.

  --listen ADDR          where to listen (default 127.0.0.1:0); prints
                         `listening on IP:PORT` on stdout once bound
  --token T              the session token the upgrade's Bearer must carry
  --session-id S         the session id in the CONNECT's Basic credentials
  --ca-dir DIR           the gateway CA (ca.pem, ca.key.pem), made if missing;
                         served at GET /v1/code/upstreamproxy/ca-cert
  --tls-cert F --tls-key F
                         serve wss:// and https:// with this certificate
                         (TLS 1.2 and 1.3; each handshake logged as the
                         event `tls version=V resumed=true|false`)
  --tls-max 1.2|1.3      the newest TLS version offered (default 1.3; 1.2
                         for the bench's old rows)
  --map NAME:PORT=IP:PORT
                         where a CONNECT target goes (repeatable); unmapped
                         names get 502, loopback IP literals are dialled
  --events FILE          append one line per event (see the crate docs)
  --events-verbose       also one event line per data chunk received
  --ping-every MS        send a WebSocket ping on each tunnel this often
  --stall-upgrade        never answer WebSocket upgrades
  --refuse-upgrade STATUS
                         answer WebSocket upgrades with this status
  --mode blind|mitm      blind (default): tunnel bytes untouched; mitm:
                         terminate the client's TLS inside each tunnel with a
                         leaf for the CONNECT host signed by the gateway CA,
                         re-originate TLS to the target, inject headers.
                         A tunnel whose first client byte is not a TLS
                         handshake (0x16) is plain HTTP on both sides
  --upstream-ca FILE     mitm: PEM CAs that origin certificates must chain to
                         (only those; default: the system roots). An origin
                         that fails verification gets its client a 502
  --inject HOST=Header-Name: value
                         mitm: set this header on every request to HOST (any
                         port), replacing one the client sent (repeatable)
  --generation upstream-proxy|agent-proxy
                         which contract to serve (default upstream-proxy):
                         /v1/code/upstreamproxy/{ws,ca-cert} or
                         /v1/code/agent-proxy/{ws,ca-cert}, the other 404
  --server late|early|v1-only
                         agent-proxy: late (default) acknowledges HELLO,
                         sends FIN and serves further tunnels on the same
                         WebSocket; early never acknowledges v2 (one tunnel
                         per WebSocket, no FIN); v1-only drops every control
                         message unread (one tunnel per WebSocket, no FIN)
  --refuse-first N       answer the first N upgrades with 503
  --close-idle-after MS  close a WebSocket idle this long between tunnels
  --on-reuse cut|silent|answer-then-cut
                         agent-proxy: every tunnel after the first on one
                         WebSocket fails: cut swallows the CONNECT (and what
                         follows it for 300 ms) and closes the TCP connection
                         without FIN or close frame; silent swallows
                         everything until the relay closes; answer-then-cut
                         answers the CONNECT with 200 and a partial response,
                         then closes the TCP connection without FIN
  --answer-delay MS      wait this long before answering a CONNECT
  --no-pong              never answer a WebSocket ping (pings are still read,
                         and recorded as `ping-received` events in tunnels)
  --token-file PATH      re-read on every upgrade and CONNECT: a non-empty
                         token in it is the one accepted (else --token)
  --deny HOST[=REASON]   answer CONNECTs to HOST (any port) with 403 and the
                         body `request blocked: no rule or allowlist entry
                         allows host \"HOST\"`; with REASON also the header
                         `x-deny-reason: REASON` (repeatable)
  --refuse-client-hello  end a tunnel whose first client bytes are a TLS
                         ClientHello (16 03) with no byte back: a close
                         frame (a plain-HTTP tunnel is served as usual)
  -h, --help             this text
";

/// What the gateway does with a tunnel's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes pass through untouched, as with the real gateway's blind tunnels.
    Blind,
    /// TLS terminated and re-originated, requests rewritten ([`crate::mitm`]).
    Mitm,
}

impl Mode {
    /// The `--mode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Blind => "blind",
            Mode::Mitm => "mitm",
        }
    }
}

/// Which generation of the contract the gateway speaks (`--generation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Generation 1: `/v1/code/upstreamproxy/*`, one chunk format, one
    /// tunnel per WebSocket.
    UpstreamProxy,
    /// Generation 2: `/v1/code/agent-proxy/*`, protocol v2 messages.
    AgentProxy,
}

impl Generation {
    /// The `--generation` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::UpstreamProxy => "upstream-proxy",
            Generation::AgentProxy => "agent-proxy",
        }
    }

    /// `(WebSocket path, CA path)`.
    pub fn paths(self) -> (&'static str, &'static str) {
        match self {
            Generation::UpstreamProxy => (WS_PATH, CA_CERT_PATH),
            Generation::AgentProxy => (chunk::V2_WS_PATH, chunk::V2_CA_CERT_PATH),
        }
    }
}

/// Which era of agent-proxy server the gateway plays (`--server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// Acknowledges v2, sends FIN, serves many tunnels per WebSocket.
    Late,
    /// Reads v2 messages but never acknowledges v2: one tunnel per
    /// WebSocket, no FIN.
    Early,
    /// Drops every control message unread: one tunnel per WebSocket, no FIN.
    V1Only,
}

impl ServerKind {
    /// The `--server` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerKind::Late => "late",
            ServerKind::Early => "early",
            ServerKind::V1Only => "v1-only",
        }
    }
}

/// Everything `ccr-dev-gateway` is told on its command line.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub token: String,
    pub session_id: String,
    pub ca_dir: PathBuf,
    /// `(cert PEM file, key PEM file)` to serve TLS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--tls-max 1.2`: TLS 1.3 is not offered.
    pub tls_max_1_2: bool,
    /// CONNECT target (`name:port`, as [`Authority`] displays it) to address.
    pub maps: HashMap<String, SocketAddr>,
    pub events: Option<PathBuf>,
    pub events_verbose: bool,
    pub ping_every: Option<Duration>,
    pub stall_upgrade: bool,
    pub refuse_upgrade: Option<u16>,
    pub mode: Mode,
    /// `--upstream-ca`: what origin certificates must chain to (mitm).
    pub upstream_ca: Option<PathBuf>,
    /// `--inject`, in order (mitm).
    pub inject: Vec<Injection>,
    pub generation: Generation,
    /// `--server` (agent-proxy only).
    pub server: ServerKind,
    /// `--refuse-first N`: the first N upgrades get 503.
    pub refuse_first: u64,
    /// `--close-idle-after MS`: close a WebSocket idle between tunnels.
    pub close_idle_after: Option<Duration>,
    /// `--token-file`: read on every upgrade and CONNECT; when it holds a
    /// non-empty token that is the one accepted, else `token`.
    pub token_file: Option<PathBuf>,
    /// `--on-reuse`: how a reused WebSocket fails its next tunnels.
    pub on_reuse: Option<ReuseFault>,
    /// `--answer-delay MS`: a pause before each CONNECT's answer.
    pub answer_delay: Option<Duration>,
    /// `--no-pong`: pings are read but never answered.
    pub no_pong: bool,
    /// `--deny HOST[=REASON]`: hosts refused with `403`, each with its
    /// `x-deny-reason` (none: the body alone says it).
    pub deny: HashMap<String, Option<String>>,
    /// `--refuse-client-hello`: a tunnel that opens with a TLS ClientHello
    /// is ended with no byte back.
    pub refuse_client_hello: bool,
}

/// How a reused agent-proxy WebSocket fails (`--on-reuse`): faults the
/// relay's safe redial must survive, or must not replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReuseFault {
    /// Swallow the CONNECT (and the client bytes right after it), then
    /// close the TCP connection: no answer, no FIN, no close frame.
    Cut,
    /// Swallow everything, answer nothing, until the relay gives up.
    Silent,
    /// Answer the CONNECT (`200` and part of a response), then close the
    /// TCP connection without FIN: a tunnel broken after its answer began.
    AnswerThenCut,
}

impl ReuseFault {
    /// The `--on-reuse` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReuseFault::Cut => "cut",
            ReuseFault::Silent => "silent",
            ReuseFault::AnswerThenCut => "answer-then-cut",
        }
    }
}

impl GatewayConfig {
    /// Parses the command line (without the program name); `Ok(None)` for `--help`.
    pub fn from_args(
        args: impl IntoIterator<Item = OsString>,
    ) -> Result<Option<GatewayConfig>, UsageError> {
        let mut args = Args::new(args)?;
        let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let (mut token, mut session_id, mut ca_dir) = (None, None, None);
        let (mut tls_cert, mut tls_key) = (None, None);
        let mut tls_max_1_2 = false;
        let mut maps = HashMap::new();
        let (mut events, mut events_verbose) = (None, false);
        let mut ping_every = None;
        let (mut stall_upgrade, mut refuse_upgrade) = (false, None);
        let mut mode = Mode::Blind;
        let (mut upstream_ca, mut inject) = (None, Vec::new());
        let (mut generation, mut server) = (Generation::UpstreamProxy, None);
        let (mut refuse_first, mut close_idle_after, mut token_file) = (0, None, None);
        let (mut on_reuse, mut answer_delay, mut no_pong) = (None, None, false);
        let (mut deny, mut refuse_client_hello) = (HashMap::new(), false);
        while let Some(flag) = args.next_flag()? {
            match flag.as_str() {
                "--help" | "-h" => return Ok(None),
                "--listen" => listen = args.listen_addr()?,
                "--token" => token = Some(args.value()?),
                "--session-id" => session_id = Some(args.value()?),
                "--ca-dir" => ca_dir = Some(PathBuf::from(args.value()?)),
                "--tls-cert" => tls_cert = Some(PathBuf::from(args.value()?)),
                "--tls-key" => tls_key = Some(PathBuf::from(args.value()?)),
                "--tls-max" => {
                    tls_max_1_2 = match args.value()?.as_str() {
                        "1.2" => true,
                        "1.3" => false,
                        other => {
                            return Err(UsageError(format!(
                                "--tls-max: {other:?} is not 1.2 or 1.3"
                            )));
                        }
                    }
                }
                "--map" => {
                    let (name, addr) = parse_map(&args.value()?)?;
                    maps.insert(name, addr);
                }
                "--events" => events = Some(PathBuf::from(args.value()?)),
                "--events-verbose" => events_verbose = true,
                "--ping-every" => {
                    let ms: u64 = args.parsed("a number of milliseconds")?;
                    if ms == 0 {
                        return Err(UsageError("--ping-every must be above 0".into()));
                    }
                    ping_every = Some(Duration::from_millis(ms));
                }
                "--stall-upgrade" => stall_upgrade = true,
                "--refuse-upgrade" => {
                    let status: u16 = args.parsed("an HTTP status")?;
                    if !(200..=599).contains(&status) || status == 101 {
                        return Err(UsageError(format!(
                            "--refuse-upgrade: {status} is not a refusal status (200-599)"
                        )));
                    }
                    refuse_upgrade = Some(status);
                }
                "--mode" => {
                    mode = match args.value()?.as_str() {
                        "blind" => Mode::Blind,
                        "mitm" => Mode::Mitm,
                        other => {
                            return Err(UsageError(format!(
                                "--mode: {other:?} is not a mode (blind, mitm)"
                            )));
                        }
                    }
                }
                "--generation" => {
                    generation = match args.value()?.as_str() {
                        "upstream-proxy" => Generation::UpstreamProxy,
                        "agent-proxy" => Generation::AgentProxy,
                        other => {
                            return Err(UsageError(format!(
                                "--generation: {other:?} is not upstream-proxy or agent-proxy"
                            )));
                        }
                    }
                }
                "--server" => {
                    server = Some(match args.value()?.as_str() {
                        "late" => ServerKind::Late,
                        "early" => ServerKind::Early,
                        "v1-only" => ServerKind::V1Only,
                        other => {
                            return Err(UsageError(format!(
                                "--server: {other:?} is not late, early or v1-only"
                            )));
                        }
                    })
                }
                "--refuse-first" => refuse_first = args.parsed("a number")?,
                "--close-idle-after" => {
                    let ms: u64 = args.parsed("a number of milliseconds")?;
                    close_idle_after = Some(Duration::from_millis(ms));
                }
                "--token-file" => token_file = Some(PathBuf::from(args.value()?)),
                "--on-reuse" => {
                    on_reuse = Some(match args.value()?.as_str() {
                        "cut" => ReuseFault::Cut,
                        "silent" => ReuseFault::Silent,
                        "answer-then-cut" => ReuseFault::AnswerThenCut,
                        other => {
                            return Err(UsageError(format!(
                                "--on-reuse: {other:?} is not cut, silent or answer-then-cut"
                            )));
                        }
                    })
                }
                "--answer-delay" => {
                    let ms: u64 = args.parsed("a number of milliseconds")?;
                    answer_delay = Some(Duration::from_millis(ms));
                }
                "--no-pong" => no_pong = true,
                "--deny" => {
                    let text = args.value()?;
                    let (host, reason) = match text.split_once('=') {
                        Some((host, reason)) => (host, Some(reason.to_string())),
                        None => (text.as_str(), None),
                    };
                    if host.is_empty() || host.contains(|c: char| c.is_ascii_control()) {
                        return Err(UsageError(format!("--deny {text:?}: no host")));
                    }
                    deny.insert(host.to_ascii_lowercase(), reason);
                }
                "--refuse-client-hello" => refuse_client_hello = true,
                "--upstream-ca" => upstream_ca = Some(PathBuf::from(args.value()?)),
                "--inject" => {
                    let text = args.value()?;
                    let i = Injection::parse(&text)
                        .map_err(|why| UsageError(format!("--inject {text:?}: {why}")))?;
                    inject.push(i);
                }
                _ => return Err(args.unknown()),
            }
        }
        let tls = match (tls_cert, tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(UsageError("--tls-cert and --tls-key go together".into())),
        };
        if mode != Mode::Mitm && (upstream_ca.is_some() || !inject.is_empty()) {
            return Err(UsageError(
                "--upstream-ca and --inject need --mode mitm".into(),
            ));
        }
        if on_reuse.is_some() && generation != Generation::AgentProxy {
            return Err(UsageError(
                "--on-reuse needs --generation agent-proxy".into(),
            ));
        }
        if server.is_some() && generation != Generation::AgentProxy {
            return Err(UsageError("--server needs --generation agent-proxy".into()));
        }
        if mode == Mode::Mitm && generation == Generation::AgentProxy {
            return Err(UsageError(
                "--mode mitm is not supported with --generation agent-proxy".into(),
            ));
        }
        let token = match (token, &token_file) {
            (None, Some(_)) => Some(String::new()),
            (t, _) => t,
        };
        let required = |v: Option<String>, flag: &str| {
            v.filter(|s| !s.is_empty())
                .ok_or_else(|| UsageError(format!("{flag} is required")))
        };
        Ok(Some(GatewayConfig {
            listen,
            token: match token {
                Some(t) if token_file.is_some() => t,
                t => required(t, "--token")?,
            },
            session_id: required(session_id, "--session-id")?,
            ca_dir: ca_dir.ok_or_else(|| UsageError("--ca-dir is required".into()))?,
            tls,
            tls_max_1_2,
            maps,
            events,
            events_verbose,
            ping_every,
            stall_upgrade,
            refuse_upgrade,
            mode,
            upstream_ca,
            inject,
            generation,
            server: server.unwrap_or(ServerKind::Late),
            refuse_first,
            close_idle_after,
            token_file,
            on_reuse,
            answer_delay,
            no_pong,
            deny,
            refuse_client_hello,
        }))
    }
}

/// Parses `NAME:PORT=IP:PORT`.
fn parse_map(text: &str) -> Result<(String, SocketAddr), UsageError> {
    let bad = |why: &str| UsageError(format!("--map {text:?}: {why} (want NAME:PORT=IP:PORT)"));
    let (from, to) = text.split_once('=').ok_or_else(|| bad("no `=`"))?;
    let from = Authority::parse(from).map_err(|e| bad(&e.to_string()))?;
    let to: SocketAddr = to.parse().map_err(|_| bad("right side is not IP:PORT"))?;
    Ok((from.to_string(), to))
}

/// State every connection shares.
struct Shared {
    cfg: GatewayConfig,
    ca_pem: Vec<u8>,
    tls: Option<SslAcceptor>,
    /// The MITM state, in `--mode mitm`.
    mitm: Option<Mitm>,
    events: EventLog,
    next_id: AtomicU64,
    /// Upgrade requests on the WebSocket path so far (refused ones too).
    upgrades: AtomicU64,
}

impl Shared {
    /// The token accepted now: `--token-file`'s when it holds one, else `--token`.
    fn token(&self) -> String {
        if let Some(path) = &self.cfg.token_file
            && let Ok(text) = std::fs::read_to_string(path)
        {
            let t = text.trim();
            if !t.is_empty() {
                return t.to_string();
            }
        }
        self.cfg.token.clone()
    }

    /// `Bearer <token>` as the upgrade must carry it.
    fn bearer(&self) -> String {
        format!("Bearer {}", self.token())
    }

    /// `Basic base64(session:token)` as the CONNECT must carry it.
    fn basic(&self) -> String {
        let pair = format!("{}:{}", self.cfg.session_id, self.token());
        format!("Basic {}", base64(pair.as_bytes()))
    }
}

/// A bound gateway, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Gateway {
    /// Loads (or makes) the CA, loads the TLS identity, opens the event
    /// file and binds the listener.
    pub fn bind(cfg: GatewayConfig) -> io::Result<Gateway> {
        let ca = TestCa::load_or_create(&cfg.ca_dir)?;
        let tls = match &cfg.tls {
            Some((cert, key)) => {
                let read = |p: &PathBuf| {
                    std::fs::read(p).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot read {}: {e}", p.display()))
                    })
                };
                Some(tls_acceptor(&read(cert)?, &read(key)?, cfg.tls_max_1_2)?)
            }
            None => None,
        };
        let events = match &cfg.events {
            Some(path) => EventLog::open(path, cfg.events_verbose).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
            })?,
            None => EventLog::none(),
        };
        let ca_pem = ca.cert_pem();
        let mitm = match cfg.mode {
            Mode::Blind => None,
            Mode::Mitm => Some(Mitm::new(
                ca,
                cfg.upstream_ca.as_deref(),
                cfg.inject.clone(),
            )?),
        };
        let listener = TcpListener::bind(cfg.listen)?;
        let shared = Shared {
            ca_pem,
            tls,
            mitm,
            events,
            next_id: AtomicU64::new(1),
            upgrades: AtomicU64::new(0),
            cfg,
        };
        Ok(Gateway {
            listener,
            shared: Arc::new(shared),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections, one thread each, for ever.
    pub fn serve(self) -> io::Result<()> {
        crate::accept::serve_each(&self.listener, CONN_STACK, |conn| {
            let shared = Arc::clone(&self.shared);
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            (format!("gw-conn-{id}"), move || {
                if let Err(e) = handle(&shared, id, conn) {
                    log::info!("#{id}: {e}");
                }
            })
        })
    }
}

/// The gateway's TLS: Mozilla's intermediate settings (TLS 1.2 and 1.3;
/// native-tls's acceptor follows an older edition that turns 1.3 off), 1.3
/// left out under `--tls-max 1.2`. OpenSSL's server session cache and TLS
/// 1.3 tickets are on by default, so a client may resume.
fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8], max_1_2: bool) -> io::Result<SslAcceptor> {
    let bad = |e: openssl::error::ErrorStack| io::Error::other(format!("TLS setup failed: {e}"));
    let mut chain = X509::stack_from_pem(cert_pem)
        .map_err(|e| io::Error::other(format!("bad TLS certificate: {e}")))?
        .into_iter();
    let leaf = chain
        .next()
        .ok_or_else(|| io::Error::other("no certificate in the TLS certificate file"))?;
    let key = PKey::private_key_from_pem(key_pem)
        .map_err(|e| io::Error::other(format!("bad TLS key: {e}")))?;
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(bad)?;
    builder.set_certificate(&leaf).map_err(bad)?;
    for cert in chain {
        builder.add_extra_chain_cert(cert).map_err(bad)?;
    }
    builder.set_private_key(&key).map_err(bad)?;
    builder.check_private_key().map_err(bad)?;
    if max_1_2 {
        builder
            .set_max_proto_version(Some(SslVersion::TLS1_2))
            .map_err(bad)?;
    }
    Ok(builder.build())
}

/// Serves one connection: TLS if configured, one request head, then the
/// CA certificate, a refusal, or a tunnel.
fn handle(shared: &Shared, id: u64, tcp: TcpStream) -> io::Result<()> {
    let peer = tcp.peer_addr()?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let stream = match &shared.tls {
        Some(acceptor) => match acceptor.accept(tcp) {
            Ok(tls) => {
                shared.events.record(&format!(
                    "tls version={} resumed={}",
                    tls.ssl().version_str(),
                    tls.ssl().session_reused()
                ));
                GatewayStream::ServerTls(Box::new(tls))
            }
            Err(e) => return Err(io::Error::other(format!("TLS from {peer} failed: {e}"))),
        },
        None => GatewayStream::Plain(tcp),
    };
    let mut reader = BufReader::with_capacity(MAX_HEAD, stream);
    let head_bytes = read_head_bytes(&mut reader, MAX_HEAD)
        .map_err(|e| io::Error::other(format!("request from {peer}: {e}")))?;
    let leftover = reader.buffer().to_vec();
    let mut stream = reader.into_inner();
    let head = match parse_head(&head_bytes) {
        Ok(h) => h,
        Err(e) => {
            reply_and_close(&mut stream, 400, &format!("{e}\n"));
            return Err(io::Error::other(format!("bad request from {peer}: {e}")));
        }
    };
    let path = path_of(&head.target);
    log::info!("#{id}: {} {} from {peer}", head.method, head.target);
    let (ws_path, ca_path) = shared.cfg.generation.paths();
    if path == ca_path && head.method == "GET" {
        let resp = response(200, "application/x-pem-file", &shared.ca_pem, true);
        stream.write_all(&resp)?;
        stream.flush()?;
        linger(&mut stream);
        return Ok(());
    }
    if path != ws_path {
        reply_and_close(&mut stream, 404, &format!("no route for {path}\n"));
        return Ok(());
    }
    if shared.cfg.stall_upgrade {
        shared.events.record("upgrade stalled");
        log::info!("#{id}: stalling the upgrade (--stall-upgrade)");
        stream.tcp().set_read_timeout(None)?;
        // Hold the connection, saying nothing, until the client gives up.
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        return Ok(());
    }
    let ws_no = shared.upgrades.fetch_add(1, Ordering::SeqCst) + 1;
    let checked = if ws_no <= shared.cfg.refuse_first {
        Err((503, "--refuse-first".to_string()))
    } else {
        check_upgrade(shared, &head)
    };
    if let Err((status, why)) = checked {
        shared
            .events
            .record(&format!("upgrade refused {status} {why} ws={ws_no}"));
        log::info!("#{id}: upgrade refused {status}: {why}");
        reply_and_close(&mut stream, status, &format!("{why}\n"));
        return Ok(());
    }
    let key = head.header("Sec-WebSocket-Key").unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    shared.events.record(&format!("upgrade ok ws={ws_no}"));
    stream.write_all(answer.as_bytes())?;
    stream.flush()?;
    let stream = if shared.cfg.no_pong {
        stream.without_pongs()
    } else {
        stream
    };
    let ws = WebSocket::from_partially_read(stream, leftover, Role::Server, Some(ws_config()));
    match shared.cfg.generation {
        Generation::UpstreamProxy => tunnel(shared, id, ws),
        Generation::AgentProxy => agent::session(shared, id, ws_no, ws),
    }
}

/// The upgrade's checks, in the order the real gateway's failures would
/// show: refusal on demand, credentials, content type, WebSocket headers.
/// (`--stall-upgrade` comes before all of them: a stalled upgrade is never
/// answered, whatever it carries.)
fn check_upgrade(shared: &Shared, head: &RequestHead) -> Result<(), (u16, String)> {
    if let Some(status) = shared.cfg.refuse_upgrade {
        return Err((status, "--refuse-upgrade".into()));
    }
    if head.method != "GET" {
        return Err((405, format!("method {} is not GET", head.method)));
    }
    match head.header("Authorization") {
        None => return Err((401, "no Authorization header".into())),
        Some(v) if !eq_scheme_and_value(v, &shared.bearer()) => {
            return Err((401, "wrong bearer token".into()));
        }
        Some(_) => {}
    }
    match head.header("Content-Type") {
        None => {
            return Err((
                415,
                "no Content-Type header (want application/proto)".into(),
            ));
        }
        Some(v) => {
            let mime = v.split(';').next().unwrap_or_default().trim();
            if !mime.eq_ignore_ascii_case("application/proto") {
                return Err((415, format!("Content-Type {v:?} is not application/proto")));
            }
        }
    }
    let has_token = |name: &str, token: &str| {
        head.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        return Err((400, "not a WebSocket upgrade".into()));
    }
    if head.header("Sec-WebSocket-Version") != Some("13") {
        return Err((400, "Sec-WebSocket-Version is not 13".into()));
    }
    if head
        .header("Sec-WebSocket-Key")
        .is_none_or(|k| k.trim().is_empty())
    {
        return Err((400, "no Sec-WebSocket-Key".into()));
    }
    Ok(())
}

/// `Scheme value` equality with the scheme case-insensitive.
fn eq_scheme_and_value(got: &str, want: &str) -> bool {
    match (got.trim().split_once(' '), want.split_once(' ')) {
        (Some((gs, gv)), Some((ws, wv))) => gs.eq_ignore_ascii_case(ws) && gv.trim() == wv,
        _ => false,
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(128 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(8 * chunk::MAX_CHUNK_DATA)
        .max_message_size(Some(4 * chunk::MAX_CHUNK_DATA))
        .max_frame_size(Some(4 * chunk::MAX_CHUNK_DATA))
}

/// Why a tunnel is refused: the response head sent inside it.
struct Refusal {
    status: u16,
    why: String,
    /// The whole answer when it is more than a status line (`--deny`).
    answer: Option<Vec<u8>>,
}

fn refuse(status: u16, why: impl Into<String>) -> Refusal {
    Refusal {
        status,
        why: why.into(),
        answer: None,
    }
}

impl Refusal {
    /// What the gateway sends inside the tunnel.
    fn answer(&self) -> Vec<u8> {
        match &self.answer {
            Some(answer) => answer.clone(),
            None => {
                format!("HTTP/1.1 {} {}\r\n\r\n", self.status, reason(self.status)).into_bytes()
            }
        }
    }
}

/// `--deny`: the policy answer for `target` when its host is denied.
fn denied(shared: &Shared, target: &Authority) -> Option<Refusal> {
    let host = target.host.to_string().to_ascii_lowercase();
    let reason = shared.cfg.deny.get(&host)?;
    let body = format!("request blocked: no rule or allowlist entry allows host {host:?}\n");
    let header = reason
        .as_ref()
        .map(|r| format!("x-deny-reason: {r}\r\n"))
        .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\n{header}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    Some(Refusal {
        status: 403,
        why: format!("--deny {host}"),
        answer: Some(answer.into_bytes()),
    })
}

/// A tunnel: CONNECT checks, dial, `200`, then bytes both ways: to the
/// target (blind), or to a MITM handler that talks to the target.
fn tunnel(shared: &Shared, id: u64, mut ws: WebSocket<GatewayStream>) -> io::Result<()> {
    let first = match read_first_chunk(&mut ws) {
        Ok(data) => data,
        // Opened and closed before any CONNECT: the relay's start-up probe,
        // no refused tunnel.
        Err(refusal) if refusal.status == 0 && refusal.why == CLOSED_BEFORE_CONNECT => {
            shared.events.record("probe");
            log::info!("#{id}: WebSocket closed before any CONNECT: the relay's start-up probe");
            return Ok(());
        }
        Err(refusal) => {
            refuse_tunnel(shared, id, &mut ws, refusal);
            return Ok(());
        }
    };
    shared
        .events
        .record(&format!("first-chunk {}", escape(&first)));
    if let After::Refused(refusal, mut ws) = run_tunnel(shared, id, ws, &first, Framing::V1, "")? {
        refuse_tunnel(shared, id, &mut ws, refusal);
    }
    Ok(())
}

/// What became of a tunnel's WebSocket.
enum After {
    /// Closed (or broken): nothing more on it.
    Gone,
    /// FIN and FIN_ACK done: ready for the next tunnel.
    Reusable(WebSocket<GatewayStream>),
    /// The CONNECT was refused before any answer; the caller answers.
    Refused(Refusal, WebSocket<GatewayStream>),
}

/// One tunnel from its CONNECT data on: checks, dial, `200`, pump.
/// `tag` is appended to the `tunnel-end` event line.
fn run_tunnel(
    shared: &Shared,
    id: u64,
    mut ws: WebSocket<GatewayStream>,
    first: &[u8],
    framing: Framing,
    tag: &str,
) -> io::Result<After> {
    let started = Instant::now();
    let (target, mut rest) = match check_connect(shared, first) {
        Ok(t) => t,
        Err(refusal) => return Ok(After::Refused(refusal, ws)),
    };
    let name = target.to_string();
    shared.events.record(&format!("connect {name}"));
    if let Some(refusal) = denied(shared, &target) {
        return Ok(After::Refused(refusal, ws));
    }
    let socket = match dial(shared, &target) {
        Ok(s) => s,
        Err(refusal) => return Ok(After::Refused(refusal, ws)),
    };
    log::info!("#{id}: tunnel to {name} ({})", socket.peer_addr()?);
    if let Some(delay) = shared.cfg.answer_delay {
        thread::sleep(delay);
    }
    ws.send(Message::Binary(Bytes::from(chunk::encode(
        b"HTTP/1.1 200 Connection Established\r\n\r\n",
    ))))
    .map_err(io::Error::other)?;
    if shared.cfg.refuse_client_hello {
        let data = first_client_data(&mut ws, framing)?;
        if data.starts_with(&[0x16, 0x03]) {
            shared
                .events
                .record(&format!("client-hello-refused {name}{tag}"));
            log::info!("#{id}: tunnel to {name}: ClientHello refused (--refuse-client-hello)");
            close_politely(&mut ws);
            return Ok(After::Gone);
        }
        rest.extend_from_slice(&data);
    }
    let events = &shared.events;
    let verbose = events.verbose();
    let observe = |e: PumpEvent| match e {
        PumpEvent::Keepalive => events.record("keepalive"),
        PumpEvent::ChunkIn(n) if verbose => events.record(&format!("chunk-in {n}")),
        PumpEvent::ChunkIn(_) => {}
        PumpEvent::PingSent => events.record("ping-sent"),
        PumpEvent::PongReceived => events.record("pong-received"),
        PumpEvent::PingReceived => events.record("ping-received"),
        PumpEvent::Control(c) => events.record(&format!("control-ignored {c}{tag}")),
        PumpEvent::FinSent => events.record(&format!("fin-sent{tag}")),
        PumpEvent::AfterFin(n) => events.record(&format!("data-after-fin {n}{tag}")),
    };
    let cfg = PumpConfig {
        read_size: SEND_CHUNK,
        ping_every: shared.cfg.ping_every,
        framing,
    };
    let report = match &shared.mitm {
        None => {
            if !rest.is_empty() {
                (&socket).write_all(&rest)?;
            }
            pump::run(socket, ws, cfg, &observe)?
        }
        Some(mitm) => {
            // The pump feeds one end of a loopback connection; the MITM
            // handler serves the other on its own thread (started before
            // `rest` is written, so a large `rest` cannot block).
            let (outer, inner) = loopback_pair()?;
            thread::scope(|s| {
                let handler = thread::Builder::new()
                    .name(format!("gw-mitm-{id}"))
                    .stack_size(CONN_STACK)
                    .spawn_scoped(s, || mitm.serve(events, id, &target.host, inner, socket))?;
                let report = match (&outer).write_all(&rest) {
                    Ok(()) => pump::run(outer, ws, cfg, &observe),
                    Err(e) => {
                        drop(outer); // the handler sees the end, so the join below returns
                        Err(e)
                    }
                };
                if handler.join().is_err() {
                    log::warn!("#{id}: the mitm handler panicked");
                }
                report
            })?
        }
    };
    let in_total = report.bytes_in + rest.len() as u64;
    shared.events.record(&format!(
        "tunnel-end {name} in={in_total} out={} end={}{tag}",
        report.bytes_out,
        report.end.replace(' ', "_")
    ));
    let secs = started.elapsed().as_secs_f64();
    log::info!(
        "#{id}: tunnel to {name} ended ({}): in {in_total} B, out {} B, {secs:.2} s, {:.1} MB/s",
        report.end,
        report.bytes_out,
        (in_total + report.bytes_out) as f64 / secs.max(1e-9) / 1e6
    );
    Ok(match report.reusable {
        Some(ws) => After::Reusable(ws),
        None => After::Gone,
    })
}

/// `--refuse-client-hello`: the tunnel's first client data after the
/// answer (keepalives and control messages skipped); empty when the relay
/// sent none in time or ended the tunnel.
fn first_client_data(ws: &mut WebSocket<GatewayStream>, framing: Framing) -> io::Result<Vec<u8>> {
    ws.get_ref()
        .tcp()
        .set_read_timeout(Some(FIRST_CHUNK_TIMEOUT))?;
    let data = loop {
        let message = match ws.read() {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Text(_) | Message::Close(_)) | Err(_) => break Vec::new(),
            Ok(_) => continue,
        };
        let data = match framing {
            Framing::V1 => chunk::decode(&message).map(<[u8]>::to_vec).ok(),
            Framing::V2 { .. } => chunk::decode_v2(&message)
                .ok()
                .filter(|m| m.control == 0)
                .map(|m| m.data.to_vec()),
        };
        match data {
            Some(data) if !data.is_empty() => break data,
            _ => continue,
        }
    };
    ws.get_ref().tcp().set_read_timeout(None)?;
    Ok(data)
}

/// Sends a close frame and reads until the relay's reply or EOF, so the
/// close is no reset.
fn close_politely(ws: &mut WebSocket<GatewayStream>) {
    let _ = ws.close(None);
    let _ = ws
        .get_ref()
        .tcp()
        .set_read_timeout(Some(Duration::from_secs(2)));
    while ws.read().is_ok() {}
}

/// Why a WebSocket the relay closed before its first chunk carried no
/// tunnel: the start-up probe does that.
const CLOSED_BEFORE_CONNECT: &str = "relay closed before the CONNECT";

/// Reads the first message; it must be a chunk carrying data.
fn read_first_chunk(ws: &mut WebSocket<GatewayStream>) -> Result<Vec<u8>, Refusal> {
    let deadline = Instant::now() + FIRST_CHUNK_TIMEOUT;
    loop {
        let _ = ws.get_ref().tcp().set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ));
        match ws.read() {
            Ok(Message::Binary(b)) => {
                return match chunk::decode(&b) {
                    Ok([]) => Err(refuse(400, "first chunk carries no data (a keepalive)")),
                    Ok(data) => Ok(data.to_vec()),
                    Err(e) => Err(refuse(400, format!("first message is not a chunk: {e}"))),
                };
            }
            Ok(Message::Text(_)) => return Err(refuse(400, "first message is a text frame")),
            Ok(Message::Close(_)) => return Err(refuse(0, CLOSED_BEFORE_CONNECT)),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(refuse(408, "no CONNECT chunk in time"));
            }
            Err(e) => {
                return Err(refuse(
                    0,
                    format!("websocket failed before the CONNECT: {e}"),
                ));
            }
        }
    }
}

/// Checks the CONNECT head in the first chunk: exact framing, method,
/// credentials, target. Returns the target and the data after the head.
fn check_connect(shared: &Shared, data: &[u8]) -> Result<(Authority, Vec<u8>), Refusal> {
    let Some(end) = head_end(data) else {
        return Err(refuse(
            400,
            "first chunk does not hold a whole CONNECT head",
        ));
    };
    let head_bytes = &data[..end];
    let bare_lf = head_bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head_bytes[i - 1] != b'\r'));
    if bare_lf {
        return Err(refuse(400, "CONNECT head has a line not ending in CRLF"));
    }
    let head = parse_head(head_bytes).map_err(|e| refuse(400, e.to_string()))?;
    if head.method != "CONNECT" {
        return Err(refuse(
            405,
            format!("method {} is not CONNECT", head.method),
        ));
    }
    if head.minor_version != 1 {
        return Err(refuse(400, "CONNECT is not HTTP/1.1"));
    }
    let auth = head
        .header("Proxy-Authorization")
        .ok_or_else(|| refuse(407, "no Proxy-Authorization"))?;
    if !eq_scheme_and_value(auth, &shared.basic()) {
        return Err(refuse(407, "wrong Proxy-Authorization"));
    }
    let target = Authority::parse(&head.target)
        .map_err(|e| refuse(400, format!("bad CONNECT target: {e}")))?;
    Ok((target, data[end..].to_vec()))
}

/// Connects to a target: `--map` first, then loopback IP literals.
fn dial(shared: &Shared, target: &Authority) -> Result<TcpStream, Refusal> {
    let name = target.to_string();
    let addr = match shared.cfg.maps.get(&name) {
        Some(addr) => *addr,
        None => {
            let ip = match &target.host {
                Host::Ipv4(ip) => IpAddr::V4(*ip),
                Host::Ipv6(ip) => IpAddr::V6(*ip),
                Host::Name(_) => return Err(refuse(502, format!("{name} is not mapped"))),
            };
            if !ip.is_loopback() {
                return Err(refuse(
                    502,
                    format!("{name} is not mapped and not loopback"),
                ));
            }
            SocketAddr::new(ip, target.port)
        }
    };
    let socket = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| refuse(502, format!("cannot connect to {name} at {addr}: {e}")))?;
    let _ = socket.set_nodelay(true);
    Ok(socket)
}

/// Answers a refused tunnel inside it (status 0: nobody to answer) and
/// closes it politely.
fn refuse_tunnel(shared: &Shared, id: u64, ws: &mut WebSocket<GatewayStream>, refusal: Refusal) {
    let (status, why) = (refusal.status, &refusal.why);
    shared
        .events
        .record(&format!("tunnel refused {status} {why}"));
    log::info!("#{id}: tunnel refused ({status}): {why}");
    if status != 0 {
        let answer = refusal.answer();
        let _ = ws.send(Message::Binary(Bytes::from(chunk::encode(&answer))));
    }
    let _ = ws.close(None);
    // Read until the relay's close reply or EOF, so the close is no reset.
    let _ = ws
        .get_ref()
        .tcp()
        .set_read_timeout(Some(Duration::from_secs(2)));
    while ws.read().is_ok() {}
}

/// Sends a short response and closes without a reset.
fn reply_and_close(stream: &mut GatewayStream, status: u16, body: &str) {
    let _ = stream.write_all(&response(status, "text/plain", body.as_bytes(), true));
    let _ = stream.flush();
    linger(stream);
}

/// After the last response: half-close and read what the client still
/// sends (bounded), so closing does not reset the connection under it.
fn linger(stream: &mut GatewayStream) {
    match stream {
        GatewayStream::Tls(tls) => {
            let _ = tls.shutdown();
        }
        GatewayStream::ServerTls(tls) => {
            let _ = tls.shutdown();
        }
        _ => {}
    }
    let tcp = stream.tcp();
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let mut sink = [0u8; 4096];
    let mut tcp = tcp;
    while matches!(tcp.read(&mut sink), Ok(n) if n > 0) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Result<Option<GatewayConfig>, UsageError> {
        GatewayConfig::from_args(args.iter().map(OsString::from))
    }

    #[test]
    fn command_line() {
        let c = cfg(&[
            "--token",
            "t",
            "--session-id",
            "s",
            "--ca-dir",
            "/tmp/x",
            "--map",
            "Origin.Test:443=127.0.0.1:9",
            "--ping-every",
            "250",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.maps["origin.test:443"], "127.0.0.1:9".parse().unwrap());
        assert_eq!(c.ping_every, Some(Duration::from_millis(250)));
        assert_eq!(c.mode, Mode::Blind);
        assert!(cfg(&["--help"]).unwrap().is_none());
        let err = |a: &[&str]| cfg(a).unwrap_err().0;
        assert_eq!(
            err(&["--session-id", "s", "--ca-dir", "d"]),
            "--token is required"
        );
        assert!(err(&["--map", "x=1"]).contains("want NAME:PORT=IP:PORT"));
        assert!(
            err(&["--tls-cert", "c"]).contains("go together")
                || err(&["--tls-cert", "c"]).contains("required")
        );
        let base = ["--token", "t", "--session-id", "s", "--ca-dir", "d"];
        let with = |more: &[&str]| cfg(&[&base[..], more].concat());
        let c = with(&[
            "--deny",
            "Blocked.Test=not on the allowlist",
            "--deny",
            "other.test",
            "--refuse-client-hello",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.deny["blocked.test"].as_deref(),
            Some("not on the allowlist")
        );
        assert_eq!(c.deny["other.test"], None);
        assert!(c.refuse_client_hello);
        assert!(err(&[&base[..], &["--deny", "=why"]].concat()).contains("no host"));
        let c = with(&[
            "--mode",
            "mitm",
            "--upstream-ca",
            "/tmp/ca.pem",
            "--inject",
            "Origin.Test=X-Api-Key: injected-secret",
            "--inject=o2.test=X-B:",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.mode, Mode::Mitm);
        assert_eq!(c.upstream_ca, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(
            c.inject,
            [
                Injection::new("origin.test", "X-Api-Key", "injected-secret"),
                Injection::new("o2.test", "X-B", "")
            ]
        );
        let with_err = |more: &[&str]| with(more).unwrap_err().0;
        assert!(with_err(&["--inject", "o.test=X: v"]).contains("need --mode mitm"));
        assert!(with_err(&["--upstream-ca", "f"]).contains("need --mode mitm"));
        assert!(with_err(&["--mode", "mitm", "--inject", "o.test"]).contains("--inject"));
        assert!(with_err(&["--mode", "sideways"]).contains("not a mode"));
        assert!(with_err(&["--tls-max", "1.1"]).contains("not 1.2 or 1.3"));
        assert!(with(&["--tls-max", "1.2"]).unwrap().unwrap().tls_max_1_2);
        assert!(!with(&["--tls-max", "1.3"]).unwrap().unwrap().tls_max_1_2);
        assert!(err(&["--bogus"]).contains("unknown option --bogus"));
        let v2 = with(&[
            "--generation",
            "agent-proxy",
            "--on-reuse",
            "answer-then-cut",
            "--answer-delay=1500",
            "--no-pong",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(v2.on_reuse, Some(ReuseFault::AnswerThenCut));
        assert_eq!(v2.answer_delay, Some(Duration::from_millis(1500)));
        assert!(v2.no_pong);
        assert!(!with(&[]).unwrap().unwrap().no_pong);
        assert!(with_err(&["--on-reuse", "cut"]).contains("needs --generation agent-proxy"));
        assert!(
            with_err(&["--generation", "agent-proxy", "--on-reuse", "later"])
                .contains("not cut, silent or answer-then-cut")
        );
    }

    #[test]
    fn credentials_compare_scheme_case_insensitively() {
        assert!(eq_scheme_and_value("bearer abc", "Bearer abc"));
        assert!(!eq_scheme_and_value("Bearer abcd", "Bearer abc"));
        assert!(!eq_scheme_and_value("Bearerabc", "Bearer abc"));
    }
}
