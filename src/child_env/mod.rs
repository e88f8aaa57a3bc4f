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

pub mod env_file;
pub mod java;
pub mod no_proxy;
pub mod vars;
pub mod wget;

pub use env_file::{env_file_text, write_env_file};
pub use java::{java_non_proxy_hosts, java_options};
pub use no_proxy::{no_proxy_entries, no_proxy_value};
pub use vars::{child_vars, parent_has_relay, proxy_vars};
pub use wget::{user_wgetrc, wgetrc_text, write_wgetrc};

/// The reference relay's `NO_PROXY` list, in its order. A domain appears in
/// up to three forms because curl, Go, Python and Node each match `NO_PROXY`
/// differently.
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
    "github.com",
    "api.github.com",
    "*.github.com",
    "*.githubusercontent.com",
    "registry.npmjs.org",
    "pypi.org",
    "files.pythonhosted.org",
    "index.crates.io",
    "proxy.golang.org",
];

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
];
/// How many of [`PROXY_VARS`] and [`CA_VARS`] the reference relay exports.
pub(crate) const REFERENCE_PROXY: usize = 2;
pub(crate) const REFERENCE_CA: usize = 4;

/// Makes Node 24+'s built-in `fetch` and `http` honour the proxy variables.
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
    /// Entries appended, in order, after [`NO_PROXY_LIST`].
    pub no_proxy_extra: Vec<String>,
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

    pub(crate) const REFERENCE_NO_PROXY: &str = "localhost,127.0.0.1,::1,169.254.0.0/16,10.0.0.0/8,\
172.16.0.0/12,192.168.0.0/16,anthropic.com,.anthropic.com,*.anthropic.com,github.com,\
api.github.com,*.github.com,*.githubusercontent.com,registry.npmjs.org,pypi.org,\
files.pythonhosted.org,index.crates.io,proxy.golang.org";

    /// The reference list as Java's http.nonProxyHosts.
    pub(crate) const REFERENCE_JAVA: &str = "localhost|127.0.0.1|[::1]|169.254.*|10.*|172.16.*|172.17.*|\
172.18.*|172.19.*|172.20.*|172.21.*|172.22.*|172.23.*|172.24.*|172.25.*|172.26.*|172.27.*|\
172.28.*|172.29.*|172.30.*|172.31.*|192.168.*|anthropic.com|*.anthropic.com|github.com|\
api.github.com|*.github.com|*.githubusercontent.com|registry.npmjs.org|pypi.org|\
files.pythonhosted.org|index.crates.io|proxy.golang.org";

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
