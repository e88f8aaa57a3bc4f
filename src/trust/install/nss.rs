//! The user's NSS database (`~/.pki/nssdb`, read by Chromium, and by other
//! NSS programs that ignore CA variables): with `certutil` on `PATH`, the
//! gateway's CA as a trusted CA for TLS servers (`C,,`), under a fixed
//! nickname so the next start deletes it before adding the current one.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{NAME, NSS_ADD_FAILED, Outcome, Plan, Withdrawal};
use crate::sys::command::{Output, RunError, find_on_path};

/// Trust flags: a CA trusted to issue TLS server certificates, nothing else.
pub const TRUST: &str = "C,,";
/// Bound on deletions of earlier entries (a nickname may hold several).
const MAX_DELETES: usize = 16;

/// Nicknames for the gateway's certificates: `ccr-relay-gateway`, then
/// `ccr-relay-gateway-2`…
pub fn nicknames(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i {
            0 => NAME.to_string(),
            _ => format!("{NAME}-{}", i + 1),
        })
        .collect()
}

/// Our nicknames in `certutil -L` output (`nickname  trust` lines under a
/// two-line header; the trust column is the last word).
pub fn our_nicknames(listing: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in listing.lines() {
        let Some((nick, trust)) = line.trim_end().rsplit_once(char::is_whitespace) else {
            continue;
        };
        if !trust.contains(',') {
            continue;
        }
        let nick = nick.trim();
        let ours = nick == NAME
            || nick
                .strip_prefix(NAME)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if ours && !found.iter().any(|f| f == nick) {
            found.push(nick.to_string());
        }
    }
    found
}

pub fn install(plan: &Plan) -> Outcome {
    let Some(path) = find_on_path("certutil", &plan.roots.path) else {
        return Outcome::skipped("certutil not on PATH");
    };
    let Some(home) = &plan.roots.home else {
        return Outcome::skipped("no home directory");
    };
    if plan.gateway_certs.is_empty() {
        return Outcome::skipped("no gateway certificate");
    }
    let db_dir = home.join(".pki/nssdb");
    let certutil = Certutil::new(plan, path, &db_dir);
    let mut outcome = Outcome::default();
    if !db_dir.join("cert9.db").exists() {
        if let Err(e) = create_database(&certutil, &db_dir) {
            return Outcome::failed(NSS_ADD_FAILED, e.to_string());
        }
        outcome.written.push(db_dir.clone());
    }
    // Earlier entries of ours go first: a gateway CA that changed must not
    // leave the old one trusted.
    if let Err(e) = delete_earlier_entries(&certutil) {
        return outcome.fail(NSS_ADD_FAILED, e.to_string());
    }
    let (added, failure) = add_gateway_certificates(plan, &certutil);
    if !added.is_empty() {
        outcome.withdraw.push(Withdrawal::Nss {
            certutil: certutil.program,
            db: certutil.db,
            entries: added,
        });
    }
    if let Some(e) = failure {
        return outcome.fail(NSS_ADD_FAILED, e.to_string());
    }
    if !outcome.written.contains(&db_dir) {
        outcome.written.push(db_dir.clone());
    }
    outcome.installed.push(("NSS database".into(), db_dir));
    outcome
}

/// `certutil` on one database (`-d sql:<dir>`), run as the plan runs its
/// helpers.
struct Certutil<'a> {
    plan: &'a Plan,
    program: PathBuf,
    db: OsString,
}

impl<'a> Certutil<'a> {
    fn new(plan: &'a Plan, program: PathBuf, db_dir: &Path) -> Certutil<'a> {
        let mut db = OsString::from("sql:");
        db.push(db_dir);
        Certutil { plan, program, db }
    }

    fn run(&self, args: &[&OsStr], stdin: Option<&[u8]>) -> Result<Output, RunError> {
        let mut all: Vec<&OsStr> = args.to_vec();
        all.push(OsStr::new("-d"));
        all.push(&self.db);
        self.plan.run_helper(&self.program, &all, stdin)
    }

    /// Runs `certutil <args>` (`step` names it in errors); an error unless
    /// it succeeds.
    fn succeed(
        &self,
        step: &'static str,
        args: &[&OsStr],
        stdin: Option<&[u8]>,
    ) -> Result<Output, NssError> {
        match self.run(args, stdin)? {
            out if out.status.success() => Ok(out),
            out => Err(NssError::Failed {
                step,
                reason: out.reason(),
            }),
        }
    }
}

/// Why the gateway's CA is not (all) in the NSS database; `Display` is the
/// failure's detail.
#[derive(Debug, thiserror::Error)]
enum NssError {
    #[error("{}: {error}", .dir.display())]
    CreateDir { dir: PathBuf, error: io::Error },
    #[error("certutil {step}: {reason}")]
    Failed { step: &'static str, reason: String },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("the relay stopped first")]
    Cancelled,
}

/// A new, empty database in `db_dir` (made mode 0700 if missing).
fn create_database(certutil: &Certutil, db_dir: &Path) -> Result<(), NssError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(db_dir)
        .map_err(|error| NssError::CreateDir {
            dir: db_dir.to_path_buf(),
            error,
        })?;
    certutil.succeed(
        "-N",
        &[OsStr::new("-N"), OsStr::new("--empty-password")],
        None,
    )?;
    Ok(())
}

/// Deletes the entries under our nicknames (each up to [`MAX_DELETES`]
/// times: a nickname may hold several); only the listing must succeed.
fn delete_earlier_entries(certutil: &Certutil) -> Result<(), NssError> {
    let os = OsStr::new;
    let out = certutil.succeed("-L", &[os("-L")], None)?;
    let listing = String::from_utf8_lossy(&out.stdout);
    for nick in our_nicknames(&listing) {
        for _ in 0..MAX_DELETES {
            match certutil.run(&[os("-D"), os("-n"), os(&nick)], None) {
                Ok(out) if out.status.success() => {}
                _ => break,
            }
        }
    }
    Ok(())
}

/// Adds the gateway's certificates under [`nicknames`], trusted [`TRUST`];
/// returns the entries that may be in the database (nickname and PEM), and
/// why it stopped early, if it did.
fn add_gateway_certificates(
    plan: &Plan,
    certutil: &Certutil,
) -> (Vec<(String, String)>, Option<NssError>) {
    let os = OsStr::new;
    let mut added = Vec::new();
    for (nick, cert) in nicknames(plan.gateway_certs.len())
        .iter()
        .zip(&plan.gateway_certs)
    {
        if plan.cancelled() {
            return (added, Some(NssError::Cancelled));
        }
        let pem = format!("{}\n", cert.trim_end());
        let args = [os("-A"), os("-n"), os(nick), os("-t"), os(TRUST), os("-a")];
        match certutil.succeed("-A", &args, Some(pem.as_bytes())) {
            Ok(_) => added.push((nick.clone(), pem)),
            Err(e @ NssError::Run(_)) => {
                // Killed mid-way, it may have added the entry.
                added.push((nick.clone(), pem));
                return (added, Some(e));
            }
            Err(e) => return (added, Some(e)),
        }
    }
    (added, None)
}

#[cfg(test)]
mod tests {
    use super::super::Target;
    use super::super::test_util::*;
    use super::*;
    use crate::test_support::TempDir;

    const LISTING: &str = "
Certificate Nickname                                         Trust Attributes
                                                             SSL,S/MIME,JAR/XPI

ccr-relay-gateway                                            C,,
corp root CA                                                 CT,C,C
ccr-relay-gateway-2                                          C,,
ccr-relay-gateway-old                                        C,,
ccr-relay-gateway                                            C,,
";

    #[test]
    fn finds_only_our_nicknames_once_each() {
        assert_eq!(
            our_nicknames(LISTING),
            ["ccr-relay-gateway", "ccr-relay-gateway-2"]
        );
        assert!(our_nicknames("").is_empty());
    }

    #[test]
    fn nickname_per_certificate() {
        assert_eq!(nicknames(2), ["ccr-relay-gateway", "ccr-relay-gateway-2"]);
    }

    #[test]
    fn without_certutil_it_is_skipped() {
        let dir = TempDir::new("nss-none");
        let o = install(&plan(&dir.0, &[Target::Nss]));
        assert_eq!(o.skipped.as_deref(), Some("certutil not on PATH"));
        assert!(!dir.0.join("home/.pki").exists());
    }
}
