//! The progress bar of large plans: drawn on a terminal, absent when stderr
//! is a pipe.

use std::{
    fs,
    process::{Command, Stdio},
};

use balctl::progress::BAR_THRESHOLD;

use crate::support::{Sandbox, balctl};

/// One service with `count` frontend addresses and two backends: five map
/// writes per frontend (master entry, two slots, two memberships).
fn many_frontends(count: u32) -> String {
    let addresses: Vec<String> =
        (0..count).map(|i| format!("\"198.18.{}.{}\"", i / 250, i % 250 + 1)).collect();
    format!(
        "[[service]]\nname = \"many\"\naddresses = [{}]\nbackends = [\"192.0.2.2\", \"192.0.2.3\"]\n\
         ports = [{{ port = 80 }}]\n",
        addresses.join(", ")
    )
}

/// A sync above the threshold shows the bar on a pseudo-terminal
/// (util-linux `script`); the next one (removing it all, as many writes)
/// with stderr on a pipe prints nothing but its result.
pub fn large_plans_show_a_bar_on_a_terminal_only() {
    let sandbox = Sandbox::new();
    sandbox.load();
    let file = sandbox.scratch("many.toml");
    let file_arg = file.display().to_string();
    let frontends = u32::try_from(BAR_THRESHOLD / 5 + 1).unwrap();
    fs::write(&file, many_frontends(frontends)).unwrap();

    let output = Command::new("script")
        .args(["--quiet", "--return", "--command", &format!("{} sync -f {file_arg}", balctl()), "/dev/null"])
        .env("BALCTL_BPFFS", &sandbox.pins)
        .env("BALCTL_STATE_DIR", &sandbox.state)
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    let writes = frontends as usize * 5 + 2;
    assert!(shown.contains("writing maps"), "no progress bar on the terminal: {shown}");
    assert!(shown.contains(&format!("/{writes}")), "the bar counts the plan's writes: {shown}");
    assert!(shown.contains(&format!("({writes} map writes)")), "{shown}");

    fs::write(&file, "# no services\n").unwrap();
    let output = sandbox.balctl(&["sync", "-f", &file_arg, "-o", "json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["map_writes"], writes, "{report}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "", "nothing on stderr when it is a pipe");
}
