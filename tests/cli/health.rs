//! Issue 17, build 3: the agent's `/healthz`, `/livez`, `/readyz` and
//! `/metrics` (`sync --watch --health-addr --metrics-addr`), with real
//! clients (std TcpStream) against the real agent on the real kernel.
//!
//! - Must show 3: a client trickling a byte a second plus 500 idle
//!   connections delay no probe and no scrape (each under 100 ms); the
//!   server closes the stalled ones itself.
//! - Must show 4: with `--kube`, `/healthz` turns 503 once the API server
//!   has been away longer than `--health-timeout` while a change waits, and
//!   200 again once it is back and the change is applied.
//! - `/readyz` 503 until the first sync applies, `/livez` 200, a failed sync
//!   makes `/healthz` 503 once the timeout has passed; the agent metrics
//!   after the syncs; a scrape of an unloaded datapath still answers.

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use crate::{
    kube_sync::{slice, web_in_a_cluster},
    stats::{free_port, http, http_get, samples, scrape_text, services},
    support::{Sandbox, watcher::Watcher},
};

/// Must show 3: how long each request may take beside stalled clients.
const ANSWER_WITHIN: Duration = Duration::from_millis(100);

/// GET `path`: the status code and the body as JSON (health endpoints),
/// or None if nothing answers (yet).
fn try_probe(port: u16, path: &str) -> Option<(u16, Value)> {
    let (status, body) = http_get(port, path)?;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
    Some((status, json))
}

fn probe(port: u16, path: &str) -> (u16, Value) {
    try_probe(port, path).unwrap_or_else(|| panic!("nothing answers {path} on {port}"))
}

/// Waits (at most `within`) for `path` to answer `status`; returns the body
/// and how long it took.
fn wait_for_status(port: u16, path: &str, status: u16, within: Duration) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let answer = try_probe(port, path);
        match answer {
            Some((now, body)) if now == status => return (body, start.elapsed()),
            _ => {
                assert!(start.elapsed() < within, "{path} answers {answer:?}, not {status}, after {within:?}")
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A connection that sends a request one byte a second, until stopped or
/// closed by the server; returns after how long the server closed it, if
/// it did.
fn trickle(port: u16, stop: Arc<AtomicBool>) -> thread::JoinHandle<Option<Duration>> {
    let mut stream =
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect the trickler");
    thread::spawn(move || {
        let start = Instant::now();
        let request =
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for byte in request {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            if stream.write_all(&[*byte]).is_err() {
                return Some(start.elapsed());
            }
            thread::sleep(Duration::from_secs(1));
        }
        None
    })
}

/// Whether the server closed `stream` (end of stream or reset).
fn closed_by_server(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(err) => err.kind() != ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

/// Must show 3, with the maps at their default sizes: a scrape serves the
/// map fill the agent read in the background, and reads none of the maps'
/// entries itself (walking the sockets map's 65,536 sets alone took longer
/// than 100 ms in a debug build). The fill is read again every 10 s with
/// no sync.
pub fn a_stalled_client_and_idle_connections_delay_no_request() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let file = sandbox.scratch("web.toml");
    fs::write(&file, services(&[2, 3], true)).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let watcher = Watcher::start_with(
        &sandbox,
        &[file.to_str().unwrap()],
        &["--health-addr", &addr, "--metrics-addr", &addr],
    );
    watcher.wait_stdout("sync: frontends +2 ~0 -0");
    let first_fill = wait_for_sample(port, "balctl_map_fill_timestamp_seconds", |at| at > 0.0);

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Instant::now();
    let trickler = trickle(port, Arc::clone(&stop));
    let idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("an idle connection"))
        .collect();
    println!("500 idle connections open in {:?}", opened.elapsed());
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        for path in ["/metrics", "/healthz"] {
            let start = Instant::now();
            let answer = http_get(port, path).map(|(status, _)| status);
            let took = start.elapsed();
            assert_eq!(answer, Some(200), "{path}, round {round}");
            assert!(took < ANSWER_WITHIN, "{path}, round {round}: {took:?}");
            slowest = slowest.max(took);
        }
    }
    let answered = opened.elapsed();
    println!(
        "40 requests beside a trickler and 500 idle connections: slowest {slowest:?}, all in {answered:?}"
    );
    assert!(
        answered < Duration::from_secs(4),
        "the requests ran past the idle connections' limit: {answered:?}"
    );
    assert_eq!(
        idle.iter().filter(|stream| closed_by_server(stream)).count(),
        0,
        "the server closed idle connections early"
    );

    // The server closes a head that has not come within 5 s itself, idle or
    // trickling, so they hold nothing for long.
    thread::sleep(Duration::from_secs(6).saturating_sub(opened.elapsed()));
    assert_eq!(
        idle.iter().filter(|stream| !closed_by_server(stream)).count(),
        0,
        "idle connections the server did not close"
    );
    thread::sleep(Duration::from_secs(9).saturating_sub(opened.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let trickled = trickler.join().unwrap().expect("the server never closed the trickling connection");
    assert!(trickled < Duration::from_secs(9), "{trickled:?}");
    assert_eq!(http_get(port, "/healthz").map(|(status, _)| status), Some(200));

    // No sync since: the fill is read again on its period (10 s).
    let refreshed = wait_for_sample(port, "balctl_map_fill_timestamp_seconds", |at| at > first_fill);
    assert!(refreshed - first_fill < 15.0, "read again after {}s", refreshed - first_fill);
    assert_eq!(watcher.terminate(), Some(0));
}

/// The value of `series` in a scrape.
fn sample(text: &str, series: &str) -> f64 {
    *samples(text).get(series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Scrapes until `series` is there and `wanted` (at most 12 s: the map
/// fill's period and then some); returns its value.
fn wait_for_sample(port: u16, series: &str, wanted: impl Fn(f64) -> bool) -> f64 {
    let start = Instant::now();
    loop {
        let text = scrape_text(port);
        match samples(&text).get(series) {
            Some(&value) if wanted(value) => return value,
            value => assert!(start.elapsed() < Duration::from_secs(12), "{series} is {value:?}:\n{text}"),
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `/readyz`, `/livez`, `/healthz` and the agent metrics through a watch of
/// files: not ready before the first sync applies, a failed sync makes
/// /healthz 503 once it has waited the timeout (not at once: the next change
/// may fix it, as kube-proxy waits for its next sync), and 200 again when
/// fixed; the health and metrics listeners serve only their own paths.
pub fn probes_and_agent_metrics_follow_the_syncs() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let file = sandbox.scratch("web.toml");
    let broken = "[[service]]\nname = \"web\"\naddresses = [\"198.18.0.10\"]\nports = [{ port = \"x\" }]\n";
    fs::write(&file, broken).unwrap();
    let (health, metrics) = (free_port(), free_port());
    let (health_addr, metrics_addr) = (format!("127.0.0.1:{health}"), format!("127.0.0.1:{metrics}"));
    let watcher = Watcher::start_with(
        &sandbox,
        &[file.to_str().unwrap()],
        &["--health-addr", &health_addr, "--metrics-addr", &metrics_addr, "--health-timeout", "2s"],
    );
    watcher.wait_stderr("web.toml:4");
    let (before, _) = wait_for_status(health, "/readyz", 503, Duration::from_secs(10));
    assert_eq!(before["lastUpdated"], Value::Null, "{before:#}");
    assert!(before["currentTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{before:#}");
    assert_eq!(probe(health, "/livez").0, 200);
    assert_eq!(http_get(health, "/metrics").map(|(s, _)| s), Some(404));
    assert_eq!(http_get(metrics, "/healthz").map(|(s, _)| s), Some(404));
    let (status, head, _) = http(health, "POST", "/healthz").unwrap();
    assert_eq!(status, 405);
    assert!(head.to_lowercase().contains("allow: get, head"), "{head}");
    let (status, head, body) = http(health, "HEAD", "/readyz").unwrap();
    assert_eq!((status, body.as_str()), (503, ""), "{head}");

    fs::write(&file, services(&[2, 3], false)).unwrap();
    watcher.wait_stdout("sync: frontends +1 ~0 -0");
    let (ready, _) = wait_for_status(health, "/readyz", 200, Duration::from_secs(5));
    assert!(ready["lastUpdated"].is_string(), "{ready:#}");
    assert_eq!(probe(health, "/healthz").0, 200);

    // The map fill is read again once a sync applies, not on the next
    // period: the web service's frontend and its two backend slots.
    let applied_at = Instant::now();
    wait_for_sample(metrics, "balctl_map_entries{map=\"services\"}", |entries| entries == 3.0);
    let refill = applied_at.elapsed();
    assert!(refill < Duration::from_secs(2), "the fill was read {refill:?} after the sync");

    // The agent's metrics after two syncs: one refused, one applied.
    let text = scrape_text(metrics);
    assert_eq!(sample(&text, "balctl_sync_duration_seconds_count"), 2.0, "{text}");
    assert!(sample(&text, "balctl_sync_duration_seconds_sum") > 0.0);
    assert_eq!(sample(&text, "balctl_sync_errors_total{kind=\"input\"}"), 1.0);
    assert_eq!(sample(&text, "balctl_sync_errors_total{kind=\"runtime\"}"), 0.0);
    assert_eq!(sample(&text, "balctl_changes_pending"), 0.0);
    assert_eq!(sample(&text, "balctl_datapath_readable"), 1.0);
    let version = format!("balctl_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&text, &version), 1.0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let synced = sample(&text, "balctl_last_successful_sync_timestamp_seconds");
    assert!(now - synced >= 0.0 && now - synced < 30.0, "{synced} vs {now}");
    assert!(!text.contains("balctl_backend_hits"), "per-backend series without the flag:\n{text}");
    // The maps' fill is what `status` says, read after the sync.
    // (Both wall-clock times, the sync's taken from the monotonic clock:
    // some microseconds apart at most.)
    let filled = sample(&text, "balctl_map_fill_timestamp_seconds");
    assert!(filled > synced - 0.01 && filled <= now, "read at {filled}, synced at {synced}, now {now}");
    let status = sandbox.balctl_json(&["status"]);
    let maps = status["maps"].as_array().unwrap();
    assert!(maps.len() > 3, "{status:#}");
    for map in maps {
        let name = map["name"].as_str().unwrap();
        let series = |family: &str| format!("{family}{{map=\"{name}\"}}");
        assert_eq!(sample(&text, &series("balctl_map_entries")), map["entries"].as_f64().unwrap(), "{name}");
        assert_eq!(
            sample(&text, &series("balctl_map_capacity")),
            map["capacity"].as_f64().unwrap(),
            "{name}"
        );
    }
    assert_eq!(text.matches("balctl_map_entries{").count(), maps.len(), "{text}");

    // A failed sync: 200 until the change has waited 2 s, then 503 saying why.
    fs::write(&file, broken).unwrap();
    let failed_at = Instant::now();
    watcher.wait_stderr("web.toml:4");
    assert_eq!(probe(health, "/healthz").0, 200, "not late yet");
    let (late, _) = wait_for_status(health, "/healthz", 503, Duration::from_secs(10));
    let waited = failed_at.elapsed();
    assert!(waited >= Duration::from_secs(2), "503 after {waited:?}, before the timeout");
    assert!(late["lastUpdated"].is_string() && late["currentTime"].is_string(), "{late:#}");
    let reasons = late["reasons"].to_string();
    assert!(reasons.contains("--health-timeout 2s") && reasons.contains("web.toml:4"), "{late:#}");
    assert_eq!(probe(health, "/readyz").0, 200, "ready stays: a sync was applied");
    assert_eq!(probe(health, "/livez").0, 200, "a bad input is no reason to restart");
    let text = scrape_text(metrics);
    assert_eq!(sample(&text, "balctl_sync_errors_total{kind=\"input\"}"), 2.0);
    assert!(sample(&text, "balctl_changes_pending") >= 1.0, "{text}");

    fs::write(&file, services(&[2], false)).unwrap();
    watcher.wait_stdout("sync: frontends +0 ~1 -0");
    let (current, _) = wait_for_status(health, "/healthz", 200, Duration::from_secs(5));
    assert_eq!(current["reasons"], json!([]), "{current:#}");

    // Unloaded: a scrape still answers, with the agent's metrics and a
    // gauge saying the datapath could not be read.
    sandbox.balctl_ok(&["unload", "--yes"]);
    let (status, text) = http_get(metrics, "/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(sample(&text, "balctl_datapath_readable"), 0.0, "{text}");
    assert_eq!(sample(&text, "balctl_sync_duration_seconds_count"), 4.0, "{text}");
    assert!(!text.contains("balctl_resolutions_total"), "{text}");
    watcher.wait_stderr("metrics: cannot read the datapath");
    assert_eq!(watcher.terminate(), Some(0));
}

/// Must show 4, with `/readyz` before the first list, and a recovery with
/// no change to show for it.
pub fn healthz_turns_503_while_the_api_server_is_away() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let (server, kubeconfig) = web_in_a_cluster(&sandbox);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Not answering at start: not ready, nothing applied.
    server.set_reachable(false);
    let watcher = Watcher::start_with(
        &sandbox,
        &[],
        &[
            "--kube",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            "node-a",
            "--health-addr",
            &addr,
            "--health-timeout",
            "2s",
        ],
    );
    wait_for_status(port, "/readyz", 503, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(probe(port, "/readyz").0, 503);
    assert_eq!(probe(port, "/livez").0, 200);
    server.set_reachable(true);
    watcher.wait_stdout("frontends +1 ~0 -0");
    wait_for_status(port, "/readyz", 200, Duration::from_secs(5));
    let (healthy, _) = wait_for_status(port, "/healthz", 200, Duration::from_secs(10));
    assert!(healthy["lastUpdated"].is_string(), "{healthy:#}");
    assert_eq!(sandbox.reached("198.18.0.20:80", 3), ["b2"]);

    // Away, with a change meanwhile: 503 once away longer than 2 s.
    server.set_reachable(false);
    let away = Instant::now();
    server.apply(slice("web", &["192.0.2.3"]));
    assert_eq!(probe(port, "/healthz").0, 200, "not late yet");
    let (late, after) = wait_for_status(port, "/healthz", 503, Duration::from_secs(10));
    assert!(away.elapsed() >= Duration::from_secs(2), "503 after {after:?}, before the timeout");
    assert!(late["lastUpdated"].is_string() && late["currentTime"].is_string(), "{late:#}");
    assert!(late["apiServerUnreachableSince"].is_string(), "{late:#}");
    assert!(late["reasons"].to_string().contains("the API server has not answered"), "{late:#}");
    assert_eq!(probe(port, "/livez").0, 200, "an API server away is no reason to restart");
    assert_eq!(probe(port, "/readyz").0, 200);
    assert_eq!(sandbox.reached("198.18.0.20:80", 3), ["b2"], "the datapath keeps its state");

    // Back: the change is applied and /healthz is 200 again.
    server.set_reachable(true);
    watcher.wait_stdout_within("frontends +0 ~1 -0", Duration::from_secs(40));
    let (current, _) = wait_for_status(port, "/healthz", 200, Duration::from_secs(10));
    assert_eq!(current["apiServerUnreachableSince"], Value::Null, "{current:#}");
    assert_eq!(sandbox.reached("198.18.0.20:80", 3), ["b3"]);

    // Away and back with nothing changed: a resumed watch says nothing, the
    // probe sees the API server answer.
    server.set_reachable(false);
    wait_for_status(port, "/healthz", 503, Duration::from_secs(10));
    server.set_reachable(true);
    wait_for_status(port, "/healthz", 200, Duration::from_secs(5));
    assert_eq!(watcher.terminate(), Some(0));
}
