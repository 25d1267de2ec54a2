//! `balctl sync --watch` on the real kernel: a running watcher brings each
//! change of its inputs to the datapath within a second, reports a broken
//! input and keeps what is applied, applies the input once it is fixed
//! (also when saved editor-style, by renaming a new file over it), follows
//! a directory's files, and stops with exit 0 on SIGTERM.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{Sandbox, watcher::Watcher};

const VIP: &str = "198.18.0.10:80";

fn service(backends: &[&str]) -> String {
    let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[service]]\nname = \"web\"\naddresses = [\"198.18.0.10\"]\nbackends = [{}]\n\
         ports = [{{ port = 80, target_port = 8080 }}]\n",
        backends.join(", ")
    )
}

/// The backend addresses `dump` shows for `vip`, in slot order. A dump
/// taken while the watcher applies a change can find a slot whose backend
/// was removed after the slot was read: its address is null, shown as `?`.
fn dumped_backends(sandbox: &Sandbox, vip: &str) -> Vec<String> {
    let dump = sandbox.balctl_json(&["dump", "services", "--vip", vip]);
    let Some(service) = dump["services"].as_array().and_then(|s| s.first()) else {
        return Vec::new();
    };
    service["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{}:{}", b["address"].as_str().unwrap_or("?"), b["port"]))
        .collect()
}

/// Connects a few times through the VIP and returns the ids of the backends
/// that answered. No connection may fail, not even while a change is applied.
fn reached(sandbox: &Sandbox) -> Vec<String> {
    let report: Value = sandbox.client(&["connect", "--to", VIP, "--count", "20"]);
    assert_eq!(report["failed"], 0, "{report}");
    report["backends"].as_object().unwrap().keys().cloned().collect()
}

/// Polls `dump` and a real client until both show exactly `backends`
/// (addresses) answering as `ids`; returns how long that took since
/// `since`. Gives up after 5 s.
fn wait_until_applied(sandbox: &Sandbox, since: Instant, backends: &[&str], ids: &[&str]) -> Duration {
    while since.elapsed() < Duration::from_secs(5) {
        if dumped_backends(sandbox, VIP) == backends && reached(sandbox) == ids {
            return since.elapsed();
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "not applied within 5 s: dump shows {:?}, clients reach {:?}",
        dumped_backends(sandbox, VIP),
        reached(sandbox)
    );
}

/// The scenario: rewrite, break, fix (editor-style), SIGTERM.
pub fn changes_reach_the_datapath_within_a_second() {
    let sandbox = Sandbox::new();
    for host in 2..=5 {
        sandbox.serve(&format!("b{host}"), &[&format!("192.0.2.{host}:8080")], &[]);
    }
    sandbox.load();

    let stdin = sandbox.balctl(&["sync", "--watch", "-f", "-"]);
    let stderr = String::from_utf8_lossy(&stdin.stderr);
    assert_eq!(stdin.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("standard input cannot be watched"), "{stderr}");

    let file = sandbox.scratch("web.toml");
    let file_arg = file.display().to_string();
    fs::write(&file, service(&["192.0.2.2", "192.0.2.3"])).unwrap();
    let mut watcher = Watcher::start(&sandbox, &[&file_arg]);
    watcher.wait_stdout("sync: frontends +1 ~0 -0");
    wait_until_applied(&sandbox, Instant::now(), &["192.0.2.2:8080", "192.0.2.3:8080"], &["b2", "b3"]);

    // (a) A different backend set, written in place.
    fs::write(&file, service(&["192.0.2.4", "192.0.2.5"])).unwrap();
    let took =
        wait_until_applied(&sandbox, Instant::now(), &["192.0.2.4:8080", "192.0.2.5:8080"], &["b4", "b5"]);
    assert!(took < Duration::from_secs(1), "the change took {took:?} to reach the datapath");
    watcher.wait_stdout("sync: frontends +0 ~1 -0");
    let applied = sandbox.balctl_ok(&["dump", "-o", "json"]);

    // (b) A broken file: reported with file:line:column, nothing changes.
    fs::write(&file, service(&["192.0.2.4", "192.0.2.300"])).unwrap();
    watcher.wait_stderr(&format!("error: {file_arg}:4:26: invalid IP address"));
    watcher.wait_stderr("retrying when an input changes");
    watcher.assert_running();
    assert_eq!(sandbox.balctl_ok(&["dump", "-o", "json"]), applied);
    assert_eq!(reached(&sandbox), ["b4", "b5"]);

    // (c) Fixed the way editors save: a new file renamed over the old one.
    let temporary = sandbox.scratch(".web.toml.tmp");
    fs::write(&temporary, service(&["192.0.2.2", "192.0.2.5"])).unwrap();
    let saved = Instant::now();
    fs::rename(&temporary, &file).unwrap();
    let took = wait_until_applied(&sandbox, saved, &["192.0.2.2:8080", "192.0.2.5:8080"], &["b2", "b5"]);
    assert!(took < Duration::from_secs(1), "the fix took {took:?} to reach the datapath");
    watcher.wait_stdout("sync: frontends +0 ~1 -0");

    assert_eq!(watcher.terminate(), Some(0));
    // The datapath stays as the watcher left it.
    assert_eq!(sandbox.balctl_json(&["status"])["loaded"], true);
    assert_eq!(reached(&sandbox), ["b2", "b5"]);
}

/// A watched directory: a broken file at start-up is reported and the
/// watcher waits; fixed, it is applied; files added to and removed from the
/// directory add and remove their services; other files are ignored.
pub fn a_directory_is_followed_from_a_broken_start() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let dir = sandbox.scratch("inputs");
    fs::create_dir(&dir).unwrap();
    let dir_arg = dir.display().to_string();
    fs::write(dir.join("web.toml"), "[[service]\n").unwrap();
    let mut watcher = Watcher::start(&sandbox, &[&dir_arg]);
    watcher.wait_stderr(&format!("error: {dir_arg}/web.toml:1:11: unclosed array table"));
    watcher.assert_running();
    assert!(dumped_backends(&sandbox, VIP).is_empty());

    fs::write(dir.join("web.toml"), service(&["192.0.2.2"])).unwrap();
    watcher.wait_stdout("sync: frontends +1 ~0 -0");
    assert_eq!(dumped_backends(&sandbox, VIP), ["192.0.2.2:8080"]);

    let dns = "[[service]]\nname = \"dns\"\naddresses = [\"198.18.0.53\"]\nbackends = [\"192.0.2.3\"]\n\
               ports = [{ port = 53, protocol = \"udp\" }]\n";
    fs::write(dir.join("dns.toml"), dns).unwrap();
    watcher.wait_stdout("sync: frontends +1 ~0 -0");
    assert_eq!(dumped_backends(&sandbox, "198.18.0.53:53"), ["192.0.2.3:53"]);

    // Not a state file: no sync at all.
    fs::write(dir.join("notes.txt"), "not TOML").unwrap();
    watcher.assert_quiet(Duration::from_millis(600));
    fs::remove_file(dir.join("dns.toml")).unwrap();
    watcher.wait_stdout("sync: frontends +0 ~0 -1, backends +0 -1");
    assert!(dumped_backends(&sandbox, "198.18.0.53:53").is_empty());
    assert_eq!(dumped_backends(&sandbox, VIP), ["192.0.2.2:8080"]);

    assert_eq!(watcher.terminate(), Some(0));
}
