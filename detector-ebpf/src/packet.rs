//! Frame parsing: Ethernet, up to two VLAN tags, then the IPv4 or IPv6 source address.
//! Every read is bounds-checked against `data_end` first; the verifier insists, and a short
//! frame simply yields `Source::Malformed`.
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
    V4([u8; 4]),
    V6([u8; 16]),
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

#[inline(always)]
fn ethertype(ctx: &XdpContext, off: usize) -> Option<u16> {
    read::<[u8; 2]>(ctx, off).map(u16::from_be_bytes)
}

#[inline(always)]
fn is_vlan(t: u16) -> bool {
    t == ETH_P_8021Q || t == ETH_P_8021AD
}

/// Returns the source address of an IPv4/IPv6 frame, or why there is none.
#[inline(always)]
pub fn source(ctx: &XdpContext) -> Source {
    // The EtherType sits after the two MACs, then after each VLAN tag (TPID + TCI).
    let Some(mut proto) = ethertype(ctx, ETH_HLEN - 2) else {
        return Source::Malformed;
    };
    let mut l3 = ETH_HLEN;
    if is_vlan(proto) {
        let Some(inner) = ethertype(ctx, l3 + 2) else {
            return Source::Malformed;
        };
        proto = inner;
        l3 += VLAN_HLEN;
        if is_vlan(proto) {
            let Some(inner) = ethertype(ctx, l3 + 2) else {
                return Source::Malformed;
            };
            proto = inner;
            l3 += VLAN_HLEN;
        }
    }
    match proto {
        ETH_P_IP => ipv4_source(ctx, l3),
        ETH_P_IPV6 => ipv6_source(ctx, l3),
        // A third VLAN tag is not something we parse: let the stack decide.
        _ => Source::NonIp,
    }
}

#[inline(always)]
fn ipv4_source(ctx: &XdpContext, l3: usize) -> Source {
    // Fixed-size part first: the verifier only learns packet ranges from constant offsets, so
    // the source address must be read under this check, before the variable-length one.
    if ctx.data() + l3 + IPV4_MIN_HLEN > ctx.data_end() {
        return Source::Malformed;
    }
    let (Some(ver_ihl), Some(saddr)) = (
        read::<u8>(ctx, l3),
        read::<[u8; 4]>(ctx, l3 + IPV4_SADDR_OFF),
    ) else {
        return Source::Malformed;
    };
    let hlen = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || hlen < IPV4_MIN_HLEN {
        return Source::Malformed;
    }
    // Options (IHL > 5) are fine, but the whole header must be in the frame.
    if ctx.data() + l3 + hlen > ctx.data_end() {
        return Source::Malformed;
    }
    Source::V4(saddr)
}

#[inline(always)]
fn ipv6_source(ctx: &XdpContext, l3: usize) -> Source {
    if ctx.data() + l3 + IPV6_HLEN > ctx.data_end() {
        return Source::Malformed;
    }
    let Some(ver) = read::<u8>(ctx, l3) else {
        return Source::Malformed;
    };
    if ver >> 4 != 6 {
        return Source::Malformed;
    }
    match read::<[u8; 16]>(ctx, l3 + IPV6_SADDR_OFF) {
        Some(a) => Source::V6(a),
        None => Source::Malformed,
    }
}
