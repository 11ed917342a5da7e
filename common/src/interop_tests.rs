//! Test vectors for the other ecosystems' derivations. Each expected value was computed
//! independently of this crate, with python3's `hashlib` / `zlib` / `struct` transcribing the cited
//! source line by line (and, for npm advisory-lock, the package's own test vectors).

use super::*;
use crate::label::KeyValue;

#[test]
fn node_advisory_lock_vectors() {
    // olalonde/advisory-lock src/test/index.test.js, after and before the 1.1.1 fix
    assert_eq!(
        Key::node_advisory_lock("test-lock"),
        Key::Pair(-107789403, -1898803861)
    );
    assert_eq!(
        Key::node_advisory_lock_1_0("test-lock"),
        Key::Pair(-107789403, 1811518275)
    );
    assert_eq!(
        Key::node_advisory_lock("orders:42"),
        Key::Pair(2099339146, 60755163)
    );
    assert_eq!(
        Key::node_advisory_lock(""),
        Key::Pair(1120186595, 337443992)
    );
    assert_eq!(
        Key::node_advisory_lock("héllo wörld"),
        Key::Pair(2101280929, 1460773892)
    );
    assert_eq!(
        Key::node_advisory_lock_1_0("orders:42"),
        Key::Pair(2099339146, -612556449)
    );
}

#[test]
fn django_pglock_vectors() {
    assert_eq!(
        Key::django_pglock("test-lock"),
        Key::BigInt(-8155300480326351963)
    );
    assert_eq!(
        Key::django_pglock("orders:42"),
        Key::BigInt(260941440247488394)
    );
    assert_eq!(Key::django_pglock(""), Key::BigInt(1449310910991872227));
    // a numeric string is hashed, not parsed
    assert_eq!(Key::django_pglock("42"), Key::BigInt(-8246559263693191309));
    assert_eq!(
        Key::django_pglock("héllo wörld"),
        Key::BigInt(6273976095091916961)
    );
}

#[test]
fn with_advisory_lock_vectors() {
    assert_eq!(
        Key::with_advisory_lock("test-lock", None),
        Key::Pair(31720046, 0)
    );
    assert_eq!(
        Key::with_advisory_lock("orders:42", None),
        Key::Pair(218055877, 0)
    );
    assert_eq!(Key::with_advisory_lock("", None), Key::Pair(0, 0));
    // "42" is a String in Ruby, so it is hashed like any other name
    assert_eq!(Key::with_advisory_lock("42", None), Key::Pair(841265288, 0));
    // zlib.crc32(b"app") = 0xc96e70cf: the top bit is dropped (& 0x7fffffff)
    assert_eq!(
        Key::with_advisory_lock("app", None),
        Key::Pair(0x496e70cf, 0)
    );
    assert_eq!(
        Key::with_advisory_lock("héllo wörld", None),
        Key::Pair(354246585, 0)
    );
}

#[test]
fn with_advisory_lock_prefix_is_read_like_ruby_to_i() {
    let k2 = |p: &str| match Key::with_advisory_lock("x", Some(p)).value() {
        KeyValue::Pair(_, k2) => k2,
        KeyValue::BigInt(_) => unreachable!(),
    };
    // ruby -e 'p "12".to_i & 0x7fffffff' and friends
    assert_eq!(k2("12"), 12);
    assert_eq!(k2("  12abc"), 12);
    assert_eq!(k2("+7"), 7);
    assert_eq!(k2("1_000"), 1000);
    assert_eq!(k2("1__2"), 1);
    assert_eq!(k2("_12"), 0);
    assert_eq!(k2("abc"), 0);
    assert_eq!(k2(""), 0);
    assert_eq!(k2("0x10"), 0);
    assert_eq!(k2("-1"), 0x7fff_ffff);
    assert_eq!(k2("2147483648"), 0);
    assert_eq!(k2("2147483649"), 1);
    // 2**64 + 5: Ruby integers are unbounded, & keeps the low 31 bits
    assert_eq!(k2("18446744073709551621"), 5);
    assert_eq!(k2("-2147483649"), 0x7fff_ffff);
}

#[test]
fn distributed_lock_ascii_packing() {
    // python3 port of TryEncodeAscii, split into (high, low) int32
    assert_eq!(Key::distributed_lock(""), Key::Pair(2147483647, -1));
    assert_eq!(Key::distributed_lock("a"), Key::Pair(-1023410177, -1));
    assert_eq!(
        Key::distributed_lock("orders:42"),
        Key::Pair(-540334498, 1558000740)
    );
    // 9 digits are ASCII first, never parsed as a number
    assert_eq!(
        Key::distributed_lock("123456789"),
        Key::Pair(1657379654, -1382303630)
    );
    // distinct lengths with NUL padding do not collide
    assert_ne!(Key::distributed_lock("\0"), Key::distributed_lock(""));
}

#[test]
fn distributed_lock_hex_forms() {
    assert_eq!(
        Key::distributed_lock("7fffffffffffffff"),
        Key::BigInt(i64::MAX)
    );
    assert_eq!(Key::distributed_lock("FFFFFFFFFFFFFFFF"), Key::BigInt(-1));
    assert_eq!(
        Key::distributed_lock("8000000000000000"),
        Key::BigInt(i64::MIN)
    );
    assert_eq!(
        Key::distributed_lock("80000000,00000001"),
        Key::Pair(i32::MIN, 1)
    );
    // not hex, or a sign / prefix / space: falls through to hashing
    for name in [
        "0x00000000000001",
        "+000000000000001",
        " 00000000000001f",
        "0000000g00000001",
        "00000001;00000001",
    ] {
        assert_eq!(Key::distributed_lock_unhashed(name), None, "{name}");
        assert!(matches!(
            Key::distributed_lock(name).value(),
            KeyValue::BigInt(_)
        ));
    }
}

#[test]
fn distributed_lock_sha1_fallback() {
    // 9 ASCII characters are packed, 10 are hashed
    assert_eq!(
        Key::distributed_lock("test-lock"),
        Key::Pair(-375939259, -1153965098)
    );
    assert_eq!(
        Key::distributed_lock("orders:420"),
        Key::BigInt(-7999460695256684623)
    );
    assert_eq!(
        Key::distributed_lock("héllo wörld"),
        Key::BigInt(-8430941393455290076)
    );
    // 5 characters but not ASCII: hashed
    assert_eq!(Key::distributed_lock_unhashed("héllo"), None);
    assert_eq!(Key::distributed_lock_unhashed("orders:420"), None);
}
