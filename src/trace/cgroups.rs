//! Who a traced socket belongs to: the cgroup of the task, by id, and the
//! container id its path names, if any.

use std::{collections::HashMap, path::Path};

use crate::bpf::cgroup;

/// Cgroup paths (relative to the cgroup2 mount) by id, found once each.
#[derive(Default)]
pub struct CgroupNames {
    known: HashMap<u64, Option<String>>,
}

impl CgroupNames {
    /// The cgroup's path under the cgroup2 mount, as in /proc/PID/cgroup;
    /// None when it is gone (the task exited and its cgroup was removed).
    pub fn path(&mut self, id: u64) -> Option<&str> {
        self.known
            .entry(id)
            .or_insert_with(|| {
                let mount = cgroup::cgroup2_mount().ok()?;
                let path = cgroup::cgroup_path(id)?;
                let relative = path.strip_prefix(&mount).ok()?;
                Some(format!("/{}", relative.display()))
            })
            .as_deref()
    }
}

/// The container id a cgroup path names: a 64-hex-digit last component,
/// bare (cgroupfs driver: `/kubepods/burstable/pod.../<id>`, `/docker/<id>`)
/// or as a systemd scope (`docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`).
pub fn container_id(path: &str) -> Option<&str> {
    let last = Path::new(path).file_name()?.to_str()?;
    let scope = last.strip_suffix(".scope").unwrap_or(last);
    let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
        .iter()
        .find_map(|prefix| scope.strip_prefix(prefix))
        .unwrap_or(scope);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_come_from_runtime_cgroup_names() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod2.slice/crio-{id}.scope"),
            format!("/kubepods/burstable/pod3/{id}"),
            format!("/machine.slice/libpod-{id}.scope"),
        ] {
            assert_eq!(container_id(&path), Some(id), "{path}");
        }
        for path in ["/user.slice/user-0.slice/session-1.scope", "/", "/kubepods.slice/crio-conmon-abc.scope"]
        {
            assert_eq!(container_id(path), None, "{path}");
        }
        assert_eq!(container_id(&format!("/docker/{}", &id[1..])), None);
    }
}
