//! The development origin: a tiny HTTP/1.1 server (optionally HTTPS) that
//! end-to-end tests reach through the relay and the gateway.
//!
//! Thread per connection, keep-alive, bodies streamed both ways (never
//! buffered whole), so it can serve and swallow many gigabytes. Routes:
//!
//! | route | answer |
//! |---|---|
//! | `GET /hello` | `hello from origin\n` |
//! | `GET /bytes/N` | N bytes of [`crate::pattern`], 256 KiB writes |
//! | `POST /echo` | the request body (Content-Length or chunked), streamed back |
//! | `POST /count` | `len=<n>\n` |
//! | `POST /sha256` | `len=<n> sha256=<hex>\n` |
//! | `GET /headers` | the request line and header lines, as text |
//! | `GET /slow/N?rate=BYTES_PER_SEC` | N pattern bytes at that rate (default 64 KiB/s) |
//! | `GET /idle/SECS` | waits SECS (may be fractional), then `idle\n` |
//!
//! Anything else is `404`, unless the origin serves a directory
//! (`--root DIR`): then `GET` and `HEAD` of any other path answer with the
//! file under `DIR` ([`static_file`]): `Content-Type` from the extension,
//! `Content-Length` from the file, a directory answered by its
//! `index.html` or else its `index.json` (so `/simple/pkg/` can be a PEP 503
//! page and `/pkg` an npm registry document), the query ignored (a dumb-HTTP
//! git repository's `info/refs?service=…` is its plain `info/refs`).
//! `HEAD` is answered for those files (the headers `GET` would send). `Expect: 100-continue` is answered.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::head::{HeadError, RequestHead, parse_head, read_head_bytes};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslStream};

use crate::args::{Args, UsageError};
use crate::http::{path_of, query_param, response};
use crate::pattern::PatternSource;

/// Size of body reads and of the pattern writes.
const IO_SIZE: usize = 256 * 1024;
/// Largest request head.
const MAX_HEAD: usize = 64 * 1024;
/// A keep-alive connection with no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default rate of `/slow/N`.
const DEFAULT_SLOW_RATE: u64 = 64 * 1024;

/// Command-line help for `ccr-dev-origin`.
pub const USAGE: &str = "\
usage: ccr-dev-origin [--listen ADDR] [--tls-cert F --tls-key F] [--root DIR]

A test HTTP/1.1 origin. Prints `listening on IP:PORT` once bound.
Routes: GET /hello, GET /bytes/N, POST /echo, POST /count, POST /sha256,
GET /headers, GET /slow/N?rate=BYTES_PER_SEC, GET /idle/SECS.
With --root DIR, GET and HEAD of any other path serve the file under DIR
(a directory: its index.html, else its index.json).
";

/// What `ccr-dev-origin` is told on its command line.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    pub listen: SocketAddr,
    /// `(cert PEM file, key PEM file)` to serve HTTPS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--root`: the directory served for paths no built-in route takes.
    pub root: Option<PathBuf>,
}

impl OriginConfig {
    /// Parses the command line (without the program name); `Ok(None)` for `--help`.
    pub fn from_args(
        args: impl IntoIterator<Item = OsString>,
    ) -> Result<Option<OriginConfig>, UsageError> {
        let mut args = Args::new(args)?;
        let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let (mut cert, mut key, mut root) = (None, None, None);
        while let Some(flag) = args.next_flag()? {
            match flag.as_str() {
                "--help" | "-h" => return Ok(None),
                "--listen" => listen = args.listen_addr()?,
                "--tls-cert" => cert = Some(PathBuf::from(args.value()?)),
                "--tls-key" => key = Some(PathBuf::from(args.value()?)),
                "--root" => root = Some(PathBuf::from(args.value()?)),
                _ => return Err(args.unknown()),
            }
        }
        let tls = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(UsageError("--tls-cert and --tls-key go together".into())),
        };
        Ok(Some(OriginConfig { listen, tls, root }))
    }
}

/// A bound origin, ready to serve.
pub struct Origin {
    listener: TcpListener,
    tls: Option<Arc<SslAcceptor>>,
    pattern: Arc<PatternSource>,
    root: Option<Arc<Path>>,
}

impl Origin {
    pub fn bind(cfg: &OriginConfig) -> io::Result<Origin> {
        let tls = match &cfg.tls {
            Some((cert, key)) => {
                let setup = || -> Result<SslAcceptor, openssl::error::ErrorStack> {
                    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
                    b.set_private_key_file(key, SslFiletype::PEM)?;
                    b.set_certificate_chain_file(cert)?;
                    b.check_private_key()?;
                    Ok(b.build())
                };
                Some(Arc::new(setup().map_err(|e| {
                    io::Error::other(format!(
                        "TLS setup with {} and {} failed: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?))
            }
            None => None,
        };
        Ok(Origin {
            listener: TcpListener::bind(cfg.listen)?,
            tls,
            pattern: Arc::new(PatternSource::new(IO_SIZE)),
            root: cfg.root.as_deref().map(Arc::from),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections, one thread each, for ever.
    pub fn serve(self) -> io::Result<()> {
        crate::accept::serve_each(&self.listener, 512 * 1024, |conn| {
            let tls = self.tls.clone();
            let pattern = Arc::clone(&self.pattern);
            let root = self.root.clone();
            ("origin-conn".to_string(), move || {
                if let Err(e) = connection(conn, tls.as_deref(), &pattern, root.as_deref()) {
                    log::debug!("connection: {e}");
                }
            })
        })
    }
}

/// A connection the origin speaks HTTP over.
trait Conn: Read + Write {
    /// Ends the connection cleanly (TLS `close_notify`, then `FIN`).
    fn finish(&mut self);
}

impl Conn for TcpStream {
    fn finish(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Conn for SslStream<TcpStream> {
    fn finish(&mut self) {
        let _ = self.shutdown();
        let _ = self.get_ref().shutdown(std::net::Shutdown::Write);
    }
}

fn connection(
    tcp: TcpStream,
    tls: Option<&SslAcceptor>,
    pattern: &PatternSource,
    root: Option<&Path>,
) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IDLE_TIMEOUT))?;
    match tls {
        Some(acceptor) => {
            let stream = acceptor
                .accept(tcp)
                .map_err(|e| io::Error::other(format!("TLS handshake failed: {e}")))?;
            serve_http(stream, pattern, root)
        }
        None => serve_http(tcp, pattern, root),
    }
}

/// How a request body is framed, and how much of it is left.
enum Body {
    Length(u64),
    /// `Some(n)`: inside a chunk with `n` bytes left; `None`: at a size line.
    Chunked(Option<u64>),
    Done,
}

impl Body {
    fn of(head: &RequestHead) -> Result<Body, &'static str> {
        if let Some(te) = head.header("Transfer-Encoding") {
            if te.trim().eq_ignore_ascii_case("chunked") {
                return Ok(Body::Chunked(None));
            }
            return Err("unsupported Transfer-Encoding");
        }
        match head.header("Content-Length") {
            Some(v) => v
                .trim()
                .parse()
                .map(Body::Length)
                .map_err(|_| "bad Content-Length"),
            None => Ok(Body::Done),
        }
    }

    /// Reads body bytes; `Ok(0)` at the end of the body.
    fn read<R: BufRead>(&mut self, r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self {
                Body::Done => return Ok(0),
                Body::Length(0) => {
                    *self = Body::Done;
                    return Ok(0);
                }
                Body::Length(left) => {
                    let want = (*left).min(buf.len() as u64) as usize;
                    let n = r.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                Body::Chunked(None) => {
                    let line = read_line(r)?;
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, "bad chunk size")
                    })?;
                    if size == 0 {
                        // Trailers up to the blank line.
                        while !read_line(r)?.is_empty() {}
                        *self = Body::Done;
                        return Ok(0);
                    }
                    *self = Body::Chunked(Some(size));
                }
                Body::Chunked(Some(0)) => {
                    if !read_line(r)?.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk not followed by CRLF",
                        ));
                    }
                    *self = Body::Chunked(None);
                }
                Body::Chunked(Some(left)) => {
                    let want = (*left).min(buf.len() as u64) as usize;
                    let n = r.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
            }
        }
    }
}

/// One line without its line ending, at most 4 KiB.
fn read_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut line = Vec::new();
    let n = r.take(4096).read_until(b'\n', &mut line)?;
    if n == 0 || line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or cut off",
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

fn serve_http<S: Conn>(stream: S, pattern: &PatternSource, root: Option<&Path>) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(IO_SIZE, stream);
    let result = loop {
        let head_bytes = match read_head_bytes(&mut reader, MAX_HEAD) {
            Ok(h) => h,
            Err(HeadError::Closed(None) | HeadError::Timeout) => break Ok(()),
            Err(HeadError::TooLarge) => {
                let r = response(431, "text/plain", b"head too large\n", true);
                break reader.get_mut().write_all(&r);
            }
            Err(e) => break Err(io::Error::other(e.to_string())),
        };
        let head = match parse_head(&head_bytes) {
            Ok(h) => h,
            Err(e) => {
                let r = response(400, "text/plain", format!("{e}\n").as_bytes(), true);
                break reader.get_mut().write_all(&r);
            }
        };
        let mut body = match Body::of(&head) {
            Ok(b) => b,
            Err(why) => {
                let r = response(400, "text/plain", format!("{why}\n").as_bytes(), true);
                break reader.get_mut().write_all(&r);
            }
        };
        let connection = head
            .header("Connection")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let keep_alive = if head.minor_version == 0 {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        };
        if head
            .header("Expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if let Err(e) = route(
            &head,
            &head_bytes,
            &mut body,
            &mut reader,
            pattern,
            root,
            !keep_alive,
        ) {
            break Err(e);
        }
        // Whatever the route did not read of the body is skipped.
        let mut sink = vec![0u8; 64 * 1024];
        while body.read(&mut reader, &mut sink)? > 0 {}
        reader.get_mut().flush()?;
        if !keep_alive {
            break Ok(());
        }
    };
    let mut stream = reader.into_inner();
    stream.finish();
    result
}

fn route<S: Conn>(
    head: &RequestHead,
    head_bytes: &[u8],
    body: &mut Body,
    reader: &mut BufReader<S>,
    pattern: &PatternSource,
    root: Option<&Path>,
    close: bool,
) -> io::Result<()> {
    let path = path_of(&head.target);
    let (first, arg) = match path[1.min(path.len())..].split_once('/') {
        Some((first, arg)) => (first, Some(arg)),
        None => (&path[1.min(path.len())..], None),
    };
    let conn_header = if close { "Connection: close\r\n" } else { "" };
    let method = head.method.as_str();
    let small = |reader: &mut BufReader<S>, status: u16, body: &[u8]| {
        reader
            .get_mut()
            .write_all(&response(status, "text/plain", body, close))
    };
    match (method, first, arg) {
        ("GET", "hello", None) => small(reader, 200, b"hello from origin\n"),
        ("GET", "bytes", Some(n)) => {
            let Ok(n) = n.parse::<u64>() else {
                return small(reader, 400, b"bad length\n");
            };
            let w = reader.get_mut();
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n{conn_header}\r\n"
            )?;
            pattern.write_range(w, 0, n)
        }
        ("GET", "slow", Some(n)) => {
            let n = n.parse::<u64>();
            let rate = query_param(&head.target, "rate").map_or(Ok(DEFAULT_SLOW_RATE), str::parse);
            let (Ok(n), Ok(rate @ 1..)) = (n, rate) else {
                return small(reader, 400, b"bad length or rate\n");
            };
            let w = reader.get_mut();
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n{conn_header}\r\n"
            )?;
            w.flush()?;
            // Twenty pieces a second, each sent when its time has come.
            let piece = (rate / 20).clamp(1, IO_SIZE as u64);
            let started = Instant::now();
            let mut sent = 0u64;
            while sent < n {
                let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let len = (n - sent).min(piece) as usize;
                w.write_all(pattern.slice(sent, len))?;
                w.flush()?;
                sent += len as u64;
            }
            Ok(())
        }
        ("GET", "idle", Some(secs)) => {
            let Some(secs) = secs
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
            else {
                return small(reader, 400, b"bad number of seconds\n");
            };
            thread::sleep(Duration::from_secs_f64(secs.min(86_400.0)));
            small(reader, 200, b"idle\n")
        }
        ("GET", "headers", None) => {
            let mut text = String::from_utf8_lossy(head_bytes).replace("\r\n", "\n");
            while text.ends_with("\n\n") {
                text.pop();
            }
            small(reader, 200, text.as_bytes())
        }
        ("POST" | "PUT", "echo", None) => echo(body, reader, close),
        ("POST" | "PUT", "count" | "sha256", None) => {
            let mut hasher = (first == "sha256").then(openssl::sha::Sha256::new);
            let mut buf = vec![0u8; IO_SIZE];
            let mut len = 0u64;
            loop {
                let n = body.read(reader, &mut buf)?;
                if n == 0 {
                    break;
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf[..n]);
                }
                len += n as u64;
            }
            let text = match hasher {
                Some(h) => format!("len={len} sha256={}\n", crate::pattern::hex(&h.finish())),
                None => format!("len={len}\n"),
            };
            small(reader, 200, text.as_bytes())
        }
        (_, "hello" | "bytes" | "slow" | "idle" | "headers" | "echo" | "count" | "sha256", _) => {
            small(reader, 405, b"method not allowed\n")
        }
        ("GET" | "HEAD", _, _) if root.is_some() => {
            let root = root.expect("checked");
            static_file(reader.get_mut(), root, path, method == "HEAD", close)
        }
        _ => small(reader, 404, format!("no route for {path}\n").as_bytes()),
    }
}

/// The file under `root` that the request path `path` names, if any: the
/// path is percent-decoded and must be made of plain components (no `..`,
/// no `.`, no NUL). A directory stands for its `index.html`, else its
/// `index.json`.
pub fn resolve_static(root: &Path, path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(path)?;
    let rel = decoded.trim_start_matches('/');
    let mut file = root.to_path_buf();
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(c) if !c.as_encoded_bytes().contains(&0) => file.push(c),
            _ => return None,
        }
    }
    if file.is_dir() {
        return ["index.html", "index.json"]
            .iter()
            .map(|index| file.join(index))
            .find(|f| f.is_file());
    }
    file.is_file().then_some(file)
}

/// `%XX` sequences decoded; `None` if one is malformed or the result is not
/// UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `Content-Type` for a file, from its name.
pub fn content_type(file: &Path) -> &'static str {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let types: &[(&str, &str)] = &[
        (".html", "text/html; charset=utf-8"),
        (".htm", "text/html; charset=utf-8"),
        (".json", "application/json"),
        (".txt", "text/plain; charset=utf-8"),
        (".tar.gz", "application/gzip"),
        (".tgz", "application/gzip"),
        (".gz", "application/gzip"),
        (".whl", "application/zip"),
        (".zip", "application/zip"),
        (".jar", "application/java-archive"),
        (".pom", "application/xml"),
        (".xml", "application/xml"),
        (".pem", "application/x-pem-file"),
    ];
    if let Some((_, ty)) = types.iter().find(|(ext, _)| name.ends_with(ext)) {
        return ty;
    }
    // Files a dumb-HTTP git client fetches as text.
    if matches!(name.as_str(), "head" | "refs" | "packs" | "alternates") {
        return "text/plain; charset=utf-8";
    }
    "application/octet-stream"
}

/// Answers `GET` (or `HEAD`) of `path` from the directory `root`: the file
/// streamed with its type and length, or `404`.
fn static_file<W: Write>(
    w: &mut W,
    root: &Path,
    path: &str,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let path = path_of(path);
    let opened = resolve_static(root, path).and_then(|file| {
        let f = fs::File::open(&file).ok()?;
        let len = f.metadata().ok()?.len();
        Some((file, f, len))
    });
    let Some((file, f, len)) = opened else {
        let body = format!("no file for {path}\n");
        let mut r = response(404, "text/plain", body.as_bytes(), close);
        if head_only {
            r.truncate(r.len() - body.len());
        }
        return w.write_all(&r);
    };
    let conn_header = if close { "Connection: close\r\n" } else { "" };
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\n{conn_header}\r\n",
        content_type(&file)
    )?;
    if !head_only {
        let copied = io::copy(&mut f.take(len), w)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while being served", file.display()),
            ));
        }
    }
    Ok(())
}

/// Streams the request body back, framed as it came.
fn echo<S: Conn>(body: &mut Body, reader: &mut BufReader<S>, close: bool) -> io::Result<()> {
    let conn_header = if close { "Connection: close\r\n" } else { "" };
    let chunked = matches!(body, Body::Chunked(_));
    let w = reader.get_mut();
    match body {
        Body::Length(n) => write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n{conn_header}\r\n"
        )?,
        Body::Done => write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 0\r\n{conn_header}\r\n"
        )?,
        Body::Chunked(_) => write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n{conn_header}\r\n"
        )?,
    }
    w.flush()?;
    let mut buf = vec![0u8; IO_SIZE];
    loop {
        let n = body.read(reader, &mut buf)?;
        let w = reader.get_mut();
        if n == 0 {
            if chunked {
                w.write_all(b"0\r\n\r\n")?;
            }
            return Ok(());
        }
        if chunked {
            write!(w, "{n:x}\r\n")?;
            w.write_all(&buf[..n])?;
            w.write_all(b"\r\n")?;
        } else {
            w.write_all(&buf[..n])?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut r = BufReader::new(&wire[..]);
        let mut body = Body::Chunked(None);
        let mut out = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            let n = body.read(&mut r, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, b"hello!");
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "NEXT");
    }

    #[test]
    fn static_paths_resolve_inside_the_root_only() {
        let dir = crate::temp_dir("origin-static");
        let root = dir.join("root");
        fs::create_dir_all(root.join("simple/pkg")).unwrap();
        fs::create_dir_all(root.join("npmpkg")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("simple/pkg/index.html"), "<a>").unwrap();
        fs::write(root.join("npmpkg/index.json"), "{}").unwrap();
        fs::write(root.join("a b.txt"), "x").unwrap();
        fs::write(dir.join("secret"), "s").unwrap();
        let r = |p: &str| resolve_static(&root, p);
        assert_eq!(r("/simple/pkg/"), Some(root.join("simple/pkg/index.html")));
        assert_eq!(r("/simple/pkg"), Some(root.join("simple/pkg/index.html")));
        assert_eq!(r("/npmpkg"), Some(root.join("npmpkg/index.json")));
        assert_eq!(r("/a%20b.txt"), Some(root.join("a b.txt")));
        assert_eq!(r("/empty"), None);
        assert_eq!(r("/missing"), None);
        assert_eq!(r("/../secret"), None);
        assert_eq!(r("/%2e%2e/secret"), None);
        assert_eq!(r("/%zz"), None);
        assert_eq!(r("/a%00"), None);
        assert_eq!(content_type(Path::new("p-1.0.tar.gz")), "application/gzip");
        assert_eq!(content_type(Path::new("i.JSON")), "application/json");
        assert_eq!(
            content_type(Path::new("repo.git/HEAD")),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("objects/ab/cdef")),
            "application/octet-stream"
        );
    }

    #[test]
    fn static_files_answer_get_and_head() {
        let dir = crate::temp_dir("origin-static-serve");
        fs::write(dir.join("f.json"), "{\"a\":1}").unwrap();
        let mut out = Vec::new();
        static_file(&mut out, dir.path(), "/f.json?x=1", false, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        );
        let mut out = Vec::new();
        static_file(&mut out, dir.path(), "/f.json", true, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\nConnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        static_file(&mut out, dir.path(), "/nope", true, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn command_line() {
        let c = OriginConfig::from_args(["--listen", "127.0.0.1:7"].map(OsString::from))
            .unwrap()
            .unwrap();
        assert_eq!(c.listen.port(), 7);
        assert_eq!(c.root, None);
        let c = OriginConfig::from_args(["--root", "/srv"].map(OsString::from))
            .unwrap()
            .unwrap();
        assert_eq!(c.root, Some(PathBuf::from("/srv")));
        assert!(OriginConfig::from_args(["--tls-key", "k"].map(OsString::from)).is_err());
    }
}
