//! The datapath's decision for one connect, from what the maps hold. The
//! pure parts are shared with the datapath through `balctl_common`
//! (`looks_up_layer`, `slot_of`, `no_backend_result`, `is_v4_mapped`,
//! `node_address_key`); the rest mirrors, step for step, ebpf/programs/src/lb/frontend.rs (`lookup`: the
//! layer order, the layers map, node ports on node addresses and IPv4
//! loopback) and choice.rs (`choose_backend` for a connect: the client
//! network namespace's sticky choice, else a random slot; `has_backends`
//! and `random_slot` for the failures), and sock.rs (an IPv4 socket given
//! an IPv6 backend fails, refused with ECONNREFUSED). The decision reads
//! maps at each step, so it cannot be shared as one pure function; change
//! it with those files. The CLI test `explain::explain_agrees_with_real_connects`
//! compares it with real connects.
//!
//! A connect starts over (sockets.rs `earlier` gives a connecting socket
//! `NO_SOCKET`), so an unconnected UDP socket's earlier choice never
//! decides a connect: the client process's socket choices are listed
//! beside it, for the datagrams those sockets send.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use balctl_common::{
    ECONNREFUSED, NodeAddressKey, SCOPE_BALANCING, SCOPE_REDIRECT, SCOPE_SERVICE, SERVICE_FLAG_AFFINITY,
    SERVICE_FLAG_LEAST_CONNECTIONS, SERVICE_FLAG_RATE_LIMITED, SERVICE_FLAG_UNHEALTHY, ServiceEntry,
    ServiceKey, V4_MAPPED_PREFIX, is_v4_mapped, looks_up_layer, no_backend_result, node_address_key, result,
    slot_of,
};
use serde::Serialize;

use crate::{
    bpf::maps::{BackendId, ServiceId},
    cmd::{
        dump::{View, affinity::AffinityRecord},
        trace::{resolution_name, result_name},
    },
    image::raw::{addr_to_raw, frontend_of, port_to_raw, raw_to_addr, raw_to_port},
    model::Protocol,
};

/// One rule layer's part in the decision, in the order the datapath looks.
#[derive(Serialize)]
pub struct Layer {
    /// `redirect`, `balancing`, `service` (DEST itself) or `node_port`
    /// (the NodePort frontend of DEST's port).
    pub layer: &'static str,
    /// The entry looked up (or that would be), as `dump services` names it.
    pub frontend: String,
    /// The rule the entry comes from; null without an entry.
    pub name: Option<String>,
    /// Whether this layer's entry takes the connect.
    pub takes: bool,
    /// Why it takes it or not.
    pub why: String,
}

/// A backend the connect could get.
#[derive(Serialize)]
pub struct Candidate {
    /// `IP:PORT`, from the slot's copy of the backend (what the datapath
    /// writes into the socket); null for a slot that names none (stale).
    pub backend: Option<SocketAddr>,
    pub backend_id: BackendId,
    /// Slots of the frontend that hold it (of `backend_count`).
    pub slots: u16,
    /// The chance the connect gets it: its slots over all slots, or 1 for
    /// a held choice.
    pub chance: f64,
    /// Why the connect fails if this slot is drawn (`stale`, `family`);
    /// null when it connects.
    pub failure: Option<&'static str>,
    /// Of a least-connections frontend: the backend's live connections
    /// through it, which decide (null otherwise).
    pub connections: Option<u64>,
    /// The same, as the datapath's `result::` code.
    #[serde(skip)]
    failure_result: Option<u8>,
}

impl Candidate {
    fn new(
        backend: Option<SocketAddr>,
        backend_id: BackendId,
        slots: u16,
        chance: f64,
        v4_dest: bool,
    ) -> Self {
        let failure_result = match backend {
            None => Some(result::STALE),
            // sock.rs: never half an IPv6 address into an IPv4 socket.
            Some(b) if v4_dest && !b.is_ipv4() => Some(result::FAMILY),
            Some(_) => None,
        };
        let failure = failure_result.map(result_name);
        Self { backend, backend_id, slots, chance, failure, connections: None, failure_result }
    }
}

/// The client's sticky choice (session affinity) for the frontend.
#[derive(Serialize)]
pub struct Held {
    pub backend: Option<SocketAddr>,
    pub backend_id: BackendId,
    pub idle_seconds: f64,
    pub timeout_seconds: u32,
    /// Whether the next connect keeps it: not expired and its backend still
    /// belongs to the frontend.
    pub valid: bool,
    pub why: String,
}

/// A socket's sticky choice (`dump affinity`, owner `socket`).
#[derive(Serialize)]
pub struct SocketChoice {
    pub cookie: u64,
    pub backend: Option<SocketAddr>,
    pub backend_id: BackendId,
    pub idle_seconds: f64,
}

/// Why the connect fails, and what the client sees.
#[derive(Serialize)]
pub struct Failure {
    /// The `result::` reason, as `trace` and `dump stats` name it.
    pub reason: &'static str,
    pub errno: i32,
    pub error: &'static str,
}

/// What the connect resolves to.
#[derive(Default, Serialize)]
pub struct Decision {
    pub layers: Vec<Layer>,
    /// The entry that takes the connect; null when DEST is no frontend.
    pub frontend: Option<String>,
    pub name: Option<String>,
    pub service_id: Option<ServiceId>,
    /// Slots the datapath draws from (the entry's count).
    pub backend_count: u16,
    /// The frontend sends a connect to the backend with the fewest live
    /// connections (`SERVICE_FLAG_LEAST_CONNECTIONS`): the candidates'
    /// chances follow their `connections`.
    pub least_connections: bool,
    pub held: Option<Held>,
    /// The choices the client process's unconnected UDP sockets hold for
    /// the frontend: their datagrams sent with sendmsg go there while the
    /// backend stays (a connect starts over, so not a connect's).
    pub socket_choices: Vec<SocketChoice>,
    pub candidates: Vec<Candidate>,
    pub failure: Option<Failure>,
}

/// The layers, as the datapath names them in its keys.
const REDIRECT: &str = "redirect";
const BALANCING: &str = "balancing";
const SERVICE: &str = "service";
const NODE_PORT: &str = "node_port";

/// The decision for a connect to `dest` over `protocol` from a client in
/// the network namespace with `netns_cookie` (None: unknown).
pub fn decide(
    view: &View,
    dest: SocketAddr,
    protocol: Protocol,
    netns_cookie: Option<u64>,
    socket_cookies: &BTreeSet<u64>,
) -> anyhow::Result<Decision> {
    let mut decision = Decision::default();
    let Some((key, master)) = lookup(view, dest, protocol, &mut decision.layers) else {
        return Ok(decision);
    };
    decision.frontend = frontend_of(&key).map(|f| f.to_string());
    decision.name = view.name(master.service_id);
    decision.service_id = Some(master.service_id);
    decision.backend_count = master.count;
    // choice.rs `has_backends`.
    if master.count == 0 {
        let code = no_backend_result(master.flags);
        let reason = resolution_name(code, master.flags & SERVICE_FLAG_UNHEALTHY != 0);
        decision.failure = Some(Failure { reason, ..refused(code) });
        return Ok(decision);
    }
    let mut slots = slots(view, &key, &master, dest.is_ipv4());
    decision.least_connections = master.flags & SERVICE_FLAG_LEAST_CONNECTIONS != 0;
    if decision.least_connections {
        least_loaded(view, &master, &mut slots)?;
    }
    let netns_cookie = netns_cookie.filter(|_| master.flags & SERVICE_FLAG_AFFINITY != 0);
    let choices = if netns_cookie.is_some() || !socket_cookies.is_empty() {
        crate::cmd::dump::affinity::read(view)?.affinity
    } else {
        Vec::new()
    };
    decision.held = netns_cookie.and_then(|cookie| held(view, &choices, cookie, &master));
    decision.socket_choices = choices
        .iter()
        .filter(|c| c.owner_kind == "socket" && c.service_id == master.service_id)
        .filter(|c| socket_cookies.contains(&c.cookie))
        .map(|c| SocketChoice {
            cookie: c.cookie,
            backend: view.backend(c.backend_id),
            backend_id: c.backend_id,
            idle_seconds: c.idle_seconds,
        })
        .collect();
    decision.candidates = match &decision.held {
        Some(held) if held.valid => {
            // The sticky choice is taken whole: `sticky_backend` reads the
            // backends map, not a slot.
            let slots = slots.iter().find(|c| c.backend_id == held.backend_id).map_or(0, |c| c.slots);
            vec![Candidate::new(held.backend, held.backend_id, slots, 1.0, dest.is_ipv4())]
        }
        _ => slots,
    };
    // Refused whatever is drawn: every candidate fails.
    let failures: Option<Vec<u8>> = decision.candidates.iter().map(|c| c.failure_result).collect();
    if let Some(&first) = failures.as_deref().and_then(<[u8]>::first) {
        decision.failure = Some(refused(first));
    }
    Ok(decision)
}

/// frontend.rs `lookup`: a LocalRedirectPolicy's entry while it has a
/// backend (rate limit aside), a BalancingPolicy's, the Service's, else the
/// NodePort frontend of DEST's port when DEST is a node address or IPv4
/// loopback. Records each layer's part in `layers`.
fn lookup(
    view: &View,
    dest: SocketAddr,
    protocol: Protocol,
    layers: &mut Vec<Layer>,
) -> Option<(ServiceKey, ServiceEntry)> {
    let may_hold = |scope| looks_up_layer(view.layers, scope);
    let exact = |scope| ServiceKey {
        addr: addr_to_raw(dest.ip()),
        port: port_to_raw(dest.port()),
        proto: protocol.ip_proto(),
        scope,
        slot: 0,
        _pad: 0,
    };
    let mut taken: Option<(ServiceKey, ServiceEntry, String)> = None;
    let mut record = |layer: &'static str, key: ServiceKey, takes: bool, why: String| {
        let entry = view.contents.services.get(&key);
        layers.push(Layer {
            layer,
            frontend: frontend_of(&key).map_or_else(|| "?".into(), |f| f.to_string()),
            name: entry.and_then(|e| view.name(e.service_id)),
            takes,
            why,
        });
    };
    // A layer below the one that takes the connect: the datapath never looks.
    let not_reached = |taken: &(ServiceKey, ServiceEntry, String), entry: Option<ServiceEntry>| match entry {
        Some(_) => format!("not chosen: {} takes the connect first", taken.2),
        None => format!("no entry (not looked up: {} takes the connect first)", taken.2),
    };
    let taker = |layer: &str, entry: &ServiceEntry| match view.name(entry.service_id) {
        Some(name) => format!("the {layer} entry of {name}"),
        None => format!("the {layer} entry (service id {})", entry.service_id),
    };

    for (layer, scope, kind) in
        [(REDIRECT, SCOPE_REDIRECT, "LocalRedirectPolicy"), (BALANCING, SCOPE_BALANCING, "BalancingPolicy")]
    {
        let key = exact(scope);
        let entry = view.contents.services.get(&key).copied();
        let why = match (&taken, entry) {
            (Some(t), _) => not_reached(t, entry),
            (None, _) if !may_hold(scope) => format!("not looked up: the layers map says no {kind} exists"),
            (None, None) => format!("no {kind} for DEST"),
            (None, Some(master)) if scope == SCOPE_REDIRECT && master.count == 0 => {
                "gives way: it has no backend".into()
            }
            (None, Some(master)) => {
                let limit = (scope == SCOPE_REDIRECT && master.flags & SERVICE_FLAG_RATE_LIMITED != 0)
                    .then(|| view.rate_limits.get(&master.service_id))
                    .flatten();
                taken = Some((key, master, taker(layer, &master)));
                match limit {
                    Some(limit) => format!(
                        "takes it while under its rate limit of {limit} connections a second; over it, gives way to the next layer"
                    ),
                    None => "takes it".into(),
                }
            }
        };
        let takes = taken.as_ref().is_some_and(|t| t.0 == key);
        record(layer, key, takes, why);
    }

    let key = exact(SCOPE_SERVICE);
    let entry = view.contents.services.get(&key).copied();
    let why = match (&taken, entry) {
        (Some(t), _) => not_reached(t, entry),
        (None, None) => "no Service frontend at DEST".into(),
        (None, Some(master)) => {
            taken = Some((key, master, taker(SERVICE, &master)));
            "takes it".into()
        }
    };
    let takes = taken.as_ref().is_some_and(|t| t.0 == key);
    record(SERVICE, key, takes, why);

    // Its NodePort frontend: the any-address of DEST's family, as the
    // datapath tells it (a mapped IPv4 address is IPv4).
    let dest_addr = addr_to_raw(dest.ip());
    let v4 = is_v4_mapped(&dest_addr);
    let key = ServiceKey { addr: if v4 { V4_MAPPED_PREFIX } else { [0; 4] }, ..exact(SCOPE_SERVICE) };
    let entry = view.contents.services.get(&key).copied();
    let node_key = node_address_key(&dest_addr);
    let loopback = node_key == NodeAddressKey::IPV4_LOOPBACK;
    let why = match (&taken, entry) {
        (Some(t), _) => not_reached(t, entry),
        (None, _) if !view.contents.node_addresses.contains(&node_key) && loopback => {
            "not looked up: node ports do not answer on IPv4 loopback (--nodeport-addresses)".into()
        }
        (None, _) if !view.contents.node_addresses.contains(&node_key) => {
            "not looked up: DEST is not a node address (nodes map)".into()
        }
        (None, None) => format!("no NodePort frontend on port {}", dest.port()),
        (None, Some(master)) => {
            taken = Some((key, master, taker(NODE_PORT, &master)));
            format!("takes it: DEST is {}", if loopback { "IPv4 loopback" } else { "a node address" })
        }
    };
    let takes = taken.as_ref().is_some_and(|t| t.0 == key);
    record(NODE_PORT, key, takes, why);
    taken.map(|(key, master, _)| (key, master))
}

/// choice.rs `random_slot`: the backends of slots 1..=count, each with its
/// share of the slots. A missing slot, or one without a backend, fails
/// (`stale`); an IPv6 backend of an IPv4 DEST too (`family`, sock.rs).
fn slots(view: &View, key: &ServiceKey, master: &ServiceEntry, v4_dest: bool) -> Vec<Candidate> {
    let mut by_backend: BTreeMap<(BackendId, Option<SocketAddr>), u16> = BTreeMap::new();
    // Every slot a draw can give (`slot_of` is the datapath's draw).
    let drawable = (0..u32::from(master.count)).filter_map(|random| slot_of(random, master.count));
    for slot in drawable {
        let entry = view.contents.services.get(&ServiceKey { slot, ..*key });
        let backend = entry
            .filter(|e| e.backend.proto != balctl_common::Backend::NONE.proto)
            .map(|e| SocketAddr::new(raw_to_addr(e.backend.addr), raw_to_port(e.backend.port)));
        *by_backend.entry((entry.map_or(0, |e| e.backend_id), backend)).or_default() += 1;
    }
    by_backend
        .into_iter()
        .map(|((backend_id, backend), slots)| {
            Candidate::new(backend, backend_id, slots, f64::from(slots) / f64::from(master.count), v4_dest)
        })
        .collect()
}

/// choice.rs `least_loaded_slot`: a connect goes to a backend with the
/// fewest live connections; the least loaded share the chance by their
/// slots (exactly so for a frontend of at most `LEAST_CONNECTIONS_WINDOW`
/// slots, which the datapath compares all of; for a larger one, the
/// least loaded of a window from a random slot: nearly so).
fn least_loaded(view: &View, master: &ServiceEntry, candidates: &mut [Candidate]) -> anyhow::Result<()> {
    let counters = crate::bpf::counters::CounterMaps::open(view.pins)?;
    for candidate in candidates.iter_mut() {
        let membership =
            balctl_common::MembershipKey { service_id: master.service_id, backend_id: candidate.backend_id };
        let cell = view.contents.membership.get(&membership).copied().unwrap_or(balctl_common::NO_CELL);
        candidate.connections = Some(counters.live(cell)?);
    }
    let least = candidates.iter().filter_map(|c| c.connections).min().unwrap_or(0);
    let slots: u32 =
        (candidates.iter()).filter(|c| c.connections == Some(least)).map(|c| u32::from(c.slots)).sum();
    for candidate in candidates.iter_mut() {
        candidate.chance = if candidate.connections == Some(least) {
            f64::from(candidate.slots) / f64::from(slots.max(1))
        } else {
            0.0
        };
    }
    Ok(())
}

/// The sticky choice of the client's network namespace for the frontend
/// with `master` (as `dump affinity` reads them), and whether choice.rs
/// `sticky_backend` keeps it: within the timeout, backend still a member.
fn held(view: &View, choices: &[AffinityRecord], netns_cookie: u64, master: &ServiceEntry) -> Option<Held> {
    let choice = choices.iter().find(|c| {
        // `dump affinity` names STICKY_NETNS owners `netns`.
        c.owner_kind == "netns" && c.cookie == netns_cookie && c.service_id == master.service_id
    })?;
    let timeout = master.affinity_timeout_sec;
    let member = view.contents.membership.contains_key(&balctl_common::MembershipKey {
        service_id: master.service_id,
        backend_id: choice.backend_id,
    });
    let backend = view.backend(choice.backend_id);
    let (valid, why) = if choice.idle_seconds > f64::from(timeout) {
        (false, format!("expired: idle {:.1}s, longer than the timeout of {timeout}s", choice.idle_seconds))
    } else if !member || backend.is_none() {
        (false, "its backend left the frontend".to_owned())
    } else {
        (true, format!("the connect keeps it (idle {:.1}s of {timeout}s) and renews it", choice.idle_seconds))
    };
    Some(Held {
        backend,
        backend_id: choice.backend_id,
        idle_seconds: choice.idle_seconds,
        timeout_seconds: timeout,
        valid,
        why,
    })
}

/// A failure as the client sees it: sock.rs refuses every one with
/// ECONNREFUSED.
fn refused(reason: u8) -> Failure {
    Failure { reason: result_name(reason), errno: ECONNREFUSED, error: "ECONNREFUSED" }
}
