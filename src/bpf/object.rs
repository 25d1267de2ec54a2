//! The embedded eBPF object and what balctl expects to find in it: one
//! program per hook, of the kind and attach point the hook says, and the
//! maps with their kernel layouts.

use std::{fmt, mem::size_of};

use anyhow::{Context as _, Result, bail};
use aya::{maps::lpm_trie::Key as LpmKey, programs::TcAttachType};
use aya_obj::{
    ProgramSection,
    generated::{bpf_attach_type, bpf_map_type},
};
use balctl_common::{
    Addr, AffinityKey, AffinityValue, Backend, Cell, DatapathStats, EVENTS_BYTES, ExternalKey, Flow, FlowKey,
    FlowReply, MaglevChunk, MaglevKey, MembershipKey, NodeAddressKey, RateLimit, RevNatKey, RevNatValue,
    SOCKET_WAYS, ServiceEntry, ServiceKey, ServiceStats, SocketSet, SourceRange, TRACE_LEASE_ENTRIES,
    default_capacity, map_names,
};

/// The programs, built by build.rs from ebpf/programs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balctl"));

/// A program balctl attaches, and where: the cgroup sock_addr hooks that
/// translate, sock_release, which frees a closed socket's way, and the tc
/// programs of `load --devices` on each device's tcx ingress and egress. Loading,
/// attaching, pinning, swapping in place, unloading and `status` all go
/// through this description (src/bpf/loader.rs, links.rs), so a program of another
/// kind is one more `ProgramKind` and `AttachPoint` variant and their arms.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// The name users see and the file name of its link's pin: a cgroup
    /// hook has one link, `<name>`; a tcx hook one per device,
    /// `<name>@<device>` (src/bpf/links.rs).
    pub name: &'static str,
    /// The program's function name in the object.
    pub program: &'static str,
    pub kind: ProgramKind,
    pub attach: AttachPoint,
}

/// The kind of program a hook runs, which says how it is loaded and
/// attached; the object's section must give the program this kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    /// `cgroup/connect4` and the like: sees and rewrites socket addresses.
    CgroupSockAddr,
    /// `cgroup/sock_release`: runs as a socket is freed.
    CgroupSock,
    /// `classifier`: a tc program, which sees and rewrites packets.
    SchedClassifier,
}

/// Where the kernel runs a hook's program. Every attachment is a bpf_link
/// pinned under the pin dir's `links/`, swapped in place with
/// `BPF_LINK_UPDATE` and removed with `BPF_LINK_DETACH`; what differs per
/// attach point is the target the link is made on and what the kernel
/// reports of it (`sys::LinkTarget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachPoint {
    /// A hook of the target cgroup (`load --cgroup`), for the sockets of
    /// its processes and its descendants': one link per hook.
    Cgroup { attach_type: bpf_attach_type },
    /// A device's tcx hook (`BPF_TCX_INGRESS` or `BPF_TCX_EGRESS`), for
    /// the packets it receives or sends: one link per device of
    /// `load --devices`, ordered first among the device's tc programs so
    /// balctl translates before the others see the packet.
    Tcx { direction: TcAttachType },
}

impl AttachPoint {
    /// Whether a hook here has a link per device rather than one.
    pub fn is_per_device(&self) -> bool {
        matches!(self, Self::Tcx { .. })
    }
}

impl fmt::Display for AttachPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cgroup { attach_type } => write!(f, "on a cgroup at {attach_type:?}"),
            Self::Tcx { direction } => write!(f, "on a device's tcx {}", direction_name(*direction)),
        }
    }
}

/// `ingress` or `egress`, as `status` and `bpftool net` name a tcx direction.
pub fn direction_name(direction: TcAttachType) -> &'static str {
    match direction {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
        TcAttachType::Custom(_) => "custom",
    }
}

pub const HOOKS: [Hook; 11] = [
    sock_addr("connect4", "balctl_connect4", bpf_attach_type::BPF_CGROUP_INET4_CONNECT),
    sock_addr("connect6", "balctl_connect6", bpf_attach_type::BPF_CGROUP_INET6_CONNECT),
    sock_addr("sendmsg4", "balctl_sendmsg4", bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG),
    sock_addr("sendmsg6", "balctl_sendmsg6", bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG),
    sock_addr("recvmsg4", "balctl_recvmsg4", bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG),
    sock_addr("recvmsg6", "balctl_recvmsg6", bpf_attach_type::BPF_CGROUP_UDP6_RECVMSG),
    sock_addr("getpeername4", "balctl_getpeer4", bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME),
    sock_addr("getpeername6", "balctl_getpeer6", bpf_attach_type::BPF_CGROUP_INET6_GETPEERNAME),
    Hook {
        name: "sock_release",
        program: "balctl_sock_release",
        kind: ProgramKind::CgroupSock,
        attach: AttachPoint::Cgroup { attach_type: bpf_attach_type::BPF_CGROUP_INET_SOCK_RELEASE },
    },
    tcx("from_device", "balctl_from_device", TcAttachType::Ingress),
    tcx("to_device", "balctl_to_device", TcAttachType::Egress),
];

const fn sock_addr(name: &'static str, program: &'static str, attach_type: bpf_attach_type) -> Hook {
    Hook { name, program, kind: ProgramKind::CgroupSockAddr, attach: AttachPoint::Cgroup { attach_type } }
}

const fn tcx(name: &'static str, program: &'static str, direction: TcAttachType) -> Hook {
    Hook { name, program, kind: ProgramKind::SchedClassifier, attach: AttachPoint::Tcx { direction } }
}

/// The kind and attach point the object's section gives a program, for
/// the kinds balctl attaches. A `classifier` section names no direction
/// (the attachment chooses it): None for the attach point.
fn section_attach(section: &ProgramSection) -> Option<(ProgramKind, Option<AttachPoint>)> {
    match *section {
        ProgramSection::CgroupSockAddr { attach_type } => {
            Some((ProgramKind::CgroupSockAddr, Some(AttachPoint::Cgroup { attach_type: attach_type.into() })))
        }
        ProgramSection::CgroupSock { attach_type } => {
            Some((ProgramKind::CgroupSock, Some(AttachPoint::Cgroup { attach_type: attach_type.into() })))
        }
        ProgramSection::SchedClassifier => Some((ProgramKind::SchedClassifier, None)),
        _ => None,
    }
}

/// A map of the object and the layout a pinned map must have to be reused.
#[derive(Clone, Copy, Debug)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: bpf_map_type,
    pub key_size: u32,
    pub value_size: u32,
    /// The `--map-size` name that sets this map's capacity, if one does.
    pub size_name: Option<&'static str>,
    /// In records (sockets, services...), which `--map-size` counts too.
    pub default_capacity: u32,
    /// Records one kernel map entry holds: `SOCKET_WAYS` for the sockets
    /// map's sets, else 1.
    pub ways: u32,
    /// The map's creation flags (`BPF_F_NO_PREALLOC` or 0), part of the
    /// layout a pinned map must have.
    pub map_flags: u32,
}

impl MapSpec {
    /// The kernel's `max_entries` for a capacity of `records`.
    pub fn max_entries_for(&self, records: u32) -> u32 {
        records.div_ceil(self.ways)
    }

    /// The records a map of `max_entries` holds.
    pub fn capacity_of(&self, max_entries: u32) -> u32 {
        max_entries.saturating_mul(self.ways)
    }
}

pub const MAPS: [MapSpec; 23] = [
    map::<ServiceKey, ServiceEntry>(
        map_names::SERVICES,
        bpf_map_type::BPF_MAP_TYPE_HASH,
        "services",
        default_capacity::SERVICES,
    ),
    map::<u32, Backend>(
        map_names::BACKENDS,
        bpf_map_type::BPF_MAP_TYPE_HASH,
        "backends",
        default_capacity::BACKENDS,
    ),
    // One membership per backend slot, so it follows the services size.
    map::<MembershipKey, Cell>(
        map_names::MEMBERSHIP,
        bpf_map_type::BPF_MAP_TYPE_HASH,
        "services",
        default_capacity::SERVICES,
    ),
    map::<AffinityKey, AffinityValue>(
        map_names::AFFINITY,
        bpf_map_type::BPF_MAP_TYPE_LRU_HASH,
        "affinity",
        default_capacity::AFFINITY,
    ),
    MapSpec {
        ways: SOCKET_WAYS as u32,
        ..map::<u32, SocketSet>(
            map_names::SOCKETS,
            bpf_map_type::BPF_MAP_TYPE_ARRAY,
            "sockets",
            default_capacity::SOCKETS,
        )
    },
    map::<RevNatKey, RevNatValue>(
        map_names::REVNAT,
        bpf_map_type::BPF_MAP_TYPE_LRU_HASH,
        "revnat",
        default_capacity::REVNAT,
    ),
    map::<NodeAddressKey, u32>(
        map_names::NODES,
        bpf_map_type::BPF_MAP_TYPE_HASH,
        "nodes",
        default_capacity::NODES,
    ),
    // Counters: a cell per frontend, and per frontend and backend; no more
    // of either than the services map has entries.
    map::<u32, ServiceStats>(
        map_names::STATS,
        bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
        "services",
        default_capacity::SERVICES,
    ),
    map::<u32, u64>(
        map_names::BACKEND_HITS,
        bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
        "services",
        default_capacity::SERVICES,
    ),
    // Live connections per membership, at its cell as backend_hits.
    map::<u32, u64>(
        map_names::CONNS,
        bpf_map_type::BPF_MAP_TYPE_ARRAY,
        "services",
        default_capacity::SERVICES,
    ),
    // The node's counters: one entry, a value per CPU.
    MapSpec {
        map_type: bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
        ..fixed_array::<DatapathStats>(map_names::DATAPATH_STATS, 1)
    },
    map::<u32, RateLimit>(
        map_names::RATE_LIMITS,
        bpf_map_type::BPF_MAP_TYPE_HASH,
        "rate_limits",
        default_capacity::RATE_LIMITS,
    ),
    fixed_array::<u32>(map_names::LAYERS, 1),
    fixed_array::<u64>(map_names::TRACE_LEASES, TRACE_LEASE_ENTRIES),
    // North-south: the external index, Maglev tables, source ranges and flows.
    MapSpec {
        map_flags: BPF_F_NO_PREALLOC,
        ..map::<ExternalKey, Addr>(
            map_names::EXTERNAL,
            bpf_map_type::BPF_MAP_TYPE_HASH,
            "external",
            default_capacity::EXTERNAL,
        )
    },
    MapSpec {
        map_flags: BPF_F_NO_PREALLOC,
        ..map::<MaglevKey, MaglevChunk>(
            map_names::MAGLEV,
            bpf_map_type::BPF_MAP_TYPE_HASH,
            "maglev",
            default_capacity::MAGLEV,
        )
    },
    MapSpec {
        map_flags: BPF_F_NO_PREALLOC,
        ..map::<LpmKey<SourceRange>, u8>(
            map_names::SOURCE_RANGES,
            bpf_map_type::BPF_MAP_TYPE_LPM_TRIE,
            "source_ranges",
            default_capacity::SOURCE_RANGES,
        )
    },
    map::<FlowKey, Flow>(
        map_names::FLOWS,
        bpf_map_type::BPF_MAP_TYPE_LRU_HASH,
        "flows",
        default_capacity::FLOWS,
    ),
    // A reply entry per flow, so it follows the flows size.
    map::<FlowKey, FlowReply>(
        map_names::FLOW_REPLIES,
        bpf_map_type::BPF_MAP_TYPE_LRU_HASH,
        "flows",
        default_capacity::FLOWS,
    ),
    events(0),
    events(1),
    events(2),
    events(3),
];

/// A trace slot's ring buffer: no key or value, a size in bytes.
const fn events(slot: usize) -> MapSpec {
    MapSpec {
        name: map_names::EVENTS[slot],
        map_type: bpf_map_type::BPF_MAP_TYPE_RINGBUF,
        key_size: 0,
        value_size: 0,
        size_name: None,
        default_capacity: EVENTS_BYTES,
        ways: 1,
        map_flags: 0,
    }
}

/// The spec of the map called `name`, which must be one of `MAPS`.
pub fn spec(name: &str) -> MapSpec {
    *MAPS.iter().find(|spec| spec.name == name).expect("a map of the object")
}

/// The global of the programs that holds the sockets map's number of sets.
pub const SOCKET_SETS: &str = "SOCKET_SETS";

/// An array of `entries` values that no `--map-size` resizes.
const fn fixed_array<V>(name: &'static str, entries: u32) -> MapSpec {
    MapSpec {
        name,
        map_type: bpf_map_type::BPF_MAP_TYPE_ARRAY,
        key_size: size_of::<u32>() as u32,
        value_size: size_of::<V>() as u32,
        size_name: None,
        default_capacity: entries,
        ways: 1,
        map_flags: 0,
    }
}

/// The kernel's flag for a map whose entries are allocated as written.
const BPF_F_NO_PREALLOC: u32 = aya_obj::generated::BPF_F_NO_PREALLOC;

/// The names `--map-size` accepts.
pub const SIZE_NAMES: [&str; 11] = [
    "services",
    "backends",
    "affinity",
    "sockets",
    "revnat",
    "nodes",
    "rate_limits",
    "external",
    "maglev",
    "source_ranges",
    "flows",
];

const fn map<K, V>(
    name: &'static str,
    map_type: bpf_map_type,
    size_name: &'static str,
    default_capacity: u32,
) -> MapSpec {
    MapSpec {
        name,
        map_type,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        size_name: Some(size_name),
        default_capacity,
        ways: 1,
        map_flags: 0,
    }
}

/// Refuses an object that lacks a hook's program or has a map of another
/// layout than balctl drives: loading it would fail half way, or worse,
/// reuse the pinned maps with another layout.
pub fn check(object: &[u8]) -> Result<()> {
    let parsed = aya_obj::Object::parse(object).context("not an eBPF object (ELF) aya can read")?;
    check_programs(&parsed, &HOOKS)?;
    for spec in MAPS {
        let map = parsed.maps.get(spec.name).with_context(|| format!("it has no map {}", spec.name))?;
        let (found, wanted) = (
            (map.map_type(), map.key_size(), map.value_size()),
            (spec.map_type as u32, spec.key_size, spec.value_size),
        );
        if found != wanted {
            bail!(
                "its map {} has type, key size and value size {found:?}, balctl's has {wanted:?}; \
                 build it from this balctl's ebpf/",
                spec.name
            );
        }
    }
    Ok(())
}

/// Refuses an object without a hook's program, or whose section gives it
/// another kind or attach point than the hook: aya loads a program for its
/// section's attach type, so it would run at another hook than its link's.
fn check_programs(parsed: &aya_obj::Object, hooks: &[Hook]) -> Result<()> {
    for hook in hooks {
        let program = parsed
            .programs
            .get(hook.program)
            .with_context(|| format!("it has no program {} (for the {} hook)", hook.program, hook.name))?;
        let found = section_attach(&program.section);
        let fits =
            found.is_some_and(|(kind, attach)| kind == hook.kind && attach.is_none_or(|a| a == hook.attach));
        if !fits {
            let built = match found {
                Some((kind, Some(attach))) => format!("a {kind:?} program {attach}"),
                Some((kind, None)) => format!("a {kind:?} program"),
                None => format!("{:?}", program.section),
            };
            bail!(
                "its program {} is built as {built}; the {} hook runs a {:?} program {}",
                hook.program,
                hook.name,
                hook.kind,
                hook.attach
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded object must contain exactly the programs and maps
    /// balctl drives; a rename on either side fails here, not at load time.
    #[test]
    fn object_has_every_hook_and_map() {
        check(OBJECT).expect("the embedded object is balctl's");
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        for spec in MAPS {
            let max_entries = object.maps[spec.name].max_entries();
            assert_eq!(spec.capacity_of(max_entries), spec.default_capacity, "{}", spec.name);
        }
        assert!(SIZE_NAMES.iter().all(|n| MAPS.iter().any(|m| m.size_name == Some(*n))));
        let mut truncated = OBJECT.to_vec();
        truncated.truncate(OBJECT.len() / 2);
        assert!(check(&truncated).is_err());
    }

    /// A hook whose program the object builds for another attach point is
    /// refused, naming both.
    #[test]
    fn a_program_of_another_attach_point_is_refused() {
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        let mut hooks = HOOKS;
        hooks[0].attach = HOOKS[1].attach;
        let err = check_programs(&object, &hooks).expect_err("connect4 built for connect6").to_string();
        assert!(err.contains("balctl_connect4") && err.contains("BPF_CGROUP_INET6_CONNECT"), "{err}");
        hooks = HOOKS;
        hooks[8].kind = ProgramKind::CgroupSockAddr;
        let err = check_programs(&object, &hooks).expect_err("sock_release is a sock program").to_string();
        assert!(err.contains("the sock_release hook"), "{err}");
        hooks = HOOKS;
        hooks[9].program = "balctl_connect4";
        let err = check_programs(&object, &hooks).expect_err("connect4 is no tc program").to_string();
        assert!(
            err.contains("the from_device hook runs a SchedClassifier program on a device's tcx ingress"),
            "{err}"
        );
        hooks = HOOKS;
        hooks[0].program = "balctl_to_device";
        let err = check_programs(&object, &hooks).expect_err("to_device is no sock_addr program").to_string();
        assert!(err.contains("built as a SchedClassifier program; the connect4 hook"), "{err}");
    }
}
