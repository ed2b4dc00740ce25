//! `detector_reban`: extends an exact ban in place (see detector_common::REBAN_PROGRAM).
//! Run by user space through BPF_PROG_TEST_RUN with a RebanRequest as the frame; it writes
//! the expiry and reason through the hash's value pointer and never touches `hits`, which the
//! XDP program bumps atomically meanwhile.
use aya_ebpf::programs::XdpContext;
use detector_common::{ExactBan, Ipv4Key, Ipv6Key, RebanRequest, reban};

use crate::maps::{BANS_V4, BANS_V6};

pub fn run(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + RebanRequest::SIZE > end {
        return reban::BAD_REQUEST;
    }
    // SAFETY: the bounds check above covers the whole struct; the frame need not be aligned.
    let req = unsafe { core::ptr::read_unaligned(start as *const RebanRequest) };
    if req.magic != reban::MAGIC {
        return reban::BAD_REQUEST;
    }
    let ban = match req.family {
        4 => {
            let mut addr = [0u8; 4];
            addr.copy_from_slice(&req.addr[..4]);
            BANS_V4.get_ptr_mut(Ipv4Key { addr })
        }
        6 => BANS_V6.get_ptr_mut(Ipv6Key { addr: req.addr }),
        _ => return reban::BAD_REQUEST,
    };
    let Some(ban) = ban else {
        return reban::ABSENT;
    };
    write(ban, req.expires_ns, req.reason);
    reban::UPDATED
}

#[inline(always)]
fn write(ban: *mut ExactBan, expires_ns: u64, reason: u32) {
    // SAFETY: `ban` is the hash's pointer to a live element (freed only after an RCU grace
    // period). Aligned 8- and 4-byte stores cannot tear, so the XDP program reads either the
    // old or the new expiry; `hits` is a separate field its atomic add alone writes.
    unsafe {
        core::ptr::write_volatile(&raw mut (*ban).expires_ns, expires_ns);
        core::ptr::write_volatile(&raw mut (*ban).reason, reason);
    }
}
