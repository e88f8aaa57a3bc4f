//! Installing trust in the gateway's CA where tools ignore the CA
//! variables children get: the system store when running as root
//! ([`system`]), the user's NSS database ([`nss`]), Bazel's JVM
//! ([`bazel`]), gsutil's boto config ([`boto`]) and login shells
//! ([`profile`]).
//!
//! Each installer applies only where it applies (else it is skipped with a
//! reason), fails open with a short reason code ([`Failure`]), bounds every
//! helper program it runs ([`crate::sys::command::run_bounded`], killed after
//! [`Plan::command_timeout`]), and runs on a thread of its own:
//! [`install_all`] runs the planned ones in parallel and merges what they
//! did into one [`Report`]. Every root (`/etc`, `/usr/local/share`, the
//! home directory, the `PATH` searched for helpers) comes from [`Roots`],
//! so tests point them at temp dirs.
//!
//! Each installer also says how to take back what it put in place
//! ([`Withdrawal`]); on a clean stop [`withdraw::withdraw_all`] does so,
//! in parallel and bounded, for whatever still holds the relay's content.
//! A relay that is stopping cancels installers still running
//! ([`Plan::cancel`]): they start no further step and their helpers are
//! killed, so what they wrote is known when the withdrawal begins.

pub mod bazel;
pub mod boto;
pub mod nss;
pub mod profile;
pub mod system;
pub mod withdraw;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// Root not available or no known system store tool.
pub const SYSTEM_TRUST_UNAVAILABLE: &str = "system_trust_unavailable";
/// Writing the anchor or running the store's update tool failed.
pub const SYSTEM_TRUST_FAILED: &str = "system_trust_failed";
/// `certutil` could not create the database or add the CA.
pub const NSS_ADD_FAILED: &str = "nss_add_failed";
/// `/etc/bazel.bazelrc` could not be read or written.
pub const BAZELRC_WRITE_FAILED: &str = "bazelrc_write_failed";
/// `~/.boto` could not be written.
pub const BOTO_WRITE_FAILED: &str = "boto_write_failed";
/// `/etc/profile.d/ccr-relay-ca.sh` could not be written.
pub const PROFILE_D_WRITE_FAILED: &str = "profile_d_write_failed";
/// An installer thread panicked (a bug; the others are unaffected).
pub const INSTALL_PANICKED: &str = "install_panicked";

/// File name stem and NSS nickname of what is installed: fixed, so the next
/// start finds and replaces it.
pub const NAME: &str = "ccr-relay-gateway";

/// Default bound on each helper program.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the installers look and write.
#[derive(Debug, Clone)]
pub struct Roots {
    /// `/etc`.
    pub etc: PathBuf,
    /// `/usr/local/share`.
    pub usr_local_share: PathBuf,
    /// The user's home directory, if known.
    pub home: Option<PathBuf>,
    /// The `PATH` helpers are looked up in, and given.
    pub path: OsString,
}

impl Roots {
    /// The real machine's roots, with this `home` and `path`.
    pub fn system(home: Option<PathBuf>, path: OsString) -> Roots {
        Roots {
            etc: PathBuf::from("/etc"),
            usr_local_share: PathBuf::from("/usr/local/share"),
            home,
            path,
        }
    }

    /// The real machine's roots for this process: `HOME` and `PATH` from
    /// its environment (a default `PATH` when unset).
    pub fn from_process_env() -> Roots {
        Roots::system(
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from),
            std::env::var_os("PATH").unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            }),
        )
    }

    /// The environment helper programs run with: nothing of ours (no
    /// token, no proxy) beyond `PATH`, `HOME` and a C locale.
    pub(crate) fn helper_env(&self) -> Vec<(OsString, OsString)> {
        let mut env = vec![
            ("PATH".into(), self.path.clone()),
            ("LC_ALL".into(), "C".into()),
        ];
        if let Some(home) = &self.home {
            env.push(("HOME".into(), home.clone().into_os_string()));
        }
        env
    }
}

/// One installer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    SystemStore,
    Nss,
    Bazel,
    Boto,
    ProfileD,
}

impl Target {
    pub const ALL: [Target; 5] = [
        Target::SystemStore,
        Target::Nss,
        Target::Bazel,
        Target::Boto,
        Target::ProfileD,
    ];

    /// A short name for logs and the report.
    pub fn name(self) -> &'static str {
        match self {
            Target::SystemStore => "system trust store",
            Target::Nss => "NSS database",
            Target::Bazel => "bazelrc",
            Target::Boto => "boto config",
            Target::ProfileD => "login shell profile",
        }
    }
}

/// What to install, and where.
#[derive(Debug, Clone)]
pub struct Plan {
    pub roots: Roots,
    /// Whether this process may write the system store (effective uid 0).
    pub is_root: bool,
    /// The gateway's CA certificates, PEM, one block each (the gateway's
    /// alone: the system store already has the system's).
    pub gateway_certs: Vec<String>,
    /// The merged bundle children are pointed at (boto, login shells).
    pub bundle: PathBuf,
    /// The Java truststore and its password, for Bazel's JVM.
    pub truststore: Option<(PathBuf, String)>,
    /// The CA variables login shells get, each set to the bundle.
    pub ca_vars: Vec<String>,
    /// Which installers run.
    pub targets: Vec<Target>,
    /// Bound on each helper program.
    pub command_timeout: Duration,
    /// Set when the relay stops: installers start no further step and
    /// their helpers are killed (shared by the plan's clones).
    pub cancel: Arc<AtomicBool>,
}

impl Plan {
    /// A plan for every target, `is_root` from the effective uid, no
    /// truststore and no CA variables yet.
    pub fn new(roots: Roots, gateway_certs: Vec<String>, bundle: PathBuf) -> Plan {
        Plan {
            roots,
            // SAFETY: geteuid(2) cannot fail.
            is_root: unsafe { libc::geteuid() } == 0,
            gateway_certs,
            bundle,
            truststore: None,
            ca_vars: Vec::new(),
            targets: Target::ALL.to_vec(),
            command_timeout: COMMAND_TIMEOUT,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the relay is stopping ([`Plan::cancel`]).
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Runs a helper under [`Plan::command_timeout`], killed if the relay
    /// stops meanwhile.
    pub(crate) fn run_helper(
        &self,
        program: &Path,
        args: &[&std::ffi::OsStr],
        stdin: Option<&[u8]>,
    ) -> Result<crate::sys::command::Output, crate::sys::command::RunError> {
        crate::sys::command::run_bounded_until(
            program,
            args,
            &self.roots.helper_env(),
            stdin,
            self.command_timeout,
            &|| self.cancelled(),
        )
    }
}

/// What an installer put in place, and how to take it back on a clean
/// stop: each only while it still holds what the relay wrote (another
/// relay, or the user, may have replaced it since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawal {
    /// A file of the relay's (the login-shell script): removed.
    File { path: PathBuf, content: Vec<u8> },
    /// System-store anchors: removed, then the store's update tool run.
    Anchors {
        files: Vec<(PathBuf, Vec<u8>)>,
        tool: PathBuf,
        args: Vec<String>,
    },
    /// NSS entries (nickname, PEM) in the database `db` (`sql:DIR`):
    /// deleted with `certutil`.
    Nss {
        certutil: PathBuf,
        db: OsString,
        entries: Vec<(String, String)>,
    },
    /// The managed block in an rc file: removed, and the file with it when
    /// the relay created it and nothing else is left.
    Block {
        path: PathBuf,
        block: String,
        created: bool,
    },
}

impl Withdrawal {
    /// Which installer it undoes.
    pub fn target(&self) -> Target {
        match self {
            Withdrawal::File { .. } => Target::ProfileD,
            Withdrawal::Anchors { .. } => Target::SystemStore,
            Withdrawal::Nss { .. } => Target::Nss,
            Withdrawal::Block { .. } => Target::Bazel,
        }
    }
}

/// An installer that applied and failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub target: Target,
    /// One of the `*_FAILED` / `*_UNAVAILABLE` constants of this module.
    pub code: &'static str,
    /// Why, for logs: paths and a helper's last line of output.
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// What all installers did together.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// What was installed, and where.
    pub installed: Vec<(String, PathBuf)>,
    /// Installers that did not apply, and why.
    pub skipped: Vec<(Target, String)>,
    pub failures: Vec<Failure>,
    /// Every file written outside the relay's own directory.
    pub written_outside: Vec<PathBuf>,
    /// What a clean stop takes back ([`withdraw::withdraw_all`]).
    pub to_withdraw: Vec<Withdrawal>,
}

/// What one installer did; merged into a [`Report`].
#[derive(Debug, Default)]
pub struct Outcome {
    pub installed: Vec<(String, PathBuf)>,
    pub skipped: Option<String>,
    pub failure: Option<(&'static str, String)>,
    pub written: Vec<PathBuf>,
    pub withdraw: Vec<Withdrawal>,
}

impl Outcome {
    pub(crate) fn skipped(why: impl Into<String>) -> Outcome {
        Outcome {
            skipped: Some(why.into()),
            ..Outcome::default()
        }
    }

    pub(crate) fn failed(code: &'static str, detail: impl Into<String>) -> Outcome {
        Outcome {
            failure: Some((code, detail.into())),
            ..Outcome::default()
        }
    }

    /// Records a failure on an outcome that may already have written files.
    pub(crate) fn fail(mut self, code: &'static str, detail: impl Into<String>) -> Outcome {
        self.failure = Some((code, detail.into()));
        self
    }
}

/// Runs one installer on this thread.
pub fn install_one(target: Target, plan: &Plan) -> Outcome {
    match target {
        Target::SystemStore => system::install(plan),
        Target::Nss => nss::install(plan),
        Target::Bazel => bazel::install(plan),
        Target::Boto => boto::install(plan),
        Target::ProfileD => profile::install(plan),
    }
}

/// Runs the planned installers, one thread each, and merges what they did
/// in the plan's order. Never fails: each failure is in the report (among
/// the skipped ones when the relay stopped meanwhile, [`Plan::cancel`]).
pub fn install_all(plan: &Plan) -> Report {
    let outcomes: Vec<(Target, Outcome)> = thread::scope(|s| {
        let handles: Vec<_> = plan
            .targets
            .iter()
            .map(|&t| (t, s.spawn(move || install_one(t, plan))))
            .collect();
        handles
            .into_iter()
            .map(|(t, h)| {
                let outcome = h.join().unwrap_or_else(|_| {
                    Outcome::failed(
                        INSTALL_PANICKED,
                        format!("the {} installer panicked", t.name()),
                    )
                });
                (t, outcome)
            })
            .collect()
    });
    let mut report = Report::default();
    for (target, o) in outcomes {
        report.installed.extend(o.installed);
        if let Some(why) = o.skipped {
            report.skipped.push((target, why));
        }
        match o.failure {
            // The relay is stopping and takes back what there is: not a
            // failure worth a warning.
            Some((_, detail)) if plan.cancelled() => report
                .skipped
                .push((target, format!("the relay stopped meanwhile ({detail})"))),
            Some((code, detail)) => report.failures.push(Failure {
                target,
                code,
                detail,
            }),
            None => {}
        }
        report.written_outside.extend(o.written);
        report.to_withdraw.extend(o.withdraw);
    }
    report
}

pub use crate::sys::state_dir::writable;

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Roots under `dir` (etc/, usr/local/share/, home/ made), `PATH` =
    /// `dir/bin` (made, empty).
    pub fn roots(dir: &Path) -> Roots {
        for sub in ["etc", "usr/local/share", "home", "bin"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Roots {
            etc: dir.join("etc"),
            usr_local_share: dir.join("usr/local/share"),
            home: Some(dir.join("home")),
            path: dir.join("bin").into_os_string(),
        }
    }

    pub const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    pub fn plan(dir: &Path, targets: &[Target]) -> Plan {
        let mut plan = Plan::new(roots(dir), vec![CERT.to_string()], dir.join("bundle.pem"));
        plan.targets = targets.to_vec();
        plan.is_root = true;
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use crate::test_support::TempDir;

    #[test]
    fn helper_env_has_only_path_home_and_locale() {
        let dir = TempDir::new("helper-env");
        let roots = roots(&dir.0);
        let names: Vec<String> = roots
            .helper_env()
            .into_iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["PATH", "LC_ALL", "HOME"]);
    }
}
