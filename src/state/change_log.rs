//! The change log (`state.log`): what each change did to the applied
//! state, appended after the snapshot (`state.bin`) it follows, so that a
//! change writes what it changed rather than the whole state (30 MB at
//! 100,000 Services). Reading is the snapshot, then every record in order.
//!
//! The log starts with a magic and the generation of the snapshot it
//! follows: a snapshot written anew (compaction, `StateDir::write`) gets
//! the next generation and a new log, so a log left behind by a crash
//! between the two is never replayed over the snapshot that already holds
//! it. Each record is its length (`u32`), the XXH3 of its body (`u64`),
//! both little endian, and the body: a `Delta` in postcard. A record cut
//! short or damaged ends the log: it can only be the last one, torn by a
//! crash while it was written, before the change that wrote it finished
//! (the map-writes mark stays, and the next change repairs the maps from
//! what they hold). The next writer cuts it off.
//!
//! A record's layout (`Delta`, in postcard) is part of the state format:
//! changing it bumps `STATE_VERSION`, as a change of `AppliedState` does.
//!
//! Why not an embedded database (redb): every one-shot command reads the
//! whole state, which one postcard blob decodes fastest, and a change is
//! one record appended; a B-tree per entry would cost more on both.

use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::{AppliedState, Before};
use crate::{
    bpf::maps::{BackendId, ServiceId},
    image::{BackendAddr, FrontendImage, Image, Touched},
    model::{Frontend, Policy, SyncedObject},
    plan::changes,
};

pub const LOG_FILE: &str = "state.log";
const MAGIC: &[u8; 8] = b"balctl\0L";
/// The magic and the generation.
pub const HEADER_LEN: u64 = MAGIC.len() as u64 + 8;
/// A record's length and checksum.
const FRAME_LEN: usize = 4 + 8;

/// The start of a log that follows the snapshot of `generation`.
pub fn header(generation: u64) -> Vec<u8> {
    let mut header = MAGIC.to_vec();
    header.extend(generation.to_le_bytes());
    header
}

/// What one change did to the applied state: enough to make the state
/// before it into the state after it, exactly (`apply`).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// All the policies, when they changed (they are few).
    policies: Option<Policies>,
    /// Synced objects gone, by owner (unique in a state); objects that
    /// take the place of the one of their owner; then objects added at the
    /// end, in order.
    synced_removed: Vec<String>,
    synced_replaced: Vec<Arc<SyncedObject>>,
    synced_added: Vec<Arc<SyncedObject>>,
    frontends_removed: Vec<Frontend>,
    frontends_put: Vec<(Frontend, FrontendImage)>,
    backends_removed: Vec<BackendId>,
    backends_put: Vec<(BackendId, BackendAddr)>,
    node_addresses: Option<BTreeSet<IpAddr>>,
    next_service_id: ServiceId,
    next_backend_id: BackendId,
    node_ports_on_loopback: bool,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Policies(#[serde(with = "super::policy_records")] Vec<Policy>);

impl Delta {
    /// The change from `before` to `after`. What it did to the synced
    /// objects is what their journal says (`Synced::changes`): a change
    /// that removes and replaces objects in place and appends new ones, as
    /// a sync does, records only those; objects rebuilt in any other order
    /// replay exactly too, with a longer record.
    ///
    /// The image's frontends and backends are compared where `touched`
    /// says they may differ (the frontends of the rules a change removed
    /// and added, `Touched::Frontends`), else whole.
    pub fn between(before: Before, after: &AppliedState, touched: Touched) -> Self {
        let synced = after.synced.changes();
        let (image_before, image_after) = (before.image, &after.image);
        let ((frontends_removed, frontends_put), (backends_removed, backends_put)) = match touched {
            Touched::All => (
                split(owned(changes(image_before.frontends.iter(), image_after.frontends.iter()))),
                split(owned(changes(image_before.backends.iter(), image_after.backends.iter()))),
            ),
            Touched::Frontends(frontends) => {
                let entry = |image: &'_ Image, frontend: &Frontend| image.frontends.get(frontend).cloned();
                let touched = frontends.iter().map(|f| (*f, entry(image_before, f), entry(image_after, f)));
                let frontends = split(touched.filter(|(_, old, new)| old != new));
                // A backend id always names the same backend, and comes and
                // goes with the frontends that use it: those touched.
                let ids = |image: &'_ Image| -> BTreeSet<BackendId> {
                    (frontends_of(image, &frontends)).flat_map(|f| f.backends.iter().copied()).collect()
                };
                let removed: Vec<BackendId> = ids(image_before)
                    .into_iter()
                    .filter(|id| !image_after.backends.contains_key(id))
                    .collect();
                let put = (ids(image_after).into_iter())
                    .filter(|id| !image_before.backends.contains_key(id))
                    .filter_map(|id| Some((id, *image_after.backends.get(&id)?)))
                    .collect();
                (frontends, (removed, put))
            }
        };
        Self {
            policies: (before.policies != after.policies).then(|| Policies(after.policies.clone())),
            synced_removed: synced.removed.iter().map(|object| object.owner.clone()).collect(),
            // An equal object in the place of its owner's changes nothing.
            synced_replaced: (synced.replaced.iter())
                .filter(|(old, new)| old != new)
                .map(|(_, new)| Arc::clone(new))
                .collect(),
            synced_added: synced.added.to_vec(),
            frontends_removed,
            frontends_put,
            backends_removed,
            backends_put,
            node_addresses: (image_before.node_addresses != image_after.node_addresses)
                .then(|| image_after.node_addresses.clone()),
            next_service_id: image_after.next_service_id,
            next_backend_id: image_after.next_backend_id,
            node_ports_on_loopback: image_after.node_ports_on_loopback,
        }
    }
}

/// The frontends of `image` among `changed` (removed ones and put ones).
fn frontends_of<'a>(
    image: &'a Image,
    (removed, put): &'a (Vec<Frontend>, Vec<(Frontend, FrontendImage)>),
) -> impl Iterator<Item = &'a FrontendImage> {
    removed.iter().chain(put.iter().map(|(frontend, _)| frontend)).filter_map(|f| image.frontends.get(f))
}

/// Changes of borrowed entries, owned.
fn owned<'a, K: Copy + 'a, V: Clone + 'a>(
    changes: impl Iterator<Item = (&'a K, Option<&'a V>, Option<&'a V>)>,
) -> impl Iterator<Item = (K, Option<V>, Option<V>)> {
    changes.map(|(key, old, new)| (*key, old.cloned(), new.cloned()))
}

/// The keys a diff removes, and the entries it puts.
fn split<K, V>(changes: impl Iterator<Item = (K, Option<V>, Option<V>)>) -> (Vec<K>, Vec<(K, V)>) {
    let (mut removed, mut put) = (Vec::new(), Vec::new());
    for (key, _, after) in changes {
        match after {
            Some(value) => put.push((key, value)),
            None => removed.push(key),
        }
    }
    (removed, put)
}

/// The records of a log, applied to the state of its snapshot. Synced
/// objects are found by owner through an index built once, when a record
/// first names one, so a record costs what it holds, not the state's size.
/// The index is of the owners' 64-bit hashes (no copy of 100,000 names);
/// the object found is checked to be the owner's, so two owners of one
/// hash would be reported, never mistaken for each other.
pub struct Replay {
    state: AppliedState,
    /// None until a record names a synced object.
    synced: Option<Slots>,
}

/// The synced objects, with a hole where one was removed, and their index
/// by owner hash.
type Slots = (Vec<Option<Arc<SyncedObject>>>, HashMap<u64, usize>);

fn owner_hash(owner: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(owner.as_bytes())
}

impl Replay {
    pub fn new(state: AppliedState) -> Self {
        Self { state, synced: None }
    }

    pub fn apply(&mut self, delta: Delta) -> Result<(), String> {
        let state = &mut self.state;
        if let Some(Policies(policies)) = delta.policies {
            state.policies = policies;
        }
        let names_synced = !(delta.synced_removed.is_empty()
            && delta.synced_replaced.is_empty()
            && delta.synced_added.is_empty());
        if names_synced {
            let (synced, by_owner) = self.synced.get_or_insert_with(|| {
                let synced: Vec<_> =
                    std::mem::take(&mut state.synced).into_vec().into_iter().map(Some).collect();
                let by_owner = (synced.iter().enumerate())
                    .filter_map(|(i, object)| Some((owner_hash(&object.as_ref()?.owner), i)))
                    .collect();
                (synced, by_owner)
            });
            // The slot of `owner`'s object.
            let find = |synced: &[Option<Arc<SyncedObject>>], by_owner: &HashMap<u64, usize>, owner: &str| {
                by_owner
                    .get(&owner_hash(owner))
                    .copied()
                    .filter(|&i| synced[i].as_ref().is_some_and(|object| object.owner == owner))
            };
            for owner in delta.synced_removed {
                let index = find(synced, by_owner, &owner)
                    .ok_or_else(|| format!("it removes {owner}, which is not there"))?;
                by_owner.remove(&owner_hash(&owner));
                synced[index] = None;
            }
            for object in delta.synced_replaced {
                let index = find(synced, by_owner, &object.owner)
                    .ok_or_else(|| format!("it replaces {}, which is not there", object.owner))?;
                synced[index] = Some(object);
            }
            for object in delta.synced_added {
                if by_owner.insert(owner_hash(&object.owner), synced.len()).is_some() {
                    return Err(format!("it adds {}, which is there already", object.owner));
                }
                synced.push(Some(object));
            }
        }
        let image = &mut state.image;
        for frontend in &delta.frontends_removed {
            image.frontends.remove(frontend);
        }
        image.frontends.extend(delta.frontends_put);
        for id in &delta.backends_removed {
            image.backends.remove(id);
        }
        image.backends.extend(delta.backends_put);
        if let Some(addresses) = delta.node_addresses {
            image.node_addresses = addresses;
        }
        image.next_service_id = delta.next_service_id;
        image.next_backend_id = delta.next_backend_id;
        image.node_ports_on_loopback = delta.node_ports_on_loopback;
        Ok(())
    }

    pub fn finish(self) -> AppliedState {
        let mut state = self.state;
        if let Some((synced, _)) = self.synced {
            state.synced = synced.into_iter().flatten().collect();
        }
        state
    }
}

/// One record: its frame and body.
pub fn record(delta: &Delta) -> Vec<u8> {
    let body = postcard::to_stdvec(delta).expect("a delta serializes");
    let length = u32::try_from(body.len()).expect("a change record under 4 GiB");
    let mut record = Vec::with_capacity(FRAME_LEN + body.len());
    record.extend(length.to_le_bytes());
    record.extend(xxh3_64(&body).to_le_bytes());
    record.extend(body);
    record
}

/// What reading a log found.
#[derive(Debug, PartialEq, Eq)]
pub struct Read {
    /// The records read whole, in order.
    pub records: usize,
    /// Where they end: the length of the log without a torn record.
    pub end: u64,
}

/// The records of `log` (a whole file), each decoded and handed to
/// `each`, if it follows the snapshot of `generation`; None if it follows
/// another (a log left behind by an interrupted compaction) or is no log.
pub fn read(
    log: &[u8],
    generation: u64,
    format: u32,
    mut each: impl FnMut(Delta) -> Result<(), String>,
) -> Result<Option<Read>, String> {
    let Some(body) = log.strip_prefix(MAGIC.as_slice()) else { return Ok(None) };
    let Some((found, mut rest)) = body.split_first_chunk::<8>() else { return Ok(None) };
    if u64::from_le_bytes(*found) != generation {
        return Ok(None);
    }
    let mut read = Read { records: 0, end: HEADER_LEN };
    while let Some((frame, after)) = rest.split_first_chunk::<FRAME_LEN>() {
        let (length, sum) = frame.split_at(4);
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
        let Some(body) = after.get(..length) else { break };
        if xxh3_64(body).to_le_bytes() != sum {
            break;
        }
        // The log of an older format's snapshot is read to migrate it.
        let delta: Delta = if format == super::STATE_VERSION {
            postcard::from_bytes(body).map_err(|err| format!("record {}: {err}", read.records + 1))?
        } else {
            super::legacy::from_bytes(body, format)
                .map_err(|err| format!("record {}: {err}", read.records + 1))?
        };
        each(delta).map_err(|why| format!("record {}: {why}", read.records + 1))?;
        read.records += 1;
        read.end += (FRAME_LEN + length) as u64;
        rest = &after[length..];
    }
    Ok(Some(read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::FrontendRule, state::Slot};

    fn log_of(generation: u64, deltas: &[Delta]) -> Vec<u8> {
        let mut log = header(generation);
        for delta in deltas {
            log.extend(record(delta));
        }
        log
    }

    fn replayed(log: &[u8], generation: u64, state: AppliedState) -> (AppliedState, Option<Read>) {
        let mut replay = Replay::new(state);
        let read = read(log, generation, crate::state::STATE_VERSION, |delta| replay.apply(delta)).unwrap();
        (replay.finish(), read)
    }

    #[test]
    fn a_torn_last_record_ends_the_log() {
        let one = Delta { next_service_id: 7, node_ports_on_loopback: true, ..Delta::default() };
        let two = Delta { next_service_id: 9, node_ports_on_loopback: true, ..Delta::default() };
        let log = log_of(3, &[one, two]);
        let whole = replayed(&log, 3, AppliedState::default());
        assert_eq!(whole.0.image.next_service_id, 9);
        assert_eq!(whole.1, Some(Read { records: 2, end: log.len() as u64 }));
        let first_end = whole.1.unwrap().end - record(&Delta::default()).len() as u64;
        for cut in [1, 5, 13, record(&Delta::default()).len() - 1] {
            let (state, read) = replayed(&log[..log.len() - cut], 3, AppliedState::default());
            assert_eq!(state.image.next_service_id, 7, "cut {cut}");
            assert_eq!(read.unwrap().records, 1, "cut {cut}");
        }
        let mut damaged = log.clone();
        *damaged.last_mut().unwrap() ^= 1;
        let (state, read) = replayed(&damaged, 3, AppliedState::default());
        assert_eq!((state.image.next_service_id, read.unwrap().end), (7, first_end));
    }

    #[test]
    fn a_log_of_another_generation_is_not_replayed() {
        let log = log_of(3, &[Delta { next_service_id: 7, ..Delta::default() }]);
        assert_eq!(replayed(&log, 4, AppliedState::default()).1, None);
        assert_eq!(replayed(b"not a log", 3, AppliedState::default()).1, None);
    }

    /// A sync replaces objects in place, removes some and appends new ones:
    /// its record holds those only, and replays to exactly the new state.
    #[test]
    fn a_record_holds_what_changed_only() {
        let object = |owner: &str, port: u16| {
            Arc::new(SyncedObject {
                source: "kubernetes".into(),
                owner: owner.into(),
                rules: Vec::new(),
                addresses: Vec::new(),
                inputs: vec![u128::from(port)],
                health_check: None,
                dependencies: Vec::new(),
                held_back: Vec::new(),
            })
        };
        let before = AppliedState {
            synced: (0..100).map(|i| object(&format!("service/ns/s{i}"), 1)).collect(),
            ..AppliedState::default()
        };
        // Edited in place, as a sync does.
        let mut after = before.clone();
        after.synced.begin_change();
        after.synced.edit(|slot| match slot.owner.as_str() {
            "service/ns/s50" => Slot::Replace(object("service/ns/s50", 2)),
            "service/ns/s0" | "service/ns/s70" => Slot::Remove,
            _ => Slot::Keep,
        });
        after.synced.append([object("service/ns/new", 1)]);
        let delta = Delta::between(Before::from(&before), &after, Touched::All);
        assert_eq!(delta.synced_removed, ["service/ns/s0", "service/ns/s70"]);
        assert_eq!(delta.synced_replaced, [object("service/ns/s50", 2)]);
        assert_eq!(delta.synced_added, [object("service/ns/new", 1)]);
        let mut replay = Replay::new(before.clone());
        replay.apply(delta).unwrap();
        assert_eq!(replay.finish(), after);

        // Objects in another order replay exactly too.
        // Rebuilt: the same record as in place, found by a walk.
        let mut rebuilt = before.clone();
        rebuilt.synced.begin_change();
        rebuilt.synced.rebuild(after.synced.to_vec());
        let in_place = Delta::between(Before::from(&before), &after, Touched::All);
        assert_eq!(Delta::between(Before::from(&before), &rebuilt, Touched::All), in_place);

        // Objects in another order replay exactly too.
        let mut moved = before.clone();
        let mut objects = moved.synced.to_vec();
        objects.rotate_left(30);
        objects.swap(3, 90);
        moved.synced.begin_change();
        moved.synced.rebuild(objects);
        let delta = Delta::between(Before::from(&before), &moved, Touched::All);
        let mut replay = Replay::new(before);
        replay.apply(delta).unwrap();
        assert_eq!(replay.finish(), moved);
    }

    /// A change through `Image::update` recorded from the frontends it
    /// touched only: the record replays exactly, its backends included.
    #[test]
    fn a_record_of_the_touched_frontends_replays_exactly() {
        let rule = FrontendRule::plain;
        let rules = [
            rule("198.18.0.1:80", &["192.0.2.1:80", "192.0.2.2:80"]),
            rule("198.18.0.2:80", &["192.0.2.2:80", "192.0.2.3:80"]),
            rule("198.18.0.3:80", &["192.0.2.4:80"]),
        ];
        let owned = |rules: &[FrontendRule]| -> Vec<(String, FrontendRule)> {
            rules.iter().map(|r| (format!("policy/{}", r.frontend), r.clone())).collect()
        };
        let compiled = owned(&rules);
        let image =
            Image::default().update([], compiled.iter().map(|(o, r)| (o.clone(), r)), [], true).unwrap();
        let before = AppliedState { image, ..AppliedState::default() };
        // 198.18.0.1 gets other backends (192.0.2.1 goes, .5 comes), .3 goes,
        // .4 comes with a backend .2 already has; .2 stays as it was.
        let changed = owned(&[
            rule("198.18.0.1:80", &["192.0.2.2:80", "192.0.2.5:80"]),
            rule("198.18.0.4:80", &["192.0.2.2:80", "192.0.2.6:80"]),
        ]);
        let removed: Vec<Frontend> = ["198.18.0.1:80", "198.18.0.3:80"].map(|f| f.parse().unwrap()).into();
        let image = (before.image.clone())
            .updated(&removed, changed.iter().map(|(o, r)| (o.clone(), r)), [], true)
            .unwrap();
        let after = AppliedState { image, ..AppliedState::default() };
        let touched: BTreeSet<Frontend> =
            removed.iter().copied().chain(changed.iter().map(|(_, r)| r.frontend)).collect();
        let mut after = after;
        after.synced.begin_change();
        let delta = Delta::between(Before::from(&before), &after, Touched::Frontends(&touched));
        assert_eq!(delta.frontends_removed, [removed[1]]);
        assert_eq!(delta.frontends_put.len(), 2);
        assert_eq!((delta.backends_removed.len(), delta.backends_put.len()), (2, 2), "{delta:?}");
        let mut replay = Replay::new(before.clone());
        replay.apply(delta).unwrap();
        assert_eq!(replay.finish(), after);
    }

    #[test]
    fn a_record_that_removes_what_is_not_there_is_corrupt() {
        let delta = Delta { synced_removed: vec!["service/a/b".into()], ..Delta::default() };
        let mut replay = Replay::new(AppliedState::default());
        let err = read(&log_of(1, &[delta]), 1, crate::state::STATE_VERSION, |delta| replay.apply(delta))
            .unwrap_err();
        assert_eq!(err, "record 1: it removes service/a/b, which is not there");
    }
}
