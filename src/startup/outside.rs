//! What start-up does outside the relay's own directory once the proxy
//! listens (the contract's section 6b and the trust installers): the AWS
//! config that leaves S3 payloads unsigned, the trust installers of
//! [`install`], and the report of git settings that defeat the proxy. None
//! of it may stop or much delay start-up: each step fails open with one
//! warning line, the slow ones (helper programs, `git config`) run on
//! background threads, bounded, while the children already start.
//!
//! Only the login-shell script is installed before the children start: it
//! is quick (one file). A clean stop ([`finish`]) takes back what the
//! installers put in place machine-wide (the system-store anchor, the NSS
//! entry, the bazelrc block, the login-shell script), within
//! [`STOP_BUDGET`] in all, unless `--keep-trust`; installers still running
//! then are cancelled and waited for first. `~/.aws/config` and `~/.boto`
//! stay (they name nothing that stops working).
//!
//! Two variables of the relay's environment steer the installers (for
//! image builds and tests): [`INSTALL_VAR`]`=0` turns them all off (and
//! the AWS config: nothing is then written outside the relay's own
//! directory), and
//! [`INSTALL_ROOT_VAR`] puts `/etc` and `/usr/local/share` under another
//! directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::env::CA_VARS;
use crate::env::credentials::{self, GIT_CONFLICTS_TIMEOUT};
use crate::proxy::status::{Monitor, TrustNotes};
use crate::trust::install::{self, Plan, Report, Roots, Target};
use crate::trust::{Bundle, jdk, jks};

/// How long a clean stop may take to wait for running installers and take
/// back what they installed, in all.
pub const STOP_BUDGET: Duration = Duration::from_secs(3);
/// With `--keep-trust`, how long installers cancelled at the end of the
/// budget get to return (they start no new step; a file write is quick).
const CANCEL_GRACE: Duration = Duration::from_millis(250);

/// `0`, `false`, `no` or `off`: install nothing outside the relay's directory.
pub const INSTALL_VAR: &str = "CCR_RELAY_INSTALL";
/// A directory standing in for `/` for the system paths (`/etc`,
/// `/usr/local/share`) the installers write.
pub const INSTALL_ROOT_VAR: &str = "CCR_RELAY_INSTALL_ROOT";

/// Whether the installers run, per [`INSTALL_VAR`].
pub fn installs_enabled(parent: impl Fn(&str) -> Option<String>) -> bool {
    !parent(INSTALL_VAR).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        )
    })
}

/// The installers' roots for the relay's environment `parent`: `HOME`,
/// `PATH`, and [`INSTALL_ROOT_VAR`] if set.
pub fn roots(parent: impl Fn(&str) -> Option<String>) -> Roots {
    let home = parent("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let path = parent("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut roots = Roots::system(home, path.into());
    if let Some(root) = parent(INSTALL_ROOT_VAR).filter(|r| !r.is_empty()) {
        let root = PathBuf::from(root);
        roots.etc = root.join("etc");
        roots.usr_local_share = root.join("usr/local/share");
    }
    roots
}

/// The install plan for `bundle` (every target; the gateway's certificates
/// alone for the system store and NSS), or `None` when installs are off.
pub fn plan(
    bundle: &Bundle,
    truststore: Option<&Path>,
    parent: impl Fn(&str) -> Option<String>,
) -> Option<Plan> {
    if !installs_enabled(&parent) {
        return None;
    }
    let mut plan = Plan::new(
        roots(&parent),
        bundle.gateway_certificates().to_vec(),
        bundle.built.path.clone(),
    );
    plan.truststore = truststore.map(|t| (t.to_path_buf(), jks::PASSWORD.to_string()));
    plan.ca_vars = CA_VARS.iter().map(|v| v.to_string()).collect();
    Some(plan)
}

/// The JDK's own trusted certificates for our Java truststore (none when
/// there is no JDK; a warning line with `java_cacerts_unreadable` when its
/// `cacerts` cannot be read, a code the status page lists too).
pub fn jdk_certificates(parent: impl Fn(&str) -> Option<String>, monitor: &Monitor) -> Vec<String> {
    let Some(path) = jdk::find_cacerts(parent) else {
        return Vec::new();
    };
    jdk::read_cacerts(&path).unwrap_or_else(|why| {
        eprintln!(
            "ccr-relay: warning: {why}; the Java truststore holds the bundle's certificates only"
        );
        monitor.note_trust_failure(jdk::JAVA_CACERTS_UNREADABLE);
        Vec::new()
    })
}

/// What an installer run did, as the status page shows it.
fn trust_notes(report: &Report) -> TrustNotes {
    TrustNotes {
        installed: report
            .installed
            .iter()
            .map(|(what, path)| (what.clone(), path.display().to_string()))
            .collect(),
        failure_codes: report.failures.iter().map(|f| f.code.to_string()).collect(),
    }
}

/// One warning line per failed installer.
fn warn_failures(report: &Report) {
    for f in &report.failures {
        eprintln!(
            "ccr-relay: warning: {} not installed ({}): {}",
            f.target.name(),
            f.code,
            f.detail
        );
    }
}

/// What start-up installed, and the installers still running: what a
/// clean stop takes back ([`finish`]).
pub struct Installed {
    /// What was installed before the children started (the login-shell
    /// script).
    pub now: Report,
    /// The background installers' report, when they are done.
    later: Option<mpsc::Receiver<Report>>,
    /// Cancels the background installers.
    plan: Option<Box<Plan>>,
}

impl Installed {
    /// Nothing installed.
    pub fn nothing() -> Installed {
        Installed {
            now: Report::default(),
            later: None,
            plan: None,
        }
    }
}

/// Runs the steps after the proxy listens: `~/.aws/config` (unless the
/// parent names its own with `AWS_CONFIG_FILE`, or installs are off), the login-shell script
/// now, the other installers and the git check on background threads.
/// Returns what a clean stop takes back ([`finish`]).
pub fn after_listen(
    bundle: &Bundle,
    truststore: Option<&Path>,
    parent: impl Fn(&str) -> Option<String>,
    monitor: &Arc<Monitor>,
) -> Installed {
    let enabled = installs_enabled(&parent);
    if enabled
        && parent("AWS_CONFIG_FILE").is_none()
        && let Some(home) = parent("HOME").filter(|h| !h.is_empty())
        && let Err(e) = credentials::ensure_aws_config(Path::new(&home))
    {
        eprintln!(
            "ccr-relay: warning: {e}; S3 uploads through the gateway may fail their signature check"
        );
    }
    spawn_git_check(Arc::clone(monitor));
    let Some(plan) = plan(bundle, truststore, &parent) else {
        return Installed::nothing();
    };
    let mut now = plan.clone();
    now.targets = vec![Target::ProfileD];
    let report = install::install_all(&now);
    warn_failures(&report);
    monitor.note_trust(trust_notes(&report));
    let mut later = plan.clone();
    let monitor = Arc::clone(monitor);
    later.targets.retain(|t| *t != Target::ProfileD);
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("install".into())
        .spawn(move || {
            let report = install::install_all(&later);
            warn_failures(&report);
            monitor.note_trust(trust_notes(&report));
            let _ = tx.send(report);
        });
    let later = match spawned {
        Ok(_) => Some(rx),
        Err(e) => {
            eprintln!("ccr-relay: warning: cannot start the trust installers: {e}");
            None
        }
    };
    Installed {
        now: report,
        later,
        plan: Some(Box::new(plan)),
    }
}

/// Warns, once, about the user's git settings that defeat the proxy
/// (bounded by [`GIT_CONFLICTS_TIMEOUT`], on its own thread).
fn spawn_git_check(monitor: Arc<Monitor>) {
    let _ = thread::Builder::new()
        .name("git-check".into())
        .spawn(move || {
            let found = credentials::git_conflicts(GIT_CONFLICTS_TIMEOUT);
            monitor.set_git_conflicts(found.clone());
            if !found.is_empty() {
                eprintln!(
                    "ccr-relay: warning: git settings that send git around the proxy: {}",
                    found.join("; ")
                );
            }
        });
}

/// A clean stop: takes back what start-up installed machine-wide, within
/// [`STOP_BUDGET`] in all; with `keep_trust` keeps it. One warning line per
/// thing that stays against the rule.
pub fn finish(installed: Installed, keep_trust: bool) {
    finish_within(installed, keep_trust, Instant::now() + STOP_BUDGET);
}

/// [`finish`] with its deadline.
pub fn finish_within(installed: Installed, keep_trust: bool, deadline: Instant) {
    let Installed { now, later, plan } = installed;
    let Some(plan) = plan else {
        return;
    };
    if !keep_trust {
        // Whatever they have not started is not worth starting now.
        plan.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let mut reports = vec![now];
    if let Some(rx) = later {
        let wait = deadline.saturating_duration_since(Instant::now());
        let got = rx.recv_timeout(wait).or_else(|_| {
            // Cancelled now, they return at once: never leave one
            // writing a file in a system directory as the process exits.
            plan.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            rx.recv_timeout(CANCEL_GRACE)
        });
        match got {
            Ok(report) => reports.push(report),
            Err(_) => eprintln!(
                "ccr-relay: warning: the trust installers had not finished when the relay stopped; what they installed may stay"
            ),
        }
    }
    if keep_trust {
        return;
    }
    let items: Vec<install::Withdrawal> = reports.into_iter().flat_map(|r| r.to_withdraw).collect();
    for why in install::withdraw::withdraw_all(&items, &plan.roots.helper_env(), deadline) {
        eprintln!("ccr-relay: warning: {why}");
    }
}

/// What start-up would write outside the relay's directory, one line per
/// target, without writing anything (for `doctor`): `would  WHAT: WHERE`
/// or `skip   WHAT: why`, each with the reason code a failure would carry.
pub fn would_write(
    bundle: &Path,
    keep_trust: bool,
    parent: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let after = after_stop(keep_trust);
    let mut lines = Vec::new();
    let home = parent("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    match (&home, parent("AWS_CONFIG_FILE")) {
        _ if !installs_enabled(&parent) => {
            lines.push(format!("skip   AWS config: {INSTALL_VAR} turns it off"))
        }
        (_, Some(own)) => lines.push(format!("skip   AWS config: AWS_CONFIG_FILE={own}")),
        (Some(h), None) if h.join(".aws/config").exists() => lines.push(format!(
            "skip   AWS config: {} exists",
            h.join(".aws/config").display()
        )),
        (Some(h), None) => lines.push(format!(
            "would  AWS config: {} (kept after stop)",
            h.join(".aws/config").display()
        )),
        (None, None) => lines.push("skip   AWS config: no HOME".into()),
    }
    if !installs_enabled(&parent) {
        lines.push(format!(
            "skip   trust installers: {INSTALL_VAR} turns them off"
        ));
        return lines;
    }
    let plan = Plan::new(roots(&parent), Vec::new(), bundle.to_path_buf());
    let r = &plan.roots;
    let system = install::system::detect(&plan);
    lines.push(match (plan.is_root, system) {
        (true, Some(store)) => format!(
            "would  system trust store: {}/{}.crt, then {} ({after}; on failure {})",
            store.dir.display(),
            install::NAME,
            store.tool.display(),
            install::SYSTEM_TRUST_FAILED
        ),
        (false, _) => format!("skip   system trust store: not root ({})", install::SYSTEM_TRUST_UNAVAILABLE),
        (true, None) => format!(
            "skip   system trust store: no update-ca-certificates or update-ca-trust with its directory ({})",
            install::SYSTEM_TRUST_UNAVAILABLE
        ),
    });
    let certutil = crate::sys::command::find_on_path("certutil", &r.path);
    lines.push(match (&home, certutil) {
        (Some(h), Some(_)) => format!(
            "would  NSS database: {} as {} ({after}; on failure {})",
            h.join(".pki/nssdb").display(),
            install::NAME,
            install::NSS_ADD_FAILED
        ),
        (None, _) => "skip   NSS database: no HOME".into(),
        (_, None) => "skip   NSS database: no certutil on PATH".into(),
    });
    lines.extend(bazel_lines(&plan, &after));
    lines.push(match &home {
        Some(h) if h.join(".boto").exists() => {
            format!("skip   boto config: {} exists", h.join(".boto").display())
        }
        Some(h) => format!(
            "would  boto config: {} (kept after stop; on failure {})",
            h.join(".boto").display(),
            install::BOTO_WRITE_FAILED
        ),
        None => "skip   boto config: no HOME".into(),
    });
    let profile_d = r.etc.join("profile.d");
    lines.push(if profile_d.is_dir() && install::writable(&profile_d) {
        format!(
            "would  login shell profile: {} ({after}; on failure {})",
            profile_d.join(install::profile::FILE_NAME).display(),
            install::PROFILE_D_WRITE_FAILED
        )
    } else {
        format!(
            "skip   login shell profile: {} not writable",
            profile_d.display()
        )
    });
    lines
}

/// What the Bazel installer would do: the block in the user's own
/// `~/.bazelrc` (through a link, to the file it names), or why that file is
/// refused; and a block an earlier relay left in `/etc/bazel.bazelrc`.
fn bazel_lines(plan: &Plan, after: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let machine_wide = plan.roots.etc.join("bazel.bazelrc");
    if install::bazel::machine_wide_block_removal(&machine_wide).is_some() {
        lines.push(format!(
            "would  bazelrc: remove the managed block an earlier relay left in {} (it names a truststore other users cannot read)",
            machine_wide.display()
        ));
    }
    let Some(home) = &plan.roots.home else {
        lines.push(
            "skip   bazelrc: no HOME (the block goes to ~/.bazelrc, never /etc/bazel.bazelrc)"
                .into(),
        );
        return lines;
    };
    let rc = home.join(install::bazel::RC_NAME);
    lines.push(match install::bazel::target(&rc) {
        Ok(Some((real, _)))
            if install::bazel::left_by_a_relay(&real) =>
        {
            format!(
                "would  bazelrc: a managed block in {}, which holds only the block a relay that did not stop cleanly left (the file goes with the block; {after}; on failure {})",
                real.display(),
                install::BAZELRC_WRITE_FAILED
            )
        }
        Ok(Some((real, _))) => format!(
            "would  bazelrc: a managed block in {} (the user's own; {after}; on failure {})",
            real.display(),
            install::BAZELRC_WRITE_FAILED
        ),
        Ok(None) => format!(
            "would  bazelrc: a managed block in {}, created 0644 (the user's own; {after}; on failure {})",
            rc.display(),
            install::BAZELRC_WRITE_FAILED
        ),
        Err(why) => format!("refuse bazelrc: {why} ({})", install::BAZELRC_WRITE_FAILED),
    });
    lines
}

/// What happens to a trust entry when the relay stops, as `doctor` says it.
fn after_stop(keep_trust: bool) -> String {
    if keep_trust {
        "kept after stop: --keep-trust".into()
    } else {
        format!(
            "removed on a clean stop, within {} s; --keep-trust keeps it",
            STOP_BUDGET.as_secs()
        )
    }
}

/// `doctor`'s sections for this module: what start-up would write outside
/// the relay's directory, and the git settings that defeat the proxy.
pub fn print_doctor(bundle: &Path, keep_trust: bool, parent: impl Fn(&str) -> Option<String>) {
    out!();
    out!(
        "outside the relay's directory: what start-up would write (a running relay's status page lists what it did write)"
    );
    for line in would_write(bundle, keep_trust, &parent) {
        out!("  {line}");
    }
    out!();
    out!("git settings that defeat the proxy");
    let found = credentials::git_conflicts(GIT_CONFLICTS_TIMEOUT);
    if found.is_empty() {
        out!("  ok    none found (git config --global and --system)");
    }
    for line in found {
        out!("  warn  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs = pairs.to_vec();
        move |n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn installs_can_be_turned_off_and_rooted_elsewhere() {
        assert!(installs_enabled(env(&[])));
        assert!(installs_enabled(env(&[(INSTALL_VAR, "1")])));
        for off in ["0", "false", "No", " off "] {
            assert!(!installs_enabled(
                |n: &str| (n == INSTALL_VAR).then(|| off.to_string())
            ));
        }
        let r = roots(env(&[
            ("HOME", "/h"),
            (INSTALL_ROOT_VAR, "/tmp/r"),
            ("PATH", "/b"),
        ]));
        assert_eq!(r.etc, Path::new("/tmp/r/etc"));
        assert_eq!(r.usr_local_share, Path::new("/tmp/r/usr/local/share"));
        assert_eq!(r.home.as_deref(), Some(Path::new("/h")));
        assert_eq!(r.path, "/b");
        let r = roots(env(&[]));
        assert_eq!(r.etc, Path::new("/etc"));
        assert_eq!(r.home, None);
    }

    #[test]
    fn doctor_lists_what_would_be_written_without_writing() {
        let dir = crate::test_support::TempDir::new("outside-would");
        let root = dir.0.join("root");
        std::fs::create_dir_all(root.join("etc/profile.d")).unwrap();
        let home = dir.0.join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join(".boto"), "").unwrap();
        let (h, r) = (
            home.to_string_lossy().into_owned(),
            root.to_string_lossy().into_owned(),
        );
        let parent = move |n: &str| match n {
            "HOME" => Some(h.clone()),
            INSTALL_ROOT_VAR => Some(r.clone()),
            "PATH" => Some("/nonexistent".into()),
            _ => None,
        };
        let lines = would_write(&dir.0.join("b.crt"), false, &parent);
        let text = lines.join("\n");
        assert!(text.contains("would  AWS config: "), "{text}");
        assert!(text.contains("skip   boto config: "), "{text}");
        assert!(text.contains("skip   NSS database: no certutil"), "{text}");
        assert!(text.contains("system_trust_unavailable"), "{text}");
        assert!(
            text.contains("login shell profile: ")
                && text.contains("removed on a clean stop, within 3 s; --keep-trust keeps it"),
            "{text}"
        );
        assert!(
            text.contains("profile_d_write_failed") && text.contains("bazelrc_write_failed"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "would  bazelrc: a managed block in {}, created",
                home.join(".bazelrc").display()
            )),
            "{text}"
        );
        assert!(!text.contains("etc/bazel.bazelrc"), "{text}");
        assert_eq!(lines.len(), 6);
        // A ~/.bazelrc a crashed relay left holding only its block: this
        // start takes the file as its own (a clean stop removes it).
        let left = install::bazel::block("/x/ts.jks", "changeit").unwrap();
        std::fs::write(home.join(".bazelrc"), left).unwrap();
        let text = would_write(&dir.0.join("b.crt"), false, &parent).join("\n");
        assert!(
            text.contains("a relay that did not stop cleanly left (the file goes with the block; removed on a clean stop"),
            "{text}"
        );
        std::fs::write(home.join(".bazelrc"), "build --a\n").unwrap();
        let text = would_write(&dir.0.join("b.crt"), false, &parent).join("\n");
        assert!(text.contains("(the user's own; "), "{text}");
        std::fs::remove_file(home.join(".bazelrc")).unwrap();
        let kept = would_write(&dir.0.join("b.crt"), true, &parent).join("\n");
        assert!(!kept.contains("removed on a clean stop"), "{kept}");
        assert_eq!(
            kept.matches("kept after stop: --keep-trust").count(),
            2,
            "{kept}"
        );
        // Nothing was written.
        assert!(!home.join(".aws").exists());
        assert!(!root.join("etc/profile.d/ccr-relay-ca.sh").exists());
        assert!(!root.join("etc/bazel.bazelrc").exists());
        assert!(!home.join(".bazelrc").exists());
    }

    #[test]
    fn doctor_predicts_the_machine_wide_bazelrc_as_the_installer_treats_it() {
        // The installer removes an earlier relay's block from
        // /etc/bazel.bazelrc only when that is a regular file it may write
        // (a link is left alone): doctor says the same.
        let dir = crate::test_support::TempDir::new("outside-bazel-etc");
        let root = dir.0.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let elsewhere = dir.0.join("elsewhere.bazelrc");
        let block = install::bazel::block("/x/ts.jks", "changeit").unwrap();
        std::fs::write(&elsewhere, &block).unwrap();
        let machine_wide = root.join("etc/bazel.bazelrc");
        std::os::unix::fs::symlink(&elsewhere, &machine_wide).unwrap();
        let r = root.to_string_lossy().into_owned();
        let parent = move |n: &str| match n {
            INSTALL_ROOT_VAR => Some(r.clone()),
            "PATH" => Some("/nonexistent".into()),
            _ => None,
        };
        let text = would_write(&dir.0.join("b.crt"), false, &parent).join("\n");
        assert!(
            !text.contains("remove the managed block"),
            "a link is left alone, so doctor must not say it would be changed: {text}"
        );
        // A regular file with the block: both say it goes.
        std::fs::remove_file(&machine_wide).unwrap();
        std::fs::write(&machine_wide, format!("build --x\n{block}")).unwrap();
        let text = would_write(&dir.0.join("b.crt"), false, &parent).join("\n");
        assert!(text.contains("remove the managed block"), "{text}");
    }
}
