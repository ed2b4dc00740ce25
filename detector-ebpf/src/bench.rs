//! Reference programs for `cargo xtask bench xdp` (run only through BPF_PROG_TEST_RUN; never
//! attached), in the bench object only. They share detector_xdp's maps so every variant sees
//! the same entries.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use detector_common::{Ipv4Key, Ipv6Key};

use crate::maps::{BANS_V4, BANS_V6};

/// The harness floor: returns XDP_PASS.
#[xdp]
pub fn bench_empty(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The least a ban check can do: untagged Ethernet + IPv4 at fixed offsets, one hash lookup
/// keyed straight from the frame (as the real program does; copying the address to the stack
/// first costs more, most for IPv6).
#[xdp]
pub fn bench_bare_v4(ctx: XdpContext) -> u32 {
    let s = ctx.data();
    if s + 34 > ctx.data_end() {
        return XDP_PASS;
    }
    // SAFETY: the frame holds the 4 bytes (bounds checked above); Ipv4Key is 4 bytes with
    // alignment 1.
    let key = unsafe { &*((s + 26) as *const Ipv4Key) };
    if BANS_V4.get_ptr(key).is_some() {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// Same for IPv6: fixed offsets, one 16-byte-key hash lookup keyed from the frame.
#[xdp]
pub fn bench_bare_v6(ctx: XdpContext) -> u32 {
    let s = ctx.data();
    if s + 54 > ctx.data_end() {
        return XDP_PASS;
    }
    // SAFETY: the frame holds the 16 bytes (bounds checked above); Ipv6Key is 16 bytes with
    // alignment 1.
    let key = unsafe { &*((s + 22) as *const Ipv6Key) };
    if BANS_V6.get_ptr(key).is_some() {
        XDP_DROP
    } else {
        XDP_PASS
    }
}
