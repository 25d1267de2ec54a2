//! Issue 21, must show 1: active health checks of address backends, run
//! by `sync --watch` in the client namespace (where the backends are
//! reachable; probes never leave the sandbox), against real servers:
//!
//! - a client connects at full rate through the VIP while one of three
//!   backends stops and starts again: from fall x interval after the stop
//!   no connection goes to it (until then only connections to it fail),
//!   and it takes connections again rise x interval after it is back;
//! - every backend down: fail-open keeps translating to them (the
//!   connections are attempted and refused by the backends' kernel),
//!   refuse has the datapath refuse at once (`no_healthy_backend`);
//! - HTTP and DNS checks: a backend answering 503, or a DNS server that
//!   stops, leaves the slots; `dump health`, the metric and the log say so.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use crate::{
    dump::validate,
    support::{Sandbox, apiserver::ApiServer, finish, watcher::Watcher},
    trace::{events, start_trace},
};

/// The checks' timing: quick, so that a test takes seconds.
const INTERVAL_MS: u64 = 200;
const RISE: u64 = 2;
const FALL: u64 = 2;
/// What a removal or return may take beyond the check's own time: a
/// probe's timeout, the sync and its map writes, a busy 2-core machine.
const SLACK_MS: u64 = 700;

const VIP: &str = "198.18.0.80:80";

fn web(backends: &[&str], when_all_unhealthy: &str) -> String {
    let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[service]]\nname = \"web\"\naddresses = [\"198.18.0.80\"]\nbackends = [{}]\nports = [{{ port = 80 }}]\n\
         [service.health_check]\ntype = \"tcp\"\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"100ms\"\n\
         rise = {RISE}\nfall = {FALL}\nwhen_all_unhealthy = \"{when_all_unhealthy}\"\n",
        backends.join(", ")
    )
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The agent, in the client namespace, watching `file`.
fn agent(sandbox: &Sandbox, file: &std::path::Path, more: &[&str]) -> Watcher {
    let mut args = vec!["-f", file.to_str().unwrap()];
    args.extend(more);
    let watcher = Watcher::start_in(sandbox, &sandbox.client_ns, &args);
    watcher.wait_stdout("sync:");
    watcher
}

/// `dump health -o json`, validated, as (backend, state, in slots).
fn health(sandbox: &Sandbox) -> Vec<(String, String, bool)> {
    let dump = sandbox.balctl_json(&["dump", "health"]);
    validate(&dump, "dump-health.json");
    (dump["health"].as_array().unwrap().iter())
        .map(|h| {
            (
                h["backend"].as_str().unwrap().to_owned(),
                h["state"].as_str().unwrap().to_owned(),
                h["in_slots"] == true,
            )
        })
        .collect()
}

/// Waits (at most 10 s) until `dump health` says `backend` is `state`.
fn wait_health(sandbox: &Sandbox, backend: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = health(sandbox);
        if now.iter().any(|(b, s, _)| b == backend && s == state) {
            return;
        }
        assert!(Instant::now() < deadline, "{backend} never became {state}: {now:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The slices of a `connect --timeline` report: (start ms, outcome -> count).
fn slices(report: &Value) -> Vec<(u64, Vec<(String, u64)>)> {
    (report["timeline"].as_array().unwrap().iter())
        .map(|slice| {
            let outcomes = slice[1].as_object().unwrap().iter();
            (slice[0].as_u64().unwrap(), outcomes.map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect())
        })
        .collect()
}

fn count(outcomes: &[(String, u64)], what: &str) -> u64 {
    outcomes.iter().filter(|(k, _)| k == what).map(|(_, n)| n).sum()
}

/// The backends' answers are their ids; anything else is an errno.
fn failures(outcomes: &[(String, u64)]) -> Vec<&str> {
    outcomes.iter().filter(|(k, _)| !["a", "b", "c"].contains(&k.as_str())).map(|(k, _)| k.as_str()).collect()
}

pub fn a_stopped_backend_leaves_after_fall_probes_and_returns_after_rise() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("a", &["192.0.2.2:80"], &[]);
    let b = sandbox.serve_stoppable("b", &["192.0.2.3:80"], &[]);
    sandbox.serve("c", &["192.0.2.4:80"], &[]);
    let file = sandbox.scratch("web.toml");
    fs::write(&file, web(&["192.0.2.2", "192.0.2.3", "192.0.2.4"], "fail-open")).unwrap();
    let metrics = "127.0.0.1:9477";
    let watcher = agent(&sandbox, &file, &["--metrics-addr", metrics]);

    let client = sandbox.spawn_client(&["connect", "--to", VIP, "--millis", "7000", "--timeline", "50"]);
    thread::sleep(Duration::from_millis(1500));
    let stopped = now_ms();
    sandbox.stop(b);
    let line = watcher.wait_stderr("is unhealthy");
    assert!(line.contains("192.0.2.3:80/tcp") && line.contains("tcp of 192.0.2.3:80"), "{line}");
    assert!(line.contains(&format!("{FALL} failures in a row, the last: connection refused")), "{line}");
    wait_health(&sandbox, "192.0.2.3:80", "unhealthy");
    assert!(health(&sandbox).contains(&("192.0.2.3:80".into(), "unhealthy".into(), false)));
    let scraped = scrape(&sandbox, metrics);
    assert!(
        scraped.contains("balctl_backend_healthy{backend=\"192.0.2.3:80\",protocol=\"tcp\",check=\"tcp\"} 0"),
        "{scraped}"
    );
    assert!(
        scraped.contains("balctl_backend_healthy{backend=\"192.0.2.2:80\",protocol=\"tcp\",check=\"tcp\"} 1")
    );
    let failed_probes = (scraped.lines())
        .find_map(|line| line.strip_prefix("balctl_health_probes_total{result=\"failure\"} "))
        .and_then(|n| n.parse::<f64>().ok());
    assert!(failed_probes >= Some(FALL as f64), "{scraped}");
    thread::sleep(Duration::from_millis(1500));
    let restarted = now_ms();
    let b = sandbox.serve_stoppable("b", &["192.0.2.3:80"], &[]);
    wait_health(&sandbox, "192.0.2.3:80", "healthy");
    let line = (watcher.stderr_lines().into_iter())
        .find(|line| line.contains("is healthy again"))
        .unwrap_or_else(|| panic!("no log line of b's return: {:#?}", watcher.stderr_lines()));
    assert!(line.contains("192.0.2.3:80/tcp"), "{line}");
    let report = finish(client);
    sandbox.stop(b);

    let timeline = slices(&report);
    let out_within = stopped + FALL * INTERVAL_MS + SLACK_MS;
    let mut failed_after_stop = 0;
    for (start, outcomes) in &timeline {
        let end = start + 50;
        if end <= stopped {
            assert!(failures(outcomes).is_empty(), "before the stop, at {start}: {outcomes:?}");
        } else if *start < out_within {
            // Until the checks take it out, only connections to b fail:
            // refused by its namespace's kernel, or reset (or closed
            // unanswered) when it was killed during one.
            for failure in failures(outcomes) {
                assert!(
                    ["ECONNREFUSED", "ECONNRESET", "EMPTY_ANSWER"].contains(&failure),
                    "at {start}: {outcomes:?}"
                );
            }
            failed_after_stop += count(outcomes, "ECONNREFUSED");
        } else if end <= restarted {
            assert!(
                failures(outcomes).is_empty() && count(outcomes, "b") == 0,
                "{}ms after the stop (more than fall x interval + {SLACK_MS}ms): {outcomes:?}",
                start - stopped
            );
        }
    }
    assert!(failed_after_stop > 0, "no connection went to the stopped backend before it left: {timeline:?}");
    // Back after rise successes: not before the second probe after the
    // restart could have passed, and soon after.
    let back = (timeline.iter())
        .find(|(start, outcomes)| *start >= restarted && count(outcomes, "b") > 0)
        .map(|(start, _)| *start)
        .unwrap_or_else(|| panic!("b never took a connection after its restart: {timeline:?}"));
    let earliest = restarted + (RISE - 1) * INTERVAL_MS;
    assert!(back + 50 >= earliest, "b took connections {}ms after its restart", back - restarted);
    assert!(
        back <= restarted + RISE * INTERVAL_MS + SLACK_MS,
        "b came back {}ms after its restart",
        back - restarted
    );
    assert!(report["backends"]["a"].as_u64() > Some(0) && report["backends"]["c"].as_u64() > Some(0));
    watcher.terminate();
}

/// The agent's metrics, read with curl in the client namespace.
fn scrape(sandbox: &Sandbox, address: &str) -> String {
    let net = format!("--net=/run/netns/{}", sandbox.client_ns);
    let url = format!("http://{address}/metrics");
    let output = Command::new("nsenter")
        .args([&net, "curl", "-sS", "--max-time", "5", &url])
        .output()
        .expect("run curl");
    assert!(output.status.success(), "curl {url}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// `dump stats -o json`'s counters of the VIP's frontend.
fn stats(sandbox: &Sandbox) -> (u64, u64) {
    let stats = sandbox.balctl_json(&["dump", "stats"]);
    let frontend = (stats["stats"].as_array().unwrap().iter())
        .find(|s| s["frontend"] == "198.18.0.80:80/tcp")
        .unwrap_or_else(|| panic!("no stats of the VIP: {stats:#}"));
    (frontend["resolutions"].as_u64().unwrap(), frontend["failures"]["no_backend"].as_u64().unwrap())
}

pub fn every_backend_down_fails_open_or_refuses_as_the_rule_says() {
    let sandbox = Sandbox::new();
    sandbox.load();
    // Nothing listens on any backend.
    let backends = ["192.0.2.2", "192.0.2.3", "192.0.2.4"];
    let file = sandbox.scratch("web.toml");
    fs::write(&file, web(&backends, "fail-open")).unwrap();
    let watcher = agent(&sandbox, &file, &[]);
    for backend in backends {
        wait_health(&sandbox, &format!("{backend}:80"), "unhealthy");
    }
    let dump = sandbox.balctl_json(&["dump", "health"]);
    for entry in dump["health"].as_array().unwrap() {
        assert_eq!((&entry["rule"], &entry["in_slots"]), (&"failing-open".into(), &true.into()), "{dump:#}");
    }
    // Fail open: each connect is translated and attempted; the backends'
    // kernel refuses it.
    let before = stats(&sandbox);
    let trace = start_trace(&sandbox, &["--count", "1", "-o", "json", "--vip", VIP]);
    let report = sandbox.client(&["connect", "--to", VIP, "--count", "20"]);
    assert_eq!(report["errors"]["ECONNREFUSED"], 20, "{report}");
    let after = stats(&sandbox);
    assert_eq!((after.0 - before.0, after.1 - before.1), (20, 0), "resolutions, no_backend refusals");
    let event = &events(trace)[0];
    assert_eq!((&event["failing_open"], &event["failed"]), (&true.into(), &false.into()), "{event:#}");

    // Refuse: the datapath refuses at once, and says why.
    fs::write(&file, web(&backends, "refuse")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sandbox.balctl_json(&["dump", "health"])["health"][0]["rule"] != "refusing" {
        assert!(Instant::now() < deadline, "the rule never refused: {:#?}", watcher.stderr_lines());
        thread::sleep(Duration::from_millis(50));
    }
    let dump = sandbox.balctl_json(&["dump", "health"]);
    for entry in dump["health"].as_array().unwrap() {
        assert_eq!((&entry["rule"], &entry["in_slots"]), (&"refusing".into(), &false.into()), "{dump:#}");
    }
    let before = stats(&sandbox);
    let trace = start_trace(&sandbox, &["--count", "1", "-o", "json", "--vip", VIP]);
    let report = sandbox.client(&["connect", "--to", VIP, "--count", "20"]);
    assert_eq!(report["errors"]["ECONNREFUSED"], 20, "{report}");
    let after = stats(&sandbox);
    assert_eq!((after.0 - before.0, after.1 - before.1), (0, 20), "resolutions, no_backend refusals");
    let event = &events(trace)[0];
    assert_eq!(
        (&event["result"], &event["failed"]),
        (&"no_healthy_backend".into(), &true.into()),
        "{event:#}"
    );
    let explained = sandbox.balctl_json(&["explain", VIP, "--cgroup", sandbox.cgroup.to_str().unwrap()]);
    assert_eq!(explained["failure"]["reason"], "no_healthy_backend", "{explained:#}");

    // One backend back: it alone serves.
    sandbox.serve("b", &["192.0.2.3:80"], &[]);
    wait_health(&sandbox, "192.0.2.3:80", "healthy");
    assert_eq!(sandbox.reached(VIP, 20), ["b"]);
    watcher.terminate();
    // A restarted agent probes the checks the state holds, though its
    // inputs did not change: another backend comes back.
    let watcher = agent(&sandbox, &file, &[]);
    sandbox.serve("a", &["192.0.2.2:80"], &[]);
    wait_health(&sandbox, "192.0.2.2:80", "healthy");
    watcher.terminate();
}

/// A one-line HTTP server for socat: reads the request's head, answers
/// with the status given.
const HTTP_ANSWER: &str = "#!/bin/sh\ncr=$(printf '\\r')\nwhile IFS= read -r line; do\n    \
    case \"$line\" in \"\" | \"$cr\") break ;; esac\ndone\n\
    printf 'HTTP/1.1 %s Status\\r\\nContent-Length: 0\\r\\n\\r\\n' \"$1\"\n";

/// An HTTP check by status, and a DNS check of a UDP service.
pub fn http_and_dns_checks_judge_by_the_answer() {
    let sandbox = Sandbox::new();
    sandbox.load();
    // Two HTTP backends: one healthy, one answering 503. Each reads the
    // request's head, then answers.
    let script = sandbox.scratch("answer.sh");
    fs::write(&script, HTTP_ANSWER).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    for (address, status) in [("192.0.2.5", 200), ("192.0.2.6", 503)] {
        let listen = format!("TCP-LISTEN:8080,bind={address},fork,reuseaddr");
        let answer = format!("EXEC:{} {status}", script.display());
        sandbox.spawn_server_program(&["socat", &listen, &answer]);
    }
    let dns_a = sandbox.spawn_dnsmasq("192.0.2.7", "/web.test/192.0.2.99");
    let dns_b = sandbox.spawn_dnsmasq("192.0.2.8", "/web.test/192.0.2.99");
    let file = sandbox.scratch("both.toml");
    let check =
        format!("interval = \"{INTERVAL_MS}ms\"\ntimeout = \"150ms\"\nrise = {RISE}\nfall = {FALL}\n");
    fs::write(
        &file,
        format!(
            "[[service]]\nname = \"web\"\naddresses = [\"198.18.0.81\"]\nbackends = [\"192.0.2.5\", \"192.0.2.6\"]\n\
             ports = [{{ port = 80, target_port = 8080 }}]\n[service.health_check]\ntype = \"http\"\n\
             path = \"/healthz\"\n{check}\n\
             [[service]]\nname = \"dns\"\naddresses = [\"198.18.0.53\"]\nbackends = [\"192.0.2.7\", \"192.0.2.8\"]\n\
             ports = [{{ port = 53, protocol = \"udp\" }}]\n[service.health_check]\ntype = \"dns\"\n\
             query = \"web.test\"\n{check}"
        ),
    )
    .unwrap();
    let watcher = agent(&sandbox, &file, &[]);
    wait_health(&sandbox, "192.0.2.6:8080", "unhealthy");
    let line = watcher.wait_stderr("192.0.2.6:8080/tcp is unhealthy");
    assert!(line.contains("http GET /healthz -> 200") && line.contains("503"), "{line}");
    thread::sleep(Duration::from_millis(FALL * INTERVAL_MS + SLACK_MS));
    let now = health(&sandbox);
    for expected in [
        ("192.0.2.5:8080", "healthy", true),
        ("192.0.2.6:8080", "unhealthy", false),
        ("192.0.2.7:53", "healthy", true),
        ("192.0.2.8:53", "healthy", true),
    ] {
        assert!(now.contains(&(expected.0.into(), expected.1.into(), expected.2)), "{expected:?}: {now:?}");
    }
    sandbox.stop(dns_b);
    wait_health(&sandbox, "192.0.2.8:53", "unhealthy");
    watcher.wait_stderr("192.0.2.8:53/udp is unhealthy");
    let dump = sandbox.balctl_json(&["dump", "health", "--vip", "198.18.0.53"]);
    let kept: Vec<(&str, bool)> = (dump["health"].as_array().unwrap().iter())
        .map(|h| (h["backend"].as_str().unwrap(), h["in_slots"] == true))
        .collect();
    assert_eq!(kept, [("192.0.2.7:53", true), ("192.0.2.8:53", false)]);
    sandbox.stop(dns_a);
    watcher.terminate();
}

/// A BalancingPolicy's `spec.healthCheck`, through `sync --kube --watch`:
/// a backend that does not answer leaves the slots and comes back once
/// it does; a policy that changes nothing else keeps the marks.
pub fn a_balancing_policy_s_addresses_are_checked_by_the_kube_agent() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("a", &["192.0.2.2:8080"], &[]);
    let netns = sandbox.client_ns.clone();
    let server = ApiServer::start_in(&netns);
    let kubeconfig = sandbox.scratch("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let policy = |tier: &str| {
        json!({
            "apiVersion": "balancing.elf.io/v1beta1", "kind": "BalancingPolicy",
            "metadata": { "name": "edge", "namespace": "shop", "labels": { "tier": tier } },
            "spec": {
                "frontend": { "addressMatcher": { "ip": "198.18.0.82", "toPorts": [{ "port": 80 }] } },
                "backend": { "addressEndpoint": {
                    "addresses": ["192.0.2.2", "192.0.2.3"], "toPorts": [{ "port": 8080 }]
                } },
                "healthCheck": { "type": "tcp", "interval": "200ms", "timeout": "100ms", "rise": 2, "fall": 2 }
            }
        })
    };
    server.apply(policy("one"));
    let watcher = Watcher::start_in(
        &sandbox,
        &netns,
        &["--kube", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", "node-a"],
    );
    watcher.wait_stdout("sync: frontends");
    wait_health(&sandbox, "192.0.2.3:8080", "unhealthy");
    assert!(health(&sandbox).contains(&("192.0.2.2:8080".into(), "healthy".into(), true)));
    assert_eq!(sandbox.reached("198.18.0.82:80", 20), ["a"]);
    let dump = sandbox.balctl_json(&["dump", "health"]);
    assert_eq!(dump["health"][0]["name"], "balancingpolicy/shop/edge", "{dump:#}");
    // Translated anew, the policy keeps what the prober knows.
    let synced = watcher.stdout_lines().len();
    server.apply(policy("two"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher.stdout_lines().len() == synced {
        assert!(Instant::now() < deadline, "the label change was not synced");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(health(&sandbox).contains(&("192.0.2.3:8080".into(), "unhealthy".into(), false)));
    sandbox.serve("b", &["192.0.2.3:8080"], &[]);
    wait_health(&sandbox, "192.0.2.3:8080", "healthy");
    let reached = sandbox.reached("198.18.0.82:80", 40);
    assert_eq!(reached, ["a", "b"]);
    watcher.terminate();
}

/// `policy add --health-check`: flags checked before anything changes
/// (exit 2, the flag named), the check kept with the policy, and probed by
/// an agent, which marks the policy's backends as it marks synced ones.
pub fn policy_add_takes_a_health_check_that_the_agent_runs() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("a", &["192.0.2.2:8080"], &[]);
    let add = |more: &[&str]| {
        let mut args = vec![
            "policy",
            "add",
            "edge",
            "--vip",
            "198.18.0.83:80",
            "--backend",
            "192.0.2.2:8080",
            "--backend",
        ];
        args.extend(["192.0.2.3:8080"]);
        args.extend(more);
        sandbox.balctl(&args)
    };
    for (flags, named) in [
        (&["--health-check", "http", "--health-check-path", "healthz"][..], "--health-check-path"),
        (
            &["--health-check", "tcp", "--health-check-interval", "1s", "--health-check-timeout", "2s"],
            "--health-check-timeout",
        ),
        (&["--health-check", "dns"], "--health-check-query"),
        (&["--health-check-rise", "2"], "--health-check"),
    ] {
        let output = add(flags);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(named), "{flags:?}: {stderr}");
    }
    assert_eq!(sandbox.balctl_json(&["policy", "list"])["policies"], json!([]), "a refused policy was kept");
    let output = add(&[
        "--health-check",
        "tcp",
        "--health-check-interval",
        "200ms",
        "--health-check-timeout",
        "100ms",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let policy = sandbox.balctl_json(&["policy", "get", "edge"]);
    assert_eq!(policy["health"]["check"]["probe"], "tcp", "{policy:#}");
    assert_eq!(policy["health"]["when_all_unhealthy"], "fail-open", "{policy:#}");
    // Until an agent probes them, both are healthy.
    assert_eq!(health(&sandbox).len(), 2);
    assert!(health(&sandbox).iter().all(|(_, state, in_slots)| state == "healthy" && *in_slots));
    // An agent of files that say nothing of the policy.
    let file = sandbox.scratch("other.toml");
    fs::write(
        &file,
        "[[service]]\nname = \"other\"\naddresses = [\"198.18.0.84\"]\nports = [{ port = 80 }]\n",
    )
    .unwrap();
    let watcher = Watcher::start_in(&sandbox, &sandbox.client_ns, &["-f", file.to_str().unwrap()]);
    wait_health(&sandbox, "192.0.2.3:8080", "unhealthy");
    assert_eq!(sandbox.reached("198.18.0.83:80", 20), ["a"]);
    watcher.terminate();
    // The mark outlives the agent: a later one-shot change keeps it.
    sandbox.balctl_ok(&["policy", "update", "edge", "--affinity", "60"]);
    assert!(health(&sandbox).contains(&("192.0.2.3:8080".into(), "unhealthy".into(), false)));
}

/// A backend that fails its check leaves as a removed backend does: the
/// connected UDP sockets on it are destroyed (stale sockets), and it no
/// longer counts their connections. The check probes another port (a
/// UDP service's TCP health port), so the service itself still answers:
/// what moves the socket is the check alone. The connected UDP socket is
/// one of its backend's live connections until then.
pub fn an_unhealthy_backend_s_connected_sockets_are_destroyed() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.serve("a", &[], &["192.0.2.2:53"]);
    sandbox.serve("b", &[], &["192.0.2.3:53"]);
    let health_a = sandbox.serve_stoppable("health-a", &["192.0.2.2:8080"], &[]);
    let health_b = sandbox.serve_stoppable("health-b", &["192.0.2.3:8080"], &[]);
    let file = sandbox.scratch("dns.toml");
    fs::write(
        &file,
        format!(
            "[[service]]\nname = \"dns\"\naddresses = [\"198.18.0.85\"]\nbackends = [\"192.0.2.2\", \"192.0.2.3\"]\n\
             ports = [{{ port = 53, protocol = \"udp\" }}]\n[service.health_check]\ntype = \"tcp\"\nport = 8080\n\
             interval = \"{INTERVAL_MS}ms\"\ntimeout = \"100ms\"\nrise = {RISE}\nfall = {FALL}\n"
        ),
    )
    .unwrap();
    let watcher = agent(&sandbox, &file, &[]);
    let mut session = sandbox.session();
    assert!(session.run("udp c 198.18.0.85:53")["error"].is_null());
    let asked = session.run("ask c");
    let got = asked["answer"].as_str().unwrap_or_else(|| panic!("{asked}")).to_owned();
    let (address, health) = if got == "a" { ("192.0.2.2", health_a) } else { ("192.0.2.3", health_b) };
    let live = |sandbox: &Sandbox| -> u64 {
        let dump = sandbox.balctl_json(&["dump", "backends"]);
        (dump["backends"].as_array().unwrap().iter())
            .find(|b| b["address"] == address)
            .map_or(0, |b| b["connections"].as_u64().unwrap())
    };
    assert_eq!(live(&sandbox), 1, "the connected UDP socket counts");
    sandbox.stop(health);
    wait_health(&sandbox, &format!("{address}:53"), "unhealthy");
    assert_eq!(session.run("recv c")["error"], "ECONNABORTED", "the socket on the unhealthy backend");
    assert_eq!(live(&sandbox), 0);
    watcher.terminate();
}
