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
