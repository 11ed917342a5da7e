//! Decoded `pg_locks` rows.

use std::time::Duration;

use crate::key::Key;

use crate::mode::LockMode;

/// One advisory lock held or awaited by some session, as returned by
/// [`sql::LOCKS_SQL`](crate::sql::LOCKS_SQL): what a user debugging a stuck lock wants to see.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock's key, decoded from `classid`/`objid`/`objsubid`.
    pub key: Key,
    /// Exclusive or shared.
    pub mode: LockMode,
    /// `true` if held, `false` if the session is waiting for it.
    pub granted: bool,
    /// Backend process id of the session (`pg_backend_pid()`; terminate it with
    /// `pg_terminate_backend(pid)`).
    pub pid: i32,
    /// The session's `application_name`.
    pub application_name: Option<String>,
    /// The role the session is logged in as.
    pub user: Option<String>,
    /// `pg_stat_activity.state`: `active`, `idle`, `idle in transaction`, ...
    pub state: Option<String>,
    /// How long the session has been waiting for this lock (`None` when granted).
    pub waiting_for: Option<Duration>,
    /// Age of the session's open transaction, if any (a transaction-level lock lives that long).
    pub transaction_age: Option<Duration>,
    /// The session's current (or, if idle, last) query.
    pub query: Option<String>,
}

impl LockInfo {
    /// Decode one row of [`sql::LOCKS_SQL`](crate::sql::LOCKS_SQL), column by column in its order.
    /// Returns `None` for a row that is not an advisory key (`objsubid` other than 1 or 2).
    ///
    /// ```
    /// use advisory_common::{Key, LockInfo, LockMode};
    /// let (c, o, s) = Key::BigInt(-7).classid_objid_objsubid();
    /// let info = LockInfo::from_row(
    ///     c as i64, o as i64, s as i32, "ShareLock", true, 4242,
    ///     Some("app".into()), None, Some("idle".into()), None, None, None,
    /// ).unwrap();
    /// assert_eq!(info.key, Key::BigInt(-7));
    /// assert_eq!(info.mode, LockMode::Shared);
    /// ```
    #[allow(clippy::too_many_arguments)]
    #[doc(hidden)]
    pub fn from_row(
        classid: i64,
        objid: i64,
        objsubid: i32,
        mode: &str,
        granted: bool,
        pid: i32,
        application_name: Option<String>,
        user: Option<String>,
        state: Option<String>,
        wait_seconds: Option<f64>,
        xact_seconds: Option<f64>,
        query: Option<String>,
    ) -> Option<LockInfo> {
        let key = Key::from_classid_objid_objsubid(
            u32::try_from(classid).ok()?,
            u32::try_from(objid).ok()?,
            i16::try_from(objsubid).ok()?,
        )?;
        let mode = match mode {
            "ShareLock" => LockMode::Shared,
            _ => LockMode::Exclusive,
        };
        let secs = |s: Option<f64>| {
            s.filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
        };
        Some(LockInfo {
            key,
            mode,
            granted,
            pid,
            application_name,
            user,
            state,
            waiting_for: if granted { None } else { secs(wait_seconds) },
            transaction_age: secs(xact_seconds),
            query,
        })
    }
}
