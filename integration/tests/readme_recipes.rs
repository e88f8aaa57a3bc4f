//! The README's hand-run recipes ("Trying a real session by hand"), one per
//! gateway generation, taken out of the README and run exactly as written
//! in `bash` (with `-e` and `pipefail`, so that no step may fail) from the
//! repository's root. `CARGO_TARGET_DIR` names the directory that holds
//! the binaries under test, as the README says to set it when cargo builds
//! elsewhere; `TMPDIR` keeps the recipes' scratch directories in one this
//! test removes. Whatever a recipe leaves running is killed with its
//! process group.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ccr_integration::{bin_path, temp_dir};

/// A recipe builds (nothing to do: the suite built first), makes keys and
/// runs three programs; generous for a loaded machine.
const RECIPE_TIMEOUT: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository's root")
}

/// The `sh` code blocks of the README's section `heading`, in order.
fn recipes(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("the README has no section {heading:?}"));
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("\n```").expect("an unclosed code block");
        blocks.push(body[..close + 1].to_string());
        rest = &body[close + 4..];
    }
    blocks
}

/// Runs `script` as the README says; returns (stdout, stderr), panicking
/// with both when it fails or takes too long.
fn run_recipe(what: &str, script: &str) -> (String, String) {
    let scratch = temp_dir(&format!("readme-{what}"));
    let file = scratch.join("recipe.sh");
    std::fs::write(&file, script).unwrap();
    // bin_path gives <target>/debug/ccr-relay.
    let target_dir = bin_path("ccr-relay")
        .parent()
        .and_then(Path::parent)
        .expect("the target directory")
        .to_path_buf();
    let mut child = Command::new("bash")
        .args(["-e", "-o", "pipefail"])
        .arg(&file)
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("TMPDIR", scratch.path())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bash");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > RECIPE_TIMEOUT {
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    // What the recipe left running (its origin and gateway on failure).
    // SAFETY: kill(2) on the process group of a child we started.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    let _ = child.wait();
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(s) if s.success() => (stdout, stderr),
        _ => panic!(
            "the README's {what} recipe failed ({status:?}):\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
        ),
    }
}

#[test]
fn both_readme_recipes_work_as_written() {
    let blocks = recipes("Trying a real session by hand");
    assert_eq!(blocks.len(), 2, "two recipes: {blocks:#?}");
    assert!(
        blocks[0].contains("CCR_UPSTREAM_PROXY_ENABLED=1"),
        "{}",
        blocks[0]
    );
    assert!(
        blocks[1].contains("CCR_AGENT_PROXY_ENABLED=1"),
        "{}",
        blocks[1]
    );

    let (stdout, stderr) = run_recipe("upstream-proxy", &blocks[0]);
    let all = format!("{stdout}\n--- stderr ---\n{stderr}");
    assert!(stdout.contains("hello from origin\n"), "{all}");
    assert!(stdout.contains("HTTPS_PROXY=http://127.0.0.1:"), "{all}");
    assert!(stdout.contains("the token file is gone"), "{all}");
    assert!(
        stderr.contains("ccr-relay: info tunnel origin.test:443 closed"),
        "{all}"
    );

    let (stdout, stderr) = run_recipe("agent-proxy", &blocks[1]);
    let all = format!("{stdout}\n--- stderr ---\n{stderr}");
    assert_eq!(stdout.matches("hello from origin\n").count(), 2, "{all}");
    for line in [
        "generation: agent-proxy",
        "protocol: v2",
        "tunnelsServed: 2",
    ] {
        assert!(stdout.lines().any(|l| l == line), "no {line:?}: {all}");
    }
    assert!(stderr.contains("v2 reused WebSocket, pooled"), "{all}");
    assert!(!stderr.contains("my-token"), "the token in the log: {all}");
}
