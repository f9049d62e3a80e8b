"""Bounces to the relay's SRS addresses (``[auth.srs]``): checked at RCPT, reversed at the end of
data, for the relay's listener and the milter alike.

Mail that left through a relay pool carried an SRS0/SRS1 envelope sender at ``auth.srs.domain``
(docs/concepts/authentication.md); a bounce to it comes back to the relay (the domain's MX), from
any MTA on the Internet. So a recipient at that domain is the relay's own, whoever the client:

* **valid** (the keyed hash matches under one of the keys, and the address is younger than
  ``max_age_days``): accepted at RCPT (``250``), even from a client that may not relay, and
  reversed at the end of data to the original sender; the message is routed back as the DSN it
  is, through a high-risk pool (reason ``srs-bounce``);
* **forged, malformed or expired**: refused at RCPT, ``550 5.1.1 <address>: invalid SRS
  address (bad-hash)``, with the reason from ``SRS_ERRORS``;
* any other recipient at that domain (not SRS at all): refused the same way (``not-srs``): the
  relay has no mailboxes.

Each check is counted by its outcome (``reversed`` or the error's reason: a closed set, the
label of ``deliverypool_srs_total``). The reversal at the end of data is the same check again
(microseconds: one HMAC per key); an address that expired between RCPT and DATA refuses the
message with a 4xx so that the client tries again and gets the 550 at RCPT: nothing accepted
is lost.

One function per decision, so that any listener can call it: :meth:`SrsBounces.rcpt_reply` from
the handler's RCPT (before the relay check: the client is a remote MTA), the milter's
``envrcpt``; :meth:`SrsBounces.reverse` from ``Relay.accept`` and the milter's end of message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

from deliverypool._core import SRS_ERRORS, SrsError, SrsRewriter
from deliverypool.config import SrsConfig
from deliverypool.errors import MessageRefused
from deliverypool.ingress.handler import RCPT_OK
from deliverypool.mail.address import domain_of

__all__ = ["SRS_OUTCOMES", "SrsBounces", "rewriter_of"]

log = logging.getLogger("deliverypool.srs")

# What SRS did: a sender rewritten for relay-pool mail, or what a check of an address at the SRS
# domain came to (reversed, or why not). A closed set (metrics labels).
SRS_OUTCOMES: Final[tuple[str, ...]] = ("rewritten", "reversed", *SRS_ERRORS)



class SrsBounces:
    """The SRS rewriter of ``[auth.srs]``, and the checks of the addresses at its domain."""

    def __init__(self, rewriter: SrsRewriter, *, clock: Callable[[], float] = time.time) -> None:
        self.rewriter = rewriter
        self.domain = rewriter.domain.lower()
        self.clock = clock
        # Called with each RCPT check's outcome (SRS_OUTCOMES) and the address: the observer.
        self.on_outcome: Callable[[str, str, str | None], None] | None = None

    @classmethod
    def from_config(cls, config: SrsConfig) -> SrsBounces:
        """The keys were read (and checked) when the configuration loaded."""
        return cls(rewriter_of(config))

    def ours(self, address: str) -> bool:
        """Whether `address` is at the SRS domain."""
        return domain_of(address) == self.domain

    def _count(self, outcome: str, address: str, peer: str | None) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome, address, peer)

    def _reverse(self, address: str) -> str:
        """The original sender, or SrsError."""
        return self.rewriter.reverse(address, now=int(self.clock()))

    def rcpt_reply(self, address: str, peer: str | None = None) -> str | None:
        """The reply to RCPT TO:<address> when it is at the SRS domain (``250`` for a valid
        SRS address, ``550 5.1.1`` with the reason otherwise); None for any other address."""
        if not self.ours(address):
            return None
        try:
            self._reverse(address)
        except SrsError as error:
            self._count(error.reason, address, peer)
            log.warning("refused SRS address peer=%s rcpt=%s: %s (%s)", peer, address, error, error.reason, extra={"rate_limit": "refused SRS address"})
            return f"550 5.1.1 <{address}>: invalid SRS address ({error.reason})"
        self._count("reversed", address, peer)
        return RCPT_OK

    def only(self, recipients: Iterable[str]) -> bool:
        """Whether every recipient is at the SRS domain (a bounce from a client that may not
        relay may still hand over its message)."""
        found = False
        for recipient in recipients:
            if not self.ours(recipient):
                return False
            found = True
        return found

    def reverse(self, recipients: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
        """The recipients with each SRS address reversed to its original sender, and whether
        any was. Raises MessageRefused (4xx) for one that no longer checks (it expired since
        RCPT): the client tries again and gets the 550 at RCPT."""
        if not any(self.ours(r) for r in recipients):
            return recipients, False
        reversed_ = []
        for recipient in recipients:
            if not self.ours(recipient):
                reversed_.append(recipient)
                continue
            try:
                reversed_.append(self._reverse(recipient))
            except SrsError as error:
                raise MessageRefused(f"450 4.1.1 <{recipient}>: SRS address no longer valid ({error.reason}); try again", "srs-invalid") from None
        return tuple(reversed_), True

    def forward(self, sender: str) -> str | None:
        """The SRS address to send `sender`'s relayed mail with; None for the null sender or
        one that cannot be rewritten (no domain)."""
        if not sender:
            return None
        try:
            return self.rewriter.forward(sender, now=int(self.clock()))
        except SrsError:
            return None


def rewriter_of(config: SrsConfig) -> SrsRewriter:
    """The rewriter of ``[auth.srs]``, with the keys read (and checked) when it loaded."""
    return SrsRewriter(config.domain, list(config.keys), max_age_days=config.max_age_days, hash_length=config.hash_length, separator=config.separator)
