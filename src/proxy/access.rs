//! Who may use the proxy port. The port carries the session's credentials
//! (the gateway injects the organisation's keys into what passes through
//! it), so by default only the session's own processes may: connections
//! whose socket belongs to the uid the relay runs as, or to root (which can
//! read the relay's memory anyway), plus any uid named with `--allow-uid`.
//! `--allow-any-uid` opens the door to every local process.
//!
//! The owner of a connection is the uid of the client socket's row in the
//! kernel's socket table ([`client_process::owner_uid`]: one netlink query,
//! the `/proc/net/tcp` tables as a fallback). Where neither can be read (an
//! image without `/proc`, a sandbox without netlink), start-up finds out
//! with [`Access::self_test`] and decides once: the check is dropped with a
//! warning, or, with `--require-uid-check`, the proxy stays off. A
//! connection whose row cannot be found, after a short bounded retry, is
//! refused, never waved through.
//!
//! Admission hands on who the client is ([`Owner`]): a loopback target is
//! served only to the relay's own uid, whichever uids may use the proxy.

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::proxy::client_process::{self, LookupError};

/// Tries at finding a connection's row, and the pause between them: the
/// row appears before `accept` returns, so a miss is rare and brief.
const LOOKUP_TRIES: u32 = 3;
const LOOKUP_PAUSE: Duration = Duration::from_millis(2);

/// The access rule the listener applies to every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every local process may use the proxy (`--allow-any-uid`, or no way
    /// to tell owners apart here).
    Anyone,
    /// Only sockets owned by these uids (the relay's own, root, and
    /// `--allow-uid`).
    Uids(Vec<u32>),
}

/// What the listener does with one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; who owns it, as far as the rule needed to find out.
    Allowed(Owner),
    /// The socket belongs to a uid the rule does not allow.
    Refused { uid: u32 },
    /// The socket's owner could not be found: refused too.
    Unknown(String),
}

/// Who owns an admitted connection. Kept for the whole connection: the
/// loopback route asks [`Owner::is_relay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The connection's socket belongs to this uid.
    Uid(u32),
    /// Admitted without a look (every uid may use the proxy): looked up
    /// only when it matters, from the addresses accept() gave.
    NotLookedUp { peer: SocketAddr, local: SocketAddr },
    /// Admitted without a look, and its addresses are not known: never
    /// taken for any uid.
    Unknown,
}

impl Owner {
    /// Whether the connection belongs to the uid the relay runs as. An
    /// owner that cannot be found is not (fail closed).
    pub fn is_relay(&self) -> bool {
        let uid = match *self {
            Owner::Uid(uid) => Some(uid),
            Owner::NotLookedUp { peer, local } => look_up(peer, local).ok(),
            Owner::Unknown => None,
        };
        uid == Some(relay_uid())
    }
}

/// The uid the relay runs as.
pub fn relay_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The uid owning the connection from `peer` to `local`, with a short
/// bounded retry; why not, when no row answers.
fn look_up(peer: SocketAddr, local: SocketAddr) -> Result<u32, String> {
    let mut last = String::from("no socket row for the connection");
    for attempt in 0..LOOKUP_TRIES {
        if attempt > 0 {
            thread::sleep(LOOKUP_PAUSE);
        }
        match client_process::owner_uid(peer, local) {
            Ok(Some(uid)) => return Ok(uid),
            Ok(None) => {}
            Err(LookupError::TimedOut) => last = "the socket lookup timed out".into(),
            Err(LookupError::Unreadable(e)) => last = format!("the socket table: {e}"),
        }
    }
    Err(last)
}

impl Access {
    /// The default rule: the relay's own uid, root, and `extra`.
    pub fn session(extra: &[u32]) -> Access {
        let me = relay_uid();
        let mut uids = vec![me, 0];
        uids.extend_from_slice(extra);
        uids.sort_unstable();
        uids.dedup();
        Access::Uids(uids)
    }

    /// Whether this machine lets the relay tell a connection's owner: a
    /// loopback connection of its own is looked up. False where neither
    /// netlink nor `/proc/net/tcp` answers.
    pub fn self_test() -> bool {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            return false;
        };
        let Ok(addr) = listener.local_addr() else {
            return false;
        };
        let Ok(client) = TcpStream::connect(addr) else {
            return false;
        };
        let Ok((_accepted, peer)) = listener.accept() else {
            return false;
        };
        let _ = client;
        matches!(client_process::owner_uid(peer, addr), Ok(Some(_)))
    }

    /// Decides for the accepted connection from `peer` to `local`.
    pub fn decide(&self, peer: SocketAddr, local: SocketAddr) -> Decision {
        let Access::Uids(allowed) = self else {
            return Decision::Allowed(Owner::NotLookedUp { peer, local });
        };
        match look_up(peer, local) {
            Ok(uid) if allowed.contains(&uid) => Decision::Allowed(Owner::Uid(uid)),
            Ok(uid) => Decision::Refused { uid },
            Err(why) => Decision::Unknown(why),
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Anyone => f.write_str("any local process"),
            Access::Uids(uids) => {
                let list: Vec<String> = uids.iter().map(u32::to_string).collect();
                write!(f, "processes of uid {}", list.join(", "))
            }
        }
    }
}

/// Parses `--allow-uid`'s list: comma-separated decimal uids.
///
/// ```
/// assert_eq!(ccr_relay::proxy::access::parse_uids("1000, 0"), Ok(vec![1000, 0]));
/// assert!(ccr_relay::proxy::access::parse_uids("root").is_err());
/// ```
pub fn parse_uids(text: &str) -> Result<Vec<u32>, NotAUid> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().map_err(|_| NotAUid(s.to_string())))
        .collect()
}

/// An entry of a uid list that is not a number ([`parse_uids`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a numeric uid")]
pub struct NotAUid(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection of this process's own, from both ends.
    fn own_connection() -> (TcpStream, TcpStream, SocketAddr, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = TcpStream::connect(local).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        (client, accepted, peer, local)
    }

    #[test]
    fn own_processes_are_allowed_and_others_refused() {
        assert!(Access::self_test(), "this machine can look sockets up");
        let (_c, _a, peer, local) = own_connection();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(
            Access::session(&[]).decide(peer, local),
            Decision::Allowed(Owner::Uid(me))
        );
        assert_eq!(
            Access::Anyone.decide(peer, local),
            Decision::Allowed(Owner::NotLookedUp { peer, local })
        );
        // A rule without this uid refuses it, naming it.
        let other = Access::Uids(vec![me.wrapping_add(12345)]);
        assert_eq!(other.decide(peer, local), Decision::Refused { uid: me });
    }

    #[test]
    fn only_the_relays_own_uid_is_the_relay() {
        let (_c, _a, peer, local) = own_connection();
        let me = relay_uid();
        assert!(Owner::Uid(me).is_relay());
        assert!(!Owner::Uid(me.wrapping_add(1)).is_relay());
        // Looked up when asked: this process's own connection.
        assert!(Owner::NotLookedUp { peer, local }.is_relay());
        // No row, or no addresses: not the relay (fail closed).
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(!Owner::NotLookedUp { peer: gone, local }.is_relay());
        assert!(!Owner::Unknown.is_relay());
    }

    #[test]
    fn a_connection_without_a_row_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(matches!(
            Access::session(&[]).decide(nobody, local),
            Decision::Unknown(_)
        ));
    }

    #[test]
    fn uid_lists() {
        assert_eq!(parse_uids("1000,,1001"), Ok(vec![1000, 1001]));
        assert!(parse_uids("-1").is_err());
        assert_eq!(
            parse_uids("7, root").unwrap_err().to_string(),
            "\"root\" is not a numeric uid"
        );
        let Access::Uids(uids) = Access::session(&[7, 0, 7]) else {
            panic!("a uid rule");
        };
        assert!(uids.contains(&0) && uids.contains(&7));
        assert_eq!(
            uids.len(),
            uids.iter().collect::<std::collections::BTreeSet<_>>().len()
        );
    }
}
