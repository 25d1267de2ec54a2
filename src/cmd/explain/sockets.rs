//! The client process's sockets, by cookie (what `bpf_get_socket_cookie`
//! gives the datapath): the ways and sticky choices of those that sent to
//! a frontend unconnected are keyed by it.

use std::{
    collections::BTreeSet,
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result};

/// `SO_COOKIE` of asm-generic/socket.h (x86-64, arm64 and most others),
/// which libc does not export.
const SO_COOKIE: libc::c_int = 57;

/// The cookies of the sockets process `pid` has open. Each is read from a
/// copy of its descriptor (`pidfd_getfd`), closed at once; a descriptor
/// closed meanwhile is skipped.
pub fn socket_cookies(pid: u32) -> Result<BTreeSet<u64>> {
    let fd_dir = format!("/proc/{pid}/fd");
    let entries = fs::read_dir(&fd_dir).with_context(|| format!("cannot list {fd_dir}"))?;
    // SAFETY: plain syscall; the descriptor is owned at once.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("cannot open process {pid}"));
    }
    // SAFETY: a new descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let mut cookies = BTreeSet::new();
    for entry in entries.flatten() {
        let is_socket =
            fs::read_link(entry.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        if !is_socket {
            continue;
        }
        // SAFETY: plain syscall; the copy is owned at once.
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if copy < 0 {
            continue;
        }
        // SAFETY: a new descriptor nothing else owns.
        let copy = unsafe { OwnedFd::from_raw_fd(copy as i32) };
        if let Ok(cookie) = socket_option_u64(copy.as_fd(), SO_COOKIE) {
            cookies.insert(cookie);
        }
    }
    Ok(cookies)
}

/// A socket option of 8 bytes (SO_COOKIE, SO_NETNS_COOKIE).
pub fn socket_option_u64(socket: BorrowedFd, option: libc::c_int) -> io::Result<u64> {
    let mut value = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`.
    let read = unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, option, (&raw mut value).cast(), &raw mut len)
    };
    if read != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}
