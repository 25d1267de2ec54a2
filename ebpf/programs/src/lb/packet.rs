//! Packets as the tc programs see them: Ethernet, then IPv4 or IPv6, then
//! TCP, UDP or an ICMP error; the addresses and ports that name a flow,
//! and rewrites of them that keep every checksum right.
//!
//! Headers are read straight from the skb's linear data (`read`), pulled
//! into it first when a driver left them in the pages (on every device
//! seen, they are there); a `bpf_skb_load_bytes` call and a copy per read
//! were a sixth of the programs' time. Addresses, ports, the TTL, MAC
//! addresses and the IPv4 header checksum are written the same way
//! (`write`), the checksum updated here (`replaced`): a `bpf_skb_store_bytes`
//! or `bpf_l3_csum_replace` call each cost about 80 ns, a quarter of a
//! reply's program. Only the TCP/UDP checksum goes through its helper
//! (`bpf_l4_csum_replace`), which alone knows the skb's checksum state: a
//! packet whose checksum a device fills in (`CHECKSUM_PARTIAL`) holds only
//! its pseudo header's sum there, which the ports are not in, and a
//! received packet's `CHECKSUM_COMPLETE` sum must follow a change of it.
//! The IPv4 header's own changes cancel out in that sum: the header
//! checksum keeps the header's sum what it was.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use balctl_common::{Addr, FlowKey, IPPROTO_TCP, IPPROTO_UDP};

use super::addr::{Endpoint, V4_MAPPED_PREFIX};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv4 `frag_off` bits (host order): more fragments, and the offset.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_RST: u8 = 0x04;
/// ICMP error types whose payload starts with the packet they are about:
/// destination unreachable (with fragmentation needed) and time exceeded;
/// ICMPv6 destination unreachable, packet too big, time exceeded.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
/// Bytes of an ICMP header before the packet an error is about.
const ICMP_HLEN: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    V4,
    V6,
}

/// The IPv4 and IPv6 headers as on the wire (fields in network byte order).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Header {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Header {
    pub version_flow: u32,
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub saddr: Addr,
    pub daddr: Addr,
}

/// An IP header's fields that matter here, and where it is.
#[derive(Clone, Copy, Default)]
pub struct IpHeader {
    pub family: Family,
    /// Offset of the IP header, and of what follows it.
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    /// Addresses, IPv4 mapped.
    pub src: Addr,
    pub dst: Addr,
    pub ttl: u8,
    /// Not the first fragment or not the last: no ports to read.
    pub fragment: bool,
}

impl IpHeader {
    #[inline(always)]
    fn read(ctx: &TcContext, family: Family, l3: usize) -> Option<IpHeader> {
        match family {
            Family::V4 => {
                let ip: Ipv4Header = read(ctx, l3)?;
                let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
                if ip.version_ihl >> 4 != 4 || ihl < 20 {
                    return None;
                }
                let mut src = V4_MAPPED_PREFIX;
                src[3] = ip.saddr;
                let mut dst = V4_MAPPED_PREFIX;
                dst[3] = ip.daddr;
                Some(IpHeader {
                    family,
                    l3,
                    l4: l3 + ihl,
                    proto: ip.protocol,
                    src,
                    dst,
                    ttl: ip.ttl,
                    fragment: u16::from_be(ip.frag_off) & (IP_MF | IP_OFFSET) != 0,
                })
            }
            Family::V6 => {
                let ip: Ipv6Header = read(ctx, l3)?;
                Some(IpHeader {
                    family,
                    l3,
                    // Extension headers are not followed: such a packet's
                    // next header is none of the protocols handled, and it
                    // passes untouched.
                    l4: l3 + 40,
                    proto: ip.next_header,
                    src: ip.saddr,
                    dst: ip.daddr,
                    ttl: ip.hop_limit,
                    fragment: false,
                })
            }
        }
    }

    /// Offset of the source address (the destination's follows it).
    #[inline(always)]
    fn addr_offset(&self, which: Side) -> usize {
        let (src, size) = match self.family {
            Family::V4 => (self.l3 + 12, 4),
            Family::V6 => (self.l3 + 8, 16),
        };
        match which {
            Side::Source => src,
            Side::Destination => src + size,
        }
    }
}

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// What a packet is, as far as the first bytes of its IP header say.
pub enum Kind {
    /// TCP or UDP, not a fragment: `parse_transport` reads it.
    Transport,
    /// ICMP or ICMPv6: `parse_icmp_error` says whether it is an error
    /// about a TCP or UDP packet.
    Icmp,
    Other,
}

/// A TCP or UDP packet: its IP header, ports and TCP flags.
#[derive(Clone, Copy, Default)]
pub struct Packet {
    pub ip: IpHeader,
    /// Network byte order, as read.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

impl Packet {
    /// The flow key of this packet as it travels (source first).
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey {
            saddr: self.ip.src,
            daddr: self.ip.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.ip.proto,
            _pad: [0; 3],
        }
    }

    /// A FIN or RST: the flow is closing.
    #[inline(always)]
    pub fn closes(&self) -> bool {
        self.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0
    }

    #[inline(always)]
    pub fn destination(&self) -> Endpoint {
        Endpoint { addr: self.ip.dst, port: self.dport }
    }

    /// Offset of the TCP or UDP checksum.
    #[inline(always)]
    fn l4_check(&self) -> usize {
        self.ip.l4 + if self.ip.proto == IPPROTO_TCP { 16 } else { 6 }
    }

    /// The checksum flags for a change of this packet's ports (and, with
    /// `BPF_F_PSEUDO_HDR`, addresses): a UDP checksum of 0 means none
    /// (IPv4) and stays 0.
    #[inline(always)]
    fn l4_flags(&self) -> u64 {
        if self.ip.proto == IPPROTO_UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 }
    }

    /// Rewrites one end of the packet to `to`, with the IP and TCP/UDP
    /// checksums. The packet's fields follow.
    #[inline(never)]
    pub fn rewrite(&mut self, ctx: &TcContext, side: Side, to: &Endpoint) -> Result<(), ()> {
        let (old_addr, port_offset, old_port) = match side {
            Side::Source => (self.ip.src, self.ip.l4, self.sport),
            Side::Destination => (self.ip.dst, self.ip.l4 + 2, self.dport),
        };
        let ip_check = (self.ip.family == Family::V4).then_some(self.ip.l3 + 10);
        let check = Checksum { offset: self.l4_check(), flags: self.l4_flags() };
        if old_addr != to.addr {
            let offset = self.ip.addr_offset(side);
            let l4 = Checksum { flags: check.flags | u64::from(BPF_F_PSEUDO_HDR), ..check };
            replace_addr(ctx, self.ip.family, offset, &old_addr, &to.addr, ip_check, Some(l4))?;
        }
        if old_port != to.port {
            replace_u16(ctx, port_offset, old_port, to.port, check)?;
        }
        match side {
            Side::Source => (self.ip.src, self.sport) = (to.addr, to.port),
            Side::Destination => (self.ip.dst, self.dport) = (to.addr, to.port),
        }
        Ok(())
    }
}

/// An ICMP (or ICMPv6) error about a TCP or UDP packet: the outer header,
/// and the packet it quotes, which travelled the other way.
#[derive(Clone, Copy, Default)]
pub struct IcmpError {
    pub outer: IpHeader,
    pub inner: Packet,
}

impl IcmpError {
    /// Offset of the ICMP checksum.
    #[inline(always)]
    fn check(&self) -> Checksum {
        Checksum { offset: self.outer.l4 + 2, flags: 0 }
    }

    /// Rewrites the outer header's `side` to `to`: the IP checksum, and
    /// ICMPv6's, which covers the addresses.
    #[inline(never)]
    pub fn rewrite_outer(&mut self, ctx: &TcContext, side: Side, to: &Addr) -> Result<(), ()> {
        let old = match side {
            Side::Source => self.outer.src,
            Side::Destination => self.outer.dst,
        };
        if old == *to {
            return Ok(());
        }
        let offset = self.outer.addr_offset(side);
        let v4 = self.outer.family == Family::V4;
        let ip_check = v4.then_some(self.outer.l3 + 10);
        let icmp_check = (!v4).then_some(Checksum { flags: u64::from(BPF_F_PSEUDO_HDR), ..self.check() });
        replace_addr(ctx, self.outer.family, offset, &old, to, ip_check, icmp_check)?;
        match side {
            Side::Source => self.outer.src = *to,
            Side::Destination => self.outer.dst = *to,
        }
        Ok(())
    }

    /// Rewrites one end of the quoted packet to `to`. Its IPv4 checksum
    /// is kept right, and the ICMP checksum, which covers the quote; the
    /// quoted TCP/UDP checksum is left as it is (receivers do not check
    /// it, and the quote is often cut short of the payload it covers).
    #[inline(never)]
    pub fn rewrite_inner(&mut self, ctx: &TcContext, side: Side, to: &Endpoint) -> Result<(), ()> {
        let inner = &self.inner.ip;
        let (old_addr, port_offset, old_port) = match side {
            Side::Source => (inner.src, inner.l4, self.inner.sport),
            Side::Destination => (inner.dst, inner.l4 + 2, self.inner.dport),
        };
        let check = self.check();
        if old_addr != to.addr {
            let offset = inner.addr_offset(side);
            match inner.family {
                Family::V4 => {
                    // The quoted header's checksum changes too, and the
                    // ICMP checksum covers that change as well.
                    let ip_check = inner.l3 + 10;
                    let old_check: u16 = ctx.load(ip_check).map_err(|_| ())?;
                    replace_addr(ctx, Family::V4, offset, &old_addr, &to.addr, Some(ip_check), Some(check))?;
                    let new_check: u16 = ctx.load(ip_check).map_err(|_| ())?;
                    ctx.l4_csum_replace(check.offset, u64::from(old_check), u64::from(new_check), 2)
                        .map_err(|_| ())?;
                }
                Family::V6 => replace_addr(ctx, Family::V6, offset, &old_addr, &to.addr, None, Some(check))?,
            }
        }
        if old_port != to.port {
            replace_u16(ctx, port_offset, old_port, to.port, check)?;
        }
        match side {
            Side::Source => (self.inner.ip.src, self.inner.sport) = (to.addr, to.port),
            Side::Destination => (self.inner.ip.dst, self.inner.dport) = (to.addr, to.port),
        }
        Ok(())
    }
}

/// Offsets up to which `read` reads and `write` writes: the headers'. An offset kept in the
/// scratch map comes back with no bounds the verifier knows, and it adds
/// only bounded ones to a packet pointer.
const READ_MAX: usize = 256;

/// `offset` with bounds the verifier knows in every register LLVM keeps it
/// in: compared with `READ_MAX` alone, a copy made before the comparison
/// (a checksum's offset, derived from the header's) stays unbounded. No
/// header offset reaches 512, so the mask changes none.
#[inline(always)]
fn bounded(offset: usize) -> Option<usize> {
    let offset = offset & 0x1ff;
    (offset <= READ_MAX).then_some(offset)
}

/// Reads a `T` at `offset` of the packet, straight from the skb's linear
/// data; when those bytes are not in it (a driver that left headers in
/// the pages), after pulling them in (`bpf_skb_pull_data`), once.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let offset = bounded(offset)?;
    // One byte more than needed (every header has bytes after these),
    // compared strictly: written `<=`, LLVM turns a one-byte read's check
    // into `start + offset < end`, which proves the verifier nothing.
    let needed = offset + size_of::<T>() + 1;
    if ctx.data() + needed > ctx.data_end() && ctx.pull_data(needed as u32).is_err() {
        return None;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + offset + size_of::<T>() < end {
        // SAFETY: the bytes lie within the linear data, checked above;
        // headers need not be aligned.
        return Some(unsafe { ((start + offset) as *const T).read_unaligned() });
    }
    None
}

/// Writes `value` at `offset` of the packet's linear data, as `read` reads
/// it: headers only, which `read` has pulled in.
#[inline(always)]
fn write<T: Copy>(ctx: &TcContext, offset: usize, value: &T) -> Result<(), ()> {
    let offset = bounded(offset).ok_or(())?;
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + offset + size_of::<T>() < end {
        // SAFETY: the bytes lie within the linear data, checked above.
        unsafe { ((start + offset) as *mut T).write_unaligned(*value) };
        return Ok(());
    }
    Err(())
}

/// What the packet in `ctx` is: a few bytes read, so that the programs
/// can hand it to the function for its kind, each with a stack frame of
/// its own (the parsers fill in what they read there).
#[inline(always)]
pub fn classify(ctx: &TcContext) -> Kind {
    let Some(ether_type) = read::<u16>(ctx, 12) else {
        return Kind::Other;
    };
    let (family, proto) = match u16::from_be(ether_type) {
        ETH_P_IP => (Family::V4, read::<u8>(ctx, ETH_HLEN + 9)),
        ETH_P_IPV6 => (Family::V6, read::<u8>(ctx, ETH_HLEN + 6)),
        _ => return Kind::Other,
    };
    match (family, proto) {
        (_, Some(IPPROTO_TCP | IPPROTO_UDP)) => Kind::Transport,
        (Family::V4, Some(IPPROTO_ICMP)) | (Family::V6, Some(IPPROTO_ICMPV6)) => Kind::Icmp,
        _ => Kind::Other,
    }
}

#[inline(always)]
fn family_of(ctx: &TcContext) -> Option<Family> {
    match u16::from_be(read::<u16>(ctx, 12)?) {
        ETH_P_IP => Some(Family::V4),
        ETH_P_IPV6 => Some(Family::V6),
        _ => None,
    }
}

/// Reads a TCP or UDP packet (`Kind::Transport`) into `packet`; false for
/// a fragment or a packet too short.
#[inline(never)]
pub fn parse_transport(ctx: &TcContext, packet: &mut Packet) -> bool {
    let Some(family) = family_of(ctx) else {
        return false;
    };
    let Some(ip) = IpHeader::read(ctx, family, ETH_HLEN) else {
        return false;
    };
    if ip.fragment || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return false;
    }
    let Some(ports) = read::<[u16; 2]>(ctx, ip.l4) else {
        return false;
    };
    let tcp_flags = if ip.proto == IPPROTO_TCP { read::<u8>(ctx, ip.l4 + 13).unwrap_or(0) } else { 0 };
    *packet = Packet { ip, sport: ports[0], dport: ports[1], tcp_flags };
    true
}

/// Reads an ICMP error about a TCP or UDP packet (of `Kind::Icmp`) into
/// `error`; false for any other ICMP message.
#[inline(never)]
pub fn parse_icmp_error(ctx: &TcContext, error: &mut IcmpError) -> bool {
    let Some(family) = family_of(ctx) else {
        return false;
    };
    let Some(outer) = IpHeader::read(ctx, family, ETH_HLEN) else {
        return false;
    };
    if outer.fragment {
        return false;
    }
    let Some(icmp_type) = read::<u8>(ctx, outer.l4) else {
        return false;
    };
    let is_error = match family {
        Family::V4 => matches!(icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED),
        Family::V6 => matches!(icmp_type, ICMPV6_DEST_UNREACH | ICMPV6_PKT_TOOBIG | ICMPV6_TIME_EXCEED),
    };
    if !is_error {
        return false;
    }
    let Some(ip) = IpHeader::read(ctx, family, outer.l4 + ICMP_HLEN) else {
        return false;
    };
    if ip.fragment || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return false;
    }
    // The ports only: an error quotes at least 8 bytes of what follows
    // the IP header.
    let Some(ports) = read::<[u16; 2]>(ctx, ip.l4) else {
        return false;
    };
    *error = IcmpError { outer, inner: Packet { ip, sport: ports[0], dport: ports[1], tcp_flags: 0 } };
    true
}

/// A checksum field and the `bpf_l4_csum_replace` flags it is updated with.
#[derive(Clone, Copy)]
struct Checksum {
    offset: usize,
    flags: u64,
}

/// Writes address `to` over `from` at `offset`, updating the IPv4 header
/// checksum at `ip_check` and the TCP/UDP/ICMP checksum `l4`.
#[inline(always)]
fn replace_addr(
    ctx: &TcContext,
    family: Family,
    offset: usize,
    from: &Addr,
    to: &Addr,
    ip_check: Option<usize>,
    l4: Option<Checksum>,
) -> Result<(), ()> {
    match family {
        Family::V4 => {
            write(ctx, offset, &to[3])?;
            if let Some(ip_check) = ip_check {
                replace_ip_check(ctx, ip_check, &Words::from(from[3]), &Words::from(to[3]))?;
            }
            if let Some(l4) = l4 {
                let (old, new) = (u64::from(from[3]), u64::from(to[3]));
                ctx.l4_csum_replace(l4.offset, old, new, l4.flags | 4).map_err(|_| ())?;
            }
        }
        Family::V6 => {
            write(ctx, offset, to)?;
            if let Some(l4) = l4 {
                // Size 0 in the flags: `to` is a checksum difference.
                // The difference: the complement of a zero checksum's update.
                let diff = !replaced(0, &Words::from_addr(from), &Words::from_addr(to));
                ctx.l4_csum_replace(l4.offset, 0, u64::from(diff), l4.flags).map_err(|_| ())?;
            }
        }
    }
    Ok(())
}

#[inline(always)]
fn replace_u16(ctx: &TcContext, offset: usize, from: u16, to: u16, check: Checksum) -> Result<(), ()> {
    write(ctx, offset, &to)?;
    ctx.l4_csum_replace(check.offset, u64::from(from), u64::from(to), check.flags | 2).map_err(|_| ())
}

/// The 16-bit words of a value as it lies in the packet, in memory order
/// (one's complement sums are the same in either byte order, as long as
/// every word is read the same way).
struct Words<const N: usize>([u16; N]);

impl Words<2> {
    #[inline(always)]
    fn from(value: u32) -> Self {
        Words([value as u16, (value >> 16) as u16])
    }
}

impl Words<8> {
    #[inline(always)]
    fn from_addr(addr: &Addr) -> Self {
        let mut words = [0u16; 8];
        for (i, part) in addr.iter().enumerate() {
            words[2 * i] = *part as u16;
            words[2 * i + 1] = (*part >> 16) as u16;
        }
        Words(words)
    }
}

/// Checksum `check` after `from` was replaced by `to` in what it covers,
/// by RFC 1624's `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
fn replaced<const N: usize>(check: u16, from: &Words<N>, to: &Words<N>) -> u16 {
    let mut sum = u32::from(!check);
    for i in 0..N {
        sum += u32::from(!from.0[i]) + u32::from(to.0[i]);
    }
    fold(sum)
}

/// The checksum field of a one's complement sum, in memory order.
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Updates the IPv4 header checksum at `at` for `from` replaced by `to`.
#[inline(always)]
fn replace_ip_check<const N: usize>(
    ctx: &TcContext,
    at: usize,
    from: &Words<N>,
    to: &Words<N>,
) -> Result<(), ()> {
    let check: u16 = read(ctx, at).ok_or(())?;
    write(ctx, at, &replaced(check, from, to))
}

/// Lowers the IPv4 TTL or IPv6 hop limit by one, as a router does; false
/// when the packet may not be forwarded (it had at most 1 left).
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, ip: &IpHeader) -> bool {
    if ip.ttl <= 1 {
        return false;
    }
    match ip.family {
        Family::V4 => {
            // TTL and protocol form one 16-bit word of the header checksum.
            let offset = ip.l3 + 8;
            let Some(old) = read::<u16>(ctx, offset) else {
                return false;
            };
            // In memory order: the TTL is the first byte.
            let mut bytes = old.to_ne_bytes();
            bytes[0] -= 1;
            let new = u16::from_ne_bytes(bytes);
            write(ctx, offset, &new).is_ok()
                && replace_ip_check(ctx, ip.l3 + 10, &Words([old]), &Words([new])).is_ok()
        }
        Family::V6 => write(ctx, ip.l3 + 7, &(ip.ttl - 1)).is_ok(),
    }
}

/// Writes the Ethernet destination and source of the next hop.
#[inline(always)]
pub fn write_macs(ctx: &TcContext, macs: &[u8; 12]) -> bool {
    write(ctx, 0, macs).is_ok()
}
