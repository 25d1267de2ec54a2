//! LocalRedirectPolicy and BalancingPolicy objects (`balancing.elf.io/v1beta1`,
//! CRDs in deploy/crds/): their frontend, backend and config, checked field
//! by field as the CRD's schema would. What they refer to (a Service, Pods,
//! Nodes) is resolved by policies.rs, which reports what is wrong there at
//! the places kept here.

use std::net::IpAddr;

use anyhow::Result;

use super::{
    field::{Field, FieldRef, Object},
    objects::{Labels, Meta, labels},
};
use crate::model::{
    BackendCheck, LEAST_CONNECTIONS, PolicyKind, Protocol, WhenAllUnhealthy, check_weights, health::CheckSpec,
};

pub const POLICY_API_VERSION: &str = "balancing.elf.io/v1beta1";

#[derive(Clone)]
pub struct PolicyObject {
    pub meta: Meta,
    pub kind: PolicyKind,
    pub frontend: PolicyFrontend,
    pub backend: PolicyBackend,
    /// `spec.config.nodeLabelSelector.matchLabels`: the policy applies only
    /// on nodes that have these labels.
    pub node_selector: Option<(Labels, FieldRef)>,
    /// `spec.config.requestsPerSecond` (LocalRedirectPolicy): each frontend's
    /// limit, above which that second's traffic goes to the Service.
    pub requests_per_second: Option<u32>,
    /// `spec.healthCheck`: the backend addresses' active health check.
    pub health_check: Option<PolicyHealthCheck>,
    /// `spec.config.lbAlgorithm: least-connections`.
    pub least_connections: bool,
}

/// A policy's `spec.healthCheck`, read, with where its `type` is: what a
/// frontend's protocol rules out is found there (`BackendCheck::fits`).
#[derive(Clone)]
pub struct PolicyHealthCheck {
    pub check: BackendCheck,
    pub when_all_unhealthy: WhenAllUnhealthy,
    pub at: FieldRef,
}

impl PolicyObject {
    pub fn owner(&self) -> String {
        format!("{}/{}/{}", self.kind.owner_prefix(), self.meta.namespace, self.meta.name)
    }
}

#[derive(Clone)]
pub enum Matcher {
    /// `serviceMatcher`: the Service's cluster IPs.
    Service { namespace: String, name: String, at: FieldRef },
    /// `addressMatcher`: a custom address.
    Address(IpAddr),
}

#[derive(Clone)]
pub struct PolicyFrontend {
    pub matcher: Matcher,
    /// Empty for a serviceMatcher without `toPorts`: every port of the Service.
    pub to_ports: Vec<ToPort>,
}

/// One entry of a `toPorts` list. Frontend and backend ports pair by name.
#[derive(Clone)]
pub struct ToPort {
    /// Empty when not given.
    pub name: String,
    /// Required everywhere but in a serviceMatcher, which may name the
    /// Service's port instead.
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
    pub at: FieldRef,
}

impl ToPort {
    /// How messages name it: by name and number, as far as given.
    pub fn label(&self) -> String {
        match (self.name.as_str(), self.port) {
            ("", Some(port)) => format!("port {port}"),
            (name, Some(port)) => format!("port `{name}` ({port})"),
            (name, None) => format!("port `{name}`"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RedirectMode {
    /// The Pods' own addresses.
    PodEndpoint,
    /// The address of each Pod's Node, at the container's hostPort.
    HostPort,
    /// Each Pod's Node's proxy address (annotation
    /// `balancing.elf.io/nodeProxyIpv4`, else its first InternalIP).
    NodeProxy,
}

#[derive(Clone)]
pub enum BackendTarget {
    /// Pods of the policy's namespace with these labels: a
    /// LocalRedirectPolicy's on this node only, a BalancingPolicy's anywhere.
    Pods {
        selector: Labels,
        mode: RedirectMode,
    },
    Addresses(Vec<IpAddr>),
}

#[derive(Clone)]
pub struct PolicyBackend {
    pub target: BackendTarget,
    /// `addressEndpoint.weights`: one per address, in order (empty: every
    /// weight is 1).
    pub weights: Vec<u16>,
    pub to_ports: Vec<ToPort>,
    pub at: FieldRef,
}

/// Reads the spec of a policy object of `kind`.
pub fn parse(root: Field<'_>, object: &Object<'_>, meta: Meta, kind: PolicyKind) -> Result<PolicyObject> {
    let spec = root.require(object, "spec")?;
    let frontend = frontend(spec.require(object, "frontend")?, object, &meta)?;
    let backend = spec.require(object, "backend")?;
    let backend = match kind {
        PolicyKind::LocalRedirect => local_backend(backend, object)?,
        PolicyKind::Balancing => balancing_backend(backend, object)?,
    };
    let mut node_selector = None;
    let mut requests_per_second = None;
    let mut least_connections = false;
    if let Some(config) = spec.get("config") {
        if let Some(selector) = config.get("nodeLabelSelector") {
            reject_match_expressions(selector, object)?;
            node_selector = Some((labels(selector.get("matchLabels"), object)?, selector.reference(object)));
        }
        if let Some(algorithm) = config.get("lbAlgorithm") {
            least_connections =
                algorithm.one_of(object, &["random", LEAST_CONNECTIONS])? == LEAST_CONNECTIONS;
        }
        if let Some(limit) = config.get("requestsPerSecond") {
            if kind == PolicyKind::Balancing {
                return Err(limit.error(
                    object,
                    "only a LocalRedirectPolicy has a rate limit (above it, traffic goes to the Service)",
                ));
            }
            let value = limit.int(object)?;
            match u32::try_from(value) {
                Ok(value) if value > 0 => requests_per_second = Some(value),
                _ => return Err(limit.error(object, format!("{value} is out of range (1-{})", u32::MAX))),
            }
        }
    }
    let health_check = match spec.get("healthCheck") {
        Some(field) => {
            if kind != PolicyKind::Balancing || !matches!(backend.target, BackendTarget::Addresses(_)) {
                return Err(field.error(
                    object,
                    "only a BalancingPolicy's addressEndpoint has a health check (Pods have their \
                     readiness probes)",
                ));
            }
            Some(health_check(field, object)?)
        }
        None => None,
    };
    Ok(PolicyObject {
        meta,
        kind,
        frontend,
        backend,
        node_selector,
        requests_per_second,
        health_check,
        least_connections,
    })
}

/// `addressEndpoint.weights`: one per address, each 1-`MAX_WEIGHT`.
fn weights(field: Field<'_>, object: &Object<'_>, addresses: usize) -> Result<Vec<u16>> {
    let given = field.items(object)?.map(|weight| weight.int(object)).collect::<Result<Vec<i64>>>()?;
    let given: Vec<u64> = given.into_iter().map(|w| u64::try_from(w).unwrap_or(0)).collect();
    check_weights(&given, addresses).map_err(|e| field.error(object, e))
}

/// The fields of `spec.healthCheck`, as `model::CheckSpec` names them
/// and as the CRD spells them.
const HEALTH_CHECK_FIELDS: [(&str, &str); 10] = [
    ("type", "type"),
    ("path", "path"),
    ("expected_status", "expectedStatus"),
    ("query", "query"),
    ("port", "port"),
    ("interval", "interval"),
    ("timeout", "timeout"),
    ("rise", "rise"),
    ("fall", "fall"),
    ("when_all_unhealthy", "whenAllUnhealthy"),
];

/// Reads `spec.healthCheck`; an error points at the field at fault.
fn health_check(field: Field<'_>, object: &Object<'_>) -> Result<PolicyHealthCheck> {
    for (key, entry) in field.entries(object)? {
        if !HEALTH_CHECK_FIELDS.iter().any(|(_, name)| *name == key) {
            return Err(entry.error(object, "unknown field"));
        }
    }
    let text = |name: &'static str| field.get(name).map(|f| f.str(object)).transpose();
    let count = |name: &str| -> Result<Option<u32>> {
        let Some(value) = field.get(name) else { return Ok(None) };
        let number = value.int(object)?;
        u32::try_from(number).map(Some).map_err(|_| value.error(object, format!("{number} is out of range")))
    };
    let expected_status = match field.get("expectedStatus") {
        Some(status) => {
            let number = status.int(object)?;
            Some(
                u16::try_from(number)
                    .map_err(|_| status.error(object, format!("{number} is out of range")))?,
            )
        }
        None => None,
    };
    let spec = CheckSpec {
        kind: field.require(object, "type")?.str(object)?,
        path: text("path")?,
        expected_status,
        query: text("query")?,
        port: field.get("port").map(|port| port.port(object)).transpose()?,
        interval: text("interval")?,
        timeout: text("timeout")?,
        rise: count("rise")?,
        fall: count("fall")?,
        when_all_unhealthy: text("whenAllUnhealthy")?,
    };
    let (check, when_all_unhealthy) = spec.build().map_err(|e| {
        let name =
            HEALTH_CHECK_FIELDS.iter().find(|(ours, _)| *ours == e.field).map_or("type", |(_, name)| name);
        field.get(name).map_or_else(|| field.error(object, &e.message), |at| at.error(object, &e.message))
    })?;
    let at = field.require(object, "type")?.reference(object);
    Ok(PolicyHealthCheck { check, when_all_unhealthy, at })
}

/// The one field of `choices` that `field` has; none or several is an error.
fn exactly_one<'f>(
    field: &'f Field<'_>,
    object: &Object<'_>,
    choices: &[&'static str],
) -> Result<(&'static str, Field<'f>)> {
    let present: Vec<(&'static str, Field<'f>)> =
        choices.iter().filter_map(|&name| field.get(name).map(|found| (name, found))).collect();
    match present.as_slice() {
        [one] => Ok(*one),
        _ => Err(field.error(object, format!("needs exactly one of `{}`", choices.join("`, `")))),
    }
}

fn frontend(field: Field<'_>, object: &Object<'_>, meta: &Meta) -> Result<PolicyFrontend> {
    let (which, matcher) = exactly_one(&field, object, &["serviceMatcher", "addressMatcher"])?;
    if which == "serviceMatcher" {
        let name = matcher.require(object, "serviceName")?.str(object)?.to_owned();
        let namespace = match matcher.get("namespace") {
            Some(namespace) => namespace.str(object)?.to_owned(),
            None => meta.namespace.clone(),
        };
        let to_ports = match matcher.get("toPorts") {
            Some(list) => to_ports(list, object, false)?,
            None => Vec::new(),
        };
        let at = matcher.reference(object);
        Ok(PolicyFrontend { matcher: Matcher::Service { namespace, name, at }, to_ports })
    } else {
        let ip = matcher.require(object, "ip")?.ip(object)?;
        let to_ports = to_ports(matcher.require(object, "toPorts")?, object, true)?;
        Ok(PolicyFrontend { matcher: Matcher::Address(ip), to_ports })
    }
}

fn local_backend(field: Field<'_>, object: &Object<'_>) -> Result<PolicyBackend> {
    let (which, target) = exactly_one(&field, object, &["endpointSelector", "addresses"])?;
    let target = if which == "endpointSelector" {
        BackendTarget::Pods { selector: selector(target, object)?, mode: RedirectMode::PodEndpoint }
    } else {
        BackendTarget::Addresses(addresses(target, object)?)
    };
    let to_ports = to_ports(field.require(object, "toPorts")?, object, true)?;
    Ok(PolicyBackend { target, weights: Vec::new(), to_ports, at: field.reference(object) })
}

fn balancing_backend(field: Field<'_>, object: &Object<'_>) -> Result<PolicyBackend> {
    let (which, endpoint) = exactly_one(&field, object, &["serviceEndpoint", "addressEndpoint"])?;
    let mut weights_given = Vec::new();
    let target = if which == "serviceEndpoint" {
        let mode = match endpoint.get("redirectMode") {
            None => RedirectMode::PodEndpoint,
            Some(mode) => match mode.one_of(object, &["podEndpoint", "hostPort", "nodeProxy"])? {
                "podEndpoint" => RedirectMode::PodEndpoint,
                "hostPort" => RedirectMode::HostPort,
                _ => RedirectMode::NodeProxy,
            },
        };
        BackendTarget::Pods {
            selector: selector(endpoint.require(object, "endpointSelector")?, object)?,
            mode,
        }
    } else {
        let addresses = addresses(endpoint.require(object, "addresses")?, object)?;
        if let Some(field) = endpoint.get("weights") {
            weights_given = weights(field, object, addresses.len())?;
        }
        BackendTarget::Addresses(addresses)
    };
    let to_ports = to_ports(endpoint.require(object, "toPorts")?, object, true)?;
    Ok(PolicyBackend { target, weights: weights_given, to_ports, at: endpoint.reference(object) })
}

fn reject_match_expressions(selector: Field<'_>, object: &Object<'_>) -> Result<()> {
    match selector.get("matchExpressions") {
        Some(expressions) => Err(expressions.error(object, "not supported: select by `matchLabels`")),
        None => Ok(()),
    }
}

/// A Pod selector: `matchLabels`, at least one, since an empty selector
/// would take every Pod of the namespace.
fn selector(field: Field<'_>, object: &Object<'_>) -> Result<Labels> {
    reject_match_expressions(field, object)?;
    let match_labels = field.require(object, "matchLabels")?;
    let selector = labels(Some(match_labels), object)?;
    if selector.is_empty() {
        return Err(
            match_labels.error(object, "needs at least one label (an empty selector takes every Pod)")
        );
    }
    Ok(selector)
}

fn addresses(field: Field<'_>, object: &Object<'_>) -> Result<Vec<IpAddr>> {
    let mut addresses = Vec::new();
    for entry in field.items(object)? {
        let address = entry.ip(object)?;
        if addresses.contains(&address) {
            return Err(entry.error(object, format!("{address} is listed twice")));
        }
        addresses.push(address);
    }
    if addresses.is_empty() {
        return Err(field.error(object, "needs at least one address"));
    }
    Ok(addresses)
}

/// A `toPorts` list; `number_required` everywhere but in a serviceMatcher.
fn to_ports(list: Field<'_>, object: &Object<'_>, number_required: bool) -> Result<Vec<ToPort>> {
    let mut ports: Vec<ToPort> = Vec::new();
    for entry in list.items(object)? {
        let name = entry.get("name").map(|n| n.str(object)).transpose()?.unwrap_or_default().to_owned();
        let port = match entry.get("port") {
            Some(port) => Some(port.port(object)?),
            None if number_required => return Err(entry.error(object, "missing field `port`")),
            None if name.is_empty() => return Err(entry.error(object, "needs a `name` or a `port`")),
            None => None,
        };
        let protocol = match entry.get("protocol") {
            Some(protocol) => Some(match protocol.one_of(object, &["TCP", "UDP"])? {
                "TCP" => Protocol::Tcp,
                _ => Protocol::Udp,
            }),
            None => None,
        };
        if !name.is_empty() && ports.iter().any(|p| p.name == name) {
            return Err(
                entry.error(object, format!("name `{}` is listed twice", crate::error::excerpt(&name)))
            );
        }
        ports.push(ToPort { name, port, protocol, at: entry.reference(object) });
    }
    if ports.is_empty() {
        return Err(list.error(object, "needs at least one port"));
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::kube::yaml::{Node, Value, for_each_object};

    /// The CRDs in deploy/crds/ define the kinds balctl reads, in its group
    /// and version.
    #[test]
    fn the_crds_define_the_kinds_read() {
        let text = |node: &Node, path: &[&str]| -> String {
            let found = path.iter().try_fold(node, |node, key| node.get(key)).expect("field");
            match &found.value {
                Value::Scalar { text, .. } => text.clone(),
                _ => panic!("{path:?} is no scalar"),
            }
        };
        for (file, kind) in
            [("localredirectpolicies", "LocalRedirectPolicy"), ("balancingpolicies", "BalancingPolicy")]
        {
            let path = format!("{}/deploy/crds/{file}.yaml", env!("CARGO_MANIFEST_DIR"));
            let mut found = Vec::new();
            for_each_object(&path, std::fs::File::open(&path).unwrap(), 1, |node| {
                let Value::Sequence(versions) = &node.get("spec").unwrap().get("versions").unwrap().value
                else {
                    panic!("no versions in {path}")
                };
                let version = text(&versions[0], &["name"]);
                found.push(format!(
                    "{}/{version} {}",
                    text(&node, &["spec", "group"]),
                    text(&node, &["spec", "names", "kind"])
                ));
                Ok(())
            })
            .unwrap();
            assert_eq!(found, [format!("{POLICY_API_VERSION} {kind}")]);
        }
    }
}
