//! The variables themselves: every variable children get, in a stable
//! order ([`child_vars`]), and whether a relay higher up already serves the
//! process tree ([`parent_has_relay`]).

use super::java::{append_options, java_options};
use super::no_proxy::no_proxy_entries;
use super::{
    CA_VARS, ClientFiles, JAVA_TOOL_OPTIONS, MAVEN_OPTIONS, MAVEN_OPTS, NO_PROXY_VARS,
    NODE_USE_ENV_PROXY, PROXY_VARS, ProxyEnv, REFERENCE_CA, REFERENCE_PROXY, WGETRC,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    use crate::child_env::java::jvm_option;
    use crate::child_env::test_util::*;
    use crate::child_env::{truststore_path, wgetrc_path};

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
