//! The adapters' lock methods, declared and implemented from one list.
//!
//! Every adapter's `LockExt` / `XactLockExt` has the same six methods (exclusive or shared; wait,
//! try, or wait at most a timeout), and each only converts the key and calls one function of the
//! adapter with the [`Wait`](crate::sql::Wait) it stands for. These macros write the signatures
//! and those bodies, so the adapters differ only in their docs and in the function they forward
//! to; a trait and its impls cannot drift apart.
//!
//! * `__lock_methods! { decl async Error; /** docs */ advisory_lock; .. }` declares the named
//!   methods inside a trait, with their docs (`async`: returning `impl Future + Send`; `sync`:
//!   returning the result). Each method's parameters and result come from the one table at the top
//!   of the macro (`@with`): the `try_` forms return `Option<Self::Guard>`, the `_timeout` forms take
//!   a `Duration`.
//! * `__lock_methods!(async acquire, Error)` implements the six session-scope methods, forwarding
//!   to `acquire(self, key, mode, wait, timeout) -> Result<Option<Self::Guard>, Error>` (a future
//!   for `async`).
//! * `__xact_methods!` does the same for the six transaction-scope methods (`()` or, for `try_`,
//!   `bool`), forwarding to `xact(self, key, mode, wait, timeout) -> Result<bool, Error>`.
//!
//! The key is converted before any future is built, so the future does not hold the caller's
//! `impl Into<Key>`. Not part of the public API.

/// A waiting acquire either grants the lock or fails: `None` only comes from a `try_`.
#[doc(hidden)]
pub fn granted<G>(guard: Option<G>) -> G {
    guard.expect("a waiting acquire either grants the lock or fails")
}

/// See the [module docs](crate::protocol) (`methods`).
#[doc(hidden)]
#[macro_export]
macro_rules! __lock_methods {
    // The table: each method's timeout parameter (if any), what it returns, and the mode and
    // wait it asks for. Calls back with that appended in brackets.
    (@with advisory_lock, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [advisory_lock() -> Guard, Exclusive, Block]); };
    (@with advisory_lock_shared, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [advisory_lock_shared() -> Guard, Shared, Block]); };
    (@with try_advisory_lock, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [try_advisory_lock() -> Option, Exclusive, Try]); };
    (@with try_advisory_lock_shared, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [try_advisory_lock_shared() -> Option, Shared, Try]); };
    (@with advisory_lock_timeout, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [advisory_lock_timeout(timeout) -> Guard, Exclusive, Timeout]); };
    (@with advisory_lock_shared_timeout, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [advisory_lock_shared_timeout(timeout) -> Guard, Shared, Timeout]); };
    (@with xact_lock, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [xact_lock() -> Unit, Exclusive, Block]); };
    (@with xact_lock_shared, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [xact_lock_shared() -> Unit, Shared, Block]); };
    (@with try_xact_lock, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [try_xact_lock() -> Bool, Exclusive, Try]); };
    (@with try_xact_lock_shared, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [try_xact_lock_shared() -> Bool, Shared, Try]); };
    (@with xact_lock_timeout, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [xact_lock_timeout(timeout) -> Unit, Exclusive, Timeout]); };
    (@with xact_lock_shared_timeout, $($cb:tt)*) => { $crate::__lock_methods!($($cb)* [xact_lock_shared_timeout(timeout) -> Unit, Shared, Timeout]); };
    // A declaration (in a trait), with its docs.
    (@decl $flavor:ident $error:ty; $docs:tt
        [$name:ident($($timeout:ident)?) -> $out:ident, $mode:ident, $wait:ident]) => {
        $crate::__lock_methods!(@sig $flavor $error; [self key] $docs $name($($timeout)?) -> $out ;);
    };
    // An implementation (in an impl), forwarding to `$acquire`.
    (@impl $flavor:ident $acquire:path, $error:ty;
        [$name:ident($($timeout:ident)?) -> $out:ident, $mode:ident, $wait:ident]) => {
        $crate::__lock_methods!(@sig $flavor $error; [self key] [] $name($($timeout)?) -> $out {
            let call = $acquire(
                self,
                key.into(),
                $crate::LockMode::$mode,
                $crate::sql::Wait::$wait,
                $crate::__lock_methods!(@timeout $($timeout)?),
            );
            $crate::__lock_methods!(@finish $flavor $out, call)
        });
    };
    // One signature, then `;` (a declaration) or the body. `self` and `key` come from the caller's
    // arm, so that a body written there can use them (macro hygiene).
    (@sig $flavor:ident $error:ty; [$self:ident $key:ident] [$(#[$doc:meta])*]
        $name:ident($($timeout:ident)?) -> $out:ident $end:tt) => {
        $(#[$doc])*
        fn $name(
            $self,
            $key: impl ::core::convert::Into<$crate::Key>,
            $($timeout: ::std::time::Duration,)?
        ) -> $crate::__lock_methods!(@ret $flavor $error, $out) $end
    };
    (@ret async $error:ty, $out:ident) => {
        impl ::core::future::Future<
            Output = ::core::result::Result<$crate::__lock_methods!(@out $out), $error>,
        > + Send
    };
    (@ret sync $error:ty, $out:ident) => {
        ::core::result::Result<$crate::__lock_methods!(@out $out), $error>
    };
    (@out Guard) => { Self::Guard };
    (@out Option) => { ::core::option::Option<Self::Guard> };
    (@out Unit) => { () };
    (@out Bool) => { bool };
    // A `try_` form returns the forwarded future itself (nothing to map).
    (@finish async Option, $call:ident) => { $call };
    (@finish async Bool, $call:ident) => { $call };
    (@finish async $out:ident, $call:ident) => {
        async move { $crate::__lock_methods!(@map $out, $call.await) }
    };
    (@finish sync $out:ident, $call:ident) => { $crate::__lock_methods!(@map $out, $call) };
    (@map Guard, $result:expr) => { $result.map($crate::protocol::granted) };
    (@map Unit, $result:expr) => { $result.map(drop) };
    (@map $out:ident, $result:expr) => { $result };
    (@timeout) => { ::core::option::Option::None };
    (@timeout $timeout:ident) => { ::core::option::Option::Some($timeout) };
    // The trait's declarations: `decl async Error;` then each method's docs and name.
    (decl $flavor:ident $error:ty; $($(#[$doc:meta])* $name:ident;)*) => {$(
        $crate::__lock_methods!(@with $name, @decl $flavor $error; [$(#[$doc])*]);
    )*};
    // The six session-scope implementations: `async acquire, Error`.
    ($flavor:ident $acquire:path, $error:ty) => {
        $crate::__lock_methods!(@impls $flavor $acquire, $error; advisory_lock advisory_lock_shared
            try_advisory_lock try_advisory_lock_shared advisory_lock_timeout advisory_lock_shared_timeout);
    };
    (@impls $flavor:ident $acquire:path, $error:ty; $($name:ident)*) => {$(
        $crate::__lock_methods!(@with $name, @impl $flavor $acquire, $error;);
    )*};
}

/// See the [module docs](crate::protocol) (`methods`).
#[doc(hidden)]
#[macro_export]
macro_rules! __xact_methods {
    (decl $($rest:tt)*) => { $crate::__lock_methods!(decl $($rest)*); };
    ($flavor:ident $xact:path, $error:ty) => {
        $crate::__lock_methods!(@impls $flavor $xact, $error; xact_lock xact_lock_shared
            try_xact_lock try_xact_lock_shared xact_lock_timeout xact_lock_shared_timeout);
    };
}
