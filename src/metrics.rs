//! `sync --watch --metrics-addr ADDR`: the per-frontend counters and the
//! node's as Prometheus text (exposition format 0.0.4) on `GET /metrics`.
//!
//! A small HTTP/1.x responder on a thread of its own, so a scrape never
//! delays a sync and the watch loop never waits for a client. Connections
//! are answered one at a time and closed; timeouts keep a stalled client
//! from holding the thread. Each scrape reads the counters from the maps and
//! the frontends from the state dir, so it always shows what is applied.

use std::{
    fmt::Write as _,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    bpf::{counters::CounterMaps, pins::PinDir},
    state::StateDir,
    stats::{self, DatapathCounters, FrontendStats, GaveWay},
};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a client may take to send its request or take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A request head larger than this is refused (a scrape's is a few hundred bytes).
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Binds `addr` now, so a bad or busy address fails the command at once,
/// and answers scrapes from a background thread for as long as the process runs.
pub fn serve(addr: SocketAddr, pins: PinDir, state: StateDir) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("cannot serve metrics on {addr} (--metrics-addr)"))?;
    log::info!("serving Prometheus metrics on http://{addr}/metrics");
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let answered = stream.and_then(|stream| answer(stream, &pins, &state));
                if let Err(err) = answered {
                    log::debug!("metrics: a request failed: {err}");
                }
            }
        })
        .context("cannot start the metrics thread")?;
    Ok(())
}

fn answer(mut stream: TcpStream, pins: &PinDir, state: &StateDir) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = read_head(&mut stream)?;
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => match scrape(pins, state) {
            Ok(body) => ("200 OK", body),
            Err(err) => {
                log::warn!("metrics: cannot read the counters: {err:#}");
                ("500 Internal Server Error", format!("cannot read the counters: {err:#}\n"))
            }
        },
        (_, "/metrics") => ("405 Method Not Allowed", "only GET\n".to_owned()),
        _ => ("404 Not Found", "balctl serves /metrics only\n".to_owned()),
    };
    let allow = if status.starts_with("405") { "Allow: GET\r\n" } else { "" };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The request line and headers, up to the blank line. All of it is read
/// before answering: closing a socket with unread data resets the
/// connection, and the client could lose the answer.
fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn scrape(pins: &PinDir, state: &StateDir) -> Result<String> {
    let counters = CounterMaps::open(pins)?;
    let state = state.read()?;
    Ok(render(&stats::read(&counters, &state.image, |_| true)?, &DatapathCounters::read(pins)?))
}

/// The counters in the text exposition format, one family after another.
fn render(frontends: &[FrontendStats], datapath: &DatapathCounters) -> String {
    let mut out = String::new();
    family(&mut out, "balctl_resolutions_total", "Sockets and unconnected UDP datagrams sent to a backend.");
    for f in frontends {
        sample(&mut out, "balctl_resolutions_total", &labels(f, &[]), f.resolutions);
    }
    family(&mut out, "balctl_failures_total", "Resolutions refused (ECONNREFUSED), by reason.");
    for f in frontends {
        for (reason, count) in f.failures.by_reason() {
            sample(&mut out, "balctl_failures_total", &labels(f, &[("reason", reason)]), count);
        }
    }
    family(
        &mut out,
        "balctl_gave_way_total",
        "Connections a redirect policy left to the next layer, by reason.",
    );
    for f in frontends {
        for (reason, count) in f.gave_way.iter().flat_map(GaveWay::by_reason) {
            sample(&mut out, "balctl_gave_way_total", &labels(f, &[("reason", reason)]), count);
        }
    }
    family(&mut out, "balctl_backend_hits_total", "Resolutions that chose this backend of the frontend.");
    for f in frontends {
        for backend in &f.backends {
            let address = backend.backend.to_string();
            sample(&mut out, "balctl_backend_hits_total", &labels(f, &[("backend", &address)]), backend.hits);
        }
    }
    family(
        &mut out,
        "balctl_socket_translations_evicted_total",
        "Open sockets whose translation a new socket took in the full sockets map: their getpeername() \
         and recvmsg() show the backend. balctl status says how to make room.",
    );
    sample(&mut out, "balctl_socket_translations_evicted_total", "", datapath.evicted_translations);
    out
}

fn family(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}

/// One sample; a family without labels has none.
fn sample(out: &mut String, name: &str, labels: &str, value: u64) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// `frontend="...",name="..."` and `more`, escaped.
fn labels(frontend: &FrontendStats, more: &[(&str, &str)]) -> String {
    [("frontend", frontend.frontend.as_str()), ("name", frontend.name.as_str())]
        .iter()
        .chain(more)
        .map(|(label, value)| format!("{label}=\"{}\"", escape(value)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Label values escape backslash, double quote and line feed.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
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

    #[test]
    fn renders_every_family_with_help_type_and_escaped_labels() {
        let local_dns = FrontendStats {
            frontend: "198.18.0.10:53/udp@redirect".into(),
            name: "localredirectpolicy/kube-system/dns".into(),
            gave_way: Some(GaveWay { no_backend: 1, rate_limit: 5 }),
            backends: Vec::new(),
            ..web()
        };
        let text = render(&[web(), local_dns], &DatapathCounters { evicted_translations: 236 });
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
    fn no_frontends_still_describe_the_families() {
        let text = render(&[], &DatapathCounters { evicted_translations: 0 });
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 5);
        // The node's counter, the one sample without a frontend.
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples, ["balctl_socket_translations_evicted_total 0"]);
    }
}
