//! Running a plan against the maps: every step in order, and if one fails,
//! the steps already done undone in reverse order, so the maps are left as
//! they were. The kernel layer (`bpf::maps::Datapath`) only writes entries.

use std::collections::HashSet;

use anyhow::Result;
use balctl_common::MembershipKey;

use super::{Plan, Step};
use crate::{
    bpf::{
        counters::Cells,
        maps::{Datapath, Op},
    },
    progress::Progress,
};

/// The most writes of one kind written together (`Datapath::write_run`,
/// many per bpf() call): enough that the calls cost little beside the
/// writes, with a bounded buffer.
const LONGEST_RUN: usize = 16_384;

impl Plan<'_> {
    /// Runs every step in order, a run of like writes together (their order
    /// kept: the kernel writes a batch one entry after the other), telling
    /// `progress` how many are done. If
    /// one fails, the steps already done are undone in reverse order, so the
    /// maps are left as they were. Then tidies up after what the plan
    /// removed: drops the sticky choices (affinity, per-socket UDP) that
    /// point at backends which left their service (the datapath already
    /// ignores them: membership check), and zeroes the counter cells of
    /// removed frontends and memberships (nothing counts into them any
    /// more, and their next owners start from 0: `image/cells.rs`).
    ///
    /// The layers map says which layers may hold frontends: both sides'
    /// while the plan runs, so the datapath never skips a layer that has
    /// entries, then only the new side's.
    pub fn apply(&self, datapath: &mut Datapath, progress: &mut dyn Progress) -> Result<()> {
        let (before, after) = self.layers();
        datapath.write_layers(before | after)?;
        let mut removed = Removed::default();
        let mut done = 0;
        let mut run: Vec<Step> = Vec::new();
        let mut steps = self.steps().peekable();
        while let Some(step) = steps.next() {
            let continued = steps.peek().is_some_and(|next| next.op.same_kind(&step.op));
            run.push(step);
            if continued && run.len() < LONGEST_RUN {
                continue;
            }
            let ops: Vec<&Op> = run.iter().map(|step| &step.op).collect();
            if let Err((written, err)) = datapath.write_run(&ops) {
                return Err(self.undo(datapath, done + written, err.context("map update failed")));
            }
            for step in &run {
                removed.note(step);
            }
            done += run.len();
            run.clear();
            progress.advance(done);
        }
        // Only tidying: failing here must not fail a change that is
        // already complete. A layer left marked costs two lookups a connection.
        if let Err(err) = datapath.write_layers(after) {
            log::warn!("could not mark the emptied rule layers (they are still looked up): {err:#}");
        }
        if !removed.memberships.is_empty()
            && let Err(err) = datapath.forget_sticky(&removed.memberships)
        {
            log::warn!("could not drop stale sticky choices (the datapath ignores them): {err:#}");
        }
        if !removed.cells.is_empty()
            && let Err(err) = datapath.zero_counters(&removed.cells)
        {
            log::warn!(
                "could not zero the counters of removed frontends and backends \
                 (the next frontends given their cells start from what they counted): {err:#}"
            );
        }
        Ok(())
    }

    /// Undoes the whole applied plan because a later step (recording the
    /// new state) failed with `cause`.
    pub fn revert(&self, datapath: &mut Datapath, cause: anyhow::Error) -> anyhow::Error {
        self.undo(datapath, self.len(), cause)
    }

    /// Undoes the first `done` steps, last first. The plan keeps no steps,
    /// so they are generated again (the same ones: its sides are borrowed
    /// unchanged) and only their undo writes are held, which costs memory
    /// on this failure path alone.
    fn undo(&self, datapath: &mut Datapath, done: usize, cause: anyhow::Error) -> anyhow::Error {
        let mut added = Cells::default();
        let undo: Vec<Op> = (self.steps().take(done))
            .map(|step| {
                note_added(&step, &mut added);
                step.undo
            })
            .collect();
        let mut failures: Vec<String> =
            undo.iter().rev().filter_map(|op| datapath.write(op).err().map(|e| format!("{e:#}"))).collect();
        if failures.is_empty()
            && let Err(err) = datapath.write_layers(self.layers().0)
        {
            failures.push(format!("{err:#}"));
        }
        // The cells of what the plan added are free again, and may have
        // counted while their entries were there.
        if failures.is_empty()
            && let Err(err) = datapath.zero_counters(&added)
        {
            failures.push(format!("{err:#}"));
        }
        if failures.is_empty() {
            cause.context(Restored)
        } else {
            cause.context(format!(
                "restoring the previous map contents failed too ({}); \
                 `balctl status` shows the drift and `balctl load` repairs it",
                failures.join("; ")
            ))
        }
    }
}

/// The context of a change's error when all its map writes were undone:
/// the maps hold what they held before it (`anyhow::Error::downcast_ref`
/// finds it).
#[derive(Debug)]
pub struct Restored;

impl std::fmt::Display for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("nothing was changed: the maps were restored to their previous contents")
    }
}

/// What a plan removed for good: the memberships deleted (for their
/// sticky choices), and the counter cells that no entry names any more.
#[derive(Default)]
struct Removed {
    memberships: HashSet<MembershipKey>,
    cells: Cells,
}

impl Removed {
    fn note(&mut self, step: &Step) {
        match (&step.op, &step.undo) {
            (Op::DeleteMembership(key), Op::PutMembership(_, cell)) => {
                self.memberships.insert(*key);
                self.cells.add_hits(*cell);
            }
            (Op::PutMembership(_, new), Op::PutMembership(_, old)) if new != old => self.cells.add_hits(*old),
            // The deleted entry is in the undo write; a frontend keeps its
            // master (slot 0) for as long as it exists.
            (Op::DeleteService(key), Op::PutService(_, master)) if key.slot == 0 => {
                self.cells.add_stats(master.cell);
            }
            (Op::PutService(key, new), Op::PutService(_, old)) if key.slot == 0 && new.cell != old.cell => {
                self.cells.add_stats(old.cell);
            }
            _ => {}
        }
    }
}

/// Adds the cells of what `step` adds (an entry that was not there) to
/// `added`.
fn note_added(step: &Step, added: &mut Cells) {
    match (&step.op, &step.undo) {
        (Op::PutMembership(_, cell), Op::DeleteMembership(_)) => added.add_hits(*cell),
        (Op::PutService(key, master), Op::DeleteService(_)) if key.slot == 0 => added.add_stats(master.cell),
        _ => {}
    }
}
