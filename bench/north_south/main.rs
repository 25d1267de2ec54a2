//! North-south (issue 18), on the real kernel, in one run: an external
//! client's request/response rate and latency through node A's node port
//! to the pod on node A and to the pod on node B, with balctl's tc
//! programs, kube-proxy's iptables rules and kube-proxy's nftables rules
//! on node A, against the client reaching the same pods by routing (no
//! NAT), at 1 and 10,000 node-port services; and the kernel memory of
//! balctl's flows maps per 100,000 flows.
//!
//! Each mechanism has a topology of its own (lanes.rs); the services and
//! kube-proxy's rules for them: services.rs; the rounds: measure.rs.
//!
//! Run as root: `cargo bench --bench north_south`; `NS_SIZES=1` (or any
//! comma-separated sizes) for other sizes. Results are recorded in
//! bench/RESULTS.md ("North-south (issue 18)").

#[allow(dead_code, reason = "the kube-proxy base rules; the rest is bench/compare's")]
#[path = "../compare/cluster.rs"]
mod cluster;
#[allow(dead_code, reason = "bench/compare's; cluster.rs names it")]
#[path = "../kube_yaml.rs"]
mod kube_yaml;
mod lanes;
mod measure;
mod services;
// The sandbox and topology are shared with the CLI tests; the bench uses part of them.
#[allow(dead_code)]
#[path = "../../tests/cli/support/mod.rs"]
mod support;
#[path = "../worker.rs"]
mod worker;

use std::time::Instant;

use lanes::{Lane, Mechanism};
use measure::{PROTOCOLS, Path, pod};
use services::Services;
use worker::on_one_cpu;

const SIZES: [u32; 2] = [1, 10_000];
/// The target: balctl to the local pod at least this x direct.
const MIN_LOCAL_VS_DIRECT: f64 = 0.95;

fn main() {
    support::start_bench("north_south", "namespaces, cgroups, bpf, netfilter");
    let sizes: Vec<u32> = match std::env::var("NS_SIZES") {
        Ok(list) => list.split(',').map(|s| s.trim().parse().expect("NS_SIZES: numbers")).collect(),
        Err(_) => SIZES.to_vec(),
    };
    let started = Instant::now();
    println!(
        "kernel {}; load average {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let mut verdicts = Vec::new();
    let mut rows = Vec::new();
    for (run, size) in sizes.into_iter().enumerate() {
        let lanes = on_one_cpu(|| Mechanism::ALL.map(Lane::new));
        let services = Services::new(size);
        println!("\n== {size} node-port services ({} programmed)", services.len());
        for lane in &lanes {
            if let Some((command, seconds)) = lane.program(&services) {
                println!("{:<20} {seconds:>8.3} s  {command}", lane.mechanism.name());
            }
        }
        if run == 0 {
            let (capacity, mib) = lanes[1].flows_memory();
            println!(
                "balctl flows + flow_replies: {mib:.1} MiB per 100,000 flows (bytes_memlock at {capacity} flows each)"
            );
        }
        let paths = on_one_cpu(|| measure::measure(&lanes, &services));
        for path in &paths {
            rows.push(row(size, path, &paths));
        }
        verdicts.extend(targets(size, &paths));
        if run == 0 {
            on_one_cpu(|| sustained(&lanes, &services));
        }
    }
    println!("\n== Summary (medians of per-round rates and of per-round ratios to direct to the same pod)\n");
    println!(
        "| services | mechanism | to | TCP conn/s | vs direct | connect p50 µs | p99 µs | UDP new-flow req/s | vs \
         direct | p50 µs | p99 µs | UDP one-flow req/s | vs direct | p50 µs | p99 µs | failures |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        println!("{row}");
    }
    println!("\n== Targets\n");
    for verdict in verdicts {
        println!("{verdict}");
    }
    println!("\nThe run took {:.0} s.", started.elapsed().as_secs_f64());
}

/// How long each mechanism's client connects to pod B without a pause.
const SUSTAINED_MILLIS: u64 = 8_000;

/// New TCP connections to the pod on node B, one after another for
/// SUSTAINED_MILLIS per mechanism, after the rounds (which made 1,100 TCP
/// and 1,100 UDP flows to it): whether SNATed flows keep finding a source
/// port. balctl takes over the port of a flow that has ended (closed 10 s
/// ago, or timed out: ebpf lb/flows.rs `open_snat`), so about 450 new
/// flows a second to one backend port can go on for ever, and bursts of
/// up to 4,536 (the ports of 61000-65535); kube-proxy's conntrack frees a
/// port when its entry expires.
fn sustained(lanes: &[Lane], services: &Services) {
    println!("\nNew TCP connections to {} for {SUSTAINED_MILLIS} ms, one after another:", pod(false));
    for lane in lanes {
        let report = lane.sustained(services, SUSTAINED_MILLIS);
        println!(
            "{:<20} ok {:>6}  failed {:>5}  {}",
            lane.mechanism.name(),
            report["ok"],
            report["failed"],
            report["errors"]
        );
    }
}

fn find(paths: &[Path], mechanism: Mechanism, local: bool) -> &Path {
    paths.iter().find(|p| p.mechanism == mechanism && p.local == local).expect("every path is measured")
}

fn row(size: u32, path: &Path, paths: &[Path]) -> String {
    let direct = find(paths, Mechanism::Direct, path.local);
    let mut row = format!("| {size} | {} | {} |", path.mechanism.name(), pod(path.local));
    for protocol in PROTOCOLS {
        let (p50, p99) = path.p50_p99(protocol);
        row += &format!(
            " {:.0} | {:.3} | {p50:.1} | {p99:.1} |",
            path.median_rate(protocol),
            path.ratio_to(direct, protocol)
        );
    }
    row + &format!(" {} |", path.failures())
}

/// The targets at one size: balctl >= 0.95 x direct to the local
/// pod, and above both kube-proxy modes to either pod; for each kind of
/// cycle.
fn targets(size: u32, paths: &[Path]) -> Vec<String> {
    let mut verdicts = Vec::new();
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    for protocol in PROTOCOLS {
        let balctl = find(paths, Mechanism::Balctl, true);
        let ratio = balctl.ratio_to(find(paths, Mechanism::Direct, true), protocol);
        verdicts.push(format!(
            "{size} services, {protocol}, to {}: balctl {ratio:.3} x direct (>= {MIN_LOCAL_VS_DIRECT}): {}",
            pod(true),
            verdict(ratio >= MIN_LOCAL_VS_DIRECT)
        ));
        for local in [true, false] {
            let balctl = find(paths, Mechanism::Balctl, local);
            for other in [Mechanism::Iptables, Mechanism::Nftables] {
                let ratio = balctl.ratio_to(find(paths, other, local), protocol);
                verdicts.push(format!(
                    "{size} services, {protocol}, to {}: balctl {ratio:.3} x {} (> 1): {}",
                    pod(local),
                    other.name(),
                    verdict(ratio > 1.0)
                ));
            }
        }
    }
    verdicts
}
