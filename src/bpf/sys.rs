//! The few bpf(2) commands aya 0.14 does not expose: updating and detaching
//! a pinned link, reading what a link is attached to, listing what is attached
//! to a cgroup or a device's tcx hook, and reading and writing a map a batch of entries at a time. The attribute and info layouts come from aya-obj's
//! generated kernel bindings. And the datapath's clock, which user space
//! compares with the times the programs record.

use std::{
    ffi::CString,
    io,
    mem::{size_of, zeroed},
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::programs::TcAttachType;
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type};

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-initialised bpf_attr of the size passed.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut bpf_attr, size_of::<bpf_attr>())
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // File descriptors are never negative.
    fd.as_raw_fd() as u32
}

/// Opens a pinned bpf object (link, map or program).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: an all-zero bpf_attr is the documented "no options" value.
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Atomically replaces the program behind a link: the hook never runs
/// without a program, and there is never a second attachment.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.link_update.link_fd = fd_u32(link);
    attr.link_update.__bindgen_anon_1.new_prog_fd = fd_u32(program);
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Detaches a link now, even if another process still holds it open.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.link_detach.link_fd = fd_u32(link);
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
}

/// What the kernel says about a pinned link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_id: u32,
    pub program_id: u32,
    pub target: LinkTarget,
}

/// What a link is attached to, per kind of link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTarget {
    /// A cgroup link: the cgroup's id, 0 once the link has been detached
    /// (its cgroup is gone or it was detached explicitly).
    Cgroup { cgroup_id: u64 },
    /// A tcx link: the device's ifindex (in the network namespace of the
    /// device), 0 once the device is gone or the link was detached.
    Device { ifindex: u32, direction: TcAttachType },
}

impl LinkTarget {
    /// Whether the link still runs its program; a defunct one keeps only
    /// its pin.
    pub fn is_attached(&self) -> bool {
        match *self {
            Self::Cgroup { cgroup_id } => cgroup_id != 0,
            Self::Device { ifindex, .. } => ifindex != 0,
        }
    }

    /// The cgroup of a cgroup link (0 once detached).
    pub fn cgroup_id(&self) -> Option<u64> {
        match *self {
            Self::Cgroup { cgroup_id } => Some(cgroup_id),
            Self::Device { .. } => None,
        }
    }
}

/// Reads a link's ids and target; a link of a kind balctl does not make
/// is refused rather than read as one it does.
pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // SAFETY: bpf_link_info is plain data; zero is a valid value.
    let mut info: bpf_link_info = unsafe { zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.info.bpf_fd = fd_u32(link);
    attr.info.info_len = size_of::<bpf_link_info>() as u32;
    attr.info.info = &raw mut info as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let target = match info.type_ {
        // SAFETY: the kernel fills the cgroup member for cgroup links.
        t if t == bpf_link_type::BPF_LINK_TYPE_CGROUP as u32 => {
            LinkTarget::Cgroup { cgroup_id: unsafe { info.__bindgen_anon_1.cgroup.cgroup_id } }
        }
        t if t == bpf_link_type::BPF_LINK_TYPE_TCX as u32 => {
            // SAFETY: the kernel fills the tcx member for tcx links.
            let tcx = unsafe { info.__bindgen_anon_1.tcx };
            let direction = if tcx.attach_type == bpf_attach_type::BPF_TCX_EGRESS as u32 {
                TcAttachType::Egress
            } else {
                TcAttachType::Ingress
            };
            LinkTarget::Device { ifindex: tcx.ifindex, direction }
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("it is a link of type {other}, not one balctl makes"),
            ));
        }
    };
    Ok(LinkInfo { link_id: info.id, program_id: info.prog_id, target })
}

/// What `attached_programs` asks about.
#[derive(Clone, Copy, Debug)]
pub enum QueryTarget<'a> {
    /// A cgroup, for one attach type: the programs attached directly to
    /// it, not inherited (what `bpftool cgroup show` lists).
    Cgroup(BorrowedFd<'a>, bpf_attach_type),
    /// A device's tcx hook (what `bpftool net show` lists as tcx).
    Device { ifindex: u32, direction: TcAttachType },
}

/// Ids of the programs attached at `target`, in the order they run.
pub fn attached_programs(target: QueryTarget<'_>) -> io::Result<Vec<u32>> {
    const MAX_PROGRAMS: usize = 64;
    let mut ids = [0u32; MAX_PROGRAMS];
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { zeroed() };
    match target {
        QueryTarget::Cgroup(cgroup, attach_type) => {
            attr.query.__bindgen_anon_1.target_fd = fd_u32(cgroup);
            attr.query.attach_type = attach_type as u32;
        }
        QueryTarget::Device { ifindex, direction } => {
            attr.query.__bindgen_anon_1.target_ifindex = ifindex;
            attr.query.attach_type = match direction {
                TcAttachType::Egress => bpf_attach_type::BPF_TCX_EGRESS,
                _ => bpf_attach_type::BPF_TCX_INGRESS,
            } as u32;
        }
    }
    attr.query.prog_ids = ids.as_mut_ptr() as u64;
    attr.query.__bindgen_anon_2.prog_cnt = MAX_PROGRAMS as u32;
    bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr)?;
    // SAFETY: the kernel wrote the count back into the same member.
    let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize;
    Ok(ids[..count.min(MAX_PROGRAMS)].to_vec())
}

/// What one `map_lookup_batch` copied.
pub struct Batch {
    /// Entries copied into the buffers.
    pub count: usize,
    /// The map has entries after these: go on from `out_batch`.
    pub more: bool,
}

/// BPF_MAP_LOOKUP_BATCH: copies the entries after the position `in_batch`
/// (None: from the first) into `keys` and `values`, as many as `keys` has
/// room for, and the position after them into `out_batch`.
///
/// # Safety
///
/// `key_size` must be the map's key size and `value_stride` the bytes the
/// kernel copies per value (the value size, or for per-CPU maps the value
/// size rounded up to 8 times the possible CPUs); `in_batch` and `out_batch`
/// must hold at least the key size and 4 bytes. The kernel writes that many
/// bytes per entry.
pub unsafe fn map_lookup_batch(
    map: BorrowedFd<'_>,
    (key_size, value_stride): (usize, usize),
    in_batch: Option<&[u8]>,
    out_batch: &mut [u8],
    keys: &mut [u8],
    values: &mut [u8],
) -> io::Result<Batch> {
    let count = keys.len() / key_size;
    assert!(values.len() >= count * value_stride, "the values buffer is too small");
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.batch.map_fd = fd_u32(map);
    attr.batch.in_batch = in_batch.map_or(0, |position| position.as_ptr() as u64);
    attr.batch.out_batch = out_batch.as_mut_ptr() as u64;
    attr.batch.keys = keys.as_mut_ptr() as u64;
    attr.batch.values = values.as_mut_ptr() as u64;
    attr.batch.count = count as u32;
    let more = match bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(_) => true,
        // The end of the map, with what was copied before it.
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => false,
        Err(err) => return Err(err),
    };
    // SAFETY: the kernel wrote the count copied back into the same member.
    let copied = unsafe { attr.batch.count } as usize;
    Ok(Batch { count: copied.min(count), more })
}

/// BPF_MAP_UPDATE_BATCH (`values` given, Linux 5.6) or
/// BPF_MAP_DELETE_BATCH (`values` None) of the `count` entries whose keys
/// (and values) lie end to end in `keys` (and `values`). The kernel writes
/// them one after the other, in order, and stops at the first that fails:
/// returns how many it wrote, and its error if it stopped.
///
/// # Safety
///
/// `keys` must hold `count` keys of the map's key size and `values`
/// `count` values of its value size.
pub unsafe fn map_write_batch(
    map: BorrowedFd<'_>,
    keys: &[u8],
    values: Option<&[u8]>,
    count: usize,
) -> (usize, io::Result<()>) {
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { zeroed() };
    attr.batch.map_fd = fd_u32(map);
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.values = values.map_or(0, |values| values.as_ptr() as u64);
    attr.batch.count = count as u32;
    let command =
        if values.is_some() { bpf_cmd::BPF_MAP_UPDATE_BATCH } else { bpf_cmd::BPF_MAP_DELETE_BATCH };
    let result = bpf(command, &mut attr).map(drop);
    // SAFETY: the kernel writes the count it processed back into the same
    // member, but not when it refuses the call before the first entry (a
    // frozen map, EPERM): then the count is the one given, and a batch that
    // wrote every entry never fails.
    let written = unsafe { attr.batch.count } as usize;
    let written = if result.is_err() && written >= count { 0 } else { written };
    (written, result)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
