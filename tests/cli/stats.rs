//! Issue 4, must show 3: the always-on counters. 100 connects through a VIP
//! with 4 backends are 100 resolutions and per-backend hits that sum to
//! 100, in `dump stats` and on the `/metrics` endpoint of `sync --watch
//! --metrics-addr --metrics-per-backend`; a VIP without backends counts a no_backend failure; the
//! counters of removed frontends and backends are deleted.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{Sandbox, watcher::Watcher};

const VIP: &str = "198.18.0.10:80";
const CLOSED_VIP: &str = "198.18.0.11:80";
const WEB: &str = "198.18.0.10:80/tcp";
const CLOSED: &str = "198.18.0.11:80/tcp";

/// A services file: web (198.18.0.10:80 to port 8080 of `hosts`), and
/// closed (198.18.0.11:80, no backend) if `with_closed`.
pub fn services(hosts: &[u8], with_closed: bool) -> String {
    let backends: Vec<String> = hosts.iter().map(|h| format!("\"192.0.2.{h}\"")).collect();
    let mut toml = format!(
        "[[service]]\nname = \"web\"\naddresses = [\"198.18.0.10\"]\nbackends = [{}]\n\
         ports = [{{ port = 80, target_port = 8080 }}]\n",
        backends.join(", ")
    );
    if with_closed {
        toml.push_str(
            "\n[[service]]\nname = \"closed\"\naddresses = [\"198.18.0.11\"]\nports = [{ port = 80 }]\n",
        );
    }
    toml
}

/// A port nothing listens on now, for the metrics server.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One request with `method` to `path` on 127.0.0.1:`port` (read to the end:
/// the server closes): the status code, the head and the body, or None if
/// nothing answers.
pub fn http(port: u16, method: &str, path: &str) -> Option<(u16, String, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the HTTP response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP head");
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status code");
    Some((status, head.to_owned(), body.to_owned()))
}

/// GET `path`: the status code and the body, or None if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let (status, head, body) = http(port, "GET", path)?;
    if path == "/metrics" && status == 200 {
        assert!(head.to_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    }
    Some((status, body))
}

/// Scrapes /metrics, waiting (at most 10 s) for the server to answer: the
/// text, with the families every scrape of a loaded datapath has.
pub fn scrape_text(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        if let Some((status, body)) = http_get(port, "/metrics") {
            assert_eq!(status, 200, "{body}");
            break body;
        }
        assert!(Instant::now() < deadline, "nothing answers on 127.0.0.1:{port} within 10 s");
        thread::sleep(Duration::from_millis(20));
    };
    for family in
        ["balctl_resolutions_total", "balctl_failures_total", "balctl_socket_translations_evicted_total"]
    {
        assert!(body.contains(&format!("# TYPE {family} counter\n")), "{body}");
        assert!(body.contains(&format!("# HELP {family} ")), "{body}");
    }
    body
}

/// Every sample of a scrape: series -> value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample: {line}"));
            (series.to_owned(), value.parse().unwrap_or_else(|_| panic!("bad value: {line}")))
        })
        .collect()
}

/// The samples of a scrape that are counts (the datapath's counters among
/// them): series -> value.
pub fn scrape(port: u16) -> BTreeMap<String, u64> {
    samples(&scrape_text(port))
        .into_iter()
        .filter(|(_, value)| value.fract() == 0.0 && *value >= 0.0)
        .map(|(series, value)| (series, value as u64))
        .collect()
}

fn stats_of<'a>(stats: &'a Value, frontend: &str) -> &'a Value {
    stats["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frontend"] == frontend)
        .unwrap_or_else(|| panic!("no stats for {frontend}: {stats:#}"))
}

/// Backend address -> hits, from `dump stats`.
fn hits(frontend: &Value) -> BTreeMap<String, u64> {
    let backends = frontend["backends"].as_array().unwrap();
    backends
        .iter()
        .map(|b| (b["backend"].as_str().unwrap().to_owned(), b["hits"].as_u64().unwrap()))
        .collect()
}

fn map_fill(sandbox: &Sandbox, map: &str) -> Value {
    let config = sandbox.balctl_json(&["dump", "config"]);
    let maps = config["config"]["maps"].as_array().unwrap();
    maps.iter().find(|m| m["name"] == map).unwrap()["entries"].clone()
}

pub fn counters_match_connections_and_metrics() {
    let sandbox = Sandbox::new();
    for host in 2..=5 {
        sandbox.serve(&format!("b{host}"), &[&format!("192.0.2.{host}:8080")], &[]);
    }
    sandbox.load();
    let file = sandbox.scratch("web.toml");
    let file_arg = file.display().to_string();
    fs::write(&file, services(&[2, 3, 4, 5], true)).unwrap();

    let usage = sandbox.balctl(&["sync", "-f", &file_arg, "--metrics-addr", "127.0.0.1:9464"]);
    assert_eq!(usage.status.code(), Some(2), "{}", String::from_utf8_lossy(&usage.stderr));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("--watch"));

    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let watcher = Watcher::start_with(
        &sandbox,
        &[&file_arg],
        &["--metrics-addr", &metrics_addr, "--metrics-per-backend"],
    );
    watcher.wait_stdout("sync: frontends +2 ~0 -0");
    let web_resolutions = format!("balctl_resolutions_total{{frontend=\"{WEB}\",name=\"service/web\"}}");
    // Before any traffic every frontend and backend is there, at zero.
    let metrics = scrape(port);
    assert_eq!(metrics.get(&web_resolutions), Some(&0), "{metrics:#?}");
    let before = sandbox.balctl_json(&["dump", "stats"]);
    assert_eq!(stats_of(&before, WEB)["resolutions"], 0);
    assert!(hits(stats_of(&before, WEB)).values().all(|&h| h == 0), "{before:#}");

    let report = sandbox.client(&["connect", "--to", VIP, "--count", "100"]);
    assert_eq!(report["ok"], 100, "{report}");
    let refused = sandbox.client(&["connect", "--to", CLOSED_VIP]);
    assert_eq!(refused["errors"]["ECONNREFUSED"], 1, "{refused}");

    let stats = sandbox.balctl_json(&["dump", "stats"]);
    let web = stats_of(&stats, WEB);
    assert_eq!(web["name"], "service/web");
    assert_eq!(web["resolutions"], 100, "{web:#}");
    assert!(web["failures"].as_object().unwrap().values().all(|f| f == 0), "{web:#}");
    let web_hits = hits(web);
    assert_eq!(web_hits.len(), 4, "{web:#}");
    assert_eq!(web_hits.values().sum::<u64>(), 100, "{web:#}");
    // Each backend counted exactly the connections it answered.
    for (id, answered) in report["backends"].as_object().unwrap() {
        let host = id.trim_start_matches('b');
        assert_eq!(Some(answered.as_u64().unwrap()), web_hits.get(&format!("192.0.2.{host}:8080")).copied());
    }
    assert!(web_hits.values().all(|&h| h > 0), "{web:#}");
    let closed = stats_of(&stats, CLOSED);
    assert_eq!(closed["resolutions"], 0);
    assert_eq!(closed["failures"]["no_backend"], 1, "{closed:#}");
    assert!(closed["backends"].as_array().unwrap().is_empty());

    // /metrics shows the same numbers, each backend's with --metrics-per-backend.
    assert!(scrape_text(port).contains("# TYPE balctl_backend_hits_total counter\n"));
    let metrics = scrape(port);
    assert_eq!(metrics.get(&web_resolutions), Some(&100), "{metrics:#?}");
    for (backend, hits) in &web_hits {
        let series = format!(
            "balctl_backend_hits_total{{frontend=\"{WEB}\",name=\"service/web\",backend=\"{backend}\"}}"
        );
        assert_eq!(metrics.get(&series), Some(hits), "{series} in {metrics:#?}");
    }
    let metric_hits: u64 =
        metrics.iter().filter(|(s, _)| s.starts_with("balctl_backend_hits_total{")).map(|(_, v)| v).sum();
    assert_eq!(metric_hits, 100);
    let no_backend = format!(
        "balctl_failures_total{{frontend=\"{CLOSED}\",name=\"service/closed\",reason=\"no_backend\"}}"
    );
    assert_eq!(metrics.get(&no_backend), Some(&1), "{metrics:#?}");
    assert_eq!(http_get(port, "/").map(|(status, _)| status), Some(404));

    // Removing a frontend and a backend gives up their counter cells, which
    // are zeroed: the next frontend and backend to take them (the lowest
    // free cells, free from the change after) start from 0.
    let closed_failures = stats_of(&stats, CLOSED)["failures"]["no_backend"].as_u64();
    let fifth_hits = hits(web)["192.0.2.5:8080"];
    assert!(closed_failures == Some(1) && fifth_hits > 0, "{stats:#}");
    fs::write(&file, services(&[2, 3, 4], false)).unwrap();
    watcher.wait_stdout("sync: frontends +0 ~1 -1, backends +0 -1");
    let metrics = scrape(port);
    assert!(!metrics.keys().any(|series| series.contains(CLOSED)), "{metrics:#?}");
    assert_eq!(metrics.get(&web_resolutions), Some(&100));
    fs::write(&file, services(&[2, 3, 4, 5], true)).unwrap();
    watcher.wait_stdout("sync: frontends +1 ~1 -0, backends +1 -0");
    let again = sandbox.balctl_json(&["dump", "stats"]);
    let (closed, web) = (stats_of(&again, CLOSED), stats_of(&again, WEB));
    assert_eq!(closed["failures"]["no_backend"], 0, "{again:#}");
    assert_eq!(hits(web)["192.0.2.5:8080"], 0, "{again:#}");
    assert_eq!(web["resolutions"], 100, "the frontend kept its cell: {again:#}");
    let (stats, backend_hits) = (map_fill(&sandbox, "stats"), map_fill(&sandbox, "backend_hits"));
    assert!(stats.is_null() && backend_hits.is_null(), "counter arrays have no fill level");

    assert_eq!(watcher.terminate(), Some(0));
}
