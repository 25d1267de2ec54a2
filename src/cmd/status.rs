//! `balctl status`: loaded or not, on which cgroup and devices, which programs, how full
//! the maps are, whether the sockets map lost translations, what is applied
//! and whether the maps drifted from it. The exit code says which of
//! "loaded and in sync", "not loaded" and "drifted" it is (src/error.rs).

use std::path::{Path, PathBuf};

use anyhow::Result;
use balctl_common::map_names;
use serde::Serialize;

use super::Context;
use crate::{
    bpf::{
        cgroup, inventory,
        links::{self, AttachState},
        maps::{Datapath, MapContents},
    },
    caps,
    error::StatusProblem,
    output::{count, print_structured, table},
    plan::Plan,
    stats::DatapathCounters,
};

#[derive(Serialize)]
struct Status {
    loaded: bool,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    #[serde(flatten)]
    attach: Option<AttachState>,
    programs: Vec<ProgramRow>,
    maps: Vec<MapRow>,
    /// Open sockets whose way of the full sockets map a new socket took
    /// (`dump stats`); null when not loaded.
    evicted_translations: Option<u64>,
    policies: usize,
    /// Objects applied by `balctl sync`.
    synced: usize,
    frontends: usize,
    backends: usize,
    /// Map entries that differ from the applied state; `balctl load` repairs them.
    drift: Option<usize>,
    /// A change was killed during its map writes; the next change or
    /// `balctl load` repairs the maps from what they hold.
    interrupted_change: bool,
    kernel: Kernel,
}

#[derive(Serialize)]
struct ProgramRow {
    id: u32,
    name: String,
    tag: String,
}

#[derive(Serialize)]
struct MapRow {
    name: &'static str,
    entries: usize,
    capacity: u32,
}

#[derive(Serialize)]
struct Kernel {
    release: String,
    cgroup2: Option<PathBuf>,
    btf: bool,
}

pub fn run(ctx: &Context) -> Result<()> {
    // Querying the programs attached to a cgroup needs it.
    caps::require("balctl status", &[caps::NET_ADMIN])?;
    let state = ctx.state.read()?;
    let loaded = links::is_loaded(&ctx.pins)?;
    let (attach, programs, maps, evicted, drift) = if loaded {
        let attach = links::attach_state(&ctx.pins)?;
        let programs = programs(&attach)?;
        let datapath = Datapath::open(&ctx.pins)?;
        let contents = datapath.read_contents()?;
        let drift = Plan::repair(&contents, &MapContents::of(&state.image)).len();
        let evicted = DatapathCounters::read(&ctx.pins)?.evicted_translations;
        (Some(attach), programs, map_rows(&ctx.pins)?, Some(evicted), Some(drift))
    } else {
        (None, Vec::new(), Vec::new(), None, None)
    };
    let status = Status {
        loaded,
        pin_dir: ctx.pins.root().to_owned(),
        state_dir: ctx.state.root().to_owned(),
        attach,
        programs,
        maps,
        evicted_translations: evicted,
        policies: state.policies.len(),
        synced: state.synced.len(),
        frontends: state.image.frontends.len(),
        backends: state.image.backends.len(),
        drift,
        interrupted_change: ctx.state.map_writes_interrupted()?,
        kernel: kernel(),
    };
    if ctx.output.is_table() {
        print_table(&status);
    } else {
        print_structured(ctx.output, &status)?;
    }
    match status.problem() {
        Some(problem) => Err(problem.into()),
        None => Ok(()),
    }
}

impl Status {
    /// What keeps this status from "loaded and in sync", which decides the exit code.
    fn problem(&self) -> Option<StatusProblem> {
        let missing_hooks = self.attach.as_ref().is_some_and(|attach| !attach.missing_hooks.is_empty());
        if !self.loaded {
            Some(StatusProblem::NotLoaded)
        } else if self.drift.is_some_and(|n| n > 0) || missing_hooks || self.interrupted_change {
            Some(StatusProblem::Drift)
        } else {
            None
        }
    }
}

fn programs(attach: &AttachState) -> Result<Vec<ProgramRow>> {
    let ids: Vec<u32> = attach
        .hooks
        .iter()
        .map(|h| h.program_id)
        .chain(attach.devices.iter().map(|d| d.program_id))
        .collect();
    let mut rows = Vec::new();
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        if ids.contains(&info.id()) {
            rows.push(ProgramRow {
                id: info.id(),
                name: info.name_as_str().unwrap_or("?").to_owned(),
                tag: format!("{:016x}", info.tag()),
            });
        }
    }
    Ok(rows)
}

/// Fill levels of the maps that hold entries. Ring buffers are left out:
/// they hold bytes of events, not entries (`dump config` shows their size).
fn map_rows(pins: &crate::bpf::pins::PinDir) -> Result<Vec<MapRow>> {
    Ok(inventory::map_fills(pins)?
        .into_iter()
        .filter_map(|fill| Some(MapRow { name: fill.name, entries: fill.entries?, capacity: fill.capacity }))
        .collect())
}

fn kernel() -> Kernel {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Kernel {
        release,
        cgroup2: cgroup::cgroup2_mount().ok(),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
    }
}

fn state_summary(status: &Status) -> String {
    format!(
        "{}, {}, {}, {}",
        count(status.policies, "policy", "policies"),
        count(status.synced, "synced object", "synced objects"),
        count(status.frontends, "frontend", "frontends"),
        count(status.backends, "backend", "backends")
    )
}

fn print_table(status: &Status) {
    let Some(attach) = &status.attach else {
        println!("balctl is not loaded (pin dir {})", status.pin_dir.display());
        println!(
            "state: {} in {}; `balctl load` attaches and restores them",
            state_summary(status),
            status.state_dir.display()
        );
        return;
    };
    let cgroup = attach.cgroup.as_ref().map_or_else(|| "(gone)".to_owned(), |p| p.display().to_string());
    println!("balctl is loaded");
    println!("  pin dir:  {}", status.pin_dir.display());
    println!("  cgroup:   {cgroup} (id {})", attach.cgroup_id);
    if !attach.missing_hooks.is_empty() {
        println!("  MISSING hooks: {} (run `balctl load` to attach them)", attach.missing_hooks.join(", "));
    }
    println!();
    let mut hooks = table(["HOOK", "LINK", "PROGRAM", "NAME", "TAG", "ATTACHED"]);
    for hook in &attach.hooks {
        let program = status.programs.iter().find(|p| p.id == hook.program_id);
        hooks.add_row([
            hook.hook.to_owned(),
            hook.link_id.to_string(),
            hook.program_id.to_string(),
            program.map_or("?", |p| p.name.as_str()).to_owned(),
            program.map_or("?", |p| p.tag.as_str()).to_owned(),
            hook.attached_programs.to_string(),
        ]);
    }
    println!("{hooks}\n");
    if !attach.devices.is_empty() {
        let mut devices = table(["DEVICE", "IFINDEX", "DIRECTION", "HOOK", "LINK", "PROGRAM", "ATTACHED"]);
        for link in &attach.devices {
            let device = if link.defunct { format!("{} (gone)", link.device) } else { link.device.clone() };
            devices.add_row([
                device,
                link.ifindex.to_string(),
                link.direction.to_owned(),
                link.hook.to_owned(),
                link.link_id.to_string(),
                link.program_id.to_string(),
                link.attached_programs.to_string(),
            ]);
        }
        println!("{devices}\n");
    }
    let mut maps = table(["MAP", "ENTRIES", "CAPACITY", "FILL"]);
    for map in &status.maps {
        let fill = 100.0 * map.entries as f64 / f64::from(map.capacity);
        maps.add_row([
            map.name.to_owned(),
            map.entries.to_string(),
            map.capacity.to_string(),
            format!("{fill:.1}%"),
        ]);
    }
    println!("{maps}\n");
    let sockets = status.maps.iter().find(|map| map.name == map_names::SOCKETS);
    if let (Some(evicted @ 1..), Some(sockets)) = (status.evicted_translations, sockets) {
        println!("{}\n", eviction_warning(evicted, sockets.capacity));
    }
    println!("state:   {} ({})", state_summary(status), status.state_dir.display());
    match status.drift {
        Some(0) | None => println!("drift:   none (maps match the applied state)"),
        Some(n) => {
            println!("drift:   {n} map entries differ from the applied state; `balctl load` repairs them")
        }
    }
    if status.interrupted_change {
        println!(
            "         a change was interrupted during its map writes; \
             the next sync, policy change or `balctl load` repairs the maps"
        );
    }
    println!(
        "kernel:  {}, cgroup2 at {}, BTF {}",
        status.kernel.release,
        status.kernel.cgroup2.as_ref().map_or_else(|| "(none)".into(), |p| p.display().to_string()),
        if status.kernel.btf { "yes" } else { "no" }
    );
}

/// What `evicted` lost translations mean and how to resize the sockets map
/// of `capacity` sockets. The peak of open sockets is not known (the map
/// only holds those that kept a way), so the size suggested is four times
/// the current one; a map keeps its size while loaded.
fn eviction_warning(evicted: u64, capacity: u32) -> String {
    let suggested = (u64::from(capacity) * 4).next_power_of_two().min(1 << 31);
    let evicted = count(usize::try_from(evicted).unwrap_or(usize::MAX), "translation", "translations");
    format!(
        "WARNING: {evicted} of open sockets evicted: the sockets map (room for {capacity}) was full, so new\n\
         \x20        sockets took the ways of open ones, whose getpeername() and recvmsg() now show the\n\
         \x20        backend, not the service. The map needs a way for every translated socket open at once,\n\
         \x20        with room to spare for its 4-way sets. Fix: `balctl unload --yes`, then\n\
         \x20        `balctl load --map-size sockets={suggested}` (a pinned map keeps its size; load restores\n\
         \x20        every applied rule)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eviction_warning_says_what_was_lost_and_the_fix() {
        let warning = eviction_warning(236, 64);
        assert!(warning.starts_with("WARNING: 236 translations of open sockets evicted"), "{warning}");
        assert!(warning.contains("getpeername() and recvmsg()"), "{warning}");
        assert!(warning.contains("`balctl load --map-size sockets=256`"), "{warning}");
        assert!(eviction_warning(1, 262_144).contains("sockets=1048576`"));
        // Never beyond what --map-size takes.
        assert!(eviction_warning(1, u32::MAX).contains("sockets=2147483648`"));
    }
}
