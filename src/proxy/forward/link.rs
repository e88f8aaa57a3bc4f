//! The link to an origin that plain requests go over: a tunnel's WebSocket
//! read and written as a blocking byte stream ([`ChunkStream`]), or a
//! connection the relay dialled itself ([`DirectStream`]), both behind
//! [`Link`]. Reads of either are bounded by a deadline while one is set and
//! stop with [`OtherSideReady`] when the watched client socket has data.
//!
//! A tunnel's reads also keep the gateway's liveness
//! ([`crate::gateway::liveness`]), as a CONNECT tunnel's pump does: a Ping
//! after one keepalive interval with nothing from the gateway, and, once
//! the gateway is known to answer pings, [`GatewayUnresponsive`] when
//! nothing at all comes back within the deadline.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use log::debug;
use tungstenite::{Bytes, Message, WebSocket};

use super::{IDLE_CLIENT, OtherSideReady};
use crate::gateway::GatewayStream;
use crate::gateway::chunk;
use crate::gateway::liveness::{self, Liveness, Step, Watch};
use crate::gateway::wire::{Incoming, Wire};
use crate::sys::socket::{self, Mode};

/// How long [`ChunkStream::has_data`] waits for a message already on its way.
const PEEK_WAIT: Duration = Duration::from_millis(50);

/// The shortest read timeout set (a zero one would mean none).
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Nothing came back from the gateway within this deadline of a Ping (a
/// gateway known to answer them): frozen. Carried inside an `io::Error`.
#[derive(Debug)]
pub(super) struct GatewayUnresponsive(pub(super) Duration);

impl fmt::Display for GatewayUnresponsive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gateway unresponsive: nothing back within {} of a WebSocket Ping",
            liveness::show_secs(self.0)
        )
    }
}

impl std::error::Error for GatewayUnresponsive {}

/// Whether `e` (or the error it wraps) is [`GatewayUnresponsive`].
pub(super) fn is_unresponsive(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<GatewayUnresponsive>())
}

/// A tunnel's WebSocket as a blocking byte stream: writes become chunks,
/// reads return the data of incoming chunks. While a read waits, a
/// keepalive goes out every interval.
pub struct ChunkStream {
    ws: WebSocket<GatewayStream>,
    wire: Wire,
    pending: Bytes,
    max_chunk: usize,
    keepalive: Duration,
    eof: bool,
    /// While set, a read that would wait returns [`OtherSideReady`] as soon
    /// as this socket (the client's) is readable and the tunnel is not.
    watch: Option<RawFd>,
    /// While set, a read still waiting at this instant fails with `TimedOut`.
    deadline: Option<Instant>,
    /// The gateway's liveness; `None`: no Pings.
    liveness: Option<Liveness>,
    /// This WebSocket's liveness: when the gateway was last heard, a Ping out.
    alive: Watch,
    /// A frame arrived since the last look at `alive`.
    heard: bool,
    /// When the last message went to the gateway (keepalives are due an
    /// interval after it).
    last_sent: Instant,
    /// The read timeout now set on the socket.
    read_timeout: Duration,
}

impl ChunkStream {
    /// A stream over an opened tunnel: `ws` read by `wire`, `pending` the
    /// data already received (the start of the gateway's answer).
    pub fn new(
        ws: WebSocket<GatewayStream>,
        wire: Wire,
        pending: Bytes,
        max_chunk: usize,
        keepalive: Duration,
        liveness: Option<Liveness>,
    ) -> io::Result<ChunkStream> {
        socket::set_mode(ws.get_ref().tcp(), read_wait(keepalive))?;
        let now = Instant::now();
        Ok(ChunkStream {
            ws,
            wire,
            pending,
            max_chunk: max_chunk.max(1),
            keepalive,
            eof: false,
            watch: None,
            deadline: None,
            liveness,
            alive: Watch::new(now),
            heard: false,
            last_sent: now,
            read_timeout: keepalive,
        })
    }

    fn send(&mut self, encoded: Vec<u8>) -> io::Result<()> {
        self.ws
            .send(Message::Binary(encoded.into()))
            .map_err(ws_to_io)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Sets the socket's read timeout to `wait`, unless it is set already.
    fn set_read_timeout(&mut self, wait: Duration) -> io::Result<()> {
        let wait = wait.max(MIN_WAIT);
        if wait != self.read_timeout {
            socket::set_mode(self.ws.get_ref().tcp(), read_wait(wait))?;
            self.read_timeout = wait;
        }
        Ok(())
    }

    /// Called when a read waited in vain: pings a gateway silent for an
    /// interval, gives up on one that let a Ping go unanswered past the
    /// deadline, and sends a keepalive when one is due.
    fn tend(&mut self) -> io::Result<()> {
        let now = Instant::now();
        if let Some(liveness) = &self.liveness {
            if std::mem::take(&mut self.heard) {
                self.alive.heard(now);
            }
            match self
                .alive
                .step(now, self.keepalive, liveness.enforced_deadline())
            {
                Step::WaitUntil(_) => {}
                Step::Ping => {
                    debug!("liveness Ping after {:?} of silence", self.keepalive);
                    self.ws.send(liveness::ping()).map_err(ws_to_io)?;
                    self.alive.pinged(now);
                }
                Step::Unresponsive => {
                    return Err(io::Error::other(GatewayUnresponsive(liveness.deadline())));
                }
            }
        }
        if now >= self.last_sent + self.keepalive {
            // Waiting on a slow origin: keep the gateway's sidecar from
            // dropping the tunnel.
            debug!("keepalive after {:?} of silence", self.keepalive);
            self.send(chunk::keepalive())?;
        }
        Ok(())
    }

    /// The tunnel's TCP socket, to poll for readability.
    fn raw_fd(&self) -> RawFd {
        self.ws.get_ref().tcp().as_raw_fd()
    }

    /// Reads one message: data becomes `pending`, a close or the server's
    /// FIN sets `eof`, a keepalive or control frame does nothing. A read
    /// timeout is an error.
    fn receive(&mut self) -> io::Result<()> {
        let message = self.ws.read();
        if message.is_ok() {
            self.heard = true;
        }
        match message {
            Ok(Message::Binary(encoded)) => {
                let data = match self.wire.decode(&encoded) {
                    Ok(Incoming::Data(data)) => data,
                    Ok(Incoming::Fin) => {
                        self.eof = true;
                        return Ok(());
                    }
                    Ok(Incoming::HelloAck { .. } | Incoming::Ignored) => return Ok(()),
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                };
                let start = data.as_ptr() as usize - encoded.as_ptr() as usize;
                let len = data.len();
                self.pending = encoded.slice(start..start + len);
                Ok(())
            }
            Ok(Message::Text(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                self.wire.text_frame(),
            )),
            Ok(Message::Close(_))
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                self.eof = true;
                Ok(())
            }
            Ok(Message::Pong(payload)) => {
                if let Some(liveness) = &self.liveness {
                    liveness.pong(&payload);
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(ws_to_io(e)),
        }
    }

    /// Takes whatever messages can be had without waiting, the ones the
    /// WebSocket already holds (those leave the socket unreadable) included:
    /// whether data or the end came.
    fn receive_ready(&mut self) -> io::Result<bool> {
        socket::set_mode(self.ws.get_ref().tcp(), Mode::NonBlocking)?;
        let got = loop {
            match self.receive() {
                Ok(()) if self.pending.is_empty() && !self.eof => continue,
                Ok(()) => break Ok(true),
                Err(e) if is_timeout(&e) => break Ok(false),
                Err(e) => break Err(e),
            }
        };
        socket::set_mode(self.ws.get_ref().tcp(), read_wait(self.read_timeout))?;
        got
    }

    /// Whether received data is waiting to be read.
    fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// How long the next wait may last: until the next keepalive or
    /// liveness step, shortened by the deadline; `None` once the deadline
    /// has passed.
    fn next_wait(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut wait = (self.last_sent + self.keepalive).saturating_duration_since(now);
        if let Some(liveness) = &self.liveness {
            let step = self
                .alive
                .step(now, self.keepalive, liveness.enforced_deadline());
            wait = match step {
                Step::WaitUntil(at) => wait.min(at.saturating_duration_since(now)),
                Step::Ping | Step::Unresponsive => Duration::ZERO,
            };
        }
        let wait = wait.max(MIN_WAIT);
        match self.deadline {
            None => Some(wait),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(now);
                (!left.is_zero()).then(|| left.min(wait))
            }
        }
    }

    /// Waits for the tunnel or the watched client socket, at most `wait`:
    /// whether the tunnel is readable (`Ok(false)` on timeout), or
    /// [`OtherSideReady`] when only the client is.
    fn wait_either(&self, client: RawFd, wait: Duration) -> io::Result<bool> {
        let (tunnel, client) = socket::wait_readable_either(self.raw_fd(), client, wait)?;
        if !tunnel && client {
            return Err(io::Error::other(OtherSideReady));
        }
        Ok(tunnel)
    }

    /// Whether data or the end came from the far side, waiting at most a
    /// moment: tells an origin's early answer from a ping on the socket.
    fn has_data(&mut self) -> io::Result<bool> {
        if self.pending.is_empty() && !self.eof {
            socket::set_mode(self.ws.get_ref().tcp(), read_wait(PEEK_WAIT))?;
            let got = self.receive();
            socket::set_mode(self.ws.get_ref().tcp(), read_wait(self.read_timeout))?;
            match got {
                Err(e) if is_timeout(&e) => return Ok(false),
                other => other?,
            }
        }
        Ok(!self.pending.is_empty() || self.eof)
    }
}

/// Blocking reads bounded by `wait`, writes unbounded (the gateway's
/// backpressure is the client's).
fn read_wait(wait: Duration) -> Mode {
    Mode::Blocking {
        read: Some(wait),
        write: None,
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn ws_to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        // Tell the gateway the tunnel is done rather than vanish mid-stream.
        let _ = socket::set_mode(
            self.ws.get_ref().tcp(),
            Mode::bounded(Duration::from_millis(200)),
        );
        let _ = self.ws.close(None);
    }
}

impl Read for ChunkStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.pending.is_empty() {
                let n = buf.len().min(self.pending.len());
                buf[..n].copy_from_slice(&self.pending[..n]);
                self.pending = self.pending.slice(n..);
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            let Some(wait) = self.next_wait() else {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
            };
            let readable = match self.watch {
                Some(client) => {
                    if self.receive_ready()? {
                        continue;
                    }
                    self.wait_either(client, wait)?
                }
                None => true,
            };
            let got = if readable {
                self.set_read_timeout(wait)?;
                self.receive()
            } else {
                Err(io::ErrorKind::TimedOut.into())
            };
            match got {
                Ok(()) => {}
                Err(e) if is_timeout(&e) => {
                    if self.next_wait().is_none() {
                        continue;
                    }
                    self.tend()?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for ChunkStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.max_chunk);
        if n > 0 {
            self.send(chunk::encode(&buf[..n]))?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.ws.flush().map_err(ws_to_io)
    }
}

/// A connection the relay dialled to an origin itself (selective mode), read
/// as a [`ChunkStream`] is: bounded by a deadline while one is set, and
/// stopped by the client's socket becoming readable while one is watched.
pub(super) struct DirectStream {
    socket: TcpStream,
    watch: Option<RawFd>,
    deadline: Option<Instant>,
}

impl DirectStream {
    /// A stream over a dialled connection, with no deadline and no watch.
    pub(super) fn new(socket: TcpStream) -> DirectStream {
        DirectStream {
            socket,
            watch: None,
            deadline: None,
        }
    }
}

impl Read for DirectStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.socket.as_raw_fd();
        loop {
            let wait = match self.deadline {
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
                    }
                    Some(left)
                }
            };
            let readable = match self.watch {
                Some(client) => {
                    let (origin, client) =
                        socket::wait_readable_either(fd, client, wait.unwrap_or(IDLE_CLIENT))?;
                    if !origin && client {
                        return Err(io::Error::other(OtherSideReady));
                    }
                    origin
                }
                None => socket::wait_ready(fd, libc::POLLIN, wait)?,
            };
            if readable {
                return (&self.socket).read(buf);
            }
        }
    }
}

/// Where plain requests to one origin go: a tunnel through the gateway, or
/// a connection the relay dialled itself (selective mode, a host off the
/// include list).
pub(super) enum Link {
    /// Boxed: a tunnel's state is ten times a direct connection's.
    Tunnel(Box<ChunkStream>),
    Direct(DirectStream),
}

impl Link {
    /// The socket to poll for the origin's bytes.
    pub(super) fn raw_fd(&self) -> RawFd {
        match self {
            Link::Tunnel(t) => t.raw_fd(),
            Link::Direct(d) => d.socket.as_raw_fd(),
        }
    }

    /// Reads still waiting at this instant fail with `TimedOut`.
    pub(super) fn set_deadline(&mut self, deadline: Option<Instant>) {
        match self {
            Link::Tunnel(t) => t.deadline = deadline,
            Link::Direct(d) => d.deadline = deadline,
        }
    }

    /// While set, a read that would wait returns [`OtherSideReady`] once
    /// this socket (the client's) is readable and the origin is not.
    pub(super) fn set_watch(&mut self, client: Option<RawFd>) {
        match self {
            Link::Tunnel(t) => t.watch = client,
            Link::Direct(d) => d.watch = client,
        }
    }

    /// Whether received data waits inside the link (a direct connection
    /// keeps none: its bytes wait in the socket).
    pub(super) fn has_pending(&self) -> bool {
        match self {
            Link::Tunnel(t) => t.has_pending(),
            Link::Direct(_) => false,
        }
    }

    /// Whether anything (data or the end) came from the origin, without
    /// waiting.
    pub(super) fn receive_ready(&mut self) -> io::Result<bool> {
        match self {
            Link::Tunnel(t) => t.receive_ready(),
            Link::Direct(d) => {
                socket::wait_ready(d.socket.as_raw_fd(), libc::POLLIN, Some(Duration::ZERO))
            }
        }
    }

    /// Whether data or the end came from the origin, waiting at most a
    /// moment on a tunnel (a readable one may hold only a ping); a readable
    /// direct connection holds data or the end.
    pub(super) fn has_data(&mut self) -> io::Result<bool> {
        match self {
            Link::Tunnel(t) => t.has_data(),
            Link::Direct(_) => self.receive_ready(),
        }
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Tunnel(t) => t.read(buf),
            Link::Direct(d) => d.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Tunnel(t) => t.write(buf),
            Link::Direct(d) => (&d.socket).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Link::Tunnel(t) => t.flush(),
            Link::Direct(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::is_other_side;
    use super::*;

    /// A connected pair on loopback: (the relay's end, the far end).
    fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        (near, far)
    }

    #[test]
    fn a_direct_link_reads_like_a_tunnel() {
        let (near, mut origin) = tcp_pair();
        let mut link = Link::Direct(DirectStream {
            socket: near,
            watch: None,
            deadline: None,
        });
        // Nothing arrived: clean, and a deadline ends the wait.
        assert!(!link.has_pending());
        assert!(!link.receive_ready().unwrap());
        link.set_deadline(Some(Instant::now() + Duration::from_millis(100)));
        let err = link.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // The client sending more while the origin is silent wakes the read.
        let (client, mut client_far) = tcp_pair();
        link.set_deadline(Some(Instant::now() + Duration::from_secs(10)));
        link.set_watch(Some(client.as_raw_fd()));
        client_far.write_all(b"more body").unwrap();
        let err = link.read(&mut [0u8; 8]).unwrap_err();
        assert!(is_other_side(&err), "{err}");
        // The origin's bytes are read, and seen as data before that.
        link.set_watch(None);
        link.set_deadline(None);
        origin.write_all(b"answer").unwrap();
        assert!(
            socket::wait_ready(link.raw_fd(), libc::POLLIN, Some(Duration::from_secs(10))).unwrap()
        );
        assert!(link.has_data().unwrap());
        let mut got = [0u8; 6];
        link.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"answer");
        link.write_all(b"request").unwrap();
        link.flush().unwrap();
        let mut seen = [0u8; 7];
        origin.read_exact(&mut seen).unwrap();
        assert_eq!(&seen, b"request");
    }
}
