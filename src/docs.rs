//! Shell completions and man pages, generated from the clap definition.
//! The copies committed under completions/ and man/ are checked against
//! these by the test suite (`BALCTL_BLESS=1` rewrites them).

use std::path::PathBuf;

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// clap's completion script for `shell`, and for bash and fish the
/// completion of policy names: clap's scripts only know the values the
/// definition lists, and a policy's name is in the state dir.
pub fn completion(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "balctl", &mut out);
    match shell {
        Shell::Bash => out.extend_from_slice(include_bytes!("completions/policy-names.bash")),
        Shell::Fish => out.extend_from_slice(include_bytes!("completions/policy-names.fish")),
        _ => {}
    }
    out
}

/// Every generated file, keyed by its path relative to the repository root.
pub fn generated_files() -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let name = match shell {
            Shell::Zsh => "_balctl".to_owned(),
            other => format!("balctl.{other}"),
        };
        files.push((PathBuf::from("completions").join(name), completion(shell)));
    }
    let mut command = Cli::command();
    command.build();
    man_pages(&command, "balctl", &mut files)?;
    Ok(files)
}

/// One page per command and subcommand: balctl.1, balctl-policy-add.1, ...
fn man_pages(
    command: &clap::Command,
    name: &str,
    files: &mut Vec<(PathBuf, Vec<u8>)>,
) -> std::io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone().name(name.to_owned())).render(&mut page)?;
    files.push((PathBuf::from("man").join(format!("{name}.1")), page));
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        man_pages(sub, &format!("{name}-{}", sub.get_name()), files)?;
    }
    Ok(())
}
