//! The environment children get (the contract's section 6, widened so that
//! every common client works with no flags or files of its own): the proxy
//! and CA variables ([`vars`]), the `NO_PROXY` list ([`no_proxy`]), the
//! JVM's options ([`java`]), the wgetrc made for wget ([`wget`]), and the
//! variables as a file of `sh` exports for `ccr-relay serve --env-file`
//! ([`env_file`]). The CA bundle and Java truststore the variables name are
//! built in `trust`. CLIENTS.md lists, client by client, what each reads
//! and what is set. [`EnvError`] is the family's error.
//!
//! # What is set
//!
//! The reference relay's eight variables come first, in its order; then
//! `HTTP_PROXY`/`http_proxy` (the relay forwards plain `http://` too), the
//! other CA variables of [`CA_VARS`] (all naming the merged bundle),
//! `NODE_USE_ENV_PROXY=1`, `WGETRC`, `JAVA_TOOL_OPTIONS` and `MAVEN_OPTS`.
//!
//! # The user's own configuration is kept
//!
//! - **CA files.** Every CA variable the relay sets names the merged bundle,
//!   overriding whatever the parent had; the certificates of the files the
//!   parent named are merged into the bundle (`trust::user_cas`), and the
//!   Java truststore is made from the same certificates.
//! - **`NO_PROXY`.** The reference list, then `--no-proxy` entries, then
//!   the entries of the parent's `NO_PROXY` and `no_proxy`; each entry once.
//! - **Proxy variables** the parent set are overridden: the relay is the way
//!   out of the container.
//! - **`JAVA_TOOL_OPTIONS`, `MAVEN_OPTS`**: the relay's options are appended
//!   to the parent's (the JVM applies the last `-D` of a property), so the
//!   user's other options stay, and options given on a `java` command line
//!   still win over both.
//! - **wget**: `WGETRC` replaces `~/.wgetrc`, so the generated file starts
//!   with a verbatim copy of the user's wgetrc (the file the parent's
//!   `WGETRC` named, else `~/.wgetrc`), then the relay's lines, which win
//!   because wget applies later lines last. `/etc/wgetrc` is read by wget
//!   before either and is not copied.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::startup::gates::{self, Generation};

pub mod credentials;
pub mod env_file;
pub mod java;
pub mod no_proxy;
pub mod vars;
pub mod wget;

pub use env_file::{env_file_contents, env_file_text, write_env_file};
pub use java::{java_non_proxy_hosts, java_options};
pub use no_proxy::{NoProxyDefault, no_proxy_entries, no_proxy_value};
pub use vars::{child_vars, parent_has_relay, proxy_vars};
pub use wget::{user_wgetrc, wgetrc_text, write_wgetrc};

/// The first generation's `NO_PROXY` list, in the contract's order (its
/// later list: GitHub goes through the gateway, which injects GitHub
/// credentials). A domain appears in up to three forms because curl, Go,
/// Python and Node each match `NO_PROXY` differently.
pub const NO_PROXY_LIST: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "169.254.0.0/16",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "anthropic.com",
    ".anthropic.com",
    "*.anthropic.com",
    "registry.npmjs.org",
    "jsr.io",
    "npm.jsr.io",
    "pypi.org",
    "files.pythonhosted.org",
    "index.crates.io",
    "proxy.golang.org",
];

/// The agent proxy's `NO_PROXY` list (normal mode), in the contract's order.
pub const AGENT_NO_PROXY_LIST: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "127.0.0.0/8",
    "0.0.0.0/8",
    "::",
    "169.254.0.0/16",
    "api.anthropic.com",
    "api-staging.anthropic.com",
    "api-pr-preview.anthropic.com",
    "mcp-proxy.anthropic.com",
    "mcp-proxy-staging.anthropic.com",
    "registry.npmjs.org",
    "jsr.io",
    "npm.jsr.io",
    "pypi.org",
    "files.pythonhosted.org",
    "index.crates.io",
    "proxy.golang.org",
    "host.docker.internal",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    ".svc.cluster.local",
    "*.svc.cluster.local",
];

/// The entries of [`AGENT_NO_PROXY_LIST`] that standalone mode leaves out:
/// the private ranges and the cluster-local names (a relay outside the
/// cloud container sends those to the gateway too).
pub const AGENT_STANDALONE_OMITTED: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    ".svc.cluster.local",
    "*.svc.cluster.local",
];

/// The agent proxy's `NO_PROXY` list in selective mode (where the relay
/// itself dials every host outside the include list directly).
pub const AGENT_SELECTIVE_NO_PROXY_LIST: &[&str] = &[
    "127.0.0.1",
    "localhost",
    "::1",
    "127.0.0.0/8",
    "0.0.0.0/8",
    "169.254.0.0/16",
    "host.docker.internal",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    ".svc.cluster.local",
    "*.svc.cluster.local",
];

/// Selective mode's variables: read by the relay, removed from children.
pub const SELECTIVE_VARS: &[&str] = &[
    "CCR_AGENT_PROXY_RELAY_MODE",
    "CCR_AGENT_PROXY_INCLUDE_HOSTS",
];

/// Which generation and mode children are set up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub generation: Generation,
    /// `AGENT_PROXY_URL` names the gateway (no cloud container around us).
    pub standalone: bool,
    /// Only the include list goes through the gateway (agent proxy only).
    pub selective: bool,
}

impl Default for Mode {
    /// The upstream proxy, neither standalone nor selective.
    fn default() -> Mode {
        Mode {
            generation: Generation::UpstreamProxy,
            standalone: false,
            selective: false,
        }
    }
}

impl Mode {
    /// The `NO_PROXY` list this mode starts from (before `--no-proxy` and
    /// the parent's entries).
    pub fn no_proxy_list(self) -> Vec<&'static str> {
        match self.generation {
            Generation::UpstreamProxy => NO_PROXY_LIST.to_vec(),
            Generation::AgentProxy if self.selective => AGENT_SELECTIVE_NO_PROXY_LIST.to_vec(),
            Generation::AgentProxy if self.standalone => AGENT_NO_PROXY_LIST
                .iter()
                .filter(|e| !AGENT_STANDALONE_OMITTED.contains(e))
                .copied()
                .collect(),
            Generation::AgentProxy => AGENT_NO_PROXY_LIST.to_vec(),
        }
    }
}

/// The variables that must never reach a child, whatever the parent had:
/// the token sources and standalone pair ([`gates::child_removed_vars`])
/// and selective mode's two ([`SELECTIVE_VARS`]). `run` removes them from
/// the command's environment; `serve`'s env file `unset`s them.
pub fn removed_vars() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = gates::child_removed_vars().collect();
    for name in SELECTIVE_VARS {
        if !names.contains(name) {
            names.push(name);
        }
    }
    names
}

/// The variables naming the proxy: the reference relay's two, then the two
/// for plain `http://`.
pub const PROXY_VARS: &[&str] = &["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];
/// The variables naming the `NO_PROXY` list.
pub const NO_PROXY_VARS: &[&str] = &["NO_PROXY", "no_proxy"];
/// The variables naming the merged CA bundle: the reference relay's four,
/// then one for each client that reads its own.
pub const CA_VARS: &[&str] = &[
    // OpenSSL and what builds on it (Python ssl, httpx, Ruby, Go, uv, PHP).
    "SSL_CERT_FILE",
    // Node, npm, Bun: added to the built-in roots.
    "NODE_EXTRA_CA_CERTS",
    // Python requests (it trusts certifi, not the system, otherwise).
    "REQUESTS_CA_BUNDLE",
    // The curl tool.
    "CURL_CA_BUNDLE",
    // git: Debian's libcurl is GnuTLS and ignores SSL_CERT_FILE.
    "GIT_SSL_CAINFO",
    // pip.
    "PIP_CERT",
    // cargo.
    "CARGO_HTTP_CAINFO",
    // AWS CLI and boto3.
    "AWS_CA_BUNDLE",
    // Deno.
    "DENO_CERT",
    // Nix.
    "NIX_SSL_CERT_FILE",
    // httplib2 (older Google client libraries).
    "HTTPLIB2_CA_CERTS",
    // gRPC's C core (grpcio, the Ruby and PHP gRPC libraries).
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    // gcloud.
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    // npm: a `cafile` in any npmrc replaces NODE_EXTRA_CA_CERTS; the
    // environment setting outranks every npmrc.
    "npm_config_cafile",
    // Ruby's bundler (its own fetcher ignores SSL_CERT_FILE).
    "BUNDLE_SSL_CA_CERT",
    // Hex, Elixir's package manager.
    "HEX_CACERTS_PATH",
];

/// The agent proxy's CA variables set whether or not a system bundle was
/// found (docs/PROTOCOL.md section A10; each of these adds to, or is only
/// consulted for, what the client trusts anyway).
pub const AGENT_CA_ALWAYS: &[&str] = &[
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    "HTTPLIB2_CA_CERTS",
];

/// Set by the agent proxy only where the parent did not set them, and only
/// when a system bundle was found: uv then trusts the system store (our
/// `SSL_CERT_FILE`), Deno the system store and its own roots.
pub const AGENT_TLS_SWITCHES: &[(&str, &str)] = &[
    ("UV_NATIVE_TLS", "true"),
    ("DENO_TLS_CA_STORE", "system,mozilla"),
];
/// How many of [`PROXY_VARS`] and [`CA_VARS`] the reference relay exports.
pub(crate) const REFERENCE_PROXY: usize = 2;
pub(crate) const REFERENCE_CA: usize = 4;

/// Makes the built-in `fetch` and `http` of Node 22.21 or later honour the
/// proxy variables.
pub const NODE_USE_ENV_PROXY: &str = "NODE_USE_ENV_PROXY";
/// Names the wgetrc made by [`write_wgetrc`].
pub const WGETRC: &str = "WGETRC";
/// Carries the Java options of [`java_options`].
pub const JAVA_TOOL_OPTIONS: &str = "JAVA_TOOL_OPTIONS";
/// Carries [`MAVEN_OPTIONS`].
pub const MAVEN_OPTS: &str = "MAVEN_OPTS";
/// Maven 3.9+ resolves artifacts with Apache HttpClient, which ignores the
/// JVM's proxy properties unless told otherwise (the first name is Maven
/// 3.9's resolver 1.9, the second Maven 4's resolver 2). Maven 3.8's wagon
/// honours them already.
pub const MAVEN_OPTIONS: &str = "-Daether.connector.http.useSystemProperties=true \
-Daether.transport.apache.useSystemProperties=true";

/// What the children's proxy variables are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyEnv {
    /// `http://127.0.0.1:<port>`.
    pub proxy_url: String,
    /// The merged CA bundle.
    pub ca_bundle: PathBuf,
    /// `--no-proxy` entries: appended, in order, after the mode's list;
    /// `-HOST` removes `HOST` instead ([`no_proxy_entries`]).
    pub no_proxy_extra: Vec<String>,
    /// Where the list starts: the mode's list, or empty.
    pub no_proxy_default: NoProxyDefault,
    /// Generation and mode.
    pub mode: Mode,
    /// Whether the bundle holds a system bundle (not the gateway's
    /// certificates alone). The agent proxy names the bundle in the
    /// variables that *replace* a client's roots only then.
    pub system_bundle: bool,
}

impl ProxyEnv {
    /// The first generation's environment, with a system bundle.
    pub fn new(proxy_url: String, ca_bundle: PathBuf, no_proxy_extra: Vec<String>) -> ProxyEnv {
        ProxyEnv {
            proxy_url,
            ca_bundle,
            no_proxy_extra,
            no_proxy_default: NoProxyDefault::Reference,
            mode: Mode::default(),
            system_bundle: true,
        }
    }
}

/// The files made next to the bundle for clients that cannot use the bundle
/// or the variables alone. `None`: not written, so not named to children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// The JKS truststore ([`truststore_path`]).
    pub truststore: Option<PathBuf>,
    /// The wgetrc ([`wgetrc_path`]).
    pub wgetrc: Option<PathBuf>,
}

impl ClientFiles {
    /// Both files, at their paths for `bundle`, as if written.
    pub fn expected(bundle: &Path) -> ClientFiles {
        ClientFiles {
            truststore: Some(truststore_path(bundle)),
            wgetrc: Some(wgetrc_path(bundle)),
        }
    }
}

/// `bundle` with its extension replaced by `ext` (`ca-bundle.crt` gives
/// `ca-bundle.jks`), or with `.ext` added if that would be `bundle` itself.
fn sibling(bundle: &Path, ext: &str) -> PathBuf {
    let path = bundle.with_extension(ext);
    if path == bundle {
        let mut name = bundle.as_os_str().to_owned();
        name.push(".");
        name.push(ext);
        PathBuf::from(name)
    } else {
        path
    }
}

/// Where the Java truststore goes: next to the bundle, `.jks`.
pub fn truststore_path(bundle: &Path) -> PathBuf {
    sibling(bundle, "jks")
}

/// Where the wgetrc goes: next to the bundle, `.wgetrc`.
pub fn wgetrc_path(bundle: &Path) -> PathBuf {
    sibling(bundle, "wgetrc")
}

/// Why a file for children could not be made.
#[derive(Debug)]
pub enum EnvError {
    /// The user's wgetrc exists but cannot be read (so ours, which must
    /// copy it, is not written).
    ReadWgetrc { path: PathBuf, error: io::Error },
    /// A file (wgetrc, env file) could not be written.
    Write { path: PathBuf, error: io::Error },
}

impl EnvError {
    /// The kind of the underlying I/O error.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            EnvError::ReadWgetrc { error, .. } | EnvError::Write { error, .. } => error.kind(),
        }
    }
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::ReadWgetrc { path, error } => {
                write!(f, "cannot read your wgetrc {}: {error}", path.display())
            }
            // The callers name the file and what its absence means.
            EnvError::Write { error, .. } => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for EnvError {}

#[cfg(test)]
pub(crate) mod test_util {
    //! What the tests of the child_env modules share.
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::ProxyEnv;

    pub(crate) fn sample(extra: &[&str]) -> ProxyEnv {
        ProxyEnv {
            proxy_url: "http://127.0.0.1:4321".into(),
            ca_bundle: PathBuf::from("/home/u/.ccr/ca-bundle.crt"),
            no_proxy_extra: extra.iter().map(|s| s.to_string()).collect(),
            no_proxy_default: super::NoProxyDefault::Reference,
            mode: super::Mode::default(),
            system_bundle: true,
        }
    }

    pub(crate) fn parent_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    pub(crate) fn no_parent(_: &str) -> Option<String> {
        None
    }

    /// The value `vars` gives `name`, if any.
    pub(crate) fn var_of<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) const REFERENCE_NO_PROXY: &str = "localhost,127.0.0.1,::1,169.254.0.0/16,10.0.0.0/8,\
172.16.0.0/12,192.168.0.0/16,anthropic.com,.anthropic.com,*.anthropic.com,\
registry.npmjs.org,jsr.io,npm.jsr.io,pypi.org,files.pythonhosted.org,index.crates.io,\
proxy.golang.org";

    /// The reference list as Java's http.nonProxyHosts.
    pub(crate) const REFERENCE_JAVA: &str = "localhost|127.0.0.1|[::1]|169.254.*|10.*|172.16.*|172.17.*|\
172.18.*|172.19.*|172.20.*|172.21.*|172.22.*|172.23.*|172.24.*|172.25.*|172.26.*|172.27.*|\
172.28.*|172.29.*|172.30.*|172.31.*|192.168.*|anthropic.com|*.anthropic.com|\
registry.npmjs.org|jsr.io|npm.jsr.io|pypi.org|files.pythonhosted.org|index.crates.io|\
proxy.golang.org";

    pub(crate) const MAVEN: &str = "-Daether.connector.http.useSystemProperties=true \
-Daether.transport.apache.useSystemProperties=true";

    pub(crate) fn java_expected(store: Option<&str>) -> String {
        let mut s = format!(
            "-Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=4321 -Dhttp.proxyHost=127.0.0.1 \
-Dhttp.proxyPort=4321 -Dhttp.nonProxyHosts={REFERENCE_JAVA}"
        );
        if let Some(store) = store {
            s.push_str(&format!(
                " -Djavax.net.ssl.trustStore={store} -Djavax.net.ssl.trustStorePassword=changeit \
-Djavax.net.ssl.trustStoreType=JKS"
            ));
        }
        s
    }
}
