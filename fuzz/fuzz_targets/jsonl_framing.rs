//! JSONL framing of any byte stream (partial lines, CRLF, BOM, lines over the limit), read in any
//! pieces. Properties:
//! - lines are contiguous: each starts where the one before ended, the first at 0;
//! - a complete line holds no `\n`, is at most `max_line` bytes, and is the stream's bytes at its
//!   offsets less the `\n`, a `\r` before it and a BOM at offset 0;
//! - a line is oversize exactly when those bytes are over `max_line`;
//! - the lines do not depend on how the reads were split.

#![no_main]

use std::io::Read;

use bqsync::sources::jsonl::{frame_stream, Framed, FramedContent};
use libfuzzer_sys::fuzz_target;

/// A reader that hands out its bytes in pieces of the given sizes (cycled).
struct Pieces<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    next: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let size = self.sizes.get(self.next % self.sizes.len().max(1)).map_or(usize::MAX, |s| *s as usize + 1);
        self.next += 1;
        let n = size.min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// What a terminated line's bytes are, once trimmed as the source trims them.
fn trimmed(start: u64, bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if start == 0 {
        bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes)
    } else {
        bytes
    }
}

fn check(data: &[u8], max_line: usize, lines: &[Framed]) {
    let mut offset = 0u64;
    for line in lines {
        assert_eq!(line.start_offset, offset, "contiguous lines");
        let (start, end) = (line.start_offset as usize, line.end_offset as usize);
        match &line.content {
            FramedContent::Complete(bytes) => {
                assert_eq!(data[end - 1], b'\n');
                let expected = trimmed(line.start_offset, &data[start..end - 1]);
                assert_eq!(bytes.as_slice(), expected, "a complete line is its bytes, trimmed");
                assert!(bytes.len() <= max_line, "a complete line within max_line");
            }
            FramedContent::Oversize { .. } => {
                assert_eq!(data[end - 1], b'\n');
                let expected = trimmed(line.start_offset, &data[start..end - 1]);
                assert!(expected.len() > max_line, "oversize only over max_line ({} bytes)", expected.len());
            }
            FramedContent::Unterminated(_) => {
                assert_eq!(end, data.len(), "only the stream's end is unterminated");
                assert!(!data[start..].contains(&b'\n'));
            }
        }
        offset = line.end_offset;
    }
    // Everything up to the last newline is framed.
    let last_newline = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i as u64 + 1);
    assert!(offset >= last_newline, "every terminated line is framed");
}

/// Lines compared without the oversize sample (its length depends on the reads, by design).
fn shape(lines: &[Framed]) -> Vec<(u64, u64, Option<&[u8]>)> {
    lines
        .iter()
        .map(|l| match &l.content {
            FramedContent::Complete(b) | FramedContent::Unterminated(b) => {
                (l.start_offset, l.end_offset, Some(b.as_slice()))
            }
            FramedContent::Oversize { .. } => (l.start_offset, l.end_offset, None),
        })
        .collect()
}

fuzz_target!(|input: &[u8]| {
    let Some((&limit, rest)) = input.split_first() else { return };
    let Some((&pieces, rest)) = rest.split_first() else { return };
    let max_line = limit as usize % 64 + 1;
    let split = (pieces as usize % 8).min(rest.len());
    let (sizes, data) = rest.split_at(split);
    let whole = frame_stream(data, max_line).unwrap();
    check(data, max_line, &whole);
    let pieced = frame_stream(Pieces { data, sizes, next: 0 }, max_line).unwrap();
    check(data, max_line, &pieced);
    assert_eq!(shape(&whole), shape(&pieced), "the same lines whatever the reads");
});
