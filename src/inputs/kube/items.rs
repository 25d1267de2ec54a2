//! Splitting a YAML file into its objects' texts without parsing it, and
//! fingerprinting each, so that a sync parses only what changed since the
//! last one.
//!
//! The split follows the layout `kubectl get -o yaml` prints: documents
//! separated by `---` lines, and in a `kind: List` document an `items:` key
//! at column 0 followed by entries that each start with `- ` at column 0.
//! Every line of an entry after its first is indented or blank (YAML needs
//! that of anything nested under the entry), so the next line that starts
//! at column 0 ends the entry. Anything else is still read correctly, only
//! in bigger pieces: a document that is not a List in this layout is one
//! piece, and a file with directives (`%`), document end markers (`...`) or
//! line breaks that are a lone CR, which the split does not follow, is read
//! whole.
//!
//! A document without content (only a `---`, blank lines or comments)
//! makes no piece. A List entry shorter than `MIN_OBJECT` bytes is an input
//! error: no object is that short. A document that short sends the file to
//! be read whole, since YAML may read it as nothing (`~`, or ` &a`: an
//! anchor on an empty node), which is skipped as an empty document is, and
//! reading it whole is what tells. So every piece stands for at least
//! `MIN_OBJECT` bytes of the file, and the
//! bookkeeping of a file's pieces (a `Piece`, then a `reuse::Item`, about
//! 64 bytes each) is at most about 8 bytes per byte of the file, whatever
//! it holds; a file of `---` or `-` lines cost 30 times its size.

use std::io::Read;

use anyhow::{Context as _, Result};

use xxhash_rust::xxh3::Xxh3;

use super::yaml;
use crate::{input, model::Fingerprint};

/// A run of bytes of the file, and the line it starts on (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
    pub line: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// One entry of a List's `items`: a YAML sequence of one object.
    ListEntry,
    /// A whole document: one object, a List in another layout, or nothing.
    Document,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    Objects {
        kind: PieceKind,
        span: Span,
        /// Where its first object starts (the line of the first key).
        line: usize,
        fingerprint: Fingerprint,
    },
    /// The top level of a List document around its entries: what comes
    /// before `items:` and what comes after the last entry. It must say
    /// `kind: ...List`.
    ListShell { header: Span, trailer: Span },
}

/// How a document is being read, line by line.
#[derive(Clone, Copy)]
enum Mode {
    /// Not (yet) a List in kubectl's layout.
    Plain,
    /// After `items:` at column 0, before its first entry.
    ItemsKey {
        offset: u64,
    },
    /// In a List's entries; `header` is what came before `items:`.
    Entries {
        header: Span,
        entry_start: (u64, usize),
    },
    Trailer {
        header: Span,
        trailer_start: (u64, usize),
    },
    /// Decided: one piece, whatever follows.
    Whole,
}

struct Splitter {
    pieces: Vec<Piece>,
    hasher: Xxh3,
    /// File offset up to which `hasher` has consumed the current piece.
    hashed_to: u64,
    seed: u64,
    mode: Mode,
    doc_start: (u64, usize),
    /// First line of the document that starts with content at column 0.
    doc_content_line: Option<usize>,
    /// The first List entry too short to be an object: its line and size.
    too_short: Option<(usize, u64)>,
    /// A document too short to be an object was found: the file is read
    /// whole.
    short_document: bool,
}

/// The fewest bytes a Kubernetes object takes: it has an `apiVersion`, a
/// `kind` and a `metadata.name` (`{kind: Pod, ...}` in JSON or flow style
/// is longer still).
const MIN_OBJECT: u64 = 16;

const CHUNK: usize = 1 << 20;

/// The pieces of YAML file `label`, in file order, or `None` when it uses
/// a YAML feature the split does not follow and must be read whole. `seed`
/// goes into every fingerprint: whatever else decides what an object
/// becomes. A piece too short to be an object is an input error.
pub fn split(label: &str, mut reader: impl Read, seed: u64) -> Result<Option<Vec<Piece>>> {
    let mut splitter = Splitter {
        pieces: Vec::new(),
        hasher: Xxh3::with_seed(seed),
        hashed_to: 0,
        seed,
        mode: Mode::Plain,
        doc_start: (0, 1),
        doc_content_line: None,
        too_short: None,
        short_document: false,
    };
    // `buffer[..filled]` is read and not yet split: the last line of the
    // chunk before, cut short, then the next chunk read. Zeroed once, and
    // grown only for a line longer than a chunk: `read_to_end` into the
    // same buffer reallocated it for every chunk, a fifth of a split.
    let mut buffer = vec![0u8; 2 * CHUNK];
    let mut filled = 0;
    // File offset of buffer[0], and the line number of the line it starts.
    let (mut base, mut line) = (0u64, 1usize);
    let mut eof = false;
    let mut first = true;
    while !eof {
        if buffer.len() < filled + CHUNK {
            buffer.resize(filled + CHUNK, 0);
        }
        let read = read_up_to(&mut reader, &mut buffer[filled..filled + CHUNK])
            .with_context(|| format!("cannot read {label}"))?;
        eof = read < CHUNK;
        filled += read;
        let buffer = &mut buffer[..filled];
        if first && buffer.starts_with(b"\xEF\xBB\xBF") {
            return Ok(None);
        }
        first = false;
        // Whole lines only, and at the end a last line without a newline.
        let mut start = 0;
        let last = (eof && buffer.last().is_some_and(|&b| b != b'\n')).then_some(buffer.len());
        // A CR that is not part of a CRLF is a line break to YAML, which
        // would count lines and see separators that the split does not:
        // the line that holds one cannot be split. Found once a chunk: a
        // search in every line was a fifth of splitting a file.
        let lone_cr = first_lone_cr(buffer);
        let line_end = |start: usize| match memchr::memchr(b'\n', &buffer[start..]) {
            Some(at) => Some(start + at + 1),
            None => last.filter(|&last| last > start),
        };
        while let Some(end) = line_end(start) {
            let text = &buffer[start..end];
            if lone_cr < end {
                return Ok(None);
            }
            let unparsed = splitter.unparsed();
            // Indented and empty lines never start or end a piece.
            let indented = matches!(text[0], b' ' | b'\n');
            // Most lines: indented, inside an object whose content started
            // (nothing to check, nothing `indented` would note), passed a
            // block at a time.
            if indented && !unparsed {
                let (to, lines) = indented_lines(&buffer[..buffer.len().min(lone_cr)], end);
                line += 1 + lines;
                start = to;
                continue;
            }
            if indented {
                splitter.indented(text, line);
            } else if !splitter.line(text, base + start as u64, line, buffer, base) {
                return Ok(None);
            }
            if unparsed || splitter.unparsed() {
                yaml::check_text(label, line, text)?;
            }
            splitter.check(label)?;
            if splitter.short_document {
                return Ok(None);
            }
            line += 1;
            start = end;
        }
        splitter.feed(&buffer[..start], base, base + start as u64);
        buffer.copy_within(start.., 0);
        filled -= start;
        base += start as u64;
    }
    splitter.end_document(base, line, &[], base);
    splitter.check(label)?;
    Ok((!splitter.short_document).then_some(splitter.pieces))
}

impl Splitter {
    /// An input error for the first List entry too short to be an object.
    fn check(&self, label: &str) -> Result<()> {
        let Some((line, len)) = self.too_short else { return Ok(()) };
        Err(input!(
            "{label}:{line}:1: a List entry of {len} bytes is too short to be a Kubernetes object (one \
             has apiVersion, kind and metadata.name)"
        ))
    }

    /// Adds a piece of objects, or notes that it is too short to be one.
    fn push(&mut self, kind: PieceKind, span: Span, line: usize, fingerprint: Fingerprint) {
        if span.len < MIN_OBJECT {
            match kind {
                PieceKind::ListEntry => _ = self.too_short.get_or_insert((line, span.len)),
                PieceKind::Document => self.short_document = true,
            }
        }
        self.pieces.push(Piece::Objects { kind, span, line, fingerprint });
    }

    /// Adds `buffer[..]` (starting at file offset `base`) up to file offset
    /// `to` to the current fingerprint.
    fn feed(&mut self, buffer: &[u8], base: u64, to: u64) {
        if to > self.hashed_to {
            let from = (self.hashed_to - base) as usize;
            self.hasher.update(&buffer[from..(to - base) as usize]);
            self.hashed_to = to;
        }
    }

    /// The fingerprint of the piece that ends at `to`; the next starts there.
    fn finish(&mut self, buffer: &[u8], base: u64, to: u64) -> Fingerprint {
        self.feed(buffer, base, to);
        let fingerprint = self.hasher.digest128();
        self.hasher.reset();
        fingerprint
    }

    /// Skips what lies between pieces (the `items:` line) from fingerprints.
    fn skip_to(&mut self, buffer: &[u8], base: u64, to: u64) {
        self.feed(buffer, base, to);
        self.hasher = Xxh3::with_seed(self.seed);
    }

    /// Whether the parser may never see the line: one before the content
    /// of a document (which may have none), the `items:` line and those up
    /// to the first entry. Such lines are checked by the split for what a
    /// read of the whole file refuses anywhere in it.
    fn unparsed(&self) -> bool {
        self.doc_content_line.is_none() || matches!(self.mode, Mode::ItemsKey { .. })
    }

    /// A line that starts with a space, or an empty one. Right after
    /// `items:`, where the split leaves out every line up to the first
    /// entry, only blank lines and comments may come: anything else is
    /// the value of `items`, so the document is not a List in kubectl's
    /// layout. Content that is all indented is content too.
    fn indented(&mut self, text: &[u8], line: usize) {
        if is_blank_or_comment(text) {
            return;
        }
        if matches!(self.mode, Mode::ItemsKey { .. }) {
            self.mode = Mode::Whole;
        }
        self.doc_content_line.get_or_insert(line);
    }

    /// A line that starts at column 0 with something other than a space or
    /// a newline. False: the file cannot be split.
    fn line(&mut self, text: &[u8], offset: u64, line: usize, buffer: &[u8], base: u64) -> bool {
        // A line starting with a tab may hold content too (`\tkind: x`).
        let content = !is_blank_or_comment(text);
        if text.starts_with(b"...") || text[0] == b'%' {
            return false;
        }
        if is_separator(text) {
            self.end_document(offset, line, buffer, base);
            self.doc_start = (offset, line);
            // `--- x`: the document's content starts on its separator.
            self.doc_content_line = (!is_blank_or_comment(&text[3..])).then_some(line);
            self.mode = Mode::Plain;
            return true;
        }
        if content && self.doc_content_line.is_none() {
            self.doc_content_line = Some(line);
        }
        match self.mode {
            Mode::Plain if text.trim_ascii_end() == b"items:" => self.mode = Mode::ItemsKey { offset },
            Mode::ItemsKey { offset: items } if is_entry(text) => {
                let header = self.span_from(self.doc_start, items);
                self.skip_to(buffer, base, offset);
                self.mode = Mode::Entries { header, entry_start: (offset, line) };
            }
            Mode::ItemsKey { .. } if !is_blank_or_comment(text) => self.mode = Mode::Whole,
            Mode::Entries { header, entry_start } if is_entry(text) || content => {
                self.end_entry(entry_start, offset, buffer, base);
                self.mode = if is_entry(text) {
                    Mode::Entries { header, entry_start: (offset, line) }
                } else {
                    Mode::Trailer { header, trailer_start: (offset, line) }
                };
            }
            _ => {}
        }
        true
    }

    fn span_from(&self, (offset, line): (u64, usize), end: u64) -> Span {
        Span { offset, len: end - offset, line }
    }

    fn end_entry(&mut self, start: (u64, usize), end: u64, buffer: &[u8], base: u64) {
        let span = self.span_from(start, end);
        let fingerprint = self.finish(buffer, base, end);
        self.push(PieceKind::ListEntry, span, span.line, fingerprint);
    }

    fn end_document(&mut self, end: u64, line: usize, buffer: &[u8], base: u64) {
        let (header, trailer_start) = match self.mode {
            Mode::Entries { header, entry_start } => {
                self.end_entry(entry_start, end, buffer, base);
                (header, (end, line))
            }
            Mode::Trailer { header, trailer_start } => (header, trailer_start),
            Mode::Plain | Mode::ItemsKey { .. } | Mode::Whole => {
                let span = self.span_from(self.doc_start, end);
                let fingerprint = self.finish(buffer, base, end);
                // One without content holds no object.
                if let Some(line) = self.doc_content_line {
                    self.push(PieceKind::Document, span, line, fingerprint);
                }
                return;
            }
        };
        let trailer = self.span_from(trailer_start, end);
        self.skip_to(buffer, base, end);
        self.pieces.push(Piece::ListShell { header, trailer });
    }
}

/// `---` alone or followed by a space: a new document.
fn is_separator(text: &[u8]) -> bool {
    text.starts_with(b"---") && matches!(text.get(3), None | Some(b' ' | b'\t' | b'\n' | b'\r'))
}

/// Where the first CR that is not part of a CRLF is in `text`, or
/// `usize::MAX`. One at the end of `text` counts: only a line at the end
/// of the file ends without a newline.
fn first_lone_cr(text: &[u8]) -> usize {
    memchr::memchr_iter(b'\r', text).find(|&at| text.get(at + 1) != Some(&b'\n')).unwrap_or(usize::MAX)
}

/// Where the indented lines that follow from `from` (a line start) end,
/// and how many there are: the start of the first line that is not
/// indented, or of one too close to the end of `text` to tell. A line at a
/// time was most of a split's time: this looks at 64 bytes at once where
/// the CPU has vector compares (`Block`), else at each line itself.
fn indented_lines(text: &[u8], from: usize) -> (usize, usize) {
    if !text.get(from).is_some_and(|b| matches!(b, b' ' | b'\n')) {
        return (from, 0);
    }
    #[cfg(target_arch = "x86_64")]
    return Block::indented_lines(text, from);
    #[cfg(not(target_arch = "x86_64"))]
    (from, 0)
}

/// 64 bytes of a text as bit masks, bit k for byte k: which are newlines,
/// and which are followed by a space or a newline (byte k + 1 is one).
#[cfg(target_arch = "x86_64")]
struct Block {
    newlines: u64,
    indented_next: u64,
}

#[cfg(target_arch = "x86_64")]
impl Block {
    const LEN: usize = 64;

    /// `indented_lines` from an indented line at `from`, a block at a time.
    fn indented_lines(text: &[u8], from: usize) -> (usize, usize) {
        let (mut at, mut lines, mut line_start) = (from, 0, from);
        while let Some(bytes) = text.get(at..at + Self::LEN + 1) {
            let block = Self::of(bytes);
            // A newline followed by a line that is not indented ends the run.
            let ends = block.newlines & !block.indented_next;
            if ends != 0 {
                let k = ends.trailing_zeros();
                lines += (block.newlines & (u64::MAX >> (63 - k))).count_ones() as usize;
                return (at + k as usize + 1, lines);
            }
            if block.newlines != 0 {
                lines += block.newlines.count_ones() as usize;
                line_start = at + (63 - block.newlines.leading_zeros() as usize) + 1;
            }
            at += Self::LEN;
        }
        (line_start, lines)
    }

    /// `bytes` holds `LEN + 1` bytes: the last only tells whether the
    /// line after a newline in the 64th byte is indented.
    fn of(bytes: &[u8]) -> Self {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        assert!(bytes.len() > Self::LEN);
        let (mut newlines, mut indented_next) = (0u64, 0u64);
        // SAFETY: SSE2 is part of x86_64; each load reads 16 bytes at
        // most 48 + 1 bytes into `bytes`, which holds 65 (asserted).
        unsafe {
            let (newline, space) = (_mm_set1_epi8(b'\n' as i8), _mm_set1_epi8(b' ' as i8));
            for lane in 0..Self::LEN / 16 {
                let here = _mm_loadu_si128(bytes.as_ptr().add(lane * 16).cast::<__m128i>());
                let next = _mm_loadu_si128(bytes.as_ptr().add(lane * 16 + 1).cast::<__m128i>());
                let is_newline = _mm_movemask_epi8(_mm_cmpeq_epi8(here, newline)) as u16;
                let next_indented = _mm_or_si128(_mm_cmpeq_epi8(next, newline), _mm_cmpeq_epi8(next, space));
                newlines |= u64::from(is_newline) << (lane * 16);
                indented_next |= u64::from(_mm_movemask_epi8(next_indented) as u16) << (lane * 16);
            }
        }
        Self { newlines, indented_next }
    }
}

/// Reads into `buffer` until it is full or the reader ends; how much it read.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buffer.len() {
        match reader.read(&mut buffer[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(read)
}

fn is_blank_or_comment(text: &[u8]) -> bool {
    let text = text.trim_ascii_start();
    text.is_empty() || text[0] == b'#'
}

/// `- ` at column 0: a new entry of a top-level sequence.
fn is_entry(text: &[u8]) -> bool {
    text.starts_with(b"- ") || text.trim_ascii_end() == b"-"
}

#[cfg(test)]
mod tests {
    use xxhash_rust::xxh3::xxh3_128_with_seed;

    use super::*;

    const LIST: &str = "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Service\n  spec:\n    note: |\n      a\n\n      b\n# comment\n- kind: Node\n  x: 1\nkind: List\nmetadata:\n  resourceVersion: \"\"\n";

    fn text(source: &str, span: Span) -> &str {
        &source[span.offset as usize..(span.offset + span.len) as usize]
    }

    fn objects(pieces: &[Piece]) -> Vec<(PieceKind, Span, usize, Fingerprint)> {
        pieces
            .iter()
            .filter_map(|piece| match *piece {
                Piece::Objects { kind, span, line, fingerprint } => Some((kind, span, line, fingerprint)),
                Piece::ListShell { .. } => None,
            })
            .collect()
    }

    /// Reads at most 7 bytes at a time: every line crosses reads.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            let n = buffer.len().min(7).min(self.0.len());
            buffer[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_kubectl_list_splits_into_its_entries_and_shell() {
        let pieces = split("f", LIST.as_bytes(), 7).unwrap().unwrap();
        let found = objects(&pieces);
        let texts: Vec<&str> = found.iter().map(|(_, span, ..)| text(LIST, *span)).collect();
        assert_eq!(
            texts,
            [
                "- apiVersion: v1\n  kind: Service\n  spec:\n    note: |\n      a\n\n      b\n# comment\n",
                "- kind: Node\n  x: 1\n"
            ]
        );
        assert_eq!(
            found.iter().map(|(kind, _, line, _)| (*kind, *line)).collect::<Vec<_>>(),
            [(PieceKind::ListEntry, 3), (PieceKind::ListEntry, 11)]
        );
        for (_, span, _, fingerprint) in &found {
            assert_eq!(*fingerprint, xxh3_128_with_seed(text(LIST, *span).as_bytes(), 7));
        }
        let Some(Piece::ListShell { header, trailer }) = pieces.last().copied() else {
            panic!("no shell in {pieces:?}")
        };
        assert_eq!(text(LIST, header), "apiVersion: v1\n");
        assert_eq!(text(LIST, trailer), "kind: List\nmetadata:\n  resourceVersion: \"\"\n");
        assert_eq!(trailer.line, 13);
    }

    #[test]
    fn reads_of_any_size_split_alike_and_the_seed_changes_every_fingerprint() {
        let big = LIST.replace("  x: 1\n", &"  x: 1\n".repeat(200_000));
        let whole = split("f", big.as_bytes(), 7).unwrap().unwrap();
        assert_eq!(split("f", Trickle(big.as_bytes()), 7).unwrap().unwrap(), whole);
        let reseeded = split("f", big.as_bytes(), 8).unwrap().unwrap();
        for (a, b) in objects(&whole).iter().zip(objects(&reseeded)) {
            assert_eq!(a.1, b.1);
            assert_ne!(a.3, b.3);
        }
        // A line longer than the buffer's two chunks grows it.
        let long = LIST.replace("  x: 1\n", &format!("  x: {}\n", "a".repeat(5 * CHUNK / 2)));
        let found = split("f", long.as_bytes(), 7).unwrap().unwrap();
        assert_eq!(split("f", Trickle(long.as_bytes()), 7).unwrap().unwrap(), found);
        let texts: Vec<&str> = objects(&found).iter().map(|(_, span, ..)| text(&long, *span)).collect();
        assert_eq!(texts.len(), 2);
        assert!(texts[1].starts_with("- kind: Node\n  x: aaa") && texts[1].ends_with("aaa\n"));
        assert_eq!(objects(&found)[1].2, 11, "the Node's line");
    }

    #[test]
    fn documents_are_pieces_and_other_layouts_stay_whole() {
        let stream = "---\n# first\nkind: Service\n---\n\n--- \nkind: Node\n  \n...\n";
        assert_eq!(split("f", stream.as_bytes(), 0).unwrap(), None, "`...` is not followed");
        let stream = "---\n# first\nkind: Service\n---\nkind: Node\nitems:\n  - a: 1\nx: 2\n";
        let found = objects(&split("f", stream.as_bytes(), 0).unwrap().unwrap());
        let texts: Vec<&str> = found.iter().map(|(_, span, ..)| text(stream, *span)).collect();
        assert_eq!(texts, ["---\n# first\nkind: Service\n", "---\nkind: Node\nitems:\n  - a: 1\nx: 2\n"]);
        assert_eq!(
            found.iter().map(|(kind, _, line, _)| (*kind, *line)).collect::<Vec<_>>(),
            [(PieceKind::Document, 3), (PieceKind::Document, 5)]
        );
        assert_eq!(split("f", &b"%YAML 1.2\n---\nkind: Node\n"[..], 0).unwrap(), None);
        assert_eq!(split("f", &b"# a\r---\nkind: Node\n"[..], 0).unwrap(), None, "a lone CR");
        assert!(split("f", &b"kind: Namespace\r\n---\r\nkind: Namespace\r\n"[..], 0).unwrap().is_some());
        // Only blank lines and comments may come between `items:` and its
        // first entry, which the split leaves out.
        for between in [" x\n", "\tx\n"] {
            let list = format!("kind: List\nitems:\n  # a comment\n\n{between}- kind: Node\n");
            let found = objects(&split("f", list.as_bytes(), 0).unwrap().unwrap());
            assert_eq!(found.len(), 1, "{between:?}");
            assert_eq!(found[0].0, PieceKind::Document, "{between:?}");
        }
        assert_eq!(split("f", &b"\xEF\xBB\xBFkind: Node\n"[..], 0).unwrap(), None);
        let json = r#"{"kind": "List", "items": [{"kind": "Node"}]}"#;
        let found = objects(&split("f", json.as_bytes(), 0).unwrap().unwrap());
        assert_eq!(found.len(), 1);
        assert_eq!(text(json, found[0].1), json);
    }

    #[test]
    fn empty_documents_make_no_piece_and_tiny_ones_are_errors() {
        let empty = "---\n---\n\n# nothing\n  # nothing\n--- \n---\n";
        assert_eq!(split("f", empty.as_bytes(), 0).unwrap(), Some(Vec::new()));
        // A document whose content is all indented, after a tab, or on its
        // `---` line is one.
        for (text, line) in [("---\n\tkind: Node # after a tab\n", 2), ("--- {kind: Node, a: b}\n", 1)] {
            let found = objects(&split("f", text.as_bytes(), 0).unwrap().unwrap());
            assert_eq!(found.iter().map(|piece| piece.2).collect::<Vec<_>>(), [line], "{text:?}");
        }
        let indented = "# a Service\n  ports:\n  - port: 80\n---\nkind: Node\nmetadata: {name: a}\n";
        let found = objects(&split("f", indented.as_bytes(), 0).unwrap().unwrap());
        assert_eq!(found.iter().map(|piece| piece.2).collect::<Vec<_>>(), [2, 5]);
        // A short document may be nothing: the file is read whole.
        for text in ["---\n---\nx: 1\n---\n", " &er", "~\n---\nkind: Node\nmetadata: {name: a}\n"] {
            assert!(split("f", text.as_bytes(), 0).unwrap().is_none(), "{text:?}");
        }
        let cases = [
            ("kind: List\nitems:\n-\n-\n", "f:3:1: a List entry of 2 bytes is too short"),
            (
                "kind: List\nitems:\n- kind: Namespace\n- {}\nkind: List\n",
                "f:4:1: a List entry of 5 bytes is too short",
            ),
        ];
        for (text, expected) in cases {
            let err = split("f", text.as_bytes(), 0).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{text:?}: {err}");
            assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_INPUT);
        }
    }

    #[test]
    fn what_no_piece_holds_is_checked_as_a_whole_read_checks_it() {
        let node = "- apiVersion: v1\n  kind: Node\n  metadata: {name: a}\n";
        let cases = [
            ("# a\x02\n".to_owned(), "f:1:4: character U+0002 is not allowed in YAML"),
            ("kind: Node\nmetadata: {name: a}\n---\n\n  # \x1b\n".to_owned(), "f:5:5: character U+001B"),
            (format!("kind: List\nitems:\n# \x01\n{node}"), "f:3:3: character U+0001"),
            (format!("kind: List\nitems:\x0c\n{node}"), "f:2:7: character U+000C"),
        ];
        let cases = cases.iter().map(|(text, expected)| (text.as_bytes(), *expected));
        for (text, expected) in cases.chain([(&b"# \xff\n"[..], "f:1:3: not valid UTF-8")]) {
            let err = split("f", text, 0).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{text:?}: {err}");
            assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_INPUT);
        }
        // Inside a piece they are the parser's to refuse.
        assert!(split("f", format!("kind: List\nitems:\n{node}# \x01\n").as_bytes(), 0).unwrap().is_some());
    }

    /// `indented_lines` a line at a time: the run of indented lines from
    /// `from` that each end before the end of `text` with a known next
    /// byte; the count is of the lines passed.
    fn indented_lines_one_by_one(text: &[u8], from: usize) -> (usize, usize) {
        let (mut at, mut lines) = (from, 0);
        while text.get(at).is_some_and(|b| matches!(b, b' ' | b'\n')) {
            match memchr::memchr(b'\n', &text[at..]) {
                Some(end) if at + end + 1 < text.len() => (at, lines) = (at + end + 1, lines + 1),
                _ => break,
            }
        }
        (at, lines)
    }

    #[test]
    fn runs_of_indented_lines_are_passed_as_a_line_at_a_time_passes_them() {
        let mut draws = crate::draws::Draws(0x5eed_1dea);
        let pieces: [&[u8]; 7] = [b"  a: 1\n", b"\n", b"    - x\n", b"- b\n", b"k: v\n", b"   ", b"xyz"];
        for _ in 0..3_000 {
            let mut text = Vec::new();
            while text.len() < draws.below(400) as usize {
                let piece = pieces[draws.below(pieces.len() as u64) as usize];
                // Mostly indented lines, long and short, as inside objects.
                let repeat = if piece[0] == b' ' { 1 + draws.below(20) as usize } else { 1 };
                for _ in 0..repeat {
                    text.extend_from_slice(piece);
                }
            }
            let line_starts = (0..text.len()).filter(|&at| at == 0 || text[at - 1] == b'\n');
            for from in line_starts {
                let (to, lines) = indented_lines(&text, from);
                let (exact_to, exact_lines) = indented_lines_one_by_one(&text, from);
                // Fewer lines where the blocks stop short of the end: the
                // caller goes on a line at a time from there.
                assert!(to <= exact_to && (to == 0 || text[to - 1] == b'\n'), "{text:?} from {from}");
                assert_eq!(text[from..to].iter().filter(|&&b| b == b'\n').count(), lines);
                // Exact where a block and the byte after it fit before the end.
                if exact_to + 64 + 1 < text.len() && cfg!(target_arch = "x86_64") {
                    assert_eq!((to, lines), (exact_to, exact_lines), "{text:?} from {from}");
                }
            }
        }
    }
}
