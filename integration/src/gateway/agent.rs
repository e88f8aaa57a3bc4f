//! The agent-proxy generation (protocol v2) on one WebSocket: the HELLO
//! exchange, then tunnels, one after another on the same WebSocket when
//! v2 was acknowledged (FIN from the gateway, FIN_ACK from the relay),
//! else one tunnel in the first generation's manner on v2 messages.
//!
//! `--server late` acknowledges a HELLO with version 2; `early` never
//! acknowledges; `v1-only` drops every control message unread.
//! `--on-reuse` makes every tunnel after the first on a WebSocket fail in
//! one of the ways the relay's safe redial is about ([`ReuseFault`]). The
//! event lines are listed in [`crate::events`].

use std::io;
use std::time::{Duration, Instant};

use tungstenite::{Bytes, Message, WebSocket};

use super::{
    After, FIRST_CHUNK_TIMEOUT, Refusal, ReuseFault, ServerKind, Shared, check_connect,
    refuse_tunnel, run_tunnel,
};
use crate::events::escape;
use crate::pump::{FIN_ACK_WAIT, Framing};
use crate::stream::GatewayStream;
use crate::wire::{self, CONTROL_FIN_ACK, CONTROL_HELLO, V2, decode_v2, hex};

/// Longest a WebSocket may sit between tunnels without `--close-idle-after`.
const IDLE_MAX: Duration = Duration::from_secs(3600);

/// `--on-reuse cut`: how long client bytes after the CONNECT are swallowed
/// (and recorded) before the cut.
const SWALLOW_FOR: Duration = Duration::from_millis(300);

/// `--on-reuse silent`: the longest the gateway stays silent.
const SILENT_MAX: Duration = Duration::from_secs(60);

/// `--on-reuse answer-then-cut`: what the cut tunnel answers.
const PARTIAL_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial";

/// What a bounded read got.
enum Got {
    Message(Bytes),
    Timeout,
    Closed(String),
}

/// Why a WebSocket ended when the relay closed it (a start-up probe does,
/// before any CONNECT).
const RELAY_CLOSED: &str = "relay closed the websocket";

/// Reads the next binary message before `deadline` (pings are answered by
/// the library, pongs skipped).
fn read_binary(ws: &mut WebSocket<GatewayStream>, deadline: Instant) -> Got {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Got::Timeout;
        }
        let _ = ws.get_ref().tcp().set_read_timeout(Some(left));
        match ws.read() {
            Ok(Message::Binary(b)) => return Got::Message(b),
            Ok(Message::Text(_)) => return Got::Closed("relay sent a text frame".into()),
            Ok(Message::Close(_)) => {
                let _ = ws.flush();
                return Got::Closed(RELAY_CLOSED.into());
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Got::Timeout;
            }
            Err(e) => return Got::Closed(format!("websocket failed: {e}")),
        }
    }
}

/// Sends one message, blocking.
fn send(ws: &mut WebSocket<GatewayStream>, bytes: Vec<u8>) -> Result<(), String> {
    let _ = ws
        .get_ref()
        .tcp()
        .set_write_timeout(Some(Duration::from_secs(10)));
    ws.send(Message::Binary(Bytes::from(bytes)))
        .map_err(|e| e.to_string())
}

/// Serves one agent-proxy WebSocket (`ws_no`: its upgrade number).
pub(super) fn session(
    shared: &Shared,
    id: u64,
    ws_no: u64,
    mut ws: WebSocket<GatewayStream>,
) -> io::Result<()> {
    let events = &shared.events;
    let server = shared.cfg.server;
    let end = |why: &str, tunnels: u64| {
        events.record(&format!(
            "v2 ws-end ws={ws_no} tunnels={tunnels} why={}",
            why.replace(' ', "_")
        ));
        if tunnels == 0 && why == RELAY_CLOSED {
            log::info!(
                "#{id}: websocket {ws_no} closed before any CONNECT: the relay's start-up probe"
            );
        } else {
            log::info!("#{id}: websocket {ws_no} done after {tunnels} tunnels: {why}");
        }
    };

    // The first message: HELLO from any v2 client.
    let first = match read_binary(&mut ws, Instant::now() + FIRST_CHUNK_TIMEOUT) {
        Got::Message(b) => b,
        Got::Timeout => {
            end("no first message in time", 0);
            return Ok(());
        }
        Got::Closed(why) => {
            end(&why, 0);
            return Ok(());
        }
    };
    events.record(&format!("v2 first-message ws={ws_no} hex={}", hex(&first)));
    let message = match decode_v2(&first) {
        Ok(m) => m,
        Err(e) => {
            let _ = ws.close(None);
            end(&format!("malformed first message: {e}"), 0);
            return Ok(());
        }
    };
    let mut acked = false;
    let mut pending = None;
    match (message.control, server) {
        (0, _) if message.data.is_empty() => {}
        (0, _) => {
            events.record(&format!("v2 no-hello ws={ws_no}"));
            pending = Some(message.data.to_vec());
        }
        (_, ServerKind::V1Only) => events.record(&format!(
            "v2 control-dropped ws={ws_no} control={}",
            message.control
        )),
        (CONTROL_HELLO, ServerKind::Late) => {
            events.record(&format!("v2 hello ws={ws_no} version={}", message.version));
            if message.version == V2 {
                if let Err(e) = send(&mut ws, wire::HELLO_ACK.to_vec()) {
                    end(&format!("cannot send HELLO_ACK: {e}"), 0);
                    return Ok(());
                }
                events.record(&format!("v2 hello-ack ws={ws_no}"));
                acked = true;
            }
        }
        (CONTROL_HELLO, ServerKind::Early) => {
            events.record(&format!(
                "v2 hello-ignored ws={ws_no} version={}",
                message.version
            ));
        }
        (c, _) => events.record(&format!("v2 control-ignored ws={ws_no} control={c}")),
    }

    let mut tunnels = 0u64;
    loop {
        let data = match pending.take() {
            Some(d) => d,
            None => {
                let wait = if tunnels == 0 {
                    FIRST_CHUNK_TIMEOUT
                } else {
                    shared.cfg.close_idle_after.unwrap_or(IDLE_MAX)
                };
                match read_preamble(shared, &mut ws, ws_no, Instant::now() + wait) {
                    Ok(d) => d,
                    Err(None) => {
                        if tunnels > 0 {
                            events.record(&format!(
                                "v2 idle-close ws={ws_no} after_ms={}",
                                wait.as_millis()
                            ));
                        }
                        close(&mut ws);
                        end("idle", tunnels);
                        return Ok(());
                    }
                    Err(Some(why)) => {
                        close(&mut ws);
                        end(&why, tunnels);
                        return Ok(());
                    }
                }
            }
        };
        tunnels += 1;
        let tag = format!(" ws={ws_no} tunnel={tunnels}");
        events.record(&format!("v2 preamble{tag} {}", escape(&data)));
        let process = crate::head::head_end(&data)
            .and_then(|e| crate::head::parse_head(&data[..e]).ok())
            .and_then(|h| {
                h.header("X-Agent-Proxy-Client-Process")
                    .map(|v| v.escape_default().to_string())
            })
            .unwrap_or_else(|| "-".into());
        events.record(&format!("v2 client-process{tag} {process}"));
        if let (Some(fault), true) = (shared.cfg.on_reuse, tunnels > 1) {
            let why = reuse_fault(shared, &mut ws, fault, &data, &tag);
            end(&why, tunnels);
            return Ok(());
        }
        let framing = Framing::V2 { fin: acked };
        ws = match run_tunnel(shared, id, ws, &data, framing, &tag)? {
            After::Gone => {
                end("tunnel ended", tunnels);
                return Ok(());
            }
            After::Reusable(ws) => {
                events.record(&format!("v2 fin-ack{tag}"));
                ws
            }
            After::Refused(refusal, mut ws) if acked && refusal.status != 0 => {
                match refuse_with_fin(shared, &mut ws, refusal, &tag) {
                    Ok(()) => ws,
                    Err(why) => {
                        close(&mut ws);
                        end(&why, tunnels);
                        return Ok(());
                    }
                }
            }
            After::Refused(refusal, mut ws) => {
                refuse_tunnel(shared, id, &mut ws, refusal);
                end("tunnel refused", tunnels);
                return Ok(());
            }
        };
        if !acked {
            // Unreachable in practice: without FIN nothing comes back.
            close(&mut ws);
            end("one tunnel per websocket", tunnels);
            return Ok(());
        }
    }
}

/// Waits for the next tunnel's CONNECT data: `Err(None)` on timeout,
/// `Err(Some(why))` when the WebSocket ends or misbehaves.
fn read_preamble(
    shared: &Shared,
    ws: &mut WebSocket<GatewayStream>,
    ws_no: u64,
    deadline: Instant,
) -> Result<Vec<u8>, Option<String>> {
    loop {
        let bytes = match read_binary(ws, deadline) {
            Got::Message(b) => b,
            Got::Timeout => return Err(None),
            Got::Closed(why) => return Err(Some(why)),
        };
        let m = decode_v2(&bytes).map_err(|e| Some(format!("malformed message: {e}")))?;
        match m.control {
            0 if m.data.is_empty() => shared.events.record("keepalive"),
            0 => return Ok(m.data.to_vec()),
            c if shared.cfg.server == ServerKind::V1Only => shared
                .events
                .record(&format!("v2 control-dropped ws={ws_no} control={c}")),
            c => shared
                .events
                .record(&format!("v2 control-ignored ws={ws_no} control={c}")),
        }
    }
}

/// A refused CONNECT on an acknowledged WebSocket: the answer head, FIN,
/// then the relay's FIN_ACK; the WebSocket stays usable.
fn refuse_with_fin(
    shared: &Shared,
    ws: &mut WebSocket<GatewayStream>,
    refusal: Refusal,
    tag: &str,
) -> Result<(), String> {
    let (status, why) = (refusal.status, &refusal.why);
    shared
        .events
        .record(&format!("tunnel refused {status} {why}"));
    send(ws, wire::encode(&refusal.answer()))?;
    send(ws, wire::FIN.to_vec())?;
    shared.events.record(&format!("fin-sent{tag}"));
    let deadline = Instant::now() + FIN_ACK_WAIT;
    loop {
        match read_binary(ws, deadline) {
            Got::Message(b) => match decode_v2(&b) {
                Ok(m) if m.control == CONTROL_FIN_ACK => {
                    shared.events.record(&format!("v2 fin-ack{tag}"));
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => return Err(format!("malformed message: {e}")),
            },
            Got::Timeout => {
                shared.events.record(&format!("v2 fin-ack-missing{tag}"));
                return Err("no FIN_ACK in time".into());
            }
            Got::Closed(why) => return Err(why),
        }
    }
}

/// Closes the WebSocket politely (close frame, a short wait for the reply).
fn close(ws: &mut WebSocket<GatewayStream>) {
    let _ = ws.close(None);
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Got::Message(_) = read_binary(ws, deadline) {}
    let _ = ws.get_ref().tcp().shutdown(std::net::Shutdown::Both);
}

/// `--on-reuse`: fails the tunnel whose CONNECT `preamble` just came on a
/// reused WebSocket; the WebSocket is done afterwards. Returns why it ended.
fn reuse_fault(
    shared: &Shared,
    ws: &mut WebSocket<GatewayStream>,
    fault: ReuseFault,
    preamble: &[u8],
    tag: &str,
) -> String {
    let events = &shared.events;
    events.record(&format!("v2 reuse-fault {}{tag}", fault.as_str()));
    match fault {
        ReuseFault::Cut => {
            swallow(shared, ws, Instant::now() + SWALLOW_FOR, tag);
            cut(ws);
            "cut after the CONNECT".into()
        }
        ReuseFault::Silent => {
            let why = swallow(shared, ws, Instant::now() + SILENT_MAX, tag)
                .unwrap_or_else(|| "silent for the longest wait".into());
            cut(ws);
            why
        }
        ReuseFault::AnswerThenCut => {
            let target = match check_connect(shared, preamble) {
                Ok((target, _)) => target,
                Err(Refusal { status, why, .. }) => {
                    events.record(&format!("tunnel refused {status} {why}"));
                    cut(ws);
                    return format!("CONNECT refused: {why}");
                }
            };
            events.record(&format!("connect {target}"));
            let answer = [
                &b"HTTP/1.1 200 Connection Established\r\n\r\n"[..],
                PARTIAL_ANSWER,
            ];
            for part in answer {
                if let Err(e) = send(ws, wire::encode(part)) {
                    return format!("cannot answer: {e}");
                }
            }
            // Time for the relay to pass the answer on before the cut.
            std::thread::sleep(Duration::from_millis(300));
            cut(ws);
            "cut after a partial answer".into()
        }
    }
}

/// Reads and records what the relay sends until `deadline`: data as
/// `v2 swallowed<tag> "<data>"`. `Some(why)` when the relay closed first.
fn swallow(
    shared: &Shared,
    ws: &mut WebSocket<GatewayStream>,
    deadline: Instant,
    tag: &str,
) -> Option<String> {
    loop {
        match read_binary(ws, deadline) {
            Got::Message(b) => match decode_v2(&b) {
                Ok(m) if m.control == 0 && m.data.is_empty() => shared.events.record("keepalive"),
                Ok(m) if m.control == 0 => shared
                    .events
                    .record(&format!("v2 swallowed{tag} {}", escape(m.data))),
                Ok(m) => shared
                    .events
                    .record(&format!("control-ignored {}{tag}", m.control)),
                Err(e) => return Some(format!("malformed message: {e}")),
            },
            Got::Timeout => return None,
            Got::Closed(why) => return Some(why),
        }
    }
}

/// Ends the WebSocket's TCP connection as a crash would: no v2 FIN, no
/// close frame.
fn cut(ws: &mut WebSocket<GatewayStream>) {
    let _ = ws.get_ref().tcp().shutdown(std::net::Shutdown::Both);
}
