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
    sync::Arc,
};

use anyhow::Result;
use rustc_hash::FxHashSet as HashSet;

use crate::{
    bpf::{
        links,
        maps::{Datapath, EntryCounts, MapContents, ServiceId},
        pins::PinDir,
    },
    image::Touched,
    model::{Frontend, FrontendRule, SyncedObject},
    plan::{Plan, Summary, apply::Restored},
    progress::MapWrites,
    state::{AppliedState, Recorded, StateDir, StateLock},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Apply,
    /// Validate and plan only: no map or state is touched, and the datapath
    /// need not be loaded.
    DryRun,
}

/// What a change did (or, in a dry run, would do). The plan itself is not
/// kept: it borrows the images of `before` and `after`.
pub struct Outcome {
    pub before: AppliedState,
    pub after: AppliedState,
    pub summary: Summary,
    pub map_writes: usize,
    /// The maps were repaired from what they held, after a change that was
    /// interrupted during its map writes.
    pub repaired: bool,
    /// The frontends whose rules the change removed or added: where the
    /// images of `before` and `after` can differ (`Touched::Frontends`).
    pub touched: BTreeSet<Frontend>,
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
        self.0 = outcome.recorded.map(|recorded| (outcome.after, recorded));
    }

    /// The state kept: what the last change applied.
    pub fn state(&self) -> Option<&AppliedState> {
        self.0.as_ref().map(|(state, _)| state)
    }

    /// The applied state, as kept if the record still ends where it did,
    /// else as read; with where its record ends.
    fn take(&mut self, state_dir: &StateDir, lock: &StateLock) -> Result<(AppliedState, Option<Recorded>)> {
        match self.0.take() {
            Some((state, recorded)) if state_dir.recorded(lock)? == Some(recorded) => {
                Ok((state, Some(recorded)))
            }
            _ => state_dir.read_for_change(lock),
        }
    }
}

/// Applies `change` to the current rules (policies and synced objects).
/// `change` validates and edits them; its error aborts everything.
pub fn change(
    pins: &PinDir,
    state_dir: &StateDir,
    mode: Mode,
    change: impl FnOnce(&mut AppliedState) -> Result<()>,
) -> Result<Outcome> {
    change_prepared(pins, state_dir, mode, &mut Kept::default(), || Ok(()), |state, ()| change(state))
}

/// `change`, with what it needs that does not depend on the applied state
/// (reading input files) prepared on another thread while the state is
/// read: for a small change to a big state, each takes a good part of the
/// time. Both happen under the lock. `kept` is the state the caller's
/// last change applied, if it keeps it (`Kept`): it is taken, and given
/// back by `Kept::keep` with the outcome.
pub fn change_prepared<P: Send>(
    pins: &PinDir,
    state_dir: &StateDir,
    mode: Mode,
    kept: &mut Kept,
    prepare: impl FnOnce() -> Result<P> + Send,
    change: impl FnOnce(&mut AppliedState, P) -> Result<()>,
) -> Result<Outcome> {
    let lock = state_dir.lock()?;
    let (before, prepared) = std::thread::scope(|scope| {
        let prepared = scope.spawn(prepare);
        let before = kept.take(state_dir, &lock);
        (before, prepared.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    let (before, recorded) = before?;
    let mut after = before.clone();
    change(&mut after, prepared?)?;
    // `change` edits the objects and the settings the image is compiled
    // from (a sync sets whether loopback serves node ports in `after.image`);
    // the image is then updated in place, without another copy.
    let image = std::mem::take(&mut after.image);
    let on_loopback = image.node_ports_on_loopback;
    let (removed, added) = rule_changes(&before, &after);
    // Where the image can change: the record of the change compares there only.
    let touched: BTreeSet<Frontend> =
        removed.iter().copied().copied().chain(added.iter().map(|(_, rule)| rule.frontend)).collect();
    after.image = image.updated(removed, added, after.node_addresses(), on_loopback)?;
    let between = Plan::between(&before.image, &after.image);
    let summary = between.summary;
    let repairing = mode == Mode::Apply && state_dir.map_writes_interrupted()? && links::is_loaded(pins)?;
    if mode == Mode::DryRun || (after == before && !repairing) {
        let map_writes = between.len();
        let recorded = recorded.filter(|_| mode == Mode::Apply);
        return Ok(Outcome { before, after, summary, map_writes, repaired: false, touched, recorded });
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
        (between, before.image.entry_counts())
    };
    let map_writes = plan.len();

    // A change may touch only the state (an owner renamed): the maps, and
    // so the loaded datapath, are needed only when there is something to write.
    let rate_limits = (before.image.rate_limits(), after.image.rate_limits());
    if repairing || !plan.is_empty() || rate_limits.0 != rate_limits.1 {
        let opened = match datapath.as_mut() {
            Some(opened) => opened,
            None => datapath.insert(Datapath::open(pins)?),
        };
        write_maps(state_dir, &lock, opened, &plan, start, &rate_limits, repairing)?;
    }
    let recorded = match state_dir.write(&lock, recorded, &before, &after, Touched::Frontends(&touched)) {
        Ok(recorded) => recorded,
        Err(err) => {
            return Err(match datapath.as_mut() {
                Some(datapath) => {
                    let err = plan.revert(datapath, err);
                    undone(state_dir, &lock, datapath, &rate_limits.0, repairing, err)
                }
                None => err,
            });
        }
    };
    state_dir.end_map_writes(&lock);
    Ok(Outcome { before, after, summary, map_writes, repaired: repairing, touched, recorded: Some(recorded) })
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
    write_maps(state_dir, &lock, &mut datapath, &plan, actual.entry_counts(), &rate_limits, interrupted)?;
    // The maps now hold the recorded state, whatever an interrupted change left.
    state_dir.end_map_writes(&lock);
    Ok((attached, plan.len()))
}

/// The write protocol: check that every map has room at every step (from
/// `start`), mark the map writes begun, write the rate limits
/// (`rate_limits`: before and after), then run the plan. If a write fails,
/// what was written is undone (`undone`); the mark stays until the caller
/// has recorded what the maps hold.
fn write_maps(
    state_dir: &StateDir,
    lock: &StateLock,
    datapath: &mut Datapath,
    plan: &Plan,
    start: EntryCounts,
    rate_limits: &(BTreeMap<ServiceId, u32>, BTreeMap<ServiceId, u32>),
    keep_mark: bool,
) -> Result<()> {
    datapath.check_room(plan.peak_entries(start))?;
    state_dir.begin_map_writes(lock)?;
    let written = datapath
        .write_rate_limits(&rate_limits.1)
        .and_then(|()| plan.apply(datapath, &mut MapWrites::new(plan.len())));
    written.map_err(|err| undone(state_dir, lock, datapath, &rate_limits.0, keep_mark, err))
}

/// After map writes failed with `err` (the plan's writes undone as far as
/// they could be): puts back the rate limits the maps held (`rate_limits`).
/// If the maps are then as they were and the state dir had no in-progress
/// mark before (`keep_mark` false: they did not hold a mix an interrupted
/// change left), takes the mark away: there is nothing for the next change
/// to repair.
fn undone(
    state_dir: &StateDir,
    lock: &StateLock,
    datapath: &mut Datapath,
    rate_limits: &BTreeMap<ServiceId, u32>,
    keep_mark: bool,
    err: anyhow::Error,
) -> anyhow::Error {
    match datapath.write_rate_limits(rate_limits) {
        Err(restore) => err.context(format!("restoring the rate limits failed too ({restore:#})")),
        Ok(()) => {
            if !keep_mark && err.downcast_ref::<Restored>().is_some() {
                state_dir.end_map_writes(lock);
            }
            err
        }
    }
}

/// The frontends of rules that `after` no longer has, and the rules (with
/// their owners) it has anew. Synced objects a change kept are the same
/// `Arc`s, so a sync that replaced one object out of thousands compiles one.
fn rule_changes<'a>(
    before: &'a AppliedState,
    after: &'a AppliedState,
) -> (Vec<&'a Frontend>, Vec<(String, &'a FrontendRule)>) {
    let identities =
        |state: &AppliedState| state.synced.iter().map(Arc::as_ptr).collect::<HashSet<*const SyncedObject>>();
    let (in_after, in_before) = (identities(after), identities(before));
    let mut removed = Vec::new();
    for policy in &before.policies {
        if after.policy(&policy.name) != Some(policy) {
            removed.push(&policy.rule.frontend);
        }
    }
    for object in before.synced.iter().filter(|o| !in_after.contains(&Arc::as_ptr(o))) {
        removed.extend(object.rules.iter().map(|rule| &rule.frontend));
    }
    let mut added = Vec::new();
    for policy in &after.policies {
        if before.policy(&policy.name) != Some(policy) {
            added.push((policy.owner(), &policy.rule));
        }
    }
    for object in after.synced.iter().filter(|o| !in_before.contains(&Arc::as_ptr(o))) {
        added.extend(object.rules.iter().map(|rule| (object.owner.clone(), rule)));
    }
    (removed, added)
}
