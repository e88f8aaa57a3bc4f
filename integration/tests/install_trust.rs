//! The trust installers (`ccr_relay::trust::install`) with the real tools: the
//! Debian system store (`update-ca-certificates`) then `curl` with no CA
//! variable, the user's NSS database (`certutil`), the login-shell script
//! read by a real `bash -l`, and the bazelrc block written once and
//! replaced in place.
//!
//! The system store and `/etc/profile.d` are the machine's own paths, which
//! `update-ca-certificates` and `bash` hard-code. So those tests never
//! touch them: the test re-executes itself (one `#[ignore]`d helper test)
//! under `unshare -m` with temp copies of the directories bind-mounted over
//! the real ones, visible only inside that private mount namespace. The
//! outer test checks afterwards that the real files did not change.
//!
//! They need root (for the mount namespace) and the tools; a missing tool
//! is a failure that names it, not a skip. Not root is a loud SKIP line.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ccr_integration::pki::TestCa;
use ccr_integration::{DevOrigin, temp_dir};
use ccr_relay::trust::install::{self, Plan, Roots, Target};

/// Set in the environment of the re-executed helper: what it is to do.
const INNER: &str = "CCR_INSTALL_TRUST_INNER";
const HELLO: &str = "hello from origin\n";

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn path_var() -> OsString {
    std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
}

/// The tool's path, or a failure that names the package to install.
fn require_tool(name: &str, package: &str) -> PathBuf {
    ccr_relay::sys::command::find_on_path(name, &path_var()).unwrap_or_else(|| {
        panic!("{name} is needed by this test and is not on PATH: install the `{package}` package")
    })
}

fn skip_unless_root(test: &str) -> bool {
    !is_root()
        && ccr_integration::procs::skip_or_fail(
            test,
            "needs root for a private mount namespace (unshare -m, mount --bind)",
        )
}

/// `cp -a SRC DST`: a copy keeping symlinks (the system store is mostly
/// links into /usr/share/ca-certificates).
fn copy_tree(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

/// Runs the helper test `inner` of this binary under `unshare -m`, each
/// `(copy, real)` bind-mounted over `real` first, with `env` added.
fn run_in_private_mounts(binds: &[(&Path, &Path)], inner: &str, env: &[(&str, String)]) -> Output {
    require_tool("unshare", "util-linux");
    let mut script = String::from("set -e\n");
    for (i, _) in binds.iter().enumerate() {
        script.push_str(&format!("mount --bind \"$SRC{i}\" \"$DST{i}\"\n"));
    }
    script.push_str(
        "exec \"$SELF\" --exact \"$INNER_TEST\" --ignored --nocapture --test-threads=1\n",
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "--", "sh", "-c", &script]);
    for (i, (src, dst)) in binds.iter().enumerate() {
        cmd.env(format!("SRC{i}"), src).env(format!("DST{i}"), dst);
    }
    cmd.env("SELF", std::env::current_exe().unwrap())
        .env("INNER_TEST", inner)
        .env(INNER, inner);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    eprintln!(
        "--- {inner} (private mount namespace) stdout:\n{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// True when this process is the helper re-executed for `name`.
fn inner_for(name: &str) -> bool {
    let asked = std::env::var(INNER).ok();
    if asked.as_deref() != Some(name) {
        eprintln!(
            "{name} is a helper run by the test of the same name without `inner_`; nothing to do"
        );
        return false;
    }
    true
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set by the outer test"))
}

fn curl_bare(url: &str) -> Output {
    Command::new("env")
        .args(["-i", "curl", "--max-time", "5", "-sS", url])
        .output()
        .unwrap()
}

fn fingerprint(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok()
}

// ---------------------------------------------------------------------------
// System store

#[test]
fn system_store_makes_bare_curl_trust_the_gateway() {
    if skip_unless_root("system_store_makes_bare_curl_trust_the_gateway") {
        return;
    }
    require_tool("update-ca-certificates", "ca-certificates");
    require_tool("curl", "curl");
    let dir = temp_dir("install-sys");
    let ca = TestCa::new(&dir.join("ca")).unwrap();
    let (cert, key) = ca.issue_leaf(&["localhost"]);
    let origin = DevOrigin::start(Some((&cert, &key)));

    let real_anchor = Path::new("/usr/local/share/ca-certificates/ccr-relay-gateway.crt");
    let real_bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    let real_conf = Path::new("/etc/ca-certificates.conf");
    let before = (
        fingerprint(real_bundle),
        fingerprint(real_conf),
        real_anchor.exists(),
    );
    assert!(
        !before.2,
        "{} exists before the test",
        real_anchor.display()
    );

    let anchors = dir.join("anchors");
    let certs = dir.join("certs");
    let conf = dir.join("ca-certificates.conf");
    copy_tree(Path::new("/usr/local/share/ca-certificates"), &anchors);
    copy_tree(Path::new("/etc/ssl/certs"), &certs);
    copy_tree(real_conf, &conf);
    let out = run_in_private_mounts(
        &[
            (&anchors, Path::new("/usr/local/share/ca-certificates")),
            (&certs, Path::new("/etc/ssl/certs")),
            (&conf, real_conf),
        ],
        "inner_system_store",
        &[
            ("CCR_TEST_CA", ca.cert_path().display().to_string()),
            (
                "CCR_TEST_URL",
                format!("https://localhost:{}/hello", origin.port()),
            ),
        ],
    );
    assert!(
        out.status.success(),
        "the namespaced run failed: {:?}",
        out.status
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("inner_system_store: all checks passed"),
        "the helper did not run its checks"
    );
    // Inside, the anchor came and went again; outside, nothing changed.
    assert!(!anchors.join("ccr-relay-gateway.crt").exists());
    let after = (
        fingerprint(real_bundle),
        fingerprint(real_conf),
        real_anchor.exists(),
    );
    assert_eq!(before, after, "the real system store changed");
}

#[test]
#[ignore = "helper: run by system_store_makes_bare_curl_trust_the_gateway in a private mount namespace"]
fn inner_system_store() {
    if !inner_for("inner_system_store") {
        return;
    }
    let url = env_var("CCR_TEST_URL");
    let ca_pem = fs::read_to_string(env_var("CCR_TEST_CA")).unwrap();
    let before = curl_bare(&url);
    assert!(
        !before.status.success(),
        "curl trusted the test CA before the install: the test proves nothing"
    );

    let roots = Roots::system(None, path_var());
    let mut plan = Plan::new(
        roots,
        vec![ca_pem],
        PathBuf::from("/nonexistent/bundle.pem"),
    );
    plan.targets = vec![Target::SystemStore];
    let start = std::time::Instant::now();
    let report = install::install_all(&plan);
    println!("install took {:?}: {report:?}", start.elapsed());
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let anchor = PathBuf::from("/usr/local/share/ca-certificates/ccr-relay-gateway.crt");
    assert_eq!(report.installed.len(), 1);
    assert_eq!(report.installed[0].1, anchor);
    assert_eq!(report.written_outside, std::slice::from_ref(&anchor));

    let after = curl_bare(&url);
    assert!(
        after.status.success(),
        "curl with no CA variable still fails: {}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&after.stdout), HELLO);

    // A clean stop: the anchor goes, the tool runs again, and curl no
    // longer trusts the gateway's CA, within the stop's bound.
    let start = std::time::Instant::now();
    let deadline = start + ccr_relay::startup::outside::STOP_BUDGET;
    let env = [(OsString::from("PATH"), path_var())];
    let problems = install::withdraw::withdraw_all(&report.to_withdraw, &env, deadline);
    println!("withdrawal took {:?}", start.elapsed());
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!anchor.exists());
    let withdrawn = curl_bare(&url);
    assert!(
        !withdrawn.status.success(),
        "curl still trusts the gateway's CA after the withdrawal"
    );
    println!("inner_system_store: all checks passed");
}

// ---------------------------------------------------------------------------
// Login shells

#[test]
fn profile_script_reaches_a_real_login_shell() {
    if skip_unless_root("profile_script_reaches_a_real_login_shell") {
        return;
    }
    require_tool("bash", "bash");
    let dir = temp_dir("install-profile");
    let real = Path::new("/etc/profile.d");
    let real_script = real.join(install::profile::FILE_NAME);
    let before = fingerprint(&real_script);
    let copy = dir.join("profile.d");
    copy_tree(real, &copy);
    // A script left by a relay that ran here for real is not this test's.
    let _ = fs::remove_file(copy.join(install::profile::FILE_NAME));
    let bundle = dir.join("bundle.pem");
    fs::write(&bundle, "pem").unwrap();
    let out = run_in_private_mounts(
        &[(&copy, real)],
        "inner_profile",
        &[("CCR_TEST_BUNDLE", bundle.display().to_string())],
    );
    assert!(
        out.status.success(),
        "the namespaced run failed: {:?}",
        out.status
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("inner_profile: all checks passed"));
    assert_eq!(
        fingerprint(&real_script),
        before,
        "the real /etc/profile.d changed"
    );
}

fn login_shell(env: &[&str]) -> String {
    let out = Command::new("env")
        .arg("-i")
        .args(env)
        .args([
            "bash",
            "-l",
            "-c",
            "echo \"${SSL_CERT_FILE-unset}|${CURL_CA_BUNDLE-unset}|${HTTPS_PROXY-unset}\"",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // A profile may print things of its own first; the echo is last.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

#[test]
#[ignore = "helper: run by profile_script_reaches_a_real_login_shell in a private mount namespace"]
fn inner_profile() {
    if !inner_for("inner_profile") {
        return;
    }
    let bundle = env_var("CCR_TEST_BUNDLE");
    assert_eq!(
        login_shell(&[]),
        "unset|unset|unset",
        "set before the install"
    );
    let roots = Roots::system(None, path_var());
    let mut plan = Plan::new(roots, Vec::new(), PathBuf::from(&bundle));
    plan.targets = vec![Target::ProfileD];
    plan.ca_vars = vec!["SSL_CERT_FILE".into(), "CURL_CA_BUNDLE".into()];
    let report = install::install_all(&plan);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let script = Path::new("/etc/profile.d").join(install::profile::FILE_NAME);
    assert_eq!(report.to_withdraw.len(), 1);
    assert_eq!(report.to_withdraw[0].target(), Target::ProfileD);

    assert_eq!(login_shell(&[]), format!("{bundle}|{bundle}|unset"));
    assert_eq!(
        login_shell(&["SSL_CERT_FILE=/mine.pem"]),
        format!("/mine.pem|{bundle}|unset"),
        "a variable the user set is kept"
    );
    fs::remove_file(&bundle).unwrap();
    assert_eq!(
        login_shell(&[]),
        "unset|unset|unset",
        "an unreadable bundle sets nothing"
    );
    fs::write(&bundle, "pem").unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    assert!(install::withdraw::withdraw_all(&report.to_withdraw, &[], deadline).is_empty());
    assert!(!script.exists());
    assert_eq!(login_shell(&[]), "unset|unset|unset", "gone after stop");
    println!("inner_profile: all checks passed");
}

// ---------------------------------------------------------------------------
// NSS

fn certutil_list(db: &Path) -> String {
    let out = Command::new("certutil")
        .arg("-L")
        .arg("-d")
        .arg(format!("sql:{}", db.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn certutil_pem(db: &Path, nick: &str) -> String {
    let out = Command::new("certutil")
        .args(["-L", "-a", "-n", nick, "-d"])
        .arg(format!("sql:{}", db.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The base64 body of a PEM block, line breaks removed: comparable across
/// tools that wrap differently.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
        .replace('\r', "")
}

#[test]
fn nss_database_trusts_the_gateway_ca_and_replaces_it() {
    require_tool("certutil", "libnss3-tools");
    let dir = temp_dir("install-nss");
    let home = dir.join("home");
    fs::create_dir(&home).unwrap();
    let mut roots = Roots::system(Some(home.clone()), path_var());
    // Nothing outside the temp dir, even as root.
    roots.etc = dir.join("etc");
    roots.usr_local_share = dir.join("usr-local-share");
    let ca1 = TestCa::new(&dir.join("ca1")).unwrap();
    let ca2 = TestCa::new(&dir.join("ca2")).unwrap();
    let db = home.join(".pki/nssdb");

    let mut last = install::Report::default();
    for ca in [&ca1, &ca1, &ca2] {
        let pem = String::from_utf8(ca.cert_pem()).unwrap();
        let mut plan = Plan::new(roots.clone(), vec![pem.clone()], dir.join("bundle.pem"));
        plan.targets = vec![Target::Nss];
        let report = install::install_all(&plan);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.installed, [("NSS database".to_string(), db.clone())]);
        let listing = certutil_list(&db);
        let ours: Vec<&str> = listing
            .lines()
            .filter(|l| l.starts_with("ccr-relay-gateway"))
            .collect();
        assert_eq!(ours.len(), 1, "exactly one entry of ours:\n{listing}");
        let fields: Vec<&str> = ours[0].split_whitespace().collect();
        assert_eq!(fields, ["ccr-relay-gateway", "C,,"], "{listing}");
        assert_eq!(
            pem_body(&certutil_pem(&db, "ccr-relay-gateway")),
            pem_body(&pem)
        );
        last = report;
    }
    // A clean stop deletes the entry while it holds the relay's certificate
    // (real certutil wraps the PEM its own way).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let problems = install::withdraw::withdraw_all(&last.to_withdraw, &[], deadline);
    assert!(problems.is_empty(), "{problems:?}");
    let listing = certutil_list(&db);
    assert!(!listing.contains("ccr-relay-gateway"), "{listing}");
}

// ---------------------------------------------------------------------------
// Bazel

#[test]
fn bazelrc_block_written_once_then_replaced_in_place() {
    let dir = temp_dir("install-bazel");
    let mut roots = Roots::system(Some(dir.join("home")), path_var());
    roots.etc = dir.join("etc");
    roots.usr_local_share = dir.join("usr-local-share");
    fs::create_dir(&roots.etc).unwrap();
    fs::create_dir(dir.join("home")).unwrap();
    let rc = dir.join("home/.bazelrc");
    fs::write(&rc, "build --jobs=2\n").unwrap();
    let run = |ts: &str| {
        let mut plan = Plan::new(roots.clone(), Vec::new(), dir.join("bundle.pem"));
        plan.targets = vec![Target::Bazel];
        plan.truststore = Some((PathBuf::from(ts), "changeit".into()));
        let report = install::install_all(&plan);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        fs::read_to_string(&rc).unwrap()
    };
    let first = run("/run/ccr/one.jks");
    assert!(
        first.starts_with("build --jobs=2\n# BEGIN ccr-relay"),
        "{first}"
    );
    assert!(first.contains("-Djavax.net.ssl.trustStore=/run/ccr/one.jks\n"));
    assert!(first.contains("-Djavax.net.ssl.trustStorePassword=changeit\n"));
    fs::write(&rc, format!("{first}test --user\n")).unwrap();
    let second = run("/run/ccr/two.jks");
    assert_eq!(
        second,
        format!("{first}test --user\n").replace("one.jks", "two.jks"),
        "replaced in place, the user's lines kept"
    );
    assert_eq!(second.matches("# BEGIN ccr-relay").count(), 1);
    assert_eq!(
        run("/run/ccr/two.jks"),
        second,
        "a third start changes nothing"
    );
}

/// The attack on the machine-wide file: `/etc/bazel.bazelrc` a link (0777
/// as a link), which the installer used to replace with a regular file of
/// the link's mode 0777 that `nobody` could then fill with JVM options for
/// root's Bazel. Now nothing machine-wide is written (the block goes to
/// the user's own `~/.bazelrc`, here a link into a dotfiles directory,
/// written through with the file's mode), and `nobody` can write neither.
#[test]
fn bazelrc_never_opens_a_file_to_another_user() {
    let dir = temp_dir("install-bazel-link");
    let mut roots = Roots::system(Some(dir.join("home")), path_var());
    roots.etc = dir.join("etc");
    roots.usr_local_share = dir.join("usr-local-share");
    fs::create_dir(&roots.etc).unwrap();
    fs::create_dir(dir.join("home")).unwrap();
    fs::create_dir(dir.join("dotfiles")).unwrap();
    let site = roots.etc.join("site.bazelrc");
    fs::write(&site, "build --site\n").unwrap();
    let etc_rc = roots.etc.join("bazel.bazelrc");
    std::os::unix::fs::symlink(&site, &etc_rc).unwrap();
    let mine = dir.join("dotfiles/bazelrc");
    fs::write(&mine, "build --mine\n").unwrap();
    fs::set_permissions(&mine, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&mine, dir.join("home/.bazelrc")).unwrap();

    let mut plan = Plan::new(roots, Vec::new(), dir.join("bundle.pem"));
    plan.targets = vec![Target::Bazel];
    plan.truststore = Some((dir.join("ts.jks"), "changeit".into()));
    let report = install::install_all(&plan);
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    assert!(
        fs::symlink_metadata(&etc_rc)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_to_string(&site).unwrap(), "build --site\n");
    assert!(
        fs::symlink_metadata(dir.join("home/.bazelrc"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let text = fs::read_to_string(&mine).unwrap();
    assert!(
        text.starts_with("build --mine\n# BEGIN ccr-relay"),
        "{text}"
    );
    assert!(text.contains(&format!("trustStore={}", dir.join("ts.jks").display())));
    assert_eq!(
        fs::metadata(&mine).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    for file in [&etc_rc, &mine] {
        let st = Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg("echo 'startup --host_jvm_args=-Devil' >> \"$0\"")
            .arg(file)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!st.success(), "nobody could append to {}", file.display());
    }
}
