//! The maps (layouts and names in `balctl_common`) and the one global
//! user space sets at load.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use balctl_common::{
    Addr, AffinityKey, AffinityValue, Backend, Cell, DESTROY_PAIRS_ENTRIES, DatapathStats, EVENTS_BYTES,
    ExternalKey, Flow, FlowKey, FlowReply, MaglevChunk, MaglevKey, MembershipKey, NodeAddressKey, RateLimit,
    RevNatKey, RevNatValue, SOCKET_WAYS, ServiceEntry, ServiceKey, ServiceStats, SocketPair, SocketSet,
    SourceRange, TRACE_LEASE_ENTRIES, default_capacity,
};

use super::{
    clock::KeptTime,
    icmp,
    nodeport::{Nat, SCRATCH_ENTRIES},
};

#[map(name = "services")]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> =
    HashMap::with_max_entries(default_capacity::SERVICES, 0);

#[map(name = "backends")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(default_capacity::BACKENDS, 0);

// Sized like the services map: one entry per backend slot.
#[map(name = "membership")]
pub static MEMBERSHIP: HashMap<MembershipKey, Cell> =
    HashMap::with_max_entries(default_capacity::SERVICES, 0);

#[map(name = "affinity")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(default_capacity::AFFINITY, 0);

#[map(name = "sockets")]
pub static SOCKETS: Array<SocketSet> =
    Array::with_max_entries(default_capacity::SOCKETS / SOCKET_WAYS as u32, 0);

/// The sockets map's number of sets: `load` writes it for the map it pins.
/// A global of .rodata, which the verifier sees as a constant.
#[unsafe(no_mangle)]
pub static SOCKET_SETS: u32 = default_capacity::SOCKETS / SOCKET_WAYS as u32;

#[map(name = "revnat")]
pub static REVNAT: LruHashMap<RevNatKey, RevNatValue> =
    LruHashMap::with_max_entries(default_capacity::REVNAT, 0);

#[map(name = "nodes")]
pub static NODES: HashMap<NodeAddressKey, u32> = HashMap::with_max_entries(default_capacity::NODES, 0);

// Counters are per CPU: no atomic operation on the connect path. A cell
// per frontend and one per frontend and backend (`balctl_common::Cell`),
// as many as the services map has entries.
#[map(name = "stats")]
pub static STATS: PerCpuArray<ServiceStats> = PerCpuArray::with_max_entries(default_capacity::SERVICES, 0);

#[map(name = "backend_hits")]
pub static BACKEND_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(default_capacity::SERVICES, 0);

// Live connections per membership, at its cell (`conns`): one count for
// every CPU, changed with atomic adds.
#[map(name = "conns")]
pub static CONNS: Array<u64> = Array::with_max_entries(default_capacity::SERVICES, 0);

#[map(name = "rate_limits")]
pub static RATE_LIMITS: HashMap<u32, RateLimit> = HashMap::with_max_entries(default_capacity::RATE_LIMITS, 0);

// The node's counters (one entry): per CPU, like the frontends'.
#[map(name = "datapath_stats")]
pub static DATAPATH_STATS: PerCpuArray<DatapathStats> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "layers")]
pub static LAYERS: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "trace_leases")]
pub static TRACE_LEASES: Array<u64> = Array::with_max_entries(TRACE_LEASE_ENTRIES, 0);

#[map(name = "events0")]
pub static EVENTS0: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "events1")]
pub static EVENTS1: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "events2")]
pub static EVENTS2: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "events3")]
pub static EVENTS3: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

// The pairs the socket-destroy iterators close sockets of, written by
// user space before each run. Not pinned and not in the contract's pinned
// maps: each lazy load of the iterators makes its own. Not preallocated:
// most runs hold a pair or two.
#[map(name = "destroy_pairs")]
pub static DESTROY_PAIRS: HashMap<SocketPair, u8> =
    HashMap::with_max_entries(DESTROY_PAIRS_ENTRIES, BPF_F_NO_PREALLOC);

// North-south: read and written by the packet programs only.

// Not preallocated: its size follows node ports x node addresses, which
// differs much from one cluster to another.
#[map(name = "external")]
pub static EXTERNAL: HashMap<ExternalKey, Addr> =
    HashMap::with_max_entries(default_capacity::EXTERNAL, BPF_F_NO_PREALLOC);

// Not preallocated: a table of M entries per external frontend, M from
// 100 x its backends up, so the memory follows what is written.
#[map(name = "maglev")]
pub static MAGLEV: HashMap<MaglevKey, MaglevChunk> =
    HashMap::with_max_entries(default_capacity::MAGLEV, BPF_F_NO_PREALLOC);

// The kernel requires BPF_F_NO_PREALLOC of an LPM trie.
#[map(name = "source_ranges")]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u8> =
    LpmTrie::with_max_entries(default_capacity::SOURCE_RANGES, BPF_F_NO_PREALLOC);

#[map(name = "flows")]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(default_capacity::FLOWS, 0);

#[map(name = "flow_replies")]
pub static FLOW_REPLIES: LruHashMap<FlowKey, FlowReply> =
    LruHashMap::with_max_entries(default_capacity::FLOWS, 0);

// Working memory of the packet programs (`nodeport::Nat`), per CPU, an
// entry per program. Not pinned and not in the contract: it holds nothing
// from one packet to the next, and each load makes its own.
#[map(name = "nodeport_scratch")]
pub static NODEPORT_SCRATCH: PerCpuArray<Nat> = PerCpuArray::with_max_entries(SCRATCH_ENTRIES, 0);

// The ICMP error a packet too big for its next link is turned into
// (`icmp::too_big`), made here before it is written over the packet: per
// CPU, one entry. Not pinned and not in the contract, as nodeport_scratch.
#[map(name = "icmp_scratch")]
pub static ICMP_SCRATCH: PerCpuArray<icmp::TooBig> = PerCpuArray::with_max_entries(1, 0);

// The coarse time each CPU read last, with its tick (`clock::coarse_now`).
// Not pinned and not in the contract, as nodeport_scratch: a cache, which
// each load makes anew.
#[map(name = "clock_cache")]
pub static CLOCK_CACHE: PerCpuArray<KeptTime> = PerCpuArray::with_max_entries(1, 0);
