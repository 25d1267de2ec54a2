//! `dump flows`: the north-south flows the tc programs keep (the flows
//! map): who called which external frontend, the backend the flow goes
//! to, the node address and port it is SNATed from (a backend on another
//! node), and how long it has been idle.

use std::net::SocketAddr;

use anyhow::Result;
use aya::maps::{HashMap, IterableMap as _, MapData};
use balctl_common::{
    FLOW_CLOSING, Flow, FlowKey, FlowReply, flow_last_seen_ns, flow_reply_key, flow_timeout_ns, map_names,
};
use serde::Serialize;

use super::{Tables, View, backend_cell, seconds};
use crate::{
    bpf::{
        batch,
        maps::{BackendId, ServiceId},
        pins::open_map,
        sys::monotonic_ns,
    },
    image::raw::{raw_to_addr, raw_to_port},
    model::Protocol,
    output::{Listing, TableStyle, column, wide},
};

#[derive(Serialize)]
pub struct Flows {
    flows: Vec<FlowRecord>,
}

#[derive(Serialize)]
struct FlowRecord {
    /// The packet's source outside the node: `IP:PORT`.
    client: SocketAddr,
    /// What the client called, `IP:PORT/PROTO`: for a node port, the node
    /// address it was sent to; else the LoadBalancer or external IP.
    frontend: String,
    /// Where the flow goes: `IP:PORT`.
    backend: SocketAddr,
    backend_id: BackendId,
    /// The node address and port the flow is SNATed from (a backend on
    /// another node); null when it is only DNATed.
    snat: Option<SocketAddr>,
    /// `open`, `closing` (a FIN or RST seen), or `expired` (idle past its
    /// timeout: the next packet chooses again; the LRU map drops it when
    /// it needs the room).
    state: &'static str,
    /// Seconds since the flow's last packet, from its client or its backend
    /// (to within one second: the datapath records a busy flow's use once a
    /// second).
    idle_seconds: f64,
    /// The external frontend's id and rule.
    service_id: ServiceId,
    name: Option<String>,
}

/// The flows of the frontends the filters keep (`--vip` matches the
/// address called too: a node port's node address), by frontend and
/// client.
pub fn read(view: &View) -> Result<Flows> {
    let map: HashMap<MapData, FlowKey, Flow> = open_map(view.pins, map_names::FLOWS)?;
    let replies: HashMap<MapData, FlowKey, FlowReply> = open_map(view.pins, map_names::FLOW_REPLIES)?;
    // The datapath's clock is CLOCK_MONOTONIC at its last tick (rarely
    // the one before, `lb::clock`): at most two ticks behind this one.
    let now = monotonic_ns();
    let mut flows = Vec::new();
    batch::for_each_typed(map.map(), |key: FlowKey, flow: Flow| {
        let Some(protocol) = Protocol::from_ip_proto(key.proto) else { return };
        let called = SocketAddr::new(raw_to_addr(key.daddr), raw_to_port(key.dport));
        let name = view.name(flow.service_id);
        let by_address =
            view.vip.is_some_and(|vip| vip.matches_address(called)) && view.owners.keeps(name.as_deref());
        if !by_address && !view.shows_service(flow.service_id) {
            return;
        }
        let reply = replies.get(&flow_reply_key(&key, &flow), 0).ok();
        let idle_ns = now.saturating_sub(flow_last_seen_ns(&flow, reply.as_ref()));
        flows.push(FlowRecord {
            client: SocketAddr::new(raw_to_addr(key.saddr), raw_to_port(key.sport)),
            frontend: format!("{called}/{protocol}"),
            backend: SocketAddr::new(raw_to_addr(flow.backend), raw_to_port(flow.backend_port)),
            backend_id: flow.backend_id,
            snat: (flow.snat_port != 0)
                .then(|| SocketAddr::new(raw_to_addr(flow.snat_addr), raw_to_port(flow.snat_port))),
            state: state(&key, &flow, idle_ns),
            idle_seconds: seconds(idle_ns),
            service_id: flow.service_id,
            name,
        });
    })?;
    flows.sort_by(|a, b| (&a.frontend, a.client).cmp(&(&b.frontend, b.client)));
    Ok(Flows { flows })
}

/// The flow's state as the datapath treats its next packet.
fn state(key: &FlowKey, flow: &Flow, idle_ns: u64) -> &'static str {
    if idle_ns > flow_timeout_ns(flow.state, key.proto) {
        "expired"
    } else if flow.state == FLOW_CLOSING {
        "closing"
    } else {
        "open"
    }
}

impl Tables for Flows {
    fn print_table(&self, style: TableStyle) {
        let columns = [
            column("CLIENT"),
            column("FRONTEND"),
            column("BACKEND"),
            column("SNAT"),
            column("STATE"),
            column("IDLE"),
            wide("SERVICE ID"),
            column("NAME"),
        ];
        let mut rows = Listing::new(style, &columns);
        for flow in &self.flows {
            rows.add_row([
                flow.client.to_string(),
                flow.frontend.clone(),
                backend_cell(flow.backend_id, Some(flow.backend)),
                flow.snat.map_or_else(|| "-".to_owned(), |snat| snat.to_string()),
                flow.state.to_owned(),
                format!("{:.1}s", flow.idle_seconds),
                flow.service_id.to_string(),
                flow.name.clone().unwrap_or_else(|| "?".into()),
            ]);
        }
        rows.print();
    }
}
