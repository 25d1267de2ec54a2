//! Reading the sockets map: the ways of its sets that hold a translated
//! socket, and how long ago the datapath last used each.

use anyhow::{Context as _, Result};
use aya::maps::{Array, IterableMap as _, MapData};
use balctl_common::{SOCKET_WAYS, SocketSet, SocketTranslation, map_names};

use super::{
    batch,
    pins::{PinDir, open_map},
    sys::monotonic_ns,
};

/// A socket's way.
pub struct TranslatedSocket {
    pub cookie: u64,
    pub translation: SocketTranslation,
    /// Nanoseconds since the way's last use (`SocketSet::last_used_ns`).
    pub idle_ns: u64,
}

/// Every socket with a way, in set order.
pub fn translated_sockets(pins: &PinDir) -> Result<Vec<TranslatedSocket>> {
    let sets: Array<MapData, SocketSet> = open_map(pins, map_names::SOCKETS)?;
    let now = monotonic_ns();
    let mut sockets = Vec::new();
    let read = batch::for_each_typed(sets.map(), |_: u32, set: SocketSet| {
        for way in 0..SOCKET_WAYS {
            if set.cookies[way] != 0 {
                sockets.push(TranslatedSocket {
                    cookie: set.cookies[way],
                    translation: set.ways[way],
                    idle_ns: now.saturating_sub(set.last_used_ns[way]),
                });
            }
        }
    });
    read.context("reading the sockets map")?;
    Ok(sockets)
}
