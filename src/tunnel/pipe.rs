//! A client and a directly dialled target joined byte for byte (selective
//! mode's direct path): two blocking copy loops, one a direction, each
//! ending on EOF, an error, a stall past its bound or an abort, with half
//! closes passed on. The relay's own 200 and any bytes that came with the
//! head are written before the pipe starts.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys::lock::lock;
use crate::sys::socket::{self, Mode};

/// Stack for the second pipe thread: the copy buffer is on the heap.
const PIPE_STACK: usize = 128 * 1024;

/// How a pipe moves bytes.
#[derive(Debug, Clone)]
pub struct PipeOptions {
    /// Largest read, one buffer per direction.
    pub buffer: usize,
    /// A write that takes no byte for this long ends the pipe.
    pub stall: Duration,
}

impl Default for PipeOptions {
    fn default() -> Self {
        PipeOptions {
            buffer: 64 * 1024,
            stall: Duration::from_secs(180),
        }
    }
}

/// One direction of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to target.
    Up,
    /// Target to client.
    Down,
}

/// Which socket of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeSide {
    Client,
    Target,
}

/// How a pipe ended: the first thing that stopped it.
#[derive(Debug)]
pub enum PipeEnd {
    /// Both sides sent EOF and everything before it was delivered.
    Closed,
    /// Reading from or writing to one side failed.
    Error(PipeSide, io::Error),
    /// A direction could not write a byte for the stall bound.
    Stalled(Direction, Duration),
    /// [`Pipe::abort`] was called.
    Aborted,
    /// The second thread could not start, or a pump panicked.
    Internal(&'static str),
}

impl fmt::Display for PipeEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipeEnd::Closed => f.write_str("closed"),
            PipeEnd::Error(PipeSide::Client, e) => write!(f, "client connection failed: {e}"),
            PipeEnd::Error(PipeSide::Target, e) => write!(f, "target connection failed: {e}"),
            PipeEnd::Stalled(Direction::Up, t) => {
                write!(f, "target took no byte for {}s", t.as_secs())
            }
            PipeEnd::Stalled(Direction::Down, t) => {
                write!(f, "client took no byte for {}s", t.as_secs())
            }
            PipeEnd::Aborted => f.write_str("aborted"),
            PipeEnd::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

/// What a pipe did, for the log line and the totals.
#[derive(Debug)]
pub struct PipeReport {
    /// Bytes delivered client to target.
    pub up: u64,
    /// Bytes delivered target to client.
    pub down: u64,
    pub end: PipeEnd,
    pub duration: Duration,
}

/// A client and a directly dialled target joined byte for byte. Shared by
/// its two threads and, for [`Pipe::abort`], by whoever tracks open
/// connections.
pub struct Pipe {
    client: TcpStream,
    target: TcpStream,
    opts: PipeOptions,
    closing: AtomicBool,
    end: Mutex<Option<PipeEnd>>,
    up: AtomicU64,
    down: AtomicU64,
    started: Instant,
}

/// How one direction stopped.
enum Stop {
    /// EOF read and passed on: the other direction may go on.
    Eof,
    /// The whole pipe ends.
    End(PipeEnd),
}

impl Pipe {
    /// Joins the two sockets: blocking reads without a bound (an idle
    /// connection is fine), writes bounded by the stall bound.
    pub fn new(client: TcpStream, target: TcpStream, opts: PipeOptions) -> io::Result<Arc<Pipe>> {
        let mode = Mode::Blocking {
            read: None,
            write: Some(opts.stall),
        };
        socket::set_mode(&client, mode)?;
        socket::set_mode(&target, mode)?;
        Ok(Arc::new(Pipe {
            client,
            target,
            opts,
            closing: AtomicBool::new(false),
            end: Mutex::new(None),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            started: Instant::now(),
        }))
    }

    /// Bytes delivered so far, `(up, down)`.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }

    /// Copies both ways until both sides closed or one failed; the caller's
    /// thread copies up, one spawned thread copies down.
    pub fn run(self: &Arc<Self>) -> PipeReport {
        let down = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("direct-down".into())
            .stack_size(PIPE_STACK)
            .spawn(move || down.pump_guarded(Direction::Down));
        match spawned {
            Ok(handle) => {
                self.pump_guarded(Direction::Up);
                if handle.join().is_err() {
                    self.finish(PipeEnd::Internal("a pipe thread panicked"));
                }
            }
            Err(_) => self.finish(PipeEnd::Internal("cannot start a pipe thread")),
        }
        let end = lock(&self.end).take().unwrap_or(PipeEnd::Closed);
        PipeReport {
            up: self.up.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
            end,
            duration: self.started.elapsed(),
        }
    }

    /// Ends the pipe from outside: both sockets are shut down, which wakes
    /// both threads. Safe to call at any time, any number of times.
    pub fn abort(&self) {
        self.finish(PipeEnd::Aborted);
    }

    fn pump_guarded(&self, dir: Direction) {
        let _guard = EndOnPanic(self);
        if let Stop::End(end) = self.pump(dir) {
            self.finish(end);
        }
    }

    /// One direction: read, write all of it, again; EOF is passed on as a
    /// half-close.
    fn pump(&self, dir: Direction) -> Stop {
        let (from, to, from_side, to_side, count) = match dir {
            Direction::Up => (
                &self.client,
                &self.target,
                PipeSide::Client,
                PipeSide::Target,
                &self.up,
            ),
            Direction::Down => (
                &self.target,
                &self.client,
                PipeSide::Target,
                PipeSide::Client,
                &self.down,
            ),
        };
        let mut buf = vec![0u8; self.opts.buffer.max(1)];
        loop {
            let n = match (&*from).read(&mut buf) {
                Ok(0) => {
                    if self.closing.load(Ordering::SeqCst) {
                        return Stop::End(PipeEnd::Aborted);
                    }
                    // Half-close: the other side sees EOF after every byte.
                    let _ = to.shutdown(Shutdown::Write);
                    return Stop::Eof;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Stop::End(PipeEnd::Error(from_side, e)),
            };
            let mut sent = 0;
            while sent < n {
                match (&*to).write(&buf[sent..n]) {
                    Ok(0) => {
                        return Stop::End(PipeEnd::Error(to_side, io::ErrorKind::WriteZero.into()));
                    }
                    Ok(k) => {
                        sent += k;
                        count.fetch_add(k as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // The write timeout passed without a byte taken.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Stop::End(PipeEnd::Stalled(dir, self.opts.stall));
                    }
                    Err(e) => return Stop::End(PipeEnd::Error(to_side, e)),
                }
            }
        }
    }

    /// Records the first end and shuts both sockets down, which wakes the
    /// other direction wherever it waits.
    fn finish(&self, end: PipeEnd) {
        if !self.closing.swap(true, Ordering::SeqCst) {
            *lock(&self.end) = Some(end);
        }
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.target.shutdown(Shutdown::Both);
    }
}

/// Ends the pipe if its pump panics, so the other direction is not left
/// waiting.
struct EndOnPanic<'a>(&'a Pipe);

impl Drop for EndOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.finish(PipeEnd::Internal("a pipe thread panicked"));
        }
    }
}

/// [`Pipe::new`] and [`Pipe::run`] in one, for a caller with no use for
/// the abort handle.
pub fn pipe(client: TcpStream, target: TcpStream, opts: PipeOptions) -> io::Result<PipeReport> {
    Ok(Pipe::new(client, target, opts)?.run())
}
