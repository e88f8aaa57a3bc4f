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

/// Waits at most `timeout` (at least a millisecond) until `first` or
/// `second` is readable or hung up: which of them are. Both `false`: the
/// time ran out.
pub fn wait_readable_either(
    first: RawFd,
    second: RawFd,
    timeout: Duration,
) -> io::Result<(bool, bool)> {
    let mut fds = [first, second].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: two valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if rc >= 0 {
            return Ok((fds[0].revents != 0, fds[1].revents != 0));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Resets the connection now: RST to the peer, whatever is queued either
/// way dropped, and any thread blocked on the socket woken with an error.
/// For a connection broken mid-stream, where a FIN would tell the peer that
/// what it got was complete. Done with `connect(2)` to `AF_UNSPEC`, which
/// disconnects a TCP socket; should the kernel refuse that, the socket is
/// shut down both ways with a reset on close (a FIN may then come first).
pub fn reset_now(socket: &TcpStream) -> io::Result<()> {
    reset_on_close(socket)?;
    // SAFETY: a zeroed sockaddr with only the family set, and its size.
    let rc = unsafe {
        let mut unspec: libc::sockaddr = std::mem::zeroed();
        unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            socket.as_raw_fd(),
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    log::debug!("cannot reset a connection at once ({err}); closing it with a reset");
    socket.shutdown(std::net::Shutdown::Both)
}

/// Sets `TCP_USER_TIMEOUT`: bytes sent and not acknowledged for `timeout`
/// (retransmissions, zero-window probes) end the connection with
/// `ETIMEDOUT` instead of the kernel's default of about 15 minutes.
pub fn set_user_timeout(socket: &TcpStream, timeout: Duration) -> io::Result<()> {
    let ms = libc::c_uint::try_from(timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: an open socket and a c_uint of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The socket's `TCP_USER_TIMEOUT` (zero: the kernel's default).
pub fn user_timeout(socket: &TcpStream) -> io::Result<Duration> {
    let mut ms: libc::c_uint = 0;
    let mut len = std::mem::size_of::<libc::c_uint>() as libc::socklen_t;
    // SAFETY: an open socket, a c_uint and its size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&mut ms as *mut libc::c_uint).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(Duration::from_millis(u64::from(ms)))
    } else {
        Err(io::Error::last_os_error())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn wait_readable_either_says_which_side_has_bytes() {
        let (a_near, a_far) = pair();
        let (b_near, b_far) = pair();
        let (a, b) = (a_far.as_raw_fd(), b_far.as_raw_fd());
        let quiet = Duration::from_millis(50);
        assert_eq!(wait_readable_either(a, b, quiet).unwrap(), (false, false));
        (&b_near).write_all(b"x").unwrap();
        assert_eq!(
            wait_readable_either(a, b, Duration::from_secs(5)).unwrap(),
            (false, true)
        );
        drop(a_near); // a hang-up counts as readable (EOF to read)
        assert_eq!(
            wait_readable_either(a, b, Duration::from_secs(5)).unwrap(),
            (true, true)
        );
    }

    #[test]
    fn reset_now_is_a_reset_for_the_peer_not_an_end_of_stream() {
        let (near, far) = pair();
        (&near).write_all(b"part of an answer").unwrap();
        thread::sleep(Duration::from_millis(100));
        reset_now(&near).unwrap();
        far.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let err = (&far)
            .read_to_end(&mut got)
            .expect_err("the peer saw a clean end of stream");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }

    #[test]
    fn reset_now_wakes_a_thread_blocked_writing_to_a_peer_that_does_not_read() {
        let (near, _far) = pair();
        let writer = {
            let near = near.try_clone().unwrap();
            thread::spawn(move || {
                let block = vec![0u8; 64 * 1024];
                // Blocks once the peer's window and both buffers are full.
                loop {
                    if let Err(e) = (&near).write_all(&block) {
                        return e;
                    }
                }
            })
        };
        thread::sleep(Duration::from_millis(300));
        assert!(!writer.is_finished(), "the writer should be blocked");
        reset_now(&near).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !writer.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(writer.is_finished(), "the blocked writer was not woken");
        assert!(writer.join().is_ok());
    }
}
