//! The variables themselves: every variable children get, in a stable
//! order ([`child_vars`]), and whether a relay higher up already serves the
//! process tree ([`parent_has_relay`]).

use super::java::{append_options, java_options};
use super::no_proxy::no_proxy_entries;
use super::{
    AGENT_CA_ALWAYS, AGENT_TLS_SWITCHES, CA_VARS, ClientFiles, JAVA_TOOL_OPTIONS, MAVEN_OPTIONS,
    MAVEN_OPTS, NO_PROXY_VARS, NODE_USE_ENV_PROXY, PROXY_VARS, ProxyEnv, REFERENCE_CA,
    REFERENCE_PROXY, WGETRC,
};
use crate::env::credentials;
use crate::gateway::Generation;

/// Every variable children get, in a stable order: the reference relay's
/// eight (`HTTPS_PROXY`, `https_proxy`, `NO_PROXY`, `no_proxy`,
/// `SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`, `REQUESTS_CA_BUNDLE`,
/// `CURL_CA_BUNDLE`), then `HTTP_PROXY`, `http_proxy`, the rest of
/// [`CA_VARS`] (the agent proxy names the bundle in the variables that
/// replace a client's roots only when a system bundle was found, and then
/// adds [`AGENT_TLS_SWITCHES`] the parent did not set),
/// `NODE_USE_ENV_PROXY`, `WGETRC` (only if `files.wgetrc`),
/// `JAVA_TOOL_OPTIONS`, `MAVEN_OPTS`, and last the credential placeholders
/// and git settings of [`credentials::credential_vars`]. `parent` reads the
/// relay's own environment, for the values that keep the parent's
/// (`NO_PROXY` entries, the options variables, credentials).
pub fn child_vars(
    env: &ProxyEnv,
    files: &ClientFiles,
    parent: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let no_proxy = no_proxy_entries(env.mode, env.no_proxy_default, &env.no_proxy_extra, &parent);
    let no_proxy_text = no_proxy.join(",");
    let bundle = env.ca_bundle.to_string_lossy().into_owned();
    let agent = env.mode.generation == Generation::AgentProxy;
    let mut vars: Vec<(String, String)> = Vec::with_capacity(40);
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
        // Bundler adds its file to the roots, so it is safe without a
        // system bundle too.
        if !agent
            || env.system_bundle
            || AGENT_CA_ALWAYS.contains(name)
            || *name == BUNDLE_SSL_CA_CERT
        {
            set(name, &bundle);
        }
    }
    if agent && env.system_bundle {
        for (name, value) in AGENT_TLS_SWITCHES {
            if parent(name).is_none() {
                set(name, value);
            }
        }
    }
    set(NODE_USE_ENV_PROXY, "1");
    if let Some(wgetrc) = &files.wgetrc {
        set(WGETRC, &wgetrc.to_string_lossy());
    }
    // A parent that chose a truststore keeps it: ours would override it
    // (the JVM applies the last -D), and theirs may trust what we do not.
    let parent_java = parent(JAVA_TOOL_OPTIONS);
    let own_store = parent_java
        .as_deref()
        .is_some_and(|v| v.contains(PARENT_TRUSTSTORE));
    let store = if own_store {
        None
    } else {
        files.truststore.as_deref()
    };
    let java = java_options(&env.proxy_url, &no_proxy, store);
    set(JAVA_TOOL_OPTIONS, &append_options(parent_java, &java));
    set(
        MAVEN_OPTS,
        &append_options(parent(MAVEN_OPTS), MAVEN_OPTIONS),
    );
    vars.extend(credentials::credential_vars(&parent, env.mode.standalone));
    vars
}

/// What in a parent's `JAVA_TOOL_OPTIONS` names a truststore of its own.
const PARENT_TRUSTSTORE: &str = "-Djavax.net.ssl.trustStore=";
/// Ruby bundler's CA file variable.
const BUNDLE_SSL_CA_CERT: &str = "BUNDLE_SSL_CA_CERT";

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    use crate::env::java::jvm_option;
    use crate::env::test_util::*;
    use crate::env::{truststore_path, wgetrc_path};

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
            ("BUNDLE_SSL_CA_CERT", bundle),
            ("HEX_CACERTS_PATH", bundle),
            ("NODE_USE_ENV_PROXY", "1"),
            ("WGETRC", "/home/u/.ccr/ca-bundle.wgetrc"),
            ("JAVA_TOOL_OPTIONS", &java),
            ("MAVEN_OPTS", MAVEN),
        ];
        let mut expected: Vec<(&str, &str)> = expected;
        expected.extend(CREDENTIALS);
        let got: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(got, expected);
        // Never the token, its sources or the session id (an inherited
        // session id passes through; the relay never adds one).
        let removed = crate::env::removed_vars();
        for (name, _) in &vars {
            assert!(
                !removed.contains(&name.as_str()) && !name.contains("SESSION"),
                "{name}"
            );
        }
    }

    /// What an empty parent gets from `credentials` (section 6b).
    const CREDENTIALS: [(&str, &str); 15] = [
        ("GH_TOKEN", "proxy-injected"),
        ("GITHUB_TOKEN", "proxy-injected"),
        ("AWS_ACCESS_KEY_ID", "proxy-injected"),
        ("AWS_SECRET_ACCESS_KEY", "proxy-injected"),
        ("CLOUDSDK_AUTH_ACCESS_TOKEN", "proxy-injected"),
        ("GIT_TERMINAL_PROMPT", "0"),
        ("GIT_ASKPASS", ""),
        ("GCM_INTERACTIVE", "never"),
        ("GIT_CONFIG_COUNT", "3"),
        ("GIT_CONFIG_KEY_0", "credential.interactive"),
        ("GIT_CONFIG_VALUE_0", "false"),
        ("GIT_CONFIG_KEY_1", "url.https://github.com/.insteadOf"),
        ("GIT_CONFIG_VALUE_1", "git@github.com:"),
        ("GIT_CONFIG_KEY_2", "url.https://github.com/.insteadOf"),
        ("GIT_CONFIG_VALUE_2", "ssh://git@github.com/"),
    ];

    fn agent_env(standalone: bool, selective: bool, system_bundle: bool) -> ProxyEnv {
        let mut env = sample(&[]);
        env.mode = crate::env::Mode {
            generation: Generation::AgentProxy,
            standalone,
            selective,
        };
        env.system_bundle = system_bundle;
        env
    }

    #[test]
    fn agent_proxy_variables_with_a_system_bundle() {
        let files = ClientFiles::expected(Path::new("/home/u/.ccr/ca-bundle.crt"));
        let vars = child_vars(&agent_env(false, false, true), &files, no_parent);
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        let get = |name: &str| var_of(&vars, name);
        let bundle = "/home/u/.ccr/ca-bundle.crt";
        for name in [
            "SSL_CERT_FILE",
            "NODE_EXTRA_CA_CERTS",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
            "HTTPLIB2_CA_CERTS",
            "AWS_CA_BUNDLE",
            "DENO_CERT",
            "CARGO_HTTP_CAINFO",
            "PIP_CERT",
            "GIT_SSL_CAINFO",
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
            "NIX_SSL_CERT_FILE",
            "HEX_CACERTS_PATH",
            "BUNDLE_SSL_CA_CERT",
        ] {
            assert_eq!(get(name), Some(bundle), "{name}");
        }
        assert_eq!(get("UV_NATIVE_TLS"), Some("true"));
        assert_eq!(get("DENO_TLS_CA_STORE"), Some("system,mozilla"));
        let no_proxy = get("NO_PROXY").unwrap();
        assert!(no_proxy.starts_with("localhost,127.0.0.1,::1,127.0.0.0/8,0.0.0.0/8,::,"));
        assert!(no_proxy.ends_with(",.svc.cluster.local,*.svc.cluster.local"));
        assert_eq!(get("no_proxy"), Some(no_proxy));
        // Java follows the agent proxy's list.
        let java = get("JAVA_TOOL_OPTIONS").unwrap();
        assert!(
            java.contains("|100.64.*|100.65.*|")
                && java.contains("|host.docker.internal|")
                && java.contains("|*.svc.cluster.local"),
            "{java}"
        );
        // Placeholders and the git rewrite, as in the first generation.
        assert_eq!(
            names[names.len() - CREDENTIALS.len()..],
            CREDENTIALS.map(|c| c.0)
        );
        assert_eq!(get("GH_TOKEN"), Some("proxy-injected"));
    }

    #[test]
    fn agent_proxy_without_a_system_bundle_names_it_only_where_it_adds() {
        let vars = child_vars(
            &agent_env(false, false, false),
            &ClientFiles::default(),
            no_parent,
        );
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        for name in [
            "SSL_CERT_FILE",
            "NODE_EXTRA_CA_CERTS",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
            "HTTPLIB2_CA_CERTS",
            "BUNDLE_SSL_CA_CERT",
        ] {
            assert!(names.contains(&name), "{name}");
        }
        for name in [
            "AWS_CA_BUNDLE",
            "DENO_CERT",
            "CARGO_HTTP_CAINFO",
            "PIP_CERT",
            "GIT_SSL_CAINFO",
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
            "NIX_SSL_CERT_FILE",
            "HEX_CACERTS_PATH",
            "UV_NATIVE_TLS",
            "DENO_TLS_CA_STORE",
        ] {
            assert!(!names.contains(&name), "{name}");
        }
        // The first generation keeps naming the bundle everywhere.
        let mut first = sample(&[]);
        first.system_bundle = false;
        let vars = child_vars(&first, &ClientFiles::default(), no_parent);
        assert!(vars.iter().any(|(n, _)| n == "AWS_CA_BUNDLE"));
        assert!(vars.iter().all(|(n, _)| n != "UV_NATIVE_TLS"));
    }

    #[test]
    fn agent_proxy_switches_and_credentials_keep_the_parents() {
        let parent = parent_of(&[
            ("UV_NATIVE_TLS", "false"),
            ("GH_TOKEN", "ghp_mine"),
            ("GIT_CONFIG_COUNT", "1"),
        ]);
        let vars = child_vars(
            &agent_env(true, false, true),
            &ClientFiles::default(),
            parent,
        );
        let get = |name: &str| var_of(&vars, name);
        assert_eq!(get("UV_NATIVE_TLS"), None, "the parent's stays");
        assert_eq!(get("DENO_TLS_CA_STORE"), Some("system,mozilla"));
        assert_eq!(get("GH_TOKEN"), None);
        assert_eq!(get("GITHUB_TOKEN"), None);
        assert_eq!(get("AWS_ACCESS_KEY_ID"), Some("proxy-injected"));
        assert_eq!(
            get("GIT_CONFIG_COUNT"),
            None,
            "the user's count is never clobbered"
        );
        // Standalone: the private ranges go through the gateway.
        assert!(!get("NO_PROXY").unwrap().contains("10.0.0.0/8"));
        // Standalone git keeps SSH remotes as they are.
        let vars = child_vars(
            &agent_env(true, false, true),
            &ClientFiles::default(),
            no_parent,
        );
        assert!(vars.iter().all(|(_, v)| v != "git@github.com:"));
        assert!(
            vars.iter()
                .any(|(n, v)| n == "GIT_CONFIG_COUNT" && v == "1")
        );
    }

    #[test]
    fn selective_mode_list_and_java() {
        let vars = child_vars(
            &agent_env(false, true, true),
            &ClientFiles::default(),
            no_parent,
        );
        let get = |name: &str| var_of(&vars, name);
        assert_eq!(
            get("NO_PROXY"),
            Some(
                "127.0.0.1,localhost,::1,127.0.0.0/8,0.0.0.0/8,169.254.0.0/16,host.docker.internal,\
10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,.svc.cluster.local,*.svc.cluster.local"
            )
        );
        let java = get("JAVA_TOOL_OPTIONS").unwrap();
        assert!(!java.contains("anthropic"), "{java}");
        assert!(
            java.contains("-Dhttp.nonProxyHosts=127.0.0.1|localhost|[::1]|127.*|0.*|169.254.*|"),
            "{java}"
        );
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
    fn options_variables_keep_the_parents() {
        let parent = parent_of(&[
            ("JAVA_TOOL_OPTIONS", "  -Xmx512m -Dfoo=bar "),
            ("MAVEN_OPTS", "-Xss4m"),
        ]);
        let env = ProxyEnv {
            proxy_url: "http://127.0.0.1:4321".into(),
            ca_bundle: PathBuf::from("/home/a user/.ccr/ca-bundle.crt"),
            no_proxy_extra: vec![],
            no_proxy_default: Default::default(),
            mode: crate::env::Mode::default(),
            system_bundle: true,
        };
        let vars = child_vars(&env, &ClientFiles::expected(&env.ca_bundle), parent);
        let get = |name: &str| vars.iter().find(|(n, _)| n == name).unwrap().1.clone();
        let java = get("JAVA_TOOL_OPTIONS");
        let ours = java_expected(None);
        assert_eq!(
            java,
            format!(
                "-Xmx512m -Dfoo=bar {ours} \
\"-Djavax.net.ssl.trustStore=/home/a user/.ccr/ca-bundle.jks\" \
-Djavax.net.ssl.trustStorePassword=changeit -Djavax.net.ssl.trustStoreType=JKS"
            )
        );
        assert_eq!(get("MAVEN_OPTS"), format!("-Xss4m {MAVEN}"));
        // A parent that names its own truststore keeps it: ours is not added.
        let parent = parent_of(&[(
            "JAVA_TOOL_OPTIONS",
            "-Xmx512m -Djavax.net.ssl.trustStore=/corp.jks",
        )]);
        let vars = child_vars(&env, &ClientFiles::expected(&env.ca_bundle), parent);
        let java = &vars
            .iter()
            .find(|(n, _)| n == "JAVA_TOOL_OPTIONS")
            .unwrap()
            .1;
        assert_eq!(
            java,
            &format!("-Xmx512m -Djavax.net.ssl.trustStore=/corp.jks {ours}")
        );
        assert_eq!(jvm_option("-Da=\"x y\"".into()), "'-Da=\"x y\"'");
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
}
