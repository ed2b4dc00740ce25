//! The per-frame logic of `detector_xdp`: drop frames whose IPv4/IPv6 source is banned, pass
//! everything else.
//!
//! Per frame on the common path (source not banned): one exact-hash lookup, one SETTINGS array
//! read, one per-CPU counter and, with `TRACE`, one TRACE array read first. The clock is read
//! only when an entry matched (or while a trace is on), and the (slow) LPM trie is consulted
//! only while SETTINGS says it holds something.
//!
//! The trace switch is checked once, up front, and selects one of two copies of the logic: the
//! one without tracing is exactly the program built without trace support, so tracing off
//! costs that one check and nothing in the rest of the frame's path.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::generated::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use detector_common::{
    Counters, ExactBan, Ipv4Key, Ipv6Key, PrefixBan, settings_flags as sf,
    trace::{TraceTarget, ban_kind, verdict},
};

use crate::maps::{BANS_V4, BANS_V6, counters, prefix_v4, prefix_v6, settings_flags};
use crate::packet::{Source, source};
use crate::trace;

const NS_PER_S: u64 = 1_000_000_000;

/// What the ban maps said about a source: the verdict, and for a trace line which entry
/// decided it. Without tracing only `drop` is used, and the compiler drops the rest.
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
}

impl Found {
    const NOTHING: Found = Found {
        drop: false,
        verdict: verdict::PASS,
        kind: ban_kind::NONE,
        reason: 0,
        expires_ns: 0,
    };
}

/// Adds to one field of this CPU's counters (if the STATS slot exists, which it always does).
macro_rules! bump {
    ($c:expr, $field:ident, $n:expr) => {
        if let Some(c) = $c {
            // SAFETY: `c` points at this CPU's slot of a live per-CPU array element, which
            // nothing else writes while we run (see maps::counters).
            unsafe { (*c).$field += $n }
        }
    };
}

/// The program: `TRACE` = false builds the same program without trace support (only the
/// bench object has that variant, to measure what tracing costs while it is off).
#[inline(always)]
pub fn run<const TRACE: bool>(ctx: &XdpContext) -> u32 {
    if TRACE {
        let mut now = None;
        if let Some(target) = trace::active(&mut now) {
            return decide::<true>(ctx, Some(target), now);
        }
    }
    decide::<false>(ctx, None, None)
}

/// One frame's verdict; with `TRACING`, frames from `target` are logged.
#[inline(always)]
fn decide<const TRACING: bool>(
    ctx: &XdpContext,
    target: Option<*mut TraceTarget>,
    mut now: Option<u64>,
) -> u32 {
    let c = counters();
    let drop = match source(ctx) {
        Source::V4(addr) => {
            let flags = settings_flags();
            let exact = BANS_V4.get_ptr_mut(Ipv4Key { addr });
            let found = check(
                c,
                exact,
                flags,
                flags & sf::HAVE_PREFIX_V4 != 0,
                &mut now,
                || prefix_v4(addr),
            );
            if TRACING && let Some(t) = target {
                trace::v4(ctx, t, addr, found, &mut now);
            }
            found.drop
        }
        Source::V6(addr) => {
            let flags = settings_flags();
            let exact = BANS_V6.get_ptr_mut(Ipv6Key { addr });
            let found = check(
                c,
                exact,
                flags,
                flags & sf::HAVE_PREFIX_V6 != 0,
                &mut now,
                || prefix_v6(addr),
            );
            if TRACING && let Some(t) = target {
                trace::v6(ctx, t, addr, found, &mut now);
            }
            found.drop
        }
        Source::NonIp => {
            bump!(c, non_ip, 1);
            false
        }
        Source::Malformed => {
            bump!(c, malformed, 1);
            false
        }
    };
    if drop {
        bump!(c, dropped, 1);
        bump!(c, dropped_bytes, (ctx.data_end() - ctx.data()) as u64);
        XDP_DROP
    } else {
        bump!(c, passed, 1);
        XDP_PASS
    }
}

/// Exact ban first (cheap hash), then the prefix trie if it has entries. An expired exact
/// entry does not hide a live prefix ban covering the same address.
#[inline(always)]
fn check(
    c: Option<*mut Counters>,
    exact: Option<*mut ExactBan>,
    flags: u32,
    have_prefix: bool,
    now: &mut Option<u64>,
    prefix_lookup: impl FnOnce() -> Option<*mut PrefixBan>,
) -> Found {
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
            return matched(c, flags, ban_kind::EXACT, reason, expires);
        }
        bump!(c, expired_hits, 1);
        found = Found {
            verdict: verdict::EXPIRED,
            kind: ban_kind::EXACT,
            reason,
            expires_ns: expires,
            ..Found::NOTHING
        };
    }
    if have_prefix && let Some(ban) = prefix_lookup() {
        // SAFETY: `ban` is the trie's own writable pointer to a live node value (maps::
        // lpm_lookup); nodes are freed after an RCU grace period, as for the hash above.
        let (expires_s, reason) = unsafe { (u64::from((*ban).expires_s), (*ban).reason) };
        if expires_s == 0 || coarse_now(now) / NS_PER_S < expires_s {
            // SAFETY: as above; atomic because other CPUs count the same entry.
            unsafe {
                atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*ban).hits, 1)
            };
            return matched(c, flags, ban_kind::PREFIX, reason, expires_s * NS_PER_S);
        }
        bump!(c, expired_hits, 1);
        found = Found {
            verdict: verdict::EXPIRED,
            kind: ban_kind::PREFIX,
            reason,
            expires_ns: expires_s * NS_PER_S,
            ..Found::NOTHING
        };
    }
    found
}

/// A live ban matched: drop, or in observe mode count it and pass.
#[inline(always)]
fn matched(c: Option<*mut Counters>, flags: u32, kind: u32, reason: u32, expires_ns: u64) -> Found {
    let observe = flags & sf::OBSERVE != 0;
    if observe {
        bump!(c, observed, 1);
    }
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
    }
}

/// CLOCK_MONOTONIC_COARSE in ns (~3 ns against ~25 ns for the precise clocks), read at most
/// once per frame and only after a map hit (or while a trace is on).
#[inline(always)]
pub fn coarse_now(cache: &mut Option<u64>) -> u64 {
    // SAFETY: a helper without arguments or side effects.
    *cache.get_or_insert_with(|| unsafe { bpf_ktime_get_coarse_ns() })
}
