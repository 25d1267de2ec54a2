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

use balctl_common::{Backend, Cell, MAGLEV_CHUNK, NO_CELL, layer_bit};
use rustc_hash::FxHashMap as HashMap;

use super::{FrontendImage, cells::CellPool};
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
    /// The counter cells of frontends (stats) and memberships
    /// (backend_hits).
    stats_cells: CellPool,
    hit_cells: CellPool,
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
        self.stats_cells.hold(image.cell);
        for &cell in &image.hit_cells {
            self.hit_cells.hold(cell);
        }
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
        self.stats_cells.give_up(image.cell);
        for &cell in &image.hit_cells {
            self.hit_cells.give_up(cell);
        }
        let (services, membership, maglev, source_ranges) = entries(image);
        self.services -= services;
        self.membership -= membership;
        self.maglev -= maglev;
        self.source_ranges -= source_ranges;
    }

    /// A change starts: the cells given up by the change before are free.
    pub fn start_change(&mut self) {
        self.stats_cells.start_change();
        self.hit_cells.start_change();
    }

    /// The cells of a frontend with `backends` (ids in slot order): those
    /// it had (`old`, when it is a frontend removed and added again in
    /// this change) for itself and the backends it keeps, new ones for the
    /// rest. A backend listed twice has one cell.
    pub fn cells_for(&mut self, old: Option<&FrontendImage>, backends: &[BackendId]) -> (Cell, Vec<Cell>) {
        let kept = |cell: Cell| (cell != NO_CELL).then_some(cell);
        let cell = old.and_then(|old| kept(old.cell)).unwrap_or_else(|| self.stats_cells.hand_out());
        let mut had: HashMap<BackendId, Cell> = HashMap::default();
        if let Some(old) = old {
            had.extend(old.backends.iter().zip(&old.hit_cells).filter_map(|(&id, &c)| Some((id, kept(c)?))));
        }
        let hit_cells = (backends.iter())
            .map(|&id| *had.entry(id).or_insert_with(|| self.hit_cells.hand_out()))
            .collect();
        (cell, hit_cells)
    }

    /// One past the highest stats and backend_hits cells held: the
    /// length each counter array needs.
    pub fn cells_needed(&self) -> (u64, u64) {
        (self.stats_cells.needed(), self.hit_cells.needed())
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
