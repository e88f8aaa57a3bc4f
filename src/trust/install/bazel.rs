//! Bazel's JVM: Bazel starts its own server JVM with options of its own,
//! so the relay's truststore is given to it as `startup --host_jvm_args`
//! lines in `/etc/bazel.bazelrc` (read by every Bazel on the machine). The
//! lines sit in a managed block between fixed markers, replaced in place at
//! each start, never duplicated; the rest of the file is the user's and is
//! kept byte for byte.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;

use super::{BAZELRC_WRITE_FAILED, Outcome, Plan, writable};
use crate::sys::atomic_file;

/// First line of the managed block.
pub const BEGIN: &str = "# BEGIN ccr-relay managed block (rewritten at each start; do not edit)";
/// Last line of the managed block.
pub const END: &str = "# END ccr-relay managed block";
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

pub fn install(plan: &Plan) -> Outcome {
    let Some((truststore, password)) = &plan.truststore else {
        return Outcome::skipped("no Java truststore");
    };
    let path = plan.roots.etc.join("bazel.bazelrc");
    let existing = match fs::symlink_metadata(&path) {
        Ok(_) if !writable(&path) => {
            return Outcome::skipped(format!("{} not writable", path.display()));
        }
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !plan.roots.etc.is_dir() || !writable(&plan.roots.etc) {
                return Outcome::skipped(format!("{} not writable", plan.roots.etc.display()));
            }
            None
        }
        Err(e) => return Outcome::failed(BAZELRC_WRITE_FAILED, format!("{}: {e}", path.display())),
    };
    let Some(block) = block(&truststore.to_string_lossy(), password) else {
        return Outcome::failed(
            BAZELRC_WRITE_FAILED,
            "the truststore path or password holds whitespace or quotes",
        );
    };
    let (old, mode) = match &existing {
        Some(meta) => {
            let read = fs::File::open(&path).and_then(|f| {
                let mut s = String::new();
                io::Read::read_to_string(&mut io::Read::take(f, MAX_RC + 1), &mut s)?;
                // Never write back a file cut at the cap.
                if s.len() as u64 > MAX_RC {
                    return Err(io::Error::other("larger than 1 MiB"));
                }
                Ok(s)
            });
            match read {
                Ok(s) => (s, meta.permissions().mode() & 0o7777),
                Err(e) => {
                    return Outcome::failed(
                        BAZELRC_WRITE_FAILED,
                        format!("{}: {e}", path.display()),
                    );
                }
            }
        }
        None => (String::new(), 0o644),
    };
    let new = replace_block(&old, &block);
    let mut outcome = Outcome::default();
    if new != old {
        if let Err(e) = atomic_file::write(&path, new.as_bytes(), mode) {
            return Outcome::failed(BAZELRC_WRITE_FAILED, format!("{}: {e}", path.display()));
        }
        outcome.written.push(path.clone());
    }
    outcome.installed.push(("bazelrc".into(), path));
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
    fn writes_once_then_replaces_in_place() {
        let dir = TempDir::new("bazel");
        let mut plan = plan(&dir.0, &[Target::Bazel]);
        assert!(
            install(&plan).skipped.is_some(),
            "no truststore, nothing to do"
        );
        plan.truststore = Some((dir.0.join("ts.jks"), "changeit".into()));
        let rc = dir.0.join("etc/bazel.bazelrc");
        let o = install(&plan);
        assert_eq!(o.written, std::slice::from_ref(&rc));
        assert_eq!(
            fs::metadata(&rc).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let first = fs::read_to_string(&rc).unwrap();
        assert_eq!(first, b(&dir.0.join("ts.jks").to_string_lossy()));
        fs::write(&rc, format!("{first}build --user\n")).unwrap();
        fs::set_permissions(&rc, fs::Permissions::from_mode(0o640)).unwrap();
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
            0o640,
            "mode kept"
        );
        // Unchanged content is not rewritten.
        assert!(install(&plan).written.is_empty());
    }

    #[test]
    fn no_etc_is_skipped() {
        let dir = TempDir::new("bazel-noetc");
        let mut plan = plan(&dir.0, &[Target::Bazel]);
        plan.roots.etc = dir.0.join("missing");
        plan.truststore = Some((dir.0.join("ts.jks"), "changeit".into()));
        let o = install(&plan);
        assert!(o.skipped.is_some() && o.failure.is_none(), "{o:?}");
    }
}
