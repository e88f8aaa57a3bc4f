//! What a child of `ccr-relay run` gets (docs/PROTOCOL.md section 6) and what
//! the merged CA bundle holds (section 2, step 3): the proxy and CA
//! variables with the reference values, the `NO_PROXY` list in order, the
//! token nowhere; a parent's proxy passed through untouched when the relay
//! stays off or a relay higher up already runs; the bundle made of the
//! system bundle then the gateway's certificate and nothing else, 0644.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ccr_integration::pki::TestCa;
use ccr_integration::relay::BlindPki;
use ccr_integration::session_env::{
    ENABLED, Reply, SYSTEM_CA, Session, TinyServer, http_answer, relay_var_names, relay_vars_in,
};
use ccr_integration::{DevGateway, GatewayOptions, ServerKind, bin_path, temp_dir};
use openssl::x509::X509;

/// docs/PROTOCOL.md section 6, copied here rather than taken from the relay, so
/// a change on either side shows.
const REFERENCE_NO_PROXY: &[&str] = &[
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

const CA_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
];

const TOKEN: &str = "tok-lifecycle-7c1d94e2b8a6f053";
const SESSION: &str = "sess-lifecycle-31f0";

fn gateway() -> DevGateway {
    DevGateway::start(GatewayOptions {
        token: TOKEN.into(),
        session_id: SESSION.into(),
        ..GatewayOptions::default()
    })
}

/// The DER of every certificate in `pem`.
fn ders(pem: &[u8]) -> Vec<Vec<u8>> {
    X509::stack_from_pem(pem)
        .unwrap_or_else(|e| panic!("not a PEM certificate list: {e}"))
        .iter()
        .map(|c| c.to_der().unwrap())
        .collect()
}

/// Checks the proxy and CA variables of a started relay's child and
/// returns the proxy URL.
fn assert_reference_vars(env: &BTreeMap<String, String>, bundle: &Path, no_proxy: &str) -> String {
    let proxy = env
        .get("HTTPS_PROXY")
        .unwrap_or_else(|| panic!("no HTTPS_PROXY in the child: {env:#?}"))
        .clone();
    let port = proxy
        .strip_prefix("http://127.0.0.1:")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("HTTPS_PROXY={proxy:?} is not http://127.0.0.1:PORT"));
    assert_ne!(port, 0, "HTTPS_PROXY names port 0");
    assert_eq!(env.get("https_proxy"), Some(&proxy), "https_proxy");
    assert_eq!(
        env.get("NO_PROXY").map(String::as_str),
        Some(no_proxy),
        "NO_PROXY"
    );
    assert_eq!(
        env.get("no_proxy").map(String::as_str),
        Some(no_proxy),
        "no_proxy"
    );
    assert!(bundle.is_absolute(), "{}", bundle.display());
    for name in CA_VARS {
        assert_eq!(
            env.get(*name).map(String::as_str),
            Some(bundle.to_str().unwrap()),
            "{name} must name the merged bundle (absolute)"
        );
    }
    proxy
}

#[test]
fn happy_path_gives_the_child_the_reference_variables_and_never_the_token() {
    let gw = gateway();
    let s = Session::for_gateway("env", &gw)
        .env("PARENT_MARKER", "kept")
        .env("LANG", "C.UTF-8");
    let out = s.run(&["sh", "-c", "env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(
        out.stderr,
        "",
        "a start-up that worked printed something: {}",
        out.describe()
    );
    let env = out.env();
    assert_reference_vars(&env, &s.bundle, &REFERENCE_NO_PROXY.join(","));
    // The parent's variables pass through; the relay adds only its own.
    assert_eq!(env.get("PARENT_MARKER").map(String::as_str), Some("kept"));
    assert_eq!(env.get("LANG").map(String::as_str), Some("C.UTF-8"));
    let allowed = relay_var_names();
    let parent = [
        "PATH",
        "HOME",
        "PWD",
        "SHLVL",
        "_",
        "PARENT_MARKER",
        "LANG",
        "CCR_RELAY_INSTALL_ROOT",
    ];
    let foreign: Vec<&String> = env
        .keys()
        .filter(|k| {
            !allowed.contains(&k.as_str())
                && !parent.contains(&k.as_str())
                && ![
                    "CLAUDE_CODE_REMOTE",
                    "CCR_UPSTREAM_PROXY_ENABLED",
                    "CLAUDE_CODE_REMOTE_SESSION_ID",
                ]
                .contains(&k.as_str())
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "variables neither the parent's nor the relay's: {foreign:?}"
    );
    let token_in: Vec<String> = env
        .iter()
        .filter(|(k, v)| k.contains(TOKEN) || v.contains(TOKEN))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(
        token_in.is_empty(),
        "the token is in the child's {token_in:?}"
    );
    assert!(
        !out.stdout.contains(TOKEN),
        "the token is in the child's env"
    );
    assert!(
        !s.token_file.exists(),
        "the token file is still there after start-up"
    );
    assert!(s.bundle.is_file(), "no bundle at {}", s.bundle.display());
}

/// Section 6b and the removed variables on a real child: placeholders where
/// the parent has no credential, the parent's own kept, git's settings, the
/// variables children must never have absent, `~/.aws/config` created, and
/// the login-shell script present while the child runs and gone after.
#[test]
fn child_gets_placeholders_git_settings_and_never_the_removed_variables() {
    let gw = gateway();
    let s = Session::for_gateway("env-cred", &gw)
        .env("GH_TOKEN", "parent-own-token")
        .env("AGENT_PROXY_AUTH_TOKEN", "must-not-pass")
        .env("CCR_AGENT_PROXY_RELAY_MODE", "selective")
        .env("CCR_AGENT_PROXY_INCLUDE_HOSTS", "*.example")
        .env("CLAUDE_SESSION_INGRESS_TOKEN_FILE", "/nonexistent/x");
    let profile_d = s.dir.join("root/etc/profile.d");
    std::fs::create_dir_all(&profile_d).unwrap();
    let script = profile_d.join("ccr-relay-ca.sh");
    let check = format!(
        "env; test -f '{}' && echo PROFILE_PRESENT",
        script.display()
    );
    let out = s.run(&["sh", "-c", &check]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let env = out.env();
    let get = |n: &str| env.get(n).map(String::as_str);
    assert_eq!(get("GH_TOKEN"), Some("parent-own-token"));
    assert_eq!(
        get("GITHUB_TOKEN"),
        None,
        "the parent has GH_TOKEN: no placeholder"
    );
    assert_eq!(get("AWS_ACCESS_KEY_ID"), Some("proxy-injected"));
    assert_eq!(get("AWS_SECRET_ACCESS_KEY"), Some("proxy-injected"));
    assert_eq!(get("CLOUDSDK_AUTH_ACCESS_TOKEN"), Some("proxy-injected"));
    assert_eq!(get("GIT_TERMINAL_PROMPT"), Some("0"));
    assert_eq!(get("GIT_ASKPASS"), Some(""));
    assert_eq!(get("GCM_INTERACTIVE"), Some("never"));
    assert_eq!(get("GIT_CONFIG_COUNT"), Some("3"));
    assert_eq!(
        get("GIT_CONFIG_KEY_1"),
        Some("url.https://github.com/.insteadOf")
    );
    assert_eq!(get("GIT_CONFIG_VALUE_1"), Some("git@github.com:"));
    assert_eq!(get("GIT_CONFIG_VALUE_2"), Some("ssh://git@github.com/"));
    for name in [
        "AGENT_PROXY_AUTH_TOKEN",
        "CCR_AGENT_PROXY_RELAY_MODE",
        "CCR_AGENT_PROXY_INCLUDE_HOSTS",
        "CLAUDE_SESSION_INGRESS_TOKEN_FILE",
    ] {
        assert_eq!(get(name), None, "{name} reached the child");
    }
    // The session id is no secret: inherited, it passes through unchanged.
    assert_eq!(
        get("CLAUDE_CODE_REMOTE_SESSION_ID"),
        Some(gw.session_id.as_str()),
        "the session id did not reach the child unchanged"
    );
    for name in [
        "GIT_SSL_CAINFO",
        "AWS_CA_BUNDLE",
        "BUNDLE_SSL_CA_CERT",
        "HEX_CACERTS_PATH",
        "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
        "HTTPLIB2_CA_CERTS",
    ] {
        assert_eq!(get(name), Some(s.bundle.to_str().unwrap()), "{name}");
    }
    assert!(
        out.stdout.contains("PROFILE_PRESENT"),
        "no login-shell script while running"
    );
    assert!(
        !script.exists(),
        "the login-shell script outlived the relay"
    );
    let aws = std::fs::read_to_string(s.home.join(".aws/config")).expect("~/.aws/config");
    assert!(aws.contains("payload_signing_enabled = false"), "{aws}");

    // With SSH of its own, GitHub remotes are not rewritten.
    let s = Session::for_gateway("env-ssh", &gw).env("SSH_AUTH_SOCK", "/tmp/agent.sock");
    let out = s.run(&["sh", "-c", "env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let env = out.env();
    assert_eq!(env.get("GIT_CONFIG_COUNT").map(String::as_str), Some("1"));
    assert!(!env.values().any(|v| v == "git@github.com:"));
    assert_eq!(
        env.get("GH_TOKEN").map(String::as_str),
        Some("proxy-injected")
    );
}

#[test]
fn relative_ca_bundle_is_handed_to_children_absolute() {
    let gw = gateway();
    let s = Session::for_gateway("env-rel", &gw);
    let cwd = s.dir.path().to_path_buf();
    let s = s.cwd(cwd).bundle_at("rel/ca-bundle.crt");
    let out = s.run(&["sh", "-c", "cd / && env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let abs = s.dir.join("rel").join("ca-bundle.crt");
    assert_reference_vars(&out.env(), &abs, &REFERENCE_NO_PROXY.join(","));
    assert!(abs.is_file(), "no bundle at {}", abs.display());
}

#[test]
fn bundle_defaults_to_home_ccr() {
    let gw = gateway();
    let s = Session::for_gateway("env-default", &gw).default_bundle();
    let out = s.run(&["sh", "-c", "env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let expected = s.home.join(".ccr").join("ca-bundle.crt");
    assert_reference_vars(&out.env(), &expected, &REFERENCE_NO_PROXY.join(","));
    assert!(expected.is_file());
}

#[test]
fn no_proxy_option_appends_to_the_reference_list() {
    let gw = gateway();
    let s = Session::for_gateway("env-noproxy", &gw)
        .arg("--no-proxy")
        .arg("a.test,b.test");
    let out = s.run(&["sh", "-c", "env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let want = format!("{},a.test,b.test", REFERENCE_NO_PROXY.join(","));
    assert_reference_vars(&out.env(), &s.bundle, &want);
}

#[test]
fn disabled_relay_passes_the_parents_proxy_through_unchanged() {
    let gw = gateway();
    let s = Session::for_gateway("env-pass", &gw)
        .env(ENABLED, "0")
        .env("HTTPS_PROXY", "http://127.0.0.1:1234")
        .env("SSL_CERT_FILE", "/x");
    let out = s.run(&["sh", "-c", "env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let env = out.env();
    assert_eq!(
        env.get("HTTPS_PROXY").map(String::as_str),
        Some("http://127.0.0.1:1234")
    );
    assert_eq!(env.get("SSL_CERT_FILE").map(String::as_str), Some("/x"));
    let mut added = relay_vars_in(&env);
    added.retain(|v| v != "HTTPS_PROXY=http://127.0.0.1:1234" && v != "SSL_CERT_FILE=/x");
    assert_eq!(
        added,
        Vec::<String>::new(),
        "the disabled relay added these"
    );
    assert!(out.stderr_lines().len() <= 1, "{}", out.describe());
    assert!(
        s.token_file_intact(),
        "the disabled relay touched the token"
    );
    assert!(!s.bundle.exists(), "the disabled relay wrote a bundle");
}

#[test]
fn nested_relay_is_silent_and_the_child_sees_the_outer_proxy() {
    let gw = gateway();
    let s = Session::for_gateway("env-nested", &gw);
    let inner_bundle = s.dir.join("inner").join("ca-bundle.crt");
    // The inner relay gets the same options (same token file, which the
    // outer one has unlinked by then) but its own bundle path, so anything
    // it wrote would show.
    let script = format!(
        "echo OUTER_PROXY=$HTTPS_PROXY; echo OUTER_CA=$SSL_CERT_FILE; echo INNER-BEGIN; \
         exec '{relay}' run --base-url '{base}' --token-file '{token}' --ca-bundle '{inner}' \
         --system-ca '{SYSTEM_CA}' -- env",
        relay = bin_path("ccr-relay").display(),
        base = gw.base_url(),
        token = s.token_file.display(),
        inner = inner_bundle.display(),
    );
    let out = s.run(&["sh", "-c", &script]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(
        out.stderr,
        "",
        "the inner relay (or the outer) printed: {}",
        out.describe()
    );
    let (outer, inner) = out
        .stdout
        .split_once("INNER-BEGIN\n")
        .unwrap_or_else(|| panic!("{}", out.describe()));
    let outer = ccr_integration::session_env::parse_env(outer);
    let inner = ccr_integration::session_env::parse_env(inner);
    let outer_proxy = outer
        .get("OUTER_PROXY")
        .filter(|p| p.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("the outer relay did not start: {}", out.describe()));
    assert_eq!(inner.get("HTTPS_PROXY"), Some(outer_proxy));
    assert_eq!(inner.get("https_proxy"), Some(outer_proxy));
    assert_eq!(inner.get("SSL_CERT_FILE"), outer.get("OUTER_CA"));
    assert_eq!(
        inner.get("SSL_CERT_FILE").map(String::as_str),
        Some(s.bundle.to_str().unwrap())
    );
    assert!(
        !inner_bundle.exists() && !inner_bundle.parent().unwrap().exists(),
        "the inner relay wrote a bundle"
    );
}

#[test]
fn bundle_is_the_system_bundle_then_the_gateway_ca_mode_0644() {
    let gw = gateway();
    let s = Session::for_gateway("bundle", &gw);
    let out = s.run(&["true"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let system = std::fs::read(SYSTEM_CA).unwrap();
    let bundle = std::fs::read(&s.bundle).unwrap();
    let gateway_ca = std::fs::read(&gw.ca_pem_path).unwrap();
    let mut want = ders(&system);
    assert!(want.len() > 10, "the machine's bundle looks empty");
    want.extend(ders(&gateway_ca));
    assert_eq!(
        ders(&bundle),
        want,
        "the bundle is not the system certificates followed by the gateway CA"
    );
    assert!(
        bundle.starts_with(&system),
        "the system bundle is not copied as it is at the start"
    );
    assert_only_certificates(&bundle[system.len()..]);
    let mode = std::fs::metadata(&s.bundle).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644, "bundle mode {mode:o}");
}

/// `pem` holds nothing but `CERTIFICATE` blocks and white space.
fn assert_only_certificates(pem: &[u8]) {
    let text = std::str::from_utf8(pem).expect("the bundle is text");
    let mut rest = text;
    let mut outside = String::new();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        outside.push_str(&rest[..start]);
        let end = rest[start..]
            .find("-----END CERTIFICATE-----")
            .expect("an unterminated block")
            + start
            + "-----END CERTIFICATE-----".len();
        rest = &rest[end..];
    }
    outside.push_str(rest);
    assert!(
        outside.trim().is_empty(),
        "text outside the certificates in the bundle: {outside:?}"
    );
}

#[test]
fn junk_around_the_gateway_certificate_never_reaches_the_bundle() {
    let dir = temp_dir("lifecycle-junk-ca");
    let ca = TestCa::new(&dir.join("ca")).unwrap();
    let cert = String::from_utf8(ca.cert_pem()).unwrap();
    let key = std::fs::read_to_string(ca.key_path()).unwrap();
    assert!(key.contains("PRIVATE KEY"), "{key}");
    let body = format!(
        "<html><body><h1>junk-before</h1>\n{{\"json\":\"junk-json\"}}\n{cert}\
         trailing-junk here\n{key}</body></html>\n"
    );
    let server = TinyServer::start(Reply::Bytes(http_answer(
        "200 OK",
        "text/html",
        body.as_bytes(),
    )));
    let s = Session::new("junk", &server.base_url());
    let out = s.run(&["true"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.stderr, "", "{}", out.describe());
    let system = std::fs::read(SYSTEM_CA).unwrap();
    let bundle =
        std::fs::read(&s.bundle).unwrap_or_else(|e| panic!("no bundle ({e}): {}", out.describe()));
    let text = String::from_utf8_lossy(&bundle);
    for junk in [
        "PRIVATE KEY",
        "<html",
        "junk-before",
        "junk-json",
        "trailing-junk",
        key.lines().nth(1).unwrap(),
    ] {
        assert!(!text.contains(junk), "{junk:?} reached the bundle");
    }
    assert!(bundle.starts_with(&system));
    assert_only_certificates(&bundle[system.len()..]);
    assert_eq!(ders(&bundle[system.len()..]), ders(cert.as_bytes()));
}

#[test]
fn missing_system_bundle_warns_and_the_bundle_holds_the_gateway_ca_alone() {
    let gw = gateway();
    let missing = "/nonexistent/ccr-lifecycle/ca-certificates.crt";
    let s = Session::for_gateway("nosystem", &gw).system_ca(missing);
    let out = s.run(&["sh", "-c", "env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "want one warning: {}", out.describe());
    assert!(lines[0].contains(missing), "{:?}", lines[0]);
    assert!(
        out.var("HTTPS_PROXY").is_some(),
        "a missing system bundle must not stop the proxy: {}",
        out.describe()
    );
    let bundle = std::fs::read(&s.bundle).unwrap();
    assert_only_certificates(&bundle);
    assert_eq!(
        ders(&bundle),
        ders(&std::fs::read(&gw.ca_pem_path).unwrap())
    );
}

/// The agent proxy's `NO_PROXY` list (normal mode), written out from the
/// contract rather than read from the code it checks.
const AGENT_NO_PROXY: &str = "localhost,127.0.0.1,::1,127.0.0.0/8,0.0.0.0/8,::,169.254.0.0/16,\
api.anthropic.com,api-staging.anthropic.com,api-pr-preview.anthropic.com,mcp-proxy.anthropic.com,\
mcp-proxy-staging.anthropic.com,registry.npmjs.org,jsr.io,npm.jsr.io,pypi.org,files.pythonhosted.org,\
index.crates.io,proxy.golang.org,host.docker.internal,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,\
100.64.0.0/10,.svc.cluster.local,*.svc.cluster.local";

#[test]
fn agent_proxy_child_gets_its_generations_variables() {
    let pki = BlindPki::new();
    let gw = DevGateway::start(pki.gateway_options(false).agent_proxy(ServerKind::Late));
    // An ingress token file that is not there (yet): the token file's
    // token is used, and the variable naming the file still never reaches
    // the child.
    let ingress = temp_dir("env-agent");
    let ingress_file = ingress.join("ingress");
    let s = Session::for_gateway("env-agent", &gw)
        .agent_proxy()
        .env(
            "CLAUDE_SESSION_INGRESS_TOKEN_FILE",
            ingress_file.to_str().unwrap(),
        )
        .env("CLAUDE_CODE_SESSION_ACCESS_TOKEN", "must-not-pass-either")
        .env("DENO_TLS_CA_STORE", "mozilla");
    let out = s.run(&["sh", "-c", "env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let env = out.env();
    let get = |n: &str| env.get(n).map(String::as_str);
    assert!(
        get("HTTPS_PROXY").is_some_and(|v| v.starts_with("http://127.0.0.1:")),
        "{}",
        out.describe()
    );
    assert_eq!(get("NO_PROXY"), Some(AGENT_NO_PROXY));
    assert_eq!(get("no_proxy"), Some(AGENT_NO_PROXY));
    let bundle = s.bundle.to_str().unwrap();
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
    assert_eq!(
        get("DENO_TLS_CA_STORE"),
        Some("mozilla"),
        "the parent's own value is kept"
    );
    assert_eq!(get("GITHUB_TOKEN"), Some("proxy-injected"));
    for name in [
        "CLAUDE_SESSION_INGRESS_TOKEN_FILE",
        "CLAUDE_CODE_SESSION_ACCESS_TOKEN",
        "CLAUDE_CODE_WEBSOCKET_AUTH_FILE_DESCRIPTOR",
    ] {
        assert_eq!(get(name), None, "{name} reached the child");
    }
    assert_eq!(
        get("CLAUDE_CODE_REMOTE_SESSION_ID"),
        Some(gw.session_id.as_str()),
        "the session id did not reach the child unchanged"
    );
    assert!(
        !out.stdout.contains("must-not-pass-either") && !out.stdout.contains(&gw.token),
        "a token reached the child"
    );
}
