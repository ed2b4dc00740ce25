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
/// parse`): reads one line into `buf` (cleared first, without its newline), keeping at most
/// `max_line` bytes and skipping the rest of a longer line. `None` at end of input, else
/// whether the line was cut. Memory stays bounded by `max_line` plus the reader's buffer.
pub fn read_capped_line<R: std::io::BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max_line: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut truncated = false;
    let mut any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any.then_some(truncated));
        }
        any = true;
        let (part, used, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        let room = max_line.saturating_sub(buf.len());
        if part.len() > room {
            truncated = true;
        }
        buf.extend_from_slice(&part[..part.len().min(room)]);
        reader.consume(used);
        if done {
            return Ok(Some(truncated));
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

    #[test]
    fn blocking_reader_caps_lines_the_same_way() {
        let input: &[u8] = b"one\nthree-is-long\n\nfour";
        // A tiny reader buffer: lines span several fill_buf calls.
        let mut r = std::io::BufReader::with_capacity(2, input);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(cut) = read_capped_line(&mut r, &mut buf, 8).unwrap() {
            got.push((String::from_utf8(buf.clone()).unwrap(), cut));
        }
        let want = [
            ("one", false),
            ("three-is", true),
            ("", false),
            ("four", false),
        ];
        let want: Vec<_> = want.iter().map(|(s, c)| (s.to_string(), *c)).collect();
        assert_eq!(got, want);
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
