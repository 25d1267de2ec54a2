//! The datapath of one cluster size, every mechanism in the same run: one
//! worker per client, warmed up, then ROUNDS rounds in which each worker in
//! turn makes a batch of TCP connections, then each a batch of UDP
//! exchanges, the order rotating every round so that each mechanism goes
//! first as often as the others. A burst of background load lands on all of
//! them, and comparing the batches of one round (medians of per-round
//! ratios) cancels slow drift.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::{
    cluster::{Cluster, TCP_BACKENDS, UDP_BACKENDS},
    world::{Mechanism, World},
};

/// Rounds per size, and connections (or exchanges) per batch: 15,000 of
/// each per mechanism and size, 150 samples above the p99.
const ROUNDS: usize = 60;
const BATCH: u32 = 250;
/// Uncounted cycles of each protocol before the rounds: neighbour entries,
/// page faults, the first lookups.
const WARMUP: u32 = 100;

/// What one mechanism's client measured at one size.
pub struct Measured {
    pub mechanism: Mechanism,
    /// Rate of each round's TCP batch (connections per second of cycles).
    tcp: Vec<f64>,
    /// Rate of each round's UDP batch (exchanges per second).
    udp: Vec<f64>,
    /// The worker's report: counts, failures, latency percentiles.
    report: Value,
}

/// Measures every mechanism in `mechanisms` (Direct first: ratios are to it).
pub fn measure(world: &World, cluster: &Cluster, mechanisms: &[Mechanism]) -> Vec<Measured> {
    assert_eq!(mechanisms.first(), Some(&Mechanism::Direct), "direct is the reference");
    let mut workers: Vec<_> = mechanisms
        .iter()
        .map(|&mechanism| {
            // The direct client spreads its cycles over the backends as the
            // others' VIPs do, so that the server does the same work for all.
            let (tcp, udp) = match mechanism {
                Mechanism::Direct => {
                    (TCP_BACKENDS.map(SocketAddr::V4).to_vec(), UDP_BACKENDS.map(SocketAddr::V4).to_vec())
                }
                _ => (vec![SocketAddr::V4(cluster.tcp_vip())], vec![SocketAddr::V4(cluster.udp_vip())]),
            };
            let mut worker = world.worker(mechanism, &tcp, &udp);
            let warmup = worker.run(&format!("warmup {WARMUP}"));
            assert_eq!(warmup.ok, 2 * WARMUP, "{} does not reach {tcp:?} and {udp:?}", mechanism.name());
            (mechanism, worker)
        })
        .collect();
    let mut rates = vec![(Vec::new(), Vec::new()); workers.len()];
    for round in 0..ROUNDS {
        for protocol in ["tcp", "udp"] {
            for turn in 0..workers.len() {
                let index = (round + turn) % workers.len();
                let rate = workers[index].1.run(&format!("{protocol} {BATCH}")).rate();
                let (tcp, udp) = &mut rates[index];
                if protocol == "tcp" { tcp } else { udp }.push(rate);
            }
        }
    }
    workers
        .into_iter()
        .zip(rates)
        .map(|((mechanism, worker), (tcp, udp))| Measured { mechanism, tcp, udp, report: worker.finish() })
        .collect()
}

impl Measured {
    /// The median of the per-round ratios of this TCP or UDP rate to
    /// `other`'s in the same rounds.
    pub fn ratio_to(&self, other: &Measured, protocol: &str) -> f64 {
        let (mine, theirs) = (self.rates(protocol), other.rates(protocol));
        median(mine.iter().zip(theirs).map(|(a, b)| a / b).collect())
    }

    pub fn median_rate(&self, protocol: &str) -> f64 {
        median(self.rates(protocol).to_vec())
    }

    pub fn p50_p99(&self, protocol: &str) -> (f64, f64) {
        let report = &self.report[protocol];
        (report["p50_us"].as_f64().unwrap_or(f64::NAN), report["p99_us"].as_f64().unwrap_or(f64::NAN))
    }

    /// Failures by errno name, empty when none.
    pub fn failures(&self, protocol: &str) -> String {
        let failures = self.report[protocol]["failures"].as_object().cloned().unwrap_or_default();
        failures.iter().map(|(errno, n)| format!("{errno}:{n}")).collect::<Vec<_>>().join(",")
    }

    fn rates(&self, protocol: &str) -> &[f64] {
        if protocol == "tcp" { &self.tcp } else { &self.udp }
    }

    /// The JSON of one protocol: median rate, median ratio to `direct`,
    /// the worker's totals and percentiles, and the per-round rates.
    pub fn to_json(&self, direct: &Measured, protocol: &str) -> Value {
        let (p50, p99) = self.p50_p99(protocol);
        json!({
            "rate_per_s": self.median_rate(protocol).round(),
            "vs_direct": self.ratio_to(direct, protocol),
            "p50_us": p50,
            "p99_us": p99,
            "count": self.report[protocol]["connections"],
            "overall_rate_per_s": self.report[protocol]["rate_per_s"],
            "failures": self.report[protocol]["failures"],
            "round_rates": self.rates(protocol).iter().map(|r| r.round()).collect::<Vec<_>>(),
        })
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
