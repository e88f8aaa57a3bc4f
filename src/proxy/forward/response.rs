//! The response half of a plain exchange: response heads read from the
//! origin under one deadline (informational ones passed on), the final
//! head checked and rewritten for the client, and the body relayed while
//! the rest of the request body still goes on after an early answer.

use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::head::read_response;
use super::rewrite::client_response;
use super::upstream::Upstream;
use super::{Broken, ClientEnd, Failure, is_other_side};
use crate::config::Limits;
use crate::http::body::{BodyCopier, BodyError};
use crate::http::http1::{BodyFraming, Framing, ResponseHead, forwarded_response_framing};
use crate::http::reply;
use crate::http::request_head::{Authority, RequestHead};

/// Reads the origin's final response head; informational ones (but 101)
/// are passed on as they come, save the `100 Continue` the relay already
/// sent. The whole head, informational ones included, has one deadline.
pub(super) fn read_final_head(
    client: &TcpStream,
    up: &mut Upstream,
    limits: &Limits,
    expects_continue: bool,
) -> Result<ResponseHead, Broken> {
    up.stream
        .get_mut()
        .set_deadline(Some(Instant::now() + limits.response_head_timeout));
    let who = format!("the origin {}", up.authority);
    let response = loop {
        let (bytes, resp) = read_response(&mut up.stream, &who).map_err(Broken::spoil)?;
        if (100..200).contains(&resp.status) && resp.status != 101 {
            if !expects_continue || resp.status != 100 {
                (&*client)
                    .write_all(&bytes)
                    .map_err(|e| Broken::keep(Failure::Close(e.to_string())))?;
            }
            continue;
        }
        break resp;
    };
    up.stream.get_mut().set_deadline(None);
    Ok(response)
}

/// How the response is framed (its header for the client, and how its
/// body is read); a response the relay cannot frame is a 502.
pub(super) fn framing(
    head: &RequestHead,
    response: &ResponseHead,
    authority: &Authority,
) -> Result<(Framing, BodyFraming), Broken> {
    let framing = forwarded_response_framing(&response.headers).map_err(|e| {
        // What follows cannot be told apart from a next response.
        Broken::spoil(Failure::Answer(
            reply::BAD_GATEWAY,
            format!("{authority}: {e}"),
        ))
    })?;
    let no_body = head.method == "HEAD" || matches!(response.status, 101 | 204 | 304);
    let body_framing = if no_body {
        BodyFraming::None
    } else {
        framing.body
    };
    Ok((framing, body_framing))
}

/// Writes the rewritten response head to the client.
pub(super) fn send_head(
    client: &TcpStream,
    response: &ResponseHead,
    framing: &Framing,
    close: bool,
) -> Result<(), Broken> {
    let mut to_client = client;
    to_client
        .write_all(&client_response(response, framing, close))
        .map_err(|e| Broken::keep(Failure::Close(e.to_string())))
}

/// Passes the response body to the client: the bytes passed on. After an
/// early answer the rest of the request body is still passed on (an origin
/// may stream its answer while it reads): the response body's reads stop
/// whenever the client has more to send.
pub(super) fn relay_body<R: BufRead>(
    client: &mut ClientEnd<'_, R>,
    up: &mut Upstream,
    body: &mut BodyCopier,
    body_framing: BodyFraming,
    body_complete: bool,
) -> Result<u64, Broken> {
    let mut response_body = BodyCopier::new(body_framing);
    let mut request_done = body_complete;
    let client_fd = client.socket.as_raw_fd();
    let mut to_client = client.socket;
    loop {
        up.stream
            .get_mut()
            .set_watch((!request_done).then_some(client_fd));
        let got = response_body.copy(&mut up.stream, &mut to_client);
        up.stream.get_mut().set_watch(None);
        match got {
            Ok(n) => return Ok(n),
            Err(BodyError::Read(e)) if is_other_side(&e) => {
                if send_more_body(client, up, body)? {
                    request_done = true;
                }
            }
            Err(BodyError::Read(e)) => {
                return Err(Broken::spoil(Failure::from_read(
                    &e,
                    "response body cut off",
                    Failure::Close,
                )));
            }
            Err(e) => {
                return Err(Broken::spoil(Failure::Close(format!(
                    "response body cut off: {e}"
                ))));
            }
        }
    }
}

/// Sends on what the client has of the rest of its request body while an
/// early answer is passed on: whether the body has ended.
fn send_more_body<R: BufRead>(
    client: &mut ClientEnd<'_, R>,
    up: &mut Upstream,
    body: &mut BodyCopier,
) -> Result<bool, Broken> {
    client.watch.set(Some(up.stream.get_ref().raw_fd()));
    let sent = body.copy(client.reader, up.stream.get_mut());
    client.watch.set(None);
    match sent {
        Ok(_) => {
            let authority = &up.authority;
            up.stream.get_mut().flush().map_err(|e| {
                Broken::keep(Failure::Close(format!("tunnel to {authority} failed: {e}")))
            })?;
            Ok(true)
        }
        Err(BodyError::Read(e)) if is_other_side(&e) => Ok(false),
        Err(e) => Err(Broken::spoil(Failure::Close(format!(
            "request body after an early answer: {e}"
        )))),
    }
}
