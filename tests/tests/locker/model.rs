//! Random sequences over leases (wait / try / timed, exclusive / shared, lock_all, release, drop,
//! cancellation at a random poll), a contender in another session, and session death
//! (`pg_terminate_backend`). A model says what the locker's session and the contender should hold;
//! after every step it is compared with `pg_locks` read on an independent session, and every
//! answer (granted, refused, timed out) must agree with the model: no two conflicting leases,
//! nothing held that no live lease owns, no live lease's hold missing, every lost lease told.
//!
//! Each sequence prints its seed; `ADVISORY_LOCKER_SEED=<seed>` replays it (timing-dependent
//! outcomes such as where a cancellation lands may differ), `ADVISORY_LOCKER_SEQUENCES=<n>` soaks.

/// The same sequences for each adapter's locker (the contender is a sqlx pool guard).
macro_rules! model {
    ($name:ident, $krate:ident, $make:ident) => {
        mod $name {
        use std::collections::BTreeSet;
        use std::time::Duration;

        use advisory_common::{Key, LockMode};
        use advisory_tests::unique_key;
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        use sqlx::PgPool;
        use sqlx_advisory::PoolLockGuard;
        use sqlx_advisory::prelude::*;
        use $krate::{Error, Lease, Locker};

        use super::super::support::*;

        const OPS: usize = 50;

        fn seeds() -> Vec<u64> {
            if let Ok(s) = std::env::var("ADVISORY_LOCKER_SEED") {
                return vec![s.parse().expect("ADVISORY_LOCKER_SEED is a u64")];
            }
            let n = std::env::var("ADVISORY_LOCKER_SEQUENCES")
                .map(|s| s.parse().expect("a number"))
                .unwrap_or(6);
            (0..n).map(|_| rand::random::<u64>() >> 12).collect()
        }

        struct World {
            rng: StdRng,
            app: String,
            locker: Locker,
            keys: Vec<Key>,
            /// live leases: (lease, key, shared); lost ones are kept until dropped, flagged
            leases: Vec<(Lease, Key, bool, bool)>,
            pool: PgPool,
            contender: Vec<(PoolLockGuard, Key, bool)>,
        }

        fn conflicts(a_shared: bool, b_shared: bool) -> bool {
            !(a_shared && b_shared)
        }

        impl World {
            /// Would a new request for `key` in this mode be granted now (locally and against the
            /// contender)?
            fn grantable(&self, key: Key, shared: bool) -> bool {
                !self
                    .leases
                    .iter()
                    .any(|(_, k, s, lost)| !lost && *k == key && conflicts(*s, shared))
                    && !self
                        .contender
                        .iter()
                        .any(|(_, k, s)| *k == key && conflicts(*s, shared))
            }

            fn expected(&self) -> BTreeSet<(Key, String, bool)> {
                let mut e = BTreeSet::new();
                for (_, k, s, lost) in &self.leases {
                    if !lost {
                        e.insert((*k, self.app.clone(), *s));
                    }
                }
                for (_, k, s) in &self.contender {
                    e.insert((*k, "contender".to_owned(), *s));
                }
                e
            }

            async fn check(&self, step: usize, what: &str) {
                let expected = self.expected();
                let seen = until(&self.keys, Duration::from_secs(5), "the model's holds", {
                    let expected = expected.clone();
                    let app = self.app.clone();
                    move |rows| {
                        let got: BTreeSet<_> = rows
                            .iter()
                            .map(|l| {
                                let who = if l.application_name.as_deref() == Some(app.as_str()) {
                                    app.clone()
                                } else {
                                    "contender".to_owned()
                                };
                                (l.key, who, l.mode == LockMode::Shared)
                            })
                            .collect();
                        rows.iter().all(|l| l.granted) && got == expected
                    }
                });
                let seen = tokio::time::timeout(Duration::from_secs(10), seen).await;
                assert!(
                    seen.is_ok(),
                    "step {step} ({what}): pg_locks never matched {expected:#?}"
                );
            }
        }

        async fn sequence(seed: u64) {
            let url = advisory_tests::db().url_with_app("contender");
            let app = app("locker-model");
            let mut w = World {
                rng: StdRng::seed_from_u64(seed),
                locker: $make(&app),
                app,
                keys: (0..3).map(|_| unique_key()).collect(),
                leases: Vec::new(),
                pool: PgPool::connect(&url).await.unwrap(),
                contender: Vec::new(),
            };
            for step in 0..OPS {
                let key = w.keys[w.rng.gen_range(0..w.keys.len())];
                let shared = w.rng.gen_bool(0.35);
                let op = w.rng.gen_range(0..100);
                let what;
                match op {
                    0..=19 => {
                        what = "lock (timed)";
                        let ok = w.grantable(key, shared);
                        let d = Duration::from_millis(if ok { 5_000 } else { 120 });
                        let r = if shared {
                            w.locker.lock_shared_timeout(key, d).await
                        } else {
                            w.locker.lock_timeout(key, d).await
                        };
                        match (r, ok) {
                            (Ok(l), true) => w.leases.push((l, key, shared, false)),
                            (Err(Error::Timeout { .. }), false) => {}
                            (r, ok) => panic!(
                                "step {step}: lock {key} shared={shared}: {r:?}, model says grantable={ok}"
                            ),
                        }
                    }
                    20..=39 => {
                        what = "try_lock";
                        let ok = w.grantable(key, shared);
                        let r = if shared {
                            w.locker.try_lock_shared(key).await
                        } else {
                            w.locker.try_lock(key).await
                        };
                        match (r, ok) {
                            (Ok(Some(l)), true) => w.leases.push((l, key, shared, false)),
                            (Ok(None), false) => {}
                            (r, ok) => panic!(
                                "step {step}: try_lock {key} shared={shared}: {r:?}, model says grantable={ok}"
                            ),
                        }
                    }
                    40..=54 if !w.leases.is_empty() => {
                        let i = w.rng.gen_range(0..w.leases.len());
                        let (l, _, _, lost) = w.leases.swap_remove(i);
                        if w.rng.gen_bool(0.5) {
                            what = "release";
                            let r = l.release().await;
                            assert_eq!(
                                r.is_ok(),
                                !lost,
                                "step {step}: release of a lease lost={lost}: {r:?}"
                            );
                        } else {
                            what = "drop";
                            drop(l);
                        }
                    }
                    55..=69 => {
                        what = "lock cancelled at a random poll";
                        let d = Duration::from_micros(w.rng.gen_range(0..4000));
                        let ok = w.grantable(key, shared);
                        let r = tokio::time::timeout(d, async {
                            if shared {
                                w.locker.lock_shared(key).await
                            } else {
                                w.locker.lock(key).await
                            }
                        })
                        .await;
                        match r {
                            Ok(Ok(l)) => {
                                assert!(ok, "step {step}: granted against the model");
                                w.leases.push((l, key, shared, false));
                            }
                            Ok(Err(e)) => panic!("step {step}: {e:?}"),
                            Err(_) => {
                                // The withdrawn request may still be on the wire and be granted
                                // after the check below has already seen nothing held. A round
                                // trip through the locker behind it (FIFO: its release goes out
                                // first, in the same batch at the latest) settles it, so the
                                // check and the next step see its release, not a race with it.
                                let settle = w.locker.try_lock(unique_key()).await.unwrap();
                                drop(settle);
                            }
                        }
                    }
                    70..=79 => {
                        what = "lock_all (timed)";
                        let mut ks: Vec<Key> = w
                            .keys
                            .iter()
                            .copied()
                            .filter(|_| w.rng.gen_bool(0.6))
                            .collect();
                        ks.push(key);
                        ks.sort();
                        ks.dedup();
                        let ok = ks.iter().all(|k| w.grantable(*k, false));
                        let d = Duration::from_millis(if ok { 5_000 } else { 120 });
                        match (w.locker.lock_all_timeout(ks.clone(), d).await, ok) {
                            (Ok(ls), true) => {
                                for l in ls {
                                    let k = l.key();
                                    w.leases.push((l, k, false, false));
                                }
                            }
                            (Err(Error::Timeout { .. }), false) => {}
                            (r, ok) => panic!("step {step}: lock_all {ks:?}: {r:?}, model says {ok}"),
                        }
                    }
                    80..=91 => {
                        if !w.contender.is_empty() && w.rng.gen_bool(0.5) {
                            what = "contender releases";
                            let i = w.rng.gen_range(0..w.contender.len());
                            let (g, _, _) = w.contender.swap_remove(i);
                            g.release().await.unwrap();
                        } else {
                            what = "contender try_lock";
                            let ok = w.grantable(key, shared);
                            let g = if shared {
                                w.pool.try_advisory_lock_shared(key).await.unwrap()
                            } else {
                                w.pool.try_advisory_lock(key).await.unwrap()
                            };
                            match (g, ok) {
                                (Some(g), true) => w.contender.push((g, key, shared)),
                                (None, false) => {}
                                (g, ok) => panic!("step {step}: contender got={} model={ok}", g.is_some()),
                            }
                        }
                    }
                    _ => {
                        what = "session backend terminated";
                        let live: Vec<Key> = w.leases.iter().filter(|l| !l.3).map(|l| l.1).collect();
                        if let Some(k) = live.first() {
                            let rows = locks(&[*k]).await;
                            let pid = rows
                                .iter()
                                .find(|l| l.application_name.as_deref() == Some(w.app.as_str()))
                                .expect("the locker's hold")
                                .pid;
                            terminate(pid).await;
                            for (l, _, _, lost) in w.leases.iter_mut() {
                                if !*lost {
                                    tokio::time::timeout(Duration::from_secs(1), l.lost())
                                        .await
                                        .unwrap_or_else(|_| panic!("step {step}: lost() within 1 s"));
                                    *lost = true;
                                }
                            }
                        }
                    }
                }
                if std::env::var_os("ADVISORY_LOCKER_TRACE").is_some() {
                    eprintln!("step {step}: {what} key#{} shared={shared}", w.keys.iter().position(|k| *k == key).unwrap());
                }
                w.check(step, what).await;
            }
            w.leases.clear();
            w.contender.clear();
            w.check(OPS, "everything dropped").await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn random_sequences_agree_with_the_model_and_pg_locks() {
            for seed in seeds() {
                eprintln!("{} locker model: seed={seed}", stringify!($krate));
                sequence(seed).await;
            }
        }
        }
    };
}

model!(sqlx, sqlx_advisory, locker);
model!(diesel_async, diesel_advisory, dlocker);
