//! `balctl sync -f PATH...`: make the applied state, and so the maps, hold
//! exactly what the state files say for their sources.

use std::{collections::BTreeSet, fmt, net::SocketAddr, sync::Arc};

use anyhow::Result;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde::Serialize;

use super::Context;
use crate::{
    agent::Agent,
    cli::SyncArgs,
    cluster, health,
    image::{FrontendImage, Image},
    input,
    inputs::{self, Inputs},
    model::{Frontend, HealthCheck, SyncedObject, ThisNode},
    output::print_structured,
    plan::Summary,
    stale_sockets::{self, StaleSockets},
    state::{AppliedState, Slot},
    transaction::{Kept, Mode, Outcome, change_prepared},
};

/// What a sync does with a change that would remove a large part of a
/// source's frontends at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removals {
    /// Applies it: a one-shot sync was asked for exactly this state.
    Apply,
    /// Refuses it with `Held`, changing nothing, when it would remove more
    /// than a quarter of a source's frontends: `sync --watch`, which may
    /// read a file that its writer has written only in part.
    HoldLarge,
}

/// A change refused under `Removals::HoldLarge`: per source, how many of
/// the frontends it has applied the change would remove.
#[derive(Debug)]
pub struct Held {
    pub sources: Vec<LargeRemoval>,
}

#[derive(Debug)]
pub struct LargeRemoval {
    pub source: String,
    pub removed: usize,
    pub applied: usize,
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|s| format!("{} would remove {} of its {} frontends", s.source, s.removed, s.applied))
            .collect();
        f.write_str(&sources.join("; "))
    }
}

impl std::error::Error for Held {}

pub fn run(ctx: &Context, args: &SyncArgs) -> Result<()> {
    let mut kept = Kept::default();
    run_with(ctx, args, Removals::Apply, None, &mut kept, None)?;
    // The process ends with this sync: freeing the state it applied, a
    // walk of every object, would only delay its exit (a twentieth of a
    // one-endpoint change at 10,000 services).
    std::mem::forget(kept);
    Ok(())
}

/// `run`, treating large removals from files as `removals` says, counting
/// the stale sockets in `agent`'s metrics if there is one, starting from
/// and keeping the state applied in `kept` (`transaction::Kept`), and
/// with `told` (a watch's), saying only the notes the last sync did not.
pub fn run_with(
    ctx: &Context,
    args: &SyncArgs,
    removals: Removals,
    agent: Option<&Agent>,
    kept: &mut Kept,
    told: Option<&mut NotesTold>,
) -> Result<()> {
    let this_node = this_node(args)?;
    let mode = if args.dry_run { Mode::DryRun } else { Mode::Apply };
    let mut notes = Vec::new();
    // What the agent's prober says of the checked backends, as of now.
    let live = agent.map(|agent| agent.health.live());
    // Inputs are read (files split, the API server listed) while the
    // applied state is read, and finished with it: unchanged objects are
    // kept from it. All under the state lock.
    let outcome = if args.kube {
        let list = || cluster::list_all(&args.api_server, &this_node.name);
        change_prepared(&ctx.pins, &ctx.state, mode, kept, list, |state, documents, _| {
            let documents: Vec<&cluster::Document> = documents.iter().collect();
            let inputs = inputs::from_cluster(&documents, &this_node, &state.synced, None)?;
            notes = replace(state, inputs, &this_node, None, live.as_ref())?.0;
            Ok(())
        })?
    } else {
        let gather = || inputs::gather(&args.filenames, &this_node, args.max_input_size);
        change_prepared(&ctx.pins, &ctx.state, mode, kept, gather, |state, gathered, _| {
            let inputs = gathered.read(&state.synced)?;
            check_removals(state, &inputs, removals)?;
            notes = replace(state, inputs, &this_node, None, live.as_ref())?.0;
            Ok(())
        })?
    };
    let sockets = if args.dry_run { None } else { destroy_stale_sockets(ctx, args, &outcome, agent) };
    let notes = match told {
        Some(told) => told.new_ones(notes),
        None => notes,
    };
    report(ctx, &outcome, args.dry_run, notes, sockets)?;
    if let Some(agent) = agent {
        agent.health.follow(&outcome);
    }
    kept.keep(outcome);
    Ok(())
}

/// The notes the last sync of a watch gave. A watch says a note when a
/// sync first gives it, not again while each sync gives it: every sync of
/// files reads them all, and every batch of a cluster watch the objects
/// that make nothing (a headless Service's note, for each of them, in
/// each batch). A note that goes and comes back is said again.
#[derive(Default)]
pub struct NotesTold(HashSet<String>);

impl NotesTold {
    /// Of a sync's `notes`, those the last sync did not give.
    pub fn new_ones(&mut self, notes: Vec<String>) -> Vec<String> {
        let new = notes.iter().filter(|note| !self.0.contains(*note)).cloned().collect();
        self.0 = notes.into_iter().collect();
        new
    }
}

/// After a change that took backends away from frontends, the connected
/// sockets pinned to them (src/stale_sockets.rs), counted in `agent`'s
/// metrics if there is one.
pub fn destroy_stale_sockets(
    ctx: &Context,
    args: &SyncArgs,
    outcome: &Outcome,
    agent: Option<&Agent>,
) -> Option<StaleSockets> {
    let sockets = stale_sockets::destroy(&ctx.pins, outcome, args.destroy_tcp_sockets)?;
    if let Some(agent) = agent {
        agent.stale_sockets(&sockets);
    }
    Some(sockets)
}

/// The health-check node ports of what `state` holds.
pub fn health_checks(state: &AppliedState) -> impl Iterator<Item = &HealthCheck> {
    state.synced.iter().filter_map(|object| object.health_check.as_ref())
}

/// Makes `state` hold exactly `inputs` for their sources, with where
/// `this_node` has node ports answer; returns the notes and the objects of
/// the inputs. An object that another source applied stays that source's:
/// a sync replaces only the objects of what it reads; and of those, only
/// the very objects of `part` if it is given (a cluster watch's batch
/// reads only the part of the cluster it changed: inputs::kube::Index). In
/// place: an object the inputs still have (by owner) takes its new value
/// where it is, the others replaced go, and new ones come after all, in
/// input order; so the state's order stays, and a change's record holds
/// what changed only (`state::change_log`). The checked rules of the
/// inputs and policies are first marked with the backends' health, as the
/// agent's prober (`live`) or else the state knows it (`health::mark`).
pub fn replace(
    state: &mut AppliedState,
    mut inputs: Inputs,
    this_node: &ThisNode,
    part: Option<&[Arc<SyncedObject>]>,
    live: Option<&health::Health>,
) -> Result<(Vec<String>, Vec<Arc<SyncedObject>>)> {
    health::mark(state, &mut inputs, live);
    state.image.node_ports_on_loopback = this_node.node_port_addresses.serve_loopback();
    let names: BTreeSet<String> = inputs.sources.iter().map(|s| s.name.clone()).collect();
    let ours = |object: &SyncedObject| names.contains(&object.source);
    let incoming_objects = || inputs.sources.iter().flat_map(|source| &source.objects);
    // In a whole sync, each object of the state that the inputs hold as it
    // is, with its index among them: one a sync kept without reading it
    // again, the very `Arc`, known by address. Its owner is the state's
    // already, where it is: only the others' owners are hashed and looked
    // for (10,000 strings twice in a one-endpoint change at 10,000).
    let same: Vec<Option<usize>> = match part {
        Some(_) => Vec::new(),
        None => {
            let at: HashMap<*const SyncedObject, usize> = (incoming_objects().enumerate())
                .map(|(index, object)| (Arc::as_ptr(&object.value), index))
                .collect();
            state.synced.iter().map(|object| at.get(&Arc::as_ptr(object)).copied()).collect()
        }
    };
    let is_same = |slot: usize| same.get(slot).is_some_and(Option::is_some);
    let mut placed = vec![false; incoming_objects().count()];
    for &index in same.iter().flatten() {
        placed[index] = true;
    }
    // An owner the part replaces, or one the state holds as it is, is no
    // other source's (the state never holds an owner twice): only new
    // owners are looked for elsewhere.
    let part_owners: HashSet<&str> = part.into_iter().flatten().map(|object| object.owner.as_str()).collect();
    let new_owners: HashSet<&str> = (incoming_objects().zip(&placed))
        .filter(|(object, same)| !**same && !part_owners.contains(object.value.owner.as_str()))
        .map(|(object, _)| object.value.owner.as_str())
        .collect();
    if !new_owners.is_empty() {
        let elsewhere: HashMap<&str, &str> = (state.synced.iter().enumerate())
            .filter(|&(slot, object)| !is_same(slot) && !ours(object))
            .filter(|(_, object)| new_owners.contains(object.owner.as_str()))
            .map(|(_, object)| (object.owner.as_str(), object.source.as_str()))
            .collect();
        for located in incoming_objects() {
            if let Some(other) = elsewhere.get(located.value.owner.as_str()) {
                return Err(input!(
                    "{}: {} is already applied from {other}; a sync replaces only the objects of what it \
                     reads, so remove it from one of them, or sync both in one run",
                    located.location,
                    located.value.owner
                ));
            }
        }
    }
    // Moved out, not copied: a count touched in every object is a cache
    // miss each, twice (the copy, and the drop of the inputs).
    let Inputs { sources, notes } = inputs;
    let incoming: Vec<Arc<SyncedObject>> =
        sources.into_iter().flat_map(|source| source.objects).map(|located| located.value).collect();
    let by_owner: HashMap<&str, usize> = (incoming.iter().enumerate())
        .filter(|&(index, _)| !placed[index])
        .map(|(index, object)| (object.owner.as_str(), index))
        .collect();
    let mut place = |slot: &Arc<SyncedObject>| match by_owner.get(slot.owner.as_str()) {
        Some(&index) => {
            placed[index] = true;
            Slot::Replace(Arc::clone(&incoming[index]))
        }
        None => Slot::Remove,
    };
    match part {
        // The few objects of the part, replaced where they are: the state
        // is not copied, and the change's journal says what it replaced.
        Some(part) => {
            // A few compared one by one; more, hashed.
            let many: HashSet<*const SyncedObject> =
                if part.len() > 8 { part.iter().map(Arc::as_ptr).collect() } else { HashSet::default() };
            let in_part = |slot: &Arc<SyncedObject>| {
                if part.len() > 8 {
                    many.contains(&Arc::as_ptr(slot))
                } else {
                    part.iter().any(|object| Arc::ptr_eq(object, slot))
                }
            };
            state.synced.edit(|slot| if in_part(slot) { place(slot) } else { Slot::Keep });
            let unplaced = incoming.iter().zip(&placed).filter(|(_, placed)| !**placed);
            state.synced.append(unplaced.map(|(object, _)| Arc::clone(object)));
        }
        None => {
            let mut synced = Vec::with_capacity(state.synced.len().max(incoming.len()));
            for (slot, object) in state.synced.iter().enumerate() {
                if is_same(slot) || !ours(object) {
                    synced.push(Arc::clone(object));
                } else if let Slot::Replace(object) = place(object) {
                    synced.push(object);
                }
            }
            let unplaced = incoming.iter().zip(&placed).filter(|(_, placed)| !**placed);
            synced.extend(unplaced.map(|(object, _)| Arc::clone(object)));
            state.synced.rebuild(synced);
        }
    }
    Ok((notes, incoming))
}

/// Under `Removals::HoldLarge`, fails with `Held` if `inputs` would remove
/// a large part of a source's frontends from `state` (the state applied).
fn check_removals(state: &AppliedState, inputs: &Inputs, removals: Removals) -> Result<()> {
    if removals == Removals::HoldLarge {
        let large = large_removals(state, inputs);
        if !large.is_empty() {
            return Err(Held { sources: large }.into());
        }
    }
    Ok(())
}

/// The sources of `inputs` that would lose more than a quarter of the
/// frontends they have applied in `state` (strictly more: one of four goes
/// at once). A frontend counts as lost when its source no longer has it.
fn large_removals(state: &AppliedState, inputs: &Inputs) -> Vec<LargeRemoval> {
    let mut applied: HashMap<&str, HashSet<&Frontend>> = HashMap::default();
    for object in &state.synced {
        applied.entry(object.source.as_str()).or_default().extend(object.rules.iter().map(|r| &r.frontend));
    }
    inputs
        .sources
        .iter()
        .filter_map(|source| {
            let applied = applied.get(source.name.as_str())?;
            let kept: HashSet<&Frontend> =
                source.objects.iter().flat_map(|o| o.value.rules.iter().map(|r| &r.frontend)).collect();
            let removed = applied.difference(&kept).count();
            (removed * 4 > applied.len()).then(|| LargeRemoval {
                source: source.name.clone(),
                removed,
                applied: applied.len(),
            })
        })
        .collect()
}

/// The node the sync is for: its name (the hostname by default) and
/// which of the Nodes' addresses serve node ports.
pub fn this_node(args: &SyncArgs) -> Result<ThisNode> {
    let name = match &args.node_name {
        Some(name) => name.clone(),
        None => hostname()?,
    };
    Ok(ThisNode { name, node_port_addresses: args.nodeport_addresses.clone().unwrap_or_default() })
}

/// The node name Kubernetes uses by default: the hostname.
fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| anyhow::anyhow!("cannot read the hostname ({e}); pass --node-name"))?;
    Ok(name.trim().to_owned())
}

/// One frontend that the sync adds, changes or removes.
#[derive(Serialize)]
struct FrontendChange {
    change: &'static str,
    frontend: String,
    owner: String,
    /// The backends after the change (before it, for a removal).
    backends: Vec<SocketAddr>,
}

#[derive(Serialize)]
struct SyncReport {
    dry_run: bool,
    summary: Summary,
    map_writes: usize,
    /// The maps were repaired from what they held: an earlier change was
    /// interrupted during its map writes.
    repaired: bool,
    changes: Vec<FrontendChange>,
    /// What the input held but the sync did not apply, and why.
    notes: Vec<String>,
    /// The connected sockets of backends the change took away from their
    /// frontends: absent when it took none away.
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_sockets: Option<StaleSockets>,
}

/// The frontends a change added, changed or removed, among those it
/// touched (`Outcome::touched`): the images differ nowhere else.
fn changes(before: &Image, after: &Image, touched: &BTreeSet<Frontend>) -> Vec<FrontendChange> {
    let frontends = touched.iter();
    let describe = |change, frontend: &Frontend, image: &Image, f: &FrontendImage| FrontendChange {
        change,
        frontend: frontend.to_string(),
        owner: f.owner.clone(),
        backends: f.backends.iter().filter_map(|id| image.backends.get(id)).map(|b| b.address).collect(),
    };
    frontends
        .into_iter()
        .filter_map(|frontend| match (before.frontends.get(frontend), after.frontends.get(frontend)) {
            (None, Some(new)) => Some(describe("add", frontend, after, new)),
            (Some(old), None) => Some(describe("remove", frontend, before, old)),
            (Some(old), Some(new)) if old != new => Some(describe("change", frontend, after, new)),
            _ => None,
        })
        .collect()
}

pub fn report(
    ctx: &Context,
    outcome: &Outcome,
    dry_run: bool,
    notes: Vec<String>,
    stale_sockets: Option<StaleSockets>,
) -> Result<()> {
    // The changed frontends are listed only where they are printed: a
    // first sync's are all of them.
    let listed = !ctx.output.is_table() || dry_run || ctx.verbose > 0;
    let (before, after, touched) = (&outcome.image_before, &outcome.after.image, &outcome.touched);
    let any_change =
        || touched.iter().any(|frontend| before.frontends.get(frontend) != after.frontends.get(frontend));
    let changed = outcome.summary != Summary::default() || any_change();
    let report = SyncReport {
        dry_run,
        summary: outcome.summary,
        map_writes: outcome.map_writes,
        repaired: outcome.repaired,
        changes: if listed { changes(before, after, touched) } else { Vec::new() },
        notes,
        stale_sockets,
    };
    if !ctx.output.is_table() {
        return print_structured(ctx.output, &report);
    }
    for note in &report.notes {
        ctx.say(format!("note: {note}"));
    }
    if report.repaired {
        ctx.say(format!(
            "note: an earlier change was interrupted during its map writes; \
             the maps were repaired from what they held ({} map writes)",
            report.map_writes
        ));
    }
    if dry_run || ctx.verbose > 0 {
        for change in &report.changes {
            let sign = match change.change {
                "add" => '+',
                "remove" => '-',
                _ => '~',
            };
            let backends: Vec<String> = change.backends.iter().map(ToString::to_string).collect();
            let backends =
                if backends.is_empty() { "(none: rejects)".to_owned() } else { backends.join(", ") };
            ctx.say(format!("{sign} {}  {}  -> {backends}", change.frontend, change.owner));
        }
    }
    if !changed {
        ctx.say("sync: no changes");
    } else if dry_run {
        ctx.say(format!("sync (dry run, nothing changed): {}", report.summary));
    } else {
        ctx.say(format!("sync: {} ({} map writes)", report.summary, report.map_writes));
    }
    if let Some(sockets) = report.stale_sockets.as_ref().filter(|s| s.any()) {
        ctx.say(format!("sync: {sockets}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, fs, path::PathBuf};

    use super::*;
    use crate::{draws::Draws, transaction::Continued};

    /// A scratch directory of TOML inputs, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("balctl-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// Writes `file` with one service per address (one frontend each),
        /// and reads it.
        fn read(&self, file: &str, addresses: &[&str]) -> Inputs {
            let text: String = addresses
                .iter()
                .map(|a| {
                    format!(
                        "[[service]]\nname = \"s{a}\"\naddresses = [\"{a}\"]\nbackends = [\"192.0.2.2\"]\n\
                         ports = [{{ port = 80 }}]\n"
                    )
                })
                .collect();
            let path = self.0.join(file);
            fs::write(&path, if text.is_empty() { "# none\n".to_owned() } else { text }).unwrap();
            inputs::gather(&[path], &ThisNode::named("node-a"), inputs::InputLimit::default())
                .unwrap()
                .read(&[])
                .unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn removals(state: &AppliedState, inputs: &Inputs) -> Vec<(usize, usize)> {
        large_removals(state, inputs).iter().map(|r| (r.removed, r.applied)).collect()
    }

    #[test]
    fn a_watch_says_a_note_when_a_sync_first_gives_it() {
        let notes = |list: &[&str]| list.iter().map(|note| (*note).to_owned()).collect::<Vec<_>>();
        let mut told = NotesTold::default();
        assert_eq!(told.new_ones(notes(&["a", "b"])), notes(&["a", "b"]));
        assert_eq!(told.new_ones(notes(&["a", "b", "c"])), notes(&["c"]));
        assert_eq!(told.new_ones(notes(&["c"])), notes(&[]));
        assert_eq!(told.new_ones(notes(&["a", "c"])), notes(&["a"]), "a went and came back");
    }

    #[test]
    fn more_than_a_quarter_of_a_sources_frontends_is_a_large_removal() {
        let scratch = Scratch::new("large-removals");
        let four = ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4"];
        let mut state = AppliedState::default();
        replace(&mut state, scratch.read("a.toml", &four), &ThisNode::named("node-a"), None, None).unwrap();
        replace(&mut state, scratch.read("b.toml", &["198.18.1.1"]), &ThisNode::named("node-a"), None, None)
            .unwrap();

        assert_eq!(removals(&state, &scratch.read("a.toml", &four[..3])), []);
        assert_eq!(removals(&state, &scratch.read("a.toml", &four[..2])), [(2, 4)]);
        assert_eq!(removals(&state, &scratch.read("a.toml", &[])), [(4, 4)]);
        // New addresses for all: every applied frontend goes.
        let moved = ["198.18.2.1", "198.18.2.2", "198.18.2.3", "198.18.2.4"];
        assert_eq!(removals(&state, &scratch.read("a.toml", &moved)), [(4, 4)]);
        // Added frontends do not make up for removed ones.
        let grown = ["198.18.0.1", "198.18.0.2", "198.18.2.1", "198.18.2.2", "198.18.2.3"];
        assert_eq!(removals(&state, &scratch.read("a.toml", &grown)), [(2, 4)]);
        // A source with nothing applied removes nothing.
        assert_eq!(removals(&state, &scratch.read("c.toml", &[])), []);
        // Each source counts alone: b's one frontend is all of b.
        assert_eq!(removals(&state, &scratch.read("b.toml", &[])), [(1, 1)]);

        let cut = scratch.read("a.toml", &four[..1]);
        check_removals(&state, &cut, Removals::Apply).unwrap();
        let held = check_removals(&state, &cut, Removals::HoldLarge).unwrap_err();
        let message = held.downcast_ref::<Held>().unwrap().to_string();
        assert!(message.ends_with("a.toml would remove 3 of its 4 frontends"), "{message}");
    }

    fn json_document(label: String, json: serde_json::Value) -> cluster::Document {
        cluster::Document::new(label, serde_json::to_vec(&json).unwrap())
    }

    /// One random object of a small cluster: Services (one headless, one
    /// kube-dns a LocalRedirectPolicy redirects), their slices (some with
    /// topology hints, so they read this node's Node), Nodes in zones, the
    /// policy and its Pods.
    fn random_object(draws: &mut Draws) -> (String, Option<serde_json::Value>) {
        use serde_json::json;
        let n = draws.below(6);
        let gone = draws.below(8) == 0;
        let (label, json) = match draws.below(7) {
            0 | 1 => {
                let ip = if n == 5 {
                    "None".to_owned()
                } else {
                    format!("198.18.1.{}", draws.below(4) + n * 4 + 1)
                };
                let ports =
                    json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "http", "port": 80}]);
                let json = json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("s{n}"), "namespace": "ns"},
                    "spec": {"clusterIP": ip, "ports": ports}});
                (format!("Service ns/s{n} (from the API server)"), json)
            }
            2 | 3 => {
                let slice = draws.below(2);
                let hinted = draws.below(2) == 0;
                let endpoints: Vec<serde_json::Value> = (0..draws.below(3) + 1)
                    .map(|e| {
                        let address = format!("192.0.2.{}", draws.below(8) + 10 * e + 1);
                        let zone = if draws.below(2) == 0 { "a" } else { "b" };
                        if hinted {
                            json!({"addresses": [address], "hints": {"forZones": [{"name": zone}]}})
                        } else {
                            json!({"addresses": [address]})
                        }
                    })
                    .collect();
                let json = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("s{n}-{slice}"), "namespace": "ns",
                                 "labels": {"kubernetes.io/service-name": format!("s{}", (n + draws.below(2)) % 6)}},
                    "addressType": "IPv4", "endpoints": endpoints,
                    "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "http", "port": 8080}]});
                (format!("EndpointSlice ns/s{n}-{slice} (from the API server)"), json)
            }
            4 => {
                let name = if draws.below(2) == 0 { "node-a" } else { "node-b" };
                let zone = if draws.below(2) == 0 { "a" } else { "b" };
                let json = json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
                    "status": {"addresses": [{"type": "InternalIP", "address": format!("192.0.2.{}", 100 + draws.below(3))}]}});
                (format!("Node {name} (from the API server)"), json)
            }
            5 => {
                let service = format!("s{n}");
                let json = json!({"apiVersion": "balancing.elf.io/v1beta1", "kind": "LocalRedirectPolicy",
                    "metadata": {"name": "local", "namespace": "ns"},
                    "spec": {"frontend": {"serviceMatcher": {"namespace": "ns", "serviceName": service,
                                                             "toPorts": [{"name": "dns"}]}},
                             "backend": {"endpointSelector": {"matchLabels": {"app": "cache"}},
                                         "toPorts": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}});
                ("LocalRedirectPolicy ns/local (from the API server)".to_owned(), json)
            }
            _ => {
                let json = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("cache-{}", n % 2), "namespace": "ns", "labels": {"app": "cache"}},
                    "spec": {"nodeName": "node-a"},
                    "status": {"phase": "Running", "podIP": format!("192.0.2.{}", 50 + draws.below(3))}});
                (format!("Pod ns/cache-{} (from the API server)", n % 2), json)
            }
        };
        (label, (!gone).then_some(json))
    }

    /// The objects of a state by value, in order.
    fn by_value(state: &AppliedState) -> Vec<SyncedObject> {
        state.synced.iter().map(|object| (**object).clone()).collect()
    }

    /// A cluster watch reads only what a batch changed (inputs::kube::Index)
    /// and applies exactly what reading the whole cluster applies: the
    /// same objects in the same order, the same notes, the same errors.
    #[test]
    fn a_watch_batch_reads_only_what_changed_and_applies_what_a_full_read_does() {
        let this_node = ThisNode::named("node-a");
        let mut draws = Draws(0x9e37_79b9_7f4a_7c15);
        let mut documents: BTreeMap<String, cluster::Document> = BTreeMap::new();
        let mut changed: BTreeMap<String, Option<cluster::Document>> = BTreeMap::new();
        let mut index = inputs::kube::Index::new(&this_node, inputs::CLUSTER_SOURCE);
        let (mut incremental, mut full) = (AppliedState::default(), AppliedState::default());
        let (mut applied, mut partial, mut failed) = (0, 0, 0);
        for batch in 0..400 {
            for _ in 0..draws.below(3) + 1 {
                let (label, json) = random_object(&mut draws);
                let old = match json {
                    Some(json) => documents.insert(label.clone(), json_document(label.clone(), json)),
                    None => documents.remove(&label),
                };
                changed.entry(label).or_insert(old);
            }
            // Now and then another balctl changes the state: read anew.
            if batch % 97 == 96 {
                incremental.synced = incremental.synced.iter().map(|o| Arc::new((**o).clone())).collect();
            }

            let every: Vec<&cluster::Document> = documents.values().collect();
            let whole = inputs::from_cluster(&every, &this_node, &full.synced, None)
                .and_then(|inputs| replace(&mut full.clone(), inputs, &this_node, None, None).map(|r| r.0));

            let continued = Continued(batch % 97 != 96);
            let selection = index.select(&documents, &changed, &incremental.synced, continued, &this_node);
            partial += usize::from(selection.replaced.is_some());
            let mut next = incremental.clone();
            // As the watch reads: through what documents parsed to before.
            let part = selection.replaced.is_some().then_some(selection.previous.as_slice());
            let parsed = index.parsed_for(&selection);
            let read = inputs::from_cluster(&selection.documents, &this_node, &selection.previous, parsed)
                .and_then(|inputs| replace(&mut next, inputs, &this_node, part, None));
            match (whole, read) {
                (Ok(notes), Ok((read_notes, made))) => {
                    let every: Vec<&cluster::Document> = documents.values().collect();
                    let inputs = inputs::from_cluster(&every, &this_node, &full.synced, None).unwrap();
                    replace(&mut full, inputs, &this_node, None, None).unwrap();
                    assert_eq!(by_value(&next), by_value(&full), "batch {batch}");
                    assert_eq!(read_notes, notes, "batch {batch}");
                    index.applied(&documents, &changed, selection.replaced, &made, &next.synced);
                    incremental = next;
                    changed.clear();
                    applied += 1;
                }
                (Err(whole), Err(read)) => {
                    assert_eq!(read.to_string(), whole.to_string(), "batch {batch}");
                    failed += 1;
                }
                (whole, read) => panic!("batch {batch}: a full read gives {whole:?}, a partial one {read:?}"),
            }
        }
        // The batches were of every kind.
        assert!(
            applied > 200 && failed > 5 && partial > 300,
            "{applied} applied, {failed} failed, {partial} partial"
        );
        assert!(by_value(&incremental).len() > 5);
    }
}
