"""The DSN writer: RFC 3464 delivery status notifications for recipients the relay could not
deliver to (``multipart/report; report-type=delivery-status``), with the original message's
header section attached as ``text/rfc822-headers``."""

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
    recipient: str
    reply: str
    remote_host: str | None = None


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
) -> bytes:
    """An RFC 3464 delivery status notification (multipart/report; report-type=delivery-status)
    for `failures`, addressed to `original_sender`, with the original message's headers. A
    failure with a temporary (4xx) reply is one that expired: retried until the pool's max_age."""
    now = time.time() if now is None else now
    expired = any(not failure.reply.startswith("5") for failure in failures)
    boundary = f"{queue_id}.{int(now)}/{reporting_mta}"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{original_sender}>",
        "Subject: Undelivered Mail Returned to Sender",
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
        "Your message could not be delivered to one or more recipients"
        + (" within the time allowed." if expired else ".")
        + " It is attached below.",
        "",
    ]
    for failure in failures:
        where = f" (host {failure.remote_host} said)" if failure.remote_host else ""
        lines.append(f"<{_embedded(failure.recipient)}>{where}: {one_line_ascii(failure.reply)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Deliverypool-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival, localtime=False)}",
        "",
    ]
    for failure in failures:
        status = status_of(failure.reply, expired=not failure.reply.startswith("5"))
        lines += [_final_recipient(failure.recipient), "Action: failed", f"Status: {status}"]
        if failure.remote_host:
            lines.append(f"Remote-MTA: dns; {failure.remote_host}")
        lines += [f"Diagnostic-Code: smtp; {one_line_ascii(failure.reply)}", ""]
    # Only the To: field can hold UTF-8 (a sender that needs SMTPUTF8, RFC 6532): the DSN then
    # goes out with SMTPUTF8 like any mail to that address.
    head = "\r\n".join(lines).encode("utf-8")
    headers = crlf(header_section(original))
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    part = f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n".encode("ascii")
    return head + b"\r\n" + part + headers + tail


def _embedded(address: str) -> str:
    """An address in ASCII for the report: non-ASCII characters as RFC 6533 §3 ``\\x{HEX}``."""
    return "".join(c if " " < c < "\x7f" and c != "\\" else f"\\x{{{ord(c):X}}}" for c in address)


def _final_recipient(address: str) -> str:
    """``Final-Recipient``: type ``rfc822`` for an ASCII address, ``utf-8`` (RFC 6533 §3, in its
    ASCII ``utf-8-addr-xtext`` form) for one that needs SMTPUTF8."""
    if address.isascii():
        return f"Final-Recipient: rfc822; {address}"
    return f"Final-Recipient: utf-8; {_embedded(address)}"


