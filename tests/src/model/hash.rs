//! The model's hashes, written from docs/algorithms.md ("MurmurHash3", "The
//! flow hash"), not from `lb_common::hash`: MurmurHash3_x86_32 of a byte
//! string, and the flow hash over the flow's wire bytes.
use lb_common::FlowKey;

/// The flow fields a group hashes (docs/algorithms.md, "The flow hash").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fields {
    pub src_addr: bool,
    pub dst_addr: bool,
    pub src_port: bool,
    pub dst_port: bool,
    pub proto: bool,
}

impl Fields {
    pub const FIVE_TUPLE: Fields = Fields {
        src_addr: true,
        dst_addr: true,
        src_port: true,
        dst_port: true,
        proto: true,
    };
    pub const THREE_TUPLE: Fields = Fields {
        src_port: false,
        dst_port: false,
        ..Fields::FIVE_TUPLE
    };
    pub const TWO_TUPLE: Fields = Fields {
        proto: false,
        ..Fields::THREE_TUPLE
    };
    pub const SOURCE_IP: Fields = Fields {
        dst_addr: false,
        ..Fields::TWO_TUPLE
    };
}

/// The seed of the flow hash.
const FLOW_SEED: u32 = 0x4c42_0001;

/// MurmurHash3, x86, 32-bit, of `data` with `seed`: 4-byte little-endian
/// blocks, then the tail, then the length and the final mix.
pub fn murmur3(seed: u32, data: &[u8]) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let scramble = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let k = u32::from_le_bytes(block.try_into().unwrap());
        h = (h ^ scramble(k))
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let k = tail
            .iter()
            .rev()
            .fold(0u32, |k, &byte| (k << 8) | u32::from(byte));
        h ^= scramble(k);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 of 32-bit words, each one block (its little-endian bytes).
pub fn murmur3_words(seed: u32, words: &[u32]) -> u32 {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    murmur3(seed, &bytes)
}

/// The 40 bytes the flow hash hashes: each address's 16 bytes (an IPv4
/// address in the first 4), the two ports and the protocol as on the wire,
/// three zero bytes; unselected fields zero.
pub fn flow_bytes(key: &FlowKey, fields: Fields) -> [u8; 40] {
    // The key holds wire bytes in each word's memory order.
    let wire =
        |words: [u32; 4]| -> Vec<u8> { words.iter().flat_map(|w| w.to_ne_bytes()).collect() };
    let mut out = [0u8; 40];
    if fields.src_addr {
        out[0..16].copy_from_slice(&wire(key.src_be));
    }
    if fields.dst_addr {
        out[16..32].copy_from_slice(&wire(key.dst_be));
    }
    if fields.src_port {
        out[32..34].copy_from_slice(&key.src_port_be.to_ne_bytes());
    }
    if fields.dst_port {
        out[34..36].copy_from_slice(&key.dst_port_be.to_ne_bytes());
    }
    if fields.proto {
        out[36] = key.proto;
    }
    out
}

/// The flow hash of `key` over `fields`.
pub fn flow_hash(key: &FlowKey, fields: Fields) -> u32 {
    murmur3(FLOW_SEED, &flow_bytes(key, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_murmur3_values() {
        assert_eq!(murmur3(0, b""), 0);
        assert_eq!(murmur3(1, b""), 0x514e_28b7);
        assert_eq!(murmur3(0, b"test"), 0xba6b_d213);
        assert_eq!(
            murmur3_words(0, &[u32::from_le_bytes(*b"test")]),
            0xba6b_d213
        );
        // Tails of 1-3 bytes.
        assert_eq!(murmur3(0x9747_b28c, b"Hello, world!"), 0x2488_4cba);
        assert_eq!(murmur3(0x9747_b28c, b"aaaa"), 0x5a97_808a);
        assert_eq!(murmur3(0x9747_b28c, b"aaa"), 0x283e_0130);
        assert_eq!(murmur3(0x9747_b28c, b"aa"), 0x5d21_1726);
        assert_eq!(murmur3(0x9747_b28c, b"abc"), 0xc84a_62dd);
        assert_eq!(murmur3(0x9747_b28c, b"ab"), 0x7487_5592);
        assert_eq!(murmur3(0x9747_b28c, b"a"), 0x7fa0_9ea6);
    }

    /// The example of docs/algorithms.md.
    #[test]
    fn the_documented_flow_hash() {
        let key = FlowKey {
            src_be: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            dst_be: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
            src_port_be: 1234u16.to_be(),
            dst_port_be: 80u16.to_be(),
            proto: 6,
            family: lb_common::FAMILY_V4,
            _pad: [0; 2],
        };
        let bytes = flow_bytes(&key, Fields::FIVE_TUPLE);
        assert_eq!(&bytes[..4], &[10, 0, 0, 1]);
        assert_eq!(&bytes[32..40], &[0x04, 0xd2, 0, 0x50, 6, 0, 0, 0]);
        assert_eq!(flow_hash(&key, Fields::FIVE_TUPLE), 0x111a_0aaa);
        assert_eq!(flow_hash(&key, Fields::TWO_TUPLE), 0x6b05_b05f);
    }
}
