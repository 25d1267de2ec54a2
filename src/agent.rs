//! What `sync --watch` (of files or, with `--kube`, of the cluster:
//! src/watch/) knows about its own syncs: the changes it saw and has not
//! applied, the syncs it ran and how they ended, and for `--kube` whether
//! the API server answers. The watch loop and its sources report here,
//! through `Agent`; the health
//! endpoints and the agent metrics (src/serve/) read it, and the metrics'
//! map fill is read again after each sync that applied (`applied`).
//!
//! Health as kube-proxy's healthz (pkg/proxy/healthcheck/proxier_health.go)
//! means it: a change seen but not applied is late once it has waited the
//! health timeout; and balctl is not current when the API server has not
//! answered for that long either, since then it cannot know what changed.
//! A sync that fails leaves its change waiting, so the endpoint turns 503
//! once the timeout has passed, not at once: the next change or retry may
//! fix it, as a kube-proxy whose restore failed retries before it is late.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use prometheus_client::metrics::{
    counter::Counter,
    family::Family,
    gauge::Gauge,
    histogram::{Histogram, exponential_buckets},
};
use serde::Serialize;
use tokio::sync::Notify;

use crate::{
    cmd::sync::Held,
    error::{self, EmptyInput},
    health::Checks,
    stale_sockets::StaleSockets,
};

/// The label of `balctl_sync_errors_total`.
pub type ErrorKind = [(&'static str, &'static str); 1];

/// Health-check node ports served, and those that could not be bound.
pub const SERVING: &str = "serving";
pub const FAILED: &str = "failed";

/// Why a sync applied nothing, as the errors metric counts it.
const INPUT: &str = "input";
const RUNTIME: &str = "runtime";
const API_SERVER: &str = "api_server";

/// The outcomes `balctl_stale_sockets_total` counts.
const DESTROYED: &str = "destroyed";
const LEFT: &str = "left";

/// The agent's bookkeeping, shared by its watch loop and its endpoints.
pub struct Agent {
    timeout: Duration,
    progress: Mutex<Progress>,
    /// How long each sync took, applied or not.
    pub sync_duration: Histogram,
    /// Syncs that failed, and failed requests to the API server, by kind.
    pub sync_errors: Family<ErrorKind, Counter>,
    /// Health-check node ports (src/serve/service_health.rs), by state.
    pub health_check_ports: Family<[(&'static str, &'static str); 1], Gauge>,
    /// Connected sockets of backends that left their frontends, by outcome
    /// (`DESTROYED`, `LEFT`; src/stale_sockets.rs).
    pub stale_sockets: Family<[(&'static str, &'static str); 1], Counter>,
    /// Told of every sync that applied the inputs.
    applied: Notify,
    /// The active health checks of address backends (src/health/).
    pub health: Arc<Checks>,
}

#[derive(Default)]
struct Progress {
    /// The last sync that applied the inputs.
    last_applied: Option<Instant>,
    /// The oldest change seen and not applied yet.
    pending_since: Option<Instant>,
    /// Change notifications (file events, API objects) since the last apply.
    pending_changes: u64,
    /// The sync running now.
    syncing_since: Option<Instant>,
    /// Why the last sync applied nothing.
    last_failure: Option<String>,
    /// The first failed request to the API server since it last answered.
    unreachable_since: Option<Instant>,
    api_error: Option<String>,
}

/// The state as the endpoints serve it, at one moment.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// When the last sync applied the inputs (RFC 3339); null before the first.
    pub last_updated: Option<String>,
    pub current_time: String,
    /// /healthz: the applied state is current.
    pub healthy: bool,
    /// /livez: no sync has run longer than the timeout.
    pub live: bool,
    /// /readyz: the first complete sync is applied.
    pub ready: bool,
    /// Why it is not healthy (or not live): empty while it is.
    pub reasons: Vec<String>,
    /// The oldest change not applied yet.
    pub pending_since: Option<String>,
    pub pending_changes: u64,
    pub last_sync_error: Option<String>,
    pub api_server_unreachable_since: Option<String>,
    /// `--health-timeout`, in seconds.
    pub timeout_seconds: f64,
}

impl Agent {
    pub fn new(timeout: Duration) -> Self {
        let sync_errors = Family::default();
        // Every kind is a series from the start, at zero.
        for kind in [INPUT, RUNTIME, API_SERVER] {
            let _ = sync_errors.get_or_create(&[("kind", kind)]);
        }
        let health_check_ports = Family::default();
        for state in [SERVING, FAILED] {
            let _ = health_check_ports.get_or_create(&[("state", state)]);
        }
        let stale_sockets = Family::default();
        for outcome in [DESTROYED, LEFT] {
            let _ = stale_sockets.get_or_create(&[("outcome", outcome)]);
        }
        Self {
            timeout,
            stale_sockets,
            progress: Mutex::default(),
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            sync_errors,
            health_check_ports,
            applied: Notify::new(),
            health: Arc::default(),
        }
    }

    /// Counts what a sync did with the connected sockets of backends it
    /// took away from their frontends.
    pub fn stale_sockets(&self, sockets: &StaleSockets) {
        self.stale_sockets.get_or_create(&[("outcome", DESTROYED)]).inc_by(sockets.destroyed);
        self.stale_sockets.get_or_create(&[("outcome", LEFT)]).inc_by(sockets.left);
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `count` changes were seen (the inputs at start count as one): they
    /// wait until a sync applies them.
    pub fn changed(&self, count: u64) {
        let mut progress = self.progress();
        progress.pending_since.get_or_insert_with(Instant::now);
        progress.pending_changes += count;
    }

    /// Runs one sync and records how it ended: applied (nothing waits any
    /// more), held (a file being written: its change still waits) or failed
    /// (the change waits; counted by kind).
    pub fn sync<T>(&self, run: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        self.progress().syncing_since = Some(start);
        let result = run();
        self.sync_duration.observe(start.elapsed().as_secs_f64());
        let mut progress = self.progress();
        progress.syncing_since = None;
        match &result {
            Ok(_) => {
                progress.last_applied = Some(Instant::now());
                progress.pending_since = None;
                progress.pending_changes = 0;
                progress.last_failure = None;
                self.applied.notify_one();
            }
            Err(err) => {
                let held = err.is::<Held>() || err.is::<EmptyInput>();
                if !held {
                    let kind = if error::exit_code(err) == error::EXIT_INPUT { INPUT } else { RUNTIME };
                    self.sync_errors.get_or_create(&[("kind", kind)]).inc();
                }
                progress.last_failure = Some(format!("{err:#}"));
            }
        }
        result
    }

    /// Returns once a sync has applied the inputs since the last call
    /// returned (at once if one has): syncs in between count as one.
    pub async fn applied(&self) {
        self.applied.notified().await;
    }

    /// A request to the API server failed (a watch broke, a list failed).
    pub fn api_server_failed(&self, err: &str) {
        self.sync_errors.get_or_create(&[("kind", API_SERVER)]).inc();
        let mut progress = self.progress();
        progress.unreachable_since.get_or_insert_with(Instant::now);
        progress.api_error = Some(err.to_owned());
    }

    /// The API server answered.
    pub fn api_server_answered(&self) {
        let mut progress = self.progress();
        progress.unreachable_since = None;
        progress.api_error = None;
    }

    /// When the last sync applied the inputs, and how many change
    /// notifications wait, for the metrics.
    pub fn applied_and_pending(&self) -> (Option<SystemTime>, u64) {
        let progress = self.progress();
        (progress.last_applied.map(wall_clock), progress.pending_changes)
    }

    pub fn health(&self) -> Health {
        let progress = self.progress();
        let now = Instant::now();
        let late = |since: Option<Instant>| since.filter(|&t| now.duration_since(t) >= self.timeout);
        let timeout = humantime::format_duration(self.timeout);
        let mut reasons = Vec::new();
        if let Some(since) = late(progress.pending_since) {
            let waited = humantime::format_duration(seconds(now.duration_since(since)));
            let why = match &progress.last_failure {
                Some(failure) => format!("; the last sync applied nothing: {failure}"),
                None if progress.last_applied.is_none() && progress.syncing_since.is_none() => {
                    "; no sync has applied the inputs yet".to_owned()
                }
                None => String::new(),
            };
            reasons.push(format!("a change has waited {waited} (more than --health-timeout {timeout}){why}"));
        }
        if let Some(since) = late(progress.unreachable_since) {
            let away = humantime::format_duration(seconds(now.duration_since(since)));
            let error = progress.api_error.as_deref().unwrap_or_default();
            reasons.push(format!(
                "the API server has not answered for {away} (more than --health-timeout {timeout}): {error}"
            ));
        }
        let wedged = late(progress.syncing_since);
        if let Some(since) = wedged {
            let running = humantime::format_duration(seconds(now.duration_since(since)));
            reasons.push(format!("a sync has run for {running} (more than --health-timeout {timeout})"));
        }
        let rfc3339 = |t: Instant| humantime::format_rfc3339_millis(wall_clock(t)).to_string();
        Health {
            last_updated: progress.last_applied.map(rfc3339),
            current_time: rfc3339(now),
            healthy: reasons.is_empty(),
            live: wedged.is_none(),
            ready: progress.last_applied.is_some(),
            reasons,
            pending_since: progress.pending_since.map(rfc3339),
            pending_changes: progress.pending_changes,
            last_sync_error: progress.last_failure.clone(),
            api_server_unreachable_since: progress.unreachable_since.map(rfc3339),
            timeout_seconds: self.timeout.as_secs_f64(),
        }
    }
}

/// The wall-clock time of `t`. Durations are measured on the monotonic
/// clock, so a clock step never makes a change late or current.
fn wall_clock(t: Instant) -> SystemTime {
    SystemTime::now() - t.elapsed()
}

/// Whole seconds, for messages.
fn seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The syncs the duration histogram counted.
    fn syncs(agent: &Agent) -> u64 {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("syncs", "", agent.sync_duration.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let count = text.lines().find_map(|line| line.strip_prefix("syncs_count ")).unwrap();
        count.parse().unwrap()
    }

    fn kinds(agent: &Agent) -> Vec<(&'static str, u64)> {
        [INPUT, RUNTIME, API_SERVER]
            .map(|k| (k, agent.sync_errors.get_or_create(&[("kind", k)]).get()))
            .to_vec()
    }

    #[test]
    fn a_change_is_late_after_the_timeout_and_current_once_applied() {
        let agent = Agent::new(Duration::from_millis(50));
        let health = agent.health();
        assert!(health.healthy && health.live && !health.ready, "healthy while starting, not ready");
        assert_eq!(health.last_updated, None);

        agent.changed(1);
        assert!(agent.health().healthy, "not late yet");
        std::thread::sleep(Duration::from_millis(60));
        let late = agent.health();
        assert!(!late.healthy && late.live && !late.ready);
        assert!(late.reasons[0].contains("no sync has applied the inputs yet"), "{:?}", late.reasons);

        agent.sync(|| Ok(())).unwrap();
        let applied = agent.health();
        assert!(applied.healthy && applied.ready, "{:?}", applied.reasons);
        assert!(applied.last_updated.is_some() && applied.pending_since.is_none());
        assert_eq!(syncs(&agent), 1);
    }

    #[test]
    fn a_failed_sync_keeps_its_change_waiting_and_counts_its_kind() {
        let agent = Agent::new(Duration::from_millis(50));
        agent.changed(2);
        let bad: Result<()> = Err(crate::input!("web.toml:3:1: bad"));
        assert!(agent.sync(|| bad).is_err());
        let failed: Result<()> = Err(anyhow::anyhow!("balctl is not loaded"));
        assert!(agent.sync(|| failed).is_err());
        let held: Result<()> = Err(EmptyInput { label: "web.toml".into() }.into());
        assert!(agent.sync(|| held).is_err());
        assert_eq!(kinds(&agent), [(INPUT, 1), (RUNTIME, 1), (API_SERVER, 0)]);
        assert!(agent.health().healthy, "not late yet");
        std::thread::sleep(Duration::from_millis(60));
        let health = agent.health();
        assert!(!health.healthy && !health.ready);
        assert_eq!(health.pending_changes, 2);
        assert!(health.reasons[0].contains("web.toml is empty"), "{:?}", health.reasons);
        assert_eq!(syncs(&agent), 3);
    }

    #[test]
    fn applied_returns_once_for_the_syncs_that_applied_since_the_last_call() {
        use futures::FutureExt as _;
        let agent = Agent::new(Duration::from_secs(60));
        assert_eq!(agent.applied().now_or_never(), None, "nothing applied yet");
        let failed: Result<()> = Err(anyhow::anyhow!("balctl is not loaded"));
        assert!(agent.sync(|| failed).is_err());
        assert_eq!(agent.applied().now_or_never(), None, "a failed sync applied nothing");
        agent.sync(|| Ok(())).unwrap();
        agent.sync(|| Ok(())).unwrap();
        assert_eq!(agent.applied().now_or_never(), Some(()));
        assert_eq!(agent.applied().now_or_never(), None, "two syncs in a row count as one");
    }

    #[test]
    fn an_unreachable_api_server_is_late_after_the_timeout() {
        let agent = Agent::new(Duration::from_millis(50));
        agent.sync(|| Ok(())).unwrap();
        agent.api_server_failed("connection refused");
        assert!(agent.health().healthy);
        std::thread::sleep(Duration::from_millis(60));
        let health = agent.health();
        assert!(!health.healthy && health.live && health.ready);
        assert!(health.reasons[0].contains("connection refused"), "{:?}", health.reasons);
        assert!(health.api_server_unreachable_since.is_some());
        agent.api_server_answered();
        assert!(agent.health().healthy);
        assert_eq!(kinds(&agent), [(INPUT, 0), (RUNTIME, 0), (API_SERVER, 1)]);
    }

    #[test]
    fn a_sync_running_past_the_timeout_is_not_live() {
        let agent = Agent::new(Duration::from_millis(50));
        let during = agent.sync(|| {
            std::thread::sleep(Duration::from_millis(60));
            Ok(agent.health())
        });
        let during = during.unwrap();
        assert!(!during.live && !during.healthy, "{:?}", during.reasons);
        assert!(during.reasons[0].starts_with("a sync has run for"), "{:?}", during.reasons);
        assert!(agent.health().live);
    }
}
