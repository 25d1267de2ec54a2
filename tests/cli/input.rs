//! Bad input and mismatched pins: exit code 2 (input) or 1 (runtime), a
//! message that names the problem, and no change to the datapath or state.

use std::process::Command;

use crate::support::{Sandbox, balctl};

fn dump_json(sandbox: &Sandbox) -> (String, String) {
    (
        sandbox.balctl_ok(&["dump", "services", "-o", "json"]),
        sandbox.balctl_ok(&["dump", "backends", "-o", "json"]),
    )
}

/// Must show 8: each bad input exits 2 with a message naming the field,
/// and `dump -o json` is byte-identical before and after.
pub fn bad_input_changes_nothing() {
    let sandbox = Sandbox::new();
    // Not loaded yet: a policy cannot be applied, and is not recorded.
    let early =
        sandbox.balctl(&["policy", "add", "early", "--vip", "198.18.0.1:80", "--backend", "192.0.2.2:80"]);
    assert_eq!(early.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&early.stderr).contains("balctl load"));
    assert!(!sandbox.balctl_ok(&["policy", "list"]).contains("early"));

    sandbox.balctl_ok(&["load", "--cgroup", sandbox.cgroup.to_str().unwrap(), "--map-size", "backends=4"]);
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", "198.18.0.10:80", "--backend", "192.0.2.2:8080"]);
    let before = dump_json(&sandbox);
    let policies_before = sandbox.balctl_ok(&["policy", "list", "-o", "json"]);

    let five_backends: Vec<String> = (2..=6).map(|h| format!("--backend=192.0.2.{h}:9090")).collect();
    let mut too_many = vec!["policy", "add", "big", "--vip", "198.18.0.12:80"];
    too_many.extend(five_backends.iter().map(String::as_str));
    let other_cgroup = crate::support::cgroup2_root();
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["policy", "add", "x", "--vip", "198.18.0.300:80"], &["--vip", "not a valid IP address"]),
        (vec!["policy", "add", "x", "--vip", "198.18.0.1:0"], &["--vip", "port 0"]),
        (vec!["policy", "add", "x", "--vip", "198.18.0.1:65536"], &["--vip", "out of range"]),
        (vec!["policy", "add", "x", "--vip", "198.18.0.1:80/sctp"], &["--vip", "unknown protocol"]),
        (
            vec!["policy", "add", "x", "--vip", "198.18.0.1:80", "--backend", "192.0.2.2:0"],
            &["--backend", "port 0"],
        ),
        (
            vec!["policy", "add", "x", "--vip", "198.18.0.1:80", "--backend", "192.0.2.2:65536"],
            &["--backend", "out of range"],
        ),
        (
            vec!["policy", "add", "x", "--vip", "198.18.0.1:80", "--backend", "[2001:db8::2]:80"],
            &["--backend", "address family"],
        ),
        (
            vec!["policy", "add", "x", "--vip", "198.18.0.1:80", "--affinity", "0"],
            &["--affinity", "out of range"],
        ),
        (vec!["policy", "add", "Bad_Name", "--vip", "198.18.0.1:80"], &["policy name"]),
        (vec!["policy", "add", "web", "--vip", "198.18.0.99:80"], &["`web` already exists"]),
        (vec!["policy", "add", "copy", "--vip", "198.18.0.10:80"], &["198.18.0.10:80/tcp", "claimed twice"]),
        (too_many, &["backends map", "--map-size backends="]),
        (vec!["policy", "update", "web"], &["nothing to change"]),
        (vec!["policy", "delete", "nope"], &["no policy named `nope`"]),
        (vec!["load", "--map-size", "services=12"], &["--map-size services=12", "cannot be resized"]),
        (vec!["load", "--cgroup", other_cgroup.to_str().unwrap()], &["already loaded on", "--cgroup"]),
    ];
    for (args, expected) in &cases {
        let output = sandbox.balctl(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "balctl {}: {stderr}", args.join(" "));
        for needle in *expected {
            assert!(stderr.contains(needle), "balctl {}: expected `{needle}` in: {stderr}", args.join(" "));
        }
        assert_eq!(dump_json(&sandbox), before, "balctl {} changed the maps", args.join(" "));
    }
    assert_eq!(sandbox.balctl_ok(&["policy", "list", "-o", "json"]), policies_before);
}

/// A pinned map with another layout (from another build) is refused with a
/// clear message, and nothing gets attached.
pub fn mismatched_pinned_map_is_refused() {
    let sandbox = Sandbox::new();
    let maps = sandbox.pins.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let created = Command::new("bpftool")
        .args(["map", "create"])
        .arg(maps.join("services"))
        .args(["type", "hash", "key", "4", "value", "4", "entries", "16", "name", "services"])
        .output()
        .unwrap();
    assert!(created.status.success(), "bpftool: {}", String::from_utf8_lossy(&created.stderr));

    let output = sandbox.balctl(&["load", "--cgroup", sandbox.cgroup.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("made by another balctl version") && stderr.contains("key 4 bytes"), "{stderr}");
    assert!(!sandbox.pins.join("links/connect4").exists());
    let (code, status) = sandbox.status();
    assert_eq!((code, &status["loaded"]), (3, &serde_json::Value::Bool(false)), "{status:#}");

    std::fs::remove_file(maps.join("services")).unwrap();
    sandbox.load();
    assert_eq!(sandbox.balctl_json(&["status"])["loaded"], true);
}

/// Runs `balctl unload` on a pseudo-terminal (util-linux `script`), waits
/// for the confirmation prompt and answers with `key`. Returns the exit
/// code and everything the terminal showed.
fn unload_on_terminal(sandbox: &Sandbox, key: &str) -> (Option<i32>, String) {
    use std::io::{Read as _, Write as _};
    let mut child = Command::new("script")
        .args(["--quiet", "--return", "--command", &format!("{} unload", balctl()), "/dev/null"])
        .env("BALCTL_BPFFS", &sandbox.pins)
        .env("BALCTL_STATE_DIR", &sandbox.state)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run script");
    let mut stdout = child.stdout.take().unwrap();
    let mut shown = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&shown).contains("[y/N]") {
        let n = stdout.read(&mut buf).expect("read the terminal");
        assert!(n > 0, "no prompt appeared: {}", String::from_utf8_lossy(&shown));
        shown.extend_from_slice(&buf[..n]);
    }
    child.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
    stdout.read_to_end(&mut shown).unwrap();
    let status = child.wait().unwrap();
    (status.code(), String::from_utf8_lossy(&shown).into_owned())
}

/// On a terminal, unload asks first: "n" changes nothing, "y" unloads.
pub fn unload_asks_on_a_terminal() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let (code, shown) = unload_on_terminal(&sandbox, "n");
    assert_eq!(code, Some(1), "{shown}");
    assert!(shown.contains("unload cancelled"), "{shown}");
    assert_eq!(sandbox.balctl_json(&["status"])["hooks"].as_array().map(Vec::len), Some(9));

    let (code, shown) = unload_on_terminal(&sandbox, "y");
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("9 hooks detached"), "{shown}");
    assert!(!sandbox.pins.exists());
}

/// Issue 7, item 5: pins and state are private (0700 directories, 0600
/// files); a command run without the capabilities it needs says which, in
/// one sentence; a world-writable state file is refused.
pub fn privileges_are_checked_and_named() {
    use std::os::unix::fs::PermissionsExt as _;

    let sandbox = Sandbox::new();
    sandbox.load();
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", "198.18.0.10:80", "--backend", "192.0.2.2:8080"]);
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    for dir in
        [sandbox.pins.clone(), sandbox.pins.join("maps"), sandbox.pins.join("links"), sandbox.state.clone()]
    {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode(&sandbox.state.join("state.bin")), 0o600);

    // Runs balctl through setpriv with `privileges`; it must fail with one
    // line of stderr that says `expected`.
    let refused = |privileges: &[&str], command: &[&str], expected: &str| {
        let output = Command::new("setpriv")
            .args(privileges)
            .args(["--bounding-set=-all", "--", balctl()])
            .args(command)
            .env("BALCTL_BPFFS", &sandbox.pins)
            .env("BALCTL_STATE_DIR", &sandbox.state)
            .output()
            .expect("run setpriv");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(stderr.lines().count() == 1 && stderr.contains(expected), "{command:?}: {stderr}");
    };
    // Root without capabilities (dropped from the bounding set).
    refused(&["--inh-caps=-all"], &["load", "--cgroup", sandbox.cgroup.to_str().unwrap()], "CAP_BPF");
    refused(&["--inh-caps=-all"], &["status"], "CAP_NET_ADMIN");
    // Another user: the commands that need no capability, only the pins
    // and the state dir, say those are root's.
    for command in [
        &["dump", "services"][..],
        &["policy", "list"],
        &["policy", "add", "x", "--vip", "198.18.0.11:80", "--backend", "192.0.2.2:8080"],
        &["sync", "-f", "-"],
        &["trace", "--count", "1"],
    ] {
        refused(&["--reuid=65534", "--regid=65534", "--clear-groups"], command, "run balctl as root");
    }

    let state = sandbox.state.join("state.bin");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = sandbox.balctl(&["policy", "list"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("world-writable") && stderr.contains("state.bin"), "{stderr}");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(sandbox.balctl_ok(&["policy", "list"]).contains("web"));
}

/// Issue 7, must show 6: a change that would overflow any map a state
/// fills is refused before any write, naming the map and the `load
/// --map-size` option that makes room; and the counter arrays (stats,
/// backend_hits), for the cells the image holds. (membership follows the
/// services size and holds fewer entries than the services map;
/// affinity and revnat are LRU maps, which evict instead of filling up.)
pub fn every_map_is_checked_for_room_before_any_write() {
    let sandbox = Sandbox::new();
    sandbox.load_with(&["--map-size", "services=8,backends=4,nodes=2,rate_limits=1"]);
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", "198.18.0.10:80", "--backend", "192.0.2.2:8080"]);
    let before = (dump_json(&sandbox), sandbox.balctl_ok(&["dump", "nodes", "-o", "json"]));
    let state_before = std::fs::read(sandbox.state.join("state.bin")).unwrap();

    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus:\n  addresses:\n  \
                - {address: 192.0.2.1, type: InternalIP}\n  - {address: 192.0.2.12, type: InternalIP}\n  \
                - {address: 2001:db8::1, type: InternalIP}\n";
    let cases = [
        // 3 ports × (a master + 3 slots) = 12 entries, with web's 2.
        (
            "services.toml",
            "[[service]]\nname = \"wide\"\naddresses = [\"198.18.0.20\"]\n\
             backends = [\"192.0.2.3\", \"192.0.2.4\", \"192.0.2.5\"]\n\
             ports = [{ port = 80 }, { port = 81 }, { port = 82 }]\n",
            "services",
        ),
        // 5 backends and web's: 6 of 4; the slots fit (8 of 8).
        (
            "backends.toml",
            "[[service]]\nname = \"many\"\naddresses = [\"198.18.0.21\"]\n\
             backends = [\"192.0.2.3\", \"192.0.2.4\", \"192.0.2.5\", \"192.0.2.6\", \"192.0.2.7\"]\n\
             ports = [{ port = 80 }]\n",
            "backends",
        ),
        ("nodes.yaml", node, "nodes"),
        (
            "rate_limits.toml",
            "[[local_redirect_policy]]\nname = \"dns-a\"\naddresses = [\"198.18.0.53\"]\n\
             backends = [\"192.0.2.9\"]\nrequests_per_second = 10\nports = [{ port = 53, protocol = \"udp\" }]\n\
             [[local_redirect_policy]]\nname = \"dns-b\"\naddresses = [\"198.18.0.54\"]\n\
             backends = [\"192.0.2.9\"]\nrequests_per_second = 10\nports = [{ port = 53, protocol = \"udp\" }]\n",
            "rate_limits",
        ),
    ];
    for (file, text, map) in cases {
        let path = sandbox.scratch(file);
        std::fs::write(&path, text).unwrap();
        let output = sandbox.balctl(&["sync", "--node-name", "node-a", "-f", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains(&format!("the {map} map would need")), "{file}: {stderr}");
        assert!(stderr.contains(&format!("balctl load --map-size {map}=")), "{file}: {stderr}");
        assert!(stderr.contains("nothing was changed"), "{file}: {stderr}");
        let after = (dump_json(&sandbox), sandbox.balctl_ok(&["dump", "nodes", "-o", "json"]));
        assert_eq!(after, before, "{file} changed the maps");
        assert_eq!(std::fs::read(sandbox.state.join("state.bin")).unwrap(), state_before, "{file}");
    }

    // The counter arrays, as long as the services map: web and six
    // frontends without backends fill it (8 entries, cells 1 to 7).
    // Replacing three of them fits the services map (their masters go
    // before the new ones come), not the stats cells: those given up count
    // until the plan removes them, so the new ones need cells 8 to 10.
    let closed = |names: &[u8]| -> String {
        (names.iter())
            .map(|n| format!("[[service]]\nname = \"closed{n}\"\naddresses = [\"198.18.0.{}\"]\nports = [{{ port = 80 }}]\n", 30 + n))
            .collect()
    };
    let path = sandbox.scratch("closed.toml");
    let file = path.to_str().unwrap();
    std::fs::write(&path, closed(&[1, 2, 3, 4, 5, 6])).unwrap();
    sandbox.balctl_ok(&["sync", "-f", file]);
    let state = || ["state.bin", "state.log"].map(|file| std::fs::read(sandbox.state.join(file)).ok());
    let (before, state_before) = (dump_json(&sandbox), state());
    std::fs::write(&path, closed(&[1, 2, 3, 7, 8, 9])).unwrap();
    let output = sandbox.balctl(&["sync", "-f", file]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the stats map would need 11 counter cells but holds 8"), "{stderr}");
    assert!(
        stderr.contains("balctl load --map-size services=16") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(dump_json(&sandbox), before, "the maps changed");
    assert_eq!(state(), state_before, "the state changed");
}
