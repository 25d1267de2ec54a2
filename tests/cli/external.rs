//! Issue 18, the control plane of north-south: every node port,
//! load-balancer IP and external IP of a Service also gets an entry of the
//! external scope (what the packet programs of `load --devices` read), with
//! externalTrafficPolicy's backends, and this node's backends are flagged
//! local in the backends map and in every slot copy. Read back through
//! `dump` and, for what it does not show, bpftool.

use std::process::Command;

use serde_json::Value;

use crate::support::{LAYERS_KNOWN, SERVICE_LAYER, Sandbox};

/// `SERVICE_FLAG_LOCAL_ONLY` and `BACKEND_FLAG_LOCAL` (balctl_common).
const LOCAL_ONLY: u16 = 1 << 1;
const BACKEND_LOCAL: u8 = 1;

/// A LoadBalancer Service shop/web (cluster IP 198.18.0.30, external IP
/// 198.18.2.30, ingress IP 198.18.1.30, node port 30080) with `policy`,
/// and its endpoints: 192.0.2.2 on `node_of_2`, 192.0.2.3 on node-b.
fn web(policy: &str, node_of_2: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  type: LoadBalancer\n  \
         clusterIP: 198.18.0.30\n  externalIPs: [198.18.2.30]\n  externalTrafficPolicy: {policy}\n  \
         ports: [{{name: http, port: 80, nodePort: 30080, targetPort: 8080}}]\n\
         status: {{loadBalancer: {{ingress: [{{ip: 198.18.1.30}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: shop\n  \
         labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints:\n\
         - {{addresses: [192.0.2.2], nodeName: {node_of_2}}}\n- {{addresses: [192.0.2.3], nodeName: node-b}}\n\
         ports: [{{name: http, port: 8080, protocol: TCP}}]\n"
    )
}

fn sync(sandbox: &Sandbox, yaml: &str) -> std::process::Output {
    let file = sandbox.scratch("web.yaml");
    std::fs::write(&file, yaml).unwrap();
    sandbox.balctl(&["sync", "--node-name", "node-a", "-f", file.to_str().unwrap()])
}

/// The entries of `dump services -o json`, by frontend.
fn services(sandbox: &Sandbox) -> Vec<Value> {
    sandbox.balctl_json(&["dump", "services"])["services"].as_array().expect("a list of services").clone()
}

fn service<'a>(services: &'a [Value], frontend: &str) -> &'a Value {
    services
        .iter()
        .find(|s| s["frontend"] == frontend)
        .unwrap_or_else(|| panic!("no {frontend}: {services:#?}"))
}

/// A frontend's backends as `IP:PORT`, in slot order.
fn backends(service: &Value) -> Vec<String> {
    let slots = service["backends"].as_array().expect("backends");
    slots.iter().map(|slot| format!("{}:{}", slot["address"].as_str().unwrap(), slot["port"])).collect()
}

/// The value bytes of `key` in the pinned map `name`, read with bpftool.
fn lookup(sandbox: &Sandbox, name: &str, key: &[u8]) -> Vec<u8> {
    let pin = sandbox.pins.join("maps").join(name);
    let key: Vec<String> = key.iter().map(u8::to_string).collect();
    let mut args = vec!["-j", "map", "lookup", "pinned", pin.to_str().unwrap(), "key"];
    args.extend(key.iter().map(String::as_str));
    let output = Command::new("bpftool").args(&args).output().expect("run bpftool");
    assert!(output.status.success(), "bpftool: {}", String::from_utf8_lossy(&output.stderr));
    let entry: Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    let bytes = entry["value"].as_array().expect("value bytes");
    bytes
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect()
}

/// The services-map key (`ServiceKey`) of an IPv4 frontend's entry.
fn service_key(ip: [u8; 4], port: u16, scope: u8, slot: u16) -> Vec<u8> {
    let mut key = vec![0u8; 10];
    key.extend([0xff, 0xff]);
    key.extend(ip);
    key.extend(port.to_be_bytes());
    key.extend([6, scope]);
    key.extend(slot.to_ne_bytes());
    key.extend([0, 0]);
    key
}

/// `ServiceEntry::flags` of a master entry.
fn master_flags(sandbox: &Sandbox, ip: [u8; 4], port: u16, scope: u8) -> u16 {
    let value = lookup(sandbox, "services", &service_key(ip, port, scope, 0));
    u16::from_ne_bytes([value[6], value[7]])
}

/// `ServiceEntry::backend.flags` of a slot entry: the copy of its
/// backend's flags.
fn slot_backend_flags(sandbox: &Sandbox, ip: [u8; 4], port: u16, scope: u8, slot: u16) -> u8 {
    lookup(sandbox, "services", &service_key(ip, port, scope, slot))[16 + 19]
}

const EXTERNAL: u8 = 3;
const FRONTENDS: [(&str, [u8; 4], u16, &str); 3] = [
    ("198.18.2.30:80/tcp", [198, 18, 2, 30], 80, "ExternalIP"),
    ("198.18.1.30:80/tcp", [198, 18, 1, 30], 80, "LoadBalancer"),
    ("0.0.0.0:30080/tcp", [0, 0, 0, 0], 30080, "NodePort"),
];

pub fn external_frontends_follow_the_traffic_policy_and_locality() {
    let sandbox = Sandbox::new();
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.serve("b3", &["192.0.2.3:8080"], &[]);
    sandbox.load();
    let synced = sync(&sandbox, &web("Local", "node-a"));
    assert!(synced.status.success(), "{}", String::from_utf8_lossy(&synced.stderr));

    // externalTrafficPolicy Local: the external entries hold node-a's
    // endpoint only and drop without it; the socket entries hold both.
    let all = services(&sandbox);
    assert_eq!(all.len(), 7, "{all:#?}");
    for (frontend, ip, port, kind) in FRONTENDS {
        let external = service(&all, &format!("{frontend}@external"));
        assert_eq!((&external["scope"], &external["type"]), (&"external".into(), &kind.into()));
        assert_eq!(external["name"], "service/shop/web");
        assert_eq!(backends(external), ["192.0.2.2:8080"], "{frontend}");
        assert_eq!(backends(service(&all, frontend)), ["192.0.2.2:8080", "192.0.2.3:8080"]);
        assert_ne!(external["service_id"], service(&all, frontend)["service_id"]);
        assert_eq!(master_flags(&sandbox, ip, port, EXTERNAL) & LOCAL_ONLY, LOCAL_ONLY, "{frontend}");
        assert_eq!(master_flags(&sandbox, ip, port, 0) & LOCAL_ONLY, 0, "{frontend}");
        assert_eq!(slot_backend_flags(&sandbox, ip, port, EXTERNAL, 1), BACKEND_LOCAL, "{frontend}");
        assert_eq!(slot_backend_flags(&sandbox, ip, port, 0, 2), 0, "{frontend}");
    }
    let dumped = sandbox.balctl_json(&["dump", "backends"]);
    let local: Vec<(&str, bool)> = (dumped["backends"].as_array().unwrap().iter())
        .map(|b| (b["address"].as_str().unwrap(), b["local"].as_bool().unwrap()))
        .collect();
    assert_eq!(local, [("192.0.2.2", true), ("192.0.2.3", false)]);
    let table = sandbox.balctl_ok(&["dump", "backends"]);
    assert!(table.lines().any(|l| l.contains("192.0.2.2:8080") && l.contains("local")), "{table}");
    // The socket programs never look the external layer up.
    assert_eq!(sandbox.layers(), LAYERS_KNOWN | SERVICE_LAYER);
    // And sockets still use the Service's entries: both endpoints.
    let mut reached = sandbox.reached("198.18.1.30:80", 40);
    reached.sort();
    assert_eq!(reached, ["b2", "b3"]);

    // Cluster: every endpoint, no drop; 192.0.2.2 moving to node-c is a
    // new backend, no longer local.
    let id_of_2 = |sandbox: &Sandbox| {
        let dumped = sandbox.balctl_json(&["dump", "backends"]);
        let found =
            dumped["backends"].as_array().unwrap().iter().find(|b| b["address"] == "192.0.2.2").cloned();
        found.expect("192.0.2.2 is a backend")["backend_id"].as_u64().unwrap()
    };
    let local_id = id_of_2(&sandbox);
    assert!(sync(&sandbox, &web("Cluster", "node-c")).status.success());
    let all = services(&sandbox);
    for (frontend, ip, port, _) in FRONTENDS {
        let external = service(&all, &format!("{frontend}@external"));
        assert_eq!(backends(external), ["192.0.2.2:8080", "192.0.2.3:8080"], "{frontend}");
        assert_eq!(master_flags(&sandbox, ip, port, EXTERNAL) & LOCAL_ONLY, 0, "{frontend}");
        assert_eq!(slot_backend_flags(&sandbox, ip, port, EXTERNAL, 1), 0, "{frontend}");
    }
    assert_ne!(id_of_2(&sandbox), local_id);
    assert!(
        sandbox.balctl_json(&["dump", "backends"])["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["local"] == false)
    );

    // A policy the API server would refuse: exit 2 naming the file, line
    // and field, and nothing changed.
    let before =
        (sandbox.balctl_ok(&["dump", "-o", "json"]), std::fs::read(sandbox.state.join("state.bin")).unwrap());
    let refused = sync(&sandbox, &web("Global", "node-a"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("web.yaml:8:26:") && stderr.contains("externalTrafficPolicy"), "{stderr}");
    let after =
        (sandbox.balctl_ok(&["dump", "-o", "json"]), std::fs::read(sandbox.state.join("state.bin")).unwrap());
    assert!(before == after, "a refused sync changed something");
}
