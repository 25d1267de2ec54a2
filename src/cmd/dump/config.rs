//! `dump config`: how the datapath is set up: every pinned map with its
//! type, capacity and fill, and the trace slots with their leases. It
//! describes the whole datapath, so `--vip` does not narrow it.

use anyhow::Result;
use balctl_common::TRACE_SLOTS;
use serde::Serialize;

use super::{Tables, View, seconds};
use crate::{
    bpf::{
        inventory::{self, Unit},
        sys::monotonic_ns,
    },
    output::{Listing, TableStyle, column, wide},
};

#[derive(Serialize)]
pub struct Config {
    config: Datapath,
}

#[derive(Serialize)]
struct Datapath {
    maps: Vec<MapRecord>,
    trace_slots: Vec<TraceSlot>,
}

#[derive(Serialize)]
struct MapRecord {
    name: &'static str,
    #[serde(rename = "type")]
    map_type: &'static str,
    capacity: u32,
    /// What `capacity` counts: entries, slots (trace_leases) or bytes (ring buffers).
    capacity_unit: Unit,
    /// trace_leases: running leases; ring buffers: null.
    entries: Option<usize>,
}

#[derive(Serialize)]
struct TraceSlot {
    slot: u32,
    /// Whether a `balctl trace` holds the slot: its lease has not run out.
    active: bool,
    /// Until the lease runs out unless renewed; null when not active.
    seconds_left: Option<f64>,
}

pub fn read(view: &View) -> Result<Config> {
    let maps = inventory::map_fills(view.pins)?
        .into_iter()
        .map(|fill| MapRecord {
            name: fill.name,
            map_type: fill.map_type,
            capacity: fill.capacity,
            capacity_unit: fill.unit,
            entries: fill.entries,
        })
        .collect();
    let now = monotonic_ns();
    let trace_slots = (0..TRACE_SLOTS)
        .zip(inventory::trace_leases(view.pins)?)
        .map(|(slot, until)| {
            let active = now < until;
            TraceSlot { slot, active, seconds_left: active.then(|| seconds(until - now)) }
        })
        .collect();
    Ok(Config { config: Datapath { maps, trace_slots } })
}

impl Tables for Config {
    fn print_table(&self, style: TableStyle) {
        let columns = [column("MAP"), column("TYPE"), column("CAPACITY"), column("ENTRIES"), wide("FILL")];
        let mut maps = Listing::new(style, &columns);
        for map in &self.config.maps {
            let capacity = match map.capacity_unit {
                Unit::Entries => map.capacity.to_string(),
                Unit::Slots => format!("{} slots", map.capacity),
                Unit::Bytes => format!("{} bytes", map.capacity),
            };
            let entries = map.entries.map_or_else(|| "-".to_owned(), |n| n.to_string());
            let fill = map.entries.map_or_else(
                || "-".to_owned(),
                |n| format!("{:.1}%", 100.0 * n as f64 / f64::from(map.capacity)),
            );
            maps.add_row([map.name.to_owned(), map.map_type.to_owned(), capacity, entries, fill]);
        }
        maps.print();
        println!();
        let mut slots = Listing::new(style, &[column("TRACE SLOT"), column("LEASE")]);
        for slot in &self.config.trace_slots {
            let lease = match slot.seconds_left {
                Some(left) => format!("running, {left:.1}s left"),
                None => "free".to_owned(),
            };
            slots.add_row([slot.slot.to_string(), lease]);
        }
        slots.print();
    }
}
