//! The children's variables as a file of `sh` exports, for `ccr-relay
//! serve --env-file`: a supervisor's children `.` it to get the relay. The
//! file first `unset`s the variables children must never have
//! ([`super::removed_vars`]), as `run` removes them from its command.

use std::path::Path;

use super::EnvError;

/// Quotes `value` for `sh`: single quotes, each `'` written as `'\''`.
fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// One `export NAME='value'` line per variable, so `sh` can `.` the text.
/// Values are single-quoted (nothing in them is expanded); names are
/// written as given and must be valid shell names (ours are).
pub fn env_file_text(vars: &[(String, String)]) -> String {
    let mut text = String::new();
    for (name, value) in vars {
        text.push_str("export ");
        text.push_str(name);
        text.push('=');
        text.push_str(&sh_quote(value));
        text.push('\n');
    }
    text
}

/// What the env file holds: one `unset` line naming [`super::removed_vars`]
/// (all valid shell names; `unset` of an unset name succeeds), then
/// [`env_file_text`].
pub fn env_file_contents(vars: &[(String, String)]) -> String {
    format!(
        "unset {}\n{}",
        super::removed_vars().join(" "),
        env_file_text(vars)
    )
}

/// Writes [`env_file_contents`] to `path` atomically: a temporary file (mode
/// 0600) in the same directory, synced, then renamed over `path`. On
/// failure the temporary file is removed and any old file stays as it was.
pub fn write_env_file(path: &Path, vars: &[(String, String)]) -> Result<(), EnvError> {
    crate::sys::atomic_file::write(path, env_file_contents(vars).as_bytes(), 0o600).map_err(
        |error| EnvError::Write {
            path: path.to_path_buf(),
            error,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io;

    #[test]
    fn env_file_quoting() {
        let vars = vec![
            ("A".to_string(), "plain".to_string()),
            ("B".to_string(), "it's".to_string()),
            ("C".to_string(), String::new()),
        ];
        assert_eq!(
            env_file_text(&vars),
            "export A='plain'\nexport B='it'\\''s'\nexport C=''\n"
        );
    }

    #[test]
    fn env_file_leaves_the_session_id_alone() {
        // No secret: a child keeps the session id it inherits.
        let text = env_file_contents(&[]);
        assert!(
            !text.contains(crate::startup::gates::SESSION_ID_VAR),
            "{text}"
        );
        assert!(!super::super::removed_vars().contains(&crate::startup::gates::SESSION_ID_VAR));
    }

    #[test]
    fn env_file_write_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.env");
        fs::write(&path, "old\n").unwrap();
        write_env_file(&path, &[("X".into(), "1".into())]).unwrap();
        let want = env_file_contents(&[("X".into(), "1".into())]);
        assert!(want.ends_with("\nexport X='1'\n"), "{want}");
        assert_eq!(fs::read_to_string(&path).unwrap(), want);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("relay.env")]);

        // A "directory" that is a regular file: the write fails, nothing left.
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, "x").unwrap();
        let err = write_env_file(&blocker.join("relay.env"), &[]).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&path).unwrap(), want);

        // Renaming over a directory fails: the temp file is cleaned up.
        let target_dir = dir.path().join("target");
        fs::create_dir(&target_dir).unwrap();
        assert!(write_env_file(&target_dir, &[]).is_err());
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["not-a-dir", "relay.env", "target"]);
    }
}
