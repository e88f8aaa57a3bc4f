//! Test certificates made with OpenSSL: a certificate authority and leaf
//! certificates it signs, all with EC P-256 keys, written as PEM files.
//!
//! The development gateway keeps its CA in a directory ([`TestCa::load_or_create`])
//! and serves the certificate on its CA endpoint, as the real gateway does;
//! tests make their own CA ([`TestCa::new`]) to give the gateway and the
//! origins server certificates a client can be told to trust. Leaf
//! certificates always name `127.0.0.1` as well as the names asked for, so
//! a server on loopback can be reached by address too; the leaves the
//! gateway forges in MITM mode ([`TestCa::forge_leaf`]) name exactly one host.
//! A lone self-signed certificate in memory ([`self_signed`]) is the relay's
//! own unit-test helper, compiled here from its source file.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509NameBuilder};

/// The relay's unit-test certificate maker, the same source file, so the
/// integration tests and the unit tests share one copy.
#[path = "../../src/test_support/cert.rs"]
mod test_cert;
pub use test_cert::{TestCert, self_signed};

/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key.pem";

/// A certificate authority whose certificate and key live in a directory.
pub struct TestCa {
    dir: PathBuf,
    cert: X509,
    key: PKey<Private>,
    issued: AtomicU32,
}

fn to_io(e: ErrorStack) -> io::Error {
    io::Error::other(e)
}

/// A fresh EC P-256 key.
pub fn new_key() -> io::Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(to_io)?;
    let ec = EcKey::generate(&group).map_err(to_io)?;
    PKey::from_ec_key(ec).map_err(to_io)
}

fn random_serial(builder: &mut X509Builder) -> Result<(), ErrorStack> {
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a file; `private` files get mode 0600.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&tmp)?;
        io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

impl TestCa {
    /// Makes a fresh CA in `dir` (created if missing), overwriting any CA
    /// files there.
    pub fn new(dir: &Path) -> io::Result<TestCa> {
        fs::create_dir_all(dir)?;
        let key = new_key()?;
        let cert = Self::self_signed(&key).map_err(to_io)?;
        write_atomic(
            &dir.join(CA_KEY_FILE),
            &key.private_key_to_pem_pkcs8().map_err(to_io)?,
            true,
        )?;
        write_atomic(
            &dir.join(CA_CERT_FILE),
            &cert.to_pem().map_err(to_io)?,
            false,
        )?;
        Ok(TestCa {
            dir: dir.to_path_buf(),
            cert,
            key,
            issued: AtomicU32::new(0),
        })
    }

    /// Loads the CA in `dir`, or makes a fresh one there if either file is
    /// missing. A CA whose files exist but do not parse is an error (never
    /// silently replaced).
    pub fn load_or_create(dir: &Path) -> io::Result<TestCa> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !cert_path.exists() || !key_path.exists() {
            return TestCa::new(dir);
        }
        let bad = |what: &Path, e: ErrorStack| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} does not parse: {e}", what.display()),
            )
        };
        let cert = X509::from_pem(&fs::read(&cert_path)?).map_err(|e| bad(&cert_path, e))?;
        let key =
            PKey::private_key_from_pem(&fs::read(&key_path)?).map_err(|e| bad(&key_path, e))?;
        Ok(TestCa {
            dir: dir.to_path_buf(),
            cert,
            key,
            issued: AtomicU32::new(0),
        })
    }

    fn self_signed(key: &PKey<Private>) -> Result<X509, ErrorStack> {
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "ccr-relay tests")?;
        name.append_entry_by_nid(Nid::COMMONNAME, "ccr dev gateway CA")?;
        let name = name.build();
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        random_serial(&mut b)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(key)?;
        b.set_not_before(&*Asn1Time::from_unix(unix_now() - 86_400)?)?;
        b.set_not_after(&*Asn1Time::days_from_now(3650)?)?;
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .digital_signature()
                .build()?,
        )?;
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
        b.append_extension(ski)?;
        b.sign(key, MessageDigest::sha256())?;
        Ok(b.build())
    }

    /// The directory the CA files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the CA certificate (PEM): what a client is told to trust.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// Path of the CA private key (PEM, PKCS#8).
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(CA_KEY_FILE)
    }

    /// The CA certificate.
    pub fn cert(&self) -> &X509 {
        &self.cert
    }

    /// The CA certificate as PEM text.
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("a certificate encodes as PEM")
    }

    /// Issues a server certificate for `names` (DNS names, or IP addresses
    /// written as text) plus `127.0.0.1`, in memory: `(cert PEM, key PEM)`,
    /// the key in PKCS#8 as `native_tls::Identity::from_pkcs8` wants.
    pub fn issue_leaf_pem(&self, names: &[&str]) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let key = new_key()?;
        let cert = self.sign_leaf(names, &key, true).map_err(to_io)?;
        Ok((
            cert.to_pem().map_err(to_io)?,
            key.private_key_to_pem_pkcs8().map_err(to_io)?,
        ))
    }

    /// Issues a server certificate for `names` (see [`TestCa::issue_leaf_pem`])
    /// and writes it next to the CA: returns `(cert_path, key_path)`.
    ///
    /// ```no_run
    /// let dir = ccr_integration::temp_dir("doc");
    /// let ca = ccr_integration::pki::TestCa::new(dir.path()).unwrap();
    /// let (cert, key) = ca.issue_leaf(&["origin.test", "localhost"]);
    /// ```
    pub fn issue_leaf(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self
            .issue_leaf_pem(names)
            .unwrap_or_else(|e| panic!("cannot issue a certificate for {names:?}: {e}"));
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let stem = names
            .first()
            .map(|s| s.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_"))
            .unwrap_or_else(|| "leaf".into());
        let cert_path = self.dir.join(format!("{stem}-{n}.pem"));
        let key_path = self.dir.join(format!("{stem}-{n}.key.pem"));
        write_atomic(&cert_path, &cert, false)
            .and_then(|_| write_atomic(&key_path, &key, true))
            .unwrap_or_else(|e| panic!("cannot write certificate files in {:?}: {e}", self.dir));
        (cert_path, key_path)
    }

    /// Issues a server certificate naming exactly `host` (a DNS name, or
    /// an IP address written as text, which becomes an IP SAN), in memory:
    /// what the development gateway's MITM mode presents for a tunnel's host.
    pub fn forge_leaf(&self, host: &str) -> io::Result<(X509, PKey<Private>)> {
        let key = new_key()?;
        let cert = self.sign_leaf(&[host], &key, false).map_err(to_io)?;
        Ok((cert, key))
    }

    /// `add_loopback`: name `127.0.0.1` too if `names` does not.
    fn sign_leaf(
        &self,
        names: &[&str],
        key: &PKey<Private>,
        add_loopback: bool,
    ) -> Result<X509, ErrorStack> {
        // A common name is at most 64 characters; the SAN is what counts.
        let common_name = names
            .first()
            .copied()
            .filter(|n| n.len() <= 64)
            .unwrap_or("ccr test leaf");
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "ccr-relay tests")?;
        name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
        let name = name.build();
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        random_serial(&mut b)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(self.cert.subject_name())?;
        b.set_pubkey(key)?;
        b.set_not_before(&*Asn1Time::from_unix(unix_now() - 86_400)?)?;
        b.set_not_after(&*Asn1Time::days_from_now(365)?)?;
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build()?,
        )?;
        b.append_extension(
            ExtendedKeyUsage::new()
                .server_auth()
                .client_auth()
                .build()?,
        )?;
        let mut san = SubjectAlternativeName::new();
        let mut has_loopback = false;
        for n in names {
            match n.parse::<IpAddr>() {
                Ok(ip) => {
                    has_loopback |= ip == IpAddr::from([127, 0, 0, 1]);
                    san.ip(n);
                }
                Err(_) => {
                    san.dns(n);
                }
            }
        }
        if add_loopback && !has_loopback {
            san.ip("127.0.0.1");
        }
        let ctx = b.x509v3_context(Some(&self.cert), None);
        let san = san.build(&ctx)?;
        let ski = SubjectKeyIdentifier::new().build(&ctx)?;
        let aki = AuthorityKeyIdentifier::new().keyid(false).build(&ctx)?;
        b.append_extension(san)?;
        b.append_extension(ski)?;
        b.append_extension(aki)?;
        b.sign(&self.key, MessageDigest::sha256())?;
        Ok(b.build())
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::{X509StoreContext, X509VerifyResult};

    #[test]
    fn leaf_verifies_against_its_ca_and_names_its_hosts() {
        let dir = crate::temp_dir("pki");
        let ca = TestCa::new(dir.path()).unwrap();
        let (cert_path, key_path) = ca.issue_leaf(&["origin.test", "::1"]);
        let leaf = X509::from_pem(&fs::read(&cert_path).unwrap()).unwrap();
        let key = PKey::private_key_from_pem(&fs::read(&key_path).unwrap()).unwrap();
        assert!(leaf.public_key().unwrap().public_eq(&key));

        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(ca.cert().clone()).unwrap();
        let store = store.build();
        let mut ctx = X509StoreContext::new().unwrap();
        let ok = ctx
            .init(&store, &leaf, &Stack::new().unwrap(), |c| {
                c.verify_cert()?;
                Ok(c.error())
            })
            .unwrap();
        assert_eq!(ok, X509VerifyResult::OK);

        let sans = leaf.subject_alt_names().unwrap();
        let dns: Vec<_> = sans.iter().filter_map(|n| n.dnsname()).collect();
        let ips: Vec<_> = sans.iter().filter_map(|n| n.ipaddress()).collect();
        assert_eq!(dns, ["origin.test"]);
        assert!(ips.contains(&&[127u8, 0, 0, 1][..]), "{ips:?}");
        assert_eq!(ips.len(), 2);

        // A forged leaf names exactly its host.
        let (forged, _) = ca.forge_leaf("10.1.2.3").unwrap();
        let sans = forged.subject_alt_names().unwrap();
        assert_eq!(sans.len(), 1);
        assert_eq!(sans.get(0).unwrap().ipaddress(), Some(&[10u8, 1, 2, 3][..]));
        let long = format!("{}.test", "a".repeat(70));
        let (forged, _) = ca.forge_leaf(&long).unwrap();
        let sans = forged.subject_alt_names().unwrap();
        assert_eq!(sans.get(0).unwrap().dnsname(), Some(long.as_str()));

        // Loading gives the same CA back; it is not replaced.
        let again = TestCa::load_or_create(dir.path()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
    }
}
