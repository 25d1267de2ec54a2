//! balctl's pinned links: one per cgroup hook, pinned as the hook's name,
//! and one per tc hook and device, pinned as `<hook>@<device>`. What the
//! kernel says each is attached to, which are defunct, detaching them, and
//! what `status` reports of them. Each hook's `AttachPoint` says where to
//! look.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use aya::programs::TcAttachType;

use super::{
    cgroup, devices,
    object::{AttachPoint, HOOKS, Hook, direction_name},
    pins::PinDir,
    sys::{self, LinkTarget, QueryTarget},
};

/// A pinned link with what the kernel says of it.
pub struct LiveLink {
    pub hook: Hook,
    /// For a tc hook's link, the device named in its pin.
    pub device: Option<String>,
    pub fd: OwnedFd,
    pub info: sys::LinkInfo,
}

/// The pin name of `hook`'s link, on `device` for a tc hook.
pub fn pin_name(hook: &Hook, device: Option<&str>) -> String {
    match device {
        Some(device) => format!("{}@{device}", hook.name),
        None => hook.name.to_owned(),
    }
}

/// The hook and device a pin name stands for; None for a name balctl
/// does not make.
fn parse_pin_name(name: &str) -> Option<(Hook, Option<String>)> {
    let (hook, device) = match name.split_once('@') {
        Some((hook, device)) => (hook, Some(device.to_owned())),
        None => (name, None),
    };
    let hook = HOOKS.into_iter().find(|h| h.name == hook)?;
    (hook.attach.is_per_device() == device.is_some()).then_some((hook, device))
}

/// Pinned links that are still attached, by pin name, and the pin names of
/// the defunct ones: a link whose target is gone (a removed cgroup or
/// device) has its pin removed, so the hook is attached anew.
pub fn live_links(pins: &PinDir) -> Result<(BTreeMap<String, LiveLink>, Vec<String>)> {
    let mut links = pinned_links(pins)?;
    let defunct: Vec<String> = links
        .iter()
        .filter(|(_, link)| !link.info.target.is_attached())
        .map(|(name, _)| name.clone())
        .collect();
    for name in &defunct {
        let path = pins.link(name)?;
        log::info!("removing defunct link {}", path.display());
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        links.remove(name);
    }
    Ok((links, defunct))
}

/// Every pinned link of balctl's, attached or not, by pin name. A name
/// balctl does not make is left alone.
fn pinned_links(pins: &PinDir) -> Result<BTreeMap<String, LiveLink>> {
    let mut links = BTreeMap::new();
    for name in pins.pinned_links()? {
        let Some((hook, device)) = parse_pin_name(&name) else {
            log::warn!("ignoring {name} among balctl's links: not a link balctl pins");
            continue;
        };
        let path = pins.link(&name)?;
        let fd =
            sys::obj_get(&path).with_context(|| format!("cannot open pinned link {}", path.display()))?;
        let info = sys::link_info(fd.as_fd())
            .with_context(|| format!("cannot read pinned link {}", path.display()))?;
        links.insert(name, LiveLink { hook, device, fd, info });
    }
    Ok(links)
}

/// Detaches every link and removes its pin; the pin names of those
/// detached. Detaching explicitly (rather than only unpinning) ends the
/// attachment even if some other process still holds a link open.
pub fn detach_all(pins: &PinDir) -> Result<Vec<String>> {
    let links = pinned_links(pins)?;
    for (name, link) in &links {
        detach(pins, name, link)?;
    }
    Ok(links.into_keys().collect())
}

/// Detaches one link and removes its pin.
pub fn detach(pins: &PinDir, name: &str, link: &LiveLink) -> Result<()> {
    match sys::link_detach(link.fd.as_fd()) {
        // Already detached (its target is gone): only the pin is left.
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
        other => other.with_context(|| format!("cannot detach {name}"))?,
    }
    let path = pins.link(name)?;
    fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))
}

/// Whether any of balctl's links is pinned here.
pub fn is_loaded(pins: &PinDir) -> Result<bool> {
    Ok(pins.pinned_links()?.iter().any(|name| parse_pin_name(name).is_some()))
}

/// Whether a pin name is a tc hook's link on a device.
pub fn is_device_link(name: &str) -> bool {
    parse_pin_name(name).is_some_and(|(_, device)| device.is_some())
}

/// One cgroup hook as the kernel reports it.
#[derive(Debug, serde::Serialize)]
pub struct HookState {
    pub hook: &'static str,
    pub link_id: u32,
    pub program_id: u32,
    /// Programs attached at this hook's attach point (on its cgroup, for
    /// its attach type), balctl's included; exactly 1 when balctl is the
    /// only one.
    pub attached_programs: usize,
}

/// One tc hook's link on a device, as the kernel reports it.
#[derive(Debug, serde::Serialize)]
pub struct DeviceLinkState {
    pub hook: &'static str,
    /// The device's name now, or as its pin names it once it is gone.
    pub device: String,
    /// 0 once the device is gone.
    pub ifindex: u32,
    /// `ingress` or `egress`.
    pub direction: &'static str,
    pub link_id: u32,
    pub program_id: u32,
    /// Programs on the device's tcx hook in this direction, balctl's
    /// included (it runs first); 0 once defunct.
    pub attached_programs: usize,
    /// The device is gone: the link no longer runs; `load` drops it.
    pub defunct: bool,
}

/// Where balctl's hooks are attached, as `status` shows it: the cgroup of
/// the cgroup hooks (0 and None when none is attached), each cgroup hook's
/// link, and each tc hook's link per device.
#[derive(Debug, serde::Serialize)]
pub struct AttachState {
    pub cgroup: Option<PathBuf>,
    pub cgroup_id: u64,
    pub hooks: Vec<HookState>,
    pub devices: Vec<DeviceLinkState>,
    /// Links that are not pinned: a cgroup hook's (a partial load), or a
    /// tc hook's on a device where the other tc hooks are.
    pub missing_hooks: Vec<String>,
}

pub fn attach_state(pins: &PinDir) -> Result<AttachState> {
    let live = pinned_links(pins)?;
    let cgroup_id = live.values().filter_map(|l| l.info.target.cgroup_id()).find(|&id| id != 0).unwrap_or(0);
    let cgroup = (cgroup_id != 0).then(|| cgroup::cgroup_path(cgroup_id)).flatten();
    let cgroup_dir = cgroup.as_ref().and_then(|path| fs::File::open(path).ok());
    let mut hooks = Vec::new();
    let mut missing_hooks = Vec::new();
    for hook in HOOKS {
        let AttachPoint::Cgroup { attach_type } = hook.attach else {
            continue;
        };
        let Some(link) = live.get(hook.name) else {
            missing_hooks.push(hook.name.to_owned());
            continue;
        };
        let attached_programs = match &cgroup_dir {
            Some(dir) => sys::attached_programs(QueryTarget::Cgroup(dir.as_fd(), attach_type))?.len(),
            None => 0,
        };
        hooks.push(HookState {
            hook: hook.name,
            link_id: link.info.link_id,
            program_id: link.info.program_id,
            attached_programs,
        });
    }
    let mut devices = Vec::new();
    for link in live.values() {
        let (Some(pinned_device), LinkTarget::Device { ifindex, direction }) =
            (&link.device, link.info.target)
        else {
            continue;
        };
        devices.push(device_link_state(link.hook.name, pinned_device, ifindex, direction, &link.info)?);
    }
    let pinned_devices: std::collections::BTreeSet<&String> =
        live.values().filter_map(|l| l.device.as_ref()).collect();
    for device in pinned_devices {
        for hook in HOOKS.iter().filter(|hook| hook.attach.is_per_device()) {
            let name = pin_name(hook, Some(device));
            if !live.contains_key(&name) {
                missing_hooks.push(name);
            }
        }
    }
    Ok(AttachState { cgroup, cgroup_id, hooks, devices, missing_hooks })
}

fn device_link_state(
    hook: &'static str,
    pinned_device: &str,
    ifindex: u32,
    direction: TcAttachType,
    info: &sys::LinkInfo,
) -> Result<DeviceLinkState> {
    let defunct = ifindex == 0;
    let attached_programs =
        if defunct { 0 } else { sys::attached_programs(QueryTarget::Device { ifindex, direction })?.len() };
    Ok(DeviceLinkState {
        hook,
        device: devices::name_of(ifindex).filter(|_| !defunct).unwrap_or_else(|| pinned_device.to_owned()),
        ifindex,
        direction: direction_name(direction),
        link_id: info.link_id,
        program_id: info.program_id,
        attached_programs,
        defunct,
    })
}
