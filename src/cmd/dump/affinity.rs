//! `dump affinity`: the sticky backend choices the datapath keeps: a client
//! network namespace's (session affinity) in the affinity map, and an
//! unconnected UDP socket's, in its way of the sockets map (the affinity map holds
//! the choices of a socket that sends to more than one frontend, for the
//! others).

use anyhow::Result;
use aya::maps::{HashMap, MapData};
use balctl_common::{
    AffinityKey, AffinityValue, MembershipKey, SOCKET_UNCONNECTED, STICKY_NETNS, STICKY_SOCKET, map_names,
};
use serde::Serialize;

use super::{Tables, View, backend_cell, seconds};
use crate::{
    bpf::{
        maps::{BackendId, ServiceId},
        pins::open_map,
        sockets::{TranslatedSocket, translated_sockets},
        sys::monotonic_ns,
    },
    output::{Listing, TableStyle, column, wide},
};

#[derive(Serialize)]
pub struct Affinity {
    pub(in crate::cmd) affinity: Vec<AffinityRecord>,
}

#[derive(Serialize)]
pub(in crate::cmd) struct AffinityRecord {
    /// Whose choice it is: `netns` (session affinity of a client network
    /// namespace), `socket` (an unconnected UDP socket), or `unknown` (an
    /// owner this balctl does not write).
    pub(in crate::cmd) owner_kind: &'static str,
    /// The network namespace's or the socket's cookie.
    pub(in crate::cmd) cookie: u64,
    pub(in crate::cmd) service_id: ServiceId,
    frontend: Option<String>,
    name: Option<String>,
    pub(in crate::cmd) backend_id: BackendId,
    /// `IP:PORT`; null when the backends map lacks the id.
    backend: Option<String>,
    /// Seconds since the choice was last used.
    pub(in crate::cmd) idle_seconds: f64,
}

/// The entries of frontends `--vip` keeps, by frontend, owner and cookie.
pub fn read(view: &View) -> Result<Affinity> {
    let map: HashMap<MapData, AffinityKey, AffinityValue> = open_map(view.pins, map_names::AFFINITY)?;
    let now = monotonic_ns();
    let mut affinity: Vec<AffinityRecord> = map
        .iter()
        // Entries the LRU evicts during the walk are skipped.
        .filter_map(Result::ok)
        .filter(|(key, _)| view.shows_service(key.service_id))
        .map(|(key, choice)| AffinityRecord {
            owner_kind: match key.owner {
                STICKY_NETNS => "netns",
                STICKY_SOCKET => "socket",
                _ => "unknown",
            },
            cookie: key.cookie,
            service_id: key.service_id,
            frontend: view.frontend(key.service_id),
            name: view.name(key.service_id),
            backend_id: choice.backend_id,
            backend: view.backend(choice.backend_id).map(|b| b.to_string()),
            idle_seconds: seconds(now.saturating_sub(choice.last_used_ns)),
        })
        .collect();
    affinity.extend(
        translated_sockets(view.pins)?
            .into_iter()
            .filter(|socket| {
                let translation = &socket.translation;
                translation.flags & SOCKET_UNCONNECTED != 0
                    && view.shows_service(translation.service_id)
                    // The datapath honours a choice only while its backend is a member.
                    && view.contents.membership.contains_key(&MembershipKey {
                        service_id: translation.service_id,
                        backend_id: translation.backend_id,
                    })
            })
            .map(|TranslatedSocket { cookie, translation, idle_ns }| AffinityRecord {
                owner_kind: "socket",
                cookie,
                service_id: translation.service_id,
                frontend: view.frontend(translation.service_id),
                name: view.name(translation.service_id),
                backend_id: translation.backend_id,
                backend: view.backend(translation.backend_id).map(|b| b.to_string()),
                idle_seconds: seconds(idle_ns),
            }),
    );
    affinity.sort_by(|a, b| {
        (&a.frontend, a.service_id, a.owner_kind, a.cookie).cmp(&(
            &b.frontend,
            b.service_id,
            b.owner_kind,
            b.cookie,
        ))
    });
    Ok(Affinity { affinity })
}

impl Tables for Affinity {
    fn print_table(&self, style: TableStyle) {
        let columns = [
            column("OWNER"),
            wide("COOKIE"),
            column("FRONTEND"),
            wide("SERVICE ID"),
            column("NAME"),
            column("BACKEND"),
            column("IDLE"),
        ];
        let mut rows = Listing::new(style, &columns);
        for entry in &self.affinity {
            rows.add_row([
                entry.owner_kind.to_owned(),
                entry.cookie.to_string(),
                entry.frontend.clone().unwrap_or_else(|| format!("? (service id {})", entry.service_id)),
                entry.service_id.to_string(),
                entry.name.clone().unwrap_or_else(|| "?".into()),
                backend_cell(entry.backend_id, entry.backend.as_ref()),
                format!("{:.1}s", entry.idle_seconds),
            ]);
        }
        rows.print();
    }
}
