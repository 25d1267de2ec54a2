//! One module per subcommand. Each gets the shared `Context` (where the pins
//! and state live, how to print) and its own arguments.

pub mod completions;
pub mod dump;
pub mod explain;
pub mod load;
pub mod policy;
pub mod status;
pub mod sync;
pub mod trace;
pub mod unload;

use crate::{
    bpf::pins::PinDir,
    output::{OutputFormat, TableStyle},
    state::StateDir,
};

pub struct Context {
    pub pins: PinDir,
    pub state: StateDir,
    pub output: OutputFormat,
    pub verbose: u8,
    pub quiet: bool,
    /// `--no-headers`: tables without their header row.
    pub no_headers: bool,
}

impl Context {
    /// How listings print their tables (`-o wide`, `--no-headers`).
    pub fn table_style(&self) -> TableStyle {
        self.output.table_style(self.no_headers)
    }

    /// A human-readable progress or result line; silenced by `-q` and by
    /// JSON/YAML output, where stdout belongs to the document.
    pub fn say(&self, message: impl std::fmt::Display) {
        if !self.quiet && self.output.is_table() {
            println!("{message}");
        }
    }
}
