//! `/metrics`: the datapath's counters (src/stats.rs, as `dump stats` shows
//! them), the fill of every map (as `status` computes it, read in the
//! background: fill.rs) and the agent's own metrics (src/agent.rs), in the
//! Prometheus text format 0.0.4, encoded by prometheus-client.
//!
//! Each scrape reads the counters from the maps and the frontends from the
//! state dir, so it always shows what is applied. A scrape that cannot read
//! them (balctl unloaded, the pins gone) still answers 200 with the agent's
//! metrics and `balctl_datapath_readable 0`, and logs why: a probe or an
//! alert sees it, and nothing restarts the agent over it. Scrapes read the
//! datapath one at a time, off the runtime's thread.

mod fill;

use std::{fmt, future::Future, sync::Arc};

use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::{Registry, Unit},
};
use tokio::sync::Semaphore;

use crate::{
    agent::Agent,
    bpf::{counters::CounterMaps, pins::PinDir},
    cmd::Context,
    state::StateDir,
    stats::{self, DatapathCounters, FrontendStats, GaveWay},
};

pub const PATH: &str = "/metrics";

pub struct Metrics {
    registry: Registry,
    /// One scrape reads the datapath at a time: each reads the whole state.
    scrapes: Semaphore,
    /// What `refresh_map_fill` reads, for the scrapes.
    map_fills: fill::MapFills,
    pins: PinDir,
    agent: Arc<Agent>,
}

impl Metrics {
    pub fn new(ctx: &Context, agent: Arc<Agent>, per_backend: bool) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "balctl_build",
            "The balctl version that serves these metrics",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_with_unit(
            "balctl_sync_duration",
            "How long each sync of the watch took, applied or not",
            Unit::Seconds,
            agent.sync_duration.clone(),
        );
        registry.register(
            "balctl_sync_errors",
            "Syncs that applied nothing, by kind: input (a file or object balctl refuses), runtime (balctl \
             not loaded, a map write failed), api_server (a failed request of the Kubernetes watch)",
            agent.sync_errors.clone(),
        );
        registry.register(
            "balctl_health_check_node_ports",
            "Health-check node ports of LoadBalancer services with externalTrafficPolicy Local, by state: \
             serving, or failed (the port could not be bound; tried again after each sync)",
            agent.health_check_ports.clone(),
        );
        registry.register(
            "balctl_stale_sockets",
            "Connected sockets of backends that a sync took away from their frontends, by outcome: \
             destroyed, or left (the kernel refused, or has no bpf_sock_destroy: before Linux 6.5)",
            agent.stale_sockets.clone(),
        );
        registry.register(
            "balctl_health_probes",
            "Active health-check probes of address backends, by result: success or failure",
            agent.health.probes.clone(),
        );
        registry.register_collector(Box::new(AgentState(Arc::clone(&agent))));
        let datapath = Datapath { pins: ctx.pins.clone(), state: ctx.state.clone(), per_backend };
        registry.register_collector(Box::new(datapath));
        let map_fills = fill::MapFills::default();
        registry.register_collector(Box::new(map_fills.clone()));
        Self { registry, scrapes: Semaphore::new(1), map_fills, pins: ctx.pins.clone(), agent }
    }

    /// Reads the map fill the scrapes serve, now and whenever it may have
    /// changed, for as long as the runtime that runs it.
    pub fn refresh_map_fill(&self) -> impl Future<Output = ()> + Send + 'static {
        self.map_fills.clone().refresh(self.pins.clone(), Arc::clone(&self.agent))
    }

    pub async fn answer(self: &Arc<Self>) -> Response<Full<Bytes>> {
        let Ok(_scrape) = self.scrapes.acquire().await else { unreachable!("the semaphore is never closed") };
        let metrics = Arc::clone(self);
        let encoded = tokio::task::spawn_blocking(move || {
            let mut body = String::new();
            prometheus_text::encode(&mut body, &metrics.registry).map(|()| body)
        })
        .await;
        match encoded {
            Ok(Ok(body)) => super::response(StatusCode::OK, prometheus_text::CONTENT_TYPE, body),
            failed => {
                log::error!("metrics: cannot encode the metrics: {failed:?}");
                super::text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n".into())
            }
        }
    }
}

/// The agent's metrics that are a state, not a count: read at each scrape.
struct AgentState(Arc<Agent>);

impl fmt::Debug for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentState")
    }
}

impl Collector for AgentState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let (applied, pending) = self.0.applied_and_pending();
        let applied = applied
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |since_epoch| since_epoch.as_secs_f64());
        gauge(
            &mut encoder,
            "balctl_last_successful_sync_timestamp_seconds",
            "When a sync last applied the inputs, in seconds since the epoch; 0 before the first.",
            applied,
        )?;
        gauge(
            &mut encoder,
            "balctl_changes_pending",
            "Change notifications (input file events, Kubernetes objects changed) seen and not applied yet.",
            pending,
        )?;
        let mut family = gauge_family(
            &mut encoder,
            "balctl_backend_healthy",
            "1 while the backend passes its active health check, 0 while it fails it (it has left the slots \
             of its rules), by backend, protocol and check (tcp, http or dns).",
        )?;
        for (target, state) in self.0.health.states() {
            let backend = target.backend.to_string();
            let protocol = target.protocol.to_string();
            let labels = [
                ("backend", backend.as_str()),
                ("protocol", protocol.as_str()),
                ("check", target.check.probe.kind()),
            ];
            ConstGauge::new(u64::from(state.healthy)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// What a scrape reads from the datapath: the pins and the state dir.
struct Datapath {
    pins: PinDir,
    state: StateDir,
    per_backend: bool,
}

impl fmt::Debug for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datapath").field("pins", &self.pins).field("state", &self.state).finish()
    }
}

impl Collector for Datapath {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let snapshot = Snapshot::read(&self.pins, &self.state);
        if let Err(err) = &snapshot {
            log::warn!("metrics: cannot read the datapath: {err:#}");
        }
        gauge(
            &mut encoder,
            "balctl_datapath_readable",
            "1 if this scrape read the datapath's counters, 0 if it could not (the log says why): the \
             datapath's metrics are missing from it.",
            u64::from(snapshot.is_ok()),
        )?;
        match snapshot {
            Ok(snapshot) => snapshot.encode(&mut encoder, self.per_backend),
            Err(_) => Ok(()),
        }
    }
}

/// The datapath's counters at one scrape.
struct Snapshot {
    frontends: Vec<FrontendStats>,
    datapath: DatapathCounters,
}

impl Snapshot {
    fn read(pins: &PinDir, state: &StateDir) -> anyhow::Result<Self> {
        let counters = CounterMaps::open(pins)?;
        let state = state.read()?;
        Ok(Self {
            frontends: stats::read(&counters, &state.image, |_| true)?,
            datapath: DatapathCounters::read(pins)?,
        })
    }

    fn encode(&self, encoder: &mut DescriptorEncoder, per_backend: bool) -> fmt::Result {
        let frontends = &self.frontends;
        let mut family = counter(
            encoder,
            "balctl_resolutions",
            "Sockets and unconnected UDP datagrams sent to a backend.",
        )?;
        for f in frontends {
            ConstCounter::new(f.resolutions).encode(family.encode_family(&frontend(f))?)?;
        }
        let mut family =
            counter(encoder, "balctl_failures", "Resolutions refused (ECONNREFUSED), by reason.")?;
        for f in frontends {
            for (reason, count) in f.failures.by_reason() {
                let [a, b] = frontend(f);
                ConstCounter::new(count).encode(family.encode_family(&[a, b, ("reason", reason)])?)?;
            }
        }
        let mut family = counter(
            encoder,
            "balctl_gave_way",
            "Connections a redirect policy left to the next layer, by reason.",
        )?;
        for f in frontends {
            for (reason, count) in f.gave_way.iter().flat_map(GaveWay::by_reason) {
                let [a, b] = frontend(f);
                ConstCounter::new(count).encode(family.encode_family(&[a, b, ("reason", reason)])?)?;
            }
        }
        // One series per backend of every frontend: hundreds of thousands
        // on a big cluster's node, so only on request.
        if per_backend {
            let mut family = counter(
                encoder,
                "balctl_backend_hits",
                "Resolutions that chose this backend of the frontend.",
            )?;
            for f in frontends {
                for backend in &f.backends {
                    let [a, b] = frontend(f);
                    let address = backend.backend.to_string();
                    let labels = [a, b, ("backend", address.as_str())];
                    ConstCounter::new(backend.hits).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let evicted = counter(
            encoder,
            "balctl_socket_translations_evicted",
            "Open sockets whose translation a new socket took in the full sockets map: their getpeername() \
             and recvmsg() show the backend. balctl status says how to make room.",
        )?;
        ConstCounter::new(self.datapath.evicted_translations).encode(evicted)
    }
}

/// The labels every frontend's series has.
fn frontend(f: &FrontendStats) -> [(&'static str, &str); 2] {
    [("frontend", f.frontend.as_str()), ("name", f.name.as_str())]
}

/// A counter family's descriptor; `name` without `_total`, which the
/// encoder adds.
fn counter<'e>(
    encoder: &'e mut DescriptorEncoder,
    name: &'e str,
    help: &str,
) -> Result<prometheus_client::encoding::MetricEncoder<'e>, fmt::Error> {
    encoder.encode_descriptor(name, help, None, MetricType::Counter)
}

fn gauge_family<'e>(
    encoder: &'e mut DescriptorEncoder,
    name: &'e str,
    help: &str,
) -> Result<prometheus_client::encoding::MetricEncoder<'e>, fmt::Error> {
    encoder.encode_descriptor(name, help, None, MetricType::Gauge)
}

/// A gauge without labels.
fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> fmt::Result {
    ConstGauge::new(value).encode(gauge_family(encoder, name, help)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{BackendHits, Failures, GaveWay};

    fn web() -> FrontendStats {
        FrontendStats {
            frontend: "[2001:db8::10]:80/tcp".into(),
            service_id: 1,
            name: "service/ns/we\"b\\x\ny".into(),
            resolutions: 100,
            failures: Failures { no_backend: 2, no_local_backend: 0, stale: 0, family: 0 },
            gave_way: None,
            backends: vec![BackendHits {
                backend_id: 3,
                backend: "[2001:db8::2]:8080".parse().unwrap(),
                hits: 100,
            }],
        }
    }

    /// A snapshot encoded as a scrape encodes it.
    struct Fixed(Snapshot, bool);

    impl fmt::Debug for Fixed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Fixed")
        }
    }

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            self.0.encode(&mut encoder, self.1)
        }
    }

    fn render(frontends: Vec<FrontendStats>, evicted: u64, per_backend: bool) -> String {
        let snapshot = Snapshot { frontends, datapath: DatapathCounters { evicted_translations: evicted } };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(snapshot, per_backend)));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn renders_every_family_with_help_type_and_escaped_labels() {
        let local_dns = FrontendStats {
            frontend: "198.18.0.10:53/udp@redirect".into(),
            name: "localredirectpolicy/kube-system/dns".into(),
            gave_way: Some(GaveWay { no_backend: 1, rate_limit: 5 }),
            backends: Vec::new(),
            ..web()
        };
        let text = render(vec![web(), local_dns], 236, true);
        let name = r#"name="service/ns/we\"b\\x\ny""#;
        let dns = r#"name="localredirectpolicy/kube-system/dns""#;
        let dns_failures: String = ["no_backend\"} 2", "no_local_backend\"} 0", "stale\"} 0", "family\"} 0"]
            .iter()
            .map(|tail| {
                format!(
                    "balctl_failures_total{{frontend=\"198.18.0.10:53/udp@redirect\",{dns},reason=\"{tail}\n"
                )
            })
            .collect();
        let expected = format!(
            "# HELP balctl_resolutions_total Sockets and unconnected UDP datagrams sent to a backend.\n\
             # TYPE balctl_resolutions_total counter\n\
             balctl_resolutions_total{{frontend=\"[2001:db8::10]:80/tcp\",{name}}} 100\n\
             balctl_resolutions_total{{frontend=\"198.18.0.10:53/udp@redirect\",{dns}}} 100\n\
             # HELP balctl_failures_total Resolutions refused (ECONNREFUSED), by reason.\n\
             # TYPE balctl_failures_total counter\n\
             balctl_failures_total{{frontend=\"[2001:db8::10]:80/tcp\",{name},reason=\"no_backend\"}} 2\n\
             balctl_failures_total{{frontend=\"[2001:db8::10]:80/tcp\",{name},reason=\"no_local_backend\"}} 0\n\
             balctl_failures_total{{frontend=\"[2001:db8::10]:80/tcp\",{name},reason=\"stale\"}} 0\n\
             balctl_failures_total{{frontend=\"[2001:db8::10]:80/tcp\",{name},reason=\"family\"}} 0\n\
             {dns_failures}\
             # HELP balctl_gave_way_total Connections a redirect policy left to the next layer, by reason.\n\
             # TYPE balctl_gave_way_total counter\n\
             balctl_gave_way_total{{frontend=\"198.18.0.10:53/udp@redirect\",{dns},reason=\"no_backend\"}} 1\n\
             balctl_gave_way_total{{frontend=\"198.18.0.10:53/udp@redirect\",{dns},reason=\"rate_limit\"}} 5\n\
             # HELP balctl_backend_hits_total Resolutions that chose this backend of the frontend.\n\
             # TYPE balctl_backend_hits_total counter\n\
             balctl_backend_hits_total{{frontend=\"[2001:db8::10]:80/tcp\",{name},backend=\"[2001:db8::2]:8080\"}} 100\n\
             # HELP balctl_socket_translations_evicted_total Open sockets whose translation a new socket took \
             in the full sockets map: their getpeername() and recvmsg() show the backend. balctl status says \
             how to make room.\n\
             # TYPE balctl_socket_translations_evicted_total counter\n\
             balctl_socket_translations_evicted_total 236\n"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn per_backend_series_only_on_request() {
        let text = render(vec![web()], 0, false);
        assert!(!text.contains("balctl_backend_hits"), "{text}");
        assert!(text.contains("balctl_resolutions_total{"), "{text}");
    }

    #[test]
    fn no_frontends_still_describe_the_families() {
        let text = render(Vec::new(), 0, true);
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 5);
        // The node's counter, the one sample without a frontend.
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples, ["balctl_socket_translations_evicted_total 0"]);
    }

    #[test]
    fn an_unreadable_datapath_still_answers_the_agent_metrics() {
        let dir = std::env::temp_dir().join(format!("balctl-metrics-{}", std::process::id()));
        let ctx = Context {
            pins: PinDir::new(dir.join("no-pins")),
            state: StateDir::new(dir.join("no-state")),
            output: crate::output::OutputFormat::Table,
            verbose: 0,
            quiet: true,
            no_headers: false,
        };
        let agent = Arc::new(Agent::new(std::time::Duration::from_secs(60)));
        agent.sync(|| Ok(())).unwrap();
        let metrics = Metrics::new(&ctx, agent, false);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &metrics.registry).unwrap();
        for line in [
            "balctl_datapath_readable 0",
            "balctl_changes_pending 0",
            "balctl_sync_duration_seconds_count 1",
            "balctl_sync_errors_total{kind=\"input\"} 0",
            concat!("balctl_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1"),
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(!text.contains("balctl_resolutions"), "{text}");
        let synced = text.lines().find(|l| l.starts_with("balctl_last_successful_sync_timestamp_seconds "));
        let synced: f64 = synced.unwrap().rsplit_once(' ').unwrap().1.parse().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((now - synced).abs() < 60.0, "{synced} vs {now}");
    }
}
