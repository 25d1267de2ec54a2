//! Error kinds that decide the exit code. Everything is an `anyhow::Error`;
//! an `InputError` (or `EmptyInput`) anywhere in the chain means the user's
//! input or usage was wrong (exit 2), anything else is a runtime failure
//! (exit 1).

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

/// Builds an input error: `bail!(input!("..."))` reads like any other error.
#[macro_export]
macro_rules! input {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::error::InputError(format!($($arg)*)))
    };
}

pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_INPUT: i32 = 2;

pub fn exit_code(err: &anyhow::Error) -> i32 {
    let input =
        |cause: &(dyn std::error::Error + 'static)| cause.is::<InputError>() || cause.is::<EmptyInput>();
    if err.chain().any(input) { EXIT_INPUT } else { EXIT_RUNTIME }
}

/// Prints `err` and its causes on stderr, the way balctl reports every error.
pub fn report(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
