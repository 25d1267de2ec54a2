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
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::Result;

use super::{
    objects::{
        Endpoint, EndpointSlice, Family, KubeObject, NodeObject, PortProtocol, Service, ServicePort,
        ServiceType, node_owner, service_owner,
    },
    policies::{self, Cluster},
};
use crate::{
    inputs::{budget::EntryBudget, location::Located},
    model::{
        AddressKind, ExternalBalancing, Frontend, FrontendRule, HealthCheck, NodePortAddresses, Protocol,
        Scope, SyncedObject, ThisNode,
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
    // Grouped by sorting both sides and walking them together, rather than
    // in a map keyed by copies of the names: at 100,000 services the parsed
    // objects are most of a sync's memory, and each slice is freed as soon
    // as its service is translated.
    services.sort_by(|(_, a), (_, b)| service_key(a).cmp(&service_key(b)));
    slices.sort_by(|a, b| slice_key(a).cmp(&slice_key(b)));
    if !policies.is_empty() {
        let cluster = Cluster {
            services: &services,
            nodes: nodes.iter().map(|(_, node)| (node.meta.name.as_str(), node.as_ref())).collect(),
            pods: &pods,
            this_node: &this_node.name,
        };
        let objects = policies::translate(&policies, &cluster, &mut translation.notes, budget)?;
        translation.objects.extend(objects);
    }
    let node_ports = &this_node.node_port_addresses;
    translation
        .objects
        .extend(nodes.into_iter().map(|(source, node)| (source, node_object(*node, node_ports))));
    let mut slices = slices.into_iter().peekable();
    for (source, service) in services {
        let key = service_key(&service);
        while let Some(orphan) = slices.next_if(|slice| slice_key(slice) < key) {
            orphans.push(slice_name(&orphan));
        }
        let mut own = Vec::new();
        while let Some(slice) = slices.next_if(|slice| slice_key(slice) == key) {
            own.push(*slice);
        }
        if let Some(object) = service_object(*service, &own, &this_node.name, &mut translation.notes, budget)?
        {
            translation.objects.push((source, object));
        }
    }
    orphans.extend(slices.map(|slice| slice_name(&slice)));
    if !orphans.is_empty() {
        translation.notes.push(format!(
            "{} EndpointSlice(s) belong to no Service in the input and were ignored: {}",
            orphans.len(),
            abbreviate(&orphans)
        ));
    }
    Ok(translation)
}

fn service_key(service: &Service) -> (&str, &str) {
    (&service.meta.namespace, &service.meta.name)
}

/// The key of the service a slice belongs to.
fn slice_key(slice: &EndpointSlice) -> (&str, &str) {
    (&slice.meta.namespace, slice.service.as_deref().unwrap_or_default())
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
        },
        location: node.meta.location,
    }
}

fn service_object(
    service: Service,
    slices: &[EndpointSlice],
    this_node: &str,
    notes: &mut Vec<String>,
    budget: &mut EntryBudget,
) -> Result<Option<Located<SyncedObject>>> {
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
            let all = usable(&candidates, None);
            let local = usable(&candidates, Some(this_node));
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
    // Reusable as it is while its items stay the same, unless it has notes
    // to repeat.
    let fingerprints =
        std::iter::once(service.meta.fingerprint).chain(slices.iter().map(|s| s.meta.fingerprint));
    let inputs = match fingerprints.collect::<Option<Vec<_>>>() {
        Some(inputs) if notes.len() == notes_before => inputs,
        _ => Vec::new(),
    };
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
        owner: service_owner(&service.meta.namespace, &service.meta.name),
        rules,
        addresses: Vec::new(),
        inputs,
        health_check,
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

/// kube-proxy's choice: ready endpoints (on `node` when given); when there
/// are none, those still serving while they terminate. Sorted and unique,
/// so the same input always gives the same slots.
fn usable(candidates: &[Candidate<'_>], node: Option<&str>) -> Vec<SocketAddr> {
    let eligible = || {
        candidates.iter().filter(|c| node.is_none_or(|node| c.endpoint.node_name.as_deref() == Some(node)))
    };
    let mut chosen: BTreeSet<SocketAddr> =
        eligible().filter(|c| c.endpoint.ready).map(|c| c.backend).collect();
    if chosen.is_empty() {
        chosen =
            eligible().filter(|c| c.endpoint.serving && c.endpoint.terminating).map(|c| c.backend).collect();
    }
    chosen.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{inputs::kube::read, model::LbAlgorithm};

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
        for (annotations, expected) in [
            (
                "    balancing.elf.io/lb-algorithm: Maglev",
                "web.yaml:7:36: Service shop/web: metadata.annotations.balancing.elf.io/lb-algorithm: `Maglev` is not one of maglev, random",
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
