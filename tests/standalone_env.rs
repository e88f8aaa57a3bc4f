//! `take_standalone_env` changes the real process environment, which is only
//! sound while no other thread reads it: so it gets a test binary of its own,
//! holding this one test.

use std::process::Command;

use ccr_relay::startup::gates::{STANDALONE_TOKEN_VAR, STANDALONE_URL_VAR, take_standalone_env};

#[test]
fn standalone_variables_are_read_then_removed() {
    let secret = "zq8Xv71kPw";
    // SAFETY: the only test in this binary; no other thread touches the
    // environment.
    unsafe {
        std::env::set_var(STANDALONE_URL_VAR, "http://127.0.0.1:9/base");
        std::env::set_var(STANDALONE_TOKEN_VAR, secret);
    }
    // SAFETY: as above.
    let standalone = unsafe { take_standalone_env() };
    assert!(standalone.is_active());
    assert_eq!(standalone.base_url(), Some("http://127.0.0.1:9/base"));
    assert_eq!(standalone.token().map(|t| t.expose()), Some(secret));
    assert!(std::env::var_os(STANDALONE_URL_VAR).is_none());
    assert!(std::env::var_os(STANDALONE_TOKEN_VAR).is_none());

    // A child started afterwards sees neither.
    let out = Command::new("env").output().expect("run env");
    assert!(out.status.success());
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(
        env.contains("PATH="),
        "the child's environment was not listed"
    );
    assert!(!env.contains(STANDALONE_URL_VAR), "{env}");
    assert!(!env.contains(secret), "{env}");

    // Nothing set: not active, and removing absent variables is harmless.
    // SAFETY: as above.
    let again = unsafe { take_standalone_env() };
    assert!(!again.is_active());
    assert!(again.token().is_none());
}
