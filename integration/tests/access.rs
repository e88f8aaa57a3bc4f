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

/// Run as `nobody`: connections to the proxy that a hostile local user
/// makes. `reset ADDR N`: N rounds of connect, a CONNECT head and payload,
/// then an immediate reset (SO_LINGER 0), which makes the relay's later
/// `getpeername` fail. `idle ADDR N`: N connections that send nothing,
/// held until stdin closes ("ready" once they are all open).
const HOSTILE_CLIENT: &str = r#"
import socket, struct, sys
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "reset":
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.connect((host, port))
        s.sendall(b"CONNECT flood.test:443 HTTP/1.1\r\nHost: flood.test:443\r\n\r\npayload-from-another-uid")
        s.close()
    print("done", flush=True)
else:
    held = []
    for _ in range(n):
        s = socket.socket()
        s.connect((host, port))
        held.append(s)
    print("ready", flush=True)
    sys.stdin.read()
"#;

/// Starts [`HOSTILE_CLIENT`] as `nobody` against `relay`.
fn hostile_client(relay: &RelayProcess, mode: &str, n: usize) -> std::process::Child {
    let dir = ccr_integration::temp_dir("access-hostile");
    let script = dir.join("hostile.py");
    std::fs::write(&script, HOSTILE_CLIENT).unwrap();
    // Readable by nobody: the directory is 0755, the file 0644. The
    // interpreter too: a python3 under root's home (pyenv) is not.
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "a python3 that nobody can run: /usr/bin/python3 (Debian: apt-get install python3)",
        );
    let child = Command::new("setpriv")
        .args([
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            python,
        ])
        .arg(&script)
        .args([
            mode,
            &relay.proxy_addr.ip().to_string(),
            &relay.proxy_addr.port().to_string(),
            &n.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python3 as nobody (setpriv comes with util-linux)");
    // The script is read at start; the directory may go once it printed.
    std::mem::forget(dir);
    child
}

/// Reads the hostile client's first line ("done" or "ready").
fn first_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the hostile client's output");
    line.trim().to_string()
}

#[test]
fn another_uid_that_resets_at_once_never_reaches_the_gateway() {
    let (_o, gw, relay) = scene(RelayOptions::default());
    let mut flood = hostile_client(&relay, "reset", 300);
    // The relay's own uid is served throughout the flood.
    let mut served = 0;
    while flood.try_wait().expect("poll the flood").is_none() {
        let (code, body) = curl_status(&relay, false);
        assert_eq!(
            code, "200",
            "the session's own client during the flood: {body}"
        );
        served += 1;
    }
    assert!(flood.wait().unwrap().success(), "the flood ran to its end");
    let (code, body) = curl_status(&relay, false);
    assert_eq!(
        code, "200",
        "the session's own client after the flood: {body}"
    );
    // Every connection is refused; poll until the relay has decided them all.
    let refused = count_log_within(&relay, "refused:", 300, std::time::Duration::from_secs(30));
    eprintln!("{served} requests of the session served during the flood");
    let reached: Vec<String> = gw
        .events()
        .into_iter()
        .filter(|e| e.contains("flood.test"))
        .collect();
    assert!(
        reached.is_empty(),
        "connections of another uid reached the gateway ({} of 300): {:?}",
        reached.iter().filter(|e| e.starts_with("connect ")).count(),
        reached.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(refused, 300, "every connection of another uid is refused");
}

/// Polls the relay's log until `want` lines contain `needle` or `wait`
/// passes; returns how many there were.
fn count_log_within(
    relay: &RelayProcess,
    needle: &str,
    want: usize,
    wait: std::time::Duration,
) -> usize {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let seen = relay
            .stderr()
            .lines()
            .filter(|l| l.contains(needle))
            .count();
        if seen >= want || std::time::Instant::now() >= deadline {
            return seen;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn idle_connections_of_another_uid_cannot_evict_the_sessions_client() {
    let (_o, _gw, relay) = scene(RelayOptions::default().arg("--max-pending-heads").arg("4"));
    // The session's client connects and has not sent its head yet.
    let mut own = std::net::TcpStream::connect(relay.proxy_addr).unwrap();
    // Another uid opens many more idle connections than there are slots.
    let mut idle = hostile_client(&relay, "idle", 40);
    assert_eq!(first_line(&mut idle), "ready");
    // Refusals are decided before any slot is taken: wait for them all
    // (without the uid check first, they never come and fill the slots).
    count_log_within(
        &relay,
        "refused: uid 65534",
        40,
        std::time::Duration::from_secs(10),
    );
    use std::io::{Read, Write};
    own.write_all(
        b"GET http://origin.test/hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    own.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let _ = own.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    drop(idle.stdin.take());
    let _ = idle.wait();
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "the session's client was not evicted by another uid's idle connections: {got}"
    );
}
