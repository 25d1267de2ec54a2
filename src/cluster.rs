//! `balctl sync --kube`: a Kubernetes cluster's objects read from its API
//! server instead of files: Services, EndpointSlices, Nodes, Pods and the
//! two policy kinds. They are handed on as the JSON the API server serves,
//! so they go through exactly the reading, validation and translation that
//! `sync -f` gives a `kubectl get -o json` dump, as one source.
//!
//! Once (`list_all`), or kept up to date (`watch`): one kube-runtime
//! watcher and reflector store per kind, which relist after a 410 Gone and
//! retry with backoff through disconnects while the stores, and so the
//! datapath, keep the last state. Nothing is applied before every kind has
//! been listed once, so a start never prunes what the cluster still has.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
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
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store, store::Writer},
        watcher,
    },
};
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::{agent::Agent, cli::ApiServerArgs, inputs::kube::POLICY_API_VERSION};

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
        documents.add(list_policies(&client, "LocalRedirectPolicy").await?.0);
        let (balancing, policies) = list_policies(&client, "BalancingPolicy").await?;
        documents.add(balancing);
        for (namespace, labels) in selected_pods(&policies).into_values() {
            let selected = ListParams::default().labels(&labels);
            documents.add(list::<Pod>(Api::namespaced(client.clone(), &namespace), selected).await?);
        }
        Ok(documents.0.into_values().collect())
    })
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
    runtime.block_on(async { work(client(connection).await?).await })
}

async fn client(connection: &ApiServerArgs) -> Result<Client> {
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

/// The policies of a kind, as documents and as objects.
async fn list_policies(client: &Client, kind: &str) -> Result<(Vec<Document>, Vec<DynamicObject>)> {
    let (group, version) = POLICY_API_VERSION.split_once('/').expect("a group/version");
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let listed = Api::<DynamicObject>::all_with(client.clone(), &resource).list(&ListParams::default()).await;
    let documents = documents(&listed, POLICY_API_VERSION, kind)?;
    Ok((documents, listed.map(|list| list.items).unwrap_or_default()))
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
/// a list leave them out).
fn document<K: Resource + Serialize>(object: &K, api_version: &str, kind: &str) -> Result<Document> {
    let meta = object.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    let name = match &meta.namespace {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_owned(),
    };
    let mut json = serde_json::to_value(object)?;
    json["apiVersion"] = api_version.into();
    json["kind"] = kind.into();
    Ok(Document::new(format!("{kind} {name} (from the API server)"), serde_json::to_vec(&json)?))
}

/// Every container's pod (`namespace/name`), by container id, from the
/// containers' statuses (`containerd://ID`, `cri-o://ID`, `docker://ID`).
pub fn pods_by_container(connection: &ApiServerArgs) -> Result<HashMap<String, String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the Kubernetes client")?;
    let pods = runtime.block_on(async {
        let client = client(connection).await?;
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

/// How long the objects must be quiet before a change is applied, and the
/// longest a change waits: a rollout's burst of events becomes one sync.
const QUIET: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_millis(500);
/// How often the loop looks at `stop` while nothing happens.
const TICK: Duration = Duration::from_millis(100);
/// While a watcher fails, how often the API server is asked whether it
/// answers again.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What a watcher says.
enum Signal {
    /// Its objects changed.
    Changed,
    /// Its full list arrived (again, after a relist).
    Listed,
    /// It failed; it retries by itself, with backoff.
    Failed(String),
    /// The API server answered the reachability probe (`probe`).
    Answered,
}

/// A store's objects as documents.
type Documents = Box<dyn FnMut() -> Result<Vec<Document>>>;

/// A running watcher: its store's documents, whether its first full list
/// arrived, and the task that feeds its signals to the loop.
struct Watched {
    documents: Documents,
    listed: bool,
    task: tokio::task::JoinHandle<()>,
}

/// Watchers by what they watch (`Service`, `Pod selected shop app=web`...).
type Watchers = BTreeMap<String, Watched>;

/// Watches the cluster until `stop` is set, calling `apply` with every
/// object once all watchers have listed, then after each batch of changes.
/// `apply` reports its own errors: the watch goes on. Tells `agent` of
/// every change and whether the API server answers: from a watcher's
/// failure until any watcher hears from it again, or a probe does (a watch
/// that resumes sends nothing until something changes).
///
/// Pods are watched only as far as policies need them: those on this node
/// (a LocalRedirectPolicy's backends), and those each BalancingPolicy's
/// selector picks in its namespace, with watchers started and stopped as
/// the policies change.
pub fn watch(
    connection: &ApiServerArgs,
    this_node: &str,
    stop: &AtomicBool,
    agent: &Agent,
    mut apply: impl FnMut(Vec<Document>),
) -> Result<()> {
    with_client(connection, async |client| {
        let (signals, mut received) = tokio::sync::mpsc::unbounded_channel::<(String, Signal)>();
        let mut watchers = Watchers::new();
        let start = |watchers: &mut Watchers,
                     key: String,
                     (documents, stream): (Documents, BoxStream<'static, Signal>)| {
            let signals = signals.clone();
            let forwarded = key.clone();
            let task = tokio::spawn(async move {
                let mut stream = stream;
                while let Some(signal) = stream.next().await {
                    if signals.send((forwarded.clone(), signal)).is_err() {
                        break;
                    }
                }
            });
            watchers.insert(key, Watched { documents, listed: false, task });
        };
        let all = watcher::Config::default;
        start(&mut watchers, "Service".into(), watched::<Service>(Api::all(client.clone()), all()));
        start(
            &mut watchers,
            "EndpointSlice".into(),
            watched::<EndpointSlice>(Api::all(client.clone()), all()),
        );
        start(&mut watchers, "Node".into(), watched::<Node>(Api::all(client.clone()), all()));
        let local = all().fields(&format!("spec.nodeName={this_node}"));
        start(&mut watchers, format!("Pod on {this_node}"), watched::<Pod>(Api::all(client.clone()), local));
        let (_, redirects) = watched_policies(&client, "LocalRedirectPolicy");
        start(&mut watchers, "LocalRedirectPolicy".into(), redirects);
        let (balancing_store, balancing) = watched_policies(&client, "BalancingPolicy");
        start(&mut watchers, "BalancingPolicy".into(), balancing);

        // (first, last) change not applied yet.
        let mut pending: Option<(Instant, Instant)> = None;
        // A probe of the API server runs (`probe`).
        let mut probing = false;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(next) = tokio::time::timeout(TICK, received.recv()).await {
                let Some((key, signal)) = next else {
                    anyhow::bail!("the Kubernetes watches ended");
                };
                if let Signal::Answered = signal {
                    probing = false;
                    agent.api_server_answered();
                    continue;
                }
                // A watcher just stopped may still have said something.
                let Some(watched) = watchers.get_mut(&key) else { continue };
                match signal {
                    Signal::Listed => watched.listed = true,
                    Signal::Changed | Signal::Answered => {}
                    Signal::Failed(err) => {
                        log::warn!("watching {key}: {err} (retrying; the datapath keeps its state)");
                        agent.api_server_failed(&format!("watching {key}: {err}"));
                        if !probing {
                            probe(client.clone(), signals.clone());
                            probing = true;
                        }
                        continue;
                    }
                }
                agent.api_server_answered();
                agent.changed(1);
                let now = Instant::now();
                pending = Some((pending.map_or(now, |(first, _)| first), now));
            }
            let due =
                pending.is_some_and(|(first, last)| last.elapsed() >= QUIET || first.elapsed() >= MAX_WAIT);
            if !due || !watchers.values().all(|w| w.listed) {
                continue;
            }
            // The policies may want other Pods now: watch those first.
            let wanted = selected_pods(balancing_store.state().iter().map(AsRef::as_ref));
            let running: BTreeSet<String> =
                watchers.keys().filter(|k| k.starts_with(SELECTED_PODS)).cloned().collect();
            if wanted.keys().cloned().collect::<BTreeSet<_>>() != running {
                for gone in running.iter().filter(|k| !wanted.contains_key(*k)) {
                    if let Some(watched) = watchers.remove(gone) {
                        watched.task.abort();
                    }
                }
                for (key, (namespace, labels)) in wanted.into_iter().filter(|(k, _)| !running.contains(k)) {
                    let api = Api::namespaced(client.clone(), &namespace);
                    start(&mut watchers, key, watched::<Pod>(api, all().labels(&labels)));
                }
                continue;
            }
            pending = None;
            let mut documents = Labelled::new();
            for watched in watchers.values_mut() {
                documents.add((watched.documents)()?);
            }
            apply(documents.0.into_values().collect());
        }
        Ok(())
    })
}

/// Lists one Node every `PROBE_INTERVAL` until the API server answers, then
/// says so. It ends with the runtime, when the watch does.
fn probe(client: Client, signals: tokio::sync::mpsc::UnboundedSender<(String, Signal)>) {
    tokio::spawn(async move {
        let nodes = Api::<Node>::all(client);
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            if nodes.list(&ListParams::default().limit(1)).await.is_ok() {
                let _ = signals.send((String::new(), Signal::Answered));
                return;
            }
        }
    });
}

/// The start of the keys of watchers of the Pods policies select.
const SELECTED_PODS: &str = "Pod selected ";

/// A watcher of `api` kept in a store: the store's documents and the
/// watcher's signals.
fn watched<K>(api: Api<K>, config: watcher::Config) -> (Documents, BoxStream<'static, Signal>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let (api_version, kind) = (K::api_version(&()).into_owned(), K::kind(&()).into_owned());
    let mut made = Made::default();
    let documents = Box::new(move || stored(&store, &api_version, &kind, &mut made));
    (documents, signals(writer, watcher(api, config)))
}

/// A watcher of a policy kind: its store (for the Pods the policies select)
/// and what `watched` gives.
fn watched_policies(
    client: &Client,
    kind: &'static str,
) -> (Store<DynamicObject>, (Documents, BoxStream<'static, Signal>)) {
    let (group, version) = POLICY_API_VERSION.split_once('/').expect("a group/version");
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let writer = Writer::<DynamicObject>::new(resource.clone());
    let store = writer.as_reader();
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    let documents_store = store.clone();
    let mut made = Made::default();
    let documents: Documents =
        Box::new(move || stored(&documents_store, POLICY_API_VERSION, kind, &mut made));
    (store, (documents, signals(writer, watcher(api, watcher::Config::default()))))
}

/// The Pods BalancingPolicies select, as watcher keys with their namespace
/// and label selector (`app=web,tier=front`). A selector balctl refuses
/// (no matchLabels) selects nothing here: the sync reports it.
fn selected_pods<'a>(
    policies: impl IntoIterator<Item = &'a DynamicObject>,
) -> BTreeMap<String, (String, String)> {
    let mut wanted = BTreeMap::new();
    for policy in policies {
        let labels = &policy.data["spec"]["backend"]["serviceEndpoint"]["endpointSelector"]["matchLabels"];
        let Some(labels) = labels.as_object().filter(|l| !l.is_empty()) else { continue };
        let selector: Vec<String> =
            labels.iter().filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?))).collect();
        let namespace = policy.namespace().unwrap_or_else(|| "default".into());
        let selector = selector.join(",");
        wanted.insert(format!("{SELECTED_PODS}{namespace} {selector}"), (namespace, selector));
    }
    wanted
}

/// A watcher kept in its store, as signals.
fn signals<K>(
    writer: Writer<K>,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> BoxStream<'static, Signal>
where
    K: kube::runtime::reflector::Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    reflector::reflector(writer, events.default_backoff())
        .filter_map(|event| async move {
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some(Signal::Changed),
                Ok(watcher::Event::InitDone) => Some(Signal::Listed),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
                Err(err) => Some(Signal::Failed(err.to_string())),
            }
        })
        .boxed()
}

/// The documents a store's objects were last made into, by uid, with the
/// resourceVersion each was made of.
type Made = FxHashMap<String, MadeOf>;

struct MadeOf {
    version: String,
    document: Document,
    /// Seen in the store by this pass of `stored`.
    seen: bool,
}

/// The objects of a store, as documents. An object's JSON (and its hash)
/// changes only with its resourceVersion, so only objects that changed
/// since the last call are serialised again (all of them cost 150 ms at
/// 10,000 Services with 10-endpoint slices, on every batch of a watch);
/// `made` is updated in place, and what left the store dropped from it.
fn stored<K: Resource + Serialize + Clone>(
    store: &Store<K>,
    api_version: &str,
    kind: &str,
    made: &mut Made,
) -> Result<Vec<Document>>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let objects = store.state();
    let mut documents = Vec::with_capacity(objects.len());
    for object in &objects {
        let meta = object.meta();
        let (Some(uid), Some(version)) = (&meta.uid, &meta.resource_version) else {
            documents.push(document(object.as_ref(), api_version, kind)?);
            continue;
        };
        match made.get_mut(uid) {
            Some(made_of) if made_of.version == *version => {
                made_of.seen = true;
                documents.push(made_of.document.clone());
            }
            _ => {
                let document = document(object.as_ref(), api_version, kind)?;
                documents.push(document.clone());
                made.insert(uid.clone(), MadeOf { version: version.clone(), document, seen: true });
            }
        }
    }
    made.retain(|_, made_of| std::mem::take(&mut made_of.seen));
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;

    fn service(uid: &str, version: &str, cluster_ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "ns", "uid": uid, "resourceVersion": version},
            "spec": {"clusterIP": cluster_ip, "ports": [{"port": 80}]},
        }))
        .unwrap()
    }

    /// The documents' text, by label.
    fn texts(documents: Vec<Document>) -> BTreeMap<String, String> {
        documents
            .into_iter()
            .map(|document| (document.label, String::from_utf8(document.json.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn a_store_serialises_only_the_objects_whose_resource_version_changed() {
        let (store, mut writer) = reflector::store::<Service>();
        let mut made = Made::default();
        let mut after = |event| {
            writer.apply_watcher_event(&event);
            texts(stored(&store, "v1", "Service", &mut made).unwrap())
        };
        let (a, b) = ("Service ns/a (from the API server)", "Service ns/b (from the API server)");
        after(Event::Apply(service("a", "1", "198.18.0.1")));
        let first = after(Event::Apply(service("b", "1", "198.18.0.2")));
        assert_eq!(first.keys().collect::<Vec<_>>(), [a, b]);
        assert!(first[a].contains(r#""kind":"Service""#) && first[a].contains("198.18.0.1"), "{first:?}");

        // The same resourceVersion is the same object (a real API server
        // never changes one without the other): what was made of it stands.
        let again = after(Event::Apply(service("a", "1", "198.18.0.9")));
        assert_eq!(again, first);
        let changed = after(Event::Apply(service("a", "2", "198.18.0.9")));
        assert!(changed[a].contains("198.18.0.9"), "{changed:?}");
        assert_eq!(changed[b], first[b]);

        let deleted = after(Event::Delete(service("b", "1", "198.18.0.2")));
        assert_eq!(deleted.keys().collect::<Vec<_>>(), [a]);
        assert_eq!(made.len(), 1, "a deleted object's document is dropped");
    }
}
