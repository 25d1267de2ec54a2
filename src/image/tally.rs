//! What an image's frontends add up to, kept with the image so that a
//! change counts what it changes instead of walking every frontend: how
//! many frontends each scope has (the layers word) and the entries of the
//! maps that hold something per frontend; and, for an image a process
//! keeps (`Backends`), how many frontend slots use each backend (a backend
//! leaves the image when none does) and every backend's id by address.
//!
//! Never stored: made from the frontends when an image is first changed
//! (after a state is read) and updated by every change after that.

use std::collections::BTreeMap;

use balctl_common::{Backend, MAGLEV_CHUNK, layer_bit};
use rustc_hash::FxHashMap as HashMap;

use super::FrontendImage;
use crate::{
    bpf::maps::BackendId,
    model::{Frontend, Scope},
};

#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// The backends' index, once made (`Image::updated`: at an image's
    /// second change in one process; a one-shot change of a big state
    /// would make it for nothing).
    pub backends: Option<Backends>,
    /// Per scope (raw), its frontends.
    scopes: BTreeMap<u8, u64>,
    /// Entries of the services map (a master and a slot per backend per
    /// frontend), of the membership map, of the Maglev tables and of the
    /// source ranges.
    pub services: u64,
    pub membership: u64,
    pub maglev: u64,
    pub source_ranges: u64,
    /// Entries of the external index: not a sum over frontends (a node
    /// port answers on a node address unless a frontend there does), so
    /// counted again whenever an external frontend or a node address
    /// comes or goes (`Image::updated`).
    pub external: u64,
}

/// The backends of an image a process keeps, indexed.
#[derive(Clone, Debug, Default)]
pub struct Backends {
    /// Per backend, the slots of frontends that hold it.
    users: HashMap<BackendId, u32>,
    /// Every backend's id, by the backend as the datapath holds it (its
    /// most compact key): a change finds the ids of its backends without
    /// looking at the others.
    pub ids: HashMap<Backend, BackendId>,
}

impl Backends {
    pub fn of<'a>(
        frontends: impl Iterator<Item = &'a FrontendImage>,
        backends: impl Iterator<Item = (BackendId, Backend)>,
    ) -> Self {
        let mut users: HashMap<BackendId, u32> = HashMap::default();
        for id in frontends.flat_map(|frontend| &frontend.backends) {
            *users.entry(*id).or_default() += 1;
        }
        Self { users, ids: backends.map(|(id, backend)| (backend, id)).collect() }
    }

    /// Whether some frontend holds backend `id`.
    pub fn used(&self, id: BackendId) -> bool {
        self.users.contains_key(&id)
    }
}

impl Tally {
    pub fn of<'a>(frontends: impl Iterator<Item = (&'a Frontend, &'a FrontendImage)>) -> Self {
        let mut tally = Self::default();
        for (frontend, image) in frontends {
            tally.add(frontend, image);
        }
        tally
    }

    /// Counts a frontend in.
    pub fn add(&mut self, frontend: &Frontend, image: &FrontendImage) {
        if let Some(backends) = self.backends.as_mut() {
            for id in &image.backends {
                *backends.users.entry(*id).or_default() += 1;
            }
        }
        *self.scopes.entry(frontend.scope.raw()).or_default() += 1;
        let (services, membership, maglev, source_ranges) = entries(image);
        self.services += services;
        self.membership += membership;
        self.maglev += maglev;
        self.source_ranges += source_ranges;
    }

    /// Counts a frontend out; with the backends' index, calls `unused`
    /// with each backend no frontend holds any more.
    pub fn remove(&mut self, frontend: &Frontend, image: &FrontendImage, mut unused: impl FnMut(BackendId)) {
        if let Some(backends) = self.backends.as_mut() {
            for id in &image.backends {
                if let Some(users) = backends.users.get_mut(id) {
                    *users -= 1;
                    if *users == 0 {
                        backends.users.remove(id);
                        unused(*id);
                    }
                }
            }
        }
        if let Some(count) = self.scopes.get_mut(&frontend.scope.raw()) {
            *count -= 1;
            if *count == 0 {
                self.scopes.remove(&frontend.scope.raw());
            }
        }
        let (services, membership, maglev, source_ranges) = entries(image);
        self.services -= services;
        self.membership -= membership;
        self.maglev -= maglev;
        self.source_ranges -= source_ranges;
    }

    /// The socket layers that hold frontends (`Plan::layers`): the external
    /// scope has no bit, only the packet programs read it.
    pub fn layers(&self) -> u32 {
        (self.scopes.keys())
            .filter(|&&scope| scope != Scope::External.raw())
            .fold(0, |layers, &scope| layers | layer_bit(scope))
    }
}

/// The entries a frontend holds in the services map, the membership map,
/// the Maglev tables and the source ranges.
fn entries(image: &FrontendImage) -> (u64, u64, u64, u64) {
    let slots = image.backends.len() as u64;
    let maglev = if image.backends.is_empty() {
        0
    } else {
        u64::from(image.maglev_table_size.div_ceil(MAGLEV_CHUNK as u32))
    };
    (1 + slots, slots, maglev, image.source_range_keys().count() as u64)
}
