//! The environment children get (PROTOCOL.md section 6, widened so that
//! every common client works with no flags or files of its own): the proxy
//! and CA variables ([`child_vars`]), the files made for clients that read
//! neither ([`prepare_trust`] for Java's truststore, [`write_wgetrc`] for
//! wget), whether a relay higher up already serves the process tree
//! ([`parent_has_relay`]), and the variables as a file of `sh` exports for
//! `ccr-relay serve --env-file` ([`env_file_text`], [`write_env_file`]).
//! CLIENTS.md lists, client by client, what each reads and what is set.
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
//!   overriding whatever the parent had. So that nothing is lost, start-up
//!   ([`prepare_trust`]) reads each file the parent named in one of
//!   [`CA_VARS`], and the `ca_certificate` of the user's wgetrc, and appends
//!   to the merged bundle every certificate of theirs it does not already
//!   hold (compared as parsed certificates, so duplicates are never added).
//!   Files that are the merged bundle itself or the system bundle it was
//!   built from are skipped (their certificates are there already). A file
//!   that cannot be read or holds no certificate is a warning, not a
//!   failure. The Java truststore is made after this merge, so it holds the
//!   user's certificates too.
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

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::ca_bundle;
use crate::truststore;

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
const REFERENCE_PROXY: usize = 2;
const REFERENCE_CA: usize = 4;

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

/// Bound on any user file read at start-up (CA files, wgetrc).
const MAX_USER_FILE: u64 = 16 * 1024 * 1024;

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

// ---------------------------------------------------------------------------
// NO_PROXY

/// The `NO_PROXY` entries: the reference list, then `extra`, then the
/// entries of the parent's `NO_PROXY` and `no_proxy`. Blank entries are
/// skipped, and any already listed (compared without case).
pub fn no_proxy_entries(extra: &[String], parent: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    let mut add = |e: &str| {
        let e = e.trim();
        if !e.is_empty() && !entries.iter().any(|x| x.eq_ignore_ascii_case(e)) {
            entries.push(e.to_string());
        }
    };
    NO_PROXY_LIST.iter().for_each(|e| add(e));
    extra.iter().for_each(|e| add(e));
    for name in NO_PROXY_VARS {
        if let Some(value) = parent(name) {
            value.split(',').for_each(&mut add);
        }
    }
    entries
}

/// The `NO_PROXY` value without parent entries: the reference list, then
/// the extra entries (blank ones and ones already listed are skipped),
/// joined with `,`.
pub fn no_proxy_value(extra: &[String]) -> String {
    no_proxy_entries(extra, |_| None).join(",")
}

// ---------------------------------------------------------------------------
// Java

/// `NO_PROXY` entries as Java's `http.nonProxyHosts` (`|`-separated
/// patterns, `*` allowed only at the start or the end, matched against the
/// URL's host without case):
///
/// - `.example.com` becomes `*.example.com` (a leading dot means
///   subdomains, which is what `*.` says to Java); `*.x` and plain names
///   stay; `*` stays (no proxy at all).
/// - An IPv6 address is bracketed (`::1` becomes `[::1]`): Java matches the
///   host as the URL writes it.
/// - `host:port` loses its port (Java cannot scope by port).
/// - Java has no CIDR. An IPv4 block on an octet boundary becomes a prefix
///   pattern (`10.0.0.0/8` is `10.*`, `192.168.0.0/16` is `192.168.*`); one
///   between boundaries is widened into the prefixes it covers when there
///   are at most 16 (`172.16.0.0/12` is `172.16.*` to `172.31.*`). Such a
///   prefix also matches a host *name* starting with those digits, which no
///   real name does. Other blocks (IPv6, wider expansions) are dropped.
/// - Entries Java cannot hold (white space, `|`, a `*` inside) are dropped.
pub fn java_non_proxy_hosts(entries: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |p: String| {
        if !out.iter().any(|x| x.eq_ignore_ascii_case(&p)) {
            out.push(p);
        }
    };
    for entry in entries {
        let e = entry.trim();
        if e.is_empty() || e.contains(|c: char| c.is_whitespace() || c == '|' || c == '"') {
            continue;
        }
        if let Some((addr, bits)) = e.split_once('/') {
            for p in ipv4_cidr_patterns(addr, bits) {
                add(p);
            }
            continue;
        }
        if e.parse::<Ipv6Addr>().is_ok() {
            add(format!("[{e}]"));
            continue;
        }
        let host = strip_port(e);
        let pattern = match host.strip_prefix('.') {
            Some(rest) => format!("*.{rest}"),
            None => host.to_string(),
        };
        let inner = pattern.trim_matches('*');
        if inner.contains('*') || (inner.trim_matches('.').is_empty() && pattern != "*") {
            continue;
        }
        add(pattern);
    }
    out
}

/// `host:port` without the port; IPv6 forms (`[::1]:80`, `[::1]`) keep
/// their brackets.
fn strip_port(entry: &str) -> &str {
    if entry.starts_with('[') {
        return match entry.find(']') {
            Some(end) => &entry[..=end],
            None => entry,
        };
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => entry,
    }
}

/// Java prefix patterns covering the IPv4 block `addr/bits`; empty when it
/// is not one or would need more than 16 patterns.
fn ipv4_cidr_patterns(addr: &str, bits: &str) -> Vec<String> {
    let (Ok(addr), Ok(bits)) = (addr.parse::<Ipv4Addr>(), bits.parse::<u32>()) else {
        return Vec::new();
    };
    if bits > 32 {
        return Vec::new();
    }
    let whole = bits.div_ceil(8); // octets the patterns fix
    let spread = whole * 8 - bits; // bits widened into separate patterns
    if spread > 4 {
        return Vec::new();
    }
    let base = u32::from(addr) & (u32::MAX.checked_shl(32 - bits).unwrap_or(0));
    (0..1u32 << spread)
        .map(|i| {
            let net = base | i.checked_shl(32 - whole * 8).unwrap_or(0);
            let octets = net.to_be_bytes();
            let fixed: Vec<String> = octets[..whole as usize].iter().map(u8::to_string).collect();
            match whole {
                0 => "*".to_string(),
                4 => fixed.join("."),
                _ => format!("{}.*", fixed.join(".")),
            }
        })
        .collect()
}

/// Quotes one JVM option for `JAVA_TOOL_OPTIONS` if it holds white space
/// (Java 9+ honours the quotes; Java 8 splits such an option regardless).
fn jvm_option(option: String) -> String {
    if !option.contains(char::is_whitespace) {
        option
    } else if option.contains('"') {
        format!("'{option}'")
    } else {
        format!("\"{option}\"")
    }
}

/// The proxy's host and port out of `http://HOST:PORT` (brackets of an
/// IPv6 host removed).
fn proxy_host_port(proxy_url: &str) -> Option<(String, u16)> {
    let authority = proxy_url.strip_prefix("http://")?.trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The JVM options the relay adds: the proxy for `https` and `http`, the
/// `NO_PROXY` entries as `http.nonProxyHosts` (which Java applies to both),
/// and, when it was written, the truststore.
pub fn java_options(proxy_url: &str, no_proxy: &[String], truststore: Option<&Path>) -> String {
    let mut options = Vec::new();
    if let Some((host, port)) = proxy_host_port(proxy_url) {
        for scheme in ["https", "http"] {
            options.push(format!("-D{scheme}.proxyHost={host}"));
            options.push(format!("-D{scheme}.proxyPort={port}"));
        }
        let hosts = java_non_proxy_hosts(no_proxy);
        if !hosts.is_empty() {
            options.push(format!("-Dhttp.nonProxyHosts={}", hosts.join("|")));
        }
    }
    if let Some(store) = truststore {
        options.push(format!("-Djavax.net.ssl.trustStore={}", store.display()));
        options.push(format!(
            "-Djavax.net.ssl.trustStorePassword={}",
            truststore::PASSWORD
        ));
        options.push(format!(
            "-Djavax.net.ssl.trustStoreType={}",
            truststore::STORE_TYPE
        ));
    }
    options
        .into_iter()
        .map(jvm_option)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ours` after the parent's value of an options variable, if it had one.
fn append_options(parent: Option<String>, ours: &str) -> String {
    match parent.as_deref().map(str::trim) {
        Some(p) if !p.is_empty() => format!("{p} {ours}"),
        _ => ours.to_string(),
    }
}

// ---------------------------------------------------------------------------
// The variables

/// Every variable children get, in a stable order: the reference relay's
/// eight (`HTTPS_PROXY`, `https_proxy`, `NO_PROXY`, `no_proxy`,
/// `SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`, `REQUESTS_CA_BUNDLE`,
/// `CURL_CA_BUNDLE`), then `HTTP_PROXY`, `http_proxy`, the rest of
/// [`CA_VARS`], `NODE_USE_ENV_PROXY`, `WGETRC` (only if `files.wgetrc`),
/// `JAVA_TOOL_OPTIONS` and `MAVEN_OPTS`. `parent` reads the relay's own
/// environment, for the values that keep the parent's (`NO_PROXY` entries,
/// the options variables).
pub fn child_vars(
    env: &ProxyEnv,
    files: &ClientFiles,
    parent: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let no_proxy = no_proxy_entries(&env.no_proxy_extra, &parent);
    let no_proxy_text = no_proxy.join(",");
    let bundle = env.ca_bundle.to_string_lossy().into_owned();
    let mut vars: Vec<(String, String)> = Vec::with_capacity(24);
    let mut set = |name: &str, value: &str| vars.push((name.to_string(), value.to_string()));
    for name in &PROXY_VARS[..REFERENCE_PROXY] {
        set(name, &env.proxy_url);
    }
    for name in NO_PROXY_VARS {
        set(name, &no_proxy_text);
    }
    for name in &CA_VARS[..REFERENCE_CA] {
        set(name, &bundle);
    }
    for name in &PROXY_VARS[REFERENCE_PROXY..] {
        set(name, &env.proxy_url);
    }
    for name in &CA_VARS[REFERENCE_CA..] {
        set(name, &bundle);
    }
    set(NODE_USE_ENV_PROXY, "1");
    if let Some(wgetrc) = &files.wgetrc {
        set(WGETRC, &wgetrc.to_string_lossy());
    }
    let java = java_options(&env.proxy_url, &no_proxy, files.truststore.as_deref());
    set(
        JAVA_TOOL_OPTIONS,
        &append_options(parent(JAVA_TOOL_OPTIONS), &java),
    );
    set(
        MAVEN_OPTS,
        &append_options(parent(MAVEN_OPTS), MAVEN_OPTIONS),
    );
    vars
}

/// What children would get with both client files in place, the relay's
/// own environment as the parent (for `doctor`).
pub fn proxy_vars(env: &ProxyEnv) -> Vec<(String, String)> {
    child_vars(env, &ClientFiles::expected(&env.ca_bundle), |name| {
        std::env::var(name).ok()
    })
}

/// Whether the parent looks like it runs under a relay higher up: it carries
/// a proxy (`HTTPS_PROXY` or `https_proxy`) and `SSL_CERT_FILE`.
pub fn parent_has_relay(parent: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| parent(name).is_some_and(|v| !v.is_empty());
    (set("HTTPS_PROXY") || set("https_proxy")) && set("SSL_CERT_FILE")
}

// ---------------------------------------------------------------------------
// Start-up: the user's CA files, the truststore, the wgetrc

/// What [`prepare_trust`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// The truststore, if written (`wgetrc` is left `None`: it needs the
    /// port, see [`write_wgetrc`]).
    pub files: ClientFiles,
    /// The user's CA files read, each with how many of its certificates were
    /// new to the bundle and appended.
    pub user_files: Vec<(PathBuf, usize)>,
    /// One line each, for stderr.
    pub warnings: Vec<String>,
}

/// Reads at most [`MAX_USER_FILE`] bytes of `path`.
fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    fs::File::open(path)?
        .take(MAX_USER_FILE + 1)
        .read_to_end(&mut text)?;
    if text.len() as u64 > MAX_USER_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_USER_FILE} bytes"),
        ));
    }
    Ok(text)
}

/// `~/rest` with the parent's `HOME`, as wget expands it.
fn expand_home(value: &str, parent: &impl Fn(&str) -> Option<String>) -> PathBuf {
    match (value.strip_prefix("~/"), parent("HOME")) {
        (Some(rest), Some(home)) if !home.is_empty() => Path::new(&home).join(rest),
        _ => PathBuf::from(value),
    }
}

/// The user's own wgetrc: the file the parent's `WGETRC` names, else
/// `~/.wgetrc`; never `ours` (the parent may carry a `WGETRC` an earlier
/// relay set).
pub fn user_wgetrc(parent: impl Fn(&str) -> Option<String>, ours: &Path) -> Option<PathBuf> {
    let named = parent(WGETRC)
        .filter(|v| !v.trim().is_empty())
        .map(|v| expand_home(v.trim(), &parent))
        .filter(|p| !same_file(p, ours));
    named.or_else(|| {
        let home = parent("HOME").filter(|h| !h.is_empty())?;
        Some(Path::new(&home).join(".wgetrc"))
    })
}

/// Whether two paths name the same file (or the same path, if neither
/// exists).
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The `ca_certificate` values of wgetrc text (wget ignores `_` and `-` and
/// case in command names; the last one wins, but every one is returned).
fn wgetrc_ca_certificates(text: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (name, value) = line.split_once('=')?;
            let name: String = name
                .trim()
                .chars()
                .filter(|c| *c != '_' && *c != '-')
                .collect::<String>()
                .to_ascii_lowercase();
            (name == "cacertificate" && !value.trim().is_empty()).then(|| value.trim().to_string())
        })
        .collect()
}

/// The user's CA files, each with what named it: every [`CA_VARS`] variable
/// the parent set, then the `ca_certificate` of the user's wgetrc.
pub fn user_ca_files(
    parent: impl Fn(&str) -> Option<String>,
    bundle: &Path,
) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    for name in CA_VARS {
        if let Some(value) = parent(name).filter(|v| !v.trim().is_empty()) {
            files.push((name.to_string(), PathBuf::from(value.trim())));
        }
    }
    if let Some(wgetrc) = user_wgetrc(&parent, &wgetrc_path(bundle))
        && let Ok(text) = read_bounded(&wgetrc)
    {
        for value in wgetrc_ca_certificates(&text) {
            files.push((
                format!("ca_certificate in {}", wgetrc.display()),
                expand_home(&value, &parent),
            ));
        }
    }
    files
}

/// Start-up step 3, after the bundle is written: appends the certificates
/// of the user's own CA files ([`user_ca_files`]) that the bundle lacks,
/// then writes the Java truststore from the result. `system_bundle` is the
/// file the bundle was built from (skipped: already in). Never fails: what
/// goes wrong is a warning, and a truststore that cannot be written is not
/// named to children.
pub fn prepare_trust(
    bundle: &Path,
    system_bundle: Option<&Path>,
    parent: impl Fn(&str) -> Option<String>,
) -> Prepared {
    let mut prepared = Prepared::default();
    let bundle_text = match read_bounded(bundle) {
        Ok(text) => text,
        Err(e) => {
            prepared.warnings.push(format!(
                "cannot read back the CA bundle {} ({e}); Java will not trust the gateway",
                bundle.display()
            ));
            return prepared;
        }
    };
    let mut certs = ca_bundle::extract_certificates(&bundle_text);
    let mut known: HashSet<String> = certs.iter().cloned().collect();
    let mut skip: Vec<PathBuf> = [Some(bundle), system_bundle]
        .into_iter()
        .flatten()
        .map(|p| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
        .collect();
    let mut added = Vec::new();
    for (named_by, path) in user_ca_files(&parent, bundle) {
        let canonical = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if skip.contains(&canonical) {
            continue;
        }
        skip.push(canonical);
        let text = match read_bounded(&path) {
            Ok(text) => text,
            Err(e) => {
                prepared.warnings.push(format!(
                    "{named_by} names {}, which cannot be read ({e}); its certificates are not in the merged bundle",
                    path.display()
                ));
                continue;
            }
        };
        let theirs = ca_bundle::extract_certificates(&text);
        if theirs.is_empty() {
            prepared.warnings.push(format!(
                "{named_by} names {}, which holds no PEM certificate; nothing of it is in the merged bundle",
                path.display()
            ));
            continue;
        }
        let mut new = 0;
        for cert in theirs {
            if known.insert(cert.clone()) {
                added.push(cert.clone());
                certs.push(cert);
                new += 1;
            }
        }
        log::info!(
            "{named_by} names {}: {new} certificate(s) added to the merged bundle",
            path.display()
        );
        prepared.user_files.push((path, new));
    }
    if !added.is_empty()
        && let Err(e) = ca_bundle::write_bundle(bundle, Some(bundle_text.as_slice()), &added)
    {
        prepared.warnings.push(format!(
            "{e}; the certificates of your own CA files are not in it"
        ));
        certs.truncate(certs.len() - added.len());
    }
    let store = truststore_path(bundle);
    match truststore::write_jks(&store, &certs) {
        Ok(_) => prepared.files.truststore = Some(store),
        Err(e) => prepared.warnings.push(format!(
            "cannot write the Java truststore {} ({e}); Java programs will not trust the gateway",
            store.display()
        )),
    }
    prepared
}

/// The generated wgetrc: the user's wgetrc verbatim (`user`: its path and
/// text), then the relay's settings.
pub fn wgetrc_text(user: Option<(&Path, &[u8])>, bundle: &Path, proxy_url: &str) -> Vec<u8> {
    let mut text = Vec::new();
    text.extend_from_slice(
        b"# Written by ccr-relay, which points WGETRC here while it runs. WGETRC\n\
          # replaces ~/.wgetrc, so your own wgetrc is copied first, unchanged;\n\
          # the relay's lines come last and win.\n",
    );
    match user {
        Some((path, content)) => {
            text.extend_from_slice(
                format!("# --- copied from {} ---\n", path.display()).as_bytes(),
            );
            text.extend_from_slice(content);
            if !content.is_empty() && !content.ends_with(b"\n") {
                text.push(b'\n');
            }
        }
        None => text.extend_from_slice(b"# --- no wgetrc of your own to copy ---\n"),
    }
    text.extend_from_slice(
        format!(
            "# --- ccr-relay ---\n\
             ca_certificate = {}\n\
             use_proxy = on\n\
             https_proxy = {proxy_url}\n\
             http_proxy = {proxy_url}\n",
            bundle.display()
        )
        .as_bytes(),
    );
    text
}

/// Writes [`wgetrc_text`] to [`wgetrc_path`] (atomically, mode 0600: a
/// wgetrc may hold passwords) and returns the path. A user wgetrc that does
/// not exist is no error; one that exists but cannot be read is (the file
/// is then not written, and `WGETRC` must not be set).
pub fn write_wgetrc(
    env: &ProxyEnv,
    parent: impl Fn(&str) -> Option<String>,
) -> io::Result<PathBuf> {
    let path = wgetrc_path(&env.ca_bundle);
    let user = match user_wgetrc(&parent, &path) {
        Some(p) => match read_bounded(&p) {
            Ok(text) => Some((p, text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read your wgetrc {}: {e}", p.display()),
                ));
            }
        },
        None => None,
    };
    let text = wgetrc_text(
        user.as_ref().map(|(p, t)| (p.as_path(), t.as_slice())),
        &env.ca_bundle,
        &env.proxy_url,
    );
    crate::atomic_file::write(&path, &text, 0o600)?;
    Ok(path)
}

// ---------------------------------------------------------------------------
// The env file

/// Quotes `value` for `sh`: single quotes, each `'` written as `'\''`.
fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// One `export NAME='value'` line per variable, so `sh` can `.` the text.
/// Values are single-quoted (nothing in them is expanded); names are
/// written as given and must be valid shell names (ours are).
pub fn env_file_text(vars: &[(String, String)]) -> String {
    let mut text = String::new();
    for (name, value) in vars {
        text.push_str("export ");
        text.push_str(name);
        text.push('=');
        text.push_str(&sh_quote(value));
        text.push('\n');
    }
    text
}

/// Writes [`env_file_text`] to `path` atomically: a temporary file (mode
/// 0600) in the same directory, synced, then renamed over `path`. On
/// failure the temporary file is removed and any old file stays as it was.
pub fn write_env_file(path: &Path, vars: &[(String, String)]) -> io::Result<()> {
    crate::atomic_file::write(path, env_file_text(vars).as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::BufRead;
    use std::io::Write;
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::sync::OnceLock;
    use std::thread;
    use std::time::Duration;

    use crate::test_support::TempDir;

    fn sample(extra: &[&str]) -> ProxyEnv {
        ProxyEnv {
            proxy_url: "http://127.0.0.1:4321".into(),
            ca_bundle: PathBuf::from("/home/u/.ccr/ca-bundle.crt"),
            no_proxy_extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn parent_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn no_parent(_: &str) -> Option<String> {
        None
    }

    const REFERENCE_NO_PROXY: &str = "localhost,127.0.0.1,::1,169.254.0.0/16,10.0.0.0/8,\
172.16.0.0/12,192.168.0.0/16,anthropic.com,.anthropic.com,*.anthropic.com,github.com,\
api.github.com,*.github.com,*.githubusercontent.com,registry.npmjs.org,pypi.org,\
files.pythonhosted.org,index.crates.io,proxy.golang.org";

    /// The reference list as Java's http.nonProxyHosts.
    const REFERENCE_JAVA: &str = "localhost|127.0.0.1|[::1]|169.254.*|10.*|172.16.*|172.17.*|\
172.18.*|172.19.*|172.20.*|172.21.*|172.22.*|172.23.*|172.24.*|172.25.*|172.26.*|172.27.*|\
172.28.*|172.29.*|172.30.*|172.31.*|192.168.*|anthropic.com|*.anthropic.com|github.com|\
api.github.com|*.github.com|*.githubusercontent.com|registry.npmjs.org|pypi.org|\
files.pythonhosted.org|index.crates.io|proxy.golang.org";

    const MAVEN: &str = "-Daether.connector.http.useSystemProperties=true \
-Daether.transport.apache.useSystemProperties=true";

    fn java_expected(store: Option<&str>) -> String {
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

    #[test]
    fn every_variable_and_value_in_order() {
        let files = ClientFiles::expected(Path::new("/home/u/.ccr/ca-bundle.crt"));
        let vars = child_vars(&sample(&[]), &files, no_parent);
        let bundle = "/home/u/.ccr/ca-bundle.crt";
        let proxy = "http://127.0.0.1:4321";
        let java = java_expected(Some("/home/u/.ccr/ca-bundle.jks"));
        let expected: Vec<(&str, &str)> = vec![
            // The reference relay's eight, in its order.
            ("HTTPS_PROXY", proxy),
            ("https_proxy", proxy),
            ("NO_PROXY", REFERENCE_NO_PROXY),
            ("no_proxy", REFERENCE_NO_PROXY),
            ("SSL_CERT_FILE", bundle),
            ("NODE_EXTRA_CA_CERTS", bundle),
            ("REQUESTS_CA_BUNDLE", bundle),
            ("CURL_CA_BUNDLE", bundle),
            // Then the rest.
            ("HTTP_PROXY", proxy),
            ("http_proxy", proxy),
            ("GIT_SSL_CAINFO", bundle),
            ("PIP_CERT", bundle),
            ("CARGO_HTTP_CAINFO", bundle),
            ("AWS_CA_BUNDLE", bundle),
            ("DENO_CERT", bundle),
            ("NIX_SSL_CERT_FILE", bundle),
            ("HTTPLIB2_CA_CERTS", bundle),
            ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", bundle),
            ("CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", bundle),
            ("npm_config_cafile", bundle),
            ("NODE_USE_ENV_PROXY", "1"),
            ("WGETRC", "/home/u/.ccr/ca-bundle.wgetrc"),
            ("JAVA_TOOL_OPTIONS", &java),
            ("MAVEN_OPTS", MAVEN),
        ];
        let got: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(got, expected);
        // Never the token or the session id.
        for (name, _) in &vars {
            assert!(
                !name.contains("TOKEN") && !name.contains("SESSION"),
                "{name}"
            );
        }
    }

    #[test]
    fn files_not_written_are_not_named() {
        let vars = child_vars(&sample(&[]), &ClientFiles::default(), no_parent);
        assert!(vars.iter().all(|(n, _)| n != "WGETRC"));
        let java = &vars
            .iter()
            .find(|(n, _)| n == "JAVA_TOOL_OPTIONS")
            .unwrap()
            .1;
        assert_eq!(java, &java_expected(None));
        assert!(!java.contains("trustStore"));
    }

    #[test]
    fn client_file_paths_sit_next_to_the_bundle() {
        let b = Path::new("/h/.ccr/ca-bundle.crt");
        assert_eq!(truststore_path(b), Path::new("/h/.ccr/ca-bundle.jks"));
        assert_eq!(wgetrc_path(b), Path::new("/h/.ccr/ca-bundle.wgetrc"));
        assert_eq!(
            truststore_path(Path::new("/x/bundle")),
            Path::new("/x/bundle.jks")
        );
        assert_eq!(
            truststore_path(Path::new("/x/b.jks")),
            Path::new("/x/b.jks.jks")
        );
        assert_eq!(wgetrc_path(Path::new("rel.pem")), Path::new("rel.wgetrc"));
    }

    #[test]
    fn reference_no_proxy_list() {
        assert_eq!(NO_PROXY_LIST.len(), 19);
        assert_eq!(NO_PROXY_LIST.join(","), REFERENCE_NO_PROXY);
        assert_eq!(no_proxy_value(&[]), REFERENCE_NO_PROXY);
    }

    #[test]
    fn extra_no_proxy_entries_are_appended() {
        let vars = child_vars(
            &sample(&["internal.example", " ", "localhost", " .corp "]),
            &ClientFiles::default(),
            no_parent,
        );
        let no_proxy = &vars[2].1;
        assert_eq!(
            no_proxy,
            &format!("{REFERENCE_NO_PROXY},internal.example,.corp")
        );
        assert_eq!(vars[3].1, *no_proxy);
    }

    #[test]
    fn parent_no_proxy_entries_are_kept_after_the_reference_list() {
        let parent = parent_of(&[
            ("NO_PROXY", "corp.example, .internal ,LOCALHOST,,10.0.0.0/8"),
            ("no_proxy", "x.example:8080,corp.example"),
            ("HTTPS_PROXY", "http://corp-proxy:3128"),
            ("http_proxy", "http://corp-proxy:3128"),
        ]);
        let vars = child_vars(&sample(&["cli.example"]), &ClientFiles::default(), parent);
        let get = |name: &str| vars.iter().find(|(n, _)| n == name).unwrap().1.clone();
        let expected =
            format!("{REFERENCE_NO_PROXY},cli.example,corp.example,.internal,x.example:8080");
        assert_eq!(get("NO_PROXY"), expected);
        assert_eq!(get("no_proxy"), expected);
        // The parent's proxies are overridden: the relay is the way out.
        for name in PROXY_VARS {
            assert_eq!(get(name), "http://127.0.0.1:4321", "{name}");
        }
        // Java gets the same entries in its syntax.
        assert!(
            get("JAVA_TOOL_OPTIONS").ends_with(&format!(
                " -Dhttp.nonProxyHosts={REFERENCE_JAVA}|cli.example|corp.example|*.internal|x.example"
            )),
            "{}",
            get("JAVA_TOOL_OPTIONS")
        );
    }

    #[test]
    fn no_proxy_to_java_translation() {
        let reference: Vec<String> = NO_PROXY_LIST.iter().map(|s| s.to_string()).collect();
        assert_eq!(java_non_proxy_hosts(&reference).join("|"), REFERENCE_JAVA);
        let cases: &[(&str, &[&str])] = &[
            (".example.com", &["*.example.com"]),
            ("*.example.com", &["*.example.com"]),
            ("Example.COM", &["Example.COM"]),
            ("*", &["*"]),
            ("internal*", &["internal*"]),
            ("host.example:8443", &["host.example"]),
            ("10.1.2.3:80", &["10.1.2.3"]),
            ("fd00::1", &["[fd00::1]"]),
            ("[fd00::2]", &["[fd00::2]"]),
            ("[fd00::3]:443", &["[fd00::3]"]),
            ("1.2.3.4/32", &["1.2.3.4"]),
            ("10.20.30.0/24", &["10.20.30.*"]),
            ("10.20.31.7/24", &["10.20.31.*"]), // host bits are ignored
            ("0.0.0.0/0", &["*"]),
            (
                "100.64.0.0/14",
                &["100.64.*", "100.65.*", "100.66.*", "100.67.*"],
            ),
            ("100.64.0.0/10", &[]), // 64 prefixes: too many
            // Cannot be expressed: dropped.
            ("10.0.0.0/9", &[]),
            ("fd00::/8", &[]),
            ("10.0.0.0/33", &[]),
            ("not-an-ip/8", &[]),
            ("a|b", &[]),
            ("a b", &[]),
            ("a*b", &[]),
            ("**", &[]),
            (".", &[]),
            ("*.", &[]),
            ("", &[]),
        ];
        for (entry, expected) in cases {
            assert_eq!(
                java_non_proxy_hosts(&[entry.to_string()]),
                expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{entry:?}"
            );
        }
        // Duplicates after translation are listed once.
        let dup: Vec<String> = [".a.com", "*.a.com", "*.A.com"].map(String::from).to_vec();
        assert_eq!(java_non_proxy_hosts(&dup), ["*.a.com"]);
    }

    #[test]
    fn options_variables_keep_the_parents() {
        let parent = parent_of(&[
            (
                "JAVA_TOOL_OPTIONS",
                "  -Xmx512m -Djavax.net.ssl.trustStore=/corp.jks ",
            ),
            ("MAVEN_OPTS", "-Xss4m"),
        ]);
        let env = ProxyEnv {
            proxy_url: "http://127.0.0.1:4321".into(),
            ca_bundle: PathBuf::from("/home/a user/.ccr/ca-bundle.crt"),
            no_proxy_extra: vec![],
        };
        let vars = child_vars(&env, &ClientFiles::expected(&env.ca_bundle), parent);
        let get = |name: &str| vars.iter().find(|(n, _)| n == name).unwrap().1.clone();
        let java = get("JAVA_TOOL_OPTIONS");
        let ours = java_expected(None);
        assert_eq!(
            java,
            format!(
                "-Xmx512m -Djavax.net.ssl.trustStore=/corp.jks {ours} \
\"-Djavax.net.ssl.trustStore=/home/a user/.ccr/ca-bundle.jks\" \
-Djavax.net.ssl.trustStorePassword=changeit -Djavax.net.ssl.trustStoreType=JKS"
            )
        );
        assert_eq!(get("MAVEN_OPTS"), format!("-Xss4m {MAVEN}"));
        assert_eq!(jvm_option("-Da=\"x y\"".into()), "'-Da=\"x y\"'");
    }

    #[test]
    fn proxy_url_to_java_host_and_port() {
        assert_eq!(
            proxy_host_port("http://127.0.0.1:4321"),
            Some(("127.0.0.1".into(), 4321))
        );
        assert_eq!(
            proxy_host_port("http://[::1]:8080/"),
            Some(("::1".into(), 8080))
        );
        assert_eq!(proxy_host_port("http://127.0.0.1"), None);
        assert_eq!(proxy_host_port("https://127.0.0.1:1"), None);
        // Without a usable URL: no proxy options, the truststore still.
        let opts = java_options("bogus", &[], Some(Path::new("/s.jks")));
        assert_eq!(
            opts,
            "-Djavax.net.ssl.trustStore=/s.jks -Djavax.net.ssl.trustStorePassword=changeit \
-Djavax.net.ssl.trustStoreType=JKS"
        );
    }

    #[test]
    fn a_relay_above_is_recognised() {
        assert!(parent_has_relay(parent_of(&[
            ("HTTPS_PROXY", "http://127.0.0.1:9999"),
            ("SSL_CERT_FILE", "/root/.ccr/ca-bundle.crt"),
        ])));
        assert!(parent_has_relay(parent_of(&[
            ("https_proxy", "http://127.0.0.1:9999"),
            ("SSL_CERT_FILE", "/x.crt"),
        ])));
        assert!(!parent_has_relay(parent_of(&[(
            "https_proxy",
            "http://corp:3128"
        )])));
        assert!(!parent_has_relay(parent_of(&[("SSL_CERT_FILE", "/x.crt")])));
        assert!(!parent_has_relay(parent_of(&[
            ("HTTPS_PROXY", ""),
            ("SSL_CERT_FILE", "/x.crt")
        ])));
    }

    // -- certificates for the trust tests ----------------------------------

    struct TestCert {
        pem: String,
        key: String,
    }

    fn make_cert(dir: &Path, name: &str) -> TestCert {
        let key = dir.join(format!("{name}.key"));
        let cert = dir.join(format!("{name}.crt"));
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-days",
                "1",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl tool is needed for these tests");
        assert!(out.status.success());
        TestCert {
            pem: ca_bundle::extract_certificates(&fs::read(cert).unwrap()).remove(0),
            key: fs::read_to_string(key).unwrap(),
        }
    }

    /// system, gateway, corp, wget: four distinct self-signed certificates.
    fn certs() -> &'static [TestCert; 4] {
        static CERTS: OnceLock<[TestCert; 4]> = OnceLock::new();
        CERTS.get_or_init(|| {
            let dir = TempDir::new("pki");
            ["ccr-system", "ccr-gateway", "ccr-corp", "ccr-wget"].map(|n| make_cert(&dir.0, n))
        })
    }

    fn jks_entry_count(path: &Path) -> u32 {
        let bytes = fs::read(path).unwrap();
        assert_eq!(&bytes[..8], &[0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2]);
        u32::from_be_bytes(bytes[8..12].try_into().unwrap())
    }

    #[test]
    fn user_ca_files_are_merged_into_the_bundle_and_truststore() {
        let [system, gateway, corp, wget] = certs();
        let dir = TempDir::new("merge");
        let home = dir.0.join("home");
        fs::create_dir_all(home.join(".ccr")).unwrap();
        let bundle = home.join(".ccr").join("ca-bundle.crt");
        let system_path = dir.0.join("system.pem");
        fs::write(&system_path, &system.pem).unwrap();
        // What ca_bundle wrote: system, then gateway.
        fs::write(&bundle, format!("{}{}", system.pem, gateway.pem)).unwrap();
        fs::set_permissions(&bundle, fs::Permissions::from_mode(0o644)).unwrap();
        // The user's corporate CA file also repeats the system certificate.
        let corp_path = dir.0.join("corp.pem");
        fs::write(&corp_path, format!("# corp\n{}{}", corp.pem, system.pem)).unwrap();
        fs::write(home.join("wget-ca.pem"), &wget.pem).unwrap();
        fs::write(
            home.join(".wgetrc"),
            "# mine\nCA-Certificate = ~/wget-ca.pem\ntries = 3\n",
        )
        .unwrap();
        let junk = dir.0.join("junk.pem");
        fs::write(&junk, "not a certificate").unwrap();
        let parent = {
            let s = |p: &Path| p.to_string_lossy().into_owned();
            let pairs = vec![
                ("HOME", s(&home)),
                ("SSL_CERT_FILE", s(&system_path)), // the system bundle: skipped
                ("REQUESTS_CA_BUNDLE", s(&corp_path)), // the user's own: merged
                ("CURL_CA_BUNDLE", s(&corp_path)),  // the same file: read once
                ("GIT_SSL_CAINFO", s(&bundle)),     // the bundle itself: skipped
                ("PIP_CERT", s(&dir.0.join("gone.pem"))), // unreadable: warning
                ("AWS_CA_BUNDLE", s(&junk)),        // no certificate: warning
                ("DENO_CERT", "  ".to_string()),    // blank: ignored
            ];
            let map: HashMap<String, String> =
                pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            move |name: &str| map.get(name).cloned()
        };
        let prepared = prepare_trust(&bundle, Some(&system_path), &parent);
        assert_eq!(
            prepared.user_files,
            vec![(corp_path.clone(), 1), (home.join("wget-ca.pem"), 1)]
        );
        assert_eq!(prepared.warnings.len(), 2, "{:?}", prepared.warnings);
        assert!(prepared.warnings[0].starts_with("PIP_CERT names "));
        assert!(prepared.warnings[0].contains("cannot be read"));
        assert!(prepared.warnings[1].starts_with("AWS_CA_BUNDLE names "));
        assert!(prepared.warnings[1].contains("no PEM certificate"));
        // The bundle: what it held, then the user's certificates, once each.
        assert_eq!(
            fs::read_to_string(&bundle).unwrap(),
            format!("{}{}{}{}", system.pem, gateway.pem, corp.pem, wget.pem)
        );
        assert_eq!(
            fs::metadata(&bundle).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let store = home.join(".ccr").join("ca-bundle.jks");
        assert_eq!(prepared.files.truststore.as_deref(), Some(store.as_path()));
        assert_eq!(prepared.files.wgetrc, None);
        assert_eq!(jks_entry_count(&store), 4);

        // Again (a restart): nothing new, nothing duplicated.
        let again = prepare_trust(&bundle, Some(&system_path), &parent);
        assert_eq!(
            again.user_files,
            vec![(corp_path.clone(), 0), (home.join("wget-ca.pem"), 0)]
        );
        assert_eq!(
            ca_bundle::extract_certificates(&fs::read(&bundle).unwrap()).len(),
            4
        );
        assert_eq!(jks_entry_count(&store), 4);

        // No parent CA settings at all: the bundle is untouched, the store made.
        fs::write(&bundle, format!("{}{}", system.pem, gateway.pem)).unwrap();
        let plain = prepare_trust(&bundle, Some(&system_path), no_parent);
        assert_eq!(plain.user_files, vec![]);
        assert_eq!(plain.warnings, Vec::<String>::new());
        assert_eq!(jks_entry_count(&store), 2);

        // An unreadable bundle: no truststore named, one warning.
        let missing = prepare_trust(&dir.0.join("nope.crt"), None, no_parent);
        assert_eq!(missing.files, ClientFiles::default());
        assert_eq!(missing.warnings.len(), 1);
    }

    #[test]
    fn wgetrc_keeps_the_users_content() {
        let dir = TempDir::new("wgetrc");
        let home = dir.0.join("home");
        fs::create_dir_all(home.join(".ccr")).unwrap();
        let env = ProxyEnv {
            proxy_url: "http://127.0.0.1:4321".into(),
            ca_bundle: home.join(".ccr").join("ca-bundle.crt"),
            no_proxy_extra: vec![],
        };
        let ours = wgetrc_path(&env.ca_bundle);
        let tail = format!(
            "# --- ccr-relay ---\nca_certificate = {}\nuse_proxy = on\n\
https_proxy = http://127.0.0.1:4321\nhttp_proxy = http://127.0.0.1:4321\n",
            env.ca_bundle.display()
        );
        let home_s = home.to_string_lossy().into_owned();

        // No wgetrc of the user's.
        let path = write_wgetrc(&env, parent_of(&[("HOME", &home_s)])).unwrap();
        assert_eq!(path, ours);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("# --- no wgetrc of your own to copy ---\n"));
        assert!(text.ends_with(&tail), "{text}");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // ~/.wgetrc is copied verbatim (a missing final newline added).
        let mine = "user = me\npassword = secret\nhttps_proxy = http://corp:1/";
        fs::write(home.join(".wgetrc"), mine).unwrap();
        write_wgetrc(&env, parent_of(&[("HOME", &home_s)])).unwrap();
        let text = fs::read_to_string(&ours).unwrap();
        let copied = format!(
            "# --- copied from {}/.wgetrc ---\n{mine}\n{tail}",
            home.display()
        );
        assert!(text.ends_with(&copied), "{text}");

        // The parent's WGETRC wins over ~/.wgetrc.
        let named = dir.0.join("named.wgetrc");
        fs::write(&named, "timeout = 7\n").unwrap();
        let named_s = named.to_string_lossy().into_owned();
        write_wgetrc(&env, parent_of(&[("HOME", &home_s), ("WGETRC", &named_s)])).unwrap();
        let text = fs::read_to_string(&ours).unwrap();
        assert!(
            text.ends_with(&format!(
                "# --- copied from {named_s} ---\ntimeout = 7\n{tail}"
            )),
            "{text}"
        );

        // A WGETRC naming our own file (left by an earlier relay) is not
        // copied into itself: ~/.wgetrc is used.
        let ours_s = ours.to_string_lossy().into_owned();
        write_wgetrc(&env, parent_of(&[("HOME", &home_s), ("WGETRC", &ours_s)])).unwrap();
        assert!(fs::read_to_string(&ours).unwrap().ends_with(&copied));

        // A WGETRC naming a missing file: ours alone.
        write_wgetrc(
            &env,
            parent_of(&[("HOME", &home_s), ("WGETRC", "/nonexistent/wgetrc")]),
        )
        .unwrap();
        assert!(
            fs::read_to_string(&ours)
                .unwrap()
                .contains("no wgetrc of your own")
        );
    }

    #[test]
    fn wgetrc_ca_certificate_parsing() {
        let text = b"# ca_certificate = /commented.pem\n\
ca_certificate=/a.pem\n  CA-Certificate  =  /b c.pem  \ncacertificate = \nca_directory = /d\n";
        assert_eq!(wgetrc_ca_certificates(text), ["/a.pem", "/b c.pem"]);
    }

    /// Accepts one connection on a fresh port and returns its first line.
    fn first_line_server() -> (u16, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut line = String::new();
            let _ = io::BufReader::new(&stream).read_line(&mut line);
            line
        });
        (port, handle)
    }

    #[test]
    fn real_wget_reads_the_generated_wgetrc() {
        let dir = TempDir::new("wget");
        let home = dir.0.join("home");
        fs::create_dir_all(home.join(".ccr")).unwrap();
        // The user's own wgetrc points at a dead proxy and turns proxies off.
        fs::write(
            home.join(".wgetrc"),
            "use_proxy = off\nhttps_proxy = http://127.0.0.1:1/\n",
        )
        .unwrap();
        let (port, server) = first_line_server();
        let env = ProxyEnv {
            proxy_url: format!("http://127.0.0.1:{port}"),
            ca_bundle: home.join(".ccr").join("ca-bundle.crt"),
            no_proxy_extra: vec![],
        };
        fs::write(&env.ca_bundle, &certs()[0].pem).unwrap();
        let home_s = home.to_string_lossy().into_owned();
        let files = ClientFiles {
            truststore: None,
            wgetrc: Some(write_wgetrc(&env, parent_of(&[("HOME", &home_s)])).unwrap()),
        };
        let vars = child_vars(&env, &files, no_parent);
        let out = Command::new("wget")
            .args([
                "-t",
                "1",
                "-T",
                "5",
                "-q",
                "-O",
                "-",
                "https://wget-test.example/",
            ])
            .env_clear()
            .env("HOME", &home)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("wget is needed for this test");
        assert!(!out.status.success()); // the fake proxy answers nothing
        assert_eq!(
            server.join().unwrap(),
            "CONNECT wget-test.example:443 HTTP/1.1\r\n"
        );
    }

    // -- a real JVM --------------------------------------------------------

    const JAVA_PROBE: &str = r#"
import java.net.*;
import java.io.*;
public class Probe {
    public static void main(String[] args) throws Exception {
        for (String key : new String[] {"https.proxyHost", "https.proxyPort", "http.proxyHost",
                "http.proxyPort", "javax.net.ssl.trustStore", "javax.net.ssl.trustStoreType"}) {
            System.out.println(key + "=" + System.getProperty(key));
        }
        for (int i = 1; i < args.length; i++) {
            java.util.List<Proxy> p = ProxySelector.getDefault().select(new URI(args[i]));
            System.out.println("select " + args[i] + " " + (p.get(0).type() == Proxy.Type.DIRECT ? "DIRECT" : "PROXY"));
        }
        HttpURLConnection c = (HttpURLConnection) new URL(args[0]).openConnection();
        try (InputStream in = c.getInputStream()) {
            System.out.println("body " + new String(in.readAllBytes(), "UTF-8"));
        } catch (Exception e) {
            System.out.println("error " + e);
        }
    }
}
"#;

    /// An https server on 127.0.0.1 with `cert`, answering one request.
    fn tls_server(cert: &TestCert) -> (u16, thread::JoinHandle<()>) {
        let identity =
            native_tls::Identity::from_pkcs8(cert.pem.as_bytes(), cert.key.as_bytes()).unwrap();
        let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let Ok(mut tls) = acceptor.accept(stream) else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = tls.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            );
            let _ = tls.shutdown();
        });
        (port, handle)
    }

    fn run_probe(dir: &Path, vars: &[(String, String)], args: &[String]) -> String {
        let source = dir.join("Probe.java");
        fs::write(&source, JAVA_PROBE).unwrap();
        let out = Command::new("java")
            .arg(&source)
            .args(args)
            .env_remove("JAVA_TOOL_OPTIONS")
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("java (a JDK 11+) is needed for this test: install openjdk-17-jdk-headless");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    #[test]
    fn a_real_jvm_takes_the_proxy_and_trusts_the_generated_store() {
        let [system, gateway, corp, _] = certs();
        let dir = TempDir::new("java");
        let ccr = dir.0.join("a dir").join(".ccr"); // a space: the option is quoted
        fs::create_dir_all(&ccr).unwrap();
        let bundle = ccr.join("ca-bundle.crt");
        fs::write(&bundle, format!("{}{}", system.pem, gateway.pem)).unwrap();
        // The server's certificate is the user's corporate CA: trusted only
        // if the merge rule put it in the bundle and the store.
        let corp_path = dir.0.join("corp.pem");
        fs::write(&corp_path, &corp.pem).unwrap();
        let corp_s = corp_path.to_string_lossy().into_owned();
        let parent = parent_of(&[
            ("SSL_CERT_FILE", corp_s.as_str()),
            ("JAVA_TOOL_OPTIONS", "-Dccr.test.parent=kept"),
            ("NO_PROXY", ".corp.example"),
        ]);
        let prepared = prepare_trust(&bundle, None, &parent);
        assert_eq!(prepared.warnings, Vec::<String>::new());
        let env = ProxyEnv {
            proxy_url: "http://127.0.0.1:4321".into(),
            ca_bundle: bundle.clone(),
            no_proxy_extra: vec![],
        };
        let vars = child_vars(&env, &prepared.files, &parent);
        let (port, server) = tls_server(corp);
        let selects = [
            "https://example.com/",
            "http://example.com/",
            "https://api.anthropic.com/",
            "https://anthropic.com/",
            "https://x.corp.example/",
            "https://10.1.2.3/",
            "https://172.20.0.1/",
            "https://172.32.0.1/",
            "https://169.254.169.254/",
            "https://raw.githubusercontent.com/",
        ];
        let mut args = vec![format!("https://127.0.0.1:{port}/")];
        args.extend(selects.iter().map(|s| s.to_string()));
        let out = run_probe(&dir.0, &vars, &args);
        server.join().unwrap();
        let store = ccr.join("ca-bundle.jks");
        for line in [
            "https.proxyHost=127.0.0.1".to_string(),
            "https.proxyPort=4321".to_string(),
            "http.proxyHost=127.0.0.1".to_string(),
            "http.proxyPort=4321".to_string(),
            format!("javax.net.ssl.trustStore={}", store.display()),
            "javax.net.ssl.trustStoreType=JKS".to_string(),
            "select https://example.com/ PROXY".to_string(),
            "select http://example.com/ PROXY".to_string(),
            "select https://api.anthropic.com/ DIRECT".to_string(),
            "select https://anthropic.com/ DIRECT".to_string(),
            "select https://x.corp.example/ DIRECT".to_string(),
            "select https://10.1.2.3/ DIRECT".to_string(),
            "select https://172.20.0.1/ DIRECT".to_string(),
            "select https://172.32.0.1/ PROXY".to_string(),
            "select https://169.254.169.254/ DIRECT".to_string(),
            "select https://raw.githubusercontent.com/ DIRECT".to_string(),
            "body hello".to_string(),
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "{line:?} missing from:\n{out}"
            );
        }

        // Without the relay's options the JVM's own roots refuse the server:
        // the store is what made it trusted.
        let (port, server) = tls_server(corp);
        let out = run_probe(&dir.0, &[], &[format!("https://127.0.0.1:{port}/")]);
        server.join().unwrap();
        assert!(
            out.contains("error javax.net.ssl.SSLHandshakeException"),
            "{out}"
        );
    }

    // -- the env file ------------------------------------------------------

    #[test]
    fn env_file_quoting() {
        let vars = vec![
            ("A".to_string(), "plain".to_string()),
            ("B".to_string(), "it's".to_string()),
            ("C".to_string(), String::new()),
        ];
        assert_eq!(
            env_file_text(&vars),
            "export A='plain'\nexport B='it'\\''s'\nexport C=''\n"
        );
    }

    #[test]
    fn env_file_survives_sh() {
        let dir = TempDir::new("sh");
        let path = dir.0.join("relay.env");
        let nasty = "a 'quoted' $HOME `id` \\n \"dq\"\nsecond line\t*";
        let mut vars = child_vars(
            &sample(&["x.example"]),
            &ClientFiles::expected(Path::new("/home/u/.ccr/ca-bundle.crt")),
            parent_of(&[("JAVA_TOOL_OPTIONS", "-Da='b c'")]),
        );
        vars.push(("NASTY".to_string(), nasty.to_string()));
        vars.push(("TRAILING".to_string(), "ends with '".to_string()));
        write_env_file(&path, &vars).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for (name, value) in &vars {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(". \"$1\"; printf %s \"${name}\""))
                .arg("sh")
                .arg(&path)
                .env_clear()
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8(out.stdout).unwrap(), *value, "{name}");
        }
        // Exported, not just set: a grandchild sees them too.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(". \"$1\"; sh -c 'printf %s \"$HTTPS_PROXY\"'")
            .arg("sh")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "http://127.0.0.1:4321"
        );
    }

    #[test]
    fn env_file_write_is_atomic() {
        let dir = TempDir::new("atomic");
        let path = dir.0.join("relay.env");
        fs::write(&path, "old\n").unwrap();
        write_env_file(&path, &[("X".into(), "1".into())]).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "export X='1'\n");
        let names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("relay.env")]);

        // A "directory" that is a regular file: the write fails, nothing left.
        let blocker = dir.0.join("not-a-dir");
        fs::write(&blocker, "x").unwrap();
        let err = write_env_file(&blocker.join("relay.env"), &[]).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&path).unwrap(), "export X='1'\n");

        // Renaming over a directory fails: the temp file is cleaned up.
        let target_dir = dir.0.join("target");
        fs::create_dir(&target_dir).unwrap();
        assert!(write_env_file(&target_dir, &[]).is_err());
        let mut names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["not-a-dir", "relay.env", "target"]);
    }
}
