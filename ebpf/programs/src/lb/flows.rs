//! North-south flows: where each flow from outside the node goes (the
//! flows map, keyed by the client's packet as it arrives) and what its
//! replies are rewritten to (flow_replies, keyed by the reply as it comes
//! back). A flow keeps its backend while it is not timed out and the
//! backend is still a member of its frontend; then it chooses again.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use balctl_common::{
    FLOW_CLOSING, FLOW_OPEN, Flow, FlowKey, FlowReply, MembershipKey, SERVICE_FLAG_MAGLEV, SNAT_PORT_MAX,
    SNAT_PORT_MIN, ServiceEntry, ServiceKey, flow_last_seen_ns, flow_reply_key, flow_timeout_ns,
};

use super::{
    addr::Endpoint,
    choice::{Choice, has_backends, random_slot},
    clock::{NSEC_PER_SEC, coarse_now},
    maglev,
    maps::{FLOW_REPLIES, FLOWS, MEMBERSHIP},
};

/// Ports tried for a new SNATed flow before giving up on it.
const SNAT_PORT_TRIES: u32 = 16;

/// The flow of the client's packet `key` into `flow`, if it is known and
/// still valid, its use recorded at `now` (and its closing, for a FIN or
/// RST). A flow that has timed out (no packet from its client nor its
/// backend for its timeout) or whose backend left the frontend gives up
/// its reply entry and is chosen again. The 5-tuple names the frontend, so
/// the flow's is the packet's: a frontend that went took its memberships
/// with it, and one that came back has another id.
#[inline(never)]
pub fn follow(key: &FlowKey, now: u64, closes: bool, flow: &mut Flow) -> bool {
    let Some(entry) = FLOWS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: `entry` points into the map's value for the program's run;
    // it is copied whole, then single fields are written.
    unsafe {
        let copy = *entry;
        let timeout = flow_timeout_ns(copy.state, key.proto);
        let member = MembershipKey { service_id: copy.service_id, backend_id: copy.backend_id };
        if (now.saturating_sub(copy.last_seen_ns) > timeout
            && !replied_since(key, &copy, now.wrapping_sub(timeout)))
            || MEMBERSHIP.get(&member).is_none()
        {
            if copy.snat_port != 0 && own_reply(key, &copy).is_some() {
                // Its SNAT port is free again (unless another flow has
                // taken it over already, whose entry it now is).
                let _ = FLOW_REPLIES.remove(&flow_reply_key(key, &copy));
            }
            return false;
        }
        // Written at most once a second: a busy flow does not keep
        // dirtying its entry's cache line on every CPU.
        if now.saturating_sub(copy.last_seen_ns) > NSEC_PER_SEC {
            (*entry).last_seen_ns = now;
        }
        if closes && copy.state == FLOW_OPEN {
            (*entry).state = FLOW_CLOSING;
        }
        *flow = copy;
    }
    true
}

/// Whether the backend of the flow `key` (going as `flow` says) has
/// replied since `since`: only looked up for a flow whose client has been
/// silent for its timeout.
#[inline(never)]
fn replied_since(key: &FlowKey, flow: &Flow, since: u64) -> bool {
    own_reply(key, flow).is_some_and(|reply| reply.last_seen_ns.wrapping_sub(since) as i64 >= 0)
}

/// The flow_replies entry of the flow `key` (going as `flow` says), if it
/// is still this flow's: once the flow has ended, another flow may have
/// taken over its SNAT port, and the entry then names that flow's client.
#[inline(always)]
fn own_reply<'a>(key: &FlowKey, flow: &Flow) -> Option<&'a FlowReply> {
    // SAFETY: read in place, for the program's run.
    let reply = unsafe { FLOW_REPLIES.get(&flow_reply_key(key, flow)) }?;
    let own = reply.client == key.saddr
        && reply.client_port == key.sport
        && reply.frontend == key.daddr
        && reply.frontend_port == key.dport;
    own.then_some(reply)
}

/// The backend a new flow `key` to `frontend` (with its `master` entry)
/// goes to: its Maglev entry when the frontend has the flag, else (or when
/// the table is being rewritten) a random slot; or why there is none.
#[inline(always)]
pub fn choose(frontend: &ServiceKey, master: &ServiceEntry, key: &FlowKey) -> Result<Choice, u8> {
    // SAFETY: plain helper call; one per new flow. Drawn first: drawn
    // after the Maglev lookup, LLVM left a register uninitialised on the
    // no-backend path, which the verifier refused in from_device.
    let random = unsafe { bpf_get_prandom_u32() };
    has_backends(master)?;
    if master.flags & SERVICE_FLAG_MAGLEV != 0
        && let Ok(choice) = maglev::backend(master, key)
    {
        return Ok(choice);
    }
    random_slot(frontend, master, random)
}

/// A new flow `key` to the backend of `choice`, from the frontend with
/// `service_id`, at `now`: not SNATed yet (`open_snat` does that).
#[inline(always)]
pub fn new_flow(choice: &Choice, service_id: u32, now: u64) -> Flow {
    Flow {
        backend: choice.backend.addr,
        snat_addr: [0; 4],
        backend_port: choice.backend.port,
        snat_port: 0,
        service_id,
        backend_id: choice.backend_id,
        state: FLOW_OPEN,
        _pad: [0; 3],
        last_seen_ns: now,
    }
}

/// Records a new flow to a backend on this node, or of
/// externalTrafficPolicy Local: only DNATed, so its replies come back from
/// the backend to the client and leave through a device, where
/// `balctl_to_device` shows them from the frontend again.
#[inline(never)]
pub fn open_dnat(key: &FlowKey, flow: &Flow) {
    // A full LRU map evicts the least recently used: the new flow is kept.
    let _ = FLOW_REPLIES.insert(&flow_reply_key(key, flow), &reply_of(key, flow), 0);
    let _ = FLOWS.insert(key, flow, 0);
}

/// Records a new flow to a backend on another node, SNATed from the
/// node's address `flow.snat_addr` on the path to the backend and from a
/// port of the reserved range that no other flow to that backend holds
/// (reserved by inserting its reply entry, which fails for a port taken).
/// False when every port tried was taken.
#[inline(never)]
pub fn open_snat(key: &FlowKey, flow: &mut Flow) -> bool {
    let reply = reply_of(key, flow);
    let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    for _ in 0..SNAT_PORT_TRIES {
        // SAFETY: plain helper call.
        let port = (SNAT_PORT_MIN as u32 + unsafe { bpf_get_prandom_u32() } % range) as u16;
        flow.snat_port = port.to_be();
        let at = flow_reply_key(key, flow);
        // A port whose flow has ended is free again: its reply entry is
        // only removed when the LRU map needs the room, so taking it over
        // is what gives the port back.
        if FLOW_REPLIES.insert(&at, &reply, u64::from(BPF_NOEXIST)).is_ok()
            || (!snat_port_in_use(&at, flow.last_seen_ns) && FLOW_REPLIES.insert(&at, &reply, 0).is_ok())
        {
            let _ = FLOWS.insert(key, flow, 0);
            return true;
        }
    }
    false
}

/// Whether the SNAT port of the reply key `at` still belongs to a flow at
/// `now`: the flow its reply entry names is in the flows map, still goes
/// to that backend from that port, and has not timed out (counted from
/// its client's or its backend's last packet, as `follow` counts it; a
/// closed TCP flow 10 s after its FIN or RST).
#[inline(always)]
fn snat_port_in_use(at: &FlowKey, now: u64) -> bool {
    // Read in place, not copied: this runs deep in the packet program's
    // calls, whose frames share 512 bytes.
    // SAFETY: the entries are read field by field; a concurrent update can
    // at worst make a port look in use, and another is tried.
    let Some(owner) = (unsafe { FLOW_REPLIES.get(at) }) else {
        return false;
    };
    let forward = FlowKey {
        saddr: owner.client,
        daddr: owner.frontend,
        sport: owner.client_port,
        dport: owner.frontend_port,
        proto: at.proto,
        _pad: [0; 3],
    };
    // SAFETY: as above.
    let Some(flow) = (unsafe { FLOWS.get(&forward) }) else {
        return false;
    };
    flow.snat_port == at.dport
        && flow.backend == at.saddr
        && flow.backend_port == at.sport
        && now.saturating_sub(flow_last_seen_ns(flow, Some(owner))) <= flow_timeout_ns(flow.state, at.proto)
}

/// What the packet `key` is a reply to, if it is one of a flow.
#[inline(always)]
pub fn reply(key: &FlowKey) -> Option<FlowReply> {
    // SAFETY: read once, whole.
    unsafe { FLOW_REPLIES.get(key) }.copied()
}

/// What the TCP or UDP packet `key` is a reply to, if it is one of a flow,
/// its backend's use recorded (which keeps the flow alive while the
/// backend sends: a stream to a silent client), and for a FIN or RST
/// (`closes`) the flow's closing, as the client's would.
#[inline(never)]
pub fn reply_seen(key: &FlowKey, closes: bool, reply: &mut FlowReply) -> bool {
    let Some(entry) = FLOW_REPLIES.get_ptr_mut(key) else {
        return false;
    };
    // The clock only for a reply: every packet leaving a device is looked
    // up here, most of them the node's own.
    let now = coarse_now();
    // SAFETY: `entry` points into the map's value for the program's run;
    // it is copied whole, then one field is written.
    unsafe {
        *reply = *entry;
        // At most once a second, as the client's side.
        if now.saturating_sub(reply.last_seen_ns) > NSEC_PER_SEC {
            (*entry).last_seen_ns = now;
        }
    }
    if closes {
        close(key, reply);
    }
    true
}

/// Marks the flow that the reply `key` (its entry `reply`) belongs to as
/// closing.
#[inline(never)]
fn close(key: &FlowKey, reply: &FlowReply) {
    let forward = FlowKey {
        saddr: reply.client,
        daddr: reply.frontend,
        sport: reply.client_port,
        dport: reply.frontend_port,
        proto: key.proto,
        _pad: [0; 3],
    };
    let Some(flow) = FLOWS.get_ptr_mut(&forward) else {
        return;
    };
    // SAFETY: `flow` points into the map's value for the program's run;
    // the flow is only marked when the reply is from its backend.
    unsafe {
        if (*flow).backend == key.saddr && (*flow).backend_port == key.sport {
            (*flow).state = FLOW_CLOSING;
        }
    }
}

/// Whether `reply`, found for the packet `key`, is of a SNATed flow: the
/// packet is not addressed to the client itself.
#[inline(always)]
pub fn is_snat(reply: &FlowReply, key: &FlowKey) -> bool {
    reply.client != key.daddr || reply.client_port != key.dport
}

/// Whether `port` (network order) may be a SNATed flow's: replies to other
/// ports skip the flow_replies lookup on the way in.
#[inline(always)]
pub fn in_snat_range(port: u16) -> bool {
    (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&u16::from_be(port))
}

/// Where the flow sends the client's packets.
#[inline(always)]
pub fn backend_of(flow: &Flow) -> Endpoint {
    Endpoint { addr: flow.backend, port: flow.backend_port }
}

/// The SNAT source of a SNATed flow.
#[inline(always)]
pub fn snat_of(flow: &Flow) -> Endpoint {
    Endpoint { addr: flow.snat_addr, port: flow.snat_port }
}

/// What replies to the client's packet `key` of the new `flow` are
/// rewritten to: from the address and port it called, to it.
#[inline(always)]
fn reply_of(key: &FlowKey, flow: &Flow) -> FlowReply {
    FlowReply {
        frontend: key.daddr,
        client: key.saddr,
        frontend_port: key.dport,
        client_port: key.sport,
        service_id: flow.service_id,
        last_seen_ns: flow.last_seen_ns,
    }
}
