//! The answers the relay writes itself, all in one style: `text/plain;
//! charset=utf-8`, a `Content-Length`, `Connection: close`, and a body of
//! two lines: the problem, then where to look for more.
//!
//! They are only ever written before any byte from the gateway reached the
//! client; after that the relay just closes.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::sys::socket::{self, Mode};
use crate::sys::text::sanitize;

/// A status line's code and reason.
pub type Status = (u16, &'static str);

pub const BAD_REQUEST: Status = (400, "Bad Request");
pub const FORBIDDEN: Status = (403, "Forbidden");
pub const METHOD_NOT_ALLOWED: Status = (405, "Method Not Allowed");
pub const REQUEST_TIMEOUT: Status = (408, "Request Timeout");
pub const HEAD_TOO_LARGE: Status = (431, "Request Header Fields Too Large");
pub const BAD_GATEWAY: Status = (502, "Bad Gateway");
pub const GATEWAY_TIMEOUT: Status = (504, "Gateway Timeout");
pub const SERVICE_UNAVAILABLE: Status = (503, "Service Unavailable");

/// The second line of every error body.
const SEE_STATUS: &str =
    "GET /__agentproxy/status on this port shows the proxy's state and recent failures.";

/// How long writing an answer may take, and how long (in all) the unread
/// rest of the request is drained after it.
const WRITE_BOUND: Duration = Duration::from_secs(2);
const DRAIN_BOUND: Duration = Duration::from_millis(500);
const DRAIN_MAX: usize = 256 * 1024;

/// A whole error response. Control characters in `problem` become `?` so
/// nothing a client sent can split the body's lines.
///
/// ```
/// let r = String::from_utf8(ccr_relay::http::reply::error_response((400, "Bad Request"), "no\r\nway")).unwrap();
/// assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"));
/// assert!(r.contains("\r\n\r\nccr-relay: no??way\nGET /__agentproxy/status"));
/// ```
pub fn error_response((code, reason): Status, problem: &str) -> Vec<u8> {
    let problem = sanitize(problem, usize::MAX);
    let body = format!("ccr-relay: {problem}\n{SEE_STATUS}\n");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a client gets when the gateway ends its tunnel before sending anything.
pub fn silent_gateway() -> &'static [u8] {
    static REPLY: OnceLock<Vec<u8>> = OnceLock::new();
    REPLY.get_or_init(|| error_response(BAD_GATEWAY, "gateway closed the tunnel at once"))
}

/// Answers a client the relay cannot serve, then closes without losing the
/// answer: write side first, then a short drain so the close sends no RST.
pub fn answer(client: &TcpStream, status: Status, problem: &str) {
    send_and_close(client, &error_response(status, problem));
}

/// Writes a whole `response` and closes as [`answer`] does.
pub fn send_and_close(client: &TcpStream, response: &[u8]) {
    if socket::set_mode(client, Mode::bounded(WRITE_BOUND)).is_err() {
        return;
    }
    if (&*client).write_all(response).is_err() {
        return;
    }
    let _ = client.shutdown(Shutdown::Write);
    // Bounded in all, not per read: a client trickling bytes (another uid
    // refused) must not hold the connection's thread and slot.
    let deadline = Instant::now() + DRAIN_BOUND;
    let _ = socket::set_mode(
        client,
        Mode::Blocking {
            read: Some(DRAIN_BOUND),
            write: None,
        },
    );
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || client.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match (&*client).read(&mut sink) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// Answers a client the relay will not serve at all (over a connection
/// limit) without blocking: the answer goes into the socket's empty send
/// buffer or not at all, whatever the client sent is dropped unread (so
/// the close is a FIN, not a reset), and the socket closes when dropped.
pub fn refuse_now(client: &TcpStream, status: Status, problem: &str) {
    if client.set_nonblocking(true).is_err() {
        return;
    }
    let _ = (&*client).write(&error_response(status, problem));
    let _ = client.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match (&*client).read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn refuse_now_answers_and_closes_without_waiting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"CONNECT a:1 HTTP/1.1\r\n").unwrap();
        let (server, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let started = std::time::Instant::now();
        refuse_now(&server, SERVICE_UNAVAILABLE, "too many");
        drop(server);
        assert!(started.elapsed() < Duration::from_millis(200));
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        let got = String::from_utf8(got).unwrap();
        assert!(
            got.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{got}"
        );
        assert!(got.contains("\r\n\r\nccr-relay: too many\n"), "{got}");
    }

    #[test]
    fn answer_drains_for_a_bounded_time_in_all() {
        // A client that keeps trickling bytes after its answer (another
        // uid refused, holding a connection slot) cannot keep the
        // connection's thread draining: the drain is bounded in all, not
        // per read.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trickle = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let end = std::time::Instant::now() + Duration::from_secs(10);
                while !stop.load(std::sync::atomic::Ordering::SeqCst)
                    && std::time::Instant::now() < end
                    && client.write_all(b"x").is_ok()
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let started = std::time::Instant::now();
        answer(&server, FORBIDDEN, "not yours");
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        trickle.join().unwrap();
        assert!(
            took < DRAIN_BOUND + Duration::from_millis(500),
            "answer drained a trickling client for {took:?}"
        );
    }
}
