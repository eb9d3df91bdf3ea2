//! Lock keys: a validated `(namespace, name)` pair.
//!
//! The key is stored as one shared string `namespace \0 name`: cloning it (into
//! a session's index, a deadline entry, an event) is one reference-count bump,
//! and because NUL is forbidden in both parts, byte order of the joined string
//! is exactly the order of the `(namespace, name)` pair.
//!
//! The key also carries its hash, computed once when it is built: the table
//! looks a key up several times per command (lock map, session index, deadline
//! index), and hashing the string each time was the largest cost of an
//! uncontended acquire + release.

use crate::error::LockError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

/// Hasher for maps keyed by [`LockKey`] (the lock map, a session's index): a
/// key hashes itself once when it is built (deterministic across runs and
/// replicas), so these maps use that value as is.
pub(crate) type FixedState = BuildHasherDefault<KeyHasher>;

/// Passes a key's precomputed hash through (see [`FixedState`]).
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    /// Only `LockKey`s are hashed here, and they write one `u64`; any other
    /// input still gets a deterministic (if slower) hash.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 128;
/// Longest lock name, in bytes.
pub const MAX_NAME_LEN: usize = 512;

/// A lock's identity. Valid by construction: [`LockKey::new`] (and
/// deserialization) reject empty, too long, or control-character names.
/// Suggested (not enforced) naming convention: `resource_type:resource_id`.
#[derive(Clone)]
pub struct LockKey {
    joined: Arc<str>,
    namespace_len: u32,
    /// SipHash (fixed keys) of `joined`: the same on every replica and run.
    hash: u64,
}

impl LockKey {
    /// Validates and builds a key. Errors name the offending field.
    pub fn new(namespace: &str, name: &str) -> Result<Self, LockError> {
        validate_part("namespace", namespace, MAX_NAMESPACE_LEN)?;
        validate_part("name", name, MAX_NAME_LEN)?;
        let mut joined = String::with_capacity(namespace.len() + 1 + name.len());
        joined.push_str(namespace);
        joined.push('\0');
        joined.push_str(name);
        let mut hasher = DefaultHasher::new();
        hasher.write(joined.as_bytes());
        Ok(LockKey {
            joined: joined.into(),
            // Bounded by MAX_NAMESPACE_LEN above, so it fits.
            namespace_len: namespace.len() as u32,
            hash: hasher.finish(),
        })
    }

    /// The namespace part.
    pub fn namespace(&self) -> &str {
        &self.joined[..self.namespace_len as usize]
    }

    /// The name part.
    pub fn name(&self) -> &str {
        &self.joined[self.namespace_len as usize + 1..]
    }
}

fn validate_part(field: &'static str, value: &str, max: usize) -> Result<(), LockError> {
    if value.is_empty() {
        return Err(LockError::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(LockError::invalid(
            field,
            format!("is {} bytes long; the limit is {max} bytes", value.len()),
        ));
    }
    if let Some((at, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(LockError::invalid(
            field,
            format!(
                "contains the control character U+{:04X} at byte {at}; NUL and control characters are not allowed",
                c as u32
            ),
        ));
    }
    Ok(())
}

// Equality and order are those of the joined string (so of the
// `(namespace, name)` pair); a shared string or a differing hash answers
// without comparing bytes.
impl PartialEq for LockKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.joined, &other.joined)
            || (self.hash == other.hash && self.joined == other.joined)
    }
}

impl Eq for LockKey {}

impl Ord for LockKey {
    fn cmp(&self, other: &Self) -> Ordering {
        if Arc::ptr_eq(&self.joined, &other.joined) {
            return Ordering::Equal;
        }
        self.joined.cmp(&other.joined)
    }
}

impl PartialOrd for LockKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for LockKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace(), self.name())
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockKey({:?}, {:?})", self.namespace(), self.name())
    }
}

impl Serialize for LockKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.namespace(), self.name()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for LockKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (namespace, name) = <(String, String)>::deserialize(d)?;
        LockKey::new(&namespace, &name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_namespace_then_name() {
        let a = LockKey::new("a", "z").unwrap();
        let b = LockKey::new("ab", "a").unwrap();
        assert!(a < b);
        assert_eq!(a.namespace(), "a");
        assert_eq!(b.name(), "a");
    }

    #[test]
    fn invalid_names_name_the_field() {
        let e = LockKey::new("", "x").unwrap_err();
        assert!(e.to_string().contains("namespace"), "{e}");
        let e = LockKey::new("ns", &"x".repeat(513)).unwrap_err();
        assert!(
            e.to_string().contains("name") && e.to_string().contains("512"),
            "{e}"
        );
        let e = LockKey::new("ns", "a\0b").unwrap_err();
        assert!(e.to_string().contains("U+0000"), "{e}");
        assert!(LockKey::new(&"n".repeat(128), &"x".repeat(512)).is_ok());
        assert!(LockKey::new(&"n".repeat(129), "x").is_err());
    }
}
