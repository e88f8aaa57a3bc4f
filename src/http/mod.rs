//! HTTP/1 as the relay speaks it: heads and framing on `httparse`
//! ([`http1`]), bodies as that framing says ([`body`]), what a client asks
//! the proxy ([`request_head`]), the relay's own answers ([`reply`]), the
//! one host-name rule ([`host`]), and its one small client ([`client`]:
//! the CA fetch, `ccr-relay status`).

pub mod body;
pub mod client;
pub mod host;
pub mod http1;
pub mod reply;
pub mod request_head;
