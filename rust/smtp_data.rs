//! The SMTP DATA reader: the bytes a client sends after `354`, turned into the message, in
//! whole buffers rather than a line at a time.
//!
//! Fed the connection's input as it arrives (any split across reads), it finds the end of data
//! (`<CRLF>.<CRLF>`, RFC 5321 §4.1.1.4), removes the transparency dots (§4.5.2), and checks on
//! the way what the relay refuses:
//!
//! * a bare CR or a bare LF anywhere (SMTP smuggling: `<LF>.<CR><LF>` and its cousins only end
//!   the data for *some* servers, so the relay takes no message that holds one);
//! * a NUL byte (RFC 5321 §4.5.2 and RFC 6152 exclude NUL from text and 8BITMIME alike);
//! * a line longer than the line limit (counted with its CRLF, as aiosmtpd does);
//! * more data than the size limit (counted as sent, without the final `.<CRLF>`).
//!
//! As aiosmtpd 1.4.5 and later do, only `<CRLF>.<CRLF>` ends the data: lines are split at CRLF
//! alone, so a bare LF never starts a line. Once the message is known to be refused, nothing
//! more is stored (its memory is released at once) but the input is still read to the end of
//! data, so that the reply comes at the right time and the session can go on.
//!
//! Cost: ordinary lines (CRLF-ended, no dot first, no stray CR, LF or NUL) are passed over a run
//! of whole lines at a time (the line breaks found 64 bytes at a time by the header scanner's
//! `LineScanner`, then one `memchr` for a NUL in the run); the rest goes through one `memchr3`
//! per line. One copy of each read into the message ([`Content`]): the bytes between two
//! transparency dots are copied as one run, not a line at a time, and a growing message is never
//! moved (a part is added instead). The first part is reserved for the size the client declared
//! (ESMTP `SIZE=`), if it did.

use crate::line_scanner::LineScanner;

/// Why a message was refused (the first problem found wins, except that an oversized message
/// is reported as such, as aiosmtpd does: 552 tells the client more than a line error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    BareLineEnding,
    Nul,
    LineTooLong,
    TooLarge,
}

impl Problem {
    pub const ALL: [Problem; 4] = [Problem::BareLineEnding, Problem::Nul, Problem::LineTooLong, Problem::TooLarge];

    pub fn as_str(self) -> &'static str {
        match self {
            Problem::BareLineEnding => "bare-line-ending",
            Problem::Nul => "nul",
            Problem::LineTooLong => "line-too-long",
            Problem::TooLarge => "too-large",
        }
    }
}

#[derive(Debug)]
pub struct DataReader {
    size_limit: usize,
    line_limit: usize,
    out: Content,
    /// Bytes of the current line seen so far, its leading dot included, its line break not.
    line_len: usize,
    /// The current line began with a dot (not copied to `out`).
    dot_line: bool,
    /// The last byte seen was a CR whose meaning depends on the next one. Pending when a read
    /// begins, it ended the previous read and is not in `out` yet.
    pending_cr: bool,
    /// Bytes received, as sent (dots and line breaks included).
    received: usize,
    problem: Option<Problem>,
    done: bool,
    taken: bool,
    /// BDAT chunks (RFC 3030): no dot-stuffing and no terminator; `finish` ends the message.
    chunked: bool,
}

impl DataReader {
    /// `expected` is the size the client declared, if any: the buffer is reserved for it (up to
    /// the size limit) so a large message is not copied as it grows.
    pub fn new(size_limit: usize, line_limit: usize, expected: Option<usize>) -> DataReader {
        let reserve = expected.map_or(0, |e| e.min(size_limit.saturating_add(2)));
        DataReader {
            size_limit,
            line_limit,
            out: Content::with_capacity(reserve),
            line_len: 0,
            dot_line: false,
            pending_cr: false,
            received: 0,
            problem: None,
            done: false,
            taken: false,
            chunked: false,
        }
    }

    /// A reader for a message sent in BDAT chunks: the same checks (bare CR or LF, NUL, line
    /// and size limits), but a leading dot is text and nothing in the data ends it: the caller
    /// feeds each chunk's bytes and calls [`DataReader::finish`] after the last.
    pub fn chunked(size_limit: usize, line_limit: usize, expected: Option<usize>) -> DataReader {
        DataReader { chunked: true, ..DataReader::new(size_limit, line_limit, expected) }
    }

    /// The last chunk was fed: a CR at the very end is bare, a last line without its CRLF gets
    /// one (as Postfix's cleanup adds a missing newline), and the size is checked exactly.
    pub fn finish(&mut self) {
        if self.done {
            return;
        }
        if self.pending_cr {
            self.pending_cr = false;
            self.flag(Problem::BareLineEnding);
        }
        if self.line_len > 0 {
            self.push(b"\r\n");
        }
        if self.received > self.size_limit {
            self.problem = Some(Problem::TooLarge);
            self.discard();
        }
        self.done = true;
    }

    pub fn done(&self) -> bool {
        self.done
    }

    pub fn problem(&self) -> Option<Problem> {
        self.problem
    }

    /// Bytes received so far, as sent.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Reads from `input`; returns how many bytes belong to the data (all of them, unless the
    /// end of data was found: then the rest is the client's next command, pipelined).
    ///
    /// A message read without a problem is its input less the transparency dots, the final
    /// `.<CRLF>` and nothing else, so the input is stored in runs (`input[start..i]`), each
    /// ended by a transparency dot or by the end of the read. A refused message stores
    /// nothing, so what a problem does to the runs does not matter.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut i = 0;
        let mut start = 0;
        // Before this index the lines go byte by byte: `plain_lines` looked there and found
        // something for the byte-wise loop to decide.
        let mut checked = 0;
        while i < input.len() && !self.done {
            if self.pending_cr {
                self.pending_cr = false;
                if input[i] == b'\n' {
                    // A CR pending at the start of the read ended the previous one, unstored.
                    let cr_unstored = i == 0;
                    i += 1;
                    self.received += 1;
                    if self.end_of_line() {
                        return i; // the "." line is not part of the message
                    }
                    if cr_unstored {
                        // Nothing of this read is stored yet; the LF is in this read's run.
                        self.push(b"\r");
                    }
                    continue;
                }
                self.flag(Problem::BareLineEnding);
                self.grow(1);
            }
            if self.line_len == 0 && !self.dot_line {
                if !self.chunked && input[i] == b'.' {
                    self.push(&input[start..i]);
                    start = i + 1;
                    self.dot_line = true;
                    self.line_len = 1;
                    self.received += 1;
                    i += 1;
                    continue;
                }
                if i >= checked {
                    match self.plain_lines(&input[i..]) {
                        Ok(0) => {}
                        Ok(n) => {
                            // Stored with the run; the size is checked as at a line's end.
                            self.received += n;
                            i += n;
                            self.end_of_lines();
                            continue;
                        }
                        // Byte by byte up to where the look stopped, so that no byte is looked
                        // at again and again.
                        Err(n) => checked = i + n,
                    }
                }
            }
            let rest = &input[i..];
            let run = memchr::memchr3(b'\r', b'\n', 0, rest).unwrap_or(rest.len());
            self.grow(run);
            self.received += run;
            i += run;
            if let Some(&byte) = input.get(i) {
                i += 1;
                self.received += 1;
                match byte {
                    b'\r' => self.pending_cr = true,
                    b'\n' => {
                        self.flag(Problem::BareLineEnding);
                        self.grow(1);
                    }
                    _ => {
                        self.flag(Problem::Nul);
                        self.grow(1);
                    }
                }
            }
        }
        if i > 0 && !self.done {
            // A CR that ends the read waits for the next byte: it is stored with the LF.
            let end = if self.pending_cr { i - 1 } else { i };
            self.push(&input[start..end]);
        }
        i
    }

    /// The current line grew by `n` bytes. Checked at once, so that which problem a message
    /// is refused for depends on where the bytes are, never on how the reads split them.
    fn grow(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len + 2 > self.line_limit {
            self.flag(Problem::LineTooLong);
        }
    }

    /// The length of the longest run of whole lines at the start of `input` (which starts a
    /// line) that the byte-wise loop would pass over without a decision: each line ends with
    /// CRLF, holds no other CR or LF and no NUL, fits the line limit and, unless chunked, does
    /// not start with a dot. `Err(n)`: the first `n` bytes are such lines but hold a NUL; the
    /// caller reads them byte by byte.
    ///
    /// This is the reader's fast path: the header scanner's `LineScanner` finds the line breaks
    /// 64 bytes at a time (a count of trailing zeros per line), and one `memchr` looks for a NUL
    /// in the run, instead of a `memchr3` per line and a state change per byte class (1 MiB of
    /// 78-byte lines: 0.30 ms before; benches/README.md, session 10).
    fn plain_lines(&self, input: &[u8]) -> Result<usize, usize> {
        let mut scanner = LineScanner::new(input);
        let mut end = 0;
        // Every CR or LF is seen: a line's must be a CR with its LF right after.
        while let Some(at) = scanner.line_break(end) {
            let length = at + 2 - end;
            if input[at] != b'\r' || input.get(at + 1) != Some(&b'\n') || length > self.line_limit || (!self.chunked && input[end] == b'.') {
                break;
            }
            end = at + 2;
        }
        if memchr::memchr(0, &input[..end]).is_some() {
            return Err(end);
        }
        Ok(end)
    }

    /// Whole lines were read past at once: the size check `end_of_line` makes after each.
    fn end_of_lines(&mut self) {
        if self.received > self.size_limit.saturating_add(3) {
            self.problem = Some(Problem::TooLarge);
            self.discard();
        }
    }

    /// A CRLF ended the current line: the end of data (true), or one more line of the message
    /// (the caller stores the CRLF with its run).
    fn end_of_line(&mut self) -> bool {
        if self.dot_line && self.line_len == 1 {
            self.done = true;
            // The final ".<CRLF>" is not part of the data.
            self.received -= 3;
            if self.received > self.size_limit {
                self.problem = Some(Problem::TooLarge);
            }
            return true;
        }
        self.line_len = 0;
        self.dot_line = false;
        // Over the limit by more than the terminator could account for: refused for sure.
        self.end_of_lines();
        false
    }

    fn flag(&mut self, problem: Problem) {
        if self.problem.is_none() {
            self.problem = Some(problem);
            self.discard();
        }
    }

    fn discard(&mut self) {
        self.out = Content::default();
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.problem.is_none() {
            self.out.push(bytes);
        }
    }

    /// The message, taken out of the reader (once), once the end of data was found without a
    /// problem.
    pub fn take(&mut self) -> Option<Content> {
        let message = self.complete().then(|| std::mem::take(&mut self.out));
        self.taken |= message.is_some();
        message
    }

    fn complete(&self) -> bool {
        self.done && self.problem.is_none() && !self.taken
    }
}

/// A message as the DATA reader stores it: in parts that are never moved once written, each
/// twice the size of the one before (from 8 KiB up to 1 MiB), the first one reserved for the
/// size the client declared. One growing buffer copied a 1 MiB message about once more in
/// reallocations (1.7 million instructions per message, callgrind); the parts are joined once,
/// into the message handed on ([`Content::copy_to`], [`Content::into_vec`]).
#[derive(Debug, Default, Clone)]
pub struct Content {
    parts: Vec<Vec<u8>>,
    len: usize,
}

const FIRST_PART: usize = 8 << 10;
const LARGEST_PART: usize = 1 << 20;

impl Content {
    pub fn with_capacity(capacity: usize) -> Content {
        let parts = if capacity == 0 { Vec::new() } else { vec![Vec::with_capacity(capacity)] };
        Content { parts, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes reserved, written or not.
    pub fn capacity(&self) -> usize {
        self.parts.iter().map(Vec::capacity).sum()
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len();
        if let Some(last) = self.parts.last_mut() {
            let room = last.capacity() - last.len();
            if bytes.len() <= room {
                last.extend_from_slice(bytes);
                return;
            }
            let (head, tail) = bytes.split_at(room);
            last.extend_from_slice(head);
            bytes = tail;
        }
        if bytes.is_empty() {
            return;
        }
        let size = self.parts.last().map_or(FIRST_PART, |last| (last.capacity() * 2).min(LARGEST_PART));
        let mut part = Vec::with_capacity(size.max(bytes.len()));
        part.extend_from_slice(bytes);
        self.parts.push(part);
    }

    /// The message in order, a slice per part.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().map(Vec::as_slice)
    }

    /// Copies the message to the start of `out`, which must hold [`Content::len`] bytes at least.
    pub fn copy_to(&self, out: &mut [u8]) {
        let mut at = 0;
        for part in self.parts() {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
    }

    /// The message as one buffer: the first part itself when it is the only one.
    pub fn into_vec(mut self) -> Vec<u8> {
        if self.parts.len() <= 1 {
            return self.parts.pop().unwrap_or_default();
        }
        self.parts.concat()
    }
}

/// Dot-stuffs a message for sending (RFC 5321 §4.5.2): a dot is added before every line that
/// starts with one. `None` when no line does (the message goes out as it is, no copy). The
/// message must use CRLF line endings (the relay stores nothing else).
pub fn dot_stuff(message: &[u8]) -> Option<Vec<u8>> {
    let needs = message.first() == Some(&b'.') || memchr::memmem::find(message, b"\n.").is_some();
    if !needs {
        return None;
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 1);
    let mut start = 0;
    if message.first() == Some(&b'.') {
        out.push(b'.');
    }
    for position in memchr::memmem::find_iter(message, b"\n.") {
        out.extend_from_slice(&message[start..=position]);
        out.push(b'.');
        start = position + 1;
    }
    out.extend_from_slice(&message[start..]);
    Some(out)
}

/// Whether the message holds a byte over 0x7F (it then goes out with `BODY=8BITMIME`). One
/// OR over 64-byte blocks that the compiler vectorizes, checked once per block: 20 µs for a
/// 1 MiB message where Python's `bytes.isascii` takes 48 µs.
pub fn has_8bit(message: &[u8]) -> bool {
    let mut blocks = message.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &byte| acc | byte) & 0x80 != 0 {
            return true;
        }
    }
    blocks.remainder().iter().any(|&byte| byte & 0x80 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_split(input: &[u8], split: usize) -> (DataReader, usize) {
        let mut reader = DataReader::new(1 << 20, 1001, None);
        let (a, b) = input.split_at(split.min(input.len()));
        let mut used = reader.feed(a);
        if !reader.done() {
            used += reader.feed(b);
        }
        (reader, used)
    }

    fn read(input: &[u8]) -> (Option<Vec<u8>>, Option<Problem>, usize) {
        let mut reader = DataReader::new(1 << 20, 1001, None);
        let used = reader.feed(input);
        (reader.take().map(Content::into_vec), reader.problem(), used)
    }

    #[test]
    fn the_problem_reported_does_not_depend_on_the_reads() {
        // An over-long line with a NUL after the limit, and one with the NUL before it: the first
        // problem by position is reported, however the input is split (found by fuzz/smtp_data).
        for (input, expected) in [
            (b"abcdefgh\0\r\n.\r\n".as_slice(), Problem::LineTooLong),
            (b"ab\0defgh\r\n.\r\n".as_slice(), Problem::Nul),
            (b"abcdefgh\nx\r\n.\r\n".as_slice(), Problem::LineTooLong),
            (b"ab\rdefgh\r\n.\r\n".as_slice(), Problem::BareLineEnding),
        ] {
            for split in 0..=input.len() {
                let mut reader = DataReader::new(1 << 20, 8, None);
                let (a, b) = input.split_at(split);
                let used = reader.feed(a) + if reader.done() { 0 } else { reader.feed(b) };
                assert_eq!((used, reader.problem()), (input.len(), Some(expected)), "{input:?} split at {split}");
            }
        }
    }

    #[test]
    fn ends_at_crlf_dot_crlf_and_unstuffs() {
        let (message, problem, used) = read(b"Subject: x\r\n\r\n..hidden\r\n.a\r\nend\r\n.\r\nQUIT\r\n");
        assert_eq!(problem, None);
        assert_eq!(message.unwrap(), b"Subject: x\r\n\r\n.hidden\r\na\r\nend\r\n");
        assert_eq!(used, b"Subject: x\r\n\r\n..hidden\r\n.a\r\nend\r\n.\r\n".len());
    }

    #[test]
    fn empty_message() {
        let (message, problem, used) = read(b".\r\nQUIT\r\n");
        assert_eq!((message.unwrap(), problem, used), (Vec::new(), None, 3));
    }

    #[test]
    fn runs_of_whole_lines_read_as_byte_by_byte() {
        // Many ordinary lines (the reader passes over them a run at a time) with one line the
        // byte-wise loop must decide put at each place in turn: the outcome is what reading one
        // byte at a time gives, whole or split anywhere.
        let plain = b"Lorem ipsum dolor sit amet\r\n";
        let odd: [&[u8]; 7] = [b"..dot\r\n", b"bare\rcr\r\n", b"bare\nlf\r\n", b"n\x00l\r\n", &[b'x'; 1100], b"\r\n", b"\xc3\xa9t\xc3\xa9\r\n"];
        for line in odd {
            for at in [0, 1, 5, 9] {
                let mut input = Vec::new();
                for n in 0..10 {
                    input.extend_from_slice(if n == at { line } else { plain });
                }
                input.extend_from_slice(b".\r\nQUIT\r\n");
                let mut one = DataReader::new(1 << 20, 1001, None); // as read_split's
                let mut used = 0;
                for byte in &input {
                    if !one.done() {
                        used += one.feed(std::slice::from_ref(byte));
                    }
                }
                let expected = (one.take().map(Content::into_vec), one.problem(), used);
                for split in 0..=input.len() {
                    let (mut reader, used) = read_split(&input, split);
                    assert_eq!((reader.take().map(Content::into_vec), reader.problem(), used), expected, "{line:?} at {at}, split at {split}");
                }
            }
        }
    }

    #[test]
    fn every_split_gives_the_same_answer() {
        let inputs: [&[u8]; 5] = [
            b"a\r\n..b\r\n.\r\nRSET\r\n",
            b"a\r\nb\n.\r\nc\r\n.\r\n",
            b"a\r\nb\r.\r\nc\r\n.\r\n",
            b"a\x00b\r\n.\r\n",
            b".\r\n",
        ];
        for input in inputs {
            let whole = read(input);
            for split in 0..=input.len() {
                let (mut reader, used) = read_split(input, split);
                assert_eq!((reader.take().map(Content::into_vec), reader.problem(), used), whole, "split at {split} of {input:?}");
            }
        }
    }

    #[test]
    fn smuggling_variants_are_refused_and_do_not_end_the_data() {
        for trick in [&b"x\n.\r\n"[..], b"x\r\n.\n", b"x\r.\r\n", b"x\r\n.\r", b"x\n.\n", b"x\r\n.\rQ"] {
            let mut input = trick.to_vec();
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n\r\n.\r\n");
            let (message, problem, used) = read(&input);
            assert_eq!(problem, Some(Problem::BareLineEnding), "{trick:?}");
            assert_eq!(message, None);
            assert_eq!(used, input.len(), "only the real terminator ends the data: {trick:?}");
        }
    }

    #[test]
    fn limits() {
        let mut reader = DataReader::new(10, 1001, None);
        let input = b"0123456789\r\n.\r\n";
        assert_eq!(reader.feed(input), input.len());
        assert_eq!(reader.problem(), Some(Problem::TooLarge));
        // Exactly at the limit (10 bytes with the CRLF) is fine.
        let mut reader = DataReader::new(10, 1001, None);
        reader.feed(b"01234567\r\n.\r\n");
        assert_eq!(reader.take().unwrap().into_vec(), b"01234567\r\n");
        let mut long = vec![b'a'; 1000];
        long.extend_from_slice(b"\r\n.\r\n");
        let (message, problem, _) = read(&long);
        assert_eq!((message, problem), (None, Some(Problem::LineTooLong)));
        let mut fits = vec![b'a'; 999];
        fits.extend_from_slice(b"\r\n.\r\n");
        assert!(read(&fits).0.is_some());
    }

    #[test]
    fn a_large_message_reads_the_same_in_any_read_size_and_is_never_moved() {
        // 1 MiB and more of lines, some starting with a dot, with and without a declared size.
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for n in 0..14_000 {
            let line = format!("{}line {n} of the message, text text text text text text\r\n", if n % 97 == 0 { "." } else { "" });
            expected.extend_from_slice(line.as_bytes());
            if line.starts_with('.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(line.as_bytes());
        }
        wire.extend_from_slice(b".\r\nQUIT\r\n");
        for declared in [None, Some(expected.len()), Some(1000)] {
            for read in [1, 2, 3, 7, 64, 1000, 4096, 65_536, 300_000, wire.len()] {
                let mut reader = DataReader::new(8 << 20, 1001, declared);
                let mut used = 0;
                for piece in wire.chunks(read) {
                    used += reader.feed(piece);
                    if reader.done() {
                        break;
                    }
                }
                assert_eq!(used, wire.len() - b"QUIT\r\n".len(), "read size {read}");
                let content = reader.take().unwrap();
                assert_eq!(content.len(), expected.len());
                // Parts are only ever added: at most ~log2 of the size of them, each filled before the next.
                assert!(content.parts.len() <= 12, "{} parts", content.parts.len());
                let mut joined = vec![0; content.len()];
                content.copy_to(&mut joined);
                assert!(joined == expected, "read size {read}, declared {declared:?}");
                assert!(content.into_vec() == expected);
            }
        }
    }

    #[test]
    fn a_refused_message_keeps_no_memory() {
        let mut reader = DataReader::new(100, 1001, None);
        let line = b"0123456789012345678901234567890123456789\r\n";
        for _ in 0..100 {
            reader.feed(line);
        }
        assert_eq!(reader.problem(), Some(Problem::TooLarge));
        assert_eq!(reader.out.capacity(), 0);
        assert!(!reader.done());
        reader.feed(b".\r\n");
        assert!(reader.done());
    }

    #[test]
    fn has_8bit_finds_a_high_byte_anywhere() {
        for len in [0, 1, 63, 64, 65, 127, 128, 129, 1000] {
            let ascii = vec![b'a'; len];
            assert!(!has_8bit(&ascii));
            for at in 0..len {
                let mut high = ascii.clone();
                high[at] = 0x80 | (at as u8);
                assert!(has_8bit(&high), "len {len}, at {at}");
            }
        }
    }

    #[test]
    fn dot_stuffing_round_trips() {
        assert_eq!(dot_stuff(b"a\r\nb\r\n"), None);
        assert_eq!(dot_stuff(b".a\r\n.\r\nb.\r\n..c\r\n").unwrap(), b"..a\r\n..\r\nb.\r\n...c\r\n");
        let message = b".x\r\n..y\r\nz\r\n.\r\n";
        let mut wire = dot_stuff(message).unwrap();
        wire.extend_from_slice(b".\r\n");
        assert_eq!(read(&wire).0.unwrap(), message);
    }
}
