//! Converting a caller's `Duration` into PostgreSQL's `lock_timeout`.

use std::time::Duration;

/// A timeout longer than PostgreSQL's `lock_timeout` can express (`i32::MAX` milliseconds, about
/// 24.8 days).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "timeout {0:?} is longer than PostgreSQL's lock_timeout allows (at most 2147483647 ms, about 24.8 days); use the waiting acquire instead"
)]
pub struct TimeoutOutOfRange(pub Duration);

/// The `lock_timeout` value in milliseconds for a caller's timeout.
///
/// Rounds **up** to whole milliseconds and never returns 0 (which PostgreSQL reads as "no timeout"):
/// a zero duration waits at most 1 ms, i.e. it behaves like a try that also waits out a lock being
/// released right now.
///
/// ```
/// use std::time::Duration;
/// use advisory_common::timeout_millis;
/// assert_eq!(timeout_millis(Duration::ZERO), Ok(1));
/// assert_eq!(timeout_millis(Duration::from_micros(1500)), Ok(2));
/// assert_eq!(timeout_millis(Duration::from_secs(2)), Ok(2000));
/// assert!(timeout_millis(Duration::from_secs(u64::MAX)).is_err());
/// ```
pub fn timeout_millis(timeout: Duration) -> Result<i32, TimeoutOutOfRange> {
    let ms = timeout.as_nanos().div_ceil(1_000_000).max(1);
    i32::try_from(ms).map_err(|_| TimeoutOutOfRange(timeout))
}
