//! Selective mode (agent proxy, the contract's section 9): whether the
//! session asks for it, and its include list, read from the relay's
//! environment at start-up. The routing itself is the proxy's
//! (`crate::proxy::route`).

/// Selective mode's variable and its include list's (the contract's
/// section 9); both are removed from children's environment.
pub const RELAY_MODE_VAR: &str = "CCR_AGENT_PROXY_RELAY_MODE";
pub const INCLUDE_HOSTS_VAR: &str = "CCR_AGENT_PROXY_INCLUDE_HOSTS";

/// The include list when the session asks for selective mode; `None` (with
/// a warning when the mode was asked for) when every CONNECT is tunnelled.
pub fn selective_list(
    env: impl Fn(&str) -> Option<String>,
) -> Option<crate::proxy::route::IncludeList> {
    let mode = env(RELAY_MODE_VAR)?;
    if !mode.trim().eq_ignore_ascii_case("selective") {
        return None;
    }
    let list = crate::proxy::route::IncludeList::parse(&env(INCLUDE_HOSTS_VAR).unwrap_or_default());
    if list.is_empty() {
        eprintln!(
            "ccr-relay: warning: {RELAY_MODE_VAR}=selective without hosts in {INCLUDE_HOSTS_VAR}; every CONNECT goes through the gateway"
        );
        return None;
    }
    Some(list)
}
