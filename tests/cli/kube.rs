//! Issue 3, must show 1: each Kubernetes example in examples/k8s/ synced on
//! the real kernel, then connected to from the client namespace through
//! every kind of frontend it has, reaching only the right backends.
//!
//! The client namespace plays node-a (192.0.2.1, 2001:db8::1, see
//! examples/k8s/nodes.yaml); backends live in the server namespace.

use std::{collections::BTreeSet, thread, time::Duration};

use serde_json::Value;

use crate::support::Sandbox;

fn example(name: &str) -> String {
    format!("{}/examples/k8s/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Syncs example files as node-a and returns the sync's output.
fn sync(sandbox: &Sandbox, files: &[&str]) -> String {
    sync_as(sandbox, "node-a", files)
}

fn sync_as(sandbox: &Sandbox, node: &str, files: &[&str]) -> String {
    let paths: Vec<String> =
        files.iter().map(|f| if f.starts_with('/') { (*f).to_owned() } else { example(f) }).collect();
    let mut args = vec!["sync", "--node-name", node];
    for path in &paths {
        args.extend(["-f", path.as_str()]);
    }
    sandbox.balctl_ok(&args)
}

fn refused(sandbox: &Sandbox, to: &str) -> Value {
    let report = sandbox.client(&["connect", "--to", to]);
    assert_eq!(report["errors"]["ECONNREFUSED"], 1, "connect to {to}: {report}");
    report
}

/// kube-dns: `dig @<cluster IP>` over UDP and over TCP gets answers from
/// both CoreDNS endpoints (two dnsmasq servers answering differently), never
/// from an unexpected source.
pub fn kube_dns_answers_over_udp_and_tcp() {
    let sandbox = Sandbox::new();
    sandbox.load();
    for (host, answer) in [("192.0.2.2", "192.0.2.77"), ("192.0.2.3", "192.0.2.78")] {
        sandbox.spawn_dnsmasq(host, &format!("/cluster.local/{answer}"));
    }
    sync(&sandbox, &["kube-dns.yaml"]);
    for transport in ["+notcp", "+tcp"] {
        let mut answers = BTreeSet::new();
        for attempt in 0..80 {
            let output = sandbox.client_program(&[
                "dig",
                "@198.18.0.10",
                "kubernetes.default.svc.cluster.local",
                "A",
                "+short",
                transport,
                "+tries=1",
                "+time=2",
            ]);
            let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !stdout.contains("unexpected source") && !stderr.contains("unexpected"),
                "{stdout}{stderr}"
            );
            if output.status.success() && stdout.starts_with("192.0.2.7") {
                answers.insert(stdout);
            } else if attempt > 40 {
                panic!("dig {transport} failed: {stdout}{stderr}");
            } else {
                // dnsmasq needs a moment to bind.
                thread::sleep(Duration::from_millis(100));
            }
            if answers.len() == 2 {
                break;
            }
        }
        assert_eq!(answers.into_iter().collect::<Vec<_>>(), ["192.0.2.77", "192.0.2.78"], "dig {transport}");
    }
}

/// NodePort: the cluster IP, and the node port on this node's address, on
/// another Node's address and on loopback, all reach both endpoints. The
/// service is IPv4-only, so the node's IPv6 address is no frontend.
pub fn nodeport_answers_on_node_addresses_and_loopback() {
    let sandbox = Sandbox::new();
    sandbox.serve("b4", &["192.0.2.4:8080"], &[]);
    sandbox.serve("b5", &["192.0.2.5:8080"], &[]);
    sandbox.load();
    let nodes = sandbox.scratch("nodes.yaml");
    std::fs::copy(example("nodes.yaml"), &nodes).unwrap();
    let nodes = nodes.display().to_string();
    let output = sync(&sandbox, &["nodeport.yaml", &nodes]);
    assert!(output.contains("node addresses +3"), "{output}");
    for to in ["198.18.0.20:80", "192.0.2.1:30080", "192.0.2.12:30080", "127.0.0.1:30080"] {
        assert_eq!(sandbox.reached(to, 40), ["b4", "b5"], "via {to}");
    }
    // Untranslated, it lands on the client namespace itself, where nothing listens.
    refused(&sandbox, "[2001:db8::1]:30080");
    // Once the Nodes are gone from their file, node addresses are no
    // frontends any more; loopback still is.
    std::fs::write(&nodes, "apiVersion: v1\nitems: []\nkind: List\n").unwrap();
    let output = sync(&sandbox, &["nodeport.yaml", &nodes]);
    assert!(output.contains("node addresses +0 -3"), "{output}");
    refused(&sandbox, "192.0.2.1:30080");
    assert_eq!(sandbox.reached("127.0.0.1:30080", 20), ["b4", "b5"]);
}

/// Issue 19, `--nodeport-addresses` (as kube-proxy's): node-a also has
/// the ExternalIP 192.0.2.200 (on the client namespace's loopback, so
/// that a connect left untranslated is refused there). With CIDRs, only
/// the node addresses inside them serve the node port; with `primary`,
/// each Node's first InternalIP of each family; by default every one.
/// IPv4 loopback as kube-proxy's iptables mode: only with the flag unset
/// or with CIDRs that hold 127.0.0.0, never with `primary`.
pub fn nodeport_addresses_choose_the_node_addresses_that_serve_node_ports() {
    let sandbox = Sandbox::new();
    sandbox.serve("b4", &["192.0.2.4:8080"], &[]);
    sandbox.serve("b5", &["192.0.2.5:8080"], &[]);
    sandbox.load();
    crate::support::run("ip", &["-n", &sandbox.client_ns, "addr", "add", "192.0.2.200/32", "dev", "lo"]);
    let nodes = sandbox.scratch("nodes.yaml");
    let with_external = std::fs::read_to_string(example("nodes.yaml")).unwrap().replacen(
        "      type: InternalIP
",
        "      type: InternalIP
    - address: 192.0.2.200
      type: ExternalIP
",
        1,
    );
    std::fs::write(&nodes, with_external).unwrap();
    let nodes = nodes.display().to_string();
    let both = ["b4", "b5"];
    let sync = |extra: &[&str]| {
        let mut args = vec!["sync", "--node-name", "node-a", "-f", &nodes];
        let service = example("nodeport.yaml");
        args.extend(["-f", &service]);
        args.extend(extra);
        sandbox.balctl_ok(&args)
    };

    // Loopback serves node ports exactly when kube-proxy's iptables mode
    // serves localhost ones: not with CIDRs that leave 127.0.0.0 out.
    let loopback = |served: bool| {
        let nodes = sandbox.balctl_json(&["dump", "nodes"]);
        crate::dump::validate(&nodes, "dump-nodes.json");
        assert_eq!(nodes["loopback"], served, "{nodes}");
        if served {
            assert_eq!(sandbox.reached("127.0.0.1:30080", 20), both);
        } else {
            refused(&sandbox, "127.0.0.1:30080");
        }
    };
    // No IPv6 address is in 2001:db8:ffff::/64 (a family without a CIDR
    // would keep all its addresses).
    let output = sync(&["--nodeport-addresses", "192.0.2.0/25,2001:db8:ffff::/64"]);
    assert!(output.contains("node addresses +2 -1"), "192.0.2.1 and 192.0.2.12, not loopback: {output}");
    assert_eq!(sandbox.reached("192.0.2.1:30080", 20), both);
    assert_eq!(sandbox.reached("192.0.2.12:30080", 20), both);
    refused(&sandbox, "192.0.2.200:30080");
    loopback(false);

    let output = sync(&["--nodeport-addresses", "192.0.2.0/25,2001:db8:ffff::/64,127.0.0.0/8"]);
    assert!(output.contains("node addresses +1 -0"), "loopback: {output}");
    loopback(true);
    refused(&sandbox, "192.0.2.200:30080");

    let output = sync(&["--nodeport-addresses", "primary"]);
    assert!(output.contains("node addresses +1 -1"), "node-a's 2001:db8::1, not loopback: {output}");
    refused(&sandbox, "192.0.2.200:30080");
    assert_eq!(sandbox.reached("192.0.2.1:30080", 20), both);
    loopback(false);

    let output = sync(&[]);
    assert!(output.contains("node addresses +2 -0"), "192.0.2.200 and loopback again: {output}");
    assert_eq!(sandbox.reached("192.0.2.200:30080", 20), both);
    loopback(true);

    // Bad values are input errors naming the flag, and change nothing.
    for bad in ["192.0.2.0/33", "primary,192.0.2.0/24", "node-a"] {
        let output =
            sandbox.balctl(&["sync", "--node-name", "node-a", "-f", &nodes, "--nodeport-addresses", bad]);
        assert_eq!(output.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("--nodeport-addresses"), "{bad}");
    }
    assert_eq!(sandbox.reached("192.0.2.200:30080", 20), both);
    loopback(true);
}

/// LoadBalancer: cluster IP, the ingress IP and the node port.
pub fn loadbalancer_answers_on_ingress_ip() {
    let sandbox = Sandbox::new();
    sandbox.serve("b6", &["192.0.2.6:8443"], &[]);
    sandbox.load();
    sync(&sandbox, &["loadbalancer.yaml", "nodes.yaml"]);
    for to in ["198.18.0.30:443", "198.18.1.30:443", "192.0.2.1:30443"] {
        assert_eq!(sandbox.reached(to, 5), ["b6"], "via {to}");
    }
}

/// ExternalIPs: the external IP reaches the endpoints like the cluster IP.
pub fn external_ip_answers() {
    let sandbox = Sandbox::new();
    sandbox.serve("b7", &["192.0.2.7:8080"], &[]);
    sandbox.load();
    sync(&sandbox, &["external-ip.yaml"]);
    for to in ["198.18.0.40:80", "198.18.2.40:80"] {
        assert_eq!(sandbox.reached(to, 5), ["b7"], "via {to}");
    }
}

/// Dual stack: each cluster IP reaches the endpoints of its own family.
pub fn dual_stack_keeps_families_apart() {
    let sandbox = Sandbox::new();
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.serve("b3", &["192.0.2.3:8080"], &[]);
    sandbox.serve("b4-v6", &["[2001:db8::4]:8080"], &[]);
    sandbox.serve("b5-v6", &["[2001:db8::5]:8080"], &[]);
    sandbox.load();
    sync(&sandbox, &["dual-stack.yaml"]);
    assert_eq!(sandbox.reached("198.18.0.50:80", 40), ["b2", "b3"]);
    assert_eq!(sandbox.reached("[2001:db8:5e::50]:80", 40), ["b4-v6", "b5-v6"]);
}

/// internalTrafficPolicy: Local: the cluster IP reaches only this node's
/// endpoint, and refuses on a node without one; the node port (an external
/// frontend) reaches both endpoints either way.
pub fn local_traffic_policy_uses_this_nodes_endpoints() {
    let sandbox = Sandbox::new();
    sandbox.serve("b8-node-a", &["192.0.2.8:9100"], &[]);
    sandbox.serve("b9-node-b", &["192.0.2.9:9100"], &[]);
    sandbox.load();
    sync_as(&sandbox, "node-a", &["local-traffic.yaml", "nodes.yaml"]);
    assert_eq!(sandbox.reached("198.18.0.60:80", 30), ["b8-node-a"]);
    for to in ["192.0.2.1:30060", "127.0.0.1:30060"] {
        assert_eq!(sandbox.reached(to, 40), ["b8-node-a", "b9-node-b"], "via {to}");
    }
    let output = sync_as(&sandbox, "node-c", &["local-traffic.yaml", "nodes.yaml"]);
    assert!(output.contains("no endpoint on node node-c"), "{output}");
    refused(&sandbox, "198.18.0.60:80");
    assert_eq!(sandbox.reached("192.0.2.1:30060", 40), ["b8-node-a", "b9-node-b"]);
}

/// Terminating endpoints: never while a ready one exists; serving ones
/// take over when none is ready; non-serving ones never.
pub fn terminating_endpoints_are_a_fallback() {
    let sandbox = Sandbox::new();
    for host in [2, 3, 10, 11] {
        sandbox.serve(&format!("b{host}"), &[&format!("192.0.2.{host}:8080")], &[]);
    }
    sandbox.load();
    sync(&sandbox, &["terminating.yaml"]);
    assert_eq!(sandbox.reached("198.18.0.70:80", 30), ["b2"]);
    assert_eq!(sandbox.reached("198.18.0.71:80", 30), ["b10"]);
}

/// Named target port: each endpoint is reached on the port its own slice
/// gives the name; decoys on the other port number never answer.
pub fn named_ports_resolve_per_slice() {
    let sandbox = Sandbox::new();
    sandbox.serve("b4:8080", &["192.0.2.4:8080"], &[]);
    sandbox.serve("b5:8081", &["192.0.2.5:8081"], &[]);
    sandbox.serve("decoy", &["192.0.2.4:8081", "192.0.2.5:8080"], &[]);
    sandbox.load();
    sync(&sandbox, &["named-ports.yaml"]);
    assert_eq!(sandbox.reached("198.18.0.80:80", 40), ["b4:8080", "b5:8081"]);
}

/// sessionAffinity: ClientIP: every connection from the client namespace
/// lands on one endpoint.
pub fn client_ip_affinity_sticks() {
    let sandbox = Sandbox::new();
    for host in 2..=4 {
        sandbox.serve(&format!("b{host}"), &[&format!("192.0.2.{host}:8080")], &[]);
    }
    sandbox.load();
    sync(&sandbox, &["session-affinity.yaml"]);
    let services = sandbox.balctl_json(&["dump", "services", "--vip", "198.18.0.100"]);
    assert_eq!(services["services"][0]["affinity_timeout_seconds"], 600, "{services}");
    assert_eq!(sandbox.reached("198.18.0.100:80", 30).len(), 1);
}

/// Headless, ExternalName and SCTP: skipped with a note each; the rest of
/// the service (a UDP port without endpoints) refuses at once.
pub fn services_without_frontends_are_skipped_with_a_note() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let output = sync(&sandbox, &["skipped.yaml"]);
    for note in ["shop/db is headless", "shop/payments is an ExternalName", "5061/SCTP skipped"] {
        assert!(output.contains(&format!("note: service {note}")) || output.contains(note), "{output}");
    }
    assert!(output.contains("frontends +1 "), "{output}");
    let report = sandbox.client(&["udp-sendto", "--to", "198.18.0.90:5060"]);
    assert_eq!(report["errors"]["ECONNREFUSED"], 1, "{report}");
}

/// Issue 3, must show 6 (YAML): each bad input exits 2 with file:line:column
/// and the field in the message, and changes nothing: dump and the state
/// file stay byte-identical.
pub fn bad_yaml_changes_nothing() {
    let sandbox = Sandbox::new();
    // Small enough for the capacity case below: kube-dns takes 6 entries.
    sandbox.load_with(&["--map-size", "services=16"]);
    sync(&sandbox, &["kube-dns.yaml"]);
    let snapshot = || {
        (sandbox.balctl_ok(&["dump", "-o", "json"]), std::fs::read(sandbox.state.join("state.bin")).unwrap())
    };
    let before = snapshot();

    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  \
                   clusterIP: 198.18.0.30\n  ports:\n  - name: http\n    port: 80\n";
    let slice = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  \
                 metadata:\n    name: web-1\n    namespace: shop\n    labels:\n      \
                 kubernetes.io/service-name: web\n  addressType: IPv4\n  endpoints:\n  - addresses: [\"192.0.2.300\"]\n";
    let many_endpoints: String = (2..=11).map(|host| format!("  - addresses: [192.0.2.{host}]\n")).collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "syntax.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n spec: [\n".into(),
            ":5:2: invalid YAML",
        ),
        (
            "api.yaml",
            service.replace("apiVersion: v1", "apiVersion: apps/v1"),
            ":1:13: Service: apiVersion: Service must be apiVersion v1",
        ),
        (
            "kind.yaml",
            service.replace("kind: Service", "kind: Deployment"),
            ":2:7: Deployment: kind: balctl reads Service, EndpointSlice, Node, Pod, LocalRedirectPolicy,",
        ),
        (
            "beta.yaml",
            slice.replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"),
            ":4:15: EndpointSlice: apiVersion: EndpointSlice must be apiVersion discovery.k8s.io/v1",
        ),
        (
            "ports.yaml",
            service.split("  ports:").next().unwrap().to_owned(),
            ":7:3: Service shop/web: spec: missing field `ports`",
        ),
        (
            "ip.yaml",
            service.replace("198.18.0.30", "198.18.0.300"),
            ":7:14: Service shop/web: spec.clusterIP: `198.18.0.300` is not a valid IP address",
        ),
        (
            "endpoint.yaml",
            slice.to_owned(),
            ":13:17: EndpointSlice shop/web-1: endpoints[0].addresses[0]: `192.0.2.300` is not a valid IP",
        ),
        (
            "port.yaml",
            service.replace("port: 80", "port: 70000"),
            ":10:11: Service shop/web: spec.ports[0].port: port 70000 is out of range",
        ),
        (
            "duplicate.yaml",
            format!("{service}---\n{}", service.replace("name: web", "name: web2")),
            ":12:1: frontend 198.18.0.30:80/tcp of service/shop/web2 is also a frontend of service/shop/web (at ",
        ),
        (
            "capacity.yaml",
            format!(
                "{service}---\n{}{many_endpoints}  ports:\n  - name: http\n    port: 8080\n",
                slice.split("  - addresses").next().unwrap()
            ),
            ": the services map would need",
        ),
    ];
    for (name, text, expected) in &cases {
        let path = sandbox.scratch(name);
        std::fs::write(&path, text).unwrap();
        let file = path.display().to_string();
        let output = sandbox.balctl(&["sync", "--node-name", "node-a", "-f", &file]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        let expected =
            if expected.starts_with(": the") { expected.to_string() } else { format!("{file}{expected}") };
        assert!(stderr.contains(&expected), "{name}: expected {expected}\n got {stderr}");
        assert_eq!(snapshot(), before, "{name} changed something");
    }
}

/// A `kubectl get -o yaml` List synced again after one endpoint moved: only
/// that Service changes, and traffic follows (the sync parses just the
/// changed entry and keeps the other Service as applied).
pub fn a_resynced_list_follows_a_moved_endpoint() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.serve("b3", &["192.0.2.3:8080"], &[]);
    let entry = |name: &str, ip: &str, endpoint: &str| {
        format!(
            "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: {name}\n    namespace: shop\n  spec:\n    \
             clusterIP: {ip}\n    ports:\n    - name: http\n      port: 80\n      protocol: TCP\n      \
             targetPort: 8080\n- addressType: IPv4\n  apiVersion: discovery.k8s.io/v1\n  endpoints:\n  - addresses:\n    \
             - {endpoint}\n    conditions:\n      ready: true\n  kind: EndpointSlice\n  metadata:\n    labels:\n      \
             kubernetes.io/service-name: {name}\n    name: {name}-x1\n    namespace: shop\n  ports:\n  - name: http\n    \
             port: 8080\n    protocol: TCP\n"
        )
    };
    let list = |web_endpoint: &str| {
        format!(
            "apiVersion: v1\nitems:\n{}{}kind: List\nmetadata:\n  resourceVersion: \"\"\n",
            entry("web", "198.18.0.20", web_endpoint),
            entry("api", "198.18.0.30", "192.0.2.3")
        )
    };
    let path = sandbox.scratch("cluster.yaml");
    std::fs::write(&path, list("192.0.2.2")).unwrap();
    let path = path.to_str().unwrap();
    assert!(sync(&sandbox, &[path]).contains("frontends +2 ~0 -0"));
    assert_eq!(sandbox.reached("198.18.0.20:80", 5), ["b2"]);
    assert!(sync(&sandbox, &[path]).contains("no changes"));

    std::fs::write(path, list("192.0.2.3")).unwrap();
    let output = sync(&sandbox, &[path]);
    assert!(output.contains("frontends +0 ~1 -0, backends +0 -1"), "{output}");
    assert_eq!(sandbox.reached("198.18.0.20:80", 5), ["b3"]);
    assert_eq!(sandbox.reached("198.18.0.30:80", 5), ["b3"]);
}
