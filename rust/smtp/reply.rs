//! SMTP replies as a client reads them (RFC 5321 §4.2), fed in whatever pieces the connection
//! delivers, and the extensions a server lists in its reply to EHLO.
//!
//! A reply is one or more lines `ddd-text` ending with a line `ddd text` (or a bare `ddd`), all
//! with the same code. Lines end with CRLF; a bare LF is taken as a line end too, as every
//! client does, because the line break carries no meaning a server could smuggle past us (the
//! client only reads codes and texts). The text of the lines is kept joined with `\n`, as
//! aiosmtplib gives it, so that a reply reads the same in the spool and in DSNs as before.
//!
//! What is refused (the connection cannot be trusted past it, so the parser stays failed):
//! a line that does not start with three digits whose first is 2 to 5, a fourth byte other than
//! space, `-` or the line end, a continuation line with another code than the first line's, a
//! line longer than [`MAX_LINE`], or a reply longer than [`MAX_REPLY`]. Each check needs only
//! the bytes of the line read so far, and they run in the same order however the input is split,
//! so the outcome does not depend on the reads (fuzz/fuzz_targets/smtp_client.rs checks it).

use std::fmt;

use memchr::memchr;

/// Longest reply line accepted, its line break included. RFC 5321 §4.5.3.1.5 says 512; real
/// servers send longer texts, so this is aiosmtplib's limit.
pub const MAX_LINE: usize = 8192;
/// Longest reply accepted, all its lines' texts together (an EHLO reply with every extension
/// is under 1 KiB).
pub const MAX_REPLY: usize = 64 * 1024;

/// One complete reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The enhanced status code (RFC 3463) the first line starts with, if it does.
    pub enhanced: Option<EnhancedCode>,
    /// The lines' texts (without code and separator) joined with `\n`.
    pub text: String,
}

/// `class.subject.detail` (RFC 3463).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl Reply {
    /// A reply from its code and text lines (tests, local replies).
    pub fn new(code: u16, text: &str) -> Reply {
        Reply { code, enhanced: enhanced_code(text.split('\n').next().unwrap_or("").as_bytes()), text: text.to_owned() }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        self.code / 100 == 2
    }

    /// The lines' texts.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split('\n')
    }
}

impl fmt::Display for Reply {
    /// `code text`, the text's lines joined with `\n`: the form the spool and DSNs keep.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Why the server's bytes are not a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// A line that does not start with a reply code (three digits, the first 2 to 5).
    BadCode,
    /// A code followed by something other than space, `-` or the line end.
    BadSeparator,
    /// A continuation line with another code than the reply's first line.
    CodeChanged,
    /// A line longer than [`MAX_LINE`].
    LineTooLong,
    /// A reply longer than [`MAX_REPLY`].
    TooLong,
}

impl ReplyError {
    pub const ALL: [ReplyError; 5] =
        [ReplyError::BadCode, ReplyError::BadSeparator, ReplyError::CodeChanged, ReplyError::LineTooLong, ReplyError::TooLong];

    pub fn as_str(self) -> &'static str {
        match self {
            ReplyError::BadCode => "a line without a reply code",
            ReplyError::BadSeparator => "a reply code followed by neither space nor '-'",
            ReplyError::CodeChanged => "a multiline reply whose lines have different codes",
            ReplyError::LineTooLong => "a reply line over 8192 bytes",
            ReplyError::TooLong => "a reply over 64 KiB",
        }
    }
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads replies from the connection's bytes in any pieces.
#[derive(Debug, Default)]
pub struct ReplyParser {
    /// The current line so far, without its line break.
    line: Vec<u8>,
    /// The current line's start was checked (it is at least 4 bytes long, or ended).
    checked: bool,
    /// The texts of the current reply's earlier lines, joined with `\n`.
    text: Vec<u8>,
    /// The current reply's code, once its first line was read.
    code: Option<u16>,
    first_line_text: Option<usize>,
    failed: Option<ReplyError>,
}

impl ReplyParser {
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Reads `input` up to the end of the next reply. Returns how many bytes were read and the
    /// reply when one ended (then bytes may be left: the next reply's); `None` when every byte
    /// was read (and kept) without a reply ending. After an error, every call returns it again.
    pub fn parse(&mut self, input: &[u8]) -> (usize, Option<Result<Reply, ReplyError>>) {
        if let Some(error) = self.failed {
            return (input.len(), Some(Err(error)));
        }
        let mut at = 0;
        while at < input.len() {
            let rest = &input[at..];
            match memchr(b'\n', rest) {
                None => {
                    self.line.extend_from_slice(rest);
                    if let Err(error) = self.check_partial() {
                        return (input.len(), Some(Err(self.fail(error))));
                    }
                    return (input.len(), None);
                }
                Some(end) => {
                    self.line.extend_from_slice(&rest[..end]);
                    at += end + 1;
                    if self.line.last() == Some(&b'\r') {
                        self.line.pop();
                    }
                    match self.end_line() {
                        Err(error) => return (at, Some(Err(self.fail(error)))),
                        Ok(Some(reply)) => return (at, Some(Ok(reply))),
                        Ok(None) => {}
                    }
                }
            }
        }
        (at, None)
    }

    /// Every reply in `input` read in one piece, up to and including the first error (tests,
    /// the fuzz target's comparison with a reference).
    pub fn parse_all(input: &[u8]) -> Vec<Result<Reply, ReplyError>> {
        let mut parser = ReplyParser::new();
        let mut replies = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let (used, reply) = parser.parse(&input[at..]);
            at += used;
            match reply {
                Some(reply) => {
                    let failed = reply.is_err();
                    replies.push(reply);
                    if failed {
                        break;
                    }
                }
                None => break,
            }
        }
        replies
    }

    /// True when bytes of an unfinished reply are held.
    pub fn pending(&self) -> bool {
        !self.line.is_empty() || self.code.is_some()
    }

    /// The error the parser stopped at, if any.
    pub fn error(&self) -> Option<ReplyError> {
        self.failed
    }

    fn fail(&mut self, error: ReplyError) -> ReplyError {
        self.failed = Some(error);
        self.line = Vec::new();
        self.text = Vec::new();
        error
    }

    /// Checks what can be checked of a line that has not ended: its code once it has three
    /// bytes, the separator (and that the code is the reply's) once the fourth byte is known
    /// not to be the CR of the line's end, its length. The same checks, in the same order, as
    /// for a line that ended.
    fn check_partial(&mut self) -> Result<(), ReplyError> {
        let len = self.line.len();
        if !self.checked && len >= 3 {
            let separator_known = len >= 5 || (len == 4 && self.line[3] != b'\r');
            self.check_start(separator_known)?;
        }
        // A line of MAX_LINE - 1 bytes could still end with a bare LF, so the limit counts one
        // byte for the line break.
        if len + 1 > MAX_LINE {
            return Err(ReplyError::LineTooLong);
        }
        Ok(())
    }

    /// The code of the current line; with `whole`, its separator too (the line ended, or its
    /// fourth byte is not a CR that may end it), and then the line counts as checked.
    fn check_start(&mut self, whole: bool) -> Result<(), ReplyError> {
        let line = &self.line;
        let code = match line.get(..3) {
            Some(&[a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9']) => {
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
            }
            _ => return Err(ReplyError::BadCode),
        };
        if !whole {
            return Ok(());
        }
        self.checked = true;
        match line.get(3) {
            Some(b' ' | b'-') | None => {}
            Some(_) => return Err(ReplyError::BadSeparator),
        }
        match self.code {
            Some(first) if first != code => Err(ReplyError::CodeChanged),
            _ => Ok(()),
        }
    }

    fn end_line(&mut self) -> Result<Option<Reply>, ReplyError> {
        if !self.checked {
            self.check_start(true)?;
        }
        if self.line.len() + 2 > MAX_LINE {
            return Err(ReplyError::LineTooLong);
        }
        let line = std::mem::take(&mut self.line);
        self.checked = false;
        let code = u16::from(line[0] - b'0') * 100 + u16::from(line[1] - b'0') * 10 + u16::from(line[2] - b'0');
        let last = line.get(3) != Some(&b'-');
        let text = line.get(4..).unwrap_or_default();
        if self.code.is_some() {
            self.text.push(b'\n');
        } else {
            self.code = Some(code);
            self.first_line_text = Some(text.len());
        }
        if self.text.len() + text.len() > MAX_REPLY {
            return Err(ReplyError::TooLong);
        }
        self.text.extend_from_slice(text);
        self.line = line;
        self.line.clear();
        if !last {
            return Ok(None);
        }
        self.code = None;
        let first_len = self.first_line_text.take().unwrap_or(0);
        let text = std::mem::take(&mut self.text);
        let enhanced = enhanced_code(&text[..first_len.min(text.len())]);
        let text = match String::from_utf8(text) {
            Ok(text) => text,
            Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
        };
        Ok(Some(Reply { code, enhanced, text }))
    }
}

/// The RFC 3463 code a reply line's text starts with: `class.subject.detail` (class 2, 4 or 5;
/// subject and detail of one to three digits) followed by a space or the end.
pub fn enhanced_code(text: &[u8]) -> Option<EnhancedCode> {
    let (&class, rest) = text.split_first()?;
    if !matches!(class, b'2' | b'4' | b'5') {
        return None;
    }
    let rest = rest.strip_prefix(b".")?;
    let (subject, rest) = number(rest)?;
    let rest = rest.strip_prefix(b".")?;
    let (detail, rest) = number(rest)?;
    if !(rest.is_empty() || rest[0] == b' ') {
        return None;
    }
    Some(EnhancedCode { class: class - b'0', subject, detail })
}

/// One to three digits at the start of `bytes`, and what follows them.
fn number(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let digits = bytes.iter().take(4).take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let value = bytes[..digits].iter().fold(0u16, |n, &b| n * 10 + u16::from(b - b'0'));
    Some((value, &bytes[digits..]))
}

/// The service extensions a server lists in its reply to EHLO (RFC 5321 §4.1.1.1), the ones
/// the client uses, and every keyword for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub chunking: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub dsn: bool,
    pub enhanced_status_codes: bool,
    /// SIZE was listed (RFC 1870).
    pub size_offered: bool,
    /// The fixed maximum message size SIZE names; `None` when it names none (or 0: no limit).
    pub size_limit: Option<u64>,
    /// Every keyword listed, in upper case, in order.
    pub keywords: Vec<String>,
}

impl Extensions {
    /// The extensions in a 250 reply to EHLO: every line after the first (the server's name
    /// and greeting) is a keyword with its parameters. Unknown keywords are listed and
    /// otherwise ignored; an empty line (smtp-sink ends its list with one) is skipped.
    pub fn from_ehlo(reply: &Reply) -> Extensions {
        let mut extensions = Extensions::default();
        for line in reply.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => extensions.pipelining = true,
                "CHUNKING" => extensions.chunking = true,
                "8BITMIME" => extensions.eight_bit_mime = true,
                "SMTPUTF8" => extensions.smtputf8 = true,
                "STARTTLS" => extensions.starttls = true,
                "DSN" => extensions.dsn = true,
                "ENHANCEDSTATUSCODES" => extensions.enhanced_status_codes = true,
                "SIZE" => {
                    extensions.size_offered = true;
                    extensions.size_limit = words.next().and_then(|n| n.parse::<u64>().ok()).filter(|&n| n > 0);
                }
                _ => {}
            }
            if !extensions.keywords.contains(&keyword) {
                extensions.keywords.push(keyword);
            }
        }
        extensions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Vec<Result<Reply, ReplyError>> {
        ReplyParser::parse_all(input)
    }

    #[test]
    fn single_and_multiline_replies() {
        let replies = parse_all(b"220 mx.test ESMTP\r\n250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n354\n");
        assert_eq!(replies.len(), 3);
        let ehlo = replies[1].as_ref().unwrap();
        assert_eq!(ehlo.code, 250);
        assert_eq!(ehlo.text, "mx.test\nPIPELINING\nSIZE 1000");
        assert_eq!(ehlo.to_string(), "250 mx.test\nPIPELINING\nSIZE 1000");
        let bare = replies[2].as_ref().unwrap();
        assert_eq!((bare.code, bare.text.as_str()), (354, ""));
    }

    #[test]
    fn enhanced_codes() {
        let reply = &parse_all(b"550-5.1.1 no such user\r\n550 5.1.1 really\r\n")[0].clone().unwrap();
        assert_eq!(reply.enhanced, Some(EnhancedCode { class: 5, subject: 1, detail: 1 }));
        assert_eq!(enhanced_code(b"2.0.0"), Some(EnhancedCode { class: 2, subject: 0, detail: 0 }));
        assert_eq!(enhanced_code(b"4.7.123 x"), Some(EnhancedCode { class: 4, subject: 7, detail: 123 }));
        for bad in [&b"3.0.0 x"[..], b"2.0.1234", b"2.0", b"2..0", b"2.0.0x", b"ok"] {
            assert_eq!(enhanced_code(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn malformed_replies() {
        assert_eq!(parse_all(b"hello\r\n"), vec![Err(ReplyError::BadCode)]);
        assert_eq!(parse_all(b"25\r\n"), vec![Err(ReplyError::BadCode)]);
        assert_eq!(parse_all(b"150 go\r\n"), vec![Err(ReplyError::BadCode)]);
        assert_eq!(parse_all(b"250x\r\n"), vec![Err(ReplyError::BadSeparator)]);
        assert_eq!(parse_all(b"250-a\r\n251 b\r\n"), vec![Err(ReplyError::CodeChanged)]);
        let long = [b"250 ".as_slice(), &vec![b'x'; MAX_LINE], b"\r\n"].concat();
        assert_eq!(parse_all(&long), vec![Err(ReplyError::LineTooLong)]);
        let many = b"250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n".repeat(1000);
        assert_eq!(parse_all(&many), vec![Err(ReplyError::TooLong)]);
    }

    #[test]
    fn the_same_replies_at_every_split() {
        let input = b"220 hi\r\n250-one\r\n250-two\r\n250 2.0.0 three\r\n550 5.1.1 no\nxyz\r\n";
        let whole = parse_all(input);
        for cut in 0..input.len() {
            let mut parser = ReplyParser::new();
            let mut out = Vec::new();
            for piece in [&input[..cut], &input[cut..]] {
                let mut at = 0;
                while at < piece.len() {
                    let (used, reply) = parser.parse(&piece[at..]);
                    at += used;
                    match reply {
                        Some(reply) => out.push(reply),
                        None => break,
                    }
                }
                if out.last().is_some_and(Result::is_err) {
                    break;
                }
            }
            assert_eq!(out, whole, "split at {cut}");
        }
    }

    #[test]
    fn extensions_from_ehlo() {
        let reply = Reply::new(
            250,
            "mx.test greets you\nPIPELINING\nsize 35882577\nCHUNKING\n8BITMIME\nSMTPUTF8\nSTARTTLS\nDSN\nENHANCEDSTATUSCODES\nAUTH PLAIN LOGIN\n",
        );
        let ext = Extensions::from_ehlo(&reply);
        assert!(ext.pipelining && ext.chunking && ext.eight_bit_mime && ext.smtputf8 && ext.starttls && ext.dsn);
        assert!(ext.enhanced_status_codes && ext.size_offered);
        assert_eq!(ext.size_limit, Some(35_882_577));
        assert_eq!(ext.keywords.last().map(String::as_str), Some("AUTH"));
        let none = Extensions::from_ehlo(&Reply::new(250, "mx.test\nSIZE\nSIZE 0"));
        assert!(none.size_offered && none.size_limit.is_none() && !none.pipelining);
        assert_eq!(Extensions::from_ehlo(&Reply::new(250, "helo only")), Extensions::default());
    }
}
