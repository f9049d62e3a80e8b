"""The aiosmtpd handler of the relay: relay control, address syntax, the smuggling defence,
then hands each message to the relay (classify, spool) and answers 250 once it is stored.

What the handler enforces:

* never an open relay: RCPT is refused (554 5.7.1) unless the client's address is in
  ``listener.allowed_networks`` or the client authenticated;
* addresses that are not RFC 5321 mailboxes (:func:`deliverypool.mail.address.parse_mailbox`)
  are refused at MAIL (553) or RCPT (501), bytes that are not UTF-8 among them; a UTF-8
  address only in a transaction whose MAIL carried SMTPUTF8 (RFC 6531), else 553 5.6.7; a
  recipient count limit (452);
* sender limits (:mod:`deliverypool.state.limits`): the recipient that would exceed one, and
  every recipient of a restricted sender, gets 550 5.1.8 at RCPT (the recipients the
  transaction already has are kept);
* SMTP smuggling: a message with a bare LF or bare CR anywhere (in particular before the final
  dot, the "<LF>.<CR><LF>" trick) is refused with 554 5.6.0. aiosmtpd 1.4.5 and later only end
  DATA on <CR><LF>.<CR><LF>, so the smuggled commands would otherwise end up *inside* the
  message and reach the next hop, which may read them differently.

The size limit (552), line length limit (500) and command length limit are aiosmtpd's, set
from the listener section by :func:`deliverypool.ingress.smtp.protocol_factory`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from deliverypool.config import ListenerConfig
from deliverypool.errors import MessageRefused, SpoolFull
from deliverypool.mail.address import AddressError, parse_mailbox
from deliverypool.mail.headers import has_bare_line_ending

if TYPE_CHECKING:
    from deliverypool.app import Relay
    from deliverypool.auth.dkim import DkimOutcome
    from deliverypool.routing.scores import SpamVerdict

__all__ = ["Accepted", "RoutingHandler", "in_networks", "peer_ip"]

log = logging.getLogger("deliverypool.relay")

T = TypeVar("T")


@dataclass(frozen=True)
class Accepted:
    """A message stored in the spool: its queue id, pool, routing reasons and the spam
    verdict they used (trusted header or rspamd; None when the message had no score), and what
    DKIM did (the relay's signatures or why there are none, the checks of the client's; None
    without keys or signatures)."""

    queue_id: str
    pool: str
    reasons: tuple[str, ...]
    spam: SpamVerdict | None = None
    dkim: DkimOutcome | None = None


@functools.lru_cache(maxsize=4096)
def peer_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client address as an `ipaddress` object (IPv4-mapped IPv6 as IPv4), or None. Cached:
    it is asked two or three times per message, and clients come back."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(address: str | None, networks: Sequence[Any]) -> bool:
    """True when the client `address` lies in one of `networks`."""
    if not address:
        return False
    ip = peer_ip(address)
    return ip is not None and any(ip in network for network in networks)


def peer_of(session: Session) -> str | None:
    return session.peer[0] if isinstance(session.peer, tuple) else None


def _address_refused(error: AddressError, code: str, role: str) -> str:
    """The reply to a MAIL (`role` "sender") or RCPT ("recipient") address that cannot be used."""
    if error.reason == "non-ascii":
        return "553 5.6.7 Non-ASCII address without the SMTPUTF8 parameter (RFC 6531)"
    return f"{code} Bad {role} address syntax: {error.detail} ({error.reason})"


class RoutingHandler:
    """aiosmtpd handler: relay control, smuggling defence, and spooling before the 250. Mount
    it in any aiosmtpd server::

        relay = Relay(config)
        await relay.start()
        controller = Controller(relay.handler, hostname="127.0.0.1", port=2525,
                                authenticator=relay.handler.authenticate)

    The handler may run on another event loop (aiosmtpd's Controller runs its own in a thread):
    it then hands each message to the relay's loop.
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.config: ListenerConfig = relay.config.listener

    def relay_allowed(self, session: Session) -> bool:
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        return bool(session.authenticated) or in_networks(peer, self.config.allowed_networks)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        # aiosmtpd passes the null reverse-path as "<>" and needs a non-empty mail_from for RCPT
        # to be accepted, so it stays "<>" in the envelope; `handle_DATA` maps it to "".
        if address != "<>":
            try:
                parse_mailbox(address, smtputf8=envelope.smtp_utf8)
            except AddressError as error:
                return _address_refused(error, "553 5.1.7", "sender")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        # A bounce to an SRS address of the relay, from any client (ingress/srs.py).
        srs = self.relay.srs_bounces.rcpt_reply(address, peer_of(session)) if self.relay.srs_bounces is not None else None
        if srs is not None and not srs.startswith("250"):
            return srs
        if srs is None and not self.relay_allowed(session):
            log.warning("refused relay peer=%s rcpt=%s", session.peer, address, extra={"rate_limit": "refused relay"})
            return "554 5.7.1 Relay access denied"
        try:
            parse_mailbox(address, smtputf8=envelope.smtp_utf8)
        except AddressError as error:
            return _address_refused(error, "501 5.1.3", "recipient")
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return "452 4.5.3 Too many recipients"
        limits = self.relay.limits
        if limits is not None and envelope.mail_from not in (None, "<>") and srs is None:
            login = session.auth_data.login.decode("utf-8", "replace") if isinstance(session.auth_data, LoginPassword) else None
            peer = session.peer[0] if isinstance(session.peer, tuple) else None
            refused = await self._on_relay_loop(limits.check(login=login, mail_from=envelope.mail_from, recipient=address, peer=peer))
            if refused is not None:
                return refused
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        srs_only = self.relay.srs_bounces is not None and self.relay.srs_bounces.only(envelope.rcpt_tos)
        if not self.relay_allowed(session) and not srs_only:  # RCPT already refused; belt and braces
            return "554 5.7.1 Relay access denied"
        content = envelope.original_content or b""
        # RelaySMTP's DATA reader has refused bare line endings already and put the relay's
        # trace field in front; under another aiosmtpd protocol both are done here.
        traced = getattr(envelope, "deliverypool_traced", False)
        if not traced and has_bare_line_ending(content):
            log.warning("refused bare LF/CR peer=%s from=%s", session.peer, envelope.mail_from, extra={"rate_limit": "refused bare line ending"})
            return "554 5.6.0 Message contains a bare LF or CR; use CRLF line endings (SMTP smuggling)"
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        login = session.auth_data.login.decode("utf-8", "replace") if isinstance(session.auth_data, LoginPassword) else None
        # From here the relay holds the only reference to the message, so that a copy it makes
        # (the trace field in front) frees the original at once: a large message is in memory
        # at most twice.
        assert isinstance(content, bytes)
        envelope.content = envelope.original_content = None
        work = self.relay.accept(
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            content=content,
            peer=peer,
            helo=session.host_name or "unknown",
            login=login,
            traced=traced,
        )
        del content
        try:
            accepted = await self._on_relay_loop(work)
        except MessageRefused as refused:
            return refused.reply
        except SpoolFull:
            log.warning("refused a message from %s: the spool's disk is full", session.peer)
            return "452 4.3.1 Insufficient system storage; try again later"
        except Exception:
            log.exception("could not spool a message from %s", session.peer)
            return "451 4.3.0 Temporary failure storing the message; try again later"
        return f"250 2.0.0 Ok: queued as {accepted.queue_id}"

    async def _on_relay_loop(self, work: Awaitable[T]) -> T:
        loop = self.relay.loop
        if loop is None or asyncio.get_running_loop() is loop:
            return await work
        assert asyncio.iscoroutine(work)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, loop))

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """aiosmtpd authenticator for PLAIN and LOGIN against ``listener.auth_users``."""
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        expected = self.config.auth_users.get(user)
        ok = expected is not None and hmac.compare_digest(expected.encode("utf-8"), auth_data.password)
        if not ok:
            log.warning("failed AUTH peer=%s user=%s", session.peer, user, extra={"rate_limit": "failed AUTH"})
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
