//! What a cluster watch reads for one batch of changes: only the documents
//! that can change what it applies, not every document of the cluster.
//!
//! A sync that reads every document (`read_documents`) keeps the applied
//! objects whose documents, and what they read, did not change (reuse.rs);
//! still, it fingerprints every document and matches every applied object,
//! which at 100,000 Services is most of what a one-endpoint change costs.
//! `Index` keeps, between batches, which documents each applied object was
//! made of and what it read, so a batch picks out what `read_documents`
//! would not keep: the objects made of a document that changed or left,
//! the objects a new or changed document belongs to, the objects that read
//! any of those, what policies read, and this node's Node; with every
//! document no applied object was made of (policies, Pods, Services that
//! make no object), which a full read parses every time. Reading that part
//! of the cluster gives exactly what reading all of it gives for those
//! objects, and the others are kept as they are.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::{Document, KubeObject, ParsedDocuments, fingerprint_seed, objects::node_owner, policies, read};
use crate::{
    model::{Fingerprint, SyncedObject, ThisNode},
    transaction::Continued,
};

/// The part of the cluster one batch reads.
pub struct Selection<'a> {
    /// The documents to read, in label order.
    pub documents: Vec<&'a Document>,
    /// The applied objects that may be kept from them.
    pub previous: Vec<Arc<SyncedObject>>,
    /// The owners whose applied objects the reading replaces: what it
    /// makes of them, or nothing. None: every object of the source.
    pub replaced: Option<HashSet<String>>,
}

/// What the objects of the cluster source were made of, between batches.
/// It describes the state the last change it was told of (`applied`)
/// applied; a batch that starts from another state reads everything.
pub struct Index {
    seed: u64,
    source: String,
    /// The label of every document, by its fingerprint.
    label_of: HashMap<Fingerprint, String>,
    /// Every applied object, by owner.
    applied: HashMap<String, Arc<SyncedObject>>,
    /// The owner of the applied object each fingerprint went into.
    made_of: HashMap<Fingerprint, String>,
    /// The owners of the applied objects that read each owner.
    readers: HashMap<String, HashSet<String>>,
    /// Applied objects that record no input: always translated anew.
    always: HashSet<String>,
    /// The labels of the documents no applied object was made of.
    unclaimed: BTreeSet<String>,
    /// The index describes no state yet (or a failed batch left it unsure).
    built: bool,
    /// What the unclaimed documents parsed to, which every batch reads.
    parsed: ParsedDocuments,
}

impl Index {
    pub fn new(this_node: &ThisNode, source: &str) -> Self {
        Self {
            seed: fingerprint_seed(this_node),
            source: source.to_owned(),
            label_of: HashMap::default(),
            applied: HashMap::default(),
            made_of: HashMap::default(),
            readers: HashMap::default(),
            always: HashSet::default(),
            unclaimed: BTreeSet::new(),
            built: false,
            parsed: ParsedDocuments::default(),
        }
    }

    /// What documents parsed to in earlier batches, for reading
    /// `selection`: one of part of the cluster reads the unclaimed
    /// documents again. None for one of all of it, which would keep the
    /// whole cluster parsed at the peak of a first sync.
    pub fn parsed_for(&self, selection: &Selection<'_>) -> Option<&ParsedDocuments> {
        selection.replaced.is_some().then_some(&self.parsed)
    }

    /// A document's fingerprint, as `read_documents` gives its item.
    fn fingerprint(&self, document: &Document) -> Fingerprint {
        xxhash_rust::xxh3::xxh3_128_with_seed(&document.hash().to_le_bytes(), self.seed)
    }

    /// What to read of `documents` (the cluster now) after `changed` (the
    /// labels that came, changed or left since the state `synced` was
    /// applied, with their documents then), for `this_node`. Everything,
    /// unless `synced` is the very state the index describes: the one the
    /// last change it was told of applied (`continued`).
    pub fn select<'a>(
        &mut self,
        documents: &'a BTreeMap<String, Document>,
        changed: &BTreeMap<String, Option<Document>>,
        synced: &[Arc<SyncedObject>],
        continued: Continued,
        this_node: &ThisNode,
    ) -> Selection<'a> {
        if !(self.built && continued.0) {
            self.built = false;
            let previous = synced.iter().filter(|o| o.source == self.source).cloned().collect();
            return Selection { documents: documents.values().collect(), previous, replaced: None };
        }
        // The owners whose documents changed: those made of a document
        // that changed or left, and those a new or changed one belongs to.
        let mut changed_owners: HashSet<String> = HashSet::default();
        for (label, old) in changed {
            if let Some(old) = old
                && let Some(owner) = self.made_of.get(&self.fingerprint(old))
            {
                changed_owners.insert(owner.clone());
            }
            // (Read again below, where an error in it is reported.)
            if let Some(document) = documents.get(label) {
                let objects = read(label, document.json().as_slice()).unwrap_or_default();
                changed_owners.extend(objects.iter().filter_map(KubeObject::owner));
            }
        }
        // Those, what reads them (Services read Nodes; what reads Services,
        // policies, is always read), what is always read, and this node's
        // Node, which every Service's topology may read.
        let mut affected: HashSet<String> = self.always.clone();
        affected.insert(node_owner(&this_node.name));
        let readers = changed_owners.iter().filter_map(|owner| self.readers.get(owner)).flatten();
        affected.extend(readers.cloned().collect::<Vec<_>>());
        affected.extend(changed_owners);
        let mut labels: BTreeSet<&str> = self.unclaimed.iter().map(String::as_str).collect();
        labels.extend(changed.keys().map(String::as_str).filter(|label| documents.contains_key(*label)));
        // With what they read, to tell whether it is as they read it, and
        // what policies read: until nothing is added (Nodes read nothing).
        loop {
            let before = affected.len();
            let read: Vec<String> = (affected.iter().filter_map(|owner| self.applied.get(owner)))
                .flat_map(|object| object.dependencies.iter().map(|read| read.owner.clone()))
                .collect();
            affected.extend(read);
            // What policies read (they are among the unclaimed documents).
            affected.extend(self.read_by_policies(documents, &labels, &affected, this_node));
            if affected.len() == before {
                break;
            }
        }
        let previous: Vec<Arc<SyncedObject>> =
            affected.iter().filter_map(|owner| self.applied.get(owner)).cloned().collect();
        labels.extend(
            (previous.iter().flat_map(|object| &object.inputs))
                .filter_map(|fingerprint| self.label_of.get(fingerprint))
                .map(String::as_str),
        );
        let documents = labels.into_iter().filter_map(|label| documents.get(label)).collect();
        Selection { documents, previous, replaced: Some(affected) }
    }

    /// The owners the policies among the documents of `labels` and of the
    /// `affected` objects read, when those are all read.
    fn read_by_policies(
        &self,
        documents: &BTreeMap<String, Document>,
        labels: &BTreeSet<&str>,
        affected: &HashSet<String>,
        this_node: &ThisNode,
    ) -> BTreeSet<String> {
        let is_policy =
            |label: &&str| label.starts_with("LocalRedirectPolicy ") || label.starts_with("BalancingPolicy ");
        if !labels.iter().any(is_policy) {
            return BTreeSet::new();
        }
        let of_affected = (affected.iter().filter_map(|owner| self.applied.get(owner)))
            .flat_map(|object| &object.inputs)
            .filter_map(|fingerprint| self.label_of.get(fingerprint))
            .map(String::as_str);
        let every: BTreeSet<&str> = labels.iter().copied().chain(of_affected).collect();
        let objects: Vec<KubeObject> = (every.into_iter())
            .filter_map(|label| documents.get(label))
            .flat_map(|document| read(&document.label, document.json().as_slice()).unwrap_or_default())
            .collect();
        policies::reads(objects.iter(), &this_node.name)
    }

    /// A batch of `changed` documents (`documents` now) was applied: the
    /// objects of `replaced` (`Selection::replaced`) were replaced by
    /// `made`, and the state is now `synced`. The index describes that
    /// state from now on.
    pub fn applied(
        &mut self,
        documents: &BTreeMap<String, Document>,
        changed: &BTreeMap<String, Option<Document>>,
        replaced: Option<HashSet<String>>,
        made: &[Arc<SyncedObject>],
        synced: &[Arc<SyncedObject>],
    ) {
        let Some(replaced) = replaced.filter(|_| self.built) else {
            self.rebuild(documents, synced);
            return;
        };
        // The documents that changed, then the objects replaced.
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for (label, old) in changed {
            if let Some(old) = old {
                let old = self.fingerprint(old);
                if self.label_of.get(&old) == Some(label) {
                    self.label_of.remove(&old);
                }
            }
            if let Some(document) = documents.get(label) {
                self.label_of.insert(self.fingerprint(document), label.clone());
            }
            touched.insert(label.clone());
        }
        let made_owners = made.iter().map(|object| &object.owner);
        for owner in replaced.iter().chain(made_owners) {
            if let Some(old) = self.applied.remove(owner) {
                self.forget(&old, &mut touched);
            }
        }
        for object in made {
            if object.source == self.source {
                self.remember(object, &mut touched);
            }
        }
        for label in touched {
            let claimed =
                documents.get(&label).is_none_or(|d| self.made_of.contains_key(&self.fingerprint(d)));
            if claimed {
                self.unclaimed.remove(&label);
            } else {
                self.unclaimed.insert(label);
            }
        }
        self.keep_parsed_unclaimed(documents);
    }

    /// Forgets what other documents than the unclaimed ones parsed to:
    /// only those are read in every batch.
    fn keep_parsed_unclaimed(&mut self, documents: &BTreeMap<String, Document>) {
        let unclaimed: HashSet<u128> =
            self.unclaimed.iter().filter_map(|label| documents.get(label)).map(Document::hash).collect();
        self.parsed.retain(|hash| unclaimed.contains(&hash));
    }

    /// Describes `synced` made of `documents`, from nothing.
    fn rebuild(&mut self, documents: &BTreeMap<String, Document>, synced: &[Arc<SyncedObject>]) {
        self.label_of = documents.iter().map(|(label, d)| (self.fingerprint(d), label.clone())).collect();
        self.applied.clear();
        self.made_of.clear();
        self.readers.clear();
        self.always.clear();
        let mut touched = BTreeSet::new();
        for object in synced {
            if object.source == self.source {
                self.remember(object, &mut touched);
            }
        }
        self.unclaimed = (documents.iter())
            .filter(|(_, d)| !self.made_of.contains_key(&self.fingerprint(d)))
            .map(|(label, _)| label.clone())
            .collect();
        self.keep_parsed_unclaimed(documents);
        self.built = true;
    }

    /// Indexes an applied object; the labels of its documents go to `touched`.
    fn remember(&mut self, object: &Arc<SyncedObject>, touched: &mut BTreeSet<String>) {
        let owner = &object.owner;
        for fingerprint in &object.inputs {
            self.made_of.insert(*fingerprint, owner.clone());
            touched.extend(self.label_of.get(fingerprint).cloned());
        }
        for read in &object.dependencies {
            self.readers.entry(read.owner.clone()).or_default().insert(owner.clone());
        }
        if object.inputs.is_empty() {
            self.always.insert(owner.clone());
        }
        self.applied.insert(owner.clone(), Arc::clone(object));
    }

    /// Takes an applied object out of the index; the labels of its
    /// documents go to `touched`.
    fn forget(&mut self, object: &SyncedObject, touched: &mut BTreeSet<String>) {
        for fingerprint in &object.inputs {
            if self.made_of.get(fingerprint) == Some(&object.owner) {
                self.made_of.remove(fingerprint);
            }
            touched.extend(self.label_of.get(fingerprint).cloned());
        }
        for read in &object.dependencies {
            if let Some(readers) = self.readers.get_mut(&read.owner) {
                readers.remove(&object.owner);
                if readers.is_empty() {
                    self.readers.remove(&read.owner);
                }
            }
        }
        self.always.remove(&object.owner);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::inputs::{CLUSTER_SOURCE, from_cluster};

    fn document(label: &str, json: serde_json::Value) -> Document {
        Document::new(label.to_owned(), serde_json::to_vec(&json).unwrap())
    }

    /// Service `s{i}` with a slice of two endpoints hinted for zones a and
    /// b: its translation reads this node's Node.
    fn service(i: u32, address: u32) -> [(String, Document); 2] {
        let (name, slice) = (format!("s{i}"), format!("s{i}-1"));
        let service = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"clusterIP": format!("198.18.1.{}", i + 1), "ports": [{"port": 80}],
                     "trafficDistribution": "PreferClose"}});
        let endpoints: Vec<serde_json::Value> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(e, zone)| {
                json!({"addresses": [format!("192.0.2.{}", address + e as u32)],
                       "hints": {"forZones": [{"name": zone}]}})
            })
            .collect();
        let slice_json = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice, "namespace": "ns", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "", "port": 8080}]});
        let (service_label, slice_label) =
            (format!("Service ns/{name}"), format!("EndpointSlice ns/{slice}"));
        [
            (service_label.clone(), document(&service_label, service)),
            (slice_label.clone(), document(&slice_label, slice_json)),
        ]
    }

    fn owners(objects: &[Arc<SyncedObject>]) -> BTreeSet<String> {
        objects.iter().map(|object| object.owner.clone()).collect()
    }

    /// A headless Service makes no object, so every batch reads it and its
    /// slice again (they are unclaimed): parsed in the first batch that
    /// reads part of the cluster, they are kept parsed, and nothing else is.
    #[test]
    fn what_every_batch_reads_again_is_kept_parsed() {
        let this_node = ThisNode::named("node-a");
        let headless = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}});
        let headless_slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "db-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.90"]}], "ports": [{"port": 5432}]});
        let mut documents: BTreeMap<String, Document> = service(0, 10).into_iter().collect();
        for (label, json) in [("Service ns/db", headless), ("EndpointSlice ns/db-1", headless_slice)] {
            documents.insert(label.to_owned(), document(label, json));
        }
        let every: Vec<&Document> = documents.values().collect();
        let inputs = from_cluster(&every, &this_node, &[], None).unwrap();
        assert!(inputs.notes.iter().any(|note| note.contains("ns/db is headless")), "{:?}", inputs.notes);
        let mut synced: Vec<Arc<SyncedObject>> =
            inputs.sources.into_iter().flat_map(|source| source.objects).map(|o| o.value).collect();
        let mut index = Index::new(&this_node, CLUSTER_SOURCE);
        index.applied(&documents, &BTreeMap::new(), None, &[], &synced);
        let unclaimed: BTreeSet<u128> =
            ["Service ns/db", "EndpointSlice ns/db-1"].map(|label| documents[label].hash()).into();

        for (batch, address) in [(1, 20), (2, 30)] {
            let [_, (label, slice)] = service(0, address);
            let old = documents.insert(label.clone(), slice);
            let changed = BTreeMap::from([(label, old)]);
            let selection = index.select(&documents, &changed, &synced, Continued(true), &this_node);
            let read: Vec<&str> = selection.documents.iter().map(|d| d.label.as_str()).collect();
            assert_eq!(read.len(), 4, "batch {batch}: {read:?}");
            let inputs = from_cluster(
                &selection.documents,
                &this_node,
                &selection.previous,
                index.parsed_for(&selection),
            )
            .unwrap();
            assert!(inputs.notes.iter().any(|note| note.contains("ns/db is headless")), "batch {batch}");
            let made: Vec<Arc<SyncedObject>> =
                inputs.sources.into_iter().flat_map(|source| source.objects).map(|o| o.value).collect();
            synced = made.clone();
            index.applied(&documents, &changed, selection.replaced, &made, &synced);
            assert_eq!(index.parsed.hashes(), unclaimed, "batch {batch}");
        }
    }

    /// A slice that changes makes a batch read its Service and what that
    /// reads (this node's Node), not the other Services that read the
    /// Node too; the Node changing makes it read all of them.
    #[test]
    fn a_batch_reads_what_changed_and_what_reads_it_only() {
        let this_node = ThisNode::named("node-a");
        let node = |zone: &str| {
            let json = json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": zone}},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.200"}]}});
            ("Node node-a".to_owned(), document("Node node-a", json))
        };
        let mut documents: BTreeMap<String, Document> =
            (0..20).flat_map(|i| service(i, 10 + 2 * i)).collect();
        documents.extend([node("a")]);
        let every: Vec<&Document> = documents.values().collect();
        let inputs = from_cluster(&every, &this_node, &[], None).unwrap();
        let inputs_notes = inputs.notes.clone();
        let synced: Vec<Arc<SyncedObject>> =
            inputs.sources.into_iter().flat_map(|source| source.objects).map(|o| o.value).collect();
        assert!(
            synced.iter().filter(|o| !o.dependencies.is_empty()).count() == 20,
            "every Service reads the Node (notes: {inputs_notes:?})"
        );
        let mut index = Index::new(&this_node, CLUSTER_SOURCE);
        index.applied(&documents, &BTreeMap::new(), None, &[], &synced);

        let [_, (label, slice)] = service(7, 100);
        let old = documents.insert(label.clone(), slice);
        let changed = BTreeMap::from([(label, old)]);
        let selection = index.select(&documents, &changed, &synced, Continued(true), &this_node);
        assert_eq!(
            owners(&selection.previous),
            BTreeSet::from(["service/ns/s7".into(), "node/node-a".into()])
        );
        assert_eq!(selection.documents.len(), 3, "the Service, its slice and the Node");

        let (label, moved) = node("b");
        let old = documents.insert(label.clone(), moved);
        let changed = BTreeMap::from([(label, old)]);
        let selection = index.select(&documents, &changed, &synced, Continued(true), &this_node);
        assert_eq!(selection.previous.len(), 21, "every Service and the Node");
    }
}
