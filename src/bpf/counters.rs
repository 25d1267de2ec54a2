//! The datapath's always-on counters: `stats` (per frontend, by service id),
//! `backend_hits` (per frontend and backend) and `datapath_stats` (the
//! node's). All are per CPU, so each read sums one value per possible CPU.

use std::collections::HashSet;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, MapError, PerCpuArray, PerCpuHashMap};
use balctl_common::{DatapathStats, MembershipKey, ServiceStats, map_names};

use super::{
    maps::ServiceId,
    pins::{PinDir, ignore_missing, open_map},
};

pub struct CounterMaps {
    stats: PerCpuHashMap<MapData, ServiceId, ServiceStats>,
    backend_hits: PerCpuHashMap<MapData, MembershipKey, u64>,
}

impl CounterMaps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self {
            stats: open_map(pins, map_names::STATS)?,
            backend_hits: open_map(pins, map_names::BACKEND_HITS)?,
        })
    }

    /// A frontend's counters over every CPU; zeros before its first resolution.
    pub fn service(&self, service_id: ServiceId) -> Result<ServiceStats> {
        let Some(per_cpu) = absent_as_none(self.stats.get(&service_id, 0))? else {
            return Ok(ServiceStats::default());
        };
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

    /// How often a frontend sent to a backend, over every CPU.
    pub fn hits(&self, membership: MembershipKey) -> Result<u64> {
        let per_cpu = absent_as_none(self.backend_hits.get(&membership, 0))?;
        Ok(per_cpu.map_or(0, |values| values.iter().fold(0, |sum: u64, hits| sum.wrapping_add(*hits))))
    }

    /// Deletes the counters of frontends and memberships that are gone, so
    /// they do not fill the maps (the datapath stops counting when a map is
    /// full). Ids are never reused, so nothing would count into them again.
    pub fn forget(
        &mut self,
        services: &HashSet<ServiceId>,
        memberships: &HashSet<MembershipKey>,
    ) -> Result<()> {
        for service_id in services {
            ignore_missing(self.stats.remove(service_id))
                .with_context(|| format!("deleting the counters of service id {service_id}"))?;
        }
        for key in memberships {
            ignore_missing(self.backend_hits.remove(key)).with_context(|| {
                format!("deleting the hits of backend {} of service id {}", key.backend_id, key.service_id)
            })?;
        }
        Ok(())
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

/// A counter that was never created reads as absent, not as an error.
fn absent_as_none<T>(result: Result<T, MapError>) -> Result<Option<T>, MapError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(err) => Err(err),
    }
}
