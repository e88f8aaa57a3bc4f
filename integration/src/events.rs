//! The development gateway's event file: one line per thing a test may
//! want to assert on, appended as it happens.
//!
//! Lines (the first word names the event):
//!
//! ```text
//! upgrade ok ws=<n>
//! upgrade refused <status> <why> ws=<n>
//! upgrade stalled
//! first-chunk "<the first chunk's data, escaped with escape()>"
//! connect <host:port>                  (credentials checked, about to dial)
//! tunnel refused <status> <why>        (407, 400, 502 answered in the tunnel)
//! probe                                (a WebSocket closed before any CONNECT: the
//!                                       relay's start-up probe)
//! keepalive                            (an empty chunk came in)
//! chunk-in <len>                       (only with --events-verbose)
//! ping-sent
//! pong-received
//! tunnel-end <host:port> in=<n> out=<n> end=<why, spaces as _>
//! ```
//!
//! `upgrade ok` and `upgrade refused` end with ` ws=<n>`: the upgrade's
//! number, counting every upgrade request on the WebSocket path (refused
//! ones too, `--refuse-first` ones as `upgrade refused 503 --refuse-first`).
//!
//! The agent-proxy generation (`--generation agent-proxy`) adds, with
//! `<tag>` = ` ws=<n> tunnel=<k>` (k counts tunnels on that WebSocket):
//!
//! ```text
//! v2 first-message ws=<n> hex=<the first message's bytes, lower-case hex>
//! v2 hello ws=<n> version=<v>          (late: a HELLO came)
//! v2 hello-ack ws=<n>                  (late: HELLO_ACK 10 02 18 02 sent)
//! v2 hello-ignored ws=<n> version=<v>  (early)
//! v2 no-hello ws=<n>                   (the first message was data)
//! v2 control-dropped ws=<n> control=<c>   (v1-only)
//! v2 control-ignored ws=<n> control=<c>   (between tunnels)
//! v2 preamble<tag> "<the CONNECT message's data, escaped>"
//! v2 client-process<tag> <X-Agent-Proxy-Client-Process value, or ->
//! connect <host:port>
//! control-ignored <c><tag>             (a control message during a tunnel)
//! fin-sent<tag>                        (late: the target ended, FIN sent)
//! data-after-fin <len><tag>            (discarded)
//! tunnel-end <host:port> in=<n> out=<n> end=<why><tag>
//! v2 fin-ack<tag>                      (FIN_ACK came: the WebSocket is reused)
//! v2 fin-ack-missing<tag>
//! v2 idle-close ws=<n> after_ms=<ms>   (--close-idle-after)
//! v2 reuse-fault <fault><tag>          (--on-reuse: a tunnel after the first
//!                                       on a WebSocket fails; cut, silent or
//!                                       answer-then-cut, whose `connect` follows)
//! v2 swallowed<tag> "<data, escaped>"  (--on-reuse: data read and dropped)
//! v2 ws-end ws=<n> tunnels=<k> why=<why, spaces as _>
//! ```
//!
//! In `tunnel-end`, `in` counts data bytes written to the target (the bytes
//! after the CONNECT head in the first chunk included) and `out` data bytes
//! read from the target (the gateway's own `200` head not included). In
//! MITM mode the "target" is the MITM handler, so these count the bytes
//! the relay's side sent and got (TLS records, for a TLS tunnel).
//!
//! MITM mode (`--mode mitm`) adds, with `<host>` the CONNECT's host
//! without port (lower case; IPv6 without brackets):
//!
//! ```text
//! mitm <host> tls                      (first client byte 0x16: TLS both sides)
//! mitm <host> plain                    (anything else: plain HTTP both sides)
//! mitm <host> leaf-issued              (first time a leaf is made for <host>)
//! mitm <host> client-tls-failed        (the client rejected the handshake)
//! mitm <host> upstream-tls-failed <why>  (origin TLS failed; the client got 502)
//! mitm <host> inject <Header-Name>     (once per request and injected header)
//! mitm <host> end <why>                (the MITM handler is done)
//! ```
//!
//! Each line is written with one `write` on a file opened for appending,
//! so lines from concurrent tunnels never interleave within a line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

/// Where events go: a file, or nowhere.
#[derive(Debug, Default)]
pub struct EventLog {
    file: Option<Mutex<File>>,
    verbose: bool,
}

impl EventLog {
    /// Events are dropped (no `--events`).
    pub fn none() -> EventLog {
        EventLog::default()
    }

    /// Appends to `path`, creating it. `verbose` adds a line per data chunk.
    pub fn open(path: &Path, verbose: bool) -> io::Result<EventLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(EventLog {
            file: Some(Mutex::new(file)),
            verbose,
        })
    }

    /// Whether per-chunk events are wanted.
    pub fn verbose(&self) -> bool {
        self.verbose && self.file.is_some()
    }

    /// Appends one line (a newline is added).
    pub fn record(&self, line: &str) {
        log::debug!("event: {line}");
        if let Some(file) = &self.file {
            let mut text = String::with_capacity(line.len() + 1);
            text.push_str(line);
            text.push('\n');
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_all(text.as_bytes()) {
                log::warn!("cannot write the events file: {e}");
            }
        }
    }
}

/// Bytes as one quoted line: printable ASCII as is, everything else
/// escaped the way Rust escapes byte strings (`\r`, `\n`, `\"`, `\x16`).
///
/// ```
/// assert_eq!(
///     ccr_integration::events::escape(b"CONNECT a:1 HTTP/1.1\r\n\r\n\x16"),
///     r#""CONNECT a:1 HTTP/1.1\r\n\r\n\x16""#
/// );
/// ```
pub fn escape(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}
