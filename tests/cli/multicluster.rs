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

/// Waits (at most 10 s) until 20 connections to the ClusterSetIP reach
/// exactly `ids`.
fn wait_reached(sandbox: &Sandbox, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = sandbox.client(&["connect", "--to", CLUSTER_SET_IP, "--count", "20"]);
        let reached: Vec<&str> =
            report["backends"].as_object().map_or(Vec::new(), |b| b.keys().map(String::as_str).collect());
        if report["failed"] == 0 && reached == ids {
            return;
        }
        assert!(Instant::now() < deadline, "reached {report}, expected {ids:?}");
        thread::sleep(Duration::from_millis(100));
    }
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
    wait_reached(&sandbox, &["east", "west"]);
    let services = sandbox.balctl_json(&["dump", "services", "--vip", "198.18.4.10"]);
    assert_eq!(services["services"][0]["name"], "serviceimport/shop/web", "{services:#}");
    // Watching: a cluster that stops exporting takes its endpoints away.
    let watcher =
        Watcher::start_with(&sandbox, &[], &["--kube", "--kubeconfig", kubeconfig, "--node-name", "node-a"]);
    watcher.wait_stdout("sync:");
    server.delete("discovery.k8s.io/v1", "EndpointSlice", Some("shop"), "imported-web-east");
    wait_reached(&sandbox, &["west"]);
    watcher.terminate();
}
