//! The maps shared with user space. Names, key and value layouts come from detector-common;
//! the capacities here are only defaults: the loader sets them from the configuration
//! (`EbpfLoader::map_max_entries`). BTF-defined maps let `bpftool map dump` print typed JSON.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray},
    macros::btf_map,
};
use detector_common::{
    Counters, DEFAULT_EXACT_CAPACITY, DEFAULT_PREFIX_CAPACITY, ExactBan, Ipv4Key, Ipv6Key,
    PrefixBan, Settings,
};

const EXACT: usize = DEFAULT_EXACT_CAPACITY as usize;
const PREFIX: usize = DEFAULT_PREFIX_CAPACITY as usize;

#[btf_map]
pub static BANS_V4: HashMap<Ipv4Key, ExactBan, EXACT> = HashMap::new();
#[btf_map]
pub static BANS_V6: HashMap<Ipv6Key, ExactBan, EXACT> = HashMap::new();
#[btf_map]
pub static PREFIX_V4: LpmTrie<[u8; 4], PrefixBan, PREFIX> = LpmTrie::new();
#[btf_map]
pub static PREFIX_V6: LpmTrie<[u8; 16], PrefixBan, PREFIX> = LpmTrie::new();
#[btf_map]
pub static STATS: PerCpuArray<Counters, 1> = PerCpuArray::new();
#[btf_map]
pub static SETTINGS: Array<Settings, 1> = Array::new();

/// This CPU's counters. No atomics needed on them: an XDP program runs with migration
/// disabled, so nothing else writes this CPU's slot meanwhile.
#[inline(always)]
pub fn counters() -> Option<*mut Counters> {
    STATS.get_ptr_mut(0)
}

/// The flags word of SETTINGS[0] (0 if the array were somehow empty).
#[inline(always)]
pub fn settings_flags() -> u32 {
    SETTINGS.get(0).map_or(0, |s| s.flags)
}
