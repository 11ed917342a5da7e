//! Named key derivations, so a lock name can be turned into the key another ecosystem's library
//! would lock for it (`advisory-cli key --preset django-pglock orders:42`, or in code
//! `Preset::DjangoPglock.key("orders:42")`).

use std::fmt;
use std::str::FromStr;

use crate::key::Key;

/// A named string → key derivation: this project's own, sqlx's, or another ecosystem's library.
///
/// Every preset is a pure function of the name (no environment read), stable across versions.
/// [`Preset::key`] computes the key; [`Preset::sql`] gives the same computation as SQL text for
/// `psql` where plain PostgreSQL can compute it.
///
/// ```
/// use advisory_common::{Key, Preset};
///
/// let preset: Preset = "django-pglock".parse()?;
/// assert_eq!(preset, Preset::DjangoPglock);
/// assert_eq!(preset.key("orders:42"), Key::django_pglock("orders:42"));
/// assert_eq!(Preset::Default.key("orders:42"), Key::name("orders:42"));
/// for p in Preset::ALL {
///     assert_eq!(p.name().parse::<Preset>()?, *p);
/// }
/// # Ok::<(), advisory_common::ParsePresetError>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// This project's [`Key::name`]: SHA-256, first 8 bytes big-endian, `bigint` space.
    Default,
    /// sqlx's `PgAdvisoryLock::new(name)`: [`Key::sqlx`].
    Sqlx,
    /// Python `postgresql-lock`: [`Key::postgresql_lock`].
    PostgresqlLock,
    /// Python `django-pglock`: [`Key::django_pglock`].
    DjangoPglock,
    /// Ruby `with_advisory_lock` with `WITH_ADVISORY_LOCK_PREFIX` unset:
    /// [`Key::with_advisory_lock`]`(name, None)`.
    WithAdvisoryLock,
    /// npm `advisory-lock` 1.1.1 and later (2.x): [`Key::node_advisory_lock`].
    NodeAdvisoryLock,
    /// npm `advisory-lock` up to 1.1.0, with its byte-offset bug: [`Key::node_advisory_lock_1_0`].
    NodeAdvisoryLock1_0,
    /// .NET `DistributedLock.Postgres` with `allowHashing: true`: [`Key::distributed_lock`].
    DistributedLock,
}

impl Preset {
    /// Every preset, in the order of the README table.
    pub const ALL: &'static [Preset] = &[
        Preset::Default,
        Preset::Sqlx,
        Preset::PostgresqlLock,
        Preset::DjangoPglock,
        Preset::WithAdvisoryLock,
        Preset::NodeAdvisoryLock,
        Preset::NodeAdvisoryLock1_0,
        Preset::DistributedLock,
    ];

    /// The stable command-line name: `default`, `sqlx`, `postgresql-lock`, `django-pglock`,
    /// `with-advisory-lock`, `node-advisory-lock`, `node-advisory-lock-1.0`, `distributed-lock`.
    ///
    /// ```
    /// use advisory_common::Preset;
    /// assert_eq!(Preset::WithAdvisoryLock.name(), "with-advisory-lock");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Preset::Default => "default",
            Preset::Sqlx => "sqlx",
            Preset::PostgresqlLock => "postgresql-lock",
            Preset::DjangoPglock => "django-pglock",
            Preset::WithAdvisoryLock => "with-advisory-lock",
            Preset::NodeAdvisoryLock => "node-advisory-lock",
            Preset::NodeAdvisoryLock1_0 => "node-advisory-lock-1.0",
            Preset::DistributedLock => "distributed-lock",
        }
    }

    /// The key this preset derives from `name`.
    ///
    /// ```
    /// use advisory_common::{Key, Preset};
    /// assert_eq!(Preset::NodeAdvisoryLock.key("test-lock"), Key::Pair(-107789403, -1898803861));
    /// ```
    pub fn key(self, name: &str) -> Key {
        match self {
            Preset::Default => Key::name(name),
            Preset::Sqlx => Key::sqlx(name),
            Preset::PostgresqlLock => Key::postgresql_lock(name),
            Preset::DjangoPglock => Key::django_pglock(name),
            Preset::WithAdvisoryLock => Key::with_advisory_lock(name, None),
            Preset::NodeAdvisoryLock => Key::node_advisory_lock(name),
            Preset::NodeAdvisoryLock1_0 => Key::node_advisory_lock_1_0(name),
            Preset::DistributedLock => Key::distributed_lock(name),
        }
        .with_label(name)
    }

    /// One line: the library, the algorithm and the key space.
    ///
    /// ```
    /// use advisory_common::Preset;
    /// assert!(Preset::DjangoPglock.describe().contains("little-endian"));
    /// ```
    pub fn describe(self) -> &'static str {
        match self {
            Preset::Default => {
                "this project's Key::name: SHA-256 of the UTF-8 name, first 8 bytes big-endian, bigint space"
            }
            Preset::Sqlx => {
                "sqlx PgAdvisoryLock: HKDF-SHA256 (no salt, info \"SQLx (Rust) Postgres advisory lock\"), 8 bytes little-endian, bigint space"
            }
            Preset::PostgresqlLock => {
                "Python postgresql-lock: SHA-1 of the UTF-8 name, first 8 bytes big-endian, bigint space"
            }
            Preset::DjangoPglock => {
                "Python django-pglock: SHA-256 of the UTF-8 name, first 8 bytes little-endian, bigint space"
            }
            Preset::WithAdvisoryLock => {
                "Ruby with_advisory_lock: (CRC-32 of the name & 0x7fffffff, WITH_ADVISORY_LOCK_PREFIX.to_i = 0), int-pair space"
            }
            Preset::NodeAdvisoryLock => {
                "npm advisory-lock >= 1.1.1: SHA-256, bytes 0..4 and 4..8 as little-endian int32, int-pair space"
            }
            Preset::NodeAdvisoryLock1_0 => {
                "npm advisory-lock <= 1.1.0: SHA-256, bytes 0..4 and 1..5 (byte-offset bug) as little-endian int32, int-pair space"
            }
            Preset::DistributedLock => {
                "DistributedLock.Postgres: <= 9 ASCII chars packed 7 bits each (int-pair), 16 hex digits (bigint), 8,8 hex digits (int-pair), else SHA-1 first 8 bytes little-endian (bigint)"
            }
        }
    }

    /// The same derivation as SQL text, for a human to paste into `psql` (and run
    /// `pg_advisory_lock(...)` on, or compare with `pg_locks`), where plain PostgreSQL (no
    /// extension) can compute it; `None` otherwise, and for a name containing a NUL character
    /// (not representable in PostgreSQL text). The name appears as a standard SQL string literal,
    /// `'` doubled (needs `standard_conforming_strings = on`, the default since PostgreSQL 9.1).
    ///
    /// The result is one row: a `bigint` column `key`, or `int4` columns `key1, key2` for the
    /// int-pair space. Display text only: the library never sends it (keys are always bound
    /// parameters).
    ///
    /// ```
    /// use advisory_common::Preset;
    /// assert_eq!(
    ///     Preset::Default.sql("it's").unwrap(),
    ///     "SELECT ('x' || left(encode(sha256(convert_to('it''s', 'UTF8')), 'hex'), 16))::bit(64)::bigint AS key",
    /// );
    /// assert_eq!(Preset::PostgresqlLock.sql("x"), None); // SHA-1 needs pgcrypto
    /// assert!(Preset::Sqlx.sql("x").unwrap().contains("sha256")); // HMAC written out
    /// ```
    pub fn sql(self, name: &str) -> Option<String> {
        if name.contains('\0') {
            return None;
        }
        let lit = format!("'{}'", name.replace('\'', "''"));
        let hex = format!("encode(sha256(convert_to({lit}, 'UTF8')), 'hex')");
        // little-endian int of `n` bytes starting at byte `at` of the hex digest: reversed byte order
        let le = |at: usize, n: usize, ty: &str| {
            let parts: Vec<String> = (0..n)
                .rev()
                .map(|i| format!("substr(h, {}, 2)", 2 * (at + i) + 1))
                .collect();
            format!("('x' || {})::bit({})::{ty}", parts.join(" || "), 8 * n)
        };
        Some(match self {
            Preset::Default => format!("SELECT ('x' || left({hex}, 16))::bit(64)::bigint AS key"),
            Preset::DjangoPglock => format!(
                "SELECT {} AS key FROM (SELECT {hex} AS h) d",
                le(0, 8, "bigint")
            ),
            Preset::NodeAdvisoryLock => format!(
                "SELECT {} AS key1, {} AS key2 FROM (SELECT {hex} AS h) d",
                le(0, 4, "int4"),
                le(4, 4, "int4")
            ),
            Preset::NodeAdvisoryLock1_0 => format!(
                "SELECT {} AS key1, {} AS key2 FROM (SELECT {hex} AS h) d",
                le(0, 4, "int4"),
                le(1, 4, "int4")
            ),
            Preset::Sqlx => {
                let h = "encode(t, 'hex')";
                format!(
                    "{} SELECT {} AS key FROM (SELECT {h} AS h FROM t) d",
                    hkdf_sql(&lit),
                    le(0, 8, "bigint")
                )
            }
            // SHA-1 needs pgcrypto, CRC-32 needs PostgreSQL 18's crc32() (not the versions tested
            // here); the DistributedLock packing is not worth expressing in SQL.
            Preset::PostgresqlLock | Preset::WithAdvisoryLock | Preset::DistributedLock => {
                return None;
            }
        })
    }
}

/// `WITH ... t AS (...)`: the first HKDF-SHA256 output block of the UTF-8 bytes of the SQL
/// literal `lit`, no salt, sqlx's info string, as sqlx's `PgAdvisoryLock` (RFC 5869), with HMAC
/// written out over plain `sha256()` (no pgcrypto): HMAC(K, m) = H((K' ^ opad) || H((K' ^ ipad) ||
/// m)), K' the key zero-padded to the 64-byte block. Extract's key is 32 zero bytes, so its pads
/// are constants; Expand's key is the PRK, XORed with the pads in four 64-bit chunks.
fn hkdf_sql(lit: &str) -> String {
    let pad = |byte: &str, n: usize| format!("decode(repeat('{byte}', {n}), 'hex')");
    let xor = |byte: &str| {
        let chunks: Vec<String> = (0..4)
            .map(|i| {
                format!(
                    "lpad(to_hex(substring(k # ('x' || repeat('{byte}', 32))::bit(256) from {} for 64)::bit(64)::bigint), 16, '0')",
                    64 * i + 1
                )
            })
            .collect();
        format!("decode({}, 'hex')", chunks.join(" || "))
    };
    format!(
        "WITH p AS (SELECT sha256({o64} || sha256({i64} || convert_to({lit}, 'UTF8'))) AS prk), \
         k AS (SELECT ('x' || encode(prk, 'hex'))::bit(256) AS k FROM p), \
         t AS (SELECT sha256({ko} || {o32} || sha256({ki} || {i32} || \
         convert_to('SQLx (Rust) Postgres advisory lock', 'UTF8') || decode('01', 'hex'))) AS t FROM k)",
        o64 = pad("5c", 64),
        i64 = pad("36", 64),
        o32 = pad("5c", 32),
        i32 = pad("36", 32),
        ko = xor("5c"),
        ki = xor("36"),
    )
}

/// The [`Preset::name`].
impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that is not the [`Preset::name`] of any preset.
///
/// ```
/// use advisory_common::Preset;
/// let err = "rails".parse::<Preset>().unwrap_err();
/// assert!(err.to_string().contains("django-pglock"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown key preset {given:?}; valid presets: {}", valid_names())]
pub struct ParsePresetError {
    given: String,
}

fn valid_names() -> String {
    Preset::ALL
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a [`Preset::name`] (exactly, lower case).
impl FromStr for Preset {
    type Err = ParsePresetError;

    fn from_str(s: &str) -> Result<Preset, ParsePresetError> {
        Preset::ALL
            .iter()
            .copied()
            .find(|p| p.name() == s)
            .ok_or_else(|| ParsePresetError {
                given: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        for (i, p) in Preset::ALL.iter().enumerate() {
            assert_eq!(p.name().parse::<Preset>(), Ok(*p));
            assert_eq!(p.to_string(), p.name());
            assert!(!p.describe().is_empty());
            for q in &Preset::ALL[i + 1..] {
                assert_ne!(p.name(), q.name());
            }
        }
        let err = "Django-pglock".parse::<Preset>().unwrap_err().to_string();
        for p in Preset::ALL {
            assert!(err.contains(p.name()), "{err}");
        }
    }

    #[test]
    fn every_preset_is_its_function() {
        for name in ["", "orders:42", "it's", "héllo wörld", "0000002a,ffffffff"] {
            assert_eq!(Preset::Default.key(name), Key::name(name));
            assert_eq!(Preset::Sqlx.key(name), Key::sqlx(name));
            assert_eq!(Preset::PostgresqlLock.key(name), Key::postgresql_lock(name));
            assert_eq!(Preset::DjangoPglock.key(name), Key::django_pglock(name));
            assert_eq!(
                Preset::WithAdvisoryLock.key(name),
                Key::with_advisory_lock(name, None)
            );
            assert_eq!(
                Preset::NodeAdvisoryLock.key(name),
                Key::node_advisory_lock(name)
            );
            assert_eq!(
                Preset::NodeAdvisoryLock1_0.key(name),
                Key::node_advisory_lock_1_0(name)
            );
            assert_eq!(
                Preset::DistributedLock.key(name),
                Key::distributed_lock(name)
            );
        }
    }

    #[test]
    fn sql_quotes_the_name_and_refuses_nul() {
        for p in Preset::ALL {
            if let Some(sql) = p.sql("a'b") {
                assert!(sql.contains("'a''b'"), "{sql}");
                assert!(!sql.contains("'a'b'"), "{sql}");
            }
            assert_eq!(p.sql("a\0b"), None);
        }
    }
}
