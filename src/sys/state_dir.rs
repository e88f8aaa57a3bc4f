//! Where the relay keeps the files children trust (the CA bundle, and next
//! to it the Java truststore, the wgetrc and the README), and the rule
//! that keeps another user from replacing them: the directory must be the
//! relay's own (owned by its effective uid, neither group- nor
//! world-writable), or the relay refuses it and fails open.
//!
//! The default is `$HOME/.ccr`. With no `HOME` it is never a shared
//! directory: `$XDG_RUNTIME_DIR/ccr-relay` when `XDG_RUNTIME_DIR` is set
//! and the relay's own, else a fresh directory made with `mkdtemp(3)`
//! under the temp directory. That last one cannot be named before start-up
//! makes it (and `doctor` makes nothing), so the configuration holds the
//! `mkdtemp` template ([`FRESH_TEMPLATE`]) until [`resolve`] replaces it.

use std::ffi::{CString, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::sys::lock::lock;

/// The bundle's file name in a default directory.
pub const BUNDLE_FILE: &str = "ca-bundle.crt";
/// The directory under `HOME`.
pub const HOME_DIR: &str = ".ccr";
/// The directory under `XDG_RUNTIME_DIR`.
pub const RUNTIME_DIR: &str = "ccr-relay";
/// The `mkdtemp(3)` template of the fresh directory's name.
pub const FRESH_TEMPLATE: &str = "ccr-relay.XXXXXX";

/// The relay's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() }
}

/// Where the bundle goes by default, from the relay's environment `env`:
/// `$HOME/.ccr/ca-bundle.crt`; with no `HOME`,
/// `$XDG_RUNTIME_DIR/ccr-relay/ca-bundle.crt` when that directory is the
/// relay's own ([`check`]); else the fresh directory's template
/// (`<temp dir>/ccr-relay.XXXXXX/ca-bundle.crt`, see [`is_fresh_template`]).
pub fn default_bundle(env: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = set("HOME") {
        return home.join(HOME_DIR).join(BUNDLE_FILE);
    }
    if let Some(runtime) = set("XDG_RUNTIME_DIR").filter(|d| d.is_absolute() && check(d).is_ok()) {
        return runtime.join(RUNTIME_DIR).join(BUNDLE_FILE);
    }
    let tmp = set("TMPDIR")
        .filter(|d| d.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    tmp.join(FRESH_TEMPLATE).join(BUNDLE_FILE)
}

/// Whether `bundle` is the fresh directory's template, to be made at start.
pub fn is_fresh_template(bundle: &Path) -> bool {
    bundle.file_name().is_some_and(|n| n == BUNDLE_FILE)
        && bundle
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == FRESH_TEMPLATE)
}

/// Why the relay will not keep its files in a directory.
#[derive(Debug)]
pub enum StateDirError {
    /// The directory (or a missing parent) could not be made.
    Create { dir: PathBuf, error: io::Error },
    /// The path is there but is not a directory.
    NotADirectory(PathBuf),
    /// Another uid owns the directory (or the link that names it).
    Owner { dir: PathBuf, owner: u32 },
    /// Others may write in it.
    Writable { dir: PathBuf, mode: u32 },
}

impl fmt::Display for StateDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateDirError::Create { dir, error } => write!(
                f,
                "cannot create the relay's directory {}: {error}; pass --ca-bundle in a directory of your own",
                dir.display()
            ),
            StateDirError::NotADirectory(dir) => write!(
                f,
                "{} is not a directory; pass --ca-bundle in a directory of your own",
                dir.display()
            ),
            StateDirError::Owner { dir, owner } => write!(
                f,
                "refusing {}: it is owned by uid {owner}, not by the relay's uid {}, who could replace the CA bundle children trust; pass --ca-bundle in a directory of your own",
                dir.display(),
                euid()
            ),
            StateDirError::Writable { dir, mode } => write!(
                f,
                "refusing {}: its mode {mode:04o} lets others write in it and replace the CA bundle children trust; chmod go-w it or pass --ca-bundle in a directory of your own",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for StateDirError {}

/// Whether `dir` is the relay's own: owned by its effective uid and
/// neither group- nor world-writable (links followed; a link on the way
/// must itself be the relay's or root's, or its owner could point it
/// elsewhere).
pub fn check(dir: &Path) -> Result<(), StateDirError> {
    let me = euid();
    let link = fs::symlink_metadata(dir).map_err(|error| StateDirError::Create {
        dir: dir.to_path_buf(),
        error,
    })?;
    if link.file_type().is_symlink() && link.uid() != me && link.uid() != 0 {
        return Err(StateDirError::Owner {
            dir: dir.to_path_buf(),
            owner: link.uid(),
        });
    }
    let meta = fs::metadata(dir).map_err(|error| StateDirError::Create {
        dir: dir.to_path_buf(),
        error,
    })?;
    if !meta.is_dir() {
        return Err(StateDirError::NotADirectory(dir.to_path_buf()));
    }
    if meta.uid() != me {
        return Err(StateDirError::Owner {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(StateDirError::Writable {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Makes `dir` if missing (mode 0700, missing parents too), then
/// [`check`]s it: checked after it exists, so one made by another user in
/// between is refused too.
pub fn prepare(dir: &Path) -> Result<(), StateDirError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| StateDirError::Create {
                dir: dir.to_path_buf(),
                error,
            })?;
    }
    check(dir)
}

/// The fresh directory made for this process, once (`serve` may start up
/// several times).
static FRESH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The bundle path start-up uses for `bundle`: the fresh template replaced
/// by a directory made now with `mkdtemp(3)` (mode 0700, the relay's own;
/// the same one for every start-up of this process); any other path as is.
pub fn resolve(bundle: &Path) -> Result<PathBuf, StateDirError> {
    if !is_fresh_template(bundle) {
        return Ok(bundle.to_path_buf());
    }
    let template = bundle.parent().unwrap_or(Path::new(FRESH_TEMPLATE));
    let mut fresh = lock(&FRESH);
    if let Some(dir) = fresh.as_ref().filter(|d| check(d).is_ok()) {
        return Ok(dir.join(BUNDLE_FILE));
    }
    let dir = make_fresh(template).map_err(|error| StateDirError::Create {
        dir: template.to_path_buf(),
        error,
    })?;
    *fresh = Some(dir.clone());
    Ok(dir.join(BUNDLE_FILE))
}

/// A fresh directory from `template`. A temp directory that does not exist
/// (an image with no `/tmp`) is made first, mode 0700: made by the relay,
/// it is its own, so no other user can have put anything in it.
fn make_fresh(template: &Path) -> io::Result<PathBuf> {
    if let Some(parent) = template.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    mkdtemp(template)
}

fn mkdtemp(template: &Path) -> io::Result<PathBuf> {
    let c = CString::new(template.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
    let mut bytes = c.into_bytes_with_nul();
    // SAFETY: a writable NUL-terminated buffer ending in XXXXXX.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(io::Error::last_os_error());
    }
    bytes.pop();
    Ok(PathBuf::from(OsString::from_vec(bytes)))
}

/// For `doctor`: where the bundle's directory would be and whether start-up
/// would take it, without making anything. `Ok` says what start-up would
/// do; `Err` why it would refuse (the proxy then stays off).
pub fn inspect(bundle: &Path) -> Result<String, InspectError> {
    if is_fresh_template(bundle) {
        let parent = bundle
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/tmp"));
        return Ok(format!(
            "no HOME (and no XDG_RUNTIME_DIR of the relay's own): a fresh private directory {} made with mkdtemp at start (mode 0700)",
            parent.join(FRESH_TEMPLATE).display()
        ));
    }
    let dir = match bundle.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if fs::symlink_metadata(dir).is_ok() {
        check(dir)?;
        return if writable(dir) {
            Ok(format!("in {}, the relay's own", dir.display()))
        } else {
            Err(InspectError::NotWritable(dir.to_path_buf()))
        };
    }
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    if !probe.is_dir() {
        return Err(InspectError::NotADirectory(probe.to_path_buf()));
    }
    if !writable(probe) {
        return Err(InspectError::NotWritable(probe.to_path_buf()));
    }
    Ok(format!("{} would be created (mode 0700)", dir.display()))
}

/// Why start-up would refuse the bundle's directory ([`inspect`]).
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// It is there and not the relay's own ([`check`]).
    #[error(transparent)]
    Refused(#[from] StateDirError),
    /// It (or the nearest existing directory above it) is not writable.
    #[error("{} is not writable", .0.display())]
    NotWritable(PathBuf),
    /// The nearest existing path above it is not a directory.
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
}

/// Whether this process may write `path` (access(2) with W_OK: the real
/// answer for root, read-only mounts and ACLs alike).
pub fn writable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_temp_directory_is_made_private_first() {
        let base = TempDir::new("state-dir-missing-tmp");
        let template = base.0.join("no-tmp-here").join(FRESH_TEMPLATE);
        let dir = make_fresh(&template).unwrap();
        assert!(dir.starts_with(base.0.join("no-tmp-here")));
        let parent = fs::metadata(base.0.join("no-tmp-here")).unwrap();
        assert_eq!(parent.mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }
    use crate::test_support::TempDir;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn inspect_says_why_a_directory_would_be_refused() {
        let base = TempDir::new("state-dir-inspect");
        let file = base.0.join("file");
        fs::write(&file, "x").unwrap();
        let under_file = file.join("sub").join(BUNDLE_FILE);
        assert_eq!(
            inspect(&under_file).unwrap_err().to_string(),
            format!("{} is not a directory", file.display())
        );
        let fresh = base.0.join("new").join(BUNDLE_FILE);
        assert_eq!(
            inspect(&fresh).unwrap(),
            format!(
                "{} would be created (mode 0700)",
                base.0.join("new").display()
            )
        );
    }

    fn env(pairs: &[(&'static str, String)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let pairs = pairs.to_vec();
        move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.into())
    }

    #[test]
    fn without_home_the_default_is_never_a_shared_directory() {
        let dir = TempDir::new("state-default");
        assert_eq!(
            default_bundle(env(&[("HOME", "/h".into())])),
            Path::new("/h/.ccr/ca-bundle.crt")
        );
        let none = default_bundle(env(&[]));
        assert!(!none.starts_with("/tmp/.ccr"), "{}", none.display());
        assert!(is_fresh_template(&none), "{}", none.display());
        assert_eq!(none, Path::new("/tmp/ccr-relay.XXXXXX/ca-bundle.crt"));
        // An XDG_RUNTIME_DIR of the relay's own.
        let runtime = dir.0.join("run");
        fs::create_dir(&runtime).unwrap();
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
        let xdg = env(&[("XDG_RUNTIME_DIR", runtime.display().to_string())]);
        assert_eq!(
            default_bundle(&xdg),
            runtime.join("ccr-relay/ca-bundle.crt")
        );
        // One that others may write in is not used.
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(is_fresh_template(&default_bundle(&xdg)));
    }

    #[test]
    fn resolve_makes_one_private_directory_and_keeps_it() {
        let dir = TempDir::new("state-fresh");
        let template = dir.0.join(FRESH_TEMPLATE).join(BUNDLE_FILE);
        let first = resolve(&template).unwrap();
        assert!(!is_fresh_template(&first));
        let made = first.parent().unwrap();
        assert!(made.starts_with(&dir.0), "{}", made.display());
        assert_eq!(fs::metadata(made).unwrap().mode() & 0o777, 0o700);
        assert!(check(made).is_ok());
        assert_eq!(resolve(&template).unwrap(), first, "made once");
        let other = dir.0.join("x/ca.crt");
        assert_eq!(resolve(&other).unwrap(), other);
    }

    #[test]
    fn a_directory_others_may_write_in_is_refused() {
        let dir = TempDir::new("state-check");
        let d = dir.0.join("d");
        prepare(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        for mode in [0o770, 0o707, 0o1777] {
            fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
            let err = check(&d).unwrap_err();
            assert!(matches!(err, StateDirError::Writable { .. }), "{err}");
            assert!(err.to_string().contains("refusing"), "{err}");
            assert!(inspect(&d.join("b.crt")).is_err());
        }
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check(&d).is_ok());
        assert!(inspect(&d.join("b.crt")).is_ok());
        let file = dir.0.join("f");
        fs::write(&file, "").unwrap();
        assert!(matches!(check(&file), Err(StateDirError::NotADirectory(_))));
        let missing = dir.0.join("m/n/b.crt");
        assert!(inspect(&missing).unwrap().contains("would be created"));
        assert!(!dir.0.join("m").exists());
    }
}
