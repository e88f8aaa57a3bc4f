//! The one rule for a DNS host name, wherever the relay takes one: a
//! client's target ([`crate::http::request_head`]), the gateway's URL
//! ([`crate::gateway`]) and a name selective mode dials itself
//! ([`crate::proxy::route`]).
//!
//! The rule is RFC 1123's host name with `_` also allowed (real services
//! carry it, e.g. `_acme-challenge`, and every caller took it before):
//! labels of 1 to [`MAX_LABEL_LEN`] letters, digits, `-` or `_`, neither
//! beginning nor ending with `-`, joined by single dots, at most
//! [`MAX_NAME_LEN`] characters in all. A name here has no trailing dot and
//! no IP literal form: a caller that takes the absolute form (`name.`) or
//! addresses strips or parses them itself, and says so.

/// Longest host name, dots included, without a trailing dot (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;

/// Longest label of a host name (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Whether `name` is a DNS host name by the rule above (any case).
///
/// ```
/// use ccr_relay::http::host::is_dns_name;
/// assert!(is_dns_name("api.Example.com") && is_dns_name("_svc.a-b.test"));
/// assert!(!is_dns_name("-a.test") && !is_dns_name("a-.test") && !is_dns_name("a.test."));
/// ```
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('.').all(is_label)
}

fn is_label(label: &str) -> bool {
    (1..=MAX_LABEL_LEN).contains(&label.len())
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_pass() {
        let label63 = "a".repeat(63);
        let longest = [label63.as_str(); 4].join(".")[..MAX_NAME_LEN].to_string();
        for name in [
            "a",
            "localhost",
            "a-b.c--d.test",
            "_svc._tcp.example",
            "x_.y",
            "1.2.3.4",
            "0x7f.1",
            "API.Example.COM",
            &format!("{label63}.test"),
            &longest,
        ] {
            assert!(is_dns_name(name), "{name:?} refused");
        }
    }

    #[test]
    fn names_that_fail() {
        let label63 = "a".repeat(63);
        let longest = [label63.as_str(); 4].join(".")[..MAX_NAME_LEN].to_string();
        let too_long = format!("{longest}.a");
        assert!(too_long.len() > MAX_NAME_LEN);
        for name in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "-a",
            "a-",
            "a.-b",
            "a.b-",
            "a b",
            "a/b",
            "a:b",
            "[::1]",
            "évil.test",
            "a\r\nb",
            &format!("{label63}a.test"),
            &too_long,
        ] {
            assert!(!is_dns_name(name), "{name:?} accepted");
        }
    }
}
