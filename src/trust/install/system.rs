//! The system trust store, when running as root: the gateway's CA alone as
//! an anchor file plus the distribution's update tool, so that programs
//! reading the system store directly (and ignoring every CA variable) trust
//! the gateway. Debian, Ubuntu and Alpine: `/usr/local/share/ca-certificates/`
//! and `update-ca-certificates`; Fedora and RHEL:
//! `/etc/pki/ca-trust/source/anchors/` and `update-ca-trust extract`.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use super::{NAME, Outcome, Plan, SYSTEM_TRUST_FAILED, SYSTEM_TRUST_UNAVAILABLE, Withdrawal};
use crate::sys::atomic_file;
use crate::sys::command::find_on_path;

/// One family of distributions' store.
#[derive(Debug, PartialEq, Eq)]
pub struct Store {
    /// Where anchors go.
    pub dir: PathBuf,
    /// The update tool.
    pub tool: PathBuf,
    /// Its arguments.
    pub args: &'static [&'static str],
}

/// The store this machine has: Debian's layout first, then Red Hat's; each
/// needs both its directory and its tool.
pub fn detect(plan: &Plan) -> Option<Store> {
    let roots = &plan.roots;
    let candidates: [(PathBuf, &str, &'static [&'static str]); 2] = [
        (
            roots.usr_local_share.join("ca-certificates"),
            "update-ca-certificates",
            &[],
        ),
        (
            roots.etc.join("pki/ca-trust/source/anchors"),
            "update-ca-trust",
            &["extract"],
        ),
    ];
    candidates.into_iter().find_map(|(dir, tool, args)| {
        let tool = find_on_path(tool, &roots.path)?;
        dir.is_dir().then_some(Store { dir, tool, args })
    })
}

/// Anchor file names: `ccr-relay-gateway.crt`, then `ccr-relay-gateway-2.crt`…
/// (one certificate per file: Debian links only a file's first).
pub fn anchor_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i {
            0 => format!("{NAME}.crt"),
            _ => format!("{NAME}-{}.crt", i + 1),
        })
        .collect()
}

/// The files in `dir` whose names `pick` takes (none when `dir` cannot be
/// read).
fn files_named(dir: &Path, pick: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| pick(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect()
}

/// Anchors of ours in `dir` that are not in `keep` (left by a start whose
/// gateway had more certificates).
fn stale_anchors(dir: &Path, keep: &[String]) -> Vec<PathBuf> {
    files_named(dir, |name| {
        name.starts_with(NAME) && name.ends_with(".crt") && !keep.iter().any(|k| k == name)
    })
}

/// Temp files of ours left in `dir` by a relay that died while writing an
/// anchor (`.ccr-relay-gateway….tmp.PID.N`, see [`atomic_file::write`])
/// whose process is gone.
fn orphaned_temp_files(dir: &Path) -> Vec<PathBuf> {
    files_named(dir, |name| {
        orphan_pid(name).is_some_and(|pid| {
            // SAFETY: kill(2) with signal 0 only checks that the pid exists.
            let probed = unsafe { libc::kill(pid, 0) };
            probed != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        })
    })
}

/// The writer's pid in a temp file name of ours (`.ccr-relay-gateway….tmp.PID.N`).
fn orphan_pid(name: &str) -> Option<libc::pid_t> {
    let rest = name.strip_prefix(&format!(".{NAME}"))?;
    let (_, tail) = rest.split_once(".tmp.")?;
    tail.split('.').next()?.parse().ok()
}

pub fn install(plan: &Plan) -> Outcome {
    if !plan.is_root {
        return Outcome::skipped("not running as root");
    }
    if plan.gateway_certs.is_empty() {
        return Outcome::skipped("no gateway certificate");
    }
    let Some(store) = detect(plan) else {
        return Outcome::failed(
            SYSTEM_TRUST_UNAVAILABLE,
            "neither update-ca-certificates with /usr/local/share/ca-certificates \
             nor update-ca-trust with /etc/pki/ca-trust/source/anchors",
        );
    };
    let names = anchor_names(plan.gateway_certs.len());
    let mut outcome = Outcome::default();
    for stale in stale_anchors(&store.dir, &names)
        .into_iter()
        .chain(orphaned_temp_files(&store.dir))
    {
        let _ = fs::remove_file(stale);
    }
    let mut files = Vec::new();
    let mut failure = None;
    for (name, cert) in names.iter().zip(&plan.gateway_certs) {
        if plan.cancelled() {
            break;
        }
        let path = store.dir.join(name);
        let pem = format!("{}\n", cert.trim_end());
        if let Err(e) = atomic_file::write(&path, pem.as_bytes(), 0o644) {
            failure = Some(format!("{}: {e}", path.display()));
            break;
        }
        outcome.written.push(path.clone());
        files.push((path, pem.into_bytes()));
    }
    if !files.is_empty() {
        outcome.withdraw.push(Withdrawal::Anchors {
            files,
            tool: store.tool.clone(),
            args: store.args.iter().map(|a| a.to_string()).collect(),
        });
    }
    if let Some(why) = failure {
        return outcome.fail(SYSTEM_TRUST_FAILED, why);
    }
    if plan.cancelled() {
        return outcome.fail(SYSTEM_TRUST_FAILED, "the relay stopped first");
    }
    let args: Vec<&OsStr> = store.args.iter().map(OsStr::new).collect();
    let tool_name = store.tool.display().to_string();
    match plan.run_helper(&store.tool, &args, None) {
        Ok(out) if out.status.success() => {
            outcome.installed.push((
                format!("system trust store ({tool_name})"),
                store.dir.join(&names[0]),
            ));
            outcome
        }
        Ok(out) => outcome.fail(
            SYSTEM_TRUST_FAILED,
            format!("{tool_name}: {}", out.reason()),
        ),
        Err(e) => outcome.fail(SYSTEM_TRUST_FAILED, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Target;
    use super::super::test_util::*;
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn leftovers_of_ours_are_told_apart() {
        let dir = TempDir::new("system-leftovers");
        // A pid that cannot exist (above the kernel's limit) and our own.
        let me = std::process::id();
        for name in [
            "ccr-relay-gateway.crt".to_string(),
            "ccr-relay-gateway-2.crt".to_string(),
            "ccr-relay-gateway-3.crt".to_string(),
            "someone-else.crt".to_string(),
            ".ccr-relay-gateway.crt.tmp.2147483646.1".to_string(),
            format!(".ccr-relay-gateway.crt.tmp.{me}.1"),
            ".other.crt.tmp.2147483646.1".to_string(),
        ] {
            fs::write(dir.0.join(name), "x").unwrap();
        }
        let keep = anchor_names(2);
        let stale = stale_anchors(&dir.0, &keep);
        assert_eq!(stale, [dir.0.join("ccr-relay-gateway-3.crt")]);
        let orphans = orphaned_temp_files(&dir.0);
        assert_eq!(
            orphans,
            [dir.0.join(".ccr-relay-gateway.crt.tmp.2147483646.1")]
        );
        assert_eq!(orphan_pid(".ccr-relay-gateway-2.crt.tmp.42.7"), Some(42));
        assert_eq!(orphan_pid("ccr-relay-gateway.crt"), None);
    }

    #[test]
    fn names_one_file_per_certificate() {
        assert_eq!(anchor_names(1), ["ccr-relay-gateway.crt"]);
        assert_eq!(
            anchor_names(3),
            [
                "ccr-relay-gateway.crt",
                "ccr-relay-gateway-2.crt",
                "ccr-relay-gateway-3.crt"
            ]
        );
    }

    #[test]
    fn not_root_is_skipped() {
        let dir = TempDir::new("sys-notroot");
        let mut plan = plan(&dir.0, &[Target::SystemStore]);
        plan.is_root = false;
        let o = install(&plan);
        assert!(o.skipped.is_some() && o.written.is_empty(), "{o:?}");
    }

    #[test]
    fn no_tool_is_unavailable() {
        let dir = TempDir::new("sys-none");
        let plan = plan(&dir.0, &[Target::SystemStore]);
        fs::create_dir_all(dir.0.join("usr/local/share/ca-certificates")).unwrap();
        let o = install(&plan);
        assert_eq!(o.failure.unwrap().0, SYSTEM_TRUST_UNAVAILABLE);
        assert!(o.written.is_empty());
    }
}
