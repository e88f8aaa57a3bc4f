//! The command line: turns `argv` into a [`Command`] with its [`Config`].
//! Hand-written (no parser crate). For `serve`, `doctor` and `status` an
//! unknown flag, a bad value or a missing one is a usage error that says
//! which and what is expected. `run` fails open instead: an entrypoint
//! written for a newer relay, or with a typo, must still start its agent,
//! so `run` then runs its command as if the relay were absent, after a
//! warning, and refuses only when it cannot tell what the command is
//! ([`parse`] has the rule).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;

pub const USAGE: &str = "\
ccr-relay: carries a container's outbound HTTP(S) through the session's gateway

USAGE
  ccr-relay run   [OPTIONS] -- COMMAND [ARG...]   run COMMAND with the proxy set up
  ccr-relay serve [OPTIONS] [--env-file PATH]     serve until SIGTERM or SIGINT
  ccr-relay doctor [OPTIONS]                      explain what start-up would do
  ccr-relay status [--proxy URL]                  a running relay's state and recent failures
                                                  [default URL: $HTTPS_PROXY]
  ccr-relay --help | --version

OPTIONS
  --base-url URL      gateway base URL [default: $ANTHROPIC_BASE_URL, else https://api.anthropic.com]
  --token-file PATH   session token file [default: /run/ccr/session_token]
  --ca-bundle PATH    where the merged CA bundle goes [default: $HOME/.ccr/ca-bundle.crt;
                      no HOME: a private directory of the relay's own]
  --system-ca PATH    system CA bundle to merge [default: the one openssl-probe finds]
  --gateway-ca PATH   extra roots for the relay's own TLS to the gateway
  --listen ADDR       local proxy address [default: 127.0.0.1:0, an ephemeral port]
  --no-proxy LIST     comma-separated hosts appended to NO_PROXY; -HOST removes
                      HOST from the default list (--no-proxy=-pypi.org)
  --no-proxy-default reference|none
                      the NO_PROXY list to start from [default: reference]
  --env-file PATH     (serve) write the children's environment here, as sh exports
  --allow-uid LIST    uids (comma-separated) that may use the proxy besides the
                      relay's own and root
  --allow-any-uid     let every local process use the proxy (and the session's
                      credentials that go with it)
  --require-uid-check keep the proxy off where connection owners cannot be found
  --require-v2        (agent proxy) refuse tunnels when the gateway does not
                      acknowledge tunnel protocol v2, instead of falling back
  --keep-trust        leave the trust installed machine-wide (system store,
                      NSS, bazelrc, login shells) when the relay stops
  --keep-warm[=on|off] (agent proxy) keep the newest pooled WebSocket past the
                      idle limit, up to its max age, so the next command
                      need not dial; off: every pooled one expires when idle
                      [default: on]

TUNING (mostly for tests)
  --keepalive SECS        idle tunnel keepalive interval; also how long a gateway
                          WebSocket may be silent before it gets a Ping [default: 30]
  --gateway-deadline SECS how long a Ping may go unanswered (nothing at all back)
                          before the WebSocket is given up: its tunnel's client
                          is reset; applies once the gateway has answered a Ping
                          [default: 30]
  --head-timeout SECS     time a client has to send its request head [default: 10]
  --upgrade-timeout SECS  time to reach the gateway and upgrade [default: 10]
  --max-head BYTES        largest request head [default: 8192]
  --fin-grace SECS        (v2) wait for the server's FIN after the client closed [default: 10]
  --pool-idle SECS        (v2) how long an idle WebSocket stays pooled, the warm
                          one excepted [default: 10]
  --pool-max-age SECS     (v2) a WebSocket older than this is not reused [default: 2700]
  --hello-timeout SECS    (v2) wait for HELLO_ACK on a fresh WebSocket [default: 10]
  --upload-stall SECS     end a tunnel whose gateway takes no byte this long [default: 180]
  --response-timeout SECS plain http://: time an origin has to send its response head [default: 60]
  --max-pending-heads N   connections still sending their request head; more get 503 [default: 1024]
  --max-connections N     connections in all; more get 503 [default: 4096]

The relay turns itself on only inside a remote session (CLAUDE_CODE_REMOTE,
CCR_UPSTREAM_PROXY_ENABLED or CCR_AGENT_PROXY_ENABLED, CLAUDE_CODE_REMOTE_SESSION_ID,
a session token); otherwise `run` just runs COMMAND. So does a `run` whose options do not
parse (an unknown option, a bad or missing value), after a warning; write `--` before
COMMAND so it can always be found. Logs: RUST_LOG=info (one line per tunnel).
";

/// What the user asked for.
#[derive(Debug)]
pub enum Command {
    Run {
        config: Config,
        command: Vec<OsString>,
    },
    /// `run` whose options could not be parsed but whose command was found
    /// ([`parse`] says where): the command runs as if the relay were
    /// absent, after a warning naming each of `problems`.
    RunWithoutRelay {
        command: Vec<OsString>,
        problems: Vec<UsageError>,
    },
    Serve {
        config: Config,
        env_file: Option<PathBuf>,
    },
    Doctor {
        config: Config,
    },
    /// `status`: ask the relay at `proxy` (else `HTTPS_PROXY`) for its state.
    Status {
        proxy: Option<String>,
    },
    Help,
    Version,
}

/// A usage error, printed with a pointer to `--help`.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (see `ccr-relay --help`)", self.0)
    }
}

/// `problems` as one line: their texts, `; ` between.
pub fn describe(problems: &[UsageError]) -> String {
    problems
        .iter()
        .map(|p| p.0.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why one option was not taken.
enum Rejected {
    /// No such option for this command (or a switch given a value).
    Unknown(UsageError),
    /// A known option with a bad or missing value.
    Invalid(UsageError),
}

impl From<UsageError> for Rejected {
    fn from(e: UsageError) -> Rejected {
        Rejected::Invalid(e)
    }
}

/// Every command, as the usage errors list them.
const COMMANDS: &str = "run, serve, doctor or status";

/// Parses the arguments after the program name, starting from `base`
/// (the defaults and the environment's settings).
///
/// `serve` and `doctor` refuse an option they cannot parse. `run` fails
/// open instead ([`Command::RunWithoutRelay`]) wherever its command can
/// still be found, by this rule: `--` ends the options and the command
/// follows it; a known option takes its value (the next argument, unless
/// written `--name=value`; an argument starting with `--` is never taken as
/// a value: the value is then missing); an unknown option written
/// `--name=value` takes nothing more; otherwise the first argument not
/// starting with `--` begins the command. After an unknown option written
/// `--name` alone the next argument may be its value or the command, so
/// from there only a `--` ends the options. No command by this rule is a
/// usage error.
pub fn parse(args: Vec<OsString>, base: Config) -> Result<Command, UsageError> {
    let mut args = args.into_iter().peekable();
    let Some(first) = args.next() else {
        return Err(UsageError(format!("missing command: {COMMANDS}")));
    };
    let sub = match first.to_str() {
        Some("--help" | "-h" | "help") => return Ok(Command::Help),
        Some("--version" | "-V" | "version") => return Ok(Command::Version),
        Some("status") => return parse_status(args),
        Some(s @ ("run" | "serve" | "doctor")) => s.to_string(),
        _ => {
            return Err(UsageError(format!(
                "unknown command {:?}: expected {COMMANDS}",
                first.to_string_lossy()
            )));
        }
    };
    scan_options(&sub, &mut args, base)?.into_command(&sub)
}

/// What the arguments after `run`, `serve` or `doctor` came to.
struct Scan {
    config: Config,
    env_file: Option<PathBuf>,
    command: Vec<OsString>,
    /// `run` only: the options it could not parse.
    problems: Vec<UsageError>,
    /// Arguments were passed over while looking for `--` after an unknown
    /// option written without `=`.
    skipped: bool,
    /// A `--` ended the options.
    separator: bool,
    /// `--help` among the options: the rest was not read.
    help: bool,
}

/// Reads the options of `sub` from `args` onto `base`, up to the command
/// (by the rule [`parse`] gives); `run` collects the options it cannot
/// parse as problems, the others refuse the first.
fn scan_options(
    sub: &str,
    args: &mut std::iter::Peekable<impl Iterator<Item = OsString>>,
    base: Config,
) -> Result<Scan, UsageError> {
    let run = sub == "run";
    let mut scan = Scan {
        config: base,
        env_file: None,
        command: Vec::new(),
        problems: Vec::new(),
        skipped: false,
        separator: false,
        help: false,
    };
    // Set after an unknown option written without `=`: only `--` ends the
    // options now.
    let mut seeking_separator = false;
    while let Some(arg) = args.next() {
        if arg == "--" {
            scan.separator = true;
            scan.command.extend(args.by_ref());
            break;
        }
        if seeking_separator {
            scan.skipped = true;
            continue;
        }
        let Some(text) = arg.to_str().map(str::to_string) else {
            if run {
                scan.command.push(arg);
                scan.command.extend(args.by_ref());
                break;
            }
            return Err(UsageError(format!("argument {arg:?} is not UTF-8")));
        };
        if !text.starts_with("--") {
            if run {
                scan.command.push(arg);
                scan.command.extend(args.by_ref());
                break;
            }
            return Err(UsageError(format!("unexpected argument {text:?}")));
        }
        if text == "--help" {
            scan.help = true;
            break;
        }
        let (flag, inline) = match text.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (text.clone(), None),
        };
        let mut value = || option_value(&flag, inline.as_deref(), args);
        let applied = apply_option(
            sub,
            &flag,
            inline.is_some(),
            &mut value,
            &mut scan.config,
            &mut scan.env_file,
        );
        match applied {
            Ok(()) => {}
            Err(Rejected::Unknown(e) | Rejected::Invalid(e)) if !run => return Err(e),
            Err(Rejected::Unknown(e)) => {
                seeking_separator = inline.is_none();
                scan.problems.push(e);
            }
            Err(Rejected::Invalid(e)) => scan.problems.push(e),
        }
    }
    Ok(scan)
}

impl Scan {
    /// The command `sub` with these options: for `run`, the relay's run,
    /// a run without it (problems, but a command), or a usage error (no
    /// command found).
    fn into_command(self, sub: &str) -> Result<Command, UsageError> {
        let Scan {
            config,
            env_file,
            command,
            problems,
            skipped,
            separator,
            help,
        } = self;
        match sub {
            _ if help => Ok(Command::Help),
            "run" if command.is_empty() && skipped && !separator => Err(UsageError(format!(
                "{}, and no -- after it: what follows may be its value or the command; put -- before the command",
                describe(&problems)
            ))),
            "run" if command.is_empty() => {
                let needs = "run needs a command: ccr-relay run -- COMMAND [ARG...]";
                Err(UsageError(if problems.is_empty() {
                    needs.to_string()
                } else {
                    format!("{}; {needs}", describe(&problems))
                }))
            }
            "run" if !problems.is_empty() => Ok(Command::RunWithoutRelay { command, problems }),
            "run" => Ok(Command::Run { config, command }),
            "serve" => Ok(Command::Serve { config, env_file }),
            _ => Ok(Command::Doctor { config }),
        }
    }
}

/// The value of option `flag`: written inline (`--flag=value`), else the
/// next argument, taken only if it is one: missing arguments and those
/// starting with `--` (`--flag $UNSET -- COMMAND` in a shell) are left
/// where they are and the value is missing.
fn option_value(
    flag: &str,
    inline: Option<&str>,
    args: &mut std::iter::Peekable<impl Iterator<Item = OsString>>,
) -> Result<String, UsageError> {
    if let Some(v) = inline {
        return Ok(v.to_string());
    }
    let missing = || UsageError(format!("{flag} needs a value"));
    let next = args.peek().ok_or_else(missing)?;
    if next.to_str().is_some_and(|v| v.starts_with("--")) {
        return Err(missing());
    }
    args.next()
        .ok_or_else(missing)?
        .into_string()
        .map_err(|v| UsageError(format!("{flag} {v:?}: the value is not UTF-8")))
}

/// Applies option `flag` of command `sub` to `config` (or `env_file`),
/// taking its value from `value` if it has one; `inline` says whether it
/// was written `--flag=value` (a switch given a value is unknown).
fn apply_option(
    sub: &str,
    flag: &str,
    inline: bool,
    value: &mut dyn FnMut() -> Result<String, UsageError>,
    config: &mut Config,
    env_file: &mut Option<PathBuf>,
) -> Result<(), Rejected> {
    let invalid = |text: String| Rejected::Invalid(UsageError(text));
    match flag {
        "--base-url" => {
            config.base_url = value()?;
            config.base_url_from = crate::config::BaseUrlFrom::Flag;
        }
        "--token-file" => config.token_file = PathBuf::from(value()?),
        "--ca-bundle" => config.ca_bundle = PathBuf::from(value()?),
        "--system-ca" => config.system_ca = Some(PathBuf::from(value()?)),
        "--gateway-ca" => config.gateway_ca = Some(PathBuf::from(value()?)),
        "--listen" => {
            let v = value()?;
            config.listen = v.parse::<SocketAddr>().map_err(|_| {
                invalid(format!(
                    "--listen {v:?} is not an address like 127.0.0.1:8080"
                ))
            })?;
        }
        "--no-proxy" => config.no_proxy_extra.extend(
            value()?
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        ),
        "--no-proxy-default" => {
            let v = value()?;
            config.no_proxy_default = crate::env::NoProxyDefault::parse(&v).ok_or_else(|| {
                invalid(format!(
                    "--no-proxy-default {v:?}: expected reference or none"
                ))
            })?;
        }
        "--env-file" if sub == "serve" => *env_file = Some(PathBuf::from(value()?)),
        "--allow-uid" => config.allow_uids.extend(
            crate::proxy::access::parse_uids(&value()?)
                .map_err(|e| invalid(format!("--allow-uid: {e}")))?,
        ),
        "--require-v2" if !inline => config.require_v2 = true,
        "--allow-any-uid" if !inline => config.allow_any_uid = true,
        "--require-uid-check" if !inline => config.require_uid_check = true,
        "--keep-trust" if !inline => config.keep_trust = true,
        "--keep-warm" => config.keep_warm = !inline || on_off(flag, &value()?)?,
        "--require-v2" | "--allow-any-uid" | "--require-uid-check" | "--keep-trust" => {
            return Err(invalid(format!("{flag} takes no value")));
        }
        "--fin-grace" => config.limits.fin_grace = seconds(flag, &value()?)?,
        "--hello-timeout" => config.limits.hello_ack_timeout = seconds(flag, &value()?)?,
        "--keepalive" => config.limits.keepalive_interval = seconds(flag, &value()?)?,
        "--gateway-deadline" => config.limits.gateway_deadline = seconds(flag, &value()?)?,
        "--pool-idle" => config.limits.pool_idle = seconds(flag, &value()?)?,
        "--pool-max-age" => config.limits.pool_max_age = seconds(flag, &value()?)?,
        "--head-timeout" => config.limits.head_timeout = seconds(flag, &value()?)?,
        "--upgrade-timeout" => config.limits.upgrade_timeout = seconds(flag, &value()?)?,
        "--upload-stall" => config.limits.upload_stall = seconds(flag, &value()?)?,
        "--response-timeout" => {
            config.limits.response_head_timeout = seconds(flag, &value()?)?;
        }
        "--max-pending-heads" => config.limits.max_pending_heads = count(flag, &value()?)?,
        "--max-connections" => config.limits.max_connections = count(flag, &value()?)?,
        "--max-head" => {
            let v = value()?;
            config.limits.max_head_bytes = v
                .parse::<usize>()
                .ok()
                .filter(|n| (256..=1 << 20).contains(n))
                .ok_or_else(|| {
                    invalid(format!("--max-head {v:?}: expected bytes, 256 to 1048576"))
                })?;
        }
        _ => {
            return Err(Rejected::Unknown(UsageError(format!(
                "unknown option {flag} for `{sub}`"
            ))));
        }
    }
    Ok(())
}

/// `status [--proxy URL]`.
fn parse_status(mut args: impl Iterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut proxy = None;
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        match text.split_once('=') {
            _ if text == "--help" || text == "-h" => return Ok(Command::Help),
            Some(("--proxy", v)) => proxy = Some(v.to_string()),
            None if text == "--proxy" => {
                let v = args.next().and_then(|v| v.into_string().ok());
                proxy = Some(v.ok_or_else(|| UsageError("--proxy needs a value".into()))?);
            }
            _ => return Err(UsageError(format!("unknown option {text} for `status`"))),
        }
    }
    Ok(Command::Status { proxy })
}

fn seconds(flag: &str, text: &str) -> Result<Duration, UsageError> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| UsageError(format!("{flag} {text:?}: expected seconds, e.g. 0.5 or 30")))
}

/// `on` or `off`, for a switch written `--flag=on|off`.
fn on_off(flag: &str, text: &str) -> Result<bool, UsageError> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(UsageError(format!("{flag}={text}: expected on or off"))),
    }
}

fn count(flag: &str, text: &str) -> Result<usize, UsageError> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=1 << 20).contains(n))
        .ok_or_else(|| UsageError(format!("{flag} {text:?}: expected a number, 1 to 1048576")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, UsageError> {
        parse(
            args.iter().map(OsString::from).collect(),
            Config::from_env(),
        )
    }

    #[test]
    fn status_takes_an_optional_proxy() {
        for (args, want) in [
            (&["status"][..], None),
            (
                &["status", "--proxy", "http://127.0.0.1:1"][..],
                Some("http://127.0.0.1:1"),
            ),
            (
                &["status", "--proxy=http://127.0.0.1:2"][..],
                Some("http://127.0.0.1:2"),
            ),
        ] {
            match parse_strs(args) {
                Ok(Command::Status { proxy }) => assert_eq!(proxy.as_deref(), want, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        assert!(parse_strs(&["status", "--proxy"]).is_err());
        assert!(parse_strs(&["status", "--listen", "x"]).is_err());
    }

    #[test]
    fn run_takes_the_command_after_double_dash() {
        let Command::Run { config, command } = parse_strs(&[
            "run",
            "--listen",
            "127.0.0.1:9999",
            "--keepalive=0.5",
            "--",
            "curl",
            "--version",
        ])
        .unwrap() else {
            panic!("not run")
        };
        assert_eq!(
            command,
            vec![OsString::from("curl"), OsString::from("--version")]
        );
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.limits.keepalive_interval, Duration::from_millis(500));
    }

    #[test]
    fn connection_limits_and_the_upload_stall_are_flags() {
        let Command::Serve { config, .. } = parse_strs(&[
            "serve",
            "--max-pending-heads",
            "16",
            "--max-connections=64",
            "--upload-stall",
            "1.5",
            "--response-timeout",
            "2",
        ])
        .unwrap() else {
            panic!("not serve")
        };
        assert_eq!(config.limits.max_pending_heads, 16);
        assert_eq!(config.limits.max_connections, 64);
        assert_eq!(config.limits.upload_stall, Duration::from_millis(1500));
        assert_eq!(config.limits.response_head_timeout, Duration::from_secs(2));
        let defaults = crate::config::Limits::default();
        assert_eq!(
            (defaults.max_pending_heads, defaults.max_connections),
            (1024, 4096)
        );
        for bad in ["0", "-1", "many", "2000000"] {
            let err = parse_strs(&["serve", "--max-connections", bad]).unwrap_err();
            assert!(err.0.contains("--max-connections"), "{bad}: {}", err.0);
        }
    }

    #[test]
    fn the_liveness_deadline_is_a_flag() {
        let Command::Serve { config, .. } =
            parse_strs(&["serve", "--gateway-deadline", "0.75"]).unwrap()
        else {
            panic!("not serve")
        };
        assert_eq!(config.limits.gateway_deadline, Duration::from_millis(750));
        assert_eq!(
            crate::config::Limits::default().gateway_deadline,
            Duration::from_secs(30)
        );
        for bad in ["0", "-1", "soon"] {
            let err = parse_strs(&["serve", "--gateway-deadline", bad]).unwrap_err();
            assert!(err.0.contains("--gateway-deadline"), "{bad}: {}", err.0);
        }
        assert!(USAGE.contains("--gateway-deadline SECS"));
    }

    #[test]
    fn keep_warm_is_on_by_default_and_can_be_turned_off() {
        let keep_warm = |args: &[&str]| match parse_strs(args) {
            Ok(Command::Serve { config, .. }) => Ok(config.keep_warm),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.0),
        };
        assert_eq!(keep_warm(&["serve"]), Ok(true));
        assert_eq!(keep_warm(&["serve", "--keep-warm"]), Ok(true));
        assert_eq!(keep_warm(&["serve", "--keep-warm=on"]), Ok(true));
        assert_eq!(keep_warm(&["serve", "--keep-warm=off"]), Ok(false));
        let err = keep_warm(&["serve", "--keep-warm=maybe"]).unwrap_err();
        assert!(err.contains("expected on or off"), "{err}");
        // A bare switch takes no value from the next argument.
        let Command::Run { config, command } = parse_strs(&["run", "--keep-warm", "off"]).unwrap()
        else {
            panic!("not a run");
        };
        assert!(config.keep_warm);
        assert_eq!(command, vec![OsString::from("off")]);
    }

    #[test]
    fn the_pool_max_age_is_a_flag() {
        let Command::Serve { config, .. } = parse_strs(&["serve", "--pool-max-age", "3"]).unwrap()
        else {
            panic!("not serve");
        };
        assert_eq!(config.limits.pool_max_age, Duration::from_secs(3));
        assert_eq!(
            crate::config::Limits::default().pool_max_age,
            Duration::from_secs(45 * 60)
        );
    }

    #[test]
    fn the_pool_idle_limit_is_a_flag() {
        let Command::Serve { config, .. } = parse_strs(&["serve", "--pool-idle", "2.5"]).unwrap()
        else {
            panic!("not serve")
        };
        assert_eq!(config.limits.pool_idle, Duration::from_millis(2500));
        assert_eq!(
            crate::config::Limits::default().pool_idle,
            Duration::from_secs(10)
        );
        let err = parse_strs(&["serve", "--pool-idle", "0"]).unwrap_err();
        assert!(err.0.contains("--pool-idle"), "{}", err.0);
    }

    #[test]
    fn run_takes_the_command_without_double_dash() {
        let Command::Run { command, .. } = parse_strs(&["run", "env", "-i"]).unwrap() else {
            panic!("not run")
        };
        assert_eq!(command, vec![OsString::from("env"), OsString::from("-i")]);
    }

    #[test]
    fn serve_reads_its_options() {
        let Command::Serve { config, env_file } = parse_strs(&[
            "serve",
            "--base-url",
            "http://127.0.0.1:1",
            "--env-file",
            "/tmp/x.env",
            "--no-proxy",
            "a.test, b.test",
            "--no-proxy=-pypi.org",
            "--no-proxy-default=none",
        ])
        .unwrap() else {
            panic!("not serve")
        };
        assert_eq!(config.base_url, "http://127.0.0.1:1");
        assert_eq!(config.base_url_from, crate::config::BaseUrlFrom::Flag);
        assert_eq!(config.base_url_name(), "--base-url");
        assert_eq!(env_file, Some(PathBuf::from("/tmp/x.env")));
        assert_eq!(config.no_proxy_extra, vec!["a.test", "b.test", "-pypi.org"]);
        assert_eq!(config.no_proxy_default, crate::env::NoProxyDefault::Empty);
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        for (args, needle) in [
            (&[][..], "missing command: run, serve, doctor or status"),
            (&["frobnicate"][..], "expected run, serve, doctor or status"),
            (&["run"][..], "run needs a command"),
            (&["serve", "--listen", "nope"][..], "--listen"),
            (&["serve", "--keepalive", "-1"][..], "--keepalive"),
            (&["serve", "--bogus"][..], "unknown option --bogus"),
            (
                &["serve", "--no-proxy-default", "all"][..],
                "expected reference or none",
            ),
            (&["serve", "--token-file"][..], "needs a value"),
            (
                &["serve", "--token-file", "--listen", "x"][..],
                "--token-file needs a value",
            ),
            (
                &["serve", "--require-v2=1"][..],
                "--require-v2 takes no value",
            ),
            (
                &["doctor", "--env-file", "x"][..],
                "unknown option --env-file",
            ),
        ] {
            let err = parse_strs(args).unwrap_err();
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
    }

    /// What `run` with `args` fails open to: the command and the problems.
    fn fails_open(args: &[&str]) -> (Vec<String>, Vec<String>) {
        match parse_strs(args) {
            Ok(Command::RunWithoutRelay { command, problems }) => (
                command
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
                problems.into_iter().map(|p| p.0).collect(),
            ),
            other => panic!("{args:?}: not failing open: {other:?}"),
        }
    }

    #[test]
    fn run_with_options_it_cannot_parse_still_finds_the_command() {
        for (args, command, problem) in [
            // An unknown option: the command follows `--`, whatever is
            // between (it may be the option's value).
            (
                &["run", "--some-new-flag", "--", "agent", "-x"][..],
                &["agent", "-x"][..],
                "unknown option --some-new-flag",
            ),
            (
                &["run", "--new-flag", "value", "--", "agent"][..],
                &["agent"][..],
                "unknown option --new-flag",
            ),
            (
                &["run", "--new-flag", "--listen", "nope", "x", "--", "agent"][..],
                &["agent"][..],
                "unknown option --new-flag",
            ),
            // Written with `=`, it takes no other argument: the command
            // may follow without `--`, as after any option.
            (
                &["run", "--new-flag=1", "agent", "--", "y"][..],
                &["agent", "--", "y"][..],
                "unknown option --new-flag",
            ),
            // A bad value: the option took its value; the parse goes on.
            (
                &["run", "--listen", "nope", "agent"][..],
                &["agent"][..],
                "--listen \"nope\"",
            ),
            (
                &["run", "--keepalive=-1", "--", "agent"][..],
                &["agent"][..],
                "--keepalive",
            ),
            // A missing value: `--` (an unquoted empty variable) is no value.
            (
                &["run", "--listen", "--", "agent"][..],
                &["agent"][..],
                "--listen needs a value",
            ),
            (
                &["run", "--token-file", "--require-v2", "--", "agent"][..],
                &["agent"][..],
                "--token-file needs a value",
            ),
            // `serve`'s option is not `run`'s.
            (
                &["run", "--env-file", "x", "--", "agent"][..],
                &["agent"][..],
                "unknown option --env-file",
            ),
            (
                &["run", "--require-v2=yes", "--", "agent"][..],
                &["agent"][..],
                "--require-v2",
            ),
        ] {
            let (got, problems) = fails_open(args);
            assert_eq!(got, command, "{args:?}");
            assert!(
                problems.iter().any(|p| p.contains(problem)),
                "{args:?}: {problems:?} does not name {problem:?}"
            );
        }
        // Every problem is named, in order.
        let (_, problems) = fails_open(&["run", "--a=1", "--listen", "nope", "--", "agent"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("--a"), "{problems:?}");
        assert!(problems[1].contains("--listen"), "{problems:?}");
    }

    #[test]
    fn run_fails_open_only_where_the_command_is_certain() {
        for (args, needle) in [
            // No command at all.
            (&["run", "--bogus"][..], "run needs a command"),
            (&["run", "--listen", "nope"][..], "run needs a command"),
            (&["run", "--keepalive"][..], "run needs a command"),
            (&["run", "--bogus", "--"][..], "run needs a command"),
            (&["run", "--bogus", "x", "--"][..], "run needs a command"),
            // `agent` may be --bogus's value: without `--`, no command can
            // be told apart, and guessing could run the wrong program.
            (
                &["run", "--bogus", "agent"][..],
                "put -- before the command",
            ),
        ] {
            let err = parse_strs(args).unwrap_err();
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
            assert!(err.to_string().contains("--bogus") || !args.contains(&"--bogus"));
        }
    }

    #[test]
    fn a_run_that_parses_is_not_failing_open() {
        assert!(matches!(
            parse_strs(&["run", "--listen", "127.0.0.1:1", "--", "agent"]),
            Ok(Command::Run { .. })
        ));
        // `--help` before the bad option still asks for help.
        assert!(matches!(
            parse_strs(&["run", "--help", "--bogus", "--", "agent"]),
            Ok(Command::Help)
        ));
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(parse_strs(&["--help"]), Ok(Command::Help)));
        assert!(matches!(
            parse_strs(&["serve", "--help"]),
            Ok(Command::Help)
        ));
        assert!(matches!(parse_strs(&["--version"]), Ok(Command::Version)));
    }
}
