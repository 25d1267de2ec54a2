//! `balctl sync --kube`: a Kubernetes cluster's objects read from its API
//! server instead of files: Services, EndpointSlices, Nodes, Pods and the
//! two policy kinds. They are handed on as the JSON the API server serves,
//! so they go through exactly the reading, validation and translation that
//! `sync -f` gives a `kubectl get -o json` dump, as one source.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, Resource,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    config::{KubeConfigOptions, Kubeconfig},
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

/// The listed objects as JSON documents, with apiVersion and kind set (the
/// items of a list leave them out).
fn documents<K: Resource + Serialize + Clone>(
    listed: Result<kube::core::ObjectList<K>, kube::Error>,
    api_version: &str,
    kind: &str,
) -> Result<Vec<Document>> {
    let listed = listed.with_context(|| format!("cannot list {kind} objects from the API server"))?;
    listed
        .items
        .iter()
        .map(|object| {
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
        })
        .collect()
}
