//! The planner target. An arbitrary history of changes (objects of rules
//! kept, removed and added, node addresses set) is compiled the way a
//! transaction compiles one (`Image::update` with what changed), and every
//! plan between two images is run step by step on a model of the maps,
//! starting from `MapContents::of(before)`. It must end at
//! `MapContents::of(after)`, keep every frontend pickable at every step
//! (the datapath reads a master's count, then a slot up to it, then the
//! slot's backend and membership), count a peak no lower than the model's,
//! and its undo writes, from any step, must give back the start. Ids must
//! never be reused. The external index must name only masters that exist
//! at every step, keep every entry the plan does not change, hold each
//! other at its old value, its new one or none, and end as the external
//! frontends and node addresses call for (`expected_index`, derived here
//! from the maps alone). Counter cells are each frontend's and
//! membership's own, never change hands within a change, and a slot's is
//! its membership's at every step (`check_cells`, `check_slot_cells`). Then `Plan::repair` from maps that drifted from
//! an earlier image must reach the last one without making a pickable
//! frontend unpickable, nor a sound index entry name a missing master, on
//! the way.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use arbitrary::{Arbitrary, Unstructured};
use balctl::{
    bpf::maps::{BackendId, EntryCounts, MapContents, Op, ServiceId},
    image::{
        BackendAddr, Image,
        raw::{addr_to_raw, raw_to_addr, service_key},
    },
    model::{
        AddressKind, BackendCheck, Frontend, FrontendRule, Probe, Protocol, RuleHealth, Scope,
        WhenAllUnhealthy,
    },
    plan::{Plan, Step},
};
use balctl_common::{
    Addr, Backend, ExternalKey, MembershipKey, NodeAddressKey, SCOPE_EXTERNAL, ServiceEntry, ServiceKey,
};

pub fn check(data: &[u8]) {
    if let Ok(case) = Case::arbitrary_take_rest(Unstructured::new(data)) {
        run(&case);
    }
}

#[derive(Arbitrary, Debug)]
struct Case {
    /// The ids the first image continues from: a state with a history.
    first_ids: (u8, u8),
    changes: Vec<Change>,
    /// How many steps of each plan run before they are undone.
    undo_after: u16,
    /// Which image the maps held before they drifted.
    drift_from: u8,
    drift: Vec<Drift>,
}

#[derive(Arbitrary, Debug)]
struct Change {
    /// Bit i: the i-th object stays (objects past the 32nd always stay).
    keep: u32,
    added: Vec<Vec<RuleSpec>>,
    /// The node addresses after the change.
    nodes: Vec<u8>,
    /// Whether node ports answer on IPv4 loopback after it.
    loopback: bool,
}

/// A rule over small pools of frontends and backends, so that changes
/// meet what earlier ones made.
#[derive(Arbitrary, Debug)]
struct RuleSpec {
    frontend: u8,
    backends: Vec<u8>,
    affinity: Option<u8>,
    local_only: bool,
    rate_limit: Option<u8>,
}

/// A change to the maps behind balctl's back (an index picks an entry).
#[derive(Arbitrary, Debug)]
enum Drift {
    RemoveService(u16),
    SetCount(u16, u8),
    SetSlotBackend(u16, u8),
    SetServiceId(u16, u8),
    AddSlot {
        frontend: u8,
        slot: u8,
        backend_id: u8,
    },
    RemoveBackend(u16),
    AddBackend {
        id: u8,
        backend: u8,
    },
    RemoveMembership(u16),
    AddMembership {
        service_id: u8,
        backend_id: u8,
    },
    RemoveNode(u16),
    AddNode(u8),
    RemoveExternal(u16),
    /// An index entry for a node address and a frontend's port and
    /// protocol, naming the frontend's address.
    AddExternal {
        frontend: u8,
        node: u8,
    },
}

/// A synced object: an owner and its rules.
struct Object {
    owner: String,
    rules: Vec<FrontendRule>,
}

fn run(case: &Case) {
    let mut image = Image::default();
    image.next_service_id = case.first_ids.0.into();
    image.next_backend_id = case.first_ids.1.into();
    let mut ids = Ids::default();
    let mut history = vec![image.clone()];
    let mut objects: Vec<Object> = Vec::new();
    let mut next_owner = 0;
    for change in &case.changes {
        let stays = |i: usize| i >= 32 || change.keep & (1 << i) != 0;
        let added: Vec<Object> = change
            .added
            .iter()
            .map(|rules| {
                next_owner += 1;
                Object { owner: format!("object/{next_owner}"), rules: rules.iter().map(rule).collect() }
            })
            .collect();
        let removed = objects.iter().enumerate().filter(|(i, _)| !stays(*i)).map(|(_, o)| o);
        let removed_frontends = removed.flat_map(|o| o.rules.iter().map(|r| &r.frontend));
        let added_rules = added.iter().flat_map(|o| o.rules.iter().map(|r| (o.owner.clone(), r)));
        let nodes = change.nodes.iter().map(|&n| node_address(n));
        // A refused change (a frontend claimed twice) changes nothing.
        let Ok(next) = image.update(removed_frontends, added_rules, nodes, change.loopback) else { continue };
        ids.check(&next);
        check_cells(&image, &next);
        check_transition(&image, &next, case.undo_after);
        objects = objects.into_iter().enumerate().filter(|(i, _)| stays(*i)).map(|(_, o)| o).collect();
        objects.extend(added);
        history.push(next.clone());
        image = next;
    }
    let drifted_from = &history[usize::from(case.drift_from) % history.len()];
    let actual = drifted(MapContents::of(drifted_from), &case.drift);
    check_repair(&actual, &MapContents::of(&image), case.undo_after);
}

/// The rule a spec stands for: backends unique and of the frontend's
/// family, as validated input has them. A backend byte's bit 5 says it
/// fails its health check (a rule with such a backend has one), the first
/// byte's bit 6 that the rule refuses when all of them fail, bit 7 that it
/// weighs 3 (it has three slots); the frontend byte's bit 7 that the rule
/// chooses by live connections.
fn rule(spec: &RuleSpec) -> FrontendRule {
    let frontend = frontend(spec.frontend);
    let v6 = frontend.address.is_ipv6();
    let mut backends: Vec<SocketAddr> = Vec::new();
    let mut down: Vec<SocketAddr> = Vec::new();
    let mut weights: Vec<u16> = Vec::new();
    for &b in &spec.backends {
        let backend = SocketAddr::new(host(v6, b & 7), [8080, 53, 80, 9090][usize::from(b >> 3 & 3)]);
        if !backends.contains(&backend) {
            backends.push(backend);
            weights.push(if b & 0x80 != 0 { 3 } else { 1 });
            if b & 0x20 != 0 {
                down.push(backend);
            }
        }
    }
    if weights.iter().all(|&weight| weight == 1) {
        weights.clear();
    }
    down.sort_unstable();
    let health = (!down.is_empty()).then(|| {
        let refuse = spec.backends.first().is_some_and(|b| b & 0x40 != 0);
        let when = if refuse { WhenAllUnhealthy::Refuse } else { WhenAllUnhealthy::FailOpen };
        let mut health = RuleHealth::new(BackendCheck::of(Probe::Tcp), when);
        health.down = down;
        Box::new(health)
    });
    FrontendRule {
        frontend,
        backends,
        local_backends: Vec::new(),
        affinity_seconds: spec.affinity.map(|s| u32::from(s) + 1),
        local_only: spec.local_only,
        requests_per_second: spec.rate_limit.map(|n| u32::from(n) + 1),
        address_kind: AddressKind::default(),
        external: balctl::model::ExternalBalancing::default(),
        health,
        weights,
        least_connections: spec.frontend & 0x80 != 0,
    }
}

/// Bits 0-1 pick one of three addresses or the unspecified one (a
/// NodePort), bit 2 the family, bit 3 the port, bit 4 the protocol, bits
/// 5-6 the layer (3: external, what the external index serves).
fn frontend(bits: u8) -> Frontend {
    let v6 = bits & 4 != 0;
    let address = match bits & 3 {
        3 if v6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        3 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        n => host(v6, 10 + n),
    };
    let scope =
        [Scope::Service, Scope::Balancing, Scope::Redirect, Scope::External][usize::from(bits >> 5 & 3)];
    Frontend {
        address,
        port: if bits & 8 != 0 { 53 } else { 80 },
        protocol: if bits & 16 != 0 { Protocol::Udp } else { Protocol::Tcp },
        scope,
    }
}

/// Host `n` of the test networks of a family.
fn host(v6: bool, n: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(n) + 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n + 1))
    }
}

/// Bits 0-2 pick a host, bit 3 the family; with bit 4, one of the
/// frontends' addresses instead (a LoadBalancer IP that is a node address).
fn node_address(n: u8) -> IpAddr {
    let v6 = n & 8 != 0;
    if n & 16 != 0 { host(v6, 10 + (n & 7) % 3) } else { host(v6, n & 7) }
}

/// Every id ever given out, with what it was given to: ids are never
/// reused, so an id always means the same frontend or backend.
#[derive(Default)]
struct Ids {
    services: BTreeMap<ServiceId, Frontend>,
    backends: BTreeMap<BackendId, BackendAddr>,
}

impl Ids {
    fn check(&mut self, image: &Image) {
        for (frontend, f) in &image.frontends {
            assert_ne!(f.service_id, 0, "{frontend}");
            assert!(f.service_id < image.next_service_id, "{frontend}: id {} not below next", f.service_id);
            let first = *self.services.entry(f.service_id).or_insert(*frontend);
            assert_eq!(first, *frontend, "service id {} reused", f.service_id);
            for id in &f.backends {
                assert!(image.backends.contains_key(id), "{frontend}: backend {id} missing");
            }
        }
        let service_ids: BTreeSet<ServiceId> = image.frontends.values().map(|f| f.service_id).collect();
        assert_eq!(service_ids.len(), image.frontends.len(), "two frontends share a service id");
        for (&id, &backend) in image.backends.iter() {
            assert!(id != 0 && id < image.next_backend_id, "backend id {id}");
            let first = *self.backends.entry(id).or_insert(backend);
            assert_eq!(first, backend, "backend id {id} reused");
        }
    }
}

/// Every frontend and every membership of `after` has a counter cell of
/// its own (a backend listed twice in a frontend has one), an owner in
/// both keeps its cell, and a cell that had another owner in `before` is
/// not handed out in the change: the entries that name it count into it
/// until the plan removes them.
fn check_cells(before: &Image, after: &Image) {
    let owners = |image: &Image| {
        let mut stats: BTreeMap<u32, Frontend> = BTreeMap::new();
        let mut hits: BTreeMap<u32, MembershipKey> = BTreeMap::new();
        for (frontend, f) in &image.frontends {
            assert_ne!(f.cell, 0, "{frontend} has no cell");
            let first = stats.insert(f.cell, *frontend);
            assert!(first.is_none(), "stats cell {} held by {first:?} and {frontend}", f.cell);
            assert_eq!(f.hit_cells.len(), f.backends.len(), "{frontend}: a hits cell per slot");
            let mut own: BTreeMap<MembershipKey, u32> = BTreeMap::new();
            for (key, cell) in f.memberships() {
                assert_ne!(cell, 0, "{frontend}: membership {key:?} has no cell");
                if *own.entry(key).or_insert(cell) != cell {
                    panic!("{frontend}: backend {} listed twice with two cells", key.backend_id);
                }
            }
            for (key, cell) in own {
                let first = hits.insert(cell, key);
                assert!(first.is_none(), "hits cell {cell} held by {first:?} and {key:?}");
            }
        }
        (stats, hits)
    };
    let (old, new) = (owners(before), owners(after));
    for (cell, frontend) in &new.0 {
        assert!(
            old.0.get(cell).is_none_or(|old| old == frontend),
            "stats cell {cell} changed hands in one change"
        );
    }
    for (cell, key) in &new.1 {
        assert!(old.1.get(cell).is_none_or(|old| old == key), "hits cell {cell} changed hands in one change");
    }
    // An owner that stays keeps its cell, and with it what it counted.
    let (new_stats, new_hits): (BTreeMap<_, _>, BTreeMap<_, _>) =
        (new.0.iter().map(|(c, f)| (*f, *c)).collect(), new.1.iter().map(|(c, k)| (*k, *c)).collect());
    for (cell, frontend) in &old.0 {
        assert!(new_stats.get(frontend).is_none_or(|c| c == cell), "{frontend} lost its stats cell {cell}");
    }
    for (cell, key) in &old.1 {
        assert!(new_hits.get(key).is_none_or(|c| c == cell), "{key:?} lost its hits cell {cell}");
    }
}

/// A slot counts into its membership's cell, whichever way it is chosen:
/// a slot entry's cell is its membership's (where both are there).
fn check_slot_cells(maps: &MapContents, step: &Step) {
    for (key, slot) in maps.services.iter().filter(|(key, _)| key.slot != 0) {
        let membership = MembershipKey { service_id: slot.service_id, backend_id: slot.backend_id };
        if let Some(&cell) = maps.membership.get(&membership) {
            assert_eq!(cell, slot.cell, "slot {key:?} and its membership count apart after {step:?}");
        }
    }
}

fn check_transition(before: &Image, after: &Image, undo_after: u16) {
    let plan = Plan::between(before, after);
    let (start, end) = (MapContents::of(before), MapContents::of(after));
    assert_eq!(plan.is_empty(), start == end, "an empty plan means no change");
    check_summary(&plan, before, after);
    let steps = walk(&plan);
    let mut maps = start.clone();
    let mut peak = start.entry_counts();
    assert_eq!(pickable(&maps, Membership::Required), masters(&maps), "the start is not consistent");
    assert_eq!(start.external, expected_index(&start), "the start's external index");
    for step in &steps {
        execute(&mut maps, &step.op);
        let broken: BTreeSet<ServiceKey> =
            masters(&maps).difference(&pickable(&maps, Membership::Required)).copied().collect();
        assert_eq!(broken, BTreeSet::new(), "frontends not pickable after {step:?}");
        assert_eq!(dangling(&maps), BTreeSet::new(), "index entries name missing masters after {step:?}");
        check_index_between(&start, &end, &maps, step);
        check_slot_cells(&maps, step);
        peak = max_counts(peak, maps.entry_counts());
    }
    assert_eq!(maps, end, "the plan does not end at the new image");
    assert_eq!(end.external, expected_index(&end), "the external index of the new image");
    check_peak(&plan, before.entry_counts(), peak);
    check_undo(&start, &steps, undo_after);
}

fn check_repair(actual: &MapContents, desired: &MapContents, undo_after: u16) {
    let plan = Plan::repair(actual, desired);
    assert_eq!(plan.is_empty(), actual == desired, "an empty repair means no drift");
    let steps = walk(&plan);
    let mut maps = actual.clone();
    let mut peak = actual.entry_counts();
    for step in &steps {
        // Drifted maps may hold frontends that cannot be picked; none that
        // can may stop being so. Memberships drifted too: only slots and
        // backends are required here.
        let before = pickable(&maps, Membership::Ignored);
        let dangling_before = dangling(&maps);
        execute(&mut maps, &step.op);
        let broken: BTreeSet<ServiceKey> = before
            .difference(&pickable(&maps, Membership::Ignored))
            .filter(|key| maps.services.contains_key(key))
            .copied()
            .collect();
        assert_eq!(broken, BTreeSet::new(), "frontends made unpickable by {step:?}");
        let newly: Vec<_> = dangling(&maps).difference(&dangling_before).copied().collect();
        assert!(newly.is_empty(), "index entries {newly:?} made to name missing masters by {step:?}");
        check_index_between(actual, desired, &maps, step);
        peak = max_counts(peak, maps.entry_counts());
    }
    assert_eq!(&maps, desired, "the repair does not end at the desired contents");
    check_peak(&plan, actual.entry_counts(), peak);
    check_undo(actual, &steps, undo_after);
}

/// The plan's steps, which every walk must give alike (undoing a failed
/// apply walks it again), as many as it says.
fn walk(plan: &Plan<'_>) -> Vec<Step> {
    let steps: Vec<Step> = plan.steps().collect();
    assert_eq!(steps.len(), plan.len(), "the plan's length");
    assert!(plan.steps().eq(steps.iter().cloned()), "two walks of the plan differ");
    steps
}

fn check_summary(plan: &Plan<'_>, before: &Image, after: &Image) {
    let count = |a: &Image, b: &Image| a.frontends.keys().filter(|f| !b.frontends.contains_key(f)).count();
    let changed =
        before.frontends.iter().filter(|(f, old)| after.frontends.get(f).is_some_and(|new| new != *old));
    let backends = |a: &Image, b: &Image| a.backends.keys().filter(|id| !b.backends.contains_key(id)).count();
    let summary = plan.summary;
    assert_eq!(
        (summary.frontends_added, summary.frontends_changed, summary.frontends_removed),
        (count(after, before), changed.count(), count(before, after)),
        "frontend counts in the summary"
    );
    assert_eq!(
        (summary.backends_added, summary.backends_removed),
        (backends(after, before), backends(before, after)),
        "backend counts in the summary"
    );
}

/// The capacity check relies on the plan's peak, or on its bound when
/// that fits: neither may be below what the maps really held at any step.
fn check_peak(plan: &Plan<'_>, start: EntryCounts, real: EntryCounts) {
    for (planned, what) in [(plan.peak_entries(start), "peak"), (plan.entries_bound(start), "bound")] {
        let fits = |planned: u64, real: u64| planned >= real;
        assert!(
            fits(planned.services, real.services)
                && fits(planned.backends, real.backends)
                && fits(planned.membership, real.membership)
                && fits(planned.nodes, real.nodes)
                && fits(planned.external, real.external)
                && fits(planned.maglev, real.maglev)
                && fits(planned.source_ranges, real.source_ranges),
            "planned {what} {planned:?} below the real {real:?}"
        );
    }
}

/// Runs the first steps, then their undo writes last first, as
/// `Datapath::apply` does when the next write fails: the start again.
fn check_undo(start: &MapContents, steps: &[Step], undo_after: u16) {
    let done = usize::from(undo_after) % (steps.len() + 1);
    let mut maps = start.clone();
    for step in &steps[..done] {
        execute(&mut maps, &step.op);
    }
    for step in steps[..done].iter().rev() {
        execute(&mut maps, &step.undo);
    }
    assert_eq!(&maps, start, "undoing {done} of {} steps does not restore the start", steps.len());
}

/// One map write, as `Datapath::execute` makes it.
fn execute(maps: &mut MapContents, op: &Op) {
    match *op {
        Op::PutBackend(id, backend) => {
            maps.backends.insert(id, backend);
        }
        Op::DeleteBackend(id) => {
            maps.backends.remove(&id);
        }
        Op::PutMembership(key, cell) => {
            maps.membership.insert(key, cell);
        }
        Op::DeleteMembership(key) => {
            maps.membership.remove(&key);
        }
        Op::PutService(key, entry) => {
            maps.services.insert(key, entry);
        }
        Op::DeleteService(key) => {
            maps.services.remove(&key);
        }
        Op::PutNodeAddress(key) => {
            maps.node_addresses.insert(key);
        }
        Op::DeleteNodeAddress(key) => {
            maps.node_addresses.remove(&key);
        }
        Op::PutExternal(key, master) => {
            maps.external.insert(key, master);
        }
        Op::DeleteExternal(key) => {
            maps.external.remove(&key);
        }
        Op::PutMaglev(key, chunk) => {
            maps.maglev.insert(key, chunk);
        }
        Op::DeleteMaglev(key) => {
            maps.maglev.remove(&key);
        }
        Op::PutSourceRange(key) => {
            maps.source_ranges.insert(key);
        }
        Op::DeleteSourceRange(key) => {
            maps.source_ranges.remove(&key);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Membership {
    Required,
    Ignored,
}

/// The master entries (slot 0) of the services map.
fn masters(maps: &MapContents) -> BTreeSet<ServiceKey> {
    maps.services.keys().filter(|key| key.slot == 0).copied().collect()
}

/// The masters the datapath can pick a backend of, whichever slot up to
/// the count it draws: the slot is there with its copy of the backend, the
/// backend is in the backends map too (sticky choices look it up there),
/// and (when required) it is a member of the master's service.
fn pickable(maps: &MapContents, membership: Membership) -> BTreeSet<ServiceKey> {
    let usable = |master: &ServiceEntry, slot: &ServiceEntry| {
        slot.backend.proto != Backend::NONE.proto
            && maps.backends.get(&slot.backend_id) == Some(&slot.backend)
            && (membership == Membership::Ignored
                || maps.membership.contains_key(&MembershipKey {
                    service_id: master.service_id,
                    backend_id: slot.backend_id,
                }))
    };
    maps.services
        .iter()
        .filter(|(key, master)| {
            key.slot == 0
                && (1..=master.count).all(|slot| {
                    maps.services.get(&ServiceKey { slot, ..**key }).is_some_and(|s| usable(master, s))
                })
        })
        .map(|(key, _)| *key)
        .collect()
}

/// The index entries (key and the master's address) whose master is not
/// in the services map.
fn dangling(maps: &MapContents) -> BTreeSet<(ExternalKey, Addr)> {
    (maps.external.iter())
        .filter(|(key, master)| !maps.services.contains_key(&key.master(**master)))
        .map(|(&key, &master)| (key, master))
        .collect()
}

/// A plan from `start` to `end`, at one of its steps (`maps`): an index
/// entry alike at both ends is there; one that changes is at its value
/// of either end, or absent (while it moves from a master that goes to
/// one that comes).
fn check_index_between(start: &MapContents, end: &MapContents, maps: &MapContents, step: &Step) {
    let keys: BTreeSet<&ExternalKey> = start.external.keys().chain(end.external.keys()).collect();
    for key in keys {
        let (from, to, now) = (start.external.get(key), end.external.get(key), maps.external.get(key));
        let fine = if from == to { now == from } else { now.is_none() || now == from || now == to };
        assert!(fine, "index entry {key:?} is {now:?} (from {from:?} to {to:?}) after {step:?}");
    }
    let strays: Vec<_> = maps.external.keys().filter(|key| !start.external.contains_key(key)).collect();
    let strays: Vec<_> = strays.into_iter().filter(|key| !end.external.contains_key(key)).collect();
    assert!(strays.is_empty(), "index entries {strays:?} in neither end after {step:?}");
}

/// The external index the maps call for, from their external masters and
/// node addresses: a master of an address serves it; a node port (the
/// unspecified address) serves every node address of its family where no
/// master of that address, port and protocol is.
fn expected_index(maps: &MapContents) -> BTreeMap<ExternalKey, Addr> {
    let external = || maps.services.keys().filter(|key| key.slot == 0 && key.scope == SCOPE_EXTERNAL);
    let called = |addr: Addr, master: &ServiceKey| ExternalKey {
        addr,
        port: master.port,
        proto: master.proto,
        _pad: 0,
    };
    let mut index = BTreeMap::new();
    for master in external() {
        let address = raw_to_addr(master.addr);
        if !address.is_unspecified() {
            index.insert(called(master.addr, master), master.addr);
            continue;
        }
        // The loopback key says node ports answer on loopback, to sockets:
        // no packet from outside is for it.
        let nodes = (maps.node_addresses.iter())
            .filter(|&&node| node != NodeAddressKey::IPV4_LOOPBACK)
            .map(|node| raw_to_addr(node.addr));
        for node in nodes.filter(|node| node.is_ipv4() == address.is_ipv4() && !node.is_unspecified()) {
            let exact = ServiceKey { addr: addr_to_raw(node), ..*master };
            if !maps.services.contains_key(&exact) {
                index.insert(called(addr_to_raw(node), master), master.addr);
            }
        }
    }
    index
}

fn max_counts(a: EntryCounts, b: EntryCounts) -> EntryCounts {
    EntryCounts {
        services: a.services.max(b.services),
        backends: a.backends.max(b.backends),
        membership: a.membership.max(b.membership),
        nodes: a.nodes.max(b.nodes),
        external: a.external.max(b.external),
        maglev: a.maglev.max(b.maglev),
        source_ranges: a.source_ranges.max(b.source_ranges),
    }
}

/// `maps` after `drift`.
fn drifted(mut maps: MapContents, drift: &[Drift]) -> MapContents {
    for change in drift {
        match *change {
            Drift::RemoveService(i) => {
                if let Some(key) = nth(maps.services.keys(), i) {
                    maps.services.remove(&key);
                }
            }
            Drift::SetCount(i, count) => edit_service(&mut maps, i, |e| e.count = count.into()),
            Drift::SetSlotBackend(i, id) => edit_service(&mut maps, i, |e| e.backend_id = id.into()),
            Drift::SetServiceId(i, id) => edit_service(&mut maps, i, |e| e.service_id = id.into()),
            Drift::AddSlot { frontend, slot, backend_id } => {
                let entry = ServiceEntry {
                    backend_id: backend_id.into(),
                    count: 0,
                    flags: 0,
                    service_id: 0,
                    affinity_timeout_sec: 0,
                    cell: 0,
                    backend: Backend::NONE,
                };
                maps.services.insert(service_key(&self::frontend(frontend), slot.into()), entry);
            }
            Drift::RemoveBackend(i) => {
                if let Some(id) = nth(maps.backends.keys(), i) {
                    maps.backends.remove(&id);
                }
            }
            Drift::AddBackend { id, backend } => {
                let address = SocketAddr::new(node_address(backend), 8080);
                let backend = BackendAddr { address, protocol: Protocol::Tcp, local: false };
                maps.backends.insert(id.into(), backend.to_raw());
            }
            Drift::RemoveMembership(i) => {
                if let Some(key) = nth(maps.membership.keys(), i) {
                    maps.membership.remove(&key);
                }
            }
            Drift::AddMembership { service_id, backend_id } => {
                let key = MembershipKey { service_id: service_id.into(), backend_id: backend_id.into() };
                maps.membership.insert(key, 0);
            }
            Drift::RemoveNode(i) => {
                if let Some(key) = nth(maps.node_addresses.iter(), i) {
                    maps.node_addresses.remove(&key);
                }
            }
            Drift::AddNode(n) => {
                maps.node_addresses.insert(NodeAddressKey { addr: addr_to_raw(node_address(n)) });
            }
            Drift::RemoveExternal(i) => {
                if let Some(key) = nth(maps.external.keys(), i) {
                    maps.external.remove(&key);
                }
            }
            Drift::AddExternal { frontend, node } => {
                let master = service_key(&self::frontend(frontend), 0);
                let called = ExternalKey {
                    addr: addr_to_raw(node_address(node)),
                    port: master.port,
                    proto: master.proto,
                    _pad: 0,
                };
                maps.external.insert(called, master.addr);
            }
        }
    }
    maps
}

/// The `index`-th item (modulo their number), if there is any.
fn nth<'a, T: Copy + 'a>(items: impl ExactSizeIterator<Item = &'a T>, index: u16) -> Option<T> {
    let len = items.len();
    let mut items = items;
    if len == 0 { None } else { items.nth(usize::from(index) % len).copied() }
}

fn edit_service(maps: &mut MapContents, index: u16, edit: impl FnOnce(&mut ServiceEntry)) {
    if let Some(key) = nth(maps.services.keys(), index) {
        maps.services.entry(key).and_modify(edit);
    }
}
