//! The time everything but trace events is measured with.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use super::maps::CLOCK_CACHE;

pub const NSEC_PER_SEC: u64 = 1_000_000_000;

/// CLOCK_MONOTONIC at the last tick (1-4 ms): what ways, sticky choices,
/// rate limits, flows and trace leases are timed with. The exact clock
/// reads the TSC, which cost about 60-90 ns per call on this path; the
/// coarse clock's helper call still cost about 40 ns on every translated
/// datagram (bench/RESULTS.md, session 40). So each CPU keeps the coarse
/// time it read with the tick count (`jiffies`, which the verifier turns
/// into one load) and reads the clock again only in a new tick.
///
/// The tick count goes up an instant before the clock is moved on, so a
/// read in that instant finds the new tick with the old time: that time
/// is not kept while it is the one already kept (a CPU that reads every
/// tick keeps only moved-on times). A CPU whose kept time is older, idle
/// since, can keep the old time for its new tick: it then runs up to one
/// tick behind the others until the next. So times of different CPUs are
/// compared saturating (a time a tick ahead counts as now), never
/// wrapping.
#[inline(always)]
pub fn coarse_now() -> u64 {
    // SAFETY: plain helper call, inlined by the verifier.
    let tick = unsafe { bpf_jiffies64() };
    let Some(kept) = CLOCK_CACHE.get_ptr_mut(0) else {
        // SAFETY: plain helper call.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's entry, which only programs running on this CPU
    // write; fields are read and written whole.
    unsafe {
        if read_volatile(&raw const (*kept).tick) == tick {
            return read_volatile(&raw const (*kept).ns);
        }
        let ns = bpf_ktime_get_coarse_ns();
        if ns != read_volatile(&raw const (*kept).ns) {
            // The time before its tick: a program that interrupts this
            // one on this CPU (a packet's, in softirq) between the two
            // stores finds the old tick and reads the clock itself, never
            // the new tick with an old time. (Volatile keeps the order.)
            write_volatile(&raw mut (*kept).ns, ns);
            write_volatile(&raw mut (*kept).tick, tick);
        }
        ns
    }
}

/// A CPU's coarse time and the tick it was read in (`coarse_now`).
pub struct KeptTime {
    tick: u64,
    ns: u64,
}
