//! Reading a DATA block (RFC 5321 4.1.1.4, 4.5.2) incrementally, in bounded memory.
//!
//! The block ends at a line holding a single `.`. Lines end with CRLF; a bare LF is
//! tolerated as a line ending (many clients send one) and stored as CRLF, so the message
//! handed on always has CRLF line endings. A line starting with `.` loses that `.`
//! (transparency). The reader never stores more than the size limit: past it, it keeps
//! reading to the end of the block but drops the content, so the client still gets a
//! proper reply after its final dot instead of a connection reset.

/// The longest text line (without its CRLF) RFC 5321 4.5.3.1.6 allows.
pub const MAX_DATA_LINE: usize = 998;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line (also right after the 354).
    LineStart,
    /// A `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line.
    DotCr,
    /// Inside a line.
    InLine,
    /// A CR inside a line (a line ending if LF follows).
    Cr,
}

#[derive(Debug)]
pub(super) struct DataReader {
    state: State,
    data: Vec<u8>,
    max_size: u64,
    /// Content octets seen, stored or not (saturating).
    size: u64,
    line_len: usize,
    long_line: bool,
    nul: bool,
    eight_bit: bool,
}

/// Why a finished block is refused, in the order they are checked.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    TooLarge,
    LineTooLong,
    Nul,
}

impl DataReader {
    pub(super) fn new(max_size: u64) -> DataReader {
        DataReader {
            state: State::LineStart,
            data: Vec::new(),
            max_size,
            size: 0,
            line_len: 0,
            long_line: false,
            nul: false,
            eight_bit: false,
        }
    }

    /// Content bytes held (at most the size limit).
    pub(super) fn stored(&self) -> usize {
        self.data.len()
    }

    /// Reads `input`. Returns `Some(n)` when the block ended within it: `n` bytes (up to
    /// and including the final dot's LF) belong to the block, the rest is what the client
    /// sent after it. `None`: everything was consumed and the block goes on.
    pub(super) fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::InLine {
                // Fast path: copy the run of ordinary octets up to the next CR or LF.
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                if run > 0 {
                    let span = &input[i..i + run];
                    self.line_len = self.line_len.saturating_add(run);
                    self.note_line();
                    self.scan(span);
                    self.emit(span);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            if self.step(b) {
                return Some(i);
            }
        }
        None
    }

    /// The finished block: the message, whether it has 8-bit octets, or why it is refused.
    pub(super) fn finish(self) -> Result<(Vec<u8>, bool), Refusal> {
        if self.size > self.max_size {
            Err(Refusal::TooLarge)
        } else if self.long_line {
            Err(Refusal::LineTooLong)
        } else if self.nul {
            Err(Refusal::Nul)
        } else {
            Ok((self.data, self.eight_bit))
        }
    }

    /// One octet outside the fast path; true when it ends the block.
    fn step(&mut self, b: u8) -> bool {
        match self.state {
            State::LineStart => {
                if b == b'.' {
                    self.state = State::Dot;
                } else {
                    self.state = State::InLine;
                    self.content(b);
                }
                false
            }
            State::Dot => match b {
                b'\r' => {
                    self.state = State::DotCr;
                    false
                }
                // `.` LF: the end, with a bare LF (tolerated like any bare LF).
                b'\n' => true,
                _ => {
                    // A stuffed dot: drop it; the octet starts the line's content.
                    self.state = State::InLine;
                    self.content(b);
                    false
                }
            },
            State::DotCr => {
                if b == b'\n' {
                    return true;
                }
                // `.` CR something: the dot was stuffing, the CR is content.
                self.state = State::InLine;
                self.content(b'\r');
                self.content(b);
                false
            }
            State::InLine | State::Cr => {
                self.content(b);
                false
            }
        }
    }

    /// An octet of line content or a line ending, in state `InLine` or `Cr`.
    fn content(&mut self, b: u8) {
        match (self.state, b) {
            (State::Cr, b'\n') | (State::InLine, b'\n') => {
                self.emit(b"\r\n");
                self.line_len = 0;
                self.state = State::LineStart;
            }
            (State::InLine, b'\r') => self.state = State::Cr,
            (State::Cr, b'\r') => {
                // The earlier CR was a bare CR: content. This one may still end the line.
                self.line_len = self.line_len.saturating_add(1);
                self.note_line();
                self.emit(b"\r");
            }
            (State::Cr, _) => {
                self.line_len = self.line_len.saturating_add(2);
                self.note_line();
                self.scan(&[b]);
                self.emit(&[b'\r', b]);
                self.state = State::InLine;
            }
            _ => {
                self.line_len = self.line_len.saturating_add(1);
                self.note_line();
                self.scan(&[b]);
                self.emit(&[b]);
                self.state = State::InLine;
            }
        }
    }

    fn note_line(&mut self) {
        if self.line_len > MAX_DATA_LINE {
            self.long_line = true;
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        if !self.nul && memchr::memchr(0, bytes).is_some() {
            self.nul = true;
        }
        if !self.eight_bit && !bytes.is_ascii() {
            self.eight_bit = true;
        }
    }

    /// Counts content and stores it while within the limit; past the limit the stored
    /// part is released and nothing more is kept.
    fn emit(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size > self.max_size {
            if self.data.capacity() > 0 {
                self.data = Vec::new();
            }
        } else {
            self.data.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8]) -> (Option<usize>, DataReader) {
        let mut r = DataReader::new(10_000);
        let end = r.feed(input);
        (end, r)
    }

    #[test]
    fn ends_at_lone_dot_and_unstuffs() {
        let (end, r) = read(b"a\r\n..b\r\n.c\r\n.\r\nQUIT\r\n");
        assert_eq!(end, Some(15));
        assert_eq!(r.finish(), Ok((b"a\r\n.b\r\nc\r\n".to_vec(), false)));
    }

    #[test]
    fn empty_block_and_bare_lf() {
        let (end, r) = read(b".\r\n");
        assert_eq!(end, Some(3));
        assert_eq!(r.finish(), Ok((Vec::new(), false)));
        let (end, r) = read(b"x\ny\r\n.\n");
        assert_eq!(end, Some(7));
        assert_eq!(r.finish(), Ok((b"x\r\ny\r\n".to_vec(), false)));
    }

    #[test]
    fn bare_cr_is_content_and_dot_cr_x_is_not_the_end() {
        let (end, r) = read(b"a\rb\r\r\n.\rz\r\n.\r\n");
        assert_eq!(end, Some(14));
        assert_eq!(r.finish(), Ok((b"a\rb\r\r\n\rz\r\n".to_vec(), false)));
    }

    #[test]
    fn refusals() {
        let mut r = DataReader::new(10);
        assert_eq!(r.feed(b"0123456789\r\n"), None);
        assert_eq!(r.stored(), 0);
        assert_eq!(r.feed(b".\r\n"), Some(3));
        assert_eq!(r.finish(), Err(Refusal::TooLarge));

        let mut long = vec![b'x'; MAX_DATA_LINE + 1];
        long.extend_from_slice(b"\r\n.\r\n");
        let (_, r) = read(&long);
        assert_eq!(r.finish(), Err(Refusal::LineTooLong));
        let mut ok = vec![b'x'; MAX_DATA_LINE];
        ok.extend_from_slice(b"\r\n.\r\n");
        let (_, r) = read(&ok);
        assert!(r.finish().is_ok());

        let (_, r) = read(b"a\0b\r\n.\r\n");
        assert_eq!(r.finish(), Err(Refusal::Nul));
        let (_, r) = read("é\r\n.\r\n".as_bytes());
        assert_eq!(r.finish(), Ok(("é\r\n".as_bytes().to_vec(), true)));
    }

    #[test]
    fn byte_by_byte_matches_whole() {
        let input = b"a\r\n..b\rc\n.x\r\n.\r\nrest";
        let (end, whole) = read(input);
        let mut r = DataReader::new(10_000);
        let mut split_end = None;
        for (i, b) in input.iter().enumerate() {
            if let Some(n) = r.feed(std::slice::from_ref(b)) {
                split_end = Some(i + n);
                break;
            }
        }
        assert_eq!(end, split_end);
        assert_eq!(whole.finish(), r.finish());
    }
}
