//! The origin a client connection's plain requests go to, and the link
//! they go over: kept for the next request to the same origin while it is
//! clean, otherwise replaced by a fresh tunnel through the gateway or a
//! connection the relay dials itself (selective mode, or loopback for the
//! relay's own uid, per the route).

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use log::warn;

use super::Failure;
use super::head::read_response;
use super::link::{ChunkStream, DirectStream, Link};
use crate::http::reply;
use crate::http::request_head::Authority;
use crate::proxy::access::Owner;
use crate::proxy::direct;
use crate::proxy::policy;
use crate::proxy::route::Route;
use crate::proxy::shared::Shared;
use crate::tunnel::dial;

/// The link plain requests to one origin go through.
pub(super) struct Upstream {
    pub(super) authority: Authority,
    pub(super) stream: BufReader<Link>,
}

impl Upstream {
    /// Whether the tunnel can carry another request: nothing arrived since
    /// the last response ended (no unrequested bytes, no close).
    fn is_clean(&mut self) -> bool {
        if !self.stream.buffer().is_empty() {
            return false;
        }
        let chunks = self.stream.get_mut();
        !chunks.has_pending() && matches!(chunks.receive_ready(), Ok(false))
    }

    /// Whether the link may carry the next request once a response has
    /// been passed on: not if the origin closes it, nor if it sent bytes
    /// beyond its response, which answer nothing asked.
    pub(super) fn reusable_after(&mut self, origin_closes: bool) -> bool {
        if origin_closes || !self.stream.buffer().is_empty() || self.stream.get_ref().has_pending()
        {
            if !origin_closes {
                warn!(
                    "http {}: bytes after the response; the tunnel is closed",
                    self.authority
                );
            }
            return false;
        }
        true
    }
}

/// The link to `authority` for the next request: the one kept from the
/// last request if it goes to the same origin and is clean, else a new one
/// along the route (the old one closed first).
pub(super) fn link_for<'u>(
    shared: &Shared,
    (client, owner): (&TcpStream, &Owner),
    upstream: &'u mut Option<Upstream>,
    authority: &Authority,
) -> Result<&'u mut Upstream, Failure> {
    if upstream
        .as_mut()
        .is_none_or(|u| u.authority != *authority || !u.is_clean())
    {
        *upstream = None;
        *upstream = Some(match direct::route_target(shared, authority) {
            Route::Tunnel => open_upstream(shared, client, authority)?,
            route => open_direct(shared, (route, owner), authority)?,
        });
    }
    upstream
        .as_mut()
        .ok_or_else(|| Failure::Close("no tunnel".into()))
}

/// Opens a tunnel to `authority` and checks the gateway's answer to the
/// CONNECT. A refusal (say, a blocked host) is passed to the client as the
/// gateway wrote it.
fn open_upstream(
    shared: &Shared,
    client: &TcpStream,
    authority: &Authority,
) -> Result<Upstream, Failure> {
    let (gateway, limits, monitor) = (&*shared.gateway, &shared.limits, &shared.monitor);
    let request = dial::Request {
        target: authority,
        client_process: &|_| "<plain-http>".to_string(),
        leftover: &[],
    };
    // Each plain-HTTP tunnel is closed after use, never pooled.
    let opened = dial::open(gateway, limits, &request).map_err(|e| {
        warn!("http tunnel {authority}: {e}");
        monitor.open_failed(gateway.generation, &e, &authority.to_string());
        Failure::Answer(e.status(), e.to_string())
    })?;
    monitor.opened(&opened, &authority.to_string());
    let stream = ChunkStream::new(
        opened.ws,
        opened.wire,
        opened.answer,
        limits.max_chunk,
        limits.keepalive_interval,
        Some(gateway.liveness.clone()),
    )
    .map_err(|e| Failure::Answer(reply::BAD_GATEWAY, e.to_string()))?;
    let mut stream = BufReader::with_capacity(64 * 1024, Link::Tunnel(Box::new(stream)));
    stream
        .get_mut()
        .set_deadline(Some(Instant::now() + limits.response_head_timeout));
    // The deadline stays on while a refusal's body is passed on.
    let (bytes, resp) = read_response(&mut stream, "the gateway (answering the CONNECT)")?;
    if !(200..300).contains(&resp.status) {
        monitor.check_answer(&bytes, &authority.to_string());
        // The head and what of the body has already arrived: a denial's
        // reason, named while the client still waits for the answer.
        let answer = [&bytes[..], stream.buffer()].concat();
        if let Some(reason) = policy::denial_reason(&answer) {
            let program = policy::program_of(client);
            monitor.policy_denied(&authority.host.to_string(), &program, &reason);
        }
        let mut to_client = client;
        let _ = to_client.write_all(&bytes);
        let _ = io::copy(&mut stream.take(1 << 20), &mut to_client);
        return Err(Failure::Close(format!(
            "gateway refused {authority}: {}",
            resp.status_line()
        )));
    }
    stream.get_mut().set_deadline(None);
    Ok(Upstream {
        authority: authority.clone(),
        stream,
    })
}

/// Dials `authority` directly (selective mode, a host off the include
/// list; loopback for the relay's own uid), refusing what a direct CONNECT
/// refuses, with its answers.
fn open_direct(
    shared: &Shared,
    (route, owner): (Route, &Owner),
    authority: &Authority,
) -> Result<Upstream, Failure> {
    let socket = direct::dial_target(&shared.monitor, route, owner, authority)
        .map_err(|e| Failure::Answer(e.status(), e.to_string()))?;
    let stream = DirectStream::new(socket);
    Ok(Upstream {
        authority: authority.clone(),
        stream: BufReader::with_capacity(64 * 1024, Link::Direct(stream)),
    })
}
