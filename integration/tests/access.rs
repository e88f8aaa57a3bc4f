//! Who may use the proxy port: the real relay (running as root here, as
//! the tests do), real `curl` run as root and as `nobody` (`setpriv`), the
//! development gateway and origin. By default only the relay's own uid and
//! root get through; `--allow-uid` and `--allow-any-uid` open the door
//! further. A refused client gets `403` and the gateway sees nothing.

use std::process::Command;

use ccr_integration::relay::{RelayOptions, RelayProcess};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions};

/// The uid and gid of `nobody` on Debian.
const NOBODY: &str = "65534";

/// `curl http://origin.test/hello` through `relay`, as `nobody` when
/// `as_nobody`; returns the HTTP status curl saw and the body.
fn curl_status(relay: &RelayProcess, as_nobody: bool) -> (String, String) {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            "curl",
        ]);
        c
    } else {
        Command::new("curl")
    };
    let out = cmd
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", "--proxy"])
        .arg(&relay.proxy_url)
        .arg("http://origin.test/hello")
        .output()
        .expect("run curl (setpriv comes with util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

fn scene(opts: RelayOptions) -> (DevOrigin, DevGateway, RelayProcess) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests run curl as another user: they need root"
    );
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    let relay = RelayProcess::serve(&gw, opts);
    (origin, gw, relay)
}

#[test]
fn only_the_session_and_root_may_use_the_proxy() {
    let (_o, gw, relay) = scene(RelayOptions::default());
    let (code, body) = curl_status(&relay, false);
    assert_eq!(
        code, "200",
        "root (the relay's own uid) gets through: {body}"
    );
    let tunnels_before = gw.count_events("connect ");
    let (code, body) = curl_status(&relay, true);
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains(
            "the proxy serves only the session's own processes; uid 65534 is not allowed"
        ),
        "{body}"
    );
    assert_eq!(
        gw.count_events("connect "),
        tunnels_before,
        "a refused client never reaches the gateway"
    );
    let log = relay.wait_for_log(std::time::Duration::from_secs(5), |l| {
        l.contains("refused: uid 65534")
    });
    assert!(
        log[0].contains("(curl)"),
        "the warning names the process: {log:?}"
    );
    // The status page, asked by the relay's own uid, lists the refusal.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "*"])
        .arg(format!("http://{}/__agentproxy/status", relay.proxy_addr))
        .output()
        .expect("run curl");
    let page = String::from_utf8_lossy(&out.stdout);
    let at = page
        .find("\"kind\": \"client_refused\"")
        .unwrap_or_else(|| panic!("no client_refused on the status page:\n{page}"));
    let entry = &page[at..page[at..].find('}').map_or(page.len(), |e| at + e)];
    assert!(
        entry.contains("\"detail\": \"the proxy serves only the session's own processes; uid 65534 is not allowed"),
        "{entry}"
    );
    assert!(entry.contains("\"host\": \"127.0.0.1:"), "{entry}");
}

#[test]
fn allow_uid_and_allow_any_uid_open_the_door() {
    let (_o, _gw, relay) = scene(RelayOptions::default().arg("--allow-uid").arg(NOBODY));
    let (code, body) = curl_status(&relay, true);
    assert_eq!(code, "200", "{body}");
    let (_o, _gw, relay) = scene(RelayOptions::default().arg("--allow-any-uid"));
    let (code, body) = curl_status(&relay, true);
    assert_eq!(code, "200", "{body}");
}

/// Starts a program (its path and arguments follow) in a sandbox where the
/// relay cannot find who owns a connection: a seccomp filter makes
/// `socket(AF_NETLINK, …)` fail with EPERM (no socket diagnostics), and
/// the caller mounts an empty tmpfs over `/proc` (no `/proc/net/tcp`).
/// x86-64 only; other machines fail the filter's arch check and run
/// unfiltered, which the test notices (the relay would then pass its
/// self-test).
const NO_NETLINK: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
prog = b"".join([
    insn(0x20, 0, 0, 4),            # load arch
    insn(0x15, 0, 5, 0xC000003E),   # x86-64, else allow
    insn(0x20, 0, 0, 0),            # load syscall number
    insn(0x15, 0, 3, 41),           # socket, else allow
    insn(0x20, 0, 0, 16),           # load args[0] (low half)
    insn(0x15, 0, 1, 16),           # AF_NETLINK, else allow
    insn(0x06, 0, 0, 0x00050001),   # SECCOMP_RET_ERRNO | EPERM
    insn(0x06, 0, 0, 0x7FFF0000),   # SECCOMP_RET_ALLOW
])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
if libc.prctl(38, 1, 0, 0, 0) != 0:          # PR_SET_NO_NEW_PRIVS
    sys.exit("prctl(PR_SET_NO_NEW_PRIVS) failed")
if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:   # PR_SET_SECCOMP, FILTER
    sys.exit("prctl(PR_SET_SECCOMP) failed: errno %d" % ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"#;

/// A session whose relay runs where connection owners cannot be found.
fn blind_session(name: &str, gw: &DevGateway) -> ccr_integration::session_env::Session {
    let dir = ccr_integration::temp_dir(name);
    let script = dir.join("no-netlink.py");
    std::fs::write(&script, NO_NETLINK).unwrap();
    let wrapper = format!(
        "mount -t tmpfs none /proc && exec python3 {} \"$0\" \"$@\"",
        script.display()
    );
    // The directory must outlive the session's runs: leak it with the test.
    std::mem::forget(dir);
    ccr_integration::session_env::Session::for_gateway(name, gw).wrapped(&[
        "unshare",
        "-m",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &wrapper,
    ])
}

// The seccomp filter of this test is written for x86-64.
#[cfg(target_arch = "x86_64")]
#[test]
fn where_owners_cannot_be_found_the_relay_says_so_and_decides() {
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().map("origin.test:80", origin.addr));
    // Default: one warning, then every local process may use the proxy.
    let out = blind_session("access-blind", &gw).run(&["sh", "-c", "env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.var("HTTPS_PROXY").is_some(),
        "the proxy is on: {}",
        out.describe()
    );
    let warnings: Vec<&str> = out
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("cannot find who owns a connection"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", out.describe());
    // --require-uid-check: the proxy stays off, the command still runs.
    let out = blind_session("access-blind-required", &gw)
        .arg("--require-uid-check")
        .run(&["sh", "-c", "echo ran; env"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.starts_with("ran\n"), "{}", out.describe());
    assert!(
        out.var("HTTPS_PROXY").is_none(),
        "the proxy stays off: {}",
        out.describe()
    );
    assert!(
        out.stderr.contains("--require-uid-check"),
        "{}",
        out.describe()
    );
    // doctor predicts the same.
    let out = blind_session("access-blind-doctor", &gw)
        .arg("--require-uid-check")
        .doctor();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stdout.contains("FAIL  who may use the proxy"),
        "{}",
        out.describe()
    );
}
