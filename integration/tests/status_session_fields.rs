//! The status page's fields that sessions already read, through the real
//! relay and its page parsed by python3: `javaTrustStorePath` and
//! `readmePath` (the files start-up wrote, which exist there),
//! `gitConfigInjection` (the git settings children get through
//! `GIT_CONFIG_*`, as `key=value`) and `gitSshRewrite` (whether GitHub SSH
//! remotes are rewritten to HTTPS), each checked against what the env file
//! gives children, for a plain session, one with its own SSH agent and one
//! whose parent set its own `GIT_CONFIG_COUNT`.

use std::path::Path;
use std::process::Command;

use ccr_integration::relay::{RelayOptions, RelayProcess};
use ccr_integration::{DevGateway, GatewayOptions};

/// The four fields as JSON texts, one `KEY=json` line each.
fn fields(relay: &RelayProcess) -> Vec<(String, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "*"])
        .arg(format!("http://{}/__agentproxy/status", relay.proxy_addr))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "{out:?}");
    let script = r#"
import json, sys
d = json.load(sys.stdin)
for k in ["javaTrustStorePath", "readmePath", "gitConfigInjection", "gitSshRewrite"]:
    print("%s=%s" % (k, json.dumps(d[k])))
"#;
    let done = ccr_integration::procs::python_with_input(script, &out.stdout).unwrap_or_else(|e| {
        panic!(
            "the page does not parse or lacks a field: {e}\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    done.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"))
}

/// The `GIT_CONFIG_*` pairs of the env file, as the page's JSON list.
fn git_config_of(relay: &RelayProcess) -> String {
    let count: usize = relay
        .var("GIT_CONFIG_COUNT")
        .map_or(0, |c| c.parse().unwrap());
    let pairs: Vec<String> = (0..count)
        .map(|i| {
            let key = relay.var(&format!("GIT_CONFIG_KEY_{i}")).unwrap();
            let value = relay.var(&format!("GIT_CONFIG_VALUE_{i}")).unwrap();
            format!("\"{key}={value}\"")
        })
        .collect();
    format!("[{}]", pairs.join(", "))
}

/// A JSON string's text (the tests' paths need no escapes).
fn unquoted(json: &str) -> &str {
    json.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_else(|| panic!("not a JSON string: {json}"))
}

#[test]
fn the_page_names_the_files_and_git_settings_children_got() {
    let gw = DevGateway::start(GatewayOptions::default());

    let relay = RelayProcess::serve(&gw, RelayOptions::default());
    let f = fields(&relay);
    let jks = unquoted(field(&f, "javaTrustStorePath"));
    assert!(
        jks.ends_with(".jks") && Path::new(jks).is_file(),
        "{jks}: the truststore start-up wrote"
    );
    let java = relay.var("JAVA_TOOL_OPTIONS").unwrap_or_default();
    assert!(java.contains(jks), "children's Java uses it: {java}");
    let readme = unquoted(field(&f, "readmePath"));
    assert!(
        readme.ends_with("README.md") && Path::new(readme).is_file(),
        "{readme}: the README start-up wrote"
    );
    assert_eq!(
        field(&f, "gitConfigInjection"),
        "[\"credential.interactive=false\", \
          \"url.https://github.com/.insteadOf=git@github.com:\", \
          \"url.https://github.com/.insteadOf=ssh://git@github.com/\"]"
    );
    assert_eq!(field(&f, "gitConfigInjection"), git_config_of(&relay));
    assert_eq!(field(&f, "gitSshRewrite"), "true");

    // A session with its own SSH agent keeps SSH: no rewrite.
    let relay = RelayProcess::serve(
        &gw,
        RelayOptions::default().env("SSH_AUTH_SOCK", "/tmp/ccr-no-agent.sock"),
    );
    let f = fields(&relay);
    assert_eq!(
        field(&f, "gitConfigInjection"),
        "[\"credential.interactive=false\"]"
    );
    assert_eq!(field(&f, "gitConfigInjection"), git_config_of(&relay));
    assert_eq!(field(&f, "gitSshRewrite"), "false");

    // A parent's own GIT_CONFIG_COUNT is never added to: nothing injected.
    let relay = RelayProcess::serve(
        &gw,
        RelayOptions::default()
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "user.name")
            .env("GIT_CONFIG_VALUE_0", "me"),
    );
    let f = fields(&relay);
    assert_eq!(field(&f, "gitConfigInjection"), "[]");
    assert_eq!(field(&f, "gitSshRewrite"), "false");
}
