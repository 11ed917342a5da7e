//! The one query type every lock call runs: a statement text from
//! [`advisory_common::sql`] with the key (and timeout) as bind parameters, cached per connection.
//!
//! `diesel::sql_query` is never cached (its `walk_ast` calls `unsafe_to_cache_prepared`, see
//! `diesel/src/query_builder/sql_query.rs`), and a `define_sql_function!` call would produce diesel's
//! own SQL text, not the project's. This type walks the common text instead: it emits the text
//! verbatim and turns each `$n` into a diesel bind parameter (diesel writes `$n` back, so the SQL
//! the server sees is byte-identical to [`advisory_common::sql`]'s).
//!
//! Each distinct statement text is its own type, `Stmt<ST, ID>`: `ID` indexes the table of texts
//! ([`text`]), and the type is its own static query id. diesel's `StatementCache` (shared by diesel
//! and diesel-async) then finds the prepared statement by `TypeId`, like any `define_sql_function!`
//! query, instead of rebuilding the SQL string and hashing it (plus a bind-type `Vec`) on every
//! call: one `Parse` per connection and statement, then one round trip per call. The text is a
//! function of `ID` alone and [`text`] is injective (tested), so two texts never share a query id.
//! A runtime [`StmtId`] picks the type through `with_bool_stmt_id!` (a `match` over the ids).

use std::marker::PhantomData;

use advisory_common::protocol::{Prepared, StatementKind};
use advisory_common::sql::{self, Mode, Scope, Wait};
use advisory_common::{Key, KeySpace, KeyValue, LockInfo};
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::{Error as DieselError, QueryResult};
use diesel::sql_types::{BigInt, Bool, Double, Integer, Nullable, Text};

/// Number of lock statements: scope × mode × wait × key space.
const N_LOCK: usize = 2 * 2 * 3 * 2;
/// First unlock statement (mode × key space).
const UNLOCK_BASE: usize = N_LOCK;
/// First held statement (mode × key space).
const HELD_BASE: usize = UNLOCK_BASE + 4;
/// [`advisory_common::sql::LOCKS_SQL`].
const LOCKS_ID: usize = HELD_BASE + 4;
/// Number of statement ids (`0..N_IDS`).
#[cfg(test)]
const N_IDS: usize = LOCKS_ID + 1;

fn mode_ix(mode: Mode) -> usize {
    match mode {
        Mode::Exclusive => 0,
        Mode::Shared => 1,
    }
}

fn space_ix(space: KeySpace) -> usize {
    match space {
        KeySpace::BigInt => 0,
        KeySpace::Pair => 1,
    }
}

fn mode_of(i: usize) -> Mode {
    if i == 0 {
        Mode::Exclusive
    } else {
        Mode::Shared
    }
}

fn space_of(i: usize) -> KeySpace {
    if i == 0 {
        KeySpace::BigInt
    } else {
        KeySpace::Pair
    }
}

/// Which statement of [`advisory_common::sql`] (the `ID` of a [`Stmt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StmtId(usize);

impl StmtId {
    pub(crate) fn lock(scope: Scope, mode: Mode, wait: Wait, space: KeySpace) -> StmtId {
        let scope = match scope {
            Scope::Session => 0,
            Scope::Transaction => 1,
        };
        let wait = match wait {
            Wait::Block => 0,
            Wait::Try => 1,
            Wait::Timeout => 2,
        };
        StmtId(((scope * 2 + mode_ix(mode)) * 3 + wait) * 2 + space_ix(space))
    }

    pub(crate) fn unlock(mode: Mode, space: KeySpace) -> StmtId {
        StmtId(UNLOCK_BASE + mode_ix(mode) * 2 + space_ix(space))
    }

    pub(crate) fn held(mode: Mode, space: KeySpace) -> StmtId {
        StmtId(HELD_BASE + mode_ix(mode) * 2 + space_ix(space))
    }
}

/// A prepared statement of the protocol runs as the [`Stmt`] of its id.
impl From<Prepared> for BoolStmt {
    fn from(p: Prepared) -> BoolStmt {
        let space = p.key.space();
        let id = match p.kind {
            StatementKind::Lock(scope, mode, wait) => StmtId::lock(scope, mode, wait, space),
            StatementKind::Unlock(mode) => StmtId::unlock(mode, space),
            StatementKind::Held(mode) => StmtId::held(mode, space),
        };
        BoolStmt {
            id,
            key: p.key,
            ms: p.ms,
        }
    }
}

/// The statement text of id `id`, always from [`advisory_common::sql`]; `None` out of range.
///
/// Injective over `0..N_IDS` (tested): the text is a function of the id alone, so a [`Stmt`]'s
/// static query id (its type, which includes `ID`) never stands for two different texts.
pub(crate) fn text(id: usize) -> Option<&'static str> {
    if id < N_LOCK {
        let scope = if id / 12 == 0 {
            Scope::Session
        } else {
            Scope::Transaction
        };
        let wait = match id / 2 % 3 {
            0 => Wait::Block,
            1 => Wait::Try,
            _ => Wait::Timeout,
        };
        Some(sql::lock_sql(
            scope,
            mode_of(id / 6 % 2),
            wait,
            space_of(id % 2),
        ))
    } else if id < HELD_BASE {
        let i = id - UNLOCK_BASE;
        Some(sql::unlock_sql(mode_of(i / 2), space_of(i % 2)))
    } else if id < LOCKS_ID {
        let i = id - HELD_BASE;
        Some(sql::held_sql(mode_of(i / 2), space_of(i % 2)))
    } else if id == LOCKS_ID {
        Some(sql::LOCKS_SQL)
    } else {
        None
    }
}

/// Runs `$body` with `$n` bound to the `const` id of `$id` (a [`StmtId`] of a one-`boolean`
/// statement: lock, unlock or held), so `$body` can name the type `Stmt<Bool, $n>`.
#[cfg(any(feature = "sync", feature = "async", test))]
macro_rules! with_bool_stmt_id {
    ($id:expr, $n:ident => $body:expr) => {
        with_bool_stmt_id!(@arms $id, $n, $body;
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23
            24 25 26 27 28 29 30 31)
    };
    (@arms $id:expr, $n:ident, $body:expr; $($i:literal)*) => {
        match $id.0 {
            $(
                $i => {
                    const $n: usize = $i;
                    $body
                }
            )*
            other => Err(DieselError::QueryBuilderError(
                format!("no boolean statement with id {other}").into(),
            )),
        }
    };
}

/// A bound value.
#[derive(Clone, Copy, Debug)]
enum Param {
    I8(i64),
    I4(i32),
}

/// Statement `ID` of [`text`] and its parameters.
#[derive(Debug)]
pub(crate) struct Stmt<ST, const ID: usize> {
    params: [Param; 3],
    len: usize,
    _st: PhantomData<fn() -> ST>,
}

impl<ST, const ID: usize> Stmt<ST, ID> {
    /// Text `ID` with the key bound as `$1` (or `$1, $2` for a pair) and `ms`, if any, after it.
    fn new(key: Option<Key>, ms: Option<i32>) -> Self {
        let mut params = [Param::I4(0); 3];
        let mut len = 0;
        let mut push = |p| {
            params[len] = p;
            len += 1;
        };
        match key.map(|k| k.value()) {
            Some(KeyValue::BigInt(k)) => push(Param::I8(k)),
            Some(KeyValue::Pair(k1, k2)) => {
                push(Param::I4(k1));
                push(Param::I4(k2));
            }
            None => {}
        }
        if let Some(ms) = ms {
            push(Param::I4(ms));
        }
        Stmt {
            params,
            len,
            _st: PhantomData,
        }
    }
}

/// A lock / unlock / held statement with its parameters, chosen at run time: one row, one
/// `boolean`. Runs as the `Stmt<Bool, ID>` of its id.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BoolStmt {
    id: StmtId,
    key: Key,
    ms: Option<i32>,
}

impl BoolStmt {
    /// Run it on a sync connection (one round trip once prepared).
    #[cfg(feature = "sync")]
    pub(crate) fn get(self, conn: &mut diesel::PgConnection) -> QueryResult<bool> {
        use diesel::RunQueryDsl;
        let BoolStmt { id, key, ms } = self;
        with_bool_stmt_id!(id, N => Stmt::<Bool, N>::new(Some(key), ms).get_result::<bool>(conn))
    }

    /// Run it on a diesel-async connection (one round trip once prepared).
    #[cfg(feature = "async")]
    pub(crate) async fn get_async(
        self,
        conn: &mut diesel_async::AsyncPgConnection,
    ) -> QueryResult<bool> {
        use diesel_async::RunQueryDsl;
        let BoolStmt { id, key, ms } = self;
        with_bool_stmt_id!(id, N => {
            Stmt::<Bool, N>::new(Some(key), ms)
                .get_result::<bool>(conn)
                .await
        })
    }
}

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
pub(crate) type LocksStmt = Stmt<
    (
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
    ),
    LOCKS_ID,
>;

/// The prepared unlock of one hold ([`advisory_common::protocol::release_statement`]).
pub(crate) fn unlock_stmt(key: Key, mode: Mode) -> BoolStmt {
    advisory_common::protocol::release_statement(key, mode).into()
}

/// The prepared `pg_locks` check ([`advisory_common::protocol::held_statement`]).
pub(crate) fn held_stmt(key: Key, mode: Mode) -> BoolStmt {
    advisory_common::protocol::held_statement(key, mode).into()
}

pub(crate) fn locks_stmt() -> LocksStmt {
    Stmt::new(None, None)
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

impl<ST: 'static, const ID: usize> QueryId for Stmt<ST, ID> {
    // One type per statement text (see `text`): diesel caches it by `TypeId`, without building
    // and hashing the SQL string on every call.
    type QueryId = Self;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<ST: 'static, const ID: usize> Query for Stmt<ST, ID> {
    type SqlType = ST;
}

impl<ST, const ID: usize> QueryFragment<Pg> for Stmt<ST, ID> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let sql = text(ID).ok_or_else(|| {
            DieselError::QueryBuilderError(format!("no statement with id {ID}").into())
        })?;
        let mut rest = sql;
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
                    format!("unexpected placeholder ${n} in {sql}").into(),
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
                format!("{sql} takes {next} parameters, {} bound", self.len).into(),
            ));
        }
        Ok(())
    }
}

#[cfg(feature = "sync")]
impl<ST, const ID: usize, Conn> diesel::RunQueryDsl<Conn> for Stmt<ST, ID> {}

#[cfg(test)]
#[path = "stmt_tests.rs"]
mod tests;
