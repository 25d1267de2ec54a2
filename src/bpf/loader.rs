//! Loading, replacing and removing the datapath.
//!
//! A first `load` creates and pins the maps, attaches one program per hook
//! through a bpf_link and pins the link. Every later `load` reuses the pinned
//! maps and swaps the programs behind the existing links with
//! `BPF_LINK_UPDATE`: the hook is never empty, never attached twice, and the
//! map contents are untouched.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    EbpfLoader,
    programs::{CgroupAttachMode, Program, links::FdLink},
};

use balctl_common::map_names;

use super::{
    cgroup,
    maps::{EntryCounts, check_layout},
    object::{self, HOOKS, Hook, MAPS, MapSpec, OBJECT},
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

/// A pinned link with what the kernel says of it.
struct LiveLink {
    fd: OwnedFd,
    info: sys::CgroupLinkInfo,
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
    let live = live_links(pins)?;
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
        let loaded = match program(&mut ebpf, &hook)? {
            Program::CgroupSockAddr(program) => program.load(),
            Program::CgroupSock(program) => program.load(),
            _ => unreachable!("`program` returns cgroup sock programs only"),
        };
        loaded.with_context(|| format!("the kernel rejected the {} program", hook.name))?;
    }

    let cgroup_dir =
        fs::File::open(target).with_context(|| format!("cannot open cgroup {}", target.display()))?;
    let mut actions = Vec::new();
    for hook in HOOKS {
        let program = program(&mut ebpf, &hook)?;
        let action = match live.remove(hook.name) {
            Some(link) => {
                let prog_fd = program.fd()?.as_fd();
                sys::link_update(link.fd.as_fd(), prog_fd)
                    .with_context(|| format!("cannot replace the {} program", hook.name))?;
                HookAction::Replaced
            }
            None => {
                let link = attach(program, &cgroup_dir)
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

/// A hook's program: a cgroup sock_addr program, or the cgroup sock
/// program of sock_release.
fn program<'a>(ebpf: &'a mut aya::Ebpf, hook: &Hook) -> Result<&'a mut Program> {
    let program = ebpf
        .program_mut(hook.program)
        .ok_or_else(|| anyhow!("the eBPF object has no program {}", hook.program))?;
    match program {
        Program::CgroupSockAddr(_) | Program::CgroupSock(_) => Ok(program),
        other => {
            bail!("the program {} is a {:?} program, not a cgroup sock one", hook.program, other.prog_type())
        }
    }
}

/// Attaches a loaded hook program to the cgroup through a bpf_link that
/// outlives this process once pinned.
fn attach(program: &mut Program, cgroup_dir: &fs::File) -> Result<FdLink> {
    let link = match program {
        Program::CgroupSockAddr(program) => {
            let id = program.attach(cgroup_dir, CgroupAttachMode::Single)?;
            program.take_link(id)?.try_into()?
        }
        Program::CgroupSock(program) => {
            let id = program.attach(cgroup_dir, CgroupAttachMode::Single)?;
            program.take_link(id)?.try_into()?
        }
        _ => unreachable!("`program` returns cgroup sock programs only"),
    };
    Ok(link)
}

/// Pinned links that are still attached. A link whose cgroup is gone is
/// defunct: its pin is removed so the hook is attached anew.
fn live_links(pins: &PinDir) -> Result<BTreeMap<&'static str, LiveLink>> {
    let mut links = pinned_links(pins)?;
    let defunct: Vec<&'static str> =
        links.iter().filter(|(_, link)| link.info.cgroup_id == 0).map(|(&hook, _)| hook).collect();
    for hook in defunct {
        let path = pins.link(hook)?;
        log::info!("removing defunct link {}", path.display());
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        links.remove(hook);
    }
    Ok(links)
}

/// Every pinned link, attached or not.
fn pinned_links(pins: &PinDir) -> Result<BTreeMap<&'static str, LiveLink>> {
    let mut links = BTreeMap::new();
    for hook in HOOKS {
        let path = pins.link(hook.name)?;
        if path.exists() {
            let fd =
                sys::obj_get(&path).with_context(|| format!("cannot open pinned link {}", path.display()))?;
            let info = sys::cgroup_link_info(fd.as_fd())?;
            links.insert(hook.name, LiveLink { fd, info });
        }
    }
    Ok(links)
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
    let attached: BTreeSet<u64> = live.values().map(|link| link.info.cgroup_id).collect();
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

/// Detaches every hook and removes every pin. Detaching explicitly (rather
/// than only unpinning) ends the attachment even if some other process still
/// holds a link open.
pub fn unload(pins: &PinDir) -> Result<UnloadReport> {
    let mut report = UnloadReport::default();
    for hook in HOOKS {
        let path = pins.link(hook.name)?;
        if !path.exists() {
            continue;
        }
        let fd =
            sys::obj_get(&path).with_context(|| format!("cannot open pinned link {}", path.display()))?;
        match sys::link_detach(fd.as_fd()) {
            // Already detached (its cgroup was removed): only the pin is left.
            Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
            other => other.with_context(|| format!("cannot detach {}", hook.name))?,
        }
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        report.links_detached.push(hook.name);
    }
    for name in pins.pinned_maps()? {
        let path = pins.map(&name)?;
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        report.maps_removed.push(name);
    }
    pins.remove_dirs();
    Ok(report)
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

/// Whether any hook is pinned here.
pub fn is_loaded(pins: &PinDir) -> Result<bool> {
    for hook in HOOKS {
        if pins.link(hook.name)?.exists() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One hook as the kernel reports it.
#[derive(Debug, serde::Serialize)]
pub struct HookState {
    pub hook: &'static str,
    pub link_id: u32,
    pub program_id: u32,
    /// Programs attached to the cgroup for this hook, balctl's included;
    /// exactly 1 when balctl is the only one.
    pub attached_programs: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct AttachState {
    pub cgroup: Option<PathBuf>,
    pub cgroup_id: u64,
    pub hooks: Vec<HookState>,
    /// Hooks with no pinned link (a partial load).
    pub missing_hooks: Vec<&'static str>,
}

pub fn attach_state(pins: &PinDir) -> Result<AttachState> {
    let live = pinned_links(pins)?;
    let cgroup_id = live.values().map(|l| l.info.cgroup_id).find(|&id| id != 0).unwrap_or(0);
    let cgroup = (cgroup_id != 0).then(|| cgroup::cgroup_path(cgroup_id)).flatten();
    let cgroup_dir = cgroup.as_ref().and_then(|path| fs::File::open(path).ok());
    let mut hooks = Vec::new();
    let mut missing_hooks = Vec::new();
    for hook in HOOKS {
        let Some(link) = live.get(hook.name) else {
            missing_hooks.push(hook.name);
            continue;
        };
        let attached_programs = match &cgroup_dir {
            Some(dir) => sys::cgroup_attached_programs(dir.as_fd(), hook.kernel_attach_type())?.len(),
            None => 0,
        };
        hooks.push(HookState {
            hook: hook.name,
            link_id: link.info.link_id,
            program_id: link.info.program_id,
            attached_programs,
        });
    }
    Ok(AttachState { cgroup, cgroup_id, hooks, missing_hooks })
}
