//! The watch loop of `balctl sync --watch` (files.rs) and `balctl sync
//! --kube --watch` (cluster.rs, with `crate::cluster::ClusterWatch`): one
//! loop for both. It syncs once at start, then waits for what is watched to
//! change, lets a burst of changes end, and syncs again, until SIGINT or
//! SIGTERM.
//!
//! What is watched reports its events through one channel, and so do the
//! signals (`wakes`): the loop stops between syncs, never in the middle of
//! a plan's map writes. What an event means and what a sync does is the
//! watched `Source`'s: files are read again, the cluster's objects taken
//! in as they arrive and the changed ones translated.

use std::{
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::agent::Agent;

pub mod cluster;
pub mod files;

/// A burst of changes (truncate, write, close; a rollout's events) ends
/// when what is watched has been quiet this long.
const QUIET: Duration = Duration::from_millis(100);

/// A sync starts at most this long after the first change of a burst, even
/// if changes keep coming, so a change always reaches the datapath well
/// within a second.
const MAX_WAIT: Duration = Duration::from_millis(500);

/// What wakes the watch loop.
pub enum Wake<E> {
    /// Something happened to what is watched.
    Event(E),
    /// A backend changed health (src/health/): the next sync marks its rules.
    Health,
    /// SIGINT or SIGTERM.
    Stop(i32),
}

/// What a watch loop watches.
pub trait Source {
    type Event: Send + 'static;

    /// Takes `event` in; whether it may change what a sync applies.
    fn take(&mut self, event: Self::Event) -> bool;

    /// Applies what changed (everything, the first time), reporting its
    /// own failures: the watch goes on. `settled`: the sync comes because
    /// nothing changed for as long as the last sync asked to wait. Returns
    /// how long to wait for a change before syncing anyway (None: until
    /// something changes).
    fn sync(&mut self, settled: bool) -> Option<Duration>;
}

/// Where a source sends its events.
pub type Waker<E> = Sender<Wake<E>>;

/// Where the watch loop receives them, and the signals.
pub type Wakes<E> = Receiver<Wake<E>>;

/// The channel a source's events and the signals come through: the
/// sender for the source, the receiver for `watch`.
pub fn wakes<E: Send + 'static>() -> Result<(Waker<E>, Wakes<E>)> {
    let (tx, rx) = mpsc::channel();
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot handle SIGINT and SIGTERM")?;
    let stops = tx.clone();
    thread::spawn(move || {
        for signal in signals.forever() {
            if stops.send(Wake::Stop(signal)).is_err() {
                break;
            }
        }
    });
    Ok((tx, rx))
}

/// Syncs `source` at once, then after every burst of changes, until a
/// signal comes through `wakes`. Tells `agent` of every change.
pub fn watch<S: Source>(source: &mut S, wakes: &Wakes<S::Event>, agent: &Agent) -> Result<()> {
    // What is watched, as it is at start, waits for the first sync.
    agent.changed(1);
    let mut settled = false;
    loop {
        let wait = source.sync(settled);
        let woke = match wait_for_change(source, wakes, agent, wait)? {
            Woke::Changed => quiet_down(source, wakes, agent)?,
            woke => woke,
        };
        settled = match woke {
            Woke::Stop(signal) => {
                let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                log::info!("stopping on {name}; the datapath stays as it is");
                return Ok(());
            }
            Woke::Settled => true,
            Woke::Changed => false,
        };
    }
}

/// Why the loop stopped waiting.
enum Woke {
    Changed,
    /// Nothing changed for as long as the last sync asked to wait.
    Settled,
    Stop(i32),
}

/// Waits for an event that changes something, for at most `wait` if given.
fn wait_for_change<S: Source>(
    source: &mut S,
    wakes: &Wakes<S::Event>,
    agent: &Agent,
    wait: Option<Duration>,
) -> Result<Woke> {
    let deadline = wait.map(|wait| Instant::now() + wait);
    loop {
        let wake = match deadline {
            Some(deadline) => match wakes.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(wake) => wake,
                Err(RecvTimeoutError::Timeout) => return Ok(Woke::Settled),
                Err(RecvTimeoutError::Disconnected) => return Err(stopped()),
            },
            None => wakes.recv().map_err(|_| stopped())?,
        };
        match wake {
            Wake::Stop(signal) => return Ok(Woke::Stop(signal)),
            Wake::Event(event) => {
                if source.take(event) {
                    agent.changed(1);
                    return Ok(Woke::Changed);
                }
            }
            Wake::Health => {
                agent.changed(1);
                return Ok(Woke::Changed);
            }
        }
    }
}

/// Takes events in until nothing changed for `QUIET`, at most `MAX_WAIT`
/// after the change that woke the loop; or until a signal.
fn quiet_down<S: Source>(source: &mut S, wakes: &Wakes<S::Event>, agent: &Agent) -> Result<Woke> {
    let first = Instant::now();
    let mut last = first;
    loop {
        let deadline = (last + QUIET).min(first + MAX_WAIT);
        match wakes.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Wake::Event(event)) => {
                if source.take(event) {
                    agent.changed(1);
                    last = Instant::now();
                }
            }
            Ok(Wake::Health) => {
                agent.changed(1);
                last = Instant::now();
            }
            Ok(Wake::Stop(signal)) => return Ok(Woke::Stop(signal)),
            Err(RecvTimeoutError::Timeout) => return Ok(Woke::Changed),
            Err(RecvTimeoutError::Disconnected) => return Err(stopped()),
        }
    }
}

fn stopped() -> anyhow::Error {
    anyhow!("the watch stopped: nothing reports changes any more")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source whose events say whether they change anything, and which
    /// records its syncs: whether settled, and the events taken before.
    struct Recorded {
        taken: Vec<u32>,
        syncs: Vec<(bool, Vec<u32>)>,
        /// What each sync asks to wait for, in turn.
        waits: Vec<Option<Duration>>,
    }

    impl Source for Recorded {
        /// An event's number, and whether it changes something.
        type Event = (u32, bool);

        fn take(&mut self, (number, changes): (u32, bool)) -> bool {
            self.taken.push(number);
            changes
        }

        fn sync(&mut self, settled: bool) -> Option<Duration> {
            self.syncs.push((settled, std::mem::take(&mut self.taken)));
            if self.waits.is_empty() { None } else { self.waits.remove(0) }
        }
    }

    /// The loop syncs at once; a burst of changes is one sync; events that
    /// change nothing wake no sync; a sync that asks to wait is synced
    /// again, settled, when nothing came; a signal ends the loop.
    #[test]
    fn a_burst_is_one_sync_and_a_wait_ends_settled() {
        let (tx, rx) = mpsc::channel();
        let mut source = Recorded { taken: Vec::new(), syncs: Vec::new(), waits: vec![None, Some(QUIET)] };
        let agent = Agent::new(Duration::from_secs(60));
        let sender = thread::spawn(move || {
            // Changes nothing: no sync.
            tx.send(Wake::Event((1, false))).unwrap();
            thread::sleep(QUIET * 3);
            // A burst.
            for number in 2..6 {
                tx.send(Wake::Event((number, true))).unwrap();
            }
            // The second sync asks to wait QUIET: the third comes, settled,
            // long before this.
            thread::sleep(QUIET * 10);
            tx.send(Wake::Stop(SIGTERM)).unwrap();
        });
        watch(&mut source, &rx, &agent).unwrap();
        sender.join().unwrap();
        assert_eq!(source.syncs, [(false, vec![]), (false, vec![1, 2, 3, 4, 5]), (true, vec![])]);
        // Four changes and the start, none applied (the source did not
        // sync through the agent).
        assert_eq!(agent.applied_and_pending(), (None, 5));
    }
}
