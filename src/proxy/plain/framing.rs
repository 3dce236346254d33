//! Where a response body ends, as the plain path copies it through unchanged: the
//! [`Framing`] a response head declares (RFC 9112 §6.3) and the [`BodyState`] that tells,
//! for each run of bytes read from the app, how many still belong to the body, following
//! chunked framing byte by byte (sizes, extensions, trailers) without decoding it, so
//! the connection can be reused exactly at the body's end.

/// How the response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Where a response body stands: how many of the bytes that come next belong to it.
pub(super) struct BodyState {
    framing: Framing,
    /// Bytes left of a `Length` body, or of the current chunk's data.
    left: u64,
    chunk: Chunk,
    /// The chunk-size line or trailer line read so far (bounded).
    line: usize,
    done: bool,
    failed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Reading a chunk-size line (hex digits, then extensions, then CRLF).
    Size {
        digits: usize,
        size: u64,
        ext: bool,
    },
    /// Copying chunk data (`left` bytes), then its CRLF.
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines, ended by an empty line.
    Trailer {
        empty: bool,
    },
}

/// Longest chunk-size or trailer line accepted.
pub(super) const MAX_LINE: usize = 8 * 1024;

impl BodyState {
    pub(super) fn new(framing: Framing) -> BodyState {
        let (left, done) = match framing {
            Framing::Empty | Framing::Length(0) => (0, true),
            Framing::Length(n) => (n, false),
            Framing::Chunked | Framing::UntilClose => (0, false),
        };
        BodyState {
            framing,
            left,
            chunk: Chunk::Size {
                digits: 0,
                size: 0,
                ext: false,
            },
            line: 0,
            done,
            failed: false,
        }
    }

    pub(super) fn done(&self) -> bool {
        self.done
    }

    pub(super) fn failed(&self) -> bool {
        self.failed
    }

    /// The bytes left of a body of known length.
    pub(super) fn length_left(&self) -> Option<u64> {
        matches!(self.framing, Framing::Length(_)).then_some(self.left)
    }

    pub(super) fn until_close(&self) -> bool {
        self.framing == Framing::UntilClose
    }

    /// The close that ends an `UntilClose` body.
    pub(super) fn close(&mut self) {
        self.done = true;
    }

    /// How many bytes at the start of `data` belong to the body (all of them until it
    /// ends). A malformed chunked body ends it as failed.
    pub(super) fn feed(&mut self, data: &[u8]) -> usize {
        if self.done {
            return 0;
        }
        match self.framing {
            Framing::Empty => 0,
            Framing::UntilClose => data.len(),
            Framing::Length(_) => {
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.left -= take as u64;
                self.done = self.left == 0;
                take
            }
            Framing::Chunked => self.feed_chunked(data),
        }
    }

    fn fail(&mut self, at: usize) -> usize {
        self.failed = true;
        self.done = true;
        at
    }

    fn feed_chunked(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() && !self.done {
            match &mut self.chunk {
                Chunk::Data => {
                    let take = usize::try_from(self.left)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    i += take;
                    self.left -= take as u64;
                    if self.left == 0 {
                        self.chunk = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => {
                    if data[i] != b'\r' {
                        return self.fail(i);
                    }
                    self.chunk = Chunk::DataLf;
                }
                Chunk::DataLf => {
                    if data[i] != b'\n' {
                        return self.fail(i);
                    }
                    self.chunk = Chunk::Size {
                        digits: 0,
                        size: 0,
                        ext: false,
                    };
                    self.line = 0;
                }
                Chunk::Size { digits, size, ext } => {
                    let b = data[i];
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return self.fail(i);
                    }
                    if b == b'\n' {
                        if *digits == 0 {
                            return self.fail(i);
                        }
                        if *size == 0 {
                            self.chunk = Chunk::Trailer { empty: true };
                        } else {
                            self.left = *size;
                            self.chunk = Chunk::Data;
                        }
                        self.line = 0;
                    } else if b == b'\r' || *ext {
                        // The CR before LF, and extensions: passed through as they are.
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        *ext = true;
                    } else if let Some(d) = char::from(b).to_digit(16) {
                        if *digits >= 15 {
                            return self.fail(i);
                        }
                        *digits += 1;
                        *size = *size * 16 + u64::from(d);
                    } else {
                        return self.fail(i);
                    }
                }
                Chunk::Trailer { empty } => {
                    let b = data[i];
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return self.fail(i);
                    }
                    if b == b'\n' {
                        if *empty {
                            self.done = true;
                        } else {
                            *empty = true;
                            self.line = 0;
                        }
                    } else if b != b'\r' {
                        *empty = false;
                    }
                }
            }
            i += 1;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; returns the bytes taken and the state.
    fn feed_all(framing: Framing, body: &[u8], step: usize) -> (usize, BodyState) {
        let mut s = BodyState::new(framing);
        let mut taken = 0;
        for piece in body.chunks(step) {
            let t = s.feed(piece);
            taken += t;
            if t < piece.len() {
                break;
            }
        }
        (taken, s)
    }

    #[test]
    fn chunked_bodies_end_exactly_at_their_last_chunk() {
        let body = b"4\r\nWiki\r\n5;name=v\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, body.len()] {
            let mut with_extra = body.to_vec();
            with_extra.extend_from_slice(b"HTTP/1.1 200 OK");
            let (taken, s) = feed_all(Framing::Chunked, &with_extra, step);
            assert!(s.done() && !s.failed(), "step {step}");
            assert_eq!(taken, body.len(), "step {step}");
        }
        let (_, s) = feed_all(Framing::Chunked, b"0\r\n\r\n", 1);
        assert!(s.done() && !s.failed());
        for bad in [
            &b"zz\r\n"[..],
            b"4\r\nWikiXX",
            b"\r\n",
            b"10000000000000000\r\n",
        ] {
            let (_, s) = feed_all(Framing::Chunked, bad, 1);
            assert!(s.failed(), "{:?}", String::from_utf8_lossy(bad));
        }
        let (_, s) = feed_all(Framing::Chunked, b"4\r\nWi", 1);
        assert!(!s.done());
    }
    #[test]
    fn only_a_length_body_tells_what_is_left() {
        let mut s = BodyState::new(Framing::Length(10));
        assert_eq!(s.length_left(), Some(10));
        s.feed(b"abc");
        assert_eq!(s.length_left(), Some(7));
        assert_eq!(BodyState::new(Framing::Chunked).length_left(), None);
        assert_eq!(BodyState::new(Framing::UntilClose).length_left(), None);
    }

    #[test]
    fn length_bodies_take_exactly_their_length() {
        let (taken, s) = feed_all(Framing::Length(5), b"helloEXTRA", 3);
        assert_eq!(taken, 5);
        assert!(s.done());
        let s = BodyState::new(Framing::Length(0));
        assert!(s.done());
        let mut s = BodyState::new(Framing::UntilClose);
        assert_eq!(s.feed(b"abc"), 3);
        assert!(!s.done());
        s.close();
        assert!(s.done());
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    fn prng(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    /// Generated valid chunked bodies (sizes in any case with leading zeros, extensions,
    /// trailers), followed by the next message, fed in random pieces: the parser takes
    /// exactly the body, never fails, and is done exactly at its last byte.
    #[test]
    fn generated_chunked_bodies_end_exactly_at_their_end() {
        let mut next = prng(0xD1B5_4A32_D192_ED03);
        for _ in 0..2_000 {
            let mut body = Vec::new();
            for _ in 0..next() % 6 {
                let size = (next() % 300 + 1) as usize;
                let hex = format!("{:0width$x}", size, width = (next() % 4) as usize);
                let hex = if next() % 2 == 0 {
                    hex.to_uppercase()
                } else {
                    hex
                };
                body.extend_from_slice(hex.as_bytes());
                if next() % 3 == 0 {
                    body.extend_from_slice(b";name=\"v;x\"");
                }
                body.extend_from_slice(b"\r\n");
                body.extend((0..size).map(|_| next() as u8));
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            for _ in 0..next() % 3 {
                body.extend_from_slice(b"X-Trailer: a\r\n");
            }
            body.extend_from_slice(b"\r\n");
            let mut input = body.clone();
            input.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
            let mut s = BodyState::new(Framing::Chunked);
            let mut taken = 0;
            let mut at = 0;
            while at < input.len() && !s.done() {
                let step = (1 + next() % 64) as usize;
                let piece = &input[at..(at + step).min(input.len())];
                let t = s.feed(piece);
                assert!(t <= piece.len());
                taken += t;
                at += piece.len();
                assert_eq!(s.done(), taken == body.len(), "done exactly at the end");
            }
            assert!(
                s.done() && !s.failed(),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
            assert_eq!(taken, body.len());
        }
    }
}
