//! Header scanning: find the header block of a raw RFC 5322 message and index the fields
//! routing needs, then read the MIME part headers of a multipart message (bounded work, no body
//! decoding) to find delivery-status parts and their per-recipient fields.
//!
//! `index` is the hot path: its `HeaderIndex` borrows every value from the message and decodes
//! nothing until asked (unfolding, RFC 2047, parameter lists), so routing pays only for the
//! fields it reads. `scan` decodes everything into an owned `HeaderFacts`.
//!
//! The scanner is total: any byte string yields a result. What was odd about the input is
//! reported in `defects` instead of an error, because a relay must route even broken mail.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::{memchr2, memmem};

use crate::encoded_word::decode_header_text;
use crate::labels::Defect;
use crate::line_scanner::LineScanner;

/// Bounds that keep the work per message small whatever the input.
#[derive(Clone, Debug)]
pub struct ScanLimits {
    /// Header bytes read before the scanner gives up on finding the blank line.
    pub max_header_bytes: usize,
    /// Body bytes searched for MIME boundaries and part headers.
    pub max_body_bytes: usize,
    /// MIME parts whose headers are read, over all nesting levels.
    pub max_parts: usize,
    /// Nesting of multipart containers followed.
    pub max_depth: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        // Postfix's header_size_limit is 100 KiB; 1 MiB leaves room for odd but real mail.
        ScanLimits { max_header_bytes: 1 << 20, max_body_bytes: 4 << 20, max_parts: 64, max_depth: 4 }
    }
}

/// A header field value as it stands in the message: from after the colon to the end of its
/// last continuation line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawValue<'a> {
    bytes: &'a [u8],
    folded: bool,
}

impl<'a> RawValue<'a> {
    /// The value as written, folding line breaks included.
    pub fn as_written(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn is_folded(&self) -> bool {
        self.folded
    }

    /// The unfolded value: folding line breaks turned into nothing (the whitespace that starts
    /// a continuation line is kept, as RFC 5322 unfolding says). Borrowed unless folded.
    pub fn unfolded(&self) -> Cow<'a, [u8]> {
        unfold(Cow::Borrowed(self.bytes), self.folded)
    }

    /// Unfolded, white space trimmed at both ends.
    pub fn trimmed(&self) -> Cow<'a, [u8]> {
        match self.unfolded() {
            Cow::Borrowed(bytes) => Cow::Borrowed(trim(bytes)),
            Cow::Owned(bytes) => Cow::Owned(trim(&bytes).to_vec()),
        }
    }

    /// `trimmed`, as text (see `text`).
    pub fn text(&self) -> Cow<'a, str> {
        map_text(self.trimmed(), text)
    }

    /// `trimmed`, with RFC 2047 encoded words decoded (unstructured fields such as Subject).
    pub fn decoded(&self) -> Cow<'a, str> {
        map_text(self.trimmed(), decode_header_text)
    }

    /// Where this value lies in `msg`, the message it was read from.
    pub fn span_in(&self, msg: &[u8]) -> ValueSpan {
        let start = (self.bytes.as_ptr() as usize).wrapping_sub(msg.as_ptr() as usize);
        ValueSpan { start, end: start.wrapping_add(self.bytes.len()), folded: self.folded }
    }
}

/// A `RawValue` without the borrow: where a field value lies in its message, for results that
/// outlive the scan (a `Decision`) and read the field later from the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueSpan {
    start: usize,
    end: usize,
    folded: bool,
}

impl ValueSpan {
    /// The value in `msg`, which must be the message the span came from; None when `msg` is
    /// too short to be it.
    pub fn in_message(self, msg: &[u8]) -> Option<RawValue<'_>> {
        msg.get(self.start..self.end).map(|bytes| RawValue { bytes, folded: self.folded })
    }
}

/// Unfolds bytes from a field value, when it is `folded`: every CR and LF in a field value is a
/// line break (lines are split at any of them), and unfolding removes line breaks, keeping the
/// white space that follows them. Borrowed when there is nothing to remove.
#[inline]
fn unfold(bytes: Cow<'_, [u8]>, folded: bool) -> Cow<'_, [u8]> {
    // Most values are not folded: that test stays inline at the call, the removal does not.
    if folded {
        remove_line_breaks(bytes)
    } else {
        bytes
    }
}

fn remove_line_breaks(bytes: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    if memchr2(b'\r', b'\n', &bytes).is_none() {
        return bytes;
    }
    Cow::Owned(bytes.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect())
}

/// A kept field's text, owned (for the decoded forms, `HeaderFacts` and `RecipientStatus`).
fn owned_text(value: Option<RawValue>) -> Option<String> {
    value.map(|v| v.text().into_owned())
}

fn has_part(parts: &[PartInfo], maintype: &str, subtype: &str) -> bool {
    parts.iter().any(|p| p.content_type.is(maintype, subtype))
}

/// Applies a borrowing decoder to bytes that may be owned, keeping the borrow when they are not.
fn map_text<'a>(bytes: Cow<'a, [u8]>, decode: impl for<'b> Fn(&'b [u8]) -> Cow<'b, str>) -> Cow<'a, str> {
    match bytes {
        Cow::Borrowed(bytes) => decode(bytes),
        Cow::Owned(bytes) => Cow::Owned(decode(&bytes).into_owned()),
    }
}

/// A parsed Content-Type. The media type is parsed when the field is read (it decides the part
/// walk); the parameter list is kept as written and parsed when a parameter is asked for.
///
/// The value is parsed without unfolding it first: a folding line break is always followed by
/// white space, so outside names and values it is white space to trim, and the few names and
/// values with a fold inside are unfolded when read. Quoting and comments are unaffected: a
/// line break is neither a quote, a backslash, a parenthesis nor a `;`, and a quoted pair
/// that escapes a CR yields, once unfolded, the same text as one that escapes the space after.
#[derive(Clone, Debug)]
pub struct ContentType<'a> {
    /// Lowercased media type, e.g. `multipart`. Common names are static strings, not copies.
    pub maintype: Cow<'static, str>,
    /// Lowercased subtype, e.g. `report`.
    pub subtype: Cow<'static, str>,
    /// What follows the media type's `;`, comments removed, as written (maybe folded).
    params: Cow<'a, [u8]>,
    /// The value holds line breaks: names and values are unfolded when read.
    folded: bool,
}

impl<'a> ContentType<'a> {
    /// The first parameter called `name` (lowercase), unquoted.
    pub fn param(&self, name: &str) -> Option<Cow<'_, str>> {
        self.raw_params()
            .find(|(key, _)| if key.is_ascii() { lowercase_equals(key, name.as_bytes()) } else { lowercase_text(key) == name })
            .map(|(_, value)| param_value(value, self.folded))
    }

    /// Every parameter in order of appearance: lowercased name, unquoted value.
    pub fn params(&self) -> impl Iterator<Item = (Cow<'static, str>, Cow<'_, str>)> {
        self.raw_params().map(|(key, value)| (lowercase_name(&key, PARAM_NAMES), param_value(value, self.folded)))
    }

    /// Names (unfolded) and values (as written), trimmed, skipping pieces that are not
    /// `name=value`.
    fn raw_params(&self) -> impl Iterator<Item = (Cow<'_, [u8]>, &[u8])> {
        Params { rest: Some(&self.params) }.filter_map(|piece| {
            let piece = trim(piece);
            let eq = memchr::memchr(b'=', piece)?;
            let name = trim(&piece[..eq]);
            (!name.is_empty()).then(|| (unfold(Cow::Borrowed(name), self.folded), trim(&piece[eq + 1..])))
        })
    }

    pub fn is(&self, maintype: &str, subtype: &str) -> bool {
        self.maintype == maintype && self.subtype == subtype
    }

    pub fn mime_type(&self) -> String {
        format!("{}/{}", self.maintype, self.subtype)
    }

    pub fn into_owned(self) -> ContentType<'static> {
        ContentType { params: Cow::Owned(self.params.into_owned()), ..self }
    }
}

/// A parameter's value as written: unquoted, unfolded, as text.
fn param_value(raw: &[u8], folded: bool) -> Cow<'_, str> {
    map_text(unfold(unquote(raw), folded), text)
}

/// Equal when the media types and the parsed parameters are, however they were written.
impl PartialEq for ContentType<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.maintype == other.maintype && self.subtype == other.subtype && self.params().eq(other.params())
    }
}

/// The per-recipient fields of a delivery-status part (RFC 3464 section 2.3), decoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecipientStatus {
    pub final_recipient: Option<String>,
    /// Lowercased.
    pub action: Option<String>,
    pub status: Option<String>,
    pub diagnostic_code: Option<String>,
}

/// `RecipientStatus` as written in the message, decoded on demand.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecipientFields<'a> {
    pub final_recipient: Option<RawValue<'a>>,
    pub action: Option<RawValue<'a>>,
    pub status: Option<RawValue<'a>>,
    pub diagnostic_code: Option<RawValue<'a>>,
}

impl RecipientFields<'_> {
    pub fn decode(&self) -> RecipientStatus {
        RecipientStatus {
            final_recipient: owned_text(self.final_recipient),
            action: owned_text(self.action).map(|mut action| {
                action.make_ascii_lowercase();
                action
            }),
            status: owned_text(self.status),
            diagnostic_code: owned_text(self.diagnostic_code),
        }
    }
}

/// One MIME part seen while walking the message's own structure.
#[derive(Clone, Debug, PartialEq)]
pub struct PartInfo<'a> {
    pub content_type: ContentType<'a>,
    /// 1 for a direct child of the top-level multipart, 2 for a grandchild, ...
    pub depth: usize,
}

/// Fields whose mere presence says a program, not a person, wrote the message.
pub const MARKER_FIELDS: &[&str] = &[
    "x-ms-exchange-message-is-ndr",
    "x-ms-exchange-generated-message-source",
    "x-autoreply",
    "x-autorespond",
    "x-autogenerated",
    "x-auto-response-suppress",
    "x-mailer-daemon-error",
    "x-failed-recipients",
    "x-ses-outgoing",
    "x-amz-sns-message-id",
];

/// The marker fields present, in order of first appearance, with no allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Markers {
    /// Indexes into `MARKER_FIELDS`; each appears at most once.
    seen: [u8; MARKER_FIELDS.len()],
    len: u8,
}

impl Markers {
    fn add(&mut self, index: usize) {
        if !self.seen[..self.len as usize].contains(&(index as u8)) {
            self.seen[self.len as usize] = index as u8;
            self.len += 1;
        }
    }

    /// Lowercased names, in order of first appearance.
    pub fn iter(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.seen[..self.len as usize].iter().map(|&i| MARKER_FIELDS[i as usize])
    }

    /// Whether the field `name` (one of `MARKER_FIELDS`) is present.
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|m| m == name)
    }
}

/// What a delivery report says about the message it reports on: the reporting MTA (from the
/// per-message block of its delivery-status part) and the original message's Message-ID and
/// From (from its first attached `message/rfc822`, `message/global`, `text/rfc822-headers` or
/// `message/global-headers` part). The first of each wins.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReportFields<'a> {
    pub reporting_mta: Option<RawValue<'a>>,
    pub original_message_id: Option<RawValue<'a>>,
    pub original_from: Option<RawValue<'a>>,
    /// The original's header fields were read (only the first attached message counts).
    original_read: bool,
}

/// Content types that carry the reported message, or its header, inside a report.
fn carries_original(ct: &ContentType) -> bool {
    ct.is("message", "rfc822") || ct.is("message", "global") || ct.is("text", "rfc822-headers") || ct.is("message", "global-headers")
}

/// What the scanner found, borrowed from the message; values are decoded only when read.
#[derive(Clone, Debug, Default)]
pub struct HeaderIndex<'a> {
    /// Offset of the first header field: after what the scanner skipped before it (the
    /// `leading-bom`, `leading-blank-lines`, `mbox-from-line`, `escaped-from-line` and
    /// `junk-before-header` defects). `header_block` gives the same offset.
    pub header_start: usize,
    /// Bytes of the header block from `header_start`, including the blank line that ends it.
    pub header_length: usize,
    /// Number of header fields read.
    pub field_count: usize,
    pub content_type: Option<ContentType<'a>>,
    /// The first of each of these fields.
    pub from: Option<RawValue<'a>>,
    pub sender: Option<RawValue<'a>>,
    pub return_path: Option<RawValue<'a>>,
    pub subject: Option<RawValue<'a>>,
    pub auto_submitted: Option<RawValue<'a>>,
    pub precedence: Option<RawValue<'a>>,
    pub x_failed_recipients: Option<RawValue<'a>>,
    pub message_id: Option<RawValue<'a>>,
    /// Every value of the configured spam-score header, in order.
    pub score_header_values: Vec<RawValue<'a>>,
    /// The first value of the configured route header (the routing rules' `header_values`),
    /// and whether it came more than once (then no rule reads it).
    pub route_header: Option<RawValue<'a>>,
    pub route_header_repeated: bool,
    /// Other fields that mark automatic mail (X-MS-Exchange-Message-Is-Ndr, X-Autoreply, ...).
    pub markers: Markers,
    /// A Received field says qmail handled the message "invoked for bounce".
    pub qmail_bounce: bool,
    /// The message's own MIME parts (not those inside an attached message).
    pub parts: Vec<PartInfo<'a>>,
    /// Per-recipient fields of every delivery-status part found among `parts`.
    pub recipients: Vec<RecipientFields<'a>>,
    /// What a report says about the reporting MTA and the original message.
    pub report: ReportFields<'a>,
    /// What was odd about the input, as stable strings.
    pub defects: Vec<Defect>,
}

impl HeaderIndex<'_> {
    pub fn has_part(&self, maintype: &str, subtype: &str) -> bool {
        has_part(&self.parts, maintype, subtype)
    }

    /// Every field decoded into owned values.
    pub fn to_facts(&self) -> HeaderFacts {
        HeaderFacts {
            header_start: self.header_start,
            header_length: self.header_length,
            field_count: self.field_count,
            content_type: self.content_type.clone().map(ContentType::into_owned),
            from: owned_text(self.from),
            sender: owned_text(self.sender),
            return_path: owned_text(self.return_path),
            subject: self.subject.map(|v| v.decoded().into_owned()),
            auto_submitted: owned_text(self.auto_submitted),
            precedence: owned_text(self.precedence),
            x_failed_recipients: owned_text(self.x_failed_recipients),
            message_id: owned_text(self.message_id),
            score_header_values: self.score_header_values.iter().map(|v| v.text().into_owned()).collect(),
            marker_fields: self.markers.iter().map(str::to_owned).collect(),
            qmail_bounce: self.qmail_bounce,
            parts: self
                .parts
                .iter()
                .map(|p| PartInfo { content_type: p.content_type.clone().into_owned(), depth: p.depth })
                .collect(),
            recipients: self.recipients.iter().map(RecipientFields::decode).collect(),
            reporting_mta: owned_text(self.report.reporting_mta),
            original_message_id: owned_text(self.report.original_message_id),
            original_from: owned_text(self.report.original_from),
            defects: self.defects.clone(),
        }
    }
}

/// `HeaderIndex` with every value decoded and owned.
#[derive(Clone, Debug, Default)]
pub struct HeaderFacts {
    /// Offset of the first header field (see `HeaderIndex::header_start`).
    pub header_start: usize,
    /// Bytes of the header block from `header_start`, including the blank line that ends it.
    pub header_length: usize,
    /// Number of header fields read.
    pub field_count: usize,
    pub content_type: Option<ContentType<'static>>,
    pub from: Option<String>,
    pub sender: Option<String>,
    pub return_path: Option<String>,
    /// The Subject with RFC 2047 encoded words decoded.
    pub subject: Option<String>,
    pub auto_submitted: Option<String>,
    pub precedence: Option<String>,
    pub x_failed_recipients: Option<String>,
    pub message_id: Option<String>,
    /// Every value of the configured spam-score header, in order.
    pub score_header_values: Vec<String>,
    /// Lowercased names of other fields that mark automatic mail
    /// (X-MS-Exchange-Message-Is-Ndr, X-Autoreply, ...), in order of appearance.
    pub marker_fields: Vec<String>,
    /// A Received field says qmail handled the message "invoked for bounce".
    pub qmail_bounce: bool,
    /// The message's own MIME parts (not those inside an attached message).
    pub parts: Vec<PartInfo<'static>>,
    /// Per-recipient fields of every delivery-status part found among `parts`.
    pub recipients: Vec<RecipientStatus>,
    /// `Reporting-MTA` of the delivery-status part, as written (e.g. `dns; mx.example.net`).
    pub reporting_mta: Option<String>,
    /// Message-ID and From of the message a report is about (its attached message or headers).
    pub original_message_id: Option<String>,
    pub original_from: Option<String>,
    /// What was odd about the input, as stable strings.
    pub defects: Vec<Defect>,
}

impl HeaderFacts {
    pub fn has_part(&self, maintype: &str, subtype: &str) -> bool {
        has_part(&self.parts, maintype, subtype)
    }
}

/// `name` lowercased equals `lowercased` exactly (which may hold uppercase and then never matches).
#[inline]
fn lowercase_equals(name: &[u8], lowercased: &[u8]) -> bool {
    name.len() == lowercased.len() && name.iter().zip(lowercased).all(|(a, b)| a.to_ascii_lowercase() == *b)
}

/// qmail's bounce notice names itself in a Received field.
static QMAIL_BOUNCE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"invoked for bounce"));
static QMAIL_INVOKED: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"invoked"));

/// Whether the unfolded value holds "invoked for bounce", unfolding only when it might: a
/// continuation line starts with white space, so a fold can fall between the words but never
/// inside "invoked".
fn is_qmail_bounce(value: RawValue) -> bool {
    let raw = value.as_written();
    if !value.is_folded() {
        return QMAIL_BOUNCE.find(raw).is_some();
    }
    QMAIL_INVOKED.find(raw).is_some() && QMAIL_BOUNCE.find(&value.unfolded()).is_some()
}

/// A position in `msg` after the line starting at `pos`, and the end of that line's content.
/// Line ends are CRLF, LF or a bare CR.
#[inline]
fn next_line(msg: &[u8], pos: usize) -> (usize, usize) {
    let end = memchr2(b'\n', b'\r', &msg[pos..]).map_or(msg.len(), |i| pos + i);
    (end, line_after(msg, end))
}

/// The start of the next line, given where this one's content ends (at its line break).
#[inline]
fn line_after(msg: &[u8], line_end: usize) -> usize {
    match msg.get(line_end) {
        None => msg.len(),
        Some(b'\r') if msg.get(line_end + 1) == Some(&b'\n') => line_end + 2,
        Some(_) => line_end + 1,
    }
}

/// One header field, borrowed from the message.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: RawValue<'a>,
}

/// Reads the header block starting at `start`, calling `sink` for each field.
/// Returns the offset just past the blank line (or where reading stopped), and false when every
/// byte of every field is certainly ASCII (true: maybe not, look).
pub fn read_fields<'a>(
    msg: &'a [u8],
    start: usize,
    limit: usize,
    defects: &mut Vec<Defect>,
    mut sink: impl FnMut(Field<'a>),
) -> (usize, bool) {
    let stop = msg.len().min(start.saturating_add(limit));
    let mut pos = start;
    // The field being read: where its name and value start and end, and whether it is folded.
    let mut current: Option<(usize, usize, usize, usize, bool)> = None;
    let field = |(name_start, name_end, value_start, value_end, folded): (usize, usize, usize, usize, bool)| Field {
        name: &msg[name_start..name_end],
        value: RawValue { bytes: &msg[value_start..value_end], folded },
    };
    let mut scanner = LineScanner::new(msg);
    while pos < msg.len() {
        // A line break also stops a name, so the name's end comes first and the line's end is
        // searched from there.
        let name_end = scanner.name_stop(pos).unwrap_or(msg.len());
        let line_end = scanner.line_break(name_end).unwrap_or(msg.len());
        let next = line_after(msg, line_end);
        if line_end > stop {
            defects.push(Defect::HeaderTooLarge);
            // Skip to the blank line if there is one, so part headers still are found; bounded
            // because a header block without one ends the search at the end of the input.
            pos = find_blank_line(msg, pos).unwrap_or(msg.len());
            break;
        }
        let line = &msg[pos..line_end];
        if line.is_empty() {
            pos = next;
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match current.as_mut() {
                Some((_, _, _, value_end, folded)) => {
                    *value_end = line_end;
                    *folded = true;
                }
                None => defects.push(Defect::ContinuationWithoutField),
            }
            pos = next;
            continue;
        }
        match field_colon(msg, pos, name_end, line_end) {
            Some(colon) => {
                if let Some(done) = current.take() {
                    sink(field(done));
                }
                current = Some((pos, name_end, colon + 1, line_end, false));
                pos = next;
            }
            None => {
                // A line that is neither a field nor a continuation ends the header block, as in
                // Postfix and Python's email package; the line belongs to the body.
                defects.push(Defect::MissingHeaderBodySeparator);
                break;
            }
        }
    }
    if let Some(done) = current.take() {
        sink(field(done));
    }
    (pos, scanner.saw_eight_bit())
}

fn find_blank_line(msg: &[u8], from: usize) -> Option<usize> {
    let rest = &msg[from..];
    [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
        .iter()
        .filter_map(|sep| memmem::find(rest, sep).map(|i| (i, sep.len())))
        .min()
        .map(|(i, len)| from + i + len)
}

/// The colon of `Name: value`, for a line from `start` to `line_end` whose name (printable
/// ASCII but `:`) ends at `name_end`; white space before the colon is tolerated (obsolete
/// syntax, RFC 5322 section 4.5). None when the line is not a field.
fn field_colon(msg: &[u8], start: usize, name_end: usize, line_end: usize) -> Option<usize> {
    if name_end == start {
        return None;
    }
    let colon = name_end + msg[name_end..line_end].iter().position(|&b| b != b' ' && b != b'\t')?;
    (msg[colon] == b':').then_some(colon)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = bytes.iter().position(|b| !is_space(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !is_space(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Header text as a string: UTF-8 when it is, otherwise each byte as Latin-1, so 8-bit garbage
/// never fails and ASCII matching still works. Borrowed when UTF-8.
pub fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(bytes.iter().map(|&b| b as char).collect()),
    }
}

/// Parses a Content-Type value as written (maybe folded). Returns None for a value with no
/// `type/subtype`.
pub fn parse_content_type(value: &[u8]) -> Option<ContentType<'_>> {
    content_type_of(RawValue { bytes: value, folded: memchr2(b'\r', b'\n', value).is_some() })
}

fn content_type_of(value: RawValue<'_>) -> Option<ContentType<'_>> {
    let folded = value.folded;
    let value = strip_comments(trim(value.bytes));
    let media = Params { rest: Some(&value) }.next()?;
    let params_start = (media.len() + 1).min(value.len());
    let media = trim(media);
    let slash = memchr::memchr(b'/', media)?;
    let maintype = trim(&media[..slash]);
    let subtype = trim(&media[slash + 1..]);
    if maintype.is_empty() || subtype.is_empty() {
        return None;
    }
    let name = |bytes: &[u8], known| lowercase_name(&unfold(Cow::Borrowed(bytes), folded), known);
    let (maintype, subtype) = (name(maintype, MAINTYPES), name(subtype, SUBTYPES));
    let params = match value {
        Cow::Borrowed(bytes) => Cow::Borrowed(&bytes[params_start..]),
        Cow::Owned(mut bytes) => {
            bytes.drain(..params_start);
            Cow::Owned(bytes)
        }
    };
    Some(ContentType { maintype, subtype, params, folded })
}

const MAINTYPES: &[&str] = &["text", "multipart", "message", "application", "image", "audio", "video"];
const SUBTYPES: &[&str] = &[
    "plain",
    "html",
    "mixed",
    "alternative",
    "related",
    "report",
    "delivery-status",
    "global-delivery-status",
    "rfc822",
    "global",
    "rfc822-headers",
    "global-headers",
    "feedback-report",
    "disposition-notification",
    "octet-stream",
];
const PARAM_NAMES: &[&str] = &["boundary", "charset", "report-type", "format", "delsp", "name", "type"];

/// `lowercase_text(bytes)`, as one of `known` when it is one (no allocation then).
fn lowercase_name(bytes: &[u8], known: &[&'static str]) -> Cow<'static, str> {
    // The known names are distinct lowercase strings, so at most one matches ignoring case.
    match known.iter().find(|k| k.as_bytes().eq_ignore_ascii_case(bytes)) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(lowercase_text(bytes)),
    }
}

/// `text` of the ASCII-lowercased bytes (lowercasing ASCII changes neither UTF-8 validity nor
/// any other byte, so lowercasing the text after is the same).
fn lowercase_text(bytes: &[u8]) -> String {
    let mut out = text(bytes).into_owned();
    out.make_ascii_lowercase();
    out
}
/// Removes RFC 5322 comments outside quoted strings (`text/plain (comment); ...`).
fn strip_comments(value: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr(b'(', value).is_none() {
        return Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for &b in value {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(b);
            }
            continue;
        }
        match b {
            b'\\' if quoted || depth > 0 => {
                escaped = true;
                if depth == 0 {
                    out.push(b);
                }
            }
            b'"' if depth == 0 => {
                quoted = !quoted;
                out.push(b);
            }
            b'(' if !quoted => depth += 1,
            b')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(b),
            _ => {}
        }
    }
    Cow::Owned(out)
}

/// The pieces of a parameter list: split on `;` outside quoted strings. A split happens only
/// outside quotes and escapes, so each piece starts in the unquoted state.
struct Params<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Params<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let value = self.rest?;
        let mut quoted = false;
        let mut i = 0;
        while let Some(found) = memchr::memchr3(b';', b'"', b'\\', &value[i..]) {
            let j = i + found;
            match value[j] {
                // A quoted pair: the next byte is taken as it is.
                b'\\' if quoted => {
                    i = value.len().min(j + 2);
                    continue;
                }
                b'"' => quoted = !quoted,
                b';' if !quoted => {
                    self.rest = Some(&value[j + 1..]);
                    return Some(&value[..j]);
                }
                _ => {}
            }
            i = j + 1;
        }
        self.rest = None;
        Some(value)
    }
}

fn unquote(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.len() >= 2 && raw[0] == b'"' {
        let inner = &raw[1..];
        // Without a quoted pair the text is what lies between the quotes: no copy.
        match memchr2(b'"', b'\\', inner) {
            None => return Cow::Borrowed(inner),
            Some(i) if inner[i] == b'"' => return Cow::Borrowed(&inner[..i]),
            Some(_) => {}
        }
        let mut out = Vec::with_capacity(inner.len());
        let mut escaped = false;
        for &b in inner {
            if escaped {
                out.push(b);
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                break;
            } else {
                out.push(b);
            }
        }
        Cow::Owned(out)
    } else {
        Cow::Borrowed(raw)
    }
}

/// Lines of junk skipped before a header block, at most (Outlook's "Microsoft Mail Internet
/// Headers Version 2.0" line, a saved file's title, ...).
const JUNK_LINES: usize = 5;
/// Bytes of junk skipped before a header block, at most.
const JUNK_BYTES: usize = 1024;

/// Offset after what real files put before a header block, each skipped and reported in
/// `defects`: a UTF-8 byte-order mark, blank lines, an mbox `From ` line or an escaped `>From `
/// line (in any order, a few times at most). The common case (a field name first) costs one
/// byte test. Lines of junk after these are `header_after_junk`'s, once the first line turned
/// out not to be a field; `read_header_block` does both.
fn skip_before_header(msg: &[u8], limits: &ScanLimits, defects: &mut Vec<Defect>) -> usize {
    let mut pos = 0;
    for _ in 0..8 {
        let rest = &msg[pos..];
        match rest.first() {
            Some(0xEF) if rest.starts_with(b"\xEF\xBB\xBF") => {
                defects.push(Defect::LeadingBom);
                pos += 3;
            }
            Some(b'\r' | b'\n') => {
                defects.push(Defect::LeadingBlankLines);
                let stop = msg.len().min(limits.max_header_bytes);
                pos += rest.iter().take(stop.saturating_sub(pos)).take_while(|&&b| b == b'\r' || b == b'\n').count();
                if pos >= stop {
                    break;
                }
            }
            Some(b'F') if rest.starts_with(b"From ") => {
                defects.push(Defect::MboxFromLine);
                pos = next_line(msg, pos).1;
            }
            Some(b'>') if rest.starts_with(b">From ") => {
                defects.push(Defect::EscapedFromLine);
                pos = next_line(msg, pos).1;
            }
            _ => break,
        }
    }
    pos
}

/// Whether the line at `pos` is a field as `read_fields` reads one: `name: value`, the name
/// printable ASCII but `:` (`field_colon`).
fn is_field_line(msg: &[u8], pos: usize) -> bool {
    let name_end = pos + msg[pos..].iter().take_while(|&&b| (33..=126).contains(&b) && b != b':').count();
    field_colon(msg, pos, name_end, next_line(msg, pos).0).is_some()
}

/// Where a header block starts after junk lines from `pos`: the first of the next `JUNK_LINES`
/// lines (within `JUNK_BYTES`) that is a field followed by another field or a continuation.
fn header_after_junk(msg: &[u8], mut pos: usize) -> Option<usize> {
    let limit = msg.len().min(pos + JUNK_BYTES);
    for _ in 0..JUNK_LINES {
        pos = next_line(msg, pos).1;
        if pos >= limit {
            return None;
        }
        if is_field_line(msg, pos) {
            let after = next_line(msg, pos).1;
            let continues = after < msg.len() && (msg[after] == b' ' || msg[after] == b'\t' || is_field_line(msg, after));
            return continues.then_some(pos);
        }
    }
    None
}

/// The one place that decides where a message's header block is: skips what precedes the first
/// field (`skip_before_header`, then junk lines when the first line is not a field: looked for
/// only then, so that mail starting with a field pays nothing for it), passes every field to
/// `sink` and returns the offset of the first field, the offset of the body and whether the
/// fields may hold 8-bit bytes (as `read_fields`). `index`, `header_block` and, through
/// `HeaderIndex::header_start`, the DSN detector all take their answer from here.
fn read_header_block<'a>(
    msg: &'a [u8],
    limits: &ScanLimits,
    defects: &mut Vec<Defect>,
    mut sink: impl FnMut(Field<'a>),
) -> (usize, usize, bool) {
    let mut start = skip_before_header(msg, limits, defects);
    let (mut body_start, mut maybe_eight_bit) = read_fields(msg, start, limits.max_header_bytes, defects, &mut sink);
    if body_start == start && defects.last() == Some(&Defect::MissingHeaderBodySeparator) {
        if let Some(first) = header_after_junk(msg, start) {
            defects.pop();
            defects.push(Defect::JunkBeforeHeader);
            start = first;
            (body_start, maybe_eight_bit) = read_fields(msg, start, limits.max_header_bytes, defects, &mut sink);
        }
    }
    (start, body_start, maybe_eight_bit)
}

/// Where the header block is: the offset of its first field (after what the scanner skips
/// before it: a byte-order mark, blank lines, an mbox `From ` or `>From ` line, a few lines of
/// junk followed by fields) and the offset of the body, just past the blank line that ends the
/// block. Line breaks are CRLF, LF or a bare CR, as everywhere in the scanner. Without a blank
/// line the body starts where the scanner stops reading fields: at the first line that is
/// neither a field nor a continuation (the `missing-header-body-separator` defect), at the end
/// of the message when it ends inside the header block, or past the next blank line when the
/// block is larger than `ScanLimits::max_header_bytes`. The same as `scan(msg).header_start`
/// and `header_start + header_length`.
pub fn header_block(msg: &[u8]) -> (usize, usize) {
    let (start, body, _) = read_header_block(msg, &ScanLimits::default(), &mut Vec::new(), |_| {});
    (start, body)
}

/// Scans `msg` with the default limits and decodes every field; `score_header` is the
/// lowercased name of the trusted spam-score header, if any.
pub fn scan(msg: &[u8], score_header: Option<&str>) -> HeaderFacts {
    index(msg, score_header).to_facts()
}

pub fn scan_with_limits(msg: &[u8], score_header: Option<&str>, limits: &ScanLimits) -> HeaderFacts {
    index_with_limits(msg, score_header, limits).to_facts()
}

/// Indexes `msg` with the default limits: the fields routing reads, borrowed, not decoded.
pub fn index<'a>(msg: &'a [u8], score_header: Option<&str>) -> HeaderIndex<'a> {
    index_with_limits(msg, score_header, &ScanLimits::default())
}

pub fn index_with_limits<'a>(msg: &'a [u8], score_header: Option<&str>, limits: &ScanLimits) -> HeaderIndex<'a> {
    index_with(msg, score_header, None, limits)
}

/// `index`, also keeping the (lowercased) `route_header` the routing rules read.
pub fn index_for<'a>(msg: &'a [u8], score_header: Option<&str>, route_header: Option<&str>) -> HeaderIndex<'a> {
    index_with(msg, score_header, route_header, &ScanLimits::default())
}

fn index_with<'a>(msg: &'a [u8], score_header: Option<&str>, route_header: Option<&str>, limits: &ScanLimits) -> HeaderIndex<'a> {
    let mut index = HeaderIndex::default();
    let mut defects = Vec::new();
    // The first Content-Type field, parsed (None inside: it is not a valid one).
    let mut content_type: Option<Option<ContentType<'a>>> = None;
    // Where the first field starts and the last one ends: between them lie only field names
    // (printable ASCII), line breaks and values, so 8-bit text is looked for in one pass.
    let mut fields_span: Option<(usize, usize)> = None;
    let offset = |part: &[u8]| part.as_ptr() as usize - msg.as_ptr() as usize;
    let (start, body_start, maybe_eight_bit) = read_header_block(msg, limits, &mut defects, |field| {
        index.field_count += 1;
        let value = field.value;
        let value_end = offset(value.as_written()) + value.as_written().len();
        match fields_span.as_mut() {
            Some((_, end)) => *end = value_end,
            None => fields_span = Some((offset(field.name), value_end)),
        }
        let keep_first = |slot: &mut Option<RawValue<'a>>| {
            if slot.is_none() {
                *slot = Some(value);
            }
        };
        // Names are compared without lowercasing a copy; the length picks the candidates.
        let name = field.name;
        match name.len() {
            12 if content_type.is_none() && name.eq_ignore_ascii_case(b"content-type") => {
                content_type = Some(content_type_of(value));
            }
            4 if name.eq_ignore_ascii_case(b"from") => keep_first(&mut index.from),
            6 if name.eq_ignore_ascii_case(b"sender") => keep_first(&mut index.sender),
            11 if name.eq_ignore_ascii_case(b"return-path") => keep_first(&mut index.return_path),
            7 if name.eq_ignore_ascii_case(b"subject") => keep_first(&mut index.subject),
            14 if name.eq_ignore_ascii_case(b"auto-submitted") => keep_first(&mut index.auto_submitted),
            10 if name.eq_ignore_ascii_case(b"precedence") => keep_first(&mut index.precedence),
            19 if name.eq_ignore_ascii_case(b"x-failed-recipients") => keep_first(&mut index.x_failed_recipients),
            10 if name.eq_ignore_ascii_case(b"message-id") => keep_first(&mut index.message_id),
            8 if !index.qmail_bounce && name.eq_ignore_ascii_case(b"received") => index.qmail_bounce = is_qmail_bounce(value),
            _ => {}
        }
        if let Some(score_name) = score_header {
            if lowercase_equals(name, score_name.as_bytes()) {
                index.score_header_values.push(value);
            }
        }
        if let Some(route_name) = route_header {
            if lowercase_equals(name, route_name.as_bytes()) {
                index.route_header_repeated |= index.route_header.is_some();
                index.route_header.get_or_insert(value);
            }
        }
        if name.get(..2).is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"x-")) {
            if let Some(marker) = MARKER_FIELDS.iter().position(|m| name.eq_ignore_ascii_case(m.as_bytes())) {
                index.markers.add(marker);
            }
        }
    });
    index.header_start = start;
    index.header_length = body_start - start;
    if maybe_eight_bit && fields_span.is_some_and(|(first, last)| !msg[first..last].is_ascii()) {
        defects.push(Defect::EightBitHeader);
    }
    if index.field_count == 0 && !msg.is_empty() {
        defects.push(Defect::NoHeaderFields);
    }
    match content_type {
        Some(Some(ct)) => index.content_type = Some(ct),
        Some(None) => defects.push(Defect::InvalidContentType),
        None => {}
    }
    if let Some(ct) = &index.content_type {
        if ct.maintype == "multipart" {
            let body_end = msg.len().min(body_start.saturating_add(limits.max_body_bytes));
            let mut walker = PartWalker {
                msg: &msg[..body_end],
                search_budget: 4 * limits.max_body_bytes,
                limits,
                parts: &mut index.parts,
                recipients: &mut index.recipients,
                report: &mut index.report,
                defects: &mut defects,
            };
            match ct.param("boundary") {
                Some(boundary) if !boundary.is_empty() => walker.walk(body_start, boundary.as_bytes(), 1),
                _ => walker.defects.push(Defect::MultipartWithoutBoundary),
            }
            if body_end < msg.len() {
                defects.push(Defect::BodyScanTruncated);
            }
        } else if ct.is("message", "delivery-status") || ct.is("message", "global-delivery-status") {
            // A bare delivery-status message: read its fields as a part of its own.
            read_delivery_status(msg, body_start, limits, &mut index.recipients, &mut index.report, &mut defects);
        }
    }
    defects.dedup();
    index.defects = defects;
    index
}

struct PartWalker<'a, 'f> {
    msg: &'a [u8],
    /// Bytes left to search for delimiters over all nesting levels: nested parts with bogus
    /// boundaries would otherwise each search the rest of the body.
    search_budget: usize,
    limits: &'f ScanLimits,
    parts: &'f mut Vec<PartInfo<'a>>,
    recipients: &'f mut Vec<RecipientFields<'a>>,
    report: &'f mut ReportFields<'a>,
    defects: &'f mut Vec<Defect>,
}

impl<'a> PartWalker<'a, '_> {
    /// Reads the part headers between `--boundary` delimiter lines from `from` on, following
    /// nested multiparts; message/rfc822 parts are attachments and are not entered.
    fn walk(&mut self, from: usize, boundary: &[u8], depth: usize) {
        // The delimiter is `--` and the boundary; it is matched in place, not built.
        let delimiter_len = boundary.len() + 2;
        let mut pos = from;
        loop {
            let search_end = self.msg.len().min(pos.saturating_add(self.search_budget));
            let Some(found) = find_delimiter_line(&self.msg[..search_end], pos, boundary) else {
                if search_end < self.msg.len() {
                    self.defects.push(Defect::BodyScanTruncated);
                }
                self.search_budget -= search_end.saturating_sub(pos);
                return;
            };
            self.search_budget -= found.saturating_sub(pos);
            let after = found + delimiter_len;
            if self.msg[after..].starts_with(b"--") {
                return; // close delimiter
            }
            let (_, part_start) = next_line(self.msg, after);
            if self.parts.len() >= self.limits.max_parts {
                self.defects.push(Defect::TooManyParts);
                return;
            }
            let mut part_ct: Option<ContentType<'a>> = None;
            let mut bad_ct = false;
            let (part_body, _) = read_fields(self.msg, part_start, 64 << 10, self.defects, |field| {
                if part_ct.is_none() && !bad_ct && field.name.eq_ignore_ascii_case(b"content-type") {
                    part_ct = content_type_of(field.value);
                    bad_ct = part_ct.is_none();
                }
            });
            if bad_ct {
                self.defects.push(Defect::InvalidContentType);
            }
            // RFC 2046: a part without Content-Type is text/plain (message/rfc822 in a digest).
            let ct = part_ct.unwrap_or(ContentType {
                maintype: Cow::Borrowed("text"),
                subtype: Cow::Borrowed("plain"),
                params: Cow::Borrowed(b""),
                folded: false,
            });
            let is_status = ct.is("message", "delivery-status") || ct.is("message", "global-delivery-status");
            let nested = if ct.maintype == "multipart" { ct.param("boundary").map(|b| b.as_bytes().to_vec()) } else { None };
            self.parts.push(PartInfo { content_type: ct, depth });
            if is_status {
                read_delivery_status(self.msg, part_body, self.limits, self.recipients, self.report, self.defects);
            } else if !self.report.original_read && carries_original(&self.parts[self.parts.len() - 1].content_type) {
                self.read_original(part_body);
            }
            if let Some(inner) = nested {
                if depth < self.limits.max_depth && !inner.is_empty() {
                    self.walk(part_body, &inner, depth + 1);
                } else {
                    self.defects.push(Defect::MultipartTooDeep);
                }
            }
            pos = part_body.max(after);
        }
    }
}

impl<'a> PartWalker<'a, '_> {
    /// Reads the Message-ID and From of the attached original message (or its header) whose
    /// fields start at `from`; bounded like a part header, defects of the original not counted.
    fn read_original(&mut self, from: usize) {
        let report = &mut *self.report;
        report.original_read = true;
        read_fields(self.msg, from, 64 << 10, &mut Vec::new(), |field| {
            let slot = match field.name.len() {
                10 if field.name.eq_ignore_ascii_case(b"message-id") => &mut report.original_message_id,
                4 if field.name.eq_ignore_ascii_case(b"from") => &mut report.original_from,
                _ => return,
            };
            if slot.is_none() {
                *slot = Some(field.value);
            }
        });
    }
}

static DASHES: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"--"));

/// Finds the delimiter `--boundary` at the start of a line at or after `pos`. Searches for the
/// leading `--` with a finder built once, not one per boundary (building a finder for a long
/// needle costs more than searching a typical body), and skips to the next line after a `--`
/// that does not start a line.
fn find_delimiter_line(msg: &[u8], mut pos: usize, boundary: &[u8]) -> Option<usize> {
    while pos < msg.len() {
        let i = pos + DASHES.find(&msg[pos..])?;
        if i == 0 || msg[i - 1] == b'\n' || msg[i - 1] == b'\r' {
            if msg[i + 2..].starts_with(boundary) {
                return Some(i);
            }
            pos = i + 1;
        } else {
            // No delimiter can start before the next line.
            pos = i + 1 + memchr2(b'\n', b'\r', &msg[i..])?;
        }
    }
    None
}

/// Reads the per-recipient blocks of a delivery-status body (RFC 3464 section 2.1: a
/// per-message block, then one block per recipient, separated by blank lines) into `out`.
fn read_delivery_status<'a>(
    msg: &'a [u8],
    from: usize,
    limits: &ScanLimits,
    out: &mut Vec<RecipientFields<'a>>,
    report: &mut ReportFields<'a>,
    defects: &mut Vec<Defect>,
) {
    let found_before = out.len();
    let mut pos = from;
    // Blank lines may precede the per-message block; a delimiter line ends the part.
    for _ in 0..limits.max_parts.max(1) * 4 {
        while pos < msg.len() && (msg[pos] == b'\n' || msg[pos] == b'\r') {
            pos += 1;
        }
        if pos >= msg.len() || msg[pos..].starts_with(b"--") {
            break;
        }
        let mut status = RecipientFields::default();
        let mut per_recipient = false;
        let (end, _) = read_fields(msg, pos, 64 << 10, &mut Vec::new(), |field| {
            let name = field.name;
            if status.final_recipient.is_none()
                && (name.eq_ignore_ascii_case(b"final-recipient") || name.eq_ignore_ascii_case(b"original-recipient"))
            {
                per_recipient = true;
                status.final_recipient = Some(field.value);
            } else if name.eq_ignore_ascii_case(b"action") {
                per_recipient = true;
                status.action = Some(field.value);
            } else if name.eq_ignore_ascii_case(b"status") {
                per_recipient = true;
                status.status = Some(field.value);
            } else if name.eq_ignore_ascii_case(b"diagnostic-code") {
                status.diagnostic_code = Some(field.value);
            } else if report.reporting_mta.is_none() && name.eq_ignore_ascii_case(b"reporting-mta") {
                report.reporting_mta = Some(field.value);
            }
        });
        if per_recipient {
            out.push(status);
        }
        if end <= pos {
            break;
        }
        pos = end;
    }
    if out.len() == found_before {
        defects.push(Defect::DeliveryStatusWithoutRecipients);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfolds_and_reads_fields_with_any_line_ending() {
        for eol in ["\r\n", "\n", "\r"] {
            let msg = format!("From: a@b{eol}Subject: one{eol} two{eol}X-Spam-Score: 5.5{eol}{eol}body");
            let facts = scan(msg.as_bytes(), Some("x-spam-score"));
            assert_eq!(facts.subject.as_deref(), Some("one two"), "eol {eol:?}");
            assert_eq!(facts.score_header_values, vec!["5.5"]);
            assert_eq!(facts.field_count, 3);
        }
    }

    #[test]
    fn content_type_parameters_quoted_or_not_any_case() {
        let ct = parse_content_type(b"Multipart/REPORT; Report-Type=\"delivery-status\";\r\n\tboundary=abc (x)").unwrap();
        assert_eq!(ct.mime_type(), "multipart/report");
        assert_eq!(ct.param("report-type").as_deref(), Some("delivery-status"));
        assert_eq!(ct.param("boundary").as_deref(), Some("abc"));
        let ct = parse_content_type(b"text/plain; name=\"a;b\\\"c\"").unwrap();
        assert_eq!(ct.param("name").as_deref(), Some("a;b\"c"));
        assert!(parse_content_type(b"garbage").is_none());
    }

    /// Content-Type is parsed on the folded value; it must read as the unfolded one does,
    /// wherever the fold falls (inside quotes, names, values, after a backslash, in comments).
    #[test]
    fn folded_content_type_reads_as_unfolded() {
        let values: &[&[u8]] = &[
            b"multipart/mixed;\r\n boundary=\"a\r\n b\"",
            b"multipart/report; report-type=delivery-status;\r\n\tboundary=\"==x\"",
            b"Multi\r\n part/Mixed; bound\r\n ary=abc",
            b"text/plain; name=\"a\\\r\n b\"; charset=us-\r\n ascii",
            b"text/plain (a\r\n comment); format=flowed\r\n",
            b"message/\r\n delivery-status",
            b"text/plain;\r\n\r\n x=\"\r\n\"",
        ];
        for value in values {
            let unfolded: Vec<u8> = value.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
            let (folded, plain) = (parse_content_type(value), parse_content_type(&unfolded));
            let show = |ct: Option<ContentType>| {
                ct.map(|ct| (ct.mime_type(), ct.params().map(|(k, v)| (k.into_owned(), v.into_owned())).collect::<Vec<_>>()))
            };
            assert_eq!(show(folded), show(plain), "{}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn finds_delivery_status_part_and_recipient_fields() {
        let msg = b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"XX\"\n\n\
preamble\n--XX\nContent-Type: text/plain\n\nhello\n--XX\nContent-Type: message/delivery-status\n\n\
Reporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; a@example.com\nAction: failed\nStatus: 5.1.1\n\n\
Final-Recipient: rfc822; b@example.com\nAction: Delayed\nStatus: 4.4.1\n\n--XX\nContent-Type: message/rfc822\n\n\
Content-Type: multipart/mixed; boundary=YY\n\n--YY\nContent-Type: message/delivery-status\n\n--YY--\n--XX--\n";
        let facts = scan(msg, None);
        let kinds: Vec<String> = facts.parts.iter().map(|p| p.content_type.mime_type()).collect();
        assert_eq!(kinds, ["text/plain", "message/delivery-status", "message/rfc822"]);
        assert_eq!(facts.recipients.len(), 2);
        assert_eq!(facts.recipients[0].status.as_deref(), Some("5.1.1"));
        assert_eq!(facts.recipients[1].action.as_deref(), Some("delayed"));
    }

    #[test]
    fn reads_reporting_mta_and_the_original_message_id_and_from() {
        let msg = b"From: MAILER-DAEMON@mx.example\r\nMessage-ID: <dsn-1@mx.example>\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"XX\"\r\n\r\n--XX\r\n\
Content-Type: text/plain\r\n\r\nSorry.\r\n--XX\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
--XX\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: Alice <alice@acme.example>\r\nMessage-ID:\r\n <orig-7@acme.example>\r\n\
Subject: hi\r\n\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nFrom: second@elsewhere.example\r\nMessage-ID: <no@x>\r\n\r\n--XX--\r\n";
        let facts = scan(msg, None);
        assert_eq!(facts.reporting_mta.as_deref(), Some("dns; mx.example"));
        assert_eq!(facts.original_message_id.as_deref(), Some("<orig-7@acme.example>"));
        assert_eq!(facts.original_from.as_deref(), Some("Alice <alice@acme.example>"));
        // The report's own fields are not the original's.
        assert_eq!(facts.message_id.as_deref(), Some("<dsn-1@mx.example>"));
        // Ordinary mail with an attached message is no report, but the original is read alike;
        // a message without attachments has none.
        let plain = scan(b"From: a@b.example\r\nMessage-ID: <m@b.example>\r\n\r\nHi\r\n", None);
        assert_eq!((plain.reporting_mta, plain.original_message_id, plain.original_from), (None, None, None));
    }

    #[test]
    fn endless_header_block_is_bounded() {
        let mut msg = Vec::new();
        while msg.len() < 3 << 20 {
            msg.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n");
        }
        let facts = scan(&msg, None);
        assert!(facts.defects.contains(&Defect::HeaderTooLarge));
        assert!(facts.field_count < 30_000);
    }

    #[test]
    fn eight_bit_header_text_is_a_defect_but_eight_bit_body_text_is_not() {
        let defect = |msg: &[u8]| scan(msg, None).defects.contains(&Defect::EightBitHeader);
        assert!(defect(b"Subject: caf\xe9\n\nbody"));
        assert!(defect(b"Subject: x\n fold caf\xe9\nFrom: a@b\n\n"));
        // In the same 64 bytes as the headers, but after the blank line.
        assert!(!defect(b"Subject: x\n\ncaf\xe9"));
        // Before the first field (a stray continuation line), as before the index.
        assert!(!defect(b" caf\xe9\nSubject: x\n\n"));
        let long: Vec<u8> = [&b"Subject: "[..], &[b'a'; 200], b"\xe9\n\n"].concat();
        assert!(defect(&long));
    }

    #[test]
    fn what_precedes_the_first_field_is_skipped_and_reported() {
        use Defect::*;
        let cases: &[(&[u8], &[Defect])] = &[
            (b"From someone Sat Oct  4 08:00:09 2025\nFrom: x@y\nSubject: s\n\nbody", &[MboxFromLine]),
            (b">From someone Sat Oct  4 08:00:09 2025\r\nFrom: x@y\r\nSubject: s\r\n\r\nbody", &[EscapedFromLine]),
            (b"\xEF\xBB\xBFFrom: x@y\nSubject: s\n\nbody", &[LeadingBom]),
            (b"\r\n\r\nFrom: x@y\r\nSubject: s\r\n\r\nbody", &[LeadingBlankLines]),
            (b"\xEF\xBB\xBF\nFrom x@y Mon Jan  1 00:00:00 2024\nFrom: x@y\nSubject: s\n\nbody", &[LeadingBom, LeadingBlankLines, MboxFromLine]),
            // Outlook's "Internet headers" view, saved: one line of junk, then the fields.
            (b"Microsoft Mail Internet Headers Version 2.0\r\nFrom: x@y\r\nSubject: s\r\n\r\nbody", &[JunkBeforeHeader]),
            (b"\n\nsaved by webmail\n\nFrom: x@y\nSubject: s\n\nbody", &[LeadingBlankLines, JunkBeforeHeader]),
        ];
        for (msg, defects) in cases {
            let facts = scan(msg, None);
            let shown = String::from_utf8_lossy(msg);
            assert_eq!(facts.from.as_deref(), Some("x@y"), "{shown:?}");
            assert_eq!(facts.subject.as_deref(), Some("s"), "{shown:?}");
            assert_eq!(&facts.defects, defects, "{shown:?}");
            assert_eq!(&msg[facts.header_start..facts.header_start + 5], b"From:", "{shown:?}");
            assert!(msg[facts.header_start + facts.header_length..].starts_with(b"body"), "{shown:?}");
            // header_block is the scanner's answer, junk and all.
            assert_eq!(header_block(msg), (facts.header_start, facts.header_start + facts.header_length), "{shown:?}");
        }
    }

    #[test]
    fn junk_needs_a_header_block_after_it() {
        // Text whose third line happens to look like a field is text: no fields, as before.
        let facts = scan(b"Dear Ann,\nthanks.\nNote: see below\nBob\n", None);
        assert_eq!(facts.field_count, 0);
        assert!(facts.defects.contains(&Defect::NoHeaderFields));
        assert!(!facts.defects.contains(&Defect::JunkBeforeHeader));
        assert_eq!(facts.header_start, 0);
        // More junk lines than allowed.
        let long = b"1\n2\n3\n4\n5\n6\nFrom: x@y\nSubject: s\n\n";
        assert_eq!(scan(long, None).field_count, 0);
        // Blank lines only, and a megabyte of them, are bounded and have no fields.
        let blank = vec![b'\n'; 3 << 20];
        let facts = scan(&blank, None);
        assert_eq!(facts.field_count, 0);
        assert!(facts.header_start <= 1 << 20);
        assert_eq!(header_block(&blank).0, facts.header_start);
    }

    #[test]
    fn non_field_line_ends_headers() {
        let facts = scan(b"From: x@y\nthis is not a header\nSubject: hidden\n\n", None);
        assert_eq!(facts.subject, None);
        assert!(facts.defects.contains(&Defect::MissingHeaderBodySeparator));
    }

    #[test]
    fn header_block_offsets() {
        for eol in ["\r\n", "\n", "\r"] {
            let fields = format!("From: a@b{eol}Subject: one{eol} two{eol}");
            let msg = format!("{fields}{eol}body{eol}");
            assert_eq!(header_block(msg.as_bytes()), (0, fields.len() + eol.len()), "{eol:?}");
            let mbox_line = format!("From a@b Sat Oct  4 08:00:09 2025{eol}");
            let mbox = format!("{mbox_line}{msg}");
            let block = header_block(mbox.as_bytes());
            assert_eq!(block, (mbox_line.len(), mbox_line.len() + fields.len() + eol.len()), "{eol:?}");
            assert_eq!(block.1 - block.0, scan(mbox.as_bytes(), None).header_length);
            // No blank line: the message ends in the header block.
            assert_eq!(header_block(fields.as_bytes()), (0, fields.len()));
            // A line that is not a field ends the block; it belongs to the body.
            let unseparated = format!("{fields}not a field{eol}more{eol}");
            assert_eq!(header_block(unseparated.as_bytes()), (0, fields.len()));
        }
        assert_eq!(header_block(b""), (0, 0));
        // Leading blank lines are skipped (`leading-blank-lines`): no fields, the body after them.
        assert_eq!(header_block(b"\r\nbody"), (2, 2));
        assert_eq!(header_block(b"\n"), (1, 1));
        assert_eq!(header_block(b"From only-an-mbox-line"), (22, 22));
        // "From:" is a field, not an mbox separator line.
        assert_eq!(header_block(b"From: a@b\n\n"), (0, 11));
    }
}
