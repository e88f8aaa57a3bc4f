//! What `ccr-relay --version` and `doctor` say about the build: the
//! crate's version, the target, and the TLS library linked in.

/// `ccr-relay --version`: version, target, TLS library.
pub fn version_text() -> String {
    format!(
        "ccr-relay {} ({}-{}-{}, {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS,
        if cfg!(target_env = "musl") {
            "musl"
        } else {
            "gnu"
        },
        tls_library_version()
    )
}

/// The TLS library's name and version (OpenSSL's own text, e.g.
/// `OpenSSL 3.0.13 30 Jan 2024`): the library native-tls links, statically
/// in the musl build.
pub fn tls_library_version() -> String {
    openssl::version::version().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_version_and_the_tls_library() {
        let text = version_text();
        assert!(
            text.starts_with(&format!("ccr-relay {} (", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert!(text.contains(std::env::consts::ARCH), "{text}");
        assert!(tls_library_version().contains("SSL"), "{text}");
        assert!(
            text.ends_with(&format!("{})", tls_library_version())),
            "{text}"
        );
    }
}
