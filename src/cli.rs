//! The command line, defined once: parsing, `--help`, shell completions and
//! man pages all come from these types.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    bpf::object::SIZE_NAMES,
    inputs::InputLimit,
    model::{Frontend, NodePortAddresses, Prefix, Protocol, Scope, parse_affinity, parse_backend},
    output::{OutputFormat, OutputFormatParser},
};

/// eBPF socket-level load balancer for Kubernetes services and custom VIPs.
///
/// balctl rewrites the destination of a socket at connect()/sendmsg() time,
/// so a connection to a service address becomes a direct connection to one
/// of its backends: no per-packet NAT, no conntrack, no iptables. The
/// programs and maps stay pinned under the pin directory and keep working
/// after balctl exits; every command works against those pins.
#[derive(Debug, Parser)]
#[command(name = "balctl", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Pin directory for balctl's maps and links (on a bpf filesystem)
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "BALCTL_BPFFS",
        default_value = "/sys/fs/bpf/balctl"
    )]
    pub bpffs: PathBuf,

    /// Directory where applied state is kept
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "BALCTL_STATE_DIR",
        default_value = "/var/lib/balctl"
    )]
    pub state_dir: PathBuf,

    /// Output format: table, wide (the table with more columns), json,
    /// yaml, or jsonpath=TEMPLATE (kubectl's JSONPath template of the JSON
    /// document, e.g. -o jsonpath='{range .services[*]}{.frontend}{"\n"}{end}')
    #[arg(
        short,
        long,
        global = true,
        value_name = "FORMAT",
        value_parser = OutputFormatParser,
        default_value = "table",
        hide_possible_values = true
    )]
    pub output: OutputFormat,

    /// Print tables without their header row (-o table and wide; other
    /// formats have no headers and ignore it, as kubectl's does)
    #[arg(long, global = true)]
    pub no_headers: bool,

    /// Print more (repeat for debug logs)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Print only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Log lines as text (TIME LEVEL message) or JSON, one object a line
    /// with time (RFC 3339, UTC), level, target and message
    #[arg(long, global = true, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the programs and attach them to a cgroup, or replace them in place
    ///
    /// Creates (or reuses) the pinned maps, attaches one program per hook
    /// (connect4/6, sendmsg4/6, recvmsg4/6, getpeername4/6) through bpf_links
    /// pinned under the pin directory, and programs the maps with every rule
    /// in the state directory. Run again, it swaps the programs behind the
    /// existing links: no second attachment, map contents kept, no
    /// connection lost.
    Load(LoadArgs),

    /// Detach every hook and remove every pin
    ///
    /// Applied rules stay in the state directory; the next `load` restores
    /// them (--purge removes them too). Asks for confirmation on a terminal;
    /// without a terminal it requires --yes.
    Unload(UnloadArgs),

    /// Show whether balctl is loaded, where, and how full its maps are
    ///
    /// The exit code says what it found, so that it can serve as an exec
    /// probe: 0 loaded and in sync with the applied state; 3 not loaded; 4
    /// loaded but drifted (map entries differ from the applied state, a hook
    /// is missing, or a change was interrupted during its map writes:
    /// `balctl load` repairs it); 1 the status could not be read; 2 usage
    /// error. The status is printed in every case, in the format asked for.
    Status,

    /// Add, change, list and delete balancing rules
    #[command(subcommand)]
    Policy(PolicyCommand),

    /// Make the maps match state files: plan the difference, print it, apply it
    ///
    /// Reads TOML state files (a file, a directory of *.toml files, or - for
    /// standard input; repeat -f for more). Each -f argument is a source: the
    /// sync replaces exactly the objects that came from its sources, so rules
    /// from `balctl policy` and other sources stay. Everything is validated
    /// before the first map write; an error points at file:line:column.
    ///
    /// With --watch, balctl keeps running and syncs again whenever an input
    /// changes: a file written or renamed over, a file added to or removed
    /// from a directory. An input that does not parse or validate is
    /// reported and the applied state stays as it was, also at start-up; the
    /// next change that makes it valid is applied. A change that would remove
    /// more than a quarter of a source's frontends waits until the inputs have
    /// been unchanged for --settle. SIGINT or SIGTERM stops the watch (exit 0);
    /// the datapath stays loaded.
    ///
    /// An empty (zero-byte) input is taken for one being written, never for
    /// no objects: a one-shot sync refuses it (exit 2), --watch waits for the
    /// next change. A comment or `items: []` says "no objects".
    Sync(SyncArgs),

    /// Show what the pinned maps hold
    Dump(DumpArgs),

    /// Show resolutions as they happen: who connected where, and which backend it got
    ///
    /// One line per socket (or unconnected datagram) sent to a frontend:
    /// time, pid, command, cgroup (and container id), protocol, original
    /// destination -> chosen backend, the rule's name and how the backend
    /// was chosen, or why none was; and one per north-south flow opened by
    /// a packet from outside the node (load --devices), with its client
    /// address instead of pid and command. JSON lines with -o json. The datapath
    /// writes events only while a tracer runs: each tracer renews a lease
    /// every 0.5 s, so a killed one stops tracing within 1.5 s. Up to four
    /// tracers can run at once. Stops on Ctrl-C, after --count events or
    /// after --duration.
    Trace(TraceArgs),

    /// Show what a connect from a client to DEST would resolve to, without connecting
    ///
    /// Reads the pinned maps as the datapath would at connect(): which rule
    /// layer takes DEST (a LocalRedirectPolicy, a BalancingPolicy, the
    /// Service, its NodePort) and why the others do not, the backends the
    /// connect could get with the chance of each (from the frontend's slots),
    /// the client's session-affinity choice if one is held and still valid,
    /// or the failure the connect would get (its errno); beside it, the
    /// choices the client's unconnected UDP sockets hold for their datagrams.
    /// The client is this process unless --pid, --cgroup or --pod names
    /// another: its cgroup decides whether balctl translates its connects at
    /// all, its network namespace keys session affinity. Nothing is written
    /// and nothing connects.
    Explain(ExplainArgs),

    /// Print a shell completion script
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Where the client would connect: IP:PORT (IPv6 as [IP]:PORT)
    #[arg(value_name = "DEST", value_parser = parse_destination)]
    pub dest: SocketAddr,

    /// The client is this process: its cgroup and network namespace
    #[arg(long, value_name = "N", conflicts_with_all = ["cgroup", "pod"])]
    pub pid: Option<u32>,

    /// The client is this Pod: its cgroup (`pod<UID>`, the UID from the
    /// API server) and the network namespace of a process in it
    #[arg(long, value_name = "NS/NAME", value_parser = parse_pod, conflicts_with = "cgroup", requires = "kube")]
    pub pod: Option<(String, String)>,

    /// Ask the Kubernetes API server for --pod's UID
    #[arg(long, requires = "pod")]
    pub kube: bool,

    #[command(flatten)]
    pub api_server: ApiServerArgs,

    /// The client is a process in this cgroup v2 directory (the network
    /// namespace, which keys session affinity, is that of the first process
    /// found in it or below)
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// The protocol of the connect
    #[arg(long, value_enum, default_value_t = ExplainProtocol::Tcp)]
    pub proto: ExplainProtocol,
}

/// `explain --proto`: the protocols balctl translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExplainProtocol {
    Tcp,
    Udp,
}

impl ExplainProtocol {
    pub const fn protocol(self) -> Protocol {
        match self {
            Self::Tcp => Protocol::Tcp,
            Self::Udp => Protocol::Udp,
        }
    }
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// cgroup v2 directory to attach to [default: the cgroup2 root]
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Capacity of a map when it is created, as NAME=ENTRIES
    /// (services, backends, affinity, sockets, revnat, nodes, rate_limits, external, maglev, source_ranges,
    /// flows);
    /// repeat or separate with commas
    #[arg(long, value_name = "NAME=N", value_delimiter = ',', value_parser = parse_map_size)]
    pub map_size: Vec<(String, u32)>,

    /// Attach the tc programs, which translate traffic from outside the node
    /// (node ports, LoadBalancer and external IPs), to these network devices
    ///
    /// Each device gets a tcx ingress and egress link, first among its tc
    /// programs. `auto`: the devices that are up, not loopback, hold a
    /// global unicast address and hold a node address (synced Nodes) or
    /// carry a default route. `none`: detach them from every device.
    /// Without --devices, `load` keeps the devices already attached. With
    /// devices, the SNAT ports 61000-65535 are added to this network
    /// namespace's net.ipv4.ip_local_reserved_ports (`unload` takes them
    /// out). A device that does not exist is an error and changes nothing.
    #[arg(long, value_name = "IF[,IF...]|auto|none", value_delimiter = ',')]
    pub devices: Option<Vec<String>>,

    /// Load the eBPF programs from this object file instead of the built-in ones
    ///
    /// For trying another build of the datapath (ebpf/ of this balctl's
    /// version, built with other features) without another binary. The
    /// object must have every hook's program and balctl's map layouts; it is
    /// checked before anything is touched. A later `load` without it goes
    /// back to the built-in programs, in place as well.
    #[arg(long, value_name = "FILE")]
    pub object: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// TOML state file, Kubernetes YAML/JSON file, a directory of them, or - for standard input
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "PATH",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    pub filenames: Vec<PathBuf>,

    /// Read Services, EndpointSlices, Nodes, Pods and the policy kinds from
    /// the Kubernetes API server instead of files (one source, `kubernetes`);
    /// with --watch, keep following them
    #[arg(long)]
    pub kube: bool,

    #[command(flatten)]
    pub api_server: ApiServerArgs,

    /// Print the whole plan and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// This node's name, for internalTrafficPolicy: Local [default: the hostname]
    #[arg(long, value_name = "NAME", env = "BALCTL_NODE_NAME")]
    pub node_name: Option<String>,

    /// Which of the Nodes' addresses serve node ports, as kube-proxy's
    /// flag: `primary` (each Node's first InternalIP of each family, else
    /// its first ExternalIP of it) or CIDRs separated by commas (the
    /// addresses inside them; every address of a family without a CIDR).
    /// IPv4 loopback serves them unless the CIDRs of IPv4 leave out
    /// 127.0.0.0 or `primary` is given [default: every InternalIP and
    /// ExternalIP, and loopback]
    #[arg(long = "nodeport-addresses", value_name = "primary|CIDR,...", env = "BALCTL_NODEPORT_ADDRESSES")]
    pub nodeport_addresses: Option<NodePortAddresses>,

    /// Also reset the established TCP connections that were made through a
    /// frontend to a backend the change took away from it (connected UDP
    /// sockets are always destroyed; needs Linux 6.5)
    #[arg(
        long,
        env = "BALCTL_DESTROY_TCP_SOCKETS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub destroy_tcp_sockets: bool,

    /// The most bytes read from one input file, FIFO or standard input, as
    /// bytes or with a unit: 512M, 1G, 1GiB (K, M, G, T: powers of 1024; KB,
    /// MB, GB, TB: of 1000). A larger input is refused, and nothing changes.
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    pub max_input_size: InputLimit,

    /// Keep running and sync again whenever an input changes (not with -f -)
    #[arg(long, conflicts_with = "dry_run")]
    pub watch: bool,

    /// With --watch, serve the counters, the maps' fill and the agent's
    /// metrics to Prometheus on http://ADDR/metrics (e.g. 127.0.0.1:9464)
    #[arg(long, value_name = "ADDR", requires = "watch")]
    pub metrics_addr: Option<SocketAddr>,

    /// With --metrics-addr, also serve balctl_backend_hits_total: one series
    /// per backend of every frontend, hundreds of thousands on a big
    /// cluster's node
    #[arg(long, requires = "metrics_addr")]
    pub metrics_per_backend: bool,

    /// With --watch, serve /healthz, /livez and /readyz on http://ADDR (e.g.
    /// 127.0.0.1:10256), as kube-proxy's healthz: /healthz is 503 once a
    /// change has waited longer than --health-timeout (or, with --kube, the
    /// API server has not answered for that long), /readyz 200 once the
    /// first complete sync is applied; the same ADDR as --metrics-addr
    /// serves all four paths
    #[arg(long, value_name = "ADDR", requires = "watch")]
    pub health_addr: Option<SocketAddr>,

    /// With --watch: how long a change may wait unapplied (and, with --kube,
    /// the API server not answer) before /healthz says 503, and the longest
    /// a sync may run before /livez does (e.g. 60s, 2m); kube-proxy's is
    /// twice its sync period
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = humantime::parse_duration,
        default_value = "60s",
        requires = "watch"
    )]
    pub health_timeout: std::time::Duration,

    /// With --watch -f, hold a change that would remove more than a quarter
    /// of a source's frontends until the inputs have not changed for this
    /// long (e.g. 5s, 1m), so that a file still being written is never
    /// applied half written
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = humantime::parse_duration,
        default_value = "5s",
        requires = "watch",
        conflicts_with = "kube"
    )]
    pub settle: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct UnloadArgs {
    /// Do not ask for confirmation
    #[arg(short, long)]
    pub yes: bool,

    /// Also remove the state dir's files (the applied rules and ids), so
    /// that nothing of balctl is left on the machine; `load` then starts
    /// empty. For uninstalling (deploy/uninstall.yaml)
    #[arg(long)]
    pub purge: bool,

    /// After unloading, keep running until SIGTERM or SIGINT, then exit 0:
    /// the command of a DaemonSet's container, which must not exit
    /// (deploy/uninstall.yaml). Exits 1 at once if unloading fails
    #[arg(long)]
    pub stay: bool,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Add a rule that balances a frontend over backends
    ///
    /// Without --backend the frontend rejects: connect() and sendmsg() to it
    /// fail at once with "connection refused".
    Add(Box<PolicyAddArgs>),

    /// Change an existing rule; the options given replace the old values
    Update(PolicyUpdateArgs),

    /// List all rules
    List,

    /// Show one rule
    Get(PolicyNameArg),

    /// Delete a rule
    Delete(PolicyNameArg),
}

#[derive(Debug, Args)]
pub struct PolicyAddArgs {
    /// Rule name (lowercase letters, digits, '-' and '.')
    pub name: String,

    /// Frontend clients connect to: IP:PORT[/tcp|udp] (IPv6 as [IP]:PORT)
    #[arg(long, value_name = "IP:PORT[/PROTO]", value_parser = parse_frontend)]
    pub vip: Frontend,

    /// Backend address; repeat for more
    #[arg(long, value_name = "IP:PORT", value_parser = parse_backend)]
    pub backend: Vec<SocketAddr>,

    /// Each backend's weight (1-100), in the order of --backend: a backend
    /// of weight 2 takes twice the connections of one of weight 1; give
    /// one per backend, or none (all 1)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64))]
    pub weight: Vec<u64>,

    /// random (the default), or least-connections: a new connection goes
    /// to the backend with the fewest open ones
    #[arg(long, value_name = "ALGORITHM", value_parser = ["random", "least-connections"])]
    pub lb_algorithm: Option<String>,

    /// Keep each client network namespace on one backend for SECONDS of inactivity
    #[arg(long, value_name = "SECONDS", value_parser = parse_affinity)]
    pub affinity: Option<u32>,

    /// balancing: takes the frontend's traffic before a Service on the same
    /// address; redirect: before that too, and gives way to the next rule
    /// (balancing, service, or the address itself) while it has no backend
    #[arg(long, value_enum, default_value_t = PolicyKind::Balancing)]
    pub kind: PolicyKind,

    /// Redirect only: connections a second it takes; the rest of that second
    /// go to the next rule
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: Option<u32>,

    #[command(flatten)]
    pub health: HealthCheckArgs,
}

/// `policy add`'s active health check of the backends, run by `sync --watch`.
#[derive(Debug, Args)]
pub struct HealthCheckArgs {
    /// Check each backend's health (run by `sync --watch`): tcp (a connect),
    /// http (a GET answered with the expected status) or dns (a query); an
    /// unhealthy backend leaves the slots until it passes again
    #[arg(long, value_name = "TYPE", value_parser = ["tcp", "http", "dns"])]
    pub health_check: Option<String>,

    /// http: the path to GET
    #[arg(long, value_name = "PATH", requires = "health_check")]
    pub health_check_path: Option<String>,

    /// http: the status that means healthy
    #[arg(long, value_name = "STATUS", requires = "health_check")]
    pub health_check_status: Option<u16>,

    /// dns: the name to ask for (type A)
    #[arg(long, value_name = "NAME", requires = "health_check")]
    pub health_check_query: Option<String>,

    /// The port to probe [default: the backend's]
    #[arg(long, value_name = "PORT", requires = "health_check")]
    pub health_check_port: Option<u16>,

    /// How often each backend is probed [default: 5s]
    #[arg(long, value_name = "DURATION", requires = "health_check")]
    pub health_check_interval: Option<String>,

    /// How long a probe may take [default: 2s, at most the interval]
    #[arg(long, value_name = "DURATION", requires = "health_check")]
    pub health_check_timeout: Option<String>,

    /// Successes in a row that bring an unhealthy backend back [default: 2]
    #[arg(long, value_name = "N", requires = "health_check")]
    pub health_check_rise: Option<u32>,

    /// Failures in a row that take a healthy backend out [default: 3]
    #[arg(long, value_name = "N", requires = "health_check")]
    pub health_check_fall: Option<u32>,

    /// While every backend is unhealthy: keep them all (fail-open) or refuse
    /// connections [default: fail-open]
    #[arg(long, value_name = "CHOICE", value_parser = ["fail-open", "refuse"], requires = "health_check")]
    pub when_all_unhealthy: Option<String>,
}

/// How log lines are written on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The rule layer a policy adds: BalancingPolicy or LocalRedirectPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyKind {
    Balancing,
    Redirect,
}

#[derive(Debug, Args)]
pub struct PolicyUpdateArgs {
    /// Rule name
    pub name: String,

    /// New frontend: IP:PORT[/tcp|udp]
    #[arg(long, value_name = "IP:PORT[/PROTO]", value_parser = parse_frontend)]
    pub vip: Option<Frontend>,

    /// New backend list (replaces the old one, and its weights: all 1); repeat for more
    #[arg(long, value_name = "IP:PORT", value_parser = parse_backend, conflicts_with = "no_backends")]
    pub backend: Vec<SocketAddr>,

    /// Remove every backend: the frontend then rejects connections
    #[arg(long)]
    pub no_backends: bool,

    /// New affinity timeout in seconds
    #[arg(long, value_name = "SECONDS", value_parser = parse_affinity, conflicts_with = "no_affinity")]
    pub affinity: Option<u32>,

    /// Turn session affinity off
    #[arg(long)]
    pub no_affinity: bool,
}

#[derive(Debug, Args)]
pub struct PolicyNameArg {
    /// Rule name
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DumpKind {
    /// Frontends with their backend slots
    Services,
    /// Backends with the frontends that use them
    Backends,
    /// Sticky backend choices: session affinity and unconnected UDP sockets
    Affinity,
    /// Reverse translations: translated sockets, their backend and frontend
    Revnat,
    /// Node addresses NodePort frontends answer on, with their Nodes
    Nodes,
    /// Every map (type, capacity, entries) and the trace slots
    Config,
    /// Per-frontend counters: resolutions, failures by reason, backend hits
    Stats,
    /// North-south flows: client, frontend called, backend, SNAT source, state
    Flows,
    /// Backends with an active health check: the check, healthy or not, in the slots or not
    Health,
    /// Every kind above in one document
    All,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// What to show
    #[arg(value_enum, default_value_t = DumpKind::Services)]
    pub kind: DumpKind,

    /// Only entries of frontends at this address (and port); nodes: that
    /// node address; config is not narrowed
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_vip_filter)]
    pub vip: Option<VipFilter>,

    /// Only entries of frontends of the object with this name, as `dump`
    /// names them: NAME (any kind and namespace), NAMESPACE/NAME or
    /// KIND/[NAMESPACE/]NAME (e.g. web, default/web, service/default/web);
    /// nodes: the Nodes' names; config is not narrowed
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Only entries of frontends of Kubernetes objects in this namespace;
    /// nodes (cluster-wide, as for kubectl) and config are not narrowed
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Only resolutions for this destination address (and port)
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_vip_filter)]
    pub vip: Option<VipFilter>,

    /// Only resolutions made by this process (packets from outside the
    /// node have none: it leaves them out)
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only north-south flows opened by packets from clients in this
    /// prefix (sockets' resolutions have no client: it leaves them out)
    #[arg(long, value_name = "IP[/LEN]", value_parser = parse_client_filter)]
    pub client: Option<Prefix>,

    /// Only resolutions that failed (no backend, no local backend...)
    #[arg(long)]
    pub failed: bool,

    /// Stop after this many events
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Stop after this long (e.g. 30s, 5m)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,

    /// Name the pod of each container from the Kubernetes API server
    #[arg(long)]
    pub kube: bool,

    #[command(flatten)]
    pub api_server: ApiServerArgs,
}

/// Where the Kubernetes API server is, for `--kube`: a kubeconfig (and a
/// context in it), or, with neither, the pod's service account in a
/// cluster, else the default kubeconfig.
#[derive(Debug, Args)]
pub struct ApiServerArgs {
    /// kubeconfig for --kube [default: the pod's service account in a
    /// cluster, else $KUBECONFIG or ~/.kube/config]; sync: repeat for
    /// other clusters, whose global Services join this one's (the first
    /// is this node's cluster; each other is named by its --context, else
    /// by its file name without extension)
    #[arg(long, value_name = "PATH", requires = "kube")]
    pub kubeconfig: Vec<PathBuf>,

    /// Context of the kubeconfig to use with --kube [default: its current
    /// context]; sync: repeat for other clusters (one per --kubeconfig, or
    /// several of one kubeconfig)
    #[arg(long, value_name = "NAME", requires = "kube")]
    pub context: Vec<String>,
}

/// One cluster `sync --kube` reads: how to reach it, and its name when it
/// is not this node's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConnection {
    /// None for this node's cluster (the first).
    pub name: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

impl ApiServerArgs {
    /// The clusters given: one kubeconfig with a context per cluster, or a
    /// kubeconfig per cluster with a context each or none; the first is
    /// this node's.
    pub fn clusters(&self) -> Result<Vec<ClusterConnection>, String> {
        let (kubeconfigs, contexts) = (&self.kubeconfig, &self.context);
        let clusters: Vec<ClusterConnection> = if kubeconfigs.len() > 1 {
            if !contexts.is_empty() && contexts.len() != kubeconfigs.len() {
                return Err(format!(
                    "{} --kubeconfig and {} --context: give one --context per --kubeconfig, or none",
                    kubeconfigs.len(),
                    contexts.len()
                ));
            }
            (kubeconfigs.iter().enumerate())
                .map(|(i, path)| {
                    let context = contexts.get(i).cloned();
                    let stem =
                        || path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                    let name = (i > 0).then(|| context.clone().unwrap_or_else(stem));
                    ClusterConnection { name, kubeconfig: Some(path.clone()), context }
                })
                .collect()
        } else if contexts.len() > 1 {
            (contexts.iter().enumerate())
                .map(|(i, context)| ClusterConnection {
                    name: (i > 0).then(|| context.clone()),
                    kubeconfig: kubeconfigs.first().cloned(),
                    context: Some(context.clone()),
                })
                .collect()
        } else {
            vec![self.local()]
        };
        let mut names: Vec<&str> = clusters.iter().filter_map(|c| c.name.as_deref()).collect();
        for name in &names {
            crate::model::check_name(name)
                .map_err(|e| format!("cluster name (its --context, else its kubeconfig's file name): {e}"))?;
        }
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(format!("two clusters are named {}: name them apart with --context", twice[0]));
        }
        Ok(clusters)
    }

    /// This node's cluster (the first given).
    pub fn local(&self) -> ClusterConnection {
        ClusterConnection {
            name: None,
            kubeconfig: self.kubeconfig.first().cloned(),
            context: self.context.first().cloned(),
        }
    }
}

/// `--vip IP[:PORT]` for dump and trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipFilter {
    pub address: std::net::IpAddr,
    pub port: Option<u16>,
}

impl PolicyKind {
    pub const fn scope(self) -> Scope {
        match self {
            Self::Balancing => Scope::Balancing,
            Self::Redirect => Scope::Redirect,
        }
    }
}

impl VipFilter {
    pub fn matches(&self, frontend: &Frontend) -> bool {
        self.matches_address(SocketAddr::new(frontend.address, frontend.port))
    }

    /// For an address recorded without its protocol (revnat, trace events).
    pub fn matches_address(&self, address: SocketAddr) -> bool {
        self.address == address.ip() && self.port.is_none_or(|port| port == address.port())
    }
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

fn parse_frontend(s: &str) -> Result<Frontend, String> {
    s.parse()
}

/// `NAMESPACE/NAME`.
fn parse_pod(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((namespace.to_owned(), name.to_owned()))
        }
        _ => Err(format!("`{s}` is not NAMESPACE/NAME")),
    }
}

fn parse_destination(s: &str) -> Result<SocketAddr, String> {
    crate::model::parse_socket_addr(s)
}

fn parse_vip_filter(s: &str) -> Result<VipFilter, String> {
    if let Ok(address) = s.trim_start_matches('[').trim_end_matches(']').parse() {
        return Ok(VipFilter { address, port: None });
    }
    let addr = crate::model::parse_socket_addr(s)?;
    Ok(VipFilter { address: addr.ip(), port: Some(addr.port()) })
}

/// A CIDR, or one address (its full length).
fn parse_client_filter(s: &str) -> Result<Prefix, String> {
    if let Ok(address) = s.parse::<std::net::IpAddr>() {
        let len = if address.to_canonical().is_ipv4() { 32 } else { 128 };
        return Prefix::new(address, len).ok_or_else(|| format!("`{s}` is not an address"));
    }
    s.parse()
}

fn parse_map_size(s: &str) -> Result<(String, u32), String> {
    let (name, size) = s.split_once('=').ok_or_else(|| format!("`{s}` is not NAME=ENTRIES"))?;
    if !SIZE_NAMES.contains(&name) {
        return Err(format!("unknown map `{name}` (expected one of: {})", SIZE_NAMES.join(", ")));
    }
    let size: u32 = size.parse().map_err(|_| format!("`{size}` is not a number of entries"))?;
    if size == 0 {
        return Err("a map needs at least one entry".into());
    }
    Ok((name.to_owned(), size))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn args(kubeconfigs: &[&str], contexts: &[&str]) -> ApiServerArgs {
        ApiServerArgs {
            kubeconfig: kubeconfigs.iter().map(PathBuf::from).collect(),
            context: contexts.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    fn names(args: &ApiServerArgs) -> Result<Vec<Option<String>>, String> {
        Ok(args.clusters()?.into_iter().map(|c| c.name).collect())
    }

    /// The first cluster is this node's; the others are named by their
    /// context, else by their kubeconfig's file name.
    #[test]
    fn clusters_are_named_by_context_else_by_file() {
        let named = |names: &[&str]| -> Vec<Option<String>> {
            std::iter::once(None).chain(names.iter().map(|n| Some((*n).to_owned()))).collect()
        };
        assert_eq!(names(&args(&[], &[])), Ok(named(&[])));
        assert_eq!(names(&args(&["/k/here.yaml"], &["a"])), Ok(named(&[])));
        assert_eq!(names(&args(&["/k/all.yaml"], &["a", "b", "c"])), Ok(named(&["b", "c"])));
        assert_eq!(names(&args(&["/k/here.yaml", "/k/east.kubeconfig"], &[])), Ok(named(&["east"])));
        assert_eq!(names(&args(&["/k/here.yaml", "/k/east.yaml"], &["x", "west"])), Ok(named(&["west"])));
        let all = args(&["/k/all.yaml"], &["a", "b"]).clusters().unwrap();
        assert_eq!(
            (all[1].kubeconfig.as_deref(), all[1].context.as_deref()),
            (Some(std::path::Path::new("/k/all.yaml")), Some("b"))
        );
        assert!(names(&args(&["/k/a.yaml", "/k/b.yaml"], &["x"])).unwrap_err().contains("one --context per"));
        let twice = names(&args(&["/k/here.yaml", "/a/east.yaml", "/b/east.yaml"], &[]));
        assert!(twice.unwrap_err().contains("two clusters"));
        assert!(names(&args(&["/k/here.yaml", "/k/East.yaml"], &[])).unwrap_err().contains("cluster name"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn map_sizes_are_checked() {
        assert_eq!(parse_map_size("services=10"), Ok(("services".into(), 10)));
        assert!(parse_map_size("nope=10").unwrap_err().contains("unknown map"));
        assert!(parse_map_size("services=0").is_err());
    }

    #[test]
    fn vip_filter_takes_address_or_address_and_port() {
        let frontend: Frontend = "198.18.0.1:80".parse().unwrap();
        assert!(parse_vip_filter("198.18.0.1").unwrap().matches(&frontend));
        assert!(parse_vip_filter("198.18.0.1:80").unwrap().matches(&frontend));
        assert!(!parse_vip_filter("198.18.0.1:81").unwrap().matches(&frontend));
        assert!(parse_vip_filter("[2001:db8::1]").is_ok());
    }
}
