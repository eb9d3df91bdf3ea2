//! A session's index of its locks: held lock → token, or awaited lock →
//! queue sequence.
//!
//! Most sessions hold or wait for one lock at a time, so one entry is kept
//! inline in the session; a hash map (on the key's precomputed hash) appears
//! from the second entry on. Handing a lock to the next waiter then touches
//! that waiter's session record and no separate allocation, which keeps the
//! cost of a handoff flat as queues and session counts grow. The index has no
//! order: anything that reaches an output goes through `session::sorted`.

use crate::key::{FixedState, LockKey};
use std::collections::{hash_map, HashMap};
use std::{iter, option};

#[derive(Debug, Clone)]
pub(crate) enum KeyIndex {
    /// Exactly one entry.
    One(LockKey, u64),
    /// Any number of entries (kept once allocated, until it empties).
    Many(HashMap<LockKey, u64, FixedState>),
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex::Many(HashMap::default())
    }
}

type Iter<'a> = iter::Chain<
    option::IntoIter<(&'a LockKey, &'a u64)>,
    iter::Flatten<option::IntoIter<hash_map::Iter<'a, LockKey, u64>>>,
>;

impl KeyIndex {
    pub fn len(&self) -> usize {
        match self {
            KeyIndex::One(..) => 1,
            KeyIndex::Many(m) => m.len(),
        }
    }

    pub fn get(&self, key: &LockKey) -> Option<&u64> {
        match self {
            KeyIndex::One(k, v) => (k == key).then_some(v),
            KeyIndex::Many(m) => m.get(key),
        }
    }

    pub fn contains_key(&self, key: &LockKey) -> bool {
        self.get(key).is_some()
    }

    /// Adds or replaces `key`'s entry; returns the replaced value.
    pub fn insert(&mut self, key: LockKey, value: u64) -> Option<u64> {
        match self {
            KeyIndex::One(k, v) if *k == key => Some(std::mem::replace(v, value)),
            KeyIndex::Many(m) if !m.is_empty() => m.insert(key, value),
            KeyIndex::Many(_) => {
                *self = KeyIndex::One(key, value);
                None
            }
            KeyIndex::One(..) => {
                let KeyIndex::One(k, v) = std::mem::take(self) else {
                    return None;
                };
                let mut m = HashMap::with_capacity_and_hasher(2, FixedState::default());
                m.insert(k, v);
                m.insert(key, value);
                *self = KeyIndex::Many(m);
                None
            }
        }
    }

    /// Removes `key`'s entry; an emptied map is freed.
    pub fn remove(&mut self, key: &LockKey) -> Option<u64> {
        match self {
            KeyIndex::One(k, v) if k == key => {
                let value = *v;
                *self = KeyIndex::default();
                Some(value)
            }
            KeyIndex::One(..) => None,
            KeyIndex::Many(m) => {
                let value = m.remove(key)?;
                if m.is_empty() {
                    *self = KeyIndex::default();
                }
                Some(value)
            }
        }
    }

    pub fn iter(&self) -> Iter<'_> {
        let (one, many) = match self {
            KeyIndex::One(k, v) => (Some((k, v)), None),
            KeyIndex::Many(m) => (None, Some(m.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// Content equality: the same entries, whichever form holds them.
impl PartialEq for KeyIndex {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Eq for KeyIndex {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_hash_map_in_both_forms() {
        let key = |i: u64| LockKey::new("ns", &format!("k{i}")).unwrap();
        let mut ours = KeyIndex::default();
        let mut map: HashMap<LockKey, u64> = HashMap::new();
        let steps: &[(bool, u64)] = &[
            (true, 1),
            (true, 1),
            (true, 2),
            (true, 3),
            (false, 2),
            (false, 9),
            (false, 1),
            (true, 4),
            (false, 3),
            (false, 4),
            (true, 5),
            (false, 5),
        ];
        for (n, &(insert, i)) in steps.iter().enumerate() {
            if insert {
                let value = n as u64;
                assert_eq!(ours.insert(key(i), value), map.insert(key(i), value));
            } else {
                assert_eq!(ours.remove(&key(i)), map.remove(&key(i)));
            }
            assert_eq!(ours.len(), map.len());
            for j in 0..10 {
                assert_eq!(ours.get(&key(j)), map.get(&key(j)));
                assert_eq!(ours.contains_key(&key(j)), map.contains_key(&key(j)));
            }
            let mut listed: Vec<_> = ours.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let mut expected: Vec<_> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
            listed.sort();
            expected.sort();
            assert_eq!(listed, expected);
            let rebuilt = expected
                .iter()
                .fold(KeyIndex::default(), |mut index, (k, v)| {
                    index.insert(k.clone(), *v);
                    index
                });
            assert_eq!(ours, rebuilt, "equality ignores the form");
        }
        assert!(
            matches!(ours, KeyIndex::Many(ref m) if m.capacity() == 0),
            "emptied index is freed"
        );
    }
}
