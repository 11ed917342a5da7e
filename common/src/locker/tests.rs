use super::*;
use crate::label::KeyValue;

const K: Key = Key::BigInt(1);
const K2: Key = Key::BigInt(2);
const X: Mode = Mode::Exclusive;
const S: Mode = Mode::Shared;

fn events(e: &mut Engine) -> Vec<Event> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

fn acq(key: Key, mode: Mode) -> Op {
    Op {
        acquire: true,
        key,
        mode,
    }
}

fn rel(key: Key, mode: Mode) -> Op {
    Op {
        acquire: false,
        key,
        mode,
    }
}

#[test]
fn a_lone_request_goes_out_in_its_own_batch_and_is_granted() {
    let mut e = Engine::new();
    e.request(1, K, X, Attempt::Wait);
    assert_eq!(events(&mut e), vec![]);
    assert_eq!(e.next_batch(), Some(vec![acq(K, X)]));
    assert_eq!(e.next_batch(), None, "one batch on the wire at a time");
    e.batch_done(&[true]);
    assert_eq!(events(&mut e), vec![Event::Granted(1)]);
    assert_eq!(e.session_holds(), vec![(K, X)]);
    e.release(1);
    assert_eq!(e.next_batch(), Some(vec![rel(K, X)]));
    e.batch_done(&[true]);
    assert!(e.is_idle());
}

#[test]
fn callers_arriving_during_a_round_trip_ride_the_next_batch_together() {
    let mut e = Engine::new();
    e.request(1, Key::BigInt(-1), X, Attempt::Wait);
    let first = e.next_batch().unwrap();
    assert_eq!(first.len(), 1);
    for i in 0..1000 {
        e.request(10 + i, Key::BigInt(i as i64), X, Attempt::Wait);
    }
    assert_eq!(e.next_batch(), None);
    e.batch_done(&[true]);
    let second = e.next_batch().unwrap();
    assert_eq!(second.len(), 1000);
    e.batch_done(&vec![true; 1000]);
    assert_eq!(events(&mut e).len(), 1001);
    assert_eq!(e.leases(), 1001);
}

#[test]
fn same_process_contenders_queue_locally_fifo_and_take_the_hold_over_without_a_round_trip() {
    let mut e = Engine::new();
    e.request(1, K, X, Attempt::Wait);
    e.next_batch().unwrap();
    e.batch_done(&[true]);
    events(&mut e);
    e.request(2, K, X, Attempt::Wait);
    e.request(3, K, X, Attempt::Wait);
    e.request(4, K, X, Attempt::Try);
    assert_eq!(events(&mut e), vec![Event::Refused(4)]);
    assert_eq!(e.next_batch(), None, "no round trip for a local contender");
    e.release(1);
    assert_eq!(events(&mut e), vec![Event::Granted(2)]);
    assert_eq!(e.next_batch(), None, "the hold passes from lease to lease");
    e.release(2);
    assert_eq!(events(&mut e), vec![Event::Granted(3)]);
    e.release(3);
    assert_eq!(e.next_batch(), Some(vec![rel(K, X)]));
}

#[test]
fn shared_leases_share_one_hold_and_an_exclusive_waiter_gets_it_after_them() {
    let mut e = Engine::new();
    e.request(1, K, S, Attempt::Wait);
    e.request(2, K, S, Attempt::Wait);
    assert_eq!(e.next_batch(), Some(vec![acq(K, S)]));
    e.batch_done(&[true]);
    assert_eq!(events(&mut e), vec![Event::Granted(1), Event::Granted(2)]);
    e.request(3, K, S, Attempt::Try);
    assert_eq!(events(&mut e), vec![Event::Granted(3)]);
    e.request(4, K, X, Attempt::Wait);
    e.request(5, K, S, Attempt::Try);
    assert_eq!(
        events(&mut e),
        vec![Event::Refused(5)],
        "FIFO: a shared try does not overtake a queued exclusive waiter"
    );
    e.release(1);
    e.release(2);
    assert_eq!(e.next_batch(), None);
    e.release(3);
    assert_eq!(e.next_batch(), Some(vec![rel(K, S)]));
    e.batch_done(&[true]);
    assert_eq!(e.next_batch(), Some(vec![acq(K, X)]));
    e.batch_done(&[true]);
    assert_eq!(events(&mut e), vec![Event::Granted(4)]);
    assert_eq!(e.session_holds(), vec![(K, X)]);
}

#[test]
fn a_contended_key_gets_one_server_wait_however_many_local_waiters() {
    let mut e = Engine::new();
    e.request(1, K, X, Attempt::Try);
    e.request(2, K2, X, Attempt::Wait);
    e.next_batch().unwrap();
    e.batch_done(&[false, false]);
    assert_eq!(events(&mut e), vec![Event::Refused(1)]);
    assert_eq!(e.poll_wait_start(), Some((K2, X)));
    for id in 3..50 {
        e.request(id, K2, X, Attempt::Wait);
    }
    e.request(99, K2, X, Attempt::Try);
    assert_eq!(events(&mut e), vec![Event::Refused(99)]);
    assert_eq!(e.poll_wait_start(), None);
    assert_eq!(e.next_batch(), None, "nothing to try until the wait ends");
    e.wait_done(K2, WaitOutcome::Free);
    assert_eq!(e.next_batch(), Some(vec![acq(K2, X)]));
    // another process took it in between: wait again, still once
    e.batch_done(&[false]);
    assert_eq!(e.poll_wait_start(), Some((K2, X)));
    assert_eq!(e.poll_wait_start(), None);
    e.wait_done(K2, WaitOutcome::Free);
    e.next_batch().unwrap();
    e.batch_done(&[true]);
    assert_eq!(events(&mut e), vec![Event::Granted(2)]);
}

#[test]
fn a_wait_nobody_needs_is_cancelled() {
    let mut e = Engine::new();
    e.request(1, K, X, Attempt::Wait);
    e.request(2, K, X, Attempt::Wait);
    e.next_batch().unwrap();
    e.batch_done(&[false]);
    assert_eq!(e.poll_wait_start(), Some((K, X)));
    e.release(1);
    assert_eq!(e.poll_wait_cancel(), None, "2 still waits");
    e.release(2);
    assert_eq!(e.poll_wait_cancel(), Some(K));
    assert_eq!(e.poll_wait_cancel(), None);
    e.wait_done(K, WaitOutcome::Cancelled);
    assert!(e.is_idle());
}

#[test]
fn a_try_during_a_cancelled_wait_goes_out_once_the_cancel_is_through() {
    let mut e = Engine::new();
    e.request(1, K, X, Attempt::Wait);
    e.next_batch().unwrap();
    e.batch_done(&[false]);
    assert_eq!(e.poll_wait_start(), Some((K, X)));
    e.release(1);
    assert_eq!(e.poll_wait_cancel(), Some(K));
    e.request(2, K, S, Attempt::Try);
    assert_eq!(
        events(&mut e),
        vec![],
        "not refused for our own abandoned wait"
    );
    assert_eq!(e.next_batch(), None, "held until the cancel is through");
    e.wait_done(K, WaitOutcome::Cancelled);
    assert_eq!(e.next_batch(), Some(vec![acq(K, S)]));
    e.batch_done(&[true]);
    assert_eq!(events(&mut e), vec![Event::Granted(2)]);
}

#[test]
fn a_request_withdrawn_while_its_acquire_is_on_the_wire_is_released_after() {
    let mut e = Engine::new();
    e.request(1, K, X, Attempt::Wait);
    e.next_batch().unwrap();
    e.release(1);
    e.batch_done(&[true]);
    assert_eq!(events(&mut e), vec![]);
    assert_eq!(e.next_batch(), Some(vec![rel(K, X)]));
    e.batch_done(&[true]);
    assert!(e.is_idle());
}

#[test]
fn a_release_not_yet_sent_is_taken_back_for_the_next_caller() {
    let mut e = Engine::new();
    e.request(1, K, X, Attempt::Wait);
    e.next_batch().unwrap();
    e.batch_done(&[true]);
    e.release(1);
    e.request(2, K, X, Attempt::Try);
    assert_eq!(events(&mut e), vec![Event::Granted(1), Event::Granted(2)]);
    assert_eq!(e.next_batch(), None);
}

#[test]
fn a_lost_session_loses_its_leases_and_retries_the_queued_requests() {
    let mut e = Engine::new();
    e.request(1, K, X, Attempt::Wait);
    e.next_batch().unwrap();
    e.batch_done(&[true]);
    e.request(2, K, X, Attempt::Wait);
    e.request(3, K2, S, Attempt::Wait);
    e.next_batch().unwrap(); // K2 on the wire
    events(&mut e);
    let mut lost = e.session_lost();
    lost.sort();
    assert_eq!(lost, vec![1]);
    e.release(1); // the user drops the lost lease: nothing to do
    let mut next = e.next_batch().unwrap();
    next.sort_by_key(|o| o.key);
    assert_eq!(next, vec![acq(K, X), acq(K2, S)]);
    e.batch_done(&[true, true]);
    assert_eq!(events(&mut e).len(), 2);
}

#[test]
fn a_failed_batch_fails_its_acquires_and_releases_what_the_server_kept() {
    let mut e = Engine::new();
    e.request(1, K, X, Attempt::Wait);
    e.request(2, K2, X, Attempt::Wait);
    let b = e.next_batch().unwrap();
    assert_eq!(b.len(), 2);
    e.batch_failed(ErrorKind::LockTableFull, &[true, false]);
    let ev = events(&mut e);
    assert!(ev.contains(&Event::Failed(1, ErrorKind::LockTableFull)));
    assert!(ev.contains(&Event::Failed(2, ErrorKind::LockTableFull)));
    assert_eq!(e.next_batch(), Some(vec![rel(K, X)]));
    e.batch_done(&[true]);
    assert!(e.is_idle());
}

#[test]
fn the_batch_encoding_marks_mode_space_and_direction() {
    let ops = [
        acq(Key::BigInt(5), X),
        rel(Key::Pair(-1, 2), S),
        acq(Key::name("x"), S),
    ];
    let (c, k, a, b) = sql::encode(&ops);
    assert_eq!(c, vec![1, 6, 3]);
    assert_eq!(k[0], 5);
    assert_eq!((a[1], b[1]), (-1, 2));
    assert_eq!(
        k[2],
        match Key::name("x").value() {
            KeyValue::BigInt(v) => v,
            KeyValue::Pair(..) => unreachable!(),
        }
    );
}

#[test]
fn ops_taken_back_and_scheduled_again_go_out_once_and_batches_split_at_the_limit() {
    let mut e = Engine::new();
    // K: an acquire scheduled, withdrawn (its pending entry goes stale), scheduled again
    e.request(1, K, X, Attempt::Wait);
    e.release(1);
    e.request(2, K, X, Attempt::Wait);
    // K2: an unlock scheduled, taken back by a caller of the same mode, scheduled again
    e.request(3, K2, X, Attempt::Wait);
    assert_eq!(e.next_batch(), Some(vec![acq(K, X), acq(K2, X)]));
    e.batch_done(&[true, true]);
    e.release(3);
    e.request(4, K2, X, Attempt::Wait); // takes the hold back: no op
    e.release(4);
    e.release(2);
    assert_eq!(
        e.next_batch(),
        Some(vec![rel(K, X), rel(K2, X)]),
        "each key once"
    );
    e.batch_done(&[true, true]);
    assert_eq!(e.next_batch(), None, "stale entries make no batch");
    assert!(e.is_idle());
    // more keys than one statement carries: the rest goes next, each key exactly once
    let n = MAX_BATCH + 10;
    for i in 0..n {
        e.request(100 + i as u64, Key::BigInt(i as i64), X, Attempt::Wait);
    }
    e.release(100); // a stale entry among them
    let first = e.next_batch().unwrap();
    assert_eq!(first.len(), MAX_BATCH);
    e.batch_done(&vec![true; first.len()]);
    let second = e.next_batch().unwrap();
    assert_eq!(second.len(), n - 1 - MAX_BATCH);
    let mut all: Vec<Key> = first.iter().chain(&second).map(|op| op.key).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n - 1);
    e.batch_done(&vec![true; second.len()]);
    assert_eq!(e.leases(), n - 1);
}
