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
