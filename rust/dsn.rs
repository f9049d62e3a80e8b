//! DSN detection: tells delivery status notifications (standard RFC 3464/6522/6533 reports and
//! the non-standard bounces real MTAs write) from other automatic reports (read receipts, abuse
//! feedback, vacation replies) and from ordinary mail.
//!
//! Real mail is ambiguous, so the verdict weighs evidence. Each signal that fires adds its
//! points (the `Signal` table); a message is a DSN at `THRESHOLD` points. A *structural* signal (a
//! delivery-status part, X-Failed-Recipients, ...) is something only a bounce carries and
//! reaches the threshold alone. The others add up: a daemon sender and a bounce subject are
//! enough, so are a bounce template's sentence in the body and a bounce subject; a person can
//! write bounce words, so wording alone is not. Trace fields (qmail's `invoked for bounce`
//! Received line, copied through lists and forwards), no-reply senders and Auto-Submitted are
//! hints: they count only together with a sender signal. The body (its first `BODY_WINDOW` bytes) is
//! read only when the headers leave the verdict open and could still close it, so ordinary
//! mail costs a header scan and a subject match.

use std::sync::LazyLock;

use memchr::memmem;

use crate::labels::closed_set;
use crate::matcher::{GroupId, Matcher};
use crate::phrases::{self, Kind, GROUPS};
use crate::scan::{HeaderIndex, RecipientFields, RecipientStatus};

closed_set! {
    /// What kind of automatic report a message is (`REPORT_KINDS` in Python).
    #[derive(Debug)]
    pub enum ReportKind {
        Dsn = "dsn",
        Mdn = "mdn",
        Arf = "arf",
        AutoReply = "auto-reply",
    }
}

closed_set! {
    /// The form a DSN takes (`DSN_KINDS` in Python).
    #[derive(Debug)]
    pub enum DsnKind {
        /// RFC 3464 / RFC 6522: a message/delivery-status part.
        DeliveryStatus = "delivery-status",
        /// RFC 6533: a message/global-delivery-status part.
        GlobalDeliveryStatus = "global-delivery-status",
        /// A bounce with no machine-readable status part, recognised by its other signals.
        NonStandard = "non-standard",
    }
}

closed_set! {
    /// What a signal is evidence of.
    #[derive(Debug)]
    pub enum SignalClass {
        /// Machine-readable structure only bounces carry: decides alone.
        Structure = "structure",
        /// Who sent the message.
        Sender = "sender",
        /// What the subject or body says.
        Text = "text",
        /// Common to bounces and other automatic or relayed mail: never decides alone.
        Hint = "hint",
    }
}

/// What a signal counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalSpec {
    pub class: SignalClass,
    /// Points added when the signal fires; a DSN needs `THRESHOLD`.
    pub points: u32,
}

/// Points a verdict needs.
pub const THRESHOLD: u32 = 100;

const fn spec(class: SignalClass, points: u32) -> SignalSpec {
    SignalSpec { class, points }
}

closed_set! {
    /// The signals a DSN verdict lists (`SIGNALS` in Python), in the order a verdict lists
    /// them, each with what it counts. Public output: keep the names stable. A new signal is
    /// one row here.
    ///
    /// The weights encode the rules: a daemon sender (60) with a bounce subject (50) or any
    /// bounce wording in the body (40) is enough; a template sentence in the body (55) with a
    /// bounce subject (50), a null sender (50) or Auto-Submitted failure (50) is enough, but
    /// with a bounce word a person might put in a subject (40) it is not; a null sender needs
    /// the body. The hints (10-20) count only together with a sender signal.
    pub enum Signal debug_as_name,
    /// The signal's class and points.
    fn spec() -> SignalSpec {
        ReportType = "report-type-delivery-status" => spec(SignalClass::Structure, THRESHOLD),
        StatusPart = "delivery-status-part" => spec(SignalClass::Structure, THRESHOLD),
        FailedRecipients = "x-failed-recipients" => spec(SignalClass::Structure, THRESHOLD),
        ExchangeNdr = "exchange-ndr" => spec(SignalClass::Structure, THRESHOLD),
        SesNotification = "ses-notification" => spec(SignalClass::Structure, THRESHOLD),
        NullSender = "null-sender" => spec(SignalClass::Sender, 50),
        DaemonSender = "daemon-sender" => spec(SignalClass::Sender, 60),
        AutoSubmittedFailure = "auto-submitted-failure" => spec(SignalClass::Sender, 50),
        BounceSubject = "bounce-subject" => spec(SignalClass::Text, 50),
        BounceSubjectWord = "bounce-subject-word" => spec(SignalClass::Text, 40),
        BounceTemplate = "bounce-template" => spec(SignalClass::Text, 55),
        BounceBody = "bounce-body" => spec(SignalClass::Text, 40),
        AutoSubmitted = "auto-submitted" => spec(SignalClass::Hint, 10),
        NoReplySender = "no-reply-sender" => spec(SignalClass::Hint, 10),
        QmailBounce = "qmail-bounce" => spec(SignalClass::Hint, 20),
    }
}

// `Evidence` keeps the signals that fired as bits of a u32.
const _: () = assert!(Signal::ALL.len() <= 32);

impl Signal {
    /// This signal's bit in `Evidence::fired`.
    const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// The bits of every signal of `class`.
    const fn mask(class: SignalClass) -> u32 {
        let mut bits = 0;
        let mut i = 0;
        while i < Signal::ALL.len() {
            let signal = Signal::ALL[i];
            if signal.spec().class as u8 == class as u8 {
                bits |= signal.bit();
            }
            i += 1;
        }
        bits
    }
}

const STRUCTURAL: u32 = Signal::mask(SignalClass::Structure);
const SENDER: u32 = Signal::mask(SignalClass::Sender);
const HINTS: u32 = Signal::mask(SignalClass::Hint);

/// The most points the body can add: reading it is worth it only from `THRESHOLD` minus this.
const BODY_MAX: u32 = Signal::BounceTemplate.spec().points;

#[derive(Clone, Debug, PartialEq)]
pub struct DsnVerdict {
    pub kind: DsnKind,
    /// Every signal that fired, in table order (`Signal::ALL`).
    pub signals: Vec<Signal>,
    /// The signals' points over `THRESHOLD`: 1.0 is just enough, each structural signal counts
    /// 1.0 alone. Only evidence that was read counts (the body is not read once the headers
    /// decided).
    pub strength: f64,
    pub recipients: Vec<RecipientStatus>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    pub report_kind: Option<ReportKind>,
    pub dsn: Option<DsnVerdict>,
}

/// Options of `detect_with`. The default is what routing uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectOptions {
    /// Phrase groups (bit `i` for `phrases::GROUPS[i]`) whose matches are ignored: the corpus
    /// tool's leave-one-family-out run. Tested only when a phrase matches.
    pub disabled_groups: u128,
}

impl DetectOptions {
    /// Options with the groups called `names` disabled; None names an unknown group.
    pub fn without_groups<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, &'a str> {
        let mut disabled_groups = 0u128;
        for name in names {
            disabled_groups |= 1u128 << phrases::group_id(name).ok_or(name)?;
        }
        Ok(DetectOptions { disabled_groups })
    }

    fn enabled(&self, group: GroupId) -> bool {
        self.disabled_groups & (1u128 << group) == 0
    }
}

const SUBJECT_MATCH_CHARS: usize = 512;

/// Body bytes read for bounce phrases when the headers leave the verdict open.
const BODY_WINDOW: usize = 32 << 10;

/// Local parts of addresses that only software sends from.
const DAEMON_LOCAL_PARTS: &[&str] = &[
    "mailer-daemon",
    "mailer_daemon",
    "mailerdaemon",
    "mail-daemon",
    "maildaemon",
    "mdaemon",
    "postmaster",
    "post_master",
    "post-master",
    // The corpus anonymisation spells it so; real mail does not, and the cost of matching is nil.
    "poostmaster",
];

/// Exchange Online sends NDRs from `MicrosoftExchange<32 hex digits>@<tenant domain>`.
const EXCHANGE_SYSTEM_LOCAL_PART: &str = "microsoftexchange";

/// Display names of bounce senders: Postfix and Exim ("Mail Delivery System"), sendmail and
/// Gmail ("Mail Delivery Subsystem"), Courier ("Courier mail server at <host>"), Exchange.
const DAEMON_DISPLAY_NAMES: &[&str] = &[
    "mail delivery system",
    "mail delivery subsystem",
    "mailer-daemon",
    "mailer daemon",
    "ndr administrator",
    "mail delivery service",
    "courier mail server at",
];

const AUTO_REPLY_SUBJECT_PREFIXES: &[&str] =
    &["auto:", "automatic reply", "autoreply", "auto-reply", "auto reply", "out of office", "abwesenheitsnotiz", "réponse automatique", "respuesta automática", "risposta automatica"];

/// Values after `auto-generated`/`auto-replied` in Auto-Submitted that only delivery reports
/// use: sendmail writes `auto-generated (failure)`, `(warning-timeout)`,
/// `(postmaster-notification)`, `(postmaster-warning)`.
const AUTO_SUBMITTED_FAILURES: &[&str] = &["failure", "warning-timeout", "postmaster-notification", "postmaster-warning"];

/// Detects what kind of report `msg` is. `mail_from` is the envelope sender when known: an
/// empty string or `<>` is the null reverse-path.
pub fn detect(facts: &HeaderIndex, msg: &[u8], mail_from: Option<&str>) -> Detection {
    detect_with(facts, msg, mail_from, &DetectOptions::default())
}

/// Which signals fired (`Signal::bit`) and their points.
#[derive(Default)]
struct Evidence {
    fired: u32,
    /// Points of the signals that fired, hints apart.
    points: u32,
    hint_points: u32,
}

impl Evidence {
    fn add(&mut self, signal: Signal) {
        let bit = signal.bit();
        if self.fired & bit == 0 {
            self.fired |= bit;
            if bit & HINTS != 0 {
                self.hint_points += signal.spec().points;
            } else {
                self.points += signal.spec().points;
            }
        }
    }

    /// What the verdict counts: hints only corroborate a sender signal. Relayed and quoted mail
    /// (list posts, helpdesk replies, forwards) carries bounce text together with hints, so
    /// with text alone they would add up to a verdict the text does not support.
    fn total(&self) -> u32 {
        if self.fired & SENDER != 0 {
            self.points + self.hint_points
        } else {
            self.points
        }
    }

    fn structural(&self) -> bool {
        self.fired & STRUCTURAL != 0
    }

    fn signals(&self) -> Vec<Signal> {
        Signal::ALL.iter().copied().filter(|s| self.fired & s.bit() != 0).collect()
    }
}

/// `detect` with options (the corpus tool disables phrase groups).
pub fn detect_with(facts: &HeaderIndex, msg: &[u8], mail_from: Option<&str>, options: &DetectOptions) -> Detection {
    let mut evidence = Evidence::default();
    let report_type = facts
        .content_type
        .as_ref()
        .filter(|ct| ct.is("multipart", "report"))
        .and_then(|ct| ct.param("report-type"));
    let report_type_is = |name: &str| report_type.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(name));
    let global_part = facts.has_part("message", "global-delivery-status");
    let status_part = global_part || facts.has_part("message", "delivery-status");
    let bare_status = facts
        .content_type
        .as_ref()
        .is_some_and(|ct| ct.is("message", "delivery-status") || ct.is("message", "global-delivery-status"));
    if report_type_is("delivery-status") || report_type_is("global-delivery-status") {
        evidence.add(Signal::ReportType);
    }
    if status_part || bare_status {
        evidence.add(Signal::StatusPart);
    }

    let arf = report_type_is("feedback-report") || facts.has_part("message", "feedback-report");
    let mdn =
        report_type_is("disposition-notification") || facts.has_part("message", "disposition-notification");
    if !evidence.structural() && (arf || mdn) {
        let kind = if arf { ReportKind::Arf } else { ReportKind::Mdn };
        return Detection { report_kind: Some(kind), dsn: None };
    }

    if facts.x_failed_recipients.is_some() {
        evidence.add(Signal::FailedRecipients);
    }
    if facts.markers.contains("x-ms-exchange-message-is-ndr") {
        evidence.add(Signal::ExchangeNdr);
    }
    // Amazon SNS delivers SES notifications as JSON mail; the body says which kind.
    if facts.markers.contains("x-amz-sns-message-id") {
        match ses_notification_type(msg, facts).as_deref() {
            Some("bounce" | "delivery") => evidence.add(Signal::SesNotification),
            Some("complaint") if !evidence.structural() => return Detection { report_kind: Some(ReportKind::Arf), dsn: None },
            _ => {}
        }
    }

    let envelope_null = mail_from.map(is_null_path);
    let null_sender = envelope_null.unwrap_or_else(|| facts.return_path.is_some_and(|v| is_null_or_daemon_path(&v.text())));
    if null_sender {
        evidence.add(Signal::NullSender);
    }
    let from_text = facts.from.map(|v| v.text());
    let from = from_text.as_deref().map(SenderAddress::new);
    let sender_text = facts.sender.map(|v| v.text());
    if from.as_ref().is_some_and(SenderAddress::is_daemon) || sender_text.as_deref().is_some_and(|s| SenderAddress::new(s).is_daemon()) {
        evidence.add(Signal::DaemonSender);
    }
    let auto_submitted = facts.auto_submitted.map(|v| v.text());
    if let Some(value) = auto_submitted.as_deref() {
        if AUTO_SUBMITTED_FAILURES.iter().any(|f| contains_ignore_ascii_case(value.as_bytes(), f.as_bytes())) {
            evidence.add(Signal::AutoSubmittedFailure);
        } else if !value.trim().eq_ignore_ascii_case("no") {
            evidence.add(Signal::AutoSubmitted);
        }
    }
    // Bounce subjects state their case up front; matching a megabyte subject would be waste.
    let subject_text = facts.subject.map(|v| v.decoded());
    let subject = subject_text.as_deref().map(|s| {
        let s = without_list_tag(s.trim_start());
        if s.is_ascii() {
            // The matcher ignores ASCII case: no lowercased copy needed.
            Subject::Ascii(&s[..s.len().min(SUBJECT_MATCH_CHARS)])
        } else {
            Subject::Lowercased(s.chars().take(SUBJECT_MATCH_CHARS).collect::<String>().to_lowercase())
        }
    });
    if let Some(subject) = &subject {
        let (mut form, mut word, mut reply) = (false, false, false);
        SUBJECT_MATCHER.scan(subject.text().as_bytes(), true, |group| {
            if options.enabled(group) {
                match GROUPS[group as usize].kind {
                    Kind::SubjectForm => form = true,
                    Kind::SubjectWord => word = true,
                    Kind::ReplyPrefix => reply = true,
                    _ => {}
                }
            }
            false
        });
        // "Re: Undeliverable: ..." and "Fwd: Returned mail" are a person's subjects.
        if !reply && form {
            evidence.add(Signal::BounceSubject);
        } else if !reply && word {
            evidence.add(Signal::BounceSubjectWord);
        }
    }
    if from.as_ref().is_some_and(SenderAddress::is_no_reply) {
        evidence.add(Signal::NoReplySender);
    }
    // Copied through lists and forwards: a hint, not a verdict.
    if facts.qmail_bounce {
        evidence.add(Signal::QmailBounce);
    }

    if !evidence.structural() && evidence.total() < THRESHOLD && evidence.total() + BODY_MAX >= THRESHOLD {
        match body_evidence(msg, facts, options) {
            Some(Kind::BodyTemplate) => evidence.add(Signal::BounceTemplate),
            Some(_) => evidence.add(Signal::BounceBody),
            None => {}
        }
    }

    if evidence.structural() || evidence.total() >= THRESHOLD {
        let kind = if global_part || report_type_is("global-delivery-status") {
            DsnKind::GlobalDeliveryStatus
        } else if status_part || bare_status {
            DsnKind::DeliveryStatus
        } else {
            DsnKind::NonStandard
        };
        return Detection {
            report_kind: Some(ReportKind::Dsn),
            dsn: Some(DsnVerdict {
                kind,
                signals: evidence.signals(),
                strength: f64::from(evidence.total()) / f64::from(THRESHOLD),
                recipients: facts.recipients.iter().map(RecipientFields::decode).collect(),
            }),
        };
    }

    let auto_reply = auto_submitted.as_deref().is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"))
        || facts.markers.contains("x-autoreply")
        || facts.markers.contains("x-autorespond")
        || facts.precedence.is_some_and(|p| p.text().trim().eq_ignore_ascii_case("auto_reply"))
        || subject.as_ref().is_some_and(Subject::starts_like_auto_reply);
    Detection { report_kind: auto_reply.then_some(ReportKind::AutoReply), dsn: None }
}

/// `s` after a leading list tag (`[users] Re: ...`): subject forms and reply prefixes are
/// anchored after it.
fn without_list_tag(s: &str) -> &str {
    match s.strip_prefix('[').and_then(|rest| rest.get(..rest.len().min(64))?.find(']').map(|i| &rest[i + 1..])) {
        Some(rest) => rest.trim_start(),
        None => s,
    }
}

/// The first `SUBJECT_MATCH_CHARS` characters of a Subject, leading white space (and a list
/// tag) removed, as matched against lowercase phrases.
enum Subject<'a> {
    /// ASCII text as written: matched ignoring ASCII case.
    Ascii(&'a str),
    /// Other text, lowercased (Unicode).
    Lowercased(String),
}

impl Subject<'_> {
    fn text(&self) -> &str {
        match self {
            Subject::Ascii(s) => s,
            Subject::Lowercased(s) => s,
        }
    }

    fn starts_like_auto_reply(&self) -> bool {
        match self {
            Subject::Ascii(s) => {
                let s = s.as_bytes();
                AUTO_REPLY_SUBJECT_PREFIXES.iter().any(|p| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
            }
            Subject::Lowercased(s) => AUTO_REPLY_SUBJECT_PREFIXES.iter().any(|p| s.starts_with(p)),
        }
    }
}

/// The strongest kind of body phrase among the first `BODY_WINDOW` bytes of the body: one pass,
/// stopping at the first template sentence.
fn body_evidence(msg: &[u8], facts: &HeaderIndex, options: &DetectOptions) -> Option<Kind> {
    let start = header_end(msg, facts);
    let end = msg.len().min(start + BODY_WINDOW);
    let mut best = None;
    BODY_MATCHER.scan(&msg[start.min(end)..end], false, |group| {
        if !options.enabled(group) {
            return false;
        }
        let kind = GROUPS[group as usize].kind;
        if kind == Kind::BodyTemplate || best.is_none() {
            best = Some(kind);
        }
        kind == Kind::BodyTemplate
    });
    best
}

fn matcher_for(subject: bool) -> Matcher {
    Matcher::new(
        GROUPS
            .iter()
            .enumerate()
            .filter(|(_, g)| g.kind.in_subject() == subject)
            .flat_map(|(id, g)| g.phrases.iter().map(move |p| (*p, id as GroupId))),
    )
}

static SUBJECT_MATCHER: LazyLock<Matcher> = LazyLock::new(|| matcher_for(true));
static BODY_MATCHER: LazyLock<Matcher> = LazyLock::new(|| matcher_for(false));

pub fn is_null_path(path: &str) -> bool {
    let inner = path.trim().trim_start_matches('<').trim_end_matches('>');
    inner.trim().is_empty()
}

/// Return-Path as written by the final delivery: `<>`, or `<MAILER-DAEMON>` as sendmail writes
/// for a null envelope sender.
fn is_null_or_daemon_path(path: &str) -> bool {
    is_null_path(path) || local_part(extract_address(path)).is_some_and(|lp| lp.eq_ignore_ascii_case("mailer-daemon"))
}

/// The address in `Name <addr>`; without brackets, the first word holding an `@` (so that
/// `addr (comment)` yields `addr`), or the whole value.
pub fn extract_address(value: &str) -> &str {
    // Byte searches: the same offsets as `str::rfind` for an ASCII character, without its
    // general char searcher.
    match (memchr::memrchr(b'<', value.as_bytes()), memchr::memrchr(b'>', value.as_bytes())) {
        (Some(open), Some(close)) if open < close => value[open + 1..close].trim(),
        _ => value.split_whitespace().find(|w| w.contains('@')).unwrap_or(value.trim()),
    }
}

fn local_part(address: &str) -> Option<&str> {
    let lp = address.rsplit_once('@').map_or(address, |(lp, _)| lp).trim().trim_matches(&['"', '\\', '\''][..]);
    (!lp.is_empty()).then_some(lp)
}

/// A From or Sender value with its local part, found once for every rule that reads it.
struct SenderAddress<'a> {
    value: &'a str,
    local_part: Option<&'a str>,
    /// `Name <>`: brackets with nothing inside.
    empty: bool,
}

impl<'a> SenderAddress<'a> {
    fn new(value: &'a str) -> Self {
        let address = extract_address(value);
        SenderAddress { value, local_part: local_part(address), empty: address.is_empty() && value.contains('<') }
    }

    fn is_daemon(&self) -> bool {
        if self.empty {
            return true; // `From: Mail Delivery System <>`
        }
        if self.local_part.is_some_and(|lp| {
            DAEMON_LOCAL_PARTS.iter().any(|d| lp.eq_ignore_ascii_case(d))
                || (lp.len() > EXCHANGE_SYSTEM_LOCAL_PART.len()
                    && lp.as_bytes()[..EXCHANGE_SYSTEM_LOCAL_PART.len()].eq_ignore_ascii_case(EXCHANGE_SYSTEM_LOCAL_PART.as_bytes()))
        }) {
            return true;
        }
        let value = self.value;
        if value.is_ascii() {
            // Unicode and ASCII lowercasing agree on ASCII text: no lowercased copy needed.
            return DAEMON_DISPLAY_NAMES.iter().any(|name| contains_ignore_ascii_case(value.as_bytes(), name.as_bytes()));
        }
        let lower = value.to_lowercase();
        DAEMON_DISPLAY_NAMES.iter().any(|name| lower.contains(name))
    }

    fn is_no_reply(&self) -> bool {
        self.local_part.is_some_and(|lp| NO_REPLY_LOCAL_PARTS.iter().any(|n| lp.eq_ignore_ascii_case(n)))
    }
}

const NO_REPLY_LOCAL_PARTS: &[&str] = &["noreply", "no-reply", "no_reply", "donotreply", "do-not-reply"];

#[cfg(test)]
fn is_daemon_address(value: &str) -> bool {
    SenderAddress::new(value).is_daemon()
}

/// Whether `needle` (ASCII lowercase) occurs in `haystack` ignoring ASCII case.
fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}


fn ses_notification_type(msg: &[u8], facts: &HeaderIndex) -> Option<String> {
    let start = header_end(msg, facts);
    let body = &msg[start..msg.len().min(start + 4096)];
    let key = memmem::find(body, b"notificationType")? + "notificationType".len();
    let rest = &body[key..];
    let open = rest.iter().take(16).position(|b| !matches!(b, b'\\' | b'"' | b':' | b' '))?;
    let len = rest[open..].iter().take(32).position(|b| matches!(b, b'\\' | b'"'))?;
    Some(String::from_utf8_lossy(&rest[open..open + len]).to_ascii_lowercase())
}

/// Where the body starts: the scanner's header start (`scan::header_block`'s answer, kept in
/// the index) plus the header block's length.
fn header_end(msg: &[u8], facts: &HeaderIndex) -> usize {
    (facts.header_start + facts.header_length).min(msg.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::index;

    fn detect_bytes(msg: &[u8], mail_from: Option<&str>) -> Detection {
        detect(&index(msg, None), msg, mail_from)
    }

    #[test]
    fn standard_report_is_a_dsn() {
        let msg = b"From: MAILER-DAEMON@x\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; a@b\nAction: failed\nStatus: 5.1.1\n\n--b--\n";
        let d = detect_bytes(msg, None);
        let dsn = d.dsn.unwrap();
        assert_eq!(dsn.kind, DsnKind::DeliveryStatus);
        assert_eq!(&dsn.signals[..2], [Signal::ReportType, Signal::StatusPart]);
        assert!(dsn.signals.contains(&Signal::DaemonSender));
        assert_eq!(dsn.recipients[0].status.as_deref(), Some("5.1.1"));
    }

    #[test]
    fn vacation_reply_is_not_a_dsn() {
        let msg = b"Return-Path: <>\nFrom: kijitora@example.net\nAuto-Submitted: auto-replied\nSubject: Away until May\n\nI am away.\n";
        let d = detect_bytes(msg, None);
        assert_eq!(d.report_kind, Some(ReportKind::AutoReply));
        assert!(d.dsn.is_none());
    }

    #[test]
    fn envelope_sender_overrides_return_path() {
        let msg = b"Return-Path: <>\nFrom: postmaster@example.org\nSubject: hello\n\nhi\n";
        assert!(detect_bytes(msg, None).dsn.is_some());
        assert!(detect_bytes(msg, Some("user@example.org")).dsn.is_none());
        assert!(detect_bytes(b"From: postmaster@x\nSubject: hello\n\nhi\n", Some("<>")).dsn.is_some());
    }

    #[test]
    fn feedback_report_is_arf_not_dsn() {
        let msg = b"Return-Path: <>\nFrom: postmaster@x\nContent-Type: multipart/report; report-type=feedback-report; boundary=b\n\n--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n--b--\n";
        let d = detect_bytes(msg, None);
        assert_eq!(d.report_kind, Some(ReportKind::Arf));
        assert!(d.dsn.is_none());
    }

    #[test]
    fn body_is_read_only_when_the_headers_leave_the_verdict_open() {
        let msg = b"From: MAILER-DAEMON@x\nSubject: hi\n\nThis is the mail system at host x.\n";
        let d = detect_bytes(msg, Some("a@b"));
        assert_eq!(d.dsn.unwrap().signals, [Signal::DaemonSender, Signal::BounceTemplate]);
        let wording = b"From: MAILER-DAEMON@x\nSubject: hi\n\n<a@b>: user unknown\n";
        assert_eq!(detect_bytes(wording, Some("a@b")).dsn.unwrap().signals, [Signal::DaemonSender, Signal::BounceBody]);
        // No header evidence: the body is not read, whatever it says.
        let ordinary = b"From: a@b\nSubject: hi\n\nThis is the mail system at host x. The message could not be delivered\n";
        assert!(detect_bytes(ordinary, Some("a@b")).dsn.is_none());
        // Decided by the headers: the body adds nothing to the signals.
        let decided = b"From: MAILER-DAEMON@x\nSubject: Undelivered Mail Returned to Sender\n\nThis is the mail system at host x.\n";
        assert_eq!(detect_bytes(decided, Some("a@b")).dsn.unwrap().signals, [Signal::DaemonSender, Signal::BounceSubject]);
    }

    /// Exim's own bounce, from a sender no daemon list knows: the subject form and the template
    /// sentence decide together.
    const EXIM_FROM_NDR: &[u8] = b"From: ndr@mx.example.net\nTo: a@example.com\n\
Subject: Mail delivery failed: returning message to sender\n\n\
This message was created automatically by mail delivery software.\n\n\
A message that you sent could not be delivered to one or more of its\nrecipients. This is a permanent error. \
The following address(es) failed:\n\n  b@example.org\n    Unrouteable address\n";

    #[test]
    fn template_body_and_bounce_subject_decide_without_a_sender_signal() {
        let dsn = detect_bytes(EXIM_FROM_NDR, Some("ndr@mx.example.net")).dsn.expect("a DSN");
        assert_eq!(dsn.signals, [Signal::BounceSubject, Signal::BounceTemplate]);
        assert_eq!(dsn.kind, DsnKind::NonStandard);
        assert!((dsn.strength - 1.05).abs() < 1e-9, "{}", dsn.strength);
        // Either alone is not enough.
        let no_body = b"From: ndr@mx.example.net\nSubject: Mail delivery failed: returning message to sender\n\nSorry.\n";
        assert!(detect_bytes(no_body, Some("ndr@mx.example.net")).dsn.is_none());
        let person_subject = b"From: ann@example.com\nSubject: why did my mail bounce?\n\n\
This message was created automatically by mail delivery software.\n";
        assert!(detect_bytes(person_subject, Some("ann@example.com")).dsn.is_none());
    }

    #[test]
    fn disabled_groups_are_ignored() {
        let facts = index(EXIM_FROM_NDR, None);
        let without = |names: &[&'static str]| {
            let options = DetectOptions::without_groups(names.iter().copied()).unwrap();
            detect_with(&facts, EXIM_FROM_NDR, None, &options).dsn
        };
        assert!(without(&[]).is_some());
        // Without the subject form the subject is only a bounce word: with the template
        // sentence that is 95 points, not enough.
        assert!(without(&["exim-subject"]).is_none());
        assert!(without(&["exim-subject", "bounce-subject-words"]).is_none());
        assert!(without(&["exim-body", "failure-wording", "smtp-reply-wording"]).is_none());
        assert_eq!(DetectOptions::without_groups(["no-such-group"]), Err("no-such-group"));
    }

    #[test]
    fn qmail_trace_line_never_decides_alone() {
        // A list post whose Received trail holds qmail's bounce line (copied from a bounce the
        // list once relayed): the trace is a hint.
        let post = b"Received: (qmail 4242 invoked for bounce); 1 Jan 2016 10:00:00 -0000\n\
From: Ann <ann@example.org>\nTo: list@lists.example.org\nSubject: [list] meeting notes\n\
List-Id: <list.lists.example.org>\nPrecedence: list\n\nNotes attached.\n";
        let facts = index(post, None);
        assert!(facts.qmail_bounce);
        assert!(detect(&facts, post, None).dsn.is_none());
        // With qmail's own text and sender it is one signal among others.
        let bounce = b"Received: (qmail 4242 invoked for bounce); 1 Jan 2016 10:00:00 -0000\n\
From: MAILER-DAEMON@mx.example.org\nSubject: failure notice\n\nHi. This is the qmail-send program at mx.example.org.\n";
        let dsn = detect_bytes(bounce, None).dsn.unwrap();
        assert_eq!(dsn.signals, [Signal::DaemonSender, Signal::BounceSubject, Signal::QmailBounce]);
    }

    #[test]
    fn reply_and_forward_prefixes_silence_the_subject() {
        for subject in ["Fwd: Returned mail: see transcript for details", "Re: Undeliverable: hello", "AW: Unzustellbar: Termin", "TR: Non remis : test"] {
            let msg = format!("From: Bob <bob@example.com>\nSubject: {subject}\n\n---------- Forwarded message ---------\n\
The original message was received at Mon, 1 Jan 2024\n   ----- The following addresses had permanent fatal errors -----\n");
            assert!(detect_bytes(msg.as_bytes(), Some("bob@example.com")).dsn.is_none(), "{subject}");
        }
        // A bounce from postmaster whose subject is the original's "Re:" still counts its sender.
        let bounce = b"From: post_master@vtext.example.com\nSubject: Re:Test message\n\nError: user unknown\n";
        assert_eq!(detect_bytes(bounce, None).dsn.unwrap().signals, [Signal::DaemonSender, Signal::BounceBody]);
    }

    #[test]
    fn malformed_and_system_sender_addresses() {
        assert!(is_daemon_address("Postmaster\\@example.com"));
        assert!(is_daemon_address("\"postmaster\"@example.com"));
        assert!(is_daemon_address("Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.com>"));
        assert!(!is_daemon_address("Microsoft Exchange fan <microsoftexchange@example.com>"));
        assert!(!is_daemon_address("System Administrator <admin@example.com>"));
    }

    /// The rules the weights stand for, checked on the table itself.
    #[test]
    fn weights_keep_the_rules() {
        use Signal::*;
        let dsn = |signals: &[Signal]| signals.iter().map(|s| s.spec().points).sum::<u32>() >= THRESHOLD;
        for &s in Signal::ALL {
            assert_eq!(s.spec().points >= THRESHOLD, s.spec().class == SignalClass::Structure, "only structure decides alone: {s}");
        }
        assert!(dsn(&[DaemonSender, BounceSubject]) && dsn(&[DaemonSender, BounceSubjectWord]));
        assert!(dsn(&[DaemonSender, BounceBody]) && dsn(&[NullSender, DaemonSender]));
        assert!(dsn(&[BounceSubject, BounceTemplate]) && dsn(&[NullSender, BounceTemplate]));
        assert!(dsn(&[AutoSubmittedFailure, BounceTemplate]));
        // What a person can write is not enough, with or without one hint.
        assert!(!dsn(&[BounceSubjectWord, BounceTemplate]) && !dsn(&[BounceSubject, BounceBody]));

        assert!(!dsn(&[NullSender, BounceBody]) && !dsn(&[NullSender, BounceSubjectWord]));
        // Hints count only with a sender signal (`Evidence::total`); with one they can tip it.
        let hints: Vec<Signal> = Signal::ALL.iter().copied().filter(|s| s.spec().class == SignalClass::Hint).collect();
        assert!(!dsn(&hints), "the hints together");
        assert_eq!(hints.iter().fold(0, |bits, s| bits | s.bit()), HINTS);
        let counted = |signals: &[Signal]| {
            let mut e = Evidence::default();
            signals.iter().for_each(|s| e.add(*s));
            e.total()
        };
        assert_eq!(counted(&[BounceSubjectWord, BounceTemplate, AutoSubmitted, QmailBounce, NoReplySender]), 95);
        assert_eq!(counted(&[NullSender, BounceBody, NoReplySender]), 100);
        assert_eq!(BODY_MAX, [BounceTemplate, BounceBody].iter().map(|s| s.spec().points).max().unwrap());
    }
}
