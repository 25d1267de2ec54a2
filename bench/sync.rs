//! `balctl sync -f` of Kubernetes YAML at scale: N services × 10 endpoints
//! (N = 10,000, 30,000, 100,000 by default; or the sizes given as
//! arguments), timed as whole processes, with their peak RSS.
//!
//! For each size, in a fresh sandbox (private bpffs, child cgroup, its own
//! state dir; see tests/cli/support), balctl is loaded with maps big enough
//! for N, a `kubectl get services,endpointslices -A -o yaml`-shaped List is
//! written, and then measured:
//! 1. full sync into an empty datapath;
//! 2. the same sync again (nothing to change);
//! 3. a one-endpoint change (one endpoint of one service gets a new address,
//!    and back again; six times, reported as median and slowest).
//!
//! With `--kube`, the same clusters are served by the tests' API server
//! (tests/cli/support/apiserver.rs) to one `balctl sync --kube --watch`:
//! the time to its first sync, then per one-endpoint change (an
//! EndpointSlice replaced, as the endpoint slice controller does) the time
//! until the watcher reports it applied and the CPU time the watcher spent
//! on it (all its threads, from /proc), and its peak RSS. With
//! `SYNC_BENCH_HEADLESS=H`, the cluster also has H headless Services (a
//! StatefulSet's), each with a slice of 10 endpoints: they make no
//! frontend, and every batch of the watch reads them again.
//!
//! With `--against OLD`, the full sync (1.) by another balctl binary OLD,
//! e.g. the release before a change of the YAML parser, and by this one:
//! ROUNDS times each, alternating, each into a fresh sandbox loaded by the
//! binary that syncs; it prints both medians and their ratio (this one's
//! over OLD's).
//!
//! Run as root: `cargo bench --bench sync [-- [--kube | --against OLD]
//! SIZES...]`. Results are recorded in bench/RESULTS.md.

// The sandbox is shared with the CLI tests; the bench uses part of it.
#[allow(dead_code)]
#[path = "../tests/cli/support/mod.rs"]
mod support;

mod kube_yaml;

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use support::{Sandbox, apiserver::ApiServer, watcher::Watcher};

const ENDPOINTS: u32 = 10;
/// One-endpoint changes are measured 2 × this many times (moved, moved
/// back), unless `SYNC_BENCH_CHANGE_ROUNDS` says how many (more rounds give
/// a profiler something to sample: `perf record -p` on the watcher once the
/// bench says its first sync is done).
const CHANGE_ROUNDS: usize = 3;

fn change_rounds() -> usize {
    std::env::var("SYNC_BENCH_CHANGE_ROUNDS")
        .map_or(CHANGE_ROUNDS, |n| n.parse().expect("a number of rounds"))
}
/// Ports a backend address is given before the next address is used, so
/// every endpoint of every service is a distinct backend, as pod IPs are.
const PORTS_PER_ADDRESS: u32 = 60_000;
/// Full syncs by each binary with `--against`.
const ROUNDS: usize = 5;

fn main() {
    support::start_bench("sync", "cgroups, bpf");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let against = args.iter().position(|a| a == "--against").map(|at| args[at + 1].as_str());
    let sizes: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10_000, 30_000, 100_000] } else { sizes };
    if let Some(old) = against {
        println!("| services × {ENDPOINTS} | full sync s, {old}: median | this balctl: median | ratio |");
        println!("|---:|---:|---:|---:|");
        for services in sizes {
            compare(old, services);
        }
        return;
    }
    if std::env::args().any(|a| a == "--kube") {
        println!(
            "| services × {ENDPOINTS} | first sync s | one-endpoint change s, median | slowest | \
             watcher CPU per change ms, median | most | watcher peak RSS MB |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for services in sizes {
            kube_scenario(services);
        }
        return;
    }
    println!(
        "| services × {ENDPOINTS} | YAML | full sync s | RSS MB | repeat s | RSS MB | \
         one-endpoint change s, median | slowest | RSS MB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for services in sizes {
        scenario(services);
    }
}

/// A sandbox with balctl (the binary `program`) loaded, its maps sized for
/// `services`.
fn loaded(program: &str, services: u32) -> Sandbox {
    let sandbox = Sandbox::new();
    let entries = services * (ENDPOINTS + 1);
    let sizes = format!(
        "services={},backends={}",
        (entries + entries / 8).next_power_of_two(),
        (services * ENDPOINTS + 1).next_power_of_two()
    );
    let cgroup = sandbox.cgroup.to_str().expect("cgroup path is UTF-8");
    let output = sandbox.command_of(program, &["load", "--cgroup", cgroup, "--map-size", &sizes]).output();
    let output = output.expect("run balctl load");
    assert!(output.status.success(), "{program} load: {}", String::from_utf8_lossy(&output.stderr));
    sandbox
}

fn scenario(services: u32) {
    let sandbox = loaded(support::balctl(), services);
    let input = sandbox.scratch("cluster.yaml");
    write_cluster(&input, services, None);
    let megabytes = std::fs::metadata(&input).map(|m| m.len() / 1_000_000).unwrap_or(0);

    let full = timed_sync(&sandbox, support::balctl(), &input, "frontends +");
    let repeat = timed_sync(&sandbox, support::balctl(), &input, "no changes");
    // A single sync of tens of milliseconds is at the mercy of this shared
    // VM's noise: the endpoint is moved and moved back, CHANGE_ROUNDS times.
    let mut changes = Vec::new();
    for round in 0..change_rounds() {
        for changed in [Some(0), None] {
            write_cluster(&input, services, changed);
            let expect = "frontends +0 ~1 -0, backends +1 -1";
            changes.push(timed_sync(&sandbox, support::balctl(), &input, expect));
        }
        eprintln!("{services}: change round {} of {} done", round + 1, change_rounds());
    }
    changes.sort();
    let (median, slowest) = (changes[changes.len() / 2], changes[changes.len() - 1]);
    let change_rss = changes.iter().map(|c| c.1).max().unwrap_or_default();
    println!(
        "| {services} | {megabytes} MB | {:.2} | {} | {:.2} | {} | {:.3} | {:.3} | {change_rss} |",
        full.0.as_secs_f64(),
        full.1,
        repeat.0.as_secs_f64(),
        repeat.1,
        median.0.as_secs_f64(),
        slowest.0.as_secs_f64(),
    );
}

/// The full sync of `compare`: OLD's and this balctl's, alternating.
fn compare(old: &str, services: u32) {
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        // Which goes first alternates, so that neither always meets a
        // warmer page cache or a quieter machine.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let program = [old, support::balctl()][which];
            let sandbox = loaded(program, services);
            let input = sandbox.scratch("cluster.yaml");
            write_cluster(&input, services, None);
            times[which].push(timed_sync(&sandbox, program, &input, "frontends +").0.as_secs_f64());
        }
        eprintln!(
            "{services}: round {} of {ROUNDS}: {old} {:.3} s, this {:.3} s",
            round + 1,
            times[0][round],
            times[1][round]
        );
    }
    let [old_median, new_median] = times.map(|mut t| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    });
    println!("| {services} | {old_median:.3} | {new_median:.3} | {:.3} |", new_median / old_median);
}

/// Runs `balctl sync -f input` (the binary `program`) as its own process;
/// returns its wall time and peak RSS in MB, after checking its summary
/// line.
fn timed_sync(sandbox: &Sandbox, program: &str, input: &Path, expect: &str) -> (Duration, u64) {
    let output_path = sandbox.scratch("sync.out");
    let output = File::create(&output_path).expect("create output file");
    let start = Instant::now();
    // Reaped by wait4 below, which also gives the peak RSS that Child::wait cannot.
    #[allow(clippy::zombie_processes)]
    let child = sandbox
        .command_of(program, &["sync", "--node-name", "node-a", "-f"])
        .arg(input)
        .stdout(output)
        .spawn()
        .expect("run balctl");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child just spawned; nothing else reaps it.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let took = start.elapsed();
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let printed = std::fs::read_to_string(&output_path).unwrap_or_default();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "balctl sync failed: {printed}");
    assert!(printed.contains(expect), "expected `{expect}` from the sync, got: {printed}");
    // ru_maxrss is in kilobytes on Linux.
    (took, usage.ru_maxrss as u64 / 1024)
}

/// `sync --kube --watch` against the cluster served by an API server: its
/// first sync, then one-endpoint changes.
fn kube_scenario(services: u32) {
    let sandbox = loaded(support::balctl(), services);
    let server = ApiServer::start();
    let kubeconfig = sandbox.scratch("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    for i in 0..services {
        for object in with_service(i, false, |service| service.objects()) {
            server.apply(object);
        }
    }
    for object in (0..headless_services()).flat_map(headless) {
        server.apply(object);
    }
    let kubeconfig = kubeconfig.to_str().expect("a UTF-8 path");
    let started = Instant::now();
    let watcher =
        Watcher::start_with(&sandbox, &[], &["--kube", "--kubeconfig", kubeconfig, "--node-name", "node-a"]);
    watcher.wait_stdout_within("frontends +", Duration::from_secs(600));
    let first = started.elapsed();
    eprintln!("{services}: first sync done (watcher pid {})", watcher.pid());
    let mut changes = Vec::new();
    for round in 0..change_rounds() {
        for moved in [true, false] {
            let cpu = cpu_time(watcher.pid());
            let started = Instant::now();
            let [_, slice] = with_service(0, moved, |service| service.objects());
            server.apply(slice);
            watcher.wait_stdout("frontends +0 ~1 -0, backends +1 -1");
            changes.push((started.elapsed(), cpu_time(watcher.pid()) - cpu));
        }
        eprintln!("{services}: change round {} of {} done", round + 1, change_rounds());
    }
    let peak_rss = peak_rss_mb(watcher.pid());
    assert_eq!(watcher.terminate(), Some(0), "the watcher's exit code");
    let median = |values: &mut Vec<Duration>| {
        values.sort();
        (values[values.len() / 2].as_secs_f64(), values[values.len() - 1].as_secs_f64())
    };
    let (latency, slowest) = median(&mut changes.iter().map(|c| c.0).collect());
    let (cpu, most_cpu) = median(&mut changes.iter().map(|c| c.1).collect());
    // In ms: a change costs a few.
    let (cpu, most_cpu) = (cpu * 1e3, most_cpu * 1e3);
    println!(
        "| {services} | {:.2} | {latency:.3} | {slowest:.3} | {cpu:.2} | {most_cpu:.1} | {peak_rss} |",
        first.as_secs_f64()
    );
}

/// Headless Services added to the cluster of `--kube` besides its N
/// (`SYNC_BENCH_HEADLESS`, default none): a StatefulSet's, each with an
/// EndpointSlice of 10 endpoints. They make no frontend.
fn headless_services() -> u32 {
    std::env::var("SYNC_BENCH_HEADLESS").map_or(0, |n| n.parse().expect("a number of headless Services"))
}

/// Headless Service `i` and its EndpointSlice, as the API server holds them.
fn headless(i: u32) -> [serde_json::Value; 2] {
    let [mut service, mut slice] = with_service(i, false, |service| service.objects());
    let name = format!("headless-{i}");
    service["metadata"]["name"] = name.clone().into();
    service["metadata"]["labels"]["app"] = name.clone().into();
    service["spec"]["selector"]["app"] = name.clone().into();
    service["spec"]["clusterIP"] = "None".into();
    service["spec"]["clusterIPs"] = serde_json::json!(["None"]);
    slice["metadata"]["name"] = format!("{name}-abcde").into();
    slice["metadata"]["generateName"] = format!("{name}-").into();
    slice["metadata"]["labels"]["kubernetes.io/service-name"] = name.into();
    [service, slice]
}

/// CPU time of every thread of process `pid` so far (schedstat: on-CPU ns).
fn cpu_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the watcher's threads");
    let nanos = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// Process `pid`'s peak RSS (VmHWM) in MB.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the watcher's status");
    let kilobytes = status.lines().find_map(|line| line.strip_prefix("VmHWM:")?.trim().strip_suffix(" kB"));
    kilobytes.and_then(|kb| kb.trim().parse::<u64>().ok()).expect("VmHWM") / 1024
}

/// Writes the cluster as `kubectl get services,endpointslices -A -o yaml`
/// prints it; with `changed = Some(i)`, service i's first endpoint has
/// another address.
fn write_cluster(path: &Path, services: u32, changed: Option<u32>) {
    let mut out = BufWriter::new(File::create(path).expect("create the YAML input"));
    let mut item = String::new();
    out.write_all(kube_yaml::LIST_START.as_bytes()).expect("write");
    for i in 0..services {
        item.clear();
        with_service(i, changed == Some(i), |service| service.write(&mut item));
        out.write_all(item.as_bytes()).expect("write");
    }
    out.write_all(kube_yaml::LIST_END.as_bytes()).expect("write");
    // On disk before balctl runs: on ext4 (data=ordered) the journal
    // commit of balctl's own fdatasync would otherwise write this file's
    // 36 MB first, 50 ms on this VM's disk, in whichever balctl comes next.
    out.into_inner().expect("write").sync_all().expect("flush the YAML input to disk");
}

/// Service i of a cluster: cluster IP 198.18.0.0 + i + 1 and 10 endpoints,
/// each a distinct backend; with `moved`, its first endpoint has another
/// address.
fn with_service<T>(i: u32, moved: bool, f: impl FnOnce(&kube_yaml::ServiceItem) -> T) -> T {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i + 1);
    let (namespace, name) = (format!("ns-{}", i % 100), format!("svc-{i}"));
    let endpoints: Vec<(Ipv4Addr, u32)> = (0..ENDPOINTS)
        .map(|e| {
            let host = 2 + e + ENDPOINTS * (i / PORTS_PER_ADDRESS) + if moved && e == 0 { 100 } else { 0 };
            (Ipv4Addr::new(192, 0, 2, host as u8), e % 3)
        })
        .collect();
    f(&kube_yaml::ServiceItem {
        index: i,
        namespace: &namespace,
        name: &name,
        vip,
        port_name: "http",
        port: 80,
        protocol: "TCP",
        target_port: (1024 + i % PORTS_PER_ADDRESS) as u16,
        endpoints: &endpoints,
    })
}
