//! The rewrite of a plain exchange's heads: the request as the origin gets
//! it (origin form, `Host` from the target) and the response as the client
//! gets it, each without hop-by-hop and proxy headers and with the one
//! framing header the relay honours.

use crate::http::http1::{Framing, ResponseHead, header_values, is_framing_header};
use crate::http::request_head::{Authority, RequestHead};

/// Request headers never forwarded: hop-by-hop (RFC 9110 7.6.1) and the
/// proxy's own. Headers named in `Connection` are dropped too, unless they
/// frame the body: such a message is refused instead.
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

/// Headers without the hop-by-hop ones, those named in `Connection`, the
/// framing headers (the relay writes its own) and `Host`/`Expect` (the
/// relay writes or answers those itself).
fn end_to_end(headers: &[(String, String)]) -> Vec<&(String, String)> {
    let named: Vec<String> = header_values(headers, "connection")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(n, _)| {
            let n = n.to_ascii_lowercase();
            !HOP_BY_HOP.contains(&n.as_str())
                && !named.contains(&n)
                && !is_framing_header(&n)
                && n != "host"
                && n != "expect"
        })
        .collect()
}

/// The request as the origin gets it: origin form, a `Host` rebuilt from
/// the absolute-form target (whatever `Host` the client sent), end-to-end
/// headers, and the one framing header the relay will honour.
pub(super) fn origin_request(
    head: &RequestHead,
    authority: &Authority,
    path: &str,
    framing: &Framing,
) -> Vec<u8> {
    let host = match authority.port {
        80 => authority.host.to_string(),
        _ => authority.to_string(),
    };
    let mut out = format!("{} {path} HTTP/1.1\r\nHost: {host}\r\n", head.method);
    for (name, value) in end_to_end(&head.headers) {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(line) = framing.header_line() {
        out.push_str(&line);
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The response as the client gets it: end-to-end headers, the one
/// framing header, and `Connection: close` when the relay will close after it.
pub(super) fn client_response(resp: &ResponseHead, framing: &Framing, close: bool) -> Vec<u8> {
    let mut out = format!("{}\r\n", resp.status_line());
    for (name, value) in end_to_end(&resp.headers) {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(line) = framing.header_line() {
        out.push_str(&line);
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::http1::{
        BodyFraming, forwarded_response_framing, parse_response_head, request_framing,
    };
    use crate::http::request_head::parse_head;

    fn no_body() -> Framing {
        Framing {
            body: BodyFraming::None,
            codings: Vec::new(),
        }
    }

    #[test]
    fn origin_request_drops_proxy_and_hop_by_hop_headers() {
        let head = parse_head(
            b"GET http://origin.test:8080/p?q HTTP/1.1\r\nHost: origin.test:8080\r\nProxy-Connection: keep-alive\r\n\
Proxy-Authorization: Basic eA==\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nExpect: 100-continue\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        let authority = Authority::parse("origin.test:8080", None).unwrap();
        let out = String::from_utf8(origin_request(&head, &authority, "/p?q", &no_body())).unwrap();
        assert_eq!(
            out,
            "GET /p?q HTTP/1.1\r\nHost: origin.test:8080\r\nAccept: */*\r\n\r\n"
        );
    }

    #[test]
    fn origin_request_adds_a_missing_host() {
        let head = parse_head(b"GET http://origin.test/ HTTP/1.0\r\n\r\n").unwrap();
        let authority = Authority::parse("origin.test:80", None).unwrap();
        let out = String::from_utf8(origin_request(&head, &authority, "/", &no_body())).unwrap();
        assert_eq!(out, "GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n");
    }

    #[test]
    fn origin_request_host_comes_from_the_target_and_framing_is_rebuilt() {
        let head = parse_head(
            b"POST http://origin.test/ HTTP/1.1\r\nHost: evil.test\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        let framing = request_framing(&head).unwrap();
        let authority = Authority::parse("origin.test:80", None).unwrap();
        let out = String::from_utf8(origin_request(&head, &authority, "/", &framing)).unwrap();
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\n\r\n"
        );
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_and_say_close() {
        let (resp, _) = parse_response_head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nContent-Length: 2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(resp.status, 200);
        let framing = forwarded_response_framing(&resp.headers).unwrap();
        assert_eq!(
            String::from_utf8(client_response(&resp, &framing, true)).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        assert!(parse_response_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn responses_with_both_framings_are_refused() {
        let (resp, _) = parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(forwarded_response_framing(&resp.headers).is_err());
    }
}
