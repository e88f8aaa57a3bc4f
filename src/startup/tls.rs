//! The TLS settings of the relay's own connections to the gateway: the
//! system roots plus any `--gateway-ca` certificates, and why they cannot
//! be made when the file is missing, empty or not a certificate.
//!
//! Versions: TLS 1.2 at least, up to the newest the linked OpenSSL has
//! (TLS 1.3), so a fresh `wss://` dial costs one TLS round trip where the
//! gateway offers 1.3. Session resumption is not offered: native-tls gives
//! no way to the OpenSSL context's client session cache nor to a
//! connection before its handshake (where a saved session would be set),
//! so resuming would mean building the gateway's TLS on the `openssl`
//! crate directly. With TLS 1.3 a resumption saves no round trip anyway
//! (no 0-RTT data here), only the certificate check's CPU.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::trust;

/// Why the TLS settings for the gateway cannot be made.
#[derive(Debug)]
pub enum TlsSetupError {
    /// `--gateway-ca` cannot be read.
    ReadGatewayCa { path: PathBuf, error: io::Error },
    /// `--gateway-ca` holds no PEM certificate.
    NoCertificate(PathBuf),
    /// A certificate in `--gateway-ca` is not one the TLS library takes.
    BadCertificate {
        path: PathBuf,
        error: native_tls::Error,
    },
    /// The TLS library cannot make a connector.
    Build(native_tls::Error),
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::ReadGatewayCa { path, error } => {
                write!(f, "cannot read --gateway-ca {}: {error}", path.display())
            }
            TlsSetupError::NoCertificate(path) => {
                write!(
                    f,
                    "--gateway-ca {} holds no PEM certificate",
                    path.display()
                )
            }
            TlsSetupError::BadCertificate { path, error } => {
                write!(f, "--gateway-ca {}: {error}", path.display())
            }
            TlsSetupError::Build(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for TlsSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsSetupError::ReadGatewayCa { error, .. } => Some(error),
            TlsSetupError::BadCertificate { error, .. } | TlsSetupError::Build(error) => {
                Some(error)
            }
            TlsSetupError::NoCertificate(_) => None,
        }
    }
}

/// The TLS settings of the relay's own connections to the gateway: the
/// system roots (OpenSSL's defaults, which honour `SSL_CERT_FILE` and
/// `SSL_CERT_DIR`) plus any `--gateway-ca` certificates.
pub fn tls_connector(gateway_ca: Option<&Path>) -> Result<native_tls::TlsConnector, TlsSetupError> {
    let mut builder = native_tls::TlsConnector::builder();
    // `None`: the newest OpenSSL supports, TLS 1.3.
    builder
        .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
        .max_protocol_version(None);
    if let Some(path) = gateway_ca {
        let pem = fs::read(path).map_err(|error| TlsSetupError::ReadGatewayCa {
            path: path.to_path_buf(),
            error,
        })?;
        let certs = trust::extract_certificates(&pem);
        if certs.is_empty() {
            return Err(TlsSetupError::NoCertificate(path.to_path_buf()));
        }
        for cert in certs {
            let cert = native_tls::Certificate::from_pem(cert.as_bytes()).map_err(|error| {
                TlsSetupError::BadCertificate {
                    path: path.to_path_buf(),
                    error,
                }
            })?;
            builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(TlsSetupError::Build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_ca_problems_are_named_with_the_file() {
        let dir = crate::test_support::TempDir::new("tls-setup");
        let missing = dir.0.join("missing.pem");
        let err = tls_connector(Some(&missing)).expect_err("a missing file");
        assert!(
            matches!(err, TlsSetupError::ReadGatewayCa { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("cannot read --gateway-ca "),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());

        let empty = dir.0.join("empty.pem");
        fs::write(&empty, "not a certificate\n").unwrap();
        let err = tls_connector(Some(&empty)).expect_err("no certificate");
        assert_eq!(
            err.to_string(),
            format!("--gateway-ca {} holds no PEM certificate", empty.display())
        );

        let good = dir.0.join("ca.pem");
        fs::write(&good, crate::test_support::self_signed("gateway ca").pem).unwrap();
        assert!(tls_connector(Some(&good)).is_ok());
        assert!(tls_connector(None).is_ok());
    }

    /// A server that speaks only TLS `version`, on loopback, with a
    /// certificate in `dir/ca.pem`; serves one handshake and returns the
    /// negotiated version.
    fn server_speaking_only(
        version: openssl::ssl::SslVersion,
        dir: &std::path::Path,
    ) -> (
        std::net::SocketAddr,
        std::thread::JoinHandle<Option<String>>,
    ) {
        use openssl::ssl::{SslAcceptor, SslMethod};
        let cert = crate::test_support::self_signed("gateway");
        fs::write(dir.join("ca.pem"), &cert.pem).unwrap();
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        let x509 = openssl::x509::X509::from_pem(cert.pem.as_bytes()).unwrap();
        let key = openssl::pkey::PKey::private_key_from_pem(cert.key.as_bytes()).unwrap();
        builder.set_certificate(&x509).unwrap();
        builder.set_private_key(&key).unwrap();
        builder.set_min_proto_version(Some(version)).unwrap();
        builder.set_max_proto_version(Some(version)).unwrap();
        let acceptor = builder.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().ok()?;
            let tls = acceptor.accept(tcp).ok()?;
            Some(tls.ssl().version_str().to_string())
        });
        (addr, server)
    }

    #[test]
    fn the_gateway_gets_tls_1_3_when_it_offers_it_and_1_2_when_not() {
        use openssl::ssl::SslVersion;
        for (version, name) in [
            (SslVersion::TLS1_3, "TLSv1.3"),
            (SslVersion::TLS1_2, "TLSv1.2"),
        ] {
            let dir = crate::test_support::TempDir::new("tls-version");
            let (addr, server) = server_speaking_only(version, &dir.0);
            let connector = tls_connector(Some(&dir.0.join("ca.pem"))).unwrap();
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            let tls = connector.connect("127.0.0.1", tcp);
            assert!(
                tls.is_ok(),
                "{name}: {:?}",
                tls.err().map(|e| e.to_string())
            );
            assert_eq!(server.join().unwrap().as_deref(), Some(name));
        }
    }
}
