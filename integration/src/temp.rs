//! Scratch directories for tests: unique per call, removed when dropped
//! (by `tempfile`), or kept for a post-mortem with `CCR_KEEP_TEMP=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A directory that exists while this value does. Set `CCR_KEEP_TEMP=1` to
/// keep it for a post-mortem; its path is printed on drop then.
#[derive(Debug)]
pub struct TempDir {
    /// `None` only while dropping.
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

/// Makes a fresh, empty directory under the system temp dir, its name
/// starting with `ccr-<name>-`, unique across tests and processes.
pub fn temp_dir(name: &str) -> TempDir {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // 0755, not tempfile's 0700: tests run clients as other users (nobody)
    // that must reach files in here.
    let dir = tempfile::Builder::new()
        .prefix(&format!("ccr-{clean}-"))
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir for {clean}: {e}"));
    TempDir {
        path: dir.path().to_path_buf(),
        dir: Some(dir),
    }
}

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("CCR_KEEP_TEMP").is_some_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("keeping {}", dir.keep().display());
        }
        // Otherwise `tempfile` removes the directory as `dir` drops.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_scratch_directory_is_fresh_reachable_by_others_and_gone_after_drop() {
        let a = temp_dir("unit/test");
        let b = temp_dir("unit/test");
        assert_ne!(a.path(), b.path());
        let name = a.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("ccr-unit_test-"), "{name}");
        assert_eq!(std::fs::metadata(a.path()).unwrap().mode() & 0o777, 0o755);
        std::fs::write(a.join("file"), "x").unwrap();
        let path = a.path().to_path_buf();
        if std::env::var_os("CCR_KEEP_TEMP").is_none() {
            drop(a);
            assert!(!path.exists(), "{} was left behind", path.display());
        }
    }
}
