//! Issue 18, north-south: a client outside the nodes reaches a Service
//! through node A's node port, LoadBalancer IP and external IP, translated
//! by the tc programs of `load --devices` on node A (support/nodes.rs: a
//! client, two nodes, a pod behind each). Real sockets end to end; the
//! pods' servers answer with the address they see the client at.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    devices::tcx_programs_in,
    external::dump_map,
    stats,
    support::{
        Sandbox,
        nodes::{
            CLIENT, CLIENT6, DEVICES, NODE_A, NODE_A_INNER, NODE_A_INNER6, NODE_A6, Nodes, POD_A, POD_A6,
            POD_B, POD_B6,
        },
        run,
        watcher::Watcher,
    },
    trace::{events, start_trace},
};

/// Node A as the cluster knows it: its addresses make node ports answer.
fn node_a() -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nstatus:\n  addresses:\n  \
         - {{address: {NODE_A}, type: ExternalIP}}\n  - {{address: {NODE_A_INNER}, type: InternalIP}}\n  \
         - {{address: {NODE_A6}, type: ExternalIP}}\n  - {{address: {NODE_A_INNER6}, type: InternalIP}}\n"
    )
}

/// Service shop/web, type LoadBalancer (cluster IP 198.18.0.40, ingress IP
/// 198.18.1.40, external IP 198.18.2.40, node port 30080 for TCP and UDP
/// port 80) with `policy`, and its endpoints `(address, node)` on port 8080.
fn web(policy: &str, endpoints: &[(&str, &str)]) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|(address, node)| format!("- {{addresses: [{address}], nodeName: {node}}}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  type: LoadBalancer\n  \
         clusterIP: 198.18.0.40\n  externalIPs: [198.18.2.40]\n  externalTrafficPolicy: {policy}\n  ports:\n  \
         - {{name: http, protocol: TCP, port: 80, nodePort: 30080, targetPort: 8080}}\n  \
         - {{name: echo, protocol: UDP, port: 80, nodePort: 30080, targetPort: 8080}}\n\
         status: {{loadBalancer: {{ingress: [{{ip: 198.18.1.40}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: shop\n  \
         labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints:\n{endpoints}\
         ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: echo, port: 8080, protocol: UDP}}]\n---\n{}",
        node_a()
    )
}

/// Service shop/web6, IPv6 only, node port 30086, endpoints on pods A and B.
fn web6() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web6, namespace: shop}}\nspec:\n  type: NodePort\n  \
         clusterIP: 2001:db8:18::40\n  ipFamilies: [IPv6]\n  \
         ports: [{{name: http, protocol: TCP, port: 80, nodePort: 30086, targetPort: 8080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web6-1\n  namespace: shop\n  \
         labels: {{kubernetes.io/service-name: web6}}\naddressType: IPv6\nendpoints:\n\
         - {{addresses: ['{POD_A6}'], nodeName: node-a}}\n- {{addresses: ['{POD_B6}'], nodeName: node-b}}\n\
         ports: [{{name: http, port: 8080, protocol: TCP}}]\n"
    )
}

/// The pods' servers on port 8080 (TCP and UDP, both families), each
/// answering `pod-a <client address as seen>`.
fn serve_pods(sandbox: &Sandbox, nodes: &Nodes) {
    for (ns, name, v4, v6) in [(&nodes.pod_a, "pod-a", POD_A, POD_A6), (&nodes.pod_b, "pod-b", POD_B, POD_B6)]
    {
        let (v4, v6) = (format!("{v4}:8080"), format!("[{v6}]:8080"));
        sandbox.serve_in(ns, &format!("{name} {{peer}}"), &[&v4, &v6], &[&v4]);
    }
}

/// Runs a peer command in the client namespace (outside every node and
/// outside balctl's cgroup: nothing translates its sockets).
fn client(sandbox: &Sandbox, nodes: &Nodes, args: &[&str]) -> Value {
    let output = sandbox.peer(false, &nodes.client).args(args).output().expect("run the client");
    assert!(output.status.success(), "client failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the client printed JSON")
}

/// `count` TCP connections from the client to `to`: each must succeed
/// (which it only does when every answer comes from the address called);
/// the answers, as a set.
fn tcp_answers(sandbox: &Sandbox, nodes: &Nodes, to: &str, count: u32) -> BTreeSet<String> {
    let report = client(sandbox, nodes, &["connect", "--to", to, "--count", &count.to_string()]);
    assert_eq!(report["failed"], 0, "connect to {to}: {report}");
    report["backends"].as_object().expect("backends").keys().cloned().collect()
}

/// Datagrams from `count` fresh UDP sockets of the client to `to`: each
/// must be answered from `to` itself; the answers, as a set.
fn udp_answers(sandbox: &Sandbox, nodes: &Nodes, to: &str, count: u32) -> BTreeSet<String> {
    let report =
        client(sandbox, nodes, &["udp-sendto", "--to", to, "--count", "1", "--fresh", &count.to_string()]);
    assert_eq!(report["errors"], serde_json::json!({}), "udp to {to}: {report}");
    assert_eq!(report["replies"][0]["from"], to, "{report}");
    report["fresh"].as_array().expect("fresh").iter().map(|a| a.as_str().unwrap().to_owned()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

/// Must show 1: externalTrafficPolicy Cluster through node A's node port.
pub fn cluster_policy_reaches_pods_on_both_nodes() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    serve_pods(&sandbox, &nodes);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")]));

    let node_port = format!("{NODE_A}:30080");
    // Pod A is on node A: only DNATed, it sees the client. Pod B is on
    // node B: SNATed to node A's address on that path.
    let both = set(&[&format!("pod-a {CLIENT}"), &format!("pod-b {NODE_A_INNER}")]);
    assert_eq!(tcp_answers(&sandbox, &nodes, &node_port, 1000), both);
    assert_eq!(udp_answers(&sandbox, &nodes, &node_port, 100), both);

    // Counted per external frontend: every TCP connection and UDP socket
    // was a resolution.
    let stats = nodes.balctl_ok(&sandbox, &["dump", "stats", "-o", "json"]);
    assert!(stats.contains("@external"), "{stats}");
}

/// Must show 2 (the datapath's part): externalTrafficPolicy Local keeps
/// the client's address and uses node A's pod only; without one the
/// packets are dropped.
pub fn local_policy_keeps_the_client_address_and_drops_without_a_local_pod() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    serve_pods(&sandbox, &nodes);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Local", &[(POD_A, "node-a"), (POD_B, "node-b")]));

    let node_port = format!("{NODE_A}:30080");
    let pod_a = set(&[&format!("pod-a {CLIENT}")]);
    assert_eq!(tcp_answers(&sandbox, &nodes, &node_port, 200), pod_a);
    assert_eq!(udp_answers(&sandbox, &nodes, &node_port, 20), pod_a);

    nodes.sync(&sandbox, &web("Local", &[(POD_B, "node-b")]));
    let report = client(&sandbox, &nodes, &["connect", "--to", &node_port, "--count", "2"]);
    // Dropped, not refused: the client's SYNs go unanswered.
    assert_eq!((&report["ok"], &report["failed"]), (&0.into(), &2.into()), "{report}");
    let errors = report["errors"].as_object().unwrap();
    assert!(errors.keys().all(|e| e == "TimedOut" || e == "ETIMEDOUT"), "{report}");
}

/// Must show 3: the LoadBalancer IP and the external IP, routed to node A,
/// behave as the node port.
pub fn load_balancer_and_external_ips_reach_pods_on_both_nodes() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    serve_pods(&sandbox, &nodes);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")]));

    let both = set(&[&format!("pod-a {CLIENT}"), &format!("pod-b {NODE_A_INNER}")]);
    for vip in ["198.18.1.40:80", "198.18.2.40:80"] {
        assert_eq!(tcp_answers(&sandbox, &nodes, vip, 200), both, "{vip}");
        assert_eq!(udp_answers(&sandbox, &nodes, vip, 60), both, "{vip}");
    }
}

/// Must show 3, loadBalancerSourceRanges: a client inside the ranges
/// reaches the LoadBalancer IP; outside them its packets to that IP are
/// dropped, while the node port and the external IP, which the ranges do
/// not cover (as with kube-proxy), still answer it.
pub fn a_client_outside_the_source_ranges_gets_nothing_from_the_load_balancer_ip() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    serve_pods(&sandbox, &nodes);
    nodes.load(&sandbox);
    let with_ranges = |ranges: &str| {
        web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")]).replace(
            "externalTrafficPolicy: Cluster\n",
            &format!("externalTrafficPolicy: Cluster\n  loadBalancerSourceRanges: [{ranges}]\n"),
        )
    };
    let both = set(&[&format!("pod-a {CLIENT}"), &format!("pod-b {NODE_A_INNER}")]);
    // The client, 203.0.113.1, is in 203.0.113.0/28.
    nodes.sync(&sandbox, &with_ranges("198.51.100.0/24, 203.0.113.0/28"));
    assert_eq!(tcp_answers(&sandbox, &nodes, "198.18.1.40:80", 100), both);

    nodes.sync(&sandbox, &with_ranges("198.51.100.0/24, 203.0.113.16/28"));
    let report = client(&sandbox, &nodes, &["connect", "--to", "198.18.1.40:80", "--count", "2"]);
    assert_eq!((&report["ok"], &report["failed"]), (&0.into(), &2.into()), "{report}");
    let errors = report["errors"].as_object().unwrap();
    assert!(errors.keys().all(|e| e == "TimedOut" || e == "ETIMEDOUT"), "dropped, not refused: {report}");
    let report = client(&sandbox, &nodes, &["udp-sendto", "--to", "198.18.1.40:80", "--count", "1"]);
    assert_ne!(report["errors"], serde_json::json!({}), "a datagram from outside the ranges: {report}");
    for other in [format!("{NODE_A}:30080"), "198.18.2.40:80".to_owned()] {
        assert_eq!(tcp_answers(&sandbox, &nodes, &other, 50), both, "{other}");
    }
}

/// Issue 19, `--nodeport-addresses` on the north-south path: a node
/// address outside the CIDRs serves no node port (the client's SYN
/// reaches node A's own stack, where nothing listens), while the
/// LoadBalancer IP, no node address, still answers; inside them it does.
pub fn node_ports_answer_only_on_the_nodeport_addresses() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    serve_pods(&sandbox, &nodes);
    nodes.load(&sandbox);
    let file = sandbox.scratch("north-south.yaml");
    fs::write(&file, web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")])).unwrap();
    let sync = |cidrs: &str| {
        let file = file.to_str().unwrap();
        nodes.balctl_ok(
            &sandbox,
            &["sync", "--node-name", "node-a", "--nodeport-addresses", cidrs, "-f", file],
        )
    };
    let node_port = format!("{NODE_A}:30080");
    let both = set(&[&format!("pod-a {CLIENT}"), &format!("pod-b {NODE_A_INNER}")]);

    sync("198.51.100.0/24,2001:db8:51::/64");
    let report = client(&sandbox, &nodes, &["connect", "--to", &node_port, "--count", "2"]);
    assert_eq!(report["errors"]["ECONNREFUSED"], 2, "{node_port} outside --nodeport-addresses: {report}");
    assert_eq!(tcp_answers(&sandbox, &nodes, "198.18.1.40:80", 20), both);

    sync("203.0.113.0/24");
    assert_eq!(tcp_answers(&sandbox, &nodes, &node_port, 50), both);
    assert_eq!(udp_answers(&sandbox, &nodes, &node_port, 20), both);
}

/// Must show 7: `load` again while a client loops through the node port
/// fails no connection; `unload` leaves no tc program on node A's devices.
pub fn load_again_under_node_port_traffic_and_unload_leave_nothing_behind() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    serve_pods(&sandbox, &nodes);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")]));
    let before: Vec<_> = ["ext0", "tob0"].iter().map(|dev| tcx_programs_in(&nodes.node_a, dev)).collect();
    assert!(before.iter().all(|(ingress, egress)| ingress.len() == 1 && egress.len() == 1), "{before:?}");

    let node_port = format!("{NODE_A}:30080");
    let both = set(&[&format!("pod-a {CLIENT}"), &format!("pod-b {NODE_A_INNER}")]);
    let answers = thread::scope(|scope| {
        let client = scope.spawn(|| tcp_answers(&sandbox, &nodes, &node_port, 1500));
        for _ in 0..3 {
            thread::sleep(Duration::from_millis(150));
            nodes.load(&sandbox);
        }
        client.join().expect("the client")
    });
    assert_eq!(answers, both);
    // Swapped in place: new programs on the same devices, one each way.
    let after: Vec<_> = ["ext0", "tob0"].iter().map(|dev| tcx_programs_in(&nodes.node_a, dev)).collect();
    assert!(after.iter().all(|(ingress, egress)| ingress.len() == 1 && egress.len() == 1), "{after:?}");
    assert_ne!(after, before, "load swapped the programs");

    nodes.balctl_ok(&sandbox, &["unload", "--yes"]);
    for dev in ["ext0", "tob0"] {
        assert_eq!(tcx_programs_in(&nodes.node_a, dev), (vec![], vec![]), "{dev} after unload");
    }
}

/// Socket-level and packet-level translation on one node: a process of
/// node A in balctl's cgroup that connects to the node port is translated
/// by the socket hook, straight to a pod, and the tc programs on the way
/// out never translate its packets again: the external frontend counts no
/// resolution and holds no flow.
pub fn what_a_socket_hook_translated_is_not_translated_again() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    serve_pods(&sandbox, &nodes);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")]));

    let output = sandbox
        .peer(true, &nodes.node_a)
        .args(["connect", "--to", &format!("{NODE_A}:30080"), "--count", "100"])
        .output()
        .expect("run the client in node A");
    assert!(output.status.success(), "client failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("the client printed JSON");
    assert_eq!(report["failed"], 0, "{report}");
    // Node A's own addresses toward each pod: no SNAT, no second DNAT.
    let answers: BTreeSet<String> = report["backends"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(answers, set(&["pod-a 192.0.2.1", &format!("pod-b {NODE_A_INNER}")]));

    let stats: Value =
        serde_json::from_str(&nodes.balctl_ok(&sandbox, &["dump", "stats", "-o", "json"])).unwrap();
    let resolutions = |frontend: &str| {
        let entry = stats["stats"].as_array().unwrap().iter().find(|s| s["frontend"] == frontend);
        entry.map_or(0, |s| s["resolutions"].as_u64().unwrap())
    };
    assert_eq!(resolutions("0.0.0.0:30080/tcp"), 100, "{stats:#}");
    assert_eq!(resolutions("0.0.0.0:30080/tcp@external"), 0, "{stats:#}");
    let flows = sandbox.pins.join("maps/flows");
    let dump = run("bpftool", &["map", "dump", "pinned", flows.to_str().unwrap(), "-j"]);
    assert_eq!(dump.trim(), "[]", "no north-south flow");
}

/// The SNAT ports of flows that ended are given back: 2,000 connections
/// to the pod on node B, 11 s (past the 10 s a closed flow is kept), then
/// 2,000 more. Together they need more ports than the range has (4,536);
/// had the first ones kept theirs, the second ones would find the range
/// nearly full, and SYNs dropped for want of a port would be answered only
/// after a retransmission (1 s).
pub fn the_snat_ports_of_ended_flows_are_given_back() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    serve_pods(&sandbox, &nodes);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_B, "node-b")]));
    let node_port = format!("{NODE_A}:30080");
    let pod_b = set(&[&format!("pod-b {NODE_A_INNER}")]);
    assert_eq!(tcp_answers(&sandbox, &nodes, &node_port, 2000), pod_b);
    thread::sleep(Duration::from_secs(11));
    let report = client(&sandbox, &nodes, &["connect", "--to", &node_port, "--count", "2000"]);
    assert_eq!(report["failed"], 0, "{report}");
    let slowest = report["max_latency_us"].as_u64().unwrap();
    assert!(slowest < 900_000, "a connection waited {slowest} us: its SYN found no free SNAT port");
}

/// Serves the pods, loads and syncs shop/web (Cluster, both pods) and
/// shop/web6; the answers through their node ports, IPv4 and IPv6.
fn web_in_both_families(sandbox: &Sandbox, nodes: &Nodes) -> (BTreeSet<String>, BTreeSet<String>) {
    serve_pods(sandbox, nodes);
    nodes.load(sandbox);
    let yaml = format!("{}---\n{}", web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")]), web6());
    nodes.sync(sandbox, &yaml);
    let v4 = set(&[&format!("pod-a {CLIENT}"), &format!("pod-b {NODE_A_INNER}")]);
    let v6 = set(&[&format!("pod-a {CLIENT6}"), &format!("pod-b {NODE_A_INNER6}")]);
    (v4, v6)
}

/// Must show 5: an IPv6 node port from an IPv6 client, alongside IPv4.
pub fn ipv6_node_port_alongside_ipv4() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    let (v4, v6) = web_in_both_families(&sandbox, &nodes);
    // Both families at once, from one client.
    let ipv4 = thread::scope(|scope| {
        let ipv4 = scope.spawn(|| tcp_answers(&sandbox, &nodes, &format!("{NODE_A}:30080"), 300));
        assert_eq!(tcp_answers(&sandbox, &nodes, &format!("[{NODE_A6}]:30086"), 300), v6);
        ipv4.join().expect("the IPv4 client")
    });
    assert_eq!(ipv4, v4);
}

/// The rewrites keep every checksum right for packets that carry their
/// whole checksum (no device fills it in), as packets from a real network
/// do: with every checksum offload off, each receiver checks the TCP and
/// UDP checksums, and a wrong one would lose the packet. Both families,
/// the pod on A (DNAT) and on B (SNAT and DNAT); no receiver counts a
/// checksum error.
pub fn checksums_stay_right_for_packets_with_whole_checksums() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    nodes.checksums_in_software();
    let (v4, v6) = web_in_both_families(&sandbox, &nodes);
    // Few connections: each lost one waits out the client's 2 s timeout.
    assert_eq!(tcp_answers(&sandbox, &nodes, &format!("{NODE_A}:30080"), 40), v4);
    assert_eq!(udp_answers(&sandbox, &nodes, &format!("{NODE_A}:30080"), 20), v4);
    assert_eq!(tcp_answers(&sandbox, &nodes, &format!("[{NODE_A6}]:30086"), 40), v6);
    for ns in [&nodes.client, &nodes.pod_a, &nodes.pod_b] {
        // TCP counts both families in one MIB.
        for (proto, name) in [("Tcp", "InCsumErrors"), ("Udp", "InCsumErrors"), ("Udp6", "InCsumErrors")] {
            assert_eq!(snmp_counter(ns, proto, name), Some(0), "{proto} {name} in {ns}");
        }
    }
}

/// Counter `name` of protocol `proto` in network namespace `ns`: from
/// /proc/net/snmp's header and value lines, or for an IPv6 protocol from
/// /proc/net/snmp6's `<proto><name> <value>` lines.
fn snmp_counter(ns: &str, proto: &str, name: &str) -> Option<u64> {
    if proto.ends_with('6') {
        let text = run("ip", &["netns", "exec", ns, "cat", "/proc/net/snmp6"]);
        let key = format!("{proto}{name}");
        return text.lines().find_map(|line| line.strip_prefix(key.as_str())?.trim().parse().ok());
    }
    let text = run("ip", &["netns", "exec", ns, "cat", "/proc/net/snmp"]);
    let prefix = format!("{proto}:");
    let mut rows = text.lines().filter(|line| line.starts_with(&prefix));
    let (names, values) = (rows.next()?, rows.next()?);
    let at = names.split_whitespace().position(|field| field == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// A program in a pod or the client, in a process group of its own, which
/// is killed (by the group's id, the program's PID) when this drops: a
/// forking server's children go with it.
struct Program(Child);

impl Program {
    fn spawn(command: &mut Command) -> Self {
        Program(command.process_group(0).spawn().expect("start a program"))
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process group this program leads.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Must show 6: with a smaller MTU on node B's link to its pod, a 10 MB
/// TCP transfer through node A's node port to pod B completes: node B's
/// "fragmentation needed", sent to node A's SNAT address, reaches the
/// client translated back, and the client lowers its path MTU.
pub fn a_smaller_mtu_beyond_node_a_lowers_the_clients_path_mtu() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_B, "node-b")]));
    // Node B's end only: pod B still announces a 1500-byte path, so the
    // client's first segments are too large for node B to forward.
    super::support::run("ip", &["-n", &nodes.node_b, "link", "set", "pod0", "mtu", "1280"]);

    let (sent, received) = (sandbox.scratch("sent"), sandbox.scratch("received"));
    let data: Vec<u8> = (0..10_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    fs::write(&sent, &data).unwrap();
    let listen = format!("TCP-LISTEN:8080,bind={POD_B},reuseaddr");
    let sink = format!("CREATE:{}", received.display());
    let _server = Program::spawn(
        sandbox
            .peer(false, &nodes.pod_b)
            .args(["exec", "socat", "-u", &listen, &sink])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    thread::sleep(Duration::from_millis(300));
    let to = format!("TCP:{NODE_A}:30080,connect-timeout=5");
    let source = format!("OPEN:{}", sent.display());
    let started = Instant::now();
    let transfer = sandbox
        .peer(false, &nodes.client)
        .args(["exec", "timeout", "15", "socat", "-u", &source, &to])
        .output()
        .expect("run socat in the client");
    assert!(transfer.status.success(), "transfer: {}", String::from_utf8_lossy(&transfer.stderr));
    // The server writes the file out as it reads; give it its last bytes.
    while fs::metadata(&received).map_or(0, |m| m.len()) < data.len() as u64
        && started.elapsed() < Duration::from_secs(15)
    {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(fs::read(&received).unwrap() == data, "pod B received a different file");
    let route = super::support::run("ip", &["-n", &nodes.client, "route", "get", NODE_A]);
    assert!(route.contains("mtu 1280"), "the client's path MTU: {route}");
}

/// The client for `flows_keep_their_backend`: opens 50 connections to the
/// node port and prints who answered each; on a line from stdin, sends a
/// line over each and prints whether it came back.
const HELD_CLIENT: &str = r#"
import json, socket, sys
held = []
for _ in range(50):
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    f = s.makefile("rwb")
    held.append((s, f, f.readline().decode().strip()))
print(json.dumps([who for _, _, who in held]), flush=True)
sys.stdin.readline()
answers = []
for s, f, who in held:
    try:
        f.write(b"still there\n")
        f.flush()
        answers.append([who, f.readline() == b"still there\n"])
    except OSError:
        answers.append([who, False])
print(json.dumps(answers), flush=True)
"#;

/// An echo server in `ns` on `address`:8080 that first says `id`.
fn echo_server(sandbox: &Sandbox, ns: &str, address: &str, id: &str) -> Program {
    let listen = format!("TCP-LISTEN:8080,bind={address},reuseaddr,fork");
    let answer = format!("SYSTEM:echo {id}; exec cat");
    Program::spawn(
        sandbox
            .peer(false, ns)
            .args(["exec", "socat", &listen, &answer])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Must show 4 (through real connections): 50 long-lived connections
/// through the node port, then one backend added (a second address of
/// pod A) and another removed (pod A's first) in one sync: every
/// connection to pod B, which stayed, keeps working, although the new
/// Maglev table moves some of its 5-tuples to the new backend.
pub fn flows_keep_their_backend_across_a_backend_change() {
    use std::io::{BufRead as _, BufReader, Write as _};

    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    super::support::run("ip", &["-n", &nodes.pod_a, "addr", "add", "192.0.2.11/25", "dev", "eth0"]);
    let _servers = [
        echo_server(&sandbox, &nodes.pod_a, POD_A, "a10"),
        echo_server(&sandbox, &nodes.pod_a, "192.0.2.11", "a11"),
        echo_server(&sandbox, &nodes.pod_b, POD_B, "b130"),
    ];
    thread::sleep(Duration::from_millis(300));
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")]));

    let mut client = Program::spawn(
        sandbox
            .peer(false, &nodes.client)
            .args(["exec", "python3", "-c", HELD_CLIENT, NODE_A, "30080"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut lines = BufReader::new(client.0.stdout.take().unwrap()).lines();
    let first: Vec<String> = serde_json::from_str(&lines.next().expect("the client's first report").unwrap())
        .expect("who answered");
    let to_b = first.iter().filter(|who| *who == "b130").count();
    assert!(to_b > 0 && first.iter().all(|who| who == "a10" || who == "b130"), "{first:?}");

    nodes.sync(&sandbox, &web("Cluster", &[(POD_B, "node-b"), ("192.0.2.11", "node-a")]));
    // New connections reach the new backend: the change is in force.
    let now = tcp_answers_of_echo(&sandbox, &nodes);
    assert!(now.contains("a11") && !now.contains("a10"), "{now:?}");

    writeln!(client.0.stdin.as_mut().unwrap()).unwrap();
    let answers: Vec<(String, bool)> =
        serde_json::from_str(&lines.next().expect("the client's second report").unwrap()).expect("answers");
    let kept = answers.iter().filter(|(who, ok)| who == "b130" && *ok).count();
    assert_eq!(kept, to_b, "connections to pod B that still work: {answers:?}");
}

/// Who answers 30 new connections to the node port (echo servers).
fn tcp_answers_of_echo(sandbox: &Sandbox, nodes: &Nodes) -> BTreeSet<String> {
    let script = "import socket, sys\nfor _ in range(30):\n    s = socket.create_connection((sys.argv[1], 30080), timeout=3)\n    print(s.makefile().readline().strip())\n    s.close()\n";
    let output =
        sandbox.peer(false, &nodes.client).args(["exec", "python3", "-c", script, NODE_A]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// ICMP errors about a flow reach the client translated back: a UDP
/// datagram through the node port to a pod with nothing on the port makes
/// the pod answer "port unreachable", about the translated datagram. For
/// pod A (only DNATed) the error leaves through node A's device toward the
/// client; for pod B (SNATed) it arrives from node B, addressed to node A.
/// Either way the client's connected socket only takes it (ECONNREFUSED)
/// when it quotes the datagram as the client sent it.
pub fn icmp_errors_about_a_flow_reach_the_client() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    nodes.load(&sandbox);
    let node_port = format!("{NODE_A}:30080");
    for pod in [(POD_A, "node-a"), (POD_B, "node-b")] {
        nodes.sync(&sandbox, &web("Cluster", &[pod]));
        let report = client(&sandbox, &nodes, &["udp-connected", "--to", &node_port]);
        assert_eq!(report["error"], "ECONNREFUSED", "{pod:?}: {report}");
    }
}

/// The north-south flows of `connections` TCP connections and `sockets`
/// UDP sockets (one, then 20 fresh) of the client through node A's node
/// port, and of IPv6 connections through web6's (pods A and B both
/// backends): `dump flows` lists each with its client, the node address
/// called, its backend and, for pod B on node B only, the SNAT source on
/// node A; `dump stats` and `/metrics` count one resolution per flow on
/// the external frontend, apart from the socket frontend of the same node
/// port.
pub fn flows_and_counters_show_north_south_translations() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    serve_pods(&sandbox, &nodes);
    nodes.load(&sandbox);
    // Synced by a watcher (in the host's namespace: it needs only the
    // pins and the state dir), whose /metrics the test can reach.
    let file = sandbox.scratch("web.yaml");
    let yaml = format!("{}---\n{}", web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")]), web6());
    fs::write(&file, yaml).unwrap();
    let port = stats::free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let watcher = Watcher::start_with(
        &sandbox,
        &[file.to_str().unwrap()],
        &["--node-name", "node-a", "--metrics-addr", &metrics_addr],
    );
    watcher.wait_stdout("sync: frontends");

    let node_port = format!("{NODE_A}:30080");
    let (connections, fresh) = (40, 20);
    let sockets = fresh + 1;
    let both = set(&[&format!("pod-a {CLIENT}"), &format!("pod-b {NODE_A_INNER}")]);
    assert_eq!(tcp_answers(&sandbox, &nodes, &node_port, connections), both);
    assert_eq!(udp_answers(&sandbox, &nodes, &node_port, fresh), both);
    let (node_port6, connections6) = (format!("[{NODE_A6}]:30086"), 10);
    let v6 = set(&[&format!("pod-a {CLIENT6}"), &format!("pod-b {NODE_A_INNER6}")]);
    assert_eq!(tcp_answers(&sandbox, &nodes, &node_port6, connections6), v6);

    let document = nodes.balctl_ok(&sandbox, &["dump", "flows", "-o", "json"]);
    let document: Value = serde_json::from_str(&document).expect("dump flows printed JSON");
    crate::dump::validate(&document, "dump-flows.json");
    let flows = document["flows"].as_array().expect("flows");
    let mut clients = BTreeSet::new();
    let mut snat_ports = BTreeSet::new();
    let v4 = (CLIENT.to_owned(), format!("{POD_A}:8080"), format!("{POD_B}:8080"), NODE_A_INNER.to_owned());
    let v6 = (
        format!("[{CLIENT6}]"),
        format!("[{POD_A6}]:8080"),
        format!("[{POD_B6}]:8080"),
        format!("[{NODE_A_INNER6}]"),
    );
    for (called, expected, name, (client_address, pod_a, pod_b, snat_address)) in [
        (format!("{node_port}/tcp"), connections, "service/shop/web", &v4),
        (format!("{node_port}/udp"), sockets, "service/shop/web", &v4),
        (format!("{node_port6}/tcp"), connections6, "service/shop/web6", &v6),
    ] {
        let of_frontend: Vec<&Value> = flows.iter().filter(|f| f["frontend"] == called).collect();
        assert_eq!(of_frontend.len(), expected as usize, "{called} flows: {document:#}");
        for flow in of_frontend {
            let client = flow["client"].as_str().unwrap();
            assert!(client.starts_with(&format!("{client_address}:")), "{flow}");
            assert!(clients.insert((called.clone(), client.to_owned())), "one flow per client port: {flow}");
            assert_eq!(flow["name"], name, "{flow}");
            assert!(flow["state"] == "open" || flow["state"] == "closing", "{flow}");
            assert!(flow["idle_seconds"].as_f64().unwrap() < 60.0, "{flow}");
            let backend = flow["backend"].as_str().unwrap();
            if backend == pod_a {
                // On node A: only DNATed, pod A sees the client.
                assert_eq!(flow["snat"], Value::Null, "{flow}");
            } else {
                assert_eq!(backend, pod_b, "{flow}");
                let snat = flow["snat"].as_str().expect("pod B's flows are SNATed");
                let (address, snat_port) = snat.rsplit_once(':').unwrap();
                assert_eq!(address, snat_address, "{flow}");
                let snat_port: u16 = snat_port.parse().unwrap();
                assert!((61_000..=65_535).contains(&snat_port), "{flow}");
                assert!(snat_ports.insert((called.clone(), snat_port)), "a SNAT port per flow: {flow}");
            }
        }
    }
    assert_eq!(flows.len(), (connections + sockets + connections6) as usize, "{document:#}");
    let backends: BTreeSet<&str> = flows.iter().map(|f| f["backend"].as_str().unwrap()).collect();
    assert_eq!(
        backends,
        [&v4.1, &v4.2, &v6.1, &v6.2].into_iter().map(String::as_str).collect(),
        "{document:#}"
    );
    // `--vip` keeps flows by the address called; the LoadBalancer IP has none.
    let called = nodes.balctl_ok(&sandbox, &["dump", "flows", "--vip", NODE_A, "-o", "json"]);
    let called: Value = serde_json::from_str(&called).unwrap();
    assert_eq!(called["flows"].as_array().unwrap().len(), (connections + sockets) as usize);
    let other = nodes.balctl_ok(&sandbox, &["dump", "flows", "--vip", "198.18.1.40", "-o", "json"]);
    assert_eq!(serde_json::from_str::<Value>(&other).unwrap(), serde_json::json!({ "flows": [] }));
    let table = nodes.balctl_ok(&sandbox, &["dump", "flows"]);
    assert!(table.contains(&format!("{NODE_A_INNER}:")) && table.contains(&v4.2), "{table}");

    // One resolution per flow, on the external frontend of the node port;
    // the socket frontend of the same node port resolved nothing.
    let stats: Value =
        serde_json::from_str(&nodes.balctl_ok(&sandbox, &["dump", "stats", "-o", "json"])).unwrap();
    let resolutions = |frontend: &str| {
        let entry = stats["stats"].as_array().unwrap().iter().find(|s| s["frontend"] == frontend);
        entry.unwrap_or_else(|| panic!("no stats for {frontend}: {stats:#}"))["resolutions"].clone()
    };
    assert_eq!(resolutions("0.0.0.0:30080/tcp@external"), connections, "{stats:#}");
    assert_eq!(resolutions("0.0.0.0:30080/udp@external"), sockets, "{stats:#}");
    assert_eq!(resolutions("0.0.0.0:30080/tcp"), 0, "{stats:#}");
    let metrics = stats::scrape(port);
    let series = |frontend: &str| {
        format!("balctl_resolutions_total{{frontend=\"{frontend}\",name=\"service/shop/web\"}}")
    };
    assert_eq!(
        metrics.get(&series("0.0.0.0:30080/tcp@external")),
        Some(&u64::from(connections)),
        "{metrics:#?}"
    );
    assert_eq!(metrics.get(&series("0.0.0.0:30080/udp@external")), Some(&u64::from(sockets)), "{metrics:#?}");
    assert_eq!(metrics.get(&series("0.0.0.0:30080/tcp")), Some(&0), "{metrics:#?}");
}

/// `balctl trace` while the client connects through node A's node port:
/// one packet event per flow, with the client's address where a socket's
/// event has its process, the node address called and the backend chosen
/// (by Maglev); `--pid` leaves packet events out, `--client` keeps only
/// them; a packet dropped for want of a local backend is a failed event.
pub fn trace_shows_the_flows_packets_open_with_their_client() {
    use std::io::{BufRead as _, BufReader};

    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    serve_pods(&sandbox, &nodes);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")]));

    let connections = 20;
    let tracer = start_trace(&sandbox, &["-o", "json", "--client", "203.0.113.0/24", "--count", "20"]);
    // Packet events have no process: not even pid 0 matches them.
    let by_pid = start_trace(&sandbox, &["-o", "json", "--pid", "0", "--duration", "3s"]);
    let node_port = format!("{NODE_A}:30080");
    let both = set(&[&format!("pod-a {CLIENT}"), &format!("pod-b {NODE_A_INNER}")]);
    assert_eq!(tcp_answers(&sandbox, &nodes, &node_port, connections), both);

    let events = events(tracer);
    assert_eq!(events.len(), connections as usize);
    let mut clients = BTreeSet::new();
    let mut backends = BTreeSet::new();
    for event in &events {
        assert_eq!(event["operation"], "packet", "{event}");
        assert_eq!(
            (&event["pid"], &event["comm"], &event["cgroup"]),
            (&Value::Null, &Value::Null, &Value::Null)
        );
        let client = event["client"].as_str().expect("a packet event names its client");
        assert!(client.starts_with(&format!("{CLIENT}:")), "{event}");
        clients.insert(client.to_owned());
        assert_eq!(event["original"], node_port, "{event}");
        assert_eq!(event["frontend"], "0.0.0.0:30080/tcp@external", "{event}");
        assert_eq!(event["name"], "service/shop/web", "{event}");
        assert_eq!((&event["result"], &event["failed"]), (&"maglev".into(), &false.into()), "{event}");
        backends.insert(event["backend"].as_str().unwrap().to_owned());
    }
    assert_eq!(clients.len(), events.len(), "one event per flow, not per packet: {events:#?}");
    assert_eq!(backends, set(&[&format!("{POD_A}:8080"), &format!("{POD_B}:8080")]));
    let by_pid = crate::trace::events(by_pid);
    assert!(by_pid.is_empty(), "--pid 0 showed packet events: {by_pid:#?}");

    // The table shows the client where a socket's line has its process.
    let mut tracer = Program::spawn(
        sandbox
            .balctl_command(&["trace", "--count", "1", "--duration", "10s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    // The header comes once it traces.
    let mut table = BufReader::new(tracer.0.stdout.take().unwrap()).lines();
    let header = table.next().expect("the header").unwrap();
    assert!(header.contains("COMM/CLIENT"), "{header}");
    tcp_answers(&sandbox, &nodes, &node_port, 1);
    let line = table.next().expect("an event").unwrap();
    assert!(
        line.contains(&format!("client {CLIENT}:")) && line.contains(&format!("{node_port} -> ")),
        "{line}"
    );

    // A packet that finds no backend is a failed event: externalTrafficPolicy
    // Local without a pod on node A drops the client's SYN.
    nodes.sync(&sandbox, &web("Local", &[(POD_B, "node-b")]));
    let tracer = start_trace(&sandbox, &["-o", "json", "--failed", "--client", CLIENT, "--count", "1"]);
    let report = client(&sandbox, &nodes, &["connect", "--to", &node_port, "--count", "1"]);
    assert_eq!(report["failed"], 1, "{report}");
    let failed = crate::trace::events(tracer);
    let event = &failed[0];
    assert_eq!((&event["operation"], &event["original"]), (&"packet".into(), &node_port.as_str().into()));
    assert_eq!((&event["result"], &event["failed"]), (&"no_local_backend".into(), &true.into()), "{event}");
    assert_eq!(event["backend"], Value::Null, "{event}");
    assert!(event["client"].as_str().unwrap().starts_with(&format!("{CLIENT}:")), "{event}");
}

/// The pods' servers for `a_flow_lives_while_its_backend_sends`: a UDP
/// datagram is answered with 7 datagrams, 0.5 s apart; a TCP connection
/// is reset at once (SO_LINGER 0), after which its client sends nothing.
const BACKEND_SENDS: &str = r#"
import socket, struct, sys, threading, time
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((sys.argv[1], 8080))
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((sys.argv[1], 8080))
tcp.listen(64)
print("ready", flush=True)
def stream(to):
    for i in range(7):
        udp.sendto(b"%d" % i, to)
        time.sleep(0.5)
def serve_udp():
    while True:
        _, sender = udp.recvfrom(64)
        threading.Thread(target=stream, args=(sender,), daemon=True).start()
threading.Thread(target=serve_udp, daemon=True).start()
while True:
    conn, _ = tcp.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
"#;

/// The client for it: 12 UDP sockets each send one datagram to the node
/// port and then only listen (for 3.5 s, every answer must come from the
/// node port); 12 TCP connections stay open and silent. Prints the
/// datagrams each socket got, then waits for a line on stdin.
const SILENT_CLIENT: &str = r#"
import json, select, socket, sys, time
to = (sys.argv[1], 30080)
held = []
for _ in range(12):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(to)
    except ConnectionResetError:
        pass  # the reset came first
    held.append(s)
sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(12)]
for s in sockets:
    s.sendto(b"go", to)
got = {s.fileno(): 0 for s in sockets}
wrong = []
end = time.time() + 3.6
while time.time() < end:
    ready, _, _ = select.select(sockets, [], [], max(0, end - time.time()))
    for s in ready:
        _, sender = s.recvfrom(64)
        got[s.fileno()] += 1
        if sender != to:
            wrong.append(str(sender))
print(json.dumps({"datagrams": sorted(got.values()), "wrong": wrong}), flush=True)
sys.stdin.readline()
"#;

/// A flow lives while either end sends, and closes on either end's FIN or
/// RST: UDP flows whose clients fell silent while their backends kept
/// sending (on node A: DNAT only, its replies leave through node A's
/// device; on node B: SNATed, its replies arrive on one) show only the
/// time since the backend's last datagram as idle; TCP flows reset by
/// their backend are closing, though their clients never sent a FIN.
pub fn a_flow_lives_while_its_backend_sends() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    let _servers: Vec<Program> = [(&nodes.pod_a, POD_A), (&nodes.pod_b, POD_B)]
        .into_iter()
        .map(|(ns, address)| {
            let mut server = Program::spawn(
                sandbox
                    .peer(false, ns)
                    .args(["exec", "python3", "-c", BACKEND_SENDS, address])
                    .stdout(Stdio::piped()),
            );
            assert_eq!(first_line(server.0.stdout.as_mut().expect("stdout")), "ready\n");
            server
        })
        .collect();
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")]));

    let mut client = sandbox
        .peer(false, &nodes.client)
        .args(["exec", "python3", "-c", SILENT_CLIENT, NODE_A])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start the client");
    let line = first_line(client.stdout.as_mut().expect("stdout"));
    let flows = nodes.balctl_ok(&sandbox, &["dump", "flows", "-o", "json"]);
    drop(client.stdin.take());
    let _ = client.wait();
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(report["datagrams"], serde_json::json!(vec![7; 12]), "{report}");
    assert_eq!(report["wrong"], serde_json::json!([]), "{report}");

    let flows: Value = serde_json::from_str(&flows).expect("dump flows printed JSON");
    let flows = flows["flows"].as_array().expect("flows");
    let of = |protocol: &str| -> Vec<&Value> {
        flows.iter().filter(|f| f["frontend"] == format!("{NODE_A}:30080/{protocol}")).collect()
    };
    let (udp, tcp) = (of("udp"), of("tcp"));
    assert_eq!((udp.len(), tcp.len()), (12, 12), "{flows:#?}");
    let backends = |flows: &[&Value]| -> BTreeSet<String> {
        flows.iter().map(|f| f["backend"].as_str().unwrap().to_owned()).collect()
    };
    let both = set(&[&format!("{POD_A}:8080"), &format!("{POD_B}:8080")]);
    assert_eq!((backends(&udp), backends(&tcp)), (both.clone(), both), "Maglev spread them: {flows:#?}");
    for flow in udp {
        // The clients' only datagram left 3.6 s before; the backends' last
        // one 0.6 s before (recorded at most once a second).
        let idle = flow["idle_seconds"].as_f64().unwrap();
        assert!(idle < 2.2, "idle since the backend's last datagram: {flow}");
        assert_eq!(flow["state"], "open", "{flow}");
    }
    for flow in tcp {
        assert_eq!(flow["state"], "closing", "reset by the backend: {flow}");
    }
}

/// The first line a program prints (empty if it ends first).
fn first_line(output: &mut std::process::ChildStdout) -> String {
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(output), &mut line).expect("read a line");
    line
}

/// Sets the MTU of node A's link toward node B, both ends (node A's tob0,
/// node B's toa0): smaller than the client's and the pods' links.
fn narrow_node_as_link_to_node_b(nodes: &Nodes, mtu: &str) {
    for (ns, dev) in [(&nodes.node_a, "tob0"), (&nodes.node_b, "toa0")] {
        super::support::run("ip", &["-n", ns, "link", "set", dev, "mtu", mtu]);
    }
}

/// 10 MB over one TCP connection between the client, which connects to
/// `to`, and a server in `pod` listening on `listen` (socat addresses):
/// uploaded by the client, or with `download` sent by the pod. It must
/// arrive whole within 15 s.
fn transfer_10_mb(sandbox: &Sandbox, nodes: &Nodes, pod: &str, listen: &str, to: &str, download: bool) {
    let (sent, received) = (sandbox.scratch("sent"), sandbox.scratch("received"));
    let data: Vec<u8> = (0..10_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    fs::write(&sent, &data).unwrap();
    let (source, sink) = (format!("OPEN:{}", sent.display()), format!("CREATE:{}", received.display()));
    let to = format!("{to},connect-timeout=5");
    let (server, client): ([&str; 2], [&str; 2]) =
        if download { ([&source, listen], [&to, &sink]) } else { ([listen, &sink], [&source, &to]) };
    let _server = Program::spawn(
        sandbox
            .peer(false, pod)
            .args(["exec", "socat", "-u", server[0], server[1]])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let transfer = sandbox
        .peer(false, &nodes.client)
        .args(["exec", "timeout", "15", "socat", "-u", client[0], client[1]])
        .output()
        .expect("run socat in the client");
    assert!(transfer.status.success(), "transfer: {}", String::from_utf8_lossy(&transfer.stderr));
    // The receiver writes the file out as it reads; give it its last bytes.
    while fs::metadata(&received).map_or(0, |m| m.len()) < data.len() as u64
        && started.elapsed() < Duration::from_secs(15)
    {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(fs::read(&received).unwrap() == data, "the 10 MB arrived different");
}

/// The route `ns` has to `to`, as `ip route get` shows it (with the path
/// MTU it learned).
fn route_in(ns: &str, to: &str) -> String {
    super::support::run("ip", &["-n", ns, "route", "get", to])
}

/// Node A's own next link smaller than the client's packets: node A
/// forwards SNATed packets itself, so it answers "fragmentation needed"
/// from the node port's address, quoting the client's packet as sent; the
/// client lowers its path MTU to node A, and a 10 MB TCP transfer through
/// the node port to pod B completes.
pub fn a_smaller_mtu_on_node_as_own_link_lowers_the_clients_path_mtu() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_B, "node-b")]));
    narrow_node_as_link_to_node_b(&nodes, "1280");

    let listen = format!("TCP-LISTEN:8080,bind={POD_B},reuseaddr");
    transfer_10_mb(&sandbox, &nodes, &nodes.pod_b, &listen, &format!("TCP:{NODE_A}:30080"), false);
    let route = route_in(&nodes.client, NODE_A);
    assert!(route.contains("mtu 1280"), "the client's path MTU: {route}");
}

/// The same over IPv6: node A answers "packet too big" from the IPv6 node
/// port's address.
pub fn a_smaller_mtu_on_node_as_own_link_lowers_the_clients_ipv6_path_mtu() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    nodes.load(&sandbox);
    // web6 with pod B only, beside web, which declares node A's addresses.
    let pod_b_only = web6().replace(&format!("- {{addresses: ['{POD_A6}'], nodeName: node-a}}\n"), "");
    assert!(!pod_b_only.contains(POD_A6), "{pod_b_only}");
    nodes.sync(&sandbox, &format!("{}---\n{pod_b_only}", web("Cluster", &[(POD_B, "node-b")])));
    // IPv6's least MTU: the client's 1500-byte packets exceed it.
    narrow_node_as_link_to_node_b(&nodes, "1280");

    let listen = format!("TCP6-LISTEN:8080,bind=[{POD_B6}],reuseaddr");
    transfer_10_mb(&sandbox, &nodes, &nodes.pod_b, &listen, &format!("TCP6:[{NODE_A6}]:30086"), false);
    let route = route_in(&nodes.client, NODE_A6);
    assert!(route.contains("mtu 1280"), "the client's IPv6 path MTU: {route}");
}

/// The other way: node A's link toward the client smaller than pod B's
/// replies. Node A forwards those itself too, so it answers pod B, from
/// the SNAT address pod B sent to; pod B lowers its path MTU to node A,
/// and 10 MB sent by pod B through the node port reach the client.
pub fn a_smaller_mtu_on_node_as_link_to_the_client_lowers_the_pods_path_mtu() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_B, "node-b")]));
    // Node A's end only: the client still announces a 1500-byte path, so
    // pod B's segments are too large for node A to forward to it.
    super::support::run("ip", &["-n", &nodes.node_a, "link", "set", "ext0", "mtu", "1280"]);

    let listen = format!("TCP-LISTEN:8080,bind={POD_B},reuseaddr");
    transfer_10_mb(&sandbox, &nodes, &nodes.pod_b, &listen, &format!("TCP:{NODE_A}:30080"), true);
    let route = route_in(&nodes.pod_b, NODE_A_INNER);
    assert!(route.contains("mtu 1280"), "pod B's path MTU: {route}");
}

/// A UDP client that may not fragment (IP_PMTUDISC_DO) sends a 1400-byte
/// datagram on its connected socket to `argv[1]`:`argv[2]` (IPv4, or IPv6
/// with `argv[3]` "6"), then another. It reads the ICMP or ICMPv6 error
/// the first one brings on a raw socket and reports what it is, whether
/// its checksums hold (ICMPv6's with its pseudo-header), and what it
/// quotes; then whether the second failed (EMSGSIZE: the socket's path
/// MTU, IP_MTU or IPV6_MTU, dropped to the error's).
const DONT_FRAGMENT_UDP_CLIENT: &str = r#"
import errno, json, socket, struct, sys, time
v6 = sys.argv[3] == "6"
family, level = (socket.AF_INET6, socket.IPPROTO_IPV6) if v6 else (socket.AF_INET, socket.IPPROTO_IP)
# IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU; IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO, IPV6_MTU
discover, do, path_mtu = (23, 2, 24) if v6 else (10, 2, 14)
def holds_its_checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return total == 0xffff
def address(raw):
    return socket.inet_ntop(family, raw)
errors = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
errors.settimeout(3)
s = socket.socket(family, socket.SOCK_DGRAM)
s.setsockopt(level, discover, do)
s.connect((sys.argv[1], int(sys.argv[2])))
client = s.getsockname()[0]
payload = bytes(range(256)) * 5 + bytes(120)
s.send(payload)
report = {}
while True:
    packet, source = errors.recvfrom(4096)
    if v6:
        # The raw socket gives the ICMPv6 message alone.
        icmp = packet
        if icmp[0] not in (1, 2, 3, 4):  # neighbour discovery is no error
            continue
        pseudo = socket.inet_pton(family, source[0]) + socket.inet_pton(family, client)
        pseudo += struct.pack("!I", len(icmp)) + bytes([0, 0, 0, 58])
        report.update({"from": source[0], "length": 40 + len(icmp),
                       "icmp_checksum": holds_its_checksum(pseudo + icmp)})
    else:
        ihl = (packet[0] & 15) * 4
        icmp = packet[ihl:]
        report.update({"from": address(packet[12:16]), "to": address(packet[16:20]), "length": len(packet),
                       "ip_checksum": holds_its_checksum(packet[:ihl]), "icmp_checksum": holds_its_checksum(icmp)})
    break
quote = icmp[8:]
if v6:
    (mtu,) = struct.unpack("!I", icmp[4:8])
    header, (src, dst) = 40, (quote[8:24], quote[24:40])
else:
    (mtu,) = struct.unpack("!H", icmp[6:8])
    header, (src, dst) = (quote[0] & 15) * 4, (quote[12:16], quote[16:20])
    report["quoted_ip_checksum"] = holds_its_checksum(quote[:header])
sport, dport = struct.unpack("!HH", quote[header:header + 4])
quoted_payload = quote[header + 8:]
report.update({
    "type": icmp[0], "code": icmp[1], "mtu": mtu,
    "quoted": "%s %d -> %s %d" % (address(src), sport, address(dst), dport),
    "quoted_payload": quoted_payload == payload[:len(quoted_payload)],
    "client": "%s %d" % s.getsockname()[:2],
})
time.sleep(0.2)
try:
    s.send(payload)
    report["second"] = "sent"
except OSError as e:
    report["second"] = errno.errorcode[e.errno]
report["path_mtu"] = s.getsockopt(level, path_mtu)
print(json.dumps(report))
"#;

/// The report of `DONT_FRAGMENT_UDP_CLIENT` run in the client against
/// `address`:`port`, and the client's own "address port".
fn dont_fragment_udp(
    sandbox: &Sandbox,
    nodes: &Nodes,
    address: &str,
    port: &str,
    v6: bool,
) -> (Value, String) {
    let family = if v6 { "6" } else { "4" };
    let output = sandbox
        .peer(false, &nodes.client)
        .args(["exec", "python3", "-c", DONT_FRAGMENT_UDP_CLIENT, address, port, family])
        .output()
        .expect("run the UDP client");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("the client printed JSON");
    let client = report["client"].as_str().expect("the client's address").to_owned();
    (report, client)
}

/// A UDP datagram with DF, too big for node A's link toward node B, gets
/// "fragmentation needed" from node A: from the node port's address, to
/// the client, 576 bytes (all RFC 1812 allows), every checksum right,
/// quoting the datagram as the client sent it, not as node A translated
/// it; the client's socket learns the MTU.
pub fn a_too_big_udp_datagram_with_df_gets_fragmentation_needed() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &web("Cluster", &[(POD_B, "node-b")]));
    narrow_node_as_link_to_node_b(&nodes, "1280");

    let (report, client) = dont_fragment_udp(&sandbox, &nodes, NODE_A, "30080", false);
    assert!(client.starts_with(&format!("{CLIENT} ")), "{report}");
    let expected = serde_json::json!({
        "from": NODE_A, "to": CLIENT, "length": 576, "ip_checksum": true, "icmp_checksum": true,
        "type": 3, "code": 4, "mtu": 1280,
        "quoted": format!("{client} -> {NODE_A} 30080"), "quoted_ip_checksum": true, "quoted_payload": true,
        "client": client, "second": "EMSGSIZE", "path_mtu": 1280,
    });
    assert_eq!(report, expected);
}

/// Service shop/echo6, IPv6 only, UDP node port 30087 to pod B's port 8080.
fn echo6_on_pod_b() -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: echo6, namespace: shop}}\nspec:\n  type: NodePort\n  \
         clusterIP: 2001:db8:18::41\n  ipFamilies: [IPv6]\n  \
         ports: [{{name: echo, protocol: UDP, port: 80, nodePort: 30087, targetPort: 8080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: echo6-1\n  namespace: shop\n  \
         labels: {{kubernetes.io/service-name: echo6}}\naddressType: IPv6\nendpoints:\n\
         - {{addresses: ['{POD_B6}'], nodeName: node-b}}\n\
         ports: [{{name: echo, port: 8080, protocol: UDP}}]\n"
    )
}

/// The same over IPv6: "packet too big" from the IPv6 node port's address,
/// 1,280 bytes (all RFC 4443 allows), its checksum (with the
/// pseudo-header) right, quoting the datagram as the client sent it.
pub fn a_too_big_ipv6_udp_datagram_gets_packet_too_big() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    nodes.load(&sandbox);
    nodes.sync(&sandbox, &format!("{}---\n{}", web("Cluster", &[(POD_B, "node-b")]), echo6_on_pod_b()));
    narrow_node_as_link_to_node_b(&nodes, "1280");

    let (report, client) = dont_fragment_udp(&sandbox, &nodes, NODE_A6, "30087", true);
    assert!(client.starts_with(&format!("{CLIENT6} ")), "{report}");
    let expected = serde_json::json!({
        "from": NODE_A6, "length": 1280, "icmp_checksum": true,
        "type": 2, "code": 0, "mtu": 1280,
        "quoted": format!("{client} -> {NODE_A6} 30087"), "quoted_payload": true,
        "client": client, "second": "EMSGSIZE", "path_mtu": 1280,
    });
    assert_eq!(report, expected);
}

/// The external index (`balctl_common::ExternalKey` -> the address of the
/// master entry that serves it), read with bpftool, as `DESTINATION/PROTO
/// -> MASTER ADDRESS`.
fn external_index(sandbox: &Sandbox) -> BTreeSet<String> {
    let address = |bytes: &[u8]| IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap()).to_canonical();
    dump_map(sandbox, "external")
        .into_iter()
        .map(|(key, master)| {
            let port = u16::from_be_bytes([key[16], key[17]]);
            let proto = match key[18] {
                6 => "tcp",
                17 => "udp",
                other => panic!("protocol {other} in the index"),
            };
            format!("{}/{proto} -> {}", SocketAddr::new(address(&key[..16]), port), address(&master))
        })
        .collect()
}

/// Issue 18: "packets that are for no frontend pass untouched at the cost
/// of one lookup", in the external index. After a sync it holds exactly
/// what packets from outside can be for: each LoadBalancer and external
/// IP, and each node address with the node ports of its family. A server
/// of node A's own on a node address answers the client untouched, next
/// to the node port; the index's fill is checked before a sync (exit 2,
/// nothing changed); `load` on pins without the index (a build from
/// before it) creates and fills it; a LoadBalancer IP at a node address
/// wins over the node port of its port; a node address removed from its
/// Node takes its entries along, and the node port stops answering there.
pub fn the_external_index_holds_what_packets_from_outside_are_for() {
    let sandbox = Sandbox::new();
    let nodes = Nodes::new(&sandbox);
    serve_pods(&sandbox, &nodes);
    let own = format!("{NODE_A}:9000");
    sandbox.serve_in(&nodes.node_a, "node-a {peer}", &[&own], &[]);
    // Room for web's and web6's entries, no more.
    let cgroup = sandbox.cgroup.to_str().unwrap();
    nodes.balctl_ok(
        &sandbox,
        &["load", "--cgroup", cgroup, "--devices", DEVICES, "--map-size", "external=10"],
    );
    let yaml = format!("{}---\n{}", web("Cluster", &[(POD_A, "node-a"), (POD_B, "node-b")]), web6());
    nodes.sync(&sandbox, &yaml);

    let node_port_at_a = [format!("{NODE_A}:30080/tcp -> 0.0.0.0"), format!("{NODE_A}:30080/udp -> 0.0.0.0")];
    let mut expected = set(&[
        "198.18.1.40:80/tcp -> 198.18.1.40",
        "198.18.1.40:80/udp -> 198.18.1.40",
        "198.18.2.40:80/tcp -> 198.18.2.40",
        "198.18.2.40:80/udp -> 198.18.2.40",
        &format!("{NODE_A_INNER}:30080/tcp -> 0.0.0.0"),
        &format!("{NODE_A_INNER}:30080/udp -> 0.0.0.0"),
        // web6 is IPv6 only: its node port at node A's IPv6 addresses only.
        &format!("[{NODE_A6}]:30086/tcp -> ::"),
        &format!("[{NODE_A_INNER6}]:30086/tcp -> ::"),
    ]);
    expected.extend(node_port_at_a.iter().cloned());
    assert_eq!(external_index(&sandbox), expected);
    let both = set(&[&format!("pod-a {CLIENT}"), &format!("pod-b {NODE_A_INNER}")]);
    assert_eq!(tcp_answers(&sandbox, &nodes, &format!("{NODE_A}:30080"), 50), both);
    // For no frontend: untouched, node A's server sees the client itself.
    assert_eq!(tcp_answers(&sandbox, &nodes, &own, 20), set(&[&format!("node-a {CLIENT}")]));

    // A second Node's IPv4 address would take two more entries: refused
    // before anything is written.
    let node_b = "apiVersion: v1\nkind: Node\nmetadata: {name: node-b}\nstatus:\n  addresses:\n  \
                  - {address: 198.51.100.2, type: InternalIP}\n";
    // The file `Nodes::sync` syncs: a sync replaces the objects of its inputs.
    let file = sandbox.scratch("north-south.yaml");
    fs::write(&file, format!("{yaml}---\n{node_b}")).unwrap();
    let state = fs::read(sandbox.state.join("state.bin")).unwrap();
    let refused =
        sandbox.balctl_in(&nodes.node_a, &["sync", "--node-name", "node-a", "-f", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the external map would need 12 entries but holds 10")
            && stderr.contains("--map-size external="),
        "{stderr}"
    );
    assert_eq!(external_index(&sandbox), expected, "a refused sync changed the index");
    assert_eq!(fs::read(sandbox.state.join("state.bin")).unwrap(), state, "a refused sync changed the state");

    // The pins of a build from before the index: `load` creates and fills it.
    fs::remove_file(sandbox.pins.join("maps").join("external")).unwrap();
    let loaded = nodes.load(&sandbox);
    assert!(loaded.contains("1 maps created"), "{loaded}");
    assert_eq!(external_index(&sandbox), expected);
    assert_eq!(tcp_answers(&sandbox, &nodes, &format!("{NODE_A}:30080"), 50), both);

    // A LoadBalancer IP that is node A's address, at web's node port:
    // the index names it, not the node port (kube-proxy's order), and it
    // reaches its own backend, pod A only; web's UDP node port stays.
    let edge = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: edge, namespace: shop}}\nspec:\n  type: LoadBalancer\n  \
         clusterIP: 198.18.0.41\n  externalTrafficPolicy: Cluster\n  \
         ports: [{{name: http, protocol: TCP, port: 30080, nodePort: 30081, targetPort: 8080}}]\n\
         status: {{loadBalancer: {{ingress: [{{ip: {NODE_A}}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: edge-1\n  namespace: shop\n  \
         labels: {{kubernetes.io/service-name: edge}}\naddressType: IPv4\n\
         endpoints: [{{addresses: [{POD_A}], nodeName: node-a}}]\nports: [{{name: http, port: 8080, protocol: TCP}}]\n"
    );
    nodes.sync(&sandbox, &format!("{yaml}---\n{edge}"));
    let mut with_edge = expected.clone();
    with_edge.remove(&node_port_at_a[0]);
    with_edge.extend([
        format!("{NODE_A}:30080/tcp -> {NODE_A}"),
        format!("{NODE_A}:30081/tcp -> 0.0.0.0"),
        format!("{NODE_A_INNER}:30081/tcp -> 0.0.0.0"),
    ]);
    assert_eq!(external_index(&sandbox), with_edge);
    let pod_a = set(&[&format!("pod-a {CLIENT}")]);
    assert_eq!(tcp_answers(&sandbox, &nodes, &format!("{NODE_A}:30080"), 50), pod_a);
    assert_eq!(udp_answers(&sandbox, &nodes, &format!("{NODE_A}:30080"), 20), both);
    // Without it, the node port takes the address back.
    nodes.sync(&sandbox, &yaml);
    assert_eq!(external_index(&sandbox), expected);
    assert_eq!(tcp_answers(&sandbox, &nodes, &format!("{NODE_A}:30080"), 50), both);

    // Node A without its address toward the client.
    let line = format!("  - {{address: {NODE_A}, type: ExternalIP}}\n");
    assert!(yaml.contains(&line));
    nodes.sync(&sandbox, &yaml.replace(&line, ""));
    for entry in &node_port_at_a {
        expected.remove(entry);
    }
    assert_eq!(external_index(&sandbox), expected);
    // Untouched now: nothing of node A listens on the port.
    let report = client(&sandbox, &nodes, &["connect", "--to", &format!("{NODE_A}:30080"), "--count", "3"]);
    assert_eq!((&report["ok"], &report["failed"]), (&0.into(), &3.into()), "{report}");
    assert_eq!(
        report["errors"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["ECONNREFUSED"],
        "{report}"
    );
    assert_eq!(tcp_answers(&sandbox, &nodes, "198.18.1.40:80", 20), both);
    assert_eq!(tcp_answers(&sandbox, &nodes, &own, 5), set(&[&format!("node-a {CLIENT}")]));
}
