//! Issue 4, must show 4: every `dump` kind in table, JSON and YAML for a
//! state with IPv4, IPv6, UDP, affinity, a rejecting frontend and Node
//! addresses, with traffic so that affinity and revnat hold entries. Each
//! JSON document is validated against its schema in docs/schema, and
//! `--vip` is checked on every kind.

use std::path::Path;

use serde_json::Value;

use crate::support::{HeldClient, Sandbox};

const KINDS: [&str; 8] = ["services", "backends", "affinity", "revnat", "nodes", "config", "stats", "all"];

/// Validates `document` against docs/schema/`schema_file`. Every schema
/// file is registered under its `$id`, where the references between them
/// (dump-all.json's) point.
pub fn validate(document: &Value, schema_file: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema");
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    let mut url = None;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap()).unwrap();
        let id = schema["$id"].as_str().expect("every schema has an $id").to_owned();
        if entry.file_name() == schema_file {
            url = Some(id.clone());
        }
        compiler.add_resource(&id, schema).expect("schema resource");
    }
    let url = url.unwrap_or_else(|| panic!("no schema file {schema_file}"));
    let index = compiler.compile(&url, &mut schemas).unwrap_or_else(|e| panic!("{schema_file}: {e:#}"));
    if let Err(err) = schemas.validate(document, index) {
        panic!("{schema_file}: {err:#}\n{document:#}");
    }
}

/// `dump KIND [more]` as JSON, validated against the kind's schema.
fn dump(sandbox: &Sandbox, kind: &str, more: &[&str]) -> Value {
    let mut args = vec!["dump", kind];
    args.extend(more);
    let document = sandbox.balctl_json(&args);
    validate(&document, &format!("dump-{kind}.json"));
    document
}

/// The document without what changes between two reads (clock-based ages).
fn timeless(mut document: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(fields) => {
                for key in ["idle_seconds", "seconds_left"] {
                    if let Some(field) = fields.get_mut(key) {
                        *field = Value::Null;
                    }
                }
                fields.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut document);
    document
}

fn strings<'a>(items: &'a Value, field: &str) -> Vec<&'a str> {
    items.as_array().unwrap().iter().map(|item| item[field].as_str().unwrap()).collect()
}

/// The sandbox's state: IPv4 TCP with two backends, IPv6 with affinity, UDP,
/// a frontend without backends and two Nodes; then traffic through each,
/// from clients that keep their sockets open (so that their ways of the
/// sockets map stay) until they drop.
fn populate(sandbox: &Sandbox) -> Vec<HeldClient> {
    sandbox.serve("b2", &["192.0.2.2:8080", "[2001:db8::2]:8080"], &[]);
    sandbox.serve("b3", &["192.0.2.3:8080"], &["192.0.2.5:53"]);
    sandbox.load();
    for args in [
        &[
            "policy",
            "add",
            "web",
            "--vip",
            "198.18.0.10:80",
            "--backend",
            "192.0.2.2:8080",
            "--backend",
            "192.0.2.3:8080",
        ][..],
        &[
            "policy",
            "add",
            "web6",
            "--vip",
            "[2001:db8:5e::10]:80",
            "--backend",
            "[2001:db8::2]:8080",
            "--affinity",
            "60",
        ],
        &["policy", "add", "dns", "--vip", "198.18.0.53:53/udp", "--backend", "192.0.2.5:53"],
        &["policy", "add", "closed", "--vip", "198.18.0.11:80"],
    ] {
        sandbox.balctl_ok(args);
    }
    let nodes = format!("{}/examples/k8s/nodes.yaml", env!("CARGO_MANIFEST_DIR"));
    sandbox.balctl_ok(&["sync", "--node-name", "node-a", "-f", &nodes]);

    // Enough connects that both backends of web are all but sure to be hit.
    let (web, report) = sandbox.hold(&["connect", "--to", "198.18.0.10:80", "--count", "20"]);
    assert_eq!(report["ok"], 20, "{report}");
    assert_eq!(report["backends"].as_object().unwrap().len(), 2, "{report}");
    let (web6, report) = sandbox.hold(&["connect", "--to", "[2001:db8:5e::10]:80", "--count", "3"]);
    assert_eq!(report["ok"], 3, "{report}");
    let (dns, report) = sandbox.hold(&["udp-sendto", "--to", "198.18.0.53:53", "--count", "2"]);
    assert_eq!(report["replies"].as_array().unwrap().len(), 2, "{report}");
    let report = sandbox.client(&["connect", "--to", "198.18.0.11:80"]);
    assert_eq!(report["errors"]["ECONNREFUSED"], 1, "{report}");
    vec![web, web6, dns]
}

pub fn every_format_matches_the_documented_schema() {
    let sandbox = Sandbox::new();
    let _clients = populate(&sandbox);

    // Every kind: a table, JSON that matches its schema, the same as YAML.
    for kind in KINDS {
        let json = dump(&sandbox, kind, &[]);
        let yaml: Value = serde_saphyr::from_str(&sandbox.balctl_ok(&["dump", kind, "-o", "yaml"])).unwrap();
        assert_eq!(timeless(yaml), timeless(json.clone()), "dump {kind}: YAML and JSON differ");
        let table = sandbox.balctl_ok(&["dump", kind]);
        assert!(table.lines().count() > 1, "dump {kind}: {table}");
        // `stats` also has the node's counters.
        let fields: &[&str] = match kind {
            "stats" => &["datapath", "stats"],
            // And whether node ports answer on IPv4 loopback.
            "nodes" => &["loopback", "nodes"],
            _ => &[kind],
        };
        if kind != "all" {
            assert_eq!(json.as_object().unwrap().keys().collect::<Vec<_>>(), fields, "{json:#}");
        }
    }

    let services = dump(&sandbox, "services", &[]);
    let services = &services["services"];
    assert_eq!(
        strings(services, "frontend"),
        [
            "198.18.0.10:80/tcp@balancing",
            "198.18.0.11:80/tcp@balancing",
            "198.18.0.53:53/udp@balancing",
            "[2001:db8:5e::10]:80/tcp@balancing"
        ]
    );
    let web6 = &services[3];
    assert_eq!(web6["name"], "policy/web6");
    assert_eq!(web6["affinity_timeout_seconds"], 60);
    assert_eq!(web6["backends"][0]["address"], "2001:db8::2");
    assert_eq!(services[1]["backend_count"], 0);
    assert_eq!(dump(&sandbox, "backends", &[])["backends"].as_array().unwrap().len(), 4);

    // Affinity: the client namespace's choice for web6, the UDP socket's for dns.
    let affinity = dump(&sandbox, "affinity", &[]);
    let entries = affinity["affinity"].as_array().unwrap();
    let kinds: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (e["owner_kind"].as_str().unwrap(), e["name"].as_str().unwrap(), e["backend"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        kinds,
        [("socket", "policy/dns", "192.0.2.5:53"), ("netns", "policy/web6", "[2001:db8::2]:8080")]
    );
    // Both were used moments ago (the socket's by its datagram).
    for entry in entries {
        let idle = entry["idle_seconds"].as_f64().unwrap();
        assert!((0.0..60.0).contains(&idle), "{affinity:#}");
    }

    // Revnat: one entry per translated socket; the UDP socket's shows its VIP.
    let revnat = dump(&sandbox, "revnat", &[]);
    let entries = &revnat["revnat"];
    assert_eq!(entries.as_array().unwrap().len(), 20 + 3 + 1, "{revnat:#}");
    let dns = entries.as_array().unwrap().iter().find(|e| e["name"] == "policy/dns").unwrap();
    assert_eq!(
        (dns["frontend"].as_str(), dns["backend"].as_str()),
        (Some("198.18.0.53:53"), Some("192.0.2.5:53"))
    );

    let nodes = dump(&sandbox, "nodes", &[]);
    let nodes = nodes["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:#?}");
    assert_eq!(nodes[0]["address"], "192.0.2.1");
    assert_eq!(nodes[0]["names"], serde_json::json!(["node/node-a"]));

    let config = dump(&sandbox, "config", &[]);
    let maps = &config["config"]["maps"];
    assert_eq!(
        strings(maps, "name"),
        [
            "services",
            "backends",
            "membership",
            "affinity",
            "sockets",
            "revnat",
            "nodes",
            "stats",
            "backend_hits",
            "conns",
            "datapath_stats",
            "rate_limits",
            "layers",
            "trace_leases",
            "external",
            "maglev",
            "source_ranges",
            "flows",
            "flow_replies",
            "events0",
            "events1",
            "events2",
            "events3"
        ]
    );
    let map = |name: &str| maps.as_array().unwrap().iter().find(|m| m["name"] == name).unwrap().clone();
    assert_eq!(map("services")["entries"], 4 + 4, "4 masters, 4 slots");
    assert_eq!(map("affinity")["entries"], 1, "the namespace's; the socket's is in sockets");
    assert_eq!(map("sockets")["entries"], 20 + 3 + 1, "one per translated socket");
    assert_eq!(map("revnat")["entries"], 0, "no socket sent to two frontends");
    // The counter arrays: a cell per frontend and membership, no fill level.
    for counters in ["stats", "backend_hits"] {
        assert_eq!(
            (map(counters)["type"].as_str(), map(counters)["entries"].as_null()),
            (Some("percpu_array"), Some(()))
        );
    }
    // The live connections: a count per membership for every CPU.
    assert_eq!((map("conns")["type"].as_str(), map("conns")["entries"].as_null()), (Some("array"), Some(())));
    assert_eq!(
        (map("datapath_stats")["type"].as_str(), map("datapath_stats")["entries"].as_null()),
        (Some("percpu_array"), Some(()))
    );
    assert_eq!(
        (map("trace_leases")["capacity"].as_u64(), map("trace_leases")["entries"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(
        (map("events0")["capacity_unit"].as_str(), map("events0")["entries"].as_null()),
        (Some("bytes"), Some(()))
    );
    let slots = &config["config"]["trace_slots"];
    assert_eq!(slots.as_array().unwrap().len(), 4);
    assert!(slots.as_array().unwrap().iter().all(|s| s["active"] == false && s["seconds_left"].is_null()));

    // status shows the same fill levels, ring buffers left out.
    let status = sandbox.balctl_json(&["status"]);
    let rows: Vec<(&str, u64, u64)> = status["maps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (m["name"].as_str().unwrap(), m["entries"].as_u64().unwrap(), m["capacity"].as_u64().unwrap())
        })
        .collect();
    let expected: Vec<(&str, u64, u64)> = maps
        .as_array()
        .unwrap()
        .iter()
        // Ring buffers, the layers, datapath_stats and counter maps have no fill level.
        .filter(|m| !m["entries"].is_null())
        .map(|m| {
            (m["name"].as_str().unwrap(), m["entries"].as_u64().unwrap(), m["capacity"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(rows, expected, "{status:#}");
    assert!(rows.contains(&("membership", 4, 65536)) && rows.contains(&("trace_leases", 0, 4)), "{rows:?}");
    assert!(!rows.iter().any(|(name, ..)| ["layers", "stats", "backend_hits"].contains(name)), "{rows:?}");

    let stats = dump(&sandbox, "stats", &[]);
    let resolutions: Vec<(&str, u64, u64)> = stats["stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["resolutions"].as_u64().unwrap(),
                s["failures"]["no_backend"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        resolutions,
        [("policy/web", 20, 0), ("policy/closed", 0, 1), ("policy/dns", 2, 0), ("policy/web6", 3, 0)]
    );
    assert_eq!(stats["datapath"]["evicted_translations"], 0, "{stats:#}");

    let all = dump(&sandbox, "all", &[]);
    for kind in &KINDS[..7] {
        let alone = sandbox.balctl_json(&["dump", kind]);
        assert_eq!(timeless(all[kind].clone()), timeless(alone[kind].clone()), "dump all: {kind}");
    }
    assert_eq!(all["datapath"], stats["datapath"]);

    vip_filters(&sandbox);
}

/// `--vip` on every kind keeps exactly the entries of the matching frontends.
fn vip_filters(sandbox: &Sandbox) {
    let vip = |kind: &str, filter: &str| dump(sandbox, kind, &["--vip", filter]);

    assert_eq!(
        strings(&vip("services", "198.18.0.10")["services"], "frontend"),
        ["198.18.0.10:80/tcp@balancing"]
    );
    assert!(vip("services", "198.18.0.10:81")["services"].as_array().unwrap().is_empty());
    let backends = vip("backends", "198.18.0.10:80");
    assert_eq!(strings(&backends["backends"], "address"), ["192.0.2.2", "192.0.2.3"]);

    let affinity = vip("affinity", "2001:db8:5e::10");
    assert_eq!(strings(&affinity["affinity"], "owner_kind"), ["netns"]);
    let affinity = vip("affinity", "198.18.0.53:53");
    assert_eq!(strings(&affinity["affinity"], "owner_kind"), ["socket"]);
    assert!(vip("affinity", "198.18.0.10")["affinity"].as_array().unwrap().is_empty());

    let revnat = vip("revnat", "198.18.0.10:80");
    assert_eq!(strings(&revnat["revnat"], "frontend"), ["198.18.0.10:80"; 20]);
    let revnat = vip("revnat", "[2001:db8:5e::10]:80");
    assert_eq!(strings(&revnat["revnat"], "name"), ["policy/web6"; 3]);

    assert_eq!(strings(&vip("nodes", "192.0.2.12")["nodes"], "address"), ["192.0.2.12"]);
    assert!(vip("nodes", "198.18.0.10")["nodes"].as_array().unwrap().is_empty());

    // config describes the whole datapath: --vip leaves it as it is.
    let maps = |config: &Value| strings(&config["config"]["maps"], "name").join(",");
    assert_eq!(maps(&vip("config", "198.18.0.10")), maps(&dump(sandbox, "config", &[])));

    let stats = vip("stats", "198.18.0.11");
    assert_eq!(strings(&stats["stats"], "frontend"), ["198.18.0.11:80/tcp@balancing"]);
    assert_eq!(stats["datapath"]["evicted_translations"], 0, "the node's counters, whatever --vip");

    let all = vip("all", "198.18.0.53");
    assert_eq!(strings(&all["services"], "frontend"), ["198.18.0.53:53/udp@balancing"]);
    assert_eq!(strings(&all["backends"], "address"), ["192.0.2.5"]);
    assert_eq!(strings(&all["affinity"], "name"), ["policy/dns"]);
    assert_eq!(strings(&all["revnat"], "name"), ["policy/dns"]);
    assert!(all["nodes"].as_array().unwrap().is_empty());
    assert_eq!(strings(&all["stats"], "name"), ["policy/dns"]);

    let table = sandbox.balctl_ok(&["dump", "services", "--vip", "198.18.0.11"]);
    assert!(table.contains("198.18.0.11:80/tcp") && table.contains("rejects"), "{table}");
    assert!(!table.contains("198.18.0.10"), "{table}");
    let table = sandbox.balctl_ok(&["dump", "all", "--vip", "198.18.0.53"]);
    for kind in &KINDS[..7] {
        assert!(table.contains(&format!("== {kind} ==")), "{table}");
    }
    assert!(!table.contains("198.18.0.10:80"), "{table}");
}

/// Maps are read a batch of entries per bpf() call (src/bpf/batch.rs;
/// about 4,000 services entries to a batch): 1,500 services with two
/// backends each fill the services map past one batch, and `status`,
/// `dump` and the drift check still see every entry.
pub fn maps_larger_than_a_batch_are_read_whole() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let services: String = (0..1500)
        .map(|i| {
            format!(
                "[[service]]\nname = \"s{i}\"\naddresses = [\"198.18.{}.{}\"]\n\
                 backends = [\"192.0.2.2\", \"192.0.2.3\"]\nports = [{{ port = 80, target_port = {} }}]\n\n",
                i / 256,
                i % 256,
                10_000 + i
            )
        })
        .collect();
    let file = sandbox.scratch("many.toml");
    std::fs::write(&file, services).unwrap();
    sandbox.balctl_ok(&["sync", "-f", file.to_str().unwrap()]);

    let status = sandbox.balctl_json(&["status"]);
    let entries = |name: &str| {
        let maps = status["maps"].as_array().unwrap();
        maps.iter().find(|m| m["name"] == name).unwrap()["entries"].as_u64().unwrap()
    };
    // Each frontend and its two backend slots; two backends per port.
    assert_eq!(entries("services"), 1500 * 3, "{status:#}");
    assert_eq!((entries("backends"), entries("membership")), (3000, 3000), "{status:#}");
    assert_eq!(status["drift"], 0, "{status:#}");
    let services = dump(&sandbox, "services", &[]);
    assert_eq!(services["services"].as_array().unwrap().len(), 1500);
}
