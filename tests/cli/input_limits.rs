//! What `sync -f` is given cannot make balctl use unbounded memory or time,
//! abort, hang or drive the terminal: inputs over `--max-input-size` are
//! refused (stdin and FIFOs when they get there, files by their size), a
//! big TOML file is read in linear time, FIFOs are read as streams,
//! byte-order marks are skipped, and errors quote inputs escaped and short.

use std::{
    fs::{self, File},
    io::{Read as _, Write as _},
    os::unix::{
        fs::OpenOptionsExt as _,
        process::{CommandExt as _, ExitStatusExt as _},
    },
    path::Path,
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::support::Sandbox;

/// GNU time, which measures balctl's peak RSS (see `run_fed`).
const GNU_TIME: &str = "/usr/bin/time";

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A finished balctl run.
struct Run {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Peak resident set size of balctl, from GNU time.
    peak_rss: u64,
    /// CPU time (user and system), which other work on the machine does not
    /// stretch as it does the wall-clock time.
    cpu: Duration,
}

impl Run {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs `command` (stdout and stderr are read here, stdin is empty),
/// killing it if it has not exited within `deadline`, which fails the test.
fn run_measured(command: Command, deadline: Duration) -> Run {
    run_fed(command, Stdio::null(), deadline)
}

/// `run_measured` with `stdin`. balctl runs under GNU time, which reports
/// its peak RSS: the rusage of a child of this process would not, since
/// the kernel counts in it the high-water mark of the memory the child
/// replaced at exec, a copy of this test process's (large while other tests
/// run in it). GNU time's own is small, and a signal that ends balctl makes
/// time exit with 128 + the signal.
fn run_fed(command: Command, stdin: Stdio, deadline: Duration) -> Run {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let report = std::env::temp_dir().join(format!(
        "bct-{}-rss-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let mut timed = Command::new(GNU_TIME);
    timed.args(["-f", "%M", "-o"]).arg(&report).arg(command.get_program()).args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => timed.env(name, value),
            None => timed.env_remove(name),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        timed.current_dir(dir);
    }
    let start = Instant::now();
    #[allow(clippy::zombie_processes, reason = "reaped by wait4 below, which also gives its resource usage")]
    let mut child = timed
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run balctl under GNU time (Debian package `time`)");
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    let mut killed = false;
    loop {
        // SAFETY: `pid` is our child, not reaped yet; status and usage are ours.
        let reaped = unsafe { libc::wait4(pid, &raw mut status, libc::WNOHANG, &raw mut usage) };
        assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
        if reaped == pid {
            break;
        }
        if start.elapsed() > deadline && !killed {
            // The process group: time and balctl.
            // SAFETY: kill has no memory preconditions; the group is our child's.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            killed = true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(!killed, "balctl took longer than {deadline:?}; stderr: {}", String::from_utf8_lossy(&stderr));
    Run {
        status: ExitStatus::from_raw(status),
        stdout,
        stderr,
        peak_rss: peak_rss_kib(&report) * 1024,
        cpu: [usage.ru_utime, usage.ru_stime]
            .iter()
            .map(|t| Duration::new(t.tv_sec.try_into().unwrap(), u32::try_from(t.tv_usec).unwrap() * 1000))
            .sum(),
    }
}

/// The peak RSS GNU time wrote to `report` (its last line; a line before
/// it says how balctl ended when it failed), in KiB; the report is removed.
fn peak_rss_kib(report: &Path) -> u64 {
    let text = fs::read_to_string(report).unwrap_or_default();
    let _ = fs::remove_file(report);
    let last = text.lines().last().unwrap_or_default();
    last.trim().parse().unwrap_or_else(|_| panic!("GNU time reported no peak RSS: {text:?}"))
}

fn dump_json(sandbox: &Sandbox) -> [String; 2] {
    ["services", "backends"].map(|kind| sandbox.balctl_ok(&["dump", kind, "-o", "json"]))
}

const GOOD_TOML: &str = r#"
[[service]]
name = "good"
addresses = ["198.18.6.10"]
backends = ["192.0.2.2"]
ports = [{ port = 80, target_port = 8080 }]
"#;

/// `run` was refused with exit 2 as larger than `limit`, naming `input`.
fn assert_over_limit(run: &Run, input: &str, limit: &str) {
    let stderr = run.stderr();
    assert_eq!(run.status.code(), Some(2), "{input}: {:?}, {stderr}", run.status);
    let expected = format!("{input}: larger than --max-input-size {limit}; ");
    assert!(stderr.contains(&expected), "expected `{expected}` in: {stderr}");
}

/// Writes `bytes` to the FIFO `path` from a thread, once balctl opens it;
/// a write error (balctl stopped reading) ends the thread.
fn feed_fifo(path: &Path, bytes: Vec<u8>) -> FifoWriter {
    let path = path.to_owned();
    let thread = thread::spawn({
        let path = path.clone();
        move || {
            if let Ok(mut fifo) = fs::OpenOptions::new().write(true).open(&path) {
                let _ = fifo.write_all(&bytes);
            }
        }
    });
    FifoWriter { path, thread }
}

struct FifoWriter {
    path: std::path::PathBuf,
    thread: thread::JoinHandle<()>,
}

impl FifoWriter {
    /// Waits for the writer, after balctl has exited. One still waiting
    /// for a reader (balctl never opened the FIFO) is let through by a
    /// reader opened and closed here, and then fails to write.
    fn join(self) {
        let _ = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&self.path);
        self.thread.join().unwrap();
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Issue 16, defect 4: `yes | balctl sync -f -`, a 2 GB TOML and a 2 GB
/// YAML file and a FIFO fed past the limit exit 2 naming the limit, with a
/// peak RSS within the limit (the files, refused by their size, in a
/// fraction of it), and change nothing.
pub fn oversized_inputs_are_refused_in_bounded_memory() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let good = sandbox.scratch("good.toml");
    fs::write(&good, GOOD_TOML).unwrap();
    sandbox.balctl_ok(&["sync", "-f", good.to_str().unwrap()]);
    let before = dump_json(&sandbox);
    // What balctl itself takes, without input: the debug build's heap and
    // mappings (about 20 MB).
    let baseline = 64 * MIB;

    for (limit, shown) in [(None, "1 GiB"), (Some("16M"), "16 MiB")] {
        let mut yes = Command::new("yes").stdout(Stdio::piped()).spawn().expect("yes");
        let mut args = vec!["sync", "-f", "-"];
        args.extend(limit.iter().flat_map(|limit| ["--max-input-size", limit]));
        let stdin = Stdio::from(yes.stdout.take().unwrap());
        let run = run_fed(sandbox.balctl_command(&args), stdin, Duration::from_secs(120));
        yes.kill().unwrap();
        yes.wait().unwrap();
        assert_over_limit(&run, "<stdin>", shown);
        let bytes = if limit.is_some() { 16 * MIB } else { GIB };
        assert!(run.peak_rss < bytes + baseline, "{shown}: peak RSS {} bytes", run.peak_rss);
        assert_eq!(dump_json(&sandbox), before);
    }

    for (name, start) in [("big.toml", GOOD_TOML), ("big.yaml", "apiVersion: v1\nkind: Service\n")] {
        let path = sandbox.scratch(name);
        let file = File::create(&path).unwrap();
        (&file).write_all(start.as_bytes()).unwrap();
        // Sparse: 2 GB that take no room, and no time to write.
        file.set_len(2 * GIB).unwrap();
        let path_str = path.to_str().unwrap();
        let run = run_measured(sandbox.balctl_command(&["sync", "-f", path_str]), Duration::from_secs(60));
        fs::remove_file(&path).unwrap();
        assert_over_limit(&run, path_str, "1 GiB");
        assert!(run.peak_rss < baseline, "{name}: peak RSS {} bytes", run.peak_rss);
        assert_eq!(dump_json(&sandbox), before);
    }

    let fifo = sandbox.scratch("endless.yaml");
    mkfifo(&fifo);
    let writer = feed_fifo(&fifo, b"# padding\n".repeat(400_000));
    let fifo_str = fifo.to_str().unwrap();
    let args = ["sync", "-f", fifo_str, "--max-input-size", "1MiB"];
    let run = run_measured(sandbox.balctl_command(&args), Duration::from_secs(60));
    writer.join();
    assert_over_limit(&run, fifo_str, "1 MiB");
    assert_eq!(dump_json(&sandbox), before);
}

/// `n` small services, one backend each, as TOML.
fn services_toml(n: u32) -> String {
    let mut text = String::new();
    for i in 0..n {
        let address = format!("198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 255, i & 255);
        text.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\naddresses = [\"{address}\"]\nbackends = [\"192.0.2.2\"]\n\
             ports = [{{ port = 80 }}]\n\n"
        ));
    }
    text
}

/// Issue 16, defect 5: planning a TOML file of 100,000 services takes at
/// most 12 times the CPU time of one of 10,000 (each entry's location was
/// found by counting lines from the start of the file: 100 times as long).
pub fn toml_reading_time_grows_linearly() {
    let sandbox = Sandbox::new();
    let (small, big) = (sandbox.scratch("10k.toml"), sandbox.scratch("100k.toml"));
    fs::write(&small, services_toml(10_000)).unwrap();
    fs::write(&big, services_toml(100_000)).unwrap();
    let plan = |path: &Path, deadline: Duration| {
        let run = run_measured(
            sandbox.balctl_command(&["sync", "--dry-run", "-f", path.to_str().unwrap()]),
            deadline,
        );
        assert!(run.status.success(), "{}: {}", path.display(), run.stderr());
        assert!(String::from_utf8_lossy(&run.stdout).contains("service/s9999 "));
        run.cpu
    };
    // The machine is shared, and the suite's other tests run beside this
    // one: each try measures the two sizes back to back (the small one as
    // the best of two), so that both see the same load, and the best of up
    // to four tries counts. Alone, the ratio is 9.7-10.6 with the image's
    // binary; under the suite's load one try reached 12.1.
    let (mut ratio, mut small_time) = (f64::MAX, Duration::MAX);
    for _ in 0..4 {
        let small = (0..2).map(|_| plan(&small, Duration::from_secs(120))).min().unwrap();
        // Wall-clock time, generous: only a run far beyond linear is cut short.
        let big_time = plan(&big, (small * 20).max(Duration::from_secs(60)));
        if big_time.as_secs_f64() / small.as_secs_f64() < ratio {
            (ratio, small_time) = (big_time.as_secs_f64() / small.as_secs_f64(), small);
        }
        if ratio <= 12.0 {
            break;
        }
    }
    eprintln!("sync --dry-run of 10,000 services: {small_time:?}; 100,000: {ratio:.1} times as long");
    assert!(ratio <= 12.0, "100,000 services took {ratio:.1} times as long as 10,000");
}

/// Issue 16, defect 8: FIFOs are read as streams (the format sniffed when
/// the name does not say it), a FIFO in a directory is left out with a
/// note instead of hanging the sync, a UTF-8 byte-order mark starts YAML
/// and TOML (also on stdin) without being part of them, and errors escape
/// control characters and shorten long values that inputs hold.
pub fn streams_marks_and_control_characters() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let deadline = Duration::from_secs(60);
    let scratch = |name: &str| sandbox.scratch(name).to_str().unwrap().to_owned();
    let sync = |args: &[&str]| run_measured(sandbox.balctl_command(args), deadline);

    let (yaml_fifo, sniffed_fifo) = (scratch("cluster.yaml"), scratch("services"));
    mkfifo(Path::new(&yaml_fifo));
    mkfifo(Path::new(&sniffed_fifo));
    let cluster = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\n\
                   spec: {clusterIP: 198.18.6.20, ports: [{name: http, port: 80, protocol: TCP}]}\n";
    let writers = [
        feed_fifo(Path::new(&yaml_fifo), cluster.as_bytes().to_vec()),
        feed_fifo(Path::new(&sniffed_fifo), GOOD_TOML.as_bytes().to_vec()),
    ];
    let run = sync(&["sync", "-f", &yaml_fifo, "-f", &sniffed_fifo]);
    for writer in writers {
        writer.join();
    }
    assert!(run.status.success(), "FIFOs: {}", run.stderr());
    let services = sandbox.balctl_ok(&["dump", "services"]);
    assert!(services.contains("198.18.6.20:80/tcp") && services.contains("198.18.6.10:80/tcp"), "{services}");

    let dir = sandbox.scratch("dir");
    fs::create_dir(&dir).unwrap();
    mkfifo(&dir.join("pending.yaml"));
    fs::write(dir.join("ok.toml"), GOOD_TOML.replace("good", "in-dir").replace("6.10", "6.11")).unwrap();
    let run = sync(&["sync", "-f", dir.to_str().unwrap()]);
    assert!(run.status.success(), "directory with a FIFO: {}", run.stderr());
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("pending.yaml: a FIFO in a directory is not read"), "{stdout}");
    assert!(sandbox.balctl_ok(&["dump", "services"]).contains("198.18.6.11:80/tcp"));

    let bom = scratch("bom.yaml");
    fs::write(&bom, format!("\u{feff}{}", cluster.replace("web", "bom").replace("6.20", "6.21"))).unwrap();
    let mut command = sandbox.balctl_command(&["sync", "-f", &bom, "-f", "-"]);
    command.stdin(Stdio::piped());
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdin_toml = format!("\u{feff}{}", GOOD_TOML.replace("good", "stdin").replace("6.10", "6.12"));
    child.stdin.take().unwrap().write_all(stdin_toml.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "BOM: {}", String::from_utf8_lossy(&output.stderr));
    let services = sandbox.balctl_ok(&["dump", "services"]);
    assert!(services.contains("198.18.6.21:80/tcp") && services.contains("198.18.6.12:80/tcp"), "{services}");
    fs::write(&bom, "\u{feff}kind: Nope\napiVersion: v1\n").unwrap();
    let run = sync(&["sync", "-f", &bom]);
    assert!(run.stderr().contains(&format!("{bom}:1:7: ")), "not a column for the BOM: {}", run.stderr());

    let before = dump_json(&sandbox);
    let long = "a".repeat(10_000_000);
    let cases = [
        ("escape.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: \"x\\e[2J\\0y\"}\n".to_owned()),
        ("escape.toml", GOOD_TOML.replace("\"good\"", "\"x\\u001b[2J\\u0000y\"")),
        ("long.yaml", format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {long}, namespace: ns}}\n")),
        ("long.toml", GOOD_TOML.replace("\"good\"", &format!("\"{long}\""))),
        ("long-key.toml", GOOD_TOML.replace("name = ", &format!("{long} = 1\nname = "))),
    ];
    for (name, text) in cases {
        let path = scratch(name);
        fs::write(&path, text).unwrap();
        let run = sync(&["sync", "-f", &path]);
        let stderr = run.stderr();
        assert_eq!(run.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.starts_with(&format!("error: {path}:")), "{name}: {stderr}");
        assert!(
            !run.stderr.iter().any(|&b| b == 0x1b || b == 0),
            "{name}: raw control characters: {stderr:?}"
        );
        assert!(run.stderr.len() < 4096, "{name}: {} bytes of stderr", run.stderr.len());
        if name.starts_with("escape") {
            assert!(stderr.contains("x\\x1b[2J\\x00y"), "{name}: {stderr}");
        }
        assert_eq!(dump_json(&sandbox), before, "{name} changed the maps");
    }
}

/// Deep nesting, huge numbers, long strings and aliases in TOML and YAML
/// are input errors: exit 2, a short message, never a crash.
pub fn hostile_structures_are_input_errors() {
    let sandbox = Sandbox::new();
    let deep = 100_000;
    let service = |port: &str| {
        format!("[[service]]\nname = \"a\"\naddresses = [\"198.18.0.1\"]\nports = [{{ port = {port} }}]\n")
    };
    let yaml_service =
        |spec: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec: {spec}\n");
    let cases = [
        ("arrays.toml", format!("[[service]]\nname = {}\n", "[".repeat(deep))),
        ("tables.toml", format!("a = {}\n", "{a = ".repeat(deep))),
        ("dotted.toml", format!("[{}a]\n", "a.".repeat(deep))),
        ("number.toml", service(&"9".repeat(deep))),
        ("float.toml", service(&format!("1e{}", "9".repeat(1000)))),
        ("flow.yaml", yaml_service(&"[".repeat(deep))),
        ("mappings.yaml", yaml_service(&"{a: ".repeat(deep))),
        ("blocks.yaml", (0..3000).map(|i| format!("{}- \n", " ".repeat(i))).collect()),
        (
            "number.yaml",
            yaml_service(&format!("{{clusterIP: 198.18.0.1, ports: [{{port: {}}}]}}", "9".repeat(deep))),
        ),
        ("string.yaml", yaml_service(&format!("{{clusterIP: \"{}\"}}", "1".repeat(5_000_000)))),
        ("aliases.yaml", "a: &a [x]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n".to_owned()),
    ];
    for (name, text) in cases {
        let path = sandbox.scratch(name);
        fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        let run =
            run_measured(sandbox.balctl_command(&["sync", "--dry-run", "-f", path]), Duration::from_secs(60));
        let stderr = run.stderr();
        assert_eq!(run.status.code(), Some(2), "{name}: {:?} {stderr}", run.status.signal());
        assert!(stderr.starts_with(&format!("error: {path}:")) && stderr.len() < 4096, "{name}: {stderr}");
    }
}

/// `count` addresses from `first` on, as TOML or YAML flow items.
fn addresses(first: [u8; 2], count: u32) -> Vec<String> {
    (0..count).map(|i| format!("\"{}.{}.{}.{}\"", first[0], first[1], i >> 8, i & 255)).collect()
}

/// 750 backend addresses, in the test networks.
fn backends() -> Vec<String> {
    ["192.0.2", "198.51.100", "203.0.113"]
        .iter()
        .flat_map(|net| (1..=250).map(move |host| format!("\"{net}.{host}\"")))
        .collect()
}

/// Issue 16, defect 4: small inputs that asked for huge memory are input
/// errors in bounded memory. A cross product of addresses, ports and
/// backends (each frontend rule holds a copy of its backends) is refused
/// before it is made, by the map entries it would make; a file of empty
/// YAML documents costs nothing per document, and a List of null entries
/// is refused at the first, and one object of 25 million nulls at the
/// millionth value.
pub fn amplifying_inputs_are_refused_in_bounded_memory() {
    let sandbox = Sandbox::new();
    let backends = backends();
    let cross_toml = format!(
        "[[service]]\nname = \"web\"\naddresses = [{}]\nbackends = [{}]\nports = [{}]\n",
        addresses([198, 18], 1000).join(", "),
        backends.join(", "),
        (1..=1000).map(|p| format!("{{ port = {p} }}")).collect::<Vec<_>>().join(", "),
    );
    let cross_yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  clusterIP: 198.19.0.1\n  \
         externalIPs: [{}]\n  ports: [{}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nendpoints: [{}]\nports: [{}]\n",
        addresses([198, 18], 25_000).join(", "),
        (1..=1000).map(|p| format!("{{name: p{p}, port: {p}}}")).collect::<Vec<_>>().join(", "),
        backends.iter().map(|b| format!("{{addresses: [{b}]}}")).collect::<Vec<_>>().join(", "),
        (1..=1000).map(|p| format!("{{name: p{p}, port: 8080}}")).collect::<Vec<_>>().join(", "),
    );
    let fifty_mib = 50 * MIB as usize;
    // Read in items, since the one object is long enough to be one: an
    // error would send the file to be read whole, which says what it is.
    let separators = format!(
        "{}apiVersion: v1\nkind: Node\nmetadata: {{name: a}}\nstatus: {{addresses: [{{type: InternalIP, address: 192.0.2.1}}]}}\n",
        "---\n".repeat(fifty_mib / 4)
    );
    let null_entries = format!("apiVersion: v1\nkind: List\nitems:\n{}", "-\n".repeat(fifty_mib / 2));
    let nulls = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec:\n  x: [{}]\n",
        "~,".repeat(fifty_mib / 2)
    );
    let cases = [
        (
            "cross.toml",
            cross_toml,
            "cross.toml:1:1: service `web`: 1,000 IPv4 addresses x 1,000 ports x (1 + 750 IPv4 backends) = \
             751,000,000 map entries; a sync may make at most 16,777,216 (the services map must hold them)",
        ),
        (
            "cross.yaml",
            cross_yaml,
            // Counted a port at a time (the cluster IP's first).
            "cross.yaml:1:1: service shop/web port 1/tcp: 25,000 external IPs, load-balancer IPs and node \
             ports x (1 + 750 backends) = 18,775,000 map entries, 18,775,751 with those counted before; a \
             sync may make at most 16,777,216",
        ),
        ("entries.yaml", null_entries, "entries.yaml:4:1: a List entry of 2 bytes is too short"),
        // The 1,048,577th value of the object, its 1,048,571st null.
        ("nulls.yaml", nulls, "nulls.yaml:5:2097147: an object of more than 1048576 YAML values"),
    ];
    for (name, text, expected) in cases {
        let path = sandbox.scratch(name);
        fs::write(&path, text).unwrap();
        let path_str = path.to_str().unwrap();
        let run = run_measured(
            sandbox.balctl_command(&["sync", "--dry-run", "-f", path_str]),
            Duration::from_secs(120),
        );
        fs::remove_file(&path).unwrap();
        let stderr = run.stderr();
        assert_eq!(run.status.code(), Some(2), "{name}: {:?} {stderr}", run.status.signal());
        let expected = format!("error: {}", path_str.replace(name, expected));
        assert!(
            stderr.starts_with(&expected) && stderr.len() < 4096,
            "{name}: expected `{expected}` in {stderr}"
        );
        assert!(run.peak_rss < 512 * MIB, "{name}: peak RSS {} bytes", run.peak_rss);
    }
    let path = sandbox.scratch("separators.yaml");
    fs::write(&path, separators).unwrap();
    let run = run_measured(
        sandbox.balctl_command(&["sync", "--dry-run", "-f", path.to_str().unwrap()]),
        Duration::from_secs(120),
    );
    fs::remove_file(&path).unwrap();
    assert!(run.status.success(), "{}", run.stderr());
    assert!(run.peak_rss < 512 * MIB, "separators: peak RSS {} bytes", run.peak_rss);
}
