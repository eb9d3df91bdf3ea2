//! Lock keys: a validated `(namespace, name)` pair.
//!
//! The key is stored as one shared string `namespace \0 name`: cloning it (into
//! a session's index, a deadline entry, an event) is one reference-count bump,
//! and because NUL is forbidden in both parts, byte order of the joined string
//! is exactly the order of the `(namespace, name)` pair.

use crate::error::LockError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 128;
/// Longest lock name, in bytes.
pub const MAX_NAME_LEN: usize = 512;

/// A lock's identity. Valid by construction: [`LockKey::new`] (and
/// deserialization) reject empty, too long, or control-character names.
/// Suggested (not enforced) naming convention: `resource_type:resource_id`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockKey {
    joined: Arc<str>,
    namespace_len: u32,
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
        Ok(LockKey {
            joined: joined.into(),
            // Bounded by MAX_NAMESPACE_LEN above, so it fits.
            namespace_len: namespace.len() as u32,
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
