//! One module per subcommand. Each gets the shared `Context` (where the pins
//! and state live, how to print) and its own arguments.

pub mod completions;
pub mod dump;
pub mod load;
pub mod policy;
pub mod status;
pub mod sync;
pub mod trace;
pub mod unload;

use crate::{bpf::pins::PinDir, output::OutputFormat, state::StateDir};

pub struct Context {
    pub pins: PinDir,
    pub state: StateDir,
    pub output: OutputFormat,
    pub verbose: u8,
    pub quiet: bool,
}

impl Context {
    /// A human-readable progress or result line; silenced by `-q` and by
    /// JSON/YAML output, where stdout belongs to the document.
    pub fn say(&self, message: impl std::fmt::Display) {
        if !self.quiet && self.output == OutputFormat::Table {
            println!("{message}");
        }
    }
}
