//! `sync --max-input-size`: the most bytes balctl reads from one input (a
//! file, a FIFO, standard input), so that what it is given cannot grow its
//! memory without bound (`yes | balctl sync -f -`). A regular file over the
//! limit is refused by its size before it is read; everything is read
//! through a reader that stops one byte past the limit, so that a growing
//! file, a FIFO or stdin is refused when it gets there.
//!
//! The same reader refuses an input it read nothing from: an empty input is
//! one being written (`error::EmptyInput`), never "no objects". Checked on
//! the bytes read, not on a size seen before, so a file truncated between
//! the two is caught too.

use std::{fmt, io::Read, str::FromStr};

use anyhow::Result;

use crate::{error::EmptyInput, input};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLimit {
    pub bytes: u64,
}

impl Default for InputLimit {
    fn default() -> Self {
        Self { bytes: GIB }
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Suffixes, as GNU tools (`head -c`, `truncate -s`) and Kubernetes
/// quantities read them: K, M, G, T and Ki.., KiB.. are powers of 1024,
/// KB, MB.. powers of 1000.
const UNITS: [(&str, u64); 16] = [
    ("K", KIB),
    ("Ki", KIB),
    ("KiB", KIB),
    ("KB", 1000),
    ("M", MIB),
    ("Mi", MIB),
    ("MiB", MIB),
    ("MB", 1000 * 1000),
    ("G", GIB),
    ("Gi", GIB),
    ("GiB", GIB),
    ("GB", 1000 * 1000 * 1000),
    ("T", TIB),
    ("Ti", TIB),
    ("TiB", TIB),
    ("TB", 1000 * 1000 * 1000 * 1000),
];

impl FromStr for InputLimit {
    type Err = String;

    /// Bytes (`1048576`), or a number with a unit (`512M`, `1G`, `1GiB`).
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(digits);
        let unit = unit.trim_start();
        let multiple = match unit {
            "" | "B" => Some(1),
            unit => UNITS.iter().find(|(name, _)| *name == unit).map(|&(_, multiple)| multiple),
        };
        let bytes = match (number.parse::<u64>(), multiple) {
            (Ok(number), Some(multiple)) => number.checked_mul(multiple),
            _ => {
                return Err(format!(
                    "`{text}` is not a size: bytes, or a number with K, M, G or T (powers of 1024; also \
                     KiB.., Ki..), or KB, MB, GB, TB (powers of 1000), e.g. 512M or 1GiB"
                ));
            }
        };
        match bytes {
            Some(0) => Err("the input size limit must be at least 1 byte".to_owned()),
            Some(bytes) => Ok(Self { bytes }),
            None => Err(format!("`{text}` is too large a size")),
        }
    }
}

impl fmt::Display for InputLimit {
    /// In the biggest binary unit that divides it, e.g. `1 GiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.bytes;
        match [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")]
            .into_iter()
            .find(|(unit, _)| bytes.is_multiple_of(*unit))
        {
            Some((unit, name)) => write!(f, "{} {name}", bytes / unit),
            None => write!(f, "{bytes} bytes"),
        }
    }
}

impl InputLimit {
    /// The error for input `label`, which is larger than the limit.
    pub fn exceeded(self, label: &str) -> anyhow::Error {
        input!(
            "{label}: larger than --max-input-size {self}; split it into several files, or raise the \
             limit with --max-input-size (e.g. --max-input-size 4G)"
        )
    }

    /// Refuses a file whose size, `len` bytes, is over the limit.
    pub fn check_len(self, label: &str, len: u64) -> Result<()> {
        if len > self.bytes { Err(self.exceeded(label)) } else { Ok(()) }
    }

    /// `reader` stopped one byte past the limit: what it gave is too much
    /// when `Capped::over` says so.
    pub fn cap<R: Read>(self, reader: R) -> Capped<R> {
        Capped { inner: reader.take(self.bytes + 1), limit: self }
    }

    /// All of `reader`, the input `label`, if it is not over the limit.
    ///
    /// Read in chunks joined at the end, each freed as it is copied, so
    /// the memory an input of unknown length (stdin, a FIFO) takes stays
    /// about its length: one buffer grown as it fills would be copied at
    /// every doubling, and mimalloc (balctl's allocator) copies where
    /// glibc remaps, holding the old and the new buffer at once: 2 GB to
    /// refuse a 1 GiB stdin.
    pub fn read_all(self, label: &str, reader: impl Read) -> Result<Vec<u8>> {
        const CHUNK: usize = 16 << 20;
        let mut capped = self.cap(reader);
        let mut chunks = Vec::new();
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            (&mut capped)
                .take(CHUNK as u64)
                .read_to_end(&mut chunk)
                .map_err(|e| anyhow::anyhow!("cannot read {label}: {e}"))?;
            let last = chunk.len() < CHUNK;
            chunks.push(chunk);
            if last {
                break;
            }
        }
        capped.check(label)?;
        if chunks.len() == 1 {
            return Ok(chunks.pop().unwrap_or_default());
        }
        let mut bytes = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
        for chunk in chunks {
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

/// A reader that gives at most one byte more than the limit.
pub struct Capped<R> {
    inner: std::io::Take<R>,
    limit: InputLimit,
}

impl<R> Capped<R> {
    /// Refuses the input `label` if more than the limit was read from it,
    /// or nothing at all.
    pub fn check(&self, label: &str) -> Result<()> {
        match self.inner.limit() {
            0 => Err(self.limit.exceeded(label)),
            left if left == self.limit.bytes + 1 => Err(EmptyInput { label: label.to_owned() }.into()),
            _ => Ok(()),
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_print_in_binary_ones() {
        let parse = |text: &str| text.parse::<InputLimit>().map(|limit| limit.bytes);
        assert_eq!(parse("1048576"), Ok(MIB));
        assert_eq!(parse("512M"), Ok(512 * MIB));
        assert_eq!(parse("1G"), Ok(GIB));
        assert_eq!(parse("1GiB"), Ok(GIB));
        assert_eq!(parse("1Gi"), Ok(GIB));
        assert_eq!(parse("2 GB"), Ok(2_000_000_000));
        assert_eq!(parse("100B"), Ok(100));
        for bad in ["", "G", "1.5G", "1X", "-1", "0", "99999999999T"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(InputLimit::default().to_string(), "1 GiB");
        assert_eq!(InputLimit { bytes: 512 * MIB }.to_string(), "512 MiB");
        assert_eq!(InputLimit { bytes: 1000 }.to_string(), "1000 bytes");
    }

    #[test]
    fn inputs_of_several_chunks_are_joined_in_order() {
        let input: Vec<u8> = (0..40_000_000u32).map(|i| (i % 251) as u8).collect();
        let limit = InputLimit { bytes: 64 * MIB };
        assert_eq!(limit.read_all("f", &input[..]).unwrap(), input);
        // Exactly two chunks, and the empty read that ends them.
        let exact = &input[..32 << 20];
        assert_eq!(limit.read_all("f", exact).unwrap(), exact);
    }

    #[test]
    fn reading_stops_one_byte_past_the_limit() {
        let limit = InputLimit { bytes: 10 };
        assert_eq!(limit.read_all("f", &b"0123456789"[..]).unwrap(), b"0123456789");
        let endless = std::io::repeat(b'y');
        let err = limit.read_all("<stdin>", endless).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_INPUT);
        assert!(err.to_string().starts_with("<stdin>: larger than --max-input-size 10 bytes;"), "{err}");
        assert!(limit.check_len("f", 10).is_ok() && limit.check_len("f", 11).is_err());
    }

    #[test]
    fn nothing_read_is_an_empty_input() {
        let limit = InputLimit { bytes: 10 };
        let err = limit.read_all("f", &b""[..]).unwrap_err();
        assert!(err.is::<EmptyInput>(), "{err}");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_INPUT);
        assert_eq!(limit.read_all("f", &b"#"[..]).unwrap(), b"#");
    }
}
