//! HTTP/1.1 request heads as the development gateway, origin and MITM read
//! them: bounded reading up to the blank line, parsing with `httparse`, and
//! the `host:port` a CONNECT names. The gateway's own code, independent of
//! the relay's parser.

use std::fmt;
use std::io::{self, BufRead};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Most header lines a head may have.
const MAX_HEADERS: usize = 128;

/// Why a head could not be read or parsed.
#[derive(Debug)]
pub enum HeadError {
    /// Not a well-formed HTTP/1.x request head.
    Malformed(String),
    /// Larger than the bound.
    TooLarge,
    /// A read timed out before the blank line.
    Timeout,
    /// The peer closed (or the connection failed) before the blank line.
    Closed(Option<io::Error>),
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::Malformed(why) => write!(f, "malformed request: {why}"),
            HeadError::TooLarge => f.write_str("request head too large"),
            HeadError::Timeout => f.write_str("request head not complete in time"),
            HeadError::Closed(None) => f.write_str("closed before the request was complete"),
            HeadError::Closed(Some(e)) => write!(f, "connection failed: {e}"),
        }
    }
}

impl std::error::Error for HeadError {}

fn malformed(why: impl Into<String>) -> HeadError {
    HeadError::Malformed(why.into())
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// The `x` of `HTTP/1.x`.
    pub minor_version: u8,
    /// Header lines in order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Position just past the first blank line (`\r\n\r\n` or `\n\n`), if any.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    for (i, &b) in buf.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => return Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
            _ => {}
        }
    }
    None
}

/// Parses a complete head (request line, header lines, blank line).
pub fn parse_head(bytes: &[u8]) -> Result<RequestHead, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(malformed("head is incomplete")),
        Err(e) => return Err(malformed(e.to_string())),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(malformed("no request line"));
    };
    let mut out = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| malformed(format!("header {} is not UTF-8", h.name)))?;
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(malformed("control character in a header value"));
        }
        out.push((h.name.to_string(), value.trim().to_string()));
    }
    Ok(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        minor_version: minor,
        headers: out,
    })
}

/// Reads one head from a buffered reader: the bytes up to and including
/// the blank line, at most `max_bytes`. A socket read timeout becomes
/// [`HeadError::Timeout`]; bytes after the head stay in the reader.
pub fn read_head_bytes<R: BufRead>(reader: &mut R, max_bytes: usize) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    loop {
        let available = match reader.fill_buf() {
            Ok([]) => return Err(HeadError::Closed(None)),
            Ok(bytes) => bytes,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Timeout);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HeadError::Closed(Some(e))),
        };
        let old_len = head.len();
        let scan_from = old_len.saturating_sub(3);
        head.extend_from_slice(available);
        if let Some(end) = head_end(&head[scan_from..]).map(|e| e + scan_from) {
            if end > max_bytes {
                return Err(HeadError::TooLarge);
            }
            reader.consume(end - old_len);
            head.truncate(end);
            return Ok(head);
        }
        let taken = head.len() - old_len;
        reader.consume(taken);
        if head.len() >= max_bytes {
            return Err(HeadError::TooLarge);
        }
    }
}

/// A host a CONNECT names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name, lower-cased.
    Name(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ipv4(ip) => write!(f, "{ip}"),
            Host::Ipv6(ip) => write!(f, "[{ip}]"),
        }
    }
}

/// `host:port`, validated; displays as a CONNECT line carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Authority {
    /// Parses `host:port` or `[v6]:port` (the port is required).
    pub fn parse(text: &str) -> Result<Authority, HeadError> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once("]:")
                .ok_or_else(|| malformed("want [IPv6]:PORT"))?;
            let ip = inside
                .parse::<Ipv6Addr>()
                .map_err(|_| malformed("bad IPv6 address"))?;
            (Host::Ipv6(ip), after)
        } else {
            let (host, port) = text
                .rsplit_once(':')
                .ok_or_else(|| malformed("missing port"))?;
            let host = if let Ok(ip) = host.parse::<Ipv4Addr>() {
                Host::Ipv4(ip)
            } else if !host.is_empty()
                && host.len() <= 253
                && !host.starts_with(['.', '-'])
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                Host::Name(host.to_ascii_lowercase())
            } else {
                return Err(malformed("bad host name"));
            };
            (host, port)
        };
        let port =
            if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) {
                port.parse::<u16>().ok().filter(|&p| p != 0)
            } else {
                None
            };
        let port = port.ok_or_else(|| malformed("bad port"))?;
        Ok(Authority { host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_authorities_validate() {
        let h = parse_head(b"CONNECT a.test:443 HTTP/1.1\r\nX-A:  1 \r\nx-b: 2\r\n\r\n").unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str()),
            ("CONNECT", "a.test:443")
        );
        assert_eq!(h.minor_version, 1);
        assert_eq!(h.header("x-a"), Some("1"));
        assert_eq!(h.header("X-B"), Some("2"));
        assert!(parse_head(b"GET / HTTP/2\r\n\r\n").is_err());
        assert!(parse_head(b"GET /\r\n\r\n").is_err());
        assert_eq!(head_end(b"a\r\n\r\nb"), Some(5));
        assert_eq!(head_end(b"a\n\nb"), Some(3));
        assert_eq!(head_end(b"a\r\n"), None);
        let mut r = io::BufReader::new(&b"GET / HTTP/1.1\r\n\r\nrest"[..]);
        assert_eq!(
            read_head_bytes(&mut r, 100).unwrap(),
            b"GET / HTTP/1.1\r\n\r\n"
        );
        assert_eq!(r.buffer(), b"rest");
        let mut r = io::BufReader::new(&b"GET / HTTP/1.1\r\nX: yyyyyyyy\r\n\r\n"[..]);
        assert!(matches!(
            read_head_bytes(&mut r, 20),
            Err(HeadError::TooLarge)
        ));

        let a = Authority::parse("Origin.Test:443").unwrap();
        assert_eq!(a.to_string(), "origin.test:443");
        assert_eq!(
            Authority::parse("[::1]:8443").unwrap().to_string(),
            "[::1]:8443"
        );
        assert_eq!(
            Authority::parse("127.0.0.1:80").unwrap().host,
            Host::Ipv4(Ipv4Addr::LOCALHOST)
        );
        for bad in [
            "a.test",
            "a.test:0",
            "a.test:65536",
            "a b:1",
            ":1",
            "[::1]",
            "a:+1",
        ] {
            assert!(Authority::parse(bad).is_err(), "{bad}");
        }
    }
}
