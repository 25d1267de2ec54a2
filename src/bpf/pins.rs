//! Where balctl's pinned objects live under the pin directory:
//!
//! ```text
//! <pin dir>/maps/<map name>     the maps (services, backends, ...)
//! <pin dir>/links/<hook name>   one bpf_link per cgroup hook (connect4, ...)
//! <pin dir>/links/<hook>@<dev>  one per tc hook and device of `load --devices`
//!                               (from_device@eth0, to_device@eth0)
//! ```
//!
//! The pinned links are what keep the programs attached after balctl exits,
//! so whoever can remove them can detach balctl: the pin dir, `maps/` and
//! `links/` must be balctl's user's alone (`crate::trusted_dir`), and every
//! pin path is handed out only after they and the pin are checked.
//!
//! Opening a pinned map (`open_map`, typed and checked against its
//! layout) is here too, so every reader of the maps goes through the check.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{Map, MapData, MapError};

use crate::{
    caps,
    trusted_dir::{Problem, Trust, TrustedDir},
};

/// bpffs's `statfs` magic number (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
/// The conventional bpffs mount point, mounted on demand like Cilium does.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const MAPS: &str = "maps";
const LINKS: &str = "links";

/// Pins: bpffs makes them 0600, and nobody else has any business with them.
static PINS: Trust = Trust {
    forbidden_file_bits: 0o077,
    risk: "another user could remove balctl's pins and detach it",
    remedy: load_again,
};

/// `load` makes the pins again and restores every rule from the state dir.
fn load_again(path: &Path, _directory: bool, _problem: &Problem) -> String {
    format!("remove it (`rm -r {}`) and run `balctl load` again", path.display())
}

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of the map pin `name`, once the pin dir, `maps/` and the
    /// pin, as far as they exist, are found to be ours alone.
    pub fn map(&self, name: &str) -> Result<PathBuf> {
        self.pin(MAPS, name)
    }

    /// The path of the link pin `name` (a hook's name, or `<hook>@<device>`),
    /// checked like `map`'s.
    pub fn link(&self, name: &str) -> Result<PathBuf> {
        self.pin(LINKS, name)
    }

    /// Every pin is opened through this check: a missing directory or pin
    /// is left for the caller to find (balctl is not loaded), anything
    /// another user could have touched is refused.
    fn pin(&self, subdir: &str, name: &str) -> Result<PathBuf> {
        if let Some(dir) = self.subdir(subdir)? {
            dir.check_file(name)?;
        }
        Ok(self.root.join(subdir).join(name))
    }

    /// The names of the maps pinned, whatever they are; none when nothing is.
    pub fn pinned_maps(&self) -> Result<Vec<String>> {
        self.subdir(MAPS)?.map_or_else(|| Ok(Vec::new()), |maps| maps.names())
    }

    /// The names of the links pinned, whatever they are; none when nothing is.
    pub fn pinned_links(&self) -> Result<Vec<String>> {
        self.subdir(LINKS)?.map_or_else(|| Ok(Vec::new()), |links| links.names())
    }

    /// `maps/` or `links/`, checked with the pin dir; None when either is missing.
    fn subdir(&self, name: &str) -> Result<Option<TrustedDir>> {
        match TrustedDir::open(&self.root, &PINS)? {
            Some(root) => root.subdir(name),
            None => Ok(None),
        }
    }

    /// Removes the directories, once `unload` emptied them.
    pub fn remove_dirs(&self) {
        for dir in [self.root.join(LINKS), self.root.join(MAPS), self.root.clone()] {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("leaving {}: {e}", dir.display()),
                Ok(()) => {}
            }
        }
    }

    /// Makes sure the pin directory exists on a bpf filesystem, mounting
    /// bpffs at /sys/fs/bpf if that is where it belongs and nothing is
    /// mounted there yet, and that it, `maps/` and `links/` are ours alone
    /// (mode 0700). They are made here; one that another user made first,
    /// or that others may write, is refused rather than taken over.
    pub fn prepare(&self) -> Result<()> {
        let existing = self.root.ancestors().find(|p| p.exists()).unwrap_or_else(|| Path::new("/"));
        if !is_bpffs(existing)? {
            if existing == Path::new(DEFAULT_BPFFS) {
                mount_bpffs(existing)?;
            } else {
                bail!(
                    "{} is not on a bpf filesystem; mount one first \
                     (`mount -t bpf bpf {DEFAULT_BPFFS}`) or pick a --bpffs directory inside one",
                    self.root.display()
                );
            }
        }
        let root = TrustedDir::create(&self.root, &PINS)?;
        // bpffs ignores the umask-adjusted mode on some kernels, and a
        // second load tightens a 0755 directory: be explicit.
        root.restrict()?;
        for name in [MAPS, LINKS] {
            root.create_subdir(name)?.restrict()?;
        }
        Ok(())
    }
}

/// Opens one pinned map as a typed map (`HashMap`, `PerCpuHashMap`...).
/// aya checks the map type and the key and value sizes against the
/// kernel's, so a map of another layout is refused.
pub fn open_map<M: TryFrom<Map, Error = MapError>>(pins: &PinDir, name: &str) -> Result<M> {
    let path = pins.map(name)?;
    let data = open_pinned(pins, name, || {
        format!(
            "balctl is not loaded at {} (cannot open {}); run `balctl load` first",
            pins.root().display(),
            path.display()
        )
    })?;
    let map =
        Map::from_map_data(data).with_context(|| format!("unexpected map type at {}", path.display()))?;
    M::try_from(map).with_context(|| {
        format!("the map pinned at {} does not have the layout this balctl expects", path.display())
    })
}

/// The map pinned as `name`; `not_loaded` says what its absence means.
/// A user who may not open the pins is told so in one sentence.
pub fn open_pinned(pins: &PinDir, name: &str, not_loaded: impl FnOnce() -> String) -> Result<MapData> {
    let path = pins.map(name)?;
    MapData::from_pin(&path).map_err(|err| match err {
        MapError::SyscallError(e) if caps::is_denied(&e.io_error) => caps::denied(&path),
        err => anyhow!(err).context(not_loaded()),
    })
}

/// Deleting what is already gone is done, not failed.
pub fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statfs {}", path.display()));
    }
    // f_type is signed in glibc and unsigned in musl (the image's build).
    Ok(u64::try_from(stat.f_type).ok() == Some(BPF_FS_MAGIC))
}

fn mount_bpffs(path: &Path) -> Result<()> {
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: all arguments are NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, c"mode=0700".as_ptr().cast())
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot mount bpffs at {}", path.display()));
    }
    log::info!("mounted bpffs at {}", path.display());
    Ok(())
}
