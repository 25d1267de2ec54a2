//! What the datapath benches (compare, north_south) share: the peer's
//! `bench-worker`, started per client and driven batch by batch so that
//! clients in different namespaces take turns within one run; pinning the
//! bench to one CPU; the median of per-round rates and ratios.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use serde_json::Value;

/// What a worker reports for one batch.
pub struct Batch {
    pub ok: u32,
    pub seconds: f64,
}

impl Batch {
    pub fn rate(&self) -> f64 {
        f64::from(self.ok) / self.seconds
    }
}

/// A running benchmark worker; killed if dropped before `finish`.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Starts `peer` (a peer command with its namespace and cgroup, see
    /// `Sandbox::peer`) as a `bench-worker` whose cycles go to one of
    /// the addresses of their kind, at random.
    pub fn start(
        mut peer: Command,
        tcp: &[SocketAddr],
        udp: &[SocketAddr],
        bystander: &[SocketAddr],
    ) -> Self {
        peer.arg("bench-worker");
        for (option, addresses) in [("--tcp", tcp), ("--udp", udp), ("--bystander", bystander)] {
            for address in addresses {
                peer.arg(option).arg(address.to_string());
            }
        }
        let mut child =
            peer.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("start a bench worker");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("worker stdout"));
        Worker { child, stdin, stdout }
    }

    /// Runs one batch (`tcp N`, `udp N`, `warmup N`) and waits for it.
    pub fn run(&mut self, batch: &str) -> Batch {
        let stdin = self.stdin.as_mut().expect("worker still running");
        writeln!(stdin, "{batch}").and_then(|()| stdin.flush()).expect("send a batch");
        let answer = self.read_json();
        let ok = answer["ok"].as_u64().expect("ok") as u32;
        Batch { ok, seconds: answer["seconds"].as_f64().expect("seconds") }
    }

    /// Ends the worker; returns its report of all batches per protocol.
    pub fn finish(mut self) -> Value {
        drop(self.stdin.take());
        let report = self.read_json();
        let _ = self.child.wait();
        report
    }

    fn read_json(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from the worker");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("worker answered {line:?}: {e}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Runs `f` with this process pinned to the last CPU, so that the processes
/// it starts (the server, the clients) inherit that CPU. With client and
/// server on one CPU a batch's rate measures the CPU time a cycle costs;
/// left to the scheduler, batches ran at two rates ~30% apart depending on
/// whether client and server shared a CPU. Programming commands run
/// unpinned, as they would on a node.
pub fn on_one_cpu<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: cpu_set_t is plain data; the calls read or write only it.
    unsafe {
        let mut all: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut all),
            0,
            "sched_getaffinity"
        );
        let last =
            (0..libc::CPU_SETSIZE as usize).rev().find(|&cpu| libc::CPU_ISSET(cpu, &all)).expect("a CPU");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(last, &mut one);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one), 0, "sched_setaffinity");
        let result = f();
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &all), 0, "sched_setaffinity");
        result
    }
}
