//! Issue 17, must show 6: `status` exits 0 loaded and in sync, 3 not
//! loaded, 4 drifted (an entry changed behind balctl's back, a change
//! interrupted during its map writes), printing its status in every format.

use std::{
    fs::OpenOptions,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    process::Command,
};

use serde_json::Value;

use crate::support::Sandbox;

/// The hooks in the order `status` lists them (src/bpf/object.rs).
const HOOKS: [&str; 9] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
    "sock_release",
];

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

/// The hooks' links as `status` reports them and `load` repairs them: a
/// link whose pin is removed is listed as missing (exit 4) and `load`
/// attaches it alone; once the cgroup the links are on is removed they are
/// defunct (cgroup gone, id 0, nothing attached), and `load` drops them and
/// attaches anew where it is told.
pub fn status_and_load_follow_missing_and_defunct_links() {
    let sandbox = Sandbox::new();
    let doomed = sandbox.add_cgroup("doomed");
    let doomed_arg = doomed.to_str().unwrap();
    let loaded = sandbox.balctl_ok(&["load", "--cgroup", doomed_arg]);
    assert!(loaded.contains(&format!("balctl loaded on {doomed_arg}: 9 hooks attached")), "{loaded}");
    let (code, json) = status(&sandbox);
    assert_eq!(code, 0, "{json:#}");
    let cgroup_id = std::fs::metadata(&doomed).unwrap().ino();
    assert_eq!((&json["cgroup"], &json["cgroup_id"]), (&Value::from(doomed_arg), &Value::from(cgroup_id)));
    let hooks = json["hooks"].as_array().unwrap();
    let names: Vec<&str> = hooks.iter().map(|h| h["hook"].as_str().unwrap()).collect();
    assert_eq!(names, HOOKS, "{json:#}");
    assert!(hooks.iter().all(|h| h["attached_programs"] == 1), "{json:#}");
    let table = sandbox.balctl_ok(&["status"]);
    assert!(table.contains(&format!("\n  cgroup:   {doomed_arg} (id {cgroup_id})\n")), "{table}");
    for hook in hooks {
        let row = format!("{} {} {} ", hook["hook"], hook["link_id"], hook["program_id"]).replace('"', "");
        let found =
            table.lines().any(|line| line.split_whitespace().collect::<Vec<_>>().join(" ").starts_with(&row));
        assert!(found, "no row {row:?} in\n{table}");
    }

    // Removing a pin drops the last reference to its link: detached.
    std::fs::remove_file(sandbox.pins.join("links/connect4")).unwrap();
    let (code, json) = status(&sandbox);
    assert_eq!((code, &json["missing_hooks"]), (4, &Value::from(vec!["connect4"])), "{json:#}");
    assert_eq!(json["hooks"].as_array().unwrap().len(), 8, "{json:#}");
    let table = String::from_utf8(sandbox.balctl(&["status"]).stdout).unwrap();
    assert!(table.contains("\n  MISSING hooks: connect4 (run `balctl load` to attach them)\n"), "{table}");
    let loaded = sandbox.balctl_ok(&["load"]);
    assert!(loaded.contains(&format!("on {doomed_arg}: 1 hooks attached, 8 replaced in place")), "{loaded}");
    let (code, json) = status(&sandbox);
    assert_eq!((code, json["hooks"].as_array().unwrap().len()), (0, 9), "{json:#}");
    let links_before = crate::datapath::link_ids(&sandbox);

    // The kernel detaches a removed cgroup's links a moment later.
    std::fs::remove_dir(&doomed).expect("remove the cgroup (no process is in it)");
    let mut json = Value::Null;
    for _ in 0..100 {
        json = status(&sandbox).1;
        if json["cgroup_id"] == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!((&json["cgroup"], &json["cgroup_id"]), (&Value::Null, &Value::from(0)), "{json:#}");
    assert!(json["hooks"].as_array().unwrap().iter().all(|h| h["attached_programs"] == 0), "{json:#}");
    let table = sandbox.balctl_ok(&["status"]);
    assert!(table.contains("\n  cgroup:   (gone) (id 0)\n"), "{table}");

    let loaded = sandbox.load();
    assert!(loaded.contains(&format!("on {}: 9 hooks attached", sandbox.cgroup.display())), "{loaded}");
    let (code, json) = status(&sandbox);
    assert_eq!((code, &json["cgroup"]), (0, &Value::from(sandbox.cgroup.to_str().unwrap())), "{json:#}");
    let links_after = crate::datapath::link_ids(&sandbox);
    assert!(links_after.iter().all(|id| !links_before.contains(id)), "{links_before:?} {links_after:?}");
    assert_eq!(crate::datapath::bpftool_cgroup_show(&sandbox).len(), 9);
}
