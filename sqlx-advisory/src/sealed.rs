//! The extension traits are implemented for this crate's connection and pool types only (a
//! sealed supertrait), as in `diesel-advisory`: new methods can be added without breaking anyone.

/// Implemented for the types the extension traits are implemented for, and nothing else.
pub trait Sealed {}

impl Sealed for &sqlx::PgPool {}
impl Sealed for &mut sqlx::PgConnection {}
