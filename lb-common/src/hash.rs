//! The flow hash, shared by the XDP program and every userspace model of it.
//!
//! It is MurmurHash3 (x86, 32-bit) over the 32-bit words of the flow fields
//! that a group's affinity selects, with a fixed seed. It is fixed forever:
//! several `lb` instances behind ECMP, or one `lb` after a restart, must map a
//! flow to the same slot, so it takes no random key. The exact rules, which
//! the tests' reference model implements again: docs/algorithms.md.

use crate::{FlowKey, hash_fields};

/// Seed of the flow hash.
pub const FLOW_SEED: u32 = 0x4c42_0001;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
pub const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
pub const fn finish(h: u32, len_bytes: u32) -> u32 {
    let mut h = h ^ len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3_x86_32 of whole 32-bit words.
pub fn murmur3_words(seed: u32, words: &[u32]) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < words.len() {
        h = mix(h, words[i]);
        i += 1;
    }
    finish(h, (words.len() * 4) as u32)
}

/// Hash of the fields of `key` selected by `fields` ([`hash_fields`] bits).
/// Unselected fields hash as zero, so the result depends only on the selected
/// ones. Always mixes ten words, which keeps the code straight-line for the
/// verifier.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, fields: u8) -> u32 {
    let src = if fields & hash_fields::SRC_ADDR != 0 {
        key.src_be
    } else {
        [0; 4]
    };
    let dst = if fields & hash_fields::DST_ADDR != 0 {
        key.dst_be
    } else {
        [0; 4]
    };
    let sport = if fields & hash_fields::SRC_PORT != 0 {
        key.src_port_be
    } else {
        0
    };
    let dport = if fields & hash_fields::DST_PORT != 0 {
        key.dst_port_be
    } else {
        0
    };
    let proto = if fields & hash_fields::PROTO != 0 {
        key.proto
    } else {
        0
    };
    let mut h = FLOW_SEED;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, dst[0]);
    h = mix(h, dst[1]);
    h = mix(h, dst[2]);
    h = mix(h, dst[3]);
    h = mix(h, (sport as u32) | ((dport as u32) << 16));
    h = mix(h, proto as u32);
    finish(h, 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_reference_vectors() {
        // Published MurmurHash3_x86_32 results for 4-byte inputs.
        assert_eq!(murmur3_words(0, &[]), 0);
        assert_eq!(murmur3_words(1, &[]), 0x514e_28b7);
        assert_eq!(
            murmur3_words(0, &[u32::from_le_bytes(*b"test")]),
            0xba6b_d213
        );
    }

    #[test]
    fn unselected_fields_do_not_matter() {
        let mut a = FlowKey {
            src_be: [1, 0, 0, 0],
            dst_be: [2, 0, 0, 0],
            src_port_be: 3,
            dst_port_be: 4,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        let two = flow_hash(&a, hash_fields::TWO_TUPLE);
        let five = flow_hash(&a, hash_fields::FIVE_TUPLE);
        a.src_port_be = 99;
        a.proto = 17;
        assert_eq!(flow_hash(&a, hash_fields::TWO_TUPLE), two);
        assert_ne!(flow_hash(&a, hash_fields::FIVE_TUPLE), five);
    }

    #[test]
    fn flow_hash_is_pinned() {
        // The value is part of the contract between lb instances: never change it.
        let k = FlowKey {
            src_be: [0x0a00_0001, 0, 0, 0],
            dst_be: [0x0a00_0002, 0, 0, 0],
            src_port_be: 1234,
            dst_port_be: 80,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        assert_eq!(flow_hash(&k, hash_fields::FIVE_TUPLE), 0x5af8_10f5);
    }
}
