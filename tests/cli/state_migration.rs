//! Issue 17, dependencies: a state file written by the release before the
//! switch from bincode 1 to postcard is read, rewritten in the new format,
//! and programs the same datapath. tests/fixtures/state-v3/ holds one,
//! written by balctl a86b197 (state format 3), with what that balctl's
//! `dump all -o json` and `policy list -o json` printed of it. Issue 18
//! added local backends (format 5): tests/fixtures/state-v4/ holds a file
//! of format 4, written by balctl 3d7c9f6; tests/fixtures/state-v5/ one of
//! format 5 (before health-check node ports), written by balctl 57438ba;
//! tests/fixtures/state-v6/ one of format 6 (before recorded reads),
//! written by balctl 44db0f3; tests/fixtures/state-v7/ one of format 7
//! (before loopback followed --nodeport-addresses), written by 5003ef0;
//! tests/fixtures/state-v8/ one of format 8 (one file, before the change
//! log), written by b4d679e; tests/fixtures/state-v9/ one of format 9 (a
//! snapshot and its change log, before counter cells), written by
//! b8ff6a2; tests/fixtures/state-v10/ one of format 10 (before rules'
//! health checks and the frontends' `unhealthy` flag), written by 087be0a.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
};

use serde_json::Value;

use crate::support::Sandbox;

const MAGIC: &[u8] = b"balctl\0S";

/// The format version in the header of a state file.
fn format_version(file: &[u8]) -> u32 {
    let version = file.strip_prefix(MAGIC).and_then(|rest| rest.first_chunk::<4>()).expect("a state header");
    u32::from_le_bytes(*version)
}

/// `actual` holds every value `recorded` holds, at the same place: every
/// field of its objects (later releases may print more fields) and every
/// element of its lists, in order; except the list of maps, where later
/// releases may add maps: each recorded map is found by name (the counter
/// maps' type and fill are told apart since format 10). The nodes
/// map holds `nodes_added` entries more (since format 8: the key that says
/// node ports answer on IPv4 loopback, which older balctls did without a
/// key).
fn assert_holds(at: &str, recorded: &Value, actual: &Value, nodes_added: u64) {
    match (recorded, actual) {
        (Value::Number(entries), _) if at.ends_with(".config.maps[\"nodes\"].entries") => {
            assert_eq!(
                Some(entries.as_u64().unwrap() + nodes_added),
                actual.as_u64(),
                "{at}: the loopback key"
            );
        }
        (Value::Array(maps), Value::Array(actual_maps)) if at.ends_with(".config.maps") => {
            for map in maps {
                let name = &map["name"];
                let actual = actual_maps.iter().find(|m| m["name"] == *name);
                let actual = actual.unwrap_or_else(|| panic!("{at}: map {name} is missing"));
                if *name == "stats" || *name == "backend_hits" {
                    // Since format 10: per-CPU arrays of counter cells, as
                    // long as the per-CPU hashes before, without a fill level.
                    assert_eq!(map["capacity"], actual["capacity"], "{at}[{name}]");
                    assert_eq!(actual["type"], "percpu_array", "{at}[{name}]");
                    continue;
                }
                assert_holds(&format!("{at}[{name}]"), map, actual, nodes_added);
            }
        }
        (Value::Object(fields), Value::Object(actual_fields)) => {
            for (key, value) in fields {
                let actual = actual_fields.get(key).unwrap_or_else(|| panic!("{at}.{key} is missing"));
                assert_holds(&format!("{at}.{key}"), value, actual, nodes_added);
            }
        }
        (Value::Array(elements), Value::Array(actual_elements)) => {
            assert_eq!(elements.len(), actual_elements.len(), "{at}: {actual:#}");
            for (i, (value, actual)) in elements.iter().zip(actual_elements).enumerate() {
                assert_holds(&format!("{at}[{i}]"), value, actual, nodes_added);
            }
        }
        _ => assert_eq!(recorded, actual, "{at}"),
    }
}

/// Format 3 did not record a frontend's TYPE: a migrated state names its
/// node ports (on the unspecified address) and policies, the rest of this
/// fixture's Services are cluster IPs.
fn assert_types(sandbox: &Sandbox) {
    let services = sandbox.balctl_json(&["dump", "services"]);
    let services = services["services"].as_array().expect("dump services -o json has a list");
    assert!(!services.is_empty());
    for service in services {
        let frontend = service["frontend"].as_str().unwrap();
        let expected = if frontend.starts_with("0.0.0.0:") || frontend.starts_with("[::]:") {
            "NodePort"
        } else if frontend.ends_with("@balancing") {
            "balancing"
        } else if frontend.ends_with("@redirect") {
            "redirect"
        } else {
            "ClusterIP"
        };
        assert_eq!(service["type"], expected, "{frontend}");
    }
}

fn assert_same_datapath(sandbox: &Sandbox, fixture: &Path, version: u32) {
    for (file, args) in [("dump.json", &["dump", "all"][..]), ("policies.json", &["policy", "list"])] {
        let recorded: Value = serde_json::from_slice(&fs::read(fixture.join(file)).unwrap()).unwrap();
        assert_holds(file, &recorded, &sandbox.balctl_json(args), u64::from(version < 8));
    }
}

/// Puts the state file of `fixture` (of format `version`) in a new
/// sandbox, checks read-only commands leave it alone and `load` rewrites
/// it, each time programming the datapath the fixture recorded; returns the
/// loaded sandbox.
fn migrate(fixture: &Path, version: u32) -> Sandbox {
    let old = fs::read(fixture.join("state.bin")).unwrap();
    assert_eq!(format_version(&old), version, "the fixture is format {version}");
    let sandbox = Sandbox::new();
    fs::DirBuilder::new().mode(0o700).create(&sandbox.state).unwrap();
    let state_file = sandbox.state.join("state.bin");
    fs::write(&state_file, &old).unwrap();
    fs::set_permissions(&state_file, fs::Permissions::from_mode(0o600)).unwrap();
    // Formats 9 and later have a change log beside their snapshot.
    if let Ok(log) = fs::read(fixture.join("state.log")) {
        let log_file = sandbox.state.join("state.log");
        fs::write(&log_file, log).unwrap();
        fs::set_permissions(&log_file, fs::Permissions::from_mode(0o600)).unwrap();
    }

    // Read-only commands read the old format as it is.
    let listed = sandbox.balctl_ok(&["policy", "list"]);
    assert!(listed.contains("local-dns"), "{listed}");
    assert_eq!(fs::read(&state_file).unwrap(), old, "a read-only command rewrote the state");

    sandbox.load();
    let migrated = fs::read(&state_file).unwrap();
    assert_eq!(format_version(&migrated), CURRENT_FORMAT, "load did not rewrite the state in the new format");
    assert_same_datapath(&sandbox, fixture, version);

    // From the new file alone: unloaded, the maps are gone; loaded again,
    // they are rebuilt from it.
    sandbox.balctl_ok(&["unload", "--yes"]);
    sandbox.load();
    assert_same_datapath(&sandbox, fixture, version);
    assert_eq!(fs::read(&state_file).unwrap(), migrated, "the migrated state changed again");
    sandbox
}

const CURRENT_FORMAT: u32 = 11;

pub fn a_format_3_state_is_migrated_and_programs_the_same_datapath() {
    let sandbox = migrate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v3"), 3);
    assert_types(&sandbox);
}

/// Format 4 did not record which backends run on this node: after the
/// migration the datapath is the one recorded (nothing local), and the
/// next sync of the same inputs, which translates them again, flags
/// node-a's endpoint and gives the node ports their external entries.
pub fn a_format_4_state_is_migrated_and_the_next_sync_finds_local_backends() {
    let sandbox = migrate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v4"), 4);
    let local = |sandbox: &Sandbox| -> Vec<String> {
        let backends = sandbox.balctl_json(&["dump", "backends"]);
        (backends["backends"].as_array().unwrap().iter())
            .filter(|b| b["local"] == true)
            .map(|b| format!("{}:{}", b["address"].as_str().unwrap(), b["port"]))
            .collect()
    };
    assert!(local(&sandbox).is_empty());
    // The fixture's inputs were synced from a copy of examples/ at this
    // fixed path (make-fixture), so that is where they are read again
    // from: a sync replaces the objects of the sources it reads.
    let copy = FixtureExamples::new();
    let example = |name: &str| format!("{}/k8s/{name}", copy.0.display());
    let files: Vec<String> = [
        "dual-stack.yaml",
        "nodeport.yaml",
        "session-affinity.yaml",
        "nodes.yaml",
        "loadbalancer.yaml",
        "local-traffic.yaml",
    ]
    .map(example)
    .to_vec();
    let mut args = vec!["sync", "--node-name", "node-a"];
    for file in &files {
        args.extend(["-f", file.as_str()]);
    }
    sandbox.balctl_ok(&args);
    // nodeport.yaml's and local-traffic.yaml's endpoints on node-a.
    assert_eq!(local(&sandbox), ["192.0.2.4:8080", "192.0.2.8:9100"]);
    let services = sandbox.balctl_json(&["dump", "services"]);
    let external: Vec<&str> = (services["services"].as_array().unwrap().iter())
        .filter(|s| s["scope"] == "external")
        .map(|s| s["frontend"].as_str().unwrap())
        .collect();
    assert!(external.contains(&"0.0.0.0:30060/tcp@external"), "{external:?}");
}

/// A copy of examples/ at /tmp/balctl-fix4/examples, where the format-4
/// fixture's inputs were synced from; removed on drop.
struct FixtureExamples(std::path::PathBuf);

impl FixtureExamples {
    fn new() -> Self {
        let root = Path::new("/tmp/balctl-fix4");
        let _ = std::fs::remove_dir_all(root);
        std::fs::create_dir_all(root).expect("create /tmp/balctl-fix4");
        let examples = root.join("examples");
        let status = std::process::Command::new("cp")
            .args(["-r", concat!(env!("CARGO_MANIFEST_DIR"), "/examples")])
            .arg(&examples)
            .status()
            .expect("cp");
        assert!(status.success(), "copy examples/");
        FixtureExamples(examples)
    }
}

impl Drop for FixtureExamples {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all("/tmp/balctl-fix4");
    }
}

/// Format 5 did not record health-check node ports: after the migration
/// the datapath is the one recorded.
pub fn a_format_5_state_is_migrated_and_programs_the_same_datapath() {
    migrate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v5"), 5);
}

/// Format 6 did not record what translations read: after the migration
/// the datapath is the one recorded.
pub fn a_format_6_state_is_migrated_and_programs_the_same_datapath() {
    migrate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v6"), 6);
}

/// Format 7 served node ports on IPv4 loopback whatever the sync said:
/// after the migration the datapath is the one recorded, loopback
/// included.
pub fn a_format_7_state_is_migrated_and_programs_the_same_datapath() {
    let sandbox = migrate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v7"), 7);
    assert_eq!(sandbox.balctl_json(&["dump", "nodes"])["loopback"], true);
}

/// Issue 20, a state store from before the change log: format 8 is read,
/// rewritten as a snapshot with its (empty) log, and programs the same
/// datapath; a change after it is one record appended to the log.
pub fn a_format_8_state_is_migrated_and_changes_are_logged() {
    let sandbox = migrate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v8"), 8);
    let (snapshot, log) = (sandbox.state.join("state.bin"), sandbox.state.join("state.log"));
    let (snapshot_before, log_before) = (fs::read(&snapshot).unwrap(), fs::read(&log).unwrap());
    sandbox.balctl_ok(&["policy", "add", "added", "--vip", "198.18.1.77:80", "--backend", "192.0.2.2:8080"]);
    assert_eq!(fs::read(&snapshot).unwrap(), snapshot_before, "a small change rewrote the snapshot");
    let log_after = fs::read(&log).unwrap();
    assert!(log_after.starts_with(&log_before) && log_after.len() > log_before.len(), "nothing appended");
    let listed = sandbox.balctl_ok(&["policy", "list"]);
    assert!(listed.contains("added") && listed.contains("local-dns"), "{listed}");
}

/// Format 9 is a snapshot and the log of the changes after it (the
/// fixture's policies and its sync are records), without counter cells:
/// the migration replays the log, hands every frontend and membership its
/// cells, and the datapath counts into them.
pub fn a_format_9_state_and_its_log_are_migrated_and_counted() {
    let sandbox = migrate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v9"), 9);
    let refused = sandbox.client(&["connect", "--to", "198.18.1.99:443"]);
    assert_eq!(refused["errors"]["ECONNREFUSED"], 1, "{refused}");
    let stats = sandbox.balctl_json(&["dump", "stats", "--vip", "198.18.1.99"]);
    let closed = &stats["stats"][0];
    assert_eq!(
        (closed["name"].as_str(), closed["failures"]["no_backend"].as_u64()),
        (Some("policy/closed"), Some(1)),
        "{stats:#}"
    );
}

/// Format 10 did not record rules' health checks nor which frontends have
/// only failing backends: after the migration (its log replayed) the
/// datapath is the one recorded.
pub fn a_format_10_state_is_migrated_and_programs_the_same_datapath() {
    migrate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v10"), 10);
}
