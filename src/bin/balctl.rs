//! Entry point: parse, set up logging, dispatch, turn the outcome into an
//! exit code (0 success, 1 runtime failure, 2 usage or input error).

use std::process::ExitCode;

use balctl::{
    cli::Cli,
    error::{exit_code, report},
};
use clap::Parser as _;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, which turns `balctl dump | head` into an error.
    // Output is only written after all map changes, so dying quietly on a
    // closed pipe, like other Unix tools, cannot cut a change short.
    // SAFETY: called before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Warn,
        (false, 1) => log::LevelFilter::Info,
        (false, _) => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp(None)
        .format_target(false)
        .parse_env("BALCTL_LOG")
        .init();
    match balctl::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::from(exit_code(&err) as u8)
        }
    }
}
