//! The holders of one lock, keyed by token.
//!
//! Nearly every hold is the only one on its lock (a mutex, a writer, a lone
//! reader), so a single holder is stored inline and a tree exists only for a
//! batch of readers. An uncontended acquire + release then does no tree work,
//! and an idle lock keeps no emptied tree node (about 500 bytes) behind.
//! Encoded exactly like `BTreeMap<u64, Hold>`, so snapshots and stored
//! records do not change.

use super::Hold;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{btree_map, BTreeMap};
use std::fmt;
use std::{iter, option};

/// Holds by token, in token (grant) order.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Holders {
    /// Exactly one holder: its token and hold.
    One(u64, Hold),
    /// No holder, or two and more; never exactly one, so that equal contents
    /// always have the same form and the derived `==` is content equality.
    Many(BTreeMap<u64, Hold>),
}

impl Default for Holders {
    fn default() -> Self {
        Holders::Many(BTreeMap::new())
    }
}

type Iter<'a> = iter::Chain<
    option::IntoIter<(&'a u64, &'a Hold)>,
    iter::Flatten<option::IntoIter<btree_map::Iter<'a, u64, Hold>>>,
>;

impl Holders {
    pub fn len(&self) -> usize {
        match self {
            Holders::One(..) => 1,
            Holders::Many(m) => m.len(),
        }
    }

    pub fn get(&self, token: &u64) -> Option<&Hold> {
        match self {
            Holders::One(t, h) => (t == token).then_some(h),
            Holders::Many(m) => m.get(token),
        }
    }

    pub fn get_mut(&mut self, token: &u64) -> Option<&mut Hold> {
        match self {
            Holders::One(t, h) => (t == token).then_some(h),
            Holders::Many(m) => m.get_mut(token),
        }
    }

    /// Adds or replaces `token`'s hold; returns the replaced one.
    pub fn insert(&mut self, token: u64, hold: Hold) -> Option<Hold> {
        let (replaced, next) = match std::mem::take(self) {
            Holders::One(t, old) if t == token => (Some(old), Holders::One(token, hold)),
            Holders::One(t, other) => (
                None,
                Holders::Many(BTreeMap::from([(t, other), (token, hold)])),
            ),
            Holders::Many(m) if m.is_empty() => (None, Holders::One(token, hold)),
            Holders::Many(mut m) => (m.insert(token, hold), Holders::Many(m)),
        };
        *self = next;
        replaced
    }

    /// Removes `token`'s hold, if any.
    pub fn remove(&mut self, token: &u64) -> Option<Hold> {
        match self {
            Holders::One(t, _) if t == token => match std::mem::take(self) {
                Holders::One(_, hold) => Some(hold),
                Holders::Many(_) => None,
            },
            Holders::One(..) => None,
            Holders::Many(m) => {
                let removed = m.remove(token)?;
                if m.len() == 1 {
                    if let Some((t, h)) = m.pop_first() {
                        *self = Holders::One(t, h);
                    }
                }
                Some(removed)
            }
        }
    }

    pub fn iter(&self) -> Iter<'_> {
        let (one, many) = match self {
            Holders::One(t, h) => (Some((t, h)), None),
            Holders::Many(m) => (None, Some(m.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    pub fn keys(&self) -> impl Iterator<Item = &u64> {
        self.iter().map(|(t, _)| t)
    }

    pub fn values(&self) -> impl Iterator<Item = &Hold> {
        self.iter().map(|(_, h)| h)
    }
}

impl<'a> IntoIterator for &'a Holders {
    type Item = (&'a u64, &'a Hold);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl From<BTreeMap<u64, Hold>> for Holders {
    fn from(mut m: BTreeMap<u64, Hold>) -> Self {
        match (m.len(), m.pop_first()) {
            (1, Some((t, h))) => Holders::One(t, h),
            (_, Some((t, h))) => {
                m.insert(t, h);
                Holders::Many(m)
            }
            (_, None) => Holders::Many(m),
        }
    }
}

impl fmt::Debug for Holders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Holders {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (token, hold) in self {
            map.serialize_entry(token, hold)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Holders {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<u64, Hold>::deserialize(d).map(Holders::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Mode, SessionId};

    fn hold(session: u64) -> Hold {
        Hold {
            session: SessionId(session),
            mode: Mode::Read,
            granted_at: session,
            expires_at: Some(session + 10),
        }
    }

    /// Both forms must behave, compare and encode like the `BTreeMap` they replace.
    #[test]
    fn behaves_and_encodes_like_a_btree_map() {
        let mut ours = Holders::default();
        let mut map = BTreeMap::new();
        let steps: &[(bool, u64)] = &[
            (true, 5),
            (true, 5),
            (true, 9),
            (true, 7),
            (false, 9),
            (false, 3),
            (false, 5),
            (false, 7),
            (true, 2),
            (false, 2),
        ];
        for &(insert, token) in steps {
            if insert {
                assert_eq!(
                    ours.insert(token, hold(token)),
                    map.insert(token, hold(token))
                );
            } else {
                assert_eq!(ours.remove(&token), map.remove(&token));
            }
            assert_eq!(ours.len(), map.len());
            assert!(ours.iter().eq(map.iter()));
            assert_eq!(ours, Holders::from(map.clone()), "canonical form");
            assert_eq!(format!("{ours:?}"), format!("{map:?}"));
            let bytes = postcard::to_allocvec(&ours).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&map).unwrap());
            let back: Holders = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, ours);
            if let Some(&first) = map.keys().next() {
                assert_eq!(ours.get(&first), map.get(&first));
                assert!(ours.get_mut(&first).is_some());
            }
            assert_eq!(ours.get(&100), None);
        }
        assert_eq!(ours.len(), 0);
        assert_eq!(
            ours,
            Holders::Many(BTreeMap::new()),
            "an empty tree keeps no node"
        );
    }
}
