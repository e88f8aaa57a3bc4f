//! A self-signed CA certificate made in memory, for tests that need a real
//! certificate without running the `openssl` tool. Compiled into the
//! relay's unit tests (`test_support`) and, through `#[path]`, into the
//! integration crate's `pki`, so both use this one piece of code.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName, SubjectKeyIdentifier};
use openssl::x509::{X509, X509NameBuilder};

/// A self-signed certificate and its key, both PEM.
pub struct TestCert {
    /// The certificate, canonical PEM (as `trust::extract_certificates`
    /// returns it).
    pub pem: String,
    /// The private key, PKCS#8 PEM.
    pub key: String,
}

/// A self-signed P-256 CA certificate for `cn`, valid one day, with the
/// names `IP:127.0.0.1` and `DNS:localhost` (so a test server on loopback
/// can use it), like `openssl req -x509` makes.
pub fn self_signed(cn: &str) -> TestCert {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(ski).unwrap();
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .dns("localhost")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    TestCert {
        pem: String::from_utf8(cert.to_pem().unwrap()).unwrap(),
        key: String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
    }
}
