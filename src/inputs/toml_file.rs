//! balctl's TOML state files: services and policies written by hand. The
//! schema is documented in docs/state-files.md, with an example of every
//! feature in examples/services.toml.
//!
//! ```toml
//! [[service]]
//! name = "web"                                  # unique in one sync
//! addresses = ["198.18.0.10", "2001:db8:5e::10"] # frontend IPs
//! backends = ["192.0.2.2", "2001:db8::2"]        # backend IPs
//! affinity_seconds = 10800                       # optional
//! ports = [{ port = 80, target_port = 8080, protocol = "tcp" }]
//!
//! [[local_redirect_policy]]                      # also [[balancing_policy]]
//! name = "node-local-web"
//! addresses = ["198.18.0.10"]
//! backends = ["192.0.2.9"]
//! requests_per_second = 100                      # local_redirect_policy only
//! ports = [{ port = 80, target_port = 8080 }]
//! ```
//!
//! Every address × port is a frontend (in the policy's layer for the two
//! policy tables); its backends are the backend IPs of the same family, at
//! the port's target port. A family without backends gives frontends that
//! refuse connections (a service's or a balancing policy's) or give way to
//! the next layer (a local redirect policy's).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Result;
use rustc_hash::FxHashSet as HashSet;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::{
    budget::EntryBudget,
    location::{LineIndex, Located, Location},
    toml_entries,
};
use crate::{
    error::excerpt,
    input,
    model::{
        AddressKind, BackendCheck, ExternalBalancing, Frontend, FrontendRule, HealthCheck, LEAST_CONNECTIONS,
        LbAlgorithm, MAX_AFFINITY_SECONDS, PolicyKind, Prefix, Protocol, RuleHealth, Scope, SyncedObject,
        WhenAllUnhealthy, check_address, check_maglev_table_size, check_name, check_weights,
        health::CheckSpec, weights_of_family,
    },
};

/// One entry of a state file (see toml_entries.rs), or what comes before
/// the first: a table is absent (`None`) unless the text defines it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    service: Option<Vec<Spanned<RuleTable>>>,
    local_redirect_policy: Option<Vec<Spanned<RuleTable>>>,
    balancing_policy: Option<Vec<Spanned<RuleTable>>>,
}

/// A `[[service]]`, `[[local_redirect_policy]]` or `[[balancing_policy]]`:
/// one shape for all three, as each is frontends balanced over backends;
/// the table decides the layer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleTable {
    name: Spanned<String>,
    addresses: Vec<Spanned<IpAddr>>,
    ports: Vec<Spanned<PortSpec>>,
    #[serde(default)]
    backends: Vec<Spanned<IpAddr>>,
    affinity_seconds: Option<Spanned<u32>>,
    requests_per_second: Option<Spanned<u32>>,
    /// North-south ([[service]] only): external IPs and load-balancer IPs,
    /// frontends for this node's sockets and for packets from outside.
    #[serde(default)]
    external_addresses: Vec<Spanned<IpAddr>>,
    #[serde(default)]
    load_balancer_addresses: Vec<Spanned<IpAddr>>,
    /// Which of `backends` run on this node.
    #[serde(default)]
    local_backends: Vec<Spanned<IpAddr>>,
    external_traffic_policy: Option<Spanned<TrafficPolicy>>,
    /// `maglev` or `random` (a service's external frontends), or
    /// `least-connections` (its socket frontends; external ones keep Maglev).
    lb_algorithm: Option<Spanned<String>>,
    /// One weight per backend (1-`MAX_WEIGHT`), in their order.
    #[serde(default)]
    weights: Vec<Spanned<u64>>,
    maglev_table_size: Option<Spanned<u64>>,
    /// Kubernetes' loadBalancerSourceRanges, for `load_balancer_addresses`.
    #[serde(default)]
    load_balancer_source_ranges: Vec<Spanned<String>>,
    /// Kubernetes' healthCheckNodePort, of an `external_traffic_policy =
    /// "local"` service: served by `sync --watch`.
    health_check_node_port: Option<Spanned<u16>>,
    /// The backends' active health check, run by `sync --watch`.
    health_check: Option<Spanned<HealthCheckTable>>,
}

/// `[service.health_check]` (and the policies'): `model::CheckSpec`'s
/// fields, each with where it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthCheckTable {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    path: Option<Spanned<String>>,
    expected_status: Option<Spanned<u16>>,
    query: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    when_all_unhealthy: Option<Spanned<String>>,
}

impl HealthCheckTable {
    /// The check, or what is wrong with it where it is.
    fn read(
        table: &Spanned<Self>,
        at: &impl Fn(std::ops::Range<usize>) -> Location,
    ) -> Result<(BackendCheck, WhenAllUnhealthy)> {
        let check = table.get_ref();
        fn text(field: &Option<Spanned<String>>) -> Option<&str> {
            field.as_ref().map(|f| f.get_ref().as_str())
        }
        let value = |field: &Option<Spanned<u32>>| field.as_ref().map(|f| *f.get_ref());
        let spec = CheckSpec {
            kind: check.kind.get_ref(),
            path: text(&check.path),
            expected_status: check.expected_status.as_ref().map(|f| *f.get_ref()),
            query: text(&check.query),
            port: check.port.as_ref().map(|f| *f.get_ref()),
            interval: text(&check.interval),
            timeout: text(&check.timeout),
            rise: value(&check.rise),
            fall: value(&check.fall),
            when_all_unhealthy: text(&check.when_all_unhealthy),
        };
        spec.build().map_err(|e| {
            let span = check.span_of(e.field).unwrap_or_else(|| table.span());
            input!("{}: health_check.{}: {}", at(span), e.field, e.message)
        })
    }

    /// Where `field` (a `CheckSpec` field name) is, if given.
    fn span_of(&self, field: &str) -> Option<std::ops::Range<usize>> {
        let text = |f: &Option<Spanned<String>>| f.as_ref().map(Spanned::span);
        let number = |f: &Option<Spanned<u32>>| f.as_ref().map(Spanned::span);
        match field {
            "type" => Some(self.kind.span()),
            "path" => text(&self.path),
            "expected_status" => self.expected_status.as_ref().map(Spanned::span),
            "query" => text(&self.query),
            "port" => self.port.as_ref().map(Spanned::span),
            "interval" => text(&self.interval),
            "timeout" => text(&self.timeout),
            "rise" => number(&self.rise),
            "fall" => number(&self.fall),
            "when_all_unhealthy" => text(&self.when_all_unhealthy),
            _ => None,
        }
    }
}

/// `external_traffic_policy`: Kubernetes' externalTrafficPolicy.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TrafficPolicy {
    Cluster,
    Local,
}

/// Which table a `RuleTable` is from.
#[derive(Clone, Copy)]
enum TableKind {
    Service,
    Policy(PolicyKind),
}

impl TableKind {
    const fn scope(self) -> Scope {
        match self {
            Self::Service => Scope::Service,
            Self::Policy(kind) => kind.scope(),
        }
    }

    const fn owner_prefix(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Policy(kind) => kind.owner_prefix(),
        }
    }

    const fn table(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Policy(PolicyKind::LocalRedirect) => "local_redirect_policy",
            Self::Policy(PolicyKind::Balancing) => "balancing_policy",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSpec {
    port: Port,
    target_port: Option<Port>,
    /// A node port (NodePort), [[service]] only.
    node_port: Option<Port>,
    #[serde(default = "default_protocol")]
    protocol: Protocol,
}

const fn default_protocol() -> Protocol {
    Protocol::Tcp
}

/// A port number, 1-65535, checked while parsing so the error points at it.
#[derive(Clone, Copy)]
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let port = i64::deserialize(deserializer)?;
        match u16::try_from(port) {
            Ok(port) if port > 0 => Ok(Self(port)),
            _ => Err(serde::de::Error::custom(format!("port {port} is out of range (ports are 1-65535)"))),
        }
    }
}

/// Parses one file into synced objects (their source is set by the caller),
/// an entry at a time: the services, then the local redirect policies,
/// then the balancing policies, each in file order.
/// Their rules are counted in `budget` before they are made.
pub fn parse(file: &str, text: &str, budget: &mut EntryBudget) -> Result<Vec<Located<SyncedObject>>> {
    let kinds = [
        TableKind::Service,
        TableKind::Policy(PolicyKind::LocalRedirect),
        TableKind::Policy(PolicyKind::Balancing),
    ];
    let mut objects: [Vec<Located<SyncedObject>>; 3] = Default::default();
    // Tables the text before the first entry defines (as `service = [...]`).
    let mut defined_before = [false; 3];
    let (mut line, mut counted_to) = (1, 0);
    for entry in toml_entries::entries(text) {
        line += memchr::memchr_iter(b'\n', &text.as_bytes()[counted_to..entry.range.start]).count();
        counted_to = entry.range.start;
        let at_line = |mut location: Location| {
            location.line += line - 1;
            location
        };
        if entry.range.len() > MAX_ENTRY {
            return Err(input!(
                "{file}:{line}:1: an entry larger than {} MiB; balctl reads a state file one \
                 [[service]], [[local_redirect_policy]] or [[balancing_policy]] table at a time, \
                 with its sub-tables, and each must be smaller",
                MAX_ENTRY >> 20
            ));
        }
        let entry_text = &text[entry.range.clone()];
        let parsed: StateFile = ::toml::from_str(entry_text).map_err(|e| {
            let offset = e.span().map_or(0, |span| span.start);
            input!("{}: {}", at_line(Location::at(file, entry_text, offset)), e.message().trim_end())
        })?;
        let lines = LineIndex::new(entry_text.as_bytes());
        let at = |span: std::ops::Range<usize>| at_line(lines.locate(file, span.start));
        let tables = [parsed.service, parsed.local_redirect_policy, parsed.balancing_policy];
        for (index, tables) in tables.into_iter().enumerate() {
            let Some(tables) = tables else { continue };
            if entry.table.is_none() {
                defined_before[index] = true;
            } else if defined_before[index] && entry.table == Some(toml_entries::TABLES[index]) {
                return Err(input!(
                    "{file}:{line}:1: [[{0}]] after `{0}` was defined above in another way; write \
                     every entry as a [[{0}]] table",
                    toml_entries::TABLES[index]
                ));
            }
            for table in tables {
                objects[index].push(rule_object(kinds[index], table, &at, budget)?);
            }
        }
    }
    Ok(objects.into_iter().flatten().collect())
}

/// What a table says about its external frontends.
struct ExternalFields {
    /// `external_traffic_policy = "local"`.
    local: bool,
    balancing: ExternalBalancing,
    health_check_node_port: Option<u16>,
}

/// Checks the north-south fields of a table: only a [[service]] has them,
/// local backends are among its backends, the table size is a prime.
fn external_fields(
    kind: TableKind,
    spec: &RuleTable,
    at: &impl Fn(std::ops::Range<usize>) -> Location,
) -> Result<ExternalFields> {
    let service_only = [
        spec.external_addresses.first().map(|a| ("external_addresses", a.span())),
        spec.load_balancer_addresses.first().map(|a| ("load_balancer_addresses", a.span())),
        spec.local_backends.first().map(|a| ("local_backends", a.span())),
        spec.external_traffic_policy.as_ref().map(|p| ("external_traffic_policy", p.span())),
        (spec.lb_algorithm.as_ref())
            .filter(|a| a.get_ref() != LEAST_CONNECTIONS)
            .map(|a| ("lb_algorithm", a.span())),
        spec.maglev_table_size.as_ref().map(|s| ("maglev_table_size", s.span())),
        spec.load_balancer_source_ranges.first().map(|r| ("load_balancer_source_ranges", r.span())),
        spec.ports.iter().find(|p| p.get_ref().node_port.is_some()).map(|p| ("node_port", p.span())),
        spec.health_check_node_port.as_ref().map(|p| ("health_check_node_port", p.span())),
    ];
    if !matches!(kind, TableKind::Service)
        && let Some((field, span)) = service_only.into_iter().flatten().next()
    {
        return Err(input!(
            "{}: {field}: only a service has frontends for traffic from outside the node",
            at(span)
        ));
    }
    for address in spec.external_addresses.iter().chain(&spec.load_balancer_addresses) {
        check_address(*address.get_ref()).map_err(|e| input!("{}: {e}", at(address.span())))?;
    }
    let backends: HashSet<IpAddr> = spec.backends.iter().map(|b| b.get_ref().to_canonical()).collect();
    for local in &spec.local_backends {
        if !backends.contains(&local.get_ref().to_canonical()) {
            return Err(input!(
                "{}: local_backends: {} is not one of the backends",
                at(local.span()),
                local.get_ref()
            ));
        }
    }
    let maglev_table_size = match &spec.maglev_table_size {
        Some(size) => {
            Some(check_maglev_table_size(*size.get_ref()).map_err(|e| input!("{}: {e}", at(size.span())))?)
        }
        None => None,
    };
    let source_ranges = (spec.load_balancer_source_ranges.iter())
        .map(|range| range.get_ref().parse::<Prefix>().map_err(|e| input!("{}: {e}", at(range.span()))))
        .collect::<Result<Vec<_>>>()?;
    let local = spec.external_traffic_policy.as_ref().is_some_and(|p| *p.get_ref() == TrafficPolicy::Local);
    if let Some(port) = &spec.health_check_node_port {
        // The API server's rule: only where the nodes without endpoints drop
        // the traffic does a load balancer need to ask them.
        if !local {
            return Err(input!(
                "{}: health_check_node_port: only a service with external_traffic_policy = \"local\" \
                 has one",
                at(port.span())
            ));
        }
        if *port.get_ref() == 0 {
            return Err(input!("{}: health_check_node_port 0 is out of range (1-65535)", at(port.span())));
        }
    }
    Ok(ExternalFields {
        local,
        balancing: ExternalBalancing {
            algorithm: match &spec.lb_algorithm {
                Some(name) if name.get_ref() != LEAST_CONNECTIONS => LbAlgorithm::from_name(name.get_ref())
                    .ok_or_else(|| {
                    input!(
                        "{}: lb_algorithm: `{}` is not one of maglev, random, {LEAST_CONNECTIONS}",
                        at(name.span()),
                        excerpt(name.get_ref())
                    )
                })?,
                _ => LbAlgorithm::default(),
            },
            maglev_table_size,
            source_ranges,
        },
        health_check_node_port: spec.health_check_node_port.as_ref().map(|p| *p.get_ref()),
    })
}

/// The largest entry read: the TOML parser takes about 50 times an
/// entry's size while reading it.
const MAX_ENTRY: usize = 64 << 20;

/// The synced object of one table of `kind`; `at` locates a span. Its
/// rules are counted in `budget` before they are made.
fn rule_object(
    kind: TableKind,
    table: Spanned<RuleTable>,
    at: &impl Fn(std::ops::Range<usize>) -> Location,
    budget: &mut EntryBudget,
) -> Result<Located<SyncedObject>> {
    let location = at(table.span());
    let spec = table.into_inner();
    let name = spec.name.get_ref();
    let table = kind.table();
    check_name(name).map_err(|e| input!("{}: invalid name: {e}", at(spec.name.span())))?;
    if spec.addresses.is_empty() {
        return Err(input!("{location}: {table} `{}` has no addresses", excerpt(name)));
    }
    if spec.ports.is_empty() {
        return Err(input!("{location}: {table} `{}` has no ports", excerpt(name)));
    }
    for address in spec.addresses.iter().chain(&spec.backends) {
        check_address(*address.get_ref()).map_err(|e| input!("{}: {e}", at(address.span())))?;
    }
    // Compared as the maps get them: `::ffff:192.0.2.2` is `192.0.2.2`.
    let mut backends = HashSet::default();
    for backend in &spec.backends {
        if !backends.insert(backend.get_ref().to_canonical()) {
            return Err(input!("{}: backend {} is listed twice", at(backend.span()), backend.get_ref()));
        }
    }
    if let Some(affinity) = &spec.affinity_seconds
        && !(1..=MAX_AFFINITY_SECONDS).contains(affinity.get_ref())
    {
        return Err(input!(
            "{}: affinity_seconds {} is out of range (1-{MAX_AFFINITY_SECONDS})",
            at(affinity.span()),
            affinity.get_ref()
        ));
    }
    let requests_per_second = spec.requests_per_second.as_ref().map(|limit| *limit.get_ref());
    if let Some(limit) = &spec.requests_per_second {
        if !matches!(kind, TableKind::Policy(PolicyKind::LocalRedirect)) {
            return Err(input!(
                "{}: requests_per_second: only a local_redirect_policy has a rate limit (above it, \
                 traffic goes to the next layer)",
                at(limit.span())
            ));
        }
        if *limit.get_ref() == 0 {
            return Err(input!(
                "{}: requests_per_second 0 is out of range (1-{})",
                at(limit.span()),
                u32::MAX
            ));
        }
    }
    let external = external_fields(kind, &spec, at)?;
    let least_connections = spec.lb_algorithm.as_ref().is_some_and(|a| a.get_ref() == LEAST_CONNECTIONS);
    let weights = match spec.weights.first() {
        Some(first) => {
            let given: Vec<u64> = spec.weights.iter().map(|w| *w.get_ref()).collect();
            let error = |e: String| input!("{}: weights: {e}", at(first.span()));
            check_weights(&given, spec.backends.len()).map_err(error)?
        }
        None => Vec::new(),
    };
    let health = spec.health_check.as_ref().map(|table| HealthCheckTable::read(table, at)).transpose()?;
    if let (Some((check, _)), Some(table)) = (&health, &spec.health_check) {
        for port in &spec.ports {
            check.fits(port.get_ref().protocol).map_err(|e| {
                input!("{}: health_check.{}: {}", at(table.get_ref().kind.span()), e.field, e.message)
            })?;
        }
    }
    // Each address's rules have the backends of its family.
    let is_ipv4 = |ip: &&Spanned<IpAddr>| ip.get_ref().to_canonical().is_ipv4();
    for (family, ipv4) in [("IPv4", true), ("IPv6", false)] {
        let addresses = spec.addresses.iter().filter(|a| is_ipv4(a) == ipv4).count();
        let backends = spec.backends.iter().filter(|b| is_ipv4(b) == ipv4).count();
        let (addresses_name, backends_name) = (format!("{family} addresses"), format!("{family} backends"));
        budget.reserve(
            format_args!("{location}: {table} `{}`", excerpt(name)),
            &[(addresses, &addresses_name), (spec.ports.len(), "ports")],
            (backends, &backends_name),
        )?;
        // Each external address and node port: a frontend for sockets and
        // one for packets from outside (at most as many backends).
        let external_addresses = (spec.external_addresses.iter().chain(&spec.load_balancer_addresses))
            .filter(|a| is_ipv4(a) == ipv4)
            .count();
        let node_ports = spec.ports.iter().filter(|p| p.get_ref().node_port.is_some()).count();
        budget.reserve(
            format_args!("{location}: {table} `{}` external", excerpt(name)),
            &[(2, "entries"), (external_addresses * spec.ports.len() + node_ports, "external frontends")],
            (backends, &backends_name),
        )?;
    }
    let mut rules: Vec<FrontendRule> = Vec::new();
    let mut frontends = HashSet::default();
    let canonical = |ips: &[Spanned<IpAddr>]| -> Vec<IpAddr> {
        ips.iter().map(|ip| ip.get_ref().to_canonical()).collect()
    };
    let (all_backends, local_backends) = (canonical(&spec.backends), canonical(&spec.local_backends));
    for port in &spec.ports {
        let PortSpec { port: Port(number), target_port, protocol, node_port } = *port.get_ref();
        let target = target_port.map_or(number, |Port(p)| p);
        // Each address's frontends: its own, and for the external ones
        // also the frontend of packets from outside.
        let addresses =
            (spec.addresses.iter().map(|a| (AddressKind::ClusterIp, a.get_ref().to_canonical(), number)))
                .chain(
                    spec.external_addresses
                        .iter()
                        .map(|a| (AddressKind::ExternalIp, a.get_ref().to_canonical(), number)),
                )
                .chain(
                    spec.load_balancer_addresses
                        .iter()
                        .map(|a| (AddressKind::LoadBalancer, a.get_ref().to_canonical(), number)),
                )
                .chain(node_port.into_iter().flat_map(|Port(node_port)| {
                    // On the node addresses of each family the service has backends or frontends of.
                    [IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
                        .into_iter()
                        .filter(|unspecified| {
                            spec.addresses
                                .iter()
                                .any(|a| a.get_ref().to_canonical().is_ipv4() == unspecified.is_ipv4())
                        })
                        .map(move |unspecified| (AddressKind::NodePort, unspecified, node_port))
                }));
        for (address_kind, address, number) in addresses {
            let of_family = |ips: &[IpAddr]| -> Vec<SocketAddr> {
                ips.iter()
                    .filter(|b| b.is_ipv4() == address.is_ipv4())
                    .map(|&b| SocketAddr::new(b, target))
                    .collect()
            };
            let (backends, local_backends) = (of_family(&all_backends), of_family(&local_backends));
            let scopes: &[Scope] = if address_kind == AddressKind::ClusterIp {
                &[kind.scope()]
            } else {
                &[Scope::Service, Scope::External]
            };
            for &scope in scopes {
                let frontend = Frontend { address, port: number, protocol, scope };
                if !frontends.insert(frontend) {
                    return Err(input!("{}: frontend {frontend} is listed twice", at(port.span())));
                }
                let local_only = scope == Scope::External && external.local;
                let mut local_backends = local_backends.clone();
                local_backends.sort_unstable();
                rules.push(FrontendRule {
                    frontend,
                    backends: if local_only { local_backends.clone() } else { backends.clone() },
                    local_backends,
                    affinity_seconds: spec.affinity_seconds.as_ref().map(|a| *a.get_ref()),
                    local_only,
                    requests_per_second,
                    address_kind,
                    external: match scope {
                        Scope::External => external.balancing.for_frontend(address_kind, address),
                        _ => ExternalBalancing::default(),
                    },
                    health: health
                        .as_ref()
                        .map(|(check, when)| Box::new(RuleHealth::new(check.clone(), *when))),
                    weights: weights_of_family(
                        spec.backends.iter().map(|b| *b.get_ref()),
                        &weights,
                        address.is_ipv4(),
                    ),
                    least_connections,
                });
            }
        }
    }
    // What kube-proxy counts: this node's endpoints, each `IP:port` once.
    let local_endpoints: HashSet<SocketAddr> =
        rules.iter().flat_map(|rule| rule.local_backends.iter().copied()).collect();
    let health_check = external.health_check_node_port.map(|port| HealthCheck {
        namespace: String::new(),
        name: name.clone(),
        port,
        local_endpoints: u32::try_from(local_endpoints.len()).unwrap_or(u32::MAX),
    });
    let object = SyncedObject {
        source: String::new(),
        owner: format!("{}/{name}", kind.owner_prefix()),
        rules,
        addresses: Vec::new(),
        inputs: Vec::new(),
        health_check,
        dependencies: Vec::new(),
        held_back: Vec::new(),
    };
    Ok(Located { value: object, location })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        match parse("s.toml", text, &mut EntryBudget::default()) {
            Ok(_) => panic!("accepted: {text}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn a_dual_stack_service_becomes_one_rule_per_address_and_port() {
        let text = r#"
[[service]]
name = "web"
addresses = ["198.18.0.10", "2001:db8:5e::10"]
backends = ["192.0.2.2", "2001:db8::2", "192.0.2.3"]
affinity_seconds = 60
ports = [{ port = 80, target_port = 8080 }, { port = 53, protocol = "udp" }]
"#;
        let objects = parse("s.toml", text, &mut EntryBudget::default()).unwrap();
        let object = &objects[0].value;
        assert_eq!(object.owner, "service/web");
        assert_eq!(objects[0].location.to_string(), "s.toml:2:1");
        let rules: Vec<String> = object
            .rules
            .iter()
            .map(|r| {
                let backends: Vec<String> = r.backends.iter().map(ToString::to_string).collect();
                format!("{} -> {}", r.frontend, backends.join(","))
            })
            .collect();
        assert_eq!(
            rules,
            [
                "198.18.0.10:80/tcp -> 192.0.2.2:8080,192.0.2.3:8080",
                "[2001:db8:5e::10]:80/tcp -> [2001:db8::2]:8080",
                "198.18.0.10:53/udp -> 192.0.2.2:53,192.0.2.3:53",
                "[2001:db8:5e::10]:53/udp -> [2001:db8::2]:53",
            ]
        );
        assert!(object.rules.iter().all(|r| r.affinity_seconds == Some(60)));
    }

    #[test]
    fn errors_point_at_file_line_and_column() {
        let service = |body: &str| format!("[[service]]\nname = \"web\"\n{body}\n");
        let cases = [
            (service("addresses = [\"198.18.0.300\"]\nports = [{ port = 80 }]"), "s.toml:3:14", "invalid IP"),
            (service("addresses = [\"198.18.0.1\"]\nports = [{ port = 0 }]"), "s.toml:4:19", "out of range"),
            (
                service("addresses = [\"198.18.0.1\"]\nports = [{ port = 65536 }]"),
                "s.toml:4:19",
                "out of range",
            ),
            (
                service("addresses = [\"198.18.0.1\"]\nports = [{ port = 80, protocol = \"sctp\" }]"),
                "s.toml:4:",
                "sctp",
            ),
            (
                service("addresses = [\"198.18.0.1\"]\nports = [{ port = 80 }]\ncolour = 1"),
                "s.toml:5:1",
                "colour",
            ),
            (service("addresses = []\nports = [{ port = 80 }]"), "s.toml:1:1", "no addresses"),
            (service("addresses = [\"198.18.0.1\"]"), "s.toml:1:1", "ports"),
            (
                service("addresses = [\"198.18.0.1\"]\nports = [{ port = 80 }, { port = 80 }]"),
                "s.toml:4:",
                "listed twice",
            ),
            (
                service("addresses = [\"198.18.0.1\"]\nports = [{ port = 80 }]\naffinity_seconds = 0"),
                "s.toml:5:20",
                "affinity",
            ),
            (
                service("addresses = [\"::ffff:0.0.0.0\"]\nports = [{ port = 80 }]"),
                "s.toml:3:14",
                "unspecified",
            ),
            (
                service(
                    "addresses = [\"198.18.0.1\"]\nbackends = [\"192.0.2.2\", \"::ffff:192.0.2.2\"]\nports = [{ port = 80 }]",
                ),
                "s.toml:4:26",
                "listed twice",
            ),
            ("[[service]\nname = 1".to_owned(), "s.toml:1:", ""),
            (
                "[[service]]\nname = \"Web\"\naddresses = [\"198.18.0.1\"]\nports = [{ port = 80 }]"
                    .to_owned(),
                "s.toml:2:8",
                "invalid name",
            ),
        ];
        for (text, location, message) in cases {
            let err = error(&text);
            assert!(err.starts_with(location) && err.contains(message), "{text}\n=> {err}");
        }
    }

    /// Node ports, external and load-balancer addresses: a frontend for
    /// sockets with every backend, and one for packets from outside with
    /// the external traffic policy's; the local backends marked in each.
    #[test]
    fn external_frontends_and_their_policy() {
        let text = r#"
[[service]]
name = "web"
addresses = ["198.18.0.10"]
external_addresses = ["198.18.2.10"]
load_balancer_addresses = ["198.18.1.10"]
backends = ["192.0.2.2", "192.0.2.3"]
local_backends = ["192.0.2.3"]
external_traffic_policy = "local"
lb_algorithm = "random"
ports = [{ port = 80, target_port = 8080, node_port = 30080 }]
"#;
        let objects = parse("s.toml", text, &mut EntryBudget::default()).unwrap();
        let found: Vec<String> = (objects[0].value.rules.iter())
            .map(|r| {
                let backends: Vec<String> = (r.backends.iter())
                    .map(|b| if r.is_local(b) { format!("{b} (local)") } else { b.to_string() })
                    .collect();
                format!(
                    "{} {} {:?} -> {}",
                    r.frontend,
                    r.address_kind.name(),
                    r.external.algorithm,
                    backends.join(",")
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                "198.18.0.10:80/tcp ClusterIP Maglev -> 192.0.2.2:8080,192.0.2.3:8080 (local)",
                "198.18.2.10:80/tcp ExternalIP Maglev -> 192.0.2.2:8080,192.0.2.3:8080 (local)",
                "198.18.2.10:80/tcp@external ExternalIP Random -> 192.0.2.3:8080 (local)",
                "198.18.1.10:80/tcp LoadBalancer Maglev -> 192.0.2.2:8080,192.0.2.3:8080 (local)",
                "198.18.1.10:80/tcp@external LoadBalancer Random -> 192.0.2.3:8080 (local)",
                "0.0.0.0:30080/tcp NodePort Maglev -> 192.0.2.2:8080,192.0.2.3:8080 (local)",
                "0.0.0.0:30080/tcp@external NodePort Random -> 192.0.2.3:8080 (local)",
            ]
        );
        let external: Vec<bool> = objects[0].value.rules.iter().map(|r| r.local_only).collect();
        assert_eq!(external, [false, false, true, false, true, false, true]);

        let cluster = text.replace(
            "external_traffic_policy = \"local\"",
            "maglev_table_size = 1021\nload_balancer_source_ranges = [\"203.0.113.0/24\", \"2001:db8::/32\"]",
        );
        let objects = parse("s.toml", &cluster, &mut EntryBudget::default()).unwrap();
        let node_port = &objects[0].value.rules[6];
        assert_eq!((node_port.backends.len(), node_port.local_only), (2, false));
        assert_eq!(node_port.external.maglev_table_size, Some(1021));
        // The load-balancer IP's external entry only, of its family.
        let ranges: Vec<usize> =
            objects[0].value.rules.iter().map(|r| r.external.source_ranges.len()).collect();
        assert_eq!(ranges, [0, 0, 0, 0, 1, 0, 0]);
        let bad = cluster.replace("203.0.113.0/24", "203.0.113.0/24/1");
        let err = error(&bad);
        assert!(err.starts_with("s.toml:10:32") && err.contains("is not a prefix length"), "{err}");

        let cases = [
            (text.replace("\"random\"", "\"hash\""), "s.toml:10:16", "`hash` is not one of maglev, random"),
            (text.replace("\"local\"", "\"Local\""), "s.toml:9:27", "unknown variant `Local`"),
            (
                text.replace("lb_algorithm = \"random\"", "maglev_table_size = 1000"),
                "s.toml:10:21",
                "not a prime",
            ),
            (
                text.replace("local_backends = [\"192.0.2.3\"]", "local_backends = [\"192.0.2.9\"]"),
                "s.toml:8:19",
                "not one of the backends",
            ),
            (
                text.replace("[[service]]", "[[balancing_policy]]"),
                "s.toml:5:23",
                "external_addresses: only a service",
            ),
        ];
        for (text, location, message) in cases {
            let err = error(&text);
            assert!(err.starts_with(location) && err.contains(message), "{text}\n=> {err}");
        }
    }

    #[test]
    fn a_local_service_has_a_health_check_node_port() {
        let text = r#"
[[service]]
name = "web"
addresses = ["198.18.0.10", "2001:db8:5e::10"]
backends = ["192.0.2.2", "192.0.2.3", "2001:db8::2"]
local_backends = ["192.0.2.3", "2001:db8::2"]
external_traffic_policy = "local"
health_check_node_port = 32000
ports = [{ port = 80, target_port = 8080, node_port = 30080 }, { port = 443, target_port = 8443 }]
"#;
        let objects = parse("s.toml", text, &mut EntryBudget::default()).unwrap();
        // Each local IP at each target port, once across the ports' frontends.
        assert_eq!(
            objects[0].value.health_check,
            Some(HealthCheck {
                namespace: String::new(),
                name: "web".into(),
                port: 32000,
                local_endpoints: 4
            })
        );
        let without = text.replace("health_check_node_port = 32000\n", "");
        let objects = parse("s.toml", &without, &mut EntryBudget::default()).unwrap();
        assert_eq!(objects[0].value.health_check, None);

        let cases = [
            (text.replace("\"local\"", "\"cluster\""), "s.toml:8:26", "only a service with external_traffic_policy"),
            (text.replace("32000", "0"), "s.toml:8:26", "out of range"),
            (text.replace("32000", "70000"), "s.toml:8:26", ""),
            (
                text.replace("[[service]]", "[[balancing_policy]]").replace(", node_port = 30080", "").replace("local_backends = [\"192.0.2.3\", \"2001:db8::2\"]\nexternal_traffic_policy = \"local\"\n", ""),
                "s.toml:6:26",
                "health_check_node_port: only a service",
            ),
        ];
        for (text, location, message) in cases {
            let err = error(&text);
            assert!(err.starts_with(location) && err.contains(message), "{text}\n=> {err}");
        }
    }

    #[test]
    fn policy_tables_make_rules_in_their_layer() {
        let text = r#"
[[service]]
name = "dns"
addresses = ["198.18.0.53"]
backends = ["192.0.2.2"]
ports = [{ port = 53, protocol = "udp" }]

[[local_redirect_policy]]
name = "dns"
addresses = ["198.18.0.53"]
backends = ["192.0.2.9"]
requests_per_second = 5
ports = [{ port = 53, protocol = "udp" }]

[[balancing_policy]]
name = "web"
addresses = ["198.18.0.10"]
backends = ["192.0.2.4", "192.0.2.5"]
ports = [{ port = 80, target_port = 8080 }]
"#;
        let objects = parse("s.toml", text, &mut EntryBudget::default()).unwrap();
        let found: Vec<String> = objects
            .iter()
            .flat_map(|o| o.value.rules.iter().map(move |r| (&o.value.owner, r)))
            .map(|(owner, r)| format!("{owner}: {} {:?} {:?}", r.frontend, r.backends, r.requests_per_second))
            .collect();
        assert_eq!(
            found,
            [
                "service/dns: 198.18.0.53:53/udp [192.0.2.2:53] None",
                "localredirectpolicy/dns: 198.18.0.53:53/udp@redirect [192.0.2.9:53] Some(5)",
                "balancingpolicy/web: 198.18.0.10:80/tcp@balancing [192.0.2.4:8080, 192.0.2.5:8080] None",
            ]
        );
        let limited = text.replace(
            "ports = [{ port = 80, target_port = 8080 }]",
            "requests_per_second = 3\nports = [{ port = 80 }]",
        );
        let err = error(&limited);
        assert!(err.starts_with("s.toml:19:23") && err.contains("only a local_redirect_policy"), "{err}");
        let err = error(&text.replace("requests_per_second = 5", "requests_per_second = 0"));
        assert!(err.starts_with("s.toml:12:23") && err.contains("out of range"), "{err}");
    }
}
