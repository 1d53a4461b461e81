//! What the data plane's maps cost in kernel memory, from the object's
//! own map definitions (the flow table at the size it is made with), so
//! that `lb run` can weigh a new data plane against the memory the host
//! has before it asks the kernel for it. Figures follow the kernel's
//! allocations: an array takes its values rounded up to 8 bytes (a
//! memory-mappable one in whole pages), a per-CPU array that for every
//! possible CPU, a preallocated hash table an element header of 48 bytes
//! plus key and value each rounded up to 8, and 8 bytes per bucket (a
//! power of two at least its entries; an LRU hash the same); an array of
//! maps a pointer per slot, its inner maps apart (the group tables: 4
//! bytes per slot at most). An LPM trie is the one map not preallocated:
//! it is counted full, each prefix a node and at most one intermediate
//! node, each a kmalloc of the node header (40 bytes), data and value.
use aya_obj::generated::bpf_map_type as t;

use super::DataplaneError;
use lb_common::map_names as names;

/// One map's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapMemory {
    pub name: String,
    /// `array`, `per-CPU array`, `hash`, `LRU hash`, `array of maps`,
    /// `LPM trie`.
    pub kind: &'static str,
    pub entries: u64,
    /// Bytes, all CPUs together for a per-CPU map.
    pub bytes: u64,
}

/// Bytes of a group table of `slots` slots at most (a wide table: a 4-byte
/// word per slot, two more for its header).
pub fn group_table_bytes(slots: u64) -> u64 {
    round8((slots + 2) * 4)
}

fn round8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

const PAGE: u64 = 4096;
/// `struct htab_elem` before its key, on 64-bit kernels.
const HTAB_ELEM: u64 = 48;

/// The maps of `object` with the flow table at `flow_buckets` buckets, on
/// a host with `cpus` possible CPUs; global data sections (a few bytes)
/// are left out.
pub fn maps(object: &[u8], flow_buckets: u32, cpus: u32) -> Result<Vec<MapMemory>, DataplaneError> {
    let obj = aya_obj::Object::parse(object)
        .map_err(|e| DataplaneError::Load(aya::EbpfError::ParseError(e)))?;
    let mut all: Vec<MapMemory> = obj
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, map)| {
            let entries = if name == names::FLOW_TABLE {
                flow_buckets
            } else {
                map.max_entries()
            };
            let mmapable = map.map_flags() & aya_obj::generated::BPF_F_MMAPABLE != 0;
            let (kind, bytes) = size(
                map.map_type(),
                map.key_size().into(),
                map.value_size().into(),
                entries.into(),
                mmapable,
                cpus.into(),
            );
            MapMemory {
                name: name.clone(),
                kind,
                entries: entries.into(),
                bytes,
            }
        })
        .collect();
    all.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    Ok(all)
}

/// A map's kind and bytes.
fn size(
    kind: u32,
    key: u64,
    value: u64,
    entries: u64,
    mmapable: bool,
    cpus: u64,
) -> (&'static str, u64) {
    let hash = |entries: u64| {
        entries * (HTAB_ELEM + round8(key) + round8(value)) + entries.next_power_of_two() * 8
    };
    match kind {
        k if k == t::BPF_MAP_TYPE_ARRAY as u32 && mmapable => {
            ("array", (entries * round8(value)).div_ceil(PAGE) * PAGE)
        }
        k if k == t::BPF_MAP_TYPE_ARRAY as u32 => ("array", entries * round8(value)),
        k if k == t::BPF_MAP_TYPE_PERCPU_ARRAY as u32 => {
            ("per-CPU array", entries * round8(value) * cpus)
        }
        k if k == t::BPF_MAP_TYPE_HASH as u32 => ("hash", hash(entries)),
        k if k == t::BPF_MAP_TYPE_LRU_HASH as u32 => ("LRU hash", hash(entries)),
        k if k == t::BPF_MAP_TYPE_ARRAY_OF_MAPS as u32 => ("array of maps", entries * 8),
        k if k == t::BPF_MAP_TYPE_LPM_TRIE as u32 => {
            // The key is a 4-byte prefix length and the data.
            (
                "LPM trie",
                entries * 2 * kmalloc(LPM_NODE + key - 4 + value),
            )
        }
        _ => ("other", entries * (round8(key) + round8(value))),
    }
}

/// `struct lpm_trie_node` before its data, on 64-bit kernels.
const LPM_NODE: u64 = 40;

/// The kmalloc size class of `n` bytes (96 and 192 between the powers of
/// two).
fn kmalloc(n: u64) -> u64 {
    match n {
        65..=96 => 96,
        129..=192 => 192,
        _ => n.next_power_of_two().max(8),
    }
}

/// The host's possible CPUs (per-CPU maps hold a value for each).
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |n| n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints the table of README's Limits (`cargo test -p lb-user
    /// map_sizes -- --nocapture`) and checks its big lines.
    #[test]
    fn map_sizes_at_the_defaults() {
        let buckets = lb_common::flow_table::buckets_for(lb_common::DEFAULT_FLOW_TABLE_SIZE);
        let maps = maps(crate::EBPF_LB, buckets, 1).unwrap();
        if maps.is_empty() {
            return; // a placeholder object (AYA_BUILD_SKIP)
        }
        for m in &maps {
            println!(
                "| `{}` | {} | {} | {} |",
                m.name, m.kind, m.entries, m.bytes
            );
        }
        let of = |name: &str| maps.iter().find(|m| m.name == name).unwrap();
        assert_eq!(
            of(names::FLOW_TABLE).bytes,
            32 << 20,
            "64-byte buckets, 1M flows"
        );
        let per_cpu = maps.iter().filter(|m| m.kind == "per-CPU array").count();
        let two = super::maps(crate::EBPF_LB, buckets, 2).unwrap();
        let total = |m: &[MapMemory]| m.iter().map(|m| m.bytes).sum::<u64>();
        let growth: u64 = maps
            .iter()
            .filter(|m| m.kind == "per-CPU array")
            .map(|m| m.bytes)
            .sum();
        assert!(per_cpu >= 3);
        assert_eq!(
            total(&two) - total(&maps),
            growth,
            "per-CPU maps double with 2 CPUs"
        );
        assert_eq!(group_table_bytes(65537), 262_160);
        // 4096 listeners of 30 prefixes, two 96-byte nodes a prefix.
        assert_eq!(of(names::PORT_RANGES).bytes, 122_880 * 2 * 96);
        assert_eq!((kmalloc(72), kmalloc(100), kmalloc(130)), (96, 128, 192));
    }
}
