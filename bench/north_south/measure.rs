//! The datapath at one size, every mechanism in the same run: a worker per
//! lane and pod (the pod on node A, the pod on node B), warmed up, then
//! ROUNDS rounds in which each worker in turn runs a batch of TCP cycles
//! (connect, read the pod's 2-byte answer to its end, close), then each a
//! batch of UDP exchanges (a new socket sends 1 byte, receives the 2-byte
//! answer, which must come from the address called), then each a batch of
//! the same exchanges over one socket (one flow: what a long-lived
//! connection's requests cost), the order rotating every round. Ratios are medians of per-round ratios to direct to the
//! same pod, so slow drift cancels.

use serde_json::Value;

use crate::{
    lanes::{Lane, Mechanism},
    services::Services,
    worker::{Worker, median},
};

/// Rounds per size and cycles per batch: 1,000 of each kind per path.
/// balctl's SNATed path (to pod B) has 4,536 source ports per backend
/// port, given back 10 s after a flow closes or 60 s after a UDP flow's
/// last packet: more new flows than that in a minute would measure the
/// port range, not the datapath.
const ROUNDS: usize = 20;
const BATCH: u32 = 50;
/// Uncounted cycles of each protocol first: neighbour entries, page
/// faults, the first lookups.
const WARMUP: u32 = 100;
/// The cycles measured, as the worker names them: a TCP connection, a UDP
/// exchange from a new socket (both a new flow each time), and a UDP
/// exchange over one socket per batch (a flow's later packets).
pub const PROTOCOLS: [&str; 3] = ["tcp", "udp", "udp-flow"];

/// What one client measured through one mechanism to one pod.
pub struct Path {
    pub mechanism: Mechanism,
    /// To the pod on node A (balctl: DNAT only) or on node B (SNAT too).
    pub local: bool,
    /// Each round's rate per protocol, in the order of PROTOCOLS.
    rates: [Vec<f64>; 3],
    /// The worker's totals, failures and latency percentiles per protocol.
    report: Value,
}

pub fn measure(lanes: &[Lane], services: &Services) -> Vec<Path> {
    let mut workers: Vec<(Mechanism, bool, Worker)> = lanes
        .iter()
        .flat_map(|lane| [true, false].map(|local| (lane.mechanism, local, lane.worker(services, local))))
        .map(|(mechanism, local, mut worker)| {
            let warmup = worker.run(&format!("warmup {WARMUP}"));
            assert_eq!(warmup.ok, 2 * WARMUP, "{} does not reach {}", mechanism.name(), pod(local));
            (mechanism, local, worker)
        })
        .collect();
    let mut rates = vec![[Vec::new(), Vec::new(), Vec::new()]; workers.len()];
    for round in 0..ROUNDS {
        for (kind, protocol) in PROTOCOLS.into_iter().enumerate() {
            for turn in 0..workers.len() {
                let index = (round + turn) % workers.len();
                let rate = workers[index].2.run(&format!("{protocol} {BATCH}")).rate();
                rates[index][kind].push(rate);
            }
        }
    }
    workers
        .into_iter()
        .zip(rates)
        .map(|((mechanism, local, worker), rates)| Path { mechanism, local, rates, report: worker.finish() })
        .collect()
}

pub fn pod(local: bool) -> &'static str {
    if local { "pod A (node A)" } else { "pod B (node B)" }
}

impl Path {
    fn rates(&self, protocol: &str) -> &[f64] {
        &self.rates[PROTOCOLS.iter().position(|p| *p == protocol).expect("a protocol")]
    }

    pub fn median_rate(&self, protocol: &str) -> f64 {
        median(self.rates(protocol).to_vec())
    }

    /// The median of the per-round ratios of this rate to `other`'s.
    pub fn ratio_to(&self, other: &Path, protocol: &str) -> f64 {
        median(self.rates(protocol).iter().zip(other.rates(protocol)).map(|(a, b)| a / b).collect())
    }

    /// p50 and p99 in µs: of connect() for TCP, of send to answer for UDP.
    pub fn p50_p99(&self, protocol: &str) -> (f64, f64) {
        let report = &self.report[protocol];
        (report["p50_us"].as_f64().unwrap_or(f64::NAN), report["p99_us"].as_f64().unwrap_or(f64::NAN))
    }

    /// Failed cycles by errno over both protocols, "0" when none.
    pub fn failures(&self) -> String {
        let failures: Vec<String> = PROTOCOLS
            .iter()
            .flat_map(|protocol| {
                let failures = self.report[protocol]["failures"].as_object().cloned().unwrap_or_default();
                failures.into_iter().map(move |(errno, n)| format!("{protocol} {errno}: {n}"))
            })
            .collect();
        if failures.is_empty() { "0".to_owned() } else { failures.join(", ") }
    }
}
