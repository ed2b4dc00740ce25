//! `detector trace`: while TRACE is set and its deadline has not passed, every frame from
//! the traced source gets one aya-log line with its verdict and the ban that decided it.
//!
//! Off (`until_ns == 0`), this costs one array lookup and one compare per frame (see xdp::run).
//! The line is `key=value` numbers (codes from detector_common::trace), which `detector trace`
//! renders; IPv4 sources are logged as IPv4-mapped IPv6 so there is one log call site.
use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::info;
use core::ptr::{read_volatile, write_volatile};
use detector_common::trace::TraceTarget;

use crate::maps::trace_target;
use crate::xdp::{Found, coarse_now};

const NS_PER_S: u64 = 1_000_000_000;

/// Logs the frame if its IPv4 source is inside the trace target `t` (from [`active`]).
#[inline(always)]
pub fn v4(ctx: &XdpContext, t: *mut TraceTarget, addr: [u8; 4], found: Found, now: &mut u64) {
    // SAFETY: `t` is TRACE (see `active`); the fields are plain integers, and `addr` and
    // `mask` start 8-byte aligned (after a u64 and two u32s).
    let (family, net, mask) = unsafe {
        (
            read_volatile(&raw const (*t).family),
            read_volatile((&raw const (*t).addr).cast::<u32>()),
            read_volatile((&raw const (*t).mask).cast::<u32>()),
        )
    };
    let src = u32::from_ne_bytes(addr);
    if family != 4 || src & mask != net {
        return;
    }
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12..].copy_from_slice(&addr);
    log(ctx, mapped, found, now);
}

/// Logs the frame if its IPv6 source is inside the trace target `t` (from [`active`]).
#[inline(always)]
pub fn v6(ctx: &XdpContext, t: *mut TraceTarget, addr: [u8; 16], found: Found, now: &mut u64) {
    // SAFETY: `t` is TRACE (see `active`); read as in `v4`.
    let family = unsafe { read_volatile(&raw const (*t).family) };
    if family != 6 {
        return;
    }
    let half = |b: &[u8; 16], i: usize| {
        u64::from_ne_bytes([
            b[i],
            b[i + 1],
            b[i + 2],
            b[i + 3],
            b[i + 4],
            b[i + 5],
            b[i + 6],
            b[i + 7],
        ])
    };
    for i in 0..2 {
        // SAFETY: as above; word `i` of the 16-byte, 8-byte aligned fields.
        let (net, mask) = unsafe {
            (
                read_volatile((&raw const (*t).addr).cast::<u64>().add(i)),
                read_volatile((&raw const (*t).mask).cast::<u64>().add(i)),
            )
        };
        if half(&addr, i * 8) & mask != net {
            return;
        }
    }
    log(ctx, addr, found, now);
}

/// TRACE when a trace is on. Past its deadline the entry is switched off here, so a trace
/// whose `detector trace` process died stops by itself (and the off-cost returns).
#[inline(always)]
pub fn active(now: &mut u64) -> Option<*mut TraceTarget> {
    let t = trace_target();
    // SAFETY: `t` is the TRACE global (its map's value), valid for the program's run; user
    // space replaces the value whole, and an aligned u64 read cannot tear. Volatile: user
    // space writes it while the program runs (maps::TRACE).
    let until = unsafe { read_volatile(&raw const (*t).until_ns) };
    if until == 0 {
        return None;
    }
    if coarse_now(now) >= until {
        // SAFETY: as above; the global is writable. A racing new trace written by user space
        // in between loses at worst this one switch-off, never memory safety.
        unsafe { write_volatile(&raw mut (*t).until_ns, 0) };
        return None;
    }
    Some(t)
}

#[inline(always)]
fn log(ctx: &XdpContext, src: [u8; 16], found: Found, now: &mut u64) {
    // -1: permanent; otherwise whole seconds left (0 once expired).
    let left_s: i64 = if found.expires_ns == 0 {
        -1
    } else {
        (found.expires_ns.saturating_sub(coarse_now(now)) / NS_PER_S) as i64
    };
    info!(
        ctx,
        "trace src={:i} verdict={} ban={} reason={} left_s={}",
        src,
        found.verdict,
        found.kind,
        found.reason,
        left_s
    );
}
