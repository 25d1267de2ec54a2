//! Issue 5: LocalRedirectPolicy and BalancingPolicy objects synced from
//! Kubernetes YAML (and TOML), on the real kernel, with real dnsmasq and dig.
//!
//! The client namespace plays node-a. kube-dns (examples/k8s/kube-dns.yaml,
//! 198.18.0.10) has two "cluster" dnsmasq endpoints, 192.0.2.2 and
//! 192.0.2.3, answering 192.0.2.77 and 192.0.2.78; the node-local-dns Pod
//! (examples/k8s/node-local-dns.yaml, 192.0.2.9 on node-a) is a third one
//! answering 192.0.2.99.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use balctl::bpf::sys::monotonic_ns;

use crate::support::Sandbox;

const NODE_LOCAL: &str = "192.0.2.99";
const CLUSTER: [&str; 2] = ["192.0.2.77", "192.0.2.78"];

fn example(name: &str) -> String {
    fs::read_to_string(format!("{}/examples/k8s/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The node-local-dns example with its Pods, or the policy alone.
fn node_local_dns(with_pods: bool) -> String {
    let text = example("node-local-dns.yaml");
    if with_pods { text } else { text.split("\n---\n").next().unwrap().to_owned() }
}

fn spawn_node_local_dnsmasq(sandbox: &Sandbox) -> u32 {
    sandbox.spawn_dnsmasq("192.0.2.9", &format!("/cluster.local/{NODE_LOCAL}"))
}

/// kube-dns with its cluster dnsmasq servers, and the node-local one; the
/// policy file (in the scratch dir, to be rewritten) holds `policy`.
/// Returns the policy file and the node-local dnsmasq's PID.
fn kube_dns_with_redirect(sandbox: &Sandbox, policy: &str) -> (PathBuf, u32) {
    sandbox.load();
    for (host, answer) in [("192.0.2.2", CLUSTER[0]), ("192.0.2.3", CLUSTER[1])] {
        sandbox.spawn_dnsmasq(host, &format!("/cluster.local/{answer}"));
    }
    let node_local = spawn_node_local_dnsmasq(sandbox);
    let file = sandbox.scratch("node-local-dns.yaml");
    fs::write(&file, policy).unwrap();
    sync(sandbox, &file);
    (file, node_local)
}

fn sync(sandbox: &Sandbox, policy_file: &Path) -> String {
    let kube_dns = format!("{}/examples/k8s/kube-dns.yaml", env!("CARGO_MANIFEST_DIR"));
    sandbox.balctl_ok(&[
        "sync",
        "--node-name",
        "node-a",
        "-f",
        &kube_dns,
        "-f",
        policy_file.to_str().unwrap(),
    ])
}

/// The answers of one dig run to `names` through the kube-dns VIP; retried
/// while dnsmasq is still starting. Replies must come from the VIP.
fn dig(sandbox: &Sandbox, transport: &str, names: &[String]) -> Vec<String> {
    let mut argv = vec!["dig", "@198.18.0.10", "+short", transport, "+tries=1", "+time=2"];
    for name in names {
        argv.extend([name.as_str(), "A"]);
    }
    for attempt in 0.. {
        let output = sandbox.client_program(&argv);
        let (stdout, stderr) =
            (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(!stdout.contains("unexpected") && !stderr.contains("unexpected"), "{stdout}{stderr}");
        let answers: Vec<String> = stdout.lines().map(str::to_owned).collect();
        if output.status.success() && answers.len() == names.len() {
            return answers;
        }
        assert!(attempt < 40, "dig {transport} failed: {stdout}{stderr}");
        thread::sleep(Duration::from_millis(100));
    }
    unreachable!()
}

/// Five single queries over UDP and five over TCP; all their answers.
fn answers(sandbox: &Sandbox) -> Vec<String> {
    let name = ["kubernetes.default.svc.cluster.local".to_owned()];
    let mut answers = Vec::new();
    for transport in ["+notcp", "+tcp"] {
        for _ in 0..5 {
            answers.extend(dig(sandbox, transport, &name));
        }
    }
    answers
}

/// Must show 1: `dig @<kube-dns VIP>` gets the node-local answer; with the
/// node-local Pod gone from the input (and its dnsmasq stopped) the
/// cluster's; with it back, the node-local one again.
pub fn node_local_dns_falls_back_to_the_service() {
    let sandbox = Sandbox::new();
    let (file, node_local) = kube_dns_with_redirect(&sandbox, &node_local_dns(true));
    assert!(answers(&sandbox).iter().all(|a| a == NODE_LOCAL), "{:?}", answers(&sandbox));
    let dump = sandbox.balctl_ok(&["dump", "--vip", "198.18.0.10"]);
    assert!(dump.contains("localredirectpolicy/kube-system/nodelocaldns"), "{dump}");

    sandbox.stop(node_local);
    fs::write(&file, node_local_dns(false)).unwrap();
    let output = sync(&sandbox, &file);
    assert!(output.contains("no local backend"), "{output}");
    let found = answers(&sandbox);
    assert!(found.iter().all(|a| CLUSTER.contains(&a.as_str())), "{found:?}");

    spawn_node_local_dnsmasq(&sandbox);
    fs::write(&file, node_local_dns(true)).unwrap();
    sync(&sandbox, &file);
    let found = answers(&sandbox);
    assert!(found.iter().all(|a| a == NODE_LOCAL), "{found:?}");
}

/// Must show 2: with `requestsPerSecond: 5`, a burst of 15 queries within
/// one second gets at most 5 node-local answers, the rest from the cluster.
pub fn a_redirect_over_its_rate_limit_falls_back_to_the_service() {
    let sandbox = Sandbox::new();
    let limited =
        node_local_dns(true).replace("  # Optional:", "  config:\n    requestsPerSecond: 5\n  # More:");
    kube_dns_with_redirect(&sandbox, &limited);
    // Warm-up: dnsmasq answers, and a second passes for the budget.
    dig(&sandbox, "+notcp", &["warm.cluster.local".to_owned()]);
    thread::sleep(Duration::from_secs(1));
    let names: Vec<String> = (0..15).map(|i| format!("q{i}.cluster.local")).collect();
    // The datapath counts per second of CLOCK_MONOTONIC: start the burst
    // just after a second begins, so it stays within one.
    let into_second = monotonic_ns() % 1_000_000_000;
    thread::sleep(Duration::from_nanos(1_000_000_000 - into_second + 20_000_000));
    let started = monotonic_ns();
    let found = dig(&sandbox, "+notcp", &names);
    assert!(monotonic_ns() - started < 900_000_000, "the burst took more than a second");
    let local = found.iter().filter(|a| *a == NODE_LOCAL).count();
    let cluster = found.iter().filter(|a| CLUSTER.contains(&a.as_str())).count();
    assert!((1..=5).contains(&local), "{found:?}");
    assert_eq!(local + cluster, 15, "{found:?}");
}

/// Must show 3: a BalancingPolicy on a custom VIP over explicit addresses,
/// and one on a Service's cluster IP sending to a Pod's hostPort on its
/// Node's InternalIP, reach exactly those addresses; without the policy the
/// Service's endpoint answers.
pub fn balancing_policies_reach_addresses_and_host_ports() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("b4", &["192.0.2.4:8080"], &[]);
    sandbox.serve("b5", &["192.0.2.5:8080"], &[]);
    sandbox.serve("service-endpoint", &["192.0.2.6:8080"], &[]);
    sandbox.serve("host-port", &["192.0.2.7:31080"], &[]);
    let address = format!("{}/examples/k8s/balancing-address.yaml", env!("CARGO_MANIFEST_DIR"));
    let host_port = sandbox.scratch("balancing-hostport.yaml");
    fs::write(&host_port, example("balancing-hostport.yaml")).unwrap();
    let sync = || {
        sandbox.balctl_ok(&[
            "sync",
            "--node-name",
            "node-a",
            "-f",
            &address,
            "-f",
            host_port.to_str().unwrap(),
        ])
    };
    sync();
    assert_eq!(sandbox.reached("198.18.3.10:80", 40), ["b4", "b5"]);
    assert_eq!(sandbox.reached("198.18.3.20:80", 10), ["host-port"]);
    let dump = sandbox.balctl_ok(&["dump"]);
    assert!(
        dump.contains("balancingpolicy/edge/api-hostport") && dump.contains("balancingpolicy/shop/web-vip")
    );

    let without_policy = example("balancing-hostport.yaml").split_once("\n---\n").unwrap().1.to_owned();
    fs::write(&host_port, without_policy).unwrap();
    sync();
    assert_eq!(sandbox.reached("198.18.3.20:80", 10), ["service-endpoint"]);
}

/// Must show 4: conflicting and bad policies, in YAML and in TOML, exit
/// with 2 and change neither the maps nor the state.
pub fn bad_policies_change_nothing() {
    let sandbox = Sandbox::new();
    let (file, _) = kube_dns_with_redirect(&sandbox, &node_local_dns(true));
    let snapshot =
        || (sandbox.balctl_ok(&["dump", "-o", "json"]), fs::read(sandbox.state.join("state.bin")).unwrap());
    let before = snapshot();
    let policy = node_local_dns(false);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "second.yaml",
            policy.replace("name: nodelocaldns", "name: second"),
            "frontend 198.18.0.10:53/udp@redirect of localredirectpolicy/kube-system/second is also a frontend \
             of localredirectpolicy/kube-system/nodelocaldns",
        ),
        (
            "unpaired.yaml",
            policy.replace("name: nodelocaldns", "name: unpaired").replace("- name: dns-tcp\n      port", "- name: tcp\n      port"),
            "LocalRedirectPolicy kube-system/unpaired: spec.frontend.serviceMatcher.toPorts[1]: frontend port \
             `dns-tcp` has no partner in the backend's toPorts",
        ),
        (
            "missing.yaml",
            policy.replace("name: nodelocaldns", "name: missing").replace("serviceName: kube-dns", "serviceName: coredns"),
            "LocalRedirectPolicy kube-system/missing: spec.frontend.serviceMatcher: Service kube-system/coredns \
             is not in the input",
        ),
        (
            "mode.yaml",
            example("balancing-hostport.yaml").replace("redirectMode: hostPort", "redirectMode: hostNetwork"),
            "BalancingPolicy edge/api-hostport: spec.backend.serviceEndpoint.redirectMode: `hostNetwork` is not \
             one of podEndpoint, hostPort, nodeProxy",
        ),
        (
            "twice.toml",
            "[[local_redirect_policy]]\nname = \"a\"\naddresses = [\"198.18.0.53\"]\nports = [{ port = 53 }]\n\
             [[local_redirect_policy]]\nname = \"b\"\naddresses = [\"198.18.0.53\"]\nports = [{ port = 53 }]\n"
                .to_owned(),
            "frontend 198.18.0.53:53/tcp@redirect of localredirectpolicy/b is also a frontend of \
             localredirectpolicy/a",
        ),
        (
            "mixed.toml",
            "[[local_redirect_policy]]\nname = \"dns\"\naddresses = [\"198.18.0.10\"]\n\
             ports = [{ port = 53, protocol = \"udp\" }]\n"
                .to_owned(),
            "is also a frontend of localredirectpolicy/kube-system/nodelocaldns",
        ),
        (
            "limit.toml",
            "[[balancing_policy]]\nname = \"web\"\naddresses = [\"198.18.0.60\"]\nports = [{ port = 80 }]\n\
             requests_per_second = 5\n"
                .to_owned(),
            "limit.toml:5:23: requests_per_second: only a local_redirect_policy has a rate limit",
        ),
    ];
    let kube_dns = format!("{}/examples/k8s/kube-dns.yaml", env!("CARGO_MANIFEST_DIR"));
    for (name, text, expected) in cases {
        let bad = sandbox.scratch(name);
        fs::write(&bad, text).unwrap();
        let output = sandbox.balctl(&[
            "sync",
            "--node-name",
            "node-a",
            "-f",
            &kube_dns,
            "-f",
            file.to_str().unwrap(),
            "-f",
            bad.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: expected {expected}\n{stderr}");
        assert!(snapshot() == before, "{name} changed the maps or the state");
        fs::remove_file(&bad).unwrap();
    }
}
