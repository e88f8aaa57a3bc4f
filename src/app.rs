//! The three commands, `run`, `serve` and `doctor`, on top of the start-up
//! sequence in [`session`](crate::session). [`main`] parses the arguments;
//! `main.rs` only calls it and exits with its status, so everything the
//! process does happens below it.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{self, Child};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use log::info;

use crate::child_env;
use crate::cli::{self, Command, USAGE};
use crate::config::Config;
use crate::session::{self, Startup};
use crate::signals;

/// Exit status when the command cannot be started (as in `sh`).
pub const EXIT_CANNOT_RUN: i32 = 127;
/// Exit status for a usage error.
pub const EXIT_USAGE: i32 = 2;

/// Runs the program with `args` (without the program name); returns the
/// process's exit status.
pub fn main(args: Vec<OsString>) -> i32 {
    let command = match cli::parse(args, Config::from_env()) {
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
            return EXIT_USAGE;
        }
    };
    init_logging();
    match command {
        Command::Help => {
            print!("{USAGE}");
            0
        }
        Command::Version => {
            println!("{}", crate::version::version_text());
            0
        }
        Command::Run { config, command } => run(&config, command),
        Command::Serve { config, env_file } => serve(&config, env_file.as_deref()),
        Command::Doctor { config } => crate::doctor::run(&config),
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
    let startup = session::start(config);
    let Startup::Enabled(started) = startup else {
        // Fail open: become the command, as if the relay were not there.
        let err = child_command(&command, &[]).exec();
        return cannot_run(&command, &err);
    };
    let mut cmd = child_command(&command, &started.child_vars);
    cmd.env_remove(crate::gates::SESSION_ID_VAR);
    for name in child_env::removed_vars() {
        cmd.env_remove(name);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            started.relay.stop_handle().stop();
            crate::outside::finish(&started.installed);
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
    crate::outside::finish(&started.installed);
    status
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

/// `ccr-relay serve`: start the relay, write the env file, serve until
/// SIGTERM or SIGINT.
fn serve(config: &Config, env_file: Option<&Path>) -> i32 {
    let blocked = signals::block();
    let Startup::Enabled(started) = session::start(config) else {
        // Fail open: nothing to serve; a supervisor may start us again.
        return 0;
    };
    if let Some(path) = env_file
        && let Err(e) = child_env::write_env_file(path, &started.child_vars)
    {
        eprintln!(
            "ccr-relay: warning: cannot write the env file {}: {e}; children must be given the variables another way",
            path.display()
        );
    }

    let stop = started.relay.stop_handle();
    match blocked.and_then(|blocked| {
        signals::spawn_handler(blocked, move |sig| {
            info!("{}: stopping", signals::name(sig));
            if sig == libc::SIGTERM || sig == libc::SIGINT {
                stop.stop();
            }
        })
    }) {
        Ok(()) => {}
        Err(e) => eprintln!("ccr-relay: warning: cannot handle signals: {e}"),
    }
    info!("serving on {}", started.proxy_url);
    started.relay.serve();
    crate::outside::finish(&started.installed);
    0
}
