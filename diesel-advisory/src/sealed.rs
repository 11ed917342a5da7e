//! The extension traits are implemented for this crate's connection and pool types only (a
//! sealed supertrait), as in `sqlx-advisory`: new methods can be added without breaking anyone.

/// Implemented for the types the extension traits are implemented for, and nothing else.
pub trait Sealed {}

#[cfg(feature = "sync")]
impl Sealed for &mut diesel::PgConnection {}
#[cfg(feature = "r2d2")]
impl Sealed for &diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<diesel::PgConnection>> {}

#[cfg(feature = "async")]
impl Sealed for &mut diesel_async::AsyncPgConnection {}
#[cfg(feature = "bb8")]
impl Sealed for &diesel_async::pooled_connection::bb8::Pool<diesel_async::AsyncPgConnection> {}
#[cfg(feature = "deadpool")]
impl Sealed for &diesel_async::pooled_connection::deadpool::Pool<diesel_async::AsyncPgConnection> {}
