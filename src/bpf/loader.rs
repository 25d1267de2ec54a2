//! Loading, replacing and removing the datapath.
//!
//! A first `load` creates and pins the maps, attaches one program per hook
//! through a bpf_link and pins the link. Every later `load` reuses the pinned
//! maps and swaps the programs behind the existing links with
//! `BPF_LINK_UPDATE`: the hook is never empty, never attached twice, and the
//! map contents are untouched.
//!
//! What to load and where to attach it comes from `object::HOOKS`: each
//! hook's `ProgramKind` says how aya loads and attaches its program, its
//! `AttachPoint` what it is attached to (`links` reads it back).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, Program, ProgramError, ProgramFd, links::FdLink,
    },
};

use balctl_common::map_names;

use super::{
    cgroup,
    links::{self, LiveLink},
    maps::{EntryCounts, check_layout},
    object::{self, HOOKS, Hook, MAPS, MapSpec, OBJECT, ProgramKind},
    pins::PinDir,
    sys,
};
use crate::input;

/// Capacities given with `--map-size NAME=N`; the rest keep their defaults
/// (new maps) or their current size (reused maps).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSizes(pub BTreeMap<String, u32>);

impl MapSizes {
    pub fn get(&self, size_name: &str) -> Option<u32> {
        self.0.get(size_name).copied()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookAction {
    Attached,
    Replaced,
}

#[derive(Debug, serde::Serialize)]
pub struct LoadReport {
    pub cgroup: PathBuf,
    pub hooks: Vec<(&'static str, HookAction)>,
    pub maps_created: Vec<&'static str>,
}

pub fn load(pins: &PinDir, cgroup: Option<&Path>, sizes: &MapSizes) -> Result<LoadReport> {
    load_object(OBJECT, pins, cgroup, sizes)
}

/// `load` with another build of the programs (`load --object`; the
/// connect bench compares the datapath with one built without its trace
/// event code), checked by `object::check` first.
pub fn load_object(
    object: &[u8],
    pins: &PinDir,
    cgroup: Option<&Path>,
    sizes: &MapSizes,
) -> Result<LoadReport> {
    object::check(object).map_err(|err| input!("the eBPF object cannot be balctl's datapath: {err:#}"))?;
    pins.prepare()?;
    let live = links::live_links(pins)?;
    let target = target_cgroup(&live, cgroup)?;
    check_layout(pins, |name| sizes.get(name))?;

    let mut maps_created = Vec::new();
    for spec in MAPS {
        if !pins.map(spec.name)?.exists() {
            maps_created.push(spec.name);
        }
    }
    let fresh = live.is_empty() && maps_created.len() == MAPS.len();
    let result = load_and_attach(object, pins, &target, sizes, live);
    match result {
        Ok(hooks) => Ok(LoadReport { cgroup: target, hooks, maps_created }),
        Err(err) if fresh => {
            // Nothing was there before: leave nothing behind.
            if let Err(cleanup) = unload(pins) {
                log::warn!("cleaning up after the failed load: {cleanup:#}");
            }
            Err(err)
        }
        Err(err) => Err(err),
    }
}

fn load_and_attach(
    object: &[u8],
    pins: &PinDir,
    target: &Path,
    sizes: &MapSizes,
    mut live: BTreeMap<&'static str, LiveLink>,
) -> Result<Vec<(&'static str, HookAction)>> {
    let mut loader = EbpfLoader::new();
    let map_paths: Vec<(&str, PathBuf)> =
        MAPS.iter().map(|spec| Ok((spec.name, pins.map(spec.name)?))).collect::<Result<_>>()?;
    for ((name, path), spec) in map_paths.iter().zip(MAPS) {
        loader.map_pin_path(name, path.as_path());
        loader.map_max_entries(name, requested_max_entries(&spec, sizes));
    }
    // The datapath finds a socket's set by the number of sets of the map
    // it will use: the pinned one, or the one about to be created.
    let socket_sets = max_entries_after_load(pins, &object::spec(map_names::SOCKETS), sizes)?;
    loader.override_global(object::SOCKET_SETS, &socket_sets, true);
    let mut ebpf = loader.load(object).context("cannot load the eBPF object")?;

    // Verify every program before touching any hook, so a verifier
    // rejection leaves the running datapath as it was.
    for hook in HOOKS {
        program(&mut ebpf, &hook)?
            .load()
            .with_context(|| format!("the kernel rejected the {} program", hook.name))?;
    }

    let cgroup_dir =
        fs::File::open(target).with_context(|| format!("cannot open cgroup {}", target.display()))?;
    let mut actions = Vec::new();
    for hook in HOOKS {
        let program = program(&mut ebpf, &hook)?;
        let action = match live.remove(hook.name) {
            Some(link) => {
                sys::link_update(link.fd.as_fd(), program.fd()?.as_fd())
                    .with_context(|| format!("cannot replace the {} program", hook.name))?;
                HookAction::Replaced
            }
            None => {
                let link = program
                    .attach(&cgroup_dir)
                    .with_context(|| format!("cannot attach {} to {}", hook.name, target.display()))?;
                link.pin(pins.link(hook.name)?)
                    .with_context(|| format!("cannot pin the {} link", hook.name))?;
                HookAction::Attached
            }
        };
        actions.push((hook.name, action));
    }
    Ok(actions)
}

/// A hook's program, typed by the kind its hook names: aya loads and
/// attaches each kind through its own type (a tcx program will be a
/// `SchedClassifier` attached per device with its hook's direction).
enum HookProgram<'a> {
    CgroupSockAddr(&'a mut CgroupSockAddr),
    CgroupSock(&'a mut CgroupSock),
}

/// A hook's program in the loaded object, if it is of the hook's kind.
fn program<'a>(ebpf: &'a mut aya::Ebpf, hook: &Hook) -> Result<HookProgram<'a>> {
    let program = ebpf
        .program_mut(hook.program)
        .ok_or_else(|| anyhow!("the eBPF object has no program {}", hook.program))?;
    let prog_type = program.prog_type();
    Ok(match (hook.kind, program) {
        (ProgramKind::CgroupSockAddr, Program::CgroupSockAddr(program)) => {
            HookProgram::CgroupSockAddr(program)
        }
        (ProgramKind::CgroupSock, Program::CgroupSock(program)) => HookProgram::CgroupSock(program),
        (kind, _) => bail!("the program {} is a {prog_type:?} program, not a {kind:?} one", hook.program),
    })
}

impl HookProgram<'_> {
    fn load(&mut self) -> Result<(), ProgramError> {
        match self {
            Self::CgroupSockAddr(program) => program.load(),
            Self::CgroupSock(program) => program.load(),
        }
    }

    fn fd(&self) -> Result<&ProgramFd, ProgramError> {
        match self {
            Self::CgroupSockAddr(program) => program.fd(),
            Self::CgroupSock(program) => program.fd(),
        }
    }

    /// Attaches the loaded program to the target cgroup through a bpf_link
    /// that outlives this process once pinned. `Single` is flags 0, the only
    /// ones a cgroup bpf_link takes; the kernel runs it alongside the
    /// hook's other programs as with `BPF_F_ALLOW_MULTI`.
    fn attach(self, cgroup_dir: &fs::File) -> Result<FdLink> {
        let link = match self {
            Self::CgroupSockAddr(program) => {
                let id = program.attach(cgroup_dir, CgroupAttachMode::Single)?;
                program.take_link(id)?.try_into()?
            }
            Self::CgroupSock(program) => {
                let id = program.attach(cgroup_dir, CgroupAttachMode::Single)?;
                program.take_link(id)?.try_into()?
            }
        };
        Ok(link)
    }
}

/// The cgroup to attach to: where balctl already is, else `--cgroup`, else
/// the cgroup2 root.
fn target_cgroup(live: &BTreeMap<&'static str, LiveLink>, requested: Option<&Path>) -> Result<PathBuf> {
    let requested = requested
        .map(|path| -> Result<PathBuf> {
            let path = path.canonicalize().map_err(|e| input!("invalid --cgroup {}: {e}", path.display()))?;
            cgroup::check_cgroup_dir(&path).map_err(|e| input!("invalid --cgroup: {e:#}"))?;
            Ok(path)
        })
        .transpose()?;
    let attached: BTreeSet<u64> = live.values().filter_map(|link| link.info.target.cgroup_id()).collect();
    let Some(&attached_id) = attached.first() else {
        return match requested {
            Some(path) => Ok(path),
            None => cgroup::cgroup2_mount(),
        };
    };
    let attached_path = cgroup::cgroup_path(attached_id);
    let description = attached_path
        .as_ref()
        .map_or_else(|| format!("cgroup id {attached_id}"), |p| p.display().to_string());
    if attached.len() > 1 {
        bail!("balctl's links are attached to several cgroups; run `balctl unload --yes` and load again");
    }
    if let Some(path) = &requested
        && cgroup::cgroup_id(path)? != attached_id
    {
        return Err(input!(
            "balctl is already loaded on {}; it cannot also attach to --cgroup {}. \
             Run `balctl unload` first to move it",
            description,
            path.display()
        ));
    }
    attached_path.ok_or_else(|| anyhow!("cannot find the directory of {description} under the cgroup2 mount"))
}

#[derive(Debug, Default, serde::Serialize)]
pub struct UnloadReport {
    pub links_detached: Vec<&'static str>,
    pub maps_removed: Vec<String>,
}

/// Detaches every hook and removes every pin.
pub fn unload(pins: &PinDir) -> Result<UnloadReport> {
    let links_detached = links::detach_all(pins)?;
    let mut maps_removed = Vec::new();
    for name in pins.pinned_maps()? {
        let path = pins.map(&name)?;
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        maps_removed.push(name);
    }
    pins.remove_dirs();
    Ok(UnloadReport { links_detached, maps_removed })
}

/// The capacities the balancing maps have after `load`: pinned maps keep
/// theirs, new ones get their `--map-size` or the default.
pub fn capacities_after_load(pins: &PinDir, sizes: &MapSizes) -> Result<EntryCounts> {
    let capacity = |name: &str| -> Result<u64> {
        let spec = object::spec(name);
        Ok(u64::from(spec.capacity_of(max_entries_after_load(pins, &spec, sizes)?)))
    };
    Ok(EntryCounts {
        services: capacity(map_names::SERVICES)?,
        backends: capacity(map_names::BACKENDS)?,
        membership: capacity(map_names::MEMBERSHIP)?,
        nodes: capacity(map_names::NODES)?,
        maglev: capacity(map_names::MAGLEV)?,
    })
}

/// A new map's `max_entries`: its `--map-size`, else its default.
fn requested_max_entries(spec: &MapSpec, sizes: &MapSizes) -> u32 {
    spec.max_entries_for(spec.size_name.and_then(|n| sizes.get(n)).unwrap_or(spec.default_capacity))
}

/// The `max_entries` a map has after `load`: the pinned map's, else the
/// requested one.
fn max_entries_after_load(pins: &PinDir, spec: &MapSpec, sizes: &MapSizes) -> Result<u32> {
    let path = pins.map(spec.name)?;
    if !path.exists() {
        return Ok(requested_max_entries(spec, sizes));
    }
    let info =
        aya::maps::MapInfo::from_pin(&path).with_context(|| format!("cannot inspect {}", path.display()))?;
    Ok(info.max_entries())
}
