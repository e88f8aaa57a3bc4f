//! The gateway side's own reading of the wire contract, written from the
//! contract and not shared with the relay (a bug common to both sides could
//! otherwise hide): the WebSocket paths of both generations, the v1 chunk
//! (`0A varint(len) data`, nothing else), the v2 message (a protobuf with
//! `data` = 1, `control` = 2, `version` = 3) and base64 for credentials.

use std::fmt;

/// Generation 1 ("upstream proxy") WebSocket path.
pub const V1_WS_PATH: &str = "/v1/code/upstreamproxy/ws";
/// Generation 1 CA endpoint.
pub const V1_CA_CERT_PATH: &str = "/v1/code/upstreamproxy/ca-cert";
/// Generation 2 ("agent proxy") WebSocket path.
pub const V2_WS_PATH: &str = "/v1/code/agent-proxy/ws";
/// Generation 2 CA endpoint.
pub const V2_CA_CERT_PATH: &str = "/v1/code/agent-proxy/ca-cert";
/// The generation-1 path, which most tests use.
pub const WS_PATH: &str = V1_WS_PATH;

/// Largest data a chunk may carry (the relay's bound; the gateway accepts
/// up to this and sends less).
pub const MAX_CHUNK_DATA: usize = 512 * 1024;
/// Longest v1 length varint: five groups cover 2^35, plenty for 512 KiB.
const V1_MAX_VARINT: usize = 5;
/// Longest protobuf varint.
const PB_MAX_VARINT: usize = 10;
/// Room for a data message's tag and length in front of its data.
pub const MAX_OVERHEAD: usize = 1 + V1_MAX_VARINT;

/// Control values of protocol v2.
pub const CONTROL_HELLO: u64 = 1;
pub const CONTROL_HELLO_ACK: u64 = 2;
pub const CONTROL_FIN: u64 = 3;
pub const CONTROL_FIN_ACK: u64 = 4;
/// The protocol version HELLO and HELLO_ACK carry.
pub const V2: u64 = 2;

/// HELLO exactly as the contract says a client sends it.
pub const HELLO: &[u8] = &[0x10, 0x01, 0x18, 0x02];
/// HELLO_ACK for version 2, as this gateway sends it.
pub const HELLO_ACK: &[u8] = &[0x10, 0x02, 0x18, 0x02];
/// FIN, as this gateway sends it.
pub const FIN: &[u8] = &[0x10, 0x03];
/// FIN_ACK exactly as the contract says a client sends it.
pub const FIN_ACK: &[u8] = &[0x10, 0x04];

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// v1: the first byte is not `0x0A`.
    WrongTag(u8),
    /// A varint ran past its byte limit.
    VarintTooLong,
    /// The message ended inside a varint or a field.
    Truncated,
    /// v1: bytes after the chunk's data.
    TrailingBytes(usize),
    /// v2: a wire type other than 0, 1, 2, 5.
    BadWireType(u8),
    /// v2: field number 0.
    FieldZero,
    /// v2: `data` with a wire type other than 2, or `control`/`version`
    /// with one other than 0.
    FieldType(u64),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::WrongTag(t) => write!(f, "chunk tag is 0x{t:02x}, not 0x0a"),
            WireError::VarintTooLong => f.write_str("varint too long"),
            WireError::Truncated => f.write_str("message truncated"),
            WireError::TrailingBytes(n) => write!(f, "{n} bytes after the chunk"),
            WireError::BadWireType(t) => write!(f, "wire type {t} is not allowed"),
            WireError::FieldZero => f.write_str("field number 0"),
            WireError::FieldType(n) => write!(f, "field {n} has the wrong wire type"),
        }
    }
}

impl std::error::Error for WireError {}

/// Standard base64 with padding (the `Basic` credential).
pub fn base64(bytes: &[u8]) -> String {
    data_encoding::BASE64.encode(bytes)
}

/// Length of the tag and length varint in front of `data_len` bytes.
pub fn header_len(data_len: usize) -> usize {
    let mut n = data_len as u64;
    let mut len = 2;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Writes the tag and length varint into `out` (exactly `header_len` long).
pub fn write_header(out: &mut [u8], data_len: usize) {
    out[0] = 0x0A;
    let mut n = data_len as u64;
    let mut i = 1;
    loop {
        let byte = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out[i] = byte;
            return;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// A data message: `0A varint(len) data`, the same bytes in v1 and v2.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let h = header_len(data.len());
    let mut out = vec![0u8; h + data.len()];
    write_header(&mut out[..h], data.len());
    out[h..].copy_from_slice(data);
    out
}

/// The keepalive (`0A 00`).
pub fn keepalive() -> Vec<u8> {
    vec![0x0A, 0x00]
}

/// A varint at the start of `bytes`, at most `max` bytes long: value and length.
fn varint(bytes: &[u8], max: usize) -> Result<(u64, usize), WireError> {
    let mut value: u64 = 0;
    for i in 0..max {
        let Some(&b) = bytes.get(i) else {
            return Err(WireError::Truncated);
        };
        value |= u64::from(b & 0x7F).checked_shl(7 * i as u32).unwrap_or(0);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(WireError::VarintTooLong)
}

/// Decodes a v1 chunk strictly: an empty message or `0A varint(len) data`
/// with nothing after; returns the data (empty = keepalive).
pub fn decode(message: &[u8]) -> Result<&[u8], WireError> {
    let Some((&tag, rest)) = message.split_first() else {
        return Ok(&[]);
    };
    if tag != 0x0A {
        return Err(WireError::WrongTag(tag));
    }
    let (len, used) = varint(rest, V1_MAX_VARINT)?;
    let body = &rest[used..];
    let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
    if body.len() < len {
        return Err(WireError::Truncated);
    }
    if body.len() > len {
        return Err(WireError::TrailingBytes(body.len() - len));
    }
    Ok(body)
}

/// One decoded v2 message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct V2Message<'a> {
    /// Field 1 (empty when absent).
    pub data: &'a [u8],
    /// Field 2 (0 when absent: a data message).
    pub control: u64,
    /// Field 3 (0 when absent).
    pub version: u64,
}

/// Decodes a v2 message with a protobuf reader: unknown fields of wire
/// types 0, 1, 2 and 5 are skipped, a later field overrides an earlier one,
/// anything else is malformed.
pub fn decode_v2(message: &[u8]) -> Result<V2Message<'_>, WireError> {
    let mut out = V2Message::default();
    let mut rest = message;
    while !rest.is_empty() {
        let (key, used) = varint(rest, PB_MAX_VARINT)?;
        rest = &rest[used..];
        let field = key >> 3;
        let wire_type = (key & 7) as u8;
        if field == 0 {
            return Err(WireError::FieldZero);
        }
        match wire_type {
            0 => {
                let (v, used) = varint(rest, PB_MAX_VARINT)?;
                rest = &rest[used..];
                match field {
                    2 => out.control = v,
                    3 => out.version = v,
                    1 => return Err(WireError::FieldType(1)),
                    _ => {}
                }
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                if rest.len() < n {
                    return Err(WireError::Truncated);
                }
                if matches!(field, 1..=3) {
                    return Err(WireError::FieldType(field));
                }
                rest = &rest[n..];
            }
            2 => {
                let (len, used) = varint(rest, PB_MAX_VARINT)?;
                rest = &rest[used..];
                let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
                if rest.len() < len {
                    return Err(WireError::Truncated);
                }
                match field {
                    1 => out.data = &rest[..len],
                    2 | 3 => return Err(WireError::FieldType(field)),
                    _ => {}
                }
                rest = &rest[len..];
            }
            other => return Err(WireError::BadWireType(other)),
        }
    }
    Ok(out)
}

/// Bytes as lower-case hex, for the event log.
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_chunks_round_trip_and_reject_junk() {
        for n in [0usize, 1, 127, 128, 16383, 16384, MAX_CHUNK_DATA] {
            let data = vec![7u8; n];
            let enc = encode(&data);
            assert_eq!(enc.len(), header_len(n) + n);
            assert_eq!(decode(&enc).unwrap(), &data[..]);
        }
        assert_eq!(encode(b"ab"), [0x0A, 2, b'a', b'b']);
        assert_eq!(encode(&[0u8; 300])[..3], [0x0A, 0xAC, 0x02]);
        assert_eq!(decode(&[]).unwrap(), b"");
        assert_eq!(decode(&keepalive()).unwrap(), b"");
        assert_eq!(decode(&[0x12, 0]), Err(WireError::WrongTag(0x12)));
        assert_eq!(decode(&[0x0A, 3, 1]), Err(WireError::Truncated));
        assert_eq!(decode(&[0x0A, 1, 1, 2]), Err(WireError::TrailingBytes(1)));
        assert_eq!(
            decode(&[0x0A, 0x80, 0x80, 0x80, 0x80, 0x80, 0]),
            Err(WireError::VarintTooLong)
        );
        assert_eq!(decode(&[0x0A, 0x80]), Err(WireError::Truncated));
    }

    #[test]
    fn v2_messages_decode_like_protobuf() {
        let m = decode_v2(HELLO).unwrap();
        assert_eq!((m.control, m.version, m.data), (1, 2, &b""[..]));
        assert_eq!(decode_v2(FIN_ACK).unwrap().control, 4);
        assert_eq!(decode_v2(&encode(b"hi")).unwrap().data, b"hi");
        assert_eq!(decode_v2(&[]).unwrap(), V2Message::default());
        // Unknown fields of every allowed wire type are skipped.
        let mut m = vec![0x20, 0x05]; // field 4 varint
        m.extend([0x29, 1, 2, 3, 4, 5, 6, 7, 8]); // field 5 fixed64
        m.extend([0x32, 2, b'x', b'y']); // field 6 bytes
        m.extend([0x3D, 1, 2, 3, 4]); // field 7 fixed32
        m.extend([0x0A, 1, b'a', 0x0A, 1, b'b']); // data twice: the last wins
        m.extend([0x10, 0x00]); // control 0
        assert_eq!(
            decode_v2(&m).unwrap(),
            V2Message {
                data: b"b",
                control: 0,
                version: 0
            }
        );
        // Multi-byte field keys (field 16) are skipped too.
        assert_eq!(
            decode_v2(&[0x80, 0x01, 0x07, 0x10, 0x03]).unwrap().control,
            3
        );
        assert_eq!(decode_v2(&[0x0B]), Err(WireError::BadWireType(3)));
        assert_eq!(decode_v2(&[0x0C]), Err(WireError::BadWireType(4)));
        assert_eq!(decode_v2(&[0x0A, 5, 1]), Err(WireError::Truncated));
        assert_eq!(decode_v2(&[0x10]), Err(WireError::Truncated));
        assert_eq!(decode_v2(&[0x3D, 1]), Err(WireError::Truncated));
        assert_eq!(decode_v2(&[0x08, 1]), Err(WireError::FieldType(1)));
        assert_eq!(decode_v2(&[0x12, 0]), Err(WireError::FieldType(2)));
        assert_eq!(decode_v2(&[0x00, 0]), Err(WireError::FieldZero));
        let mut long = vec![0x10];
        long.extend([0xFF; 10]);
        long.push(0x01);
        assert_eq!(decode_v2(&long), Err(WireError::VarintTooLong));
        let mut ten = vec![0x10];
        ten.extend([0x80; 9]);
        ten.push(0x01);
        assert!(decode_v2(&ten).is_ok(), "a 10-byte varint is allowed");
        assert_eq!(base64(b"s:t"), "czp0");
        assert_eq!(hex(HELLO), "10011802");
    }
}
