//! A Java truststore made from the merged CA bundle's certificates: Java
//! reads neither `SSL_CERT_FILE` nor PEM, so [`write_jks`] writes them as a
//! JKS keystore of trusted-certificate entries next to the bundle, which
//! `-Djavax.net.ssl.trustStore` names (see `env::java`).
//!
//! JKS is the one format every Java from 8 to 21+ loads without help, and it
//! is simple:
//!
//! ```text
//! u32 0xFEEDFEED  u32 2 (version)  u32 entry count
//! per entry:  u32 2 (trusted certificate)  UTF alias  u64 creation time (ms)
//!             UTF "X.509"  u32 length  DER certificate
//! 20 bytes:   SHA-1( password as UTF-16BE || "Mighty Aphrodite" || all the above )
//! ```
//!
//! where "UTF" is Java's `DataOutput.writeUTF`: a `u16` byte length, then
//! modified UTF-8. All integers are big-endian. The password only keys the
//! integrity digest (trusted certificates are not encrypted); children get
//! [`PASSWORD`], Java's customary `changeit`. The DER comes from OpenSSL's
//! parse of each PEM block, the SHA-1 from OpenSSL too.

use std::io;
use std::path::Path;

use openssl::sha::Sha1;

use super::pem::pem_to_der;

/// The truststore password children are given.
pub const PASSWORD: &str = "changeit";

/// The keystore type to name in `javax.net.ssl.trustStoreType`.
pub const STORE_TYPE: &str = "JKS";

const MAGIC: u32 = 0xFEED_FEED;
const VERSION: u32 = 2;
const TRUSTED_CERT_TAG: u32 = 2;
const WHITENER: &[u8] = b"Mighty Aphrodite";

/// Java's `DataOutput.writeUTF`: u16 byte length, then modified UTF-8 (NUL
/// as `C0 80`, characters beyond the BMP as two 3-byte surrogates).
fn write_java_utf(out: &mut Vec<u8>, text: &str) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(text.len());
    for unit in text.encode_utf16() {
        match unit {
            0x0001..=0x007F => bytes.push(unit as u8),
            0x0000 | 0x0080..=0x07FF => {
                bytes.push(0xC0 | (unit >> 6) as u8);
                bytes.push(0x80 | (unit & 0x3F) as u8);
            }
            _ => {
                bytes.push(0xE0 | (unit >> 12) as u8);
                bytes.push(0x80 | ((unit >> 6) & 0x3F) as u8);
                bytes.push(0x80 | (unit & 0x3F) as u8);
            }
        }
    }
    let len = u16::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "JKS string too long"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

/// The alias of the `index`th certificate: `ccr-relay-0001`, ... (JKS
/// aliases are case-insensitive and must be unique; these are both).
pub fn alias(index: usize) -> String {
    format!("ccr-relay-{:04}", index + 1)
}

/// The bytes of a JKS keystore holding one trusted-certificate entry per
/// DER certificate, in order, aliased by [`alias`], created at
/// `created_ms` (milliseconds since the epoch), sealed with `password`.
pub fn jks_bytes(certs_der: &[Vec<u8>], password: &str, created_ms: u64) -> io::Result<Vec<u8>> {
    let count = u32::try_from(certs_der.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many certificates"))?;
    let mut out = Vec::with_capacity(64 + certs_der.iter().map(|c| c.len() + 48).sum::<usize>());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    for (i, der) in certs_der.iter().enumerate() {
        let len = u32::try_from(der.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "certificate too large"))?;
        out.extend_from_slice(&TRUSTED_CERT_TAG.to_be_bytes());
        write_java_utf(&mut out, &alias(i))?;
        out.extend_from_slice(&created_ms.to_be_bytes());
        write_java_utf(&mut out, "X.509")?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(der);
    }
    let digest = jks_digest(password, &out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// The integrity digest over `body`: SHA-1 of the password's UTF-16BE
/// bytes, the "Mighty Aphrodite" whitener, then the body.
fn jks_digest(password: &str, body: &[u8]) -> [u8; 20] {
    let mut h = Sha1::new();
    for unit in password.encode_utf16() {
        h.update(&unit.to_be_bytes());
    }
    h.update(WHITENER);
    h.update(body);
    h.finish()
}

/// What [`write_jks`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Certificates in the store.
    pub certs: usize,
    /// PEM blocks that could not be decoded and were left out.
    pub skipped: usize,
}

/// Writes the certificates of `pem_certs` (canonical PEM blocks, as
/// `trust::extract_certificates` returns them) to `path` as a JKS
/// truststore sealed with [`PASSWORD`]: atomically, mode 0644. Duplicates
/// are stored once.
pub fn write_jks(path: &Path, pem_certs: &[String]) -> io::Result<Written> {
    let mut ders: Vec<Vec<u8>> = Vec::with_capacity(pem_certs.len());
    let mut skipped = 0;
    for pem in pem_certs {
        match pem_to_der(pem) {
            Some(der) if !ders.contains(&der) => ders.push(der),
            Some(_) => {}
            None => skipped += 1,
        }
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let bytes = jks_bytes(&ders, PASSWORD, now_ms)?;
    crate::sys::atomic_file::write(path, &bytes, 0o644)?;
    Ok(Written {
        certs: ders.len(),
        skipped,
    })
}

/// Largest keystore [`read_jks_certificates`] reads (a JDK's `cacerts` is
/// about 200 kB).
pub const MAX_JKS_BYTES: usize = 8 << 20;

/// Reads a big-endian `u32` at `*at`, advancing it.
fn take_u32(bytes: &[u8], at: &mut usize) -> Result<u32, JksError> {
    let b = take(bytes, at, 4)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// `len` bytes at `*at`, advancing it; an error past the end.
fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], JksError> {
    let end = at
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or(JksError::Truncated(*at))?;
    let out = &bytes[*at..end];
    *at = end;
    Ok(out)
}

/// Skips a Java UTF string (u16 length, then bytes).
fn skip_utf(bytes: &[u8], at: &mut usize) -> Result<(), JksError> {
    let b = take(bytes, at, 2)?;
    let len = u16::from_be_bytes([b[0], b[1]]) as usize;
    take(bytes, at, len).map(|_| ())
}

/// The DER certificates of a JKS keystore's trusted-certificate entries
/// (private-key entries are skipped, their chains too: a truststore is
/// about CAs), in order. The integrity digest is checked with `password`
/// (a keystore that does not match it is refused: it is not what it
/// claims). Every length is checked against what is left.
pub fn read_jks_certificates(bytes: &[u8], password: &str) -> Result<Vec<Vec<u8>>, JksError> {
    if bytes.len() > MAX_JKS_BYTES {
        return Err(JksError::TooLarge);
    }
    if bytes.len() < 12 + 20 {
        return Err(JksError::TooShort);
    }
    let (body, digest) = bytes.split_at(bytes.len() - 20);
    if jks_digest(password, body) != digest {
        return Err(JksError::Digest);
    }
    let mut at = 0;
    if take_u32(body, &mut at)? != MAGIC {
        return Err(JksError::NotJks);
    }
    let version = take_u32(body, &mut at)?;
    if version != 1 && version != VERSION {
        return Err(JksError::Version(version));
    }
    let count = take_u32(body, &mut at)?;
    let mut certs = Vec::new();
    for _ in 0..count {
        let tag = take_u32(body, &mut at)?;
        skip_utf(body, &mut at)?; // alias
        take(body, &mut at, 8)?; // creation time
        match tag {
            TRUSTED_CERT_TAG => {
                if version == VERSION {
                    skip_utf(body, &mut at)?; // certificate type
                }
                let len = take_u32(body, &mut at)? as usize;
                certs.push(take(body, &mut at, len)?.to_vec());
            }
            1 => {
                let len = take_u32(body, &mut at)? as usize;
                take(body, &mut at, len)?; // the protected key
                let chain = take_u32(body, &mut at)?;
                for _ in 0..chain {
                    if version == VERSION {
                        skip_utf(body, &mut at)?;
                    }
                    let len = take_u32(body, &mut at)? as usize;
                    take(body, &mut at, len)?;
                }
            }
            other => return Err(JksError::EntryTag(other)),
        }
    }
    Ok(certs)
}

/// Why [`read_jks_certificates`] refused a keystore.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JksError {
    #[error("larger than {MAX_JKS_BYTES} bytes")]
    TooLarge,
    #[error("too short for a JKS keystore")]
    TooShort,
    #[error("the integrity digest does not match (not JKS, or another password)")]
    Digest,
    #[error("not a JKS keystore")]
    NotJks,
    #[error("JKS version {0} is not supported")]
    Version(u32),
    #[error("unknown JKS entry tag {0}")]
    EntryTag(u32),
    /// A length runs past the end; the offset it was read at.
    #[error("truncated at byte {0}")]
    Truncated(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_digest_is_sha1() {
        let sha1 = openssl::sha::sha1;
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        // Fed in pieces, as jks_digest does: the same digest.
        let mut h = Sha1::new();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(hex(&h.finish()), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    // -- JKS ---------------------------------------------------------------

    #[test]
    fn java_utf_encoding() {
        let mut out = Vec::new();
        write_java_utf(&mut out, "X.509").unwrap();
        assert_eq!(out, b"\x00\x05X.509");
        let mut out = Vec::new();
        write_java_utf(&mut out, "a\0é€😀").unwrap();
        assert_eq!(
            out,
            [
                0, 14, b'a', 0xC0, 0x80, 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xED, 0xA0, 0xBD, 0xED,
                0xB8, 0x80
            ]
        );
    }

    #[test]
    fn refusals_say_why() {
        let why = |bytes: &[u8]| {
            read_jks_certificates(bytes, PASSWORD)
                .unwrap_err()
                .to_string()
        };
        let sealed = |body: &[u8]| {
            let mut out = body.to_vec();
            out.extend_from_slice(&jks_digest(PASSWORD, body));
            out
        };
        let head = |magic: u32, version: u32, count: u32| {
            [magic, version, count]
                .iter()
                .flat_map(|n| n.to_be_bytes())
                .collect::<Vec<u8>>()
        };
        assert_eq!(
            why(&vec![0; MAX_JKS_BYTES + 1]),
            "larger than 8388608 bytes"
        );
        assert_eq!(why(b"short"), "too short for a JKS keystore");
        assert_eq!(
            why(&[0; 40]),
            "the integrity digest does not match (not JKS, or another password)"
        );
        assert_eq!(why(&sealed(&head(1, 2, 0))), "not a JKS keystore");
        assert_eq!(
            why(&sealed(&head(MAGIC, 3, 0))),
            "JKS version 3 is not supported"
        );
        assert_eq!(why(&sealed(&head(MAGIC, 2, 1))), "truncated at byte 12");
        let mut odd = head(MAGIC, 2, 1);
        odd.extend_from_slice(&7u32.to_be_bytes());
        odd.extend_from_slice(b"\x00\x01a");
        odd.extend_from_slice(&[0; 8]);
        assert_eq!(why(&sealed(&odd)), "unknown JKS entry tag 7");
    }

    #[test]
    fn jks_layout_is_exact() {
        let certs = vec![vec![0x30, 0x03, 0x02, 0x01, 0x05], vec![0x30, 0x00]];
        let bytes = jks_bytes(&certs, "changeit", 0x0102_0304_0506_0708).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&[0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2, 0, 0, 0, 2]);
        for (i, der) in certs.iter().enumerate() {
            expected.extend_from_slice(&[0, 0, 0, 2]);
            expected.extend_from_slice(&[0, 14]);
            expected.extend_from_slice(format!("ccr-relay-000{}", i + 1).as_bytes());
            expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            expected.extend_from_slice(b"\x00\x05X.509");
            expected.extend_from_slice(&(der.len() as u32).to_be_bytes());
            expected.extend_from_slice(der);
        }
        let mut keyed: Vec<u8> = b"\0c\0h\0a\0n\0g\0e\0i\0t".to_vec();
        keyed.extend_from_slice(b"Mighty Aphrodite");
        keyed.extend_from_slice(&expected);
        expected.extend_from_slice(&openssl::sha::sha1(&keyed));
        assert_eq!(bytes, expected);
    }

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.jks");
        fs::write(&path, "old").unwrap();
        crate::sys::atomic_file::write(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let target = dir.path().join("a-dir");
        fs::create_dir(&target).unwrap();
        assert!(crate::sys::atomic_file::write(&target, b"x", 0o644).is_err());
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a-dir", "store.jks"]);
    }
}
