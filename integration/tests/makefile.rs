//! The Makefile's paths: `make static` builds and checks its binary under
//! `CARGO_TARGET_DIR` when that is set (else `target/`), and `make bench`
//! writes its report there too, never over a tracked file. Checked with
//! `make -n`, which prints the recipes with every variable expanded and
//! runs nothing.

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
