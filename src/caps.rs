//! Capabilities the kernel requires of some commands, checked before they
//! start, so that a missing one is one sentence naming it rather than an
//! EPERM from deep inside a bpf() call.

use std::{fs, io, path::Path};

use anyhow::{Result, anyhow, bail};

/// A capability (its number in `capabilities(7)`) and its name.
#[derive(Clone, Copy)]
pub struct Capability(u32, &'static str);

pub const NET_ADMIN: Capability = Capability(12, "CAP_NET_ADMIN");
pub const PERFMON: Capability = Capability(38, "CAP_PERFMON");
pub const BPF: Capability = Capability(39, "CAP_BPF");

/// Fails, naming what is missing, unless this process has every one of
/// `needed` in its effective set. `what` is the command (`balctl load`).
pub fn require(what: &str, needed: &[Capability]) -> Result<()> {
    // An unreadable status (no /proc) leaves the check to the kernel.
    let Some(effective) = effective() else { return Ok(()) };
    let missing: Vec<&str> = needed.iter().filter(|c| effective & (1 << c.0) == 0).map(|c| c.1).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let all: Vec<&str> = needed.iter().map(|c| c.1).collect();
    bail!(
        "{what} needs {}; this process lacks {}: run it as root (or grant them, e.g. in the container's securityContext)",
        all.join(", "),
        missing.join(" and ")
    )
}

/// The effective capability set, from /proc/self/status (`CapEff`).
fn effective() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Commands that work through the pins and the state dir need no
/// capability, only access to them: they are root's alone (mode 0700).
/// Another user gets this sentence instead of an EACCES from bpf().
pub fn denied(path: &Path) -> anyhow::Error {
    anyhow!(
        "permission denied opening {}: balctl's pins and state dir are root's alone (mode 0700); \
         run balctl as root",
        path.display()
    )
}

pub fn is_denied(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::PermissionDenied
}
