//! The crate's one small blocking HTTP/1.1 client, for what the relay
//! fetches itself: the gateway's CA certificate (`trust::fetch`, over
//! `http://` or `https://`) and the status page `ccr-relay status` reads
//! (plain `http://` to the relay's port). One deadline covers the whole
//! exchange (connect, TLS, request, every byte of the answer); the head and
//! the body are capped in size and read with the crate's one HTTP/1 parser
//! ([`super::http1`], [`super::body`]), the body framed as its head says:
//! `Content-Length`, chunked, or to the close. Bytes after the body are not
//! part of the answer.

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::body::{BodyCopier, BodyError, CappedSink};
use super::http1::{self, BodyFraming, Http1Error, ResponseHead};
use crate::sys::text::{Keep, Unfit, clean};

/// Bound on the answer's status line and headers.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The deadline passed (a socket time-out fired or no time was left).
    #[error("no complete answer before the deadline")]
    Timeout,
    /// The connection broke.
    #[error("{0}")]
    Io(io::Error),
    /// The TLS handshake failed other than by the connection breaking (a
    /// certificate refused, above all).
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The server closed the connection before a byte of an answer.
    #[error("the server closed the connection without answering")]
    ClosedBeforeAnswer,
    /// The answer is not HTTP/1.x this client understands, or its body
    /// ended before its framing said.
    #[error("{0}")]
    Malformed(String),
    /// The body is larger than allowed.
    #[error("body larger than {max} bytes")]
    TooLarge { max: usize },
}

/// A stream the client can talk over: plain TCP or TLS on TCP, with the
/// socket underneath for its time-outs.
pub trait Transport: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport for native_tls::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

/// The instant `timeout` from now (an hour when that cannot be told).
pub fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or(now + Duration::from_secs(3600))
}

/// Connects to `authority` (`host:port`), trying each of its addresses in
/// turn with what is left of the deadline.
pub fn connect(authority: &str, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    for addr in authority.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// What is left of the deadline; an I/O time-out once none is.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
    } else {
        Ok(left)
    }
}

fn set_timeouts(tcp: &TcpStream, left: Duration) -> io::Result<()> {
    tcp.set_read_timeout(Some(left))
        .and_then(|_| tcp.set_write_timeout(Some(left)))
}

/// An I/O error as the client reports it: socket time-outs and the passed
/// deadline are [`ClientError::Timeout`].
fn io_error(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Io(e),
    }
}

/// A failed handshake: the connection breaking under it (reset, time-out)
/// is an I/O error and may pass; anything else, a certificate refused
/// above all, is [`ClientError::Tls`] and will not.
fn tls_failure(e: native_tls::Error) -> ClientError {
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return io_error(io::Error::new(io.kind(), io.to_string()));
        }
        source = cause.source();
    }
    ClientError::Tls(e.to_string())
}

/// The TLS handshake with `host` on `tcp`, within the deadline.
pub fn tls_handshake(
    tls: &native_tls::TlsConnector,
    host: &str,
    tcp: TcpStream,
    deadline: Instant,
) -> Result<native_tls::TlsStream<TcpStream>, ClientError> {
    let bound = |tcp: &TcpStream| {
        remaining(deadline)
            .and_then(|left| set_timeouts(tcp, left))
            .map_err(io_error)
    };
    bound(&tcp)?;
    let mut attempt = tls.connect(host, tcp);
    loop {
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(native_tls::HandshakeError::Failure(e)) => return Err(tls_failure(e)),
            Err(native_tls::HandshakeError::WouldBlock(mid)) => {
                // A socket timeout fired mid-handshake: go on if time is left.
                bound(mid.get_ref())?;
                attempt = mid.handshake();
            }
        }
    }
}

/// `text` for an error line: control characters left out, at most `max`
/// characters (shared with the CA fetch's errors).
pub(crate) fn printable(text: &str, max: usize) -> String {
    clean(text, max, Keep::NonControl, Unfit::Drop)
}

fn http_error(e: Http1Error) -> ClientError {
    let (Http1Error::Malformed(why) | Http1Error::Ambiguous(why) | Http1Error::Unsupported(why)) =
        e;
    ClientError::Malformed(why.to_string())
}

/// One request and its answer on one connection, read through a buffer
/// (`buf[pos..]` not yet consumed), every I/O bounded by what is left of
/// the deadline.
pub struct Exchange<S> {
    stream: S,
    buf: Vec<u8>,
    pos: usize,
    deadline: Instant,
}

impl<S: Transport> Exchange<S> {
    /// An exchange on a connected `stream`, to end by `deadline`.
    pub fn new(stream: S, deadline: Instant) -> Exchange<S> {
        Exchange {
            stream,
            buf: Vec::new(),
            pos: 0,
            deadline,
        }
    }

    /// Sends the request (its head and any body, as given).
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let sent = remaining(self.deadline)
            .and_then(|left| set_timeouts(self.stream.tcp(), left))
            .and_then(|_| self.stream.write_all(bytes))
            .and_then(|_| self.stream.flush());
        sent.map_err(io_error)
    }

    /// Reads more onto the end of the buffer; 0 at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 8192];
        loop {
            set_timeouts(self.stream.tcp(), remaining(self.deadline)?)?;
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the answer's head, skipping interim `1xx` answers.
    pub fn read_head(&mut self) -> Result<ResponseHead, ClientError> {
        loop {
            let head = self.read_one_head()?;
            if (100..200).contains(&head.status) && head.status != 101 {
                continue;
            }
            return Ok(head);
        }
    }

    /// Reads one head, at most [`MAX_HEAD_BYTES`] of it.
    fn read_one_head(&mut self) -> Result<ResponseHead, ClientError> {
        loop {
            let unread = &self.buf[self.pos..];
            if let Some((head, used)) = http1::parse_response_head(unread).map_err(http_error)? {
                self.pos += used;
                return Ok(head);
            }
            if unread.len() > MAX_HEAD_BYTES {
                return Err(ClientError::Malformed(format!(
                    "response head larger than {MAX_HEAD_BYTES} bytes"
                )));
            }
            if self.fill().map_err(io_error)? == 0 {
                return Err(if self.pos == self.buf.len() {
                    ClientError::ClosedBeforeAnswer
                } else {
                    ClientError::Malformed(
                        "the connection closed in the middle of the response head".into(),
                    )
                });
            }
        }
    }

    /// The body of the answer whose head held `headers`, framed as they
    /// say, at most `max` bytes; compressed bodies are refused (the client
    /// asks for none).
    pub fn read_body(
        &mut self,
        headers: &[(String, String)],
        max: usize,
    ) -> Result<Vec<u8>, ClientError> {
        if let Some(coding) = http1::header_values(headers, "content-encoding")
            .map(str::trim)
            .find(|v| !v.is_empty() && !v.eq_ignore_ascii_case("identity"))
        {
            return Err(ClientError::Malformed(format!(
                "compressed answer (Content-Encoding '{}')",
                printable(coding, 20)
            )));
        }
        let framing = http1::response_framing(headers).map_err(http_error)?;
        let mut copier = match framing.body {
            BodyFraming::Length(len) if len > max as u64 => {
                // Declared too large: refused before reading.
                return Err(ClientError::TooLarge { max });
            }
            BodyFraming::Chunked => BodyCopier::chunked_data_only(),
            other => BodyCopier::new(other),
        };
        let mut body = CappedSink::new(max);
        match copier.copy(self, &mut body) {
            Ok(_) => Ok(body.into_bytes()),
            Err(BodyError::Read(e)) => Err(io_error(e)),
            Err(BodyError::Eof) => Err(ClientError::Malformed(format!(
                "the connection closed after {} body bytes, before the body's end",
                body.len()
            ))),
            Err(BodyError::Malformed(why)) => Err(ClientError::Malformed(why.to_string())),
            Err(BodyError::Write(_)) => Err(ClientError::TooLarge { max }),
        }
    }
}

impl<S: Transport> Read for Exchange<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<S: Transport> BufRead for Exchange<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.buf.len() {
            self.fill()?;
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}
