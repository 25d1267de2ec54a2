//! `balctl dump KIND`: what the pinned maps hold, read directly from the
//! kernel, with names from the state dir. Each kind is a document with one
//! field named after it; its JSON form is a stable schema (docs/dump.md,
//! docs/schema/). `all` is every document's field in one. `--vip`,
//! `--name` and `--namespace` narrow every kind but config to the entries
//! of the frontends they keep.

pub(in crate::cmd) mod affinity;
mod backends;
mod config;
mod flows;
mod health;
mod nodes;
mod revnat;
mod services;
mod stats;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddr,
};

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::{
    bpf::{
        maps::{BackendId, Datapath, MapContents, ServiceId},
        pins::PinDir,
    },
    cli::{DumpArgs, DumpKind, VipFilter},
    image::raw::{frontend_of, raw_to_addr, raw_to_port},
    model::{Frontend, Scope},
    output::{TableStyle, print_structured},
    state::AppliedState,
};

pub fn run(ctx: &Context, args: &DumpArgs) -> Result<()> {
    let owners = OwnerFilter { name: args.name.clone(), namespace: args.namespace.clone() };
    let view = View::read(&ctx.pins, &ctx.state, args.vip, owners)?;
    match args.kind {
        DumpKind::Services => show(ctx, &services::read(&view)),
        DumpKind::Backends => show(ctx, &backends::read(&view)?),
        DumpKind::Affinity => show(ctx, &affinity::read(&view)?),
        DumpKind::Revnat => show(ctx, &revnat::read(&view)?),
        DumpKind::Nodes => show(ctx, &nodes::read(&view)),
        DumpKind::Config => show(ctx, &config::read(&view)?),
        DumpKind::Stats => show(ctx, &stats::read(&view)?),
        DumpKind::Flows => show(ctx, &flows::read(&view)?),
        DumpKind::Health => show(ctx, &health::read(&view)),
        DumpKind::All => show(ctx, &All::read(&view)?),
    }
}

/// How a kind's document prints for people (`-o wide` adds columns,
/// `--no-headers` drops the header rows); the other formats serialize it.
trait Tables {
    fn print_table(&self, style: TableStyle);
}

fn show(ctx: &Context, document: &(impl Serialize + Tables)) -> Result<()> {
    if ctx.output.is_table() {
        document.print_table(ctx.table_style());
        return Ok(());
    }
    print_structured(ctx.output, document)
}

/// `--name` and `--namespace`: which objects' frontends to show, by the
/// names `dump` gives them (`KIND/[NAMESPACE/]NAME`).
#[derive(Default)]
pub struct OwnerFilter {
    name: Option<String>,
    namespace: Option<String>,
}

impl OwnerFilter {
    fn is_set(&self) -> bool {
        self.name.is_some() || self.namespace.is_some()
    }

    /// Whether the object named `owner` is kept; one the state dir does not
    /// know (None) is kept only when no filter is set.
    fn keeps(&self, owner: Option<&str>) -> bool {
        let Some(owner) = owner else { return !self.is_set() };
        let name_matches = self.name.as_deref().is_none_or(|name| {
            owner == name
                || owner
                    .strip_suffix(name)
                    .is_some_and(|kind_and_namespace| kind_and_namespace.ends_with('/'))
        });
        let namespace_matches = self.namespace.as_deref().is_none_or(|namespace| {
            let parts: Vec<&str> = owner.split('/').collect();
            parts.len() == 3 && parts[1] == namespace
        });
        name_matches && namespace_matches
    }

    /// For cluster-wide objects (Nodes): the name only, as kubectl ignores a
    /// namespace for them.
    fn keeps_cluster_wide(&self, owner: &str) -> bool {
        OwnerFilter { name: self.name.clone(), namespace: None }.keeps(Some(owner))
    }
}

/// What every kind reads: the balancing maps and the applied state, and
/// the `--vip`, `--name` and `--namespace` filters.
pub struct View<'a> {
    pub(in crate::cmd) pins: &'a PinDir,
    vip: Option<VipFilter>,
    owners: OwnerFilter,
    pub(in crate::cmd) contents: MapContents,
    /// What the layers map says (`Datapath::layers`).
    pub(in crate::cmd) layers: u32,
    /// The requests-per-second limit of each rate-limited frontend.
    pub(in crate::cmd) rate_limits: BTreeMap<ServiceId, u32>,
    state: AppliedState,
    /// Each service id's frontend, from the master entries of the services map.
    frontends: HashMap<ServiceId, Frontend>,
    /// Each synced object's source, by its name.
    sources: HashMap<String, String>,
}

impl<'a> View<'a> {
    pub(in crate::cmd) fn read(
        pins: &'a PinDir,
        state: &crate::state::StateDir,
        vip: Option<VipFilter>,
        owners: OwnerFilter,
    ) -> Result<Self> {
        let datapath = Datapath::open(pins)?;
        let contents = datapath.read_contents()?;
        let (layers, rate_limits) = (datapath.layers()?, datapath.rate_limits()?);
        let frontends = contents
            .services
            .iter()
            .filter(|(key, _)| key.slot == 0)
            .filter_map(|(key, master)| Some((master.service_id, frontend_of(key)?)))
            .collect();
        let state = state.read()?;
        let sources =
            state.synced.iter().map(|object| (object.owner.clone(), object.source.clone())).collect();
        Ok(Self { pins, vip, owners, contents, layers, rate_limits, state, frontends, sources })
    }

    /// Whether a filter is set: then only what belongs to the frontends
    /// it keeps is shown.
    fn narrowed(&self) -> bool {
        self.vip.is_some() || self.owners.is_set()
    }

    /// Whether the filters keep this frontend.
    fn shows(&self, frontend: &Frontend) -> bool {
        self.vip.is_none_or(|vip| vip.matches(frontend))
            && self.owners.keeps(self.state.image.frontends.get(frontend).map(|f| f.owner.as_str()))
    }

    /// Whether the filters keep the frontend with this service id.
    fn shows_service(&self, service_id: ServiceId) -> bool {
        !self.narrowed() || self.frontends.get(&service_id).is_some_and(|f| self.shows(f))
    }

    /// What kind of frontend it is, as `dump services` shows it in TYPE: a
    /// policy's kind, or which address of its Service it is; None when
    /// the state dir does not know the Service frontend (drift).
    pub(in crate::cmd) fn frontend_type(
        &self,
        frontend: &Frontend,
        service_id: ServiceId,
    ) -> Option<&'static str> {
        match frontend.scope {
            Scope::Balancing => Some("balancing"),
            Scope::Redirect => Some("redirect"),
            Scope::Service | Scope::External => {
                let image =
                    self.state.image.frontends.get(frontend).filter(|f| f.service_id == service_id)?;
                Some(image.address_kind.name())
            }
        }
    }

    /// Where a rule came from: the `-f` source of a synced object (a path,
    /// `-` or `kubernetes`), or `balctl policy`.
    fn source(&self, owner: &str) -> Option<&str> {
        if owner.starts_with("policy/") {
            return Some("balctl policy");
        }
        self.sources.get(owner).map(String::as_str)
    }

    /// The frontend with this service id, as `IP:PORT/PROTO`.
    fn frontend(&self, service_id: ServiceId) -> Option<String> {
        self.frontends.get(&service_id).map(ToString::to_string)
    }

    /// The rule a frontend comes from, from the state dir: None when the
    /// state dir does not know the service id (drift).
    pub(in crate::cmd) fn name(&self, service_id: ServiceId) -> Option<String> {
        let frontend = self.frontends.get(&service_id)?;
        let image = self.state.image.frontends.get(frontend).filter(|f| f.service_id == service_id)?;
        Some(image.owner.clone())
    }

    /// The source ranges of the frontend with this service id, as
    /// `IP/LEN`, from the source_ranges map.
    fn source_ranges(&self, service_id: ServiceId) -> Vec<String> {
        let id = service_id.to_be_bytes();
        (self.contents.source_ranges.iter())
            .filter(|(_, range)| range.service_id == id)
            .map(|&(len, range)| {
                let address = raw_to_addr(range.addr);
                // The trie counts the service id's bits, and an IPv4
                // address's mapped prefix.
                let bits = len.saturating_sub(32).saturating_sub(if address.is_ipv4() { 96 } else { 0 });
                format!("{address}/{bits}")
            })
            .collect()
    }

    /// A backend's address in the backends map.
    pub(in crate::cmd) fn backend(&self, backend_id: BackendId) -> Option<SocketAddr> {
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
    #[serde(flatten)]
    flows: flows::Flows,
    #[serde(flatten)]
    health: health::Health,
}

impl All {
    fn read(view: &View) -> Result<Self> {
        Ok(Self {
            services: services::read(view),
            backends: backends::read(view)?,
            affinity: affinity::read(view)?,
            revnat: revnat::read(view)?,
            nodes: nodes::read(view),
            config: config::read(view)?,
            stats: stats::read(view)?,
            flows: flows::read(view)?,
            health: health::read(view),
        })
    }
}

impl Tables for All {
    fn print_table(&self, style: TableStyle) {
        let sections: [(&str, &dyn Tables); 9] = [
            ("services", &self.services),
            ("backends", &self.backends),
            ("affinity", &self.affinity),
            ("revnat", &self.revnat),
            ("nodes", &self.nodes),
            ("config", &self.config),
            ("stats", &self.stats),
            ("flows", &self.flows),
            ("health", &self.health),
        ];
        for (i, (title, section)) in sections.into_iter().enumerate() {
            if i > 0 {
                println!();
            }
            println!("== {title} ==");
            section.print_table(style);
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
