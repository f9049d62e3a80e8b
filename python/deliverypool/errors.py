"""Every exception deliverypool raises, in one place.

Each one also inherits the built-in exception a caller would catch without knowing
deliverypool (``ValueError`` for bad input, ``LookupError`` for DNS, ``RuntimeError`` for the
spool), and carries what went wrong as attributes, not only as text.
"""

from __future__ import annotations

from deliverypool._core import PolicyError, ScoreError
from deliverypool.mail.address import AddressError

__all__ = [
    "AddressError",
    "DestinationError",
    "DnsLookupError",
    "MessageRefused",
    "PermanentDnsError",
    "PolicyError",
    "ScoreError",
    "SpoolError",
    "SpoolFull",
    "SpoolLocked",
    "TemporaryDnsError",
]


class DnsLookupError(LookupError):
    """A lookup gave no usable answer. ``reason`` names why, ``domain`` is the ASCII name."""

    def __init__(self, domain: str, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"{domain}: {reason}")
        self.domain = domain
        self.reason = reason


class PermanentDnsError(DnsLookupError):
    """The domain cannot receive mail: ``reason`` is ``null-mx`` (RFC 7505; SMTP 5.1.10),
    ``nxdomain``, ``no-records`` (no MX, A or AAAA) or ``invalid-domain``."""


class TemporaryDnsError(DnsLookupError):
    """No answer for now (``servfail``, ``refused``, ``timeout``, ``error``): try later (4.4.3)."""


class DestinationError(Exception):
    """Mail cannot be handed to any host of a destination. ``reply`` is written as an SMTP
    reply ("556 5.1.10 ...") so that logs and DSNs treat it like a remote answer; ``code`` is
    its reply code."""

    def __init__(self, reply: str, *, permanent: bool) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent

    @property
    def code(self) -> int:
        head = self.reply[:3]
        return int(head) if head.isdigit() else (550 if self.permanent else 451)


class MessageRefused(Exception):
    """The relay will not take a message; ``reply`` is the SMTP reply the client gets
    ("554 5.4.6 ..."), ``reason`` a short machine-readable name (``too-many-hops``, ...)."""

    def __init__(self, reply: str, reason: str) -> None:
        super().__init__(reply)
        self.reply = reply
        self.reason = reason


class SpoolError(RuntimeError):
    """The spool cannot be opened or written."""


class SpoolFull(SpoolError):
    """The spool's disk is full: new mail is refused (452 4.3.1) until there is room again;
    mail already accepted is still delivered."""


class SpoolLocked(SpoolError):
    """Another process has the spool open."""
