//! A private world per test, on the real kernel:
//!
//! - a client network namespace (192.0.2.1, 2001:db8::1) joined by a veth
//!   pair to a server namespace (192.0.2.2-11, 2001:db8::2-11). Neither has a
//!   route anywhere else, so an untranslated connect to a VIP (198.18.0.0/15)
//!   fails with "network unreachable" inside the namespace;
//! - a child cgroup under the cgroup2 mount, which balctl attaches to and
//!   client processes join (never the root cgroup);
//! - a private bpffs mount for balctl's pins and a private state dir;
//! - on request, more client namespaces, each with its own veth pair into
//!   the server namespace (`add_client_ns`), and namespaces behind one of
//!   those, as pods behind their node (`add_pod_ns`).
//!
//! Everything is removed on drop, also when the test panics; processes are
//! killed by PID. `sweep_stale` removes what a killed test run left behind.

pub mod apiserver;
pub mod nodes;
pub mod peer;
pub mod watcher;

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;

/// The balctl binary the tests run: this build's, or the one
/// `BALCTL_UNDER_TEST` names. scripts/test names the image's static amd64
/// binary (built just before by scripts/image), so the suite runs what is
/// shipped, and an optimized build: the debug one makes the suite twice as
/// long (most of its CPU time is balctl's own).
pub fn balctl() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| match std::env::var("BALCTL_UNDER_TEST") {
        Ok(path) => {
            let runs = Command::new(&path).arg("--version").output().is_ok_and(|out| out.status.success());
            assert!(runs, "BALCTL_UNDER_TEST={path}: not a balctl binary that runs here");
            path
        }
        Err(_) => env!("CARGO_BIN_EXE_balctl").to_owned(),
    })
}
const PREFIX: &str = "bct-";

/// Kernel tests need root. Outside CI they are reported as ignored without
/// it; in CI (CI=true) they run and fail, never skip silently.
/// The start of a bench's `main`: runs the peer if this process was
/// started as one, else requires root (for `needs`, e.g. "namespaces,
/// cgroups, bpf") and clears what an aborted run left behind.
#[allow(dead_code, reason = "the benches call it; the CLI tests start in their own main")]
pub fn start_bench(name: &str, needs: &str) {
    peer::run_if_requested();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the {name} bench needs root ({needs}); run it with sudo");
        std::process::exit(1);
    }
    sweep_stale();
}

pub fn kernel_tests_runnable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root || std::env::var("CI").is_ok_and(|v| v == "true")
}

pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read mounts");
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("a cgroup2 mount")
}

pub struct Sandbox {
    /// `<pid>-<n>`: names the sandbox's namespaces, cgroup and veths.
    id: String,
    pub client_ns: String,
    pub server_ns: String,
    /// Namespaces added by `add_client_ns` and `add_pod_ns`.
    extra_ns: Mutex<Vec<String>>,
    pub cgroup: PathBuf,
    dir: PathBuf,
    bpffs: PathBuf,
    pub pins: PathBuf,
    pub state: PathBuf,
    children: Mutex<Vec<Child>>,
}

/// Sets the sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`) in the
/// network namespace `netns`: written through /proc/sys from inside it
/// (`nsenter --net`), where the net.* keys are the namespace's own.
pub fn sysctl(netns: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let netns = format!("--net=/run/netns/{netns}");
    run("nsenter", &[&netns, "sh", "-c", &format!("echo {value} > {path}")]);
}

/// A veth pair between two namespaces, each end named and addressed
/// (IPv6 without duplicate address detection, usable at once). Made
/// under a unique temporary name, as the host has its own eth0.
pub fn veth(one: (&str, &str, &[&str]), other: (&str, &str, &[&str])) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = std::process::id();
    let (tmp_one, tmp_other) = (format!("nsx{id}-{n}"), format!("nsy{id}-{n}"));
    run("ip", &["link", "add", &tmp_one, "type", "veth", "peer", "name", &tmp_other]);
    for ((ns, dev, addresses), tmp) in [(one, &tmp_one), (other, &tmp_other)] {
        run("ip", &["link", "set", tmp, "netns", ns]);
        run("ip", &["-n", ns, "link", "set", tmp, "name", dev]);
        for address in addresses {
            let mut args = vec!["-n", ns, "addr", "add", address, "dev", dev];
            if address.contains(':') {
                args.push("nodad");
            }
            run("ip", &args);
        }
        run("ip", &["-n", ns, "link", "set", dev, "up"]);
    }
}

/// Runs `program`, requires success, returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

impl Sandbox {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(format!("{PREFIX}{id}"));
        let bpffs = dir.join("bpf");
        let sandbox = Self {
            client_ns: format!("{PREFIX}{id}-c"),
            server_ns: format!("{PREFIX}{id}-s"),
            extra_ns: Mutex::new(Vec::new()),
            cgroup: cgroup2_root().join(format!("{PREFIX}{id}")),
            pins: bpffs.join("balctl"),
            state: dir.join("state"),
            bpffs,
            dir,
            children: Mutex::new(Vec::new()),
            id,
        };
        sandbox.build();
        sandbox
    }

    fn build(&self) {
        let id = &self.id;
        fs::create_dir_all(&self.bpffs).expect("create sandbox dir");
        run("mount", &["-t", "bpf", "bpf", self.bpffs.to_str().unwrap()]);
        fs::create_dir(&self.cgroup).expect("create test cgroup");
        let (client, server) = (self.client_ns.as_str(), self.server_ns.as_str());
        run("ip", &["netns", "add", client]);
        run("ip", &["netns", "add", server]);
        let (veth_c, veth_s) = (format!("v{id}c"), format!("v{id}s"));
        let server_addresses: Vec<String> = (2..=11)
            .flat_map(|host| [format!("192.0.2.{host}/24"), format!("2001:db8::{host}/64")])
            .collect();
        let server_addresses: Vec<&str> = server_addresses.iter().map(String::as_str).collect();
        veth((client, &veth_c, &["192.0.2.1/24", "2001:db8::1/64"]), (server, &veth_s, &server_addresses));
        for ns in [client, server] {
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
    }

    /// Adds another client namespace, `<sandbox>-<suffix>`, joined to the
    /// server namespace by its own veth pair: `address`/24 on the client
    /// side, and in the server namespace a host route back to it (more
    /// specific than the first client's /24). Like the first client it has
    /// no other route (bench/compare makes it a node and puts a pod behind
    /// it). Removed with the sandbox; returns its name.
    #[allow(dead_code, reason = "bench/compare's clients; the CLI tests need one client namespace")]
    pub fn add_client_ns(&self, suffix: &str, address: &str) -> String {
        let (ns, veth_client, veth_server) = self.add_extra_ns(suffix);
        veth((&ns, &veth_client, &[&format!("{address}/24")]), (&self.server_ns, &veth_server, &[]));
        run("ip", &["-n", &self.server_ns, "route", "add", &format!("{address}/32"), "dev", &veth_server]);
        ns
    }

    /// Adds a namespace behind `node` (another of the sandbox's namespaces,
    /// e.g. one from `add_client_ns`), `<sandbox>-<suffix>`, as a pod behind
    /// its node: a veth pair between the two, `address` (with its prefix
    /// length) on the new side, `gateway` (in the same subnet) on the node's,
    /// and the new namespace's default route via the gateway. The node
    /// decides where that traffic goes (it forwards only if told to, and
    /// routes only what its own routes cover). Removed with the sandbox;
    /// returns its name.
    #[allow(dead_code, reason = "bench/compare's pods; the CLI tests need one client namespace")]
    pub fn add_pod_ns(&self, node: &str, suffix: &str, address: &str, gateway: &str) -> String {
        let (ns, veth_pod, veth_node) = self.add_extra_ns(suffix);
        veth((&ns, &veth_pod, &[address]), (node, &veth_node, &[gateway]));
        let via = gateway.split('/').next().expect("an address");
        run("ip", &["-n", &ns, "route", "add", "default", "via", via]);
        ns
    }

    /// A new namespace `<sandbox>-<suffix>` with its loopback up, removed
    /// with the sandbox: its name, and names for the two ends of a veth
    /// pair to join it to another, numbered by the sandbox's count of
    /// namespaces.
    #[allow(dead_code, reason = "bench/compare's namespaces; the CLI tests need one client namespace")]
    fn add_extra_ns(&self, suffix: &str) -> (String, String, String) {
        let mut extra = self.extra_ns.lock().unwrap();
        let ns = format!("{PREFIX}{}-{suffix}", self.id);
        run("ip", &["netns", "add", &ns]);
        extra.push(ns.clone());
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        let (veth_new, veth_peer) =
            (format!("v{}{}c", self.id, extra.len()), format!("v{}{}s", self.id, extra.len()));
        (ns, veth_new, veth_peer)
    }

    /// Adds a cgroup beside the sandbox's own, `<sandbox>-<suffix>`: as deep
    /// in the hierarchy, but with no program attached. Removed with the
    /// sandbox once its processes are gone; returns its path.
    #[allow(
        dead_code,
        reason = "bench/compare's clients and status's defunct links; bench/connect and bench/sync need one cgroup"
    )]
    pub fn add_cgroup(&self, suffix: &str) -> PathBuf {
        let cgroup = cgroup2_root().join(format!("{PREFIX}{}-{suffix}", self.id));
        fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("create cgroup {}: {e}", cgroup.display()));
        cgroup
    }

    /// A path in the sandbox's scratch directory (removed with it).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs balctl against this sandbox's pins and state, stdin closed.
    pub fn balctl(&self, args: &[&str]) -> Output {
        self.balctl_command(args).output().expect("run balctl")
    }

    /// balctl with `args`, against this sandbox's pins and state, stdin
    /// closed: for running it in the background or with other output.
    pub fn balctl_command(&self, args: &[&str]) -> Command {
        self.command_of(balctl(), args)
    }

    /// `balctl_command` of another balctl binary, e.g. an older build.
    #[allow(dead_code, reason = "bench/sync.rs compares builds; the CLI tests run one")]
    pub fn command_of(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("BALCTL_BPFFS", &self.pins)
            .env("BALCTL_STATE_DIR", &self.state)
            .stdin(Stdio::null());
        command
    }

    /// Runs balctl, requires success and returns its stdout.
    pub fn balctl_ok(&self, args: &[&str]) -> String {
        succeeded(args, self.balctl(args))
    }

    /// Runs balctl in the network namespace `netns` (`nsenter --net`:
    /// unlike `ip netns exec` it leaves /sys, and so the cgroup2 mount, as
    /// it is), against this sandbox's pins and state.
    #[allow(dead_code, reason = "the benches use part of the sandbox")]
    pub fn balctl_in(&self, netns: &str, args: &[&str]) -> Output {
        let netns = format!("--net=/run/netns/{netns}");
        let mut argv = vec![netns.as_str(), balctl()];
        argv.extend(args);
        self.command_of("nsenter", &argv).output().expect("run balctl in a network namespace")
    }

    /// `balctl_in`, required to succeed: its stdout.
    #[allow(dead_code, reason = "the benches use part of the sandbox")]
    pub fn balctl_in_ok(&self, netns: &str, args: &[&str]) -> String {
        succeeded(args, self.balctl_in(netns, args))
    }

    pub fn balctl_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.balctl_ok(&args)).expect("balctl printed JSON")
    }

    /// `status -o json` with its exit code, which says what it found: 0
    /// loaded and in sync, 3 not loaded, 4 drifted.
    pub fn status(&self) -> (i32, Value) {
        let output = self.balctl(&["status", "-o", "json"]);
        let code = output.status.code().expect("an exit code");
        assert!(
            [0, 3, 4].contains(&code),
            "status failed ({code}): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        (code, serde_json::from_slice(&output.stdout).expect("status printed JSON"))
    }

    pub fn load(&self) -> String {
        self.load_with(&[])
    }

    /// `load` with more arguments, e.g. `--map-size`.
    pub fn load_with(&self, more: &[&str]) -> String {
        let mut args = vec!["load", "--cgroup", self.cgroup.to_str().unwrap()];
        args.extend(more);
        self.balctl_ok(&args)
    }

    /// The test binary as a peer (`peer.rs`) in `netns`, in the test cgroup
    /// if `join_cgroup`; the caller adds the peer command.
    pub fn peer(&self, join_cgroup: bool, netns: &str) -> Command {
        let mut command = Command::new(std::env::current_exe().expect("test binary path"));
        command.arg(peer::PEER_ARG);
        if join_cgroup {
            command.arg("--cgroup").arg(&self.cgroup);
        }
        command.args(["--netns", netns]);
        command
    }

    /// Starts a server in the server namespace that answers `id` on every
    /// listed TCP and UDP address, and waits until it listens.
    pub fn serve(&self, id: &str, tcp: &[&str], udp: &[&str]) {
        self.serve_in(&self.server_ns, id, tcp, udp);
    }

    /// `serve` in another of the sandbox's namespaces, e.g. on the client
    /// namespace's loopback.
    pub fn serve_in(&self, netns: &str, id: &str, tcp: &[&str], udp: &[&str]) {
        self.serve_with(netns, id, &[("--tcp", tcp), ("--udp", udp)]);
    }

    /// `serve` whose TCP connections stay open (`tcp`), answering each
    /// read, until the client closes; and UDP as `serve`.
    #[allow(dead_code, reason = "the benches use part of the sandbox")]
    pub fn serve_lasting(&self, id: &str, tcp: &[&str], udp: &[&str]) {
        self.serve_with(&self.server_ns, id, &[("--tcp-lasting", tcp), ("--udp", udp)]);
    }

    /// `serve`, returning the server's PID, for `stop`.
    pub fn serve_stoppable(&self, id: &str, tcp: &[&str], udp: &[&str]) -> u32 {
        self.serve_with(&self.server_ns, id, &[("--tcp", tcp), ("--udp", udp)])
    }

    /// A server in `netns` on each address of `addresses` (by its option);
    /// its PID.
    fn serve_with(&self, netns: &str, id: &str, addresses: &[(&str, &[&str])]) -> u32 {
        let mut command = self.peer(false, netns);
        command.args(["serve", "--id", id]);
        for (option, addrs) in addresses {
            for addr in *addrs {
                command.args([option, addr]);
            }
        }
        let mut child = command.stdout(Stdio::piped()).spawn().expect("spawn server");
        let stdout = child.stdout.take().expect("server stdout");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = ready_tx.send(line);
        });
        let line = ready_rx.recv_timeout(Duration::from_secs(10)).expect("server did not start");
        assert_eq!(line.trim(), "ready", "server {id} failed to start");
        pid
    }

    /// Starts dnsmasq in the server namespace on `host`:53 (UDP and TCP),
    /// answering `address` (dnsmasq's `/domain/ip`) and nothing else.
    /// Returns its PID, for `stop`.
    pub fn spawn_dnsmasq(&self, host: &str, address: &str) -> u32 {
        let pid_file = self.scratch(&format!("dnsmasq-{host}.pid"));
        self.spawn_server_program(&[
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={host}"),
            "--port=53",
            "--user=root",
            &format!("--pid-file={}", pid_file.display()),
            &format!("--address={address}"),
        ])
    }

    /// Starts any program in the server namespace, killed when the sandbox
    /// drops or by `stop`. Returns its PID.
    pub fn spawn_server_program(&self, argv: &[&str]) -> u32 {
        let child = self
            .peer(false, &self.server_ns)
            .arg("exec")
            .args(argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server program");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Kills a program this sandbox started, by its PID, and reaps it.
    pub fn stop(&self, pid: u32) {
        let mut children = self.children.lock().unwrap();
        let index = children.iter().position(|c| c.id() == pid).expect("a child of this sandbox");
        let mut child = children.remove(index);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs a peer client in the test cgroup and client namespace and
    /// returns its JSON report.
    pub fn client(&self, args: &[&str]) -> Value {
        let output = self.peer(true, &self.client_ns).args(args).output().expect("run client");
        parse_report(&output)
    }

    /// Starts a peer client in the background; `finish` collects its report.
    pub fn spawn_client(&self, args: &[&str]) -> Child {
        self.peer(true, &self.client_ns)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client")
    }

    /// Runs a peer client with `--hold` in the test cgroup and client
    /// namespace: its report, and the client, which keeps its sockets open
    /// until it drops.
    pub fn hold(&self, args: &[&str]) -> (HeldClient, Value) {
        let mut child = self
            .peer(true, &self.client_ns)
            .arg("--hold")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let stdout = child.stdout.take().expect("client stdout");
        let held = HeldClient { child };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the client's report");
        let report =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer printed no JSON ({e}): {line}"));
        (held, report)
    }

    /// The ids of the backends that answered `count` TCP connections to
    /// `to` from the client; every connection must succeed.
    pub fn reached(&self, to: &str, count: u32) -> Vec<String> {
        let report = self.client(&["connect", "--to", to, "--count", &count.to_string()]);
        assert_eq!(report["failed"], 0, "connect to {to}: {report}");
        report["backends"].as_object().expect("backends").keys().cloned().collect()
    }

    /// What the layers map says, read with bpftool (bits below).
    pub fn layers(&self) -> u32 {
        let pin = self.pins.join("maps/layers");
        let output = Command::new("bpftool")
            .args(["-j", "map", "lookup", "pinned", pin.to_str().unwrap(), "key", "0", "0", "0", "0"])
            .output()
            .expect("run bpftool");
        assert!(output.status.success(), "bpftool: {}", String::from_utf8_lossy(&output.stderr));
        let entry: Value = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
        let bytes: Vec<u8> = entry["value"]
            .as_array()
            .expect("value bytes")
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect();
        u32::from_ne_bytes(bytes.try_into().expect("4 bytes"))
    }

    /// Sets the layers map behind balctl's back.
    pub fn set_layers(&self, layers: u32) {
        let pin = self.pins.join("maps/layers");
        let value: Vec<String> = layers.to_ne_bytes().iter().map(u8::to_string).collect();
        let mut args =
            vec!["map", "update", "pinned", pin.to_str().unwrap(), "key", "0", "0", "0", "0", "value"];
        args.extend(value.iter().map(String::as_str));
        let status = Command::new("bpftool").args(&args).status().expect("run bpftool");
        assert!(status.success());
    }

    /// Freezes the pinned map `name` (`bpftool map freeze`): from then on
    /// the kernel refuses every write to it from user space, for good.
    pub fn freeze_map(&self, name: &str) {
        let pin = self.pins.join("maps").join(name);
        let status = Command::new("bpftool")
            .args(["map", "freeze", "pinned", pin.to_str().unwrap()])
            .status()
            .expect("run bpftool");
        assert!(status.success(), "bpftool map freeze {name}");
    }

    /// A `session` client (peer.rs) in the test cgroup and client
    /// namespace, driven line by line.
    #[allow(dead_code, reason = "the benches use part of the sandbox")]
    pub fn session(&self) -> Session {
        let mut child = self
            .peer(true, &self.client_ns)
            .arg("session")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a session client");
        let stdout = BufReader::new(child.stdout.take().expect("session stdout"));
        Session { child, stdout }
    }

    /// Runs any program as a client (in the test cgroup and client namespace).
    pub fn client_program(&self, argv: &[&str]) -> Output {
        self.peer(true, &self.client_ns).arg("exec").args(argv).output().expect("run client program")
    }
}

/// A client started by `Sandbox::hold`: closing its stdin, when this
/// drops, makes it close its sockets and exit.
pub struct HeldClient {
    child: Child,
}

impl Drop for HeldClient {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A client whose sockets live until it drops (`Sandbox::session`).
pub struct Session {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

#[allow(dead_code, reason = "the benches use part of the sandbox")]
impl Session {
    /// Sends one command (peer.rs `session`), returns its JSON answer.
    pub fn run(&mut self, command: &str) -> Value {
        let stdin = self.child.stdin.as_mut().expect("session stdin");
        writeln!(stdin, "{command}").expect("write a session command");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read a session answer");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("session printed no JSON ({e}): {line}"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Bits of the layers map (`balctl_common::layer_bit`, `LAYERS_KNOWN`).
pub const SERVICE_LAYER: u32 = 1;
pub const BALANCING_LAYER: u32 = 2;
pub const REDIRECT_LAYER: u32 = 4;
pub const LAYERS_KNOWN: u32 = 1 << 31;

pub fn finish(child: Child) -> Value {
    parse_report(&child.wait_with_output().expect("wait for client"))
}

fn parse_report(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "peer failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("peer printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for mut child in self.children.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.pins.exists() {
            let _ = self.balctl(&["unload", "--yes"]);
        }
        let extra = self.extra_ns.lock().map(|e| e.clone()).unwrap_or_default();
        let namespaces: Vec<&str> =
            [&self.client_ns, &self.server_ns].into_iter().chain(&extra).map(String::as_str).collect();
        remove_sandbox(&self.dir, &self.cgroup, &namespaces);
    }
}

fn remove_sandbox(dir: &Path, cgroup: &Path, namespaces: &[&str]) {
    let bpffs = dir.join("bpf");
    // SAFETY: umount2 with a NUL-terminated path; failure (not mounted) is fine.
    if let Ok(path) = std::ffi::CString::new(bpffs.as_os_str().as_encoded_bytes()) {
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
    // The sandbox's cgroup and those added beside it (`add_cgroup`).
    let mut cgroups = vec![cgroup.to_path_buf()];
    if let (Some(parent), Some(name)) = (cgroup.parent(), cgroup.file_name()) {
        let beside = format!("{}-", name.to_string_lossy());
        let added = fs::read_dir(parent).into_iter().flatten().flatten().map(|entry| entry.path());
        cgroups.extend(added.filter(|path| {
            path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&beside)) && path.is_dir()
        }));
    }
    for cgroup in &cgroups {
        // Processes leave a cgroup asynchronously after they are reaped.
        for _ in 0..100 {
            if !cgroup.exists() || fs::remove_dir(cgroup).is_ok() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    for ns in namespaces {
        let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
    }
    let _ = fs::remove_dir_all(dir);
}

/// Removes namespaces, cgroups and mounts of test runs whose process is
/// gone, whichever of them is left.
pub fn sweep_stale() {
    let names_in = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let netns = names_in(Path::new("/run/netns"));
    // A sandbox is named bct-<pid>-<n>; its namespaces add -c and -s.
    let sandbox_of = |name: &str| -> Option<(String, String)> {
        let mut parts = name.strip_prefix(PREFIX)?.split('-');
        let (pid, n) = (parts.next()?, parts.next()?);
        Some((format!("{PREFIX}{pid}-{n}"), pid.to_owned()))
    };
    let mut stale = std::collections::BTreeSet::new();
    let candidates = netns
        .iter()
        .chain(&names_in(&std::env::temp_dir()))
        .chain(&names_in(&cgroup2_root()))
        .filter_map(|name| sandbox_of(name))
        .collect::<Vec<_>>();
    for (sandbox, pid) in candidates {
        if !Path::new("/proc").join(&pid).exists() {
            stale.insert(sandbox);
        }
    }
    for sandbox in stale {
        let namespaces: Vec<&str> =
            netns.iter().filter(|ns| ns.starts_with(&format!("{sandbox}-"))).map(String::as_str).collect();
        remove_sandbox(&std::env::temp_dir().join(&sandbox), &cgroup2_root().join(&sandbox), &namespaces);
    }
}

/// The stdout of balctl run with `args`, which must have succeeded.
fn succeeded(args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "balctl {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}
