//! Issue 4, must show 1 and 2: `balctl trace` on the real kernel. Events
//! name the client process, its cgroup, where it went and what it got; a
//! killed tracer stops the datapath's events within its lease; tracers run
//! side by side.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::fd::AsRawFd as _,
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, RingBuf};
use balctl::bpf::{pins::PinDir, sys::monotonic_ns};
use balctl_common::{TRACE_LEASE_ENTRIES, map_names};
use serde_json::Value;

use crate::support::{Sandbox, finish};

/// A running `balctl trace`, killed when dropped: a test that fails early
/// leaves no tracer behind.
pub struct TraceProcess(Option<Child>);

impl TraceProcess {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the tracer is still owned")
    }

    fn id(&mut self) -> u32 {
        self.child().id()
    }
}

impl Drop for TraceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `balctl trace ARGS` and returns once it is tracing (it says so on
/// stderr), with its stdout to read.
pub fn start_trace(sandbox: &Sandbox, args: &[&str]) -> TraceProcess {
    let mut child = sandbox
        .balctl_command(&["trace"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn balctl trace");
    let stderr = child.stderr.take().expect("trace stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stderr).read_line(&mut line);
        let _ = tx.send(line);
    });
    let trace = TraceProcess(Some(child));
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    assert!(line.starts_with("tracing"), "balctl trace did not start: {line}");
    trace
}

/// Waits (bounded) for a `--count` trace to end and returns its JSON lines.
pub fn events(mut trace: TraceProcess) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while trace.child().try_wait().expect("wait for trace").is_none() {
        assert!(Instant::now() < deadline, "balctl trace did not stop after --count events");
        thread::sleep(Duration::from_millis(20));
    }
    let mut child = trace.0.take().expect("the tracer is still owned");
    let mut stdout = String::new();
    child.stdout.take().expect("trace stdout").read_to_string(&mut stdout).expect("read trace output");
    assert!(child.wait().expect("trace status").success(), "trace failed: {stdout}");
    stdout.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect()
}

/// The test binary's name as the kernel keeps it (comm: 15 bytes).
fn peer_comm() -> String {
    let exe = std::env::current_exe().expect("test binary");
    let name = exe.file_name().expect("file name").to_string_lossy().into_owned();
    name.chars().take(15).collect()
}

fn setup(sandbox: &Sandbox) {
    sandbox.load();
    sandbox.serve("b2", &["192.0.2.2:8080"], &["192.0.2.2:5353"]);
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", "198.18.0.10:80", "--backend", "192.0.2.2:8080"]);
    sandbox.balctl_ok(&[
        "policy",
        "add",
        "dns",
        "--vip",
        "198.18.0.53:53/udp",
        "--backend",
        "192.0.2.2:5353",
    ]);
    sandbox.balctl_ok(&["policy", "add", "empty", "--vip", "198.18.0.99:80"]);
}

/// A TCP connect, an unconnected UDP send and a connect to a VIP without
/// backends: three events with the client's pid, comm and cgroup, where it
/// went, the backend it got or why it got none.
pub fn events_name_the_client_and_what_it_got() {
    let sandbox = Sandbox::new();
    setup(&sandbox);
    let trace = start_trace(&sandbox, &["--count", "3", "-o", "json"]);
    let tcp = sandbox.spawn_client(&["connect", "--to", "198.18.0.10:80"]);
    let tcp_pid = tcp.id();
    assert_eq!(finish(tcp)["ok"], 1);
    let udp = sandbox.spawn_client(&["udp-sendto", "--to", "198.18.0.53:53"]);
    let udp_pid = udp.id();
    finish(udp);
    let refused = sandbox.spawn_client(&["connect", "--to", "198.18.0.99:80"]);
    let refused_pid = refused.id();
    assert_eq!(finish(refused)["errors"]["ECONNREFUSED"], 1);

    let events = events(trace);
    assert_eq!(events.len(), 3, "{events:?}");
    let cgroup = format!("/{}", sandbox.cgroup.file_name().unwrap().to_string_lossy());
    let expected = [
        (tcp_pid, "tcp", "connect", "198.18.0.10:80", Some("192.0.2.2:8080"), "policy/web", "random"),
        (udp_pid, "udp", "sendmsg", "198.18.0.53:53", Some("192.0.2.2:5353"), "policy/dns", "random"),
        (refused_pid, "tcp", "connect", "198.18.0.99:80", None, "policy/empty", "no_backend"),
    ];
    for (event, (pid, protocol, operation, original, backend, name, result)) in events.iter().zip(expected) {
        assert_eq!(event["pid"], pid, "{event}");
        assert_eq!(event["comm"], peer_comm(), "{event}");
        assert!(event["cgroup"].as_str().is_some_and(|c| c.ends_with(&cgroup)), "{event}");
        assert_eq!(event["protocol"], protocol, "{event}");
        assert_eq!(event["operation"], operation, "{event}");
        assert_eq!(event["original"], original, "{event}");
        assert_eq!(event["backend"].as_str(), backend, "{event}");
        assert_eq!(event["name"], name, "{event}");
        assert_eq!(event["result"], result, "{event}");
        assert_eq!(event["failed"], backend.is_none(), "{event}");
    }
}

/// `--failed` and `--vip` filter; two tracers at once both see every event.
pub fn tracers_run_side_by_side_and_filter() {
    let sandbox = Sandbox::new();
    setup(&sandbox);
    let all = start_trace(&sandbox, &["--count", "2", "-o", "json"]);
    let failed = start_trace(&sandbox, &["--count", "1", "--failed", "-o", "json"]);
    let web = start_trace(&sandbox, &["--count", "1", "--vip", "198.18.0.10:80", "-o", "json"]);
    assert_eq!(sandbox.client(&["connect", "--to", "198.18.0.99:80"])["errors"]["ECONNREFUSED"], 1);
    assert_eq!(sandbox.client(&["connect", "--to", "198.18.0.10:80"])["ok"], 1);

    let originals = |events: Vec<Value>| -> Vec<String> {
        events.iter().map(|e| e["original"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(originals(events(all)), ["198.18.0.99:80", "198.18.0.10:80"]);
    assert_eq!(originals(events(failed)), ["198.18.0.99:80"]);
    assert_eq!(originals(events(web)), ["198.18.0.10:80"]);
}

/// A tracer killed with SIGKILL cannot leave tracing on: within 2 s every
/// lease has run out, and connections write nothing to its ring buffer.
pub fn a_killed_tracer_stops_events_within_two_seconds() {
    let sandbox = Sandbox::new();
    setup(&sandbox);
    let trace = start_trace(&sandbox, &["-o", "json"]);
    assert_eq!(sandbox.client(&["connect", "--to", "198.18.0.10:80"])["ok"], 1);
    drop(trace); // SIGKILL, as `Child::kill` sends
    thread::sleep(Duration::from_secs(2));

    let pins = PinDir::new(&sandbox.pins);
    let leases = Array::<MapData, u64>::try_from(Map::Array(
        MapData::from_pin(pins.map(map_names::TRACE_LEASES).unwrap()).expect("trace_leases is pinned"),
    ))
    .expect("an array");
    let now = monotonic_ns();
    for index in 0..TRACE_LEASE_ENTRIES {
        let until = leases.get(&index, 0).expect("read a lease");
        assert!(until < now, "lease {index} still runs {} ms after the kill", (until - now) / 1_000_000);
    }
    // The killed tracer read slot 0; drain what it left, then connect again.
    let mut events = RingBuf::try_from(Map::RingBuf(
        MapData::from_pin(pins.map(map_names::EVENTS[0]).unwrap()).expect("events0 is pinned"),
    ))
    .expect("a ring buffer");
    while events.next().is_some() {}
    assert_eq!(sandbox.client(&["connect", "--to", "198.18.0.10:80", "--count", "10"])["ok"], 10);
    let mut ready = libc::pollfd { fd: events.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, valid for the call.
    unsafe { libc::poll(&mut ready, 1, 200) };
    assert!(events.next().is_none(), "the datapath still writes events after the tracer was killed");
}

/// `--duration` ends a trace on time and SIGINT ends one at once, both with
/// exit 0; a tracer that ends normally ends its slot's lease right away.
pub fn trace_ends_on_duration_and_sigint() {
    let sandbox = Sandbox::new();
    setup(&sandbox);
    let started = Instant::now();
    let output = sandbox.balctl(&["trace", "--duration", "1s"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "trace --duration 1s took {took:?}"
    );

    let mut trace = start_trace(&sandbox, &[]);
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(trace.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = trace.child().try_wait().expect("wait for trace") {
            break status;
        }
        assert!(Instant::now() < deadline, "trace did not stop on SIGINT");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "trace exited with {status} on SIGINT");
    let pins = PinDir::new(&sandbox.pins);
    let leases = Array::<MapData, u64>::try_from(Map::Array(
        MapData::from_pin(pins.map(map_names::TRACE_LEASES).unwrap()).expect("trace_leases is pinned"),
    ))
    .expect("an array");
    assert_eq!(leases.get(&0, 0).expect("slot 0's lease"), 0, "slot 0's lease was not ended");
}
