//! The per-frame logic of `detector_xdp`: drop frames whose IPv4/IPv6 source is banned, pass
//! everything else.
//!
//! Per frame on the common path (source not banned): the parse, one exact-hash lookup keyed
//! straight from the frame, the SETTINGS flags and one per-CPU counter, looked up after the
//! verdict so that nothing is kept across the hash lookup; with `TRACE`, one TRACE array read
//! first. The clock is read only when an entry matched (or while a trace is on), from a
//! per-CPU cache (crate::clock), and the (slow) LPM trie is consulted only while SETTINGS says
//! it holds something.
//!
//! The trace switch is checked once, up front, and selects one of two copies of the logic: the
//! one without tracing is exactly the program built without trace support, so tracing off
//! costs that one check and nothing in the rest of the frame's path.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::ptr::read_unaligned;
use detector_common::{
    ExactBan, Ipv4Key, Ipv6Key, PrefixBan, settings_flags as sf,
    trace::{TraceTarget, ban_kind, verdict},
};

use crate::maps::{BANS_V4, BANS_V6, counters, prefix_v4, prefix_v6, settings_flags};
use crate::packet::{Source, source};
use crate::{clock, trace};

const NS_PER_S: u64 = 1_000_000_000;

/// What the ban maps said about a source: the verdict, what to count, and for a trace line
/// which entry decided it. Without tracing the compiler drops what is not used.
#[derive(Clone, Copy)]
pub struct Found {
    pub drop: bool,
    /// One of detector_common::trace::verdict.
    pub verdict: u32,
    /// One of detector_common::trace::ban_kind.
    pub kind: u32,
    pub reason: u32,
    /// CLOCK_MONOTONIC ns; 0 = permanent.
    pub expires_ns: u64,
    /// What to count besides passed/dropped, a bit set of [`event`]; 0 on the common paths,
    /// so that counting them costs one test there.
    pub events: u32,
}

/// Bits of [`Found::events`].
mod event {
    /// The expired entries that matched (exact, prefix: 0 to 2), added to `expired_hits`.
    pub const EXPIRED_ONE: u32 = 1;
    pub const EXPIRED_MASK: u32 = 0b11;
    pub const OBSERVED: u32 = 1 << 2;
    pub const NON_IP: u32 = 1 << 3;
    pub const MALFORMED: u32 = 1 << 4;
}

impl Found {
    const NOTHING: Found = Found {
        drop: false,
        verdict: verdict::PASS,
        kind: ban_kind::NONE,
        reason: 0,
        expires_ns: 0,
        events: 0,
    };
}

/// The program: `TRACE` = false builds the same program without trace support (only the
/// bench object has that variant, to measure what tracing costs while it is off).
#[inline(always)]
pub fn run<const TRACE: bool>(ctx: &XdpContext) -> u32 {
    if TRACE {
        let mut now = 0;
        if let Some(target) = trace::active(&mut now) {
            return decide::<true>(ctx, Some(target), now);
        }
    }
    decide::<false>(ctx, None, 0)
}

/// One frame's verdict; with `TRACING`, frames from `target` are logged.
#[inline(always)]
fn decide<const TRACING: bool>(
    ctx: &XdpContext,
    target: Option<*mut TraceTarget>,
    mut now: u64,
) -> u32 {
    let found = match source(ctx) {
        Source::V4(src) => {
            // SAFETY: `src` points at 4 bytes inside the frame (packet::source checked them
            // against data_end), and Ipv4Key is those 4 bytes (repr(C), alignment 1).
            let exact = BANS_V4.get_ptr_mut(unsafe { &*src.cast::<Ipv4Key>() });
            // SAFETY: as above; packet data has no alignment.
            let addr = || unsafe { read_unaligned(src) };
            let found = check(exact, sf::HAVE_PREFIX_V4, &mut now, || prefix_v4(addr()));
            if TRACING && let Some(t) = target {
                trace::v4(ctx, t, addr(), found, &mut now);
            }
            found
        }
        Source::V6(src) => {
            // SAFETY: `src` points at 16 bytes inside the frame (packet::source checked them
            // against data_end), and Ipv6Key is those 16 bytes (repr(C), alignment 1).
            let exact = BANS_V6.get_ptr_mut(unsafe { &*src.cast::<Ipv6Key>() });
            // SAFETY: as above; packet data has no alignment.
            let addr = || unsafe { read_unaligned(src) };
            let found = check(exact, sf::HAVE_PREFIX_V6, &mut now, || prefix_v6(addr()));
            if TRACING && let Some(t) = target {
                trace::v6(ctx, t, addr(), found, &mut now);
            }
            found
        }
        Source::NonIp => Found {
            events: event::NON_IP,
            ..Found::NOTHING
        },
        Source::Malformed => Found {
            events: event::MALFORMED,
            ..Found::NOTHING
        },
    };
    count(ctx, &found);
    if found.drop { XDP_DROP } else { XDP_PASS }
}

/// Bumps this CPU's counters for one frame. STATS is looked up here, after the verdict, so its
/// pointer is not kept (spilled) across the map lookups.
#[inline(always)]
fn count(ctx: &XdpContext, found: &Found) {
    let Some(c) = counters() else {
        return;
    };
    // SAFETY: `c` points at this CPU's slot of a live per-CPU array element, which nothing
    // else writes while we run: an XDP program runs with migration disabled.
    unsafe {
        if found.drop {
            (*c).dropped += 1;
            (*c).dropped_bytes += (ctx.data_end() - ctx.data()) as u64;
        } else {
            (*c).passed += 1;
        }
        let events = found.events;
        if events != 0 {
            (*c).expired_hits += u64::from(events & event::EXPIRED_MASK);
            if events & event::OBSERVED != 0 {
                (*c).observed += 1;
            }
            if events & event::NON_IP != 0 {
                (*c).non_ip += 1;
            }
            if events & event::MALFORMED != 0 {
                (*c).malformed += 1;
            }
        }
    }
}

/// Exact ban first (cheap hash), then the prefix trie if SETTINGS says it has entries
/// (`have_prefix` is that family's flag). An expired exact entry does not hide a live prefix
/// ban covering the same address.
#[inline(always)]
fn check(
    exact: Option<*mut ExactBan>,
    have_prefix: u32,
    now: &mut u64,
    prefix_lookup: impl FnOnce() -> Option<*mut PrefixBan>,
) -> Found {
    let flags = settings_flags();
    let mut found = Found::NOTHING;
    if let Some(ban) = exact {
        // SAFETY: `ban` is the hash's own pointer to a live element (get_ptr_mut); a
        // concurrent delete from user space frees it only after an RCU grace period, which
        // cannot end while we run. Plain reads of the fields user space writes are fine: a
        // torn expiry is impossible (aligned u64): user space replaces whole elements
        // or, to extend one, stores a new expiry and reason in place (detector_reban).
        let (expires, reason) = unsafe { ((*ban).expires_ns, (*ban).reason) };
        // Permanent bans never read the clock.
        if expires == 0 || coarse_now(now) < expires {
            // SAFETY: as above; the add is atomic because other CPUs count the same entry.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*ban).hits, 1)
            };
            return matched(flags, ban_kind::EXACT, reason, expires);
        }
        found = Found {
            verdict: verdict::EXPIRED,
            kind: ban_kind::EXACT,
            reason,
            expires_ns: expires,
            events: event::EXPIRED_ONE,
            ..Found::NOTHING
        };
    }
    if flags & have_prefix != 0
        && let Some(ban) = prefix_lookup()
    {
        // SAFETY: `ban` is the trie's own writable pointer to a live node value (maps::
        // lpm_lookup); nodes are freed after an RCU grace period, as for the hash above.
        let (expires_s, reason) = unsafe { (u64::from((*ban).expires_s), (*ban).reason) };
        if expires_s == 0 || coarse_now(now) / NS_PER_S < expires_s {
            // SAFETY: as above; atomic because other CPUs count the same entry.
            unsafe {
                atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*ban).hits, 1)
            };
            let mut live = matched(flags, ban_kind::PREFIX, reason, expires_s * NS_PER_S);
            live.events |= found.events;
            return live;
        }
        found = Found {
            verdict: verdict::EXPIRED,
            kind: ban_kind::PREFIX,
            reason,
            expires_ns: expires_s * NS_PER_S,
            events: found.events + event::EXPIRED_ONE,
            ..Found::NOTHING
        };
    }
    found
}

/// A live ban matched: drop, or in observe mode count it and pass.
#[inline(always)]
fn matched(flags: u32, kind: u32, reason: u32, expires_ns: u64) -> Found {
    let observe = flags & sf::OBSERVE != 0;
    Found {
        drop: !observe,
        verdict: if observe {
            verdict::OBSERVED
        } else {
            verdict::DROP
        },
        kind,
        reason,
        expires_ns,
        events: if observe { event::OBSERVED } else { 0 },
    }
}

/// CLOCK_MONOTONIC_COARSE in ns (crate::clock), read at most once per frame and only after a
/// map hit (or while a trace is on). `cache` is 0 until read: a plain u64, not an Option,
/// whose payload would be undefined while empty, and the verifier rejects a spill of an
/// uninitialised register. (The clock reads 0 only in the first tick after boot; then it is
/// simply read again.)
#[inline(always)]
pub fn coarse_now(cache: &mut u64) -> u64 {
    if *cache == 0 {
        *cache = clock::coarse_ns();
    }
    *cache
}
