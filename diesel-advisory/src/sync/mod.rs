//! diesel's sync `PgConnection` (and r2d2): the same modules as the diesel-async half and as
//! `sqlx-advisory`, in the same order: `driver` (the I/O), `begin`, `guard`, `session`, `xact`.

pub(crate) mod driver;

pub(crate) mod begin;
pub(crate) mod guard;
pub(crate) mod inspect;
pub(crate) mod session;
pub(crate) mod xact;
