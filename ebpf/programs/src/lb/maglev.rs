//! Maglev consistent hashing for external frontends: a flow's backend is
//! the entry of its 5-tuple's hash in the frontend's lookup table, which
//! user space computes from the backends' addresses, so every node picks
//! the same backend for a flow and a change of backends moves few flows.

use balctl_common::{FlowKey, MAGLEV_CHUNK, MaglevKey, MembershipKey, ServiceEntry, flow_hash, result};

use super::{
    choice::Choice,
    maps::{BACKENDS, MAGLEV, MEMBERSHIP},
};

/// The backend of the flow `key` in the Maglev table of the external
/// frontend with `master` (whose `backend_id` holds the table size), or
/// `result::STALE` when the table is missing, or its entry names no backend
/// or one that is no longer a member (a table being rewritten): the caller
/// then picks a random slot.
#[inline(always)]
pub fn backend(master: &ServiceEntry, key: &FlowKey) -> Result<Choice, u8> {
    let size = master.backend_id;
    if size == 0 {
        return Err(result::STALE);
    }
    let service_id = master.service_id;
    let index = flow_hash(key) % size;
    let chunk = MaglevKey { service_id, chunk: index / MAGLEV_CHUNK as u32 };
    // SAFETY: one entry of the chunk is read, once.
    let chunk = unsafe { MAGLEV.get(&chunk) }.ok_or(result::STALE)?;
    // 0 past the table's end: a table that shrank while its master still
    // says the old size.
    let backend_id = chunk[index as usize % MAGLEV_CHUNK];
    if backend_id == 0 {
        return Err(result::STALE);
    }
    // SAFETY: read once.
    let cell =
        unsafe { MEMBERSHIP.get(&MembershipKey { service_id, backend_id }) }.copied().ok_or(result::STALE)?;
    // SAFETY: read once, whole.
    let backend = unsafe { BACKENDS.get(&backend_id) }.copied().ok_or(result::STALE)?;
    Ok(Choice { backend, backend_id, cell, how: result::MAGLEV })
}
