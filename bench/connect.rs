//! Connection rate and connect latency through a VIP against connecting
//! directly to the backend behind it, on the real kernel, with 1 and with
//! 100,000 other services in the maps.
//!
//! Each scenario builds the tests' sandbox (client and server network
//! namespaces, a child cgroup, a private bpffs; see tests/cli/support), and
//! runs the peer's `bench` command in the client cgroup: it interleaves
//! rounds of connections to the VIP and to the backend address, so both
//! are measured the same way in the same run. The direct connections pass
//! the same cgroup programs (their lookup misses), so the difference is
//! the cost of translating. Run as root: `cargo bench --bench connect`.
//! Results are recorded in bench/RESULTS.md.

// The sandbox is shared with the CLI tests; the bench uses part of it.
#[allow(dead_code)]
#[path = "../tests/cli/support/mod.rs"]
mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use balctl::{
    bpf::{maps::Datapath, pins::PinDir},
    model::{Frontend, FrontendRule, Policy, Protocol},
    state::StateDir,
    transaction::{Mode, change},
};
use serde_json::Value;
use support::Sandbox;

const VIP: &str = "198.18.0.10:80";
const BACKEND: &str = "192.0.2.2:8080";
const OTHER_SERVICES: u32 = 100_000;
/// Both scenarios use the same capacities, so only the number of entries
/// differs: 100,001 frontends + as many slots, 100,001 backends.
const MAP_SIZES: &str = "services=262144,backends=131072";
/// Per target and scenario: ROUNDS × PER_ROUND measured connections.
/// Short rounds interleave the targets finely, so a burst of background
/// load lands on both.
const ROUNDS: u32 = 5000;
const PER_ROUND: u32 = 10;
/// The targets: VIP rate / direct rate and VIP p99 / direct p99.
const MIN_RATE_RATIO: f64 = 0.95;
const MAX_P99_RATIO: f64 = 1.1;

fn main() {
    support::peer::run_if_requested();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the connect bench needs root (namespaces, cgroups, bpf); run it with sudo");
        std::process::exit(1);
    }
    support::sweep_stale();
    println!(
        "{ROUNDS} rounds × {PER_ROUND} connections per target, VIP {VIP} -> {BACKEND}, direct {BACKEND}\n"
    );
    for other_services in [0, OTHER_SERVICES] {
        scenario(other_services);
    }
}

fn scenario(other_services: u32) {
    let sandbox = Sandbox::new();
    sandbox.serve("b2", &[BACKEND], &[]);
    let cgroup = sandbox.cgroup.to_str().expect("cgroup path is UTF-8");
    sandbox.balctl_ok(&["load", "--cgroup", cgroup, "--map-size", MAP_SIZES]);
    sandbox.balctl_ok(&["policy", "add", "bench-vip", "--vip", VIP, "--backend", BACKEND]);
    let pins = PinDir::new(&sandbox.pins);
    let programming = (other_services > 0).then(|| add_other_services(&sandbox, &pins, other_services));

    let contents =
        Datapath::open(&pins).and_then(|datapath| datapath.read_contents()).expect("read the maps");
    println!(
        "== VIP + {other_services} other services (maps hold {} services entries, {} backends)",
        contents.services.len(),
        contents.backends.len()
    );
    if let Some(took) = programming {
        println!("programming {other_services} rules in one transaction took {:.2} s", took.as_secs_f64());
    }
    let report = sandbox.client(&[
        "bench",
        "--vip",
        VIP,
        "--direct",
        BACKEND,
        "--rounds",
        &ROUNDS.to_string(),
        "--per-round",
        &PER_ROUND.to_string(),
    ]);
    print_table(&report);
}

/// Adds `count` single-backend rules in ONE transaction, as a controller
/// syncing a big cluster would, and returns how long it took. Frontends are
/// 198.19.x.y on four ports; backends are distinct (two addresses × 50,000
/// ports), so the backends map really holds `count` more entries. None of
/// them is ever connected to.
fn add_other_services(sandbox: &Sandbox, pins: &PinDir, count: u32) -> Duration {
    const PORTS: [u16; 4] = [80, 443, 8080, 8443];
    let rules: Vec<Policy> = (0..count)
        .map(|i| {
            let host = u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i / PORTS.len() as u32;
            let backend_host = Ipv4Addr::new(192, 0, 2, 3 + (i / 50_000) as u8);
            Policy {
                name: format!("other-{i}"),
                rule: FrontendRule {
                    frontend: Frontend {
                        address: IpAddr::V4(Ipv4Addr::from(host)),
                        port: PORTS[i as usize % PORTS.len()],
                        protocol: Protocol::Tcp,
                    },
                    backends: vec![SocketAddr::new(IpAddr::V4(backend_host), 10_000 + (i % 50_000) as u16)],
                    affinity_seconds: None,
                    local_only: false,
                },
            }
        })
        .collect();
    let state = StateDir::new(&sandbox.state);
    let started = Instant::now();
    change(pins, &state, Mode::Apply, |state| {
        state.policies.extend(rules);
        Ok(())
    })
    .expect("add the other services");
    started.elapsed()
}

fn print_table(report: &Value) {
    let (vip, direct) = (&report["vip"], &report["direct"]);
    println!(
        "{:<8} {:>11} {:>8} {:>9} {:>9} {:>9}",
        "target", "connections", "failures", "conn/s", "p50 µs", "p99 µs"
    );
    for (name, target) in [("VIP", vip), ("direct", direct)] {
        println!(
            "{name:<8} {:>11} {:>8} {:>9.0} {:>9.1} {:>9.1}",
            number(target, "connections"),
            failures(target),
            number(target, "rate_per_s"),
            number(target, "p50_us"),
            number(target, "p99_us"),
        );
    }
    let rate_ratio = number(vip, "rate_per_s") / number(direct, "rate_per_s");
    let p99_ratio = number(vip, "p99_us") / number(direct, "p99_us");
    println!(
        "VIP/direct: rate {rate_ratio:.3} (target >= {MIN_RATE_RATIO}: {}), p99 {p99_ratio:.3} (target <= {MAX_P99_RATIO}: {})\n",
        verdict(rate_ratio >= MIN_RATE_RATIO),
        verdict(p99_ratio <= MAX_P99_RATIO),
    );
}

fn number(target: &Value, key: &str) -> f64 {
    target[key].as_f64().unwrap_or_else(|| panic!("no {key} in {target}"))
}

/// The failure count, with the errno names when there are any.
fn failures(target: &Value) -> String {
    let failures = target["failures"].as_object().expect("failures");
    if failures.is_empty() {
        return "0".to_owned();
    }
    failures.iter().map(|(errno, n)| format!("{errno}:{n}")).collect::<Vec<_>>().join(",")
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
