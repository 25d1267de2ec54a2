//! `balctl dump KIND`: what the pinned maps hold, read directly from the
//! kernel, with names from the state dir. Each kind is a document with one
//! field named after it; its JSON form is a stable schema (docs/dump.md,
//! docs/schema/). `all` is every document's field in one.

mod affinity;
mod backends;
mod config;
mod nodes;
mod revnat;
mod services;
mod stats;

use std::{collections::HashMap, fmt, net::SocketAddr};

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::{
    bpf::{
        maps::Datapath,
        pins::PinDir,
        raw::{frontend_of, raw_to_addr, raw_to_port},
    },
    cli::{DumpArgs, DumpKind, VipFilter},
    image::{BackendId, ServiceId},
    model::Frontend,
    output::{OutputFormat, print_structured},
    plan::MapContents,
    state::AppliedState,
};

pub fn run(ctx: &Context, args: &DumpArgs) -> Result<()> {
    let view = View::read(&ctx.pins, &ctx.state, args.vip)?;
    match args.kind {
        DumpKind::Services => show(ctx.output, &services::read(&view)),
        DumpKind::Backends => show(ctx.output, &backends::read(&view)),
        DumpKind::Affinity => show(ctx.output, &affinity::read(&view)?),
        DumpKind::Revnat => show(ctx.output, &revnat::read(&view)?),
        DumpKind::Nodes => show(ctx.output, &nodes::read(&view)),
        DumpKind::Config => show(ctx.output, &config::read(&view)?),
        DumpKind::Stats => show(ctx.output, &stats::read(&view)?),
        DumpKind::All => show(ctx.output, &All::read(&view)?),
    }
}

/// How a kind's document prints for people; JSON and YAML serialize it.
trait Tables {
    fn print_table(&self);
}

fn show(format: OutputFormat, document: &(impl Serialize + Tables)) -> Result<()> {
    if format != OutputFormat::Table {
        return print_structured(format, document);
    }
    document.print_table();
    Ok(())
}

/// What every kind reads: the balancing maps and the applied state, and
/// the `--vip` filter.
pub struct View<'a> {
    pins: &'a PinDir,
    vip: Option<VipFilter>,
    contents: MapContents,
    state: AppliedState,
    /// Each service id's frontend, from the master entries of the services map.
    frontends: HashMap<ServiceId, Frontend>,
}

impl<'a> View<'a> {
    fn read(pins: &'a PinDir, state: &crate::state::StateDir, vip: Option<VipFilter>) -> Result<Self> {
        let contents = Datapath::open(pins)?.read_contents()?;
        let frontends = contents
            .services
            .iter()
            .filter(|(key, _)| key.slot == 0)
            .filter_map(|(key, master)| Some((master.service_id, frontend_of(key)?)))
            .collect();
        Ok(Self { pins, vip, contents, state: state.read()?, frontends })
    }

    /// Whether `--vip` (if given) keeps this frontend.
    fn shows(&self, frontend: &Frontend) -> bool {
        self.vip.is_none_or(|vip| vip.matches(frontend))
    }

    /// Whether `--vip` (if given) keeps the frontend with this service id.
    fn shows_service(&self, service_id: ServiceId) -> bool {
        self.vip.is_none() || self.frontends.get(&service_id).is_some_and(|f| self.shows(f))
    }

    /// The frontend with this service id, as `IP:PORT/PROTO`.
    fn frontend(&self, service_id: ServiceId) -> Option<String> {
        self.frontends.get(&service_id).map(ToString::to_string)
    }

    /// The rule a frontend comes from, from the state dir: None when the
    /// state dir does not know the service id (drift).
    fn name(&self, service_id: ServiceId) -> Option<String> {
        let frontend = self.frontends.get(&service_id)?;
        let image = self.state.image.frontends.get(frontend).filter(|f| f.service_id == service_id)?;
        Some(image.owner.clone())
    }

    /// A backend's address in the backends map.
    fn backend(&self, backend_id: BackendId) -> Option<SocketAddr> {
        let backend = self.contents.backends.get(&backend_id)?;
        Some(SocketAddr::new(raw_to_addr(backend.addr), raw_to_port(backend.port)))
    }
}

/// `dump all`: every kind's field in one document.
#[derive(Serialize)]
struct All {
    #[serde(flatten)]
    services: services::Services,
    #[serde(flatten)]
    backends: backends::Backends,
    #[serde(flatten)]
    affinity: affinity::Affinity,
    #[serde(flatten)]
    revnat: revnat::RevNat,
    #[serde(flatten)]
    nodes: nodes::Nodes,
    #[serde(flatten)]
    config: config::Config,
    #[serde(flatten)]
    stats: stats::Stats,
}

impl All {
    fn read(view: &View) -> Result<Self> {
        Ok(Self {
            services: services::read(view),
            backends: backends::read(view),
            affinity: affinity::read(view)?,
            revnat: revnat::read(view)?,
            nodes: nodes::read(view),
            config: config::read(view)?,
            stats: stats::read(view)?,
        })
    }
}

impl Tables for All {
    fn print_table(&self) {
        let sections: [(&str, &dyn Tables); 7] = [
            ("services", &self.services),
            ("backends", &self.backends),
            ("affinity", &self.affinity),
            ("revnat", &self.revnat),
            ("nodes", &self.nodes),
            ("config", &self.config),
            ("stats", &self.stats),
        ];
        for (i, (title, section)) in sections.into_iter().enumerate() {
            if i > 0 {
                println!();
            }
            println!("== {title} ==");
            section.print_table();
        }
    }
}

/// A backend as tables show it: its address and id, or that it is missing.
fn backend_cell(backend_id: BackendId, address: Option<impl fmt::Display>) -> String {
    match address {
        Some(address) => format!("{address} (#{backend_id})"),
        None => format!("missing backend #{backend_id}"),
    }
}

/// Nanoseconds as seconds, to the millisecond.
fn seconds(nanoseconds: u64) -> f64 {
    (nanoseconds / 1_000_000) as f64 / 1000.0
}
