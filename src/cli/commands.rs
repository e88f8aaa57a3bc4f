//! The three commands, `run`, `serve` and `doctor`, on top of the start-up
//! sequence in [`session`](crate::startup::sequence). [`main`] parses the arguments;
//! `main.rs` only calls it and exits with its status, so everything the
//! process does happens below it.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{self, Child};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use log::info;

use crate::cli::args::{self, Command, USAGE};
use crate::config::Config;
use crate::env;
use crate::proxy::listener::StopHandle;
use crate::startup::sequence::{self, Startup};
use crate::sys::lock::{lock, wait_timeout_while};
use crate::sys::signals;
use crate::trust;

/// Exit status when the command cannot be started (as in `sh`).
pub const EXIT_CANNOT_RUN: i32 = 127;
/// Exit status for a usage error.
pub const EXIT_USAGE: i32 = 2;

/// Runs the program with `args` (without the program name); returns the
/// process's exit status.
pub fn main(args: Vec<OsString>) -> i32 {
    // Before any thread exists: one allocator arena, trimmed when idle.
    crate::sys::heap::single_arena();
    // Before anything else, and before any thread exists: the standalone
    // variables leave the environment, so no child ever sees them.
    // SAFETY: nothing else runs yet; `main.rs` calls this first.
    let standalone = unsafe { crate::startup::gates::take_standalone_env() };
    let mut base = Config::from_env();
    base.standalone = standalone;
    // `doctor`'s options, kept to say what run and serve would do with
    // them should doctor refuse them.
    let doctor_options =
        (args.first().is_some_and(|a| a == "doctor")).then(|| (args[1..].to_vec(), base.clone()));
    let command = match args::parse(args, base) {
        Ok(Command::Run { config, command }) => Command::Run {
            config: config.with_absolute_paths(),
            command,
        },
        Ok(Command::Serve { config, env_file }) => Command::Serve {
            config: config.with_absolute_paths(),
            env_file,
        },
        Ok(command) => command,
        Err(e) => {
            eprintln!("ccr-relay: {e}");
            if let Some((options, base)) = doctor_options {
                for line in crate::cli::doctor::usage_prediction(&options, &base) {
                    out!("{line}");
                }
            }
            return EXIT_USAGE;
        }
    };
    init_logging();
    match command {
        Command::Help => {
            let _ = std::io::stdout().write_all(USAGE.as_bytes());
            0
        }
        Command::Version => {
            let _ = writeln!(std::io::stdout(), "{}", crate::cli::version::version_text());
            0
        }
        Command::Run { config, command } => run(&config, command),
        Command::RunWithoutRelay { command, problems } => {
            eprintln!(
                "ccr-relay: warning: {}; running the command without the proxy, as if the relay were absent (see `ccr-relay --help`)",
                args::describe(&problems)
            );
            exec_without_relay(&command)
        }
        Command::Serve { config, env_file } => serve(&config, env_file.as_deref()),
        Command::Doctor { config } => crate::cli::doctor::run(&config),
        Command::Status { proxy } => status(proxy),
    }
}

/// `ccr-relay status`: prints the relay's state as text; 1 when there is
/// no relay to ask or it does not answer as one.
fn status(proxy: Option<String>) -> i32 {
    let proxy = proxy.or_else(|| std::env::var("HTTPS_PROXY").ok().filter(|v| !v.is_empty()));
    match proxy
        .ok_or(crate::proxy::status::StatusError::NoProxy)
        .and_then(|p| crate::proxy::status::fetch_text(&p))
    {
        Ok(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            0
        }
        Err(e) => {
            eprintln!("ccr-relay: {e}");
            1
        }
    }
}

/// Logs go to stderr, `warn` and up unless `RUST_LOG` says otherwise. The
/// WebSocket library is capped at `info`: at `trace` it prints the upgrade
/// request and frames, which carry the token.
fn init_logging() {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Warn);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.filter_module("tungstenite", log::LevelFilter::Info);
    builder.format(|out, record| {
        writeln!(
            out,
            "ccr-relay: {} {}",
            record.level().as_str().to_ascii_lowercase(),
            record.args()
        )
    });
    let _ = builder.try_init();
}

/// `ccr-relay run -- COMMAND`: start the relay if the session calls for
/// it, run COMMAND with its environment, exit with COMMAND's status.
fn run(config: &Config, command: Vec<OsString>) -> i32 {
    // Before any thread exists, so that every thread inherits the mask.
    let blocked = signals::block();
    let startup = sequence::start(config);
    let Startup::Enabled(started) = startup else {
        // Disabled, or the CA is not to be had now: `run` fails open at once.
        return exec_without_relay(&command);
    };
    // The session id is inherited unchanged: it is no secret and an agent
    // may need it. Only the token and the variables naming its sources go.
    let mut cmd = child_command(&command, &started.child_vars);
    for name in env::removed_vars() {
        cmd.env_remove(name);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            started.relay.stop_handle().stop();
            crate::startup::outside::finish(started.installed, config.keep_trust);
            return cannot_run(&command, &e);
        }
    };
    let child_exited = Arc::new(AtomicBool::new(false));
    if let Ok(blocked) = blocked {
        let pid = child.id() as libc::pid_t;
        let exited = Arc::clone(&child_exited);
        let forwarded = signals::spawn_handler(blocked, move |sig| {
            if !exited.load(Ordering::SeqCst) {
                // SAFETY: kill with a pid we spawned and a valid signal number.
                unsafe { libc::kill(pid, sig) };
            }
        });
        if let Err(e) = forwarded {
            eprintln!("ccr-relay: warning: cannot forward signals to the command: {e}");
        }
    }
    let stop = started.relay.stop_handle();
    let relay = started.relay;
    let server = thread::Builder::new()
        .name("relay".into())
        .spawn(move || relay.serve());
    let status = wait_child(&mut child);
    child_exited.store(true, Ordering::SeqCst);
    stop.stop();
    if let Ok(server) = server {
        let _ = server.join();
    }
    crate::startup::outside::finish(started.installed, config.keep_trust);
    status
}

/// Fail open: become the command, as if the relay were not there (no
/// proxy variable added), except that a token, or a variable naming where
/// one is, never reaches a child. Returns only if the command cannot run.
fn exec_without_relay(command: &[OsString]) -> i32 {
    let mut cmd = child_command(command, &[]);
    for name in crate::startup::gates::child_removed_vars() {
        cmd.env_remove(name);
    }
    let err = cmd.exec();
    cannot_run(command, &err)
}

/// The command's exit status as a shell reports it: its code, or 128+N
/// when signal N killed it.
fn wait_child(child: &mut Child) -> i32 {
    match child.wait() {
        Ok(status) => status
            .code()
            .or_else(|| status.signal().map(|sig| 128 + sig))
            .unwrap_or(1),
        Err(e) => {
            eprintln!("ccr-relay: lost track of the command: {e}");
            1
        }
    }
}

fn child_command(command: &[OsString], vars: &[(String, String)]) -> process::Command {
    let mut cmd = process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    cmd.envs(vars.iter().map(|(k, v)| (k, v)));
    // The relay blocks the termination signals for its own handler thread;
    // the command must start with none blocked, or Ctrl-C and SIGTERM would
    // never reach it.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    cmd
}

fn cannot_run(command: &[OsString], err: &std::io::Error) -> i32 {
    eprintln!(
        "ccr-relay: cannot run {:?}: {err}",
        command[0].to_string_lossy()
    );
    EXIT_CANNOT_RUN
}

/// What `serve`'s signal handler and its start-up loop share: a stop
/// asked for before the relay serves ends the wait for the next try.
#[derive(Default)]
struct ServeStop {
    requested: Mutex<bool>,
    wake: Condvar,
    relay: Mutex<Option<StopHandle>>,
}

impl ServeStop {
    fn request(&self) {
        *lock(&self.requested) = true;
        self.wake.notify_all();
        if let Some(relay) = &*lock(&self.relay) {
            relay.stop();
        }
    }

    /// Waits `delay` unless a stop comes first; true when one did.
    fn wait(&self, delay: Duration) -> bool {
        let guard = lock(&self.requested);
        *wait_timeout_while(&self.wake, guard, delay, |stopped| !*stopped)
    }
}

/// `ccr-relay serve`: start the relay, write the env file, serve until
/// SIGTERM or SIGINT. An agent-proxy gateway whose CA cannot be fetched
/// yet is asked again in the background, with exponential backoff capped
/// at five minutes; the proxy comes up (and the env file is written) when
/// a fetch succeeds.
fn serve(config: &Config, env_file: Option<&Path>) -> i32 {
    let blocked = signals::block();
    let stop = Arc::new(ServeStop::default());
    let handler_stop = Arc::clone(&stop);
    match blocked.and_then(|blocked| {
        signals::spawn_handler(blocked, move |sig| {
            info!("{}: stopping", signals::name(sig));
            if sig == libc::SIGTERM || sig == libc::SIGINT {
                handler_stop.request();
            }
        })
    }) {
        Ok(()) => {}
        Err(e) => eprintln!("ccr-relay: warning: cannot handle signals: {e}"),
    }
    let mut retries = 0;
    let started = loop {
        match sequence::start(config) {
            Startup::Enabled(started) => break started,
            // Fail open: nothing to serve; a supervisor may start us again.
            Startup::Disabled => return 0,
            // Outside a session `run` stays silent, but a `serve` that
            // exits without a word leaves its user guessing.
            Startup::Quiet(why) => {
                eprintln!("ccr-relay: not serving: {why}");
                return 0;
            }
            Startup::CaUnavailable { retry_after } => {
                retries += 1;
                let delay = trust::fetch::backoff(retries, retry_after);
                eprintln!(
                    "ccr-relay: trying the gateway's CA again in {} s",
                    delay.as_secs_f64().ceil()
                );
                if stop.wait(delay) {
                    return 0;
                }
            }
        }
    };
    if let Some(path) = env_file
        && let Err(e) = env::write_env_file(path, &started.child_vars)
    {
        eprintln!(
            "ccr-relay: warning: cannot write the env file {}: {e}; children must be given the variables another way",
            path.display()
        );
    }

    *lock(&stop.relay) = Some(started.relay.stop_handle());
    // A stop that came while starting up: serve returns at once.
    if *lock(&stop.requested) {
        started.relay.stop_handle().stop();
    }
    info!("serving on {}", started.proxy_url);
    started.relay.serve();
    crate::startup::outside::finish(started.installed, config.keep_trust);
    0
}
