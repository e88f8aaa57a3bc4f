//! The TLS settings of the relay's own connections to the gateway: the
//! system roots plus any `--gateway-ca` certificates, and why they cannot
//! be made when the file is missing, empty or not a certificate.

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
}
