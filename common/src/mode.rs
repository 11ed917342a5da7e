//! The one lock-mode type: what a guard holds, what `pg_locks` reports, what a statement asks for.

/// Exclusive or shared: the mode an advisory lock is requested in, held in (a guard's `mode()`),
/// or reported in by `pg_locks` ([`LockInfo::mode`](crate::LockInfo::mode)).
///
/// ```
/// use advisory_common::LockMode;
/// assert_eq!(LockMode::Shared.as_str(), "shared");
/// assert_eq!(LockMode::Exclusive.pg_locks_name(), "ExclusiveLock");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockMode {
    /// Conflicts with every other holder (`ExclusiveLock` in `pg_locks`).
    Exclusive,
    /// Conflicts only with exclusive holders (`ShareLock` in `pg_locks`).
    Shared,
}

impl LockMode {
    /// `"exclusive"` or `"shared"`: the value both adapters log in their `tracing` events.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        }
    }

    /// The name `pg_locks.mode` shows for an advisory lock in this mode: `"ExclusiveLock"` or
    /// `"ShareLock"`.
    pub fn pg_locks_name(self) -> &'static str {
        match self {
            LockMode::Exclusive => "ExclusiveLock",
            LockMode::Shared => "ShareLock",
        }
    }

    /// `true` for [`LockMode::Shared`].
    pub fn is_shared(self) -> bool {
        self == LockMode::Shared
    }
}

/// The [`as_str`](LockMode::as_str) text.
impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
