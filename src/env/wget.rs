//! The wgetrc made for wget, which reads no CA variable: the user's own
//! wgetrc copied verbatim, then the relay's proxy and `ca_certificate`
//! lines (wget applies later lines last). `WGETRC` names it, so it is
//! written once the port is known.

use std::io;
use std::path::{Path, PathBuf};

use super::{EnvError, ProxyEnv, WGETRC, wgetrc_path};
use crate::trust::user_cas::{expand_home, read_bounded, same_file};

/// The user's own wgetrc: the file the parent's `WGETRC` names, else
/// `~/.wgetrc`; never `ours` (the parent may carry a `WGETRC` an earlier
/// relay set).
pub fn user_wgetrc(parent: impl Fn(&str) -> Option<String>, ours: &Path) -> Option<PathBuf> {
    let named = parent(WGETRC)
        .filter(|v| !v.trim().is_empty())
        .map(|v| expand_home(v.trim(), &parent))
        .filter(|p| !same_file(p, ours));
    named.or_else(|| {
        let home = parent("HOME").filter(|h| !h.is_empty())?;
        Some(Path::new(&home).join(".wgetrc"))
    })
}

/// The generated wgetrc: the user's wgetrc verbatim (`user`: its path and
/// text), then the relay's settings.
pub fn wgetrc_text(user: Option<(&Path, &[u8])>, bundle: &Path, proxy_url: &str) -> Vec<u8> {
    let mut text = Vec::new();
    text.extend_from_slice(
        b"# Written by ccr-relay, which points WGETRC here while it runs. WGETRC\n\
          # replaces ~/.wgetrc, so your own wgetrc is copied first, unchanged;\n\
          # the relay's lines come last and win.\n",
    );
    match user {
        Some((path, content)) => {
            text.extend_from_slice(
                format!("# --- copied from {} ---\n", path.display()).as_bytes(),
            );
            text.extend_from_slice(content);
            if !content.is_empty() && !content.ends_with(b"\n") {
                text.push(b'\n');
            }
        }
        None => text.extend_from_slice(b"# --- no wgetrc of your own to copy ---\n"),
    }
    text.extend_from_slice(
        format!(
            "# --- ccr-relay ---\n\
             ca_certificate = {}\n\
             use_proxy = on\n\
             https_proxy = {proxy_url}\n\
             http_proxy = {proxy_url}\n",
            bundle.display()
        )
        .as_bytes(),
    );
    text
}

/// Writes [`wgetrc_text`] to [`wgetrc_path`] (atomically, mode 0600: a
/// wgetrc may hold passwords) and returns the path. A user wgetrc that does
/// not exist is no error; one that exists but cannot be read is (the file
/// is then not written, and `WGETRC` must not be set).
pub fn write_wgetrc(
    env: &ProxyEnv,
    parent: impl Fn(&str) -> Option<String>,
) -> Result<PathBuf, EnvError> {
    let path = wgetrc_path(&env.ca_bundle);
    let user = match user_wgetrc(&parent, &path) {
        Some(p) => match read_bounded(&p) {
            Ok(text) => Some((p, text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(EnvError::ReadWgetrc { path: p, error }),
        },
        None => None,
    };
    let text = wgetrc_text(
        user.as_ref().map(|(p, t)| (p.as_path(), t.as_slice())),
        &env.ca_bundle,
        &env.proxy_url,
    );
    match crate::sys::atomic_file::write(&path, &text, 0o600) {
        Ok(()) => Ok(path),
        Err(error) => Err(EnvError::Write { path, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use crate::env::test_util::*;

    #[test]
    fn wgetrc_keeps_the_users_content() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir_all(home.join(".ccr")).unwrap();
        let env = ProxyEnv {
            proxy_url: "http://127.0.0.1:4321".into(),
            ca_bundle: home.join(".ccr").join("ca-bundle.crt"),
            no_proxy_extra: vec![],
            no_proxy_default: Default::default(),
            mode: Default::default(),
            system_bundle: true,
        };
        let ours = wgetrc_path(&env.ca_bundle);
        let tail = format!(
            "# --- ccr-relay ---\nca_certificate = {}\nuse_proxy = on\n\
https_proxy = http://127.0.0.1:4321\nhttp_proxy = http://127.0.0.1:4321\n",
            env.ca_bundle.display()
        );
        let home_s = home.to_string_lossy().into_owned();

        // No wgetrc of the user's.
        let path = write_wgetrc(&env, parent_of(&[("HOME", &home_s)])).unwrap();
        assert_eq!(path, ours);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("# --- no wgetrc of your own to copy ---\n"));
        assert!(text.ends_with(&tail), "{text}");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // ~/.wgetrc is copied verbatim (a missing final newline added).
        let mine = "user = me\npassword = secret\nhttps_proxy = http://corp:1/";
        fs::write(home.join(".wgetrc"), mine).unwrap();
        write_wgetrc(&env, parent_of(&[("HOME", &home_s)])).unwrap();
        let text = fs::read_to_string(&ours).unwrap();
        let copied = format!(
            "# --- copied from {}/.wgetrc ---\n{mine}\n{tail}",
            home.display()
        );
        assert!(text.ends_with(&copied), "{text}");

        // The parent's WGETRC wins over ~/.wgetrc.
        let named = dir.path().join("named.wgetrc");
        fs::write(&named, "timeout = 7\n").unwrap();
        let named_s = named.to_string_lossy().into_owned();
        write_wgetrc(&env, parent_of(&[("HOME", &home_s), ("WGETRC", &named_s)])).unwrap();
        let text = fs::read_to_string(&ours).unwrap();
        assert!(
            text.ends_with(&format!(
                "# --- copied from {named_s} ---\ntimeout = 7\n{tail}"
            )),
            "{text}"
        );

        // A WGETRC naming our own file (left by an earlier relay) is not
        // copied into itself: ~/.wgetrc is used.
        let ours_s = ours.to_string_lossy().into_owned();
        write_wgetrc(&env, parent_of(&[("HOME", &home_s), ("WGETRC", &ours_s)])).unwrap();
        assert!(fs::read_to_string(&ours).unwrap().ends_with(&copied));

        // A WGETRC naming a missing file: ours alone.
        write_wgetrc(
            &env,
            parent_of(&[("HOME", &home_s), ("WGETRC", "/nonexistent/wgetrc")]),
        )
        .unwrap();
        assert!(
            fs::read_to_string(&ours)
                .unwrap()
                .contains("no wgetrc of your own")
        );
    }
}
