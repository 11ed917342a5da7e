//! Issue 5: PostgreSQL's re-entrancy. Two guards for the same key on one connection are two
//! holds; each releases one, independently, by `release()` or by drop.

use advisory_tests::unique_key;
use sqlx_advisory::prelude::*;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_guards_on_one_connection_release_independently() {
    let key = unique_key();
    let p = pool(2).await;
    for by_drop in [false, true] {
        let mut outer = p.advisory_lock(key).await.unwrap();
        let my_pid = pid(&mut outer).await;
        // the second hold is taken through the first guard (it derefs to the connection)
        let inner = outer.advisory_lock(key).await.unwrap();
        assert_eq!(holders(key).await, vec![my_pid]);
        if by_drop {
            drop(inner);
        } else {
            inner.release().await.unwrap();
        }
        // one hold left: still held, as the server says, and still excluding others
        assert!(outer.is_held().await.unwrap());
        assert!(p.try_advisory_lock(key).await.unwrap().is_none());
        assert_eq!(holders(key).await, vec![my_pid]);
        if by_drop {
            drop(outer);
        } else {
            outer.release().await.unwrap();
        }
        assert_no_locks(&[key], SOON).await;
    }

    // shared and exclusive holds of one key on one session are separate locks too
    let mut c = conn().await;
    let mut ex = c.advisory_lock(key).await.unwrap();
    let sh = ex.advisory_lock_shared(key).await.unwrap();
    assert!(sh.is_shared());
    assert_eq!(granted(key).await.len(), 2);
    drop(sh);
    let rows = wait_until(&[key], SOON, "only the exclusive hold", |r| r.len() == 1).await;
    assert_eq!(rows[0].mode, advisory_common::LockMode::Exclusive);
    ex.release().await.unwrap();
    assert_no_locks(&[key], SOON).await;
}
