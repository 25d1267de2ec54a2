//! The translations of sockets, by cookie: each translated socket's way in
//! the sockets map (replies, `getpeername()`, and the datagrams that follow
//! on an unconnected socket), and revnat for an unconnected socket's
//! further frontends.

use core::ptr::{read_volatile, write_volatile};

use balctl_common::{
    RevNatKey, RevNatValue, SOCKET_COUNTED, SOCKET_FURTHER_FRONTENDS, SOCKET_UNCONNECTED, SOCKET_WAYS,
    SocketPair, SocketSet, SocketTranslation,
};

use super::{
    Operation,
    addr::Endpoint,
    choice::Choice,
    conns,
    counters::count_eviction,
    maps::{DESTROY_PAIRS, REVNAT, SOCKET_SETS, SOCKETS},
};

/// What a socket without a sockets entry has: service ids start at 1.
pub const NO_SOCKET: SocketTranslation = SocketTranslation {
    frontend: [0; 4],
    backend: [0; 4],
    frontend_port: 0,
    backend_port: 0,
    service_id: 0,
    backend_id: 0,
    flags: 0,
};

/// The cookie of an empty way: sockets' cookies start at 1.
const NO_COOKIE: u64 = 0;

/// What the socket with `cookie` was translated to before this `op`, or
/// `NO_SOCKET`: a connecting socket is new to balctl (or starts over); an
/// unconnected one may have sent before, and its way is marked used.
/// (No Option: the verifier rejects the uninitialised bytes a None would
/// carry around.)
#[inline(always)]
pub fn earlier(cookie: u64, op: Operation, now: u64) -> SocketTranslation {
    match op {
        Operation::Connect => NO_SOCKET,
        Operation::SendMsg => match Way::find(cookie) {
            Some((way, socket)) => {
                way.touch(now);
                socket
            }
            None => NO_SOCKET,
        },
    }
}

/// A translation just made, as `remember_translation` records it.
pub struct Translation<'a> {
    pub frontend: &'a Endpoint,
    pub backend: &'a Endpoint,
    pub service_id: u32,
    pub op: Operation,
    pub now: u64,
}

/// Records the translation for replies, `getpeername()` and, on an
/// unconnected socket, the datagrams that follow: in the socket's way of
/// the sockets map when it has none yet, is connecting (starting over), or
/// this is its way's frontend; else, for an unconnected socket's second
/// frontend, in revnat (written only when not already current: such a
/// socket passes here with every datagram).
#[inline(always)]
pub fn remember_translation(cookie: u64, earlier: &SocketTranslation, choice: &Choice, made: &Translation) {
    let (frontend, backend, service_id) = (made.frontend, made.backend, made.service_id);
    if earlier.service_id == service_id && earlier.backend_id == choice.backend_id {
        return;
    }
    if earlier.service_id == NO_SOCKET.service_id || earlier.service_id == service_id {
        let socket = SocketTranslation {
            frontend: frontend.addr,
            backend: backend.addr,
            frontend_port: frontend.port,
            backend_port: backend.port,
            service_id,
            backend_id: choice.backend_id,
            flags: match made.op {
                // Starting over: connected, the socket hears only from its
                // backend, and is one of its live connections.
                Operation::Connect => SOCKET_COUNTED,
                Operation::SendMsg => SOCKET_UNCONNECTED | earlier.flags & SOCKET_FURTHER_FRONTENDS,
            },
        };
        if remember_socket(cookie, &socket, made.now) && made.op == Operation::Connect {
            conns::opened(choice.cell);
        }
        return;
    }
    let key = RevNatKey { cookie, addr: backend.addr, port: backend.port, _pad: [0; 3] };
    let value = RevNatValue { addr: frontend.addr, port: frontend.port, _pad: 0, service_id };
    // Before the datagram leaves, so that its reply finds the mark. (A way
    // that was replaced and taken again comes back without it.)
    if earlier.flags & SOCKET_FURTHER_FRONTENDS == 0
        && let Some((way, _)) = Way::find(cookie)
    {
        way.add_flags(SOCKET_FURTHER_FRONTENDS);
    }
    // SAFETY: read once, whole.
    if unsafe { REVNAT.get(&key) }.is_some_and(|current| *current == value) {
        return;
    }
    let _ = REVNAT.insert(&key, &value, 0);
}

/// The frontend that `peer` stands for to the socket with `cookie`: a peer
/// that is the backend this socket was translated to is shown as the
/// frontend. None for a socket without a way, which was never translated
/// (or lost its way), and for any other peer.
#[inline(always)]
pub fn frontend_of(cookie: u64, peer: &Endpoint) -> Option<Endpoint> {
    let (way, socket) = Way::find(cookie)?;
    way.refresh();
    if socket.backend == peer.addr && socket.backend_port == peer.port {
        Some(Endpoint { addr: socket.frontend, port: socket.frontend_port })
    } else if socket.flags & SOCKET_FURTHER_FRONTENDS != 0 {
        // Another frontend's backend: an unconnected socket's second.
        let key = RevNatKey { cookie, addr: peer.addr, port: peer.port, _pad: [0; 3] };
        // SAFETY: read once, whole.
        unsafe { REVNAT.get(&key) }.map(|original| Endpoint { addr: original.addr, port: original.port })
    } else {
        None
    }
}

/// Whether the socket with `cookie` is one the socket-destroy iterators
/// close: it has a way (balctl translated it: a socket the application
/// connected straight to a backend's address has none), it was connected
/// (never an unconnected UDP socket, which keeps working through another
/// backend and whose bound port must not change), and its frontend and
/// backend are a pair of the destroy_pairs map.
#[inline(always)]
pub fn is_stale(cookie: u64) -> bool {
    let Some((_, socket)) = Way::find(cookie) else {
        return false;
    };
    if socket.flags & SOCKET_UNCONNECTED != 0 {
        return false;
    }
    let pair = SocketPair { service_id: socket.service_id, backend_id: socket.backend_id };
    // SAFETY: only presence is read.
    unsafe { DESTROY_PAIRS.get(&pair) }.is_some()
}

/// Empties the way of the socket with `cookie`, which closes, if it has
/// one, for the next socket. So a way that a new socket finds occupied
/// belongs to an open socket, and taking it is counted (`remember_socket`).
/// One array lookup and four compares.
///
/// Only the cookie is cleared, with one store and no lock: should the way
/// be taken over by a new socket in the instant between the compare and
/// the store, the new socket loses it. The takeover was counted then (the
/// way was occupied), so the count still matches the translations lost.
#[inline(always)]
pub fn release(cookie: u64) {
    let Some(set) = socket_set(cookie) else {
        return;
    };
    for index in 0..SOCKET_WAYS {
        // SAFETY: as in `Way::find`; whole fields.
        unsafe {
            let owner = &raw mut (*set).cookies[index];
            if read_volatile(owner) == cookie {
                let ids = counted(&raw const (*set).ways[index]);
                write_volatile(owner, NO_COOKIE);
                if let Some((service_id, backend_id)) = ids {
                    conns::closed(service_id, backend_id);
                }
                break;
            }
        }
    }
}

/// The frontend (service id) and backend ids of a way whose socket counts
/// as one of its backend's live connections (`SOCKET_COUNTED`): read field
/// by field, never a copy of the way (the stack of sendmsg is near its
/// limit, and every socket of the cgroup closes through `release`).
///
/// # Safety
/// `way` points into the sockets map's value for the program's run.
#[inline(always)]
unsafe fn counted(way: *const SocketTranslation) -> Option<(u32, u32)> {
    // SAFETY: as the caller promises; whole fields.
    unsafe {
        let counts = read_volatile(&raw const (*way).flags) & SOCKET_COUNTED != 0;
        counts.then(|| {
            (read_volatile(&raw const (*way).service_id), read_volatile(&raw const (*way).backend_id))
        })
    }
}

/// The set of the sockets map that holds `cookie`'s way.
#[inline(always)]
fn socket_set(cookie: u64) -> Option<*mut SocketSet> {
    // SAFETY: a plain read; volatile, or the compiler would fold in the
    // value the global has in the object instead of the one `load` wrote.
    let sets = unsafe { read_volatile(&raw const SOCKET_SETS) };
    SOCKETS.get_ptr_mut(cookie.checked_rem(u64::from(sets))? as u32)
}

/// A socket's way in its set.
struct Way {
    set: *mut SocketSet,
    index: usize,
}

impl Way {
    /// The way of the socket with `cookie`, if it has one, and a copy of it.
    ///
    /// Ways are written without a lock, so the cookie is read again after
    /// the copy: a way being taken over by another socket has its cookie
    /// zeroed before the rest changes, and such a copy is dropped. (Volatile
    /// accesses keep the compiler to that order; the BPF backend has no
    /// compiler fence. Exact with the store and load ordering of x86; a CPU
    /// that reorders them could, rarely, mix two sockets' fields while the
    /// way changes hands, as with the kernel's preallocated hash maps.)
    #[inline(always)]
    fn find(cookie: u64) -> Option<(Way, SocketTranslation)> {
        let set = socket_set(cookie)?;
        for index in 0..SOCKET_WAYS {
            // SAFETY: `set` points into the map's value for the program's
            // run; fields are read whole.
            unsafe {
                if read_volatile(&raw const (*set).cookies[index]) != cookie {
                    continue;
                }
                let copy = read_volatile(&raw const (*set).ways[index]);
                if read_volatile(&raw const (*set).cookies[index]) != cookie {
                    return None;
                }
                return Some((Way { set, index }, copy));
            }
        }
        None
    }

    /// Marks the way used at `now`: the set replaces the least recently
    /// used way first. Written once per tick, so a busy socket does not
    /// keep dirtying its set's cache line.
    #[inline(always)]
    fn touch(&self, now: u64) {
        // SAFETY: as in `find`; one whole field.
        unsafe {
            let last_used = &raw mut (*self.set).last_used_ns[self.index % SOCKET_WAYS];
            if read_volatile(last_used) != now {
                write_volatile(last_used, now);
            }
        }
    }

    /// Marks the way used by a read (`recvmsg`, `getpeername`: every
    /// datagram a translated socket reads) without reading the clock,
    /// which was a quarter of those programs: the way takes the newest use
    /// time of its set. A set replaces its least recently used way and
    /// compares only its own, so this keeps the order a clock would give:
    /// the way now comes after every way used before it, and it ties only
    /// with the newest, where the newer socket goes first, as at a tick.
    /// The idle time `dump affinity` shows for it is then counted from
    /// that newest use, never from later than the read.
    #[inline(always)]
    fn refresh(&self) {
        // SAFETY: as in `find`; whole fields.
        unsafe {
            let mut newest = 0;
            for way in 0..SOCKET_WAYS {
                newest = newest.max(read_volatile(&raw const (*self.set).last_used_ns[way]));
            }
            let last_used = &raw mut (*self.set).last_used_ns[self.index % SOCKET_WAYS];
            if read_volatile(last_used) != newest {
                write_volatile(last_used, newest);
            }
        }
    }

    #[inline(always)]
    fn add_flags(&self, flags: u32) {
        // SAFETY: as in `touch`.
        unsafe {
            let field = &raw mut (*self.set).ways[self.index % SOCKET_WAYS].flags;
            write_volatile(field, read_volatile(field) | flags);
        }
    }
}

/// Writes `socket` into the way of `cookie`: the one it has, else an empty
/// one, else the set's least recently used (see `Way::find` on the order
/// of the writes). Ways used in the same tick go newest socket first: the
/// older sockets are the long-lived ones, and a burst of short-lived
/// sockets (a resolver's) then takes the ways of each other. Taking
/// another socket's way is counted: closed sockets leave theirs empty
/// (`release`), so that socket was open and lost its reverse translation.
/// The way's socket before (this one connecting elsewhere, or the one
/// that loses it) stops counting as a live connection. Whether it wrote.
#[inline(always)]
fn remember_socket(cookie: u64, socket: &SocketTranslation, now: u64) -> bool {
    let Some(set) = socket_set(cookie) else {
        return false;
    };
    let mut chosen = 0;
    let (mut chosen_idle, mut chosen_owner) = (0, 0);
    for way in 0..SOCKET_WAYS {
        // SAFETY: as in `Way::find`.
        let (owner, last_used) = unsafe {
            (
                read_volatile(&raw const (*set).cookies[way]),
                read_volatile(&raw const (*set).last_used_ns[way]),
            )
        };
        if owner == cookie {
            chosen = way;
            chosen_owner = NO_COOKIE;
            break;
        }
        let idle = if owner == NO_COOKIE { u64::MAX } else { now.saturating_sub(last_used) };
        if way == 0 || idle > chosen_idle || idle == chosen_idle && owner > chosen_owner {
            chosen = way;
            (chosen_idle, chosen_owner) = (idle, owner);
        }
    }
    if chosen_owner != NO_COOKIE {
        count_eviction();
    }
    let way = chosen % SOCKET_WAYS;
    // SAFETY: as in `Way::find`; the cookie goes first and last, see there.
    let before = unsafe {
        let owned = read_volatile(&raw const (*set).cookies[way]) != NO_COOKIE;
        let before = if owned { counted(&raw const (*set).ways[way]) } else { None };
        write_volatile(&raw mut (*set).cookies[way], NO_COOKIE);
        write_volatile(&raw mut (*set).ways[way], *socket);
        write_volatile(&raw mut (*set).last_used_ns[way], now);
        write_volatile(&raw mut (*set).cookies[way], cookie);
        before
    };
    if let Some((service_id, backend_id)) = before {
        conns::closed(service_id, backend_id);
    }
    true
}
