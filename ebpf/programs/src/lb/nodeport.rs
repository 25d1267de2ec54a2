//! North-south translation, as the tc programs on the node's devices apply
//! it: a packet from outside for an external frontend (a node port, a
//! LoadBalancer IP, an external IP) is DNATed to a backend, and also
//! SNATed to the node's address and forwarded when the backend is on
//! another node; replies, and ICMP errors about the flow, are translated
//! back so the client sees only the address it called.
//!
//! Unlike the rest of the library, the steps a packet takes here are
//! functions of their own (`inline(never)`: BPF-to-BPF calls), which the
//! program calls one after the other with what they share (`Nat`) in the
//! per-CPU nodeport_scratch map: inlined into one function, or with `Nat`
//! in the program's frame, their variables exceed the 512-byte stack that
//! the deepest chain of calls shares.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use balctl_common::{
    BACKEND_FLAG_LOCAL, Flow, FlowKey, FlowReply, OP_PACKET, SERVICE_FLAG_LOCAL_ONLY, ServiceEntry,
    ServiceKey,
};

use super::{
    addr::{Endpoint, is_v4_mapped},
    choice::Choice,
    clock::coarse_now,
    counters::count,
    flows::{self, backend_of, is_snat, snat_of},
    forward::{redirect, route},
    frontend::{self, admits, external_frontend},
    icmp,
    maps::NODEPORT_SCRATCH,
    packet::{Family, IcmpError, Kind, Packet, Side, classify, parse_icmp_error, parse_transport},
    trace::{Caller, trace},
};

/// What the steps of a packet's translation share: an entry of the
/// per-CPU nodeport_scratch map, one per program (`FROM_DEVICE`,
/// `TO_DEVICE`; a program runs to its end on its CPU before another runs
/// there). Each step writes what it reads later; nothing is kept between
/// packets.
pub struct Nat {
    packet: Packet,
    /// The external frontend it is for, and its master entry (read only
    /// for a packet of no known flow, which opens one).
    frontend: ServiceKey,
    master: ServiceEntry,
    /// Its flow; or, for a SNATed flow's reply, what it is rewritten to.
    flow: Flow,
    reply: FlowReply,
    error: IcmpError,
}

/// The entries of the nodeport_scratch map.
pub const FROM_DEVICE: u32 = 0;
pub const TO_DEVICE: u32 = 1;
pub const SCRATCH_ENTRIES: u32 = 2;

/// The program's `Nat`, in the scratch map.
#[inline(always)]
fn scratch<'a>(program: u32) -> Option<&'a mut Nat> {
    // SAFETY: the entry is this CPU's, used by this program alone while it
    // runs, and stays valid for the whole run.
    NODEPORT_SCRATCH.get_ptr_mut(program).map(|nat| unsafe { &mut *nat })
}

/// Where `arriving` leaves a packet.
enum Arrival {
    /// For no frontend: it passes untouched.
    Pass,
    /// The reply of a SNATed flow (`Nat::reply`).
    SnatReply,
    /// The client's packet to an external frontend (`Nat::frontend`).
    ToFrontend,
}

/// Whether the client's packet to an external frontend, of no known flow,
/// opens one (`admit`).
enum Admission {
    /// Into `Nat::master`.
    Open,
    /// Its index entry names a master that is missing: no frontend.
    Pass,
    /// A client outside the frontend's source ranges.
    Drop,
}

/// A packet arriving on a device: the reply of a SNATed flow is translated
/// back and forwarded to the client; a packet for an external frontend is
/// translated to its flow's backend; an ICMP error about a SNATed flow is
/// translated back to the client; anything else passes untouched.
#[inline(always)]
pub fn from_device(ctx: &TcContext) -> i32 {
    let kind = classify(ctx);
    if let Kind::Other = kind {
        return TC_ACT_OK;
    }
    let Some(nat) = scratch(FROM_DEVICE) else {
        return TC_ACT_OK;
    };
    if let Kind::Icmp = kind {
        return icmp_error_to_client(ctx, nat, true);
    }
    match arriving(ctx, nat) {
        Arrival::Pass => return TC_ACT_OK,
        Arrival::SnatReply => return snat_reply(ctx, nat),
        Arrival::ToFrontend => {}
    }
    // A known flow's packet goes by its flow: neither the master entry nor
    // the source ranges are looked up again (as kube-proxy's KUBE-FW
    // chain, which only a connection's first packet walks).
    if !follow(nat) {
        match admit(nat) {
            Admission::Open => {}
            Admission::Pass => return TC_ACT_OK,
            Admission::Drop => return TC_ACT_SHOT,
        }
        if !open(ctx, nat) {
            return TC_ACT_SHOT;
        }
    }
    to_backend(ctx, nat)
}

/// A packet leaving through a device: the reply of a flow that was only
/// DNATed is shown from the frontend again; so is an ICMP error about
/// such a flow; anything else passes untouched.
#[inline(always)]
pub fn to_device(ctx: &TcContext) -> i32 {
    let kind = classify(ctx);
    if let Kind::Other = kind {
        return TC_ACT_OK;
    }
    let Some(nat) = scratch(TO_DEVICE) else {
        return TC_ACT_OK;
    };
    match kind {
        Kind::Icmp => icmp_error_to_client(ctx, nat, false),
        _ => leaving(ctx, nat),
    }
}

/// Reads a TCP or UDP packet arriving on a device into `nat` and says what
/// it is: the reply of a SNATed flow (only packets to a SNAT port are
/// looked up as one), the client's packet to an external frontend, or
/// neither.
#[inline(never)]
fn arriving(ctx: &TcContext, nat: &mut Nat) -> Arrival {
    if !parse_transport(ctx, &mut nat.packet) {
        return Arrival::Pass;
    }
    let packet = &nat.packet;
    if flows::in_snat_range(packet.dport) {
        let key = packet.key();
        if flows::reply_seen(&key, packet.closes(), &mut nat.reply) && is_snat(&nat.reply, &key) {
            return Arrival::SnatReply;
        }
    }
    let Some(frontend) = external_frontend(&packet.destination(), packet.ip.proto) else {
        return Arrival::Pass;
    };
    nat.frontend = frontend;
    Arrival::ToFrontend
}

/// The client's packet's flow, if it is known and still valid, into
/// `nat.flow`.
#[inline(never)]
fn follow(nat: &mut Nat) -> bool {
    let packet = &nat.packet;
    flows::follow(&packet.key(), coarse_now(), packet.closes(), &mut nat.flow)
}

/// Whether the client's packet to `nat.frontend` may open a flow: its
/// master entry into `nat.master`, and the client within its source
/// ranges (loadBalancerSourceRanges) if it has any.
#[inline(never)]
fn admit(nat: &mut Nat) -> Admission {
    let Some(master) = frontend::master(&nat.frontend) else {
        return Admission::Pass;
    };
    if !admits(&master, &nat.packet.ip.src) {
        return Admission::Drop;
    }
    nat.master = master;
    Admission::Open
}

/// Opens the flow of the client's packet into `nat.flow`: chooses its
/// backend (counted as the frontend's resolution, or failure, and traced:
/// only a flow's first packet is), and for a backend on another node the
/// SNAT source on the path to it. False drops the packet: no backend, no
/// route, or no free SNAT port.
#[inline(never)]
fn open(ctx: &TcContext, nat: &mut Nat) -> bool {
    let key = nat.packet.key();
    let master = &nat.master;
    let choice = flows::choose(&nat.frontend, master, &key);
    count(master.cell, &choice);
    let now = coarse_now();
    trace_open(&key, master, &choice, now);
    let Ok(choice) = choice else {
        return false;
    };
    // Validation keeps a frontend's backends in its family.
    if is_v4_mapped(&choice.backend.addr) != (nat.packet.ip.family == Family::V4) {
        return false;
    }
    nat.flow = flows::new_flow(&choice, master.service_id, now);
    let local = master.flags & SERVICE_FLAG_LOCAL_ONLY != 0 || choice.backend.flags & BACKEND_FLAG_LOCAL != 0;
    if local {
        flows::open_dnat(&key, &nat.flow);
        return true;
    }
    let Some(path) = route(ctx, &nat.packet.ip, &choice.backend.addr) else {
        return false;
    };
    nat.flow.snat_addr = path.source;
    flows::open_snat(&key, &mut nat.flow)
}

/// The trace event of the flow `key` opening with `choice`: a call of
/// its own, so that the event is not in the same frame as the SNAT's keys
/// (the frames of a chain of calls share 512 bytes).
#[inline(never)]
fn trace_open(key: &FlowKey, master: &ServiceEntry, choice: &Result<Choice, u8>, now: u64) {
    let called = Endpoint { addr: key.daddr, port: key.dport };
    trace(&called, key.proto, OP_PACKET, master, choice, now, &Client(key));
}

/// A packet's trace events name its client, the packet's source (`key`:
/// the packet as it arrived); no task sent it.
struct Client<'a>(&'a FlowKey);

impl Caller for Client<'_> {
    #[inline(always)]
    fn pid_tgid(&self) -> u64 {
        0
    }

    #[inline(always)]
    fn cgroup_id(&self) -> u64 {
        0
    }

    #[inline(always)]
    fn name(&self, _name: &mut [u8; 16]) {}

    #[inline(always)]
    fn client(&self) -> Endpoint {
        Endpoint { addr: self.0.saddr, port: self.0.sport }
    }
}

/// The client's packet of `nat.flow`: DNATed and handed to the stack for a
/// backend on this node; SNATed, DNATed and forwarded for another, or,
/// too big for the link there, answered (the stack answers for a backend
/// on this node).
#[inline(never)]
fn to_backend(ctx: &TcContext, nat: &mut Nat) -> i32 {
    let (packet, flow) = (&mut nat.packet, &nat.flow);
    if flow.snat_port == 0 {
        return match packet.rewrite(ctx, Side::Destination, &backend_of(flow)) {
            Ok(()) => TC_ACT_OK,
            Err(()) => TC_ACT_SHOT,
        };
    }
    let Some(path) = route(ctx, &packet.ip, &flow.backend) else {
        return TC_ACT_SHOT;
    };
    if let Some(mtu) = path.too_big {
        return icmp::too_big(ctx, &packet.ip, mtu.get());
    }
    if packet.rewrite(ctx, Side::Destination, &backend_of(flow)).is_err()
        || packet.rewrite(ctx, Side::Source, &snat_of(flow)).is_err()
    {
        return TC_ACT_SHOT;
    }
    redirect(ctx, &packet.ip, &path)
}

/// The reply of a SNATed flow (`nat.reply`), from the backend to the
/// node's SNAT port: from the frontend the client called, to the client,
/// forwarded to it; or, too big for the link toward the client, answered
/// to the backend (from the SNAT address it sent to).
#[inline(never)]
fn snat_reply(ctx: &TcContext, nat: &mut Nat) -> i32 {
    let (packet, reply) = (&mut nat.packet, &nat.reply);
    let Some(path) = route(ctx, &packet.ip, &reply.client) else {
        return TC_ACT_SHOT;
    };
    if let Some(mtu) = path.too_big {
        return icmp::too_big(ctx, &packet.ip, mtu.get());
    }
    let frontend = Endpoint { addr: reply.frontend, port: reply.frontend_port };
    let client = Endpoint { addr: reply.client, port: reply.client_port };
    if packet.rewrite(ctx, Side::Source, &frontend).is_err()
        || packet.rewrite(ctx, Side::Destination, &client).is_err()
    {
        return TC_ACT_SHOT;
    }
    redirect(ctx, &packet.ip, &path)
}

/// A TCP or UDP packet leaving through a device: the reply of a flow that
/// was only DNATed gets the frontend as its source.
#[inline(never)]
fn leaving(ctx: &TcContext, nat: &mut Nat) -> i32 {
    let packet = &mut nat.packet;
    if !parse_transport(ctx, packet) {
        return TC_ACT_OK;
    }
    let key = packet.key();
    let reply = &mut nat.reply;
    if flows::reply_seen(&key, packet.closes(), reply) && !is_snat(reply, &key) {
        let frontend = Endpoint { addr: reply.frontend, port: reply.frontend_port };
        if packet.rewrite(ctx, Side::Source, &frontend).is_err() {
            return TC_ACT_SHOT;
        }
    }
    TC_ACT_OK
}

/// An ICMP error about a packet of a flow travelling to its backend (the
/// quoted packet), on its way back towards the client: arriving on a
/// device (`arriving`) it is about a SNATed flow and is addressed to the
/// node's SNAT address; leaving through one, about a flow that was only
/// DNATed. It is made to quote the client's packet as the client sent it,
/// addressed to the client, and from the frontend when the backend itself
/// sent it; so the client's path MTU discovery sees "fragmentation
/// needed" and "packet too big". Errors about anything else pass.
#[inline(never)]
fn icmp_error_to_client(ctx: &TcContext, nat: &mut Nat, arriving: bool) -> i32 {
    let error = &mut nat.error;
    if !parse_icmp_error(ctx, error) {
        return TC_ACT_OK;
    }
    let quoted = error.inner.key();
    // The quoted packet went from the client side to the backend: its reply
    // has the key reversed.
    let reply_key = FlowKey {
        saddr: quoted.daddr,
        daddr: quoted.saddr,
        sport: quoted.dport,
        dport: quoted.sport,
        proto: quoted.proto,
        _pad: [0; 3],
    };
    let Some(reply) = flows::reply(&reply_key) else {
        return TC_ACT_OK;
    };
    if is_snat(&reply, &reply_key) != arriving {
        return TC_ACT_OK;
    }
    let frontend = Endpoint { addr: reply.frontend, port: reply.frontend_port };
    let client = Endpoint { addr: reply.client, port: reply.client_port };
    let from_backend = error.outer.src == quoted.daddr;
    let translated = error.rewrite_inner(ctx, Side::Destination, &frontend).is_ok()
        && error.rewrite_inner(ctx, Side::Source, &client).is_ok()
        && (!from_backend || error.rewrite_outer(ctx, Side::Source, &frontend.addr).is_ok())
        && error.rewrite_outer(ctx, Side::Destination, &client.addr).is_ok();
    if !translated {
        return TC_ACT_SHOT;
    }
    if !arriving {
        return TC_ACT_OK;
    }
    match route(ctx, &error.outer, &client.addr) {
        Some(path) => redirect(ctx, &error.outer, &path),
        None => TC_ACT_SHOT,
    }
}
