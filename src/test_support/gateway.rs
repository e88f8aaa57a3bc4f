//! An in-test gateway for the unit tests of the dial and the connection
//! flow: a loopback listener whose every connection runs the test's script
//! on its own thread (a real tungstenite server WebSocket, or an upgrade
//! answered with another status), counting the connections it accepted;
//! and a [`Gateway`] client pointed at it over plain `ws://`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

use crate::gateway::pool::Pool;
use crate::gateway::{Credentials, Endpoint, Gateway};
use crate::startup::gates::Generation;
use crate::startup::token::{SessionToken, TokenOrigin, TokenSource};

/// Every wait of the in-test gateway and of the tests that poll it ends
/// by this bound.
pub const BOUND: Duration = Duration::from_secs(10);

/// The in-test gateway: what it accepted, in order (peer addresses).
pub struct FakeGateway {
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    sentinels: Mutex<Vec<SocketAddr>>,
}

impl FakeGateway {
    /// Listens on loopback; the `n`th connection accepted (from 0) runs
    /// `script(n, stream)` on a thread of its own.
    pub fn start(script: impl Fn(usize, TcpStream) + Send + Sync + 'static) -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let seen = Arc::clone(&peers);
        thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                seen.lock().unwrap().push(peer);
                let script = Arc::clone(&script);
                thread::spawn(move || script(n, stream));
            }
        });
        FakeGateway {
            addr,
            peers,
            sentinels: Mutex::new(Vec::new()),
        }
    }

    /// A client of this gateway speaking `generation`, with `pool`.
    pub fn client(
        &self,
        generation: Generation,
        upgrade_timeout: Duration,
        pool: Option<Pool>,
    ) -> Gateway {
        Gateway::new(
            Endpoint::parse(&format!("http://{}", self.addr)).unwrap(),
            Credentials {
                session_id: "sess".into(),
                token: TokenSource::fixed(
                    SessionToken::new("tok3n").unwrap(),
                    TokenOrigin::TokenFile,
                ),
            },
            native_tls::TlsConnector::new().unwrap(),
            upgrade_timeout,
        )
        .with_generation(generation, pool)
    }

    /// How many connections the relay made to this gateway so far. Exact:
    /// a sentinel connection is made, and once the listener has accepted
    /// it, it has accepted every one made before it (the accept queue is
    /// in order). Sentinels are not counted; their scripts see a
    /// connection that closes without a byte.
    pub fn accepted(&self) -> usize {
        let sentinel = TcpStream::connect(self.addr).unwrap();
        let me = sentinel.local_addr().unwrap();
        let mut sentinels = self.sentinels.lock().unwrap();
        sentinels.push(me);
        let deadline = Instant::now() + BOUND;
        loop {
            {
                let peers = self.peers.lock().unwrap();
                if peers.contains(&me) {
                    return peers.iter().filter(|p| !sentinels.contains(p)).count();
                }
            }
            assert!(Instant::now() < deadline, "the sentinel was never accepted");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Finishes the WebSocket upgrade as a server; `None` if the connection
/// was no upgrade (a sentinel). Reads time out after [`BOUND`].
pub fn upgrade(stream: TcpStream) -> Option<WebSocket<TcpStream>> {
    stream.set_read_timeout(Some(BOUND)).unwrap();
    tungstenite::accept(stream).ok()
}

/// The next binary message's payload (Pings and Pongs skipped), `None`
/// when the connection ended or errored.
pub fn next_binary(ws: &mut WebSocket<TcpStream>) -> Option<Vec<u8>> {
    loop {
        match ws.read().ok()? {
            Message::Binary(b) => return Some(b.to_vec()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// Sends one binary message.
pub fn send(ws: &mut WebSocket<TcpStream>, payload: &[u8]) {
    let _ = ws.send(Message::Binary(payload.to_vec().into()));
}

/// Reads until the relay closes the WebSocket or goes away.
pub fn hold(ws: &mut WebSocket<TcpStream>) {
    while ws.read().is_ok() {}
}

/// Answers the upgrade request with `status` (e.g. `503 Service
/// Unavailable`) and closes.
pub fn refuse_upgrade(mut stream: TcpStream, status: &str) {
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let _ = stream.write_all(
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
}

/// Accepts TCP and says nothing until the relay gives up.
pub fn stay_silent(mut stream: TcpStream) {
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}
