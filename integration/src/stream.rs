//! The development gateway's connection type (plain TCP or TLS over it)
//! and a `poll(2)` readiness wait, its own rather than the relay's.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// A gateway-side (or test-client-side) connection: plain or TLS.
#[derive(Debug)]
pub enum GatewayStream {
    Plain(TcpStream),
    Tls(Box<native_tls::TlsStream<TcpStream>>),
}

impl GatewayStream {
    /// The TCP socket underneath, for polling, timeouts and shutdown.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            GatewayStream::Plain(s) => s,
            GatewayStream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for GatewayStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            GatewayStream::Plain(s) => s.read(buf),
            GatewayStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for GatewayStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            GatewayStream::Plain(s) => s.write(buf),
            GatewayStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            GatewayStream::Plain(s) => s.flush(),
            GatewayStream::Tls(s) => s.flush(),
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
