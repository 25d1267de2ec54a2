//! The external index an image puts in the maps (`balctl_common::
//! ExternalKey`): for each destination a packet from outside the node can
//! be for, the external frontend whose master entry serves it. A
//! LoadBalancer or external IP frontend serves its own address; a node
//! port serves each node address of its family, unless an exact frontend
//! of that address, port and protocol exists (kube-proxy matches
//! LoadBalancer and external IPs before node ports). The index is derived
//! from the frontends and node addresses, so the state never records it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use balctl_common::{Addr, ExternalKey};

use super::{
    Image,
    raw::{addr_to_raw, port_to_raw, raw_to_addr, raw_to_port},
};
use crate::model::{Frontend, Protocol, Scope};

impl Image {
    /// Every entry of the index, unsorted: the key, and the address of
    /// the master entry that serves it.
    pub fn external_index(&self) -> impl Iterator<Item = (ExternalKey, Addr)> + '_ {
        let exact = self.external_frontends().filter(|f| !f.address.is_unspecified()).map(|f| entry(f, f));
        let node_ports = self.node_ports().flat_map(move |node_port| {
            self.node_addresses_of_family(node_port.address)
                .map(move |&address| Frontend { address, ..*node_port })
                .filter(move |called| !self.frontends.contains_key(called))
                .map(move |called| entry(&called, node_port))
        });
        exact.chain(node_ports)
    }

    /// The index's value at `key`: the address of the master that serves
    /// it, if any. The same as `external_index`, for one key.
    pub fn external_master(&self, key: &ExternalKey) -> Option<Addr> {
        let called = Frontend {
            address: raw_to_addr(key.addr),
            port: raw_to_port(key.port),
            protocol: Protocol::from_ip_proto(key.proto)?,
            scope: Scope::External,
        };
        if called.address.is_unspecified() {
            return None;
        }
        if self.frontends.contains_key(&called) {
            return Some(key.addr);
        }
        let node_port = Frontend { address: unspecified_like(called.address), ..called };
        (self.node_addresses.contains(&called.address) && self.frontends.contains_key(&node_port))
            .then(|| addr_to_raw(node_port.address))
    }

    fn external_frontends(&self) -> impl Iterator<Item = &Frontend> {
        self.frontends.keys().filter(|f| f.scope == Scope::External)
    }

    fn node_ports(&self) -> impl Iterator<Item = &Frontend> {
        self.external_frontends().filter(|f| f.address.is_unspecified())
    }

    /// The node addresses of `address`'s family where a node port can
    /// answer (never an unspecified one: that is the node port itself).
    fn node_addresses_of_family(&self, address: IpAddr) -> impl Iterator<Item = &IpAddr> {
        self.node_addresses.iter().filter(move |a| a.is_ipv4() == address.is_ipv4() && !a.is_unspecified())
    }
}

/// The index keys whose entry can differ between `old` and `new`, given the
/// frontends one of them has and the other not (`came_or_went`), sorted and
/// once each: those of the external frontends that came or went, and of
/// the node addresses that came or went with every node port of their
/// family. A change proportional to what changed (times the node
/// addresses, for a node port), not to the index.
pub fn touched<'a>(
    old: &Image,
    new: &Image,
    came_or_went: impl Iterator<Item = &'a Frontend>,
) -> Vec<ExternalKey> {
    let mut called: Vec<Frontend> = Vec::new();
    for frontend in came_or_went.filter(|f| f.scope == Scope::External) {
        if frontend.address.is_unspecified() {
            let addresses = old.node_addresses.union(&new.node_addresses);
            called.extend(
                addresses
                    .filter(|a| a.is_ipv4() == frontend.address.is_ipv4())
                    .map(|&address| Frontend { address, ..*frontend }),
            );
        } else {
            called.push(*frontend);
        }
    }
    let mut moved = old.node_addresses.symmetric_difference(&new.node_addresses).peekable();
    if moved.peek().is_some() {
        let node_ports: Vec<&Frontend> = old.node_ports().chain(new.node_ports()).collect();
        for &address in moved {
            called.extend(
                (node_ports.iter())
                    .filter(|node_port| node_port.address.is_ipv4() == address.is_ipv4())
                    .map(|node_port| Frontend { address, ..**node_port }),
            );
        }
    }
    let mut keys: Vec<ExternalKey> = called.iter().filter(|c| !c.address.is_unspecified()).map(key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The index entry of a packet for `called`, served by `master`.
fn entry(called: &Frontend, master: &Frontend) -> (ExternalKey, Addr) {
    (key(called), addr_to_raw(master.address))
}

fn key(called: &Frontend) -> ExternalKey {
    ExternalKey {
        addr: addr_to_raw(called.address),
        port: port_to_raw(called.port),
        proto: called.protocol.ip_proto(),
        _pad: 0,
    }
}

/// The unspecified address of `address`'s family: a node port's.
fn unspecified_like(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}
