//! Active health checks of address backends (issue 21): the probes
//! (probe.rs) and the prober that runs them on schedule (prober.rs) for
//! the agent (`Checks`), and how their results reach the rules (`mark`).
//!
//! Which backends of a rule fail its check is part of the rule
//! (`RuleHealth::down`), so it goes through what every change goes
//! through: the plan takes a failed backend out of the slots (affinity
//! and stale sockets follow, as for a removed backend), the state records
//! it, `load` restores it, `dump health` shows it. The agent's prober
//! decides it; a sync without the agent (`sync -f` once, `policy add`)
//! keeps what was recorded for the same backend and check, and a backend
//! new to a check starts healthy: a new rule takes traffic at once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Result;
use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{
    inputs::Inputs,
    model::{FrontendRule, Policy, SyncedObject},
    state::AppliedState,
    transaction::Outcome,
};

pub mod probe;
pub mod prober;

pub use prober::{Target, TargetState, Transition};

/// How many probes an agent runs at once, whatever the number of targets:
/// a node with thousands of checked backends probes them in turn rather
/// than opening thousands of sockets together.
const CONCURRENCY: usize = 64;

/// Whether each target is healthy, as far as something knows it: the
/// prober, or the recorded rules.
pub type Health = HashMap<Target, bool>;

/// The targets of `rule`'s check, one per backend.
pub fn targets(rule: &FrontendRule) -> impl Iterator<Item = Target> + '_ {
    rule.health.iter().flat_map(move |health| {
        rule.backends.iter().map(move |&backend| Target {
            backend,
            protocol: rule.frontend.protocol,
            check: health.check.clone(),
        })
    })
}

/// Every target of the rules of `state`, with whether it is healthy as
/// recorded (a target two rules share is down if either recorded it so:
/// they agree whenever the agent marked both).
pub fn recorded(state: &AppliedState) -> Health {
    let mut health = Health::new();
    let rules = (state.policies.iter().map(|policy| &policy.rule))
        .chain(state.synced.iter().flat_map(|object| object.rules.iter()));
    for rule in rules.filter(|rule| rule.health.is_some()) {
        let down = rule.health.as_deref().map_or(&[][..], |health| &health.down);
        for target in targets(rule) {
            let healthy = down.binary_search(&target.backend).is_err();
            *health.entry(target).or_insert(true) &= healthy;
        }
    }
    health
}

/// Marks what a sync is about to apply with what `live` (the agent's
/// prober; None without one) says of the backends' health: the checked
/// rules of `inputs` (`mark_inputs`) and of the policies of `state`.
pub fn mark(state: &mut AppliedState, inputs: &mut Inputs, live: Option<&Health>) {
    mark_inputs(inputs, state, live);
    if let Some(live) = live {
        mark_policies(&mut state.policies, live);
    }
}

/// Makes the down backends of every checked rule among `inputs` (a sync's
/// objects, about to be applied) what `live` says of their targets (the
/// agent's prober: None without one), else what `state` recorded, else
/// healthy. An object whose rules change is replaced by a copy; the others
/// stay the very objects they were (a sync keeps those it did not read
/// again by identity).
pub fn mark_inputs(inputs: &mut Inputs, state: &AppliedState, live: Option<&Health>) {
    let checked = |object: &SyncedObject| object.rules.iter().any(|rule| rule.health.is_some());
    let objects = || inputs.sources.iter().flat_map(|source| &source.objects);
    if !objects().any(|object| checked(&object.value)) {
        return;
    }
    // What the state recorded matters only for targets the prober does
    // not know yet: a watch whose prober knows them all (any batch of a
    // cluster with checked policies, which every batch translates anew)
    // does not walk the state for it.
    let unknown_to_live = |target: &Target| live.is_none_or(|live| !live.contains_key(target));
    let needs_recorded = objects()
        .flat_map(|object| object.value.rules.iter())
        .any(|rule| targets(rule).any(|target| unknown_to_live(&target)));
    let recorded = if needs_recorded { recorded(state) } else { Health::new() };
    let known = |target: &Target| live.and_then(|live| live.get(target)).or_else(|| recorded.get(target));
    for object in inputs.sources.iter_mut().flat_map(|source| &mut source.objects) {
        if !checked(&object.value) {
            continue;
        }
        let marked: Vec<Option<Vec<_>>> =
            object.value.rules.iter().map(|rule| down_of(rule, &known)).collect();
        if marked.iter().any(Option::is_some) {
            let copy = Arc::make_mut(&mut object.value);
            for (rule, down) in copy.rules.iter_mut().zip(marked) {
                if let (Some(health), Some(down)) = (rule.health.as_deref_mut(), down) {
                    health.down = down;
                }
            }
        }
    }
}

/// Makes the down backends of the checked policies what `live` says
/// (policies the prober does not know of keep theirs).
pub fn mark_policies(policies: &mut [Policy], live: &Health) {
    for policy in policies.iter_mut() {
        if let Some(down) = down_of(&policy.rule, &|target| live.get(target))
            && let Some(health) = policy.rule.health.as_deref_mut()
        {
            health.down = down;
        }
    }
}

/// The down backends `rule` should have by `known` (a target it does not
/// know keeps its state in the rule), if they differ from its own.
fn down_of<'a>(
    rule: &FrontendRule,
    known: &impl Fn(&Target) -> Option<&'a bool>,
) -> Option<Vec<std::net::SocketAddr>> {
    let health = rule.health.as_deref()?;
    let mut down: Vec<_> = targets(rule)
        .filter(|target| known(target).map_or_else(|| health.is_down(&target.backend), |healthy| !healthy))
        .map(|target| target.backend)
        .collect();
    down.sort_unstable();
    down.dedup();
    (down != health.down).then_some(down)
}

/// The agent's health checks: its prober, started with the first target,
/// and what wakes the watch loop when a target changes state.
pub struct Checks {
    prober: OnceLock<prober::Prober>,
    /// Probes run, by result (`success`, `failure`): `/metrics`'
    /// `balctl_health_probes_total`.
    pub probes: Family<[(&'static str, &'static str); 1], Counter>,
    /// Tells the watch loop that a target changed state (a sync then
    /// marks the rules).
    wake: Mutex<Option<Box<dyn Fn() + Send>>>,
    /// No change has been followed yet: the first walks the state, whose
    /// checked rules a restarted agent keeps without changing them.
    first: AtomicBool,
}

impl Default for Checks {
    fn default() -> Self {
        let probes = Family::default();
        for result in ["success", "failure"] {
            let _ = probes.get_or_create(&[("result", result)]);
        }
        Self { prober: OnceLock::new(), probes, wake: Mutex::new(None), first: AtomicBool::new(true) }
    }
}

impl Checks {
    /// From now on, `wake` is called after each transition.
    pub fn wake_with(&self, wake: impl Fn() + Send + 'static) {
        *self.wake.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Box::new(wake));
    }

    /// What the prober says of each target it probes; empty before the
    /// first.
    pub fn live(&self) -> Health {
        self.states().into_iter().map(|(target, state)| (target, state.healthy)).collect()
    }

    /// Each target probed and its state, for the metrics.
    pub fn states(&self) -> Vec<(Target, TargetState)> {
        self.prober.get().map(prober::Prober::states).unwrap_or_default()
    }

    /// After the change of `outcome`, probes exactly the targets of the
    /// state it applied, each new one starting as recorded; the first
    /// starts the prober. Only the first change, and one that can have
    /// changed them (one whose objects or policies have checks, or any
    /// while the prober runs), walks the state for them: an agent without
    /// checks pays nothing per change.
    pub fn follow(self: &Arc<Self>, outcome: &Outcome) {
        let after = &outcome.after;
        let checked = |object: &Arc<SyncedObject>| object.rules.iter().any(|rule| rule.health.is_some());
        let changes = after.synced.changes();
        let concerned = self.first.swap(false, Ordering::Relaxed)
            || self.prober.get().is_some()
            || after.policies.iter().any(|policy| policy.rule.health.is_some())
            || changes.came().chain(changes.gone()).any(checked);
        if concerned && let Err(err) = self.probe(after) {
            log::error!("health check: cannot start the prober: {err:#}; backends are not checked");
        }
    }

    /// Probes exactly the targets of `state`.
    fn probe(self: &Arc<Self>, state: &AppliedState) -> Result<()> {
        let targets: Vec<(Target, bool)> = recorded(state).into_iter().collect();
        if targets.is_empty() && self.prober.get().is_none() {
            return Ok(());
        }
        if self.prober.get().is_none() {
            let checks = Arc::downgrade(self);
            let started = prober::Prober::start(
                CONCURRENCY,
                move |transition| {
                    log_transition(&transition);
                    if let Some(checks) = checks.upgrade()
                        && let Some(wake) = checks.wake.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
                    {
                        wake();
                    }
                },
                {
                    let probes = self.probes.clone();
                    move |_, ok| {
                        probes.get_or_create(&[("result", if ok { "success" } else { "failure" })]).inc();
                    }
                },
            )?;
            let _ = self.prober.set(started);
        }
        if let Some(prober) = self.prober.get() {
            prober.set_targets(targets);
        }
        Ok(())
    }
}

/// One log line per transition: which backend, by which check, why.
fn log_transition(transition: &Transition) {
    let Transition { target, healthy, why, streak } = transition;
    let probed = target.check.address_of(target.backend);
    // Both at warn, the agent's default level: a backend's state is what
    // an operator looks for when its traffic moved.
    if *healthy {
        log::warn!(
            "health check: backend {}/{} is healthy again ({} of {probed}: {why}); it takes connections again",
            target.backend,
            target.protocol,
            target.check.probe,
        );
    } else {
        log::warn!(
            "health check: backend {}/{} is unhealthy ({} of {probed}: {streak} failures in a row, the last: \
             {why}); it leaves the slots of its rules",
            target.backend,
            target.protocol,
            target.check.probe,
        );
    }
}
