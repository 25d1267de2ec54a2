//! Head to head, on the real kernel, in one run: balctl against kube-proxy's
//! iptables mode (on both iptables backends, legacy and nft) and nftables
//! mode, and against connecting straight to a backend, at 1, 1,000, 10,000
//! and 100,000 services. Per size: the time, peak RSS and kernel memory of
//! programming the services (`balctl load` + `sync`, `iptables-restore`,
//! `nft -f`), then TCP connection rate and connect latency, and UDP
//! request/response rate and latency, of a client per mechanism taking
//! turns (datapath.rs).
//!
//! Every mechanism gets a node of its own with a pod behind it (world.rs):
//! the client runs in the pod, the node forwards to the server namespace
//! and masquerades its pods' traffic as a CNI does, so that conntrack runs
//! in every node. iptables and nftables rules exist only in their node,
//! and balctl is attached only to the sandbox's child cgroup, which only
//! balctl's client joins; its programming time is `load` plus `sync`. What
//! the services are and how each mechanism is given them: cluster.rs.
//!
//! Run as root: `cargo bench --bench compare`; `COMPARE_SIZES=1,1000` for
//! other sizes, `COMPARE_MECHANISMS=balctl,nftables` for some mechanisms
//! only (direct, the reference, is always measured).
//! Raw results go to bench/compare-results.json, the chart to
//! bench/compare.png (bench/plot.py, needs matplotlib). Results are recorded
//! in bench/RESULTS.md.

mod cluster;
mod datapath;
#[path = "../kube_yaml.rs"]
mod kube_yaml;
mod programming;
mod report;
#[path = "../worker.rs"]
mod worker;
mod world;

// The sandbox is shared with the CLI tests; the bench uses part of it.
#[allow(dead_code)]
#[path = "../../tests/cli/support/mod.rs"]
mod support;

use std::time::Instant;

use cluster::Cluster;
use programming::Programmed;
use worker::on_one_cpu;
use world::{Mechanism, World};

const SIZES: [u32; 4] = [1, 1_000, 10_000, 100_000];

/// Everything measured at one size.
pub struct SizeResult {
    pub size: u32,
    pub tcp_vip: String,
    pub udp_vip: String,
    /// Every mechanism but direct, in the order they were programmed.
    pub programming: Vec<(Mechanism, Programmed)>,
    /// Direct first, then each mechanism whose rules got in.
    pub datapath: Vec<datapath::Measured>,
}

fn main() {
    support::start_bench("compare", "namespaces, cgroups, bpf, netfilter");
    let sizes = match std::env::var("COMPARE_SIZES") {
        Ok(list) => list.split(',').map(|s| s.trim().parse().expect("COMPARE_SIZES: numbers")).collect(),
        Err(_) => SIZES.to_vec(),
    };
    let mechanisms = match std::env::var("COMPARE_MECHANISMS") {
        Ok(list) => Mechanism::ALL
            .into_iter()
            .filter(|m| *m == Mechanism::Direct || list.split(',').any(|name| name.trim() == m.name()))
            .collect(),
        Err(_) => Mechanism::ALL.to_vec(),
    };
    let machine = report::machine();
    println!("{}\n", report::describe_machine(&machine));
    let started = Instant::now();
    let results: Vec<SizeResult> = sizes.into_iter().map(|size| measure_size(size, &mechanisms)).collect();
    report::finish(&machine, &results, started.elapsed());
}

fn measure_size(size: u32, mechanisms: &[Mechanism]) -> SizeResult {
    let world = on_one_cpu(World::new);
    let cluster = Cluster::new(size);
    let (tcp_vip, udp_vip) = (cluster.tcp_vip().to_string(), cluster.udp_vip().to_string());
    println!("== {size} TCP services + 1 UDP service; measured {tcp_vip}/tcp and {udp_vip}/udp");
    report::print_programming_header();
    let programming: Vec<(Mechanism, Programmed)> = mechanisms
        .iter()
        .copied()
        .filter(|&mechanism| mechanism != Mechanism::Direct)
        .map(|mechanism| {
            let programmed = match mechanism {
                Mechanism::Balctl => programming::balctl(&world, &cluster),
                Mechanism::Nftables => programming::nftables(&world, &cluster),
                iptables => programming::iptables(&world, &cluster, iptables),
            };
            report::print_programmed(mechanism, &programmed);
            (mechanism, programmed)
        })
        .collect();
    let mechanisms: Vec<Mechanism> = mechanisms
        .iter()
        .copied()
        .filter(|&m| m == Mechanism::Direct || programming.iter().any(|(p, run)| *p == m && run.ready))
        .collect();
    let datapath = on_one_cpu(|| datapath::measure(&world, &cluster, &mechanisms));
    report::print_datapath(&datapath);
    println!();
    SizeResult { size, tcp_vip, udp_vip, programming, datapath }
}
