//! What the unit tests of several modules share: self-signed certificates
//! made in memory (so no test needs the `openssl` tool; the code is in
//! `cert.rs`, which the integration crate compiles too), an in-test
//! gateway (`gateway.rs`) for the dial and the connection flow, and
//! [`TempDir`], a thin shim over the `tempfile` crate for the modules whose
//! tests still name it by its old shape (`dir.0`).

mod cert;
pub mod gateway;

use std::path::PathBuf;

pub use cert::{TestCert, self_signed};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ccr-{tag}-"))
            .tempdir()
            .unwrap();
        TempDir(dir.path().to_path_buf(), dir)
    }
}
