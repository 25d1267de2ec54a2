//! `dump services`: every frontend with its backend slots.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use balctl_common::{SERVICE_FLAG_MAGLEV, ServiceEntry};
use serde::Serialize;

use super::{Tables, View, backend_cell};
use crate::{
    bpf::maps::{BackendId, ServiceId},
    image::raw::frontend_of,
    model::{Frontend, Protocol, Scope},
    output::{Listing, TableStyle, column, wide},
};

#[derive(Serialize)]
pub struct Services {
    pub services: Vec<ServiceRecord>,
}

#[derive(Serialize)]
pub struct ServiceRecord {
    pub frontend: String,
    address: IpAddr,
    port: u16,
    protocol: Protocol,
    /// The rule layer: `service`, `balancing` or `redirect` (tried in the
    /// reverse order), or `external` (packets from outside the node).
    scope: Scope,
    /// What kind of frontend: a policy's (`balancing`, `redirect`), or which
    /// address of its Service (`ClusterIP`, `NodePort`, `LoadBalancer`,
    /// `ExternalIP`); null if the state dir does not know it (drift).
    #[serde(rename = "type")]
    frontend_type: Option<&'static str>,
    service_id: ServiceId,
    /// The rule this frontend comes from, from the state dir; null if the
    /// state dir does not know it (drift).
    name: Option<String>,
    affinity_timeout_seconds: Option<u32>,
    /// The size of an external frontend's Maglev table (its master's
    /// `backend_id`, with `SERVICE_FLAG_MAGLEV`); null without one (a
    /// random slot).
    maglev_table_size: Option<u32>,
    /// Slots the datapath picks from (the master entry's count).
    backend_count: u16,
    pub backends: Vec<SlotRecord>,
    /// Where the rule came from (`-o wide` only; not in the JSON, which
    /// keeps its schema: `balctl policy` or a synced object's source).
    #[serde(skip)]
    source: Option<String>,
}

#[derive(Serialize)]
pub struct SlotRecord {
    slot: u16,
    pub backend_id: BackendId,
    /// Null when the slot names a backend the backends map lacks.
    address: Option<IpAddr>,
    port: Option<u16>,
}

/// One frontend's entries in the services map.
#[derive(Default)]
struct FrontendEntries {
    master: Option<ServiceEntry>,
    slots: Vec<(u16, ServiceEntry)>,
}

/// The frontends `--vip` keeps, sorted.
pub fn read(view: &View) -> Services {
    let mut by_frontend: BTreeMap<Frontend, FrontendEntries> = BTreeMap::new();
    for (key, entry) in &view.contents.services {
        let Some(frontend) = frontend_of(key).filter(|f| view.shows(f)) else { continue };
        let entries = by_frontend.entry(frontend).or_default();
        if key.slot == 0 {
            entries.master = Some(*entry);
        } else {
            entries.slots.push((key.slot, *entry));
        }
    }
    let services = by_frontend
        .into_iter()
        .filter_map(|(frontend, FrontendEntries { master, slots })| {
            let master = master?;
            let backends = slots
                .into_iter()
                .map(|(slot, entry)| {
                    let backend = view.backend(entry.backend_id);
                    SlotRecord {
                        slot,
                        backend_id: entry.backend_id,
                        address: backend.map(|b| b.ip()),
                        port: backend.map(|b| b.port()),
                    }
                })
                .collect();
            Some(ServiceRecord {
                frontend: frontend.to_string(),
                address: frontend.address,
                port: frontend.port,
                protocol: frontend.protocol,
                scope: frontend.scope,
                frontend_type: view.frontend_type(&frontend, master.service_id),
                service_id: master.service_id,
                name: view.name(master.service_id),
                affinity_timeout_seconds: (master.affinity_timeout_sec != 0)
                    .then_some(master.affinity_timeout_sec),
                maglev_table_size: (master.flags & SERVICE_FLAG_MAGLEV != 0).then_some(master.backend_id),
                backend_count: master.count,
                backends,
                source: view.name(master.service_id).and_then(|owner| view.source(&owner).map(str::to_owned)),
            })
        })
        .collect();
    Services { services }
}

impl Tables for Services {
    fn print_table(&self, style: TableStyle) {
        let mut rows = Listing::new(
            style,
            &[
                column("FRONTEND"),
                column("TYPE"),
                column("NAME"),
                wide("ID"),
                wide("AFFINITY"),
                wide("SLOTS"),
                wide("SOURCE"),
                column("BACKENDS"),
            ],
        );
        for service in &self.services {
            let backends: Vec<String> = service
                .backends
                .iter()
                .map(|slot| {
                    let address = slot.address.zip(slot.port).map(|(ip, port)| SocketAddr::new(ip, port));
                    backend_cell(slot.backend_id, address)
                })
                .collect();
            rows.add_row([
                service.frontend.clone(),
                service.frontend_type.unwrap_or("?").to_owned(),
                service.name.clone().unwrap_or_else(|| "?".into()),
                service.service_id.to_string(),
                service.affinity_timeout_seconds.map_or_else(|| "-".into(), |s| format!("{s}s")),
                service.backend_count.to_string(),
                service.source.clone().unwrap_or_else(|| "?".into()),
                match (backends.is_empty(), service.scope) {
                    (true, Scope::Redirect) => "(none: gives way)".into(),
                    (true, Scope::External) => "(none: drops)".into(),
                    (true, _) => "(none: rejects)".into(),
                    (false, _) => backends.join("\n"),
                },
            ]);
        }
        rows.print();
    }
}
