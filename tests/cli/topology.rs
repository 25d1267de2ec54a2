//! Issue 19, must show 1: topology-aware routing as kube-proxy does it, on
//! the real kernel. The client namespace plays node-a; backends live in the
//! server namespace: 192.0.2.2 in zone a, 192.0.2.3 and .4 in zone b
//! (catalog, zone hints); 192.0.2.5 on node-a and 192.0.2.6 on node-b
//! (inventory, node and zone hints).

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::support::{Sandbox, apiserver::ApiServer, watcher::Watcher};

const CATALOG: &str = "198.18.0.110";
const INVENTORY: &str = "198.18.0.111";
/// The port of catalog and inventory whose backends echo what they are sent.
const ECHO_PORT: u16 = 7000;

fn node(zone: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": "node-a", "labels": { "topology.kubernetes.io/zone": zone } },
        "status": { "addresses": [{ "type": "InternalIP", "address": "192.0.2.1" }] }
    })
}

fn service(name: &str, cluster_ip: &str, distribution: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": {
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "type": "ClusterIP",
            "trafficDistribution": distribution,
            "ports": [
                { "name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080 },
                { "name": "udp", "port": 80, "protocol": "UDP", "targetPort": 8080 },
                { "name": "echo", "port": ECHO_PORT, "protocol": "TCP", "targetPort": ECHO_PORT }
            ]
        }
    })
}

/// One endpoint: its last address byte, its node, and its hints (JSON, or
/// null for none).
fn endpoint(last: u8, node: &str, hints: Value) -> Value {
    let mut endpoint = json!({
        "addresses": [format!("192.0.2.{last}")], "conditions": { "ready": true }, "nodeName": node
    });
    if !hints.is_null() {
        endpoint["hints"] = hints;
    }
    endpoint
}

fn zones(zone: &str) -> Value {
    json!({ "forZones": [{ "name": zone }] })
}

fn node_and_zone(node: &str, zone: &str) -> Value {
    json!({ "forNodes": [{ "name": node }], "forZones": [{ "name": zone }] })
}

fn slice(service: &str, endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-1"), "namespace": "shop",
            "labels": { "kubernetes.io/service-name": service }
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [
            { "name": "http", "port": 8080, "protocol": "TCP" },
            { "name": "udp", "port": 8080, "protocol": "UDP" },
            { "name": "echo", "port": ECHO_PORT, "protocol": "TCP" }
        ]
    })
}

/// catalog's endpoints, hinted for their zones.
fn catalog_slice() -> Value {
    slice(
        "catalog",
        vec![
            endpoint(2, "node-a", zones("a")),
            endpoint(3, "node-b", zones("b")),
            endpoint(4, "node-b", zones("b")),
        ],
    )
}

/// The backends that answered 60 connections to `vip`:80, sorted.
fn reached(sandbox: &Sandbox, vip: &str) -> Vec<String> {
    let reached: BTreeSet<String> = sandbox.reached(&format!("{vip}:80"), 60).into_iter().collect();
    reached.into_iter().collect()
}

/// Serves `http` and `udp` (the peer, answering its id) and an echo
/// server on every backend address.
fn backends(sandbox: &Sandbox) {
    for last in 2..=6 {
        let address = format!("192.0.2.{last}:8080");
        sandbox.serve(&format!("b{last}"), &[&address], &[&address]);
    }
    let echo = "import socket, sys, threading\n\
        def echo(c):\n    while (d := c.recv(100)):\n        c.sendall(d)\n\
        def serve(address):\n    s = socket.create_server((address, int(sys.argv[1])), reuse_port=True)\n    \
        while True:\n        threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()\n\
        for a in sys.argv[2:]:\n    threading.Thread(target=serve, args=(a,), daemon=True).start()\n\
        threading.Event().wait()\n";
    let port = ECHO_PORT.to_string();
    let mut argv = vec!["python3", "-c", echo, &port];
    let addresses: Vec<String> = (2..=6).map(|last| format!("192.0.2.{last}")).collect();
    argv.extend(addresses.iter().map(String::as_str));
    sandbox.spawn_server_program(&argv);
}

/// A client holding `count` TCP connections to `vip`:ECHO_PORT, which
/// checks on request that every one still echoes.
struct HeldConnections {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl HeldConnections {
    fn open(sandbox: &Sandbox, vip: &str, count: u32) -> Self {
        // Connects retry for up to 5 s: the echo servers may still be starting.
        let script = "import socket, sys, time\n\
            vip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n\
            def connect():\n    for _ in range(50):\n        try:\n            \
            return socket.create_connection((vip, port), timeout=2)\n        \
            except OSError:\n            time.sleep(0.1)\n    raise SystemExit('no connection')\n\
            held = [connect() for _ in range(count)]\n\
            print('held', len(held), flush=True)\n\
            sys.stdin.readline()\n\
            ok = 0\n\
            for c in held:\n    try:\n        c.sendall(b'ping')\n        ok += c.recv(4) == b'ping'\n    \
            except OSError:\n        pass\n\
            print('echoed', ok, flush=True)\n";
        let (port, count) = (ECHO_PORT.to_string(), count.to_string());
        let mut child = sandbox
            .peer(true, &sandbox.client_ns)
            .args(["exec", "python3", "-c", script, vip, &port, &count])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the held connections' client");
        let (stdin, stdout) = (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()));
        let mut held = Self { child, stdin, stdout };
        assert_eq!(held.line(), format!("held {count}"));
        held
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the client");
        line.trim().to_owned()
    }

    /// How many of the connections still echo.
    fn echoing(mut self) -> String {
        self.stdin.write_all(b"go\n").expect("tell the client");
        let line = self.line();
        let _ = self.child.wait();
        line
    }
}

impl Drop for HeldConnections {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Zone hints: node-a in zone a reaches only zone a's endpoint; an endpoint
/// without hints brings every endpoint back; node hints (PreferSameNode)
/// choose this node's endpoint and fall back to the others without one.
/// Synced from YAML files, as a one-shot sync.
pub fn zone_and_node_hints_choose_the_endpoints() {
    let sandbox = Sandbox::new();
    sandbox.load();
    backends(&sandbox);
    let file = sandbox.scratch("topology.json");
    let sync = |objects: Vec<Value>| {
        fs::write(
            &file,
            serde_json::to_string(&json!({ "apiVersion": "v1", "kind": "List", "items": objects })).unwrap(),
        )
        .unwrap();
        sandbox.balctl_ok(&["sync", "--node-name", "node-a", "-f", file.to_str().unwrap()])
    };
    let inventory = |endpoints| slice("inventory", endpoints);
    let with_node_a = || {
        inventory(vec![
            endpoint(5, "node-a", node_and_zone("node-a", "a")),
            endpoint(6, "node-b", node_and_zone("node-b", "b")),
        ])
    };
    let objects = |catalog: Value, inventory: Value| {
        vec![
            node("a"),
            service("catalog", CATALOG, "PreferSameZone"),
            catalog,
            service("inventory", INVENTORY, "PreferSameNode"),
            inventory,
        ]
    };
    sync(objects(catalog_slice(), with_node_a()));
    assert_eq!(reached(&sandbox, CATALOG), ["b2"]);
    assert_eq!(reached(&sandbox, INVENTORY), ["b5"]);

    // One endpoint without hints: kube-proxy uses every endpoint.
    let one_without = slice(
        "catalog",
        vec![
            endpoint(2, "node-a", zones("a")),
            endpoint(3, "node-b", Value::Null),
            endpoint(4, "node-b", zones("b")),
        ],
    );
    sync(objects(one_without, with_node_a()));
    assert_eq!(reached(&sandbox, CATALOG), ["b2", "b3", "b4"]);

    // node-a's endpoint of inventory goes: no node hint for node-a, and no
    // zone hint for zone a, so the rest, not none.
    let without_node_a = inventory(vec![endpoint(6, "node-b", node_and_zone("node-b", "b"))]);
    sync(objects(catalog_slice(), without_node_a));
    assert_eq!(reached(&sandbox, CATALOG), ["b2"]);
    assert_eq!(reached(&sandbox, INVENTORY), ["b6"]);

    // A zone without any endpoint hinted for it: every endpoint, no ECONNREFUSED.
    let none_for_a = slice(
        "catalog",
        vec![
            endpoint(2, "node-a", zones("c")),
            endpoint(3, "node-b", zones("b")),
            endpoint(4, "node-b", zones("b")),
        ],
    );
    sync(objects(none_for_a, with_node_a()));
    assert_eq!(reached(&sandbox, CATALOG), ["b2", "b3", "b4"]);
}

/// `sync --kube --watch`: node-a's zone label changes from a to b; within a
/// second new connections go to zone b's endpoints, while 20 connections
/// established to zone a's endpoint keep working, and so does a connected
/// UDP socket: its backend is still an endpoint, so it is not stale.
pub fn a_zone_change_moves_new_connections_and_keeps_established_ones() {
    let sandbox = Sandbox::new();
    sandbox.load();
    backends(&sandbox);
    let server = ApiServer::start();
    let kubeconfig = sandbox.scratch("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    server.apply(node("a"));
    server.apply(service("catalog", CATALOG, "PreferSameZone"));
    server.apply(catalog_slice());
    let args = ["--kube", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", "node-a"];
    let watcher = Watcher::start_with(&sandbox, &[], &args);
    watcher.wait_stdout("frontends +3 ~0 -0");
    assert_eq!(reached(&sandbox, CATALOG), ["b2"]);
    let held = HeldConnections::open(&sandbox, CATALOG, 20);
    let mut session = sandbox.session();
    let opened = session.run(&format!("udp connected {CATALOG}:80"));
    assert!(opened["error"].is_null(), "{opened}");
    assert_eq!(session.run("ask connected")["answer"], "b2");

    let started = Instant::now();
    server.apply(node("b"));
    // catalog's three frontends change; the Node serves the same addresses.
    watcher.wait_stdout("frontends +0 ~3 -0");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "the zone change took {took:?} to apply");
    assert_eq!(reached(&sandbox, CATALOG), ["b3", "b4"]);
    assert_eq!(held.echoing(), "echoed 20", "established connections broke");
    assert_eq!(session.run("ask connected")["answer"], "b2", "the connected UDP socket was taken");

    // And back, with nothing else changed: zone a again.
    server.apply(node("a"));
    watcher.wait_stdout("frontends +0 ~3 -0");
    assert_eq!(reached(&sandbox, CATALOG), ["b2"]);
    assert_eq!(watcher.terminate(), Some(0));
}
