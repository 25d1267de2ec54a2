//! The manifests in deploy/ and deploy/crds/ are valid Kubernetes objects:
//! each document deserializes into its k8s-openapi type, and serializing
//! it back gives the document again. k8s-openapi skips fields it does not
//! know, so the round trip is what catches a misspelled or misplaced field
//! (the API server would drop it, or refuse it). Then what they hold: the
//! image scripts/image builds, the agent's probes, ports, resources and
//! rollout, the uninstall DaemonSet, the systemd unit. Needs no privileges.

use std::path::Path;

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, HTTPGetAction, Namespace, PodSpec, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// The documents of every YAML file in `dir`, with where each comes from.
pub fn documents(dir: &str) -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    paths.sort();
    let mut found = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let values =
            serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (i, value) in values.into_iter().enumerate() {
            found.push((format!("{} document {i}", path.display()), value));
        }
    }
    found
}

/// The document as `T`, requiring that nothing was lost on the way.
pub fn typed<T: DeserializeOwned + Serialize>(at: &str, document: &Value) -> T {
    let object: T = serde_json::from_value(document.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    let again = serde_json::to_value(&object).unwrap();
    if let Some(difference) = difference("", document, &again) {
        panic!("{at}: {difference} (a field k8s-openapi does not know, or misplaced)");
    }
    object
}

/// The first place where `a` (the document) and `b` (its round trip) differ.
fn difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let at = format!("{path}.{key}");
                let found = match b.get(key) {
                    Some(other) => difference(&at, value, other),
                    None => Some(format!("{at} is dropped")),
                };
                if found.is_some() {
                    return found;
                }
            }
            b.keys().find(|k| !a.contains_key(*k)).map(|k| format!("{path}.{k} appears"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (a, b))| difference(&format!("{path}[{i}]"), a, b))
        }
        // JSON schema bounds are floats in k8s-openapi: 65535 comes back as 65535.0.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path} is {a} but comes back as {b}")),
    }
}

pub fn the_manifests_are_valid_kubernetes_objects() {
    let (mut service_accounts, mut role_rules, mut bindings, mut daemonsets, mut crds) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut namespaces = Vec::new();
    for (at, document) in documents("deploy").into_iter().chain(documents("deploy/crds")) {
        match (document["apiVersion"].as_str(), document["kind"].as_str()) {
            (Some("v1"), Some("Namespace")) => namespaces.push(typed::<Namespace>(&at, &document)),
            (Some("v1"), Some("ServiceAccount")) => {
                service_accounts.push(typed::<ServiceAccount>(&at, &document))
            }
            (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
                role_rules.extend(typed::<ClusterRole>(&at, &document).rules.unwrap_or_default())
            }
            (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => {
                bindings.push(typed::<ClusterRoleBinding>(&at, &document))
            }
            (Some("apps/v1"), Some("DaemonSet")) => daemonsets.push(typed::<DaemonSet>(&at, &document)),
            (Some("apiextensions.k8s.io/v1"), Some("CustomResourceDefinition")) => {
                crds.push(typed::<CustomResourceDefinition>(&at, &document))
            }
            other => panic!("{at}: unexpected {other:?}"),
        }
    }
    let crd_names: Vec<&str> = crds.iter().map(|c| c.metadata.name.as_deref().unwrap()).collect();
    assert_eq!(crd_names, ["balancingpolicies.balancing.elf.io", "localredirectpolicies.balancing.elf.io"]);
    assert_eq!(namespaces.len(), 1);
    let namespace = namespaces[0].metadata.name.clone().unwrap();
    let [account] = service_accounts.as_slice() else { panic!("one ServiceAccount: {service_accounts:?}") };
    assert_eq!(account.metadata.namespace.as_ref(), Some(&namespace));
    let account_name = account.metadata.name.clone().unwrap();

    // Read-only access to exactly what balctl reads.
    let mut granted = Vec::new();
    for rule in &role_rules {
        assert_eq!(rule.verbs, ["get", "list", "watch"], "{rule:?}");
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                granted.push(format!("{resource}.{group}").trim_end_matches('.').to_owned());
            }
        }
    }
    granted.sort();
    let readable = [
        "balancingpolicies.balancing.elf.io",
        "endpointslices.discovery.k8s.io",
        "localredirectpolicies.balancing.elf.io",
        "nodes",
        "pods",
        "serviceimports.multicluster.x-k8s.io",
        "services",
    ];
    assert_eq!(granted, readable);
    let [binding] = bindings.as_slice() else { panic!("one ClusterRoleBinding") };
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!((subject.kind.as_str(), subject.name.as_str()), ("ServiceAccount", account_name.as_str()));
    assert_eq!(subject.namespace.as_ref(), Some(&namespace));

    let [daemonset, uninstall] = daemonsets.as_slice() else {
        panic!("two DaemonSets, balctl's and deploy/uninstall.yaml's: {daemonsets:?}")
    };
    assert_eq!(daemonset.metadata.namespace.as_ref(), Some(&namespace));
    let pod = daemonset.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_ref(), Some(&account_name));
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    assert!(tolerates_every_taint(pod), "balctl runs on every node");
    let host_path = |pod: &PodSpec, volume: &str| {
        let volumes = pod.volumes.as_ref().unwrap();
        let found = volumes.iter().find(|v| v.name == volume).unwrap_or_else(|| panic!("volume {volume}"));
        found.host_path.as_ref().unwrap().path.clone()
    };
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let sync = &pod.containers[0];
    let uninstall_pod = uninstall.spec.template.spec.as_ref().unwrap();
    let unload = &uninstall_pod.containers[0];
    for (pod, container) in [(pod, init), (pod, sync), (uninstall_pod, unload)] {
        // Exactly the image scripts/image builds, with Cargo.toml's version.
        assert_eq!(container.image.as_deref(), Some(IMAGE), "{}", container.name);
        assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"), "{}", container.name);
        let mounts = container.volume_mounts.as_ref().unwrap();
        let bpffs = mounts.iter().find(|m| m.mount_path == "/sys/fs/bpf").expect("mounts /sys/fs/bpf");
        assert_eq!(host_path(pod, &bpffs.name), "/sys/fs/bpf");
        let state = mounts.iter().find(|m| m.mount_path == "/var/lib/balctl").expect("the state dir");
        assert_eq!(host_path(pod, &state.name), "/var/lib/balctl");
        let resources = container.resources.as_ref().expect("resources");
        let request = mebibytes(&resources.requests.as_ref().expect("requests")["memory"]);
        let limit = mebibytes(&resources.limits.as_ref().expect("limits")["memory"]);
        assert!(limit >= request, "{}: a memory limit below the request", container.name);
    }
    // The init container loads into the host's cgroup2 mount.
    let command = init.command.as_ref().unwrap();
    assert_eq!(command[..3], ["balctl", "load", "--cgroup"]);
    let mounts = init.volume_mounts.as_ref().unwrap();
    let cgroup = mounts.iter().find(|m| m.mount_path == command[3]).expect("the cgroup2 mount");
    assert_eq!(host_path(pod, &cgroup.name), "/sys/fs/cgroup");
    // And the tc programs on the node's devices (north-south, issue 18).
    assert_eq!(init.args.as_deref(), Some(["--devices".to_owned(), "auto".to_owned()].as_slice()));

    // The agent: sync --kube --watch for this node, health and metrics on
    // the node's loopback, on ports it declares.
    let args = sync.args.as_ref().unwrap();
    for flag in ["--kube", "--watch", "--node-name", "$(NODE_NAME)"] {
        assert!(args.iter().any(|a| a == flag), "sync args lack {flag}: {args:?}");
    }
    let node_name = sync.env.as_ref().unwrap().iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node_name.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    let loopback_port = |flag: &str| -> i32 {
        let at = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("sync args lack {flag}"));
        let addr: std::net::SocketAddr = args[at + 1].parse().expect("an address");
        assert!(addr.ip().is_loopback(), "{flag} {addr}: only the node's loopback");
        i32::from(addr.port())
    };
    let health = loopback_port("--health-addr");
    // kube-proxy's health port (0.0.0.0:10256): it often runs beside balctl.
    assert_ne!(health, 10256);
    let metrics = loopback_port("--metrics-addr");
    let declared = |port: i32| sync.ports.as_ref().unwrap().iter().any(|p| p.container_port == port);
    assert!(declared(health) && declared(metrics), "the health and metrics ports are declared");
    let probes = [
        ("startupProbe", &sync.startup_probe, "/readyz"),
        ("livenessProbe", &sync.liveness_probe, "/livez"),
        ("readinessProbe", &sync.readiness_probe, "/readyz"),
    ];
    for (which, probe, path) in probes {
        let probe = probe.as_ref().unwrap_or_else(|| panic!("no {which}"));
        let get = probe.http_get.as_ref().unwrap_or_else(|| panic!("{which} is not httpGet"));
        assert_eq!(get.path.as_deref(), Some(path), "{which}");
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"), "{which}: where the agent listens");
        assert_eq!(probe_port(sync, get), health, "{which}");
    }
    // Memory for 10,000 Services (bench/RESULTS.md, "Agent memory").
    let resources = sync.resources.as_ref().unwrap();
    let request = mebibytes(&resources.requests.as_ref().unwrap()["memory"]);
    assert!(request >= AGENT_MIB_AT_10K_SERVICES, "{request} MiB requested");
    assert!(resources.requests.as_ref().unwrap().contains_key("cpu"));

    // Rollouts wait for the next agent to be ready, one node at a time,
    // never two agents on one node.
    let spec = &daemonset.spec;
    assert!(spec.min_ready_seconds.unwrap_or(0) > 0, "minReadySeconds");
    let rolling = spec.update_strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));

    // The uninstall DaemonSet: same namespace, no API access, every node,
    // unload everything and stay; counted done only after minReadySeconds.
    assert_eq!(uninstall.metadata.namespace.as_ref(), Some(&namespace));
    assert_eq!(uninstall_pod.automount_service_account_token, Some(false));
    assert_eq!(uninstall_pod.service_account_name, None);
    assert!(tolerates_every_taint(uninstall_pod), "uninstalls from every node");
    assert!(uninstall.spec.min_ready_seconds.unwrap_or(0) > 0, "minReadySeconds");
    assert_eq!(unload.command.as_ref().unwrap(), &["balctl", "unload", "--yes", "--purge", "--stay"]);
    // The reserved ports `load --devices` changed are the node's network
    // namespace's, written through /proc/sys, which the runtimes mount
    // writable only in privileged containers: `load` reserves them there,
    // `unload` gives them back there (tests/cli/image.rs runs both).
    assert_eq!(uninstall_pod.host_network, Some(true), "unload in the node's network namespace");
    for container in [init, unload] {
        let context = container.security_context.as_ref().unwrap();
        assert_eq!(context.privileged, Some(true), "{}: a writable /proc/sys", container.name);
    }

    // The systemd unit: health and metrics on loopback, restarted on failure.
    let unit = read("deploy/balctl.service");
    let exec_start = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    for flag in ["--health-addr 127.0.0.1:", "--metrics-addr 127.0.0.1:"] {
        assert!(exec_start.contains(flag), "{exec_start}");
    }
    assert!(unit.lines().any(|l| l == "Restart=always"), "the unit restarts on failure");

    for file in ["deploy/daemonset.yaml", "deploy/uninstall.yaml", "deploy/balctl.service"] {
        let text = read(file).to_lowercase();
        for stale in ["being built", "no published image"] {
            assert!(!text.contains(stale), "{file} still says \"{stale}\"");
        }
    }
}

/// The image deploy/ runs: what scripts/image builds.
pub const IMAGE: &str = concat!("balctl:", env!("CARGO_PKG_VERSION"));

/// The agent's peak RSS at 10,000 Services of 10 endpoints (bench/RESULTS.md).
const AGENT_MIB_AT_10K_SERVICES: u64 = 178;

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
}

fn tolerates_every_taint(pod: &PodSpec) -> bool {
    pod.tolerations
        .as_ref()
        .unwrap()
        .iter()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
}

/// The port an httpGet probe names, a number or a declared port's name.
pub fn probe_port(container: &Container, get: &HTTPGetAction) -> i32 {
    match &get.port {
        IntOrString::Int(port) => *port,
        IntOrString::String(name) => {
            let ports = container.ports.as_ref().unwrap();
            ports.iter().find(|p| p.name.as_ref() == Some(name)).expect("the probe's port").container_port
        }
    }
}

/// A memory quantity in MiB (`Mi` and `Gi` suffixes, as deploy/ writes them).
fn mebibytes(quantity: &Quantity) -> u64 {
    let text = quantity.0.as_str();
    match text.split_at(text.len() - 2) {
        (n, "Mi") => n.parse().unwrap(),
        (n, "Gi") => n.parse::<u64>().unwrap() * 1024,
        _ => panic!("write memory as Mi or Gi: {text}"),
    }
}
