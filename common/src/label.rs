//! [`Key::Labeled`]: a key that remembers the name it was derived from, for messages.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::key::Key;

/// How many bytes of a name a [`Labeled`] key keeps (longer names are cut at a character
/// boundary and shown with `…`). Inline, so that [`Key`] stays `Copy` and allocation-free.
pub const LABEL_MAX: usize = 40;

/// The payload of [`Key::Labeled`]: the plain key (a [`Key::BigInt`] or [`Key::Pair`]) and the
/// name it came from (its first [`LABEL_MAX`] bytes).
///
/// ```
/// use advisory_common::Key;
/// let key = Key::name("orders:42");
/// let Key::Labeled(l) = key else { unreachable!() };
/// assert_eq!(l.label(), "orders:42");
/// assert_eq!(l.key(), Key::BigInt(-8476019149258318077));
/// ```
#[derive(Clone, Copy)]
pub struct Labeled {
    /// `(space, a, b)` of the plain key: `(1, k, 0)` for `BigInt(k)`, `(2, k1, k2)` for a pair.
    space: u8,
    a: i64,
    b: i32,
    len: u8,
    truncated: bool,
    bytes: [u8; LABEL_MAX],
}

impl Labeled {
    pub(crate) fn new(key: Key, label: &str) -> Labeled {
        let (space, a, b) = key.identity();
        let mut end = label.len().min(LABEL_MAX);
        while !label.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; LABEL_MAX];
        bytes[..end].copy_from_slice(&label.as_bytes()[..end]);
        Labeled {
            space,
            a,
            b,
            len: end as u8,
            truncated: end < label.len(),
            bytes,
        }
    }

    /// The lock itself: [`Key::BigInt`] or [`Key::Pair`].
    pub fn key(&self) -> Key {
        match self.space {
            1 => Key::BigInt(self.a),
            _ => Key::Pair(self.a as i32, self.b),
        }
    }

    /// The name (its first [`LABEL_MAX`] bytes; see [`Labeled::is_truncated`]).
    pub fn label(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }

    /// Whether the name was longer than [`LABEL_MAX`] bytes and [`Labeled::label`] is its start.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

impl fmt::Debug for Labeled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Labeled")
            .field("label", &self.label())
            .field("truncated", &self.truncated)
            .field("key", &self.key())
            .finish()
    }
}

impl Key {
    /// `(space, a, b)`: what identifies the lock, whatever the label.
    pub(crate) fn identity(&self) -> (u8, i64, i32) {
        match *self {
            Key::BigInt(k) => (1, k, 0),
            Key::Pair(k1, k2) => (2, i64::from(k1), k2),
            Key::Labeled(l) => (l.space, l.a, l.b),
        }
    }

    /// The same lock, carrying `label` for messages (errors, `tracing` events, `Display`). Every
    /// name derivation ([`Key::name`], `From<&str>`, the presets) labels its key with the name.
    ///
    /// ```
    /// use advisory_common::Key;
    /// let key = Key::from(42_i64).with_label("order 42");
    /// assert_eq!(key, Key::BigInt(42)); // the same lock
    /// assert_eq!(key.to_string(), r#""order 42" (bigint:42)"#);
    /// ```
    pub fn with_label(self, label: &str) -> Key {
        Key::Labeled(Labeled::new(self, label))
    }

    /// The label, when the key has one.
    pub fn label(&self) -> Option<&str> {
        match self {
            Key::Labeled(l) => Some(l.label()),
            _ => None,
        }
    }

    /// The lock without its label: [`Key::BigInt`] or [`Key::Pair`]. Match on this when you need
    /// the numbers.
    ///
    /// ```
    /// use advisory_common::Key;
    /// assert_eq!(Key::name("").unlabeled(), Key::BigInt(0xe3b0c44298fc1c14_u64 as i64));
    /// assert!(matches!(Key::name("").unlabeled(), Key::BigInt(_)));
    /// ```
    pub fn unlabeled(self) -> Key {
        match self {
            Key::Labeled(l) => l.key(),
            plain => plain,
        }
    }
}

/// The numbers of a lock, whatever its label: what [`Key::value`] returns, for an exhaustive
/// `match` without a [`Key::Labeled`] arm.
///
/// ```
/// use advisory_common::{Key, KeyValue};
/// match Key::name("orders:42").value() {
///     KeyValue::BigInt(k) => assert_eq!(k, -8476019149258318077),
///     KeyValue::Pair(..) => unreachable!(),
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    /// `pg_advisory_*(bigint)`.
    BigInt(i64),
    /// `pg_advisory_*(integer, integer)`.
    Pair(i32, i32),
}

impl Key {
    /// The lock's numbers: [`KeyValue::BigInt`] or [`KeyValue::Pair`], the label dropped.
    pub fn value(&self) -> KeyValue {
        match self.identity() {
            (2, k1, k2) => KeyValue::Pair(k1 as i32, k2),
            (_, k, _) => KeyValue::BigInt(k),
        }
    }
}

/// Two keys are equal when they are the same lock: labels are not compared.
impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for Key {}

/// Consistent with `PartialEq`: the label is not hashed.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state)
    }
}

/// `bigint` keys before pairs, then by value; labels are not compared.
impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.identity().cmp(&other.identity())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
