//! Issue 17, dependencies: a state file written by the release before the
//! switch from bincode 1 to postcard is read, rewritten in the new format,
//! and programs the same datapath. tests/fixtures/state-v3/ holds one,
//! written by balctl a86b197 (state format 3), with what that balctl's
//! `dump all -o json` and `policy list -o json` printed of it.

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
/// releases may add maps: each recorded map is found by name.
fn assert_holds(at: &str, recorded: &Value, actual: &Value) {
    match (recorded, actual) {
        (Value::Array(maps), Value::Array(actual_maps)) if at.ends_with(".config.maps") => {
            for map in maps {
                let name = &map["name"];
                let actual = actual_maps.iter().find(|m| m["name"] == *name);
                let actual = actual.unwrap_or_else(|| panic!("{at}: map {name} is missing"));
                assert_holds(&format!("{at}[{name}]"), map, actual);
            }
        }
        (Value::Object(fields), Value::Object(actual_fields)) => {
            for (key, value) in fields {
                let actual = actual_fields.get(key).unwrap_or_else(|| panic!("{at}.{key} is missing"));
                assert_holds(&format!("{at}.{key}"), value, actual);
            }
        }
        (Value::Array(elements), Value::Array(actual_elements)) => {
            assert_eq!(elements.len(), actual_elements.len(), "{at}: {actual:#}");
            for (i, (value, actual)) in elements.iter().zip(actual_elements).enumerate() {
                assert_holds(&format!("{at}[{i}]"), value, actual);
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

fn assert_same_datapath(sandbox: &Sandbox, fixture: &Path) {
    for (file, args) in [("dump.json", &["dump", "all"][..]), ("policies.json", &["policy", "list"])] {
        let recorded: Value = serde_json::from_slice(&fs::read(fixture.join(file)).unwrap()).unwrap();
        assert_holds(file, &recorded, &sandbox.balctl_json(args));
    }
}

pub fn a_format_3_state_is_migrated_and_programs_the_same_datapath() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v3");
    let old = fs::read(fixture.join("state.bin")).unwrap();
    assert_eq!(format_version(&old), 3, "the fixture is format 3");
    let sandbox = Sandbox::new();
    fs::DirBuilder::new().mode(0o700).create(&sandbox.state).unwrap();
    let state_file = sandbox.state.join("state.bin");
    fs::write(&state_file, &old).unwrap();
    fs::set_permissions(&state_file, fs::Permissions::from_mode(0o600)).unwrap();

    // Read-only commands read format 3 as it is.
    let listed = sandbox.balctl_ok(&["policy", "list"]);
    assert!(listed.contains("local-dns"), "{listed}");
    assert_eq!(fs::read(&state_file).unwrap(), old, "a read-only command rewrote the state");

    sandbox.load();
    let migrated = fs::read(&state_file).unwrap();
    assert_eq!(format_version(&migrated), 4, "load did not rewrite the state in the new format");
    assert_same_datapath(&sandbox, &fixture);

    // From the new file alone: unloaded, the maps are gone; loaded again,
    // they are rebuilt from it.
    sandbox.balctl_ok(&["unload", "--yes"]);
    sandbox.load();
    assert_same_datapath(&sandbox, &fixture);
    assert_types(&sandbox);
    assert_eq!(fs::read(&state_file).unwrap(), migrated, "the migrated state changed again");
}
