//! Error kinds that decide the exit code. Everything is an `anyhow::Error`;
//! an `InputError` anywhere in the chain means the user's input or usage was
//! wrong (exit 2), anything else is a runtime failure (exit 1).

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
    if err.chain().any(|cause| cause.is::<InputError>()) { EXIT_INPUT } else { EXIT_RUNTIME }
}

/// Prints `err` and its causes on stderr, the way balctl reports every error.
pub fn report(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
