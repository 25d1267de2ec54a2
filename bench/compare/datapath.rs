//! The datapath of one cluster size, every mechanism in the same run: one
//! worker per client, warmed up, then ROUNDS rounds in which each worker in
//! turn makes a batch of TCP connections to the service, then each a batch
//! of UDP exchanges, then each (but direct) a batch of TCP connections to
//! an address no rule translates (a bystander: the node's traffic that is
//! not to a service), the order rotating every round so that each
//! mechanism goes first as often as the others. A burst of background load
//! lands on all of them, and comparing the batches of one round (medians
//! of per-round ratios) cancels slow drift.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::{
    cluster::{BYSTANDER_TARGETS, Cluster, TCP_BACKENDS, UDP_BACKENDS},
    worker::median,
    world::{Mechanism, World},
};

/// Rounds per size, and connections (or exchanges) per batch: 15,000 of
/// each per mechanism and size, 150 samples above the p99.
const ROUNDS: usize = 60;
const BATCH: u32 = 250;
/// Uncounted cycles of each protocol before the rounds: neighbour entries,
/// page faults, the first lookups.
const WARMUP: u32 = 100;

/// What the workers measure, in the order of `Measured`'s rates.
pub const PROTOCOLS: [&str; 3] = ["tcp", "udp", "bystander"];

/// What one mechanism's client measured at one size.
pub struct Measured {
    pub mechanism: Mechanism,
    /// Rate of each round's TCP batch (connections per second of cycles).
    tcp: Vec<f64>,
    /// Rate of each round's UDP batch (exchanges per second).
    udp: Vec<f64>,
    /// Rate of each round's bystander batch (connections per second);
    /// direct's are its TCP batches, which are the same traffic.
    bystander: Vec<f64>,
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
            let (tcp, udp, bystander) = match mechanism {
                Mechanism::Direct => (
                    TCP_BACKENDS.map(SocketAddr::V4).to_vec(),
                    UDP_BACKENDS.map(SocketAddr::V4).to_vec(),
                    Vec::new(),
                ),
                _ => (
                    vec![SocketAddr::V4(cluster.tcp_vip())],
                    vec![SocketAddr::V4(cluster.udp_vip())],
                    BYSTANDER_TARGETS.map(SocketAddr::V4).to_vec(),
                ),
            };
            let mut worker = world.worker(mechanism, &tcp, &udp, &bystander);
            let warmup = worker.run(&format!("warmup {WARMUP}"));
            let cycles = if bystander.is_empty() { 2 * WARMUP } else { 3 * WARMUP };
            assert_eq!(
                warmup.ok,
                cycles,
                "{} does not reach {tcp:?}, {udp:?} and {bystander:?}",
                mechanism.name()
            );
            // Every warm-up connection went through the node's conntrack
            // and was masqueraded, whatever the mechanism: each TCP one
            // anew; a UDP socket may find the entry of an earlier one from
            // the same port to the same backend (kept 30 s), which
            // conntrack translates without the nat table.
            let masqueraded = world.masqueraded(mechanism);
            let tcp_cycles = u64::from(cycles - WARMUP);
            assert!(
                masqueraded >= tcp_cycles,
                "{}'s node masqueraded {masqueraded} connections of {cycles}, {tcp_cycles} of them TCP",
                mechanism.name()
            );
            (mechanism, worker)
        })
        .collect();
    let mut rates = vec![[Vec::new(), Vec::new(), Vec::new()]; workers.len()];
    for round in 0..ROUNDS {
        for (kind, protocol) in PROTOCOLS.into_iter().enumerate() {
            for turn in 0..workers.len() {
                let index = (round + turn) % workers.len();
                let (mechanism, worker) = &mut workers[index];
                if protocol == "bystander" && *mechanism == Mechanism::Direct {
                    continue;
                }
                let rate = worker.run(&format!("{protocol} {BATCH}")).rate();
                rates[index][kind].push(rate);
            }
        }
    }
    workers
        .into_iter()
        .zip(rates)
        .map(|((mechanism, worker), [tcp, udp, bystander])| Measured {
            mechanism,
            tcp,
            udp,
            bystander,
            report: worker.finish(),
        })
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
        let report = self.worker_report(protocol);
        (report["p50_us"].as_f64().unwrap_or(f64::NAN), report["p99_us"].as_f64().unwrap_or(f64::NAN))
    }

    /// Failures by errno name, empty when none.
    pub fn failures(&self, protocol: &str) -> String {
        let failures = self.worker_report(protocol)["failures"].as_object().cloned().unwrap_or_default();
        failures.iter().map(|(errno, n)| format!("{errno}:{n}")).collect::<Vec<_>>().join(",")
    }

    fn rates(&self, protocol: &str) -> &[f64] {
        match self.measured_as(protocol) {
            "tcp" => &self.tcp,
            "udp" => &self.udp,
            _ => &self.bystander,
        }
    }

    /// The worker's totals and percentiles of `protocol`.
    fn worker_report(&self, protocol: &str) -> &Value {
        &self.report[self.measured_as(protocol)]
    }

    /// What `protocol` was measured as: direct's bystander traffic is its
    /// TCP traffic (the same connections to unrewritten addresses).
    fn measured_as<'p>(&self, protocol: &'p str) -> &'p str {
        match protocol {
            "bystander" if self.mechanism == Mechanism::Direct => "tcp",
            other => other,
        }
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
            "count": self.worker_report(protocol)["connections"],
            "overall_rate_per_s": self.worker_report(protocol)["rate_per_s"],
            "failures": self.worker_report(protocol)["failures"],
            "round_rates": self.rates(protocol).iter().map(|r| r.round()).collect::<Vec<_>>(),
        })
    }
}
