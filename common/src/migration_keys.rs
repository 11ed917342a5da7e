//! The advisory-lock keys migration tools take while they migrate a database, as functions of the
//! database (and schema / table) name, so a Rust service can wait for, or detect, another
//! framework's migration run:
//!
//! ```
//! use advisory_common::{Key, migration_keys};
//! // the name is what `SELECT current_database()` returns on the migrated connection
//! assert_eq!(migration_keys::sqlx("app"), Key::BigInt(0x3d32ad9e * 0xc96e70cf_i64));
//! let rails = migration_keys::rails("app");
//! let go = migration_keys::golang_migrate("app", "public", migration_keys::GOLANG_MIGRATE_DEFAULT_TABLE);
//! assert_ne!(rails, go);
//! ```
//!
//! All of them are session locks in the `bigint` space, and advisory locks are per database, so
//! `granted(key)` in `pg_locks` of that database tells whether a run is in progress there.

use crate::crc32::crc32;
use crate::key::Key;

/// The key sqlx's migrator (`sqlx::migrate::Migrator::run`, `sqlx migrate run`) holds while it
/// migrates the database named `database`: `0x3d32ad9e * crc32(database)` as `i64` (it never
/// overflows: both factors are below 2^32 and 2^30).
///
/// Source: `launchbadge/sqlx`, `sqlx-postgres/src/migrate.rs` (`generate_lock_id`, taken with
/// `pg_advisory_lock($1)` in `lock()` unless `Migrator::set_locking(false)`).
///
/// ```
/// use advisory_common::{Key, migration_keys};
/// assert_eq!(migration_keys::sqlx(""), Key::BigInt(0)); // crc32("") = 0
/// ```
pub fn sqlx(database: &str) -> Key {
    Key::BigInt(0x3d32ad9e * i64::from(crc32(database.as_bytes())))
        .with_label(&format!("sqlx migrations of {database}"))
}

/// The key Rails' migrator (`bin/rails db:migrate`) holds on PostgreSQL while it migrates the
/// database named `database`: `MIGRATOR_SALT * Zlib.crc32(current_database)` with
/// `MIGRATOR_SALT = 2053462845` (always below 2^63).
///
/// Source: `rails/rails`, `activerecord/lib/active_record/migration.rb`
/// (`generate_migrator_advisory_lock_id`, taken with `pg_try_advisory_lock` by `with_advisory_lock`;
/// Rails raises `ConcurrentMigrationError` instead of waiting).
///
/// ```
/// use advisory_common::{Key, migration_keys};
/// // Zlib.crc32("hello") = 0x3610a686
/// assert_eq!(migration_keys::rails("hello"), Key::BigInt(2053462845 * 0x3610a686));
/// ```
pub fn rails(database: &str) -> Key {
    Key::BigInt(2_053_462_845 * i64::from(crc32(database.as_bytes())))
        .with_label(&format!("Rails migrations of {database}"))
}

/// golang-migrate's default migrations table name (`x-migrations-table`).
pub const GOLANG_MIGRATE_DEFAULT_TABLE: &str = "schema_migrations";

/// The key golang-migrate's `postgres` (and `pgx`) driver holds while it migrates: CRC-32 of
/// `schema NUL table NUL database`, multiplied by 1486364155 **in `uint32`** (wrapping), passed as
/// a decimal string to `pg_advisory_lock($1)`, so always in `0..2^32` of the `bigint` space.
/// `schema` is `x-migrations-table`'s schema or else `SELECT current_schema()` (usually `public`),
/// `table` the migrations table ([`GOLANG_MIGRATE_DEFAULT_TABLE`] unless configured).
///
/// Source: `golang-migrate/migrate`, `database/util.go` (`GenerateAdvisoryLockId`:
/// `strings.Join(append(additionalNames, databaseName), "\x00")`) and
/// `database/postgres/postgres.go` (`Lock`: `GenerateAdvisoryLockId(DatabaseName,
/// migrationsSchemaName, migrationsTableName)`). Older releases (before v4.16) hashed the database
/// name alone, then `database NUL schema NUL table` for a while; this is the current form.
///
/// ```
/// use advisory_common::{KeyValue, migration_keys};
/// let k = migration_keys::golang_migrate("app", "public", "schema_migrations");
/// assert!(matches!(k.value(), KeyValue::BigInt(v) if (0..1 << 32).contains(&v)));
/// ```
pub fn golang_migrate(database: &str, schema: &str, table: &str) -> Key {
    let joined = [schema, table, database].join("\0");
    let sum = crc32(joined.as_bytes()).wrapping_mul(1_486_364_155);
    Key::BigInt(i64::from(sum))
        .with_label(&format!("golang-migrate of {database}.{schema}.{table}"))
}

/// The key `diesel-advisory`'s locked migration runners take by default (feature `migrations`):
/// [`Key::name`]`("diesel_migrations")`. A constant is enough because advisory locks are
/// per database.
///
/// ```
/// use advisory_common::{Key, migration_keys};
/// assert_eq!(migration_keys::diesel(), Key::name("diesel_migrations"));
/// ```
pub fn diesel() -> Key {
    Key::name("diesel_migrations")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        // python3: zlib.crc32(b"app") = 0xc96e70cf
        assert_eq!(sqlx("app"), Key::BigInt(0x3d32ad9e * 0xc96e70cf));
        assert_eq!(rails("app"), Key::BigInt(2053462845 * 0xc96e70cf));
        // python3: (zlib.crc32(b"public\0schema_migrations\0app") * 1486364155) % 2**32
        assert_eq!(
            golang_migrate("app", "public", "schema_migrations"),
            Key::BigInt(GO_APP)
        );
    }

    const GO_APP: i64 = 1_787_120_056;
}
