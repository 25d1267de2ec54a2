//! Which backend of a frontend takes a socket: its earlier choice, the
//! client's sticky one (affinity), else a random slot.

use balctl_common::{
    AffinityKey, AffinityValue, Backend, Cell, LEAST_CONNECTIONS_WINDOW, MembershipKey,
    SERVICE_FLAG_AFFINITY, SERVICE_FLAG_LEAST_CONNECTIONS, STICKY_NETNS, STICKY_SOCKET, ServiceEntry,
    ServiceKey, SocketTranslation, no_backend_result, result, slot_of, socket_draw,
};

use super::{
    clock::NSEC_PER_SEC,
    conns,
    maps::{AFFINITY, BACKENDS, MEMBERSHIP, SERVICES},
    sockets::NO_SOCKET,
};

/// A backend chosen for a socket, how (`result::RANDOM`...), and the
/// membership's cell it is counted in.
pub struct Choice {
    pub backend: Backend,
    pub backend_id: u32,
    pub cell: Cell,
    pub how: u8,
}

/// Picks the backend of `frontend` (with its `master` entry) for the
/// socket with `socket_cookie`: the socket's `earlier` choice (unconnected
/// UDP; `NO_SOCKET` when it has none), else the client's (affinity; the
/// owner is `client_netns()`, called only for a service with affinity),
/// else a random slot (for a connecting socket of a least-connections
/// frontend, the least loaded: a datagram of an unconnected socket opens no
/// connection, and its program has no stack left for the comparison); or
/// says why there is none (`result::NO_BACKEND`...).
/// Helpers that only some paths need are called only on those paths: every
/// call here is paid on each translated connect.
#[inline(always)]
pub fn choose_backend(
    connecting: bool,
    socket_cookie: u64,
    client_netns: impl FnOnce() -> u64,
    now: u64,
    earlier: &SocketTranslation,
    frontend: &ServiceKey,
    master: &ServiceEntry,
) -> Result<Choice, u8> {
    has_backends(master)?;
    let service_id = master.service_id;
    // The sticky choice of an unconnected socket for a frontend that is not
    // the one in its sockets entry.
    let second_frontend = (earlier.service_id != NO_SOCKET.service_id && earlier.service_id != service_id)
        .then_some(AffinityKey { cookie: socket_cookie, service_id, owner: STICKY_SOCKET });
    if earlier.service_id == service_id
        // SAFETY: read once.
        && let Some(&cell) = unsafe { MEMBERSHIP.get(&MembershipKey { service_id, backend_id: earlier.backend_id }) }
    {
        let backend =
            Backend { addr: earlier.backend, port: earlier.backend_port, proto: frontend.proto, flags: 0 };
        return Ok(Choice { backend, backend_id: earlier.backend_id, cell, how: result::SOCKET });
    }
    if let Some(socket_key) = &second_frontend
        && let Some((backend_id, backend, cell)) = sticky_backend(socket_key, service_id, None)
    {
        return Ok(Choice { backend, backend_id, cell, how: result::SOCKET });
    }
    let affinity = (master.flags & SERVICE_FLAG_AFFINITY != 0).then(|| AffinityKey {
        cookie: client_netns(),
        service_id,
        owner: STICKY_NETNS,
    });
    if let Some(netns_key) = &affinity {
        let timeout = u64::from(master.affinity_timeout_sec) * NSEC_PER_SEC;
        if let Some((backend_id, backend, cell)) = sticky_backend(netns_key, service_id, Some((now, timeout)))
        {
            // Refresh: the timeout counts from the last use, as kube-proxy's does.
            remember_choice(netns_key, backend_id, now);
            return Ok(Choice { backend, backend_id, cell, how: result::AFFINITY });
        }
    }

    let draw = socket_draw(socket_cookie, now);
    let choice = if connecting && master.flags & SERVICE_FLAG_LEAST_CONNECTIONS != 0 {
        least_loaded_slot(frontend, master, draw)?
    } else {
        random_slot(frontend, master, draw)?
    };
    if let Some(netns_key) = &affinity {
        remember_choice(netns_key, choice.backend_id, now);
    }
    if let Some(socket_key) = &second_frontend {
        remember_choice(socket_key, choice.backend_id, now);
    }
    Ok(choice)
}

/// Whether the frontend with `master` has any backend, or why not: a
/// frontend of this node's endpoints only has no local one.
#[inline(always)]
pub fn has_backends(master: &ServiceEntry) -> Result<(), u8> {
    if master.count != 0 {
        return Ok(());
    }
    Err(no_backend_result(master.flags))
}

/// A backend of `frontend` (with its `master` entry, which has some) from
/// one of its slots, drawn with the random number `random` (a socket's
/// `socket_draw`, a packet's from the kernel): the slot holds a copy of
/// the backend, so this is one lookup.
#[inline(always)]
pub fn random_slot(frontend: &ServiceKey, master: &ServiceEntry, random: u32) -> Result<Choice, u8> {
    // The count is not 0, but a caller whose `master` lives in a map
    // cannot show the compiler so: no panic path.
    let slot = slot_of(random, master.count).ok_or(result::STALE)?;
    slot_choice(frontend, slot)
}

/// The backend in `slot` of `frontend` (how: `result::RANDOM`).
#[inline(always)]
fn slot_choice(frontend: &ServiceKey, slot: u16) -> Result<Choice, u8> {
    let slot_key = ServiceKey { slot, ..*frontend };
    // SAFETY: read once, whole.
    let slot_entry = unsafe { SERVICES.get(&slot_key) }.ok_or(result::STALE)?;
    let (backend_id, backend, cell) = (slot_entry.backend_id, slot_entry.backend, slot_entry.cell);
    if backend.proto == Backend::NONE.proto {
        return Err(result::STALE);
    }
    Ok(Choice { backend, backend_id, cell, how: result::RANDOM })
}

/// The backend with the fewest live connections (`conns`) among up to
/// `LEAST_CONNECTIONS_WINDOW` slots of `frontend` from the one `random`
/// draws (every slot of a frontend with no more): the first of the least
/// loaded, so ties go round with the draw. A backend with several slots
/// (a weight) is compared once per slot, so weights still tilt it.
#[inline(always)]
pub fn least_loaded_slot(frontend: &ServiceKey, master: &ServiceEntry, random: u32) -> Result<Choice, u8> {
    let count = u32::from(master.count);
    let first = slot_of(random, master.count).ok_or(result::STALE)?;
    // The least loaded slot and its load; the slot is read again at the
    // end rather than its entry kept (the stack is tight).
    let (mut best, mut least) = (first, u64::MAX);
    for step in 0..u32::from(LEAST_CONNECTIONS_WINDOW) {
        if step >= count {
            break;
        }
        // Slots 1..=count, from `first` round.
        let slot = ((u32::from(first) - 1 + step) % count + 1) as u16;
        // SAFETY: read once; one field.
        let Some(cell) = (unsafe { SERVICES.get(&ServiceKey { slot, ..*frontend }) }).map(|entry| entry.cell)
        else {
            continue;
        };
        let load = conns::live(cell);
        if load < least {
            (best, least) = (slot, load);
        }
    }
    let mut choice = slot_choice(frontend, best)?;
    choice.how = result::LEAST_CONNECTIONS;
    Ok(choice)
}

/// A previous choice for this owner, if it is still valid: not expired (when
/// a timeout applies) and its backend still belongs to the service; with
/// the membership's cell.
#[inline(always)]
fn sticky_backend(
    key: &AffinityKey,
    service_id: u32,
    expiry: Option<(u64, u64)>,
) -> Option<(u32, Backend, Cell)> {
    // SAFETY: read once, whole.
    let choice = unsafe { AFFINITY.get(key) }.copied()?;
    if let Some((now, timeout)) = expiry
        && now.saturating_sub(choice.last_used_ns) > timeout
    {
        return None;
    }
    let membership = MembershipKey { service_id, backend_id: choice.backend_id };
    let cell = unsafe { MEMBERSHIP.get(&membership) }.copied()?;
    let backend = unsafe { BACKENDS.get(&choice.backend_id) }.copied()?;
    Some((choice.backend_id, backend, cell))
}

#[inline(always)]
fn remember_choice(key: &AffinityKey, backend_id: u32, now: u64) {
    let choice = AffinityValue { last_used_ns: now, backend_id, _pad: 0 };
    // A full LRU map evicts; a failed insert only costs stickiness.
    let _ = AFFINITY.insert(key, &choice, 0);
}
