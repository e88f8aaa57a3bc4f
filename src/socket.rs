//! Socket modes in one place: every change of a socket's blocking mode or
//! timeouts goes through [`set_mode`], which sets all three together, so no
//! socket keeps a timeout or a non-blocking flag a previous owner left.

use std::io;
use std::net::TcpStream;
use std::time::Duration;

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
