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
//! `AttachPoint` what it is attached to (`links` reads it back). The cgroup
//! hooks have one link on the target cgroup; the tc hooks one per device of
//! `load --devices`, and a `load` that names other devices attaches the new
//! ones and detaches those no longer named.

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
        CgroupAttachMode, CgroupSock, CgroupSockAddr, LinkOrder, Program, ProgramError, ProgramFd,
        SchedClassifier, links::FdLink, tc::TcAttachOptions,
    },
};

use balctl_common::map_names;

use super::{
    cgroup,
    devices::{self, Device},
    links::{self, LiveLink},
    maps::{EntryCounts, check_layout},
    object::{self, AttachPoint, HOOKS, Hook, MAPS, MapSpec, OBJECT, ProgramKind},
    pins::PinDir,
    reserved_ports, sys,
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
    /// A device's link whose device `--devices` no longer names.
    Detached,
}

#[derive(Debug, serde::Serialize)]
pub struct LoadReport {
    pub cgroup: PathBuf,
    /// The cgroup hooks.
    pub hooks: Vec<(&'static str, HookAction)>,
    /// The devices the tc programs are on after the load.
    pub devices: Vec<String>,
    /// The tc hooks' links, by pin name (`<hook>@<device>`).
    pub device_links: Vec<(String, HookAction)>,
    pub maps_created: Vec<&'static str>,
}

/// Where `load` attaches.
#[derive(Clone, Debug)]
pub struct Targets<'a> {
    /// `--cgroup`: None keeps the cgroup balctl is on, else the cgroup2 root.
    pub cgroup: Option<&'a Path>,
    /// `--devices`, each checked to exist: None keeps the devices the tc
    /// programs are on (none at first); an empty list detaches them all.
    pub devices: Option<Vec<Device>>,
}

pub fn load(pins: &PinDir, targets: &Targets<'_>, sizes: &MapSizes) -> Result<LoadReport> {
    load_object(OBJECT, pins, targets, sizes)
}

/// `load` with another build of the programs (`load --object`; the
/// connect bench compares the datapath with one built without its trace
/// event code), checked by `object::check` first.
pub fn load_object(
    object: &[u8],
    pins: &PinDir,
    targets: &Targets<'_>,
    sizes: &MapSizes,
) -> Result<LoadReport> {
    object::check(object).map_err(|err| input!("the eBPF object cannot be balctl's datapath: {err:#}"))?;
    pins.prepare()?;
    let (live, defunct) = links::live_links(pins)?;
    let target = target_cgroup(&live, targets.cgroup)?;
    let devices = targets.devices.clone().unwrap_or_else(|| attached_devices(&live));
    check_layout(pins, |name| sizes.get(name))?;

    let mut maps_created = Vec::new();
    for spec in MAPS {
        if !pins.map(spec.name)?.exists() {
            maps_created.push(spec.name);
        }
    }
    let fresh = live.is_empty() && maps_created.len() == MAPS.len();
    let attached = load_and_attach(object, pins, (&target, &devices), sizes, live);
    let result = attached.and_then(|(hooks, mut device_links)| {
        // The links of a device that is gone were dropped as defunct: detached too.
        let gone = defunct.into_iter().filter(|name| links::is_device_link(name));
        device_links.extend(gone.map(|name| (name, HookAction::Detached)));
        reserve_ports(&devices, &device_links)?;
        Ok((hooks, device_links))
    });
    match result {
        Ok((hooks, device_links)) => Ok(LoadReport {
            cgroup: target,
            hooks,
            devices: devices.into_iter().map(|device| device.name).collect(),
            device_links,
            maps_created,
        }),
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

/// The devices the live tc links are on (named as now, else as their pins
/// name them).
fn attached_devices(live: &BTreeMap<String, LiveLink>) -> Vec<Device> {
    let devices: BTreeSet<Device> = live
        .values()
        .filter_map(|link| match (&link.device, link.info.target) {
            (Some(pinned), sys::LinkTarget::Device { ifindex, .. }) => {
                Some(Device { name: devices::name_of(ifindex).unwrap_or_else(|| pinned.clone()), ifindex })
            }
            _ => None,
        })
        .collect();
    devices.into_iter().collect()
}

/// With tc programs on devices, the SNAT ports are reserved in this
/// network namespace; once a load took the last device away, released.
fn reserve_ports(devices: &[Device], device_links: &[(String, HookAction)]) -> Result<()> {
    if !devices.is_empty() {
        reserved_ports::reserve_snat_ports()
    } else if device_links.iter().any(|(_, action)| *action == HookAction::Detached) {
        reserved_ports::release_snat_ports()
    } else {
        Ok(())
    }
}

/// The cgroup hooks' actions, and the tc hooks' by pin name.
type Actions = (Vec<(&'static str, HookAction)>, Vec<(String, HookAction)>);

fn load_and_attach(
    object: &[u8],
    pins: &PinDir,
    (target, devices): (&Path, &[Device]),
    sizes: &MapSizes,
    mut live: BTreeMap<String, LiveLink>,
) -> Result<Actions> {
    // The pinned sockets map's number of sets, or the one about to be created's.
    let socket_sets = max_entries_after_load(pins, &object::spec(map_names::SOCKETS), sizes)?;
    let mut loader = pinned_maps_loader(pins, &socket_sets)?;
    for spec in MAPS {
        loader.map_max_entries(spec.name, requested_max_entries(&spec, sizes));
    }
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
    let mut device_actions = Vec::new();
    for hook in HOOKS {
        if !hook.attach.is_per_device() {
            let link = live.remove(hook.name);
            let action =
                attach_or_replace(&mut ebpf, pins, &hook, link, Target::Cgroup(&cgroup_dir, target))?;
            actions.push((hook.name, action));
            continue;
        }
        for device in devices {
            // A device is known by its ifindex: its link is kept across a rename.
            let on_device = |link: &LiveLink| {
                link.hook.name == hook.name
                    && matches!(link.info.target, sys::LinkTarget::Device { ifindex, .. } if ifindex == device.ifindex)
            };
            let pinned = live.iter().find(|(_, link)| on_device(link)).map(|(name, _)| name.clone());
            let link = pinned.as_ref().and_then(|name| live.remove(name));
            let action = attach_or_replace(&mut ebpf, pins, &hook, link, Target::Device(device))?;
            let name = pinned.unwrap_or_else(|| links::pin_name(&hook, Some(&device.name)));
            device_actions.push((name, action));
        }
    }
    // What is left are the links of devices no longer named.
    for (name, link) in &live {
        if link.device.is_some() {
            links::detach(pins, name, link)?;
            device_actions.push((name.clone(), HookAction::Detached));
        }
    }
    Ok((actions, device_actions))
}

/// What a hook's new link is made on.
#[derive(Clone, Copy)]
enum Target<'a> {
    Cgroup(&'a fs::File, &'a Path),
    Device(&'a Device),
}

/// Swaps the program behind a hook's live link, or attaches it anew and
/// pins the link.
fn attach_or_replace(
    ebpf: &mut aya::Ebpf,
    pins: &PinDir,
    hook: &Hook,
    live: Option<LiveLink>,
    target: Target<'_>,
) -> Result<HookAction> {
    let (pin, place) = match target {
        Target::Cgroup(_, path) => (links::pin_name(hook, None), path.display().to_string()),
        Target::Device(device) => {
            (links::pin_name(hook, Some(&device.name)), format!("device {}", device.name))
        }
    };
    let program = program(ebpf, hook)?;
    if let Some(link) = live {
        sys::link_update(link.fd.as_fd(), program.fd()?.as_fd())
            .with_context(|| format!("cannot replace the {pin} program"))?;
        return Ok(HookAction::Replaced);
    }
    let link =
        program.attach(hook, target).with_context(|| format!("cannot attach {} to {place}", hook.name))?;
    link.pin(pins.link(&pin)?).with_context(|| format!("cannot pin the {pin} link"))?;
    Ok(HookAction::Attached)
}

/// A hook's program, typed by the kind its hook names: aya loads and
/// attaches each kind through its own type.
enum HookProgram<'a> {
    CgroupSockAddr(&'a mut CgroupSockAddr),
    CgroupSock(&'a mut CgroupSock),
    SchedClassifier(&'a mut SchedClassifier),
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
        (ProgramKind::SchedClassifier, Program::SchedClassifier(program)) => {
            HookProgram::SchedClassifier(program)
        }
        (kind, _) => bail!("the program {} is a {prog_type:?} program, not a {kind:?} one", hook.program),
    })
}

impl HookProgram<'_> {
    fn load(&mut self) -> Result<(), ProgramError> {
        match self {
            Self::CgroupSockAddr(program) => program.load(),
            Self::CgroupSock(program) => program.load(),
            Self::SchedClassifier(program) => program.load(),
        }
    }

    fn fd(&self) -> Result<&ProgramFd, ProgramError> {
        match self {
            Self::CgroupSockAddr(program) => program.fd(),
            Self::CgroupSock(program) => program.fd(),
            Self::SchedClassifier(program) => program.fd(),
        }
    }

    /// Attaches the loaded program through a bpf_link that outlives this
    /// process once pinned. On a cgroup, `Single` is flags 0, the only ones
    /// a cgroup bpf_link takes; the kernel runs it alongside the hook's
    /// other programs as with `BPF_F_ALLOW_MULTI`. On a device, a tcx link
    /// first in the device's chain, so balctl translates a packet before
    /// other tc programs see it (aya's default order is last).
    fn attach(self, hook: &Hook, target: Target<'_>) -> Result<FdLink> {
        let link = match (self, target, hook.attach) {
            (Self::CgroupSockAddr(program), Target::Cgroup(dir, _), AttachPoint::Cgroup { .. }) => {
                let id = program.attach(dir, CgroupAttachMode::Single)?;
                program.take_link(id)?.try_into()?
            }
            (Self::CgroupSock(program), Target::Cgroup(dir, _), AttachPoint::Cgroup { .. }) => {
                let id = program.attach(dir, CgroupAttachMode::Single)?;
                program.take_link(id)?.try_into()?
            }
            (Self::SchedClassifier(program), Target::Device(device), AttachPoint::Tcx { direction }) => {
                let order = TcAttachOptions::TcxOrder(LinkOrder::first());
                let id = program.attach_with_options(&device.name, direction, order)?;
                program.take_link(id)?.try_into()?
            }
            _ => bail!("the {} hook is not attached this way ({})", hook.name, hook.attach),
        };
        Ok(link)
    }
}

/// A loader whose maps are the pin dir's: a pinned one is used, a missing
/// one is created and pinned there. The datapath finds a socket's set by
/// `socket_sets`, the number of sets of the sockets map it will use.
pub fn pinned_maps_loader<'a>(pins: &PinDir, socket_sets: &'a u32) -> Result<EbpfLoader<'a>> {
    let mut loader = EbpfLoader::new();
    for spec in MAPS {
        loader.map_pin_path(spec.name, pins.map(spec.name)?);
    }
    loader.override_global(object::SOCKET_SETS, socket_sets, true);
    Ok(loader)
}

/// The cgroup to attach to: where balctl already is, else `--cgroup`, else
/// the cgroup2 root.
fn target_cgroup(live: &BTreeMap<String, LiveLink>, requested: Option<&Path>) -> Result<PathBuf> {
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
    /// By pin name: the cgroup hooks', then `<hook>@<device>`.
    pub links_detached: Vec<String>,
    pub maps_removed: Vec<String>,
}

/// Detaches every hook and removes every pin; with tc programs on devices,
/// releases the SNAT ports reserved for them first: while their links are
/// pinned, a failed release (a read-only /proc/sys) can be retried by
/// unloading again, which it could not once they were gone.
pub fn unload(pins: &PinDir) -> Result<UnloadReport> {
    if pins.pinned_links()?.iter().any(|name| links::is_device_link(name)) {
        reserved_ports::release_snat_ports()?;
    }
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
        external: capacity(map_names::EXTERNAL)?,
        maglev: capacity(map_names::MAGLEV)?,
        source_ranges: capacity(map_names::SOURCE_RANGES)?,
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
