//! The counters user space reads (`dump stats`, `/metrics`): per frontend,
//! per frontend and backend, and the node's.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::PerCpuHashMap};
use balctl_common::{MembershipKey, result};

use super::{
    choice::Choice,
    maps::{BACKEND_HITS, DATAPATH_STATS, STATS},
};

/// Adds a resolution to the frontend's counters: per CPU, so a plain
/// increment. A frontend's first resolution on a CPU creates its entry.
#[inline(always)]
pub fn count(service_id: u32, choice: &Result<Choice, u8>) {
    let Some(stats) = counter(&STATS, &service_id) else {
        return;
    };
    // SAFETY: a per-CPU entry, written by this CPU only while this program runs.
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
        && let Some(hits) =
            counter(&BACKEND_HITS, &MembershipKey { service_id, backend_id: choice.backend_id })
    {
        // SAFETY: as above.
        unsafe { *hits += 1 };
    }
}

/// Adds a policy frontend that gave way (`GAVE_WAY_NO_BACKEND`...) to its
/// counters.
#[inline(always)]
pub fn count_gave_way(service_id: u32, gave_way: usize) {
    if let Some(stats) = counter(&STATS, &service_id) {
        // SAFETY: a per-CPU entry, written by this CPU only while this program runs.
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

/// This CPU's counter for `key`, created at zero if missing. None when the
/// map is full (user space removes the counters of removed frontends).
#[inline(always)]
fn counter<K, V: Default>(map: &PerCpuHashMap<K, V>, key: &K) -> Option<*mut V> {
    if let Some(value) = map.get_ptr_mut(key) {
        return Some(value);
    }
    let _ = map.insert(key, &V::default(), u64::from(BPF_NOEXIST));
    map.get_ptr_mut(key)
}
