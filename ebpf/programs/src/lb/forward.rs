//! Forwarding a translated packet as a router would, from the tc program:
//! the kernel's FIB says where it goes (and from which of the node's
//! addresses), then the packet is redirected out of that device.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, TC_ACT_SHOT, bpf_fib_lookup,
    },
    helpers::{bpf_redirect, bpf_redirect_neigh, generated::bpf_fib_lookup as fib_lookup},
    programs::TcContext,
};
use balctl_common::Addr;

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
}

/// Looks up the route of `ip` (as it will be once translated) to `dst`
/// in the FIB, as forwarding from the device the packet arrived on; None
/// when it may not be forwarded there (no route, forwarding disabled on
/// the device, or larger than the path's MTU). No `tot_len` is given, so
/// the kernel checks the packet itself against the MTU, as GSO packets
/// (whose IP length is the whole burst's) need.
#[inline(always)]
pub fn route(ctx: &TcContext, ip: &IpHeader, dst: &Addr) -> Option<Route> {
    let mut found = Route { ifindex: 0, source: [0; 4], macs: None };
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
    // SAFETY: `params` is a whole bpf_fib_lookup on the stack, its size given.
    let rc = unsafe {
        fib_lookup(ctx.as_ptr(), &raw mut params, size_of::<bpf_fib_lookup>() as i32, BPF_FIB_LOOKUP_SRC)
    };
    let macs = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
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
    *found = Route { ifindex: params.ifindex, source, macs };
    true
}

/// Sends the translated packet on along `route`: one hop less to live, the
/// next hop's MAC addresses (or the kernel's neighbour resolution when it
/// has none yet), out of the route's device. The tc verdict.
#[inline(always)]
pub fn redirect(ctx: &TcContext, ip: &IpHeader, route: &Route) -> i32 {
    if !decrement_ttl(ctx, ip) {
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
