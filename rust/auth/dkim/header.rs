//! The header block as DKIM reads it: fields as raw spans of the message (name, colon, value
//! and its folded lines, without the final line ending), up to the first empty line. Lines end
//! in CRLF or a bare LF (a message stored with LF is sent with CRLF: both read the same).
//!
//! Nothing is skipped before the first field (unlike `scan::header_block`, which reads saved
//! files): what is signed is what the next hop reads.

/// One header field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The name as written, without white space before the colon.
    pub name: &'a [u8],
    /// The whole field without its final line ending: `Name: value<CRLF><WSP>more`.
    pub raw: &'a [u8],
}

impl Field<'_> {
    pub fn is(&self, name: &[u8]) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// The header block of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub fields: Vec<Field<'a>>,
    /// Where the body starts (after the empty line); the message's length when it has none.
    pub body_start: usize,
    /// True when a line that is neither a field nor a continuation, or a field whose name is
    /// not printable ASCII, ended the block early (`fields` holds those before it).
    pub malformed: bool,
    /// The first line ends in CRLF (or the message has a single line without ending).
    pub crlf: bool,
}

const fn is_wsp(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// A field name: printable ASCII but the colon (RFC 5322 §3.6.8).
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b) && b != b':')
}

fn push<'a>(message: &'a [u8], fields: &mut Vec<Field<'a>>, current: Option<(usize, usize, usize)>) {
    if let Some((start, end, name_end)) = current {
        fields.push(Field { name: &message[start..name_end], raw: &message[start..end] });
    }
}

/// Splits `message` into its header fields and finds where the body starts.
pub fn parse(message: &[u8]) -> Header<'_> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    // The current field: start, end of its last line (before the line ending), name end.
    let mut current: Option<(usize, usize, usize)> = None;
    let mut pos = 0;
    let mut crlf = true;
    let mut first = true;
    let mut malformed = false;
    let mut body_start = message.len();
    while pos < message.len() {
        let (line_end, next) = match memchr::memchr(b'\n', &message[pos..]) {
            Some(offset) => {
                let lf = pos + offset;
                let end = if lf > pos && message[lf - 1] == b'\r' { lf - 1 } else { lf };
                if first {
                    crlf = end != lf;
                }
                (end, lf + 1)
            }
            None => (message.len(), message.len()),
        };
        first = false;
        let line = &message[pos..line_end];
        if line.is_empty() {
            body_start = next;
            break;
        }
        if is_wsp(line[0]) {
            match current.as_mut() {
                Some(field) => field.1 = line_end,
                None => {
                    malformed = true;
                    body_start = pos;
                    break;
                }
            }
        } else {
            let name_end = memchr::memchr(b':', line).map(|colon| {
                let mut end = colon;
                while end > 0 && is_wsp(line[end - 1]) {
                    end -= 1;
                }
                end
            });
            match name_end {
                Some(end) if valid_name(&line[..end]) => {
                    push(message, &mut fields, current.take());
                    current = Some((pos, line_end, pos + end));
                }
                _ => {
                    malformed = true;
                    body_start = pos;
                    break;
                }
            }
        }
        pos = next;
    }
    push(message, &mut fields, current);
    Header { fields, body_start: body_start.min(message.len()), malformed, crlf }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_folding_and_both_line_endings() {
        let message = b"From: a@b.test\r\nSubject: one\r\n two\r\nTo : c@d.test\r\n\r\nbody\r\n";
        let header = parse(message);
        assert!(!header.malformed && header.crlf);
        let names: Vec<&[u8]> = header.fields.iter().map(|f| f.name).collect();
        assert_eq!(names, [&b"From"[..], b"Subject", b"To"]);
        assert_eq!(header.fields[1].raw, b"Subject: one\r\n two");
        assert_eq!(&message[header.body_start..], b"body\r\n");

        let lf = parse(b"From: a\nX: y\n z\n\nbody");
        assert!(!lf.crlf && !lf.malformed);
        assert_eq!(lf.fields[1].raw, b"X: y\n z");
        assert_eq!(lf.body_start, 17);
    }

    #[test]
    fn no_body_and_no_final_line_ending() {
        let header = parse(b"From: a\r\nSubject: x");
        assert_eq!(header.fields.len(), 2);
        assert_eq!(header.fields[1].raw, b"Subject: x");
        assert_eq!(header.body_start, 19);
    }

    #[test]
    fn lines_that_are_not_fields_mark_the_header_malformed() {
        for message in [&b"From a@b Mon Jan 1\r\nFrom: x\r\n\r\n"[..], b" continued\r\nFrom: x\r\n", b"From: x\r\nno colon here\r\n\r\nbody", b"Fr\xc3\xb6m: x\r\n\r\n"] {
            assert!(parse(message).malformed, "{:?}", String::from_utf8_lossy(message));
        }
        // 8-bit values are fine.
        assert!(!parse(b"Subject: gr\xc3\xbc\xc3\x9fe\r\n\r\n").malformed);
    }
}
