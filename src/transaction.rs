//! One change to the applied state, all or nothing: lock the state dir,
//! compile the new rules, plan the map writes, check every map has room,
//! write the maps (rolled back on failure), then record the new state. A
//! change killed half way through its map writes is repaired by the next.
//! Validation and the capacity check happen before the first map write, so
//! bad input changes nothing.
//!
//! `load` makes the maps hold the recorded state through the same write
//! protocol (`restore`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use anyhow::Result;

use crate::{
    bpf::{
        links,
        maps::{Datapath, EntryCounts, MapContents, ServiceId},
        pins::PinDir,
    },
    image::{Image, Touched},
    model::{Frontend, FrontendRule, Policy, Scope, SyncedObject},
    plan::{Plan, Summary, apply::Restored},
    progress::MapWrites,
    state::{AppliedState, Before, Recorded, StateDir, StateLock, SyncedChanges},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Apply,
    /// Validate and plan only: no map or state is touched, and the datapath
    /// need not be loaded.
    DryRun,
}

/// Requests-per-second limits by service id, as the rate-limits map holds them.
type RateLimits = BTreeMap<ServiceId, u32>;

/// What a change did (or, in a dry run, would do). The plan itself is not
/// kept: it borrows the images of `before` and `after`.
pub struct Outcome {
    /// The image before the change; at least the part the change touched
    /// (`Image::part`: the frontends of `touched` and their backends),
    /// which is all that differs from `after`'s.
    pub image_before: Image,
    /// The state after it, whose synced objects' journal says what the
    /// change did to them (`Synced::changes`).
    pub after: AppliedState,
    pub summary: Summary,
    pub map_writes: usize,
    /// The maps were repaired from what they held, after a change that was
    /// interrupted during its map writes.
    pub repaired: bool,
    /// The frontends whose rules the change removed or added: where the
    /// images of `before` and `after` can differ (`Touched::Frontends`).
    pub touched: BTreeSet<Frontend>,
    /// The synced objects of `after` that the change put in (new ones and
    /// those replacing others): the owners of the touched frontends, with
    /// the policies.
    pub came: Vec<Arc<SyncedObject>>,
    /// Where the record of `after` ends (None in a dry run, or before
    /// anything was ever recorded).
    recorded: Option<Recorded>,
}

/// The applied state a long-running balctl (`sync --watch`, `sync --kube
/// --watch`) keeps between its changes, as its last change left it, with
/// where its record ended. The next change starts from it when the record
/// still ends there (nobody else changed the state since: a change always
/// grows the log or writes a new snapshot), and reads the state again
/// otherwise: the agent does not read the whole state for every change.
#[derive(Default)]
pub struct Kept(Option<(AppliedState, Recorded)>);

impl Kept {
    /// Keeps what `outcome` applied (nothing after a dry run).
    pub fn keep(&mut self, outcome: Outcome) {
        let mut after = outcome.after;
        // What the change replaced need not live until the next one.
        after.synced.end_change();
        self.0 = outcome.recorded.map(|recorded| (after, recorded));
    }

    /// The state kept: what the last change applied.
    pub fn state(&self) -> Option<&AppliedState> {
        self.0.as_ref().map(|(state, _)| state)
    }

    /// The applied state, as kept if the record still ends where it did,
    /// else as read; with where its record ends, and whether it was kept.
    fn take(
        &mut self,
        state_dir: &StateDir,
        lock: &StateLock,
    ) -> Result<(AppliedState, Option<Recorded>, bool)> {
        match self.0.take() {
            Some((state, recorded)) if state_dir.recorded(lock)? == Some(recorded) => {
                Ok((state, Some(recorded), true))
            }
            _ => state_dir.read_for_change(lock).map(|(state, recorded)| (state, recorded, false)),
        }
    }
}

/// Whether a change starts from the state the caller's last change left
/// (`Kept`), the very objects: what the caller knows of them still holds.
/// Else the state was read (first change, or another balctl changed it
/// since).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Continued(pub bool);

/// Applies `change` to the current rules (policies and synced objects).
/// `change` validates and edits them; its error aborts everything.
pub fn change(
    pins: &PinDir,
    state_dir: &StateDir,
    mode: Mode,
    change: impl FnOnce(&mut AppliedState) -> Result<()>,
) -> Result<Outcome> {
    change_prepared(pins, state_dir, mode, &mut Kept::default(), || Ok(()), |state, (), _| change(state))
}

/// `change`, with what it needs that does not depend on the applied state
/// (reading input files) prepared on another thread while the state is
/// read: for a small change to a big state, each takes a good part of the
/// time. Both happen under the lock. `kept` is the state the caller's
/// last change applied, if it keeps it (`Kept`): it is taken, and given
/// back by `Kept::keep` with the outcome; `change` is told whether it
/// starts from it (`Continued`).
pub fn change_prepared<P: Send>(
    pins: &PinDir,
    state_dir: &StateDir,
    mode: Mode,
    kept: &mut Kept,
    prepare: impl FnOnce() -> Result<P> + Send,
    change: impl FnOnce(&mut AppliedState, P, Continued) -> Result<()>,
) -> Result<Outcome> {
    let lock = state_dir.lock()?;
    let (before, prepared) = std::thread::scope(|scope| {
        let prepared = scope.spawn(prepare);
        let before = kept.take(state_dir, &lock);
        (before, prepared.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let (before, recorded, continued) = before?;
    let AppliedState { policies: before_policies, synced, image: mut image_before } = before;
    // The change edits the objects (in place, journaled: they are not
    // copied), the policies and the settings the image is compiled from (a
    // sync sets whether loopback serves node ports); the image is compiled
    // after it.
    let mut after =
        AppliedState { policies: before_policies.clone(), synced, image: image_before.settings() };
    after.synced.begin_change();
    change(&mut after, prepared?, Continued(continued))?;
    let on_loopback = after.image.node_ports_on_loopback;
    let synced_changes = after.synced.changes();
    let RuleChanges { removed, added, node_addresses_changed } =
        rule_changes(&before_policies, &after.policies, &synced_changes);
    let came: Vec<Arc<SyncedObject>> = synced_changes.came().cloned().collect();
    // Whether the change left the policies and the synced objects as they were.
    let same_objects = before_policies == after.policies && synced_changes.is_empty();
    // Where the image can change: the plan, the record of the change and
    // its stale sockets look there only.
    let touched: BTreeSet<Frontend> =
        (removed.iter().copied().copied()).chain(added.iter().map(|(_, rule)| rule.frontend)).collect();
    let repairing = mode == Mode::Apply && state_dir.map_writes_interrupted()? && links::is_loaded(pins)?;
    image_before.tally_up();
    // A change of frontends that only the socket programs read, of
    // anything but node addresses and rate limits, is planned from the
    // part of the image it touched: the image is updated in place, not
    // copied, and nothing walks all of it.
    // A change of most of the image (a first sync) is planned whole: its
    // parts would be copies of nearly all of it.
    let in_part = !repairing
        && touched.len() <= image_before.frontends.len() / 2
        && !node_addresses_changed
        && on_loopback == image_before.node_ports_on_loopback
        && touched.iter().all(|frontend| frontend.scope != Scope::External)
        && !touched.iter().any(|frontend| rate_limited(&image_before, frontend))
        && !added.iter().any(|(_, rule)| rule.requests_per_second.is_some());
    // What the change did, however it was planned: one outcome is made of it.
    let (summary, map_writes, repaired, recorded) = 'planned: {
        if in_part {
            let start = image_before.entry_counts();
            let (image, parts) = image_before.updated_in_part(&touched, removed, added)?;
            after.image = image;
            image_before = parts.before;
            let plan = Plan::of_parts(&image_before, &parts.after, parts.layers);
            let (summary, map_writes) = (plan.summary, plan.len());
            let recorded = if mode == Mode::DryRun || (plan.is_empty() && same_objects) {
                recorded.filter(|_| mode == Mode::Apply)
            } else {
                let mut datapath = None;
                if !plan.is_empty() {
                    let opened = datapath.insert(Datapath::open(pins)?);
                    let cells = after.image.cells_needed();
                    write_maps(state_dir, &lock, opened, &plan, (start, cells), None, false)?;
                }
                let before = Before { policies: &before_policies, image: &image_before };
                Some(record(state_dir, &lock, recorded, before, &after, &touched, &plan, datapath, None)?)
            };
            break 'planned (summary, map_writes, false, recorded);
        }

        let node_addresses: Vec<IpAddr> = after.node_addresses().collect();
        after.image = image_before.clone().updated(removed, added, node_addresses, on_loopback)?;
        let between = Plan::between(&image_before, &after.image);
        let summary = between.summary;
        if mode == Mode::DryRun || (same_objects && after.image == image_before && !repairing) {
            break 'planned (summary, between.len(), false, recorded.filter(|_| mode == Mode::Apply));
        }

        // A balctl killed during its map writes left them between two states:
        // plan from what they hold, not from the recorded state.
        let mut datapath = None;
        let contents;
        let (plan, start) = if repairing {
            let opened = Datapath::open(pins)?;
            contents = (opened.read_contents()?, MapContents::of(&after.image));
            datapath = Some(opened);
            (Plan::repair(&contents.0, &contents.1), contents.0.entry_counts())
        } else {
            (between, image_before.entry_counts())
        };
        let map_writes = plan.len();

        // A change may touch only the state (an owner renamed): the maps, and
        // so the loaded datapath, are needed only when there is something to write.
        let rate_limits = (image_before.rate_limits(), after.image.rate_limits());
        if repairing || !plan.is_empty() || rate_limits.0 != rate_limits.1 {
            let opened = match datapath.as_mut() {
                Some(opened) => opened,
                None => datapath.insert(Datapath::open(pins)?),
            };
            let cells = after.image.cells_needed();
            write_maps(state_dir, &lock, opened, &plan, (start, cells), Some(&rate_limits), repairing)?;
        }
        let recorded = record(
            state_dir,
            &lock,
            recorded,
            Before { policies: &before_policies, image: &image_before },
            &after,
            &touched,
            &plan,
            datapath,
            Some((&rate_limits.0, repairing)),
        )?;
        (summary, map_writes, repairing, Some(recorded))
    };
    Ok(Outcome { image_before, after, summary, map_writes, repaired, touched, came, recorded })
}

/// Records `after`, the change from `before` that touched the frontends
/// of `touched`, once its map writes (`plan`, through `datapath` if it was
/// opened) are done; if that fails, undoes them, with the rate limits
/// (`rate_limits`: those the maps held, and whether the maps held a mix
/// an interrupted change left) if they were written, and fails.
#[allow(clippy::too_many_arguments, reason = "one protocol step with all it may have to undo")]
fn record(
    state_dir: &StateDir,
    lock: &StateLock,
    recorded: Option<Recorded>,
    before: Before,
    after: &AppliedState,
    touched: &BTreeSet<Frontend>,
    plan: &Plan,
    mut datapath: Option<Datapath>,
    rate_limits: Option<(&BTreeMap<ServiceId, u32>, bool)>,
) -> Result<Recorded> {
    match state_dir.write(lock, recorded, before, after, Touched::Frontends(touched)) {
        Ok(recorded) => {
            state_dir.end_map_writes(lock);
            Ok(recorded)
        }
        Err(err) => Err(match datapath.as_mut() {
            Some(datapath) => {
                let err = plan.revert(datapath, err);
                undone(state_dir, lock, datapath, rate_limits, err)
            }
            None => err,
        }),
    }
}

/// Whether `frontend` has a rate limit in `image`.
fn rate_limited(image: &Image, frontend: &Frontend) -> bool {
    image.frontends.get(frontend).is_some_and(|f| f.requests_per_second.is_some())
}

/// Makes the maps hold exactly the applied state, planned from what they
/// hold (`load`: after an unload, a crash or a manual edit). `attach` runs
/// first, under the lock with the state read: it loads and attaches the
/// datapath, and what it returns is handed back with the number of map
/// writes. All or nothing like `change`: if a write fails, the maps,
/// the rate limits included, and the state dir's in-progress mark are left
/// as they were. The state is not written: it is what the maps are made to hold.
pub fn restore<R>(
    pins: &PinDir,
    state_dir: &StateDir,
    attach: impl FnOnce(&AppliedState) -> Result<R>,
) -> Result<(R, usize)> {
    let lock = state_dir.lock()?;
    let state = state_dir.read()?;
    let attached = attach(&state)?;
    let interrupted = state_dir.map_writes_interrupted()?;
    let mut datapath = Datapath::open(pins)?;
    let actual = datapath.read_contents()?;
    let desired = MapContents::of(&state.image);
    let plan = Plan::repair(&actual, &desired);
    let rate_limits = (datapath.rate_limits()?, state.image.rate_limits());
    write_maps(
        state_dir,
        &lock,
        &mut datapath,
        &plan,
        (actual.entry_counts(), state.image.cells_needed()),
        Some(&rate_limits),
        interrupted,
    )?;
    // The maps now hold the recorded state, whatever an interrupted change left.
    state_dir.end_map_writes(&lock);
    Ok((attached, plan.len()))
}

/// The write protocol: check that every map has room at every step (from
/// `start`) and the counter arrays for the cells the image holds
/// (`cells`: one past the highest of each), mark the map writes begun, write the rate limits
/// (`rate_limits`: before and after), then run the plan. If a write fails,
/// what was written is undone (`undone`); the mark stays until the caller
/// has recorded what the maps hold.
fn write_maps(
    state_dir: &StateDir,
    lock: &StateLock,
    datapath: &mut Datapath,
    plan: &Plan,
    (start, cells): (EntryCounts, (u64, u64)),
    rate_limits: Option<&(RateLimits, RateLimits)>,
    keep_mark: bool,
) -> Result<()> {
    // Most changes fit by a bound of the plan's peak; the exact peak walks
    // every step of the plan (millions in a first sync of 100,000
    // services, 10 % of its time), and is told only when the bound does
    // not fit.
    if datapath.check_room(plan.entries_bound(start)).is_err() {
        datapath.check_room(plan.peak_entries(start))?;
    }
    datapath.check_cells(cells)?;
    state_dir.begin_map_writes(lock)?;
    let written = match rate_limits {
        Some((_, limits)) => datapath.write_rate_limits(limits),
        None => Ok(()),
    };
    let written = written.and_then(|()| plan.apply(datapath, &mut MapWrites::new(plan.len())));
    written
        .map_err(|err| undone(state_dir, lock, datapath, rate_limits.map(|(old, _)| (old, keep_mark)), err))
}

/// After map writes failed with `err` (the plan's writes undone as far as
/// they could be): puts back the rate limits the maps held, if they were
/// written (`rate_limits`, with `keep_mark`). If the maps are then as they
/// were and the state dir had no in-progress mark before (`keep_mark`
/// false: they did not hold a mix an interrupted change left), takes the
/// mark away: there is nothing for the next change to repair.
fn undone(
    state_dir: &StateDir,
    lock: &StateLock,
    datapath: &mut Datapath,
    rate_limits: Option<(&BTreeMap<ServiceId, u32>, bool)>,
    err: anyhow::Error,
) -> anyhow::Error {
    let (restored, keep_mark) = match rate_limits {
        Some((limits, keep_mark)) => (datapath.write_rate_limits(limits), keep_mark),
        None => (Ok(()), false),
    };
    match restored {
        Err(restore) => err.context(format!("restoring the rate limits failed too ({restore:#})")),
        Ok(()) => {
            if !keep_mark && err.downcast_ref::<Restored>().is_some() {
                state_dir.end_map_writes(lock);
            }
            err
        }
    }
}

/// What a change changed of the rules: the frontends of rules that
/// `after` no longer has, the rules (with their owners) it has anew, and
/// whether the node addresses changed.
struct RuleChanges<'a> {
    removed: Vec<&'a Frontend>,
    added: Vec<(String, &'a FrontendRule)>,
    node_addresses_changed: bool,
}

/// The rules of the policies (`before`, `after`) and of the synced objects
/// (`synced`: what the change did to them, as their journal says) that the
/// states before and after a change do not share: a sync that replaced
/// one object out of thousands compiles one.
fn rule_changes<'a>(
    before: &'a [Policy],
    after: &'a [Policy],
    synced: &SyncedChanges<'a>,
) -> RuleChanges<'a> {
    let policy = |policies: &'a [Policy], name: &str| policies.iter().find(|p| p.name == name);
    let mut removed = Vec::new();
    for old in before {
        if policy(after, &old.name) != Some(old) {
            removed.push(&old.rule.frontend);
        }
    }
    let mut added = Vec::new();
    for new in after {
        if policy(before, &new.name) != Some(new) {
            added.push((new.owner(), &new.rule));
        }
    }
    for object in synced.gone() {
        removed.extend(object.rules.iter().map(|rule| &rule.frontend));
    }
    for object in synced.came() {
        added.extend(object.rules.iter().map(|rule| (object.owner.clone(), rule)));
    }
    let addresses = |objects: &mut dyn Iterator<Item = &Arc<SyncedObject>>| {
        let mut addresses: Vec<IpAddr> = objects.flat_map(|o| o.addresses.iter().copied()).collect();
        addresses.sort_unstable();
        addresses
    };
    let node_addresses_changed = addresses(&mut synced.gone()) != addresses(&mut synced.came());
    RuleChanges { removed, added, node_addresses_changed }
}
