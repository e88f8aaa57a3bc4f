//! The merged CA bundle, built once: the system bundle's text (found by
//! [`system_bundle`]), then the gateway's certificates it lacks, then the
//! certificates of the user's own CA files it lacks ([`merge`]). Building
//! reads and fetches but writes nothing ([`prepare`]), so `doctor` can run
//! it; [`Bundle::write`] then writes the whole bundle in one atomic write
//! (mode 0644, a missing directory created 0700), and
//! [`Bundle::write_truststore`] the same certificates as a Java truststore.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::pem::extract_certificates;
use super::{TrustError, fetch, jks, user_cas};
use crate::config::Config;
use crate::env;
use crate::gateway::Endpoint;

/// Bound on the system bundle read (Debian's is about 200 KiB).
const MAX_SYSTEM_BUNDLE: u64 = 16 * 1024 * 1024;

/// The system bundle to merge: `explicit` if given (even if it does not
/// exist; the caller reports that), else the file `openssl-probe` finds
/// (which honours `SSL_CERT_FILE`) if it exists, else `None`.
pub fn system_bundle(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    openssl_probe::probe().cert_file.filter(|p| p.is_file())
}

/// The bundle's text: the system bundle's text as is (with a trailing
/// newline ensured), then `certs`.
fn bundle_text(system_pem: Option<&[u8]>, certs: &[String]) -> Vec<u8> {
    let mut content = Vec::new();
    if let Some(system) = system_pem.filter(|s| !s.is_empty()) {
        content.extend_from_slice(system);
        if !system.ends_with(b"\n") {
            content.push(b'\n');
        }
    }
    for cert in certs {
        content.extend_from_slice(cert.as_bytes());
        if !cert.ends_with('\n') {
            content.push(b'\n');
        }
    }
    content
}

/// Writes a bundle at `path`: the system bundle's text, then `certs`.
/// Atomic: the parent directory is created if missing (mode 0700), the text
/// goes to a temporary file in the same directory (mode 0644), is synced and
/// renamed over `path`. On failure the temporary file is removed and any old
/// bundle is left as it was.
pub fn write_bundle(
    path: &Path,
    system_pem: Option<&[u8]>,
    certs: &[String],
) -> Result<(), TrustError> {
    write_atomically(path, &bundle_text(system_pem, certs))
}

/// The shared atomic write (mode 0644), after creating a missing directory
/// (0700).
fn write_atomically(path: &Path, content: &[u8]) -> Result<(), TrustError> {
    let written = (|| {
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        crate::sys::atomic_file::write(path, content, 0o644)
    })();
    written.map_err(|error| TrustError::Write {
        path: path.to_path_buf(),
        error,
    })
}

/// What went into the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// Where the bundle goes.
    pub path: PathBuf,
    /// The system bundle merged, if one was.
    pub system_bundle: Option<PathBuf>,
    /// Certificates in the system part.
    pub system_certs: usize,
    /// Distinct certificates the gateway sent.
    pub gateway_certs: usize,
    /// Of those, how many the system part already held (not appended twice).
    pub gateway_already_present: usize,
    /// The user's CA files read, each with how many of its certificates
    /// were new to the bundle and appended.
    pub user_files: Vec<(PathBuf, usize)>,
    /// One line each, for stderr: what was missing and what that means.
    pub warnings: Vec<String>,
}

/// A bundle built in memory, not yet written.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// What went into it.
    pub built: Built,
    content: Vec<u8>,
    /// Every distinct certificate of the bundle, in order (for the truststore).
    certs: Vec<String>,
    /// The distinct certificates the gateway sent, in order.
    gateway: Vec<String>,
}

impl Bundle {
    /// The bundle's text, as [`Bundle::write`] writes it.
    pub fn content(&self) -> &[u8] {
        &self.content
    }

    /// The bundle's certificates, as canonical PEM blocks.
    pub fn certificates(&self) -> &[String] {
        &self.certs
    }

    /// The gateway's own CA certificates, canonical PEM (what the system
    /// store and NSS get: they have the system's already).
    pub fn gateway_certificates(&self) -> &[String] {
        &self.gateway
    }

    /// Writes the bundle to [`Built::path`] in one atomic write.
    pub fn write(&self) -> Result<(), TrustError> {
        write_atomically(&self.built.path, &self.content)
    }

    /// Writes the bundle's certificates as a JKS truststore next to it
    /// (`env::truststore_path`) and returns its path; the error's
    /// `Display` is the warning line saying why not.
    pub fn write_truststore(&self) -> Result<PathBuf, TruststoreError> {
        self.write_truststore_with(&[])
    }

    /// [`Bundle::write_truststore`] with `extra` certificates (canonical
    /// PEM: the JDK's own `cacerts`, see [`super::jdk`]) after the bundle's;
    /// duplicates are stored once.
    pub fn write_truststore_with(&self, extra: &[String]) -> Result<PathBuf, TruststoreError> {
        let store = env::truststore_path(&self.built.path);
        let mut certs = self.certs.clone();
        certs.extend(extra.iter().cloned());
        match jks::write_jks(&store, &certs) {
            Ok(_) => Ok(store),
            Err(source) => Err(TruststoreError {
                path: store,
                source,
            }),
        }
    }
}

/// The Java truststore could not be written: a warning, start-up goes on
/// without it.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot write the Java truststore {} ({source}); Java programs will not trust the gateway",
    .path.display()
)]
pub struct TruststoreError {
    /// Where it was to be written.
    pub path: PathBuf,
    #[source]
    source: io::Error,
}

/// Start-up step 3 without its writes: fetches the gateway's CA, reads the
/// system bundle and the user's CA files (named by `parent`, the relay's own
/// environment) and builds the bundle for `config.ca_bundle`. A failed
/// fetch is an error (the caller fails open); a missing or unreadable
/// system bundle or user file is only a warning.
pub fn prepare(
    config: &Config,
    endpoint: &Endpoint,
    tls: &native_tls::TlsConnector,
    parent: impl Fn(&str) -> Option<String>,
) -> Result<Bundle, TrustError> {
    let fetched = fetch::fetch_gateway_ca(
        endpoint,
        tls,
        config.limits.ca_fetch_timeout,
        config.limits.max_ca_bytes,
    )?;
    Ok(merge_fetched(config, fetched, parent))
}

/// [`prepare`] for either generation, with the fetch retried: the CA at
/// `ca_path` (see `Generation::ca_cert_path`) fetched with up to three tries
/// within one `config.limits.ca_fetch_timeout` budget
/// ([`fetch::fetch_ca_with_retries`]). The failure says how many tries were
/// made and what `Retry-After` the gateway last asked for.
pub fn prepare_with_retries(
    config: &Config,
    endpoint: &Endpoint,
    ca_path: &str,
    tls: &native_tls::TlsConnector,
    parent: impl Fn(&str) -> Option<String>,
) -> Result<Bundle, fetch::CaFetchFailure> {
    let fetched = fetch::fetch_ca_with_retries(
        endpoint,
        ca_path,
        tls,
        config.limits.ca_fetch_timeout,
        config.limits.max_ca_bytes,
    )?;
    Ok(merge_fetched(config, fetched, parent))
}

/// The bundle `config` asks for around the gateway's `fetched`
/// certificates: the system bundle first, the user's CA files last.
fn merge_fetched(
    config: &Config,
    fetched: Vec<String>,
    parent: impl Fn(&str) -> Option<String>,
) -> Bundle {
    merge(
        &config.ca_bundle,
        system_bundle(config.system_ca.as_deref()),
        fetched,
        user_cas::user_ca_files(&parent, &config.ca_bundle),
    )
}

/// The system text, if usable, or a warning saying why not.
fn read_system(path: &Path) -> Result<Vec<u8>, SystemBundleError> {
    let mut text = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_SYSTEM_BUNDLE + 1).read_to_end(&mut text))
        .map_err(|error| SystemBundleError::Read {
            path: path.to_path_buf(),
            error,
        })?;
    if text.len() as u64 > MAX_SYSTEM_BUNDLE {
        return Err(SystemBundleError::TooLarge(path.to_path_buf()));
    }
    Ok(text)
}

/// The system CA bundle is not used; `Display` is the warning.
#[derive(Debug, thiserror::Error)]
enum SystemBundleError {
    #[error("cannot read the system CA bundle {} ({error}); {ALONE}", .path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("the system CA bundle {} is larger than {MAX_SYSTEM_BUNDLE} bytes and was skipped; {ALONE}", .0.display())]
    TooLarge(PathBuf),
}

/// What a merged bundle without the system's certificates means.
const ALONE: &str = "the merged bundle holds the gateway's certificates alone, so children will not trust public sites";

/// Builds the bundle for `target`: the system text (if usable), then the
/// `fetched` gateway certificates it lacks, then the certificates of
/// `user_files` (see [`user_cas::user_ca_files`]) neither holds. The user
/// files that are `target` or the system bundle are skipped.
pub fn merge(
    target: &Path,
    system_path: Option<PathBuf>,
    fetched: Vec<String>,
    user_files: Vec<(String, PathBuf)>,
) -> Bundle {
    let mut warnings = Vec::new();
    let mut system_text = None;
    let mut system_certs = Vec::new();
    match &system_path {
        None => warnings.push(
            "no system CA bundle found (pass --system-ca); the merged bundle holds the gateway's certificates alone, so children will not trust public sites".to_string(),
        ),
        Some(path) => match read_system(path) {
            Err(warning) => warnings.push(warning.to_string()),
            Ok(text) => {
                system_certs = extract_certificates(&text);
                if system_certs.is_empty() {
                    warnings.push(format!(
                        "the system CA bundle {} holds no PEM certificate and was skipped; the merged bundle holds the gateway's certificates alone",
                        path.display()
                    ));
                } else {
                    system_text = Some(text);
                }
            }
        },
    }
    let mut gateway = Vec::new();
    let mut already = 0;
    for cert in fetched {
        if gateway.contains(&cert) {
            continue;
        }
        if system_certs.contains(&cert) {
            already += 1;
        }
        gateway.push(cert);
    }
    let mut appended: Vec<String> = gateway
        .iter()
        .filter(|c| !system_certs.contains(c))
        .cloned()
        .collect();
    let system_used = system_text.is_some().then_some(system_path).flatten();
    let mut known: HashSet<String> = system_certs.iter().chain(&gateway).cloned().collect();
    let skip: Vec<&Path> = [Some(target), system_used.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let user = user_cas::collect(user_files, &skip, &mut known);
    warnings.extend(user.warnings);
    appended.extend(user.added);
    let content = bundle_text(system_text.as_deref(), &appended);
    let mut certs = system_certs.clone();
    certs.extend(appended);
    Bundle {
        built: Built {
            path: target.to_path_buf(),
            system_bundle: system_used,
            system_certs: system_certs.len(),
            gateway_certs: gateway.len(),
            gateway_already_present: already,
            user_files: user.files,
            warnings,
        },
        content,
        certs,
        gateway,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::OnceLock;

    use crate::test_support::{TestCert, self_signed};

    #[test]
    fn an_unreadable_system_bundle_is_a_warning_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        let warning = read_system(&missing).unwrap_err().to_string();
        let start = format!("cannot read the system CA bundle {} (", missing.display());
        assert!(warning.starts_with(&start), "{warning}");
        assert!(
            warning.ends_with("); the merged bundle holds the gateway's certificates alone, so children will not trust public sites"),
            "{warning}"
        );
    }
    use crate::trust::fetch::tests::{answer, connector, serve, serve_sequence};

    struct Pki {
        cert_a: String,
        cert_b: String,
    }

    fn pki() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| Pki {
            cert_a: self_signed("test-a").pem,
            cert_b: self_signed("test-b").pem,
        })
    }

    /// The bundle as start-up built it before user files existed: merged
    /// and written in one go.
    fn merge_and_write(
        target: &Path,
        system_path: Option<PathBuf>,
        fetched: Vec<String>,
    ) -> Result<Built, TrustError> {
        let bundle = merge(target, system_path, fetched, vec![]);
        bundle.write()?;
        Ok(bundle.built)
    }

    // -- atomic write ------------------------------------------------------

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_gateway_certificates_alone_are_known_for_the_system_store() {
        let p = pki();
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system.pem");
        fs::write(&system, &p.cert_a).unwrap();
        let target = dir.path().join("ca-bundle.crt");
        // The gateway sent B twice and A (already in the system part).
        let bundle = merge(
            &target,
            Some(system),
            vec![p.cert_b.clone(), p.cert_b.clone(), p.cert_a.clone()],
            vec![],
        );
        assert_eq!(
            bundle.gateway_certificates(),
            [p.cert_b.clone(), p.cert_a.clone()]
        );
        assert_eq!(bundle.certificates(), [p.cert_a.clone(), p.cert_b.clone()]);
    }

    #[test]
    fn writes_system_then_gateway_atomically() {
        let p = pki();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a").join("b").join("ca-bundle.crt");
        let system = p.cert_a.trim_end().as_bytes(); // no trailing newline
        write_bundle(&target, Some(system), std::slice::from_ref(&p.cert_b)).unwrap();
        let written = fs::read_to_string(&target).unwrap();
        assert_eq!(written, format!("{}\n{}", p.cert_a.trim_end(), p.cert_b));
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        for created in [dir.path().join("a"), dir.path().join("a").join("b")] {
            let mode = fs::metadata(&created).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", created.display());
        }
        assert_eq!(dir_names(target.parent().unwrap()), ["ca-bundle.crt"]);

        // Overwrite: no system part, the new content replaces the old.
        write_bundle(&target, None, std::slice::from_ref(&p.cert_a)).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), p.cert_a);
        assert_eq!(dir_names(target.parent().unwrap()), ["ca-bundle.crt"]);
    }

    #[test]
    fn failed_write_leaves_old_bundle_and_no_temp_file() {
        let p = pki();
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("ca-bundle.crt");
        write_bundle(&old, None, std::slice::from_ref(&p.cert_a)).unwrap();

        // A "directory" that is a regular file.
        let blocker = dir.path().join("file");
        fs::write(&blocker, "x").unwrap();
        let err = write_bundle(
            &blocker.join("ca-bundle.crt"),
            None,
            std::slice::from_ref(&p.cert_b),
        )
        .unwrap_err();
        assert!(matches!(err, TrustError::Write { .. }), "{err}");
        assert!(err.to_string().contains("--ca-bundle"), "{err}");
        let err = write_bundle(&blocker.join("sub").join("x.crt"), None, &[]).unwrap_err();
        assert!(matches!(err, TrustError::Write { .. }), "{err}");

        // The rename fails (the target is a non-empty directory): the temp
        // file is removed and the directory is untouched.
        let taken = dir.path().join("taken");
        fs::create_dir(&taken).unwrap();
        fs::write(taken.join("keep"), "keep").unwrap();
        assert!(write_bundle(&taken, None, std::slice::from_ref(&p.cert_b)).is_err());
        assert_eq!(fs::read_to_string(taken.join("keep")).unwrap(), "keep");

        assert_eq!(fs::read_to_string(&old).unwrap(), p.cert_a);
        assert_eq!(dir_names(dir.path()), ["ca-bundle.crt", "file", "taken"]);
    }

    #[test]
    fn system_bundle_choice() {
        // An explicit path is taken as given, even if it does not exist
        // (what openssl-probe finds is checked in the integration tests,
        // which may read the system's files).
        let missing = Path::new("/nonexistent/ca.pem");
        assert_eq!(system_bundle(Some(missing)), Some(missing.to_path_buf()));
        let dir = tempfile::tempdir().unwrap();
        let given = dir.path().join("ca.pem");
        fs::write(&given, &pki().cert_a).unwrap();
        assert_eq!(system_bundle(Some(&given)), Some(given.clone()));
        let built = merge(
            &dir.path().join("out.crt"),
            system_bundle(Some(&given)),
            vec![],
            vec![],
        );
        assert_eq!(built.built.system_bundle, Some(given));
        assert_eq!(built.content(), pki().cert_a.as_bytes());
    }

    #[test]
    fn merge_warns_and_dedupes() {
        let p = pki();
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system.pem");
        fs::write(&system, format!("# comment\n{}", p.cert_a)).unwrap();
        let target = dir.path().join("out").join("ca-bundle.crt");

        let built = merge_and_write(
            &target,
            Some(system.clone()),
            vec![p.cert_b.clone(), p.cert_b.clone()],
        )
        .unwrap();
        assert_eq!(built.system_certs, 1);
        assert_eq!(built.gateway_certs, 1);
        assert_eq!(built.gateway_already_present, 0);
        assert!(built.warnings.is_empty(), "{:?}", built.warnings);
        assert_eq!(
            fs::read_to_string(&target).unwrap(),
            format!("# comment\n{}{}", p.cert_a, p.cert_b)
        );

        // The system bundle is the merged bundle itself (SSL_CERT_FILE set
        // by an earlier run): the gateway certificate is not appended twice.
        let built = merge_and_write(&target, Some(target.clone()), vec![p.cert_b.clone()]).unwrap();
        assert_eq!(built.gateway_already_present, 1);
        assert_eq!(
            fs::read_to_string(&target).unwrap(),
            format!("# comment\n{}{}", p.cert_a, p.cert_b)
        );

        // Missing system bundle: warning, gateway certificates alone.
        let built = merge_and_write(
            &target,
            Some(dir.path().join("missing.pem")),
            vec![p.cert_b.clone()],
        )
        .unwrap();
        assert_eq!(built.system_certs, 0);
        assert_eq!(built.system_bundle, None);
        assert_eq!(built.warnings.len(), 1);
        assert!(
            built.warnings[0].contains("missing.pem"),
            "{:?}",
            built.warnings
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), p.cert_b);

        // A "system bundle" without certificates is skipped too.
        fs::write(&system, "<html>").unwrap();
        let built = merge_and_write(&target, Some(system), vec![p.cert_b.clone()]).unwrap();
        assert_eq!(built.warnings.len(), 1);
        assert_eq!(fs::read_to_string(&target).unwrap(), p.cert_b);

        let built = merge_and_write(&target, None, vec![p.cert_b.clone()]).unwrap();
        assert_eq!(built.warnings.len(), 1);
    }

    #[test]
    fn prepare_then_write_end_to_end() {
        let p = pki();
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system.pem");
        fs::write(&system, &p.cert_a).unwrap();
        let (endpoint, _s) = serve(answer("HTTP/1.1 200 OK\n", p.cert_b.as_bytes()));
        let mut config = Config::from_env();
        config.ca_bundle = dir.path().join(".ccr").join("ca-bundle.crt");
        config.system_ca = Some(system.clone());
        let bundle = prepare(&config, &endpoint, &connector(), no_parent).unwrap();
        // Preparing writes nothing.
        assert!(!config.ca_bundle.exists());
        assert!(!config.ca_bundle.parent().unwrap().exists());
        bundle.write().unwrap();
        assert_eq!(
            bundle.built,
            Built {
                path: config.ca_bundle.clone(),
                system_bundle: Some(system),
                system_certs: 1,
                gateway_certs: 1,
                gateway_already_present: 0,
                user_files: vec![],
                warnings: vec![],
            }
        );
        assert_eq!(
            fs::read_to_string(&config.ca_bundle).unwrap(),
            format!("{}{}", p.cert_a, p.cert_b)
        );

        // A failed fetch writes nothing and leaves the old bundle.
        let (endpoint, _s) = serve(answer("HTTP/1.1 503 Service Unavailable\n", b""));
        assert!(matches!(
            prepare(&config, &endpoint, &connector(), no_parent),
            Err(TrustError::Status { code: 503, .. })
        ));
        assert_eq!(
            fs::read_to_string(&config.ca_bundle).unwrap(),
            format!("{}{}", p.cert_a, p.cert_b)
        );
    }

    #[test]
    fn prepare_with_retries_gets_past_a_503() {
        let p = pki();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_env();
        config.ca_bundle = dir.path().join("ca-bundle.crt");
        config.system_ca = Some(dir.path().join("no-system.pem"));
        let path = crate::gateway::Generation::AgentProxy.ca_cert_path();
        let (endpoint, server) = serve_sequence(
            vec![
                answer("HTTP/1.1 503 Busy\nContent-Length: 0\n", b""),
                answer("HTTP/1.1 200 OK\n", p.cert_b.as_bytes()),
            ],
            std::time::Duration::from_secs(5),
        );
        let bundle =
            prepare_with_retries(&config, &endpoint, path, &connector(), no_parent).unwrap();
        assert_eq!(bundle.certificates(), std::slice::from_ref(&p.cert_b));
        assert_eq!(bundle.built.gateway_certs, 1);
        assert!(!config.ca_bundle.exists());
        let requests = server.join().unwrap();
        assert_eq!(requests.len(), 2);
        assert!(requests[1].starts_with("GET /pre/v1/code/agent-proxy/ca-cert "));

        // A 403 is final: one try, nothing built.
        let (endpoint, server) = serve_sequence(
            vec![answer("HTTP/1.1 403 Forbidden\nContent-Length: 0\n", b"")],
            std::time::Duration::from_secs(5),
        );
        let failure = prepare_with_retries(&config, &endpoint, path, &connector(), no_parent)
            .err()
            .unwrap();
        assert_eq!(failure.attempts, 1);
        assert!(matches!(failure.last, TrustError::Status { code: 403, .. }));
        server.join().unwrap();
    }

    fn no_parent(_: &str) -> Option<String> {
        None
    }

    // -- certificates for the trust tests ----------------------------------

    /// system, gateway, corp, wget: four distinct self-signed certificates.
    fn certs() -> &'static [TestCert; 4] {
        static CERTS: OnceLock<[TestCert; 4]> = OnceLock::new();
        CERTS.get_or_init(|| ["ccr-system", "ccr-gateway", "ccr-corp", "ccr-wget"].map(self_signed))
    }

    fn jks_entry_count(path: &Path) -> u32 {
        let bytes = fs::read(path).unwrap();
        assert_eq!(&bytes[..8], &[0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2]);
        u32::from_be_bytes(bytes[8..12].try_into().unwrap())
    }

    #[test]
    fn user_ca_files_are_merged_into_the_bundle_and_truststore() {
        let [system, gateway, corp, wget] = certs();
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir_all(home.join(".ccr")).unwrap();
        let bundle = home.join(".ccr").join("ca-bundle.crt");
        let system_path = dir.path().join("system.pem");
        fs::write(&system_path, &system.pem).unwrap();
        // What ca_bundle wrote: system, then gateway.
        fs::write(&bundle, format!("{}{}", system.pem, gateway.pem)).unwrap();
        fs::set_permissions(&bundle, fs::Permissions::from_mode(0o644)).unwrap();
        // The user's corporate CA file also repeats the system certificate.
        let corp_path = dir.path().join("corp.pem");
        fs::write(&corp_path, format!("# corp\n{}{}", corp.pem, system.pem)).unwrap();
        fs::write(home.join("wget-ca.pem"), &wget.pem).unwrap();
        fs::write(
            home.join(".wgetrc"),
            "# mine\nCA-Certificate = ~/wget-ca.pem\ntries = 3\n",
        )
        .unwrap();
        let junk = dir.path().join("junk.pem");
        fs::write(&junk, "not a certificate").unwrap();
        let parent = {
            let s = |p: &Path| p.to_string_lossy().into_owned();
            let pairs = vec![
                ("HOME", s(&home)),
                ("SSL_CERT_FILE", s(&system_path)), // the system bundle: skipped
                ("REQUESTS_CA_BUNDLE", s(&corp_path)), // the user's own: merged
                ("CURL_CA_BUNDLE", s(&corp_path)),  // the same file: read once
                ("GIT_SSL_CAINFO", s(&bundle)),     // the bundle itself: skipped
                ("PIP_CERT", s(&dir.path().join("gone.pem"))), // unreadable: warning
                ("AWS_CA_BUNDLE", s(&junk)),        // no certificate: warning
                ("DENO_CERT", "  ".to_string()),    // blank: ignored
            ];
            let map: HashMap<String, String> =
                pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            move |name: &str| map.get(name).cloned()
        };
        // One build: system, gateway (fetched), then the user's files.
        let build = || {
            merge(
                &bundle,
                Some(system_path.clone()),
                vec![gateway.pem.clone()],
                user_cas::user_ca_files(&parent, &bundle),
            )
        };
        let prepared = build();
        prepared.write().unwrap();
        let truststore = prepared.write_truststore();
        let prepared = prepared.built;
        assert_eq!(
            prepared.user_files,
            vec![(corp_path.clone(), 1), (home.join("wget-ca.pem"), 1)]
        );
        assert_eq!(prepared.warnings.len(), 2, "{:?}", prepared.warnings);
        assert!(prepared.warnings[0].starts_with("PIP_CERT names "));
        assert!(prepared.warnings[0].contains("cannot be read"));
        assert!(prepared.warnings[1].starts_with("AWS_CA_BUNDLE names "));
        assert!(prepared.warnings[1].contains("no PEM certificate"));
        // The bundle: system, gateway, then the user's certificates, once each.
        assert_eq!(
            fs::read_to_string(&bundle).unwrap(),
            format!("{}{}{}{}", system.pem, gateway.pem, corp.pem, wget.pem)
        );
        assert_eq!(
            fs::metadata(&bundle).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let store = home.join(".ccr").join("ca-bundle.jks");
        assert_eq!(truststore.unwrap(), store);
        assert_eq!(jks_entry_count(&store), 4);

        // Again (a restart): the bundle on disk (GIT_SSL_CAINFO) is skipped,
        // so the build is the same, nothing duplicated.
        let again = build();
        assert_eq!(
            again.built.user_files,
            vec![(corp_path.clone(), 1), (home.join("wget-ca.pem"), 1)]
        );
        again.write().unwrap();
        again.write_truststore().unwrap();
        assert_eq!(extract_certificates(&fs::read(&bundle).unwrap()).len(), 4);
        assert_eq!(jks_entry_count(&store), 4);

        // No parent CA settings at all: system and gateway, the store made.
        let plain = merge(
            &bundle,
            Some(system_path.clone()),
            vec![gateway.pem.clone()],
            user_cas::user_ca_files(no_parent, &bundle),
        );
        assert_eq!(plain.built.user_files, vec![]);
        assert_eq!(plain.built.warnings, Vec::<String>::new());
        plain.write().unwrap();
        plain.write_truststore().unwrap();
        assert_eq!(
            fs::read_to_string(&bundle).unwrap(),
            format!("{}{}", system.pem, gateway.pem)
        );
        assert_eq!(jks_entry_count(&store), 2);

        // A truststore that cannot be written: no path, one warning line.
        let blocked = dir.path().join("blocked.crt");
        fs::create_dir(dir.path().join("blocked.jks")).unwrap();
        let unwritable = merge(&blocked, None, vec![gateway.pem.clone()], vec![]);
        let err: TruststoreError = unwritable.write_truststore().unwrap_err();
        assert_eq!(err.path, dir.path().join("blocked.jks"));
        let cause = std::error::Error::source(&err).expect("the I/O error behind it");
        assert!(cause.is::<io::Error>(), "{cause}");
        let line = err.to_string();
        assert!(line.contains("Java programs will not trust"), "{line}");
        assert!(line.contains(&cause.to_string()), "{line}");
    }
}
