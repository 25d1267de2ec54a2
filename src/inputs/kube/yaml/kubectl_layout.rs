//! A reader of the YAML layout `kubectl get -o yaml` prints, in one pass
//! over the lines, where the general parser makes tokens and events with
//! spans for every node and moves them through several layers: that was
//! about half of a full sync's time, and with this reader a full sync
//! takes about half as long (bench/RESULTS.md, "YAML fast path (issue 20)").
//!
//! It knows block mappings and block sequences (`- ` entries, also at
//! their key's indentation), single-line plain and quoted scalars, `{}`
//! and `[]`, `|` and `|-` block scalars, comments, blank lines and `---`
//! between documents. It reads a whole text or nothing: on anything else
//! (anchors, tags, flow collections with content, scalars over several
//! lines, tabs, an error...) it gives up before any object is handed out,
//! and the general parser reads the text, so what is accepted and refused,
//! and every message, are the general parser's. What it accepts, it reads
//! into the very nodes the general parser makes, positions included (the
//! fuzz target `yaml_layout` compares the two, docs/fuzzing.md).

use super::{Keys, MAX_DEPTH, MAX_NODES, Node, Value, check_list_kind};

/// The objects of `text`, a whole stream checked by `ReadChars` that
/// starts on line `first_line` of its file, as the general reader hands
/// them out; None if it is not all in the layout this reader knows.
pub(super) fn objects(text: &str, first_line: usize) -> Option<Vec<Node>> {
    if !only_plain_characters(text) {
        return None;
    }
    let mut reader = Reader { text, at: 0, line: 1, line_offset: first_line - 1, nodes: 0 };
    let mut objects = Vec::new();
    while let Some(line) = reader.next_content() {
        if is_document_start(line.text) {
            reader.advance(&line);
            continue;
        }
        if line.indent != 0 {
            return None;
        }
        let root = reader.block_node(line, 0)?;
        match root.value {
            // Each element an object, as `read_elements` hands them out.
            Value::Sequence(elements) => objects.extend(elements),
            Value::Mapping(mut entries) => {
                let items = entries
                    .iter()
                    .position(|(key, value)| key == "items" && matches!(value.value, Value::Sequence(_)));
                match items {
                    Some(at) => {
                        let (_, items) = entries.remove(at);
                        // A List's kind is checked by the general reader,
                        // which says what is wrong.
                        let shell = Node { value: Value::Mapping(entries), ..root };
                        check_list_kind(shell.get("kind")).ok()?;
                        let Value::Sequence(elements) = items.value else { return None };
                        objects.extend(elements);
                    }
                    None => objects.push(Node { value: Value::Mapping(entries), ..root }),
                }
            }
            Value::Scalar { .. } => return None,
        }
        // The root ends its document.
        if reader.next_content().is_some_and(|next| !is_document_start(next.text)) {
            return None;
        }
    }
    Some(objects)
}

/// Whether `text` is free of what this reader leaves to the general one:
/// tabs (whitespace in some places, content in others), carriage returns
/// (line breaks, alone or before a line feed), and the characters that
/// YAML 1.1 took for line breaks or that mark byte order.
fn only_plain_characters(text: &str) -> bool {
    let bytes = text.as_bytes();
    if memchr::memchr2(b'\t', b'\r', bytes).is_some() {
        return false;
    }
    // U+0085 is C2 85; U+2028 and U+2029 are E2 80 A8/A9; U+FEFF is EF BB BF.
    memchr::memchr3_iter(0xC2, 0xE2, 0xEF, bytes).all(|at| {
        !matches!(&bytes[at..], [0xC2, 0x85, ..] | [0xE2, 0x80, 0xA8 | 0xA9, ..] | [0xEF, 0xBB, 0xBF, ..])
    })
}

/// A line of the text.
#[derive(Clone, Copy)]
struct Line<'t> {
    /// Without its line break.
    text: &'t str,
    /// Its number in the text, from 1.
    number: usize,
    /// The spaces before its content.
    indent: usize,
    /// Where the line after it starts.
    end: usize,
    /// Whether a line break ends it (only the last line may lack one).
    broken: bool,
}

impl<'t> Line<'t> {
    fn content(&self) -> &'t str {
        &self.text[self.indent..]
    }

    /// A document marker (`---` or `...` at column 0 and then nothing
    /// or a space), which ends any block collection.
    fn is_marker(&self) -> bool {
        let text = self.text.as_bytes();
        (text.starts_with(b"---") || text.starts_with(b"...")) && matches!(text.get(3), None | Some(b' '))
    }
}

/// `---` alone (spaces may follow): a new document, whose content starts
/// on the next line.
fn is_document_start(text: &str) -> bool {
    text.trim_end_matches(' ') == "---"
}

/// `- ` or a lone `-`: an entry of a block sequence.
fn is_entry(content: &str) -> bool {
    content.starts_with("- ") || content == "-"
}

struct Reader<'t> {
    text: &'t str,
    /// Where the first line not read yet starts, and its number.
    at: usize,
    line: usize,
    /// Lines of the file before the text.
    line_offset: usize,
    /// Nodes read of the whole text: at most `MAX_NODES`, which then
    /// holds for each object too.
    nodes: usize,
}

impl<'t> Reader<'t> {
    /// The first line not read yet.
    fn raw_line(&self) -> Option<Line<'t>> {
        let rest = &self.text[self.at..];
        if rest.is_empty() {
            return None;
        }
        let (len, broken) = match memchr::memchr(b'\n', rest.as_bytes()) {
            Some(len) => (len, true),
            None => (rest.len(), false),
        };
        let text = &rest[..len];
        let indent = text.len() - text.trim_start_matches(' ').len();
        Some(Line { text, number: self.line, indent, end: self.at + len + usize::from(broken), broken })
    }

    /// Reads past `line`.
    fn advance(&mut self, line: &Line) {
        self.at = line.end;
        self.line = line.number + 1;
    }

    /// The first line not read yet that has content, reading past blank
    /// lines and comments.
    fn next_content(&mut self) -> Option<Line<'t>> {
        loop {
            let line = self.raw_line()?;
            let content = line.content();
            if !content.is_empty() && !content.starts_with('#') {
                return Some(line);
            }
            self.advance(&line);
        }
    }

    /// A node at `column` (in characters, from 0) of line `number`.
    fn node(&self, value: Value, number: usize, column: usize) -> Node {
        Node { value, line: number + self.line_offset, column: column + 1 }
    }

    /// Counts a node `depth` levels below its document's root; None past
    /// the general reader's limits (which count no deeper and no more).
    fn count(&mut self, depth: usize) -> Option<()> {
        self.nodes += 1;
        (depth <= MAX_DEPTH && self.nodes <= MAX_NODES).then_some(())
    }

    /// The block collection whose first line is `line` (not read yet).
    fn block_node(&mut self, line: Line<'t>, depth: usize) -> Option<Node> {
        if is_entry(line.content()) {
            let sequence = self.sequence(line, depth)?;
            Some(self.node(Value::Sequence(sequence), line.number, line.indent))
        } else {
            self.mapping(line, line.indent, depth)
        }
    }

    /// The entries of a block sequence whose first `- ` is on `first`.
    fn sequence(&mut self, first: Line<'t>, depth: usize) -> Option<Vec<Node>> {
        self.count(depth)?;
        let indent = first.indent;
        let mut entries = Vec::new();
        let mut line = first;
        loop {
            // One space after the dash: a mapping there is indented by 2.
            let at = indent + 2;
            let content = line.text.get(at..)?;
            if content.is_empty() || content.starts_with(' ') || is_entry(content) {
                return None;
            }
            let entry = if key(line.text, at).is_some() {
                self.mapping(line, at, depth + 1)?
            } else {
                self.inline(line, at, indent, depth + 1)?
            };
            entries.push(entry);
            match self.next_content() {
                Some(next) if next.indent == indent && is_entry(next.content()) => line = next,
                Some(next) if next.indent > indent => return None,
                _ => return Some(entries),
            }
        }
    }

    /// A block mapping whose first key starts at byte `indent` of `first`
    /// (not read yet), the others on lines of their own.
    fn mapping(&mut self, first: Line<'t>, indent: usize, depth: usize) -> Option<Node> {
        self.count(depth)?;
        let mut entries = Vec::new();
        let mut keys = Keys::default();
        let mut line = first;
        loop {
            let (name, after) = key(line.text, indent)?;
            if !keys.is_new(&entries, &name) {
                return None;
            }
            let value = self.value(line, after, indent, depth + 1)?;
            entries.push((name, value));
            match self.next_content() {
                // A `- ` here, after a value that is no sequence, is an error.
                Some(next) if next.indent == indent && !is_entry(next.content()) && !next.is_marker() => {
                    line = next;
                }
                Some(next) if next.indent >= indent && !next.is_marker() => return None,
                _ => return Some(self.node(Value::Mapping(entries), first.number, indent)),
            }
        }
    }

    /// The value of a key of a mapping at `indent`, whose `:` ends just
    /// before byte `after` of `line`: on the line, or on the lines below.
    fn value(&mut self, line: Line<'t>, after: usize, indent: usize, depth: usize) -> Option<Node> {
        let rest = &line.text[after..];
        let content = rest.trim_start_matches(' ');
        if !(content.is_empty() || content.starts_with('#')) {
            return self.inline(line, line.text.len() - content.len(), indent, depth);
        }
        self.advance(&line);
        match self.next_content() {
            Some(next) if next.indent > indent => self.block_node(next, depth),
            // A sequence at its key's indentation, as kubectl prints them;
            // the general parser places it at its first entry's content.
            Some(next) if next.indent == indent && is_entry(next.content()) => {
                let entries = self.sequence(next, depth)?;
                Some(self.node(Value::Sequence(entries), next.number, indent + 2))
            }
            // Nothing: null, placed at the `:`.
            _ => {
                self.count(depth)?;
                Some(self.node(null(), line.number, column(line.text, after - 1)))
            }
        }
    }

    /// A node that starts at byte `at` of `line` and ends on it (but a
    /// block scalar, which goes on below): in a collection at `indent`.
    fn inline(&mut self, line: Line<'t>, at: usize, indent: usize, depth: usize) -> Option<Node> {
        self.count(depth)?;
        let text = &line.text[at..];
        let column = column(line.text, at);
        let (value, rest) = match text.as_bytes()[0] {
            b'"' => {
                let (text, rest) = double_quoted(text)?;
                (Value::Scalar { text, plain: false }, rest)
            }
            b'\'' => {
                let (text, rest) = single_quoted(text)?;
                (Value::Scalar { text, plain: false }, rest)
            }
            b'{' => (Value::Mapping(Vec::new()), text.strip_prefix("{}")?),
            b'[' => (Value::Sequence(Vec::new()), text.strip_prefix("[]")?),
            b'|' => {
                let strip = match text.trim_end_matches(' ') {
                    "|" => false,
                    "|-" => true,
                    _ => return None,
                };
                self.advance(&line);
                return self.block_scalar(indent, strip);
            }
            _ => {
                let (text, rest) = plain(text)?;
                (Value::Scalar { text: text.to_owned(), plain: true }, rest)
            }
        };
        if !is_line_end(rest) {
            return None;
        }
        self.advance(&line);
        Some(self.node(value, line.number, column))
    }

    /// A `|` (or with `strip`, `|-`) block scalar of a collection at
    /// `indent`, whose header was just read: its lines indented as its
    /// first, which is not blank (else the indentation is not the first
    /// line's), placed there as the general parser places it.
    fn block_scalar(&mut self, indent: usize, strip: bool) -> Option<Node> {
        let first = self.raw_line()?;
        let at = first.indent;
        if at <= indent || first.content().is_empty() {
            return None;
        }
        let mut text = String::new();
        let mut blank_lines = 0;
        let mut last = first;
        while let Some(line) = self.raw_line() {
            if line.content().is_empty() {
                // Spaces past the indentation would be content.
                if line.text.len() > at {
                    return None;
                }
                blank_lines += 1;
            } else if line.indent >= at {
                if line.number != first.number {
                    text.extend(std::iter::repeat_n('\n', blank_lines + 1));
                }
                blank_lines = 0;
                text.push_str(&line.text[at..]);
                last = line;
            } else {
                break;
            }
            self.advance(&line);
        }
        if !strip {
            // The last line break is kept, if there is one.
            if !last.broken {
                return None;
            }
            text.push('\n');
        }
        Some(self.node(Value::Scalar { text, plain: false }, first.number, at))
    }
}

fn null() -> Value {
    Value::Scalar { text: "~".to_owned(), plain: true }
}

/// The column (from 0) of byte `at` of `line`, in characters as the
/// general parser counts them.
fn column(line: &str, at: usize) -> usize {
    let before = &line[..at];
    if before.is_ascii() { at } else { before.chars().count() }
}

/// Whether `rest`, what follows a node on its line, is nothing or a
/// comment.
fn is_line_end(rest: &str) -> bool {
    let content = rest.trim_start_matches(' ');
    content.is_empty() || (content.starts_with('#') && content.len() < rest.len())
}

/// The key at byte `at` of `line` that a `:` and a space (or the line's
/// end) follow, and where the value starts, after the `:`.
fn key(line: &str, at: usize) -> Option<(String, usize)> {
    let text = &line[at..];
    let (key, rest) = match text.as_bytes().first()? {
        b'"' => double_quoted(text)?,
        b'\'' => single_quoted(text)?,
        _ => {
            let end = key_end(text)?;
            // Nothing trimmed or left: `a : b` and `a #b: c` are no such keys.
            let (key, comment) = plain(&text[..end])?;
            if key.len() != end || !comment.is_empty() {
                return None;
            }
            (key.to_owned(), &text[end..])
        }
    };
    // YAML's limit for a key on the line of its value.
    if text.len() - rest.len() > 1024 {
        return None;
    }
    let after = rest.strip_prefix(':')?;
    (after.is_empty() || after.starts_with(' ')).then(|| (key, line.len() - after.len()))
}

/// Where the first `: ` (or a `:` at the end) of `text` is.
fn key_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    memchr::memchr_iter(b':', bytes).find(|&at| matches!(bytes.get(at + 1), None | Some(b' ')))
}

/// A plain scalar at the start of `text`, which is all on its line, and
/// the rest of the line after it (a comment, or nothing): None unless it
/// surely is one scalar, read as YAML 1.2 reads it.
fn plain(text: &str) -> Option<(&str, &str)> {
    let (scalar, rest) = match memchr::memmem::find(text.as_bytes(), b" #") {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let scalar = scalar.trim_end_matches(' ');
    let bytes = scalar.as_bytes();
    let first = *bytes.first()?;
    // An indicator first starts something else; `-` followed by more is a
    // scalar (`-1`, `--flag`), but not `---`.
    let starts_ok = match first {
        b'-' => bytes.len() > 1 && bytes[1] != b' ' && !scalar.starts_with("---"),
        b'.' => !scalar.starts_with("..."),
        _ => !b"?:,[]{}#&*!|>'\"%@`".contains(&first),
    };
    // `: ` or a `:` at the end would make it a key.
    let ok = starts_ok && !scalar.ends_with(':') && memchr::memmem::find(bytes, b": ").is_none();
    ok.then_some((scalar, rest))
}

/// A double-quoted scalar at the start of `text`, all on this line, with
/// the escapes YAML 1.2 has, and what follows it.
fn double_quoted(text: &str) -> Option<(String, &str)> {
    let body = &text[1..];
    let mut value = String::new();
    let mut chars = body.char_indices();
    loop {
        let (at, c) = chars.next()?;
        match c {
            '"' => return Some((value, &body[at + 1..])),
            '\\' => {
                let (_, escape) = chars.next()?;
                let decoded = match escape {
                    '0' => '\0',
                    'a' => '\x07',
                    'b' => '\x08',
                    't' => '\t',
                    'n' => '\n',
                    'v' => '\x0b',
                    'f' => '\x0c',
                    'r' => '\r',
                    'e' => '\x1b',
                    ' ' => ' ',
                    '"' => '"',
                    '/' => '/',
                    '\\' => '\\',
                    'N' => '\u{85}',
                    '_' => '\u{A0}',
                    'L' => '\u{2028}',
                    'P' => '\u{2029}',
                    'x' => hex(&mut chars, 2)?,
                    'u' => hex(&mut chars, 4)?,
                    'U' => hex(&mut chars, 8)?,
                    _ => return None,
                };
                value.push(decoded);
            }
            c => value.push(c),
        }
    }
}

/// The character of the next `digits` hex digits; None for a surrogate
/// (which the general parser may pair with the next escape) or no char.
fn hex(chars: &mut std::str::CharIndices, digits: usize) -> Option<char> {
    let mut code = 0;
    for _ in 0..digits {
        code = code * 16 + chars.next()?.1.to_digit(16)?;
    }
    char::from_u32(code)
}

/// A single-quoted scalar at the start of `text`, all on this line (`''`
/// is a quote), and what follows it.
fn single_quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut rest = &text[1..];
    loop {
        let at = memchr::memchr(b'\'', rest.as_bytes())?;
        value.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        match rest.strip_prefix('\'') {
            Some(after) => {
                value.push('\'');
                rest = after;
            }
            None => return Some((value, rest)),
        }
    }
}

/// How the benches write kubectl's layout.
#[cfg(test)]
#[path = "../../../../bench/kube_yaml.rs"]
mod kube_yaml;

#[cfg(test)]
mod tests {
    use std::{fs, net::Ipv4Addr, path::Path};

    use super::{super::Readers, kube_yaml, *};

    /// What `readers` read of `text`: the objects, or the error's message.
    fn read_by(readers: Readers, text: &str, first_line: usize) -> Result<Vec<Node>, String> {
        let mut objects = Vec::new();
        let read =
            super::super::for_each_object_read_by(readers, "f.yaml", text.as_bytes(), first_line, |node| {
                objects.push(node);
                Ok(())
            });
        read.map(|()| objects).map_err(|err| format!("{err:#}"))
    }

    /// Whether this reader reads `text` (from line `first_line`), checked
    /// to read it as the general reader does.
    fn reads(text: &str, first_line: usize) -> bool {
        let general = read_by(Readers::GeneralOnly, text, first_line);
        assert_eq!(read_by(Readers::KubectlLayoutFirst, text, first_line), general, "{text:?}");
        match objects(text, first_line) {
            Some(objects) => {
                assert_eq!(Ok(objects), general, "{text:?}");
                true
            }
            None => false,
        }
    }

    /// A List of bench services in kubectl's layout, as the sync bench writes it.
    fn bench_list(services: u32) -> String {
        let mut text = kube_yaml::LIST_START.to_owned();
        for index in 0..services {
            let endpoints: Vec<(Ipv4Addr, u32)> =
                (0..10).map(|e| (Ipv4Addr::new(10, 1, index as u8, e as u8), e)).collect();
            let item = kube_yaml::ServiceItem {
                index,
                namespace: "ns",
                name: &format!("svc-{index}"),
                vip: Ipv4Addr::new(198, 18, 0, index as u8),
                port_name: "http",
                port: 80,
                protocol: "TCP",
                target_port: 8080,
                endpoints: &endpoints,
            };
            item.write(&mut text);
        }
        text + kube_yaml::LIST_END
    }

    #[test]
    fn the_bench_list_and_its_items_are_read_here_as_the_general_reader_reads_them() {
        let list = bench_list(3);
        assert!(reads(&list, 1));
        assert_eq!(objects(&list, 1).unwrap().len(), 6);
        // Items as the split cuts them: each from its own line of the file.
        let mut starts: Vec<usize> = list.match_indices("\n- ").map(|(at, _)| at + 1).collect();
        starts.push(list.find("kind: List").unwrap());
        for (item, pair) in starts.windows(2).enumerate() {
            let line = list[..pair[0]].matches('\n').count() + 1;
            let text = &list[pair[0]..pair[1]];
            assert!(reads(text, line), "item {item}: {text}");
            let [object] = objects(text, line).unwrap().try_into().unwrap();
            assert_eq!((object.line, object.column), (line, 3));
        }
    }

    #[test]
    fn the_yaml_of_the_tests_and_examples_reads_here_as_the_general_reader_reads_it() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        let mut directories = vec![
            root.join("tests"),
            root.join("examples"),
            root.join("fuzz/seeds/yaml"),
            root.join("fuzz/seeds/yaml_layout"),
        ];
        while let Some(directory) = directories.pop() {
            for entry in fs::read_dir(directory).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    directories.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    files.push(path);
                }
            }
        }
        let mut read_here = 0;
        for path in &files {
            let Ok(text) = fs::read_to_string(path) else { continue };
            let read = reads(&text, 1);
            read_here += usize::from(read);
            // Hand-written ones have flow collections; the others are in
            // kubectl's layout.
            let flow = text.replace("{}", "").replace("[]", "").contains(['{', '[']);
            let bad_input = path.starts_with(root.join("tests/bad-inputs"));
            assert!(read || flow || bad_input, "{}", path.display());
        }
        assert!(read_here >= 15, "{read_here} of {}", files.len());
    }

    #[test]
    fn scalars_and_collections_of_kubectls_layout_are_read_with_their_positions() {
        let cases = [
            "a:\nb: 1\n",
            "a:\n",
            "a:   \n\n# c\nb: 1\n",
            "a: # c\nb: 1\n",
            "- a:\n- b\n",
            "k:\n- a: 1\n  b:\n- c\n",
            "k:\n  - a: 1\n    b: [] # c\n  - {}\n",
            "- \"a\": x\n  'b': y\n",
            "a: {}\nb: []\nc: \"\"\nd: ''\n",
            "é: é\nx:\n  é:\nj: \"{\\\"k\\\": [1, \\\"\\u00e9\\\\\\n\\\"]}\"\n",
            "a: 'it''s # not a comment'\nb: x#y # a comment\nc: -1\nd: --flag=a,b\ne: a:b\n",
            "a: |\n  x\n\n    y\n\n\nb: |-\n    z\n  \n# c\nc:\n- |\n  w\n",
            "---\n---\nkind: A\n---\n- kind: B\n- kind: C\n---\n",
            "apiVersion: v1\nitems:\n- kind: A\n- kind: B\nkind: ServiceList\nmetadata: {}\n",
            "apiVersion: v1\nitems: []\nkind: List\n",
        ];
        for text in cases {
            assert!(reads(text, 1), "{text:?}");
            assert!(reads(text, 40), "{text:?}");
        }
    }

    #[test]
    fn what_is_not_kubectls_layout_is_left_to_the_general_reader() {
        let cases = [
            // Anchors, aliases, tags, flow collections with content.
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: {b: 1}\n",
            "a: [1]\n",
            "{\"kind\": \"Node\"}",
            // Scalars over several lines, and what might be one.
            "a: b\n  c\n",
            "a: \"b\n  c\"\n",
            "a: 'b\n  c'\n",
            "a: >\n  b\n",
            "a: |+\n  b\n",
            "a: |2\n   b\n",
            "a: |\n\n  b\n",
            "a: |\n  b\n   \n",
            // Keys and values that are no plain scalars, or not only one.
            "a: b: c\n",
            "a: b:\n",
            "? a\n: b\n",
            "a : b\n",
            "a #b: c\n",
            "a: @b\n",
            "a: ---\n",
            // Escapes it does not decode, tabs, carriage returns, BOMs, NELs.
            "a: \"\\ud83d\\ude00\"\n",
            "a: \"\\q\"\n",
            "a:\tb\n",
            "a: b\r\n",
            "a: \u{FEFF}b\n",
            "a: b\u{85}c\n",
            // Odd indentation, markers it does not expect, errors.
            "  a: 1\n",
            "a:\n   b: 1\n  c: 1\n",
            "- a\n  - b\n",
            "-  a\n",
            "- - a\n",
            "-\n  a: 1\n",
            "a: 1\n- b\n",
            "...\n",
            "--- a\n",
            "%YAML 1.2\n---\na: 1\n",
            "a: 1\na: 2\n",
            "kind: Service\nitems:\n- a: 1\n",
            "a: 1\nb\n",
            "x\n",
        ];
        for text in cases {
            assert!(!reads(text, 1), "{text:?}");
        }
        let deep: String = (0..=MAX_DEPTH).map(|depth| format!("{}k:\n", " ".repeat(2 * depth))).collect();
        assert!(!reads(&deep, 1));
        let long_key = format!("{}: 1\n", "k".repeat(1025));
        assert!(!reads(&long_key, 1));
    }
}
