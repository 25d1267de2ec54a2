//! Addresses as the maps hold them: IPv4 mapped into IPv6.

use balctl_common::Addr;

/// An address and port, both in network byte order.
pub struct Endpoint {
    pub addr: Addr,
    pub port: u16,
}

/// IPv4 addresses travel as `::ffff:a.b.c.d` (network byte order words).
pub const V4_MAPPED_PREFIX: Addr = [0, 0, u32::from_be(0x0000_ffff), 0];

#[inline(always)]
pub fn is_v4_mapped(addr: &Addr) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_PREFIX[2]
}

/// 127.0.0.0/8, of a mapped address. Not ::1: kube-proxy serves node ports
/// on IPv4 loopback only (through route_localnet, which IPv6 lacks).
#[inline(always)]
pub fn is_v4_loopback(addr: &Addr) -> bool {
    u32::from_be(addr[3]) >> 24 == 127
}
