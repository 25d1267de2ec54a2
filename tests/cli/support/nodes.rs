//! The north-south topology (issue 18): an external client, node A (where
//! balctl runs, its tc programs on the devices toward the client and
//! toward node B), node B (just a router to its pod), and a pod behind
//! each node, every one a network namespace of its own:
//!
//! ```text
//! client 203.0.113.1      ext0 203.0.113.2     tob0 198.51.100.1   toa0 198.51.100.2
//!        2001:db8:3::1  --     2001:db8:3::2  --     2001:db8:51::1 --    2001:db8:51::2
//!                           node A                              node B
//!                           pod0 192.0.2.1, 2001:db8:a::1       pod0 192.0.2.129, 2001:db8:b::1
//!                            |                                   |
//!                           pod A 192.0.2.10, 2001:db8:a::10    pod B 192.0.2.130, 2001:db8:b::10
//! ```
//!
//! The client routes the VIPs (198.18.0.0/15) to node A; the nodes route
//! each other's pods and forward; the pods' default route is their node.
//! Nothing routes off the machine. The namespaces are named after the
//! sandbox (`<sandbox>-na`...), so a killed run's are swept with it, and are
//! removed (with their veths) when this drops, also on failure.

use std::process::{Command, Stdio};

use super::{Sandbox, balctl, run, sysctl, veth};

pub const CLIENT: &str = "203.0.113.1";
pub const CLIENT6: &str = "2001:db8:3::1";
/// Node A's address toward the client: where node ports are called.
pub const NODE_A: &str = "203.0.113.2";
pub const NODE_A6: &str = "2001:db8:3::2";
/// Node A's address toward node B: what pod B sees SNATed flows come from.
pub const NODE_A_INNER: &str = "198.51.100.1";
pub const NODE_A_INNER6: &str = "2001:db8:51::1";
pub const POD_A: &str = "192.0.2.10";
pub const POD_A6: &str = "2001:db8:a::10";
pub const POD_B: &str = "192.0.2.130";
pub const POD_B6: &str = "2001:db8:b::10";
/// Node A's devices that carry traffic from outside (`load --devices`).
pub const DEVICES: &str = "ext0,tob0";

pub struct Nodes {
    pub client: String,
    pub node_a: String,
    pub node_b: String,
    pub pod_a: String,
    pub pod_b: String,
    /// `balctl unload` in node A, run first when this drops: the
    /// sandbox's own unload runs in the host's namespace, where releasing
    /// the SNAT ports of node A's devices would change the host's
    /// reserved ports.
    unload_in_node_a: Command,
}

impl Nodes {
    /// Builds the topology beside `sandbox`'s own namespaces.
    pub fn new(sandbox: &Sandbox) -> Self {
        let prefix = sandbox.client_ns.strip_suffix("-c").expect("the sandbox's client namespace");
        let name = |suffix: &str| format!("{prefix}-{suffix}");
        let nodes = Nodes {
            client: name("cl"),
            node_a: name("na"),
            node_b: name("nb"),
            pod_a: name("pa"),
            pod_b: name("pb"),
            unload_in_node_a: sandbox.command_of(
                "nsenter",
                &[&format!("--net=/run/netns/{}", name("na")), balctl(), "unload", "--yes"],
            ),
        };
        nodes.build();
        nodes
    }

    fn namespaces(&self) -> [&str; 5] {
        [&self.client, &self.node_a, &self.node_b, &self.pod_a, &self.pod_b]
    }

    fn build(&self) {
        for ns in self.namespaces() {
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
            // No duplicate address detection on the devices made below,
            // for their link-local addresses too (`nodad` covers only the
            // global ones): while a link-local address is tentative, IPv6
            // neighbour discovery waits, and 1 in about 2,000 of the first
            // connections timed out.
            for conf in ["all", "default"] {
                sysctl(ns, &format!("net.ipv6.conf.{conf}.accept_dad"), "0");
            }
        }
        let (client, a, b, pod_a, pod_b) =
            (&self.client, &self.node_a, &self.node_b, &self.pod_a, &self.pod_b);
        veth(
            (client, "eth0", &["203.0.113.1/24", "2001:db8:3::1/64"]),
            (a, "ext0", &["203.0.113.2/24", "2001:db8:3::2/64"]),
        );
        veth(
            (a, "tob0", &["198.51.100.1/24", "2001:db8:51::1/64"]),
            (b, "toa0", &["198.51.100.2/24", "2001:db8:51::2/64"]),
        );
        veth(
            (a, "pod0", &["192.0.2.1/25", "2001:db8:a::1/64"]),
            (pod_a, "eth0", &["192.0.2.10/25", "2001:db8:a::10/64"]),
        );
        veth(
            (b, "pod0", &["192.0.2.129/25", "2001:db8:b::1/64"]),
            (pod_b, "eth0", &["192.0.2.130/25", "2001:db8:b::10/64"]),
        );
        for (ns, to, via) in [
            (client.as_str(), "198.18.0.0/15", "203.0.113.2"),
            (a, "192.0.2.128/25", "198.51.100.2"),
            (a, "2001:db8:b::/64", "2001:db8:51::2"),
            (b, "192.0.2.0/25", "198.51.100.1"),
            (b, "203.0.113.0/24", "198.51.100.1"),
            (b, "2001:db8:a::/64", "2001:db8:51::1"),
            (b, "2001:db8:3::/64", "2001:db8:51::1"),
            (pod_a, "default", "192.0.2.1"),
            (pod_a, "default", "2001:db8:a::1"),
            (pod_b, "default", "192.0.2.129"),
            (pod_b, "default", "2001:db8:b::1"),
        ] {
            let family = if via.contains(':') { "-6" } else { "-4" };
            run("ip", &["-n", ns, family, "route", "add", to, "via", via]);
        }
        for node in [a, b] {
            sysctl(node, "net.ipv4.ip_forward", "1");
            sysctl(node, "net.ipv6.conf.all.forwarding", "1");
        }
    }

    /// Turns off every device's checksum offloads (ethtool: `tx` and `rx`
    /// checksumming on each veth end): every TCP/UDP packet is sent with
    /// its whole checksum, not one a device would fill in
    /// (`CHECKSUM_PARTIAL`), and every receiver checks it, as on a link
    /// between real machines.
    pub fn checksums_in_software(&self) {
        let devices: [(&str, &[&str]); 5] = [
            (&self.client, &["eth0"]),
            (&self.node_a, &["ext0", "tob0", "pod0"]),
            (&self.node_b, &["toa0", "pod0"]),
            (&self.pod_a, &["eth0"]),
            (&self.pod_b, &["eth0"]),
        ];
        for (ns, names) in devices {
            for device in names {
                run("ip", &["netns", "exec", ns, "ethtool", "-K", device, "tx", "off", "rx", "off"]);
            }
        }
    }

    /// Runs balctl in node A's network namespace, against the sandbox's
    /// pins and state; it must succeed.
    pub fn balctl_ok(&self, sandbox: &Sandbox, args: &[&str]) -> String {
        sandbox.balctl_in_ok(&self.node_a, args)
    }

    /// `load` on the sandbox's cgroup with the tc programs on node A's
    /// devices toward the client and node B.
    pub fn load(&self, sandbox: &Sandbox) -> String {
        let cgroup = sandbox.cgroup.to_str().unwrap();
        self.balctl_ok(sandbox, &["load", "--cgroup", cgroup, "--devices", DEVICES])
    }

    /// `sync --node-name node-a` of `yaml`.
    pub fn sync(&self, sandbox: &Sandbox, yaml: &str) -> String {
        let file = sandbox.scratch("north-south.yaml");
        std::fs::write(&file, yaml).expect("write the YAML");
        self.balctl_ok(sandbox, &["sync", "--node-name", "node-a", "-f", file.to_str().unwrap()])
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let _ = self.unload_in_node_a.stdout(Stdio::null()).stderr(Stdio::null()).status();
        // Node A first: balctl's tc links there go with its devices.
        for ns in [&self.node_a, &self.node_b, &self.pod_a, &self.pod_b, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
