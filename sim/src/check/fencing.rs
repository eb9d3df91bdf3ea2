//! Checker 1: the fenced resource.
//!
//! The resource keeps, per key, the highest token it has accepted and
//! rejects lower ones. From its access log this checker verifies that (a) no
//! accepted write carried a token lower than one accepted before it (a stale
//! holder got through), and (b) no token was used by two clients (two holders
//! were given the same token, so fencing cannot tell them apart).

use super::{Checker, Violation};
use crate::history::{Access, ClientId};
use fencelock_core::LockKey;
use std::collections::BTreeMap;

/// Checks the resource's access log (in the order the resource saw it).
pub fn check(accesses: &[Access]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut highest: BTreeMap<&LockKey, (u64, ClientId)> = BTreeMap::new();
    let mut writer: BTreeMap<(&LockKey, u64), (ClientId, u64)> = BTreeMap::new();
    for a in accesses.iter().filter(|a| a.accepted) {
        let t = a.token.0;
        if let Some(&(max, by)) = highest.get(&a.key) {
            if t < max {
                out.push(Violation::new(
                    Checker::Fencing,
                    format!(
                        "at {} ms the resource accepted a stale token {} from client {} on {} \
                         after accepting {max} from client {by}",
                        a.at, a.token, a.client, a.key
                    ),
                ));
            }
        }
        let e = highest.entry(&a.key).or_insert((t, a.client));
        if t >= e.0 {
            *e = (t, a.client);
        }
        match writer.get(&(&a.key, t)) {
            Some(&(other, since)) if other != a.client => out.push(Violation::new(
                Checker::Fencing,
                format!(
                    "clients {other} (from {since} ms) and {} (at {} ms) both wrote to {} \
                     under token {}: two holders shared a token",
                    a.client, a.at, a.key, a.token
                ),
            )),
            Some(_) => {}
            None => {
                writer.insert((&a.key, t), (a.client, a.at));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fencelock_core::FencingToken;

    fn access(at: u64, client: ClientId, token: u64, accepted: bool) -> Access {
        Access {
            at,
            client,
            key: LockKey::new("sim", "k").unwrap(),
            token: FencingToken(token),
            accepted,
        }
    }

    #[test]
    fn increasing_tokens_from_successive_holders_pass() {
        let log = [
            access(1, 1, 1, true),
            access(2, 1, 1, true),
            access(3, 2, 2, true),
            // The old holder comes back late: rejected, as it must be.
            access(4, 1, 1, false),
            access(5, 3, 5, true),
        ];
        assert!(check(&log).is_empty());
    }

    #[test]
    fn an_accepted_stale_token_is_reported() {
        let log = [access(1, 1, 3, true), access(2, 2, 2, true)];
        let v = check(&log);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].checker, Checker::Fencing);
        assert!(v[0].message.contains("stale token #2"), "{}", v[0].message);
    }

    #[test]
    fn two_clients_under_one_token_are_reported() {
        // What "steal does not bump the fence" produces.
        let log = [
            access(1, 1, 4, true),
            access(2, 2, 4, true),
            access(3, 1, 4, true),
        ];
        let v = check(&log);
        assert!(!v.is_empty());
        assert!(v[0].message.contains("both wrote"), "{}", v[0].message);
    }

    #[test]
    fn keys_are_independent() {
        let mut b = access(2, 2, 1, true);
        b.key = LockKey::new("sim", "other").unwrap();
        let log = [access(1, 1, 9, true), b];
        assert!(check(&log).is_empty());
    }
}
