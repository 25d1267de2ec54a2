//! Reading resolutions as the datapath makes them: a trace slot's ring
//! buffer, drained as events arrive, with the slot's lease kept running.

pub mod cgroups;
pub mod lease;

use std::{
    mem::size_of,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, RingBuf};
use balctl_common::{TraceEvent, map_names};

use self::lease::{RENEW_EVERY, Slot};
use crate::{
    bpf::{pins::PinDir, sys::monotonic_ns},
    state::StateDir,
};

pub struct Tracer {
    slot: Slot,
    events: RingBuf<MapData>,
    renewed: Instant,
    /// Events older than this were left in the slot's ring buffer by the
    /// tracer that held it before (its lease outlives it a little).
    since_ns: u64,
}

impl Tracer {
    /// Claims a slot and starts its lease: events flow from here on.
    pub fn start(pins: &PinDir, state: &StateDir) -> Result<Self> {
        let mut slot = Slot::claim(pins, state)?;
        let path = pins.map(map_names::EVENTS[slot.index() as usize])?;
        let data = MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let events = RingBuf::try_from(Map::RingBuf(data))
            .with_context(|| format!("the map pinned at {} is not a ring buffer", path.display()))?;
        let since_ns = monotonic_ns();
        slot.renew()?;
        Ok(Self { slot, events, renewed: Instant::now(), since_ns })
    }

    pub fn slot(&self) -> u32 {
        self.slot.index()
    }

    /// Waits at most `timeout` for events, then hands each one waiting to
    /// `event`, until it returns false. Renews the lease when due, so call
    /// it in a loop.
    pub fn poll(&mut self, timeout: Duration, mut event: impl FnMut(&TraceEvent) -> bool) -> Result<()> {
        if self.renewed.elapsed() >= RENEW_EVERY {
            self.slot.renew()?;
            self.renewed = Instant::now();
        }
        let timeout = timeout.min(RENEW_EVERY.saturating_sub(self.renewed.elapsed()));
        let mut ready = libc::pollfd { fd: self.events.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, valid for the call. An interrupted wait (a
        // signal the caller handles) just returns early.
        unsafe { libc::poll(&mut ready, 1, timeout.as_millis() as libc::c_int) };
        while let Some(item) = self.events.next() {
            if item.len() < size_of::<TraceEvent>() {
                continue;
            }
            // SAFETY: the datapath writes whole TraceEvents, plain integers;
            // the ring buffer gives no alignment guarantee, hence unaligned.
            let raw = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TraceEvent>()) };
            if raw.time_ns >= self.since_ns && !event(&raw) {
                break;
            }
        }
        Ok(())
    }
}
