//! A TCP forwarder that adds latency, for benchmarks: every byte is held
//! for a fixed delay in each direction, so a relay talking to a gateway
//! through it sees a round trip of twice the delay (binary
//! `ccr-delay-shim`).
//!
//! Per connection and direction, one thread reads and stamps each read with
//! the time it arrived, and one thread writes each read once its time plus
//! the delay has come. The queue between them is bounded (in reads, each at
//! most [`READ_SIZE`] bytes), so memory stays flat: a slow receiver stalls
//! the reader, which stalls the sender (backpressure, as TCP would).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use crate::args::{Args, UsageError};

/// Largest read forwarded as one piece.
pub const READ_SIZE: usize = 16 * 1024;
/// Reads queued per direction: with [`READ_SIZE`], at most 1 MiB held.
const QUEUE_READS: usize = 64;
/// Bound on dialling the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Stack of the forwarding threads.
const STACK: usize = 128 * 1024;

/// Command-line help for `ccr-delay-shim`.
pub const USAGE: &str = "\
usage: ccr-delay-shim --target ADDR --delay-ms D [--listen ADDR]

Forwards TCP connections to ADDR, holding every byte D ms in each
direction (so a round trip through it takes at least 2 D).

  --listen ADDR   where to listen (default 127.0.0.1:0); prints
                  `listening on IP:PORT` on stdout once bound
  --target ADDR   where connections go (IP:PORT)
  --delay-ms D    one-way delay in milliseconds
  --help          this text
";

/// What `ccr-delay-shim` is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayConfig {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    pub delay: Duration,
}

impl DelayConfig {
    /// Parses the command line (without the program name); `Ok(None)` for `--help`.
    pub fn from_args(
        args: impl IntoIterator<Item = OsString>,
    ) -> Result<Option<DelayConfig>, UsageError> {
        let mut args = Args::new(args)?;
        let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let (mut target, mut delay) = (None, None);
        while let Some(flag) = args.next_flag()? {
            match flag.as_str() {
                "--help" | "-h" => return Ok(None),
                "--listen" => listen = args.listen_addr()?,
                "--target" => target = Some(args.listen_addr()?),
                "--delay-ms" => {
                    delay = Some(Duration::from_millis(
                        args.parsed("a number of milliseconds")?,
                    ))
                }
                _ => return Err(args.unknown()),
            }
        }
        Ok(Some(DelayConfig {
            listen,
            target: target.ok_or_else(|| UsageError("--target is required".into()))?,
            delay: delay.ok_or_else(|| UsageError("--delay-ms is required".into()))?,
        }))
    }
}

/// A bound shim, ready to serve.
pub struct DelayShim {
    listener: TcpListener,
    cfg: DelayConfig,
}

impl DelayShim {
    /// Binds the listener.
    pub fn bind(cfg: DelayConfig) -> io::Result<DelayShim> {
        Ok(DelayShim {
            listener: TcpListener::bind(cfg.listen)?,
            cfg,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Forwards connections for ever, one set of threads each.
    pub fn serve(self) -> io::Result<()> {
        crate::accept::serve_each(&self.listener, STACK, |client| {
            let cfg = self.cfg.clone();
            ("delay-conn".to_string(), move || {
                if let Err(e) = forward(client, &cfg) {
                    log::info!("connection ended: {e}");
                }
            })
        })
    }
}

/// One connection: dial the target, then both directions, delayed.
fn forward(client: TcpStream, cfg: &DelayConfig) -> io::Result<()> {
    let target = TcpStream::connect_timeout(&cfg.target, CONNECT_TIMEOUT)?;
    let _ = client.set_nodelay(true);
    let _ = target.set_nodelay(true);
    let (c2, t2) = (client.try_clone()?, target.try_clone()?);
    thread::scope(|s| {
        let up = thread::Builder::new()
            .name("delay-up".into())
            .stack_size(STACK)
            .spawn_scoped(s, || direction(client, target, cfg.delay));
        direction(t2, c2, cfg.delay);
        if let Ok(h) = up {
            let _ = h.join();
        }
    });
    Ok(())
}

/// A read and when it arrived; `None` data is the end of the stream.
type Stamped = (Instant, Option<Vec<u8>>);

/// `from` to `to`, each read held for `delay`; returns when `from` ended
/// (after its end was passed on as a half-close) or either side failed.
fn direction(from: TcpStream, to: TcpStream, delay: Duration) {
    let (tx, rx) = sync_channel::<Stamped>(QUEUE_READS);
    thread::scope(|s| {
        let writer = thread::Builder::new()
            .name("delay-write".into())
            .stack_size(STACK)
            .spawn_scoped(s, || write_delayed(rx, &to, delay));
        if writer.is_err() {
            return;
        }
        read_stamped(&from, tx);
    });
    // The writer is done: nothing more will be read usefully either.
    let _ = from.shutdown(Shutdown::Read);
}

fn read_stamped(mut from: &TcpStream, tx: SyncSender<Stamped>) {
    loop {
        let mut buf = vec![0u8; READ_SIZE];
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let item = if n == 0 {
            None
        } else {
            buf.truncate(n);
            Some(buf)
        };
        let end = item.is_none();
        if tx.send((Instant::now(), item)).is_err() || end {
            return;
        }
    }
}

fn write_delayed(rx: Receiver<Stamped>, mut to: &TcpStream, delay: Duration) {
    while let Ok((at, item)) = rx.recv() {
        let due = at + delay;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        match item {
            Some(bytes) => {
                if to.write_all(&bytes).is_err() {
                    // Dropping `rx` makes the reader's next send fail.
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            }
            None => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let cfg = |a: &[&str]| DelayConfig::from_args(a.iter().map(OsString::from));
        let c = cfg(&["--target", "127.0.0.1:9", "--delay-ms", "25"])
            .unwrap()
            .unwrap();
        assert_eq!(c.delay, Duration::from_millis(25));
        assert_eq!(c.target, "127.0.0.1:9".parse().unwrap());
        assert!(
            cfg(&["--delay-ms", "1"])
                .unwrap_err()
                .0
                .contains("--target")
        );
        assert!(
            cfg(&["--target", "9"])
                .unwrap_err()
                .0
                .contains("--delay-ms")
        );
        assert!(cfg(&["--help"]).unwrap().is_none());
    }
}
