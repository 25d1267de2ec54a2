//! The HTTP endpoints of `sync --watch`: `/healthz`, `/livez` and
//! `/readyz` on `--health-addr` (health.rs), `/metrics` on `--metrics-addr`
//! (metrics.rs); one listener serves all four when both addresses are the
//! same. And the health-check node ports of LoadBalancer Services with
//! externalTrafficPolicy Local, opened and closed as syncs apply them
//! (service_health.rs).
//!
//! hyper (HTTP/1.1) on a tokio runtime of its own thread, so a request
//! never waits for a sync and a sync never waits for a client. Every
//! connection is a task of its own, so a client that stalls or trickles
//! holds only its own connection, and never delays another request. Limits:
//! the request head must arrive within `HEADER_READ_TIMEOUT` and fit in
//! `MAX_REQUEST_HEAD`; a connection lasts at most `CONNECTION_TIME_LIMIT`
//! and serves one request (probes and scrapes open one per request anyway);
//! beyond `MAX_CONNECTIONS` open at once, a new connection is closed at once.

mod health;
mod metrics;
mod service_health;

pub use service_health::HealthCheckPorts;

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, thread, time::Duration};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::Semaphore,
};

use crate::{agent::Agent, cli::SyncArgs, cmd::Context};

/// A client must send its whole request head within this time of connecting.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A request head larger than this is refused (a probe's or a scrape's is a
/// few hundred bytes). hyper's smallest buffer is 8 KiB.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// A connection is closed this long after it was accepted, answered or not:
/// the bound on a client that sends its head in time and then reads the
/// answer slowly, or not at all.
const CONNECTION_TIME_LIMIT: Duration = Duration::from_secs(15);

/// Connections open at once, on all listeners. A probe or a scrape holds
/// one for a few milliseconds; an idle or slow one is closed by the limits
/// above, so only a flood of new connections can reach this, and it is far
/// above what any scraper and kubelet need.
const MAX_CONNECTIONS: usize = 4096;

/// After a failed accept (out of file descriptors), wait this long before
/// the next, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connections the kernel completes before balctl accepts them: room for a
/// burst, so that a client's connect is not dropped (and retried a second
/// later) while the server is busy accepting others.
const BACKLOG: u32 = 1024;

/// What one listener serves.
#[derive(Clone, Default)]
struct Routes {
    health: Option<Arc<Agent>>,
    metrics: Option<Arc<metrics::Metrics>>,
    /// A health-check node port: every request gets its answer.
    service: Option<Arc<service_health::ServiceHealth>>,
}

/// Binds `--health-addr` and `--metrics-addr` now, so a bad or busy address
/// fails the command at once, and serves them from a thread of its own for
/// as long as the process runs; returns the health-check node ports, served
/// by the same thread once the syncs give them.
pub fn start(ctx: &Context, args: &SyncArgs, agent: &Arc<Agent>) -> Result<HealthCheckPorts> {
    let mut listeners: Vec<(SocketAddr, Routes)> = Vec::new();
    if let Some(addr) = args.health_addr {
        listeners.push((addr, Routes { health: Some(Arc::clone(agent)), ..Routes::default() }));
    }
    if let Some(addr) = args.metrics_addr {
        let metrics = Arc::new(metrics::Metrics::new(ctx, Arc::clone(agent), args.metrics_per_backend));
        match listeners.iter_mut().find(|(health, _)| *health == addr) {
            Some((_, routes)) => routes.metrics = Some(metrics),
            None => listeners.push((addr, Routes { metrics: Some(metrics), ..Routes::default() })),
        }
    }
    raise_file_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP server's runtime")?;
    // The one Metrics, on whichever listener serves it.
    let refresh_map_fill =
        listeners.iter().find_map(|(_, routes)| routes.metrics.as_ref()).map(|m| m.refresh_map_fill());
    let mut bound = Vec::new();
    for (addr, routes) in listeners {
        let flag = if routes.health.is_some() { "--health-addr" } else { "--metrics-addr" };
        let listener = runtime.block_on(async { listen(addr, false) });
        let listener = listener.with_context(|| format!("cannot listen on {addr} ({flag})"))?;
        log::info!("serving {} on http://{addr}", routes.paths().join(", "));
        bound.push((listener, routes));
    }
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let health_check_ports =
        HealthCheckPorts::new(runtime.handle().clone(), Arc::clone(&connections), Arc::clone(agent));
    thread::Builder::new()
        .name("serve".into())
        .spawn(move || {
            let accepting = bound
                .into_iter()
                .map(|(listener, routes)| accept(listener, routes, Arc::clone(&connections)));
            runtime.block_on(async {
                if let Some(refresh) = refresh_map_fill {
                    tokio::spawn(refresh);
                }
                futures::future::join_all(accepting).await;
                // With no listener of its own, the runtime still runs the
                // health-check node ports.
                std::future::pending::<()>().await
            });
        })
        .context("cannot start the HTTP server's thread")?;
    Ok(health_check_ports)
}

/// A listening socket on `addr`, in the runtime of the caller; on the
/// unspecified IPv6 address and `dual_stack`, for IPv4 as well, whatever
/// net.ipv6.bindv6only says.
fn listen(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
    if dual_stack {
        rustix::net::sockopt::set_ipv6_v6only(&socket, false)?;
    }
    // A restarted agent binds again while its old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts connections for ever, each served by a task of its own.
async fn accept(listener: TcpListener, routes: Routes, connections: Arc<Semaphore>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                log::warn!("HTTP: cannot accept a connection: {err}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Over the cap the connection is dropped, which closes it.
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            log::debug!("HTTP: {MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(routes.answer(&request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIME_LIMIT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => log::debug!("HTTP: a connection failed: {err}"),
                Err(_) => {
                    log::debug!("HTTP: a connection took longer than {CONNECTION_TIME_LIMIT:?}; closed")
                }
            }
            drop(permit);
        });
    }
}

impl Routes {
    fn paths(&self) -> Vec<&'static str> {
        let health = self.health.iter().flat_map(|_| health::PATHS);
        health.chain(self.metrics.iter().map(|_| metrics::PATH)).collect()
    }

    async fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if let Some(service) = &self.service {
            // kube-proxy answers any path and method alike.
            return service.answer();
        }
        let path = request.uri().path();
        let probe = self.health.as_ref().zip(health::Probe::of(path));
        let metrics = self.metrics.as_ref().filter(|_| path == metrics::PATH);
        if probe.is_none() && metrics.is_none() {
            let paths = self.paths().join(", ");
            return text(StatusCode::NOT_FOUND, format!("balctl serves {paths} here\n"));
        }
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
            response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match (probe, metrics) {
            (Some((agent, probe)), _) => health::answer(agent, probe),
            (None, Some(metrics)) => metrics.answer().await,
            (None, None) => unreachable!("answered above"),
        }
    }
}

/// A plain-text answer. hyper leaves the body out for HEAD.
fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

/// Raises the soft limit of open files to the hard one, as Go programs
/// (kube-proxy among them) do at start: systemd's default soft limit of
/// 1,024 is below `MAX_CONNECTIONS`, and a connection the kernel refused
/// for want of descriptors would not be counted or closed by the cap.
fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            log::debug!("cannot raise the open-file limit: {}", io::Error::from(err));
        }
    }
}
