//! What LocalRedirectPolicy and BalancingPolicy objects become: rules in
//! the Redirect or Balancing layer on the frontends they match, which the
//! datapath consults before the Service's own entry.
//!
//! - Frontend: a serviceMatcher's Service's cluster IPs, at the Service
//!   ports its `toPorts` select (all of them without `toPorts`), or an
//!   addressMatcher's address at its ports.
//! - Backends, per frontend port at the backend port paired with it by name
//!   (or the only one with the only one): the explicit addresses, or the
//!   selected Pods (same namespace, Running, not being deleted) — a
//!   LocalRedirectPolicy's on this node only, at their Pod IPs; a
//!   BalancingPolicy's anywhere, at their Pod IPs (`podEndpoint`), at their
//!   Node's InternalIP and the container's hostPort (`hostPort`), or at their
//!   Node's proxy address (`nodeProxy`).
//! - A LocalRedirectPolicy without a local backend keeps its frontends
//!   with no backend: the datapath then gives way to the Service.
//!
//! Policy objects record no input fingerprints, so every sync translates
//! them again; the Services and Nodes they read are parsed on every sync
//! too (see `reads`).

use std::{
    cell::RefCell,
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use anyhow::Result;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::{
    field::FieldRef,
    objects::{
        Family, KubeObject, NodeObject, Pod, PortProtocol, Service, ServiceType, matches, node_owner,
        service_owner,
    },
    policy_objects::{BackendTarget, Matcher, PolicyObject, RedirectMode, ToPort},
};
use crate::{
    inputs::{budget::EntryBudget, location::Located},
    model::{
        AddressKind, Frontend, FrontendRule, PolicyKind, Protocol, RuleHealth, SyncedObject,
        weights_of_family,
    },
};

/// The objects of the input that policies refer to.
pub struct Cluster<'a> {
    /// Sorted by namespace and name.
    services: Vec<&'a Service>,
    nodes: HashMap<&'a str, &'a NodeObject>,
    pods: Vec<&'a Pod>,
    this_node: &'a str,
    /// The owners of the Services and Nodes looked up, found or not.
    read: RefCell<BTreeSet<String>>,
}

impl<'a> Cluster<'a> {
    pub fn new(
        services: impl Iterator<Item = &'a Service>,
        nodes: impl Iterator<Item = &'a NodeObject>,
        pods: impl Iterator<Item = &'a Pod>,
        this_node: &'a str,
    ) -> Self {
        let mut services: Vec<&Service> = services.collect();
        services.sort_by(|a, b| service_key(a).cmp(&service_key(b)));
        let nodes = nodes.map(|node| (node.meta.name.as_str(), node)).collect();
        Self { services, nodes, pods: pods.collect(), this_node, read: RefCell::default() }
    }

    fn service(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        self.read.borrow_mut().insert(service_owner(namespace, name));
        let key = (namespace, name);
        let index = self.services.binary_search_by(|s| service_key(s).cmp(&key)).ok()?;
        Some(self.services[index])
    }

    fn node(&self, name: &str) -> Option<&'a NodeObject> {
        self.read.borrow_mut().insert(node_owner(name));
        self.nodes.get(name).copied()
    }
}

fn service_key(service: &Service) -> (&str, &str) {
    (&service.meta.namespace, &service.meta.name)
}

/// The synced objects of `policies`, with notes on what they could not use;
/// their rules are counted in `budget` before they are made.
pub fn translate(
    policies: &[(usize, Box<PolicyObject>)],
    cluster: &Cluster<'_>,
    notes: &mut Vec<String>,
    budget: &mut EntryBudget,
) -> Result<Vec<(usize, Located<SyncedObject>)>> {
    let mut objects = Vec::with_capacity(policies.len());
    for (source, policy) in policies {
        let mut policy_notes = BTreeSet::new();
        let mut rules = rules(policy, cluster, &mut policy_notes, budget)?;
        // Checked on every node, so an input is valid or not wherever it is synced.
        if !applies_here(policy, cluster, &mut policy_notes) {
            rules.clear();
        }
        let owner = policy.owner();
        notes.extend(policy_notes.into_iter().map(|note| format!("{owner}: {note}")));
        let object = SyncedObject {
            source: String::new(),
            owner,
            rules,
            addresses: Vec::new(),
            inputs: Vec::new(),
            health_check: None,
            dependencies: Vec::new(),
            held_back: Vec::new(),
        };
        objects.push((*source, Located { value: object, location: policy.meta.location.clone() }));
    }
    Ok(objects)
}

/// The owners of the Services and Nodes that the policies among `objects`
/// read, found by translating them with what `objects` hold (the result
/// thrown away): a sync parses those objects even when their items did
/// not change, since a kept object has no parsed form to read. Looking an
/// object up is what reads it, so this follows the translation as it is.
pub fn reads<'a>(
    objects: impl Iterator<Item = &'a KubeObject> + Clone,
    this_node: &'a str,
) -> BTreeSet<String> {
    let policies: Vec<&PolicyObject> = (objects.clone())
        .filter_map(|object| match object {
            KubeObject::Policy(policy) => Some(policy.as_ref()),
            _ => None,
        })
        .collect();
    if policies.is_empty() {
        return BTreeSet::new();
    }
    let cluster = Cluster::new(
        objects.clone().filter_map(|object| match object {
            // A policy's serviceMatcher names a Service, not a ServiceImport.
            KubeObject::Service(service) if !service.imported => Some(service.as_ref()),
            _ => None,
        }),
        objects.clone().filter_map(|object| match object {
            KubeObject::Node(node) => Some(node.as_ref()),
            _ => None,
        }),
        objects.clone().filter_map(|object| match object {
            KubeObject::Pod(pod) => Some(pod.as_ref()),
            _ => None,
        }),
        this_node,
    );
    for policy in policies {
        // What they make, and whether they can, is the real translation's to say.
        let (mut notes, mut budget) = (BTreeSet::new(), EntryBudget::default());
        let _ = rules(policy, &cluster, &mut notes, &mut budget);
        applies_here(policy, &cluster, &mut notes);
    }
    cluster.read.into_inner()
}

/// Whether this node is one the policy's nodeLabelSelector selects.
fn applies_here(policy: &PolicyObject, cluster: &Cluster<'_>, notes: &mut BTreeSet<String>) -> bool {
    let Some((selector, _)) = &policy.node_selector else { return true };
    match cluster.node(cluster.this_node) {
        Some(node) if matches(selector, &node.labels) => true,
        Some(_) => {
            notes.insert(format!(
                "nodeLabelSelector does not select node {}: no rule here",
                cluster.this_node
            ));
            false
        }
        None => {
            notes.insert(format!(
                "nodeLabelSelector: Node {} is not in the input, so it cannot be selected: no rule here",
                cluster.this_node
            ));
            false
        }
    }
}

/// A frontend port, resolved.
struct FrontendPort<'p> {
    name: &'p str,
    port: u16,
    protocol: Protocol,
    at: &'p FieldRef,
}

fn rules(
    policy: &PolicyObject,
    cluster: &Cluster<'_>,
    notes: &mut BTreeSet<String>,
    budget: &mut EntryBudget,
) -> Result<Vec<FrontendRule>> {
    let (addresses, ports) = frontend(policy, cluster)?;
    let pairs = pair(&ports, &policy.backend.to_ports)?;
    let mut rules: Vec<FrontendRule> = Vec::new();
    let mut frontends = HashSet::default();
    for (frontend_port, backend_port) in pairs {
        for &address in &addresses {
            let frontend = Frontend {
                address,
                port: frontend_port.port,
                protocol: frontend_port.protocol,
                scope: policy.kind.scope(),
            };
            if !frontends.insert(frontend) {
                return Err(frontend_port.at.error(format!("frontend {frontend} is listed twice")));
            }
            let backends =
                backends(policy, cluster, Family::of(address), backend_port, frontend.protocol, notes);
            // Counted one frontend at a time: its backends (as many as
            // the input lists) are all that is made before.
            budget.reserve(
                format_args!("{}: {} frontend {frontend}", policy.meta.location, policy.owner()),
                &[(1, "frontend")],
                (backends.len(), "backends"),
            )?;
            if backends.is_empty() {
                notes.insert(match policy.kind {
                    PolicyKind::LocalRedirect => {
                        format!("{frontend}: no local backend, its traffic goes to the Service")
                    }
                    PolicyKind::Balancing => format!("{frontend}: no backend, it refuses connections"),
                });
            }
            rules.push(FrontendRule {
                frontend,
                backends,
                local_backends: Vec::new(),
                affinity_seconds: None,
                local_only: false,
                requests_per_second: policy.requests_per_second,
                address_kind: AddressKind::default(),
                external: crate::model::ExternalBalancing::default(),
                health: policy
                    .health_check
                    .as_ref()
                    .map(|health| {
                        health.check.fits(frontend.protocol).map_err(|e| health.at.error(e.message))?;
                        Ok::<_, anyhow::Error>(Box::new(RuleHealth::new(
                            health.check.clone(),
                            health.when_all_unhealthy,
                        )))
                    })
                    .transpose()?,
                weights: weights_of(policy, Family::of(address)),
                least_connections: policy.least_connections,
            });
        }
    }
    Ok(rules)
}

/// The frontend addresses and ports a policy matches.
fn frontend<'p>(
    policy: &'p PolicyObject,
    cluster: &'p Cluster<'_>,
) -> Result<(Vec<IpAddr>, Vec<FrontendPort<'p>>)> {
    let to_ports = &policy.frontend.to_ports;
    let (namespace, name, at) = match &policy.frontend.matcher {
        Matcher::Address(ip) => {
            let ports = to_ports
                .iter()
                .map(|p| FrontendPort {
                    name: &p.name,
                    // The parser requires it of an addressMatcher.
                    port: p.port.unwrap_or_default(),
                    protocol: p.protocol.unwrap_or(Protocol::Tcp),
                    at: &p.at,
                })
                .collect();
            return Ok((vec![*ip], ports));
        }
        Matcher::Service { namespace, name, at } => (namespace, name, at),
    };
    let service = cluster.service(namespace, name).ok_or_else(|| {
        at.error(format!(
            "Service {namespace}/{name} is not in the input (give it in the same sync as the policy)"
        ))
    })?;
    if service.cluster_ips.is_empty() || service.service_type == ServiceType::ExternalName {
        return Err(at.error(format!("Service {namespace}/{name} has no cluster IP to redirect")));
    }
    let service_ports =
        service.ports.iter().filter_map(|p| Some((p.name.as_str(), p.port, protocol_of(p.protocol)?)));
    let mut ports = Vec::new();
    if to_ports.is_empty() {
        ports.extend(service_ports.clone().map(|(name, port, protocol)| FrontendPort {
            name,
            port,
            protocol,
            at,
        }));
    }
    for wanted in to_ports {
        let selected = service_ports.clone().filter(|&(name, port, protocol)| {
            (wanted.name.is_empty() || wanted.name == name)
                && wanted.port.is_none_or(|p| p == port)
                && wanted.protocol.is_none_or(|p| p == protocol)
        });
        let before = ports.len();
        ports.extend(selected.map(|(name, port, protocol)| FrontendPort {
            name,
            port,
            protocol,
            at: &wanted.at,
        }));
        if ports.len() == before {
            return Err(wanted.at.error(format!(
                "Service {namespace}/{name} has no TCP or UDP {} (its ports: {})",
                wanted.label(),
                service.ports.iter().map(|p| format!("{} {}", p.name, p.port)).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok((service.cluster_ips.clone(), ports))
}

/// Frontend ports with the backend port numbers paired to them by name;
/// one port on each side pairs whatever its name. Every port on either
/// side needs its partner, of the same protocol.
fn pair<'f, 'p>(
    frontend: &'f [FrontendPort<'p>],
    backend: &[ToPort],
) -> Result<Vec<(&'f FrontendPort<'p>, u16)>> {
    let names = |names: &mut dyn Iterator<Item = &str>| {
        let names: Vec<String> = names.filter(|n| !n.is_empty()).map(|n| format!("`{n}`")).collect();
        if names.is_empty() { "none".to_owned() } else { names.join(", ") }
    };
    let mut pairs = Vec::with_capacity(frontend.len());
    for front in frontend {
        let partner = match (frontend, backend) {
            ([_], [only]) if front.name.is_empty() || only.name.is_empty() || only.name == front.name => only,
            _ => {
                backend.iter().find(|b| !front.name.is_empty() && b.name == front.name).ok_or_else(|| {
                    front.at.error(format!(
                        "frontend {} has no partner in the backend's toPorts (ports pair by name; the \
                     backend's are {})",
                        if front.name.is_empty() {
                            format!("port {}", front.port)
                        } else {
                            format!("port `{}`", front.name)
                        },
                        names(&mut backend.iter().map(|b| b.name.as_str()))
                    ))
                })?
            }
        };
        if let Some(protocol) = partner.protocol
            && protocol != front.protocol
        {
            return Err(partner.at.error(format!(
                "protocol {protocol} differs from its frontend port's ({})",
                front.protocol
            )));
        }
        // The parser requires a backend port's number.
        pairs.push((front, partner.port.unwrap_or_default()));
    }
    if let ([_], [_]) = (frontend, backend) {
        return Ok(pairs);
    }
    for back in backend {
        if back.name.is_empty() || !frontend.iter().any(|f| f.name == back.name) {
            return Err(back.at.error(format!(
                "backend {} has no partner among the frontend's ports (ports pair by name; the frontend's \
                 are {})",
                back.label(),
                names(&mut frontend.iter().map(|f| f.name))
            )));
        }
    }
    Ok(pairs)
}

/// The weights of a policy's addresses of `family`, in their order (as
/// `backends` lists them); empty without weights.
fn weights_of(policy: &PolicyObject, family: Family) -> Vec<u16> {
    match &policy.backend.target {
        BackendTarget::Addresses(addresses) => {
            weights_of_family(addresses.iter().copied(), &policy.backend.weights, family == Family::V4)
        }
        BackendTarget::Pods { .. } => Vec::new(),
    }
}

/// The backends of one frontend: of its family, at `port` (the paired
/// backend port), sorted and unique.
fn backends(
    policy: &PolicyObject,
    cluster: &Cluster<'_>,
    family: Family,
    port: u16,
    protocol: Protocol,
    notes: &mut BTreeSet<String>,
) -> Vec<SocketAddr> {
    let in_family = |ip: &&IpAddr| Family::of(**ip) == family;
    let mut found = BTreeSet::new();
    let (selector, mode) = match &policy.backend.target {
        BackendTarget::Addresses(addresses) => {
            return addresses.iter().filter(in_family).map(|&ip| SocketAddr::new(ip, port)).collect();
        }
        BackendTarget::Pods { selector, mode } => (selector, *mode),
    };
    let local_only = policy.kind == PolicyKind::LocalRedirect;
    let selected = cluster.pods.iter().filter(|pod| {
        pod.active
            && pod.meta.namespace == policy.meta.namespace
            && matches(selector, &pod.labels)
            && (!local_only || pod.node_name.as_deref() == Some(cluster.this_node))
    });
    for pod in selected {
        let pod_name = format!("Pod {}/{}", pod.meta.namespace, pod.meta.name);
        if mode == RedirectMode::PodEndpoint {
            found.extend(pod.ips.iter().filter(in_family).map(|&ip| SocketAddr::new(ip, port)));
            continue;
        }
        let Some(node) = pod.node_name.as_deref().and_then(|name| cluster.node(name)) else {
            notes.insert(format!("{pod_name} is on no Node of the input: skipped"));
            continue;
        };
        let node_ip = || node.internal_ips.iter().find(in_family).copied();
        let backend = if mode == RedirectMode::HostPort {
            let host_port = pod
                .ports
                .iter()
                .find(|p| p.container_port == port && protocol_of(p.protocol) == Some(protocol))
                .and_then(|p| p.host_port);
            let Some(host_port) = host_port else {
                notes.insert(format!(
                    "{pod_name} has no hostPort for container port {port}/{protocol}: skipped"
                ));
                continue;
            };
            node_ip().map(|ip| SocketAddr::new(ip, host_port))
        } else {
            let proxy = match family {
                Family::V4 => node.proxy_ipv4.map(IpAddr::V4).or_else(node_ip),
                Family::V6 => node_ip(),
            };
            proxy.map(|ip| SocketAddr::new(ip, port))
        };
        match backend {
            Some(backend) => {
                found.insert(backend);
            }
            None => {
                notes.insert(format!(
                    "Node {} has no InternalIP of the frontend's family: {pod_name} skipped",
                    node.meta.name
                ));
            }
        }
    }
    found.into_iter().collect()
}

const fn protocol_of(protocol: PortProtocol) -> Option<Protocol> {
    match protocol {
        PortProtocol::Tcp => Some(Protocol::Tcp),
        PortProtocol::Udp => Some(Protocol::Udp),
        PortProtocol::Sctp => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::kube::{read, translate};

    fn example(file: &str) -> String {
        std::fs::read_to_string(format!("{}/examples/k8s/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// The policies' rules (`frontend -> backends`) and the notes, from
    /// YAML texts synced together on `this_node`.
    fn translated(texts: &[&str], this_node: &str) -> Result<(Vec<String>, Vec<String>)> {
        let mut objects = Vec::new();
        for (index, text) in texts.iter().enumerate() {
            objects.extend(read(&format!("f{index}.yaml"), text.as_bytes())?.into_iter().map(|o| (index, o)));
        }
        let translation =
            translate(objects, &crate::model::ThisNode::named(this_node), &mut EntryBudget::default())?;
        let rules = translation
            .objects
            .iter()
            .filter(|(_, o)| o.value.owner.contains("policy/"))
            .flat_map(|(_, o)| o.value.rules.iter().map(move |r| (&o.value.owner, r)))
            .map(|(owner, r)| {
                let backends: Vec<String> = r.backends.iter().map(ToString::to_string).collect();
                let limit = r.requests_per_second.map(|n| format!(" ({n}/s)")).unwrap_or_default();
                format!("{owner}: {} -> {}{limit}", r.frontend, backends.join(","))
            })
            .collect();
        Ok((rules, translation.notes))
    }

    fn error(texts: &[&str]) -> String {
        match translated(texts, "node-a") {
            Ok(found) => panic!("accepted: {found:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn node_local_dns_redirects_kube_dns_to_this_nodes_pod() {
        let (kube_dns, policy) = (example("kube-dns.yaml"), example("node-local-dns.yaml"));
        let (rules, _) = translated(&[&kube_dns, &policy], "node-a").unwrap();
        assert_eq!(
            rules,
            [
                "localredirectpolicy/kube-system/nodelocaldns: 198.18.0.10:53/udp@redirect -> 192.0.2.9:53",
                "localredirectpolicy/kube-system/nodelocaldns: 198.18.0.10:53/tcp@redirect -> 192.0.2.9:53",
            ]
        );
        let (rules, _) = translated(&[&kube_dns, &policy], "node-b").unwrap();
        assert!(rules.iter().all(|r| r.ends_with("-> 192.0.2.10:53")), "{rules:?}");
        let (rules, notes) = translated(&[&kube_dns, &policy], "node-c").unwrap();
        assert!(rules.iter().all(|r| r.ends_with("-> ")), "{rules:?}");
        assert!(notes.iter().any(|n| n.contains("no local backend")), "{notes:?}");
    }

    #[test]
    fn balancing_policies_reach_addresses_and_host_ports() {
        let (rules, notes) =
            translated(&[&example("balancing-address.yaml"), &example("balancing-hostport.yaml")], "node-a")
                .unwrap();
        assert_eq!(
            rules,
            [
                "balancingpolicy/shop/web-vip: 198.18.3.10:80/tcp@balancing -> 192.0.2.4:8080,192.0.2.5:8080",
                "balancingpolicy/edge/api-hostport: 198.18.3.20:80/tcp@balancing -> 192.0.2.7:31080",
            ]
        );
        assert!(notes.is_empty(), "{notes:?}");
    }

    const NODES: &str = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: node-a
    labels: {dns: local}
    annotations: {balancing.elf.io/nodeProxyIpv4: 192.0.2.50}
  status: {addresses: [{type: InternalIP, address: 192.0.2.1}, {type: InternalIP, address: '2001:db8::1'}]}
- apiVersion: v1
  kind: Node
  metadata: {name: node-b}
  status: {addresses: [{type: ExternalIP, address: 198.51.100.2}, {type: InternalIP, address: 192.0.2.2}]}
";

    fn pod(name: &str, node: &str, ip: &str, more: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ns, labels: {{app: web}}}}\n\
             spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    ports: [{{containerPort: 8080, \
             hostPort: 30080}}]\nstatus: {{phase: Running, podIP: {ip}}}\n{more}"
        )
    }

    fn balancing(frontend: &str, backend: &str, config: &str) -> String {
        format!(
            "apiVersion: balancing.elf.io/v1beta1\nkind: BalancingPolicy\nmetadata: {{name: p, namespace: \
             ns}}\nspec:\n  frontend:\n{frontend}\n  backend:\n{backend}\n{config}"
        )
    }

    const VIP: &str = "    addressMatcher: {ip: 198.18.0.1, toPorts: [{port: 80}]}";

    fn pods_backend(mode: &str) -> String {
        format!(
            "    serviceEndpoint: {{endpointSelector: {{matchLabels: {{app: web}}}}, redirectMode: {mode}, \
             toPorts: [{{port: 8080}}]}}"
        )
    }

    #[test]
    fn redirect_modes_choose_pod_node_or_proxy_addresses() {
        let pods = [
            pod("a", "node-a", "192.0.2.20", ""),
            pod("b", "node-b", "192.0.2.21", ""),
            pod("c", "node-b", "192.0.2.22", ""),
            pod("gone", "node-a", "192.0.2.23", "")
                .replace("metadata: {", "metadata: {deletionTimestamp: x, "),
            pod("pending", "node-a", "192.0.2.24", "").replace("Running", "Pending"),
            pod("other", "node-a", "192.0.2.25", "").replace("app: web", "app: db"),
        ];
        let pods = pods.join("---\n");
        let backends = |mode: &str| {
            let (rules, _) =
                translated(&[NODES, &pods, &balancing(VIP, &pods_backend(mode), "")], "x").unwrap();
            rules[0].split(" -> ").nth(1).unwrap().to_owned()
        };
        assert_eq!(backends("podEndpoint"), "192.0.2.20:8080,192.0.2.21:8080,192.0.2.22:8080");
        assert_eq!(backends("hostPort"), "192.0.2.1:30080,192.0.2.2:30080");
        assert_eq!(backends("nodeProxy"), "192.0.2.2:8080,192.0.2.50:8080");
    }

    #[test]
    fn a_node_label_selector_and_a_rate_limit_apply() {
        let policy = example("node-local-dns.yaml").replace(
            "  # Optional:",
            "  config:\n    requestsPerSecond: 5\n    nodeLabelSelector:\n      matchLabels: {dns: local}",
        );
        let kube_dns = example("kube-dns.yaml");
        let (rules, _) = translated(&[NODES, &kube_dns, &policy], "node-a").unwrap();
        assert!(rules.len() == 2 && rules.iter().all(|r| r.ends_with("192.0.2.9:53 (5/s)")), "{rules:?}");
        let (rules, notes) = translated(&[NODES, &kube_dns, &policy], "node-b").unwrap();
        assert!(rules.is_empty() && notes[0].contains("does not select node node-b"), "{notes:?}");
        let (rules, notes) = translated(&[&kube_dns, &policy], "node-a").unwrap();
        assert!(rules.is_empty() && notes[0].contains("Node node-a is not in the input"), "{notes:?}");
    }

    #[test]
    fn errors_name_the_policy_and_the_field() {
        let kube_dns = example("kube-dns.yaml");
        let policy = example("node-local-dns.yaml");
        let address_backend = "    addressEndpoint: {addresses: [192.0.2.4], toPorts: [{port: 8080}]}";
        let cases: Vec<(Vec<String>, &str)> = vec![
            (
                vec![policy.clone()],
                "f0.yaml:19:7: LocalRedirectPolicy kube-system/nodelocaldns: spec.frontend.serviceMatcher: \
                 Service kube-system/kube-dns is not in the input",
            ),
            (
                vec![
                    kube_dns.clone(),
                    policy.replace("    - name: dns-tcp\n      port", "    - name: tcp\n      port"),
                ],
                "f1.yaml:24:9: LocalRedirectPolicy kube-system/nodelocaldns: spec.frontend.serviceMatcher.\
                 toPorts[1]: frontend port `dns-tcp` has no partner in the backend's toPorts (ports pair by \
                 name; the backend's are `dns`, `tcp`)",
            ),
            (
                vec![kube_dns.clone(), policy.replace("      - name: dns-tcp\n", "")],
                "f1.yaml:34:7: LocalRedirectPolicy kube-system/nodelocaldns: spec.backend.toPorts[1]: backend \
                 port `dns-tcp` (53) has no partner among the frontend's ports",
            ),
            (
                vec![
                    kube_dns.clone(),
                    policy.replacen("      - name: dns\n", "      - name: dns\n        port: 54\n", 1),
                ],
                "spec.frontend.serviceMatcher.toPorts[0]: Service kube-system/kube-dns has no TCP or UDP port \
                 `dns` (54) (its ports: dns 53, dns-tcp 53)",
            ),
            (
                vec![kube_dns.clone(), policy.replace("      protocol: UDP", "      protocol: TCP")],
                "spec.backend.toPorts[0]: protocol tcp differs from its frontend port's (udp)",
            ),
            (
                vec![balancing(
                    &format!("{VIP}\n    serviceMatcher: {{serviceName: x}}"),
                    address_backend,
                    "",
                )],
                "spec.frontend: needs exactly one of `serviceMatcher`, `addressMatcher`",
            ),
            (
                vec![balancing(VIP, &pods_backend("nodePort"), "")],
                "spec.backend.serviceEndpoint.redirectMode: `nodePort` is not one of podEndpoint, hostPort, nodeProxy",
            ),
            (
                vec![balancing(VIP, &pods_backend("hostPort").replace("app: web", ""), "")],
                "spec.backend.serviceEndpoint.endpointSelector.matchLabels: needs at least one label",
            ),
            (
                vec![balancing(VIP, address_backend, "  config: {requestsPerSecond: 5}")],
                "spec.config.requestsPerSecond: only a LocalRedirectPolicy has a rate limit",
            ),
            (
                vec![balancing(&VIP.replace("80", "70000"), address_backend, "")],
                "spec.frontend.addressMatcher.toPorts[0].port: port 70000 is out of range",
            ),
            (
                vec![balancing(VIP, &address_backend.replace("{port: 8080}", "{name: x}"), "")],
                "spec.backend.addressEndpoint.toPorts[0]: missing field `port`",
            ),
            (
                vec![balancing(&VIP.replace("{port: 80}", "{port: 80}, {port: 80}"), address_backend, "")],
                "spec.frontend.addressMatcher.toPorts[0]: frontend port 80 has no partner",
            ),
        ];
        for (texts, expected) in cases {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let message = error(&texts);
            assert!(message.contains(expected), "{expected}\n=> {message}");
        }
    }
}
