//! Handing out counter cells (`balctl_common::Cell`): the indices of the
//! per-CPU counter arrays where a frontend (stats) and a membership
//! (backend_hits) count their resolutions. Cells are dense, so the arrays
//! are as long as the services map and counting is an array index.
//!
//! A cell is handed out lowest free first and kept by its owner for as
//! long as the owner exists (the image records it). A cell its owner gives
//! up in a change is zeroed after that change's writes (`Plan::apply`) and
//! is free again only for the next change (`CellPool::start_change`): the
//! entries that name it may count into it until the change removes them.
//!
//! Never stored: made from the image's frontends with its tally.

use balctl_common::{Cell, NO_CELL};
use rustc_hash::FxHashSet as HashSet;

#[derive(Clone, Debug, Default)]
pub struct CellPool {
    /// One bit per cell, set while it is held or given up in this change.
    held: Vec<u64>,
    /// Cells given up in this change: free from the next one.
    given_up: HashSet<Cell>,
    /// No cell below this is free.
    lowest_free: Cell,
}

impl CellPool {
    /// Marks `cell` held (an owner that keeps it, or was given it).
    pub fn hold(&mut self, cell: Cell) {
        if cell == NO_CELL {
            return;
        }
        // Only a change gives cells up; a tally made from an image holds
        // a million cells past an empty set.
        if !self.given_up.is_empty() {
            self.given_up.remove(&cell);
        }
        let (word, bit) = position(cell);
        if self.held.len() <= word {
            self.held.resize(word + 1, 0);
        }
        self.held[word] |= bit;
    }

    /// Its owner gives `cell` up: free again from the next change.
    pub fn give_up(&mut self, cell: Cell) {
        if cell != NO_CELL {
            self.given_up.insert(cell);
        }
    }

    /// Frees the cells given up in the change before (whose writes are
    /// done and whose cells were zeroed).
    pub fn start_change(&mut self) {
        for cell in std::mem::take(&mut self.given_up) {
            let (word, bit) = position(cell);
            if let Some(held) = self.held.get_mut(word) {
                *held &= !bit;
            }
            self.lowest_free = self.lowest_free.min(cell);
        }
    }

    /// The lowest free cell, now held.
    pub fn hand_out(&mut self) -> Cell {
        let mut cell = self.lowest_free.max(NO_CELL + 1);
        loop {
            let (word, bit) = position(cell);
            match self.held.get(word) {
                // A whole word held: skip it.
                Some(&u64::MAX) => cell = (cell | 63) + 1,
                Some(held) if held & bit != 0 => cell += 1,
                _ => break,
            }
        }
        self.hold(cell);
        self.lowest_free = cell + 1;
        cell
    }

    /// One past the highest cell held: the length the counter array needs.
    pub fn needed(&self) -> u64 {
        let Some(word) = self.held.iter().rposition(|&held| held != 0) else {
            return 0;
        };
        (word as u64) * 64 + 64 - u64::from(self.held[word].leading_zeros())
    }
}

fn position(cell: Cell) -> (usize, u64) {
    ((cell / 64) as usize, 1 << (cell % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_handed_out_lowest_first_and_reused_only_after_the_change() {
        let mut pool = CellPool::default();
        let handed: Vec<Cell> = (0..130).map(|_| pool.hand_out()).collect();
        assert_eq!(handed, (1..=130).collect::<Vec<_>>(), "dense, from 1 (0 is no cell)");
        assert_eq!(pool.needed(), 131);
        pool.give_up(5);
        pool.give_up(70);
        assert_eq!(pool.hand_out(), 131, "a cell given up in this change is not handed out in it");
        pool.start_change();
        assert_eq!((pool.hand_out(), pool.hand_out(), pool.hand_out()), (5, 70, 132));
        // Given up, then kept after all (a frontend removed and added again).
        pool.give_up(7);
        pool.hold(7);
        pool.start_change();
        assert_eq!(pool.hand_out(), 133, "a cell held again stays held");
        pool.hold(NO_CELL);
        pool.give_up(NO_CELL);
        assert_eq!(pool.needed(), 134);
    }

    #[test]
    fn a_pool_made_from_held_cells_hands_out_the_holes() {
        let mut pool = CellPool::default();
        for cell in [1, 2, 4, 200] {
            pool.hold(cell);
        }
        assert_eq!(pool.needed(), 201);
        assert_eq!((pool.hand_out(), pool.hand_out()), (3, 5));
    }
}
