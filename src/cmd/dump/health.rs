//! `dump health`: the backends of rules with an active health check
//! (src/health/), one row per rule and backend: the check, whether the
//! backend passes it as last applied, how the rule stands (serving, or
//! failing open or refusing while every backend fails), and whether the
//! datapath holds the backend in the frontend's slots, read from the maps.

use std::{net::SocketAddr, time::Duration};

use serde::Serialize;

use super::{Tables, View};
use crate::{
    image::raw::{raw_to_addr, raw_to_port, service_key},
    model::{FrontendRule, Standing},
    output::{Listing, TableStyle, column, wide},
};

#[derive(Serialize)]
pub struct Health {
    health: Vec<HealthRecord>,
}

#[derive(Serialize)]
struct HealthRecord {
    frontend: String,
    /// The rule's object (`service/web`, `policy/web`...).
    name: String,
    backend: SocketAddr,
    /// The check, e.g. `http GET /healthz -> 200`.
    check: String,
    /// Where it probes the backend (the check's `port`, else the backend's).
    probed: SocketAddr,
    interval_ms: u32,
    timeout_ms: u32,
    rise: u32,
    fall: u32,
    /// `healthy` or `unhealthy`, as the agent last applied it.
    state: &'static str,
    /// `serving`, or `failing-open` / `refusing` while every backend of the
    /// rule is unhealthy.
    rule: &'static str,
    /// The frontend's slots in the maps hold the backend.
    in_slots: bool,
}

/// Every checked rule's backends that the filters keep, in the state's
/// order (policies first).
pub fn read(view: &View) -> Health {
    let rules = (view.state.policies.iter().map(|policy| (policy.owner(), &policy.rule)))
        .chain(view.state.synced.iter().flat_map(|o| o.rules.iter().map(|rule| (o.owner.clone(), rule))));
    let mut health = Vec::new();
    for (name, rule) in rules {
        let Some(check) = rule.health.as_deref() else { continue };
        if !view.shows(&rule.frontend) {
            continue;
        }
        let in_slots = in_slots(view, rule);
        let standing = match rule.standing() {
            Standing::Serving => "serving",
            Standing::FailingOpen => "failing-open",
            Standing::Refusing => "refusing",
        };
        for &backend in &rule.backends {
            health.push(HealthRecord {
                frontend: rule.frontend.to_string(),
                name: name.clone(),
                backend,
                check: check.check.probe.to_string(),
                probed: check.check.address_of(backend),
                interval_ms: check.check.interval_ms,
                timeout_ms: check.check.timeout_ms,
                rise: check.check.rise,
                fall: check.check.fall,
                state: if check.is_down(&backend) { "unhealthy" } else { "healthy" },
                rule: standing,
                in_slots: in_slots.contains(&backend),
            });
        }
    }
    Health { health }
}

/// The backends the maps hold in `rule`'s frontend's slots.
fn in_slots(view: &View, rule: &FrontendRule) -> Vec<SocketAddr> {
    let master = view.contents.services.get(&service_key(&rule.frontend, 0));
    (1..=master.map_or(0, |master| master.count))
        .filter_map(|slot| view.contents.services.get(&service_key(&rule.frontend, slot)))
        .map(|entry| SocketAddr::new(raw_to_addr(entry.backend.addr), raw_to_port(entry.backend.port)))
        .collect()
}

impl Tables for Health {
    fn print_table(&self, style: TableStyle) {
        let columns = [
            column("FRONTEND"),
            column("BACKEND"),
            column("CHECK"),
            column("STATE"),
            column("RULE"),
            column("IN SLOTS"),
            column("NAME"),
            wide("PROBED"),
            wide("INTERVAL"),
            wide("TIMEOUT"),
            wide("RISE/FALL"),
        ];
        let mut rows = Listing::new(style, &columns);
        let duration = |ms: u32| humantime::format_duration(Duration::from_millis(ms.into())).to_string();
        for record in &self.health {
            rows.add_row([
                record.frontend.clone(),
                record.backend.to_string(),
                record.check.clone(),
                record.state.to_owned(),
                record.rule.to_owned(),
                if record.in_slots { "yes" } else { "no" }.to_owned(),
                record.name.clone(),
                record.probed.to_string(),
                duration(record.interval_ms),
                duration(record.timeout_ms),
                format!("{}/{}", record.rise, record.fall),
            ]);
        }
        rows.print();
    }
}
