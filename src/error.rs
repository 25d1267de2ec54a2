//! Error kinds that decide the exit code. Everything is an `anyhow::Error`;
//! an `InputError` (or `EmptyInput`) anywhere in the chain means the user's
//! input or usage was wrong (exit 2), a `StatusProblem` is what `balctl
//! status` found wrong with the datapath (exit 3 or 4, for exec probes),
//! anything else is a runtime failure (exit 1).

use std::fmt;

/// Bad input or usage: the message names what was wrong and where.
#[derive(Debug)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// An input of zero bytes (a file, or standard input, named by `label`).
/// `kubectl get ... > file` truncates the file first and writes it when the
/// API server answers, so an empty file is one being written, never "no
/// objects": bad input for a one-shot sync (exit 2, nothing changed), a
/// reason for `sync --watch` to wait for the next change.
#[derive(Debug)]
pub struct EmptyInput {
    pub label: String,
}

impl fmt::Display for EmptyInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is empty: an empty input is taken for one being written (`kubectl get ... > file` \
             empties the file first) or whose writer failed, never for no objects; to sync no \
             objects from it, write a comment (`# none`) or `items: []`",
            self.label
        )
    }
}

impl std::error::Error for EmptyInput {}

/// What `balctl status` found, when it is not "loaded and in sync": its
/// own exit code, so that `status` can be an exec probe and a script can
/// tell a node to set up from one to repair. Reported after the status
/// itself is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusProblem {
    /// No hook is attached: `balctl load` attaches them.
    NotLoaded,
    /// Loaded, but not as applied: map entries differ from the applied
    /// state, a hook is missing, or a change was interrupted during its map
    /// writes. `balctl load` (or the next change) repairs it.
    Drift,
}

impl StatusProblem {
    pub const fn exit_code(self) -> i32 {
        match self {
            Self::NotLoaded => EXIT_NOT_LOADED,
            Self::Drift => EXIT_DRIFT,
        }
    }
}

impl fmt::Display for StatusProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotLoaded => "balctl is not loaded; `balctl load` attaches it",
            Self::Drift => "the datapath differs from the applied state; `balctl load` repairs it",
        })
    }
}

impl std::error::Error for StatusProblem {}

/// Builds an input error: `bail!(input!("..."))` reads like any other error.
#[macro_export]
macro_rules! input {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::error::InputError(format!($($arg)*)))
    };
}

pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_INPUT: i32 = 2;
/// `status`: not loaded (as LSB init scripts' `status` says "not running").
pub const EXIT_NOT_LOADED: i32 = 3;
/// `status`: loaded, but drifted from the applied state.
pub const EXIT_DRIFT: i32 = 4;

pub fn exit_code(err: &anyhow::Error) -> i32 {
    let input =
        |cause: &(dyn std::error::Error + 'static)| cause.is::<InputError>() || cause.is::<EmptyInput>();
    if err.chain().any(input) {
        return EXIT_INPUT;
    }
    err.chain()
        .find_map(|cause| cause.downcast_ref::<StatusProblem>())
        .map_or(EXIT_RUNTIME, |problem| problem.exit_code())
}

/// Prints `err` and its causes on stderr, the way balctl reports every error:
/// each line of a message shown as `Line` shows it, so that no input can
/// reach the terminal raw, whoever's message quotes it.
pub fn report(err: &anyhow::Error) {
    for (index, cause) in err.chain().enumerate() {
        let prefix = if index == 0 { "error: " } else { "  caused by: " };
        let message = cause.to_string();
        for (number, line) in message.split('\n').enumerate() {
            let indent = if number == 0 { prefix } else { "" };
            eprintln!("{indent}{}", Line(line));
        }
    }
}

/// Logs a failure that a long-running command lives through (a sync of
/// `sync --watch`): one error line, its causes joined with `: ` and
/// escaped as `report` escapes them, then what happens `next`. As a log
/// line it has a time stamp, and is JSON with `--log-format json`.
pub fn log_failure(err: &anyhow::Error, next: &str) {
    log::error!("{}; {next}", Line(&format!("{err:#}")));
}

/// A value from an input as an error message quotes it: control characters
/// escaped, so that a crafted file cannot drive the operator's terminal
/// (ESC sequences) or cut the message short (NUL), and a long value
/// shortened to its start and its size, so that a 10 MB name is not echoed.
pub fn excerpt(value: &str) -> Excerpt<'_> {
    Excerpt(value)
}

pub struct Excerpt<'a>(&'a str);

impl Excerpt<'_> {
    /// Values of more characters than this are shortened...
    const LONG: usize = 100;
    /// ...to this many.
    const KEPT: usize = 60;
}

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0;
        match value.char_indices().nth(Self::LONG) {
            None => write_escaped(f, value),
            Some(_) => {
                let kept = value.char_indices().nth(Self::KEPT).map_or(value.len(), |(at, _)| at);
                write_escaped(f, &value[..kept])?;
                write!(f, "... ({} bytes)", value.len())
            }
        }
    }
}

/// One line of an error message as `report` prints it: control characters
/// escaped, and one longer than `MAX` bytes cut in its middle (messages of
/// parsers quote what they found, at any length).
struct Line<'a>(&'a str);

impl Line<'_> {
    const MAX: usize = 1024;
    /// Bytes kept at either end of a long line (about: cut at characters).
    const END: usize = 400;
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = self.0;
        if line.len() <= Self::MAX {
            return write_escaped(f, line);
        }
        let head = line.floor_char_boundary(Self::END);
        let tail = line.ceil_char_boundary(line.len() - Self::END);
        write_escaped(f, &line[..head])?;
        write!(f, "... ({} bytes left out) ...", tail - head)?;
        write_escaped(f, &line[tail..])
    }
}

/// `text` with every control character (C0, DEL, C1) escaped.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(char::is_control) {
        f.write_str(&rest[..at])?;
        let control = rest[at..].chars().next().unwrap_or_default();
        match control {
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c.is_ascii() => write!(f, "\\x{:02x}", u32::from(c))?,
            c => write!(f, "\\u{{{:x}}}", u32::from(c))?,
        }
        rest = &rest[at + control.len_utf8()..];
    }
    f.write_str(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_error_has_its_exit_code() {
        assert_eq!(exit_code(&anyhow::anyhow!("runtime")), EXIT_RUNTIME);
        assert_eq!(exit_code(&input!("bad").context("reading f")), EXIT_INPUT);
        assert_eq!(exit_code(&anyhow::Error::new(StatusProblem::NotLoaded)), 3);
        assert_eq!(exit_code(&anyhow::Error::new(StatusProblem::Drift).context("status")), 4);
    }

    #[test]
    fn values_are_escaped_and_long_ones_shortened() {
        assert_eq!(excerpt("web").to_string(), "web");
        assert_eq!(excerpt("a\u{1b}[31mb\0\n\u{7f}\u{9b}é").to_string(), "a\\x1b[31mb\\x00\\n\\x7f\\u{9b}é");
        let long = "é".repeat(5_000_000);
        assert_eq!(excerpt(&long).to_string(), format!("{}... (10000000 bytes)", "é".repeat(60)));
        let hundred = "x".repeat(100);
        assert_eq!(excerpt(&hundred).to_string(), hundred);
    }

    #[test]
    fn long_lines_are_cut_in_the_middle() {
        let line = format!("f:1:1: unknown field `{}`, expected `name`", "k".repeat(10_000));
        let shown = Line(&line).to_string();
        assert!(shown.len() < 1000, "{shown}");
        assert!(
            shown.starts_with("f:1:1: unknown field `kkk") && shown.ends_with("kkk`, expected `name`"),
            "{shown}"
        );
        assert!(shown.contains("bytes left out"), "{shown}");
        assert_eq!(Line("a\u{1b}b").to_string(), "a\\x1bb");
    }
}
