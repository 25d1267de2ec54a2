//! The compiled datapath: every frontend with its service id and ordered
//! backend ids, and every backend with its id. Compiling keeps the ids of
//! frontends and backends that already exist, so an update rewrites only
//! what changed and sticky choices keep pointing at the same backends.
//! Ids are never reused.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use anyhow::{Result, bail};
use balctl_common::{
    BACKEND_FLAG_LOCAL, Backend, MAGLEV_CHUNK, MaglevChunk, MaglevKey, MembershipKey, NodeAddressKey,
    SERVICE_FLAG_AFFINITY, SERVICE_FLAG_LEAST_CONNECTIONS, SERVICE_FLAG_LOCAL_ONLY, SERVICE_FLAG_MAGLEV,
    SERVICE_FLAG_RATE_LIMITED, SERVICE_FLAG_SOURCE_RANGES, SERVICE_FLAG_UNHEALTHY, ServiceEntry, SourceRange,
};
pub use balctl_common::{Cell, NO_CELL};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde::{Deserialize, Serialize};

use self::raw::{addr_to_raw, port_to_raw};
use crate::{
    bpf::maps::{BackendId, EntryCounts, ServiceId, SourceRangeKey},
    input, maglev,
    model::{AddressKind, Frontend, FrontendRule, LbAlgorithm, Prefix, Protocol, Scope, Standing},
};

mod backends;
mod cells;
pub mod external;
pub mod raw;
mod tally;

pub use self::backends::BackendTable;
use self::backends::Lookup;
use self::tally::{Backends, Tally};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendAddr {
    pub address: SocketAddr,
    pub protocol: Protocol,
    /// It runs on this node (`FrontendRule::local_backends`): part of what
    /// the backend is, so an endpoint that moves to or from this node with
    /// the same address becomes a new backend with a new id, and every
    /// slot copy of it says where it runs. Formats 3 and 4 had none: the
    /// legacy reader leaves it false.
    #[serde(default)]
    pub local: bool,
}

impl BackendAddr {
    pub fn to_raw(self) -> Backend {
        Backend {
            addr: addr_to_raw(self.address.ip()),
            port: port_to_raw(self.address.port()),
            proto: self.protocol.ip_proto(),
            flags: if self.local { BACKEND_FLAG_LOCAL } else { 0 },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendImage {
    pub service_id: ServiceId,
    /// What this frontend comes from, e.g. `policy/web`.
    pub owner: String,
    /// Backend ids in slot order (slot 1 is the first).
    pub backends: Vec<BackendId>,
    pub affinity_seconds: Option<u32>,
    /// See `FrontendRule::local_only`.
    pub local_only: bool,
    /// See `FrontendRule::requests_per_second`.
    pub requests_per_second: Option<u32>,
    /// See `FrontendRule::address_kind`. Format 3 state files had none:
    /// the legacy reader leaves it to its default (`legacy`).
    #[serde(default)]
    pub address_kind: AddressKind,
    /// The size M of the frontend's Maglev table (`maglev.rs`): an
    /// external frontend's with the Maglev algorithm and backends; 0 for
    /// every other (a random slot). Formats 3 and 4 had none: 0.
    #[serde(default)]
    pub maglev_table_size: u32,
    /// The prefixes packets from outside may come from (a load-balancer
    /// IP's `loadBalancerSourceRanges`); empty: any. Formats 3 and 4 had
    /// none.
    #[serde(default)]
    pub source_ranges: Vec<Prefix>,
    /// Where the frontend's resolutions are counted (its cell of the stats
    /// map, `cells.rs`), and each backend's (its membership's cell of the
    /// backend_hits map), in the order of `backends`: a backend listed
    /// twice is one membership with one cell. Formats 9 and before had
    /// none: reading such a state hands them out (`hand_out_cells`).
    #[serde(default)]
    pub cell: Cell,
    #[serde(default)]
    pub hit_cells: Vec<Cell>,
    /// Every backend of the rule fails its health check (`model::health`):
    /// the master entry says so (`SERVICE_FLAG_UNHEALTHY`), so that a
    /// refusal, or a connection the rule fails open with, is traced as
    /// such. Formats 10 and before had none.
    #[serde(default)]
    pub unhealthy: bool,
    /// See `FrontendRule::least_connections` (socket frontends only).
    /// Formats 10 and before had none.
    #[serde(default)]
    pub least_connections: bool,
}

impl FrontendImage {
    /// The frontend's master entry (slot 0). With a Maglev table, its
    /// `backend_id` holds the table's size.
    pub fn master(&self) -> ServiceEntry {
        ServiceEntry {
            backend_id: self.maglev_table_size,
            // `compile` caps backends at u16::MAX.
            count: self.backends.len() as u16,
            flags: if self.affinity_seconds.is_some() { SERVICE_FLAG_AFFINITY } else { 0 }
                | if self.local_only { SERVICE_FLAG_LOCAL_ONLY } else { 0 }
                | if self.requests_per_second.is_some() { SERVICE_FLAG_RATE_LIMITED } else { 0 }
                | if self.maglev_table_size > 0 { SERVICE_FLAG_MAGLEV } else { 0 }
                | if self.source_ranges.is_empty() { 0 } else { SERVICE_FLAG_SOURCE_RANGES }
                | if self.unhealthy { SERVICE_FLAG_UNHEALTHY } else { 0 }
                | if self.least_connections { SERVICE_FLAG_LEAST_CONNECTIONS } else { 0 },
            service_id: self.service_id,
            affinity_timeout_sec: self.affinity_seconds.unwrap_or(0),
            cell: self.cell,
            backend: Backend::NONE,
        }
    }

    /// Slot entries 1..=count, paired with their slot numbers; `backends`
    /// are the image's, whose addresses the entries copy.
    pub fn slots<'a>(&'a self, backends: &'a BackendTable) -> impl Iterator<Item = (u16, ServiceEntry)> + 'a {
        self.backends.iter().enumerate().map(|(i, &backend_id)| {
            let entry = ServiceEntry {
                backend_id,
                count: 0,
                flags: 0,
                service_id: self.service_id,
                affinity_timeout_sec: 0,
                cell: self.hit_cell(i),
                // A corrupt state's unknown backend: the datapath refuses
                // it as stale.
                backend: backends.get(&backend_id).map_or(Backend::NONE, |b| b.to_raw()),
            };
            (i as u16 + 1, entry)
        })
    }

    /// The Maglev table's entries (none without a table), `MAGLEV_CHUNK`
    /// to a map entry, in index order: computed from the backends'
    /// addresses, as every node does, holding this node's ids of them.
    pub fn maglev_entries(
        &self,
        backends: &BackendTable,
    ) -> impl Iterator<Item = (MaglevKey, MaglevChunk)> + use<> {
        let addresses: Vec<SocketAddr> = if self.maglev_table_size > 0 {
            self.backends.iter().filter_map(|id| Some(backends.get(id)?.address)).collect()
        } else {
            Vec::new()
        };
        // A corrupt state's unknown backend leaves the table out.
        let table = if addresses.len() == self.backends.len() {
            maglev::table(&addresses, self.maglev_table_size)
        } else {
            Vec::new()
        };
        let ids = if table.is_empty() { Vec::new() } else { self.backends.clone() };
        let service_id = self.service_id;
        let chunks: Vec<MaglevChunk> = table
            .chunks(MAGLEV_CHUNK)
            .map(|entries| {
                // Past the table's end, 0: no backend.
                let mut chunk = [0; MAGLEV_CHUNK];
                for (id, &backend) in chunk.iter_mut().zip(entries) {
                    *id = ids[backend as usize];
                }
                chunk
            })
            .collect();
        chunks
            .into_iter()
            .enumerate()
            .map(move |(chunk, ids)| (MaglevKey { service_id, chunk: chunk as u32 }, ids))
    }

    /// The source_ranges-map keys of its source ranges, sorted: the
    /// trie's prefix length (the service id's 32 bits, then the mapped
    /// address's) and its data.
    pub fn source_range_keys(&self) -> impl Iterator<Item = SourceRangeKey> + use<> {
        let service_id = self.service_id.to_be_bytes();
        let mut keys: Vec<SourceRangeKey> = (self.source_ranges.iter())
            .map(|range| {
                let data = SourceRange { service_id, addr: addr_to_raw(range.address) };
                (32 + u32::from(range.mapped_len()), data)
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
    }

    /// Its memberships with their cells, in slot order (a backend listed
    /// twice comes twice, with one cell).
    pub fn memberships(&self) -> impl Iterator<Item = (MembershipKey, Cell)> + '_ {
        (self.backends.iter().enumerate()).map(|(i, &backend_id)| {
            (MembershipKey { service_id: self.service_id, backend_id }, self.hit_cell(i))
        })
    }

    /// The cell of the backend in slot `index + 1`.
    pub fn hit_cell(&self, index: usize) -> Cell {
        self.hit_cells.get(index).copied().unwrap_or(NO_CELL)
    }
}

/// What a change touched of an image, before and after it
/// (`Image::updated_in_part`), with the layers of the whole images.
pub struct Parts {
    pub before: Image,
    pub after: Image,
    pub layers: (u32, u32),
}

/// Where a change may have changed an image: what compares two images
/// (the state's change record, the stale sockets' pairs) looks there only.
#[derive(Clone, Copy)]
pub enum Touched<'a> {
    /// Anywhere: the images are compared whole.
    All,
    /// Only these frontends (those of the rules the change removed and
    /// added), and the backends they use before or after.
    Frontends(&'a BTreeSet<Frontend>),
}

impl<'a> Touched<'a> {
    /// The frontends of `image` that may have changed, with their entries.
    pub fn frontends_of(
        self,
        image: &'a Image,
    ) -> Box<dyn Iterator<Item = (&'a Frontend, &'a FrontendImage)> + 'a> {
        match self {
            Self::All => Box::new(image.frontends.iter()),
            Self::Frontends(touched) => {
                Box::new(touched.iter().filter_map(|f| image.frontends.get_key_value(f)))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    #[serde(with = "pairs")]
    pub frontends: BTreeMap<Frontend, FrontendImage>,
    pub backends: BackendTable,
    /// Addresses of every Node: NodePort frontends answer on them (for
    /// packets from outside, through the external index: `external.rs`).
    pub node_addresses: BTreeSet<IpAddr>,
    /// The next ids to hand out; both start at 1 (0 means "none" in the maps).
    pub next_service_id: ServiceId,
    pub next_backend_id: BackendId,
    /// NodePort frontends also answer on IPv4 loopback, to this node's
    /// sockets (`--nodeport-addresses`: `NodePortAddresses::
    /// serve_loopback`). Each sync sets it; policy commands keep it. Yes
    /// until a sync says otherwise, and in state formats before 8 (what
    /// balctl did then).
    #[serde(default = "yes")]
    pub node_ports_on_loopback: bool,
    /// What the frontends add up to, once made (`tally.rs`).
    #[serde(skip)]
    tally: Derived,
}

fn yes() -> bool {
    true
}

/// An image's `Tally`, once made: not part of what the image is, so
/// never compared or stored.
#[derive(Clone, Debug, Default)]
struct Derived {
    tally: Option<Box<Tally>>,
    /// Whether the image was changed (`Image::updated`) in this process:
    /// one that is changed again is kept (a watch).
    changed: bool,
}

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Derived {}

impl Default for Image {
    fn default() -> Self {
        Self {
            frontends: BTreeMap::new(),
            backends: BackendTable::default(),
            node_addresses: BTreeSet::new(),
            next_service_id: 0,
            next_backend_id: 0,
            node_ports_on_loopback: yes(),
            tally: Derived::default(),
        }
    }
}

impl Image {
    /// Makes the image's tally if it has none yet: a change reads it
    /// three times (the counts it starts from, the layers, the update),
    /// and each made it by walking every frontend.
    pub fn tally_up(&mut self) {
        if self.tally.tally.is_none() {
            self.tally.tally = Some(Box::new(self.tally_made()));
        }
    }

    /// How many entries the image occupies in each map: from its tally
    /// once it has one (a change made it), without walking the frontends.
    pub fn entry_counts(&self) -> EntryCounts {
        let made;
        let tally = match &self.tally.tally {
            Some(tally) => tally,
            None => {
                made = self.tally_made();
                &made
            }
        };
        EntryCounts {
            services: tally.services,
            backends: self.backends.len() as u64,
            membership: tally.membership,
            nodes: self.node_address_keys().len() as u64,
            external: tally.external,
            maglev: tally.maglev,
            source_ranges: tally.source_ranges,
        }
    }

    /// Hands every frontend its counter cells afresh, in frontend order:
    /// a state of a format without them (`state::complete_legacy`).
    pub fn hand_out_cells(&mut self) {
        let mut tally = Tally::default();
        for frontend in self.frontends.values_mut() {
            (frontend.cell, frontend.hit_cells) = tally.cells_for(None, &frontend.backends);
        }
        self.tally = Derived::default();
    }

    /// One past the highest counter cell of the stats and of the
    /// backend_hits map the image holds (or gave up in its change): the
    /// lengths the counter arrays need.
    pub fn cells_needed(&self) -> (u64, u64) {
        match &self.tally.tally {
            Some(tally) => tally.cells_needed(),
            None => self.tally_made().cells_needed(),
        }
    }

    /// The image's tally, made from its frontends (without the backends'
    /// index).
    fn tally_made(&self) -> Tally {
        let mut tally = Tally::of(self.frontends.iter());
        tally.external = self.external_index().count() as u64;
        tally
    }

    /// The part of this image that a change touched: its frontends among
    /// `frontends`, the backends they hold and those of `backends` it has,
    /// with its node addresses, id counters and settings. Two images that
    /// are the same but for those frontends (and the backends only they
    /// hold) compare as their parts do: the change's plan (`Plan::of_parts`),
    /// its record and its stale sockets look at the parts only.
    pub fn part<'a>(
        &self,
        frontends: &BTreeSet<Frontend>,
        backends: impl IntoIterator<Item = &'a BackendId>,
    ) -> Self {
        let mut part = self.settings();
        let mut ids: Vec<BackendId> = backends.into_iter().copied().collect();
        for frontend in frontends {
            if let Some(image) = self.frontends.get(frontend) {
                ids.extend(&image.backends);
                part.frontends.insert(*frontend, image.clone());
            }
        }
        // Put in id order at once: inserted one by one out of order, each
        // would move those after it.
        part.backends = ids.into_iter().filter_map(|id| Some((id, *self.backends.get(&id)?))).collect();
        part
    }

    /// This image without frontends or backends: its node addresses, id
    /// counters and settings.
    pub fn settings(&self) -> Self {
        Self {
            node_addresses: self.node_addresses.clone(),
            next_service_id: self.next_service_id,
            next_backend_id: self.next_backend_id,
            node_ports_on_loopback: self.node_ports_on_loopback,
            ..Self::default()
        }
    }

    /// The socket layers that hold frontends (`Plan::layers`).
    pub fn layers(&self) -> u32 {
        match &self.tally.tally {
            Some(tally) => tally.layers(),
            None => Tally::of(self.frontends.iter()).layers(),
        }
    }

    /// The keys of the nodes map: the node addresses, and
    /// `NodeAddressKey::IPV4_LOOPBACK` while node ports answer on loopback.
    pub fn node_address_keys(&self) -> BTreeSet<NodeAddressKey> {
        let addresses = self.node_addresses.iter().map(|&ip| NodeAddressKey { addr: addr_to_raw(ip) });
        addresses.chain(self.node_ports_on_loopback.then_some(NodeAddressKey::IPV4_LOOPBACK)).collect()
    }

    /// The requests-per-second limit of each limited frontend, by service id.
    pub fn rate_limits(&self) -> BTreeMap<ServiceId, u32> {
        self.frontends.values().filter_map(|f| Some((f.service_id, f.requests_per_second?))).collect()
    }

    /// This image changed: the frontends of `removed` taken out, `added`
    /// rules (with their owners) compiled in, and where node ports answer
    /// set (`node_addresses`, and IPv4 loopback or not).
    /// Frontends and backends that stay keep their ids, so does a frontend
    /// removed and added again; new ones continue the sequence. The work is
    /// proportional to the change, plus one pass over the backends.
    pub fn update<'a>(
        &self,
        removed: impl IntoIterator<Item = &'a Frontend>,
        added: impl IntoIterator<Item = (String, &'a FrontendRule)>,
        node_addresses: impl IntoIterator<Item = IpAddr>,
        node_ports_on_loopback: bool,
    ) -> Result<Self> {
        self.clone().updated(removed, added, node_addresses, node_ports_on_loopback)
    }

    /// `update`, of this image itself: a change that has its own copy of
    /// the image (`transaction`) does not copy it again.
    pub fn updated<'a>(
        self,
        removed: impl IntoIterator<Item = &'a Frontend>,
        added: impl IntoIterator<Item = (String, &'a FrontendRule)>,
        node_addresses: impl IntoIterator<Item = IpAddr>,
        node_ports_on_loopback: bool,
    ) -> Result<Self> {
        let mut image = self;
        // An image changed a second time in one process is kept (a watch):
        // index its backends, so that its changes need not walk them.
        let mut tally = match image.tally.tally.take() {
            Some(mut tally) if image.tally.changed => {
                let frontends = image.frontends.values();
                let backends = image.backends.iter().map(|(&id, backend)| (id, backend.to_raw()));
                tally.backends.get_or_insert_with(|| Backends::of(frontends, backends));
                *tally
            }
            Some(tally) => *tally,
            None => image.tally_made(),
        };
        tally.start_change();
        // Id 0 means "none" in the maps.
        image.next_service_id = image.next_service_id.max(1);
        image.next_backend_id = image.next_backend_id.max(1);
        // Frontends removed, which an added rule may take again: with their
        // service id and cells.
        let mut old_frontends: HashMap<Frontend, FrontendImage> = HashMap::default();
        // Backends whose last frontend left (with the backends' index; else
        // those of the frontends removed, which may have): they leave too,
        // unless an added frontend takes them again.
        let mut unused = Vec::new();
        let mut external_changed = false;
        for frontend in removed {
            if let Some(old) = image.frontends.remove(frontend) {
                if tally.backends.is_none() {
                    // Without the index, each of them may be the last user's.
                    unused.extend(&old.backends);
                }
                tally.remove(frontend, &old, |id| unused.push(id));
                external_changed |= frontend.scope == Scope::External;
                old_frontends.insert(*frontend, old);
            }
        }
        let added: Vec<(String, &FrontendRule)> = added.into_iter().collect();
        // Ids are never reused, so they only run out if a state file says
        // they are about to (a corrupt one): refuse rather than wrap to 0.
        let new_backends: usize = added.iter().map(|(_, rule)| rule.slots().count()).sum();
        if ServiceId::try_from(added.len()).ok().and_then(|n| image.next_service_id.checked_add(n)).is_none()
            || BackendId::try_from(new_backends)
                .ok()
                .and_then(|n| image.next_backend_id.checked_add(n))
                .is_none()
        {
            bail!(
                "the state's id counters are exhausted (next service id {}, next backend id {}): the state file is \
                 corrupt; `balctl unload --yes`, move the state dir away, then `balctl load` and sync again",
                image.next_service_id,
                image.next_backend_id
            );
        }
        // Without the backends' index, a lookup of these rules' backends.
        let mut lookup =
            if tally.backends.is_none() { image.backend_lookup(&added) } else { Lookup::default() };
        if image.backends.is_empty() {
            // A first sync: its backends at most, not twice as many by
            // growing, for a million of them.
            image.backends.reserve(new_backends);
        }
        for (owner, rule) in added {
            if let Some(existing) = image.frontends.get(&rule.frontend) {
                return Err(input!(
                    "frontend {} is claimed twice: by {} and by {owner}; \
                     a frontend can belong to one rule only",
                    rule.frontend,
                    existing.owner
                ));
            }
            // Every kind of rule passes here, and the master entry counts slots in a u16.
            let slots = rule.slots().count();
            if slots > usize::from(u16::MAX) {
                return Err(input!(
                    "{owner}: frontend {} has {slots} backend slots (a backend has as many as its weight); \
                     a frontend holds at most {}",
                    rule.frontend,
                    u16::MAX
                ));
            }
            let maglev_table_size = maglev_table_size(&owner, rule)?;
            let unhealthy = rule.standing() != Standing::Serving;
            let backends: Vec<BackendId> = rule
                .backend_addrs()
                .map(|addr| {
                    let new_id = || {
                        image.next_backend_id += 1;
                        image.next_backend_id - 1
                    };
                    match tally.backends.as_mut() {
                        Some(index) => {
                            let id = *index.ids.entry(addr.to_raw()).or_insert_with(new_id);
                            image.backends.insert(id, addr);
                            id
                        }
                        None => image.backends.id_of(&mut lookup, addr, new_id),
                    }
                })
                .collect();
            let old = old_frontends.get(&rule.frontend);
            let service_id = old.map_or_else(
                || {
                    image.next_service_id += 1;
                    image.next_service_id - 1
                },
                |old| old.service_id,
            );
            let (cell, hit_cells) = tally.cells_for(old, &backends);
            let frontend = FrontendImage {
                service_id,
                owner,
                backends,
                affinity_seconds: rule.affinity_seconds,
                local_only: rule.local_only,
                requests_per_second: rule.requests_per_second,
                address_kind: rule.address_kind,
                maglev_table_size,
                source_ranges: rule.external.source_ranges.clone(),
                cell,
                hit_cells,
                unhealthy,
                least_connections: rule.least_connections && rule.frontend.scope != Scope::External,
            };
            tally.add(&rule.frontend, &frontend);
            external_changed |= rule.frontend.scope == Scope::External;
            image.frontends.insert(rule.frontend, frontend);
        }
        match tally.backends.as_mut() {
            Some(backends) => {
                for id in unused {
                    if !backends.used(id)
                        && let Some(backend) = image.backends.remove(&id)
                    {
                        backends.ids.remove(&backend.to_raw());
                    }
                }
            }
            None => image.drop_unused_backends(unused),
        }
        let node_addresses: BTreeSet<IpAddr> =
            node_addresses.into_iter().map(|ip| ip.to_canonical()).collect();
        if node_addresses != image.node_addresses || external_changed {
            image.node_addresses = node_addresses;
            tally.external = image.external_index().count() as u64;
        }
        image.node_ports_on_loopback = node_ports_on_loopback;
        image.tally = Derived { tally: Some(Box::new(tally)), changed: true };
        Ok(image)
    }

    /// `updated` by a change of frontends only (its node addresses and
    /// settings stay), with the parts of the image before and after it
    /// that it touched: the frontends of `touched` (those of `removed` and
    /// `added`) and their backends. Whatever the two images hold but the
    /// parts is the same in both, so a plan between the parts
    /// (`Plan::of_parts`) makes the same writes as one between the whole
    /// images, and nothing walks them whole.
    pub fn updated_in_part<'a>(
        self,
        touched: &BTreeSet<Frontend>,
        removed: impl IntoIterator<Item = &'a Frontend>,
        added: impl IntoIterator<Item = (String, &'a FrontendRule)>,
    ) -> Result<(Self, Parts)> {
        let (layers, next_backend_id) = (self.layers(), self.next_backend_id);
        let mut before = self.part(touched, []);
        let (node_addresses, loopback) = (self.node_addresses.clone(), self.node_ports_on_loopback);
        let image = self.updated(removed, added, node_addresses, loopback)?;
        // Backends the touched frontends hold now that were there before
        // (an id is never given twice): the plan must not add them again.
        let kept = (touched.iter().filter_map(|frontend| image.frontends.get(frontend)))
            .flat_map(|frontend| frontend.backends.iter())
            .filter(|&&id| id < next_backend_id);
        before.backends.extend(kept.filter_map(|id| Some((*id, *image.backends.get(id)?))));
        let after = image.part(touched, before.backends.keys());
        let layers = (layers, image.layers());
        Ok((image, Parts { before, after, layers }))
    }

    /// A lookup of the ids that `rules`' backends have in this image,
    /// with room for all of them, for an image without the backends'
    /// index (`tally.rs`). Only the smaller side is indexed: a small
    /// change to a big image looks its few backends up in one pass, and a
    /// first sync of a million backends does not index them twice.
    fn backend_lookup(&self, rules: &[(String, &FrontendRule)]) -> Lookup {
        let wanted_count: usize = rules.iter().map(|(_, rule)| rule.slots().count()).sum();
        if self.backends.len() <= wanted_count {
            self.backends.lookup(None, wanted_count)
        } else {
            let wanted: HashSet<Backend> =
                rules.iter().flat_map(|(_, rule)| rule.backend_addrs()).map(BackendAddr::to_raw).collect();
            self.backends.lookup(Some(&wanted), wanted_count)
        }
    }

    /// Drops those of `candidates` that no frontend holds any more, for an
    /// image without the backends' index: the backends of the frontends a
    /// change removed, the only ones that can have lost their last user
    /// (every image holds only backends in use). One walk of the
    /// frontends' backends, looked up among the few candidates: sorting
    /// every backend in use was a twentieth of a one-endpoint change.
    fn drop_unused_backends(&mut self, mut candidates: Vec<BackendId>) {
        candidates.sort_unstable();
        candidates.dedup();
        let mut used = vec![false; candidates.len()];
        let mut unknown = candidates.len();
        for id in self.frontends.values().flat_map(|frontend| &frontend.backends) {
            if unknown == 0 {
                break;
            }
            if let Ok(at) = candidates.binary_search(id)
                && !used[at]
            {
                used[at] = true;
                unknown -= 1;
            }
        }
        for (id, _) in candidates.iter().zip(used).filter(|(_, used)| !used) {
            self.backends.remove(id);
        }
    }

    /// Compiles `rules` from scratch, continuing `previous`'s ids.
    #[cfg(test)]
    pub fn compile<'a>(
        rules: impl IntoIterator<Item = (String, &'a FrontendRule)>,
        node_addresses: impl IntoIterator<Item = IpAddr>,
        previous: &'a Self,
    ) -> Result<Self> {
        previous.update(previous.frontends.keys(), rules, node_addresses, previous.node_ports_on_loopback)
    }
}

/// The size of the Maglev table `rule` gets (`FrontendImage::
/// maglev_table_size`): its configured size, else the default for its
/// backends; 0 without a table.
fn maglev_table_size(owner: &str, rule: &FrontendRule) -> Result<u32> {
    let backends = rule.serving().count();
    if rule.frontend.scope != Scope::External
        || rule.external.algorithm != LbAlgorithm::Maglev
        || backends == 0
    {
        return Ok(0);
    }
    let size = rule.external.maglev_table_size.or_else(|| maglev::default_table_size(backends));
    match size {
        Some(size) if size as usize >= backends => Ok(size),
        _ => Err(input!(
            "{owner}: frontend {} has {backends} backends, more than its Maglev table of {} entries \
             can hold (at most {} entries); set a larger prime table size, or lb-algorithm random",
            rule.frontend,
            size.unwrap_or(maglev::MAX_TABLE_SIZE),
            maglev::MAX_TABLE_SIZE
        )),
    }
}

impl FrontendRule {
    /// The slots (`slots`: the backends that take connections, each as
    /// often as its weight), as the image holds them.
    fn backend_addrs(&self) -> impl Iterator<Item = BackendAddr> + '_ {
        self.slots().map(|&address| BackendAddr {
            address,
            protocol: self.frontend.protocol,
            local: self.is_local(&address),
        })
    }
}

/// Serialises a map with non-string keys as a list of `[key, value]` pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D, K, V>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{draws::Draws, plan::Plan};

    fn policy(name: &str, frontend: &str, backends: &[&str]) -> (String, FrontendRule) {
        (format!("policy/{name}"), FrontendRule::plain(frontend, backends))
    }

    fn compile(rules: &[(String, FrontendRule)], previous: &Image) -> Result<Image> {
        Image::compile(rules.iter().map(|(owner, rule)| (owner.clone(), rule)), [], previous)
    }

    #[test]
    fn ids_are_kept_for_what_stays_and_never_reused() {
        let v1 =
            compile(&[policy("a", "198.18.0.1:80", &["192.0.2.1:80", "192.0.2.2:80"])], &Image::default())
                .unwrap();
        let a = &v1.frontends[&"198.18.0.1:80".parse().unwrap()];
        assert_eq!((a.service_id, a.backends.as_slice()), (1, &[1, 2][..]));

        let v2 = compile(
            &[
                policy("a", "198.18.0.1:80", &["192.0.2.2:80", "192.0.2.3:80"]),
                policy("b", "198.18.0.2:80", &["192.0.2.2:80"]),
            ],
            &v1,
        )
        .unwrap();
        let a = &v2.frontends[&"198.18.0.1:80".parse().unwrap()];
        let b = &v2.frontends[&"198.18.0.2:80".parse().unwrap()];
        assert_eq!((a.service_id, a.backends.as_slice()), (1, &[2, 3][..]));
        // Backends are shared by address; the removed one is gone for good.
        assert_eq!((b.service_id, b.backends.as_slice()), (2, &[2][..]));
        assert_eq!(v2.backends.keys().copied().collect::<Vec<_>>(), [2, 3]);

        let v3 = compile(&[policy("a", "198.18.0.1:80", &["192.0.2.1:80"])], &v2).unwrap();
        assert_eq!(v3.frontends[&"198.18.0.1:80".parse().unwrap()].backends, [4]);
        assert_eq!(
            v3.entry_counts(),
            EntryCounts {
                services: 2,
                backends: 1,
                membership: 1,
                // The loopback key: node ports answer on loopback by default.
                nodes: 1,
                external: 0,
                maglev: 0,
                source_ranges: 0
            }
        );
    }

    #[test]
    fn a_frontend_holds_at_most_u16_max_backends() {
        let mut rule = policy("big", "198.18.0.1:80", &[]).1;
        // 65,536 distinct backends: two hosts, every port.
        rule.backends = [[192, 0, 2, 1], [192, 0, 2, 2]]
            .into_iter()
            .flat_map(|ip| (1..=u16::MAX).map(move |port| std::net::SocketAddr::from((ip, port))))
            .take(usize::from(u16::MAX) + 1)
            .collect();
        let err = Image::compile([("policy/big".to_owned(), &rule)], [], &Image::default()).unwrap_err();
        assert!(err.to_string().contains("at most 65535"), "{err}");
        rule.backends.pop();
        assert!(Image::compile([("policy/big".to_owned(), &rule)], [], &Image::default()).is_ok());
    }

    /// A corrupt state (ids past the counters, counters at their end) is
    /// refused or updated, never a panic or an allocation sized by an id.
    #[test]
    fn corrupt_id_counters_do_not_panic() {
        let rules = [policy("a", "198.18.0.1:80", &["192.0.2.1:80"])];
        let mut corrupt = compile(&rules, &Image::default()).unwrap();
        corrupt.next_backend_id = 1;
        let kept = corrupt.update([], [], [], true).unwrap();
        assert_eq!(kept.backends.keys().copied().collect::<Vec<_>>(), [1]);
        corrupt.next_backend_id = BackendId::MAX;
        let err = compile(&[policy("b", "198.18.0.2:80", &["192.0.2.2:80"])], &corrupt).unwrap_err();
        assert!(err.to_string().contains("exhausted"), "{err}");
    }

    /// Where a backend runs is part of it: the backends map says so, and
    /// an endpoint that moves to this node is a new backend.
    #[test]
    fn a_local_backend_is_flagged_and_moving_makes_a_new_one() {
        let (owner, mut rule) = policy("a", "198.18.0.1:80", &["192.0.2.1:80", "192.0.2.2:80"]);
        let v1 = Image::compile([(owner.clone(), &rule)], [], &Image::default()).unwrap();
        rule.local_backends = vec![rule.backends[1]];
        let v2 = Image::compile([(owner, &rule)], [], &v1).unwrap();
        let frontend = &v2.frontends[&rule.frontend];
        assert_eq!(frontend.backends, [1, 3]);
        assert!(!v2.backends[&1].local && v2.backends[&3].local);
        assert_eq!((v2.backends[&1].to_raw().flags, v2.backends[&3].to_raw().flags), (0, BACKEND_FLAG_LOCAL));
        let slots: Vec<u8> = frontend.slots(&v2.backends).map(|(_, entry)| entry.backend.flags).collect();
        assert_eq!(slots, [0, BACKEND_FLAG_LOCAL]);
    }

    #[test]
    fn protocols_make_distinct_backends() {
        let image = compile(
            &[
                policy("dns-udp", "198.18.0.53:53/udp", &["192.0.2.1:53"]),
                policy("dns-tcp", "198.18.0.53:53/tcp", &["192.0.2.1:53"]),
            ],
            &Image::default(),
        )
        .unwrap();
        assert_eq!(image.backends.len(), 2);
    }

    #[test]
    fn one_frontend_one_rule() {
        let err = compile(
            &[
                policy("a", "198.18.0.1:80", &["192.0.2.1:80"]),
                policy("b", "198.18.0.1:80", &["192.0.2.2:80"]),
            ],
            &Image::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("policy/a and by policy/b"), "{err}");
    }

    #[test]
    fn images_round_trip_through_the_state_encoding() {
        let image =
            compile(&[policy("a", "[2001:db8::10]:80", &["[2001:db8::2]:80"])], &Image::default()).unwrap();
        let bytes = postcard::to_stdvec(&image).unwrap();
        assert_eq!(postcard::from_bytes::<Image>(&bytes).unwrap(), image);
    }

    /// What a change's tally says (`tally.rs`) is what walking the
    /// frontends says, a backend leaves with its last frontend, and a
    /// change of frontends planned from its parts makes the writes a plan
    /// between the whole images makes.
    #[test]
    fn a_changed_image_counts_what_walking_it_counts() {
        let mut draws = Draws(0x1234_5678_9abc_def1);
        let mut below = |n: u64| draws.below(n);
        let mut image = Image::default();
        for _ in 0..300 {
            let removed: Vec<Frontend> = image.frontends.keys().filter(|_| below(4) == 0).copied().collect();
            let rules: Vec<(String, FrontendRule)> = (0..below(4))
                .map(|i| {
                    let frontend = format!("198.18.0.{}:{}", below(30) + 1, 80 + i);
                    let backends: Vec<String> =
                        (0..below(4)).map(|_| format!("192.0.2.{}:80", below(12) + 1)).collect();
                    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
                    policy(&format!("p{i}"), &frontend, &backends)
                })
                .filter(|(_, rule)| {
                    !image.frontends.contains_key(&rule.frontend) || removed.contains(&rule.frontend)
                })
                .collect();
            let mut unique = BTreeSet::new();
            let rules: Vec<_> = rules.into_iter().filter(|(_, rule)| unique.insert(rule.frontend)).collect();
            if below(3) == 0 {
                // A change of node addresses or of loopback: the whole image.
                let node = format!("192.0.2.{}", 100 + below(2));
                let (removed, rules) = (removed.iter(), rules.iter().map(|(o, r)| (o.clone(), r)));
                image = image.updated(removed, rules, [node.parse().unwrap()], below(2) == 0).unwrap();
            } else {
                // A change of frontends only: planned from its parts, as
                // from the whole images.
                let touched: BTreeSet<Frontend> =
                    removed.iter().copied().chain(rules.iter().map(|(_, rule)| rule.frontend)).collect();
                let before = image.clone();
                let (after, parts) = image
                    .updated_in_part(&touched, &removed, rules.iter().map(|(o, r)| (o.clone(), r)))
                    .unwrap();
                // The same change to the image as read from the state (no
                // tally yet: made from scratch) gives the same image.
                let stored: Image = postcard::from_bytes(&postcard::to_stdvec(&before).unwrap()).unwrap();
                let rules_again = rules.iter().map(|(o, r)| (o.clone(), r));
                let loopback = stored.node_ports_on_loopback;
                let addresses = stored.node_addresses.clone();
                // Tallied first, as a change does: the same counts, and
                // the same image with the same counts after.
                let mut tallied: Image =
                    postcard::from_bytes(&postcard::to_stdvec(&before).unwrap()).unwrap();
                tallied.tally_up();
                assert_eq!(tallied.entry_counts(), before.entry_counts());
                let tallied =
                    tallied.updated(&removed, rules_again.clone(), addresses.clone(), loopback).unwrap();
                assert_eq!((&tallied, tallied.entry_counts()), (&after, after.entry_counts()));
                assert_eq!(stored.updated(&removed, rules_again, addresses, loopback).unwrap(), after);
                let whole = Plan::between(&before, &after);
                let part = Plan::of_parts(&parts.before, &parts.after, parts.layers);
                let ops = |plan: &Plan| plan.steps().map(|step| (step.op, step.undo)).collect::<Vec<_>>();
                assert_eq!(ops(&part), ops(&whole));
                assert_eq!((part.summary, part.layers()), (whole.summary, whole.layers()));
                assert_eq!(
                    part.peak_entries(before.entry_counts()),
                    whole.peak_entries(before.entry_counts())
                );
                image = after;
            }
            let stored: Image = postcard::from_bytes(&postcard::to_stdvec(&image).unwrap()).unwrap();
            assert_eq!(image.entry_counts(), stored.entry_counts());
            assert_eq!(image.layers(), stored.layers());
            let used: BTreeSet<BackendId> =
                image.frontends.values().flat_map(|f| f.backends.clone()).collect();
            assert_eq!(image.backends.keys().copied().collect::<BTreeSet<_>>(), used);
        }
    }
}
