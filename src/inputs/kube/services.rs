//! Kubernetes service semantics, as kube-proxy implements them for traffic
//! that starts on this node (the only traffic socket-level balancing sees):
//!
//! - frontends: every cluster IP, every external IP, every load-balancer
//!   ingress IP, and the node port (written as the unspecified address,
//!   which the datapath matches on every node address and on loopback);
//! - backends: the endpoints of the service's EndpointSlices whose port
//!   has the service port's name and protocol, at that slice's port number
//!   (so a named target port resolves per slice); ready endpoints, or when
//!   none is ready, those that are serving and terminating;
//! - `internalTrafficPolicy: Local` restricts the cluster IPs to endpoints
//!   on this node, with no fallback. External frontends use every usable
//!   endpoint whatever the traffic policies: kube-proxy treats node-local
//!   clients of them as if they came back in from the load balancer;
//! - `sessionAffinity: ClientIP` sets affinity on every frontend.
//!
//! Headless and ExternalName services have no frontend to balance and are
//! skipped with a note, as are SCTP ports.

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
    inputs::location::Located,
    model::{Frontend, FrontendRule, Protocol, Scope},
    state::SyncedObject,
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
/// Only policies can fail here: what they refer to may be missing.
pub fn translate(
    objects: impl IntoIterator<Item = (usize, KubeObject)>,
    this_node: &str,
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
            this_node,
        };
        let objects = policies::translate(&policies, &cluster, &mut translation.notes)?;
        translation.objects.extend(objects);
    }
    translation.objects.extend(nodes.into_iter().map(|(source, node)| (source, node_object(*node))));
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
        if let Some(object) = service_object(*service, &own, this_node, &mut translation.notes) {
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

fn node_object(node: NodeObject) -> Located<SyncedObject> {
    Located {
        value: SyncedObject {
            source: String::new(),
            owner: node_owner(&node.meta.name),
            rules: Vec::new(),
            addresses: node.addresses,
            inputs: node.meta.fingerprint.into_iter().collect(),
        },
        location: node.meta.location,
    }
}

fn service_object(
    service: Service,
    slices: &[EndpointSlice],
    this_node: &str,
    notes: &mut Vec<String>,
) -> Option<Located<SyncedObject>> {
    let name = format!("{}/{}", service.meta.namespace, service.meta.name);
    let notes_before = notes.len();
    if service.service_type == ServiceType::ExternalName {
        notes.push(format!("service {name} is an ExternalName service (DNS answers for it): skipped"));
        return None;
    }
    if service.headless {
        notes.push(format!("service {name} is headless (DNS returns its endpoints): skipped"));
        return None;
    }
    let families: Vec<Family> = if !service.cluster_ips.is_empty() {
        service.cluster_ips.iter().map(|&ip| Family::of(ip)).collect()
    } else if !service.ip_families.is_empty() {
        service.ip_families.clone()
    } else {
        vec![Family::V4]
    };
    let mut rules = Vec::new();
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
        let rule = |address: IpAddr, number: u16, backends: &[SocketAddr]| FrontendRule {
            frontend: Frontend { address, port: number, protocol, scope: Scope::Service },
            backends: backends.to_vec(),
            affinity_seconds: service.affinity_seconds,
            local_only: false,
            requests_per_second: None,
        };
        let families_used: BTreeSet<IpAddr> =
            [Family::V4, Family::V6].into_iter().filter(|f| families.contains(f)).map(unspecified).collect();
        for family in [Family::V4, Family::V6] {
            let candidates = candidates(slices, port, family);
            let all = usable(&candidates, None);
            let in_family = |ips: &[IpAddr]| {
                ips.iter().copied().filter(move |&ip| Family::of(ip) == family).collect::<Vec<_>>()
            };
            let cluster_ips = in_family(&service.cluster_ips);
            if !cluster_ips.is_empty() {
                let backends = if service.internal_local {
                    let local = usable(&candidates, Some(this_node));
                    if local.is_empty() {
                        notes.push(format!(
                            "service {name}: internalTrafficPolicy Local and no endpoint on node {this_node}: \
                             its cluster IP refuses connections here"
                        ));
                    }
                    local
                } else {
                    all.clone()
                };
                let local_only = service.internal_local;
                rules.extend(
                    cluster_ips
                        .iter()
                        .map(|&ip| FrontendRule { local_only, ..rule(ip, port.port, &backends) }),
                );
            }
            rules.extend(in_family(&service.external_ips).into_iter().map(|ip| rule(ip, port.port, &all)));
            if service.service_type == ServiceType::LoadBalancer {
                rules.extend(
                    in_family(&service.load_balancer_ips).into_iter().map(|ip| rule(ip, port.port, &all)),
                );
            }
            if let Some(node_port) = port.node_port
                && matches!(service.service_type, ServiceType::NodePort | ServiceType::LoadBalancer)
                && families_used.contains(&unspecified(family))
            {
                rules.push(rule(unspecified(family), node_port, &all));
            }
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
    let object = SyncedObject {
        source: String::new(),
        owner: service_owner(&service.meta.namespace, &service.meta.name),
        rules,
        addresses: Vec::new(),
        inputs,
    };
    Some(Located { value: object, location: service.meta.location })
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
    use crate::inputs::kube::read;

    /// Frontend -> backends of every rule the example files give, as text.
    fn rules(files: &[&str], this_node: &str) -> (Vec<String>, Vec<String>) {
        let mut objects = Vec::new();
        for (index, file) in files.iter().enumerate() {
            let path = format!("{}/examples/k8s/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            objects.extend(read(file, text.as_bytes()).unwrap().into_iter().map(|o| (index, o)));
        }
        let translation = translate(objects, this_node).unwrap();
        let rules = translation
            .objects
            .iter()
            .flat_map(|(_, o)| o.value.rules.iter())
            .map(|r| {
                let backends: Vec<String> = r.backends.iter().map(ToString::to_string).collect();
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
            ["198.18.0.60:80/tcp -> 192.0.2.8:9100", "0.0.0.0:30060/tcp -> 192.0.2.8:9100,192.0.2.9:9100"]
        );
        let (on_c, notes) = rules(&["local-traffic.yaml"], "node-c");
        assert_eq!(on_c[0], "198.18.0.60:80/tcp -> ");
        assert!(notes[0].contains("no endpoint on node node-c"), "{notes:?}");
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
                "198.18.0.40:80/tcp -> 192.0.2.7:8080",
                "198.18.2.40:80/tcp -> 192.0.2.7:8080",
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

    #[test]
    fn slices_without_their_service_are_noted() {
        let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: lost\n  \
                    labels:\n    kubernetes.io/service-name: gone\naddressType: IPv4\nendpoints: []\n";
        let objects: Vec<_> = read("f.yaml", text.as_bytes()).unwrap().into_iter().map(|o| (0, o)).collect();
        let translation = translate(objects, "node-a").unwrap();
        assert!(translation.objects.is_empty());
        assert!(translation.notes[0].contains("default/lost"), "{:?}", translation.notes);
    }
}
