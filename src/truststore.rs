//! A Java truststore made from the merged CA bundle: Java reads neither
//! `SSL_CERT_FILE` nor PEM, so [`write_jks`] writes the bundle's
//! certificates as a JKS keystore of trusted-certificate entries next to
//! it, which `-Djavax.net.ssl.trustStore` names (see `child_env`).
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
//! [`PASSWORD`], Java's customary `changeit`.
//!
//! Also here, because nothing else in the crate needs them: a base64 decoder
//! for the DER inside PEM blocks ([`pem_to_der`]), SHA-1 ([`sha1`], small and
//! dependency-free; checked against FIPS 180 vectors and `keytool`).

use std::io::{self};
use std::path::Path;

/// The truststore password children are given.
pub const PASSWORD: &str = "changeit";

/// The keystore type to name in `javax.net.ssl.trustStoreType`.
pub const STORE_TYPE: &str = "JKS";

const MAGIC: u32 = 0xFEED_FEED;
const VERSION: u32 = 2;
const TRUSTED_CERT_TAG: u32 = 2;
const WHITENER: &[u8] = b"Mighty Aphrodite";

// ---------------------------------------------------------------------------
// base64 and PEM

/// Decodes standard base64 (RFC 4648 alphabet `+/`). White space anywhere is
/// skipped; `=` padding is optional but, when present, must be correct and
/// last. `None` for any other character, a lone trailing character, or
/// non-zero bits left over in the last group.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut symbols = 0usize;
    let mut padding = 0usize;
    for &c in text {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return None; // data after padding
        }
        acc = (acc << 6) | value(c)?;
        bits += 6;
        symbols += 1;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    match symbols % 4 {
        1 => return None,
        0 if padding != 0 => return None,
        2 if padding != 0 && padding != 2 => return None,
        3 if padding != 0 && padding != 1 => return None,
        _ => {}
    }
    if acc != 0 {
        return None; // non-canonical trailing bits
    }
    Some(out)
}

/// The DER of the first `CERTIFICATE` block of `pem`, if it has one whose
/// body is valid base64. (Callers pass blocks that
/// `ca_bundle::extract_certificates` already parsed.)
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN)? + BEGIN.len();
    let end = start + pem[start..].find(END)?;
    let der = base64_decode(&pem.as_bytes()[start..end])?;
    (!der.is_empty()).then_some(der)
}

// ---------------------------------------------------------------------------
// SHA-1 (FIPS 180-4), for the JKS integrity digest only

/// SHA-1 computed incrementally.
#[derive(Clone)]
pub struct Sha1 {
    state: [u32; 5],
    block: [u8; 64],
    filled: usize,
    length: u64,
}

impl Default for Sha1 {
    fn default() -> Self {
        Sha1::new()
    }
}

impl Sha1 {
    pub fn new() -> Sha1 {
        Sha1 {
            state: [
                0x6745_2301,
                0xEFCD_AB89,
                0x98BA_DCFE,
                0x1032_5476,
                0xC3D2_E1F0,
            ],
            block: [0; 64],
            filled: 0,
            length: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        while !data.is_empty() {
            let take = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled == 64 {
                let block = self.block;
                self.compress(&block);
                self.filled = 0;
            }
        }
    }

    pub fn finish(mut self) -> [u8; 20] {
        let bit_length = self.length.wrapping_mul(8);
        self.update(&[0x80]);
        while self.filled != 56 {
            self.update(&[0]);
        }
        self.update(&bit_length.to_be_bytes());
        let mut digest = [0u8; 20];
        for (out, word) in digest.chunks_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = self.state;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e]) {
            *s = s.wrapping_add(v);
        }
    }
}

/// SHA-1 of `data`.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update(data);
    h.finish()
}

// ---------------------------------------------------------------------------
// JKS

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
/// `ca_bundle::extract_certificates` returns them) to `path` as a JKS
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
    crate::atomic_file::write(path, &bytes, 0o644)?;
    Ok(Written {
        certs: ders.len(),
        skipped,
    })
}

// ---------------------------------------------------------------------------
// Atomic writes

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use std::process::Command;
    use std::sync::OnceLock;

    use crate::test_support::TempDir;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    // -- base64 ------------------------------------------------------------

    #[test]
    fn base64_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(
                base64_decode(encoded.as_bytes()).as_deref(),
                Some(plain.as_bytes()),
                "{encoded}"
            );
        }
        // Padding is optional.
        assert_eq!(base64_decode(b"Zm8").unwrap(), b"fo");
        assert_eq!(base64_decode(b"Zg").unwrap(), b"f");
    }

    #[test]
    fn base64_round_trips_every_byte_and_skips_white_space() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for len in [0, 1, 2, 3, 4, 5, 63, 64, 65, 1000] {
            let encoded = crate::gateway::base64(&data[..len]);
            assert_eq!(base64_decode(encoded.as_bytes()).unwrap(), &data[..len]);
            // PEM style: 64 columns, CRLF, indentation.
            let wrapped: String = encoded
                .as_bytes()
                .chunks(64)
                .map(|l| format!("  {}\r\n", String::from_utf8_lossy(l)))
                .collect();
            assert_eq!(base64_decode(wrapped.as_bytes()).unwrap(), &data[..len]);
        }
    }

    #[test]
    fn base64_rejects_garbage() {
        for bad in [
            &b"Zm9v!"[..],
            b"Z",        // a lone trailing symbol
            b"Zm9vY",    // ditto after a full group
            b"Zg=",      // wrong padding
            b"Zm8==",    // wrong padding
            b"Zm9v=",    // padding after a full group
            b"Zg==Zg==", // data after padding
            b"Zh==",     // non-zero leftover bits
            b"-_",       // URL-safe alphabet
        ] {
            assert_eq!(base64_decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    // -- SHA-1 -------------------------------------------------------------

    #[test]
    fn sha1_fips_vectors() {
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(&sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        let million = vec![b'a'; 1_000_000];
        assert_eq!(
            hex(&sha1(&million)),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
        // Fed in odd pieces: the same digest.
        let mut h = Sha1::new();
        for piece in million.chunks(999) {
            h.update(piece);
        }
        assert_eq!(hex(&h.finish()), "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
        // Every length around the padding boundaries, against the sha1sum tool.
        let data: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [55, 56, 57, 63, 64, 65, 119, 120, 128] {
            let out = Command::new("sha1sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    child.stdin.take().unwrap().write_all(&data[..len])?;
                    child.wait_with_output()
                })
                .expect("sha1sum (coreutils) is needed for this test");
            let expected = String::from_utf8(out.stdout).unwrap();
            assert_eq!(hex(&sha1(&data[..len])), expected[..40], "length {len}");
        }
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
        expected.extend_from_slice(&sha1(&keyed));
        assert_eq!(bytes, expected);
    }

    /// Two self-signed certificates made by the openssl tool, as PEM.
    fn test_certs() -> &'static Vec<String> {
        static CERTS: OnceLock<Vec<String>> = OnceLock::new();
        CERTS.get_or_init(|| {
            let dir = TempDir::new("pki");
            (0..3)
                .map(|i| {
                    let cert = dir.0.join(format!("c{i}.crt"));
                    let out = Command::new("openssl")
                        .args([
                            "req",
                            "-x509",
                            "-newkey",
                            "ec",
                            "-pkeyopt",
                            "ec_paramgen_curve:prime256v1",
                            "-nodes",
                            "-subj",
                            &format!("/CN=ccr truststore test {i}"),
                            "-days",
                            "1",
                            "-keyout",
                        ])
                        .arg(dir.0.join(format!("c{i}.key")))
                        .arg("-out")
                        .arg(&cert)
                        .output()
                        .expect("the openssl tool is needed for these tests");
                    assert!(out.status.success());
                    let pem = fs::read(cert).unwrap();
                    crate::ca_bundle::extract_certificates(&pem).remove(0)
                })
                .collect()
        })
    }

    #[test]
    fn pem_to_der_matches_the_tls_library() {
        for pem in test_certs() {
            let der = pem_to_der(pem).unwrap();
            let parsed = native_tls::Certificate::from_pem(pem.as_bytes()).unwrap();
            assert_eq!(der, parsed.to_der().unwrap());
        }
        assert_eq!(pem_to_der("no block here"), None);
        assert_eq!(
            pem_to_der("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"),
            None
        );
    }

    /// `keytool -list` of `path`; panics (never skips) without keytool.
    fn keytool_list(path: &Path, password: &str) -> std::process::Output {
        Command::new("keytool")
            .args(["-list", "-v", "-keystore"])
            .arg(path)
            .args(["-storepass", password, "-storetype", "JKS"])
            .output()
            .expect("keytool (a JDK) is needed for this test: install openjdk-17-jdk-headless")
    }

    #[test]
    fn keytool_lists_every_certificate() {
        let dir = TempDir::new("keytool");
        let path = dir.0.join("ca-bundle.jks");
        let mut pems = test_certs().clone();
        pems.push(pems[0].clone()); // a duplicate is stored once
        let written = write_jks(&path, &pems).unwrap();
        assert_eq!(
            written,
            Written {
                certs: 3,
                skipped: 0
            }
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);

        let out = keytool_list(&path, PASSWORD);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("Your keystore contains 3 entries"), "{text}");
        for i in 0..3 {
            assert!(
                text.contains(&format!("Alias name: ccr-relay-000{}", i + 1)),
                "{text}"
            );
            assert!(
                text.contains(&format!("CN=ccr truststore test {i}")),
                "{text}"
            );
        }
        assert_eq!(text.matches("Entry type: trustedCertEntry").count(), 3);

        // The digest is checked: a wrong password is refused.
        let out = keytool_list(&path, "wrong-password");
        assert!(!out.status.success());
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(all.contains("password was incorrect"), "{all}");

        // The real system bundle: every certificate in it lands in the store.
        let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
        let system_certs = crate::ca_bundle::extract_certificates(&fs::read(system).unwrap());
        assert!(system_certs.len() > 50, "{}", system_certs.len());
        let written = write_jks(&path, &system_certs).unwrap();
        assert_eq!(written.certs, system_certs.len());
        let out = keytool_list(&path, PASSWORD);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains(&format!(
                "Your keystore contains {} entries",
                system_certs.len()
            )),
            "{text}"
        );
    }

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = TempDir::new("atomic");
        let path = dir.0.join("store.jks");
        fs::write(&path, "old").unwrap();
        crate::atomic_file::write(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let target = dir.0.join("a-dir");
        fs::create_dir(&target).unwrap();
        assert!(crate::atomic_file::write(&target, b"x", 0o644).is_err());
        let mut names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a-dir", "store.jks"]);
    }
}
