//! The bench object (`detector-bench`), for `cargo xtask bench xdp` only (BPF_PROG_TEST_RUN;
//! never shipped or attached): the production `detector_xdp`, the same program built without
//! trace support, and the reference programs, all sharing one set of maps.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod clock;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod trace;
#[cfg(target_arch = "bpf")]
mod xdp;

/// Exactly the production program.
#[cfg(target_arch = "bpf")]
#[aya_ebpf::macros::xdp]
pub fn detector_xdp(ctx: aya_ebpf::programs::XdpContext) -> u32 {
    xdp::run::<true>(&ctx)
}

/// The production program without trace support: the baseline for the cost of tracing off.
#[cfg(target_arch = "bpf")]
#[aya_ebpf::macros::xdp]
pub fn bench_no_trace(ctx: aya_ebpf::programs::XdpContext) -> u32 {
    xdp::run::<false>(&ctx)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
