//! Conversions between the model's addresses and the kernel layouts in
//! `balctl_common` (16-byte network-order addresses, network-order ports):
//! the image and the plan write them, `dump` and `trace` read them back.
//! They live above the kernel layer, which only moves these layouts.

use std::net::{IpAddr, Ipv6Addr};

use balctl_common::{Addr, ServiceKey};

use crate::model::{Frontend, Protocol, Scope};

/// IPv4 becomes `::ffff:a.b.c.d`; the words keep network byte order in memory.
pub fn addr_to_raw(ip: IpAddr) -> Addr {
    let octets = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let word = |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

pub fn raw_to_addr(raw: Addr) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(raw) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(octets).to_canonical()
}

pub const fn port_to_raw(port: u16) -> u16 {
    port.to_be()
}

pub const fn raw_to_port(raw: u16) -> u16 {
    u16::from_be(raw)
}

pub fn service_key(frontend: &Frontend, slot: u16) -> ServiceKey {
    ServiceKey {
        addr: addr_to_raw(frontend.address),
        port: port_to_raw(frontend.port),
        proto: frontend.protocol.ip_proto(),
        scope: frontend.scope.raw(),
        slot,
        _pad: 0,
    }
}

/// The frontend a services-map key belongs to, if its protocol is one
/// balctl writes.
pub fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    Some(Frontend {
        address: raw_to_addr(key.addr),
        port: raw_to_port(key.port),
        protocol: Protocol::from_ip_proto(key.proto)?,
        scope: Scope::from_raw(key.scope)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_v4_is_mapped() {
        for ip in ["198.18.0.1", "2001:db8::1", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(raw_to_addr(addr_to_raw(ip)), ip);
        }
        let raw = addr_to_raw("192.0.2.1".parse().unwrap());
        let bytes: Vec<u8> = raw.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]);
    }

    #[test]
    fn ports_are_network_order_in_memory() {
        assert_eq!(port_to_raw(80).to_ne_bytes(), [0, 80]);
        assert_eq!(raw_to_port(port_to_raw(8080)), 8080);
    }
}
