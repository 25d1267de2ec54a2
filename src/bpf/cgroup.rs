//! cgroup v2: where it is mounted (pure v2 at /sys/fs/cgroup, or hybrid at
//! /sys/fs/cgroup/unified) and how cgroup ids map to paths.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// The cgroup2 mount point, read from /proc/self/mounts.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(_), Some(mount_point), Some("cgroup2")) = (fields.next(), fields.next(), fields.next()) {
            return Ok(PathBuf::from(unescape_mount_path(mount_point)));
        }
    }
    bail!(
        "no cgroup2 filesystem is mounted; balctl attaches to a cgroup v2 (mount one with `mount -t cgroup2 none /sys/fs/cgroup`)"
    )
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(path: &str) -> String {
    path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// A cgroup's id is the inode number of its directory on cgroup2.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path).with_context(|| format!("cannot stat cgroup {}", path.display()))?.ino())
}

/// Finds the cgroup directory with `id` under the cgroup2 mount.
pub fn cgroup_path(id: u64) -> Option<PathBuf> {
    let root = cgroup2_mount().ok()?;
    let mut pending = vec![root];
    while let Some(dir) = pending.pop() {
        if fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            return Some(dir);
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        pending
            .extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    None
}

/// Checks that `path` is a cgroup v2 directory balctl can attach to.
pub fn check_cgroup_dir(path: &Path) -> Result<()> {
    let mount = cgroup2_mount()?;
    if !path.starts_with(&mount) || !path.join("cgroup.procs").exists() {
        bail!("{} is not a cgroup v2 directory (cgroup2 is mounted at {})", path.display(), mount.display());
    }
    Ok(())
}
