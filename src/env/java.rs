//! What the JVM is told: the proxy and the `NO_PROXY` entries as Java
//! system properties (Java reads no proxy variable), and the truststore the
//! `trust` module writes, all carried in `JAVA_TOOL_OPTIONS`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::trust::jks;

/// `NO_PROXY` entries as Java's `http.nonProxyHosts` (`|`-separated
/// patterns, `*` allowed only at the start or the end, matched against the
/// URL's host without case):
///
/// - `.example.com` becomes `*.example.com` (a leading dot means
///   subdomains, which is what `*.` says to Java); `*.x` and plain names
///   stay; `*` stays (no proxy at all).
/// - An IPv6 address is bracketed (`::1` becomes `[::1]`): Java matches the
///   host as the URL writes it.
/// - `host:port` loses its port (Java cannot scope by port).
/// - Java has no CIDR. An IPv4 block on an octet boundary becomes a prefix
///   pattern (`10.0.0.0/8` is `10.*`, `192.168.0.0/16` is `192.168.*`); one
///   between boundaries is widened into the prefixes it covers when there
///   are at most 64 (`172.16.0.0/12` is `172.16.*` to `172.31.*`; the
///   agent proxy's `100.64.0.0/10` is `100.64.*` to `100.127.*`). Such a
///   prefix also matches a host *name* starting with those digits, which no
///   real name does. Other blocks (IPv6, wider expansions) are dropped.
/// - Entries Java cannot hold (white space, `|`, a `*` inside) are dropped.
pub fn java_non_proxy_hosts(entries: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |p: String| {
        if !out.iter().any(|x| x.eq_ignore_ascii_case(&p)) {
            out.push(p);
        }
    };
    for entry in entries {
        let e = entry.trim();
        if e.is_empty() || e.contains(|c: char| c.is_whitespace() || c == '|' || c == '"') {
            continue;
        }
        if let Some((addr, bits)) = e.split_once('/') {
            for p in ipv4_cidr_patterns(addr, bits) {
                add(p);
            }
            continue;
        }
        if e.parse::<Ipv6Addr>().is_ok() {
            add(format!("[{e}]"));
            continue;
        }
        let host = strip_port(e);
        let pattern = match host.strip_prefix('.') {
            Some(rest) => format!("*.{rest}"),
            None => host.to_string(),
        };
        let inner = pattern.trim_matches('*');
        if inner.contains('*') || (inner.trim_matches('.').is_empty() && pattern != "*") {
            continue;
        }
        add(pattern);
    }
    out
}

/// `host:port` without the port; IPv6 forms (`[::1]:80`, `[::1]`) keep
/// their brackets.
fn strip_port(entry: &str) -> &str {
    if entry.starts_with('[') {
        return match entry.find(']') {
            Some(end) => &entry[..=end],
            None => entry,
        };
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => entry,
    }
}

/// Java prefix patterns covering the IPv4 block `addr/bits`; empty when it
/// is not one or would need more than 64 patterns.
fn ipv4_cidr_patterns(addr: &str, bits: &str) -> Vec<String> {
    let (Ok(addr), Ok(bits)) = (addr.parse::<Ipv4Addr>(), bits.parse::<u32>()) else {
        return Vec::new();
    };
    if bits > 32 {
        return Vec::new();
    }
    let whole = bits.div_ceil(8); // octets the patterns fix
    let spread = whole * 8 - bits; // bits widened into separate patterns
    if spread > 6 {
        return Vec::new();
    }
    let base = u32::from(addr) & (u32::MAX.checked_shl(32 - bits).unwrap_or(0));
    (0..1u32 << spread)
        .map(|i| {
            let net = base | i.checked_shl(32 - whole * 8).unwrap_or(0);
            let octets = net.to_be_bytes();
            let fixed: Vec<String> = octets[..whole as usize].iter().map(u8::to_string).collect();
            match whole {
                0 => "*".to_string(),
                4 => fixed.join("."),
                _ => format!("{}.*", fixed.join(".")),
            }
        })
        .collect()
}

/// Quotes one JVM option for `JAVA_TOOL_OPTIONS` if it holds white space
/// (Java 9+ honours the quotes; Java 8 splits such an option regardless).
pub(super) fn jvm_option(option: String) -> String {
    if !option.contains(char::is_whitespace) {
        option
    } else if option.contains('"') {
        format!("'{option}'")
    } else {
        format!("\"{option}\"")
    }
}

/// The proxy's host and port out of `http://HOST:PORT` (brackets of an
/// IPv6 host removed).
fn proxy_host_port(proxy_url: &str) -> Option<(String, u16)> {
    let authority = proxy_url.strip_prefix("http://")?.trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The JVM options the relay adds: the proxy for `https` and `http`, the
/// `NO_PROXY` entries as `http.nonProxyHosts` (which Java applies to both),
/// and, when it was written, the truststore.
pub fn java_options(proxy_url: &str, no_proxy: &[String], truststore: Option<&Path>) -> String {
    let mut options = Vec::new();
    if let Some((host, port)) = proxy_host_port(proxy_url) {
        for scheme in ["https", "http"] {
            options.push(format!("-D{scheme}.proxyHost={host}"));
            options.push(format!("-D{scheme}.proxyPort={port}"));
        }
        let hosts = java_non_proxy_hosts(no_proxy);
        if !hosts.is_empty() {
            options.push(format!("-Dhttp.nonProxyHosts={}", hosts.join("|")));
        }
    }
    if let Some(store) = truststore {
        options.push(format!("-Djavax.net.ssl.trustStore={}", store.display()));
        options.push(format!(
            "-Djavax.net.ssl.trustStorePassword={}",
            jks::PASSWORD
        ));
        options.push(format!(
            "-Djavax.net.ssl.trustStoreType={}",
            jks::STORE_TYPE
        ));
    }
    options
        .into_iter()
        .map(jvm_option)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ours` after the parent's value of an options variable, if it had one.
pub(super) fn append_options(parent: Option<String>, ours: &str) -> String {
    match parent.as_deref().map(str::trim) {
        Some(p) if !p.is_empty() => format!("{p} {ours}"),
        _ => ours.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::NO_PROXY_LIST;
    use crate::env::test_util::*;

    #[test]
    fn carrier_grade_nat_range_becomes_64_prefixes() {
        let p = java_non_proxy_hosts(&["100.64.0.0/10".to_string()]);
        assert_eq!(p.len(), 64);
        assert_eq!(p[0], "100.64.*");
        assert_eq!(p[63], "100.127.*");
    }

    #[test]
    fn no_proxy_to_java_translation() {
        let reference: Vec<String> = NO_PROXY_LIST.iter().map(|s| s.to_string()).collect();
        assert_eq!(java_non_proxy_hosts(&reference).join("|"), REFERENCE_JAVA);
        let cases: &[(&str, &[&str])] = &[
            (".example.com", &["*.example.com"]),
            ("*.example.com", &["*.example.com"]),
            ("Example.COM", &["Example.COM"]),
            ("*", &["*"]),
            ("internal*", &["internal*"]),
            ("host.example:8443", &["host.example"]),
            ("10.1.2.3:80", &["10.1.2.3"]),
            ("fd00::1", &["[fd00::1]"]),
            ("[fd00::2]", &["[fd00::2]"]),
            ("[fd00::3]:443", &["[fd00::3]"]),
            ("1.2.3.4/32", &["1.2.3.4"]),
            ("10.20.30.0/24", &["10.20.30.*"]),
            ("10.20.31.7/24", &["10.20.31.*"]), // host bits are ignored
            ("0.0.0.0/0", &["*"]),
            (
                "100.64.0.0/14",
                &["100.64.*", "100.65.*", "100.66.*", "100.67.*"],
            ),
            ("100.0.0.0/9", &[]), // 128 prefixes: too many
            // Cannot be expressed: dropped.
            ("10.0.0.0/9", &[]),
            ("fd00::/8", &[]),
            ("10.0.0.0/33", &[]),
            ("not-an-ip/8", &[]),
            ("a|b", &[]),
            ("a b", &[]),
            ("a*b", &[]),
            ("**", &[]),
            (".", &[]),
            ("*.", &[]),
            ("", &[]),
        ];
        for (entry, expected) in cases {
            assert_eq!(
                java_non_proxy_hosts(&[entry.to_string()]),
                expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{entry:?}"
            );
        }
        // Duplicates after translation are listed once.
        let dup: Vec<String> = [".a.com", "*.a.com", "*.A.com"].map(String::from).to_vec();
        assert_eq!(java_non_proxy_hosts(&dup), ["*.a.com"]);
    }

    #[test]
    fn proxy_url_to_java_host_and_port() {
        assert_eq!(
            proxy_host_port("http://127.0.0.1:4321"),
            Some(("127.0.0.1".into(), 4321))
        );
        assert_eq!(
            proxy_host_port("http://[::1]:8080/"),
            Some(("::1".into(), 8080))
        );
        assert_eq!(proxy_host_port("http://127.0.0.1"), None);
        assert_eq!(proxy_host_port("https://127.0.0.1:1"), None);
        // Without a usable URL: no proxy options, the truststore still.
        let opts = java_options("bogus", &[], Some(Path::new("/s.jks")));
        assert_eq!(
            opts,
            "-Djavax.net.ssl.trustStore=/s.jks -Djavax.net.ssl.trustStorePassword=changeit \
-Djavax.net.ssl.trustStoreType=JKS"
        );
    }
}
