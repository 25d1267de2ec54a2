//! The cluster every mechanism is programmed with, and its three renderings:
//! the objects as `kubectl get services,endpointslices -A -o yaml` prints
//! them (balctl's input), and the rules kube-proxy derives from them in its
//! iptables mode (an `iptables-restore` input) and its nftables mode (an
//! `nft -f` input).
//!
//! A cluster of size N has N TCP services (port 80) and one UDP service
//! (port 53, a DNS-like one), each with two ready endpoints. The measured
//! TCP service sits in the middle of the list and the UDP one right after
//! it: kube-proxy's iptables mode matches services one rule after another in
//! the order of a Go map walk (so in effect a random order), and the middle
//! is where a service is on average. The nftables mode and balctl look
//! services up by hash, where the position does not matter.
//!
//! Only the measured services' endpoints are served (192.0.2.2 and
//! 192.0.2.3 in the server namespace); every other endpoint is a distinct
//! address:port in 192.0.2.12-15 that nothing ever connects to.

use std::{
    fmt::Write as _,
    fs::File,
    io::{BufWriter, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use xxhash_rust::xxh3::xxh3_64;

use crate::kube_yaml;

/// The measured services' endpoints, served in the server namespace.
pub const TCP_BACKENDS: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 8080),
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 3), 8080),
];
/// Served too, but no service's endpoint: the bystander connections'
/// targets. (Not the backends: a direct connection whose source port a
/// recent DNATed one to the same backend used clashes in conntrack.)
pub const BYSTANDER_TARGETS: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 9000),
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 3), 9000),
];
pub const UDP_BACKENDS: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 5353),
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 3), 5353),
];
/// The cluster's pod range (kube-proxy's `--cluster-cidr`, which its
/// local-traffic detector is given; every node's pods are in a /28 of it,
/// world.rs). The bench's clients are pods, so their traffic counts as pod
/// traffic: kube-proxy's "masquerade off-cluster traffic" rules are
/// evaluated but do not match (the nodes' CNI rule masquerades it instead,
/// world.rs, for every mechanism alike).
pub const CLUSTER_CIDR: &str = "198.51.100.0/24";
/// kube-proxy's default masquerade mark (bit 14).
pub const MASQ_MARK: &str = "0x4000";
/// Ports given to other services' endpoints before the next addresses are used.
const PORTS_PER_ADDRESS: u32 = 60_000;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn lower(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    fn upper(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

pub struct Service {
    namespace: String,
    name: String,
    port_name: &'static str,
    vip: Ipv4Addr,
    port: u16,
    protocol: Protocol,
    /// Target port of every endpoint.
    target_port: u16,
    endpoints: [Ipv4Addr; 2],
}

impl Service {
    /// kube-proxy's name for the service port: `namespace/name:port`.
    fn port_name(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }

    fn endpoint(&self, index: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.endpoints[index], self.target_port)
    }
}

pub struct Cluster {
    pub services: Vec<Service>,
    tcp_measured: usize,
}

impl Cluster {
    pub fn new(size: u32) -> Self {
        let middle = size / 2;
        let mut services = Vec::with_capacity(size as usize + 1);
        for i in 0..size {
            let other = i / PORTS_PER_ADDRESS * 2;
            let endpoints =
                [Ipv4Addr::new(192, 0, 2, 12 + other as u8), Ipv4Addr::new(192, 0, 2, 13 + other as u8)];
            let (name, endpoints, target_port) = if i == middle {
                ("web".to_owned(), [*TCP_BACKENDS[0].ip(), *TCP_BACKENDS[1].ip()], TCP_BACKENDS[0].port())
            } else {
                (format!("svc-{i}"), endpoints, (1024 + i % PORTS_PER_ADDRESS) as u16)
            };
            services.push(Service {
                namespace: format!("ns-{}", i % 100),
                name,
                port_name: "http",
                vip: vip(services.len()),
                port: 80,
                protocol: Protocol::Tcp,
                target_port,
                endpoints,
            });
            if i == middle {
                services.push(Service {
                    namespace: "kube-system".to_owned(),
                    name: "dns".to_owned(),
                    port_name: "dns",
                    vip: vip(services.len()),
                    port: 53,
                    protocol: Protocol::Udp,
                    target_port: UDP_BACKENDS[0].port(),
                    endpoints: [*UDP_BACKENDS[0].ip(), *UDP_BACKENDS[1].ip()],
                });
            }
        }
        Self { services, tcp_measured: middle as usize }
    }

    pub fn tcp_vip(&self) -> SocketAddrV4 {
        let service = &self.services[self.tcp_measured];
        SocketAddrV4::new(service.vip, service.port)
    }

    pub fn udp_vip(&self) -> SocketAddrV4 {
        let service = &self.services[self.tcp_measured + 1];
        SocketAddrV4::new(service.vip, service.port)
    }

    fn is_measured(&self, index: usize) -> bool {
        index == self.tcp_measured || index == self.tcp_measured + 1
    }

    /// One `List` with each Service followed by its EndpointSlice.
    pub fn write_kube_yaml(&self, path: &Path) {
        write_lines(path, |out| {
            out.push_str(kube_yaml::LIST_START);
            for (i, s) in self.services.iter().enumerate() {
                let endpoints = [(s.endpoints[0], 0), (s.endpoints[1], 1)];
                kube_yaml::ServiceItem {
                    index: i as u32,
                    namespace: &s.namespace,
                    name: &s.name,
                    vip: s.vip,
                    port_name: s.port_name,
                    port: s.port,
                    protocol: s.protocol.upper(),
                    target_port: s.target_port,
                    endpoints: &endpoints,
                }
                .write(out);
            }
            out.push_str(kube_yaml::LIST_END);
        });
    }

    /// kube-proxy's iptables mode for these services, as one
    /// `iptables-restore --noflush` input: its filter and nat chains, one
    /// KUBE-SERVICES rule per service port, a KUBE-SVC chain per service
    /// choosing a KUBE-SEP chain per endpoint with `statistic` rules, and
    /// the DNAT in the KUBE-SEP chain. kube-proxy adds the jumps from the
    /// built-in chains with separate `iptables -I` calls; here they are in
    /// the same input.
    pub fn write_iptables(&self, path: &Path) {
        write_lines(path, |out| {
            iptables_start(out);
            for s in &self.services {
                let _ = writeln!(out, ":{} - [0:0]", svc_chain(s));
                for e in 0..s.endpoints.len() {
                    let _ = writeln!(out, ":{} - [0:0]", sep_chain(s, e));
                }
            }
            iptables_nat_base(out);
            for s in &self.services {
                let (port_name, proto) = (s.port_name(), s.protocol.lower());
                let _ = writeln!(
                    out,
                    "-A KUBE-SERVICES -m comment --comment \"{port_name} cluster IP\" -m {proto} -p {proto} -d {}/32 \
                     --dport {} -j {}",
                    s.vip,
                    s.port,
                    svc_chain(s)
                );
            }
            out.push_str(
                "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule \
                 in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
            );
            for s in &self.services {
                let (port_name, proto, svc) = (s.port_name(), s.protocol.lower(), svc_chain(s));
                let _ = writeln!(
                    out,
                    "-A {svc} -m comment --comment \"{port_name} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} \
                     ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
                    s.vip, s.port
                );
                let count = s.endpoints.len();
                for e in 0..count {
                    // The first of n endpoints is taken with probability 1/n,
                    // the next with 1/(n-1) of the rest, ..., the last always.
                    let statistic = if e + 1 < count {
                        format!(" -m statistic --mode random --probability {:.11}", 1.0 / (count - e) as f64)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        out,
                        "-A {svc} -m comment --comment \"{port_name} -> {}\"{statistic} -j {}",
                        s.endpoint(e),
                        sep_chain(s, e)
                    );
                }
                for e in 0..count {
                    let sep = sep_chain(s, e);
                    let _ = writeln!(
                        out,
                        "-A {sep} -m comment --comment {port_name} -s {}/32 -j KUBE-MARK-MASQ\n\
                         -A {sep} -m comment --comment {port_name} -m {proto} -p {proto} -j DNAT --to-destination {}",
                        s.endpoints[e],
                        s.endpoint(e)
                    );
                }
            }
            out.push_str("COMMIT\n");
        });
    }

    /// kube-proxy's nftables mode for these services, as one `nft -f` input
    /// in the order its first sync sends it: the `kube-proxy` table, base
    /// chains and their jumps, the verdict maps, and per service a chain
    /// that picks an endpoint chain with `numgen random mod N vmap`, each
    /// endpoint chain doing the `dnat`, and the `service-ips` element
    /// (`VIP . proto . port : goto` the service chain).
    ///
    /// `simplified` gives every service but the measured two a plain `goto`
    /// to its first endpoint chain instead of the numgen map: each such map
    /// is an anonymous set, and the kernel names a new anonymous set by
    /// scanning all of the table's sets, so kube-proxy's input takes time
    /// quadratic in the number of services (see bench/RESULTS.md). The
    /// measured services' packets take exactly kube-proxy's path either way.
    pub fn write_nft(&self, path: &Path, simplified: bool) {
        write_lines(path, |out| {
            nft_base(out);
            for (i, s) in self.services.iter().enumerate() {
                let (proto, svc) = (s.protocol.lower(), nft_chain("service", &nft_service_base(s)));
                let endpoint_chains: Vec<String> = (0..s.endpoints.len())
                    .map(|e| {
                        let e_port = s.endpoint(e);
                        nft_chain(
                            "endpoint",
                            &format!("{}__{}/{}", nft_service_base(s), e_port.ip(), e_port.port()),
                        )
                    })
                    .collect();
                for chain in endpoint_chains.iter().chain([&svc]) {
                    let _ =
                        writeln!(out, "add chain ip kube-proxy {chain}\nflush chain ip kube-proxy {chain}");
                }
                let _ = writeln!(
                    out,
                    "add element ip kube-proxy service-ips {{ {} . {proto} . {} : goto {svc} }}\n\
                     add rule ip kube-proxy {svc} ip daddr {} {proto} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
                    s.vip, s.port, s.vip, s.port
                );
                if simplified && !self.is_measured(i) {
                    let _ = writeln!(out, "add rule ip kube-proxy {svc} goto {}", endpoint_chains[0]);
                } else {
                    let choices: Vec<String> = endpoint_chains
                        .iter()
                        .enumerate()
                        .map(|(e, chain)| format!("{e} : goto {chain}"))
                        .collect();
                    let _ = writeln!(
                        out,
                        "add rule ip kube-proxy {svc} numgen random mod {} vmap {{ {} }}",
                        endpoint_chains.len(),
                        choices.join(" , ")
                    );
                }
                for (e, chain) in endpoint_chains.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "add rule ip kube-proxy {chain} ip saddr {} jump mark-for-masquerade\n\
                         add rule ip kube-proxy {chain} meta l4proto {proto} dnat to {}",
                        s.endpoints[e],
                        s.endpoint(e)
                    );
                }
            }
        });
    }
}

/// The start of kube-proxy's iptables input: the filter table, its
/// chains and jumps, then the nat table's own chains (its service chains
/// follow, declared by the caller).
pub fn iptables_start(out: &mut String) {
    out.push_str(
        "*filter\n:KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n\
         :KUBE-FORWARD - [0:0]\n:KUBE-NODEPORTS - [0:0]\n",
    );
    for chain in ["INPUT", "FORWARD", "OUTPUT"] {
        let _ = writeln!(
            out,
            "-A {chain} -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" \
             -j KUBE-PROXY-FIREWALL"
        );
    }
    out.push_str(
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
         -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
    );
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]"
    );
}

/// kube-proxy's nat jumps from the built-in chains, masquerading and
/// KUBE-MARK-MASQ, after the service chains are declared.
pub fn iptables_nat_base(out: &mut String) {
    let _ = writeln!(
        out,
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"
    );
}

/// kube-proxy's nftables table before any service: base chains, jumps,
/// masquerading, the verdict maps and the rules that look them up.
pub fn nft_base(out: &mut String) {
    out.push_str("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n");
    // kube-proxy's priorities: filter at dstnat - 10, then DNAT, SNAT.
    let base = [
        ("filter-prerouting", "filter", "prerouting", -110),
        ("filter-input", "filter", "input", -110),
        ("filter-forward", "filter", "forward", -110),
        ("filter-output", "filter", "output", -110),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
    ];
    for (name, kind, hook, priority) in base {
        let _ = writeln!(
            out,
            "add chain ip kube-proxy {name} {{ type {kind} hook {hook} priority {priority} ; }}\n\
             flush chain ip kube-proxy {name}"
        );
    }
    let jumps = [
        ("endpoints-check", "filter-input", "ct state new "),
        ("endpoints-check", "filter-forward", "ct state new "),
        ("endpoints-check", "filter-output", "ct state new "),
        ("firewall-check", "filter-prerouting", "ct state new "),
        ("firewall-check", "filter-output", "ct state new "),
        ("services", "nat-output", ""),
        ("services", "nat-prerouting", ""),
        ("masquerading", "nat-postrouting", ""),
    ];
    for (to, from, condition) in jumps {
        let _ = writeln!(
            out,
            "add chain ip kube-proxy {to}\nflush chain ip kube-proxy {to}\n\
             add rule ip kube-proxy {from} {condition}jump {to}"
        );
    }
    let _ = writeln!(
        out,
        "add chain ip kube-proxy mark-for-masquerade\nflush chain ip kube-proxy mark-for-masquerade\n\
         add rule ip kube-proxy mark-for-masquerade mark set mark or {MASQ_MARK}\n\
         add rule ip kube-proxy masquerading mark and {MASQ_MARK} == 0 return\n\
         add rule ip kube-proxy masquerading mark set mark xor {MASQ_MARK}\n\
         add rule ip kube-proxy masquerading masquerade fully-random"
    );
    let maps = [
        ("no-endpoint-services", "ipv4_addr . inet_proto . inet_service"),
        ("no-endpoint-nodeports", "inet_proto . inet_service"),
        ("firewall-ips", "ipv4_addr . inet_proto . inet_service"),
        ("service-ips", "ipv4_addr . inet_proto . inet_service"),
        ("service-nodeports", "inet_proto . inet_service"),
    ];
    for (name, key) in maps {
        let _ = writeln!(
            out,
            "add map ip kube-proxy {name} {{ type {key} : verdict ; }}\nflush map ip kube-proxy {name}"
        );
    }
    out.push_str(
        "add chain ip kube-proxy reject-chain\nflush chain ip kube-proxy reject-chain\n\
         add rule ip kube-proxy reject-chain reject\n\
         add rule ip kube-proxy endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\
         add rule ip kube-proxy endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n",
    );
}

/// Service i's cluster IP: 198.18.0.1 on, within 198.18.0.0/15.
fn vip(index: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + index as u32)
}

/// Chain names in kube-proxy's shape: a prefix and 16 characters of a hash
/// of what the chain stands for (kube-proxy hashes with SHA-256 and base32;
/// any stable hash does here).
fn svc_chain(s: &Service) -> String {
    format!("KUBE-SVC-{:016X}", xxh3_64(format!("{}{}", s.port_name(), s.protocol.lower()).as_bytes()))
}

fn sep_chain(s: &Service, endpoint: usize) -> String {
    let key = format!("{}{}{}", s.port_name(), s.protocol.lower(), s.endpoint(endpoint));
    format!("KUBE-SEP-{:016X}", xxh3_64(key.as_bytes()))
}

/// `namespace/name/proto/port-name`, the readable part of nftables chain names.
fn nft_service_base(s: &Service) -> String {
    format!("{}/{}/{}/{}", s.namespace, s.name, s.protocol.lower(), s.port_name)
}

/// `PREFIX-HASH8-base`, like kube-proxy's nftables chain names.
fn nft_chain(prefix: &str, base: &str) -> String {
    format!("{prefix}-{:08X}-{base}", xxh3_64(base.as_bytes()) as u32)
}

/// Writes the text `fill` makes to `path`.
fn write_lines(path: &Path, fill: impl FnOnce(&mut String)) {
    let mut text = String::new();
    fill(&mut text);
    let mut out = BufWriter::new(File::create(path).expect("create a rules file"));
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).expect("write a rules file");
}
