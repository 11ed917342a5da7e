//! diesel-async's `AsyncPgConnection` (and bb8, deadpool): the same modules as the sync half and
//! as `sqlx-advisory`, in the same order: `driver` (the I/O), `begin`, `guard`, `session`, `xact`,
//! plus `holds`, the process-wide count of live guards that cancelled acquires consult.

pub(crate) mod driver;

pub(crate) mod begin;
pub(crate) mod guard;
pub(crate) mod holds;
pub(crate) mod inspect;
pub(crate) mod session;
pub(crate) mod xact;
