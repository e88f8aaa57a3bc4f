//! The user's own CA files. Every CA variable the relay sets names the
//! merged bundle, overriding whatever the parent had, so that nothing is
//! lost start-up reads each file the parent named in one of
//! `env::CA_VARS`, and the `ca_certificate` of the user's wgetrc
//! ([`user_ca_files`]), and [`collect`] takes every certificate of theirs
//! the bundle does not already hold (compared as parsed certificates, so
//! duplicates are never added). Files that are the merged bundle itself or
//! the system bundle it is built from are skipped. A file that cannot be
//! read or holds no certificate is a warning, not a failure.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::pem::extract_certificates;
use crate::env::{self, CA_VARS};

/// Bound on any user file read at start-up (CA files, wgetrc).
pub(crate) const MAX_USER_FILE: u64 = 16 * 1024 * 1024;

/// Reads at most [`MAX_USER_FILE`] bytes of `path`.
pub(crate) fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    fs::File::open(path)?
        .take(MAX_USER_FILE + 1)
        .read_to_end(&mut text)?;
    if text.len() as u64 > MAX_USER_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_USER_FILE} bytes"),
        ));
    }
    Ok(text)
}

/// `~/rest` with the parent's `HOME`, as wget expands it.
pub(crate) fn expand_home(value: &str, parent: &impl Fn(&str) -> Option<String>) -> PathBuf {
    match (value.strip_prefix("~/"), parent("HOME")) {
        (Some(rest), Some(home)) if !home.is_empty() => Path::new(&home).join(rest),
        _ => PathBuf::from(value),
    }
}

/// Whether two paths name the same file (or the same path, if neither
/// exists).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The `ca_certificate` values of wgetrc text (wget ignores `_` and `-` and
/// case in command names; the last one wins, but every one is returned).
fn wgetrc_ca_certificates(text: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (name, value) = line.split_once('=')?;
            let name: String = name
                .trim()
                .chars()
                .filter(|c| *c != '_' && *c != '-')
                .collect::<String>()
                .to_ascii_lowercase();
            (name == "cacertificate" && !value.trim().is_empty()).then(|| value.trim().to_string())
        })
        .collect()
}

/// The user's CA files, each with what named it: every `CA_VARS` variable
/// the parent set, then the `ca_certificate` of the user's wgetrc.
pub fn user_ca_files(
    parent: impl Fn(&str) -> Option<String>,
    bundle: &Path,
) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    for name in CA_VARS {
        if let Some(value) = parent(name).filter(|v| !v.trim().is_empty()) {
            files.push((name.to_string(), PathBuf::from(value.trim())));
        }
    }
    if let Some(wgetrc) = env::user_wgetrc(&parent, &env::wgetrc_path(bundle))
        && let Ok(text) = read_bounded(&wgetrc)
    {
        for value in wgetrc_ca_certificates(&text) {
            files.push((
                format!("ca_certificate in {}", wgetrc.display()),
                expand_home(&value, &parent),
            ));
        }
    }
    files
}

/// What the user's files add to the bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserCerts {
    /// Certificates the bundle lacked, in the order found.
    pub added: Vec<String>,
    /// The files read, each with how many of its certificates were added.
    pub files: Vec<(PathBuf, usize)>,
    /// One line each, for stderr.
    pub warnings: Vec<String>,
}

/// Reads `files` (as [`user_ca_files`] lists them), each path once and none
/// of `skip`, and keeps the certificates not yet in `known` (which it
/// extends).
pub fn collect(
    files: Vec<(String, PathBuf)>,
    skip: &[&Path],
    known: &mut HashSet<String>,
) -> UserCerts {
    let mut out = UserCerts::default();
    let mut seen: Vec<PathBuf> = skip
        .iter()
        .map(|p| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
        .collect();
    for (named_by, path) in files {
        let canonical = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if seen.contains(&canonical) {
            continue;
        }
        seen.push(canonical);
        let text = match read_bounded(&path) {
            Ok(text) => text,
            Err(e) => {
                out.warnings.push(format!(
                    "{named_by} names {}, which cannot be read ({e}); its certificates are not in the merged bundle",
                    path.display()
                ));
                continue;
            }
        };
        let theirs = extract_certificates(&text);
        if theirs.is_empty() {
            out.warnings.push(format!(
                "{named_by} names {}, which holds no PEM certificate; nothing of it is in the merged bundle",
                path.display()
            ));
            continue;
        }
        let mut new = 0;
        for cert in theirs {
            if known.insert(cert.clone()) {
                out.added.push(cert);
                new += 1;
            }
        }
        log::info!(
            "{named_by} names {}: {new} certificate(s) added to the merged bundle",
            path.display()
        );
        out.files.push((path, new));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wgetrc_ca_certificate_parsing() {
        let text = b"# ca_certificate = /commented.pem\n\
ca_certificate=/a.pem\n  CA-Certificate  =  /b c.pem  \ncacertificate = \nca_directory = /d\n";
        assert_eq!(wgetrc_ca_certificates(text), ["/a.pem", "/b c.pem"]);
    }
}
