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
    try_lookup(sandbox, name, key).unwrap_or_else(|| panic!("no {key:?} in the {name} map"))
}

/// The value bytes of `key` in the pinned map `name`; None when the map
/// has no such key (for an LPM trie: no prefix holds it).
fn try_lookup(sandbox: &Sandbox, name: &str, key: &[u8]) -> Option<Vec<u8>> {
    let pin = sandbox.pins.join("maps").join(name);
    let key: Vec<String> = key.iter().map(u8::to_string).collect();
    let mut args = vec!["-j", "map", "lookup", "pinned", pin.to_str().unwrap(), "key"];
    args.extend(key.iter().map(String::as_str));
    let output = Command::new("bpftool").args(&args).output().expect("run bpftool");
    let entry: Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    // bpftool -j says `null` (exit 254) for a key the map does not hold.
    if entry.is_null() {
        return None;
    }
    assert!(output.status.success(), "bpftool: {entry} {}", String::from_utf8_lossy(&output.stderr));
    let bytes = entry["value"].as_array().expect("value bytes");
    Some(
        bytes
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect(),
    )
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
/// backend's flags (the backend follows 20 bytes: id, count, flags,
/// service id, affinity timeout, cell).
fn slot_backend_flags(sandbox: &Sandbox, ip: [u8; 4], port: u16, scope: u8, slot: u16) -> u8 {
    lookup(sandbox, "services", &service_key(ip, port, scope, slot))[20 + 19]
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

/// A NodePort Service shop/api (node port 30443) with `annotations` and
/// an endpoint at each of `endpoints` (on node-b).
fn api(annotations: &str, endpoints: &[&str]) -> String {
    let endpoints: String =
        endpoints.iter().map(|ip| format!("- {{addresses: [{ip}], nodeName: node-b}}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: shop\n  annotations: {{{annotations}}}\n\
         spec:\n  type: NodePort\n  clusterIP: 198.18.0.40\n  ports: [{{port: 443, nodePort: 30443, targetPort: 8443}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: api-1\n  namespace: shop\n  \
         labels: {{kubernetes.io/service-name: api}}\naddressType: IPv4\nendpoints:\n{endpoints}\
         ports: [{{name: \"\", port: 8443, protocol: TCP}}]\n"
    )
}

/// Every entry of the pinned map `name` as (key, value) bytes, read with
/// bpftool.
pub fn dump_map(sandbox: &Sandbox, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let pin = sandbox.pins.join("maps").join(name);
    let output = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", pin.to_str().unwrap()])
        .output()
        .expect("run bpftool");
    assert!(output.status.success(), "bpftool: {}", String::from_utf8_lossy(&output.stderr));
    let entries: Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    let bytes = |value: &Value| -> Vec<u8> {
        let bytes = value.as_array().expect("bytes");
        bytes
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect()
    };
    entries.as_array().expect("entries").iter().map(|e| (bytes(&e["key"]), bytes(&e["value"]))).collect()
}

/// The Maglev table of the frontend with `service_id`, read from the
/// maglev map, as backend addresses (`IP:PORT`) in index order.
fn maglev_table(sandbox: &Sandbox, service_id: u64) -> Vec<String> {
    let backends = sandbox.balctl_json(&["dump", "backends"]);
    let address_of = |id: u32| -> String {
        let backend = backends["backends"].as_array().unwrap().iter().find(|b| b["backend_id"] == id);
        let backend =
            backend.unwrap_or_else(|| panic!("maglev entry names backend {id}, not in the backends map"));
        format!("{}:{}", backend["address"].as_str().unwrap(), backend["port"])
    };
    let word = |bytes: &[u8]| u32::from_ne_bytes(bytes.try_into().unwrap());
    // Chunks of 16 entries: (chunk number, its backend ids).
    let mut chunks: Vec<(u32, Vec<u32>)> = dump_map(sandbox, "maglev")
        .into_iter()
        .filter(|(key, _)| u64::from(word(&key[..4])) == service_id)
        .map(|(key, value)| (word(&key[4..]), value.chunks(4).map(word).collect()))
        .collect();
    chunks.sort_unstable();
    assert!(chunks.iter().enumerate().all(|(i, (chunk, _))| *chunk as usize == i), "a hole in the table");
    let size = node_port_entry(sandbox)["maglev_table_size"].as_u64().expect("a Maglev table") as usize;
    let entries: Vec<u32> = chunks.into_iter().flat_map(|(_, ids)| ids).collect();
    assert_eq!(entries.len(), size.div_ceil(16) * 16, "the table's chunks");
    assert!(entries[size..].iter().all(|&id| id == 0), "past the table's end: no backend");
    entries[..size].iter().map(|&backend_id| address_of(backend_id)).collect()
}

fn node_port_entry(sandbox: &Sandbox) -> Value {
    service(&services(sandbox), "0.0.0.0:30443/tcp@external").clone()
}

fn sync_as(sandbox: &Sandbox, node: &str, yaml: &str) -> std::process::Output {
    let file = sandbox.scratch("api.yaml");
    std::fs::write(&file, yaml).unwrap();
    sandbox.balctl(&["sync", "--node-name", node, "-f", file.to_str().unwrap()])
}

/// External entries choose by Maglev by default: the table is in the
/// maglev map, the same on every node whatever its backend ids, each
/// backend holds its share, and a new backend moves few entries. The
/// annotation switches to random (the table goes); a table the map cannot
/// hold changes nothing.
pub fn maglev_tables_are_the_same_on_every_node() {
    let four = ["192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5"];
    let node_a = Sandbox::new();
    node_a.load();
    assert!(sync_as(&node_a, "node-a", &api("", &four[..3])).status.success());
    let entry = node_port_entry(&node_a);
    assert_eq!(entry["maglev_table_size"], 509, "{entry}");
    assert_eq!(service(&services(&node_a), "0.0.0.0:30443/tcp")["maglev_table_size"], Value::Null);
    let before = maglev_table(&node_a, entry["service_id"].as_u64().unwrap());
    assert_eq!(before.len(), 509);
    for backend in &four[..3] {
        let share = before.iter().filter(|b| b.starts_with(&format!("{backend}:"))).count();
        assert!((169..=170).contains(&share), "{backend}: {share} of 509");
    }

    // Another node, whose backend ids differ (another service took the
    // first ones), computes the same table.
    let node_b = Sandbox::new();
    node_b.load_with(&["--map-size", "maglev=64"]);
    let other =
        api("", &["192.0.2.9", "192.0.2.10"]).replace("name: api", "name: other").replace("30443", "30444");
    let other =
        other.replace("198.18.0.40", "198.18.0.41").replace("service-name: api", "service-name: other");
    let other_file = node_b.scratch("other.yaml");
    std::fs::write(&other_file, other).unwrap();
    node_b.balctl_ok(&["sync", "--node-name", "node-b", "-f", other_file.to_str().unwrap()]);
    assert!(sync_as(&node_b, "node-b", &api("", &four[..3])).status.success());
    let on_b = node_port_entry(&node_b);
    assert_ne!(on_b["backends"][0]["backend_id"], entry["backends"][0]["backend_id"]);
    assert_eq!(maglev_table(&node_b, on_b["service_id"].as_u64().unwrap()), before);

    // A fourth backend: the same table size, at most 1/4 + 10% moves.
    assert!(sync_as(&node_a, "node-a", &api("", &four)).status.success());
    let after = maglev_table(&node_a, entry["service_id"].as_u64().unwrap());
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(moved > 0 && moved as f64 <= 509.0 * (0.25 + 0.10), "{moved} of 509 moved");

    // random: no table, no flag.
    let random = api("balancing.elf.io/lb-algorithm: random", &four);
    assert!(sync_as(&node_a, "node-a", &random).status.success());
    assert_eq!(node_port_entry(&node_a)["maglev_table_size"], Value::Null);
    assert!(dump_map(&node_a, "maglev").is_empty());
    let flags = master_flags(&node_a, [0, 0, 0, 0], 30443, EXTERNAL);
    assert_eq!(flags & (1 << 3), 0, "SERVICE_FLAG_MAGLEV still set: {flags:#x}");
    // A bad annotation: exit 2 naming the file, line and field.
    let refused = sync_as(&node_a, "node-a", &api("balancing.elf.io/lb-algorithm: ring", &four));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("api.yaml:6:") && stderr.contains("lb-algorithm: `ring` is not one of"),
        "{stderr}"
    );

    // Node B's maglev map holds 64 chunks of 16 entries, 16 of them the
    // other service's table of 251: 6 backends need a table of 1021 (64
    // chunks), which is refused before anything is written.
    let before =
        (node_b.balctl_ok(&["dump", "-o", "json"]), std::fs::read(node_b.state.join("state.bin")).unwrap());
    let six = api("", &["192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.6", "192.0.2.7"]);
    let refused = sync_as(&node_b, "node-b", &six);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the maglev map would need") && stderr.contains("--map-size maglev="),
        "{stderr}"
    );
    let after =
        (node_b.balctl_ok(&["dump", "-o", "json"]), std::fs::read(node_b.state.join("state.bin")).unwrap());
    assert!(before == after, "a refused sync changed something");
}

/// The source_ranges trie key of an IPv4 client of the frontend with
/// `service_id`: every bit counts (32 of the id, 128 of the address).
fn client_key(service_id: u64, ip: [u8; 4]) -> Vec<u8> {
    let mut key = 160u32.to_ne_bytes().to_vec();
    key.extend((service_id as u32).to_be_bytes());
    key.extend([0; 10]);
    key.extend([0xff, 0xff]);
    key.extend(ip);
    key
}

/// loadBalancerSourceRanges: the load-balancer IP's external entry gets
/// the flag and its prefixes in the source_ranges trie (where a client
/// inside them is found and one outside is not); no other entry does.
/// Removed, the flag and the prefixes go; a bad CIDR changes nothing.
pub fn source_ranges_restrict_the_load_balancer_ip_from_outside() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let with_ranges = |ranges: &str| {
        web("Cluster", "node-a").replace(
            "  externalTrafficPolicy: Cluster\n",
            &format!("  externalTrafficPolicy: Cluster\n  loadBalancerSourceRanges: [{ranges}]\n"),
        )
    };
    let synced = sync(&sandbox, &with_ranges("203.0.113.0/24, 198.51.100.7/32, \"2001:db8:77::/48\""));
    assert!(synced.status.success(), "{}", String::from_utf8_lossy(&synced.stderr));
    let all = services(&sandbox);
    for entry in &all {
        let frontend = entry["frontend"].as_str().unwrap();
        let expected: &[&str] = if frontend == "198.18.1.30:80/tcp@external" {
            &["203.0.113.0/24", "198.51.100.7/32"]
        } else {
            &[]
        };
        assert_eq!(entry["source_ranges"], serde_json::json!(expected), "{frontend}");
    }
    const SOURCE_RANGES: u16 = 1 << 4;
    for (frontend, ip, port, _) in FRONTENDS {
        let flags = master_flags(&sandbox, ip, port, EXTERNAL);
        let restricted = frontend == "198.18.1.30:80/tcp";
        assert_eq!(flags & SOURCE_RANGES != 0, restricted, "{frontend}: {flags:#x}");
        assert_eq!(master_flags(&sandbox, ip, port, 0) & SOURCE_RANGES, 0, "{frontend}");
    }
    let id = service(&all, "198.18.1.30:80/tcp@external")["service_id"].as_u64().unwrap();
    for (client, inside) in [
        ([203, 0, 113, 9], true),
        ([198, 51, 100, 7], true),
        ([198, 51, 100, 8], false),
        ([192, 0, 2, 50], false),
    ] {
        assert_eq!(
            try_lookup(&sandbox, "source_ranges", &client_key(id, client)).is_some(),
            inside,
            "{client:?}"
        );
    }
    // Another frontend's id finds nothing, even inside the prefixes.
    let other = service(&all, "0.0.0.0:30080/tcp@external")["service_id"].as_u64().unwrap();
    assert!(try_lookup(&sandbox, "source_ranges", &client_key(other, [203, 0, 113, 9])).is_none());

    let refused = sync(&sandbox, &with_ranges("203.0.113.0/24, 198.51.100.0/33"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("web.yaml:9:") && stderr.contains("loadBalancerSourceRanges[1]"), "{stderr}");
    assert!(try_lookup(&sandbox, "source_ranges", &client_key(id, [203, 0, 113, 9])).is_some());

    assert!(sync(&sandbox, &web("Cluster", "node-a")).status.success());
    assert!(dump_map(&sandbox, "source_ranges").is_empty());
    assert_eq!(master_flags(&sandbox, [198, 18, 1, 30], 80, EXTERNAL) & SOURCE_RANGES, 0);
}
