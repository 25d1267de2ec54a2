//! Issue 16, defect 6: translations lost when the sockets map is full are
//! counted, and `status` says how to make room. The client holds many TCP
//! connections through a VIP open at once and asks getpeername() of each:
//! every socket that shows the backend instead of the VIP lost its way to
//! a newer socket, and the counter in `dump stats` and on `/metrics` says
//! exactly how many. Closed sockets free their ways (the sock_release
//! program), so a map with a way for every open socket loses nothing.

use std::fs;

use serde_json::Value;

use crate::{
    stats::{free_port, scrape, services},
    support::{Sandbox, watcher::Watcher},
};

const VIP: &str = "198.18.0.10:80";
const BACKEND: &str = "192.0.2.2:8080";
const EVICTED_METRIC: &str = "balctl_socket_translations_evicted_total";

/// A sandbox whose VIP has one backend, loaded with `load_args`.
fn one_backend(load_args: &[&str]) -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.serve("b2", &[BACKEND], &[]);
    sandbox.load_with(load_args);
    sandbox
}

/// The client's rounds of `tcp-peers`: each one's getpeername() answers
/// (address -> sockets), after checking every socket connected.
fn peers_by_round(report: &Value, per_round: u64) -> Vec<serde_json::Map<String, Value>> {
    let rounds = report["rounds"].as_array().expect("rounds");
    rounds
        .iter()
        .map(|round| {
            assert_eq!(round["errors"], serde_json::json!({}), "{report}");
            assert_eq!(round["connected"], per_round, "{report}");
            round["peers"].as_object().expect("peers").clone()
        })
        .collect()
}

fn evicted(sandbox: &Sandbox) -> u64 {
    let stats = sandbox.balctl_json(&["dump", "stats"]);
    stats["datapath"]["evicted_translations"].as_u64().unwrap_or_else(|| panic!("{stats:#}"))
}

fn sockets_map(sandbox: &Sandbox) -> (u64, u64) {
    let status = sandbox.balctl_json(&["status"]);
    let sockets = status["maps"].as_array().unwrap().iter().find(|m| m["name"] == "sockets").unwrap();
    (sockets["entries"].as_u64().unwrap(), sockets["capacity"].as_u64().unwrap())
}

/// Must show 6: room for 64 sockets (16 sets of 4 ways) and 300 open
/// connections. The first socket of each of the 64 ways keeps it until a
/// newer one of its set takes it, so 64 sockets still show the VIP and 236
/// show the backend; the counter is 236 in `dump stats` (JSON and table),
/// `status` (JSON) and on `/metrics`, and `status` warns with the fix.
pub fn a_full_sockets_map_counts_what_it_loses_and_status_warns() {
    let sandbox = one_backend(&["--map-size", "sockets=64"]);
    let file = sandbox.scratch("web.toml");
    fs::write(&file, services(&[2], false)).unwrap();
    let port = free_port();
    let watcher = Watcher::start_with(
        &sandbox,
        &[file.to_str().unwrap()],
        &["--metrics-addr", &format!("127.0.0.1:{port}")],
    );
    watcher.wait_stdout("sync: frontends +1 ~0 -0");
    assert_eq!(scrape(port).get(EVICTED_METRIC), Some(&0));

    let report = sandbox.client(&["tcp-peers", "--to", VIP, "--count", "300"]);
    let peers = &peers_by_round(&report, 300)[0];
    let shown = |address: &str| peers.get(address).and_then(Value::as_u64).unwrap_or(0);
    let (kept, lost) = (shown(VIP), shown(BACKEND));
    assert_eq!(kept + lost, 300, "getpeername() showed something else: {report}");
    assert_eq!((kept, lost), (64, 236), "every way kept one socket: {report}");

    assert_eq!(evicted(&sandbox), lost);
    assert_eq!(sandbox.balctl_json(&["status"])["evicted_translations"], lost);
    assert_eq!(scrape(port).get(EVICTED_METRIC), Some(&lost));
    let table = sandbox.balctl_ok(&["dump", "stats"]);
    assert!(table.contains("evicted socket translations: 236"), "{table}");

    let status = sandbox.balctl_ok(&["status"]);
    assert!(status.contains("WARNING: 236 translations of open sockets evicted"), "{status}");
    assert!(status.contains("getpeername() and recvmsg()"), "{status}");
    assert!(status.contains("`balctl unload --yes`, then\n"), "{status}");
    assert!(status.contains("`balctl load --map-size sockets=256`"), "{status}");
    assert_eq!(watcher.terminate(), Some(0));
}

/// Must show 6: with the default sockets map the same 300 connections all
/// show the VIP, nothing is counted and `status` does not warn.
pub fn a_big_enough_sockets_map_evicts_nothing() {
    let sandbox = one_backend(&[]);
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", VIP, "--backend", BACKEND]);

    let report = sandbox.client(&["tcp-peers", "--to", VIP, "--count", "300"]);
    let peers = &peers_by_round(&report, 300)[0];
    assert_eq!(peers.len(), 1, "{report}");
    assert_eq!(peers[VIP], 300, "{report}");

    assert_eq!(evicted(&sandbox), 0);
    assert_eq!(sandbox.balctl_json(&["status"])["evicted_translations"], 0);
    let status = sandbox.balctl_ok(&["status"]);
    assert!(!status.contains("WARNING"), "{status}");
    assert!(sandbox.balctl_ok(&["dump", "stats"]).contains("evicted socket translations: 0"));
}

/// Closing a socket frees its way: a map of 16 sets has room for 64
/// sockets, and three rounds of 64 sockets that fill every way (4 per set,
/// picked by cookie), each round closed before the next, evict nothing.
/// (Without the sock_release program the ways of the closed sockets stay
/// taken, and each later round evicts 64.) While the last round is held
/// open the map is full; once it closes, it is empty.
pub fn closed_sockets_free_their_ways() {
    let sandbox = one_backend(&["--map-size", "sockets=64"]);
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", VIP, "--backend", BACKEND]);

    let args = ["tcp-peers", "--to", VIP, "--count", "64", "--rounds", "3", "--sets", "16"];
    let (client, report) = sandbox.hold(&args);
    for peers in peers_by_round(&report, 64) {
        assert_eq!(peers.len(), 1, "{report}");
        assert_eq!(peers[VIP], 64, "{report}");
    }
    assert_eq!(sockets_map(&sandbox), (64, 64));
    assert_eq!(evicted(&sandbox), 0, "the ways of closed sockets were taken as if they were open");
    drop(client);
    assert_eq!(sockets_map(&sandbox), (0, 64), "the held sockets closed, their ways are free");
    assert_eq!(evicted(&sandbox), 0);
}
