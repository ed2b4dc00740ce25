//! Frame parsing: Ethernet, up to two VLAN tags, then where the IPv4 or IPv6 source address is.
//! Every read is bounds-checked against `data_end` first; the verifier insists, and a short
//! frame simply yields `Source::Malformed`.
//!
//! The source is returned as a pointer into the frame, not copied: the exact-ban hash takes
//! its key straight from the packet (the verifier accepts a bounds-checked packet pointer as a
//! map key), which saves copying the address byte by byte onto the stack (16 loads and stores
//! for IPv6; packet data has no alignment, so the compiler cannot use wider loads).
use aya_ebpf::programs::XdpContext;
use core::{mem::size_of, ptr::read_unaligned};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_MIN_HLEN: usize = 20;
const IPV4_SADDR_OFF: usize = 12;
const IPV6_HLEN: usize = 40;
const IPV6_SADDR_OFF: usize = 8;

pub enum Source {
    /// The IPv4 source, inside the frame (all 4 bytes within `data_end`).
    V4(*const [u8; 4]),
    /// The IPv6 source, inside the frame (all 16 bytes within `data_end`).
    V6(*const [u8; 16]),
    /// ARP, LLDP, anything that is not IPv4/IPv6.
    NonIp,
    /// Too short for its headers, or a header field that cannot be right.
    Malformed,
}

/// Reads a `T` at `off` bytes into the frame, or `None` if it would cross `data_end`.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked just above; read_unaligned because packet data has no alignment.
    Some(unsafe { read_unaligned((start + off) as *const T) })
}

/// The EtherType at `off` as it sits in the frame (network byte order, read as one native
/// u16), or `None` past `data_end`. Compared against [`wire`] constants, so no byte swap.
#[inline(always)]
fn ethertype(ctx: &XdpContext, off: usize) -> Option<u16> {
    read::<[u8; 2]>(ctx, off).map(u16::from_ne_bytes)
}

/// An EtherType as [`ethertype`] returns it.
const fn wire(t: u16) -> u16 {
    u16::from_ne_bytes(t.to_be_bytes())
}

#[inline(always)]
fn is_vlan(t: u16) -> bool {
    t == wire(ETH_P_8021Q) || t == wire(ETH_P_8021AD)
}

/// Where the source address of an IPv4/IPv6 frame is, or why there is none.
///
/// Untagged IPv4 without options and untagged IPv6, nearly every frame, take a fast path under
/// one bounds check: 54 bytes, an Ethernet and an IPv6 header, which every real frame has (the
/// Ethernet minimum is 60 bytes). Everything else, shorter frames included, goes through the
/// general parse, which checks each header on its own.
#[inline(always)]
pub fn source(ctx: &XdpContext) -> Source {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_HLEN + IPV6_HLEN <= end {
        // SAFETY: all within the 54 bytes checked above; packet data has no alignment.
        let (proto, first) = unsafe {
            (
                u16::from_ne_bytes(read_unaligned((start + ETH_HLEN - 2) as *const [u8; 2])),
                *((start + ETH_HLEN) as *const u8),
            )
        };
        // Version 4, IHL 5: the 20-byte header is within the 54 bytes.
        if proto == wire(ETH_P_IP) && first == 0x45 {
            return Source::V4((start + ETH_HLEN + IPV4_SADDR_OFF) as *const [u8; 4]);
        }
        if proto == wire(ETH_P_IPV6) && first >> 4 == 6 {
            return Source::V6((start + ETH_HLEN + IPV6_SADDR_OFF) as *const [u8; 16]);
        }
    }
    parse(ctx)
}

/// The general parse: untagged frames first, IPv4 before IPv6, then VLAN tags.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Source {
    // The EtherType sits after the two MACs, then after each VLAN tag (TPID + TCI).
    let Some(outer) = ethertype(ctx, ETH_HLEN - 2) else {
        return Source::Malformed;
    };
    if let Some(s) = ip_source(ctx, outer, ETH_HLEN) {
        return s;
    }
    if !is_vlan(outer) {
        return Source::NonIp;
    }
    const L3_TAGGED: usize = ETH_HLEN + VLAN_HLEN;
    let Some(inner) = ethertype(ctx, L3_TAGGED - 2) else {
        return Source::Malformed;
    };
    if let Some(s) = ip_source(ctx, inner, L3_TAGGED) {
        return s;
    }
    if !is_vlan(inner) {
        return Source::NonIp;
    }
    // QinQ (802.1ad outer tag, or two 802.1Q tags).
    const L3_QINQ: usize = ETH_HLEN + 2 * VLAN_HLEN;
    let Some(innermost) = ethertype(ctx, L3_QINQ - 2) else {
        return Source::Malformed;
    };
    // A third VLAN tag is not something we parse: let the stack decide.
    ip_source(ctx, innermost, L3_QINQ).unwrap_or(Source::NonIp)
}

/// The source of an IPv4 or IPv6 header at `l3`, if `proto` is one of them.
#[inline(always)]
fn ip_source(ctx: &XdpContext, proto: u16, l3: usize) -> Option<Source> {
    if proto == wire(ETH_P_IP) {
        Some(ipv4_source(ctx, l3))
    } else if proto == wire(ETH_P_IPV6) {
        Some(ipv6_source(ctx, l3))
    } else {
        None
    }
}

#[inline(always)]
fn ipv4_source(ctx: &XdpContext, l3: usize) -> Source {
    let (hdr, end) = (ctx.data() + l3, ctx.data_end());
    // Fixed-size part first: the verifier only learns packet ranges from constant offsets, so
    // the source address is located under this check, before the variable-length one.
    if hdr + IPV4_MIN_HLEN > end {
        return Source::Malformed;
    }
    // SAFETY: within the 20 bytes checked above.
    let ver_ihl = unsafe { *(hdr as *const u8) };
    let hlen = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || hlen < IPV4_MIN_HLEN {
        return Source::Malformed;
    }
    // Options (IHL > 5) are fine, but the whole header must be in the frame.
    if hdr + hlen > end {
        return Source::Malformed;
    }
    Source::V4((hdr + IPV4_SADDR_OFF) as *const [u8; 4])
}

#[inline(always)]
fn ipv6_source(ctx: &XdpContext, l3: usize) -> Source {
    let (hdr, end) = (ctx.data() + l3, ctx.data_end());
    if hdr + IPV6_HLEN > end {
        return Source::Malformed;
    }
    // SAFETY: within the 40 bytes checked above.
    let ver = unsafe { *(hdr as *const u8) };
    if ver >> 4 != 6 {
        return Source::Malformed;
    }
    Source::V6((hdr + IPV6_SADDR_OFF) as *const [u8; 16])
}
