//! What the bench prints and writes: the machine, a table per size as it
//! goes, then summary tables in Markdown (for bench/RESULTS.md), the
//! issue's targets with their verdicts, bench/compare-results.json and the
//! chart.

use std::{fmt::Write as _, fs, path::Path, process::Command, time::Duration};

use serde_json::{Map, Value, json};

use crate::{
    SizeResult,
    datapath::{Measured, PROTOCOLS},
    programming::Programmed,
    world::Mechanism,
};

const BENCH_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench");
/// The issues' targets: issue 7's (rates against direct, iptables and
/// nftables; programming at 10,000 services), which issue 20 holds on the
/// node topology with balctl's `load` counted and UDP's rate too.
const MIN_BALCTL_VS_DIRECT: f64 = 0.97;
const MIN_BALCTL_VS_IPTABLES: f64 = 5.0;
const TARGET_SIZE: u32 = 10_000;

/// Facts about the machine and the tools, for the record.
pub fn machine() -> Value {
    let first_line = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_owned())
            .unwrap_or_else(|e| format!("{program}: {e}"))
    };
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    json!({
        "date": first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "commit": first_line("git", &["-C", env!("CARGO_MANIFEST_DIR"), "log", "-1", "--format=%h %s"]),
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        "cpu": cpu,
        "memory": read("/proc/meminfo").lines().next().unwrap_or("").split_whitespace().skip(1).collect::<Vec<_>>().join(" "),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "iptables_legacy": first_line("iptables-legacy", &["--version"]),
        "iptables_nft": first_line("iptables-nft", &["--version"]),
        "nft": first_line("nft", &["--version"]),
        "load_average_at_start": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

pub fn describe_machine(machine: &Value) -> String {
    let field =
        |key: &str| machine[key].as_str().map(str::to_owned).unwrap_or_else(|| machine[key].to_string());
    format!(
        "{} on {} CPUs ({}), {}, kernel {}; {}, {}, {}; load average {}; commit {}",
        field("date"),
        field("cpus"),
        field("cpu"),
        field("memory"),
        field("kernel"),
        field("iptables_legacy"),
        field("iptables_nft"),
        field("nft"),
        field("load_average_at_start"),
        field("commit"),
    )
}

pub fn print_programming_header() {
    println!("{:<15} {:>10} {:>12} {:>11}  command", "programming", "seconds", "peak RSS MB", "kernel MB");
}

pub fn print_programmed(mechanism: Mechanism, p: &Programmed) {
    let seconds = if p.finished { format!("{:.3}", p.seconds) } else { format!("> {:.0}", p.seconds) };
    println!(
        "{:<15} {seconds:>10} {:>12.1} {:>11.1}  {}",
        mechanism.name(),
        p.peak_rss_mb,
        p.kernel_mb,
        p.command
    );
    if !p.parts.is_empty() {
        println!("{:<15} {}", "", parts(p));
    }
    if p.detail.as_object().is_some_and(|d| !d.is_empty()) {
        println!("{:<15} {}", "", p.detail);
    }
}

pub fn print_datapath(measured: &[Measured]) {
    let direct = &measured[0];
    println!(
        "{:<15} {:>9} {:>6} {:>7} {:>7} {:>9} {:>6} {:>7} {:>7} {:>9} {:>6} {:>7} {:>7}  failures",
        "client",
        "TCP c/s",
        "ratio",
        "p50 µs",
        "p99 µs",
        "UDP r/s",
        "ratio",
        "p50 µs",
        "p99 µs",
        "other c/s",
        "ratio",
        "p50 µs",
        "p99 µs"
    );
    for m in measured {
        let mut line = format!("{:<15}", m.mechanism.name());
        for protocol in PROTOCOLS {
            let (p50, p99) = m.p50_p99(protocol);
            let _ = write!(
                line,
                " {:>9.0} {:>6.3} {p50:>7.1} {p99:>7.1}",
                m.median_rate(protocol),
                m.ratio_to(direct, protocol)
            );
        }
        let failures = PROTOCOLS.map(|protocol| m.failures(protocol));
        println!(
            "{line}  {}",
            if failures.iter().all(String::is_empty) { "0".to_owned() } else { failures.join(" / ") }
        );
    }
}

/// Prints the summary and the verdicts, writes the JSON and the chart.
pub fn finish(machine: &Value, results: &[SizeResult], took: Duration) {
    println!("== Summary (medians of per-round rates and of per-round ratios to direct)\n");
    print_summary_tables(results);
    let targets = targets(results);
    println!("\n== Targets");
    for target in &targets {
        let verdict = match target["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        println!(
            "{}: {} ({verdict})",
            target["target"].as_str().unwrap_or(""),
            target["value"].as_str().unwrap_or("")
        );
    }
    let document = json!({
        "command": "sudo cargo bench --bench compare",
        "environment": {
            "COMPARE_SIZES": std::env::var("COMPARE_SIZES").ok(),
            "COMPARE_MECHANISMS": std::env::var("COMPARE_MECHANISMS").ok(),
        },
        "machine": machine,
        "load_average_at_end": fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "seconds": took.as_secs_f64().round(),
        "sizes": results.iter().map(size_json).collect::<Vec<_>>(),
        "targets": targets,
    });
    let json_path = Path::new(BENCH_DIR).join("compare-results.json");
    let text = serde_json::to_string_pretty(&document).expect("serialise the results");
    fs::write(&json_path, text + "\n").expect("write bench/compare-results.json");
    println!("\nThe run took {:.0} s. Raw results: {}", took.as_secs_f64(), json_path.display());
    plot(&json_path);
}

/// What a programming time adds up, e.g. `load 0.281 + sync 0.702`.
fn parts(p: &Programmed) -> String {
    p.parts.iter().map(|(name, seconds)| format!("{name} {seconds:.3}")).collect::<Vec<_>>().join(" + ")
}

fn print_summary_tables(results: &[SizeResult]) {
    println!(
        "| services | client | TCP conn/s | vs direct | p50 µs | p99 µs | UDP req/s | vs direct | p50 µs | p99 µs \
         | other TCP conn/s | vs direct | p50 µs | p99 µs |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for result in results {
        let direct = &result.datapath[0];
        for m in &result.datapath {
            let mut row = format!("| {} | {} |", result.size, m.mechanism.name());
            for protocol in PROTOCOLS {
                let (p50, p99) = m.p50_p99(protocol);
                let _ = write!(
                    row,
                    " {:.0} | {:.3} | {p50:.1} | {p99:.1} |",
                    m.median_rate(protocol),
                    m.ratio_to(direct, protocol)
                );
            }
            println!("{row}");
        }
    }
    println!("\n| services | program | seconds | of which | peak RSS MB | kernel MB |");
    println!("|---:|---|---:|---|---:|---:|");
    for result in results {
        for (mechanism, p) in &result.programming {
            let seconds = if p.finished {
                format!("{:.3}", p.seconds)
            } else {
                format!("> {:.0} (stopped)", p.seconds)
            };
            println!(
                "| {} | {} | {seconds} | {} | {:.1} | {:.1} |",
                result.size,
                mechanism.name(),
                parts(p),
                p.peak_rss_mb,
                p.kernel_mb
            );
        }
    }
}

fn measured(result: &SizeResult, mechanism: Mechanism) -> Option<&Measured> {
    result.datapath.iter().find(|m| m.mechanism == mechanism)
}

/// None when the run left `mechanism` out (`COMPARE_MECHANISMS`).
fn programmed(result: &SizeResult, mechanism: Mechanism) -> Option<&Programmed> {
    result.programming.iter().find(|(m, _)| *m == mechanism).map(|(_, programmed)| programmed)
}

/// The targets, each with the value measured and whether it is met
/// (null when its size was not run or a mechanism could not be measured).
fn targets(results: &[SizeResult]) -> Vec<Value> {
    let target = |text: String, value: String, met: Option<bool>| json!({ "target": text, "value": value, "met": met });
    let mut targets = Vec::new();
    for (protocol, rate) in [("tcp", "TCP connection rate"), ("udp", "UDP request/response rate")] {
        for result in results {
            let balctl = measured(result, Mechanism::Balctl);
            let ratio = balctl.map(|b| b.ratio_to(&result.datapath[0], protocol));
            targets.push(target(
                format!("{} services: balctl {rate} >= {MIN_BALCTL_VS_DIRECT} x direct", result.size),
                ratio.map_or("-".to_owned(), |r| format!("{r:.3}")),
                ratio.map(|r| r >= MIN_BALCTL_VS_DIRECT),
            ));
        }
    }
    let at_target = results.iter().find(|r| r.size == TARGET_SIZE);
    let versus = |other: Mechanism| {
        at_target.and_then(|r| Some(measured(r, Mechanism::Balctl)?.ratio_to(measured(r, other)?, "tcp")))
    };
    for iptables in [Mechanism::IptablesLegacy, Mechanism::IptablesNft] {
        let vs_iptables = versus(iptables);
        targets.push(target(
            format!(
                "{TARGET_SIZE} services: balctl TCP connection rate >= {MIN_BALCTL_VS_IPTABLES} x {}",
                iptables.name()
            ),
            vs_iptables.map_or("-".to_owned(), |r| format!("{r:.2} x")),
            vs_iptables.map(|r| r >= MIN_BALCTL_VS_IPTABLES),
        ));
    }
    let vs_nftables = versus(Mechanism::Nftables);
    targets.push(target(
        format!("{TARGET_SIZE} services: balctl TCP connection rate above nftables"),
        vs_nftables.map_or("-".to_owned(), |r| format!("{r:.3} x")),
        vs_nftables.map(|r| r > 1.0),
    ));
    for other in [Mechanism::IptablesLegacy, Mechanism::IptablesNft, Mechanism::Nftables] {
        let seconds =
            at_target.and_then(|r| Some((programmed(r, Mechanism::Balctl)?, programmed(r, other)?)));
        targets.push(target(
            format!(
                "programming {TARGET_SIZE} services: balctl load + sync faster than {}",
                programmed_name(other)
            ),
            seconds.map_or("-".to_owned(), |(b, o)| {
                format!("{:.3} s vs {}{:.3} s", b.seconds, if o.finished { "" } else { "> " }, o.seconds)
            }),
            // A stopped command took longer than its limit, so longer than balctl's.
            seconds.map(|(b, o)| b.seconds < o.seconds || !o.finished),
        ));
    }
    targets
}

fn programmed_name(mechanism: Mechanism) -> &'static str {
    match mechanism {
        Mechanism::IptablesLegacy => "iptables-legacy-restore",
        Mechanism::IptablesNft => "iptables-nft-restore",
        Mechanism::Nftables => "nft -f",
        _ => "balctl load + sync",
    }
}

fn size_json(result: &SizeResult) -> Value {
    let direct = &result.datapath[0];
    let mut programming = Map::new();
    for (mechanism, p) in &result.programming {
        programming.insert(
            mechanism.name().to_owned(),
            json!({
                "command": p.command,
                "seconds": p.seconds,
                "finished": p.finished,
                "peak_rss_mb": p.peak_rss_mb,
                "kernel_mb": p.kernel_mb,
                "parts": p.parts.iter().map(|&(name, seconds)| (name.to_owned(), json!(seconds))).collect::<Map<_, _>>(),
                "detail": p.detail,
            }),
        );
    }
    let mut datapath = Map::new();
    for m in &result.datapath {
        datapath.insert(
            m.mechanism.name().to_owned(),
            Value::Object(
                PROTOCOLS
                    .iter()
                    .map(|&protocol| (protocol.to_owned(), m.to_json(direct, protocol)))
                    .collect(),
            ),
        );
    }
    json!({
        "services": result.size,
        "tcp_vip": result.tcp_vip,
        "udp_vip": result.udp_vip,
        "programming": programming,
        "datapath": datapath,
    })
}

/// Draws the chart with bench/plot.py, or says how once matplotlib is there.
fn plot(json_path: &Path) {
    let script = Path::new(BENCH_DIR).join("plot.py");
    let png = Path::new(BENCH_DIR).join("compare.png");
    let python = std::env::var("COMPARE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let drawn = Command::new(&python).arg(&script).arg(json_path).arg(&png).status();
    match drawn {
        Ok(status) if status.success() => println!("Chart: {}", png.display()),
        _ => println!(
            "No chart drawn: run `{python} {} {} {}` where matplotlib is installed (COMPARE_PYTHON picks the python)",
            script.display(),
            json_path.display(),
            png.display()
        ),
    }
}
