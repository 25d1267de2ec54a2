//! `balctl sync -f` with TOML state files on the real kernel: frontends of
//! every shape reach the right backends, a repeated sync changes nothing,
//! a sync prunes only its own sources, dry runs and bad files change nothing.

use std::fs;

use serde_json::Value;

use crate::support::Sandbox;

const WEB_AND_DNS: &str = r#"
[[service]]
name = "web"
addresses = ["198.18.0.10", "2001:db8:5e::10"]
backends = ["192.0.2.2", "192.0.2.3", "2001:db8::4"]
ports = [{ port = 80, target_port = 8080 }]

[[service]]
name = "dns"
addresses = ["198.18.0.53"]
backends = ["192.0.2.3", "192.0.2.4"]
ports = [{ port = 5300, protocol = "udp" }]
"#;

const STICKY_AND_CLOSED: &str = r#"
[[service]]
name = "sticky"
addresses = ["198.18.0.30"]
backends = ["192.0.2.2", "192.0.2.3", "192.0.2.4"]
affinity_seconds = 300
ports = [{ port = 80, target_port = 8080 }]

[[service]]
name = "closed"
addresses = ["198.18.0.11"]
ports = [{ port = 80 }]
"#;

fn write(sandbox: &Sandbox, name: &str, text: &str) -> String {
    let path = sandbox.scratch(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn backends_seen(report: &Value) -> Vec<String> {
    report["backends"].as_object().expect("backends").keys().cloned().collect()
}

fn frontends(sandbox: &Sandbox) -> Vec<(String, Option<String>)> {
    sandbox.balctl_json(&["dump", "services"])["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["frontend"].as_str().unwrap().to_owned(), s["name"].as_str().map(str::to_owned)))
        .collect()
}

/// Issue 3, must show 1 (TOML part): every frontend shape of a synced
/// directory reaches exactly its backends.
pub fn synced_frontends_reach_their_backends() {
    let sandbox = Sandbox::new();
    for host in 2..=4 {
        let id = format!("b{host}");
        let (tcp4, tcp6, udp) = (
            format!("192.0.2.{host}:8080"),
            format!("[2001:db8::{host}]:8080"),
            format!("192.0.2.{host}:5300"),
        );
        sandbox.serve(&id, &[&tcp4, &tcp6], &[&udp]);
    }
    sandbox.load();
    write(&sandbox, "state/web.toml", WEB_AND_DNS);
    let dir = write(&sandbox, "state/more.toml", STICKY_AND_CLOSED);
    let dir = std::path::Path::new(&dir).parent().unwrap().display().to_string();
    let output = sandbox.balctl_ok(&["sync", "-f", &dir]);
    assert!(output.contains("frontends +5"), "{output}");

    let report = sandbox.client(&["connect", "--to", "198.18.0.10:80", "--count", "60"]);
    assert_eq!(
        (report["failed"].as_u64(), backends_seen(&report)),
        (Some(0), vec!["b2".into(), "b3".into()])
    );
    let report = sandbox.client(&["connect", "--to", "[2001:db8:5e::10]:80", "--count", "10"]);
    assert_eq!((report["failed"].as_u64(), backends_seen(&report)), (Some(0), vec!["b4".into()]));
    let answers: std::collections::BTreeSet<String> = (0..20)
        .map(|_| {
            let report = sandbox.client(&["udp-sendto", "--to", "198.18.0.53:5300"]);
            assert_eq!(report["replies"][0]["from"], "198.18.0.53:5300", "{report}");
            report["replies"][0]["answer"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(answers.into_iter().collect::<Vec<_>>(), ["b3", "b4"]);
    let report = sandbox.client(&["connect", "--to", "198.18.0.30:80", "--count", "30"]);
    assert_eq!(backends_seen(&report).len(), 1, "affinity: {report}");
    let report = sandbox.client(&["connect", "--to", "198.18.0.11:80"]);
    assert_eq!(report["errors"]["ECONNREFUSED"], 1, "{report}");
}

/// Issue 3, must show 2: the same input twice: the second plan is empty,
/// and neither the maps nor the state file are written.
pub fn repeated_sync_changes_nothing() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let file = write(&sandbox, "web.toml", WEB_AND_DNS);
    sandbox.balctl_ok(&["sync", "-f", &file]);
    let state_file = sandbox.state.join("state.bin");
    let written = fs::metadata(&state_file).unwrap().modified().unwrap();
    let dump = sandbox.balctl_ok(&["dump", "-o", "json"]);

    let report = sandbox.balctl_json(&["sync", "-f", &file]);
    assert_eq!(report["map_writes"], 0, "{report}");
    assert_eq!(report["changes"], serde_json::json!([]), "{report}");
    assert!(sandbox.balctl_ok(&["sync", "-f", &file]).contains("sync: no changes"));
    assert_eq!(fs::metadata(&state_file).unwrap().modified().unwrap(), written, "state rewritten");
    assert_eq!(sandbox.balctl_ok(&["dump", "-o", "json"]), dump);
}

/// Issue 3, must show 4: a sync prunes only its own sources: `policy add`
/// rules and other files' objects stay; a service removed from the file is
/// removed alone.
/// Issue 20: a change writes what changed. One service of fifty changed in
/// the middle of a file: the snapshot stays as it was and the log grows by
/// one record of about that service, whatever the others; the state read
/// back is what the sync applied.
pub fn a_one_service_change_appends_one_small_record() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let services = |changed: &str| -> String {
        (0..50)
            .map(|i| {
                let backend = if i == 25 { changed.to_owned() } else { format!("192.0.2.{}", i % 200 + 1) };
                format!(
                    "[[service]]\nname = \"s{i}\"\naddresses = [\"198.18.1.{}\"]\nbackends = [\"{backend}\"]\n\
                     ports = [{{ port = 80, target_port = 8080 }}]\n",
                    i + 1
                )
            })
            .collect()
    };
    let file = write(&sandbox, "many.toml", &services("192.0.2.100"));
    sandbox.balctl_ok(&["sync", "-f", &file]);
    let (snapshot, log) = (sandbox.state.join("state.bin"), sandbox.state.join("state.log"));
    let (snapshot_before, log_before) = (fs::read(&snapshot).unwrap(), fs::read(&log).unwrap().len());
    fs::write(&file, services("192.0.2.101")).unwrap();
    let output = sandbox.balctl_ok(&["sync", "-f", &file]);
    assert!(output.contains("frontends +0 ~1 -0"), "{output}");
    assert_eq!(fs::read(&snapshot).unwrap(), snapshot_before, "the change rewrote the snapshot");
    let grown = fs::read(&log).unwrap().len() - log_before;
    assert!(
        grown > 0 && grown * 10 < snapshot_before.len(),
        "{grown} bytes for one service of 50, against a snapshot of {}",
        snapshot_before.len()
    );
    let dumped = sandbox.balctl_json(&["dump", "services", "--vip", "198.18.1.26:80"]);
    assert_eq!(dumped["services"][0]["backends"][0]["address"], "192.0.2.101", "{dumped:#}");
}

pub fn sync_prunes_only_its_own_sources() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.balctl_ok(&["policy", "add", "manual", "--vip", "198.18.0.99:80", "--backend", "192.0.2.9:80"]);
    let first = write(&sandbox, "first.toml", WEB_AND_DNS);
    let second = write(&sandbox, "second.toml", STICKY_AND_CLOSED);
    sandbox.balctl_ok(&["sync", "-f", &first]);
    sandbox.balctl_ok(&["sync", "-f", &second]);
    let owners = |sandbox: &Sandbox| -> Vec<String> {
        let mut owners: Vec<String> = frontends(sandbox).into_iter().filter_map(|(_, owner)| owner).collect();
        owners.sort();
        owners.dedup();
        owners
    };
    assert_eq!(
        owners(&sandbox),
        ["policy/manual", "service/closed", "service/dns", "service/sticky", "service/web"]
    );

    // Drop `dns` from the first file only.
    let without_dns = &WEB_AND_DNS[..WEB_AND_DNS.find("[[service]]\nname = \"dns\"").unwrap()];
    fs::write(&first, without_dns).unwrap();
    let output = sandbox.balctl_ok(&["sync", "-f", &first, "-v"]);
    assert!(output.contains("- 198.18.0.53:5300/udp  service/dns"), "{output}");
    assert!(output.contains("frontends +0 ~0 -1"), "{output}");
    assert_eq!(owners(&sandbox), ["policy/manual", "service/closed", "service/sticky", "service/web"]);
    assert!(sandbox.balctl_ok(&["policy", "list"]).contains("manual"));

    // An object stays with the source that applied it: a third file
    // defining `web` again is refused, naming both.
    let third = write(&sandbox, "third.toml", without_dns);
    let refused = sandbox.balctl(&["sync", "-f", &third]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{third}:")) && stderr.contains(&first), "{stderr}");
    assert!(stderr.contains("service/web is already applied from"), "{stderr}");
    assert_eq!(owners(&sandbox), ["policy/manual", "service/closed", "service/sticky", "service/web"]);
}

/// `--dry-run` prints the whole plan and changes nothing, loaded or not.
pub fn dry_run_changes_nothing() {
    let sandbox = Sandbox::new();
    let file = write(&sandbox, "web.toml", WEB_AND_DNS);
    // Not even loaded: a dry run only plans.
    let output = sandbox.balctl_ok(&["sync", "-f", &file, "--dry-run"]);
    assert!(
        output.contains("+ 198.18.0.10:80/tcp  service/web  -> 192.0.2.2:8080, 192.0.2.3:8080"),
        "{output}"
    );
    assert!(output.contains("dry run, nothing changed"), "{output}");
    assert!(!sandbox.state.join("state.bin").exists());
    sandbox.load();
    sandbox.balctl_ok(&["sync", "-f", &file, "--dry-run"]);
    assert!(frontends(&sandbox).is_empty());
}

/// Issue 3, must show 6 (TOML part): bad state files exit 2 with
/// file:line:column, and change neither the maps nor the state.
pub fn bad_state_files_change_nothing() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let good = write(&sandbox, "good.toml", WEB_AND_DNS);
    sandbox.balctl_ok(&["sync", "-f", &good]);
    let before =
        (sandbox.balctl_ok(&["dump", "-o", "json"]), fs::read(sandbox.state.join("state.bin")).unwrap());

    let service = |body: &str| format!("[[service]]\nname = \"web\"\n{body}\n");
    let cases = [
        ("syntax.toml", "[[service]\nname = 1".to_owned(), ":1:11: unclosed array table"),
        (
            "ip.toml",
            service("addresses = [\"198.18.0.300\"]\nports = [{ port = 80 }]"),
            ":3:14: invalid IP address",
        ),
        (
            "port.toml",
            service("addresses = [\"198.18.0.1\"]\nports = [{ port = 0 }]"),
            ":4:19: port 0 is out of range",
        ),
        (
            "proto.toml",
            service("addresses = [\"198.18.0.1\"]\nports = [{ port = 80, protocol = \"sctp\" }]"),
            ":4:34: unknown variant `sctp`",
        ),
        (
            "field.toml",
            service("addresses = [\"198.18.0.1\"]\nports = [{ port = 80 }]\ncolour = 1"),
            ":5:1: unknown field `colour`",
        ),
        ("noports.toml", service("addresses = [\"198.18.0.1\"]"), ":1:1: missing field `ports`"),
    ];
    for (name, text, expected) in &cases {
        let file = write(&sandbox, name, text);
        let output = sandbox.balctl(&["sync", "-f", &file]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(&format!("{file}{expected}")), "{name}: {stderr}");
    }
    // Across files and sources.
    let dup = write(&sandbox, "dup.toml", WEB_AND_DNS);
    let output = sandbox.balctl(&["sync", "-f", &good, "-f", &dup]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("service/web is defined twice"));
    let clash = write(
        &sandbox,
        "clash.toml",
        &WEB_AND_DNS.replace("\"web\"", "\"web2\"").replace("\"dns\"", "\"dns2\""),
    );
    let output = sandbox.balctl(&["sync", "-f", &clash]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("claimed twice"), "{stderr}");
    assert_eq!(
        (sandbox.balctl_ok(&["dump", "-o", "json"]), fs::read(sandbox.state.join("state.bin")).unwrap()),
        before
    );
}

/// examples/services.toml stays valid and means what its comments say.
pub fn the_example_state_file_is_valid() {
    let sandbox = Sandbox::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/services.toml");
    let plan = sandbox.balctl_json(&["sync", "-f", example, "--dry-run"]);
    let changes: Vec<String> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c["frontend"].as_str().unwrap(), c["backends"].as_array().unwrap().len()))
        .collect();
    assert_eq!(
        changes,
        [
            "0.0.0.0:30443/tcp 2",
            "0.0.0.0:30443/tcp@external 2",
            "198.18.0.10:80/tcp 2",
            "198.18.0.10:80/tcp@balancing 1",
            "198.18.0.10:443/tcp 2",
            "198.18.0.11:443/tcp 0",
            "198.18.0.20:8080/tcp 1",
            "198.18.0.30:80/tcp 2",
            // Weights 1 and 3: four slots.
            "198.18.0.40:443/tcp 4",
            "198.18.0.53:53/tcp 2",
            "198.18.0.53:53/tcp@redirect 1",
            "198.18.0.53:53/udp 2",
            "198.18.0.53:53/udp@redirect 1",
            "198.18.0.60:443/tcp 2",
            "198.18.1.60:443/tcp 2",
            "198.18.1.60:443/tcp@external 2",
            "198.18.2.60:443/tcp 2",
            "198.18.2.60:443/tcp@external 2",
            "[2001:db8:5e::20]:8080/tcp 2",
        ]
    );
}

/// Issue 3, must show 3: a client connects at full rate for 10 s while the
/// service is synced between 1 and 10 backends every 100 ms (a moving
/// window, so slots are also rewritten in place): zero failed connections.
pub fn churn_loses_no_connection() {
    let sandbox = Sandbox::new();
    let hosts: Vec<u8> = (2..=11).collect();
    for &host in &hosts {
        sandbox.serve(&format!("b{host}"), &[&format!("192.0.2.{host}:8080")], &[]);
    }
    sandbox.load();
    let file = sandbox.scratch("churn.toml");
    let file_arg = file.display().to_string();
    let sync_round = |round: usize| {
        // 1, 2, ... 10, 9, ... 2, 1, 2, ... backends, from a moving start.
        let phase = round % 18;
        let count = if phase < 10 { phase + 1 } else { 19 - phase };
        let window: Vec<String> =
            (0..count).map(|i| format!("\"192.0.2.{}\"", hosts[(round + i) % hosts.len()])).collect();
        let text = format!(
            "[[service]]\nname = \"churn\"\naddresses = [\"198.18.0.40\"]\n\
             backends = [{}]\nports = [{{ port = 80, target_port = 8080 }}]\n",
            window.join(", ")
        );
        fs::write(&file, text).unwrap();
        sandbox.balctl_ok(&["sync", "-f", &file_arg, "-q"]);
    };
    sync_round(0);

    let client = sandbox.spawn_client(&["connect", "--to", "198.18.0.40:80", "--millis", "10000"]);
    let started = std::time::Instant::now();
    let mut rounds = 0;
    while started.elapsed() < std::time::Duration::from_millis(9800) {
        rounds += 1;
        sync_round(rounds);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let report = crate::support::finish(client);
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["ok"].as_u64().unwrap() > 1000, "too few connections to prove anything: {report}");
    assert!(rounds >= 40, "only {rounds} syncs in 10 s");
    assert_eq!(backends_seen(&report).len(), hosts.len(), "every backend served at some point: {report}");
}

/// A `-f` file that is a symlink (as in a Kubernetes ConfigMap volume,
/// whose links are repointed on every update) stays one source: the
/// repointed file's objects replace the old ones.
pub fn a_repointed_symlink_stays_one_source() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let first = write(&sandbox, "cm/..2026_11_22_1/web.toml", WEB_AND_DNS);
    let second =
        write(&sandbox, "cm/..2026_11_22_2/web.toml", &WEB_AND_DNS.replace("192.0.2.2", "192.0.2.5"));
    let link = sandbox.scratch("cm/web.toml");
    std::os::unix::fs::symlink(&first, &link).unwrap();
    let link = link.display().to_string();
    sandbox.balctl_ok(&["sync", "-f", &link]);
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&second, &link).unwrap();
    let output = sandbox.balctl_ok(&["sync", "-f", &link]);
    assert!(output.contains("frontends +0 ~1 -0"), "{output}");
    let state = balctl::state::StateDir::new(&sandbox.state).read().unwrap();
    let sources: Vec<&str> = state.synced.iter().map(|o| o.source.as_str()).collect();
    assert!(!sources.is_empty() && sources.iter().all(|s| *s == link), "{sources:?}");
}
