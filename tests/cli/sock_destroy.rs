//! Issue 19, item 3: stale connected sockets. When a backend leaves a
//! frontend, the connected sockets balctl translated through that frontend
//! to it are destroyed (the socket iterators and `bpf_sock_destroy`):
//! connected UDP always, TCP with `sync --destroy-tcp-sockets`. The
//! application's next send or receive fails and a new socket reaches a
//! backend that is left. An unconnected UDP socket keeps its port and keeps
//! working; a socket connected straight to the backend is untouched. Driven
//! by a one-shot `sync -f`, by the `sync --watch` agent on files and on
//! the Kubernetes API (within 1 s), and by `policy update` and `delete`.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    stats::{free_port, samples, scrape_text},
    support::{self, Sandbox, Session, apiserver::ApiServer, watcher::Watcher},
};

const VIP: &str = "198.18.0.53:53";
const X: &str = "192.0.2.2:5353";
const Y: &str = "192.0.2.3:5353";
const X6: &str = "[2001:db8::2]:5353";
const Y6: &str = "[2001:db8::3]:5353";

/// A DNS-like service on the VIP, over UDP and TCP, to `backends`.
fn service(backends: &[&str]) -> String {
    let backends: Vec<String> =
        backends.iter().map(|b| format!("\"{}\"", b.trim_end_matches(":5353"))).collect();
    format!(
        "[[service]]\nname = \"dns-sdes\"\naddresses = [\"198.18.0.53\"]\nbackends = [{}]\n\
         ports = [{{ port = 53, target_port = 5353, protocol = \"udp\" }}, \
         {{ port = 53, target_port = 5353, protocol = \"tcp\" }}]\n",
        backends.join(", ")
    )
}

/// The sandbox with backends x (192.0.2.2) and y (192.0.2.3), answering
/// their id over UDP and lasting TCP connections, and balctl loaded.
fn sandbox() -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.serve_lasting("x", &[X, X6], &[X, X6]);
    sandbox.serve_lasting("y", &[Y, Y6], &[Y, Y6]);
    sandbox.load();
    sandbox
}

/// Opens the socket `name` (a session command) and requires it opened.
fn open(session: &mut Session, command: &str) -> String {
    let opened = session.run(command);
    assert!(opened["error"].is_null(), "{command}: {opened}");
    opened["local"].as_str().unwrap().to_owned()
}

/// `ask NAME [ADDR]`: the answer, or the errno as `error: ERRNO`.
fn ask(session: &mut Session, what: &str) -> String {
    let reply: Value = session.run(&format!("ask {what}"));
    match reply["answer"].as_str() {
        Some(answer) => answer.to_owned(),
        None => format!("error: {}", reply["error"].as_str().unwrap()),
    }
}

/// The local address `ask NAME ADDR` sent from, and its answer.
fn ask_from(session: &mut Session, what: &str) -> (String, String) {
    let reply: Value = session.run(&format!("ask {what}"));
    let answer = reply["answer"].as_str().map_or_else(|| format!("error: {}", reply["error"]), str::to_owned);
    (reply["local"].as_str().unwrap().to_owned(), answer)
}

/// The connected UDP socket `name` was destroyed: its next receive fails
/// with ECONNABORTED, and the kernel disconnected it, so a send without an
/// address fails with EDESTADDRREQ.
fn assert_stale_udp_destroyed(session: &mut Session, name: &str) {
    assert_eq!(session.run(&format!("recv {name}"))["error"], "ECONNABORTED", "{name}");
    assert_eq!(ask(session, name), "error: EDESTADDRREQ", "{name}");
}

fn sync(sandbox: &Sandbox, file: &Path, backends: &[&str], more: &[&str]) -> String {
    fs::write(file, service(backends)).unwrap();
    let mut args = vec!["sync", "-f", file.to_str().unwrap()];
    args.extend(more);
    sandbox.balctl_ok(&args)
}

/// A connected UDP socket through the VIP to x, destroyed once x leaves:
/// its next exchange fails with ECONNABORTED, a new socket reaches y. The
/// unconnected socket keeps its port and reaches y; the socket connected
/// straight to x still reaches x. TCP connections through the VIP are left
/// alone without `--destroy-tcp-sockets` and reset with it.
pub fn a_removed_backend_s_connected_sockets_are_destroyed() {
    let sandbox = sandbox();
    let file = sandbox.scratch("dns.toml");
    sync(&sandbox, &file, &[X], &[]);
    let mut session = sandbox.session();
    open(&mut session, &format!("udp connected {VIP}"));
    let unconnected_port = open(&mut session, "udp-unconnected unconnected");
    open(&mut session, &format!("udp direct {X}"));
    open(&mut session, &format!("tcp tcp {VIP}"));
    open(&mut session, &format!("tcp tcp-direct {X}"));
    assert_eq!(ask(&mut session, "connected"), "x");
    assert_eq!(ask_from(&mut session, &format!("unconnected {VIP}")), (unconnected_port.clone(), "x".into()));
    assert_eq!(ask(&mut session, "direct"), "x");
    assert_eq!(ask(&mut session, "tcp"), "x");
    assert_eq!(ask(&mut session, "tcp-direct"), "x");

    // y joins: nothing left, nothing destroyed.
    let synced = sync(&sandbox, &file, &[X, Y], &[]);
    assert!(!synced.contains("destroyed"), "{synced}");
    assert_eq!(ask(&mut session, "connected"), "x");

    // x leaves: its connected UDP socket is destroyed, nothing else.
    let synced = sync(&sandbox, &file, &[Y], &[]);
    assert!(synced.contains("sync: destroyed 1 connected sockets"), "{synced}");
    assert_stale_udp_destroyed(&mut session, "connected");
    open(&mut session, &format!("udp again {VIP}"));
    assert_eq!(ask(&mut session, "again"), "y");
    assert_eq!(ask_from(&mut session, &format!("unconnected {VIP}")), (unconnected_port, "y".into()));
    assert_eq!(ask(&mut session, "direct"), "x");
    assert_eq!(ask(&mut session, "tcp"), "x", "TCP is left alone without --destroy-tcp-sockets");

    // With the option: x comes back (a new backend), a new TCP connection
    // reaches it, x leaves again: that connection is reset. The first one,
    // whose backend left before, without the option, is not revisited.
    sync(&sandbox, &file, &[X], &[]);
    open(&mut session, &format!("tcp tcp-again {VIP}"));
    assert_eq!(ask(&mut session, "tcp-again"), "x");
    let synced = sync(&sandbox, &file, &[Y], &["--destroy-tcp-sockets"]);
    assert!(synced.contains("sync: destroyed 1 connected sockets"), "{synced}");
    assert_eq!(ask(&mut session, "tcp-again"), "error: ECONNABORTED");
    assert_eq!(ask(&mut session, "tcp"), "x");
    assert_eq!(ask(&mut session, "tcp-direct"), "x");
    assert_eq!(ask(&mut session, "direct"), "x");
    open(&mut session, &format!("tcp tcp-new {VIP}"));
    assert_eq!(ask(&mut session, "tcp-new"), "y");

    // A kernel where the iterators cannot run (here: its BTF hidden, as on
    // a kernel without bpf_sock_destroy): one clear warning, the sockets
    // left are counted, the change is applied.
    open(&mut session, &format!("udp last {VIP}"));
    assert_eq!(ask(&mut session, "last"), "y");
    fs::write(&file, service(&[X])).unwrap();
    let hide_btf = format!(
        "mount --bind /dev/null /sys/kernel/btf/vmlinux && exec {} sync -f {} -o json",
        support::balctl(),
        file.display()
    );
    let output = sandbox.command_of("unshare", &["--mount", "sh", "-c", &hide_btf]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let warning = "connected sockets of backends that left their frontends cannot be destroyed: \
                   the kernel's BTF cannot be read";
    assert!(stderr.contains("WARN") && stderr.contains(warning), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["stale_sockets"], serde_json::json!({ "destroyed": 0, "left": 1 }), "{report}");
    assert_eq!(ask(&mut session, "last"), "y", "left connected");
    assert_eq!(ask(&mut session, "tcp-new"), "y");
}

/// A new socket of `protocol` (`udp` or `tcp`) through the VIP that
/// reached x, named `<prefix><n>`; some reach y first.
fn socket_on_x(session: &mut Session, protocol: &str, prefix: &str) -> String {
    for index in 0..40 {
        let name = format!("{prefix}{index}");
        open(session, &format!("{protocol} {name} {VIP}"));
        if ask(session, &name) == "x" {
            return name;
        }
    }
    panic!("40 {protocol} sockets through the VIP, none to x");
}

/// The connected UDP socket `name`, asked over again and again, is
/// destroyed within a second of `since`: disconnected by the kernel, with
/// its pending error. An ask sends, then receives: destroyed before the
/// send, the send fails (EDESTADDRREQ) and the pending error waits for the
/// next receive; destroyed between the two, the receive takes the pending
/// error (ECONNABORTED) and the next send fails.
fn destroyed_while_in_use(session: &mut Session, name: &str, since: Instant) {
    match failure_within_a_second(session, name, since).as_str() {
        "error: EDESTADDRREQ" => assert_eq!(session.run(&format!("recv {name}"))["error"], "ECONNABORTED"),
        "error: ECONNABORTED" => assert_eq!(ask(session, name), "error: EDESTADDRREQ", "{name}"),
        other => panic!("{name}: {other}, not a destroyed socket's error"),
    }
}

/// Asks over `name` until it fails, at most 1 s after `since`; the error.
fn failure_within_a_second(session: &mut Session, name: &str, since: Instant) -> String {
    loop {
        match ask(session, name).as_str() {
            "x" => assert!(
                since.elapsed() < Duration::from_secs(1),
                "{name} still on x after {:?}",
                since.elapsed()
            ),
            failed => {
                let took = since.elapsed();
                assert!(took < Duration::from_secs(1), "{name} destroyed after {took:?}");
                return failed.to_owned();
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The watch agent destroys a removed backend's connected UDP socket within
/// a second of the file's change, and leaves TCP alone; started with
/// BALCTL_DESTROY_TCP_SOCKETS=true, it resets TCP connections too.
pub fn the_watch_agent_destroys_stale_sockets_within_a_second() {
    let sandbox = sandbox();
    let file = sandbox.scratch("dns.toml");
    let file_arg = file.display().to_string();
    fs::write(&file, service(&[X, Y])).unwrap();
    let watcher = Watcher::start(&sandbox, &[&file_arg]);
    watcher.wait_stdout("sync: frontends +2 ~0 -0");
    let mut session = sandbox.session();
    let udp = socket_on_x(&mut session, "udp", "udp");
    let tcp = socket_on_x(&mut session, "tcp", "tcp");

    let written = Instant::now();
    fs::write(&file, service(&[Y])).unwrap();
    // Disconnected by the kernel; its pending error follows.
    destroyed_while_in_use(&mut session, &udp, written);
    watcher.wait_stdout("sync: destroyed 1 connected sockets");
    assert_eq!(ask(&mut session, &tcp), "x", "TCP is left alone by default");
    assert_eq!(watcher.terminate(), Some(0));

    fs::write(&file, service(&[X, Y])).unwrap();
    let watcher = Watcher::start_with_env(&sandbox, &[&file_arg], &[("BALCTL_DESTROY_TCP_SOCKETS", "true")]);
    watcher.wait_stdout("sync: frontends +0 ~2 -0");
    let tcp = socket_on_x(&mut session, "tcp", "tcp-env");
    let written = Instant::now();
    fs::write(&file, service(&[Y])).unwrap();
    assert_eq!(failure_within_a_second(&mut session, &tcp, written), "error: ECONNABORTED");
    watcher.wait_stdout("sync: destroyed 1 connected sockets");
    assert_eq!(watcher.terminate(), Some(0));
}

/// A policy whose backend is taken away, by `policy update` or with the
/// policy by `policy delete`, has its connected UDP sockets destroyed;
/// over IPv6 too.
pub fn a_policy_change_destroys_its_removed_backend_s_udp_sockets() {
    let sandbox = sandbox();
    let vip = "198.18.0.54:53";
    sandbox.balctl_ok(&["policy", "add", "dns-sdes", "--vip", &format!("{vip}/udp"), "--backend", X]);
    let mut session = sandbox.session();
    open(&mut session, &format!("udp first {vip}"));
    assert_eq!(ask(&mut session, "first"), "x");
    let updated = sandbox.balctl_ok(&["policy", "update", "dns-sdes", "--backend", Y]);
    assert!(updated.contains("policy/dns-sdes: destroyed 1 connected sockets"), "{updated}");
    assert_stale_udp_destroyed(&mut session, "first");
    open(&mut session, &format!("udp second {vip}"));
    assert_eq!(ask(&mut session, "second"), "y");
    let deleted = sandbox.balctl_ok(&["policy", "delete", "dns-sdes"]);
    assert!(deleted.contains("policy/dns-sdes: destroyed 1 connected sockets"), "{deleted}");
    assert_stale_udp_destroyed(&mut session, "second");

    // IPv6 alike.
    let vip6 = "[2001:db8:5e::53]:53";
    sandbox.balctl_ok(&["policy", "add", "dns6-sdes", "--vip", &format!("{vip6}/udp"), "--backend", X6]);
    open(&mut session, &format!("udp v6 {vip6}"));
    assert_eq!(ask(&mut session, "v6"), "x");
    let updated = sandbox.balctl_ok(&["policy", "update", "dns6-sdes", "--backend", Y6]);
    assert!(updated.contains("policy/dns6-sdes: destroyed 1 connected sockets"), "{updated}");
    assert_stale_udp_destroyed(&mut session, "v6");
    open(&mut session, &format!("udp v6-again {vip6}"));
    assert_eq!(ask(&mut session, "v6-again"), "y");
}

/// The case through `sync --kube --watch`: a CoreDNS pod deleted
/// (its endpoint gone from the EndpointSlice) has the resolver's connected
/// UDP socket to it destroyed within a second; a new one reaches the other.
pub fn the_kube_agent_destroys_a_deleted_coredns_pod_s_sockets() {
    let sandbox = sandbox();
    let server = ApiServer::start();
    let kubeconfig = sandbox.scratch("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    server.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "kube-dns", "namespace": "kube-system" },
        "spec": {
            "clusterIP": "198.18.0.53", "clusterIPs": ["198.18.0.53"], "type": "ClusterIP",
            "ports": [{ "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353 }]
        }
    }));
    let slice = |endpoints: &[&str]| {
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|ip| json!({ "addresses": [ip], "conditions": { "ready": true }, "nodeName": "node-a" }))
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-1", "namespace": "kube-system",
                "labels": { "kubernetes.io/service-name": "kube-dns" }
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{ "name": "dns", "port": 5353, "protocol": "UDP" }]
        })
    };
    server.apply(slice(&["192.0.2.2"]));
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let args = [
        "--kube",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "node-a",
        "--metrics-addr",
        &metrics,
    ];
    let watcher = Watcher::start_with(&sandbox, &[], &args);
    watcher.wait_stdout("frontends +1 ~0 -0");
    let mut session = sandbox.session();
    let resolver = socket_on_x(&mut session, "udp", "resolver");

    let deleted = Instant::now();
    server.apply(slice(&["192.0.2.3"]));
    destroyed_while_in_use(&mut session, &resolver, deleted);
    open(&mut session, &format!("udp again {VIP}"));
    assert_eq!(ask(&mut session, "again"), "y");
    watcher.wait_stdout("sync: destroyed 1 connected sockets");
    let counted = samples(&scrape_text(port));
    assert_eq!(counted.get("balctl_stale_sockets_total{outcome=\"destroyed\"}"), Some(&1.0), "{counted:?}");
    assert_eq!(counted.get("balctl_stale_sockets_total{outcome=\"left\"}"), Some(&0.0), "{counted:?}");
    assert_eq!(watcher.terminate(), Some(0));
}
