//! `dump nodes`: the node addresses NodePort frontends answer on, with the
//! Node objects (from `balctl sync`) that list each, and whether they
//! answer on IPv4 loopback (the nodes map's loopback key).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use balctl_common::NodeAddressKey;
use serde::Serialize;

use super::{Tables, View};
use crate::{
    image::raw::raw_to_addr,
    output::{Listing, TableStyle, column},
};

#[derive(Serialize)]
pub struct Nodes {
    nodes: Vec<NodeRecord>,
    /// Node ports answer on IPv4 loopback (127.0.0.0/8).
    loopback: bool,
}

#[derive(Serialize)]
struct NodeRecord {
    address: IpAddr,
    /// The Nodes listing the address (`node/NAME`); empty when the state
    /// dir knows none (drift).
    names: Vec<String>,
}

/// The addresses in the nodes map, sorted; `--vip` keeps its own address
/// (a node address has no port), `--name` those of the Nodes it names.
pub fn read(view: &View) -> Nodes {
    let mut names: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
    for object in &view.state.synced {
        for address in &object.addresses {
            names.entry(*address).or_default().insert(&object.owner);
        }
    }
    let keys = &view.contents.node_addresses;
    let mut addresses: Vec<IpAddr> = keys
        .iter()
        .filter(|&&key| key != NodeAddressKey::IPV4_LOOPBACK)
        .map(|key| raw_to_addr(key.addr))
        .filter(|address| view.vip.is_none_or(|vip| vip.address == *address))
        .filter(|address| {
            view.owners.name.is_none()
                || names
                    .get(address)
                    .is_some_and(|names| names.iter().any(|n| view.owners.keeps_cluster_wide(n)))
        })
        .collect();
    addresses.sort();
    let nodes = addresses
        .into_iter()
        .map(|address| NodeRecord {
            address,
            names: names.get(&address).into_iter().flatten().map(|name| (*name).to_owned()).collect(),
        })
        .collect();
    Nodes { nodes, loopback: keys.contains(&NodeAddressKey::IPV4_LOOPBACK) }
}

impl Tables for Nodes {
    fn print_table(&self, style: TableStyle) {
        let mut rows = Listing::new(style, &[column("ADDRESS"), column("NODES")]);
        for node in &self.nodes {
            let names = if node.names.is_empty() { "?".to_owned() } else { node.names.join("\n") };
            rows.add_row([node.address.to_string(), names]);
        }
        if self.loopback {
            rows.add_row(["127.0.0.0/8".to_owned(), "(IPv4 loopback)".to_owned()]);
        }
        rows.print();
    }
}
