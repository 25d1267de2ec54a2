//! `dump stats`: the per-frontend counters and the node's (src/stats.rs).

use anyhow::Result;
use serde::Serialize;

use super::{Tables, View, backend_cell};
use crate::{
    bpf::counters::CounterMaps,
    output::{Listing, TableStyle, column, wide},
    stats::{self, DatapathCounters, FrontendStats},
};

#[derive(Serialize)]
pub struct Stats {
    stats: Vec<FrontendStats>,
    /// The node's counters: `--vip` leaves them as they are.
    datapath: DatapathCounters,
}

pub fn read(view: &View) -> Result<Stats> {
    let counters = CounterMaps::open(view.pins)?;
    Ok(Stats {
        stats: stats::read(&counters, &view.state.image, |frontend| view.shows(frontend))?,
        datapath: DatapathCounters::read(view.pins)?,
    })
}

impl Tables for Stats {
    fn print_table(&self, style: TableStyle) {
        let columns = [
            column("FRONTEND"),
            wide("SERVICE ID"),
            column("NAME"),
            column("RESOLUTIONS"),
            column("FAILURES"),
            column("BACKEND HITS"),
        ];
        let mut rows = Listing::new(style, &columns);
        for frontend in &self.stats {
            // A redirect's give-ways show with its failures: both are
            // connections its backends did not get.
            let gave_way =
                frontend.gave_way.iter().flat_map(|g| g.by_reason()).map(|(r, n)| (r, n, "gave way, "));
            let failures: Vec<String> = frontend
                .failures
                .by_reason()
                .into_iter()
                .map(|(reason, count)| (reason, count, ""))
                .chain(gave_way)
                .filter(|&(_, count, _)| count > 0)
                .map(|(reason, count, prefix)| format!("{prefix}{reason}: {count}"))
                .collect();
            let hits: Vec<String> = frontend
                .backends
                .iter()
                .map(|b| format!("{}: {}", backend_cell(b.backend_id, Some(b.backend)), b.hits))
                .collect();
            rows.add_row([
                frontend.frontend.clone(),
                frontend.service_id.to_string(),
                frontend.name.clone(),
                frontend.resolutions.to_string(),
                if failures.is_empty() { "0".to_owned() } else { failures.join("\n") },
                if hits.is_empty() { "-".to_owned() } else { hits.join("\n") },
            ]);
        }
        rows.print();
        let evicted = self.datapath.evicted_translations;
        println!(
            "evicted socket translations: {evicted}{}",
            if evicted > 0 { " (`balctl status` says how to make room)" } else { "" }
        );
    }
}
