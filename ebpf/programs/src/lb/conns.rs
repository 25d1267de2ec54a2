//! Live connections per membership (a frontend and one of its backends):
//! the conns map, at the membership's cell. A socket that connects through
//! a frontend counts one (`SOCKET_COUNTED` in its way) until it closes,
//! connects elsewhere or its way is taken (`sockets`); least-connections
//! frontends choose by them (`choice::least_loaded_slot`), `dump backends`
//! shows them. One count for all CPUs: an atomic add, about the cost of
//! an uncontended cache line.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd, atomic_xsub},
    ptr::read_volatile,
};

use balctl_common::{Cell, MembershipKey, NO_CELL};

use super::maps::{CONNS, MEMBERSHIP};

/// The count at `cell` (None for no cell or one past the array). Changed
/// with atomic adds: the BPF target has no `AtomicU64` (no
/// compare-and-swap), so the intrinsics, which LLVM turns into the BPF
/// atomic add, stand in for it; read with a plain (volatile) load, whole
/// as every aligned 8-byte load is (an atomic load needs BPF v4).
#[inline(always)]
fn count_at(cell: Cell) -> Option<*mut u64> {
    if cell == NO_CELL {
        return None;
    }
    CONNS.get_ptr_mut(cell)
}

/// A socket connected through the membership at `cell`.
#[inline(always)]
pub fn opened(cell: Cell) {
    if let Some(count) = count_at(cell) {
        // SAFETY: a u64 of an array map's value, aligned and live for the
        // map's lifetime.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, 1) };
    }
}

/// A counted socket of the frontend `service_id` and backend `backend_id`
/// closed (or stopped counting). Nothing when the membership is gone: its
/// cell may be another's by now (user space zeroes a cell it hands out
/// again), and a count that can only be too high for a moment is better
/// than one taken from the wrong backend.
#[inline(always)]
pub fn closed(service_id: u32, backend_id: u32) {
    // SAFETY: read once.
    let Some(&cell) = (unsafe { MEMBERSHIP.get(&MembershipKey { service_id, backend_id }) }) else {
        return;
    };
    if let Some(count) = count_at(cell)
        // SAFETY: as in `opened`.
        && unsafe { read_volatile(count) } > 0
    {
        // SAFETY: as in `opened`.
        unsafe { atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(count, 1) };
    }
}

/// The live connections of the membership at `cell` (0 for none).
#[inline(always)]
pub fn live(cell: Cell) -> u64 {
    // SAFETY: as in `opened`.
    count_at(cell).map_or(0, |count| unsafe { read_volatile(count) })
}
