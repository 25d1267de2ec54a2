//! The clients and their server, on the real kernel, in a node's
//! topology: the tests' sandbox (see tests/cli/support: a server namespace,
//! a child cgroup that balctl attaches to, a private bpffs), and per
//! mechanism a node and a pod behind it, each a namespace of its own:
//!
//! ```text
//! pod (the client)          node                              server
//! 198.51.100.N+2/28 --veth-- 198.51.100.N+1/28
//!   default via the node     192.0.2.101-105/24 ---veth------ 192.0.2.2-11
//!                            ip_forward=1, conntrack, the     (host routes back
//!                            CNI's masquerade, the            to each node)
//!                            mechanism's rules
//! ```
//!
//! (N = 16 for direct, 32 balctl, 48 iptables-legacy, 64 iptables-nft, 80
//! nftables: each node's pods in a /28 of the cluster's pod range,
//! 198.51.100.0/24.) The five are alike but for the mechanism: direct (no
//! rules), balctl (run in its node; its pod joins the cgroup balctl is
//! attached to), iptables-legacy, iptables-nft and nftables (kube-proxy's
//! rules in that node only). Every node masquerades its pods' traffic that
//! leaves the pod range (`CNI_MASQUERADE`), as a node's CNI does, so
//! conntrack runs in every node, for every mechanism: direct and balctl pay
//! what they pay on a real node. The pod's default route is its node,
//! which has no route but to its pods and the server's subnet: an
//! untranslated VIP is unreachable there, and nothing leaves the machine.
//! Every pod but balctl's is in a cgroup of its own beside the sandbox's,
//! with no programs. The sandbox's own client namespace stays unused. Each
//! client is a long-lived benchmark worker (the peer's `bench-worker`) that
//! runs batches when told, so they take turns within one run.

use std::{
    fs::File,
    net::SocketAddr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::Command,
};

use crate::{
    cluster::{BYSTANDER_TARGETS, CLUSTER_CIDR, TCP_BACKENDS, UDP_BACKENDS},
    support::{Sandbox, run, sysctl},
    worker::Worker,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mechanism {
    /// Straight to a backend address: no rules, no cgroup programs; the
    /// node's conntrack and masquerade only.
    Direct,
    Balctl,
    /// kube-proxy's iptables mode, on the x_tables backend (`iptables-legacy`).
    IptablesLegacy,
    /// kube-proxy's iptables mode, on the nf_tables backend (`iptables-nft`,
    /// what `iptables` is on this machine's distribution).
    IptablesNft,
    /// kube-proxy's nftables mode.
    Nftables,
}

impl Mechanism {
    pub const ALL: [Self; 5] =
        [Self::Direct, Self::Balctl, Self::IptablesLegacy, Self::IptablesNft, Self::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Balctl => "balctl",
            Self::IptablesLegacy => "iptables-legacy",
            Self::IptablesNft => "iptables-nft",
            Self::Nftables => "nftables",
        }
    }

    /// Its position in `ALL`.
    fn index(self) -> usize {
        Self::ALL.iter().position(|&m| m == self).expect("a mechanism")
    }
}

/// The CNI rule's comment, by which its counter is found.
const CNI_COMMENT: &str = "pods to outside the pod range: masquerade";

/// The CNI's masquerade rule every node gets, for `iptables-nft -t nat -A
/// POSTROUTING`: pod traffic to anything outside the pod range leaves with
/// the node's address, as with the usual CNIs' outgoing NAT (flannel's,
/// Calico's natOutgoing; kube-proxy adds none for pod sources). The server
/// is outside the pod range, so every connection of every mechanism is
/// masqueraded alike; conntrack tracks every packet in every node.
///
/// Written with iptables-nft in all five nodes, so that each pays exactly
/// the same: iptables is how those CNIs write their rules, and iptables-nft
/// is what `iptables` is on current distributions (on this machine too).
/// In the iptables-legacy node it sits beside kube-proxy's x_tables nat
/// table (the kernel runs both nat tables, each its own hook); in the
/// iptables-nft node kube-proxy's chains join its table.
const CNI_MASQUERADE: [&str; 11] = [
    "-s",
    CLUSTER_CIDR,
    "!",
    "-d",
    CLUSTER_CIDR,
    "-m",
    "comment",
    "--comment",
    CNI_COMMENT,
    "-j",
    "MASQUERADE",
];

pub struct World {
    pub sandbox: Sandbox,
    /// The nodes' namespaces, in the order of `Mechanism::ALL`: where the
    /// mechanism's rules are and its programming commands run.
    nodes: [String; 5],
    /// The pods' namespaces, in the same order: where the clients run.
    pods: [String; 5],
    /// The clients' cgroups, in the same order: balctl's client is in the
    /// cgroup balctl is attached to, each other client in one of its own
    /// beside it, as deep and without programs.
    cgroups: [PathBuf; 5],
}

impl World {
    pub fn new() -> Self {
        let sandbox = Sandbox::new();
        let tcp: Vec<String> = TCP_BACKENDS.iter().chain(&BYSTANDER_TARGETS).map(|a| a.to_string()).collect();
        let udp = UDP_BACKENDS.map(|a| a.to_string());
        let tcp: Vec<&str> = tcp.iter().map(String::as_str).collect();
        sandbox.serve("backend", &tcp, &udp.each_ref().map(String::as_str));
        let names = ["direct", "balctl", "iptl", "iptn", "nft"];
        // A node on the server's link (192.0.2.101-105, the server routing
        // back to each), forwarding, with the CNI's masquerade.
        let nodes: [String; 5] = std::array::from_fn(|i| {
            let node = sandbox.add_client_ns(&format!("{}-node", names[i]), &format!("192.0.2.{}", 101 + i));
            sysctl(&node, "net.ipv4.ip_forward", "1");
            let netns = format!("--net=/run/netns/{node}");
            let mut masquerade = vec![netns.as_str(), "iptables-nft", "-t", "nat", "-A", "POSTROUTING"];
            masquerade.extend(CNI_MASQUERADE);
            run("nsenter", &masquerade);
            node
        });
        let pods: [String; 5] = std::array::from_fn(|i| {
            let subnet = 16 * (i + 1);
            sandbox.add_pod_ns(
                &nodes[i],
                &format!("{}-pod", names[i]),
                &format!("198.51.100.{}/28", subnet + 2),
                &format!("198.51.100.{}/28", subnet + 1),
            )
        });
        let cgroups = Mechanism::ALL.map(|mechanism| match mechanism {
            Mechanism::Balctl => sandbox.cgroup.clone(),
            other => sandbox.add_cgroup(other.name()),
        });
        Self { sandbox, nodes, pods, cgroups }
    }

    /// `command` to be run in the mechanism's node (the namespace entered
    /// between fork and exec, so no `ip netns exec` process is timed too).
    pub fn in_node(&self, mechanism: Mechanism, mut command: Command) -> Command {
        let netns = &self.nodes[mechanism.index()];
        let ns =
            File::open(format!("/run/netns/{netns}")).unwrap_or_else(|e| panic!("open netns {netns}: {e}"));
        // SAFETY: setns is async-signal-safe; the closure owns the descriptor.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        command
    }

    /// How many connections the node's CNI rule masqueraded so far: its
    /// packet counter (only a connection's first packet passes the nat
    /// table; conntrack translates the rest).
    pub fn masqueraded(&self, mechanism: Mechanism) -> u64 {
        let mut list = self.command_in(mechanism, "iptables-nft");
        let output = list
            .args(["-t", "nat", "-L", "POSTROUTING", "-n", "-v", "-x"])
            .output()
            .expect("run iptables-nft");
        assert!(output.status.success(), "iptables-nft -L: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|line| line.contains(CNI_COMMENT))
            .and_then(|line| line.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no masquerade rule in {}'s node", mechanism.name()))
    }

    /// `program` to be run in the mechanism's node (see `in_node`).
    pub fn command_in(&self, mechanism: Mechanism, program: &str) -> Command {
        self.in_node(mechanism, Command::new(program))
    }

    /// Starts the mechanism's client in its pod and cgroup: only balctl's
    /// client runs balctl's programs, and all of them are as deep in the
    /// cgroup tree, so that none is spared what the kernel accounts per
    /// cgroup level (pressure stall time, on every context switch). A direct
    /// client in the root cgroup measured about 0.2 % faster, within the
    /// noise. Each cycle goes to one of the addresses of its kind, at random.
    pub fn worker(
        &self,
        mechanism: Mechanism,
        tcp: &[SocketAddr],
        udp: &[SocketAddr],
        bystander: &[SocketAddr],
    ) -> Worker {
        let mut command = self.sandbox.peer(false, &self.pods[mechanism.index()]);
        command.arg("--cgroup").arg(&self.cgroups[mechanism.index()]);
        Worker::start(command, tcp, udp, bystander)
    }
}
