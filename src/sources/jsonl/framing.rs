//! JSONL framing: complete lines only, with bounded memory for over-long ones; BOM and CRLF.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use super::OVERSIZE_SAMPLE_BYTES;

/// A line found by [`LineReader`]; offsets are relative to where reading started.
pub(super) struct Line<'a> {
    pub(super) start_offset: u64,
    pub(super) end_offset: u64,
    pub(super) content: LineContent<'a>,
}

pub(super) enum LineContent<'a> {
    /// The line without its `\n`, `\r\n` or a leading BOM.
    Complete(&'a [u8]),
    Oversize {
        sample: &'a [u8],
        total_len: u64,
    },
}

/// Splits a byte stream into complete lines with bounded memory: a line longer than `max_line` is
/// skipped to its newline and reported as oversize with a sample.
pub(super) struct LineReader {
    pub(super) buffer: Vec<u8>,
    /// Valid bytes in `buffer`.
    pub(super) filled: usize,
    /// Start of the unconsumed part of `buffer`.
    pub(super) position: usize,
    /// Stream offset (relative to the start) of `buffer[0]`.
    pub(super) buffer_offset: u64,
    pub(super) max_line: usize,
    pub(super) oversize_sample: Vec<u8>,
    pub(super) at_eof: bool,
}

pub(super) const READ_CHUNK: usize = 1 << 20;

impl LineReader {
    pub(super) fn new(max_line: usize) -> LineReader {
        LineReader {
            buffer: Vec::new(),
            filled: 0,
            position: 0,
            buffer_offset: 0,
            max_line,
            oversize_sample: Vec::new(),
            at_eof: false,
        }
    }

    /// Bytes consumed as complete lines so far (relative to the start of reading).
    pub(super) fn consumed(&self) -> u64 {
        self.buffer_offset + self.position as u64
    }

    /// Reads more input; false at end of file.
    pub(super) fn fill(&mut self, file: &mut impl Read) -> std::io::Result<bool> {
        if self.at_eof {
            return Ok(false);
        }
        if self.position > 0 {
            self.buffer.copy_within(self.position..self.filled, 0);
            self.buffer_offset += self.position as u64;
            self.filled -= self.position;
            self.position = 0;
        }
        if self.buffer.len() < self.filled + READ_CHUNK {
            self.buffer.resize(self.filled + READ_CHUNK, 0);
        }
        let n = file.read(&mut self.buffer[self.filled..])?;
        self.filled += n;
        if n == 0 {
            self.at_eof = true;
        }
        Ok(n > 0)
    }

    pub(super) fn next_line(&mut self, file: &mut impl Read) -> std::io::Result<Option<Line<'_>>> {
        let mut searched = self.position;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buffer[searched..self.filled]) {
                let newline = searched + i;
                let start = self.position;
                self.position = newline + 1;
                let start_offset = self.buffer_offset + start as u64;
                let end_offset = self.buffer_offset + self.position as u64;
                let content = trim_line(start_offset, &self.buffer[start..newline]);
                if content.len() > self.max_line {
                    self.oversize_sample.clear();
                    self.oversize_sample.extend_from_slice(&content[..OVERSIZE_SAMPLE_BYTES.min(content.len())]);
                    return Ok(Some(Line {
                        start_offset,
                        end_offset,
                        content: LineContent::Oversize {
                            sample: &self.oversize_sample,
                            total_len: content.len() as u64,
                        },
                    }));
                }
                return Ok(Some(Line { start_offset, end_offset, content: LineContent::Complete(content) }));
            }
            searched = self.filled;
            let pending = self.filled - self.position;
            // What trimming may take off beside the line: a `\r`, and a BOM on the stream's first line
            // (without that allowance, a first line within the limit was reported oversize when its
            // bytes came in pieces: found by the fuzz target).
            let bom = if self.buffer_offset + self.position as u64 == 0 { 3 } else { 0 };
            if pending > self.max_line + 1 + bom {
                return self.skip_oversize(file);
            }
            let before = self.position;
            if !self.fill(file)? {
                return Ok(None); // A half-written last line waits for its newline.
            }
            searched -= before;
        }
    }

    /// Whether the file was read to its end and bytes without a newline follow the last line.
    pub(super) fn has_unterminated(&self) -> bool {
        self.at_eof && self.position < self.filled
    }

    /// The bytes after the last newline, taken as a final line (for writers that never end their last
    /// line), with their start offset; None unless [`LineReader::has_unterminated`].
    pub(super) fn take_unterminated(&mut self) -> Option<(u64, &[u8])> {
        if !self.has_unterminated() {
            return None;
        }
        let start = self.position;
        self.position = self.filled;
        let start_offset = self.buffer_offset + start as u64;
        Some((start_offset, trim_line(start_offset, &self.buffer[start..self.filled])))
    }

    /// Skips an over-long line without holding it in memory; None when its newline has not come yet.
    pub(super) fn skip_oversize(&mut self, file: &mut impl Read) -> std::io::Result<Option<Line<'_>>> {
        let start_offset = self.buffer_offset + self.position as u64;
        self.oversize_sample.clear();
        self.oversize_sample
            .extend_from_slice(&self.buffer[self.position..self.filled.min(self.position + OVERSIZE_SAMPLE_BYTES)]);
        let mut scan_from = self.position;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buffer[scan_from..self.filled]) {
                let newline = scan_from + i;
                self.position = newline + 1;
                let end_offset = self.buffer_offset + self.position as u64;
                return Ok(Some(Line {
                    start_offset,
                    end_offset,
                    content: LineContent::Oversize {
                        sample: &self.oversize_sample,
                        total_len: end_offset - start_offset - 1,
                    },
                }));
            }
            // Drop what was scanned and read on.
            self.buffer_offset += self.filled as u64;
            self.filled = 0;
            self.position = 0;
            if !self.fill(file)? {
                // The long line is not complete yet: report nothing; consumed() stays at its start.
                self.buffer_offset = start_offset;
                return Ok(None);
            }
            scan_from = 0;
        }
    }
}

/// One line of [`frame_stream`]: where it starts and ends in the stream, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    pub start_offset: u64,
    /// Just past its `\n` (for the unterminated last line: the end of the stream).
    pub end_offset: u64,
    pub content: FramedContent,
}

/// What a [`Framed`] line holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramedContent {
    /// The line without its `\n`, `\r\n` or a leading BOM.
    Complete(Vec<u8>),
    /// A line over `max_line` bytes: its first bytes and its length.
    Oversize { sample: Vec<u8>, total_len: u64 },
    /// Bytes after the last newline (a writer still writing, or one that never ends its last line).
    Unterminated(Vec<u8>),
}

/// Frames a whole stream the way the JSONL source does, reading it through `reader` in whatever
/// pieces it returns. The result must not depend on those pieces (the fuzz target checks it).
pub fn frame_stream(mut reader: impl Read, max_line: usize) -> std::io::Result<Vec<Framed>> {
    let mut lines = Vec::new();
    let mut framing = LineReader::new(max_line);
    while let Some(line) = framing.next_line(&mut reader)? {
        let content = match line.content {
            LineContent::Complete(bytes) => FramedContent::Complete(bytes.to_vec()),
            LineContent::Oversize { sample, total_len } => {
                FramedContent::Oversize { sample: sample.to_vec(), total_len }
            }
        };
        lines.push(Framed { start_offset: line.start_offset, end_offset: line.end_offset, content });
    }
    let end = framing.buffer_offset + framing.filled as u64;
    if let Some((start_offset, bytes)) = framing.take_unterminated() {
        lines.push(Framed { start_offset, end_offset: end, content: FramedContent::Unterminated(bytes.to_vec()) });
    }
    Ok(lines)
}

/// The UTF-16 flavour of a line from a UTF-16 file: a byte-order mark, or NUL bytes in a third or
/// more of it (ASCII text in UTF-16 is every other byte NUL; UTF-8 text has none).
pub(super) fn utf16_encoding(line: &[u8]) -> Option<&'static str> {
    match line {
        [0xFF, 0xFE, ..] => Some("UTF-16LE"),
        [0xFE, 0xFF, ..] => Some("UTF-16BE"),
        _ if line.len() >= 4 && memchr::memchr_iter(0, line).count() * 3 >= line.len() => Some("UTF-16"),
        _ => None,
    }
}

/// Lines (newlines) in the first `len` bytes of the file.
pub(super) fn count_lines(file: &mut File, len: u64) -> std::io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut prefix = file.take(len);
    let mut buffer = vec![0u8; 1 << 20];
    let mut lines = 0;
    loop {
        match prefix.read(&mut buffer)? {
            0 => return Ok(lines),
            n => lines += memchr::memchr_iter(b'\n', &buffer[..n]).count() as u64,
        }
    }
}

/// A line's content without its `\r` (CRLF endings) and, on the file's first line, a UTF-8 BOM.
fn trim_line(start_offset: u64, line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match start_offset {
        0 => line.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(line),
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader handing out one byte per read, as a file still being written can.
    struct ByteAtATime<'a>(&'a [u8]);

    impl Read for ByteAtATime<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else { return Ok(0) };
            out[0] = *first;
            self.0 = rest;
            Ok(1)
        }
    }

    /// Fuzz finding: a BOM-prefixed first line within the limit, read in pieces, was reported
    /// oversize (the BOM counted against `max_line`).
    #[test]
    fn a_first_line_with_a_bom_read_in_pieces_is_within_the_limit() {
        let data = b"\xEF\xBB\xBFabc\r\nabcd\nabcde\n";
        let expected = [FramedContent::Complete(b"abc".to_vec()), FramedContent::Complete(b"abcd".to_vec())];
        for lines in [frame_stream(&data[..], 4).unwrap(), frame_stream(ByteAtATime(data), 4).unwrap()] {
            let contents: Vec<_> = lines.iter().map(|l| l.content.clone()).collect();
            assert_eq!(contents[..2], expected);
            assert!(matches!(contents[2], FramedContent::Oversize { total_len: 5, .. }), "{contents:?}");
        }
    }
    use std::io::{Seek, SeekFrom, Write};

    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file
    }

    /// (start, end, content or oversize length) of one line.
    type FoundLine = (u64, u64, Result<Vec<u8>, u64>);

    /// Every line the reader finds, and the bytes it consumed.
    fn lines(bytes: &[u8], max_line: usize) -> (Vec<FoundLine>, u64) {
        let mut file = file_with(bytes);
        let mut reader = LineReader::new(max_line);
        let mut found = Vec::new();
        while let Some(line) = reader.next_line(&mut file).unwrap() {
            let content = match line.content {
                LineContent::Complete(c) => Ok(c.to_vec()),
                LineContent::Oversize { total_len, sample } => {
                    assert!(sample.len() <= OVERSIZE_SAMPLE_BYTES);
                    Err(total_len)
                }
            };
            found.push((line.start_offset, line.end_offset, content));
        }
        (found, reader.consumed())
    }

    #[test]
    fn complete_lines_only_with_crlf_and_bom() {
        let (found, consumed) = lines(b"\xEF\xBB\xBFa\r\nbb\n\nhalf", 100);
        let contents: Vec<_> = found.iter().map(|(_, _, c)| c.clone().unwrap()).collect();
        assert_eq!(contents, vec![b"a".to_vec(), b"bb".to_vec(), b"".to_vec()]);
        assert_eq!(consumed, 10, "the half-written last line is not consumed");
    }

    #[test]
    fn utf16_lines_are_named_as_such_and_utf8_ones_are_not() {
        assert_eq!(utf16_encoding(b"\xFF\xFE{\0}\0"), Some("UTF-16LE"));
        assert_eq!(utf16_encoding(b"\xFE\xFF\0{\0}"), Some("UTF-16BE"));
        assert_eq!(utf16_encoding(b"\0{\0\"\0a\0\"\0:\0\x31\0}"), Some("UTF-16"));
        assert_eq!(utf16_encoding("{\"name\":\"Zoë\"}".as_bytes()), None);
    }

    #[test]
    fn lines_before_an_offset_are_counted() {
        let mut file = file_with(b"a\nb\n\nccc\nd");
        assert_eq!(count_lines(&mut file, 0).unwrap(), 0);
        assert_eq!(count_lines(&mut file, 4).unwrap(), 2);
        assert_eq!(count_lines(&mut file, 5).unwrap(), 3);
        assert_eq!(count_lines(&mut file, 11).unwrap(), 4);
    }

    #[test]
    fn an_unterminated_last_line_is_taken_only_when_asked() {
        let mut file = file_with(b"a\nlast\r");
        let mut reader = LineReader::new(100);
        assert!(reader.next_line(&mut file).unwrap().is_some());
        assert!(reader.next_line(&mut file).unwrap().is_none());
        assert_eq!(reader.consumed(), 2);
        assert_eq!(reader.take_unterminated(), Some((2, &b"last"[..])));
        assert_eq!(reader.consumed(), 7);
        assert!(reader.take_unterminated().is_none(), "taken once");
    }

    #[test]
    fn a_line_longer_than_the_read_buffer_is_skipped_with_its_length() {
        let long = vec![b'x'; READ_CHUNK * 2 + 17];
        let mut bytes = b"ok\n".to_vec();
        bytes.extend_from_slice(&long);
        bytes.extend_from_slice(b"\nnext\n");
        let (found, consumed) = lines(&bytes, 1000);
        assert_eq!(found.len(), 3);
        assert_eq!(found[1].2, Err(long.len() as u64));
        assert_eq!((found[1].0, found[1].1), (3, 3 + long.len() as u64 + 1));
        assert_eq!(found[2].2, Ok(b"next".to_vec()));
        assert_eq!(consumed, bytes.len() as u64);
    }

    #[test]
    fn an_unfinished_long_line_waits_at_its_start() {
        let mut bytes = b"ok\n".to_vec();
        bytes.extend_from_slice(&vec![b'y'; READ_CHUNK + 5]);
        let (found, consumed) = lines(&bytes, 1000);
        assert_eq!(found.len(), 1);
        assert_eq!(consumed, 3, "nothing past the start of the unfinished line is consumed");
    }
}
