//! The fill of every map, for `/metrics`: read in the background, as
//! `status` reads it (src/bpf/inventory.rs), after each sync that applied
//! and every `REFRESH_PERIOD`; a scrape serves the last reading and when it
//! was taken. Reading walks every map (65,536 sets of the sockets map,
//! every entry of the hash maps): a scrape that did it would cost more the
//! bigger the maps, and the fill changes with syncs and open sockets, not
//! with scrapes.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::gauge::ConstGauge,
};

use super::{gauge, gauge_family};
use crate::{
    agent::Agent,
    bpf::{
        inventory::{self, MapFill},
        pins::PinDir,
    },
};

/// How often the fill is read when no sync applies: the sockets map fills
/// with open sockets between syncs.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(10);

/// The last reading, shared by the refresher and the scrapes.
#[derive(Clone, Default)]
pub struct MapFills(Arc<Mutex<Reading>>);

#[derive(Default)]
struct Reading {
    /// When the last reading that succeeded began.
    at: Option<SystemTime>,
    /// What it read; empty when the last reading failed (balctl unloaded).
    maps: Vec<MapFill>,
}

impl MapFills {
    /// Reads the fill now, and again after each sync that applied and every
    /// `REFRESH_PERIOD`, for as long as the runtime runs.
    pub async fn refresh(self, pins: PinDir, agent: Arc<Agent>) {
        loop {
            let (reading, pins_now) = (self.clone(), pins.clone());
            if let Err(err) = tokio::task::spawn_blocking(move || reading.read(&pins_now)).await {
                log::warn!("metrics: reading the map fill failed: {err}");
            }
            // Applied or timed out: either way it is time to read again.
            let _ = tokio::time::timeout(REFRESH_PERIOD, agent.applied()).await;
        }
    }

    fn read(&self, pins: &PinDir) {
        let start = SystemTime::now();
        let read = inventory::map_fills(pins);
        let mut last = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match read {
            Ok(maps) => *last = Reading { at: Some(start), maps },
            Err(err) => {
                log::warn!("metrics: cannot read the map fill: {err:#}");
                last.maps.clear();
            }
        }
    }
}

impl fmt::Debug for MapFills {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MapFills")
    }
}

impl Collector for MapFills {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let last = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let at = last.at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0.0, |t| t.as_secs_f64());
        let help = format!(
            "When balctl_map_entries and balctl_map_capacity were read, in seconds since the epoch; 0 before \
             the first reading. The agent reads them after each sync that applies and every {} s; a reading \
             that fails (the log says why) leaves the maps out and this time as it was.",
            REFRESH_PERIOD.as_secs()
        );
        gauge(&mut encoder, "balctl_map_fill_timestamp_seconds", &help, at)?;
        // The maps `status` lists: those that hold entries.
        let maps = || last.maps.iter().filter_map(|map| Some((map.name, map.entries?, map.capacity)));
        let mut family = gauge_family(
            &mut encoder,
            "balctl_map_entries",
            "Entries a map of the datapath holds, as balctl status.",
        )?;
        for (name, entries, _) in maps() {
            ConstGauge::new(entries as u64).encode(family.encode_family(&[("map", name)])?)?;
        }
        let mut family = gauge_family(
            &mut encoder,
            "balctl_map_capacity",
            "Entries a map of the datapath can hold, as balctl status (load --map-size sets them).",
        )?;
        for (name, _, capacity) in maps() {
            ConstGauge::new(u64::from(capacity)).encode(family.encode_family(&[("map", name)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::prometheus_text, registry::Registry};

    use super::*;

    fn fill(name: &'static str, entries: Option<usize>, capacity: u32) -> MapFill {
        MapFill { name, map_type: "hash", capacity, unit: inventory::Unit::Entries, entries }
    }

    fn render(fills: &MapFills) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(fills.clone()));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|line| !line.starts_with('#')).collect()
    }

    #[test]
    fn serves_the_last_reading_and_when_it_was_taken() {
        let fills = MapFills::default();
        assert_eq!(samples(&render(&fills)), ["balctl_map_fill_timestamp_seconds 0.0"]);

        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let maps = vec![fill("services", Some(2), 65536), fill("events0", None, 4096)];
        *fills.0.lock().unwrap() = Reading { at: Some(at), maps };
        let text = render(&fills);
        assert_eq!(
            samples(&text),
            [
                "balctl_map_fill_timestamp_seconds 1700000000.25",
                "balctl_map_entries{map=\"services\"} 2",
                "balctl_map_capacity{map=\"services\"} 65536",
            ]
        );
        assert!(text.contains("# TYPE balctl_map_entries gauge\n"), "{text}");
    }

    #[test]
    fn a_failed_reading_drops_the_maps_and_keeps_the_time_of_the_last() {
        let fills = MapFills::default();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        *fills.0.lock().unwrap() = Reading { at: Some(at), maps: vec![fill("services", Some(2), 65536)] };
        let dir = std::env::temp_dir().join(format!("balctl-fill-{}", std::process::id()));
        fills.read(&PinDir::new(dir.join("no-pins")));
        assert_eq!(samples(&render(&fills)), ["balctl_map_fill_timestamp_seconds 1700000000.0"]);
    }
}
