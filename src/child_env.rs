//! The environment children get (PROTOCOL.md section 6): the proxy and CA
//! variables the relay sets when it runs ([`proxy_vars`]), whether a relay
//! higher up already serves the process tree ([`parent_has_relay`]), and the
//! same variables as a file of `sh` exports for `ccr-relay serve --env-file`
//! ([`env_file_text`], [`write_env_file`]).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The reference relay's `NO_PROXY` list, in its order. A domain appears in
/// up to three forms because curl, Go, Python and Node each match `NO_PROXY`
/// differently.
pub const NO_PROXY_LIST: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "169.254.0.0/16",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "anthropic.com",
    ".anthropic.com",
    "*.anthropic.com",
    "github.com",
    "api.github.com",
    "*.github.com",
    "*.githubusercontent.com",
    "registry.npmjs.org",
    "pypi.org",
    "files.pythonhosted.org",
    "index.crates.io",
    "proxy.golang.org",
];

/// The variables naming the proxy, in the order [`proxy_vars`] sets them.
pub const PROXY_VARS: &[&str] = &["HTTPS_PROXY", "https_proxy"];
/// The variables naming the `NO_PROXY` list.
pub const NO_PROXY_VARS: &[&str] = &["NO_PROXY", "no_proxy"];
/// The variables naming the merged CA bundle.
pub const CA_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
];

/// What the children's proxy variables are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyEnv {
    /// `http://127.0.0.1:<port>`.
    pub proxy_url: String,
    /// The merged CA bundle.
    pub ca_bundle: PathBuf,
    /// Entries appended, in order, after [`NO_PROXY_LIST`].
    pub no_proxy_extra: Vec<String>,
}

/// The `NO_PROXY` value: the reference list, then the extra entries (blank
/// ones and ones already listed are skipped), joined with `,`.
pub fn no_proxy_value(extra: &[String]) -> String {
    let mut entries: Vec<&str> = NO_PROXY_LIST.to_vec();
    for e in extra {
        let e = e.trim();
        if !e.is_empty() && !entries.contains(&e) {
            entries.push(e);
        }
    }
    entries.join(",")
}

/// Exactly the variables the reference relay exports, in a stable order:
/// `HTTPS_PROXY`, `https_proxy`, `NO_PROXY`, `no_proxy`, `SSL_CERT_FILE`,
/// `NODE_EXTRA_CA_CERTS`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`.
pub fn proxy_vars(env: &ProxyEnv) -> Vec<(String, String)> {
    let no_proxy = no_proxy_value(&env.no_proxy_extra);
    let bundle = env.ca_bundle.to_string_lossy().into_owned();
    let mut vars = Vec::with_capacity(8);
    for name in PROXY_VARS {
        vars.push((name.to_string(), env.proxy_url.clone()));
    }
    for name in NO_PROXY_VARS {
        vars.push((name.to_string(), no_proxy.clone()));
    }
    for name in CA_VARS {
        vars.push((name.to_string(), bundle.clone()));
    }
    vars
}

/// Whether the parent looks like it runs under a relay higher up: it carries
/// a proxy (`HTTPS_PROXY` or `https_proxy`) and `SSL_CERT_FILE`.
pub fn parent_has_relay(parent: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| parent(name).is_some_and(|v| !v.is_empty());
    (set("HTTPS_PROXY") || set("https_proxy")) && set("SSL_CERT_FILE")
}

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

/// Writes [`env_file_text`] to `path` atomically: a temporary file (mode
/// 0600) in the same directory, synced, then renamed over `path`. On
/// failure the temporary file is removed and any old file stays as it was.
pub fn write_env_file(path: &Path, vars: &[(String, String)]) -> io::Result<()> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "env file path has no file name",
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let text = env_file_text(vars);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "ccr-child-env-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sample(extra: &[&str]) -> ProxyEnv {
        ProxyEnv {
            proxy_url: "http://127.0.0.1:4321".into(),
            ca_bundle: PathBuf::from("/home/u/.ccr/ca-bundle.crt"),
            no_proxy_extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    const REFERENCE_NO_PROXY: &str = "localhost,127.0.0.1,::1,169.254.0.0/16,10.0.0.0/8,\
172.16.0.0/12,192.168.0.0/16,anthropic.com,.anthropic.com,*.anthropic.com,github.com,\
api.github.com,*.github.com,*.githubusercontent.com,registry.npmjs.org,pypi.org,\
files.pythonhosted.org,index.crates.io,proxy.golang.org";

    #[test]
    fn exact_variables_in_order() {
        let vars = proxy_vars(&sample(&[]));
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "HTTPS_PROXY",
                "https_proxy",
                "NO_PROXY",
                "no_proxy",
                "SSL_CERT_FILE",
                "NODE_EXTRA_CA_CERTS",
                "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE",
            ]
        );
        for (name, value) in &vars {
            let expected = match name.as_str() {
                "HTTPS_PROXY" | "https_proxy" => "http://127.0.0.1:4321",
                "NO_PROXY" | "no_proxy" => REFERENCE_NO_PROXY,
                _ => "/home/u/.ccr/ca-bundle.crt",
            };
            assert_eq!(value, expected, "{name}");
        }
    }

    #[test]
    fn reference_no_proxy_list() {
        assert_eq!(NO_PROXY_LIST.len(), 19);
        assert_eq!(NO_PROXY_LIST.join(","), REFERENCE_NO_PROXY);
    }

    #[test]
    fn extra_no_proxy_entries_are_appended() {
        let vars = proxy_vars(&sample(&["internal.example", " ", "localhost", " .corp "]));
        let no_proxy = &vars[2].1;
        assert_eq!(
            no_proxy,
            &format!("{REFERENCE_NO_PROXY},internal.example,.corp")
        );
        assert_eq!(vars[3].1, *no_proxy);
    }

    fn parent_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn a_relay_above_is_recognised() {
        assert!(parent_has_relay(parent_of(&[
            ("HTTPS_PROXY", "http://127.0.0.1:9999"),
            ("SSL_CERT_FILE", "/root/.ccr/ca-bundle.crt"),
        ])));
        assert!(parent_has_relay(parent_of(&[
            ("https_proxy", "http://127.0.0.1:9999"),
            ("SSL_CERT_FILE", "/x.crt"),
        ])));
        assert!(!parent_has_relay(parent_of(&[(
            "https_proxy",
            "http://corp:3128"
        )])));
        assert!(!parent_has_relay(parent_of(&[("SSL_CERT_FILE", "/x.crt")])));
        assert!(!parent_has_relay(parent_of(&[
            ("HTTPS_PROXY", ""),
            ("SSL_CERT_FILE", "/x.crt")
        ])));
    }

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
    fn env_file_survives_sh() {
        let dir = TempDir::new("sh");
        let path = dir.0.join("relay.env");
        let nasty = "a 'quoted' $HOME `id` \\n \"dq\"\nsecond line\t*";
        let mut vars = proxy_vars(&sample(&["x.example"]));
        vars.push(("NASTY".to_string(), nasty.to_string()));
        vars.push(("TRAILING".to_string(), "ends with '".to_string()));
        write_env_file(&path, &vars).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for (name, value) in &vars {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(". \"$1\"; printf %s \"${name}\""))
                .arg("sh")
                .arg(&path)
                .env_clear()
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8(out.stdout).unwrap(), *value, "{name}");
        }
        // Exported, not just set: a grandchild sees them too.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(". \"$1\"; sh -c 'printf %s \"$HTTPS_PROXY\"'")
            .arg("sh")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "http://127.0.0.1:4321"
        );
    }

    #[test]
    fn env_file_write_is_atomic() {
        let dir = TempDir::new("atomic");
        let path = dir.0.join("relay.env");
        fs::write(&path, "old\n").unwrap();
        write_env_file(&path, &[("X".into(), "1".into())]).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "export X='1'\n");
        let names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("relay.env")]);

        // A "directory" that is a regular file: the write fails, nothing left.
        let blocker = dir.0.join("not-a-dir");
        fs::write(&blocker, "x").unwrap();
        let err = write_env_file(&blocker.join("relay.env"), &[]).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&path).unwrap(), "export X='1'\n");

        // Renaming over a directory fails: the temp file is cleaned up.
        let target_dir = dir.0.join("target");
        fs::create_dir(&target_dir).unwrap();
        assert!(write_env_file(&target_dir, &[]).is_err());
        let mut names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["not-a-dir", "relay.env", "target"]);
    }
}
