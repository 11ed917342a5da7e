//! Guards that own a pooled connection.

#[cfg(feature = "bb8")]
pub(crate) mod bb8;
#[cfg(any(feature = "bb8", feature = "deadpool"))]
pub(crate) mod checkout;
#[cfg(feature = "deadpool")]
pub(crate) mod deadpool;
#[cfg(feature = "r2d2")]
pub(crate) mod r2d2;
