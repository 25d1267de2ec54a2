//! Forwarding a translated packet as a router would, from the tc program:
//! the kernel's FIB says where it goes (and from which of the node's
//! addresses) and whether it fits the MTU there, then the packet is
//! redirected out of that device.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SRC, TC_ACT_SHOT, bpf_fib_lookup,
    },
    helpers::{bpf_redirect, bpf_redirect_neigh, generated::bpf_fib_lookup as fib_lookup},
    programs::TcContext,
};
use core::num::NonZeroU32;

use balctl_common::{Addr, IPPROTO_TCP};

use super::{
    addr::V4_MAPPED_PREFIX,
    packet::{Family, IpHeader, decrement_ttl, write_macs},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where the FIB sends a packet: the device, the node's address on that
/// path, and the next hop's MAC addresses when the neighbour is known.
pub struct Route {
    ifindex: u32,
    /// The node's address on the path (mapped for IPv4).
    pub source: Addr,
    /// Destination MAC, then source MAC, as the Ethernet header holds them;
    /// None when the neighbour is not resolved yet.
    macs: Option<[u8; 12]>,
    /// The MTU of the route's device when the packet is larger: it may
    /// not be sent there (`redirect` drops it), and its sender is owed
    /// "fragmentation needed" or "packet too big" (`icmp::too_big`).
    /// Not an `Option<u32>`: LLVM may fill the value of its None with any
    /// register, a pointer too, which the verifier refuses to store.
    pub too_big: Option<NonZeroU32>,
}

/// Looks up the route of `ip` (as it will be once translated) to `dst`
/// in the FIB, as forwarding from the device the packet arrived on; None
/// when it may not be forwarded there (no route, forwarding disabled on
/// the device). The packet is measured as the kernel's forwarding measures
/// it (`ip_exceeds_mtu`, `ip6_pkt_too_big`): by its own IP length, or a
/// GSO packet (whose IP length is the whole burst's) by its segments'.
#[inline(always)]
pub fn route(ctx: &TcContext, ip: &IpHeader, dst: &Addr) -> Option<Route> {
    let mut found = Route { ifindex: 0, source: [0; 4], macs: None, too_big: None };
    lookup(ctx, ip, dst, &mut found).then_some(found)
}

/// `route`, out of line: the lookup's parameters take a fifth of the
/// stack, which its callers need for their own.
#[inline(never)]
fn lookup(ctx: &TcContext, ip: &IpHeader, dst: &Addr, found: &mut Route) -> bool {
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of them).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    // SAFETY: the context is the program's skb for its whole run.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.l4_protocol = ip.proto;
    match ip.family {
        Family::V4 => {
            params.family = AF_INET;
            params.__bindgen_anon_4.ipv4_dst = dst[3];
        }
        Family::V6 => {
            params.family = AF_INET6;
            params.__bindgen_anon_4.ipv6_dst = *dst;
        }
    }
    // Given as `tot_len`, the length is checked against the route's MTU
    // (its own `mtu`, else the device's) before the neighbour is looked
    // for: a larger packet is FRAG_NEEDED, with that MTU in `mtu_result`.
    // Without it, the kernel would check the skb instead, and only when
    // the neighbour is known: every GSO packet would pass.
    params.__bindgen_anon_1.tot_len = u16::try_from(length_on_link(ctx, ip)).unwrap_or(u16::MAX);
    // SAFETY: `params` is a whole bpf_fib_lookup on the stack, its size given.
    let mut rc = unsafe {
        fib_lookup(ctx.as_ptr(), &raw mut params, size_of::<bpf_fib_lookup>() as i32, BPF_FIB_LOOKUP_SRC)
    };
    let mut too_big = None;
    if rc as u32 == BPF_FIB_LKUP_RET_FRAG_NEEDED {
        // SAFETY: the union member the lookup writes back.
        too_big = NonZeroU32::new(u32::from(unsafe { params.__bindgen_anon_1.mtu_result }));
        // That answer stops short of the device, the source and the MAC
        // addresses: asked again without `tot_len` (the parameters are as
        // they were), the lookup gives them, with SUCCESS, NO_NEIGH or
        // (the skb checked against the device) FRAG_NEEDED.
        params.__bindgen_anon_1.tot_len = 0;
        // SAFETY: as above.
        rc = unsafe {
            fib_lookup(ctx.as_ptr(), &raw mut params, size_of::<bpf_fib_lookup>() as i32, BPF_FIB_LOOKUP_SRC)
        };
    }
    let macs = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&params.dmac);
            macs[6..].copy_from_slice(&params.smac);
            Some(macs)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => None,
        _ => return false,
    };
    // SAFETY: the union member of the family asked for, filled by the lookup.
    let source = unsafe {
        match ip.family {
            Family::V4 => {
                let mut mapped = V4_MAPPED_PREFIX;
                mapped[3] = params.__bindgen_anon_3.ipv4_src;
                mapped
            }
            Family::V6 => params.__bindgen_anon_3.ipv6_src,
        }
    };
    *found = Route { ifindex: params.ifindex, source, macs, too_big };
    true
}

/// `gso_size` of a GSO packet that is a list of the packets it was built
/// from (`GSO_BY_FRAGS`): each no larger than the link it came in on, it
/// is not measured (length 0: no `tot_len`), as the kernel's own check of
/// the skb lets every GSO packet pass.
const GSO_BY_FRAGS: u32 = 0xffff;

/// The IP length of `ip` on the next link: its own, or for a GSO packet
/// (a TCP or UDP burst that is cut into segments on the way out) a
/// segment's, as `skb_gso_network_seglen` counts it.
#[inline(always)]
fn length_on_link(ctx: &TcContext, ip: &IpHeader) -> u32 {
    // SAFETY: the context is the program's skb for its whole run.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        // The skb starts at the Ethernet header here.
        return ctx.len().saturating_sub(ip.l3 as u32);
    }
    if gso_size == GSO_BY_FRAGS {
        return 0;
    }
    let transport = if ip.proto == IPPROTO_TCP {
        // The TCP header's length: its data offset, in 32-bit words.
        ctx.load::<u8>(ip.l4 + 12).map_or(20, |offset| u32::from(offset >> 4) * 4)
    } else {
        8
    };
    (ip.l4 - ip.l3) as u32 + transport + gso_size
}

/// Sends the translated packet on along `route`: one hop less to live, the
/// next hop's MAC addresses (or the kernel's neighbour resolution when it
/// has none yet), out of the route's device. The tc verdict; a packet too
/// big for the route is dropped.
#[inline(always)]
pub fn redirect(ctx: &TcContext, ip: &IpHeader, route: &Route) -> i32 {
    if route.too_big.is_some() || !decrement_ttl(ctx, ip) {
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper calls; redirect_neigh takes no parameters (it
    // resolves the packet's own destination).
    match &route.macs {
        Some(macs) if write_macs(ctx, macs) => unsafe { bpf_redirect(route.ifindex, 0) as i32 },
        Some(_) => TC_ACT_SHOT,
        None => unsafe { bpf_redirect_neigh(route.ifindex, core::ptr::null_mut(), 0, 0) as i32 },
    }
}
