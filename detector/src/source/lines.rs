//! Splits a byte stream into lines with a hard cap on line length.
//!
//! Memory stays bounded by `max_line` plus one read chunk whatever the input: a line longer
//! than `max_line` keeps only its first `max_line` bytes, the rest is skipped, and the line is
//! delivered (marked truncated) when its newline arrives, so its end offset is exact and a
//! resume never starts in the middle of it.
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes asked for per read; also the smallest spare capacity kept in the buffer.
const READ_CHUNK: usize = 64 * 1024;

/// One complete line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Line {
    /// The line without its newline (at most `max_line` bytes).
    pub bytes: Bytes,
    /// The line was longer than `max_line` and was cut.
    pub truncated: bool,
    /// Stream offset just after this line's newline.
    pub end_offset: u64,
}

#[derive(Debug)]
pub(crate) struct LineSplitter {
    buf: BytesMut,
    max_line: usize,
    /// Stream offset of `buf[0]`.
    buf_offset: u64,
    /// How far `buf` is known to contain no newline (saves rescanning a growing partial line).
    scanned: usize,
    /// Inside an over-long line: its kept head, and whether we are skipping up to its newline.
    overlong: Option<Bytes>,
    /// Skip everything up to and including the next newline without emitting it (used when
    /// starting in the middle of a line).
    skip_first: bool,
}

impl LineSplitter {
    /// A splitter whose stream starts at `offset` (the file offset of the first byte read).
    pub fn new(max_line: usize, offset: u64) -> Self {
        LineSplitter {
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_line: max_line.max(1),
            buf_offset: offset,
            scanned: 0,
            overlong: None,
            skip_first: false,
        }
    }

    /// Drops the bytes up to the first newline: the stream starts mid-line.
    pub fn skip_to_next_line(&mut self) {
        self.skip_first = true;
    }

    /// Forgets everything buffered and restarts at `offset` (after a truncation).
    pub fn reset(&mut self, offset: u64) {
        *self = LineSplitter::new(self.max_line, offset);
    }

    /// Total bytes consumed from the stream so far (buffered ones included).
    pub fn read_offset(&self) -> u64 {
        self.buf_offset + self.buf.len() as u64
    }

    /// Whether a partial line (or a partial over-long line) is waiting for its end.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.overlong.is_some()
    }

    /// One read from `reader` into the buffer; `Ok(0)` is end of stream.
    pub async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        reader.read_buf(&mut self.buf).await
    }

    /// Appends bytes (for callers that read themselves, and tests).
    #[cfg(test)]
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete line, if the buffer holds one.
    pub fn next_line(&mut self) -> Option<Line> {
        loop {
            let found = memchr::memchr(b'\n', &self.buf[self.scanned..]).map(|i| self.scanned + i);
            let Some(nl) = found else {
                self.scanned = self.buf.len();
                self.cap_partial();
                return None;
            };
            let head = self.buf.split_to(nl).freeze();
            self.buf.advance(1);
            self.buf_offset += nl as u64 + 1;
            self.scanned = 0;
            if std::mem::take(&mut self.skip_first) {
                continue;
            }
            return Some(match self.overlong.take() {
                // The tail of an over-long line ends here; `head` is part of the skipped rest.
                Some(kept) => Line {
                    bytes: kept,
                    truncated: true,
                    end_offset: self.buf_offset,
                },
                None => self.capped(head),
            });
        }
    }

    /// A line that arrived whole in one read can still be too long.
    fn capped(&self, bytes: Bytes) -> Line {
        let truncated = bytes.len() > self.max_line;
        let bytes = if truncated {
            bytes.slice(..self.max_line)
        } else {
            bytes
        };
        Line {
            bytes,
            truncated,
            end_offset: self.buf_offset,
        }
    }

    /// Delivers a trailing partial line at end of stream (stdin, a retired rotated file).
    pub fn finish(&mut self) -> Option<Line> {
        if std::mem::take(&mut self.skip_first) {
            self.buf_offset += self.buf.len() as u64;
            self.buf.clear();
            self.overlong = None;
            return None;
        }
        if !self.has_partial() {
            return None;
        }
        let rest = self.buf.split().freeze();
        self.buf_offset += rest.len() as u64;
        self.scanned = 0;
        Some(match self.overlong.take() {
            Some(kept) => Line {
                bytes: kept,
                truncated: true,
                end_offset: self.buf_offset,
            },
            None => self.capped(rest),
        })
    }

    /// Keeps the buffered partial line within `max_line`: past it, keep the head (once) and
    /// drop the rest, still counting the dropped bytes in the offsets.
    fn cap_partial(&mut self) {
        let over = if self.overlong.is_some() || self.skip_first {
            self.buf.len()
        } else if self.buf.len() > self.max_line {
            self.overlong = Some(self.buf.split_to(self.max_line).freeze());
            self.buf_offset += self.max_line as u64;
            self.buf.len()
        } else {
            return;
        };
        self.buf.advance(over);
        self.buf_offset += over as u64;
        self.scanned = 0;
    }
}

/// The blocking twin of [`LineSplitter`] for commands that read files themselves (`detector
/// parse`): hands out each line (without its newline) as a slice of its own buffer, keeping at
/// most `max_line` bytes of a longer line and skipping the rest. Memory stays bounded by
/// `max_line` plus two read chunks whatever the input; a line is copied only when its start
/// has to move to the front of the buffer for the next read (once per chunk, not per line).
#[derive(Debug)]
pub struct CappedLines<R> {
    reader: R,
    buf: Vec<u8>,
    /// Unhanded bytes are `buf[start..end]`; `buf[start..scanned]` holds no newline.
    start: usize,
    scanned: usize,
    end: usize,
    max_line: usize,
    eof: bool,
    /// Inside an over-long line: its first `max_line` bytes, while the rest is skipped.
    overlong: Option<Vec<u8>>,
    /// The head of the last over-long line handed out (the caller borrows it).
    handed_head: Vec<u8>,
}

/// Bytes asked for per blocking read.
const BLOCKING_CHUNK: usize = 128 * 1024;

impl<R: std::io::Read> CappedLines<R> {
    pub fn new(reader: R, max_line: usize) -> Self {
        CappedLines {
            reader,
            buf: vec![0; 2 * BLOCKING_CHUNK],
            start: 0,
            scanned: 0,
            end: 0,
            max_line: max_line.max(1),
            eof: false,
            overlong: None,
            handed_head: Vec::new(),
        }
    }

    /// The next line and whether it was cut; `None` at end of input (a last line without
    /// newline is still a line).
    pub fn next_line(&mut self) -> std::io::Result<Option<(&[u8], bool)>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..self.end]) {
                let (from, nl) = (self.start, self.scanned + i);
                self.start = nl + 1;
                self.scanned = self.start;
                return Ok(Some(self.take(from, nl)));
            }
            self.scanned = self.end;
            if self.eof {
                if self.overlong.is_none() && self.start == self.end {
                    return Ok(None);
                }
                let (from, to) = (self.start, self.end);
                self.start = self.end;
                return Ok(Some(self.take(from, to)));
            }
            if self.overlong.is_none() && self.end - self.start > self.max_line {
                let head = self.buf[self.start..self.start + self.max_line].to_vec();
                self.overlong = Some(head);
            }
            if self.overlong.is_some() {
                // The rest of an over-long line is not kept.
                self.start = self.end;
                self.scanned = self.end;
            }
            self.fill()?;
        }
    }

    /// `buf[from..to]` as a line (or the kept head of the over-long line that ends there).
    fn take(&mut self, from: usize, to: usize) -> (&[u8], bool) {
        if let Some(head) = self.overlong.take() {
            self.handed_head = head;
            return (&self.handed_head, true);
        }
        let len = to - from;
        if len > self.max_line {
            (&self.buf[from..from + self.max_line], true)
        } else {
            (&self.buf[from..to], false)
        }
    }

    /// One read after the unhanded bytes, moved to the front first when room is short.
    fn fill(&mut self) -> std::io::Result<()> {
        if self.buf.len() - self.end < BLOCKING_CHUNK {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < BLOCKING_CHUNK {
                // Only a line up to `max_line` long gets here.
                self.buf.resize(self.end + BLOCKING_CHUNK, 0);
            }
        }
        loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &mut LineSplitter) -> Vec<(String, bool, u64)> {
        std::iter::from_fn(|| s.next_line())
            .map(|l| {
                (
                    String::from_utf8(l.bytes.to_vec()).unwrap(),
                    l.truncated,
                    l.end_offset,
                )
            })
            .collect()
    }

    #[test]
    fn splits_and_tracks_offsets_across_pushes() {
        let mut s = LineSplitter::new(100, 1000);
        s.push(b"ab\ncd");
        assert_eq!(lines(&mut s), vec![("ab".into(), false, 1003)]);
        assert!(s.has_partial());
        assert_eq!(s.read_offset(), 1005);
        s.push(b"e\n\nf\n");
        assert_eq!(
            lines(&mut s),
            vec![
                ("cde".into(), false, 1007),
                ("".into(), false, 1008),
                ("f".into(), false, 1010)
            ]
        );
        assert!(!s.has_partial());
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn overlong_line_is_cut_and_delivered_at_its_newline() {
        let mut s = LineSplitter::new(4, 0);
        s.push(b"0123456789");
        assert_eq!(lines(&mut s), vec![]);
        s.push(b"abcdef");
        assert_eq!(lines(&mut s), vec![]);
        // Memory stays bounded while the line keeps growing.
        assert!(s.buf.len() <= 4);
        s.push(b"xyz\nok\n");
        assert_eq!(
            lines(&mut s),
            vec![("0123".into(), true, 20), ("ok".into(), false, 23)]
        );
    }

    #[test]
    fn overlong_line_exactly_at_the_cap() {
        let mut s = LineSplitter::new(4, 0);
        s.push(b"0123\n01234\n");
        assert_eq!(
            lines(&mut s),
            vec![("0123".into(), false, 5), ("0123".into(), true, 11)]
        );
    }

    #[test]
    fn finish_returns_the_trailing_partial() {
        let mut s = LineSplitter::new(4, 0);
        s.push(b"a\nbc");
        assert_eq!(lines(&mut s), vec![("a".into(), false, 2)]);
        let last = s.finish().unwrap();
        assert_eq!(
            (&last.bytes[..], last.truncated, last.end_offset),
            (&b"bc"[..], false, 4)
        );
        s.push(b"toolong");
        assert_eq!(lines(&mut s), vec![]);
        let last = s.finish().unwrap();
        assert_eq!(
            (&last.bytes[..], last.truncated, last.end_offset),
            (&b"tool"[..], true, 11)
        );
    }

    #[test]
    fn skip_to_next_line_drops_the_first_fragment_only() {
        let mut s = LineSplitter::new(4, 50);
        s.skip_to_next_line();
        s.push(b"tail of a very long fragment");
        assert_eq!(lines(&mut s), vec![]);
        s.push(b" more\nnext\n");
        assert_eq!(lines(&mut s), vec![("next".into(), false, 89)]);
    }

    /// A reader that hands out at most `step` bytes per read, so lines span reads.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn blocking_lines(data: &[u8], step: usize, max_line: usize) -> Vec<(String, bool)> {
        let mut r = CappedLines::new(Trickle { data, step }, max_line);
        let mut got = Vec::new();
        while let Some((line, cut)) = r.next_line().unwrap() {
            got.push((String::from_utf8(line.to_vec()).unwrap(), cut));
        }
        got
    }

    #[test]
    fn blocking_reader_caps_lines_the_same_way() {
        let input: &[u8] = b"one\nthree-is-long\n\nexactly8\nnine-long\nfour";
        let want = [
            ("one", false),
            ("three-is", true),
            ("", false),
            ("exactly8", false),
            ("nine-lon", true),
            ("four", false),
        ];
        let want: Vec<_> = want.iter().map(|(s, c)| (s.to_string(), *c)).collect();
        // Tiny reads: lines span several reads; and everything in one read.
        for step in [1, 2, 3, 7, 1 << 20] {
            assert_eq!(blocking_lines(input, step, 8), want, "step {step}");
        }
        assert_eq!(blocking_lines(b"", 1, 8), vec![]);
        assert_eq!(blocking_lines(b"\n", 1, 8), vec![(String::new(), false)]);
    }

    #[test]
    fn blocking_reader_skips_an_overlong_line_across_many_reads() {
        // Far longer than the reader's buffer: memory stays bounded, the head is kept, the
        // lines around it are whole.
        let long = vec![b'x'; 5 * BLOCKING_CHUNK + 17];
        let mut input = b"before\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nafter\n");
        input.extend_from_slice(&long);
        let max = BLOCKING_CHUNK + 5;
        let got = blocking_lines(&input, BLOCKING_CHUNK / 3, max);
        let head = "x".repeat(max);
        let want = vec![
            ("before".to_string(), false),
            (head.clone(), true),
            ("after".to_string(), false),
            (head, true),
        ];
        assert_eq!(got, want);
        let mut r = CappedLines::new(
            Trickle {
                data: &input,
                step: 1 << 20,
            },
            max,
        );
        while r.next_line().unwrap().is_some() {
            assert!(r.buf.len() <= max + 3 * BLOCKING_CHUNK, "{}", r.buf.len());
        }
    }

    #[test]
    fn reset_forgets_buffered_bytes() {
        let mut s = LineSplitter::new(10, 0);
        s.push(b"partial");
        s.reset(0);
        assert!(!s.has_partial());
        s.push(b"new\n");
        assert_eq!(lines(&mut s), vec![("new".into(), false, 4)]);
    }
}
