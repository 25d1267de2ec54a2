//! Who connects, for `explain` (`--pid`, `--cgroup`, `--pod`, else
//! balctl itself): the client's cgroup (whether balctl's
//! programs see its connects at all) and its network namespace's cookie
//! (what `bpf_get_netns_cookie` gives the connect program, the owner of a
//! session-affinity choice: choice.rs in ebpf/programs/src/lb).

use std::{
    collections::BTreeSet,
    fs,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::sockets::{socket_cookies, socket_option_u64};
use crate::{bpf::cgroup::cgroup2_mount, cli::ExplainArgs, cluster, input};

#[derive(Serialize)]
pub struct Client {
    /// The process looked at: `--pid`, the first one found in `--cgroup`
    /// or `--pod`'s cgroup, or balctl itself; null for a cgroup without
    /// processes.
    pub pid: Option<u32>,
    pub cgroup: PathBuf,
    /// The cookie of its network namespace; null when no process says
    /// which (then no affinity choice can be looked up).
    pub netns_cookie: Option<u64>,
    /// The cookies of the process's sockets (empty without a process).
    #[serde(skip)]
    pub socket_cookies: BTreeSet<u64>,
}

impl Client {
    /// The client the arguments name: `--pid`, `--cgroup`, else this process.
    pub fn of(args: &ExplainArgs) -> Result<Self> {
        if let Some(cgroup) = &args.cgroup {
            return Self::in_cgroup(cgroup);
        }
        if let Some((namespace, name)) = &args.pod {
            let uid = cluster::pod_uid(&args.api_server, namespace, name)?;
            let cgroup = pod_cgroup(&cgroup2_mount()?, &uid).ok_or_else(|| {
                input!("--pod {namespace}/{name}: no cgroup of its UID {uid} on this node (is the Pod on another node?)")
            })?;
            return Self::in_cgroup(&cgroup);
        }
        let pid = args.pid.unwrap_or_else(std::process::id);
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if args.pid.is_some() && !proc_dir.exists() {
            return Err(input!("--pid {pid}: no such process"));
        }
        let cgroup = cgroup_of(pid)?;
        let (netns_cookie, socket_cookies) = (Some(netns_cookie(pid)?), socket_cookies(pid)?);
        Ok(Self { pid: Some(pid), cgroup, netns_cookie, socket_cookies })
    }

    /// `--cgroup PATH`: the cgroup, and the network namespace of the first
    /// process in it or below (a pod's containers share theirs).
    fn in_cgroup(path: &Path) -> Result<Self> {
        let mount = cgroup2_mount()?;
        let cgroup = fs::canonicalize(path).map_err(|e| input!("--cgroup {}: {e}", path.display()))?;
        if !cgroup.starts_with(&mount) || !cgroup.join("cgroup.procs").exists() {
            return Err(input!(
                "--cgroup {}: not a cgroup v2 directory (cgroup2 is mounted at {})",
                path.display(),
                mount.display()
            ));
        }
        let pid = first_process(&cgroup);
        let netns_cookie = pid.map(netns_cookie).transpose()?;
        let socket_cookies = pid.map(socket_cookies).transpose()?.unwrap_or_default();
        Ok(Self { pid, cgroup, netns_cookie, socket_cookies })
    }
}

/// The cgroup2 directory of process `pid`, from the `0::` line of
/// /proc/PID/cgroup.
fn cgroup_of(pid: u32) -> Result<PathBuf> {
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?;
    let Some(relative) = text.lines().find_map(|line| line.strip_prefix("0::")) else {
        bail!("{file} has no cgroup v2 line (0::PATH)");
    };
    Ok(cgroup2_mount()?.join(relative.trim_start_matches('/')))
}

/// The cgroup of the Pod with `uid`, under `root`: the kubelet names it
/// `pod<UID>` (cgroupfs driver) or `kubepods-...-pod<UID with _ for ->.slice`
/// (systemd driver). Searched breadth first, not below a match.
fn pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    let names = [format!("pod{uid}"), format!("pod{}", uid.replace('-', "_"))];
    let is_pod = |name: &str| {
        let name = name.strip_suffix(".slice").unwrap_or(name);
        names.iter().any(|pod| name == pod || name.ends_with(&format!("-{pod}")))
    };
    let mut pending = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = pending.pop_front() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            if entry.file_name().to_str().is_some_and(is_pod) {
                return Some(entry.path());
            }
            pending.push_back(entry.path());
        }
    }
    None
}

/// The first process in `cgroup` or a cgroup below it, depth first.
fn first_process(cgroup: &Path) -> Option<u32> {
    let procs = fs::read_to_string(cgroup.join("cgroup.procs")).ok()?;
    if let Some(pid) = procs.lines().find_map(|line| line.trim().parse().ok()) {
        return Some(pid);
    }
    let mut children: Vec<PathBuf> = fs::read_dir(cgroup)
        .ok()?
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| entry.path())
        .collect();
    children.sort();
    children.iter().find_map(|child| first_process(child))
}

/// The cookie of the network namespace of process `pid`: what
/// SO_NETNS_COOKIE says of a socket made in it. The socket is made, never
/// bound nor connected, by a thread that joins the namespace and ends.
fn netns_cookie(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/ns/net");
    let netns = fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    let cookie = std::thread::spawn(move || -> std::io::Result<u64> {
        // SAFETY: setns on a descriptor we own, for this thread only (a
        // network namespace may be joined by one thread of many).
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: plain syscall; the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        socket_option_u64(socket.as_fd(), libc::SO_NETNS_COOKIE)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread reading a network namespace's cookie panicked"))?;
    cookie.with_context(|| format!("cannot read the network namespace cookie of {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_cgroup_is_found_under_either_driver() {
        let root = std::env::temp_dir().join(format!("balctl-expl-{}", std::process::id()));
        let uid = "2f3c1c38-6a0e-4b55-9d5e-0c4d4a1b7e01";
        let systemd = root.join("kubepods.slice/kubepods-burstable.slice");
        let pod = systemd.join(format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")));
        fs::create_dir_all(pod.join("cri-containerd-0123.scope")).unwrap();
        let cgroupfs = root.join("kubepods/besteffort").join(format!("pod{uid}x"));
        fs::create_dir_all(&cgroupfs).unwrap();
        assert_eq!(pod_cgroup(&root, uid), Some(pod), "systemd driver");
        assert_eq!(pod_cgroup(&root, "2f3c1c38-6a0e-4b55-9d5e-0c4d4a1b7e02"), None, "another uid");
        fs::remove_dir_all(root.join("kubepods.slice")).unwrap();
        let plain = root.join("kubepods/besteffort").join(format!("pod{uid}"));
        fs::create_dir_all(plain.join("0123")).unwrap();
        assert_eq!(pod_cgroup(&root, uid), Some(plain), "cgroupfs driver");
        fs::remove_dir_all(&root).unwrap();
    }
}
