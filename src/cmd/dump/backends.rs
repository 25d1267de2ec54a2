//! `dump backends`: every backend with the frontends that use it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::Result;
use balctl_common::BACKEND_FLAG_LOCAL;
use serde::Serialize;

use super::{Tables, View, services};
use crate::{
    bpf::{counters::CounterMaps, maps::BackendId},
    image::raw::{raw_to_addr, raw_to_port},
    model::Protocol,
    output::{Listing, TableStyle, column, wide},
};

#[derive(Serialize)]
pub struct Backends {
    backends: Vec<BackendRecord>,
}

#[derive(Serialize)]
struct BackendRecord {
    backend_id: BackendId,
    address: IpAddr,
    port: u16,
    protocol: Option<Protocol>,
    /// It runs on this node (`BACKEND_FLAG_LOCAL`): external traffic to it
    /// is only DNATed, to the others also SNATed.
    local: bool,
    /// Frontends with a slot on this backend.
    frontends: Vec<String>,
    /// Sockets connected through its frontends to it and still open (the
    /// conns map, over its memberships): what least-connections frontends
    /// choose by.
    connections: u64,
}

/// Every backend, or with a filter only those the kept frontends use.
pub fn read(view: &View) -> Result<Backends> {
    let counters = CounterMaps::open(view.pins)?;
    let mut connections: BTreeMap<BackendId, u64> = BTreeMap::new();
    for (membership, &cell) in &view.contents.membership {
        *connections.entry(membership.backend_id).or_default() += counters.live(cell)?;
    }
    let mut users: BTreeMap<BackendId, BTreeSet<String>> = BTreeMap::new();
    for service in services::read(view).services {
        for slot in &service.backends {
            users.entry(slot.backend_id).or_default().insert(service.frontend.clone());
        }
    }
    let backends = view
        .contents
        .backends
        .iter()
        .filter_map(|(&backend_id, backend)| {
            let frontends = users.remove(&backend_id);
            if view.narrowed() && frontends.is_none() {
                return None;
            }
            Some(BackendRecord {
                backend_id,
                address: raw_to_addr(backend.addr),
                port: raw_to_port(backend.port),
                protocol: Protocol::from_ip_proto(backend.proto),
                local: backend.flags & BACKEND_FLAG_LOCAL != 0,
                frontends: frontends.unwrap_or_default().into_iter().collect(),
                connections: connections.get(&backend_id).copied().unwrap_or(0),
            })
        })
        .collect();
    Ok(Backends { backends })
}

impl Tables for Backends {
    fn print_table(&self, style: TableStyle) {
        let columns = [
            wide("ID"),
            column("ADDRESS"),
            column("PROTO"),
            column("NODE"),
            column("FRONTENDS"),
            column("CONNECTIONS"),
            wide("SLOTS"),
        ];
        let mut rows = Listing::new(style, &columns);
        for backend in &self.backends {
            rows.add_row([
                backend.backend_id.to_string(),
                std::net::SocketAddr::new(backend.address, backend.port).to_string(),
                backend.protocol.map_or_else(|| "?".into(), |p| p.to_string()),
                if backend.local { "local" } else { "-" }.to_owned(),
                backend.frontends.join("\n"),
                backend.connections.to_string(),
                backend.frontends.len().to_string(),
            ]);
        }
        rows.print();
    }
}
