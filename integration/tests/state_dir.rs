//! Where the relay keeps the files children trust (the CA bundle, and next
//! to it the truststore, wgetrc and README), with another user as the
//! attacker (a real second uid, `nobody`, through `setpriv`):
//!
//! - with no `HOME`, never a shared directory: a `/tmp/.ccr` that `nobody`
//!   made (0777) before the relay started stays empty, and the bundle goes
//!   to `$XDG_RUNTIME_DIR/ccr-relay` when that is the relay's own, else to
//!   a fresh `mkdtemp` directory (0700, the relay's). Those runs happen in
//!   a private mount namespace with a tmpfs on `/tmp`, so the machine's
//!   `/tmp` is never touched (the scratch files live under the target
//!   directory, outside `/tmp`);
//! - a `--ca-bundle` directory that another uid owns, or that others may
//!   write in, is refused: the relay fails open with one warning and
//!   writes nothing there, and `doctor` says why beforehand.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use ccr_integration::session_env::{
    AS_NOBODY, ENABLED, REMOTE, RUN_TIMEOUT, Running, SESSION_ID, SYSTEM_CA, Session,
};
use ccr_integration::{DevGateway, GatewayOptions, bin_path};

const TOKEN: &str = "tok-state-dir-5e0c2a91d7";
const SESSION: &str = "sess-state-dir";

fn gateway() -> DevGateway {
    DevGateway::start(GatewayOptions {
        token: TOKEN.into(),
        session_id: SESSION.into(),
        ..GatewayOptions::default()
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What the child prints: its bundle variable, the bundle directory's
/// owner and mode, and what `/tmp/.ccr` holds.
const REPORT: &str = "echo \"BUNDLE=${SSL_CERT_FILE-unset}\"; \
     [ -n \"$SSL_CERT_FILE\" ] && stat -c 'DIR=%u %a' \"$(dirname \"$SSL_CERT_FILE\")\"; \
     echo \"SHARED=$(ls -A /tmp/.ccr 2>/dev/null | tr '\\n' ' ')\"";

/// `ccr-relay run -- sh -c REPORT` with no `HOME`, in a private mount
/// namespace whose `/tmp` is a fresh tmpfs (mode 1777) prepared by `setup`
/// (sh, run as root inside the namespace before the relay starts).
fn run_without_home(gw: &DevGateway, setup: &str, extra_env: &[(&str, &str)]) -> (String, String) {
    let scratch = tempfile::Builder::new()
        .prefix("state-dir-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let token_file = scratch.path().join("session_token");
    fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let script = format!("set -e\nmount -t tmpfs -o mode=1777 tmpfs /tmp\n{setup}\nexec \"$@\"\n");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(bin_path("ccr-relay"))
    .args(["run", "--base-url", &gw.base_url(), "--token-file"])
    .arg(&token_file)
    .args(["--system-ca", SYSTEM_CA, "--", "sh", "-c", REPORT])
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("CCR_RELAY_INSTALL", "0")
    .env(REMOTE, "1")
    .env(ENABLED, "1")
    .env(SESSION_ID, SESSION)
    .envs(extra_env.iter().copied())
    .process_group(0);
    ccr_integration::procs::default_signals(&mut cmd);
    let out = Running::spawn(cmd).finish(RUN_TIMEOUT);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    (out.stdout.clone(), out.stderr.clone())
}

fn line<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in:\n{stdout}"))
}

#[test]
fn without_home_the_bundle_never_goes_to_a_directory_another_user_made() {
    if !is_root()
        && ccr_integration::procs::skip_or_fail(
            "without_home_the_bundle_never_goes_to_a_directory_another_user_made",
            "needs root for a private mount namespace with its own /tmp",
        )
    {
        return;
    }
    let gw = gateway();
    let nobody = AS_NOBODY.join(" ");
    // nobody made /tmp/.ccr, open to all, before the relay started.
    let attacker = format!("{nobody} mkdir -m 0777 /tmp/.ccr");

    let (stdout, stderr) = run_without_home(&gw, &attacker, &[]);
    let bundle = line(&stdout, "BUNDLE=");
    assert!(
        bundle.starts_with("/tmp/ccr-relay.") && bundle.ends_with("/ca-bundle.crt"),
        "not a fresh private directory: {bundle}\n{stderr}"
    );
    assert_eq!(line(&stdout, "DIR="), "0 700", "{bundle}");
    assert_eq!(
        line(&stdout, "SHARED="),
        "",
        "the relay wrote into /tmp/.ccr"
    );

    // An XDG_RUNTIME_DIR of the relay's own is used.
    let setup = format!("{attacker}\nmkdir -m 0700 /tmp/xdg");
    let (stdout, _) = run_without_home(&gw, &setup, &[("XDG_RUNTIME_DIR", "/tmp/xdg")]);
    assert_eq!(line(&stdout, "BUNDLE="), "/tmp/xdg/ccr-relay/ca-bundle.crt");
    assert_eq!(line(&stdout, "DIR="), "0 700");
    assert_eq!(line(&stdout, "SHARED="), "");

    // One that nobody owns is not.
    let setup = format!("{attacker}\n{nobody} mkdir -m 0700 /tmp/xdg");
    let (stdout, _) = run_without_home(&gw, &setup, &[("XDG_RUNTIME_DIR", "/tmp/xdg")]);
    let bundle = line(&stdout, "BUNDLE=");
    assert!(bundle.starts_with("/tmp/ccr-relay."), "{bundle}");
    assert_eq!(line(&stdout, "DIR="), "0 700");
}

/// `root/shared` (1777, like /tmp) with `root/shared/.ccr` made by nobody,
/// mode 0777, before the relay starts.
fn attacker_dir(root: &Path) -> std::path::PathBuf {
    let shared = root.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let evil = shared.join(".ccr");
    let st = Command::new(AS_NOBODY[0])
        .args(&AS_NOBODY[1..])
        .args(["mkdir", "-m", "0777"])
        .arg(&evil)
        .status()
        .unwrap();
    assert!(st.success(), "setpriv mkdir {}", evil.display());
    assert_eq!(fs::metadata(&evil).unwrap().uid(), 65534);
    evil
}

#[test]
fn a_bundle_directory_another_user_controls_is_refused_and_doctor_says_why() {
    let gw = gateway();
    let s = Session::for_gateway("state-refused", &gw);
    let evil = attacker_dir(s.dir.path());
    let bundle = evil.join("ca-bundle.crt");
    let s = s.bundle_at(&bundle);

    let doctor = s.doctor();
    assert_eq!(doctor.code(), Some(1), "{}", doctor.describe());
    assert!(
        doctor.stdout.contains(&format!(
            "FAIL  CA bundle {}: refusing {}: it is owned by uid 65534",
            bundle.display(),
            evil.display()
        )),
        "{}",
        doctor.describe()
    );

    let out = s.run(&["sh", "-c", "env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.var("HTTPS_PROXY"), None, "{}", out.describe());
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one warning: {}", out.describe());
    assert!(
        lines[0].contains("refusing") && lines[0].contains("continuing without the proxy"),
        "{}",
        lines[0]
    );
    assert_eq!(
        fs::read_dir(&evil).unwrap().count(),
        0,
        "the relay wrote into a directory nobody controls"
    );

    // One of the relay's own uid that others may write in: refused too.
    let open = s.dir.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o770)).unwrap();
    let s = s.bundle_at(open.join("ca-bundle.crt"));
    let out = s.run(&["sh", "-c", "env"]);
    assert_eq!(out.var("HTTPS_PROXY"), None, "{}", out.describe());
    assert!(out.stderr.contains("mode 0770"), "{}", out.describe());
    assert_eq!(fs::read_dir(&open).unwrap().count(), 0);
}

#[test]
fn doctor_without_home_names_the_fresh_private_directory() {
    let gw = gateway();
    let s = Session::for_gateway("state-doctor", &gw).default_bundle();
    let mut cmd = s.command("doctor", &[]);
    cmd.env_remove("HOME").env_remove("XDG_RUNTIME_DIR");
    let out = Running::spawn(cmd).finish(RUN_TIMEOUT);
    assert!(
        out.stdout.contains(
            "ok    CA bundle /tmp/ccr-relay.XXXXXX/ca-bundle.crt: no HOME (and no XDG_RUNTIME_DIR of the relay's own): a fresh private directory"
        ),
        "{}",
        out.describe()
    );
    assert!(!out.stdout.contains("/tmp/.ccr"), "{}", out.describe());
}
