//! What children get so that clients work with the credentials the gateway
//! injects, and so that git never prompts (the contract, section 6b):
//! placeholder credentials where the parent has none ([`placeholder_vars`]),
//! git's no-prompt switches and its configuration through `GIT_CONFIG_*`
//! ([`git_vars`]), an AWS config that leaves S3 payloads unsigned
//! ([`ensure_aws_config`]), and a report of the user's git settings that
//! would send git around the relay ([`git_conflicts`]).
//!
//! The variable functions are pure functions of the parent environment (a
//! lookup closure), so start-up and tests share them; they only ever add
//! variables the parent does not have.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys::command::{find_on_path, run_bounded};

/// What a placeholder credential holds: the gateway replaces it.
pub const PLACEHOLDER: &str = "proxy-injected";

/// Each group: the variables set to [`PLACEHOLDER`], and the parent
/// variables any one of which means the user brought credentials of their own.
const PLACEHOLDER_GROUPS: &[(&[&str], &[&str])] = &[
    (&["GH_TOKEN", "GITHUB_TOKEN"], &["GH_TOKEN", "GITHUB_TOKEN"]),
    (
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        &[
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CONFIG_FILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_ARN",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ],
    ),
    (
        &["CLOUDSDK_AUTH_ACCESS_TOKEN"],
        &[
            "CLOUDSDK_AUTH_ACCESS_TOKEN",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ],
    ),
];

/// Git's prompts, switched off where the parent did not choose.
const GIT_NO_PROMPT: &[(&str, &str)] = &[
    ("GIT_TERMINAL_PROMPT", "0"),
    ("GIT_ASKPASS", ""),
    ("GCM_INTERACTIVE", "never"),
];

/// The git setting that rewrites GitHub SSH remotes to HTTPS.
const GITHUB_SSH_REWRITE: &str = "url.https://github.com/.insteadOf";

/// SSH remote forms on GitHub that are rewritten to HTTPS.
const GITHUB_SSH_FORMS: &[&str] = &["git@github.com:", "ssh://git@github.com/"];

/// Bound on the whole of [`git_conflicts`] in the contract.
pub const GIT_CONFLICTS_TIMEOUT: Duration = Duration::from_secs(5);

/// A credential variable "is there" when it is set and not empty: an empty
/// token is no credential.
fn has_value(parent: &impl Fn(&str) -> Option<String>, name: &str) -> bool {
    parent(name).is_some_and(|v| !v.is_empty())
}

/// The placeholder credentials: each group only when the parent has none of
/// its variables (set and non-empty).
pub fn placeholder_vars(parent: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for (set, unless) in PLACEHOLDER_GROUPS {
        if unless.iter().any(|name| has_value(&parent, name)) {
            continue;
        }
        vars.extend(set.iter().map(|n| (n.to_string(), PLACEHOLDER.to_string())));
    }
    vars
}

/// Git's variables: the no-prompt switches the parent did not set (set at
/// all, even empty: an explicit choice), and, if the parent has no
/// `GIT_CONFIG_COUNT`, `credential.interactive=false` plus, unless the
/// session has SSH of its own or runs `standalone`, the rewrite of GitHub
/// SSH remotes to HTTPS (SSH cannot pass an HTTP proxy). A user's own
/// `GIT_CONFIG_COUNT` is never touched: adding to it would renumber theirs.
pub fn git_vars(
    parent: impl Fn(&str) -> Option<String>,
    standalone: bool,
) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = GIT_NO_PROMPT
        .iter()
        .filter(|(name, _)| parent(name).is_none())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    if parent("GIT_CONFIG_COUNT").is_some() {
        return vars;
    }
    let mut config = vec![("credential.interactive", "false")];
    let own_ssh = has_value(&parent, "SSH_AUTH_SOCK") || has_value(&parent, "GIT_SSH_COMMAND");
    if !own_ssh && !standalone {
        for form in GITHUB_SSH_FORMS {
            config.push((GITHUB_SSH_REWRITE, form));
        }
    }
    vars.push(("GIT_CONFIG_COUNT".into(), config.len().to_string()));
    for (i, (key, value)) in config.into_iter().enumerate() {
        vars.push((format!("GIT_CONFIG_KEY_{i}"), key.into()));
        vars.push((format!("GIT_CONFIG_VALUE_{i}"), value.into()));
    }
    vars
}

/// The git settings a child's variables `vars` carry through
/// `GIT_CONFIG_*` ([`git_vars`]'s, read back), as `key=value` in order;
/// none when there is no count or it is not a number.
pub fn injected_git_config(vars: &[(String, String)]) -> Vec<String> {
    let get = |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let count = get("GIT_CONFIG_COUNT").and_then(|c| c.parse::<usize>().ok());
    (0..count.unwrap_or(0))
        .map_while(|i| {
            let key = get(&format!("GIT_CONFIG_KEY_{i}"))?;
            let value = get(&format!("GIT_CONFIG_VALUE_{i}"))?;
            Some(format!("{key}={value}"))
        })
        .collect()
}

/// Whether `config` ([`injected_git_config`]) rewrites GitHub SSH remotes
/// to HTTPS.
pub fn rewrites_github_ssh(config: &[String]) -> bool {
    config
        .iter()
        .any(|c| c.starts_with(&format!("{GITHUB_SSH_REWRITE}=")))
}

/// Everything this module adds to a child's environment:
/// [`placeholder_vars`] then [`git_vars`].
pub fn credential_vars(
    parent: impl Fn(&str) -> Option<String>,
    standalone: bool,
) -> Vec<(String, String)> {
    let mut vars = placeholder_vars(&parent);
    vars.extend(git_vars(&parent, standalone));
    vars
}

// ---------------------------------------------------------------------------
// ~/.aws/config

/// The AWS config written when there is none: S3 payloads unsigned, because
/// the gateway re-signs S3 requests and a signed payload would defeat that.
pub const AWS_CONFIG: &str = "[default]\ns3 =\n    payload_signing_enabled = false\n";

/// What [`ensure_aws_config`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum AwsConfigOutcome {
    /// The file was written (mode 0600).
    Created(PathBuf),
    /// A file (or anything else) was already there; left untouched.
    AlreadyPresent(PathBuf),
}

/// Why a step of this module failed.
#[derive(Debug)]
pub enum CredentialsError {
    /// `~/.aws` or `~/.aws/config` could not be made.
    AwsConfig(PathBuf, io::Error),
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsError::AwsConfig(p, e) => {
                write!(f, "cannot create {}: {e}", p.display())
            }
        }
    }
}

impl std::error::Error for CredentialsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CredentialsError::AwsConfig(_, e) => Some(e),
        }
    }
}

/// Creates `HOME/.aws/config` with [`AWS_CONFIG`] if nothing is there:
/// directory 0700 when it has to be made, file 0600, opened `create_new` so
/// an existing file (or a symlink, even a dangling one) is never overwritten.
pub fn ensure_aws_config(home: &Path) -> Result<AwsConfigOutcome, CredentialsError> {
    let dir = home.join(".aws");
    let path = dir.join("config");
    if !home.is_dir() {
        return Err(CredentialsError::AwsConfig(
            dir,
            io::Error::new(io::ErrorKind::NotFound, "the home directory does not exist"),
        ));
    }
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {
            // Exactly 0700 whatever the umask.
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| CredentialsError::AwsConfig(dir.clone(), e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(CredentialsError::AwsConfig(dir, e)),
    }
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Ok(AwsConfigOutcome::AlreadyPresent(path));
        }
        Err(e) => return Err(CredentialsError::AwsConfig(path, e)),
    };
    let written = file
        .set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(AWS_CONFIG.as_bytes()))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        // Never leave a half-written config that a later start would keep.
        drop(file);
        let _ = fs::remove_file(&path);
        return Err(CredentialsError::AwsConfig(path, e));
    }
    Ok(AwsConfigOutcome::Created(path))
}

// ---------------------------------------------------------------------------
// Git settings that defeat the proxy

/// True for a URL base git would reach over SSH: `ssh://`, `git+ssh://`,
/// `ssh+git://`, or the scp-like `[user@]host:path` (a colon before any
/// slash, and no scheme).
fn is_ssh_form(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    if ["ssh://", "git+ssh://", "ssh+git://"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        return true;
    }
    if lower.contains("://") {
        return false;
    }
    match (lower.find(':'), lower.find('/')) {
        (Some(colon), slash) => colon > 0 && slash.is_none_or(|s| colon < s),
        (None, _) => false,
    }
}

/// Why one `key=value` setting defeats the proxy, if it does.
fn conflict_reason(key: &str, value: &str) -> Option<&'static str> {
    // Git prints section and variable names lower-cased but keeps the
    // subsection (`<url>`) as written.
    let (section, rest) = key.split_once('.')?;
    let (subsection, var) = match rest.rsplit_once('.') {
        Some((sub, var)) => (Some(sub), var),
        None => (None, rest),
    };
    let (section, var) = (section.to_ascii_lowercase(), var.to_ascii_lowercase());
    match (section.as_str(), var.as_str()) {
        ("http", "proxy") => Some("sends git to another proxy"),
        ("http", "sslcainfo") => Some("makes git trust other CAs than the relay's bundle"),
        ("url", "insteadof" | "pushinsteadof") if subsection.is_some_and(is_ssh_form) => {
            let v = value.to_ascii_lowercase();
            (v.starts_with("https://") || v.starts_with("http://"))
                .then_some("turns HTTPS remotes into SSH, which cannot pass the proxy")
        }
        _ => None,
    }
}

/// The settings in `git config --list --show-origin` output (`origin<TAB>key=value`
/// lines; lines without an origin are taken whole) that defeat the proxy,
/// as `key=value (origin): why` lines.
pub fn parse_git_conflicts(listing: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in listing.lines() {
        let (origin, setting) = match line.split_once('\t') {
            Some((o, s)) => (Some(o), s),
            None => (None, line),
        };
        // A setting with no `=` is a boolean `true`.
        let (key, value) = setting.split_once('=').unwrap_or((setting, ""));
        if let Some(why) = conflict_reason(key.trim(), value) {
            match origin {
                Some(o) => found.push(format!("{setting} ({o}): {why}")),
                None => found.push(format!("{setting}: {why}")),
            }
        }
    }
    found
}

/// The user's `--global` and `--system` git settings that defeat the proxy
/// ([`parse_git_conflicts`]), read with the `git` on `path` as `home`'s
/// user, both reads together bounded by `timeout` (the contract says 5 s,
/// [`GIT_CONFLICTS_TIMEOUT`]). No git, or a git that fails or hangs, is no
/// finding: this is a report, never a reason not to start.
pub fn git_conflicts_with(timeout: Duration, path: &OsStr, home: Option<&Path>) -> Vec<String> {
    let Some(git) = find_on_path("git", path) else {
        return Vec::new();
    };
    let mut env = vec![(OsString::from("PATH"), path.to_os_string())];
    if let Some(home) = home {
        env.push(("HOME".into(), home.as_os_str().to_os_string()));
    }
    let deadline = Instant::now() + timeout;
    let mut found = Vec::new();
    for scope in ["--global", "--system"] {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let words = ["config", scope, "--list", "--show-origin"];
        let args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
        // A missing config file is exit status 1 and no output: nothing found.
        if let Ok(out) = run_bounded(&git, &args, &env, None, left) {
            found.extend(parse_git_conflicts(&String::from_utf8_lossy(&out.stdout)));
        }
    }
    found
}

/// [`git_conflicts_with`] for this process's `PATH` and `HOME`.
pub fn git_conflicts(timeout: Duration) -> Vec<String> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    git_conflicts_with(timeout, &path, home.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn names(vars: &[(String, String)]) -> Vec<&str> {
        vars.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn get<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn empty_parent_gets_every_placeholder() {
        let vars = placeholder_vars(env(&[]));
        assert_eq!(
            names(&vars),
            [
                "GH_TOKEN",
                "GITHUB_TOKEN",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "CLOUDSDK_AUTH_ACCESS_TOKEN"
            ]
        );
        assert!(vars.iter().all(|(_, v)| v == "proxy-injected"));
    }

    #[test]
    fn any_variable_of_a_group_suppresses_that_group_only() {
        for (_, unless) in PLACEHOLDER_GROUPS {
            for name in *unless {
                let vars = placeholder_vars(env(&[(name, "mine")]));
                for (set, other_unless) in PLACEHOLDER_GROUPS {
                    let suppressed = other_unless.contains(name);
                    for s in *set {
                        assert_eq!(
                            get(&vars, s).is_none(),
                            suppressed,
                            "parent {name} and placeholder {s}"
                        );
                    }
                }
            }
        }
        // The user's own value is never replaced (it is not even mentioned).
        let vars = placeholder_vars(env(&[("GITHUB_TOKEN", "ghp_mine")]));
        assert_eq!(get(&vars, "GH_TOKEN"), None);
        assert_eq!(get(&vars, "GITHUB_TOKEN"), None);
    }

    #[test]
    fn an_empty_credential_is_no_credential() {
        let vars = placeholder_vars(env(&[("GH_TOKEN", ""), ("AWS_PROFILE", "")]));
        assert_eq!(get(&vars, "GH_TOKEN"), Some(PLACEHOLDER));
        assert_eq!(get(&vars, "AWS_ACCESS_KEY_ID"), Some(PLACEHOLDER));
    }

    #[test]
    fn git_defaults_in_a_bare_parent() {
        let vars = git_vars(env(&[]), false);
        let want: Vec<(String, String)> = [
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_ASKPASS", ""),
            ("GCM_INTERACTIVE", "never"),
            ("GIT_CONFIG_COUNT", "3"),
            ("GIT_CONFIG_KEY_0", "credential.interactive"),
            ("GIT_CONFIG_VALUE_0", "false"),
            ("GIT_CONFIG_KEY_1", "url.https://github.com/.insteadOf"),
            ("GIT_CONFIG_VALUE_1", "git@github.com:"),
            ("GIT_CONFIG_KEY_2", "url.https://github.com/.insteadOf"),
            ("GIT_CONFIG_VALUE_2", "ssh://git@github.com/"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(vars, want);
    }

    #[test]
    fn injected_git_config_reads_back_what_git_vars_set() {
        let config = injected_git_config(&git_vars(env(&[]), false));
        assert_eq!(
            config,
            [
                "credential.interactive=false",
                "url.https://github.com/.insteadOf=git@github.com:",
                "url.https://github.com/.insteadOf=ssh://git@github.com/",
            ]
        );
        assert!(rewrites_github_ssh(&config));
        let standalone = injected_git_config(&git_vars(env(&[]), true));
        assert_eq!(standalone, ["credential.interactive=false"]);
        assert!(!rewrites_github_ssh(&standalone));
        let own = git_vars(env(&[("GIT_CONFIG_COUNT", "1")]), false);
        assert!(injected_git_config(&own).is_empty());
        // A count without its pairs gives what is there, no more.
        let broken = [("GIT_CONFIG_COUNT".to_string(), "2".to_string())];
        assert!(injected_git_config(&broken).is_empty());
    }

    #[test]
    fn git_no_prompt_switches_respect_the_parent_even_empty() {
        let vars = git_vars(
            env(&[
                ("GIT_TERMINAL_PROMPT", "1"),
                ("GIT_ASKPASS", "/bin/askpass"),
            ]),
            false,
        );
        assert_eq!(get(&vars, "GIT_TERMINAL_PROMPT"), None);
        assert_eq!(get(&vars, "GIT_ASKPASS"), None);
        assert_eq!(get(&vars, "GCM_INTERACTIVE"), Some("never"));
        let vars = git_vars(env(&[("GCM_INTERACTIVE", "")]), false);
        assert_eq!(get(&vars, "GCM_INTERACTIVE"), None);
    }

    #[test]
    fn own_git_config_count_is_never_clobbered() {
        let vars = git_vars(
            env(&[("GIT_CONFIG_COUNT", "1"), ("GIT_CONFIG_KEY_0", "user.name")]),
            false,
        );
        assert!(
            vars.iter().all(|(k, _)| !k.starts_with("GIT_CONFIG_")),
            "{vars:?}"
        );
        // The no-prompt switches still apply.
        assert_eq!(get(&vars, "GIT_TERMINAL_PROMPT"), Some("0"));
    }

    #[test]
    fn own_ssh_or_standalone_keeps_ssh_remotes() {
        for parent in [
            env(&[("SSH_AUTH_SOCK", "/tmp/agent.sock")]),
            env(&[("GIT_SSH_COMMAND", "ssh -i key")]),
        ] {
            let vars = git_vars(parent, false);
            assert_eq!(get(&vars, "GIT_CONFIG_COUNT"), Some("1"));
            assert_eq!(
                get(&vars, "GIT_CONFIG_KEY_0"),
                Some("credential.interactive")
            );
            assert_eq!(get(&vars, "GIT_CONFIG_KEY_1"), None);
        }
        let vars = git_vars(env(&[]), true);
        assert_eq!(get(&vars, "GIT_CONFIG_COUNT"), Some("1"));
        // An empty SSH_AUTH_SOCK is no agent.
        let vars = git_vars(env(&[("SSH_AUTH_SOCK", "")]), false);
        assert_eq!(get(&vars, "GIT_CONFIG_COUNT"), Some("3"));
    }

    #[test]
    fn credential_vars_is_both() {
        let vars = credential_vars(env(&[("GH_TOKEN", "x")]), false);
        assert_eq!(get(&vars, "GH_TOKEN"), None);
        assert_eq!(get(&vars, "AWS_ACCESS_KEY_ID"), Some(PLACEHOLDER));
        assert_eq!(get(&vars, "GIT_CONFIG_COUNT"), Some("3"));
    }

    #[test]
    fn aws_config_created_once_with_modes() {
        let home = TempDir::new("aws-home");
        let path = home.0.join(".aws/config");
        assert_eq!(
            ensure_aws_config(&home.0).unwrap(),
            AwsConfigOutcome::Created(path.clone())
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), AWS_CONFIG);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&home.0.join(".aws")), 0o700);
        fs::write(&path, "[default]\nregion = mine\n").unwrap();
        assert_eq!(
            ensure_aws_config(&home.0).unwrap(),
            AwsConfigOutcome::AlreadyPresent(path.clone())
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "[default]\nregion = mine\n"
        );
    }

    #[test]
    fn aws_config_keeps_an_existing_dir_and_a_dangling_symlink() {
        let home = TempDir::new("aws-home2");
        fs::create_dir(home.0.join(".aws")).unwrap();
        fs::set_permissions(home.0.join(".aws"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(home.0.join("elsewhere"), home.0.join(".aws/config")).unwrap();
        assert!(matches!(
            ensure_aws_config(&home.0).unwrap(),
            AwsConfigOutcome::AlreadyPresent(_)
        ));
        assert!(!home.0.join("elsewhere").exists(), "followed the symlink");
        let mode = fs::metadata(home.0.join(".aws"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755, "an existing directory keeps its mode");
    }

    #[test]
    fn aws_config_without_home_is_an_error() {
        let home = TempDir::new("aws-home3");
        let err = ensure_aws_config(&home.0.join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn ssh_forms() {
        for yes in [
            "git@github.com:",
            "ssh://git@github.com/",
            "git+ssh://h/",
            "SSH://x/",
            "github.com:",
            "me@host:path/x",
        ] {
            assert!(is_ssh_form(yes), "{yes}");
        }
        for no in [
            "https://github.com/",
            "http://h/",
            "/local/path",
            "",
            ":x",
            "dir/a:b",
        ] {
            assert!(!is_ssh_form(no), "{no}");
        }
    }

    #[test]
    fn parses_each_conflict_rule() {
        let listing = "\
file:/root/.gitconfig\tuser.name=Someone
file:/root/.gitconfig\thttp.proxy=http://corp:3128
file:/root/.gitconfig\thttp.https://example.com/.proxy=http://other:8080
file:/etc/gitconfig\thttp.sslcainfo=/etc/corp.pem
file:/etc/gitconfig\thttp.https://Git.Example.com.sslcainfo=/x.pem
file:/root/.gitconfig\turl.git@github.com:.insteadof=https://github.com/
file:/root/.gitconfig\turl.ssh://git@gitlab.com/.pushinsteadof=https://gitlab.com/
file:/root/.gitconfig\turl.https://github.com/.insteadof=git@github.com:
file:/root/.gitconfig\turl.https://mirror/.insteadof=https://github.com/
file:/root/.gitconfig\thttp.sslverify=false
file:/root/.gitconfig\thttp.proxyauthmethod=basic
";
        let found = parse_git_conflicts(listing);
        assert_eq!(found.len(), 6, "{found:#?}");
        assert!(found[0].starts_with("http.proxy=http://corp:3128 (file:/root/.gitconfig): "));
        assert!(found[1].starts_with("http.https://example.com/.proxy=http://other:8080"));
        assert!(found[2].starts_with("http.sslcainfo=/etc/corp.pem (file:/etc/gitconfig)"));
        assert!(found[3].starts_with("http.https://Git.Example.com.sslcainfo="));
        assert!(found[4].starts_with("url.git@github.com:.insteadof=https://github.com/"));
        assert!(found[4].contains("SSH"));
        assert!(found[5].starts_with("url.ssh://git@gitlab.com/.pushinsteadof="));
    }

    #[test]
    fn parses_lines_without_origin_and_mixed_case() {
        let found = parse_git_conflicts("HTTP.Proxy=x\nhttp.proxy\ncore.editor=vi\n");
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0], "HTTP.Proxy=x: sends git to another proxy");
    }

    #[test]
    fn git_conflicts_without_git_is_empty() {
        let dir = TempDir::new("no-git");
        let found = git_conflicts_with(Duration::from_secs(5), dir.0.as_os_str(), None);
        assert!(found.is_empty());
    }
}
