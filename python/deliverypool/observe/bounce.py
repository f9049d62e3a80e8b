"""Bounce categories and status classes: closed sets decided from a recipient's status code and
diagnostic text, so that what a DSN says lands in a label set no client can extend.

The rules, first match wins (``X`` is 4 or 5):

1. the diagnostic text names spam or a blocklist (``spam``, ``junk``, ``blocklist``,
   ``blacklist``, ``dnsbl``, ``rbl``, ``spamhaus``, ``reputation``, ``listed``), and the status is
   ``X.7.*``, ``X.0.0`` or missing: **spam-related**;
2. by status code: ``X.1.1``, ``X.1.3``, ``X.1.10`` **bad-mailbox** (no such user; Exchange uses
   5.1.10 for it) unless the text says "null MX", then **bad-domain**; ``X.1.2`` **bad-domain**;
   ``X.1.6`` and ``X.2.1`` **inactive-mailbox**; ``X.2.2`` and ``X.3.1`` **quota**; ``X.2.3``,
   ``X.3.4`` and ``X.7.*`` **policy-related**; ``X.4.7`` **message-expired**; other ``X.4.*``
   **routing**; ``X.5.*`` and ``X.6.*`` **protocol**;
3. by text, for codes the rules above leave open (``X.0.0``, ``X.1.0``, ``X.2.0``, none):
   "user unknown", "no such user", "does not exist", "recipient not found", "invalid recipient"…
   **bad-mailbox**; "domain not found", "host not found", "no such domain" **bad-domain**;
   "quota", "mailbox full", "over quota", "insufficient storage" **quota**; "disabled",
   "inactive", "suspended", "deactivated" **inactive-mailbox**; "expired", "too long in the
   queue", "timed out" **message-expired**; "loop" **routing**; "policy", "not allowed",
   "denied", "refused" **policy-related**;
4. **other**.

A status is read from the ``Status`` field as the first ``class.subject.detail`` code in it
(``5.1.1 (user unknown)`` is 5.1.1); anything else is ``unknown``. The *status class* of a
metric label is ``class.subject`` (``5.1``) for class 2, 4 or 5 and subject 0 to 7, else
``unknown``.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["BOUNCE_CATEGORIES", "STATUS_CLASSES", "bounce_category", "normalize_status", "status_class"]

BOUNCE_CATEGORIES: Final = (
    "bad-mailbox",
    "bad-domain",
    "inactive-mailbox",
    "quota",
    "spam-related",
    "policy-related",
    "routing",
    "protocol",
    "message-expired",
    "other",
)
STATUS_CLASSES: Final = tuple(f"{c}.{s}" for c in (2, 4, 5) for s in range(8)) + ("unknown",)

_STATUS: Final = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d])")
_SPAM: Final = re.compile(r"spam|junk|block-?list|black-?list|dnsbl|\brbl\b|spamhaus|reputation|\blisted\b", re.I)
_NULL_MX: Final = re.compile(r"null[ -]?mx", re.I)
_TEXT_RULES: Final = (
    ("bad-mailbox", re.compile(
        r"user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|doesn't exist|recipient not found|"
        r"invalid (recipient|mailbox|address)|address rejected|not a valid mailbox|mailbox unavailable|unknown recipient|"
        r"no mailbox|user not found|recipientnotfound", re.I)),
    ("bad-domain", re.compile(r"domain not found|host not found|no such domain|unrouteable|nxdomain|host unknown|domain does not exist", re.I)),
    ("quota", re.compile(r"quota|mailbox (is )?full|insufficient storage|exceeded storage", re.I)),
    ("inactive-mailbox", re.compile(r"disabled|inactive|suspended|deactivated|expired account|account (has been )?closed", re.I)),
    ("message-expired", re.compile(r"expired|too long in (the )?queue|timed? ?out|delivery time", re.I)),
    ("routing", re.compile(r"\bloop", re.I)),
    ("policy-related", re.compile(r"policy|not allowed|denied|refused|prohibited|rejected", re.I)),
)
_BY_CODE: Final = {
    (1, 1): "bad-mailbox",
    (1, 3): "bad-mailbox",
    (1, 10): "bad-mailbox",
    (1, 2): "bad-domain",
    (1, 6): "inactive-mailbox",
    (2, 1): "inactive-mailbox",
    (2, 2): "quota",
    (3, 1): "quota",
    (2, 3): "policy-related",
    (3, 4): "policy-related",
    (4, 7): "message-expired",
}
# Codes whose meaning the text decides.
_OPEN: Final = {(0, 0), (1, 0), (2, 0)}


def normalize_status(status: str | None) -> str:
    """The first ``c.s.d`` status code in `status` (at most 3 digits each, no leading zeros
    kept), or ``unknown``."""
    if status:
        match = _STATUS.search(status)
        if match:
            return f"{match.group(1)}.{int(match.group(2))}.{int(match.group(3))}"
    return "unknown"


def status_class(status: str | None) -> str:
    """``class.subject`` of a status code, one of :data:`STATUS_CLASSES`."""
    code = normalize_status(status)
    if code == "unknown":
        return code
    cls, subject, _ = code.split(".")
    return f"{cls}.{subject}" if int(subject) <= 7 else "unknown"


def bounce_category(status: str | None, diagnostic: str | None = None) -> str:
    """The bounce category of a failed recipient (one of :data:`BOUNCE_CATEGORIES`) from its
    status and diagnostic text, by the rules in this module's documentation."""
    code = normalize_status(status)
    text = (diagnostic or "")[:2000]
    parts = None if code == "unknown" else tuple(int(p) for p in code.split("."))
    subject_detail = (parts[1], parts[2]) if parts else None
    if text and _SPAM.search(text) and (parts is None or parts[1] == 7 or subject_detail == (0, 0)):
        return "spam-related"
    if subject_detail is not None and subject_detail not in _OPEN:
        if subject_detail in ((1, 1), (1, 10)) and _NULL_MX.search(text):
            return "bad-domain"
        category = _BY_CODE.get(subject_detail)
        if category is not None:
            return category
        subject = subject_detail[0]
        if subject == 7:
            return "policy-related"
        if subject == 4:
            return "routing"
        if subject in (5, 6):
            return "protocol"
    for category, pattern in _TEXT_RULES:
        if pattern.search(text):
            return category
    return "other"
