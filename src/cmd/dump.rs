//! `balctl dump services|backends`: what the pinned maps hold, read
//! directly from the kernel, with names from the state dir. The JSON form is
//! a stable schema (docs/dump.md).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use anyhow::Result;
use balctl_common::ServiceEntry;
use serde::Serialize;

use super::Context;
use crate::{
    bpf::{
        maps::Datapath,
        raw::{frontend_of, raw_to_addr, raw_to_port},
    },
    cli::{DumpArgs, DumpKind},
    image::{BackendId, ServiceId},
    model::{Frontend, Protocol},
    output::{OutputFormat, print_structured, table},
    plan::MapContents,
};

#[derive(Serialize)]
struct ServiceRecord {
    frontend: String,
    address: IpAddr,
    port: u16,
    protocol: Protocol,
    service_id: ServiceId,
    /// The rule this frontend comes from, from the state dir; null if the
    /// state dir does not know it (drift).
    name: Option<String>,
    affinity_timeout_seconds: Option<u32>,
    /// Slots the datapath picks from (the master entry's count).
    backend_count: u16,
    backends: Vec<SlotRecord>,
}

#[derive(Serialize)]
struct SlotRecord {
    slot: u16,
    backend_id: BackendId,
    /// Null when the slot names a backend the backends map lacks.
    address: Option<IpAddr>,
    port: Option<u16>,
}

#[derive(Serialize)]
struct BackendRecord {
    backend_id: BackendId,
    address: IpAddr,
    port: u16,
    protocol: Option<Protocol>,
    /// Frontends with a slot on this backend.
    frontends: Vec<String>,
}

#[derive(Serialize)]
struct Services {
    services: Vec<ServiceRecord>,
}

#[derive(Serialize)]
struct Backends {
    backends: Vec<BackendRecord>,
}

pub fn run(ctx: &Context, args: &DumpArgs) -> Result<()> {
    let contents = Datapath::open(&ctx.pins)?.read_contents()?;
    let state = ctx.state.read()?;
    let names: HashMap<ServiceId, &str> =
        state.image.frontends.values().map(|f| (f.service_id, f.owner.as_str())).collect();
    let services: Vec<ServiceRecord> = services(&contents, &names)
        .into_iter()
        .filter(|(frontend, _)| args.vip.is_none_or(|vip| vip.matches(frontend)))
        .map(|(_, record)| record)
        .collect();
    match args.kind {
        DumpKind::Services => print_services(ctx.output, services),
        DumpKind::Backends => print_backends(ctx.output, backends(&contents, &services, args.vip.is_some())),
    }
}

/// One frontend's entries in the services map.
#[derive(Default)]
struct FrontendEntries {
    master: Option<ServiceEntry>,
    slots: Vec<(u16, ServiceEntry)>,
}

fn services(contents: &MapContents, names: &HashMap<ServiceId, &str>) -> Vec<(Frontend, ServiceRecord)> {
    let mut by_frontend: BTreeMap<Frontend, FrontendEntries> = BTreeMap::new();
    for (key, entry) in &contents.services {
        let Some(frontend) = frontend_of(key) else { continue };
        let entries = by_frontend.entry(frontend).or_default();
        if key.slot == 0 {
            entries.master = Some(*entry);
        } else {
            entries.slots.push((key.slot, *entry));
        }
    }
    by_frontend
        .into_iter()
        .filter_map(|(frontend, FrontendEntries { master, slots })| {
            let master = master?;
            let backends = slots
                .into_iter()
                .map(|(slot, entry)| {
                    let backend = contents.backends.get(&entry.backend_id);
                    SlotRecord {
                        slot,
                        backend_id: entry.backend_id,
                        address: backend.map(|b| raw_to_addr(b.addr)),
                        port: backend.map(|b| raw_to_port(b.port)),
                    }
                })
                .collect();
            let record = ServiceRecord {
                frontend: frontend.to_string(),
                address: frontend.address,
                port: frontend.port,
                protocol: frontend.protocol,
                service_id: master.service_id,
                name: names.get(&master.service_id).map(|n| (*n).to_owned()),
                affinity_timeout_seconds: (master.affinity_timeout_sec != 0)
                    .then_some(master.affinity_timeout_sec),
                backend_count: master.count,
                backends,
            };
            Some((frontend, record))
        })
        .collect()
}

/// Every backend, or with a `--vip` filter only those the shown services use.
fn backends(contents: &MapContents, services: &[ServiceRecord], filtered: bool) -> Vec<BackendRecord> {
    let mut users: BTreeMap<BackendId, BTreeSet<String>> = BTreeMap::new();
    for service in services {
        for slot in &service.backends {
            users.entry(slot.backend_id).or_default().insert(service.frontend.clone());
        }
    }
    contents
        .backends
        .iter()
        .filter_map(|(&backend_id, backend)| {
            let frontends = users.remove(&backend_id);
            if filtered && frontends.is_none() {
                return None;
            }
            Some(BackendRecord {
                backend_id,
                address: raw_to_addr(backend.addr),
                port: raw_to_port(backend.port),
                protocol: Protocol::from_ip_proto(backend.proto),
                frontends: frontends.unwrap_or_default().into_iter().collect(),
            })
        })
        .collect()
}

fn print_services(format: OutputFormat, services: Vec<ServiceRecord>) -> Result<()> {
    if format != OutputFormat::Table {
        return print_structured(format, &Services { services });
    }
    let mut rows = table(["FRONTEND", "NAME", "ID", "AFFINITY", "BACKENDS"]);
    for service in &services {
        let backends: Vec<String> = service
            .backends
            .iter()
            .map(|slot| match (slot.address, slot.port) {
                (Some(address), Some(port)) => {
                    format!("{} (#{})", std::net::SocketAddr::new(address, port), slot.backend_id)
                }
                _ => format!("missing backend #{}", slot.backend_id),
            })
            .collect();
        rows.add_row([
            service.frontend.clone(),
            service.name.clone().unwrap_or_else(|| "?".into()),
            service.service_id.to_string(),
            service.affinity_timeout_seconds.map_or_else(|| "-".into(), |s| format!("{s}s")),
            if backends.is_empty() { "(none: rejects)".into() } else { backends.join("\n") },
        ]);
    }
    println!("{rows}");
    Ok(())
}

fn print_backends(format: OutputFormat, backends: Vec<BackendRecord>) -> Result<()> {
    if format != OutputFormat::Table {
        return print_structured(format, &Backends { backends });
    }
    let mut rows = table(["ID", "ADDRESS", "PROTO", "FRONTENDS"]);
    for backend in &backends {
        rows.add_row([
            backend.backend_id.to_string(),
            std::net::SocketAddr::new(backend.address, backend.port).to_string(),
            backend.protocol.map_or_else(|| "?".into(), |p| p.to_string()),
            backend.frontends.join("\n"),
        ]);
    }
    println!("{rows}");
    Ok(())
}
