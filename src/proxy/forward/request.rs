//! The request half of a plain exchange: what the relay makes of the
//! client's head ([`Outbound`]), then the rewritten head and the body sent
//! on to the origin, the body's copy stopping early when the origin starts
//! answering.

use std::io::{self, BufRead, Write};
use std::net::TcpStream;

use super::rewrite::origin_request;
use super::upstream::Upstream;
use super::{BODY_TIMEOUT, Broken, ClientEnd, Failure, is_other_side, link_lost};
use crate::http::body::{BodyCopier, BodyError};
use crate::http::http1::{BodyFraming, Framing, has_token, header_values, request_framing};
use crate::http::reply;
use crate::http::request_head::{Authority, ProxyRequest, RequestHead};
use crate::sys::socket::{self, Mode};

/// A plain request as the relay sends it on: where to, and how.
pub(super) struct Outbound {
    pub(super) authority: Authority,
    /// The target in origin form.
    pub(super) path: String,
    /// How the request body is framed, and the one framing header for it.
    pub(super) framing: Framing,
    /// The client asked to close after this exchange.
    pub(super) client_closes: bool,
    /// The client waits for `100 Continue` before its body.
    pub(super) expects_continue: bool,
}

impl Outbound {
    /// Reads the client's head: an absolute-form target, one `Host` at
    /// most, a framing the relay can honour; else the status to answer.
    pub(super) fn from_head(head: &RequestHead) -> Result<Outbound, Failure> {
        let bad = |why: String| Failure::Answer(reply::BAD_REQUEST, why);
        let (authority, path) = match ProxyRequest::from_head(head) {
            Ok(ProxyRequest::Forward { authority, path }) => (authority, path),
            Ok(ProxyRequest::Connect(_)) => {
                return Err(bad(
                    "CONNECT must open its own connection to the proxy".into()
                ));
            }
            Err(e) => {
                let status = e.status().unwrap_or(reply::BAD_REQUEST);
                return Err(Failure::Answer(status, e.to_string()));
            }
        };
        if header_values(&head.headers, "host").count() > 1 {
            return Err(bad("more than one Host header".into()));
        }
        let framing = request_framing(head).map_err(|e| bad(e.to_string()))?;
        let client_closes = has_token(&head.headers, "connection", "close")
            || (head.minor_version == 0 && !has_token(&head.headers, "connection", "keep-alive"));
        Ok(Outbound {
            authority,
            path,
            framing,
            client_closes,
            expects_continue: has_token(&head.headers, "expect", "100-continue"),
        })
    }
}

/// Sends the rewritten head to the origin and, when the client waits for
/// it before a body, tells the client to go on.
pub(super) fn send_head(
    client: &TcpStream,
    up: &mut Upstream,
    head: &RequestHead,
    request: &Outbound,
) -> Result<(), Broken> {
    let body_wait = Mode::Blocking {
        read: Some(BODY_TIMEOUT),
        write: None,
    };
    socket::set_mode(client, body_wait).map_err(|e| Broken::keep(Failure::Close(e.to_string())))?;
    let authority = &request.authority;
    up.stream
        .get_mut()
        .write_all(&origin_request(
            head,
            authority,
            &request.path,
            &request.framing,
        ))
        .map_err(|e| Broken::keep(link_lost(authority, &e)))?;
    if request.expects_continue && request.framing.body != BodyFraming::None {
        (&*client)
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|e| Broken::keep(Failure::Close(e.to_string())))?;
    }
    Ok(())
}

/// Copies the request body to the origin until its end, or until the
/// origin starts answering (`Ok(false)`: the rest is sent while the answer
/// is passed on).
pub(super) fn send_body<R: BufRead>(
    client: &mut ClientEnd<'_, R>,
    up: &mut Upstream,
    body: &mut BodyCopier,
) -> Result<bool, Broken> {
    let authority = up.authority.clone();
    let lost = |e: &dyn std::fmt::Display| link_lost(&authority, e);
    client.watch.set(Some(up.stream.get_ref().raw_fd()));
    let body_complete = loop {
        match body.copy(client.reader, up.stream.get_mut()) {
            Ok(_) => break true,
            Err(BodyError::Read(e)) if is_other_side(&e) => {
                // Readable may be a ping or a keepalive: go on unless data came.
                if !up.stream.buffer().is_empty()
                    || up
                        .stream
                        .get_mut()
                        .has_data()
                        .map_err(|e| Broken::keep(lost(&e)))?
                {
                    break false;
                }
            }
            Err(BodyError::Read(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                return Err(Broken::spoil(Failure::Answer(
                    reply::REQUEST_TIMEOUT,
                    "request body not complete in time".into(),
                )));
            }
            Err(e @ (BodyError::Read(_) | BodyError::Eof)) => {
                return Err(Broken::spoil(Failure::Close(format!(
                    "client stopped sending its request body: {e}"
                ))));
            }
            Err(e @ BodyError::Malformed(_)) => {
                return Err(Broken::spoil(Failure::Answer(
                    reply::BAD_REQUEST,
                    format!("request body: {e}"),
                )));
            }
            Err(BodyError::Write(e)) => return Err(Broken::spoil(lost(&e))),
        }
    };
    client.watch.set(None);
    up.stream
        .get_mut()
        .flush()
        .map_err(|e| Broken::keep(lost(&e)))?;
    Ok(body_complete)
}
