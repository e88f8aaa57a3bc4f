//! Termination signals, handled on a thread of their own.
//!
//! [`block`] must run before any other thread exists, so every later thread
//! inherits the mask and the signals wait, queued, for [`spawn_handler`]'s
//! thread, which takes them one by one with `sigwait(2)`: no async-signal
//! safety puzzles, and the handler may lock, log and call anything. Children
//! must start with an empty mask: `app` clears it between fork and exec.

use std::io;
use std::thread;

/// The signals the relay acts on: stop (`serve`) or pass to the child (`run`).
pub const HANDLED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// A set of blocked signals, waited for by the handler thread.
pub struct Blocked {
    set: libc::sigset_t,
}

/// Blocks [`HANDLED`] in the calling thread (and every thread it starts later).
pub fn block() -> io::Result<Blocked> {
    // SAFETY: sigset_t is plain data; the libc calls fill it and apply it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Blocked { set })
    }
}

/// Starts the thread that calls `on_signal` with each blocked signal as it
/// arrives, for the life of the process.
pub fn spawn_handler(
    blocked: Blocked,
    on_signal: impl Fn(libc::c_int) + Send + 'static,
) -> io::Result<()> {
    let set = blocked.set;
    thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is an initialised sigset_t owned by this closure.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc == 0 {
                    on_signal(sig);
                }
            }
        })
        .map(|_| ())
}

/// The signal's conventional name, for messages.
pub fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        _ => "signal",
    }
}
