//! The gateway client: where the gateway is, how to reach it, and how one
//! tunnel's WebSocket is opened (PROTOCOL.md section 3).
//!
//! Everything up to the finished upgrade runs under one deadline: TCP
//! connect, TLS handshake and HTTP upgrade together. A gateway that accepts
//! TCP and then says nothing costs a client at most that long.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::WebSocket;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocketConfig;

use crate::chunk;
use crate::request_head::Authority;
use crate::token::SessionToken;

/// Path of the WebSocket under the base URL.
pub const WS_PATH: &str = "/v1/code/upstreamproxy/ws";
/// Path of the gateway's CA certificate under the base URL.
pub const CA_CERT_PATH: &str = "/v1/code/upstreamproxy/ca-cert";

/// Where the gateway is, parsed from its base URL.
///
/// ```
/// use ccr_relay::gateway::Endpoint;
/// let e = Endpoint::parse("https://gw.example:8443/prefix/").unwrap();
/// assert_eq!(e.ws_url(), "wss://gw.example:8443/prefix/v1/code/upstreamproxy/ws");
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

impl Endpoint {
    /// Parses `http[s]://host[:port][/prefix]`.
    pub fn parse(base_url: &str) -> Result<Endpoint, String> {
        let url = base_url.trim();
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "gateway URL {url:?} must start with http:// or https://"
            ));
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(format!(
                "gateway URL {url:?} must not carry a query or fragment"
            ));
        }
        if authority.contains('@') {
            return Err(format!("gateway URL {url:?} must not carry credentials"));
        }
        let default_port = if tls { 443 } else { 80 };
        let parsed = Authority::parse(authority, Some(default_port))
            .map_err(|e| format!("gateway URL {url:?} has a bad host or port ({e})"))?;
        let host = match parsed.host {
            crate::request_head::Host::Name(n) => n,
            crate::request_head::Host::Ipv4(ip) => ip.to_string(),
            crate::request_head::Host::Ipv6(ip) => ip.to_string(),
        };
        Ok(Endpoint {
            tls,
            host,
            port: parsed.port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The tunnel's WebSocket URL: `ws[s]://host:port/prefix/v1/code/upstreamproxy/ws`.
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}{WS_PATH}", self.authority(), self.prefix)
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

/// The two layers of credentials the gateway checks.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `CLAUDE_CODE_REMOTE_SESSION_ID`.
    pub session_id: String,
    pub token: SessionToken,
}

impl Credentials {
    /// `Bearer <token>` for the upgrade request.
    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }

    /// `Basic base64(session:token)` for the CONNECT inside the tunnel.
    fn basic(&self) -> String {
        let pair = format!("{}:{}", self.session_id, self.token.expose());
        format!("Basic {}", base64(pair.as_bytes()))
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
    /// The upgrade broke off or was not valid WebSocket (502).
    Handshake(String),
    /// Connect, TLS and upgrade did not finish within the bound (504).
    Timeout,
}

impl GatewayError {
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
            GatewayError::Handshake(e) => write!(f, "WebSocket upgrade failed: {e}"),
            GatewayError::Timeout => f.write_str("gateway did not complete the upgrade in time"),
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

/// The gateway client: endpoint, credentials and TLS settings, shared by
/// every tunnel.
pub struct Gateway {
    pub endpoint: Endpoint,
    credentials: Credentials,
    tls: native_tls::TlsConnector,
    upgrade_timeout: Duration,
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
    pub fn new(
        endpoint: Endpoint,
        credentials: Credentials,
        tls: native_tls::TlsConnector,
        upgrade_timeout: Duration,
    ) -> Gateway {
        Gateway {
            endpoint,
            credentials,
            tls,
            upgrade_timeout,
        }
    }

    /// Opens one tunnel's WebSocket, finishing within the upgrade bound.
    pub fn open_websocket(&self) -> Result<WebSocket<GatewayStream>, GatewayError> {
        let deadline = Instant::now() + self.upgrade_timeout;
        let tcp = self.endpoint.connect_tcp(deadline)?;
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
            .endpoint
            .ws_url()
            .into_client_request()
            .map_err(|e| GatewayError::Handshake(e.to_string()))?;
        let headers = request.headers_mut();
        let bearer = HeaderValue::from_str(&self.credentials.bearer())
            .map_err(|_| GatewayError::Handshake("token is not a valid header value".into()))?;
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
    /// authority, the tunnel credentials, and a blank line.
    pub fn connect_head(&self, target: &Authority) -> Vec<u8> {
        format!(
            "CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            self.credentials.basic()
        )
        .into_bytes()
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
    tcp.set_read_timeout(Some(left))
        .and_then(|_| tcp.set_write_timeout(Some(left)))
        .map_err(GatewayError::Unreachable)
}

fn set_timeouts_off(tcp: &TcpStream) -> Result<(), GatewayError> {
    tcp.set_read_timeout(None)
        .and_then(|_| tcp.set_write_timeout(None))
        .map_err(GatewayError::Unreachable)
}

/// Standard base64 with padding (RFC 4648), for the Basic credentials.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for group in input.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
        assert_eq!(e.ws_url(), "ws://127.0.0.1:8080/v1/code/upstreamproxy/ws");
        let e = Endpoint::parse("https://api.example.com").unwrap();
        assert_eq!(e.port, 443);
        assert_eq!(
            e.ws_url(),
            "wss://api.example.com:443/v1/code/upstreamproxy/ws"
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
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connect_head_is_rebuilt_and_carries_basic_auth() {
        let gw = Gateway::new(
            Endpoint::parse("http://127.0.0.1:1").unwrap(),
            Credentials {
                session_id: "sess".into(),
                token: SessionToken::new("tok").unwrap(),
            },
            native_tls::TlsConnector::new().unwrap(),
            Duration::from_secs(1),
        );
        let target = Authority::parse("[::1]:443", None).unwrap();
        assert_eq!(
            String::from_utf8(gw.connect_head(&target)).unwrap(),
            format!(
                "CONNECT [::1]:443 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
                base64(b"sess:tok")
            )
        );
        let creds = format!("{:?}", gw.credentials);
        assert!(!creds.contains("tok\""), "{creds}");
    }
}
