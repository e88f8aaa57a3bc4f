//! Real credential-hungry tools through `ccr-relay run` and the MITM
//! development gateway (the contract's section 6b): `gh api /user` and
//! `aws sts get-caller-identity` refuse to send a request without a
//! credential of their own, so the relay gives them the placeholder
//! `proxy-injected`, and the gateway replaces it with the real one. A
//! recording HTTPS origin (this file's [`Recorder`]) plays `api.github.com`
//! and `sts.test`: it answers like the service and keeps every request
//! head, so the tests assert what the origin received.
//!
//! Two scenes per tool: with injection (the origin sees the gateway's
//! credential, never the placeholder) and without (the origin sees exactly
//! what the client sent: the placeholder, or the parent's own token).
//!
//! git: `git clone git@github.com:org/repo.git` is rewritten to HTTPS by
//! the relay's `GIT_CONFIG_*` and reaches the gateway (`github.com:443`
//! mapped to a dumb-HTTP origin serving a real bare repository); with
//! `SSH_AUTH_SOCK` set it is not rewritten.
//!
//! A missing tool fails the test and names the package (never a pass).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ccr_integration::pki::TestCa;
use ccr_integration::relay::{RelayOptions, relay_command};
use ccr_integration::session_env::{Outcome, Running};
use ccr_integration::{DevGateway, GatewayOptions, ServerKind, TempDir, temp_dir};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};

const GH_USER: &str = "{\"login\":\"octo-relay\",\"id\":4242}";
const STS_IDENTITY: &str = "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
<GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/relay-test</Arn>\
<UserId>AIDARELAYTEST</UserId><Account>123456789012</Account></GetCallerIdentityResult>\
<ResponseMetadata><RequestId>0f0e0d0c-0b0a-0908-0706-050403020100</RequestId></ResponseMetadata>\
</GetCallerIdentityResponse>";
const REAL_GH: &str = "token gho_real_from_gateway";
const REAL_AWS: &str = "AWS4-HMAC-SHA256 Credential=AKIAREALFROMGATEWAY/x, Signature=00";

/// An HTTPS origin answering `GET /user` like GitHub and any `POST` like
/// STS, keeping every request head it received.
struct Recorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start(cert: &Path, key: &Path) -> Recorder {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_certificate_chain_file(cert).unwrap();
        acceptor
            .set_private_key_file(key, SslFiletype::PEM)
            .unwrap();
        let acceptor = Arc::new(acceptor.build());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&heads);
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let acceptor = Arc::clone(&acceptor);
                let kept = Arc::clone(&kept);
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
                    let Ok(tls) = acceptor.accept(conn) else {
                        return;
                    };
                    let mut reader = BufReader::new(tls);
                    loop {
                        let mut head = String::new();
                        let mut len = 0usize;
                        loop {
                            let mut line = String::new();
                            match reader.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some((n, v)) = line.split_once(':')
                                && n.eq_ignore_ascii_case("content-length")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                            head.push_str(&line);
                            if head.len() > 64 * 1024 {
                                return;
                            }
                        }
                        let mut body = vec![0; len.min(1 << 20)];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let (ctype, answer) = if head.starts_with("POST ") {
                            ("text/xml", STS_IDENTITY)
                        } else {
                            ("application/json; charset=utf-8", GH_USER)
                        };
                        kept.lock().unwrap().push(head);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if reader.get_mut().write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Recorder { addr, heads }
    }

    /// The values of header `name` in every head received so far.
    fn header_values(&self, name: &str) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .flat_map(|h| {
                h.lines()
                    .filter_map(|l| l.split_once(':'))
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The origin CA, the recorder (for both names) and a MITM gateway mapping
/// `api.github.com:443` and `sts.test:443` to it, injecting when asked.
struct Scene {
    dir: TempDir,
    origin: Recorder,
    gw: DevGateway,
    relay: RelayOptions,
}

impl Scene {
    fn start(name: &str, inject: bool) -> Scene {
        let dir = temp_dir(name);
        let ca = TestCa::new(&dir.join("origin-ca")).unwrap();
        let (cert, key) = ca.issue_leaf(&["api.github.com", "sts.test"]);
        let origin = Recorder::start(&cert, &key);
        let mut opts = GatewayOptions::default()
            .mitm(&ca.cert_path())
            .map("api.github.com:443", origin.addr)
            .map("sts.test:443", origin.addr);
        if inject {
            opts = opts
                .inject("api.github.com", "Authorization", REAL_GH)
                .inject("sts.test", "Authorization", REAL_AWS);
        }
        let gw = DevGateway::start(opts);
        Scene {
            dir,
            origin,
            gw,
            relay: RelayOptions::default(),
        }
    }

    /// The agent-proxy generation: a blind gateway (the development
    /// gateway has no MITM there, so nothing is injected) serving the
    /// origin's CA as its own, so the relay's bundle trusts the origin.
    fn start_agent_proxy(name: &str) -> Scene {
        let dir = temp_dir(name);
        let ca_dir = dir.join("origin-ca");
        let ca = TestCa::new(&ca_dir).unwrap();
        let (cert, key) = ca.issue_leaf(&["api.github.com", "sts.test"]);
        let origin = Recorder::start(&cert, &key);
        let opts = GatewayOptions::default()
            .args(&["--ca-dir", &ca_dir.to_string_lossy()])
            .agent_proxy(ServerKind::Late)
            .map("api.github.com:443", origin.addr)
            .map("sts.test:443", origin.addr);
        let gw = DevGateway::start(opts);
        Scene {
            dir,
            origin,
            gw,
            relay: RelayOptions::default().agent_proxy(),
        }
    }

    /// `ccr-relay run -- COMMAND` with `vars` in the relay's (the
    /// parent's) environment.
    fn run(&self, command: &[&str], vars: &[(&str, &str)]) -> Outcome {
        let (mut cmd, token) = relay_command("run", &self.gw, &self.relay, self.dir.path());
        cmd.envs(vars.iter().copied()).arg("--").args(command);
        let out = Running::spawn(cmd).finish(Duration::from_secs(90));
        assert!(
            !token.exists(),
            "the relay did not start; its stderr:\n{}",
            out.stderr
        );
        out
    }
}

fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool}` is needed by this test and is not on PATH: install the `{package}` package \
(integration/ci-packages.txt)"
    );
}

fn success(out: &Outcome, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout.clone()
}

const GH: &[&str] = &["gh", "api", "/user"];
const GH_ENV: &[(&str, &str)] = &[("GH_NO_UPDATE_NOTIFIER", "1"), ("GH_PROMPT_DISABLED", "1")];

#[test]
fn gh_api_user_sends_the_placeholder_and_the_origin_sees_the_injected_token() {
    require("gh", "gh");
    let scene = Scene::start("tools-gh-inject", true);
    let out = scene.run(GH, GH_ENV);
    let printed = success(&out, "gh api /user");
    assert!(printed.contains("\"octo-relay\""), "{printed}");
    assert_eq!(scene.origin.header_values("Authorization"), [REAL_GH]);
    scene.gw.wait_for_event_prefix(
        "mitm api.github.com inject Authorization",
        Duration::from_secs(10),
    );

    // Without injection the origin sees what gh sent: the placeholder.
    let scene = Scene::start("tools-gh-plain", false);
    let out = scene.run(GH, GH_ENV);
    success(&out, "gh api /user (no injection)");
    assert_eq!(
        scene.origin.header_values("Authorization"),
        ["token proxy-injected"]
    );
}

/// The agent-proxy generation gives gh the same placeholder; the gateway
/// hears which process asked (`X-Agent-Proxy-Client-Process`).
#[test]
fn gh_gets_the_placeholder_in_the_agent_proxy_generation() {
    require("gh", "gh");
    let scene = Scene::start_agent_proxy("tools-gh-agent");
    let out = scene.run(GH, GH_ENV);
    let printed = success(&out, "gh api /user (agent proxy)");
    assert!(printed.contains("\"octo-relay\""), "{printed}");
    assert_eq!(
        scene.origin.header_values("Authorization"),
        ["token proxy-injected"]
    );
    // The client process, unless a loaded machine could not find it within
    // the lookup's few milliseconds (the contract's timed-out marker).
    let events = scene.gw.events();
    assert!(
        events.iter().any(|e| e.starts_with("v2 client-process ")
            && (e.ends_with(" gh") || e.ends_with(" <lookup-timed-out>"))),
        "the gateway was not told the client is gh: {events:?}"
    );
}

#[test]
fn gh_keeps_the_parents_own_token() {
    require("gh", "gh");
    let scene = Scene::start("tools-gh-own", false);
    let mut vars = GH_ENV.to_vec();
    vars.push(("GH_TOKEN", "gho_parents_own"));
    let out = scene.run(GH, &vars);
    success(&out, "gh api /user with the parent's GH_TOKEN");
    assert_eq!(
        scene.origin.header_values("Authorization"),
        ["token gho_parents_own"]
    );
}

const AWS: &[&str] = &["aws", "sts", "get-caller-identity", "--output", "json"];
const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ENDPOINT_URL", "https://sts.test"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
    ("AWS_MAX_ATTEMPTS", "1"),
];

#[test]
fn aws_sts_signs_with_the_placeholder_and_the_origin_sees_the_injected_credential() {
    require("aws", "awscli");
    let scene = Scene::start("tools-aws-inject", true);
    let out = scene.run(AWS, AWS_ENV);
    let printed = success(&out, "aws sts get-caller-identity");
    assert!(printed.contains("123456789012"), "{printed}");
    assert_eq!(scene.origin.header_values("Authorization"), [REAL_AWS]);
    scene.gw.wait_for_event_prefix(
        "mitm sts.test inject Authorization",
        Duration::from_secs(10),
    );
    // The relay created ~/.aws/config with unsigned S3 payloads.
    let config = std::fs::read_to_string(scene.dir.join("home/.aws/config")).unwrap();
    assert!(
        config.contains("payload_signing_enabled = false"),
        "{config}"
    );

    let scene = Scene::start("tools-aws-plain", false);
    let out = scene.run(AWS, AWS_ENV);
    success(&out, "aws sts get-caller-identity (no injection)");
    let auth = scene.origin.header_values("Authorization");
    assert_eq!(auth.len(), 1, "{auth:?}");
    assert!(
        auth[0].starts_with("AWS4-HMAC-SHA256 Credential=proxy-injected/"),
        "the client signed with the placeholder: {auth:?}"
    );
}

/// Runs `git ARGS` in `dir`, bounded, with no user or system config.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("timeout")
        .arg("30")
        .arg("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare repository `org/repo.git` under `root` holding one commit with
/// `README` = `text`, prepared for dumb HTTP.
fn bare_repo(root: &Path, text: &str) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), text).unwrap();
    git(&work, &["add", "README"]);
    git(
        &work,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "one",
        ],
    );
    std::fs::create_dir_all(root.join("org")).unwrap();
    git(root, &["clone", "-q", "--bare", "work", "org/repo.git"]);
    git(&root.join("org/repo.git"), &["update-server-info"]);
}

#[test]
fn git_clone_of_a_github_ssh_remote_goes_to_the_gateway_over_https() {
    require("git", "git");
    let dir = temp_dir("tools-git");
    let serve = dir.join("serve");
    bare_repo(&serve, "through the relay\n");
    let ca = TestCa::new(&dir.join("origin-ca")).unwrap();
    let (cert, key) = ca.issue_leaf(&["github.com"]);
    let origin = ccr_integration::DevOrigin::start_serving(Some((&cert, &key)), Some(&serve));
    let gw = DevGateway::start(
        GatewayOptions::default()
            .mitm(&ca.cert_path())
            .map("github.com:443", origin.addr),
    );
    let scene = Scene {
        dir,
        origin: Recorder::start(&cert, &key),
        gw,
        relay: RelayOptions::default(),
    };
    let clone = scene.dir.join("clone");
    let clone_s = clone.to_string_lossy().into_owned();
    let out = scene.run(
        &[
            "git",
            "clone",
            "-q",
            "git@github.com:org/repo.git",
            &clone_s,
        ],
        &[("GIT_CONFIG_NOSYSTEM", "1")],
    );
    success(&out, "git clone git@github.com:org/repo.git");
    assert_eq!(
        std::fs::read_to_string(clone.join("README")).unwrap(),
        "through the relay\n"
    );
    scene.gw.wait_for_event(Duration::from_secs(10), |l| {
        l == "mitm github.com leaf-issued"
    });

    // With SSH of its own the remote stays SSH: git runs ssh (a stand-in
    // that records its arguments), and nothing reaches the gateway for it.
    let bin = scene.dir.join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = scene.dir.join("ssh.log");
    let ssh = bin.join("ssh");
    std::fs::write(
        &ssh,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\nexit 128\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let clone2 = scene.dir.join("clone2").to_string_lossy().into_owned();
    let out = scene.run(
        &["git", "clone", "-q", "git@github.com:org/repo.git", &clone2],
        &[
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("SSH_AUTH_SOCK", "/nonexistent/agent.sock"),
            ("PATH", &path),
        ],
    );
    assert!(!out.status.success(), "the stand-in ssh fails the clone");
    let called = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        called.contains("git@github.com"),
        "ssh was not run: {called:?} {}",
        out.stderr
    );
    let leaves = scene
        .gw
        .events()
        .iter()
        .filter(|l| l.as_str() == "mitm github.com leaf-issued")
        .count();
    assert_eq!(leaves, 1, "the SSH clone must not reach the gateway");
}
