//! The start-up sequence of the contract's section 2, each step failing
//! open, in two phases. [`plan`] decides: the gateway's URL and TLS
//! settings, the gateway's CA fetched and the CA bundle built in memory; it
//! reads files and asks the gateway but changes nothing, so `doctor` (see
//! [`crate::cli::doctor`]) runs the same steps. [`apply`] acts: writes the
//! bundle and the Java truststore, binds the listener, unlinks the token
//! file, writes the wgetrc and computes the children's environment.
//! [`start`] runs gates, ptrace guard, plan and apply for `run` and `serve`.
//!
//! Both generations end start-up with the probe (docs/PROTOCOL.md section
//! 2a): one WebSocket opened and closed right after the listener is bound.
//! A gateway that refuses the session's credentials (401 or 403) turns the
//! proxy off; one that cannot be reached leaves it on with a start-up
//! error that makes tunnels dial once and say why. `run` waits for the
//! probe's verdict at most [`PROBE_VERDICT_WAIT`]; the probe then goes on
//! in the background. `doctor` runs the same probe.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};

use crate::config::Config;
use crate::env::{self, ClientFiles, ProxyEnv};
use crate::gateway::pool::{Pool, PoolConfig};
use crate::gateway::{Credentials, Endpoint, Gateway, GatewayError};
use crate::proxy::access::Access;
use crate::proxy::listener::{ProxyState, Relay};
use crate::proxy::status::Monitor;
use crate::startup::gates::{self, Activated, GateClosed, Generation};
use crate::startup::probe::start_probe;
pub use crate::startup::probe::{PROBE_VERDICT_WAIT, ProbeVerdict, probe, startup_error_text};
pub use crate::startup::tls::{TlsSetupError, tls_connector};
use crate::startup::token;
use crate::trust::fetch::CaFetchFailure;
use crate::trust::{self, Bundle, TrustError};

/// What start-up ended with.
pub enum Startup {
    /// The proxy is off; children run as if the relay were absent. One
    /// warning line already said why.
    Disabled,
    /// The proxy is off and nothing was said: gate 1 is closed (not a
    /// remote session), or a relay higher up already serves this process
    /// tree. `run` stays silent, as the contract wants; `serve`, which has
    /// no command to run, prints why (this text) so it does not exit
    /// without a word.
    Quiet(String),
    /// The relay is bound and ready to serve.
    Enabled(Started),
    /// Agent proxy: the gateway's CA could not be fetched, for a reason
    /// that may pass. The proxy is off; `serve` tries again later (after
    /// at least the gateway's `Retry-After`, if it gave one).
    CaUnavailable { retry_after: Option<Duration> },
}

/// A relay ready to serve, and what children need to use it.
pub struct Started {
    pub relay: Relay,
    /// `http://127.0.0.1:<port>`.
    pub proxy_url: String,
    /// The variables to set in every child's environment.
    pub child_vars: Vec<(String, String)>,
    /// What start-up installed outside the relay's directory, which a
    /// clean stop takes back (`outside::finish`).
    pub installed: crate::startup::outside::Installed,
}

/// The step at which start-up stopped; the proxy stays off. Never holds
/// the token.
#[derive(Debug)]
pub enum SessionError {
    /// An activation gate is closed.
    Gates(GateClosed),
    /// The gateway base URL does not parse.
    GatewayUrl(crate::gateway::GatewayUrlError),
    /// The TLS settings for the gateway cannot be made.
    Tls(TlsSetupError),
    /// The gateway's CA could not be fetched; the second field names what
    /// set the base URL ([`Config::base_url_name`]).
    CaFetch(CaFetchFailure, &'static str),
    /// The bundle could not be written.
    Trust(TrustError),
    /// The listener cannot be bound.
    Listen { addr: SocketAddr, error: io::Error },
    /// The bound listener has no address.
    Listener(io::Error),
    /// The start-up probe's upgrade was refused with 401 or 403.
    CredentialsRefused(GatewayError),
    /// `--require-uid-check`, and connection owners cannot be found here.
    NoUidCheck,
    /// The bundle's directory is not the relay's own, or cannot be made.
    StateDir(crate::sys::state_dir::StateDirError),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Gates(e) => write!(f, "not starting the proxy: {e}"),
            SessionError::GatewayUrl(e) => write!(f, "{e}"),
            SessionError::Tls(e) => write!(f, "TLS set-up: {e}"),
            SessionError::CaFetch(e, from) => write!(
                f,
                "CA bundle: {}",
                e.to_string().replace(trust::BASE_URL_HINT, from)
            ),
            SessionError::Trust(e) => write!(f, "CA bundle: {e}"),
            SessionError::Listen { addr, error } => write!(
                f,
                "cannot listen on {addr}: {error}; pass --listen with a free address"
            ),
            SessionError::Listener(e) => write!(f, "listener: {e}"),
            SessionError::StateDir(e) => write!(f, "CA bundle: {e}"),
            SessionError::NoUidCheck => f.write_str(
                "--require-uid-check: this machine does not let the relay find who owns a connection (no netlink socket diagnostics, no /proc/net/tcp)",
            ),
            SessionError::CredentialsRefused(e) => write!(
                f,
                "the gateway refused the session's credentials ({e}); the session token is not accepted"
            ),
        }
    }
}

impl std::error::Error for SessionError {}

/// What [`plan`] decided: everything [`apply`] needs, nothing yet written.
pub struct Plan {
    activation: Activated,
    endpoint: Endpoint,
    tls: native_tls::TlsConnector,
    /// The CA bundle, built in memory.
    pub bundle: Bundle,
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The gateway's base URL: `AGENT_PROXY_URL` (standalone mode), else
/// `--base-url`, `ANTHROPIC_BASE_URL` or the default (`config.base_url`).
pub fn base_url(config: &Config) -> &str {
    config.standalone.base_url_or(&config.base_url)
}

/// The gateway's endpoint, from [`base_url`].
pub fn endpoint(config: &Config) -> Result<Endpoint, SessionError> {
    Endpoint::parse(base_url(config)).map_err(SessionError::GatewayUrl)
}

/// Step 1: the gates of both generations, and the token into memory.
pub fn activate(
    config: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Activated, GateClosed> {
    gates::activate(
        env,
        &config.token_file,
        &config.standalone,
        token::FD_READ_TIMEOUT,
    )
}

/// Step 1 for `doctor`: the same gates and token sources as [`activate`],
/// but the token descriptor is left unread (it can be read only once).
pub fn activate_dry(config: &Config, env: impl Fn(&str) -> Option<String>) -> gates::DryActivation {
    gates::activate_leaving_fd(env, &config.token_file, &config.standalone)
}

/// The gateway client `apply` serves with (and `doctor` probes with); its
/// liveness check records dropped pooled WebSockets on `monitor`.
pub fn gateway(config: &Config, plan: &Plan, monitor: &Arc<Monitor>) -> Gateway {
    let generation = plan.activation.generation();
    let gateway = Gateway::new(
        plan.endpoint.clone(),
        Credentials {
            session_id: plan.activation.session_id.clone(),
            token: plan.activation.token.clone(),
        },
        plan.tls.clone(),
        config.limits.upgrade_timeout,
    )
    .with_liveness(
        config.limits.gateway_deadline,
        monitor.unresponsive_recorder(),
    );
    let pool = match generation {
        Generation::AgentProxy => match Pool::new(PoolConfig {
            keepalive_interval: config.limits.keepalive_interval,
            idle_timeout: config.limits.pool_idle,
            max_age: config.limits.pool_max_age,
            keep_warm: config.keep_warm,
            liveness: Some(gateway.liveness.clone()),
            ..PoolConfig::default()
        }) {
            Ok(pool) => Some(pool),
            Err(e) => {
                warn!("cannot start the WebSocket pool ({e}); every tunnel dials afresh");
                None
            }
        },
        Generation::UpstreamProxy => None,
    };
    let mut gateway = gateway.with_generation(generation, pool);
    gateway.require_v2 = config.require_v2;
    gateway
}

pub use super::selective::{INCLUDE_HOSTS_VAR, RELAY_MODE_VAR, selective_list};

/// Step 3 without its writes: the gateway's CA fetched, the system bundle
/// and the user's CA files (named in `parent`, the relay's environment)
/// read, the bundle built in memory.
///
/// The first generation fetches once; the agent proxy makes up to three
/// tries within the same bound (docs/PROTOCOL.md section A11) and reports the
/// gateway's `Retry-After` for `serve`'s background retry.
pub fn prepare_trust(
    config: &Config,
    endpoint: &Endpoint,
    tls: &native_tls::TlsConnector,
    generation: Generation,
    parent: impl Fn(&str) -> Option<String>,
) -> Result<Bundle, CaFetchFailure> {
    match generation {
        Generation::UpstreamProxy => {
            trust::bundle::prepare(config, endpoint, tls, parent).map_err(|last| CaFetchFailure {
                last,
                attempts: 1,
                retry_after: None,
            })
        }
        Generation::AgentProxy => trust::bundle::prepare_with_retries(
            config,
            endpoint,
            generation.ca_cert_path(),
            tls,
            parent,
        ),
    }
}

/// Who may use the proxy: the session's own processes unless
/// `--allow-any-uid`; where owners cannot be told apart, anyone (with a
/// warning) or, with `--require-uid-check`, nobody (the proxy stays off).
pub fn access_rule(config: &Config) -> Result<Access, SessionError> {
    if config.allow_any_uid {
        return Ok(Access::Anyone);
    }
    if Access::self_test() {
        return Ok(Access::session(&config.allow_uids));
    }
    if config.require_uid_check {
        return Err(SessionError::NoUidCheck);
    }
    eprintln!(
        "ccr-relay: warning: cannot find who owns a connection here (no netlink socket diagnostics, no /proc/net/tcp); every local process can use the proxy (--require-uid-check keeps it off instead)"
    );
    Ok(Access::Anyone)
}

/// The warning for a listener that is not on loopback, saying what the
/// access rule makes of other hosts: let in with `Anyone`; refused (403) by
/// the uid check otherwise, since their connections have no socket row on
/// this machine to find an owner in.
pub fn listen_warning(addr: SocketAddr, access: &Access) -> Option<String> {
    if addr.ip().is_loopback() {
        return None;
    }
    Some(match access {
        Access::Anyone => format!(
            "listening on {addr}, not a loopback address: any host that can reach it can use this session's credentials"
        ),
        Access::Uids(_) => format!(
            "listening on {addr}, not a loopback address: other hosts that reach it will be refused (403), since the uid check finds no owner for their connections on this machine (--allow-any-uid would let them use this session's credentials)"
        ),
    })
}

/// Decides what start-up would do once the gates passed (`activation`):
/// gateway URL, TLS settings, the bundle built. Changes nothing.
pub fn plan(
    config: &Config,
    activation: Activated,
    parent: impl Fn(&str) -> Option<String>,
) -> Result<Plan, SessionError> {
    let endpoint = endpoint(config)?;
    let tls = tls_connector(config.gateway_ca.as_deref()).map_err(SessionError::Tls)?;
    let bundle = prepare_trust(config, &endpoint, &tls, activation.generation(), parent)
        .map_err(|e| SessionError::CaFetch(e, config.base_url_name()))?;
    Ok(Plan {
        activation,
        endpoint,
        tls,
        bundle,
    })
}

/// Carries out `plan`: writes the bundle (one atomic write) and the Java
/// truststore, binds the listener, unlinks the token file (only then: the
/// token lives in this process's memory alone; and only if it is still the
/// file the token was read from), writes the wgetrc (it names
/// the port) and computes the children's variables. What fails after the
/// bundle is written is a warning on stderr, except the listener.
pub fn apply(
    config: &Config,
    plan: Plan,
    parent: impl Fn(&str) -> Option<String>,
) -> Result<Started, SessionError> {
    // Decided before anything is written: with --require-uid-check on a
    // machine that cannot tell owners apart, nothing happens at all.
    let access = access_rule(config)?;
    // What the status page shows, from the first step on.
    let monitor = Arc::new(Monitor::default());
    let mut client_files = write_trust_files(config, &plan, &parent, &monitor)?;
    let generation = plan.activation.generation();
    let (relay, addr) = bind_listener(config, &plan, access, &monitor)?;
    await_probe(&relay)?;
    remove_token_file(config, &plan);
    let proxy_url = format!("http://{addr}");
    let proxy_env = proxy_env(config, &plan, &relay, proxy_url.clone());
    write_wgetrc(&proxy_env, &mut client_files, &parent);
    let child_vars = env::child_vars(&proxy_env, &client_files, &parent);
    let installed = crate::startup::outside::after_listen(
        &plan.bundle,
        client_files.truststore.as_deref(),
        &parent,
        &monitor,
    );
    let readme = write_agent_readme(config, generation, &client_files, &child_vars);
    let written = WrittenFiles {
        truststore: client_files.truststore.as_deref(),
        readme: readme.as_deref(),
    };
    publish_status(config, &plan, &relay, addr, (&child_vars, written));
    info!(
        "{} on {addr}: bundle {} ({} certificates), installed: {}",
        generation.name(),
        config.ca_bundle.display(),
        plan.bundle.certificates().len(),
        installed_summary(&installed.now)
    );
    Ok(Started {
        relay,
        proxy_url,
        child_vars,
        installed,
    })
}

/// Writes the bundle (one atomic write) into the relay's own directory, and
/// the Java truststore (a warning if it cannot be written).
fn write_trust_files(
    config: &Config,
    plan: &Plan,
    parent: &impl Fn(&str) -> Option<String>,
    monitor: &Monitor,
) -> Result<ClientFiles, SessionError> {
    // The bundle's directory holds what children trust: the relay's own,
    // or nothing is written there at all.
    if let Some(dir) = config
        .ca_bundle
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        crate::sys::state_dir::prepare(dir).map_err(SessionError::StateDir)?;
    }
    plan.bundle.write().map_err(SessionError::Trust)?;
    let mut client_files = ClientFiles::default();
    match plan
        .bundle
        .write_truststore_with(&crate::startup::outside::jdk_certificates(parent, monitor))
    {
        Ok(store) => client_files.truststore = Some(store),
        Err(warning) => eprintln!("ccr-relay: warning: {warning}"),
    }
    Ok(client_files)
}

/// Binds the listener with the gateway client and the access rule, and
/// warns when it is not on loopback.
fn bind_listener(
    config: &Config,
    plan: &Plan,
    access: Access,
    monitor: &Arc<Monitor>,
) -> Result<(Relay, SocketAddr), SessionError> {
    let gateway = gateway(config, plan, monitor);
    let rule = access.clone();
    let state = ProxyState {
        access,
        limits: config.limits,
        monitor: Arc::clone(monitor),
        selective: match plan.activation.generation() {
            Generation::AgentProxy => selective_list(env_lookup),
            Generation::UpstreamProxy => None,
        },
    };
    let relay =
        Relay::bind(config.listen, gateway, state).map_err(|error| SessionError::Listen {
            addr: config.listen,
            error,
        })?;
    let addr = relay.local_addr().map_err(SessionError::Listener)?;
    if let Some(warning) = listen_warning(addr, &rule) {
        warn!("{warning}");
    }
    Ok((relay, addr))
}

/// The probe: its verdict within the wait decides; a later one is
/// recorded by the probe's thread.
fn await_probe(relay: &Relay) -> Result<(), SessionError> {
    match start_probe(relay.gateway()).recv_timeout(PROBE_VERDICT_WAIT) {
        Ok(ProbeVerdict::CredentialsRefused(e)) => return Err(SessionError::CredentialsRefused(e)),
        Ok(_) => {}
        Err(_) => info!(
            "the gateway has not answered the start-up probe within {} s; starting anyway",
            PROBE_VERDICT_WAIT.as_secs()
        ),
    }
    Ok(())
}

/// Unlinks the token file, only if it is still the file the token was read
/// from; a failure is a warning.
fn remove_token_file(config: &Config, plan: &Plan) {
    match token::remove_token_file(&config.token_file, &plan.activation.token) {
        Ok(token::TokenFileRemoval::Replaced) => info!(
            "the token file {} was rewritten since start-up; the new one is left in place",
            config.token_file.display()
        ),
        Ok(_) => {}
        Err(e) => eprintln!(
            "ccr-relay: warning: cannot remove the token file {}: {e}",
            config.token_file.display()
        ),
    }
}

/// What the children's environment and the wgetrc are computed from.
fn proxy_env(config: &Config, plan: &Plan, relay: &Relay, proxy_url: String) -> ProxyEnv {
    ProxyEnv {
        proxy_url,
        ca_bundle: config.ca_bundle.clone(),
        no_proxy_extra: config.no_proxy_extra.clone(),
        no_proxy_default: config.no_proxy_default,
        mode: env::Mode {
            generation: plan.activation.generation(),
            standalone: plan.activation.standalone,
            selective: relay.is_selective(),
        },
        system_bundle: plan.bundle.built.system_bundle.is_some(),
    }
}

/// Writes the wgetrc (it names the port); a failure is a warning and
/// leaves `WGETRC` unset.
fn write_wgetrc(
    proxy_env: &ProxyEnv,
    client_files: &mut ClientFiles,
    parent: &impl Fn(&str) -> Option<String>,
) {
    match env::write_wgetrc(proxy_env, parent) {
        Ok(path) => client_files.wgetrc = Some(path),
        Err(e) => eprintln!(
            "ccr-relay: warning: cannot write the wgetrc for wget ({e}); WGETRC is not set, so wget will not trust the gateway"
        ),
    }
}

/// Gives the status page what start-up decided.
/// The files start-up wrote for children that the status page names.
struct WrittenFiles<'a> {
    truststore: Option<&'a Path>,
    readme: Option<&'a Path>,
}

fn publish_status(
    config: &Config,
    plan: &Plan,
    relay: &Relay,
    addr: SocketAddr,
    (child_vars, written): (&[(String, String)], WrittenFiles<'_>),
) {
    let git_config = crate::env::credentials::injected_git_config(child_vars);
    let shown = |path: Option<&Path>| path.map(|p| p.display().to_string());
    relay.monitor().set_info(crate::proxy::status::Info {
        port: addr.port(),
        ca_bundle_path: config.ca_bundle.display().to_string(),
        has_system_ca: plan.bundle.built.system_bundle.is_some(),
        no_proxy: child_vars
            .iter()
            .find(|(n, _)| n == "NO_PROXY")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        standalone: plan.activation.standalone,
        selective: relay.is_selective(),
        java_trust_store_path: shown(written.truststore),
        readme_path: shown(written.readme),
        git_ssh_rewrite: crate::env::credentials::rewrites_github_ssh(&git_config),
        git_config_injection: git_config,
    });
}

/// Writes the README for the agent next to the bundle, and says where; a
/// failure is a warning.
fn write_agent_readme(
    config: &Config,
    generation: Generation,
    client_files: &ClientFiles,
    child_vars: &[(String, String)],
) -> Option<PathBuf> {
    let readme = crate::startup::agent_readme::write(&crate::startup::agent_readme::Facts {
        generation,
        bundle: &config.ca_bundle,
        files: client_files,
        truststore_password: crate::trust::jks::PASSWORD,
        child_vars,
    });
    match readme {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!("ccr-relay: warning: cannot write the README next to the CA bundle: {e}");
            None
        }
    }
}

/// Runs the start-up sequence. Never panics and never fails: any problem
/// is one warning on stderr and [`Startup::Disabled`], or, when not in a
/// remote session, none and [`Startup::Quiet`].
pub fn start(config: &Config) -> Startup {
    // 1. gates, token into memory.
    let activation = match activate(config, env_lookup) {
        Ok(activation) => activation,
        Err(closed) if closed.is_silent() => {
            debug!("{closed}");
            return Startup::Quiet(closed.to_string());
        }
        // A relay higher up already serves this process tree (it unlinked the
        // token file): its variables pass through, and there is nothing to say.
        Err(closed) if env::parent_has_relay(env_lookup) => {
            return Startup::Quiet(format!(
                "{closed}; a relay higher up already serves this process tree (HTTPS_PROXY and SSL_CERT_FILE are set)"
            ));
        }
        Err(closed) => return fail_open(SessionError::Gates(closed)),
    };
    // 2. no same-uid process may read the token out of this one.
    if let Err(e) = token::forbid_dumping() {
        eprintln!(
            "ccr-relay: warning: cannot make the relay non-dumpable ({e}); same-user processes may be able to read its memory"
        );
    }
    // Without HOME, the bundle's fresh private directory is made now.
    let resolved;
    let config = match crate::sys::state_dir::resolve(&config.ca_bundle) {
        Ok(bundle) if bundle == config.ca_bundle => config,
        Ok(bundle) => {
            resolved = Config {
                ca_bundle: bundle,
                ..config.clone()
            };
            &resolved
        }
        Err(e) => return fail_open(SessionError::StateDir(e)),
    };
    // 3. the gateway's CA and the user's merged after the system bundle.
    let generation = activation.generation();
    let plan = match plan(config, activation, env_lookup) {
        Ok(plan) => plan,
        Err(SessionError::CaFetch(failure, from))
            if generation == Generation::AgentProxy && failure.last.is_retryable() =>
        {
            let retry_after = failure.retry_after;
            fail_open(SessionError::CaFetch(failure, from));
            return Startup::CaUnavailable { retry_after };
        }
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

/// What start-up installed outside the relay's directory, for the start-up
/// log line: each target and where, or `nothing`.
fn installed_summary(report: &crate::trust::install::Report) -> String {
    if report.installed.is_empty() {
        return "nothing".into();
    }
    report
        .installed
        .iter()
        .map(|(what, path)| format!("{what} ({})", path.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the one warning line of a failed step; the proxy stays off.
fn fail_open(why: SessionError) -> Startup {
    eprintln!("ccr-relay: {why}; continuing without the proxy");
    Startup::Disabled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BaseUrlFrom;

    fn unreachable() -> CaFetchFailure {
        CaFetchFailure {
            last: TrustError::Unreachable(io::Error::from(io::ErrorKind::ConnectionRefused)),
            attempts: 1,
            retry_after: None,
        }
    }

    #[test]
    fn hints_name_what_set_the_base_url() {
        let mut config = Config::from_env();
        for (from, name) in [
            (BaseUrlFrom::Flag, "check --base-url and the network"),
            (BaseUrlFrom::Env, "check ANTHROPIC_BASE_URL and the network"),
            (
                BaseUrlFrom::Default,
                "check --base-url or ANTHROPIC_BASE_URL (neither is set)",
            ),
        ] {
            config.base_url_from = from;
            let text = SessionError::CaFetch(unreachable(), config.base_url_name()).to_string();
            assert!(text.contains(name), "{from:?}: {text}");
            assert_eq!(text.matches("check").count(), 1, "{text}");
        }
    }

    #[test]
    fn listen_warning_says_what_the_access_rule_does_with_other_hosts() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!());
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(listen_warning(lo, &Access::Anyone), None);
        assert_eq!(listen_warning(lo, &Access::session(&[])), None);
        let open = listen_warning(any, &Access::Anyone).unwrap_or_default();
        assert!(
            open.contains("any host that can reach it can use this session's credentials"),
            "{open}"
        );
        let checked = listen_warning(any, &Access::session(&[])).unwrap_or_default();
        assert!(checked.contains("will be refused (403)"), "{checked}");
        assert!(checked.contains("uid check"), "{checked}");
        assert!(!checked.contains("any host that can reach it"), "{checked}");
    }

    #[test]
    fn no_word_said_twice_about_a_bad_url() {
        let mut config = Config::from_env();
        config.base_url = "ftp://gw.test".into();
        let text = endpoint(&config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            text,
            "gateway URL \"ftp://gw.test\" must start with http:// or https://"
        );
    }

    /// A lookup over fixed pairs, standing in for the environment.
    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        }
    }

    #[test]
    fn selective_list_only_in_selective_mode_with_hosts() {
        // Selective mode without usable hosts tunnels everything.
        assert_eq!(
            selective_list(env_of(&[(RELAY_MODE_VAR, "selective")])),
            None
        );
        for blank in ["", "   ", " , ,"] {
            let pairs = [(RELAY_MODE_VAR, "selective"), (INCLUDE_HOSTS_VAR, blank)];
            assert_eq!(selective_list(env_of(&pairs)), None, "hosts {blank:?}");
        }
        // With hosts (mode in any case, padded): the list, as parsed.
        let list = selective_list(env_of(&[
            (RELAY_MODE_VAR, " Selective "),
            (INCLUDE_HOSTS_VAR, "api.example.com, *.corp.test"),
        ]));
        let Some(list) = list else {
            panic!("selective mode with hosts gave no list");
        };
        assert_eq!(list.len(), 2);
        assert!(list.matches("api.example.com") && list.matches("a.corp.test"));
        assert!(!list.matches("example.com"));
        // Any other mode, or none, tunnels everything, hosts or not.
        for mode in ["", "all", "tunnel", "selectivee"] {
            let pairs = [
                (RELAY_MODE_VAR, mode),
                (INCLUDE_HOSTS_VAR, "api.example.com"),
            ];
            assert_eq!(selective_list(env_of(&pairs)), None, "mode {mode:?}");
        }
        assert_eq!(
            selective_list(env_of(&[(INCLUDE_HOSTS_VAR, "api.example.com")])),
            None
        );
    }
}
