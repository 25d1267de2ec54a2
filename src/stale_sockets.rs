//! After a change that took backends away from frontends: the connected
//! sockets the datapath translated through such a frontend to such a
//! backend stay pinned to it (a DNS resolver's connected UDP socket to a
//! deleted CoreDNS, above all). They are destroyed (src/bpf/sock_destroy.rs),
//! so that the application's next send or receive fails and it connects
//! again, to a backend that is still there.
//!
//! Connected UDP sockets always; TCP connections only with
//! `sync --destroy-tcp-sockets` (a reset connection loses what was in
//! flight, where a stale UDP socket only loses answers). Never an
//! unconnected UDP socket (it already sends to the backends that are left,
//! and destroying it would change its bound port, as Cilium 1.19 did,
//! cilium#48564), nor a socket the application connected straight to a
//! backend's address: balctl never translated it. Nor a socket whose
//! backend only topology took from this node's clients (`held_back`): it
//! is still an endpoint, and a change of hints or of the node's zone moves
//! new connections only.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use balctl_common::SocketPair;
use serde::Serialize;

use crate::{
    bpf::{
        pins::PinDir,
        sock_destroy::{Destroyed, Transport, destroy_sockets},
    },
    image::{Image, Touched},
    model::{Frontend, Protocol, Scope, SyncedObject},
    transaction::Outcome,
};

/// The (frontend, backend) pairs a change ended, of the protocols whose
/// sockets are destroyed, and the iterators that walk those sockets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LeftPairs {
    pub pairs: BTreeSet<SocketPair>,
    pub transports: Vec<Transport>,
}

/// The pairs of `before` that `after` no longer has: each backend of a
/// frontend that is gone, and each backend whose address a frontend no
/// longer has (a backend that keeps its address under a new id, moving to
/// or from this node, keeps its sockets). A frontend is the same if it keeps
/// its service id. TCP frontends' pairs only with `tcp`; never the
/// external scope's, whose packets have no socket here.
///
/// A backend `held_back` for a frontend has not left it: topology keeps it
/// from this node's clients, and it is still an endpoint. Only the
/// frontends `touched` can have lost backends.
pub fn left_pairs(
    before: &Image,
    after: &Image,
    touched: Touched,
    held_back: &HeldBack<'_>,
    tcp: bool,
) -> LeftPairs {
    let mut left = LeftPairs::default();
    for (frontend, old) in touched.frontends_of(before) {
        let udp = match frontend.protocol {
            Protocol::Udp => true,
            Protocol::Tcp if tcp => false,
            Protocol::Tcp => continue,
        };
        if frontend.scope == Scope::External {
            continue;
        }
        let kept: BTreeSet<SocketAddr> = match after.frontends.get(frontend) {
            Some(new) if new.service_id == old.service_id => {
                new.backends.iter().filter_map(|id| after.backends.get(id)).map(|b| b.address).collect()
            }
            _ => BTreeSet::new(),
        };
        let held = held_back.get(frontend).copied().unwrap_or_default();
        let kept = |address: &SocketAddr| kept.contains(address) || held.contains(address);
        let mut ended = old
            .backends
            .iter()
            .filter(|id| before.backends.get(id).is_none_or(|b| !kept(&b.address)))
            .map(|&backend_id| SocketPair { service_id: old.service_id, backend_id })
            .peekable();
        if ended.peek().is_none() {
            continue;
        }
        left.pairs.extend(ended);
        let transport = if udp { Transport::Udp } else { Transport::Tcp };
        if !left.transports.contains(&transport) {
            left.transports.push(transport);
        }
    }
    left
}

/// The endpoints each frontend's Service holds back from this node's
/// clients for topology (`SyncedObject::held_back`).
pub type HeldBack<'a> = HashMap<Frontend, &'a [SocketAddr]>;

/// Of `objects`: those a change put in own every frontend it touched.
fn held_back(objects: &[Arc<SyncedObject>]) -> HeldBack<'_> {
    let objects = objects.iter().filter(|object| !object.held_back.is_empty());
    objects.flat_map(|o| o.rules.iter().map(|rule| (rule.frontend, o.held_back.as_slice()))).collect()
}

/// What `destroy` did, for the sync report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StaleSockets {
    /// Connected sockets destroyed.
    pub destroyed: u64,
    /// Sockets the kernel refused to destroy, or that could not be: on a
    /// kernel without `bpf_sock_destroy` (before 6.5), every connected
    /// socket of the pairs. They stay on their backends until closed.
    pub left: u64,
}

impl StaleSockets {
    /// Whether there is anything to tell.
    pub fn any(&self) -> bool {
        self.destroyed + self.left > 0
    }
}

impl fmt::Display for StaleSockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "destroyed {} connected sockets of backends that left their frontends ({} left connected)",
            self.destroyed, self.left
        )
    }
}

/// Each told once per process: a kernel without the kfunc stays without
/// it, a container without the host's PID namespace stays without it.
static STOPPED_TOLD: AtomicBool = AtomicBool::new(false);
static UNSEEN_TOLD: AtomicBool = AtomicBool::new(false);

/// Destroys the connected sockets of the pairs that the image before
/// `outcome` had and the one after it no longer has. The change is
/// committed: a failure here is logged, not returned; None when there was
/// nothing to destroy.
pub fn destroy(pins: &PinDir, outcome: &Outcome, tcp: bool) -> Option<StaleSockets> {
    let touched = Touched::Frontends(&outcome.touched);
    let held_back = held_back(&outcome.came);
    let left = left_pairs(&outcome.image_before, &outcome.after.image, touched, &held_back, tcp);
    if left.pairs.is_empty() {
        return None;
    }
    match destroy_sockets(pins, &left.pairs, &left.transports) {
        Ok(Destroyed::Ran { destroyed, refused, unseen_processes }) => {
            if refused > 0 {
                log::warn!("the kernel refused to destroy {refused} connected sockets of backends that left");
            }
            if unseen_processes > 0 && !UNSEEN_TOLD.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "{unseen_processes} processes of the attached cgroup are in PID namespaces balctl cannot \
                     see (run it in the host's: hostPID): their connected sockets of backends that left \
                     their frontends were not destroyed"
                );
            }
            Some(StaleSockets { destroyed, left: refused })
        }
        Ok(Destroyed::Stopped { reason, destroyed, left }) => {
            if !STOPPED_TOLD.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "connected sockets of backends that left their frontends cannot be destroyed: {reason}; \
                     they stay on those backends until their applications close them \
                     (counted as left in sync's report and balctl_stale_sockets_total)"
                );
            }
            Some(StaleSockets { destroyed, left })
        }
        Err(err) => {
            log::warn!("counting the connected sockets of backends that left: {err:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::image::{BackendAddr, FrontendImage};
    use crate::model::{AddressKind, Frontend};

    /// The pairs by frontend.
    fn by_service(left: &LeftPairs) -> BTreeMap<u32, Vec<u32>> {
        let mut map: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for pair in &left.pairs {
            map.entry(pair.service_id).or_default().push(pair.backend_id);
        }
        map
    }

    /// A frontend's address, protocol, service id and backends (id, address).
    type FrontendSpec<'a> = (&'a str, Protocol, u32, &'a [(u32, &'a str)]);

    fn image(frontends: &[FrontendSpec<'_>]) -> Image {
        let mut image = Image::default();
        for &(address, protocol, service_id, backends) in frontends {
            let address: SocketAddr = address.parse().unwrap();
            let frontend =
                Frontend { address: address.ip(), port: address.port(), protocol, scope: Scope::Service };
            for &(id, backend) in backends {
                let backend = BackendAddr { address: backend.parse().unwrap(), protocol, local: false };
                image.backends.insert(id, backend);
            }
            let entry = FrontendImage {
                service_id,
                owner: "test".into(),
                backends: backends.iter().map(|(id, _)| *id).collect(),
                affinity_seconds: None,
                local_only: false,
                requests_per_second: None,
                address_kind: AddressKind::default(),
                maglev_table_size: 0,
                source_ranges: Vec::new(),
                cell: crate::image::NO_CELL,
                hit_cells: Vec::new(),
                unhealthy: false,
                least_connections: false,
            };
            image.frontends.insert(frontend, entry);
        }
        image
    }

    #[test]
    fn backends_that_left_are_paired_with_their_frontend() {
        let (x, y, z) = ((1, "192.0.2.1:53"), (2, "192.0.2.2:53"), (3, "192.0.2.3:53"));
        let before = image(&[
            ("198.18.0.10:53", Protocol::Udp, 1, &[x, y]),
            ("198.18.0.10:53", Protocol::Tcp, 2, &[(4, "192.0.2.1:53")]),
            ("198.18.0.11:53", Protocol::Udp, 3, &[z]),
        ]);
        // x left the UDP frontend; the TCP one lost its backend; the third frontend is gone.
        let after =
            image(&[("198.18.0.10:53", Protocol::Udp, 1, &[y]), ("198.18.0.10:53", Protocol::Tcp, 2, &[])]);
        let udp = left_pairs(&before, &after, Touched::All, &HeldBack::default(), false);
        assert_eq!(by_service(&udp), BTreeMap::from([(1, vec![1]), (3, vec![3])]));
        assert_eq!(udp.transports, vec![Transport::Udp]);
        let all = left_pairs(&before, &after, Touched::All, &HeldBack::default(), true);
        assert_eq!(by_service(&all), BTreeMap::from([(1, vec![1]), (2, vec![4]), (3, vec![3])]));
        assert_eq!(all.transports.len(), 2);
        // Nothing left: nothing to destroy.
        assert_eq!(
            left_pairs(&before, &before, Touched::All, &HeldBack::default(), true),
            LeftPairs::default()
        );
        // Only the frontends a change touched are looked at.
        let third = BTreeSet::from(["198.18.0.11:53/udp".parse::<Frontend>().unwrap()]);
        let touched = left_pairs(&before, &after, Touched::Frontends(&third), &HeldBack::default(), true);
        assert_eq!(by_service(&touched), BTreeMap::from([(3, vec![3])]));
    }

    /// A backend that comes back under a new id with the same address keeps
    /// its sockets; a frontend that comes back under a new service id is
    /// another frontend: its old pairs ended.
    #[test]
    fn pairs_follow_addresses_and_service_ids() {
        let before = image(&[("198.18.0.10:53", Protocol::Udp, 1, &[(1, "192.0.2.1:53")])]);
        let same_address = image(&[("198.18.0.10:53", Protocol::Udp, 1, &[(7, "192.0.2.1:53")])]);
        assert!(
            left_pairs(&before, &same_address, Touched::All, &HeldBack::default(), false).pairs.is_empty()
        );
        let new_service = image(&[("198.18.0.10:53", Protocol::Udp, 9, &[(1, "192.0.2.1:53")])]);
        assert_eq!(
            by_service(&left_pairs(&before, &new_service, Touched::All, &HeldBack::default(), false)),
            BTreeMap::from([(1, vec![1])])
        );
    }

    /// A backend topology holds back has not left: its sockets stay.
    #[test]
    fn backends_held_back_by_topology_have_not_left() {
        let (x, y) = ((1, "192.0.2.1:53"), (2, "192.0.2.2:53"));
        let before = image(&[("198.18.0.10:53", Protocol::Udp, 1, &[x, y])]);
        let after = image(&[("198.18.0.10:53", Protocol::Udp, 1, &[y])]);
        let frontend = *after.frontends.keys().next().unwrap();
        let held: &[SocketAddr] = &["192.0.2.1:53".parse().unwrap()];
        assert!(
            left_pairs(&before, &after, Touched::All, &HeldBack::from([(frontend, held)]), false)
                .pairs
                .is_empty()
        );
        assert_eq!(
            by_service(&left_pairs(&before, &after, Touched::All, &HeldBack::default(), false)),
            BTreeMap::from([(1, vec![1])])
        );
    }
}
