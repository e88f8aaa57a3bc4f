//! Reading and parsing what a client sends the proxy: the request head up to
//! the blank line, bounded in size and time, and the target it names.
//!
//! Parsing is strict on purpose: the relay rebuilds the line it sends the
//! gateway from the parsed [`Authority`], so nothing a client writes is ever
//! forwarded as it was (no header injection).

use std::fmt;
use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::http::host::is_dns_name;

/// Why a client's request cannot be served; each maps to one answer.
#[derive(Debug)]
pub enum HeadError {
    /// The request line or a header line is not HTTP/1.x (400).
    Malformed(&'static str),
    /// A method the relay does not proxy (405).
    MethodNotAllowed(String),
    /// The head grew past the size bound (431).
    TooLarge,
    /// The head was not complete within the time bound (408).
    Timeout,
    /// The client closed or broke the connection before the blank line:
    /// nobody is left to answer.
    Closed(Option<io::Error>),
    /// The client began a TLS handshake (`HTTPS_PROXY=https://…`): an
    /// HTTP answer would not be read, so none is given.
    TlsHandshake,
}

impl HeadError {
    /// The status line and reason the relay answers with, if any.
    pub fn status(&self) -> Option<(u16, &'static str)> {
        match self {
            HeadError::Malformed(_) => Some((400, "Bad Request")),
            HeadError::MethodNotAllowed(_) => Some((405, "Method Not Allowed")),
            HeadError::TooLarge => Some((431, "Request Header Fields Too Large")),
            HeadError::Timeout => Some((408, "Request Timeout")),
            HeadError::Closed(_) | HeadError::TlsHandshake => None,
        }
    }
}

impl From<crate::http::http1::Http1Error> for HeadError {
    fn from(e: crate::http::http1::Http1Error) -> HeadError {
        use crate::http::http1::Http1Error::*;
        match e {
            Malformed(why) | Ambiguous(why) | Unsupported(why) => HeadError::Malformed(why),
        }
    }
}

impl std::error::Error for HeadError {}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::Malformed(why) => write!(f, "malformed request: {why}"),
            HeadError::MethodNotAllowed(m) => write!(f, "method {m:?} is not proxied"),
            HeadError::TooLarge => f.write_str("request head too large"),
            HeadError::Timeout => f.write_str("request head not complete in time"),
            HeadError::Closed(None) => f.write_str("client closed before the request was complete"),
            HeadError::Closed(Some(e)) => write!(f, "client connection failed: {e}"),
            HeadError::TlsHandshake => f.write_str(
                "a client sent a TLS handshake to the proxy port: HTTPS_PROXY must be an http:// URL, not https://",
            ),
        }
    }
}

/// A host the relay may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name ([`crate::http::host`]'s rule; one trailing dot kept).
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

/// `host:port`, validated; displays in the form a CONNECT line carries.
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
    /// Parses `host:port`, `[v6]:port`, or, when `default_port` is given,
    /// a host alone.
    ///
    /// ```
    /// use ccr_relay::http::request_head::{Authority, Host};
    /// let a = Authority::parse("[::1]:8443", None).unwrap();
    /// assert_eq!(a.to_string(), "[::1]:8443");
    /// assert!(Authority::parse("example.com", None).is_err());
    /// assert_eq!(Authority::parse("example.com", Some(80)).unwrap().port, 80);
    /// ```
    pub fn parse(text: &str, default_port: Option<u16>) -> Result<Authority, HeadError> {
        let (host_text, port_text) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or(HeadError::Malformed("unclosed [ in host"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or(HeadError::Malformed("junk after ]"))?,
                ),
            };
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| HeadError::Malformed("bad IPv6 address"))?;
            return Self::finish(Host::Ipv6(ip), port, default_port);
        } else {
            match text.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (text, None),
            }
        };
        let host = if let Ok(ip) = host_text.parse::<Ipv4Addr>() {
            Host::Ipv4(ip)
        } else if is_host_name(host_text) {
            Host::Name(host_text.to_ascii_lowercase())
        } else {
            return Err(HeadError::Malformed("bad host name"));
        };
        Self::finish(host, port_text, default_port)
    }

    fn finish(
        host: Host,
        port: Option<&str>,
        default_port: Option<u16>,
    ) -> Result<Authority, HeadError> {
        let port = match port {
            Some(p) => parse_port(p)?,
            None => default_port.ok_or(HeadError::Malformed("missing port"))?,
        };
        Ok(Authority { host, port })
    }
}

fn parse_port(text: &str) -> Result<u16, HeadError> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeadError::Malformed("bad port"));
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(HeadError::Malformed("bad port")),
        Ok(port) => Ok(port),
    }
}

/// A host name by [`is_dns_name`], or its absolute form with one trailing
/// dot (`example.com.`), which clients may send.
fn is_host_name(text: &str) -> bool {
    is_dns_name(text.strip_suffix('.').unwrap_or(text))
}

pub use crate::http::http1::RequestHead;

/// Methods the relay forwards as plain HTTP (absolute-form requests).
pub const FORWARDED_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// What the client asks the proxy for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequest {
    /// `CONNECT host:port`: a raw tunnel.
    Connect(Authority),
    /// `GET http://host[:port]/path`: a plain HTTP request to forward.
    Forward {
        authority: Authority,
        /// The target in origin form: path and query, at least `/`.
        path: String,
    },
}

impl ProxyRequest {
    /// Classifies a parsed head: CONNECT with an authority is a tunnel, a
    /// forwarded method with an absolute `http://` URL is plain HTTP; other
    /// methods are refused with 405 and other targets with 400.
    ///
    /// ```
    /// use ccr_relay::http::request_head::{parse_head, ProxyRequest};
    /// let head = parse_head(b"GET http://origin.test/a?b HTTP/1.1\r\n\r\n").unwrap();
    /// let ProxyRequest::Forward { authority, path } = ProxyRequest::from_head(&head).unwrap() else {
    ///     panic!()
    /// };
    /// assert_eq!((authority.to_string(), path.as_str()), ("origin.test:80".into(), "/a?b"));
    /// ```
    pub fn from_head(head: &RequestHead) -> Result<ProxyRequest, HeadError> {
        if head.method == "CONNECT" {
            return Authority::parse(&head.target, None).map(ProxyRequest::Connect);
        }
        if !FORWARDED_METHODS.contains(&head.method.as_str()) {
            return Err(HeadError::MethodNotAllowed(head.method.clone()));
        }
        let Some(rest) = strip_prefix_ignore_case(&head.target, "http://") else {
            return Err(HeadError::Malformed(
                "a proxy request needs CONNECT or an absolute http:// URL",
            ));
        };
        // A fragment is the user agent's own business (RFC 9110 4.2.4) and
        // no client sends one: where it ends the authority is a guess.
        if rest.contains('#') {
            return Err(HeadError::Malformed(
                "a fragment (#...) in the request target; clients never send one",
            ));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err(HeadError::Malformed(
                "credentials in the URL are not forwarded",
            ));
        }
        let authority = Authority::parse(authority, Some(80))?;
        Ok(ProxyRequest::Forward { authority, path })
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Position just past the first blank line (`\r\n\r\n` or `\n\n`), if any.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Parses a complete head (request line, header lines, blank line), as
/// [`read_head_bytes`] returns it.
pub fn parse_head(bytes: &[u8]) -> Result<RequestHead, HeadError> {
    match crate::http::http1::parse_request_head(bytes) {
        Ok(Some((head, _))) => Ok(head),
        Ok(None) => Err(HeadError::Malformed("request head is incomplete")),
        Err(e) => Err(HeadError::from(e)),
    }
}

/// Reads one head (request or response) from a buffered reader: the bytes
/// up to and including the blank line, at most `max_bytes`. A read timeout
/// set on the socket underneath becomes [`HeadError::Timeout`].
pub fn read_head_bytes<R: std::io::BufRead>(
    reader: &mut R,
    max_bytes: usize,
) -> Result<Vec<u8>, HeadError> {
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
        let rescan_from = old_len.saturating_sub(3);
        head.extend_from_slice(available);
        if let Some(end) = head_end(&head[rescan_from..]).map(|e| e + rescan_from) {
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

/// Reads a request head from the client, at most `max_bytes` long and
/// complete within `timeout`. Returns the head and the bytes that came
/// after the blank line (often the start of a TLS ClientHello).
pub fn read_head(
    client: &TcpStream,
    max_bytes: usize,
    timeout: Duration,
) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let deadline = DeadlineReader {
        socket: client,
        deadline: Instant::now() + timeout,
    };
    let mut reader = io::BufReader::with_capacity(2048, deadline);
    // 0x16 opens a TLS record (a ClientHello); no HTTP method starts so.
    // A failed first read is left for `read_head_bytes` to report.
    if let Ok([0x16, ..]) = io::BufRead::fill_buf(&mut reader) {
        return Err(HeadError::TlsHandshake);
    }
    let bytes = read_head_bytes(&mut reader, max_bytes)?;
    let head = parse_head(&bytes)?;
    Ok((head, reader.buffer().to_vec()))
}

/// Reads from a socket with one deadline for all reads together, so a
/// client trickling a byte at a time cannot stretch it. Waits with `poll`,
/// so the socket's own mode is left as it was.
struct DeadlineReader<'a> {
    socket: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        if !crate::sys::socket::wait_ready(self.socket.as_raw_fd(), libc::POLLIN, Some(left))? {
            return Err(io::ErrorKind::TimedOut.into());
        }
        (&*self.socket).read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<RequestHead, HeadError> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn parses_connect() {
        let h = head(
            "CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\nUser-Agent: x\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.method, "CONNECT");
        assert_eq!(h.header("host"), Some("origin.test:443"));
        assert_eq!(
            ProxyRequest::from_head(&h).unwrap(),
            ProxyRequest::Connect(Authority {
                host: Host::Name("origin.test".into()),
                port: 443
            })
        );
    }

    #[test]
    fn authorities_of_each_form() {
        let v4 = Authority::parse("10.1.2.3:80", None).unwrap();
        assert_eq!(v4.host, Host::Ipv4(Ipv4Addr::new(10, 1, 2, 3)));
        let v6 = Authority::parse("[2001:db8::1]:443", None).unwrap();
        assert_eq!(v6.to_string(), "[2001:db8::1]:443");
        assert_eq!(
            Authority::parse("Example.COM:8080", None)
                .unwrap()
                .to_string(),
            "example.com:8080"
        );
        for bad in [
            "example.com",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:+80",
            "exa mple.com:80",
            "user@example.com:80",
            "example.com/x:80",
            "[::1:443",
            "[::1]x443",
            "[nothex]:443",
            ":443",
            "-a.com:443",
            "a.com:443\r\nX-Injected: 1",
            "a..b:443",
            "a.b..:443",
            ".:443",
        ] {
            assert!(Authority::parse(bad, None).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn host_names_follow_the_dns_rule() {
        let label63 = "a".repeat(63);
        for good in [
            format!("{label63}.test:443"),
            "_svc.a-b.test.:443".to_string(),
        ] {
            assert!(Authority::parse(&good, None).is_ok(), "{good:?} refused");
        }
        // A label may not end with `-` (the old rule let it through).
        for bad in [
            "a-.test:443",
            "a.test-:443",
            &format!("{label63}a.test:443"),
        ] {
            assert!(Authority::parse(bad, None).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn malformed_request_lines_are_400() {
        for bad in [
            "CONNECT\r\n\r\n",
            "CONNECT a.com:443\r\n\r\n",
            "CONNECT a.com:443 HTTP/2.0\r\n\r\n",
            "CONNECT  a.com:443 HTTP/1.1\r\n\r\n",
            "CONNECT a.com:443 HTTP/1.1 extra\r\n\r\n",
            "connect a.com:443 HTTP/1.1\r\n\r\n",
            "CONNECT a.com:443 HTTP/1.1\r\nNoColon\r\n\r\n",
            "CONNECT a.com:443 HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "\r\n\r\n",
        ] {
            let err = head(bad)
                .and_then(|h| ProxyRequest::from_head(&h))
                .unwrap_err();
            assert_eq!(err.status(), Some((400, "Bad Request")), "{bad:?}");
        }
    }

    #[test]
    fn other_methods_are_405() {
        for line in [
            "TRACE http://a.test/ HTTP/1.1",
            "BREW http://pot.test/ HTTP/1.1",
            "PRI * HTTP/1.1",
        ] {
            let h = head(&format!("{line}\r\n\r\n")).unwrap();
            let err = ProxyRequest::from_head(&h).unwrap_err();
            assert_eq!(err.status(), Some((405, "Method Not Allowed")), "{line}");
        }
    }

    #[test]
    fn absolute_form_is_forwarded_and_origin_form_is_400() {
        for (target, authority, path) in [
            ("http://origin.test/x/y?z=1", "origin.test:80", "/x/y?z=1"),
            ("http://origin.test:8080", "origin.test:8080", "/"),
            ("HTTP://Origin.Test?q", "origin.test:80", "/?q"),
            ("http://[::1]:82/", "[::1]:82", "/"),
        ] {
            let h = head(&format!("POST {target} HTTP/1.1\r\n\r\n")).unwrap();
            assert_eq!(
                ProxyRequest::from_head(&h).unwrap(),
                ProxyRequest::Forward {
                    authority: Authority::parse(authority, None).unwrap(),
                    path: path.to_string()
                },
                "{target}"
            );
        }
        for target in [
            "/",
            "/x",
            "https://origin.test/",
            "http://u:p@origin.test/",
            "http://bad host/",
            "http://origin..test/",
            "http://.origin.test/",
            "http://origin.test../",
            "http://127.0.0.1:81/a#frag",
            "http://127.0.0.1:18999#f",
            "http://a.test#@b.test/",
        ] {
            // A space inside the target already breaks the request line.
            let err = head(&format!("GET {target} HTTP/1.1\r\n\r\n"))
                .and_then(|h| ProxyRequest::from_head(&h))
                .unwrap_err();
            assert_eq!(err.status(), Some((400, "Bad Request")), "{target}");
            if target.contains('#') {
                assert!(err.to_string().contains("fragment"), "{target}: {err}");
            }
        }
    }

    #[test]
    fn reads_heads_from_a_buffered_stream_one_at_a_time() {
        let mut r = std::io::BufReader::with_capacity(
            7,
            &b"GET / HTTP/1.1\r\nA: b\r\n\r\nbodyHTTP/1.1 200 OK\r\n\r\n"[..],
        );
        assert_eq!(
            read_head_bytes(&mut r, 1024).unwrap(),
            b"GET / HTTP/1.1\r\nA: b\r\n\r\n"
        );
        let mut body = [0u8; 4];
        std::io::Read::read_exact(&mut r, &mut body).unwrap();
        assert_eq!(&body, b"body");
        assert_eq!(
            read_head_bytes(&mut r, 1024).unwrap(),
            b"HTTP/1.1 200 OK\r\n\r\n"
        );
        assert!(matches!(
            read_head_bytes(&mut r, 1024),
            Err(HeadError::Closed(None))
        ));
        let mut big = std::io::BufReader::new(&[b'a'; 100][..]);
        assert!(matches!(
            read_head_bytes(&mut big, 50),
            Err(HeadError::TooLarge)
        ));
    }

    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn bytes_after_the_blank_line_are_kept_in_order() {
        let (mut client, server) = socket_pair();
        std::io::Write::write_all(
            &mut client,
            b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n\x16\x03\x01hello",
        )
        .unwrap();
        let (head, rest) = read_head(&server, 8192, Duration::from_secs(5)).unwrap();
        assert_eq!(head.target, "a.test:443");
        assert_eq!(rest, b"\x16\x03\x01hello");
    }

    #[test]
    fn a_trickled_head_still_meets_one_deadline() {
        // Each byte comes well within any per-read timeout, for far longer
        // than the head timeout: only one deadline for the whole head ends it.
        let (mut client, server) = socket_pair();
        let writer = std::thread::spawn(move || {
            let line = b"CONNECT a.test:443 HTTP/1.1\r\nX-Slow: ";
            for b in line.iter().chain(std::iter::repeat_n(&b'a', 1000)) {
                if std::io::Write::write_all(&mut client, &[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let started = Instant::now();
        let err = read_head(&server, 8192, Duration::from_millis(300)).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, HeadError::Timeout), "{err}");
        // The trickle lasts 20 s; a per-read timeout would never fire.
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(10),
            "{took:?}"
        );
        drop(server);
        writer.join().unwrap();
    }

    #[test]
    fn heads_over_the_bound_are_refused() {
        let (mut client, server) = socket_pair();
        let mut big = b"CONNECT a.test:443 HTTP/1.1\r\n".to_vec();
        big.extend(
            std::iter::repeat_n(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n".as_slice(), 400).flatten(),
        );
        std::thread::spawn(move || std::io::Write::write_all(&mut client, &big));
        let err = read_head(&server, 8192, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.status(), Some((431, "Request Header Fields Too Large")));
    }

    #[test]
    fn finds_the_blank_line_in_both_forms() {
        assert_eq!(head_end(b"A\r\n\r\nrest"), Some(5));
        assert_eq!(head_end(b"A\n\nrest"), Some(3));
        assert_eq!(head_end(b"A\r\nB: c\r\n"), None);
    }
}
