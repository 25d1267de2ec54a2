//! Typed access to the pinned maps: read what the balancing maps hold,
//! write them one entry at a time, and check that writes fit. What to write
//! and in which order (and how to undo it) is the plan's business.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{
    Array, HashMap, IterableMap as _, MapData,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use balctl_common::{
    Addr, AffinityKey, AffinityValue, Backend, Cell, ExternalKey, LAYERS_KNOWN, MaglevChunk, MaglevKey,
    MembershipKey, NodeAddressKey, RateLimit, ServiceEntry, ServiceKey, SourceRange, map_names,
};

use super::{
    batch,
    counters::{Cells, CounterMaps},
    object::MAPS,
    pins::{PinDir, ignore_missing, open_map},
};
use crate::input;

/// The id of a frontend in the maps (its entries' `service_id`, the key of
/// its counters and rate limit). The image hands ids out; 0 means none.
pub type ServiceId = u32;
/// The id of a backend in the maps (the backends map's key).
pub type BackendId = u32;
/// A key of the source_ranges LPM trie: its prefix length (in bits of the
/// data) and its data.
pub type SourceRangeKey = (u32, SourceRange);

/// How many entries the balancing maps hold, or can hold, each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryCounts {
    pub services: u64,
    pub backends: u64,
    pub membership: u64,
    pub nodes: u64,
    pub external: u64,
    pub maglev: u64,
    pub source_ranges: u64,
}

impl EntryCounts {
    /// Both counts, map by map.
    pub fn plus(self, other: Self) -> Self {
        Self {
            services: self.services + other.services,
            backends: self.backends + other.backends,
            membership: self.membership + other.membership,
            nodes: self.nodes + other.nodes,
            external: self.external + other.external,
            maglev: self.maglev + other.maglev,
            source_ranges: self.source_ranges + other.source_ranges,
        }
    }
}

/// Everything the balancing maps hold (or should hold), entry by entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    pub services: BTreeMap<ServiceKey, ServiceEntry>,
    pub backends: BTreeMap<BackendId, Backend>,
    pub membership: BTreeMap<MembershipKey, Cell>,
    pub node_addresses: BTreeSet<NodeAddressKey>,
    /// The external index: what packets from outside are addressed to,
    /// and the address of the external frontend's master that serves it.
    pub external: BTreeMap<ExternalKey, Addr>,
    /// The external frontends' Maglev tables, in chunks of backend ids.
    pub maglev: BTreeMap<MaglevKey, MaglevChunk>,
    /// The source prefixes of external frontends with source ranges.
    pub source_ranges: BTreeSet<SourceRangeKey>,
}

impl MapContents {
    pub fn entry_counts(&self) -> EntryCounts {
        EntryCounts {
            services: self.services.len() as u64,
            backends: self.backends.len() as u64,
            membership: self.membership.len() as u64,
            nodes: self.node_addresses.len() as u64,
            external: self.external.len() as u64,
            maglev: self.maglev.len() as u64,
            source_ranges: self.source_ranges.len() as u64,
        }
    }
}

/// One write to a balancing map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(BackendId, Backend),
    DeleteBackend(BackendId),
    PutMembership(MembershipKey, Cell),
    DeleteMembership(MembershipKey),
    PutService(ServiceKey, ServiceEntry),
    DeleteService(ServiceKey),
    PutNodeAddress(NodeAddressKey),
    DeleteNodeAddress(NodeAddressKey),
    PutExternal(ExternalKey, Addr),
    DeleteExternal(ExternalKey),
    PutMaglev(MaglevKey, MaglevChunk),
    DeleteMaglev(MaglevKey),
    PutSourceRange(SourceRangeKey),
    DeleteSourceRange(SourceRangeKey),
}

pub struct Datapath {
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    backends: HashMap<MapData, BackendId, Backend>,
    membership: HashMap<MapData, MembershipKey, Cell>,
    nodes: HashMap<MapData, NodeAddressKey, u32>,
    external: HashMap<MapData, ExternalKey, Addr>,
    maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    source_ranges: LpmTrie<MapData, SourceRange, u8>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    rate_limits: HashMap<MapData, ServiceId, RateLimit>,
    rate_limit_capacity: u32,
    layers: Array<MapData, u32>,
    counters: CounterMaps,
    capacity: EntryCounts,
    /// The lengths of the counter arrays (stats, backend_hits).
    cell_capacity: (u64, u64),
}

impl Datapath {
    pub fn open(pins: &PinDir) -> Result<Self> {
        let services = open_map(pins, map_names::SERVICES)?;
        let backends = open_map(pins, map_names::BACKENDS)?;
        let membership = open_map(pins, map_names::MEMBERSHIP)?;
        let nodes = open_map(pins, map_names::NODES)?;
        let external = open_map(pins, map_names::EXTERNAL)?;
        let maglev = open_map(pins, map_names::MAGLEV)?;
        let source_ranges = open_map(pins, map_names::SOURCE_RANGES)?;
        let affinity = open_map(pins, map_names::AFFINITY)?;
        let rate_limits = open_map(pins, map_names::RATE_LIMITS)?;
        let layers = open_map(pins, map_names::LAYERS)?;
        let counters = CounterMaps::open(pins)?;
        let capacity = |name: &str| -> Result<u64> {
            let info = aya::maps::MapInfo::from_pin(pins.map(name)?)?;
            Ok(u64::from(info.max_entries()))
        };
        Ok(Self {
            services,
            backends,
            membership,
            nodes,
            external,
            maglev,
            source_ranges,
            affinity,
            rate_limits,
            layers,
            rate_limit_capacity: aya::maps::MapInfo::from_pin(pins.map(map_names::RATE_LIMITS)?)?
                .max_entries(),
            counters,
            cell_capacity: (capacity(map_names::STATS)?, capacity(map_names::BACKEND_HITS)?),
            capacity: EntryCounts {
                services: capacity(map_names::SERVICES)?,
                backends: capacity(map_names::BACKENDS)?,
                membership: capacity(map_names::MEMBERSHIP)?,
                nodes: capacity(map_names::NODES)?,
                external: capacity(map_names::EXTERNAL)?,
                maglev: capacity(map_names::MAGLEV)?,
                source_ranges: capacity(map_names::SOURCE_RANGES)?,
            },
        })
    }

    pub fn read_contents(&self) -> Result<MapContents> {
        Ok(MapContents {
            services: read_all(&self.services)?,
            backends: read_all(&self.backends)?,
            membership: read_all(&self.membership)?,
            node_addresses: read_all(&self.nodes)?.into_keys().collect(),
            external: read_all(&self.external)?,
            maglev: read_all(&self.maglev)?,
            source_ranges: (self.source_ranges.iter())
                .map(|entry| entry.map(|(key, _)| (key.prefix_len(), key.data())))
                .collect::<Result<_, _>>()
                .context("cannot read the source_ranges map")?,
        })
    }

    /// The requests-per-second limit of each limited frontend, by service id.
    pub fn rate_limits(&self) -> Result<BTreeMap<ServiceId, u32>> {
        let limits: BTreeMap<ServiceId, RateLimit> = read_all(&self.rate_limits)?;
        Ok(limits.into_iter().map(|(service_id, limit)| (service_id, limit.per_second)).collect())
    }

    /// Makes the rate_limits map hold exactly `limits` (by service id),
    /// before a plan sets the flag that makes the datapath read them. A
    /// limit that stays keeps its count for the current second.
    pub fn write_rate_limits(&mut self, limits: &BTreeMap<ServiceId, u32>) -> Result<()> {
        let capacity = self.rate_limit_capacity;
        if limits.len() > capacity as usize {
            return Err(input!(
                "the rate_limits map would need {} entries but holds {capacity}; nothing was changed. \
                 Maps keep their size while loaded: `balctl unload --yes` then \
                 `balctl load --map-size rate_limits={}` recreates them larger \
                 (load restores every applied rule)",
                limits.len(),
                limits.len().next_power_of_two()
            ));
        }
        let current: BTreeMap<ServiceId, RateLimit> = read_all(&self.rate_limits)?;
        for (&service_id, &per_second) in limits {
            if current.get(&service_id).is_none_or(|limit| limit.per_second != per_second) {
                let limit = RateLimit { per_second, ..RateLimit::default() };
                self.rate_limits.insert(service_id, limit, 0).context("cannot write a rate limit")?;
            }
        }
        for service_id in current.keys().filter(|id| !limits.contains_key(id)) {
            ignore_missing(self.rate_limits.remove(service_id)).context("cannot remove a rate limit")?;
        }
        Ok(())
    }

    /// Refuses writes that would need more than `needed` entries in any
    /// map at some point, before anything is written.
    pub fn check_room(&self, needed: EntryCounts) -> Result<()> {
        check_fits(needed, self.capacity)
    }

    /// Refuses an image whose counter cells (`needed`: one past the
    /// highest of the stats and of the backend_hits cells) do not fit in
    /// the counter arrays, before anything is written.
    pub fn check_cells(&self, needed: (u64, u64)) -> Result<()> {
        let arrays =
            [("stats", needed.0, self.cell_capacity.0), ("backend_hits", needed.1, self.cell_capacity.1)];
        for (map, needed, capacity) in arrays {
            if needed > capacity {
                return Err(too_small(map, "services", needed, capacity, "counter cells"));
            }
        }
        Ok(())
    }

    /// What the layers map says: `LAYERS_KNOWN` and the bits of the
    /// layers that may hold frontends, or 0 (a map just created: every
    /// layer is looked up).
    pub fn layers(&self) -> Result<u32> {
        self.layers.get(&0, 0).context("cannot read the layers map")
    }

    /// Marks which layers may hold frontends (`balctl_common::layer_bit`
    /// of each scope): the datapath skips the others.
    pub fn write_layers(&mut self, layers: u32) -> Result<()> {
        self.layers.set(0, LAYERS_KNOWN | layers, 0).context("cannot write the layers map")
    }

    /// One write; deleting what is already gone is done.
    pub fn write(&mut self, op: &Op) -> Result<()> {
        let result = match op {
            Op::PutBackend(id, backend) => self.backends.insert(id, backend, 0),
            Op::DeleteBackend(id) => ignore_missing(self.backends.remove(id)),
            Op::PutMembership(key, cell) => self.membership.insert(key, cell, 0),
            Op::DeleteMembership(key) => ignore_missing(self.membership.remove(key)),
            Op::PutService(key, entry) => self.services.insert(key, entry, 0),
            Op::DeleteService(key) => ignore_missing(self.services.remove(key)),
            Op::PutNodeAddress(key) => self.nodes.insert(key, 0, 0),
            Op::DeleteNodeAddress(key) => ignore_missing(self.nodes.remove(key)),
            Op::PutExternal(key, master) => self.external.insert(key, master, 0),
            Op::DeleteExternal(key) => ignore_missing(self.external.remove(key)),
            Op::PutMaglev(key, chunk) => self.maglev.insert(key, chunk, 0),
            Op::DeleteMaglev(key) => ignore_missing(self.maglev.remove(key)),
            Op::PutSourceRange((len, data)) => self.source_ranges.insert(&LpmKey::new(*len, *data), 1, 0),
            Op::DeleteSourceRange((len, data)) => {
                ignore_missing(self.source_ranges.remove(&LpmKey::new(*len, *data)))
            }
        };
        result.map_err(|e| anyhow!(e).context(format!("{op:?}")))
    }

    /// Writes `ops`, all of one kind (`Op::same_kind`), in order, many per
    /// bpf() call (the source_ranges trie, which has no batch writes, one
    /// per call). If one fails: how many were written before it (all of
    /// them), and why. Deleting what is already gone is done.
    pub fn write_run(&mut self, ops: &[&Op]) -> Result<(), (usize, anyhow::Error)> {
        let Some(first) = ops.first() else { return Ok(()) };
        // The entries of the run, all of `$variant`, as `$entry` makes them.
        macro_rules! run {
            ($variant:ident($($field:ident),+) => $entry:expr) => {
                &of_run(ops, |op| match op {
                    Op::$variant($($field),+) => Some($entry),
                    _ => None,
                })
            };
        }
        let result = match first {
            Op::PutBackend(..) => batch::put(self.backends.map(), run!(PutBackend(id, b) => (*id, *b))),
            Op::DeleteBackend(_) => batch::delete(self.backends.map(), run!(DeleteBackend(id) => *id)),
            Op::PutMembership(..) => batch::put(self.membership.map(), run!(PutMembership(k, c) => (*k, *c))),
            Op::DeleteMembership(_) => batch::delete(self.membership.map(), run!(DeleteMembership(k) => *k)),
            Op::PutService(..) => batch::put(self.services.map(), run!(PutService(k, entry) => (*k, *entry))),
            Op::DeleteService(_) => batch::delete(self.services.map(), run!(DeleteService(k) => *k)),
            Op::PutNodeAddress(_) => batch::put(self.nodes.map(), run!(PutNodeAddress(k) => (*k, 0_u32))),
            Op::DeleteNodeAddress(_) => batch::delete(self.nodes.map(), run!(DeleteNodeAddress(k) => *k)),
            Op::PutExternal(..) => {
                batch::put(self.external.map(), run!(PutExternal(k, master) => (*k, *master)))
            }
            Op::DeleteExternal(_) => batch::delete(self.external.map(), run!(DeleteExternal(k) => *k)),
            Op::PutMaglev(..) => batch::put(self.maglev.map(), run!(PutMaglev(k, chunk) => (*k, *chunk))),
            Op::DeleteMaglev(_) => batch::delete(self.maglev.map(), run!(DeleteMaglev(k) => *k)),
            Op::PutSourceRange(_) | Op::DeleteSourceRange(_) => {
                for (done, op) in ops.iter().enumerate() {
                    self.write(op).map_err(|err| (done, err))?;
                }
                return Ok(());
            }
        };
        result.map_err(|(done, err)| (done, anyhow!(err).context(format!("{:?}", ops[done]))))
    }

    /// Drops the sticky choices (affinity) that point at backends which
    /// left their service (`left`).
    pub fn forget_sticky(&mut self, left: &HashSet<MembershipKey>) -> Result<()> {
        let stale: Vec<AffinityKey> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, choice)| {
                left.contains(&MembershipKey { service_id: key.service_id, backend_id: choice.backend_id })
            })
            .map(|(key, _)| key)
            .collect();
        for key in stale {
            ignore_missing(self.affinity.remove(&key))?;
        }
        Ok(())
    }

    /// Zeroes the counter cells of frontends and memberships that are
    /// gone (or were never applied), for their next owners.
    pub fn zero_counters(&mut self, cells: &Cells) -> Result<()> {
        self.counters.zero(cells)
    }
}

/// The entries of a run of writes of one kind, as `entry` reads each.
fn of_run<T>(ops: &[&Op], entry: impl Fn(&Op) -> Option<T>) -> Vec<T> {
    ops.iter().map(|op| entry(op).expect("a run holds writes of one kind")).collect()
}

impl Op {
    /// Whether `self` and `other` write the same map the same way (both
    /// puts, or both deletes): a run of them is one batch.
    pub fn same_kind(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Fails, naming the map and the option that fixes it, if `needed` entries
/// do not fit.
pub fn check_fits(needed: EntryCounts, capacity: EntryCounts) -> Result<()> {
    let checks = [
        ("services", "services", needed.services, capacity.services),
        ("backends", "backends", needed.backends, capacity.backends),
        ("membership", "services", needed.membership, capacity.membership),
        ("nodes", "nodes", needed.nodes, capacity.nodes),
        ("external", "external", needed.external, capacity.external),
        ("maglev", "maglev", needed.maglev, capacity.maglev),
        ("source_ranges", "source_ranges", needed.source_ranges, capacity.source_ranges),
    ];
    for (map, size_name, needed, capacity) in checks {
        if needed > capacity {
            return Err(too_small(map, size_name, needed, capacity, "entries"));
        }
    }
    Ok(())
}

/// The input error of a change that needs `needed` `units` of `map`,
/// which holds `capacity`, naming the `--map-size` option that makes room.
fn too_small(map: &str, size_name: &str, needed: u64, capacity: u64, units: &str) -> anyhow::Error {
    input!(
        "the {map} map would need {needed} {units} but holds {capacity}; nothing was changed. \
         Maps keep their size while loaded: `balctl unload --yes` then \
         `balctl load --map-size {size_name}={}` recreates them larger \
         (load restores every applied rule)",
        needed.next_power_of_two()
    )
}

/// Everything in a hash map. (aya's iterator skips entries that vanish
/// while it runs, such as LRU evictions.)
pub fn read_all<K: aya::Pod + Ord, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> Result<BTreeMap<K, V>> {
    let mut entries = BTreeMap::new();
    batch::for_each_typed(map.map(), |key, value| {
        entries.insert(key, value);
    })?;
    Ok(entries)
}

/// Checks a pinned map's kernel layout against what this build expects.
pub fn check_layout(pins: &PinDir, requested_capacity: impl Fn(&str) -> Option<u32>) -> Result<()> {
    for spec in MAPS {
        let path = pins.map(spec.name)?;
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("cannot inspect {}", path.display()))?;
        let found = (info.map_flags(), info.key_size(), info.value_size());
        let expected = (spec.map_flags, spec.key_size, spec.value_size);
        let type_matches = info.map_type().is_ok_and(|t| t as u32 == spec.map_type as u32);
        if !type_matches || found != expected {
            bail!(
                "the map pinned at {} was made by another balctl version (key {} bytes, value {} bytes, \
                 flags {:#x}; this build needs key {} bytes, value {} bytes, flags {:#x}) and cannot be reused. \
                 `balctl unload --yes` removes the old datapath, then `balctl load` creates it anew",
                path.display(),
                found.1,
                found.2,
                found.0,
                expected.1,
                expected.2,
                expected.0,
            );
        }
        if let Some(size_name) = spec.size_name
            && let Some(requested) = requested_capacity(size_name)
            && spec.max_entries_for(requested) != info.max_entries()
        {
            return Err(input!(
                "--map-size {}={requested}: the pinned {} map holds {} entries and cannot be resized while loaded; \
                 `balctl unload --yes` then `balctl load --map-size {}={requested}` recreates it \
                 (load restores every applied rule)",
                size_name,
                spec.name,
                spec.capacity_of(info.max_entries()),
                size_name,
            ));
        }
    }
    Ok(())
}
