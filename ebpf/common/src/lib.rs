//! The contract between balctl's eBPF programs and user space: map names,
//! key and value layouts, flags and limits. Both sides compile this crate, so
//! every layout is written exactly once.
//!
//! Conventions shared by all types:
//! - Addresses are 16 bytes in network byte order. IPv4 is stored as an
//!   IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), so one map serves both
//!   families and an `AF_INET6` socket connecting to a mapped address matches
//!   the IPv4 frontend without a second lookup.
//! - Ports are in network byte order, stored exactly as the kernel hands them
//!   to `bpf_sock_addr.user_port`.
//! - Times are CLOCK_MONOTONIC nanoseconds as `bpf_ktime_get_coarse_ns()`
//!   gives them: at the last tick, rarely the one before (the programs keep
//!   the time per CPU for a tick; see their `lb::clock`). So the times
//!   different CPUs write are compared saturating, never wrapping.
//! - Every struct is `repr(C)` with explicit padding so its size is the same
//!   on both sides and no byte is left uninitialised in a hash key.
#![no_std]

/// Names of the maps in the eBPF object. They double as pin file names.
pub mod map_names {
    pub const SERVICES: &str = "services";
    pub const BACKENDS: &str = "backends";
    pub const MEMBERSHIP: &str = "membership";
    pub const AFFINITY: &str = "affinity";
    pub const REVNAT: &str = "revnat";
    pub const SOCKETS: &str = "sockets";
    pub const NODES: &str = "nodes";
    pub const STATS: &str = "stats";
    pub const BACKEND_HITS: &str = "backend_hits";
    /// Live connections per membership (an array of `u64` at the
    /// membership's cell, as backend_hits, not per CPU: connects and
    /// closes on any CPU add to one count). See `SOCKET_COUNTED`.
    pub const CONNS: &str = "conns";
    pub const TRACE_LEASES: &str = "trace_leases";
    pub const RATE_LIMITS: &str = "rate_limits";
    pub const LAYERS: &str = "layers";
    pub const DATAPATH_STATS: &str = "datapath_stats";
    /// North-south (the packet programs on `load --devices`): see
    /// `SCOPE_EXTERNAL` and `ExternalKey`.
    pub const EXTERNAL: &str = "external";
    pub const MAGLEV: &str = "maglev";
    pub const SOURCE_RANGES: &str = "source_ranges";
    pub const FLOWS: &str = "flows";
    pub const FLOW_REPLIES: &str = "flow_replies";
    /// The (frontend, backend) pairs whose sockets the socket-destroy
    /// iterators close (`SocketPair`). Not pinned: user space fills the
    /// one each lazy load of the iterators creates (src/bpf/sock_destroy.rs).
    pub const DESTROY_PAIRS: &str = "destroy_pairs";
    /// One ring buffer per trace slot.
    pub const EVENTS: [&str; super::TRACE_SLOTS as usize] = ["events0", "events1", "events2", "events3"];
}

/// Default capacities; `balctl load --map-size NAME=N` overrides them.
pub mod default_capacity {
    /// Frontends plus their backend slots (one entry each).
    pub const SERVICES: u32 = 65_536;
    pub const BACKENDS: u32 = 65_536;
    pub const AFFINITY: u32 = 65_536;
    /// One way per translated socket that is open, `SOCKET_WAYS` to a set.
    pub const SOCKETS: u32 = 262_144;
    /// Only unconnected UDP sockets that send to a second frontend use it.
    pub const REVNAT: u32 = 65_536;
    /// Addresses of every Node (several per node: InternalIP, ExternalIP, IPv6).
    pub const NODES: u32 = 16_384;
    /// Frontends with a requests-per-second limit (redirect policies).
    pub const RATE_LIMITS: u32 = 4_096;
    /// The external index: an entry per LoadBalancer IP and external IP
    /// frontend, and per node-port frontend and node address of its
    /// family (a node port of TCP and UDP on 100 Nodes of two IPv4
    /// addresses each takes 400), so a cluster of many Nodes and node
    /// ports sets `--map-size external=N`. Not preallocated: memory
    /// follows the entries written; only its 2 MB of buckets are made at
    /// load.
    pub const EXTERNAL: u32 = 1 << 17;
    /// Maglev lookup-table chunks (`MAGLEV_CHUNK` entries each) of every
    /// external frontend together: 2,097,152 table entries, e.g. 2,000
    /// frontends of 10 backends (a table of a prime of at least 100 x N
    /// entries). The map is not preallocated: memory follows the chunks
    /// written (about 120 bytes each); only its 2 MB of buckets are made
    /// at load.
    pub const MAGLEV: u32 = 1 << 17;
    /// loadBalancerSourceRanges prefixes of every frontend together.
    pub const SOURCE_RANGES: u32 = 16_384;
    /// North-south flows that are open at once (LRU: the least recently
    /// used goes first when full). The flow_replies map has as many. Both
    /// are preallocated, as LRU maps must be: about 150 bytes per flow
    /// each, 19 MB for the two at this size, which every `load` creates;
    /// a node that takes much traffic from outside sets `--map-size
    /// flows=N`.
    pub const FLOWS: u32 = 65_536;
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// The kernel's `ECONNREFUSED`, returned through `bpf_set_retval` when a
/// frontend has no backend, so `connect()`/`sendmsg()` fail at once.
pub const ECONNREFUSED: i32 = 111;

/// Bytes of each trace slot's ring buffer: about 2,700 events.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// How many `balctl trace` can run at once. Each holds a slot: a lease in
/// the trace_leases map and its own ring buffer, since a ring buffer has one
/// reader position and two tracers on one would split its events.
pub const TRACE_SLOTS: u32 = 4;

/// Index in trace_leases of the lease every tracer also renews: the
/// datapath reads only this one while nobody traces.
pub const TRACE_ANY: u32 = TRACE_SLOTS;

/// Entries of the trace_leases array: one per slot, then `TRACE_ANY`. A
/// value is a CLOCK_MONOTONIC time; events go to a slot's ring buffer
/// while the datapath's coarse clock (`bpf_ktime_get_coarse_ns()`, at most
/// two ticks behind) is before its lease. A tracer renews its lease well
/// before it runs out, so one that is killed stops tracing within a lease.
pub const TRACE_LEASE_ENTRIES: u32 = TRACE_SLOTS + 1;

/// What a resolution came to: `TraceEvent::result`, and the failure
/// reasons counted in `ServiceStats::failures`.
pub mod result {
    /// A backend picked at random among the frontend's slots.
    pub const RANDOM: u8 = 0;
    /// The client network namespace's earlier choice (session affinity).
    pub const AFFINITY: u8 = 1;
    /// The unconnected UDP socket's earlier choice.
    pub const SOCKET: u8 = 2;
    /// Failures from here on; `failure_index` maps them to counters.
    pub const NO_BACKEND: u8 = 3;
    /// No backend because the frontend uses this node's endpoints only.
    pub const NO_LOCAL_BACKEND: u8 = 4;
    /// A slot or backend vanished between lookups: an update raced, or the
    /// maps drifted from the state.
    pub const STALE: u8 = 5;
    /// An IPv6 backend for an IPv4 socket.
    pub const FAMILY: u8 = 6;
    pub const FIRST_FAILURE: u8 = NO_BACKEND;
    pub const FAILURES: usize = 4;
    /// A new north-south flow's entry of its frontend's Maglev table (a
    /// success, numbered after the failures it came after).
    pub const MAGLEV: u8 = FIRST_FAILURE + FAILURES as u8;
    /// The backend with the fewest live connections of the slots compared
    /// (a least-connections frontend: `SERVICE_FLAG_LEAST_CONNECTIONS`).
    pub const LEAST_CONNECTIONS: u8 = MAGLEV + 1;

    pub const fn is_failure(result: u8) -> bool {
        result >= FIRST_FAILURE && result < MAGLEV
    }
}

/// `TraceEvent::operation`.
pub const OP_CONNECT: u8 = 0;
pub const OP_SENDMSG: u8 = 1;
/// A packet from outside the node that opened a north-south flow (the tc
/// programs): no task made it, so `pid_tgid`, `cgroup_id` and `comm` are
/// 0 and `client`/`client_port` say who sent it.
pub const OP_PACKET: u8 = 2;

/// Value of the stats map (a per-CPU array, indexed by the frontend's
/// `Cell`): what the frontend's resolutions came to. Always counted. The
/// backend_hits map (a per-CPU array of `u64`, indexed by the
/// membership's cell) counts its resolutions per backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Sockets (and unconnected datagrams) sent to a backend.
    pub resolutions: u64,
    /// Refusals, by `result::*` failure reason minus `FIRST_FAILURE`.
    pub failures: [u64; result::FAILURES],
    /// Of a redirect entry: connections it gave way to the next layer,
    /// indexed by `GAVE_WAY_NO_BACKEND` and `GAVE_WAY_RATE_LIMIT`.
    pub gave_way: [u64; 2],
}

/// Value of the datapath_stats map (a per-CPU array of one entry): the
/// counters of the node's datapath as a whole, not of one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathStats {
    /// Ways of the sockets map taken over by a new socket while they held
    /// another: the sock_release program frees a socket's way when it
    /// closes, so the socket that had it was open (or closed before
    /// balctl's programs were attached), and its `recvmsg()` and
    /// `getpeername()` now show the backend instead of the frontend.
    pub evicted_translations: u64,
}

/// `ServiceStats::gave_way`: the redirect had no backend.
pub const GAVE_WAY_NO_BACKEND: usize = 0;
/// `ServiceStats::gave_way`: the redirect had taken its limit this second.
pub const GAVE_WAY_RATE_LIMIT: usize = 1;

/// Value of the rate_limits map, keyed by service id: a frontend's limit,
/// set by user space, and the datapath's count for the current second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_coarse_ns() / 1e9` of the second being counted.
    pub second: u64,
    pub count: u64,
}

/// One resolution, written to the ring buffer of every traced slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// `bpf_get_current_pid_tgid()`: the thread group id (pid) in the high half.
    pub pid_tgid: u64,
    /// The cgroup v2 id of the task (the cgroup directory's inode number).
    pub cgroup_id: u64,
    /// Where the socket was going, and where it was sent.
    pub original: Addr,
    pub backend: Addr,
    pub original_port: u16,
    pub backend_port: u16,
    pub proto: u8,
    pub operation: u8,
    pub result: u8,
    /// `TRACE_FLAG_*`: what else the resolution went through.
    pub flags: u8,
    pub service_id: u32,
    /// 0 when the resolution failed.
    pub backend_id: u32,
    pub comm: [u8; 16],
    /// Of an `OP_PACKET` event: the packet's source, the client outside
    /// the node. Unspecified (zeros) for a socket's.
    pub client: Addr,
    pub client_port: u16,
    pub _pad2: [u16; 3],
}

/// `TraceEvent::flags`: every backend of the frontend failed its health
/// check (`SERVICE_FLAG_UNHEALTHY`): a refusal says "no healthy backend",
/// a connection that the rule let through "failing open".
pub const TRACE_FLAG_UNHEALTHY: u8 = 1 << 0;

/// Scope of a frontend entry: which rule layer it belongs to. One address
/// can have an entry in each; the datapath tries a LocalRedirectPolicy's
/// first, then a BalancingPolicy's, then the Service's, and moves on when
/// an entry has no backend (or, for a redirect, is over its rate limit).
pub const SCOPE_SERVICE: u8 = 0;
pub const SCOPE_BALANCING: u8 = 1;
pub const SCOPE_REDIRECT: u8 = 2;
/// The frontend as traffic from outside the node sees it: packets that
/// arrive on a `load --devices` device for a node port (unspecified
/// address, as in `NodeAddressKey`), a LoadBalancer ingress IP or an
/// external IP, found through the external index (`ExternalKey`). Only
/// the packet programs read this scope (the socket
/// programs never look it up, and its bit is never set in the layers map),
/// so one address can be a Service frontend for sockets and an external
/// frontend with other backends (externalTrafficPolicy Local: this node's
/// only, with `SERVICE_FLAG_LOCAL_ONLY`, so none means "drop") and its own
/// service id, counters and membership.
pub const SCOPE_EXTERNAL: u8 = 3;

/// The layers map (an array of one `u32`) says which scopes hold any
/// frontend, one bit per scope (`layer_bit`), so that a connection skips
/// the lookups of empty layers: on a node without policies, finding a
/// frontend is one lookup instead of three. User space sets a layer's bit
/// before it writes the layer's first entry and clears it after removing
/// its last. Until `LAYERS_KNOWN` is set (a map just created) every layer
/// is looked up.
pub const LAYERS_KNOWN: u32 = 1 << 31;

pub const fn layer_bit(scope: u8) -> u32 {
    1 << scope
}

/// Whether the datapath looks up the layer of `scope`, by what the layers
/// map says (`layers`): every layer until it is known. (`explain` decides
/// with it too.)
#[inline(always)]
pub const fn looks_up_layer(layers: u32, scope: u8) -> bool {
    layers & LAYERS_KNOWN == 0 || layers & layer_bit(scope) != 0
}

/// The random number a socket draws its slot with (`slot_of`): its
/// cookie and the coarse time `now`, mixed by MurmurHash3's 64-bit
/// finalizer. The kernel's random number generator would do as well, but
/// its helper call cost about 20 ns per translation (bench/RESULTS.md,
/// session 40); this costs a few instructions.
/// Cookies are unique and dealt out in sequence, so consecutive sockets
/// draw unrelated numbers; the time makes a socket that connects again a
/// tick later draw anew (within one tick it draws the same slot, as
/// conntrack keeps a reconnecting UDP socket on its backend under
/// kube-proxy). Not secret: an application that could steer its draw
/// (its cookie is SO_COOKIE) can reach any backend's address directly.
#[inline(always)]
pub const fn socket_draw(cookie: u64, now: u64) -> u32 {
    let mut x = cookie ^ now.rotate_left(32);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    (x >> 32) as u32
}

/// The slot a connect draws, with the random number `random`, among the
/// `count` backend slots of a frontend: 1 to `count` (slot 0 is the master
/// entry); None for a frontend without slots. (`explain` enumerates what
/// it can give.)
#[inline(always)]
pub const fn slot_of(random: u32, count: u16) -> Option<u16> {
    match random.checked_rem(count as u32) {
        Some(index) => Some(index as u16 + 1),
        None => None,
    }
}

/// Why a frontend whose master entry has `flags` and no backend refuses a
/// connection: a frontend of this node's endpoints only has no local one.
#[inline(always)]
pub const fn no_backend_result(flags: u16) -> u8 {
    if flags & SERVICE_FLAG_LOCAL_ONLY != 0 { result::NO_LOCAL_BACKEND } else { result::NO_BACKEND }
}

/// `ServiceEntry::flags`: the frontend keeps clients on one backend.
pub const SERVICE_FLAG_AFFINITY: u16 = 1 << 0;
/// `ServiceEntry::flags`: the frontend has a requests-per-second limit in
/// the rate_limits map, above which traffic falls back to the next scope.
pub const SERVICE_FLAG_RATE_LIMITED: u16 = 1 << 2;
/// `ServiceEntry::flags`: the backends are this node's only (Kubernetes
/// `internalTrafficPolicy: Local`), so none means "no local backend".
pub const SERVICE_FLAG_LOCAL_ONLY: u16 = 1 << 1;
/// `ServiceEntry::flags` of a `SCOPE_EXTERNAL` master entry: a new flow's
/// backend comes from the frontend's Maglev table in the maglev map (the
/// 5-tuple's hash modulo the table size, which the master entry's
/// `backend_id` holds: a master entry has no backend of its own). Without
/// it, a random slot.
pub const SERVICE_FLAG_MAGLEV: u16 = 1 << 3;
/// `ServiceEntry::flags` of a `SCOPE_EXTERNAL` master entry: only clients
/// in the frontend's prefixes of the source_ranges map may use it
/// (`loadBalancerSourceRanges`); packets from others are dropped.
pub const SERVICE_FLAG_SOURCE_RANGES: u16 = 1 << 4;
/// `ServiceEntry::flags` of a master entry: every backend of the rule
/// fails its active health check (user space probes them). The rule
/// either keeps them all (fail open: `count` is theirs) or refuses (`count`
/// is 0); either way a traced resolution says so (`TRACE_FLAG_UNHEALTHY`).
pub const SERVICE_FLAG_UNHEALTHY: u16 = 1 << 5;
/// `ServiceEntry::flags` of a socket frontend's master entry: a new
/// connection goes to the backend with the fewest live connections (the
/// conns map) among up to `LEAST_CONNECTIONS_WINDOW` slots from a random
/// one, rather than to a random slot.
pub const SERVICE_FLAG_LEAST_CONNECTIONS: u16 = 1 << 6;
/// How many slots a least-connections choice compares: every slot of a
/// frontend with up to this many, else this many from a random one (as
/// good as the best of all of them in practice, at a bounded cost).
pub const LEAST_CONNECTIONS_WINDOW: u16 = 16;

/// An IPv6 address (or an IPv4-mapped one) as four network-order words, the
/// shape of `bpf_sock_addr.user_ip6`.
pub type Addr = [u32; 4];

/// IPv4 addresses travel as `::ffff:a.b.c.d` (network byte order words).
pub const V4_MAPPED_PREFIX: Addr = [0, 0, u32::from_be(0x0000_ffff), 0];

#[inline(always)]
pub const fn is_v4_mapped(addr: &Addr) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_PREFIX[2]
}

/// 127.0.0.0/8, of a mapped address. Not ::1: kube-proxy serves node ports
/// on IPv4 loopback only (through route_localnet, which IPv6 lacks).
#[inline(always)]
pub const fn is_v4_loopback(addr: &Addr) -> bool {
    u32::from_be(addr[3]) >> 24 == 127
}

/// Key of the services map: one frontend (address, port, protocol) and a
/// slot. Slot 0 is the frontend's master entry; slots 1..=count hold its
/// backends. Updates write new slots before raising the master's count and
/// lower the count before deleting slots, so a reader that sees count N finds
/// slots 1..=N written.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
    pub slot: u16,
    pub _pad: u16,
}

/// Key of the nodes map, a set of node addresses (the value is always 0).
/// A NodePort frontend is written with the unspecified address of its family
/// (`::ffff:0.0.0.0` or `::`) and answers on every address in this set: a
/// destination that matches no frontend exactly, but whose key
/// (`node_address_key`) is in the set, is looked up again as the
/// unspecified address. `NodeAddressKey::IPV4_LOOPBACK` in the set stands
/// for all of 127.0.0.0/8. Only the socket programs read it: packets from
/// outside find node ports through the external index (`ExternalKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddressKey {
    pub addr: Addr,
}

impl NodeAddressKey {
    /// Present while node ports answer on IPv4 loopback, as kube-proxy's
    /// iptables mode does unless `--nodeport-addresses` leaves 127.0.0.0/8
    /// out. `::ffff:127.0.0.0`, the network's own address, which no host
    /// has: it cannot clash with a node address.
    pub const IPV4_LOOPBACK: Self = Self { addr: [0, 0, V4_MAPPED_PREFIX[2], u32::from_be(0x7f00_0000)] };
}

/// The nodes map key that says whether node ports answer on `addr`: its
/// own, or `NodeAddressKey::IPV4_LOOPBACK` for any IPv4 loopback address.
/// Not ::1: kube-proxy serves node ports on IPv4 loopback only (through
/// route_localnet, which IPv6 lacks). (`explain` decides with it too.)
#[inline(always)]
pub const fn node_address_key(addr: &Addr) -> NodeAddressKey {
    if is_v4_mapped(addr) && is_v4_loopback(addr) {
        NodeAddressKey::IPV4_LOOPBACK
    } else {
        NodeAddressKey { addr: *addr }
    }
}

/// Value of the services map. In the master entry (slot 0) `count`, `flags`,
/// `affinity_timeout_sec` and `cell` describe the frontend, `backend_id` is 0 and
/// `backend` is `Backend::NONE`; in a slot entry `backend_id` names the
/// backend and `backend` is a copy of its backends-map entry, so that a
/// random choice needs no backends lookup (a backend id always names the
/// same address: ids are never reused). `service_id` is set in both.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceEntry {
    pub backend_id: u32,
    pub count: u16,
    pub flags: u16,
    pub service_id: u32,
    pub affinity_timeout_sec: u32,
    /// Where the resolutions are counted (see `Cell`): in the master
    /// entry the frontend's cell of the stats map, in a slot entry its
    /// membership's cell of the backend_hits map.
    pub cell: Cell,
    pub backend: Backend,
}

/// An index into the per-CPU counter arrays (stats, backend_hits), which
/// are as long as the services map: every frontend and every membership
/// has its own cell, so counting is an array index, not a hash lookup.
/// User space hands cells out, the lowest free one first, and keeps them
/// in the state: a frontend or membership keeps its cell for as long as it
/// exists. A cell given up by a change is zeroed after the change's writes
/// and handed out again only by a later change, so nothing counts into a
/// cell from two owners. `NO_CELL` (0) is never handed out: an entry
/// without a cell is not counted.
pub type Cell = u32;
pub const NO_CELL: Cell = 0;

/// Value of the backends map, keyed by a `u32` backend id. Ids are never
/// reused, so a stale reference can never land on a different backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_FLAG_*`.
    pub flags: u8,
}

/// `Backend::flags`: the backend runs on this node (an endpoint whose
/// `nodeName` is this node). External traffic to it is only DNATed and
/// handed to the stack; to any other backend it is also SNATed to the
/// node's address and forwarded. A backend that changes nodes with the
/// same address is a new backend with a new id.
pub const BACKEND_FLAG_LOCAL: u8 = 1;

impl Backend {
    /// No backend: a master entry's, or a slot's whose backend balctl does
    /// not know (a corrupt state). Its protocol is 0, never TCP or UDP.
    pub const NONE: Backend = Backend { addr: [0; 4], port: 0, proto: 0, flags: 0 };
}

/// Key of the membership map: present while `backend_id` is one of the
/// backends of `service_id`. Sticky choices (affinity, per-socket UDP) are
/// only honoured while their backend is still a member. The value is the
/// membership's `Cell` of the backend_hits map (its slot entry's), so a
/// choice that checks membership finds where to count it too.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MembershipKey {
    pub service_id: u32,
    pub backend_id: u32,
}

/// Who a sticky backend choice belongs to.
pub const STICKY_NETNS: u32 = 0;
pub const STICKY_SOCKET: u32 = 1;

/// Key of the affinity map (an LRU hash). `owner` is `STICKY_NETNS` with a
/// network-namespace cookie for session affinity (there is no source address
/// at connect time, so the client's namespace stands in for it), or
/// `STICKY_SOCKET` with a socket cookie to keep an unconnected UDP socket on
/// one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub cookie: u64,
    pub service_id: u32,
    pub owner: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC at the last tick) of
    /// the last use.
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}

/// One translated socket's way of its `SocketSet`: its frontend and the
/// backend it was sent to. `connect()` writes it; so does an unconnected UDP
/// socket's first datagram to a frontend, and its later datagrams to that
/// frontend go to the same backend while it is still a member. `recvmsg`
/// and `getpeername` show a peer that is this backend as the frontend. One
/// way, written once, is all a socket costs; the affinity and revnat maps
/// hold the choices of an unconnected socket that sends to more than one
/// frontend, for the others.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketTranslation {
    pub frontend: Addr,
    pub backend: Addr,
    pub frontend_port: u16,
    pub backend_port: u16,
    pub service_id: u32,
    pub backend_id: u32,
    /// `SOCKET_UNCONNECTED`, `SOCKET_FURTHER_FRONTENDS`.
    pub flags: u32,
}

/// Ways per set of the sockets map.
pub const SOCKET_WAYS: usize = 4;

/// Value of the sockets map, an array of sets: a socket's way is in set
/// `cookie % sets`. A new socket takes an empty way, else the one least
/// recently used. A socket's way is emptied when it closes (the
/// sock_release program), so taking an occupied way loses an open socket's
/// translation (`DatapathStats::evicted_translations`). The datapath pays
/// one array lookup and plain stores per socket, where a hash map's insert
/// costs most of a translated connect.
/// The cookies and use times come first, in one cache line, so finding a
/// way reads one line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketSet {
    /// The cookie of each way's socket; 0 (no socket has it) marks an
    /// empty way.
    pub cookies: [u64; SOCKET_WAYS],
    /// When the datapath last wrote each way (`bpf_ktime_get_coarse_ns()`:
    /// CLOCK_MONOTONIC at the last tick); a read (`recvmsg`,
    /// `getpeername`) moves it up to the newest of its set, which orders
    /// the set's ways as the clock would without reading it per datagram.
    pub last_used_ns: [u64; SOCKET_WAYS],
    pub ways: [SocketTranslation; SOCKET_WAYS],
}

/// `SocketTranslation::flags`: written by `sendmsg`, so the way is also an
/// unconnected UDP socket's sticky choice.
pub const SOCKET_UNCONNECTED: u32 = 1;
/// `SocketTranslation::flags`: the socket also sent to other frontends,
/// whose reverse translations are in the revnat map. Without it `recvmsg`
/// and `getpeername` do not look there: a socket balctl never translated
/// costs them one array lookup.
pub const SOCKET_FURTHER_FRONTENDS: u32 = 2;
/// `SocketTranslation::flags`: the socket connected through its frontend
/// and counts as one of its backend's live connections (the conns map, at
/// the membership's cell), until it closes (sock_release), connects
/// elsewhere or loses its way.
pub const SOCKET_COUNTED: u32 = 4;

/// Key of the destroy_pairs map, as a socket's `SocketTranslation` records
/// it: a frontend (its service id) and a backend (its id) that left it.
/// Ids are never reused, so the pair names exactly the sockets translated
/// through that frontend to that backend, whatever its address. The value
/// is a `u8`, 1: the presence is what counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketPair {
    pub service_id: u32,
    pub backend_id: u32,
}

/// The destroy_pairs map's capacity: user space runs the iterators once
/// per this many pairs.
pub const DESTROY_PAIRS_ENTRIES: u32 = 16_384;

/// The placeholder helper id the socket-destroy programs call
/// `bpf_sock_destroy` through: neither aya-ebpf nor bpf-linker emit kfunc
/// calls, so user space rewrites each `call` of this id into a kfunc call
/// (`src_reg` `BPF_PSEUDO_KFUNC_CALL`, `imm` the kernel's BTF id of
/// `bpf_sock_destroy`) before loading. No helper has this id.
pub const SOCK_DESTROY_PLACEHOLDER: i32 = 0x7ff0_de57;

/// What a socket-destroy iterator writes to its output for each socket it
/// asked the kernel to destroy: the socket's cookie and what
/// `bpf_sock_destroy` returned (0, or a negative errno).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestroyedSocket {
    pub cookie: u64,
    pub result: i32,
    pub _pad: u32,
}

/// Key of the reverse-translation map (an LRU hash): an unconnected UDP
/// socket and a backend it sent to, for frontends other than the one in its
/// sockets entry. `recvmsg` and `getpeername` look it up to show the
/// frontend address instead of the backend's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    pub cookie: u64,
    pub addr: Addr,
    pub port: u16,
    pub _pad: [u16; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    pub addr: Addr,
    pub port: u16,
    pub _pad: u16,
    pub service_id: u32,
}

/// Key of the external map, the *external index* (a hash map, not
/// preallocated): what a packet from outside the node is addressed to,
/// its destination address, port (network byte order, as in
/// `ServiceKey`) and protocol. The value is the address of the
/// `SCOPE_EXTERNAL` master entry that serves it (`ExternalKey::master`):
/// the key's own address for a LoadBalancer IP or an external IP; the
/// unspecified address of its family (`::ffff:0.0.0.0` or `::`) for a
/// node address, whose node port it is. So a packet for no frontend
/// costs the packet programs one lookup, and one for a frontend two
/// (this, then its master); the nodes map is not read for it.
///
/// User space derives the index from the frontends and node addresses:
/// an entry per LoadBalancer or external IP frontend, and per node-port
/// frontend and node address of the node port's family. Where a
/// LoadBalancer or external IP is also a node address, with a node port
/// of the same port and protocol, the entry is the exact frontend's (as
/// kube-proxy matches LoadBalancer and external IPs before node ports).
/// An entry is written once its master is, and removed before its master
/// is; an entry whose master is missing all the same (maps that drifted)
/// means no frontend: the packet passes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExternalKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl ExternalKey {
    /// The services-map key of the master entry an index entry of this
    /// key with value `master_addr` names.
    #[inline(always)]
    pub const fn master(&self, master_addr: Addr) -> ServiceKey {
        ServiceKey {
            addr: master_addr,
            port: self.port,
            proto: self.proto,
            scope: SCOPE_EXTERNAL,
            slot: 0,
            _pad: 0,
        }
    }
}

/// Key of the maglev map (a hash map, not preallocated): chunk `chunk` of
/// an external frontend's Maglev lookup table, entries `chunk *
/// MAGLEV_CHUNK ..` of its M; the value is a `MaglevChunk`. User space
/// computes the table (Maglev, Eisenbud et al., NSDI 2016: every backend
/// fills the table through its own permutation of the entries, so a
/// change of backends moves about 1/N of them) and writes only the chunks
/// that change. The datapath reads entry `flow_hash % M` and checks the
/// backend is still a member. Entries are grouped because a hash map entry
/// costs about 50 bytes besides its key and value: one per table entry
/// would take 64 bytes for a 4-byte backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaglevKey {
    pub service_id: u32,
    pub chunk: u32,
}

/// Table entries per maglev-map value.
pub const MAGLEV_CHUNK: usize = 16;

/// Value of the maglev map: backend ids (backends-map keys) of
/// `MAGLEV_CHUNK` consecutive table entries; past the table's end (its
/// last chunk) 0, which names no backend.
pub type MaglevChunk = [u32; MAGLEV_CHUNK];

/// What the source_ranges map (an LPM trie; the value is a `u8`, 1) holds
/// a prefix of, behind the trie key's `prefix_len` (aya's
/// `lpm_trie::Key<SourceRange>` on both sides): a `loadBalancerSourceRanges`
/// prefix of one external frontend. The trie matches bytes from the start,
/// so the service id comes first in network byte order and always counts
/// fully: `prefix_len` is 32 plus the address bits (an IPv4 /N is
/// 32 + 96 + N, as the address is mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRange {
    /// The frontend's service id, big-endian.
    pub service_id: [u8; 4],
    pub addr: Addr,
}

/// Ports the packet programs SNAT external flows to remote backends from
/// (inclusive). `load --devices` adds them to the node's
/// `net.ipv4.ip_local_reserved_ports` (which covers IPv6 too), so the
/// node's own sockets never take one: above the default ephemeral range
/// (32768-60999) and the node-port range (30000-32767).
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Key of the flows and flow_replies maps (LRU hashes): a packet's
/// addresses and ports as it travels, source first, ports in network
/// byte order. In flows: the client's packet as it arrives (client ->
/// frontend). In flow_replies: the backend's reply as it comes back
/// (backend -> client when only DNATed, backend -> node address and SNAT
/// port when SNATed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: Addr,
    pub daddr: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// The hash of a flow's 5-tuple (the client's packet as it arrives) that
/// picks its entry of a Maglev table: `flow_hash(key) % M`. Shared so that
/// user space (`explain`, tests) finds the entry the datapath reads, and
/// with no per-boot seed, so every node behind ECMP picks the same backend
/// for a flow. MurmurHash3 (x86, 32-bit) over the key's ten words as the
/// maps hold them: addresses and ports in network byte order, the ports in
/// one word and the protocol in the last.
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let ports = key.sport as u32 | (key.dport as u32) << 16;
    let words = [
        key.saddr[0],
        key.saddr[1],
        key.saddr[2],
        key.saddr[3],
        key.daddr[0],
        key.daddr[1],
        key.daddr[2],
        key.daddr[3],
        ports,
        key.proto as u32,
    ];
    let mut hash: u32 = 0;
    let mut index = 0;
    while index < words.len() {
        let mut k = words[index].wrapping_mul(0xcc9e_2d51);
        k = k.rotate_left(15).wrapping_mul(0x1b87_3593);
        hash = (hash ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        index += 1;
    }
    hash ^= (words.len() * 4) as u32;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ hash >> 16
}

/// `Flow::state`: what the datapath has seen of a TCP flow (UDP flows stay
/// `FLOW_OPEN`). Timeouts follow conntrack's defaults closely.
pub const FLOW_OPEN: u8 = 0;
/// A FIN or RST was seen, from either end: the flow ends after
/// `FLOW_CLOSING_TIMEOUT_NS`.
pub const FLOW_CLOSING: u8 = 1;
pub const FLOW_TCP_TIMEOUT_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const FLOW_UDP_TIMEOUT_NS: u64 = 60 * 1_000_000_000;
pub const FLOW_CLOSING_TIMEOUT_NS: u64 = 10 * 1_000_000_000;

/// How long a flow in `state` of protocol `proto` lives without a packet
/// from its client: the datapath's rule, which `dump flows` shows too.
#[inline(always)]
pub const fn flow_timeout_ns(state: u8, proto: u8) -> u64 {
    match (state, proto) {
        (FLOW_CLOSING, _) => FLOW_CLOSING_TIMEOUT_NS,
        (_, IPPROTO_TCP) => FLOW_TCP_TIMEOUT_NS,
        _ => FLOW_UDP_TIMEOUT_NS,
    }
}

/// Value of the flows map: where a north-south flow goes. A packet of a
/// known flow keeps its backend while the flow has not timed out and the
/// backend is still a member of the frontend (membership map); otherwise
/// the flow chooses again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow {
    pub backend: Addr,
    /// The node address the flow is SNATed from; unspecified when it is
    /// only DNATed (a local backend, or externalTrafficPolicy Local).
    pub snat_addr: Addr,
    pub backend_port: u16,
    /// 0 when not SNATed.
    pub snat_port: u16,
    pub service_id: u32,
    pub backend_id: u32,
    /// `FLOW_OPEN` or `FLOW_CLOSING`.
    pub state: u8,
    pub _pad: [u8; 3],
    /// `bpf_ktime_get_coarse_ns()` of the client's last packet, written
    /// at most once a second (its replies' is in its flow_replies entry).
    pub last_seen_ns: u64,
}

/// Value of the flow_replies map: what a reply is rewritten to, so the
/// client sees it come from the address it called.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowReply {
    /// The reply's new source: the frontend the client called (a node
    /// address for a node port).
    pub frontend: Addr,
    /// The reply's new destination: the client (same as the key's when
    /// not SNATed).
    pub client: Addr,
    pub frontend_port: u16,
    pub client_port: u16,
    pub service_id: u32,
    /// `bpf_ktime_get_coarse_ns()` of the flow's last reply, written at
    /// most once a second: a flow lives while its client *or* its backend
    /// sends (`flow_last_seen_ns`), as conntrack counts either direction.
    pub last_seen_ns: u64,
}

/// The key of the replies of the flow `key` (the client's packet as it
/// arrives) that goes as `flow` says: from its backend to its SNAT source
/// when it is SNATed, else to the client itself.
#[inline(always)]
pub const fn flow_reply_key(key: &FlowKey, flow: &Flow) -> FlowKey {
    let (daddr, dport) =
        if flow.snat_port != 0 { (flow.snat_addr, flow.snat_port) } else { (key.saddr, key.sport) };
    FlowKey { saddr: flow.backend, daddr, sport: flow.backend_port, dport, proto: key.proto, _pad: [0; 3] }
}

/// When the flow was last used, by its client (`flow`) or its backend
/// (`reply`, its flow_replies entry if there is one): what its timeout
/// counts from.
#[inline(always)]
pub const fn flow_last_seen_ns(flow: &Flow, reply: Option<&FlowReply>) -> u64 {
    match reply {
        Some(reply) if reply.last_seen_ns > flow.last_seen_ns => reply.last_seen_ns,
        _ => flow.last_seen_ns,
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), contain only integers and have no
    // implicit padding (the padding is explicit fields), so every bit
    // pattern is valid and none is uninitialised.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceEntry {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::MembershipKey {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::RevNatKey {}
    unsafe impl aya::Pod for super::RevNatValue {}
    unsafe impl aya::Pod for super::SocketTranslation {}
    unsafe impl aya::Pod for super::SocketSet {}
    unsafe impl aya::Pod for super::SocketPair {}
    unsafe impl aya::Pod for super::NodeAddressKey {}
    unsafe impl aya::Pod for super::ServiceStats {}
    unsafe impl aya::Pod for super::DatapathStats {}
    unsafe impl aya::Pod for super::TraceEvent {}
    unsafe impl aya::Pod for super::RateLimit {}
    unsafe impl aya::Pod for super::ExternalKey {}
    unsafe impl aya::Pod for super::MaglevKey {}
    unsafe impl aya::Pod for super::SourceRange {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::FlowReply {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn draws_give_every_slot_and_only_slots() {
        let mut drawn = [0; 8];
        for (random, slot) in (0..).zip(&mut drawn) {
            *slot = slot_of(random, 3).unwrap();
        }
        assert_eq!(drawn, [1, 2, 3, 1, 2, 3, 1, 2]);
        assert_eq!(slot_of(u32::MAX, 4), Some(4));
        assert_eq!(slot_of(7, 0), None, "no slot, no draw");
    }

    #[test]
    fn consecutive_sockets_draw_slots_evenly_and_a_tick_later_anew() {
        // Sockets as the kernel deals cookies out: in sequence, from a
        // per-CPU batch. Each of 3 and of 10 slots gets its share within
        // 5 % over 30,000 sockets, and so do pairs of consecutive sockets
        // (no pattern from one draw to the next).
        for count in [3u16, 10] {
            let mut drawn = [0u32; 10];
            let mut pairs = [[0u32; 10]; 10];
            let mut previous = None;
            for cookie in 4096..4096 + 30_000 {
                let slot = slot_of(socket_draw(cookie, 5_000_000), count).unwrap();
                drawn[usize::from(slot - 1)] += 1;
                if let Some(before) = previous {
                    pairs[usize::from(before - 1)][usize::from(slot - 1)] += 1;
                }
                previous = Some(slot);
            }
            let share = 30_000 / u32::from(count);
            for &n in &drawn[..usize::from(count)] {
                assert!(n.abs_diff(share) * 20 < share, "{count} slots drawn {drawn:?}");
            }
            let pair_share = share / u32::from(count);
            for row in &pairs[..usize::from(count)] {
                for &n in &row[..usize::from(count)] {
                    assert!(n.abs_diff(pair_share) * 5 < pair_share, "{count} slots, pairs {pairs:?}");
                }
            }
        }
        // One socket connecting again: the same slot within a tick, and
        // over ticks every slot.
        let mut again = [0u32; 4];
        for tick in 0..400 {
            let now = 1_000_000_000 + tick * 4_000_000;
            assert_eq!(socket_draw(77, now), socket_draw(77, now));
            again[usize::from(slot_of(socket_draw(77, now), 4).unwrap() - 1)] += 1;
        }
        assert!(again.iter().all(|&n| n > 60), "one socket over 400 ticks: {again:?}");
    }

    #[test]
    fn layers_are_looked_up_until_known_then_by_their_bit() {
        assert!(looks_up_layer(0, SCOPE_REDIRECT), "a map just created");
        let known = LAYERS_KNOWN | layer_bit(SCOPE_SERVICE);
        assert!(looks_up_layer(known, SCOPE_SERVICE));
        assert!(!looks_up_layer(known, SCOPE_BALANCING));
    }

    #[test]
    fn v4_loopback_is_of_mapped_addresses() {
        let mapped = |octets: [u8; 4]| [0, 0, V4_MAPPED_PREFIX[2], u32::from_ne_bytes(octets)];
        assert!(is_v4_mapped(&mapped([127, 0, 0, 1])) && is_v4_loopback(&mapped([127, 1, 2, 3])));
        assert!(!is_v4_loopback(&mapped([198, 18, 0, 1])));
        assert!(!is_v4_mapped(&[0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]), "::1");
    }

    #[test]
    fn every_ipv4_loopback_address_has_the_one_loopback_node_key() {
        let mapped = |octets: [u8; 4]| [0, 0, V4_MAPPED_PREFIX[2], u32::from_ne_bytes(octets)];
        assert_eq!(NodeAddressKey::IPV4_LOOPBACK.addr, mapped([127, 0, 0, 0]));
        for loopback in [[127, 0, 0, 1], [127, 255, 0, 9]] {
            assert_eq!(node_address_key(&mapped(loopback)), NodeAddressKey::IPV4_LOOPBACK);
        }
        let node = mapped([192, 0, 2, 1]);
        assert_eq!(node_address_key(&node), NodeAddressKey { addr: node });
        let v6 = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
        assert_eq!(node_address_key(&v6), NodeAddressKey { addr: v6 }, "::1 is its own key");
    }

    /// The sizes are part of the pinned-map contract: changing one makes
    /// `balctl load` refuse maps pinned by an older build.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 24);
        assert_eq!(size_of::<ServiceEntry>(), 40);
        assert_eq!(size_of::<Backend>(), 20);
        assert_eq!(size_of::<MembershipKey>(), 8);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<RevNatKey>(), 32);
        assert_eq!(size_of::<RevNatValue>(), 24);
        assert_eq!(size_of::<SocketTranslation>(), 48);
        assert_eq!(size_of::<SocketSet>(), 256);
        assert_eq!(size_of::<NodeAddressKey>(), 16);
        assert_eq!(size_of::<ServiceStats>(), 56);
        assert_eq!(size_of::<DatapathStats>(), 8);
        assert_eq!(size_of::<TraceEvent>(), 112);
        assert_eq!(size_of::<RateLimit>(), 24);
        assert_eq!(size_of::<ExternalKey>(), 20);
        assert_eq!(size_of::<MaglevKey>(), 8);
        assert_eq!(size_of::<SourceRange>(), 20);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<Flow>(), 56);
        assert_eq!(size_of::<FlowReply>(), 48);
        assert_eq!(size_of::<SocketPair>(), 8);
        assert_eq!(size_of::<DestroyedSocket>(), 16);
    }

    /// The hash is fixed (every node and user space must agree) and
    /// spreads flows that differ only in the client's port.
    #[test]
    fn flow_hash_is_fixed_and_spreads_ports() {
        let key = |sport: u16| FlowKey {
            saddr: [0, 0, u32::from_be(0xffff), u32::from_be(0xc000_0201)],
            daddr: [0, 0, u32::from_be(0xffff), u32::from_be(0xc612_0001)],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        assert_eq!(flow_hash(&key(40_000)), flow_hash(&key(40_000)));
        assert_eq!(flow_hash(&key(40_000)), 0xba60_b713);
        let mut buckets = [0u32; 7];
        for port in 40_000..47_000 {
            buckets[(flow_hash(&key(port)) % 7) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| (800..1200).contains(&n)), "{buckets:?}");
    }
}
