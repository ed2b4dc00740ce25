//! The contract between the XDP program (`detector-ebpf`) and user space (`detector`).
//!
//! Everything here is `#[repr(C)]`, fixed-size and `no_std`: the same bytes are written by
//! user space into BPF maps and read by the kernel program. `aya::Pod` is implemented only
//! behind the `user` feature so the eBPF build does not pull in aya.
#![no_std]

/// Directory under bpffs where maps and XDP links are pinned.
pub const PIN_DIR: &str = "/sys/fs/bpf/detector";

/// Version of the map layout below. Bump it whenever a key/value struct, a map type or a
/// stats index changes; the loader refuses to adopt pins written with another version.
pub const LAYOUT_VERSION: u32 = 1;

/// Map names (BPF object names are limited to 15 bytes).
pub mod map_names {
    /// Exact IPv4 bans: HASH<Ipv4Key, ExactBan>.
    pub const BANS_V4: &str = "BANS_V4";
    /// Exact IPv6 bans: HASH<Ipv6Key, ExactBan>.
    pub const BANS_V6: &str = "BANS_V6";
    /// IPv4 prefix bans: LPM_TRIE<[u8; 4], PrefixBan>.
    pub const PREFIX_V4: &str = "PREFIX_V4";
    /// IPv6 prefix bans: LPM_TRIE<[u8; 16], PrefixBan>.
    pub const PREFIX_V6: &str = "PREFIX_V6";
    /// PERCPU_ARRAY<Counters> with one entry (index 0).
    pub const STATS: &str = "STATS";
    /// ARRAY with one entry (index 0) whose value is a [`Settings`](super::Settings). This is
    /// its pin name; in the object it is the map of the program's SETTINGS global
    /// ([`SETTINGS_OBJECT`]), which the program reads by direct value address (no lookup).
    pub const SETTINGS: &str = "SETTINGS";
    /// The object's name for the SETTINGS map: the section holding the SETTINGS global, and
    /// nothing else. Pins of earlier builds (a BTF-defined array of the same layout) are
    /// adopted as they are.
    pub const SETTINGS_OBJECT: &str = ".data.settings";
}

/// The program's SETTINGS global (symbol name). The loader sets its value at load time
/// (`EbpfLoader::override_global`): aya writes a data section's bytes into its map on every
/// load, pinned or not, so the loader passes the pinned map's current value.
pub const SETTINGS_GLOBAL: &str = "SETTINGS";

/// The XDP program's name in the object file.
pub const XDP_PROGRAM: &str = "detector_xdp";

/// The re-ban program's name in the object file: run by user space through
/// BPF_PROG_TEST_RUN (never attached), it extends an exact ban in place. A hash update
/// replaces the whole element, so a read-then-write from user space would lose the drops the
/// XDP program counts on the old element meanwhile; writing only the expiry and reason
/// through the map's value pointer leaves the hit counter to the XDP program alone.
pub const REBAN_PROGRAM: &str = "detector_reban";

/// The input of [`REBAN_PROGRAM`] (its "frame"): 40 bytes without implicit padding, more
/// than the 14 the kernel wants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebanRequest {
    /// [`reban::MAGIC`]: a real frame, were the program ever attached, is not a request.
    pub magic: u32,
    /// 4 or 6: which exact map, and how much of `addr` is the key.
    pub family: u32,
    /// The new expiry (CLOCK_MONOTONIC ns, 0 = permanent).
    pub expires_ns: u64,
    /// IPv4 in the first 4 bytes, or IPv6; network byte order.
    pub addr: [u8; 16],
    /// The new reason code.
    pub reason: u32,
    pub pad: u32,
}

impl RebanRequest {
    pub const SIZE: usize = 40;

    /// The bytes the program reads (host byte order, as the kernel's).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.magic.to_ne_bytes());
        b[4..8].copy_from_slice(&self.family.to_ne_bytes());
        b[8..16].copy_from_slice(&self.expires_ns.to_ne_bytes());
        b[16..32].copy_from_slice(&self.addr);
        b[32..36].copy_from_slice(&self.reason.to_ne_bytes());
        b[36..40].copy_from_slice(&self.pad.to_ne_bytes());
        b
    }
}

const _: () = assert!(core::mem::size_of::<RebanRequest>() == RebanRequest::SIZE);

/// Return values of [`REBAN_PROGRAM`] (within the XDP action range the verifier allows).
pub mod reban {
    pub const MAGIC: u32 = 0x5245_4241;
    /// The input is not a request.
    pub const BAD_REQUEST: u32 = 0;
    /// No entry under the key: nothing written (user space inserts one).
    pub const ABSENT: u32 = 1;
    /// The entry's expiry and reason were rewritten in place.
    pub const UPDATED: u32 = 2;
}

/// Reference programs for `cargo xtask bench xdp` (run through BPF_PROG_TEST_RUN only). They
/// live in a separate object (`detector-bench`, beside a copy of [`XDP_PROGRAM`] sharing its
/// maps), so the object detector ships and attaches holds the production program alone.
pub mod bench_programs {
    /// Returns XDP_PASS and nothing else: the harness floor.
    pub const EMPTY: &str = "bench_empty";
    /// Ethernet + IPv4 at fixed offsets, one BANS_V4 lookup, drop on hit.
    pub const BARE_V4: &str = "bench_bare_v4";
    /// Ethernet + IPv6 at fixed offsets, one BANS_V6 lookup, drop on hit.
    pub const BARE_V6: &str = "bench_bare_v6";
    /// The production program compiled without trace support: the off-cost of tracing is
    /// `XDP_PROGRAM` against this one.
    pub const NO_TRACE: &str = "bench_no_trace";
}

/// Default capacity of each exact ban map (per address family).
pub const DEFAULT_EXACT_CAPACITY: u32 = 1 << 20;
/// Default capacity of each prefix trie (per address family). LPM lookups get slower with
/// depth, so prefix bans are meant to stay few.
pub const DEFAULT_PREFIX_CAPACITY: u32 = 1 << 16;

/// Key of the exact IPv4 ban map: the address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Key {
    pub addr: [u8; 4],
}

/// Key of the exact IPv6 ban map: the address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Key {
    pub addr: [u8; 16],
}

/// Value of an exact ban.
///
/// Expiry uses CLOCK_MONOTONIC nanoseconds because the XDP program reads it with
/// `bpf_ktime_get_coarse_ns` (~3 ns, against ~25 ns for the precise clocks), and user space can
/// read the same clock with `clock_gettime(CLOCK_MONOTONIC)`. The coarse clock has jiffy
/// resolution (≤ 4 ms), which is irrelevant for bans measured in seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExactBan {
    /// CLOCK_MONOTONIC ns after which the ban no longer drops; 0 = permanent.
    pub expires_ns: u64,
    /// Packets dropped because of this entry (atomic add in the kernel).
    pub hits: u64,
    /// One of [`reason`].
    pub reason: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// Value of a prefix ban. An LPM trie stores the value right after the key bytes, so its
/// alignment must not exceed 4 (the IPv4 key is 4 bytes): hence 32-bit fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixBan {
    /// CLOCK_MONOTONIC seconds after which the ban no longer drops; 0 = permanent.
    pub expires_s: u32,
    /// Packets dropped because of this entry (atomic add, wraps at 2^32).
    pub hits: u32,
    /// One of [`reason`].
    pub reason: u32,
}

/// Runtime switches of the XDP program (SETTINGS[0]). User space changes them while the
/// program runs (observe mode, the prefix flags on every prefix ban and unban), so they are a
/// writable global, not a load-time constant.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Bit set of [`settings_flags`].
    pub flags: u32,
    /// [`LAYOUT_VERSION`] of the loader that created the pinned maps. User space checks it
    /// before adopting pins left by an earlier run (aya itself reuses pins without checks).
    pub layout_version: u32,
}

pub mod settings_flags {
    /// Count matches but pass them (dry run).
    pub const OBSERVE: u32 = 1 << 0;
    /// PREFIX_V4 holds at least one entry; otherwise its (slow) lookup is skipped.
    pub const HAVE_PREFIX_V4: u32 = 1 << 1;
    /// PREFIX_V6 holds at least one entry.
    pub const HAVE_PREFIX_V6: u32 = 1 << 2;
    /// User space only (the XDP program ignores it): a daemon has written its engine's bans
    /// into these maps. A fresh attach (after a reboot or a detach) starts without it, so the
    /// next daemon restores its bans; with it, a ban missing from the maps was removed by an
    /// administrator. The top bit, so program flags can grow from the bottom.
    pub const ENGINE_SYNCED: u32 = 1 << 31;
}

/// What a counter counts (how user space exports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// Frames, by verdict (`detector_xdp_packets_total{verdict=NAME}`).
    Packets,
    /// Bytes (`detector_xdp_NAME_total`).
    Bytes,
}

/// One counter of [`Counters`]: its field name, a one-line description, what it counts and
/// how to read it. [`COUNTERS`] lists them all, so `stats`, the JSON output and the metrics
/// follow the struct without a second list.
#[derive(Clone, Copy)]
pub struct CounterInfo {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: CounterKind,
    pub get: fn(&Counters) -> u64,
}

/// Declares [`Counters`] and [`COUNTERS`] from one list.
macro_rules! counters {
    ($( #[doc = $help:literal] $field:ident: $kind:ident, )+) => {
        /// The XDP program's counters: STATS is a per-CPU array with one `Counters` (index 0),
        /// so a frame costs one map lookup whatever it bumps. Seen = passed + dropped.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $( #[doc = $help] pub $field: u64, )+
        }

        /// Every field of [`Counters`], in declaration order.
        pub const COUNTERS: &[CounterInfo] = &[
            $( CounterInfo {
                name: stringify!($field),
                help: $help.trim_ascii(),
                kind: CounterKind::$kind,
                get: |c| c.$field,
            }, )+
        ];

        impl Counters {
            /// Adds `other` field by field (summing per-CPU slots); wraps like the kernel's.
            pub fn add(&mut self, other: &Counters) {
                $( self.$field = self.$field.wrapping_add(other.$field); )+
            }
        }
    };
}

counters! {
    /// Frames passed (not banned, or banned in observe mode).
    passed: Packets,
    /// Frames dropped because their source is banned.
    dropped: Packets,
    /// Bytes of the dropped frames.
    dropped_bytes: Bytes,
    /// Frames that matched a live ban in observe mode (passed, counted in `passed` too).
    observed: Packets,
    /// Frames that matched an expired ban (passed).
    expired_hits: Packets,
    /// Truncated or malformed frames (passed).
    malformed: Packets,
    /// Non-IP frames such as ARP (passed).
    non_ip: Packets,
}

impl Counters {
    /// Frames seen: passed + dropped.
    pub fn seen(&self) -> u64 {
        self.passed.wrapping_add(self.dropped)
    }
}

/// Why an entry is in the ban maps. Rule codes mirror the engine's rule names.
pub mod reason {
    pub const MANUAL: u32 = 0;
    pub const PROBE_LOGIN: u32 = 1;
    pub const SLOW_REPEAT: u32 = 2;
    pub const TARGET_CAMPAIGN: u32 = 3;
    pub const BURST: u32 = 4;
    /// A decision pulled from a CrowdSec Local API (origin and scenario: the state directory).
    pub const CROWDSEC: u32 = 5;
    /// An entry of a blocklist loaded with `detector ban --from`.
    pub const BLOCKLIST: u32 = 6;
    pub const OTHER: u32 = 255;
}

// ---------------------------------------------------------------------------------------------
// Tracing (`detector trace`): one source address or prefix whose verdicts the XDP program logs
// through aya-log while a deadline has not passed.
// ---------------------------------------------------------------------------------------------

/// The trace switch: an ARRAY with one entry (index 0) whose value is a [`TraceTarget`], not
/// pinned. It belongs to the loaded program (its TRACE global, read by direct value address),
/// and `detector trace` reaches it through the pinned program's map ids.
pub mod trace {
    /// Map name of the trace switch: the section holding the program's TRACE global alone.
    pub const MAP: &str = ".bss.trace";
    /// Its name in programs of earlier builds (a BTF-defined array of the same layout), which
    /// may still be the pinned program until the next `attach`.
    pub const MAP_BEFORE_GLOBALS: &str = "TRACE";

    /// What to trace. `until_ns == 0` means off: the program's whole cost then is one array
    /// lookup and one compare. Past `until_ns` the program clears the entry itself, so a trace
    /// whose process died lifts by itself.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct TraceTarget {
        /// CLOCK_MONOTONIC ns after which tracing stops; 0 = off.
        pub until_ns: u64,
        /// 4 or 6.
        pub family: u32,
        /// Reserved, zero.
        pub flags: u32,
        /// Network address, masked (IPv4 in the first 4 bytes).
        pub addr: [u8; 16],
        /// Netmask (IPv4 in the first 4 bytes).
        pub mask: [u8; 16],
    }

    /// `verdict=` codes of a trace line.
    pub mod verdict {
        /// No ban matched: passed.
        pub const PASS: u32 = 0;
        /// A live ban matched: dropped.
        pub const DROP: u32 = 1;
        /// A live ban matched in observe mode: counted and passed.
        pub const OBSERVED: u32 = 2;
        /// Only an expired ban matched: passed.
        pub const EXPIRED: u32 = 3;
    }

    /// `ban=` codes of a trace line: which map the deciding entry is in.
    pub mod ban_kind {
        pub const NONE: u32 = 0;
        pub const EXACT: u32 = 1;
        pub const PREFIX: u32 = 2;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), contain only integers and have no padding holes
    // that could leak uninitialised memory (fields are laid out to fill their size).
    unsafe impl aya::Pod for super::Ipv4Key {}
    unsafe impl aya::Pod for super::Ipv6Key {}
    unsafe impl aya::Pod for super::ExactBan {}
    unsafe impl aya::Pod for super::PrefixBan {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::trace::TraceTarget {}
}
