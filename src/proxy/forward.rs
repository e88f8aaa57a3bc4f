//! Plain HTTP through the relay: absolute-form requests
//! (`GET http://host/path HTTP/1.1`) are sent through a CONNECT tunnel to
//! `host:port` in origin form, without hop-by-hop and proxy headers, bodies
//! streamed both ways (Content-Length, chunked, or until close) and never
//! held whole. Later requests on the same client connection to the same
//! host reuse the tunnel; another host gets a new one. In selective mode
//! the route is CONNECT's ([`direct::route_target`]): a host off the
//! include list is dialled by the relay itself, with the same refusals
//! ([`direct::dial_target`]), and the request goes over that connection
//! ([`Link::Direct`]) as it would over a tunnel.
//!
//! Unlike a CONNECT tunnel this is one request, then one response, so a
//! single thread drives it over a blocking [`ChunkStream`]. An origin may
//! answer before the request body has ended: the answer is heard at once,
//! and while its body is passed on the rest of the request body still is
//! (each side's reads stop when the other side has data); the client
//! connection closes after such an exchange.
//!
//! Hostile origins: the response head, informational ones included, must
//! be complete within `Limits::response_head_timeout` (504 past it); a
//! response framed by both `Content-Length` and `Transfer-Encoding`, or by
//! differing lengths, is a 502 and nothing more goes over that client
//! connection. The rule for bytes an origin sends beyond its response
//! (which nothing asked for: a smuggled "next response"): a tunnel is used
//! again only if nothing at all arrived on it between the end of one
//! response and the next request; otherwise it is closed and the next
//! request opens a fresh one, so such bytes never answer a request.

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tungstenite::{Bytes, Message, WebSocket};

use crate::config::Limits;
use crate::gateway::chunk;
use crate::gateway::wire::{Incoming, Wire};
use crate::gateway::{Gateway, GatewayStream};
use crate::http::http1::{
    BodyCopier, BodyError, BodyFraming, Framing, ResponseHead, forwarded_response_framing,
    has_token, header_values, is_framing_header, parse_response_head, request_framing,
};
use crate::http::reply::{self, Status};
use crate::http::request_head::{
    Authority, HeadError, ProxyRequest, RequestHead, parse_head, read_head_bytes,
};
use crate::proxy::direct;
use crate::proxy::route::Route;
use crate::sys::socket::{self, Mode};
use crate::tunnel::dial;

/// Largest response head accepted from an origin.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// How long [`ChunkStream::has_data`] waits for a message already on its way.
const PEEK_WAIT: Duration = Duration::from_millis(50);
/// How long a client may pause while sending a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a kept-alive client connection may sit idle between requests.
const IDLE_CLIENT: Duration = Duration::from_secs(60);

/// Request headers never forwarded: hop-by-hop (RFC 9110 7.6.1) and the
/// proxy's own. Headers named in `Connection` are dropped too, unless they
/// frame the body: such a message is refused instead.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// A tunnel's WebSocket as a blocking byte stream: writes become chunks,
/// reads return the data of incoming chunks. While a read waits, a
/// keepalive goes out every interval.
pub struct ChunkStream {
    ws: WebSocket<GatewayStream>,
    wire: Wire,
    pending: Bytes,
    max_chunk: usize,
    keepalive: Duration,
    eof: bool,
    /// While set, a read that would wait returns [`OtherSideReady`] as soon
    /// as this socket (the client's) is readable and the tunnel is not.
    watch: Option<RawFd>,
    /// While set, a read still waiting at this instant fails with `TimedOut`.
    deadline: Option<Instant>,
}

impl ChunkStream {
    /// A stream over an opened tunnel: `ws` read by `wire`, `pending` the
    /// data already received (the start of the gateway's answer).
    pub fn new(
        ws: WebSocket<GatewayStream>,
        wire: Wire,
        pending: Bytes,
        max_chunk: usize,
        keepalive: Duration,
    ) -> io::Result<ChunkStream> {
        socket::set_mode(ws.get_ref().tcp(), read_wait(keepalive))?;
        Ok(ChunkStream {
            ws,
            wire,
            pending,
            max_chunk: max_chunk.max(1),
            keepalive,
            eof: false,
            watch: None,
            deadline: None,
        })
    }

    fn send(&mut self, encoded: Vec<u8>) -> io::Result<()> {
        self.ws
            .send(Message::Binary(encoded.into()))
            .map_err(ws_to_io)
    }

    /// The tunnel's TCP socket, to poll for readability.
    fn raw_fd(&self) -> RawFd {
        self.ws.get_ref().tcp().as_raw_fd()
    }

    /// Reads one message: data becomes `pending`, a close or the server's
    /// FIN sets `eof`, a keepalive or control frame does nothing. A read
    /// timeout is an error.
    fn receive(&mut self) -> io::Result<()> {
        match self.ws.read() {
            Ok(Message::Binary(encoded)) => {
                let data = match self.wire.decode(&encoded) {
                    Ok(Incoming::Data(data)) => data,
                    Ok(Incoming::Fin) => {
                        self.eof = true;
                        return Ok(());
                    }
                    Ok(Incoming::HelloAck { .. } | Incoming::Ignored) => return Ok(()),
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                };
                let start = data.as_ptr() as usize - encoded.as_ptr() as usize;
                let len = data.len();
                self.pending = encoded.slice(start..start + len);
                Ok(())
            }
            Ok(Message::Text(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                self.wire.text_frame(),
            )),
            Ok(Message::Close(_))
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                self.eof = true;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(ws_to_io(e)),
        }
    }

    /// Takes whatever messages can be had without waiting, the ones the
    /// WebSocket already holds (those leave the socket unreadable) included:
    /// whether data or the end came.
    fn receive_ready(&mut self) -> io::Result<bool> {
        socket::set_mode(self.ws.get_ref().tcp(), Mode::NonBlocking)?;
        let got = loop {
            match self.receive() {
                Ok(()) if self.pending.is_empty() && !self.eof => continue,
                Ok(()) => break Ok(true),
                Err(e) if is_timeout(&e) => break Ok(false),
                Err(e) => break Err(e),
            }
        };
        socket::set_mode(self.ws.get_ref().tcp(), read_wait(self.keepalive))?;
        got
    }

    /// Whether received data is waiting to be read.
    fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// How long the next wait may last: the keepalive interval, shortened
    /// by the deadline; `None` once the deadline has passed.
    fn next_wait(&self) -> Option<Duration> {
        match self.deadline {
            None => Some(self.keepalive),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(self.keepalive))
            }
        }
    }

    /// Waits for the tunnel or the watched client socket, at most `wait`:
    /// whether the tunnel is readable (`Ok(false)` on timeout), or
    /// [`OtherSideReady`] when only the client is.
    fn wait_either(&self, client: RawFd, wait: Duration) -> io::Result<bool> {
        let (tunnel, client) = socket::wait_readable_either(self.raw_fd(), client, wait)?;
        if !tunnel && client {
            return Err(io::Error::other(OtherSideReady));
        }
        Ok(tunnel)
    }

    /// Whether data or the end came from the far side, waiting at most a
    /// moment: tells an origin's early answer from a ping on the socket.
    fn has_data(&mut self) -> io::Result<bool> {
        if self.pending.is_empty() && !self.eof {
            socket::set_mode(self.ws.get_ref().tcp(), read_wait(PEEK_WAIT))?;
            let got = self.receive();
            socket::set_mode(self.ws.get_ref().tcp(), read_wait(self.keepalive))?;
            match got {
                Err(e) if is_timeout(&e) => return Ok(false),
                other => other?,
            }
        }
        Ok(!self.pending.is_empty() || self.eof)
    }
}

/// Blocking reads bounded by `wait`, writes unbounded (the gateway's
/// backpressure is the client's).
fn read_wait(wait: Duration) -> Mode {
    Mode::Blocking {
        read: Some(wait),
        write: None,
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn ws_to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        // Tell the gateway the tunnel is done rather than vanish mid-stream.
        let _ = socket::set_mode(
            self.ws.get_ref().tcp(),
            Mode::bounded(Duration::from_millis(200)),
        );
        let _ = self.ws.close(None);
    }
}

impl Read for ChunkStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.pending.is_empty() {
                let n = buf.len().min(self.pending.len());
                buf[..n].copy_from_slice(&self.pending[..n]);
                self.pending = self.pending.slice(n..);
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            let Some(wait) = self.next_wait() else {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
            };
            let readable = match self.watch {
                Some(client) => {
                    if self.receive_ready()? {
                        continue;
                    }
                    self.wait_either(client, wait)?
                }
                None => true,
            };
            let got = if readable {
                if self.deadline.is_some() {
                    socket::set_mode(self.ws.get_ref().tcp(), read_wait(wait))?;
                }
                self.receive()
            } else {
                Err(io::ErrorKind::TimedOut.into())
            };
            match got {
                Ok(()) => {}
                Err(e) if is_timeout(&e) => {
                    if self.next_wait().is_none() {
                        continue;
                    }
                    // Waiting on a slow origin: keep the gateway's sidecar from
                    // dropping the tunnel.
                    debug!("keepalive after {wait:?} of silence");
                    self.send(chunk::keepalive())?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for ChunkStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.max_chunk);
        if n > 0 {
            self.send(chunk::encode(&buf[..n]))?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.ws.flush().map_err(ws_to_io)
    }
}

/// A connection the relay dialled to an origin itself (selective mode), read
/// as a [`ChunkStream`] is: bounded by a deadline while one is set, and
/// stopped by the client's socket becoming readable while one is watched.
struct DirectStream {
    socket: TcpStream,
    watch: Option<RawFd>,
    deadline: Option<Instant>,
}

impl Read for DirectStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.socket.as_raw_fd();
        loop {
            let wait = match self.deadline {
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
                    }
                    Some(left)
                }
            };
            let readable = match self.watch {
                Some(client) => {
                    let (origin, client) =
                        socket::wait_readable_either(fd, client, wait.unwrap_or(IDLE_CLIENT))?;
                    if !origin && client {
                        return Err(io::Error::other(OtherSideReady));
                    }
                    origin
                }
                None => socket::wait_ready(fd, libc::POLLIN, wait)?,
            };
            if readable {
                return (&self.socket).read(buf);
            }
        }
    }
}

/// Where plain requests to one origin go: a tunnel through the gateway, or
/// a connection the relay dialled itself (selective mode, a host off the
/// include list).
enum Link {
    /// Boxed: a tunnel's state is ten times a direct connection's.
    Tunnel(Box<ChunkStream>),
    Direct(DirectStream),
}

impl Link {
    /// The socket to poll for the origin's bytes.
    fn raw_fd(&self) -> RawFd {
        match self {
            Link::Tunnel(t) => t.raw_fd(),
            Link::Direct(d) => d.socket.as_raw_fd(),
        }
    }

    /// Reads still waiting at this instant fail with `TimedOut`.
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        match self {
            Link::Tunnel(t) => t.deadline = deadline,
            Link::Direct(d) => d.deadline = deadline,
        }
    }

    /// While set, a read that would wait returns [`OtherSideReady`] once
    /// this socket (the client's) is readable and the origin is not.
    fn set_watch(&mut self, client: Option<RawFd>) {
        match self {
            Link::Tunnel(t) => t.watch = client,
            Link::Direct(d) => d.watch = client,
        }
    }

    /// Whether received data waits inside the link (a direct connection
    /// keeps none: its bytes wait in the socket).
    fn has_pending(&self) -> bool {
        match self {
            Link::Tunnel(t) => t.has_pending(),
            Link::Direct(_) => false,
        }
    }

    /// Whether anything (data or the end) came from the origin, without
    /// waiting.
    fn receive_ready(&mut self) -> io::Result<bool> {
        match self {
            Link::Tunnel(t) => t.receive_ready(),
            Link::Direct(d) => {
                socket::wait_ready(d.socket.as_raw_fd(), libc::POLLIN, Some(Duration::ZERO))
            }
        }
    }

    /// Whether data or the end came from the origin, waiting at most a
    /// moment on a tunnel (a readable one may hold only a ping); a readable
    /// direct connection holds data or the end.
    fn has_data(&mut self) -> io::Result<bool> {
        match self {
            Link::Tunnel(t) => t.has_data(),
            Link::Direct(_) => self.receive_ready(),
        }
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Tunnel(t) => t.read(buf),
            Link::Direct(d) => d.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Tunnel(t) => t.write(buf),
            Link::Direct(d) => (&d.socket).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Link::Tunnel(t) => t.flush(),
            Link::Direct(_) => Ok(()),
        }
    }
}

/// Headers without the hop-by-hop ones, those named in `Connection`, the
/// framing headers (the relay writes its own) and `Host`/`Expect` (the
/// relay writes or answers those itself).
fn end_to_end(headers: &[(String, String)]) -> Vec<&(String, String)> {
    let named: Vec<String> = header_values(headers, "connection")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(n, _)| {
            let n = n.to_ascii_lowercase();
            !HOP_BY_HOP.contains(&n.as_str())
                && !named.contains(&n)
                && !is_framing_header(&n)
                && n != "host"
                && n != "expect"
        })
        .collect()
}

/// The request as the origin gets it: origin form, a `Host` rebuilt from
/// the absolute-form target (whatever `Host` the client sent), end-to-end
/// headers, and the one framing header the relay will honour.
fn origin_request(
    head: &RequestHead,
    authority: &Authority,
    path: &str,
    framing: &Framing,
) -> Vec<u8> {
    let host = match authority.port {
        80 => authority.host.to_string(),
        _ => authority.to_string(),
    };
    let mut out = format!("{} {path} HTTP/1.1\r\nHost: {host}\r\n", head.method);
    for (name, value) in end_to_end(&head.headers) {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(line) = framing.header_line() {
        out.push_str(&line);
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The response as the client gets it: end-to-end headers, the one
/// framing header, and `Connection: close` when the relay will close after it.
fn client_response(resp: &ResponseHead, framing: &Framing, close: bool) -> Vec<u8> {
    let mut out = format!("{}\r\n", resp.status_line());
    for (name, value) in end_to_end(&resp.headers) {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(line) = framing.header_line() {
        out.push_str(&line);
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The link plain requests to one origin go through.
struct Upstream {
    authority: Authority,
    stream: BufReader<Link>,
}

impl Upstream {
    /// Whether the tunnel can carry another request: nothing arrived since
    /// the last response ended (no unrequested bytes, no close).
    fn is_clean(&mut self) -> bool {
        if !self.stream.buffer().is_empty() {
            return false;
        }
        let chunks = self.stream.get_mut();
        !chunks.has_pending() && matches!(chunks.receive_ready(), Ok(false))
    }
}

/// Why a forwarded request failed, and whether the client can still be told.
#[derive(Debug)]
enum Failure {
    /// Nothing of a response was written yet: answer with this status.
    Answer(Status, String),
    /// The client got part of a response, or is gone: just close.
    Close(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Answer((code, _), why) => write!(f, "{why} (answered {code})"),
            Failure::Close(why) => write!(f, "{why} (closed)"),
        }
    }
}

impl std::error::Error for Failure {}

/// One forwarded request and its response.
#[derive(Debug)]
struct Exchange {
    status: u16,
    /// Request body bytes sent on.
    up: u64,
    /// Response body bytes passed to the client.
    down: u64,
    /// Whether the client connection stays open for another request.
    keep_open: bool,
}

/// The client side of a plain-HTTP connection. While a request body is
/// being forwarded, `watch` holds the tunnel's socket: a read then also
/// wakes when the origin starts answering, so an origin that answers early
/// (and never reads the rest) is heard rather than waited out.
struct WatchedClient<'a> {
    socket: &'a TcpStream,
    watch: &'a Cell<Option<RawFd>>,
}

/// A read of one side stopped because the other side has something: the
/// origin answering while the request body is read, or the client sending
/// more of its body while an early answer is passed on.
#[derive(Debug)]
struct OtherSideReady;

impl fmt::Display for OtherSideReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the other side of the exchange has data")
    }
}

impl std::error::Error for OtherSideReady {}

fn is_other_side(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<OtherSideReady>())
}

impl Read for WatchedClient<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(ws_fd) = self.watch.get() {
            let (client, origin) =
                socket::wait_readable_either(self.socket.as_raw_fd(), ws_fd, BODY_TIMEOUT)?;
            if !client && !origin {
                return Err(io::ErrorKind::TimedOut.into());
            }
            if !client {
                return Err(io::Error::other(OtherSideReady));
            }
        }
        self.socket.read(buf)
    }
}

/// Serves a client connection whose first request is plain HTTP; returns
/// when the connection should close.
pub fn serve(
    gateway: &Gateway,
    limits: &Limits,
    client: &TcpStream,
    first: RequestHead,
    leftover: Vec<u8>,
) {
    let watch = Cell::new(None);
    let watched = WatchedClient {
        socket: client,
        watch: &watch,
    };
    let mut reader = BufReader::with_capacity(32 * 1024, Cursor::new(leftover).chain(watched));
    let mut upstream: Option<Upstream> = None;
    let mut head = first;
    loop {
        let started = Instant::now();
        let outcome = forward_one(
            gateway,
            limits,
            client,
            &mut reader,
            &watch,
            &mut upstream,
            &head,
        );
        watch.set(None);
        match outcome {
            Ok(done) => {
                gateway.monitor.http_served(done.up, done.down);
                info!(
                    "http {} {} -> {}: up {} B, down {} B, {:.3} s",
                    head.method,
                    head.target,
                    done.status,
                    done.up,
                    done.down,
                    started.elapsed().as_secs_f64()
                );
                if !done.keep_open {
                    return;
                }
            }
            Err(Failure::Answer(status, why)) => {
                warn!("http {} {}: {why}", head.method, head.target);
                reply::answer(client, status, &why);
                return;
            }
            Err(Failure::Close(why)) => {
                info!("http {} {}: {why}", head.method, head.target);
                return;
            }
        }
        // The next request on this connection, if the client sends one.
        let idle = Mode::Blocking {
            read: Some(IDLE_CLIENT),
            write: None,
        };
        if socket::set_mode(client, idle).is_err() {
            return;
        }
        head = match read_head_bytes(&mut reader, limits.max_head_bytes)
            .and_then(|bytes| parse_head(&bytes))
        {
            Ok(head) => head,
            Err(HeadError::Closed(_) | HeadError::Timeout) => return,
            Err(e) => {
                gateway.monitor.head_failed(&e, None);
                if let Some(status) = e.status() {
                    reply::answer(client, status, &e.to_string());
                }
                return;
            }
        };
    }
}

/// Forwards one request and its response.
fn forward_one<R: BufRead>(
    gateway: &Gateway,
    limits: &Limits,
    client: &TcpStream,
    reader: &mut R,
    watch: &Cell<Option<RawFd>>,
    upstream: &mut Option<Upstream>,
    head: &RequestHead,
) -> Result<Exchange, Failure> {
    let bad = |why: String| Failure::Answer(reply::BAD_REQUEST, why);
    let (authority, path) = match ProxyRequest::from_head(head) {
        Ok(ProxyRequest::Forward { authority, path }) => (authority, path),
        Ok(ProxyRequest::Connect(_)) => {
            return Err(bad(
                "CONNECT must open its own connection to the proxy".into()
            ));
        }
        Err(e) => {
            let status = e.status().unwrap_or(reply::BAD_REQUEST);
            return Err(Failure::Answer(status, e.to_string()));
        }
    };
    if header_values(&head.headers, "host").count() > 1 {
        return Err(bad("more than one Host header".into()));
    }
    let request_framing = request_framing(head).map_err(|e| bad(e.to_string()))?;
    let client_closes = has_token(&head.headers, "connection", "close")
        || (head.minor_version == 0 && !has_token(&head.headers, "connection", "keep-alive"));

    if upstream
        .as_mut()
        .is_none_or(|u| u.authority != authority || !u.is_clean())
    {
        *upstream = None;
        *upstream = Some(match direct::route_target(gateway, &authority) {
            Route::Tunnel => open_upstream(gateway, limits, client, &authority)?,
            Route::Direct => open_direct(gateway, &authority)?,
        });
    }
    let Some(up) = upstream.as_mut() else {
        return Err(Failure::Close("no tunnel".into()));
    };
    let lost = |e: &dyn fmt::Display| {
        Failure::Answer(
            reply::BAD_GATEWAY,
            format!("tunnel to {authority} failed: {e}"),
        )
    };

    let body_wait = Mode::Blocking {
        read: Some(BODY_TIMEOUT),
        write: None,
    };
    socket::set_mode(client, body_wait).map_err(|e| Failure::Close(e.to_string()))?;
    let expects_continue = has_token(&head.headers, "expect", "100-continue");
    up.stream
        .get_mut()
        .write_all(&origin_request(head, &authority, &path, &request_framing))
        .map_err(|e| lost(&e))?;
    if expects_continue && request_framing.body != BodyFraming::None {
        (&*client)
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|e| Failure::Close(e.to_string()))?;
    }
    let mut body = BodyCopier::new(request_framing.body);
    watch.set(Some(up.stream.get_ref().raw_fd()));
    let body_complete = loop {
        match body.copy(reader, up.stream.get_mut()) {
            Ok(_) => break true,
            Err(BodyError::Read(e)) if is_other_side(&e) => {
                // Readable may be a ping or a keepalive: go on unless data came.
                if !up.stream.buffer().is_empty()
                    || up.stream.get_mut().has_data().map_err(|e| lost(&e))?
                {
                    break false;
                }
            }
            Err(BodyError::Read(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                *upstream = None;
                return Err(Failure::Answer(
                    reply::REQUEST_TIMEOUT,
                    "request body not complete in time".into(),
                ));
            }
            Err(e @ (BodyError::Read(_) | BodyError::Eof)) => {
                *upstream = None;
                return Err(Failure::Close(format!(
                    "client stopped sending its request body: {e}"
                )));
            }
            Err(e @ BodyError::Malformed(_)) => {
                *upstream = None;
                return Err(bad(format!("request body: {e}")));
            }
            Err(BodyError::Write(e)) => {
                *upstream = None;
                return Err(lost(&e));
            }
        }
    };
    watch.set(None);
    up.stream.get_mut().flush().map_err(|e| lost(&e))?;

    // The response; informational ones (but 101) are passed on as they come.
    // The whole head, informational ones included, has one deadline.
    up.stream
        .get_mut()
        .set_deadline(Some(Instant::now() + limits.response_head_timeout));
    let response = loop {
        let read = read_response(&mut up.stream, &format!("the origin {authority}"));
        let (bytes, resp) = match read {
            Ok(read) => read,
            Err(e) => {
                *upstream = None;
                return Err(e);
            }
        };
        if (100..200).contains(&resp.status) && resp.status != 101 {
            if !expects_continue || resp.status != 100 {
                (&*client)
                    .write_all(&bytes)
                    .map_err(|e| Failure::Close(e.to_string()))?;
            }
            continue;
        }
        break resp;
    };
    up.stream.get_mut().set_deadline(None);
    let framing = match forwarded_response_framing(&response.headers) {
        Ok(framing) => framing,
        Err(e) => {
            // What follows cannot be told apart from a next response.
            *upstream = None;
            return Err(Failure::Answer(
                reply::BAD_GATEWAY,
                format!("{authority}: {e}"),
            ));
        }
    };
    let no_body = head.method == "HEAD" || matches!(response.status, 101 | 204 | 304);
    let body_framing = if no_body {
        BodyFraming::None
    } else {
        framing.body
    };
    let origin_closes = body_framing == BodyFraming::UntilClose
        || response.status == 101
        || has_token(&response.headers, "connection", "close")
        || !body_complete;
    let close = client_closes || origin_closes;
    let mut to_client = client;
    to_client
        .write_all(&client_response(&response, &framing, close))
        .map_err(|e| Failure::Close(e.to_string()))?;
    // After an early answer the rest of the request body is still passed
    // on (an origin may stream its answer while it reads): the response
    // body's reads stop whenever the client has more to send.
    let mut response_body = BodyCopier::new(body_framing);
    let mut request_done = body_complete;
    let client_fd = client.as_raw_fd();
    let down_bytes = loop {
        up.stream
            .get_mut()
            .set_watch((!request_done).then_some(client_fd));
        let got = response_body.copy(&mut up.stream, &mut to_client);
        up.stream.get_mut().set_watch(None);
        match got {
            Ok(n) => break n,
            Err(BodyError::Read(e)) if is_other_side(&e) => {
                watch.set(Some(up.stream.get_ref().raw_fd()));
                let sent = body.copy(reader, up.stream.get_mut());
                watch.set(None);
                match sent {
                    Ok(_) => {
                        request_done = true;
                        up.stream.get_mut().flush().map_err(|e| {
                            Failure::Close(format!("tunnel to {authority} failed: {e}"))
                        })?;
                    }
                    Err(BodyError::Read(e)) if is_other_side(&e) => {}
                    Err(e) => {
                        *upstream = None;
                        return Err(Failure::Close(format!(
                            "request body after an early answer: {e}"
                        )));
                    }
                }
            }
            Err(e) => {
                *upstream = None;
                return Err(Failure::Close(format!("response body cut off: {e}")));
            }
        }
    };
    // Bytes the origin sent beyond its response answer nothing asked: the
    // tunnel is not used again.
    if origin_closes || !up.stream.buffer().is_empty() || up.stream.get_ref().has_pending() {
        if !origin_closes {
            warn!("http {authority}: bytes after the response; the tunnel is closed");
        }
        *upstream = None;
    }
    Ok(Exchange {
        status: response.status,
        up: body.copied(),
        down: down_bytes,
        keep_open: !close,
    })
}

/// Opens a tunnel to `authority` and checks the gateway's answer to the
/// CONNECT. A refusal (say, a blocked host) is passed to the client as the
/// gateway wrote it.
fn open_upstream(
    gateway: &Gateway,
    limits: &Limits,
    client: &TcpStream,
    authority: &Authority,
) -> Result<Upstream, Failure> {
    let request = dial::Request {
        target: authority,
        client_process: &|_| "<plain-http>".to_string(),
        leftover: &[],
    };
    // Each plain-HTTP tunnel is closed after use, never pooled.
    let opened = dial::open(gateway, limits, &request).map_err(|e| {
        warn!("http tunnel {authority}: {e}");
        gateway
            .monitor
            .open_failed(gateway.generation, &e, &authority.to_string());
        Failure::Answer(e.status(), e.to_string())
    })?;
    gateway.monitor.opened(&opened, &authority.to_string());
    let stream = ChunkStream::new(
        opened.ws,
        opened.wire,
        opened.answer,
        limits.max_chunk,
        limits.keepalive_interval,
    )
    .map_err(|e| Failure::Answer(reply::BAD_GATEWAY, e.to_string()))?;
    let mut stream = BufReader::with_capacity(64 * 1024, Link::Tunnel(Box::new(stream)));
    stream
        .get_mut()
        .set_deadline(Some(Instant::now() + limits.response_head_timeout));
    // The deadline stays on while a refusal's body is passed on.
    let (bytes, resp) = read_response(&mut stream, "the gateway (answering the CONNECT)")?;
    if !(200..300).contains(&resp.status) {
        gateway.monitor.check_answer(&bytes, &authority.to_string());
        let mut to_client = client;
        let _ = to_client.write_all(&bytes);
        let _ = io::copy(&mut stream.take(1 << 20), &mut to_client);
        return Err(Failure::Close(format!(
            "gateway refused {authority}: {}",
            resp.status_line()
        )));
    }
    stream.get_mut().set_deadline(None);
    Ok(Upstream {
        authority: authority.clone(),
        stream,
    })
}

/// Dials `authority` directly (selective mode, a host off the include
/// list), refusing what a direct CONNECT refuses, with its answers.
fn open_direct(gateway: &Gateway, authority: &Authority) -> Result<Upstream, Failure> {
    let socket = direct::dial_target(&gateway.monitor, authority)
        .map_err(|e| Failure::Answer(e.status(), e.to_string()))?;
    let stream = DirectStream {
        socket,
        watch: None,
        deadline: None,
    };
    Ok(Upstream {
        authority: authority.clone(),
        stream: BufReader::with_capacity(64 * 1024, Link::Direct(stream)),
    })
}

/// Reads and parses one response head from `stream` (`who` names the
/// sender in errors): the head's bytes, to pass on verbatim, and its parse.
/// A deadline passing is a 504, anything else a 502.
fn read_response<R: BufRead>(
    stream: &mut R,
    who: &str,
) -> Result<(Vec<u8>, ResponseHead), Failure> {
    let bytes = read_head_bytes(stream, MAX_RESPONSE_HEAD).map_err(|e| head_failure(who, &e))?;
    match parse_response_head(&bytes) {
        Ok(Some((resp, _))) => Ok((bytes, resp)),
        Ok(None) => Err(Failure::Answer(
            reply::BAD_GATEWAY,
            format!("{who} sent a bad response head: it is cut off"),
        )),
        Err(e) => Err(Failure::Answer(
            reply::BAD_GATEWAY,
            format!("{who} sent a bad response head: {e}"),
        )),
    }
}

/// What a failed read of a response head means, naming the party at fault
/// (the request-head wording of [`HeadError`] would blame the client).
fn head_failure(who: &str, e: &HeadError) -> Failure {
    let why = match e {
        HeadError::Timeout => {
            return Failure::Answer(
                reply::GATEWAY_TIMEOUT,
                format!("{who} sent no complete response head in time"),
            );
        }
        HeadError::TooLarge => {
            format!("{who} sent a response head over {MAX_RESPONSE_HEAD} bytes")
        }
        HeadError::Closed(None) => {
            format!("{who} closed before its response head was complete")
        }
        HeadError::Closed(Some(e)) => format!("reading the response head from {who} failed: {e}"),
        other => format!("{who} sent a bad response head: {other}"),
    };
    Failure::Answer(reply::BAD_GATEWAY, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_body() -> Framing {
        Framing {
            body: BodyFraming::None,
            codings: Vec::new(),
        }
    }

    #[test]
    fn origin_request_drops_proxy_and_hop_by_hop_headers() {
        let head = parse_head(
            b"GET http://origin.test:8080/p?q HTTP/1.1\r\nHost: origin.test:8080\r\nProxy-Connection: keep-alive\r\n\
Proxy-Authorization: Basic eA==\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nExpect: 100-continue\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        let authority = Authority::parse("origin.test:8080", None).unwrap();
        let out = String::from_utf8(origin_request(&head, &authority, "/p?q", &no_body())).unwrap();
        assert_eq!(
            out,
            "GET /p?q HTTP/1.1\r\nHost: origin.test:8080\r\nAccept: */*\r\n\r\n"
        );
    }

    #[test]
    fn origin_request_adds_a_missing_host() {
        let head = parse_head(b"GET http://origin.test/ HTTP/1.0\r\n\r\n").unwrap();
        let authority = Authority::parse("origin.test:80", None).unwrap();
        let out = String::from_utf8(origin_request(&head, &authority, "/", &no_body())).unwrap();
        assert_eq!(out, "GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n");
    }

    #[test]
    fn origin_request_host_comes_from_the_target_and_framing_is_rebuilt() {
        let head = parse_head(
            b"POST http://origin.test/ HTTP/1.1\r\nHost: evil.test\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        let framing = request_framing(&head).unwrap();
        let authority = Authority::parse("origin.test:80", None).unwrap();
        let out = String::from_utf8(origin_request(&head, &authority, "/", &framing)).unwrap();
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\n\r\n"
        );
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_and_say_close() {
        let (resp, _) = parse_response_head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nContent-Length: 2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(resp.status, 200);
        let framing = forwarded_response_framing(&resp.headers).unwrap();
        assert_eq!(
            String::from_utf8(client_response(&resp, &framing, true)).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        assert!(parse_response_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    fn response_failure(input: &[u8]) -> (u16, String) {
        match read_response(&mut io::BufReader::new(input), "the origin o.test:80") {
            Err(Failure::Answer((code, _), why)) => (code, why),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_head_failures_name_the_origin() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() < 200 * 1024 {
            big.extend_from_slice(b"X-Filler: 0123456789abcdef0123456789abcdef\r\n");
        }
        big.extend_from_slice(b"\r\n");
        let (code, why) = response_failure(&big);
        assert_eq!(code, 502);
        assert!(why.contains("response head over 65536 bytes"), "{why}");
        assert!(!why.contains("request"), "{why}");

        let (code, why) = response_failure(b"HTTP/1.1 200 OK\r\nContent-Le");
        assert_eq!(code, 502);
        assert_eq!(
            why,
            "the origin o.test:80 closed before its response head was complete"
        );
        let (code, why) = response_failure(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n");
        assert_eq!(code, 502);
        assert!(
            why.starts_with("the origin o.test:80 sent a bad response head: "),
            "{why}"
        );
    }

    #[test]
    fn a_silent_origin_is_a_504() {
        /// Times out on every read, as a socket past its deadline does.
        struct Silent;
        impl Read for Silent {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))
            }
        }
        let got = read_response(&mut io::BufReader::new(Silent), "the origin o.test:80");
        match got {
            Err(Failure::Answer((504, _), why)) => assert_eq!(
                why,
                "the origin o.test:80 sent no complete response head in time"
            ),
            other => panic!("{other:?}"),
        }
    }

    /// A connected pair on loopback: (the relay's end, the far end).
    fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        (near, far)
    }

    #[test]
    fn a_direct_link_reads_like_a_tunnel() {
        let (near, mut origin) = tcp_pair();
        let mut link = Link::Direct(DirectStream {
            socket: near,
            watch: None,
            deadline: None,
        });
        // Nothing arrived: clean, and a deadline ends the wait.
        assert!(!link.has_pending());
        assert!(!link.receive_ready().unwrap());
        link.set_deadline(Some(Instant::now() + Duration::from_millis(100)));
        let err = link.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // The client sending more while the origin is silent wakes the read.
        let (client, mut client_far) = tcp_pair();
        link.set_deadline(Some(Instant::now() + Duration::from_secs(10)));
        link.set_watch(Some(client.as_raw_fd()));
        client_far.write_all(b"more body").unwrap();
        let err = link.read(&mut [0u8; 8]).unwrap_err();
        assert!(is_other_side(&err), "{err}");
        // The origin's bytes are read, and seen as data before that.
        link.set_watch(None);
        link.set_deadline(None);
        origin.write_all(b"answer").unwrap();
        assert!(
            socket::wait_ready(link.raw_fd(), libc::POLLIN, Some(Duration::from_secs(10))).unwrap()
        );
        assert!(link.has_data().unwrap());
        let mut got = [0u8; 6];
        link.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"answer");
        link.write_all(b"request").unwrap();
        link.flush().unwrap();
        let mut seen = [0u8; 7];
        origin.read_exact(&mut seen).unwrap();
        assert_eq!(&seen, b"request");
    }

    #[test]
    fn responses_with_both_framings_are_refused() {
        let (resp, _) = parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(forwarded_response_framing(&resp.headers).is_err());
    }
}
