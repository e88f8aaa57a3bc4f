//! Login shells started outside the relay's children (`bash -l`, `su -`,
//! an IDE's terminal) read `/etc/profile.d/*.sh`: while the relay runs, a
//! script there points each CA variable at the bundle, only where the
//! variable is unset and the bundle is readable. It never sets a proxy
//! variable: a shell outside the relay's children should not be sent
//! through it unasked. The script is removed when the relay stops.

use std::path::Path;

use super::{Outcome, PROFILE_D_WRITE_FAILED, Plan, Withdrawal, writable};
use crate::sys::atomic_file;

/// The script's file name in `profile.d`.
pub const FILE_NAME: &str = "ccr-relay-ca.sh";

/// `s` as one single-quoted POSIX shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A name a POSIX shell accepts as a variable.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

/// The script: each valid name in `vars` exported as `bundle` when unset
/// (set but empty counts as set: an explicit choice).
pub fn script_text(bundle: &Path, vars: &[String]) -> String {
    let bundle = shell_quote(&bundle.to_string_lossy());
    let mut s = String::from(
        "# Written by ccr-relay while it runs, removed when it stops.\n\
         # CA variables for login shells: the relay's bundle, only where unset.\n",
    );
    s.push_str(&format!("if [ -r {bundle} ]; then\n"));
    for var in vars.iter().filter(|v| valid_name(v)) {
        s.push_str(&format!(
            "  if [ -z \"${{{var}+x}}\" ]; then {var}={bundle}; export {var}; fi\n"
        ));
    }
    s.push_str("fi\n");
    s
}

pub fn install(plan: &Plan) -> Outcome {
    let dir = plan.roots.etc.join("profile.d");
    if !dir.is_dir() {
        return Outcome::skipped(format!("no {}", dir.display()));
    }
    if !writable(&dir) {
        return Outcome::skipped(format!("{} not writable", dir.display()));
    }
    if plan.ca_vars.is_empty() {
        return Outcome::skipped("no CA variables to set");
    }
    let path = dir.join(FILE_NAME);
    let text = script_text(&plan.bundle, &plan.ca_vars);
    if let Err(e) = atomic_file::write(&path, text.as_bytes(), 0o644) {
        return Outcome::failed(PROFILE_D_WRITE_FAILED, format!("{}: {e}", path.display()));
    }
    Outcome {
        installed: vec![("login shell profile".into(), path.clone())],
        written: vec![path.clone()],
        withdraw: vec![Withdrawal::File {
            path,
            content: text.into_bytes(),
        }],
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Target, install_all};
    use super::*;
    use crate::test_support::TempDir;
    use std::fs;

    #[test]
    fn script_text_is_exact() {
        let text = script_text(
            Path::new("/run/it's/ca.pem"),
            &[
                "SSL_CERT_FILE".into(),
                "BAD-NAME".into(),
                "NODE_EXTRA_CA_CERTS".into(),
            ],
        );
        assert_eq!(
            text,
            "# Written by ccr-relay while it runs, removed when it stops.\n\
             # CA variables for login shells: the relay's bundle, only where unset.\n\
             if [ -r '/run/it'\\''s/ca.pem' ]; then\n  \
             if [ -z \"${SSL_CERT_FILE+x}\" ]; then SSL_CERT_FILE='/run/it'\\''s/ca.pem'; export SSL_CERT_FILE; fi\n  \
             if [ -z \"${NODE_EXTRA_CA_CERTS+x}\" ]; then NODE_EXTRA_CA_CERTS='/run/it'\\''s/ca.pem'; export NODE_EXTRA_CA_CERTS; fi\n\
             fi\n"
        );
        assert!(!text.contains("PROXY"));
    }

    #[test]
    fn installed_listed_for_withdrawal_and_withdrawn() {
        let dir = TempDir::new("profile");
        let mut plan = plan(&dir.0, &[Target::ProfileD]);
        assert!(install(&plan).skipped.is_some(), "no profile.d");
        fs::create_dir(dir.0.join("etc/profile.d")).unwrap();
        plan.ca_vars = vec!["SSL_CERT_FILE".into()];
        let report = install_all(&plan);
        let path = dir.0.join("etc/profile.d").join(FILE_NAME);
        let text = script_text(&plan.bundle, &plan.ca_vars);
        assert_eq!(
            report.to_withdraw,
            [Withdrawal::File {
                path: path.clone(),
                content: text.clone().into_bytes()
            }]
        );
        assert_eq!(report.written_outside, std::slice::from_ref(&path));
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        assert!(
            super::super::withdraw::withdraw_all(&report.to_withdraw, &[], deadline).is_empty()
        );
        assert!(!path.exists());
    }
}
