//! The Makefile's paths: `make static` builds and checks its binary under
//! `CARGO_TARGET_DIR` when that is set (else `target/`), and `make bench`
//! writes its report there too, never over a tracked file. Checked with
//! `make -n`, which prints the recipes with every variable expanded and
//! runs nothing. `make run` runs the demo, which shows both generations:
//! the demo binary is run here as `make run` runs it (after the build the
//! test suite has already done).

use std::path::Path;
use std::process::Command;

/// `make -n TARGET` at the workspace root, with `CARGO_TARGET_DIR` set to
/// `target_dir` or removed; returns what it would run.
fn dry_run(target: &str, target_dir: Option<&str>) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new("make");
    cmd.arg("-n").arg("-C").arg(&root).arg(target);
    match target_dir {
        Some(dir) => cmd.env("CARGO_TARGET_DIR", dir),
        None => cmd.env_remove("CARGO_TARGET_DIR"),
    };
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run make: {e}"));
    assert!(out.status.success(), "make -n {target}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn make_static_honours_cargo_target_dir() {
    let dir = "/tmp/ccr-elsewhere-target";
    let bin = format!("{dir}/x86_64-unknown-linux-musl/release/ccr-relay");
    let recipe = dry_run("static", Some(dir));
    // Checked for linking, measured and run from there.
    assert!(recipe.matches(&bin).count() >= 3, "{recipe}");
    assert!(!recipe.contains(" target/x86_64"), "{recipe}");
    let recipe = dry_run("static", None);
    assert!(
        recipe.contains(" target/x86_64-unknown-linux-musl/release/ccr-relay"),
        "{recipe}"
    );
}

#[test]
fn make_bench_writes_its_report_under_the_build_directory() {
    let recipe = dry_run("bench", Some("/tmp/ccr-elsewhere-target"));
    assert!(
        recipe.contains("--out /tmp/ccr-elsewhere-target/bench/BENCH.md"),
        "{recipe}"
    );
    let recipe = dry_run("bench", None);
    assert!(recipe.contains("--out target/bench/BENCH.md"), "{recipe}");
    assert!(recipe.contains("mkdir -p target/bench/"), "{recipe}");
}

#[test]
fn make_run_shows_both_generations() {
    let recipe = dry_run("run", None);
    assert!(
        recipe.contains("--bin ccr-demo"),
        "make run does not run the demo: {recipe}"
    );
    let out = Command::new(ccr_integration::bin_path("ccr-demo"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run ccr-demo: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ccr-demo failed: {text}\n{out:?}");
    for needle in [
        "upstream proxy (first generation), blind mode",
        "upstream proxy, MITM mode",
        "agent proxy (second generation)",
        "HELLO acknowledged (HELLO_ACK) on WebSocket",
        "the second reused it",
        "v2 reused WebSocket",
        "ccr-relay status: generation: agent-proxy, protocol: v2, tunnelsServed: 2",
    ] {
        assert!(
            text.contains(needle),
            "no {needle:?} in make run's output:\n{text}"
        );
    }
    assert!(text.trim_end().ends_with("\nok"), "{text}");
}
