//! Kubernetes service semantics, as kube-proxy implements them for traffic
//! that starts on this node (the only traffic socket-level balancing sees):
//!
//! - frontends, per family the service has a cluster IP of: its cluster
//!   IPs, its external IPs and load-balancer ingress IPs of that family, and
//!   the node port (written as the unspecified address, which the datapath
//!   matches on every node address and on IPv4 loopback). An external or
//!   load-balancer IP of another family is left alone, with a note;
//! - backends: the endpoints of the service's EndpointSlices whose port
//!   has the service port's name and protocol, at that slice's port number
//!   (so a named target port resolves per slice); ready endpoints, or when
//!   none is ready, those that are serving and terminating;
//! - topology (kube-proxy's topology.go): when every ready endpoint of a
//!   port has node hints (`hints.forNodes`) and one is hinted for this
//!   node, only those; else when every ready endpoint has zone hints and one
//!   is hinted for this node's zone (its Node's `topology.kubernetes.io/zone`),
//!   only those; else every endpoint. The EndpointSlice controller writes
//!   the hints from `trafficDistribution` (PreferSameNode: node and zone
//!   hints; PreferSameZone and PreferClose: zone hints), which kube-proxy,
//!   and so balctl, does not read itself. Topology narrows the endpoints of
//!   cluster traffic (every frontend but `Local` traffic policies' own);
//! - `internalTrafficPolicy: Local` restricts the cluster IPs to endpoints
//!   on this node, with no fallback. External frontends use every usable
//!   endpoint whatever the traffic policies: kube-proxy treats node-local
//!   clients of them as if they came back in from the load balancer;
//! - every external frontend (node port, external and load-balancer IP) has
//!   a second rule of scope `External`, for packets from outside the node:
//!   `externalTrafficPolicy: Cluster` every usable endpoint, `Local` this
//!   node's only (`local_only`: none means the packets are dropped);
//! - every rule says which of its backends run on this node (the
//!   endpoint's `nodeName`): packets from outside are only DNATed to them;
//! - `sessionAffinity: ClientIP` sets affinity on every frontend.
//!
//! Headless and ExternalName services, and services without a cluster IP,
//! have no frontend to balance and are skipped with a note, as are SCTP
//! ports.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
};

use anyhow::Result;

use super::{
    objects::{
        ClusterAffinity, Endpoint, EndpointSlice, Family, KubeObject, NodeObject, PortProtocol, Service,
        ServicePort, ServiceType, node_owner,
    },
    policies::{self, Cluster},
};
use crate::{
    inputs::{budget::EntryBudget, location::Located},
    model::{
        AddressKind, Dependency, ExternalBalancing, Frontend, FrontendRule, HealthCheck, NodePortAddresses,
        Protocol, Scope, SyncedObject, ThisNode,
    },
};

/// What Kubernetes objects turn into: synced objects, each with the index
/// of the source its Service or Node came from, and notes for the plan.
#[derive(Default)]
pub struct Translation {
    pub objects: Vec<(usize, Located<SyncedObject>)>,
    pub notes: Vec<String>,
}

/// Translates the objects of one sync (from every source: a Service and its
/// EndpointSlices may come from different files, a policy's Service and
/// Pods too). `this_node` decides which endpoints and Pods are local.
/// Policies can fail here (what they refer to may be missing), and any
/// object whose rules would not fit in `budget`, where they are counted
/// before they are made.
pub fn translate(
    objects: impl IntoIterator<Item = (usize, KubeObject)>,
    this_node: &ThisNode,
    budget: &mut EntryBudget,
) -> Result<Translation> {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    let mut policies = Vec::new();
    let mut translation = Translation::default();
    let mut orphans = Vec::new();
    for (source, object) in objects {
        match object {
            KubeObject::Service(service) => services.push((source, service)),
            KubeObject::Node(node) => nodes.push((source, node)),
            KubeObject::EndpointSlice(slice) if slice.service.is_some() => slices.push(slice),
            KubeObject::EndpointSlice(slice) => orphans.push(slice_name(&slice)),
            KubeObject::Pod(pod) => pods.push(pod),
            KubeObject::Policy(policy) => policies.push((source, policy)),
        }
    }
    // Other clusters' global services lend their endpoints to this
    // cluster's global services of the same name; the rest of other
    // clusters is theirs.
    let mut remote = RemoteEndpoints::take(&mut services, &mut slices);
    // Grouped by sorting the slices by their Service, rather than in a map
    // keyed by copies of the names: at 100,000 services the parsed objects
    // are most of a sync's memory. Services are translated in input order,
    // each slice freed with its Service, so that the parsed objects are
    // freed in the order they were made: freed in name order, their
    // memory stayed in pages the allocator could not give back, and a
    // 100,000-service sync whose input was not in name order peaked 60 MB
    // higher (bench/RESULTS.md). The objects come out in name order.
    slices.sort_by(|a, b| slice_key(a).cmp(&slice_key(b)));
    let own_slices: Vec<Range<usize>> = (services.iter())
        .map(|(_, service)| {
            let key = service_key(service);
            slices.partition_point(|slice| slice_key(slice) < key)
                ..slices.partition_point(|slice| slice_key(slice) <= key)
        })
        .collect();
    let mut by_name: Vec<usize> = (0..services.len()).collect();
    by_name.sort_by(|&a, &b| service_key(&services[a].1).cmp(&service_key(&services[b].1)));
    let mut rank = vec![0; services.len()];
    for (place, &service) in by_name.iter().enumerate() {
        rank[service] = place;
    }
    let here = Here::new(&this_node.name, nodes.iter().map(|(_, node)| node.as_ref()));
    if !policies.is_empty() {
        let cluster = Cluster::new(
            // A policy's serviceMatcher names a Service, not a ServiceImport.
            services.iter().map(|(_, service)| service.as_ref()).filter(|service| !service.imported),
            nodes.iter().map(|(_, node)| node.as_ref()),
            pods.iter().map(AsRef::as_ref),
            &this_node.name,
        );
        let objects = policies::translate(&policies, &cluster, &mut translation.notes, budget)?;
        translation.objects.extend(objects);
    }
    let node_ports = &this_node.node_port_addresses;
    // At most one object a Service and a Node: grown by doubling, the list
    // of 100,000 translated Services was copied whole at a sync's fullest.
    translation.objects.reserve_exact(services.len() + nodes.len());
    translation
        .objects
        .extend(nodes.into_iter().map(|(source, node)| (source, node_object(*node, node_ports))));
    let mut slices: Vec<Option<Box<EndpointSlice>>> = slices.into_iter().map(Some).collect();
    let first = translation.objects.len();
    let mut ranks = Vec::with_capacity(services.len());
    for (((source, service), own), rank) in services.into_iter().zip(own_slices).zip(rank) {
        // A Service defined twice (an error, once they are all read) has
        // its slices given to the first.
        let mut own: Vec<EndpointSlice> =
            slices[own].iter_mut().filter_map(|slice| slice.take().map(|slice| *slice)).collect();
        if service.global {
            own.extend(remote.take_for(&service));
            own = preferred(service.affinity, own);
        }
        if let Some(object) = service_object(*service, &own, &here, &mut translation.notes, budget)? {
            translation.objects.push((source, object));
            ranks.push(rank);
        }
    }
    put_in_order(&mut translation.objects[first..], &ranks);
    translation.notes.extend(remote.unclaimed());
    orphans.extend(slices.into_iter().flatten().map(|slice| slice_name(&slice)));
    if !orphans.is_empty() {
        translation.notes.push(format!(
            "{} EndpointSlice(s) belong to no Service in the input and were ignored: {}",
            orphans.len(),
            abbreviate(&orphans)
        ));
    }
    Ok(translation)
}

/// Other clusters' objects (`Service::cluster`): the EndpointSlices of
/// their global Services, by namespace and name, for this cluster's
/// global Services of the same name; what is not global is left alone.
#[derive(Default)]
struct RemoteEndpoints {
    slices: BTreeMap<(String, String), Vec<EndpointSlice>>,
    /// Global Services of other clusters, `CLUSTER/NAMESPACE/NAME`, that
    /// this cluster has no global Service of.
    unclaimed: BTreeSet<String>,
}

impl RemoteEndpoints {
    /// Takes other clusters' Services and slices out of `services` and
    /// `slices` (boxed as the translation holds them).
    #[allow(clippy::vec_box, reason = "the slices as `translate` holds them, boxed")]
    fn take(services: &mut Vec<(usize, Box<Service>)>, slices: &mut Vec<Box<EndpointSlice>>) -> Self {
        let mut remote = Self::default();
        if services.iter().all(|(_, s)| s.cluster.is_none()) && slices.iter().all(|s| s.cluster.is_none()) {
            return remote;
        }
        let mut global = BTreeSet::new();
        services.retain(|(_, service)| {
            let Some(cluster) = &service.cluster else { return true };
            if service.global && !service.imported {
                global.insert((
                    cluster.to_string(),
                    service.meta.namespace.clone(),
                    service.meta.name.clone(),
                ));
            }
            false
        });
        slices.retain(|slice| {
            let Some(cluster) = &slice.cluster else { return true };
            let name = slice.service.clone().unwrap_or_default();
            let key = (cluster.to_string(), slice.meta.namespace.clone(), name.clone());
            if !slice.imported && global.contains(&key) {
                remote
                    .slices
                    .entry((slice.meta.namespace.clone(), name))
                    .or_default()
                    .push((**slice).clone());
            }
            false
        });
        remote.unclaimed = global.into_iter().map(|(c, ns, name)| format!("{c}/{ns}/{name}")).collect();
        remote
    }

    /// The other clusters' slices of the global `service`.
    fn take_for(&mut self, service: &Service) -> Vec<EndpointSlice> {
        let key = (service.meta.namespace.clone(), service.meta.name.clone());
        self.unclaimed.retain(|unclaimed| !unclaimed.ends_with(&format!("/{}/{}", key.0, key.1)));
        self.slices.remove(&key).unwrap_or_default()
    }

    /// A note of the global Services of other clusters that no global
    /// Service here takes.
    fn unclaimed(&self) -> Option<String> {
        (!self.unclaimed.is_empty()).then(|| {
            let names: Vec<String> = self.unclaimed.iter().cloned().collect();
            format!(
                "{} global Service(s) of other clusters have no global Service of their name in this cluster, \
                 which their endpoints would join: {}",
                names.len(),
                abbreviate(&names)
            )
        })
    }
}

/// A global service's slices as its `affinity` prefers: this cluster's
/// (`local`) or the others' (`remote`) while they have an endpoint the
/// service would use (ready, or serving and terminating: kube-proxy's
/// fallback), else all of them; all for `none`.
fn preferred(affinity: ClusterAffinity, slices: Vec<EndpointSlice>) -> Vec<EndpointSlice> {
    let usable = |local: bool| {
        (slices.iter())
            .filter(|slice| slice.cluster.is_none() == local)
            .any(|slice| slice.endpoints.iter().any(|e| e.ready || e.serving && e.terminating))
    };
    let local = match affinity {
        ClusterAffinity::Local if usable(true) => true,
        ClusterAffinity::Remote if usable(false) => false,
        _ => return slices,
    };
    slices.into_iter().filter(|slice| slice.cluster.is_none() == local).collect()
}

/// Moves `items` into the order of their `ranks` (distinct), in place:
/// a sorted copy of 100,000 translated Services would hold them twice.
fn put_in_order<T>(items: &mut [T], ranks: &[usize]) {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_unstable_by_key(|&item| ranks[item]);
    // Where each item goes; kept true of the item at each place as they move.
    let mut destination = vec![0; items.len()];
    for (place, &item) in order.iter().enumerate() {
        destination[item] = place;
    }
    for place in 0..items.len() {
        while destination[place] != place {
            let to = destination[place];
            items.swap(place, to);
            destination.swap(place, to);
        }
    }
}

/// A Service's (or ServiceImport's) key among the slices': namespace, name
/// and whether imported.
fn service_key(service: &Service) -> (&str, &str, bool) {
    (&service.meta.namespace, &service.meta.name, service.imported)
}

/// The key of the service a slice belongs to.
fn slice_key(slice: &EndpointSlice) -> (&str, &str, bool) {
    (&slice.meta.namespace, slice.service.as_deref().unwrap_or_default(), slice.imported)
}

fn slice_name(slice: &EndpointSlice) -> String {
    format!("{}/{}", slice.meta.namespace, slice.meta.name)
}

fn abbreviate(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// A Node as applied: the addresses among its own that serve node ports.
fn node_object(node: NodeObject, node_ports: &NodePortAddresses) -> Located<SyncedObject> {
    Located {
        value: SyncedObject {
            source: String::new(),
            owner: node_owner(&node.meta.name),
            rules: Vec::new(),
            addresses: node_ports.select(&node.addresses, &node.internal_ips),
            inputs: node.meta.fingerprint.into_iter().collect(),
            health_check: None,
            dependencies: Vec::new(),
            held_back: Vec::new(),
        },
        location: node.meta.location,
    }
}

/// What a Service's translation knows of the node it is made for.
struct Here {
    /// The node's name: its endpoints are the local ones, and node hints
    /// name it. Part of every fingerprint (`fingerprint_seed`).
    name: String,
    /// Its Node's zone label, which zone hints are matched with.
    zone: Option<String>,
    /// The reading of its Node that a Service whose topology consults the
    /// zone records; None when that Node's item holds other objects too,
    /// so that its fingerprint is not its own: such a Service is always
    /// translated anew.
    read: Option<Dependency>,
}

impl Here {
    /// The node named `name`, its Node object found among `nodes`.
    fn new<'a>(name: &str, mut nodes: impl Iterator<Item = &'a NodeObject>) -> Self {
        match nodes.find(|node| node.meta.name == name) {
            Some(node) => Self {
                name: name.to_owned(),
                zone: node.zone().map(str::to_owned),
                read: node.meta.fingerprint.map(|_| node.as_read()),
            },
            None => Self {
                name: name.to_owned(),
                zone: None,
                read: Some(Dependency { owner: node_owner(name), fingerprint: None }),
            },
        }
    }
}

fn service_object(
    service: Service,
    slices: &[EndpointSlice],
    here: &Here,
    notes: &mut Vec<String>,
    budget: &mut EntryBudget,
) -> Result<Option<Located<SyncedObject>>> {
    let this_node = here.name.as_str();
    let name = format!("{}/{}", service.meta.namespace, service.meta.name);
    let notes_before = notes.len();
    if service.service_type == ServiceType::ExternalName {
        notes.push(format!("service {name} is an ExternalName service (DNS answers for it): skipped"));
        return Ok(None);
    }
    if service.headless {
        notes.push(format!("service {name} is headless (DNS returns its endpoints): skipped"));
        return Ok(None);
    }
    // kube-proxy proxies a service per family it has a cluster IP of
    // (servicechangetracker.go), and of its external and load-balancer IPs
    // only those of such a family (serviceport.go). The others are left to
    // whoever serves them, not made frontends without backends.
    if service.cluster_ips.is_empty() {
        notes.push(format!(
            "service {name} has no cluster IP (kube-proxy skips it until it has one): skipped"
        ));
        return Ok(None);
    }
    for slice in slices.iter().filter(|s| s.nameless_ports > 0) {
        notes.push(format!(
            "endpointslice {}/{}: {} port(s) without a name skipped, as kube-proxy skips them (the API \
             server stores a missing name as \"\"; write `name: \"\"` for the unnamed port)",
            slice.meta.namespace, slice.meta.name, slice.nameless_ports
        ));
    }
    let load_balancer_ips: &[IpAddr] =
        if service.service_type == ServiceType::LoadBalancer { &service.load_balancer_ips } else { &[] };
    let has_cluster_ip = |ip: IpAddr| service.cluster_ips.iter().any(|&c| Family::of(c) == Family::of(ip));
    let left_alone: Vec<String> = (service.external_ips.iter().map(|&ip| ("external IP", ip)))
        .chain(load_balancer_ips.iter().map(|&ip| ("load-balancer IP", ip)))
        .filter(|&(_, ip)| !has_cluster_ip(ip))
        .map(|(kind, ip)| format!("{kind} {ip}"))
        .collect();
    if !left_alone.is_empty() {
        notes.push(format!(
            "service {name}: {} read but not applied: the service has no cluster IP of that family \
             (kube-proxy leaves such addresses alone)",
            left_alone.join(", ")
        ));
    }
    // A node port is a frontend of NodePort and LoadBalancer services.
    let node_port = |port: &ServicePort| {
        port.node_port
            .filter(|_| matches!(service.service_type, ServiceType::NodePort | ServiceType::LoadBalancer))
    };
    let mut rules = Vec::new();
    // This node's ready endpoints, for the health-check node port.
    let mut ready_here = BTreeSet::new();
    // Whether the topology of a port depended on this node's zone.
    let mut read_zone = false;
    // Endpoints topology keeps from this node's clients.
    let mut held_back = BTreeSet::new();
    for port in &service.ports {
        let protocol = match port.protocol {
            PortProtocol::Tcp => Protocol::Tcp,
            PortProtocol::Udp => Protocol::Udp,
            PortProtocol::Sctp => {
                notes.push(format!(
                    "service {name}: port {}/SCTP skipped (balctl balances TCP and UDP)",
                    port.port
                ));
                continue;
            }
        };
        for family in [Family::V4, Family::V6] {
            let in_family = |ips: &[IpAddr]| {
                ips.iter().copied().filter(move |&ip| Family::of(ip) == family).collect::<Vec<_>>()
            };
            let cluster_ips = in_family(&service.cluster_ips);
            if cluster_ips.is_empty() {
                continue;
            }
            let candidates = candidates(slices, port, family);
            let topology = Topology::of(&candidates, here);
            read_zone |= topology.read_zone;
            // kube-proxy's cluster endpoints: for every frontend but those
            // of a Local traffic policy.
            let all = usable(&candidates, |c| topology.serves(c.endpoint, here));
            if topology.mode != TopologyMode::Any {
                let every = usable(&candidates, |_| true);
                held_back.extend(every.into_iter().filter(|backend| !all.contains(backend)));
            }
            let local = usable(&candidates, |c| c.endpoint.node_name.as_deref() == Some(this_node));
            let on_this_node: BTreeSet<SocketAddr> = candidates
                .iter()
                .filter(|c| c.endpoint.node_name.as_deref() == Some(this_node))
                .map(|c| c.backend)
                .collect();
            ready_here.extend(
                (candidates.iter())
                    .filter(|c| c.endpoint.ready && c.endpoint.node_name.as_deref() == Some(this_node))
                    .map(|c| c.backend),
            );
            let rule =
                |address_kind, address: IpAddr, number: u16, scope, backends: &[SocketAddr]| FrontendRule {
                    frontend: Frontend { address, port: number, protocol, scope },
                    backends: backends.to_vec(),
                    local_backends: backends.iter().copied().filter(|b| on_this_node.contains(b)).collect(),
                    affinity_seconds: service.affinity_seconds,
                    local_only: false,
                    requests_per_second: None,
                    address_kind,
                    external: ExternalBalancing::default(),
                    health: None,
                    weights: Vec::new(),
                    least_connections: service.least_connections,
                };
            let (external_ips, load_balancer_ips) =
                (in_family(&service.external_ips), in_family(load_balancer_ips));
            // Each is a frontend for sockets and one for packets from outside.
            let external_frontends: Vec<(AddressKind, IpAddr, u16)> = (external_ips.iter())
                .map(|&ip| (AddressKind::ExternalIp, ip, port.port))
                .chain(load_balancer_ips.iter().map(|&ip| (AddressKind::LoadBalancer, ip, port.port)))
                .chain(
                    node_port(port).map(|node_port| (AddressKind::NodePort, unspecified(family), node_port)),
                )
                .collect();
            if service.internal_local && local.is_empty() {
                notes.push(format!(
                    "service {name}: internalTrafficPolicy Local and no endpoint on node {this_node}: \
                     its cluster IP refuses connections here"
                ));
            }
            if service.external_local && local.is_empty() && !external_frontends.is_empty() {
                notes.push(format!(
                    "service {name}: externalTrafficPolicy Local and no endpoint on node {this_node}: \
                     packets from outside to its node ports and load-balancer and external IPs are dropped here"
                ));
            }
            let internal = if service.internal_local { &local } else { &all };
            let external = if service.external_local { &local } else { &all };
            let at = &service.meta.location;
            budget.reserve(
                format_args!("{at}: service {name} port {}/{protocol}", port.port),
                &[(cluster_ips.len(), "cluster IPs")],
                (internal.len(), "backends"),
            )?;
            budget.reserve(
                format_args!("{at}: service {name} port {}/{protocol}", port.port),
                &[(external_frontends.len(), "external IPs, load-balancer IPs and node ports")],
                (all.len(), "backends"),
            )?;
            budget.reserve(
                format_args!("{at}: service {name} port {}/{protocol} from outside", port.port),
                &[(external_frontends.len(), "external IPs, load-balancer IPs and node ports")],
                (external.len(), "backends"),
            )?;
            rules.extend(cluster_ips.iter().map(|&ip| FrontendRule {
                local_only: service.internal_local,
                ..rule(AddressKind::ClusterIp, ip, port.port, Scope::Service, internal)
            }));
            rules.extend(
                (external_frontends.iter())
                    .map(|&(kind, address, number)| rule(kind, address, number, Scope::Service, &all)),
            );
            rules.extend(external_frontends.iter().map(|&(kind, address, number)| FrontendRule {
                local_only: service.external_local,
                external: service.external_balancing.for_frontend(kind, address),
                ..rule(kind, address, number, Scope::External, external)
            }));
        }
    }
    // Reusable as it is while its items and what it read stay the same,
    // unless it has notes to repeat.
    let fingerprints =
        std::iter::once(service.meta.fingerprint).chain(slices.iter().map(|s| s.meta.fingerprint));
    let reads = if read_zone { here.read.clone().map(|read| vec![read]) } else { Some(Vec::new()) };
    let (mut inputs, reads) = match (fingerprints.collect::<Option<Vec<_>>>(), reads) {
        (Some(inputs), Some(reads)) if notes.len() == notes_before => (inputs, reads),
        _ => (Vec::new(), Vec::new()),
    };
    // Grown a few at a time, these lists have room for four or more: a
    // sync of 100,000 services held 40 MB of it (bench/RESULTS.md).
    rules.shrink_to_fit();
    inputs.shrink_to_fit();
    // kube-proxy serves it for LoadBalancer services with externalTrafficPolicy
    // Local only (apiservice.NeedsHealthCheck); the API server allocates it
    // for those alone, but a file may say anything.
    let health_check = (service.service_type == ServiceType::LoadBalancer && service.external_local)
        .then_some(service.health_check_node_port)
        .flatten()
        .map(|port| HealthCheck {
            namespace: service.meta.namespace.clone(),
            name: service.meta.name.clone(),
            port,
            local_endpoints: u32::try_from(ready_here.len()).unwrap_or(u32::MAX),
        });
    let object = SyncedObject {
        source: String::new(),
        owner: service.owner(),
        rules,
        addresses: Vec::new(),
        inputs,
        health_check,
        dependencies: reads,
        held_back: held_back.into_iter().collect(),
    };
    Ok(Some(Located { value: object, location: service.meta.location }))
}

/// The NodePort frontend address of a family.
const fn unspecified(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// An endpoint at the port number its slice gives the service port.
struct Candidate<'a> {
    backend: SocketAddr,
    endpoint: &'a Endpoint,
}

fn candidates<'a>(slices: &'a [EndpointSlice], port: &ServicePort, family: Family) -> Vec<Candidate<'a>> {
    let mut found = Vec::new();
    for slice in slices.iter().filter(|s| s.family == Some(family)) {
        let Some(slice_port) =
            slice.ports.iter().find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        found.extend(slice.endpoints.iter().map(|endpoint| Candidate {
            backend: SocketAddr::new(endpoint.address, slice_port.port),
            endpoint,
        }));
    }
    found
}

/// kube-proxy's choice among the `eligible` endpoints: the ready ones;
/// when there are none, those still serving while they terminate. Sorted
/// and unique, so the same input always gives the same slots.
fn usable(candidates: &[Candidate<'_>], eligible: impl Fn(&Candidate<'_>) -> bool) -> Vec<SocketAddr> {
    let eligible = || candidates.iter().filter(|c| eligible(c));
    let mut chosen: BTreeSet<SocketAddr> =
        eligible().filter(|c| c.endpoint.ready).map(|c| c.backend).collect();
    if chosen.is_empty() {
        chosen =
            eligible().filter(|c| c.endpoint.serving && c.endpoint.terminating).map(|c| c.backend).collect();
    }
    chosen.into_iter().collect()
}

/// Which endpoints of a port topology leaves to this node's clients,
/// decided from the hints of its ready endpoints as kube-proxy decides
/// (topology.go `topologyModeFromHints`): every ready endpoint hinted for
/// some node and one for this node: same node; else every ready endpoint
/// hinted for some zone and one for this node's zone: same zone; else
/// any. So hints are used only when all of them are there and serve this
/// node: a zone without endpoints, or an endpoint without hints, falls
/// back to every endpoint. Without a ready endpoint, nothing is narrowed:
/// the terminating fallback is topology-blind, as kube-proxy's is.
struct Topology {
    mode: TopologyMode,
    /// The decision depended on this node's zone: the Service records its
    /// reading of the Node.
    read_zone: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    Any,
    SameNode,
    SameZone,
}

impl Topology {
    fn of(candidates: &[Candidate<'_>], here: &Here) -> Self {
        let (mut any_ready, mut all_nodes, mut for_node, mut all_zones, mut for_zone) =
            (false, true, false, true, false);
        for candidate in candidates.iter().filter(|c| c.endpoint.ready) {
            any_ready = true;
            let hints = candidate.endpoint.hints.as_deref();
            match hints.map(|h| h.nodes.as_slice()).unwrap_or_default() {
                [] => all_nodes = false,
                nodes => for_node |= nodes.contains(&here.name),
            }
            match hints.map(|h| h.zones.as_slice()).unwrap_or_default() {
                [] => all_zones = false,
                zones => for_zone |= here.zone.as_ref().is_some_and(|zone| zones.contains(zone)),
            }
        }
        let mode = match () {
            () if !any_ready => TopologyMode::Any,
            () if all_nodes && for_node => TopologyMode::SameNode,
            () if all_zones && for_zone => TopologyMode::SameZone,
            () => TopologyMode::Any,
        };
        let read_zone = any_ready && !(all_nodes && for_node) && all_zones;
        Self { mode, read_zone }
    }

    /// Whether `endpoint` serves this node's clients.
    fn serves(&self, endpoint: &Endpoint, here: &Here) -> bool {
        let hints = endpoint.hints.as_deref();
        match self.mode {
            TopologyMode::Any => true,
            TopologyMode::SameNode => hints.is_some_and(|h| h.nodes.contains(&here.name)),
            TopologyMode::SameZone => {
                hints.is_some_and(|h| here.zone.as_ref().is_some_and(|zone| h.zones.contains(zone)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{inputs::kube::read, model::LbAlgorithm};

    #[test]
    fn items_are_put_in_the_order_of_their_ranks() {
        let mut draws = crate::draws::Draws(0x2545_f491_4f6c_dd1d);
        for len in 0..40 {
            let mut ranks: Vec<usize> = (0..len).map(|_| draws.below(1000) as usize * 64).collect();
            ranks.iter_mut().enumerate().for_each(|(i, rank)| *rank += i);
            let mut items: Vec<usize> = ranks.clone();
            put_in_order(&mut items, &ranks);
            let mut sorted = ranks.clone();
            sorted.sort_unstable();
            assert_eq!(items, sorted);
        }
    }

    /// Frontend -> backends of every rule the example files give, as text;
    /// a backend on `this_node` marked `(local)`.
    fn rules(files: &[&str], this_node: &str) -> (Vec<String>, Vec<String>) {
        let texts: Vec<(&str, String)> = files
            .iter()
            .map(|file| {
                let path = format!("{}/examples/k8s/{file}", env!("CARGO_MANIFEST_DIR"));
                (*file, std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        rules_of(&texts, this_node)
    }

    /// Frontend -> backends of every rule of YAML texts, each a file.
    fn rules_of(texts: &[(&str, String)], this_node: &str) -> (Vec<String>, Vec<String>) {
        let mut objects = Vec::new();
        for (index, (file, text)) in texts.iter().enumerate() {
            objects.extend(read(file, text.as_bytes()).unwrap().into_iter().map(|o| (index, o)));
        }
        let translation =
            translate(objects, &ThisNode::named(this_node), &mut EntryBudget::default()).unwrap();
        let rules = translation
            .objects
            .iter()
            .flat_map(|(_, o)| o.value.rules.iter())
            .map(|r| {
                let backends: Vec<String> = (r.backends.iter())
                    .map(|b| if r.is_local(b) { format!("{b} (local)") } else { b.to_string() })
                    .collect();
                format!("{} -> {}", r.frontend, backends.join(","))
            })
            .collect();
        (rules, translation.notes)
    }

    /// A ServiceImport (the MCS API) balances its ClusterSetIP over the
    /// slices labelled with its name; a Service of the same name keeps its
    /// own, and its object its own owner.
    #[test]
    fn a_service_import_takes_the_slices_labelled_for_it() {
        let local = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                     spec: {clusterIP: 198.18.0.20, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\n\
                     apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, \
                     labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: \
                     [192.0.2.2], conditions: {ready: true}}]\nports: [{name: http, port: 8080, protocol: TCP}]\n";
        let import = std::fs::read_to_string(format!(
            "{}/examples/k8s/service-import.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let (rules, notes) = rules_of(&[("web.yaml", local.to_owned()), ("import.yaml", import)], "node-a");
        assert_eq!(
            rules,
            ["198.18.0.20:80/tcp -> 192.0.2.2:8080", "198.18.4.10:80/tcp -> 192.0.2.6:8080,192.0.2.7:8080"],
            "{notes:?}"
        );
        let objects: Vec<_> =
            read("import.yaml", include_str!("../../../examples/k8s/service-import.yaml").as_bytes())
                .unwrap()
                .into_iter()
                .map(|o| (0, o))
                .collect();
        let translation =
            translate(objects, &ThisNode::named("node-a"), &mut EntryBudget::default()).unwrap();
        assert_eq!(translation.objects[0].1.value.owner, "serviceimport/shop/web");
    }

    #[test]
    fn topology_hints_narrow_the_endpoints_as_kube_proxy_does() {
        let files = ["topology.yaml", "nodes.yaml", "balancing-hostport.yaml"];
        let on = |node| {
            rules(&files, node).0.into_iter().filter(|r| r.starts_with("198.18.0.11")).collect::<Vec<_>>()
        };
        assert_eq!(
            on("node-a"),
            [
                "198.18.0.110:80/tcp -> 192.0.2.20:8080 (local)",
                "198.18.0.111:80/tcp -> 192.0.2.23:8080 (local)"
            ]
        );
        assert_eq!(
            on("node-b"),
            [
                "198.18.0.110:80/tcp -> 192.0.2.21:8080 (local),192.0.2.22:8080 (local)",
                "198.18.0.111:80/tcp -> 192.0.2.24:8080 (local)"
            ]
        );
        // node-c has no zone label: no zone is served, so every endpoint.
        assert_eq!(
            on("node-c"),
            [
                "198.18.0.110:80/tcp -> 192.0.2.20:8080,192.0.2.21:8080,192.0.2.22:8080",
                "198.18.0.111:80/tcp -> 192.0.2.23:8080,192.0.2.24:8080"
            ]
        );
        // A node not in the input has no zone either.
        assert_eq!(on("node-x"), on("node-c"));

        // What topology keeps from node-a is held back, not gone.
        let mut objects = Vec::new();
        for file in files {
            let path = format!("{}/examples/k8s/{file}", env!("CARGO_MANIFEST_DIR"));
            objects.extend(
                read(file, std::fs::read(&path).unwrap().as_slice()).unwrap().into_iter().map(|o| (0, o)),
            );
        }
        let translation =
            translate(objects, &ThisNode::named("node-a"), &mut EntryBudget::default()).unwrap();
        let held_back = |owner: &str| {
            let object = translation.objects.iter().find(|(_, o)| o.value.owner == owner).unwrap();
            object.1.value.held_back.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert_eq!(held_back("service/shop/catalog"), ["192.0.2.21:8080", "192.0.2.22:8080"]);
        assert_eq!(held_back("service/shop/inventory"), ["192.0.2.24:8080"]);
        assert!(held_back("node/node-a").is_empty());
    }

    /// kube-proxy's conditions and fallbacks, one slice at a time.
    #[test]
    fn topology_hints_are_used_only_when_every_ready_endpoint_has_them_and_one_serves_here() {
        let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  labels: {topology.kubernetes.io/zone: a}\nstatus:\n  addresses: [{type: InternalIP, address: 192.0.2.100}]\n";
        let service = |spec: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec:\n  clusterIP: 198.18.9.1\n  \
                 ports: [{{name: http, port: 80, protocol: TCP}}]\n{spec}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: s-1, namespace: ns, labels: {{kubernetes.io/service-name: s}}}}\naddressType: IPv4\n\
                 ports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
            )
        };
        let endpoint = |last: u8, conditions: &str, hints: &str| {
            format!("- addresses: [192.0.2.{last}]\n  conditions: {{{conditions}}}\n  hints: {{{hints}}}\n")
        };
        let backends = |spec: &str, endpoints: &[String]| {
            let text = format!("{node}---\n{}{}", service(spec), endpoints.concat());
            let (rules, _) = rules_of(&[("t.yaml", text)], "node-a");
            rules[0].split(" -> ").nth(1).unwrap().replace(" (local)", "")
        };
        let (zone_a, zone_b) = ("forZones: [{name: a}]", "forZones: [{name: b}]");
        let ready = "ready: true";
        // Hinted for zone a: only those.
        assert_eq!(backends("", &[endpoint(1, ready, zone_a), endpoint(2, ready, zone_b)]), "192.0.2.1:8080");
        // One ready endpoint without hints: every endpoint.
        assert_eq!(
            backends("", &[endpoint(1, ready, zone_a), endpoint(2, ready, "")]),
            "192.0.2.1:8080,192.0.2.2:8080"
        );
        // An endpoint that is not ready does not count, hints or not.
        assert_eq!(
            backends(
                "",
                &[endpoint(1, ready, zone_a), endpoint(2, ready, zone_b), endpoint(3, "ready: false", "")]
            ),
            "192.0.2.1:8080"
        );
        // No endpoint for zone a: every endpoint, not none (no ECONNREFUSED).
        assert_eq!(
            backends("", &[endpoint(1, ready, zone_b), endpoint(2, ready, zone_b)]),
            "192.0.2.1:8080,192.0.2.2:8080"
        );
        // Node hints first; without one for this node, zone hints.
        let node_a = "forNodes: [{name: node-a}], forZones: [{name: a}]";
        let node_b = "forNodes: [{name: node-b}], forZones: [{name: a}]";
        let node_c = "forNodes: [{name: node-c}], forZones: [{name: b}]";
        assert_eq!(
            backends(
                "",
                &[endpoint(1, ready, node_a), endpoint(2, ready, node_b), endpoint(3, ready, node_c)]
            ),
            "192.0.2.1:8080"
        );
        assert_eq!(backends("", &[endpoint(2, ready, node_b), endpoint(3, ready, node_c)]), "192.0.2.2:8080");
        // Nothing ready: the terminating fallback ignores topology.
        let terminating = "ready: false, serving: true, terminating: true";
        assert_eq!(
            backends("", &[endpoint(1, terminating, zone_a), endpoint(2, terminating, zone_b)]),
            "192.0.2.1:8080,192.0.2.2:8080"
        );
        // internalTrafficPolicy Local: this node's endpoints, whatever the hints.
        let local = "  internalTrafficPolicy: Local\n";
        let on_node_a = |last: u8, hints: &str| {
            format!("- addresses: [192.0.2.{last}]\n  nodeName: node-a\n  hints: {{{hints}}}\n")
        };
        assert_eq!(backends(local, &[on_node_a(1, zone_b), endpoint(2, ready, zone_a)]), "192.0.2.1:8080");
    }

    #[test]
    fn local_traffic_policy_limits_only_cluster_ips() {
        let (on_a, _) = rules(&["local-traffic.yaml"], "node-a");
        assert_eq!(
            on_a,
            [
                "198.18.0.60:80/tcp -> 192.0.2.8:9100 (local)",
                "0.0.0.0:30060/tcp -> 192.0.2.8:9100 (local),192.0.2.9:9100",
                // externalTrafficPolicy: Local too.
                "0.0.0.0:30060/tcp@external -> 192.0.2.8:9100 (local)",
            ]
        );
        let (on_c, notes) = rules(&["local-traffic.yaml"], "node-c");
        assert_eq!(on_c[0], "198.18.0.60:80/tcp -> ");
        assert_eq!(on_c[2], "0.0.0.0:30060/tcp@external -> ");
        assert!(notes[0].contains("internalTrafficPolicy Local and no endpoint on node node-c"), "{notes:?}");
        assert!(notes[1].contains("externalTrafficPolicy Local and no endpoint on node node-c"), "{notes:?}");
    }

    #[test]
    fn terminating_endpoints_are_a_fallback_only() {
        let (found, _) = rules(&["terminating.yaml"], "node-a");
        // Services come out in namespace/name order: shop/cart, shop/checkout.
        assert_eq!(found, ["198.18.0.71:80/tcp -> 192.0.2.10:8080", "198.18.0.70:80/tcp -> 192.0.2.2:8080"]);
    }

    #[test]
    fn named_ports_resolve_per_slice_and_families_stay_apart() {
        let (found, _) = rules(&["named-ports.yaml", "dual-stack.yaml"], "node-a");
        assert_eq!(
            found,
            [
                "198.18.0.80:80/tcp -> 192.0.2.4:8080,192.0.2.5:8081",
                "198.18.0.50:80/tcp -> 192.0.2.2:8080,192.0.2.3:8080",
                "[2001:db8:5e::50]:80/tcp -> [2001:db8::4]:8080,[2001:db8::5]:8080",
            ]
        );
    }

    #[test]
    fn every_external_frontend_kind_is_made() {
        let (found, _) = rules(&["loadbalancer.yaml", "external-ip.yaml"], "node-a");
        assert_eq!(
            found,
            [
                "198.18.0.30:443/tcp -> 192.0.2.6:8443",
                "198.18.1.30:443/tcp -> 192.0.2.6:8443",
                "0.0.0.0:30443/tcp -> 192.0.2.6:8443",
                // externalTrafficPolicy: Local, and the endpoint is on node-b.
                "198.18.1.30:443/tcp@external -> ",
                "0.0.0.0:30443/tcp@external -> ",
                "198.18.0.40:80/tcp -> 192.0.2.7:8080",
                "198.18.2.40:80/tcp -> 192.0.2.7:8080",
                "198.18.2.40:80/tcp@external -> 192.0.2.7:8080",
            ]
        );
    }

    #[test]
    fn services_without_frontends_are_noted() {
        let (found, notes) = rules(&["skipped.yaml"], "node-a");
        assert_eq!(found, ["198.18.0.90:5060/udp -> "]);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("shop/db is headless") && notes[1].contains("ExternalName"), "{notes:?}");
        assert!(notes[2].contains("5061/SCTP"), "{notes:?}");
    }

    /// A Service with `spec` and its one EndpointSlice with `slice`
    /// (addressType, endpoints and ports), both named web in namespace shop.
    fn web(spec: &str, slice: &str) -> (&'static str, String) {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n{spec}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
             namespace: shop\n  labels: {{kubernetes.io/service-name: web}}\n{slice}\n"
        );
        ("web.yaml", text)
    }

    const V4_SLICE: &str = "addressType: IPv4\nendpoints: [{addresses: [192.0.2.2]}]\n\
                            ports: [{name: https, port: 8443, protocol: TCP}]";

    #[test]
    fn addresses_of_a_family_without_a_cluster_ip_are_left_alone() {
        let spec = "spec:\n  type: LoadBalancer\n  clusterIP: 198.18.0.30\n  \
                    externalIPs: [198.18.2.30, \"2001:db8::9\"]\n  \
                    ports: [{name: https, port: 443, nodePort: 30443}]\n\
                    status: {loadBalancer: {ingress: [{ip: 198.18.1.30}, {ip: \"2001:db8::10\"}]}}";
        let (found, notes) = rules_of(&[web(spec, V4_SLICE)], "node-a");
        assert_eq!(
            found,
            [
                "198.18.0.30:443/tcp -> 192.0.2.2:8443",
                "198.18.2.30:443/tcp -> 192.0.2.2:8443",
                "198.18.1.30:443/tcp -> 192.0.2.2:8443",
                "0.0.0.0:30443/tcp -> 192.0.2.2:8443",
                "198.18.2.30:443/tcp@external -> 192.0.2.2:8443",
                "198.18.1.30:443/tcp@external -> 192.0.2.2:8443",
                "0.0.0.0:30443/tcp@external -> 192.0.2.2:8443",
            ]
        );
        assert_eq!(
            notes,
            [
                "service shop/web: external IP 2001:db8::9, load-balancer IP 2001:db8::10 read but not applied: \
              the service has no cluster IP of that family (kube-proxy leaves such addresses alone)"
            ]
        );
        // And the reverse: an IPv4 external IP of an IPv6-only service.
        let spec = "spec:\n  clusterIP: 2001:db8:5e::30\n  externalIPs: [198.18.2.30]\n  \
                    ports: [{name: https, port: 443}]";
        let slice = "addressType: IPv6\nendpoints: [{addresses: [\"2001:db8::2\"]}]\n\
                     ports: [{name: https, port: 8443}]";
        let (found, notes) = rules_of(&[web(spec, slice)], "node-a");
        assert_eq!(found, ["[2001:db8:5e::30]:443/tcp -> [2001:db8::2]:8443"]);
        assert!(notes[0].contains("external IP 198.18.2.30 read but not applied"), "{notes:?}");
    }

    #[test]
    fn a_service_without_a_cluster_ip_is_skipped() {
        let spec = "spec:\n  type: NodePort\n  externalIPs: [198.18.2.30]\n  \
                    ports: [{name: https, port: 443, nodePort: 30443}]";
        let (found, notes) = rules_of(&[web(spec, V4_SLICE)], "node-a");
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(
            notes,
            ["service shop/web has no cluster IP (kube-proxy skips it until it has one): skipped"]
        );
    }

    /// Every node port, load-balancer and external IP is a frontend for
    /// sockets (every endpoint) and one for packets from outside
    /// (externalTrafficPolicy's endpoints); this node's are marked in
    /// every rule, and a policy the API server refuses is refused.
    #[test]
    fn external_traffic_policy_chooses_the_external_entries_backends() {
        let slice = "addressType: IPv4\nendpoints:\n\
                     - {addresses: [192.0.2.2], nodeName: node-a}\n\
                     - {addresses: [192.0.2.3], nodeName: node-b}\n\
                     ports: [{name: https, port: 8443}]";
        let spec = |policy: &str| {
            format!(
                "spec:\n  type: LoadBalancer\n  clusterIP: 198.18.0.30\n  externalIPs: [198.18.2.30]\n  \
                 {policy}\n  ports: [{{name: https, port: 443, nodePort: 30443}}]\n\
                 status: {{loadBalancer: {{ingress: [{{ip: 198.18.1.30}}]}}}}"
            )
        };
        let socket_entries = [
            "198.18.0.30:443/tcp -> 192.0.2.2:8443 (local),192.0.2.3:8443",
            "198.18.2.30:443/tcp -> 192.0.2.2:8443 (local),192.0.2.3:8443",
            "198.18.1.30:443/tcp -> 192.0.2.2:8443 (local),192.0.2.3:8443",
            "0.0.0.0:30443/tcp -> 192.0.2.2:8443 (local),192.0.2.3:8443",
        ];
        for policy in ["externalTrafficPolicy: Cluster", "sessionAffinity: None"] {
            let (found, notes) = rules_of(&[web(&spec(policy), slice)], "node-a");
            let external = [
                "198.18.2.30:443/tcp@external -> 192.0.2.2:8443 (local),192.0.2.3:8443",
                "198.18.1.30:443/tcp@external -> 192.0.2.2:8443 (local),192.0.2.3:8443",
                "0.0.0.0:30443/tcp@external -> 192.0.2.2:8443 (local),192.0.2.3:8443",
            ];
            assert_eq!(found, [&socket_entries[..], &external].concat(), "{policy}");
            assert!(notes.is_empty(), "{notes:?}");
        }
        let (found, _) = rules_of(&[web(&spec("externalTrafficPolicy: Local"), slice)], "node-a");
        let external = [
            "198.18.2.30:443/tcp@external -> 192.0.2.2:8443 (local)",
            "198.18.1.30:443/tcp@external -> 192.0.2.2:8443 (local)",
            "0.0.0.0:30443/tcp@external -> 192.0.2.2:8443 (local)",
        ];
        assert_eq!(found, [&socket_entries[..], &external].concat());
        let text = web(&spec("externalTrafficPolicy: Global"), slice).1;
        let err = read("web.yaml", text.as_bytes()).err().expect("an unknown policy is refused");
        assert!(format!("{err:#}").contains("externalTrafficPolicy"), "{err:#}");
    }

    /// A health check for LoadBalancer and Local only, counting this
    /// node's ready endpoints, each IP:port once across the ports; not the
    /// terminating ones the datapath falls back to.
    #[test]
    fn health_check_node_ports_count_this_nodes_ready_endpoints() {
        let slice = "addressType: IPv4\nendpoints:\n\
                     - {addresses: [192.0.2.2], nodeName: node-a}\n\
                     - {addresses: [192.0.2.3], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}\n\
                     - {addresses: [192.0.2.4], nodeName: node-b}\n\
                     ports: [{name: https, port: 8443}, {name: http, port: 8080}]";
        let check = |kind: &str, policy: &str, this_node: &str| {
            let spec = format!(
                "spec:\n  type: {kind}\n  clusterIP: 198.18.0.30\n  externalTrafficPolicy: {policy}\n  \
                 healthCheckNodePort: 32443\n  ports: [{{name: https, port: 443, nodePort: 30443}}, \
                 {{name: http, port: 80, nodePort: 30080}}]"
            );
            let text = web(&spec, slice).1;
            let objects: Vec<_> =
                read("web.yaml", text.as_bytes()).unwrap().into_iter().map(|o| (0, o)).collect();
            let translation =
                translate(objects, &ThisNode::named(this_node), &mut EntryBudget::default()).unwrap();
            translation.objects[0].1.value.health_check.clone()
        };
        let health_check = |local_endpoints| {
            Some(HealthCheck { namespace: "shop".into(), name: "web".into(), port: 32443, local_endpoints })
        };
        assert_eq!(check("LoadBalancer", "Local", "node-a"), health_check(2));
        assert_eq!(check("LoadBalancer", "Local", "node-b"), health_check(2));
        assert_eq!(check("LoadBalancer", "Local", "node-c"), health_check(0));
        assert_eq!(check("LoadBalancer", "Cluster", "node-a"), None);
        assert_eq!(check("NodePort", "Local", "node-a"), None);
    }

    /// The lb-algorithm and maglev-table-size annotations go to the
    /// external entries only; bad values name the file, line and field.
    #[test]
    fn balancing_annotations_choose_the_external_algorithm() {
        let service = |annotations: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  annotations:\n{annotations}\n\
                 spec:\n  type: NodePort\n  clusterIP: 198.18.0.30\n  ports: [{{port: 443, nodePort: 30443}}]\n"
            )
        };
        let external = |text: &str| -> Result<Vec<(Scope, ExternalBalancing)>> {
            let objects: Vec<_> = read("web.yaml", text.as_bytes())?.into_iter().map(|o| (0, o)).collect();
            let translation = translate(objects, &ThisNode::named("node-a"), &mut EntryBudget::default())?;
            Ok(translation.objects[0]
                .1
                .value
                .rules
                .iter()
                .map(|r| (r.frontend.scope, r.external.clone()))
                .collect())
        };
        let chosen = external(&service(
            "    balancing.elf.io/lb-algorithm: random\n    balancing.elf.io/maglev-table-size: \"1021\"",
        ))
        .unwrap();
        let random = ExternalBalancing {
            algorithm: LbAlgorithm::Random,
            maglev_table_size: Some(1021),
            source_ranges: Vec::new(),
        };
        assert_eq!(
            chosen,
            [
                (Scope::Service, ExternalBalancing::default()),
                (Scope::Service, ExternalBalancing::default()),
                (Scope::External, random)
            ]
        );
        // least-connections: the socket entries choose by live
        // connections, the external one keeps Maglev.
        let text = service("    balancing.elf.io/lb-algorithm: least-connections");
        let objects: Vec<_> =
            read("web.yaml", text.as_bytes()).unwrap().into_iter().map(|o| (0, o)).collect();
        let translation =
            translate(objects, &ThisNode::named("node-a"), &mut EntryBudget::default()).unwrap();
        let rules: Vec<(Scope, bool, LbAlgorithm)> = (translation.objects[0].1.value.rules.iter())
            .map(|r| {
                (
                    r.frontend.scope,
                    r.least_connections && r.frontend.scope != Scope::External,
                    r.external.algorithm,
                )
            })
            .collect();
        assert_eq!(
            rules,
            [
                (Scope::Service, true, LbAlgorithm::Maglev),
                (Scope::Service, true, LbAlgorithm::Maglev),
                (Scope::External, false, LbAlgorithm::Maglev)
            ]
        );
        for (annotations, expected) in [
            (
                "    balancing.elf.io/lb-algorithm: Maglev",
                "web.yaml:7:36: Service shop/web: metadata.annotations.balancing.elf.io/lb-algorithm: `Maglev` is not one of maglev, random, least-connections",
            ),
            (
                "    balancing.elf.io/maglev-table-size: \"1000\"",
                "web.yaml:7:41: Service shop/web: metadata.annotations.balancing.elf.io/maglev-table-size: maglev table size 1000 is not a prime",
            ),
            (
                "    balancing.elf.io/maglev-table-size: lots",
                "web.yaml:7:41: Service shop/web: metadata.annotations.balancing.elf.io/maglev-table-size: `lots` is not a whole number",
            ),
        ] {
            let err = format!("{:#}", external(&service(annotations)).unwrap_err());
            assert!(err.starts_with(expected), "{err}");
        }
    }

    /// loadBalancerSourceRanges restrict the load-balancer IPs' external
    /// entries only (kube-proxy's), with the ranges of their family; a bad
    /// CIDR names the file, line and field.
    #[test]
    fn source_ranges_apply_to_load_balancer_ips_from_outside() {
        let spec = |ranges: &str| {
            format!(
                "spec:\n  type: LoadBalancer\n  clusterIP: 198.18.0.30\n  externalIPs: [198.18.2.30]\n  \
                 loadBalancerSourceRanges: [{ranges}]\n  ports: [{{name: https, port: 443, nodePort: 30443}}]\n\
                 status: {{loadBalancer: {{ingress: [{{ip: 198.18.1.30}}]}}}}"
            )
        };
        let text = web(&spec("203.0.113.7/24, \"2001:db8:77::/48\", 198.51.100.0/24"), V4_SLICE).1;
        let objects: Vec<_> =
            read("web.yaml", text.as_bytes()).unwrap().into_iter().map(|o| (0, o)).collect();
        let translation =
            translate(objects, &ThisNode::named("node-a"), &mut EntryBudget::default()).unwrap();
        let ranges: Vec<String> = (translation.objects[0].1.value.rules.iter())
            .map(|r| {
                let ranges: Vec<String> = r.external.source_ranges.iter().map(ToString::to_string).collect();
                format!("{} [{}]", r.frontend, ranges.join(" "))
            })
            .collect();
        assert_eq!(
            ranges,
            [
                "198.18.0.30:443/tcp []",
                "198.18.2.30:443/tcp []",
                "198.18.1.30:443/tcp []",
                "0.0.0.0:30443/tcp []",
                "198.18.2.30:443/tcp@external []",
                "198.18.1.30:443/tcp@external [203.0.113.0/24 198.51.100.0/24]",
                "0.0.0.0:30443/tcp@external []",
            ]
        );
        let text = web(&spec("203.0.113.0/24, 198.51.100.0/40"), V4_SLICE).1;
        let err = format!("{:#}", read("web.yaml", text.as_bytes()).err().expect("a bad CIDR is refused"));
        assert!(
            err.starts_with("web.yaml:8:46: Service shop/web: spec.loadBalancerSourceRanges[1]: `40` is not a prefix length"),
            "{err}"
        );
    }

    #[test]
    fn an_unset_serving_condition_reads_as_serving() {
        // Absent, null, and said: only the last is not serving.
        let slice = "addressType: IPv4\nendpoints:\n\
                     - {addresses: [192.0.2.2], conditions: {ready: false, terminating: true}}\n\
                     - {addresses: [192.0.2.3], conditions: {ready: false, serving: null, terminating: true}}\n\
                     - {addresses: [192.0.2.4], conditions: {ready: false, serving: false, terminating: true}}\n\
                     - {addresses: [192.0.2.5], conditions: {ready: false}}\n\
                     ports: [{name: https, port: 8443}]";
        let spec = "spec: {clusterIP: 198.18.0.30, ports: [{name: https, port: 443}]}";
        let (found, _) = rules_of(&[web(spec, slice)], "node-a");
        assert_eq!(found, ["198.18.0.30:443/tcp -> 192.0.2.2:8443,192.0.2.3:8443"]);
    }

    #[test]
    fn a_slice_port_without_a_name_is_skipped_and_an_empty_name_is_the_unnamed_port() {
        // kube-proxy skips a nil name; the API server stores a missing one
        // as `""`, which matches the unnamed Service port only.
        let nameless = "addressType: IPv4\nendpoints: [{addresses: [192.0.2.2]}]\nports: [{port: 8443}]";
        let unnamed =
            "addressType: IPv4\nendpoints: [{addresses: [192.0.2.2]}]\nports: [{name: '', port: 8443}]";
        let spec = "spec: {clusterIP: 198.18.0.30, ports: [{port: 443}]}";
        let (found, notes) = rules_of(&[web(spec, nameless)], "node-a");
        assert_eq!(found, ["198.18.0.30:443/tcp -> "]);
        assert!(notes.iter().any(|n| n.contains("1 port(s) without a name skipped")), "{notes:?}");
        let (found, notes) = rules_of(&[web(spec, unnamed)], "node-a");
        assert_eq!(found, ["198.18.0.30:443/tcp -> 192.0.2.2:8443"]);
        assert!(notes.is_empty(), "{notes:?}");
        let named = "spec: {clusterIP: 198.18.0.30, ports: [{name: https, port: 443}]}";
        let (found, _) = rules_of(&[web(named, unnamed)], "node-a");
        assert_eq!(found, ["198.18.0.30:443/tcp -> "]);
    }

    #[test]
    fn slices_without_their_service_are_noted() {
        let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: lost\n  \
                    labels:\n    kubernetes.io/service-name: gone\naddressType: IPv4\nendpoints: []\n";
        let objects: Vec<_> = read("f.yaml", text.as_bytes()).unwrap().into_iter().map(|o| (0, o)).collect();
        let translation =
            translate(objects, &ThisNode::named("node-a"), &mut EntryBudget::default()).unwrap();
        assert!(translation.objects.is_empty());
        assert!(translation.notes[0].contains("default/lost"), "{:?}", translation.notes);
    }
}
