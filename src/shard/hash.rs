//! twemproxy's key hashes, bit for bit as nutcracker 0.5's `src/hashkit/nc_*.c` compute them on
//! x86-64, quirks included: C's `char` is signed there, so several functions sign-extend bytes
//! ≥ 0x80 (`(uint32_t)key[i]`), `fnv1a_64` keeps a 32-bit state, `crc16` never truncates its state
//! to 16 bits, and `crc32` is libmemcached's 15-bit variant. Each function's doc says where it
//! departs from the algorithm it is named after.

use md5::{Digest, Md5};

use super::Hash;

impl Hash {
    /// `key`'s hash as twemproxy computes it with this function.
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            Hash::OneAtATime => one_at_a_time(key),
            Hash::Md5 => md5(key),
            Hash::Crc16 => crc16(key),
            Hash::Crc32 => crc32(key),
            Hash::Crc32a => CRC32.checksum(key),
            Hash::Fnv1_64 => fnv1_64(key),
            Hash::Fnv1a64 => fnv1a_64(key),
            Hash::Fnv1_32 => fnv1_32(key),
            Hash::Fnv1a32 => fnv1a_32(key),
            Hash::Hsieh => hsieh(key),
            Hash::Murmur => murmur(key),
            Hash::Jenkins => jenkins(key),
        }
    }
}

/// The standard CRC-32 (zlib's): twemproxy's `crc32a`, and the base of its `crc32`.
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// twemproxy's `crc16` table: CRC-16/XMODEM's (polynomial 0x1021, most significant bit first).
const CRC16_TABLE: [u16; 256] = crc16_table();

/// A byte as C's signed `char` widens to `uint32_t` on x86-64: 0x80..=0xff become 0xffffff80...
fn widen(b: u8) -> u32 {
    b as i8 as u32
}

/// Bob Jenkins's one-at-a-time hash over sign-extended bytes.
fn one_at_a_time(key: &[u8]) -> u32 {
    let mut h = 0u32;
    for &b in key {
        h = h.wrapping_add(widen(b));
        h = h.wrapping_add(h << 10);
        h ^= h >> 6;
    }
    h = h.wrapping_add(h << 3);
    h ^= h >> 11;
    h.wrapping_add(h << 15)
}

/// The first four bytes of the MD5 digest, little-endian.
fn md5(key: &[u8]) -> u32 {
    let digest = Md5::digest(key);
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// CRC-16/XMODEM's table-driven step, except that the state is 32 bits and never masked: the bits
/// shifted past 16 stay in the result, so the value is not a CRC-16.
fn crc16(key: &[u8]) -> u32 {
    key.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ u32::from(CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)])
    })
}

/// libmemcached's "crc32": bits 16..31 of the standard CRC-32, with the top one cleared.
fn crc32(key: &[u8]) -> u32 {
    (CRC32.checksum(key) >> 16) & 0x7fff
}

/// FNV-1 with the 64-bit offset basis and prime, over sign-extended bytes; the low 32 bits.
fn fnv1_64(key: &[u8]) -> u32 {
    let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        h.wrapping_mul(0x0000_0100_0000_01b3) ^ (b as i8 as u64)
    });
    h as u32
}

/// Not FNV-1a-64: the 64-bit offset basis and prime cut to 32 bits, over sign-extended bytes.
fn fnv1a_64(key: &[u8]) -> u32 {
    key.iter()
        .fold(0x8422_2325u32, |h, &b| (h ^ widen(b)).wrapping_mul(0x1b3))
}

/// FNV-1-32 over sign-extended bytes (the standard one for ASCII keys).
fn fnv1_32(key: &[u8]) -> u32 {
    key.iter().fold(0x811c_9dc5u32, |h, &b| {
        h.wrapping_mul(0x0100_0193) ^ widen(b)
    })
}

/// FNV-1a-32 over sign-extended bytes (the standard one for ASCII keys).
fn fnv1a_32(key: &[u8]) -> u32 {
    key.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ widen(b)).wrapping_mul(0x0100_0193)
    })
}

/// Paul Hsieh's SuperFastHash; in a 3-byte tail the last byte is sign-extended. Empty: 0.
fn hsieh(key: &[u8]) -> u32 {
    fn get16(b: &[u8]) -> u32 {
        u32::from(u16::from_le_bytes([b[0], b[1]]))
    }
    if key.is_empty() {
        return 0;
    }
    let mut chunks = key.chunks_exact(4);
    let mut h = 0u32;
    for c in &mut chunks {
        h = h.wrapping_add(get16(c));
        let tmp = (get16(&c[2..]) << 11) ^ h;
        h = (h << 16) ^ tmp;
        h = h.wrapping_add(h >> 11);
    }
    match *chunks.remainder() {
        [b0, b1, b2] => {
            h = h.wrapping_add(get16(&[b0, b1]));
            h ^= h << 16;
            h ^= widen(b2) << 18;
            h = h.wrapping_add(h >> 11);
        }
        [b0, b1] => {
            h = h.wrapping_add(get16(&[b0, b1]));
            h ^= h << 11;
            h = h.wrapping_add(h >> 17);
        }
        [b0] => {
            h = h.wrapping_add(u32::from(b0));
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
        }
        _ => {}
    }
    h ^= h << 3;
    h = h.wrapping_add(h >> 5);
    h ^= h << 4;
    h = h.wrapping_add(h >> 17);
    h ^= h << 25;
    h.wrapping_add(h >> 6)
}

/// MurmurHash2 (little-endian words) seeded with `0xdeadbeef * len`.
fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len() as u32;
    let mut h = 0xdead_beefu32.wrapping_mul(len) ^ len;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]).wrapping_mul(M);
        k ^= k >> 24;
        h = h.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// Bob Jenkins's lookup3 `hashlittle` with initval 13 (little-endian words, tail zero-padded).
fn jenkins(key: &[u8]) -> u32 {
    fn word(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    let init = 0xdead_beefu32
        .wrapping_add(key.len() as u32)
        .wrapping_add(13);
    let (mut a, mut b, mut c) = (init, init, init);
    if key.is_empty() {
        return c;
    }
    let mut rest = key;
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..]));
        b = b.wrapping_add(word(&rest[4..]));
        c = c.wrapping_add(word(&rest[8..]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    let mut last = [0u8; 12];
    last[..rest.len()].copy_from_slice(rest);
    a = a.wrapping_add(word(&last[0..]));
    b = b.wrapping_add(word(&last[4..]));
    c = c.wrapping_add(word(&last[8..]));
    // lookup3's `final`.
    c = (c ^ b).wrapping_sub(b.rotate_left(14));
    a = (a ^ c).wrapping_sub(c.rotate_left(11));
    b = (b ^ a).wrapping_sub(a.rotate_left(25));
    c = (c ^ b).wrapping_sub(b.rotate_left(16));
    a = (a ^ c).wrapping_sub(c.rotate_left(4));
    b = (b ^ a).wrapping_sub(a.rotate_left(14));
    (c ^ b).wrapping_sub(b.rotate_left(24))
}

/// lookup3's `mix`.
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

/// The CRC-16/XMODEM table (polynomial 0x1021, most significant bit first).
const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys and every hash of them in [`Hash::ALL`]'s order, computed by nutcracker 0.5.0's own
    /// `src/hashkit/*.c` compiled for x86-64 (each key also hashed at four alignments, which
    /// agreed). The keys cover every tail length of the 4- and 12-byte block hashes, several
    /// blocks, and bytes ≥ 0x80 where the sign-extension quirks show.
    #[rustfmt::skip]
    const TWEMPROXY: &[(&[u8], [u32; 12])] = &[
        (b"", [0x00000000, 0xd98c1dd4, 0x00000000, 0x00000000, 0x00000000, 0x84222325, 0x84222325, 0x811c9dc5, 0x811c9dc5, 0x00000000, 0x00000000, 0xdeadbefc]),
        (b"a", [0xca2e9442, 0xb975c10c, 0x00007c87, 0x000068b7, 0xe8b7be43, 0x8601b7be, 0x8601ec8c, 0x050c5d7e, 0xe40c292c, 0x93642e87, 0x4b41757c, 0xe0a38690]),
        (b"ab", [0x45e61e58, 0x43f47e18, 0x007c74ff, 0x00001e83, 0x9e83486d, 0xb4eb37b8, 0xb545986a, 0x70772d38, 0x4d2505ca, 0x5b8c0ec3, 0xe3b54dfb, 0xc1b5695b]),
        (b"abc", [0xed131f5b, 0x98500190, 0x7c749dd6, 0x00003524, 0x352441c2, 0x6bafadcb, 0x0541574b, 0x439c2f4b, 0x1a47e90b, 0xe5186b3a, 0x7b0cc428, 0x8f415600]),
        (b"abcd", [0xcd8b6206, 0x4c71fce2, 0x749da836, 0x00006d82, 0xed82cd11, 0xfb844f95, 0xee0724dd, 0xb9de7375, 0xce3479bd, 0x3ab452d8, 0xef6a86af, 0xd512151a]),
        (b"abcde", [0xb98559fc, 0xd9b456ab, 0x9da83ee1, 0x00000587, 0x8587d865, 0x61d33a4a, 0x762364a8, 0x0e2fc14a, 0x749bcf08, 0x84786722, 0x9a263eda, 0x5cff335b]),
        (b"123456789", [0xc66b58c5, 0x94e7f925, 0x869031c3, 0x00004bf4, 0xcbf43926, 0x2bf916d6, 0x23c6cdfc, 0x24148816, 0xbb86b11c, 0xe4fc1670, 0xb7760690, 0x19777af6]),
        (b"hello world!", [0x9bd919d3, 0x8ef93ffc, 0x063b577b, 0x000003b4, 0x03b4c26d, 0xb97b86bc, 0xcd5a2672, 0x8a01b99c, 0xb034fff2, 0x13724f63, 0x7f8cfcad, 0x1bc66602]),
        (b"hello world!!", [0x53313358, 0xd4990557, 0x3b576551, 0x00002d6b, 0xad6b56f4, 0x2ce5f155, 0xf02f1f09, 0xdcb730b5, 0x366eb929, 0xfa4a5d23, 0x4dd4de3f, 0x7b6def0f]),
        (b"The quick brown fox jumps", [0x0b165c49, 0xca97de83, 0xd593b22e, 0x0000578c, 0xd78ce11e, 0xd45ad3e3, 0xd2836c47, 0x04a49503, 0x73f4f727, 0xc6d1a520, 0xed2680ca, 0x577d3995]),
        (b"\x80", [0xc31d4e27, 0x7edd398d, 0x00009188, 0x00003fba, 0x3fba6cad, 0x79fe485f, 0x79fdec5f, 0xfaf3a29f, 0x04f3b29f, 0xd6f4cb32, 0x90556245, 0xb16fde48]),
        (b"\xff", [0xae65a494, 0xd44f5900, 0x00001ef0, 0x00007f00, 0xff000000, 0x79fe4820, 0x79fe466e, 0xfaf3a2e0, 0xf9f3a14e, 0x02a6dba8, 0xdb530a9c, 0xe1964da8]),
        (b"\x80\x81\x82", [0xe8cce13b, 0x0a7685b3, 0x919aa239, 0x00003f5a, 0x3f5a8994, 0x94a33c86, 0x8a50dfa8, 0xcfab51a6, 0x0ef7fca8, 0x6bc37572, 0x5822874f, 0x3015dd51]),
        (b"caf\xc3\xa9", [0xd99c709e, 0xe47f1107, 0xf6269667, 0x000018ad, 0x98ad42b5, 0x8a06fef1, 0xcef6bb89, 0xd682f171, 0x7572c049, 0xde3f8855, 0xda11981f, 0xcb6225ad]),
        (b"{user1000}.x", [0x0f691608, 0xfdd0081b, 0x61efd85e, 0x00001613, 0x161393f4, 0x1cb871dd, 0xa2567f2d, 0x1dda39bd, 0xac7d638d, 0x619d30cd, 0x2e6d0d7b, 0xb63d088f]),
        (b"key:\xff\xfe\xfd\xfc\xfb", [0x0b95d19d, 0x31e03833, 0xd42ef1d8, 0x00007f82, 0xff82d785, 0x176d704f, 0x06d64823, 0x7bba7b2f, 0x85368e03, 0x67aa3d10, 0xd6756471, 0xbbd2d027]),
        (b"\xfe\xed\xfa\xce\xca\xfe\xbe\xef\x00\x01\x02\x03\x7f", [0x80c3bed9, 0x8a4c4865, 0x1e8d535d, 0x000034d3, 0x34d38e3c, 0xc241311a, 0xd9ae7708, 0xb2ce181a, 0x188816e8, 0x88420337, 0xc5c13d37, 0x232e56db]),
    ];

    #[test]
    fn every_hash_matches_twemproxy() {
        for (key, expected) in TWEMPROXY {
            for ((name, hash), want) in Hash::ALL.iter().zip(expected) {
                assert_eq!(
                    hash.hash(key),
                    *want,
                    "{name} of {:?}: got {:#010x}, twemproxy says {want:#010x}",
                    key.escape_ascii().to_string(),
                    hash.hash(key)
                );
            }
        }
    }

    #[test]
    fn ascii_keys_give_the_standard_values_where_twemproxy_is_standard() {
        // Published check values ("123456789" and "a"): the quirks show only on bytes >= 0x80.
        assert_eq!(Hash::Crc32a.hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(Hash::Fnv1a32.hash(b"a"), 0xe40c_292c);
        assert_eq!(Hash::Fnv1_32.hash(b"a"), 0x050c_5d7e);
        assert_eq!(Hash::OneAtATime.hash(b"a"), 0xca2e_9442);
        // Standard FNV-1a-32 of 0xff is 0xfd0c_4ef3 (unsigned byte); twemproxy xors 0xffffffff.
        assert_ne!(Hash::Fnv1a32.hash(b"\xff"), 0xfd0c_4ef3);
    }

    #[test]
    fn crc16_table_is_twemproxys() {
        // Spot checks against the literal table in nc_crc16.c.
        assert_eq!(&CRC16_TABLE[..4], &[0x0000, 0x1021, 0x2042, 0x3063]);
        assert_eq!(CRC16_TABLE[16], 0x1231);
        assert_eq!(CRC16_TABLE[255], 0x1ef0);
    }
}
