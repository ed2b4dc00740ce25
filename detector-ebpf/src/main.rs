//! The production object (`detector`): `detector_xdp`, `detector_reban` and their maps. The bench
//! reference programs are in a separate object (src/bench_main.rs).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `core::intrinsics::atomic_xadd` is the only way to get a BPF atomic add on bpfel
// (`AtomicU64::fetch_add` does not exist for that target).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod clock;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod reban;
#[cfg(target_arch = "bpf")]
mod trace;
#[cfg(target_arch = "bpf")]
mod xdp;

/// detector's XDP program: drops frames from banned sources, logs traced ones.
#[cfg(target_arch = "bpf")]
#[aya_ebpf::macros::xdp]
pub fn detector_xdp(ctx: aya_ebpf::programs::XdpContext) -> u32 {
    xdp::run::<true>(&ctx)
}

/// Extends an exact ban in place; run through BPF_PROG_TEST_RUN only (see
/// detector_common::REBAN_PROGRAM).
#[cfg(target_arch = "bpf")]
#[aya_ebpf::macros::xdp]
pub fn detector_reban(ctx: aya_ebpf::programs::XdpContext) -> u32 {
    reban::run(&ctx)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Host builds (clippy, `cargo test --workspace`) compile this stub; the real program is
    // built for bpfel-unknown-none by detector/build.rs.
}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
