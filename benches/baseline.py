"""The baseline a user would write without deliverypool: Python's own email parser plus the
same DSN rules as `rust/dsn.rs`, written in plain Python.

It is meant to be a fair opponent, not a straw man:

* the top-level header block is parsed by `email.parser.BytesParser(policy=compat32)` with
  `headersonly=True`, the cheapest thing the stdlib offers, and fields are read with
  `Message.get` / `get_all`, the compat32 API;
* MIME part headers are found the way `rust/scan.rs` finds them (a delimiter search over the
  body, no body decoding, the same limits: 64 parts, depth 4, 4 MiB of body) and each part's
  header block is parsed with the same stdlib parser;
* every signal and decision rule of `rust/dsn.rs` is mirrored one for one (the points of each
  signal, hints counted only with a sender signal, the body read only when the headers leave
  the verdict open), and the same policy outcome (a DSN goes to the high-risk pool);
* the phrase groups are `deliverypool.PHRASE_GROUPS`, the Rust table itself, so the two cannot
  drift; they are matched the way a Python programmer would: the text lowercased, white space
  collapsed with a regular expression, then `in` (or `startswith`/`endswith` for anchored
  subject forms) for each phrase.

`test_scan.py::test_baseline_agrees_with_deliverypool` checks that the verdicts agree on the
corpus, so this file cannot drift into measuring something easier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser, Parser
from email.policy import compat32

# Data only: the phrase table. The matching below is Python's.
from deliverypool import PHRASE_GROUPS

_bytes_parser = BytesParser(policy=compat32)
_text_parser = Parser(policy=compat32)

MAX_BODY_BYTES = 4 << 20
MAX_PARTS = 64
MAX_DEPTH = 4
BODY_WINDOW = 32 << 10

# --- word lists: the same as rust/dsn.rs -----------------------------------------------------

DAEMON_LOCAL_PARTS = frozenset(
    [
        "mailer-daemon",
        "mailer_daemon",
        "mailerdaemon",
        "mail-daemon",
        "maildaemon",
        "mdaemon",
        "postmaster",
        "post_master",
        "post-master",
        "poostmaster",
    ]
)

DAEMON_DISPLAY_NAMES = (
    "mail delivery system",
    "mail delivery subsystem",
    "mailer-daemon",
    "mailer daemon",
    "ndr administrator",
    "mail delivery service",
    "courier mail server at",
)

def _phrases(kinds: set[str]) -> list[tuple[str, str, bool, bool]]:
    """(kind, phrase, anchored at the start, anchored at the end) of the groups of `kinds`."""
    out = []
    for _name, kind, _source, _families, phrases in PHRASE_GROUPS:
        if kind in kinds:
            for phrase in phrases:
                start, end = phrase.startswith("^"), phrase.endswith("$")
                out.append((kind, phrase[1 if start else 0 : -1 if end else None], start, end))
    return out


SUBJECT_PHRASES = _phrases({"subject-form", "subject-word", "reply-prefix"})
BODY_TEMPLATES = tuple(p.encode() for _, p, _, _ in _phrases({"body-template"}))
BODY_WORDING = tuple(p.encode() for _, p, _, _ in _phrases({"body-wording"}))

# Points per signal and the threshold (rust/dsn.rs SIGNALS).
POINTS = {
    "report-type-delivery-status": 100, "delivery-status-part": 100, "x-failed-recipients": 100, "exchange-ndr": 100,
    "ses-notification": 100, "null-sender": 50, "daemon-sender": 60, "auto-submitted-failure": 50, "bounce-subject": 50,
    "bounce-subject-word": 40, "bounce-template": 55, "bounce-body": 40, "auto-submitted": 10, "no-reply-sender": 10,
    "qmail-bounce": 20,
}
ORDER = list(POINTS)
STRUCTURAL = set(ORDER[:5])
SENDER = {"null-sender", "daemon-sender", "auto-submitted-failure"}
HINTS = {"auto-submitted", "no-reply-sender", "qmail-bounce"}
THRESHOLD = 100
AUTO_SUBMITTED_FAILURES = ("failure", "warning-timeout", "postmaster-notification", "postmaster-warning")

AUTO_REPLY_SUBJECT_PREFIXES = (
    "auto:",
    "automatic reply",
    "autoreply",
    "auto-reply",
    "auto reply",
    "out of office",
    "abwesenheitsnotiz",
    "réponse automatique",
    "respuesta automática",
    "risposta automatica",
)

NO_REPLY_LOCAL_PARTS = frozenset(["noreply", "no-reply", "no_reply", "donotreply", "do-not-reply"])

STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")

# --- results ---------------------------------------------------------------------------------


@dataclass
class Recipient:
    final_recipient: str | None = None
    action: str | None = None
    status: str | None = None
    diagnostic_code: str | None = None


@dataclass
class Verdict:
    kind: str
    signals: list[str]
    recipients: list[Recipient]


@dataclass
class Detection:
    report_kind: str | None
    dsn: Verdict | None
    parts: list[str] = field(default_factory=list)


@dataclass
class Decision:
    pool: str
    high_risk: bool
    reasons: list[str]
    detection: Detection


# --- header helpers --------------------------------------------------------------------------

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# The end of a header block: a line break at the very start (no fields), or an empty line.
_BLANK_LINE = re.compile(r"\A(?:\r\n|\r|\n)|\r\n\r\n|\n\n|\r\r")


def _value(msg: Message, name: str) -> str | None:
    """The first field `name`, unfolded and trimmed, as text (compat32 hands back a Header
    object for 8-bit values: str() of it gives the text)."""
    raw = msg.get(name)
    if raw is None:
        return None
    return _LINE_BREAK.sub("", str(raw)).strip()


def _subject(msg: Message) -> str | None:
    raw = _value(msg, "subject")
    if raw is None:
        return None
    try:
        return str(make_header(decode_header(raw)))
    except (LookupError, UnicodeError, ValueError):
        return raw


def is_null_path(path: str) -> bool:
    return not path.strip().lstrip("<").rstrip(">").strip()


def extract_address(value: str) -> str:
    open_, close = value.rfind("<"), value.rfind(">")
    if open_ != -1 and close != -1 and open_ < close:
        return value[open_ + 1 : close].strip()
    for word in value.split():
        if "@" in word:
            return word
    return value.strip()


def local_part(address: str) -> str | None:
    lp = address.rpartition("@")[0] if "@" in address else address
    lp = lp.strip().strip("\"\\'")
    return lp or None


def is_null_or_daemon_path(path: str) -> bool:
    if is_null_path(path):
        return True
    lp = local_part(extract_address(path))
    return lp is not None and lp.lower() == "mailer-daemon"


def is_daemon_address(value: str) -> bool:
    address = extract_address(value)
    if "<" in value and not address:
        return True
    lp = local_part(address)
    if lp is not None and lp.lower() in DAEMON_LOCAL_PARTS:
        return True
    if lp is not None and len(lp) > 17 and lp[:17].lower() == "microsoftexchange":
        return True
    lower = value.lower()
    return any(name in lower for name in DAEMON_DISPLAY_NAMES)


def is_no_reply_address(value: str) -> bool:
    lp = local_part(extract_address(value))
    return lp is not None and lp.lower() in NO_REPLY_LOCAL_PARTS


# --- MIME structure --------------------------------------------------------------------------


def _delivery_status(body: str) -> list[Recipient]:
    """Per-recipient blocks of a delivery-status body: blank-line separated field blocks."""
    out = []
    for block in re.split(r"(?:\r\n|\r|\n)[ \t]*(?:\r\n|\r|\n)", body.lstrip("\r\n"), maxsplit=MAX_PARTS * 4):
        if block.startswith("--"):
            break
        fields = _text_parser.parsestr(block, headersonly=True)
        recipient = Recipient()
        per_recipient = False
        for name, value in fields.items():
            name = name.lower()
            value = _LINE_BREAK.sub("", str(value)).strip()
            if name in ("final-recipient", "original-recipient") and recipient.final_recipient is None:
                per_recipient = True
                recipient.final_recipient = value
            elif name == "action":
                per_recipient = True
                recipient.action = value.lower()
            elif name == "status":
                per_recipient = True
                recipient.status = value
            elif name == "diagnostic-code":
                recipient.diagnostic_code = value
        if per_recipient:
            out.append(recipient)
    return out


def _delimiters(body: str, delimiter: str) -> list[tuple[int, int, bool]]:
    """(start, end of line, is close delimiter) for each `--boundary` at the start of a line;
    str.find rather than a regex compiled per boundary, as the scanner uses memmem."""
    found = []
    pos = body.find(delimiter)
    while pos != -1:
        if pos == 0 or body[pos - 1] in "\r\n":
            after = pos + len(delimiter)
            is_close = body.startswith("--", after)
            line_end = _LINE_BREAK.search(body, after)
            found.append((pos, line_end.end() if line_end else len(body), is_close))
            if is_close:
                break
        pos = body.find(delimiter, pos + 1)
    return found


def _walk(body: str, boundary: str, depth: int, parts: list[str], recipients: list[Recipient]) -> None:
    """Finds the `--boundary` lines, parses each part's header block with the stdlib parser,
    follows nested multiparts (message/rfc822 attachments are not entered)."""
    delimiters = _delimiters(body, "--" + boundary)
    for i, (_, line_end, is_close) in enumerate(delimiters):
        if is_close or len(parts) >= MAX_PARTS:
            return
        end = delimiters[i + 1][0] if i + 1 < len(delimiters) else len(body)
        # Only the part's header block goes through the parser: the body is sliced off first,
        # as the scanner does, rather than split into lines by the feed parser.
        text = body[line_end:end]
        blank = _BLANK_LINE.search(text)
        split = blank.end() if blank else len(text)
        part = _text_parser.parsestr(text[:split], headersonly=True)
        content_type = part.get_content_type() if "content-type" in part else "text/plain"
        parts.append(content_type)
        payload = text[split:]
        if content_type in STATUS_TYPES:
            recipients.extend(_delivery_status(payload))
        if part.get_content_maintype() == "multipart" and depth < MAX_DEPTH:
            inner = part.get_param("boundary")
            if isinstance(inner, str) and inner:
                _walk(payload, inner, depth + 1, parts, recipients)


def _raw_payload(msg: Message) -> str:
    # get_payload() re-decodes 8-bit text in the part's charset; the raw body (ASCII with
    # surrogate escapes, as BytesParser stores it) is what the scanner reads.
    payload = msg._payload
    return payload if isinstance(payload, str) else ""


def _body_bytes(msg: Message) -> bytes:
    # BytesParser decodes with surrogateescape: this gives the original bytes back.
    return _raw_payload(msg).encode("ascii", "surrogateescape")


def _ses_notification_type(body: bytes) -> str | None:
    body = body[:4096]
    key = body.find(b"notificationType")
    if key == -1:
        return None
    rest = body[key + len(b"notificationType") :]
    open_ = next((i for i, b in enumerate(rest[:16]) if b not in b'\\": '), None)
    if open_ is None:
        return None
    tail = rest[open_:]
    length = next((i for i, b in enumerate(tail[:32]) if b in b'\\"'), None)
    if length is None:
        return None
    return tail[:length].decode("latin-1").lower()


# --- detection and policy --------------------------------------------------------------------


_SKIPPED_START = re.compile(rb"\A(?:\xef\xbb\xbf|[\r\n]+|>?From [^\r\n]*(?:\r\n|\r|\n)?)+")


def detect(message: bytes, mail_from: str | None = None) -> Detection:
    # What the scanner skips before the first field (a byte-order mark, blank lines, From_
    # lines); its junk-line rule is not mirrored (no corpus message has junk).
    skipped = _SKIPPED_START.match(message)
    msg = _bytes_parser.parsebytes(message[skipped.end() :] if skipped else message, headersonly=True)
    content_type = msg.get_content_type() if "content-type" in msg else None
    parts: list[str] = []
    recipients: list[Recipient] = []
    if content_type is not None and content_type.startswith("multipart/"):
        boundary = msg.get_param("boundary")
        if isinstance(boundary, str) and boundary:
            _walk(_raw_payload(msg)[:MAX_BODY_BYTES], boundary, 1, parts, recipients)
    elif content_type in STATUS_TYPES:
        recipients = _delivery_status(_raw_payload(msg))

    strong: list[str] = []
    report_type = None
    if content_type == "multipart/report":
        value = msg.get_param("report-type")
        report_type = value.lower() if isinstance(value, str) else None
    global_part = "message/global-delivery-status" in parts
    status_part = global_part or "message/delivery-status" in parts
    bare_status = content_type in STATUS_TYPES
    if report_type in ("delivery-status", "global-delivery-status"):
        strong.append("report-type-delivery-status")
    if status_part or bare_status:
        strong.append("delivery-status-part")
    arf = report_type == "feedback-report" or "message/feedback-report" in parts
    mdn = report_type == "disposition-notification" or "message/disposition-notification" in parts
    if not strong and (arf or mdn):
        return Detection("arf" if arf else "mdn", None, parts)

    if "x-failed-recipients" in msg:
        strong.append("x-failed-recipients")
    if "x-ms-exchange-message-is-ndr" in msg:
        strong.append("exchange-ndr")
    body: bytes | None = None
    if "x-amz-sns-message-id" in msg:
        body = _body_bytes(msg)
        kind = _ses_notification_type(body)
        if kind in ("bounce", "delivery"):
            strong.append("ses-notification")
        elif kind == "complaint" and not strong:
            return Detection("arf", None, parts)

    fired = set(strong)
    if mail_from is not None:
        null_sender = is_null_path(mail_from)
    else:
        return_path = _value(msg, "return-path")
        null_sender = return_path is not None and is_null_or_daemon_path(return_path)
    if null_sender:
        fired.add("null-sender")
    from_ = _value(msg, "from")
    senders = [v for v in (from_, _value(msg, "sender")) if v is not None]
    if any(is_daemon_address(v) for v in senders):
        fired.add("daemon-sender")
    auto_submitted = _value(msg, "auto-submitted")
    if auto_submitted is not None:
        lowered = auto_submitted.lower()
        if any(f in lowered for f in AUTO_SUBMITTED_FAILURES):
            fired.add("auto-submitted-failure")
        elif lowered.strip() != "no":
            fired.add("auto-submitted")
    subject = _subject(msg)
    subject = _without_list_tag(subject.lstrip())[:512].lower() if subject is not None else None
    if subject is not None:
        found = _subject_kinds(subject)
        if "reply-prefix" not in found:
            if "subject-form" in found:
                fired.add("bounce-subject")
            elif "subject-word" in found:
                fired.add("bounce-subject-word")
    if from_ is not None and is_no_reply_address(from_):
        fired.add("no-reply-sender")
    if any("invoked for bounce" in _LINE_BREAK.sub("", str(v)) for v in msg.get_all("received", ())):
        fired.add("qmail-bounce")

    def total() -> int:
        counted = fired if fired & SENDER else fired - HINTS
        return sum(POINTS[s] for s in counted)

    structural = bool(fired & STRUCTURAL)
    if not structural and total() < THRESHOLD <= total() + POINTS["bounce-template"]:
        if body is None:
            body = _body_bytes(msg)
        window = _SPACES.sub(b" ", body[:BODY_WINDOW].lower())
        if any(p in window for p in BODY_TEMPLATES):
            fired.add("bounce-template")
        elif any(p in window for p in BODY_WORDING):
            fired.add("bounce-body")

    if structural or total() >= THRESHOLD:
        if global_part or report_type == "global-delivery-status":
            kind = "global-delivery-status"
        elif status_part or bare_status:
            kind = "delivery-status"
        else:
            kind = "non-standard"
        return Detection("dsn", Verdict(kind, [s for s in ORDER if s in fired], recipients), parts)

    precedence = _value(msg, "precedence")
    auto_reply = (
        (auto_submitted is not None and auto_submitted.strip().lower() != "no")
        or "x-autoreply" in msg
        or "x-autorespond" in msg
        or (precedence is not None and precedence.strip().lower() == "auto_reply")
        or (subject is not None and subject.startswith(AUTO_REPLY_SUBJECT_PREFIXES))
    )
    return Detection("auto-reply" if auto_reply else None, None, parts)


_SPACES = re.compile(rb"[ \t\r\n]+")
_TEXT_SPACES = re.compile(r"[ \t\r\n]+")


def _without_list_tag(subject: str) -> str:
    if subject.startswith("["):
        close = subject[1:65].find("]")
        if close != -1:
            return subject[close + 2 :].lstrip()
    return subject


def _subject_kinds(subject: str) -> set[str]:
    text = _TEXT_SPACES.sub(" ", subject)
    found = set()
    for kind, phrase, start, end in SUBJECT_PHRASES:
        if start and end:
            hit = text == phrase
        elif start:
            hit = text.startswith(phrase)
        elif end:
            hit = text.endswith(phrase)
        else:
            hit = phrase in text
        if hit:
            found.add(kind)
    return found


def classify(message: bytes, mail_from: str | None = None) -> Decision:
    """The routing decision with the default policy and no caller score: a DSN goes to the
    high-risk pool, everything else to the normal pool."""
    detection = detect(message, mail_from)
    if detection.dsn is not None:
        return Decision("high-risk", True, ["dsn"], detection)
    return Decision("normal", False, [], detection)


def is_high_risk(message: bytes) -> bool:
    """classify(message).high_risk; what a worker process sends back."""
    return classify(message).high_risk


def classify_many(messages: list[bytes]) -> list[Decision]:
    return [classify(m) for m in messages]
