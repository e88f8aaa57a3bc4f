//! The deterministic byte pattern the development origin serves
//! (`GET /bytes/N`, `GET /slow/N`) and tests upload, so any stretch of a
//! transfer can be checked byte for byte without keeping a copy.
//!
//! Byte `i` of the stream is `(i * 7 + 3) % 251`. The period, 251, is prime
//! and not a power of two, so a chunk that is dropped, duplicated or moved
//! by any power-of-two amount shows up as a mismatch.

use std::io::{self, Read, Write};

/// Length of one period of the pattern.
pub const PERIOD: usize = 251;

/// Byte `i` of the pattern.
///
/// ```
/// use ccr_integration::pattern::byte_at;
/// assert_eq!((byte_at(0), byte_at(1), byte_at(251)), (3, 10, 3));
/// ```
pub fn byte_at(i: u64) -> u8 {
    (((i % PERIOD as u64) * 7 + 3) % PERIOD as u64) as u8
}

/// Writes the pattern quickly: a precomputed block holding more than one
/// period, sliced at the right phase, so producing bytes is a `memcpy`.
pub struct PatternSource {
    block: Vec<u8>,
}

impl PatternSource {
    /// A source whose [`PatternSource::slice`] returns up to `max_piece` bytes.
    pub fn new(max_piece: usize) -> PatternSource {
        PatternSource {
            block: (0..(max_piece + PERIOD) as u64).map(byte_at).collect(),
        }
    }

    /// The `len` pattern bytes starting at stream offset `offset`
    /// (`len` is capped at the `max_piece` given to [`PatternSource::new`]).
    pub fn slice(&self, offset: u64, len: usize) -> &[u8] {
        let phase = (offset % PERIOD as u64) as usize;
        let len = len.min(self.block.len() - PERIOD);
        &self.block[phase..phase + len]
    }

    /// Writes pattern bytes `[offset, offset + len)` to `out` in pieces of
    /// at most `max_piece`.
    pub fn write_range<W: Write + ?Sized>(
        &self,
        out: &mut W,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let piece = self.block.len() - PERIOD;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(piece as u64) as usize;
            out.write_all(self.slice(offset + done, n))?;
            done += n as u64;
        }
        Ok(())
    }
}

/// A reader that yields the first `len` bytes of the pattern (for uploads).
pub struct PatternReader {
    source: PatternSource,
    offset: u64,
    len: u64,
}

impl PatternReader {
    pub fn new(len: u64) -> PatternReader {
        PatternReader {
            source: PatternSource::new(256 * 1024),
            offset: 0,
            len,
        }
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len - self.offset).min(buf.len() as u64) as usize;
        let n = n.min(256 * 1024);
        buf[..n].copy_from_slice(self.source.slice(self.offset, n));
        self.offset += n as u64;
        Ok(n)
    }
}

/// Checks a stream against the pattern as it arrives.
///
/// ```
/// use ccr_integration::pattern::{PatternChecker, PatternSource};
/// let src = PatternSource::new(1000);
/// let mut check = PatternChecker::new();
/// check.feed(src.slice(0, 600));
/// check.feed(src.slice(600, 400));
/// assert_eq!(check.verify(1000), Ok(()));
/// ```
#[derive(Debug, Clone)]
pub struct PatternChecker {
    seen: u64,
    first_mismatch: Option<u64>,
    /// Two periods, so any phase has a full period after it.
    expected: [u8; PERIOD * 2],
}

impl Default for PatternChecker {
    fn default() -> Self {
        PatternChecker::new()
    }
}

impl PatternChecker {
    pub fn new() -> PatternChecker {
        let mut expected = [0u8; PERIOD * 2];
        for (i, b) in expected.iter_mut().enumerate() {
            *b = byte_at(i as u64);
        }
        PatternChecker {
            seen: 0,
            first_mismatch: None,
            expected,
        }
    }

    /// Checks the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.first_mismatch.is_none() {
            // Compare a period at a time against the expected phase: no
            // per-byte arithmetic on the hot path.
            let expected = &self.expected;
            let mut pos = 0;
            while pos < bytes.len() {
                let phase = ((self.seen + pos as u64) % PERIOD as u64) as usize;
                let n = (bytes.len() - pos).min(PERIOD);
                if bytes[pos..pos + n] != expected[phase..phase + n] {
                    let off = (0..n)
                        .find(|&k| bytes[pos + k] != expected[phase + k])
                        .unwrap_or(0);
                    self.first_mismatch = Some(self.seen + (pos + off) as u64);
                    break;
                }
                pos += n;
            }
        }
        self.seen += bytes.len() as u64;
    }

    /// Bytes fed so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// `Ok` when exactly `expected_len` bytes of the pattern were fed.
    pub fn verify(&self, expected_len: u64) -> Result<(), String> {
        if let Some(at) = self.first_mismatch {
            return Err(format!("stream differs from the pattern at byte {at}"));
        }
        if self.seen != expected_len {
            return Err(format!(
                "stream has {} bytes, expected {expected_len}",
                self.seen
            ));
        }
        Ok(())
    }
}

/// Checks that everything `reader` yields is exactly the first
/// `expected_len` bytes of the pattern.
pub fn verify_reader<R: Read>(mut reader: R, expected_len: u64) -> Result<(), String> {
    let mut check = PatternChecker::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => check.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed after {} bytes: {e}", check.seen())),
        }
    }
    check.verify(expected_len)
}

/// Checks that the file at `path` is exactly the first `expected_len`
/// bytes of the pattern (for `curl -o FILE` downloads).
pub fn verify_file(path: &std::path::Path, expected_len: u64) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    verify_reader(f, expected_len)
}

/// Hex SHA-256 of the first `len` bytes of the pattern: what the origin's
/// `POST /sha256` answers for an upload of that pattern.
pub fn sha256_hex(len: u64) -> String {
    let mut hasher = openssl::sha::Sha256::new();
    let src = PatternSource::new(256 * 1024);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(256 * 1024) as usize;
        hasher.update(src.slice(done, n));
        done += n as u64;
    }
    hex(&hasher.finish())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_slices_match_the_formula_at_every_phase() {
        let src = PatternSource::new(1000);
        for offset in [0u64, 1, 250, 251, 252, 1 << 33] {
            let s = src.slice(offset, 1000);
            for (k, &b) in s.iter().enumerate() {
                assert_eq!(b, ((offset + k as u64) * 7 + 3).rem_euclid(251) as u8);
            }
        }
    }

    #[test]
    fn checker_finds_a_flipped_byte_and_a_short_stream() {
        let mut data = Vec::new();
        PatternSource::new(4096)
            .write_range(&mut data, 0, 10_000)
            .unwrap();
        assert_eq!(verify_reader(&data[..], 10_000), Ok(()));
        assert!(verify_reader(&data[..9_999], 10_000).is_err());
        data[7777] ^= 1;
        let err = verify_reader(&data[..], 10_000).unwrap_err();
        assert!(err.contains("7777"), "{err}");
    }

    #[test]
    fn reader_and_digest_agree() {
        let mut all = Vec::new();
        PatternReader::new(600_000).read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 600_000);
        assert_eq!(verify_reader(&all[..], 600_000), Ok(()));
        assert_eq!(sha256_hex(600_000), hex(&openssl::sha::sha256(&all)));
    }
}
