//! The JDK's own truststore (`<jdk>/lib/security/cacerts`), whose
//! certificates go into our Java truststore too: naming ours with
//! `-Djavax.net.ssl.trustStore` replaces the JDK's, so a JVM that trusted
//! something extra there (a corporate CA added with `keytool`) still does.
//! The JDK is the one `JAVA_HOME` names, else the `java` on `PATH`
//! resolved through its symlinks. Failing to read it fails open with
//! [`JAVA_CACERTS_UNREADABLE`].

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use openssl::x509::X509;

use super::jks;
use crate::sys::command::find_on_path;

/// Reason code: a JDK `cacerts` exists but could not be read or parsed.
pub const JAVA_CACERTS_UNREADABLE: &str = "java_cacerts_unreadable";

/// The `cacerts` of the JDK at `jdk` (Java 9+ layout, then Java 8's JRE).
fn cacerts_in(jdk: &Path) -> Option<PathBuf> {
    ["lib/security/cacerts", "jre/lib/security/cacerts"]
        .iter()
        .map(|p| jdk.join(p))
        .find(|p| p.is_file())
}

/// The JDK's `cacerts`, if there is a JDK: `JAVA_HOME`'s (when set and
/// holding one), else that of the `java` on `PATH`, resolved through
/// symlinks (`/usr/bin/java` -> `/usr/lib/jvm/<jdk>/bin/java`).
pub fn find_cacerts(parent: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(home) = parent("JAVA_HOME").filter(|h| !h.is_empty())
        && let Some(found) = cacerts_in(Path::new(&home))
    {
        return Some(found);
    }
    let path = parent("PATH")?;
    let java = find_on_path("java", path.as_ref())?;
    let real = fs::canonicalize(java).ok()?;
    let jdk = real.parent()?.parent()?; // <jdk>/bin/java
    cacerts_in(jdk)
}

/// The trusted certificates of the JKS keystore at `path` as canonical PEM;
/// `Err` says why not (its text prefixed with [`JAVA_CACERTS_UNREADABLE`]).
pub fn read_cacerts(path: &Path) -> Result<Vec<String>, CacertsError> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| {
            f.take(jks::MAX_JKS_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|error| CacertsError::Read {
            path: path.to_path_buf(),
            error,
        })?;
    let ders =
        jks::read_jks_certificates(&bytes, jks::PASSWORD).map_err(|error| CacertsError::Parse {
            path: path.to_path_buf(),
            error,
        })?;
    Ok(ders
        .iter()
        .filter_map(|der| X509::from_der(der).ok()?.to_pem().ok())
        .filter_map(|pem| String::from_utf8(pem).ok())
        .collect())
}

/// The JDK's `cacerts` could not be used ([`read_cacerts`]).
#[derive(Debug, thiserror::Error)]
pub enum CacertsError {
    #[error("{JAVA_CACERTS_UNREADABLE}: {}: {error}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error("{JAVA_CACERTS_UNREADABLE}: {}: {error}", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        error: jks::JksError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{TempDir, self_signed};

    #[test]
    fn jks_round_trip_and_tampering() {
        let a = self_signed("jdk-a");
        let b = self_signed("jdk-b");
        let ders: Vec<Vec<u8>> = [&a, &b]
            .iter()
            .map(|c| super::super::pem::pem_to_der(&c.pem).unwrap())
            .collect();
        let bytes = jks::jks_bytes(&ders, "changeit", 1).unwrap();
        assert_eq!(
            jks::read_jks_certificates(&bytes, "changeit").unwrap(),
            ders
        );
        assert!(jks::read_jks_certificates(&bytes, "other").is_err());
        let mut cut = bytes.clone();
        cut.truncate(bytes.len() - 30);
        assert!(jks::read_jks_certificates(&cut, "changeit").is_err());
        let dir = TempDir::new("jdk-cacerts");
        let path = dir.0.join("cacerts");
        fs::write(&path, &bytes).unwrap();
        let pems = read_cacerts(&path).unwrap();
        assert_eq!(pems, vec![a.pem.clone(), b.pem.clone()]);
        fs::write(&path, b"garbage").unwrap();
        assert!(
            read_cacerts(&path)
                .unwrap_err()
                .to_string()
                .starts_with("java_cacerts_unreadable: ")
        );
    }

    #[test]
    fn finds_cacerts_from_java_home_then_path_through_symlinks() {
        let dir = TempDir::new("jdk-find");
        let jdk = dir.0.join("jvm/jdk-x");
        fs::create_dir_all(jdk.join("bin")).unwrap();
        fs::create_dir_all(jdk.join("lib/security")).unwrap();
        fs::write(jdk.join("lib/security/cacerts"), b"x").unwrap();
        fs::write(jdk.join("bin/java"), b"#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(jdk.join("bin/java"), fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.0.join("bin");
        fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(jdk.join("bin/java"), bin.join("java")).unwrap();
        let want = fs::canonicalize(jdk.join("lib/security/cacerts")).unwrap();
        let path = bin.to_string_lossy().into_owned();
        let by_path = find_cacerts(|n| (n == "PATH").then(|| path.clone()));
        assert_eq!(
            by_path.map(|p| fs::canonicalize(p).unwrap()),
            Some(want.clone())
        );
        let home = jdk.to_string_lossy().into_owned();
        let by_home = find_cacerts(|n| (n == "JAVA_HOME").then(|| home.clone()));
        assert_eq!(by_home, Some(jdk.join("lib/security/cacerts")));
        assert_eq!(find_cacerts(|_| None), None);
    }
}
