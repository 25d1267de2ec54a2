//! The node-port services every mechanism is given, and their three
//! renderings: Kubernetes YAML for `balctl sync --node-name node-a`, and
//! kube-proxy's node-port rules in its iptables mode (`iptables-restore`)
//! and its nftables mode (`nft -f`), externalTrafficPolicy Cluster.
//!
//! N services of type NodePort (at least two), node ports 20000 + i (a
//! `--service-node-port-range` of 20000-30000: the default 30000-32767
//! holds 2,768 ports). Two in the middle of the list are measured: `web-a`,
//! whose one endpoint is pod A on node A, and `web-b`, whose one endpoint
//! is pod B on node B, each with a TCP and a UDP port on its node port.
//! Every other service has two endpoints, one per node, on addresses where
//! no pod listens (192.0.2.11 and 192.0.2.131, a port each). The middle is
//! where iptables' linear KUBE-SERVICES and KUBE-NODEPORTS walks meet a
//! service on average; nftables and balctl look it up by hash.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use xxhash_rust::xxh3::xxh3_64;

use crate::{
    cluster,
    support::nodes::{NODE_A, NODE_A_INNER, POD_A, POD_B},
};

const FIRST_NODE_PORT: u16 = 20_000;
/// What kube-proxy's local-traffic detector is given as the pod CIDR: both
/// nodes' pods (support/nodes.rs). The client is outside it.
const POD_CIDR: &str = "192.0.2.0/24";
/// The pods' servers' port, TCP and UDP.
pub const POD_PORT: u16 = 8080;

struct Service {
    name: String,
    namespace: String,
    cluster_ip: Ipv4Addr,
    node_port: u16,
    target_port: u16,
    /// Each endpoint's address and node.
    endpoints: Vec<(Ipv4Addr, &'static str)>,
    /// Whether it has a UDP port beside its TCP port.
    udp: bool,
}

impl Service {
    fn protocols(&self) -> &'static [&'static str] {
        if self.udp { &["tcp", "udp"] } else { &["tcp"] }
    }

    /// kube-proxy's `namespace/name:port` of the port of `protocol`.
    fn port_name(&self, protocol: &str) -> String {
        format!("{}/{}:{protocol}", self.namespace, self.name)
    }
}

pub struct Services {
    services: Vec<Service>,
    /// The index of `web-a`; `web-b` follows it.
    measured: usize,
}

impl Services {
    pub fn new(size: u32) -> Self {
        let count = size.max(2) as usize;
        let measured = (count - 1) / 2;
        let services = (0..count)
            .map(|i| {
                let (name, endpoints, target_port, udp) = match i.checked_sub(measured) {
                    Some(0) => ("web-a".to_owned(), vec![(ip(POD_A), "node-a")], POD_PORT, true),
                    Some(1) => ("web-b".to_owned(), vec![(ip(POD_B), "node-b")], POD_PORT, true),
                    _ => (
                        format!("svc-{i}"),
                        vec![
                            (Ipv4Addr::new(192, 0, 2, 11), "node-a"),
                            (Ipv4Addr::new(192, 0, 2, 131), "node-b"),
                        ],
                        1024 + i as u16,
                        false,
                    ),
                };
                Service {
                    name,
                    namespace: format!("ns-{}", i % 100),
                    cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i as u32),
                    node_port: FIRST_NODE_PORT + i as u16,
                    target_port,
                    endpoints,
                    udp,
                }
            })
            .collect();
        Self { services, measured }
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Node A's node port for the pod on node A (`local`) or on node B.
    pub fn node_port(&self, local: bool) -> SocketAddrV4 {
        let service = &self.services[self.measured + usize::from(!local)];
        SocketAddrV4::new(ip(NODE_A), service.node_port)
    }

    /// Node A and the services, as `kubectl get -o yaml` would print them
    /// (one document each; the fields balctl reads).
    pub fn write_kube_yaml(&self, path: &Path) {
        let mut out = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nstatus:\n  addresses:\n  \
             - {{address: {NODE_A}, type: ExternalIP}}\n  - {{address: {NODE_A_INNER}, type: InternalIP}}\n"
        );
        for s in &self.services {
            let ports: Vec<String> = s
                .protocols()
                .iter()
                .map(|p| {
                    format!(
                        "{{name: {p}, protocol: {}, port: 80, nodePort: {}, targetPort: {}}}",
                        p.to_uppercase(),
                        s.node_port,
                        s.target_port
                    )
                })
                .collect();
            let slice_ports: Vec<String> = s
                .protocols()
                .iter()
                .map(|p| format!("{{name: {p}, port: {}, protocol: {}}}", s.target_port, p.to_uppercase()))
                .collect();
            let endpoints: String = s
                .endpoints
                .iter()
                .map(|(address, node)| format!("- {{addresses: [{address}], nodeName: {node}}}\n"))
                .collect();
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  \
                 type: NodePort\n  clusterIP: {ip}\n  externalTrafficPolicy: Cluster\n  ports: [{ports}]\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
                 namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\n\
                 endpoints:\n{endpoints}ports: [{slice_ports}]\n",
                name = s.name,
                ns = s.namespace,
                ip = s.cluster_ip,
                ports = ports.join(", "),
                slice_ports = slice_ports.join(", "),
            );
        }
        fs::write(path, out).expect("write the services' YAML");
    }

    /// kube-proxy's iptables mode: per service port a cluster-IP rule in
    /// KUBE-SERVICES (walked first: a node-port packet passes every one
    /// before KUBE-SERVICES' last rule sends it to KUBE-NODEPORTS), a
    /// KUBE-NODEPORTS rule to its KUBE-EXT chain, which marks every packet
    /// for masquerade (externalTrafficPolicy Cluster) and goes on to the
    /// KUBE-SVC chain, a KUBE-SEP chain per endpoint with the DNAT.
    pub fn write_iptables(&self, path: &Path) {
        let mut out = String::new();
        cluster::iptables_start(&mut out);
        for s in &self.services {
            for protocol in s.protocols() {
                for chain in ["KUBE-SVC", "KUBE-EXT"] {
                    let _ = writeln!(out, ":{} - [0:0]", chain_name(chain, s, protocol, ""));
                }
                for (address, _) in &s.endpoints {
                    let _ = writeln!(out, ":{} - [0:0]", sep_chain(s, protocol, *address));
                }
            }
        }
        cluster::iptables_nat_base(&mut out);
        for s in &self.services {
            for protocol in s.protocols() {
                let _ = writeln!(
                    out,
                    "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {protocol} -p {protocol} -d {}/32 \
                     --dport 80 -j {}",
                    s.port_name(protocol),
                    s.cluster_ip,
                    chain_name("KUBE-SVC", s, protocol, "")
                );
            }
        }
        out.push_str(
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule \
             in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
        );
        for s in &self.services {
            for protocol in s.protocols() {
                let port_name = s.port_name(protocol);
                let (svc, ext) =
                    (chain_name("KUBE-SVC", s, protocol, ""), chain_name("KUBE-EXT", s, protocol, ""));
                let _ = writeln!(
                    out,
                    "-A KUBE-NODEPORTS -m comment --comment {port_name} -m {protocol} -p {protocol} --dport {np} -j {ext}\n\
                     -A {ext} -m comment --comment \"masquerade traffic for {port_name} external destinations\" \
                     -j KUBE-MARK-MASQ\n-A {ext} -j {svc}\n\
                     -A {svc} -m comment --comment \"{port_name} cluster IP\" -m {protocol} -p {protocol} -d {ip}/32 \
                     --dport 80 ! -s {POD_CIDR} -j KUBE-MARK-MASQ",
                    np = s.node_port,
                    ip = s.cluster_ip,
                );
                let count = s.endpoints.len();
                for (e, (address, _)) in s.endpoints.iter().enumerate() {
                    // The first of n endpoints is taken with probability 1/n,
                    // the next with 1/(n-1) of the rest, ..., the last always.
                    let statistic = if e + 1 < count {
                        format!(" -m statistic --mode random --probability {:.11}", 1.0 / (count - e) as f64)
                    } else {
                        String::new()
                    };
                    let sep = sep_chain(s, protocol, *address);
                    let _ = writeln!(
                        out,
                        "-A {svc} -m comment --comment \"{port_name} -> {address}:{tp}\"{statistic} -j {sep}\n\
                         -A {sep} -m comment --comment {port_name} -s {address}/32 -j KUBE-MARK-MASQ\n\
                         -A {sep} -m comment --comment {port_name} -m {protocol} -p {protocol} \
                         -j DNAT --to-destination {address}:{tp}",
                        tp = s.target_port,
                    );
                }
            }
        }
        out.push_str("COMMIT\n");
        fs::write(path, out).expect("write the iptables rules");
    }

    /// kube-proxy's nftables mode: per service port its `service-ips` and
    /// `service-nodeports` elements, an `external-` chain (mark for
    /// masquerade, go to the service chain), the service chain choosing an
    /// endpoint chain with `numgen random mod N vmap`, and the endpoint
    /// chains' `dnat`.
    pub fn write_nft(&self, path: &Path) {
        let mut out = String::new();
        cluster::nft_base(&mut out);
        for s in &self.services {
            for protocol in s.protocols() {
                let base = format!("{}/{}/{protocol}/{protocol}", s.namespace, s.name);
                let (svc, ext) = (nft_chain("service", &base), nft_chain("external", &base));
                let endpoints: Vec<String> = s
                    .endpoints
                    .iter()
                    .map(|(address, _)| {
                        nft_chain("endpoint", &format!("{base}__{address}/{}", s.target_port))
                    })
                    .collect();
                for chain in endpoints.iter().chain([&svc, &ext]) {
                    let _ =
                        writeln!(out, "add chain ip kube-proxy {chain}\nflush chain ip kube-proxy {chain}");
                }
                let choices: Vec<String> =
                    endpoints.iter().enumerate().map(|(e, chain)| format!("{e} : goto {chain}")).collect();
                let _ = writeln!(
                    out,
                    "add element ip kube-proxy service-ips {{ {ip} . {protocol} . 80 : goto {svc} }}\n\
                     add element ip kube-proxy service-nodeports {{ {protocol} . {np} : goto {ext} }}\n\
                     add rule ip kube-proxy {ext} jump mark-for-masquerade\n\
                     add rule ip kube-proxy {ext} goto {svc}\n\
                     add rule ip kube-proxy {svc} ip daddr {ip} {protocol} dport 80 ip saddr != {POD_CIDR} \
                     jump mark-for-masquerade\n\
                     add rule ip kube-proxy {svc} numgen random mod {n} vmap {{ {choices} }}",
                    ip = s.cluster_ip,
                    np = s.node_port,
                    n = endpoints.len(),
                    choices = choices.join(" , "),
                );
                for ((address, _), chain) in s.endpoints.iter().zip(&endpoints) {
                    let _ = writeln!(
                        out,
                        "add rule ip kube-proxy {chain} ip saddr {address} jump mark-for-masquerade\n\
                         add rule ip kube-proxy {chain} meta l4proto {protocol} dnat to {address}:{}",
                        s.target_port
                    );
                }
            }
        }
        fs::write(path, out).expect("write the nftables rules");
    }
}

fn ip(address: &str) -> Ipv4Addr {
    address.parse().expect("an IPv4 address")
}

/// `PREFIX-` and 16 characters of a hash of what the chain stands for, as
/// kube-proxy names its chains (it hashes with SHA-256 and base32).
fn chain_name(prefix: &str, s: &Service, protocol: &str, more: &str) -> String {
    format!("{prefix}-{:016X}", xxh3_64(format!("{}{protocol}{more}", s.port_name(protocol)).as_bytes()))
}

fn sep_chain(s: &Service, protocol: &str, address: Ipv4Addr) -> String {
    chain_name("KUBE-SEP", s, protocol, &format!("{address}:{}", s.target_port))
}

/// `PREFIX-HASH8-base`, like kube-proxy's nftables chain names.
fn nft_chain(prefix: &str, base: &str) -> String {
    format!("{prefix}-{:08X}-{base}", xxh3_64(format!("{prefix}{base}").as_bytes()) as u32)
}
