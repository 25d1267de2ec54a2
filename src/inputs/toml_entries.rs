//! Splitting a TOML state file into its entries, so that each is parsed on
//! its own: the TOML parser holds a file's tokens, events and tree at once,
//! about 50 times the text (a 200 MB file peaked at 9.77 GB), where an
//! entry at a time holds little more than the objects read so far.
//!
//! An entry starts at a `[[service]]`, `[[local_redirect_policy]]` or
//! `[[balancing_policy]]` header at the start of a line, outside any value
//! (the lexer sees strings, comments and multi-line arrays for what they
//! are), and runs up to the next; its sub-tables (`[[service.ports]]`) go
//! with it. What comes before the first is an entry of its own (`None`).

use std::ops::Range;

use toml_parser::{Source, lexer::TokenKind};

/// The tables whose headers start an entry.
pub const TABLES: [&str; 3] = ["service", "local_redirect_policy", "balancing_policy"];

/// One entry: its bytes in the file, and the table its header names.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub range: Range<usize>,
    pub table: Option<&'static str>,
}

/// The entries of `text`, in order; together they are all of it.
pub fn entries(text: &str) -> impl Iterator<Item = Entry> + '_ {
    let mut tokens = Source::new(text).lex().peekable();
    let (mut start, mut table) = (0, None);
    let mut line_start = Some(0);
    // `[` and `{` of values that are open: their lines do not start keys.
    let mut depth = 0usize;
    let mut done = false;
    std::iter::from_fn(move || {
        while let Some(token) = tokens.next() {
            let span = token.span();
            match token.kind() {
                TokenKind::LeftSquareBracket if depth == 0 && line_start.is_some() => {
                    let header_start = line_start.take().unwrap_or(span.start());
                    // The header's text up to the end of its line, without
                    // whitespace and comments.
                    let mut header = String::from("[");
                    while let Some(next) = tokens.next_if(|t| !matches!(t.kind(), TokenKind::Newline)) {
                        if !matches!(next.kind(), TokenKind::Whitespace | TokenKind::Comment)
                            && header.len() < 32
                        {
                            header.push_str(&text[next.span().start()..next.span().end()]);
                        }
                    }
                    let named = TABLES.iter().find(|name| header == format!("[[{name}]]"));
                    if let Some(&name) = named {
                        let entry = Entry { range: start..header_start, table };
                        (start, table) = (header_start, Some(name));
                        if !entry.range.is_empty() || entry.table.is_some() {
                            return Some(entry);
                        }
                    }
                }
                TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => {
                    depth += 1;
                    line_start = None;
                }
                TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                    depth = depth.saturating_sub(1);
                    line_start = None;
                }
                TokenKind::Newline if depth == 0 => line_start = Some(span.end()),
                TokenKind::Whitespace | TokenKind::Comment | TokenKind::Newline => {}
                _ => line_start = None,
            }
        }
        if done {
            return None;
        }
        done = true;
        Some(Entry { range: start..text.len(), table })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<(&str, Option<&str>)> {
        entries(text).map(|entry| (&text[entry.range], entry.table)).collect()
    }

    #[test]
    fn entries_start_at_their_headers() {
        let text = "# services\n[[service]]\nname = \"a\"\n[[service.ports]]\nport = 1\n\n  [[ balancing_policy ]] # b\nname = \"b\"\n[[service]]\n";
        assert_eq!(
            split(text),
            [
                ("# services\n", None),
                ("[[service]]\nname = \"a\"\n[[service.ports]]\nport = 1\n\n", Some("service")),
                ("  [[ balancing_policy ]] # b\nname = \"b\"\n", Some("balancing_policy")),
                ("[[service]]\n", Some("service")),
            ]
        );
        assert_eq!(split("[[service]]\nname = \"a\""), [("[[service]]\nname = \"a\"", Some("service"))]);
        assert_eq!(split(""), [("", None)]);
    }

    #[test]
    fn headers_inside_values_strings_and_comments_start_nothing() {
        for text in [
            "[[service]]\nnote = \"\"\"\n[[service]]\n\"\"\"\n",
            "[[service]]\nnote = '''\n[[service]]\n'''\n",
            "[[service]]\nports = [\n[[service]]\n]\n",
            "[[service]]\n# [[service]]\nx = 1 [[service]]\n",
            "[[service]]\n[[\"service\"]]\n[[service.x]]\n[service]\n",
        ] {
            assert_eq!(split(text), [(text, Some("service"))], "{text}");
        }
    }
}
