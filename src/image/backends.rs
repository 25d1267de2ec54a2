//! The backends of an image by id, in a list sorted by id.
//!
//! Ids are handed out in increasing order and never again (`Image::
//! updated`), so a new backend goes at the end of the list, and a list
//! holds a million backends in 40 MB where a B-tree map took 78 (a
//! first sync of 100,000 services, bench/RESULTS.md). A removed backend
//! leaves a hole that is swept once holes are half the list: a watch
//! removes a backend or two per change, and moving the rest of a million
//! entries each time would cost what the whole change costs.
//!
//! It reads and writes as the map it replaced did (a list of `[id,
//! backend]` pairs), so state files are unchanged.

use std::fmt;

use balctl_common::Backend;
use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::BackendAddr;
use crate::bpf::maps::BackendId;

#[derive(Clone, Default)]
pub struct BackendTable {
    /// Sorted by id, each id once; `None`: a removed backend's hole.
    entries: Vec<(BackendId, Option<BackendAddr>)>,
    holes: usize,
}

impl BackendTable {
    pub fn len(&self) -> usize {
        self.entries.len() - self.holes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: &BackendId) -> Option<&BackendAddr> {
        let at = self.entries.binary_search_by_key(id, |&(id, _)| id).ok()?;
        self.entries[at].1.as_ref()
    }

    pub fn contains_key(&self, id: &BackendId) -> bool {
        self.get(id).is_some()
    }

    /// Sets the backend of `id`: at the end when `id` is the highest yet,
    /// as every new backend's is.
    pub fn insert(&mut self, id: BackendId, backend: BackendAddr) {
        self.place(id, backend);
    }

    /// `insert`, saying whether the positions of other backends stayed
    /// as they were (the id went at the end or filled its own hole).
    fn place(&mut self, id: BackendId, backend: BackendAddr) -> Placed {
        match self.entries.last() {
            Some(&(last, _)) if last >= id => match self.entries.binary_search_by_key(&id, |&(id, _)| id) {
                Ok(at) => match self.entries[at].1.replace(backend) {
                    None => {
                        self.holes -= 1;
                        Placed::Alone(at)
                    }
                    Some(_) => Placed::Moved,
                },
                Err(at) => {
                    self.entries.insert(at, (id, Some(backend)));
                    Placed::Moved
                }
            },
            _ => {
                self.entries.push((id, Some(backend)));
                Placed::Alone(self.entries.len() - 1)
            }
        }
    }

    pub fn remove(&mut self, id: &BackendId) -> Option<BackendAddr> {
        let at = self.entries.binary_search_by_key(id, |&(id, _)| id).ok()?;
        let removed = self.entries[at].1.take()?;
        self.holes += 1;
        if self.holes * 2 > self.entries.len() {
            self.sweep();
        }
        Some(removed)
    }

    /// Puts entries in any order in id order, each id once: of two pairs
    /// with one id, the later stays, as in a map they were inserted into.
    fn sort_entries(&mut self) {
        // Stable: of two pairs with one id, the later stays last.
        self.entries.sort_by_key(|&(id, _)| id);
        let mut deduplicated: Vec<(BackendId, Option<BackendAddr>)> = Vec::with_capacity(self.entries.len());
        for entry in self.entries.drain(..) {
            match deduplicated.last_mut() {
                Some(last) if last.0 == entry.0 && entry.1.is_some() => *last = entry,
                Some(last) if last.0 == entry.0 => {}
                _ => deduplicated.push(entry),
            }
        }
        self.entries = deduplicated;
        self.holes = self.entries.iter().filter(|(_, backend)| backend.is_none()).count();
    }

    fn sweep(&mut self) {
        self.entries.retain(|(_, backend)| backend.is_some());
        self.holes = 0;
    }

    /// Backends in id order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&BackendId, &BackendAddr)> + Clone + '_ {
        self.entries.iter().filter_map(|(id, backend)| Some((id, backend.as_ref()?)))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &BackendId> + Clone + '_ {
        self.iter().map(|(id, _)| id)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &BackendAddr> + Clone + '_ {
        self.iter().map(|(_, backend)| backend)
    }

    /// Room for `more` backends at the end.
    pub fn reserve(&mut self, more: usize) {
        self.entries.reserve(more);
    }

    /// A lookup of the ids of backends by what they are, for a change of
    /// an image without the backends' index (`tally.rs`): the table's
    /// backends that `wanted` holds (every one without it), and those the
    /// change adds with `id_of`, with room for `more`. Kept in 5
    /// bytes a backend (a hash table of positions in the list), where a
    /// map from backend to id took 52 MB for a million.
    pub fn lookup(&self, wanted: Option<&rustc_hash::FxHashSet<Backend>>, more: usize) -> Lookup {
        let known = wanted.map_or(self.len(), |wanted| wanted.len().min(self.len()));
        let mut lookup = Lookup { positions: HashTable::with_capacity(known + more) };
        for (at, (_, backend)) in self.entries.iter().enumerate() {
            if let Some(backend) = backend
                && wanted.is_none_or(|wanted| wanted.contains(&backend.to_raw()))
            {
                lookup.add(&self.entries, at);
            }
        }
        lookup
    }

    /// The id of `backend` in the table (`lookup` of it), else `new_id()`,
    /// then at the end of the table. A table holds no backend twice.
    pub fn id_of(
        &mut self,
        lookup: &mut Lookup,
        backend: BackendAddr,
        new_id: impl FnOnce() -> BackendId,
    ) -> BackendId {
        let raw = backend.to_raw();
        let entries = &self.entries;
        let found = lookup
            .positions
            .find(hash(&raw), |&at| entries[at as usize].1.is_some_and(|known| known.to_raw() == raw));
        if let Some(&at) = found {
            return entries[at as usize].0;
        }
        let id = new_id();
        match self.place(id, backend) {
            Placed::Alone(at) => lookup.add(&self.entries, at),
            // Only a corrupt state's id counter gives an id that is not the
            // highest: the positions are found again.
            Placed::Moved => *lookup = self.lookup(None, 0),
        }
        id
    }
}

/// Where `BackendTable::place` put a backend.
enum Placed {
    /// At this position, the others where they were.
    Alone(usize),
    /// Before others, which moved, or over another backend.
    Moved,
}

/// See `BackendTable::lookup`. Positions stay right while the table only
/// grows at its end: a lookup is used within one change and dropped
/// before anything is removed.
#[derive(Default)]
pub struct Lookup {
    positions: HashTable<u32>,
}

impl Lookup {
    fn add(&mut self, entries: &[(BackendId, Option<BackendAddr>)], at: usize) {
        let of = |at: usize| entries[at].1.expect("a lookup holds positions of backends").to_raw();
        let raw = of(at);
        // Positions fit a u32: ids are u32 and a table holds each once.
        self.positions.insert_unique(hash(&raw), at as u32, |&at| hash(&of(at as usize)));
    }
}

fn hash(backend: &Backend) -> u64 {
    use std::hash::BuildHasher as _;
    FxBuildHasher.hash_one(backend)
}

/// Sorted by id; a backend given twice for an id keeps the last, as a map
/// collected from the same pairs does.
impl FromIterator<(BackendId, BackendAddr)> for BackendTable {
    fn from_iter<I: IntoIterator<Item = (BackendId, BackendAddr)>>(pairs: I) -> Self {
        let mut table = Self::default();
        table.extend(pairs);
        table
    }
}

impl Extend<(BackendId, BackendAddr)> for BackendTable {
    fn extend<I: IntoIterator<Item = (BackendId, BackendAddr)>>(&mut self, pairs: I) {
        let sorted_until = self.entries.len();
        self.entries.extend(pairs.into_iter().map(|(id, backend)| (id, Some(backend))));
        // Still sorted when the pairs come in order after the last id.
        if self.entries[sorted_until.saturating_sub(1)..].is_sorted_by(|a, b| a.0 < b.0) {
            return;
        }
        let added = self.entries.len() - sorted_until;
        if added < sorted_until / 64 {
            // A few (a change replayed from the record): each put in its place.
            for (id, backend) in self.entries.split_off(sorted_until) {
                self.insert(id, backend.expect("a pair just added"));
            }
            return;
        }
        self.sort_entries();
    }
}

impl std::ops::Index<&BackendId> for BackendTable {
    type Output = BackendAddr;

    /// Panics without a backend of that id, as a map does.
    fn index(&self, id: &BackendId) -> &BackendAddr {
        self.get(id).expect("no backend of that id")
    }
}

impl PartialEq for BackendTable {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for BackendTable {}

impl fmt::Debug for BackendTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for BackendTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq as _;
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for pair in self.iter() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

/// Read into the table's list directly, with room for the pairs and a
/// few more: a pair list collected into the table copied every backend
/// twice (the list grew by doubling past serde's cautious first guess),
/// and the first backend a change added copied the whole list again to
/// make room. Room not used is never touched, so it takes no memory.
impl<'de> Deserialize<'de> for BackendTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = BackendTable;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of backends and their ids")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // A count from a corrupt state is not trusted with more
                // than a million backends' room; past that the list grows.
                let count = seq.size_hint().unwrap_or(0).min(1 << 20);
                let mut entries = Vec::with_capacity(count + count / 16 + 16);
                while let Some((id, backend)) = seq.next_element::<(BackendId, BackendAddr)>()? {
                    entries.push((id, Some(backend)));
                }
                let mut table = BackendTable { entries, holes: 0 };
                // Only a state written by hand is out of order.
                if !table.entries.is_sorted_by(|a, b| a.0 < b.0) {
                    table.sort_entries();
                }
                Ok(table)
            }
        }
        deserializer.deserialize_seq(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{draws::Draws, model::Protocol};

    fn backend(n: u32) -> BackendAddr {
        BackendAddr {
            address: format!("192.0.2.{}:{}", n % 200 + 1, 80 + n / 200).parse().unwrap(),
            protocol: Protocol::Tcp,
            local: false,
        }
    }

    /// Random inserts, removals, extends and runs of removals do to the table what
    /// they do to a B-tree map, which the table replaced.
    #[test]
    fn a_table_holds_what_a_map_given_the_same_changes_holds() {
        let mut draws = Draws(0x9e37_79b9_7f4a_7c15);
        for _ in 0..50 {
            let (mut table, mut map) = (BackendTable::default(), BTreeMap::new());
            for _ in 0..200 {
                let id = draws.below(60) as BackendId;
                match draws.below(10) {
                    0..=3 => {
                        table.insert(id, backend(id + 1000 * draws.below(2) as u32));
                        map.insert(id, *table.get(&id).unwrap());
                    }
                    4..=6 => assert_eq!(table.remove(&id), map.remove(&id)),
                    7 => {
                        let pairs: Vec<_> = (0..draws.below(5))
                            .map(|_| {
                                let id = draws.below(80) as BackendId;
                                (id, backend(id))
                            })
                            .collect();
                        table.extend(pairs.iter().copied());
                        map.extend(pairs);
                    }
                    8 => {
                        // Many removals in a row: the holes are swept.
                        let odd = draws.below(2) as u32;
                        for id in (0..80).filter(|id| id % 2 == odd) {
                            assert_eq!(table.remove(&id), map.remove(&id));
                        }
                    }
                    _ => {
                        let mut lookup = table.lookup(None, 1);
                        let wanted = backend(draws.below(80) as u32);
                        let next = map.keys().last().map_or(1, |last| last + 1);
                        let id = table.id_of(&mut lookup, wanted, || next);
                        let known = map.iter().find(|(_, b)| **b == wanted).map(|(id, _)| *id);
                        assert_eq!(id, known.unwrap_or(next));
                        map.insert(id, wanted);
                    }
                }
                assert_eq!(
                    table.iter().map(|(id, b)| (*id, *b)).collect::<Vec<_>>(),
                    map.iter().map(|(id, b)| (*id, *b)).collect::<Vec<_>>()
                );
                assert_eq!(table.len(), map.len());
                for id in 0..80 {
                    assert_eq!(table.get(&id), map.get(&id));
                }
            }
        }
    }

    /// A few pairs out of order put each in its place (a change replayed
    /// from the record), many are sorted in: both as a map does.
    #[test]
    fn pairs_out_of_order_extend_a_table_as_a_map() {
        let mut draws = Draws(0x5851_f42d_4c95_7f2d);
        for added in [1, 5, 40, 900] {
            let mut map: BTreeMap<BackendId, BackendAddr> =
                (0..1000).map(|id| (id * 2, backend(id))).collect();
            let mut table: BackendTable = map.iter().map(|(id, b)| (*id, *b)).collect();
            for id in (0..100).map(|id| id * 6) {
                assert_eq!(table.remove(&id), map.remove(&id));
            }
            let pairs: Vec<(BackendId, BackendAddr)> = (0..added)
                .map(|_| {
                    let id = draws.below(2100) as BackendId;
                    (id, backend(id + 7))
                })
                .collect();
            table.extend(pairs.iter().copied());
            map.extend(pairs);
            assert_eq!(table.iter().collect::<Vec<_>>(), map.iter().collect::<Vec<_>>(), "{added}");
            assert_eq!(table.len(), map.len());
        }
    }

    #[test]
    fn it_reads_and_writes_as_the_map_did() {
        let map: BTreeMap<BackendId, BackendAddr> =
            [(3, backend(3)), (9, backend(9)), (12, backend(1))].into();
        let table: BackendTable = map.iter().map(|(id, b)| (*id, *b)).collect();
        let as_map = postcard::to_allocvec(&map.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(postcard::to_allocvec(&table).unwrap(), as_map);
        let read: BackendTable = postcard::from_bytes(&as_map).unwrap();
        assert_eq!(read, table);
        assert!(read.entries.capacity() > read.entries.len(), "room for a change's backends");
        // Pairs out of order, an id twice: read as a map collects them.
        let pairs = [(9, backend(9)), (3, backend(3)), (9, backend(4))];
        let read: BackendTable =
            postcard::from_bytes(&postcard::to_allocvec(&pairs.to_vec()).unwrap()).unwrap();
        assert_eq!(read, pairs.into_iter().collect::<BTreeMap<_, _>>().into_iter().collect());
        assert_eq!(read.get(&9), Some(&backend(4)));
    }
}
