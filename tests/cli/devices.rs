//! Issue 18, `load --devices`: the tc programs on a device's tcx ingress
//! and egress through pinned links, swapped in place by `load` under
//! traffic, moved when the devices change, gone after `unload`, with the
//! SNAT ports reserved in the device's network namespace meanwhile; a
//! missing device changes nothing; `auto` picks the devices that hold a
//! node address or carry a default route.
//!
//! balctl runs in the sandbox's server namespace (the node) through
//! `nsenter --net`, which, unlike `ip netns exec`, leaves /sys and so the
//! cgroup2 mount as they are. What is attached to a device is read back
//! with aya's tcx query from a thread in that namespace, and the links with
//! `bpftool link show`: not through balctl.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::Output,
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType, links::FdLink};
use serde_json::Value;

use crate::support::{Sandbox, balctl, finish, run};

/// The SNAT ports (`balctl_common::SNAT_PORT_MIN..=SNAT_PORT_MAX`) as the
/// sysctl lists them once reserved.
pub const SNAT_PORTS: &str = "61000-65535";
/// bpf_link_type BPF_LINK_TYPE_TCX, which bpftool 7.1 prints as a number.
const LINK_TYPE_TCX: u64 = 11;

/// balctl in the sandbox's server namespace, against its pins and state.
fn node_balctl(sandbox: &Sandbox, args: &[&str]) -> Output {
    sandbox.balctl_in(&sandbox.server_ns, args)
}

fn node_balctl_ok(sandbox: &Sandbox, args: &[&str]) -> String {
    sandbox.balctl_in_ok(&sandbox.server_ns, args)
}

fn load(sandbox: &Sandbox, more: &[&str]) -> String {
    let mut args = vec!["load", "--cgroup", sandbox.cgroup.to_str().unwrap()];
    args.extend(more);
    node_balctl_ok(sandbox, &args)
}

/// Unloads from the node's namespace when a test ends, before the
/// sandbox's own unload (which runs in the host's namespace, so it would
/// release the SNAT ports there, not in the node's). Declare it after the
/// sandbox: it drops first.
struct UnloadInNode<'a>(&'a Sandbox);

impl Drop for UnloadInNode<'_> {
    fn drop(&mut self) {
        if self.0.pins.exists() {
            let _ = node_balctl(self.0, &["unload", "--yes"]);
        }
    }
}

/// Runs `f` on a thread that joined the network namespace `netns`
/// (setns moves only the calling thread).
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = File::open(format!("/run/netns/{netns}")).expect("open the namespace");
                // SAFETY: setns on an open namespace file, for this thread only.
                assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
                f()
            })
            .join()
            .expect("the namespace thread")
    })
}

/// The ids of the programs on `device`'s tcx ingress and egress, in order.
fn tcx_programs(sandbox: &Sandbox, device: &str) -> (Vec<u32>, Vec<u32>) {
    tcx_programs_in(&sandbox.server_ns, device)
}

/// The same, of `device` in the network namespace `netns`.
pub fn tcx_programs_in(netns: &str, device: &str) -> (Vec<u32>, Vec<u32>) {
    in_netns(netns, || {
        let ids = |direction| {
            let (_, programs) = SchedClassifier::query_tcx(device, direction).expect("query tcx");
            programs.iter().map(|program| program.id()).collect::<Vec<u32>>()
        };
        (ids(TcAttachType::Ingress), ids(TcAttachType::Egress))
    })
}

/// tcx links the kernel has, as `bpftool link show` lists them: (link id, program id).
fn bpftool_tcx_links() -> Vec<(u64, u64)> {
    let links: Value = serde_json::from_str(&run("bpftool", &["link", "show", "-j"])).expect("bpftool JSON");
    links
        .as_array()
        .expect("links")
        .iter()
        .filter(|link| link["type"] == LINK_TYPE_TCX || link["type"] == "tcx")
        .map(|link| (link["id"].as_u64().unwrap(), link["prog_id"].as_u64().unwrap()))
        .collect()
}

/// Attaches another program to `device`'s tcx ingress the way another tc
/// user would (aya's default order: after those there), its link pinned
/// beside balctl's pin dir so it outlives this call (the sandbox's bpffs
/// goes with the sandbox). Its program id.
fn attach_another_program(sandbox: &Sandbox, device: &str) -> u32 {
    let pin = sandbox.pins.parent().unwrap().join("another-tc-link");
    in_netns(&sandbox.server_ns, || {
        let mut ebpf = aya::Ebpf::load(crate::datapath::UNTRACED).expect("load the untraced build");
        let program: &mut SchedClassifier =
            ebpf.program_mut("balctl_from_device").unwrap().try_into().expect("a tc program");
        program.load().expect("load it");
        let id = program.attach(device, TcAttachType::Ingress).expect("attach it");
        let link: FdLink = program.take_link(id).unwrap().try_into().expect("a tcx link");
        link.pin(&pin).expect("pin it");
        program.info().expect("its info").id()
    })
}

pub fn reserved_ports(netns: &str) -> String {
    let netns = format!("--net=/run/netns/{netns}");
    run("nsenter", &[&netns, "cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]).trim().to_owned()
}

/// The server namespace's device that holds `address` (the sandbox's veth).
fn device_holding(sandbox: &Sandbox, address: &str) -> String {
    let links: Value =
        serde_json::from_str(&run("ip", &["-n", &sandbox.server_ns, "-j", "addr", "show"])).expect("ip JSON");
    links
        .as_array()
        .unwrap()
        .iter()
        .find(|link| link["addr_info"].as_array().unwrap().iter().any(|a| a["local"] == address))
        .and_then(|link| link["ifname"].as_str())
        .expect("a device with the address")
        .to_owned()
}

/// Adds a veth pair inside the server namespace, both ends up; `address`
/// on the first end if given.
fn add_veth(sandbox: &Sandbox, name: &str, peer: &str, address: Option<&str>) {
    let ns = sandbox.server_ns.as_str();
    run("ip", &["-n", ns, "link", "add", name, "type", "veth", "peer", "name", peer]);
    if let Some(address) = address {
        run("ip", &["-n", ns, "addr", "add", address, "dev", name]);
    }
    for dev in [name, peer] {
        run("ip", &["-n", ns, "link", "set", dev, "up"]);
    }
}

/// The device links `status -o json` lists: (hook, device, direction, link id, program id).
fn status_devices(sandbox: &Sandbox) -> Vec<(String, String, String, u64, u64)> {
    let output = node_balctl(sandbox, &["status", "-o", "json"]);
    let status: Value = serde_json::from_slice(&output.stdout).expect("status JSON");
    status["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices in {status:#}"))
        .iter()
        .map(|link| {
            (
                link["hook"].as_str().unwrap().to_owned(),
                link["device"].as_str().unwrap().to_owned(),
                link["direction"].as_str().unwrap().to_owned(),
                link["link_id"].as_u64().unwrap(),
                link["program_id"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Both tc programs on the node's veth, before another tc program there,
/// as the kernel and status see them;
/// `load` again under a TCP loop through the device swaps them (links
/// kept, programs new, not one failed connection); a link whose pin is
/// removed is missing until `load` attaches it alone; moving to other
/// devices detaches the old one; `unload` leaves no tc program and gives
/// the reserved ports back.
pub fn load_attaches_both_tc_programs_and_reloads_them_in_place() {
    let sandbox = Sandbox::new();
    let _unload = UnloadInNode(&sandbox);
    sandbox.serve("node", &["192.0.2.2:8080"], &[]);
    let device = device_holding(&sandbox, "192.0.2.2");
    add_veth(&sandbox, "bct-x0", "bct-x1", None);
    let ports_before = reserved_ports(&sandbox.server_ns);
    assert!(!ports_before.contains(SNAT_PORTS), "{ports_before}");
    let host_ports = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap();
    let another = attach_another_program(&sandbox, &device);

    let loaded = load(&sandbox, &["--devices", &device]);
    assert!(loaded.contains(&format!("\ntc programs on {device}: 2 links attached\n")), "{loaded}");
    let links = status_devices(&sandbox);
    let (ingress, egress) = tcx_programs(&sandbox, &device);
    let [from, to] = links.as_slice() else { panic!("two device links: {links:?}") };
    assert_eq!(
        (from.0.as_str(), from.1.as_str(), from.2.as_str()),
        ("from_device", device.as_str(), "ingress")
    );
    assert_eq!((to.0.as_str(), to.1.as_str(), to.2.as_str()), ("to_device", device.as_str(), "egress"));
    assert_eq!((ingress, egress), (vec![from.4 as u32, another], vec![to.4 as u32]), "{links:?}");
    let kernel_links = bpftool_tcx_links();
    for link in &links {
        assert!(kernel_links.contains(&(link.3, link.4)), "{link:?} not in {kernel_links:?}");
    }
    assert!(sandbox.pins.join(format!("links/from_device@{device}")).exists());
    assert!(sandbox.pins.join(format!("links/to_device@{device}")).exists());
    assert_eq!(
        reserved_ports(&sandbox.server_ns),
        SNAT_PORTS,
        "the node's namespace reserves the SNAT ports"
    );
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap(), host_ports);
    let table = node_balctl_ok(&sandbox, &["status"]);
    // DEVICE IFINDEX DIRECTION HOOK LINK PROGRAM ATTACHED: the other program counts.
    let row = format!("ingress from_device {} {} 2", from.3, from.4);
    let found = table.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.len() == 7 && words[0] == device && words[2..].join(" ") == row
    });
    assert!(found, "no row {row:?} in\n{table}");

    // `load` without --devices keeps the device, and swaps in place under traffic.
    let client = sandbox.spawn_client(&["connect", "--to", "192.0.2.2:8080", "--millis", "4000"]);
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(1000));
        let output = load(&sandbox, &[]);
        assert!(output.contains(&format!("tc programs on {device}: 2 links replaced in place")), "{output}");
    }
    let report = finish(client);
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["ok"].as_u64().unwrap() > 200, "too few connections to prove anything: {report}");
    let reloaded = status_devices(&sandbox);
    for (before, after) in links.iter().zip(&reloaded) {
        assert_eq!((&before.0, before.3), (&after.0, after.3), "the link is kept: {links:?} {reloaded:?}");
        assert_ne!(before.4, after.4, "the program is new: {links:?} {reloaded:?}");
    }
    let (ingress, egress) = tcx_programs(&sandbox, &device);
    assert_eq!((ingress, egress), (vec![reloaded[0].4 as u32, another], vec![reloaded[1].4 as u32]));

    // A removed pin drops its link: status says it is missing (exit 4), load attaches it alone.
    std::fs::remove_file(sandbox.pins.join(format!("links/to_device@{device}"))).unwrap();
    let output = node_balctl(&sandbox, &["status", "-o", "json"]);
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(4), "{status:#}");
    assert_eq!(status["missing_hooks"], serde_json::json!([format!("to_device@{device}")]), "{status:#}");
    // The kernel frees a link whose last reference was its pin on a
    // workqueue: give it a moment on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !tcx_programs(&sandbox, &device).1.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(tcx_programs(&sandbox, &device).1.is_empty(), "the unpinned link is still attached");
    let output = load(&sandbox, &[]);
    assert!(output.contains(&format!("on {device}: 1 link attached, 1 link replaced in place")), "{output}");
    assert_eq!(tcx_programs(&sandbox, &device).1.len(), 1);

    // Naming other devices attaches the new one and detaches the old.
    let output = load(&sandbox, &["--devices", &format!("{device},bct-x0")]);
    assert!(output.contains("2 links attached, 2 links replaced in place"), "{output}");
    let output = load(&sandbox, &["--devices", "bct-x0"]);
    assert!(
        output.contains(&format!("2 links replaced in place; 2 links detached from {device}")),
        "{output}"
    );
    assert_eq!(tcx_programs(&sandbox, &device), (vec![another], vec![]), "only the other program is left");
    assert_eq!(tcx_programs(&sandbox, "bct-x0").0.len(), 1);
    assert!(!sandbox.pins.join(format!("links/from_device@{device}")).exists());

    // An unload that cannot give the ports back (a read-only /proc/sys, as
    // in an unprivileged container) fails with everything still attached,
    // so that unloading again can.
    const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let read_only =
        format!("mount --bind {SYSCTL} {SYSCTL} && mount -o remount,bind,ro {SYSCTL} && exec \"$@\"");
    let netns = format!("--net=/run/netns/{}", sandbox.server_ns);
    let failed = sandbox
        .command_of(
            "nsenter",
            &[
                &netns,
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &read_only,
                "sh",
                balctl(),
                "unload",
                "--yes",
            ],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(tcx_programs(&sandbox, "bct-x0").0.len(), 1, "still attached after a failed unload");
    assert_eq!(reserved_ports(&sandbox.server_ns), SNAT_PORTS);

    let output = node_balctl_ok(&sandbox, &["unload", "--yes"]);
    assert!(output.contains("9 hooks detached, tc programs detached from bct-x0"), "{output}");
    assert_eq!(tcx_programs(&sandbox, "bct-x0"), (vec![], vec![]));
    let left: Vec<(u64, u64)> =
        bpftool_tcx_links().into_iter().filter(|link| reloaded.iter().any(|l| l.3 == link.0)).collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(reserved_ports(&sandbox.server_ns), ports_before, "unload gives the SNAT ports back");
}

/// A device that does not exist is exit 2 naming it, and changes nothing:
/// not on a first load (nothing attached, nothing pinned, no port
/// reserved) nor over a loaded datapath (same links, same programs).
pub fn a_missing_device_changes_nothing() {
    let sandbox = Sandbox::new();
    let _unload = UnloadInNode(&sandbox);
    let device = device_holding(&sandbox, "192.0.2.2");
    let cgroup = sandbox.cgroup.to_str().unwrap();
    let ports_before = reserved_ports(&sandbox.server_ns);
    let refused = |devices: &str, names: &str| {
        let output = node_balctl(&sandbox, &["load", "--cgroup", cgroup, "--devices", devices]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(names), "{stderr}");
    };
    refused(&format!("{device},bct-nope"), "there is no device \"bct-nope\"");
    assert_eq!(tcx_programs(&sandbox, &device), (vec![], vec![]));
    assert!(!sandbox.pins.join("links").exists(), "nothing pinned");
    assert_eq!(node_balctl(&sandbox, &["status"]).status.code(), Some(3), "not loaded");
    assert_eq!(reserved_ports(&sandbox.server_ns), ports_before);

    load(&sandbox, &["--devices", &device]);
    let links = status_devices(&sandbox);
    let programs = tcx_programs(&sandbox, &device);
    refused("bct-nope", "bct-nope");
    refused(&format!("auto,{device}"), "`auto` and `none` stand alone");
    assert_eq!(status_devices(&sandbox), links);
    assert_eq!(tcx_programs(&sandbox, &device), programs);
}

/// `auto`: the devices up with a global unicast address that carry a
/// default route or hold a node address; a veth without an address, and
/// one whose address is neither, are left out; none found is exit 2. A
/// device that goes away leaves a defunct link, which status shows and
/// the next load drops.
pub fn auto_picks_the_devices_of_default_routes_and_node_addresses() {
    let sandbox = Sandbox::new();
    let _unload = UnloadInNode(&sandbox);
    let device = device_holding(&sandbox, "192.0.2.2");
    add_veth(&sandbox, "bct-x0", "bct-x1", None);
    add_veth(&sandbox, "bct-y0", "bct-y1", Some("203.0.113.1/24"));
    add_veth(&sandbox, "bct-z0", "bct-z1", Some("198.51.100.1/24"));
    let devices_of = |loaded: &str| -> String {
        loaded.lines().find_map(|line| line.strip_prefix("tc programs on ")).unwrap_or("").to_owned()
    };

    let output =
        node_balctl(&sandbox, &["load", "--cgroup", sandbox.cgroup.to_str().unwrap(), "--devices", "auto"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("global unicast address: bct-y0, bct-z0, {device})")), "{stderr}");

    // A default route (to the client namespace, which routes nowhere).
    run("ip", &["-n", &sandbox.server_ns, "route", "add", "default", "via", "192.0.2.1", "dev", &device]);
    let loaded = load(&sandbox, &["--devices", "auto"]);
    assert_eq!(devices_of(&loaded), format!("{device}: 2 links attached"), "{loaded}");

    // The Node's address is on bct-y0.
    let node = sandbox.scratch("node.yaml");
    std::fs::write(
        &node,
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n\
         status: {addresses: [{type: InternalIP, address: 203.0.113.1}]}\n",
    )
    .unwrap();
    node_balctl_ok(&sandbox, &["sync", "--node-name", "node-a", "-f", node.to_str().unwrap()]);
    let loaded = load(&sandbox, &["--devices", "auto"]);
    assert!(devices_of(&loaded).starts_with(&format!("bct-y0, {device}: ")), "{loaded}");
    run("ip", &["-n", &sandbox.server_ns, "route", "del", "default"]);
    let loaded = load(&sandbox, &["--devices", "auto"]);
    assert_eq!(
        devices_of(&loaded),
        format!("bct-y0: 2 links replaced in place; 2 links detached from {device}"),
        "{loaded}"
    );

    // bct-y0 goes away: its links are defunct until the next load.
    run("ip", &["-n", &sandbox.server_ns, "link", "del", "bct-y0"]);
    let status: Value =
        serde_json::from_slice(&node_balctl(&sandbox, &["status", "-o", "json"]).stdout).unwrap();
    let devices = status["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{status:#}");
    assert!(
        devices.iter().all(|d| d["defunct"] == true && d["ifindex"] == 0 && d["device"] == "bct-y0"),
        "{status:#}"
    );
    let table = node_balctl_ok(&sandbox, &["status"]);
    assert!(table.contains("bct-y0 (gone)"), "{table}");
    let loaded = load(&sandbox, &[]);
    assert!(loaded.contains("tc programs on no device; 2 links detached from bct-y0"), "{loaded}");
    assert_eq!(status_devices(&sandbox), vec![]);
    assert!(!sandbox.pins.join("links/from_device@bct-y0").exists());
}
