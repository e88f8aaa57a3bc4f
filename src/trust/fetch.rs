//! The fetch of the gateway's CA certificate: `GET {base}{path}` (the path
//! is the generation's, e.g. `/v1/code/upstreamproxy/ca-cert`) over
//! `http://` or `https://` with the crate's one HTTP/1.1 client
//! ([`crate::http::client`]), whose whole exchange (connect, TLS, request,
//! every byte of the answer) runs under one deadline, its answer capped in
//! size. [`fetch_ca_with_retries`] makes up to three
//! tries within one time budget, retrying only what may pass on its own;
//! [`backoff`] spaces out the background retries of a long-lived process.
//! No credentials are sent: the endpoint is public.

use std::fmt;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

use super::TrustError;
use super::pem::extract_certificates;
use crate::gateway::Generation;
use crate::gateway::{Endpoint, GatewayError};
use crate::http::client::printable;
use crate::http::client::{self, ClientError, Exchange, Transport};
use crate::http::http1;

/// Default bound on the gateway's answer: 1 MiB (a CA certificate is ~1 KiB).
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// Tries [`fetch_ca_with_retries`] makes at most.
pub const CA_FETCH_ATTEMPTS: u32 = 3;
/// Pauses before the second and third tries; short, the budget is small.
const RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(200)];
/// First pause of the background retry ([`backoff`]), doubled each time.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest pause of the background retry, `Retry-After` included.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
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

/// Fetches the first generation's CA (`GET {base}/v1/code/upstreamproxy/ca-cert`)
/// in one try; see [`fetch_ca_at`].
pub fn fetch_gateway_ca(
    endpoint: &Endpoint,
    tls: &native_tls::TlsConnector,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<String>, TrustError> {
    fetch_ca_at(
        endpoint,
        Generation::UpstreamProxy.ca_cert_path(),
        tls,
        timeout,
        max_bytes,
    )
}

/// Fetches `GET {base}{path}` over `http://` or `https://` in one try and
/// returns the certificates in the answer. `path` is the generation's
/// ([`Generation::ca_cert_path`]). Connect, TLS, request and the whole body
/// finish within `timeout`; a body over `max_bytes` is refused. No
/// credentials are sent: the endpoint is public.
pub fn fetch_ca_at(
    endpoint: &Endpoint,
    path: &str,
    tls: &native_tls::TlsConnector,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<String>, TrustError> {
    let deadline = client::deadline_after(timeout);
    let request = request_text(endpoint, path)?;
    let tcp = endpoint
        .connect_tcp(deadline)
        .map_err(|e| from_gateway_error(e, timeout))?;
    let body = if endpoint.tls {
        let stream = client::tls_handshake(tls, &endpoint.host, tcp, deadline)
            .map_err(|e| from_client_error(e, timeout))?;
        answer_body(
            Exchange::new(stream, deadline),
            &request,
            timeout,
            max_bytes,
        )?
    } else {
        answer_body(Exchange::new(tcp, deadline), &request, timeout, max_bytes)?
    };
    let certs = extract_certificates(&body);
    if certs.is_empty() {
        return Err(TrustError::NoCertificate {
            len: body.len(),
            start: preview(&body),
        });
    }
    Ok(certs)
}

/// Sends `request` and returns the body of a `200` answer; any other
/// status is [`TrustError::Status`].
fn answer_body<S: Transport>(
    mut exchange: Exchange<S>,
    request: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<u8>, TrustError> {
    let failed = |e| from_client_error(e, timeout);
    exchange.send(request.as_bytes()).map_err(failed)?;
    let head = exchange.read_head().map_err(failed)?;
    if head.status != 200 {
        return Err(TrustError::Status {
            code: head.status,
            reason: printable(&head.reason, 60),
            retry_after: retry_after(&head.headers),
        });
    }
    exchange.read_body(&head.headers, max_bytes).map_err(failed)
}

/// Why [`fetch_ca_with_retries`] gave up: the last try's error, how many
/// tries were made, and the wait the gateway asked for in its last answer.
#[derive(Debug)]
pub struct CaFetchFailure {
    /// The error of the last try.
    pub last: TrustError,
    /// Tries made (at least 1).
    pub attempts: u32,
    /// The last answer's `Retry-After` (delta-seconds), if it had one.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for CaFetchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tries = if self.attempts == 1 {
            "1 attempt".to_string()
        } else {
            format!("{} attempts", self.attempts)
        };
        write!(f, "{} (gave up after {tries})", self.last)
    }
}

impl std::error::Error for CaFetchFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.last)
    }
}

/// Fetches `GET {base}{path}` with up to [`CA_FETCH_ATTEMPTS`] tries within
/// one `budget`: each try gets what is left of it, 100 ms then 200 ms apart,
/// and no try is started without time left for it. Only errors that may
/// pass on their own are retried ([`TrustError::is_retryable`]); the
/// answer's `Retry-After` is not waited for here (it is longer than the
/// budget) but handed back for the caller's [`backoff`].
pub fn fetch_ca_with_retries(
    endpoint: &Endpoint,
    path: &str,
    tls: &native_tls::TlsConnector,
    budget: Duration,
    max_bytes: usize,
) -> Result<Vec<String>, CaFetchFailure> {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        let left = budget.saturating_sub(started.elapsed());
        attempts += 1;
        let last = match fetch_ca_at(endpoint, path, tls, left, max_bytes) {
            Ok(certs) => return Ok(certs),
            Err(e) => e,
        };
        let pause = RETRY_PAUSES
            .get(attempts as usize - 1)
            .copied()
            .unwrap_or(Duration::ZERO);
        let left = budget.saturating_sub(started.elapsed());
        if !last.is_retryable() || attempts >= CA_FETCH_ATTEMPTS || pause >= left {
            let retry_after = match &last {
                TrustError::Status { retry_after, .. } => *retry_after,
                _ => None,
            };
            return Err(CaFetchFailure {
                last,
                attempts,
                retry_after,
            });
        }
        log::info!(
            "CA fetch attempt {attempts} of {CA_FETCH_ATTEMPTS} failed, retrying in {} ms: {last}",
            pause.as_millis()
        );
        thread::sleep(pause);
    }
}

/// The pause before background retry number `attempt` (1 for the first):
/// 1 s, 2 s, 4 s, ... capped at [`BACKOFF_MAX`]; a longer `retry_after`
/// from the gateway wins, capped the same.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    let computed = BACKOFF_FIRST
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_MAX);
    retry_after.map_or(computed, |asked| asked.max(computed).min(BACKOFF_MAX))
}

/// A `Retry-After` in delta-seconds; an HTTP-date or garbage gives `None`.
fn retry_after(headers: &[(String, String)]) -> Option<Duration> {
    let value = http1::header_values(headers, "retry-after").next()?.trim();
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().map(Duration::from_secs)
}

fn request_text(endpoint: &Endpoint, path: &str) -> Result<String, TrustError> {
    if !path.starts_with('/') {
        return Err(TrustError::BadUrl(format!(
            "the CA path '{}' does not start with '/'",
            printable(path, 60)
        )));
    }
    let target = format!("{}{path}", endpoint.prefix);
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

/// A failed exchange as the CA fetch reports it.
fn from_client_error(e: ClientError, timeout: Duration) -> TrustError {
    match e {
        ClientError::Timeout => TrustError::Timeout(timeout),
        ClientError::Io(e) => TrustError::Io(e),
        ClientError::Tls(why) => TrustError::Tls(why),
        ClientError::ClosedBeforeAnswer => {
            TrustError::Malformed("the gateway closed the connection without answering".into())
        }
        ClientError::Malformed(why) => TrustError::Malformed(why),
        ClientError::TooLarge { max } => TrustError::TooLarge { max },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{BufRead, Read, Write};
    use std::net::{TcpListener, TcpStream};
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

    /// [`fetch_gateway_ca`] with a 500 ms deadline, for the timeout tests.
    fn fetch_within_500ms(endpoint: &Endpoint) -> Result<Vec<String>, TrustError> {
        fetch_gateway_ca(
            endpoint,
            &connector(),
            Duration::from_millis(500),
            DEFAULT_MAX_BYTES,
        )
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
            matches!(err, TrustError::Status { code: 404, ref reason, retry_after: None } if reason == "Not Found"),
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
        let err = fetch_within_500ms(&endpoint).unwrap_err();
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
        let err = fetch_within_500ms(&endpoint).unwrap_err();
        assert!(matches!(err, TrustError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_millis(1500));
        server.join().unwrap();
    }

    /// An endpoint on a loopback port nothing listens on (bound, then
    /// closed): connecting to it is refused.
    fn refused_endpoint() -> Endpoint {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap()
    }

    #[test]
    fn fetch_connection_refused() {
        let endpoint = refused_endpoint();
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

    // -- the shared parser refuses what the hand-written one let through ----

    #[test]
    fn fetch_refuses_lax_framing() {
        let p = pki();
        let cert = p.cert_a.as_bytes();
        let chunked = |size_line: &str| {
            let mut body = size_line.as_bytes().to_vec();
            body.extend_from_slice(cert);
            body.extend_from_slice(b"\r\n0\r\n\r\n");
            answer("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", &body)
        };
        // The well-formed answer passes, so each refusal below is the one flaw.
        let (endpoint, _s) = serve(chunked(&format!("{:x}\r\n", cert.len())));
        assert_eq!(fetch(&endpoint).unwrap(), vec![p.cert_a.clone()]);
        for (what, bytes) in [
            (
                "signed chunk size",
                chunked(&format!("+{:x}\r\n", cert.len())),
            ),
            (
                "chunk size ended by a bare LF",
                chunked(&format!("{:x}\n", cert.len())),
            ),
            (
                "chunk size with spaces",
                chunked(&format!(" {:x} \r\n", cert.len())),
            ),
            (
                "chunked twice",
                answer(
                    "HTTP/1.1 200 OK\nTransfer-Encoding: chunked, chunked\n",
                    &format!("{:x}\r\n{}\r\n0\r\n\r\n", cert.len(), p.cert_a).into_bytes(),
                ),
            ),
            (
                "space before the colon",
                answer(
                    &format!("HTTP/1.1 200 OK\nContent-Length : {}\n", cert.len()),
                    cert,
                ),
            ),
            (
                "Connection naming a framing header",
                answer(
                    &format!(
                        "HTTP/1.1 200 OK\nConnection: Content-Length\nContent-Length: {}\n",
                        cert.len()
                    ),
                    cert,
                ),
            ),
        ] {
            let (endpoint, _s) = serve(bytes);
            let err = fetch(&endpoint).unwrap_err();
            assert!(matches!(err, TrustError::Malformed(_)), "{what}: {err}");
            assert!(!err.is_retryable(), "{what}");
        }
        // Compressed answers stay refused.
        let (endpoint, _s) = serve(answer("HTTP/1.1 200 OK\nContent-Encoding: gzip\n", cert));
        let err = fetch(&endpoint).unwrap_err();
        assert!(err.to_string().contains("Content-Encoding 'gzip'"), "{err}");
    }

    // -- the path and the retries -----------------------------------------

    const AGENT_CA: &str = "/v1/code/agent-proxy/ca-cert";

    /// A server answering up to `answers.len()` connections in turn, each
    /// with its answer; it stops accepting after `wait` without a
    /// connection. Returns the request heads it got.
    pub(crate) fn serve_sequence(
        answers: Vec<Vec<u8>>,
        wait: Duration,
    ) -> (Endpoint, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in answers {
                let until = Instant::now() + wait;
                let mut stream = loop {
                    match listener.accept() {
                        Ok((stream, _)) => break stream,
                        Err(_) if Instant::now() < until => thread::sleep(Duration::from_millis(5)),
                        Err(_) => return requests,
                    }
                };
                stream.set_nonblocking(false).unwrap();
                requests.push(read_request(&stream));
                let _ = stream.write_all(&answer);
            }
            requests
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}/pre")).unwrap();
        (endpoint, handle)
    }

    fn cert_answer() -> Vec<u8> {
        answer("HTTP/1.1 200 OK\n", pki().cert_a.as_bytes())
    }

    fn with_retries(endpoint: &Endpoint, budget: Duration) -> Result<Vec<String>, CaFetchFailure> {
        fetch_ca_with_retries(endpoint, AGENT_CA, &connector(), budget, 64 * 1024)
    }

    #[test]
    fn fetch_ca_at_uses_the_given_path() {
        let (endpoint, server) = serve(cert_answer());
        let certs = fetch_ca_at(
            &endpoint,
            AGENT_CA,
            &connector(),
            Duration::from_secs(5),
            4096,
        );
        assert_eq!(certs.unwrap(), vec![pki().cert_a.clone()]);
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /pre/v1/code/agent-proxy/ca-cert HTTP/1.1\r\n"),
            "{request}"
        );
        assert_eq!(Generation::AgentProxy.ca_cert_path(), AGENT_CA);

        let err = fetch_ca_at(
            &endpoint,
            "ca-cert",
            &connector(),
            Duration::from_secs(1),
            4096,
        )
        .unwrap_err();
        assert!(matches!(err, TrustError::BadUrl(_)), "{err}");
    }

    #[test]
    fn retries_a_503_then_succeeds() {
        let (endpoint, server) = serve_sequence(
            vec![
                answer(
                    "HTTP/1.1 503 Service Unavailable\nContent-Length: 4\n",
                    b"busy",
                ),
                cert_answer(),
            ],
            Duration::from_secs(5),
        );
        let started = Instant::now();
        let certs = with_retries(&endpoint, Duration::from_secs(5)).unwrap();
        assert_eq!(certs, vec![pki().cert_a.clone()]);
        // The pause between the tries was made.
        assert!(started.elapsed() >= Duration::from_millis(100));
        let requests = server.join().unwrap();
        assert_eq!(requests.len(), 2);
        for request in requests {
            assert!(
                request.starts_with(&format!("GET /pre{AGENT_CA} ")),
                "{request}"
            );
        }
    }

    #[test]
    fn three_429s_give_up_with_retry_after() {
        let busy = answer(
            "HTTP/1.1 429 Too Many Requests\nRetry-After: 7\nContent-Length: 0\n",
            b"",
        );
        let (endpoint, server) = serve_sequence(
            vec![busy.clone(), busy.clone(), busy, cert_answer()],
            Duration::from_secs(1),
        );
        let failure = with_retries(&endpoint, Duration::from_secs(5)).unwrap_err();
        assert_eq!(failure.attempts, 3);
        assert_eq!(failure.retry_after, Some(Duration::from_secs(7)));
        assert!(
            matches!(
                failure.last,
                TrustError::Status { code: 429, retry_after: Some(t), .. } if t == Duration::from_secs(7)
            ),
            "{failure}"
        );
        let text = failure.to_string();
        assert!(text.contains("HTTP 429 Too Many Requests"), "{text}");
        assert!(text.contains("after 3 attempts"), "{text}");
        // The fourth answer was never asked for.
        assert_eq!(server.join().unwrap().len(), 3);
    }

    #[test]
    fn a_404_is_not_retried() {
        let (endpoint, server) = serve_sequence(
            vec![
                answer(
                    "HTTP/1.1 404 Not Found\nRetry-After: 3\nContent-Length: 0\n",
                    b"",
                ),
                cert_answer(),
            ],
            Duration::from_millis(800),
        );
        let failure = with_retries(&endpoint, Duration::from_secs(5)).unwrap_err();
        assert_eq!(failure.attempts, 1);
        assert_eq!(failure.retry_after, Some(Duration::from_secs(3)));
        assert!(
            matches!(failure.last, TrustError::Status { code: 404, .. }),
            "{failure}"
        );
        assert!(
            failure.to_string().contains("after 1 attempt)"),
            "{failure}"
        );
        assert_eq!(server.join().unwrap().len(), 1);
    }

    #[test]
    fn a_200_without_a_certificate_is_retried() {
        let (endpoint, server) = serve_sequence(
            vec![
                answer("HTTP/1.1 200 OK\n", b"<html>captive portal</html>"),
                cert_answer(),
            ],
            Duration::from_secs(5),
        );
        let certs = with_retries(&endpoint, Duration::from_secs(5)).unwrap();
        assert_eq!(certs, vec![pki().cert_a.clone()]);
        assert_eq!(server.join().unwrap().len(), 2);
    }

    #[test]
    fn a_silent_server_ends_the_call_within_the_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            // Accept whatever comes for 2 s, never answer.
            let until = Instant::now() + Duration::from_secs(2);
            let mut held = Vec::new();
            while Instant::now() < until {
                if let Ok((stream, _)) = listener.accept() {
                    held.push(stream);
                }
                thread::sleep(Duration::from_millis(5));
            }
            held.len()
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let budget = Duration::from_millis(800);
        let started = Instant::now();
        let failure = with_retries(&endpoint, budget).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(failure.last, TrustError::Timeout(_)), "{failure}");
        assert!(took >= budget - Duration::from_millis(50), "{took:?}");
        assert!(took < budget + Duration::from_millis(700), "{took:?}");
        // The one try took the whole budget; none was started after it.
        assert_eq!(failure.attempts, 1);
        assert_eq!(failure.retry_after, None);
        assert_eq!(server.join().unwrap(), 1);
    }

    #[test]
    fn no_try_starts_without_time_left_for_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_request(&stream);
            // Answer 503 when less than the first pause is left of the budget.
            thread::sleep(Duration::from_millis(950));
            let _ = stream.write_all(&answer("HTTP/1.1 503 Busy\nContent-Length: 0\n", b""));
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let started = Instant::now();
        let failure = with_retries(&endpoint, Duration::from_secs(1)).unwrap_err();
        let took = started.elapsed();
        assert_eq!(failure.attempts, 1, "{failure}");
        // 503 when the answer came in time, else the budget ran out first.
        assert!(
            matches!(
                failure.last,
                TrustError::Status { code: 503, .. } | TrustError::Timeout(_)
            ),
            "{failure}"
        );
        assert!(took < Duration::from_millis(1700), "{took:?}");
        server.join().unwrap();
    }

    #[test]
    fn refused_connections_are_retried_three_times() {
        let endpoint = refused_endpoint();
        let started = Instant::now();
        let failure = with_retries(&endpoint, Duration::from_secs(5)).unwrap_err();
        assert_eq!(failure.attempts, 3);
        assert!(
            matches!(failure.last, TrustError::Unreachable(_)),
            "{failure}"
        );
        // Two pauses, 100 ms and 200 ms, and no more.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn a_refused_certificate_is_not_retried() {
        let (endpoint, server) = serve_tls(pki().cert_b.clone());
        let failure = fetch_ca_with_retries(
            &endpoint,
            AGENT_CA,
            &connector(),
            Duration::from_secs(5),
            DEFAULT_MAX_BYTES,
        )
        .unwrap_err();
        assert_eq!(failure.attempts, 1, "{failure}");
        assert!(matches!(failure.last, TrustError::Tls(_)), "{failure}");
        server.join().unwrap();
    }

    #[test]
    fn a_reset_during_the_handshake_is_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let mut resets = 0;
            for _ in 0..CA_FETCH_ATTEMPTS {
                let Ok((stream, _)) = listener.accept() else {
                    break;
                };
                // Closing with the ClientHello unread makes the kernel send
                // a reset rather than a FIN.
                thread::sleep(Duration::from_millis(100));
                drop(stream);
                resets += 1;
            }
            resets
        });
        let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{port}")).unwrap();
        let failure = fetch_ca_with_retries(
            &endpoint,
            AGENT_CA,
            &connector(),
            Duration::from_secs(5),
            DEFAULT_MAX_BYTES,
        )
        .unwrap_err();
        assert!(matches!(failure.last, TrustError::Io(_)), "{failure}");
        assert_eq!(failure.attempts, 3, "{failure}");
        assert_eq!(server.join().unwrap(), 3);
    }

    #[test]
    fn what_is_retried() {
        let status = |code| TrustError::Status {
            code,
            reason: String::new(),
            retry_after: None,
        };
        for code in [500, 502, 503, 504, 599, 408, 429] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 301, 302, 304, 101, 600] {
            assert!(!status(code).is_retryable(), "{code}");
        }
        let reset = || io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(TrustError::Unreachable(reset()).is_retryable());
        assert!(TrustError::Io(reset()).is_retryable());
        assert!(TrustError::Timeout(Duration::from_secs(5)).is_retryable());
        assert!(
            TrustError::NoCertificate {
                len: 0,
                start: String::new()
            }
            .is_retryable()
        );
        assert!(!TrustError::Tls("certificate verify failed".into()).is_retryable());
        assert!(!TrustError::Malformed("x".into()).is_retryable());
        assert!(!TrustError::TooLarge { max: 1 }.is_retryable());
        assert!(!TrustError::BadUrl("x".into()).is_retryable());
    }

    #[test]
    fn retry_after_is_delta_seconds_only() {
        let headers = |value: &str| vec![("Retry-After".to_string(), value.to_string())];
        assert_eq!(retry_after(&headers("7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers("0")), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("Wed, 21 Oct 2026 07:28:00 GMT")), None);
        assert_eq!(retry_after(&headers("-1")), None);
        assert_eq!(retry_after(&headers("1.5")), None);
        assert_eq!(retry_after(&headers("99999999999")), None);
        assert_eq!(retry_after(&[]), None);
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let secs = Duration::from_secs;
        let plain: Vec<Duration> = (1..=10).map(|n| backoff(n, None)).collect();
        assert_eq!(
            plain,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 300].map(secs).to_vec()
        );
        assert_eq!(backoff(0, None), secs(1));
        assert_eq!(backoff(40, None), secs(300));
        assert_eq!(backoff(u32::MAX, None), secs(300));
        // A longer Retry-After wins, a shorter one does not, both capped.
        assert_eq!(backoff(1, Some(secs(7))), secs(7));
        assert_eq!(backoff(5, Some(secs(7))), secs(16));
        assert_eq!(backoff(1, Some(secs(3600))), secs(300));
        assert_eq!(backoff(1, Some(Duration::ZERO)), secs(1));
    }
}
