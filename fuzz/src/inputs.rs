//! The input targets: any bytes given to `balctl sync -f FILE` as a TOML
//! state file or as Kubernetes YAML, read exactly as sync reads them
//! (`inputs::gather`, then `Gathered::read`). The outcome must be either
//! an input error (exit 2) that names the file, or objects that are valid
//! and compile into an image, so that a sync never fails after its input
//! was accepted. For YAML, reading the file in items (items.rs) must give
//! what reading it whole does (as stdin and the API server are read), and
//! a second sync that keeps the unchanged objects (reuse.rs) what the
//! first one gave. And the reader of kubectl's layout must read any bytes
//! it reads as the general YAML reader does.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use balctl::{
    error::{EXIT_INPUT, exit_code},
    image::Image,
    inputs::{
        self, Inputs, Located,
        kube::yaml::{Node, Readers, for_each_object_read_by},
    },
    model::{AddressKind, MAX_AFFINITY_SECONDS, Scope, SyncedObject, ThisNode, check_address},
};

/// The node the inputs are read on.
const NODE: &str = "node-a";

pub fn toml(data: &[u8]) {
    let file = InputFile::new("toml", data);
    if let Some(read) = read(&file.path, &[]) {
        check_objects(&read);
    }
}

pub fn yaml(data: &[u8]) {
    let file = InputFile::new("yaml", data);
    let in_items = read(&file.path, &[]);
    // An empty file is one being written, refused (error::EmptyInput); the
    // API server sends no empty document, so there is nothing to compare.
    if data.is_empty() {
        assert!(in_items.is_none(), "an empty file was accepted");
        return;
    }
    let document = balctl::cluster::Document::new(file.label(), data);
    let whole = inputs::from_cluster(&[&document], &ThisNode::named(NODE), &[], None);
    // A watch's batch reads a document it parsed before from a copy of what
    // that gave (kube::ParsedDocuments): the first read parses and keeps,
    // the second copies; both read as the document does.
    let parsed = inputs::kube::ParsedDocuments::default();
    for read_again in [false, true] {
        let copied = inputs::from_cluster(&[&document], &ThisNode::named(NODE), &[], Some(&parsed));
        match (&whole, copied) {
            (Ok(whole), Ok(copied)) => {
                assert_eq!(applied(whole), applied(&copied), "read again: {read_again}")
            }
            (Err(whole), Err(copied)) => assert_eq!(whole.to_string(), copied.to_string()),
            (whole, copied) => panic!(
                "read whole: {:?}; through what was parsed before: {:?}",
                whole.is_ok(),
                copied.is_ok()
            ),
        }
    }
    match (&in_items, whole) {
        (Some(in_items), Ok(whole)) => {
            assert_eq!(applied(in_items), applied(&whole), "read in items != read whole");
        }
        (None, Err(err)) => check_error(&err, &file.path),
        (Some(_), Err(err)) => panic!("read in items: accepted; read whole: {err:#}"),
        (None, Ok(_)) => panic!("read in items: refused; read whole: accepted"),
    }
    let Some(first) = in_items else { return };
    check_objects(&first);
    let previous: Vec<Arc<SyncedObject>> =
        first.sources.iter().flat_map(|s| &s.objects).map(|o| Arc::clone(&o.value)).collect();
    let again = read(&file.path, &previous).expect("the same input, read again, is refused");
    assert_eq!(applied(&again), applied(&first), "a sync that keeps unchanged objects differs");
}

/// Any bytes read as balctl reads YAML (the reader of kubectl's layout
/// first, kube/yaml/kubectl_layout.rs) and by the general reader alone
/// give the same: the same nodes at the same lines and columns, or the same
/// error. The fast reader either reads a text whole or leaves it to the
/// general one, so a difference is something it read otherwise.
pub fn yaml_layout(data: &[u8]) {
    let read = |readers| {
        let mut nodes: Vec<Node> = Vec::new();
        for_each_object_read_by(readers, "f.yaml", data, 1, |node| {
            nodes.push(node);
            Ok(())
        })
        .map(|()| nodes)
        .map_err(|err| format!("{err:#}"))
    };
    assert_eq!(read(Readers::KubectlLayoutFirst), read(Readers::GeneralOnly), "the two readers differ");
}

/// Reads `path` as `balctl sync -f PATH` does, with `previous` applied
/// before; None when refused, after checking how.
fn read(path: &Path, previous: &[Arc<SyncedObject>]) -> Option<Inputs> {
    match inputs::gather(&[path.to_owned()], &ThisNode::named(NODE), inputs::InputLimit::default())
        .and_then(|gathered| gathered.read(previous))
    {
        Ok(read) => Some(read),
        Err(err) => {
            check_error(&err, path);
            None
        }
    }
}

/// A refusal is an input error (exit 2) that says in which file.
fn check_error(err: &anyhow::Error, path: &Path) {
    let message = format!("{err:#}");
    assert_eq!(exit_code(err), EXIT_INPUT, "not an input error: {message}");
    assert!(message.contains(&path.display().to_string()), "the file is not named: {message}");
}

/// What a sync applies from `read`, in a form that compares: each object
/// (without its source and input fingerprints, which differ by how it was
/// read) with its location, and the notes, both sorted.
fn applied(read: &Inputs) -> (Vec<String>, Vec<String>) {
    let mut objects: Vec<String> = read
        .sources
        .iter()
        .flat_map(|s| &s.objects)
        .map(|Located { value, location }| {
            let SyncedObject { owner, rules, addresses, .. } = value.as_ref();
            format!("{location}: {owner} {rules:?} {addresses:?}")
        })
        .collect();
    let mut notes = read.notes.clone();
    objects.sort();
    notes.sort();
    (objects, notes)
}

/// Everything accepted is valid as the model defines it, and compiles.
fn check_objects(read: &Inputs) {
    let objects: Vec<&SyncedObject> =
        read.sources.iter().flat_map(|s| &s.objects).map(|o| o.value.as_ref()).collect();
    for object in &objects {
        let owner = &object.owner;
        for rule in &object.rules {
            let frontend = rule.frontend;
            rule.validate().unwrap_or_else(|e| panic!("{owner}: {e}"));
            // Only a node port (a Kubernetes NodePort or a TOML
            // `node_port`) has the unspecified address (every node
            // address), for sockets and for packets from outside.
            let node_port = rule.address_kind == AddressKind::NodePort
                && matches!(frontend.scope, Scope::Service | Scope::External)
                && frontend.address.is_unspecified();
            if !node_port {
                check_ip(frontend.address, owner);
            }
            assert_eq!(frontend.address, frontend.address.to_canonical(), "{owner}: {frontend}");
            for backend in &rule.backends {
                check_ip(backend.ip(), owner);
            }
            if let Some(seconds) = rule.affinity_seconds {
                assert!((1..=MAX_AFFINITY_SECONDS).contains(&seconds), "{owner}: affinity {seconds}");
            }
            assert_ne!(rule.requests_per_second, Some(0), "{owner}");
        }
        for &address in &object.addresses {
            check_ip(address, owner);
        }
    }
    let rules = objects.iter().flat_map(|o| o.rules.iter().map(|rule| (o.owner.clone(), rule)));
    let nodes = objects.iter().flat_map(|o| o.addresses.iter().copied());
    if let Err(err) = Image::default().update([], rules, nodes, true) {
        panic!("accepted input does not compile: {err:#}");
    }
}

/// An address balctl writes to a map: a possible peer, in canonical form
/// (v4-mapped IPv6 is IPv4), as the datapath's keys compare them.
fn check_ip(ip: IpAddr, owner: &str) {
    check_address(ip).unwrap_or_else(|e| panic!("{owner}: {e}"));
    assert_eq!(ip, ip.to_canonical(), "{owner}: {ip} is not canonical");
}

/// The input, in a file of its own, removed afterwards.
struct InputFile {
    path: PathBuf,
}

impl InputFile {
    fn new(extension: &str, data: &[u8]) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("balctl-fuzz-{}-{id}.{extension}", std::process::id());
        let path = std::env::temp_dir().join(name);
        fs::write(&path, data).expect("write the input file");
        Self { path }
    }

    /// How errors and locations name it.
    fn label(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for InputFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
