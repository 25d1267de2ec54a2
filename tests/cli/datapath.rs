//! The datapath on the real kernel: connections through VIPs, reload and
//! unload, UDP and getpeername translation, IPv6 and v4-mapped sockets,
//! affinity, rejection.

use std::{
    collections::BTreeSet,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{Sandbox, finish};

const VIP: &str = "198.18.0.10:80";
const BACKENDS: [&str; 3] = ["192.0.2.2:8080", "192.0.2.3:8080", "192.0.2.4:8080"];

/// Servers b2, b3, b4 answering on 192.0.2.{2,3,4}:8080 (TCP) and :5300 (UDP).
fn serve_three(sandbox: &Sandbox) {
    for host in 2..=4 {
        sandbox.serve(
            &format!("b{host}"),
            &[&format!("192.0.2.{host}:8080"), &format!("[2001:db8::{host}]:8080")],
            &[&format!("192.0.2.{host}:5300"), &format!("[2001:db8::{host}]:5300")],
        );
    }
}

/// The three backend hosts' addresses in one format, e.g. `|h| format!("192.0.2.{h}:5300")`.
fn three(address: impl Fn(u8) -> String) -> Vec<String> {
    (2..=4).map(address).collect()
}

fn add_policy(sandbox: &Sandbox, name: &str, vip: &str, backends: &[impl AsRef<str>], extra: &[&str]) {
    let mut args = vec!["policy", "add", name, "--vip", vip];
    for backend in backends {
        args.extend(["--backend", backend.as_ref()]);
    }
    args.extend(extra);
    sandbox.balctl_ok(&args);
}

fn count(report: &Value, key: &str) -> u64 {
    report[key].as_u64().unwrap_or_else(|| panic!("no {key} in {report}"))
}

fn backends_seen(report: &Value) -> Vec<String> {
    report["backends"].as_object().expect("backends").keys().cloned().collect()
}

pub fn link_ids(sandbox: &Sandbox) -> Vec<u64> {
    sandbox.balctl_json(&["status"])["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .map(|h| h["link_id"].as_u64().expect("link id"))
        .collect()
}

pub fn bpftool_cgroup_show(sandbox: &Sandbox) -> Vec<String> {
    let output =
        Command::new("bpftool").args(["cgroup", "show"]).arg(&sandbox.cgroup).output().expect("run bpftool");
    assert!(output.status.success(), "bpftool: {}", String::from_utf8_lossy(&output.stderr));
    // First line is a header when anything is attached.
    String::from_utf8_lossy(&output.stdout).lines().skip(1).map(str::to_owned).collect()
}

/// Must show 1: after load and policy add, with balctl gone, a client in
/// the cgroup reaches every backend through the VIP.
pub fn connects_through_vip_to_every_backend() {
    let sandbox = Sandbox::new();
    serve_three(&sandbox);
    sandbox.load();
    add_policy(&sandbox, "web", VIP, &BACKENDS, &[]);
    // No balctl process is running now: only the pinned programs and maps.
    let report = sandbox.client(&["connect", "--to", VIP, "--count", "200"]);
    assert_eq!(count(&report, "failed"), 0, "{report}");
    assert_eq!(count(&report, "ok"), 200, "{report}");
    assert_eq!(backends_seen(&report), ["b2", "b3", "b4"], "{report}");
}

/// Must show 2: after unload, the VIP is untranslated (network unreachable
/// inside the namespace) and no pin, link or attachment is left.
pub fn unload_leaves_nothing_behind() {
    let sandbox = Sandbox::new();
    serve_three(&sandbox);
    sandbox.load();
    add_policy(&sandbox, "web", VIP, &BACKENDS, &[]);
    assert_eq!(count(&sandbox.client(&["connect", "--to", VIP]), "ok"), 1);
    let links = link_ids(&sandbox);
    assert_eq!(links.len(), 9);

    // Without a terminal, unload needs --yes and changes nothing.
    let refused = sandbox.balctl(&["unload"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(count(&sandbox.client(&["connect", "--to", VIP]), "ok"), 1);

    sandbox.balctl_ok(&["unload", "--yes"]);
    let report = sandbox.client(&["connect", "--to", VIP]);
    assert_eq!(report["errors"]["ENETUNREACH"], 1, "{report}");
    assert!(!sandbox.pins.exists(), "pin dir {} is still there", sandbox.pins.display());
    assert!(bpftool_cgroup_show(&sandbox).is_empty(), "programs still attached");
    for id in links {
        let shown = Command::new("bpftool").args(["link", "show", "id", &id.to_string()]).output().unwrap();
        assert!(!shown.status.success(), "link {id} still exists");
    }
    // The rules are kept for the next load.
    assert!(sandbox.balctl_ok(&["policy", "list"]).contains("web"));
}

/// Must show 3: `load` again while a client connects non-stop replaces the
/// programs in place: zero failed connections, one program per hook; also
/// when maps this build added are missing from the pin dir.
pub fn reload_under_traffic_loses_nothing() {
    let sandbox = Sandbox::new();
    serve_three(&sandbox);
    sandbox.load();
    add_policy(&sandbox, "web", VIP, &BACKENDS, &[]);
    let programs_before: Vec<Value> = sandbox.balctl_json(&["status"])["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["program_id"].clone())
        .collect();

    let client = sandbox.spawn_client(&["connect", "--to", VIP, "--millis", "5000"]);
    for round in 0..3 {
        thread::sleep(Duration::from_millis(1000));
        if round == 1 {
            // The pin dir of a balctl from before the sockets and layers
            // maps: `load` creates them, under traffic.
            for map in ["sockets", "layers"] {
                std::fs::remove_file(sandbox.pins.join("maps").join(map)).unwrap();
            }
        }
        let output = sandbox.load();
        assert!(output.contains("9 hooks replaced in place"), "{output}");
        assert_eq!(output.contains("2 maps created"), round == 1, "{output}");
    }
    let report = finish(client);
    assert_eq!(count(&report, "failed"), 0, "{report}");
    assert!(count(&report, "ok") > 500, "too few connections to prove anything: {report}");

    let status = sandbox.balctl_json(&["status"]);
    let hooks = status["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 9, "{status}");
    for (hook, before) in hooks.iter().zip(&programs_before) {
        assert_eq!(hook["attached_programs"], 1, "{status}");
        assert_ne!(&hook["program_id"], before, "program was not replaced: {status}");
    }
    assert_eq!(bpftool_cgroup_show(&sandbox).len(), 9);
}

/// Another build of the datapath for `load --object`: the programs without
/// the trace event code (ebpf/programs/src/untraced.rs), which build.rs
/// builds next to the real ones.
pub static UNTRACED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/balctl-untraced"));

/// Each hook's program as `status` shows it: (hook, program id, tag).
fn hook_programs(sandbox: &Sandbox) -> Vec<(String, u64, String)> {
    let status = sandbox.balctl_json(&["status"]);
    let tag_of = |id: &Value| {
        status["programs"].as_array().expect("programs").iter().find(|p| &p["id"] == id).expect("program")["tag"]
            .as_str()
            .expect("tag")
            .to_owned()
    };
    let hooks = status["hooks"].as_array().expect("hooks");
    assert_eq!(hooks.len(), 9, "{status}");
    hooks
        .iter()
        .map(|h| {
            assert_eq!(h["attached_programs"], 1, "{status}");
            (
                h["hook"].as_str().unwrap().to_owned(),
                h["program_id"].as_u64().unwrap(),
                tag_of(&h["program_id"]),
            )
        })
        .collect()
}

/// Waits (up to 2 s: the kernel frees programs after an RCU grace
/// period) until no program of `ids` exists any more.
fn assert_programs_gone(ids: &[u64]) {
    let exists = |id: &u64| {
        Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()
            .unwrap()
            .status
            .success()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while ids.iter().any(exists) {
        assert!(
            Instant::now() < deadline,
            "old programs still exist: {:?}",
            ids.iter().filter(|id| exists(id)).collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 7, must show 2: upgrading to a build whose programs differ, and
/// back, while a client connects non-stop: zero failed connections, the
/// other build's programs behind the same links, and the replaced
/// programs gone from the kernel.
pub fn upgrade_to_another_build_under_traffic_loses_nothing() {
    let sandbox = Sandbox::new();
    serve_three(&sandbox);
    sandbox.load();
    add_policy(&sandbox, "web", VIP, &BACKENDS, &[]);
    let other_build = sandbox.scratch("balctl-untraced.o");
    std::fs::write(&other_build, UNTRACED).unwrap();
    let links = link_ids(&sandbox);
    let built_in = hook_programs(&sandbox);

    let client = sandbox.spawn_client(&["connect", "--to", VIP, "--millis", "4000"]);
    thread::sleep(Duration::from_millis(1000));
    let output = sandbox.load_with(&["--object", other_build.to_str().unwrap()]);
    assert!(output.contains("9 hooks replaced in place"), "{output}");
    let upgraded = hook_programs(&sandbox);
    assert_programs_gone(&built_in.iter().map(|p| p.1).collect::<Vec<_>>());
    thread::sleep(Duration::from_millis(1000));
    sandbox.load();
    let back = hook_programs(&sandbox);
    assert_programs_gone(&upgraded.iter().map(|p| p.1).collect::<Vec<_>>());
    thread::sleep(Duration::from_millis(1000));
    let report = finish(client);
    assert_eq!(count(&report, "failed"), 0, "{report}");
    assert!(count(&report, "ok") > 500, "too few connections to prove anything: {report}");

    // The builds differ where they trace (the resolving hooks), and the
    // built-in programs come back as they were.
    for ((old, new), again) in built_in.iter().zip(&upgraded).zip(&back) {
        assert_eq!(old.0, new.0);
        if ["connect4", "connect6", "sendmsg4", "sendmsg6"].contains(&old.0.as_str()) {
            assert_ne!(old.2, new.2, "{}: the other build has the same program", old.0);
        }
        assert_eq!(old.2, again.2, "{}: the built-in program came back different", old.0);
    }
    assert_eq!(link_ids(&sandbox), links, "the links were replaced, not updated");
    assert_eq!(bpftool_cgroup_show(&sandbox).len(), 9);
    assert_eq!(sandbox.reached(VIP, 30).len(), 3);

    // An object that is not balctl's is refused before anything changes.
    std::fs::write(&other_build, &UNTRACED[..UNTRACED.len() / 2]).unwrap();
    let refused = sandbox.balctl(&["load", "--object", other_build.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot be balctl's datapath"), "{stderr}");
    assert_eq!(hook_programs(&sandbox), back);
}

/// An object whose connect4 program is built for the sendmsg4 hook and
/// sendmsg4's for connect4 (their ELF section names swapped: the kernel
/// verifies both) is refused before anything changes: aya loads a program
/// for its section's attach type, so on a first load each would have run
/// behind the other hook's link, and a reload failed half way.
pub fn an_object_built_for_other_hooks_is_refused() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let before = hook_programs(&sandbox);
    let (connect, sendmsg) = (b"cgroup/connect4", b"cgroup/sendmsg4");
    let mut swapped = UNTRACED.to_vec();
    let mut swaps = 0;
    for at in 0..swapped.len() - connect.len() {
        let window = &mut swapped[at..at + connect.len()];
        if window == connect {
            window.copy_from_slice(sendmsg);
            swaps += 1;
        } else if window == sendmsg {
            window.copy_from_slice(connect);
            swaps += 1;
        }
    }
    assert!(swaps >= 2, "the sections were not found");
    let object = sandbox.scratch("swapped.o");
    std::fs::write(&object, &swapped).unwrap();
    let load = ["load", "--cgroup", sandbox.cgroup.to_str().unwrap(), "--object", object.to_str().unwrap()];
    let refused = |sandbox: &Sandbox| {
        let refused = sandbox.balctl(&load);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("cannot be balctl's datapath"), "{stderr}");
        assert!(stderr.contains("balctl_connect4") && stderr.contains("the connect4 hook"), "{stderr}");
    };
    refused(&sandbox);
    assert_eq!(hook_programs(&sandbox), before);
    sandbox.balctl_ok(&["unload", "--yes"]);
    refused(&sandbox);
    assert_eq!(sandbox.status().0, 3, "nothing is loaded");
    assert!(bpftool_cgroup_show(&sandbox).is_empty());
}

/// Must show 4 (peers): unconnected UDP replies come from the VIP and stay
/// on one backend per socket; connected UDP and TCP see the VIP as peer.
pub fn udp_and_peer_addresses_show_the_vip() {
    let sandbox = Sandbox::new();
    serve_three(&sandbox);
    sandbox.load();
    let udp_backends = three(|h| format!("192.0.2.{h}:5300"));
    add_policy(&sandbox, "udp", "198.18.0.20:5300/udp", &udp_backends, &[]);
    add_policy(&sandbox, "web", VIP, &BACKENDS, &[]);

    let report = sandbox.client(&["udp-sendto", "--to", "198.18.0.20:5300", "--count", "20"]);
    let replies = report["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 20, "{report}");
    assert!(replies.iter().all(|r| r["from"] == "198.18.0.20:5300"), "{report}");
    assert!(replies.iter().all(|r| r["answer"] == replies[0]["answer"]), "one socket, one backend: {report}");

    // Many sockets still spread over the backends.
    let answers: BTreeSet<String> = (0..30)
        .map(|_| {
            let report = sandbox.client(&["udp-sendto", "--to", "198.18.0.20:5300"]);
            report["replies"][0]["answer"].as_str().unwrap_or("none").to_owned()
        })
        .collect();
    assert!(answers.len() >= 2, "30 sockets all went to {answers:?}");

    let report = sandbox.client(&["udp-connected", "--to", "198.18.0.20:5300"]);
    assert_eq!(report["peer"], "198.18.0.20:5300", "{report}");
    assert!(report["answer"].as_str().is_some_and(|a| a.starts_with('b')), "{report}");

    let report = sandbox.client(&["tcp-peer", "--to", VIP]);
    assert_eq!(report["peer"], VIP, "{report}");
}

/// One unconnected UDP socket sending to three VIPs in turn: every reply
/// comes from the VIP it was sent to, and the socket keeps one backend per
/// VIP. The first VIP's choice is in the socket's sockets entry, the others'
/// in the affinity and revnat maps. (The VIPs have two backends each and
/// share none: a reply from a backend of two frontends cannot say which of
/// them it answers.)
pub fn one_udp_socket_keeps_a_backend_per_vip() {
    let sandbox = Sandbox::new();
    serve_three(&sandbox);
    for host in 2..=4 {
        sandbox.serve(&format!("b{host}-5301"), &[], &[&format!("192.0.2.{host}:5301")]);
    }
    sandbox.load();
    let vips = ["198.18.0.20:5300", "198.18.0.21:5300", "198.18.0.22:5300"];
    let backends = [
        ["192.0.2.2:5300", "192.0.2.3:5300"],
        ["192.0.2.4:5300", "192.0.2.2:5301"],
        ["192.0.2.3:5301", "192.0.2.4:5301"],
    ];
    for ((name, vip), backends) in ["first", "second", "third"].into_iter().zip(vips).zip(backends) {
        add_policy(&sandbox, name, &format!("{vip}/udp"), &backends, &[]);
    }

    // Held open: the first VIP's translation is the socket's way, freed when it closes.
    let (_client, report) =
        sandbox.hold(&["udp-sendto", "--to", vips[0], "--to", vips[1], "--to", vips[2], "--count", "10"]);
    let replies = report["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 30, "{report}");
    assert!(replies.iter().all(|r| r["from"] == r["to"]), "a reply not from its VIP: {report}");
    for vip in vips {
        let answers: BTreeSet<&str> =
            replies.iter().filter(|r| r["to"] == vip).filter_map(|r| r["answer"].as_str()).collect();
        assert_eq!(answers.len(), 1, "{vip} answered from {answers:?}");
    }

    let revnat = sandbox.balctl_json(&["dump", "revnat"]);
    let frontends: BTreeSet<&str> =
        revnat["revnat"].as_array().unwrap().iter().filter_map(|e| e["frontend"].as_str()).collect();
    assert_eq!(frontends, vips.into_iter().collect(), "{revnat:#}");
    let cookies: BTreeSet<u64> =
        revnat["revnat"].as_array().unwrap().iter().filter_map(|e| e["cookie"].as_u64()).collect();
    assert_eq!(cookies.len(), 1, "one socket: {revnat:#}");
    let affinity = sandbox.balctl_json(&["dump", "affinity"]);
    let owners: Vec<(&str, Option<u64>)> = affinity["affinity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["owner_kind"].as_str().unwrap(), e["cookie"].as_u64()))
        .collect();
    let cookie = cookies.first().copied();
    assert_eq!(owners, [("socket", cookie); 3], "{affinity:#}");
}

/// The sockets map keeps the way of a socket in use. Loaded with room for
/// 4 sockets (one set of 4 ways), one unconnected socket exchanges 40 times
/// with a VIP of three backends, and after each exchange 3 new sockets make
/// one each, all kept open. Each new socket after the first 3 takes the
/// way used least recently, never the long-lived socket's, so that one
/// stays on its first backend (a socket that lost its way would choose
/// again), every reply comes from the VIP, and exactly 117 ways are taken
/// from open sockets (a long-lived socket that lost its way would take
/// one more when it sends again). Once the client exits, its sockets'
/// ways are free.
pub fn a_socket_in_use_keeps_its_way() {
    let sandbox = Sandbox::new();
    serve_three(&sandbox);
    sandbox.load_with(&["--map-size", "sockets=4"]);
    let vip = "198.18.0.20:5300";
    add_policy(&sandbox, "dns", &format!("{vip}/udp"), &three(|h| format!("192.0.2.{h}:5300")), &[]);

    let (client, report) = sandbox.hold(&["udp-sendto", "--to", vip, "--count", "40", "--fresh", "3"]);
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    let replies = report["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 40, "{report}");
    assert!(replies.iter().all(|r| r["from"] == vip), "{report}");
    let kept: BTreeSet<&str> = replies.iter().filter_map(|r| r["answer"].as_str()).collect();
    assert_eq!(kept.len(), 1, "the long-lived socket lost its way: {kept:?}");
    let fresh = report["fresh"].as_array().expect("fresh");
    assert_eq!(fresh.len(), 120, "{report}");
    let spread: BTreeSet<&str> = fresh.iter().filter_map(Value::as_str).collect();
    assert!(spread.len() >= 2, "120 new sockets all went to {spread:?}");

    let stats = sandbox.balctl_json(&["dump", "stats"]);
    assert_eq!(stats["datapath"]["evicted_translations"], 120 - 3, "{stats:#}");
    // One set: four ways, all taken; then all free.
    let sockets = || {
        let status = sandbox.balctl_json(&["status"]);
        let map = status["maps"].as_array().unwrap().iter().find(|m| m["name"] == "sockets").unwrap().clone();
        (map["entries"].as_u64(), map["capacity"].as_u64())
    };
    assert_eq!(sockets(), (Some(4), Some(4)));
    drop(client);
    assert_eq!(sockets(), (Some(0), Some(4)));
}

/// A socket that only reads keeps its way too: reading its peer's address
/// (getpeername(), as recvmsg() on UDP) marks its way used. Loaded with
/// room for 4 sockets, a TCP connection to a VIP asks for its peer at each
/// of 10 turns, 20 ms apart (the datapath's clock moves on), after which 3
/// new connections are made and kept open. Each new connection after the
/// first 3 takes the way used least recently: never the reader's, which
/// always shows the VIP, while 27 ways are taken from the others. (A read
/// that did not mark the way would leave the reader's as the oldest at the
/// second turn, and it would show its backend from then on.)
pub fn a_socket_that_reads_keeps_its_way() {
    let sandbox = Sandbox::new();
    serve_three(&sandbox);
    sandbox.load_with(&["--map-size", "sockets=4"]);
    let vip = "198.18.0.21:80";
    add_policy(&sandbox, "web", vip, &three(|h| format!("192.0.2.{h}:8080")), &[]);

    let (client, report) = sandbox.hold(&[
        "reader-among-fresh",
        "--to",
        vip,
        "--turns",
        "10",
        "--fresh",
        "3",
        "--pause-ms",
        "20",
    ]);
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(report["peers"], serde_json::json!(vec![vip; 10]), "{report}");
    let stats = sandbox.balctl_json(&["dump", "stats"]);
    assert_eq!(stats["datapath"]["evicted_translations"], 10 * 3 - 3, "{stats:#}");
    drop(client);
}

/// Must show 4 (dig): `dig @VIP` against dnsmasq backends, UDP and TCP,
/// answers without "reply from unexpected source". (BIND 9.18's dig uses
/// connected UDP sockets; the reply translation of unconnected sockets is
/// proven by the recvfrom() client in `udp_and_peer_addresses_show_the_vip`.)
pub fn dig_through_a_dns_vip() {
    let sandbox = Sandbox::new();
    sandbox.load();
    for host in ["192.0.2.5", "192.0.2.6"] {
        sandbox.spawn_dnsmasq(host, "/svc.test/192.0.2.77");
    }
    let dns_backends = ["192.0.2.5:53", "192.0.2.6:53"];
    add_policy(&sandbox, "dns-udp", "198.18.0.53:53/udp", &dns_backends, &[]);
    add_policy(&sandbox, "dns-tcp", "198.18.0.53:53/tcp", &dns_backends, &[]);

    for transport in ["+notcp", "+tcp"] {
        let mut last = String::new();
        // dnsmasq needs a moment to bind; retry briefly, then insist.
        for _ in 0..50 {
            let output = sandbox.client_program(&[
                "dig",
                "@198.18.0.53",
                "-p",
                "53",
                "www.svc.test",
                "A",
                transport,
                "+tries=1",
                "+time=2",
            ]);
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            if output.status.success() && last.contains("192.0.2.77") {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        assert!(last.contains("status: NOERROR") && last.contains("192.0.2.77"), "dig {transport}: {last}");
        assert!(!last.contains("unexpected source"), "dig {transport}: {last}");
        assert!(last.contains("SERVER: 198.18.0.53#53"), "dig {transport}: {last}");
    }
}

/// TCP through `tcp_vip` reaches b2, b3 and b4 and sees the VIP as peer;
/// UDP replies through `udp_vip` come from the VIP.
fn reaches_every_backend_and_shows_the_vip(sandbox: &Sandbox, tcp_vip: &str, udp_vip: &str) {
    let report = sandbox.client(&["connect", "--to", tcp_vip, "--count", "100"]);
    assert_eq!(count(&report, "failed"), 0, "{report}");
    assert_eq!(backends_seen(&report), ["b2", "b3", "b4"], "{report}");
    let report = sandbox.client(&["tcp-peer", "--to", tcp_vip]);
    assert_eq!(report["peer"], tcp_vip, "{report}");
    let report = sandbox.client(&["udp-sendto", "--to", udp_vip, "--count", "5"]);
    let replies = report["replies"].as_array().expect("replies");
    assert!(replies.len() == 5 && replies.iter().all(|r| r["from"] == udp_vip), "{report}");
}

/// Must show 5: an IPv6 VIP to IPv6 backends, and an IPv4 VIP reached from
/// an AF_INET6 socket through its v4-mapped address.
pub fn ipv6_and_v4_mapped_sockets() {
    let sandbox = Sandbox::new();
    serve_three(&sandbox);
    sandbox.load();
    let v6_backends = three(|h| format!("[2001:db8::{h}]:8080"));
    add_policy(&sandbox, "web6", "[2001:db8:5e::10]:80", &v6_backends, &[]);
    let v6_udp = three(|h| format!("[2001:db8::{h}]:5300"));
    add_policy(&sandbox, "udp6", "[2001:db8:5e::20]:5300/udp", &v6_udp, &[]);
    add_policy(&sandbox, "web4", VIP, &BACKENDS, &[]);
    let udp4 = three(|h| format!("192.0.2.{h}:5300"));
    add_policy(&sandbox, "udp4", "198.18.0.20:5300/udp", &udp4, &[]);

    reaches_every_backend_and_shows_the_vip(&sandbox, "[2001:db8:5e::10]:80", "[2001:db8:5e::20]:5300");
    // AF_INET6 sockets talking to the IPv4 VIPs as ::ffff:198.18.0.x.
    reaches_every_backend_and_shows_the_vip(&sandbox, "[::ffff:198.18.0.10]:80", "[::ffff:198.18.0.20]:5300");
}

/// Must show 6: with affinity, one namespace sticks to one backend; once
/// that backend leaves the service, new connections go to the others.
pub fn affinity_sticks_until_the_backend_leaves() {
    let sandbox = Sandbox::new();
    serve_three(&sandbox);
    sandbox.load();
    add_policy(&sandbox, "sticky", "198.18.0.30:80", &BACKENDS, &["--affinity", "300"]);
    add_policy(&sandbox, "spread", "198.18.0.31:80", &BACKENDS, &[]);

    let control = sandbox.client(&["connect", "--to", "198.18.0.31:80", "--count", "50"]);
    assert!(backends_seen(&control).len() > 1, "without affinity connections spread: {control}");

    let report = sandbox.client(&["connect", "--to", "198.18.0.30:80", "--count", "50"]);
    assert_eq!(count(&report, "failed"), 0, "{report}");
    let seen = backends_seen(&report);
    assert_eq!(seen.len(), 1, "affinity kept one backend: {report}");
    let chosen = seen[0].clone();

    let remaining: Vec<&str> =
        BACKENDS.iter().copied().filter(|b| !b.starts_with(&format!("192.0.2.{}:", &chosen[1..]))).collect();
    assert_eq!(remaining.len(), 2);
    let mut update = vec!["policy", "update", "sticky"];
    for backend in &remaining {
        update.extend(["--backend", backend]);
    }
    sandbox.balctl_ok(&update);

    let report = sandbox.client(&["connect", "--to", "198.18.0.30:80", "--count", "50"]);
    assert_eq!(count(&report, "failed"), 0, "{report}");
    let seen = backends_seen(&report);
    assert_eq!(seen.len(), 1, "affinity holds on the new backend: {report}");
    assert_ne!(seen[0], chosen, "a removed backend was chosen: {report}");
}

/// Must show 7: a frontend with no backend rejects at once with an error,
/// neither a timeout nor an untranslated connect.
pub fn frontend_without_backends_rejects_at_once() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.balctl_ok(&["policy", "add", "closed", "--vip", "198.18.0.11:80"]);
    sandbox.balctl_ok(&["policy", "add", "closed-udp", "--vip", "198.18.0.11:53/udp"]);

    let started = Instant::now();
    let report = sandbox.client(&["connect", "--to", "198.18.0.11:80"]);
    let elapsed = started.elapsed();
    assert_eq!(report["errors"], serde_json::json!({ "ECONNREFUSED": 1 }), "{report}");
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");

    let report = sandbox.client(&["udp-sendto", "--to", "198.18.0.11:53"]);
    assert_eq!(report["errors"], serde_json::json!({ "ECONNREFUSED": 1 }), "{report}");
    // A VIP balctl does not know stays untranslated and unreachable.
    let report = sandbox.client(&["connect", "--to", "198.18.0.12:80"]);
    assert_eq!(report["errors"], serde_json::json!({ "ENETUNREACH": 1 }), "{report}");
}
