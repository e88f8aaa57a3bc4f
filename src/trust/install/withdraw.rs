//! Taking back, on a clean stop, what the installers put in place
//! ([`Withdrawal`]): the system-store anchors (then the store's update
//! tool, so the gateway's CA leaves the machine's bundle too), the NSS
//! entries, the bazelrc block and the login-shell script. Each only while
//! it still holds what the relay wrote: something another relay or the
//! user has put there since is left alone. They run in parallel, one
//! thread each, every helper bounded by the one deadline.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::Withdrawal;
use super::bazel;
use crate::sys::atomic_file;
use crate::sys::command::run_bounded;

/// Takes back `items` before `deadline`, in parallel; returns one line per
/// thing that could not be taken back (what is left, what to do). `env`
/// is the helpers' environment.
pub fn withdraw_all(
    items: &[Withdrawal],
    env: &[(OsString, OsString)],
    deadline: Instant,
) -> Vec<String> {
    thread::scope(|s| {
        let handles: Vec<_> = items
            .iter()
            .map(|item| s.spawn(move || withdraw_one(item, env, deadline)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["a withdrawal panicked".to_string()])
            })
            .collect()
    })
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Removes `path` if it holds `content`; true when it was removed.
fn remove_if_ours(path: &Path, content: &[u8]) -> Result<bool, NotRemoved> {
    if !holds(path, content) {
        return Ok(false);
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(NotRemoved {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// Whether `path` is what the relay wrote there: a regular file, not a
/// link, holding exactly `content`. Opened without following a link or
/// blocking (a FIFO put there cannot hang the stop), and read no further
/// than one byte past `content`.
fn holds(path: &Path, content: &[u8]) -> bool {
    let Ok(file) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut now = Vec::with_capacity(content.len() + 1);
    file.take(content.len() as u64 + 1)
        .read_to_end(&mut now)
        .is_ok()
        && now == content
}

/// A file of the relay's that could not be removed.
#[derive(Debug, thiserror::Error)]
#[error("cannot remove {}: {error}; remove it by hand", .path.display())]
struct NotRemoved {
    path: PathBuf,
    error: io::Error,
}

/// The base64 body of the first PEM block in `text`, whitespace removed:
/// comparable across tools that wrap lines differently.
fn pem_body(text: &str) -> String {
    text.lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect()
}

fn withdraw_one(item: &Withdrawal, env: &[(OsString, OsString)], deadline: Instant) -> Vec<String> {
    match item {
        Withdrawal::File { path, content } => match remove_if_ours(path, content) {
            Ok(_) => Vec::new(),
            Err(e) => vec![e.to_string()],
        },
        Withdrawal::Anchors { files, tool, args } => {
            withdraw_anchors(files, tool, args, env, deadline)
        }
        Withdrawal::Nss {
            certutil,
            db,
            entries,
        } => withdraw_nss(certutil, db, entries, env, deadline),
        Withdrawal::Block {
            path,
            block,
            created,
        } => match withdraw_block(path, block, *created) {
            Ok(()) => Vec::new(),
            Err(e) => vec![e.to_string()],
        },
    }
}

/// Removes the anchor `files` still ours, then, if any went, runs the
/// store's update `tool` with `args`; the problems.
fn withdraw_anchors(
    files: &[(PathBuf, Vec<u8>)],
    tool: &Path,
    args: &[String],
    env: &[(OsString, OsString)],
    deadline: Instant,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut removed = false;
    for (path, content) in files {
        match remove_if_ours(path, content) {
            Ok(r) => removed |= r,
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !removed {
        return problems;
    }
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    match run_bounded(tool, &args, env, None, left(deadline)) {
        Ok(out) if out.status.success() => {}
        Ok(out) => problems.push(format!(
            "{}: {}; run it by hand, or the gateway's CA stays in the system bundle",
            tool.display(),
            out.reason()
        )),
        Err(e) => problems.push(format!(
            "{e}; run {} by hand, or the gateway's CA stays in the system bundle",
            tool.display()
        )),
    }
    problems
}

/// Deletes from the NSS database `db` each of `entries` (nickname, PEM)
/// that still holds the PEM the relay added; the problems.
fn withdraw_nss(
    certutil: &Path,
    db: &OsStr,
    entries: &[(String, String)],
    env: &[(OsString, OsString)],
    deadline: Instant,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (nick, pem) in entries {
        let list = [
            OsStr::new("-L"),
            OsStr::new("-a"),
            OsStr::new("-n"),
            OsStr::new(nick),
            OsStr::new("-d"),
            db,
        ];
        let ours = match run_bounded(certutil, &list, env, None, left(deadline)) {
            Ok(out) if out.status.success() => {
                pem_body(&String::from_utf8_lossy(&out.stdout)) == pem_body(pem)
            }
            _ => false,
        };
        if !ours {
            continue;
        }
        let delete = [
            OsStr::new("-D"),
            OsStr::new("-n"),
            OsStr::new(nick),
            OsStr::new("-d"),
            db,
        ];
        match run_bounded(certutil, &delete, env, None, left(deadline)) {
            Ok(out) if out.status.success() => {}
            Ok(out) => problems.push(format!(
                "certutil -D -n {nick}: {}; delete it by hand",
                out.reason()
            )),
            Err(e) => problems.push(format!("{e}; delete {nick} from the NSS database by hand")),
        }
    }
    problems
}

/// Removes `block` from the rc file `path` while it is there as written;
/// removes the file when the relay created it and nothing else is left.
fn withdraw_block(path: &Path, block: &str, created: bool) -> Result<(), BlockNotRemoved> {
    let (real, mode) = match bazel::target(path) {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(()),
        Err(why) => return Err(BlockNotRemoved::Target(why)),
    };
    let Ok(text) = bazel::read_rc(&real) else {
        return Ok(());
    };
    if !text.contains(block) {
        return Ok(());
    }
    let rest = bazel::without_block(&text);
    let done = if created && rest.trim().is_empty() {
        fs::remove_file(&real)
    } else {
        atomic_file::write(&real, rest.as_bytes(), mode)
    };
    done.map_err(|error| BlockNotRemoved::Write { path: real, error })
}

/// Why the bazelrc block stays.
#[derive(Debug, thiserror::Error)]
enum BlockNotRemoved {
    /// The rc file cannot be looked at safely (`bazel::target`'s reason).
    #[error("the bazelrc block stays: {0}")]
    Target(String),
    #[error("cannot remove the bazelrc block from {}: {error}; remove it by hand", .path.display())]
    Write { path: PathBuf, error: io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(3)
    }

    #[test]
    fn only_what_still_holds_the_relays_content_goes() {
        let dir = TempDir::new("withdraw-files");
        let ours = dir.0.join("ours");
        let theirs = dir.0.join("theirs");
        fs::write(&ours, "relay").unwrap();
        fs::write(&theirs, "replaced").unwrap();
        let items = [
            Withdrawal::File {
                path: ours.clone(),
                content: b"relay".to_vec(),
            },
            Withdrawal::File {
                path: theirs.clone(),
                content: b"relay".to_vec(),
            },
            Withdrawal::File {
                path: dir.0.join("gone"),
                content: b"relay".to_vec(),
            },
        ];
        assert!(withdraw_all(&items, &[], soon()).is_empty());
        assert!(!ours.exists());
        assert!(theirs.exists());
    }

    fn tool(dir: &Path, script: &str) -> PathBuf {
        let p = dir.join("tool");
        fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn anchors_removed_then_the_tool_run_within_the_deadline() {
        let dir = TempDir::new("withdraw-anchors");
        let anchor = dir.0.join("a.crt");
        fs::write(&anchor, "pem").unwrap();
        let ran = dir.0.join("ran");
        let item = Withdrawal::Anchors {
            files: vec![(anchor.clone(), b"pem".to_vec())],
            tool: tool(&dir.0, &format!("echo \"$@\" >> {}", ran.display())),
            args: vec!["extract".into()],
        };
        assert!(withdraw_all(std::slice::from_ref(&item), &[], soon()).is_empty());
        assert!(!anchor.exists());
        assert_eq!(fs::read_to_string(&ran).unwrap(), "extract\n");
        // Nothing of ours left: the tool is not run again.
        assert!(withdraw_all(&[item], &[], soon()).is_empty());
        assert_eq!(fs::read_to_string(&ran).unwrap(), "extract\n");

        // A tool that hangs is killed at the deadline, and said.
        fs::write(&anchor, "pem").unwrap();
        let item = Withdrawal::Anchors {
            files: vec![(anchor.clone(), b"pem".to_vec())],
            tool: tool(&dir.0, "exec sleep 30"),
            args: vec![],
        };
        let start = Instant::now();
        let problems = withdraw_all(&[item], &[], Instant::now() + Duration::from_millis(300));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("by hand"), "{problems:?}");
    }

    #[test]
    fn the_block_goes_and_a_file_the_relay_made_with_it() {
        let dir = TempDir::new("withdraw-block");
        let block = bazel::block("/x/ts.jks", "changeit").unwrap();
        let mine = dir.0.join("mine");
        fs::write(&mine, format!("build --a\n{block}")).unwrap();
        fs::set_permissions(&mine, fs::Permissions::from_mode(0o600)).unwrap();
        let made = dir.0.join("made");
        fs::write(&made, &block).unwrap();
        let items = [
            Withdrawal::Block {
                path: mine.clone(),
                block: block.clone(),
                created: false,
            },
            Withdrawal::Block {
                path: made.clone(),
                block: block.clone(),
                created: true,
            },
        ];
        assert!(withdraw_all(&items, &[], soon()).is_empty());
        assert_eq!(fs::read_to_string(&mine).unwrap(), "build --a\n");
        assert_eq!(
            fs::metadata(&mine).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!made.exists());
    }

    #[test]
    fn a_fifo_or_a_link_at_the_path_is_left_alone_at_once() {
        // What stands at a withdrawn path now is not what the relay wrote
        // (a regular file): a FIFO must not hang the stop (reading it would
        // wait for a writer for ever), a link is not followed.
        let dir = TempDir::new("withdraw-fifo");
        let fifo = dir.0.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let copy = dir.0.join("copy");
        fs::write(&copy, "relay").unwrap();
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&copy, &link).unwrap();
        let items = vec![
            Withdrawal::File {
                path: fifo.clone(),
                content: b"relay".to_vec(),
            },
            Withdrawal::File {
                path: link.clone(),
                content: b"relay".to_vec(),
            },
        ];
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(withdraw_all(&items, &[], soon()));
        });
        let problems = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the withdrawal returned (a FIFO at the path hung it)");
        assert!(problems.is_empty(), "{problems:?}");
        assert!(fs::symlink_metadata(&fifo).is_ok(), "the FIFO stays");
        assert!(fs::symlink_metadata(&link).is_ok(), "the link stays");
        assert!(copy.exists());
    }

    #[test]
    fn pem_bodies_compare_across_wrapping() {
        let a = "-----BEGIN CERTIFICATE-----\nAAAA\nBBBB\n-----END CERTIFICATE-----\n";
        let b = "x\n-----BEGIN CERTIFICATE-----\nAAAABBBB\n-----END CERTIFICATE-----";
        assert_eq!(pem_body(a), pem_body(b));
        assert_ne!(
            pem_body(a),
            pem_body("-----BEGIN C-----\nAAAA\n-----END C-----")
        );
    }
}
