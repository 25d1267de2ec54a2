//! Where in which input something was written, as `file:line:column`.

use std::{fmt, ops::Range};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The 1-based line and column of byte `offset` in `text`.
    pub fn at(file: &str, text: &str, offset: usize) -> Self {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(before.len(), |newline| before.len() - newline - 1) + 1;
        Self { file: file.to_owned(), line, column }
    }

    pub fn of_span(file: &str, text: &str, span: Option<Range<usize>>) -> Self {
        Self::at(file, text, span.map_or(0, |s| s.start))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
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
    }
}
