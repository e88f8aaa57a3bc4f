//! Scratch directories for tests: unique per call, removed when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A directory that exists while this value does. Set `CCR_KEEP_TEMP=1` to
/// keep it for a post-mortem; its path is printed on drop then.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

/// Makes a fresh, empty directory under the system temp dir, its name
/// starting with `ccr-<name>-`, unique across tests and processes.
pub fn temp_dir(name: &str) -> TempDir {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
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
    let path = std::env::temp_dir().join(format!(
        "ccr-{clean}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&path)
        .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
    TempDir { path }
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
        if std::env::var_os("CCR_KEEP_TEMP").is_some_and(|v| v == "1") {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
