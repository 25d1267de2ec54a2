//! Issue 17, build 7 and must show 6: the output options kubectl users
//! expect, on `dump` and `policy list|get`: `-o jsonpath=...` prints what
//! the JSON holds, `-o wide` adds columns, `--no-headers` drops the header
//! row; `dump --name` and `--namespace` keep the entries of the objects
//! they name; `dump services` has each frontend's TYPE.

use serde_json::Value;

use crate::support::{Sandbox, watcher::Watcher};

fn example(name: &str) -> String {
    format!("{}/examples/k8s/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `(frontend, type, name)` of each service entry in a `dump services -o json`.
fn rows(document: &Value) -> Vec<(String, String, String)> {
    document["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let text = |field: &str| s[field].as_str().unwrap_or("null").to_owned();
            (text("frontend"), text("type"), text("name"))
        })
        .collect()
}

pub fn kubectl_output_options_and_filters() {
    let sandbox = Sandbox::new();
    sandbox.serve("b2", &["192.0.2.2:8080"], &[]);
    sandbox.load();
    sandbox.balctl_ok(&["policy", "add", "web", "--vip", "198.18.0.10:80", "--backend", "192.0.2.2:8080"]);
    sandbox.balctl_ok(&[
        "policy",
        "add",
        "local-dns",
        "--kind",
        "redirect",
        "--vip",
        "198.18.0.53:53/udp",
        "--backend",
        "192.0.2.5:53",
        "--rate-limit",
        "100",
    ]);
    let (lb, external, dns) =
        (example("loadbalancer.yaml"), example("external-ip.yaml"), example("kube-dns.yaml"));
    sandbox.balctl_ok(&["sync", "--node-name", "node-a", "-f", &lb, "-f", &external, "-f", &dns]);
    assert_eq!(sandbox.reached("198.18.0.10:80", 3), ["b2"]);

    // TYPE: each address of a Service as Kubernetes names it, a policy's kind.
    let services = sandbox.balctl_json(&["dump", "services"]);
    let types: Vec<(String, String)> = rows(&services).into_iter().map(|(f, t, _)| (f, t)).collect();
    for expected in [
        ("0.0.0.0:30443/tcp", "NodePort"),
        ("198.18.0.10:80/tcp@balancing", "balancing"),
        ("198.18.0.30:443/tcp", "ClusterIP"),
        ("198.18.0.40:80/tcp", "ClusterIP"),
        ("198.18.0.53:53/udp@redirect", "redirect"),
        ("198.18.1.30:443/tcp", "LoadBalancer"),
    ] {
        assert!(types.contains(&(expected.0.to_owned(), expected.1.to_owned())), "{expected:?} in {types:?}");
    }
    let external_ip = types.iter().find(|(f, _)| f.starts_with("198.18.2.")).expect("legacy's external IP");
    assert_eq!(external_ip.1, "ExternalIP", "{types:?}");

    // -o jsonpath prints what the JSON holds.
    let template = r#"jsonpath={range .services[*]}{.frontend} {.type} {.name}{"\n"}{end}"#;
    let printed = sandbox.balctl_ok(&["dump", "services", "-o", template]);
    let expected: String = rows(&services).iter().map(|(f, t, n)| format!("{f} {t} {n}\n")).collect();
    assert_eq!(printed, expected);
    let frontends = sandbox.balctl_ok(&["dump", "services", "-o", "jsonpath={.services[*].frontend}"]);
    let listed: Vec<String> = rows(&services).into_iter().map(|(f, ..)| f).collect();
    assert_eq!(frontends, listed.join(" "), "several results are space-separated, no newline added");
    let filtered = sandbox.balctl_ok(&[
        "dump",
        "all",
        "-o",
        r#"jsonpath={.services[?(@.type=="LoadBalancer")].backends[*].address}"#,
    ]);
    assert_eq!(filtered, "192.0.2.6");
    let stats = sandbox.balctl_json(&["dump", "stats"]);
    let resolutions = sandbox.balctl_ok(&[
        "dump",
        "stats",
        "-o",
        r#"jsonpath={.stats[?(@.name=="policy/web")].resolutions}"#,
    ]);
    let web = stats["stats"].as_array().unwrap().iter().find(|s| s["name"] == "policy/web").unwrap();
    assert_eq!(resolutions, web["resolutions"].to_string());
    assert_eq!(resolutions, "3");

    // A bad template is a usage error naming where it is wrong.
    let bad = sandbox.balctl(&["dump", "-o", "jsonpath={.services[*].frontend"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at character 1") && stderr.contains("not closed"), "{stderr}");
    let bad = sandbox.balctl(&["policy", "list", "-o", "jsonpath={range .policies[*]}{.name}"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("without its {end}"));

    // --no-headers: one line per entry; -o wide: more columns.
    let table = sandbox.balctl_ok(&["dump", "services"]);
    let header = table.lines().next().unwrap();
    assert!(header.split_whitespace().eq(["FRONTEND", "TYPE", "NAME", "BACKENDS"]), "{table}");
    let bare = sandbox.balctl_ok(&["dump", "services", "--no-headers"]);
    assert_eq!(
        bare.lines().filter(|l| l.contains("/tcp") || l.contains("/udp")).count(),
        listed.len(),
        "{bare}"
    );
    assert!(!bare.contains("FRONTEND") && bare.trim_start().starts_with(&listed[0]), "{bare}");
    let wide = sandbox.balctl_ok(&["dump", "services", "-o", "wide"]);
    let header = wide.lines().next().unwrap();
    assert!(
        header
            .split_whitespace()
            .eq(["FRONTEND", "TYPE", "NAME", "ID", "AFFINITY", "SLOTS", "SOURCE", "BACKENDS"]),
        "{wide}"
    );
    let lb_row =
        wide.lines().map(str::trim).find(|l| l.starts_with("198.18.1.30:443/tcp")).expect("the LB row");
    assert!(lb_row.contains("LoadBalancer") && lb_row.contains(&lb), "{lb_row}");
    assert!(
        wide.lines()
            .map(str::trim)
            .any(|l| l.starts_with("198.18.0.10:80/tcp@balancing") && l.contains("balctl policy"))
    );
    let wide_bare = sandbox.balctl_ok(&["dump", "services", "-o", "wide", "--no-headers"]);
    let words = |text: &str| -> Vec<Vec<String>> {
        text.lines().map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
    };
    assert_eq!(words(&wide_bare), words(wide.split_once('\n').unwrap().1), "the same rows, no header");
    // Every kind takes them.
    for kind in ["backends", "affinity", "revnat", "nodes", "config", "stats", "flows", "all"] {
        for args in [&["-o", "wide"][..], &["--no-headers"], &["-o", "wide", "--no-headers"]] {
            let mut command = vec!["dump", kind];
            command.extend(args);
            sandbox.balctl_ok(&command);
        }
    }
    assert!(sandbox.balctl_ok(&["dump", "backends", "-o", "wide"]).trim_start().starts_with("ID"));
    assert!(!sandbox.balctl_ok(&["dump", "backends"]).lines().next().unwrap().contains("ID"));
    // Other formats have no headers: --no-headers leaves them alone, as kubectl's.
    assert_eq!(sandbox.balctl_json(&["dump", "services", "--no-headers"]), services);

    // policy list and get.
    let list = sandbox.balctl_ok(&["policy", "list", "--no-headers"]);
    assert_eq!(
        list.lines().map(|l| l.split_whitespace().next().unwrap()).collect::<Vec<_>>(),
        ["web", "local-dns"]
    );
    let wide = sandbox.balctl_ok(&["policy", "list", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().trim().ends_with("KIND"), "{wide}");
    assert!(
        wide.lines().map(str::trim).any(|l| l.starts_with("local-dns") && l.ends_with("redirect (100/s)")),
        "{wide}"
    );
    let names =
        sandbox.balctl_ok(&["policy", "list", "-o", r#"jsonpath={range .policies[*]}{.name}{"\n"}{end}"#]);
    assert_eq!(names, "web\nlocal-dns\n");
    let got = sandbox.balctl_ok(&["policy", "get", "local-dns", "-o", "jsonpath={.name} {.backends[0]}"]);
    let json = sandbox.balctl_json(&["policy", "get", "local-dns"]);
    assert_eq!(got, format!("{} {}", json["name"].as_str().unwrap(), json["backends"][0].as_str().unwrap()));
    assert_eq!(got, "local-dns 192.0.2.5:53");

    // --name and --namespace.
    let names_of = |args: &[&str]| {
        let mut command = vec!["dump", "services"];
        command.extend(args);
        let mut names: Vec<String> =
            rows(&sandbox.balctl_json(&command)).into_iter().map(|(.., n)| n).collect();
        names.dedup();
        names
    };
    assert_eq!(names_of(&["--name", "api"]), ["service/shop/api"]);
    assert_eq!(names_of(&["--name", "shop/api"]), ["service/shop/api"]);
    assert_eq!(names_of(&["--name", "service/shop/api"]), ["service/shop/api"]);
    assert_eq!(names_of(&["--name", "hop/api"]), Vec::<String>::new(), "whole names only");
    assert_eq!(names_of(&["--name", "web"]), ["policy/web"]);
    let mut shop = names_of(&["--namespace", "shop"]);
    shop.sort();
    shop.dedup();
    assert_eq!(shop, ["service/shop/api", "service/shop/legacy"]);
    assert_eq!(names_of(&["-n", "shop", "--name", "legacy"]), ["service/shop/legacy"]);
    assert!(names_of(&["-n", "kube-system", "--name", "api"]).is_empty());
    let backends = sandbox.balctl_json(&["dump", "backends", "--name", "web"]);
    assert_eq!(backends["backends"][0]["address"], "192.0.2.2", "{backends:#}");
    assert_eq!(backends["backends"].as_array().unwrap().len(), 1, "{backends:#}");
    let stats = sandbox.balctl_json(&["dump", "stats", "--namespace", "shop"]);
    assert!(
        stats["stats"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["name"].as_str().unwrap().starts_with("service/shop/"))
    );
    let revnat = sandbox.balctl_json(&["dump", "revnat", "--name", "api"]);
    assert!(revnat["revnat"].as_array().unwrap().is_empty(), "no socket went to api: {revnat:#}");
    let all = sandbox.balctl_json(&["dump", "all", "--name", "local-dns"]);
    assert_eq!(rows(&all).len(), 1, "{all:#}");
    assert_eq!(all["backends"].as_array().unwrap().len(), 1, "{all:#}");
}

/// Every log line of `sync --watch --log-format json` is a JSON object with
/// the fields a log pipeline reads, stamped in RFC 3339, UTC; in text, each
/// line starts with the same stamp.
pub fn watch_logs_are_json_lines_with_time_level_target_message() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let input = sandbox.scratch("web.toml");
    let service = "[[service]]\nname = \"web\"\naddresses = [\"198.18.0.10\"]\nbackends = [\"192.0.2.2\"]\n\
                   ports = [{ port = 80, target_port = 8080 }]\n";
    std::fs::write(&input, service).unwrap();
    let input = input.to_str().unwrap();
    let started = std::time::SystemTime::now();
    let watcher = Watcher::start_with(&sandbox, &[input], &["-v", "--log-format", "json"]);
    watcher.wait_stderr("watching");
    std::fs::write(input, "[[service]]\nname = 7\n").unwrap();
    watcher.wait_stderr("nothing applied");
    let lines = watcher.stderr_lines();
    assert_eq!(watcher.terminate(), Some(0));
    let mut levels = Vec::new();
    for line in &lines {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let fields: Vec<&str> = entry.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields, ["level", "message", "target", "time"], "{line}");
        let time = entry["time"].as_str().unwrap();
        assert!(time.ends_with('Z'), "UTC: {line}");
        let at = humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {line}"));
        assert!(at >= started - std::time::Duration::from_secs(1), "{line}");
        assert!(entry["target"].as_str().unwrap().starts_with("balctl"), "{line}");
        levels.push(entry["level"].as_str().unwrap().to_owned());
    }
    assert_eq!(levels, ["info", "error"], "{lines:#?}");
    assert!(lines[1].contains("web.toml:2:8: invalid type"), "{lines:#?}");

    let watcher = Watcher::start_with(&sandbox, &[input], &["-v"]);
    let line = watcher.wait_stderr("watching");
    assert_eq!(watcher.terminate(), Some(0));
    let (time, rest) = line.split_once(' ').unwrap();
    humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("no RFC 3339 time ({e}): {line}"));
    assert!(rest.starts_with("INFO  watching"), "{line}");
}

/// bash, with the committed completion script, completes the NAME of
/// `policy get|update|delete` to the policies of the state dir, asking the
/// balctl on the command line.
pub fn bash_completes_policy_names() {
    let sandbox = Sandbox::new();
    sandbox.load();
    for (name, vip) in [("web", "198.18.0.10:80"), ("web2", "198.18.0.11:80"), ("api", "198.18.0.12:80")] {
        sandbox.balctl_ok(&["policy", "add", name, "--vip", vip]);
    }
    let script = format!("{}/completions/balctl.bash", env!("CARGO_MANIFEST_DIR"));
    let complete = |line: &str| {
        // What bash does on TAB: the function `complete -p balctl` names
        // (the compspec of the command's last path component), called with
        // the command, the word being completed and the one before.
        let program = format!(
            "source {script}\n\
             function=$(complete -p balctl | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p')\n\
             COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
             [[ {line:?} == *' ' ]] && COMP_WORDS+=('') && COMP_CWORD=${{#COMP_WORDS[@]}}-1\n\
             \"$function\" \"${{COMP_WORDS[0]}}\" \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let output = std::process::Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &program])
            .env("BALCTL_STATE_DIR", &sandbox.state)
            .env("BALCTL_BPFFS", &sandbox.pins)
            .output()
            .expect("run bash");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let mut words: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        words.sort();
        words
    };
    let balctl = crate::support::balctl();
    assert_eq!(complete(&format!("{balctl} policy get w")), ["web", "web2"]);
    assert_eq!(complete(&format!("{balctl} policy delete ")), ["api", "web", "web2"]);
    assert_eq!(complete(&format!("{balctl} -v policy update a")), ["api"]);
    // The state dir on the command line is the one asked.
    let other = sandbox.scratch("other-state");
    assert!(complete(&format!("{balctl} --state-dir {} policy get w", other.display())).is_empty());
    // Elsewhere clap's completion stays: subcommands, options.
    assert!(complete(&format!("{balctl} policy g")).contains(&"get".to_owned()));
    assert!(complete(&format!("{balctl} policy get web --no-h")).contains(&"--no-headers".to_owned()));
}
