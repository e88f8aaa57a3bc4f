//! Running a helper program (`git`, `certutil`, `update-ca-certificates`)
//! under a hard time bound: its own process group, killed whole at the
//! deadline, output captured up to a cap, no inherited environment beyond
//! what the caller passes. A start-up step must never hang on a helper,
//! and a helper never outlives the relay: it is killed when the relay
//! dies (an orphaned `certutil` whose database vanished spins for ever).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Bytes kept of each of stdout and stderr; the rest is read and dropped.
pub const MAX_OUTPUT: usize = 1024 * 1024;
/// How often the child is polled for exit.
const POLL: Duration = Duration::from_millis(10);
/// After the child exits, how long its output pipes may take to close (a
/// grandchild that escaped the process group can hold them open).
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// What a finished helper left.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// The last line of stderr (else stdout), trimmed and at most 200
    /// characters: enough to say why a helper failed.
    pub fn reason(&self) -> String {
        let text = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            &self.stderr
        } else {
            &self.stdout
        };
        let text = String::from_utf8_lossy(text);
        let line = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let line: String = line.trim().chars().take(200).collect();
        format!("{} ({line})", self.status)
    }
}

/// Why a helper did not finish.
#[derive(Debug)]
pub enum RunError {
    /// The program is not there (or not executable).
    NotFound(PathBuf),
    /// It could not be started for another reason.
    Spawn(PathBuf, io::Error),
    /// It ran past the bound and was killed with its process group.
    TimedOut(PathBuf, Duration),
    /// The relay is stopping: it was killed with its process group.
    Cancelled(PathBuf),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::NotFound(p) => write!(f, "{} not found", p.display()),
            RunError::Spawn(p, e) => write!(f, "cannot start {}: {e}", p.display()),
            RunError::TimedOut(p, t) => {
                write!(f, "{} killed after {} ms", p.display(), t.as_millis())
            }
            RunError::Cancelled(p) => {
                write!(f, "{} killed: the relay is stopping", p.display())
            }
        }
    }
}

impl std::error::Error for RunError {}

/// The first executable file called `name` in the `:`-separated `path`.
pub fn find_on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs `program args…` with exactly the environment `env`, `stdin` as its
/// standard input, and kills its whole process group if it has not exited
/// within `timeout`.
pub fn run_bounded(
    program: &Path,
    args: &[&OsStr],
    env: &[(OsString, OsString)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, RunError> {
    run_bounded_until(program, args, env, stdin, timeout, &|| false)
}

/// [`run_bounded`], also killed as soon as `cancelled` says so (checked
/// at each poll): an installer still running when the relay stops.
pub fn run_bounded_until(
    program: &Path,
    args: &[&OsStr],
    env: &[(OsString, OsString)],
    stdin: Option<&[u8]>,
    timeout: Duration,
    cancelled: &dyn Fn() -> bool,
) -> Result<Output, RunError> {
    let deadline = Instant::now() + timeout;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so the kill at the deadline reaches whatever it
        // started (update-ca-certificates runs hooks).
        .process_group(0);
    // The thread that spawns it waits for it, so "the parent died" means
    // the relay died (killed, say, while start-up ran the helper).
    // SAFETY: getpid has no preconditions.
    let relay = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The relay may have died before the line above.
            if libc::getppid() != relay {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
            RunError::NotFound(program.to_path_buf())
        }
        _ => RunError::Spawn(program.to_path_buf(), e),
    })?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        spawn_reader(out, 0, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        spawn_reader(err, 1, tx.clone());
    }
    drop(tx);
    if let (Some(mut pipe), Some(bytes)) = (child.stdin.take(), stdin) {
        let bytes = bytes.to_vec();
        // A writer thread: a helper that never reads must not block us.
        thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let pid = child.id() as libc::pid_t;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline && !cancelled() => thread::sleep(POLL),
            _ => {
                // SAFETY: kill(2) on the group this child leads.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                if cancelled() {
                    return Err(RunError::Cancelled(program.to_path_buf()));
                }
                return Err(RunError::TimedOut(program.to_path_buf(), timeout));
            }
        }
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let pipes_deadline = Instant::now().max(deadline) + PIPE_GRACE;
    for _ in 0..2 {
        let left = pipes_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((0, bytes)) => stdout = bytes,
            Ok((_, bytes)) => stderr = bytes,
            Err(_) => break,
        }
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn spawn_reader(mut pipe: impl Read + Send + 'static, which: u8, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        let _ = tx.send((which, kept));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_is_not_found() {
        let err = run_bounded(
            Path::new("/nonexistent/ccr-no-such-tool"),
            &[],
            &[],
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, RunError::NotFound(_)), "{err}");
    }

    #[test]
    fn path_lookup_finds_executables_only() {
        let dir = crate::test_support::TempDir::new("path-lookup");
        let exe = dir.0.join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.0.join("data");
        std::fs::write(&plain, "x").unwrap();
        let path = std::env::join_paths(["relative/dir".as_ref(), dir.0.as_path()]).unwrap();
        assert_eq!(find_on_path("tool", &path), Some(exe));
        assert_eq!(find_on_path("data", &path), None);
        assert_eq!(find_on_path("absent", &path), None);
    }
}
