//! Which applied objects a sync can keep without parsing their input.
//!
//! Every object translated from Kubernetes YAML records the fingerprints
//! of the items it was made of (its Service and EndpointSlices, or its
//! Node), and what its translation read of other objects (`Dependency`: a
//! Service whose endpoints have topology hints reads this node's Node). A
//! later sync keeps it as it is when all of those items are in its input
//! again, exactly once, in the same source, nothing new was added to it
//! (no other item, once parsed, turns out to be one of its Service's
//! EndpointSlices or a second definition of it), and each object it read
//! is as it was, or still absent. Everything else is parsed and translated
//! as usual, so a sync's result does not depend on what was kept: only
//! its cost does.

use std::sync::Arc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::items::{PieceKind, Span};
use crate::model::{Dependency, Fingerprint, SyncedObject};

/// One piece of an input file that holds objects.
pub struct Item {
    /// Index of the file among those read.
    pub file: usize,
    pub kind: PieceKind,
    pub span: Span,
    /// Where its (first) object starts.
    pub line: usize,
    pub fingerprint: Fingerprint,
}

pub struct Reuse<'a> {
    items: &'a [Item],
    previous: &'a [Arc<SyncedObject>],
    /// The previous object each item was part of, for items that can be kept.
    claimed_by: Vec<Option<usize>>,
    /// For each previous object, its first item while it can be kept.
    /// Indexed by object rather than a map of the few: a sync keeps most.
    candidates: Vec<Option<usize>>,
}

impl<'a> Reuse<'a> {
    /// Matches `items` with the inputs of `previous` objects; `source_of`
    /// names the source an item was read from.
    pub fn new<'s>(
        items: &'a [Item],
        previous: &'a [Arc<SyncedObject>],
        source_of: impl Fn(&Item) -> &'s str,
    ) -> Self {
        // Sized up front: grown from empty, the map of 10,000 objects'
        // items was rehashed into fresh memory a dozen times.
        let mut where_found: HashMap<Fingerprint, Option<u32>> =
            HashMap::with_capacity_and_hasher(items.len(), Default::default());
        for (index, item) in (0..).zip(items) {
            // An item seen twice is a duplicate that parsing must report.
            where_found.entry(item.fingerprint).and_modify(|found| *found = None).or_insert(Some(index));
        }
        // Where each previous object's inputs are among the items, all
        // objects' in one list, and how many inputs each item is: one that
        // two objects were made of (or one object twice) keeps neither.
        let mut found = Vec::with_capacity(previous.iter().map(|synced| synced.inputs.len()).sum());
        let mut inputs_of = vec![0u8; items.len()];
        for synced in previous {
            found.extend(synced.inputs.iter().map(|fingerprint| {
                let item = where_found.get(fingerprint).copied().flatten();
                if let Some(item) = item {
                    let count = &mut inputs_of[item as usize];
                    *count = count.saturating_add(1);
                }
                item
            }));
        }
        let mut claimed_by = vec![None; items.len()];
        let mut candidates = vec![None; previous.len()];
        let mut rest = found.as_slice();
        for (object, synced) in previous.iter().enumerate() {
            let found;
            (found, rest) = rest.split_at(synced.inputs.len());
            let Some(&Some(first)) = found.first() else { continue };
            if !found.iter().all(|item| item.is_some_and(|item| inputs_of[item as usize] == 1)) {
                continue;
            }
            if source_of(&items[first as usize]) != synced.source {
                continue;
            }
            for item in found.iter().flatten() {
                claimed_by[*item as usize] = Some(object);
            }
            candidates[object] = Some(first as usize);
        }
        Self { items, previous, claimed_by, candidates }
    }

    /// Whether any previous object can still be kept.
    pub fn keeps_any(&self) -> bool {
        self.candidates.iter().any(Option::is_some)
    }

    /// The items no previous object can be kept for: they must be parsed.
    pub fn unclaimed(&self) -> impl Iterator<Item = &'a Item> + '_ {
        self.items.iter().zip(&self.claimed_by).filter(|(_, by)| by.is_none()).map(|(item, _)| item)
    }

    /// Gives up the objects of `owners` (those that parsed items belong
    /// to, or that must be read), returning their items, which must now be
    /// parsed too.
    pub fn release<'o>(&mut self, owners: impl Iterator<Item = &'o str>) -> Vec<&'a Item> {
        let owners: HashSet<&str> = owners.collect();
        if owners.is_empty() {
            return Vec::new();
        }
        self.release_where(|object| owners.contains(object.owner.as_str()))
    }

    /// The owners of the objects that the objects which can still be kept
    /// read: they must be parsed to tell whether those can.
    pub fn read_by_candidates(&self) -> HashSet<&'a str> {
        let previous = self.previous;
        self.candidate_objects()
            .flat_map(|object| previous[object].dependencies.iter().map(|read| read.owner.as_str()))
            .collect()
    }

    /// Gives up the objects that read an object which is no longer as they
    /// read it: `now` is what reading each owner gives today (parsed
    /// objects; every owner `read_by_candidates` named is among them if it
    /// is in the input at all). Returns their items, to be parsed.
    pub fn release_stale(&mut self, now: &HashMap<String, Option<Dependency>>) -> Vec<&'a Item> {
        let changed = |read: &Dependency| match now.get(read.owner.as_str()) {
            // Twice in the input: parsing says so; not kept meanwhile.
            Some(None) => true,
            // In an item with other objects, it has no fingerprint of its own.
            Some(Some(current)) => current.fingerprint.is_none() || current != read,
            // Absent, as it was or not.
            None => read.fingerprint.is_some(),
        };
        self.release_where(|object| object.dependencies.iter().any(changed))
    }

    /// Gives up the objects that `give_up` says to, returning their items.
    fn release_where(&mut self, give_up: impl Fn(&SyncedObject) -> bool) -> Vec<&'a Item> {
        let previous = self.previous;
        let mut released = vec![false; previous.len()];
        let mut any = false;
        for (object, candidate) in self.candidates.iter_mut().enumerate() {
            if candidate.is_some() && give_up(&previous[object]) {
                *candidate = None;
                released[object] = true;
                any = true;
            }
        }
        if !any {
            return Vec::new();
        }
        self.items
            .iter()
            .zip(&self.claimed_by)
            .filter(|(_, by)| by.is_some_and(|object| released[object]))
            .map(|(item, _)| item)
            .collect()
    }

    /// The previous objects that can still be kept.
    fn candidate_objects(&self) -> impl Iterator<Item = usize> + '_ {
        self.candidates.iter().enumerate().filter(|(_, first)| first.is_some()).map(|(object, _)| object)
    }

    /// The previous objects kept, each with its first item.
    pub fn kept(&self) -> impl Iterator<Item = (&'a Arc<SyncedObject>, &'a Item)> + '_ {
        let mut kept: Vec<(usize, usize)> =
            self.candidates.iter().enumerate().filter_map(|(o, i)| Some((o, (*i)?))).collect();
        // In input order, as parsing would give them.
        kept.sort_unstable_by_key(|&(_, item)| item);
        kept.into_iter().map(|(object, item)| (&self.previous[object], &self.items[item]))
    }
}
