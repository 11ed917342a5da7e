//! The adapters' lock methods, declared and implemented from one list.
//!
//! Every adapter's `LockExt` / `XactLockExt` has the same six methods (exclusive or shared; wait,
//! try, or wait at most a timeout), and each only converts the key and calls one function of the
//! adapter with the [`Wait`](crate::sql::Wait) it stands for. These macros write the signatures
//! and those bodies, so the adapters differ only in their docs and in the function they forward
//! to; a trait and its impls cannot drift apart.
//!
//! * `__lock_methods! { decl async Error; /** docs */ advisory_lock(Exclusive, Block) -> Guard; .. }`
//!   declares session-scope methods inside a trait (`async`: returning `impl Future + Send`;
//!   `sync`: returning the result). `-> Guard` returns `Self::Guard`, `-> Option` returns
//!   `Option<Self::Guard>` (the `try_` forms); a third name in the parentheses adds that
//!   `Duration` parameter.
//! * `__lock_methods!(async acquire, Error)` implements the six of them, forwarding to
//!   `acquire(self, key, mode, wait, timeout) -> Result<Option<Self::Guard>, Error>` (a future
//!   for `async`).
//! * `__xact_methods!` does the same for the transaction-scope methods (`-> Unit`, `-> Bool`),
//!   forwarding to `xact(self, key, mode, wait, timeout) -> Result<bool, Error>`.
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
    // One signature, then `;` (a declaration) or the body. `self` and `key` come from the caller's
    // arm, so that a body written there can use them (macro hygiene).
    (@sig async $error:ty; [$self:ident $key:ident] [$(#[$doc:meta])*]
        $name:ident($($timeout:ident)?) -> $out:ident $end:tt) => {
        $(#[$doc])*
        fn $name(
            $self,
            $key: impl ::core::convert::Into<$crate::Key>,
            $($timeout: ::std::time::Duration,)?
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<$crate::__lock_methods!(@out $out), $error>,
        > + Send $end
    };
    (@sig sync $error:ty; [$self:ident $key:ident] [$(#[$doc:meta])*]
        $name:ident($($timeout:ident)?) -> $out:ident $end:tt) => {
        $(#[$doc])*
        fn $name(
            $self,
            $key: impl ::core::convert::Into<$crate::Key>,
            $($timeout: ::std::time::Duration,)?
        ) -> ::core::result::Result<$crate::__lock_methods!(@out $out), $error> $end
    };
    (@impl $flavor:ident $acquire:path, $error:ty;
        $($name:ident($mode:ident, $wait:ident $(, $timeout:ident)?) -> $out:ident;)*) => {$(
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
    )*};
    (@out Guard) => { Self::Guard };
    (@out Option) => { ::core::option::Option<Self::Guard> };
    (@out Unit) => { () };
    (@out Bool) => { bool };
    (@finish async $out:ident, $call:ident) => {
        async move { $crate::__lock_methods!(@map $out, $call.await) }
    };
    (@finish sync $out:ident, $call:ident) => { $crate::__lock_methods!(@map $out, $call) };
    (@map Guard, $result:expr) => { $result.map($crate::protocol::granted) };
    (@map Unit, $result:expr) => { $result.map(drop) };
    (@map $out:ident, $result:expr) => { $result };
    (@timeout) => { ::core::option::Option::None };
    (@timeout $timeout:ident) => { ::core::option::Option::Some($timeout) };
    // Declarations (in a trait), each with its docs.
    (decl $flavor:ident $error:ty; $($(#[$doc:meta])*
        $name:ident($mode:ident, $wait:ident $(, $timeout:ident)?) -> $out:ident;)*) => {$(
        $crate::__lock_methods!(@sig $flavor $error; [self key] [$(#[$doc])*] $name($($timeout)?) -> $out ;);
    )*};
    // The six implementations (in an impl).
    ($flavor:ident $acquire:path, $error:ty) => {
        $crate::__lock_methods!(@impl $flavor $acquire, $error;
            advisory_lock(Exclusive, Block) -> Guard;
            advisory_lock_shared(Shared, Block) -> Guard;
            try_advisory_lock(Exclusive, Try) -> Option;
            try_advisory_lock_shared(Shared, Try) -> Option;
            advisory_lock_timeout(Exclusive, Timeout, timeout) -> Guard;
            advisory_lock_shared_timeout(Shared, Timeout, timeout) -> Guard;
        );
    };
}

/// See the [module docs](crate::protocol) (`methods`).
#[doc(hidden)]
#[macro_export]
macro_rules! __xact_methods {
    (decl $($rest:tt)*) => { $crate::__lock_methods!(decl $($rest)*); };
    ($flavor:ident $xact:path, $error:ty) => {
        $crate::__lock_methods!(@impl $flavor $xact, $error;
            xact_lock(Exclusive, Block) -> Unit;
            xact_lock_shared(Shared, Block) -> Unit;
            try_xact_lock(Exclusive, Try) -> Bool;
            try_xact_lock_shared(Shared, Try) -> Bool;
            xact_lock_timeout(Exclusive, Timeout, timeout) -> Unit;
            xact_lock_shared_timeout(Shared, Timeout, timeout) -> Unit;
        );
    };
}
