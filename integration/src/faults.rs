//! Test support for fault and load tests of the relay: a gateway that
//! stops reading, and small helpers to wait for the relay to settle.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::pki::TestCa;
use crate::procs::{DevGateway, GatewayOptions};
use crate::relay::{ESTABLISHED, RelayOptions, RelayProcess, read_head};
use crate::temp::{TempDir, temp_dir};

/// A first-generation "gateway" that serves its CA, answers every tunnel's
/// CONNECT with `200`, then never reads again (its WebSockets are held
/// open). Counts the tunnels it answered.
pub struct DeafGateway {
    pub addr: SocketAddr,
    answered: Arc<Mutex<usize>>,
    _dir: TempDir,
}

impl DeafGateway {
    pub fn start() -> DeafGateway {
        DeafGateway::start_with(None)
    }

    /// The same gateway, but after answering a tunnel it sends `bytes` of
    /// data and then resets the connection (TCP RST, no close frame): a
    /// gateway that dies mid-stream.
    pub fn start_resetting(bytes: usize) -> DeafGateway {
        DeafGateway::start_with(Some(bytes))
    }

    fn start_with(reset_after: Option<usize>) -> DeafGateway {
        let dir = temp_dir("deaf-gateway");
        let ca = TestCa::new(dir.path()).expect("a test CA");
        let pem = ca.cert_pem();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(Mutex::new(0));
        let count = Arc::clone(&answered);
        thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut peek = [0u8; 64];
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(n) = conn.peek(&mut peek) else {
                    continue;
                };
                if peek[..n].windows(7).any(|w| w == b"ca-cert") {
                    let _ = read_head(&mut conn);
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        pem.len()
                    );
                    let _ = conn.write_all(&pem);
                    continue;
                }
                let Ok(mut ws) = tungstenite::accept(conn) else {
                    continue;
                };
                // The preamble (the start-up probe closes instead).
                if !matches!(ws.read(), Ok(tungstenite::Message::Binary(_))) {
                    continue;
                }
                let mut answer = vec![0x0A, ESTABLISHED.len() as u8];
                answer.extend_from_slice(ESTABLISHED);
                if ws.send(tungstenite::Message::Binary(answer.into())).is_ok() {
                    *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    if let Some(bytes) = reset_after {
                        let mut chunk = vec![0x0A, 0x80, 0x80, 0x01];
                        chunk.extend(std::iter::repeat_n(b'x', 16384));
                        for _ in 0..bytes.div_ceil(16384) {
                            let _ = ws.send(tungstenite::Message::Binary(chunk.clone().into()));
                        }
                        thread::sleep(Duration::from_millis(200));
                        let tcp = ws.get_ref();
                        set_reset_on_close(tcp);
                        drop(ws);
                        continue;
                    }
                    held.push(ws);
                }
            }
        });
        DeafGateway {
            addr,
            answered,
            _dir: dir,
        }
    }

    /// Tunnels answered so far.
    pub fn answered(&self) -> usize {
        *self.answered.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A relay in front of a [`DeafGateway`] with `extra` options (credentials
/// from a development gateway that is never dialled for tunnels).
pub fn deaf_setup(extra: &[&str]) -> (DevGateway, DeafGateway, RelayProcess) {
    let gw = DevGateway::start(GatewayOptions::default());
    let deaf = DeafGateway::start();
    let mut opts = RelayOptions {
        base_url: Some(format!("http://{}", deaf.addr)),
        ..RelayOptions::default()
    };
    for a in extra {
        opts = opts.arg(*a);
    }
    let relay = RelayProcess::serve(&gw, opts);
    (gw, deaf, relay)
}

/// The relay's threads and descriptors once start-up is over (the probe's
/// and the CA fetch's threads gone): two equal readings 300 ms apart.
pub fn baseline(relay: &RelayProcess) -> (usize, usize) {
    let mut last = relay.threads_and_fds();
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(300));
        let now = relay.threads_and_fds();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Waits until `probe` is true, up to `timeout`; whether it became true.
pub fn eventually(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Closes with a reset (SO_LINGER 0).
pub fn reset(s: TcpStream) {
    set_reset_on_close(&s);
    drop(s);
}

/// Makes the socket's close send RST (SO_LINGER 0).
fn set_reset_on_close(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}
