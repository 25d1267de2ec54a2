//! The clients and their server, on the real kernel: the tests'
//! sandbox (see tests/cli/support: a server namespace, a child cgroup that
//! balctl attaches to, a private bpffs), and five client namespaces set up
//! alike, each on a veth of its own into the server namespace: direct (no
//! rules), balctl (its client joins the cgroup), iptables-legacy,
//! iptables-nft and nftables (kube-proxy's rules, installed in that
//! namespace only). Every client but balctl's is in a cgroup of its own
//! beside the sandbox's, with no programs. The sandbox's own client
//! namespace stays unused. Each
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
    cluster::{BYSTANDER_TARGETS, TCP_BACKENDS, UDP_BACKENDS},
    support::Sandbox,
    worker::Worker,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mechanism {
    /// Straight to a backend address: no rules, no cgroup programs, no conntrack.
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

    /// Whether its client's namespace holds kube-proxy's rules.
    fn is_kube_proxy(self) -> bool {
        matches!(self, Self::IptablesLegacy | Self::IptablesNft | Self::Nftables)
    }
}

pub struct World {
    pub sandbox: Sandbox,
    /// Client namespaces in the order of `Mechanism::ALL`.
    namespaces: [String; 5],
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
        let namespaces = [("direct", 101), ("balctl", 102), ("iptl", 103), ("iptn", 104), ("nft", 105)]
            .map(|(name, host)| sandbox.add_client_ns(name, &format!("192.0.2.{host}")));
        for (mechanism, ns) in Mechanism::ALL.iter().zip(&namespaces).filter(|(m, _)| m.is_kube_proxy()) {
            // A node routes service addresses somewhere (its default route)
            // before the OUTPUT hook rewrites them; here only into the
            // server namespace, which routes them nowhere.
            let status = Command::new("ip")
                .args(["-n", ns, "route", "add", "198.18.0.0/15", "via", "192.0.2.2"])
                .status()
                .expect("run ip");
            assert!(status.success(), "route the VIPs for {}", mechanism.name());
        }
        let cgroups = Mechanism::ALL.map(|mechanism| match mechanism {
            Mechanism::Balctl => sandbox.cgroup.clone(),
            other => sandbox.add_cgroup(other.name()),
        });
        Self { sandbox, namespaces, cgroups }
    }

    fn netns(&self, mechanism: Mechanism) -> &str {
        &self.namespaces[mechanism.index()]
    }

    /// `program` to be run in the mechanism's network namespace (entered
    /// between fork and exec, so no `ip netns exec` process is timed too).
    pub fn command_in(&self, mechanism: Mechanism, program: &str) -> Command {
        let netns = self.netns(mechanism);
        let ns =
            File::open(format!("/run/netns/{netns}")).unwrap_or_else(|e| panic!("open netns {netns}: {e}"));
        let mut command = Command::new(program);
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

    /// Starts the mechanism's client in its namespace and cgroup: only
    /// balctl's client runs balctl's programs, and all of them are as deep in
    /// the cgroup tree, so that none is spared what the kernel accounts per
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
        let mut command = self.sandbox.peer(false, self.netns(mechanism));
        command.arg("--cgroup").arg(&self.cgroups[mechanism.index()]);
        Worker::start(command, tcp, udp, bystander)
    }
}
