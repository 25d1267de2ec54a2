//! Issue 21, cross-cluster services, the MCS API's part: a ServiceImport
//! (multicluster.x-k8s.io/v1alpha1) and the EndpointSlices an MCS
//! controller labels `multicluster.kubernetes.io/service-name`, read by
//! `sync --kube` (once and watching) from an API server that serves them.
//! (Every other kube test's API server does not: they show an agent
//! without the MCS API works as before.)

use std::{
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{Sandbox, apiserver::ApiServer, watcher::Watcher};

const CLUSTER_SET_IP: &str = "198.18.4.10:80";

/// The documents of examples/k8s/service-import.yaml, as JSON.
fn example() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/k8s/service-import.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    text.split("\n---\n").map(|document| serde_saphyr::from_str(document).unwrap()).collect()
}

pub fn a_service_import_is_balanced_over_its_imported_slices() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("east", &["192.0.2.6:8080"], &[]);
    sandbox.serve("west", &["192.0.2.7:8080"], &[]);
    let server = ApiServer::start();
    server.install_mcs();
    let kubeconfig = sandbox.scratch("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    for document in example() {
        server.apply(document);
    }
    let kubeconfig = kubeconfig.to_str().unwrap();
    // Once.
    sandbox.balctl_ok(&["sync", "--kube", "--kubeconfig", kubeconfig, "--node-name", "node-a"]);
    wait_reached_at(&sandbox, CLUSTER_SET_IP, &["east", "west"]);
    let services = sandbox.balctl_json(&["dump", "services", "--vip", "198.18.4.10"]);
    assert_eq!(services["services"][0]["name"], "serviceimport/shop/web", "{services:#}");
    // Watching: a cluster that stops exporting takes its endpoints away.
    let watcher =
        Watcher::start_with(&sandbox, &[], &["--kube", "--kubeconfig", kubeconfig, "--node-name", "node-a"]);
    watcher.wait_stdout("sync:");
    server.delete("discovery.k8s.io/v1", "EndpointSlice", Some("shop"), "imported-web-east");
    wait_reached_at(&sandbox, CLUSTER_SET_IP, &["west"]);
    watcher.terminate();
}

/// A Service `web` of this cluster and of cluster `east`, YAML as `kubectl
/// get -o yaml` prints it; `east`'s carry the cluster annotation that
/// `sync --kube` of several clusters writes on other clusters' objects.
fn web(
    cluster: Option<&str>,
    global: Option<&str>,
    affinity: Option<&str>,
    endpoint: &str,
    ready: bool,
) -> String {
    let mut annotations = Vec::new();
    if let Some(cluster) = cluster {
        annotations.push(format!("balancing.elf.io/cluster: {cluster}"));
    }
    if let Some(global) = global {
        annotations.push(format!("service.cilium.io/global: \"{global}\""));
    }
    if let Some(affinity) = affinity {
        annotations.push(format!("balancing.elf.io/affinity: {affinity}"));
    }
    let cluster_annotation =
        cluster.map_or(String::new(), |c| format!("\n  annotations: {{balancing.elf.io/cluster: {c}}}"));
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  annotations: {{{}}}\n\
         spec:\n  clusterIP: 198.18.5.10\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-{}\n  namespace: shop\n\
         \x20 labels: {{kubernetes.io/service-name: web}}{cluster_annotation}\naddressType: IPv4\n\
         endpoints: [{{addresses: [{endpoint}], conditions: {{ready: {ready}}}}}]\n\
         ports: [{{name: http, port: 8080, protocol: TCP}}]\n",
        annotations.join(", "),
        cluster.unwrap_or("here"),
    )
}

/// `balancing.elf.io/global` (Cilium's `service.cilium.io/global` here):
/// a Service of this cluster and of another gets the union of their
/// endpoints; `balancing.elf.io/affinity: local` prefers this cluster's
/// and falls back to the other's when they are gone; another cluster's
/// Service that is not global is left alone.
pub fn a_global_service_has_the_endpoints_of_every_cluster() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("here", &["192.0.2.2:8080"], &[]);
    sandbox.serve("east", &["192.0.2.3:8080"], &[]);
    let (here, east) = (sandbox.scratch("here.yaml"), sandbox.scratch("east.yaml"));
    let sync = |here_text: String, east_text: String| {
        std::fs::write(&here, here_text).unwrap();
        std::fs::write(&east, east_text).unwrap();
        sandbox.balctl_ok(&["sync", "-f", here.to_str().unwrap(), "-f", east.to_str().unwrap()])
    };
    let vip = "198.18.5.10:80";
    // Global in both: both clusters' endpoints.
    sync(
        web(None, Some("true"), None, "192.0.2.2", true),
        web(Some("east"), Some("true"), None, "192.0.2.3", true),
    );
    assert_eq!(sandbox.reached(vip, 40), ["east", "here"]);
    // Not global in east: east's Service is east's.
    sync(
        web(None, Some("true"), None, "192.0.2.2", true),
        web(Some("east"), Some("false"), None, "192.0.2.3", true),
    );
    assert_eq!(sandbox.reached(vip, 20), ["here"]);
    // Affinity local: this cluster's while it has one; east's once not.
    sync(
        web(None, Some("true"), Some("local"), "192.0.2.2", true),
        web(Some("east"), Some("true"), None, "192.0.2.3", true),
    );
    assert_eq!(sandbox.reached(vip, 20), ["here"]);
    sync(
        web(None, Some("true"), Some("local"), "192.0.2.2", false),
        web(Some("east"), Some("true"), None, "192.0.2.3", true),
    );
    assert_eq!(sandbox.reached(vip, 20), ["east"]);
    // Affinity remote: east's.
    sync(
        web(None, Some("true"), Some("remote"), "192.0.2.2", true),
        web(Some("east"), Some("true"), None, "192.0.2.3", true),
    );
    assert_eq!(sandbox.reached(vip, 20), ["east"]);
    // A cluster gone from the inputs takes its endpoints with it.
    std::fs::write(&east, "").unwrap();
    std::fs::write(&here, web(None, Some("true"), None, "192.0.2.2", true)).unwrap();
    sandbox.balctl_ok(&["sync", "-f", here.to_str().unwrap()]);
    assert_eq!(sandbox.reached(vip, 20), ["here"]);
}

/// Service `web` of a cluster as the API server holds it: global, with
/// `affinity` if given.
fn global_web(affinity: Option<&str>) -> Value {
    let mut annotations = serde_json::json!({ "balancing.elf.io/global": "true" });
    if let Some(affinity) = affinity {
        annotations["balancing.elf.io/affinity"] = affinity.into();
    }
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "web", "namespace": "shop", "annotations": annotations },
        "spec": { "clusterIP": "198.18.5.20", "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] }
    })
}

/// Its EndpointSlice, of one endpoint.
fn web_slice(endpoint: &str, ready: bool) -> Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "web-1", "namespace": "shop", "labels": { "kubernetes.io/service-name": "web" } },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": [endpoint], "conditions": { "ready": ready } }],
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }]
    })
}

/// Must show 3 with two API servers: `sync --kube` of this node's cluster
/// and `east` (a second --kubeconfig, named by its file): a global Service
/// in both reaches both clusters' endpoints, once and watching; a
/// BalancingPolicy here selects Pods of both; with east's API server down
/// its endpoints are kept; affinity local prefers this cluster's and falls
/// back; an agent started without east prunes east's endpoints.
pub fn two_clusters_serve_one_global_service() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("here", &["192.0.2.2:8080"], &[]);
    sandbox.serve("east", &["192.0.2.3:8080"], &[]);
    let (here, east) = (ApiServer::start(), ApiServer::start());
    let (here_config, east_config) = (sandbox.scratch("here.kubeconfig"), sandbox.scratch("east.kubeconfig"));
    here.write_kubeconfig(&here_config);
    east.write_kubeconfig(&east_config);
    for (server, endpoint) in [(&here, "192.0.2.2"), (&east, "192.0.2.3")] {
        server.apply(global_web(None));
        server.apply(web_slice(endpoint, true));
    }
    // A cross-cluster balancing policy: here's BalancingPolicy selects
    // Pods `app: api`, one in each cluster.
    here.apply(serde_json::json!({
        "apiVersion": "balancing.elf.io/v1beta1", "kind": "BalancingPolicy",
        "metadata": { "name": "api", "namespace": "shop" },
        "spec": {
            "frontend": { "addressMatcher": { "ip": "198.18.5.30", "toPorts": [{ "name": "http", "port": 80 }] } },
            "backend": { "serviceEndpoint": {
                "endpointSelector": { "matchLabels": { "app": "api" } },
                "toPorts": [{ "name": "http", "port": 8080 }]
            } }
        }
    }));
    for (server, name, ip) in [(&here, "api-here", "192.0.2.2"), (&east, "api-east", "192.0.2.3")] {
        server.apply(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": "shop", "labels": { "app": "api" } },
            "spec": { "nodeName": "node-b", "containers": [{ "name": "c", "image": "c:1" }] },
            "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] }
        }));
    }
    let (here_config, east_config) = (here_config.to_str().unwrap(), east_config.to_str().unwrap());
    let both = ["--kube", "--kubeconfig", here_config, "--kubeconfig", east_config, "--node-name", "node-a"];
    let vip = "198.18.5.20:80";
    // Once.
    let mut once = vec!["sync"];
    once.extend(both);
    sandbox.balctl_ok(&once);
    assert_eq!(sandbox.reached(vip, 40), ["east", "here"]);
    assert_eq!(sandbox.reached("198.18.5.30:80", 40), ["east", "here"], "the policy's Pods of both clusters");
    // Watching.
    let watcher = Watcher::start_with(&sandbox, &[], &both);
    watcher.wait_stdout("sync:");
    // East's Pod goes: the policy keeps here's.
    east.delete("v1", "Pod", Some("shop"), "api-east");
    wait_reached_at(&sandbox, "198.18.5.30:80", &["here"]);
    let synced_again = |watcher: &Watcher, before: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while watcher.stdout_lines().len() == before {
            assert!(Instant::now() < deadline, "no sync: {:#?}", watcher.stderr_lines());
            thread::sleep(Duration::from_millis(20));
        }
    };
    // East's API server down: a change here keeps east's endpoints.
    east.set_reachable(false);
    let before = watcher.stdout_lines().len();
    here.apply(global_web(Some("none")));
    synced_again(&watcher, before);
    assert_eq!(sandbox.reached(vip, 40), ["east", "here"]);
    east.set_reachable(true);
    // Affinity local: here's, then east's once here has none ready.
    here.apply(global_web(Some("local")));
    wait_reached_at(&sandbox, vip, &["here"]);
    here.apply(web_slice("192.0.2.2", false));
    wait_reached_at(&sandbox, vip, &["east"]);
    watcher.terminate();
    // East no longer given: its endpoints go.
    here.apply(web_slice("192.0.2.2", true));
    here.apply(global_web(None));
    let watcher =
        Watcher::start_with(&sandbox, &[], &["--kube", "--kubeconfig", here_config, "--node-name", "node-a"]);
    watcher.wait_stdout("sync:");
    wait_reached_at(&sandbox, vip, &["here"]);
    watcher.terminate();
}

/// Waits (at most 10 s) until 20 connections to `vip` reach exactly `ids`.
fn wait_reached_at(sandbox: &Sandbox, vip: &str, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = sandbox.client(&["connect", "--to", vip, "--count", "20"]);
        let reached: Vec<&str> =
            report["backends"].as_object().map_or(Vec::new(), |b| b.keys().map(String::as_str).collect());
        if report["failed"] == 0 && reached == ids {
            return;
        }
        assert!(Instant::now() < deadline, "reached {report}, expected {ids:?}");
        thread::sleep(Duration::from_millis(100));
    }
}
