//! The agent's prober: every target probed on its check's schedule, on a
//! thread of its own, each result counted against the check's rise and
//! fall, each change of state told to the agent.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use tokio::{
    runtime::Handle,
    sync::{Semaphore, oneshot},
    task::AbortHandle,
    time::{Instant, MissedTickBehavior},
};

use super::probe::probe;
use crate::model::{BackendCheck, Protocol};

/// One backend probed one way: the backend's address, the rule's protocol,
/// the rule's check. Two rules that check the same backend the same way
/// share one target, so it is probed once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub backend: SocketAddr,
    pub protocol: Protocol,
    pub check: BackendCheck,
}

/// A change of a target's state, and the probe result that made it, for
/// the agent to log and act on.
#[derive(Clone, Debug)]
pub struct Transition {
    pub target: Target,
    pub healthy: bool,
    /// The last failure, or how many successes brought it back (e.g. "2
    /// successes in a row").
    pub why: String,
    /// The results in a row that made the change (the check's `fall` or
    /// `rise`).
    pub streak: u32,
}

/// What a target is now, for the agent's status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetState {
    pub healthy: bool,
    /// The results in a row that go against `healthy` (failures while
    /// healthy, successes while not): how close it is to changing.
    pub streak: u32,
    /// Why the latest probe failed; None once one succeeds.
    pub last_error: Option<String>,
    /// Probes run since the target was first probed.
    pub probes: u64,
}

/// Runs the probes of the agent's health checks, on a thread of its own so
/// that slow or hung backends never hold up the agent's syncs. Dropping it
/// stops every probe.
pub struct Prober {
    /// The prober's runtime, to spawn targets' tasks from the caller's
    /// thread.
    runtime: Handle,
    context: Arc<Context>,
    targets: Mutex<Targets>,
    /// Dropped to stop the runtime (and with it every task).
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What every target's task shares.
struct Context {
    /// Bounds the probes running at once, however many targets there are.
    permits: Semaphore,
    /// The agent's callbacks. They run on the prober's single thread, so
    /// the locks are never contended: they only make them shareable
    /// between tasks without asking the caller for `Sync`.
    on_transition: Mutex<OnTransition>,
    on_result: Mutex<OnResult>,
}

type OnTransition = Box<dyn Fn(Transition) + Send>;
type OnResult = Box<dyn Fn(&Target, bool) + Send>;

/// The targets probed, and the source of their first probes' jitter.
struct Targets {
    probed: BTreeMap<Target, Probed>,
    jitter: XorShift,
}

/// A target's task, and its state (the task writes it, `states` reads it).
struct Probed {
    task: AbortHandle,
    record: Arc<Mutex<Record>>,
}

impl Prober {
    /// Starts the prober on a thread of its own (a tokio current-thread
    /// runtime: probes wait on sockets, not on CPU), running at most
    /// `concurrency` probes at once. `on_transition` is called (from the
    /// prober's thread) for every transition; `on_result` for every probe
    /// result (target, ok), for the agent's metrics. Both should return
    /// quickly: probes wait while they run.
    pub fn start(
        concurrency: usize,
        on_transition: impl Fn(Transition) + Send + 'static,
        on_result: impl Fn(&Target, bool) + Send + 'static,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the health checks' runtime")?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("health-checks".into())
            // Either a stop or the sender dropped: both mean stop.
            .spawn(move || drop(runtime.block_on(stopped)))
            .context("cannot start the health checks' thread")?;
        let context = Context {
            permits: Semaphore::new(concurrency.clamp(1, Semaphore::MAX_PERMITS)),
            on_transition: Mutex::new(Box::new(on_transition)),
            on_result: Mutex::new(Box::new(on_result)),
        };
        Ok(Self {
            runtime: handle,
            context: Arc::new(context),
            targets: Mutex::new(Targets { probed: BTreeMap::new(), jitter: XorShift::from_clock() }),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Makes the probed targets exactly `targets`, each with the state it
    /// starts in (true: healthy) when it is new; a target already probed
    /// keeps its state, counters and schedule (a sync that changes other
    /// rules must not reset what is known). Targets not listed stop being
    /// probed.
    pub fn set_targets(&self, targets: Vec<(Target, bool)>) {
        let wanted: BTreeMap<Target, bool> = targets.into_iter().collect();
        let mut current = lock(&self.targets);
        current.probed.retain(|target, probed| {
            let keep = wanted.contains_key(target);
            if !keep {
                probed.task.abort();
            }
            keep
        });
        for (target, healthy) in wanted {
            if current.probed.contains_key(&target) {
                continue;
            }
            let first = current.jitter.below(period(&target.check));
            let record = Arc::new(Mutex::new(Record::new(healthy)));
            let task = self.runtime.spawn(run(
                target.clone(),
                first,
                Arc::clone(&record),
                Arc::clone(&self.context),
            ));
            current.probed.insert(target, Probed { task: task.abort_handle(), record });
        }
    }

    /// What each probed target is now, by target.
    pub fn states(&self) -> Vec<(Target, TargetState)> {
        let current = lock(&self.targets);
        current.probed.iter().map(|(target, probed)| (target.clone(), lock(&probed.record).state())).collect()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        drop(self.stop.take());
        // Dropped by a callback (the last owner's reference gone while it
        // ran), the thread is this one: it ends once the callback returns.
        if let Some(thread) =
            self.thread.take().filter(|thread| thread.thread().id() != thread::current().id())
        {
            // A panic there has been reported already; nothing is left to stop.
            let _ = thread.join();
        }
    }
}

/// How often `check` probes: never more often than the least interval
/// inputs may ask (and never zero, which tokio's interval refuses).
fn period(check: &BackendCheck) -> Duration {
    check.interval().max(BackendCheck::MIN_INTERVAL)
}

/// Probes `target` forever: first after `first` (jitter: targets set
/// together do not probe together), then every interval after the
/// previous probe was due, so a backend that stops is out within `fall`
/// intervals (plus a timeout) of stopping. A late probe (no permit free,
/// a slow callback) delays the next rather than bunching them.
async fn run(target: Target, first: Duration, record: Arc<Mutex<Record>>, context: Arc<Context>) {
    let address = target.check.address_of(target.backend);
    let mut ticks = tokio::time::interval_at(Instant::now() + first, period(&target.check));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = {
            // Closed only if the prober is dropped, which ends the task anyway.
            let Ok(_permit) = context.permits.acquire().await else { return };
            probe(address, &target.check.probe, target.check.timeout()).await
        };
        let ok = result.is_ok();
        let transition = lock(&record).record(&target, result);
        (lock(&context.on_result))(&target, ok);
        if let Some(transition) = transition {
            (lock(&context.on_transition))(transition);
        }
    }
}

/// A target's state between probes.
struct Record {
    streak: Streak,
    last_error: Option<String>,
    probes: u64,
}

impl Record {
    fn new(healthy: bool) -> Self {
        Self { streak: Streak { healthy, count: 0 }, last_error: None, probes: 0 }
    }

    /// Counts one probe's result; the transition it makes, if any.
    fn record(&mut self, target: &Target, result: Result<(), String>) -> Option<Transition> {
        let BackendCheck { rise, fall, .. } = target.check;
        self.probes += 1;
        let ok = result.is_ok();
        self.last_error = result.err();
        if !self.streak.record(ok, rise, fall) {
            return None;
        }
        let (why, streak) = match &self.last_error {
            Some(error) => (error.clone(), fall),
            None => (format!("{rise} success{} in a row", if rise == 1 { "" } else { "es" }), rise),
        };
        Some(Transition { target: target.clone(), healthy: ok, why, streak })
    }

    fn state(&self) -> TargetState {
        TargetState {
            healthy: self.streak.healthy,
            streak: self.streak.count,
            last_error: self.last_error.clone(),
            probes: self.probes,
        }
    }
}

/// The rise/fall counter: one result against the state is noise, `fall`
/// failures (or `rise` successes) in a row are a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Streak {
    healthy: bool,
    /// Results in a row that go against `healthy`.
    count: u32,
}

impl Streak {
    /// Counts one result; whether it changed the state. A result that
    /// agrees with the state resets the count: only results in a row
    /// count.
    fn record(&mut self, ok: bool, rise: u32, fall: u32) -> bool {
        if ok == self.healthy {
            self.count = 0;
            return false;
        }
        self.count += 1;
        let needed = if self.healthy { fall } else { rise };
        let changed = self.count >= needed;
        if changed {
            *self = Self { healthy: ok, count: 0 };
        }
        changed
    }
}

/// A cheap pseudo-random source for jitter, which needs spread, not
/// secrecy (xorshift64, seeded from the clock).
struct XorShift(u64);

impl XorShift {
    fn from_clock() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos());
        // Never zero: zero is xorshift's one fixed point.
        Self((nanos as u64) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A duration in [0, `bound`).
    fn below(&mut self, bound: Duration) -> Duration {
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(self.next() % nanos)
    }
}

/// Locks `mutex`, whatever panicked while holding it: the data is plain
/// state, valid between any two statements.
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::{
        net::TcpListener,
        sync::mpsc::{self, Receiver},
        time::Instant as StdInstant,
    };

    use super::*;
    use crate::model::Probe;

    /// Feeds `results` to a streak that starts `healthy`; the changes.
    fn changes(healthy: bool, rise: u32, fall: u32, results: &str) -> (Vec<bool>, Streak) {
        let mut streak = Streak { healthy, count: 0 };
        let changed = results.chars().map(|result| streak.record(result == '+', rise, fall)).collect();
        (changed, streak)
    }

    fn at(changed: &[bool]) -> Vec<usize> {
        changed.iter().enumerate().filter(|(_, changed)| **changed).map(|(at, _)| at).collect()
    }

    #[test]
    fn a_healthy_target_falls_after_fall_failures_in_a_row() {
        let (changed, streak) = changes(true, 2, 3, "--+---");
        assert_eq!(at(&changed), [5]);
        assert_eq!(streak, Streak { healthy: false, count: 0 });
        // Successes while healthy count nothing.
        let (changed, streak) = changes(true, 2, 3, "+++--");
        assert_eq!(at(&changed), [] as [usize; 0]);
        assert_eq!(streak, Streak { healthy: true, count: 2 });
    }

    #[test]
    fn an_unhealthy_target_rises_after_rise_successes_in_a_row() {
        let (changed, streak) = changes(false, 3, 1, "++-+++");
        assert_eq!(at(&changed), [5]);
        assert_eq!(streak, Streak { healthy: true, count: 0 });
        let (changed, streak) = changes(false, 3, 1, "---+");
        assert_eq!(at(&changed), [] as [usize; 0]);
        assert_eq!(streak, Streak { healthy: false, count: 1 });
    }

    #[test]
    fn counts_start_again_after_each_change() {
        // rise 2, fall 2: down at 1, up at 3, down at 5, flapping below the counts does nothing.
        let (changed, streak) = changes(true, 2, 2, "--++---+-+");
        assert_eq!(at(&changed), [1, 3, 5]);
        assert_eq!(streak, Streak { healthy: false, count: 1 });
        // rise 1, fall 1: every disagreeing result is a change.
        let (changed, _) = changes(true, 1, 1, "-+-++");
        assert_eq!(at(&changed), [0, 1, 2, 3]);
    }

    #[test]
    fn records_say_why_a_target_changed() {
        let target = Target { check: check(2, 2), ..target(SocketAddr::from(([127, 0, 0, 1], 9))) };
        let mut record = Record::new(true);
        assert!(record.record(&target, Err("connection refused".into())).is_none());
        let state = record.state();
        assert_eq!((state.healthy, state.streak, state.probes), (true, 1, 1));
        let down = record.record(&target, Err("timed out after 2s".into())).unwrap();
        assert_eq!((down.healthy, down.why.as_str(), down.streak), (false, "timed out after 2s", 2));
        assert!(record.record(&target, Ok(())).is_none());
        assert_eq!(record.state().last_error, None);
        let up = record.record(&target, Ok(())).unwrap();
        assert_eq!((up.healthy, up.why.as_str(), up.streak), (true, "2 successes in a row", 2));
        assert_eq!(record.state(), TargetState { healthy: true, streak: 0, last_error: None, probes: 4 });
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        let mut jitter = XorShift::from_clock();
        let bound = Duration::from_millis(100);
        let draws: Vec<_> = (0..1000).map(|_| jitter.below(bound)).collect();
        assert!(draws.iter().all(|draw| *draw < bound));
        // Spread over the interval, not bunched.
        assert!(draws.iter().any(|draw| *draw < bound / 4) && draws.iter().any(|draw| *draw > bound * 3 / 4));
    }

    fn check(rise: u32, fall: u32) -> BackendCheck {
        BackendCheck { interval_ms: 100, timeout_ms: 100, rise, fall, ..BackendCheck::of(Probe::Tcp) }
    }

    fn target(backend: SocketAddr) -> Target {
        Target { backend, protocol: Protocol::Tcp, check: check(2, 2) }
    }

    /// A prober whose transitions and results arrive on the receivers.
    fn prober() -> (Prober, Receiver<Transition>, Receiver<(Target, bool)>) {
        let (transitions, transitioned) = mpsc::channel();
        let (results, resulted) = mpsc::channel();
        let prober = Prober::start(
            4,
            move |transition| drop(transitions.send(transition)),
            move |target: &Target, ok| drop(results.send((target.clone(), ok))),
        )
        .unwrap();
        (prober, transitioned, resulted)
    }

    const WAIT: Duration = Duration::from_secs(2);

    #[test]
    fn the_prober_is_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Prober>();
    }

    #[test]
    fn a_stopped_backend_goes_down_and_comes_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = listener.local_addr().unwrap();
        let (prober, transitioned, resulted) = prober();
        prober.set_targets(vec![(target(backend), true)]);
        assert_eq!(resulted.recv_timeout(WAIT).unwrap(), (target(backend), true));
        drop(listener);
        // Due within fall × interval (+ a timeout): 200 ms here.
        let down = transitioned.recv_timeout(WAIT).expect("no transition to unhealthy within 2 s");
        assert_eq!(
            (down.target, down.healthy, down.why.as_str(), down.streak),
            (target(backend), false, "connection refused", 2)
        );
        let _listener = TcpListener::bind(backend).unwrap();
        let up = transitioned.recv_timeout(WAIT).expect("no transition to healthy within 2 s");
        assert_eq!((up.healthy, up.why.as_str()), (true, "2 successes in a row"));
        let [(probed, state)] = &prober.states()[..] else { panic!("{:?}", prober.states()) };
        assert_eq!(probed, &target(backend));
        assert!(state.healthy && state.probes >= 5, "{state:?}");
    }

    #[test]
    fn targets_are_kept_added_and_removed_by_equality() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = target(listener.local_addr().unwrap());
        let closed = target(TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap());
        let (prober, transitioned, resulted) = prober();
        // A new target starts as it is said to be.
        prober.set_targets(vec![(up.clone(), false)]);
        assert_eq!(
            prober.states()[0].1,
            TargetState { healthy: false, streak: 0, last_error: None, probes: 0 }
        );
        let rose = transitioned.recv_timeout(WAIT).expect("no transition to healthy");
        assert_eq!((&rose.target, rose.healthy), (&up, true));
        // A kept target keeps its state whatever it is said to start as.
        prober.set_targets(vec![(up.clone(), false), (closed.clone(), false)]);
        let states: BTreeMap<_, _> = prober.states().into_iter().collect();
        assert!(states[&up].healthy && states[&up].probes >= 2, "{:?}", states[&up]);
        assert!(!states[&closed].healthy);
        let deadline = StdInstant::now() + WAIT;
        while !resulted.recv_timeout(WAIT).is_ok_and(|(target, ok)| target == closed && !ok) {
            assert!(StdInstant::now() < deadline, "the new target is not probed");
        }
        let states: BTreeMap<_, _> = prober.states().into_iter().collect();
        assert_eq!(states[&closed].last_error.as_deref(), Some("connection refused"));
        // Removed targets are probed no more.
        prober.set_targets(Vec::new());
        assert!(prober.states().is_empty());
        thread::sleep(Duration::from_millis(50));
        while resulted.try_recv().is_ok() {}
        assert!(
            resulted.recv_timeout(Duration::from_millis(300)).is_err(),
            "a removed target is still probed"
        );
        assert!(transitioned.try_recv().is_err());
    }

    #[test]
    fn a_callback_may_drop_the_prober() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let slot: Arc<Mutex<Option<Prober>>> = Arc::default();
        let (dropped, was_dropped) = mpsc::channel();
        let owner = Arc::clone(&slot);
        let on_result = move |_: &Target, _| {
            if let Some(prober) = lock(&owner).take() {
                drop(prober);
                let _ = dropped.send(());
            }
        };
        let prober = Prober::start(1, drop, on_result).unwrap();
        prober.set_targets(vec![(target(listener.local_addr().unwrap()), true)]);
        *lock(&slot) = Some(prober);
        assert_eq!(was_dropped.recv_timeout(WAIT), Ok(()));
        // The thread ended and its runtime dropped the callback.
        let ended = was_dropped.recv_timeout(WAIT);
        assert_eq!(ended, Err(mpsc::RecvTimeoutError::Disconnected));
    }

    #[test]
    fn dropping_the_prober_stops_its_thread() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (prober, _transitioned, resulted) = prober();
        prober.set_targets(vec![(target(listener.local_addr().unwrap()), true)]);
        assert!(resulted.recv_timeout(WAIT).is_ok());
        drop(prober);
        // The callbacks (and their senders) went with the runtime's tasks.
        while resulted.try_recv().is_ok() {}
        assert!(
            resulted
                .recv_timeout(Duration::from_millis(300))
                .is_err_and(|e| e == mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
