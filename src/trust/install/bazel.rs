//! Bazel's JVM: Bazel starts its own server JVM with options of its own,
//! so the relay's truststore is given to it as `startup --host_jvm_args`
//! lines in the user's own `~/.bazelrc` (Bazel reads it after the
//! machine's rc files). Not `/etc/bazel.bazelrc`: the truststore sits in
//! the relay's private directory, which every other user's Bazel could not
//! read, so their JVMs would fail to start (and everyone's once that
//! directory is gone); a block an earlier relay left there is removed.
//! The lines sit in a managed block between fixed markers, replaced in
//! place at each start, never duplicated; the rest of the file is the
//! user's and is kept byte for byte.
//!
//! A `~/.bazelrc` that is a link is the file it points to, written in
//! place (the link stays); the file must be the relay's own (owned by its
//! uid, neither group- nor world-writable), or it is refused with a
//! reason. Its mode is the file's, never the link's, and never loosened.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{BAZELRC_WRITE_FAILED, Outcome, Plan, Withdrawal, writable};
use crate::sys::atomic_file;

/// First line of the managed block.
pub const BEGIN: &str = "# BEGIN ccr-relay managed block (rewritten at each start; do not edit)";
/// Last line of the managed block.
pub const END: &str = "# END ccr-relay managed block";
/// The user's rc file, in the home directory.
pub const RC_NAME: &str = ".bazelrc";
/// Largest bazelrc read.
const MAX_RC: u64 = 1024 * 1024;

/// The managed block, markers included, ending in a newline. `None` when a
/// value holds whitespace or a quote, which the rc file's word splitting
/// would break.
pub fn block(truststore: &str, password: &str) -> Option<String> {
    let clean = |s: &str| {
        !s.is_empty()
            && !s
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    };
    (clean(truststore) && clean(password)).then(|| {
        format!(
            "{BEGIN}\n\
             startup --host_jvm_args=-Djavax.net.ssl.trustStore={truststore}\n\
             startup --host_jvm_args=-Djavax.net.ssl.trustStorePassword={password}\n\
             {END}\n"
        )
    })
}

/// `existing` with its managed blocks replaced by `block`: in place of the
/// first, later ones dropped, or appended when there is none. A begin
/// marker with no end (a file cut short) loses only the marker and the
/// `startup --host_jvm_args=-Djavax.net.ssl.` lines after it.
pub fn replace_block(existing: &str, block: &str) -> String {
    let mut out = String::with_capacity(existing.len() + block.len());
    let mut placed = false;
    let lines: Vec<&str> = existing.split_inclusive('\n').collect();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_end() != BEGIN {
            out.push_str(lines[i]);
            i += 1;
            continue;
        }
        let end = lines[i..].iter().position(|l| l.trim_end() == END);
        let skip_to = match end {
            Some(off) => i + off + 1,
            None => {
                let mut j = i + 1;
                while j < lines.len()
                    && lines[j].starts_with("startup --host_jvm_args=-Djavax.net.ssl.")
                {
                    j += 1;
                }
                j
            }
        };
        if !placed {
            out.push_str(block);
            placed = true;
        }
        i = skip_to;
    }
    if !placed {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(block);
    }
    out
}

/// The file a write to `path` goes to, and its mode: `path` itself, or
/// what a link there points to; `None` when there is no file yet. `Err`
/// is why the file is refused.
pub fn target(path: &Path) -> Result<Option<(PathBuf, u32)>, String> {
    let link = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let real = if link.file_type().is_symlink() {
        fs::canonicalize(path).map_err(|e| {
            format!(
                "{} is a link that cannot be followed ({e}); refusing it",
                path.display()
            )
        })?
    } else {
        path.to_path_buf()
    };
    let meta = fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file; refusing it",
            real.display()
        ));
    }
    let me = crate::sys::state_dir::euid();
    if meta.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, not the relay's uid {me}; refusing it",
            real.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: others may write in it (and so give Bazel's JVM options); refusing it",
            real.display()
        ));
    }
    Ok(Some((real, mode)))
}

/// Reads an rc file of at most [`MAX_RC`] bytes.
pub(super) fn read_rc(path: &Path) -> io::Result<String> {
    let f = fs::File::open(path)?;
    let mut s = String::new();
    io::Read::read_to_string(&mut io::Read::take(f, MAX_RC + 1), &mut s)?;
    // Never write back a file cut at the cap.
    if s.len() as u64 > MAX_RC {
        return Err(io::Error::other("larger than 1 MiB"));
    }
    Ok(s)
}

/// `existing` without any managed block (the inverse of [`replace_block`]).
pub fn without_block(existing: &str) -> String {
    if !existing.split('\n').any(|l| l.trim_end() == BEGIN) {
        return existing.to_string();
    }
    let marker = "\u{0}ccr-relay-removed\u{0}\n";
    replace_block(existing, marker).replace(marker, "")
}

/// Whether `text` holds a relay's managed block and nothing else but
/// blank lines: a file a relay made and did not take back.
fn only_a_relay_block(text: &str) -> bool {
    let rest = without_block(text);
    rest != text && rest.trim().is_empty()
}

/// Whether the rc file at `real` holds only a relay's block (what the
/// installer then takes as made by the relay; for `doctor`).
pub fn left_by_a_relay(real: &Path) -> bool {
    read_rc(real).is_ok_and(|t| only_a_relay_block(&t))
}

/// The machine-wide rc file's text without the managed block an earlier
/// relay left there, and the file's mode; `None` when nothing is to be
/// done: no block, or not a regular file the relay may write (a link
/// there is left alone). What the installer does and `doctor` predicts.
pub fn machine_wide_block_removal(path: &Path) -> Option<(String, u32)> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || !writable(path) {
        return None;
    }
    let old = read_rc(path).ok()?;
    let new = without_block(&old);
    (new != old).then(|| (new, meta.permissions().mode() & 0o7777))
}

/// Removes a managed block an earlier relay left in the machine-wide
/// `/etc/bazel.bazelrc` (it names a truststore other users cannot read).
/// Only a regular file (a link there is left alone), its mode kept.
fn remove_machine_wide_block(plan: &Plan, outcome: &mut Outcome) {
    let path = plan.roots.etc.join("bazel.bazelrc");
    if let Some((new, mode)) = machine_wide_block_removal(&path)
        && atomic_file::write(&path, new.as_bytes(), mode).is_ok()
    {
        outcome.written.push(path);
    }
}

pub fn install(plan: &Plan) -> Outcome {
    let Some((truststore, password)) = &plan.truststore else {
        return Outcome::skipped("no Java truststore");
    };
    let Some(home) = &plan.roots.home else {
        return Outcome::skipped("no home directory");
    };
    let path = home.join(RC_NAME);
    let Some(block) = block(&truststore.to_string_lossy(), password) else {
        return Outcome::failed(
            BAZELRC_WRITE_FAILED,
            "the truststore path or password holds whitespace or quotes",
        );
    };
    let mut outcome = Outcome::default();
    remove_machine_wide_block(plan, &mut outcome);
    let (real, old, mode) = match target(&path) {
        Ok(Some((real, mode))) => match read_rc(&real) {
            Ok(old) => (real, Some(old), mode),
            Err(e) => {
                return outcome.fail(BAZELRC_WRITE_FAILED, format!("{}: {e}", real.display()));
            }
        },
        Ok(None) if home.is_dir() => (path.clone(), None, 0o644),
        Ok(None) => return Outcome::skipped(format!("{} is not a directory", home.display())),
        Err(why) => return outcome.fail(BAZELRC_WRITE_FAILED, why),
    };
    // A file holding nothing but a relay's block was made by a relay that
    // did not stop cleanly (a crash leaves its entries): this start owns
    // it, so its clean stop removes the file as the first one would have.
    let created = old.as_deref().is_none_or(only_a_relay_block);
    let old = old.unwrap_or_default();
    let new = replace_block(&old, &block);
    if plan.cancelled() {
        return outcome.fail(BAZELRC_WRITE_FAILED, "the relay stopped first");
    }
    if new != old {
        if let Err(e) = atomic_file::write(&real, new.as_bytes(), mode) {
            return outcome.fail(BAZELRC_WRITE_FAILED, format!("{}: {e}", real.display()));
        }
        outcome.written.push(real.clone());
    }
    outcome.installed.push(("bazelrc".into(), real.clone()));
    outcome.withdraw.push(Withdrawal::Block {
        path: real,
        block,
        created,
    });
    outcome
}

#[cfg(test)]
mod tests {
    use super::super::Target;
    use super::super::test_util::*;
    use super::*;
    use crate::test_support::TempDir;

    fn b(ts: &str) -> String {
        block(ts, "changeit").unwrap()
    }

    #[test]
    fn block_text() {
        assert_eq!(
            b("/run/ccr/truststore.jks"),
            format!(
                "{BEGIN}\nstartup --host_jvm_args=-Djavax.net.ssl.trustStore=/run/ccr/truststore.jks\n\
                 startup --host_jvm_args=-Djavax.net.ssl.trustStorePassword=changeit\n{END}\n"
            )
        );
        assert!(block("/a b/ts.jks", "changeit").is_none());
        assert!(block("/ts.jks", "pass\"word").is_none());
    }

    #[test]
    fn appended_to_an_empty_or_unterminated_file() {
        assert_eq!(replace_block("", &b("/x")), b("/x"));
        assert_eq!(
            replace_block("build --jobs=4", &b("/x")),
            format!("build --jobs=4\n{}", b("/x"))
        );
    }

    #[test]
    fn replaced_in_place_keeping_the_users_lines() {
        let old = format!("build --a\n{}test --b\n", b("/old"));
        let new = replace_block(&old, &b("/new"));
        assert_eq!(new, format!("build --a\n{}test --b\n", b("/new")));
        // Idempotent: a second start changes nothing.
        assert_eq!(replace_block(&new, &b("/new")), new);
    }

    #[test]
    fn duplicates_collapse_into_the_first() {
        let old = format!("{}mid\n{}end\n", b("/one"), b("/two"));
        assert_eq!(
            replace_block(&old, &b("/new")),
            format!("{}mid\nend\n", b("/new"))
        );
    }

    #[test]
    fn a_begin_without_end_loses_only_our_lines() {
        let old = format!(
            "keep\n{BEGIN}\nstartup --host_jvm_args=-Djavax.net.ssl.trustStore=/old\nbuild --user\n"
        );
        assert_eq!(
            replace_block(&old, &b("/new")),
            format!("keep\n{}build --user\n", b("/new"))
        );
    }

    #[test]
    fn without_block_is_the_inverse() {
        assert_eq!(without_block("build --a"), "build --a");
        let with = replace_block("build --a\ntest --b\n", &b("/x"));
        assert_eq!(without_block(&with), "build --a\ntest --b\n");
        let mid = format!("a\n{}b\n", b("/x"));
        assert_eq!(without_block(&mid), "a\nb\n");
    }

    #[test]
    fn writes_once_then_replaces_in_place() {
        let dir = TempDir::new("bazel");
        let mut plan = plan(&dir.0, &[Target::Bazel]);
        assert!(
            install(&plan).skipped.is_some(),
            "no truststore, nothing to do"
        );
        plan.truststore = Some((dir.0.join("ts.jks"), "changeit".into()));
        let rc = dir.0.join("home/.bazelrc");
        let o = install(&plan);
        assert_eq!(o.written, std::slice::from_ref(&rc));
        assert!(
            !dir.0.join("etc/bazel.bazelrc").exists(),
            "not machine-wide"
        );
        assert_eq!(
            fs::metadata(&rc).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let first = fs::read_to_string(&rc).unwrap();
        assert_eq!(first, b(&dir.0.join("ts.jks").to_string_lossy()));
        fs::write(&rc, format!("{first}build --user\n")).unwrap();
        fs::set_permissions(&rc, fs::Permissions::from_mode(0o600)).unwrap();
        plan.truststore = Some((dir.0.join("ts2.jks"), "changeit".into()));
        let o = install(&plan);
        assert!(o.failure.is_none(), "{o:?}");
        let second = fs::read_to_string(&rc).unwrap();
        assert_eq!(
            second,
            format!(
                "{}build --user\n",
                b(&dir.0.join("ts2.jks").to_string_lossy())
            )
        );
        assert_eq!(second.matches(BEGIN).count(), 1);
        assert_eq!(
            fs::metadata(&rc).unwrap().permissions().mode() & 0o777,
            0o600,
            "mode kept"
        );
        // Unchanged content is not rewritten.
        assert!(install(&plan).written.is_empty());
    }

    fn created_flag(plan: &Plan) -> bool {
        match install(plan).withdraw.as_slice() {
            [Withdrawal::Block { created, .. }] => *created,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_left_holding_only_a_block_is_the_relays_to_remove() {
        let dir = TempDir::new("bazel-left");
        let mut plan = plan(&dir.0, &[Target::Bazel]);
        plan.truststore = Some((dir.0.join("ts.jks"), "changeit".into()));
        let rc = dir.0.join("home/.bazelrc");
        assert!(created_flag(&plan), "no file: the relay makes it");
        // What a relay that crashed left: its block alone.
        fs::write(&rc, b("/crashed/ts.jks")).unwrap();
        assert!(created_flag(&plan), "a crashed relay's file");
        // Anything of the user's in it, or an empty file of theirs: kept.
        fs::write(&rc, format!("build --a\n{}", b("/crashed/ts.jks"))).unwrap();
        assert!(!created_flag(&plan));
        fs::write(&rc, "").unwrap();
        assert!(!created_flag(&plan));
    }

    #[test]
    fn a_link_is_written_through_with_the_files_mode_and_kept() {
        let dir = TempDir::new("bazel-link");
        let mut plan = plan(&dir.0, &[Target::Bazel]);
        plan.truststore = Some((dir.0.join("ts.jks"), "changeit".into()));
        let real = dir.0.join("dotfiles-bazelrc");
        fs::write(&real, "build --mine\n").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
        let rc = dir.0.join("home/.bazelrc");
        std::os::unix::fs::symlink(&real, &rc).unwrap();
        let o = install(&plan);
        assert!(o.failure.is_none(), "{o:?}");
        assert!(fs::symlink_metadata(&rc).unwrap().file_type().is_symlink());
        assert_eq!(
            fs::metadata(&real).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert!(
            fs::read_to_string(&real)
                .unwrap()
                .starts_with("build --mine\n# BEGIN")
        );
        assert_eq!(o.installed[0].1, real);
        // A file others may write in is refused, not loosened or followed.
        fs::set_permissions(&real, fs::Permissions::from_mode(0o666)).unwrap();
        let before = fs::read(&real).unwrap();
        plan.truststore = Some((dir.0.join("other.jks"), "changeit".into()));
        let (code, why) = install(&plan).failure.unwrap();
        assert_eq!(code, BAZELRC_WRITE_FAILED);
        assert!(why.contains("refusing"), "{why}");
        assert_eq!(fs::read(&real).unwrap(), before);
        // So is a link that leads nowhere.
        fs::remove_file(&real).unwrap();
        assert!(install(&plan).failure.is_some());
        assert!(!real.exists());
    }

    #[test]
    fn a_block_left_in_the_machine_wide_file_is_removed() {
        let dir = TempDir::new("bazel-etc");
        let mut plan = plan(&dir.0, &[Target::Bazel]);
        plan.truststore = Some((dir.0.join("ts.jks"), "changeit".into()));
        let etc = dir.0.join("etc/bazel.bazelrc");
        fs::write(&etc, format!("build --site\n{}", b("/gone/ts.jks"))).unwrap();
        fs::set_permissions(&etc, fs::Permissions::from_mode(0o640)).unwrap();
        let o = install(&plan);
        assert!(o.failure.is_none(), "{o:?}");
        assert_eq!(fs::read_to_string(&etc).unwrap(), "build --site\n");
        assert_eq!(
            fs::metadata(&etc).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert!(o.written.contains(&etc));
    }

    #[test]
    fn no_home_is_skipped() {
        let dir = TempDir::new("bazel-nohome");
        let mut plan = plan(&dir.0, &[Target::Bazel]);
        plan.roots.home = None;
        plan.truststore = Some((dir.0.join("ts.jks"), "changeit".into()));
        let o = install(&plan);
        assert!(o.skipped.is_some() && o.failure.is_none(), "{o:?}");
    }
}
