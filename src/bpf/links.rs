//! balctl's pinned links, one per hook: what the kernel says each is
//! attached to, which are defunct, detaching them, and what `status`
//! reports of them. Each hook's `AttachPoint` says where to look.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
};

use anyhow::{Context as _, Result};

use super::{
    cgroup,
    object::{AttachPoint, HOOKS},
    pins::PinDir,
    sys,
};

/// A pinned link with what the kernel says of it.
pub struct LiveLink {
    pub fd: OwnedFd,
    pub info: sys::LinkInfo,
}

/// Pinned links that are still attached. A link whose target is gone (a
/// removed cgroup) is defunct: its pin is removed so the hook is attached
/// anew.
pub fn live_links(pins: &PinDir) -> Result<BTreeMap<&'static str, LiveLink>> {
    let mut links = pinned_links(pins)?;
    let defunct: Vec<&'static str> =
        links.iter().filter(|(_, link)| !link.info.target.is_attached()).map(|(&hook, _)| hook).collect();
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
            let info = sys::link_info(fd.as_fd())
                .with_context(|| format!("cannot read pinned link {}", path.display()))?;
            links.insert(hook.name, LiveLink { fd, info });
        }
    }
    Ok(links)
}

/// Detaches every hook's link and removes its pin; the names of those
/// detached. Detaching explicitly (rather than only unpinning) ends the
/// attachment even if some other process still holds a link open.
pub fn detach_all(pins: &PinDir) -> Result<Vec<&'static str>> {
    let mut detached = Vec::new();
    for hook in HOOKS {
        let path = pins.link(hook.name)?;
        if !path.exists() {
            continue;
        }
        let fd =
            sys::obj_get(&path).with_context(|| format!("cannot open pinned link {}", path.display()))?;
        match sys::link_detach(fd.as_fd()) {
            // Already detached (its target is gone): only the pin is left.
            Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
            other => other.with_context(|| format!("cannot detach {}", hook.name))?,
        }
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        detached.push(hook.name);
    }
    Ok(detached)
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
    /// Programs attached at this hook's attach point (on its cgroup, for
    /// its attach type), balctl's included; exactly 1 when balctl is the
    /// only one.
    pub attached_programs: usize,
}

/// Where balctl's hooks are attached, as `status` shows it: the cgroup of
/// the cgroup hooks (0 and None when none is attached) and each hook's link.
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
    let cgroup_id = live.values().filter_map(|l| l.info.target.cgroup_id()).find(|&id| id != 0).unwrap_or(0);
    let cgroup = (cgroup_id != 0).then(|| cgroup::cgroup_path(cgroup_id)).flatten();
    let cgroup_dir = cgroup.as_ref().and_then(|path| fs::File::open(path).ok());
    let mut hooks = Vec::new();
    let mut missing_hooks = Vec::new();
    for hook in HOOKS {
        let Some(link) = live.get(hook.name) else {
            missing_hooks.push(hook.name);
            continue;
        };
        let attached_programs = match hook.attach {
            AttachPoint::Cgroup { attach_type } => match &cgroup_dir {
                Some(dir) => sys::cgroup_attached_programs(dir.as_fd(), attach_type as u32)?.len(),
                None => 0,
            },
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
