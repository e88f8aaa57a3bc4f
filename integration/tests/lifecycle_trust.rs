//! A clean stop takes back what the relay installed machine-wide: the
//! system-store anchor (then the store's update tool), the NSS entry, the
//! bazelrc block and the login-shell script go when `run`'s command exits
//! or `serve` gets SIGTERM or SIGINT (`run` passes a SIGINT to its
//! command, and stops when that exits); `--keep-trust` keeps them;
//! `~/.aws/config` stays. A SIGTERM while an installer's helper still runs
//! cancels it and leaves no temp file in the anchors directory. A crash
//! (SIGKILL) leaves them; the next start replaces them with its own
//! gateway's CA, and its clean stop takes them back.
//!
//! The real relay binary, with its installers rooted in the scratch
//! directory (`CCR_RELAY_INSTALL_ROOT`) and fake `update-ca-certificates`
//! and `certutil` first on `PATH` (the tests run as root, so the
//! system-store installer applies); nothing of the machine's is touched.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ccr_integration::DevGateway;
use ccr_integration::GatewayOptions;
use ccr_integration::session_env::{Running, Session};

const TOKEN: &str = "tok-lifecycle-trust-3b9e17";
const SESSION: &str = "sess-lifecycle-trust";

fn gateway() -> DevGateway {
    DevGateway::start(GatewayOptions {
        token: TOKEN.into(),
        session_id: SESSION.into(),
        ..GatewayOptions::default()
    })
}

/// A scene: a session whose installers all apply, under its scratch dir.
struct Scene {
    s: Session,
    anchors: PathBuf,
    profile: PathBuf,
    nssdb: PathBuf,
    bazelrc: PathBuf,
    tool_log: PathBuf,
}

fn fake(bin: &Path, name: &str, script: &str) {
    let p = bin.join(name);
    fs::write(&p, format!("#!/bin/sh\nPATH=/usr/bin:/bin\n{script}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `update_tool`: the fake `update-ca-certificates`' script after it logs
/// its call.
fn scene(name: &str, gw: &DevGateway, update_tool: &str, args: &[&str]) -> Scene {
    let mut s = Session::for_gateway(name, gw);
    for arg in args {
        s = s.arg(*arg);
    }
    let root = s.dir.join("root");
    let anchors = root.join("usr/local/share/ca-certificates");
    fs::create_dir_all(&anchors).unwrap();
    fs::create_dir_all(root.join("etc/profile.d")).unwrap();
    let bin = s.dir.join("fakebin");
    fs::create_dir(&bin).unwrap();
    let tool_log = s.dir.join("update-tool.log");
    fake(
        &bin,
        "update-ca-certificates",
        &format!("echo called >> '{}'\n{update_tool}", tool_log.display()),
    );
    // certutil over one PEM file per nickname; -d sql:DIR comes last.
    fake(
        &bin,
        "certutil",
        "for a; do last=$a; done; db=${last#sql:}\n\
         case \"$1\" in\n\
         -N) touch \"$db/cert9.db\" ;;\n\
         -A) cat > \"$db/$3.pem\" ;;\n\
         -D) [ -f \"$db/$3.pem\" ] || exit 255; rm \"$db/$3.pem\" ;;\n\
         -L) if [ \"$2\" = -a ]; then cat \"$db/$4.pem\" || exit 255; else\n\
             for f in \"$db\"/*.pem; do [ -e \"$f\" ] && printf '%s  C,,\\n' \"$(basename \"$f\" .pem)\"; done; fi ;;\n\
         esac\n\
         exit 0",
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let home = s.home.clone();
    Scene {
        s: s.env("PATH", &path),
        anchors,
        profile: root.join("etc/profile.d/ccr-relay-ca.sh"),
        nssdb: home.join(".pki/nssdb"),
        bazelrc: home.join(".bazelrc"),
        tool_log,
    }
}

impl Scene {
    fn anchor(&self) -> PathBuf {
        self.anchors.join("ccr-relay-gateway.crt")
    }

    fn nss_entry(&self) -> PathBuf {
        self.nssdb.join("ccr-relay-gateway.pem")
    }

    /// A command that waits (at most 10 s) until every installer is done,
    /// then prints which entries are there.
    fn wait_then_report(&self) -> String {
        let (a, n, b, p) = (
            self.anchor(),
            self.nss_entry(),
            self.bazelrc.clone(),
            self.profile.clone(),
        );
        format!(
            "i=0; while [ $i -lt 200 ]; do [ -f '{a}' ] && [ -f '{n}' ] && grep -q BEGIN '{b}' 2>/dev/null && [ \"$(wc -l < '{log}')\" -ge 1 ] && break; i=$((i+1)); sleep 0.05; done; \
             [ -f '{a}' ] && echo ANCHOR; [ -f '{n}' ] && echo NSS; grep -q BEGIN '{b}' 2>/dev/null && echo BAZEL; [ -f '{p}' ] && echo PROFILE; true",
            a = a.display(),
            n = n.display(),
            b = b.display(),
            p = p.display(),
            log = self.tool_log.display(),
        )
    }

    fn tool_calls(&self) -> usize {
        fs::read_to_string(&self.tool_log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Whether every installer has put its entry in place (the update
    /// tool has run at least `tool_runs` times).
    fn all_installed(&self, tool_runs: usize) -> bool {
        self.anchor().is_file()
            && self.nss_entry().is_file()
            && fs::read_to_string(&self.bazelrc).is_ok_and(|t| t.contains("# BEGIN ccr-relay"))
            && self.profile.is_file()
            && self.tool_calls() >= tool_runs
    }

    /// Whether every entry is gone.
    fn none_installed(&self) -> bool {
        !self.anchor().exists()
            && !self.nss_entry().exists()
            && !self.bazelrc.exists()
            && !self.profile.exists()
    }

    /// `ccr-relay serve` from the scene, its env file in the scratch dir.
    fn serve(&self) -> Running {
        let mut cmd = self.s.command("serve", &[]);
        cmd.arg("--env-file").arg(self.s.dir.join("relay.env"));
        Running::spawn(cmd)
    }

    /// Files of ours (anchors, temp files) in the anchors directory.
    fn ours_in_anchors(&self) -> Vec<String> {
        fs::read_dir(&self.anchors)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("ccr-relay"))
            .collect()
    }
}

#[test]
fn a_clean_stop_of_run_withdraws_what_the_relay_installed_machine_wide() {
    let gw = gateway();
    let sc = scene("trust-withdraw", &gw, "", &[]);
    let out = sc.s.run(&["sh", "-c", &sc.wait_then_report()]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    for what in ["ANCHOR", "NSS", "BAZEL", "PROFILE"] {
        assert!(
            out.stdout.lines().any(|l| l == what),
            "{what} was not installed while the command ran: {}",
            out.describe()
        );
    }
    assert!(!sc.anchor().exists(), "the anchor outlived the relay");
    assert_eq!(sc.tool_calls(), 2, "the update tool did not run again");
    assert!(!sc.nss_entry().exists(), "the NSS entry outlived the relay");
    assert!(
        !sc.bazelrc.exists(),
        "the ~/.bazelrc the relay made outlived it"
    );
    assert!(
        !sc.profile.exists(),
        "the login-shell script outlived the relay"
    );
    assert!(
        sc.s.home.join(".aws/config").is_file(),
        "~/.aws/config stays"
    );
    assert!(
        sc.ours_in_anchors().is_empty(),
        "{:?}",
        sc.ours_in_anchors()
    );
    assert!(
        !out.stderr.contains("warning"),
        "a clean stop warned: {}",
        out.describe()
    );
}

#[test]
fn keep_trust_leaves_the_machine_wide_entries_and_doctor_says_so() {
    let gw = gateway();
    let sc = scene("trust-keep", &gw, "", &["--keep-trust"]);
    let doctor = sc.s.doctor();
    assert!(
        doctor.stdout.contains("kept after stop: --keep-trust")
            && !doctor.stdout.contains("removed on a clean stop"),
        "{}",
        doctor.describe()
    );
    let out = sc.s.run(&["sh", "-c", &sc.wait_then_report()]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(sc.anchor().is_file());
    assert_eq!(sc.tool_calls(), 1);
    assert!(sc.nss_entry().is_file());
    assert!(
        fs::read_to_string(&sc.bazelrc)
            .unwrap()
            .contains("# BEGIN ccr-relay")
    );
    assert!(sc.profile.is_file());
}

#[test]
fn doctor_says_a_clean_stop_withdraws_the_machine_wide_entries() {
    let gw = gateway();
    let sc = scene("trust-doctor", &gw, "", &[]);
    let out = sc.s.doctor();
    let text = &out.stdout;
    for what in [
        "would  system trust store: ",
        "would  NSS database: ",
        "would  bazelrc: ",
        "would  login shell profile: ",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line: {}", out.describe()));
        assert!(
            line.contains("removed on a clean stop, within 3 s; --keep-trust keeps it"),
            "{line}"
        );
    }
    assert!(
        text.contains(&format!("a managed block in {}", sc.bazelrc.display())),
        "{}",
        out.describe()
    );
}

#[test]
fn sigterm_while_an_installer_runs_cancels_it_then_withdraws_within_the_bound() {
    let gw = gateway();
    let marker_dir = ccr_integration::temp_dir("trust-sigterm-marker");
    let marker = marker_dir.join("installing");
    // The install-time call hangs (until killed); the withdrawal's is quick.
    let sc = scene(
        "trust-sigterm",
        &gw,
        &format!(
            "if [ ! -e '{m}' ]; then touch '{m}'; exec sleep 30; fi",
            m = marker.display()
        ),
        &[],
    );
    let env_file = sc.s.dir.join("relay.env");
    let s = &sc.s;
    let mut cmd = s.command("serve", &[]);
    cmd.arg("--env-file").arg(&env_file);
    let running = ccr_integration::session_env::Running::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the installer never ran its tool: {}",
            running.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        sc.anchor().is_file(),
        "the anchor is written before its tool runs"
    );
    let stopped_at = Instant::now();
    running.signal(libc::SIGTERM);
    let out = running.finish(Duration::from_secs(10));
    let took = stopped_at.elapsed();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        took < Duration::from_millis(3500),
        "the stop took {took:?}: {}",
        out.describe()
    );
    assert!(!sc.anchor().exists(), "the anchor outlived the relay");
    assert!(
        sc.ours_in_anchors().is_empty(),
        "left in the anchors directory: {:?}",
        sc.ours_in_anchors()
    );
    assert_eq!(
        sc.tool_calls(),
        2,
        "the update tool did not run after the removal"
    );
    assert!(!sc.profile.exists());
    assert!(!sc.nss_entry().exists());
    assert!(!sc.bazelrc.exists());
}

/// Polls `done` every 10 ms for at most 10 s; panics with `what` and the
/// relay's stderr otherwise.
fn wait_until(running: &Running, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 10 s: {}",
            running.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigint_to_serve_withdraws_as_sigterm_does() {
    let gw = gateway();
    let sc = scene("trust-sigint-serve", &gw, "", &[]);
    let running = sc.serve();
    wait_until(&running, "every install", || sc.all_installed(1));
    running.signal(libc::SIGINT);
    let out = running.finish(Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(sc.none_installed(), "an entry outlived a SIGINT to serve");
    assert_eq!(
        sc.tool_calls(),
        2,
        "the update tool did not run after the removal"
    );
    assert!(
        sc.ours_in_anchors().is_empty(),
        "{:?}",
        sc.ours_in_anchors()
    );
    assert!(
        !out.stderr.contains("warning"),
        "a clean stop warned: {}",
        out.describe()
    );
}

/// `run`'s command waits for the installers, says READY, then becomes
/// `sleep`, which a SIGINT ends.
fn run_until_sigint(sc: &Scene) -> Running {
    let script = format!("{}; echo READY; exec sleep 30", sc.wait_then_report());
    sc.s.spawn("run", &["sh", "-c", &script])
}

#[test]
fn sigint_to_run_reaches_its_command_and_the_stop_withdraws() {
    let gw = gateway();
    // To the relay alone: it passes the signal to its command.
    let sc = scene("trust-sigint-run", &gw, "", &[]);
    let running = run_until_sigint(&sc);
    running.wait_line(Duration::from_secs(15), |l| l == "READY");
    assert!(sc.all_installed(1), "{}", running.stderr_so_far());
    running.signal(libc::SIGINT);
    let out = running.finish(Duration::from_secs(10));
    assert_eq!(
        out.code(),
        Some(128 + libc::SIGINT),
        "the command was not ended by the SIGINT: {}",
        out.describe()
    );
    assert!(sc.none_installed(), "an entry outlived a SIGINT to run");
    assert_eq!(sc.tool_calls(), 2);
    assert!(!out.stderr.contains("warning"), "{}", out.describe());

    // Ctrl-C: the whole process group, relay and command, gets it.
    let sc = scene("trust-sigint-run-group", &gw, "", &[]);
    let running = run_until_sigint(&sc);
    running.wait_line(Duration::from_secs(15), |l| l == "READY");
    assert!(sc.all_installed(1), "{}", running.stderr_so_far());
    // SAFETY: kill(2) on the process group our unreaped child leads.
    assert_eq!(unsafe { libc::kill(-running.pid(), libc::SIGINT) }, 0);
    let out = running.finish(Duration::from_secs(10));
    assert_eq!(out.code(), Some(128 + libc::SIGINT), "{}", out.describe());
    assert!(sc.none_installed(), "an entry outlived a Ctrl-C to run");
    assert_eq!(sc.tool_calls(), 2);
    assert!(!out.stderr.contains("warning"), "{}", out.describe());
}

/// The base64 body of the first PEM block in `text`, whitespace removed.
fn pem_body(text: &str) -> String {
    text.lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect()
}

fn body_of(path: &Path) -> String {
    pem_body(&fs::read_to_string(path).unwrap_or_default())
}

#[test]
fn a_crash_leaves_the_entries_and_the_next_start_replaces_then_withdraws_them() {
    let first = gateway();
    let second = gateway();
    let (ca1, ca2) = (body_of(&first.ca_pem_path), body_of(&second.ca_pem_path));
    assert!(!ca1.is_empty() && ca1 != ca2, "two gateways, two CAs");
    let mut sc = scene("trust-crash", &first, "", &[]);

    let running = sc.serve();
    // The whole certificate in each (the fake certutil creates the file
    // before it has read its input).
    wait_until(&running, "every install", || {
        sc.all_installed(1) && body_of(&sc.anchor()) == ca1 && body_of(&sc.nss_entry()) == ca1
    });
    running.signal(libc::SIGKILL);
    let out = running.finish(Duration::from_secs(10));
    assert_eq!(out.signal(), Some(libc::SIGKILL), "{}", out.describe());
    assert!(sc.all_installed(1), "a crash took an entry back");
    assert_eq!(body_of(&sc.anchor()), ca1);
    assert_eq!(body_of(&sc.nss_entry()), ca1);

    // The next start, against a gateway with another CA, on the same machine.
    // (The first took the token file, as every start does.)
    sc.s.base_url = second.base_url();
    sc.s.write_token(TOKEN);
    let doctor = sc.s.doctor();
    assert!(
        doctor.stdout.contains(
            "which holds only the block a relay that did not stop cleanly left (the file goes with the block; removed on a clean stop"
        ),
        "{}",
        doctor.describe()
    );
    let running = sc.serve();
    wait_until(&running, "the second CA replacing the first", || {
        sc.all_installed(2) && body_of(&sc.anchor()) == ca2 && body_of(&sc.nss_entry()) == ca2
    });
    assert_eq!(
        sc.ours_in_anchors(),
        ["ccr-relay-gateway.crt"],
        "a stale anchor stayed"
    );
    let stale: Vec<_> = fs::read_dir(&sc.anchors)
        .unwrap()
        .flatten()
        .filter(|e| body_of(&e.path()) == ca1)
        .map(|e| e.path())
        .collect();
    assert!(stale.is_empty(), "the first CA stayed an anchor: {stale:?}");
    let bazelrc = fs::read_to_string(&sc.bazelrc).unwrap();
    assert_eq!(
        bazelrc.matches("# BEGIN ccr-relay").count(),
        1,
        "one block, replaced: {bazelrc}"
    );

    running.signal(libc::SIGTERM);
    let out = running.finish(Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        !sc.anchor().exists(),
        "the anchor outlived the second relay"
    );
    assert_eq!(sc.tool_calls(), 3, "the update tool did not run again");
    assert!(!sc.nss_entry().exists(), "the NSS entry outlived it");
    assert!(
        !sc.bazelrc.exists(),
        "the ~/.bazelrc a relay made stayed: {:?}",
        fs::read_to_string(&sc.bazelrc)
    );
    assert!(!sc.profile.exists(), "the login-shell script outlived it");
    assert!(
        sc.ours_in_anchors().is_empty(),
        "{:?}",
        sc.ours_in_anchors()
    );
    assert!(!out.stderr.contains("warning"), "{}", out.describe());
}
