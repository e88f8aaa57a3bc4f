//! The start-up sequence of PROTOCOL.md section 2, each step failing open:
//! gates and token, the ptrace guard, the CA bundle, the listener, the token
//! file's unlinking, the children's environment. Also `doctor`, which walks
//! the same steps for a person without changing anything.

use std::fs;
use std::io;
use std::path::Path;

use crate::ca_bundle;
use crate::child_env::{self, ProxyEnv};
use crate::config::Config;
use crate::gates::{self, Activation};
use crate::gateway::{Credentials, Endpoint, Gateway};
use crate::listener::Relay;
use crate::token;

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
}

/// Prints the one warning line of a failed step; the proxy stays off.
fn fail_open(step: &str, why: impl std::fmt::Display) -> Startup {
    eprintln!("ccr-relay: {step}: {why}; continuing without the proxy");
    Startup::Disabled
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Runs the start-up sequence. Never panics and never fails: any problem
/// is one warning on stderr (none when not in a remote session) and
/// [`Startup::Disabled`].
pub fn start(config: &Config) -> Startup {
    // 1. gates, token into memory.
    let Activation { session_id, token } = match gates::check(env_lookup, &config.token_file) {
        Ok(activation) => activation,
        Err(closed) if closed.is_silent() => return Startup::Disabled,
        // A relay higher up already serves this process tree (it unlinked the
        // token file): its variables pass through, and there is nothing to say.
        Err(_) if child_env::parent_has_relay(env_lookup) => return Startup::Disabled,
        Err(closed) => return fail_open("not starting the proxy", closed),
    };
    // 2. no same-uid process may read the token out of this one.
    if let Err(e) = token::forbid_dumping() {
        eprintln!(
            "ccr-relay: warning: cannot make the relay non-dumpable ({e}); same-user processes may be able to read its memory"
        );
    }
    let endpoint = match Endpoint::parse(&config.base_url) {
        Ok(endpoint) => endpoint,
        Err(e) => return fail_open("gateway URL", e),
    };
    let tls = match tls_connector(config.gateway_ca.as_deref()) {
        Ok(tls) => tls,
        Err(e) => return fail_open("TLS set-up", e),
    };
    // 3. the gateway's CA, merged after the system bundle.
    let built = match ca_bundle::build_bundle(config, &endpoint, &tls) {
        Ok(built) => {
            for warning in &built.warnings {
                eprintln!("ccr-relay: warning: {warning}");
            }
            built
        }
        Err(e) => return fail_open("CA bundle", e),
    };
    // -- child_env (begin): the user's own CA files merged in, the Java truststore.
    let prepared = child_env::prepare_trust(
        &config.ca_bundle,
        built.system_bundle.as_deref(),
        env_lookup,
    );
    for warning in &prepared.warnings {
        eprintln!("ccr-relay: warning: {warning}");
    }
    // -- child_env (end)
    // 4. the listener.
    let gateway = Gateway::new(
        endpoint,
        Credentials { session_id, token },
        tls,
        config.limits.upgrade_timeout,
    );
    let relay = match Relay::bind(config.listen, gateway, config.limits) {
        Ok(relay) => relay,
        Err(e) => {
            return fail_open(
                &format!("cannot listen on {}", config.listen),
                format!("{e}; pass --listen with a free address"),
            );
        }
    };
    let addr = match relay.local_addr() {
        Ok(addr) => addr,
        Err(e) => return fail_open("listener", e),
    };
    // 5. only now: the token lives in this process's memory alone.
    if let Err(e) = fs::remove_file(&config.token_file)
        && e.kind() != io::ErrorKind::NotFound
    {
        eprintln!(
            "ccr-relay: warning: cannot remove the token file {}: {e}",
            config.token_file.display()
        );
    }
    // 6. the children's environment.
    let proxy_url = format!("http://{addr}");
    // -- child_env (begin): the wgetrc names the port, so it is written now.
    let proxy_env = ProxyEnv {
        proxy_url: proxy_url.clone(),
        ca_bundle: config.ca_bundle.clone(),
        no_proxy_extra: config.no_proxy_extra.clone(),
    };
    let mut client_files = prepared.files;
    match child_env::write_wgetrc(&proxy_env, env_lookup) {
        Ok(path) => client_files.wgetrc = Some(path),
        Err(e) => eprintln!(
            "ccr-relay: warning: cannot write the wgetrc for wget ({e}); WGETRC is not set, so wget will not trust the gateway"
        ),
    }
    let child_vars = child_env::child_vars(&proxy_env, &client_files, env_lookup);
    // -- child_env (end)
    Startup::Enabled(Started {
        relay,
        proxy_url,
        child_vars,
    })
}

/// The TLS settings of the relay's own connections to the gateway: the
/// system roots (OpenSSL's defaults, which honour `SSL_CERT_FILE` and
/// `SSL_CERT_DIR`) plus any `--gateway-ca` certificates.
pub fn tls_connector(gateway_ca: Option<&Path>) -> Result<native_tls::TlsConnector, String> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = gateway_ca {
        let pem = fs::read(path)
            .map_err(|e| format!("cannot read --gateway-ca {}: {e}", path.display()))?;
        let certs = ca_bundle::extract_certificates(&pem);
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

/// The TLS library's name and version, for `--version`.
pub fn tls_library_version() -> String {
    // SAFETY: OpenSSL_version returns a pointer to a static NUL-terminated string.
    unsafe {
        let ptr = OpenSSL_version(0);
        if ptr.is_null() {
            return "OpenSSL (unknown version)".into();
        }
        std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned()
    }
}

unsafe extern "C" {
    /// From libcrypto, which native-tls links (statically in the musl build).
    fn OpenSSL_version(kind: libc::c_int) -> *const libc::c_char;
}

/// `ccr-relay doctor`: each gate and step with ok or why not, whether the
/// gateway answers, and the environment children would get. Changes
/// nothing: the token file stays, no bundle is written, no port is kept.
/// Exits 0 when the proxy would start, 1 when it would stay off.
pub fn doctor(config: &Config) -> i32 {
    let mut report = Doctor::default();
    println!("ccr-relay doctor ({})", crate::app::version_text());
    println!();
    println!("activation gates");
    let var = |name: &str| std::env::var(name).ok();
    let truthy = |name: &str| var(name).is_some_and(|v| gates::is_truthy(&v));
    report.line(
        "gate 1  CLAUDE_CODE_REMOTE",
        truthy("CLAUDE_CODE_REMOTE"),
        "not a true value: not in a remote session, the relay stays silent and off",
    );
    report.line(
        "gate 2  CCR_UPSTREAM_PROXY_ENABLED",
        truthy("CCR_UPSTREAM_PROXY_ENABLED"),
        "not a true value: the server has not enabled the upstream proxy",
    );
    report.line(
        "gate 3  CLAUDE_CODE_REMOTE_SESSION_ID",
        var("CLAUDE_CODE_REMOTE_SESSION_ID").is_some_and(|v| !v.trim().is_empty()),
        "unset or empty",
    );
    let token = token::read_token_file(&config.token_file);
    let token_why = match &token {
        Ok(_) => String::new(),
        Err(e) => format!("{}: {e}", config.token_file.display()),
    };
    report.line(
        &format!("gate 4  token file {}", config.token_file.display()),
        token.is_ok(),
        &token_why,
    );

    println!();
    println!("start-up steps");
    let endpoint = Endpoint::parse(&config.base_url);
    report.line(
        &format!("gateway URL {}", config.base_url),
        endpoint.is_ok(),
        endpoint.as_ref().err().map(String::as_str).unwrap_or(""),
    );
    let tls = tls_connector(config.gateway_ca.as_deref());
    report.line(
        "TLS settings for the gateway",
        tls.is_ok(),
        tls.as_ref().err().map(String::as_str).unwrap_or(""),
    );
    let system = ca_bundle::system_bundle(config.system_ca.as_deref());
    let system_text = match &system {
        Some(path) => match fs::read(path) {
            Ok(pem) => format!(
                "{} ({} certificates)",
                path.display(),
                ca_bundle::extract_certificates(&pem).len()
            ),
            Err(e) => format!("{}: {e}", path.display()),
        },
        None => "none found (the bundle will hold the gateway's certificates alone)".into(),
    };
    println!("  info  system CA bundle: {system_text}");
    if let (Ok(endpoint), Ok(tls)) = (&endpoint, &tls) {
        let fetched = ca_bundle::fetch_gateway_ca(
            endpoint,
            tls,
            config.limits.ca_fetch_timeout,
            config.limits.max_ca_bytes,
        );
        let why = match &fetched {
            Ok(certs) => format!("{} certificate(s)", certs.len()),
            Err(e) => e.to_string(),
        };
        report.line_with(
            &format!(
                "gateway CA  {}",
                endpoint.http_url(crate::gateway::CA_CERT_PATH)
            ),
            fetched.is_ok(),
            &why,
        );
        if let (Ok(activation), Ok(tls)) = (
            gates::check(env_lookup, &config.token_file),
            tls_connector(config.gateway_ca.as_deref()),
        ) {
            let gateway = Gateway::new(
                endpoint.clone(),
                Credentials {
                    session_id: activation.session_id,
                    token: activation.token,
                },
                tls,
                config.limits.upgrade_timeout,
            );
            let upgrade = gateway.open_websocket().map(|mut ws| {
                let _ = ws.close(None);
            });
            report.line_with(
                &format!("gateway WebSocket  {}", endpoint.ws_url()),
                upgrade.is_ok(),
                &upgrade
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "upgrade accepted".into()),
            );
        } else {
            println!("  skip  gateway WebSocket: needs the gates to pass");
        }
    }
    let bundle_dir = config.ca_bundle.parent().unwrap_or(Path::new("/"));
    let dir_state = writable_dir_state(bundle_dir);
    report.line(
        &format!("CA bundle {}", config.ca_bundle.display()),
        dir_state.is_ok(),
        dir_state.as_ref().err().map(String::as_str).unwrap_or(""),
    );
    let bound = std::net::TcpListener::bind(config.listen).and_then(|l| l.local_addr());
    report.line(
        &format!("listen on {}", config.listen),
        bound.is_ok(),
        &bound
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    );

    println!();
    println!("children would get");
    let port = bound
        .map(|a| a.port().to_string())
        .unwrap_or_else(|_| "PORT".into());
    let vars = child_env::proxy_vars(&ProxyEnv {
        proxy_url: format!("http://{}:{port}", config.listen.ip()),
        ca_bundle: config.ca_bundle.clone(),
        no_proxy_extra: config.no_proxy_extra.clone(),
    });
    for (name, value) in &vars {
        println!("  {name}={value}");
    }
    println!();
    if report.failed == 0 {
        println!("verdict: the proxy would start");
        0
    } else {
        println!(
            "verdict: the proxy would stay off ({} check(s) failed); commands run without it",
            report.failed
        );
        1
    }
}

#[derive(Default)]
struct Doctor {
    failed: usize,
}

impl Doctor {
    fn line(&mut self, what: &str, ok: bool, why: &str) {
        if ok {
            println!("  ok    {what}");
        } else {
            self.failed += 1;
            println!("  FAIL  {what}: {why}");
        }
    }

    fn line_with(&mut self, what: &str, ok: bool, detail: &str) {
        if ok {
            println!("  ok    {what}: {detail}");
        } else {
            self.failed += 1;
            println!("  FAIL  {what}: {detail}");
        }
    }
}

/// Whether files can be created in `dir` (or in the nearest existing
/// ancestor, since the relay creates the directory), without creating any.
fn writable_dir_state(dir: &Path) -> Result<(), String> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    if !probe.is_dir() {
        return Err(format!("{} is not a directory", probe.display()));
    }
    let c_path = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())
        .map_err(|_| "path holds a NUL byte".to_string())?;
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "{} is not writable: {}",
            probe.display(),
            io::Error::last_os_error()
        ))
    }
}
