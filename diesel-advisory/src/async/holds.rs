//! How many live diesel-async guards of this process hold each key in each mode.
//!
//! PostgreSQL's advisory locks are re-entrant per session: two guards on one key and mode on one
//! connection are two holds, and one `pg_advisory_unlock` takes away one of them, whichever guard
//! it was meant for. A borrowed-connection acquire or release that is cancelled must sometimes
//! queue an unlock without knowing whether its own statement reached the server (diesel-async may
//! still have been preparing it). That stray unlock is harmless exactly when the session holds the
//! key in that mode through no other guard, and this count is how the caller knows: while no
//! *other* live guard of the process holds `(key, mode)` anywhere, none holds it on this
//! connection either. When one does (on this connection or another, the count cannot tell), the
//! caller sends its statement so that it is known to be on the wire before anything is armed
//! (`crate::r#async::session`).
//!
//! A guard that is leaked (`mem::forget`) stays counted: callers then take the exact path
//! needlessly, never the other way round.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use advisory_common::Key;
use advisory_common::sql::Mode;

fn counts() -> MutexGuard<'static, HashMap<(Key, Mode), u32>> {
    static COUNTS: OnceLock<Mutex<HashMap<(Key, Mode), u32>>> = OnceLock::new();
    COUNTS
        .get_or_init(Default::default)
        .lock()
        // a panic elsewhere cannot leave the map half-updated: every update is one statement
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One live guard's hold of a key in a mode, counted while this value lives.
#[derive(Debug)]
pub(crate) struct Hold {
    key: Key,
    mode: Mode,
}

impl Hold {
    pub(crate) fn new(key: Key, mode: Mode) -> Hold {
        *counts().entry((key, mode)).or_insert(0) += 1;
        Hold { key, mode }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut counts = counts();
        if let Some(n) = counts.get_mut(&(self.key, self.mode)) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&(self.key, self.mode));
            }
        }
    }
}

/// How many live guards of this process hold `key` in `mode`.
pub(crate) fn holders(key: Key, mode: Mode) -> u32 {
    counts().get(&(key, mode)).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_holds_per_key_and_mode() {
        let key = Key::BigInt(-424_242);
        let a = Hold::new(key, Mode::Exclusive);
        let b = Hold::new(key, Mode::Exclusive);
        assert_eq!(holders(key, Mode::Exclusive), 2);
        assert_eq!(holders(key, Mode::Shared), 0);
        assert_eq!(holders(Key::Pair(-1, -424_242), Mode::Exclusive), 0);
        drop(a);
        assert_eq!(holders(key, Mode::Exclusive), 1);
        drop(b);
        assert_eq!(holders(key, Mode::Exclusive), 0);
    }
}
