//! HTTP/1 as the relay speaks it: heads and framing on `httparse`
//! ([`http1`]), what a client asks the proxy ([`request_head`]), the
//! relay's own answers ([`reply`]), and the one host-name rule ([`host`]).

pub mod host;
pub mod http1;
pub mod reply;
pub mod request_head;
