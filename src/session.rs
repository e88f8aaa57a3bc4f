//! The start-up sequence of the contract's section 2, each step failing
//! open, in two phases. [`plan`] decides: the gateway's URL and TLS
//! settings, the gateway's CA fetched and the CA bundle built in memory; it
//! reads files and asks the gateway but changes nothing, so `doctor` (see
//! [`crate::doctor`]) runs the same steps. [`apply`] acts: writes the
//! bundle and the Java truststore, binds the listener, unlinks the token
//! file, writes the wgetrc and computes the children's environment.
//! [`start`] runs gates, ptrace guard, plan and apply for `run` and `serve`.

use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

use crate::child_env::{self, ClientFiles, ProxyEnv};
use crate::config::Config;
use crate::gates::{self, Activation, GateClosed};
use crate::gateway::{Credentials, Endpoint, Gateway};
use crate::listener::Relay;
use crate::token;
use crate::trust::{self, Bundle, TrustError};

/// What start-up ended with.
pub enum Startup {
    /// The proxy is off; children run as if the relay were absent.
    Disabled,
    /// The relay is bound and ready to serve.
    Enabled(Started),
}

/// A relay ready to serve, and what children need to use it.
pub struct Started {
    pub relay: Relay,
    /// `http://127.0.0.1:<port>`.
    pub proxy_url: String,
    /// The variables to set in every child's environment.
    pub child_vars: Vec<(String, String)>,
    /// What start-up installed outside the relay's directory and must undo
    /// on stop (`outside::finish`).
    pub installed: crate::install::Report,
}

/// The step at which start-up stopped; the proxy stays off. Never holds
/// the token.
#[derive(Debug)]
pub enum SessionError {
    /// An activation gate is closed.
    Gates(GateClosed),
    /// The gateway base URL does not parse.
    GatewayUrl(String),
    /// The TLS settings for the gateway cannot be made.
    Tls(String),
    /// The gateway's CA could not be fetched, or the bundle written.
    Trust(TrustError),
    /// The listener cannot be bound.
    Listen { addr: SocketAddr, error: io::Error },
    /// The bound listener has no address.
    Listener(io::Error),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Gates(e) => write!(f, "not starting the proxy: {e}"),
            SessionError::GatewayUrl(e) => write!(f, "gateway URL: {e}"),
            SessionError::Tls(e) => write!(f, "TLS set-up: {e}"),
            SessionError::Trust(e) => write!(f, "CA bundle: {e}"),
            SessionError::Listen { addr, error } => write!(
                f,
                "cannot listen on {addr}: {error}; pass --listen with a free address"
            ),
            SessionError::Listener(e) => write!(f, "listener: {e}"),
        }
    }
}

impl std::error::Error for SessionError {}

/// What [`plan`] decided: everything [`apply`] needs, nothing yet written.
pub struct Plan {
    activation: Activation,
    endpoint: Endpoint,
    tls: native_tls::TlsConnector,
    /// The CA bundle, built in memory.
    pub bundle: Bundle,
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The gateway's endpoint, from `config.base_url`.
pub fn endpoint(config: &Config) -> Result<Endpoint, SessionError> {
    Endpoint::parse(&config.base_url).map_err(SessionError::GatewayUrl)
}

/// The TLS settings of the relay's own connections to the gateway: the
/// system roots (OpenSSL's defaults, which honour `SSL_CERT_FILE` and
/// `SSL_CERT_DIR`) plus any `--gateway-ca` certificates.
pub fn tls_connector(gateway_ca: Option<&Path>) -> Result<native_tls::TlsConnector, String> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = gateway_ca {
        let pem = fs::read(path)
            .map_err(|e| format!("cannot read --gateway-ca {}: {e}", path.display()))?;
        let certs = trust::extract_certificates(&pem);
        if certs.is_empty() {
            return Err(format!(
                "--gateway-ca {} holds no PEM certificate",
                path.display()
            ));
        }
        for cert in certs {
            let cert = native_tls::Certificate::from_pem(cert.as_bytes())
                .map_err(|e| format!("--gateway-ca {}: {e}", path.display()))?;
            builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

/// Step 3 without its writes: the gateway's CA fetched, the system bundle
/// and the user's CA files (named in `parent`, the relay's environment)
/// read, the bundle built in memory.
pub fn prepare_trust(
    config: &Config,
    endpoint: &Endpoint,
    tls: &native_tls::TlsConnector,
    parent: impl Fn(&str) -> Option<String>,
) -> Result<Bundle, TrustError> {
    trust::bundle::prepare(config, endpoint, tls, parent)
}

/// Decides what start-up would do once the gates passed (`activation`):
/// gateway URL, TLS settings, the bundle built. Changes nothing.
pub fn plan(
    config: &Config,
    activation: Activation,
    parent: impl Fn(&str) -> Option<String>,
) -> Result<Plan, SessionError> {
    let endpoint = endpoint(config)?;
    let tls = tls_connector(config.gateway_ca.as_deref()).map_err(SessionError::Tls)?;
    let bundle = prepare_trust(config, &endpoint, &tls, parent).map_err(SessionError::Trust)?;
    Ok(Plan {
        activation,
        endpoint,
        tls,
        bundle,
    })
}

/// Carries out `plan`: writes the bundle (one atomic write) and the Java
/// truststore, binds the listener, unlinks the token file (only then: the
/// token lives in this process's memory alone), writes the wgetrc (it names
/// the port) and computes the children's variables. What fails after the
/// bundle is written is a warning on stderr, except the listener.
pub fn apply(
    config: &Config,
    plan: Plan,
    parent: impl Fn(&str) -> Option<String>,
) -> Result<Started, SessionError> {
    let Plan {
        activation: Activation { session_id, token },
        endpoint,
        tls,
        bundle,
    } = plan;
    bundle.write().map_err(SessionError::Trust)?;
    let mut client_files = ClientFiles::default();
    match bundle.write_truststore_with(&crate::outside::jdk_certificates(&parent)) {
        Ok(store) => client_files.truststore = Some(store),
        Err(warning) => eprintln!("ccr-relay: warning: {warning}"),
    }
    let gateway = Gateway::new(
        endpoint,
        Credentials { session_id, token },
        tls,
        config.limits.upgrade_timeout,
    );
    let relay = Relay::bind(config.listen, gateway, config.limits).map_err(|error| {
        SessionError::Listen {
            addr: config.listen,
            error,
        }
    })?;
    let addr = relay.local_addr().map_err(SessionError::Listener)?;
    if let Err(e) = fs::remove_file(&config.token_file)
        && e.kind() != io::ErrorKind::NotFound
    {
        eprintln!(
            "ccr-relay: warning: cannot remove the token file {}: {e}",
            config.token_file.display()
        );
    }
    let proxy_url = format!("http://{addr}");
    let proxy_env = ProxyEnv {
        proxy_url: proxy_url.clone(),
        ca_bundle: config.ca_bundle.clone(),
        no_proxy_extra: config.no_proxy_extra.clone(),
        mode: child_env::Mode::default(),
        system_bundle: bundle.built.system_bundle.is_some(),
    };
    match child_env::write_wgetrc(&proxy_env, &parent) {
        Ok(path) => client_files.wgetrc = Some(path),
        Err(e) => eprintln!(
            "ccr-relay: warning: cannot write the wgetrc for wget ({e}); WGETRC is not set, so wget will not trust the gateway"
        ),
    }
    let child_vars = child_env::child_vars(&proxy_env, &client_files, &parent);
    let installed =
        crate::outside::after_listen(&bundle, client_files.truststore.as_deref(), &parent);
    Ok(Started {
        relay,
        proxy_url,
        child_vars,
        installed,
    })
}

/// Runs the start-up sequence. Never panics and never fails: any problem
/// is one warning on stderr (none when not in a remote session) and
/// [`Startup::Disabled`].
pub fn start(config: &Config) -> Startup {
    // 1. gates, token into memory.
    let activation = match gates::check(env_lookup, &config.token_file) {
        Ok(activation) => activation,
        Err(closed) if closed.is_silent() => return Startup::Disabled,
        // A relay higher up already serves this process tree (it unlinked the
        // token file): its variables pass through, and there is nothing to say.
        Err(_) if child_env::parent_has_relay(env_lookup) => return Startup::Disabled,
        Err(closed) => return fail_open(SessionError::Gates(closed)),
    };
    // 2. no same-uid process may read the token out of this one.
    if let Err(e) = token::forbid_dumping() {
        eprintln!(
            "ccr-relay: warning: cannot make the relay non-dumpable ({e}); same-user processes may be able to read its memory"
        );
    }
    // 3. the gateway's CA and the user's merged after the system bundle.
    let plan = match plan(config, activation, env_lookup) {
        Ok(plan) => plan,
        Err(e) => return fail_open(e),
    };
    for warning in &plan.bundle.built.warnings {
        eprintln!("ccr-relay: warning: {warning}");
    }
    // 4.-6. the files, the listener, the token file, the children's environment.
    match apply(config, plan, env_lookup) {
        Ok(started) => Startup::Enabled(started),
        Err(e) => fail_open(e),
    }
}

/// Prints the one warning line of a failed step; the proxy stays off.
fn fail_open(why: SessionError) -> Startup {
    eprintln!("ccr-relay: {why}; continuing without the proxy");
    Startup::Disabled
}
