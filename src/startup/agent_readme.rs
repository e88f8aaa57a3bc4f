//! The README written next to the CA bundle at start-up (`~/.ccr/README.md`
//! by default), for whoever works inside the session, person or coding
//! agent, when a request fails: what the proxy is, how to diagnose, what
//! to do about certificate errors and tools that ignore the proxy
//! variables, what the proxy's own answers mean, and what cannot work.
//! [`render`] builds the text from what start-up really set (the
//! children's variables, the files it wrote), so each variable and path it
//! names is the one the session's processes have; [`write`] puts it in
//! place atomically.

use std::io;
use std::path::{Path, PathBuf};

use crate::env::ClientFiles;
use crate::startup::gates::Generation;

/// The README's file name, in the bundle's directory.
pub const FILE_NAME: &str = "README.md";

/// What the README describes: the session's set-up as start-up made it.
pub struct Facts<'a> {
    pub generation: Generation,
    /// The merged CA bundle.
    pub bundle: &'a Path,
    /// The Java truststore and wgetrc, where written.
    pub files: &'a ClientFiles,
    /// The truststore's password.
    pub truststore_password: &'a str,
    /// Every variable children get, as [`crate::env::child_vars`]
    /// made them.
    pub child_vars: &'a [(String, String)],
}

/// Where the README goes: the bundle's directory.
pub fn path(bundle: &Path) -> PathBuf {
    match bundle.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(FILE_NAME),
        _ => PathBuf::from(FILE_NAME),
    }
}

/// Renders and writes the README next to the bundle (atomically, 0644);
/// returns its path.
pub fn write(facts: &Facts) -> io::Result<PathBuf> {
    let path = path(facts.bundle);
    crate::sys::atomic_file::write(&path, render(facts).as_bytes(), 0o644)?;
    Ok(path)
}

/// A tool's certificate setting: the tool, the variable the relay sets for
/// it, and the config-file key that does the same where the tool ignores
/// the environment (`{bundle}` stands for the bundle's path).
const CA_TOOLS: &[(&str, &str, &str)] = &[
    (
        "OpenSSL, Python `ssl`, httpx, Go, Ruby, PHP, uv",
        "SSL_CERT_FILE",
        "",
    ),
    ("Node.js (read at start-up only)", "NODE_EXTRA_CA_CERTS", ""),
    (
        "npm",
        "npm_config_cafile",
        "`cafile = {bundle}` in `.npmrc` (the variable outranks every `.npmrc`)",
    ),
    (
        "Python requests",
        "REQUESTS_CA_BUNDLE",
        "`requests.get(url, verify=\"{bundle}\")` in code that passes its own",
    ),
    (
        "curl",
        "CURL_CA_BUNDLE",
        "`cacert = \"{bundle}\"` in `~/.curlrc`",
    ),
    (
        "git",
        "GIT_SSL_CAINFO",
        "`git config --global http.sslCAInfo {bundle}`",
    ),
    (
        "pip",
        "PIP_CERT",
        "`cert = {bundle}` under `[global]` in `pip.conf`",
    ),
    (
        "cargo",
        "CARGO_HTTP_CAINFO",
        "`cainfo = \"{bundle}\"` under `[http]` in `~/.cargo/config.toml`",
    ),
    (
        "AWS CLI, boto3",
        "AWS_CA_BUNDLE",
        "`ca_bundle = {bundle}` in `~/.aws/config`",
    ),
    (
        "gcloud",
        "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
        "`gcloud config set core/custom_ca_certs_file {bundle}`",
    ),
    (
        "Ruby bundler",
        "BUNDLE_SSL_CA_CERT",
        "`bundle config set ssl_ca_cert {bundle}`",
    ),
    ("Deno", "DENO_CERT", "`--cert {bundle}`"),
    ("httplib2", "HTTPLIB2_CA_CERTS", ""),
    ("gRPC (C core)", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", ""),
    ("Nix", "NIX_SSL_CERT_FILE", ""),
    ("Hex (Elixir)", "HEX_CACERTS_PATH", ""),
    (
        "yarn 2+",
        "",
        "`httpsCaFilePath: {bundle}` and `httpsProxy: <HTTPS_PROXY>` in `.yarnrc.yml`",
    ),
];

/// The README's text.
pub fn render(facts: &Facts) -> String {
    let var = |name: &str| {
        facts
            .child_vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let bundle = facts.bundle.display().to_string();
    let proxy = var("HTTPS_PROXY").unwrap_or("(not set)");
    let mut t = String::with_capacity(8 * 1024);
    let mut line = |s: &str| {
        t.push_str(s);
        t.push('\n');
    };
    line("# This session's network proxy");
    line("");
    line(&format!(
        "Written by ccr-relay {} when it started ({}). Every variable and path \
         below is what this session's processes were given.",
        env!("CARGO_PKG_VERSION"),
        facts.generation.title()
    ));
    line("");
    line("## What it is");
    line("");
    line(&format!(
        "Outbound HTTP(S) from this session goes through a local proxy, ccr-relay, \
         at `HTTPS_PROXY={proxy}` (plain `http://` too: `HTTP_PROXY={}`). It carries \
         each connection over a WebSocket to the session's security gateway, which \
         re-terminates TLS: the certificate a client sees for an HTTPS origin is issued \
         by the gateway's CA. That CA, after the system's roots, is in the bundle \
         `{bundle}`, which the variables below name.",
        var("HTTP_PROXY").unwrap_or("(not set)")
    ));
    line("");
    if let Some(no_proxy) = var("NO_PROXY") {
        line("Hosts on this list are reached directly, not through the proxy:");
        line("");
        line(&format!("    `NO_PROXY={no_proxy}`"));
        line("");
    }
    line("## Diagnosing a failure");
    line("");
    line("The proxy's state and its recent failures, with the reason for each:");
    line("");
    line("    curl -sS \"$HTTPS_PROXY/__agentproxy/status\"");
    line("");
    line(
        "`curl -sv https://HOST/ -o /dev/null` shows the proxy's answer to the \
         CONNECT and the certificate the gateway presented.",
    );
    line("");
    line("## What the proxy's answers mean");
    line("");
    line(
        "- `403`: the gateway's policy refuses this host or request. Report it; \
         do not route around it.",
    );
    line(
        "- `405`: the proxy was sent a method it does not carry (it takes \
         `CONNECT` and plain `http://` requests).",
    );
    line(
        "- `407`: the gateway did not accept the session's id or token (the \
         session may have ended). Nothing inside the session can fix it: report it.",
    );
    line(
        "- `502`, `504`: the gateway could not be reached, or did not answer in \
         time; the status page above says why.",
    );
    line("");
    line("## Certificate errors");
    line("");
    line(&format!(
        "A certificate error means the tool does not trust the gateway's CA. \
         Point it at `{bundle}`; never turn verification off. The relay set:"
    ));
    line("");
    for (tool, name, key) in CA_TOOLS {
        let key = key.replace("{bundle}", &bundle);
        let set = if name.is_empty() {
            None
        } else {
            var(name).map(|v| format!("`{name}={v}`"))
        };
        match (set, key.is_empty()) {
            (Some(set), true) => line(&format!("- {tool}: {set}")),
            (Some(set), false) => line(&format!("- {tool}: {set}; or {key}")),
            (None, false) => line(&format!("- {tool}: not set by the relay; use {key}")),
            (None, true) => {}
        }
    }
    if let Some(wgetrc) = &facts.files.wgetrc
        && let Some(v) = var("WGETRC")
    {
        line(&format!(
            "- wget: `WGETRC={v}` (`ca_certificate` and the proxy; it starts with a \
             copy of your own wgetrc, {})",
            wgetrc.display()
        ));
    }
    match &facts.files.truststore {
        Some(store) => {
            line(&format!(
                "- Java (keytool, Maven, Gradle, sbt): the truststore `{}`, password \
                 `{}`, type JKS, which `JAVA_TOOL_OPTIONS` names \
                 (`-Djavax.net.ssl.trustStore={}` \
                 `-Djavax.net.ssl.trustStorePassword={}`). A JVM that does not read \
                 `JAVA_TOOL_OPTIONS` takes the same `-D` options on its command line; \
                 Gradle also reads them as `systemProp.javax.net.ssl.trustStore` and \
                 `systemProp.javax.net.ssl.trustStorePassword` in `gradle.properties`.",
                store.display(),
                facts.truststore_password,
                store.display(),
                facts.truststore_password
            ));
        }
        None => line(
            "- Java: no truststore was written this time (see the relay's warning); \
             import the bundle with `keytool -importcert`.",
        ),
    }
    line("");
    line("## Tools that ignore the proxy variables");
    line("");
    line(&format!(
        "- Node's built-in `fetch` and `http`: honour the variables only with \
         `NODE_USE_ENV_PROXY={}` (set) on Node 22.21 or later; on older Node, use \
         undici's `EnvHttpProxyAgent` with `setGlobalDispatcher`.",
        var("NODE_USE_ENV_PROXY").unwrap_or("1")
    ));
    line("- Python aiohttp: `aiohttp.ClientSession(trust_env=True)`.");
    line(&format!(
        "- Ruby bundler reads only `HTTP_PROXY` (set: `HTTP_PROXY={}`), not `HTTPS_PROXY`.",
        var("HTTP_PROXY").unwrap_or("(not set)")
    ));
    line(&format!(
        "- Docker containers cannot reach the relay: it listens on this machine's \
         loopback ({proxy}). Fetch what a build needs outside the container, or \
         run it with `--network host` and pass the proxy variables and the bundle in."
    ));
    line("");
    line("## What is not supported");
    line("");
    line(
        "- Raw TCP and protocols other than HTTP and HTTPS (ssh, `git://`, \
         database and mail protocols).",
    );
    line(
        "- Client certificates to origins (mutual TLS): the gateway ends the \
         client's TLS, so the origin never sees them.",
    );
    line("- Clients that pin an origin's certificate: they reject the gateway's.");
    line("");
    line("## Never");
    line("");
    line(
        "- Never disable TLS verification (`curl -k`, `requests.get(url, verify=False)`, \
         `NODE_TLS_REJECT_UNAUTHORIZED`, `GIT_SSL_NO_VERIFY`): name the bundle instead.",
    );
    line(
        "- Never unset `HTTPS_PROXY` or point it elsewhere: the proxy is the \
         session's way out, and going around it goes around its policy.",
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::test_util::{no_parent, sample};
    use crate::env::{child_vars, truststore_path};

    fn facts_for<'a>(
        vars: &'a [(String, String)],
        files: &'a ClientFiles,
        bundle: &'a Path,
    ) -> Facts<'a> {
        Facts {
            generation: Generation::UpstreamProxy,
            bundle,
            files,
            truststore_password: crate::trust::jks::PASSWORD,
            child_vars: vars,
        }
    }

    /// Every `` `NAME=value` `` the text holds.
    fn named_vars(text: &str) -> Vec<(String, String)> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .filter_map(|s| s.split_once('='))
            .filter(|(n, _)| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_variable_named_is_the_one_set() {
        let env = sample(&["a.test"]);
        let files = ClientFiles::expected(&env.ca_bundle);
        let vars = child_vars(&env, &files, no_parent);
        let text = render(&facts_for(&vars, &files, &env.ca_bundle));
        let named = named_vars(&text);
        assert!(named.len() >= 15, "{named:?}");
        for (name, value) in &named {
            let set = vars.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            assert_eq!(set, Some(value), "{name} in the README");
        }
        for name in [
            "HTTPS_PROXY",
            "NO_PROXY",
            "SSL_CERT_FILE",
            "npm_config_cafile",
        ] {
            assert!(named.iter().any(|(n, _)| n == name), "{name} missing");
        }
        let store = truststore_path(&env.ca_bundle);
        assert!(text.contains(&format!("`{}`, password `changeit`", store.display())));
        assert!(text.contains("curl -sS \"$HTTPS_PROXY/__agentproxy/status\""));
        for needle in [
            "`403`",
            "`405`",
            "`407`",
            "NODE_USE_ENV_PROXY=1",
            "trust_env=True",
        ] {
            assert!(text.contains(needle), "{needle}");
        }
    }

    #[test]
    fn variables_not_set_are_not_claimed() {
        let env = sample(&[]);
        let files = ClientFiles::default();
        let vars: Vec<(String, String)> = child_vars(&env, &files, no_parent)
            .into_iter()
            .filter(|(n, _)| n != "PIP_CERT" && n != "SSL_CERT_FILE")
            .collect();
        let text = render(&facts_for(&vars, &files, &env.ca_bundle));
        assert!(!text.contains("PIP_CERT="), "{text}");
        assert!(!text.contains("`SSL_CERT_FILE"), "{text}");
        assert!(
            text.contains("pip: not set by the relay; use `cert = /home/u/.ccr/ca-bundle.crt`")
        );
        assert!(text.contains("no truststore was written"));
        assert!(!text.contains("WGETRC"));
    }

    #[test]
    fn written_next_to_the_bundle() {
        let dir = crate::test_support::TempDir::new("agent-readme");
        let dir = &dir.0;
        let bundle = dir.join("ca-bundle.crt");
        let env = sample(&[]);
        let files = ClientFiles::default();
        let vars = child_vars(&env, &files, no_parent);
        let path = write(&facts_for(&vars, &files, &bundle)).unwrap();
        assert_eq!(path, dir.join("README.md"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# This session's network proxy\n"));
        assert_eq!(path_of_relative(), PathBuf::from("README.md"));
    }

    fn path_of_relative() -> PathBuf {
        path(Path::new("ca-bundle.crt"))
    }
}
