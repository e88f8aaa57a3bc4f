//! What children trust: the merged CA bundle of the contract (sections 1
//! and 2, step 3) and the files made from it. [`fetch`] gets the gateway's
//! CA certificate, [`pem`] keeps only PEM blocks that parse as X.509,
//! [`user_cas`] finds the user's own CA files, [`bundle`] builds system +
//! gateway + user certificates into one bundle and writes it once,
//! atomically, and [`jks`] writes the same certificates as a Java
//! truststore, with those of the JDK's own `cacerts` ([`jdk`]). Nothing but parsed certificates is ever written, and no old
//! bundle is ever left half-written. [`TrustError`] is the family's error.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub mod bundle;
pub mod fetch;
pub mod install;
pub mod jdk;
pub mod jks;
pub mod pem;
pub mod user_cas;

pub use bundle::{Built, Bundle, system_bundle};
pub use fetch::{
    CaFetchFailure, DEFAULT_MAX_BYTES, backoff, fetch_ca_at, fetch_ca_with_retries,
    fetch_gateway_ca,
};
pub use pem::extract_certificates;

/// Why the gateway's CA could not be fetched or the bundle written.
/// Never holds the token (the fetch does not send it).
#[derive(Debug)]
pub enum TrustError {
    /// The base URL cannot be put into a request line.
    BadUrl(String),
    /// TCP connect failed or the name did not resolve.
    Unreachable(io::Error),
    /// The TLS handshake with the gateway failed.
    Tls(String),
    /// Connect, TLS, request and full answer did not finish within the bound.
    Timeout(Duration),
    /// The connection broke during the exchange.
    Io(io::Error),
    /// The answer is not HTTP/1.x the client understands.
    Malformed(String),
    /// The gateway answered with a status other than 200.
    Status {
        code: u16,
        reason: String,
        /// The answer's `Retry-After` in delta-seconds, if it had one.
        retry_after: Option<Duration>,
    },
    /// The body is larger than the bound.
    TooLarge { max: usize },
    /// The body holds no PEM block that parses as an X.509 certificate.
    NoCertificate {
        /// Size of the body in bytes.
        len: usize,
        /// Its first characters, printable ASCII only.
        start: String,
    },
    /// The bundle (or its directory) could not be written.
    Write { path: PathBuf, error: io::Error },
}

/// What the CA fetch's hints ask to check; the session's messages replace
/// it with what set the base URL ([`crate::config::Config::base_url_name`]).
pub const BASE_URL_HINT: &str = "the gateway base URL";

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FETCH: &str = "fetching the gateway's CA certificate";
        match self {
            TrustError::BadUrl(why) => write!(f, "{FETCH}: {why}; fix the gateway base URL"),
            TrustError::Unreachable(e) => write!(
                f,
                "{FETCH}: gateway unreachable ({e}); check {BASE_URL_HINT} and the network"
            ),
            TrustError::Tls(e) => write!(
                f,
                "{FETCH}: TLS to the gateway failed ({e}); check the system roots or pass --gateway-ca"
            ),
            TrustError::Timeout(t) => write!(
                f,
                "{FETCH}: no complete answer within {} ms; the gateway is slow or not answering",
                t.as_millis()
            ),
            TrustError::Io(e) => write!(f, "{FETCH}: connection failed mid-answer ({e})"),
            TrustError::Malformed(why) => {
                write!(f, "{FETCH}: the answer is not valid HTTP ({why})")
            }
            TrustError::Status { code, reason, .. } => write!(
                f,
                "{FETCH}: the gateway answered HTTP {code}{}{} instead of 200; check {BASE_URL_HINT}",
                if reason.is_empty() { "" } else { " " },
                reason
            ),
            TrustError::TooLarge { max } => write!(
                f,
                "{FETCH}: the answer is larger than {max} bytes and was refused; check {BASE_URL_HINT}"
            ),
            TrustError::NoCertificate { len: 0, .. } => write!(
                f,
                "{FETCH}: the answer is empty and holds no PEM certificate; check {BASE_URL_HINT}"
            ),
            TrustError::NoCertificate { len, start } => write!(
                f,
                "{FETCH}: answer of {len} bytes holds no PEM certificate (starts with '{start}'); check {BASE_URL_HINT}"
            ),
            TrustError::Write { path, error } => write!(
                f,
                "cannot write the CA bundle {}: {error}; pass --ca-bundle with a writable path",
                path.display()
            ),
        }
    }
}

impl TrustError {
    /// Whether another try may succeed: the network failing (unreachable,
    /// reset, time-out), the gateway busy or failing (5xx, 408, 429), or a
    /// 200 without a certificate (a proxy's page in between). A refused
    /// certificate, another 4xx, a malformed or oversized answer, a bad URL
    /// or a failed write will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            TrustError::Unreachable(_)
            | TrustError::Timeout(_)
            | TrustError::Io(_)
            | TrustError::NoCertificate { .. } => true,
            TrustError::Status { code, .. } => {
                (500..600).contains(code) || *code == 408 || *code == 429
            }
            TrustError::BadUrl(_)
            | TrustError::Tls(_)
            | TrustError::Malformed(_)
            | TrustError::TooLarge { .. }
            | TrustError::Write { .. } => false,
        }
    }
}

impl std::error::Error for TrustError {}
