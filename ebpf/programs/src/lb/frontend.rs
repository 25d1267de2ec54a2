//! Which frontend a destination is, in layer order: a LocalRedirectPolicy,
//! a BalancingPolicy, the Service (exact, else its NodePort); and for
//! traffic from outside the node, its external frontend
//! (`external_frontend`; its `master` entry only for a new flow).

use aya_ebpf::maps::lpm_trie::Key;
use balctl_common::{
    Addr, ExternalKey, GAVE_WAY_NO_BACKEND, GAVE_WAY_RATE_LIMIT, SCOPE_BALANCING, SCOPE_REDIRECT,
    SCOPE_SERVICE, SERVICE_FLAG_RATE_LIMITED, SERVICE_FLAG_SOURCE_RANGES, ServiceEntry, ServiceKey,
    SourceRange, looks_up_layer, node_address_key,
};

use super::{
    addr::{Endpoint, V4_MAPPED_PREFIX, is_v4_mapped},
    clock::{NSEC_PER_SEC, coarse_now},
    counters::count_gave_way,
    maps::{EXTERNAL, LAYERS, NODES, RATE_LIMITS, SERVICES, SOURCE_RANGES},
};

/// The frontend that takes a connection to `dest` over `proto`, with its
/// master entry (slot 0); None for traffic that is for no frontend.
#[inline(always)]
pub fn lookup(dest: &Endpoint, proto: u8) -> Option<(ServiceKey, ServiceEntry)> {
    policy_frontend(dest, proto).or_else(|| find_frontend(dest, proto))
}

/// A policy's entry for `dest` that takes the connection: a
/// LocalRedirectPolicy's while it has a backend and is within its rate
/// limit (else it gives way: to a BalancingPolicy, the Service, or at the
/// end the original destination), then a BalancingPolicy's, which like a
/// Service's refuses connections when it has no backend. A layer that holds
/// no frontend at all is not looked up.
#[inline(always)]
fn policy_frontend(dest: &Endpoint, proto: u8) -> Option<(ServiceKey, ServiceEntry)> {
    let layers = LAYERS.get(0).copied().unwrap_or(0);
    let may_hold = |scope| looks_up_layer(layers, scope);
    let redirect =
        ServiceKey { addr: dest.addr, port: dest.port, proto, scope: SCOPE_REDIRECT, slot: 0, _pad: 0 };
    // SAFETY: entries are only replaced whole by user space; the copy is taken at once.
    if may_hold(SCOPE_REDIRECT)
        && let Some(master) = unsafe { SERVICES.get(&redirect) }.copied()
    {
        let gave_way = if master.count == 0 {
            GAVE_WAY_NO_BACKEND
        } else if !within_rate_limit(&master) {
            GAVE_WAY_RATE_LIMIT
        } else {
            return Some((redirect, master));
        };
        count_gave_way(master.cell, gave_way);
    }
    if !may_hold(SCOPE_BALANCING) {
        return None;
    }
    let balancing = ServiceKey { scope: SCOPE_BALANCING, ..redirect };
    // SAFETY: as above.
    let master = unsafe { SERVICES.get(&balancing) }.copied()?;
    Some((balancing, master))
}

/// Whether a rate-limited frontend may take one more connection this
/// second, counting it if so. The count is shared by all CPUs and updated
/// without a lock (the BPF target has no 64-bit atomic add with this
/// toolchain): CPUs counting at the same instant can let a few more
/// through, never fewer.
#[inline(always)]
fn within_rate_limit(master: &ServiceEntry) -> bool {
    if master.flags & SERVICE_FLAG_RATE_LIMITED == 0 {
        return true;
    }
    // Without its limit entry (written before the flag) nothing limits it.
    let Some(limit) = RATE_LIMITS.get_ptr_mut(&master.service_id) else {
        return true;
    };
    // SAFETY: plain helper call; `limit` points into the map's value, which
    // stays valid for the program's run.
    unsafe {
        let second = coarse_now() / NSEC_PER_SEC;
        if (*limit).second != second {
            (*limit).second = second;
            (*limit).count = 0;
        }
        if (*limit).count >= u64::from((*limit).per_second) {
            return false;
        }
        (*limit).count += 1;
    }
    true
}

/// The frontend `dest` belongs to, with its master entry: an exact match,
/// else the NodePort frontend of its port when node ports answer on `dest`
/// (a node address, or IPv4 loopback while loopback serves them).
#[inline(always)]
fn find_frontend(dest: &Endpoint, proto: u8) -> Option<(ServiceKey, ServiceEntry)> {
    let exact =
        ServiceKey { addr: dest.addr, port: dest.port, proto, scope: SCOPE_SERVICE, slot: 0, _pad: 0 };
    // SAFETY: entries are only replaced whole by user space; the copy is taken at once.
    if let Some(master) = unsafe { SERVICES.get(&exact) } {
        return Some((exact, *master));
    }
    // SAFETY: only presence is read.
    if unsafe { NODES.get(&node_address_key(&dest.addr)) }.is_none() {
        return None;
    }
    let any = if is_v4_mapped(&dest.addr) { V4_MAPPED_PREFIX } else { [0; 4] };
    let node_port = ServiceKey { addr: any, ..exact };
    // SAFETY: as above.
    let master = unsafe { SERVICES.get(&node_port) }.copied()?;
    Some((node_port, master))
}

/// The external frontend (`SCOPE_EXTERNAL`) a packet from outside the node
/// to `dest` over `proto` is for: the key of its master entry, which the
/// external index names for the destination (a LoadBalancer IP's or
/// external IP's own, a node address's node port). A packet for no
/// frontend costs this one lookup.
#[inline(always)]
pub fn external_frontend(dest: &Endpoint, proto: u8) -> Option<ServiceKey> {
    let called = ExternalKey { addr: dest.addr, port: dest.port, proto, _pad: 0 };
    // SAFETY: entries are only replaced whole by user space; the copy is taken at once.
    let master_addr = unsafe { EXTERNAL.get(&called) }.copied()?;
    Some(called.master(master_addr))
}

/// The master entry of `frontend`: only a new flow needs it (a known
/// flow's packets go by the flow). None for an index entry whose master is
/// missing (maps that drifted): no frontend either.
#[inline(always)]
pub fn master(frontend: &ServiceKey) -> Option<ServiceEntry> {
    // SAFETY: entries are only replaced whole by user space; the copy is taken at once.
    unsafe { SERVICES.get(frontend) }.copied()
}

/// Whether `client` may use the external frontend with `master`: any
/// client, unless the frontend has source ranges (loadBalancerSourceRanges)
/// and none of them holds the client.
#[inline(always)]
pub fn admits(master: &ServiceEntry, client: &Addr) -> bool {
    if master.flags & SERVICE_FLAG_SOURCE_RANGES == 0 {
        return true;
    }
    // The service id always counts whole, then every address bit.
    let key = Key::new(32 + 128, SourceRange { service_id: master.service_id.to_be_bytes(), addr: *client });
    SOURCE_RANGES.get(&key).is_some()
}
