//! `dump` in every format for a state with IPv4, IPv6, UDP, affinity and a
//! rejecting frontend; JSON validated against the schemas in docs/schema.

use std::path::Path;

use serde_json::Value;

use crate::support::Sandbox;

fn validate(document: &Value, schema_file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema").join(schema_file);
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    let url = format!("file://{}", path.display());
    compiler.add_resource(&url, schema).expect("schema resource");
    let index = compiler.compile(&url, &mut schemas).expect("schema compiles");
    if let Err(err) = schemas.validate(document, index) {
        panic!("{schema_file}: {err:#}\n{document:#}");
    }
}

pub fn every_format_matches_the_documented_schema() {
    let sandbox = Sandbox::new();
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

    let services = sandbox.balctl_json(&["dump", "services"]);
    validate(&services, "dump-services.json");
    let services = services["services"].as_array().unwrap();
    let frontends: Vec<&str> = services.iter().map(|s| s["frontend"].as_str().unwrap()).collect();
    assert_eq!(
        frontends,
        ["198.18.0.10:80/tcp", "198.18.0.11:80/tcp", "198.18.0.53:53/udp", "[2001:db8:5e::10]:80/tcp"]
    );
    let web6 = &services[3];
    assert_eq!(web6["name"], "policy/web6");
    assert_eq!(web6["affinity_timeout_seconds"], 60);
    assert_eq!(web6["backends"][0]["address"], "2001:db8::2");
    assert_eq!(services[1]["backend_count"], 0);

    let backends = sandbox.balctl_json(&["dump", "backends"]);
    validate(&backends, "dump-backends.json");
    assert_eq!(backends["backends"].as_array().unwrap().len(), 4);

    let filtered = sandbox.balctl_json(&["dump", "backends", "--vip", "198.18.0.10:80"]);
    validate(&filtered, "dump-backends.json");
    let addresses: Vec<&str> =
        filtered["backends"].as_array().unwrap().iter().map(|b| b["address"].as_str().unwrap()).collect();
    assert_eq!(addresses, ["192.0.2.2", "192.0.2.3"]);

    // YAML carries the same document.
    let yaml: Value =
        serde_yaml_ng::from_str(&sandbox.balctl_ok(&["dump", "services", "-o", "yaml"])).unwrap();
    assert_eq!(yaml["services"].as_array().unwrap().len(), 4);
    assert_eq!(yaml["services"][0], services[0]);

    let table = sandbox.balctl_ok(&["dump", "services", "--vip", "198.18.0.11"]);
    assert!(table.contains("198.18.0.11:80/tcp") && table.contains("rejects"), "{table}");
    assert!(!table.contains("198.18.0.10"), "{table}");
}
