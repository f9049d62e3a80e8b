"""What the scanner read from a DSN, reduced to what the monitor counts: per recipient its
action, normalised status and bounce category, the failed recipients, the reporting MTA, and
the original message's Message-ID and From when the DSN carries them.

Everything here is bounded and normalised: addresses are lower-cased and cut at 254
characters, statuses are codes or ``unknown``, actions and categories come from closed sets.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from deliverypool._core import HeaderFacts
from deliverypool.observe.bounce import bounce_category, normalize_status

__all__ = ["ACTIONS", "DsnRecipient", "DsnReport", "read_report"]

ACTIONS: Final = ("failed", "delayed", "delivered", "relayed", "expanded", "unknown")
_ADDRESS: Final = re.compile(r"[^\s<>;,\"()]+@[^\s<>;,\"()]+")
_MAX: Final = 254


def _address(text: str | None) -> str | None:
    """The mailbox in a Final-Recipient (``rfc822; a@b``), a From (``Name <a@b>``) or a list
    entry, lower-cased and bounded."""
    if not text:
        return None
    match = _ADDRESS.search(text)
    return match.group(0).lower().strip(".")[:_MAX] if match else None


def _domain(address: str | None) -> str | None:
    return address.rsplit("@", 1)[1] if address and "@" in address else None


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One per-recipient block of a DSN (or an X-Failed-Recipients entry)."""

    address: str | None
    action: str
    status: str
    category: str

    @property
    def local_part(self) -> str | None:
        return self.address.rsplit("@", 1)[0] if self.address and "@" in self.address else None

    @property
    def domain(self) -> str | None:
        return _domain(self.address)


@dataclass(frozen=True, slots=True)
class DsnReport:
    recipients: tuple[DsnRecipient, ...]
    reporting_mta: str | None
    original_message_id: str | None
    original_from: str | None
    # No per-recipient block could be read, or the scanner found defects in the report.
    malformed: bool
    # Identical DSNs (same failed recipients, statuses, original) have the same fingerprint.
    fingerprint: str

    @property
    def failed(self) -> tuple[DsnRecipient, ...]:
        return tuple(r for r in self.recipients if r.action == "failed")

    @property
    def original_from_domain(self) -> str | None:
        return _domain(self.original_from)

    @property
    def first_status(self) -> str:
        """The status of the first failed recipient (else of the first one), or unknown."""
        for recipient in self.failed or self.recipients:
            return recipient.status
        return "unknown"


def _reporting_mta(text: str | None) -> str | None:
    if not text:
        return None
    value = text.split(";", 1)[-1].strip().lower()
    return value[:_MAX] or None


def read_report(facts: HeaderFacts) -> DsnReport:
    """The monitor's view of a DSN from the scanner's `facts`."""
    recipients = []
    for block in facts.recipients:
        action = (block.action or "").split(";")[0].strip().lower()
        status = normalize_status(block.status)
        if action not in ACTIONS:
            # RFC 3464 requires Action; a 5.x.x status without one is a failure.
            action = "failed" if status.startswith("5") else "delayed" if status.startswith("4") else "unknown"
        recipients.append(DsnRecipient(_address(block.final_recipient), action, status, bounce_category(block.status, block.diagnostic_code)))
    if not recipients and facts.x_failed_recipients:
        for entry in facts.x_failed_recipients.split(",")[:100]:
            recipients.append(DsnRecipient(_address(entry), "failed", "unknown", "other"))
    original_id = facts.original_message_id.strip()[:_MAX] if facts.original_message_id else None
    key = "|".join(sorted(f"{r.address}:{r.status}" for r in recipients)) + "|" + (original_id or "")
    return DsnReport(
        recipients=tuple(recipients),
        reporting_mta=_reporting_mta(facts.reporting_mta),
        original_message_id=original_id,
        original_from=_address(facts.original_from),
        malformed=not recipients or any(d in _MALFORMED for d in facts.defects),
        fingerprint=hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).hexdigest(),
    )


_MALFORMED: Final = frozenset(
    {"delivery-status-without-recipients", "missing-header-body-separator", "invalid-content-type", "multipart-without-boundary", "no-header-fields"}
)
