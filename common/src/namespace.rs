//! Scoping string keys per application or tenant.

use sha2::{Digest, Sha256};

use crate::key::Key;

/// A namespace for string keys, so that two applications (or tenants) sharing one database cannot
/// take each other's locks by choosing the same name.
///
/// [`Namespace::key`] folds the namespace into the hash: SHA-256 of
/// `len(namespace) as u32 big-endian || namespace || name` (UTF-8), first 8 bytes big-endian as
/// `i64`, in the `bigint` space. The length prefix makes the split unambiguous (`("ab", "c")` and
/// `("a", "bc")` differ). [`Namespace::pair_key`] instead puts a 32-bit namespace id in the first
/// key of the int-pair space, so `pg_locks.classid` shows whose lock it is, at the price of a
/// 32-bit hash of the name.
///
/// **Collision odds** (two different names mapping to one key, so two unrelated critical sections
/// exclude each other; never a loss of mutual exclusion). For one given pair of names: 2^-64 ≈
/// 5.4e-20 (`key`), 2^-32 ≈ 2.3e-10 (`pair_key`, same namespace). Among *n* distinct names in use
/// (birthday bound, 1 - exp(-n²/2^(b+1))):
///
/// | names | 64-bit (`key`, [`Key::name`]) | 32-bit (`pair_key` within one namespace) |
/// |---|---|---|
/// | 1,000 | 2.7e-14 | 1.2e-4 |
/// | 10,000 | 2.7e-12 | 1.2e-2 |
/// | 100,000 | 2.7e-10 | 0.69 |
/// | 1,000,000 | 2.7e-8 | ≈ 1 |
/// | 50 % at | 5.1e9 names | 77,000 names |
///
/// Use `key` unless you need the namespace visible in `pg_locks`; use `pair_key` only for small
/// name sets (and accept that an occasional collision makes two names wait for each other).
///
/// ```
/// use advisory_common::{Key, KeyValue, Namespace};
///
/// let billing = Namespace::new("billing");
/// let shipping = Namespace::new("shipping");
/// assert_ne!(billing.key("orders:42"), shipping.key("orders:42"));
/// assert_ne!(billing.key("orders:42"), Key::name("orders:42"));
/// assert_eq!(billing.key("orders:42"), Key::namespaced("billing", "orders:42"));
/// let KeyValue::Pair(id, _) = billing.pair_key("orders:42").value() else { unreachable!() };
/// assert_eq!(id, billing.id());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// A namespace called `name` (any string, the empty one included).
    pub fn new(name: impl Into<String>) -> Namespace {
        Namespace { name: name.into() }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn digest(&self, name: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((self.name.len() as u32).to_be_bytes());
        h.update(self.name.as_bytes());
        h.update(name.as_bytes());
        h.finalize().into()
    }

    /// The key of `name` in this namespace, `bigint` space (see the type's docs).
    ///
    /// ```
    /// use advisory_common::{Key, Namespace};
    /// // sha256(00 00 00 00 || "") = sha256("") : the empty namespace adds 4 zero bytes, so it
    /// // still differs from Key::name
    /// assert_ne!(Namespace::new("").key(""), Key::name(""));
    /// ```
    pub fn key(&self, name: impl AsRef<str>) -> Key {
        let d = self.digest(name.as_ref());
        Key::BigInt(i64::from_be_bytes([
            d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7],
        ]))
        .with_label(&self.label(name.as_ref()))
    }

    /// The namespace's 32-bit id: SHA-256 of its name, first 4 bytes big-endian.
    ///
    /// ```
    /// use advisory_common::Namespace;
    /// // sha256("") = e3b0c442...
    /// assert_eq!(Namespace::new("").id(), 0xe3b0c442_u32 as i32);
    /// ```
    pub fn id(&self) -> i32 {
        let d = Sha256::digest(self.name.as_bytes());
        i32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// The key of `name` in the int-pair space: (`self.id()`, first 4 bytes big-endian of the
    /// same digest as [`Namespace::key`]).
    pub fn pair_key(&self, name: impl AsRef<str>) -> Key {
        let d = self.digest(name.as_ref());
        Key::Pair(self.id(), i32::from_be_bytes([d[0], d[1], d[2], d[3]]))
            .with_label(&self.label(name.as_ref()))
    }

    /// `namespace/name`, the label of this namespace's keys in messages.
    fn label(&self, name: &str) -> String {
        format!("{}/{name}", self.name)
    }

    /// [`Namespace::key`] as SQL text for `psql` (display only; `None` if either string contains
    /// a NUL character). Literals are quoted by doubling `'`.
    ///
    /// ```
    /// use advisory_common::Namespace;
    /// let sql = Namespace::new("o'brien").sql("x").unwrap();
    /// assert!(sql.contains("'o''brien'"));
    /// ```
    pub fn sql(&self, name: &str) -> Option<String> {
        if self.name.contains('\0') || name.contains('\0') {
            return None;
        }
        let q = |s: &str| format!("convert_to('{}', 'UTF8')", s.replace('\'', "''"));
        Some(format!(
            "SELECT ('x' || left(encode(sha256(int4send({}) || {} || {}), 'hex'), 16))::bit(64)::bigint AS key",
            self.name.len(),
            q(&self.name),
            q(name)
        ))
    }
}

impl Key {
    /// `Namespace::new(namespace).key(name)`: see [`Namespace`].
    ///
    /// ```
    /// use advisory_common::Key;
    /// assert_ne!(Key::namespaced("ab", "c"), Key::namespaced("a", "bc"));
    /// ```
    pub fn namespaced(namespace: &str, name: &str) -> Key {
        Namespace::new(namespace).key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        // python3: sha256(len(ns).to_bytes(4, "big") + ns + name), first 8 / 4 bytes big-endian
        let ns = Namespace::new("billing");
        assert_eq!(ns.key("orders:42"), Key::BigInt(7795669289538953855));
        assert_eq!(ns.id(), 211142636);
        assert_eq!(ns.pair_key("orders:42"), Key::Pair(211142636, 1815070698));
        assert_ne!(Key::namespaced("ab", "c"), Key::namespaced("a", "bc"));
    }
}
