//! Advisory lock keys and the string → key derivations.

use std::fmt;

use hkdf::Hkdf;
use sha1::Sha1;
use sha2::{Digest, Sha256};

pub use crate::label::Labeled;

/// A PostgreSQL advisory lock key.
///
/// PostgreSQL has two separate advisory key spaces: one `bigint`, and one pair of `integer`s.
/// They never collide: `pg_locks` tells them apart by `objsubid` (1 for a `bigint`, 2 for a pair),
/// so `Key::BigInt(1)` and `Key::Pair(0, 1)` are different locks.
///
/// Every adapter method takes `impl Into<Key>`, so all of these work:
///
/// ```
/// use advisory_common::Key;
///
/// assert_eq!(Key::from(42_i64), Key::BigInt(42));
/// assert_eq!(Key::from((1, 2)), Key::Pair(1, 2));
/// assert_eq!(Key::from("orders:42"), Key::name("orders:42"));
/// assert_eq!(Key::from(String::from("orders:42")), Key::name("orders:42"));
/// ```
///
/// A key derived from a name remembers the name for messages ([`Key::Labeled`]); it is still the
/// same lock, and equal to the plain key:
///
/// ```
/// use advisory_common::Key;
/// let key = Key::name("orders:42");
/// assert_eq!(key, Key::BigInt(-8476019149258318077));
/// assert_eq!(key.label(), Some("orders:42"));
/// assert_eq!(key.to_string(), r#""orders:42" (bigint:-8476019149258318077)"#);
/// ```
///
/// Equality, hashing and ordering compare the lock only (space and numbers), never the label.
///
/// To read a key's numbers, match on [`Key::value`], never on the key itself: a refutable
/// pattern such as `let Key::BigInt(k) = Key::name(s) else { .. }` does not match a labeled key.
#[derive(Clone, Copy, Debug)]
pub enum Key {
    /// A key in the `bigint` space: `pg_advisory_lock(bigint)`.
    BigInt(i64),
    /// A key in the `(integer, integer)` space: `pg_advisory_lock(integer, integer)`.
    Pair(i32, i32),
    /// A [`Key::BigInt`] or [`Key::Pair`] carrying the name it was derived from, shown in errors
    /// and `Display`. Made by every name derivation and by [`Key::with_label`]; use
    /// [`Key::unlabeled`] to get the plain key.
    Labeled(Labeled),
}

/// Which of PostgreSQL's two advisory key spaces a [`Key`] lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeySpace {
    /// `pg_advisory_*(bigint)`; `objsubid = 1` in `pg_locks`.
    BigInt,
    /// `pg_advisory_*(integer, integer)`; `objsubid = 2` in `pg_locks`.
    Pair,
}

impl Key {
    /// The project's default derivation of a key from a name: **SHA-256 of the UTF-8 bytes, the
    /// first 8 bytes read big-endian as a signed `i64`**, in the `bigint` key space.
    ///
    /// It is stable forever (changing it would silently break mutual exclusion between two
    /// versions of an application), and it can be computed in plain SQL without extensions, so
    /// that SQL code and other languages can take the same lock:
    ///
    /// ```sql
    /// SELECT ('x' || left(encode(sha256(convert_to('orders:42', 'UTF8')), 'hex'), 16))::bit(64)::bigint;
    /// ```
    ///
    /// The migration shipped with this project defines that expression as `advisory_key(text)`.
    ///
    /// ```
    /// use advisory_common::Key;
    /// // sha256("") = e3b0c44298fc1c14...
    /// assert_eq!(Key::name(""), Key::BigInt(0xe3b0c44298fc1c14_u64 as i64));
    /// ```
    pub fn name(name: impl AsRef<str>) -> Key {
        let name = name.as_ref();
        let digest = Sha256::digest(name.as_bytes());
        Key::BigInt(i64::from_be_bytes(first8(&digest))).with_label(name)
    }

    /// The key sqlx's own `PgAdvisoryLock::new(name)` uses, so a lock taken here excludes a lock
    /// taken with sqlx's API for the same string.
    ///
    /// Algorithm (from `sqlx-postgres/src/advisory_lock.rs`): HKDF-SHA256 with no salt, the UTF-8
    /// bytes as input key material, info `b"SQLx (Rust) Postgres advisory lock"`, 8 bytes of output
    /// read **little-endian** as `i64`.
    ///
    /// ```
    /// use advisory_common::Key;
    /// assert_eq!(Key::sqlx("my-lock"), Key::BigInt(-7577905956304869515));
    /// ```
    pub fn sqlx(name: &str) -> Key {
        let hkdf = Hkdf::<Sha256>::new(None, name.as_bytes());
        let mut okm = [0u8; 8];
        hkdf.expand(b"SQLx (Rust) Postgres advisory lock", &mut okm)
            .expect("8 bytes is a valid HKDF-SHA256 output length");
        Key::BigInt(i64::from_le_bytes(okm)).with_label(name)
    }

    /// The key the Python library [postgresql-lock](https://pypi.org/project/postgresql-lock/)
    /// (>= 0.1.6) uses for a string key: SHA-1 of the UTF-8 bytes, first 8 bytes read big-endian as
    /// a signed `i64` (its `Lock.__init__` does `int.from_bytes(sha1(key).digest()[:8], "big",
    /// signed=True)`).
    ///
    /// ```
    /// use advisory_common::Key;
    /// // sha1("") = da39a3ee5e6b4b0d...
    /// assert_eq!(Key::postgresql_lock(""), Key::BigInt(0xda39a3ee5e6b4b0d_u64 as i64));
    /// ```
    pub fn postgresql_lock(name: &str) -> Key {
        let digest = Sha1::digest(name.as_bytes());
        Key::BigInt(i64::from_be_bytes(first8(&digest))).with_label(name)
    }

    /// The key space this key lives in.
    pub fn space(&self) -> KeySpace {
        match self.unlabeled() {
            Key::Pair(..) => KeySpace::Pair,
            _ => KeySpace::BigInt,
        }
    }

    /// How `pg_locks` shows this key: `(classid, objid, objsubid)`.
    ///
    /// * `BigInt(k)`: `classid` = high 32 bits, `objid` = low 32 bits (both as unsigned `oid`),
    ///   `objsubid` = 1.
    /// * `Pair(k1, k2)`: `classid` = `k1`, `objid` = `k2` (reinterpreted as unsigned), `objsubid` = 2.
    ///
    /// ```
    /// use advisory_common::Key;
    /// assert_eq!(Key::BigInt(-1).classid_objid_objsubid(), (u32::MAX, u32::MAX, 1));
    /// assert_eq!(Key::Pair(-1, 7).classid_objid_objsubid(), (u32::MAX, 7, 2));
    /// ```
    pub fn classid_objid_objsubid(&self) -> (u32, u32, i16) {
        match self.identity() {
            (2, k1, k2) => (k1 as u32, k2 as u32, 2),
            (_, k, _) => ((k as u64 >> 32) as u32, k as u64 as u32, 1),
        }
    }

    /// The inverse of [`Key::classid_objid_objsubid`]; `None` for an `objsubid` that is not an
    /// advisory key space.
    ///
    /// ```
    /// use advisory_common::Key;
    /// for key in [Key::BigInt(i64::MIN), Key::BigInt(-2), Key::Pair(i32::MIN, -1)] {
    ///     let (c, o, s) = key.classid_objid_objsubid();
    ///     assert_eq!(Key::from_classid_objid_objsubid(c, o, s), Some(key));
    /// }
    /// ```
    pub fn from_classid_objid_objsubid(classid: u32, objid: u32, objsubid: i16) -> Option<Key> {
        match objsubid {
            1 => Some(Key::BigInt(
                (((classid as u64) << 32) | objid as u64) as i64,
            )),
            2 => Some(Key::Pair(classid as i32, objid as i32)),
            _ => None,
        }
    }
}

fn first8(digest: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

impl From<i64> for Key {
    fn from(k: i64) -> Key {
        Key::BigInt(k)
    }
}

/// The integer types a primary key has, widened into the `bigint` key space: `id: i32` locks the
/// same key as `id as i64`.
///
/// ```
/// use advisory_common::Key;
/// assert_eq!(Key::from(5_i32), Key::BigInt(5));
/// assert_eq!(Key::from(u32::MAX), Key::BigInt(4_294_967_295));
/// assert_eq!(Key::from(-3_i16), Key::BigInt(-3));
/// ```
macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Key {
            fn from(k: $t) -> Key {
                Key::BigInt(i64::from(k))
            }
        }
    )*};
}
from_int!(i8, i16, i32, u8, u16, u32);

impl From<(i32, i32)> for Key {
    fn from((k1, k2): (i32, i32)) -> Key {
        Key::Pair(k1, k2)
    }
}

/// Uses [`Key::name`].
impl From<&str> for Key {
    fn from(name: &str) -> Key {
        Key::name(name)
    }
}

/// Uses [`Key::name`].
impl From<&String> for Key {
    fn from(name: &String) -> Key {
        Key::name(name)
    }
}

/// Uses [`Key::name`].
impl From<String> for Key {
    fn from(name: String) -> Key {
        Key::name(&name)
    }
}

/// `bigint:42` or `pair:(1,2)`; a labeled key shows its name first: `"orders:42" (bigint:...)`
/// (`…` marks a name cut at [`LABEL_MAX`](crate::LABEL_MAX) bytes).
///
/// ```
/// use advisory_common::Key;
/// assert_eq!(Key::BigInt(-42).to_string(), "bigint:-42");
/// assert_eq!(Key::Pair(1, 2).to_string(), "pair:(1,2)");
/// ```
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::BigInt(k) => write!(f, "bigint:{k}"),
            Key::Pair(k1, k2) => write!(f, "pair:({k1},{k2})"),
            Key::Labeled(l) => {
                let more = if l.is_truncated() { "…" } else { "" };
                write!(f, "\"{}{more}\" ({})", l.label().escape_debug(), l.key())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_vectors() {
        // sha256("orders:42"), first 8 bytes, computed independently with `sha256sum`.
        assert_eq!(Key::name("abc"), Key::BigInt(0xba7816bf8f01cfea_u64 as i64));
        assert_eq!(Key::name(""), Key::BigInt(0xe3b0c44298fc1c14_u64 as i64));
    }

    #[test]
    fn postgresql_lock_vectors() {
        assert_eq!(
            Key::postgresql_lock("abc"),
            Key::BigInt(0xa9993e364706816a_u64 as i64)
        );
    }

    #[test]
    fn pg_locks_round_trip_extremes() {
        for key in [
            Key::BigInt(0),
            Key::BigInt(1),
            Key::BigInt(-1),
            Key::BigInt(i64::MIN),
            Key::BigInt(i64::MAX),
            Key::Pair(0, 0),
            Key::Pair(i32::MIN, i32::MAX),
            Key::Pair(-1, -1),
        ] {
            let (c, o, s) = key.classid_objid_objsubid();
            assert_eq!(Key::from_classid_objid_objsubid(c, o, s), Some(key));
        }
        assert_eq!(
            Key::BigInt(i64::MIN).classid_objid_objsubid(),
            (0x8000_0000, 0, 1)
        );
        assert_eq!(Key::from_classid_objid_objsubid(1, 2, 0), None);
    }
}
