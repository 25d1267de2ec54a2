//! A lane per mechanism: a topology of its own (support/nodes.rs: client,
//! node A, node B, pod A, pod B, in a sandbox of its own), so that exactly
//! one mechanism is active on each node A and none sees another's rules or
//! conntrack. Lanes are alike but for what node A is given:
//!
//! - direct: nothing; the client routes the pods' subnets to node A, which
//!   forwards (no netfilter table, so no conntrack, in node A);
//! - balctl: `load --devices ext0,tob0` and `sync --node-name node-a` of
//!   the services' YAML;
//! - iptables: `iptables-legacy-restore --noflush` of kube-proxy's rules
//!   (`iptables-restore`, whichever backend it is, when there is no legacy
//!   one): of kube-proxy's two iptables backends the legacy one is the
//!   faster datapath at 10,000 services (bench/compare: 0.65 against 0.33
//!   of direct), so balctl is held to the harder comparison, and it takes
//!   about a second to program 10,000 node-port services where
//!   iptables-nft-restore took 398 s on a busy 2-CPU machine;
//! - nftables: `nft -f` of kube-proxy's nftables table.

use std::{net::SocketAddr, process::Command, time::Instant};

use serde_json::Value;

use crate::{
    services::{POD_PORT, Services},
    support::{
        Sandbox,
        nodes::{DEVICES, NODE_A, Nodes, POD_A, POD_B},
        run,
    },
    worker::Worker,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mechanism {
    Direct,
    Balctl,
    Iptables,
    Nftables,
}

impl Mechanism {
    pub const ALL: [Self; 4] = [Self::Direct, Self::Balctl, Self::Iptables, Self::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Balctl => "balctl",
            Self::Iptables => "kube-proxy iptables",
            Self::Nftables => "kube-proxy nftables",
        }
    }
}

pub struct Lane {
    pub mechanism: Mechanism,
    // Dropped before the sandbox: node A's namespace goes first.
    nodes: Nodes,
    sandbox: Sandbox,
}

impl Lane {
    /// The topology, with the pods' servers answering on port 8080 (TCP and
    /// UDP) with `a` or `b`; the direct lane's client routes to the pods.
    pub fn new(mechanism: Mechanism) -> Self {
        let sandbox = Sandbox::new();
        let nodes = Nodes::new(&sandbox);
        for (ns, id, address) in [(&nodes.pod_a, "a", POD_A), (&nodes.pod_b, "b", POD_B)] {
            let address = format!("{address}:{POD_PORT}");
            sandbox.serve_in(ns, id, &[&address], &[&address]);
        }
        if mechanism == Mechanism::Direct {
            for subnet in ["192.0.2.0/25", "192.0.2.128/25"] {
                run("ip", &["-n", &nodes.client, "route", "add", subnet, "via", NODE_A]);
            }
        }
        Self { mechanism, nodes, sandbox }
    }

    /// Gives node A the services; returns what ran and how long it took
    /// (None for direct).
    pub fn program(&self, services: &Services) -> Option<(String, f64)> {
        let started = Instant::now();
        let command = match self.mechanism {
            Mechanism::Direct => return None,
            Mechanism::Balctl => {
                let mut load =
                    vec!["load", "--cgroup", self.sandbox.cgroup.to_str().unwrap(), "--devices", DEVICES];
                // A node-port service with two endpoints takes a cluster-IP,
                // a node-port and an external frontend with a slot per
                // endpoint, and a 211-entry Maglev table (14 chunks): at
                // 10,000 more than the default capacities.
                if services.len() > 5_000 {
                    load.extend(["--map-size", "services=262144,maglev=262144"]);
                }
                self.nodes.balctl_ok(&self.sandbox, &load);
                let yaml = self.sandbox.scratch("services.yaml");
                services.write_kube_yaml(&yaml);
                let started = Instant::now();
                let args = ["sync", "--node-name", "node-a", "-f", yaml.to_str().unwrap()];
                self.nodes.balctl_ok(&self.sandbox, &args);
                return Some((format!("balctl {}", args.join(" ")), started.elapsed().as_secs_f64()));
            }
            Mechanism::Iptables => {
                let rules = self.sandbox.scratch("kube-proxy.rules");
                services.write_iptables(&rules);
                format!("{} --noflush --wait 10 {}", iptables_restore(), rules.display())
            }
            Mechanism::Nftables => {
                let rules = self.sandbox.scratch("kube-proxy.nft");
                services.write_nft(&rules);
                format!("nft -f {}", rules.display())
            }
        };
        let netns = format!("--net=/run/netns/{}", self.nodes.node_a);
        let argv: Vec<&str> = command.split(' ').collect();
        let mut full = vec![netns.as_str()];
        full.extend(&argv);
        let output = Command::new("nsenter").args(&full).output().expect("run nsenter");
        assert!(output.status.success(), "{command}: {}", String::from_utf8_lossy(&output.stderr));
        Some((command, started.elapsed().as_secs_f64()))
    }

    /// A benchmark worker in the client namespace for the pod on node A
    /// (`local`) or on node B: straight to the pod for direct, else node A's
    /// node port.
    pub fn worker(&self, services: &Services, local: bool) -> Worker {
        let target = match self.mechanism {
            Mechanism::Direct => {
                SocketAddr::new(if local { POD_A } else { POD_B }.parse().unwrap(), POD_PORT)
            }
            _ => SocketAddr::V4(services.node_port(local)),
        };
        Worker::start(self.sandbox.peer(false, &self.nodes.client), &[target], &[target], &[])
    }

    /// New TCP connections, one after another, from the client to the pod
    /// on node B for `millis` (`peer connect --millis`): the peer's report
    /// of answers and failures by errno.
    pub fn sustained(&self, services: &Services, millis: u64) -> Value {
        let target = match self.mechanism {
            Mechanism::Direct => SocketAddr::new(POD_B.parse().unwrap(), POD_PORT),
            _ => SocketAddr::V4(services.node_port(false)),
        };
        let output = self
            .sandbox
            .peer(false, &self.nodes.client)
            .args(["connect", "--to", &target.to_string(), "--millis", &millis.to_string()])
            .output()
            .expect("run the client");
        assert!(output.status.success(), "client: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("the client printed JSON")
    }

    /// The flows maps' memory (bytes_memlock, as `bpftool map show` gives
    /// it) per 100,000 flows: both are LRU hashes, preallocated at their
    /// capacity, so the memory per flow does not depend on how many are in
    /// use. Returns (capacity, MiB per 100,000 flows).
    pub fn flows_memory(&self) -> (u64, f64) {
        let maps = self.sandbox.pins.join("maps");
        let show = |name: &str| -> Value {
            let output = Command::new("bpftool")
                .args(["-j", "map", "show", "pinned"])
                .arg(maps.join(name))
                .output()
                .expect("run bpftool");
            serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("bpftool map show {name}: {e}"))
        };
        let (flows, replies) = (show("flows"), show("flow_replies"));
        let capacity = flows["max_entries"].as_u64().expect("max_entries");
        assert_eq!(replies["max_entries"].as_u64(), Some(capacity), "flow_replies follows the flows size");
        let bytes = flows["bytes_memlock"].as_u64().unwrap() + replies["bytes_memlock"].as_u64().unwrap();
        (capacity, bytes as f64 * 100_000.0 / capacity as f64 / (1024.0 * 1024.0))
    }
}

/// The legacy backend's restore if it is installed, else the machine's.
fn iptables_restore() -> &'static str {
    let legacy = Command::new("iptables-legacy-restore").arg("--version").output();
    if legacy.is_ok_and(|o| o.status.success()) { "iptables-legacy-restore" } else { "iptables-restore" }
}

impl Drop for Lane {
    /// balctl unloads in node A's namespace, where it reserved the SNAT
    /// ports (the sandbox's own unload runs in the host's).
    fn drop(&mut self) {
        if self.mechanism == Mechanism::Balctl {
            let _ = self.sandbox.balctl_in(&self.nodes.node_a, &["unload", "--yes"]);
        }
    }
}
