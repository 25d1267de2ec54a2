//! Issue 5 (in part): policy layers on the real kernel. A redirect takes a
//! frontend's traffic before a balancing policy, which takes it before the
//! Service; a redirect with no backend, or over its rate limit, gives way.

use std::{thread, time::Duration};

use balctl::bpf::sys::monotonic_ns;

use crate::{
    support::{BALANCING_LAYER, LAYERS_KNOWN, REDIRECT_LAYER, SERVICE_LAYER, Sandbox},
    trace::{events, start_trace},
};

const WEB: &str = "198.18.0.20:80";

/// A Service `web` (from a state file) on b2, and servers b3 (the "local"
/// one) and b4.
fn setup(sandbox: &Sandbox) {
    sandbox.load();
    for (id, host) in [("b2", "192.0.2.2"), ("b3", "192.0.2.3"), ("b4", "192.0.2.4")] {
        sandbox.serve(id, &[&format!("{host}:8080")], &[]);
    }
    let file = sandbox.scratch("web.toml");
    std::fs::write(
        &file,
        "[[service]]\nname = \"web\"\naddresses = [\"198.18.0.20\"]\nbackends = [\"192.0.2.2\"]\n\
         ports = [{ port = 80, target_port = 8080 }]\n",
    )
    .unwrap();
    sandbox.balctl_ok(&["sync", "-f", file.to_str().unwrap()]);
    assert_eq!(sandbox.reached(WEB, 3), ["b2"]);
    assert_eq!(sandbox.layers(), LAYERS_KNOWN | SERVICE_LAYER);
}

pub fn redirect_then_balancing_then_service() {
    let sandbox = Sandbox::new();
    setup(&sandbox);
    sandbox.balctl_ok(&["policy", "add", "bal", "--vip", WEB, "--backend", "192.0.2.4:8080"]);
    assert_eq!(sandbox.reached(WEB, 5), ["b4"], "a balancing policy comes before the Service");
    sandbox.balctl_ok(&[
        "policy",
        "add",
        "local",
        "--kind",
        "redirect",
        "--vip",
        WEB,
        "--backend",
        "192.0.2.3:8080",
    ]);
    assert_eq!(sandbox.reached(WEB, 5), ["b3"], "a redirect comes first");
    assert_eq!(sandbox.layers(), LAYERS_KNOWN | SERVICE_LAYER | BALANCING_LAYER | REDIRECT_LAYER);
    // trace names the rule that resolved the connection.
    let trace = start_trace(&sandbox, &["--count", "1", "-o", "json"]);
    assert_eq!(sandbox.reached(WEB, 1), ["b3"]);
    let events = events(trace);
    assert_eq!(
        (&events[0]["name"], &events[0]["frontend"]),
        (&"policy/local".into(), &format!("{WEB}/tcp@redirect").into())
    );

    sandbox.balctl_ok(&["policy", "update", "local", "--no-backends"]);
    assert_eq!(sandbox.reached(WEB, 5), ["b4"], "a redirect without backend gives way");
    sandbox.balctl_ok(&["policy", "delete", "bal"]);
    assert_eq!(sandbox.reached(WEB, 5), ["b2"], "... down to the Service");
    assert_eq!(
        sandbox.layers(),
        LAYERS_KNOWN | SERVICE_LAYER | REDIRECT_LAYER,
        "the last balancing policy went"
    );
    sandbox.balctl_ok(&["policy", "update", "local", "--backend", "192.0.2.3:8080"]);
    assert_eq!(sandbox.reached(WEB, 5), ["b3"]);

    // The datapath looks up only the layers the map names; until it is
    // known (a map just created), all of them; `load` marks it right again.
    sandbox.set_layers(LAYERS_KNOWN | SERVICE_LAYER);
    assert_eq!(sandbox.reached(WEB, 5), ["b2"], "an unmarked layer is skipped");
    sandbox.set_layers(0);
    assert_eq!(sandbox.reached(WEB, 5), ["b3"], "unknown: every layer is looked up");
    sandbox.set_layers(LAYERS_KNOWN | SERVICE_LAYER);
    sandbox.load();
    assert_eq!(sandbox.layers(), LAYERS_KNOWN | SERVICE_LAYER | REDIRECT_LAYER);
    assert_eq!(sandbox.reached(WEB, 5), ["b3"]);

    // Two policies of one kind on one frontend: refused, nothing changes.
    let dump = sandbox.balctl_ok(&["dump", "-o", "json"]);
    let second = sandbox.balctl(&[
        "policy",
        "add",
        "other",
        "--kind",
        "redirect",
        "--vip",
        WEB,
        "--backend",
        "192.0.2.4:8080",
    ]);
    assert_eq!(second.status.code(), Some(2));
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains("policy/local") && message.contains("policy/other"), "{message}");
    assert_eq!(sandbox.balctl_ok(&["dump", "-o", "json"]), dump);
    let limited = sandbox.balctl(&["policy", "add", "x", "--vip", "198.18.0.21:80", "--rate-limit", "5"]);
    assert_eq!(limited.status.code(), Some(2), "--rate-limit needs --kind redirect");

    // A redirect with no backend and nothing under it: the address itself,
    // which has no route in the test's namespace.
    sandbox.balctl_ok(&["policy", "add", "lonely", "--kind", "redirect", "--vip", "198.18.0.22:80"]);
    let report = sandbox.client(&["connect", "--to", "198.18.0.22:80"]);
    assert_eq!(report["errors"]["ENETUNREACH"], 1, "{report}");
}

/// With a limit of 5 connections a second, a burst of 15 within one second
/// sends at most 5 to the redirect's backend and the rest to the Service.
pub fn a_rate_limited_redirect_sends_the_rest_to_the_service() {
    let sandbox = Sandbox::new();
    setup(&sandbox);
    sandbox.balctl_ok(&[
        "policy",
        "add",
        "local",
        "--kind",
        "redirect",
        "--vip",
        WEB,
        "--backend",
        "192.0.2.3:8080",
        "--rate-limit",
        "5",
    ]);
    // The datapath counts per second of CLOCK_MONOTONIC: start the burst
    // just after a second begins, so it stays within one.
    let into_second = monotonic_ns() % 1_000_000_000;
    thread::sleep(Duration::from_nanos(1_000_000_000 - into_second + 20_000_000));
    let report = sandbox.client(&["connect", "--to", WEB, "--count", "15"]);
    assert_eq!(report["failed"], 0, "{report}");
    let local = report["backends"]["b3"].as_u64().unwrap_or(0);
    let service = report["backends"]["b2"].as_u64().unwrap_or(0);
    assert!((1..=5).contains(&local), "{report}");
    assert_eq!(local + service, 15, "{report}");
    // The redirect counts what it let through and what it left to the Service.
    let stats = sandbox.balctl_json(&["dump", "stats", "--vip", WEB]);
    let redirect = stats["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["frontend"] == format!("{WEB}/tcp@redirect"))
        .unwrap_or_else(|| panic!("no redirect in {stats:#}"))
        .clone();
    assert_eq!(redirect["resolutions"], local, "{redirect:#}");
    assert_eq!(redirect["gave_way"]["rate_limit"], service, "{redirect:#}");

    // The next second, the redirect takes connections again.
    thread::sleep(Duration::from_secs(1));
    assert!(sandbox.reached(WEB, 3).contains(&"b3".to_owned()));
}

/// More rate-limited redirects than the rate_limits map holds: refused
/// before any write, naming the map and the option that makes it larger.
pub fn rate_limits_that_do_not_fit_change_nothing() {
    let sandbox = Sandbox::new();
    sandbox.load_with(&["--map-size", "rate_limits=1"]);
    let redirect = |name: &str, vip: &str| add_limited_redirect(&sandbox, name, vip);
    assert!(redirect("one", "198.18.0.31:80").status.success());
    let dump = sandbox.balctl_ok(&["dump", "-o", "json"]);
    let refused = redirect("two", "198.18.0.32:80");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("rate_limits map") && stderr.contains("--map-size rate_limits=2"), "{stderr}");
    assert_eq!(sandbox.balctl_ok(&["dump", "-o", "json"]), dump);
}

/// A change whose map writes fail half way (the backends map frozen, so
/// the kernel refuses user-space writes to it) leaves the rate limits as
/// they were, like every other map: the new redirect's limit is not left
/// behind, and `status` sees nothing to repair.
pub fn a_failed_change_leaves_the_rate_limits_as_they_were() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.freeze_map("backends");

    let failed = add_limited_redirect(&sandbox, "limited", "198.18.0.21:80");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(rate_limit_entries(&sandbox), 0, "the new redirect's rate limit stayed behind");
    assert!(!sandbox.balctl_ok(&["policy", "list"]).contains("limited"));
    // Everything was undone: no interrupted change for the next one to repair.
    let status = sandbox.balctl_json(&["status"]);
    assert_eq!((&status["interrupted_change"], &status["drift"]), (&false.into(), &0.into()), "{status:#}");
}

/// `load` writes the maps the way every change does: when a write fails
/// half way (the membership map frozen, so the kernel refuses user-space
/// writes to it), what it wrote is undone, the rate limit included, and the
/// state dir gets no in-progress mark. The maps drifted before the load
/// (entries deleted behind balctl's back) and drift the same way after it.
pub fn a_failed_load_leaves_the_maps_and_the_mark_as_they_were() {
    let sandbox = Sandbox::new();
    sandbox.load();
    assert!(add_limited_redirect(&sandbox, "limited", "198.18.0.21:80").status.success());
    // The redirect's backend (id 1), its membership and its rate limit
    // (service id 1), so that load has writes to make in the maps it reuses.
    for (map, key) in [("backends", "1 0 0 0"), ("membership", "1 0 0 0 1 0 0 0"), ("rate_limits", "1 0 0 0")]
    {
        let pin = sandbox.pins.join("maps").join(map);
        let deleted = std::process::Command::new("bpftool")
            .args(["map", "delete", "pinned", pin.to_str().unwrap(), "key"])
            .args(key.split(' '))
            .status()
            .expect("run bpftool");
        assert!(deleted.success(), "bpftool map delete from {map}");
    }
    let (code, drifted) = sandbox.status();
    assert_eq!((code, &drifted["interrupted_change"]), (4, &false.into()), "{drifted:#}");
    let dump = sandbox.balctl_ok(&["dump", "-o", "json"]);
    sandbox.freeze_map("membership");

    let failed = sandbox.balctl(&["load", "--cgroup", sandbox.cgroup.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(rate_limit_entries(&sandbox), 0, "the rate limit load wrote stayed behind");
    assert_eq!(sandbox.balctl_ok(&["dump", "-o", "json"]), dump, "the maps changed");
    let (code, status) = sandbox.status();
    assert_eq!((code, &status["drift"]), (4, &drifted["drift"]), "{status:#}");
    assert_eq!(status["interrupted_change"], false, "the undone load left an in-progress mark: {status:#}");
}

/// Issue 20, map writes in batches: a run of like writes goes to the
/// kernel many per call, and when the kernel stops in the middle of one
/// (the backends map filled behind balctl's back, so the capacity check,
/// which counts what balctl wrote, passes and the kernel refuses the 5th of
/// 8 new backends with E2BIG), the writes it made are undone with the
/// rest: the maps are as they were, with nothing for the next change to
/// repair, and a change that fits then applies.
pub fn a_batch_the_kernel_stops_half_way_is_undone() {
    let sandbox = Sandbox::new();
    sandbox.load_with(&["--map-size", "backends=64"]);
    let pin = sandbox.pins.join("maps/backends");
    let show = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned", pin.to_str().unwrap()])
        .output()
        .expect("run bpftool");
    let map: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let (capacity, value_size) = (map["max_entries"].as_u64().unwrap(), map["bytes_value"].as_u64().unwrap());
    // Room for 4 more: ids balctl will not give out in this test.
    let value = vec!["0"; value_size as usize].join(" ");
    let batch: String = (0..capacity - 4)
        .map(|i| {
            let id = (1_000_000 + i as u32).to_le_bytes().map(|b| b.to_string()).join(" ");
            format!("map update pinned {} key {id} value {value}\n", pin.display())
        })
        .collect();
    let commands = sandbox.scratch("fill.batch");
    std::fs::write(&commands, batch).unwrap();
    let filled =
        std::process::Command::new("bpftool").args(["batch", "file"]).arg(&commands).output().unwrap();
    assert!(filled.status.success(), "{}", String::from_utf8_lossy(&filled.stderr));
    let dump = sandbox.balctl_ok(&["dump", "-o", "json"]);
    let (_, drifted) = sandbox.status();

    let backends: Vec<String> = (1..=8).map(|host| format!("192.0.2.{host}:8080")).collect();
    let mut add = vec!["policy", "add", "wide", "--vip", "198.18.0.40:80"];
    for backend in &backends {
        add.extend(["--backend", backend]);
    }
    let failed = sandbox.balctl(&add);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("map update failed") && stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(
        sandbox.balctl_ok(&["dump", "-o", "json"]),
        dump,
        "the backends written before the failure stayed"
    );
    assert!(!sandbox.balctl_ok(&["policy", "list"]).contains("wide"));
    let (_, status) = sandbox.status();
    assert_eq!(
        (&status["interrupted_change"], &status["drift"]),
        (&false.into(), &drifted["drift"]),
        "{status:#}"
    );

    add.truncate(5 + 2 * 4);
    sandbox.balctl_ok(&add);
    assert!(sandbox.balctl_ok(&["policy", "list"]).contains("wide"));
}

/// Entries of the pinned rate_limits map.
fn rate_limit_entries(sandbox: &Sandbox) -> usize {
    let rate_limits = sandbox.pins.join("maps/rate_limits");
    let output = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", rate_limits.to_str().unwrap()])
        .output()
        .expect("run bpftool");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap().as_array().unwrap().len()
}

/// `policy add NAME --kind redirect --vip VIP` to b3, limited to 5 a second.
fn add_limited_redirect(sandbox: &Sandbox, name: &str, vip: &str) -> std::process::Output {
    sandbox.balctl(&[
        "policy",
        "add",
        name,
        "--kind",
        "redirect",
        "--vip",
        vip,
        "--backend",
        "192.0.2.3:8080",
        "--rate-limit",
        "5",
    ])
}
