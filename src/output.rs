//! How commands print: tables for people (`-o wide` with more columns),
//! JSON, YAML or a JSONPath template of the JSON for scripts, as kubectl's
//! `-o` does.

mod jsonpath;

use std::io::{self, IsTerminal as _, Write as _};

use anyhow::Result;
use clap::builder::{PossibleValue, TypedValueParser};
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

pub use self::jsonpath::{Template, TemplateError};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum OutputFormat {
    #[default]
    Table,
    /// The table with the columns too wide for the default.
    Wide,
    Json,
    Yaml,
    /// `jsonpath=TEMPLATE`: the template filled in from the JSON document.
    /// Parsed once per process and kept for its life, so that the format
    /// stays `Copy` like the other options every command reads.
    JsonPath(&'static Template),
}

impl OutputFormat {
    /// Whether the command prints its table (for people) rather than a document.
    pub const fn is_table(self) -> bool {
        matches!(self, Self::Table | Self::Wide)
    }

    /// How tables print under this format and `--no-headers`.
    pub fn table_style(self, no_headers: bool) -> TableStyle {
        TableStyle { wide: self == Self::Wide, headers: !no_headers }
    }
}

/// Parses `-o`: `table`, `wide`, `json`, `yaml` or `jsonpath=TEMPLATE`
/// (a bad template is a usage error naming its position), and lists
/// them for `--help` and completions.
#[derive(Clone, Copy, Debug)]
pub struct OutputFormatParser;

impl TypedValueParser for OutputFormatParser {
    type Value = OutputFormat;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<OutputFormat, clap::Error> {
        let invalid = |message: String| {
            let arg = arg.map_or_else(|| "--output".to_owned(), ToString::to_string);
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for {arg}: {message}\n"),
            )
            .with_cmd(cmd)
        };
        let value = value.to_str().ok_or_else(|| invalid("not UTF-8".into()))?;
        match value {
            "table" => Ok(OutputFormat::Table),
            "wide" => Ok(OutputFormat::Wide),
            "json" => Ok(OutputFormat::Json),
            "yaml" => Ok(OutputFormat::Yaml),
            _ => match value.strip_prefix("jsonpath=") {
                Some(template) => {
                    let template = Template::parse(template).map_err(|e| invalid(e.to_string()))?;
                    Ok(OutputFormat::JsonPath(Box::leak(Box::new(template))))
                }
                None => Err(invalid(format!(
                    "`{value}` is not an output format (table, wide, json, yaml, jsonpath=TEMPLATE)"
                ))),
            },
        }
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            [
                ("table", "A table for people"),
                ("wide", "The table with more columns"),
                ("json", "The JSON document"),
                ("yaml", "The same document as YAML"),
                (
                    "jsonpath=",
                    "kubectl's JSONPath template of the JSON document, e.g. jsonpath='{.services[*].name}'",
                ),
            ]
            .into_iter()
            .map(|(name, help)| PossibleValue::new(name).help(help)),
        ))
    }
}

/// Prints `value` as pretty JSON, YAML or a JSONPath template of its JSON.
/// Callers handle tables themselves.
pub fn print_structured<T: Serialize>(format: OutputFormat, value: &T) -> Result<()> {
    let mut out = io::stdout().lock();
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, value)?;
            writeln!(out)?;
        }
        OutputFormat::Yaml => serde_saphyr::to_io_writer(&mut out, value)?,
        // kubectl prints a template's output as it is, with no newline added.
        OutputFormat::JsonPath(template) => {
            out.write_all(template.render(&serde_json::to_value(value)?).as_bytes())?
        }
        OutputFormat::Table | OutputFormat::Wide => unreachable!("tables are printed by each command"),
    }
    Ok(())
}

/// How a listing's table prints: `-o wide` adds columns, `--no-headers`
/// leaves out the header row (for `awk` and `while read`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TableStyle {
    pub wide: bool,
    pub headers: bool,
}

/// A column of a listing: shown always, or with `-o wide` only.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub title: &'static str,
    pub wide_only: bool,
}

/// A column every table shows.
pub const fn column(title: &'static str) -> Column {
    Column { title, wide_only: false }
}

/// A column only `-o wide` shows.
pub const fn wide(title: &'static str) -> Column {
    Column { title, wide_only: true }
}

/// A table of rows in balctl's style whose rows are given with every
/// column: those `-o wide` adds are left out unless it was asked for.
pub struct Listing {
    table: Table,
    shown: Vec<bool>,
}

impl Listing {
    pub fn new(style: TableStyle, columns: &[Column]) -> Self {
        let shown: Vec<bool> = columns.iter().map(|c| style.wide || !c.wide_only).collect();
        let mut table = styled_table();
        if style.headers {
            table.set_header(columns.iter().zip(&shown).filter(|(_, shown)| **shown).map(|(c, _)| c.title));
        }
        Self { table, shown }
    }

    /// Adds a row: one cell per column given to `new`, in their order.
    pub fn add_row(&mut self, cells: impl IntoIterator<Item = String>) {
        let cells = cells.into_iter().zip(&self.shown).filter(|(_, shown)| **shown).map(|(cell, _)| cell);
        self.table.add_row(cells.collect::<Vec<_>>());
    }

    /// Prints the table on stdout; nothing at all when it has neither a
    /// header nor a row (`--no-headers` of nothing), so that a `while read`
    /// loop over it sees no line.
    pub fn print(&self) {
        if self.table.row_count() > 0 || self.table.header().is_some() {
            println!("{}", self.table);
        }
    }
}

/// A table with a header row in balctl's style: light borders on a
/// terminal, plain columns when piped so `grep`/`awk` stay easy.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut table = styled_table();
    table.set_header(header);
    table
}

fn styled_table() -> Table {
    let mut table = Table::new();
    if io::stdout().is_terminal() {
        table.load_preset(presets::UTF8_HORIZONTAL_ONLY);
    } else {
        table.load_preset(presets::NOTHING);
    }
    table.set_content_arrangement(ContentArrangement::Dynamic);
    table
}

/// `1 policy`, `2 policies`: counts read as sentences.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
