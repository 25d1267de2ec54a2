//! Programming each mechanism with the cluster, in its node: `balctl load`
//! then `balctl sync -f` of the Kubernetes YAML, `iptables-restore` and
//! `nft -f` of kube-proxy's rules, each timed as a whole process (spawn to
//! exit) with its peak RSS, and the kernel memory that appeared meanwhile.
//! balctl's time is its two commands' (a node starting balctl runs both,
//! as one starting kube-proxy has it write its rules).
//!
//! Kernel memory is the growth of SUnreclaim + Percpu + VmallocUsed in
//! /proc/meminfo over the command: where rules, sets, x_tables blobs and
//! BPF maps live. It is machine-wide, so other activity shows in it (a few
//! MB; the small sizes are within that noise). For balctl it spans `load`
//! too, since its maps are allocated, at full capacity, when created.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    cluster::Cluster,
    world::{Mechanism, World},
};

/// Memory is reported in MiB, as "MB".
const MIB: f64 = 1024.0 * 1024.0;
/// A programming command still running after this is stopped, and reported
/// as taking longer than it.
pub const TIME_LIMIT: Duration = Duration::from_secs(150);
/// One programming command as it ran.
pub struct Programmed {
    /// The command line, as a person would type it in the namespace.
    pub command: String,
    pub seconds: f64,
    /// False when it was stopped at TIME_LIMIT: it then changed nothing.
    pub finished: bool,
    pub peak_rss_mb: f64,
    pub kernel_mb: f64,
    /// Whether the datapath can be measured: the rules are in.
    pub ready: bool,
    /// Mechanism-specific facts (balctl's map sizes and memory, nftables'
    /// fallback ruleset).
    pub detail: Value,
    /// The commands `seconds` adds up, by name, when more than one ran
    /// (balctl's `load` and `sync`); empty otherwise.
    pub parts: Vec<(&'static str, f64)>,
}

/// `balctl load` on the sandbox's cgroup, then `balctl sync` of the
/// cluster, both run in balctl's node and timed; the result is their sum
/// (the larger peak RSS, the kernel memory over both).
pub fn balctl(world: &World, cluster: &Cluster) -> Programmed {
    let sandbox = &world.sandbox;
    let input = sandbox.scratch("cluster.yaml");
    cluster.write_kube_yaml(&input);
    let kernel_before = kernel_kb();
    let mut load = vec!["load", "--cgroup", sandbox.cgroup.to_str().expect("cgroup path is UTF-8")];
    let sizes = map_sizes(cluster);
    if let Some(sizes) = &sizes {
        load.extend(["--map-size", sizes]);
    }
    let loaded =
        run_timed(world.in_node(Mechanism::Balctl, sandbox.balctl_command(&load)), &sandbox.scratch("load"));
    assert!(loaded.finished, "balctl load took over {TIME_LIMIT:?}");
    let sync_args = ["sync", "--node-name", "node-0", "-f", input.to_str().expect("scratch path is UTF-8")];
    let synced = run_timed(
        world.in_node(Mechanism::Balctl, sandbox.balctl_command(&sync_args)),
        &sandbox.scratch("sync"),
    );
    let kernel_mb = kernel_growth_mb(kernel_before);
    let printed = fs::read_to_string(sandbox.scratch("sync.out")).unwrap_or_default();
    assert!(!synced.finished || printed.contains("frontends +"), "balctl sync printed: {printed}");
    let load_line = match &sizes {
        Some(sizes) => format!("balctl load --cgroup CGROUP --map-size {sizes}"),
        None => "balctl load --cgroup CGROUP".to_owned(),
    };
    Programmed {
        command: format!("{load_line}; balctl sync --node-name node-0 -f cluster.yaml"),
        seconds: loaded.seconds + synced.seconds,
        finished: synced.finished,
        peak_rss_mb: loaded.peak_rss_mb.max(synced.peak_rss_mb),
        kernel_mb,
        ready: synced.finished,
        detail: json!({
            "map_sizes": sizes.as_deref().unwrap_or("defaults"),
            "bpf_map_memlock_mb": bpf_map_memory_mb(&sandbox.pins.join("maps")),
        }),
        parts: vec![("load", loaded.seconds), ("sync", synced.seconds)],
    }
}

/// `iptables-restore` of kube-proxy's rules with either backend (kube-proxy
/// uses whichever the node's iptables uses); the same input for both.
pub fn iptables(world: &World, cluster: &Cluster, backend: Mechanism) -> Programmed {
    let program = match backend {
        Mechanism::IptablesLegacy => "iptables-legacy-restore",
        Mechanism::IptablesNft => "iptables-nft-restore",
        other => panic!("{} is not an iptables backend", other.name()),
    };
    let input = world.sandbox.scratch(&format!("{}.rules", backend.name()));
    cluster.write_iptables(&input);
    let kernel_before = kernel_kb();
    let mut command = world.command_in(backend, program);
    // kube-proxy's flags; --wait for the xtables lock, which is host-wide.
    command.args(["--noflush", "--wait", "10"]).arg(&input);
    let run = run_timed(command, &world.sandbox.scratch(program));
    Programmed {
        command: format!("{program} --noflush --wait 10 {}.rules", backend.name()),
        ready: run.finished,
        kernel_mb: kernel_growth_mb(kernel_before),
        detail: json!({}),
        ..run
    }
}

/// `nft -f` of kube-proxy's ruleset; if that is stopped at the time limit,
/// the simplified ruleset (see `Cluster::write_nft`) is programmed instead
/// so that the datapath can still be measured, and reported as such.
pub fn nftables(world: &World, cluster: &Cluster) -> Programmed {
    let program = |name: &str, simplified: bool| {
        let input = world.sandbox.scratch(name);
        cluster.write_nft(&input, simplified);
        let kernel_before = kernel_kb();
        let mut command = world.command_in(Mechanism::Nftables, "nft");
        command.arg("-f").arg(&input);
        let run = run_timed(command, &world.sandbox.scratch(name));
        Programmed { kernel_mb: kernel_growth_mb(kernel_before), ready: run.finished, ..run }
    };
    let mut programmed = program("kube-proxy.nft", false);
    programmed.command = "nft -f kube-proxy.nft".to_owned();
    if !programmed.finished {
        // The stopped transaction changed nothing; start without a
        // kube-proxy table anyway (made first, so that deleting it cannot
        // fail). Only that table: the node's other rules, the CNI's
        // masquerade among them, are nftables tables too.
        let mut delete = world.command_in(Mechanism::Nftables, "nft");
        delete.args(["add table ip kube-proxy ; delete table ip kube-proxy"]);
        assert!(delete.status().is_ok_and(|s| s.success()), "nft delete table ip kube-proxy");
        let fallback = program("simplified.nft", true);
        programmed.ready = fallback.finished;
        programmed.detail = json!({
            "simplified_ruleset": {
                "seconds": fallback.seconds,
                "peak_rss_mb": fallback.peak_rss_mb,
                "kernel_mb": fallback.kernel_mb,
            }
        });
    }
    programmed
}

/// balctl's map capacities for the cluster: the defaults while they hold it
/// (as a node would run), else room for it with an eighth to spare.
fn map_sizes(cluster: &Cluster) -> Option<String> {
    let frontends = cluster.services.len() as u32;
    // A frontend entry and a slot per endpoint; a backend per endpoint.
    let (entries, backends) = (frontends * 3, frontends * 2);
    let defaults = balctl_common::default_capacity::SERVICES.min(balctl_common::default_capacity::BACKENDS);
    (entries > defaults || backends > defaults).then(|| {
        let room = |n: u32| (n + n / 8).next_power_of_two();
        format!("services={},backends={}", room(entries), room(backends))
    })
}

/// Waits (at most QUIET_WAIT) until the CPUs were at least 90 % idle over
/// half a second, so that a timed command does not share the machine with
/// the kernel still tearing down the last size's namespaces and rules (a
/// 10,000-service `balctl sync` took 0.95 s right after it, 0.64 s alone).
fn wait_until_quiet() {
    const QUIET_WAIT: Duration = Duration::from_secs(30);
    let started = Instant::now();
    while started.elapsed() < QUIET_WAIT {
        let before = cpu_times();
        std::thread::sleep(Duration::from_millis(500));
        let after = cpu_times();
        let (idle, total) = (after.0 - before.0, after.1 - before.1);
        if total == 0 || idle as f64 >= 0.9 * total as f64 {
            return;
        }
    }
    eprintln!("the machine stayed busy for {QUIET_WAIT:?}; timing anyway");
}

/// Idle (idle + iowait) and total jiffies of all CPUs, from /proc/stat.
fn cpu_times() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (idle, fields.iter().sum())
}

/// Runs `command` (output to `<scratch>.out` and `.err`) until it exits or
/// TIME_LIMIT passes, when it is killed. The wall time runs from spawn to
/// exit; the peak RSS comes from `wait4`. A command that fails is a bug
/// of the bench: it panics with the command's error output.
fn run_timed(mut command: Command, scratch: &Path) -> Programmed {
    wait_until_quiet();
    let (out, err) = (scratch.with_extension("out"), scratch.with_extension("err"));
    command
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("create output file"))
        .stderr(File::create(&err).expect("create error file"));
    let started = Instant::now();
    // Reaped by wait4 below, which also gives the peak RSS that Child::wait cannot.
    #[allow(clippy::zombie_processes)]
    let child = command.spawn().unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    // A pidfd waits with a timeout and signals without any risk of hitting a
    // reused pid. SAFETY (all three calls): plain syscalls on our own child.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    let mut poll = libc::pollfd { fd: pidfd, events: libc::POLLIN, revents: 0 };
    let ready = unsafe { libc::poll(&mut poll, 1, TIME_LIMIT.as_millis() as libc::c_int) };
    let took = started.elapsed();
    assert!(ready >= 0, "poll: {}", std::io::Error::last_os_error());
    let finished = ready > 0;
    if !finished {
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, libc::SIGKILL, 0, 0) };
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child just spawned; nothing else reaps it.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(pidfd) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let succeeded = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    assert!(
        !finished || succeeded,
        "{command:?} failed: {}",
        fs::read_to_string(&err).unwrap_or_default().lines().take(20).collect::<Vec<_>>().join("\n")
    );
    Programmed {
        command: format!("{command:?}"),
        seconds: took.as_secs_f64(),
        finished,
        // ru_maxrss is in kilobytes on Linux.
        peak_rss_mb: usage.ru_maxrss as f64 * 1024.0 / MIB,
        kernel_mb: 0.0,
        ready: finished,
        detail: json!({}),
        parts: Vec::new(),
    }
}

/// SUnreclaim + Percpu + VmallocUsed, in kB.
fn kernel_kb() -> u64 {
    let meminfo = fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    meminfo
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let kb = rest.split_whitespace().next()?.parse::<u64>().ok()?;
            ["SUnreclaim", "Percpu", "VmallocUsed"].contains(&name).then_some(kb)
        })
        .sum()
}

fn kernel_growth_mb(before_kb: u64) -> f64 {
    (kernel_kb() as f64 - before_kb as f64) * 1024.0 / MIB
}

/// The memory of every map pinned in `maps`, as the kernel accounts it
/// (`bpftool map show`'s bytes_memlock), in MiB.
fn bpf_map_memory_mb(maps: &Path) -> f64 {
    let pins: Vec<PathBuf> =
        fs::read_dir(maps).expect("list the pinned maps").flatten().map(|e| e.path()).collect();
    let bytes: u64 = pins
        .iter()
        .map(|pin| {
            let output = Command::new("bpftool")
                .args(["-j", "map", "show", "pinned"])
                .arg(pin)
                .output()
                .expect("run bpftool");
            let shown: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
            shown["bytes_memlock"]
                .as_u64()
                .unwrap_or_else(|| panic!("no bytes_memlock for {}", pin.display()))
        })
        .sum();
    bytes as f64 / MIB
}
