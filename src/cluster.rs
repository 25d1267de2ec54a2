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
    collections::HashMap,
    path::PathBuf,
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
use serde::Serialize;

use crate::inputs::kube::POLICY_API_VERSION;

/// Where the API server is: a kubeconfig (and a context in it), or, with
/// neither, the pod's service account in a cluster, else the default
/// kubeconfig.
pub struct Connection {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// An object as JSON, with what to call it in errors (`Service ns/name`).
pub type Document = (String, Vec<u8>);

/// Lists every object balctl reads, once.
pub fn list_all(connection: &Connection) -> Result<Vec<Document>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the Kubernetes client")?;
    runtime.block_on(async {
        let client = client(connection).await?;
        let mut documents = Vec::new();
        documents.extend(list::<Service>(&client).await?);
        documents.extend(list::<EndpointSlice>(&client).await?);
        documents.extend(list::<Node>(&client).await?);
        documents.extend(list::<Pod>(&client).await?);
        for kind in ["LocalRedirectPolicy", "BalancingPolicy"] {
            documents.extend(list_policies(&client, kind).await?);
        }
        Ok(documents)
    })
}

async fn client(connection: &Connection) -> Result<Client> {
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

async fn list<K>(client: &Client) -> Result<Vec<Document>>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let listed = Api::<K>::all(client.clone()).list(&ListParams::default()).await;
    documents(listed, &K::api_version(&()), &K::kind(&()))
}

async fn list_policies(client: &Client, kind: &str) -> Result<Vec<Document>> {
    let (group, version) = POLICY_API_VERSION.split_once('/').expect("a group/version");
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let listed = Api::<DynamicObject>::all_with(client.clone(), &resource).list(&ListParams::default()).await;
    documents(listed, POLICY_API_VERSION, kind)
}

/// The listed objects as JSON documents.
fn documents<K: Resource + Serialize + Clone>(
    listed: Result<kube::core::ObjectList<K>, kube::Error>,
    api_version: &str,
    kind: &str,
) -> Result<Vec<Document>> {
    let listed = listed.with_context(|| format!("cannot list {kind} objects from the API server"))?;
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
    Ok((format!("{kind} {name} (from the API server)"), serde_json::to_vec(&json)?))
}

/// Every container's pod (`namespace/name`), by container id, from the
/// containers' statuses (`containerd://ID`, `cri-o://ID`, `docker://ID`).
pub fn pods_by_container(connection: &Connection) -> Result<HashMap<String, String>> {
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

/// How long the objects must be quiet before a change is applied, and the
/// longest a change waits: a rollout's burst of events becomes one sync.
const QUIET: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_millis(500);
/// How often the loop looks at `stop` while nothing happens.
const TICK: Duration = Duration::from_millis(100);

/// What a kind's watcher says.
enum Signal {
    /// Its objects changed.
    Changed,
    /// Its full list arrived (again, after a relist).
    Listed,
    /// It failed; it retries by itself, with backoff.
    Failed(String),
}

/// A watched kind: its store, and its watcher as a stream of signals.
struct Watched {
    kind: String,
    documents: Box<dyn Fn() -> Result<Vec<Document>>>,
    signals: BoxStream<'static, Signal>,
}

/// Watches the cluster until `stop` is set, calling `apply` with every
/// object once all kinds have been listed, then after each batch of
/// changes. `apply` reports its own errors: the watch goes on.
pub fn watch(connection: &Connection, stop: &AtomicBool, mut apply: impl FnMut(Vec<Document>)) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the Kubernetes client")?;
    runtime.block_on(async {
        let client = client(connection).await?;
        let mut kinds = vec![
            watched::<Service>(&client),
            watched::<EndpointSlice>(&client),
            watched::<Node>(&client),
            watched::<Pod>(&client),
        ];
        kinds.extend(["LocalRedirectPolicy", "BalancingPolicy"].map(|kind| watched_policies(&client, kind)));
        let mut listed = vec![false; kinds.len()];
        let mut signals = futures::stream::select_all(kinds.iter_mut().enumerate().map(|(index, kind)| {
            std::mem::replace(&mut kind.signals, futures::stream::empty().boxed()).map(move |s| (index, s))
        }));
        // (first, last) change not applied yet.
        let mut pending: Option<(Instant, Instant)> = None;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(next) = tokio::time::timeout(TICK, signals.next()).await {
                let Some((index, signal)) = next else {
                    anyhow::bail!("the Kubernetes watches ended");
                };
                match signal {
                    Signal::Listed => listed[index] = true,
                    Signal::Changed => {}
                    Signal::Failed(err) => {
                        log::warn!(
                            "watching {} objects: {err} (retrying; the datapath keeps its state)",
                            kinds[index].kind
                        );
                        continue;
                    }
                }
                let now = Instant::now();
                pending = Some((pending.map_or(now, |(first, _)| first), now));
            }
            let due =
                pending.is_some_and(|(first, last)| last.elapsed() >= QUIET || first.elapsed() >= MAX_WAIT);
            if due && listed.iter().all(|&l| l) {
                pending = None;
                let mut documents = Vec::new();
                for kind in &kinds {
                    documents.extend((kind.documents)()?);
                }
                apply(documents);
            }
        }
        Ok(())
    })
}

fn watched<K>(client: &Client) -> Watched
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
    let api = Api::<K>::all(client.clone());
    let (api_version, kind) = (K::api_version(&()).into_owned(), K::kind(&()).into_owned());
    Watched {
        kind: kind.clone(),
        documents: Box::new(move || stored(&store, &api_version, &kind)),
        signals: signals(writer, watcher(api, watcher::Config::default())),
    }
}

fn watched_policies(client: &Client, kind: &'static str) -> Watched {
    let (group, version) = POLICY_API_VERSION.split_once('/').expect("a group/version");
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let writer = Writer::<DynamicObject>::new(resource.clone());
    let store = writer.as_reader();
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    Watched {
        kind: kind.to_owned(),
        documents: Box::new(move || stored(&store, POLICY_API_VERSION, kind)),
        signals: signals(writer, watcher(api, watcher::Config::default())),
    }
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

/// The objects of a store, as documents.
fn stored<K: Resource + Serialize + Clone>(
    store: &Store<K>,
    api_version: &str,
    kind: &str,
) -> Result<Vec<Document>>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|object| document(object.as_ref(), api_version, kind)).collect()
}
