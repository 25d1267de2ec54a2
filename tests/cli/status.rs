//! Issue 17, must show 6: `status` exits 0 loaded and in sync, 3 not
//! loaded, 4 drifted (an entry changed behind balctl's back, a change
//! interrupted during its map writes), printing its status in every format.

use std::{fs::OpenOptions, os::unix::fs::OpenOptionsExt as _, process::Command};

use serde_json::Value;

use crate::support::Sandbox;

/// `status` in each format: the exit code (the same in all), and the JSON.
fn status(sandbox: &Sandbox) -> (i32, Value) {
    let mut codes = Vec::new();
    let mut json = Value::Null;
    for format in ["table", "json", "yaml"] {
        let output = sandbox.balctl(&["status", "-o", format]);
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(!stdout.is_empty(), "status -o {format} printed nothing");
        match format {
            "json" => json = serde_json::from_str(&stdout).expect("status printed JSON"),
            "yaml" => assert!(stdout.contains("loaded:"), "{stdout}"),
            _ => assert!(stdout.starts_with("balctl is "), "{stdout}"),
        }
        codes.push(output.status.code().expect("an exit code"));
    }
    assert!(codes.iter().all(|&code| code == codes[0]), "exit codes differ between formats: {codes:?}");
    (codes[0], json)
}

pub fn exit_codes_tell_not_loaded_in_sync_and_drift() {
    let sandbox = Sandbox::new();
    let (code, json) = status(&sandbox);
    assert_eq!((code, &json["loaded"]), (3, &Value::Bool(false)), "not loaded: {json:#}");
    let stderr = String::from_utf8(sandbox.balctl(&["status"]).stderr).unwrap();
    assert!(stderr.contains("not loaded"), "{stderr}");

    sandbox.load();
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", "198.18.0.10:80", "--backend", "192.0.2.2:8080"]);
    let (code, json) = status(&sandbox);
    assert_eq!((code, &json["drift"]), (0, &Value::from(0)), "loaded and in sync: {json:#}");

    // A backend entry deleted behind balctl's back.
    let backends = sandbox.pins.join("maps/backends");
    let deleted = Command::new("bpftool")
        .args(["map", "delete", "pinned", backends.to_str().unwrap(), "key", "1", "0", "0", "0"])
        .status()
        .expect("run bpftool");
    assert!(deleted.success(), "bpftool map delete");
    let (code, json) = status(&sandbox);
    assert_eq!((code, &json["drift"]), (4, &Value::from(1)), "drift: {json:#}");
    let stderr = String::from_utf8(sandbox.balctl(&["status"]).stderr).unwrap();
    assert!(stderr.contains("differs from the applied state"), "{stderr}");

    sandbox.load();
    assert_eq!(status(&sandbox).0, 0, "load repairs the drift");

    // A change killed during its map writes leaves its mark (see crash.rs):
    // the maps may hold a mix until the next change repairs them.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(sandbox.state.join("map-writes-in-progress"))
        .expect("mark the map writes");
    let (code, json) = status(&sandbox);
    assert_eq!((code, &json["interrupted_change"]), (4, &Value::Bool(true)), "interrupted: {json:#}");
    sandbox.load();
    assert_eq!(status(&sandbox).0, 0, "load repairs an interrupted change");

    sandbox.balctl_ok(&["unload", "--yes"]);
    assert_eq!(status(&sandbox).0, 3, "unloaded");
}
