//! Entry point: parse, set up logging, dispatch, turn the outcome into an
//! exit code (0 success, 1 runtime failure, 2 usage or input error).

use std::{io::Write as _, process::ExitCode, time::SystemTime};

use balctl::{
    cli::{Cli, LogFormat},
    error::{exit_code, report},
};
use clap::Parser as _;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, which turns `balctl dump | head` into an error.
    // Output is only written after all map changes, so dying quietly on a
    // closed pipe, like other Unix tools, cannot cut a change short.
    // SAFETY: called before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    balctl::inputs::one_malloc_arena();
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Warn,
        (false, 1) => log::LevelFilter::Info,
        (false, _) => log::LevelFilter::Debug,
    };
    let format = cli.log_format;
    env_logger::Builder::new()
        .filter_level(level)
        .format(move |out, record| write_log_line(out, format, record))
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

/// One log line on stderr, stamped with the time in RFC 3339, UTC, to the
/// millisecond: `TIME LEVEL message` for people, or a JSON object per line
/// (`time`, `level`, `target`, `message`) for a log pipeline.
fn write_log_line(
    out: &mut env_logger::fmt::Formatter,
    format: LogFormat,
    record: &log::Record,
) -> std::io::Result<()> {
    let time = humantime::format_rfc3339_millis(SystemTime::now());
    match format {
        LogFormat::Text => writeln!(out, "{time} {:<5} {}", record.level(), record.args()),
        LogFormat::Json => {
            let line = serde_json::json!({
                "time": time.to_string(),
                "level": record.level().as_str().to_ascii_lowercase(),
                "target": record.target(),
                "message": record.args().to_string(),
            });
            writeln!(out, "{line}")
        }
    }
}
