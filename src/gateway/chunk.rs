//! The `UpstreamProxyChunk` codec: the one protobuf message every WebSocket
//! frame between the relay and the gateway carries.
//!
//! ```text
//! message UpstreamProxyChunk { bytes data = 1; }
//! wire form: 0x0A varint(len) data[len]
//! ```
//!
//! An empty message and a chunk of length 0 both carry no data: they are
//! keepalives. Anything else is malformed and ends the tunnel that got it.

use std::fmt;

/// Field 1, wire type 2 (length-delimited).
const TAG: u8 = 0x0A;

/// A protobuf varint for a 32-bit length never needs more than 5 bytes.
const MAX_VARINT_BYTES: usize = 5;

/// Largest data payload the relay puts in one chunk (docs/PROTOCOL.md section 4).
pub const MAX_CHUNK_DATA: usize = 512 * 1024;

/// Bytes a chunk adds around its data: the tag and at most 5 varint bytes.
pub const MAX_OVERHEAD: usize = 1 + MAX_VARINT_BYTES;

/// Why a message from the gateway is not a valid chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// The first byte is not `0x0A`.
    WrongTag(u8),
    /// The length varint has no final byte within 5 bytes.
    VarintTooLong,
    /// The message ends inside the length varint.
    TruncatedVarint,
    /// The length says more bytes than the message holds.
    LengthPastEnd { declared: u64, available: usize },
    /// Bytes follow the chunk's data.
    TrailingBytes(usize),
    /// A text frame, where only binary frames are allowed.
    TextFrame,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::WrongTag(tag) => write!(f, "chunk starts with tag {tag:#04x}, not 0x0a"),
            ChunkError::VarintTooLong => write!(f, "chunk length varint is longer than 5 bytes"),
            ChunkError::TruncatedVarint => write!(f, "chunk ends inside its length varint"),
            ChunkError::LengthPastEnd {
                declared,
                available,
            } => write!(
                f,
                "chunk declares {declared} data bytes but only {available} follow"
            ),
            ChunkError::TrailingBytes(n) => write!(f, "{n} bytes follow the chunk's data"),
            ChunkError::TextFrame => write!(f, "gateway sent a text frame; chunks are binary"),
        }
    }
}

impl std::error::Error for ChunkError {}

/// Bytes of tag and length varint in front of `data_len` data bytes.
///
/// ```
/// assert_eq!(ccr_relay::gateway::chunk::header_len(127), 2);
/// assert_eq!(ccr_relay::gateway::chunk::header_len(128), 3);
/// ```
pub fn header_len(data_len: usize) -> usize {
    let mut len = data_len as u64;
    let mut n = 2;
    while len >= 0x80 {
        len >>= 7;
        n += 1;
    }
    n
}

/// Writes the tag and length varint for `data_len` data bytes into `out`,
/// which must be exactly [`header_len`]`(data_len)` long. Lets a caller build
/// a chunk around data already in place.
pub fn write_header(out: &mut [u8], data_len: usize) {
    debug_assert_eq!(out.len(), header_len(data_len));
    out[0] = TAG;
    let mut len = data_len as u64;
    for byte in &mut out[1..] {
        *byte = (len & 0x7F) as u8 | 0x80;
        len >>= 7;
    }
    if let Some(last) = out.last_mut() {
        *last &= 0x7F;
    }
}

/// Appends the encoded chunk carrying `data` to `out`.
///
/// ```
/// let mut out = Vec::new();
/// ccr_relay::gateway::chunk::encode_into(&mut out, b"hi");
/// assert_eq!(out, [0x0A, 2, b'h', b'i']);
/// ```
pub fn encode_into(out: &mut Vec<u8>, data: &[u8]) {
    let start = out.len();
    let header = header_len(data.len());
    out.resize(start + header, 0);
    write_header(&mut out[start..], data.len());
    out.extend_from_slice(data);
}

/// Returns the encoded chunk carrying `data`.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_OVERHEAD + data.len());
    encode_into(&mut out, data);
    out
}

/// The encoded keepalive: a chunk with no data.
pub fn keepalive() -> Vec<u8> {
    encode(&[])
}

/// Decodes one binary message into the data it carries.
///
/// An empty message is a keepalive and decodes to no data.
///
/// ```
/// use ccr_relay::gateway::chunk::{decode, ChunkError};
/// assert_eq!(decode(&[0x0A, 1, b'x']), Ok(&b"x"[..]));
/// assert_eq!(decode(&[]), Ok(&b""[..]));
/// assert_eq!(decode(&[0x12, 0]), Err(ChunkError::WrongTag(0x12)));
/// ```
pub fn decode(message: &[u8]) -> Result<&[u8], ChunkError> {
    let Some((&tag, rest)) = message.split_first() else {
        return Ok(&[]);
    };
    if tag != TAG {
        return Err(ChunkError::WrongTag(tag));
    }
    let mut declared: u64 = 0;
    let mut varint_len = 0;
    loop {
        if varint_len == MAX_VARINT_BYTES {
            return Err(ChunkError::VarintTooLong);
        }
        let Some(&byte) = rest.get(varint_len) else {
            return Err(ChunkError::TruncatedVarint);
        };
        declared |= u64::from(byte & 0x7F) << (7 * varint_len);
        varint_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let body = &rest[varint_len..];
    let available = body.len();
    if declared > available as u64 {
        return Err(ChunkError::LengthPastEnd {
            declared,
            available,
        });
    }
    let len = declared as usize;
    if len < available {
        return Err(ChunkError::TrailingBytes(available - len));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn round_trips_at_boundary_lengths() {
        for len in [0, 1, 127, 128, 16383, 16384, 1 << 21] {
            let data = pattern(len);
            let encoded = encode(&data);
            assert_eq!(decode(&encoded).unwrap(), &data[..], "length {len}");
        }
    }

    #[test]
    fn varint_lengths_match_protobuf() {
        // One varint byte up to 127, two from 128, three from 16384.
        assert_eq!(encode(&pattern(127)).len(), 1 + 1 + 127);
        assert_eq!(encode(&pattern(128)).len(), 1 + 2 + 128);
        assert_eq!(encode(&pattern(16383)).len(), 1 + 2 + 16383);
        assert_eq!(encode(&pattern(16384)).len(), 1 + 3 + 16384);
        assert_eq!(&encode(&pattern(128))[..3], &[0x0A, 0x80, 0x01]);
        assert_eq!(&encode(&pattern(300))[..3], &[0x0A, 0xAC, 0x02]);
    }

    #[test]
    fn headers_built_in_place_match_encode() {
        for len in [0, 1, 127, 128, 16383, 16384, 1 << 21, MAX_CHUNK_DATA] {
            let mut header = vec![0; header_len(len)];
            write_header(&mut header, len);
            assert_eq!(
                header[..],
                encode(&pattern(len))[..header.len()],
                "length {len}"
            );
        }
    }

    #[test]
    fn keepalives_carry_no_data() {
        assert_eq!(keepalive(), vec![0x0A, 0x00]);
        assert_eq!(decode(&keepalive()).unwrap(), b"");
        assert_eq!(decode(&[]).unwrap(), b"");
    }

    #[test]
    fn rejects_wrong_tag() {
        assert_eq!(decode(&[0x12, 0x00]), Err(ChunkError::WrongTag(0x12)));
        assert_eq!(decode(&[0x08, 0x01]), Err(ChunkError::WrongTag(0x08)));
    }

    #[test]
    fn rejects_varint_over_five_bytes() {
        let msg = [0x0A, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert_eq!(decode(&msg), Err(ChunkError::VarintTooLong));
    }

    #[test]
    fn rejects_truncated_varint() {
        assert_eq!(decode(&[0x0A]), Err(ChunkError::TruncatedVarint));
        assert_eq!(decode(&[0x0A, 0x80]), Err(ChunkError::TruncatedVarint));
    }

    #[test]
    fn rejects_length_past_end() {
        assert_eq!(
            decode(&[0x0A, 0x05, 1, 2]),
            Err(ChunkError::LengthPastEnd {
                declared: 5,
                available: 2
            })
        );
        // A five-byte varint declaring ~4 GiB.
        let msg = [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F];
        assert!(matches!(
            decode(&msg),
            Err(ChunkError::LengthPastEnd { .. })
        ));
    }

    #[test]
    fn rejects_trailing_bytes() {
        assert_eq!(
            decode(&[0x0A, 0x01, 1, 2]),
            Err(ChunkError::TrailingBytes(1))
        );
        let mut two = encode(b"ab");
        two.extend(encode(b"cd"));
        assert_eq!(decode(&two), Err(ChunkError::TrailingBytes(4)));
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            ChunkError::TextFrame.to_string(),
            "gateway sent a text frame; chunks are binary"
        );
    }
}
