//! Trace slots: which tracer reads which ring buffer, and the leases that
//! keep the datapath writing to it.
//!
//! A tracer holds a slot by an exclusive lock on a file in the state dir,
//! which the kernel releases however the tracer ends. While it runs it
//! renews two leases in the trace_leases map: its slot's, and the one every
//! tracer renews, which is all the datapath reads while nobody traces. A
//! tracer that is killed stops renewing, and tracing stops within a lease.

use std::{fs::File, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, Map, MapData};
use balctl_common::{TRACE_ANY, TRACE_SLOTS, map_names};

use crate::{
    bpf::{
        pins::{PinDir, open_pinned},
        sys::monotonic_ns,
    },
    state::StateDir,
};

/// How long a renewal keeps tracing on.
pub const LEASE: Duration = Duration::from_millis(1500);
/// How often a tracer renews: three chances before its lease runs out.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);

pub struct Slot {
    index: u32,
    leases: Array<MapData, u64>,
    /// Held for the slot's lifetime; the lock goes with it.
    _lock: File,
}

impl Slot {
    /// Claims the first free slot. Its lease is not running yet: `renew`
    /// starts it, once the tracer is ready to read.
    pub fn claim(pins: &PinDir, state: &StateDir) -> Result<Self> {
        let path = pins.map(map_names::TRACE_LEASES)?;
        let data = open_pinned(pins, map_names::TRACE_LEASES, || {
            format!(
                "balctl is not loaded at {} (or was loaded by a balctl without tracing); run `balctl load`",
                pins.root().display()
            )
        })?;
        let leases = Array::try_from(Map::Array(data)).with_context(|| {
            format!("the map pinned at {} is not balctl's trace lease map", path.display())
        })?;
        for index in 0..TRACE_SLOTS {
            if let Some(lock) = state.try_lock(&format!("trace-slot-{index}.lock"))? {
                return Ok(Self { index, leases, _lock: lock });
            }
        }
        bail!("{TRACE_SLOTS} tracers are running already, the most balctl serves at once; stop one first")
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Extends this slot's lease, and the one the datapath checks first,
    /// to `LEASE` from now.
    pub fn renew(&mut self) -> Result<()> {
        let until = monotonic_ns() + LEASE.as_nanos() as u64;
        for index in [self.index, TRACE_ANY] {
            self.leases.set(index, until, 0).context("cannot renew the trace lease")?;
        }
        Ok(())
    }
}

impl Drop for Slot {
    /// Ends this slot's lease at once. The shared one runs out by itself:
    /// other tracers may still be renewing it.
    fn drop(&mut self) {
        if let Err(err) = self.leases.set(self.index, 0, 0) {
            log::warn!("could not end trace slot {}'s lease (it runs out by itself): {err}", self.index);
        }
    }
}
