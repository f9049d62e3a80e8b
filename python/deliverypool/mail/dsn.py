"""The DSN writer: RFC 3464 delivery status notifications (``multipart/report;
report-type=delivery-status``) for recipients the relay could not deliver to, and for those
delivered whose client asked for it (RFC 3461 NOTIFY=SUCCESS: reported as ``relayed``, since
the next hop is not asked for DSNs). The original message's header section is attached as
``text/rfc822-headers``, or, when the client asked for RET=FULL and a recipient failed, the
whole message as ``message/rfc822``. The client's ENVID and ORCPT are given back as
``Original-Envelope-Id`` and ``Original-Recipient``."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from deliverypool.mail.headers import crlf, header_section, one_line_ascii

__all__ = ["Failure", "build_dsn", "status_of"]

_ENHANCED_STATUS: Final = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Failure:
    """One recipient of a DSN: `action` "failed", "relayed" (delivered to a next hop that is
    not asked for DSNs) or "delayed" (deferred, still being retried); `orcpt` is the client's
    ORCPT for it ("addr-type;address")."""

    recipient: str
    reply: str
    remote_host: str | None = None
    action: str = "failed"
    orcpt: str | None = None


def status_of(reply: str, *, expired: bool = False) -> str:
    """The RFC 3463 status for a reply: its enhanced status code when it has one, else one
    derived from the reply code. An expired temporary failure keeps its 4.x.x status (the
    DSN's Action: failed says it is final); without one it is 4.4.7."""
    code, _, text = reply.partition(" ")
    match = _ENHANCED_STATUS.match(text)
    if match and match.group(1) == code[:1]:
        return match.group(0)
    if code.startswith("5"):
        return "5.0.0"
    return "4.4.7" if expired else "4.0.0"


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    failures: Sequence[Failure],
    original: bytes,
    queue_id: str,
    arrival: float,
    now: float | None = None,
    envid: str | None = None,
    ret: str | None = None,
) -> bytes:
    """An RFC 3464 delivery status notification (multipart/report; report-type=delivery-status)
    for `failures` (and relayed recipients), addressed to `original_sender`, with the original
    message's headers (or all of it, with `ret` "FULL" and a failure). A failure with a
    temporary (4xx) reply is one that expired: retried until the pool's max_age."""
    now = time.time() if now is None else now
    failed = [failure for failure in failures if failure.action == "failed"]
    relayed = [failure for failure in failures if failure.action == "relayed"]
    delayed = [failure for failure in failures if failure.action == "delayed"]
    expired = any(not failure.reply.startswith("5") for failure in failed)
    boundary = f"{queue_id}.{int(now)}/{reporting_mta}"
    if failed:
        subject = "Undelivered Mail Returned to Sender"
    elif delayed:
        subject = "Delayed Mail (still being retried)"
    else:
        subject = "Successful Mail Delivery Report"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{original_sender}>",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(now, localtime=False)}",
        f"Message-ID: {email.utils.make_msgid('dsn', domain=reporting_mta)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is the mail system at {reporting_mta}.",
        "",
    ]
    explained = (
        (failed, "Your message could not be delivered to one or more recipients"
         + (" within the time allowed." if expired else ".") + " It is attached below."),
        (delayed, "Your message could not be delivered yet to the recipients below; the mail system"
         " will keep trying, and tells you again only if it gives up."),
        (relayed, "Your message was delivered to the next hop for the recipients below, as you asked;"
         " that system was not asked for further notifications."),
    )
    for group, explanation in explained:
        if group:
            lines += [explanation, ""]
            for failure in group:
                where = f" (host {failure.remote_host} said)" if failure.remote_host else ""
                lines.append(f"<{_embedded(failure.recipient)}>{where}: {one_line_ascii(failure.reply)}")
            lines.append("")
    lines += [
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
    ]
    if envid is not None:
        lines.append(f"Original-Envelope-Id: {_printable(envid)}")
    lines += [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Deliverypool-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival, localtime=False)}",
        "",
    ]
    for failure in failures:
        if failure.orcpt is not None:
            lines.append(f"Original-Recipient: {_original_recipient(failure.orcpt)}")
        if failure.action == "relayed":
            status = status_of(failure.reply) if failure.reply.startswith("2") else "2.0.0"
            lines += [_final_recipient(failure.recipient), "Action: relayed", f"Status: {status}"]
        elif failure.action == "delayed":
            status = status_of(failure.reply) if failure.reply.startswith("4") else "4.0.0"
            lines += [_final_recipient(failure.recipient), "Action: delayed", f"Status: {status}"]
        else:
            status = status_of(failure.reply, expired=not failure.reply.startswith("5"))
            lines += [_final_recipient(failure.recipient), "Action: failed", f"Status: {status}"]
        if failure.remote_host:
            lines.append(f"Remote-MTA: dns; {failure.remote_host}")
        lines += [f"Diagnostic-Code: smtp; {one_line_ascii(failure.reply)}", ""]
    # Only the To: field can hold UTF-8 (a sender that needs SMTPUTF8, RFC 6532): the DSN then
    # goes out with SMTPUTF8 like any mail to that address.
    head = "\r\n".join(lines).encode("utf-8")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    if failed and ret == "FULL":
        # RFC 3461 §4.3: the whole message, in failure DSNs only.
        part = f"--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n".encode("ascii")
        body = crlf(original)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        return head + b"\r\n" + part + body + tail
    headers = crlf(header_section(original))
    part = f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n".encode("ascii")
    return head + b"\r\n" + part + headers + tail


def _embedded(address: str) -> str:
    """An address in ASCII for the report: non-ASCII characters as RFC 6533 §3 ``\\x{HEX}``."""
    return "".join(c if " " < c < "\x7f" and c != "\\" else f"\\x{{{ord(c):X}}}" for c in address)


def _printable(text: str) -> str:
    """`text` when it is printable ASCII, else xtext (RFC 3461 §4: ``+XX`` for each byte of its
    UTF-8 outside ``!``-``~`` and for ``+`` and ``=``): what the client sent, and never a line
    break in a header field."""
    if all(" " < c < "\x7f" for c in text):
        return text
    return "".join(chr(b) if 33 <= b <= 126 and b not in (43, 61) else f"+{b:02X}" for b in text.encode("utf-8", "surrogateescape"))


def _original_recipient(orcpt: str) -> str:
    """``Original-Recipient``'s value from ORCPT (``addr-type;address``, RFC 3464 §2.3.1)."""
    kind, _, address = orcpt.partition(";")
    return f"{_printable(kind)};{_printable(address)}"


def _final_recipient(address: str) -> str:
    """``Final-Recipient``: type ``rfc822`` for an ASCII address, ``utf-8`` (RFC 6533 §3, in its
    ASCII ``utf-8-addr-xtext`` form) for one that needs SMTPUTF8."""
    if address.isascii():
        return f"Final-Recipient: rfc822; {address}"
    return f"Final-Recipient: utf-8; {_embedded(address)}"


