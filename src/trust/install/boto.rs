//! gsutil (and other boto users) read their CA file from `~/.boto`, not from
//! any variable: when the user has no `~/.boto`, one naming the bundle.
//! An existing file is the user's and is never touched.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{BOTO_WRITE_FAILED, Outcome, Plan};

/// The file's text.
pub fn boto_text(bundle: &Path) -> String {
    format!("[Boto]\nca_certificates_file = {}\n", bundle.display())
}

pub fn install(plan: &Plan) -> Outcome {
    let Some(home) = &plan.roots.home else {
        return Outcome::skipped("no home directory");
    };
    if !home.is_dir() {
        return Outcome::skipped(format!("{} is not a directory", home.display()));
    }
    let path = home.join(".boto");
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Outcome::skipped(format!("{} exists", path.display()));
        }
        Err(e) => return Outcome::failed(BOTO_WRITE_FAILED, format!("{}: {e}", path.display())),
    };
    if let Err(e) = file
        .write_all(boto_text(&plan.bundle).as_bytes())
        .and_then(|()| file.sync_all())
    {
        drop(file);
        let _ = fs::remove_file(&path);
        return Outcome::failed(BOTO_WRITE_FAILED, format!("{}: {e}", path.display()));
    }
    Outcome {
        installed: vec![("boto config".into(), path.clone())],
        written: vec![path],
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Target;
    use super::super::test_util::*;
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn text() {
        assert_eq!(
            boto_text(Path::new("/run/ccr/ca-bundle.pem")),
            "[Boto]\nca_certificates_file = /run/ccr/ca-bundle.pem\n"
        );
    }

    #[test]
    fn written_only_when_absent() {
        let dir = TempDir::new("boto");
        let plan = plan(&dir.0, &[Target::Boto]);
        let path = dir.0.join("home/.boto");
        let o = install(&plan);
        assert_eq!(o.written, std::slice::from_ref(&path));
        assert_eq!(fs::read_to_string(&path).unwrap(), boto_text(&plan.bundle));
        fs::write(&path, "[Credentials]\nmine = 1\n").unwrap();
        let o = install(&plan);
        assert!(o.skipped.is_some() && o.written.is_empty(), "{o:?}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "[Credentials]\nmine = 1\n"
        );
    }

    #[test]
    fn unwritable_home_is_boto_write_failed() {
        let dir = TempDir::new("boto-ro");
        let mut plan = plan(&dir.0, &[Target::Boto]);
        // No one, root included, can create a file in /proc/self.
        plan.roots.home = Some("/proc/self".into());
        let (code, _) = install(&plan).failure.unwrap();
        assert_eq!(code, BOTO_WRITE_FAILED);
    }
}
