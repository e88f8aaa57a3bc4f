//! The library's own functions checked against the programs they drive or
//! feed, moved out of the unit tests so those need nothing but Rust:
//! `install::command::run_bounded` with `sh` and `env`, the trust
//! installers with fake helper scripts (`update-ca-certificates`,
//! `update-ca-trust`, `certutil`) run by `/bin/sh`, the login-shell script
//! and the env file sourced by a real `sh`, and the git variables read by a
//! real `git`.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ccr_integration::session_env::parent_of;
use ccr_integration::temp_dir;
use ccr_relay::env::credentials::{git_conflicts_with, git_vars};
use ccr_relay::env::{ClientFiles, Mode, ProxyEnv, child_vars, removed_vars, write_env_file};
use ccr_relay::sys::command::{RunError, find_on_path, run_bounded};
use ccr_relay::trust::install::{
    self, NSS_ADD_FAILED, Plan, Roots, SYSTEM_TRUST_FAILED, Target, install_all, profile,
};

// -- helpers ---------------------------------------------------------------

/// Roots under `dir` (etc/, usr/local/share/, home/ made), `PATH` =
/// `dir/bin` (made, empty).
fn roots(dir: &Path) -> Roots {
    for sub in ["etc", "usr/local/share", "home", "bin"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    Roots {
        etc: dir.join("etc"),
        usr_local_share: dir.join("usr/local/share"),
        home: Some(dir.join("home")),
        path: dir.join("bin").into_os_string(),
    }
}

/// A fake helper program `name` in `dir/bin` running `script` (sh).
fn fake_tool(dir: &Path, name: &str, script: &str) -> PathBuf {
    let p = dir.join("bin").join(name);
    fs::write(&p, format!("#!/bin/sh\nPATH=/usr/bin:/bin\n{script}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// A plan as root for `targets`, the one certificate [`CERT`].
fn plan(dir: &Path, targets: &[Target]) -> Plan {
    let mut plan = Plan::new(roots(dir), vec![CERT.to_string()], dir.join("bundle.pem"));
    plan.targets = targets.to_vec();
    plan.is_root = true;
    plan
}

// -- install::command ------------------------------------------------------

fn sh() -> PathBuf {
    PathBuf::from("/bin/sh")
}

fn os(args: &[&'static str]) -> Vec<&'static OsStr> {
    args.iter().map(|a| OsStr::new(*a)).collect()
}

#[test]
fn captures_output_status_and_stdin() {
    let out = run_bounded(
        &sh(),
        &os(&["-c", "cat; echo err >&2; exit 3"]),
        &[],
        Some(b"fed in\n"),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"fed in\n");
    assert_eq!(out.stderr, b"err\n");
    assert!(out.reason().ends_with("(err)"), "{}", out.reason());
}

#[test]
fn environment_is_exactly_what_is_passed() {
    let env = vec![(OsString::from("ONLY"), OsString::from("this"))];
    let out = run_bounded(
        Path::new("/usr/bin/env"),
        &[],
        &env,
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ONLY=this\n");
}

#[test]
fn kills_the_whole_group_at_the_deadline() {
    let start = Instant::now();
    // The grandchild holds stdout open; killing only `sh` would leave it.
    let err = run_bounded(
        &sh(),
        &os(&["-c", "sleep 30 & sleep 30"]),
        &[],
        None,
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(matches!(err, RunError::TimedOut(..)), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

// -- install: all installers at once ---------------------------------------

#[test]
fn install_all_merges_in_plan_order_and_runs_in_parallel() {
    let dir = temp_dir("install-all");
    let targets = [
        Target::SystemStore,
        Target::Boto,
        Target::ProfileD,
        Target::Nss,
    ];
    let mut plan = plan(dir.path(), &targets);
    plan.ca_vars = vec!["SSL_CERT_FILE".into()];
    fs::create_dir_all(dir.join("usr/local/share/ca-certificates")).unwrap();
    // Two slow helpers: one after the other they would take 6 s.
    fake_tool(dir.path(), "update-ca-certificates", "sleep 3");
    fake_tool(dir.path(), "certutil", "[ \"$1\" = -A ] && sleep 3; exit 0");
    let start = Instant::now();
    let report = install_all(&plan);
    let elapsed = start.elapsed();
    let home = dir.join("home");
    assert!(report.failures.is_empty(), "{report:?}");
    // etc/profile.d does not exist: that installer is skipped.
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(report.skipped[0].0, Target::ProfileD);
    let what: Vec<&str> = report.installed.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(what.len(), 3, "{what:?}");
    assert!(what[0].starts_with("system trust store"));
    assert_eq!(what[1..], ["boto config", "NSS database"]);
    assert!(report.written_outside.contains(&home.join(".boto")));
    // The anchor and the NSS entry are withdrawn on a clean stop; ~/.boto stays.
    let withdrawn: Vec<Target> = report.to_withdraw.iter().map(|w| w.target()).collect();
    assert_eq!(withdrawn, [Target::SystemStore, Target::Nss]);
    assert!(
        elapsed < Duration::from_millis(5500),
        "not parallel: {elapsed:?}"
    );
}

// -- install::profile --------------------------------------------------------

/// Sources the script in `sh` with `env` and prints the variables.
fn sourced(script: &Path, env: &[(&str, &str)]) -> String {
    let out = Command::new("/bin/sh")
        .env_clear()
        .envs(env.iter().copied())
        .arg("-c")
        .arg(". \"$0\"; echo \"${SSL_CERT_FILE-unset}|${CURL_CA_BUNDLE-unset}|$(env | grep -c CURL_CA_BUNDLE)\"")
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn profile_script_sets_only_unset_variables_and_only_with_a_readable_bundle() {
    let dir = temp_dir("profile-sh");
    let bundle = dir.join("bundle dir/ca.pem");
    fs::create_dir_all(bundle.parent().unwrap()).unwrap();
    let script = dir.join("s.sh");
    fs::write(
        &script,
        profile::script_text(&bundle, &["SSL_CERT_FILE".into(), "CURL_CA_BUNDLE".into()]),
    )
    .unwrap();
    assert_eq!(sourced(&script, &[]), "unset|unset|0\n", "no bundle yet");
    fs::write(&bundle, "pem").unwrap();
    let b = bundle.display();
    assert_eq!(sourced(&script, &[]), format!("{b}|{b}|1\n"), "exported");
    assert_eq!(
        sourced(
            &script,
            &[("SSL_CERT_FILE", "/mine.pem"), ("CURL_CA_BUNDLE", "")]
        ),
        "/mine.pem||1\n"
    );
}

// -- install::nss --------------------------------------------------------------

#[test]
fn nss_runs_create_list_delete_add_in_order() {
    let dir = temp_dir("nss-fake");
    let plan = plan(dir.path(), &[Target::Nss]);
    let log = dir.join("log");
    // -L answers with an earlier entry of ours; -D succeeds once for it.
    fake_tool(
        dir.path(),
        "certutil",
        &format!(
            "echo \"$*\" >> {log}\n\
             case \"$1\" in\n\
             -N) touch \"${{4#sql:}}/cert9.db\" ;;\n\
             -L) printf 'ccr-relay-gateway   C,,\\n' ;;\n\
             -D) [ -e {done} ] && exit 255; touch {done} ;;\n\
             -A) cat > {stdin} ;;\n\
             esac",
            log = log.display(),
            done = dir.join("deleted").display(),
            stdin = dir.join("stdin").display(),
        ),
    );
    let o = install::nss::install(&plan);
    assert!(o.failure.is_none(), "{o:?}");
    let db = dir.join("home/.pki/nssdb");
    let d = format!("-d sql:{}", db.display());
    let lines: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        [
            format!("-N --empty-password {d}"),
            format!("-L {d}"),
            format!("-D -n ccr-relay-gateway {d}"),
            format!("-D -n ccr-relay-gateway {d}"),
            format!("-A -n ccr-relay-gateway -t C,, -a {d}"),
        ]
    );
    assert_eq!(fs::read_to_string(dir.join("stdin")).unwrap(), CERT);
    assert_eq!(o.installed, [("NSS database".to_string(), db)]);
}

#[test]
fn nss_add_failure_is_nss_add_failed() {
    let dir = temp_dir("nss-fail");
    let plan = plan(dir.path(), &[Target::Nss]);
    fs::create_dir_all(dir.join("home/.pki/nssdb")).unwrap();
    fs::write(dir.join("home/.pki/nssdb/cert9.db"), "").unwrap();
    fake_tool(
        dir.path(),
        "certutil",
        "[ \"$1\" = -A ] && { echo 'SEC_ERROR_BAD_DATABASE' >&2; exit 255; }; exit 0",
    );
    let (code, detail) = install::nss::install(&plan).failure.unwrap();
    assert_eq!(code, NSS_ADD_FAILED);
    assert!(detail.contains("SEC_ERROR_BAD_DATABASE"), "{detail}");
}

// -- install::system -----------------------------------------------------------

#[test]
fn system_debian_layout_writes_anchor_runs_tool_and_drops_stale_ones() {
    let dir = temp_dir("sys-debian");
    let mut plan = plan(dir.path(), &[Target::SystemStore]);
    let anchors = dir.join("usr/local/share/ca-certificates");
    fs::create_dir_all(&anchors).unwrap();
    fs::write(anchors.join("ccr-relay-gateway-2.crt"), "old").unwrap();
    fs::write(anchors.join("corp.crt"), "theirs").unwrap();
    let ran = dir.join("ran");
    fake_tool(
        dir.path(),
        "update-ca-certificates",
        &format!("echo \"$# $HOME\" > {}", ran.display()),
    );
    plan.gateway_certs = vec![CERT.trim_end().to_string()];
    let o = install::system::install(&plan);
    assert!(o.failure.is_none(), "{o:?}");
    let anchor = anchors.join("ccr-relay-gateway.crt");
    assert_eq!(fs::read_to_string(&anchor).unwrap(), CERT);
    assert_eq!(o.written, std::slice::from_ref(&anchor));
    assert_eq!(o.installed[0].1, anchor);
    assert!(!anchors.join("ccr-relay-gateway-2.crt").exists());
    assert!(anchors.join("corp.crt").exists());
    let home = dir.join("home");
    assert_eq!(
        fs::read_to_string(&ran).unwrap(),
        format!("0 {}\n", home.display())
    );
}

#[test]
fn system_red_hat_layout_runs_extract() {
    let dir = temp_dir("sys-rh");
    let plan = plan(dir.path(), &[Target::SystemStore]);
    let anchors = dir.join("etc/pki/ca-trust/source/anchors");
    fs::create_dir_all(&anchors).unwrap();
    let ran = dir.join("ran");
    fake_tool(
        dir.path(),
        "update-ca-trust",
        &format!("echo \"$@\" > {}", ran.display()),
    );
    let o = install::system::install(&plan);
    assert!(o.failure.is_none(), "{o:?}");
    assert!(anchors.join("ccr-relay-gateway.crt").is_file());
    assert_eq!(fs::read_to_string(&ran).unwrap(), "extract\n");
}

#[test]
fn system_failing_tool_is_system_trust_failed_with_its_reason() {
    let dir = temp_dir("sys-fail");
    let plan = plan(dir.path(), &[Target::SystemStore]);
    fs::create_dir_all(dir.join("usr/local/share/ca-certificates")).unwrap();
    fake_tool(
        dir.path(),
        "update-ca-certificates",
        "echo 'no space left' >&2; exit 2",
    );
    let o = install::system::install(&plan);
    let (code, detail) = o.failure.unwrap();
    assert_eq!(code, SYSTEM_TRUST_FAILED);
    assert!(detail.contains("no space left"), "{detail}");
    assert_eq!(o.written.len(), 1, "the anchor was written before");
}

#[test]
fn system_hanging_tool_is_killed_at_the_bound() {
    let dir = temp_dir("sys-hang");
    let mut plan = plan(dir.path(), &[Target::SystemStore]);
    plan.command_timeout = Duration::from_millis(300);
    fs::create_dir_all(dir.join("usr/local/share/ca-certificates")).unwrap();
    fake_tool(dir.path(), "update-ca-certificates", "sleep 30");
    let start = Instant::now();
    let (code, detail) = install::system::install(&plan).failure.unwrap();
    assert_eq!(code, SYSTEM_TRUST_FAILED);
    assert!(detail.contains("killed after"), "{detail}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

// -- child_env::env_file ---------------------------------------------------------

#[test]
fn env_file_survives_sh() {
    let dir = temp_dir("env-file-sh");
    let path = dir.join("relay.env");
    let nasty = "a 'quoted' $HOME `id` \\n \"dq\"\nsecond line\t*";
    let sample = ProxyEnv {
        proxy_url: "http://127.0.0.1:4321".into(),
        ca_bundle: PathBuf::from("/home/u/.ccr/ca-bundle.crt"),
        no_proxy_extra: vec!["x.example".to_string()],
        no_proxy_default: Default::default(),
        mode: Mode::default(),
        system_bundle: true,
    };
    let mut vars = child_vars(
        &sample,
        &ClientFiles::expected(Path::new("/home/u/.ccr/ca-bundle.crt")),
        parent_of(&[("JAVA_TOOL_OPTIONS", "-Da='b c'")]),
    );
    vars.push(("NASTY".to_string(), nasty.to_string()));
    vars.push(("TRAILING".to_string(), "ends with '".to_string()));
    write_env_file(&path, &vars).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    for (name, value) in &vars {
        let out = Command::new("sh")
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
    let out = Command::new("sh")
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
fn env_file_unsets_what_children_must_not_have() {
    let dir = temp_dir("env-file-unset");
    let path = dir.join("relay.env");
    write_env_file(&path, &[("X".into(), "1".into())]).unwrap();
    let removed = removed_vars();
    for name in ["AGENT_PROXY_AUTH_TOKEN", "CCR_AGENT_PROXY_INCLUDE_HOSTS"] {
        assert!(removed.contains(&name), "{name}");
    }
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(". \"$1\"; env").arg("sh").arg(&path);
    for name in &removed {
        cmd.env(name, "secret-value");
    }
    cmd.env("CLAUDE_CODE_REMOTE_SESSION_ID", "sess-kept");
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let env = String::from_utf8(out.stdout).unwrap();
    assert!(env.lines().any(|l| l == "X=1"), "{env}");
    // The session id is no secret: the file leaves the inherited one alone.
    assert!(
        env.lines()
            .any(|l| l == "CLAUDE_CODE_REMOTE_SESSION_ID=sess-kept"),
        "{env}"
    );
    for name in &removed {
        assert!(!env.contains(&format!("{name}=")), "{name} survived: {env}");
    }
}

// -- credentials: the git variables with a real git -------------------------------

#[test]
fn git_really_reads_the_config_variables() {
    // The variables mean to git what the relay thinks they mean.
    let Some(git) = find_on_path("git", OsStr::new("/usr/local/bin:/usr/bin:/bin")) else {
        panic!("git is needed for this test and is not installed");
    };
    let mut cmd2 = Command::new(git);
    cmd2.env_clear().env("HOME", "/nonexistent").args([
        "ls-remote",
        "--get-url",
        "git@github.com:o/r.git",
    ]);
    for (k, v) in git_vars(parent_of(&[]), false) {
        cmd2.env(k, v);
    }
    let out = cmd2.output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "https://github.com/o/r.git"
    );
}

#[test]
fn git_conflicts_reads_global_config_with_a_real_git() {
    let home = temp_dir("git-home");
    fs::write(
        home.join(".gitconfig"),
        "[http]\n\tproxy = http://corp:3128\n[url \"git@github.com:\"]\n\tinsteadOf = https://github.com/\n[user]\n\tname = x\n",
    )
    .unwrap();
    let path = OsStr::new("/usr/local/bin:/usr/bin:/bin");
    assert!(
        find_on_path("git", path).is_some(),
        "git is needed for this test"
    );
    let found = git_conflicts_with(Duration::from_secs(5), path, Some(home.path()));
    let global: Vec<&String> = found.iter().filter(|f| f.contains(".gitconfig")).collect();
    assert_eq!(global.len(), 2, "{found:#?}");
    assert!(global[0].starts_with("http.proxy=http://corp:3128"));
    assert!(global[1].starts_with("url.git@github.com:.insteadof=https://github.com/"));
}
