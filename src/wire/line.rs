//! The line transport: one frame per `\n`-terminated line (a `\r` before the `\n` is
//! dropped, blank lines are skipped).
//!
//! [`LineReader`] is the connection's read buffer: bytes go in as they arrive, complete
//! frames come out, and only a partial frame is ever kept. It remembers how far it has
//! already searched for a newline, so a frame trickling in byte by byte costs linear, not
//! quadratic, time; and it refuses to hold more than the frame limit.

/// Framing failures. The only one a line can cause is being too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A frame (complete or still arriving) is longer than the limit.
    TooLarge,
}

/// Buffer for a line-protocol connection's unparsed input.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte.
    start: usize,
    /// Bytes in `buf[start..scanned]` are known to hold no `\n`.
    scanned: usize,
}

impl LineReader {
    /// Appends bytes read from the socket.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The unconsumed bytes (for sniffing a connection's first bytes).
    pub fn peek(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Takes every unconsumed byte out, leaving the reader empty (the connection turned
    /// out to speak another framing).
    pub fn take_all(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.drain(..self.start);
        self.start = 0;
        self.scanned = 0;
        buf
    }

    /// Returns the next complete frame, `Ok(None)` if only a partial frame remains, or
    /// `TooLarge` once a frame exceeds `max` bytes (without its terminator).
    pub fn next_frame(&mut self, max: usize) -> Result<Option<&[u8]>, FrameError> {
        loop {
            let from = self.scanned.max(self.start);
            let Some(off) = self.buf[from..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buf.len();
                // A trailing `\r` may yet turn out to be part of the terminator.
                let mut pending = self.buf.len() - self.start;
                if self.buf.last() == Some(&b'\r') {
                    pending -= 1;
                }
                if pending > max {
                    return Err(FrameError::TooLarge);
                }
                return Ok(None);
            };
            let nl = from + off;
            let line_start = self.start;
            self.start = nl + 1;
            self.scanned = self.start;
            let mut end = nl;
            if end > line_start && self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            if end - line_start > max {
                return Err(FrameError::TooLarge);
            }
            if end > line_start {
                return Ok(Some(&self.buf[line_start..end]));
            }
        }
    }

    /// Drops consumed bytes; frees the allocation when nothing is left, so an idle
    /// connection holds no read buffer at all.
    pub fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
        } else if self.start > 0 {
            self.buf.drain(..self.start);
        }
        self.scanned -= self.start.min(self.scanned);
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(r: &mut LineReader, max: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = r.next_frame(max)? {
            out.push(f.to_vec());
        }
        r.compact();
        Ok(out)
    }

    #[test]
    fn many_frames_in_one_read() {
        let mut r = LineReader::default();
        r.extend(b"a\nbb\r\n\n\r\nccc\nxy");
        assert_eq!(
            frames(&mut r, 10).unwrap(),
            vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()]
        );
        assert_eq!(r.pending(), 2);
        r.extend(b"z\n");
        assert_eq!(frames(&mut r, 10).unwrap(), vec![b"xyz".to_vec()]);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.buf.capacity(), 0, "idle reader frees its buffer");
    }

    #[test]
    fn byte_by_byte() {
        let mut r = LineReader::default();
        let mut got = Vec::new();
        for b in b"{\"action\":\"PING\"}\r\n{}\n" {
            r.extend(&[*b]);
            got.extend(frames(&mut r, 100).unwrap());
        }
        assert_eq!(got, vec![b"{\"action\":\"PING\"}".to_vec(), b"{}".to_vec()]);
    }

    #[test]
    fn too_large_complete_and_partial() {
        let mut r = LineReader::default();
        r.extend(b"12345\n");
        assert_eq!(frames(&mut r, 4), Err(FrameError::TooLarge));
        let mut r = LineReader::default();
        r.extend(b"1234");
        assert_eq!(frames(&mut r, 4).unwrap(), Vec::<Vec<u8>>::new());
        r.extend(b"5");
        assert_eq!(frames(&mut r, 4), Err(FrameError::TooLarge));
        let mut r = LineReader::default();
        r.extend(b"1234\r\n");
        assert_eq!(frames(&mut r, 4).unwrap(), vec![b"1234".to_vec()]);
        // Split between the `\r` and the `\n`: the same frame, not too large.
        let mut r = LineReader::default();
        r.extend(b"1234\r");
        assert_eq!(frames(&mut r, 4).unwrap(), Vec::<Vec<u8>>::new());
        r.extend(b"\n");
        assert_eq!(frames(&mut r, 4).unwrap(), vec![b"1234".to_vec()]);
    }
}
