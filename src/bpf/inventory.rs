//! What each pinned map is and how full it is: `status` shows the fill
//! levels, `dump config` describes every map and the trace slots.

use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData, MapInfo};
use aya_obj::generated::bpf_map_type;
use balctl_common::{TRACE_SLOTS, map_names};

use super::{
    batch,
    object::MAPS,
    pins::{PinDir, open_map, open_pinned},
    sockets::translated_sockets,
    sys::monotonic_ns,
};

/// One pinned map.
pub struct MapFill {
    pub name: &'static str,
    /// The kernel's map type, lowercase without `BPF_MAP_TYPE_`.
    pub map_type: &'static str,
    /// How much it can hold, in `unit`s.
    pub capacity: u32,
    pub unit: Unit,
    /// Entries it holds; trace leases: the leases that run now. None for
    /// ring buffers, whose fill is not a number of entries.
    pub entries: Option<usize>,
}

/// What a map's capacity counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Entries,
    /// Trace leases: one per trace slot (the array's extra entry is the
    /// lease every tracer renews, not a slot).
    Slots,
    /// Ring buffers.
    Bytes,
}

/// Every map of the datapath, in the object's order.
pub fn map_fills(pins: &PinDir) -> Result<Vec<MapFill>> {
    MAPS.iter()
        .map(|spec| {
            let path = pins.map(spec.name)?;
            let info =
                MapInfo::from_pin(&path).with_context(|| format!("cannot inspect {}", path.display()))?;
            let (capacity, unit, entries) = match spec.map_type {
                bpf_map_type::BPF_MAP_TYPE_RINGBUF => (info.max_entries(), Unit::Bytes, None),
                // One fixed entry, or the counter arrays (a cell per
                // frontend and per membership: as full as the services and
                // membership maps are): no fill level, `status` leaves
                // them out.
                _ if [
                    map_names::LAYERS,
                    map_names::DATAPATH_STATS,
                    map_names::STATS,
                    map_names::BACKEND_HITS,
                    map_names::CONNS,
                ]
                .contains(&spec.name) =>
                {
                    (info.max_entries(), Unit::Entries, None)
                }
                _ if spec.name == map_names::TRACE_LEASES => {
                    (TRACE_SLOTS, Unit::Slots, Some(running_leases(pins)?))
                }
                _ if spec.name == map_names::SOCKETS => (
                    spec.capacity_of(info.max_entries()),
                    Unit::Entries,
                    Some(translated_sockets(pins)?.len()),
                ),
                _ => (info.max_entries(), Unit::Entries, Some(hash_entries(pins, spec.name)?)),
            };
            Ok(MapFill { name: spec.name, map_type: type_name(spec.map_type), capacity, unit, entries })
        })
        .collect()
}

/// When each trace slot's lease ends (`bpf_ktime_get_ns()`), slot order;
/// the last entry is the lease every tracer renews (`TRACE_ANY`).
pub fn trace_leases(pins: &PinDir) -> Result<Vec<u64>> {
    let leases: Array<MapData, u64> = open_map(pins, map_names::TRACE_LEASES)?;
    leases.iter().collect::<Result<_, _>>().context("reading the trace leases")
}

fn running_leases(pins: &PinDir) -> Result<usize> {
    let now = monotonic_ns();
    Ok(trace_leases(pins)?.iter().take(TRACE_SLOTS as usize).filter(|&&until| now < until).count())
}

/// Entries of a hash map.
fn hash_entries(pins: &PinDir, name: &str) -> Result<usize> {
    let map = open_pinned(pins, name, || format!("cannot open the {name} map in {}", pins.root().display()))?;
    // Keys that vanish during the walk (LRU evictions) are not counted.
    batch::count(&map).with_context(|| format!("cannot count the entries of the {name} map"))
}

fn type_name(map_type: bpf_map_type) -> &'static str {
    match map_type {
        bpf_map_type::BPF_MAP_TYPE_HASH => "hash",
        bpf_map_type::BPF_MAP_TYPE_LRU_HASH => "lru_hash",
        bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH => "percpu_hash",
        bpf_map_type::BPF_MAP_TYPE_ARRAY => "array",
        bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY => "percpu_array",
        bpf_map_type::BPF_MAP_TYPE_RINGBUF => "ringbuf",
        _ => "other",
    }
}
