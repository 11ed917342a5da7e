//! The engine's and shells' map hasher: a seeded folded multiply over the few integers a
//! [`Key`](crate::Key) or a lease id hashes, several times cheaper than the standard library's
//! SipHash on the batch path (every lease touches these maps a few times per acquire + release).
//! The seed is random per map (from the standard library's `RandomState`), so keys chosen from
//! outside cannot be aimed at one bucket of every process.

use std::hash::{BuildHasher, Hasher};

/// `BuildHasher` for the locker's maps: [`FastHasher`] with a random seed.
#[derive(Clone, Debug)]
pub struct FastHash {
    seed: u64,
}

impl Default for FastHash {
    fn default() -> FastHash {
        FastHash {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x6c6f_636b_6572_u64) | 1,
        }
    }
}

impl BuildHasher for FastHash {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher { h: self.seed }
    }
}

/// A `HashMap` with [`FastHash`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHash>;

/// See [`FastHash`].
#[derive(Clone, Debug)]
pub struct FastHasher {
    h: u64,
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a).wrapping_mul(u128::from(b));
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.h = fold(self.h ^ v, K);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    #[inline]
    fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }

    #[inline]
    fn write_i32(&mut self, v: i32) {
        self.write_u64(u64::from(v as u32));
    }

    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown takes its control byte from the top bits: mix them once more
        fold(self.h, K ^ 0x2d35_8dcc_aa6c_78a5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    #[test]
    fn distinct_keys_spread_and_equal_keys_agree() {
        let s = FastHash::default();
        assert_eq!(s.hash_one(Key::BigInt(7)), s.hash_one(Key::BigInt(7)));
        assert_ne!(s.hash_one(Key::BigInt(7)), s.hash_one(Key::BigInt(8)));
        assert_ne!(s.hash_one(Key::Pair(0, 7)), s.hash_one(Key::Pair(7, 0)));
        let tops: std::collections::HashSet<u64> =
            (0..1000u64).map(|i| s.hash_one(i) >> 57).collect();
        assert!(tops.len() > 64, "the top 7 bits vary: {}", tops.len());
    }
}
