//! `detector_xdp`: drops frames whose IPv4/IPv6 source is banned, passes everything else.
//!
//! Per frame on the common path (source not banned): one exact-hash lookup, one SETTINGS array
//! read and one per-CPU counter. The clock is read only when an entry matched, and the (slow)
//! LPM trie is consulted only while SETTINGS says it holds something.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    btf_maps::lpm_trie::Key,
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::xdp,
    programs::XdpContext,
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use detector_common::{Counters, ExactBan, Ipv4Key, Ipv6Key, PrefixBan, settings_flags as sf};

use crate::maps::{BANS_V4, BANS_V6, PREFIX_V4, PREFIX_V6, counters, settings_flags};
use crate::packet::{Source, source};

const NS_PER_S: u64 = 1_000_000_000;

enum Verdict {
    Pass,
    Drop,
}

/// Adds to one field of this CPU's counters (if the STATS slot exists, which it always does).
macro_rules! bump {
    ($c:expr, $field:ident, $n:expr) => {
        if let Some(c) = $c {
            // SAFETY: this CPU's slot of a live per-CPU array element (see maps::counters).
            unsafe { (*c).$field += $n }
        }
    };
}

#[xdp]
pub fn detector_xdp(ctx: XdpContext) -> u32 {
    let c = counters();
    let verdict = match source(&ctx) {
        Source::V4(addr) => {
            let flags = settings_flags();
            let exact = BANS_V4.get_ptr_mut(Ipv4Key { addr });
            check(c, exact, flags, flags & sf::HAVE_PREFIX_V4 != 0, || {
                PREFIX_V4.get(&Key::new(32, addr))
            })
        }
        Source::V6(addr) => {
            let flags = settings_flags();
            let exact = BANS_V6.get_ptr_mut(Ipv6Key { addr });
            check(c, exact, flags, flags & sf::HAVE_PREFIX_V6 != 0, || {
                PREFIX_V6.get(&Key::new(128, addr))
            })
        }
        Source::NonIp => {
            bump!(c, non_ip, 1);
            Verdict::Pass
        }
        Source::Malformed => {
            bump!(c, malformed, 1);
            Verdict::Pass
        }
    };
    match verdict {
        Verdict::Drop => {
            bump!(c, dropped, 1);
            bump!(c, dropped_bytes, (ctx.data_end() - ctx.data()) as u64);
            XDP_DROP
        }
        Verdict::Pass => {
            bump!(c, passed, 1);
            XDP_PASS
        }
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
    prefix_lookup: impl FnOnce() -> Option<&'static PrefixBan>,
) -> Verdict {
    let mut now: Option<u64> = None;
    if let Some(ban) = exact {
        // SAFETY: `ban` points into a live hash element; a concurrent delete from user space
        // frees it only after an RCU grace period, which cannot end while we run.
        let expires = unsafe { (*ban).expires_ns };
        // Permanent bans never read the clock.
        if expires == 0 || coarse_now(&mut now) < expires {
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*ban).hits, 1)
            };
            return matched(c, flags);
        }
        bump!(c, expired_hits, 1);
    }
    if have_prefix && let Some(ban) = prefix_lookup() {
        let ban = ban as *const PrefixBan as *mut PrefixBan;
        let expires_s = u64::from(unsafe { (*ban).expires_s });
        if expires_s == 0 || coarse_now(&mut now) / NS_PER_S < expires_s {
            unsafe {
                atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut (*ban).hits, 1)
            };
            return matched(c, flags);
        }
        bump!(c, expired_hits, 1);
    }
    Verdict::Pass
}

/// A live ban matched: drop, or in observe mode count it and pass.
#[inline(always)]
fn matched(c: Option<*mut Counters>, flags: u32) -> Verdict {
    if flags & sf::OBSERVE != 0 {
        bump!(c, observed, 1);
        Verdict::Pass
    } else {
        Verdict::Drop
    }
}

/// CLOCK_MONOTONIC_COARSE in ns (~3 ns against ~25 ns for the precise clocks), read at most
/// once per frame and only after a map hit.
#[inline(always)]
fn coarse_now(cache: &mut Option<u64>) -> u64 {
    *cache.get_or_insert_with(|| unsafe { bpf_ktime_get_coarse_ns() })
}
