//! Maglev consistent hashing for external frontends: a flow's backend is
//! the entry of its 5-tuple's hash in the frontend's lookup table, which
//! user space computes from the backends' addresses, so every node picks
//! the same backend for a flow and a change of backends moves few flows.

use balctl_common::{FlowKey, MaglevKey, MembershipKey, ServiceEntry, flow_hash, result};

use super::{
    choice::Choice,
    maps::{BACKENDS, MAGLEV, MEMBERSHIP},
};

/// The backend of the flow `key` in the Maglev table of the external
/// frontend with `master` (whose `backend_id` holds the table size), or
/// `result::STALE` when the table is missing, or names a backend that is no
/// longer a member (a table being rewritten).
#[inline(always)]
pub fn backend(master: &ServiceEntry, key: &FlowKey) -> Result<Choice, u8> {
    let size = master.backend_id;
    if size == 0 {
        return Err(result::STALE);
    }
    let service_id = master.service_id;
    let entry = MaglevKey { service_id, index: flow_hash(key) % size };
    // SAFETY: read once, whole.
    let backend_id = unsafe { MAGLEV.get(&entry) }.copied().ok_or(result::STALE)?;
    // SAFETY: only presence is read.
    unsafe { MEMBERSHIP.get(&MembershipKey { service_id, backend_id }) }.ok_or(result::STALE)?;
    // SAFETY: read once, whole.
    let backend = unsafe { BACKENDS.get(&backend_id) }.copied().ok_or(result::STALE)?;
    // `how` is for trace events, which the packet programs do not write
    // yet (they have no Maglev result).
    Ok(Choice { backend, backend_id, how: result::RANDOM })
}
