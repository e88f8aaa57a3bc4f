//! The gateway client: where the gateway is, how to reach it, and how one
//! tunnel's WebSocket is opened (the contract's section 3; for the agent
//! proxy, its generation's paths and a token re-read for every WebSocket).
//!
//! Everything up to the finished upgrade runs under one deadline: TCP
//! connect, TLS handshake and HTTP upgrade together. A gateway that accepts
//! TCP and then says nothing costs a client at most that long.
//!
//! [`Gateway`] also holds what the relay learns about its gateway while it
//! runs ([`GatewayState`]): whether it acknowledges tunnel protocol v2, and
//! the start-up probe's error, which makes tunnels dial once instead of
//! retrying; and whether it answers WebSocket pings ([`Liveness`]). The
//! gateway's TCP socket gets `TCP_USER_TIMEOUT`
//! ([`liveness::TCP_USER_TIMEOUT`]).

pub mod chunk;
pub mod generation;
pub mod liveness;
pub mod message_v2;
pub mod pool;
pub mod token;
pub mod wire;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tungstenite::WebSocket;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderValue, Uri};
use tungstenite::protocol::WebSocketConfig;

use crate::gateway::pool::Pool;
use crate::http::host::is_dns_name;
use crate::http::request_head::Authority;
use crate::sys::lock::lock;
use crate::sys::socket::{self, Mode};
use crate::sys::text::{self, Keep, Unfit};
pub use generation::Generation;
use liveness::Liveness;
use token::TokenSource;

/// Path of the first generation's WebSocket under the base URL.
pub const WS_PATH: &str = "/v1/code/upstreamproxy/ws";
/// Path of the first generation's CA certificate under the base URL.
pub const CA_CERT_PATH: &str = "/v1/code/upstreamproxy/ca-cert";

/// Where the gateway is, parsed from its base URL.
///
/// ```
/// use ccr_relay::gateway::Endpoint;
/// let e = Endpoint::parse("https://gw.example:8443/prefix/").unwrap();
/// assert_eq!(e.ws_url("/ws"), "wss://gw.example:8443/prefix/ws");
/// assert_eq!(e.http_url("/x"), "https://gw.example:8443/prefix/x");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` (TLS) or `http` (plain).
    pub tls: bool,
    /// Host as written, without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing `/` (often empty).
    pub prefix: String,
}

/// Why a gateway base URL is not usable. The texts follow the URL: the
/// callers name it first ("gateway URL \"x\" ...", see [`GatewayUrlError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL at all.
    #[error("is not a URL ({0})")]
    NotAUrl(String),
    /// A scheme other than `http` or `https`.
    #[error("must start with http:// or https://")]
    Scheme,
    /// No host, or a host that is not a name or an IP address.
    #[error("has a bad host")]
    Host,
    /// A port that is not 1 to 65535.
    #[error("has a bad port")]
    Port,
    /// User name or password in the URL.
    #[error("must not carry credentials")]
    Credentials,
    /// A query or fragment.
    #[error("must not carry a query or fragment")]
    QueryOrFragment,
}

/// A gateway base URL that is not usable, and why ([`Endpoint::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gateway URL {url:?} {reason}")]
pub struct GatewayUrlError {
    /// The URL as given, trimmed.
    pub url: String,
    #[source]
    pub reason: EndpointError,
}

impl Endpoint {
    /// Parses `http[s]://host[:port][/prefix]`; the error names the URL
    /// ([`Endpoint::from_url`]'s does not).
    pub fn parse(base_url: &str) -> Result<Endpoint, GatewayUrlError> {
        Endpoint::from_url(base_url).map_err(|reason| GatewayUrlError {
            url: base_url.trim().to_string(),
            reason,
        })
    }

    /// Parses `http[s]://host[:port][/prefix]`.
    pub fn from_url(base_url: &str) -> Result<Endpoint, EndpointError> {
        let url = base_url.trim();
        // The URI parser takes a fragment as part of the path: look first.
        if url.contains('#') {
            return Err(EndpointError::QueryOrFragment);
        }
        let uri: Uri = url
            .parse()
            .map_err(|e: tungstenite::http::uri::InvalidUri| {
                EndpointError::NotAUrl(e.to_string())
            })?;
        let tls = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return Err(EndpointError::Scheme),
        };
        let authority = uri.authority().ok_or(EndpointError::Host)?;
        if authority.as_str().contains('@') {
            return Err(EndpointError::Credentials);
        }
        if uri.query().is_some() {
            return Err(EndpointError::QueryOrFragment);
        }
        let host = authority.host();
        // The URI parser drops a port that is not a u16: anything after the host must be one.
        let has_port_text = authority.as_str().len() > host.len();
        let host = if let Some(inside) = host.strip_prefix('[') {
            let ip: std::net::Ipv6Addr = inside
                .strip_suffix(']')
                .and_then(|h| h.parse().ok())
                .ok_or(EndpointError::Host)?;
            ip.to_string()
        } else if host.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_name(host) {
            // No trailing dot: the gateway's URL names it plainly.
            host.to_ascii_lowercase()
        } else {
            return Err(EndpointError::Host);
        };
        let port = match authority.port() {
            None if has_port_text => return Err(EndpointError::Port),
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => match p.as_u16() {
                0 => return Err(EndpointError::Port),
                p => p,
            },
        };
        Ok(Endpoint {
            tls,
            host,
            port,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// A WebSocket URL under the base URL: `ws[s]://host:port/prefix{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}{path}", self.authority(), self.prefix)
    }

    /// An HTTP URL under the base URL.
    pub fn http_url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}{path}", self.authority(), self.prefix)
    }

    /// Opens a TCP connection to the gateway before `deadline`.
    pub fn connect_tcp(&self, deadline: Instant) -> Result<TcpStream, GatewayError> {
        let addrs: Vec<SocketAddr> = match self.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.port)],
            Err(_) => (self.host.as_str(), self.port)
                .to_socket_addrs()
                .map_err(GatewayError::Unreachable)?
                .collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "host name has no addresses");
        for addr in addrs {
            let left = remaining(deadline)?;
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(GatewayError::Timeout),
                Err(e) => last = e,
            }
        }
        Err(GatewayError::Unreachable(last))
    }
}

/// The two layers of credentials the gateway checks. The token is read
/// from its source each time a header is built, so a rotated session-ingress
/// token reaches the next WebSocket and the next CONNECT.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `CLAUDE_CODE_REMOTE_SESSION_ID`.
    pub session_id: String,
    pub token: TokenSource,
}

impl Credentials {
    /// `Bearer <token>` for the upgrade request.
    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.current().expose())
    }

    /// `Basic base64(session:token)` for the CONNECT inside the tunnel.
    fn basic(&self) -> String {
        let pair = format!("{}:{}", self.session_id, self.token.current().expose());
        format!("Basic {}", base64(pair.as_bytes()))
    }
}

/// What the relay learns about its gateway while it runs.
#[derive(Debug, Default)]
pub struct GatewayState {
    /// The gateway did not acknowledge tunnel protocol v2 once: later
    /// tunnels neither send HELLO nor wait for HELLO_ACK.
    v2_unacknowledged: AtomicBool,
    /// The start-up probe could not open a WebSocket ("gateway unreachable
    /// at start-up: reason"); cleared by any successful open.
    startup_error: Mutex<Option<String>>,
    /// A tunnel's WebSocket opened at least once.
    opened_any: AtomicBool,
    /// The gateway acknowledged tunnel protocol v2 at least once.
    v2_acknowledged: AtomicBool,
}

impl GatewayState {
    pub fn v2_unacknowledged(&self) -> bool {
        self.v2_unacknowledged.load(Ordering::Relaxed)
    }

    pub fn remember_v2_unacknowledged(&self) {
        self.v2_unacknowledged.store(true, Ordering::Relaxed);
    }

    pub fn v2_acknowledged(&self) -> bool {
        self.v2_acknowledged.load(Ordering::Relaxed)
    }

    pub fn remember_v2_acknowledged(&self) {
        self.v2_acknowledged.store(true, Ordering::Relaxed);
    }

    pub fn startup_error(&self) -> Option<String> {
        lock(&self.startup_error).clone()
    }

    pub fn set_startup_error(&self, error: Option<String>) {
        *lock(&self.startup_error) = error;
    }

    /// Records the probe's error, unless a tunnel has opened meanwhile
    /// (the gateway is reachable after all).
    pub fn set_startup_error_unless_opened(&self, error: String) {
        let mut slot = lock(&self.startup_error);
        if !self.opened_any.load(Ordering::SeqCst) {
            *slot = Some(error);
        }
    }

    /// A tunnel's WebSocket opened: the start-up error no longer stands.
    pub fn record_open(&self) {
        let mut slot = lock(&self.startup_error);
        self.opened_any.store(true, Ordering::SeqCst);
        *slot = None;
    }
}

/// Why a tunnel's WebSocket could not be opened. Never holds the token.
#[derive(Debug)]
pub enum GatewayError {
    /// TCP connect failed or the name did not resolve (502).
    Unreachable(io::Error),
    /// TLS to the gateway failed: certificate, protocol (502).
    Tls(String),
    /// The gateway answered the upgrade with another status (502).
    Refused(u16),
    /// The token has characters a header cannot carry (502).
    BadToken,
    /// The upgrade broke off or was not valid WebSocket (502).
    Handshake(String),
    /// Connect, TLS and upgrade did not finish within the bound (504).
    Timeout,
}

impl GatewayError {
    /// Whether dialling again may help (docs/PROTOCOL.md section A4): network,
    /// TLS and handshake failures, time-outs and 5xx answers; never a
    /// refusal of the credentials or another 4xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            GatewayError::Refused(status) => *status >= 500,
            GatewayError::BadToken => false,
            _ => true,
        }
    }

    /// Whether the gateway refused the session's credentials (401 or 403).
    pub fn refuses_credentials(&self) -> bool {
        matches!(self, GatewayError::Refused(401 | 403))
    }

    /// The status the relay answers the client with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            GatewayError::Timeout => (504, "Gateway Timeout"),
            _ => (502, "Bad Gateway"),
        }
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayError::Unreachable(e) => write!(f, "gateway unreachable: {e}"),
            GatewayError::Tls(e) => write!(f, "TLS to the gateway failed: {e}"),
            GatewayError::Refused(status) => {
                write!(
                    f,
                    "gateway refused the WebSocket upgrade with HTTP {status}"
                )
            }
            GatewayError::BadToken => {
                f.write_str("the session token has characters a header cannot carry")
            }
            GatewayError::Handshake(e) => write!(f, "WebSocket upgrade failed: {e}"),
            GatewayError::Timeout => f.write_str("gateway did not complete the upgrade in time"),
        }
    }
}

impl std::error::Error for GatewayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GatewayError::Unreachable(e) => Some(e),
            _ => None,
        }
    }
}

fn remaining(deadline: Instant) -> Result<Duration, GatewayError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(GatewayError::Timeout)
    } else {
        Ok(left)
    }
}

/// The byte stream under a tunnel's WebSocket: plain TCP or TLS over TCP.
pub enum GatewayStream {
    Plain(TcpStream),
    Tls(Box<native_tls::TlsStream<TcpStream>>),
}

impl GatewayStream {
    /// The TCP socket underneath, for readiness polling, timeouts and shutdown.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            GatewayStream::Plain(s) => s,
            GatewayStream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for GatewayStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            GatewayStream::Plain(s) => s.read(buf),
            GatewayStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for GatewayStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            GatewayStream::Plain(s) => s.write(buf),
            GatewayStream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            GatewayStream::Plain(s) => s.flush(),
            GatewayStream::Tls(s) => s.flush(),
        }
    }
}

/// The gateway client: endpoint, generation, credentials and TLS settings,
/// shared by every tunnel, with what the relay learned about the gateway and
/// (agent proxy) the pool of idle WebSockets.
pub struct Gateway {
    pub endpoint: Endpoint,
    pub generation: Generation,
    credentials: Credentials,
    tls: native_tls::TlsConnector,
    upgrade_timeout: Duration,
    pub state: GatewayState,
    /// Idle v2 WebSockets for reuse; `None` for the first generation.
    pub pool: Option<Pool>,
    /// `--require-v2`: tunnels of a gateway that does not acknowledge
    /// protocol v2 are refused instead of falling back.
    pub require_v2: bool,
    /// Whether the gateway answers pings, and the deadline for an answer.
    pub liveness: Liveness,
}

/// WebSocket settings for a tunnel. The read buffer is what an idle tunnel
/// holds, so it stays small; frames up to one chunk plus slack are accepted.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * chunk::MAX_CHUNK_DATA)
        .max_message_size(Some(4 * chunk::MAX_CHUNK_DATA))
        .max_frame_size(Some(4 * chunk::MAX_CHUNK_DATA))
}

impl Gateway {
    /// A gateway client of the first generation, without a pool.
    pub fn new(
        endpoint: Endpoint,
        credentials: Credentials,
        tls: native_tls::TlsConnector,
        upgrade_timeout: Duration,
    ) -> Gateway {
        Gateway {
            liveness: Liveness::new(liveness::DEFAULT_DEADLINE),
            endpoint,
            generation: Generation::UpstreamProxy,
            credentials,
            tls,
            upgrade_timeout,
            state: GatewayState::default(),
            pool: None,
            require_v2: false,
        }
    }

    /// Speaks `generation`'s paths and protocol; `pool` keeps idle v2
    /// WebSockets for reuse (agent proxy only).
    pub fn with_generation(mut self, generation: Generation, pool: Option<Pool>) -> Gateway {
        self.generation = generation;
        self.pool = pool.filter(|_| generation == Generation::AgentProxy);
        self
    }

    /// Gives up on a WebSocket whose Ping went unanswered this long (once
    /// the gateway is known to answer pings), telling `record` of each
    /// pooled WebSocket dropped so.
    pub fn with_liveness(mut self, deadline: Duration, record: liveness::Recorder) -> Gateway {
        self.liveness = Liveness::with_recorder(deadline, Some(record));
        self
    }

    /// The tunnel WebSocket's URL for this gateway's generation.
    pub fn ws_url(&self) -> String {
        self.endpoint.ws_url(self.generation.ws_path())
    }

    /// Opens one tunnel's WebSocket, finishing within the upgrade bound.
    pub fn open_websocket(&self) -> Result<WebSocket<GatewayStream>, GatewayError> {
        let deadline = Instant::now() + self.upgrade_timeout;
        let tcp = self.endpoint.connect_tcp(deadline)?;
        // Bytes the gateway's host never acknowledges end the connection
        // in a minute, not the kernel's default of about fifteen.
        if let Err(e) = socket::set_user_timeout(&tcp, liveness::TCP_USER_TIMEOUT) {
            log::debug!("cannot set TCP_USER_TIMEOUT on the gateway socket: {e}");
        }
        let stream = if self.endpoint.tls {
            GatewayStream::Tls(Box::new(self.tls_handshake(tcp, deadline)?))
        } else {
            GatewayStream::Plain(tcp)
        };
        self.upgrade(stream, deadline)
    }

    fn tls_handshake(
        &self,
        tcp: TcpStream,
        deadline: Instant,
    ) -> Result<native_tls::TlsStream<TcpStream>, GatewayError> {
        set_timeouts(&tcp, remaining(deadline)?)?;
        let mut attempt = self.tls.connect(&self.endpoint.host, tcp);
        loop {
            match attempt {
                Ok(stream) => return Ok(stream),
                Err(native_tls::HandshakeError::Failure(e)) => {
                    return Err(GatewayError::Tls(e.to_string()));
                }
                Err(native_tls::HandshakeError::WouldBlock(mid)) => {
                    // A socket timeout fired mid-handshake: go on if time is left.
                    set_timeouts(mid.get_ref(), remaining(deadline)?)?;
                    attempt = mid.handshake();
                }
            }
        }
    }

    fn upgrade(
        &self,
        stream: GatewayStream,
        deadline: Instant,
    ) -> Result<WebSocket<GatewayStream>, GatewayError> {
        let mut request = self
            .ws_url()
            .into_client_request()
            .map_err(|e| GatewayError::Handshake(e.to_string()))?;
        let headers = request.headers_mut();
        let bearer = HeaderValue::from_str(&self.credentials.bearer())
            .map_err(|_| GatewayError::BadToken)?;
        headers.insert("Authorization", bearer);
        headers.insert(
            "Content-Type",
            HeaderValue::from_static("application/proto"),
        );

        set_timeouts(stream.tcp(), remaining(deadline)?)?;
        let mut attempt =
            tungstenite::client::client_with_config(request, stream, Some(ws_config()));
        loop {
            match attempt {
                Ok((ws, _response)) => {
                    set_timeouts_off(ws.get_ref().tcp())?;
                    return Ok(ws);
                }
                Err(HandshakeError::Interrupted(mid)) => {
                    set_timeouts(mid.get_ref().get_ref().tcp(), remaining(deadline)?)?;
                    attempt = mid.handshake();
                }
                Err(HandshakeError::Failure(e)) => return Err(classify(e)),
            }
        }
    }

    /// The first chunk's data: the CONNECT line rebuilt from the parsed
    /// authority, the tunnel credentials, for the agent proxy the client
    /// process (section A7), and a blank line.
    pub fn connect_head(&self, target: &Authority, client_process: &str) -> Vec<u8> {
        let mut head = format!(
            "CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {}\r\n",
            self.credentials.basic()
        );
        if self.generation == Generation::AgentProxy {
            // Printable ASCII only: nothing in it can start a header line.
            let name = text::clean(client_process, 64, Keep::PrintableAscii, Unfit::Drop);
            head.push_str(&format!("X-Agent-Proxy-Client-Process: {name}\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

fn classify(e: tungstenite::Error) -> GatewayError {
    match e {
        tungstenite::Error::Http(response) => GatewayError::Refused(response.status().as_u16()),
        tungstenite::Error::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            GatewayError::Timeout
        }
        tungstenite::Error::Tls(e) => GatewayError::Tls(e.to_string()),
        other => GatewayError::Handshake(other.to_string()),
    }
}

fn set_timeouts(tcp: &TcpStream, left: Duration) -> Result<(), GatewayError> {
    socket::set_mode(tcp, Mode::bounded(left)).map_err(GatewayError::Unreachable)
}

fn set_timeouts_off(tcp: &TcpStream) -> Result<(), GatewayError> {
    socket::set_mode(tcp, Mode::BLOCKING).map_err(GatewayError::Unreachable)
}

/// Standard base64 with padding (RFC 4648), for the Basic credentials.
pub fn base64(input: &[u8]) -> String {
    data_encoding::BASE64.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn endpoints_from_base_urls() {
        let e = Endpoint::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            e.ws_url(WS_PATH),
            "ws://127.0.0.1:8080/v1/code/upstreamproxy/ws"
        );
        let e = Endpoint::parse("https://api.example.com").unwrap();
        assert_eq!(e.port, 443);
        assert_eq!(
            e.ws_url(Generation::AgentProxy.ws_path()),
            "wss://api.example.com:443/v1/code/agent-proxy/ws"
        );
        let e = Endpoint::parse("http://[::1]:9/").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(
            e.http_url(CA_CERT_PATH),
            "http://[::1]:9/v1/code/upstreamproxy/ca-cert"
        );
        for bad in [
            "ftp://x",
            "x.com",
            "https://",
            "https://u:p@x.com",
            "http://x:99999",
            "http://x/?q",
            "http://x/#f",
            "http://x:/",
            "http://x:0",
            "http://a..b",
            "http://[nothex]",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Endpoint::from_url("https://u:p@x.com"),
            Err(EndpointError::Credentials)
        );
        let e = Endpoint::parse("HTTP://GW.Example/pre/").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.prefix.as_str()),
            (false, "gw.example", 80, "/pre")
        );
    }

    #[test]
    fn endpoint_hosts_follow_the_dns_rule() {
        let label63 = "a".repeat(63);
        let e = Endpoint::parse(&format!("https://{label63}.example")).unwrap();
        assert_eq!(e.host, format!("{label63}.example"));
        assert!(Endpoint::parse("https://_gw.example").is_ok());
        // A label over 63 characters, or ending with `-`, is not a host
        // name (the old rule took both).
        for bad in [
            format!("https://{label63}a.example"),
            "https://gw-.example".to_string(),
            "https://-gw.example".to_string(),
            "https://gw.example.".to_string(),
        ] {
            assert_eq!(Endpoint::from_url(&bad), Err(EndpointError::Host), "{bad}");
        }
    }

    fn gateway(generation: Generation) -> Gateway {
        Gateway::new(
            Endpoint::parse("http://127.0.0.1:1").unwrap(),
            Credentials {
                session_id: "sess".into(),
                token: TokenSource::fixed(
                    token::SessionToken::new("Zq7xK2").unwrap(),
                    token::TokenOrigin::TokenFile,
                ),
            },
            native_tls::TlsConnector::new().unwrap(),
            Duration::from_secs(1),
        )
        .with_generation(generation, None)
    }

    #[test]
    fn the_gateway_socket_gives_up_on_unacknowledged_bytes_in_a_minute() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut ws = tungstenite::accept(conn).unwrap();
            while ws.read().is_ok() {}
        });
        let mut gw = gateway(Generation::UpstreamProxy);
        gw.endpoint = Endpoint::parse(&format!("http://{addr}")).unwrap();
        let mut ws = gw.open_websocket().unwrap();
        assert_eq!(
            socket::user_timeout(ws.get_ref().tcp()).unwrap(),
            liveness::TCP_USER_TIMEOUT
        );
        assert_eq!(liveness::TCP_USER_TIMEOUT, Duration::from_secs(60));
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
        server.join().unwrap();
    }

    #[test]
    fn connect_head_is_rebuilt_and_carries_basic_auth() {
        let gw = gateway(Generation::UpstreamProxy);
        let target = Authority::parse("[::1]:443", None).unwrap();
        assert_eq!(
            String::from_utf8(gw.connect_head(&target, "curl")).unwrap(),
            format!(
                "CONNECT [::1]:443 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
                base64(b"sess:Zq7xK2")
            )
        );
        // The agent proxy names the client process, cleaned of anything
        // that could end the header line.
        let gw = gateway(Generation::AgentProxy);
        assert_eq!(
            String::from_utf8(gw.connect_head(&target, "cu\r\nX: y")).unwrap(),
            format!(
                "CONNECT [::1]:443 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\
                 X-Agent-Proxy-Client-Process: cuX: y\r\n\r\n",
                base64(b"sess:Zq7xK2")
            )
        );
        // A token that is no substring of any field name: its absence means
        // it was not printed.
        let creds = format!("{:?}", gw.credentials);
        assert!(!creds.contains("Zq7xK2"), "{creds}");
        assert!(creds.contains("sess"), "{creds}");
    }
}
