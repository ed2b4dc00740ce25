//! The maps shared with user space. Names, key and value layouts come from detector-common;
//! the capacities here are only defaults: the loader sets them from the configuration
//! (`EbpfLoader::map_max_entries`). BTF-defined maps let `bpftool map dump` print typed JSON.
use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    helpers::generated::bpf_map_lookup_elem,
    macros::btf_map,
};
use core::{ffi::c_void, ptr::read_volatile};

use crate::clock::ClockCache;
use detector_common::{
    Counters, DEFAULT_EXACT_CAPACITY, DEFAULT_PREFIX_CAPACITY, ExactBan, Ipv4Key, Ipv6Key,
    LAYOUT_VERSION, PrefixBan, Settings, trace::TraceTarget,
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
/// SETTINGS[0], as a global: the loader pins the object's `.data.settings` map (a one-entry
/// array whose value is exactly this struct) as SETTINGS, so user space reads and writes it as
/// before, and the program reads it by direct value address, with no lookup. `static mut` and
/// volatile reads: user space changes it while the program runs, so the compiler must neither
/// assume the initial value nor keep an old read.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.settings")]
static mut SETTINGS: Settings = Settings {
    flags: 0,
    layout_version: LAYOUT_VERSION,
};
/// Each CPU's last coarse-clock reading (crate::clock); not pinned, owned by the program.
#[btf_map]
pub static CLOCK: PerCpuArray<ClockCache, 1> = PerCpuArray::new();
/// The `detector trace` switch (detector_common::trace), as a global in its own section: the
/// object's `.bss.trace` map (one entry, this struct), not pinned, owned by the program. Read
/// by direct value address; volatile, as SETTINGS.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.trace")]
static mut TRACE: TraceTarget = TraceTarget {
    until_ns: 0,
    family: 0,
    flags: 0,
    addr: [0; 16],
    mask: [0; 16],
};

/// This CPU's counters. No atomics needed on them: an XDP program runs with migration
/// disabled, so nothing else writes this CPU's slot meanwhile.
#[inline(always)]
pub fn counters() -> Option<*mut Counters> {
    STATS.get_ptr_mut(0)
}

/// This CPU's clock cache slot.
#[inline(always)]
pub fn clock_cache() -> Option<*mut ClockCache> {
    CLOCK.get_ptr_mut(0)
}

/// The flags word of SETTINGS.
#[inline(always)]
pub fn settings_flags() -> u32 {
    // SAFETY: a live global (the map's value); user space replaces it with one 8-byte write.
    unsafe { read_volatile(&raw const SETTINGS.flags) }
}

/// The trace switch, writable: the program clears it once its deadline has passed.
#[inline(always)]
pub fn trace_target() -> *mut TraceTarget {
    &raw mut TRACE
}

/// Longest-prefix match in PREFIX_V4, as the kernel's (writable) pointer to the value.
#[inline(always)]
pub fn prefix_v4(addr: [u8; 4]) -> Option<*mut PrefixBan> {
    lpm_lookup(&PREFIX_V4, &Key::new(32, addr))
}

/// Longest-prefix match in PREFIX_V6, as the kernel's (writable) pointer to the value.
#[inline(always)]
pub fn prefix_v6(addr: [u8; 16]) -> Option<*mut PrefixBan> {
    lpm_lookup(&PREFIX_V6, &Key::new(128, addr))
}

/// `bpf_map_lookup_elem` on an LPM trie. aya-ebpf's `LpmTrie::get` returns a shared reference,
/// and the hit counter must be written through the pointer the helper returns, which the
/// kernel hands out writable (the verifier types it PTR_TO_MAP_VALUE, read-write).
#[inline(always)]
fn lpm_lookup<M, K>(map: &M, key: &Key<K>) -> Option<*mut PrefixBan> {
    // SAFETY: `map` is a `#[btf_map]` static: its address is what the loader relocates into
    // the map's fd (the same pointer aya-ebpf's own lookups pass), and the helper only reads
    // the key, a live stack value of the trie's key type.
    let value = unsafe {
        bpf_map_lookup_elem(
            map as *const M as *mut c_void,
            key as *const Key<K> as *const c_void,
        )
    };
    (!value.is_null()).then_some(value.cast())
}
