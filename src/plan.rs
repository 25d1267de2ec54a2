//! Turns "what the maps hold" and "what they should hold" into an ordered
//! sequence of map writes, each with the write that undoes it.
//!
//! The order is what keeps every connection working during an update (the
//! scheme of Cilium's master entry + slots):
//!
//! 1. new backends, then new memberships: nothing refers to them yet;
//! 2. masters whose count shrinks: readers stop picking the doomed slots;
//! 3. masters of removed frontends, then slots nobody can pick any more;
//! 4. new and rewritten slots, then the masters that grow or change: a
//!    reader that sees a count finds every slot up to it written;
//!    (Maglev table entries go with the slots: rewritten and added
//!    entries with the new slots, removed ones with the removed slots, so
//!    a table entry only ever names a backend in the backends map, and a
//!    master that grows its table finds the new entries written. A table
//!    that shrinks while the slots grow, which only a smaller configured
//!    size does, misses its last entries until the master is written: the
//!    datapath falls back to a random slot for those. New source ranges
//!    go with the slots too, before a master that takes the flag saying
//!    it has some; removed ones go with the memberships, after a master
//!    that drops the flag: a frontend with the flag always finds its
//!    ranges, and while ranges change, the new ones admit before the old
//!    ones stop.)
//! 5. memberships of removed backends, then the backends. (Sticky choices
//!    of those memberships are dropped by `Plan::apply` afterwards.)
//!
//! Node addresses only widen where NodePort frontends answer; new ones go
//! first and removed ones last, with the backends.
//!
//! The external index (which external frontend's master serves a packet
//! from outside, `image/external.rs`) follows the masters it names, so
//! that an entry never names a master not written yet, nor one that is
//! gone: removed entries, and entries naming a master the maps held
//! before the plan, are written before masters are deleted (3); entries
//! naming a new master, after the masters are written (4). An entry that
//! moves from a master that goes to one that comes (a LoadBalancer IP
//! frontend at a node address replacing the node port there) is removed
//! in the first and written anew in the second: in between, its packets
//! pass untranslated, as they would find neither master. A node address
//! that comes or goes changes only the index (and the nodes map).
//!
//! Deleting before adding also keeps the peak fill of the services map at
//! max(before, after), which is what the capacity check assumes.
//!
//! A plan is never stored as a list: a full sync of 100,000 services writes
//! millions of entries, and their steps would be most of the process's
//! memory. A plan borrows its two sides and generates the steps again on
//! each walk, phase by phase, each phase a merge walk over both sides. The
//! sides are borrowed immutably, so every walk yields the same steps.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    fmt, iter,
};

use balctl_common::{
    Addr, Backend, Cell, ExternalKey, MaglevChunk, MaglevKey, MembershipKey, NodeAddressKey, ServiceEntry,
    ServiceKey, layer_bit,
};

use crate::{
    bpf::maps::{BackendId, EntryCounts, MapContents, Op, SourceRangeKey},
    image::{
        BackendTable, FrontendImage, Image, external,
        raw::{frontend_of, service_key},
    },
    model::{Frontend, Scope},
};

pub mod apply;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    /// Restores the entry as it was.
    pub undo: Op,
}

/// Counts of what changes, for the one-line summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub frontends_added: usize,
    pub frontends_changed: usize,
    pub frontends_removed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub node_addresses_added: usize,
    pub node_addresses_removed: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frontends +{} ~{} -{}, backends +{} -{}",
            self.frontends_added,
            self.frontends_changed,
            self.frontends_removed,
            self.backends_added,
            self.backends_removed
        )?;
        if self.node_addresses_added + self.node_addresses_removed > 0 {
            write!(f, ", node addresses +{} -{}", self.node_addresses_added, self.node_addresses_removed)?;
        }
        Ok(())
    }
}

pub struct Plan<'a> {
    sides: Sides<'a>,
    /// Map writes in the plan, counted once when it is made.
    len: usize,
    pub summary: Summary,
    /// The layers before and after, when the sides are parts of the images
    /// (`Plan::of_parts`), whose own frontends do not say them.
    layers: Option<(u32, u32)>,
}

impl<'a> Plan<'a> {
    /// The plan that moves the maps from `old` to `new`, both as recorded in
    /// the state dir.
    pub fn between(old: &'a Image, new: &'a Image) -> Self {
        let sides = Sides::Between(old, new);
        let frontends = Tally::of(frontend_changes(old, new));
        let backends = Tally::of(sides.backends());
        let nodes = Tally::of(sides.node_addresses());
        let summary = Summary {
            frontends_added: frontends.added,
            frontends_changed: frontends.total - frontends.added - frontends.removed,
            frontends_removed: frontends.removed,
            backends_added: backends.added,
            backends_removed: backends.removed,
            node_addresses_added: nodes.added,
            node_addresses_removed: nodes.removed,
        };
        Self::new(sides, backends.total + nodes.total, summary)
    }

    /// `between` the parts of two images that a change touched
    /// (`Image::part`): the same writes as between the whole images, when
    /// those are the same everywhere else. `layers` are the whole images'
    /// (`Image::layers`).
    pub fn of_parts(old: &'a Image, new: &'a Image, layers: (u32, u32)) -> Self {
        Self { layers: Some(layers), ..Self::between(old, new) }
    }

    /// The plan that makes the maps hold exactly `desired`, from what they
    /// hold now (after an unload, a crash or a manual edit).
    pub fn repair(actual: &'a MapContents, desired: &'a MapContents) -> Self {
        let sides = Sides::Repair(actual, desired);
        let counted = sides.backends().count() + sides.node_addresses().count();
        Self::new(sides, counted, Summary::default())
    }

    /// `counted` is the backend and node address writes, already counted
    /// for the summary.
    fn new(sides: Sides<'a>, counted: usize, summary: Summary) -> Self {
        let len = counted
            + sides.services().count()
            + sides.memberships().count()
            + sides.maglev().count()
            + sides.source_ranges().count()
            + sides.all_index_writes().count();
        Self { sides, len, summary, layers: None }
    }

    /// How many map writes the plan makes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every map write in execution order, generated as it is taken.
    pub fn steps(&self) -> impl Iterator<Item = Step> + use<'a> {
        let sides = self.sides;
        Phase::ORDER.into_iter().flat_map(move |phase| sides.phase(phase))
    }

    /// The socket layers (`balctl_common::layer_bit` of each scope the
    /// socket programs read) that hold a frontend before the plan and
    /// after it. The external scope never has a bit: only the packet
    /// programs read it.
    pub fn layers(&self) -> (u32, u32) {
        let bit = |scope: u8| if scope == Scope::External.raw() { 0 } else { layer_bit(scope) };
        let of_image = |image: &Image| image.layers();
        let of_maps =
            |maps: &MapContents| maps.services.keys().fold(0, |layers, key| layers | bit(key.scope));
        if let Some(layers) = self.layers {
            return layers;
        }
        match self.sides {
            Sides::Between(old, new) => (of_image(old), of_image(new)),
            Sides::Repair(actual, desired) => (of_maps(actual), of_maps(desired)),
        }
    }

    /// At least the most entries each map holds while the plan runs, from
    /// `start`, told without walking its steps: every changed entry is one
    /// step, so the plan adds at most the entries of its far side, and
    /// what it deletes was there at the start.
    pub fn entries_bound(&self, start: EntryCounts) -> EntryCounts {
        let end = match self.sides {
            Sides::Between(_, new) => new.entry_counts(),
            Sides::Repair(_, desired) => desired.entry_counts(),
        };
        start.plus(end)
    }

    /// The most entries each map holds at any point while the plan runs,
    /// starting from `start`.
    pub fn peak_entries(&self, start: EntryCounts) -> EntryCounts {
        let mut now = start;
        let mut peak = start;
        for step in self.steps() {
            // A put adds an entry when undoing it means deleting.
            let adds = matches!(
                step.undo,
                Op::DeleteService(_)
                    | Op::DeleteBackend(_)
                    | Op::DeleteMembership(_)
                    | Op::DeleteNodeAddress(_)
                    | Op::DeleteExternal(_)
                    | Op::DeleteMaglev(_)
                    | Op::DeleteSourceRange(_)
            );
            match step.op {
                Op::PutService(..) if adds => now.services += 1,
                Op::PutBackend(..) if adds => now.backends += 1,
                Op::PutMembership(..) if adds => now.membership += 1,
                Op::PutNodeAddress(..) if adds => now.nodes += 1,
                Op::PutExternal(..) if adds => now.external += 1,
                Op::PutMaglev(..) if adds => now.maglev += 1,
                Op::PutSourceRange(_) if adds => now.source_ranges += 1,
                Op::DeleteService(_) => now.services -= 1,
                Op::DeleteBackend(_) => now.backends -= 1,
                Op::DeleteMembership(_) => now.membership -= 1,
                Op::DeleteNodeAddress(_) => now.nodes -= 1,
                Op::DeleteExternal(_) => now.external -= 1,
                Op::DeleteMaglev(_) => now.maglev -= 1,
                Op::DeleteSourceRange(_) => now.source_ranges -= 1,
                _ => {}
            }
            peak.services = peak.services.max(now.services);
            peak.backends = peak.backends.max(now.backends);
            peak.membership = peak.membership.max(now.membership);
            peak.nodes = peak.nodes.max(now.nodes);
            peak.external = peak.external.max(now.external);
            peak.maglev = peak.maglev.max(now.maglev);
            peak.source_ranges = peak.source_ranges.max(now.source_ranges);
        }
        peak
    }
}

// The kernel layer's type; what an image puts in the maps is decided here.
impl MapContents {
    /// What the maps hold when they match `image` exactly.
    pub fn of(image: &Image) -> Self {
        let mut contents = Self::default();
        for (frontend, f) in &image.frontends {
            let master = service_key(frontend, 0);
            contents.services.extend(
                service_entries(f, &image.backends)
                    .map(|(slot, entry)| (ServiceKey { slot, ..master }, entry)),
            );
            contents.membership.extend(f.memberships());
            contents.maglev.extend(f.maglev_entries(&image.backends));
            contents.source_ranges.extend(f.source_range_keys());
        }
        contents.backends = image.backends.iter().map(|(&id, addr)| (id, addr.to_raw())).collect();
        contents.node_addresses = image.node_address_keys();
        contents.external = image.external_index().collect();
        contents
    }
}

/// Master (slot 0) and slot entries of one frontend of an image with
/// `backends`, in slot order.
fn service_entries<'a>(
    frontend: &'a FrontendImage,
    backends: &'a BackendTable,
) -> impl Iterator<Item = (u16, ServiceEntry)> + 'a {
    iter::once((0, frontend.master())).chain(frontend.slots(backends))
}

/// The phases of the module docs, in execution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// New backends and node addresses.
    PutBackends,
    PutMemberships,
    ShrinkMasters,
    /// External index entries removed, and those whose master was there
    /// before the plan.
    IndexOldMasters,
    DeleteMasters,
    DeleteSlots,
    PutSlots,
    /// Masters of new frontends, and those that grow or change otherwise.
    PutMasters,
    /// External index entries that name a new master.
    IndexNewMasters,
    DeleteMemberships,
    /// Removed backends and node addresses.
    DeleteBackends,
}

impl Phase {
    const ORDER: [Self; 11] = [
        Self::PutBackends,
        Self::PutMemberships,
        Self::ShrinkMasters,
        Self::IndexOldMasters,
        Self::DeleteMasters,
        Self::DeleteSlots,
        Self::PutSlots,
        Self::PutMasters,
        Self::IndexNewMasters,
        Self::DeleteMemberships,
        Self::DeleteBackends,
    ];

    /// The phase of one changed services-map entry.
    fn of_service(key: &ServiceKey, old: Option<&ServiceEntry>, new: Option<&ServiceEntry>) -> Self {
        match (key.slot, old, new) {
            (0, _, None) => Self::DeleteMasters,
            (_, _, None) => Self::DeleteSlots,
            (0, Some(old), Some(new)) if shrinks(old, new) => Self::ShrinkMasters,
            (0, _, _) => Self::PutMasters,
            _ => Self::PutSlots,
        }
    }
}

/// Whether a master entry's change takes something away: fewer slots, or
/// (with as many) a smaller Maglev table (`backend_id` holds its size).
const fn shrinks(old: &ServiceEntry, new: &ServiceEntry) -> bool {
    new.count < old.count || (new.count == old.count && new.backend_id < old.backend_id)
}

/// One entry that differs between the two sides: its key, its value before
/// and its value after (`None`: absent; sets have `()` values).
/// A key with its value before and after (None: no entry).
pub(crate) type Change<K, V> = (K, Option<V>, Option<V>);

type Changes<'a, K, V> = Box<dyn Iterator<Item = Change<K, V>> + 'a>;

/// The two sides a plan moves between, with each map's changes as a merge
/// walk over them.
#[derive(Clone, Copy)]
enum Sides<'a> {
    Between(&'a Image, &'a Image),
    Repair(&'a MapContents, &'a MapContents),
}

impl<'a> Sides<'a> {
    fn phase(self, phase: Phase) -> Box<dyn Iterator<Item = Step> + 'a> {
        let backend = |change| step(change, Op::PutBackend, Op::DeleteBackend);
        let node = |change| step(change, |key, ()| Op::PutNodeAddress(key), Op::DeleteNodeAddress);
        let membership = |change| step(change, Op::PutMembership, Op::DeleteMembership);
        let source_range = |change| step(change, |key, ()| Op::PutSourceRange(key), Op::DeleteSourceRange);
        match phase {
            Phase::PutBackends => Box::new(
                self.backends().filter(puts).map(backend).chain(self.node_addresses().filter(puts).map(node)),
            ),
            Phase::PutMemberships => Box::new(self.memberships().filter(puts).map(membership)),
            // Removals first: the map's peak stays at max(before, after).
            Phase::IndexOldMasters => {
                let removes = |step: &Step| matches!(step.op, Op::DeleteExternal(_));
                Box::new(
                    self.index_writes(phase)
                        .filter(removes)
                        .chain(self.index_writes(phase).filter(move |step| !removes(step))),
                )
            }
            Phase::IndexNewMasters => Box::new(self.index_writes(phase)),
            Phase::DeleteMemberships => Box::new(
                self.memberships()
                    .filter(deletes)
                    .map(membership)
                    .chain(self.source_ranges().filter(deletes).map(source_range)),
            ),
            Phase::DeleteBackends => Box::new(
                self.backends()
                    .filter(deletes)
                    .map(backend)
                    .chain(self.node_addresses().filter(deletes).map(node)),
            ),
            Phase::PutSlots => Box::new(
                self.slots(phase)
                    .chain(
                        self.maglev()
                            .filter(puts)
                            .map(|change| step(change, Op::PutMaglev, Op::DeleteMaglev)),
                    )
                    .chain(self.source_ranges().filter(puts).map(source_range)),
            ),
            Phase::DeleteSlots => Box::new(self.slots(phase).chain(
                self.maglev().filter(deletes).map(|change| step(change, Op::PutMaglev, Op::DeleteMaglev)),
            )),
            _ => self.slots(phase),
        }
    }

    /// The services-map writes of `phase`.
    fn slots(self, phase: Phase) -> Box<dyn Iterator<Item = Step> + 'a> {
        Box::new(
            self.services()
                .filter(move |(key, old, new)| Phase::of_service(key, old.as_ref(), new.as_ref()) == phase)
                .map(|change| step(change, Op::PutService, Op::DeleteService)),
        )
    }

    /// Source-range changes, frontend by frontend.
    fn source_ranges(self) -> Changes<'a, SourceRangeKey, ()> {
        match self {
            Self::Between(old, new) => Box::new(frontend_changes(old, new).flat_map(|(_, before, after)| {
                let keys = |f: Option<&'a FrontendImage>| {
                    f.into_iter().flat_map(FrontendImage::source_range_keys).map(|key| (key, ()))
                };
                changes(keys(before), keys(after))
            })),
            Self::Repair(actual, desired) => {
                Box::new(changes(unit(&actual.source_ranges), unit(&desired.source_ranges)))
            }
        }
    }

    /// External index changes, in key order.
    fn external(self) -> Changes<'a, ExternalKey, Addr> {
        match self {
            Self::Between(old, new) => {
                let came_or_went = frontend_changes(old, new)
                    .filter(|(_, before, after)| before.is_none() != after.is_none())
                    .map(|(frontend, _, _)| frontend);
                Box::new(
                    external::touched(old, new, came_or_went)
                        .into_iter()
                        .map(move |key| (key, old.external_master(&key), new.external_master(&key)))
                        .filter(|(_, before, after)| before != after),
                )
            }
            Self::Repair(actual, desired) => {
                Box::new(changes(copied(&actual.external), copied(&desired.external)))
            }
        }
    }

    /// The external index's writes of `phase` (see the module docs).
    fn index_writes(self, phase: Phase) -> impl Iterator<Item = Step> + 'a {
        self.all_index_writes().filter(move |(of, _)| *of == phase).map(|(_, step)| step)
    }

    /// Every write of the external index, with its phase: one per changed
    /// entry, or two for an entry that moves from a master that goes (or
    /// is missing) to one that comes.
    fn all_index_writes(self) -> impl Iterator<Item = (Phase, Step)> + 'a {
        self.external().flat_map(move |(key, old, new)| {
            let write =
                |value: Option<Addr>| value.map_or(Op::DeleteExternal(key), |a| Op::PutExternal(key, a));
            let (early, late) = (Phase::IndexOldMasters, Phase::IndexNewMasters);
            let steps = match (old, new) {
                (_, None) => [Some((early, Step { op: write(new), undo: write(old) })), None],
                (_, Some(addr)) if self.holds_master(&key, addr).0 => {
                    [Some((early, Step { op: write(new), undo: write(old) })), None]
                }
                (Some(addr), Some(_)) if self.holds_master(&key, addr) != (true, true) => [
                    Some((early, Step { op: write(None), undo: write(old) })),
                    Some((late, Step { op: write(new), undo: write(None) })),
                ],
                (_, Some(_)) => [Some((late, Step { op: write(new), undo: write(old) })), None],
            };
            steps.into_iter().flatten()
        })
    }

    /// Whether the maps hold the master an external index entry of `key`
    /// naming `addr` points at, before the plan and after it.
    fn holds_master(self, key: &ExternalKey, addr: Addr) -> (bool, bool) {
        let master = key.master(addr);
        match self {
            Self::Between(old, new) => frontend_of(&master)
                .map_or((false, false), |f| (old.frontends.contains_key(&f), new.frontends.contains_key(&f))),
            Self::Repair(actual, desired) => {
                (actual.services.contains_key(&master), desired.services.contains_key(&master))
            }
        }
    }

    /// Maglev-map changes, in frontend order and within a frontend in
    /// index order.
    fn maglev(self) -> Changes<'a, MaglevKey, MaglevChunk> {
        match self {
            Self::Between(old, new) => Box::new(frontend_changes(old, new).flat_map(|(_, before, after)| {
                let entries = |f: Option<&'a FrontendImage>, image: &'a Image| {
                    f.into_iter().flat_map(|f| f.maglev_entries(&image.backends))
                };
                changes(entries(before, old), entries(after, new))
            })),
            Self::Repair(actual, desired) => {
                Box::new(changes(copied(&actual.maglev), copied(&desired.maglev)))
            }
        }
    }

    /// Services-map changes in frontend order, and within a frontend in slot
    /// order.
    fn services(self) -> Changes<'a, ServiceKey, ServiceEntry> {
        match self {
            Self::Between(old, new) => {
                Box::new(frontend_changes(old, new).flat_map(|(frontend, before, after)| {
                    let master = service_key(frontend, 0);
                    let entries = |f: Option<&'a FrontendImage>, image: &'a Image| {
                        f.into_iter().flat_map(|f| service_entries(f, &image.backends))
                    };
                    changes(entries(before, old), entries(after, new))
                        .map(move |(slot, old, new)| (ServiceKey { slot, ..master }, old, new))
                }))
            }
            // A frontend's entries are adjacent in key order (the slot is the
            // key's last field), so this is frontend order too.
            Self::Repair(actual, desired) => {
                Box::new(changes(copied(&actual.services), copied(&desired.services)))
            }
        }
    }

    fn memberships(self) -> Changes<'a, MembershipKey, Cell> {
        match self {
            // Each frontend has its own service id, so its memberships are
            // compared with its own only.
            Self::Between(old, new) => Box::new(
                frontend_changes(old, new)
                    .flat_map(|(_, before, after)| changes(members(before), members(after))),
            ),
            Self::Repair(actual, desired) => {
                Box::new(changes(copied(&actual.membership), copied(&desired.membership)))
            }
        }
    }

    fn backends(self) -> Changes<'a, BackendId, Backend> {
        match self {
            // Compared as recorded, converted to the map's form only when
            // they differ: most backends of a big image stay.
            Self::Between(old, new) => Box::new(
                changes(old.backends.iter(), new.backends.iter())
                    .map(|(&id, before, after)| (id, before.map(|b| b.to_raw()), after.map(|a| a.to_raw()))),
            ),
            Self::Repair(actual, desired) => {
                Box::new(changes(copied(&actual.backends), copied(&desired.backends)))
            }
        }
    }

    fn node_addresses(self) -> Changes<'a, NodeAddressKey, ()> {
        match self {
            Self::Between(old, new) => Box::new(changes(node_address_keys(old), node_address_keys(new))),
            Self::Repair(actual, desired) => {
                Box::new(changes(unit(&actual.node_addresses), unit(&desired.node_addresses)))
            }
        }
    }
}

/// Frontends that differ between `old` and `new`, in frontend order.
fn frontend_changes<'a>(
    old: &'a Image,
    new: &'a Image,
) -> impl Iterator<Item = Change<&'a Frontend, &'a FrontendImage>> + 'a {
    changes(old.frontends.iter(), new.frontends.iter())
}

/// An image's nodes map keys, in key order (`Image::node_address_keys`).
fn node_address_keys(image: &Image) -> impl Iterator<Item = (NodeAddressKey, ())> + use<> {
    image.node_address_keys().into_iter().map(|key| (key, ()))
}

/// A frontend's memberships with their cells, sorted for the merge walk
/// (its backends are in slot order) and once each, as in the map.
fn members(frontend: Option<&FrontendImage>) -> impl Iterator<Item = (MembershipKey, Cell)> + use<> {
    let mut members: Vec<(MembershipKey, Cell)> =
        frontend.into_iter().flat_map(FrontendImage::memberships).collect();
    members.sort_unstable();
    members.dedup_by_key(|(key, _)| *key);
    members.into_iter()
}

/// A map's entries by value, for `changes`.
fn copied<'a, K: Copy, V: Copy>(map: &'a BTreeMap<K, V>) -> impl Iterator<Item = (K, V)> + 'a {
    map.iter().map(|(&key, &value)| (key, value))
}

/// A set's keys as entries without a value, for `changes`.
fn unit<K: Copy>(set: &BTreeSet<K>) -> impl Iterator<Item = (K, ())> + '_ {
    set.iter().map(|&key| (key, ()))
}

/// Walks two sequences sorted by key together and yields the keys whose
/// values differ, each once. (The state's change log diffs with it too.)
pub(crate) fn changes<K: Ord, V: PartialEq>(
    old: impl Iterator<Item = (K, V)>,
    new: impl Iterator<Item = (K, V)>,
) -> impl Iterator<Item = Change<K, V>> {
    let (mut old, mut new) = (old.peekable(), new.peekable());
    iter::from_fn(move || {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            Ordering::Less => old.next().map(|(key, value)| (key, Some(value), None)),
            Ordering::Greater => new.next().map(|(key, value)| (key, None, Some(value))),
            Ordering::Equal => {
                let ((key, before), (_, after)) = (old.next()?, new.next()?);
                Some((key, Some(before), Some(after)))
            }
        }
    })
    .filter(|(_, before, after)| before != after)
}

fn puts<K, V>(change: &Change<K, V>) -> bool {
    change.2.is_some()
}

fn deletes<K, V>(change: &Change<K, V>) -> bool {
    change.2.is_none()
}

/// The write that gives the entry its new value, undone by the write that
/// gives it back its old one.
fn step<K: Copy, V>((key, old, new): Change<K, V>, put: fn(K, V) -> Op, delete: fn(K) -> Op) -> Step {
    let write = |value: Option<V>| value.map_or_else(|| delete(key), |value| put(key, value));
    Step { op: write(new), undo: write(old) }
}

/// How many changes add an entry, remove one, and how many there are.
struct Tally {
    added: usize,
    removed: usize,
    total: usize,
}

impl Tally {
    fn of<K, V>(changes: impl Iterator<Item = Change<K, V>>) -> Self {
        let mut tally = Self { added: 0, removed: 0, total: 0 };
        for (_, old, new) in changes {
            tally.added += usize::from(old.is_none());
            tally.removed += usize::from(new.is_none());
            tally.total += 1;
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use balctl_common::{MAGLEV_CHUNK, SCOPE_SERVICE};

    use super::*;
    use crate::{
        image::raw::{addr_to_raw, raw_to_addr, raw_to_port},
        model::{FrontendRule, parse_backend},
    };

    fn rule(frontend: &str, backends: &[&str], affinity_seconds: Option<u32>) -> FrontendRule {
        FrontendRule {
            frontend: frontend.parse().unwrap(),
            backends: backends.iter().map(|b| parse_backend(b).unwrap()).collect(),
            local_backends: Vec::new(),
            affinity_seconds,
            local_only: false,
            requests_per_second: None,
            address_kind: crate::model::AddressKind::ClusterIp,
            external: crate::model::ExternalBalancing::default(),
            health: None,
            weights: Vec::new(),
            least_connections: false,
        }
    }

    fn image(previous: &Image, policies: &[(&str, &str, &[&str])]) -> Image {
        let rules: Vec<(String, FrontendRule)> = policies
            .iter()
            .map(|(name, frontend, backends)| (format!("policy/{name}"), rule(frontend, backends, None)))
            .collect();
        Image::compile(rules.iter().map(|(owner, rule)| (owner.clone(), rule)), [], previous).unwrap()
    }

    /// Applies steps to an in-memory model of the maps, checking after every
    /// step the invariant the datapath relies on: a master with count N has
    /// slots 1..=N, every slot's backend exists, and every external index
    /// entry names a master that exists.
    fn run(start: &MapContents, ops: impl IntoIterator<Item = Op>) -> MapContents {
        let mut maps = start.clone();
        for op in ops {
            match &op {
                Op::PutBackend(id, b) => drop(maps.backends.insert(*id, *b)),
                Op::DeleteBackend(id) => drop(maps.backends.remove(id)),
                Op::PutMembership(k, cell) => drop(maps.membership.insert(*k, *cell)),
                Op::DeleteMembership(k) => drop(maps.membership.remove(k)),
                Op::PutService(k, v) => drop(maps.services.insert(*k, *v)),
                Op::DeleteService(k) => drop(maps.services.remove(k)),
                Op::PutNodeAddress(k) => drop(maps.node_addresses.insert(*k)),
                Op::DeleteNodeAddress(k) => drop(maps.node_addresses.remove(k)),
                Op::PutExternal(k, master) => drop(maps.external.insert(*k, *master)),
                Op::DeleteExternal(k) => drop(maps.external.remove(k)),
                Op::PutMaglev(k, chunk) => drop(maps.maglev.insert(*k, *chunk)),
                Op::DeleteMaglev(k) => drop(maps.maglev.remove(k)),
                Op::PutSourceRange(k) => drop(maps.source_ranges.insert(*k)),
                Op::DeleteSourceRange(k) => drop(maps.source_ranges.remove(k)),
            }
            for (key, backend_id) in
                maps.maglev.iter().flat_map(|(key, ids)| ids.iter().map(move |id| (key, id)))
            {
                let known = *backend_id == 0 || maps.backends.contains_key(backend_id);
                assert!(known, "maglev entry {key:?} dangling after {op:?}");
            }
            for (key, &master) in &maps.external {
                let named = maps.services.contains_key(&key.master(master));
                assert!(named, "index entry {key:?} names a missing master after {op:?}");
            }
            for (key, master) in maps.services.iter().filter(|(k, _)| k.slot == 0) {
                if master.flags & balctl_common::SERVICE_FLAG_SOURCE_RANGES != 0 {
                    let id = master.service_id.to_be_bytes();
                    assert!(
                        maps.source_ranges.iter().any(|(_, range)| range.service_id == id),
                        "a master with source ranges has none after {op:?}"
                    );
                }
                for slot in 1..=master.count {
                    let entry = maps.services.get(&ServiceKey { slot, ..*key });
                    let entry = entry.unwrap_or_else(|| panic!("slot {slot} missing after {op:?}"));
                    assert!(maps.backends.contains_key(&entry.backend_id), "dangling backend after {op:?}");
                }
            }
        }
        maps
    }

    /// Runs the first `done` steps of `plan`, then undoes them the way
    /// `Plan::apply` does when the next write fails: their undo writes,
    /// last first, from a second walk of the plan.
    fn run_and_undo(start: &MapContents, plan: &Plan, done: usize) -> MapContents {
        let middle = run(start, plan.steps().take(done).map(|step| step.op));
        let undo: Vec<Op> = plan.steps().take(done).map(|step| step.undo).collect();
        run(&middle, undo.into_iter().rev())
    }

    #[test]
    fn every_transition_keeps_the_datapath_consistent_and_undoes() {
        let three = &["192.0.2.1:80", "192.0.2.2:80", "192.0.2.3:80"][..];
        let v1 =
            image(&Image::default(), &[("a", "198.18.0.1:80", three), ("b", "198.18.0.2:80", &three[..1])]);
        let transitions: Vec<Vec<(&str, &str, &[&str])>> = vec![
            vec![("a", "198.18.0.1:80", &three[..1])],
            vec![("a", "198.18.0.1:80", &["192.0.2.4:80", "192.0.2.5:80", "192.0.2.6:80", "192.0.2.7:80"])],
            vec![("c", "198.18.0.3:80", &[])],
            vec![],
        ];
        for policies in transitions {
            let v2 = image(&v1, &policies);
            let (start, desired) = (MapContents::of(&v1), MapContents::of(&v2));
            let plan = Plan::between(&v1, &v2);
            assert_eq!(plan.steps().count(), plan.len());
            let end = run(&start, plan.steps().map(|step| step.op));
            assert_eq!(end, desired);
            assert_eq!(run_and_undo(&start, &plan, plan.len()), start);

            let repair = Plan::repair(&start, &desired);
            assert_eq!((repair.len(), repair.steps().count()), (plan.len(), plan.len()));
            assert_eq!(run(&start, repair.steps().map(|step| step.op)), desired);
        }
    }

    #[test]
    fn undoing_the_first_steps_restores_the_start() {
        let v1 = image(
            &Image::default(),
            &[
                ("a", "198.18.0.1:80", &["192.0.2.1:80", "192.0.2.2:80", "192.0.2.3:80"]),
                ("b", "198.18.0.2:80", &["192.0.2.1:80"]),
            ],
        );
        let v2 = image(
            &v1,
            &[
                ("a", "198.18.0.1:80", &["192.0.2.2:80"]),
                ("c", "198.18.0.3:80", &["192.0.2.4:80", "192.0.2.5:80"]),
            ],
        );
        let start = MapContents::of(&v1);
        for plan in [Plan::between(&v1, &v2), Plan::between(&v1, &Image::default())] {
            for done in 0..=plan.len() {
                assert_eq!(run_and_undo(&start, &plan, done), start, "after {done} of {} steps", plan.len());
            }
        }
    }

    /// The plan as it was first written: every step made up front, sorted
    /// into one list per phase. Generating the steps lazily must not change
    /// them or their order.
    fn reference(old: &Image, new: &Image) -> Vec<Step> {
        // Indices into `phases`, in execution order.
        let (put_backends, put_memberships, shrink_masters, delete_masters) = (0, 1, 2, 3);
        let (delete_slots, put_slots, put_masters, late, delete_backends) = (4, 5, 6, 7, 8);
        let mut phases: [Vec<Step>; 9] = Default::default();
        let frontends: BTreeSet<&Frontend> = old.frontends.keys().chain(new.frontends.keys()).collect();
        for frontend in frontends {
            let (before, after) = (old.frontends.get(frontend), new.frontends.get(frontend));
            if before == after {
                continue;
            }
            let slots = |f: Option<&FrontendImage>, image: &Image| -> BTreeMap<u16, ServiceEntry> {
                f.map(|f| service_entries(f, &image.backends).collect()).unwrap_or_default()
            };
            let (before_slots, after_slots) = (slots(before, old), slots(after, new));
            let key = |slot| service_key(frontend, slot);
            for (&slot, old) in &before_slots {
                if !after_slots.contains_key(&slot) {
                    let phase = if slot == 0 { delete_masters } else { delete_slots };
                    phases[phase].push(Step {
                        op: Op::DeleteService(key(slot)),
                        undo: Op::PutService(key(slot), *old),
                    });
                }
            }
            for (&slot, new) in &after_slots {
                let old = before_slots.get(&slot);
                if old == Some(new) {
                    continue;
                }
                let phase = match (slot, old) {
                    (0, Some(old)) if new.count < old.count => shrink_masters,
                    (0, _) => put_masters,
                    _ => put_slots,
                };
                let undo = old.map_or(Op::DeleteService(key(slot)), |old| Op::PutService(key(slot), *old));
                phases[phase].push(Step { op: Op::PutService(key(slot), *new), undo });
            }
            let members = |f: Option<&FrontendImage>| -> BTreeMap<MembershipKey, Cell> {
                f.map(|f| f.memberships().collect()).unwrap_or_default()
            };
            let (before_members, after_members) = (members(before), members(after));
            for (&key, &cell) in &after_members {
                let undo = match before_members.get(&key) {
                    Some(&old) if old == cell => continue,
                    Some(&old) => Op::PutMembership(key, old),
                    None => Op::DeleteMembership(key),
                };
                phases[put_memberships].push(Step { op: Op::PutMembership(key, cell), undo });
            }
            for (&key, &cell) in &before_members {
                if !after_members.contains_key(&key) {
                    let undo = Op::PutMembership(key, cell);
                    phases[late].push(Step { op: Op::DeleteMembership(key), undo });
                }
            }
        }
        let raw = |image: &Image| -> BTreeMap<BackendId, Backend> {
            image.backends.iter().map(|(&id, addr)| (id, addr.to_raw())).collect()
        };
        let (old_backends, new_backends) = (raw(old), raw(new));
        for (&id, new) in &new_backends {
            let old = old_backends.get(&id);
            if old != Some(new) {
                let undo = old.map_or(Op::DeleteBackend(id), |old| Op::PutBackend(id, *old));
                phases[put_backends].push(Step { op: Op::PutBackend(id, *new), undo });
            }
        }
        for (&id, old) in &old_backends {
            if !new_backends.contains_key(&id) {
                phases[delete_backends]
                    .push(Step { op: Op::DeleteBackend(id), undo: Op::PutBackend(id, *old) });
            }
        }
        let (old_nodes, new_nodes) = (old.node_address_keys(), new.node_address_keys());
        for &key in new_nodes.difference(&old_nodes) {
            phases[put_backends].push(Step { op: Op::PutNodeAddress(key), undo: Op::DeleteNodeAddress(key) });
        }
        for &key in old_nodes.difference(&new_nodes) {
            phases[delete_backends]
                .push(Step { op: Op::DeleteNodeAddress(key), undo: Op::PutNodeAddress(key) });
        }
        phases.into_iter().flatten().collect()
    }

    #[test]
    fn steps_come_in_the_order_of_the_eager_plan() {
        let compile = |previous: &Image, rules: &[(&str, FrontendRule)], nodes: &[&str]| {
            let rules = rules.iter().map(|(owner, rule)| ((*owner).to_owned(), rule));
            Image::compile(rules, nodes.iter().map(|ip| ip.parse().unwrap()), previous).unwrap()
        };
        let backends = ["192.0.2.1:80", "192.0.2.2:80", "192.0.2.3:80", "192.0.2.4:80"];
        let v1 = compile(
            &Image::default(),
            &[
                ("policy/a", rule("198.18.0.1:80", &backends[..3], None)),
                ("policy/b", rule("198.18.0.2:80", &backends[..1], Some(60))),
                ("policy/c", rule("[2001:db8::10]:80", &["[2001:db8::1]:80"], None)),
                ("policy/d", rule("198.18.0.4:53/udp", &["192.0.2.1:53"], None)),
            ],
            &["10.0.0.2", "192.0.2.1", "2001:db8::2"],
        );
        let v2 = compile(
            &v1,
            &[
                // Shrinks, and a backend goes.
                ("policy/a", rule("198.18.0.1:80", &[backends[2], backends[0]], None)),
                // Grows, and its affinity changes.
                ("policy/b", rule("198.18.0.2:80", &backends, Some(30))),
                // c goes; d keeps its backend but gains affinity.
                ("policy/d", rule("198.18.0.4:53/udp", &["192.0.2.1:53"], Some(10))),
                ("policy/e", rule("198.18.0.5:80", &[], None)),
            ],
            // Key order is not address order: 192.0.2.5 comes before 10.0.0.9.
            &["10.0.0.9", "192.0.2.1", "192.0.2.5", "2001:db8::3"],
        );
        for (old, new) in [(&v1, &v2), (&v2, &v1), (&Image::default(), &v1), (&v2, &Image::default())] {
            let plan = Plan::between(old, new);
            assert_eq!(plan.steps().collect::<Vec<_>>(), reference(old, new));
            assert_eq!(plan.len(), reference(old, new).len());
        }
    }

    #[test]
    fn shrinking_lowers_the_count_before_deleting_slots() {
        let v1 = image(&Image::default(), &[("a", "198.18.0.1:80", &["192.0.2.1:80", "192.0.2.2:80"])]);
        let v2 = image(&v1, &[("a", "198.18.0.1:80", &["192.0.2.2:80"])]);
        let ops: Vec<Op> = Plan::between(&v1, &v2).steps().map(|s| s.op).collect();
        let master = ops.iter().position(|op| matches!(op, Op::PutService(k, _) if k.slot == 0)).unwrap();
        let delete = ops.iter().position(|op| matches!(op, Op::DeleteService(k) if k.slot == 2)).unwrap();
        assert!(master < delete, "{ops:?}");
        assert!(matches!(ops.last(), Some(Op::DeleteBackend(1))), "{ops:?}");
    }

    #[test]
    fn an_unchanged_image_plans_nothing() {
        let v1 = image(&Image::default(), &[("a", "198.18.0.1:80", &["192.0.2.1:80"])]);
        let v1_again = v1.clone();
        let plan = Plan::between(&v1, &v1_again);
        assert!(plan.is_empty());
        assert_eq!(plan.steps().count(), 0);
        assert_eq!(plan.summary, Summary::default());
        let contents = MapContents::of(&v1);
        assert!(Plan::repair(&contents, &contents).is_empty());
    }

    #[test]
    fn the_summary_counts_frontends_backends_and_node_addresses() {
        let v1 = image(&Image::default(), &[("a", "198.18.0.1:80", &["192.0.2.1:80", "192.0.2.2:80"])]);
        let rules = [("policy/b".to_owned(), rule("198.18.0.2:80", &["192.0.2.1:80"], None))];
        let nodes = ["10.0.0.1".parse().unwrap()];
        let v2 = Image::compile(rules.iter().map(|(owner, rule)| (owner.clone(), rule)), nodes, &v1).unwrap();
        let summary = Plan::between(&v1, &v2).summary;
        let expected = Summary {
            frontends_added: 1,
            frontends_removed: 1,
            backends_removed: 1,
            node_addresses_added: 1,
            ..Summary::default()
        };
        assert_eq!(summary, expected);
        let v3 = image(&v2, &[("b", "198.18.0.2:80", &["192.0.2.3:80"])]);
        let summary = Plan::between(&v2, &v3).summary;
        let expected = Summary {
            frontends_changed: 1,
            backends_added: 1,
            backends_removed: 1,
            node_addresses_removed: 1,
            ..Summary::default()
        };
        assert_eq!(summary, expected);
    }

    /// An external frontend's Maglev table: written whole when it appears,
    /// only the entries that change when a backend comes, and every entry
    /// names a backend in the map after every single write (`run`).
    #[test]
    fn maglev_tables_change_only_what_moves() {
        let external = |backends: &[&str], size: Option<u32>| {
            let mut rule = rule("198.18.1.30:80", backends, None);
            rule.frontend.scope = Scope::External;
            rule.external.maglev_table_size = size;
            rule
        };
        let compile = |previous: &Image, rule: Option<FrontendRule>| {
            let rules: Vec<(String, FrontendRule)> =
                rule.into_iter().map(|r| ("service/web".into(), r)).collect();
            Image::compile(rules.iter().map(|(owner, rule)| (owner.clone(), rule)), [], previous).unwrap()
        };
        let hosts = ["192.0.2.1:80", "192.0.2.2:80", "192.0.2.3:80", "192.0.2.4:80"];
        let v1 = compile(&Image::default(), Some(external(&hosts[..3], None)));
        let master = v1.frontends.values().next().unwrap().master();
        assert_eq!((master.backend_id, master.flags & balctl_common::SERVICE_FLAG_MAGLEV != 0), (509, true));
        let versions = [
            compile(&v1, Some(external(&hosts, None))),
            compile(&v1, Some(external(&hosts[1..], None))),
            compile(&v1, Some(external(&hosts, Some(251)))),
            compile(&v1, Some(external(&hosts[..2], Some(1021)))),
            compile(&v1, Some(FrontendRule { external: Default::default(), ..external(&[], None) })),
            compile(&v1, None),
        ];
        let start = MapContents::of(&v1);
        assert_eq!(start.maglev.len(), 509usize.div_ceil(MAGLEV_CHUNK));
        for v2 in &versions {
            let (desired, plan) = (MapContents::of(v2), Plan::between(&v1, v2));
            assert_eq!(run(&start, plan.steps().map(|step| step.op)), desired);
            assert_eq!(run_and_undo(&start, &plan, plan.len()), start);
            assert_eq!(run(&start, Plan::repair(&start, &desired).steps().map(|step| step.op)), desired);
        }
        // 3 -> 4 backends, same table size: the new one's share and a
        // little more moves, not the whole table.
        let after = run(&start, Plan::between(&v1, &versions[0]).steps().map(|step| step.op));
        let entries = |contents: &MapContents| -> Vec<BackendId> {
            contents.maglev.values().flatten().copied().take(509).collect()
        };
        let before_ids: BackendTable = v1.backends.clone();
        let moved = entries(&start)
            .iter()
            .zip(entries(&after))
            .filter(|(old, new)| before_ids.get(old) != versions[0].backends.get(new))
            .count();
        assert!(moved > 0 && moved as f64 <= 509.0 * (1.0 / 4.0 + 0.10), "{moved}");
        // Only the chunks that hold a moved entry are written.
        let written =
            Plan::between(&v1, &versions[0]).steps().filter(|s| matches!(s.op, Op::PutMaglev(..))).count();
        assert!(written <= start.maglev.len(), "{written}");
        let peak = Plan::between(&v1, &versions[3]).peak_entries(v1.entry_counts());
        assert_eq!(peak.maglev as usize, 1021usize.div_ceil(MAGLEV_CHUNK));
    }

    /// Source ranges come before the flag that says a frontend has them
    /// and go after it (`run` checks after every write).
    #[test]
    fn source_ranges_are_written_before_the_flag_and_removed_after_it() {
        let lb = |ranges: &[&str]| {
            let mut rule = rule("198.18.1.30:80", &["192.0.2.1:80"], None);
            rule.frontend.scope = Scope::External;
            rule.external.source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
            rule
        };
        let compile = |previous: &Image, rule: FrontendRule| {
            Image::compile([("service/web".to_owned(), &rule)], [], previous).unwrap()
        };
        let none = compile(&Image::default(), lb(&[]));
        let versions = [
            compile(&none, lb(&["203.0.113.0/24"])),
            compile(&none, lb(&["203.0.113.0/24", "198.51.100.7/32"])),
            compile(&none, lb(&["198.51.100.0/24"])),
        ];
        let mut all = vec![none.clone()];
        all.extend(versions);
        for v1 in &all {
            for v2 in &all {
                let (start, desired, plan) =
                    (MapContents::of(v1), MapContents::of(v2), Plan::between(v1, v2));
                assert_eq!(run(&start, plan.steps().map(|step| step.op)), desired);
                // A change of ranges alone is still a change to apply.
                assert_eq!(plan.steps().count(), plan.len());
                assert_eq!(run_and_undo(&start, &plan, plan.len()), start);
                assert_eq!(run(&start, Plan::repair(&start, &desired).steps().map(|step| step.op)), desired);
            }
        }
        let keys = MapContents::of(&all[2]).source_ranges;
        let lens: Vec<u32> = keys.iter().map(|(len, _)| *len).collect();
        assert_eq!(lens, [32 + 96 + 24, 32 + 96 + 32]);
    }

    /// The socket programs never look the external layer up, so it never
    /// has a bit in the layers map.
    #[test]
    fn the_external_layer_has_no_bit() {
        let mut external = rule("198.18.0.1:80", &["192.0.2.1:80"], None);
        external.frontend.scope = Scope::External;
        let service = rule("198.18.0.1:80", &["192.0.2.1:80"], None);
        let rules = [("service/web".to_owned(), service), ("service/web".to_owned(), external)];
        let v1 =
            Image::compile(rules.iter().map(|(owner, rule)| (owner.clone(), rule)), [], &Image::default())
                .unwrap();
        let only_external = Image::compile([(rules[1].0.clone(), &rules[1].1)], [], &v1).unwrap();
        assert_eq!(Plan::between(&v1, &only_external).layers(), (layer_bit(SCOPE_SERVICE), 0));
        let (actual, desired) = (MapContents::of(&only_external), MapContents::of(&v1));
        assert_eq!(Plan::repair(&actual, &desired).layers(), (0, layer_bit(SCOPE_SERVICE)));
    }

    /// Whether node ports answer on loopback is one key of the nodes map,
    /// written and removed like a node address, and repaired like one.
    #[test]
    fn loopback_node_ports_are_the_loopback_key() {
        let on = Image::default();
        let mut off = on.clone();
        off.node_ports_on_loopback = false;
        let key = NodeAddressKey::IPV4_LOOPBACK;
        let ops = |plan: Plan| plan.steps().map(|step| step.op).collect::<Vec<_>>();
        assert_eq!(ops(Plan::between(&on, &off)), [Op::DeleteNodeAddress(key)]);
        assert_eq!(ops(Plan::between(&off, &on)), [Op::PutNodeAddress(key)]);
        let (actual, desired) = (MapContents::of(&off), MapContents::of(&on));
        assert_eq!(ops(Plan::repair(&actual, &desired)), [Op::PutNodeAddress(key)]);
        assert_eq!(on.entry_counts().nodes, off.entry_counts().nodes + 1);
    }

    #[test]
    fn peak_counts_deletions_before_additions() {
        let v1 = image(&Image::default(), &[("a", "198.18.0.1:80", &["192.0.2.1:80", "192.0.2.2:80"])]);
        let v2 = image(&v1, &[("b", "198.18.0.2:80", &["192.0.2.3:80", "192.0.2.4:80"])]);
        let peak = Plan::between(&v1, &v2).peak_entries(v1.entry_counts());
        // Services: a's 3 entries go before b's 3 arrive. Backends: new ones first.
        assert_eq!(
            peak,
            EntryCounts {
                services: 3,
                backends: 4,
                membership: 4,
                // The loopback key: node ports answer on loopback by default.
                nodes: 1,
                external: 0,
                maglev: 0,
                source_ranges: 0
            }
        );
    }

    /// An external frontend (scope external) of `IP:PORT[/udp]`, a node
    /// port on the unspecified address, with one backend.
    fn external(frontend: &str) -> FrontendRule {
        let (address, protocol) = match frontend.split_once('/') {
            Some((address, "udp")) => (address, crate::model::Protocol::Udp),
            _ => (frontend, crate::model::Protocol::Tcp),
        };
        let address: std::net::SocketAddr = address.parse().unwrap();
        let mut rule = rule("198.18.0.1:80", &["192.0.2.1:80"], None);
        rule.frontend =
            Frontend { address: address.ip(), port: address.port(), protocol, scope: Scope::External };
        rule
    }

    /// `rules`, with the node addresses `nodes`, continuing `previous`'s ids.
    fn with_nodes(previous: &Image, rules: &[FrontendRule], nodes: &[&str]) -> Image {
        let rules = rules.iter().map(|rule| (format!("service/{}", rule.frontend), rule));
        Image::compile(rules, nodes.iter().map(|ip| ip.parse().unwrap()), previous).unwrap()
    }

    /// The external index of `maps` as `DESTINATION/PROTO -> MASTER ADDRESS`.
    fn index(maps: &MapContents) -> BTreeSet<String> {
        let protocol = |proto| crate::model::Protocol::from_ip_proto(proto).unwrap();
        (maps.external.iter())
            .map(|(key, &master)| {
                let called = std::net::SocketAddr::new(raw_to_addr(key.addr), raw_to_port(key.port));
                format!("{called}/{} -> {}", protocol(key.proto), raw_to_addr(master))
            })
            .collect()
    }

    fn strings(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    /// Both ways between `v1` and `v2`: the plan and a repair reach the
    /// other side (`run` checks every index entry names a master after
    /// every write), count their writes, and undo from any step.
    fn check_both_ways(v1: &Image, v2: &Image) {
        for (old, new) in [(v1, v2), (v2, v1)] {
            let (start, desired, plan) =
                (MapContents::of(old), MapContents::of(new), Plan::between(old, new));
            assert_eq!(plan.steps().count(), plan.len());
            assert_eq!(run(&start, plan.steps().map(|step| step.op)), desired);
            for done in 0..=plan.len() {
                assert_eq!(run_and_undo(&start, &plan, done), start, "after {done} of {} steps", plan.len());
            }
            let repair = Plan::repair(&start, &desired);
            assert_eq!((repair.len(), repair.steps().count()), (plan.len(), plan.len()));
            assert_eq!(run(&start, repair.steps().map(|step| step.op)), desired);
            let peak = plan.peak_entries(old.entry_counts());
            assert_eq!(peak.external as usize, start.external.len().max(desired.external.len()));
        }
    }

    /// A node port has an index entry at each node address of its family;
    /// a LoadBalancer IP at its own; a socket-only node port has none.
    #[test]
    fn node_ports_are_indexed_at_each_node_address_of_their_family() {
        let mut socket_node_port = external("0.0.0.0:30090");
        socket_node_port.frontend.scope = Scope::Service;
        let rules = [
            external("0.0.0.0:30080"),
            external("[::]:30086"),
            external("198.18.1.40:80"),
            external("0.0.0.0:30053/udp"),
            socket_node_port,
        ];
        let v1 = with_nodes(&Image::default(), &rules, &["203.0.113.2", "198.51.100.1", "2001:db8:3::2"]);
        let contents = MapContents::of(&v1);
        assert_eq!(
            index(&contents),
            strings(&[
                "198.18.1.40:80/tcp -> 198.18.1.40",
                "198.51.100.1:30053/udp -> 0.0.0.0",
                "198.51.100.1:30080/tcp -> 0.0.0.0",
                "203.0.113.2:30053/udp -> 0.0.0.0",
                "203.0.113.2:30080/tcp -> 0.0.0.0",
                "[2001:db8:3::2]:30086/tcp -> ::",
            ])
        );
        assert_eq!(v1.entry_counts().external, 6);
        check_both_ways(&Image::default(), &v1);
    }

    /// Where a LoadBalancer IP is a node address, with a node port of the
    /// same port and protocol, the index names the LoadBalancer IP's
    /// master (kube-proxy's order), written after it; when one replaces
    /// the other at once, the entry goes before the old master and comes
    /// back after the new one.
    #[test]
    fn an_exact_frontend_at_a_node_address_wins_over_the_node_port() {
        let nodes = ["203.0.113.2"];
        let (node_port, lb) = (external("0.0.0.0:30080"), external("203.0.113.2:30080"));
        let v1 = with_nodes(&Image::default(), std::slice::from_ref(&node_port), &nodes);
        let v2 = with_nodes(&v1, &[node_port.clone(), lb.clone()], &nodes);
        let lb_only = with_nodes(&v1, &[lb], &nodes);
        assert_eq!(index(&MapContents::of(&v1)), strings(&["203.0.113.2:30080/tcp -> 0.0.0.0"]));
        for exact in [&v2, &lb_only] {
            assert_eq!(index(&MapContents::of(exact)), strings(&["203.0.113.2:30080/tcp -> 203.0.113.2"]));
        }
        let position = |ops: &[Op], wanted: fn(&Op) -> bool| ops.iter().position(wanted).unwrap();
        let is_lb_master = |op: &Op| matches!(op, Op::PutService(k, _) if k.slot == 0 && k.addr[3] != 0);
        // The node port stays: one rewrite, after the LoadBalancer IP's master.
        let ops: Vec<Op> = Plan::between(&v1, &v2).steps().map(|step| step.op).collect();
        assert_eq!(ops.iter().filter(|op| matches!(op, Op::PutExternal(..))).count(), 1, "{ops:?}");
        assert!(position(&ops, is_lb_master) < position(&ops, |op| matches!(op, Op::PutExternal(..))));
        // It goes while the other comes: removed before the node port's
        // master goes, written after the LoadBalancer IP's comes.
        let ops: Vec<Op> = Plan::between(&v1, &lb_only).steps().map(|step| step.op).collect();
        let removed = position(&ops, |op| matches!(op, Op::DeleteExternal(_)));
        let node_port_gone = position(&ops, |op| matches!(op, Op::DeleteService(k) if k.slot == 0));
        assert!(removed < node_port_gone, "{ops:?}");
        assert!(position(&ops, is_lb_master) < position(&ops, |op| matches!(op, Op::PutExternal(..))));
        // The LoadBalancer IP stays and the node port goes: the index is as it was.
        assert!(Plan::between(&v2, &lb_only).steps().all(|step| !matches!(step.op, Op::PutExternal(..))));
        for (a, b) in [(&v1, &v2), (&v1, &lb_only), (&v2, &lb_only)] {
            check_both_ways(a, b);
        }
    }

    /// A node address that comes or goes adds or removes its index entries
    /// (one per node port of its family) and its nodes-map entry, nothing
    /// else; the plan's length counts them.
    #[test]
    fn a_node_address_that_comes_or_goes_changes_only_the_index() {
        let rules = [external("0.0.0.0:30080"), external("0.0.0.0:30080/udp"), external("[::]:30086")];
        let v1 = with_nodes(&Image::default(), &rules, &["203.0.113.2"]);
        let v2 = with_nodes(&v1, &rules, &["203.0.113.2", "198.51.100.1", "2001:db8:3::2"]);
        let plan = Plan::between(&v1, &v2);
        let ops: Vec<Op> = plan.steps().map(|step| step.op).collect();
        let nodes = ops.iter().filter(|op| matches!(op, Op::PutNodeAddress(_))).count();
        let entries = ops.iter().filter(|op| matches!(op, Op::PutExternal(..))).count();
        assert_eq!((nodes, entries, ops.len(), plan.len()), (2, 3, 5, 5), "{ops:?}");
        let ops: Vec<Op> = Plan::between(&v2, &v1).steps().map(|step| step.op).collect();
        let nodes = ops.iter().filter(|op| matches!(op, Op::DeleteNodeAddress(_))).count();
        let entries = ops.iter().filter(|op| matches!(op, Op::DeleteExternal(_))).count();
        assert_eq!((nodes, entries, ops.len()), (2, 3, 5), "{ops:?}");
        check_both_ways(&v1, &v2);
    }

    /// `status` counts a drifted index as drift and `load` repairs it: a
    /// deleted entry is written again, a stray one removed.
    #[test]
    fn repair_rebuilds_a_deleted_index_entry() {
        let rules = [external("0.0.0.0:30080"), external("198.18.1.40:80")];
        let image = with_nodes(&Image::default(), &rules, &["203.0.113.2", "198.51.100.1"]);
        let desired = MapContents::of(&image);
        let mut actual = desired.clone();
        let (&deleted, _) = actual.external.iter().next().unwrap();
        actual.external.remove(&deleted);
        let (&kept, &node_port) =
            actual.external.iter().find(|(_, master)| raw_to_addr(**master).is_unspecified()).unwrap();
        let stray = ExternalKey { addr: addr_to_raw("192.0.2.99".parse().unwrap()), ..kept };
        actual.external.insert(stray, node_port);
        let repair = Plan::repair(&actual, &desired);
        let ops: Vec<Op> = repair.steps().map(|step| step.op).collect();
        assert_eq!(ops, [Op::DeleteExternal(stray), Op::PutExternal(deleted, desired.external[&deleted])]);
        assert_eq!(repair.len(), 2);
        assert_eq!(run(&actual, ops), desired);
    }
}
