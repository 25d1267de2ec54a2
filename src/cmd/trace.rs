//! `balctl trace`: resolutions as the datapath makes them, one line each,
//! with who made them (pid, command, cgroup, container; for a north-south
//! flow, the client outside the node that sent its first packet) and what
//! they came to, named from the state dir.

use std::{
    collections::HashMap,
    io::{self, Write as _},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use balctl_common::{OP_CONNECT, OP_PACKET, OP_SENDMSG, TRACE_FLAG_UNHEALTHY, TraceEvent, result};
use serde::Serialize;

use super::Context;
use crate::{
    bpf::{maps::ServiceId, sys::monotonic_ns},
    cli::{ApiServerArgs, TraceArgs},
    cluster,
    image::raw::{raw_to_addr, raw_to_port},
    model::Protocol,
    output::OutputFormat,
    state::StateDir,
    trace::{Tracer, cgroups, cgroups::CgroupNames},
};

/// How long a wait for events lasts before the stop conditions are checked.
const TICK: Duration = Duration::from_millis(100);

/// One resolution as printed; with `-o json`, one JSON object per line.
#[derive(Serialize)]
struct Resolution {
    /// RFC 3339, UTC, milliseconds.
    time: String,
    /// The process and its command name; null for a packet's.
    pid: Option<u32>,
    comm: Option<String>,
    /// Of a packet from outside the node (`operation` packet): its source,
    /// `IP:PORT`; null for a socket's.
    client: Option<SocketAddr>,
    /// Under the cgroup2 mount; null once the cgroup is gone.
    cgroup: Option<String>,
    container_id: Option<String>,
    /// The container's pod (`namespace/name`), with `--kube`.
    pod: Option<String>,
    protocol: Option<Protocol>,
    /// `connect`, `sendmsg` for a datagram of an unconnected UDP socket,
    /// or `packet` for the first packet of a north-south flow.
    operation: &'static str,
    /// The destination asked for; of a packet, the frontend it was sent
    /// to (for a node port, the node address called).
    original: SocketAddr,
    /// Null when the resolution failed.
    backend: Option<SocketAddr>,
    backend_id: Option<u32>,
    service_id: ServiceId,
    /// The frontend matched and its rule (`service/NS/NAME`, `policy/NAME`),
    /// from the state dir; null if it does not know the id.
    frontend: Option<String>,
    name: Option<String>,
    /// How the backend was chosen (random, affinity, socket, maglev) or why
    /// there was none (no_backend, no_healthy_backend, no_local_backend,
    /// stale, family).
    result: &'static str,
    failed: bool,
    /// Every backend of the rule failed its health check and the rule
    /// fails open: the connection went to one of them anyway.
    failing_open: bool,
}

pub fn run(ctx: &Context, args: &TraceArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot handle SIGINT and SIGTERM")?;
    }
    let mut names = Names::read(&ctx.state)?;
    let mut tracer = Tracer::start(&ctx.pins, &ctx.state)?;
    if !ctx.quiet {
        eprintln!("tracing resolutions (slot {}); Ctrl-C to stop", tracer.slot());
    }
    let deadline = args.duration.map(|duration| Instant::now() + duration);
    let clock = WallClock::now();
    let mut cgroups = CgroupNames::default();
    let mut pods = args.kube.then(|| Pods {
        connection: &args.api_server,
        by_container: HashMap::new(),
        listed_at: None,
    });
    let mut out = io::stdout().lock();
    if ctx.output.is_table() && !ctx.no_headers {
        writeln!(
            out,
            "{:<12} {:<23} {:<5} {:<47} {:<16} {:<24} CGROUP",
            "TIME",
            format!("{:>7} {}", "PID", "COMM/CLIENT"),
            "PROTO",
            "ORIGINAL -> BACKEND",
            "RESULT",
            "NAME"
        )?;
    }
    let mut shown = 0u64;
    let mut failure = None;
    while !stop.load(Ordering::Relaxed)
        && deadline.is_none_or(|deadline| Instant::now() < deadline)
        && args.count.is_none_or(|count| shown < count)
    {
        tracer.poll(TICK, |raw| {
            if !wanted(args, raw) {
                return true;
            }
            let mut resolution =
                describe(raw, names.lookup(&ctx.state, raw.service_id), &mut cgroups, &clock);
            if let (Some(pods), Some(id)) = (pods.as_mut(), &resolution.container_id) {
                resolution.pod = pods.lookup(id);
            }
            if let Err(err) = print(&mut out, ctx.output, &resolution) {
                failure = Some(err);
                return false;
            }
            shown += 1;
            args.count.is_none_or(|count| shown < count)
        })?;
        if let Some(err) = failure.take() {
            return Err(err);
        }
        // What arrived together is written together, as soon as it is read:
        // trace is often piped, and a write per event would cost the busy
        // machine being traced a syscall per connection.
        out.flush()?;
    }
    Ok(())
}

/// Whether the filters keep the event: `--pid` keeps sockets' only (a
/// packet has no process), `--client` packets' only (a socket has no
/// client).
fn wanted(args: &TraceArgs, raw: &TraceEvent) -> bool {
    let original = SocketAddr::new(raw_to_addr(raw.original), raw_to_port(raw.original_port));
    let packet = raw.operation == OP_PACKET;
    args.vip.is_none_or(|vip| vip.matches_address(original))
        && args.pid.is_none_or(|pid| !packet && pid == (raw.pid_tgid >> 32) as u32)
        && args.client.is_none_or(|prefix| packet && prefix.contains(raw_to_addr(raw.client)))
        && (!args.failed || result::is_failure(raw.result))
}

fn describe(
    raw: &TraceEvent,
    name: Option<&(String, String)>,
    cgroups: &mut CgroupNames,
    clock: &WallClock,
) -> Resolution {
    let packet = raw.operation == OP_PACKET;
    let cgroup = if packet { None } else { cgroups.path(raw.cgroup_id).map(str::to_owned) };
    let failed = result::is_failure(raw.result);
    let unhealthy = raw.flags & TRACE_FLAG_UNHEALTHY != 0;
    let comm_len = raw.comm.iter().position(|&b| b == 0).unwrap_or(raw.comm.len());
    Resolution {
        time: humantime::format_rfc3339_millis(clock.at(raw.time_ns)).to_string(),
        pid: (!packet).then_some((raw.pid_tgid >> 32) as u32),
        comm: (!packet).then(|| String::from_utf8_lossy(&raw.comm[..comm_len]).into_owned()),
        client: packet.then(|| SocketAddr::new(raw_to_addr(raw.client), raw_to_port(raw.client_port))),
        container_id: cgroup.as_deref().and_then(cgroups::container_id).map(str::to_owned),
        pod: None,
        cgroup,
        protocol: Protocol::from_ip_proto(raw.proto),
        operation: match raw.operation {
            OP_CONNECT => "connect",
            OP_SENDMSG => "sendmsg",
            OP_PACKET => "packet",
            _ => "unknown",
        },
        original: SocketAddr::new(raw_to_addr(raw.original), raw_to_port(raw.original_port)),
        backend: (!failed).then(|| SocketAddr::new(raw_to_addr(raw.backend), raw_to_port(raw.backend_port))),
        backend_id: (!failed).then_some(raw.backend_id),
        service_id: raw.service_id,
        frontend: name.map(|(frontend, _)| frontend.clone()),
        name: name.map(|(_, owner)| owner.clone()),
        result: resolution_name(raw.result, unhealthy),
        failed,
        failing_open: unhealthy && !failed,
    }
}

/// How `trace` and `explain` name a resolution's `result::` code, for a
/// frontend whose every backend fails its health check (`unhealthy`) or
/// not: such a rule's refusal is `no_healthy_backend`.
pub fn resolution_name(code: u8, unhealthy: bool) -> &'static str {
    match code {
        result::NO_BACKEND if unhealthy => "no_healthy_backend",
        code => result_name(code),
    }
}

/// How `trace` (and `explain`) name a `result::` code.
pub fn result_name(code: u8) -> &'static str {
    match code {
        result::RANDOM => "random",
        result::AFFINITY => "affinity",
        result::SOCKET => "socket",
        result::NO_BACKEND => "no_backend",
        result::NO_LOCAL_BACKEND => "no_local_backend",
        result::STALE => "stale",
        result::FAMILY => "family",
        result::MAGLEV => "maglev",
        result::LEAST_CONNECTIONS => "least_connections",
        _ => "unknown",
    }
}

fn print(out: &mut impl io::Write, format: OutputFormat, resolution: &Resolution) -> Result<()> {
    match format {
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, resolution)?;
            writeln!(out)?;
        }
        OutputFormat::Yaml => {
            writeln!(out, "---")?;
            serde_saphyr::to_io_writer(&mut *out, resolution)?;
        }
        // One template per event, as `kubectl get -w -o jsonpath` prints one per object.
        OutputFormat::JsonPath(template) => {
            out.write_all(template.render(&serde_json::to_value(resolution)?).as_bytes())?;
        }
        OutputFormat::Table | OutputFormat::Wide => {
            let backend = resolution.backend.map_or_else(|| "-".to_owned(), |b| b.to_string());
            let place = match (&resolution.pod, &resolution.container_id, &resolution.cgroup) {
                (Some(pod), _, _) => format!("pod {pod}"),
                (None, Some(id), _) => format!("container {}", &id[..12]),
                (None, None, Some(cgroup)) => cgroup.clone(),
                (None, None, None) => "-".to_owned(),
            };
            // A packet's client takes the place of the process.
            let who = match (&resolution.client, resolution.pid, &resolution.comm) {
                (Some(client), _, _) => format!("client {client}"),
                (None, pid, comm) => format!(
                    "{:>7} {}",
                    pid.map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
                    comm.as_deref().unwrap_or("-")
                ),
            };
            writeln!(
                out,
                "{:<12} {who:<23} {:<5} {:<47} {:<16} {:<24} {place}",
                &resolution.time[11..23],
                resolution.protocol.map_or_else(|| "?".to_owned(), |p| p.to_string()),
                format!("{} -> {backend}", resolution.original),
                if resolution.failing_open {
                    format!("{} (fail-open)", resolution.result)
                } else {
                    resolution.result.to_owned()
                },
                resolution.name.as_deref().unwrap_or("-"),
            )?;
        }
    }
    Ok(())
}

/// Frontend and rule name of each service id, from the state dir; read
/// again (at most once a second) when an id is missing, as a sync may have
/// added it since.
struct Names {
    by_id: HashMap<ServiceId, (String, String)>,
    read_at: Instant,
}

impl Names {
    fn read(state: &StateDir) -> Result<Self> {
        let applied = state.read()?;
        let by_id = applied
            .image
            .frontends
            .iter()
            .map(|(frontend, image)| (image.service_id, (frontend.to_string(), image.owner.clone())))
            .collect();
        Ok(Self { by_id, read_at: Instant::now() })
    }

    fn lookup(&mut self, state: &StateDir, id: ServiceId) -> Option<&(String, String)> {
        if !self.by_id.contains_key(&id)
            && self.read_at.elapsed() >= Duration::from_secs(1)
            && let Ok(fresh) = Self::read(state)
        {
            *self = fresh;
        }
        self.by_id.get(&id)
    }
}

/// Pods by container id, from the API server: listed at the start and
/// again (at most once a second) when a container is not known yet.
struct Pods<'a> {
    connection: &'a ApiServerArgs,
    by_container: HashMap<String, String>,
    listed_at: Option<Instant>,
}

impl Pods<'_> {
    fn lookup(&mut self, container_id: &str) -> Option<String> {
        if !self.by_container.contains_key(container_id)
            && self.listed_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.listed_at = Some(Instant::now());
            match cluster::pods_by_container(self.connection) {
                Ok(pods) => self.by_container = pods,
                Err(err) => log::warn!("cannot name pods: {err:#}"),
            }
        }
        self.by_container.get(container_id).cloned()
    }
}

/// Turns the datapath's CLOCK_MONOTONIC times into wall-clock times.
struct WallClock {
    wall: SystemTime,
    monotonic_ns: u64,
}

impl WallClock {
    fn now() -> Self {
        Self { wall: SystemTime::now(), monotonic_ns: monotonic_ns() }
    }

    fn at(&self, monotonic_ns: u64) -> SystemTime {
        if monotonic_ns >= self.monotonic_ns {
            self.wall + Duration::from_nanos(monotonic_ns - self.monotonic_ns)
        } else {
            self.wall - Duration::from_nanos(self.monotonic_ns - monotonic_ns)
        }
    }
}
