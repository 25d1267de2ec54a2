//! Issue 19, item 5: `balctl explain DEST` says what a connect would get,
//! and real connects from the same client get exactly that.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::support::{LAYERS_KNOWN, SERVICE_LAYER, Sandbox, apiserver::ApiServer, peer};

/// The test servers: id and address.
const SERVERS: [(&str, &str); 3] =
    [("b2", "192.0.2.2:8080"), ("b3", "192.0.2.3:8080"), ("b4", "192.0.2.4:8080")];

fn serve_all(sandbox: &Sandbox) {
    for (id, address) in SERVERS {
        sandbox.serve(id, &[address], &[address]);
    }
}

/// A server's address from the id it answers with.
fn address_of(id: &str) -> String {
    SERVERS.iter().find(|(server, _)| *server == id).expect("a test server").1.to_owned()
}

/// A process that stands for the client: in the test cgroup and client
/// network namespace, as the peer clients are. Killed (by PID) on drop.
struct Sleeper(Child);

impl Sleeper {
    fn start(sandbox: &Sandbox) -> Self {
        Self::spawn(sandbox.peer(true, &sandbox.client_ns))
    }

    /// Starts `peer` (a peer command that has joined its cgroup and
    /// namespace) as `sleep`.
    fn spawn(mut peer: Command) -> Self {
        let child = peer.args(["exec", "sleep", "300"]).stdout(Stdio::null()).spawn().expect("spawn sleep");
        let sleeper = Self(child);
        // It has joined the cgroup and the namespace once it runs sleep.
        let comm = format!("/proc/{}/comm", sleeper.pid());
        let start = Instant::now();
        while fs::read_to_string(&comm).map(|c| c.trim() != "sleep").unwrap_or(true) {
            assert!(start.elapsed() < Duration::from_secs(10), "the client process did not start");
            thread::sleep(Duration::from_millis(10));
        }
        sleeper
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn explain(sandbox: &Sandbox, client: &Sleeper, dest: &str) -> Value {
    explain_json(sandbox, &["explain", dest, "--pid", &client.pid()])
}

/// `explain` with `args` as JSON, validated against docs/schema/explain.json.
fn explain_json(sandbox: &Sandbox, args: &[&str]) -> Value {
    let document = sandbox.balctl_json(args);
    crate::dump::validate(&document, "explain.json");
    document
}

/// The backends `explain` lists as possible (with a nonzero chance and no
/// failure), as addresses.
fn possible(explanation: &Value) -> BTreeSet<String> {
    explanation["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter(|c| c["chance"].as_f64().unwrap() > 0.0 && c["failure"].is_null())
        .map(|c| c["backend"].as_str().expect("a backend address").to_owned())
        .collect()
}

/// The backends 1,000 real connects from the client reach, as addresses.
fn reached(sandbox: &Sandbox, dest: &str) -> BTreeSet<String> {
    sandbox.reached(dest, 1000).iter().map(|id| address_of(id)).collect()
}

/// The layer row `layer` of an explanation.
fn layer<'a>(explanation: &'a Value, layer: &str) -> &'a Value {
    let layers = explanation["layers"].as_array().expect("layers");
    layers.iter().find(|l| l["layer"] == layer).unwrap_or_else(|| panic!("no {layer} layer: {explanation}"))
}

pub fn explain_agrees_with_real_connects() {
    let sandbox = Sandbox::new();
    sandbox.load();
    serve_all(&sandbox);
    let client = Sleeper::start(&sandbox);

    // Two of the three servers; b4 runs too and must never be reached.
    let web = "198.18.0.30:80";
    sandbox.balctl_ok(&[
        "policy",
        "add",
        "web",
        "--vip",
        web,
        "--backend",
        "192.0.2.2:8080",
        "--backend",
        "192.0.2.3:8080",
    ]);
    let explanation = explain(&sandbox, &client, web);
    assert_eq!(explanation["outcome"], "backend", "{explanation}");
    assert_eq!(explanation["name"], "policy/web");
    let expected: BTreeSet<String> = ["192.0.2.2:8080", "192.0.2.3:8080"].map(String::from).into();
    assert_eq!(possible(&explanation), expected);
    for candidate in explanation["candidates"].as_array().unwrap() {
        assert_eq!(candidate["chance"], 0.5, "two backends, one slot each: {explanation}");
    }
    let report = sandbox.client(&["connect", "--to", web, "--count", "1000"]);
    assert_eq!(report["failed"], 0, "{report}");
    let counts = report["backends"].as_object().expect("backends");
    let got: BTreeSet<String> = counts.keys().map(|id| address_of(id)).collect();
    assert_eq!(got, possible(&explanation), "explain and 1,000 connects disagree: {report}");
    for (id, count) in counts {
        // 500 expected of each; 100 is over six standard deviations.
        let count = count.as_u64().unwrap();
        assert!((400..=600).contains(&count), "{id} got {count} of 1,000 at a chance of 0.5: {report}");
    }

    // Session affinity: nothing held before the first connect, then the
    // held choice, and every connect keeps it.
    let sticky = "198.18.0.31:80";
    let mut add = vec!["policy", "add", "sticky", "--vip", sticky, "--affinity", "60"];
    for (_, address) in SERVERS {
        add.extend(["--backend", address]);
    }
    sandbox.balctl_ok(&add);
    let before = explain(&sandbox, &client, sticky);
    assert!(before["held"].is_null(), "nothing held yet: {before}");
    assert_eq!(possible(&before).len(), 3);
    let first = sandbox.reached(sticky, 1);
    let after = explain(&sandbox, &client, sticky);
    assert_eq!(after["held"]["valid"], true, "{after}");
    assert_eq!(after["held"]["backend"], address_of(&first[0]).as_str());
    assert_eq!(possible(&after), [address_of(&first[0])].into());
    assert_eq!(after["candidates"][0]["chance"], 1.0);
    assert_eq!(reached(&sandbox, sticky), possible(&after), "the held choice is what connects get");
    let table = sandbox.balctl_ok(&["explain", sticky, "--pid", &client.pid()]);
    assert!(table.contains("held choice (session affinity)"), "{table}");
    assert!(table.contains(&address_of(&first[0])), "{table}");

    // A choice older than the timeout is shown, not kept.
    let brief = "198.18.0.33:80";
    sandbox.balctl_ok(&[
        "policy",
        "add",
        "brief",
        "--vip",
        brief,
        "--affinity",
        "1",
        "--backend",
        "192.0.2.2:8080",
        "--backend",
        "192.0.2.3:8080",
    ]);
    sandbox.reached(brief, 1);
    assert_eq!(explain(&sandbox, &client, brief)["held"]["valid"], true);
    thread::sleep(Duration::from_millis(2200));
    let expired = explain(&sandbox, &client, brief);
    assert_eq!(expired["held"]["valid"], false, "{expired}");
    assert!(expired["held"]["why"].as_str().unwrap().starts_with("expired"), "{expired}");
    assert_eq!(possible(&expired).len(), 2, "both slots again: {expired}");
}

pub fn a_policy_layer_wins_over_the_service_and_says_why() {
    let sandbox = Sandbox::new();
    sandbox.load();
    serve_all(&sandbox);
    let client = Sleeper::start(&sandbox);
    let web = "198.18.0.20:80";
    let file = sandbox.scratch("web.toml");
    fs::write(
        &file,
        "[[service]]\nname = \"web\"\naddresses = [\"198.18.0.20\"]\nbackends = [\"192.0.2.2\"]\n\
         ports = [{ port = 80, target_port = 8080, node_port = 30080 }]\n",
    )
    .unwrap();
    sandbox.balctl_ok(&["sync", "-f", file.to_str().unwrap()]);
    let service_only = explain(&sandbox, &client, web);
    assert_eq!(layer(&service_only, "service")["takes"], true, "{service_only}");
    // Its node port, on IPv4 loopback; not on an address that is no node's.
    let loopback = explain(&sandbox, &client, "127.0.0.1:30080");
    let node_port = layer(&loopback, "node_port");
    assert_eq!(
        (&node_port["takes"], &node_port["why"]),
        (&true.into(), &"takes it: DEST is IPv4 loopback".into())
    );
    assert_eq!(reached(&sandbox, "127.0.0.1:30080"), possible(&loopback));
    let elsewhere = explain(&sandbox, &client, "192.0.2.9:30080");
    assert_eq!(elsewhere["outcome"], "not_translated");
    let why = layer(&elsewhere, "node_port")["why"].as_str().unwrap();
    assert!(why.contains("not a node address"), "{why}");
    // A sync whose --nodeport-addresses leaves loopback out: not looked up.
    sandbox.balctl_ok(&["sync", "-f", file.to_str().unwrap(), "--nodeport-addresses", "192.0.2.0/24"]);
    let closed = explain(&sandbox, &client, "127.0.0.1:30080");
    assert_eq!(closed["outcome"], "not_translated", "{closed}");
    let why = layer(&closed, "node_port")["why"].as_str().unwrap();
    assert!(why.contains("node ports do not answer on IPv4 loopback"), "{why}");
    sandbox.balctl_ok(&["sync", "-f", file.to_str().unwrap()]);

    sandbox.balctl_ok(&["policy", "add", "bal", "--vip", web, "--backend", "192.0.2.4:8080"]);
    sandbox.balctl_ok(&["policy", "add", "local", "--kind", "redirect", "--vip", web]);
    let explanation = explain(&sandbox, &client, web);
    let (redirect, balancing, service) =
        (layer(&explanation, "redirect"), layer(&explanation, "balancing"), layer(&explanation, "service"));
    assert_eq!((&redirect["takes"], &redirect["name"]), (&false.into(), &"policy/local".into()));
    assert!(redirect["why"].as_str().unwrap().contains("gives way: it has no backend"), "{redirect}");
    assert_eq!((&balancing["takes"], &balancing["name"]), (&true.into(), &"policy/bal".into()));
    assert_eq!(service["takes"], false);
    assert!(service["name"].as_str().unwrap().ends_with("web"), "the Service's entry is named: {service}");
    let why = service["why"].as_str().unwrap();
    assert!(why.contains("not chosen") && why.contains("policy/bal"), "{why}");
    assert_eq!(possible(&explanation), ["192.0.2.4:8080".to_owned()].into());
    assert_eq!(reached(&sandbox, web), possible(&explanation));

    // The datapath skips the layers the layers map says are empty.
    sandbox.set_layers(LAYERS_KNOWN | SERVICE_LAYER);
    let skipped = explain(&sandbox, &client, web);
    assert_eq!(layer(&skipped, "service")["takes"], true, "{skipped}");
    assert!(layer(&skipped, "balancing")["why"].as_str().unwrap().contains("layers map"), "{skipped}");
    assert_eq!(reached(&sandbox, web), possible(&skipped));
    assert_eq!(possible(&skipped), ["192.0.2.2:8080".to_owned()].into());
    sandbox.load();

    let table = sandbox.balctl_ok(&["explain", web, "--pid", &client.pid()]);
    for expected in ["balancing", "policy/bal", "gives way", "not chosen", "192.0.2.4:8080"] {
        assert!(table.contains(expected), "{expected} missing from\n{table}");
    }

    // A rate-limited redirect takes connects while under its limit.
    let limited = "198.18.0.21:80";
    sandbox.balctl_ok(&[
        "policy",
        "add",
        "limited",
        "--kind",
        "redirect",
        "--vip",
        limited,
        "--backend",
        "192.0.2.3:8080",
        "--rate-limit",
        "5",
    ]);
    let explanation = explain(&sandbox, &client, limited);
    let redirect = layer(&explanation, "redirect");
    assert_eq!(redirect["takes"], true, "{explanation}");
    assert!(redirect["why"].as_str().unwrap().contains("rate limit of 5 connections a second"), "{redirect}");
}

pub fn failures_and_untranslated_destinations() {
    let sandbox = Sandbox::new();
    sandbox.load();
    serve_all(&sandbox);
    let client = Sleeper::start(&sandbox);

    let empty = "198.18.0.40:80";
    sandbox.balctl_ok(&["policy", "add", "empty", "--vip", empty]);
    let explanation = explain(&sandbox, &client, empty);
    assert_eq!(explanation["outcome"], "refused", "{explanation}");
    assert_eq!(explanation["failure"]["reason"], "no_backend");
    assert_eq!(explanation["failure"]["errno"], 111);
    assert_eq!(explanation["failure"]["error"], "ECONNREFUSED");
    let report = sandbox.client(&["connect", "--to", empty, "--count", "5"]);
    assert_eq!(report["errors"]["ECONNREFUSED"], 5, "the connects get the errno explain names: {report}");
    let table = sandbox.balctl_ok(&["explain", empty, "--pid", &client.pid()]);
    assert!(table.contains("refused: no_backend") && table.contains("ECONNREFUSED"), "{table}");

    // A slot that lost its entry (maps changed behind balctl's back): the
    // connects that draw it fail, the others reach the remaining backend.
    let half = "198.18.0.42:80";
    sandbox.balctl_ok(&[
        "policy",
        "add",
        "half",
        "--vip",
        half,
        "--backend",
        "192.0.2.2:8080",
        "--backend",
        "192.0.2.3:8080",
    ]);
    // ServiceKey of 198.18.0.42:80/tcp, balancing layer, slot 2.
    let key = "0 0 0 0 0 0 0 0 0 0 0xff 0xff 198 18 0 42 0 80 6 1 2 0 0 0";
    let pin = sandbox.pins.join("maps/services");
    let mut delete = vec!["map", "delete", "pinned", pin.to_str().unwrap(), "key"];
    delete.extend(key.split(' '));
    crate::support::run("bpftool", &delete);
    let explanation = explain(&sandbox, &client, half);
    let candidates = explanation["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2, "{explanation}");
    let stale = candidates.iter().find(|c| c["failure"] == "stale").expect("a stale slot");
    assert_eq!((&stale["chance"], &stale["backend"]), (&0.5.into(), &Value::Null));
    assert_eq!(explanation["outcome"], "backend", "half the connects still get a backend");
    let report = sandbox.client(&["connect", "--to", half, "--count", "1000"]);
    let reached: BTreeSet<String> =
        report["backends"].as_object().unwrap().keys().map(|id| address_of(id)).collect();
    assert_eq!(reached, possible(&explanation), "{report}");
    assert!(report["errors"]["ECONNREFUSED"].as_u64().unwrap() > 0, "the stale slot refuses: {report}");

    let nothing = explain(&sandbox, &client, "198.18.0.41:80");
    assert_eq!(nothing["outcome"], "not_translated");
    assert!(nothing["summary"].as_str().unwrap().contains("DEST is no frontend"), "{nothing}");
    assert_eq!(nothing["candidates"], Value::Array(vec![]));

    // A client in a cgroup the programs are not attached to.
    let outside = sandbox.add_cgroup("expl");
    let elsewhere = explain_json(&sandbox, &["explain", empty, "--cgroup", outside.to_str().unwrap()]);
    assert_eq!(elsewhere["outcome"], "not_translated");
    let expected = format!("not translated: client outside the attached cgroup {}", sandbox.cgroup.display());
    assert_eq!(elsewhere["summary"], expected.as_str());
    assert_eq!(elsewhere["client"]["pid"], Value::Null, "an empty cgroup has no process");

    // Bad input: exit 2, the argument named, nothing read.
    let pid = client.pid();
    let cgroup = sandbox.cgroup.to_str().unwrap();
    for (args, named) in [
        (vec!["explain", "198.18.0.40"], "<DEST>"),
        (vec!["explain", "no-such-host:80"], "<DEST>"),
        (vec!["explain", empty, "--pid", &pid, "--cgroup", cgroup], "--pid"),
        (vec!["explain", empty, "--pid", "4000000000"], "--pid"),
        (vec!["explain", empty, "--pid", "2147483646"], "--pid 2147483646: no such process"),
        (vec!["explain", empty, "--cgroup", "/tmp"], "--cgroup /tmp"),
        (vec!["explain", empty, "--proto", "sctp"], "--proto"),
    ] {
        let output = sandbox.balctl(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?} should name {named}: {stderr}");
    }
}

/// Cgroups a test makes below the sandbox's, removed deepest first.
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    fn make(dirs: Vec<PathBuf>) -> Self {
        for dir in &dirs {
            fs::create_dir(dir).unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        }
        Self(dirs)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            // Processes leave a cgroup asynchronously after they are reaped.
            for _ in 0..100 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `--pod NS/NAME --kube`: the Pod's UID from the API server names its
/// cgroup (`pod<UID>`, here as the systemd driver writes it), and a
/// process in it gives the network namespace that keys its affinity.
pub fn the_client_can_be_a_pod_found_through_the_api_server() {
    let sandbox = Sandbox::new();
    sandbox.load();
    serve_all(&sandbox);
    let sticky = "198.18.0.32:80";
    let mut add = vec!["policy", "add", "sticky", "--vip", sticky, "--affinity", "60"];
    for (_, address) in SERVERS {
        add.extend(["--backend", address]);
    }
    sandbox.balctl_ok(&add);
    let server = ApiServer::start();
    let kubeconfig = sandbox.scratch("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let kubeconfig = kubeconfig.to_str().unwrap();
    server.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "web-client", "namespace": "shop" },
        "spec": { "nodeName": "node-a", "containers": [{ "name": "client", "image": "client:1" }] },
        "status": { "phase": "Running", "podIP": "192.0.2.1" }
    }));
    // The test API server hands out uids in order, from 1.
    let uid = "00000000-0000-4000-8000-000000000001";
    let pod = sandbox.cgroup.join(format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")));
    let container = pod.join("cri-containerd-0123.scope");
    let _cgroups = Cgroups::make(vec![pod.clone(), container.clone()]);
    let in_pod = || {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        command.arg(peer::PEER_ARG).arg("--cgroup").arg(&container).args(["--netns", &sandbox.client_ns]);
        command
    };
    let sleeper = Sleeper::spawn(in_pod());
    let connected = in_pod().args(["connect", "--to", sticky]).output().expect("run the client");
    let report: Value = serde_json::from_slice(&connected.stdout).expect("the client's report");
    let got = report["backends"].as_object().expect("backends").keys().next().expect("a backend").clone();

    let pod_args = ["explain", sticky, "--pod", "shop/web-client", "--kube", "--kubeconfig", kubeconfig];
    let explanation = explain_json(&sandbox, &pod_args);
    assert_eq!(explanation["client"]["cgroup"], pod.to_str().unwrap(), "{explanation}");
    assert_eq!(explanation["client"]["pid"], sleeper.0.id());
    assert_eq!(explanation["outcome"], "backend");
    assert_eq!(explanation["held"]["valid"], true, "{explanation}");
    assert_eq!(explanation["held"]["backend"], address_of(&got).as_str());

    for (args, named) in [
        (vec!["--pod", "shop/nobody", "--kube", "--kubeconfig", kubeconfig], "--pod shop/nobody"),
        (vec!["--pod", "web-client", "--kube", "--kubeconfig", kubeconfig], "--pod"),
        (vec!["--pod", "shop/web-client"], "--kube"),
        (vec!["--pod", "shop/web-client", "--kube", "--pid", "1"], "--pid"),
    ] {
        let mut all = vec!["explain", sticky];
        all.extend(args);
        let output = sandbox.balctl(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{all:?}: {stderr}");
        assert!(stderr.contains(named), "{all:?} should name {named}: {stderr}");
    }
}

/// An unconnected UDP socket's choice decides its datagrams, not a
/// connect: `explain --pid` of its process lists it beside the slots.
pub fn an_unconnected_udp_sockets_choice_is_shown_beside_the_connect() {
    let sandbox = Sandbox::new();
    sandbox.load();
    serve_all(&sandbox);
    let dns = "198.18.0.53:8080";
    let mut add = vec!["policy", "add", "dns", "--vip", "198.18.0.53:8080/udp"];
    for (_, address) in SERVERS {
        add.extend(["--backend", address]);
    }
    sandbox.balctl_ok(&add);
    let mut sender = sandbox
        .peer(true, &sandbox.client_ns)
        .args(["--hold", "udp-sendto", "--to", dns])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the UDP client");
    let mut line = String::new();
    BufReader::new(sender.stdout.take().unwrap()).read_line(&mut line).expect("the client's report");
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let sender = Sleeper(sender);
    let answered = report["replies"][0]["answer"].as_str().unwrap_or_else(|| panic!("no reply: {report}"));

    let explanation = explain_json(&sandbox, &["explain", dns, "--proto", "udp", "--pid", &sender.pid()]);
    let choices = explanation["socket_choices"].as_array().expect("socket_choices");
    assert_eq!(choices.len(), 1, "{explanation}");
    assert_eq!(choices[0]["backend"], address_of(answered).as_str());
    assert_eq!(possible(&explanation).len(), 3, "a connect starts over: {explanation}");
    let tcp = explain_json(&sandbox, &["explain", dns, "--pid", &sender.pid()]);
    assert_eq!(tcp["outcome"], "not_translated", "the frontend is UDP only: {tcp}");
}
