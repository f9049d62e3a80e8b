//! DSN detection: tells delivery status notifications (standard RFC 3464/6522/6533 reports and
//! the non-standard bounces real MTAs write) from other automatic reports (read receipts, abuse
//! feedback, vacation replies) and from ordinary mail.
//!
//! Real mail is ambiguous, so detection combines signals. A *strong* signal is something only a
//! bounce carries (a delivery-status part, X-Failed-Recipients, ...) and decides alone. *Weak*
//! signals (a null sender, a mailer-daemon From, a bounce-like subject or body) decide only in
//! pairs that include one about the sender, and the body is read only when exactly one
//! sender signal fired, so ordinary mail costs a header scan and nothing more.

use std::sync::LazyLock;

use memchr::memmem;

use crate::labels::closed_set;
use crate::scan::{header_start, HeaderIndex, RecipientFields, RecipientStatus};

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
    /// The signals a DSN verdict lists (`SIGNALS` in Python). Public output: keep the names
    /// stable. A new signal is one line here.
    pub enum Signal debug_as_name {
        ReportType = "report-type-delivery-status",
        StatusPart = "delivery-status-part",
        FailedRecipients = "x-failed-recipients",
        ExchangeNdr = "exchange-ndr",
        QmailBounce = "qmail-bounce",
        NullSender = "null-sender",
        DaemonSender = "daemon-sender",
        BounceSubject = "bounce-subject",
        AutoSubmittedFailure = "auto-submitted-failure",
        BounceBody = "bounce-body",
        SesNotification = "ses-notification",
        NoReplySender = "no-reply-sender",
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DsnVerdict {
    pub kind: DsnKind,
    /// Every signal that fired, strong ones first.
    pub signals: Vec<Signal>,
    pub recipients: Vec<RecipientStatus>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    pub report_kind: Option<ReportKind>,
    pub dsn: Option<DsnVerdict>,
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

const DAEMON_DISPLAY_NAMES: &[&str] =
    &["mail delivery system", "mail delivery subsystem", "mailer-daemon", "mailer daemon", "ndr administrator", "mail delivery service"];

/// Lowercased subject phrases that bounces use, in the languages seen in the wild.
const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliverable",
    "undelivered",
    "undeliverd",
    "returned mail",
    "returned to sender",
    "returning to sender",
    "mail failed",
    "returning message to sender",
    "delivery status notification",
    "delivery notification",
    "delivery failure",
    "delivery failed",
    "delivery has failed",
    "delivery problem",
    "delivery status",
    "failed delivery",
    "failure notice",
    "failure delivery",
    "non-delivery",
    "nondeliverable",
    "non delivery",
    "non-deliverable",
    "not delivered",
    "could not be delivered",
    "couldn't be delivered",
    "could not send message",
    "mail system error",
    "mail delivery failed",
    "permanent delivery failure",
    "delayed mail",
    "delivery delayed",
    "bounce",
    "message you sent blocked",
    "rejected",
    "mail failure",
    "error sending",
    "returned message",
    "message not delivered",
    // fml mailing-list manager error notices
    "are not member",
    "loop alert",
    // German
    "unzustellbar",
    "nicht zustellbar",
    "fehlgeschlagen",
    // French
    "non remis",
    "non distribuable",
    "échec de la remise",
    "echec de la remise",
    "non délivré",
    "impossible de remettre",
    // Spanish, Portuguese
    "no se puede entregar",
    "no entregado",
    "não entregue",
    "não é possível entregar",
    "nao entregue",
    "falha na entrega",
    "mensagem não entregue",
    // Italian
    "non recapitabile",
    "mancata consegna",
    "impossibile recapitare",
    "non recapitato",
    // Dutch
    "onbestelbaar",
    "niet bezorgd",
    "kan niet worden bezorgd",
    // Nordic, Polish, Czech
    "kan inte levereras",
    "kunne ikke leveres",
    "ei voitu toimittaa",
    "niedostarczalne",
    "nie dostarczono",
    "nedoručitelné",
    // Russian
    "недоставленное",
    "не доставлено",
    "невозможно доставить",
    "не может быть доставлено",
    "ошибка доставки",
    // Japanese, Chinese, Korean
    "配信不能",
    "メールエラー",
    "エラー通知",
    "配送エラー",
    "配信エラー",
    "送信エラー",
    "不達",
    "配信できません",
    "送信できませんでした",
    "配送されませんでした",
    "退信",
    "无法投递",
    "未送达",
    "投递失败",
    "無法傳遞",
    "전달되지",
];

/// Lowercased phrases bounce bodies use; read only when the headers leave the verdict open.
const BOUNCE_BODY_PHRASES: &[&str] = &[
    "this is the mail system at host",
    "this is the qmail-send program",
    "i'm afraid i wasn't able to deliver",
    "this message was created automatically by mail delivery software",
    "delivery to the following recipient",
    "could not be delivered",
    "couldn't be delivered",
    "was not delivered",
    "wasn't delivered",
    "delivery has failed",
    "delivery failed",
    "delivery failure",
    "permanent error",
    "permanent fatal error",
    "undeliverable",
    "undelivered",
    "unable to deliver",
    "user unknown",
    "unknown user",
    "no such user",
    "mailbox unavailable",
    "mailbox is full",
    "mailbox full",
    "returned mail",
    "non-delivery",
    "transcript of session follows",
    "not a member",
    "are not member",
    "duplicated message-id",
    "loop alert",
    "message could not be",
    "rejected",
];

const AUTO_REPLY_SUBJECT_PREFIXES: &[&str] =
    &["auto:", "automatic reply", "autoreply", "auto-reply", "auto reply", "out of office", "abwesenheitsnotiz", "réponse automatique", "respuesta automática", "risposta automatica"];

/// Detects what kind of report `msg` is. `mail_from` is the envelope sender when known: an
/// empty string or `<>` is the null reverse-path.
pub fn detect(facts: &HeaderIndex, msg: &[u8], mail_from: Option<&str>) -> Detection {
    let mut strong: Vec<Signal> = Vec::new();
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
        strong.push(Signal::ReportType);
    }
    if status_part || bare_status {
        strong.push(Signal::StatusPart);
    }

    let arf = report_type_is("feedback-report") || facts.has_part("message", "feedback-report");
    let mdn =
        report_type_is("disposition-notification") || facts.has_part("message", "disposition-notification");
    if strong.is_empty() && (arf || mdn) {
        let kind = if arf { ReportKind::Arf } else { ReportKind::Mdn };
        return Detection { report_kind: Some(kind), dsn: None };
    }

    if facts.x_failed_recipients.is_some() {
        strong.push(Signal::FailedRecipients);
    }
    if facts.markers.contains("x-ms-exchange-message-is-ndr") {
        strong.push(Signal::ExchangeNdr);
    }
    if facts.qmail_bounce {
        strong.push(Signal::QmailBounce);
    }

    let mut weak: Vec<Signal> = Vec::new();
    let envelope_null = mail_from.map(is_null_path);
    let null_sender = envelope_null.unwrap_or_else(|| facts.return_path.is_some_and(|v| is_null_or_daemon_path(&v.text())));
    if null_sender {
        weak.push(Signal::NullSender);
    }
    let from = facts.from.map(|v| v.text());
    if [from.as_deref(), facts.sender.map(|v| v.text()).as_deref()].into_iter().flatten().any(is_daemon_address) {
        weak.push(Signal::DaemonSender);
    }
    // Bounce subjects state their case up front; matching a megabyte subject would be waste.
    let subject_text = facts.subject.map(|v| v.decoded());
    let subject = subject_text.as_deref().map(|s| {
        if s.is_ascii() {
            // Matched ignoring ASCII case: the same as lowercasing a copy, without the copy.
            Subject::Ascii(&s[..s.len().min(SUBJECT_MATCH_CHARS)])
        } else {
            Subject::Lowercased(s.chars().take(SUBJECT_MATCH_CHARS).collect::<String>().to_lowercase())
        }
    });
    if subject.as_ref().is_some_and(Subject::has_bounce_phrase) {
        weak.push(Signal::BounceSubject);
    }
    let auto_submitted = facts.auto_submitted.map(|v| v.text());
    if auto_submitted.as_deref().is_some_and(|v| v.to_ascii_lowercase().contains("failure")) {
        weak.push(Signal::AutoSubmittedFailure);
    }
    // Amazon SNS delivers SES notifications as JSON mail; the body says which kind.
    if facts.markers.contains("x-amz-sns-message-id") {
        match ses_notification_type(msg, facts).as_deref() {
            Some("bounce" | "delivery") => strong.push(Signal::SesNotification),
            Some("complaint") if strong.is_empty() => return Detection { report_kind: Some(ReportKind::Arf), dsn: None },
            _ => {}
        }
    }
    // Text a person can write (subject, body) never decides alone: a weak verdict also needs
    // something about who sent the message. A no-reply sender is only a hint (newsletters use
    // it too), so with it both the subject and the body must read like a bounce.
    let from_software = weak.iter().any(|s| *s != Signal::BounceSubject);
    let no_reply = !from_software && weak.len() == 1 && from.as_deref().is_some_and(is_no_reply_address);
    if strong.is_empty() && weak.len() == 1 && (from_software || no_reply) && body_has_bounce_phrase(msg, facts) {
        weak.push(Signal::BounceBody);
        if no_reply {
            weak.insert(0, Signal::NoReplySender);
        }
    }

    if !strong.is_empty() || (weak.len() >= 2 && from_software) || (no_reply && weak.len() == 3) {
        let kind = if global_part || report_type_is("global-delivery-status") {
            DsnKind::GlobalDeliveryStatus
        } else if status_part || bare_status {
            DsnKind::DeliveryStatus
        } else {
            DsnKind::NonStandard
        };
        strong.extend(weak);
        return Detection {
            report_kind: Some(ReportKind::Dsn),
            dsn: Some(DsnVerdict { kind, signals: strong, recipients: facts.recipients.iter().map(RecipientFields::decode).collect() }),
        };
    }

    let auto_reply = auto_submitted.as_deref().is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"))
        || facts.markers.contains("x-autoreply")
        || facts.markers.contains("x-autorespond")
        || facts.precedence.is_some_and(|p| p.text().trim().eq_ignore_ascii_case("auto_reply"))
        || subject.as_ref().is_some_and(Subject::starts_like_auto_reply);
    Detection { report_kind: auto_reply.then_some(ReportKind::AutoReply), dsn: None }
}

/// The first `SUBJECT_MATCH_CHARS` characters of a Subject, as matched against lowercase phrases.
enum Subject<'a> {
    /// ASCII text as written: compared ignoring ASCII case.
    Ascii(&'a str),
    /// Other text, lowercased (Unicode).
    Lowercased(String),
}

impl Subject<'_> {
    fn has_bounce_phrase(&self) -> bool {
        match self {
            Subject::Ascii(s) => SUBJECT_PHRASES.any_in_ignore_ascii_case(s.as_bytes()),
            Subject::Lowercased(s) => SUBJECT_PHRASES.any_in(s.as_bytes()),
        }
    }

    fn starts_like_auto_reply(&self) -> bool {
        match self {
            // Lowercasing ASCII leaves white space as it is, so trimming first is the same.
            Subject::Ascii(s) => {
                let s = s.trim_start().as_bytes();
                AUTO_REPLY_SUBJECT_PREFIXES.iter().any(|p| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
            }
            Subject::Lowercased(s) => AUTO_REPLY_SUBJECT_PREFIXES.iter().any(|p| s.trim_start().starts_with(p)),
        }
    }
}

/// `<>`, empty, or with only white space inside the brackets.
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

fn is_no_reply_address(value: &str) -> bool {
    local_part(extract_address(value)).is_some_and(|lp| {
        let lp = lp.to_ascii_lowercase();
        lp == "noreply" || lp == "no-reply" || lp == "no_reply" || lp == "donotreply" || lp == "do-not-reply"
    })
}

fn local_part(address: &str) -> Option<&str> {
    let lp = address.rsplit_once('@').map_or(address, |(lp, _)| lp).trim().trim_matches('"');
    (!lp.is_empty()).then_some(lp)
}

fn is_daemon_address(value: &str) -> bool {
    let address = extract_address(value);
    if value.contains('<') && address.is_empty() {
        return true; // `From: Mail Delivery System <>`
    }
    if local_part(address).is_some_and(|lp| DAEMON_LOCAL_PARTS.iter().any(|d| lp.eq_ignore_ascii_case(d))) {
        return true;
    }
    if value.is_ascii() {
        // Unicode and ASCII lowercasing agree on ASCII text: no lowercased copy needed.
        return DAEMON_DISPLAY_NAMES.iter().any(|name| contains_ignore_ascii_case(value.as_bytes(), name.as_bytes()));
    }
    let lower = value.to_lowercase();
    DAEMON_DISPLAY_NAMES.iter().any(|name| lower.contains(name))
}

/// Whether `needle` (ASCII lowercase) occurs in `haystack` ignoring ASCII case.
fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

fn body_has_bounce_phrase(msg: &[u8], facts: &HeaderIndex) -> bool {
    let start = header_end(msg, facts);
    let end = msg.len().min(start + BODY_WINDOW);
    if start >= end {
        return false;
    }
    let lower = msg[start..end].to_ascii_lowercase();
    BODY_PHRASES.iter().any(|finder| finder.find(&lower).is_some())
}

/// Phrases looked for anywhere in a short text, indexed by their first byte: the text is read
/// once, not once per phrase (`str::contains` for each of a hundred subject phrases built a
/// searcher per phrase and per message).
struct PhraseSet {
    by_first_byte: Vec<Vec<&'static [u8]>>,
}

impl PhraseSet {
    fn new(phrases: &[&'static str]) -> Self {
        let mut by_first_byte = vec![Vec::new(); 256];
        for phrase in phrases {
            if let Some(&first) = phrase.as_bytes().first() {
                by_first_byte[first as usize].push(phrase.as_bytes());
            }
        }
        PhraseSet { by_first_byte }
    }

    /// Whether any phrase occurs in `text` (byte for byte: for UTF-8 text and phrases, the same
    /// as `str::contains`).
    fn any_in(&self, text: &[u8]) -> bool {
        (0..text.len()).any(|i| self.by_first_byte[text[i] as usize].iter().any(|p| text[i..].starts_with(p)))
    }

    /// `any_in` of the ASCII-lowercased `text`, without lowercasing a copy (the phrases are
    /// lowercase; a non-ASCII byte compares exactly either way).
    fn any_in_ignore_ascii_case(&self, text: &[u8]) -> bool {
        (0..text.len()).any(|i| {
            self.by_first_byte[text[i].to_ascii_lowercase() as usize]
                .iter()
                .any(|p| text.len() - i >= p.len() && text[i..i + p.len()].eq_ignore_ascii_case(p))
        })
    }
}

static SUBJECT_PHRASES: LazyLock<PhraseSet> = LazyLock::new(|| PhraseSet::new(BOUNCE_SUBJECTS));
/// One finder per body phrase, built once (a body window is long: memmem beats PhraseSet there).
static BODY_PHRASES: LazyLock<Vec<memmem::Finder<'static>>> =
    LazyLock::new(|| BOUNCE_BODY_PHRASES.iter().map(|p| memmem::Finder::new(p.as_bytes())).collect());

/// The `notificationType` of an Amazon SES notification body, lowercased. The JSON may be
/// raw or, in the SNS envelope, escaped inside a string (`\"notificationType\":\"Bounce\"`).
fn ses_notification_type(msg: &[u8], facts: &HeaderIndex) -> Option<String> {
    let start = header_end(msg, facts);
    let body = &msg[start..msg.len().min(start + 4096)];
    let key = memmem::find(body, b"notificationType")? + "notificationType".len();
    let rest = &body[key..];
    let open = rest.iter().take(16).position(|b| !matches!(b, b'\\' | b'"' | b':' | b' '))?;
    let len = rest[open..].iter().take(32).position(|b| matches!(b, b'\\' | b'"'))?;
    Some(String::from_utf8_lossy(&rest[open..open + len]).to_ascii_lowercase())
}

fn header_end(msg: &[u8], facts: &HeaderIndex) -> usize {
    // `header_length` counts from the first header line, after a possible mbox From_ line.
    (header_start(msg) + facts.header_length).min(msg.len())
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
    fn body_is_read_only_to_break_a_single_weak_signal() {
        let msg = b"From: MAILER-DAEMON@x\nSubject: hi\n\nThis is the mail system at host x.\n";
        let d = detect_bytes(msg, Some("a@b"));
        assert_eq!(d.dsn.unwrap().signals, [Signal::DaemonSender, Signal::BounceBody]);
        let ordinary = b"From: a@b\nSubject: hi\n\nthe message could not be delivered, said my friend\n";
        assert!(detect_bytes(ordinary, Some("a@b")).dsn.is_none());
    }
}
