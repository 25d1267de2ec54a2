// The datapath's code, shared by main.rs and untraced.rs (which differ
// only in `TRACING`); see main.rs for what it does.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_NOEXIST, bpf_sock_addr},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_netns_cookie, bpf_get_prandom_u32,
        bpf_get_socket_cookie, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_set_retval, generated,
    },
    macros::{cgroup_sock, cgroup_sock_addr, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{SockAddrContext, SockContext},
};
use balctl_common::{
    Addr, AffinityKey, AffinityValue, Backend, DatapathStats, ECONNREFUSED, EVENTS_BYTES, GAVE_WAY_NO_BACKEND,
    GAVE_WAY_RATE_LIMIT, IPPROTO_TCP, IPPROTO_UDP, LAYERS_KNOWN, MembershipKey, NodeAddressKey, OP_CONNECT,
    OP_SENDMSG, RateLimit, RevNatKey, RevNatValue, SCOPE_BALANCING, SCOPE_REDIRECT, SCOPE_SERVICE,
    SERVICE_FLAG_AFFINITY, SERVICE_FLAG_LOCAL_ONLY, SERVICE_FLAG_RATE_LIMITED, SOCKET_FURTHER_FRONTENDS,
    SOCKET_UNCONNECTED, SOCKET_WAYS, STICKY_NETNS, STICKY_SOCKET, ServiceEntry, ServiceKey, ServiceStats,
    SocketSet, SocketTranslation, TRACE_ANY, TRACE_LEASE_ENTRIES, TraceEvent, default_capacity, layer_bit,
    result,
};

#[map(name = "services")]
static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::with_max_entries(default_capacity::SERVICES, 0);

#[map(name = "backends")]
static BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(default_capacity::BACKENDS, 0);

// Sized like the services map: one entry per backend slot.
#[map(name = "membership")]
static MEMBERSHIP: HashMap<MembershipKey, u32> = HashMap::with_max_entries(default_capacity::SERVICES, 0);

#[map(name = "affinity")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(default_capacity::AFFINITY, 0);

#[map(name = "sockets")]
static SOCKETS: Array<SocketSet> = Array::with_max_entries(default_capacity::SOCKETS / SOCKET_WAYS as u32, 0);

/// The sockets map's number of sets: `load` writes it for the map it pins.
/// A global of .rodata, which the verifier sees as a constant.
#[unsafe(no_mangle)]
static SOCKET_SETS: u32 = default_capacity::SOCKETS / SOCKET_WAYS as u32;

#[map(name = "revnat")]
static REVNAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::with_max_entries(default_capacity::REVNAT, 0);

#[map(name = "nodes")]
static NODES: HashMap<NodeAddressKey, u32> = HashMap::with_max_entries(default_capacity::NODES, 0);

// Counters are per CPU: no atomic operation on the connect path. One
// entry per frontend (service id) and one per frontend and backend.
#[map(name = "stats")]
static STATS: PerCpuHashMap<u32, ServiceStats> =
    PerCpuHashMap::with_max_entries(default_capacity::SERVICES, 0);

#[map(name = "backend_hits")]
static BACKEND_HITS: PerCpuHashMap<MembershipKey, u64> =
    PerCpuHashMap::with_max_entries(default_capacity::SERVICES, 0);

#[map(name = "rate_limits")]
static RATE_LIMITS: HashMap<u32, RateLimit> = HashMap::with_max_entries(default_capacity::RATE_LIMITS, 0);

// The node's counters (one entry): per CPU, like the frontends'.
#[map(name = "datapath_stats")]
static DATAPATH_STATS: PerCpuArray<DatapathStats> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "layers")]
static LAYERS: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "trace_leases")]
static TRACE_LEASES: Array<u64> = Array::with_max_entries(TRACE_LEASE_ENTRIES, 0);

#[map(name = "events0")]
static EVENTS0: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "events1")]
static EVENTS1: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "events2")]
static EVENTS2: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "events3")]
static EVENTS3: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// sock_addr programs allow the socket operation by returning 1.
const ALLOW: i32 = 1;
/// Returning 0 rejects it; the error the caller sees is set with
/// `bpf_set_retval` first (the kernel would say EPERM otherwise).
const REJECT: i32 = 0;

const NSEC_PER_SEC: u64 = 1_000_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    /// `connect()` on TCP or UDP: one choice for the life of the socket.
    Connect,
    /// `sendmsg()`/`sendto()` on an unconnected UDP socket: a choice per
    /// datagram, kept stable per socket.
    SendMsg,
}

#[cgroup_sock_addr(connect4)]
pub fn balctl_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V4, Operation::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn balctl_connect6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V6, Operation::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn balctl_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V4, Operation::SendMsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn balctl_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V6, Operation::SendMsg)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn balctl_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse_translate(&ctx, Family::V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn balctl_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse_translate(&ctx, Family::V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn balctl_getpeer4(ctx: SockAddrContext) -> i32 {
    reverse_translate(&ctx, Family::V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn balctl_getpeer6(ctx: SockAddrContext) -> i32 {
    reverse_translate(&ctx, Family::V6)
}

/// A socket of the cgroup closes: its way of the sockets map, if it has
/// one, is emptied for the next socket. So a way that a new socket finds
/// occupied belongs to an open socket, and taking it is counted
/// (`remember_socket`). Runs for every TCP and UDP socket of the cgroup,
/// translated or not: one array lookup and four compares.
///
/// Only the cookie is cleared, with one store and no lock: should the way
/// be taken over by a new socket in the instant between the compare and
/// the store, the new socket loses it. The takeover was counted then (the
/// way was occupied), so the count still matches the translations lost.
#[cgroup_sock(sock_release)]
pub fn balctl_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(set) = socket_set(cookie) else {
        return ALLOW;
    };
    for index in 0..SOCKET_WAYS {
        // SAFETY: as in `Way::find`; one whole field.
        unsafe {
            let owner = &raw mut (*set).cookies[index];
            if read_volatile(owner) == cookie {
                write_volatile(owner, NO_COOKIE);
                break;
            }
        }
    }
    // cgroup sock programs allow with 1; sock_release's result is ignored.
    ALLOW
}

/// Forward translation: frontend -> backend. Traffic to anything that is not
/// a frontend passes untouched.
#[inline(always)]
fn translate(ctx: &SockAddrContext, family: Family, op: Operation) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's whole run.
    let proto = unsafe { read(&raw const (*sa).protocol) } as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return ALLOW;
    }
    let dest = read_dest(sa, family);
    let Some((frontend, master)) = policy_frontend(&dest, proto).or_else(|| find_frontend(&dest, proto))
    else {
        return ALLOW;
    };
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let now = coarse_now();
    // A connecting socket is new to balctl (or starts over); an unconnected
    // one may have sent before. (No Option: the verifier rejects the
    // uninitialised bytes a None would carry around.)
    let earlier = match op {
        Operation::Connect => NO_SOCKET,
        Operation::SendMsg => match Way::find(cookie) {
            Some((way, socket)) => {
                way.touch(now);
                socket
            }
            None => NO_SOCKET,
        },
    };
    let choice = match choose_backend(ctx, cookie, now, &earlier, &frontend, &master) {
        // Validation keeps backend families equal to the frontend's; never
        // write half an IPv6 address into an IPv4 socket.
        Ok(choice) if family == Family::V4 && !is_v4_mapped(&choice.backend.addr) => Err(result::FAMILY),
        other => other,
    };
    count(master.service_id, &choice);
    trace(&dest, proto, op, master.service_id, &choice, now);
    let Ok(choice) = choice else {
        return reject();
    };
    let to = Dest { addr: choice.backend.addr, port: choice.backend.port };
    let translation = Translation { frontend: &dest, backend: &to, service_id: master.service_id, op, now };
    remember_translation(cookie, &earlier, &choice, &translation);
    write_dest(sa, family, &to);
    ALLOW
}

/// What a socket without a sockets entry has: service ids start at 1.
const NO_SOCKET: SocketTranslation = SocketTranslation {
    frontend: [0; 4],
    backend: [0; 4],
    frontend_port: 0,
    backend_port: 0,
    service_id: 0,
    backend_id: 0,
    flags: 0,
};

/// The cookie of an empty way: sockets' cookies start at 1.
const NO_COOKIE: u64 = 0;

/// A backend chosen for a socket, and how (`result::RANDOM`...).
struct Choice {
    backend: Backend,
    backend_id: u32,
    how: u8,
}

/// Adds a resolution to the frontend's counters: per CPU, so a plain
/// increment. A frontend's first resolution on a CPU creates its entry.
#[inline(always)]
fn count(service_id: u32, choice: &Result<Choice, u8>) {
    let Some(stats) = counter(&STATS, &service_id) else {
        return;
    };
    // SAFETY: a per-CPU entry, written by this CPU only while this program runs.
    unsafe {
        match choice {
            Ok(_) => (*stats).resolutions += 1,
            Err(reason) => {
                let index = usize::from(reason.wrapping_sub(result::FIRST_FAILURE));
                if index < result::FAILURES {
                    (*stats).failures[index] += 1;
                }
            }
        }
    }
    if let Ok(choice) = choice
        && let Some(hits) =
            counter(&BACKEND_HITS, &MembershipKey { service_id, backend_id: choice.backend_id })
    {
        // SAFETY: as above.
        unsafe { *hits += 1 };
    }
}

/// CLOCK_MONOTONIC at the last tick (1-4 ms): what ways, sticky choices,
/// rate limits and trace leases are timed with. It reads a variable; the
/// exact clock reads the TSC, which cost about 60-90 ns per call on this
/// path (a quarter of `recvmsg`'s program), and only trace events need it.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// This CPU's counter for `key`, created at zero if missing. None when the
/// map is full (user space removes the counters of removed frontends).
#[inline(always)]
fn counter<K, V: Default>(map: &PerCpuHashMap<K, V>, key: &K) -> Option<*mut V> {
    if let Some(value) = map.get_ptr_mut(key) {
        return Some(value);
    }
    let _ = map.insert(key, &V::default(), u64::from(BPF_NOEXIST));
    map.get_ptr_mut(key)
}

/// Writes the resolution to the ring buffer of every trace slot whose lease
/// runs. With nobody tracing this costs one array lookup: the lease all
/// tracers renew has run out.
#[inline(always)]
fn trace(dest: &Dest, proto: u8, op: Operation, service_id: u32, choice: &Result<Choice, u8>, now: u64) {
    if !TRACING {
        return;
    }
    if !leased(TRACE_ANY, now) {
        return;
    }
    // The exact time: events are ordered and timed by it.
    // SAFETY: plain helper call.
    let time_ns = unsafe { bpf_ktime_get_ns() };
    let (backend, backend_port, backend_id, result) = match choice {
        Ok(choice) => (choice.backend.addr, choice.backend.port, choice.backend_id, choice.how),
        Err(reason) => ([0; 4], 0, 0, *reason),
    };
    let mut event = TraceEvent {
        time_ns,
        pid_tgid: bpf_get_current_pid_tgid(),
        // SAFETY: plain helper call.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        original: dest.addr,
        backend,
        original_port: dest.port,
        backend_port,
        proto,
        operation: match op {
            Operation::Connect => OP_CONNECT,
            Operation::SendMsg => OP_SENDMSG,
        },
        result,
        _pad: 0,
        service_id,
        backend_id,
        comm: [0; 16],
    };
    // Straight into the event: one copy less on a stack that is near its
    // limit. A failure leaves the name empty.
    // SAFETY: the helper writes at most the buffer's size into it.
    unsafe { generated::bpf_get_current_comm(event.comm.as_mut_ptr().cast(), event.comm.len() as u32) };
    // A full ring buffer drops the event; the tracer reports what it reads.
    for (slot, events) in [(0, &EVENTS0), (1, &EVENTS1), (2, &EVENTS2), (3, &EVENTS3)] {
        if leased(slot, now) {
            let _ = events.output::<TraceEvent>(&event, 0);
        }
    }
}

#[inline(always)]
fn leased(slot: u32, now: u64) -> bool {
    TRACE_LEASES.get(slot).is_some_and(|&until| now < until)
}

/// A policy's entry for `dest` that takes the connection: a
/// LocalRedirectPolicy's while it has a backend and is within its rate
/// limit (else it gives way: to a BalancingPolicy, the Service, or at the
/// end the original destination), then a BalancingPolicy's, which like a
/// Service's refuses connections when it has no backend. A layer that holds
/// no frontend at all is not looked up.
#[inline(always)]
fn policy_frontend(dest: &Dest, proto: u8) -> Option<(ServiceKey, ServiceEntry)> {
    let layers = LAYERS.get(0).copied().unwrap_or(0);
    let may_hold = |scope| layers & LAYERS_KNOWN == 0 || layers & layer_bit(scope) != 0;
    let redirect =
        ServiceKey { addr: dest.addr, port: dest.port, proto, scope: SCOPE_REDIRECT, slot: 0, _pad: 0 };
    // SAFETY: entries are only replaced whole by user space; the copy is taken at once.
    if may_hold(SCOPE_REDIRECT)
        && let Some(master) = unsafe { SERVICES.get(&redirect) }.copied()
    {
        let gave_way = if master.count == 0 {
            GAVE_WAY_NO_BACKEND
        } else if !within_rate_limit(&master) {
            GAVE_WAY_RATE_LIMIT
        } else {
            return Some((redirect, master));
        };
        if let Some(stats) = counter(&STATS, &master.service_id) {
            // SAFETY: a per-CPU entry, written by this CPU only while this program runs.
            unsafe { (*stats).gave_way[gave_way] += 1 };
        }
    }
    if !may_hold(SCOPE_BALANCING) {
        return None;
    }
    let balancing = ServiceKey { scope: SCOPE_BALANCING, ..redirect };
    // SAFETY: as above.
    let master = unsafe { SERVICES.get(&balancing) }.copied()?;
    Some((balancing, master))
}

/// Whether a rate-limited frontend may take one more connection this
/// second, counting it if so. The count is shared by all CPUs and updated
/// without a lock (the BPF target has no 64-bit atomic add with this
/// toolchain): CPUs counting at the same instant can let a few more
/// through, never fewer.
#[inline(always)]
fn within_rate_limit(master: &ServiceEntry) -> bool {
    if master.flags & SERVICE_FLAG_RATE_LIMITED == 0 {
        return true;
    }
    // Without its limit entry (written before the flag) nothing limits it.
    let Some(limit) = RATE_LIMITS.get_ptr_mut(&master.service_id) else {
        return true;
    };
    // SAFETY: plain helper call; `limit` points into the map's value, which
    // stays valid for the program's run.
    unsafe {
        let second = coarse_now() / NSEC_PER_SEC;
        if (*limit).second != second {
            (*limit).second = second;
            (*limit).count = 0;
        }
        if (*limit).count >= u64::from((*limit).per_second) {
            return false;
        }
        (*limit).count += 1;
    }
    true
}

/// The frontend `dest` belongs to, with its master entry: an exact match,
/// else the NodePort frontend of its port when `dest` is a node address or
/// IPv4 loopback.
#[inline(always)]
fn find_frontend(dest: &Dest, proto: u8) -> Option<(ServiceKey, ServiceEntry)> {
    let exact =
        ServiceKey { addr: dest.addr, port: dest.port, proto, scope: SCOPE_SERVICE, slot: 0, _pad: 0 };
    // SAFETY: entries are only replaced whole by user space; the copy is taken at once.
    if let Some(master) = unsafe { SERVICES.get(&exact) } {
        return Some((exact, *master));
    }
    let v4 = is_v4_mapped(&dest.addr);
    let node_address = NodeAddressKey { addr: dest.addr };
    // SAFETY: only presence is read.
    if !(v4 && is_v4_loopback(&dest.addr)) && unsafe { NODES.get(&node_address) }.is_none() {
        return None;
    }
    let any = if v4 { V4_MAPPED_PREFIX } else { [0; 4] };
    let node_port = ServiceKey { addr: any, ..exact };
    // SAFETY: as above.
    let master = unsafe { SERVICES.get(&node_port) }.copied()?;
    Some((node_port, master))
}

/// Reverse translation for `recvmsg` and `getpeername`: a peer that is the
/// backend this socket was translated to is shown as the frontend.
#[inline(always)]
fn reverse_translate(ctx: &SockAddrContext, family: Family) -> i32 {
    let sa = ctx.sock_addr;
    let peer = read_dest(sa, family);
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A socket without a way was never translated (or lost its way).
    let Some((way, socket)) = Way::find(cookie) else {
        return ALLOW;
    };
    way.touch(coarse_now());
    let frontend = if socket.backend == peer.addr && socket.backend_port == peer.port {
        Some(Dest { addr: socket.frontend, port: socket.frontend_port })
    } else if socket.flags & SOCKET_FURTHER_FRONTENDS != 0 {
        // Another frontend's backend: an unconnected socket's second.
        let key = RevNatKey { cookie, addr: peer.addr, port: peer.port, _pad: [0; 3] };
        // SAFETY: read once, whole.
        unsafe { REVNAT.get(&key) }.map(|original| Dest { addr: original.addr, port: original.port })
    } else {
        None
    };
    if let Some(frontend) = frontend {
        write_dest(sa, family, &frontend);
    }
    // recvmsg and getpeername programs must allow; they can only rewrite.
    ALLOW
}

/// Picks the backend: the socket's earlier choice (unconnected UDP), else
/// the client namespace's (affinity), else a random slot; or says why there
/// is none (`result::NO_BACKEND`...). Helpers that only some paths need are
/// called only on those paths: every call here is paid on each translated
/// connect.
#[inline(always)]
fn choose_backend(
    ctx: &SockAddrContext,
    socket_cookie: u64,
    now: u64,
    earlier: &SocketTranslation,
    frontend: &ServiceKey,
    master: &ServiceEntry,
) -> Result<Choice, u8> {
    if master.count == 0 {
        let local_only = master.flags & SERVICE_FLAG_LOCAL_ONLY != 0;
        return Err(if local_only { result::NO_LOCAL_BACKEND } else { result::NO_BACKEND });
    }
    let service_id = master.service_id;
    // The sticky choice of an unconnected socket for a frontend that is not
    // the one in its sockets entry.
    let second_frontend = (earlier.service_id != NO_SOCKET.service_id && earlier.service_id != service_id)
        .then_some(AffinityKey { cookie: socket_cookie, service_id, owner: STICKY_SOCKET });
    if earlier.service_id == service_id
        // SAFETY: only presence is read.
        && unsafe { MEMBERSHIP.get(&MembershipKey { service_id, backend_id: earlier.backend_id }) }.is_some()
    {
        let backend =
            Backend { addr: earlier.backend, port: earlier.backend_port, proto: frontend.proto, _pad: 0 };
        return Ok(Choice { backend, backend_id: earlier.backend_id, how: result::SOCKET });
    }
    if let Some(socket_key) = &second_frontend
        && let Some((backend_id, backend)) = sticky_backend(socket_key, service_id, None)
    {
        return Ok(Choice { backend, backend_id, how: result::SOCKET });
    }
    // SAFETY: a plain helper call on the program's context.
    let affinity = (master.flags & SERVICE_FLAG_AFFINITY != 0).then(|| AffinityKey {
        cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        service_id,
        owner: STICKY_NETNS,
    });
    if let Some(netns_key) = &affinity {
        let timeout = u64::from(master.affinity_timeout_sec) * NSEC_PER_SEC;
        if let Some((backend_id, backend)) = sticky_backend(netns_key, service_id, Some((now, timeout))) {
            // Refresh: the timeout counts from the last use, as kube-proxy's does.
            remember_choice(netns_key, backend_id, now);
            return Ok(Choice { backend, backend_id, how: result::AFFINITY });
        }
    }

    let slot = (unsafe { bpf_get_prandom_u32() } % u32::from(master.count)) as u16 + 1;
    let slot_key = ServiceKey { slot, ..*frontend };
    // SAFETY: read once, whole.
    let slot_entry = unsafe { SERVICES.get(&slot_key) }.ok_or(result::STALE)?;
    let (backend_id, backend) = (slot_entry.backend_id, slot_entry.backend);
    if backend.proto == Backend::NONE.proto {
        return Err(result::STALE);
    }
    if let Some(netns_key) = &affinity {
        remember_choice(netns_key, backend_id, now);
    }
    if let Some(socket_key) = &second_frontend {
        remember_choice(socket_key, backend_id, now);
    }
    Ok(Choice { backend, backend_id, how: result::RANDOM })
}

/// A previous choice for this owner, if it is still valid: not expired (when
/// a timeout applies) and its backend still belongs to the service.
#[inline(always)]
fn sticky_backend(key: &AffinityKey, service_id: u32, expiry: Option<(u64, u64)>) -> Option<(u32, Backend)> {
    // SAFETY: read once, whole.
    let choice = unsafe { AFFINITY.get(key) }.copied()?;
    if let Some((now, timeout)) = expiry
        && now.wrapping_sub(choice.last_used_ns) > timeout
    {
        return None;
    }
    let membership = MembershipKey { service_id, backend_id: choice.backend_id };
    unsafe { MEMBERSHIP.get(&membership) }?;
    let backend = unsafe { BACKENDS.get(&choice.backend_id) }.copied()?;
    Some((choice.backend_id, backend))
}

#[inline(always)]
fn remember_choice(key: &AffinityKey, backend_id: u32, now: u64) {
    let choice = AffinityValue { last_used_ns: now, backend_id, _pad: 0 };
    // A full LRU map evicts; a failed insert only costs stickiness.
    let _ = AFFINITY.insert(key, &choice, 0);
}

/// A translation just made, as `remember_translation` records it.
struct Translation<'a> {
    frontend: &'a Dest,
    backend: &'a Dest,
    service_id: u32,
    op: Operation,
    now: u64,
}

/// Records the translation for replies, `getpeername()` and, on an
/// unconnected socket, the datagrams that follow: in the socket's way of
/// the sockets map when it has none yet, is connecting (starting over), or
/// this is its way's frontend; else, for an unconnected socket's second
/// frontend, in revnat (written only when not already current: such a
/// socket passes here with every datagram).
#[inline(always)]
fn remember_translation(cookie: u64, earlier: &SocketTranslation, choice: &Choice, made: &Translation) {
    let (frontend, backend, service_id) = (made.frontend, made.backend, made.service_id);
    if earlier.service_id == service_id && earlier.backend_id == choice.backend_id {
        return;
    }
    if earlier.service_id == NO_SOCKET.service_id || earlier.service_id == service_id {
        let socket = SocketTranslation {
            frontend: frontend.addr,
            backend: backend.addr,
            frontend_port: frontend.port,
            backend_port: backend.port,
            service_id,
            backend_id: choice.backend_id,
            flags: match made.op {
                // Starting over: connected, the socket hears only from its backend.
                Operation::Connect => 0,
                Operation::SendMsg => SOCKET_UNCONNECTED | earlier.flags & SOCKET_FURTHER_FRONTENDS,
            },
        };
        remember_socket(cookie, &socket, made.now);
        return;
    }
    let key = RevNatKey { cookie, addr: backend.addr, port: backend.port, _pad: [0; 3] };
    let value = RevNatValue { addr: frontend.addr, port: frontend.port, _pad: 0, service_id };
    // Before the datagram leaves, so that its reply finds the mark. (A way
    // that was replaced and taken again comes back without it.)
    if earlier.flags & SOCKET_FURTHER_FRONTENDS == 0
        && let Some((way, _)) = Way::find(cookie)
    {
        way.add_flags(SOCKET_FURTHER_FRONTENDS);
    }
    // SAFETY: read once, whole.
    if unsafe { REVNAT.get(&key) }.is_some_and(|current| *current == value) {
        return;
    }
    let _ = REVNAT.insert(&key, &value, 0);
}

/// The set of the sockets map that holds `cookie`'s way.
#[inline(always)]
fn socket_set(cookie: u64) -> Option<*mut SocketSet> {
    // SAFETY: a plain read; volatile, or the compiler would fold in the
    // value the global has in the object instead of the one `load` wrote.
    let sets = unsafe { read_volatile(&raw const SOCKET_SETS) };
    SOCKETS.get_ptr_mut(cookie.checked_rem(u64::from(sets))? as u32)
}

/// A socket's way in its set.
struct Way {
    set: *mut SocketSet,
    index: usize,
}

impl Way {
    /// The way of the socket with `cookie`, if it has one, and a copy of it.
    ///
    /// Ways are written without a lock, so the cookie is read again after
    /// the copy: a way being taken over by another socket has its cookie
    /// zeroed before the rest changes, and such a copy is dropped. (Volatile
    /// accesses keep the compiler to that order; the BPF backend has no
    /// compiler fence. Exact with the store and load ordering of x86; a CPU
    /// that reorders them could, rarely, mix two sockets' fields while the
    /// way changes hands, as with the kernel's preallocated hash maps.)
    #[inline(always)]
    fn find(cookie: u64) -> Option<(Way, SocketTranslation)> {
        let set = socket_set(cookie)?;
        for index in 0..SOCKET_WAYS {
            // SAFETY: `set` points into the map's value for the program's
            // run; fields are read whole.
            unsafe {
                if read_volatile(&raw const (*set).cookies[index]) != cookie {
                    continue;
                }
                let copy = read_volatile(&raw const (*set).ways[index]);
                if read_volatile(&raw const (*set).cookies[index]) != cookie {
                    return None;
                }
                return Some((Way { set, index }, copy));
            }
        }
        None
    }

    /// Marks the way used at `now`: the set replaces the least recently
    /// used way first. Written once per tick, so a busy socket does not
    /// keep dirtying its set's cache line.
    #[inline(always)]
    fn touch(&self, now: u64) {
        // SAFETY: as in `find`; one whole field.
        unsafe {
            let last_used = &raw mut (*self.set).last_used_ns[self.index % SOCKET_WAYS];
            if read_volatile(last_used) != now {
                write_volatile(last_used, now);
            }
        }
    }

    #[inline(always)]
    fn add_flags(&self, flags: u32) {
        // SAFETY: as in `touch`.
        unsafe {
            let field = &raw mut (*self.set).ways[self.index % SOCKET_WAYS].flags;
            write_volatile(field, read_volatile(field) | flags);
        }
    }
}

/// Writes `socket` into the way of `cookie`: the one it has, else an empty
/// one, else the set's least recently used (see `Way::find` on the order
/// of the writes). Ways used in the same tick go newest socket first: the
/// older sockets are the long-lived ones, and a burst of short-lived
/// sockets (a resolver's) then takes the ways of each other. Taking
/// another socket's way is counted: closed sockets leave theirs empty
/// (`balctl_sock_release`), so that socket was open and lost its reverse
/// translation.
#[inline(always)]
fn remember_socket(cookie: u64, socket: &SocketTranslation, now: u64) {
    let Some(set) = socket_set(cookie) else {
        return;
    };
    let mut chosen = 0;
    let (mut chosen_idle, mut chosen_owner) = (0, 0);
    for way in 0..SOCKET_WAYS {
        // SAFETY: as in `Way::find`.
        let (owner, last_used) = unsafe {
            (
                read_volatile(&raw const (*set).cookies[way]),
                read_volatile(&raw const (*set).last_used_ns[way]),
            )
        };
        if owner == cookie {
            chosen = way;
            chosen_owner = NO_COOKIE;
            break;
        }
        let idle = if owner == NO_COOKIE { u64::MAX } else { now.saturating_sub(last_used) };
        if way == 0 || idle > chosen_idle || idle == chosen_idle && owner > chosen_owner {
            chosen = way;
            (chosen_idle, chosen_owner) = (idle, owner);
        }
    }
    if chosen_owner != NO_COOKIE {
        count_eviction();
    }
    let way = chosen % SOCKET_WAYS;
    // SAFETY: as in `Way::find`; the cookie goes first and last, see there.
    unsafe {
        write_volatile(&raw mut (*set).cookies[way], NO_COOKIE);
        write_volatile(&raw mut (*set).ways[way], *socket);
        write_volatile(&raw mut (*set).last_used_ns[way], now);
        write_volatile(&raw mut (*set).cookies[way], cookie);
    }
}

/// Adds a way taken from an open socket to this CPU's node counters: a
/// lookup that only evictions pay for.
#[inline(always)]
fn count_eviction() {
    if let Some(stats) = DATAPATH_STATS.get_ptr_mut(0) {
        // SAFETY: a per-CPU entry, written by this CPU only while this program runs.
        unsafe { (*stats).evicted_translations += 1 };
    }
}

#[inline(always)]
fn reject() -> i32 {
    // SAFETY: plain helper call; sets the errno the socket call returns.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

struct Dest {
    addr: Addr,
    port: u16,
}

/// IPv4 addresses travel as `::ffff:a.b.c.d` (network byte order words).
const V4_MAPPED_PREFIX: Addr = [0, 0, u32::from_be(0x0000_ffff), 0];

#[inline(always)]
fn is_v4_mapped(addr: &Addr) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_PREFIX[2]
}

/// 127.0.0.0/8, of a mapped address. Not ::1: kube-proxy serves node ports
/// on IPv4 loopback only (through route_localnet, which IPv6 lacks).
#[inline(always)]
fn is_v4_loopback(addr: &Addr) -> bool {
    u32::from_be(addr[3]) >> 24 == 127
}

#[inline(always)]
fn read_dest(sa: *mut bpf_sock_addr, family: Family) -> Dest {
    // SAFETY: `sa` is the program's context; each field is read with one
    // 4-byte load, the access size the verifier allows for these fields.
    unsafe {
        let addr = match family {
            Family::V4 => {
                let mut mapped = V4_MAPPED_PREFIX;
                mapped[3] = read(&raw const (*sa).user_ip4);
                mapped
            }
            Family::V6 => [
                read(&raw const (*sa).user_ip6[0]),
                read(&raw const (*sa).user_ip6[1]),
                read(&raw const (*sa).user_ip6[2]),
                read(&raw const (*sa).user_ip6[3]),
            ],
        };
        Dest {
            addr,
            // user_port holds the network-order port in its first two bytes.
            port: read(&raw const (*sa).user_port) as u16,
        }
    }
}

#[inline(always)]
fn write_dest(sa: *mut bpf_sock_addr, family: Family, dest: &Dest) {
    // SAFETY: as in read_dest; the fields written are writable for every
    // attach type these programs use, with 4-byte stores.
    unsafe {
        match family {
            Family::V4 => write(&raw mut (*sa).user_ip4, dest.addr[3]),
            Family::V6 => {
                write(&raw mut (*sa).user_ip6[0], dest.addr[0]);
                write(&raw mut (*sa).user_ip6[1], dest.addr[1]);
                write(&raw mut (*sa).user_ip6[2], dest.addr[2]);
                write(&raw mut (*sa).user_ip6[3], dest.addr[3]);
            }
        }
        write(&raw mut (*sa).user_port, u32::from(dest.port));
    }
}

/// Context fields must be accessed with exactly one load or store of the
/// field's size; volatile keeps LLVM from merging or splitting them.
#[inline(always)]
unsafe fn read(field: *const u32) -> u32 {
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
unsafe fn write(field: *mut u32, value: u32) {
    unsafe { core::ptr::write_volatile(field, value) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot reach a panic.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
