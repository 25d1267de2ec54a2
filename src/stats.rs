//! Counters as `dump stats` shows them and `/metrics` serves them: the
//! datapath's counters, summed over CPUs, for every frontend of the applied
//! state and every backend it has now, named from the state, and the
//! node's. Frontends and backends that never resolved show zeros.

use std::net::SocketAddr;

use anyhow::Result;
use balctl_common::{GAVE_WAY_NO_BACKEND, GAVE_WAY_RATE_LIMIT, result};
use serde::Serialize;

use crate::{
    bpf::{
        counters::{self, CounterMaps},
        maps::{BackendId, ServiceId},
        pins::PinDir,
    },
    image::Image,
    model::{Frontend, Scope},
};

#[derive(Serialize)]
pub struct FrontendStats {
    /// `IP:PORT/PROTO`.
    pub frontend: String,
    pub service_id: ServiceId,
    /// The rule it comes from, e.g. `policy/web` or `service/ns/name`.
    pub name: String,
    /// Sockets (and unconnected UDP datagrams) sent to a backend.
    pub resolutions: u64,
    pub failures: Failures,
    /// Of a redirect: connections it left to the next layer, by reason;
    /// null for other frontends, which never give way.
    pub gave_way: Option<GaveWay>,
    pub backends: Vec<BackendHits>,
}

/// Connections a redirect gave way to the next layer (a balancing policy,
/// the Service, or the original address).
#[derive(Serialize)]
pub struct GaveWay {
    /// It had no backend (no local endpoint).
    pub no_backend: u64,
    /// It had taken its requests-per-second limit.
    pub rate_limit: u64,
}

impl GaveWay {
    /// Each reason, named as in JSON, with its count.
    pub fn by_reason(&self) -> [(&'static str, u64); 2] {
        [("no_backend", self.no_backend), ("rate_limit", self.rate_limit)]
    }
}

/// Refused resolutions by reason.
#[derive(Serialize)]
pub struct Failures {
    /// The frontend has no backend.
    pub no_backend: u64,
    /// No backend on this node (`internalTrafficPolicy: Local`).
    pub no_local_backend: u64,
    /// A slot or backend vanished between lookups (a racing update, or drift).
    pub stale: u64,
    /// An IPv6 backend for an IPv4 socket.
    pub family: u64,
}

#[derive(Serialize)]
pub struct BackendHits {
    pub backend_id: BackendId,
    /// `IP:PORT`.
    pub backend: SocketAddr,
    /// Resolutions of the frontend that chose this backend, since it
    /// became one of the frontend's backends.
    pub hits: u64,
}

/// The node's counters: of the datapath as a whole, not of a frontend.
#[derive(Serialize)]
pub struct DatapathCounters {
    /// Ways of the sockets map that a new socket took from an open one:
    /// `getpeername()` and `recvmsg()` of that socket show the backend
    /// instead of the frontend from then on.
    pub evicted_translations: u64,
}

impl DatapathCounters {
    pub fn read(pins: &PinDir) -> Result<Self> {
        Ok(Self { evicted_translations: counters::datapath(pins)?.evicted_translations })
    }
}

impl Failures {
    fn new(counts: [u64; result::FAILURES]) -> Self {
        let count = |reason: u8| counts[usize::from(reason - result::FIRST_FAILURE)];
        Self {
            no_backend: count(result::NO_BACKEND),
            no_local_backend: count(result::NO_LOCAL_BACKEND),
            stale: count(result::STALE),
            family: count(result::FAMILY),
        }
    }

    /// Each reason, named as in JSON, with its count.
    pub fn by_reason(&self) -> [(&'static str, u64); result::FAILURES] {
        [
            ("no_backend", self.no_backend),
            ("no_local_backend", self.no_local_backend),
            ("stale", self.stale),
            ("family", self.family),
        ]
    }
}

/// The counters of the frontends of `image` that `keep` keeps, sorted by frontend.
pub fn read(
    counters: &CounterMaps,
    image: &Image,
    keep: impl Fn(&Frontend) -> bool,
) -> Result<Vec<FrontendStats>> {
    image
        .frontends
        .iter()
        .filter(|(frontend, _)| keep(frontend))
        .map(|(frontend, f)| {
            let service = counters.service(f.cell)?;
            let backends = (f.backends.iter().enumerate())
                .filter_map(|(slot, &backend_id)| {
                    Some((backend_id, image.backends.get(&backend_id)?.address, f.hit_cell(slot)))
                })
                .map(|(backend_id, backend, cell)| {
                    Ok(BackendHits { backend_id, backend, hits: counters.hits(cell)? })
                })
                .collect::<Result<_>>()?;
            Ok(FrontendStats {
                frontend: frontend.to_string(),
                service_id: f.service_id,
                name: f.owner.clone(),
                resolutions: service.resolutions,
                failures: Failures::new(service.failures),
                gave_way: (frontend.scope == Scope::Redirect).then(|| GaveWay {
                    no_backend: service.gave_way[GAVE_WAY_NO_BACKEND],
                    rate_limit: service.gave_way[GAVE_WAY_RATE_LIMIT],
                }),
                backends,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_named_by_their_reason() {
        let mut counts = [0; result::FAILURES];
        counts[usize::from(result::STALE - result::FIRST_FAILURE)] = 7;
        counts[usize::from(result::NO_BACKEND - result::FIRST_FAILURE)] = 1;
        let failures = Failures::new(counts);
        assert_eq!((failures.no_backend, failures.stale, failures.family), (1, 7, 0));
        assert_eq!(failures.by_reason()[2], ("stale", 7));
        let json = serde_json::to_value(&failures).unwrap();
        for (reason, count) in failures.by_reason() {
            assert_eq!(json[reason], count, "{reason}");
        }
    }
}
