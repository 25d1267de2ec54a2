//! Issue 6: `balctl sync --kube` (and `trace --kube`) against the test API
//! server (support/apiserver.rs), on the real kernel.

use std::{
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    support::{Sandbox, apiserver::ApiServer, finish, peer, watcher::Watcher},
    trace::{events, start_trace},
};

pub fn service(name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": {
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "type": "ClusterIP",
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080 }]
        }
    })
}

/// Servers at 192.0.2.2 and 192.0.2.3, and an API server holding Service
/// web (198.18.0.20:80) with an EndpointSlice of the first; returns the
/// server and a kubeconfig for it in the sandbox.
pub fn web_in_a_cluster(sandbox: &Sandbox) -> (ApiServer, PathBuf) {
    web_served_by(sandbox, ApiServer::start())
}

/// `web_in_a_cluster` with the API server on the loopback of the network
/// namespace `netns`, for an agent that runs there.
pub fn web_in_a_cluster_in(sandbox: &Sandbox, netns: &str) -> (ApiServer, PathBuf) {
    web_served_by(sandbox, ApiServer::start_in(netns))
}

fn web_served_by(sandbox: &Sandbox, server: ApiServer) -> (ApiServer, PathBuf) {
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.serve("b3", &["192.0.2.3:8080"], &[]);
    let kubeconfig = sandbox.scratch("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    server.apply(service("web", "198.18.0.20"));
    server.apply(slice("web", &["192.0.2.2"]));
    (server, kubeconfig)
}

pub fn slice(service: &str, endpoints: &[&str]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|ip| json!({ "addresses": [ip], "conditions": { "ready": true }, "nodeName": "node-a" }))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-1"), "namespace": "shop",
            "labels": { "kubernetes.io/service-name": service }
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }]
    })
}

/// A test API server and the path of a kubeconfig for it in the sandbox.
fn api_server(sandbox: &Sandbox) -> (ApiServer, String) {
    let server = ApiServer::start();
    let kubeconfig = sandbox.scratch("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    (server, kubeconfig.to_str().expect("a UTF-8 path").to_owned())
}

pub fn a_one_shot_kube_sync_applies_the_cluster_and_exits() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.serve("b3", &["192.0.2.3:8080"], &[]);
    let (server, kubeconfig) = api_server(&sandbox);
    let sync =
        || sandbox.balctl_ok(&["sync", "--kube", "--kubeconfig", &kubeconfig, "--node-name", "node-a"]);

    server.apply(service("web", "198.18.0.20"));
    server.apply(slice("web", &["192.0.2.2"]));
    server.apply(service("api", "198.18.0.30"));
    let output = sync();
    assert!(output.contains("frontends +2 ~0 -0"), "{output}");
    assert_eq!(sandbox.reached("198.18.0.20:80", 5), ["b2"]);
    let refused = sandbox.client(&["connect", "--to", "198.18.0.30:80"]);
    assert_eq!(refused["errors"]["ECONNREFUSED"], 1, "api has no endpoints yet: {refused}");
    let names: Vec<String> = sandbox.balctl_json(&["dump", "services"])["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["service/shop/web", "service/shop/api"]);
    assert!(sync().contains("no changes"));
    // With no policy, only this node's Pods are read.
    let pods: Vec<String> = server.requests().into_iter().filter(|r| r.contains("pods")).collect();
    assert!(
        !pods.is_empty() && pods.iter().all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{pods:#?}"
    );

    // Scale web to two endpoints, give api one, then delete web.
    server.apply(slice("web", &["192.0.2.2", "192.0.2.3"]));
    server.apply(slice("api", &["192.0.2.3"]));
    assert!(sync().contains("frontends +0 ~2 -0"));
    let mut both = sandbox.reached("198.18.0.20:80", 40);
    both.sort();
    assert_eq!(both, ["b2", "b3"]);
    assert_eq!(sandbox.reached("198.18.0.30:80", 5), ["b3"]);
    server.delete("v1", "Service", Some("shop"), "web");
    assert!(sync().contains("frontends +0 ~0 -1"));
    let gone = sandbox.client(&["connect", "--to", "198.18.0.20:80"]);
    assert_eq!(gone["errors"]["ENETUNREACH"], 1, "web is gone, nothing translates it: {gone}");

    // An unreachable API server: exit 1 with the reason, nothing changes.
    let dump = sandbox.balctl_ok(&["dump", "-o", "json"]);
    server.set_reachable(false);
    let failed = sandbox.balctl(&["sync", "--kube", "--kubeconfig", &kubeconfig, "--node-name", "node-a"]);
    assert_eq!(failed.status.code(), Some(1), "{}", String::from_utf8_lossy(&failed.stderr));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("API server"));
    assert_eq!(sandbox.balctl_ok(&["dump", "-o", "json"]), dump);
}

/// `sync --kube --watch` follows the cluster: a Service scaled, deleted or
/// created through the API server changes the datapath within a second; a
/// restart under traffic loses no connection; after dropped watches and an
/// expired history (410) it relists and converges; while the API server is
/// unreachable the datapath keeps the last state. SIGTERM ends it with 0.
pub fn a_kube_watch_follows_the_cluster() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.serve("b3", &["192.0.2.3:8080"], &[]);
    let (server, kubeconfig) = api_server(&sandbox);
    let args = ["--kube", "--kubeconfig", &kubeconfig, "--node-name", "node-a"];
    server.apply(service("web", "198.18.0.20"));
    server.apply(slice("web", &["192.0.2.2"]));
    let watcher = Watcher::start_with(&sandbox, &[], &args);
    watcher.wait_stdout("frontends +1 ~0 -0");
    assert_eq!(sandbox.reached("198.18.0.20:80", 5), ["b2"]);

    let within_a_second = |change: &dyn Fn(), summary: &str| {
        let started = Instant::now();
        change();
        watcher.wait_stdout(summary);
        assert!(started.elapsed() < Duration::from_secs(1), "`{summary}` took {:?}", started.elapsed());
    };
    within_a_second(&|| server.apply(slice("web", &["192.0.2.2", "192.0.2.3"])), "frontends +0 ~1 -0");
    let mut both = sandbox.reached("198.18.0.20:80", 40);
    both.sort();
    assert_eq!(both, ["b2", "b3"]);
    within_a_second(&|| server.delete("v1", "Service", Some("shop"), "web"), "frontends +0 ~0 -1");
    assert_eq!(sandbox.client(&["connect", "--to", "198.18.0.20:80"])["errors"]["ENETUNREACH"], 1);
    within_a_second(
        &|| {
            server.apply(service("api", "198.18.0.30"));
            server.apply(slice("api", &["192.0.2.3"]));
        },
        "frontends +1 ~0 -0",
    );
    assert_eq!(sandbox.reached("198.18.0.30:80", 5), ["b3"]);

    // A restart under traffic: the new watcher starts from what is pinned.
    let client = sandbox.spawn_client(&["connect", "--to", "198.18.0.30:80", "--millis", "2000"]);
    assert_eq!(watcher.terminate(), Some(0));
    let watcher = Watcher::start_with(&sandbox, &[], &args);
    watcher.wait_stdout("no changes");
    let report = finish(client);
    assert!(report["ok"].as_u64().unwrap() > 0 && report["failed"] == 0, "{report}");

    // Dropped watches and an expired history: relist, then follow on.
    server.drop_watches();
    server.expire_history();
    server.apply(slice("api", &["192.0.2.2"]));
    watcher.wait_stdout("frontends +0 ~1 -0");
    assert_eq!(sandbox.reached("198.18.0.30:80", 5), ["b2"]);

    // The API server away: the datapath keeps its state; back, it follows.
    server.set_reachable(false);
    thread::sleep(Duration::from_secs(2));
    assert_eq!(sandbox.reached("198.18.0.30:80", 5), ["b2"]);
    server.set_reachable(true);
    server.apply(slice("api", &["192.0.2.3"]));
    watcher.wait_stdout("frontends +0 ~1 -0");
    assert_eq!(sandbox.reached("198.18.0.30:80", 5), ["b3"]);
    assert_eq!(watcher.terminate(), Some(0));
}

/// A cgroup made inside the test's, as a container runtime makes one per
/// container; removed again (once its processes are gone) when dropped.
struct ContainerCgroup(std::path::PathBuf);

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        // Processes leave a cgroup asynchronously after they are reaped.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `trace --kube` names the pod of a container from the API server: a
/// client in a containerd-named cgroup connects, and the event carries the
/// container id from its cgroup and the pod whose status lists it.
pub fn trace_names_the_pod_of_a_container() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", "198.18.0.20:80", "--backend", "192.0.2.2:8080"]);
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let (server, kubeconfig) = api_server(&sandbox);
    server.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "web-client", "namespace": "shop" },
        "spec": { "nodeName": "node-a", "containers": [{ "name": "client", "image": "client:1" }] },
        "status": {
            "phase": "Running", "podIP": "192.0.2.50",
            "containerStatuses": [{
                "name": "client", "containerID": format!("containerd://{id}"), "ready": true,
                "restartCount": 0, "image": "client:1", "imageID": "sha256:1"
            }]
        }
    }));
    let container = ContainerCgroup(sandbox.cgroup.join(format!("cri-containerd-{id}.scope")));
    std::fs::create_dir(&container.0).expect("create the container's cgroup");

    let trace = start_trace(&sandbox, &["--kube", "--kubeconfig", &kubeconfig, "--count", "1", "-o", "json"]);
    let client = Command::new(std::env::current_exe().expect("test binary"))
        .arg(peer::PEER_ARG)
        .arg("--cgroup")
        .arg(&container.0)
        .args(["--netns", &sandbox.client_ns, "connect", "--to", "198.18.0.20:80"])
        .output()
        .expect("run the client");
    assert!(client.status.success(), "{}", String::from_utf8_lossy(&client.stderr));
    let events = events(trace);
    assert_eq!(events[0]["container_id"], id, "{:#}", events[0]);
    assert_eq!(events[0]["pod"], "shop/web-client", "{:#}", events[0]);
    assert_eq!(events[0]["name"], "policy/web", "{:#}", events[0]);
}

fn pod(name: &str, node: &str, ip: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "shop", "labels": { "app": app } },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "c:1" }] },
        "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] }
    })
}

/// Pods are watched only as far as policies need them: this node's, and
/// those a BalancingPolicy selects (a watcher per selector, started when the
/// policy comes and stopped when it goes), never every Pod.
pub fn a_kube_watch_watches_only_the_pods_policies_select() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.serve("b3", &["192.0.2.3:8080"], &[]);
    let (server, kubeconfig) = api_server(&sandbox);
    server.apply(pod("web-1", "node-b", "192.0.2.2", "web"));
    server.apply(pod("web-2", "node-c", "192.0.2.3", "web"));
    server.apply(pod("db-1", "node-b", "192.0.2.4", "db"));
    let watcher =
        Watcher::start_with(&sandbox, &[], &["--kube", "--kubeconfig", &kubeconfig, "--node-name", "node-a"]);
    watcher.wait_stdout("no changes");
    server.apply(json!({
        "apiVersion": "balancing.elf.io/v1beta1", "kind": "BalancingPolicy",
        "metadata": { "name": "web-vip", "namespace": "shop" },
        "spec": {
            "frontend": { "addressMatcher": { "ip": "198.18.3.10", "toPorts": [{ "name": "http", "port": 80 }] } },
            "backend": { "serviceEndpoint": {
                "endpointSelector": { "matchLabels": { "app": "web" } },
                "redirectMode": "podEndpoint",
                "toPorts": [{ "name": "http", "port": 8080 }]
            } }
        }
    }));
    watcher.wait_stdout("frontends +1 ~0 -0");
    let mut both = sandbox.reached("198.18.3.10:80", 40);
    both.sort();
    assert_eq!(both, ["b2", "b3"], "the policy's Pods on other nodes are its backends");

    let pod_requests: Vec<String> =
        server.requests().into_iter().filter(|r| r.contains("/pods") || r.contains("pods?")).collect();
    assert!(!pod_requests.is_empty());
    for request in &pod_requests {
        let local = request.contains("fieldSelector=spec.nodeName%3Dnode-a");
        let selected =
            request.contains("/namespaces/shop/pods") && request.contains("labelSelector=app%3Dweb");
        assert!(
            local || selected,
            "a Pod request that selects neither this node nor a policy's Pods: {request}"
        );
    }
    server.delete("balancing.elf.io/v1beta1", "BalancingPolicy", Some("shop"), "web-vip");
    watcher.wait_stdout("frontends +0 ~0 -1");
    assert_eq!(watcher.terminate(), Some(0));
}

/// A watcher that applied a thousand changes one batch after another (each
/// read in part: inputs::kube::Index; each recorded as one record of the
/// state's log) and is restarted reads back exactly what it applied: the
/// new watcher finds nothing to change, the maps dump as before, and a
/// one-shot sync that reads the whole cluster finds nothing to change.
pub fn a_kube_watch_restarted_after_a_thousand_changes_reads_back_what_it_applied() {
    const SERVICES: u64 = 40;
    let sandbox = Sandbox::new();
    sandbox.load();
    let (server, kubeconfig) = api_server(&sandbox);
    let args = ["--kube", "--kubeconfig", &kubeconfig, "--node-name", "node-a"];
    let node = |last: u64| {
        json!({
            "apiVersion": "v1", "kind": "Node", "metadata": { "name": "node-a" },
            "status": { "addresses": [{ "type": "InternalIP", "address": format!("192.0.2.{last}") }] }
        })
    };
    let mut node_port = service("np", "198.18.2.1");
    node_port["spec"]["type"] = "NodePort".into();
    node_port["spec"]["ports"][0]["nodePort"] = 30080.into();
    server.apply(node_port);
    server.apply(slice("np", &["192.0.2.9"]));
    server.apply(node(200));
    for i in 0..SERVICES {
        server.apply(service(&format!("s{i}"), &format!("198.18.1.{}", i + 1)));
        server.apply(slice(&format!("s{i}"), &[&format!("192.0.2.{}", 10 + i)]));
    }
    let watcher = Watcher::start_with(&sandbox, &[], &args);
    watcher.wait_stdout(&format!("frontends +{}", SERVICES + 3));

    // A fixed sequence of draws: the same changes on every run.
    let mut draw = 0x2545_f491_4f6c_dd1d_u64;
    let mut below = |n: u64| {
        draw ^= draw << 13;
        draw ^= draw >> 7;
        draw ^= draw << 17;
        draw % n
    };
    let mut deleted = std::collections::BTreeSet::<u64>::new();
    for _ in 0..100 {
        for _ in 0..10 {
            let i = below(SERVICES);
            let name = format!("s{i}");
            match below(10) {
                0 if deleted.insert(i) => server.delete("v1", "Service", Some("shop"), &name),
                // Each Service's addresses are its own: no two claim one.
                1 => {
                    deleted.remove(&i);
                    server.apply(service(&name, &format!("198.18.{}.{}", 10 + i, below(200) + 1)));
                }
                2 => server.apply(node(200 + below(3))),
                0 | 3 => {
                    deleted.remove(&i);
                    server.apply(service(&name, &format!("198.18.1.{}", i + 1)));
                }
                _ => {
                    let endpoints: Vec<String> =
                        (0..below(3) + 1).map(|_| format!("192.0.2.{}", 10 + below(60))).collect();
                    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
                    server.apply(slice(&name, &endpoints));
                }
            }
        }
        watcher.wait_stdout("sync:");
    }
    // Every change is applied once a dry run that reads the whole cluster
    // finds nothing to change (the last batch may still be on its way).
    let dry_run = ["sync", "--kube", "--kubeconfig", &kubeconfig, "--node-name", "node-a", "--dry-run"];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = sandbox.balctl_json(&dry_run);
        if report["changes"] == json!([]) && report["map_writes"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the watcher never caught up: {report}");
        thread::sleep(Duration::from_millis(200));
    }
    let dumps = || ["services", "backends", "nodes"].map(|kind| sandbox.balctl_json(&["dump", kind]));
    let applied = dumps();
    let frontends = applied[0]["services"].as_array().map_or(0, Vec::len);
    assert!(frontends > 20, "{frontends} frontends");

    assert_eq!(watcher.terminate(), Some(0));
    let watcher = Watcher::start_with(&sandbox, &[], &args);
    watcher.wait_stdout("sync: no changes");
    assert_eq!(dumps(), applied);
    let report = sandbox.balctl_json(&dry_run);
    assert_eq!(report["changes"], json!([]), "{report}");
    assert_eq!(report["map_writes"], 0, "{report}");
    assert_eq!(watcher.terminate(), Some(0));
}
