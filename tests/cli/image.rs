//! Issue 17, Builds 1, 2 and 5: the OCI image scripts/image builds, run with
//! podman the way deploy/daemonset.yaml runs it, and deploy/uninstall.yaml's
//! command through it.
//!
//! Each container's command, args, env, mounts, security context and memory
//! limit come from the manifest. Only what belongs to the host is replaced:
//! the hostPaths of bpffs, the cgroup2 root and the state dir by the
//! sandbox's private bpffs, child cgroup and state dir; the host's network
//! (`hostNetwork: true`) by a network namespace of the test standing for
//! the node's (`NodeNetwork`), never `--network host`: there the init
//! container's `--devices auto` would attach tc programs to the machine's
//! own devices; `spec.nodeName`; and the pod's service account by a
//! kubeconfig for the tests' API server (mounted, named by KUBECONFIG),
//! which listens on the node namespace's loopback, as do the agent's health
//! and metrics ports (the manifest's, in a namespace of their own).
//! Podman keeps its images and containers in the sandbox (a private
//! storage), and every container is removed by name when the test ends,
//! also when it fails.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Container, PodSpec},
};
use serde_json::Value;

use crate::{
    datapath::bpftool_cgroup_show,
    deploy::{IMAGE, documents, probe_port, typed},
    devices::{SNAT_PORTS, in_netns, reserved_ports, tcx_programs_in},
    kube_sync::{slice, web_in_a_cluster_in},
    stats::http_get,
    support::{Sandbox, finish, run},
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VIP: &str = "198.18.0.20:80";
/// Where the test's kubeconfig is mounted in the agent's container.
const KUBECONFIG: &str = "/run/balctl-test/kubeconfig";

/// The OCI archive of `arch`, built by scripts/image (scripts/test builds
/// both before the tests); built here when missing.
fn archive(arch: &str) -> PathBuf {
    static BUILDING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let path = Path::new(ROOT).join(format!("target/oci/balctl-{VERSION}-linux-{arch}.oci.tar"));
    if !path.exists() {
        let status =
            Command::new(Path::new(ROOT).join("scripts/image")).arg(arch).status().expect("scripts/image");
        assert!(status.success(), "scripts/image {arch} failed");
    }
    path
}

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Build 1 and Must show 1: each platform's archive holds one image, named
/// as deploy/ names it for podman and for containerd/docker (also in the
/// `docker save` manifest, read back by skopeo as docker would), for its
/// platform, whose one layer holds a static balctl of Cargo.toml's version:
/// amd64 runs here, arm64 under qemu-user.
pub fn both_platforms_hold_a_static_balctl_of_this_version() {
    let sandbox = Sandbox::new();
    for (arch, machine, runner) in
        [("amd64", "Advanced Micro Devices X86-64", None), ("arm64", "AArch64", Some("qemu-aarch64-static"))]
    {
        let layout = sandbox.scratch(arch);
        fs::create_dir(&layout).unwrap();
        run("tar", &["-xf", archive(arch).to_str().unwrap(), "-C", layout.to_str().unwrap()]);
        let blob = |descriptor: &Value| {
            let digest = descriptor["digest"].as_str().unwrap().replace(':', "/");
            layout.join("blobs").join(digest)
        };
        let index = json_file(&layout.join("index.json"));
        let [descriptor] = index["manifests"].as_array().unwrap().as_slice() else {
            panic!("{arch}: one image: {index}")
        };
        let annotations = &descriptor["annotations"];
        assert_eq!(annotations["org.opencontainers.image.ref.name"], IMAGE, "{arch}: {index}");
        assert_eq!(annotations["io.containerd.image.name"], format!("docker.io/library/{IMAGE}"), "{arch}");
        let manifest = json_file(&blob(descriptor));
        let config = json_file(&blob(&manifest["config"]));
        // The `docker save` manifest beside the layout, for docker before 25,
        // names the same blobs; skopeo reads the archive as docker does.
        let in_layout = |descriptor: &Value| {
            format!("blobs/{}", descriptor["digest"].as_str().unwrap().replace(':', "/"))
        };
        let layers: Vec<String> = manifest["layers"].as_array().unwrap().iter().map(in_layout).collect();
        let expected = serde_json::json!([{"Config": in_layout(&manifest["config"]), "RepoTags": [IMAGE], "Layers": layers}]);
        assert_eq!(json_file(&layout.join("manifest.json")), expected, "{arch}");
        let docker_archive = format!("docker-archive:{}", archive(arch).display());
        let read_as_docker: Value =
            serde_json::from_str(&run("skopeo", &["inspect", "--config", &docker_archive])).unwrap();
        assert_eq!(read_as_docker["architecture"], arch, "{arch}");
        assert_eq!(read_as_docker["rootfs"], config["rootfs"], "{arch}");
        assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some(arch)));
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/local/bin/balctl"]));
        assert_eq!(config["config"]["Labels"]["org.opencontainers.image.version"], VERSION);
        let rootfs = layout.join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        for layer in manifest["layers"].as_array().unwrap() {
            run("tar", &["-xf", blob(layer).to_str().unwrap(), "-C", rootfs.to_str().unwrap()]);
        }
        let files = run("find", &[rootfs.to_str().unwrap(), "-not", "-type", "d"]);
        let mut files: Vec<&str> = files.lines().collect();
        files.sort_unstable();
        let binary = rootfs.join("usr/local/bin/balctl");
        let bundle = rootfs.join("etc/ssl/certs/ca-certificates.crt");
        assert_eq!(files, [bundle.to_str().unwrap(), binary.to_str().unwrap()], "{arch}: nothing else");
        assert!(fs::read_to_string(&bundle).unwrap().matches("BEGIN CERTIFICATE").count() > 100, "{arch}");

        let binary = binary.to_str().unwrap();
        assert!(run("readelf", &["-hW", binary]).contains(machine), "{arch}: built for {machine}");
        assert!(!run("readelf", &["-lW", binary]).contains("INTERP"), "{arch}: no program interpreter");
        assert!(!run("readelf", &["-dW", binary]).contains("NEEDED"), "{arch}: no shared library");
        let printed = match runner {
            None => run(binary, &["--version"]),
            Some(qemu) => run(qemu, &[binary, "--version"]),
        };
        assert_eq!(printed.trim(), format!("balctl {VERSION}"), "{arch}");
    }
}

/// A containerd of the test's own (its root, state and socket in the
/// sandbox, the Kubernetes plugin off): what a kubelet's runtime would load
/// the archives into. Killed, by PID, when it drops.
struct Containerd {
    dir: PathBuf,
    daemon: std::process::Child,
    /// The containerd namespace of this test, named after its sandbox:
    /// runc makes a cgroup of that name in every hierarchy, which goes
    /// when this drops.
    namespace: String,
}

/// The cgroups named `name` right under each cgroup hierarchy's root (one
/// on a cgroup2 machine, one per controller on a hybrid one).
fn cgroups_named(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies = fs::read_dir(root).unwrap().map(|entry| entry.unwrap().path());
    std::iter::once(root.to_owned()).chain(hierarchies).map(|h| h.join(name)).filter(|p| p.is_dir()).collect()
}

impl Containerd {
    fn start(sandbox: &Sandbox) -> Self {
        let dir = sandbox.scratch("containerd");
        fs::create_dir(&dir).unwrap();
        let config = dir.join("config.toml");
        let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\naddress = {:?}\n[ttrpc]\naddress = {:?}\n",
                path("root"),
                path("state"),
                path("sock"),
                path("sock.ttrpc"),
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (scripts/setup installs it)");
        let namespace = dir.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        let containerd = Self { dir, daemon, namespace };
        let started = Instant::now();
        while !containerd.dir.join("sock").exists() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "containerd did not start: {}",
                containerd.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        containerd
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> String {
        let socket = self.dir.join("sock");
        let mut all = vec!["--address", socket.to_str().unwrap(), "--namespace", &self.namespace];
        all.extend(args);
        run("ctr", &all)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers end with `run --rm`; the daemon's files go with the
        // sandbox, its namespace's cgroups (empty by now) here.
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        for cgroup in cgroups_named(&self.namespace) {
            let _ = fs::remove_dir(&cgroup);
        }
    }
}

/// Build 1: containerd (the runtime of most kubelets) imports each
/// platform's archive under the name deploy/ uses, with every blob present,
/// and runs the amd64 image's balctl.
pub fn containerd_imports_both_archives_and_runs_the_image() {
    let sandbox = Sandbox::new();
    let containerd = Containerd::start(&sandbox);
    let reference = format!("docker.io/library/{IMAGE}");
    for arch in ["amd64", "arm64"] {
        let platform = format!("linux/{arch}");
        containerd.ctr(&["images", "import", "--platform", &platform, archive(arch).to_str().unwrap()]);
        let listed = containerd.ctr(&["images", "ls"]);
        let line = listed
            .lines()
            .find(|line| line.starts_with(&format!("{reference} ")))
            .unwrap_or_else(|| panic!("{arch}: {reference} not imported: {listed}"));
        assert!(line.contains(&platform), "{arch}: {line}");
        let checked = containerd.ctr(&["images", "check"]);
        let line =
            checked.lines().find(|line| line.starts_with(&format!("{reference} "))).unwrap_or_default();
        assert!(line.contains(" complete (") && !line.contains("incomplete"), "{arch}: {checked}");
        if arch == "amd64" {
            // No network of its own but loopback: the container gets a new,
            // empty network namespace.
            let printed = containerd.ctr(&[
                "run",
                "--rm",
                &reference,
                "balctl-version",
                "/usr/local/bin/balctl",
                "--version",
            ]);
            assert_eq!(printed.trim(), format!("balctl {VERSION}"), "{}", containerd.log());
        }
    }
    let namespace = containerd.namespace.clone();
    assert!(!cgroups_named(&namespace).is_empty(), "the container ran in cgroups named {namespace}");
    drop(containerd);
    assert_eq!(cgroups_named(&namespace), Vec::<PathBuf>::new(), "nothing of containerd's is left");
}

/// Podman with a private storage in the sandbox; every container it ran is
/// removed (by name) when it drops, and the images with it.
struct Podman {
    storage: PathBuf,
    prefix: String,
    containers: Mutex<Vec<String>>,
}

impl Podman {
    fn new(sandbox: &Sandbox) -> Self {
        let storage = sandbox.scratch("podman");
        let prefix = storage.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        Self { storage, prefix, containers: Mutex::new(Vec::new()) }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        let at = |name: &str| self.storage.join(name);
        command
            .arg("--root")
            .arg(at("root"))
            .arg("--runroot")
            .arg(at("run"))
            .arg("--tmpdir")
            .arg(at("tmp"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            // crun refuses the hybrid cgroup layout of the test machines.
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
        command
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Loads an archive; the image must then be known by deploy/'s name.
    fn load(&self, archive: &Path) {
        self.ok(&["load", "--quiet", "--input", archive.to_str().unwrap()]);
        self.ok(&["image", "exists", IMAGE]);
    }

    /// A container name of this sandbox, removed when the test ends.
    fn name(&self, name: &str) -> String {
        let name = format!("{}-{name}", self.prefix);
        self.containers.lock().unwrap().push(name.clone());
        name
    }

    /// Runs `container` of `pod` as the kubelet would, detached; returns its name.
    fn start(&self, host: &Host, pod: &PodSpec, container: &Container, name: &str) -> String {
        let name = self.name(name);
        let mut args = vec!["run".to_owned(), "--detach".to_owned(), "--name".to_owned(), name.clone()];
        args.extend(host.podman_args(pod, container));
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        name
    }

    /// Runs an init container to its end; requires exit 0. What it logged.
    fn run_to_end(&self, host: &Host, pod: &PodSpec, container: &Container, name: &str) -> String {
        let name = self.start(host, pod, container, name);
        let code = self.ok(&["wait", &name]);
        let logs = self.logs(&name);
        assert_eq!(code.trim(), "0", "{name}: {logs}");
        logs
    }

    fn logs(&self, name: &str) -> String {
        let output = self.output(&["logs", name]);
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }

    fn running(&self, name: &str) -> bool {
        self.ok(&["inspect", "--format", "{{.State.Running}}", name]).trim() == "true"
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in self.containers.lock().map(|c| c.clone()).unwrap_or_default() {
            let _ = self.output(&["rm", "--force", "--time", "0", &name]);
        }
        let _ = self.output(&["rmi", "--all", "--force"]);
    }
}

/// What of the host a pod's containers get: the sandbox's paths in place of
/// the host's, the node network's namespace in place of the host's network,
/// the node's name, and a kubeconfig for the tests' API server.
struct Host<'a> {
    sandbox: &'a Sandbox,
    network: &'a NodeNetwork<'a>,
    kubeconfig: Option<PathBuf>,
}

impl Host<'_> {
    const NODE: &'static str = "node-a";

    fn host_path(&self, path: &str) -> PathBuf {
        match path {
            "/sys/fs/bpf" => self.sandbox.pins.parent().unwrap().to_owned(),
            "/sys/fs/cgroup" => self.sandbox.cgroup.clone(),
            "/var/lib/balctl" => self.sandbox.state.clone(),
            other => panic!("the test has no stand-in for the host path {other}"),
        }
    }

    /// `podman run` arguments for `container` of `pod`, up to its args.
    fn podman_args(&self, pod: &PodSpec, container: &Container) -> Vec<String> {
        // Podman's default limits are above what a root without
        // CAP_SYS_RESOURCE (the test machines) may set.
        let mut args: Vec<String> =
            ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"].map(String::from).into();
        let network = if pod.host_network == Some(true) {
            format!("ns:/run/netns/{}", self.network.netns)
        } else {
            "none".to_owned()
        };
        args.extend(["--network".into(), network]);
        if pod.host_pid == Some(true) {
            args.extend(["--pid".into(), "host".into()]);
        }
        let mut env = BTreeMap::new();
        for var in container.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(value), None) => value.clone(),
                (None, Some(from)) => {
                    let field = from.field_ref.as_ref().expect("only fieldRef is known to the test");
                    assert_eq!(field.field_path, "spec.nodeName", "a field the test does not fill");
                    Self::NODE.to_owned()
                }
                other => panic!("env {}: {other:?}", var.name),
            };
            env.insert(var.name.clone(), value);
        }
        if let Some(kubeconfig) = &self.kubeconfig {
            env.insert("KUBECONFIG".into(), KUBECONFIG.into());
            args.push("--mount".into());
            args.push(format!("type=bind,source={},destination={KUBECONFIG},ro=true", kubeconfig.display()));
        }
        for (name, value) in &env {
            args.extend(["--env".into(), format!("{name}={value}")]);
        }
        for mount in container.volume_mounts.iter().flatten() {
            let volumes = pod.volumes.as_ref().unwrap();
            let volume = volumes.iter().find(|v| v.name == mount.name).expect("the mount's volume");
            let source = self.host_path(&volume.host_path.as_ref().expect("a hostPath volume").path);
            let propagation = match mount.mount_propagation.as_deref() {
                Some("Bidirectional") => "rshared",
                Some("HostToContainer") => "rslave",
                None | Some("None") => "rprivate",
                Some(other) => panic!("mountPropagation {other}"),
            };
            let read_only = mount.read_only == Some(true);
            args.push("--mount".into());
            args.push(format!(
                "type=bind,source={},destination={},ro={read_only},bind-propagation={propagation}",
                source.display(),
                mount.mount_path
            ));
        }
        if let Some(limits) = container.resources.as_ref().and_then(|r| r.limits.as_ref()) {
            let memory = &limits["memory"].0;
            let mebibytes = memory.strip_suffix("Mi").expect("a memory limit in Mi");
            args.extend(["--memory".into(), format!("{mebibytes}m")]);
        }
        args.extend(security_args(container));
        let command = container.command.as_ref().expect("a command");
        args.push("--entrypoint".into());
        args.push(serde_json::to_string(command).unwrap());
        args.push(container.image.clone().unwrap());
        for arg in container.args.iter().flatten() {
            args.push(expand(arg, &env));
        }
        args
    }
}

/// The host's network as a pod with `hostNetwork: true` sees it, stood in
/// for by a network namespace of the test, `<sandbox>-node`: lo up, and
/// eth0 (203.0.113.2/24, 2001:db8:3::2/64), a veth to a namespace
/// `<sandbox>-gw` (203.0.113.1, 2001:db8:3::1) that is its default route
/// and routes nowhere, so that `load --devices auto` picks eth0 there.
/// Named after the sandbox, so a killed run's are swept with it. When this
/// drops, also on failure, balctl is unloaded in the node's namespace (the
/// sandbox's own unload runs in the host's, where it would release the
/// SNAT ports from the host's reserved ports), then both namespaces go.
struct NodeNetwork<'a> {
    sandbox: &'a Sandbox,
    netns: String,
    gateway: String,
}

impl<'a> NodeNetwork<'a> {
    /// The node's one device, which `auto` must pick.
    const DEVICE: &'static str = "eth0";

    fn new(sandbox: &'a Sandbox) -> Self {
        let prefix = sandbox.client_ns.strip_suffix("-c").expect("the sandbox's client namespace");
        let network = Self { sandbox, netns: format!("{prefix}-node"), gateway: format!("{prefix}-gw") };
        let (node, gateway) = (network.netns.as_str(), network.gateway.as_str());
        for ns in [node, gateway] {
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        // Both ends made inside the namespaces: no device of the test ever
        // appears on the host's network.
        let device = Self::DEVICE;
        run(
            "ip",
            &["-n", node, "link", "add", device, "type", "veth", "peer", "name", device, "netns", gateway],
        );
        for (ns, v4, v6) in
            [(node, "203.0.113.2/24", "2001:db8:3::2/64"), (gateway, "203.0.113.1/24", "2001:db8:3::1/64")]
        {
            run("ip", &["-n", ns, "addr", "add", v4, "dev", device]);
            run("ip", &["-n", ns, "addr", "add", v6, "dev", device, "nodad"]);
            run("ip", &["-n", ns, "link", "set", device, "up"]);
        }
        run("ip", &["-n", node, "-4", "route", "add", "default", "via", "203.0.113.1"]);
        run("ip", &["-n", node, "-6", "route", "add", "default", "via", "2001:db8:3::1"]);
        network
    }

    /// GET `path` on the node's 127.0.0.1:`port`, from a thread in its namespace.
    fn http_get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        in_netns(&self.netns, || http_get(port, path))
    }

    /// `balctl status -o json` in the node's namespace (device names are
    /// that namespace's), whatever its exit code.
    fn status(&self) -> Value {
        let output = self.sandbox.balctl_in(&self.netns, &["status", "-o", "json"]);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!("status printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stderr))
        })
    }

    /// balctl's tc links, (link id, program id) of from_device (tcx
    /// ingress) and to_device (egress), as status lists them: on the
    /// node's device only, and what the kernel has there, one program per
    /// hook.
    fn balctl_links(&self) -> [(u64, u64); 2] {
        let status = self.status();
        let devices = status["devices"].as_array().unwrap_or_else(|| panic!("no devices in {status:#}"));
        assert_eq!(devices.len(), 2, "two links, both on {}: {status:#}", Self::DEVICE);
        let link = |hook: &str, direction: &str| {
            let found = devices
                .iter()
                .find(|d| d["hook"] == hook && d["direction"] == direction && d["device"] == Self::DEVICE)
                .unwrap_or_else(|| panic!("no {hook} link on {}: {status:#}", Self::DEVICE));
            (found["link_id"].as_u64().unwrap(), found["program_id"].as_u64().unwrap())
        };
        let links = [link("from_device", "ingress"), link("to_device", "egress")];
        let program = |(_, program): (u64, u64)| vec![u32::try_from(program).unwrap()];
        assert_eq!(
            tcx_programs_in(&self.netns, Self::DEVICE),
            (program(links[0]), program(links[1])),
            "exactly balctl's program on each tcx hook of {}",
            Self::DEVICE
        );
        links
    }
}

impl Drop for NodeNetwork<'_> {
    fn drop(&mut self) {
        if self.sandbox.pins.exists() {
            let _ = self.sandbox.balctl_in(&self.netns, &["unload", "--yes"]);
        }
        for ns in [&self.netns, &self.gateway] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The host's reserved ports: `load --devices` in the node's namespace
/// reserves the SNAT ports there, never here.
fn host_reserved_ports() -> String {
    fs::read_to_string(RESERVED_PORTS).unwrap_or_else(|e| panic!("{RESERVED_PORTS}: {e}"))
}

/// Fails if one of `links`' programs is on a tcx hook of a device of the
/// host's (the machine's) network: the node's tc programs must stay in
/// its namespace.
fn assert_not_on_the_host(links: &[(u64, u64)]) {
    let devices: Value = serde_json::from_str(&run("ip", &["-j", "link", "show"])).expect("ip JSON");
    let names = devices.as_array().unwrap().iter().filter_map(|device| device["ifname"].as_str());
    for name in names {
        for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
            // A device that went away meanwhile (another test's) has none.
            let Ok((_, programs)) = SchedClassifier::query_tcx(name, direction) else { continue };
            for program in programs {
                let id = u64::from(program.id());
                assert!(
                    !links.iter().any(|(_, ours)| *ours == id),
                    "balctl's program {id} is on the host's {name}"
                );
            }
        }
    }
}

/// `$(NAME)` in a command or argument, as the kubelet expands it.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    env.iter().fold(arg.to_owned(), |arg, (name, value)| arg.replace(&format!("$({name})"), value))
}

/// The container's securityContext as podman options; a field the test
/// does not translate fails it, so the manifest cannot get ahead of it.
fn security_args(container: &Container) -> Vec<String> {
    let Some(context) = &container.security_context else { return Vec::new() };
    let mut args = Vec::new();
    let known = [
        "privileged",
        "capabilities",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "runAsUser",
        "seccompProfile",
    ];
    let fields = serde_json::to_value(context).unwrap();
    for field in fields.as_object().unwrap().keys() {
        assert!(
            known.contains(&field.as_str()),
            "{}: securityContext.{field} is unknown to the test",
            container.name
        );
    }
    if context.privileged == Some(true) {
        args.push("--privileged".to_owned());
    }
    if let Some(capabilities) = &context.capabilities {
        for cap in capabilities.drop.iter().flatten() {
            args.extend(["--cap-drop".to_owned(), cap.to_lowercase()]);
        }
        for cap in capabilities.add.iter().flatten() {
            args.extend(["--cap-add".to_owned(), cap.to_lowercase()]);
        }
    }
    if context.allow_privilege_escalation == Some(false) {
        args.extend(["--security-opt".to_owned(), "no-new-privileges".to_owned()]);
    }
    if context.read_only_root_filesystem == Some(true) {
        // Kubernetes mounts no tmpfs in a read-only root; podman would.
        args.extend(["--read-only".to_owned(), "--read-only-tmpfs=false".to_owned()]);
    }
    if let Some(user) = context.run_as_user {
        args.extend(["--user".to_owned(), user.to_string()]);
    }
    match context.seccomp_profile.as_ref().map(|p| p.type_.as_str()) {
        // The runtime's default profile is podman's.
        None | Some("RuntimeDefault") => {}
        Some("Unconfined") => args.extend(["--security-opt".to_owned(), "seccomp=unconfined".to_owned()]),
        Some(other) => panic!("seccompProfile {other}"),
    }
    args
}

/// The pod template of the one DaemonSet in `file`.
fn pod_of(file: &str) -> PodSpec {
    let found: Vec<PodSpec> = documents("deploy")
        .into_iter()
        .filter(|(at, document)| at.contains(file) && document["kind"] == "DaemonSet")
        .map(|(at, document)| typed::<DaemonSet>(&at, &document).spec.template.spec.unwrap())
        .collect();
    let [pod] = found.as_slice() else { panic!("one DaemonSet in {file}") };
    pod.clone()
}

/// GET `path` on a port on the node's 127.0.0.1, waiting (at most
/// `within`) until it answers `status`; else fails with what `container`
/// logged.
fn wait_for_status(
    podman: &Podman,
    container: &str,
    network: &NodeNetwork,
    (port, path): (u16, &str),
    status: u16,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        last = network.http_get(port, path);
        if last.as_ref().is_some_and(|(code, _)| *code == status) {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{path} on 127.0.0.1:{port} did not answer {status} within {within:?}; last: {last:?}; {container} logged:\n{}",
        podman.logs(container)
    );
}

/// Build 2 and Must show 2: the DaemonSet's init container loads, its agent
/// follows the tests' API server; /readyz is 503 until the first complete
/// sync (the API server is away at first) and 200 after; a client reaches
/// the Service; the agent is killed, and a new pod (init container and
/// agent) takes over, applying a change made meanwhile, while a client
/// loops through the VIP the whole time without one failed connection.
/// Issue 18: the init container's `--devices auto` puts the tc programs on
/// the node's device (found by its default route), one per tcx hook, and
/// reserves the SNAT ports in the node's namespace; the second init
/// container swaps them in place; the host's network gets neither.
pub fn the_daemonset_runs_in_podman_and_a_new_pod_takes_over() {
    let sandbox = Sandbox::new();
    fs::create_dir(&sandbox.state).unwrap();
    fs::set_permissions(&sandbox.state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let network = NodeNetwork::new(&sandbox);
    let (server, kubeconfig) = web_in_a_cluster_in(&sandbox, &network.netns);
    let host_ports = host_reserved_ports();
    assert_eq!(reserved_ports(&network.netns), "", "a new namespace reserves no port");

    let pod = pod_of("daemonset.yaml");
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let agent = &pod.containers[0];
    let probe = |which: &str| {
        let probe = match which {
            "startup" => &agent.startup_probe,
            "liveness" => &agent.liveness_probe,
            _ => &agent.readiness_probe,
        };
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        (u16::try_from(probe_port(agent, get)).unwrap(), get.path.clone().unwrap())
    };
    let (health, readyz) = probe("readiness");
    let host = Host { sandbox: &sandbox, network: &network, kubeconfig: Some(kubeconfig) };
    let podman = Podman::new(&sandbox);
    podman.load(&archive("amd64"));

    let loaded = podman.run_to_end(&host, &pod, init, "load-1");
    let attached = bpftool_cgroup_show(&sandbox);
    assert!(
        attached.iter().any(|line| line.contains("connect4")),
        "not attached to the test cgroup: {attached:?}"
    );
    let device = NodeNetwork::DEVICE;
    assert!(loaded.contains(&format!("\ntc programs on {device}: 2 links attached\n")), "{loaded}");
    let links = network.balctl_links();
    assert_not_on_the_host(&links);
    assert_eq!(reserved_ports(&network.netns), SNAT_PORTS, "the node's namespace reserves the SNAT ports");
    assert_eq!(host_reserved_ports(), host_ports, "the host's reserved ports are left alone");

    // The API server away: the agent serves, but is not ready.
    server.set_reachable(false);
    let first = podman.start(&host, &pod, agent, "sync-1");
    let (live_port, livez) = probe("liveness");
    wait_for_status(&podman, &first, &network, (live_port, &livez), 200, Duration::from_secs(20));
    for _ in 0..5 {
        let (status, body) = network.http_get(health, &readyz).expect("the agent answers");
        assert_eq!(status, 503, "ready before any sync: {body}");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(sandbox.client(&["connect", "--to", VIP])["errors"]["ENETUNREACH"], 1, "nothing applied yet");
    server.set_reachable(true);
    let (startup_port, startup) = probe("startup");
    wait_for_status(&podman, &first, &network, (startup_port, &startup), 200, Duration::from_secs(20));
    wait_for_status(&podman, &first, &network, (health, &readyz), 200, Duration::from_secs(1));
    assert_eq!(sandbox.reached(VIP, 5), ["b2"]);

    // Killed under traffic; a change while no agent runs; a new pod.
    let client = sandbox.spawn_client(&["connect", "--to", VIP, "--millis", "12000"]);
    thread::sleep(Duration::from_millis(500));
    podman.ok(&["kill", &first]);
    assert_eq!(podman.ok(&["wait", &first]).trim(), "137", "SIGKILL");
    server.apply(slice("web", &["192.0.2.2", "192.0.2.3"]));
    thread::sleep(Duration::from_secs(1));
    let reloaded = podman.run_to_end(&host, &pod, init, "load-2");
    assert!(
        reloaded.contains(&format!("\ntc programs on {device}: 2 links replaced in place\n")),
        "{reloaded}"
    );
    let swapped = network.balctl_links();
    for (before, after) in links.iter().zip(&swapped) {
        assert_eq!(before.0, after.0, "the link is kept, not a second one attached: {links:?} {swapped:?}");
        assert_ne!(before.1, after.1, "the program is new: {links:?} {swapped:?}");
    }
    let second = podman.start(&host, &pod, agent, "sync-2");
    wait_for_status(&podman, &second, &network, (health, &readyz), 200, Duration::from_secs(20));
    let report = finish(client);
    assert_eq!(report["failed"], 0, "connections failed across the agent's death and the new pod: {report}");
    assert!(report["ok"].as_u64().unwrap() > 100, "{report}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut both = sandbox.reached(VIP, 40);
    while both.len() < 2 && Instant::now() < deadline {
        both = sandbox.reached(VIP, 40);
    }
    both.sort();
    assert_eq!(both, ["b2", "b3"], "the new agent applied the change made while none ran");

    // Stopped as the kubelet stops it: SIGTERM, exit 0, the datapath stays.
    let grace = pod.termination_grace_period_seconds.unwrap().to_string();
    podman.ok(&["stop", "--time", &grace, &second]);
    assert_eq!(podman.ok(&["wait", &second]).trim(), "0", "{}", podman.logs(&second));
    let after = sandbox.reached(VIP, 40);
    assert_eq!(after.len(), 2, "the datapath outlives the agent: {after:?}");
    assert_eq!(network.balctl_links(), swapped);
    assert_not_on_the_host(&swapped);
    assert_eq!(host_reserved_ports(), host_ports);
}

/// Build 5 and Must show 6 (uninstall): on a node loaded with the tc
/// programs on its device (`--devices auto` in the node's namespace), a
/// policy and synced services, deploy/uninstall.yaml's container leaves
/// nothing: no pin, no program on the cgroup nor on the device, no link,
/// the SNAT ports given back to the node's namespace, no state file, the
/// VIP no longer translated; it then stays running until SIGTERM, which
/// ends it with 0.
pub fn the_uninstall_manifest_leaves_nothing_behind() {
    let sandbox = Sandbox::new();
    let network = NodeNetwork::new(&sandbox);
    let host_ports = host_reserved_ports();
    let cgroup = sandbox.cgroup.to_str().unwrap();
    let loaded = sandbox.balctl_in_ok(&network.netns, &["load", "--cgroup", cgroup, "--devices", "auto"]);
    assert!(
        loaded.contains(&format!("\ntc programs on {}: 2 links attached\n", NodeNetwork::DEVICE)),
        "{loaded}"
    );
    let device_links = network.balctl_links();
    assert_not_on_the_host(&device_links);
    assert_eq!(reserved_ports(&network.netns), SNAT_PORTS);
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", VIP, "--backend", "192.0.2.2:8080"]);
    let file = sandbox.scratch("api.toml");
    let api = "[[service]]\nname = \"api\"\naddresses = [\"198.18.0.30\"]\nbackends = [\"192.0.2.2\"]\n\
               ports = [{ port = 80, target_port = 8080 }]\n";
    fs::write(&file, api).unwrap();
    sandbox.balctl_ok(&["sync", "-f", file.to_str().unwrap()]);
    assert_eq!(sandbox.reached(VIP, 3), ["b2"]);
    assert_eq!(sandbox.reached("198.18.0.30:80", 3), ["b2"]);
    let hooks = network.status()["hooks"].as_array().expect("hooks").clone();
    let mut links: Vec<u64> = hooks.iter().map(|hook| hook["link_id"].as_u64().expect("a link id")).collect();
    assert_eq!(links.len(), 9);
    links.extend(device_links.map(|(link, _)| link));

    let pod = pod_of("uninstall.yaml");
    let [container] = pod.containers.as_slice() else { panic!("one container") };
    let host = Host { sandbox: &sandbox, network: &network, kubeconfig: None };
    let podman = Podman::new(&sandbox);
    podman.load(&archive("amd64"));
    let name = podman.start(&host, &pod, container, "uninstall");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !podman.logs(&name).contains("balctl unloaded") {
        assert!(Instant::now() < deadline, "no unload within 20 s: {}", podman.logs(&name));
        assert!(podman.running(&name), "the uninstall container exited: {}", podman.logs(&name));
        thread::sleep(Duration::from_millis(100));
    }

    let logged = podman.logs(&name);
    assert!(logged.contains(&format!("tc programs detached from {},", NodeNetwork::DEVICE)), "{logged}");
    assert!(!sandbox.pins.exists(), "pins left under {}", sandbox.pins.display());
    assert!(bpftool_cgroup_show(&sandbox).is_empty(), "programs still attached");
    assert_eq!(tcx_programs_in(&network.netns, NodeNetwork::DEVICE), (vec![], vec![]), "tc programs left");
    for id in links {
        let shown = Command::new("bpftool").args(["link", "show", "id", &id.to_string()]).output().unwrap();
        assert!(!shown.status.success(), "link {id} still exists");
    }
    assert_eq!(reserved_ports(&network.netns), "", "the SNAT ports are given back to the node");
    assert_eq!(host_reserved_ports(), host_ports, "the host's reserved ports are left alone");
    let state: Vec<_> = fs::read_dir(&sandbox.state)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(state.is_empty(), "state files left: {state:?}");
    for vip in [VIP, "198.18.0.30:80"] {
        let report = sandbox.client(&["connect", "--to", vip]);
        assert_eq!(report["errors"]["ENETUNREACH"], 1, "{vip} is still translated: {report}");
    }

    // It stays, idle, until deleted.
    thread::sleep(Duration::from_secs(1));
    assert!(podman.running(&name), "the uninstall container exited: {}", podman.logs(&name));
    let grace = pod.termination_grace_period_seconds.unwrap().to_string();
    podman.ok(&["stop", "--time", &grace, &name]);
    assert_eq!(podman.ok(&["wait", &name]).trim(), "0", "{}", podman.logs(&name));
}
