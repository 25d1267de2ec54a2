//! Where in which input something was written, as `file:line:column`.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The 1-based line and column (in bytes) of byte `offset` in `text`.
    /// Scans the text up to `offset`: for one error; a text with many
    /// things to locate has a `LineIndex`.
    pub fn at(file: &str, text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        LineIndex::new(&text.as_bytes()[..offset]).locate(file, offset)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// The offsets at which the lines of a text start, found in one pass, so
/// that locating each of many offsets is a binary search: counting lines
/// from the start for every entry made a big file quadratic to read.
pub struct LineIndex {
    /// Byte offsets of the second line on; the first starts at 0.
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &[u8]) -> Self {
        Self { starts: memchr::memchr_iter(b'\n', text).map(|newline| newline + 1).collect() }
    }

    /// Where byte `offset` of the text is, in `file`.
    pub fn locate(&self, file: &str, offset: usize) -> Location {
        let before = self.starts.partition_point(|&start| start <= offset);
        let line_start = before.checked_sub(1).map_or(0, |i| self.starts[i]);
        Location { file: file.to_owned(), line: before + 1, column: offset - line_start + 1 }
    }
}

/// A value and where it was defined.
#[derive(Clone, Debug)]
pub struct Located<T> {
    pub value: T,
    pub location: Location,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(Location::at("f", text, 0).to_string(), "f:1:1");
        assert_eq!(Location::at("f", text, 6).to_string(), "f:2:1");
        assert_eq!(Location::at("f", text, 11).to_string(), "f:2:6");
        assert_eq!(Location::at("f", text, 99).to_string(), "f:3:1");
        let index = LineIndex::new(text.as_bytes());
        for offset in 0..=text.len() {
            assert_eq!(index.locate("f", offset), Location::at("f", text, offset), "{offset}");
        }
        assert_eq!(LineIndex::new(b"").locate("f", 0).to_string(), "f:1:1");
    }
}
