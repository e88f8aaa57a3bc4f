//! The children's `NO_PROXY` list: the reference relay's entries, then the
//! `--no-proxy` ones, then the parent's own, each once.

use super::{NO_PROXY_LIST, NO_PROXY_VARS};

/// The `NO_PROXY` entries: the reference list, then `extra`, then the
/// entries of the parent's `NO_PROXY` and `no_proxy`. Blank entries are
/// skipped, and any already listed (compared without case).
pub fn no_proxy_entries(extra: &[String], parent: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    let mut add = |e: &str| {
        let e = e.trim();
        if !e.is_empty() && !entries.iter().any(|x| x.eq_ignore_ascii_case(e)) {
            entries.push(e.to_string());
        }
    };
    NO_PROXY_LIST.iter().for_each(|e| add(e));
    extra.iter().for_each(|e| add(e));
    for name in NO_PROXY_VARS {
        if let Some(value) = parent(name) {
            value.split(',').for_each(&mut add);
        }
    }
    entries
}

/// The `NO_PROXY` value without parent entries: the reference list, then
/// the extra entries (blank ones and ones already listed are skipped),
/// joined with `,`.
pub fn no_proxy_value(extra: &[String]) -> String {
    no_proxy_entries(extra, |_| None).join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child_env::test_util::*;

    #[test]
    fn reference_no_proxy_list() {
        assert_eq!(NO_PROXY_LIST.len(), 19);
        assert_eq!(NO_PROXY_LIST.join(","), REFERENCE_NO_PROXY);
        assert_eq!(no_proxy_value(&[]), REFERENCE_NO_PROXY);
    }
}
