//! HTTP/1 bodies as their framing says ([`super::http1::BodyFraming`]):
//! [`BodyCopier`] copies one body, resumably, turning chunked framing
//! canonical (or into bare data), and [`read_chunked_body`] reads a whole
//! chunked body's data under a cap. Strict for the same reason as the
//! heads: a framing the relay could read two ways is an error.

use std::fmt;
use std::io::{self, BufRead, Write};

use super::http1::{BodyFraming, Headers, convert_headers, header_slots};

/// Why a body could not be copied, by whose fault.
#[derive(Debug)]
pub enum BodyError {
    /// Reading the body failed (the sender's connection).
    Read(io::Error),
    /// The sender closed before the body's end.
    Eof,
    /// The body's framing is broken (the sender's fault).
    Malformed(&'static str),
    /// Writing the body on failed (the receiver's connection).
    Write(io::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Read(e) => write!(f, "reading the body failed: {e}"),
            BodyError::Eof => f.write_str("body ended before its framing said"),
            BodyError::Malformed(why) => write!(f, "malformed body: {why}"),
            BodyError::Write(e) => write!(f, "writing the body failed: {e}"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Read(e) | BodyError::Write(e) => Some(e),
            _ => None,
        }
    }
}

/// Largest chunk-size or trailer line.
const MAX_LINE: usize = 8 * 1024;
/// Largest trailer section.
const MAX_TRAILER: usize = 16 * 1024;

/// Trailer fields dropped on the way: framing, routing and hop-by-hop
/// fields have no business in a trailer (RFC 9110 6.5.1).
const NOT_IN_TRAILER: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SizeLine,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// Copies one body, resumably: a read error leaves the copier where it
/// was, so the caller can look elsewhere and call [`BodyCopier::copy`]
/// again. Chunked bodies come out canonical (`{hex}\r\n`, no extensions,
/// trailer fields filtered) or, with [`BodyCopier::chunked_data_only`], as
/// their bare data.
pub struct BodyCopier {
    framing: BodyFraming,
    state: State,
    reencode: bool,
    line: Vec<u8>,
    trailer: Vec<u8>,
    copied: u64,
}

impl BodyCopier {
    /// A copier for a body with this framing, re-encoding chunked framing.
    pub fn new(framing: BodyFraming) -> BodyCopier {
        let state = match framing {
            BodyFraming::None | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(n) => State::Data(n),
            BodyFraming::Chunked => State::SizeLine,
            BodyFraming::UntilClose => State::Data(u64::MAX),
        };
        BodyCopier {
            framing,
            state,
            reencode: true,
            line: Vec::new(),
            trailer: Vec::new(),
            copied: 0,
        }
    }

    /// A copier writing only a chunked body's data (no framing, no trailer).
    pub fn chunked_data_only() -> BodyCopier {
        BodyCopier {
            reencode: false,
            ..BodyCopier::new(BodyFraming::Chunked)
        }
    }

    /// Whether the whole body was copied.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Body data bytes copied so far (framing not counted).
    pub fn copied(&self) -> u64 {
        self.copied
    }

    /// Copies until the body's end; returns the data bytes copied in all.
    pub fn copy<R: BufRead + ?Sized, W: Write + ?Sized>(
        &mut self,
        from: &mut R,
        to: &mut W,
    ) -> Result<u64, BodyError> {
        loop {
            match self.state {
                State::Done => return Ok(self.copied),
                State::Data(left) => {
                    let available = match from.fill_buf() {
                        Ok([]) if self.framing == BodyFraming::UntilClose => {
                            self.state = State::Done;
                            continue;
                        }
                        Ok([]) => return Err(BodyError::Eof),
                        Ok(bytes) => bytes,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(BodyError::Read(e)),
                    };
                    let n = available
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    to.write_all(&available[..n]).map_err(BodyError::Write)?;
                    from.consume(n);
                    self.copied += n as u64;
                    let left = left - n as u64;
                    self.state = match (left, self.framing) {
                        (_, BodyFraming::UntilClose) => State::Data(u64::MAX),
                        (0, BodyFraming::Chunked) => State::DataEnd,
                        (0, _) => State::Done,
                        (left, _) => State::Data(left),
                    };
                }
                State::SizeLine => {
                    self.read_line(from)?;
                    let size = chunk_size(&self.line)?;
                    self.line.clear();
                    if size == 0 {
                        self.state = State::Trailer;
                    } else {
                        if self.reencode {
                            write!(to, "{size:x}\r\n").map_err(BodyError::Write)?;
                        }
                        self.state = State::Data(size);
                    }
                }
                State::DataEnd => {
                    self.read_line(from)?;
                    if self.line != b"\r\n" {
                        return Err(BodyError::Malformed("chunk data not followed by CRLF"));
                    }
                    self.line.clear();
                    if self.reencode {
                        to.write_all(b"\r\n").map_err(BodyError::Write)?;
                    }
                    self.state = State::SizeLine;
                }
                State::Trailer => {
                    self.read_line(from)?;
                    if !self.line.ends_with(b"\r\n") {
                        return Err(BodyError::Malformed("trailer line not ended by CRLF"));
                    }
                    if self.line != b"\r\n" {
                        self.trailer.append(&mut self.line);
                        if self.trailer.len() > MAX_TRAILER {
                            return Err(BodyError::Malformed("trailer too large"));
                        }
                        continue;
                    }
                    self.line.clear();
                    let fields = trailer_fields(&self.trailer)?;
                    if self.reencode {
                        let mut out = b"0\r\n".to_vec();
                        for (name, value) in fields {
                            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                        }
                        out.extend_from_slice(b"\r\n");
                        to.write_all(&out).map_err(BodyError::Write)?;
                    }
                    self.state = State::Done;
                }
            }
        }
    }

    /// Reads up to and including the next `\n` into `self.line`, keeping
    /// what was read if a read fails (so a later call resumes).
    fn read_line<R: BufRead + ?Sized>(&mut self, from: &mut R) -> Result<(), BodyError> {
        loop {
            let available = match from.fill_buf() {
                Ok([]) => return Err(BodyError::Eof),
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BodyError::Read(e)),
            };
            let (take, found) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            self.line.extend_from_slice(&available[..take]);
            from.consume(take);
            if self.line.len() > MAX_LINE {
                return Err(BodyError::Malformed("chunked framing line too long"));
            }
            if found {
                return Ok(());
            }
        }
    }
}

/// The size on a chunk-size line (with its CRLF). Extensions are allowed
/// and dropped; a bare LF, a sign or anything but hex digits is not.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    // httparse takes an empty size as 0; a size needs a digit.
    if !line.first().is_some_and(u8::is_ascii_hexdigit) {
        return Err(BodyError::Malformed("bad chunk size"));
    }
    match httparse::parse_chunk_size(line) {
        Ok(httparse::Status::Complete((used, size))) if used == line.len() => Ok(size),
        Ok(_) => Err(BodyError::Malformed("chunk size line not ended by CRLF")),
        Err(_) => Err(BodyError::Malformed("bad chunk size")),
    }
}

fn trailer_fields(section: &[u8]) -> Result<Headers, BodyError> {
    if section.is_empty() {
        return Ok(Vec::new());
    }
    let mut block = section.to_vec();
    block.extend_from_slice(b"\r\n");
    let mut slots = vec![httparse::EMPTY_HEADER; header_slots(&block)];
    match httparse::parse_headers(&block, &mut slots) {
        Ok(httparse::Status::Complete((_, raw))) => {
            let fields =
                convert_headers(raw).map_err(|_| BodyError::Malformed("bad trailer field"))?;
            Ok(fields
                .into_iter()
                .filter(|(n, _)| !NOT_IN_TRAILER.iter().any(|x| n.eq_ignore_ascii_case(x)))
                .collect())
        }
        _ => Err(BodyError::Malformed("bad trailer field")),
    }
}

/// Reads a whole chunked body's data, at most `max` bytes of it.
///
/// ```
/// let mut body = &b"3\r\nabc\r\n0\r\n\r\n"[..];
/// assert_eq!(ccr_relay::http::body::read_chunked_body(&mut body, 100).unwrap(), b"abc");
/// ```
pub fn read_chunked_body<R: BufRead>(from: &mut R, max: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = CappedSink::new(max);
    BodyCopier::chunked_data_only().copy(from, &mut out)?;
    Ok(out.into_bytes())
}

/// A body collected up to a cap; writing past it fails.
pub struct CappedSink {
    buf: Vec<u8>,
    max: usize,
}

impl CappedSink {
    /// An empty sink that takes at most `max` bytes.
    pub fn new(max: usize) -> CappedSink {
        CappedSink {
            buf: Vec::new(),
            max,
        }
    }

    /// Bytes taken so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was taken.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What was taken.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

impl Write for CappedSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.max {
            return Err(io::Error::other("body larger than allowed"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_chunked(input: &[u8]) -> Result<(Vec<u8>, usize), BodyError> {
        let mut from = input;
        let mut to = Vec::new();
        BodyCopier::new(BodyFraming::Chunked).copy(&mut from, &mut to)?;
        Ok((to, input.len() - from.len()))
    }

    #[test]
    fn chunked_bodies_come_out_canonical_and_stop_at_the_end() {
        let body =
            b"4;ext=1\r\nWiki\r\n5 \r\npedia\r\n0\r\nX-Sum: 1\r\nContent-Length: 99\r\n\r\nNEXT";
        let (out, used) = copy_chunked(body).unwrap();
        assert_eq!(out, b"4\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Sum: 1\r\n\r\n");
        assert_eq!(&body[used..], b"NEXT");
        for bad in [
            &b"zz\r\n"[..],
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"4\r\nWi",
            b"0\r\nX: y\n\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(
                copy_chunked(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_failed_read_resumes_where_it_stopped() {
        /// Fails once after `at` bytes, then goes on.
        struct Hiccup<'a> {
            data: &'a [u8],
            at: usize,
            failed: bool,
        }
        impl io::Read for Hiccup<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.at == 0 && !self.failed {
                    self.failed = true;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = buf.len().min(self.data.len()).min(if self.failed {
                    usize::MAX
                } else {
                    self.at
                });
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                self.at -= n.min(self.at);
                Ok(n)
            }
        }
        let body = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        for at in 0..body.len() {
            let mut from = io::BufReader::with_capacity(
                3,
                Hiccup {
                    data: body,
                    at,
                    failed: false,
                },
            );
            let mut to = Vec::new();
            let mut copier = BodyCopier::new(BodyFraming::Chunked);
            assert!(
                matches!(copier.copy(&mut from, &mut to), Err(BodyError::Read(_))),
                "at {at}"
            );
            assert_eq!(copier.copy(&mut from, &mut to).unwrap(), 9);
            assert_eq!(to, body, "at {at}");
        }
    }

    #[test]
    fn lengths_and_data_only_decoding() {
        let mut from = &b"helloworld"[..];
        let mut to = Vec::new();
        BodyCopier::new(BodyFraming::Length(5))
            .copy(&mut from, &mut to)
            .unwrap();
        assert_eq!((to.as_slice(), from), (&b"hello"[..], &b"world"[..]));
        assert!(matches!(
            BodyCopier::new(BodyFraming::Length(9)).copy(&mut &b"abc"[..], &mut Vec::new()),
            Err(BodyError::Eof)
        ));
        let mut body = &b"3\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"[..];
        assert_eq!(read_chunked_body(&mut body, 5).unwrap(), b"abcde");
        let mut body = &b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"[..];
        assert!(matches!(
            read_chunked_body(&mut body, 5),
            Err(BodyError::Write(_))
        ));
    }
}
