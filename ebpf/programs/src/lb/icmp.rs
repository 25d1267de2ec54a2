//! Node A's own "fragmentation needed" (ICMP type 3 code 4) and "packet
//! too big" (ICMPv6 type 2): a packet the tc program would forward itself
//! that is larger than the MTU of its next link is turned, in place, into
//! the error the kernel's forwarding would send its sender, so that the
//! sender's path MTU discovery works (`forward::Route::too_big`).
//!
//! The error is made before any translation: it quotes the packet as its
//! sender sent it, goes to the sender, and comes from the address the
//! sender called (a client's node port, LoadBalancer IP or external IP; a
//! backend's SNAT address), the one address the sender's stack matches the
//! quote against. It leaves through the device the packet came in on,
//! with the Ethernet addresses swapped: back to the hop that handed the
//! packet over, which routes the sender. Not handed to the stack: its
//! source is often one of the node's own addresses, which the stack takes
//! for a martian on a packet that arrives.
//!
//! The packet is cut to the quote (`bpf_skb_change_tail`, which also ends
//! a GSO packet's offloads), room for the new IP and ICMP headers is made
//! in front of it (`bpf_skb_adjust_room`, `BPF_ADJ_ROOM_MAC`: between the
//! Ethernet and IP headers), and the checksums are summed over a copy
//! of all of it in the per-CPU icmp_scratch map (`bpf_csum_diff` takes
//! memory, not the packet; the 512-byte stack does not hold the quote).
//! A packet whose sender left its checksum to the device (only virtual
//! devices, veth or tap, deliver such a packet) keeps that mark, which
//! tells the receiver at the device's other end not to check the error.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};

use super::{
    maps::ICMP_SCRATCH,
    packet::{Family, IPPROTO_ICMP, IPPROTO_ICMPV6, IpHeader, Ipv4Header, Ipv6Header, fold},
};

const ETH_ALEN: usize = 6;
/// ICMP destination unreachable, fragmentation needed; ICMPv6 packet too big.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PKT_TOOBIG: u8 = 2;
/// IPv4 `frag_off` bit (host order): don't fragment.
const IP_DF: u16 = 0x4000;
/// Precedence "internetwork control", as the kernel marks its ICMP errors.
const IPTOS_PREC_INTERNETCONTROL: u8 = 0xc0;
/// The TTL and hop limit the kernel gives what it sends.
const DEFAULT_TTL: u8 = 64;
/// How much of the packet an error quotes: as much as RFC 1812 allows an
/// IPv4 error (576 bytes in all); for a packet shorter than that (next to
/// a link of less than 548 bytes), the IP header and at least the 8 bytes
/// after it that RFC 792 asks for; and as much as RFC 4443 allows an
/// ICMPv6 error (1280 bytes in all), which every too big IPv6 packet has.
/// Each a multiple of 4, as `bpf_csum_diff` takes.
const QUOTE_V4: usize = 576 - IPV4_HLEN - ICMP_HLEN;
const QUOTE_V4_SHORT: usize = 60 + 8;
const QUOTE_V6: usize = 1280 - IPV6_HLEN - ICMP_HLEN;
const IPV4_HLEN: usize = size_of::<Ipv4Header>();
const IPV6_HLEN: usize = size_of::<Ipv6Header>();
const ICMP_HLEN: usize = size_of::<IcmpHeader>();
/// The most bytes `bpf_csum_diff` sums at once.
const CSUM_CHUNK: usize = 512;

/// An ICMP or ICMPv6 error header: for these two errors, the MTU in
/// `rest` (ICMP: its low 16 bits; ICMPv6: all 32).
#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpHeader {
    kind: u8,
    code: u8,
    check: u16,
    rest: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FragNeeded {
    ip: Ipv4Header,
    icmp: IcmpHeader,
    quote: [u8; QUOTE_V4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PacketTooBig {
    ip: Ipv6Header,
    icmp: IcmpHeader,
    quote: [u8; QUOTE_V6],
}

/// The error being made, as it will be from the IP header on: the value
/// of the icmp_scratch map (one entry per CPU; a program runs to its end
/// on its CPU before another runs there; nothing is kept between packets).
#[repr(C)]
pub union TooBig {
    v4: FragNeeded,
    v6: PacketTooBig,
}

/// Answers the packet in `ctx` (`ip`, untranslated), too big for the
/// `mtu` of its next link, with "fragmentation needed" or "packet too
/// big" to its sender. The tc verdict. An IPv4 packet without DF may be
/// fragmented instead and is owed no error; it is dropped, as before: this
/// datapath does not fragment, and handed to the stack, translated, it
/// would be a martian (its SNAT source is one of the node's addresses).
#[inline(never)]
pub fn too_big(ctx: &TcContext, ip: &IpHeader, mtu: u32) -> i32 {
    let Some(error) = ICMP_SCRATCH.get_ptr_mut(0) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: this CPU's entry, used by this program alone while it runs.
    let error = unsafe { &mut *error };
    let made = match ip.family {
        Family::V4 => frag_needed(ctx, ip, mtu, error),
        Family::V6 => packet_too_big(ctx, ip, mtu, error),
    };
    if made.is_err() || swap_macs(ctx).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: the context is the program's skb for its whole run.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ingress, 0) as i32 }
}

/// Makes the packet the IPv4 "fragmentation needed" about it.
#[inline(always)]
fn frag_needed(ctx: &TcContext, ip: &IpHeader, mtu: u32, error: &mut TooBig) -> Result<(), ()> {
    let frag_off: u16 = ctx.load(ip.l3 + 6).map_err(|_| ())?;
    if u16::from_be(frag_off) & IP_DF == 0 {
        return Err(());
    }
    // SAFETY: the union member for IPv4, all of it written below.
    let error = unsafe { &mut error.v4 };
    let long = ctx.len() as usize >= ip.l3 + QUOTE_V4;
    let quote = if long { QUOTE_V4 } else { QUOTE_V4_SHORT };
    load(ctx, ip.l3, error.quote.as_mut_ptr(), quote)?;
    // The quoted header's identification serves the error's: unique
    // enough for a datagram that is never fragmented.
    let id = u16::from_ne_bytes([error.quote[4], error.quote[5]]);
    let total = IPV4_HLEN + ICMP_HLEN + quote;
    error.ip = Ipv4Header {
        version_ihl: 0x45,
        tos: IPTOS_PREC_INTERNETCONTROL,
        total_len: (total as u16).to_be(),
        id,
        frag_off: 0,
        ttl: DEFAULT_TTL,
        protocol: IPPROTO_ICMP,
        check: 0,
        saddr: ip.dst[3],
        daddr: ip.src[3],
    };
    error.ip.check = fold(csum(&raw mut error.ip, IPV4_HLEN, 0)?);
    error.icmp = IcmpHeader {
        kind: ICMP_DEST_UNREACH,
        code: ICMP_FRAG_NEEDED,
        check: 0,
        rest: (mtu & 0xffff).to_be(),
    };
    // The ICMP checksum covers the header and the quote, which follow it.
    let icmp = (&raw mut error.icmp).cast::<u8>();
    let sum = if long {
        let first = csum(icmp, CSUM_CHUNK, 0)?;
        // SAFETY: within the entry: the header and the quote are 556 bytes.
        csum(unsafe { icmp.add(CSUM_CHUNK) }, ICMP_HLEN + QUOTE_V4 - CSUM_CHUNK, first)?
    } else {
        csum(icmp, ICMP_HLEN + QUOTE_V4_SHORT, 0)?
    };
    error.icmp.check = fold(sum);
    rebuild(ctx, ip, quote, (&raw mut *error).cast::<u8>(), IPV4_HLEN + ICMP_HLEN)
}

/// Makes the packet the ICMPv6 "packet too big" about it.
#[inline(always)]
fn packet_too_big(ctx: &TcContext, ip: &IpHeader, mtu: u32, error: &mut TooBig) -> Result<(), ()> {
    // SAFETY: the union member for IPv6, all of it written below.
    let error = unsafe { &mut error.v6 };
    // Larger than an MTU of at least 1280 bytes, the packet holds the quote.
    load(ctx, ip.l3, error.quote.as_mut_ptr(), QUOTE_V6)?;
    let payload = (ICMP_HLEN + QUOTE_V6) as u16;
    error.ip = Ipv6Header {
        version_flow: 0x6000_0000u32.to_be(),
        payload_len: payload.to_be(),
        next_header: IPPROTO_ICMPV6,
        hop_limit: DEFAULT_TTL,
        saddr: ip.dst,
        daddr: ip.src,
    };
    error.icmp = IcmpHeader { kind: ICMPV6_PKT_TOOBIG, code: 0, check: 0, rest: mtu.to_be() };
    // The pseudo-header: both addresses, then the upper-layer length and
    // next header as 32-bit words.
    let mut length_and_next = [u32::from(payload).to_be(), u32::from(IPPROTO_ICMPV6).to_be()];
    let addresses = (&raw mut error.ip.saddr).cast::<u8>();
    let mut sum = csum(addresses, 32, 0)?;
    sum = csum(length_and_next.as_mut_ptr(), 8, sum)?;
    let icmp = (&raw mut error.icmp).cast::<u8>();
    let mut done = 0;
    // Three chunks: 512, 512 and 216 bytes of header and quote.
    while done < ICMP_HLEN + QUOTE_V6 {
        let size = (ICMP_HLEN + QUOTE_V6 - done).min(CSUM_CHUNK);
        // SAFETY: within the entry: the header and the quote are 1,240 bytes.
        sum = csum(unsafe { icmp.add(done) }, size, sum)?;
        done += size;
    }
    error.icmp.check = fold(sum);
    rebuild(ctx, ip, QUOTE_V6, (&raw mut *error).cast::<u8>(), IPV6_HLEN + ICMP_HLEN)
}

/// Cuts the packet after the first `quote` bytes from its IP header on,
/// makes `headers` bytes of room in front of them and writes `new` there.
#[inline(always)]
fn rebuild(ctx: &TcContext, ip: &IpHeader, quote: usize, new: *mut u8, headers: usize) -> Result<(), ()> {
    // SAFETY: plain helper calls on the program's skb.
    let cut = unsafe { bpf_skb_change_tail(ctx.skb.skb, (ip.l3 + quote) as u32, 0) };
    if cut != 0 {
        return Err(());
    }
    ctx.adjust_room(headers as i32, BPF_ADJ_ROOM_MAC, 0).map_err(|_| ())?;
    // SAFETY: `new` is `headers` bytes of the scratch entry.
    let stored =
        unsafe { bpf_skb_store_bytes(ctx.skb.skb, ip.l3 as u32, new.cast_const().cast(), headers as u32, 0) };
    if stored != 0 { Err(()) } else { Ok(()) }
}

/// Copies `size` bytes of the packet from `offset` to `to`.
#[inline(always)]
fn load(ctx: &TcContext, offset: usize, to: *mut u8, size: usize) -> Result<(), ()> {
    // SAFETY: `to` is at least `size` bytes of the scratch entry.
    let rc = unsafe { bpf_skb_load_bytes(ctx.as_ptr(), offset as u32, to.cast(), size as u32) };
    if rc != 0 { Err(()) } else { Ok(()) }
}

/// Adds `size` bytes at `from` (a multiple of 4) to the one's complement
/// sum `seed`.
#[inline(always)]
fn csum<T>(from: *mut T, size: usize, seed: u32) -> Result<u32, ()> {
    // SAFETY: `from` is `size` bytes of the scratch entry or the stack.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, from.cast(), size as u32, seed) };
    u32::try_from(sum).map_err(|_| ())
}

/// Sends the packet back where it came from: the Ethernet destination
/// becomes its source and the other way round.
#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Result<(), ()> {
    let macs: [u8; 2 * ETH_ALEN] = ctx.load(0).map_err(|_| ())?;
    let mut swapped = [0u8; 2 * ETH_ALEN];
    swapped[..ETH_ALEN].copy_from_slice(&macs[ETH_ALEN..]);
    swapped[ETH_ALEN..].copy_from_slice(&macs[..ETH_ALEN]);
    ctx.store(0, &swapped, 0).map_err(|_| ())
}
