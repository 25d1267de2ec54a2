//! Connection rate and connect latency through a VIP against connecting
//! directly to the backend behind it, on the real kernel, with 1 and with
//! 100,000 other services in the maps; and what the trace event code costs:
//! the datapath with it (nobody tracing, then a tracer attached) against
//! the same programs built without it (ebpf/programs/src/untraced.rs).
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
    bpf::{
        loader::{self, MapSizes, Targets},
        maps::Datapath,
        pins::PinDir,
    },
    model::{Frontend, FrontendRule, Policy, Protocol, Scope},
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
/// The target for the event code while nobody traces: at most 1%
/// of connection rate.
const MAX_UNTRACED_COST: f64 = 0.01;
/// Untraced and traced builds are measured this many times each,
/// alternating, and compared by their medians.
const TRACE_PAIRS: usize = 5;

/// The programs without the trace event code, built by build.rs next to
/// the real ones.
static UNTRACED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balctl-untraced"));

/// Which datapath a scenario runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Build {
    /// Built without the trace event code.
    Untraced,
    /// balctl's datapath, nobody tracing.
    Traced,
    /// balctl's datapath with `balctl trace` attached.
    Tracing,
}

impl Build {
    fn describe(self) -> &'static str {
        match self {
            Self::Untraced => "built without trace events",
            Self::Traced => "balctl's datapath, not tracing",
            Self::Tracing => "balctl's datapath, `balctl trace` attached",
        }
    }
}

fn main() {
    support::start_bench("connect", "namespaces, cgroups, bpf");
    println!(
        "{ROUNDS} rounds × {PER_ROUND} connections per target, VIP {VIP} -> {BACKEND}, direct {BACKEND}\n"
    );
    let mut untraced = Vec::new();
    let mut traced = Vec::new();
    for pair in 0..TRACE_PAIRS {
        // Alternate which goes first, so drifting background load is shared.
        let order =
            if pair % 2 == 0 { [Build::Untraced, Build::Traced] } else { [Build::Traced, Build::Untraced] };
        for build in order {
            let ratio = scenario(build, 0);
            if build == Build::Untraced { untraced.push(ratio) } else { traced.push(ratio) }
        }
    }
    let tracing = scenario(Build::Tracing, 0);
    scenario(Build::Traced, OTHER_SERVICES);

    let (untraced, traced) = (median(&mut untraced), median(&mut traced));
    let cost = 1.0 - traced / untraced;
    println!("== Trace event code, medians of {TRACE_PAIRS} runs each of VIP/direct connection rate");
    println!("built without trace events: {untraced:.3}");
    println!(
        "balctl's datapath, not tracing: {traced:.3}: cost {:+.1}% (target <= {:.0}%: {})",
        cost * 100.0,
        MAX_UNTRACED_COST * 100.0,
        verdict(cost <= MAX_UNTRACED_COST)
    );
    println!(
        "balctl's datapath, `balctl trace` attached (one run): {tracing:.3}: cost {:+.1}%",
        (1.0 - tracing / untraced) * 100.0
    );
}

/// Measures one datapath build with `other_services` more rules in the
/// maps; returns the VIP/direct connection rate ratio.
fn scenario(build: Build, other_services: u32) -> f64 {
    let sandbox = Sandbox::new();
    sandbox.serve("b2", &[BACKEND], &[]);
    let cgroup = sandbox.cgroup.to_str().expect("cgroup path is UTF-8");
    let pins = PinDir::new(&sandbox.pins);
    if build == Build::Untraced {
        let sizes = MAP_SIZES
            .split(',')
            .filter_map(|s| s.split_once('='))
            .map(|(n, v)| (n.to_owned(), v.parse().expect("a size")));
        let targets = Targets { cgroup: Some(&sandbox.cgroup), devices: None };
        loader::load_object(UNTRACED, &pins, &targets, &MapSizes(sizes.collect()))
            .expect("load the untraced datapath");
    } else {
        sandbox.balctl_ok(&["load", "--cgroup", cgroup, "--map-size", MAP_SIZES]);
    }
    sandbox.balctl_ok(&["policy", "add", "bench-vip", "--vip", VIP, "--backend", BACKEND]);
    let programming = (other_services > 0).then(|| add_other_services(&sandbox, &pins, other_services));
    let tracer = (build == Build::Tracing).then(|| start_tracer(&sandbox));

    let contents =
        Datapath::open(&pins).and_then(|datapath| datapath.read_contents()).expect("read the maps");
    println!(
        "== {}: VIP + {other_services} other services (maps hold {} services entries, {} backends)",
        build.describe(),
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
    if let Some(tracer) = tracer {
        stop_tracer(&sandbox, tracer, &report);
    }
    print_table(&report)
}

/// `balctl trace -o json` reading every event into a file, as a person
/// tracing would; started and ready before the measurement.
fn start_tracer(sandbox: &Sandbox) -> std::process::Child {
    let output = std::fs::File::create(sandbox.scratch("trace.json")).expect("create the trace output");
    let mut child = std::process::Command::new(support::balctl())
        .args(["trace", "-o", "json"])
        .env("BALCTL_BPFFS", &sandbox.pins)
        .env("BALCTL_STATE_DIR", &sandbox.state)
        .stdout(output)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start balctl trace");
    let mut line = String::new();
    let stderr = child.stderr.take().expect("trace stderr");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line)
        .expect("trace says it is ready");
    assert!(line.starts_with("tracing"), "balctl trace did not start: {line}");
    child
}

/// Stops the tracer and says how many events it printed for how many VIP
/// connections (a full ring buffer drops events rather than wait).
fn stop_tracer(sandbox: &Sandbox, mut tracer: std::process::Child, report: &Value) {
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let _ = tracer.wait();
    let events =
        std::fs::read_to_string(sandbox.scratch("trace.json")).map(|t| t.lines().count()).unwrap_or(0);
    let connections = number(&report["vip"], "connections");
    println!(
        "the tracer printed {events} events for {connections:.0} measured VIP connections (and the warm-up)"
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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
                        scope: Scope::Balancing,
                    },
                    backends: vec![SocketAddr::new(IpAddr::V4(backend_host), 10_000 + (i % 50_000) as u16)],
                    local_backends: Vec::new(),
                    affinity_seconds: None,
                    local_only: false,
                    address_kind: balctl::model::AddressKind::default(),
                    external: balctl::model::ExternalBalancing::default(),
                    requests_per_second: None,
                    health: None,
                    weights: Vec::new(),
                    least_connections: false,
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

/// Prints the report; returns the VIP/direct rate ratio.
fn print_table(report: &Value) -> f64 {
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
    rate_ratio
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
