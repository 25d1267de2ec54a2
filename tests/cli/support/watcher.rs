//! A `balctl sync --watch` process for the CLI tests and the benches: its
//! output lines as they come, waited for with a deadline.

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver},
    },
    thread,
    time::{Duration, Instant},
};

use super::Sandbox;

/// A `balctl sync --watch` process, killed by PID if the test fails before
/// it is stopped.
pub struct Watcher {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every line of stdout and of stderr so far, waited for or not.
    stdout_log: Arc<Mutex<Vec<String>>>,
    stderr_log: Arc<Mutex<Vec<String>>>,
}

/// The lines of `stream` as they come, and all of them so far.
fn lines(stream: impl Read + Send + 'static) -> (Receiver<String>, Arc<Mutex<Vec<String>>>) {
    let (tx, rx) = mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&log);
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            kept.lock().unwrap().push(line.clone());
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (rx, log)
}

impl Watcher {
    /// `sync --watch -f` each input.
    pub fn start(sandbox: &Sandbox, inputs: &[&str]) -> Self {
        Self::start_with(sandbox, inputs, &[])
    }

    /// `sync --watch -f` each input, with `more` arguments.
    pub fn start_with(sandbox: &Sandbox, inputs: &[&str], more: &[&str]) -> Self {
        let mut command = sandbox.balctl_command(&["sync", "--watch"]);
        command.args(more);
        for input in inputs {
            command.args(["-f", input]);
        }
        Self::spawn(command)
    }

    /// `start_with`, with the environment variables `env` set.
    #[allow(dead_code, reason = "the CLI tests' settings from the environment; the benches use none")]
    pub fn start_with_env(sandbox: &Sandbox, inputs: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = sandbox.balctl_command(&["sync", "--watch"]);
        command.envs(env.iter().copied());
        for input in inputs {
            command.args(["-f", input]);
        }
        Self::spawn(command)
    }

    /// `sync --watch` with `args`, in the network namespace `netns`
    /// (nsenter execs balctl: its PID is the watcher's).
    #[allow(dead_code, reason = "the CLI tests' health-check node ports; the benches watch in the host's")]
    pub fn start_in(sandbox: &Sandbox, netns: &str, args: &[&str]) -> Self {
        let net = format!("--net=/run/netns/{netns}");
        let mut command = sandbox.command_of("nsenter", &[&net, super::balctl(), "sync", "--watch"]);
        command.args(args);
        Self::spawn(command)
    }

    fn spawn(mut command: std::process::Command) -> Self {
        let mut child =
            command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start balctl sync --watch");
        let (stdout, stdout_log) = lines(child.stdout.take().unwrap());
        let (stderr, stderr_log) = lines(child.stderr.take().unwrap());
        Self { child, stdout, stderr, stdout_log, stderr_log }
    }

    /// Every line the watcher printed on stdout so far.
    #[allow(dead_code, reason = "the CLI tests' hold checks; the benches only wait for lines")]
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_log.lock().unwrap().clone()
    }

    /// Every line the watcher printed on stderr so far.
    #[allow(dead_code, reason = "the CLI tests' hold checks; the benches only wait for lines")]
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr_log.lock().unwrap().clone()
    }

    /// Waits (at most `within`) for a line on `stream` containing `text`.
    fn wait_for(stream: &Receiver<String>, which: &str, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match stream.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("the watcher's {which} never showed `{text}`; it showed: {seen:#?}");
    }

    /// Waits (at most 10 s) for a line on stdout containing `text`.
    pub fn wait_stdout(&self, text: &str) -> String {
        self.wait_stdout_within(text, Duration::from_secs(10))
    }

    pub fn wait_stdout_within(&self, text: &str, within: Duration) -> String {
        Self::wait_for(&self.stdout, "stdout", text, within)
    }

    pub fn wait_stderr(&self, text: &str) -> String {
        Self::wait_for(&self.stderr, "stderr", text, Duration::from_secs(10))
    }

    /// Nothing on stdout for `quiet`: no sync happened.
    pub fn assert_quiet(&self, quiet: Duration) {
        if let Ok(line) = self.stdout.recv_timeout(quiet) {
            panic!("the watcher synced unexpectedly: {line}");
        }
    }

    #[allow(dead_code, reason = "the sync bench's --kube scenario; the CLI tests stop it with terminate")]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn assert_running(&mut self) {
        assert_eq!(self.child.try_wait().unwrap(), None, "the watcher exited");
    }

    /// SIGTERM, then the exit code (waiting at most 10 s).
    pub fn terminate(mut self) -> Option<i32> {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill with our own child's PID, which is not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("the watcher did not stop within 10 s of SIGTERM");
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
