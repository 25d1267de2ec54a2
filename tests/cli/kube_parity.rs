//! Issue 16, defect 7: where balctl's translation of Services and
//! EndpointSlices differed from kube-proxy's (pkg/proxy), each case synced
//! from `kubectl get -o yaml` output and connected to from the client
//! namespace with a real client. An address kube-proxy makes no rule for
//! must reach whatever really listens there, untranslated: a server in the
//! sandbox stands for its owner.

use std::{collections::BTreeMap, net::SocketAddr};

use crate::support::Sandbox;

/// Syncs `yaml` (written to a scratch file) as node-a and returns the
/// sync's output.
fn sync(sandbox: &Sandbox, yaml: &str) -> String {
    let path = sandbox.scratch("cluster.yaml");
    std::fs::write(&path, yaml).unwrap();
    sandbox.balctl_ok(&["sync", "--node-name", "node-a", "-f", path.to_str().unwrap()])
}

/// One TCP connection from the client to each address of `expected`: each
/// is answered by the server named with it (`error: ERRNO` if refused).
fn assert_answers(sandbox: &Sandbox, expected: &[(&str, &str)]) {
    let mut args = vec!["connect-each"];
    for (to, _) in expected {
        args.extend(["--to", to]);
    }
    let report = sandbox.client(&args);
    let answers: BTreeMap<String, String> = report["answers"]
        .as_object()
        .unwrap_or_else(|| panic!("no answers: {report}"))
        .iter()
        .map(|(to, answer)| (to.clone(), answer.as_str().unwrap().to_owned()))
        .collect();
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|&(to, id)| (to.parse::<SocketAddr>().unwrap().to_string(), id.to_owned()))
        .collect();
    assert_eq!(answers, expected);
}

/// An IPv4-only LoadBalancer Service with an IPv6 external IP and an IPv6
/// ingress IP; an IPv6-only Service with an IPv4 external IP; a Service
/// without a cluster IP with an external IP. kube-proxy makes rules for
/// none of those three kinds of address.
const FAMILIES: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: web
    namespace: shop
    resourceVersion: "5101"
    uid: 0b3c4f6e-5a1d-4c8e-9f0a-2d7e1b6c9a01
  spec:
    allocateLoadBalancerNodePorts: true
    clusterIP: 198.18.0.30
    clusterIPs:
    - 198.18.0.30
    externalIPs:
    - 198.18.2.30
    - 2001:db8::9
    externalTrafficPolicy: Cluster
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: https
      nodePort: 30443
      port: 443
      protocol: TCP
      targetPort: 8443
    selector:
      app: web
    sessionAffinity: None
    type: LoadBalancer
  status:
    loadBalancer:
      ingress:
      - ip: 198.18.1.30
        ipMode: VIP
      - ip: 2001:db8::10
        ipMode: VIP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 192.0.2.6
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-b
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: web
    name: web-7xk2p
    namespace: shop
    resourceVersion: "5102"
  ports:
  - name: https
    port: 8443
    protocol: TCP
- apiVersion: v1
  kind: Service
  metadata:
    name: web6
    namespace: shop
    resourceVersion: "5103"
  spec:
    clusterIP: 2001:db8:5e::31
    clusterIPs:
    - 2001:db8:5e::31
    externalIPs:
    - 192.0.2.10
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv6
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: 8080
    sessionAffinity: None
    type: ClusterIP
- addressType: IPv6
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 2001:db8::7
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-b
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: web6
    name: web6-q8d4m
    namespace: shop
    resourceVersion: "5104"
  ports:
  - name: http
    port: 8080
    protocol: TCP
- apiVersion: v1
  kind: Service
  metadata:
    name: pending
    namespace: shop
  spec:
    externalIPs:
    - 192.0.2.10
    ports:
    - name: http
      port: 81
      protocol: TCP
      targetPort: 8443
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 192.0.2.6
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: pending
    name: pending-c2v9t
    namespace: shop
  ports:
  - name: http
    port: 8443
    protocol: TCP
kind: List
metadata:
  resourceVersion: ""
"#;

/// External and load-balancer IPs of a family the Service has no cluster
/// IP of, and every address of a Service without a cluster IP, get no
/// frontend: connections to them reach the server that owns the address,
/// untranslated, instead of being refused by a frontend without backends.
/// The sync says so in notes. The Services' own addresses still work.
pub fn addresses_kube_proxy_ignores_are_left_alone() {
    let sandbox = Sandbox::new();
    sandbox.serve("web", &["192.0.2.6:8443"], &[]);
    sandbox.serve("web6", &["[2001:db8::7]:8080"], &[]);
    sandbox.serve("owner-v6", &["[2001:db8::9]:443", "[2001:db8::10]:443"], &[]);
    sandbox.serve("owner-v4", &["192.0.2.10:80", "192.0.2.10:81"], &[]);
    sandbox.load();
    let output = sync(&sandbox, FAMILIES);
    assert_answers(
        &sandbox,
        &[
            ("198.18.0.30:443", "web"),
            ("198.18.2.30:443", "web"),
            ("198.18.1.30:443", "web"),
            ("[2001:db8:5e::31]:80", "web6"),
            ("[2001:db8::9]:443", "owner-v6"),
            ("[2001:db8::10]:443", "owner-v6"),
            ("192.0.2.10:80", "owner-v4"),
            ("192.0.2.10:81", "owner-v4"),
        ],
    );
    for note in [
        "service shop/web: external IP 2001:db8::9, load-balancer IP 2001:db8::10 read but not applied",
        "service shop/web6: external IP 192.0.2.10 read but not applied",
        "service shop/pending has no cluster IP (kube-proxy skips it until it has one): skipped",
    ] {
        assert!(output.contains(note), "no note `{note}` in {output}");
    }
}

/// kubectl omits a nil condition: this endpoint says `ready: false` and
/// `terminating: true` and nothing about serving.
const UNSET_SERVING: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: cart
    namespace: shop
    resourceVersion: "6201"
  spec:
    clusterIP: 198.18.0.71
    clusterIPs:
    - 198.18.0.71
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: 8080
    sessionAffinity: None
    type: ClusterIP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 192.0.2.10
    conditions:
      ready: false
      terminating: true
    nodeName: node-b
  - addresses:
    - 192.0.2.11
    conditions:
      ready: false
      serving: false
      terminating: true
    nodeName: node-b
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: cart
    name: cart-h5n7r
    namespace: shop
    resourceVersion: "6202"
  ports:
  - name: http
    port: 8080
    protocol: TCP
kind: List
metadata:
  resourceVersion: ""
"#;

/// A terminating endpoint whose `serving` is unset is serving, as
/// kube-proxy reads it, so with no endpoint ready it takes the traffic;
/// the one that says `serving: false` never does.
pub fn an_unset_serving_condition_counts_as_serving() {
    let sandbox = Sandbox::new();
    sandbox.serve("b10", &["192.0.2.10:8080"], &[]);
    sandbox.serve("b11", &["192.0.2.11:8080"], &[]);
    sandbox.load();
    sync(&sandbox, UNSET_SERVING);
    assert_eq!(sandbox.reached("198.18.0.71:80", 20), ["b10"]);
}

/// A dual-stack NodePort Service, as kubectl prints it.
const DUAL_STACK_NODEPORT: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: search
    namespace: shop
    resourceVersion: "7301"
  spec:
    clusterIP: 198.18.0.50
    clusterIPs:
    - 198.18.0.50
    - 2001:db8:5e::50
    externalTrafficPolicy: Cluster
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    - IPv6
    ipFamilyPolicy: RequireDualStack
    ports:
    - name: http
      nodePort: 30050
      port: 80
      protocol: TCP
      targetPort: 8080
    sessionAffinity: None
    type: NodePort
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 192.0.2.2
    conditions:
      ready: true
      serving: true
      terminating: false
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: search
    name: search-4kq8z
    namespace: shop
  ports:
  - name: http
    port: 8080
    protocol: TCP
- addressType: IPv6
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 2001:db8::4
    conditions:
      ready: true
      serving: true
      terminating: false
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: search
    name: search-r2w6j
    namespace: shop
  ports:
  - name: http
    port: 8080
    protocol: TCP
- apiVersion: v1
  kind: Node
  metadata:
    name: node-a
  status:
    addresses:
    - address: 192.0.2.1
      type: InternalIP
    - address: 2001:db8::1
      type: InternalIP
kind: List
metadata:
  resourceVersion: ""
"#;

/// The node port answers on IPv4 loopback and on the node's addresses of
/// both families, but not on [::1]: kube-proxy serves localhost node ports
/// for IPv4 only. A connection to [::1] reaches whatever listens there on
/// the node itself, untranslated.
pub fn node_ports_are_not_served_on_ipv6_loopback() {
    let sandbox = Sandbox::new();
    sandbox.serve("search", &["192.0.2.2:8080"], &[]);
    sandbox.serve("search-v6", &["[2001:db8::4]:8080"], &[]);
    sandbox.serve_in(&sandbox.client_ns, "node-itself", &["[::1]:30050"], &[]);
    sandbox.load();
    sync(&sandbox, DUAL_STACK_NODEPORT);
    assert_answers(
        &sandbox,
        &[
            ("127.0.0.1:30050", "search"),
            ("192.0.2.1:30050", "search"),
            ("[2001:db8::1]:30050", "search-v6"),
            ("[::1]:30050", "node-itself"),
        ],
    );
}

/// Two unnamed-port Services, each with a slice written by hand: one
/// slice port without a `name` key, one with `name: ""` (as the API server
/// stores and kubectl prints a missing name).
const NAMELESS_PORTS: &str = r#"apiVersion: v1
kind: Service
metadata: {name: skipped, namespace: shop}
spec:
  clusterIP: 198.18.0.81
  ports:
  - {port: 80, protocol: TCP, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: skipped-1
  namespace: shop
  labels: {kubernetes.io/service-name: skipped}
addressType: IPv4
endpoints:
- addresses: [192.0.2.8]
ports:
- {port: 8080, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: unnamed, namespace: shop}
spec:
  clusterIP: 198.18.0.82
  ports:
  - {port: 80, protocol: TCP, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: unnamed-1
  namespace: shop
  labels: {kubernetes.io/service-name: unnamed}
addressType: IPv4
endpoints:
- addresses: [192.0.2.8]
ports:
- {name: "", port: 8080, protocol: TCP}
"#;

/// A slice port without a `name` is skipped, as kube-proxy skips a nil
/// name: its Service has no backend and refuses connections, and the sync
/// says why and what to write. `name: ""` is the unnamed port.
pub fn a_slice_port_without_a_name_is_skipped() {
    let sandbox = Sandbox::new();
    sandbox.serve("b8", &["192.0.2.8:8080"], &[]);
    sandbox.load();
    let output = sync(&sandbox, NAMELESS_PORTS);
    let note = "endpointslice shop/skipped-1: 1 port(s) without a name skipped, as kube-proxy skips them";
    assert!(output.contains(note), "no note `{note}` in {output}");
    assert!(!output.contains("unnamed-1"), "{output}");
    assert_answers(&sandbox, &[("198.18.0.81:80", "error: ECONNREFUSED"), ("198.18.0.82:80", "b8")]);
}
