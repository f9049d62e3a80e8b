//! Canonicalisation (RFC 6376 §3.4): header fields into a buffer, the body straight into
//! SHA-256 as it is read.
//!
//! Line endings: CRLF and a bare LF both end a line and canonicalise to CRLF (a message stored
//! with LF goes out with CRLF); a CR not followed by LF is an ordinary byte. A body whose last
//! line has no line ending is read as SMTP carries it, with one (DATA ends with CRLF): the
//! receiver verifies that line with its ending, so its trailing white space does not count
//! (relaxed). dkimpy keeps that white space when it is handed the unterminated body itself.

use ring::digest;

use crate::labels::closed_set;

closed_set! {
    /// A canonicalisation algorithm (`c=`).
    pub enum Canon debug_as_name {
        Simple = "simple",
        Relaxed = "relaxed",
    }
}

const fn is_wsp(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// Appends the canonical form of one header field (`raw`: the field without its final line
/// ending), with a CRLF.
pub fn header_field(canon: Canon, raw: &[u8], out: &mut Vec<u8>) {
    match canon {
        Canon::Simple => simple_header(raw, out),
        Canon::Relaxed => relaxed_header(raw, out),
    }
}

/// Simple: the field as it is, its line endings CRLF.
fn simple_header(raw: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', raw) {
        if lf == 0 || raw[lf - 1] != b'\r' {
            out.extend_from_slice(&raw[start..lf]);
            out.extend_from_slice(b"\r\n");
            start = lf + 1;
        }
    }
    out.extend_from_slice(&raw[start..]);
    out.extend_from_slice(b"\r\n");
}

/// Relaxed: the name lowercased, white space around the colon removed, the value unfolded, runs
/// of white space made one space, none at its start or end.
fn relaxed_header(raw: &[u8], out: &mut Vec<u8>) {
    let colon = memchr::memchr(b':', raw).unwrap_or(raw.len());
    let mut name_end = colon;
    while name_end > 0 && is_wsp(raw[name_end - 1]) {
        name_end -= 1;
    }
    out.extend(raw[..name_end].iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let value = raw.get(colon + 1..).unwrap_or_default();
    let mut space = false;
    let mut started = false;
    let mut i = 0;
    while i < value.len() {
        let byte = value[i];
        i += 1;
        if byte == b'\n' || (byte == b'\r' && value.get(i) == Some(&b'\n')) {
            continue; // unfolding: the line breaks go, the white space after them is a run
        }
        if is_wsp(byte) {
            space = true;
            continue;
        }
        if space && started {
            out.push(b' ');
        }
        space = false;
        started = true;
        out.push(byte);
    }
    out.extend_from_slice(b"\r\n");
}

/// The body hash, fed the body's bytes in one pass (in pieces split anywhere) and
/// canonicalising as it goes: spans that need no change are hashed where they lie.
pub struct BodyHasher {
    canon: Canon,
    context: digest::Context,
    /// Canonical bytes still to hash; `None` hashes them all (the `l=` tag of a verification).
    remaining: Option<u64>,
    /// Canonical bytes hashed (or counted past `remaining`).
    length: u64,
    /// Line endings read since the last content byte: written only if content follows.
    lines: u64,
    /// A run of white space read within a line (relaxed): one space if content follows.
    space: bool,
    /// A CR whose next byte is not read yet.
    cr: bool,
    /// Some content was written.
    any: bool,
}

/// The bytes that may be changed or deferred where they stand (line endings; in relaxed, white
/// space too); every other byte is content, hashed as it is.
const fn specials(relaxed: bool) -> [bool; 256] {
    let mut table = [false; 256];
    table[b'\r' as usize] = true;
    table[b'\n' as usize] = true;
    if relaxed {
        table[b' ' as usize] = true;
        table[b'\t' as usize] = true;
    }
    table
}
const SIMPLE_SPECIAL: [bool; 256] = specials(false);
const RELAXED_SPECIAL: [bool; 256] = specials(true);

const CRLFS: &[u8; 64] = b"\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";

impl BodyHasher {
    pub fn new(canon: Canon, limit: Option<u64>) -> Self {
        BodyHasher { canon, context: digest::Context::new(&digest::SHA256), remaining: limit, length: 0, lines: 0, space: false, cr: false, any: false }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.length += bytes.len() as u64;
        match self.remaining.as_mut() {
            None => self.context.update(bytes),
            Some(remaining) => {
                let take = usize::try_from(*remaining).unwrap_or(usize::MAX).min(bytes.len());
                self.context.update(&bytes[..take]);
                *remaining -= take as u64;
            }
        }
    }

    /// What comes before content after a line ending, white space or a CR: the deferred line
    /// endings, one space, the CR.
    fn before_content(&mut self) {
        while self.lines > 0 {
            let n = usize::try_from(self.lines.min(32)).unwrap_or(32);
            self.emit(&CRLFS[..2 * n]);
            self.lines -= n as u64;
        }
        if self.space {
            self.space = false;
            self.emit(b" ");
        }
        if self.cr {
            self.cr = false;
            self.emit(b"\r");
        }
        self.any = true;
    }

    /// Reads the next piece of the body.
    pub fn update(&mut self, data: &[u8]) {
        let relaxed = self.canon == Canon::Relaxed;
        let special = if relaxed { &RELAXED_SPECIAL } else { &SIMPLE_SPECIAL };
        // data[span..i] is content to hash as it is; a span is open only with nothing deferred.
        let mut span: Option<usize> = None;
        let mut i = 0;
        while i < data.len() {
            if span.is_some() {
                // Within content: on to the next byte that may need a change.
                while i < data.len() && !special[usize::from(data[i])] {
                    i += 1;
                }
                if i == data.len() {
                    break;
                }
            }
            let byte = data[i];
            // A CRLF between content and more content stays where it is, inside the span: a
            // body is then hashed in a few long pieces rather than two per line.
            if byte == b'\r' && span.is_some() && data.get(i + 1) == Some(&b'\n') && data.get(i + 2).is_some_and(|&next| !special[usize::from(next)]) {
                i += 2;
                continue;
            }
            match byte {
                b'\n' => {
                    if let Some(start) = span.take() {
                        self.emit(&data[start..i]);
                    }
                    self.cr = false;
                    self.space = false;
                    self.lines += 1;
                }
                b'\r' => {
                    if let Some(start) = span.take() {
                        self.emit(&data[start..i]);
                    }
                    if self.cr {
                        // The earlier CR was not a line ending's: content.
                        self.before_content();
                    }
                    self.cr = true;
                }
                b' ' | b'\t' if relaxed => {
                    // A single space between two content bytes stays as it is, inside the span.
                    let plain_next = data.get(i + 1).is_some_and(|&next| !special[usize::from(next)]);
                    if byte == b' ' && plain_next && span.is_some() {
                        i += 1;
                        continue;
                    }
                    if let Some(start) = span.take() {
                        self.emit(&data[start..i]);
                    }
                    if self.cr {
                        self.before_content();
                    }
                    self.space = true;
                }
                _ => {
                    if span.is_none() {
                        self.before_content();
                        span = Some(i);
                    }
                }
            }
            i += 1;
        }
        if let Some(start) = span {
            self.emit(&data[start..]);
        }
    }

    /// The body hash, and the length of the canonical body.
    pub fn finish(mut self) -> (digest::Digest, u64) {
        if self.cr {
            self.before_content(); // a lone CR at the very end is content
        }
        // The canonical body ends with one CRLF; an empty one is nothing (relaxed) or a CRLF
        // (simple).
        if self.any || self.canon == Canon::Simple {
            self.lines = 0;
            self.space = false;
            self.emit(b"\r\n");
        }
        (self.context.finish(), self.length)
    }
}

/// The canonical body, built the plain way: the reference the streaming hasher is tested
/// against (tests and the fuzz target).
pub fn reference_body(canon: Canon, body: &[u8]) -> Vec<u8> {
    // Lines, each without its ending; CRLF and bare LF end lines.
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', body) {
        let end = if lf > start && body[lf - 1] == b'\r' { lf - 1 } else { lf };
        lines.push(body[start..end].to_vec());
        start = lf + 1;
    }
    let unterminated = start < body.len();
    if unterminated {
        lines.push(body[start..].to_vec());
    }
    if canon == Canon::Relaxed {
        for line in &mut lines {
            let mut out = Vec::with_capacity(line.len());
            let mut space = false;
            for &byte in line.iter() {
                if is_wsp(byte) {
                    space = true;
                } else {
                    if space {
                        out.push(b' ');
                    }
                    space = false;
                    out.push(byte);
                }
            }
            *line = out;
        }
    }
    while lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    let mut out = Vec::new();
    for line in &lines {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    if out.is_empty() && canon == Canon::Simple {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashed(canon: Canon, pieces: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut hasher = BodyHasher::new(canon, None);
        for piece in pieces {
            hasher.update(piece);
        }
        let (digest, length) = hasher.finish();
        (digest.as_ref().to_vec(), length)
    }

    fn sha(data: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, data).as_ref().to_vec()
    }

    #[test]
    fn rfc_6376_examples() {
        // §3.4.5: the example body, relaxed and simple.
        let body = b" C \r\nD \t E\r\n\r\n\r\n";
        assert_eq!(reference_body(Canon::Relaxed, body), b" C\r\nD E\r\n");
        assert_eq!(reference_body(Canon::Simple, body), b" C \r\nD \t E\r\n");
        let mut out = Vec::new();
        header_field(Canon::Relaxed, b"A: X", &mut out);
        header_field(Canon::Relaxed, b"B : Y\t\r\n\tZ  ", &mut out);
        assert_eq!(out, b"a:X\r\nb:Y Z\r\n");
        out.clear();
        header_field(Canon::Simple, b"B : Y\t\n\tZ  ", &mut out);
        assert_eq!(out, b"B : Y\t\r\n\tZ  \r\n");
    }

    #[test]
    fn empty_bodies() {
        assert_eq!(hashed(Canon::Relaxed, &[b""]), (sha(b""), 0));
        assert_eq!(hashed(Canon::Relaxed, &[b"\r\n \r\n\t\n"]), (sha(b""), 0));
        assert_eq!(hashed(Canon::Simple, &[b""]), (sha(b"\r\n"), 2));
        assert_eq!(hashed(Canon::Simple, &[b"\r\n\r\n"]), (sha(b"\r\n"), 2));
    }

    #[test]
    fn the_stream_matches_the_reference_however_it_is_split() {
        let bodies: [&[u8]; 12] = [
            b"Hello  world \r\n\tindented\tline\r\n\r\n",
            b"line one\r\nline two\r\nthree\r\n\r\nfour \r\nfive\nsix\r\n \r\nseven\r\n",
            b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\r\nYWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo=\r\nMDEy\r\n\r\n",
            b"x\r\n\ty\r\n\r\r\nz\r\n\r",
            b"no final line ending",
            b"bare\nline\nendings  \n\n",
            b"lone\rcarriage\r\rreturns\r",
            b"trailing space at the end \t",
            b"\r\n\r\nleading empty lines\r\n",
            b"8-bit \xe9t\xe9  \xff\r\n",
            b"  \r\n",
            b"a\r\r\nb \r \r\n",
        ];
        for body in bodies {
            for canon in [Canon::Simple, Canon::Relaxed] {
                let expected = reference_body(canon, body);
                let whole = hashed(canon, &[body]);
                assert_eq!(whole, (sha(&expected), expected.len() as u64), "{canon} {:?}", String::from_utf8_lossy(body));
                for split in 0..=body.len() {
                    let (a, b) = body.split_at(split);
                    assert_eq!(hashed(canon, &[a, b]), whole, "{canon} split at {split} of {:?}", String::from_utf8_lossy(body));
                }
            }
        }
    }

    #[test]
    fn a_length_limit_hashes_the_first_bytes_and_counts_all() {
        let mut hasher = BodyHasher::new(Canon::Relaxed, Some(5));
        hasher.update(b"Hello  world\r\n");
        let (digest, length) = hasher.finish();
        assert_eq!(digest.as_ref(), sha(b"Hello").as_slice());
        assert_eq!(length, 13);
    }
}
