//! Socket modes in one place: every change of a socket's blocking mode or
//! timeouts goes through [`set_mode`], which sets all three together, so no
//! socket keeps a timeout or a non-blocking flag a previous owner left.
//! Waits with a deadline use [`wait_ready`] (`poll(2)`) and leave the
//! socket's mode alone.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// How a socket's reads and writes wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Blocking, each read and write bounded by its timeout (`None`: unbounded).
    Blocking {
        read: Option<Duration>,
        write: Option<Duration>,
    },
    /// Non-blocking: the caller waits with `poll(2)`.
    NonBlocking,
}

impl Mode {
    /// Blocking with no timeouts.
    pub const BLOCKING: Mode = Mode::Blocking {
        read: None,
        write: None,
    };

    /// Blocking, reads and writes both bounded by `timeout`.
    pub fn bounded(timeout: Duration) -> Mode {
        Mode::Blocking {
            read: Some(timeout),
            write: Some(timeout),
        }
    }
}

/// Puts `socket` in `mode`. A zero timeout (which `std` refuses) is
/// raised to one millisecond: the caller's deadline has all but passed.
pub fn set_mode(socket: &TcpStream, mode: Mode) -> io::Result<()> {
    let positive = |t: Option<Duration>| t.map(|t| t.max(Duration::from_millis(1)));
    match mode {
        Mode::Blocking { read, write } => {
            socket.set_nonblocking(false)?;
            socket.set_read_timeout(positive(read))?;
            socket.set_write_timeout(positive(write))
        }
        Mode::NonBlocking => {
            socket.set_read_timeout(None)?;
            socket.set_write_timeout(None)?;
            socket.set_nonblocking(true)
        }
    }
}

/// Waits until `fd` has one of `events` (or an error or hang-up, which the
/// next read or write reports). `Ok(false)` when the timeout passed first.
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
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up, so a sub-millisecond wait does not spin.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: one valid pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return Ok(true);
        }
        if rc == 0 {
            return Ok(false);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Makes the socket's close send RST (SO_LINGER 0), whatever it still holds.
pub fn reset_on_close(socket: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: an open socket and a linger struct of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
