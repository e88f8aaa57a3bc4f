//! Plain HTTP through the relay: absolute-form requests
//! (`GET http://host/path HTTP/1.1`) are sent through a CONNECT tunnel to
//! `host:port` in origin form, without hop-by-hop and proxy headers, bodies
//! streamed both ways (Content-Length, chunked, or until close) and never
//! held whole. Later requests on the same client connection to the same
//! host reuse the tunnel; another host gets a new one.
//!
//! Unlike a CONNECT tunnel this is one request, then one response, so a
//! single thread drives it over a blocking [`ChunkStream`].

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tungstenite::{Bytes, Message, WebSocket};

use crate::chunk;
use crate::config::Limits;
use crate::gateway::{Gateway, GatewayStream};
use crate::request_head::{
    Authority, HeadError, ProxyRequest, RequestHead, parse_head, read_head_bytes,
};

/// Largest response head accepted from an origin.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest line in chunked framing (size line or trailer).
const MAX_LINE: u64 = 8 * 1024;
/// How long a kept-alive client connection may sit idle between requests.
const IDLE_CLIENT: Duration = Duration::from_secs(60);

/// Request headers never forwarded: hop-by-hop (RFC 9110 7.6.1) and the
/// proxy's own. Headers named in `Connection` are dropped too.
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
    pending: Bytes,
    max_chunk: usize,
    keepalive: Duration,
    eof: bool,
}

impl ChunkStream {
    pub fn new(
        ws: WebSocket<GatewayStream>,
        max_chunk: usize,
        keepalive: Duration,
    ) -> io::Result<ChunkStream> {
        let tcp = ws.get_ref().tcp();
        tcp.set_nonblocking(false)?;
        tcp.set_read_timeout(Some(keepalive))?;
        tcp.set_write_timeout(None)?;
        Ok(ChunkStream {
            ws,
            pending: Bytes::new(),
            max_chunk: max_chunk.max(1),
            keepalive,
            eof: false,
        })
    }

    fn send(&mut self, encoded: Vec<u8>) -> io::Result<()> {
        self.ws
            .send(Message::Binary(encoded.into()))
            .map_err(ws_to_io)
    }
}

fn ws_to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        // Tell the gateway the tunnel is done rather than vanish mid-stream.
        let _ = self
            .ws
            .get_ref()
            .tcp()
            .set_write_timeout(Some(Duration::from_millis(200)));
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
            match self.ws.read() {
                Ok(Message::Binary(encoded)) => {
                    let data = chunk::decode(&encoded)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    let start = data.as_ptr() as usize - encoded.as_ptr() as usize;
                    let len = data.len();
                    self.pending = encoded.slice(start..start + len);
                }
                Ok(Message::Text(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        chunk::ChunkError::TextFrame,
                    ));
                }
                Ok(Message::Close(_))
                | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.eof = true;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    // Waiting on a slow origin: keep the gateway's sidecar from
                    // dropping the tunnel.
                    debug!("keepalive after {:?} of silence", self.keepalive);
                    self.send(chunk::keepalive())?;
                }
                Err(e) => return Err(ws_to_io(e)),
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

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    header_values(headers, name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The body framing of a message with these headers (RFC 9112 section 6).
fn framing(
    headers: &[(String, String)],
    otherwise: BodyFraming,
) -> Result<BodyFraming, &'static str> {
    if let Some(last) = header_values(headers, "transfer-encoding")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .last()
    {
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(BodyFraming::Chunked)
        } else {
            Err("unsupported Transfer-Encoding")
        };
    }
    let mut length = None;
    for value in header_values(headers, "content-length") {
        for part in value.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("bad Content-Length");
            }
            let n: u64 = part.parse().map_err(|_| "bad Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length");
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(otherwise, BodyFraming::Length))
}

/// Copies one body from `from` to `to` as framed, bytes as they are.
fn copy_body<R: BufRead, W: Write>(
    framing: BodyFraming,
    from: &mut R,
    to: &mut W,
) -> io::Result<u64> {
    match framing {
        BodyFraming::None => Ok(0),
        BodyFraming::Length(n) => {
            let copied = io::copy(&mut from.take(n), to)?;
            if copied < n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body ended before its Content-Length",
                ));
            }
            Ok(copied)
        }
        BodyFraming::UntilClose => io::copy(from, to),
        BodyFraming::Chunked => copy_chunked(from, to),
    }
}

fn read_line<R: BufRead>(from: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    from.take(MAX_LINE).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "chunked body: line too long or cut off",
        ));
    }
    Ok(line)
}

fn copy_chunked<R: BufRead, W: Write>(from: &mut R, to: &mut W) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let size_line = read_line(from)?;
        let text = std::str::from_utf8(&size_line).unwrap_or("");
        let hex = text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(hex, 16).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "chunked body: bad chunk size")
        })?;
        to.write_all(&size_line)?;
        if size == 0 {
            // Trailer section, up to its blank line.
            loop {
                let line = read_line(from)?;
                to.write_all(&line)?;
                if line == b"\r\n" || line == b"\n" {
                    return Ok(total);
                }
            }
        }
        total += copy_body(BodyFraming::Length(size), from, to)?;
        let end = read_line(from)?;
        if end != b"\r\n" && end != b"\n" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunked body: missing CRLF",
            ));
        }
        to.write_all(&end)?;
    }
}

/// Headers without the hop-by-hop ones and those named in `Connection`.
fn end_to_end(headers: &[(String, String)]) -> Vec<&(String, String)> {
    let named: Vec<String> = header_values(headers, "connection")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(n, _)| {
            let n = n.to_ascii_lowercase();
            !HOP_BY_HOP.contains(&n.as_str()) && !named.contains(&n)
        })
        .collect()
}

/// The request as the origin gets it: origin form, end-to-end headers,
/// a `Host`, and no `Expect` (the relay answers `100 Continue` itself).
fn origin_request(head: &RequestHead, authority: &Authority, path: &str) -> Vec<u8> {
    let mut out = format!("{} {path} HTTP/1.1\r\n", head.method);
    if head.header("host").is_none() {
        let host = match authority.port {
            80 => authority.host.to_string(),
            _ => authority.to_string(),
        };
        out.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in end_to_end(&head.headers) {
        if !name.eq_ignore_ascii_case("expect") {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A parsed response head.
struct ResponseHead {
    status: u16,
    status_line: String,
    headers: Vec<(String, String)>,
}

fn parse_response(bytes: &[u8]) -> Result<ResponseHead, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default().to_string();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err("response is not HTTP/1.x");
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..=999).contains(s))
        .ok_or("bad response status")?;
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or("bad response header line")?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(ResponseHead {
        status,
        status_line,
        headers,
    })
}

/// The response as the client gets it: end-to-end headers, and
/// `Connection: close` when the relay will close after it.
fn client_response(resp: &ResponseHead, close: bool) -> Vec<u8> {
    let mut out = format!("{}\r\n", resp.status_line);
    for (name, value) in end_to_end(&resp.headers) {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The tunnel plain requests to one origin go through.
struct Upstream {
    authority: Authority,
    stream: BufReader<ChunkStream>,
}

/// Why a forwarded request failed, and whether the client can still be told.
enum Failure {
    /// Nothing of a response was written yet: answer with this status.
    Answer((u16, &'static str), String),
    /// The client got part of a response, or is gone: just close.
    Close(String),
}

/// Serves a client connection whose first request is plain HTTP; returns
/// when the connection should close. `answer` writes the relay's own
/// error responses.
pub fn serve(
    gateway: &Gateway,
    limits: &Limits,
    client: &TcpStream,
    first: RequestHead,
    leftover: Vec<u8>,
    answer: fn(&TcpStream, (u16, &str), &str),
) {
    let mut reader = BufReader::with_capacity(32 * 1024, Cursor::new(leftover).chain(client));
    let mut upstream: Option<Upstream> = None;
    let mut head = first;
    loop {
        let started = Instant::now();
        let outcome = forward_one(gateway, limits, client, &mut reader, &mut upstream, &head);
        match outcome {
            Ok((status, up, down, keep_open)) => {
                info!(
                    "http {} {} -> {status}: up {up} B, down {down} B, {:.3} s",
                    head.method,
                    head.target,
                    started.elapsed().as_secs_f64()
                );
                if !keep_open {
                    return;
                }
            }
            Err(Failure::Answer(status, why)) => {
                warn!("http {} {}: {why}", head.method, head.target);
                answer(client, status, &why);
                return;
            }
            Err(Failure::Close(why)) => {
                info!("http {} {}: {why}", head.method, head.target);
                return;
            }
        }
        // The next request on this connection, if the client sends one.
        let _ = client.set_read_timeout(Some(IDLE_CLIENT));
        head = match read_head_bytes(&mut reader, limits.max_head_bytes)
            .and_then(|bytes| parse_head(&bytes))
        {
            Ok(head) => head,
            Err(HeadError::Closed(_) | HeadError::Timeout) => return,
            Err(e) => {
                if let Some(status) = e.status() {
                    answer(client, status, &e.to_string());
                }
                return;
            }
        };
    }
}

/// Forwards one request and its response. Returns the status, the body
/// bytes each way, and whether the connection stays open.
fn forward_one<R: BufRead>(
    gateway: &Gateway,
    limits: &Limits,
    client: &TcpStream,
    reader: &mut R,
    upstream: &mut Option<Upstream>,
    head: &RequestHead,
) -> Result<(u16, u64, u64, bool), Failure> {
    let bad = |why: &str| Failure::Answer((400, "Bad Request"), why.to_string());
    let (authority, path) = match ProxyRequest::from_head(head) {
        Ok(ProxyRequest::Forward { authority, path }) => (authority, path),
        Ok(ProxyRequest::Connect(_)) => {
            return Err(bad("CONNECT must open its own connection to the proxy"));
        }
        Err(e) => {
            let status = e.status().unwrap_or((400, "Bad Request"));
            return Err(Failure::Answer(status, e.to_string()));
        }
    };
    let request_framing = framing(&head.headers, BodyFraming::None).map_err(bad)?;
    let client_closes = has_token(&head.headers, "connection", "close")
        || (head.minor_version == 0 && !has_token(&head.headers, "connection", "keep-alive"));

    if upstream.as_ref().is_none_or(|u| u.authority != authority) {
        *upstream = None;
        *upstream = Some(open_upstream(gateway, limits, client, &authority)?);
    }
    let Some(up) = upstream.as_mut() else {
        return Err(Failure::Close("no tunnel".into()));
    };
    let lost = |e: io::Error| {
        Failure::Answer(
            (502, "Bad Gateway"),
            format!("tunnel to {authority} failed: {e}"),
        )
    };

    let _ = client.set_read_timeout(Some(limits.head_timeout.max(Duration::from_secs(30))));
    let expects_continue = has_token(&head.headers, "expect", "100-continue");
    up.stream
        .get_mut()
        .write_all(&origin_request(head, &authority, &path))
        .map_err(lost)?;
    if expects_continue && request_framing != BodyFraming::None {
        (&*client)
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|e| Failure::Close(e.to_string()))?;
    }
    let up_bytes = copy_body(request_framing, reader, up.stream.get_mut()).map_err(|e| {
        *upstream = None;
        Failure::Answer(
            (502, "Bad Gateway"),
            format!("request body not forwarded: {e}"),
        )
    })?;
    let Some(up) = upstream.as_mut() else {
        return Err(Failure::Close("no tunnel".into()));
    };
    up.stream.get_mut().flush().map_err(lost)?;

    // The response; informational ones (but 101) are passed on as they come.
    let response = loop {
        let bytes = read_head_bytes(&mut up.stream, MAX_RESPONSE_HEAD).map_err(|e| {
            Failure::Answer(
                (502, "Bad Gateway"),
                format!("no response from {authority}: {e}"),
            )
        })?;
        let resp = parse_response(&bytes)
            .map_err(|e| Failure::Answer((502, "Bad Gateway"), format!("{authority}: {e}")))?;
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
    let no_body = head.method == "HEAD" || matches!(response.status, 101 | 204 | 304);
    let response_framing = if no_body {
        BodyFraming::None
    } else {
        framing(&response.headers, BodyFraming::UntilClose)
            .map_err(|e| Failure::Answer((502, "Bad Gateway"), format!("{authority}: {e}")))?
    };
    let origin_closes = response_framing == BodyFraming::UntilClose
        || response.status == 101
        || has_token(&response.headers, "connection", "close");
    let close = client_closes || origin_closes;
    let mut to_client = client;
    to_client
        .write_all(&client_response(&response, close))
        .map_err(|e| Failure::Close(e.to_string()))?;
    let down_bytes = copy_body(response_framing, &mut up.stream, &mut to_client)
        .map_err(|e| Failure::Close(format!("response body cut off: {e}")))?;
    if origin_closes {
        *upstream = None;
    }
    Ok((response.status, up_bytes, down_bytes, !close))
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
    let ws = gateway.open_websocket().map_err(|e| {
        warn!("http tunnel {authority}: {e}");
        Failure::Answer(e.status(), e.to_string())
    })?;
    let mut stream = ChunkStream::new(ws, limits.max_chunk, limits.keepalive_interval)
        .map_err(|e| Failure::Answer((502, "Bad Gateway"), e.to_string()))?;
    stream
        .write_all(&gateway.connect_head(authority))
        .and_then(|_| stream.flush())
        .map_err(|e| Failure::Answer((502, "Bad Gateway"), format!("gateway: {e}")))?;
    let mut stream = BufReader::with_capacity(64 * 1024, stream);
    let bytes = read_head_bytes(&mut stream, MAX_RESPONSE_HEAD).map_err(|e| {
        Failure::Answer(
            (502, "Bad Gateway"),
            format!("gateway did not answer the CONNECT: {e}"),
        )
    })?;
    let resp = parse_response(&bytes)
        .map_err(|e| Failure::Answer((502, "Bad Gateway"), format!("gateway: {e}")))?;
    if !(200..300).contains(&resp.status) {
        let mut to_client = client;
        let _ = to_client.write_all(&bytes);
        let _ = io::copy(&mut stream.take(1 << 20), &mut to_client);
        return Err(Failure::Close(format!(
            "gateway refused {authority}: {}",
            resp.status_line
        )));
    }
    Ok(Upstream {
        authority: authority.clone(),
        stream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn framing_follows_rfc9112() {
        assert_eq!(
            framing(&headers(&[]), BodyFraming::None),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            framing(&headers(&[("Content-Length", "12")]), BodyFraming::None),
            Ok(BodyFraming::Length(12))
        );
        assert_eq!(
            framing(
                &headers(&[
                    ("Transfer-Encoding", "gzip, chunked"),
                    ("Content-Length", "3")
                ]),
                BodyFraming::None
            ),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            framing(&headers(&[]), BodyFraming::UntilClose),
            Ok(BodyFraming::UntilClose)
        );
        assert!(
            framing(
                &headers(&[("Content-Length", "1"), ("Content-Length", "2")]),
                BodyFraming::None
            )
            .is_err()
        );
        assert!(framing(&headers(&[("Content-Length", "-1")]), BodyFraming::None).is_err());
        assert!(
            framing(
                &headers(&[("Transfer-Encoding", "gzip")]),
                BodyFraming::None
            )
            .is_err()
        );
    }

    #[test]
    fn origin_request_drops_proxy_and_hop_by_hop_headers() {
        let head = parse_head(
            b"GET http://origin.test:8080/p?q HTTP/1.1\r\nHost: origin.test:8080\r\nProxy-Connection: keep-alive\r\n\
Proxy-Authorization: Basic eA==\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nExpect: 100-continue\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        let authority = Authority::parse("origin.test:8080", None).unwrap();
        let out = String::from_utf8(origin_request(&head, &authority, "/p?q")).unwrap();
        assert_eq!(
            out,
            "GET /p?q HTTP/1.1\r\nHost: origin.test:8080\r\nAccept: */*\r\n\r\n"
        );
    }

    #[test]
    fn origin_request_adds_a_missing_host() {
        let head = parse_head(b"GET http://origin.test/ HTTP/1.0\r\n\r\n").unwrap();
        let authority = Authority::parse("origin.test:80", None).unwrap();
        let out = String::from_utf8(origin_request(&head, &authority, "/")).unwrap();
        assert_eq!(out, "GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n");
    }

    #[test]
    fn chunked_bodies_are_copied_verbatim_and_stop_at_the_end() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut from = BufReader::new(&body[..]);
        let mut to = Vec::new();
        assert_eq!(copy_chunked(&mut from, &mut to).unwrap(), 9);
        assert_eq!(to, &body[..body.len() - 4]);
        let mut rest = String::new();
        from.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "NEXT");
        for bad in [&b"zz\r\n"[..], b"4\r\nWikiXX", b"4\r\nWi"] {
            assert!(copy_chunked(&mut BufReader::new(bad), &mut Vec::new()).is_err());
        }
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_and_say_close() {
        let resp = parse_response(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nContent-Length: 2\r\n\r\n").unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            String::from_utf8(client_response(&resp, true)).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }
}
