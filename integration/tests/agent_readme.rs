//! What start-up explains, checked on the real `ccr-relay` binary: the
//! README written next to the bundle names exactly the variables and paths
//! a child of `run` got (both generations); `--no-proxy=-HOST` and
//! `--no-proxy-default=none` in a real child's `NO_PROXY` and Java
//! options; the start-up log line, the debug line outside a session, and
//! the warning for a `--listen` address that is not loopback.

use std::collections::BTreeMap;
use std::path::Path;

use ccr_integration::session_env::{Outcome, Session};
use ccr_integration::{DevGateway, GatewayOptions};

const MARK: &str = "=====ENV=====";

fn gateway(agent: bool) -> DevGateway {
    let mut opts = GatewayOptions {
        token: "tok-readme-5e2a91c7d4".into(),
        session_id: "sess-readme".into(),
        ..GatewayOptions::default()
    };
    if agent {
        opts = opts.agent_proxy(ccr_integration::ServerKind::Late);
    }
    DevGateway::start(opts)
}

/// Every `` `NAME=value` `` in `text`.
fn named_vars(text: &str) -> Vec<(String, String)> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|s| s.split_once('='))
        .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// `cat ~/.ccr/README.md; env` under `run`: the README and the child's env.
fn readme_and_env(s: &Session) -> (String, BTreeMap<String, String>, Outcome) {
    let out = s.run(&[
        "sh",
        "-c",
        &format!("cat ~/.ccr/README.md; echo {MARK}; env"),
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let (readme, env) = out
        .stdout
        .split_once(&format!("{MARK}\n"))
        .unwrap_or_else(|| panic!("no marker: {}", out.describe()));
    let env = ccr_integration::session_env::parse_env(env);
    (readme.to_string(), env, out)
}

fn check_readme(agent: bool) {
    let gw = gateway(agent);
    let mut s =
        Session::for_gateway(if agent { "readme-v2" } else { "readme-v1" }, &gw).default_bundle();
    if agent {
        s = s.agent_proxy();
    }
    let (readme, env, out) = readme_and_env(&s);
    assert!(
        readme.starts_with("# This session's network proxy"),
        "{}",
        out.describe()
    );
    let named = named_vars(&readme);
    assert!(named.len() >= 10, "too few variables named: {named:?}");
    for (name, value) in &named {
        assert_eq!(
            env.get(name),
            Some(value),
            "the README names {name}={value}, the child has {:?}",
            env.get(name)
        );
    }
    for name in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "NODE_USE_ENV_PROXY",
    ] {
        assert!(
            named.iter().any(|(n, _)| n == name),
            "{name} not in the README"
        );
    }
    // The paths it names: the bundle the variables name, the truststore
    // the JVM is given, with its password.
    let bundle = env.get("SSL_CERT_FILE").expect("SSL_CERT_FILE");
    assert!(readme.contains(&format!("`{bundle}`")), "bundle path");
    assert!(Path::new(bundle).is_file());
    assert_eq!(
        Path::new(bundle).parent(),
        s.home.join(".ccr").as_path().into()
    );
    let java = env.get("JAVA_TOOL_OPTIONS").expect("JAVA_TOOL_OPTIONS");
    let store = java
        .split(' ')
        .find_map(|o| o.strip_prefix("-Djavax.net.ssl.trustStore="))
        .expect("a truststore in JAVA_TOOL_OPTIONS");
    let password = java
        .split(' ')
        .find_map(|o| o.strip_prefix("-Djavax.net.ssl.trustStorePassword="))
        .expect("a truststore password");
    assert!(Path::new(store).is_file(), "{store}");
    assert!(
        readme.contains(&format!("`{store}`, password `{password}`")),
        "truststore and password:\n{readme}"
    );
    assert!(readme.contains(&format!("-Djavax.net.ssl.trustStore={store}")));
    let generation = if agent {
        "the agent proxy"
    } else {
        "the upstream proxy"
    };
    assert!(readme.contains(generation), "{generation}");
    assert!(readme.contains("curl -sS \"$HTTPS_PROXY/__agentproxy/status\""));
}

#[test]
fn readme_names_what_the_child_got_upstream_proxy() {
    check_readme(false);
}

#[test]
fn readme_names_what_the_child_got_agent_proxy() {
    check_readme(true);
}

#[test]
fn no_proxy_entries_removed_and_default_list_dropped() {
    let gw = gateway(false);
    let s = Session::for_gateway("noproxy-minus", &gw)
        .arg("--no-proxy=a.test,-pypi.org")
        .arg("--no-proxy")
        .arg("-anthropic.com");
    let (_, env, out) = readme_and_env(&s);
    let no_proxy = env
        .get("NO_PROXY")
        .unwrap_or_else(|| panic!("{}", out.describe()));
    let entries: Vec<&str> = no_proxy.split(',').collect();
    assert!(!entries.contains(&"pypi.org"), "{no_proxy}");
    assert!(!no_proxy.contains("anthropic"), "{no_proxy}");
    assert!(entries.contains(&"files.pythonhosted.org"), "{no_proxy}");
    assert_eq!(entries.last(), Some(&"a.test"), "{no_proxy}");
    assert_eq!(env.get("no_proxy"), Some(no_proxy));
    let java = env.get("JAVA_TOOL_OPTIONS").expect("JAVA_TOOL_OPTIONS");
    let hosts = java
        .split(' ')
        .find_map(|o| o.strip_prefix("-Dhttp.nonProxyHosts="))
        .expect("nonProxyHosts");
    assert!(!hosts.split('|').any(|h| h == "pypi.org"), "{hosts}");
    assert!(hosts.split('|').any(|h| h == "a.test"), "{hosts}");

    let s = Session::for_gateway("noproxy-none", &gw)
        .default_bundle()
        .arg("--no-proxy-default=none")
        .arg("--no-proxy=a.test")
        .env("NO_PROXY", "b.test");
    let (readme, env, _) = readme_and_env(&s);
    assert_eq!(
        env.get("NO_PROXY").map(String::as_str),
        Some("a.test,b.test")
    );
    assert!(readme.contains("`NO_PROXY=a.test,b.test`"), "{readme}");
}

#[test]
fn start_up_logs_say_what_was_set_up() {
    let gw = gateway(false);
    // run: one info line with generation, port, bundle, certificates and
    // what was installed.
    let s = Session::for_gateway("log-run", &gw).env("RUST_LOG", "info");
    let out = s.run(&["true"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let line = out
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("upstream-proxy on 127.0.0.1:"))
        .unwrap_or_else(|| panic!("no start-up line: {}", out.describe()));
    let bundle = s.bundle.display().to_string();
    assert!(line.starts_with("ccr-relay: info "), "{line}");
    assert!(line.contains(&format!("bundle {bundle} (")), "{line}");
    assert!(line.contains(" certificates), installed: "), "{line}");
    assert!(!line.contains(&gw.token), "{line}");

    // serve outside a session: exits 0, and says why (at debug level, and
    // in one line whatever the level: a serve that exits without a word
    // leaves its user guessing; issue 17).
    let s = Session::for_gateway("log-off", &gw)
        .unset("CLAUDE_CODE_REMOTE")
        .env("RUST_LOG", "debug");
    let out = s
        .spawn("serve", &[])
        .finish(std::time::Duration::from_secs(20));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("debug gate 1: CLAUDE_CODE_REMOTE"),
        "{}",
        out.describe()
    );
    let s = Session::for_gateway("log-off-quiet", &gw).unset("CLAUDE_CODE_REMOTE");
    let out = s
        .spawn("serve", &[])
        .finish(std::time::Duration::from_secs(20));
    assert_eq!(
        out.stderr,
        "ccr-relay: not serving: gate 1: CLAUDE_CODE_REMOTE is not set to a true value; not in a remote session, so the proxy stays off\n",
        "one line without RUST_LOG"
    );

    // --listen on a non-loopback address: a warning saying what the uid
    // check does with other hosts, and the proxy still on.
    let s = Session::for_gateway("log-listen", &gw).arg("--listen=0.0.0.0:0");
    let out = s.run(&["sh", "-c", "echo HTTPS_PROXY=$HTTPS_PROXY"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("warn listening on 0.0.0.0:")
            && out
                .stderr
                .contains("other hosts that reach it will be refused (403)"),
        "{}",
        out.describe()
    );
    let s = Session::for_gateway("log-loopback", &gw);
    let out = s.run(&["true"]);
    assert!(!out.stderr.contains("any host"), "{}", out.describe());
}

#[test]
fn doctor_says_each_thing_once() {
    let s = Session::new("doctor-once", "ftp://gw.test");
    std::fs::remove_file(&s.token_file).expect("remove the token file");
    let out = s.doctor();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let token_path = s.token_file.display().to_string();
    let gate4 = out
        .stdout
        .lines()
        .find(|l| l.contains("gate 4"))
        .unwrap_or_else(|| panic!("no gate 4 line: {}", out.describe()));
    assert_eq!(gate4.matches("gate 4").count(), 1, "{gate4}");
    assert_eq!(gate4.matches(token_path.as_str()).count(), 1, "{gate4}");
    let url = out
        .stdout
        .lines()
        .find(|l| l.contains("gateway URL"))
        .unwrap_or_else(|| panic!("no gateway URL line: {}", out.describe()));
    assert_eq!(url.matches("gateway URL").count(), 1, "{url}");
    assert_eq!(url.matches("ftp://gw.test").count(), 1, "{url}");
    assert!(url.contains("must start with http:// or https://"), "{url}");
}
