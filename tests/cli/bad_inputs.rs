//! The bad-input corpus (tests/bad-inputs/, one file per kind of mistake,
//! fuzzers' findings among them): `balctl sync -f FILE` exits 2, names the
//! file (with the line and column and the start of the message that its
//! `# expect:` line gives), and changes neither the maps nor the state.

use std::{fs, path::PathBuf};

use crate::support::Sandbox;

/// Good sources, with names and frontends that no corpus file uses, so
/// that each bad file's own mistake is what a sync of both reports.
const GOOD_TOML: &str = r#"
[[service]]
name = "good"
addresses = ["198.18.5.10", "2001:db8:5e::5:10"]
backends = ["192.0.2.2", "2001:db8::3"]
ports = [{ port = 80, target_port = 8080 }]
"#;

const GOOD_YAML: &str = "apiVersion: v1
kind: Service
metadata: {name: good, namespace: good}
spec: {clusterIP: 198.18.5.20, ports: [{name: dns, port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: good-1, namespace: good, labels: {kubernetes.io/service-name: good}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.5]}]
ports: [{name: dns, port: 5353, protocol: UDP}]
";

/// Every file of the corpus, in name order.
fn corpus() -> Vec<PathBuf> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad-inputs");
    let mut files: Vec<PathBuf> =
        fs::read_dir(dir).expect("tests/bad-inputs").map(|entry| entry.expect("an entry").path()).collect();
    files.sort();
    files
}

/// What the file's `# expect:` line says follows its name in the error.
fn expected(file: &PathBuf) -> Option<String> {
    let text = String::from_utf8_lossy(&fs::read(file).expect("read a corpus file")).into_owned();
    text.lines().find_map(|line| line.strip_prefix("# expect: ").map(str::to_owned))
}

/// Issue 7, item 4: every file of the bad-input corpus, alone and next to a
/// good source, exits 2 naming the file, and the datapath (`dump`) and the
/// state file stay byte for byte as they were. So do bad `policy add`s.
pub fn the_bad_input_corpus_changes_nothing() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let (toml, yaml) = (sandbox.scratch("good.toml"), sandbox.scratch("good.yaml"));
    fs::write(&toml, GOOD_TOML).unwrap();
    fs::write(&yaml, GOOD_YAML).unwrap();
    let (toml, yaml) = (toml.to_str().unwrap(), yaml.to_str().unwrap());
    sandbox.balctl_ok(&["sync", "-f", toml, "-f", yaml]);
    sandbox.balctl_ok(&["policy", "add", "api", "--vip", "198.18.0.20:443", "--backend", "192.0.2.4:8443"]);
    let snapshot = || {
        let dump =
            ["services", "backends", "nodes"].map(|kind| sandbox.balctl_ok(&["dump", kind, "-o", "json"]));
        (dump, fs::read(sandbox.state.join("state.bin")).expect("the state file"))
    };
    let before = snapshot();
    let services = &before.0[0];
    assert!(["198.18.5.10", "198.18.5.20", "198.18.0.20"].iter().all(|f| services.contains(f)), "{services}");

    let files = corpus();
    assert!(files.len() > 40, "{files:?}");
    for file in &files {
        let path = file.to_str().unwrap();
        let expected = expected(file);
        for args in [vec!["sync", "-f", path], vec!["sync", "-f", toml, "-f", yaml, "-f", path]] {
            let output = sandbox.balctl(&args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "balctl {}: {stderr}", args.join(" "));
            let named = match &expected {
                Some(expected) => format!("{path}{expected}"),
                None => path.to_owned(),
            };
            assert!(stderr.contains(&named), "balctl {}: expected `{named}` in: {stderr}", args.join(" "));
            assert_eq!(snapshot(), before, "balctl {} changed the datapath or the state", args.join(" "));
        }
    }

    let bad_policies: [&[&str]; 4] = [
        &["--vip", "[::ffff:224.0.0.1]:80"],
        &["--vip", "198.18.0.30:80", "--backend", "[::ffff:0.0.0.0]:80"],
        &["--vip", "198.18.0.30:80", "--rate-limit", "5"],
        &["--vip", "198.18.0.30:80", "--backend", "192.0.2.4:80", "--backend", "[::ffff:192.0.2.4]:80"],
    ];
    for bad in bad_policies {
        let mut args = vec!["policy", "add", "bad"];
        args.extend(bad);
        let output = sandbox.balctl(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "balctl {}: {stderr}", args.join(" "));
        assert_eq!(snapshot(), before, "balctl {} changed the datapath or the state", args.join(" "));
    }
}
