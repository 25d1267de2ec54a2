//! The synced objects of an applied state, in order, and what a change did
//! to them.
//!
//! A change of one object in a state of 100,000 must not copy the list of
//! objects to compare it with the list after: copying and then dropping
//! 100,000 `Arc`s touches 100,000 reference counts, each in an object of
//! its own, and that was most of a watch batch's time at that size. So a
//! change edits the objects in place and the list keeps a journal of the
//! edit (`Synced::begin_change`, `Synced::changes`): what it replaced, what
//! it removed, what it added. A change that rebuilds the whole list (a
//! sync that reads every input) keeps the list it replaced instead, moved,
//! not copied, and its changes are found by walking both.

use std::{collections::HashSet, ops::Deref, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::model::SyncedObject;

/// The synced objects of a state: the list as it is written, and while a
/// change edits it, the journal of that change.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Synced {
    objects: Vec<Arc<SyncedObject>>,
    #[serde(skip)]
    journal: Option<Journal>,
}

/// What a change did to the objects, as it did it.
#[derive(Debug)]
enum Journal {
    /// Nothing yet.
    Untouched,
    /// Replaced and removed where they were, others added at the end
    /// (`Synced::edit`).
    InPlace {
        replaced: Vec<(Arc<SyncedObject>, Arc<SyncedObject>)>,
        removed: Vec<Arc<SyncedObject>>,
        added: usize,
    },
    /// Made anew (`Synced::rebuild`): the objects before it.
    Rebuilt(Vec<Arc<SyncedObject>>),
}

/// What `Synced::edit` does with an object.
pub enum Slot {
    Keep,
    Replace(Arc<SyncedObject>),
    Remove,
}

/// What a change did to the synced objects: the objects it removed, the
/// pairs of an object and the one of its owner that took its place
/// (perhaps an equal one), and the objects it added at the end, in order.
/// Replaying them on the objects before gives the objects after
/// (`state::change_log`).
pub struct SyncedChanges<'a> {
    pub removed: Vec<&'a Arc<SyncedObject>>,
    pub replaced: Vec<(&'a Arc<SyncedObject>, &'a Arc<SyncedObject>)>,
    pub added: &'a [Arc<SyncedObject>],
}

impl<'a> SyncedChanges<'a> {
    /// The objects the change took out: removed, or replaced by another
    /// `Arc` (equal or not).
    pub fn gone(&self) -> impl Iterator<Item = &'a Arc<SyncedObject>> + '_ {
        self.removed.iter().copied().chain(self.replaced.iter().map(|(old, _)| *old))
    }

    /// The objects the change put in: replacing others, or added.
    pub fn came(&self) -> impl Iterator<Item = &'a Arc<SyncedObject>> + '_ {
        self.replaced.iter().map(|(_, new)| *new).chain(self.added)
    }

    /// Whether the objects after are the objects before: nothing removed
    /// or added, and every replacement equal to what it replaced.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty() && self.replaced.iter().all(|(old, new)| old == new)
    }
}

impl Synced {
    /// Starts the journal of a change: what the change does from now on
    /// is told by `changes`.
    pub fn begin_change(&mut self) {
        self.journal = Some(Journal::Untouched);
    }

    /// Ends the journal of the change: what it kept (the objects a
    /// change replaced, or all those before a rebuild) is let go.
    pub fn end_change(&mut self) {
        self.journal = None;
    }

    /// Edits the objects in place: `place` says of each whether it stays,
    /// gives its place to another object (of the same owner: the state
    /// never holds an owner twice) or goes. The first edit of a change
    /// (`append` may follow it): a second would need the journal to
    /// compose edits, which no change needs.
    pub fn edit(&mut self, mut place: impl FnMut(&Arc<SyncedObject>) -> Slot) {
        let (mut replaced, mut removed) = (Vec::new(), Vec::new());
        for slot in &mut self.objects {
            match place(slot) {
                Slot::Keep => {}
                Slot::Replace(object) if Arc::ptr_eq(&object, slot) => {}
                Slot::Replace(object) => {
                    debug_assert_eq!(object.owner, slot.owner, "an object replaces one of its owner");
                    replaced.push((std::mem::replace(slot, Arc::clone(&object)), object));
                }
                Slot::Remove => removed.push(Arc::clone(slot)),
            }
        }
        if !removed.is_empty() {
            // By identity: an object is never in the list twice.
            let gone: HashSet<*const SyncedObject> = removed.iter().map(Arc::as_ptr).collect();
            self.objects.retain(|object| !gone.contains(&Arc::as_ptr(object)));
        }
        self.record(|journal| match journal {
            Journal::Untouched => Some(Journal::InPlace { replaced, removed, added: 0 }),
            _ => None,
        });
    }

    /// Adds `objects` after all others.
    pub fn append(&mut self, objects: impl IntoIterator<Item = Arc<SyncedObject>>) {
        let before = self.objects.len();
        self.objects.extend(objects);
        let count = self.objects.len() - before;
        self.record(|journal| match journal {
            Journal::Untouched => {
                Some(Journal::InPlace { replaced: Vec::new(), removed: Vec::new(), added: count })
            }
            Journal::InPlace { replaced, removed, added } => {
                Some(Journal::InPlace { replaced, removed, added: added + count })
            }
            Journal::Rebuilt(_) => None,
        });
    }

    /// Makes the objects `objects`, all at once: the objects before are
    /// kept in the journal (moved) to be compared with them.
    pub fn rebuild(&mut self, objects: Vec<Arc<SyncedObject>>) {
        let before = std::mem::replace(&mut self.objects, objects);
        self.record(|journal| match journal {
            Journal::Untouched => Some(Journal::Rebuilt(before)),
            _ => None,
        });
    }

    /// Makes the journal of the change under way what `next` makes of it
    /// (outside a change, as a test edits objects, nothing is recorded).
    /// A change edits its objects in the ways `next` composes; None is any
    /// other way, a bug, which must not pass for a change the journal does
    /// not tell.
    fn record(&mut self, next: impl FnOnce(Journal) -> Option<Journal>) {
        if let Some(journal) = self.journal.take() {
            self.journal = Some(next(journal).expect("edits of the synced objects the journal composes"));
        }
    }

    /// What the change begun by `begin_change` did, as the journal says;
    /// the journal stays until the next change begins. A change that put
    /// other objects in place of these (`state.synced = ...`) instead of
    /// editing them has no journal: a bug, which stops here.
    ///
    /// A rebuilt list is compared with the list before it in one walk of
    /// both: an object passed as it was (the same `Arc`) is kept, one of
    /// the same owner in its place replaces it, any other is removed; what
    /// the list after has past the walk is added. A rebuild that keeps the
    /// order, as a sync does, is found as exactly what it did; another
    /// order gives longer changes that replay as exactly.
    pub fn changes(&self) -> SyncedChanges<'_> {
        let journal = self.journal.as_ref().expect("a change begun by begin_change");
        match journal {
            Journal::Untouched => SyncedChanges { removed: Vec::new(), replaced: Vec::new(), added: &[] },
            Journal::InPlace { replaced, removed, added } => SyncedChanges {
                removed: removed.iter().collect(),
                replaced: replaced.iter().map(|(old, new)| (old, new)).collect(),
                added: &self.objects[self.objects.len() - added..],
            },
            Journal::Rebuilt(before) => {
                let (mut removed, mut replaced) = (Vec::new(), Vec::new());
                let mut j = 0;
                for object in before {
                    match self.objects.get(j) {
                        Some(kept) if Arc::ptr_eq(kept, object) => j += 1,
                        Some(replacing) if replacing.owner == object.owner => {
                            replaced.push((object, replacing));
                            j += 1;
                        }
                        _ => removed.push(object),
                    }
                }
                SyncedChanges { removed, replaced, added: &self.objects[j.min(self.objects.len())..] }
            }
        }
    }

    /// The objects, for a caller that takes them apart.
    pub fn into_vec(self) -> Vec<Arc<SyncedObject>> {
        self.objects
    }
}

impl Deref for Synced {
    type Target = [Arc<SyncedObject>];

    fn deref(&self) -> &Self::Target {
        &self.objects
    }
}

impl From<Vec<Arc<SyncedObject>>> for Synced {
    fn from(objects: Vec<Arc<SyncedObject>>) -> Self {
        Self { objects, journal: None }
    }
}

impl FromIterator<Arc<SyncedObject>> for Synced {
    fn from_iter<I: IntoIterator<Item = Arc<SyncedObject>>>(objects: I) -> Self {
        Self::from(objects.into_iter().collect::<Vec<_>>())
    }
}

/// A copy is of the objects; no change is under way in it.
impl Clone for Synced {
    fn clone(&self) -> Self {
        Self::from(self.objects.clone())
    }
}

/// Two lists are equal when their objects are: the journal is how one
/// came to be, not what it is.
impl PartialEq for Synced {
    fn eq(&self, other: &Self) -> bool {
        self.objects == other.objects
    }
}

impl Eq for Synced {}

impl<'a> IntoIterator for &'a Synced {
    type Item = &'a Arc<SyncedObject>;
    type IntoIter = std::slice::Iter<'a, Arc<SyncedObject>>;

    fn into_iter(self) -> Self::IntoIter {
        self.objects.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::draws::Draws;

    fn object(owner: usize, version: u32) -> Arc<SyncedObject> {
        Arc::new(SyncedObject {
            source: "kubernetes".into(),
            owner: format!("service/ns/s{owner}"),
            rules: Vec::new(),
            addresses: Vec::new(),
            inputs: vec![u128::from(version)],
            health_check: None,
            dependencies: Vec::new(),
            held_back: Vec::new(),
        })
    }

    /// The changes as owners and versions, to compare two journals.
    fn told(changes: &SyncedChanges) -> (Vec<String>, Vec<(String, u128)>, Vec<String>) {
        (
            changes.removed.iter().map(|o| o.owner.clone()).collect(),
            changes.replaced.iter().map(|(old, new)| (old.owner.clone(), new.inputs[0])).collect(),
            changes.added.iter().map(|o| o.owner.clone()).collect(),
        )
    }

    /// Random edits in place tell what the walk of the same objects
    /// rebuilt finds: the journal is what a record replays.
    #[test]
    fn an_edit_in_place_tells_what_a_rebuild_of_its_result_does() {
        let mut draws = Draws(0x5eed_1234);
        for round in 0..200 {
            let count = draws.below(40) as usize;
            let before: Synced = (0..count).map(|i| object(i, 0)).collect();
            let mut edited = before.clone();
            edited.begin_change();
            let mut choices = Vec::new();
            edited.edit(|slot| {
                let choice = draws.below(6);
                choices.push(choice);
                match choice {
                    0 => Slot::Remove,
                    1 => Slot::Replace(object(slot.owner[12..].parse().unwrap(), round + 1)),
                    2 => Slot::Replace(Arc::clone(slot)),
                    _ => Slot::Keep,
                }
            });
            edited.append((0..draws.below(3) as usize).map(|i| object(1000 + i, round)));
            let mut rebuilt = before.clone();
            rebuilt.begin_change();
            rebuilt.rebuild(edited.to_vec());
            assert_eq!(told(&edited.changes()), told(&rebuilt.changes()), "round {round}: {choices:?}");
            let (removed, replaced, _) = told(&edited.changes());
            assert_eq!(removed.len(), choices.iter().filter(|&&c| c == 0).count());
            assert_eq!(replaced.len(), choices.iter().filter(|&&c| c == 1).count());
            assert_eq!(
                edited.changes().is_empty(),
                removed.is_empty() && replaced.is_empty() && edited.len() == count
            );
        }
    }

    #[test]
    #[should_panic(expected = "a change begun by begin_change")]
    fn objects_put_in_place_of_a_journaled_list_are_refused() {
        let mut state = crate::state::AppliedState::default();
        state.synced.begin_change();
        state.synced = Synced::from(vec![object(1, 0)]);
        let _ = state.synced.changes();
    }
}
