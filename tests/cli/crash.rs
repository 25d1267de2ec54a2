//! Crash safety (issue 7, must show 1): a `sync` of 10,000 services killed
//! with SIGKILL at 20 random points of its map writes. After each kill,
//! every service that both sides have still resolves to a backend of one
//! of them, and the next sync converges to exactly its input: what the
//! maps hold (`dump -o json`) equals the services the test wrote, with no
//! drift and no entry left over.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant, SystemTime},
};

use crate::support::{LAYERS_KNOWN, SERVICE_LAYER, Sandbox};

const SERVICES: u32 = 10_000;
/// The two generations overlap in all but this many services at each end.
const SHIFT: u32 = 500;
const ENDPOINTS: u32 = 2;
/// Backend hosts 192.0.2.2 ... 192.0.2.11, all serving.
const HOSTS: u32 = 10;
const KILLS: usize = 20;
/// Services checked through the datapath after each kill.
const SAMPLE: usize = 25;

/// Service i of generation g (0 or 1): the services g×SHIFT .. +SERVICES,
/// each on its own cluster IP, its endpoints shifted between generations
/// so that every service changes.
fn generation(g: u32) -> BTreeMap<u32, Vec<u32>> {
    (g * SHIFT..g * SHIFT + SERVICES)
        .map(|i| (i, (0..ENDPOINTS).map(|k| 2 + (i + 3 * g + k) % HOSTS).collect()))
        .collect()
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i + 1)
}

fn write_generation(path: &Path, services: &BTreeMap<u32, Vec<u32>>) {
    let mut yaml = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for (i, hosts) in services {
        let _ = write!(
            yaml,
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: svc-{i}, namespace: crash}}\n  \
             spec:\n    clusterIP: {}\n    ports: [{{name: http, port: 80, protocol: TCP}}]\n\
             - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  \
             metadata: {{name: svc-{i}-x, namespace: crash, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n  \
             addressType: IPv4\n  ports: [{{name: http, port: 8080, protocol: TCP}}]\n  endpoints:\n",
            vip(*i)
        );
        for host in hosts {
            let _ = writeln!(yaml, "  - {{addresses: [192.0.2.{host}], conditions: {{ready: true}}}}");
        }
    }
    fs::write(path, yaml).expect("write the input");
}

/// A small xorshift generator: the points are random, and the seed printed
/// with any failure makes a run repeatable.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

pub fn killed_syncs_keep_services_and_converge() {
    let sandbox = Sandbox::new();
    for host in 2..2 + HOSTS {
        sandbox.serve(&format!("b{host}"), &[&format!("192.0.2.{host}:8080")], &[]);
    }
    sandbox.load_with(&["--map-size", "services=65536"]);
    let generations = [generation(0), generation(1)];
    let inputs = [sandbox.scratch("generation-0.yaml"), sandbox.scratch("generation-1.yaml")];
    for (path, services) in inputs.iter().zip(&generations) {
        write_generation(path, services);
    }
    // One file, one source: each sync replaces what the last one applied.
    let input = sandbox.scratch("cluster.yaml");
    let sync_to = |g: usize| {
        fs::copy(&inputs[g], &input).expect("copy the input");
        sandbox.balctl_ok(&["sync", "-f", input.to_str().unwrap()])
    };
    sync_to(0);
    let marker = sandbox.state.join("map-writes-in-progress");
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut random = Random(seed);

    // How long the map writes of one generation change take, from the mark
    // appearing to the end of the process.
    let mut window = {
        fs::copy(&inputs[1], &input).expect("copy the input");
        let mut child = spawn_sync(&sandbox, &input);
        let marked = wait_for(&marker, &mut child).expect("the sync marks its map writes");
        let status = child.wait().expect("wait for the sync");
        assert!(status.success(), "calibration sync failed");
        marked.elapsed()
    };
    assert_matches(&sandbox, &generations[1], "calibration");
    let mut applied = 1;

    let mut interrupted = 0;
    for kill in 0..KILLS {
        let target = 1 - applied;
        let context = format!("kill {kill} toward generation {target} (seed {seed}, window {window:?})");
        fs::copy(&inputs[target], &input).expect("copy the input");
        let mut child = spawn_sync(&sandbox, &input);
        let marked = wait_for(&marker, &mut child).expect("the sync marks its map writes");
        let delay = Duration::from_micros(random.below(window.as_micros() as u64 + 1));
        thread::sleep(delay.saturating_sub(marked.elapsed()));
        // SAFETY: kill on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().expect("reap the sync");
        let mid_write = marker.exists();
        interrupted += usize::from(mid_write);
        if !mid_write {
            // The machine got faster than when calibrated: aim earlier.
            window = window * 2 / 3;
        }

        // Every service both generations have resolves, to a backend of either.
        let both: Vec<u32> = (SHIFT..SERVICES).collect();
        let sample: Vec<u32> = (0..SAMPLE).map(|_| both[random.below(both.len() as u64) as usize]).collect();
        let mut args = vec!["connect-each".to_owned()];
        for i in &sample {
            args.extend(["--to".to_owned(), format!("{}:80", vip(*i))]);
        }
        let report = sandbox.client(&args.iter().map(String::as_str).collect::<Vec<_>>());
        for i in &sample {
            let answer = report["answers"][format!("{}:80", vip(*i))].as_str().unwrap_or("none");
            let allowed: Vec<String> =
                generations.iter().flat_map(|g| &g[i]).map(|host| format!("b{host}")).collect();
            assert!(allowed.iter().any(|a| a == answer), "{context}: svc-{i} answered {answer:?}: {report}");
        }

        // Re-running converges; every fourth time the next sync goes back
        // instead, which must converge just the same.
        let next = if kill % 4 == 3 { applied } else { target };
        let output = sync_to(next);
        assert_eq!(output.contains("were repaired"), mid_write, "{context}: {output}");
        assert_matches(&sandbox, &generations[next], &context);
        applied = next;
    }
    eprintln!(
        "crash: {interrupted} of {KILLS} kills landed during map writes (seed {seed}, window {window:?})"
    );
    assert!(
        interrupted >= KILLS / 2,
        "only {interrupted} of {KILLS} kills landed during map writes (seed {seed}, window {window:?})"
    );
}

/// A change that finds an interrupted one (the state dir's mark) plans
/// from what the maps hold and repairs them on the way. When its writes
/// fail and are undone, the maps hold the interrupted mix again, not the
/// recorded state: the mark must stay, so that the next change repairs.
/// (The kernel refuses the writes: the backends map is frozen.)
pub fn a_failed_repair_keeps_the_interrupted_mark() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let add = |name: &str, vip: &str, backend: &str| {
        sandbox.balctl(&["policy", "add", name, "--vip", vip, "--backend", backend])
    };
    assert!(add("web", "198.18.0.10:80", "192.0.2.2:8080").status.success());
    // What a balctl killed during its map writes leaves behind.
    fs::write(sandbox.state.join("map-writes-in-progress"), "").unwrap();
    let (code, status) = sandbox.status();
    assert_eq!((code, &status["interrupted_change"]), (4, &serde_json::Value::Bool(true)), "{status:#}");

    sandbox.freeze_map("backends");
    let failed = add("web2", "198.18.0.11:80", "192.0.2.3:8080");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(!sandbox.balctl_ok(&["policy", "list"]).contains("web2"), "{stderr}");
    let (code, status) = sandbox.status();
    assert_eq!(status["interrupted_change"], true, "the failed repair cleared the mark: {status:#}");
    assert_eq!(code, 4, "an interrupted change is drift");
}

fn spawn_sync(sandbox: &Sandbox, input: &Path) -> std::process::Child {
    sandbox.balctl_command(&["sync", "-f"]).arg(input).stdout(Stdio::null()).spawn().expect("run balctl sync")
}

/// Waits until `path` exists and returns when it was seen; None if the
/// process ended first.
fn wait_for(path: &Path, child: &mut std::process::Child) -> Option<Instant> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if path.exists() {
            return Some(Instant::now());
        }
        if child.try_wait().expect("poll the sync").is_some() {
            return None;
        }
        thread::sleep(Duration::from_micros(200));
    }
    panic!("{} did not appear within 60 s", path.display());
}

/// The maps hold exactly `services`: each frontend with its backends and
/// nothing else, and `status` sees no drift and no interrupted change.
fn assert_matches(sandbox: &Sandbox, services: &BTreeMap<u32, Vec<u32>>, context: &str) {
    let dumped = sandbox.balctl_json(&["dump", "services"]);
    let mut held: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for service in dumped["services"].as_array().expect("services") {
        let backends = service["backends"].as_array().expect("backends");
        assert_eq!(service["backend_count"], backends.len(), "{context}: slots missing: {service}");
        let mut addresses: Vec<String> =
            backends.iter().map(|b| format!("{}:{}", b["address"].as_str().unwrap(), b["port"])).collect();
        addresses.sort();
        let name = service["name"].as_str().unwrap_or_default().to_owned();
        held.insert(service["frontend"].as_str().expect("frontend").to_owned(), (name, addresses));
    }
    let wanted: BTreeMap<String, (String, Vec<String>)> = services
        .iter()
        .map(|(i, hosts)| {
            let mut addresses: Vec<String> = hosts.iter().map(|h| format!("192.0.2.{h}:8080")).collect();
            addresses.sort();
            (format!("{}:80/tcp", vip(*i)), (format!("service/crash/svc-{i}"), addresses))
        })
        .collect();
    if held != wanted {
        let extra = held.keys().filter(|k| !wanted.contains_key(*k)).take(3).collect::<Vec<_>>();
        let differ = wanted.iter().filter(|(k, v)| held.get(*k) != Some(v)).take(3).collect::<Vec<_>>();
        panic!("{context}: the maps do not hold the input: extra {extra:?}, missing or different {differ:?}");
    }
    let backends = sandbox.balctl_json(&["dump", "backends"]);
    assert_eq!(backends["backends"].as_array().map(Vec::len), Some(HOSTS as usize), "{context}: {backends}");
    let status = sandbox.balctl_json(&["status"]);
    assert_eq!(status["drift"], 0, "{context}");
    assert_eq!(status["interrupted_change"], false, "{context}");
    assert_eq!(sandbox.layers(), LAYERS_KNOWN | SERVICE_LAYER, "{context}: only Services hold frontends");
}
