//! Health-check node ports: kube-proxy's service health server
//! (pkg/proxy/healthcheck/service_health.go), for the LoadBalancer Services
//! with externalTrafficPolicy Local. A load balancer asks every node on the
//! Service's `healthCheckNodePort` whether it has endpoints of the Service,
//! and sends traffic only to those that answer 200; the datapath drops
//! such a Service's packets on the others.
//!
//! After each sync that applied, the watch loop gives the health checks of
//! the applied objects (`HealthCheck`, made by the same translation as the
//! rules) to `HealthCheckPorts::update`: a port is opened for each new Service,
//! moved when its port changes, closed when the Service goes or stops
//! needing one, and its count changed in place. Each is one dual-stack
//! socket on `[::]:PORT` (`0.0.0.0:PORT` where IPv6 is off), served by the
//! agent's HTTP server (src/serve/mod.rs), with its limits. A port that
//! cannot be bound is logged once and counted in
//! `balctl_health_check_node_ports{state="failed"}`, and tried again after
//! each sync; the sync itself does not fail, as kube-proxy's does not.
//!
//! Every request, whatever its path or method, gets kube-proxy's answer:
//! 200 when the Service has local endpoints and the agent is healthy (its
//! `/healthz` would answer 200), 503 otherwise, with the JSON body
//! `{"service":{"namespace":..,"name":..},"localEndpoints":N,"serviceProxyHealthy":B}`.

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes};
use serde::Serialize;
use tokio::{net::TcpListener, runtime::Handle, sync::Semaphore, task::JoinHandle};

use super::Routes;
use crate::{
    agent::{Agent, FAILED, SERVING},
    model::HealthCheck,
};

/// What one health-check node port answers about.
pub struct ServiceHealth {
    namespace: String,
    name: String,
    local_endpoints: AtomicU32,
    agent: Arc<Agent>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer<'a> {
    service: ServiceName<'a>,
    local_endpoints: u32,
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct ServiceName<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl ServiceHealth {
    pub fn answer(&self) -> Response<Full<Bytes>> {
        let local_endpoints = self.local_endpoints.load(Ordering::Relaxed);
        let service_proxy_healthy = self.agent.health().healthy;
        let status = if local_endpoints > 0 && service_proxy_healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let answer = Answer {
            service: ServiceName { namespace: &self.namespace, name: &self.name },
            local_endpoints,
            service_proxy_healthy,
        };
        let mut body = serde_json::to_string(&answer).expect("the answer serialises");
        body.push('\n');
        super::response(status, "application/json", body)
    }
}

/// A Service's open port.
struct Open {
    port: u16,
    health: Arc<ServiceHealth>,
    accepting: JoinHandle<()>,
}

/// The health-check node ports served, by Service (namespace, name).
pub struct HealthCheckPorts {
    runtime: Handle,
    connections: Arc<Semaphore>,
    agent: Arc<Agent>,
    open: Mutex<BTreeMap<(String, String), Open>>,
    /// Ports that could not be bound, by Service: told once.
    failed: Mutex<BTreeMap<(String, String), u16>>,
}

impl HealthCheckPorts {
    pub fn new(runtime: Handle, connections: Arc<Semaphore>, agent: Arc<Agent>) -> Self {
        Self { runtime, connections, agent, open: Mutex::default(), failed: Mutex::default() }
    }

    /// Serves exactly `checks` from now on. Returns once a port closed is
    /// closed (so another Service can take it at once) and a port opened
    /// is listening.
    pub fn update<'a>(&self, checks: impl IntoIterator<Item = &'a HealthCheck>) {
        let wanted: BTreeMap<(String, String), &HealthCheck> =
            checks.into_iter().map(|c| ((c.namespace.clone(), c.name.clone()), c)).collect();
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut failed = self.failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let gone: Vec<(String, String)> = (open.iter())
            .filter(|(key, o)| wanted.get(*key).is_none_or(|c| c.port != o.port))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            let closed = open.remove(&key).expect("listed above");
            closed.accepting.abort();
            // Aborted, the task drops its listener when the runtime next
            // polls it: wait for that, so the port is free.
            let _ = futures::executor::block_on(closed.accepting);
            log::info!("health check of service {}/{}: closed port {}", key.0, key.1, closed.port);
        }
        failed.retain(|key, port| wanted.get(key).is_some_and(|c| c.port == *port));
        for (key, check) in wanted {
            if let Some(serving) = open.get(&key) {
                serving.health.local_endpoints.store(check.local_endpoints, Ordering::Relaxed);
                continue;
            }
            match self.listen(check.port) {
                Ok(listener) => {
                    failed.remove(&key);
                    let health = Arc::new(ServiceHealth {
                        namespace: check.namespace.clone(),
                        name: check.name.clone(),
                        local_endpoints: AtomicU32::new(check.local_endpoints),
                        agent: Arc::clone(&self.agent),
                    });
                    let routes = Routes { service: Some(Arc::clone(&health)), ..Routes::default() };
                    let accepting =
                        self.runtime.spawn(super::accept(listener, routes, Arc::clone(&self.connections)));
                    log::info!(
                        "health check of service {}/{}: serving port {} ({} local endpoints)",
                        check.namespace,
                        check.name,
                        check.port,
                        check.local_endpoints
                    );
                    open.insert(key, Open { port: check.port, health, accepting });
                }
                Err(err) => {
                    if failed.insert(key, check.port) != Some(check.port) {
                        log::warn!(
                            "health check of service {}/{}: cannot listen on port {}: {err}; load balancers \
                             see this node as down for it (retried after each sync)",
                            check.namespace,
                            check.name,
                            check.port
                        );
                    }
                }
            }
        }
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.agent.health_check_ports.get_or_create(&[("state", SERVING)]).set(count(open.len()));
        self.agent.health_check_ports.get_or_create(&[("state", FAILED)]).set(count(failed.len()));
    }

    /// A listening socket on every address of both families, or of IPv4
    /// where the node has no IPv6.
    fn listen(&self, port: u16) -> io::Result<TcpListener> {
        let _runtime = self.runtime.enter();
        let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        match super::listen(any6, true) {
            Err(err) if err.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                super::listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), false)
            }
            result => result,
        }
    }
}
