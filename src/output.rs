//! How commands print: tables for people, JSON or YAML for scripts.

use std::io::{self, IsTerminal as _, Write as _};

use anyhow::Result;
use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Prints `value` as pretty JSON or YAML. Callers handle `Table` themselves.
pub fn print_structured<T: Serialize>(format: OutputFormat, value: &T) -> Result<()> {
    let mut out = io::stdout().lock();
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, value)?;
            writeln!(out)?;
        }
        OutputFormat::Yaml => serde_saphyr::to_io_writer(&mut out, value)?,
        OutputFormat::Table => unreachable!("tables are printed by each command"),
    }
    Ok(())
}

/// A table with a header row in balctl's style: light borders on a
/// terminal, plain columns when piped so `grep`/`awk` stay easy.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    if io::stdout().is_terminal() {
        table.load_preset(presets::UTF8_HORIZONTAL_ONLY);
    } else {
        table.load_preset(presets::NOTHING);
    }
    table.set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(header);
    table
}

/// `1 policy`, `2 policies`: counts read as sentences.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
