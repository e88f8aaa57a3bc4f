//! The merged CA bundle children trust (PROTOCOL.md sections 1 and 2, step
//! 3): fetch the gateway's CA certificate with a small HTTP/1.1 client whose
//! whole exchange runs under one deadline ([`fetch_gateway_ca`]), keep only
//! the PEM blocks that parse as X.509 ([`extract_certificates`]), find the
//! system bundle ([`system_bundle`]) and write system bundle then gateway
//! certificates atomically, mode 0644 ([`write_bundle`]). [`build_bundle`]
//! runs the three for start-up. Nothing but parsed certificates taken from
//! the gateway's answer is ever written, and no old bundle is ever left
//! half-written.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::gateway::{CA_CERT_PATH, Endpoint, GatewayError, GatewayStream};

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// Default bound on the gateway's answer: 1 MiB (a CA certificate is ~1 KiB).
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// Bound on the answer's status line and headers.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Bound on one chunk-size or trailer line of a chunked body.
const MAX_LINE_BYTES: usize = 4 * 1024;
/// Bound on the system bundle read (Debian's is about 200 KiB).
const MAX_SYSTEM_BUNDLE: u64 = 16 * 1024 * 1024;
/// Characters of an unexpected answer quoted in [`CaError::NoCertificate`].
const PREVIEW_CHARS: usize = 24;

/// Why the gateway's CA could not be fetched or the bundle written.
/// Never holds the token (the fetch does not send it).
#[derive(Debug)]
pub enum CaError {
    /// The base URL cannot be put into a request line.
    BadUrl(String),
    /// TCP connect failed or the name did not resolve.
    Unreachable(io::Error),
    /// The TLS handshake with the gateway failed.
    Tls(String),
    /// Connect, TLS, request and full answer did not finish within the bound.
    Timeout(Duration),
    /// The connection broke during the exchange.
    Io(io::Error),
    /// The answer is not HTTP/1.x the client understands.
    Malformed(String),
    /// The gateway answered with a status other than 200.
    Status { code: u16, reason: String },
    /// The body is larger than the bound.
    TooLarge { max: usize },
    /// The body holds no PEM block that parses as an X.509 certificate.
    NoCertificate {
        /// Size of the body in bytes.
        len: usize,
        /// Its first characters, printable ASCII only.
        start: String,
    },
    /// The bundle (or its directory) could not be written.
    Write { path: PathBuf, error: io::Error },
}

impl fmt::Display for CaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FETCH: &str = "fetching the gateway's CA certificate";
        match self {
            CaError::BadUrl(why) => write!(f, "{FETCH}: {why}; fix the gateway base URL"),
            CaError::Unreachable(e) => write!(
                f,
                "{FETCH}: gateway unreachable ({e}); check ANTHROPIC_BASE_URL and the network"
            ),
            CaError::Tls(e) => write!(
                f,
                "{FETCH}: TLS to the gateway failed ({e}); check the system roots or pass --gateway-ca"
            ),
            CaError::Timeout(t) => write!(
                f,
                "{FETCH}: no complete answer within {} ms; the gateway is slow or not answering",
                t.as_millis()
            ),
            CaError::Io(e) => write!(f, "{FETCH}: connection failed mid-answer ({e})"),
            CaError::Malformed(why) => {
                write!(f, "{FETCH}: the answer is not valid HTTP ({why})")
            }
            CaError::Status { code, reason } => write!(
                f,
                "{FETCH}: the gateway answered HTTP {code}{}{} instead of 200; check ANTHROPIC_BASE_URL",
                if reason.is_empty() { "" } else { " " },
                reason
            ),
            CaError::TooLarge { max } => write!(
                f,
                "{FETCH}: the answer is larger than {max} bytes and was refused; check ANTHROPIC_BASE_URL"
            ),
            CaError::NoCertificate { len: 0, .. } => write!(
                f,
                "{FETCH}: the answer is empty and holds no PEM certificate; check ANTHROPIC_BASE_URL"
            ),
            CaError::NoCertificate { len, start } => write!(
                f,
                "{FETCH}: answer of {len} bytes holds no PEM certificate (starts with '{start}'); check ANTHROPIC_BASE_URL"
            ),
            CaError::Write { path, error } => write!(
                f,
                "cannot write the CA bundle {}: {error}; pass --ca-bundle with a writable path",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CaError {}

// ---------------------------------------------------------------------------
// Certificates out of arbitrary text

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every `BEGIN CERTIFICATE` ... `END CERTIFICATE` block of `pem_text` that
/// parses as an X.509 certificate, re-encoded from the parsed certificate as
/// canonical PEM (64-column base64, ending in `\n`). Everything else is
/// dropped: text around the blocks, other block types (private keys),
/// truncated blocks, blocks whose base64 is not a certificate.
pub fn extract_certificates(pem_text: &[u8]) -> Vec<String> {
    let mut certs = Vec::new();
    let mut rest = pem_text;
    while let Some(start) = find(rest, BEGIN.as_bytes()) {
        let after = &rest[start + BEGIN.len()..];
        let Some(end) = find(after, END.as_bytes()) else {
            break;
        };
        let body = &after[..end];
        if let Some(inner) = find(body, BEGIN.as_bytes()) {
            // This block was cut short; the END belongs to a later one.
            rest = &after[inner..];
            continue;
        }
        if let Some(cert) = certificate_from_base64(body) {
            certs.push(cert);
        }
        rest = &after[end + END.len()..];
    }
    certs
}

/// The PEM of the certificate in one block's base64 body, if it is one.
fn certificate_from_base64(body: &[u8]) -> Option<String> {
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    if !body.iter().all(|b| is_b64(b) || b.is_ascii_whitespace()) {
        return None; // PEM headers, other blocks, binary
    }
    let compact: String = body
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|&b| b as char)
        .collect();
    if compact.is_empty() {
        return None;
    }
    let cert = native_tls::Certificate::from_pem(pem_block(&compact).as_bytes()).ok()?;
    let der = cert.to_der().ok()?;
    Some(pem_block(&crate::gateway::base64(&der)))
}

fn pem_block(base64: &str) -> String {
    let mut pem = String::with_capacity(base64.len() + base64.len() / 64 + 60);
    pem.push_str(BEGIN);
    pem.push('\n');
    // Base64 text is ASCII, so byte chunks are whole characters.
    for line in base64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(END);
    pem.push('\n');
    pem
}

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

// ---------------------------------------------------------------------------
// The fetch: a minimal HTTP/1.1 client under one deadline

/// Fetches `GET {base}/v1/code/upstreamproxy/ca-cert` over `http://` or
/// `https://` and returns the certificates in the answer. Connect, TLS,
/// request and the whole body finish within `timeout`; a body over
/// `max_bytes` is refused. No credentials are sent: the endpoint is public.
pub fn fetch_gateway_ca(
    endpoint: &Endpoint,
    tls: &native_tls::TlsConnector,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<String>, CaError> {
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
        return Err(CaError::Status {
            code: head.status,
            reason: head.reason,
        });
    }
    let body = conn.read_body(&head, max_bytes)?;
    let certs = extract_certificates(&body);
    if certs.is_empty() {
        return Err(CaError::NoCertificate {
            len: body.len(),
            start: preview(&body),
        });
    }
    Ok(certs)
}

fn request_text(endpoint: &Endpoint) -> Result<String, CaError> {
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
        return Err(CaError::BadUrl(
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

fn from_gateway_error(e: GatewayError, timeout: Duration) -> CaError {
    match e {
        GatewayError::Timeout => CaError::Timeout(timeout),
        GatewayError::Unreachable(e) => CaError::Unreachable(e),
        GatewayError::Tls(e) => CaError::Tls(e),
        other => CaError::Unreachable(io::Error::other(other.to_string())),
    }
}

fn remaining(deadline: Instant, timeout: Duration) -> Result<Duration, CaError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(CaError::Timeout(timeout))
    } else {
        Ok(left)
    }
}

fn set_timeouts(tcp: &TcpStream, left: Duration) -> Result<(), CaError> {
    tcp.set_read_timeout(Some(left))
        .and_then(|_| tcp.set_write_timeout(Some(left)))
        .map_err(CaError::Io)
}

fn tls_handshake(
    tls: &native_tls::TlsConnector,
    host: &str,
    tcp: TcpStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<native_tls::TlsStream<TcpStream>, CaError> {
    set_timeouts(&tcp, remaining(deadline, timeout)?)?;
    let mut attempt = tls.connect(host, tcp);
    loop {
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(native_tls::HandshakeError::Failure(e)) => return Err(CaError::Tls(e.to_string())),
            Err(native_tls::HandshakeError::WouldBlock(mid)) => {
                // A socket timeout fired mid-handshake: go on if time is left.
                set_timeouts(mid.get_ref(), remaining(deadline, timeout)?)?;
                attempt = mid.handshake();
            }
        }
    }
}

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
    fn io_error(&self, e: io::Error) -> CaError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CaError::Timeout(self.timeout),
            _ => CaError::Io(e),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), CaError> {
        let left = remaining(self.deadline, self.timeout)?;
        set_timeouts(self.stream.tcp(), left)?;
        let sent = self
            .stream
            .write_all(bytes)
            .and_then(|_| self.stream.flush());
        sent.map_err(|e| self.io_error(e))
    }

    /// Reads more into the buffer; 0 at end of stream.
    fn fill(&mut self) -> Result<usize, CaError> {
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
    fn read_head(&mut self) -> Result<Head, CaError> {
        loop {
            let head = loop {
                if let Some(end) = head_end(&self.buf) {
                    let head: Vec<u8> = self.buf.drain(..end).collect();
                    break head;
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    return Err(CaError::Malformed(format!(
                        "response head larger than {MAX_HEAD_BYTES} bytes"
                    )));
                }
                if self.fill()? == 0 {
                    return Err(CaError::Malformed(if self.buf.is_empty() {
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

    fn read_body(&mut self, head: &Head, max: usize) -> Result<Vec<u8>, CaError> {
        if head.chunked {
            self.read_chunked(max)
        } else if let Some(len) = head.content_length {
            if len > max {
                return Err(CaError::TooLarge { max });
            }
            self.read_exact(len)
        } else {
            while self.buf.len() <= max {
                if self.fill()? == 0 {
                    return Ok(std::mem::take(&mut self.buf));
                }
            }
            Err(CaError::TooLarge { max })
        }
    }

    fn read_exact(&mut self, len: usize) -> Result<Vec<u8>, CaError> {
        while self.buf.len() < len {
            if self.fill()? == 0 {
                return Err(CaError::Malformed(format!(
                    "the connection closed after {} of {len} body bytes",
                    self.buf.len()
                )));
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    /// One line without its `\r\n` or `\n`.
    fn read_line(&mut self) -> Result<Vec<u8>, CaError> {
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
                return Err(CaError::Malformed("chunk line too long".into()));
            }
            if self.fill()? == 0 {
                return Err(CaError::Malformed(
                    "the connection closed in the middle of a chunked body".into(),
                ));
            }
        }
    }

    fn read_chunked(&mut self, max: usize) -> Result<Vec<u8>, CaError> {
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
            .ok_or_else(|| CaError::Malformed("bad chunk size".into()))?;
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
                return Err(CaError::TooLarge { max });
            }
            body.extend(self.read_exact(size)?);
            if !self.read_line()?.is_empty() {
                return Err(CaError::Malformed("chunk not followed by CRLF".into()));
            }
        }
    }
}

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

fn parse_head(head: &[u8]) -> Result<Head, CaError> {
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
        return Err(CaError::Malformed(format!(
            "status line '{}'",
            printable(status_line, 40)
        )));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| CaError::Malformed("bad status code".into()))?;
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
            .ok_or_else(|| CaError::Malformed("bad Content-Length".into()))?;
            if content_length.is_some_and(|old| old != len) {
                return Err(CaError::Malformed("conflicting Content-Length".into()));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if coding.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if !coding.eq_ignore_ascii_case("identity") {
                    return Err(CaError::Malformed(format!(
                        "unsupported Transfer-Encoding '{}'",
                        printable(coding, 20)
                    )));
                }
            }
        } else if name.eq_ignore_ascii_case("content-encoding")
            && !value.is_empty()
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(CaError::Malformed(format!(
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

// ---------------------------------------------------------------------------
// The system bundle and the written bundle

/// The system bundle to merge: `explicit` if given (even if it does not
/// exist; the caller reports that), else the file `openssl-probe` finds
/// (which honours `SSL_CERT_FILE`) if it exists, else `None`.
pub fn system_bundle(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    openssl_probe::probe().cert_file.filter(|p| p.is_file())
}

/// Writes the bundle at `path`: the system bundle's text as is (with a
/// trailing newline ensured), then the gateway certificates. Atomic: the
/// parent directory is created if missing (mode 0700), the text goes to a
/// temporary file in the same directory (mode 0644), is synced and renamed
/// over `path`. On failure the temporary file is removed and any old bundle
/// is left as it was.
pub fn write_bundle(
    path: &Path,
    system_pem: Option<&[u8]>,
    gateway_certs: &[String],
) -> Result<(), CaError> {
    let mut content = Vec::new();
    if let Some(system) = system_pem.filter(|s| !s.is_empty()) {
        content.extend_from_slice(system);
        if !system.ends_with(b"\n") {
            content.push(b'\n');
        }
    }
    for cert in gateway_certs {
        content.extend_from_slice(cert.as_bytes());
        if !cert.ends_with('\n') {
            content.push(b'\n');
        }
    }
    write_atomically(path, &content, 0o644).map_err(|error| CaError::Write {
        path: path.to_path_buf(),
        error,
    })
}

/// The shared atomic write, after creating a missing directory (0700).
fn write_atomically(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    crate::atomic_file::write(path, content, mode)
}

/// What [`build_bundle`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The bundle written.
    pub path: PathBuf,
    /// The system bundle merged, if one was.
    pub system_bundle: Option<PathBuf>,
    /// Certificates in the system part.
    pub system_certs: usize,
    /// Distinct certificates the gateway sent.
    pub gateway_certs: usize,
    /// Of those, how many the system part already held (not appended twice).
    pub gateway_already_present: usize,
    /// One line each, for stderr: what was missing and what that means.
    pub warnings: Vec<String>,
}

/// Start-up step 3: fetches the gateway's CA, reads the system bundle and
/// writes the merged bundle to `config.ca_bundle`. A fetch or write failure
/// is an error (the caller fails open); a missing or unreadable system
/// bundle is only a warning, and the bundle then holds the gateway's
/// certificates alone.
pub fn build_bundle(
    config: &Config,
    endpoint: &Endpoint,
    tls: &native_tls::TlsConnector,
) -> Result<Built, CaError> {
    let fetched = fetch_gateway_ca(
        endpoint,
        tls,
        config.limits.ca_fetch_timeout,
        config.limits.max_ca_bytes,
    )?;
    merge_and_write(
        &config.ca_bundle,
        system_bundle(config.system_ca.as_deref()),
        fetched,
    )
}

/// The system text, if usable, or a warning saying why not.
fn read_system(path: &Path) -> Result<Vec<u8>, String> {
    let alone = "the merged bundle holds the gateway's certificates alone, so children will not trust public sites";
    let mut text = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_SYSTEM_BUNDLE + 1).read_to_end(&mut text))
        .map_err(|e| {
            format!(
                "cannot read the system CA bundle {} ({e}); {alone}",
                path.display()
            )
        })?;
    if text.len() as u64 > MAX_SYSTEM_BUNDLE {
        return Err(format!(
            "the system CA bundle {} is larger than {MAX_SYSTEM_BUNDLE} bytes and was skipped; {alone}",
            path.display()
        ));
    }
    Ok(text)
}

fn merge_and_write(
    target: &Path,
    system_path: Option<PathBuf>,
    fetched: Vec<String>,
) -> Result<Built, CaError> {
    let mut warnings = Vec::new();
    let mut system_text = None;
    let mut system_certs = Vec::new();
    match &system_path {
        None => warnings.push(
            "no system CA bundle found (pass --system-ca); the merged bundle holds the gateway's certificates alone, so children will not trust public sites".to_string(),
        ),
        Some(path) => match read_system(path) {
            Err(warning) => warnings.push(warning),
            Ok(text) => {
                system_certs = extract_certificates(&text);
                if system_certs.is_empty() {
                    warnings.push(format!(
                        "the system CA bundle {} holds no PEM certificate and was skipped; the merged bundle holds the gateway's certificates alone",
                        path.display()
                    ));
                } else {
                    system_text = Some(text);
                }
            }
        },
    }
    let mut gateway = Vec::new();
    let mut already = 0;
    for cert in fetched {
        if gateway.contains(&cert) {
            continue;
        }
        if system_certs.contains(&cert) {
            already += 1;
        }
        gateway.push(cert);
    }
    let appended: Vec<String> = gateway
        .iter()
        .filter(|c| !system_certs.contains(c))
        .cloned()
        .collect();
    write_bundle(target, system_text.as_deref(), &appended)?;
    Ok(Built {
        path: target.to_path_buf(),
        system_bundle: system_text.is_some().then_some(system_path).flatten(),
        system_certs: if system_text.is_some() {
            system_certs.len()
        } else {
            0
        },
        gateway_certs: gateway.len(),
        gateway_already_present: already,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::sync::OnceLock;
    use std::thread::{self, JoinHandle};

    use crate::test_support::TempDir;

    struct Pki {
        /// Self-signed, SAN IP:127.0.0.1 and DNS:localhost.
        cert_a: String,
        key_a: String,
        cert_b: String,
    }

    fn generate(dir: &Path, name: &str) -> (String, String) {
        let key = dir.join(format!("{name}.key"));
        let cert = dir.join(format!("{name}.crt"));
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-days",
                "1",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl tool is needed for these tests");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            fs::read_to_string(cert).unwrap(),
            fs::read_to_string(key).unwrap(),
        )
    }

    fn pki() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| {
            let dir = TempDir::new("pki");
            let (cert_a, key_a) = generate(&dir.0, "test-a");
            let (cert_b, _) = generate(&dir.0, "test-b");
            Pki {
                cert_a,
                key_a,
                cert_b,
            }
        })
    }

    fn connector() -> native_tls::TlsConnector {
        native_tls::TlsConnector::new().unwrap()
    }

    // -- extraction --------------------------------------------------------

    #[test]
    fn extracts_two_certificates_from_junk() {
        let p = pki();
        let text = format!(
            "garbage before\n{}\n<p>between</p>\r\n{}trailing junk",
            p.cert_a,
            p.cert_b.replace('\n', "\r\n")
        );
        let certs = extract_certificates(text.as_bytes());
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0], p.cert_a);
        assert_eq!(certs[1], p.cert_b);
        for c in &certs {
            assert!(c.starts_with(BEGIN) && c.ends_with("-----END CERTIFICATE-----\n"));
            assert!(!c.contains("garbage") && !c.contains("junk"));
        }
    }

    #[test]
    fn drops_keys_truncated_and_garbage_blocks() {
        let p = pki();
        // A private key block is never kept.
        let certs = extract_certificates(format!("{}{}", p.key_a, p.cert_b).as_bytes());
        assert_eq!(certs, vec![p.cert_b.clone()]);
        assert!(extract_certificates(p.key_a.as_bytes()).is_empty());

        // A truncated block followed by a good one: only the good one.
        let truncated = &p.cert_a[..p.cert_a.len() / 2];
        let certs = extract_certificates(format!("{truncated}\n{}", p.cert_b).as_bytes());
        assert_eq!(certs, vec![p.cert_b.clone()]);
        // A truncated block alone.
        assert!(extract_certificates(truncated.as_bytes()).is_empty());

        // BEGIN/END around base64 that is not a certificate.
        let fake =
            format!("{BEGIN}\naGVsbG8gd29ybGQgdGhpcyBpcyBub3QgYSBjZXJ0aWZpY2F0ZQ==\n{END}\n");
        assert!(extract_certificates(fake.as_bytes()).is_empty());
        // BEGIN/END around text that is not base64.
        let fake = format!("{BEGIN}\nnot base64 at all!\n{END}\n");
        assert!(extract_certificates(fake.as_bytes()).is_empty());
        let empty = format!("{BEGIN}\n{END}\n");
        assert!(extract_certificates(empty.as_bytes()).is_empty());
        // A certificate with one base64 line cut out of its middle: the DER
        // inside is truncated and does not parse.
        let mut lines: Vec<&str> = p.cert_a.lines().collect();
        lines.remove(lines.len() / 2);
        let cut = lines.join("\n");
        assert!(extract_certificates(cut.as_bytes()).is_empty());
    }

    #[test]
    fn html_json_and_binary_hold_nothing() {
        assert!(extract_certificates(b"<html><body>502 Bad Gateway</body></html>").is_empty());
        assert!(extract_certificates(br#"{"error":{"type":"not_found"}}"#).is_empty());
        assert!(extract_certificates(b"").is_empty());
        assert!(extract_certificates(&[0xff, 0x00, 0x2d, 0x2d, 0xfe]).is_empty());
    }

    #[test]
    fn preview_is_short_and_printable() {
        assert_eq!(preview(b"  <html>"), "<html>");
        assert_eq!(preview(b"a\x00b\nc"), "a.b.c");
        let long = preview(&[b'x'; 100]);
        assert_eq!(long, format!("{}...", "x".repeat(PREVIEW_CHARS)));
    }

    // -- atomic write ------------------------------------------------------

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_system_then_gateway_atomically() {
        let p = pki();
        let dir = TempDir::new("write");
        let target = dir.0.join("a").join("b").join("ca-bundle.crt");
        let system = p.cert_a.trim_end().as_bytes(); // no trailing newline
        write_bundle(&target, Some(system), std::slice::from_ref(&p.cert_b)).unwrap();
        let written = fs::read_to_string(&target).unwrap();
        assert_eq!(written, format!("{}\n{}", p.cert_a.trim_end(), p.cert_b));
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        for created in [dir.0.join("a"), dir.0.join("a").join("b")] {
            let mode = fs::metadata(&created).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", created.display());
        }
        assert_eq!(dir_names(target.parent().unwrap()), ["ca-bundle.crt"]);

        // Overwrite: no system part, the new content replaces the old.
        write_bundle(&target, None, std::slice::from_ref(&p.cert_a)).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), p.cert_a);
        assert_eq!(dir_names(target.parent().unwrap()), ["ca-bundle.crt"]);
    }

    #[test]
    fn failed_write_leaves_old_bundle_and_no_temp_file() {
        let p = pki();
        let dir = TempDir::new("fail");
        let old = dir.0.join("ca-bundle.crt");
        write_bundle(&old, None, std::slice::from_ref(&p.cert_a)).unwrap();

        // A "directory" that is a regular file.
        let blocker = dir.0.join("file");
        fs::write(&blocker, "x").unwrap();
        let err = write_bundle(
            &blocker.join("ca-bundle.crt"),
            None,
            std::slice::from_ref(&p.cert_b),
        )
        .unwrap_err();
        assert!(matches!(err, CaError::Write { .. }), "{err}");
        assert!(err.to_string().contains("--ca-bundle"), "{err}");
        let err = write_bundle(&blocker.join("sub").join("x.crt"), None, &[]).unwrap_err();
        assert!(matches!(err, CaError::Write { .. }), "{err}");

        // The rename fails (the target is a non-empty directory): the temp
        // file is removed and the directory is untouched.
        let taken = dir.0.join("taken");
        fs::create_dir(&taken).unwrap();
        fs::write(taken.join("keep"), "keep").unwrap();
        assert!(write_bundle(&taken, None, std::slice::from_ref(&p.cert_b)).is_err());
        assert_eq!(fs::read_to_string(taken.join("keep")).unwrap(), "keep");

        assert_eq!(fs::read_to_string(&old).unwrap(), p.cert_a);
        assert_eq!(dir_names(&dir.0), ["ca-bundle.crt", "file", "taken"]);
    }

    #[test]
    fn system_bundle_choice() {
        let missing = Path::new("/nonexistent/ca.pem");
        assert_eq!(system_bundle(Some(missing)), Some(missing.to_path_buf()));
        if let Some(found) = system_bundle(None) {
            assert!(found.is_file());
        }
    }

    #[test]
    fn merge_warns_and_dedupes() {
        let p = pki();
        let dir = TempDir::new("merge");
        let system = dir.0.join("system.pem");
        fs::write(&system, format!("# comment\n{}", p.cert_a)).unwrap();
        let target = dir.0.join("out").join("ca-bundle.crt");

        let built = merge_and_write(
            &target,
            Some(system.clone()),
            vec![p.cert_b.clone(), p.cert_b.clone()],
        )
        .unwrap();
        assert_eq!(built.system_certs, 1);
        assert_eq!(built.gateway_certs, 1);
        assert_eq!(built.gateway_already_present, 0);
        assert!(built.warnings.is_empty(), "{:?}", built.warnings);
        assert_eq!(
            fs::read_to_string(&target).unwrap(),
            format!("# comment\n{}{}", p.cert_a, p.cert_b)
        );

        // The system bundle is the merged bundle itself (SSL_CERT_FILE set
        // by an earlier run): the gateway certificate is not appended twice.
        let built = merge_and_write(&target, Some(target.clone()), vec![p.cert_b.clone()]).unwrap();
        assert_eq!(built.gateway_already_present, 1);
        assert_eq!(
            fs::read_to_string(&target).unwrap(),
            format!("# comment\n{}{}", p.cert_a, p.cert_b)
        );

        // Missing system bundle: warning, gateway certificates alone.
        let built = merge_and_write(
            &target,
            Some(dir.0.join("missing.pem")),
            vec![p.cert_b.clone()],
        )
        .unwrap();
        assert_eq!(built.system_certs, 0);
        assert_eq!(built.system_bundle, None);
        assert_eq!(built.warnings.len(), 1);
        assert!(
            built.warnings[0].contains("missing.pem"),
            "{:?}",
            built.warnings
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), p.cert_b);

        // A "system bundle" without certificates is skipped too.
        fs::write(&system, "<html>").unwrap();
        let built = merge_and_write(&target, Some(system), vec![p.cert_b.clone()]).unwrap();
        assert_eq!(built.warnings.len(), 1);
        assert_eq!(fs::read_to_string(&target).unwrap(), p.cert_b);

        let built = merge_and_write(&target, None, vec![p.cert_b.clone()]).unwrap();
        assert_eq!(built.warnings.len(), 1);
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
    fn serve(answer: Vec<u8>) -> (Endpoint, JoinHandle<String>) {
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

    fn fetch(endpoint: &Endpoint) -> Result<Vec<String>, CaError> {
        fetch_gateway_ca(endpoint, &connector(), Duration::from_secs(5), 64 * 1024)
    }

    fn answer(head: &str, body: &[u8]) -> Vec<u8> {
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
            matches!(err, CaError::Status { code: 404, ref reason } if reason == "Not Found"),
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
            matches!(err, CaError::NoCertificate { len, .. } if len == html.len()),
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
        assert!(matches!(err, CaError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("starts with '{\"type\""), "{err}");

        let (endpoint, _s) = serve(answer("HTTP/1.1 200 OK\nContent-Length: 0\n", b""));
        let err = fetch(&endpoint).unwrap_err();
        assert!(
            matches!(err, CaError::NoCertificate { len: 0, .. }),
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
        assert!(matches!(err, CaError::Malformed(_)), "{err}");

        let (endpoint, _s) = serve(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec());
        let err = fetch(&endpoint).unwrap_err();
        assert!(matches!(err, CaError::Malformed(_)), "{err}");

        let (endpoint, _s) = serve(Vec::new());
        let err = fetch(&endpoint).unwrap_err();
        assert!(matches!(err, CaError::Malformed(_)), "{err}");
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
        assert!(matches!(fetch(&endpoint), Err(CaError::TooLarge { max: m }) if m == max));
        // Read to end of stream.
        let (endpoint, _s) = serve(answer("HTTP/1.1 200 OK\n", &big));
        assert!(matches!(fetch(&endpoint), Err(CaError::TooLarge { .. })));
        // Chunked.
        let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
        chunked.extend_from_slice(&big);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let (endpoint, _s) = serve(answer(
            "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n",
            &chunked,
        ));
        assert!(matches!(fetch(&endpoint), Err(CaError::TooLarge { .. })));
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
        assert!(matches!(err, CaError::Timeout(_)), "{err}");
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
        assert!(matches!(err, CaError::Timeout(_)), "{err}");
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
        assert!(matches!(err, CaError::Unreachable(_)), "{err}");
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
        assert!(matches!(err, CaError::Tls(_)), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn build_bundle_end_to_end() {
        let p = pki();
        let dir = TempDir::new("build");
        let system = dir.0.join("system.pem");
        fs::write(&system, &p.cert_a).unwrap();
        let (endpoint, _s) = serve(answer("HTTP/1.1 200 OK\n", p.cert_b.as_bytes()));
        let mut config = Config::from_env();
        config.ca_bundle = dir.0.join(".ccr").join("ca-bundle.crt");
        config.system_ca = Some(system.clone());
        let built = build_bundle(&config, &endpoint, &connector()).unwrap();
        assert_eq!(
            built,
            Built {
                path: config.ca_bundle.clone(),
                system_bundle: Some(system),
                system_certs: 1,
                gateway_certs: 1,
                gateway_already_present: 0,
                warnings: vec![],
            }
        );
        assert_eq!(
            fs::read_to_string(&config.ca_bundle).unwrap(),
            format!("{}{}", p.cert_a, p.cert_b)
        );

        // A failed fetch writes nothing and leaves the old bundle.
        let (endpoint, _s) = serve(answer("HTTP/1.1 503 Service Unavailable\n", b""));
        assert!(matches!(
            build_bundle(&config, &endpoint, &connector()),
            Err(CaError::Status { code: 503, .. })
        ));
        assert_eq!(
            fs::read_to_string(&config.ca_bundle).unwrap(),
            format!("{}{}", p.cert_a, p.cert_b)
        );
    }
}
