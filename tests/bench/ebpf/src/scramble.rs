//! The order in which `lb_scrambled` and `macswap_scrambled` visit N flows
//! (N a power of two), and the source each flow has. Plain `no_std` Rust:
//! the benchmark (`lb-bench`) includes this file too, to write the frames'
//! [`Visit`] and to check that the order is a permutation.
//!
//! Repetition `i` of a test run belongs to flow `first + flow(i mod N)`,
//! where `flow(x) = mix(mix(x) ^ key)` and `mix` is a bijection of 0..N
//! (multiply by an odd constant, xor-shift, twice): a visit covers the N
//! flows from `first` on. Two keys give two orders that are
//! not shifts or strides of each other: the flows are filled in one order
//! and timed in another, so the entries the fill allocated one after the
//! other are not read one after the other (which a hardware prefetcher
//! would follow).

/// The visit's state, carried in the frame at [`VISIT_AT`] (little endian,
/// as the loader writes it): BPF_PROG_TEST_RUN keeps the frame's bytes from
/// one repetition to the next, so each repetition reads `next` and stores
/// `next + 1` there. Every test run has its own copy of the frame: two CPUs
/// running at once never share a counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Visit {
    /// The position of the next repetition.
    pub next: u32,
    /// N - 1.
    pub mask: u32,
    /// Selects the order.
    pub key: u32,
    /// The xor-shift of `mix`: half the bits of N, rounded up, at least 1.
    pub shift: u32,
    /// The first flow visited.
    pub first: u32,
}

/// Where the frame carries its [`Visit`]: after the headers of the largest
/// frame the benchmark visits with (IPv6 + TCP, 74 bytes), in the Ethernet
/// padding beyond the IP packet, which no program reads (the verifier
/// wants a constant offset).
pub const VISIT_AT: usize = 80;
/// The length of a frame with a [`Visit`].
pub const FRAME_LEN: usize = VISIT_AT + core::mem::size_of::<Visit>();

impl Visit {
    /// The visit of `1 << bits` flows in the order of `key`, from position
    /// `next` (the loader's: the programs only read a visit).
    #[allow(dead_code)]
    pub const fn new(bits: u32, key: u32, next: u32) -> Visit {
        let mask = if bits >= 32 {
            u32::MAX
        } else {
            (1u32 << bits).wrapping_sub(1)
        };
        let half = bits.div_ceil(2);
        Visit {
            next: next & mask,
            mask,
            key: key & mask,
            shift: if half == 0 { 1 } else { half },
            first: 0,
        }
    }

    /// The same visit of the N flows from `first` on.
    #[allow(dead_code)]
    pub const fn from_flow(self, first: u32) -> Visit {
        Visit { first, ..self }
    }
}

/// A bijection of 0..=mask (each step is one: a product with an odd
/// constant modulo a power of two, and `x ^ (x >> s)` for `s >= 1`).
#[inline(always)]
pub const fn mix(x: u32, v: &Visit) -> u32 {
    let mut x = x.wrapping_mul(0x9e37_79b1) & v.mask;
    x ^= x >> v.shift;
    x = x.wrapping_mul(0x85eb_ca6b) & v.mask;
    x ^ (x >> v.shift)
}

/// The flow of position `i`.
#[inline(always)]
pub const fn flow(i: u32, v: &Visit) -> u32 {
    v.first.wrapping_add(mix(mix(i & v.mask, v) ^ v.key, v))
}

/// Flow `f`'s source: the low 16 bits of its address (`f >> 15`) and its
/// port (`0x8000 | f` in 15 bits): 2^31 flows, never port 0.
#[inline(always)]
pub const fn source(f: u32) -> (u16, u16) {
    ((f >> 15) as u16, 0x8000 | (f & 0x7fff) as u16)
}
