//! The children's `NO_PROXY` list: the mode's entries ([`Mode::no_proxy_list`]),
//! then the `--no-proxy` ones, then the parent's own, each once.

use super::{Mode, NO_PROXY_VARS};

/// The `NO_PROXY` entries: `mode`'s list, then `extra`, then the entries of
/// the parent's `NO_PROXY` and `no_proxy`. Blank entries are skipped, and
/// any already listed (compared without case).
pub fn no_proxy_entries(
    mode: Mode,
    extra: &[String],
    parent: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    let mut add = |e: &str| {
        let e = e.trim();
        if !e.is_empty() && !entries.iter().any(|x| x.eq_ignore_ascii_case(e)) {
            entries.push(e.to_string());
        }
    };
    mode.no_proxy_list().iter().for_each(|e| add(e));
    extra.iter().for_each(|e| add(e));
    for name in NO_PROXY_VARS {
        if let Some(value) = parent(name) {
            value.split(',').for_each(&mut add);
        }
    }
    entries
}

/// The `NO_PROXY` value without parent entries: `mode`'s list, then the
/// extra entries (blank ones and ones already listed are skipped), joined
/// with `,`.
pub fn no_proxy_value(mode: Mode, extra: &[String]) -> String {
    no_proxy_entries(mode, extra, |_| None).join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child_env::test_util::*;
    use crate::child_env::{AGENT_NO_PROXY_LIST, NO_PROXY_LIST};
    use crate::gates::Generation;

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
}
