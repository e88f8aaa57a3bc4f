//! Plain HTTP through the relay: absolute-form requests
//! (`GET http://host/path HTTP/1.1`) are sent through a CONNECT tunnel to
//! `host:port` in origin form, without hop-by-hop and proxy headers, bodies
//! streamed both ways (Content-Length, chunked, or until close) and never
//! held whole. Later requests on the same client connection to the same
//! host reuse the tunnel; another host gets a new one. In selective mode
//! the route is CONNECT's ([`route_target`](crate::proxy::direct::route_target)): a host off the
//! include list is dialled by the relay itself, with the same refusals
//! ([`dial_target`](crate::proxy::direct::dial_target)), and the request goes over that connection
//! ([`Link::Direct`](link::Link::Direct)) as it would over a tunnel. So is a loopback
//! target in every mode, for the relay's own uid only (another gets `403`).
//!
//! Unlike a CONNECT tunnel this is one request, then one response, so a
//! single thread drives it over a blocking [`ChunkStream`]. An origin may
//! answer before the request body has ended: the answer is heard at once,
//! and while its body is passed on the rest of the request body still is
//! (each side's reads stop when the other side has data); the client
//! connection closes after such an exchange.
//!
//! Hostile origins: the response head, informational ones included, must
//! be complete within `Limits::response_head_timeout` (504 past it); a
//! response framed by both `Content-Length` and `Transfer-Encoding`, or by
//! differing lengths, is a 502 and nothing more goes over that client
//! connection. The rule for bytes an origin sends beyond its response
//! (which nothing asked for: a smuggled "next response"): a tunnel is used
//! again only if nothing at all arrived on it between the end of one
//! response and the next request; otherwise it is closed and the next
//! request opens a fresh one, so such bytes never answer a request.

mod head;
mod link;
mod request;
mod response;
mod rewrite;
mod upstream;

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use log::{info, warn};

use super::access::Owner;
use super::shared::Shared;
use crate::config::Limits;
use crate::http::body::BodyCopier;
use crate::http::http1::{BodyFraming, has_token};
use crate::http::reply::{self, Status};
use crate::http::request_head::{Authority, HeadError, RequestHead, parse_head, read_head_bytes};
use crate::proxy::monitor::Kind;
use crate::sys::socket::{self, Mode};

pub use link::ChunkStream;
use request::Outbound;
use upstream::Upstream;

/// How long a client may pause while sending a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a kept-alive client connection may sit idle between requests.
const IDLE_CLIENT: Duration = Duration::from_secs(60);

/// Why a forwarded request failed, and whether the client can still be told.
#[derive(Debug)]
pub(super) enum Failure {
    /// Nothing of a response was written yet: answer with this status.
    Answer(Status, String),
    /// The client got part of a response, or is gone: just close.
    Close(String),
    /// The gateway went silent past the liveness deadline mid-exchange:
    /// recorded as `gateway_unresponsive`, the client's connection reset
    /// (as a tunnel's is), since a close could pass for a whole answer.
    Unresponsive(String),
}

impl Failure {
    /// A read from the link failed with `e` (`what` says where): the
    /// gateway's silence past the liveness deadline, or else `otherwise`.
    pub(super) fn from_read(
        e: &io::Error,
        what: &str,
        otherwise: impl FnOnce(String) -> Failure,
    ) -> Failure {
        let why = format!("{what}: {e}");
        if link::is_unresponsive(e) {
            Failure::Unresponsive(why)
        } else {
            otherwise(why)
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Answer((code, _), why) => write!(f, "{why} (answered {code})"),
            Failure::Close(why) => write!(f, "{why} (closed)"),
            Failure::Unresponsive(why) => write!(f, "{why} (reset)"),
        }
    }
}

impl std::error::Error for Failure {}

/// One forwarded request and its response.
#[derive(Debug)]
pub(super) struct Exchange {
    status: u16,
    /// Request body bytes sent on.
    up: u64,
    /// Response body bytes passed to the client.
    down: u64,
    /// Whether the client connection stays open for another request.
    keep_open: bool,
}

/// The client side of a plain-HTTP connection. While a request body is
/// being forwarded, `watch` holds the tunnel's socket: a read then also
/// wakes when the origin starts answering, so an origin that answers early
/// (and never reads the rest) is heard rather than waited out.
struct WatchedClient<'a> {
    socket: &'a TcpStream,
    watch: &'a Cell<Option<RawFd>>,
}

/// A read of one side stopped because the other side has something: the
/// origin answering while the request body is read, or the client sending
/// more of its body while an early answer is passed on.
#[derive(Debug)]
pub(super) struct OtherSideReady;

impl fmt::Display for OtherSideReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the other side of the exchange has data")
    }
}

impl std::error::Error for OtherSideReady {}

pub(super) fn is_other_side(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<OtherSideReady>())
}

impl Read for WatchedClient<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(ws_fd) = self.watch.get() {
            let (client, origin) =
                socket::wait_readable_either(self.socket.as_raw_fd(), ws_fd, BODY_TIMEOUT)?;
            if !client && !origin {
                return Err(io::ErrorKind::TimedOut.into());
            }
            if !client {
                return Err(io::Error::other(OtherSideReady));
            }
        }
        self.socket.read(buf)
    }
}

/// A step's failure, and whether it spoiled the link to the origin: a
/// spoiled link is closed at once, before the client is answered; another
/// stays until the connection ends.
pub(super) struct Broken {
    failure: Failure,
    spoiled: bool,
}

impl Broken {
    /// A failure that leaves the link as it is.
    pub(super) fn keep(failure: Failure) -> Broken {
        Broken {
            failure,
            spoiled: false,
        }
    }

    /// A failure after which the link is not used again.
    pub(super) fn spoil(failure: Failure) -> Broken {
        Broken {
            failure,
            spoiled: true,
        }
    }
}

/// The link to `authority` failed: the client can still be told (502).
pub(super) fn link_lost(authority: &Authority, e: &dyn fmt::Display) -> Failure {
    Failure::Answer(
        reply::BAD_GATEWAY,
        format!("tunnel to {authority} failed: {e}"),
    )
}

/// The client's end of an exchange: its socket (written to directly), who
/// owns it (the loopback route asks), the buffered reader over it, and the
/// origin socket that reader watches.
pub(super) struct ClientEnd<'a, R> {
    socket: &'a TcpStream,
    owner: &'a Owner,
    reader: &'a mut R,
    watch: &'a Cell<Option<RawFd>>,
}

/// Serves a client connection whose first request is plain HTTP; returns
/// when the connection should close.
pub(in crate::proxy) fn serve(
    shared: &Shared,
    client: &TcpStream,
    owner: &Owner,
    first: RequestHead,
    leftover: Vec<u8>,
) {
    let (monitor, limits) = (&shared.monitor, &shared.limits);
    let watch = Cell::new(None);
    let watched = WatchedClient {
        socket: client,
        watch: &watch,
    };
    let mut reader = BufReader::with_capacity(32 * 1024, Cursor::new(leftover).chain(watched));
    let mut upstream: Option<Upstream> = None;
    let mut head = first;
    loop {
        let started = Instant::now();
        let mut end = ClientEnd {
            socket: client,
            owner,
            reader: &mut reader,
            watch: &watch,
        };
        let outcome = forward_one(shared, &mut end, &mut upstream, &head);
        watch.set(None);
        match outcome {
            Ok(done) => {
                monitor.http_served(done.up, done.down);
                info!(
                    "http {} {} -> {}: up {} B, down {} B, {:.3} s",
                    head.method,
                    head.target,
                    done.status,
                    done.up,
                    done.down,
                    started.elapsed().as_secs_f64()
                );
                if !done.keep_open {
                    return;
                }
            }
            Err(Failure::Answer(status, why)) => {
                warn!("http {} {}: {why}", head.method, head.target);
                reply::answer(client, status, &why);
                return;
            }
            Err(Failure::Close(why)) => {
                info!("http {} {}: {why}", head.method, head.target);
                return;
            }
            Err(Failure::Unresponsive(why)) => {
                warn!("http {} {}: {why}", head.method, head.target);
                let _ = socket::reset_now(client);
                return;
            }
        }
        // The next request on this connection, if the client sends one.
        let idle = Mode::Blocking {
            read: Some(IDLE_CLIENT),
            write: None,
        };
        if socket::set_mode(client, idle).is_err() {
            return;
        }
        head = match read_head_bytes(&mut reader, limits.max_head_bytes)
            .and_then(|bytes| parse_head(&bytes))
        {
            Ok(head) => head,
            Err(HeadError::Closed(_) | HeadError::Timeout) => return,
            Err(e) => {
                monitor.head_failed(&e, None);
                if let Some(status) = e.status() {
                    reply::answer(client, status, &e.to_string());
                }
                return;
            }
        };
    }
}

/// Forwards one request and its response, over the link kept from the last
/// request when it can carry this one; a link that cannot carry the next
/// is closed.
fn forward_one<R: BufRead>(
    shared: &Shared,
    client: &mut ClientEnd<'_, R>,
    upstream: &mut Option<Upstream>,
    head: &RequestHead,
) -> Result<Exchange, Failure> {
    let request = Outbound::from_head(head)?;
    let failed = |failure: Failure| {
        if let Failure::Unresponsive(why) = &failure {
            let host = request.authority.to_string();
            shared.monitor.record(Kind::GatewayUnresponsive, why, &host);
        }
        failure
    };
    let up = upstream::link_for(
        shared,
        (client.socket, client.owner),
        upstream,
        &request.authority,
    )
    .map_err(failed)?;
    match exchange(&shared.limits, client, up, head, &request) {
        Ok((done, reusable)) => {
            if !reusable {
                *upstream = None;
            }
            Ok(done)
        }
        Err(broken) => {
            if broken.spoiled {
                *upstream = None;
            }
            Err(failed(broken.failure))
        }
    }
}

/// The exchange over the link: the request head and body on, the response
/// head and body back (the rest of the request body with it, after an early
/// answer). Also says whether the link can carry another request.
fn exchange<R: BufRead>(
    limits: &Limits,
    client: &mut ClientEnd<'_, R>,
    up: &mut Upstream,
    head: &RequestHead,
    request: &Outbound,
) -> Result<(Exchange, bool), Broken> {
    let authority = &request.authority;
    request::send_head(client.socket, up, head, request)?;
    let mut body = BodyCopier::new(request.framing.body);
    let body_complete = request::send_body(client, up, &mut body)?;

    let response = response::read_final_head(client.socket, up, limits, request.expects_continue)?;
    let (framing, body_framing) = response::framing(head, &response, authority)?;
    let origin_closes = body_framing == BodyFraming::UntilClose
        || response.status == 101
        || has_token(&response.headers, "connection", "close")
        || !body_complete;
    let close = request.client_closes || origin_closes;
    response::send_head(client.socket, &response, &framing, close)?;
    let down = response::relay_body(client, up, &mut body, body_framing, body_complete)?;

    let done = Exchange {
        status: response.status,
        up: body.copied(),
        down,
        keep_open: !close,
    };
    Ok((done, up.reusable_after(origin_closes)))
}
