//! `dump nodes`: the node addresses NodePort frontends answer on, with the
//! Node objects (from `balctl sync`) that list each.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::Serialize;

use super::{Tables, View};
use crate::{
    image::raw::raw_to_addr,
    output::{Listing, TableStyle, column},
};

#[derive(Serialize)]
pub struct Nodes {
    nodes: Vec<NodeRecord>,
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
    let mut addresses: Vec<IpAddr> = view
        .contents
        .node_addresses
        .iter()
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
    Nodes { nodes }
}

impl Tables for Nodes {
    fn print_table(&self, style: TableStyle) {
        let mut rows = Listing::new(style, &[column("ADDRESS"), column("NODES")]);
        for node in &self.nodes {
            let names = if node.names.is_empty() { "?".to_owned() } else { node.names.join("\n") };
            rows.add_row([node.address.to_string(), names]);
        }
        rows.print();
    }
}
