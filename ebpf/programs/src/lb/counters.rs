//! The counters user space reads (`dump stats`, `/metrics`): per frontend,
//! per frontend and backend, and the node's. Each is a per-CPU array: a
//! frontend's and a membership's counters are at their `Cell`, which their
//! entries carry, so counting costs no lookup of its own.

use balctl_common::{Cell, NO_CELL, result};

use super::{
    choice::Choice,
    maps::{BACKEND_HITS, DATAPATH_STATS, STATS},
};

/// Adds a resolution to the counters of the frontend whose master entry
/// has `cell`: per CPU, so a plain increment.
#[inline(always)]
pub fn count(cell: Cell, choice: &Result<Choice, u8>) {
    let Some(stats) = counter_cell(cell).and_then(|cell| STATS.get_ptr_mut(cell)) else {
        return;
    };
    // SAFETY: this CPU's value, written by this CPU only while this program runs.
    unsafe {
        match choice {
            Ok(_) => (*stats).resolutions += 1,
            Err(reason) => {
                let index = usize::from(reason.wrapping_sub(result::FIRST_FAILURE));
                if index < result::FAILURES {
                    (*stats).failures[index] += 1;
                }
            }
        }
    }
    if let Ok(choice) = choice
        && let Some(hits) = counter_cell(choice.cell).and_then(|cell| BACKEND_HITS.get_ptr_mut(cell))
    {
        // SAFETY: as above.
        unsafe { *hits += 1 };
    }
}

/// Adds a policy frontend that gave way (`GAVE_WAY_NO_BACKEND`...) to the
/// counters of its `cell`.
#[inline(always)]
pub fn count_gave_way(cell: Cell, gave_way: usize) {
    if let Some(stats) = counter_cell(cell).and_then(|cell| STATS.get_ptr_mut(cell)) {
        // SAFETY: this CPU's value, written by this CPU only while this program runs.
        unsafe { (*stats).gave_way[gave_way] += 1 };
    }
}

/// Adds a way taken from an open socket to this CPU's node counters: a
/// lookup that only evictions pay for.
#[inline(always)]
pub fn count_eviction() {
    if let Some(stats) = DATAPATH_STATS.get_ptr_mut(0) {
        // SAFETY: a per-CPU entry, written by this CPU only while this program runs.
        unsafe { (*stats).evicted_translations += 1 };
    }
}

/// The cell to count in; None for an entry without one (a cell past the
/// array's end is refused by the array lookup).
#[inline(always)]
fn counter_cell(cell: Cell) -> Option<u32> {
    (cell != NO_CELL).then_some(cell)
}
