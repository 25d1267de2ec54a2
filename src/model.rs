//! What users describe: frontends, backends and the policies that tie them
//! together, with the validation that turns bad input into an error naming
//! the field; and the objects `sync` applies, as the inputs produce them and
//! the state records them.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use balctl_common::{
    IPPROTO_TCP, IPPROTO_UDP, SCOPE_BALANCING, SCOPE_EXTERNAL, SCOPE_REDIRECT, SCOPE_SERVICE,
};
use serde::{Deserialize, Serialize};

pub mod health;

pub use self::health::{BackendCheck, Probe, RuleHealth, Standing, WhenAllUnhealthy};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn ip_proto(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
        }
    }

    pub const fn from_ip_proto(proto: u8) -> Option<Self> {
        match proto {
            IPPROTO_TCP => Some(Self::Tcp),
            IPPROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(format!("unknown protocol `{s}` (expected tcp or udp)")),
        }
    }
}

/// Which rule layer a frontend entry belongs to. One address can have an
/// entry in each; connections use the LocalRedirectPolicy's, else the
/// BalancingPolicy's, else the Service's (each gives way to the next when it
/// has no backend, or a redirect is over its rate limit). `External` is
/// apart: the entry packets from outside the node use (node ports,
/// load-balancer and external IPs, with externalTrafficPolicy's backends),
/// read by the packet programs only, never by sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Service,
    Balancing,
    Redirect,
    External,
}

impl Scope {
    pub const fn raw(self) -> u8 {
        match self {
            Self::Service => SCOPE_SERVICE,
            Self::Balancing => SCOPE_BALANCING,
            Self::Redirect => SCOPE_REDIRECT,
            Self::External => SCOPE_EXTERNAL,
        }
    }

    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            SCOPE_SERVICE => Some(Self::Service),
            SCOPE_BALANCING => Some(Self::Balancing),
            SCOPE_REDIRECT => Some(Self::Redirect),
            SCOPE_EXTERNAL => Some(Self::External),
            _ => None,
        }
    }
}

/// Which address of a Service a frontend is, as Kubernetes names them (the
/// TYPE `balctl dump` shows): its cluster IP, a node port (on the node
/// addresses), a load-balancer ingress IP or an external IP. A state
/// file's service addresses are cluster IPs: reachable only through balctl.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddressKind {
    #[default]
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    NodePort,
    LoadBalancer,
    #[serde(rename = "ExternalIP")]
    ExternalIp,
}

impl AddressKind {
    /// kubectl's spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalIp => "ExternalIP",
        }
    }
}

/// The two policy kinds, from Kubernetes or from state files.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PolicyKind {
    LocalRedirect,
    Balancing,
}

impl PolicyKind {
    /// The rule layer its frontends take.
    pub const fn scope(self) -> Scope {
        match self {
            Self::LocalRedirect => Scope::Redirect,
            Self::Balancing => Scope::Balancing,
        }
    }

    /// How `dump` and `trace` name its synced objects: `KIND/NAMESPACE/NAME`
    /// from Kubernetes, `KIND/NAME` from a state file.
    pub const fn owner_prefix(self) -> &'static str {
        match self {
            Self::LocalRedirect => "localredirectpolicy",
            Self::Balancing => "balancingpolicy",
        }
    }
}

/// An address clients connect to: IP, port and protocol, and the rule layer
/// of the entry (a Service's, unless a policy's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Frontend {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub scope: Scope,
}

impl Frontend {
    pub const fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

/// `IP:PORT/PROTO`, and `@balancing` or `@redirect` for a policy's entry,
/// `@external` for the entry of traffic from outside the node.
impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.socket_addr(), self.protocol)?;
        match self.scope {
            Scope::Service => Ok(()),
            Scope::Balancing => f.write_str("@balancing"),
            Scope::Redirect => f.write_str("@redirect"),
            Scope::External => f.write_str("@external"),
        }
    }
}

/// Parses `IP:PORT[/tcp|udp]` (IPv6 in brackets); the protocol defaults to tcp.
impl FromStr for Frontend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, protocol) = match s.rsplit_once('/') {
            Some((addr, proto)) => (addr, proto.parse()?),
            None => (s, Protocol::Tcp),
        };
        let addr = parse_socket_addr(addr)?;
        check_address(addr.ip())?;
        Ok(Self { address: addr.ip(), port: addr.port(), protocol, scope: Scope::Service })
    }
}

/// Parses `IP:PORT` with the port checked to be 1-65535, so the message says
/// which part is wrong.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    let (ip, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not IP:PORT (write IPv6 addresses as [IP]:PORT)"))?;
    let ip_text = ip.strip_prefix('[').and_then(|ip| ip.strip_suffix(']')).unwrap_or(ip);
    let ip: IpAddr = ip_text.parse().map_err(|_| format!("`{ip_text}` is not a valid IP address"))?;
    let port: u32 = port.parse().map_err(|_| format!("port `{port}` is not a number"))?;
    let port = match u16::try_from(port) {
        Ok(0) => return Err("port 0 is not allowed (ports are 1-65535)".into()),
        Ok(port) => port,
        Err(_) => return Err(format!("port {port} is out of range (ports are 1-65535)")),
    };
    Ok(SocketAddr::new(ip.to_canonical(), port))
}

/// Addresses that can never be a real peer. A v4-mapped IPv6 address is
/// checked as the IPv4 address it stands for, which is what the maps get.
pub fn check_address(ip: IpAddr) -> Result<(), String> {
    let canonical = ip.to_canonical();
    if canonical.is_unspecified() {
        return Err(format!("{ip} is the unspecified address"));
    }
    if canonical.is_multicast() {
        return Err(format!("{ip} is a multicast address"));
    }
    Ok(())
}

/// A backend address as given on the command line (`IP:PORT`).
pub fn parse_backend(s: &str) -> Result<SocketAddr, String> {
    let addr = parse_socket_addr(s)?;
    check_address(addr.ip())?;
    Ok(addr)
}

/// The longest affinity timeout Kubernetes accepts (one day).
pub const MAX_AFFINITY_SECONDS: u32 = 86_400;

pub fn parse_affinity(s: &str) -> Result<u32, String> {
    let seconds: u32 = s.parse().map_err(|_| format!("`{s}` is not a whole number of seconds"))?;
    if seconds == 0 || seconds > MAX_AFFINITY_SECONDS {
        return Err(format!("{seconds} is out of range (1-{MAX_AFFINITY_SECONDS} seconds)"));
    }
    Ok(seconds)
}

/// Kubernetes object-name rules (RFC 1123 subdomain), so a policy can later
/// be mirrored as an object of the same name.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid_chars =
        name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let valid_ends = name
        .bytes()
        .next()
        .zip(name.bytes().last())
        .is_some_and(|(first, last)| first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric());
    if name.len() > 253 || !valid_chars || !valid_ends {
        return Err(format!(
            "`{}` is not a valid name (lowercase letters, digits, '-' and '.', \
             starting and ending with a letter or digit, at most 253 characters)",
            crate::error::excerpt(name)
        ));
    }
    Ok(())
}

/// One frontend balanced over backends: what every kind of rule (policies,
/// synced services) compiles to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendRule {
    pub frontend: Frontend,
    /// Backend addresses; they use the frontend's protocol.
    pub backends: Vec<SocketAddr>,
    /// Those of `backends` that run on this node (an EndpointSlice
    /// endpoint's `nodeName` is this node), sorted: external traffic to
    /// them is only DNATed, to the others also SNATed. Whether a backend
    /// is local is part of what it is (`image::BackendAddr`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_backends: Vec<SocketAddr>,
    /// Session affinity timeout in seconds, when clients stick to a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_seconds: Option<u32>,
    /// The backends are this node's only (Kubernetes `internalTrafficPolicy:
    /// Local`): with none, the datapath reports "no local backend".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local_only: bool,
    /// Connections a second this frontend takes; above it they fall back to
    /// the next scope (LocalRedirectPolicy only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Which address of its Service the frontend is; a policy's frontend
    /// keeps the default (its scope says what it is). Not part of a
    /// policy's JSON: `policy` rules are never Services.
    #[serde(skip)]
    pub address_kind: AddressKind,
    /// How an external frontend (scope `External`) balances packets from
    /// outside; the other scopes ignore it. Not part of a policy's JSON
    /// either.
    #[serde(skip)]
    pub external: ExternalBalancing,
    /// The backends' health check, and those that fail it now
    /// (`model::health`): only address backends (state files, policies)
    /// have one. Boxed: most rules have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Box<RuleHealth>>,
    /// Each backend's weight (1-`MAX_WEIGHT`), in the order of `backends`:
    /// it has as many slots (`slots`). Empty: every weight is 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<u16>,
    /// A new connection of a socket goes to the backend with the fewest
    /// live connections (`balctl_common::SERVICE_FLAG_LEAST_CONNECTIONS`)
    /// rather than a random one. Socket frontends only: packets from
    /// outside keep `external`'s algorithm.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub least_connections: bool,
}

/// The largest backend weight inputs may give.
pub const MAX_WEIGHT: u16 = 100;

/// `balancing.elf.io/lb-algorithm`'s and `lb_algorithm`'s value for socket
/// frontends that choose by live connections (`least_connections`).
pub const LEAST_CONNECTIONS: &str = "least-connections";

/// The weights of the backend `addresses` of one family (IPv4 or not), in
/// their order: a rule's backends are those of its frontend's family.
/// Empty without weights.
pub fn weights_of_family(
    addresses: impl IntoIterator<Item = IpAddr>,
    weights: &[u16],
    ipv4: bool,
) -> Vec<u16> {
    (addresses.into_iter().zip(weights))
        .filter(|(address, _)| address.to_canonical().is_ipv4() == ipv4)
        .map(|(_, &weight)| weight)
        .collect()
}

/// Checks a list of weights given for `backends` backends.
pub fn check_weights(weights: &[u64], backends: usize) -> Result<Vec<u16>, String> {
    if weights.len() != backends {
        return Err(format!(
            "{} weights for {backends} backends: give one weight per backend, in their order",
            weights.len()
        ));
    }
    weights
        .iter()
        .map(|&weight| match u16::try_from(weight) {
            Ok(weight) if (1..=MAX_WEIGHT).contains(&weight) => Ok(weight),
            _ => Err(format!("weight {weight} is out of range (1-{MAX_WEIGHT})")),
        })
        .collect()
}

/// How the entry of an external frontend (scope `External`) chooses the
/// backend of a new flow from outside the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalBalancing {
    pub algorithm: LbAlgorithm,
    /// The Maglev table's size, a prime; None: `maglev::default_table_size`.
    pub maglev_table_size: Option<u32>,
    /// `loadBalancerSourceRanges` of a load-balancer IP's entry, of its
    /// family: packets from elsewhere are dropped. Empty: no restriction.
    pub source_ranges: Vec<Prefix>,
}

impl ExternalBalancing {
    /// What the external entry of `address` (a frontend of kind `kind`)
    /// gets: the source ranges apply to load-balancer IPs only, and only
    /// those of the address's family, as kube-proxy applies them (ranges
    /// of only the other family restrict nothing).
    pub fn for_frontend(&self, kind: AddressKind, address: IpAddr) -> Self {
        let source_ranges = match kind {
            AddressKind::LoadBalancer => (self.source_ranges.iter())
                .filter(|range| range.address.is_ipv4() == address.is_ipv4())
                .copied()
                .collect(),
            _ => Vec::new(),
        };
        Self { source_ranges, ..self.clone() }
    }
}

/// An address prefix (CIDR), as `loadBalancerSourceRanges` lists them:
/// its address with the host bits cleared, IPv4 as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The prefix of `address` of `len` bits (at most the family's).
    pub fn new(address: IpAddr, len: u8) -> Option<Self> {
        let address = address.to_canonical();
        let (bits, max) = match address {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        if len > max {
            return None;
        }
        let kept = bits & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        let address = match address {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from((kept >> 96) as u32)),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(kept)),
        };
        Some(Self { address, len })
    }

    /// Whether `address` (IPv4 as IPv4 or mapped) is in the prefix.
    pub fn contains(&self, address: IpAddr) -> bool {
        Self::new(address, self.len) == Some(*self)
    }

    /// The prefix length as the 16-byte (v4-mapped) addresses of the maps
    /// count it.
    pub fn mapped_len(&self) -> u8 {
        if self.address.is_ipv4() { self.len + 96 } else { self.len }
    }
}

/// `IP/LEN`, as Kubernetes writes CIDRs.
impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("`{}` is not a CIDR (IP/LENGTH)", crate::error::excerpt(s)))?;
        let ip: IpAddr =
            ip.parse().map_err(|_| format!("`{}` is not a valid IP address", crate::error::excerpt(ip)))?;
        let max = if ip.to_canonical().is_ipv4() { 32 } else { 128 };
        len.parse::<u8>().ok().and_then(|len| Self::new(ip, len)).ok_or_else(|| {
            format!("`{}` is not a prefix length of {ip} (0-{max})", crate::error::excerpt(len))
        })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

/// The node a sync translates for: its name decides which endpoints are
/// local, and `node_port_addresses` which of the Nodes' addresses serve
/// node ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThisNode {
    pub name: String,
    pub node_port_addresses: NodePortAddresses,
}

impl ThisNode {
    /// A node with node ports on every address.
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into(), node_port_addresses: NodePortAddresses::All }
    }
}

/// `--nodeport-addresses`, as kube-proxy's: which addresses of each Node
/// (its InternalIP and ExternalIP addresses) serve node ports, to this
/// node's sockets and to packets from outside.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every address (kube-proxy's iptables mode with the flag unset).
    #[default]
    All,
    /// `primary`: the Node's primary address of each family, its first
    /// InternalIP of the family, else its first ExternalIP of it
    /// (kube-proxy's `GetNodeHostIPs`).
    Primary,
    /// The addresses inside one of these CIDRs; every address of a family
    /// none of them is of (kube-proxy's per-family zero CIDR).
    Within(Vec<Prefix>),
}

impl NodePortAddresses {
    /// Which of a Node's `addresses` (InternalIP and ExternalIP, in its
    /// status's order) serve node ports; `internal_ips` are its InternalIPs.
    pub fn select(&self, addresses: &[IpAddr], internal_ips: &[IpAddr]) -> Vec<IpAddr> {
        match self {
            Self::All => addresses.to_vec(),
            Self::Within(prefixes) => addresses
                .iter()
                .copied()
                .filter(|&a| {
                    let mut of_family = Self::of_family(prefixes, a.to_canonical().is_ipv4()).peekable();
                    of_family.peek().is_none() || of_family.any(|p| p.contains(a))
                })
                .collect(),
            Self::Primary => [true, false]
                .into_iter()
                .filter_map(|v4| {
                    let of_family = |a: &&IpAddr| a.to_canonical().is_ipv4() == v4;
                    internal_ips.iter().find(of_family).or_else(|| addresses.iter().find(of_family)).copied()
                })
                .collect(),
        }
    }

    /// Whether node ports answer on IPv4 loopback (127.0.0.0/8), as in
    /// kube-proxy's iptables mode (`ContainsIPv4Loopback`): with every
    /// address, with no IPv4 CIDR (a family without CIDRs has all its
    /// addresses), or with an IPv4 CIDR of loopback or holding 127.0.0.0;
    /// never with `primary`.
    pub fn serve_loopback(&self) -> bool {
        let loopback_start = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0));
        match self {
            Self::All => true,
            Self::Primary => false,
            Self::Within(prefixes) => {
                let mut v4 = Self::of_family(prefixes, true).peekable();
                v4.peek().is_none() || v4.any(|p| p.address.is_loopback() || p.contains(loopback_start))
            }
        }
    }

    fn of_family(prefixes: &[Prefix], v4: bool) -> impl Iterator<Item = &Prefix> {
        prefixes.iter().filter(move |p| p.address.is_ipv4() == v4)
    }
}

/// `primary`, or CIDRs separated by commas.
impl FromStr for NodePortAddresses {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "primary" {
            return Ok(Self::Primary);
        }
        let prefixes = s
            .split(',')
            .map(|part| match part.trim() {
                "primary" => Err("`primary` cannot be combined with CIDRs".to_owned()),
                part => part.parse::<Prefix>(),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Within(prefixes))
    }
}

impl fmt::Display for NodePortAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Primary => f.write_str("primary"),
            Self::Within(prefixes) => {
                let shown: Vec<String> = prefixes.iter().map(Prefix::to_string).collect();
                f.write_str(&shown.join(","))
            }
        }
    }
}

/// The annotation that chooses `ExternalBalancing::algorithm`.
pub const LB_ALGORITHM_ANNOTATION: &str = "balancing.elf.io/lb-algorithm";
/// The annotation that sets `ExternalBalancing::maglev_table_size`.
pub const MAGLEV_TABLE_SIZE_ANNOTATION: &str = "balancing.elf.io/maglev-table-size";

/// `balancing.elf.io/lb-algorithm`, TOML `lb_algorithm`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbAlgorithm {
    /// Consistent hashing of the flow's 5-tuple (`maglev.rs`): every node
    /// behind ECMP picks the same backend, and a change of backends moves
    /// about 1/N of the flows.
    #[default]
    Maglev,
    /// A random slot.
    Random,
}

impl LbAlgorithm {
    pub const NAMES: [&str; 2] = ["maglev", "random"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "maglev" => Some(Self::Maglev),
            "random" => Some(Self::Random),
            _ => None,
        }
    }
}

/// Checks a configured Maglev table size: a prime (the permutations need
/// one), at most `maglev::MAX_TABLE_SIZE`. That it is at least the
/// number of backends is checked when the rule is compiled.
pub fn check_maglev_table_size(size: u64) -> Result<u32, String> {
    match u32::try_from(size) {
        Ok(size) if size <= crate::maglev::MAX_TABLE_SIZE && crate::maglev::is_prime(size) => Ok(size),
        _ => Err(format!(
            "maglev table size {size} is not a prime of at most {} (e.g. 251, 509, 1021, 16381, 65521)",
            crate::maglev::MAX_TABLE_SIZE
        )),
    }
}

impl FrontendRule {
    /// A ClusterIP rule from `frontend` (`IP:PORT[/udp]`) to `backends`
    /// and nothing else, for tests.
    #[cfg(test)]
    pub fn plain(frontend: &str, backends: &[&str]) -> Self {
        Self {
            frontend: frontend.parse().unwrap(),
            backends: backends.iter().map(|b| parse_backend(b).unwrap()).collect(),
            local_backends: Vec::new(),
            affinity_seconds: None,
            local_only: false,
            requests_per_second: None,
            address_kind: AddressKind::ClusterIp,
            external: ExternalBalancing::default(),
            health: None,
            weights: Vec::new(),
            least_connections: false,
        }
    }

    /// Whether `backend` runs on this node.
    pub fn is_local(&self, backend: &SocketAddr) -> bool {
        self.local_backends.binary_search(backend).is_ok()
    }

    /// What no single field can check: backend families against the
    /// frontend's, duplicates. Callers add where it was.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = HashSet::with_capacity(self.backends.len());
        for backend in &self.backends {
            if backend.is_ipv4() != self.frontend.address.is_ipv4() {
                return Err(format!(
                    "backend {backend} is not of the frontend's address family ({} is {}); \
                     a frontend's backends must use its address family",
                    self.frontend,
                    if self.frontend.address.is_ipv4() { "IPv4" } else { "IPv6" },
                ));
            }
            if !seen.insert(backend) {
                return Err(format!("backend {backend} is listed twice"));
            }
        }
        Ok(())
    }
}

/// A named rule created with `balctl policy add` (the BalancingPolicy
/// equivalent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    #[serde(flatten)]
    pub rule: FrontendRule,
}

impl Policy {
    /// Messages name the command-line flag at fault.
    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.name).map_err(|e| format!("invalid policy name: {e}"))?;
        self.rule.validate().map_err(|e| format!("invalid --backend: {e}"))
    }

    pub fn owner(&self) -> String {
        format!("policy/{}", self.name)
    }
}

/// An object applied by `balctl sync`, compiled to its frontend rules. A
/// sync replaces exactly the objects of the sources it reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedObject {
    /// The `-f` input it came from: an absolute path, or `-` for stdin.
    pub source: String,
    /// What it is, e.g. `service/web`; shown by `dump` and in errors.
    pub owner: String,
    #[serde(with = "rule_records")]
    pub rules: Vec<FrontendRule>,
    /// A Node's addresses, on which NodePort frontends answer.
    pub addresses: Vec<IpAddr>,
    /// Fingerprints of the input items it was translated from (a Service's
    /// own, then its EndpointSlices'), when nothing else went into it: a
    /// later sync whose input holds exactly these items again keeps the
    /// object without parsing them. Empty: always translated anew.
    pub inputs: Vec<Fingerprint>,
    /// A Service's health-check node port, served by `sync --watch`.
    /// Format 5 did not have it (`legacy::ADDED`).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// The objects other than its own items that its translation read
    /// (a Service reads this node's Node for its zone when its endpoints
    /// have topology hints): the object is kept only while each is as it
    /// was. Format 6 did not have it (`legacy::ADDED`).
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    /// A Service's endpoints that topology keeps from this node's clients
    /// (services.rs): no rule has them, yet they are still endpoints, so
    /// the sockets connected to them are not stale (stale_sockets.rs): a
    /// change of hints or of the node's zone never breaks a connection.
    /// Format 6 did not have it (`legacy::ADDED`).
    #[serde(default)]
    pub held_back: Vec<SocketAddr>,
}

/// An object a translation read, by the owner name its own synced object
/// has (`node/node-a`), with the fingerprint of the input item it was
/// read from; None when the input had no such object, which is read too:
/// one appearing changes the translation as much as one changing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dependency {
    pub owner: String,
    pub fingerprint: Option<Fingerprint>,
}

/// What a load balancer's health check of a Service asks this node
/// (kube-proxy's healthCheckNodePort, of a LoadBalancer Service with
/// externalTrafficPolicy Local): whether the node has endpoints of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    /// This node's ready endpoints of the Service, each `IP:port` once
    /// across its ports and families: what kube-proxy counts. Terminating
    /// ones do not count, though the datapath falls back to them, so that
    /// the load balancer drains a node whose endpoints are all going.
    pub local_endpoints: u32,
}

/// Identifies the text of one input item (a YAML document or `List` entry)
/// and everything else its translation depends on: an xxh3 128-bit hash.
pub type Fingerprint = u128;

/// Rules as tuples of their fields, the form the state file stores (in
/// synced objects, and in policies: `state::policy_records`). A rule's own
/// serde form is the `policy -o json` output, which flattens and leaves out
/// absent fields, neither of which a format that is not self-describing
/// (postcard, bincode before it) can read back.
pub mod rule_records {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{AddressKind, ExternalBalancing, Frontend, FrontendRule, RuleHealth, SocketAddr};

    /// A rule as stored: its fields in this order, one after another.
    #[derive(Serialize)]
    #[serde(rename = "Record")]
    pub struct RecordRef<'a> {
        frontend: &'a Frontend,
        backends: &'a [SocketAddr],
        affinity_seconds: Option<u32>,
        local_only: bool,
        requests_per_second: Option<u32>,
        address_kind: AddressKind,
        local_backends: &'a [SocketAddr],
        external: &'a ExternalBalancing,
        health: Option<&'a RuleHealth>,
        weights: &'a [u16],
        least_connections: bool,
    }

    /// What `RecordRef` wrote. Format 3 had no address kind, formats 3 and
    /// 4 no local backends or external balancing, formats before 11 no
    /// health check, weights or least connections: the legacy reader (`legacy::ADDED`) leaves them to
    /// their defaults.
    #[derive(Deserialize)]
    pub struct Record {
        frontend: Frontend,
        backends: Vec<SocketAddr>,
        affinity_seconds: Option<u32>,
        local_only: bool,
        requests_per_second: Option<u32>,
        #[serde(default)]
        address_kind: AddressKind,
        #[serde(default)]
        local_backends: Vec<SocketAddr>,
        #[serde(default)]
        external: ExternalBalancing,
        #[serde(default)]
        health: Option<Box<RuleHealth>>,
        #[serde(default)]
        weights: Vec<u16>,
        #[serde(default)]
        least_connections: bool,
    }

    pub fn record(rule: &FrontendRule) -> RecordRef<'_> {
        RecordRef {
            frontend: &rule.frontend,
            backends: &rule.backends,
            affinity_seconds: rule.affinity_seconds,
            local_only: rule.local_only,
            requests_per_second: rule.requests_per_second,
            address_kind: rule.address_kind,
            local_backends: &rule.local_backends,
            external: &rule.external,
            health: rule.health.as_deref(),
            weights: &rule.weights,
            least_connections: rule.least_connections,
        }
    }

    pub fn rule(record: Record) -> FrontendRule {
        let Record {
            frontend,
            backends,
            affinity_seconds,
            local_only,
            requests_per_second,
            address_kind,
            local_backends,
            external,
            health,
            weights,
            least_connections,
        } = record;
        FrontendRule {
            frontend,
            backends,
            local_backends,
            affinity_seconds,
            local_only,
            requests_per_second,
            address_kind,
            external,
            health,
            weights,
            least_connections,
        }
    }

    pub fn serialize<S: Serializer>(rules: &[FrontendRule], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(rules.iter().map(record))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<FrontendRule>, D::Error> {
        Ok(Vec::<Record>::deserialize(deserializer)?.into_iter().map(rule).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_parses_protocol_and_brackets() {
        let f: Frontend = "[2001:db8::10]:53/UDP".parse().unwrap();
        assert_eq!(f.to_string(), "[2001:db8::10]:53/udp");
        let f: Frontend = "198.18.0.1:80".parse().unwrap();
        assert_eq!(f.protocol, Protocol::Tcp);
    }

    #[test]
    fn bad_frontends_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Frontend>().unwrap_err();
        assert!(err("198.18.0.300:80").contains("not a valid IP address"));
        assert!(err("198.18.0.1:0").contains("port 0"));
        assert!(err("198.18.0.1:65536").contains("out of range"));
        assert!(err("198.18.0.1:80/sctp").contains("unknown protocol"));
        assert!(err("198.18.0.1").contains("not IP:PORT"));
        assert!(err("0.0.0.0:80").contains("unspecified"));
    }

    #[test]
    fn v4_mapped_addresses_are_checked_as_ipv4() {
        for (ip, problem) in [("::ffff:0.0.0.0", "unspecified"), ("::ffff:224.0.0.1", "multicast")] {
            let err = check_address(ip.parse().unwrap()).unwrap_err();
            assert!(err.starts_with(ip) && err.contains(problem), "{err}");
        }
        assert!(check_address("::ffff:192.0.2.1".parse().unwrap()).is_ok());
    }

    #[test]
    fn v4_mapped_backends_are_ipv4() {
        let addr = parse_backend("[::ffff:192.0.2.1]:80").unwrap();
        assert!(addr.is_ipv4());
    }

    #[test]
    fn prefixes_parse_clear_host_bits_and_refuse_nonsense() {
        let prefix = |s: &str| s.parse::<Prefix>();
        assert_eq!(prefix("203.0.113.7/24").unwrap().to_string(), "203.0.113.0/24");
        assert_eq!(prefix("::ffff:203.0.113.7/32").unwrap().to_string(), "203.0.113.7/32");
        assert_eq!(prefix("2001:db8::1/32").unwrap().to_string(), "2001:db8::/32");
        assert_eq!(prefix("0.0.0.0/0").unwrap().mapped_len(), 96);
        assert_eq!(prefix("::/0").unwrap().mapped_len(), 0);
        assert!(prefix("203.0.113.0/33").unwrap_err().contains("prefix length"));
        assert!(prefix("203.0.113.0").unwrap_err().contains("not a CIDR"));
        assert!(prefix("203.0.113/24").unwrap_err().contains("not a valid IP"));
    }

    #[test]
    fn nodeport_addresses_select_as_kube_proxy_does() {
        let ips = |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|s| s.parse().unwrap()).collect() };
        // Status order: an ExternalIP first, then InternalIPs of both families.
        let addresses = ips(&["198.51.100.7", "192.0.2.1", "192.0.2.9", "2001:db8::1"]);
        let internal = ips(&["192.0.2.1", "192.0.2.9", "2001:db8::1"]);
        let select = |flag: &str| flag.parse::<NodePortAddresses>().unwrap().select(&addresses, &internal);
        assert_eq!(NodePortAddresses::All.select(&addresses, &internal), addresses);
        assert_eq!(select("primary"), ips(&["192.0.2.1", "2001:db8::1"]));
        // A family without a CIDR keeps all its addresses.
        assert_eq!(select("192.0.2.0/29"), ips(&["192.0.2.1", "2001:db8::1"]));
        assert_eq!(select("2001:db8:1::/64"), ips(&["198.51.100.7", "192.0.2.1", "192.0.2.9"]));
        assert_eq!(select("192.0.2.8/29, 2001:db8::/64"), ips(&["192.0.2.9", "2001:db8::1"]));
        assert_eq!(select("203.0.113.0/24,2001:db8:1::/64"), ips(&[]));
        // Without an InternalIP of a family, its first ExternalIP is primary.
        assert_eq!(
            NodePortAddresses::Primary.select(&addresses, &internal[2..]),
            ips(&["198.51.100.7", "2001:db8::1"])
        );
        for bad in ["primary,192.0.2.0/24", "192.0.2.0/24,primary", "192.0.2.0/33", "node-a", ""] {
            assert!(bad.parse::<NodePortAddresses>().is_err(), "{bad}");
        }
        assert_eq!(
            "192.0.2.0/25,2001:db8::/64".parse::<NodePortAddresses>().unwrap().to_string(),
            "192.0.2.0/25,2001:db8::/64"
        );
    }

    #[test]
    fn nodeport_addresses_serve_loopback_as_kube_proxy_s_iptables_mode() {
        let serve = |flag: &str| flag.parse::<NodePortAddresses>().unwrap().serve_loopback();
        assert!(NodePortAddresses::All.serve_loopback());
        assert!(!NodePortAddresses::Primary.serve_loopback());
        assert!(!serve("192.0.2.0/25"));
        assert!(serve("192.0.2.0/25,127.0.0.0/8"));
        assert!(serve("127.0.0.1/32"), "a loopback CIDR");
        assert!(serve("64.0.0.0/2"), "a CIDR holding 127.0.0.0");
        assert!(serve("0.0.0.0/0"));
        assert!(serve("2001:db8::/64"), "no IPv4 CIDR: every IPv4 address");
        assert!(!serve("2001:db8::/64,192.0.2.0/25"));
    }

    #[test]
    fn prefixes_contain_their_family_s_addresses_only() {
        let (net, address) = (|s: &str| s.parse::<Prefix>().unwrap(), |s: &str| s.parse().unwrap());
        assert!(net("203.0.113.0/28").contains(address("203.0.113.15")));
        assert!(net("203.0.113.0/28").contains(address("::ffff:203.0.113.1")));
        assert!(!net("203.0.113.0/28").contains(address("203.0.113.16")));
        assert!(!net("203.0.113.0/28").contains(address("2001:db8::1")));
        assert!(net("2001:db8:3::/64").contains(address("2001:db8:3::1")));
        assert!(!net("2001:db8:3::/64").contains(address("2001:db8:4::1")));
        assert!(net("0.0.0.0/0").contains(address("192.0.2.1")));
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(check_name("kube-dns.v1").is_ok());
        assert!(check_name("Web").is_err());
        assert!(check_name("-web").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn policy_rejects_mixed_families_and_duplicates() {
        let policy = |backends: &[&str]| Policy {
            name: "web".into(),
            rule: FrontendRule::plain("198.18.0.1:80", backends),
        };
        assert!(policy(&["192.0.2.1:80", "192.0.2.2:80"]).validate().is_ok());
        assert!(policy(&["[2001:db8::1]:80"]).validate().unwrap_err().contains("address family"));
        assert!(policy(&["192.0.2.1:80", "192.0.2.1:80"]).validate().unwrap_err().contains("twice"));
    }
}
