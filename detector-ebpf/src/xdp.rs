use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};

#[xdp]
pub fn detector_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}
