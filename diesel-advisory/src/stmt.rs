//! The one query type every lock call runs: a statement text from
//! [`advisory_common::sql`] with the key (and timeout) as bind parameters, cached per connection.
//!
//! `diesel::sql_query` is never cached (its `walk_ast` calls `unsafe_to_cache_prepared`, see
//! `diesel/src/query_builder/sql_query.rs`), and a `define_sql_function!` call would produce diesel's
//! own SQL text, not the project's. This type walks the common text instead: it emits the text
//! verbatim and turns each `$n` into a diesel bind parameter (diesel writes `$n` back, so the SQL
//! the server sees is byte-identical to [`advisory_common::sql`]'s). It stays safe to cache and has
//! no static query id, so diesel's `StatementCache` (shared by diesel and diesel-async) keys it by
//! SQL text + bind types: one `Parse` per connection and statement, then one round trip per call.

use std::marker::PhantomData;

use advisory_common::{Key, LockInfo};
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::{Error as DieselError, QueryResult};
use diesel::sql_types::{BigInt, Bool, Double, Integer, Nullable, Text};

/// A bound value.
#[derive(Clone, Copy, Debug)]
enum Param {
    I8(i64),
    I4(i32),
}

/// One prepared, cached statement from `advisory_common::sql` and its parameters.
#[derive(Debug)]
pub(crate) struct Stmt<ST> {
    sql: &'static str,
    params: [Param; 3],
    len: usize,
    _st: PhantomData<fn() -> ST>,
}

impl<ST> Stmt<ST> {
    /// `sql` with the key bound as `$1` (or `$1, $2` for a pair) and `ms`, if any, after it.
    pub(crate) fn new(sql: &'static str, key: Option<Key>, ms: Option<i32>) -> Self {
        let mut params = [Param::I4(0); 3];
        let mut len = 0;
        let mut push = |p| {
            params[len] = p;
            len += 1;
        };
        match key {
            Some(Key::BigInt(k)) => push(Param::I8(k)),
            Some(Key::Pair(k1, k2)) => {
                push(Param::I4(k1));
                push(Param::I4(k2));
            }
            None => {}
        }
        if let Some(ms) = ms {
            push(Param::I4(ms));
        }
        Stmt {
            sql,
            params,
            len,
            _st: PhantomData,
        }
    }
}

/// A lock / unlock / held statement: one row, one `boolean`.
pub(crate) type BoolStmt = Stmt<Bool>;

/// The columns of [`advisory_common::sql::LOCKS_SQL`].
pub(crate) type LocksRow = (
    i64,
    i64,
    i32,
    String,
    bool,
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<f64>,
    Option<String>,
);

/// [`advisory_common::sql::LOCKS_SQL`] as a typed statement.
pub(crate) type LocksStmt = Stmt<(
    BigInt,
    BigInt,
    Integer,
    Text,
    Bool,
    Integer,
    Nullable<Text>,
    Nullable<Text>,
    Nullable<Text>,
    Nullable<Double>,
    Nullable<Double>,
    Nullable<Text>,
)>;

pub(crate) fn locks_stmt() -> LocksStmt {
    Stmt::new(advisory_common::sql::LOCKS_SQL, None, None)
}

pub(crate) fn decode_locks(rows: Vec<LocksRow>) -> Vec<LockInfo> {
    rows.into_iter()
        .filter_map(|r| {
            LockInfo::from_row(
                r.0, r.1, r.2, &r.3, r.4, r.5, r.6, r.7, r.8, r.9, r.10, r.11,
            )
        })
        .collect()
}

impl<ST> QueryId for Stmt<ST> {
    type QueryId = ();
    // The SQL differs per instance: cache by SQL text, not by type.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<ST: 'static> Query for Stmt<ST> {
    type SqlType = ST;
}

impl<ST> QueryFragment<Pg> for Stmt<ST> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut rest = self.sql;
        let mut next = 0;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            let n: usize = rest[at + 1..at + 1 + digits]
                .parse()
                .map_err(|e| DieselError::QueryBuilderError(Box::new(e)))?;
            // diesel numbers placeholders in push order, so the text only round-trips if the
            // common statement uses $1, $2, ... once each, in order (it does; tested there).
            if n != next + 1 || next >= self.len {
                return Err(DieselError::QueryBuilderError(
                    format!("unexpected placeholder ${n} in {}", self.sql).into(),
                ));
            }
            match &self.params[next] {
                Param::I8(v) => out.push_bind_param::<BigInt, i64>(v)?,
                Param::I4(v) => out.push_bind_param::<Integer, i32>(v)?,
            }
            next += 1;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        if next != self.len {
            return Err(DieselError::QueryBuilderError(
                format!("{} takes {next} parameters, {} bound", self.sql, self.len).into(),
            ));
        }
        Ok(())
    }
}

#[cfg(feature = "sync")]
impl<ST, Conn> diesel::RunQueryDsl<Conn> for Stmt<ST> {}

#[cfg(test)]
mod tests {
    use super::*;
    use advisory_common::sql::{self, Mode, Scope, Wait};

    #[test]
    fn sql_text_is_byte_identical_to_common() {
        for (text, n) in sql::all_statements() {
            let text: &'static str = Box::leak(text.into_boxed_str());
            let timed = text.contains("::int4)::text");
            let key = match n - usize::from(timed) {
                0 => None,
                1 => Some(Key::BigInt(7)),
                _ => Some(Key::Pair(1, 2)),
            };
            let ms = timed.then_some(5);
            let stmt = BoolStmt::new(text, key, ms);
            assert_eq!(
                diesel::debug_query::<Pg, _>(&stmt)
                    .to_string()
                    .split(" -- binds")
                    .next(),
                Some(text),
            );
        }
        let s = sql::lock_sql(
            Scope::Session,
            Mode::Shared,
            Wait::Timeout,
            Key::Pair(1, 2).space(),
        );
        let stmt = BoolStmt::new(s, Some(Key::Pair(1, 2)), Some(9));
        assert!(
            diesel::debug_query::<Pg, _>(&stmt)
                .to_string()
                .ends_with("-- binds: [1, 2, 9]")
        );
    }
}
