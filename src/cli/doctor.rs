//! `ccr-relay doctor`: each gate and start-up step with ok or why not,
//! whether the gateway answers, and the environment children would get.
//! It runs the start-up code of [`session`](crate::startup::sequence) that has no
//! side effects (the gates, the gateway's URL and TLS settings, the bundle
//! built in memory) and never its apply phase: the token file stays, no
//! bundle is written, no port is kept, and a token descriptor
//! (`CLAUDE_CODE_WEBSOCKET_AUTH_FILE_DESCRIPTOR`, readable only once) is
//! looked at but never read. The probe's verdict is judged as `run` and
//! `serve` judge it: what arrives within [`sequence::PROBE_VERDICT_WAIT`]
//! decides, a later one is reported as what happens after start-up. Where
//! `run` and `serve` part ways (a CA that `serve` asks for again), both
//! are said. With a gate closed (outside a session) start-up stops at
//! the gates, so doctor contacts nothing: it checks what it can locally,
//! says what `run` and `serve` would do and how to open the gates by hand.
//! Exits 0 when the proxy would start (or would if an unread
//! token descriptor holds a token), 1 when it would stay off, 2 when its
//! options do not parse; it then checks nothing and says what `run` (which
//! fails open on them) and `serve` would do with the same options
//! ([`usage_prediction`]).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::args::{self, Command};
use crate::cli::doctor_closed;
use crate::cli::version::version_text;
use crate::config::Config;
use crate::env::{self, ProxyEnv};
use crate::gateway::Endpoint;
use crate::startup::gates::{self, Activated, GateClosed, Generation, UnreadDescriptor};
use crate::startup::sequence::{self, Plan, ProbeVerdict, SessionError, TlsSetupError};
use crate::startup::token::AUTH_FD_VAR;
use crate::trust::{self, Bundle};

/// The gates' labels, in order (gate 4's names the token).
const GATES: [&str; 3] = [
    "gate 1  CLAUDE_CODE_REMOTE",
    "gate 2  CCR_AGENT_PROXY_ENABLED or CCR_UPSTREAM_PROXY_ENABLED",
    "gate 3  CLAUDE_CODE_REMOTE_SESSION_ID",
];

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Runs the checks, prints the report on stdout, returns the exit status.
pub fn run(config: &Config) -> i32 {
    let mut report = Report::default();
    out!("ccr-relay doctor ({})", version_text());
    out!();
    out!("activation gates");
    let dry = sequence::activate_dry(config, env_lookup);
    let undecided = dry.undecided().cloned();
    let descriptor = dry.descriptor.clone();
    let activation = dry.result;
    gates_report(&mut report, config, &activation, undecided.as_ref());
    let generation = generation_report(config);
    token_report(&activation, descriptor.as_ref());
    // A gate closed for good (not a descriptor doctor leaves unread):
    // start-up stops there, so doctor contacts nothing either.
    let closed = match (&activation, &undecided) {
        (Err(closed), None) => Some(closed.gate()),
        _ => None,
    };

    out!();
    out!("start-up steps");
    let gateway = gateway_settings_report(&mut report, config);
    if let Some(gate) = closed {
        doctor_closed::skipped_steps(gate);
        state_dir_report(&mut report, config);
        let _ = listen_report(&mut report, config);
        return doctor_closed::what_would_happen(gate, config);
    }
    // Set when the CA fetch failed: what run and serve would each do next.
    let mut serve_retry_note: Option<bool> = None;
    if let (Ok(endpoint), Ok(tls)) = &gateway {
        let found = ca_and_plan(
            config,
            endpoint,
            tls,
            activation,
            generation,
            undecided.as_ref(),
        );
        serve_retry_note = ca_report(&mut report, endpoint, generation, &found);
        gateway_websocket_report(&mut report, config, found.plan, undecided.as_ref());
    }
    state_dir_report(&mut report, config);
    let bound = listen_report(&mut report, config);

    out!();
    out!("children would get");
    children_env_report(config, generation, bound);
    crate::startup::outside::print_doctor(&config.ca_bundle, config.keep_trust, env_lookup);
    out!();
    verdict(&report, undecided.as_ref(), serve_retry_note)
}

/// Gates 1 to 4, each ok, failed (with why) or skipped for an earlier one.
fn gates_report(
    report: &mut Report,
    config: &Config,
    activation: &Result<Activated, GateClosed>,
    undecided: Option<&UnreadDescriptor>,
) {
    let labels: Vec<&str> = GATES
        .iter()
        .copied()
        .chain(["gate 4  session token"])
        .collect();
    let closed_at = activation.as_ref().err().map(|c| c.gate());
    for (i, label) in labels.iter().enumerate() {
        let gate = i as u8 + 1;
        match (closed_at, activation) {
            (Some(4), Err(_)) if gate == 4 && undecided.is_some() => {
                if let Some(d) = undecided {
                    out!(
                        "  ?     {label}: would be read from descriptor {} ({AUTH_FD_VAR}), which doctor leaves unread since it can be read only once ({}); every other source failed",
                        d.fd,
                        d.state.as_deref().unwrap_or("")
                    );
                }
            }
            (Some(at), Err(closed)) if gate == at => {
                // The label already names the gate; the token file is
                // named once, by the detail if it does.
                let text = closed.to_string();
                let prefix = format!("gate {at}: ");
                let text = text.strip_prefix(&prefix).unwrap_or(&text);
                let path = config.token_file.display().to_string();
                let label = match gate {
                    4 if !text.contains(&path) => format!("{label} (file {path})"),
                    _ => label.to_string(),
                };
                report.line(&label, false, text);
            }
            (Some(at), _) if gate > at => out!("  skip  {label}: needs gate {at} to pass"),
            _ => report.line(label, true, ""),
        }
    }
}

/// The generation gate 2 chose and the modes that go with it; returns the
/// generation (the upstream proxy when none was chosen).
fn generation_report(config: &Config) -> Generation {
    let choice = gates::choose_generation(env_lookup, config.standalone.is_active());
    let generation = choice
        .as_ref()
        .map_or(Generation::UpstreamProxy, |c| c.generation);
    if let Some(choice) = &choice {
        out!(
            "  info  generation: {} ({})",
            choice.generation.name(),
            choice.reason
        );
    }
    if generation == Generation::AgentProxy
        && let Some(list) = sequence::selective_list(env_lookup)
    {
        out!(
            "  info  selective mode: {} include pattern(s) go through the gateway, other hosts are dialled directly",
            list.len()
        );
    }
    if config.standalone.is_active() {
        out!("  info  standalone mode: the gateway is AGENT_PROXY_URL");
    }
    if config.standalone.token_ignored() {
        out!("  warn  AGENT_PROXY_AUTH_TOKEN is set without AGENT_PROXY_URL and is ignored");
    }
    generation
}

/// Where the token comes from, and what run would do with a descriptor.
fn token_report(activation: &Result<Activated, GateClosed>, descriptor: Option<&UnreadDescriptor>) {
    match (activation, descriptor) {
        (
            Ok(_),
            Some(UnreadDescriptor {
                fd,
                state: Ok(state),
            }),
        ) => out!(
            "  info  token: run would read descriptor {fd} first ({state}; doctor leaves it unread); the gateway gets the session-ingress file's token while that holds one, so doctor probes with it"
        ),
        (
            Ok(activated),
            Some(UnreadDescriptor {
                fd,
                state: Err(why),
            }),
        ) => out!(
            "  info  token from {} (descriptor {fd}: {why}; run would skip it)",
            activated.token.origin().describe()
        ),
        (Ok(activated), None) => {
            out!("  info  token from {}", activated.token.origin().describe())
        }
        (Err(_), _) => {}
    }
}

/// The gateway's URL and TLS settings (each a check), the system bundle
/// and who may use the proxy; returns the URL and TLS settings.
fn gateway_settings_report(
    report: &mut Report,
    config: &Config,
) -> (
    Result<Endpoint, SessionError>,
    Result<native_tls::TlsConnector, TlsSetupError>,
) {
    let endpoint = sequence::endpoint(config);
    report.line(
        &format!("gateway URL {}", sequence::base_url(config)),
        endpoint.is_ok(),
        // The label names the URL; the detail says only what is wrong.
        &Endpoint::from_url(sequence::base_url(config))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    );
    let tls = sequence::tls_connector(config.gateway_ca.as_deref());
    report.line(
        "TLS settings for the gateway",
        tls.is_ok(),
        &tls.as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    );
    out!("  info  system CA bundle: {}", system_text(config));
    match sequence::access_rule(config) {
        Ok(access) => out!("  info  who may use the proxy: {access}"),
        Err(e) => report.line("who may use the proxy", false, &e.to_string()),
    }
    (endpoint, tls)
}

/// The CA bundle start-up would build, or why it cannot: with the gates
/// open, the very plan `run` and `serve` make; otherwise the CA fetch alone.
struct CaOutcome {
    bundle: Result<Bundle, String>,
    plan: Option<Plan>,
    /// Set when the CA fetch failed and what follows depends on why.
    retry: Option<CaRetry>,
}

/// Builds [`CaOutcome`] as start-up would, without writing anything.
fn ca_and_plan(
    config: &Config,
    endpoint: &Endpoint,
    tls: &native_tls::TlsConnector,
    activation: Result<Activated, GateClosed>,
    generation: Generation,
    undecided: Option<&UnreadDescriptor>,
) -> CaOutcome {
    let outcome = |bundle, plan, retry| CaOutcome {
        bundle,
        plan,
        retry,
    };
    match activation {
        Ok(activated) => match sequence::plan(config, activated, env_lookup) {
            Ok(plan) => outcome(Ok(plan.bundle.clone()), Some(plan), None),
            Err(SessionError::CaFetch(failure, from)) => {
                let retry = CaRetry::of(&failure);
                let text = SessionError::CaFetch(failure, from).to_string();
                outcome(Err(text), None, Some(retry))
            }
            Err(e) => outcome(Err(e.to_string()), None, None),
        },
        Err(_) => match sequence::prepare_trust(config, endpoint, tls, generation, env_lookup) {
            Ok(bundle) => outcome(Ok(bundle), None, None),
            Err(failure) => {
                // Only when the descriptor may still open gate 4 does
                // what run and serve do next matter.
                let retry = undecided.map(|_| CaRetry::of(&failure));
                let text = failure
                    .to_string()
                    .replace(trust::BASE_URL_HINT, config.base_url_name());
                outcome(Err(text), None, retry)
            }
        },
    }
}

/// The gateway CA check, what run and serve would do after a failed
/// fetch, and the user's CA files and warnings; returns whether `serve`
/// would keep asking for the CA (when the fetch failed).
fn ca_report(
    report: &mut Report,
    endpoint: &Endpoint,
    generation: Generation,
    found: &CaOutcome,
) -> Option<bool> {
    let ca_label = format!(
        "gateway CA  {}",
        endpoint.http_url(generation.ca_cert_path())
    );
    let detail = match &found.bundle {
        Ok(bundle) => format!("{} certificate(s)", bundle.built.gateway_certs),
        Err(e) => e.clone(),
    };
    report.line_with(&ca_label, found.bundle.is_ok(), &detail);
    let serve_retry_note = found
        .retry
        .as_ref()
        .and_then(|retry| retry.explain(generation));
    if let Ok(bundle) = &found.bundle {
        for (path, added) in &bundle.built.user_files {
            out!(
                "  info  your CA file {}: {added} certificate(s) added",
                path.display()
            );
        }
        for warning in &bundle.built.warnings {
            out!("  warn  {warning}");
        }
    }
    serve_retry_note
}

/// The start-up probe when there is a plan, or why it is skipped.
fn gateway_websocket_report(
    report: &mut Report,
    config: &Config,
    plan: Option<Plan>,
    undecided: Option<&UnreadDescriptor>,
) {
    match (plan, undecided) {
        (Some(plan), _) => probe_report(report, config, &plan),
        (None, Some(d)) => out!(
            "  skip  gateway WebSocket: needs the token, which is in descriptor {} and not read by doctor",
            d.fd
        ),
        (None, None) => {
            out!("  skip  gateway WebSocket: needs the gates and the CA to pass")
        }
    }
}

/// Where start-up would keep the bundle (and the files next to it), or
/// why it would refuse the directory (the proxy then stays off).
fn state_dir_report(report: &mut Report, config: &Config) {
    let where_state = crate::sys::state_dir::inspect(&config.ca_bundle);
    report.line_with(
        &format!("CA bundle {}", config.ca_bundle.display()),
        where_state.is_ok(),
        &where_state.unwrap_or_else(|e| e.to_string()),
    );
}

/// Whether apply's bind would succeed: bound and released at once.
fn listen_report(report: &mut Report, config: &Config) -> std::io::Result<SocketAddr> {
    let bound = std::net::TcpListener::bind(config.listen).and_then(|l| l.local_addr());
    report.line(
        &format!("listen on {}", config.listen),
        bound.is_ok(),
        &bound
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    );
    bound
}

/// The proxy variables children would get (`PORT` when the bind failed).
fn children_env_report(
    config: &Config,
    generation: Generation,
    bound: std::io::Result<SocketAddr>,
) {
    let port = bound
        .map(|a| a.port().to_string())
        .unwrap_or_else(|_| "PORT".into());
    let vars = env::proxy_vars(&ProxyEnv {
        proxy_url: format!("http://{}:{port}", config.listen.ip()),
        ca_bundle: config.ca_bundle.clone(),
        no_proxy_extra: config.no_proxy_extra.clone(),
        no_proxy_default: config.no_proxy_default,
        mode: env::Mode {
            generation,
            standalone: config.standalone.is_active(),
            selective: generation == Generation::AgentProxy
                && sequence::selective_list(env_lookup).is_some(),
        },
        system_bundle: trust::system_bundle(config.system_ca.as_deref()).is_some(),
    });
    for (name, value) in &vars {
        out!("  {name}={value}");
    }
}

/// The last line, whether the proxy would start; returns the exit status.
fn verdict(
    report: &Report,
    undecided: Option<&UnreadDescriptor>,
    serve_retry_note: Option<bool>,
) -> i32 {
    if report.failed == 0 {
        match undecided {
            Some(d) => out!(
                "verdict: the proxy would start if descriptor {} holds a token (doctor did not read it)",
                d.fd
            ),
            None => out!("verdict: the proxy would start"),
        }
        0
    } else if serve_retry_note == Some(true) {
        out!(
            "verdict: the proxy would stay off for now ({} check(s) failed); run's command runs without it, serve brings it up once the gateway's CA can be fetched",
            report.failed
        );
        1
    } else {
        out!(
            "verdict: the proxy would stay off ({} check(s) failed); commands run without it",
            report.failed
        );
        1
    }
}

/// What `run` and `serve` would do with `options`, the options `doctor`
/// refused as a usage error (it exits 2 and checks nothing): `run` fails
/// open where its command can be found (here `-- COMMAND` is taken to
/// follow the options), `serve` refuses what it cannot parse. One line
/// each, after a line saying so.
pub fn usage_prediction(options: &[OsString], base: &Config) -> Vec<String> {
    let parse_as = |sub: &str, tail: &[&str]| {
        let args = std::iter::once(OsString::from(sub))
            .chain(options.iter().cloned())
            .chain(tail.iter().map(OsString::from))
            .collect();
        args::parse(args, base.clone())
    };
    let run = match parse_as("run", &["--", "COMMAND"]) {
        Ok(Command::RunWithoutRelay { problems, .. }) => format!(
            "  run: would warn ({}) and run the command without the proxy, as if the relay were absent (the token variables still removed), exiting with its status",
            args::describe(&problems)
        ),
        Ok(_) => "  run: would accept them".to_string(),
        Err(e) => format!("  run: would refuse them (exit 2): {}", e.0),
    };
    let serve = match parse_as("serve", &[]) {
        Ok(_) => "  serve: would accept them".to_string(),
        Err(e) => format!("  serve: would refuse them (exit 2): {}", e.0),
    };
    vec![
        "doctor: these options do not parse, so nothing was checked; given them (and `-- COMMAND` for run):".to_string(),
        run,
        serve,
    ]
}

/// Why the CA fetch failed, as far as what follows depends on it.
struct CaRetry {
    retryable: bool,
    retry_after: Option<Duration>,
}

impl CaRetry {
    fn of(failure: &trust::fetch::CaFetchFailure) -> CaRetry {
        CaRetry {
            retryable: failure.last.is_retryable(),
            retry_after: failure.retry_after,
        }
    }

    /// Prints what `run` and `serve` would each do after this failure
    /// (the rule of `sequence::start` and `app::serve`); true when `serve`
    /// would keep asking.
    fn explain(&self, generation: Generation) -> Option<bool> {
        match (generation, self.retryable) {
            (Generation::AgentProxy, true) => {
                let waits: Vec<String> = (1..=3)
                    .map(|n| {
                        let wait = trust::fetch::backoff(n, self.retry_after);
                        format!("{} s", wait.as_secs_f64().ceil())
                    })
                    .collect();
                let after = self.retry_after.map_or(String::new(), |t| {
                    format!(
                        ", never sooner than the gateway's Retry-After of {} s",
                        t.as_secs()
                    )
                });
                out!(
                    "  info  run: the command would start at once without the proxy (it fails open)"
                );
                out!(
                    "  info  serve: the proxy stays off for now; serve asks for the CA again after {}, ... (doubling, at most {} s{after}) and brings the proxy up, writing its env file, once a fetch succeeds",
                    waits.join(", "),
                    trust::fetch::BACKOFF_MAX.as_secs()
                );
                Some(true)
            }
            (Generation::AgentProxy, false) => {
                out!(
                    "  info  run and serve: the proxy stays off; this failure is not retried (only network errors, time-outs, HTTP 408, 429 and 5xx and an answer without a certificate are), so serve exits at once"
                );
                Some(false)
            }
            (Generation::UpstreamProxy, _) => {
                out!(
                    "  info  run and serve: the proxy stays off; the upstream proxy does not ask for the CA again, so serve exits at once"
                );
                Some(false)
            }
        }
    }
}

/// The start-up probe, judged as `run` and `serve` judge it: the verdict
/// that comes within [`sequence::PROBE_VERDICT_WAIT`] decides; a later one
/// is what happens once the proxy is already on.
fn probe_report(report: &mut Report, config: &Config, plan: &Plan) {
    let gateway = sequence::gateway(config, plan, &Default::default());
    let label = format!("gateway WebSocket  {}", gateway.ws_url());
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let spawned = thread::Builder::new().name("probe".into()).spawn(move || {
        let _ = tx.send(sequence::probe(&gateway));
    });
    if let Err(e) = spawned {
        report.line(&label, false, &format!("cannot start the probe: {e}"));
        return;
    }
    let wait = sequence::PROBE_VERDICT_WAIT;
    match rx.recv_timeout(wait) {
        Ok(ProbeVerdict::Opened) => report.line_with(&label, true, "upgrade accepted"),
        Ok(ProbeVerdict::CredentialsRefused(e)) => report.line_with(
            &label,
            false,
            &format!("{e}: the gateway refuses the session's credentials"),
        ),
        Ok(ProbeVerdict::Unreachable(e)) => out!(
            "  warn  {label}: {e}; the proxy would start, each tunnel would dial once \
             and its error would end with \"{}\"",
            sequence::startup_error_text(&e)
        ),
        Err(_) => {
            out!(
                "  info  {label}: no verdict within {} s, as long as run and serve wait for it: both would start the proxy (run its command too) while the probe goes on",
                wait.as_secs()
            );
            // Three attempts, each within the upgrade bound, and the pauses.
            let bound = config.limits.upgrade_timeout * 3 + Duration::from_secs(5);
            let late = rx.recv_timeout(bound);
            let after = started.elapsed().as_secs_f64();
            match late {
                Ok(ProbeVerdict::Opened) => report.line_with(
                    &label,
                    true,
                    &format!("upgrade accepted after {after:.1} s"),
                ),
                Ok(ProbeVerdict::CredentialsRefused(e)) => out!(
                    "  warn  {label}: {e} after {after:.1} s: the gateway refuses the session's credentials, too late to keep the proxy off; run and serve would print a warning, and each tunnel would dial once and its error would end with \"the gateway refused the session's credentials: {e}\""
                ),
                Ok(ProbeVerdict::Unreachable(e)) => out!(
                    "  warn  {label}: {e} after {after:.1} s; the proxy would be on, and from then on each tunnel would dial once and its error would end with \"{}\"",
                    sequence::startup_error_text(&e)
                ),
                Err(_) => out!(
                    "  warn  {label}: still no verdict after {after:.0} s; the proxy would be on"
                ),
            }
        }
    }
}

/// The system bundle start-up would merge, and how many certificates it holds.
fn system_text(config: &Config) -> String {
    match trust::system_bundle(config.system_ca.as_deref()) {
        Some(path) => match std::fs::read(&path) {
            Ok(pem) => format!(
                "{} ({} certificates)",
                path.display(),
                trust::extract_certificates(&pem).len()
            ),
            Err(e) => format!("{}: {e}", path.display()),
        },
        None => "none found (the bundle will hold the gateway's certificates alone)".into(),
    }
}

/// Counts failed checks while printing one line per check.
#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn line(&mut self, what: &str, ok: bool, why: &str) {
        if ok {
            out!("  ok    {what}");
        } else {
            self.failed += 1;
            out!("  FAIL  {what}: {why}");
        }
    }

    fn line_with(&mut self, what: &str, ok: bool, detail: &str) {
        if ok {
            out!("  ok    {what}: {detail}");
        } else {
            self.failed += 1;
            out!("  FAIL  {what}: {detail}");
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn predict(options: &[&str]) -> String {
        let options: Vec<OsString> = options.iter().map(OsString::from).collect();
        usage_prediction(&options, &Config::from_env()).join("\n")
    }

    #[test]
    fn options_doctor_refuses_are_judged_as_run_and_serve_would() {
        let text = predict(&["--some-new-flag", "--listen", "127.0.0.1:0"]);
        assert!(
            text.contains("run: would warn (unknown option --some-new-flag")
                && text.contains("run the command without the proxy, as if the relay were absent"),
            "{text}"
        );
        assert!(text.contains("serve: would refuse them (exit 2)"), "{text}");
        // `serve`'s own option: run fails open, serve takes it.
        let text = predict(&["--env-file", "x"]);
        assert!(
            text.contains("run: would warn (unknown option --env-file"),
            "{text}"
        );
        assert!(text.contains("serve: would accept them"), "{text}");
        let text = predict(&["--keepalive", "-1"]);
        assert!(text.contains("run: would warn (--keepalive"), "{text}");
    }
}
