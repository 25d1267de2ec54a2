//! Kubernetes YAML input: `Service`, `EndpointSlice`, `Node` and `Pod`
//! objects and the policy kinds `LocalRedirectPolicy` and `BalancingPolicy`
//! as `kubectl get -o yaml` prints them (one document, several, or a
//! `List`), translated to frontend rules with kube-proxy's semantics and the
//! policies' layers.

mod field;
mod incremental;
mod items;
mod objects;
mod parallel;
mod policies;
mod policy_objects;
mod reuse;
mod services;
/// Public for the fuzz target that compares its two readers
/// (fuzz/src/inputs.rs, `yaml_layout`).
pub mod yaml;

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::FileExt as _,
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock},
};

use anyhow::{Context as _, Result};
use rustc_hash::FxHashMap as HashMap;

use self::items::{Piece, Span};
pub use self::{
    incremental::{Index, Selection},
    objects::{CLUSTER_ANNOTATION, KubeObject, SERVICE_IMPORT_API_VERSION},
    policy_objects::POLICY_API_VERSION,
    services::{Translation, translate},
};
use crate::{
    inputs::{InputLimit, Located, location::Location},
    model::{Dependency, SyncedObject, ThisNode},
};

/// An object from the API server as JSON, with what to call it in errors
/// (`Service ns/name (from the API server)`) and the hash of its bytes,
/// computed once: a watch keeps each document until its object changes
/// (`cluster::ClusterWatch`), and a sync fingerprints documents by their hash
/// rather than hashing every one again. Kept compressed (LZ4): a watch
/// holds every document of the cluster, and reads few of them again, those
/// a change can affect (`incremental.rs`); JSON compresses 4-8 times.
#[derive(Clone, Debug)]
pub struct Document {
    pub label: String,
    compressed: Arc<[u8]>,
    hash: u128,
}

impl Document {
    pub fn new(label: String, json: impl AsRef<[u8]>) -> Self {
        let json = json.as_ref();
        let compressed = lz4_flex::compress_prepend_size(json).into();
        Self { hash: xxhash_rust::xxh3::xxh3_128(json), label, compressed }
    }

    /// Its JSON.
    pub fn json(&self) -> Vec<u8> {
        // Only `new` made the bytes: they decompress.
        lz4_flex::decompress_size_prepended(&self.compressed).expect("a document compressed by Document::new")
    }

    /// The hash of its bytes: two documents of one label with the same
    /// hash are the same.
    pub fn hash(&self) -> u128 {
        self.hash
    }
}

/// What documents parsed to in an earlier batch of a cluster watch, by the
/// document's hash. A batch reads again every document no applied object
/// was made of (`incremental.rs`: headless Services and their
/// EndpointSlices, policies, Pods), and parsing them was nearly all of a
/// one-endpoint change (with 5,000 headless Services, 560-730 ms of CPU).
/// Parsing depends on the document's bytes alone (its label too is made
/// from them: kind, namespace, name), so a copy of what it gave is what
/// parsing it again gives; `Index` keeps those of the documents the next
/// batch reads again.
#[derive(Default)]
pub struct ParsedDocuments(RwLock<HashMap<u128, Vec<KubeObject>>>);

impl ParsedDocuments {
    /// The objects of `document`: a copy of what it parsed to before, else
    /// parsed now (and kept). A document that does not parse is not kept:
    /// reading it again reports its error again.
    fn objects_of(&self, document: &Document) -> Result<Vec<KubeObject>> {
        // Read by the threads that parse at once: each holds the lock to
        // read, only a document parsed now takes it alone. (A lock poisoned
        // by a panic guards whole entries only: read on.)
        if let Some(objects) = self.0.read().unwrap_or_else(PoisonError::into_inner).get(&document.hash) {
            return Ok(objects.clone());
        }
        let objects = read(&document.label, document.json().as_slice())?;
        self.0.write().unwrap_or_else(PoisonError::into_inner).insert(document.hash, objects.clone());
        Ok(objects)
    }

    /// Keeps what the documents whose hash `keep` accepts parsed to.
    fn retain(&mut self, keep: impl Fn(u128) -> bool) {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner).retain(|hash, _| keep(*hash));
    }

    /// The hashes of the documents whose objects it holds.
    #[cfg(test)]
    fn hashes(&self) -> std::collections::BTreeSet<u128> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).keys().copied().collect()
    }
}

/// Every object of one YAML (or JSON) stream, in order.
pub fn read(file: &str, reader: impl Read) -> Result<Vec<KubeObject>> {
    read_part(file, reader, 1)
}

/// A YAML file given to `sync`, and the index of its source.
pub struct YamlFile {
    pub source: usize,
    pub path: PathBuf,
}

/// What the YAML files of one sync hold.
pub struct KubeInput {
    /// Objects parsed, each with the index of its source.
    pub parsed: Vec<(usize, KubeObject)>,
    /// Objects applied before whose input items are all still there,
    /// unchanged and with nothing added: kept as they are, without parsing
    /// their items.
    pub kept: Vec<(usize, Located<Arc<SyncedObject>>)>,
}

/// YAML files split into fingerprinted items, not parsed yet.
pub struct SplitFiles {
    files: Vec<YamlFile>,
    /// Each file's label and open handle, which items are read from.
    opened: Vec<(String, File)>,
    items: Vec<reuse::Item>,
    /// Objects of files that could not be split, parsed whole.
    parsed: Vec<(usize, KubeObject)>,
    /// How much of a file is read at most.
    limit: InputLimit,
}

/// Splits YAML files into items (see items.rs), checking the List
/// documents around them; files that cannot be split are parsed whole.
/// `this_node` is part of every fingerprint, as what an object becomes
/// depends on it. A file larger than `limit` is refused.
pub fn split_files(files: Vec<YamlFile>, this_node: &ThisNode, limit: InputLimit) -> Result<SplitFiles> {
    let seed = fingerprint_seed(this_node);
    let mut parsed = Vec::new();
    let mut items = Vec::new();
    let mut opened = Vec::new();
    for (index, yaml) in files.iter().enumerate() {
        let label = yaml.path.display().to_string();
        let file = File::open(&yaml.path).with_context(|| format!("cannot read {label}"))?;
        let len = file.metadata().with_context(|| format!("cannot read {label}"))?.len();
        limit.check_len(&label, len)?;
        let mut capped = limit.cap(&file);
        let pieces = items::split(&label, &mut capped, seed)?;
        capped.check(&label)?;
        // A List whose shell does not read in place as it should is read
        // whole, which says what is wrong with it, if anything is.
        match pieces.filter(|pieces| shells_read(&label, &file, pieces)) {
            Some(pieces) => {
                // Room for exactly its items: grown by doubling, the list
                // was copied into fresh memory at every step.
                items.reserve_exact(pieces.iter().filter(|p| matches!(p, Piece::Objects { .. })).count());
                items.extend(pieces.into_iter().filter_map(|piece| match piece {
                    Piece::Objects { kind, span, line, fingerprint } => {
                        Some(reuse::Item { file: index, kind, span, line, fingerprint })
                    }
                    Piece::ListShell { .. } => None,
                }));
            }
            None => {
                parsed.extend(
                    read_whole(&label, &file, limit)?.into_iter().map(|object| (yaml.source, object)),
                );
            }
        }
        opened.push((label, file));
    }
    // Kept through the whole parse: without the room doubling left.
    items.shrink_to_fit();
    Ok(SplitFiles { files, opened, items, parsed, limit })
}

/// Objects parsed, with the index of their source.
type Parsed = Vec<(usize, KubeObject)>;

/// Objects applied before and kept, with the index of their source.
type Kept = Vec<(usize, Located<Arc<SyncedObject>>)>;

impl SplitFiles {
    /// Parses the items that no object of `previous` (the objects applied
    /// before) was made of, and keeps those objects, unless a policy reads
    /// them. `sources` names the sources by index; `stdin` holds the
    /// objects read from standard input, which join the parsed ones.
    ///
    /// An item that does not read alone is read in its file: the split may
    /// have ended it at a line that the item goes on past in YAML's eyes
    /// (a flow collection continued at column 0). Then every file is read
    /// whole, which says what is wrong, if anything is, exactly as reading
    /// it from standard input would.
    pub fn read(
        self,
        sources: &[String],
        previous: &[Arc<SyncedObject>],
        stdin: Parsed,
        this_node: &ThisNode,
    ) -> Result<KubeInput> {
        let (mut parsed, kept) = match self.read_in_items(sources, previous, &stdin, this_node) {
            Ok((mut parsed, kept)) => {
                parsed.extend(self.parsed);
                (parsed, kept)
            }
            Err(_) => (self.read_every_file_whole()?, Vec::new()),
        };
        parsed.extend(stdin);
        Ok(KubeInput { parsed, kept })
    }

    /// The objects of the items parsed, and those kept.
    fn read_in_items(
        &self,
        sources: &[String],
        previous: &[Arc<SyncedObject>],
        stdin: &Parsed,
        this_node: &ThisNode,
    ) -> Result<(Parsed, Kept)> {
        let Self { files, opened, items, parsed: read_whole, .. } = self;
        let items = Items {
            items,
            source_of: &|item| files[item.file].source,
            parse: &|item| parse_item(&opened[item.file].0, &opened[item.file].1, item),
            location_of: &|item| object_location(&opened[item.file].0, item),
        };
        items.parse_or_keep(sources, previous, &[read_whole, stdin], this_node)
    }

    fn read_every_file_whole(&self) -> Result<Parsed> {
        let mut parsed = Vec::new();
        for (yaml, (label, file)) in self.files.iter().zip(&self.opened) {
            parsed
                .extend(read_whole(label, file, self.limit)?.into_iter().map(|object| (yaml.source, object)));
        }
        Ok(parsed)
    }
}

/// Kubernetes objects as the API server serves them: JSON, one object per
/// document, each labelled for errors (`Service ns/name`), all of the one
/// source `source`. A document is an item of its own, so what `previous`
/// made of documents that are all still there, unchanged, is kept as it is
/// file items are (`SplitFiles::read`): a watch that sees one object change
/// parses and translates that object, not the cluster.
pub fn read_documents(
    documents: &[&Document],
    source: &str,
    previous: &[Arc<SyncedObject>],
    this_node: &ThisNode,
    parsed_before: Option<&ParsedDocuments>,
) -> Result<KubeInput> {
    let seed = fingerprint_seed(this_node);
    let items: Vec<reuse::Item> = documents
        .iter()
        .enumerate()
        .map(|(index, document)| reuse::Item {
            file: index,
            kind: items::PieceKind::Document,
            // The whole document: only reading a file uses the span.
            span: Span { offset: 0, len: 0, line: 1 },
            line: 1,
            // The seed's fingerprint of the document's hash: 16 bytes
            // hashed, not the whole document again.
            fingerprint: xxhash_rust::xxh3::xxh3_128_with_seed(&document.hash.to_le_bytes(), seed),
        })
        .collect();
    let items = Items {
        items: &items,
        source_of: &|_| 0,
        parse: &|item| {
            let document = documents[item.file];
            let label = &document.label;
            let objects = match parsed_before {
                Some(parsed) => parsed.objects_of(document)?,
                None => read(label, document.json().as_slice())?,
            };
            Ok(fingerprinted(label, item, objects))
        },
        location_of: &|item| object_location(&documents[item.file].label, item),
    };
    let (parsed, kept) = items.parse_or_keep(&[source.to_owned()], previous, &[], this_node)?;
    Ok(KubeInput { parsed, kept })
}

/// Fingerprinted items of some sources, and how to read them.
struct Items<'a> {
    items: &'a [reuse::Item],
    /// The index of an item's source.
    source_of: &'a (dyn Fn(&reuse::Item) -> usize + Sync),
    /// Its objects, the only one with the item's fingerprint.
    parse: &'a (dyn Fn(&reuse::Item) -> Result<Vec<KubeObject>> + Sync),
    /// Where its object starts.
    location_of: &'a dyn Fn(&reuse::Item) -> Location,
}

impl Items<'_> {
    /// Parses the items no object of `previous` can be kept for; then the
    /// items of kept objects that parsed objects (or `others`, read
    /// otherwise) turn out to belong to, and those of the objects that
    /// translations read: this node's Node (every Service's topology may
    /// read it), what kept objects read, and what policies read; then those
    /// of kept objects that read an object that changed. Keeps the other
    /// objects of `previous` whose items are all there. `sources` names the
    /// sources by index.
    fn parse_or_keep(
        &self,
        sources: &[String],
        previous: &[Arc<SyncedObject>],
        others: &[&Parsed],
        this_node: &ThisNode,
    ) -> Result<(Parsed, Kept)> {
        let source_name = |item: &reuse::Item| sources[(self.source_of)(item)].as_str();
        let mut reuse = reuse::Reuse::new(self.items, previous, source_name);
        // Objects with where their item is, to be put in input order: what
        // a sync parses must not depend on what it kept.
        let parse = |items: &[&reuse::Item]| {
            parallel::flat_map(items, |item| {
                let (at, source) = ((item.file, item.span.offset), (self.source_of)(item));
                Ok((self.parse)(item)?.into_iter().map(|object| (at, (source, object))).collect())
            })
        };
        let mut parsed: Vec<Placed> = parse(&reuse.unclaimed().collect::<Vec<_>>())?;
        let read_by_candidates: Vec<String> =
            reuse.read_by_candidates().into_iter().map(str::to_owned).collect();
        // Nothing to give up when nothing can be kept (a first sync): the
        // owners of every object parsed (11 MB at 100,000 services) are
        // not listed at the sync's fullest.
        if reuse.keeps_any() {
            let mut owners: Vec<String> =
                every_object(&parsed, others).filter_map(KubeObject::owner).collect();
            owners.push(objects::node_owner(&this_node.name));
            owners.extend(read_by_candidates.iter().cloned());
            parsed.extend(parse(&reuse.release(owners.iter().map(String::as_str)))?);
        }
        // Policies and Pods are always parsed (nothing records their
        // items): translating the policies finds what they read. Until
        // what they read is there, a translation stops short of reading
        // the rest (a policy without its Service reads no Node), so again
        // until nothing more is given up: once per object at most.
        loop {
            let read_by_policies = policies::reads(every_object(&parsed, others), &this_node.name);
            let released = reuse.release(read_by_policies.iter().map(String::as_str));
            if released.is_empty() {
                break;
            }
            parsed.extend(parse(&released)?);
        }
        // Every object read is parsed by now, if it is in the input. (Only
        // those: a first sync parses the cluster, and reads nothing kept.)
        let mut now: HashMap<String, Option<Dependency>> = HashMap::default();
        if !read_by_candidates.is_empty() {
            let objects = every_object(&parsed, others).filter_map(KubeObject::as_read);
            for read in objects.filter(|read| read_by_candidates.contains(&read.owner)) {
                now.entry(read.owner.clone()).and_modify(|twice| *twice = None).or_insert(Some(read));
            }
        }
        parsed.extend(parse(&reuse.release_stale(&now))?);
        parsed.sort_by_key(|&(at, _)| at);
        let parsed = parsed.into_iter().map(|(_, parsed)| parsed).collect();
        let kept = reuse
            .kept()
            .map(|(object, item)| {
                let location = (self.location_of)(item);
                ((self.source_of)(item), Located { value: Arc::clone(object), location })
            })
            .collect();
        Ok((parsed, kept))
    }
}

/// An object parsed, with where its item is and the index of its source.
type Placed = ((usize, u64), (usize, KubeObject));

/// The objects of `parsed` and `others`.
fn every_object<'a>(
    parsed: &'a [Placed],
    others: &'a [&'a Parsed],
) -> impl Iterator<Item = &'a KubeObject> + Clone + 'a {
    let parsed = parsed.iter().map(|(_, parsed)| parsed);
    parsed.chain(others.iter().copied().flatten()).map(|(_, object)| object)
}

/// What else decides what an item's objects become: the node (its
/// endpoints are the local ones, node hints name it, and
/// `--nodeport-addresses` picks a Node's addresses that serve node ports)
/// and this balctl's translation rules, taken as a hash of its whole
/// source (build.rs), so that any change to them, released or not,
/// translates everything anew. What else a translation reads of the
/// input, it records (`Dependency`).
fn fingerprint_seed(this_node: &ThisNode) -> u64 {
    let mut seed = xxhash_rust::xxh3::Xxh3::new();
    let node_port_addresses = this_node.node_port_addresses.to_string();
    for part in [env!("CARGO_PKG_VERSION"), &this_node.name, &node_port_addresses, env!("BALCTL_SOURCE_HASH")]
    {
        seed.update(part.as_bytes());
        // Parts are separated, so that no two lists of parts hash alike.
        seed.update(&[0]);
    }
    seed.digest()
}

fn read_part(file: &str, reader: impl Read, first_line: usize) -> Result<Vec<KubeObject>> {
    let mut objects = Vec::new();
    yaml::for_each_object(file, reader, first_line, |node| {
        objects.push(objects::parse(file, &node)?);
        Ok(())
    })?;
    Ok(objects)
}

/// The objects of one item in a file.
fn parse_item(label: &str, file: &File, item: &reuse::Item) -> Result<Vec<KubeObject>> {
    let objects = read_part(label, FileRange::of(file, item.span), item.span.line)?;
    Ok(fingerprinted(label, item, objects))
}

/// The `objects` of an item, the item's fingerprint given to the object
/// if it holds exactly one, so that a later sync can keep what it becomes,
/// and if that starts where a kept one is said to (`object_location`):
/// where it was read from must not depend on whether it was parsed.
fn fingerprinted(label: &str, item: &reuse::Item, mut objects: Vec<KubeObject>) -> Vec<KubeObject> {
    if let [only] = objects.as_mut_slice() {
        let meta = only.meta_mut();
        if meta.location == object_location(label, item) {
            meta.fingerprint = Some(item.fingerprint);
        }
    }
    objects
}

/// Where the object of an item starts, in kubectl's layout: at column 1 of
/// its first line, or in a List entry after its `- `.
fn object_location(label: &str, item: &reuse::Item) -> Location {
    let column = if item.kind == items::PieceKind::ListEntry { 3 } else { 1 };
    Location { file: label.to_owned(), line: item.line, column }
}

/// The objects of a file, refused if it has grown past `limit` since it
/// was split.
fn read_whole(label: &str, file: &File, limit: InputLimit) -> Result<Vec<KubeObject>> {
    let mut capped = limit.cap(FileRange { file, offset: 0, end: u64::MAX });
    let objects = read_part(label, &mut capped, 1);
    capped.check(label)?;
    objects
}

/// Whether the top level of every List document among `pieces`, around
/// its entries, reads as it does in the document read whole and makes it a
/// List. So it is read in its place: the header, `items: []` where the
/// entries were, and the trailer, as one document. Not padded to the
/// entries' lines: only whether it reads matters (a file whose shell does
/// not is read whole, which reports where), and a big List's padding
/// would cost every sync as much as parsing a million blank lines.
fn shells_read(label: &str, file: &File, pieces: &[Piece]) -> bool {
    pieces.iter().all(|piece| {
        let Piece::ListShell { header, trailer, .. } = *piece else { return true };
        let entries = "items: []\n";
        let shell = FileRange::of(file, header).chain(entries.as_bytes()).chain(FileRange::of(file, trailer));
        // The `items` put in hold nothing: an object would be under another.
        yaml::for_each_object(label, shell, header.line, |_| Err(anyhow::anyhow!("a second `items`"))).is_ok()
    })
}

/// Part of a file, read at its offsets whatever the file position.
struct FileRange<'f> {
    file: &'f File,
    offset: u64,
    end: u64,
}

impl<'f> FileRange<'f> {
    fn of(file: &'f File, span: Span) -> Self {
        Self { file, offset: span.offset, end: span.offset + span.len }
    }
}

impl Read for FileRange<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end - self.offset).unwrap_or(usize::MAX);
        let want = buffer.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buffer[..want], self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    /// Each object's name and where it was read from.
    fn placed(object: &mut KubeObject) -> (String, String, Location) {
        let meta = object.meta_mut();
        (meta.namespace.clone(), meta.name.clone(), meta.location.clone())
    }

    #[test]
    fn items_parsed_on_several_threads_come_as_reading_the_file_whole_gives_them() {
        // 1,200 items: many chunks for every thread.
        let mut text = String::from("apiVersion: v1\nitems:\n");
        for i in 0..600 {
            let _ = write!(
                text,
                "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: s{i}\n    namespace: ns\n  spec:\n    \
                 clusterIP: 198.18.{}.{}\n    ports:\n    - port: 80\n- apiVersion: discovery.k8s.io/v1\n  \
                 kind: EndpointSlice\n  metadata:\n    name: s{i}-1\n    namespace: ns\n    labels:\n      \
                 kubernetes.io/service-name: s{i}\n  addressType: IPv4\n  endpoints:\n  - addresses:\n    \
                 - 192.0.2.{}\n  ports:\n  - port: 8080\n",
                i / 200,
                i % 200 + 1,
                i % 200 + 1,
            );
        }
        text.push_str("kind: List\n");
        let path = std::env::temp_dir().join(format!("balctl-parallel-test-{}.yaml", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let split = split_files(
            vec![YamlFile { source: 0, path: path.clone() }],
            &ThisNode::named("n"),
            InputLimit::default(),
        );
        let read_fast = || yaml::READ_IN_KUBECTL_LAYOUT.load(std::sync::atomic::Ordering::Relaxed);
        let read_fast_before = read_fast();
        let input = split.unwrap().read(&["s".to_owned()], &[], Vec::new(), &ThisNode::named("n")).unwrap();
        // Each item by the reader of kubectl's layout (other tests may add).
        assert!(read_fast() - read_fast_before >= 1200);
        let mut whole = read(&path.display().to_string(), text.as_bytes()).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut parsed: Vec<KubeObject> = input.parsed.into_iter().map(|(_, object)| object).collect();
        assert_eq!(parsed.len(), 1200);
        // Read in items, as their fingerprints say.
        assert!(parsed.iter_mut().all(|object| object.meta_mut().fingerprint.is_some()));
        let placed_all = |objects: &mut Vec<KubeObject>| objects.iter_mut().map(placed).collect::<Vec<_>>();
        assert_eq!(placed_all(&mut parsed), placed_all(&mut whole));
    }
}
