//! Issue 18: the agent serves the healthCheckNodePort of every LoadBalancer
//! Service with externalTrafficPolicy Local, as kube-proxy does: the agent
//! (`sync --kube --watch`) runs in the sandbox's server namespace, with the
//! test API server on that namespace's loopback, and curl asks from there.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::support::{Sandbox, apiserver::ApiServer, watcher::Watcher};

/// A LoadBalancer Service web with the traffic policy and health-check
/// node port given (none for Cluster, as the API server does).
fn web(policy: &str, health_check_node_port: Option<u16>) -> Value {
    let mut service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "web", "namespace": "shop" },
        "spec": {
            "type": "LoadBalancer", "clusterIP": "198.18.0.40", "clusterIPs": ["198.18.0.40"],
            "externalTrafficPolicy": policy,
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080 }]
        },
        "status": { "loadBalancer": { "ingress": [{ "ip": "198.18.1.40" }] } }
    });
    if let Some(port) = health_check_node_port {
        service["spec"]["healthCheckNodePort"] = json!(port);
    }
    service
}

/// web's EndpointSlice: one ready endpoint on `node`.
fn endpoint_on(node: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1", "namespace": "shop", "labels": { "kubernetes.io/service-name": "web" }
        },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": ["192.0.2.2"], "conditions": { "ready": true }, "nodeName": node }],
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }]
    })
}

/// What curl in `netns` gets from `host:port`: the status and headers and
/// the body, or None when the connection is refused.
fn curl(netns: &str, host: &str, port: u16) -> Option<(u16, String, String)> {
    let net = format!("--net=/run/netns/{netns}");
    let url = format!("http://{host}:{port}/any/path");
    let output = Command::new("nsenter")
        .args([&net, "curl", "-sS", "-i", "--max-time", "5", &url])
        .output()
        .expect("run curl");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // curl exit 7: could not connect (refused).
        assert_eq!(output.status.code(), Some(7), "curl {url}: {stderr}");
        return None;
    }
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    Some((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// Waits (at most 10 s) until `port` answers `status` with `local`
/// endpoints of Service web in kube-proxy's body; checks its headers.
fn wait_for_answer(netns: &str, port: u16, status: u16, local: u32) {
    wait_for_answer_of(netns, port, status, ("shop", "web"), local);
}

/// `wait_for_answer`, about the Service `(namespace, name)`.
fn wait_for_answer_of(netns: &str, port: u16, status: u16, (namespace, name): (&str, &str), local: u32) {
    let start = Instant::now();
    loop {
        let answer = curl(netns, "127.0.0.1", port);
        if let Some((now, head, body)) = &answer
            && *now == status
        {
            let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
            assert_eq!(
                body,
                json!({
                    "service": { "namespace": namespace, "name": name },
                    "localEndpoints": local,
                    "serviceProxyHealthy": true
                })
            );
            assert!(head.contains("content-type: application/json"), "{head}");
            assert!(head.contains("x-content-type-options: nosniff"), "{head}");
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "port {port} answers {answer:?}, not {status}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most 10 s) until nothing listens on `port` any more.
fn wait_refused(netns: &str, port: u16) {
    let start = Instant::now();
    while curl(netns, "127.0.0.1", port).is_some() {
        assert!(start.elapsed() < Duration::from_secs(10), "port {port} still answers");
        thread::sleep(Duration::from_millis(100));
    }
}

/// 200 with the local endpoint, over IPv4 and IPv6; 503 with 0 once the
/// endpoint moves to node-b; the port moves with healthCheckNodePort; a
/// port taken by another Service is a warning, not a failed sync; the port
/// closes when the Service switches to Cluster, and when it is deleted.
pub fn health_check_node_ports_follow_the_services() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let netns = sandbox.server_ns.clone();
    let server = ApiServer::start_in(&netns);
    let kubeconfig = sandbox.scratch("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    server.apply(web("Local", Some(32001)));
    server.apply(endpoint_on("node-a"));
    let watcher = Watcher::start_in(
        &sandbox,
        &netns,
        &["--kube", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", "node-a"],
    );
    watcher.wait_stdout("sync: frontends");
    wait_for_answer(&netns, 32001, 200, 1);
    let (status, _, _) = curl(&netns, "[::1]", 32001).expect("one socket for IPv4 and IPv6");
    assert_eq!(status, 200);

    // The endpoint moves to another node: still served, 503, none local.
    server.apply(endpoint_on("node-b"));
    wait_for_answer(&netns, 32001, 503, 0);
    server.apply(endpoint_on("node-a"));
    wait_for_answer(&netns, 32001, 200, 1);

    // A new port: the listener moves.
    server.apply(web("Local", Some(32002)));
    wait_for_answer(&netns, 32002, 200, 1);
    wait_refused(&netns, 32001);

    // Another Service's port that cannot be bound: a warning; the sync
    // applies, web's port goes on.
    let mut other = web("Local", Some(32002));
    other["metadata"]["name"] = json!("other");
    other["spec"]["clusterIP"] = json!("198.18.0.41");
    other["spec"]["clusterIPs"] = json!(["198.18.0.41"]);
    other["spec"]["ports"][0]["nodePort"] = json!(30081);
    other["status"]["loadBalancer"]["ingress"][0]["ip"] = json!("198.18.1.41");
    server.apply(other);
    watcher.wait_stderr("health check of service shop/other: cannot listen on port 32002");
    wait_for_answer(&netns, 32002, 200, 1);
    server.delete("v1", "Service", Some("shop"), "other");

    // Cluster: no health check.
    server.apply(web("Cluster", None));
    wait_refused(&netns, 32002);

    // Local again, then deleted.
    server.apply(web("Local", Some(32003)));
    wait_for_answer(&netns, 32003, 200, 1);
    server.delete("v1", "Service", Some("shop"), "web");
    wait_refused(&netns, 32003);
    assert_eq!(watcher.terminate(), Some(0));
}

/// The file watch serves them too: Kubernetes YAML with `sync --watch -f`.
pub fn a_file_watch_serves_health_check_node_ports() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let netns = sandbox.server_ns.clone();
    let file = sandbox.scratch("web.json");
    let list = |service: Value| json!({ "apiVersion": "v1", "kind": "List", "items": [service, endpoint_on("node-a")] });
    std::fs::write(&file, list(web("Local", Some(32001))).to_string()).unwrap();
    let watcher =
        Watcher::start_in(&sandbox, &netns, &["-f", file.to_str().unwrap(), "--node-name", "node-a"]);
    watcher.wait_stdout("sync: frontends");
    wait_for_answer(&netns, 32001, 200, 1);
    std::fs::write(&file, list(web("Cluster", None)).to_string()).unwrap();
    wait_refused(&netns, 32001);
    assert_eq!(watcher.terminate(), Some(0));
}

/// And from balctl's TOML: `health_check_node_port` of an
/// `external_traffic_policy = "local"` service (no namespace), its count
/// the `local_backends` at each port's target port.
pub fn a_toml_file_serves_health_check_node_ports() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let netns = sandbox.server_ns.clone();
    let file = sandbox.scratch("web.toml");
    let toml = |local: &str, health_check: &str| {
        format!(
            "[[service]]\nname = \"web\"\naddresses = [\"198.18.0.10\"]\nbackends = [\"192.0.2.2\", \
             \"192.0.2.3\"]\nlocal_backends = [{local}]\nexternal_traffic_policy = \"local\"\n\
             {health_check}load_balancer_addresses = [\"198.18.0.11\"]\nports = [{{ port = 80, target_port = \
             8080, node_port = 30080 }}, {{ port = 81, target_port = 8080 }}]\n"
        )
    };
    std::fs::write(&file, toml("\"192.0.2.2\", \"192.0.2.3\"", "health_check_node_port = 32004\n")).unwrap();
    let watcher =
        Watcher::start_in(&sandbox, &netns, &["-f", file.to_str().unwrap(), "--node-name", "node-a"]);
    watcher.wait_stdout("sync: frontends");
    // Two local backends, one target port: two endpoints.
    wait_for_answer_of(&netns, 32004, 200, ("", "web"), 2);
    std::fs::write(&file, toml("", "health_check_node_port = 32004\n")).unwrap();
    wait_for_answer_of(&netns, 32004, 503, ("", "web"), 0);
    std::fs::write(&file, toml("\"192.0.2.3\"", "")).unwrap();
    wait_refused(&netns, 32004);
    assert_eq!(watcher.terminate(), Some(0));
}
