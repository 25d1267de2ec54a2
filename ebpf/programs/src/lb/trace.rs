//! Trace events: each resolution, written to the ring buffer of every
//! trace slot whose lease runs (`balctl trace`): a socket's, and a packet's
//! that opens a north-south flow.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use balctl_common::{SERVICE_FLAG_UNHEALTHY, ServiceEntry, TRACE_ANY, TRACE_FLAG_UNHEALTHY, TraceEvent};

use super::{
    addr::Endpoint,
    choice::Choice,
    maps::{EVENTS0, EVENTS1, EVENTS2, EVENTS3, TRACE_LEASES},
};

/// Writes the resolution of `dest` over `proto` (an `OP_*` `operation`)
/// by the frontend with `master` to the trace slots whose lease runs;
/// `caller` says who made it (for a socket, the current task; for a
/// packet, its client), asked only when an event is written. With nobody
/// tracing this costs one array lookup: the lease all tracers renew has
/// run out. Compiled out where the entry point sets `TRACING` to false.
#[inline(always)]
pub fn trace(
    dest: &Endpoint,
    proto: u8,
    operation: u8,
    master: &ServiceEntry,
    choice: &Result<Choice, u8>,
    now: u64,
    caller: &impl Caller,
) {
    if !crate::TRACING {
        return;
    }
    if !leased(TRACE_ANY, now) {
        return;
    }
    // The exact time: events are ordered and timed by it.
    // SAFETY: plain helper call.
    let time_ns = unsafe { bpf_ktime_get_ns() };
    let (backend, backend_port, backend_id, result) = match choice {
        Ok(choice) => (choice.backend.addr, choice.backend.port, choice.backend_id, choice.how),
        Err(reason) => ([0; 4], 0, 0, *reason),
    };
    let mut event = TraceEvent {
        time_ns,
        pid_tgid: caller.pid_tgid(),
        cgroup_id: caller.cgroup_id(),
        original: dest.addr,
        backend,
        original_port: dest.port,
        backend_port,
        proto,
        operation,
        result,
        flags: if master.flags & SERVICE_FLAG_UNHEALTHY != 0 { TRACE_FLAG_UNHEALTHY } else { 0 },
        service_id: master.service_id,
        backend_id,
        comm: [0; 16],
        client: [0; 4],
        client_port: 0,
        _pad2: [0; 3],
    };
    let client = caller.client();
    (event.client, event.client_port) = (client.addr, client.port);
    // Straight into the event: one copy less on a stack that is near its
    // limit.
    caller.name(&mut event.comm);
    // A full ring buffer drops the event; the tracer reports what it reads.
    for (slot, events) in [(0, &EVENTS0), (1, &EVENTS1), (2, &EVENTS2), (3, &EVENTS3)] {
        if leased(slot, now) {
            let _ = events.output::<TraceEvent>(&event, 0);
        }
    }
}

/// Who made the call a trace event records, as the attach point knows it;
/// asked only when an event is written. A socket's caller is a task and
/// has no client; a packet's is its client and has no task (0s). A trait rather than a closure
/// that fills in the event: LLVM then builds the event in place (45
/// instructions fewer in connect4).
pub trait Caller {
    fn pid_tgid(&self) -> u64;
    fn cgroup_id(&self) -> u64;
    /// Writes the caller's name into `name` (NUL-terminated; left as it
    /// is on failure).
    fn name(&self, name: &mut [u8; 16]);
    /// The client outside the node that sent a packet.
    fn client(&self) -> Endpoint;
}

#[inline(always)]
fn leased(slot: u32, now: u64) -> bool {
    TRACE_LEASES.get(slot).is_some_and(|&until| now < until)
}
