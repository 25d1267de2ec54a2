//! `balctl sync --kube`: a Kubernetes cluster's objects read from its API
//! server instead of files: Services, EndpointSlices, Nodes, Pods and the
//! two policy kinds. They are handed on as the JSON the API server serves,
//! so they go through exactly the reading, validation and translation that
//! `sync -f` gives a `kubectl get -o json` dump, as one source.
//!
//! Once (`list_all`), or kept up to date (`ClusterWatch`, which the watch
//! loop of src/watch/ runs, as it runs the file watch): one kube-runtime
//! watcher per kind, which relists after a 410 Gone and retries with
//! backoff through disconnects while the documents, and so the datapath,
//! keep the last state. Nothing is applied before every kind has been
//! listed once, so a start never prunes what the cluster still has.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ops::Bound,
    time::Duration,
};

use futures::{Stream, StreamExt as _, stream::BoxStream};

use anyhow::{Context as _, Result};
use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, Resource, ResourceExt as _,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use rustc_hash::FxHashSet;
use serde::Serialize;

use crate::{
    agent::Agent,
    cli::{ApiServerArgs, ClusterConnection},
    inputs::kube::{CLUSTER_ANNOTATION, POLICY_API_VERSION, SERVICE_IMPORT_API_VERSION},
    watch::{Source, Wake, Waker},
};

pub use crate::inputs::kube::Document;

/// Lists every object balctl reads, once: Pods as far as policies need
/// them (`watch` explains which).
pub fn list_all(connection: &ApiServerArgs, this_node: &str) -> Result<Vec<Document>> {
    with_client(connection, async |client| {
        // By label (kind and name): a Pod can be both local and selected.
        let mut documents = Labelled::new();
        documents.add(list::<Service>(Api::all(client.clone()), ListParams::default()).await?);
        documents.add(list::<EndpointSlice>(Api::all(client.clone()), ListParams::default()).await?);
        documents.add(list::<Node>(Api::all(client.clone()), ListParams::default()).await?);
        let local = ListParams::default().fields(&format!("spec.nodeName={this_node}"));
        documents.add(list::<Pod>(Api::all(client.clone()), local).await?);
        documents.add(list_policies(&client, "LocalRedirectPolicy").await?);
        documents.add(list_service_imports(&client).await?.unwrap_or_default());
        let balancing = list_policies(&client, "BalancingPolicy").await?;
        let wanted = selected_pods(&balancing);
        documents.add(balancing);
        for (namespace, labels) in wanted.values() {
            let selected = ListParams::default().labels(labels);
            documents.add(list::<Pod>(Api::namespaced(client.clone(), namespace), selected).await?);
        }
        for remote in remotes(connection)? {
            let (name, client) = (remote.name.clone().unwrap_or_default(), self::client(&remote).await?);
            let failed = |err| anyhow::Error::context(err, format!("cluster {name}"));
            let services = list_in::<Service>(Api::all(client.clone()), &name, ListParams::default());
            documents.add(services.await.map_err(failed)?);
            let slices = list_in::<EndpointSlice>(Api::all(client.clone()), &name, ListParams::default());
            documents.add(slices.await.map_err(failed)?);
            // Cross-cluster balancing policies: the Pods they select there too.
            for (namespace, labels) in wanted.values() {
                let api = Api::namespaced(client.clone(), namespace);
                let pods = list_in::<Pod>(api, &name, ListParams::default().labels(labels));
                documents.add(pods.await.map_err(failed)?);
            }
        }
        Ok(documents.0.into_values().collect())
    })
}

/// The other clusters given (`ApiServerArgs::clusters` but the first):
/// their Services and EndpointSlices are read, for global Services.
fn remotes(connection: &ApiServerArgs) -> Result<Vec<ClusterConnection>> {
    let clusters = connection.clusters().map_err(|e| crate::input!("{e}"))?;
    Ok(clusters.into_iter().filter(|cluster| cluster.name.is_some()).collect())
}

/// The objects of `api` that `params` select, of the other cluster
/// `cluster`, as documents.
async fn list_in<K>(api: Api<K>, cluster: &str, params: ListParams) -> Result<Vec<Document>>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (api_version, kind) = (K::api_version(&()), K::kind(&()));
    let listed = api.list(&params).await;
    let listed =
        listed.map_err(|err| anyhow::anyhow!("cannot list {kind} objects from the API server: {err}"))?;
    listed.items.iter().map(|object| document_in(object, &api_version, &kind, Some(cluster))).collect()
}

/// Documents by label, sorted: one copy of an object two lists or
/// watchers hold (a Pod both on this node and selected by a policy).
struct Labelled(BTreeMap<String, Document>);

impl Labelled {
    fn new() -> Self {
        Self(BTreeMap::new())
    }

    fn add(&mut self, documents: Vec<Document>) {
        self.0.extend(documents.into_iter().map(|document| (document.label.clone(), document)));
    }
}

/// Runs `work` with a client of the API server, on a runtime of its own:
/// balctl is synchronous, only talking to Kubernetes is not.
fn with_client<T>(connection: &ApiServerArgs, work: impl AsyncFnOnce(Client) -> Result<T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the Kubernetes client")?;
    runtime.block_on(async { work(client(&connection.local()).await?).await })
}

async fn client(connection: &ClusterConnection) -> Result<Client> {
    let options = KubeConfigOptions { context: connection.context.clone(), ..KubeConfigOptions::default() };
    let failed = "cannot configure the Kubernetes client (give --kubeconfig, or run in a pod)";
    let config = match &connection.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await.context(failed)?
        }
        None if connection.context.is_some() => Config::from_kubeconfig(&options).await.context(failed)?,
        None => Config::infer().await.context(failed)?,
    };
    Client::try_from(config).context("cannot create the Kubernetes client")
}

async fn list<K>(api: Api<K>, params: ListParams) -> Result<Vec<Document>>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    documents(&api.list(&params).await, &K::api_version(&()), &K::kind(&()))
}

/// The policies of a kind, as documents.
async fn list_policies(client: &Client, kind: &str) -> Result<Vec<Document>> {
    let listed = custom_api(client, POLICY_API_VERSION, kind).list(&ListParams::default()).await;
    documents(&listed, POLICY_API_VERSION, kind)
}

/// The listed objects as JSON documents.
fn documents<K: Resource + Serialize + Clone>(
    listed: &Result<kube::core::ObjectList<K>, kube::Error>,
    api_version: &str,
    kind: &str,
) -> Result<Vec<Document>> {
    let listed = listed
        .as_ref()
        .map_err(|err| anyhow::anyhow!("cannot list {kind} objects from the API server: {err}"))?;
    listed.items.iter().map(|object| document(object, api_version, kind)).collect()
}

/// An object as a JSON document, with apiVersion and kind set (the items of
/// a list leave them out), and without its managedFields: balctl never
/// reads them, and in a real cluster they are often most of an object.
fn document<K: Resource + Serialize>(object: &K, api_version: &str, kind: &str) -> Result<Document> {
    document_in(object, api_version, kind, None)
}

/// `document` of an object of the other cluster `cluster` (None: this
/// node's): annotated `balancing.elf.io/cluster` with its name, which the
/// translation reads, and labelled apart from this cluster's objects.
fn document_in<K: Resource + Serialize>(
    object: &K,
    api_version: &str,
    kind: &str,
    cluster: Option<&str>,
) -> Result<Document> {
    let mut json = serde_json::to_value(object)?;
    json["apiVersion"] = api_version.into();
    json["kind"] = kind.into();
    if let Some(meta) = json.get_mut("metadata").and_then(serde_json::Value::as_object_mut) {
        meta.remove("managedFields");
        if let Some(cluster) = cluster {
            let annotations = meta.entry("annotations").or_insert_with(|| serde_json::json!({}));
            annotations[CLUSTER_ANNOTATION] = cluster.into();
        }
    }
    Ok(Document::new(label(object, kind, cluster), serde_json::to_vec(&json)?))
}

/// What an object is called in errors, and its key among documents:
/// `Service ns/name (from the API server)`, of another cluster `Service
/// ns/name (from cluster east)` (its documents' labels start with `@`:
/// `@east Service ...`, sorted apart from this cluster's).
fn label<K: Resource>(object: &K, kind: &str, cluster: Option<&str>) -> String {
    let meta = object.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    let object = match &meta.namespace {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    };
    match cluster {
        Some(cluster) => format!("{REMOTE}{cluster} {object} (from cluster {cluster})"),
        None => format!("{object} (from the API server)"),
    }
}

/// The start of the labels of other clusters' documents (and of their
/// watchers' keys).
pub const REMOTE: &str = "@";

/// Every container's pod (`namespace/name`), by container id, from the
/// containers' statuses (`containerd://ID`, `cri-o://ID`, `docker://ID`).
pub fn pods_by_container(connection: &ApiServerArgs) -> Result<HashMap<String, String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the Kubernetes client")?;
    let pods = runtime.block_on(async {
        let client = client(&connection.local()).await?;
        Api::<Pod>::all(client)
            .list(&ListParams::default())
            .await
            .context("cannot list Pods from the API server")
    })?;
    let mut by_container = HashMap::new();
    for pod in &pods.items {
        let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let status = pod.status.iter();
        let containers = status.flat_map(|s| {
            let lists = [&s.container_statuses, &s.init_container_statuses, &s.ephemeral_container_statuses];
            lists.into_iter().flatten().flatten()
        });
        for id in containers.filter_map(|c| c.container_id.as_deref()) {
            if let Some((_, id)) = id.split_once("://") {
                by_container.insert(id.to_owned(), name.clone());
            }
        }
    }
    Ok(by_container)
}

/// The UID of the Pod `namespace/name`: the name of its cgroup
/// (`pod<UID>`) comes from it.
pub fn pod_uid(connection: &ApiServerArgs, namespace: &str, name: &str) -> Result<String> {
    let pod = with_client(connection, async |client| {
        Api::<Pod>::namespaced(client, namespace)
            .get_opt(name)
            .await
            .with_context(|| format!("cannot read the Pod {namespace}/{name} from the API server"))
    })?;
    let pod = pod.ok_or_else(|| crate::input!("--pod {namespace}/{name}: the API server has no such Pod"))?;
    pod.metadata.uid.with_context(|| format!("the Pod {namespace}/{name} has no uid"))
}

/// The most signals of a watcher sent to the watch loop at once.
const SIGNALS_AT_ONCE: usize = 512;
/// While a watcher fails, how often the API server is asked whether it
/// answers again.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What a watcher says.
pub enum Signal {
    /// An object changed, or came: it is now this document.
    Applied(Document),
    /// The object of this label left.
    Deleted(String),
    /// A (re)list begins: what it does not name again has left.
    Listing,
    /// An object of the list, as this document.
    Listed(Document),
    /// The list is complete.
    ListDone,
    /// It failed; it retries by itself, with backoff.
    Failed(String),
    /// The API server answered the reachability probe (`probe`).
    Answered,
}

/// A running watcher: the labels of the objects it holds, those a relist
/// in progress named so far, whether its first full list arrived, and the
/// task that feeds its signals to the loop.
struct Watched {
    labels: FxHashSet<String>,
    relisted: Option<FxHashSet<String>>,
    listed: bool,
    task: tokio::task::JoinHandle<()>,
}

/// Watchers by what they watch (`Service`, `Pod selected shop app=web`...).
type Watchers = BTreeMap<String, Watched>;

/// The cluster as the watchers last heard it: every object as the JSON
/// document balctl reads, by label, and what changed since the last time
/// it was handed on. Only the documents are kept (no typed copy of the
/// objects), each made once when its object arrives.
#[derive(Default)]
pub struct Documents {
    pub documents: BTreeMap<String, Document>,
    /// The labels of the documents that came, changed or left since the
    /// last change `watch` handed on was applied, each with its document
    /// then (None: it had none). Empty until a change was applied: before
    /// that, every document is new to the reader (and a record of each
    /// would hold every label once more at the first sync, the agent's
    /// peak of memory).
    pub changed: BTreeMap<String, Option<Document>>,
    /// A change was applied: `changed` is recorded.
    recording: bool,
}

impl Documents {
    /// `document` is the object of its label now, as `watcher` says.
    fn put(&mut self, watchers: &mut Watchers, watcher: &str, document: Document) -> bool {
        let Some(watched) = watchers.get_mut(watcher) else { return false };
        if let Some(relisted) = watched.relisted.as_mut() {
            relisted.insert(document.label.clone());
        }
        if !watched.labels.contains(&document.label) {
            watched.labels.insert(document.label.clone());
        }
        let label = document.label.clone();
        let old = self.documents.insert(label.clone(), document);
        let changed = old.as_ref().is_none_or(|old| old.hash() != self.documents[&label].hash());
        if changed {
            self.note(label, old);
        }
        changed
    }

    /// Records that the document of `label` changed, `old` before (the
    /// first change since the last applied one is kept).
    fn note(&mut self, label: String, old: Option<Document>) {
        if self.recording {
            self.changed.entry(label).or_insert(old);
        }
    }

    /// The change handed on was applied: record changes from now on.
    fn applied(&mut self) {
        self.changed.clear();
        self.recording = true;
    }

    /// `watcher` no longer holds the object of `label`: it leaves unless
    /// another watcher holds it too (a Pod on this node that a policy
    /// selects).
    fn remove(&mut self, watchers: &mut Watchers, watcher: &str, label: &str) -> bool {
        let Some(watched) = watchers.get_mut(watcher) else { return false };
        watched.labels.remove(label);
        self.left_unless_held(watchers, label)
    }

    /// The document of `label` leaves, unless a watcher still holds it;
    /// whether it left.
    fn left_unless_held(&mut self, watchers: &Watchers, label: &str) -> bool {
        if watchers.values().any(|other| other.labels.contains(label)) {
            return false;
        }
        match self.documents.remove(label) {
            Some(old) => {
                self.note(label.to_owned(), Some(old));
                true
            }
            None => false,
        }
    }

    /// A relist of `watcher` is complete: what it did not name again left.
    fn list_done(&mut self, watchers: &mut Watchers, watcher: &str) -> bool {
        let Some(watched) = watchers.get_mut(watcher) else { return false };
        watched.listed = true;
        let Some(relisted) = watched.relisted.take() else { return false };
        let gone: Vec<String> = watched.labels.difference(&relisted).cloned().collect();
        let mut changed = false;
        for label in gone {
            changed |= self.remove(watchers, watcher, &label);
        }
        changed
    }

    /// Stops `watcher`: what only it held leaves.
    fn stop(&mut self, watchers: &mut Watchers, watcher: &str) {
        let Some(mut watched) = watchers.remove(watcher) else { return };
        watched.task.abort();
        for label in std::mem::take(&mut watched.labels) {
            self.left_unless_held(watchers, &label);
        }
    }
}

/// The cluster watched (`watch::Source`): the watchers, on a runtime of
/// their own, send what they hear through the watch loop's channel; the
/// loop takes it in here (`take`), into the documents, and hands them to
/// `apply` once all watchers have listed, then after each batch of
/// changes (`sync`). `apply` reports its own errors and says whether it
/// applied the change: what changed since the last change applied is
/// handed on again with the next. Tells `agent` whether the API server
/// answers: from a watcher's failure until any watcher hears from it
/// again, or a probe does (a watch that resumes sends nothing until
/// something changes).
///
/// Pods are watched only as far as policies need them: those on this node
/// (a LocalRedirectPolicy's backends), and those each BalancingPolicy's
/// selector picks in its namespace, with watchers started and stopped as
/// the policies change.
pub struct ClusterWatch<'a, A: FnMut(&Documents) -> bool> {
    runtime: Runtime,
    client: Client,
    /// Where the watchers' signals go: the watch loop's channel.
    signals: Waker<(String, Vec<Signal>)>,
    watchers: Watchers,
    cluster: Documents,
    /// A probe of the API server runs (`probe`).
    probing: bool,
    /// The other clusters, by name: their Services and EndpointSlices are
    /// watched (global Services), and the Pods balancing policies select.
    remotes: Vec<(String, Client)>,
    /// Whether the API server serves ServiceImports (and they are
    /// watched); None until it answered the question.
    service_imports: Option<bool>,
    agent: &'a Agent,
    apply: A,
}

/// The runtime the watchers run on, on a thread of its own: the watch loop
/// is synchronous. Dropped, it stops them.
struct Runtime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the Kubernetes client")?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("kubernetes".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })
            .context("cannot start the Kubernetes client's thread")?;
        Ok(Self { handle, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<'a, A: FnMut(&Documents) -> bool> ClusterWatch<'a, A> {
    /// Starts watching the cluster of `connection` for `this_node`, the
    /// watchers' signals sent through `signals`.
    pub fn start(
        connection: &ApiServerArgs,
        this_node: &str,
        signals: Waker<(String, Vec<Signal>)>,
        agent: &'a Agent,
        apply: A,
    ) -> Result<Self> {
        let runtime = Runtime::start()?;
        let client = runtime.handle.block_on(client(&connection.local()))?;
        // Other clusters: their Services and EndpointSlices, for global
        // Services. Each must answer once before the first sync, as this
        // one must: a start never prunes a cluster's endpoints unread.
        let remotes: Vec<(String, Client)> = (remotes(connection)?.into_iter())
            .map(|remote| {
                let name = remote.name.clone().unwrap_or_default();
                let client = runtime.handle.block_on(self::client(&remote));
                Ok((name.clone(), client.with_context(|| format!("cluster {name}"))?))
            })
            .collect::<Result<_>>()?;
        let mut watch = Self {
            runtime,
            client,
            signals,
            watchers: Watchers::new(),
            cluster: Documents::default(),
            probing: false,
            remotes: remotes.clone(),
            service_imports: None,
            agent,
            apply,
        };
        let client = watch.client.clone();
        let all = watcher::Config::default;
        watch.start_watcher("Service".into(), watched::<Service>(Api::all(client.clone()), all()));
        watch
            .start_watcher("EndpointSlice".into(), watched::<EndpointSlice>(Api::all(client.clone()), all()));
        watch.start_watcher("Node".into(), watched::<Node>(Api::all(client.clone()), all()));
        let local = all().fields(&format!("spec.nodeName={this_node}"));
        watch.start_watcher(format!("Pod on {this_node}"), watched::<Pod>(Api::all(client.clone()), local));
        for kind in ["LocalRedirectPolicy", "BalancingPolicy"] {
            watch.start_watcher(kind.into(), watched_policies(&client, kind));
        }
        for (name, remote) in remotes {
            let services = watched_in::<Service>(Api::all(remote.clone()), all(), Some(name.clone()));
            watch.start_watcher(format!("{REMOTE}{name} Service"), services);
            let slices = watched_in::<EndpointSlice>(Api::all(remote), all(), Some(name.clone()));
            watch.start_watcher(format!("{REMOTE}{name} EndpointSlice"), slices);
        }
        // ServiceImports only where the API server serves them: a watcher
        // of a resource it does not know would never list, and nothing
        // would ever be applied. Installing the MCS API later takes a
        // restart of the agent to be seen.
        watch.watch_service_imports();
        Ok(watch)
    }

    /// Starts the ServiceImport watcher if the API server serves them,
    /// once that is known: a watcher of a resource it does not know would
    /// never list, and nothing would ever be applied. Asked at start, and
    /// while the API server has not answered, again with each of its
    /// signals until it does (an agent starts while it is away). Installing
    /// the MCS API later takes a restart of the agent to be seen.
    fn watch_service_imports(&mut self) {
        if self.service_imports.is_some() {
            return;
        }
        match self.runtime.handle.block_on(list_service_imports(&self.client)) {
            Ok(Some(_)) => {
                let imports = watched_custom(&self.client, SERVICE_IMPORT_API_VERSION, "ServiceImport");
                self.start_watcher("ServiceImport".into(), imports);
                self.service_imports = Some(true);
            }
            Ok(None) => {
                log::info!(
                    "sync --kube: the API server serves no ServiceImport (the MCS API is not installed): not \
                     watched"
                );
                self.service_imports = Some(false);
            }
            Err(err) => log::debug!("cannot tell yet whether the API server serves ServiceImports: {err:#}"),
        }
    }

    /// Runs the watcher `key`, its signals sent to the watch loop: as
    /// many at once as have come (a page of a list is hundreds), as each
    /// message wakes the loop's thread.
    fn start_watcher(&mut self, key: String, stream: BoxStream<'static, Signal>) {
        let signals = self.signals.clone();
        let forwarded = key.clone();
        let task = self.runtime.handle.spawn(async move {
            let mut batches = stream.ready_chunks(SIGNALS_AT_ONCE);
            while let Some(batch) = batches.next().await {
                if signals.send(Wake::Event((forwarded.clone(), batch))).is_err() {
                    break;
                }
            }
        });
        let watched = Watched { labels: FxHashSet::default(), relisted: None, listed: false, task };
        self.watchers.insert(key, watched);
    }

    /// Starts and stops watchers of the Pods the BalancingPolicies select,
    /// as the policies now want.
    fn watch_selected_pods(&mut self) {
        let policies = (self.cluster.documents)
            .range::<str, _>((Bound::Included(BALANCING_POLICIES), Bound::Unbounded))
            .map(|(_, d)| d);
        let selected = selected_pods(policies.take_while(|d| d.label.starts_with(BALANCING_POLICIES)));
        // In this cluster and in each other one (cross-cluster balancing
        // policies), keyed apart: `@east Pod selected ...`.
        let mut wanted: BTreeMap<String, (Option<usize>, String, String)> = BTreeMap::new();
        for (key, (namespace, labels)) in &selected {
            wanted.insert(key.clone(), (None, namespace.clone(), labels.clone()));
            for (index, (name, _)) in self.remotes.iter().enumerate() {
                wanted.insert(
                    format!("{REMOTE}{name} {key}"),
                    (Some(index), namespace.clone(), labels.clone()),
                );
            }
        }
        let running: BTreeSet<String> =
            self.watchers.keys().filter(|k| k.contains(SELECTED_PODS)).cloned().collect();
        if wanted.keys().eq(running.iter()) {
            return;
        }
        for gone in running.iter().filter(|k| !wanted.contains_key(*k)) {
            self.cluster.stop(&mut self.watchers, gone);
        }
        for (key, (remote, namespace, labels)) in wanted.into_iter().filter(|(k, _)| !running.contains(k)) {
            let config = watcher::Config::default().labels(&labels);
            let (client, cluster) = match remote {
                None => (&self.client, None),
                Some(index) => (&self.remotes[index].1, Some(self.remotes[index].0.clone())),
            };
            let stream = watched_in::<Pod>(Api::namespaced(client.clone(), &namespace), config, cluster);
            self.start_watcher(key, stream);
        }
    }

    /// Takes in what watcher `key` said; whether it changed the documents
    /// (a list's objects change them when the list is complete).
    fn take_signal(&mut self, key: &str, signal: Signal) -> bool {
        let (watchers, cluster) = (&mut self.watchers, &mut self.cluster);
        let changed = match signal {
            Signal::Answered => {
                self.probing = false;
                self.agent.api_server_answered();
                self.watch_service_imports();
                return false;
            }
            Signal::Failed(err) if key.starts_with(REMOTE) => {
                // Another cluster's API server: its endpoints stay as last
                // read; this node's health is its own cluster's.
                log::warn!("watching {key}: {err} (retrying; its last endpoints are kept)");
                return false;
            }
            Signal::Failed(err) => {
                log::warn!("watching {key}: {err} (retrying; the datapath keeps its state)");
                self.agent.api_server_failed(&format!("watching {key}: {err}"));
                if !self.probing {
                    probe(&self.runtime.handle, self.client.clone(), self.signals.clone());
                    self.probing = true;
                }
                return false;
            }
            Signal::Applied(document) => cluster.put(watchers, key, document),
            Signal::Deleted(label) => cluster.remove(watchers, key, &label),
            Signal::Listing => {
                // A watcher just stopped may still have said something.
                if let Some(watched) = watchers.get_mut(key) {
                    watched.relisted = Some(FxHashSet::default());
                }
                false
            }
            // A list's objects are one change, when it is complete.
            Signal::Listed(document) => {
                cluster.put(watchers, key, document);
                false
            }
            Signal::ListDone => {
                cluster.list_done(watchers, key);
                true
            }
        };
        if !key.starts_with(REMOTE) {
            self.agent.api_server_answered();
            self.watch_service_imports();
        }
        changed
    }

    /// Whether every watcher has listed once.
    fn listed(&self) -> bool {
        self.watchers.values().all(|w| w.listed)
    }
}

impl<A: FnMut(&Documents) -> bool> Source for ClusterWatch<'_, A> {
    /// What a watcher (by key) said, in order.
    type Event = (String, Vec<Signal>);

    fn take(&mut self, (key, signals): (String, Vec<Signal>)) -> bool {
        let mut changed = false;
        for signal in signals {
            changed |= self.take_signal(&key, signal);
        }
        changed
    }

    /// Nothing is applied before every watcher has listed once, so a start
    /// never prunes what the cluster still has; nor while the Pods the
    /// policies now select are not watched yet: those are watched first,
    /// and their lists are the next change. (Watchers of Pods no policy
    /// selects any more just stop, and what only they held leaves now.)
    fn sync(&mut self, _settled: bool) -> Option<Duration> {
        if !self.listed() {
            return None;
        }
        self.watch_selected_pods();
        if !self.listed() {
            return None;
        }
        if (self.apply)(&self.cluster) {
            self.cluster.applied();
        }
        None
    }
}

/// Lists one Node every `PROBE_INTERVAL` until the API server answers, then
/// says so. It ends with the runtime, when the watch does.
fn probe(runtime: &tokio::runtime::Handle, client: Client, signals: Waker<(String, Vec<Signal>)>) {
    runtime.spawn(async move {
        let nodes = Api::<Node>::all(client);
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            if nodes.list(&ListParams::default().limit(1)).await.is_ok() {
                let _ = signals.send(Wake::Event((String::new(), vec![Signal::Answered])));
                return;
            }
        }
    });
}

/// The start of the keys of watchers of the Pods policies select.
const SELECTED_PODS: &str = "Pod selected ";
/// The start of the labels of BalancingPolicy documents.
const BALANCING_POLICIES: &str = "BalancingPolicy ";

/// What a typed watcher watches: a built-in kind kube-runtime can watch
/// and balctl can make a document of.
trait Watchable:
    Resource<DynamicType = ()>
    + Clone
    + Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + 'static
{
}

impl<K> Watchable for K where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static
{
}

/// A watcher of `api`, as signals: each object made into its document as
/// it arrives.
fn watched<K: Watchable>(api: Api<K>, config: watcher::Config) -> BoxStream<'static, Signal> {
    watched_in(api, config, None)
}

/// `watched` of the other cluster `cluster` (None: this node's).
fn watched_in<K: Watchable>(
    api: Api<K>,
    config: watcher::Config,
    cluster: Option<String>,
) -> BoxStream<'static, Signal> {
    let (api_version, kind) = (K::api_version(&()).into_owned(), K::kind(&()).into_owned());
    signals_in(watcher(api, config), api_version, kind, cluster)
}

/// A watcher of a policy kind, as signals.
fn watched_policies(client: &Client, kind: &'static str) -> BoxStream<'static, Signal> {
    watched_custom(client, POLICY_API_VERSION, kind)
}

/// A watcher of the custom resources `kind` of `api_version`, as signals.
fn watched_custom(
    client: &Client,
    api_version: &'static str,
    kind: &'static str,
) -> BoxStream<'static, Signal> {
    let api = custom_api(client, api_version, kind);
    signals(watcher(api, watcher::Config::default()), api_version.to_owned(), kind.to_owned())
}

/// The cluster-wide API of the custom resources `kind` of `api_version`.
fn custom_api(client: &Client, api_version: &str, kind: &str) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').expect("a group/version");
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::<DynamicObject>::all_with(client.clone(), &resource)
}

/// The ServiceImports of the MCS API, as documents; none when the API
/// server does not serve them (the MCS CRDs are not installed: 404), which
/// most clusters are.
async fn list_service_imports(client: &Client) -> Result<Option<Vec<Document>>> {
    let listed =
        custom_api(client, SERVICE_IMPORT_API_VERSION, "ServiceImport").list(&ListParams::default()).await;
    match listed {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        listed => documents(&listed, SERVICE_IMPORT_API_VERSION, "ServiceImport").map(Some),
    }
}

/// The Pods BalancingPolicies (their documents) select, as watcher keys
/// with their namespace and label selector (`app=web,tier=front`). A
/// selector balctl refuses (no matchLabels) selects nothing here: the sync
/// reports it.
fn selected_pods<'a>(policies: impl IntoIterator<Item = &'a Document>) -> BTreeMap<String, (String, String)> {
    let mut wanted = BTreeMap::new();
    for policy in policies {
        let Ok(policy) = serde_json::from_slice::<serde_json::Value>(&policy.json()) else { continue };
        let labels = &policy["spec"]["backend"]["serviceEndpoint"]["endpointSelector"]["matchLabels"];
        let Some(labels) = labels.as_object().filter(|l| !l.is_empty()) else { continue };
        let selector: Vec<String> =
            labels.iter().filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?))).collect();
        let namespace = policy["metadata"]["namespace"].as_str().unwrap_or("default").to_owned();
        let selector = selector.join(",");
        wanted.insert(format!("{SELECTED_PODS}{namespace} {selector}"), (namespace, selector));
    }
    wanted
}

/// A watcher's events as signals, with retries and backoff, each object
/// made into its document (of `api_version` and `kind`) as it arrives.
fn signals<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    api_version: String,
    kind: String,
) -> BoxStream<'static, Signal>
where
    K: Resource + Serialize + Send + 'static,
{
    signals_in(events, api_version, kind, None)
}

/// `signals` of a watcher of the other cluster `cluster` (None: this
/// node's), its documents made by `document_in`.
fn signals_in<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    api_version: String,
    kind: String,
    cluster: Option<String>,
) -> BoxStream<'static, Signal>
where
    K: Resource + Serialize + Send + 'static,
{
    let (labelled, of) = (kind.clone(), cluster.clone());
    let made = move |object: &K| {
        document_in(object, &api_version, &kind, cluster.as_deref())
            .map_err(|err| format!("cannot read a {kind} object: {err:#}"))
    };
    events
        .default_backoff()
        .map(move |event| match event {
            Ok(watcher::Event::Apply(object)) => made(&object).map_or_else(Signal::Failed, Signal::Applied),
            Ok(watcher::Event::Delete(object)) => Signal::Deleted(label(&object, &labelled, of.as_deref())),
            Ok(watcher::Event::Init) => Signal::Listing,
            Ok(watcher::Event::InitApply(object)) => {
                made(&object).map_or_else(Signal::Failed, Signal::Listed)
            }
            Ok(watcher::Event::InitDone) => Signal::ListDone,
            Err(err) => Signal::Failed(err.to_string()),
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(name: &str, cluster_ip: &str) -> Document {
        let object: Service = serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "ns", "uid": name, "resourceVersion": "1",
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"clusterIP": cluster_ip, "ports": [{"port": 80}]},
        }))
        .unwrap();
        document(&object, "v1", "Service").unwrap()
    }

    fn watchers(runtime: &tokio::runtime::Runtime, keys: &[&str]) -> Watchers {
        let watched = || Watched {
            labels: FxHashSet::default(),
            relisted: None,
            listed: false,
            task: runtime.spawn(async {}),
        };
        keys.iter().map(|key| ((*key).to_owned(), watched())).collect()
    }

    /// The labels changed since the last batch, with whether each had a
    /// document before; the batch then ends.
    fn batch(cluster: &mut Documents) -> Vec<(String, bool)> {
        let changed = cluster.changed.iter().map(|(label, old)| (label.clone(), old.is_some())).collect();
        cluster.applied();
        changed
    }

    #[test]
    fn documents_follow_the_events_and_say_what_changed() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut watchers = watchers(&runtime, &["Service", "Pod on n", "Pod selected ns app=a"]);
        let mut cluster = Documents::default();
        let (a, b) = ("Service ns/a (from the API server)", "Service ns/b (from the API server)");

        let first = service("a", "198.18.0.1");
        let text = String::from_utf8(first.json()).unwrap();
        assert_eq!(first.label, a);
        assert!(text.contains(r#""kind":"Service""#) && text.contains("198.18.0.1"), "{text}");
        assert!(!text.contains("managedFields"), "{text}");

        // Before a change is applied, nothing is recorded: all is new.
        assert!(cluster.put(&mut watchers, "Service", service("a", "198.18.0.5")));
        assert!(batch(&mut cluster).is_empty());
        assert!(cluster.remove(&mut watchers, "Service", a));
        assert_eq!(batch(&mut cluster), [(a.to_owned(), true)]);
        assert!(cluster.put(&mut watchers, "Service", first));
        assert!(cluster.put(&mut watchers, "Service", service("b", "198.18.0.2")));
        assert_eq!(batch(&mut cluster), [(a.to_owned(), false), (b.to_owned(), false)]);
        // The same bytes again are no change.
        assert!(!cluster.put(&mut watchers, "Service", service("a", "198.18.0.1")));
        assert!(cluster.put(&mut watchers, "Service", service("a", "198.18.0.9")));
        assert!(cluster.remove(&mut watchers, "Service", b));
        assert_eq!(batch(&mut cluster), [(a.to_owned(), true), (b.to_owned(), true)]);
        assert_eq!(cluster.documents.keys().collect::<Vec<_>>(), [a]);

        // A relist: what it does not name again leaves when it is done.
        assert!(cluster.put(&mut watchers, "Service", service("b", "198.18.0.2")));
        batch(&mut cluster);
        watchers.get_mut("Service").unwrap().relisted = Some(FxHashSet::default());
        cluster.put(&mut watchers, "Service", service("a", "198.18.0.9"));
        assert!(batch(&mut cluster).is_empty(), "an unchanged object relisted is no change");
        assert!(cluster.list_done(&mut watchers, "Service"));
        assert_eq!(batch(&mut cluster), [(b.to_owned(), true)]);
        assert_eq!(cluster.documents.keys().collect::<Vec<_>>(), [a]);

        // A Pod two watchers hold stays until neither does.
        let pod = Document::new("Pod ns/p (from the API server)".into(), &b"{}"[..]);
        cluster.put(&mut watchers, "Pod on n", pod.clone());
        cluster.put(&mut watchers, "Pod selected ns app=a", pod);
        batch(&mut cluster);
        assert!(!cluster.remove(&mut watchers, "Pod on n", "Pod ns/p (from the API server)"));
        assert!(cluster.documents.contains_key("Pod ns/p (from the API server)"));
        cluster.stop(&mut watchers, "Pod selected ns app=a");
        assert!(!cluster.documents.contains_key("Pod ns/p (from the API server)"));
        assert_eq!(batch(&mut cluster), [("Pod ns/p (from the API server)".to_owned(), true)]);
    }

    #[test]
    fn balancing_policies_select_pods_by_their_labels() {
        let policy = |namespace: &str, labels: serde_json::Value| {
            let json = json!({
                "metadata": {"name": "p", "namespace": namespace},
                "spec": {"backend": {"serviceEndpoint": {"endpointSelector": {"matchLabels": labels}}}},
            });
            Document::new(format!("BalancingPolicy {namespace}/p"), serde_json::to_vec(&json).unwrap())
        };
        let wanted =
            selected_pods(&[policy("shop", json!({"app": "web", "tier": "front"})), policy("x", json!({}))]);
        assert_eq!(
            wanted.into_iter().collect::<Vec<_>>(),
            [(
                "Pod selected shop app=web,tier=front".to_owned(),
                ("shop".to_owned(), "app=web,tier=front".to_owned())
            )]
        );
    }
}
