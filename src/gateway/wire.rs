//! Which tunnel protocol one WebSocket speaks, and reading the gateway's
//! messages by it.
//!
//! The two generations encode data the same way (`0A varint(len) data`, see
//! [`chunk`]), so what the relay sends differs only in the control messages
//! of protocol v2 (HELLO on a fresh WebSocket, FIN_ACK after the server's
//! FIN). What the gateway sends is read differently: a first-generation
//! WebSocket carries nothing but chunks ([`chunk::decode`]); a v2 one
//! carries protobuf messages with control fields ([`message_v2::decode`]).
//! [`Wire::decode`] hides the difference behind one [`Incoming`].

use std::fmt;

use crate::gateway::chunk::{self, ChunkError};
use crate::gateway::message_v2::{self, MessageError, ServerMessage};

/// The protocol a WebSocket's messages follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Generation 1, or a v2 gateway that did not acknowledge v2: chunks
    /// only, one tunnel per WebSocket, no FIN.
    V1,
    /// Protocol v2: control messages, server FIN, reusable WebSocket.
    V2,
}

impl Wire {
    /// Decodes one binary message from the gateway.
    ///
    /// ```
    /// use ccr_relay::gateway::wire::{Incoming, Wire};
    /// assert_eq!(Wire::V1.decode(&[0x0A, 1, b'x']), Ok(Incoming::Data(&b"x"[..])));
    /// assert_eq!(Wire::V2.decode(&[0x10, 0x03]), Ok(Incoming::Fin));
    /// assert!(Wire::V1.decode(&[0x10, 0x03]).is_err());
    /// ```
    pub fn decode(self, message: &[u8]) -> Result<Incoming<'_>, Malformed> {
        match self {
            Wire::V1 => chunk::decode(message)
                .map(Incoming::Data)
                .map_err(Malformed::Chunk),
            Wire::V2 => Ok(match message_v2::decode(message).map_err(Malformed::V2)? {
                ServerMessage::Data(data) => Incoming::Data(data),
                ack @ ServerMessage::HelloAck { .. } => Incoming::HelloAck {
                    v2: ack.acknowledges_v2(),
                },
                ServerMessage::Fin => Incoming::Fin,
                ServerMessage::OtherControl(_) => Incoming::Ignored,
            }),
        }
    }

    /// The malformed-message error for a text frame.
    pub fn text_frame(self) -> Malformed {
        match self {
            Wire::V1 => Malformed::Chunk(ChunkError::TextFrame),
            Wire::V2 => Malformed::V2(MessageError::TextFrame),
        }
    }

    /// `v1` or `v2`, for log lines.
    pub fn name(self) -> &'static str {
        match self {
            Wire::V1 => "v1",
            Wire::V2 => "v2",
        }
    }
}

/// One message from the gateway, as the tunnel acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Tunnel bytes; empty is a keepalive.
    Data(&'a [u8]),
    /// HELLO_ACK; `v2` only when it names version 2.
    HelloAck { v2: bool },
    /// The server finished this tunnel (v2 only).
    Fin,
    /// A control message the relay does not act on.
    Ignored,
}

/// A message the relay could not decode: it ends the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    Chunk(ChunkError),
    V2(MessageError),
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Chunk(e) => write!(f, "malformed chunk: {e}"),
            Malformed::V2(e) => write!(f, "malformed v2 message: {e}"),
        }
    }
}

impl std::error::Error for Malformed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Malformed::Chunk(e) => Some(e),
            Malformed::V2(e) => Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_wires_read_data_and_keepalives() {
        for wire in [Wire::V1, Wire::V2] {
            assert_eq!(
                wire.decode(&[0x0A, 2, b'h', b'i']),
                Ok(Incoming::Data(b"hi"))
            );
            assert_eq!(wire.decode(&[0x0A, 0]), Ok(Incoming::Data(b"")));
            assert_eq!(wire.decode(&[]), Ok(Incoming::Data(b"")));
        }
    }

    #[test]
    fn only_v2_reads_control_messages() {
        assert_eq!(
            Wire::V2.decode(&[0x10, 0x02, 0x18, 0x02]),
            Ok(Incoming::HelloAck { v2: true })
        );
        assert_eq!(
            Wire::V2.decode(&[0x10, 0x02, 0x18, 0x03]),
            Ok(Incoming::HelloAck { v2: false })
        );
        assert_eq!(Wire::V2.decode(&[0x10, 0x03]), Ok(Incoming::Fin));
        assert_eq!(Wire::V2.decode(&[0x10, 0x09]), Ok(Incoming::Ignored));
        assert!(matches!(
            Wire::V1.decode(&[0x10, 0x03]),
            Err(Malformed::Chunk(_))
        ));
        assert!(matches!(Wire::V2.decode(&[0x0F]), Err(Malformed::V2(_))));
        assert_eq!(
            Wire::V2.text_frame(),
            Malformed::V2(MessageError::TextFrame)
        );
    }
}
