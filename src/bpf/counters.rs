//! The datapath's always-on counters: `stats` (per frontend) and
//! `backend_hits` (per frontend and backend), per-CPU arrays indexed by
//! the counter cells the image hands out (`balctl_common::Cell`), and
//! `datapath_stats` (the node's). Each read sums one value per possible CPU.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use balctl_common::{Cell, DatapathStats, NO_CELL, ServiceStats, map_names};

use super::pins::{PinDir, open_map};

pub struct CounterMaps {
    stats: PerCpuArray<MapData, ServiceStats>,
    backend_hits: PerCpuArray<MapData, u64>,
    /// Live connections per membership (not per CPU): see
    /// `balctl_common::SOCKET_COUNTED`.
    conns: Array<MapData, u64>,
}

/// Cells of both arrays.
#[derive(Debug, Default)]
pub struct Cells {
    pub stats: BTreeSet<Cell>,
    pub hits: BTreeSet<Cell>,
}

impl Cells {
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty() && self.hits.is_empty()
    }

    /// Adds a frontend's cell (`NO_CELL` is nobody's: left out).
    pub fn add_stats(&mut self, cell: Cell) {
        if cell != NO_CELL {
            self.stats.insert(cell);
        }
    }

    /// Adds a membership's cell (`NO_CELL` is nobody's: left out).
    pub fn add_hits(&mut self, cell: Cell) {
        if cell != NO_CELL {
            self.hits.insert(cell);
        }
    }
}

impl CounterMaps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self {
            stats: open_map(pins, map_names::STATS)?,
            backend_hits: open_map(pins, map_names::BACKEND_HITS)?,
            conns: open_map(pins, map_names::CONNS)?,
        })
    }

    /// A frontend's counters (at its `cell`) over every CPU; zeros for no
    /// cell.
    pub fn service(&self, cell: Cell) -> Result<ServiceStats> {
        if cell == NO_CELL {
            return Ok(ServiceStats::default());
        }
        let per_cpu = self.stats.get(&cell, 0).with_context(|| format!("reading stats cell {cell}"))?;
        Ok(per_cpu.iter().fold(ServiceStats::default(), |mut sum, cpu| {
            sum.resolutions = sum.resolutions.wrapping_add(cpu.resolutions);
            for (total, failures) in sum.failures.iter_mut().zip(cpu.failures) {
                *total = total.wrapping_add(failures);
            }
            for (total, gave_way) in sum.gave_way.iter_mut().zip(cpu.gave_way) {
                *total = total.wrapping_add(gave_way);
            }
            sum
        }))
    }

    /// How often a frontend sent to a backend (its membership's `cell`),
    /// over every CPU.
    pub fn hits(&self, cell: Cell) -> Result<u64> {
        if cell == NO_CELL {
            return Ok(0);
        }
        let per_cpu =
            self.backend_hits.get(&cell, 0).with_context(|| format!("reading backend_hits cell {cell}"))?;
        Ok(per_cpu.iter().fold(0, |sum: u64, hits| sum.wrapping_add(*hits)))
    }

    /// Zeroes `cells`, which their owners gave up, on every CPU: the next
    /// owner starts from 0.
    pub fn zero(&mut self, cells: &Cells) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| err).context("counting the possible CPUs")?;
        for &cell in &cells.stats {
            let zeros = PerCpuValues::try_from(vec![ServiceStats::default(); cpus])?;
            self.stats.set(cell, zeros, 0).with_context(|| format!("zeroing stats cell {cell}"))?;
        }
        for &cell in &cells.hits {
            let zeros = PerCpuValues::try_from(vec![0_u64; cpus])?;
            self.backend_hits
                .set(cell, zeros, 0)
                .with_context(|| format!("zeroing backend_hits cell {cell}"))?;
            self.conns.set(cell, 0, 0).with_context(|| format!("zeroing conns cell {cell}"))?;
        }
        Ok(())
    }

    /// The live connections of a membership (its `cell`).
    pub fn live(&self, cell: Cell) -> Result<u64> {
        if cell == NO_CELL {
            return Ok(0);
        }
        self.conns.get(&cell, 0).with_context(|| format!("reading conns cell {cell}"))
    }
}

/// The node's counters over every CPU.
pub fn datapath(pins: &PinDir) -> Result<DatapathStats> {
    let map: PerCpuArray<MapData, DatapathStats> = open_map(pins, map_names::DATAPATH_STATS)?;
    let per_cpu = map.get(&0, 0).context("reading the datapath_stats map")?;
    Ok(per_cpu.iter().fold(DatapathStats::default(), |sum, cpu| DatapathStats {
        evicted_translations: sum.evicted_translations.wrapping_add(cpu.evicted_translations),
    }))
}
