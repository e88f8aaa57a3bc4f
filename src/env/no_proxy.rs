//! The children's `NO_PROXY` list: the mode's entries ([`Mode::no_proxy_list`],
//! or none with `--no-proxy-default=none`), then the `--no-proxy` ones,
//! then the parent's own, each once. A `--no-proxy` entry written `-HOST`
//! removes `HOST` instead (in every form the list carries it: `HOST`,
//! `.HOST`, `*.HOST`), from the default list and the parent's entries.

use super::{Mode, NO_PROXY_VARS};

/// Where the `NO_PROXY` list starts (`--no-proxy-default`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoProxyDefault {
    /// The mode's list ([`Mode::no_proxy_list`]): `reference`.
    #[default]
    Reference,
    /// An empty list: `none`.
    Empty,
}

impl NoProxyDefault {
    /// `reference` or `none`, as `--no-proxy-default` takes them.
    pub fn parse(text: &str) -> Option<NoProxyDefault> {
        match text {
            "reference" => Some(NoProxyDefault::Reference),
            "none" => Some(NoProxyDefault::Empty),
            _ => None,
        }
    }
}

/// The domain an entry names, without the leading `.` or `*.` that some
/// clients need: `-anthropic.com` removes all three forms.
fn domain_of(entry: &str) -> &str {
    entry
        .strip_prefix("*.")
        .or_else(|| entry.strip_prefix('.'))
        .unwrap_or(entry)
}

/// The `NO_PROXY` entries: `mode`'s list (unless `start` is
/// [`NoProxyDefault::Empty`]), then the additions of `edits`, then the
/// entries of the parent's `NO_PROXY` and `no_proxy`. An edit `-HOST`
/// removes `HOST` from the default list and the parent's entries. Blank
/// entries are skipped, and any already listed (compared without case).
pub fn no_proxy_entries(
    mode: Mode,
    start: NoProxyDefault,
    edits: &[String],
    parent: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let removed: Vec<&str> = edits
        .iter()
        .filter_map(|e| e.trim().strip_prefix('-'))
        .map(|e| domain_of(e.trim()))
        .filter(|e| !e.is_empty())
        .collect();
    let is_removed = |e: &str| removed.iter().any(|r| r.eq_ignore_ascii_case(domain_of(e)));
    let mut entries: Vec<String> = Vec::new();
    let mut add = |e: &str| {
        let e = e.trim();
        if !e.is_empty() && !entries.iter().any(|x| x.eq_ignore_ascii_case(e)) {
            entries.push(e.to_string());
        }
    };
    if start == NoProxyDefault::Reference {
        mode.no_proxy_list()
            .iter()
            .filter(|e| !is_removed(e))
            .for_each(|e| add(e));
    }
    edits
        .iter()
        .filter(|e| !e.trim().starts_with('-'))
        .for_each(|e| add(e));
    for name in NO_PROXY_VARS {
        if let Some(value) = parent(name) {
            value
                .split(',')
                .filter(|e| !is_removed(e.trim()))
                .for_each(&mut add);
        }
    }
    entries
}

/// The `NO_PROXY` value without parent entries: `mode`'s list, then the
/// extra entries (blank ones and ones already listed are skipped), joined
/// with `,`.
pub fn no_proxy_value(mode: Mode, extra: &[String]) -> String {
    no_proxy_entries(mode, NoProxyDefault::Reference, extra, |_| None).join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::test_util::*;
    use crate::env::{AGENT_NO_PROXY_LIST, NO_PROXY_LIST};
    use crate::gateway::Generation;

    fn agent(standalone: bool, selective: bool) -> Mode {
        Mode {
            generation: Generation::AgentProxy,
            standalone,
            selective,
        }
    }

    #[test]
    fn first_generation_list_has_no_github() {
        assert_eq!(NO_PROXY_LIST.len(), 17);
        assert_eq!(NO_PROXY_LIST.join(","), REFERENCE_NO_PROXY);
        assert_eq!(no_proxy_value(Mode::default(), &[]), REFERENCE_NO_PROXY);
        assert!(!REFERENCE_NO_PROXY.contains("github"));
    }

    #[test]
    fn agent_proxy_lists_per_mode_exactly() {
        let normal = "localhost,127.0.0.1,::1,127.0.0.0/8,0.0.0.0/8,::,169.254.0.0/16,\
api.anthropic.com,api-staging.anthropic.com,api-pr-preview.anthropic.com,mcp-proxy.anthropic.com,\
mcp-proxy-staging.anthropic.com,registry.npmjs.org,jsr.io,npm.jsr.io,pypi.org,\
files.pythonhosted.org,index.crates.io,proxy.golang.org,host.docker.internal,10.0.0.0/8,\
172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,.svc.cluster.local,*.svc.cluster.local";
        assert_eq!(AGENT_NO_PROXY_LIST.join(","), normal);
        assert_eq!(no_proxy_value(agent(false, false), &[]), normal);
        let standalone = "localhost,127.0.0.1,::1,127.0.0.0/8,0.0.0.0/8,::,169.254.0.0/16,\
api.anthropic.com,api-staging.anthropic.com,api-pr-preview.anthropic.com,mcp-proxy.anthropic.com,\
mcp-proxy-staging.anthropic.com,registry.npmjs.org,jsr.io,npm.jsr.io,pypi.org,\
files.pythonhosted.org,index.crates.io,proxy.golang.org,host.docker.internal";
        assert_eq!(no_proxy_value(agent(true, false), &[]), standalone);
        let selective = "127.0.0.1,localhost,::1,127.0.0.0/8,0.0.0.0/8,169.254.0.0/16,\
host.docker.internal,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,\
.svc.cluster.local,*.svc.cluster.local";
        assert_eq!(no_proxy_value(agent(false, true), &[]), selective);
        // Selective wins over standalone: its list is about routing.
        assert_eq!(no_proxy_value(agent(true, true), &[]), selective);
        // Extras still follow, once each.
        assert_eq!(
            no_proxy_value(agent(false, true), &["x.test".into(), "LOCALHOST".into()]),
            format!("{selective},x.test")
        );
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_minus_entry_removes_it_from_the_default_list() {
        let got = no_proxy_value(Mode::default(), &strings(&["-pypi.org"]));
        assert_eq!(got, REFERENCE_NO_PROXY.replace("pypi.org,", ""));
        assert!(got.contains("files.pythonhosted.org"), "{got}");
        // Mixed: one added, one removed, compared without case.
        let got = no_proxy_entries(
            Mode::default(),
            NoProxyDefault::Reference,
            &strings(&["a.test", "-PyPI.org", " -jsr.io "]),
            no_parent,
        );
        assert!(
            !got.iter().any(|e| e == "pypi.org" || e == "jsr.io"),
            "{got:?}"
        );
        assert!(got.contains(&"npm.jsr.io".to_string()), "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some("a.test"));
        assert_eq!(got.len(), NO_PROXY_LIST.len() - 2 + 1);
    }

    #[test]
    fn removing_a_domain_removes_its_three_forms_and_the_parents_entry() {
        let parent = parent_of(&[
            ("NO_PROXY", "corp.test,.anthropic.com"),
            ("no_proxy", "x.test"),
        ]);
        let got = no_proxy_entries(
            Mode::default(),
            NoProxyDefault::Reference,
            &strings(&["-anthropic.com", "-corp.test"]),
            parent,
        );
        assert!(!got.iter().any(|e| e.contains("anthropic")), "{got:?}");
        assert!(!got.contains(&"corp.test".to_string()), "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some("x.test"));
    }

    #[test]
    fn none_starts_from_an_empty_list() {
        let parent = parent_of(&[("no_proxy", "p.test")]);
        let got = no_proxy_entries(
            agent(false, false),
            NoProxyDefault::Empty,
            &strings(&["a.test", "-pypi.org", "localhost"]),
            parent,
        );
        assert_eq!(got, strings(&["a.test", "localhost", "p.test"]));
        assert_eq!(NoProxyDefault::parse("none"), Some(NoProxyDefault::Empty));
        assert_eq!(
            NoProxyDefault::parse("reference"),
            Some(NoProxyDefault::Reference)
        );
        assert_eq!(NoProxyDefault::parse("all"), None);
    }
}
