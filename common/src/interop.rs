//! The string → key derivations of other ecosystems' advisory-lock libraries, each implemented
//! from that library's source (cited next to it), so a Rust service and, say, a Rails app lock the
//! same key for the same name. [`Preset`](crate::Preset) names them; these are the functions.

use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::crc32::crc32;
use crate::key::Key;

impl Key {
    /// The key Ruby's [with_advisory_lock](https://github.com/ClosureTree/with_advisory_lock) gem
    /// uses on PostgreSQL for a string lock name, given the value of its `WITH_ADVISORY_LOCK_PREFIX`
    /// environment variable (`None` when unset).
    ///
    /// Source: `ClosureTree/with_advisory_lock`, `lib/with_advisory_lock/postgresql_advisory.rb`
    /// (`lock_keys_for`) and `lib/with_advisory_lock/core_advisory.rb` (`stable_hashcode`):
    /// `[Zlib.crc32(name), ENV['WITH_ADVISORY_LOCK_PREFIX']].map { |ea| ea.to_i & 0x7fffffff }`,
    /// passed as `pg_advisory_lock(int, int)`. So the pair is (CRC-32 of the UTF-8 bytes, low 31
    /// bits; the prefix read with Ruby's `String#to_i`, low 31 bits). A numeric-looking name such as
    /// `"42"` is hashed like any other string (only a Ruby `Integer` passes through, which a `&str`
    /// never is); a prefix that is not a number counts as 0, like `"abc".to_i`.
    ///
    /// ```
    /// use advisory_common::Key;
    /// // Zlib.crc32("hello") = 0x3610a686
    /// assert_eq!(Key::with_advisory_lock("hello", None), Key::Pair(0x3610a686, 0));
    /// assert_eq!(Key::with_advisory_lock("hello", Some("7")), Key::Pair(0x3610a686, 7));
    /// ```
    pub fn with_advisory_lock(name: &str, prefix: Option<&str>) -> Key {
        let k1 = crc32(name.as_bytes()) & 0x7fff_ffff;
        let k2 = prefix.map_or(0, ruby_to_i_low31);
        Key::Pair(k1 as i32, k2 as i32).with_label(name)
    }

    /// The key the npm package [advisory-lock](https://www.npmjs.com/package/advisory-lock) 2.x
    /// (and 1.1.1+) uses: SHA-256 of the UTF-8 bytes, bytes 0..4 and 4..8 each read
    /// **little-endian** as a signed 32-bit integer, in the int-pair space.
    ///
    /// Source: `olalonde/advisory-lock`, `src/index.ts` (`strToKey`:
    /// `[buf.readInt32LE(0), buf.readInt32LE(4)]`). Versions up to 1.1.0 read the second integer
    /// at byte offset 1 instead of 4 (fixed in 1.1.1, "incorrect readInt32LE parameter"): see
    /// [`Key::node_advisory_lock_1_0`].
    ///
    /// ```
    /// use advisory_common::Key;
    /// // the package's own test vector (src/test/index.test.js)
    /// assert_eq!(Key::node_advisory_lock("test-lock"), Key::Pair(-107789403, -1898803861));
    /// ```
    pub fn node_advisory_lock(name: &str) -> Key {
        let d = Sha256::digest(name.as_bytes());
        Key::Pair(le_i32(&d[0..4]), le_i32(&d[4..8])).with_label(name)
    }

    /// The key of npm `advisory-lock` **before 1.1.1**: `[buf.readInt32LE(0), buf.readInt32LE(1)]`,
    /// the second integer overlapping the first (only 5 bytes of the hash used). Needed only to
    /// interoperate with an old deployment.
    ///
    /// Source: `olalonde/advisory-lock` commit 614ecc9 ("Fix issue #5 (incorrect readInt32LE
    /// parameter)"), `src/index.js` before the fix.
    ///
    /// ```
    /// use advisory_common::Key;
    /// // the package's test vector before the fix
    /// assert_eq!(Key::node_advisory_lock_1_0("test-lock"), Key::Pair(-107789403, 1811518275));
    /// ```
    pub fn node_advisory_lock_1_0(name: &str) -> Key {
        let d = Sha256::digest(name.as_bytes());
        Key::Pair(le_i32(&d[0..4]), le_i32(&d[1..5])).with_label(name)
    }

    /// The key Python's [django-pglock](https://pypi.org/project/django-pglock/) uses for a string
    /// lock id: SHA-256 of the UTF-8 bytes, the first 8 bytes read **little-endian** as a signed
    /// `i64`, in the `bigint` space.
    ///
    /// Source: `Opus10/django-pglock`, `pglock/core.py` (`_cast_lock_id`:
    /// `int.from_bytes(hashlib.sha256(lock_id.encode("utf-8")).digest()[:8], "little", signed=True)`).
    /// A numeric string is hashed like any other; only a Python `int` passes through (that is
    /// `Key::BigInt(n)` here).
    ///
    /// ```
    /// use advisory_common::Key;
    /// // sha256("") = e3b0c44298fc1c14..., read little-endian
    /// assert_eq!(Key::django_pglock(""), Key::BigInt(0x141cfc9842c4b0e3));
    /// ```
    pub fn django_pglock(name: &str) -> Key {
        let d = Sha256::digest(name.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        Key::BigInt(i64::from_le_bytes(b)).with_label(name)
    }

    /// The key .NET's [DistributedLock.Postgres](https://www.nuget.org/packages/DistributedLock.Postgres)
    /// uses for `new PostgresAdvisoryLockKey(name, allowHashing: true)` (the form
    /// `PostgresDistributedLock(string)` users write). Of the four encodings, the first that applies:
    ///
    /// 1. **ASCII**, 0–9 characters all below 128: each character's 7 bits packed big-endian, then a
    ///    0 bit, then 1 bits to fill 64 bits; the result is split into **the int-pair space**
    ///    (high 32 bits, low 32 bits).
    /// 2. **16 hex digits** (`"00000000000004d2"`): the 64-bit value, `bigint` space.
    /// 3. **8 hex digits, a comma, 8 hex digits** (`"0000002a,ffffffff"`): two `i32`s, int-pair space.
    /// 4. otherwise **SHA-1** of the UTF-8 bytes, first 8 bytes read little-endian, `bigint` space.
    ///
    /// Source: `madelson/DistributedLock`, `src/DistributedLock.Postgres/PostgresAdvisoryLockKey.cs`
    /// (`TryEncodeAscii`, `TryEncodeHashString`, `HashString`; `HasSingleKey` is true only for the
    /// `Int64` encoding, so ASCII names use `pg_advisory_lock(int, int)`, see
    /// `PostgresAdvisoryLock.cs`, `AddKeyParametersAndGetKeyArguments`). Hex digits may be of either
    /// case, no sign, no `0x`, no spaces (`int.TryParse` with `NumberStyles.AllowHexSpecifier`).
    /// Without `allowHashing` .NET throws for names of the fourth kind: see
    /// [`Key::distributed_lock_unhashed`].
    ///
    /// ```
    /// use advisory_common::Key;
    /// // "" packs to 0 followed by 63 ones
    /// assert_eq!(Key::distributed_lock(""), Key::Pair(i32::MAX, -1));
    /// assert_eq!(Key::distributed_lock("00000000000004d2"), Key::BigInt(1234));
    /// assert_eq!(Key::distributed_lock("0000002a,FFFFFFFF"), Key::Pair(42, -1));
    /// ```
    pub fn distributed_lock(name: &str) -> Key {
        Key::distributed_lock_unhashed(name)
            .unwrap_or_else(|| {
                let d = Sha1::digest(name.as_bytes());
                let mut b = [0u8; 8];
                b.copy_from_slice(&d[..8]);
                Key::BigInt(i64::from_le_bytes(b))
            })
            .with_label(name)
    }

    /// [`Key::distributed_lock`] without the SHA-1 fallback: `None` exactly where .NET's
    /// `new PostgresAdvisoryLockKey(name)` (no `allowHashing`) throws a `FormatException`.
    ///
    /// ```
    /// use advisory_common::Key;
    /// assert!(Key::distributed_lock_unhashed("orders:42").is_some());   // 9 ASCII characters
    /// assert_eq!(Key::distributed_lock_unhashed("orders:420"), None);  // 10: needs hashing
    /// ```
    pub fn distributed_lock_unhashed(name: &str) -> Option<Key> {
        const BITS: u32 = 7;
        const MAX_LEN: usize = 9;
        if name.len() <= MAX_LEN && name.is_ascii() {
            let mut v: u64 = 0;
            for b in name.bytes() {
                v = (v << BITS) | u64::from(b);
            }
            v <<= 1;
            for _ in name.len()..MAX_LEN {
                v = (v << BITS) | 0x7f;
            }
            return Some(Key::Pair((v >> 32) as i32, v as u32 as i32));
        }
        let b = name.as_bytes();
        if b.len() == 17 && b[8] == b',' {
            return Some(Key::Pair(hex_i32(&b[..8])?, hex_i32(&b[9..])?));
        }
        if b.len() == 16 {
            let (hi, lo) = (hex_i32(&b[..8])?, hex_i32(&b[8..])?);
            return Some(Key::BigInt(((hi as i64) << 32) | lo as u32 as i64));
        }
        None
    }
}

fn le_i32(b: &[u8]) -> i32 {
    i32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Eight hex digits, either case, read as the two's-complement `i32` (.NET `int.TryParse` with
/// `AllowHexSpecifier`: `"ffffffff"` is -1).
fn hex_i32(b: &[u8]) -> Option<i32> {
    if b.len() != 8 || !b.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(b).ok()?, 16)
        .ok()
        .map(|v| v as i32)
}

/// Ruby's `String#to_i` (leading whitespace, optional sign, decimal digits with single `_`
/// separators, stops at anything else; no digits is 0), then `& 0x7fffffff` on Ruby's unbounded
/// two's-complement integer, which is the value modulo 2^31.
fn ruby_to_i_low31(s: &str) -> u32 {
    const M: u64 = 1 << 31;
    let s = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: u64 = 0;
    let mut prev_digit = false;
    for b in digits.bytes() {
        match b {
            b'0'..=b'9' => {
                v = (v * 10 + u64::from(b - b'0')) % M;
                prev_digit = true;
            }
            b'_' if prev_digit => prev_digit = false,
            _ => break,
        }
    }
    let v = if neg { (M - v) % M } else { v };
    v as u32
}

#[cfg(test)]
#[path = "interop_tests.rs"]
mod tests;
