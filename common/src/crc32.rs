//! CRC-32 (IEEE 802.3, the zlib / `hash/crc32` / `crc::CRC_32_ISO_HDLC` variant), used by the
//! Ruby, Rails, sqlx-migrator and golang-migrate derivations. A few lines instead of a dependency.

const TABLE: [u32; 256] = table();

const fn table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// CRC-32 of `bytes`, as zlib's `crc32(0, bytes)` and Go's `crc32.ChecksumIEEE`.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_values() {
        // the CRC catalogue's check value for CRC-32/ISO-HDLC, and zlib.crc32(b"") == 0
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(super::crc32(b""), 0);
        // python3 -c 'import zlib; print(hex(zlib.crc32(b"hello")))'
        assert_eq!(super::crc32(b"hello"), 0x3610_a686);
    }
}
