//! The development gateway's connection type (plain TCP or TLS over it,
//! or either with its WebSocket pongs dropped on the way out: a gateway
//! that never answers pings) and a `poll(2)` readiness wait, its own
//! rather than the relay's.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// A gateway-side (or test-client-side) connection: plain or TLS.
#[derive(Debug)]
pub enum GatewayStream {
    Plain(TcpStream),
    Tls(Box<native_tls::TlsStream<TcpStream>>),
    /// The development gateway's own TLS (OpenSSL directly, so it can
    /// offer TLS 1.3 and tell which version was negotiated).
    ServerTls(Box<openssl::ssl::SslStream<TcpStream>>),
    /// `--no-pong`: the WebSocket frames written are passed on, but for
    /// pongs, which are dropped whole (the library answers every ping it
    /// reads; this is how a gateway that never answers them is played).
    NoPongs(Box<NoPongs>),
}

impl GatewayStream {
    /// The TCP socket underneath, for polling, timeouts and shutdown.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            GatewayStream::Plain(s) => s,
            GatewayStream::Tls(s) => s.get_ref(),
            GatewayStream::ServerTls(s) => s.get_ref(),
            GatewayStream::NoPongs(s) => s.inner.tcp(),
        }
    }

    /// The same stream, its outgoing WebSocket pongs dropped from now on
    /// (wrap it where the WebSocket starts: right after the upgrade).
    pub fn without_pongs(self) -> GatewayStream {
        GatewayStream::NoPongs(Box::new(NoPongs {
            inner: self,
            frames: FrameCursor::default(),
        }))
    }
}

/// A stream that drops the WebSocket pong frames written to it.
#[derive(Debug)]
pub struct NoPongs {
    inner: GatewayStream,
    frames: FrameCursor,
}

/// Where the outgoing byte stream stands in its WebSocket frames.
#[derive(Debug, Default, Clone, Copy)]
struct FrameCursor {
    /// The header read so far (at most 2 + 8 + 4 bytes).
    header: [u8; 14],
    have: usize,
    /// Payload bytes left in the current frame (0: in a header).
    left: u64,
    /// The current frame is a pong.
    pong: bool,
}

impl FrameCursor {
    /// The payload length once the header is whole.
    fn header_done(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let len7 = self.header[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        if self.have < 2 + ext + mask {
            return None;
        }
        let h = &self.header;
        Some(match len7 {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        })
    }

    /// Moves over the start of `buf` that belongs to one piece (one header
    /// or one payload): whether it is a pong's, and how many bytes.
    fn step(&mut self, buf: &[u8]) -> (bool, usize) {
        if self.left > 0 {
            let pong = self.pong;
            let n = buf
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX));
            self.left -= n as u64;
            if self.left == 0 {
                *self = FrameCursor::default();
            }
            return (pong, n);
        }
        if self.have == 0 {
            self.pong = buf.first().is_some_and(|b| b & 0x0f == 0x0a);
        }
        let pong = self.pong;
        let mut used = 0;
        for &b in buf {
            self.header[self.have] = b;
            self.have += 1;
            used += 1;
            if let Some(len) = self.header_done() {
                if len == 0 {
                    *self = FrameCursor::default();
                } else {
                    self.have = 0;
                    self.left = len;
                }
                break;
            }
        }
        (pong, used)
    }
}

impl Read for NoPongs {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for NoPongs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut dropped = 0;
        while dropped < buf.len() {
            let mut probe = self.frames;
            let (pong, n) = probe.step(&buf[dropped..]);
            if !pong {
                if dropped > 0 {
                    // Say the pong's bytes were taken; the rest comes next call.
                    return Ok(dropped);
                }
                let written = self.inner.write(&buf[..n])?;
                self.frames.step(&buf[..written]);
                return Ok(written);
            }
            self.frames = probe;
            dropped += n;
        }
        Ok(dropped)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Read for GatewayStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            GatewayStream::Plain(s) => s.read(buf),
            GatewayStream::Tls(s) => s.read(buf),
            GatewayStream::ServerTls(s) => s.read(buf),
            GatewayStream::NoPongs(s) => s.read(buf),
        }
    }
}

impl Write for GatewayStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            GatewayStream::Plain(s) => s.write(buf),
            GatewayStream::Tls(s) => s.write(buf),
            GatewayStream::ServerTls(s) => s.write(buf),
            GatewayStream::NoPongs(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            GatewayStream::Plain(s) => s.flush(),
            GatewayStream::Tls(s) => s.flush(),
            GatewayStream::ServerTls(s) => s.flush(),
            GatewayStream::NoPongs(s) => s.flush(),
        }
    }
}

/// Waits until `fd` is ready for `events` (`POLLIN`, `POLLOUT`); `false`
/// when `timeout` passed first, `None` waits for ever.
pub fn wait_ready(fd: RawFd, events: i16, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            // Rounded up, so a sub-millisecond wait does not spin.
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: one valid pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use tungstenite::protocol::Role;
    use tungstenite::{Message, WebSocket};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn no_pongs_drops_pongs_whole_and_passes_every_other_frame() {
        let (client_tcp, server_tcp) = pair();
        client_tcp
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut client = WebSocket::from_raw_socket(client_tcp, Role::Client, None);
        let stream = GatewayStream::Plain(server_tcp).without_pongs();
        let mut server = WebSocket::from_raw_socket(stream, Role::Server, None);
        // Both lengths with an extended length field, and the short one.
        let big = vec![7u8; 70_000];
        let mid = vec![9u8; 300];
        server
            .send(Message::Pong(b"dropped".to_vec().into()))
            .unwrap();
        server.send(Message::Binary(big.clone().into())).unwrap();
        server.send(Message::Pong(Vec::new().into())).unwrap();
        server.send(Message::Binary(mid.clone().into())).unwrap();
        // The library's own answer to a ping is dropped too.
        client
            .send(Message::Ping(b"are you there".to_vec().into()))
            .unwrap();
        assert!(matches!(server.read().unwrap(), Message::Ping(_)));
        server
            .send(Message::Binary(b"last".to_vec().into()))
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            match client.read().unwrap() {
                Message::Binary(b) => got.push(b.to_vec()),
                other => panic!("only data frames may arrive, got {other:?}"),
            }
        }
        assert_eq!(got, vec![big, mid, b"last".to_vec()]);
    }
}
