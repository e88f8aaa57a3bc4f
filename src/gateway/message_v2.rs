//! The tunnel protocol v2 wire format: the one protobuf message every
//! WebSocket binary frame of an agent-proxy tunnel carries.
//!
//! ```text
//! message { bytes data = 1; uint32 control = 2; uint32 version = 3; }
//! ```
//!
//! What the relay sends is fixed byte strings and data messages built in
//! place: a data message is `0A varint(len) data`, byte for byte the v1 chunk
//! (so [`write_data_header`] lets a caller put the header in front of data
//! already in its buffer), [`HELLO`] is `10 01 18 02`, [`FIN_ACK`] is
//! `10 04`, [`KEEPALIVE`] is `0A 00`.
//!
//! What the gateway sends is read by a real protobuf reader ([`decode`]):
//! unknown fields of wire types 0, 1, 2 and 5 are skipped, a later occurrence
//! of a field overrides an earlier one, and anything the reader cannot
//! account for (another wire type, a truncated field, a varint longer than
//! 10 bytes, a known field with the wrong wire type) is a [`MessageError`]
//! that ends the tunnel: the relay never forwards bytes it could not decode.
//! Decoding borrows: the data of a [`ServerMessage::Data`] is a slice of the
//! message itself.

use std::fmt;

/// The longest protobuf varint: 64 bits in 7-bit groups.
pub const MAX_VARINT_BYTES: usize = 10;

/// The most bytes a data message adds in front of its data: the tag and a
/// length varint.
pub const MAX_DATA_HEADER: usize = 1 + MAX_VARINT_BYTES;

/// HELLO with version 2: `control = 1, version = 2`. Sent first on every
/// fresh WebSocket.
pub const HELLO: [u8; 4] = [0x10, 0x01, 0x18, 0x02];

/// FIN_ACK: `control = 4`, the answer to the server's FIN.
pub const FIN_ACK: [u8; 2] = [0x10, 0x04];

/// A keepalive: a data message with no data.
pub const KEEPALIVE: [u8; 2] = [0x0A, 0x00];

/// The protocol version this relay speaks and asks for in [`HELLO`].
pub const PROTOCOL_VERSION: u64 = 2;

/// Control values (field 2). 0 or absent means a data message.
pub mod control {
    /// Client to server: "I speak version N".
    pub const HELLO: u64 = 1;
    /// Server to client: "so do I" (with the version).
    pub const HELLO_ACK: u64 = 2;
    /// Server to client: this tunnel is finished.
    pub const FIN: u64 = 3;
    /// Client to server: the answer to FIN.
    pub const FIN_ACK: u64 = 4;
}

/// One decoded message from the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// Control 0 or absent: tunnel bytes, borrowed from the message. Empty
    /// (no data field, or a data field of length 0) is a keepalive.
    Data(&'a [u8]),
    /// HELLO_ACK with the version it names (0 when the field is absent).
    /// Only version [`PROTOCOL_VERSION`] is an acknowledgement.
    HelloAck { version: u64 },
    /// The server has finished this tunnel.
    Fin,
    /// Any other non-zero control value, including the client-to-server
    /// HELLO and FIN_ACK: the caller ignores it.
    OtherControl(u64),
}

impl ServerMessage<'_> {
    /// True for a HELLO_ACK that names version 2.
    pub fn acknowledges_v2(&self) -> bool {
        matches!(self, ServerMessage::HelloAck { version } if *version == PROTOCOL_VERSION)
    }
}

/// Why a message from the gateway could not be decoded. Holds positions and
/// numbers only, never payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// The message ends inside a varint (a tag, a value or a length).
    TruncatedVarint { offset: usize },
    /// A varint has no final byte within 10 bytes.
    VarintTooLong { offset: usize },
    /// Field number 0 or above the protobuf maximum.
    InvalidFieldNumber { offset: usize, field: u64 },
    /// Wire type 3, 4, 6 or 7 (groups, or not defined).
    UnsupportedWireType { field: u64, wire_type: u8 },
    /// A known field with a wire type other than its own.
    WrongWireType { field: u64, wire_type: u8 },
    /// A fixed-size or length-delimited field runs past the message's end.
    TruncatedField {
        field: u64,
        needed: u64,
        available: usize,
    },
    /// A text frame, where only binary frames are allowed.
    TextFrame,
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::TruncatedVarint { offset } => {
                write!(f, "message ends inside a varint at byte {offset}")
            }
            MessageError::VarintTooLong { offset } => {
                write!(f, "varint at byte {offset} is longer than 10 bytes")
            }
            MessageError::InvalidFieldNumber { offset, field } => {
                write!(f, "invalid field number {field} at byte {offset}")
            }
            MessageError::UnsupportedWireType { field, wire_type } => {
                write!(f, "field {field} has unsupported wire type {wire_type}")
            }
            MessageError::WrongWireType { field, wire_type } => {
                write!(f, "field {field} has wire type {wire_type}, not its own")
            }
            MessageError::TruncatedField {
                field,
                needed,
                available,
            } => write!(
                f,
                "field {field} needs {needed} bytes but only {available} follow"
            ),
            MessageError::TextFrame => {
                f.write_str("gateway sent a text frame; tunnel messages are binary")
            }
        }
    }
}

impl std::error::Error for MessageError {}

/// The largest field number protobuf allows (2^29 - 1).
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

/// Reads a varint at `*pos`, advancing it. Ten bytes at most; bits past the
/// 64th in a tenth byte are dropped, as protobuf readers do.
fn read_varint(msg: &[u8], pos: &mut usize) -> Result<u64, MessageError> {
    let start = *pos;
    let mut value: u64 = 0;
    for i in 0..MAX_VARINT_BYTES {
        let Some(&byte) = msg.get(start + i) else {
            return Err(MessageError::TruncatedVarint { offset: start });
        };
        value |= u64::from(byte & 0x7F).wrapping_shl(7 * i as u32);
        if byte & 0x80 == 0 {
            *pos = start + i + 1;
            return Ok(value);
        }
    }
    Err(MessageError::VarintTooLong { offset: start })
}

/// Skips `len` bytes of field `field` at `*pos`, or says the field is cut.
fn take<'a>(
    msg: &'a [u8],
    pos: &mut usize,
    field: u64,
    len: u64,
) -> Result<&'a [u8], MessageError> {
    let available = msg.len() - *pos;
    if len > available as u64 {
        return Err(MessageError::TruncatedField {
            field,
            needed: len,
            available,
        });
    }
    let start = *pos;
    *pos += len as usize;
    Ok(&msg[start..*pos])
}

/// Decodes one binary message from the gateway.
///
/// An empty message decodes to an empty [`ServerMessage::Data`] (a
/// keepalive), as every field is absent.
///
/// ```
/// use ccr_relay::gateway::message_v2::{decode, ServerMessage};
/// assert_eq!(decode(&[0x0A, 1, b'x']), Ok(ServerMessage::Data(b"x")));
/// assert_eq!(decode(&[0x10, 0x02, 0x18, 0x02]), Ok(ServerMessage::HelloAck { version: 2 }));
/// assert_eq!(decode(&[0x10, 0x03]), Ok(ServerMessage::Fin));
/// assert!(decode(&[0x0B]).is_err());
/// ```
pub fn decode(message: &[u8]) -> Result<ServerMessage<'_>, MessageError> {
    let mut data: &[u8] = &[];
    let mut control: u64 = 0;
    let mut version: u64 = 0;
    let mut pos = 0;
    while pos < message.len() {
        let tag_at = pos;
        let tag = read_varint(message, &mut pos)?;
        let field = tag >> 3;
        let wire_type = (tag & 7) as u8;
        if field == 0 || field > MAX_FIELD_NUMBER {
            return Err(MessageError::InvalidFieldNumber {
                offset: tag_at,
                field,
            });
        }
        // The wire types a field of ours must have; another one on a known
        // field means the peer speaks something else.
        let own = match field {
            1 => Some(2),
            2 | 3 => Some(0),
            _ => None,
        };
        if own.is_some_and(|w| w != wire_type) && matches!(wire_type, 0 | 1 | 2 | 5) {
            return Err(MessageError::WrongWireType { field, wire_type });
        }
        match wire_type {
            0 => {
                let value = read_varint(message, &mut pos)?;
                match field {
                    2 => control = value,
                    3 => version = value,
                    _ => {}
                }
            }
            1 => {
                take(message, &mut pos, field, 8)?;
            }
            2 => {
                let len = read_varint(message, &mut pos)?;
                let bytes = take(message, &mut pos, field, len)?;
                if field == 1 {
                    data = bytes;
                }
            }
            5 => {
                take(message, &mut pos, field, 4)?;
            }
            _ => return Err(MessageError::UnsupportedWireType { field, wire_type }),
        }
    }
    Ok(match control {
        0 => ServerMessage::Data(data),
        control::HELLO_ACK => ServerMessage::HelloAck { version },
        control::FIN => ServerMessage::Fin,
        other => ServerMessage::OtherControl(other),
    })
}

// A data message is byte for byte a first-generation chunk (`0A varint(len)
// data`): one encoder serves both generations.
pub use crate::gateway::chunk::{
    encode as encode_data, encode_into as encode_data_into, header_len as data_header_len,
    write_header as write_data_header,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf varint, for building test messages independently of the
    /// code under test.
    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn tag(field: u64, wire_type: u64) -> Vec<u8> {
        varint(field << 3 | wire_type)
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn fixed_encodings() {
        assert_eq!(HELLO, [0x10, 0x01, 0x18, 0x02]);
        assert_eq!(FIN_ACK, [0x10, 0x04]);
        assert_eq!(KEEPALIVE, [0x0A, 0x00]);
        assert_eq!(encode_data(b""), KEEPALIVE);
        // What we send decodes as what it means (HELLO and FIN_ACK are
        // client-to-server controls: "other" on our own reader).
        assert_eq!(decode(&HELLO), Ok(ServerMessage::OtherControl(1)));
        assert_eq!(decode(&FIN_ACK), Ok(ServerMessage::OtherControl(4)));
        assert_eq!(decode(&KEEPALIVE), Ok(ServerMessage::Data(b"")));
    }

    #[test]
    fn data_round_trips_at_boundary_lengths() {
        for len in [0usize, 1, 127, 128, 16383, 16384, 512 * 1024, 1 << 21] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let encoded = encode_data(&data);
            assert_eq!(encoded.len(), data_header_len(len) + len);
            assert_eq!(&encoded[data_header_len(len)..], &data[..]);
            assert_eq!(
                &encoded[..data_header_len(len)],
                &cat(&[&[0x0A], &varint(len as u64)])[..],
                "length {len}"
            );
            assert_eq!(decode(&encoded), Ok(ServerMessage::Data(&data[..])));
            // Header built in place, in front of data already there.
            let mut buf = vec![0u8; data_header_len(len)];
            buf.extend_from_slice(&data);
            let h = data_header_len(len);
            write_data_header(&mut buf[..h], len);
            assert_eq!(buf, encoded);
        }
        assert!(data_header_len(usize::MAX) <= MAX_DATA_HEADER);
    }

    #[test]
    fn decoded_data_borrows_the_message() {
        let msg = encode_data(b"hello");
        let Ok(ServerMessage::Data(d)) = decode(&msg) else {
            panic!("not data");
        };
        assert_eq!(d.as_ptr(), msg[2..].as_ptr());
    }

    #[test]
    fn empty_message_and_absent_fields() {
        assert_eq!(decode(&[]), Ok(ServerMessage::Data(b"")));
        // control 0 written out is still a data message.
        assert_eq!(
            decode(&[0x10, 0x00, 0x0A, 0x01, b'z']),
            Ok(ServerMessage::Data(b"z"))
        );
        // HELLO_ACK without a version field: version 0, no acknowledgement.
        let m = decode(&[0x10, 0x02]).unwrap();
        assert_eq!(m, ServerMessage::HelloAck { version: 0 });
        assert!(!m.acknowledges_v2());
    }

    #[test]
    fn hello_ack_versions() {
        let v2 = decode(&[0x10, 0x02, 0x18, 0x02]).unwrap();
        assert!(v2.acknowledges_v2());
        // Field order does not matter.
        assert!(decode(&[0x18, 0x02, 0x10, 0x02]).unwrap().acknowledges_v2());
        for other in [1u64, 3, 300, u64::MAX] {
            let msg = cat(&[&[0x10, 0x02, 0x18], &varint(other)]);
            let m = decode(&msg).unwrap();
            assert_eq!(m, ServerMessage::HelloAck { version: other });
            assert!(!m.acknowledges_v2(), "version {other}");
        }
    }

    #[test]
    fn fin_and_unknown_controls() {
        assert_eq!(decode(&[0x10, 0x03]), Ok(ServerMessage::Fin));
        for c in [1u64, 4, 5, 99, 1 << 40] {
            let msg = cat(&[&[0x10], &varint(c)]);
            assert_eq!(decode(&msg), Ok(ServerMessage::OtherControl(c)));
        }
    }

    #[test]
    fn control_with_data_is_control_only() {
        let fin_with_data = cat(&[&encode_data(b"ignored"), &[0x10, 0x03]]);
        assert_eq!(decode(&fin_with_data), Ok(ServerMessage::Fin));
        let ack_with_data = cat(&[&[0x10, 0x02, 0x18, 0x02], &encode_data(b"x")]);
        assert_eq!(
            decode(&ack_with_data),
            Ok(ServerMessage::HelloAck { version: 2 })
        );
        let odd = cat(&[&[0x10, 0x09], &encode_data(b"x")]);
        assert_eq!(decode(&odd), Ok(ServerMessage::OtherControl(9)));
    }

    #[test]
    fn unknown_fields_of_each_skippable_wire_type_are_skipped() {
        let unknowns: [Vec<u8>; 4] = [
            cat(&[&tag(7, 0), &varint(u64::MAX)]),
            cat(&[&tag(8, 1), &[1, 2, 3, 4, 5, 6, 7, 8]]),
            cat(&[&tag(9, 2), &varint(3), b"abc"]),
            cat(&[&tag(MAX_FIELD_NUMBER, 5), &[1, 2, 3, 4]]),
        ];
        for u in &unknowns {
            let before = cat(&[u, &encode_data(b"payload")]);
            assert_eq!(
                decode(&before),
                Ok(ServerMessage::Data(b"payload")),
                "{u:02x?}"
            );
            let after = cat(&[&encode_data(b"payload"), u]);
            assert_eq!(
                decode(&after),
                Ok(ServerMessage::Data(b"payload")),
                "{u:02x?}"
            );
            let with_fin = cat(&[u, &[0x10, 0x03], u]);
            assert_eq!(decode(&with_fin), Ok(ServerMessage::Fin));
            // An unknown field alone: a keepalive.
            assert_eq!(decode(u), Ok(ServerMessage::Data(b"")));
        }
    }

    #[test]
    fn other_wire_types_are_malformed() {
        for wt in [3u64, 4, 6, 7] {
            for field in [1u64, 2, 3, 9] {
                let msg = cat(&[&tag(field, wt), &[0, 0, 0, 0, 0, 0, 0, 0]]);
                assert_eq!(
                    decode(&msg),
                    Err(MessageError::UnsupportedWireType {
                        field,
                        wire_type: wt as u8
                    })
                );
            }
        }
    }

    #[test]
    fn known_fields_with_the_wrong_wire_type_are_malformed() {
        // data as a varint, control as bytes, version as fixed32.
        assert_eq!(
            decode(&[0x08, 0x01]),
            Err(MessageError::WrongWireType {
                field: 1,
                wire_type: 0
            })
        );
        assert_eq!(
            decode(&[0x12, 0x01, 0x03]),
            Err(MessageError::WrongWireType {
                field: 2,
                wire_type: 2
            })
        );
        assert!(matches!(
            decode(&[0x1D, 0, 0, 0, 2]),
            Err(MessageError::WrongWireType { field: 3, .. })
        ));
    }

    #[test]
    fn field_number_zero_is_malformed() {
        assert!(matches!(
            decode(&[0x02, 0x00]),
            Err(MessageError::InvalidFieldNumber { field: 0, .. })
        ));
        let too_big = cat(&[&tag(MAX_FIELD_NUMBER + 1, 0), &[0]]);
        assert!(matches!(
            decode(&too_big),
            Err(MessageError::InvalidFieldNumber { .. })
        ));
    }

    #[test]
    fn later_fields_override_earlier_ones() {
        let two_data = cat(&[&encode_data(b"first"), &encode_data(b"second")]);
        assert_eq!(decode(&two_data), Ok(ServerMessage::Data(b"second")));
        // A control, then control 0: a data message after all.
        let undone = cat(&[&[0x10, 0x03], &encode_data(b"d"), &[0x10, 0x00]]);
        assert_eq!(decode(&undone), Ok(ServerMessage::Data(b"d")));
        // Data, then FIN: control only.
        let fin = cat(&[&[0x10, 0x00], &encode_data(b"d"), &[0x10, 0x03]]);
        assert_eq!(decode(&fin), Ok(ServerMessage::Fin));
        let versions = [0x10, 0x02, 0x18, 0x07, 0x18, 0x02];
        assert!(decode(&versions).unwrap().acknowledges_v2());
        let versions = [0x10, 0x02, 0x18, 0x02, 0x18, 0x07];
        assert!(!decode(&versions).unwrap().acknowledges_v2());
        // A later empty data field replaces earlier data.
        let emptied = cat(&[&encode_data(b"x"), &KEEPALIVE]);
        assert_eq!(decode(&emptied), Ok(ServerMessage::Data(b"")));
    }

    #[test]
    fn ten_byte_varints_are_fine_eleven_are_not() {
        // control = 3 (FIN), padded to ten bytes: 83 80 80 80 80 80 80 80 80 00.
        let mut ten = vec![0x10, 0x83];
        ten.extend([0x80; 7]);
        ten.push(0x80);
        ten.push(0x00);
        assert_eq!(ten.len(), 1 + 10);
        assert_eq!(decode(&ten), Ok(ServerMessage::Fin));
        // The largest value takes exactly ten bytes.
        let max = cat(&[&[0x10], &varint(u64::MAX)]);
        assert_eq!(max.len(), 11);
        assert_eq!(decode(&max), Ok(ServerMessage::OtherControl(u64::MAX)));
        // Eleven bytes: malformed, whatever the value.
        let mut eleven = vec![0x10, 0x83];
        eleven.extend([0x80; 9]);
        eleven.push(0x00);
        assert_eq!(
            decode(&eleven),
            Err(MessageError::VarintTooLong { offset: 1 })
        );
        // Also as a tag and as a length.
        let mut tag11 = vec![0x8A];
        tag11.extend([0x80; 9]);
        tag11.push(0x00);
        assert_eq!(
            decode(&tag11),
            Err(MessageError::VarintTooLong { offset: 0 })
        );
        let mut len11 = vec![0x0A, 0x81];
        len11.extend([0x80; 9]);
        len11.push(0x00);
        len11.push(b'x');
        assert_eq!(
            decode(&len11),
            Err(MessageError::VarintTooLong { offset: 1 })
        );
        // A ten-byte length of 1.
        let mut len10 = vec![0x0A, 0x81];
        len10.extend([0x80; 8]);
        len10.push(0x00);
        len10.push(b'y');
        assert_eq!(decode(&len10), Ok(ServerMessage::Data(b"y")));
    }

    #[test]
    fn truncated_messages_are_malformed() {
        // Ends inside a tag, a varint value, a length, a payload.
        assert_eq!(
            decode(&[0x80]),
            Err(MessageError::TruncatedVarint { offset: 0 })
        );
        assert_eq!(
            decode(&[0x10]),
            Err(MessageError::TruncatedVarint { offset: 1 })
        );
        assert_eq!(
            decode(&[0x10, 0x83]),
            Err(MessageError::TruncatedVarint { offset: 1 })
        );
        assert_eq!(
            decode(&[0x0A]),
            Err(MessageError::TruncatedVarint { offset: 1 })
        );
        assert_eq!(
            decode(&[0x0A, 0x05, 1, 2]),
            Err(MessageError::TruncatedField {
                field: 1,
                needed: 5,
                available: 2
            })
        );
        // A huge declared length never overflows.
        let huge = cat(&[&[0x0A], &varint(u64::MAX), b"ab"]);
        assert!(matches!(
            decode(&huge),
            Err(MessageError::TruncatedField { field: 1, .. })
        ));
        // Unknown fields cut short, each wire type.
        assert!(matches!(
            decode(&cat(&[&tag(9, 0)])),
            Err(MessageError::TruncatedVarint { .. })
        ));
        assert!(matches!(
            decode(&cat(&[&tag(9, 1), &[1, 2, 3, 4, 5, 6, 7]])),
            Err(MessageError::TruncatedField {
                field: 9,
                needed: 8,
                available: 7
            })
        ));
        assert!(matches!(
            decode(&cat(&[&tag(9, 2), &varint(4), b"abc"])),
            Err(MessageError::TruncatedField { field: 9, .. })
        ));
        assert!(matches!(
            decode(&cat(&[&tag(9, 5), &[1, 2, 3]])),
            Err(MessageError::TruncatedField {
                field: 9,
                needed: 4,
                available: 3
            })
        ));
        // A FIN followed by a cut field is not a FIN.
        assert!(decode(&[0x10, 0x03, 0x0A, 0x02, b'x']).is_err());
    }

    #[test]
    fn errors_read_as_sentences_without_payload() {
        let e = decode(&[0x0A, 0x05, b's', b'e']).unwrap_err();
        let text = e.to_string();
        assert_eq!(text, "field 1 needs 5 bytes but only 2 follow");
        assert_eq!(
            MessageError::TextFrame.to_string(),
            "gateway sent a text frame; tunnel messages are binary"
        );
    }

    /// xorshift64*: deterministic, seeded, good enough to shake a parser.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_input_never_panics_and_data_stays_inside() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let seeds: Vec<Vec<u8>> = vec![
            encode_data(b"hello world"),
            HELLO.to_vec(),
            vec![0x10, 0x02, 0x18, 0x02],
            vec![0x10, 0x03],
            cat(&[
                &tag(8, 1),
                &[0; 8],
                &tag(9, 5),
                &[0; 4],
                &encode_data(b"abc"),
            ]),
        ];
        let (mut ok, mut err) = (0u32, 0u32);
        for round in 0..100_000 {
            let msg: Vec<u8> = if round % 2 == 0 {
                // Pure noise, biased toward short messages.
                let len = rng.below(if round % 10 == 0 { 200 } else { 16 }) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                // A valid message with a few bytes flipped, cut or added.
                let mut m = seeds[rng.below(seeds.len() as u64) as usize].clone();
                for _ in 0..=rng.below(3) {
                    match rng.below(3) {
                        0 if !m.is_empty() => {
                            let i = rng.below(m.len() as u64) as usize;
                            m[i] = rng.next() as u8;
                        }
                        1 if !m.is_empty() => {
                            m.truncate(rng.below(m.len() as u64) as usize);
                        }
                        _ => m.push(rng.next() as u8),
                    }
                }
                m
            };
            match decode(&msg) {
                Ok(ServerMessage::Data(d)) => {
                    ok += 1;
                    let range = msg.as_ptr_range();
                    assert!(
                        d.is_empty()
                            || (range.start <= d.as_ptr() && d.as_ptr_range().end <= range.end),
                        "{msg:02x?}"
                    );
                }
                Ok(_) => ok += 1,
                Err(e) => {
                    err += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
        }
        // Both outcomes were exercised, so the test explored something.
        assert!(ok > 1000 && err > 1000, "ok {ok}, err {err}");
    }
}
