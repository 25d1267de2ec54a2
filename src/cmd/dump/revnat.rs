//! `dump revnat`: the reverse translations the datapath recorded, so that
//! `recvmsg()` and `getpeername()` show the frontend address instead of the
//! backend's: every translated socket's sockets entry, and the revnat map's
//! entries for the further frontends of unconnected UDP sockets.

use std::net::SocketAddr;

use anyhow::Result;
use aya::maps::{HashMap, MapData};
use balctl_common::{RevNatKey, RevNatValue, map_names};
use serde::Serialize;

use super::{Tables, View};
use crate::{
    bpf::{
        maps::ServiceId,
        pins::open_map,
        sockets::{TranslatedSocket, translated_sockets},
    },
    image::raw::{raw_to_addr, raw_to_port},
    output::{Listing, TableStyle, column, wide},
};

#[derive(Serialize)]
pub struct RevNat {
    revnat: Vec<RevNatRecord>,
}

#[derive(Serialize)]
struct RevNatRecord {
    /// The translated socket's cookie.
    cookie: u64,
    /// Where the socket was sent: `IP:PORT`.
    backend: SocketAddr,
    /// What the socket asked for and is shown instead: `IP:PORT` (for a
    /// NodePort frontend, the node address it was dialled at).
    frontend: SocketAddr,
    service_id: ServiceId,
    name: Option<String>,
}

/// The entries `--vip` keeps (their frontend matches it by service id or
/// by the address recorded), by frontend, cookie and backend.
pub fn read(view: &View) -> Result<RevNat> {
    let address = |addr, port| SocketAddr::new(raw_to_addr(addr), raw_to_port(port));
    let sockets = translated_sockets(view.pins)?;
    let further: HashMap<MapData, RevNatKey, RevNatValue> = open_map(view.pins, map_names::REVNAT)?;
    let first =
        sockets.iter().map(|&TranslatedSocket { cookie, translation: ref socket, .. }| RevNatRecord {
            cookie,
            backend: address(socket.backend, socket.backend_port),
            frontend: address(socket.frontend, socket.frontend_port),
            service_id: socket.service_id,
            name: view.name(socket.service_id),
        });
    // Entries the LRU evicts during the walk are skipped.
    let others = further.iter().filter_map(Result::ok).map(|(key, value)| RevNatRecord {
        cookie: key.cookie,
        backend: address(key.addr, key.port),
        frontend: address(value.addr, value.port),
        service_id: value.service_id,
        name: view.name(value.service_id),
    });
    let mut revnat: Vec<RevNatRecord> = first
        .chain(others)
        .filter(|record| {
            let by_address = view.vip.is_some_and(|vip| vip.matches_address(record.frontend))
                && view.owners.keeps(record.name.as_deref());
            by_address || view.shows_service(record.service_id)
        })
        .collect();
    revnat.sort_by_key(|r| (r.frontend, r.cookie, r.backend));
    Ok(RevNat { revnat })
}

impl Tables for RevNat {
    fn print_table(&self, style: TableStyle) {
        let columns =
            [wide("COOKIE"), column("BACKEND"), column("FRONTEND"), wide("SERVICE ID"), column("NAME")];
        let mut rows = Listing::new(style, &columns);
        for entry in &self.revnat {
            rows.add_row([
                entry.cookie.to_string(),
                entry.backend.to_string(),
                entry.frontend.to_string(),
                entry.service_id.to_string(),
                entry.name.clone().unwrap_or_else(|| "?".into()),
            ]);
        }
        rows.print();
    }
}
