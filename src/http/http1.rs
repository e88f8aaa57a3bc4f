//! The relay's one HTTP/1 parser, built on `httparse`: request and response
//! heads and the body framing they announce (RFC 9112 section 6); the
//! bodies themselves are copied by [`super::body`].
//!
//! Everything here is strict where a lax reading could let two parties see
//! two different messages (request smuggling): a framing ambiguity is an
//! error, never passed on. What the relay forwards is rebuilt from what was
//! parsed: one `Content-Length` or one `Transfer-Encoding` ending in
//! `chunked`, and chunked bodies in canonical form.
//!
//! Other modules that read HTTP (the CA fetch) call [`parse_response_head`]
//! and `body::read_chunked_body` rather than parsing by hand.

use std::fmt;

/// Why bytes are not an acceptable HTTP/1 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http1Error {
    /// Not HTTP/1.x syntax.
    Malformed(&'static str),
    /// Framing two parties could read two ways (request smuggling).
    Ambiguous(&'static str),
    /// Well formed but not something the relay handles.
    Unsupported(&'static str),
}

impl fmt::Display for Http1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Http1Error::Malformed(why) => write!(f, "malformed HTTP: {why}"),
            Http1Error::Ambiguous(why) => write!(f, "ambiguous HTTP framing: {why}"),
            Http1Error::Unsupported(why) => write!(f, "unsupported HTTP: {why}"),
        }
    }
}

impl std::error::Error for Http1Error {}

/// Header lines in order, names as sent, values trimmed.
pub type Headers = Vec<(String, String)>;

/// All values of a header, by case-insensitive name.
pub fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &str,
) -> impl Iterator<Item = &'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
        .map(|(_, v)| v.as_str())
}

/// Whether a comma-separated header lists `token` (case-insensitive).
pub fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    header_values(headers, name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// The `x` of `HTTP/1.x`.
    pub minor_version: u8,
    pub headers: Headers,
}

impl RequestHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_values(&self.headers, name).next()
    }
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The `x` of `HTTP/1.x`.
    pub minor_version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
}

impl ResponseHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_values(&self.headers, name).next()
    }

    /// `HTTP/1.x NNN reason`, rebuilt from the parsed parts.
    pub fn status_line(&self) -> String {
        format!(
            "HTTP/1.{} {} {}",
            self.minor_version, self.status, self.reason
        )
    }
}

/// Room for every header line a head of this many bytes could hold.
pub(super) fn header_slots(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count() + 1
}

fn map_parse_error(e: httparse::Error) -> Http1Error {
    Http1Error::Malformed(match e {
        httparse::Error::HeaderName => "bad header name",
        httparse::Error::HeaderValue => "bad header value",
        httparse::Error::NewLine => "bad line ending",
        httparse::Error::Status => "bad status",
        httparse::Error::Token => "bad method or token",
        httparse::Error::TooManyHeaders => "too many header lines",
        httparse::Error::Version => "version is not HTTP/1.0 or HTTP/1.1",
    })
}

pub(super) fn convert_headers(raw: &[httparse::Header<'_>]) -> Result<Headers, Http1Error> {
    raw.iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| Http1Error::Malformed("header value is not UTF-8"))?;
            Ok((h.name.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Parses a request head at the start of `bytes`: `Ok(None)` while it is
/// incomplete, else the head and the bytes it took. Methods must be upper
/// case and targets visible ASCII, stricter than `httparse` alone.
pub fn parse_request_head(bytes: &[u8]) -> Result<Option<(RequestHead, usize)>, Http1Error> {
    let mut slots = vec![httparse::EMPTY_HEADER; header_slots(bytes)];
    let mut req = httparse::Request::new(&mut slots);
    let used = match req.parse(bytes).map_err(map_parse_error)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let method = req.method.unwrap_or_default();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
        return Err(Http1Error::Malformed("bad method"));
    }
    let target = req.path.unwrap_or_default();
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Http1Error::Malformed("bad request target"));
    }
    Ok(Some((
        RequestHead {
            method: method.to_string(),
            target: target.to_string(),
            minor_version: req.version.unwrap_or(1),
            headers: convert_headers(req.headers)?,
        },
        used,
    )))
}

/// Parses a response head at the start of `bytes`: `Ok(None)` while it is
/// incomplete, else the head and the bytes it took (the body starts there).
///
/// ```
/// use ccr_relay::http::http1::parse_response_head;
/// let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
/// let (head, used) = parse_response_head(bytes).unwrap().unwrap();
/// assert_eq!((head.status, head.header("content-length"), &bytes[used..]), (200, Some("2"), &b"hi"[..]));
/// assert!(parse_response_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
/// assert!(parse_response_head(b"SSH-2.0-x\r\n\r\n").is_err());
/// ```
pub fn parse_response_head(bytes: &[u8]) -> Result<Option<(ResponseHead, usize)>, Http1Error> {
    let mut slots = vec![httparse::EMPTY_HEADER; header_slots(bytes)];
    let mut resp = httparse::Response::new(&mut slots);
    let used = match resp.parse(bytes).map_err(map_parse_error)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let status = resp.code.unwrap_or_default();
    if !(100..=999).contains(&status) {
        return Err(Http1Error::Malformed("bad status"));
    }
    Ok(Some((
        ResponseHead {
            minor_version: resp.version.unwrap_or(1),
            status,
            reason: resp.reason.unwrap_or_default().to_string(),
            headers: convert_headers(resp.headers)?,
        },
        used,
    )))
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

/// A message's framing, normalised: the body's delimitation and the one
/// framing header to send with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    pub body: BodyFraming,
    /// Transfer codings in order, `chunked` last (empty unless chunked).
    pub codings: Vec<String>,
}

impl Framing {
    fn plain(body: BodyFraming) -> Framing {
        Framing {
            body,
            codings: Vec::new(),
        }
    }

    /// The one framing header line (with CRLF) that says this framing, if any.
    pub fn header_line(&self) -> Option<String> {
        match self.body {
            BodyFraming::Length(n) => Some(format!("Content-Length: {n}\r\n")),
            BodyFraming::Chunked => Some(format!(
                "Transfer-Encoding: {}\r\n",
                self.codings.join(", ")
            )),
            BodyFraming::None | BodyFraming::UntilClose => None,
        }
    }
}

/// Headers that frame a body; the relay writes its own.
pub fn is_framing_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
}

/// `Connection` may name hop-by-hop headers to drop; naming a framing
/// header would make a proxy drop the framing and misread the body.
fn check_connection(headers: &[(String, String)]) -> Result<(), Http1Error> {
    let names_framing = header_values(headers, "connection")
        .flat_map(|v| v.split(','))
        .any(|t| is_framing_header(t.trim()));
    if names_framing {
        return Err(Http1Error::Ambiguous("Connection names a framing header"));
    }
    Ok(())
}

/// The one length all `Content-Length` values agree on (`5, 5` is 5).
fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, Http1Error> {
    let mut length = None;
    for part in header_values(headers, "content-length").flat_map(|v| v.split(',')) {
        let part = part.trim();
        if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Http1Error::Malformed("bad Content-Length"));
        }
        let n: u64 = part
            .parse()
            .map_err(|_| Http1Error::Malformed("bad Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(Http1Error::Ambiguous("conflicting Content-Length values"));
        }
        length = Some(n);
    }
    Ok(length)
}

/// A request's framing. Strict: `Transfer-Encoding` must be one header
/// saying only `chunked`, on HTTP/1.1, without `Content-Length`; lengths
/// must agree. Anything else is refused (the client gets 400).
pub fn request_framing(head: &RequestHead) -> Result<Framing, Http1Error> {
    check_connection(&head.headers)?;
    let te_headers = header_values(&head.headers, "transfer-encoding").count();
    if te_headers > 0 {
        if head.minor_version == 0 {
            return Err(Http1Error::Ambiguous(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if head.header("content-length").is_some() {
            return Err(Http1Error::Ambiguous(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if te_headers > 1 {
            return Err(Http1Error::Ambiguous(
                "Transfer-Encoding in more than one header",
            ));
        }
        let value = head.header("transfer-encoding").unwrap_or_default();
        if !value.trim().eq_ignore_ascii_case("chunked") {
            return Err(Http1Error::Unsupported(
                "request Transfer-Encoding other than chunked",
            ));
        }
        return Ok(Framing {
            body: BodyFraming::Chunked,
            codings: vec!["chunked".into()],
        });
    }
    Ok(Framing::plain(
        content_length(&head.headers)?.map_or(BodyFraming::None, BodyFraming::Length),
    ))
}

/// A response's framing (RFC 9112 6.3). `Transfer-Encoding` wins over
/// `Content-Length`, which is dropped; its codings are merged into one list
/// that must end in a single `chunked` (`identity` is dropped). Without
/// either, the body runs until close. The caller decides when a response
/// has no body at all (HEAD, 1xx, 204, 304) and still sends the header.
pub fn response_framing(headers: &[(String, String)]) -> Result<Framing, Http1Error> {
    check_connection(headers)?;
    let codings: Vec<String> = header_values(headers, "transfer-encoding")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "identity")
        .collect();
    if header_values(headers, "transfer-encoding").next().is_some() {
        let chunked = codings.iter().filter(|t| *t == "chunked").count();
        if chunked != 1 || codings.last().map(String::as_str) != Some("chunked") {
            return Err(Http1Error::Unsupported(
                "Transfer-Encoding not ending in one chunked",
            ));
        }
        if codings.iter().any(|t| !t.bytes().all(is_token_byte)) {
            return Err(Http1Error::Malformed("bad transfer coding"));
        }
        return Ok(Framing {
            body: BodyFraming::Chunked,
            codings,
        });
    }
    Ok(Framing::plain(
        content_length(headers)?.map_or(BodyFraming::UntilClose, BodyFraming::Length),
    ))
}

/// A response's framing as a proxy that keeps connections open must read
/// it: as [`response_framing`], but `Transfer-Encoding` with
/// `Content-Length` is refused. RFC 9112 lets `Transfer-Encoding` win, yet
/// such a response is the usual vehicle of response smuggling: a peer
/// reading the length would see another message after it.
pub fn forwarded_response_framing(headers: &[(String, String)]) -> Result<Framing, Http1Error> {
    if header_values(headers, "transfer-encoding").next().is_some()
        && header_values(headers, "content-length").next().is_some()
    {
        return Err(Http1Error::Ambiguous(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    response_framing(headers)
}

/// A `tchar` of RFC 9110.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Headers {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn request(text: &str) -> RequestHead {
        parse_request_head(text.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn request_heads_parse_and_partial_heads_wait() {
        let text = b"GET http://a.test/ HTTP/1.0\r\nHost:  a.test \r\n\r\nbody";
        let (h, used) = parse_request_head(text).unwrap().unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.minor_version),
            ("GET", "http://a.test/", 0)
        );
        assert_eq!(h.header("HOST"), Some("a.test"));
        assert_eq!(&text[used..], b"body");
        assert!(
            parse_request_head(b"GET / HTTP/1.1\r\nA: b\r\n")
                .unwrap()
                .is_none()
        );
        for bad in [
            &b"get / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: \x01\r\n\r\n",
        ] {
            assert!(
                parse_request_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn response_heads_keep_status_and_reason() {
        let text = b"HTTP/1.0 404 Not Found\r\nX: y\r\n\r\n";
        let (h, used) = parse_response_head(text).unwrap().unwrap();
        assert_eq!(h.status_line(), "HTTP/1.0 404 Not Found");
        assert_eq!(used, text.len());
        assert!(parse_response_head(b"HTTP/1.1 20 OK\r\n\r\n").is_err());
        // Obsolete line folding is refused.
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n").is_err());
    }

    #[test]
    fn request_framing_is_strict() {
        let ok = |text: &str| request_framing(&request(text)).map(|f| f.body);
        assert_eq!(ok("POST / HTTP/1.1\r\n\r\n"), Ok(BodyFraming::None));
        assert_eq!(
            ok("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 05\r\n\r\n"),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nConnection: close, transfer-encoding\r\n\r\n",
        ] {
            assert!(ok(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn response_framing_follows_rfc9112() {
        let f = |list: &[(&str, &str)]| response_framing(&headers(list));
        assert_eq!(f(&[]).unwrap().body, BodyFraming::UntilClose);
        assert_eq!(
            f(&[("Content-Length", "12")]).unwrap().body,
            BodyFraming::Length(12)
        );
        let both = f(&[
            ("Transfer-Encoding", "gzip, chunked"),
            ("Content-Length", "3"),
        ])
        .unwrap();
        assert_eq!(both.body, BodyFraming::Chunked);
        assert_eq!(
            both.header_line().unwrap(),
            "Transfer-Encoding: gzip, chunked\r\n"
        );
        let split = f(&[
            ("Transfer-Encoding", "identity"),
            ("Transfer-Encoding", "chunked"),
        ])
        .unwrap();
        assert_eq!(
            split.header_line().unwrap(),
            "Transfer-Encoding: chunked\r\n"
        );
        for bad in [
            &[("Content-Length", "1"), ("Content-Length", "2")][..],
            &[("Content-Length", "-1")],
            &[("Transfer-Encoding", "gzip")],
            &[("Transfer-Encoding", "chunked, chunked")],
            &[
                ("Connection", "Transfer-Encoding"),
                ("Transfer-Encoding", "chunked"),
            ],
        ] {
            assert!(f(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn forwarded_responses_refuse_both_framings_and_differing_lengths() {
        let f = |list: &[(&str, &str)]| forwarded_response_framing(&headers(list));
        let both = [("Transfer-Encoding", "chunked"), ("Content-Length", "5")];
        assert!(response_framing(&headers(&both)).is_ok(), "RFC reading");
        assert_eq!(
            f(&both),
            Err(Http1Error::Ambiguous(
                "both Content-Length and Transfer-Encoding"
            ))
        );
        assert_eq!(
            f(&[("Content-Length", "5"), ("Content-Length", "6")]),
            Err(Http1Error::Ambiguous("conflicting Content-Length values"))
        );
        assert_eq!(
            f(&[("Transfer-Encoding", "gzip, chunked")]).map(|f| f.body),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            f(&[("Content-Length", "5, 5")]).map(|f| f.body),
            Ok(BodyFraming::Length(5))
        );
    }
}
