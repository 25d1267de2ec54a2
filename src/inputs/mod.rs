//! Reading what `balctl sync -f` is given: files, directories of files, or
//! standard input, each one a *source*. Every object remembers its source,
//! so a sync replaces exactly the objects of the sources it reads.
//!
//! Two formats mix freely: TOML state files (`*.toml`) and Kubernetes YAML
//! (`*.yaml`, `*.yml`, or JSON as `kubectl get -o json` prints it). Standard
//! input is told apart by its first lines.

mod budget;
pub mod kube;
mod location;
mod size_limit;
mod toml_entries;
mod toml_file;

use std::{
    fs::{self, File},
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use self::{budget::EntryBudget, location::Location};
pub use self::{location::Located, size_limit::InputLimit};
use crate::{
    input,
    model::{SyncedObject, ThisNode},
};

/// One `-f` argument and the objects read from it.
pub struct Source {
    /// An absolute path, or `-` for standard input.
    pub name: String,
    pub objects: Vec<Located<Arc<SyncedObject>>>,
}

impl Source {
    /// The source `name` with `objects`, each made to remember it.
    fn new((name, objects): (String, Vec<Located<SyncedObject>>)) -> Self {
        let mut source = Self { name, objects: Vec::with_capacity(objects.len()) };
        for object in objects {
            source.push(object);
        }
        source
    }

    /// Adds `object`, made to remember the source. Each object is shared
    /// as soon as it is added: moved whole from list to list, 100,000
    /// translated Services had three lists of them alive at once.
    fn push(&mut self, Located { mut value, location }: Located<SyncedObject>) {
        value.source.clone_from(&self.name);
        self.objects.push(Located { value: Arc::new(value), location });
    }
}

/// Everything one sync reads.
pub struct Inputs {
    pub sources: Vec<Source>,
    /// What was read but not applied, and why (headless services...).
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Toml,
    Yaml,
}

/// The `-f` arguments read as far as possible without the applied state:
/// TOML files and streams parsed, YAML files split into items.
pub struct Gathered {
    this_node: ThisNode,
    names: Vec<String>,
    /// Objects from TOML, per source.
    objects: Vec<Vec<Located<SyncedObject>>>,
    /// Kubernetes objects from streams (stdin, FIFOs), with their source.
    streamed_objects: Vec<(usize, kube::KubeObject)>,
    yaml: kube::SplitFiles,
    /// What was left out, and why (a FIFO in a directory).
    notes: Vec<String>,
    /// The map entries of the TOML objects, which the rest join.
    budget: EntryBudget,
}

/// Reads every `-f` argument, as far as it can be without the applied
/// state (see `Gathered::read`), each file and stream up to `limit`.
/// Directories contribute their `*.toml`, `*.yaml`, `*.yml` and `*.json`
/// files, in name order.
pub fn gather(arguments: &[PathBuf], this_node: &ThisNode, limit: InputLimit) -> Result<Gathered> {
    let mut names = Vec::new();
    let mut objects = Vec::new();
    let mut streamed_objects = Vec::new();
    let mut yaml_files = Vec::new();
    let mut notes = Vec::new();
    let mut budget = EntryBudget::default();
    for argument in arguments {
        let name = source_name(argument)?;
        if names.contains(&name) {
            return Err(input!("-f {} is given twice", argument.display()));
        }
        let index = names.len();
        let mut toml_objects = Vec::new();
        for input in inputs_of(argument, &mut notes)? {
            match input {
                Input::File(path, Format::Toml) => {
                    let label = path.display().to_string();
                    let file = File::open(&path).with_context(|| format!("cannot read {label}"))?;
                    let len = file.metadata().with_context(|| format!("cannot read {label}"))?.len();
                    limit.check_len(&label, len)?;
                    let text = text(&label, limit.read_all(&label, file)?)?;
                    toml_objects.extend(toml_file::parse(&label, &text, &mut budget)?);
                }
                Input::File(path, Format::Yaml) => yaml_files.push(kube::YamlFile { source: index, path }),
                Input::Stream(path, format) => {
                    let (label, bytes) = match path {
                        None => (STDIN.to_owned(), limit.read_all(STDIN, std::io::stdin().lock())?),
                        Some(path) => {
                            let label = path.display().to_string();
                            let file = File::open(&path).with_context(|| format!("cannot read {label}"))?;
                            let bytes = limit.read_all(&label, file)?;
                            (label, bytes)
                        }
                    };
                    let text = text(&label, bytes)?;
                    match format.unwrap_or_else(|| sniff(&text)) {
                        Format::Toml => toml_objects.extend(toml_file::parse(&label, &text, &mut budget)?),
                        Format::Yaml => streamed_objects
                            .extend(kube::read(&label, text.as_bytes())?.into_iter().map(|o| (index, o))),
                    }
                }
            }
        }
        names.push(name);
        objects.push(toml_objects);
    }
    let yaml = kube::split_files(yaml_files, this_node, limit)?;
    Ok(Gathered { this_node: this_node.clone(), names, objects, streamed_objects, yaml, notes, budget })
}

impl Gathered {
    /// Finishes reading: Kubernetes objects of all sources are translated
    /// together (a Service's EndpointSlices may be in another file), with
    /// the node deciding which endpoints are local; objects of `previous`
    /// (those applied before) whose input did not change are kept without
    /// parsing it again. Objects must be unique across all sources, by name
    /// and by frontend; errors point at file:line:column. What they make
    /// together must fit in `MAX_ENTRIES` map entries.
    pub fn read(self, previous: &[Arc<SyncedObject>]) -> Result<Inputs> {
        let Self { this_node, names, objects, streamed_objects, yaml, mut notes, mut budget } = self;
        let kube = yaml.read(&names, previous, streamed_objects, &this_node)?;
        reserve_kept(&mut budget, &kube.kept)?;
        let translation = kube::translate(kube.parsed, &this_node, &mut budget)?;
        let mut sources: Vec<Source> = names.into_iter().zip(objects).map(Source::new).collect();
        for (index, object) in translation.objects {
            sources[index].push(object);
        }
        let first_kept: Vec<usize> = sources.iter().map(|source| source.objects.len()).collect();
        let mut kept_of = vec![0; sources.len()];
        for (index, _) in &kube.kept {
            kept_of[*index] += 1;
        }
        for (source, kept) in sources.iter_mut().zip(kept_of) {
            source.objects.reserve_exact(kept);
        }
        for (index, object) in kube.kept {
            sources[index].objects.push(object);
        }
        return_freed_memory();
        check_unique(&sources, &first_kept)?;
        notes.extend(translation.notes);
        Ok(Inputs { sources, notes })
    }
}

/// The source name of objects read from a Kubernetes API server.
pub const CLUSTER_SOURCE: &str = "kubernetes";

/// Reads Kubernetes objects in the JSON form the API server serves them,
/// each labelled (`Service ns/name`) for errors, as the one source
/// `CLUSTER_SOURCE`: the same reading and translation as files get, and
/// like theirs, objects of `previous` whose documents did not change are
/// kept without reading those again. With `parsed_before` (a watch's
/// batch), documents parsed before are not parsed again.
pub fn from_cluster(
    documents: &[&kube::Document],
    this_node: &ThisNode,
    previous: &[Arc<SyncedObject>],
    parsed_before: Option<&kube::ParsedDocuments>,
) -> Result<Inputs> {
    let kube = kube::read_documents(documents, CLUSTER_SOURCE, previous, this_node, parsed_before)?;
    let mut budget = EntryBudget::default();
    reserve_kept(&mut budget, &kube.kept)?;
    let translation = kube::translate(kube.parsed, this_node, &mut budget)?;
    let mut sources = vec![Source::new((CLUSTER_SOURCE.to_owned(), Vec::new()))];
    for (_, object) in translation.objects {
        sources[0].push(object);
    }
    let first_kept = [sources[0].objects.len()];
    sources[0].objects.extend(kube.kept.into_iter().map(|(_, object)| object));
    check_unique(&sources, &first_kept)?;
    Ok(Inputs { sources, notes: translation.notes })
}

/// Counts the rules of objects kept from the last sync in `budget`: what
/// a sync makes must not depend on what it kept.
fn reserve_kept(budget: &mut EntryBudget, kept: &[(usize, Located<Arc<SyncedObject>>)]) -> Result<()> {
    for (_, object) in kept {
        budget
            .reserve_made(format_args!("{}: {}", object.location, object.value.owner), &object.value.rules)?;
    }
    Ok(())
}

/// Reads every `-f` argument at once: `gather`, then `Gathered::read`.
#[cfg(test)]
fn read(arguments: &[PathBuf], this_node: &ThisNode, previous: &[Arc<SyncedObject>]) -> Result<Inputs> {
    gather(arguments, this_node, InputLimit::default())?.read(previous)
}

/// Hands the memory of the parsed objects, freed by now, back to the
/// system. Without it the allocator keeps it for the image built next,
/// which needs it in other sizes: at 100,000 services that was 80 MB of
/// the sync's peak. glibc's only: musl's allocator (the image's static
/// build) gives freed memory back by itself and has no malloc_trim.
fn return_freed_memory() {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
}

fn source_name(argument: &Path) -> Result<String> {
    if argument == Path::new("-") {
        return Ok("-".to_owned());
    }
    let path = source_path(argument)?;
    if !path.exists() {
        return Err(input!("-f {}: no such file or directory", argument.display()));
    }
    Ok(path.display().to_string())
}

/// The absolute path that names a source: its directory resolved, its own
/// name kept. A file that is a symlink (as in a Kubernetes ConfigMap
/// volume, whose links are repointed on every update) keeps its name, so
/// its objects are replaced rather than joined by a second copy.
pub fn source_path(argument: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(argument).map_err(|e| input!("-f {}: {e}", argument.display()))?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .map_err(|e| input!("-f {}: directory {}: {e}", argument.display(), parent.display()))?
            .join(name)),
        // `/` or a path ending in `..`: nothing to keep unresolved.
        _ => absolute.canonicalize().map_err(|e| input!("-f {}: {e}", argument.display())),
    }
}

/// Whether a file in a directory given with `-f` is read, by its name.
pub fn is_input_file(path: &Path) -> bool {
    format_of(path).is_some()
}

fn format_of(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()? {
        "toml" => Some(Format::Toml),
        "yaml" | "yml" | "json" => Some(Format::Yaml),
        _ => None,
    }
}

/// The text of input `label`, without the byte-order mark it may start
/// with (editors on Windows write one; locations count from after it).
/// One that is not UTF-8 is an input error located at the first byte that
/// is not.
fn text(label: &str, mut bytes: Vec<u8>) -> Result<String> {
    if bytes.starts_with(BYTE_ORDER_MARK) {
        bytes.drain(..BYTE_ORDER_MARK.len());
    }
    String::from_utf8(bytes).map_err(|err| {
        let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
        let text = std::str::from_utf8(valid).unwrap_or_default();
        input!("{}: not valid UTF-8", Location::at(label, text, text.len()))
    })
}

/// U+FEFF in UTF-8.
pub const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// TOML starts with a table header or `key = value`; anything else is
/// taken for YAML (or JSON).
fn sniff(text: &str) -> Format {
    let first = text.lines().map(str::trim).find(|line| !line.is_empty() && !line.starts_with('#'));
    match first {
        Some(line) if line.starts_with("[[") || (line.starts_with('[') && line.ends_with(']')) => {
            Format::Toml
        }
        Some(line) if line.split_once('=').is_some_and(|(key, _)| !key.contains(':')) => Format::Toml,
        _ => Format::Yaml,
    }
}

/// The label of standard input in messages.
const STDIN: &str = "<stdin>";

/// What one `-f` argument is read as.
enum Input {
    /// A regular file, or a symlink to one.
    File(PathBuf, Format),
    /// Standard input (no path), or a path to anything but a regular file
    /// or a directory (a FIFO, `/dev/stdin`): read once from start to end,
    /// as it cannot be read again in parts. The format is sniffed from the
    /// text when the name does not say it.
    Stream(Option<PathBuf>, Option<Format>),
}

/// The inputs of one argument. A directory contributes its regular files
/// whose names say their format; anything else in it is left out, a FIFO
/// with a note in `notes` (reading one would wait for a writer, maybe for
/// ever, and a directory is read on every sync of `--watch`).
fn inputs_of(argument: &Path, notes: &mut Vec<String>) -> Result<Vec<Input>> {
    if argument == Path::new("-") {
        return Ok(vec![Input::Stream(None, None)]);
    }
    let kind = fs::metadata(argument).map_err(|e| input!("-f {}: {e}", argument.display()))?.file_type();
    if kind.is_dir() {
        let mut inputs = Vec::new();
        let mut paths: Vec<PathBuf> = fs::read_dir(argument)
            .with_context(|| format!("cannot read directory {}", argument.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        for path in paths {
            let Some(format) = format_of(&path) else { continue };
            match fs::metadata(&path).map(|m| m.file_type()) {
                Ok(kind) if kind.is_file() => inputs.push(Input::File(path, format)),
                Ok(kind) if kind.is_fifo() => notes.push(format!(
                    "{}: a FIFO in a directory is not read; give it with -f of its own",
                    path.display()
                )),
                // Gone since the listing, a dangling symlink, a socket...
                _ => {}
            }
        }
        return Ok(inputs);
    }
    if !kind.is_file() {
        return Ok(vec![Input::Stream(Some(argument.to_owned()), format_of(argument))]);
    }
    match format_of(argument) {
        Some(format) => Ok(vec![Input::File(argument.to_owned(), format)]),
        None => Err(input!(
            "-f {}: balctl reads TOML state files (*.toml) and Kubernetes YAML or JSON \
             (*.yaml, *.yml, *.json); name the file accordingly",
            argument.display()
        )),
    }
}

/// Names and frontends must be unique across everything one sync reads.
/// The objects of each source from `first_kept[source]` on were kept from
/// the last sync: applied together, they are unique among themselves
/// already (the state never holds an owner or a frontend twice), so only
/// the others are looked for among all; inserting every object's name and
/// frontends into maps was a sixth of a one-endpoint change at 10,000
/// services. When one is found twice, the whole check says where.
fn check_unique(sources: &[Source], first_kept: &[usize]) -> Result<()> {
    let parts = || sources.iter().zip(first_kept).map(|(source, &first)| source.objects.split_at(first));
    let mut names = HashSet::default();
    let mut frontends = HashSet::default();
    let mut twice = false;
    for object in parts().flat_map(|(read, _)| read) {
        twice |= !names.insert(object.value.owner.as_str());
        for rule in &object.value.rules {
            twice |= !frontends.insert(rule.frontend);
        }
    }
    if !names.is_empty() && !twice {
        twice = parts().flat_map(|(_, kept)| kept).any(|object| {
            names.contains(object.value.owner.as_str())
                || object.value.rules.iter().any(|rule| frontends.contains(&rule.frontend))
        });
    }
    if twice { check_all_unique(sources) } else { Ok(()) }
}

/// Names and frontends must be unique across `sources`: the first object
/// (in input order) that repeats one is an error.
fn check_all_unique(sources: &[Source]) -> Result<()> {
    let objects = sources.iter().map(|s| s.objects.len()).sum();
    let rules = sources.iter().flat_map(|s| &s.objects).map(|object| object.value.rules.len()).sum();
    let mut names: HashMap<&str, &Located<Arc<SyncedObject>>> =
        HashMap::with_capacity_and_hasher(objects, Default::default());
    let mut frontends = HashMap::with_capacity_and_hasher(rules, Default::default());
    for object in sources.iter().flat_map(|s| &s.objects) {
        if let Some(first) = names.insert(&object.value.owner, object) {
            return Err(input!(
                "{}: {} is defined twice (first at {})",
                object.location,
                object.value.owner,
                first.location
            ));
        }
        for rule in &object.value.rules {
            if let Some(first) = frontends.insert(rule.frontend, object) {
                return Err(input!(
                    "{}: frontend {} of {} is also a frontend of {} (at {})",
                    object.location,
                    rule.frontend,
                    object.value.owner,
                    first.value.owner,
                    first.location
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_is_not_utf8_is_located() {
        assert_eq!(text("f", b"a = 1\n".to_vec()).unwrap(), "a = 1\n");
        assert_eq!(text("f", b"\xEF\xBB\xBFa = 1\n".to_vec()).unwrap(), "a = 1\n");
        let err = text("f", b"a = 1\nb = \"caf\xe9\"\n".to_vec()).unwrap_err();
        assert_eq!(err.to_string(), "f:2:9: not valid UTF-8");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_INPUT);
    }

    #[test]
    fn stdin_format_is_sniffed_from_the_first_line() {
        assert_eq!(sniff("# web\n[[service]]\nname = \"web\""), Format::Toml);
        assert_eq!(sniff("name = \"web\"\n"), Format::Toml);
        assert_eq!(sniff("apiVersion: v1\nkind: Service\n"), Format::Yaml);
        assert_eq!(sniff("---\nkind: List\n"), Format::Yaml);
        assert_eq!(sniff("{\"kind\": \"Service\"}"), Format::Yaml);
        assert_eq!(sniff("annotation: \"a=b\"\n"), Format::Yaml);
    }
}

#[cfg(test)]
mod reuse_tests {
    use super::*;

    const LIST: &str = "apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: ns}
  spec: {clusterIP: 198.18.1.1, ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]}
- apiVersion: v1
  kind: Service
  metadata: {name: b, namespace: ns}
  spec: {clusterIP: 198.18.1.2, ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: a-1, namespace: ns, labels: {kubernetes.io/service-name: a}}
  addressType: IPv4
  endpoints:
  - addresses: [192.0.2.31]
    conditions: {ready: true}
    nodeName: node-a
  ports: [{name: http, port: 8080, protocol: TCP}]
kind: List
metadata:
  resourceVersion: \"\"
";

    const EXTRA_SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-1, namespace: ns, labels: {kubernetes.io/service-name: b}}
addressType: IPv4
endpoints:
- addresses: [192.0.2.41]
  conditions: {ready: true}
ports: [{name: http, port: 8080, protocol: TCP}]
";

    /// What a sync applies and says, in a form that compares.
    fn applied(inputs: &Inputs) -> (Vec<String>, Vec<String>) {
        let mut objects: Vec<String> =
            inputs.sources.iter().flat_map(|s| &s.objects).map(|o| format!("{:?}", o.value)).collect();
        let mut notes = inputs.notes.clone();
        objects.sort();
        notes.sort();
        (objects, notes)
    }

    fn objects(inputs: &Inputs) -> Vec<Arc<SyncedObject>> {
        inputs.sources.iter().flat_map(|s| &s.objects).map(|o| Arc::clone(&o.value)).collect()
    }

    #[test]
    fn unchanged_objects_are_kept_and_every_sync_equals_a_full_read() {
        let dir = std::env::temp_dir().join(format!("balctl-reuse-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let k8s = dir.join("k8s");
        fs::create_dir_all(&k8s).unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/k8s");
        for entry in fs::read_dir(examples).unwrap() {
            let path = entry.unwrap().path();
            fs::copy(&path, k8s.join(path.file_name().unwrap())).unwrap();
        }
        let list = dir.join("list.yaml");
        fs::write(&list, LIST).unwrap();
        let arguments = [k8s.clone(), list.clone()];

        let first = read(&arguments, &ThisNode::named("node-a"), &[]).unwrap();
        let mut previous = objects(&first);
        let again = read(&arguments, &ThisNode::named("node-a"), &previous).unwrap();
        assert_eq!(applied(&again), applied(&first));
        let fingerprinted: Vec<&Arc<SyncedObject>> =
            previous.iter().filter(|o| !o.inputs.is_empty()).collect();
        assert!(fingerprinted.len() > 10, "{fingerprinted:?}");
        // What policies read is parsed and translated on every sync, and so
        // is this node's Node, which every Service's topology may read.
        let parsed_always =
            ["service/kube-system/kube-dns", "service/edge/api", "node/node-c", "node/node-a"];
        for object in objects(&again).iter().filter(|o| !o.inputs.is_empty()) {
            let kept = previous.iter().any(|p| Arc::ptr_eq(p, object));
            assert_eq!(kept, !parsed_always.contains(&object.owner.as_str()), "{}", object.owner);
        }
        // The Services whose topology read node-a's zone say so.
        let read_node_a: Vec<String> = (previous.iter())
            .filter(|o| o.dependencies.iter().any(|d| d.owner == "node/node-a"))
            .map(|o| o.owner.clone())
            .collect();
        assert_eq!(read_node_a, ["service/shop/catalog"], "{previous:#?}");

        let edit_example = |file: &str, from: &str, to: &str| {
            let text = fs::read_to_string(k8s.join(file)).unwrap();
            assert!(text.contains(from), "{file}: {from}");
            fs::write(k8s.join(file), text.replacen(from, to, 1)).unwrap();
        };
        let edits: [(&str, &dyn Fn()); 14] = [
            ("node-a moves to zone-b, which catalog's hints follow", &|| {
                edit_example("nodes.yaml", "zone: zone-a", "zone: zone-b")
            }),
            ("node-a's address changes", &|| {
                edit_example("nodes.yaml", "address: 192.0.2.1\n", "address: 192.0.2.99\n")
            }),
            ("a node-local DNS Pod's label changes", &|| {
                edit_example(
                    "node-local-dns.yaml",
                    "k8s-app: node-local-dns\n    name: node-local-dns-7dbx4",
                    "k8s-app: other\n    name: node-local-dns-7dbx4",
                )
            }),
            ("one of catalog's endpoints loses its hints: every endpoint is used", &|| {
                edit_example(
                    "topology.yaml",
                    "  hints:\n    forZones:\n    - name: zone-b\n  nodeName: node-b\n  zone: zone-b\n- addresses: [192.0.2.22]",
                    "  nodeName: node-b\n  zone: zone-b\n- addresses: [192.0.2.22]",
                )
            }),
            ("node-a loses its zone", &|| {
                edit_example(
                    "nodes.yaml",
                    "      topology.kubernetes.io/zone: zone-b\n    name: node-a",
                    "    name: node-a",
                )
            }),
            ("kube-dns gets another cluster IP, which its redirect follows", &|| {
                edit_example(
                    "kube-dns.yaml",
                    "  clusterIP: 198.18.0.10\n  clusterIPs:\n  - 198.18.0.10",
                    "  clusterIP: 198.18.0.12\n  clusterIPs:\n  - 198.18.0.12",
                );
            }),
            ("the node-local DNS Pod is deleted", &|| {
                edit_example(
                    "node-local-dns.yaml",
                    "    name: node-local-dns-7dbx4\n",
                    "    name: node-local-dns-7dbx4\n    deletionTimestamp: \"2025-01-01T00:00:00Z\"\n",
                );
            }),
            ("node-c moves", &|| {
                edit_example("balancing-hostport.yaml", "address: 192.0.2.7", "address: 192.0.2.8")
            }),
            ("the node-local DNS Pod moves to node-b", &|| {
                edit_example("node-local-dns.yaml", "nodeName: node-a", "nodeName: node-b")
            }),
            ("an endpoint moves", &|| fs::write(&list, LIST.replace("192.0.2.31", "192.0.2.32")).unwrap()),
            ("b gets a slice in another source", &|| fs::write(k8s.join("extra.yaml"), EXTRA_SLICE).unwrap()),
            ("the slice goes", &|| fs::remove_file(k8s.join("extra.yaml")).unwrap()),
            ("a's Service moves to another source", &|| {
                let (a_start, b_start) = (
                    LIST.find("- apiVersion").unwrap(),
                    LIST.find("- apiVersion: v1\n  kind: Service\n  metadata: {name: b").unwrap(),
                );
                fs::write(&list, format!("{}{}", &LIST[..a_start], &LIST[b_start..])).unwrap();
                let service_a = &LIST[a_start..b_start];
                fs::write(k8s.join("a.yaml"), format!("kind: List\nitems:\n{service_a}")).unwrap();
            }),
            ("a comment is added", &|| {
                let text = fs::read_to_string(k8s.join("nodeport.yaml")).unwrap();
                fs::write(k8s.join("nodeport.yaml"), format!("# edited\n{text}")).unwrap();
            }),
        ];
        for (what, edit) in edits {
            edit();
            let incremental = read(&arguments, &ThisNode::named("node-a"), &previous).unwrap();
            let full = read(&arguments, &ThisNode::named("node-a"), &[]).unwrap();
            assert_eq!(applied(&incremental), applied(&full), "{what}");
            previous = objects(&incremental);
        }

        let elsewhere = read(&arguments, &ThisNode::named("node-b"), &previous).unwrap();
        assert_eq!(applied(&elsewhere), applied(&read(&arguments, &ThisNode::named("node-b"), &[]).unwrap()));
        assert!(objects(&elsewhere).iter().all(|o| !previous.iter().any(|p| Arc::ptr_eq(p, o))));

        fs::write(k8s.join("twice.yaml"), fs::read(k8s.join("kube-dns.yaml")).unwrap()).unwrap();
        let incremental = read(&arguments, &ThisNode::named("node-a"), &previous).map(|_| ()).unwrap_err();
        let full = read(&arguments, &ThisNode::named("node-a"), &[]).map(|_| ()).unwrap_err();
        assert_eq!(incremental.to_string(), full.to_string());
        assert!(full.to_string().contains("defined twice"), "{full}");
        fs::remove_file(k8s.join("twice.yaml")).unwrap();

        // A new object that takes a kept one's frontend: said as a read
        // that keeps nothing says it.
        fs::write(
            k8s.join("clash.toml"),
            "[[service]]\nname = \"clash\"\naddresses = [\"198.18.1.1\"]\nbackends = [\"192.0.2.9\"]\n\
             ports = [{ port = 80 }]\n",
        )
        .unwrap();
        let incremental = read(&arguments, &ThisNode::named("node-a"), &previous).map(|_| ()).unwrap_err();
        let full = read(&arguments, &ThisNode::named("node-a"), &[]).map(|_| ()).unwrap_err();
        assert_eq!(incremental.to_string(), full.to_string());
        assert!(
            full.to_string()
                .contains("frontend 198.18.1.1:80/tcp of service/ns/a is also a frontend of service/clash"),
            "{full}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Kubernetes objects as the API server serves them: JSON, labelled.
    type Documents = Vec<kube::Document>;

    fn refs(documents: &[kube::Document]) -> Vec<&kube::Document> {
        documents.iter().collect()
    }

    /// A change to a cluster, and the objects a sync after it keeps.
    type ClusterEdit<'a> = (&'a str, &'a dyn Fn(&mut Documents), &'a [&'a str]);

    fn document(kind: &str, name: &str, json: &str) -> kube::Document {
        kube::Document::new(format!("{kind} ns/{name}"), json.as_bytes())
    }

    fn service(name: &str, ip: &str) -> kube::Document {
        document(
            "Service",
            name,
            &format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"{name}","namespace":"ns"}},
"spec":{{"clusterIP":"{ip}","ports":[{{"name":"http","port":80,"protocol":"TCP","targetPort":8080}}]}}}}"#
            ),
        )
    }

    fn slice(name: &str, service: &str, address: &str) -> kube::Document {
        document(
            "EndpointSlice",
            name,
            &format!(
                r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
"metadata":{{"name":"{name}","namespace":"ns","labels":{{"kubernetes.io/service-name":"{service}"}}}},
"addressType":"IPv4","endpoints":[{{"addresses":["{address}"],"conditions":{{"ready":true}}}}],
"ports":[{{"name":"http","port":8080,"protocol":"TCP"}}]}}"#
            ),
        )
    }

    fn node(name: &str, zone: &str) -> kube::Document {
        let json = format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"topology.kubernetes.io/zone":"{zone}"}}}},
"status":{{"addresses":[{{"type":"InternalIP","address":"192.0.2.1"}}]}}}}"#
        );
        kube::Document::new(format!("Node {name}"), json.into_bytes())
    }

    /// A slice of two endpoints hinted for zones a and b.
    fn hinted_slice(name: &str, service: &str) -> kube::Document {
        document(
            "EndpointSlice",
            name,
            &format!(
                r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
"metadata":{{"name":"{name}","namespace":"ns","labels":{{"kubernetes.io/service-name":"{service}"}}}},
"addressType":"IPv4","endpoints":[
{{"addresses":["192.0.2.51"],"hints":{{"forZones":[{{"name":"a"}}]}}}},
{{"addresses":["192.0.2.52"],"hints":{{"forZones":[{{"name":"b"}}]}}}}],
"ports":[{{"name":"http","port":8080,"protocol":"TCP"}}]}}"#
            ),
        )
    }

    #[test]
    fn a_cluster_sync_keeps_the_objects_whose_documents_and_what_they_read_did_not_change() {
        let mut documents =
            vec![service("a", "198.18.1.1"), slice("a-1", "a", "192.0.2.31"), service("c", "198.18.1.3")];
        documents.push(hinted_slice("c-1", "c"));
        let this_node = ThisNode::named("node-a");
        let mut previous = objects(&from_cluster(&refs(&documents), &this_node, &[], None).unwrap());
        let edits: [ClusterEdit; 5] = [
            ("node-a appears, in zone a", &|d| d.push(node("node-a", "a")), &["service/ns/a"]),
            ("nothing changes", &|_| {}, &["service/ns/a", "service/ns/c"]),
            ("node-a moves to zone b", &|d| d[4] = node("node-a", "b"), &["service/ns/a"]),
            ("node-a goes", &|d| drop(d.remove(4)), &["service/ns/a"]),
            ("nothing changes", &|_| {}, &["service/ns/a", "service/ns/c"]),
        ];
        for (what, edit, expected) in edits {
            edit(&mut documents);
            let incremental = from_cluster(&refs(&documents), &this_node, &previous, None).unwrap();
            let full = from_cluster(&refs(&documents), &this_node, &[], None).unwrap();
            assert_eq!(applied(&incremental), applied(&full), "{what}");
            assert_eq!(kept(&incremental, &previous), *expected, "{what}");
            previous = objects(&incremental);
        }
    }

    /// The owners of the objects of `inputs` kept from `previous`, sorted.
    fn kept(inputs: &Inputs, previous: &[Arc<SyncedObject>]) -> Vec<String> {
        let mut kept: Vec<String> = objects(inputs)
            .iter()
            .filter(|o| previous.iter().any(|p| Arc::ptr_eq(p, o)))
            .map(|o| o.owner.clone())
            .collect();
        kept.sort();
        kept
    }

    #[test]
    fn a_cluster_sync_keeps_the_objects_whose_documents_did_not_change() {
        let mut documents = vec![
            service("a", "198.18.1.1"),
            slice("a-1", "a", "192.0.2.31"),
            service("b", "198.18.1.2"),
            slice("b-1", "b", "192.0.2.41"),
        ];
        let first = from_cluster(&refs(&documents), &ThisNode::named("node-a"), &[], None).unwrap();
        let previous = objects(&first);
        assert_eq!(previous.len(), 2, "{previous:?}");
        assert!(previous.iter().all(|o| o.inputs.len() == 2), "{previous:?}");
        let again = from_cluster(&refs(&documents), &ThisNode::named("node-a"), &previous, None).unwrap();
        assert_eq!(applied(&again), applied(&first));
        assert!(objects(&again).iter().all(|o| previous.iter().any(|p| Arc::ptr_eq(p, o))));

        let edits: [ClusterEdit; 4] = [
            ("b's endpoint moves", &|d| d[3] = slice("b-1", "b", "192.0.2.42"), &["service/ns/a"]),
            ("a gets a second slice", &|d| d.push(slice("a-2", "a", "192.0.2.32")), &["service/ns/b"]),
            ("b's slice is deleted", &|d| drop(d.remove(3)), &["service/ns/a"]),
            ("nothing changes", &|_| {}, &["service/ns/a", "service/ns/b"]),
        ];
        let mut previous = previous;
        for (what, edit, expected) in edits {
            edit(&mut documents);
            let incremental =
                from_cluster(&refs(&documents), &ThisNode::named("node-a"), &previous, None).unwrap();
            let full = from_cluster(&refs(&documents), &ThisNode::named("node-a"), &[], None).unwrap();
            assert_eq!(applied(&incremental), applied(&full), "{what}");
            assert_eq!(kept(&incremental, &previous), *expected, "{what}");
            previous = objects(&incremental);
        }
    }
}
