//! `balctl sync --watch` on the real kernel: a running watcher brings each
//! change of its inputs to the datapath within a second, reports a broken
//! input and keeps what is applied, applies the input once it is fixed
//! (also when saved editor-style, by renaming a new file over it), follows
//! a directory's files, and stops with exit 0 on SIGTERM. It never applies
//! an input caught half written: an empty file waits for its content, a
//! change removing more than a quarter of a source waits for the inputs to
//! settle. A one-shot sync refuses an empty input.

use std::{
    fs,
    io::Write as _,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{self, Sandbox, watcher::Watcher};

const VIP: &str = "198.18.0.10:80";

fn service(backends: &[&str]) -> String {
    let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[service]]\nname = \"web\"\naddresses = [\"198.18.0.10\"]\nbackends = [{}]\n\
         ports = [{{ port = 80, target_port = 8080 }}]\n",
        backends.join(", ")
    )
}

/// The backend addresses `dump` shows for `vip`, in slot order. A dump
/// taken while the watcher applies a change can find a slot whose backend
/// was removed after the slot was read: its address is null, shown as `?`.
fn dumped_backends(sandbox: &Sandbox, vip: &str) -> Vec<String> {
    let dump = sandbox.balctl_json(&["dump", "services", "--vip", vip]);
    let Some(service) = dump["services"].as_array().and_then(|s| s.first()) else {
        return Vec::new();
    };
    service["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{}:{}", b["address"].as_str().unwrap_or("?"), b["port"]))
        .collect()
}

/// Connects a few times through the VIP and returns the ids of the backends
/// that answered. No connection may fail, not even while a change is applied.
fn reached(sandbox: &Sandbox) -> Vec<String> {
    let report: Value = sandbox.client(&["connect", "--to", VIP, "--count", "20"]);
    assert_eq!(report["failed"], 0, "{report}");
    report["backends"].as_object().unwrap().keys().cloned().collect()
}

/// Polls `dump` and a real client until both show exactly `backends`
/// (addresses) answering as `ids`; returns how long that took since
/// `since`. Gives up after 5 s.
fn wait_until_applied(sandbox: &Sandbox, since: Instant, backends: &[&str], ids: &[&str]) -> Duration {
    while since.elapsed() < Duration::from_secs(5) {
        if dumped_backends(sandbox, VIP) == backends && reached(sandbox) == ids {
            return since.elapsed();
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "not applied within 5 s: dump shows {:?}, clients reach {:?}",
        dumped_backends(sandbox, VIP),
        reached(sandbox)
    );
}

/// The scenario: rewrite, break, fix (editor-style), SIGTERM.
pub fn changes_reach_the_datapath_within_a_second() {
    let sandbox = Sandbox::new();
    for host in 2..=5 {
        sandbox.serve(&format!("b{host}"), &[&format!("192.0.2.{host}:8080")], &[]);
    }
    sandbox.load();

    let stdin = sandbox.balctl(&["sync", "--watch", "-f", "-"]);
    let stderr = String::from_utf8_lossy(&stdin.stderr);
    assert_eq!(stdin.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("standard input cannot be watched"), "{stderr}");

    let file = sandbox.scratch("web.toml");
    let file_arg = file.display().to_string();
    fs::write(&file, service(&["192.0.2.2", "192.0.2.3"])).unwrap();
    let mut watcher = Watcher::start(&sandbox, &[&file_arg]);
    watcher.wait_stdout("sync: frontends +1 ~0 -0");
    wait_until_applied(&sandbox, Instant::now(), &["192.0.2.2:8080", "192.0.2.3:8080"], &["b2", "b3"]);

    // (a) A different backend set, written in place.
    fs::write(&file, service(&["192.0.2.4", "192.0.2.5"])).unwrap();
    let took =
        wait_until_applied(&sandbox, Instant::now(), &["192.0.2.4:8080", "192.0.2.5:8080"], &["b4", "b5"]);
    assert!(took < Duration::from_secs(1), "the change took {took:?} to reach the datapath");
    watcher.wait_stdout("sync: frontends +0 ~1 -0");
    let applied = sandbox.balctl_ok(&["dump", "-o", "json"]);

    // (b) A broken file: reported with file:line:column, nothing changes.
    fs::write(&file, service(&["192.0.2.4", "192.0.2.300"])).unwrap();
    let line = watcher.wait_stderr(&format!("ERROR {file_arg}:4:26: invalid IP address"));
    assert!(
        line.contains("; sync --watch: nothing applied from this change; retrying when an input changes"),
        "{line}"
    );
    watcher.assert_running();
    assert_eq!(sandbox.balctl_ok(&["dump", "-o", "json"]), applied);
    assert_eq!(reached(&sandbox), ["b4", "b5"]);

    // (c) Fixed the way editors save: a new file renamed over the old one.
    let temporary = sandbox.scratch(".web.toml.tmp");
    fs::write(&temporary, service(&["192.0.2.2", "192.0.2.5"])).unwrap();
    let saved = Instant::now();
    fs::rename(&temporary, &file).unwrap();
    let took = wait_until_applied(&sandbox, saved, &["192.0.2.2:8080", "192.0.2.5:8080"], &["b2", "b5"]);
    assert!(took < Duration::from_secs(1), "the fix took {took:?} to reach the datapath");
    watcher.wait_stdout("sync: frontends +0 ~1 -0");

    assert_eq!(watcher.terminate(), Some(0));
    // The datapath stays as the watcher left it.
    assert_eq!(sandbox.balctl_json(&["status"])["loaded"], true);
    assert_eq!(reached(&sandbox), ["b2", "b5"]);
}

/// A watched directory: a broken file at start-up is reported and the
/// watcher waits; fixed, it is applied; files added to and removed from the
/// directory add and remove their services; other files are ignored.
/// Issue 20: the watcher keeps the state it applied between changes
/// instead of reading it for each, but never over a change another balctl
/// made meanwhile: a policy added while it watches survives its next
/// syncs, in the maps and in the record.
pub fn a_watcher_starts_from_changes_others_made_meanwhile() {
    let sandbox = Sandbox::new();
    for host in 2..=4 {
        sandbox.serve(&format!("b{host}"), &[&format!("192.0.2.{host}:8080")], &[]);
    }
    sandbox.load();
    let file = sandbox.scratch("web.toml");
    fs::write(&file, service(&["192.0.2.2"])).unwrap();
    let watcher = Watcher::start(&sandbox, &[&file.display().to_string()]);
    watcher.wait_stdout("sync: frontends +1 ~0 -0");
    wait_until_applied(&sandbox, Instant::now(), &["192.0.2.2:8080"], &["b2"]);

    let other = "198.18.0.77:80";
    sandbox.balctl_ok(&["policy", "add", "other", "--vip", other, "--backend", "192.0.2.4:8080"]);
    fs::write(&file, service(&["192.0.2.3"])).unwrap();
    wait_until_applied(&sandbox, Instant::now(), &["192.0.2.3:8080"], &["b3"]);
    watcher.wait_stdout("sync: frontends +0 ~1 -0");
    assert_eq!(sandbox.reached(other, 5), ["b4"], "the policy added meanwhile is gone");
    let listed = sandbox.balctl_ok(&["policy", "list"]);
    assert!(listed.contains("other"), "{listed}");
    // Once more, with nothing changed meanwhile: the kept state is used.
    fs::write(&file, service(&["192.0.2.2", "192.0.2.3"])).unwrap();
    wait_until_applied(&sandbox, Instant::now(), &["192.0.2.2:8080", "192.0.2.3:8080"], &["b2", "b3"]);
    assert_eq!(watcher.terminate(), Some(0));
    let listed = sandbox.balctl_ok(&["policy", "list"]);
    assert!(listed.contains("other"), "{listed}");
    assert_eq!(sandbox.reached(other, 5), ["b4"]);
}

pub fn a_directory_is_followed_from_a_broken_start() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let dir = sandbox.scratch("inputs");
    fs::create_dir(&dir).unwrap();
    let dir_arg = dir.display().to_string();
    fs::write(dir.join("web.toml"), "[[service]\n").unwrap();
    let mut watcher = Watcher::start(&sandbox, &[&dir_arg]);
    watcher.wait_stderr(&format!("ERROR {dir_arg}/web.toml:1:11: unclosed array table"));
    watcher.assert_running();
    assert!(dumped_backends(&sandbox, VIP).is_empty());

    fs::write(dir.join("web.toml"), service(&["192.0.2.2"])).unwrap();
    watcher.wait_stdout("sync: frontends +1 ~0 -0");
    assert_eq!(dumped_backends(&sandbox, VIP), ["192.0.2.2:8080"]);

    let dns = "[[service]]\nname = \"dns\"\naddresses = [\"198.18.0.53\"]\nbackends = [\"192.0.2.3\"]\n\
               ports = [{ port = 53, protocol = \"udp\" }]\n";
    fs::write(dir.join("dns.toml"), dns).unwrap();
    watcher.wait_stdout("sync: frontends +1 ~0 -0");
    assert_eq!(dumped_backends(&sandbox, "198.18.0.53:53"), ["192.0.2.3:53"]);

    // Not a state file: no sync at all.
    fs::write(dir.join("notes.txt"), "not TOML").unwrap();
    watcher.assert_quiet(Duration::from_millis(600));
    fs::remove_file(dir.join("dns.toml")).unwrap();
    watcher.wait_stdout("sync: frontends +0 ~0 -1, backends +0 -1");
    assert!(dumped_backends(&sandbox, "198.18.0.53:53").is_empty());
    assert_eq!(dumped_backends(&sandbox, VIP), ["192.0.2.2:8080"]);

    assert_eq!(watcher.terminate(), Some(0));
}

/// What the watcher says when it finds an input empty.
const EMPTY_HOLD: &str = "is empty: being written; holding";

/// Rewrites `file` in place `rewrites` times as `kubectl get ... > file`
/// does: emptied, then the same content `gap` later. With a gap of a second
/// or more, the empty file is written twice more meanwhile (more events, no
/// more messages). A client connects through the VIP the whole time: no
/// connection may fail, no sync may remove the frontend, each emptying is
/// told at most once.
fn rewrite_in_place(gap: Duration) {
    let rewrites: u32 = 10;
    let sandbox = Sandbox::new();
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.load();
    let dir = sandbox.scratch("inputs");
    fs::create_dir(&dir).unwrap();
    let file = dir.join("web.toml");
    let content = service(&["192.0.2.2"]);
    fs::write(&file, &content).unwrap();
    let watcher = Watcher::start(&sandbox, &[dir.to_str().unwrap()]);
    watcher.wait_stdout("sync: frontends +1 ~0 -0");
    let applied = sandbox.balctl_ok(&["dump", "-o", "json"]);

    let settle_after_content = Duration::from_millis(400);
    let client_time = (gap + settle_after_content) * rewrites + Duration::from_millis(500);
    let client =
        sandbox.spawn_client(&["connect", "--to", VIP, "--millis", &client_time.as_millis().to_string()]);
    for _ in 0..rewrites {
        fs::File::create(&file).unwrap();
        if gap >= Duration::from_secs(1) {
            for _ in 0..2 {
                thread::sleep(gap / 3);
                fs::write(&file, "").unwrap();
            }
            thread::sleep(gap / 3);
        } else {
            thread::sleep(gap);
        }
        fs::write(&file, &content).unwrap();
        thread::sleep(settle_after_content);
    }
    let report = support::finish(client);
    assert_eq!(report["failed"], 0, "connections failed while the file was rewritten: {report}");
    assert!(report["ok"].as_u64().unwrap() > 100, "{report}");

    let syncs = watcher.stdout_lines();
    assert!(syncs.len() > 1, "the content written again was never synced: {syncs:?}");
    assert!(syncs[1..].iter().all(|line| line == "sync: no changes"), "{syncs:?}");
    let stderr = watcher.stderr_lines();
    let holds = stderr.iter().filter(|line| line.contains(EMPTY_HOLD)).count();
    let expected = if gap >= Duration::from_secs(1) { rewrites..=rewrites } else { 1..=rewrites };
    assert!(expected.contains(&u32::try_from(holds).unwrap()), "{holds} holds told: {stderr:#?}");
    let file_arg = file.display().to_string();
    assert!(stderr.iter().all(|line| !line.contains(EMPTY_HOLD) || line.contains(&file_arg)), "{stderr:#?}");
    assert_eq!(sandbox.balctl_ok(&["dump", "-o", "json"]), applied);
    assert_eq!(watcher.terminate(), Some(0));
}

/// Issue 16, defect 1: a file rewritten in place, its content 0.3 s after
/// the truncation, ten times: nothing removed, no connection lost.
pub fn an_in_place_rewrite_removes_nothing() {
    rewrite_in_place(Duration::from_millis(300));
}

/// The same with 3 s between truncation and content.
pub fn a_slow_in_place_rewrite_removes_nothing() {
    rewrite_in_place(Duration::from_secs(3));
}

/// A Kubernetes List of `services.len()` Services, each with its
/// EndpointSlice (one endpoint, 192.0.2.2:8080) right after it; `kind`
/// first, so that a cut at an item boundary is a valid List. The first
/// Service's VIP is 198.18.0.10.
fn kube_list(services: &[&str]) -> (String, Vec<String>) {
    let header = "apiVersion: v1\nkind: List\nitems:\n".to_owned();
    let items = services
        .iter()
        .enumerate()
        .map(|(n, name)| {
            format!(
                "- apiVersion: v1
  kind: Service
  metadata: {{name: {name}, namespace: ns}}
  spec: {{clusterIP: 198.18.0.{ip}, ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: {name}-1, namespace: ns, labels: {{kubernetes.io/service-name: {name}}}}}
  addressType: IPv4
  endpoints: [{{addresses: [192.0.2.2], conditions: {{ready: true}}}}]
  ports: [{{name: http, port: 8080, protocol: TCP}}]
",
                ip = 10 + n
            )
        })
        .collect();
    (header, items)
}

/// A watch says a note once, when a sync first gives it: a headless
/// Service's comes with the first sync, not with the next, which changes
/// another Service's endpoint while it is still there; once it has gone
/// and come back, it is said again.
pub fn a_note_is_said_once() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let file = sandbox.scratch("cluster.yaml");
    let (header, items) = kube_list(&["web"]);
    let moved = items[0].replace("192.0.2.2", "192.0.2.3");
    let headless = "- apiVersion: v1\n  kind: Service\n  metadata: {name: db, namespace: ns}\n  \
                    spec: {clusterIP: None, ports: [{port: 5432}]}\n";
    fs::write(&file, format!("{header}{}{headless}", items[0])).unwrap();
    let watcher = Watcher::start(&sandbox, &[file.to_str().unwrap()]);
    watcher.wait_stdout("sync: frontends +1 ~0 -0");
    for (web, db) in [(&moved, headless), (&items[0], ""), (&moved, headless)] {
        fs::write(&file, format!("{header}{web}{db}")).unwrap();
        watcher.wait_stdout("sync: frontends +0 ~1 -0");
    }
    let said: Vec<String> =
        watcher.stdout_lines().into_iter().filter(|line| line.contains("ns/db is headless")).collect();
    assert_eq!(said.len(), 2, "the first sync and the one it came back with: {said:?}");
}

/// The VIPs `dump` shows, sorted.
fn dumped_vips(sandbox: &Sandbox) -> Vec<String> {
    let dump = sandbox.balctl_json(&["dump", "services"]);
    let mut vips: Vec<String> = dump["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}:{}", s["address"].as_str().unwrap(), s["port"]))
        .collect();
    vips.sort();
    vips
}

/// Issue 16, defect 1: a List cut at an item boundary (a stalled writer)
/// would remove three of four frontends: held, writing nothing, and the
/// file completed 1 s later removes nothing, with no connection lost and
/// no stale apply when the settle time has passed. Deleting one Service of
/// four applies within a second. A cut left alone is applied once the
/// inputs have settled, without another event.
pub fn a_list_cut_at_an_item_boundary_is_held() {
    let sandbox = Sandbox::new();
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.load();
    let file = sandbox.scratch("cluster.yaml");
    let file_arg = file.display().to_string();
    let (header, items) = kube_list(&["a", "b", "c", "d"]);
    let whole = format!("{header}{}", items.concat());
    fs::write(&file, &whole).unwrap();
    let settle = Duration::from_secs(3);
    let watcher = Watcher::start_with(&sandbox, &[&file_arg], &["--node-name", "node-a", "--settle", "3s"]);
    watcher.wait_stdout("sync: frontends +4 ~0 -0");
    let all = ["198.18.0.10:80", "198.18.0.11:80", "198.18.0.12:80", "198.18.0.13:80"];
    assert_eq!(dumped_vips(&sandbox), all);
    let applied = sandbox.balctl_ok(&["dump", "-o", "json"]);

    // The writer stalls after the first Service and its slice for 1 s.
    let client = sandbox.spawn_client(&["connect", "--to", "198.18.0.13:80", "--millis", "6000"]);
    let mut writer = fs::File::create(&file).unwrap();
    writer.write_all(format!("{header}{}", items[0]).as_bytes()).unwrap();
    let cut = Instant::now();
    watcher.wait_stderr(&format!(
        "holding the change: {file_arg} would remove 3 of its 4 frontends; it is applied once the \
         inputs have not changed for 3s"
    ));
    assert_eq!(sandbox.balctl_ok(&["dump", "-o", "json"]), applied, "a held change wrote something");
    thread::sleep(Duration::from_secs(1).saturating_sub(cut.elapsed()));
    writer.write_all(items[1..].concat().as_bytes()).unwrap();
    drop(writer);
    watcher.wait_stdout("sync: no changes");
    // The hold is over: nothing happens when its settle time would end.
    watcher.assert_quiet(settle + Duration::from_secs(1));
    let report = support::finish(client);
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["ok"].as_u64().unwrap() > 100, "{report}");
    assert!(watcher.stdout_lines().iter().all(|line| !line.contains(" -3")), "{:?}", watcher.stdout_lines());
    assert_eq!(sandbox.balctl_ok(&["dump", "-o", "json"]), applied);

    // One of four is no large removal: applied at once.
    let (_, three) = kube_list(&["a", "b", "c"]);
    let written = Instant::now();
    fs::write(&file, format!("{header}{}", three.concat())).unwrap();
    watcher.wait_stdout("sync: frontends +0 ~0 -1");
    while dumped_vips(&sandbox) != all[..3] {
        assert!(written.elapsed() < Duration::from_secs(5), "{:?}", dumped_vips(&sandbox));
        thread::sleep(Duration::from_millis(10));
    }
    let took = written.elapsed();
    assert!(took < Duration::from_secs(1), "removing one Service of four took {took:?}");

    // Two of three is: held, then applied once the inputs settled, with no
    // further event.
    let written = Instant::now();
    fs::write(&file, format!("{header}{}", three[0])).unwrap();
    watcher.wait_stderr(&format!("holding the change: {file_arg} would remove 2 of its 3 frontends"));
    watcher.wait_stdout("sync: frontends +0 ~0 -2");
    let took = written.elapsed();
    assert!(took >= settle && took < settle + Duration::from_secs(2), "applied after {took:?}");
    watcher.wait_stderr("applied the held change: the inputs had not changed for 3s");
    assert_eq!(dumped_vips(&sandbox), all[..1]);
    assert_eq!(watcher.terminate(), Some(0));
}

/// An empty input is never "no objects": a one-shot sync of an empty file,
/// of a directory holding one, or of empty standard input exits 2 naming
/// it and saying how to write "no objects", and changes nothing. A comment
/// or `items: []` does mean no objects, and a one-shot sync applies that
/// at once, however much it removes.
pub fn an_empty_input_is_refused_by_a_one_shot_sync() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let dir = sandbox.scratch("inputs");
    fs::create_dir(&dir).unwrap();
    let (toml, yaml) = (dir.join("web.toml"), dir.join("cluster.yaml"));
    fs::write(&toml, service(&["192.0.2.2"])).unwrap();
    fs::write(&yaml, "kind: List\nitems: []\n").unwrap();
    let (toml_arg, yaml_arg, dir_arg) =
        (toml.display().to_string(), yaml.display().to_string(), dir.display().to_string());
    sandbox.balctl_ok(&["sync", "-f", &dir_arg]);
    let applied = sandbox.balctl_ok(&["dump", "-o", "json"]);
    let state = fs::read(sandbox.state.join("state.bin")).unwrap();

    let refused = |args: &[&str], named: &str| {
        let output = sandbox.balctl(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(&format!("error: {named} is empty:")), "{args:?}: {stderr}");
        assert!(stderr.contains("write a comment (`# none`) or `items: []`"), "{args:?}: {stderr}");
        assert_eq!(sandbox.balctl_ok(&["dump", "-o", "json"]), applied, "{args:?}");
        assert_eq!(fs::read(sandbox.state.join("state.bin")).unwrap(), state, "{args:?}");
    };
    fs::write(&toml, "").unwrap();
    refused(&["sync", "-f", &toml_arg], &toml_arg);
    refused(&["sync", "-f", &dir_arg], &toml_arg);
    fs::write(&toml, service(&["192.0.2.2"])).unwrap();
    fs::write(&yaml, "").unwrap();
    refused(&["sync", "-f", &dir_arg], &yaml_arg);
    // balctl's standard input is closed: empty.
    refused(&["sync", "-f", "-"], "<stdin>");

    fs::write(&yaml, "kind: List\nitems: []\n").unwrap();
    fs::write(&toml, "# none\n").unwrap();
    let output = sandbox.balctl_ok(&["sync", "-f", &dir_arg]);
    assert!(output.contains("sync: frontends +0 ~0 -1"), "{output}");
    assert!(dumped_backends(&sandbox, VIP).is_empty());
}
