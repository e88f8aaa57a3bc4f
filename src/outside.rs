//! What start-up does outside the relay's own directory once the proxy
//! listens (the contract's section 6b and the trust installers): the AWS
//! config that leaves S3 payloads unsigned, the trust installers of
//! [`install`], and the report of git settings that defeat the proxy. None
//! of it may stop or much delay start-up: each step fails open with one
//! warning line, the slow ones (helper programs, `git config`) run on
//! background threads, bounded, while the children already start.
//!
//! Only the login-shell script is installed before the children start: it
//! is quick (one file), and it is the one thing removed when the relay
//! stops ([`finish`]), which must not race its writing.
//!
//! Two variables of the relay's environment steer the installers (for
//! image builds and tests): [`INSTALL_VAR`]`=0` turns them all off (and
//! the AWS config: nothing is then written outside the relay's own
//! directory), and
//! [`INSTALL_ROOT_VAR`] puts `/etc` and `/usr/local/share` under another
//! directory.

use std::path::{Path, PathBuf};
use std::thread;

use crate::child_env::CA_VARS;
use crate::credentials::{self, GIT_CONFLICTS_TIMEOUT};
use crate::install::{self, Plan, Report, Roots, Target};
use crate::trust::{Bundle, jdk, jks};

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
/// `cacerts` cannot be read).
pub fn jdk_certificates(parent: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let Some(path) = jdk::find_cacerts(parent) else {
        return Vec::new();
    };
    jdk::read_cacerts(&path).unwrap_or_else(|why| {
        eprintln!(
            "ccr-relay: warning: {why}; the Java truststore holds the bundle's certificates only"
        );
        Vec::new()
    })
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

/// Runs the steps after the proxy listens: `~/.aws/config` (unless the
/// parent names its own with `AWS_CONFIG_FILE`, or installs are off), the login-shell script
/// now, the other installers and the git check on background threads.
/// Returns what must be undone when the relay stops ([`finish`]).
pub fn after_listen(
    bundle: &Bundle,
    truststore: Option<&Path>,
    parent: impl Fn(&str) -> Option<String>,
) -> Report {
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
    spawn_git_check();
    let Some(plan) = plan(bundle, truststore, &parent) else {
        return Report::default();
    };
    let mut now = plan.clone();
    now.targets = vec![Target::ProfileD];
    let report = install::install_all(&now);
    warn_failures(&report);
    let mut later = plan;
    later.targets.retain(|t| *t != Target::ProfileD);
    let spawned = thread::Builder::new()
        .name("install".into())
        .spawn(move || warn_failures(&install::install_all(&later)));
    if let Err(e) = spawned {
        eprintln!("ccr-relay: warning: cannot start the trust installers: {e}");
    }
    report
}

/// Warns, once, about the user's git settings that defeat the proxy
/// (bounded by [`GIT_CONFLICTS_TIMEOUT`], on its own thread).
fn spawn_git_check() {
    let _ = thread::Builder::new().name("git-check".into()).spawn(|| {
        let found = credentials::git_conflicts(GIT_CONFLICTS_TIMEOUT);
        if !found.is_empty() {
            eprintln!(
                "ccr-relay: warning: git settings that send git around the proxy: {}",
                found.join("; ")
            );
        }
    });
}

/// Undoes what must not outlive the relay (the login-shell script); one
/// warning line per file that could not be removed.
pub fn finish(report: &Report) {
    for (path, e) in install::remove_on_stop(report) {
        eprintln!(
            "ccr-relay: warning: cannot remove {}: {e}; remove it by hand",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs = pairs.to_vec();
        move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())
    }

    #[test]
    fn installs_can_be_turned_off_and_rooted_elsewhere() {
        assert!(installs_enabled(env(&[])));
        assert!(installs_enabled(env(&[(INSTALL_VAR, "1")])));
        for off in ["0", "false", "No", " off "] {
            assert!(!installs_enabled(|n: &str| (n == INSTALL_VAR).then(|| off.to_string())));
        }
        let r = roots(env(&[("HOME", "/h"), (INSTALL_ROOT_VAR, "/tmp/r"), ("PATH", "/b")]));
        assert_eq!(r.etc, Path::new("/tmp/r/etc"));
        assert_eq!(r.usr_local_share, Path::new("/tmp/r/usr/local/share"));
        assert_eq!(r.home.as_deref(), Some(Path::new("/h")));
        assert_eq!(r.path, "/b");
        let r = roots(env(&[]));
        assert_eq!(r.etc, Path::new("/etc"));
        assert_eq!(r.home, None);
    }
}
