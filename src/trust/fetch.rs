//! The fetch of the gateway's CA certificate: `GET {base}/v1/code/upstreamproxy/ca-cert`
//! over `http://` or `https://` with a small HTTP/1.1 client whose whole
//! exchange (connect, TLS, request, every byte of the answer) runs under one
//! deadline, its answer capped in size. No credentials are sent: the
//! endpoint is public.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::TrustError;
use super::pem::{extract_certificates, find};
use crate::gateway::{CA_CERT_PATH, Endpoint, GatewayError, GatewayStream};

/// Default bound on the gateway's answer: 1 MiB (a CA certificate is ~1 KiB).
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// Bound on the answer's status line and headers.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Bound on one chunk-size or trailer line of a chunked body.
const MAX_LINE_BYTES: usize = 4 * 1024;
/// Characters of an unexpected answer quoted in [`TrustError::NoCertificate`].
const PREVIEW_CHARS: usize = 24;

/// The first characters of an unexpected answer, printable ASCII only.
fn preview(body: &[u8]) -> String {
    let trimmed = body.trim_ascii_start();
    let mut text: String = trimmed
        .iter()
        .take(PREVIEW_CHARS)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    if trimmed.len() > PREVIEW_CHARS {
        text.push_str("...");
    }
    text
}

/// Fetches `GET {base}/v1/code/upstreamproxy/ca-cert` over `http://` or
/// `https://` and returns the certificates in the answer. Connect, TLS,
/// request and the whole body finish within `timeout`; a body over
/// `max_bytes` is refused. No credentials are sent: the endpoint is public.
pub fn fetch_gateway_ca(
    endpoint: &Endpoint,
    tls: &native_tls::TlsConnector,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<String>, TrustError> {
    let now = Instant::now();
    let deadline = now
        .checked_add(timeout)
        .unwrap_or(now + Duration::from_secs(3600));
    let request = request_text(endpoint)?;
    let tcp = endpoint
        .connect_tcp(deadline)
        .map_err(|e| from_gateway_error(e, timeout))?;
    let stream = if endpoint.tls {
        GatewayStream::Tls(Box::new(tls_handshake(
            tls,
            &endpoint.host,
            tcp,
            deadline,
            timeout,
        )?))
    } else {
        GatewayStream::Plain(tcp)
    };
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        deadline,
        timeout,
    };
    conn.send(request.as_bytes())?;
    let head = conn.read_head()?;
    if head.status != 200 {
        return Err(TrustError::Status {
            code: head.status,
            reason: head.reason,
        });
    }
    let body = conn.read_body(&head, max_bytes)?;
    let certs = extract_certificates(&body);
    if certs.is_empty() {
        return Err(TrustError::NoCertificate {
            len: body.len(),
            start: preview(&body),
        });
    }
    Ok(certs)
}

fn request_text(endpoint: &Endpoint) -> Result<String, TrustError> {
    let target = format!("{}{CA_CERT_PATH}", endpoint.prefix);
    let default_port = if endpoint.tls { 443 } else { 80 };
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    let host = if endpoint.port == default_port {
        host
    } else {
        format!("{host}:{}", endpoint.port)
    };
    let clean = |s: &str| s.bytes().all(|b| b > 0x20 && b < 0x7f);
    if !clean(&target) || !clean(&host) {
        return Err(TrustError::BadUrl(
            "its host or path holds spaces or control characters".into(),
        ));
    }
    Ok(format!(
        "GET {target} HTTP/1.1\r\n\
         Host: {host}\r\n\
         User-Agent: ccr-relay/{}\r\n\
         Accept: application/x-pem-file, */*\r\n\
         Accept-Encoding: identity\r\n\
         Connection: close\r\n\
         \r\n",
        env!("CARGO_PKG_VERSION")
    ))
}

fn from_gateway_error(e: GatewayError, timeout: Duration) -> TrustError {
    match e {
        GatewayError::Timeout => TrustError::Timeout(timeout),
        GatewayError::Unreachable(e) => TrustError::Unreachable(e),
        GatewayError::Tls(e) => TrustError::Tls(e),
        other => TrustError::Unreachable(io::Error::other(other.to_string())),
    }
}

fn remaining(deadline: Instant, timeout: Duration) -> Result<Duration, TrustError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(TrustError::Timeout(timeout))
    } else {
        Ok(left)
    }
}

fn set_timeouts(tcp: &TcpStream, left: Duration) -> Result<(), TrustError> {
    tcp.set_read_timeout(Some(left))
        .and_then(|_| tcp.set_write_timeout(Some(left)))
        .map_err(TrustError::Io)
}

fn tls_handshake(
    tls: &native_tls::TlsConnector,
    host: &str,
    tcp: TcpStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<native_tls::TlsStream<TcpStream>, TrustError> {
    set_timeouts(&tcp, remaining(deadline, timeout)?)?;
    let mut attempt = tls.connect(host, tcp);
    loop {
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(native_tls::HandshakeError::Failure(e)) => {
                return Err(TrustError::Tls(e.to_string()));
            }
            Err(native_tls::HandshakeError::WouldBlock(mid)) => {
                // A socket timeout fired mid-handshake: go on if time is left.
                set_timeouts(mid.get_ref(), remaining(deadline, timeout)?)?;
                attempt = mid.handshake();
            }
        }
    }
}

// TODO(http1): the response head below (Head, head_end, parse_head and
// Conn::read_head) is parsed by hand; switch it to the shared HTTP/1 module.

/// The answer's status and how its body is framed.
#[derive(Debug)]
struct Head {
    status: u16,
    reason: String,
    content_length: Option<usize>,
    chunked: bool,
}

/// One connection to the gateway, read through a buffer, every I/O bounded
/// by what is left of the deadline.
struct Conn {
    stream: GatewayStream,
    buf: Vec<u8>,
    deadline: Instant,
    timeout: Duration,
}

impl Conn {
    fn io_error(&self, e: io::Error) -> TrustError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                TrustError::Timeout(self.timeout)
            }
            _ => TrustError::Io(e),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), TrustError> {
        let left = remaining(self.deadline, self.timeout)?;
        set_timeouts(self.stream.tcp(), left)?;
        let sent = self
            .stream
            .write_all(bytes)
            .and_then(|_| self.stream.flush());
        sent.map_err(|e| self.io_error(e))
    }

    /// Reads more into the buffer; 0 at end of stream.
    fn fill(&mut self) -> Result<usize, TrustError> {
        let mut chunk = [0u8; 8192];
        loop {
            let left = remaining(self.deadline, self.timeout)?;
            set_timeouts(self.stream.tcp(), left)?;
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    /// Reads the answer's head, skipping interim `1xx` answers.
    fn read_head(&mut self) -> Result<Head, TrustError> {
        loop {
            let head = loop {
                if let Some(end) = head_end(&self.buf) {
                    let head: Vec<u8> = self.buf.drain(..end).collect();
                    break head;
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    return Err(TrustError::Malformed(format!(
                        "response head larger than {MAX_HEAD_BYTES} bytes"
                    )));
                }
                if self.fill()? == 0 {
                    return Err(TrustError::Malformed(if self.buf.is_empty() {
                        "the gateway closed the connection without answering".into()
                    } else {
                        "the connection closed in the middle of the response head".into()
                    }));
                }
            };
            let head = parse_head(&head)?;
            if (100..200).contains(&head.status) && head.status != 101 {
                continue;
            }
            return Ok(head);
        }
    }

    fn read_body(&mut self, head: &Head, max: usize) -> Result<Vec<u8>, TrustError> {
        if head.chunked {
            self.read_chunked(max)
        } else if let Some(len) = head.content_length {
            if len > max {
                return Err(TrustError::TooLarge { max });
            }
            self.read_exact(len)
        } else {
            while self.buf.len() <= max {
                if self.fill()? == 0 {
                    return Ok(std::mem::take(&mut self.buf));
                }
            }
            Err(TrustError::TooLarge { max })
        }
    }

    fn read_exact(&mut self, len: usize) -> Result<Vec<u8>, TrustError> {
        while self.buf.len() < len {
            if self.fill()? == 0 {
                return Err(TrustError::Malformed(format!(
                    "the connection closed after {} of {len} body bytes",
                    self.buf.len()
                )));
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    /// One line without its `\r\n` or `\n`.
    fn read_line(&mut self) -> Result<Vec<u8>, TrustError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(TrustError::Malformed("chunk line too long".into()));
            }
            if self.fill()? == 0 {
                return Err(TrustError::Malformed(
                    "the connection closed in the middle of a chunked body".into(),
                ));
            }
        }
    }

    fn read_chunked(&mut self, max: usize) -> Result<Vec<u8>, TrustError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_text = String::from_utf8_lossy(&line);
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = if size_text.is_empty() || size_text.len() > 15 {
                None
            } else {
                usize::from_str_radix(size_text, 16).ok()
            }
            .ok_or_else(|| TrustError::Malformed("bad chunk size".into()))?;
            if size == 0 {
                // Trailers up to the blank line; a close right here is tolerated.
                while !self.buf.is_empty() || self.fill()? > 0 {
                    if self.read_line()?.is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            if body.len().saturating_add(size) > max {
                return Err(TrustError::TooLarge { max });
            }
            body.extend(self.read_exact(size)?);
            if !self.read_line()?.is_empty() {
                return Err(TrustError::Malformed("chunk not followed by CRLF".into()));
            }
        }
    }
}

// TODO(http1): to be replaced by the shared HTTP/1 head parser.
/// Where the head ends (after its blank line), accepting bare `\n`.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = find(buf, b"\r\n\r\n").map(|i| i + 4);
    let lf = find(buf, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn printable(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn parse_head(head: &[u8]) -> Result<Head, TrustError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    let reason = parts.next().unwrap_or("").trim();
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(TrustError::Malformed(format!(
            "status line '{}'",
            printable(status_line, 40)
        )));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| TrustError::Malformed("bad status code".into()))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                value.parse::<usize>().ok()
            } else {
                None
            }
            .ok_or_else(|| TrustError::Malformed("bad Content-Length".into()))?;
            if content_length.is_some_and(|old| old != len) {
                return Err(TrustError::Malformed("conflicting Content-Length".into()));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if coding.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if !coding.eq_ignore_ascii_case("identity") {
                    return Err(TrustError::Malformed(format!(
                        "unsupported Transfer-Encoding '{}'",
                        printable(coding, 20)
                    )));
                }
            }
        } else if name.eq_ignore_ascii_case("content-encoding")
            && !value.is_empty()
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(TrustError::Malformed(format!(
                "compressed answer (Content-Encoding '{}')",
                printable(value, 20)
            )));
        }
    }
    Ok(Head {
        status,
        reason: printable(reason, 60),
        content_length,
        chunked,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::OnceLock;
    use std::thread::{self, JoinHandle};

    use crate::test_support::{TestCert, self_signed};

    struct Pki {
        /// Self-signed, SAN IP:127.0.0.1 and DNS:localhost.
        cert_a: String,
        key_a: String,
        cert_b: String,
    }

    fn pki() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| {
            let TestCert {
                pem: cert_a,
                key: key_a,
            } = self_signed("test-a");
            let cert_b = self_signed("test-b").pem;
            Pki {
                cert_a,
                key_a,
                cert_b,
            }
        })
    }

    pub(crate) fn connector() -> native_tls::TlsConnector {
        native_tls::TlsConnector::new().unwrap()
    }

    #[test]
    fn preview_is_short_and_printable() {
        assert_eq!(preview(b"  <html>"), "<html>");
        assert_eq!(preview(b"a\x00b\nc"), "a.b.c");
        let long = preview(&[b'x'; 100]);
        assert_eq!(long, format!("{}...", "x".repeat(PREVIEW_CHARS)));
    }

    // -- fetch against a local server ---------------------------------------

    /// Reads a request head from `stream`; returns it as text.
    fn read_request(stream: &TcpStream) -> String {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = io::BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        head
    }

    /// A one-shot server that answers the request with `answer`, then closes.
    pub(crate) fn serve(answer: Vec<u8>) -> (Endpoint, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let request = read_request(&stream);
            let _ = stream.write_all(&answer);
            request
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}/pre")).unwrap();
        (endpoint, handle)
    }

    fn fetch(endpoint: &Endpoint) -> Result<Vec<String>, TrustError> {
        fetch_gateway_ca(endpoint, &connector(), Duration::from_secs(5), 64 * 1024)
    }

    pub(crate) fn answer(head: &str, body: &[u8]) -> Vec<u8> {
        let mut bytes = head.replace('\n', "\r\n").into_bytes();
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn fetch_200_with_a_certificate() {
        let p = pki();
        let body = format!("{}\n", p.cert_a);
        let (endpoint, server) = serve(answer(
            &format!(
                "HTTP/1.1 200 OK\nContent-Type: application/x-pem-file\nContent-Length: {}\n",
                body.len()
            ),
            body.as_bytes(),
        ));
        assert_eq!(fetch(&endpoint).unwrap(), vec![p.cert_a.clone()]);
        let request = server.join().unwrap();
        let port = endpoint.port;
        assert!(
            request.starts_with("GET /pre/v1/code/upstreamproxy/ca-cert HTTP/1.1\r\n"),
            "{request}"
        );
        for header in [
            format!("Host: 127.0.0.1:{port}\r\n"),
            "Connection: close\r\n".to_string(),
            "Accept: application/x-pem-file, */*\r\n".to_string(),
            format!("User-Agent: ccr-relay/{}\r\n", env!("CARGO_PKG_VERSION")),
        ] {
            assert!(
                request.contains(&header),
                "{header:?} missing from {request}"
            );
        }
        assert!(!request.to_ascii_lowercase().contains("authorization"));
    }

    #[test]
    fn fetch_status_not_200() {
        let (endpoint, _server) = serve(answer(
            "HTTP/1.1 404 Not Found\nContent-Length: 9\n",
            b"not found",
        ));
        let err = fetch(&endpoint).unwrap_err();
        assert!(
            matches!(err, TrustError::Status { code: 404, ref reason } if reason == "Not Found"),
            "{err}"
        );
        assert!(err.to_string().contains("HTTP 404 Not Found"), "{err}");
    }

    #[test]
    fn fetch_skips_100_continue() {
        let p = pki();
        let mut bytes = answer("HTTP/1.1 100 Continue\n", b"");
        bytes.extend(answer("HTTP/1.1 200 OK\n", p.cert_a.as_bytes()));
        let (endpoint, _server) = serve(bytes);
        assert_eq!(fetch(&endpoint).unwrap().len(), 1);
    }

    #[test]
    fn fetch_html_json_and_empty_bodies() {
        let html = b"<html><head><title>Login</title></head></html>".to_vec();
        let (endpoint, _s) = serve(answer(
            &format!("HTTP/1.1 200 OK\nContent-Length: {}\n", html.len()),
            &html,
        ));
        let err = fetch(&endpoint).unwrap_err();
        assert!(
            matches!(err, TrustError::NoCertificate { len, .. } if len == html.len()),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("answer of {} bytes holds no PEM certificate (starts with '<html><head><title>Login...')", html.len())),
            "{text}"
        );

        let json = br#"{"type":"error","error":{"type":"not_found_error"}}"#;
        let (endpoint, _s) = serve(answer("HTTP/1.1 200 OK\n", json));
        let err = fetch(&endpoint).unwrap_err();
        assert!(matches!(err, TrustError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("starts with '{\"type\""), "{err}");

        let (endpoint, _s) = serve(answer("HTTP/1.1 200 OK\nContent-Length: 0\n", b""));
        let err = fetch(&endpoint).unwrap_err();
        assert!(
            matches!(err, TrustError::NoCertificate { len: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn fetch_chunked_body() {
        let p = pki();
        let body = format!("junk\n{}{}", p.cert_a, p.cert_b);
        let mut chunked = Vec::new();
        for (i, piece) in body.as_bytes().chunks(100).enumerate() {
            if i == 1 {
                chunked.extend(format!("{:X};ext=1\r\n", piece.len()).bytes());
            } else {
                chunked.extend(format!("{:x}\r\n", piece.len()).bytes());
            }
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
        let (endpoint, _s) = serve(answer(
            "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nContent-Length: 3\n",
            &chunked,
        ));
        assert_eq!(
            fetch(&endpoint).unwrap(),
            vec![p.cert_a.clone(), p.cert_b.clone()]
        );
    }

    #[test]
    fn fetch_body_read_to_eof() {
        let p = pki();
        let (endpoint, _s) = serve(answer("HTTP/1.0 200 OK\n", p.cert_b.as_bytes()));
        assert_eq!(fetch(&endpoint).unwrap(), vec![p.cert_b.clone()]);
    }

    #[test]
    fn fetch_truncated_and_malformed_answers() {
        let (endpoint, _s) = serve(answer("HTTP/1.1 200 OK\nContent-Length: 500\n", b"short"));
        let err = fetch(&endpoint).unwrap_err();
        assert!(matches!(err, TrustError::Malformed(_)), "{err}");

        let (endpoint, _s) = serve(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec());
        let err = fetch(&endpoint).unwrap_err();
        assert!(matches!(err, TrustError::Malformed(_)), "{err}");

        let (endpoint, _s) = serve(Vec::new());
        let err = fetch(&endpoint).unwrap_err();
        assert!(matches!(err, TrustError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("without answering"), "{err}");
    }

    #[test]
    fn fetch_refuses_large_bodies() {
        let max = 64 * 1024;
        let big = vec![b'A'; max + 1];
        // Declared too large: refused before reading.
        let (endpoint, _s) = serve(answer(
            &format!("HTTP/1.1 200 OK\nContent-Length: {}\n", big.len()),
            &big,
        ));
        assert!(matches!(fetch(&endpoint), Err(TrustError::TooLarge { max: m }) if m == max));
        // Read to end of stream.
        let (endpoint, _s) = serve(answer("HTTP/1.1 200 OK\n", &big));
        assert!(matches!(fetch(&endpoint), Err(TrustError::TooLarge { .. })));
        // Chunked.
        let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
        chunked.extend_from_slice(&big);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let (endpoint, _s) = serve(answer(
            "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n",
            &chunked,
        ));
        assert!(matches!(fetch(&endpoint), Err(TrustError::TooLarge { .. })));
    }

    #[test]
    fn fetch_times_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // Never answer; wait for the client to give up and close.
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let started = Instant::now();
        let err = fetch_gateway_ca(
            &endpoint,
            &connector(),
            Duration::from_millis(500),
            DEFAULT_MAX_BYTES,
        )
        .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, TrustError::Timeout(_)), "{err}");
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        assert!(err.to_string().contains("500 ms"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn fetch_deadline_covers_a_trickling_body() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_request(&stream);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
            // One byte every 50 ms: each read succeeds, the whole never ends.
            for _ in 0..100 {
                if stream.write_all(b"A").is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let started = Instant::now();
        let err = fetch_gateway_ca(
            &endpoint,
            &connector(),
            Duration::from_millis(500),
            DEFAULT_MAX_BYTES,
        )
        .unwrap_err();
        assert!(matches!(err, TrustError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_millis(1500));
        server.join().unwrap();
    }

    #[test]
    fn fetch_connection_refused() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = fetch(&endpoint).unwrap_err();
        assert!(matches!(err, TrustError::Unreachable(_)), "{err}");
        assert!(err.to_string().contains("unreachable"), "{err}");
    }

    /// An https server with certificate A that answers with `body`.
    fn serve_tls(body: String) -> (Endpoint, JoinHandle<()>) {
        let p = pki();
        let identity =
            native_tls::Identity::from_pkcs8(p.cert_a.as_bytes(), p.key_a.as_bytes()).unwrap();
        let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let Ok(mut tls) = acceptor.accept(stream) else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(answer.as_bytes());
            let _ = tls.shutdown();
        });
        let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{port}")).unwrap();
        (endpoint, handle)
    }

    #[test]
    fn fetch_over_https() {
        let p = pki();
        let (endpoint, server) = serve_tls(p.cert_b.clone());
        let trusting = native_tls::TlsConnector::builder()
            .add_root_certificate(native_tls::Certificate::from_pem(p.cert_a.as_bytes()).unwrap())
            .build()
            .unwrap();
        let certs = fetch_gateway_ca(
            &endpoint,
            &trusting,
            Duration::from_secs(5),
            DEFAULT_MAX_BYTES,
        )
        .unwrap();
        assert_eq!(certs, vec![p.cert_b.clone()]);
        server.join().unwrap();

        // Without trust in the server's certificate: a TLS error.
        let (endpoint, server) = serve_tls(p.cert_b.clone());
        let err = fetch(&endpoint).unwrap_err();
        assert!(matches!(err, TrustError::Tls(_)), "{err}");
        server.join().unwrap();
    }
}
