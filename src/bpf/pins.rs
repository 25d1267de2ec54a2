//! Where balctl's pinned objects live under the pin directory:
//!
//! ```text
//! <pin dir>/maps/<map name>     the maps (services, backends, ...)
//! <pin dir>/links/<hook name>   one bpf_link per hook (connect4, ...)
//! ```
//!
//! The pinned links are what keep the programs attached after balctl exits.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// bpffs's `statfs` magic number (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// The conventional bpffs mount point, mounted on demand like Cilium does.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

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

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, hook: &str) -> PathBuf {
        self.links_dir().join(hook)
    }

    /// Makes sure the pin directory exists on a bpf filesystem, mounting
    /// bpffs at /sys/fs/bpf if that is where it belongs and nothing is
    /// mounted there yet.
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
        for dir in [self.root.clone(), self.maps_dir(), self.links_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create pin directory {}", dir.display()))?;
            // bpffs ignores the umask-adjusted mode on some kernels; be explicit.
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
        }
        Ok(())
    }
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statfs {}", path.display()));
    }
    Ok(stat.f_type == BPF_FS_MAGIC)
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
