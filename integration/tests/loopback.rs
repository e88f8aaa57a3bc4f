//! Loopback never goes to the gateway: the real relay (running as root
//! here, as the tests do), real `curl` as root and as `nobody` (`setpriv`),
//! a development origin listening on `127.0.0.1`, and the development
//! gateway, which must see no tunnel for any of it. A CONNECT or a
//! plain-HTTP request for `127.0.0.0/8`, `localhost` or `*.localhost` is
//! dialled by the relay itself for its own uid, in both generations and in
//! selective mode whatever the include list says; another admitted uid
//! (`--allow-uid`, `--allow-any-uid`) gets `403`.

use std::process::Command;

use ccr_integration::relay::{RelayOptions, RelayProcess};
use ccr_integration::{DevGateway, DevOrigin, GatewayOptions, ServerKind};

/// The uid and gid of `nobody` on Debian.
const NOBODY: &str = "65534";
const HELLO: &str = "hello from origin\n";

/// What curl saw: the proxy's answer to its CONNECT (`000` without one),
/// the HTTP status, and the body.
#[derive(Debug)]
struct Seen {
    connect: String,
    status: String,
    body: String,
}

/// `curl URL` through `relay`, as `nobody` when `as_nobody`, through a
/// CONNECT tunnel when `tunnel` (else as a plain absolute-form request).
/// `NO_PROXY` is overridden: the point is a client that sends loopback to
/// the proxy anyway.
fn curl(relay: &RelayProcess, url: &str, tunnel: bool, as_nobody: bool) -> Seen {
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
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "--noproxy",
        "",
        "-w",
        "\n%{http_connect} %{http_code}",
        "--proxy",
    ])
    .arg(&relay.proxy_url);
    if tunnel {
        cmd.arg("--proxytunnel");
    }
    for var in [
        "NO_PROXY",
        "no_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("run curl (setpriv comes with util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, codes) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (connect, status) = codes.split_once(' ').unwrap_or((codes, ""));
    Seen {
        connect: connect.to_string(),
        status: status.to_string(),
        body: body.to_string(),
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests run curl as another user: they need root"
    );
}

/// The loopback URLs of `origin`, by literal, by `localhost` and by a name
/// under `.localhost`.
fn loopback_urls(origin: &DevOrigin) -> Vec<String> {
    let port = origin.addr.port();
    vec![
        format!("http://127.0.0.1:{port}/hello"),
        format!("http://localhost:{port}/hello"),
        format!("http://app.localhost:{port}/hello"),
    ]
}

/// Every loopback URL, plain and tunnelled, is served to the relay's own
/// uid, and the gateway sees none of it.
fn assert_served_without_the_gateway(relay: &RelayProcess, gw: &DevGateway, origin: &DevOrigin) {
    let before = gw.count_events("connect ");
    for url in loopback_urls(origin) {
        for tunnel in [false, true] {
            let seen = curl(relay, &url, tunnel, false);
            assert_eq!(
                (seen.status.as_str(), seen.body.as_str()),
                ("200", HELLO),
                "{url} (tunnel: {tunnel}): {seen:?}\nrelay log:\n{}",
                relay.stderr()
            );
            if tunnel {
                assert_eq!(seen.connect, "200", "{url}: {seen:?}");
            }
        }
    }
    assert_eq!(
        gw.count_events("connect "),
        before,
        "loopback never reaches the gateway: {:?}",
        gw.events()
    );
}

#[test]
fn loopback_is_served_for_the_relays_uid_without_the_gateway() {
    require_root();
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default());
    let relay = RelayProcess::serve(&gw, RelayOptions::default());
    assert_served_without_the_gateway(&relay, &gw, &origin);
    let log = relay.stderr();
    assert!(
        log.contains("loopback 127.0.0.1:") || log.contains("loopback localhost:"),
        "the relay logs its loopback dials at info: {log}"
    );
}

#[test]
fn selective_mode_serves_loopback_whatever_the_include_list_says() {
    require_root();
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default().agent_proxy(ServerKind::Late));
    // `*` would send every host through the gateway.
    let relay = RelayProcess::serve(
        &gw,
        RelayOptions::default()
            .agent_proxy()
            .env("CCR_AGENT_PROXY_RELAY_MODE", "selective")
            .env("CCR_AGENT_PROXY_INCLUDE_HOSTS", "*"),
    );
    assert_served_without_the_gateway(&relay, &gw, &origin);
}

#[test]
fn another_admitted_uid_gets_403_for_loopback() {
    require_root();
    let origin = DevOrigin::start(None);
    let gw = DevGateway::start(GatewayOptions::default());
    for admit in ["--allow-uid", "--allow-any-uid"] {
        let opts = match admit {
            "--allow-uid" => RelayOptions::default().arg(admit).arg(NOBODY),
            _ => RelayOptions::default().arg(admit),
        };
        let relay = RelayProcess::serve(&gw, opts);
        let before = gw.count_events("connect ");
        for url in loopback_urls(&origin) {
            let seen = curl(&relay, &url, false, true);
            assert_eq!(seen.status, "403", "{admit} {url}: {seen:?}");
            assert!(
                seen.body
                    .contains("loopback is served only to processes of the relay's own uid"),
                "{admit} {url}: {seen:?}"
            );
            let seen = curl(&relay, &url, true, true);
            assert_eq!(seen.connect, "403", "{admit} {url} (tunnel): {seen:?}");
        }
        assert_eq!(
            gw.count_events("connect "),
            before,
            "{admit}: a refused loopback request never reaches the gateway"
        );
        // The relay's own uid is still served by the same relay.
        let seen = curl(&relay, &loopback_urls(&origin)[0], true, false);
        assert_eq!((seen.status.as_str(), seen.body.as_str()), ("200", HELLO));
        // The status page records the refusals.
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--noproxy", "*"])
            .arg(format!("http://{}/__agentproxy/status", relay.proxy_addr))
            .output()
            .expect("run curl");
        let page = String::from_utf8_lossy(&out.stdout);
        assert!(
            page.contains("\"kind\": \"loopback_forbidden\""),
            "{admit}: no loopback_forbidden on the status page:\n{page}"
        );
    }
}
