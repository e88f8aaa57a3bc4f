//! Certificates out of arbitrary text: every `BEGIN CERTIFICATE` block that
//! parses as X.509, re-encoded by OpenSSL as canonical PEM. This is the
//! filter every certificate passes before it reaches a bundle or a
//! truststore, wherever it came from (the gateway, the system, the user).

use openssl::x509::X509;

pub(crate) const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
pub(crate) const END: &str = "-----END CERTIFICATE-----";

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every `BEGIN CERTIFICATE` ... `END CERTIFICATE` block of `pem_text` that
/// parses as an X.509 certificate, re-encoded from the parsed certificate as
/// canonical PEM (64-column base64, ending in `\n`). Everything else is
/// dropped: text around the blocks, other block types (private keys),
/// truncated blocks, blocks whose base64 is not a certificate.
pub fn extract_certificates(pem_text: &[u8]) -> Vec<String> {
    let mut certs = Vec::new();
    let mut rest = pem_text;
    while let Some(start) = find(rest, BEGIN.as_bytes()) {
        let after = &rest[start + BEGIN.len()..];
        let Some(end) = find(after, END.as_bytes()) else {
            break;
        };
        let body = &after[..end];
        if let Some(inner) = find(body, BEGIN.as_bytes()) {
            // This block was cut short; the END belongs to a later one.
            rest = &after[inner..];
            continue;
        }
        if let Some(cert) = certificate_from_base64(body) {
            certs.push(cert);
        }
        rest = &after[end + END.len()..];
    }
    certs
}

/// The PEM of the certificate in one block's base64 body, if it is one.
fn certificate_from_base64(body: &[u8]) -> Option<String> {
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    if !body.iter().all(|b| is_b64(b) || b.is_ascii_whitespace()) {
        return None; // PEM headers, other blocks, binary
    }
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return None;
    }
    // Rewrapped at 64 columns, as OpenSSL's PEM reader expects, whatever
    // the line breaks and indentation of the source.
    let mut block = Vec::with_capacity(compact.len() * 65 / 64 + BEGIN.len() + END.len() + 4);
    block.extend_from_slice(BEGIN.as_bytes());
    block.push(b'\n');
    for line in compact.chunks(64) {
        block.extend_from_slice(line);
        block.push(b'\n');
    }
    block.extend_from_slice(END.as_bytes());
    block.push(b'\n');
    let cert = X509::from_pem(&block).ok()?;
    String::from_utf8(cert.to_pem().ok()?).ok()
}

/// The DER of the first certificate in `pem`, if it holds one that parses.
/// (Callers pass blocks that [`extract_certificates`] already parsed.)
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let cert = X509::from_pem(pem.as_bytes()).ok()?;
    cert.to_der().ok().filter(|der| !der.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{TestCert, self_signed};
    use std::sync::OnceLock;

    struct Pki {
        a: TestCert,
        b: TestCert,
    }

    fn pki() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| Pki {
            a: self_signed("test-a"),
            b: self_signed("test-b"),
        })
    }

    #[test]
    fn extracts_two_certificates_from_junk() {
        let p = pki();
        let text = format!(
            "garbage before\n{}\n<p>between</p>\r\n{}trailing junk",
            p.a.pem,
            p.b.pem.replace('\n', "\r\n")
        );
        let certs = extract_certificates(text.as_bytes());
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0], p.a.pem);
        assert_eq!(certs[1], p.b.pem);
        for c in &certs {
            assert!(c.starts_with(BEGIN) && c.ends_with("-----END CERTIFICATE-----\n"));
            assert!(!c.contains("garbage") && !c.contains("junk"));
        }
    }

    #[test]
    fn drops_keys_truncated_and_garbage_blocks() {
        let p = pki();
        // A private key block is never kept.
        let certs = extract_certificates(format!("{}{}", p.a.key, p.b.pem).as_bytes());
        assert_eq!(certs, vec![p.b.pem.clone()]);
        assert!(extract_certificates(p.a.key.as_bytes()).is_empty());

        // A truncated block followed by a good one: only the good one.
        let truncated = &p.a.pem[..p.a.pem.len() / 2];
        let certs = extract_certificates(format!("{truncated}\n{}", p.b.pem).as_bytes());
        assert_eq!(certs, vec![p.b.pem.clone()]);
        // A truncated block alone.
        assert!(extract_certificates(truncated.as_bytes()).is_empty());

        // BEGIN/END around base64 that is not a certificate.
        let fake =
            format!("{BEGIN}\naGVsbG8gd29ybGQgdGhpcyBpcyBub3QgYSBjZXJ0aWZpY2F0ZQ==\n{END}\n");
        assert!(extract_certificates(fake.as_bytes()).is_empty());
        // BEGIN/END around text that is not base64.
        let fake = format!("{BEGIN}\nnot base64 at all!\n{END}\n");
        assert!(extract_certificates(fake.as_bytes()).is_empty());
        let empty = format!("{BEGIN}\n{END}\n");
        assert!(extract_certificates(empty.as_bytes()).is_empty());
        // A certificate with one base64 line cut out of its middle: the DER
        // inside is truncated and does not parse.
        let mut lines: Vec<&str> = p.a.pem.lines().collect();
        lines.remove(lines.len() / 2);
        let cut = lines.join("\n");
        assert!(extract_certificates(cut.as_bytes()).is_empty());
    }

    #[test]
    fn html_json_and_binary_hold_nothing() {
        assert!(extract_certificates(b"<html><body>502 Bad Gateway</body></html>").is_empty());
        assert!(extract_certificates(br#"{"error":{"type":"not_found"}}"#).is_empty());
        assert!(extract_certificates(b"").is_empty());
        assert!(extract_certificates(&[0xff, 0x00, 0x2d, 0x2d, 0xfe]).is_empty());
    }

    #[test]
    fn pem_to_der_matches_the_tls_library() {
        for cert in [&pki().a, &pki().b] {
            let der = pem_to_der(&cert.pem).unwrap();
            let parsed = native_tls::Certificate::from_pem(cert.pem.as_bytes()).unwrap();
            assert_eq!(der, parsed.to_der().unwrap());
        }
        assert_eq!(pem_to_der("no block here"), None);
        assert_eq!(
            pem_to_der("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"),
            None
        );
    }
}
