//! Streaming YAML reading for Kubernetes dumps: one object at a time, each
//! as a small tree whose every node knows its line and column.
//!
//! `kubectl get -o yaml` output can be hundreds of megabytes (a `List` with
//! every Service and EndpointSlice of a big cluster), so the input is read
//! incrementally and only one object's tree is alive at a time: the items
//! of a `List` are handed out as they are parsed. JSON, a subset of YAML,
//! reads the same way. A text in the layout kubectl prints (every item of
//! a split file) is read by a faster reader of that layout alone
//! (kubectl_layout.rs), which leaves anything else to the general one.

mod kubectl_layout;

use std::{fmt, io::Read};

use anyhow::Result;
use granit_parser::{BorrowedInput, Event, Parser, ScalarStyle, Span};
use rustc_hash::FxHashSet;

use crate::{
    input,
    inputs::{BYTE_ORDER_MARK, location::Location},
};

/// A YAML node and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: usize,
    pub column: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A scalar; `plain` is false for quoted and block scalars, which are
    /// always strings (`"80"` is not a number).
    Scalar {
        text: String,
        plain: bool,
    },
    Sequence(Vec<Node>),
    /// Keys are scalars; Kubernetes objects have no other kind.
    Mapping(Vec<(String, Node)>),
}

impl Node {
    pub fn location(&self, file: &str) -> Location {
        Location { file: file.to_owned(), line: self.line, column: self.column }
    }

    /// A null scalar (`~`, `null`, or nothing at all).
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Mapping(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Nesting deeper than this is not a Kubernetes object; refusing it keeps a
/// hostile input from exhausting the stack.
const MAX_DEPTH: usize = 64;

/// More nodes than this in one object is not a Kubernetes object either
/// (an EndpointSlice of 1,000 endpoints has about 20,000): refusing them
/// bounds the tree, which takes up to 40 times the text it is read from
/// (`[~,~,~...]` is 2 bytes a node), to about 100 MB an object.
const MAX_NODES: usize = 1 << 20;

/// Which readers may read a stream that is one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    /// The reader of kubectl's layout, and the general one if that one
    /// does not read the stream: how balctl reads.
    KubectlLayoutFirst,
    /// The general reader alone, which the other must agree with (the
    /// fuzz target `yaml_layout` compares them).
    GeneralOnly,
}

/// Calls `object` with every object of a YAML stream: each document, each
/// item of a document that is a `List` (`kind: List`, `ServiceList`...),
/// or each element of a document that is a sequence. Empty documents are
/// skipped. The stream is the part of `file` that starts on `first_line`.
pub fn for_each_object(
    file: &str,
    reader: impl Read,
    first_line: usize,
    object: impl FnMut(Node) -> Result<()>,
) -> Result<()> {
    for_each_object_read_by(Readers::KubectlLayoutFirst, file, reader, first_line, object)
}

/// Streams read by the reader of kubectl's layout, for tests that show
/// it is used.
#[cfg(test)]
pub(super) static READ_IN_KUBECTL_LAYOUT: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// `for_each_object` with the chosen `readers`.
pub fn for_each_object_read_by(
    readers: Readers,
    file: &str,
    reader: impl Read,
    first_line: usize,
    mut object: impl FnMut(Node) -> Result<()>,
) -> Result<()> {
    let mut chars = ReadChars::new(reader, first_line);
    let line_offset = first_line - 1;
    // Comments are not data; unemitted, they cost no allocation.
    let options = || granit_parser::options! { emit_comments: false };
    // An input of one chunk (every item of a split file) is parsed from
    // its text: the parser then borrows scalars and reads ahead in bulk,
    // which is faster than characters one at a time (bench/RESULTS.md,
    // "YAML parser"). A bigger one streams, one chunk in memory at a time.
    let result = match chars.whole_text() {
        Some(text) => {
            let in_kubectl_layout = match readers {
                Readers::KubectlLayoutFirst => kubectl_layout::objects(&text, first_line),
                Readers::GeneralOnly => None,
            };
            match in_kubectl_layout {
                Some(objects) => {
                    #[cfg(test)]
                    READ_IN_KUBECTL_LAYOUT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    objects.into_iter().try_for_each(&mut object)
                }
                None => {
                    let parser = Parser::new_from_str_with_options(&text, options());
                    read_stream(&mut Events { parser, file, line_offset, nodes: 0 }, &mut object)
                }
            }
        }
        None => {
            let parser = Parser::new_from_iter_with_options(chars.by_ref(), options());
            read_stream(&mut Events { parser, file, line_offset, nodes: 0 }, &mut object)
        }
    };
    if let Some(err) = chars.error.take() {
        return Err(input!("{file}{err}"));
    }
    result
}

struct Events<'f, 'i, T: BorrowedInput<'i>> {
    parser: Parser<'i, T>,
    file: &'f str,
    /// Lines of the file before the part being parsed.
    line_offset: usize,
    /// Nodes read of the object being read, up to `MAX_NODES`.
    nodes: usize,
}

impl<'i, T: BorrowedInput<'i>> Events<'_, 'i, T> {
    fn next(&mut self) -> Result<(Event<'i>, Span)> {
        match self.parser.next_event() {
            Some(Ok(event)) => Ok(event),
            Some(Err(err)) => {
                let at = err.marker();
                let line = at.line() + self.line_offset;
                Err(input!("{}:{line}:{}: invalid YAML: {}", self.file, at.col() + 1, err.info()))
            }
            None => Err(input!("{}: unexpected end of the YAML stream", self.file)),
        }
    }

    fn error(&self, span: &Span, message: impl fmt::Display) -> anyhow::Error {
        input!("{}:{}:{}: {message}", self.file, self.line(span), span.start.col() + 1)
    }

    fn line(&self, span: &Span) -> usize {
        span.start.line() + self.line_offset
    }
}

fn read_stream<'i, T: BorrowedInput<'i>>(
    events: &mut Events<'_, 'i, T>,
    object: &mut impl FnMut(Node) -> Result<()>,
) -> Result<()> {
    loop {
        let (event, span) = events.next()?;
        match event {
            Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => return Ok(()),
            Event::DocumentStart(..) => read_document(events, object)?,
            other => return Err(events.error(&span, format!("unexpected YAML event {other:?}"))),
        }
    }
}

/// One document: a mapping whose `items` (if a sequence) are streamed one by
/// one, a sequence whose elements are, or any other node, handed out whole.
fn read_document<'i, T: BorrowedInput<'i>>(
    events: &mut Events<'_, 'i, T>,
    object: &mut impl FnMut(Node) -> Result<()>,
) -> Result<()> {
    events.nodes = 0;
    let (event, span) = events.next()?;
    if let Event::SequenceStart(..) = event {
        return read_elements(events, object);
    }
    let Event::MappingStart(..) = event else {
        let root = read_node(events, event, span, 0)?;
        return if root.is_null() { Ok(()) } else { object(root) };
    };
    let mut entries = Vec::new();
    let mut keys = Keys::default();
    // Where `items` was, when its elements were handed out as objects.
    let mut streamed_items: Option<Span> = None;
    read_entries(events, |events, key, event, key_span, value_span| {
        if !keys.is_new(&entries, &key) || (key == "items" && streamed_items.is_some()) {
            return Err(events.error(&key_span, format!("`{key}` is given twice")));
        }
        if key == "items" && matches!(event, Event::SequenceStart(..)) {
            read_elements(events, object)?;
            streamed_items = Some(key_span);
        } else {
            entries.push((key, read_node(events, event, value_span, 1)?));
        }
        Ok(())
    })?;
    let root =
        Node { value: Value::Mapping(entries), line: events.line(&span), column: span.start.col() + 1 };
    let Some(items) = streamed_items else {
        return object(root);
    };
    check_list_kind(root.get("kind")).map_err(|message| events.error(&items, message))
}

/// A document with `items` must be a List; `kind` is its `kind` field.
fn check_list_kind(kind: Option<&Node>) -> Result<(), String> {
    let kind = kind.and_then(|k| match &k.value {
        Value::Scalar { text, .. } => Some(text.as_str()),
        _ => None,
    });
    if kind.is_some_and(|kind| kind.ends_with("List")) {
        return Ok(());
    }
    let found = kind.map_or_else(|| "an object without a kind".to_owned(), |k| format!("kind {k}"));
    Err(format!("a document with `items` must be a List (kind: List), not {found}"))
}

/// Hands out each element of a sequence whose start was just read: an
/// object, as deep as a document's root, wherever the sequence is.
fn read_elements<'i, T: BorrowedInput<'i>>(
    events: &mut Events<'_, 'i, T>,
    object: &mut impl FnMut(Node) -> Result<()>,
) -> Result<()> {
    loop {
        let (event, span) = events.next()?;
        if let Event::SequenceEnd = event {
            return Ok(());
        }
        events.nodes = 0;
        object(read_node(events, event, span, 0)?)?;
    }
}

/// The keys of a mapping being read, to refuse one given twice (as the API
/// server's YAML reader does): which of the two counts would be anyone's
/// guess, and it could differ between a List read whole and in items.
/// Scanned while few, as in nearly every mapping of an object; indexed
/// beyond, so that a huge one costs no quadratic time.
#[derive(Default)]
struct Keys {
    index: FxHashSet<String>,
}

impl Keys {
    const SCANNED: usize = 32;

    /// Whether `entries` (the mapping so far) lack `key`; it is added next.
    fn is_new(&mut self, entries: &[(String, Node)], key: &str) -> bool {
        if entries.len() < Self::SCANNED {
            return entries.iter().all(|(k, _)| k != key);
        }
        if self.index.is_empty() {
            self.index.extend(entries.iter().map(|(k, _)| k.clone()));
        }
        self.index.insert(key.to_owned())
    }
}

/// Reads the entries of a mapping whose start was just read, up to its end,
/// calling `entry` with each key, the first event of its value, and the
/// spans of both.
fn read_entries<'i, T: BorrowedInput<'i>>(
    events: &mut Events<'_, 'i, T>,
    mut entry: impl FnMut(&mut Events<'_, 'i, T>, String, Event<'i>, Span, Span) -> Result<()>,
) -> Result<()> {
    loop {
        let (event, key_span) = events.next()?;
        if let Event::MappingEnd = event {
            return Ok(());
        }
        let key = scalar_key(events, event, &key_span)?;
        let (event, value_span) = events.next()?;
        entry(events, key, event, key_span, value_span)?;
    }
}

fn scalar_key<'i, T: BorrowedInput<'i>>(
    events: &Events<'_, 'i, T>,
    event: Event<'i>,
    span: &Span,
) -> Result<String> {
    match event {
        Event::Scalar(text, ..) => Ok(text.into_owned()),
        _ => Err(events.error(span, "mapping keys must be plain strings")),
    }
}

fn read_node<'i, T: BorrowedInput<'i>>(
    events: &mut Events<'_, 'i, T>,
    event: Event<'i>,
    span: Span,
    depth: usize,
) -> Result<Node> {
    if depth > MAX_DEPTH {
        return Err(events.error(&span, format!("nesting deeper than {MAX_DEPTH} levels")));
    }
    events.nodes += 1;
    if events.nodes > MAX_NODES {
        return Err(events.error(&span, format!("an object of more than {MAX_NODES} YAML values")));
    }
    let value = match event {
        Event::Scalar(text, style, ..) => {
            Value::Scalar { text: text.into_owned(), plain: style == ScalarStyle::Plain }
        }
        Event::SequenceStart(..) => {
            let mut items = Vec::new();
            loop {
                let (event, span) = events.next()?;
                if let Event::SequenceEnd = event {
                    break;
                }
                items.push(read_node(events, event, span, depth + 1)?);
            }
            Value::Sequence(items)
        }
        Event::MappingStart(..) => {
            let mut entries = Vec::new();
            let mut keys = Keys::default();
            read_entries(events, |events, key, event, key_span, value_span| {
                if !keys.is_new(&entries, &key) {
                    return Err(events.error(&key_span, format!("`{key}` is given twice")));
                }
                entries.push((key, read_node(events, event, value_span, depth + 1)?));
                Ok(())
            })?;
            Value::Mapping(entries)
        }
        Event::Alias(_) => {
            return Err(events.error(&span, "YAML aliases are not supported in Kubernetes objects"));
        }
        other => return Err(events.error(&span, format!("unexpected YAML event {other:?}"))),
    };
    Ok(Node { value, line: events.line(&span), column: span.start.col() + 1 })
}

/// The characters of a byte stream, decoded as UTF-8 a chunk at a time. An
/// I/O or encoding error ends the stream and is kept for the caller, since
/// the parser's input cannot fail: what follows the file's name in the
/// message, with the line and column of a byte that is not UTF-8.
struct ReadChars<R> {
    reader: R,
    /// Checked once per chunk: handing out chars is then cheap, which
    /// matters at hundreds of megabytes.
    chunk: String,
    /// Bytes into `chunk` of the next char.
    position: usize,
    /// Bytes of a character split across two reads.
    partial: Vec<u8>,
    /// Where the next chunk starts: its line, and bytes into it.
    line: usize,
    column: usize,
    error: Option<String>,
    /// Before the first chunk, which may start with a byte-order mark.
    at_start: bool,
    /// The reader has nothing more.
    at_end: bool,
}

const CHUNK: usize = 1 << 20;

impl<R: Read> ReadChars<R> {
    /// The stream starts on `first_line` of its file.
    fn new(reader: R, first_line: usize) -> Self {
        let (chunk, partial) = (String::new(), Vec::new());
        let (error, at_start, at_end) = (None, true, false);
        Self { reader, chunk, position: 0, partial, line: first_line, column: 0, error, at_start, at_end }
    }

    /// The whole text, checked, when it is one chunk; else None, and the
    /// characters are read from `self` (the first chunk is read already).
    fn whole_text(&mut self) -> Option<String> {
        let read = self.refill();
        (read && self.at_end && self.partial.is_empty()).then(|| std::mem::take(&mut self.chunk))
    }

    fn not_utf8(&mut self) {
        self.error = Some(format!(":{}:{}: {NOT_UTF8}", self.line, self.column + 1));
    }

    fn not_printable(&mut self, c: char) {
        self.error = Some(format!(":{}:{}: {}", self.line, self.column + 1, not_printable(c)));
    }

    /// Moves the position past `text`.
    fn advance(&mut self, text: &[u8]) {
        match memchr::memrchr(b'\n', text) {
            Some(last) => {
                self.line += memchr::memchr_iter(b'\n', text).count();
                self.column = text.len() - last - 1;
            }
            None => self.column += text.len(),
        }
    }

    /// Reads the next chunk; false at the end or on an error.
    fn refill(&mut self) -> bool {
        let mut bytes = std::mem::take(&mut self.partial);
        let start = bytes.len();
        // Grows with what is read: a small input allocates little.
        match self.reader.by_ref().take(CHUNK as u64).read_to_end(&mut bytes) {
            Ok(read) => self.at_end = read < CHUNK,
            Err(e) => {
                self.error = Some(format!(": read failed: {e}"));
                return false;
            }
        }
        // Not part of the text: columns count from after it.
        if std::mem::take(&mut self.at_start) && bytes.starts_with(BYTE_ORDER_MARK) {
            bytes.drain(..BYTE_ORDER_MARK.len());
        }
        if bytes.len() == start {
            if !bytes.is_empty() {
                self.not_utf8();
            }
            return false;
        }
        let valid = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            // Up to 3 bytes can be the start of a character the next read completes.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(e) => {
                self.advance(&bytes[..e.valid_up_to()]);
                self.not_utf8();
                return false;
            }
        };
        self.partial = bytes.split_off(valid);
        // Checked just above.
        let text = std::str::from_utf8(&bytes).unwrap_or_default();
        // The parser takes a NUL for the end of the stream: what follows
        // one would be dropped without a word.
        if let Some((at, c)) = text.char_indices().find(|&(_, c)| !printable(c)) {
            self.advance(&bytes[..at]);
            self.not_printable(c);
            return false;
        }
        self.chunk.clear();
        self.chunk.push_str(text);
        self.advance(&bytes);
        self.position = 0;
        true
    }
}

const NOT_UTF8: &str = "not valid UTF-8";

fn not_printable(c: char) -> String {
    format!("character U+{:04X} is not allowed in YAML (only printable characters are)", u32::from(c))
}

/// What reading `text` (a line of file `label`) would refuse in it, as
/// `ReadChars` does: a character outside YAML's printable set, or bytes
/// that are not UTF-8. For text the parser never sees.
pub(super) fn check_text(label: &str, line: usize, text: &[u8]) -> Result<()> {
    let (valid, rest) = match std::str::from_utf8(text) {
        Ok(valid) => (valid, None),
        Err(e) => (std::str::from_utf8(&text[..e.valid_up_to()]).unwrap_or_default(), Some(e.valid_up_to())),
    };
    if let Some((at, c)) = valid.char_indices().find(|&(_, c)| !printable(c)) {
        return Err(input!("{label}:{line}:{}: {}", at + 1, not_printable(c)));
    }
    match rest {
        Some(at) => Err(input!("{label}:{line}:{}: {NOT_UTF8}", at + 1)),
        None => Ok(()),
    }
}

/// The characters YAML allows in a stream (YAML 1.2, `c-printable`).
const fn printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

impl<R: Read> Iterator for ReadChars<R> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        loop {
            if let Some(c) = self.chunk[self.position..].chars().next() {
                self.position += c.len_utf8();
                return Some(c);
            }
            if self.error.is_some() || !self.refill() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(text: &str) -> Result<Vec<Node>> {
        let mut found = Vec::new();
        for_each_object("f.yaml", text.as_bytes(), 1, |node| {
            found.push(node);
            Ok(())
        })?;
        Ok(found)
    }

    fn kind(node: &Node) -> &str {
        match &node.get("kind").unwrap().value {
            Value::Scalar { text, .. } => text,
            _ => panic!(),
        }
    }

    #[test]
    fn documents_and_list_items_are_objects_with_positions() {
        let text = "kind: Service\nspec:\n  ports:\n  - port: 80\n---\n---\napiVersion: v1\nitems:\n- kind: A\n- kind: B\n  x: \"1\"\nkind: List\n";
        let found = objects(text).unwrap();
        let kinds: Vec<&str> = found.iter().map(kind).collect();
        assert_eq!(kinds, ["Service", "A", "B"]);
        let port = found[0].get("spec").unwrap().get("ports").unwrap();
        let Value::Sequence(ports) = &port.value else { panic!() };
        let number = ports[0].get("port").unwrap();
        assert_eq!((number.line, number.column), (4, 11));
        assert!(matches!(&found[2].get("x").unwrap().value, Value::Scalar { plain: false, .. }));
        assert_eq!((found[1].line, found[1].column), (9, 3));
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        let err = objects("kind: Service\nspec: {a: 1, b: 2, a: 3}\n").unwrap_err().to_string();
        assert_eq!(err, "f.yaml:2:20: `a` is given twice");
        let err = objects("kind: List\nitems: []\nx: 1\nitems:\n- kind: A\n").unwrap_err().to_string();
        assert_eq!(err, "f.yaml:4:1: `items` is given twice");
        let many: String = (0..1000).map(|i| format!("k{i}: 1\n")).collect();
        assert_eq!(objects(&format!("kind: A\n{many}")).unwrap().len(), 1);
        let err = objects(&format!("kind: A\n{many}k999: 2\n")).unwrap_err().to_string();
        assert!(err.starts_with("f.yaml:1002:1: `k999` is given twice"), "{err}");
    }

    #[test]
    fn items_outside_a_list_and_syntax_errors_are_located() {
        let err = objects("kind: Service\nitems:\n- a: 1\n").unwrap_err().to_string();
        assert!(err.starts_with("f.yaml:2:") && err.contains("must be a List"), "{err}");
        let err = objects("kind: Service\n  spec: [\n").unwrap_err().to_string();
        assert!(err.starts_with("f.yaml:2:") && err.contains("invalid YAML"), "{err}");
    }

    #[test]
    fn json_reads_as_yaml_and_utf8_split_across_chunks_survives() {
        let found = objects(r#"{"kind": "Node", "metadata": {"name": "é"}}"#).unwrap();
        assert_eq!(kind(&found[0]), "Node");
        let long = format!("kind: Node\nnote: \"{}\"\n", "é".repeat(CHUNK));
        assert_eq!(objects(&long).unwrap().len(), 1);
        let mut bad = b"kind: Node\nx: ".to_vec();
        bad.push(0xff);
        let err = for_each_object("f.yaml", &bad[..], 1, |_| Ok(())).unwrap_err().to_string();
        assert_eq!(err, "f.yaml:2:4: not valid UTF-8");
        let mut split = long.into_bytes();
        split.pop();
        split.extend(b"\n\xc3");
        let err = for_each_object("f.yaml", &split[..], 7, |_| Ok(())).unwrap_err().to_string();
        assert_eq!(err, "f.yaml:9:1: not valid UTF-8");
    }

    #[test]
    fn control_characters_are_refused_where_they_are() {
        // The parser would end the stream at the NUL and never see the Node.
        let err = objects("kind: Service\n\0\n---\nkind: Node\n").unwrap_err().to_string();
        assert!(err.starts_with("f.yaml:2:1: character U+0000 is not allowed"), "{err}");
        let err = objects("kind: Node\nx: \"a\u{1b}\"\n").unwrap_err().to_string();
        assert!(err.starts_with("f.yaml:2:6: character U+001B"), "{err}");
        assert_eq!(objects("kind: Node\r\nx: \"\ta\u{85}é\u{1F600}\"\n").unwrap().len(), 1);
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_not_text() {
        let found = objects("\u{FEFF}kind: Node\nx: 1\n").unwrap();
        assert_eq!(kind(&found[0]), "Node");
        let x = found[0].get("x").unwrap();
        assert_eq!((found[0].line, found[0].column, x.line, x.column), (1, 1, 2, 4));
    }

    #[test]
    fn an_object_of_too_many_values_is_refused() {
        let values = |n: usize| format!("kind: A\nx: [{}]\n", "~,".repeat(n));
        assert_eq!(objects(&values(MAX_NODES - 2)).unwrap().len(), 1);
        let err = objects(&values(MAX_NODES - 1)).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("f.yaml:2:{}: an object of more than {MAX_NODES} YAML values", 2 * MAX_NODES + 1)
        );
        // Counted per object: a List's items may have as many each.
        let list =
            format!("kind: List\nitems:\n- {{x: [{0}]}}\n- {{x: [{0}]}}\n", "~,".repeat(MAX_NODES - 2));
        assert_eq!(objects(&list).unwrap().len(), 2);
    }
}
