//! Issue 21, must show 2: least-connections and weighted choice at the
//! socket layer, with real connections. Live connections are counted per
//! backend (connect adds one, the cgroup's sock_release takes it away);
//! a least-connections frontend sends a new connection to the backend
//! with the fewest; weights give a backend as many slots.

use std::{
    collections::BTreeMap,
    fs, thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{dump::validate, support::Sandbox};

const VIP: &str = "198.18.0.90:80";

fn service(extra: &str) -> String {
    format!(
        "[[service]]\nname = \"web\"\naddresses = [\"198.18.0.90\"]\n\
         backends = [\"192.0.2.2\", \"192.0.2.3\", \"192.0.2.4\"]\nports = [{{ port = 80 }}]\n{extra}\n"
    )
}

/// `dump backends -o json`, validated: each backend's live connections.
fn connections(sandbox: &Sandbox) -> BTreeMap<String, u64> {
    let dump = sandbox.balctl_json(&["dump", "backends"]);
    validate(&dump, "dump-backends.json");
    (dump["backends"].as_array().unwrap().iter())
        .map(|b| (b["address"].as_str().unwrap().to_owned(), b["connections"].as_u64().unwrap()))
        .collect()
}

/// Waits (at most 5 s) for `dump backends` to show `expected`.
fn wait_connections(sandbox: &Sandbox, expected: &BTreeMap<String, u64>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = connections(sandbox);
        if &now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "live connections {now:?}, expected {expected:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn counts(answers: &[String]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.clone()).or_default() += 1;
    }
    counts
}

pub fn least_connections_fills_the_least_loaded_backend() {
    let sandbox = Sandbox::new();
    sandbox.load();
    for (id, host) in [("a", "192.0.2.2"), ("b", "192.0.2.3"), ("c", "192.0.2.4")] {
        sandbox.serve_lasting(id, &[&format!("{host}:80")], &[]);
    }
    let file = sandbox.scratch("web.toml");
    fs::write(&file, service("lb_algorithm = \"least-connections\"")).unwrap();
    sandbox.balctl_ok(&["sync", "-f", file.to_str().unwrap()]);
    let address = |id: &str| match id {
        "a" => "192.0.2.2",
        "b" => "192.0.2.3",
        _ => "192.0.2.4",
    };

    // 30 long-lived connections: 10 each.
    let mut session = sandbox.session();
    let mut backend_of = Vec::new();
    for n in 0..30 {
        let opened = session.run(&format!("tcp s{n} {VIP}"));
        assert!(opened["error"].is_null(), "{opened}");
        let asked = session.run(&format!("ask s{n}"));
        backend_of.push(asked["answer"].as_str().unwrap_or_else(|| panic!("{asked}")).to_owned());
    }
    let split = counts(&backend_of);
    assert_eq!(split.len(), 3, "{split:?}");
    for (id, count) in &split {
        assert!((9..=11).contains(count), "{id}: {count} of 30: {split:?}");
    }
    let live: BTreeMap<String, u64> = split.iter().map(|(id, n)| (address(id).to_owned(), *n)).collect();
    wait_connections(&sandbox, &live);

    // Close 10 of b's: the next 10 all go to b.
    let closed: Vec<usize> = (0..30).filter(|&n| backend_of[n] == "b").take(10).collect();
    assert_eq!(closed.len(), 10, "{split:?}");
    for &n in &closed {
        session.run(&format!("close s{n}"));
    }
    let mut after_close = live.clone();
    *after_close.get_mut("192.0.2.3").unwrap() -= 10;
    wait_connections(&sandbox, &after_close);
    // explain says where the next connect goes, and why.
    let explained = sandbox.balctl_json(&["explain", VIP, "--cgroup", sandbox.cgroup.to_str().unwrap()]);
    validate(&explained, "explain.json");
    assert_eq!(explained["least_connections"], true, "{explained:#}");
    let chances: Vec<(&str, f64, u64)> = (explained["candidates"].as_array().unwrap().iter())
        .map(|c| {
            (
                c["backend"].as_str().unwrap(),
                c["chance"].as_f64().unwrap(),
                c["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(chances.contains(&("192.0.2.3:80", 1.0, after_close["192.0.2.3"])), "{chances:?}");
    let mut next = Vec::new();
    for n in 30..40 {
        session.run(&format!("tcp s{n} {VIP}"));
        next.push(session.run(&format!("ask s{n}"))["answer"].as_str().unwrap().to_owned());
    }
    assert_eq!(next, vec!["b"; 10], "the 10 after closing 10 of b's");
    assert_eq!(connections(&sandbox)["192.0.2.3"], after_close["192.0.2.3"] + 10);

    // Every socket closed: nothing is live any more.
    drop(session);
    let none: BTreeMap<String, u64> = live.keys().map(|address| (address.clone(), 0)).collect();
    wait_connections(&sandbox, &none);
}

pub fn weights_share_connections_in_proportion() {
    let sandbox = Sandbox::new();
    sandbox.load();
    for (id, host) in [("a", "192.0.2.2"), ("b", "192.0.2.3"), ("c", "192.0.2.4")] {
        sandbox.serve(id, &[&format!("{host}:80")], &[]);
    }
    let file = sandbox.scratch("web.toml");
    fs::write(&file, service("weights = [1, 2, 3]")).unwrap();
    sandbox.balctl_ok(&["sync", "-f", file.to_str().unwrap()]);
    // Six slots: one of a, two of b, three of c.
    let services = sandbox.balctl_json(&["dump", "services", "--vip", VIP]);
    let slots = services["services"][0]["backends"].as_array().map(Vec::len);
    assert_eq!(slots, Some(6), "{services:#}");
    let report = sandbox.client(&["connect", "--to", VIP, "--count", "6000"]);
    assert_eq!(report["failed"], 0, "{report}");
    let share = |id: &str| report["backends"][id].as_f64().unwrap_or(0.0) / 6000.0;
    // Within 2 points of each share (4 standard deviations of 1/6's
    // binomial share over 6,000 draws; 3 of 1/2's).
    for (id, expected) in [("a", 1.0 / 6.0), ("b", 2.0 / 6.0), ("c", 3.0 / 6.0)] {
        assert!(
            (share(id) - expected).abs() < 0.02,
            "{id}: {:.3} of 6000, expected {expected:.3}: {report}",
            share(id)
        );
    }
    // The same through a policy's --weight.
    let add = |weights: &[&str]| {
        let mut args = vec!["policy", "add", "w", "--vip", "198.18.0.91:80"];
        args.extend(["--backend", "192.0.2.2:80", "--backend", "192.0.2.3:80"]);
        for weight in weights {
            args.extend(["--weight", weight]);
        }
        sandbox.balctl(&args)
    };
    let added = add(&["1"]);
    assert_eq!(added.status.code(), Some(2), "one weight for two backends");
    assert!(String::from_utf8_lossy(&added.stderr).contains("--weight"));
    let added = add(&["1", "3"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let policy: Value = sandbox.balctl_json(&["policy", "get", "w"]);
    assert_eq!(policy["weights"], serde_json::json!([1, 3]), "{policy:#}");
    let report = sandbox.client(&["connect", "--to", "198.18.0.91:80", "--count", "2000"]);
    let b = report["backends"]["b"].as_f64().unwrap_or(0.0) / 2000.0;
    assert!((b - 0.75).abs() < 0.04, "b: {b:.3} of 2000, expected 0.75: {report}");
}
