//! The time everything but trace events is measured with.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

pub const NSEC_PER_SEC: u64 = 1_000_000_000;

/// CLOCK_MONOTONIC at the last tick (1-4 ms): what ways, sticky choices,
/// rate limits and trace leases are timed with. It reads a variable; the
/// exact clock reads the TSC, which cost about 60-90 ns per call on this
/// path (a quarter of `recvmsg`'s program), and only trace events need it.
#[inline(always)]
pub fn coarse_now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}
