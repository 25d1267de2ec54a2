//! The embedded eBPF object and what balctl expects to find in it: one
//! program per hook and the maps with their kernel layouts.

use std::mem::size_of;

use anyhow::{Context as _, Result, bail};
use aya_obj::generated::{bpf_attach_type, bpf_map_type};
use balctl_common::{
    AffinityKey, AffinityValue, Backend, DatapathStats, EVENTS_BYTES, MembershipKey, NodeAddressKey,
    RateLimit, RevNatKey, RevNatValue, SOCKET_WAYS, ServiceEntry, ServiceKey, ServiceStats, SocketSet,
    TRACE_LEASE_ENTRIES, default_capacity, map_names,
};

/// The programs, built by build.rs from ebpf/programs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balctl"));

/// A cgroup hook balctl attaches a program to: the sock_addr hooks that
/// translate, and sock_release, which frees a closed socket's way.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// The name users see and the link's pin file name.
    pub name: &'static str,
    /// The program's function name in the object (whose section names
    /// the attach type).
    pub program: &'static str,
    pub attach_type: bpf_attach_type,
}

impl Hook {
    /// The kernel's `bpf_attach_type` number for queries.
    pub fn kernel_attach_type(&self) -> u32 {
        self.attach_type as u32
    }
}

pub const HOOKS: [Hook; 9] = [
    hook("connect4", "balctl_connect4", bpf_attach_type::BPF_CGROUP_INET4_CONNECT),
    hook("connect6", "balctl_connect6", bpf_attach_type::BPF_CGROUP_INET6_CONNECT),
    hook("sendmsg4", "balctl_sendmsg4", bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG),
    hook("sendmsg6", "balctl_sendmsg6", bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG),
    hook("recvmsg4", "balctl_recvmsg4", bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG),
    hook("recvmsg6", "balctl_recvmsg6", bpf_attach_type::BPF_CGROUP_UDP6_RECVMSG),
    hook("getpeername4", "balctl_getpeer4", bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME),
    hook("getpeername6", "balctl_getpeer6", bpf_attach_type::BPF_CGROUP_INET6_GETPEERNAME),
    hook("sock_release", "balctl_sock_release", bpf_attach_type::BPF_CGROUP_INET_SOCK_RELEASE),
];

const fn hook(name: &'static str, program: &'static str, attach_type: bpf_attach_type) -> Hook {
    Hook { name, program, attach_type }
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

pub const MAPS: [MapSpec; 17] = [
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
    map::<MembershipKey, u32>(
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
    // Counters: one entry per frontend, and per frontend and backend.
    map::<u32, ServiceStats>(
        map_names::STATS,
        bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH,
        "services",
        default_capacity::SERVICES,
    ),
    map::<MembershipKey, u64>(
        map_names::BACKEND_HITS,
        bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH,
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
    }
}

/// The names `--map-size` accepts.
pub const SIZE_NAMES: [&str; 7] =
    ["services", "backends", "affinity", "sockets", "revnat", "nodes", "rate_limits"];

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
    }
}

/// Refuses an object that lacks a hook's program or has a map of another
/// layout than balctl drives: loading it would fail half way, or worse,
/// reuse the pinned maps with another layout.
pub fn check(object: &[u8]) -> Result<()> {
    let parsed = aya_obj::Object::parse(object).context("not an eBPF object (ELF) aya can read")?;
    for hook in HOOKS {
        if !parsed.programs.contains_key(hook.program) {
            bail!("it has no program {} (for the {} hook)", hook.program, hook.name);
        }
    }
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
}
