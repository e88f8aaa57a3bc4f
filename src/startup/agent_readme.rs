//! The README written next to the CA bundle at start-up (`~/.ccr/README.md`
//! by default), for whoever works inside the session, person or coding
//! agent, when a request fails: what the proxy is, how to diagnose, what
//! to do about certificate errors and tools that ignore the proxy
//! variables, what the proxy's own answers mean, and what cannot work.
//! [`render`] fills the text's template (`agent_readme.md.in`) from what
//! start-up really set (the children's variables, the files it wrote), so
//! each variable and path it names is the one the session's processes have; [`write`] puts it in
//! place atomically.

use std::io;
use std::path::{Path, PathBuf};

use crate::env::ClientFiles;
use crate::gateway::Generation;

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

/// The README's text, with `{{name}}` placeholders that [`render`] fills.
const TEMPLATE: &str = include_str!("agent_readme.md.in");

/// How a placeholder opens and closes in [`TEMPLATE`].
const OPEN: &str = "{{";
const CLOSE: &str = "}}";

/// The README's text.
pub fn render(facts: &Facts) -> String {
    let var = |name: &str| var_of(facts, name);
    let bundle = facts.bundle.display().to_string();
    let https_proxy = var("HTTPS_PROXY").unwrap_or("(not set)");
    let http_proxy = var("HTTP_PROXY").unwrap_or("(not set)");
    let no_proxy_paragraph = match var("NO_PROXY") {
        Some(no_proxy) => format!(
            "Hosts on this list are reached directly, not through the proxy:\n\n    \
             `NO_PROXY={no_proxy}`\n"
        ),
        None => String::new(),
    };
    fill(
        TEMPLATE,
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("generation", facts.generation.title()),
            ("https_proxy", https_proxy),
            ("http_proxy", http_proxy),
            ("bundle", &bundle),
            ("no_proxy_paragraph", &no_proxy_paragraph),
            (
                "certificate_settings",
                &certificate_settings(facts, &bundle),
            ),
            (
                "node_use_env_proxy",
                var("NODE_USE_ENV_PROXY").unwrap_or("1"),
            ),
        ],
    )
}

/// The value children got for the variable `name`, if any.
fn var_of<'a>(facts: &Facts<'a>, name: &str) -> Option<&'a str> {
    facts
        .child_vars
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// One line per tool: the variable the relay set for it, or the config
/// key that does the same; then wget's and Java's files.
fn certificate_settings(facts: &Facts, bundle: &str) -> String {
    let var = |name: &str| var_of(facts, name);
    let mut lines = Vec::new();
    for (tool, name, key) in CA_TOOLS {
        let key = key.replace("{bundle}", bundle);
        let set = if name.is_empty() {
            None
        } else {
            var(name).map(|v| format!("`{name}={v}`"))
        };
        match (set, key.is_empty()) {
            (Some(set), true) => lines.push(format!("- {tool}: {set}")),
            (Some(set), false) => lines.push(format!("- {tool}: {set}; or {key}")),
            (None, false) => lines.push(format!("- {tool}: not set by the relay; use {key}")),
            (None, true) => {}
        }
    }
    if let Some(wgetrc) = &facts.files.wgetrc
        && let Some(v) = var("WGETRC")
    {
        lines.push(format!(
            "- wget: `WGETRC={v}` (`ca_certificate` and the proxy; it starts with a \
             copy of your own wgetrc, {})",
            wgetrc.display()
        ));
    }
    lines.push(match &facts.files.truststore {
        Some(store) => format!(
            "- Java (keytool, Maven, Gradle, sbt): the truststore `{store}`, password \
             `{password}`, type JKS, which `JAVA_TOOL_OPTIONS` names \
             (`-Djavax.net.ssl.trustStore={store}` \
             `-Djavax.net.ssl.trustStorePassword={password}`). A JVM that does not read \
             `JAVA_TOOL_OPTIONS` takes the same `-D` options on its command line; \
             Gradle also reads them as `systemProp.javax.net.ssl.trustStore` and \
             `systemProp.javax.net.ssl.trustStorePassword` in `gradle.properties`.",
            store = store.display(),
            password = facts.truststore_password,
        ),
        None => "- Java: no truststore was written this time (see the relay's warning); \
                 import the bundle with `keytool -importcert`."
            .to_string(),
    });
    lines.join("\n")
}

/// `template` with each `{{name}}` replaced by its value from `values`, in
/// one pass (a value is never searched for placeholders, so a path holding
/// `{{` stays as it is). A line holding nothing but a placeholder whose
/// value is empty is left out whole, so an absent paragraph leaves no blank
/// line. An unknown name is left in place.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let value = |name: &str| values.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let mut out = String::with_capacity(template.len() * 2);
    for line in template.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let alone = body.strip_prefix(OPEN).and_then(|b| b.strip_suffix(CLOSE));
        if alone.and_then(value) == Some("") {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find(OPEN) {
            let after = &rest[start + OPEN.len()..];
            let found = after
                .find(CLOSE)
                .and_then(|end| value(&after[..end]).map(|v| (end, v)));
            match found {
                Some((end, v)) => {
                    out.push_str(&rest[..start]);
                    out.push_str(v);
                    rest = &after[end + CLOSE.len()..];
                }
                None => {
                    out.push_str(&rest[..start + OPEN.len()]);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
    }
    out
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
            "`blockedHosts`",
            "`allowlist: host1,host2,...`",
            "ccr-relay status",
            "`tls_handshake_refused`",
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

    #[test]
    fn every_placeholder_is_filled() {
        let env = sample(&["a.test"]);
        let files = ClientFiles::expected(&env.ca_bundle);
        let vars = child_vars(&env, &files, no_parent);
        assert!(vars.iter().any(|(n, _)| n == "NO_PROXY"));
        assert!(vars.iter().any(|(n, _)| n == "WGETRC"));
        assert!(TEMPLATE.contains(OPEN), "the template has placeholders");
        let text = render(&facts_for(&vars, &files, &env.ca_bundle));
        assert!(!text.contains(OPEN), "{text}");
        assert!(!text.contains(CLOSE), "{text}");
        assert!(
            text.contains("`NO_PROXY="),
            "the optional paragraph is there"
        );
    }

    #[test]
    fn fill_is_one_pass_and_drops_empty_lines() {
        let template = "a {{x}} b\n{{gone}}\n{{y}}\nend {{unknown}}\n";
        let text = fill(template, &[("x", "{{y}}"), ("gone", ""), ("y", "Y")]);
        assert_eq!(text, "a {{y}} b\nY\nend {{unknown}}\n");
    }

    fn path_of_relative() -> PathBuf {
        path(Path::new("ca-bundle.crt"))
    }
}
