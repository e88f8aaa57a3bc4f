//! The development gateway's MITM mode (`--mode mitm`): what a real
//! security gateway does with a tunnel's bytes.
//!
//! The tunnel pump stays byte-oriented: in MITM mode the gateway pumps the
//! relay's WebSocket into one end of a loopback TCP connection
//! ([`loopback_pair`]) and [`Mitm::serve`] handles the other end on its own
//! thread:
//!
//! 1. It waits for the client's first byte. `0x16` (a TLS handshake record)
//!    means TLS: the gateway accepts the client's TLS itself with a leaf
//!    certificate for the CONNECT's host (DNS name SAN, or IP SAN for an IP
//!    target) signed by the gateway CA, made on first use and cached per
//!    host, and opens TLS to the origin (the `--map`ped address, dialled
//!    before the `200`) with SNI and hostname check for the same host,
//!    trusting `--upstream-ca` only (the system roots without it). Any other
//!    first byte means plain HTTP: no TLS on either side. (So plain `http://`
//!    requests, which the relay sends through CONNECT tunnels to port 80,
//!    get headers injected too, with no port list to configure.)
//! 2. When the origin's certificate does not verify (or its TLS fails for
//!    any reason), the client's TLS has already succeeded: the gateway reads
//!    the client's first request head and answers `502 Bad Gateway` with
//!    the reason in the body, then closes.
//! 3. Otherwise one thread moves bytes both ways with non-blocking sockets
//!    and `poll(2)` ([`relay`]): an OpenSSL stream is one object that cannot
//!    be read and written from two threads, and one thread with a pending
//!    buffer per direction needs no lock. Each buffer is bounded
//!    ([`PENDING_LIMIT`]), so a slow receiver slows its sender (backpressure).
//!    Responses flow back unparsed. Requests to a host with `--inject`
//!    headers go through a [`RequestRewriter`]: HTTP/1.1 heads parsed one
//!    after the other on a keep-alive connection (pipelining included),
//!    bodies with `Content-Length` or `chunked` streamed through unchanged,
//!    and in each head every header the client sent under an injected name
//!    is dropped and the configured one added. Requests to other hosts are
//!    not parsed at all. After an upgrade request (`Upgrade` with
//!    `Connection: upgrade`, or a `CONNECT`) the rest of the connection is
//!    passed through as it is.
//!
//! A request head that cannot be parsed (not HTTP/1.x, not UTF-8, larger
//! than 64 KiB, a `Transfer-Encoding` not ending in `chunked`, conflicting
//! `Content-Length`s) ends the connection: a proxy that cannot frame a
//! request cannot forward the next one.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::head::{Host, head_end, parse_head, read_head_bytes};
use openssl::error::ErrorStack;
use openssl::ssl::{
    AlpnError, ErrorCode, SslAcceptor, SslConnector, SslMethod, SslStream, select_next_proto,
};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;

use crate::events::EventLog;
use crate::http::response;
use crate::pki::TestCa;

/// Time a client has for its TLS handshake, and an origin for its own.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head the rewriter accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size or trailer line.
const MAX_LINE: usize = 4096;
/// Bytes read at once from either side.
const READ_SIZE: usize = 64 * 1024;
/// A direction stops reading once this much waits to be written.
pub const PENDING_LIMIT: usize = 256 * 1024;
/// How long closing waits for the client to close its side too.
const LINGER: Duration = Duration::from_secs(2);
/// ALPN: the one protocol the gateway speaks inside a tunnel.
const ALPN_HTTP11: &[u8] = b"\x08http/1.1";

/// One `--inject HOST=Header-Name: value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// The CONNECT host it applies to (any port), lower case.
    pub host: String,
    pub name: String,
    pub value: String,
}

impl Injection {
    /// A header to inject into every request to `host`.
    pub fn new(host: &str, name: &str, value: &str) -> Injection {
        Injection {
            host: host.to_ascii_lowercase(),
            name: name.to_string(),
            value: value.to_string(),
        }
    }

    /// Parses `HOST=Header-Name: value`.
    ///
    /// ```
    /// use ccr_integration::mitm::Injection;
    /// let i = Injection::parse("Origin.Test=X-Api-Key: s=e:cret").unwrap();
    /// assert_eq!(i, Injection::new("origin.test", "X-Api-Key", "s=e:cret"));
    /// assert_eq!(i.to_string(), "origin.test=X-Api-Key: s=e:cret");
    /// ```
    pub fn parse(text: &str) -> Result<Injection, String> {
        let (host, header) = text
            .split_once('=')
            .ok_or("no `=` (want HOST=Header-Name: value)")?;
        let (name, value) = header
            .split_once(':')
            .ok_or("no `:` after the header name (want HOST=Header-Name: value)")?;
        let (host, name, value) = (host.trim(), name.trim(), value.trim());
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == ':') {
            return Err(format!("{host:?} is not a host name or address"));
        }
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!("{name:?} is not a header name"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err("the header value holds a control character".into());
        }
        Ok(Injection::new(host, name, value))
    }
}

impl fmt::Display for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}: {}", self.host, self.name, self.value)
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A host as leaf certificates and `--inject` name it: a lower-case DNS
/// name or an IP address without brackets.
pub fn host_text(host: &Host) -> String {
    match host {
        Host::Name(name) => name.to_ascii_lowercase(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    }
}

/// A connected pair of loopback TCP sockets: the tunnel pump writes into
/// one, the MITM handler serves the other.
pub fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let near = TcpStream::connect(listener.local_addr()?)?;
    let want = near.local_addr()?;
    loop {
        // Anyone else who finds the port in this instant is turned away.
        let (far, peer) = listener.accept()?;
        if peer == want {
            near.set_nodelay(true)?;
            far.set_nodelay(true)?;
            return Ok((near, far));
        }
    }
}

/// MITM state shared by all tunnels: the CA, the leaf cache, the TLS
/// client for origins, the headers to inject.
pub struct Mitm {
    ca: TestCa,
    /// Host to a TLS acceptor serving that host's leaf.
    leaves: Mutex<HashMap<String, SslAcceptor>>,
    upstream: SslConnector,
    inject: Vec<Injection>,
}

fn ssl_err(what: &str, e: ErrorStack) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl Mitm {
    /// `upstream_ca`: PEM file of the CAs that origin certificates must
    /// chain to (only those); `None` trusts the system's roots.
    pub fn new(ca: TestCa, upstream_ca: Option<&Path>, inject: Vec<Injection>) -> io::Result<Mitm> {
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| ssl_err("TLS client setup failed", e))?;
        if let Some(path) = upstream_ca {
            let pem = std::fs::read(path).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
            })?;
            let certs = X509::stack_from_pem(&pem)
                .map_err(|e| ssl_err(&format!("{} does not parse", path.display()), e))?;
            if certs.is_empty() {
                return Err(io::Error::other(format!(
                    "{} holds no certificate",
                    path.display()
                )));
            }
            let mut store = X509StoreBuilder::new().map_err(|e| ssl_err("certificate store", e))?;
            for cert in certs {
                store
                    .add_cert(cert)
                    .map_err(|e| ssl_err("certificate store", e))?;
            }
            b.set_cert_store(store.build());
        }
        b.set_alpn_protos(ALPN_HTTP11)
            .map_err(|e| ssl_err("ALPN setup failed", e))?;
        Ok(Mitm {
            ca,
            leaves: Mutex::new(HashMap::new()),
            upstream: b.build(),
            inject,
        })
    }

    /// The headers to inject for `host`: `(name, value)`.
    fn injections_for(&self, host: &str) -> Vec<(String, String)> {
        self.inject
            .iter()
            .filter(|i| i.host == host)
            .map(|i| (i.name.clone(), i.value.clone()))
            .collect()
    }

    /// The TLS acceptor for `host`, issuing its leaf on first use. The
    /// lock is held while issuing, so a host's leaf is issued once.
    fn acceptor_for(&self, host: &str, events: &EventLog) -> io::Result<SslAcceptor> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(acceptor) = leaves.get(host) {
            return Ok(acceptor.clone());
        }
        let (cert, key) = self.ca.forge_leaf(host)?;
        let setup = |e| ssl_err("TLS server setup failed", e);
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(setup)?;
        b.set_certificate(&cert).map_err(setup)?;
        b.set_private_key(&key).map_err(setup)?;
        b.check_private_key().map_err(setup)?;
        b.set_alpn_select_callback(|_, offered| {
            select_next_proto(ALPN_HTTP11, offered).ok_or(AlpnError::NOACK)
        });
        let acceptor = b.build();
        leaves.insert(host.to_string(), acceptor.clone());
        events.record(&format!("mitm {host} leaf-issued"));
        Ok(acceptor)
    }

    /// Serves one tunnel: `client` is the loopback end the relay's bytes
    /// come out of, `origin` the TCP connection to the mapped target.
    /// Returns when either side is done; both sockets are closed then.
    pub fn serve(
        &self,
        events: &EventLog,
        id: u64,
        host: &Host,
        client: TcpStream,
        origin: TcpStream,
    ) {
        let host = host_text(host);
        let why = self.serve_inner(events, &host, client, origin);
        log::info!("#{id}: mitm {host} ended: {why}");
        events.record(&format!(
            "mitm {host} end {}",
            why.replace(['\r', '\n'], " ")
        ));
    }

    fn serve_inner(
        &self,
        events: &EventLog,
        host: &str,
        client: TcpStream,
        origin: TcpStream,
    ) -> String {
        // An idle tunnel may stay idle: wait for the first byte for ever
        // (the pump closes this socket when the tunnel ends).
        let mut first = [0u8; 1];
        match client.peek(&mut first) {
            Ok(0) => return "client closed before sending anything".into(),
            Ok(_) => {}
            Err(e) => return format!("client read failed: {e}"),
        }
        let inject = self.injections_for(host);
        let mut rewriter = (!inject.is_empty()).then(|| RequestRewriter::new(inject));
        let on_inject = |name: &str| events.record(&format!("mitm {host} inject {name}"));
        if first[0] != 0x16 {
            events.record(&format!("mitm {host} plain"));
            let (mut client, mut origin) = (client, origin);
            return relay(&mut client, &mut origin, rewriter.as_mut(), &on_inject);
        }
        events.record(&format!("mitm {host} tls"));
        let acceptor = match self.acceptor_for(host, events) {
            Ok(a) => a,
            Err(e) => return format!("cannot issue a leaf: {e}"),
        };
        for s in [&client, &origin] {
            let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
            let _ = s.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
        }
        let mut client = match acceptor.accept(client) {
            Ok(s) => s,
            Err(e) => {
                events.record(&format!("mitm {host} client-tls-failed"));
                return format!("client TLS failed: {e}");
            }
        };
        let connected = self
            .upstream
            .configure()
            .map_err(|e| e.to_string())
            .and_then(|c| c.connect(host, origin).map_err(|e| e.to_string()));
        let mut origin = match connected {
            Ok(s) => s,
            Err(why) => {
                let why = why.replace(['\r', '\n'], " ");
                events.record(&format!("mitm {host} upstream-tls-failed {why}"));
                answer_502(&mut client, host, &why);
                return format!("origin TLS failed: {why}");
            }
        };
        for s in [client.get_ref(), origin.get_ref()] {
            let _ = s.set_read_timeout(None);
            let _ = s.set_write_timeout(None);
        }
        relay(&mut client, &mut origin, rewriter.as_mut(), &on_inject)
    }
}

/// After the origin's TLS failed: reads the client's first request head
/// (bounded in time) and answers it with a `502`, then closes.
fn answer_502(client: &mut SslStream<TcpStream>, host: &str, why: &str) {
    let mut reader = io::BufReader::with_capacity(MAX_HEAD, &mut *client);
    let _ = read_head_bytes(&mut reader, MAX_HEAD);
    drop(reader);
    let body = format!("ccr-dev-gateway: TLS to the origin {host} failed: {why}\n");
    let _ = client.write_all(&response(502, "text/plain", body.as_bytes(), true));
    let _ = client.flush();
    client.close_write();
    linger(client.get_ref());
}

/// What one non-blocking read or write did.
enum Step {
    /// Moved this many bytes (never 0).
    Moved(usize),
    /// The peer ended its side.
    Eof,
    /// Nothing moved; wait for these `poll` events.
    Wait(i16),
    Failed(io::Error),
}

/// One end of a MITM connection: plain TCP or TLS over TCP.
trait Side {
    fn tcp(&self) -> &TcpStream;
    fn read_nb(&mut self, buf: &mut [u8]) -> Step;
    fn write_nb(&mut self, buf: &[u8]) -> Step;
    /// Ends our sending side (TLS `close_notify`, then `FIN`).
    fn close_write(&mut self);
    fn fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

fn io_step(result: io::Result<usize>, wait: i16) -> Step {
    match result {
        Ok(0) => Step::Eof,
        Ok(n) => Step::Moved(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Wait(wait),
        // Interrupted: nothing moved, the socket is still ready; poll says so.
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Wait(wait),
        Err(e) => Step::Failed(e),
    }
}

impl Side for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
    fn read_nb(&mut self, buf: &mut [u8]) -> Step {
        io_step(self.read(buf), libc::POLLIN)
    }
    fn write_nb(&mut self, buf: &[u8]) -> Step {
        io_step(self.write(buf), libc::POLLOUT)
    }
    fn close_write(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

fn ssl_step(result: Result<usize, openssl::ssl::Error>) -> Step {
    match result {
        Ok(0) => Step::Eof,
        Ok(n) => Step::Moved(n),
        Err(e) => match e.code() {
            ErrorCode::ZERO_RETURN => Step::Eof,
            // OpenSSL says which readiness it waits for: a read may need
            // to write and a write to read.
            ErrorCode::WANT_READ => Step::Wait(libc::POLLIN),
            ErrorCode::WANT_WRITE => Step::Wait(libc::POLLOUT),
            ErrorCode::SYSCALL if e.io_error().is_none() => Step::Eof,
            _ => Step::Failed(e.into_io_error().unwrap_or_else(io::Error::other)),
        },
    }
}

impl Side for SslStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
    fn read_nb(&mut self, buf: &mut [u8]) -> Step {
        ssl_step(self.ssl_read(buf))
    }
    fn write_nb(&mut self, buf: &[u8]) -> Step {
        ssl_step(self.ssl_write(buf))
    }
    fn close_write(&mut self) {
        // Non-blocking: if the close_notify does not fit now, it is lost,
        // and the peer sees a bare FIN.
        let _ = self.shutdown();
        let _ = self.get_ref().shutdown(Shutdown::Write);
    }
}

/// After closing our side: reads (and discards) what the peer still
/// sends until it closes or [`LINGER`] passes, so that closing does not
/// reset the connection under bytes still in flight to it.
fn linger(tcp: &TcpStream) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(LINGER));
    let mut sink = [0u8; 4096];
    let mut tcp = tcp;
    while matches!(tcp.read(&mut sink), Ok(n) if n > 0) {}
}

/// Bytes read from one side, waiting to be written to the other.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    start: usize,
}

impl Pending {
    fn len(&self) -> usize {
        self.buf.len() - self.start
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn front(&self) -> &[u8] {
        &self.buf[self.start..]
    }
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= READ_SIZE && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// One direction of a connection.
#[derive(Default)]
struct Flow {
    pending: Pending,
    /// The source ended (or failed): read no more.
    eof: bool,
    /// The destination was told (after the last pending byte).
    shut: bool,
}

/// How bytes read are turned into bytes to write.
type Transform<'a> = dyn FnMut(&[u8], &mut Vec<u8>) -> Result<(), String> + 'a;

/// Moves what it can from `src` to `dst` without blocking, adding the
/// `poll` events each side waits for to `want` (`[src, dst]`). `Err` ends
/// the connection.
fn advance<S: Side, D: Side>(
    src: &mut S,
    dst: &mut D,
    flow: &mut Flow,
    want: [&mut i16; 2],
    scratch: &mut [u8],
    transform: &mut Transform<'_>,
) -> Result<(), String> {
    let [want_src, want_dst] = want;
    loop {
        let mut full = false;
        while !flow.eof {
            if flow.pending.len() >= PENDING_LIMIT {
                full = true;
                break;
            }
            match src.read_nb(scratch) {
                Step::Moved(n) => transform(&scratch[..n], &mut flow.pending.buf)?,
                Step::Eof => flow.eof = true,
                Step::Failed(e) => {
                    log::debug!("mitm: read failed, taken as the end: {e}");
                    flow.eof = true;
                }
                Step::Wait(events) => {
                    *want_src |= events;
                    break;
                }
            }
        }
        while !flow.pending.is_empty() {
            match dst.write_nb(flow.pending.front()) {
                Step::Moved(n) => flow.pending.consume(n),
                Step::Wait(events) => {
                    *want_dst |= events;
                    break;
                }
                Step::Eof => return Err("peer closed while being written to".into()),
                Step::Failed(e) => return Err(format!("write failed: {e}")),
            }
        }
        if flow.eof && flow.pending.is_empty() && !flow.shut {
            dst.close_write();
            flow.shut = true;
        }
        // Stopped reading only because the buffer was full, and it has
        // drained since: read on (bytes may wait inside TLS, unseen by poll).
        if !(full && flow.pending.is_empty()) {
            return Ok(());
        }
    }
}

/// Moves bytes both ways until the origin's end has reached the client
/// (or a write fails, or the rewriter gives up); requests pass through
/// `rewriter` if there is one. Returns why it ended. Closes both sides.
fn relay<C: Side, O: Side>(
    client: &mut C,
    origin: &mut O,
    mut rewriter: Option<&mut RequestRewriter>,
    on_inject: &dyn Fn(&str),
) -> String {
    for side in [client.tcp(), origin.tcp()] {
        if let Err(e) = side.set_nonblocking(true) {
            return format!("cannot make a socket non-blocking: {e}");
        }
    }
    let mut up = Flow::default();
    let mut down = Flow::default();
    let mut scratch = vec![0u8; READ_SIZE];
    let mut rewrite = |input: &[u8], out: &mut Vec<u8>| match rewriter.as_deref_mut() {
        Some(r) => r.feed(input, out, &mut |name| on_inject(name)),
        None => {
            out.extend_from_slice(input);
            Ok(())
        }
    };
    let mut copy = |input: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(input);
        Ok(())
    };
    let why = loop {
        let (mut want_client, mut want_origin) = (0i16, 0i16);
        let wants = [&mut want_client, &mut want_origin];
        if let Err(e) = advance(client, origin, &mut up, wants, &mut scratch, &mut rewrite) {
            break format!("to the origin: {e}");
        }
        let wants = [&mut want_origin, &mut want_client];
        if let Err(e) = advance(origin, client, &mut down, wants, &mut scratch, &mut copy) {
            break format!("to the client: {e}");
        }
        if down.shut {
            break "origin closed".into();
        }
        if want_client == 0 && want_origin == 0 {
            break "nothing left to wait for".into();
        }
        let fd = |want: i16, fd: RawFd| libc::pollfd {
            // A negative fd is skipped: no spinning on a hung-up socket
            // nobody waits for.
            fd: if want == 0 { -1 } else { fd },
            events: want,
            revents: 0,
        };
        let mut fds = [fd(want_client, client.fd()), fd(want_origin, origin.fd())];
        // SAFETY: fds is a valid array of two pollfd for the whole call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                break format!("poll failed: {e}");
            }
        }
    };
    if !up.shut {
        origin.close_write();
    }
    if !down.shut {
        client.close_write();
    }
    linger(client.tcp());
    why
}

/// What the rewriter expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A request head (or empty lines before one).
    Head,
    /// This many body bytes left.
    Body(u64),
    /// A chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data left.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer lines up to the blank line.
    Trailers,
    /// No more HTTP: bytes pass through as they are.
    Raw,
}

/// Rewrites a stream of HTTP/1.1 requests (client to origin), chunk by
/// chunk as bytes arrive: each head gets the configured headers, in place
/// of any the client sent under those names; bodies and everything else
/// pass unchanged. Only heads are buffered (at most 64 KiB).
///
/// ```
/// use ccr_integration::mitm::RequestRewriter;
/// let mut r = RequestRewriter::new(vec![("X-Api-Key".into(), "secret".into())]);
/// let mut out = Vec::new();
/// r.feed(b"GET / HTTP/1.1\r\nx-api-key: mine\r\nHost: o\r\n\r\n", &mut out, &mut |_| {})
///     .unwrap();
/// assert_eq!(out, b"GET / HTTP/1.1\r\nHost: o\r\nX-Api-Key: secret\r\n\r\n");
/// ```
#[derive(Debug)]
pub struct RequestRewriter {
    inject: Vec<(String, String)>,
    state: State,
    /// The head so far, or the chunk-size / trailer line so far.
    buf: Vec<u8>,
    /// Whether the connection stops being HTTP after this request's body.
    upgrade: bool,
}

impl RequestRewriter {
    /// Injects these `(name, value)` headers into every request.
    pub fn new(inject: Vec<(String, String)>) -> RequestRewriter {
        RequestRewriter {
            inject,
            state: State::Head,
            buf: Vec::new(),
            upgrade: false,
        }
    }

    /// Takes the next bytes from the client, appends what to send the
    /// origin to `out`, and calls `injected` with each header name put into
    /// a head. `Err` when a request cannot be framed: the connection must end.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        injected: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        while !input.is_empty() {
            match self.state {
                State::Raw => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Head => {
                    if self.buf.is_empty() {
                        // Empty lines before a request line are allowed (RFC 9112 2.2).
                        let skip = input.iter().take_while(|&&b| b == b'\r' || b == b'\n');
                        let skip = skip.count();
                        out.extend_from_slice(&input[..skip]);
                        input = &input[skip..];
                        if input.is_empty() {
                            return Ok(());
                        }
                    }
                    let old = self.buf.len();
                    let scan_from = old.saturating_sub(3);
                    self.buf.extend_from_slice(input);
                    match head_end(&self.buf[scan_from..]).map(|e| e + scan_from) {
                        Some(end) if end <= MAX_HEAD => {
                            self.buf.truncate(end);
                            input = &input[end - old..];
                            self.finish_head(out, injected)?;
                        }
                        Some(_) => return Err("request head larger than 64 KiB".into()),
                        None if self.buf.len() >= MAX_HEAD => {
                            return Err("request head larger than 64 KiB".into());
                        }
                        None => return Ok(()),
                    }
                }
                State::Body(left) | State::ChunkData(left) => {
                    let n = (left.min(input.len() as u64)) as usize;
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    let left = left - n as u64;
                    self.state = match self.state {
                        State::Body(_) if left == 0 => self.after_body(),
                        State::Body(_) => State::Body(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let Some(line) = self.take_line(&mut input, out)? else {
                        return Ok(());
                    };
                    self.state = match self.state {
                        State::ChunkSize => {
                            let size = line.split(';').next().unwrap_or_default().trim();
                            let size = u64::from_str_radix(size, 16)
                                .map_err(|_| format!("bad chunk size {size:?}"))?;
                            if size == 0 {
                                State::Trailers
                            } else {
                                State::ChunkData(size)
                            }
                        }
                        State::ChunkEnd if line.is_empty() => State::ChunkSize,
                        State::ChunkEnd => return Err("chunk data not followed by CRLF".into()),
                        _ if line.is_empty() => self.after_body(),
                        _ => State::Trailers,
                    };
                }
            }
        }
        Ok(())
    }

    fn after_body(&self) -> State {
        if self.upgrade {
            State::Raw
        } else {
            State::Head
        }
    }

    /// Completes a line into `self.buf` (copied to `out` as it came);
    /// the line without its ending once whole.
    fn take_line(
        &mut self,
        input: &mut &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<String>, String> {
        let (part, whole) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (&input[..=i], true),
            None => (&input[..], false),
        };
        out.extend_from_slice(part);
        self.buf.extend_from_slice(part);
        *input = &input[part.len()..];
        if self.buf.len() > MAX_LINE {
            return Err("chunk-size or trailer line too long".into());
        }
        if !whole {
            return Ok(None);
        }
        let mut line = std::mem::take(&mut self.buf);
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line)
            .map(Some)
            .map_err(|_| "chunk-size or trailer line is not UTF-8".into())
    }

    /// A whole head is in `self.buf`: frame its body, write it rewritten.
    fn finish_head(
        &mut self,
        out: &mut Vec<u8>,
        injected: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        let head = parse_head(&self.buf).map_err(|e| e.to_string())?;
        let values = |name: &str| {
            head.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.split(','))
                .map(|v| v.trim().to_ascii_lowercase())
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>()
        };
        self.upgrade = head.method == "CONNECT"
            || (head.header("Upgrade").is_some()
                && values("Connection").iter().any(|v| v == "upgrade"));
        let codings = values("Transfer-Encoding");
        let lengths = values("Content-Length");
        self.state = if let Some(last) = codings.last() {
            if last != "chunked" {
                return Err("Transfer-Encoding does not end in chunked".into());
            }
            State::ChunkSize
        } else if let Some(first) = lengths.first() {
            if lengths.iter().any(|l| l != first) {
                return Err("conflicting Content-Length values".into());
            }
            match first.parse::<u64>() {
                Ok(0) => self.after_body(),
                Ok(n) => State::Body(n),
                Err(_) => return Err(format!("bad Content-Length {first:?}")),
            }
        } else {
            self.after_body()
        };
        let head = std::mem::take(&mut self.buf);
        if self.inject.is_empty() {
            out.extend_from_slice(&head);
            return Ok(());
        }
        let mut lines = head.split_inclusive(|&b| b == b'\n');
        out.extend_from_slice(lines.next().unwrap_or_default());
        for line in lines {
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.is_empty() {
                for (name, value) in &self.inject {
                    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                    injected(name);
                }
                out.extend_from_slice(line);
                break;
            }
            let name = text.split(|&b| b == b':').next().unwrap_or_default();
            let replaced = self
                .inject
                .iter()
                .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name));
            if !replaced {
                out.extend_from_slice(line);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewriter() -> RequestRewriter {
        RequestRewriter::new(vec![("X-Api-Key".into(), "secret".into())])
    }

    /// Feeds `input` in pieces of `step` bytes; the output and the names injected.
    fn run(input: &[u8], step: usize) -> (Result<Vec<u8>, String>, Vec<String>) {
        let mut r = rewriter();
        let mut out = Vec::new();
        let mut names = Vec::new();
        for piece in input.chunks(step) {
            if let Err(e) = r.feed(piece, &mut out, &mut |n| names.push(n.to_string())) {
                return (Err(e), names);
            }
        }
        (Ok(out), names)
    }

    #[test]
    fn keep_alive_requests_with_bodies_are_all_rewritten_in_any_pieces() {
        let input: &[u8] = b"POST /a HTTP/1.1\r\nX-API-KEY: mine\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n\
            \r\nGET /c HTTP/1.1\nx-api-key: a\nx-api-key: b\n\n";
        let want: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nX-Api-Key: secret\r\n\r\nhello\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Api-Key: secret\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n\
            \r\nGET /c HTTP/1.1\nX-Api-Key: secret\r\n\n";
        for step in [1, 2, 3, 7, 64, input.len()] {
            let (out, names) = run(input, step);
            assert_eq!(
                String::from_utf8_lossy(&out.unwrap()),
                String::from_utf8_lossy(want),
                "step {step}"
            );
            assert_eq!(names, ["X-Api-Key"; 3]);
        }
    }

    #[test]
    fn bodies_that_look_like_heads_are_not_rewritten() {
        let body = b"GET /x HTTP/1.1\r\nX-Api-Key: inner\r\n\r\n";
        let mut input =
            format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        input.extend_from_slice(body);
        let (out, names) = run(&input, 5);
        assert!(out.unwrap().ends_with(body));
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn after_an_upgrade_bytes_pass_as_they_are() {
        let input =
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n\
            GET /not-parsed HTTP/1.1\r\n\r\n\x00\xff";
        let (out, names) = run(input, 4);
        let out = out.unwrap();
        assert!(out.ends_with(b"GET /not-parsed HTTP/1.1\r\n\r\n\x00\xff"));
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn unframeable_requests_are_errors() {
        for bad in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        ] {
            assert!(run(bad, 3).0.is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let huge = vec![b'a'; MAX_HEAD + 1];
        assert!(run(&huge, 4096).0.is_err());
    }

    #[test]
    fn injections_parse_and_refuse_nonsense() {
        assert!(Injection::parse("origin.test").is_err());
        assert!(Injection::parse("origin.test=X-Key").is_err());
        assert!(Injection::parse("=X-Key: v").is_err());
        assert!(Injection::parse("o.test=Bad Name: v").is_err());
        assert!(Injection::parse("o.test=X: a\rb").is_err());
        assert_eq!(
            Injection::parse("127.0.0.1=X-K:v").unwrap(),
            Injection::new("127.0.0.1", "X-K", "v")
        );
    }
}
