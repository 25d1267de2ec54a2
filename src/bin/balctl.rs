//! Entry point: parse, set up logging, dispatch, turn the outcome into an
//! exit code (0 success, 1 runtime failure, 2 usage or input error).

use std::{io::Write as _, process::ExitCode, time::SystemTime};

use balctl::{
    cli::{Cli, LogFormat},
    error::{exit_code, report},
};
use clap::Parser as _;

/// mimalloc, because items are parsed on several threads
/// (src/inputs/kube/parallel.rs): glibc's arena per thread kept what a
/// parse thread freed where the main thread could not reuse it (a
/// 100,000-service sync peaked at 362 MB instead of 286), and one arena
/// for all made the threads wait on its lock; musl's allocator (the image)
/// is slower still. bench/RESULTS.md, "YAML parser".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    /// mimalloc's `mi_option_set` (in the library mimalloc links), which
    /// its Rust crate only declares behind a feature we need nothing else of.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc.h (v3, what libmimalloc-sys builds).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, which turns `balctl dump | head` into an error.
    // Output is only written after all map changes, so dying quietly on a
    // closed pipe, like other Unix tools, cannot cut a change short.
    // SAFETY: called before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // Freed pages go back to the system at once rather than 10 ms later:
    // a full sync frees its parse temporaries as fast as it makes objects,
    // and with the delay the 100,000-service sync peaked at 315 MB, over
    // its 300 MB limit; at once, 281 MB.
    // SAFETY: sets an allocator option; the value is one mimalloc accepts.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    // No transparent huge pages: with memory given back at once, the
    // kernel zeroed a whole 2 MiB page every time mimalloc touched a
    // region again, two thirds of reading the state of 10,000 services.
    // Without them a one-shot change at that size takes a fifth less, and
    // a full sync of 100,000 a little less too (bench/RESULTS.md). A
    // failure (a kernel without the flag) leaves them on.
    // SAFETY: prctl with an integer flag; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
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
