//! `detector trace`: while TRACE[0] is set and its deadline has not passed, every frame from
//! the traced source gets one aya-log line with its verdict and the ban that decided it.
//!
//! Off (`until_ns == 0`), this costs one array lookup and one compare per frame (see xdp::run).
//! The line is `key=value` numbers (codes from detector_common::trace), which `detector trace`
//! renders; IPv4 sources are logged as IPv4-mapped IPv6 so there is one log call site.
use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::info;
use detector_common::trace::TraceTarget;

use crate::maps::trace_target;
use crate::xdp::{Found, coarse_now};

const NS_PER_S: u64 = 1_000_000_000;

/// Logs the frame if its IPv4 source is inside the trace target `t` (from [`active`]).
#[inline(always)]
pub fn v4(
    ctx: &XdpContext,
    t: *mut TraceTarget,
    addr: [u8; 4],
    found: Found,
    now: &mut Option<u64>,
) {
    // SAFETY: `t` is TRACE[0] (see `active`); the fields are plain integers.
    let (family, net, mask) = unsafe { ((*t).family, (*t).addr, (*t).mask) };
    let src = u32::from_ne_bytes(addr);
    let net = u32::from_ne_bytes([net[0], net[1], net[2], net[3]]);
    let mask = u32::from_ne_bytes([mask[0], mask[1], mask[2], mask[3]]);
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
pub fn v6(
    ctx: &XdpContext,
    t: *mut TraceTarget,
    addr: [u8; 16],
    found: Found,
    now: &mut Option<u64>,
) {
    // SAFETY: `t` is TRACE[0] (see `active`); the fields are plain integers.
    let (family, net, mask) = unsafe { ((*t).family, (*t).addr, (*t).mask) };
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
    for i in [0, 8] {
        if half(&addr, i) & half(&mask, i) != half(&net, i) {
            return;
        }
    }
    log(ctx, addr, found, now);
}

/// TRACE[0] when a trace is on. Past its deadline the entry is switched off here, so a trace
/// whose `detector trace` process died stops by itself (and the off-cost returns).
#[inline(always)]
pub fn active(now: &mut Option<u64>) -> Option<*mut TraceTarget> {
    let t = trace_target()?;
    // SAFETY: `t` is the array's own pointer to its single element, valid for the program's
    // run; user space replaces the element whole, and an aligned u64 read cannot tear.
    let until = unsafe { (*t).until_ns };
    if until == 0 {
        return None;
    }
    if coarse_now(now) >= until {
        // SAFETY: as above; the element is writable (get_ptr_mut). A racing new trace written
        // by user space in between loses at worst this one switch-off, never memory safety.
        unsafe { (*t).until_ns = 0 };
        return None;
    }
    Some(t)
}

#[inline(always)]
fn log(ctx: &XdpContext, src: [u8; 16], found: Found, now: &mut Option<u64>) {
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
