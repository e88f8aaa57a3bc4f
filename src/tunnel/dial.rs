//! A tunnel's opening, up to the gateway's first answer bytes: get a
//! WebSocket (a pooled one, or a fresh one with retries), send the opening
//! (HELLO on a fresh agent-proxy WebSocket, the CONNECT preamble, the
//! client bytes that came with the request head), and wait for the answer,
//! handling HELLO_ACK, keepalives and pings on the way.
//!
//! The opening runs on the connection's thread before the pumps start
//! (see [`crate::tunnel`]), and reads nothing more from the client while it
//! waits: the client's later bytes wait in the kernel (backpressure, no
//! buffer of ours). So until the answer's first byte, the gateway can have
//! received nothing but the opening, and the opening is exactly what a
//! failed reused WebSocket replays on a fresh one (the contract's "safe
//! redial"). After the first answer byte there is never a replay: the
//! opening is over.
//!
//! A fresh WebSocket also carries the liveness Ping after its opening
//! ([`crate::gateway::liveness`]): its Pong shows whether the gateway answers pings.
//!
//! Generation 1: one attempt, no HELLO. Agent proxy: up to three attempts
//! (100 ms, then 200 ms apart), one while the start-up probe's error
//! stands; 401 and 403 are never retried.

use std::fmt;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

use log::debug;
use tungstenite::{Bytes, Message, WebSocket};

use crate::config::Limits;
use crate::gateway::Generation;
use crate::gateway::chunk;
use crate::gateway::liveness;
use crate::gateway::message_v2;
use crate::gateway::wire::{Incoming, Malformed, Wire};
use crate::gateway::{Gateway, GatewayError, GatewayStream};
use crate::http::reply;
use crate::http::request_head::Authority;
use crate::sys::socket::{self, Mode};

/// Pauses before the second and third dial attempts.
const RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(200)];

/// What to open: the target, who asks, and the bytes already read.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub target: &'a Authority,
    /// The client process's name (agent proxy: sent in the preamble),
    /// asked for only once the WebSocket is there, so that a lookup running
    /// meanwhile does not add to a fresh dial's time. The argument says
    /// whether the WebSocket is a reused one: no dial hid the lookup's
    /// time then, so the wait for it must be short.
    pub client_process: &'a dyn Fn(bool) -> String,
    /// Client bytes that came after the request head.
    pub leftover: &'a [u8],
}

/// A tunnel whose gateway has begun to answer.
pub struct Opened {
    pub ws: WebSocket<GatewayStream>,
    /// How the gateway's messages are read.
    pub wire: Wire,
    /// The gateway acknowledged protocol v2 on this WebSocket: FIN,
    /// FIN_ACK and reuse apply.
    pub v2: bool,
    /// The gateway was sent HELLO and did not acknowledge it (why): the
    /// tunnel fell back to the first generation's semantics, which the
    /// caller records (`v2_not_acked`).
    pub fell_back: Option<&'static str>,
    /// The WebSocket came from the pool.
    pub reused: bool,
    /// When the WebSocket was opened (the pool's age limit counts from it).
    pub opened_at: Instant,
    /// The first data from the gateway: the start of its answer.
    pub answer: Bytes,
    /// Dial attempts made for a fresh WebSocket (0 when reused).
    pub attempts: u32,
}

/// Why a tunnel could not be opened; the client gets [`OpenError::status`]
/// and the text. Never holds the token.
#[derive(Debug)]
pub enum OpenError {
    /// No WebSocket could be opened.
    Dial {
        error: GatewayError,
        attempts: u32,
        /// The start-up probe's error, while it stands.
        startup_error: Option<String>,
    },
    /// `--require-v2` and the gateway did not acknowledge v2.
    NotAcknowledged(&'static str),
    /// The gateway ended the tunnel before answering.
    ClosedSilently,
    /// The gateway did not answer within the bound.
    NoAnswer(Duration),
    /// Sending the opening or reading the answer failed.
    Ws(tungstenite::Error),
    /// The gateway sent something the relay cannot read.
    Malformed(Malformed),
}

impl OpenError {
    /// The status the relay answers the client with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            OpenError::Dial { error, .. } => error.status(),
            OpenError::NoAnswer(_) => reply::GATEWAY_TIMEOUT,
            _ => reply::BAD_GATEWAY,
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Dial {
                error,
                attempts,
                startup_error,
            } => {
                write!(f, "{error}")?;
                if *attempts > 1 {
                    write!(f, " (after {attempts} attempts)")?;
                }
                if let Some(startup) = startup_error {
                    write!(f, "; {startup}")?;
                }
                Ok(())
            }
            OpenError::NotAcknowledged(why) => {
                write!(f, "gateway did not acknowledge tunnel protocol v2 ({why})")
            }
            OpenError::ClosedSilently => f.write_str("gateway closed the tunnel at once"),
            OpenError::NoAnswer(t) => write!(
                f,
                "gateway did not answer the CONNECT within {} s",
                t.as_secs()
            ),
            OpenError::Ws(e) => write!(f, "gateway connection failed: {e}"),
            OpenError::Malformed(e) => {
                write!(f, "gateway sent a message the relay cannot read: {e}")
            }
        }
    }
}

impl std::error::Error for OpenError {}

/// Opens the tunnel for `request`: a pooled WebSocket first (agent proxy),
/// replayed on a fresh one if it fails before answering, else a fresh one.
pub fn open(gateway: &Gateway, limits: &Limits, request: &Request) -> Result<Opened, OpenError> {
    if let Some(pooled) = gateway.pool.as_ref().and_then(|p| p.take()) {
        let reused = Attempt {
            gateway,
            limits,
            request,
            reused: true,
        };
        match reused.run(pooled.ws, pooled.opened) {
            Ok(opened) => return Ok(opened),
            // Nothing but the opening went out: replay it on a fresh one.
            Err(e) => debug!(
                "tunnel {}: the reused WebSocket stopped answering ({e}); redialling",
                request.target
            ),
        }
    }
    let (ws, attempts) = dial(gateway)?;
    let fresh = Attempt {
        gateway,
        limits,
        request,
        reused: false,
    };
    let mut opened = fresh.run(ws, Instant::now())?;
    opened.attempts = attempts;
    Ok(opened)
}

/// Dials a fresh WebSocket with the generation's retries.
pub fn dial(gateway: &Gateway) -> Result<(WebSocket<GatewayStream>, u32), OpenError> {
    let startup_error = gateway.state.startup_error();
    let max = match gateway.generation {
        Generation::AgentProxy if startup_error.is_none() => 1 + RETRY_PAUSES.len() as u32,
        _ => 1,
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        match gateway.open_websocket() {
            Ok(ws) => {
                gateway.state.record_open();
                return Ok((ws, attempts));
            }
            Err(error) if attempts < max && error.is_retryable() => {
                debug!("dialling the gateway failed ({error}); trying again");
                thread::sleep(RETRY_PAUSES[attempts as usize - 1]);
            }
            Err(error) => {
                return Err(OpenError::Dial {
                    error,
                    attempts,
                    startup_error,
                });
            }
        }
    }
}

/// One try at opening on one WebSocket.
struct Attempt<'a> {
    gateway: &'a Gateway,
    limits: &'a Limits,
    request: &'a Request<'a>,
    reused: bool,
}

/// Where the HELLO exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hello {
    /// First generation, or a gateway known not to acknowledge: no HELLO.
    NotSent,
    /// HELLO sent, HELLO_ACK awaited until the instant.
    Awaited(Instant),
    /// HELLO_ACK version 2 received (or a reused v2 WebSocket).
    Acknowledged,
    /// HELLO sent but not acknowledged: first-generation semantics, and why.
    FellBack(&'static str),
}

impl Attempt<'_> {
    /// Sends the opening on `ws`, then waits for the gateway's first answer
    /// bytes (HELLO_ACK, keepalives and the deadlines on the way).
    fn run(
        &self,
        mut ws: WebSocket<GatewayStream>,
        opened_at: Instant,
    ) -> Result<Opened, OpenError> {
        let started = Instant::now();
        let hello = self.initial_hello(started);
        let wire = if self.agent() { Wire::V2 } else { Wire::V1 };
        self.send_opening(&mut ws, hello)?;
        let (hello, answer) = self.await_answer(&mut ws, wire, hello, started)?;
        Ok(Opened {
            ws,
            wire,
            v2: hello == Hello::Acknowledged,
            fell_back: match hello {
                Hello::FellBack(why) => Some(why),
                _ => None,
            },
            reused: self.reused,
            opened_at,
            answer,
            attempts: 0,
        })
    }

    fn agent(&self) -> bool {
        self.gateway.generation == Generation::AgentProxy
    }

    /// Whether this attempt sends HELLO: on a fresh agent-proxy WebSocket,
    /// unless the gateway is known not to acknowledge it (and `--require-v2`
    /// is off); a reused WebSocket was acknowledged already.
    fn initial_hello(&self, started: Instant) -> Hello {
        if self.reused {
            Hello::Acknowledged
        } else if self.agent()
            && (self.gateway.require_v2 || !self.gateway.state.v2_unacknowledged())
        {
            Hello::Awaited(started + self.limits.hello_ack_timeout)
        } else {
            Hello::NotSent
        }
    }

    /// Sends the opening: HELLO if awaited, the CONNECT preamble, the
    /// client's bytes that came with the request head, and on a fresh
    /// WebSocket the liveness Ping.
    fn send_opening(
        &self,
        ws: &mut WebSocket<GatewayStream>,
        hello: Hello,
    ) -> Result<(), OpenError> {
        // Sends are blocking, bounded like the upgrade.
        socket::set_mode(
            ws.get_ref().tcp(),
            Mode::bounded(self.limits.upgrade_timeout),
        )
        .map_err(|e| OpenError::Ws(tungstenite::Error::Io(e)))?;
        let mut opening: Vec<Vec<u8>> = Vec::new();
        if matches!(hello, Hello::Awaited(_)) {
            opening.push(message_v2::HELLO.to_vec());
        }
        let preamble = self.gateway.connect_head(
            self.request.target,
            &(self.request.client_process)(self.reused),
        );
        opening.push(chunk::encode(&preamble));
        opening.extend(
            self.request
                .leftover
                .chunks(self.limits.max_chunk.max(1))
                .map(chunk::encode),
        );
        for message in opening {
            ws.write(Message::Binary(message.into()))
                .map_err(OpenError::Ws)?;
        }
        if !self.reused {
            // After the opening, which a gateway may require to come first.
            ws.write(liveness::ping()).map_err(OpenError::Ws)?;
        }
        ws.flush().map_err(OpenError::Ws)
    }

    /// Waits for the first answer bytes: falls back when HELLO_ACK does not
    /// come in time or the answer comes first, sends keepalives while the
    /// gateway is silent, and gives up at the answer deadline. Returns where
    /// HELLO ended and the answer's first bytes.
    fn await_answer(
        &self,
        ws: &mut WebSocket<GatewayStream>,
        wire: Wire,
        mut hello: Hello,
        started: Instant,
    ) -> Result<(Hello, Bytes), OpenError> {
        let answer_deadline = started
            + if self.reused {
                self.limits.reuse_answer_timeout
            } else {
                self.limits.answer_timeout
            };
        let mut last_sent = Instant::now();
        loop {
            let now = Instant::now();
            if let Hello::Awaited(until) = hello
                && now >= until
            {
                hello = self.fall_back("no HELLO_ACK within the wait")?;
                continue;
            }
            if now >= answer_deadline {
                return Err(OpenError::NoAnswer(answer_deadline - started));
            }
            let keepalive_due = last_sent + self.limits.keepalive_interval;
            if now >= keepalive_due {
                ws.send(Message::Binary(Bytes::from(chunk::keepalive())))
                    .map_err(OpenError::Ws)?;
                last_sent = now;
                continue;
            }
            let mut wake = answer_deadline.min(keepalive_due);
            if let Hello::Awaited(until) = hello {
                wake = wake.min(until);
            }
            let Some(encoded) = self.read_binary(ws, wire, wake.saturating_duration_since(now))?
            else {
                continue;
            };
            match wire.decode(&encoded).map_err(OpenError::Malformed)? {
                Incoming::Data([]) | Incoming::Ignored => {}
                Incoming::Data(data) => {
                    if let Hello::Awaited(_) = hello {
                        hello = self.fall_back("the gateway answered before HELLO_ACK")?;
                    }
                    let start = data.as_ptr() as usize - encoded.as_ptr() as usize;
                    return Ok((hello, encoded.slice(start..start + data.len())));
                }
                Incoming::HelloAck { v2: true } if matches!(hello, Hello::Awaited(_)) => {
                    self.gateway.state.remember_v2_acknowledged();
                    hello = Hello::Acknowledged;
                }
                Incoming::HelloAck { v2: false } if matches!(hello, Hello::Awaited(_)) => {
                    hello = self.fall_back("HELLO_ACK named another version")?;
                }
                Incoming::HelloAck { .. } => {}
                Incoming::Fin => return Err(OpenError::ClosedSilently),
            }
        }
    }

    /// Reads one message within `wait`: a binary message's payload, or
    /// `None` when the wait ran out or the message was a control frame
    /// (a Pong goes to the liveness check).
    fn read_binary(
        &self,
        ws: &mut WebSocket<GatewayStream>,
        wire: Wire,
        wait: Duration,
    ) -> Result<Option<Bytes>, OpenError> {
        socket::set_mode(
            ws.get_ref().tcp(),
            Mode::Blocking {
                read: Some(wait),
                write: Some(self.limits.upgrade_timeout),
            },
        )
        .map_err(|e| OpenError::Ws(tungstenite::Error::Io(e)))?;
        let message = match ws.read() {
            Ok(message) => message,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(None);
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Err(OpenError::ClosedSilently);
            }
            Err(e) => return Err(OpenError::Ws(e)),
        };
        match message {
            Message::Binary(encoded) => Ok(Some(encoded)),
            Message::Text(_) => Err(OpenError::Malformed(wire.text_frame())),
            Message::Close(_) => Err(OpenError::ClosedSilently),
            Message::Pong(payload) => {
                self.gateway.liveness.pong(&payload);
                Ok(None)
            }
            // Pongs to pings go out with the next read or send.
            Message::Ping(_) | Message::Frame(_) => Ok(None),
        }
    }

    /// The gateway did not acknowledge v2: first-generation semantics on
    /// this WebSocket, remembered for later ones; or, with `--require-v2`,
    /// the end of this tunnel.
    fn fall_back(&self, why: &'static str) -> Result<Hello, OpenError> {
        if self.gateway.require_v2 {
            return Err(OpenError::NotAcknowledged(why));
        }
        debug!(
            "tunnel {}: {why}; using the first generation's semantics with this gateway",
            self.request.target
        );
        self.gateway.state.remember_v2_unacknowledged();
        Ok(Hello::FellBack(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::pool::{Pool, PoolConfig};
    use crate::test_support::gateway::{
        FakeGateway, hold, next_binary, refuse_upgrade, send, stay_silent, upgrade,
    };
    use std::net::TcpStream;
    use std::sync::Mutex;
    use std::sync::mpsc::{self, Receiver};

    const ANSWER: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";
    const HELLO_ACK: [u8; 4] = [0x10, 0x02, 0x18, 0x02];

    fn target() -> Authority {
        Authority::parse("origin.test:443", None).unwrap()
    }

    /// Short bounds: no test waits long.
    fn limits() -> Limits {
        Limits {
            upgrade_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(5),
            hello_ack_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(5),
            reuse_answer_timeout: Duration::from_millis(200),
            ..Limits::default()
        }
    }

    /// Opens a tunnel to `origin.test:443` with `leftover`, the client
    /// process named `curl`; also returns the `reused` flags it was asked for.
    fn open_with(
        gateway: &Gateway,
        limits: &Limits,
        leftover: &[u8],
    ) -> (Result<Opened, OpenError>, Vec<bool>) {
        let asked = Mutex::new(Vec::new());
        let client_process = |reused: bool| {
            asked.lock().unwrap().push(reused);
            "curl".to_string()
        };
        let target = target();
        let request = Request {
            target: &target,
            client_process: &client_process,
            leftover,
        };
        let result = open(gateway, limits, &request);
        (result, asked.into_inner().unwrap())
    }

    /// What one gateway connection received: (connection, payload).
    type Seen = Receiver<(usize, Vec<u8>)>;

    fn decoded(payload: &[u8]) -> Vec<u8> {
        chunk::decode(payload).unwrap().to_vec()
    }

    #[test]
    fn a_fresh_first_generation_dial_returns_the_gateways_first_answer() {
        let (tx, seen): (_, Seen) = mpsc::channel();
        let tx = Mutex::new(tx);
        let fake = FakeGateway::start(move |n, stream| {
            let Some(mut ws) = upgrade(stream) else {
                return;
            };
            for _ in 0..2 {
                let Some(payload) = next_binary(&mut ws) else {
                    return;
                };
                tx.lock().unwrap().send((n, payload)).unwrap();
            }
            send(&mut ws, &chunk::encode(ANSWER));
            hold(&mut ws);
        });
        let gateway = fake.client(Generation::UpstreamProxy, Duration::from_secs(2), None);
        let (opened, _) = open_with(&gateway, &limits(), b"early bytes");
        let opened = opened.unwrap();
        assert_eq!(&opened.answer[..], ANSWER);
        assert_eq!(opened.attempts, 1);
        assert!(!opened.reused && !opened.v2 && opened.fell_back.is_none());
        assert_eq!(opened.wire, Wire::V1);
        // No HELLO: the preamble first, then the bytes that came with the head.
        let (n, preamble) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            (n, decoded(&preamble)),
            (0, gateway.connect_head(&target(), ""))
        );
        let (_, early) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(decoded(&early), b"early bytes");
        assert_eq!(fake.accepted(), 1);
    }

    #[test]
    fn a_fresh_agent_proxy_dial_says_hello_and_is_acknowledged() {
        let (tx, seen): (_, Seen) = mpsc::channel();
        let tx = Mutex::new(tx);
        let fake = FakeGateway::start(move |n, stream| {
            let Some(mut ws) = upgrade(stream) else {
                return;
            };
            let Some(hello) = next_binary(&mut ws) else {
                return;
            };
            tx.lock().unwrap().send((n, hello)).unwrap();
            send(&mut ws, &HELLO_ACK);
            let Some(preamble) = next_binary(&mut ws) else {
                return;
            };
            tx.lock().unwrap().send((n, preamble)).unwrap();
            send(&mut ws, &chunk::encode(ANSWER));
            hold(&mut ws);
        });
        let gateway = fake.client(Generation::AgentProxy, Duration::from_secs(2), None);
        let (opened, asked) = open_with(&gateway, &limits(), b"");
        let opened = opened.unwrap();
        assert_eq!(&opened.answer[..], ANSWER);
        assert!(opened.v2 && !opened.reused && opened.fell_back.is_none());
        assert_eq!(opened.attempts, 1);
        assert!(gateway.state.v2_acknowledged());
        assert_eq!(asked, [false], "a fresh WebSocket's lookup gets its budget");
        let (_, hello) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(hello, message_v2::HELLO);
        let (_, preamble) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(decoded(&preamble), gateway.connect_head(&target(), "curl"));
    }

    /// A gateway whose every upgrade is answered `status`.
    fn refusing(status: &'static str) -> FakeGateway {
        FakeGateway::start(move |_, stream| refuse_upgrade(stream, status))
    }

    #[test]
    fn a_refused_upgrade_is_retried_as_the_rules_say() {
        // (generation, the gateway's answer, a start-up error, dials expected)
        let cases = [
            (Generation::AgentProxy, "503 Service Unavailable", false, 3),
            (Generation::AgentProxy, "403 Forbidden", false, 1),
            (Generation::AgentProxy, "401 Unauthorized", false, 1),
            (Generation::AgentProxy, "503 Service Unavailable", true, 1),
            (
                Generation::UpstreamProxy,
                "503 Service Unavailable",
                false,
                1,
            ),
        ];
        for (generation, status, startup_error, dials) in cases {
            let fake = refusing(status);
            let gateway = fake.client(generation, Duration::from_secs(2), None);
            if startup_error {
                gateway
                    .state
                    .set_startup_error(Some("gateway unreachable at start-up: x".into()));
            }
            let case = format!("{generation:?} {status} startup_error={startup_error}");
            let error = open_with(&gateway, &limits(), b"").0.err().unwrap();
            let code: u16 = status[..3].parse().unwrap();
            assert!(
                matches!(
                    &error,
                    OpenError::Dial { error: GatewayError::Refused(c), attempts, .. }
                        if *c == code && *attempts == dials
                ),
                "{case}: {error:?}"
            );
            assert_eq!(error.status(), reply::BAD_GATEWAY, "{case}");
            assert_eq!(fake.accepted(), dials as usize, "{case}");
            let text = error.to_string();
            assert_eq!(
                text.contains(&format!("after {dials} attempts")),
                dials > 1,
                "{text}"
            );
            assert_eq!(text.contains("at start-up"), startup_error, "{text}");
        }
    }

    #[test]
    fn an_upgrade_that_never_finishes_is_retried_and_answered_504() {
        let fake = FakeGateway::start(|_, stream| stay_silent(stream));
        let gateway = fake.client(Generation::AgentProxy, Duration::from_millis(200), None);
        let error = open_with(&gateway, &limits(), b"").0.err().unwrap();
        assert!(
            matches!(
                &error,
                OpenError::Dial {
                    error: GatewayError::Timeout,
                    attempts: 3,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(error.status(), reply::GATEWAY_TIMEOUT);
        assert_eq!(fake.accepted(), 3);
    }

    /// An agent-proxy gateway whose first connection (pooled by the test)
    /// runs `pooled` once the preamble came, and whose later connections
    /// answer HELLO and the CONNECT; every preamble goes to the channel.
    fn with_pooled_script(
        pooled: impl Fn(&mut WebSocket<TcpStream>) + Send + Sync + 'static,
    ) -> (FakeGateway, Gateway, Seen) {
        let (tx, seen): (_, Seen) = mpsc::channel();
        let tx = Mutex::new(tx);
        let fake = FakeGateway::start(move |n, stream| {
            let Some(mut ws) = upgrade(stream) else {
                return;
            };
            if n > 0 {
                let Some(_hello) = next_binary(&mut ws) else {
                    return;
                };
                send(&mut ws, &HELLO_ACK);
            }
            let Some(preamble) = next_binary(&mut ws) else {
                return;
            };
            tx.lock().unwrap().send((n, decoded(&preamble))).unwrap();
            if n == 0 {
                pooled(&mut ws);
            } else {
                send(&mut ws, &chunk::encode(ANSWER));
            }
            hold(&mut ws);
        });
        let pool = Pool::new(PoolConfig {
            keepalive_interval: Duration::ZERO,
            ..PoolConfig::default()
        })
        .unwrap();
        let gateway = fake.client(Generation::AgentProxy, Duration::from_secs(2), Some(pool));
        let ws = gateway.open_websocket().unwrap();
        assert!(gateway.pool.as_ref().unwrap().put(ws, Instant::now()));
        (fake, gateway, seen)
    }

    #[test]
    fn a_reused_websocket_that_does_not_answer_in_time_is_redialled_with_the_same_opening() {
        let (fake, gateway, seen) = with_pooled_script(|_| {});
        let started = Instant::now();
        let (opened, asked) = open_with(&gateway, &limits(), b"");
        let opened = opened.unwrap();
        assert!(started.elapsed() >= limits().reuse_answer_timeout);
        assert!(!opened.reused && opened.v2, "answered on a fresh WebSocket");
        assert_eq!(&opened.answer[..], ANSWER);
        assert_eq!(asked, [true, false]);
        let (first, on_reused) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        let (second, on_fresh) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((first, second), (0, 1));
        assert_eq!(on_reused, on_fresh, "the opening is replayed as it was");
        assert_eq!(fake.accepted(), 2);
    }

    #[test]
    fn a_reused_websocket_the_gateway_closes_before_answering_is_redialled() {
        let (fake, gateway, _seen) = with_pooled_script(|ws| {
            let _ = ws.close(None);
        });
        let opened = open_with(&gateway, &limits(), b"").0.unwrap();
        assert!(!opened.reused);
        assert_eq!(&opened.answer[..], ANSWER);
        assert_eq!(fake.accepted(), 2);
    }

    #[test]
    fn a_reused_websocket_that_began_to_answer_is_never_redialled() {
        // The answer's first bytes, then the gateway goes: the opening is
        // over, what follows is the tunnel's.
        let (fake, gateway, _seen) = with_pooled_script(|ws| {
            send(ws, &chunk::encode(b"HTTP/1.1 200"));
            let _ = ws.close(None);
        });
        let opened = open_with(&gateway, &limits(), b"").0.unwrap();
        assert!(opened.reused && opened.v2);
        assert_eq!(opened.attempts, 0);
        assert_eq!(&opened.answer[..], b"HTTP/1.1 200");
        assert_eq!(fake.accepted(), 1, "no fresh dial");
    }

    #[test]
    fn no_hello_ack_within_the_wait_falls_back_and_is_remembered() {
        let fake = FakeGateway::start(|n, stream| {
            let Some(mut ws) = upgrade(stream) else {
                return;
            };
            if n == 0 {
                let _hello = next_binary(&mut ws);
                let _preamble = next_binary(&mut ws);
                // A keepalive comes only after the HELLO_ACK wait is over
                // (it is due later): answer then.
                while next_binary(&mut ws).is_some_and(|m| !decoded(&m).is_empty()) {}
                send(&mut ws, &chunk::encode(ANSWER));
            } else {
                // The gateway is known not to acknowledge: no HELLO.
                let first = next_binary(&mut ws).unwrap_or_default();
                if decoded(&first).starts_with(b"CONNECT ") {
                    send(&mut ws, &chunk::encode(ANSWER));
                }
            }
            hold(&mut ws);
        });
        let gateway = fake.client(Generation::AgentProxy, Duration::from_secs(2), None);
        let limits = Limits {
            hello_ack_timeout: Duration::from_millis(100),
            keepalive_interval: Duration::from_millis(300),
            ..limits()
        };
        let opened = open_with(&gateway, &limits, b"").0.unwrap();
        assert_eq!(opened.fell_back, Some("no HELLO_ACK within the wait"));
        assert!(!opened.v2);
        assert_eq!(&opened.answer[..], ANSWER);
        assert!(gateway.state.v2_unacknowledged());
        let again = open_with(&gateway, &limits, b"").0.unwrap();
        assert_eq!(
            again.fell_back, None,
            "no HELLO sent, nothing to fall back from"
        );
        assert!(!again.v2);
        assert_eq!(&again.answer[..], ANSWER);
    }

    #[test]
    fn an_answer_before_hello_ack_falls_back() {
        let fake = FakeGateway::start(|_, stream| {
            let Some(mut ws) = upgrade(stream) else {
                return;
            };
            let _hello = next_binary(&mut ws);
            let _preamble = next_binary(&mut ws);
            send(&mut ws, &chunk::encode(ANSWER));
            hold(&mut ws);
        });
        let gateway = fake.client(Generation::AgentProxy, Duration::from_secs(2), None);
        let opened = open_with(&gateway, &limits(), b"").0.unwrap();
        assert_eq!(
            opened.fell_back,
            Some("the gateway answered before HELLO_ACK")
        );
        assert!(!opened.v2);
        assert_eq!(&opened.answer[..], ANSWER);
    }
}
