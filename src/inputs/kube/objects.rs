//! The parts of Service, EndpointSlice, Node and Pod that decide where
//! traffic goes, read from `kubectl get -o yaml` output, and the dispatch
//! to the policy kinds (policy_objects.rs). Everything else
//! (managedFields, most annotations, status conditions...) is ignored; what
//! is read is checked as the API server would, with located errors.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use anyhow::Result;

use super::{
    field::{Field, Object},
    policy_objects::{self, POLICY_API_VERSION, PolicyObject},
    yaml::Node,
};
use crate::{
    error::excerpt,
    input,
    inputs::location::Location,
    model::{
        Dependency, ExternalBalancing, Fingerprint, LB_ALGORITHM_ANNOTATION, LEAST_CONNECTIONS, LbAlgorithm,
        MAGLEV_TABLE_SIZE_ANNOTATION, MAX_AFFINITY_SECONDS, PolicyKind, Prefix, check_maglev_table_size,
    },
};

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label of the EndpointSlices of a ServiceImport (the MCS API).
const MCS_SERVICE_NAME_LABEL: &str = "multicluster.kubernetes.io/service-name";
/// Set on the objects of another cluster than this node's (`sync --kube`
/// of several clusters writes it on theirs).
pub const CLUSTER_ANNOTATION: &str = "balancing.elf.io/cluster";
/// A Service of several clusters, with the union of their endpoints.
pub const GLOBAL_ANNOTATION: &str = "balancing.elf.io/global";
const CILIUM_GLOBAL_ANNOTATION: &str = "service.cilium.io/global";
/// A global Service's preference among the clusters' endpoints.
pub const AFFINITY_ANNOTATION: &str = "balancing.elf.io/affinity";
const CILIUM_AFFINITY_ANNOTATION: &str = "service.cilium.io/affinity";
/// The MCS API's group and version, of ServiceImport.
pub const SERVICE_IMPORT_API_VERSION: &str = "multicluster.x-k8s.io/v1alpha1";
/// The Node label that names its zone, which topology hints refer to.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The annotation that gives a Node's proxy address (BalancingPolicy
/// `redirectMode: nodeProxy`).
const NODE_PROXY_ANNOTATION: &str = "balancing.elf.io/nodeProxyIpv4";

/// Boxed: a sync of a big cluster holds hundreds of thousands of them,
/// moved around while they are grouped by Service.
#[derive(Clone)]
pub enum KubeObject {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<NodeObject>),
    Pod(Box<Pod>),
    Policy(Box<PolicyObject>),
}

impl KubeObject {
    pub fn meta_mut(&mut self) -> &mut Meta {
        match self {
            Self::Service(service) => &mut service.meta,
            Self::EndpointSlice(slice) => &mut slice.meta,
            Self::Node(node) => &mut node.meta,
            Self::Pod(pod) => &mut pod.meta,
            Self::Policy(policy) => &mut policy.meta,
        }
    }

    /// The synced object it goes into: its Service's, its Node's or its
    /// own (a policy). A Pod goes into none: policies read it.
    pub fn owner(&self) -> Option<String> {
        match self {
            Self::Service(service) => Some(service.owner()),
            Self::EndpointSlice(slice) => slice.service.as_ref().map(|service| {
                if slice.imported {
                    service_import_owner(&slice.meta.namespace, service)
                } else {
                    service_owner(&slice.meta.namespace, service)
                }
            }),
            Self::Node(node) => Some(node_owner(&node.meta.name)),
            Self::Pod(_) => None,
            Self::Policy(policy) => Some(policy.owner()),
        }
    }

    /// What a translation that reads this object records (`Dependency`): its
    /// synced object's owner and its item's fingerprint. Services and
    /// Nodes only: what other translations read of (policies re-read Pods
    /// on every sync).
    pub fn as_read(&self) -> Option<Dependency> {
        match self {
            Self::Service(service) => {
                Some(Dependency { owner: service.owner(), fingerprint: service.meta.fingerprint })
            }
            Self::Node(node) => Some(node.as_read()),
            _ => None,
        }
    }
}

/// Labels of an object, or the `matchLabels` of a selector.
pub type Labels = BTreeMap<String, String>;

/// Whether `labels` has every label of `selector` (`matchLabels`).
pub fn matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(key, value)| labels.get(key) == Some(value))
}

/// The owner of the synced object a Service becomes, as `dump` shows it.
pub fn service_owner(namespace: &str, name: &str) -> String {
    format!("service/{namespace}/{name}")
}

/// The owner of the synced object a ServiceImport becomes.
pub fn service_import_owner(namespace: &str, name: &str) -> String {
    format!("serviceimport/{namespace}/{name}")
}

impl Service {
    /// The owner of the synced object it becomes.
    pub fn owner(&self) -> String {
        if self.imported {
            service_import_owner(&self.meta.namespace, &self.meta.name)
        } else {
            service_owner(&self.meta.namespace, &self.meta.name)
        }
    }
}

pub fn node_owner(name: &str) -> String {
    format!("node/{name}")
}

/// Namespace and name, with where the object starts.
#[derive(Clone)]
pub struct Meta {
    pub namespace: String,
    pub name: String,
    pub location: Location,
    /// The fingerprint of its input item, when the item holds only it.
    pub fingerprint: Option<Fingerprint>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Clone)]
pub struct ServicePort {
    pub name: String,
    pub protocol: PortProtocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

#[derive(Clone)]
pub struct Service {
    pub meta: Meta,
    pub service_type: ServiceType,
    /// `clusterIP: None`.
    pub headless: bool,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`, except those with `ipMode: Proxy`
    /// (the load balancer proxies them itself, so kube-proxy leaves them alone).
    pub load_balancer_ips: Vec<IpAddr>,
    pub affinity_seconds: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`: traffic from outside goes to this
    /// node's endpoints only, with the client's address kept.
    pub external_local: bool,
    /// `spec.healthCheckNodePort`: the API server allocates it for a
    /// LoadBalancer service with externalTrafficPolicy Local; load balancers
    /// ask it whether this node has endpoints of the service.
    pub health_check_node_port: Option<u16>,
    /// From the annotations `balancing.elf.io/lb-algorithm` and
    /// `balancing.elf.io/maglev-table-size`, and
    /// `spec.loadBalancerSourceRanges`.
    pub external_balancing: ExternalBalancing,
    /// `balancing.elf.io/lb-algorithm: least-connections`: the socket
    /// frontends choose by live connections (packets from outside keep
    /// Maglev).
    pub least_connections: bool,
    /// A ServiceImport of the MCS API (`service_import`), not a Service:
    /// its slices are those labelled `MCS_SERVICE_NAME_LABEL`.
    pub imported: bool,
    /// The other cluster it is of (`CLUSTER_ANNOTATION`); None: this
    /// node's cluster.
    pub cluster: Option<Box<str>>,
    /// `balancing.elf.io/global: "true"` (or Cilium's
    /// `service.cilium.io/global`): a service of every cluster that has it,
    /// whose endpoints are the union of theirs.
    pub global: bool,
    /// `balancing.elf.io/affinity` (or Cilium's `service.cilium.io/affinity`)
    /// of a global service: which cluster's endpoints it prefers.
    pub affinity: ClusterAffinity,
}

/// Which cluster's endpoints a global service prefers: this node's
/// (`local`), the others' (`remote`), falling back to the rest when the
/// preferred have no usable endpoint; or all alike (`none`, the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterAffinity {
    #[default]
    None,
    Local,
    Remote,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}

#[derive(Clone)]
pub struct SlicePort {
    pub name: String,
    pub protocol: PortProtocol,
    pub port: u16,
}

#[derive(Clone)]
pub struct Endpoint {
    /// `addresses[0]`: the addresses of one endpoint are interchangeable,
    /// and kube-proxy uses the first.
    pub address: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Shared by the endpoints of a slice on the same node: a million
    /// endpoints run on a few thousand nodes.
    pub node_name: Option<Arc<str>>,
    /// Where the EndpointSlice controller says it should be used from
    /// (topology-aware routing); boxed, as most endpoints have none.
    pub hints: Option<Box<Hints>>,
}

/// An endpoint's `hints`: the zones (`forZones`) and nodes (`forNodes`)
/// whose clients it serves when topology applies (see services.rs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub zones: Vec<String>,
    pub nodes: Vec<String>,
}

#[derive(Clone)]
pub struct EndpointSlice {
    pub meta: Meta,
    /// The Service it belongs to (same namespace), from its label.
    pub service: Option<String>,
    /// It belongs to the ServiceImport `service` (its label is the MCS
    /// API's `multicluster.kubernetes.io/service-name`), not a Service.
    pub imported: bool,
    /// The other cluster it is of (`CLUSTER_ANNOTATION`); None: this
    /// node's cluster.
    pub cluster: Option<Box<str>>,
    /// None for FQDN slices, which name hosts rather than addresses.
    pub family: Option<Family>,
    pub ports: Vec<SlicePort>,
    /// Ports without a `name` key, skipped as kube-proxy skips them. The
    /// API server stores a missing name as `""`, so only a hand-written
    /// file has them: the sync says so.
    pub nameless_ports: usize,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone)]
pub struct NodeObject {
    pub meta: Meta,
    /// InternalIP and ExternalIP addresses.
    pub addresses: Vec<IpAddr>,
    /// InternalIP addresses only: where a pod's hostPort answers.
    pub internal_ips: Vec<IpAddr>,
    /// Annotation `balancing.elf.io/nodeProxyIpv4`.
    pub proxy_ipv4: Option<Ipv4Addr>,
    pub labels: Labels,
}

impl NodeObject {
    /// Its `topology.kubernetes.io/zone` label.
    pub fn zone(&self) -> Option<&str> {
        self.labels.get(ZONE_LABEL).map(String::as_str)
    }

    pub fn as_read(&self) -> Dependency {
        Dependency { owner: node_owner(&self.meta.name), fingerprint: self.meta.fingerprint }
    }
}

#[derive(Clone)]
pub struct ContainerPort {
    pub name: String,
    pub protocol: PortProtocol,
    pub container_port: u16,
    pub host_port: Option<u16>,
}

#[derive(Clone)]
pub struct Pod {
    pub meta: Meta,
    pub labels: Labels,
    /// `spec.nodeName`: where it was scheduled.
    pub node_name: Option<String>,
    /// `status.phase: Running` and no `metadata.deletionTimestamp`: it can
    /// take traffic.
    pub active: bool,
    /// `status.podIPs`, else `status.podIP`.
    pub ips: Vec<IpAddr>,
    /// The ports of all its containers.
    pub ports: Vec<ContainerPort>,
}

/// Reads one object.
pub fn parse(file: &str, node: &Node) -> Result<KubeObject> {
    let root = Field::root(node);
    let mut object = Object { file, what: "object".into() };
    let kind = root.require(&object, "kind")?;
    let kind_name = kind.str(&object)?;
    object.what = kind_name.to_owned();
    let api_version = root.require(&object, "apiVersion")?;
    let expected = match kind_name {
        "Service" | "Node" | "Pod" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        "LocalRedirectPolicy" | "BalancingPolicy" => POLICY_API_VERSION,
        "ServiceImport" => SERVICE_IMPORT_API_VERSION,
        other => {
            return Err(kind.error(
                &object,
                format!(
                    "balctl reads Service, EndpointSlice, Node, Pod, LocalRedirectPolicy, \
                     BalancingPolicy and ServiceImport objects, not {other} (`kubectl get \
                     services,endpointslices,nodes,pods,localredirectpolicies,balancingpolicies,\
                     serviceimports -A -o yaml` selects them)"
                ),
            ));
        }
    };
    let version = api_version.str(&object)?;
    if version != expected {
        return Err(
            api_version.error(&object, format!("{kind_name} must be apiVersion {expected}, not {version}"))
        );
    }
    let meta = meta(file, root, &mut object, kind_name)?;
    Ok(match kind_name {
        "Service" => KubeObject::Service(Box::new(service(root, &object, meta)?)),
        "ServiceImport" => KubeObject::Service(Box::new(service_import(root, &object, meta)?)),
        "EndpointSlice" => KubeObject::EndpointSlice(Box::new(endpoint_slice(root, &object, meta)?)),
        "Node" => KubeObject::Node(Box::new(node_object(root, &object, meta)?)),
        "Pod" => KubeObject::Pod(Box::new(pod(root, &object, meta)?)),
        "LocalRedirectPolicy" => KubeObject::Policy(Box::new(policy_objects::parse(
            root,
            &object,
            meta,
            PolicyKind::LocalRedirect,
        )?)),
        _ => KubeObject::Policy(Box::new(policy_objects::parse(root, &object, meta, PolicyKind::Balancing)?)),
    })
}

fn meta(file: &str, root: Field<'_>, object: &mut Object<'_>, kind: &str) -> Result<Meta> {
    let metadata = root.require(object, "metadata")?;
    let name = metadata.require(object, "name")?.str(object)?.to_owned();
    let namespace = match metadata.get("namespace") {
        Some(namespace) => namespace.str(object)?.to_owned(),
        None => "default".to_owned(),
    };
    object.what = if kind == "Node" { format!("Node {name}") } else { format!("{kind} {namespace}/{name}") };
    crate::model::check_name(&name).map_err(|e| metadata.error(object, format!("metadata.name: {e}")))?;
    Ok(Meta { namespace, name, location: root.node.location(file), fingerprint: None })
}

/// A ServiceImport of the MCS API (multicluster.x-k8s.io/v1alpha1): a
/// service of the cluster set, at its ClusterSetIPs (`spec.ips`, one per
/// family), whose endpoints are the EndpointSlices in its namespace
/// labelled `multicluster.kubernetes.io/service-name: NAME` (the MCS
/// controller makes them from every exporting cluster's endpoints), paired
/// by port name and protocol as a Service's. Read as a ClusterIP Service
/// owned `serviceimport/NAMESPACE/NAME`; `type: Headless` is skipped as a
/// headless Service is. `spec.sessionAffinity` and its config as a
/// Service's; the lb-algorithm annotation too.
fn service_import(root: Field<'_>, object: &Object<'_>, meta: Meta) -> Result<Service> {
    let spec = root.require(object, "spec")?;
    let headless = match spec.get("type") {
        Some(kind) => kind.one_of(object, &["ClusterSetIP", "Headless"])? == "Headless",
        None => false,
    };
    let cluster_ips = match spec.get("ips") {
        Some(list) => list.map_items(object, |ip| ip.ip(object))?,
        None => Vec::new(),
    };
    if cluster_ips.len() > 2
        || cluster_ips.len() == 2 && Family::of(cluster_ips[0]) == Family::of(cluster_ips[1])
    {
        return Err(spec.error(object, "ips: at most one IP of each family"));
    }
    let ports = match spec.get("ports") {
        Some(ports) => ports.map_items(object, |port| service_port(port, object))?,
        None => Vec::new(),
    };
    if !headless && ports.is_empty() {
        return Err(spec.error(object, "missing field `ports`: a ServiceImport needs at least one port"));
    }
    let affinity_seconds = match spec.get("sessionAffinity") {
        Some(affinity) if affinity.one_of(object, &["None", "ClientIP"])? == "ClientIP" => {
            Some(affinity_timeout(spec, object)?)
        }
        _ => None,
    };
    let (_, least_connections) = external_balancing(root, object)?;
    Ok(Service {
        meta,
        service_type: ServiceType::ClusterIp,
        headless,
        cluster_ips,
        ports,
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        affinity_seconds,
        internal_local: false,
        external_local: false,
        health_check_node_port: None,
        external_balancing: ExternalBalancing::default(),
        least_connections,
        imported: true,
        cluster: None,
        global: false,
        affinity: ClusterAffinity::None,
    })
}

/// The other cluster an object is of: its `CLUSTER_ANNOTATION` (which
/// `sync --kube` of several clusters writes on the other clusters'
/// objects; a file may too). None for this node's cluster.
fn cluster_of(root: Field<'_>, object: &Object<'_>) -> Result<Option<Box<str>>> {
    let metadata = root.require(object, "metadata")?;
    let Some(annotations) = metadata.get("annotations") else { return Ok(None) };
    let Some(cluster) = annotations.get(CLUSTER_ANNOTATION) else { return Ok(None) };
    let name = cluster.str(object)?;
    crate::model::check_name(name).map_err(|e| cluster.error(object, e))?;
    Ok(Some(name.into()))
}

/// A Service's `balancing.elf.io/global` and `balancing.elf.io/affinity`
/// (or Cilium's `service.cilium.io/` ones, which clusters moving from
/// Cilium's ClusterMesh carry): whether it is global, and which cluster's
/// endpoints it prefers.
fn global(root: Field<'_>, object: &Object<'_>) -> Result<(bool, ClusterAffinity)> {
    let metadata = root.require(object, "metadata")?;
    let Some(annotations) = metadata.get("annotations") else {
        return Ok((false, ClusterAffinity::None));
    };
    let either =
        |ours: &'static str, cilium: &'static str| annotations.get(ours).or_else(|| annotations.get(cilium));
    let global = match either(GLOBAL_ANNOTATION, CILIUM_GLOBAL_ANNOTATION) {
        Some(value) => value.one_of(object, &["true", "false"])? == "true",
        None => false,
    };
    let affinity = match either(AFFINITY_ANNOTATION, CILIUM_AFFINITY_ANNOTATION) {
        Some(value) => match value.one_of(object, &["local", "remote", "none"])? {
            "local" => ClusterAffinity::Local,
            "remote" => ClusterAffinity::Remote,
            _ => ClusterAffinity::None,
        },
        None => ClusterAffinity::None,
    };
    Ok((global, affinity))
}

fn service(root: Field<'_>, object: &Object<'_>, meta: Meta) -> Result<Service> {
    let spec = root.require(object, "spec")?;
    let service_type = match spec.get("type") {
        None => ServiceType::ClusterIp,
        Some(t) => match t.one_of(object, &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"])? {
            "ClusterIP" => ServiceType::ClusterIp,
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            _ => ServiceType::ExternalName,
        },
    };
    // Room for both families: grown one at a time it would have room for four.
    let mut cluster_ips = Vec::with_capacity(2);
    let mut headless = false;
    let mut read_cluster_ip = |field: Field<'_>| -> Result<()> {
        match field.str(object)? {
            "None" => headless = true,
            "" => {}
            _ => cluster_ips.push(field.ip(object)?),
        }
        Ok(())
    };
    match (spec.get("clusterIPs"), spec.get("clusterIP")) {
        (Some(list), _) => list.items(object)?.try_for_each(&mut read_cluster_ip)?,
        (None, Some(single)) => read_cluster_ip(single)?,
        (None, None) => {}
    }
    if cluster_ips.len() == 2 && Family::of(cluster_ips[0]) == Family::of(cluster_ips[1]) {
        return Err(spec.error(object, "clusterIPs: a dual-stack service has one IP of each family"));
    }
    let needs_ports = service_type != ServiceType::ExternalName && !headless;
    let ports = match spec.get("ports") {
        Some(ports) => ports.map_items(object, |port| service_port(port, object))?,
        None => Vec::new(),
    };
    if needs_ports && ports.is_empty() {
        return Err(spec.error(object, "missing field `ports`: a Service needs at least one port"));
    }
    let mut seen = HashSet::with_capacity(ports.len());
    for port in &ports {
        if !seen.insert((port.port, port.protocol)) {
            return Err(spec.error(object, format!("ports: port {} is listed twice", port.port)));
        }
        if ports.len() > 1 && port.name.is_empty() {
            return Err(spec.error(object, "ports: every port needs a name when there are several"));
        }
    }
    let external_ips = match spec.get("externalIPs") {
        Some(list) => list.map_items(object, |ip| ip.ip(object))?,
        None => Vec::new(),
    };
    let mut load_balancer_ips = Vec::new();
    if let Some(status) = root.get("status")
        && let Some(load_balancer) = status.get("loadBalancer")
        && let Some(ingress) = load_balancer.get("ingress")
    {
        for entry in ingress.items(object)? {
            let proxied = entry.get("ipMode").map(|m| m.str(object)).transpose()? == Some("Proxy");
            if let Some(ip) = entry.get("ip")
                && !proxied
            {
                load_balancer_ips.push(ip.ip(object)?);
            }
        }
    }
    let affinity_seconds = match spec.get("sessionAffinity") {
        Some(affinity) if affinity.one_of(object, &["None", "ClientIP"])? == "ClientIP" => {
            Some(affinity_timeout(spec, object)?)
        }
        _ => None,
    };
    let internal_local = match spec.get("internalTrafficPolicy") {
        Some(policy) => policy.one_of(object, &["Cluster", "Local"])? == "Local",
        None => false,
    };
    let (mut external_balancing, least_connections) = external_balancing(root, object)?;
    let cluster = cluster_of(root, object)?;
    let (global, affinity) = global(root, object)?;
    if let Some(ranges) = spec.get("loadBalancerSourceRanges") {
        for range in ranges.items(object)? {
            let prefix = range.str(object)?.parse::<Prefix>().map_err(|e| range.error(object, e))?;
            external_balancing.source_ranges.push(prefix);
        }
    }
    // The API server accepts Cluster and Local (Cluster when unset).
    let external_local = match spec.get("externalTrafficPolicy") {
        Some(policy) => policy.one_of(object, &["Cluster", "Local"])? == "Local",
        None => false,
    };
    let health_check_node_port = spec.get("healthCheckNodePort").map(|p| p.port(object)).transpose()?;
    Ok(Service {
        meta,
        service_type,
        headless,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ips,
        affinity_seconds,
        internal_local,
        external_local,
        health_check_node_port,
        external_balancing,
        least_connections,
        imported: false,
        cluster,
        global,
        affinity,
    })
}

/// A Service's annotations on how its frontends balance: its external
/// frontends, and whether its socket frontends choose by live connections
/// (`least-connections`, which leaves the external ones to Maglev).
/// Annotation values are strings, as the API server stores them.
fn external_balancing(root: Field<'_>, object: &Object<'_>) -> Result<(ExternalBalancing, bool)> {
    let mut balancing = ExternalBalancing::default();
    let mut least_connections = false;
    let metadata = root.require(object, "metadata")?;
    let Some(annotations) = metadata.get("annotations") else {
        return Ok((balancing, least_connections));
    };
    if let Some(algorithm) = annotations.get(LB_ALGORITHM_ANNOTATION) {
        let [maglev, random] = LbAlgorithm::NAMES;
        match algorithm.one_of(object, &[maglev, random, LEAST_CONNECTIONS])? {
            LEAST_CONNECTIONS => least_connections = true,
            name => balancing.algorithm = LbAlgorithm::from_name(name).expect("one of the names"),
        }
    }
    if let Some(size) = annotations.get(MAGLEV_TABLE_SIZE_ANNOTATION) {
        let text = size.str(object)?;
        let parsed = text.parse::<u64>().map_err(|_| format!("`{}` is not a whole number", excerpt(text)));
        let size_of = parsed.and_then(check_maglev_table_size);
        balancing.maglev_table_size = Some(size_of.map_err(|e| size.error(object, e))?);
    }
    Ok((balancing, least_connections))
}

fn affinity_timeout(spec: Field<'_>, object: &Object<'_>) -> Result<u32> {
    let Some(config) = spec.get("sessionAffinityConfig") else {
        return Ok(DEFAULT_AFFINITY_SECONDS);
    };
    let Some(client_ip) = config.get("clientIP") else {
        return Ok(DEFAULT_AFFINITY_SECONDS);
    };
    let Some(timeout) = client_ip.get("timeoutSeconds") else {
        return Ok(DEFAULT_AFFINITY_SECONDS);
    };
    let seconds = timeout.int(object)?;
    match u32::try_from(seconds) {
        Ok(seconds) if (1..=MAX_AFFINITY_SECONDS).contains(&seconds) => Ok(seconds),
        _ => Err(timeout.error(object, format!("{seconds} is out of range (1-{MAX_AFFINITY_SECONDS})"))),
    }
}

/// A mapping of label names to values: `metadata.labels`, `matchLabels`.
pub fn labels(field: Option<Field<'_>>, object: &Object<'_>) -> Result<Labels> {
    let mut labels = Labels::new();
    if let Some(field) = field {
        for (key, value) in field.entries(object)? {
            labels.insert(key.to_owned(), value.str(object)?.to_owned());
        }
    }
    Ok(labels)
}

fn protocol(field: Option<Field<'_>>, object: &Object<'_>) -> Result<PortProtocol> {
    Ok(match field {
        None => PortProtocol::Tcp,
        Some(protocol) => match protocol.one_of(object, &["TCP", "UDP", "SCTP"])? {
            "TCP" => PortProtocol::Tcp,
            "UDP" => PortProtocol::Udp,
            _ => PortProtocol::Sctp,
        },
    })
}

fn name(field: Option<Field<'_>>, object: &Object<'_>) -> Result<String> {
    Ok(match field {
        Some(name) => name.str(object)?.to_owned(),
        None => String::new(),
    })
}

fn service_port(port: Field<'_>, object: &Object<'_>) -> Result<ServicePort> {
    let number = port.require(object, "port")?.port(object)?;
    // The EndpointSlice controller resolves the target port (a number, or a
    // container port name) into each slice's ports; it is only checked here.
    if let Some(target) = port.get("targetPort") {
        let text = target.str(object).unwrap_or_default();
        if text.bytes().all(|b| b.is_ascii_digit()) {
            target.port(object)?;
        } else if text.len() > 15 {
            return Err(target.error(object, format!("`{text}` is neither a port number nor a port name")));
        }
    }
    Ok(ServicePort {
        name: name(port.get("name"), object)?,
        protocol: protocol(port.get("protocol"), object)?,
        port: number,
        node_port: port.get("nodePort").map(|p| p.port(object)).transpose()?,
    })
}

fn endpoint_slice(root: Field<'_>, object: &Object<'_>, meta: Meta) -> Result<EndpointSlice> {
    let metadata = root.require(object, "metadata")?;
    let (mut service, mut imported) = (None, false);
    if let Some(labels) = metadata.get("labels") {
        // A Service's label first: an MCS controller labels the slices it
        // imports with its own only, so that no Service claims them.
        if let Some(label) = labels.get(SERVICE_NAME_LABEL) {
            service = Some(label.str(object)?.to_owned());
        } else if let Some(label) = labels.get(MCS_SERVICE_NAME_LABEL) {
            (service, imported) = (Some(label.str(object)?.to_owned()), true);
        }
    }
    let address_type = root.require(object, "addressType")?;
    let family = match address_type.one_of(object, &["IPv4", "IPv6", "FQDN"])? {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        _ => None,
    };
    let (mut ports, mut nameless_ports) = (Vec::new(), 0);
    if let Some(list) = root.get("ports") {
        let items = list.items(object)?;
        ports.reserve_exact(items.len());
        for port in items {
            // A port without a number means "every port" to some consumers;
            // kube-proxy skips it, and so does balctl.
            let Some(number) = port.get("port") else { continue };
            // kube-proxy skips a port whose name is nil
            // (endpointslicecache.go); `name: ""` is the unnamed port.
            let Some(port_name) = port.get("name") else {
                nameless_ports += 1;
                continue;
            };
            ports.push(SlicePort {
                name: name(Some(port_name), object)?,
                protocol: protocol(port.get("protocol"), object)?,
                port: number.port(object)?,
            });
        }
    }
    // Reserved exactly, as a million endpoints are held at once.
    let mut endpoints: Vec<Endpoint> = Vec::new();
    if let (Some(list), Some(family)) = (root.get("endpoints"), family) {
        let items = list.items(object)?;
        endpoints.reserve_exact(items.len());
        for endpoint in items {
            let mut endpoint = endpoint_of(endpoint, object, family)?;
            if let Some(name) = &endpoint.node_name
                && let Some(same) = endpoints.iter().find_map(|e| e.node_name.as_ref().filter(|n| n == &name))
            {
                endpoint.node_name = Some(Arc::clone(same));
            }
            endpoints.push(endpoint);
        }
    }
    let cluster = cluster_of(root, object)?;
    Ok(EndpointSlice { meta, service, imported, cluster, family, ports, nameless_ports, endpoints })
}

fn endpoint_of(endpoint: Field<'_>, object: &Object<'_>, family: Family) -> Result<Endpoint> {
    let addresses = endpoint.require(object, "addresses")?;
    let first = addresses.items(object)?.next().ok_or_else(|| addresses.error(object, "no addresses"))?;
    let address = first.ip(object)?;
    if Family::of(address) != family {
        return Err(first.error(object, format!("{address} is not of the slice's addressType")));
    }
    let condition = |name: &str| -> Result<Option<bool>> {
        match endpoint.get("conditions") {
            Some(conditions) => conditions.get(name).map(|c| c.bool(object)).transpose(),
            None => Ok(None),
        }
    };
    // kube-proxy's reading of unset conditions (endpointslicecache.go):
    // ready and serving unless said otherwise, terminating only when said.
    // Not the API's "serving like ready": an endpoint with `ready: false`
    // and no `serving` that terminates is kube-proxy's fallback.
    let ready = condition("ready")?.unwrap_or(true);
    let serving = condition("serving")?.unwrap_or(true);
    let terminating = condition("terminating")?.unwrap_or(false);
    let node_name = endpoint.get("nodeName").map(|n| n.str(object).map(Arc::from)).transpose()?;
    let hints = endpoint.get("hints").map(|hints| hints_of(hints, object)).transpose()?;
    Ok(Endpoint { address, ready, serving, terminating, node_name, hints: hints.map(Box::new) })
}

/// `hints.forZones[].name` and `hints.forNodes[].name`.
fn hints_of(hints: Field<'_>, object: &Object<'_>) -> Result<Hints> {
    let names = |key: &str| -> Result<Vec<String>> {
        let Some(list) = hints.get(key) else { return Ok(Vec::new()) };
        list.items(object)?.map(|entry| Ok(entry.require(object, "name")?.str(object)?.to_owned())).collect()
    };
    Ok(Hints { zones: names("forZones")?, nodes: names("forNodes")? })
}

fn node_object(root: Field<'_>, object: &Object<'_>, meta: Meta) -> Result<NodeObject> {
    let mut addresses = Vec::new();
    let mut internal_ips = Vec::new();
    if let Some(status) = root.get("status")
        && let Some(list) = status.get("addresses")
    {
        for entry in list.items(object)? {
            let kind = entry.require(object, "type")?.str(object)?;
            if matches!(kind, "InternalIP" | "ExternalIP") {
                let address = entry.require(object, "address")?.ip(object)?;
                addresses.push(address);
                if kind == "InternalIP" {
                    internal_ips.push(address);
                }
            }
        }
    }
    if addresses.is_empty() {
        return Err(input!(
            "{}: {}: status.addresses has no InternalIP or ExternalIP",
            meta.location,
            object.what
        ));
    }
    let metadata = root.require(object, "metadata")?;
    let mut proxy_ipv4 = None;
    if let Some(annotations) = metadata.get("annotations")
        && let Some(proxy) = annotations.get(NODE_PROXY_ANNOTATION)
    {
        match proxy.ip(object)? {
            IpAddr::V4(ip) => proxy_ipv4 = Some(ip),
            IpAddr::V6(ip) => return Err(proxy.error(object, format!("{ip} is not an IPv4 address"))),
        }
    }
    let labels = labels(metadata.get("labels"), object)?;
    Ok(NodeObject { meta, addresses, internal_ips, proxy_ipv4, labels })
}

fn pod(root: Field<'_>, object: &Object<'_>, meta: Meta) -> Result<Pod> {
    let metadata = root.require(object, "metadata")?;
    let labels = labels(metadata.get("labels"), object)?;
    let deleting = metadata.get("deletionTimestamp").is_some();
    let mut node_name = None;
    let mut ports = Vec::new();
    if let Some(spec) = root.get("spec") {
        node_name = spec.get("nodeName").map(|n| n.str(object).map(str::to_owned)).transpose()?;
        if let Some(containers) = spec.get("containers") {
            for container in containers.items(object)? {
                let Some(list) = container.get("ports") else { continue };
                for port in list.items(object)? {
                    ports.push(ContainerPort {
                        name: name(port.get("name"), object)?,
                        protocol: protocol(port.get("protocol"), object)?,
                        container_port: port.require(object, "containerPort")?.port(object)?,
                        host_port: port.get("hostPort").map(|p| p.port(object)).transpose()?,
                    });
                }
            }
        }
    }
    let mut running = false;
    let mut ips = Vec::new();
    if let Some(status) = root.get("status") {
        running = status.get("phase").map(|p| p.str(object)).transpose()? == Some("Running");
        match (status.get("podIPs"), status.get("podIP")) {
            (Some(list), _) => {
                for entry in list.items(object)? {
                    ips.push(entry.require(object, "ip")?.ip(object)?);
                }
            }
            (None, Some(ip)) => ips.push(ip.ip(object)?),
            (None, None) => {}
        }
    }
    Ok(Pod { meta, labels, node_name, active: running && !deleting, ips, ports })
}
