//! Issue 16, defects 2 and 3 and a corrupt state: nobody but the user
//! running balctl (root) may touch the pins or the state. Another user's
//! directory, a directory others may write, a file that is not root's and
//! a symbolic link planted where balctl writes are all refused, naming the
//! path and the fix, and change nothing.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::SystemTime,
};

use crate::support::Sandbox;

const NOBODY: u32 = 65534;
const VIP: &str = "198.18.0.10:80";

/// Runs `argv` as nobody (uid and gid 65534, no supplementary groups).
fn as_nobody(argv: &[&str]) -> Output {
    let id = NOBODY.to_string();
    Command::new("setpriv")
        .args([format!("--reuid={id}"), format!("--regid={id}"), "--clear-groups".to_owned()])
        .arg("--")
        .args(argv)
        .output()
        .expect("run setpriv")
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `output` failed with exit code 1 and a one-line error that names
/// `path` and says each of `expected`; returns that line.
fn assert_refused(output: &Output, path: &Path, expected: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("refusing {}: ", path.display())), "{stderr}");
    for what in expected {
        assert!(stderr.contains(what), "{what:?} missing from: {stderr}");
    }
    stderr
}

/// The names under the pin dir (`maps/x`, `links/y`), sorted.
fn pins_of(sandbox: &Sandbox) -> Vec<String> {
    let mut pins = Vec::new();
    for dir in ["maps", "links"] {
        for entry in fs::read_dir(sandbox.pins.join(dir)).unwrap() {
            pins.push(format!("{dir}/{}", entry.unwrap().file_name().to_string_lossy()));
        }
    }
    pins.sort();
    pins
}

fn serve_and_add_web(sandbox: &Sandbox) {
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", VIP, "--backend", "192.0.2.2:8080"]);
    assert_eq!(sandbox.reached(VIP, 3), ["b2"]);
}

/// Defect 2: a pin dir, `links/` or a pin that another user made or may
/// change is refused by `load` and by every command that uses the pins,
/// and nothing is created in it; once removed as the message says, `load`
/// works, and then nobody can touch the pins.
pub fn pins_another_user_could_touch_are_refused() {
    let sandbox = Sandbox::new();
    let cgroup = sandbox.cgroup.to_str().unwrap();
    let pins = sandbox.pins.to_str().unwrap();
    let rm = format!("remove it (`rm -r {pins}`) and run `balctl load` again");

    // The sandbox's bpffs root is world-writable and sticky, like
    // /sys/fs/bpf: nobody makes the pin dir before root's first load.
    assert_eq!(fs::metadata(sandbox.pins.parent().unwrap()).unwrap().mode() & 0o7777, 0o1777);
    let made = as_nobody(&["mkdir", pins]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let load = sandbox.balctl(&["load", "--cgroup", cgroup]);
    assert_refused(&load, &sandbox.pins, &["belongs to uid 65534", "detach it", &rm]);
    for command in [&["status"][..], &["dump", "services"], &["unload", "--yes"]] {
        assert_refused(&sandbox.balctl(command), &sandbox.pins, &["belongs to uid 65534"]);
    }
    assert_eq!(fs::read_dir(&sandbox.pins).unwrap().count(), 0, "load wrote into nobody's directory");
    assert_eq!(fs::metadata(&sandbox.pins).unwrap().uid(), NOBODY);
    fs::remove_dir(&sandbox.pins).unwrap();

    // A symbolic link of nobody's in its place.
    let elsewhere = sandbox.scratch("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    assert!(as_nobody(&["ln", "-s", elsewhere.to_str().unwrap(), pins]).status.success());
    let load = sandbox.balctl(&["load", "--cgroup", cgroup]);
    assert_refused(&load, &sandbox.pins, &["symbolic link", &rm]);
    fs::remove_file(&sandbox.pins).unwrap();

    // A pin dir of root's (0755: accepted) whose links/ nobody made while
    // the pin dir was open to all.
    fs::create_dir(&sandbox.pins).unwrap();
    set_mode(&sandbox.pins, 0o1777);
    let links = sandbox.pins.join("links");
    assert!(as_nobody(&["mkdir", links.to_str().unwrap()]).status.success());
    set_mode(&sandbox.pins, 0o755);
    let load = sandbox.balctl(&["load", "--cgroup", cgroup]);
    assert_refused(&load, &links, &["belongs to uid 65534", "rm -r"]);
    assert!(
        !sandbox.pins.join("maps").exists() || fs::read_dir(sandbox.pins.join("maps")).unwrap().count() == 0
    );
    fs::remove_dir(&links).unwrap();

    // As the message says: gone, and load makes it anew, 0700, root's.
    sandbox.load();
    for dir in [sandbox.pins.clone(), sandbox.pins.join("maps"), links.clone()] {
        let meta = fs::symlink_metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700), "{}", dir.display());
    }
    serve_and_add_web(&sandbox);
    assert_nobody_can_touch_the_pins(&sandbox);

    // A pin that others may read and write.
    let services = sandbox.pins.join("maps/services");
    set_mode(&services, 0o666);
    for command in [&["status"][..], &["dump", "services"], &["load", "--cgroup", cgroup]] {
        assert_refused(&sandbox.balctl(command), &services, &["world-writable (mode 666)"]);
    }
    set_mode(&services, 0o600);
    sandbox.balctl_ok(&["status"]);
    assert_eq!(sandbox.reached(VIP, 3), ["b2"]);
}

/// After a normal load nobody can read, unlink or create anything under
/// the pin dir: every pin stays and the VIP works.
fn assert_nobody_can_touch_the_pins(sandbox: &Sandbox) {
    let before = pins_of(sandbox);
    assert!(before.contains(&"links/connect4".to_owned()) && before.contains(&"maps/services".to_owned()));
    let path = |name: &str| sandbox.pins.join(name).to_str().unwrap().to_owned();
    let (root, link, map) = (path(""), path("links/connect4"), path("maps/services"));
    let (moved, new_dir, new_file, new_link) =
        (path("../moved"), path("links/x"), path("maps/x"), path("maps/y"));
    let attempts: Vec<Vec<&str>> = vec![
        vec!["ls", &root],
        vec!["cat", &map],
        vec!["bpftool", "map", "dump", "pinned", &map],
        vec!["rm", "-f", &link],
        vec!["rm", "-rf", &root],
        vec!["mv", &root, &moved],
        vec!["mkdir", &new_dir],
        vec!["touch", &new_file],
        vec!["ln", "-s", "/tmp", &new_link],
    ];
    for attempt in &attempts {
        let output = as_nobody(attempt);
        assert!(!output.status.success(), "nobody could {attempt:?}");
    }
    assert_eq!(pins_of(sandbox), before);
    assert_eq!(sandbox.balctl_json(&["status"])["hooks"].as_array().map(Vec::len), Some(9));
    assert_eq!(sandbox.reached(VIP, 3), ["b2"]);
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

/// Two root files that planted links point at, with what they hold.
struct Targets(Vec<(PathBuf, SystemTime)>);

impl Targets {
    fn new(sandbox: &Sandbox) -> Self {
        let files = ["target-tmp", "target-mark", "target-log"].map(|name| {
            let path = sandbox.scratch(name);
            fs::write(&path, name).unwrap();
            let time = mtime(&path);
            (path, time)
        });
        Self(files.into())
    }

    fn assert_unchanged(&self) {
        for (path, time) in &self.0 {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(fs::read_to_string(path).unwrap(), name, "{} was written", path.display());
            assert_eq!(mtime(path), *time, "{} was touched", path.display());
        }
    }
}

/// Defect 3: a state dir others can write is refused whatever it holds,
/// and balctl never writes through a link planted in it; a state file that
/// is not root's, or a link, is refused; a state dir that is a link too.
pub fn a_state_others_could_touch_is_refused_and_links_are_not_followed() {
    let sandbox = Sandbox::new();
    sandbox.load();
    serve_and_add_web(&sandbox);
    let state = sandbox.state.clone();
    let add_web2 = ["policy", "add", "web2", "--vip", "198.18.0.11:80", "--backend", "192.0.2.2:8080"];
    let policies = || sandbox.balctl_ok(&["policy", "list", "-o", "json"]);
    let recorded = policies();

    // Open to all, and nobody plants links where root's change writes.
    set_mode(&state, 0o777);
    let targets = Targets::new(&sandbox);
    for (target, name) in targets.0.iter().zip(["state.bin.tmp", "map-writes-in-progress", "state.log"]) {
        // `-f`: state.log exists (empty: the first change wrote a snapshot).
        let planted =
            as_nobody(&["ln", "-sf", target.0.to_str().unwrap(), state.join(name).to_str().unwrap()]);
        assert!(planted.status.success(), "{}", String::from_utf8_lossy(&planted.stderr));
    }
    let fix = format!("`chown root: {0} && chmod 700 {0}`", state.display());
    let load = ["load", "--cgroup", sandbox.cgroup.to_str().unwrap()];
    for command in [&add_web2[..], &["policy", "list"], &["status"], &load] {
        assert_refused(&sandbox.balctl(command), &state, &["world-writable (mode 777)", &fix]);
    }
    targets.assert_unchanged();

    // The dir taken back: the planted log and mark are refused; without a
    // log the change writes a new snapshot, its temporary replaced, never
    // followed.
    set_mode(&state, 0o700);
    let log = state.join("state.log");
    for command in [&add_web2[..], &["policy", "list"]] {
        assert_refused(&sandbox.balctl(command), &log, &["symbolic link", "removes only the link"]);
    }
    fs::remove_file(&log).unwrap();
    let mark = state.join("map-writes-in-progress");
    assert_refused(&sandbox.balctl(&add_web2), &mark, &["symbolic link", "removes only the link"]);
    targets.assert_unchanged();
    assert_eq!(policies(), recorded);
    fs::remove_file(&mark).unwrap();
    sandbox.balctl_ok(&add_web2);
    targets.assert_unchanged();
    for file in ["state.bin", "state.log"] {
        assert!(fs::symlink_metadata(state.join(file)).unwrap().file_type().is_file(), "{file}");
    }
    assert!(!state.join("state.bin.tmp").exists() && !state.join("state.log.tmp").exists());
    assert_eq!(sandbox.reached("198.18.0.11:80", 2), ["b2"]);
    let recorded = policies();

    // A state file of nobody's, and one others may write.
    let file = state.join("state.bin");
    std::os::unix::fs::chown(&file, Some(NOBODY), None).unwrap();
    let fix = format!("`chown root: {0} && chmod 600 {0}`", file.display());
    assert_refused(&sandbox.balctl(&["policy", "list"]), &file, &["belongs to uid 65534", &fix]);
    std::os::unix::fs::chown(&file, Some(0), None).unwrap();
    set_mode(&file, 0o620);
    assert_refused(&sandbox.balctl(&add_web2), &file, &["group-writable (mode 620)"]);
    set_mode(&file, 0o600);
    assert_eq!(policies(), recorded);

    // A state dir that is a symbolic link.
    let link = sandbox.scratch("state-link");
    symlink(&state, &link).unwrap();
    let output = sandbox.balctl_command(&["policy", "list"]).env("BALCTL_STATE_DIR", &link).output().unwrap();
    assert_refused(&output, &link, &["symbolic link"]);
}

/// Issue 16, item 8: a state file cut short anywhere, or not balctl's at
/// all, is reported as corrupt, naming it and what to do: never an empty
/// "io error: " (bincode 1's word for it). Also a cut state file of
/// format 3, the bincode one that is still read to migrate it (issue 17).
pub fn a_truncated_state_names_the_file() {
    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", VIP, "--backend", "192.0.2.2:8080"]);
    sandbox.balctl_ok(&["policy", "add", "dns", "--vip", "198.18.0.53:53/udp", "--backend", "192.0.2.3:53"]);
    let file = sandbox.state.join("state.bin");
    let whole = fs::read(&file).unwrap();
    let expect_corrupt = |why: &str| {
        let output = sandbox.balctl(&["policy", "list"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        let said = format!("{} is corrupt: {why}", file.display());
        assert!(stderr.contains(&said) && stderr.contains("move it away"), "{stderr}");
        assert!(!stderr.contains("io error"), "{stderr}");
    };
    // Every cut after the 12-byte header, inside strings too.
    for end in 12..whole.len() {
        fs::write(&file, &whole[..end]).unwrap();
        expect_corrupt("it ends in the middle of its data (truncated)");
    }
    // Format 3 (tests/fixtures/state-v3): cuts all through it (each one
    // is in state.rs's unit tests).
    let format_3 =
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v3/state.bin")).unwrap();
    for end in (12..format_3.len()).step_by(97) {
        fs::write(&file, &format_3[..end]).unwrap();
        expect_corrupt("it ends in the middle of its data (truncated)");
    }
    fs::write(&file, "not balctl's").unwrap();
    expect_corrupt("it does not start with balctl's state header");
    fs::write(&file, &whole).unwrap();
    assert!(sandbox.balctl_ok(&["policy", "list"]).contains("web"));
}
