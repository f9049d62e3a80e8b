"""The relay's decisions at MAIL, RCPT and the end of data, and the aiosmtpd handler made of
them: relay control, address syntax, the smuggling defence, then the message handed to the
relay (classify, spool) and 250 answered once it is stored.

The relay's own listener (:mod:`deliverypool.ingress.session`, the Rust SMTP engine) calls
:meth:`RoutingHandler.mail_reply`, :meth:`~RoutingHandler.rcpt_reply`,
:meth:`~RoutingHandler.message_reply` and :meth:`~RoutingHandler.credentials` directly; the
``handle_MAIL``/``handle_RCPT``/``handle_DATA`` hooks and ``authenticate`` make the same
decisions for an aiosmtpd server of your own (README "Embedding the handler").

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
  dot, the "<LF>.<CR><LF>" trick) is refused with 554 5.6.0 (the DATA readers of both
  listeners refuse it before the handler sees it; under another aiosmtpd protocol it is done
  here).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from deliverypool.config import ListenerConfig
from deliverypool.errors import MessageRefused, SpoolFull
from deliverypool.mail.address import AddressError, parse_mailbox
from deliverypool.mail.headers import has_bare_line_ending

if TYPE_CHECKING:
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

    from deliverypool.app import Relay
    from deliverypool.outbound.scheduler import DeliveryEngine
    from deliverypool.auth.dkim import DkimOutcome
    from deliverypool.queue.spool import DsnRequest
    from deliverypool.routing.scores import SpamVerdict

__all__ = ["Accepted", "RoutingHandler", "in_networks", "network_check", "peer_ip"]

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


def network_check(networks: Sequence[Any]) -> Callable[[str | None], bool]:
    """`in_networks` for one set of networks, cached per client address: asked at every RCPT
    and message, where parsing the address and testing each network was a few microseconds."""
    return functools.lru_cache(maxsize=4096)(functools.partial(in_networks, networks=networks))


# The address check of MAIL and RCPT, cached: senders and recipient domains repeat, and a
# domain's IDNA conversion is most of a check's cost (parse_mailbox is pure; a refused address
# raises, which is not cached).
_mailbox = functools.lru_cache(maxsize=8192)(parse_mailbox)

MAIL_OK: Final = "250 2.1.0 OK"
# Counted each time a MAIL's 250 waited for delivery to catch up (`RoutingHandler.mail_reply`).
IN_FLOW_DELAYS: Final = "deliverypool_in_flow_delays_total"
RCPT_OK: Final = "250 2.1.5 OK"
RELAY_DENIED: Final = "554 5.7.1 Relay access denied"
AUTH_OK: Final = "235 2.7.0 Authentication successful"
AUTH_INVALID: Final = "535 5.7.8 Authentication credentials invalid"


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
        # Whether a client address is in allowed_networks, asked at every RCPT and message.
        self._allowed = network_check(self.config.allowed_networks)

    # --- the decisions (any listener) --------------------------------------------------

    def relay_permitted(self, peer: str | None, authenticated: bool) -> bool:
        return authenticated or self._allowed(peer)

    def mail_reply(self, address: str, smtputf8: bool) -> str | Coroutine[Any, Any, str]:
        """The reply to MAIL FROM:<address> ("" for the null reverse-path); a coroutine when
        delivery is behind and the 250 waits for it (``listener.in_flow_delay``)."""
        if address and address != "<>":
            try:
                _mailbox(address, smtputf8=smtputf8)
            except AddressError as error:
                return _address_refused(error, "553 5.1.7", "sender")
        engine = self.relay.engine
        if self.config.in_flow_delay > 0 and engine is not None and engine.behind:
            return self._in_flow(engine)
        return MAIL_OK

    async def _in_flow(self, engine: DeliveryEngine) -> str:
        observer = self.relay.observer
        if observer.enabled:
            observer.metrics.add(IN_FLOW_DELAYS, ())
        await engine.caught_up(self.config.in_flow_delay)
        return MAIL_OK

    def rcpt_reply(
        self, *, peer: str | None, authenticated: bool, login: str | None, mail_from: str, address: str, smtputf8: bool, accepted: int
    ) -> str | Coroutine[Any, Any, str]:
        """The reply to RCPT TO:<address> in a transaction from `mail_from` that has `accepted`
        recipients so far; a coroutine when the sender limits must be asked."""
        # A bounce to an SRS address of the relay, from any client (ingress/srs.py).
        srs = self.relay.srs_bounces.rcpt_reply(address, peer) if self.relay.srs_bounces is not None else None
        if srs is not None and srs != RCPT_OK:
            return srs
        if srs is None and not self.relay_permitted(peer, authenticated):
            if log.isEnabledFor(logging.WARNING):
                log.warning("refused relay peer=%s rcpt=%s", peer, address, extra={"rate_limit": "refused relay"})
            return RELAY_DENIED
        try:
            _mailbox(address, smtputf8=smtputf8)
        except AddressError as error:
            return _address_refused(error, "501 5.1.3", "recipient")
        if accepted >= self.config.max_recipients:
            return "452 4.5.3 Too many recipients"
        if self.relay.limits is not None and mail_from not in ("", "<>") and srs is None:
            return self._limited(login=login, mail_from=mail_from, address=address, peer=peer)
        return RCPT_OK

    async def _limited(self, *, login: str | None, mail_from: str, address: str, peer: str | None) -> str:
        limits = self.relay.limits
        assert limits is not None
        refused = await self._on_relay_loop(limits.check(login=login, mail_from=mail_from, recipient=address, peer=peer))
        return RCPT_OK if refused is None else refused

    async def message_reply(
        self,
        *,
        mail_from: str,
        recipients: tuple[str, ...],
        content: bytes,
        peer: str | None,
        helo: str,
        login: str | None,
        authenticated: bool,
        traced: bool,
        dsn: DsnRequest | None = None,
    ) -> str:
        """Hands a message to the relay; the reply once it is stored (or why it is not).
        `traced`: the relay's Received: field is in front of `content` already."""
        srs_only = self.relay.srs_bounces is not None and self.relay.srs_bounces.only(recipients)
        if not self.relay_permitted(peer, authenticated) and not srs_only:  # RCPT already refused; belt and braces
            return RELAY_DENIED
        if not traced and has_bare_line_ending(content):
            log.warning("refused bare LF/CR peer=%s from=%s", peer, mail_from, extra={"rate_limit": "refused bare line ending"})
            return "554 5.6.0 Message contains a bare LF or CR; use CRLF line endings (SMTP smuggling)"
        work = self.relay.accept(
            mail_from="" if mail_from == "<>" else mail_from,
            recipients=recipients,
            content=content,
            peer=peer,
            helo=helo,
            login=login,
            traced=traced,
            dsn=dsn,
        )
        # From here the relay holds the only reference to the message, so that a copy it makes
        # (the trace field in front) frees the original at once: a large message is in memory
        # at most twice.
        del content
        try:
            accepted = await self._on_relay_loop(work)
        except MessageRefused as refused:
            return refused.reply
        except SpoolFull:
            log.warning("refused a message from %s: the spool's disk is full", peer)
            return "452 4.3.1 Insufficient system storage; try again later"
        except Exception:
            log.exception("could not spool a message from %s", peer)
            return "451 4.3.0 Temporary failure storing the message; try again later"
        return f"250 2.0.0 Ok: queued as {accepted.queue_id}"

    def credentials(self, login: bytes, password: bytes, peer: str | None) -> str | None:
        """The user `login` is, when `password` is its password in ``listener.auth_users``
        (compared in constant time); None otherwise (logged)."""
        user = login.decode("utf-8", "replace")
        expected = self.config.auth_users.get(user)
        if expected is not None and hmac.compare_digest(expected.encode("utf-8"), password):
            return user
        log.warning("failed AUTH peer=%s user=%s", peer, user, extra={"rate_limit": "failed AUTH"})
        return None

    # --- aiosmtpd's hooks ------------------------------------------------------------------

    def relay_allowed(self, session: Session) -> bool:
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        return self.relay_permitted(peer, bool(session.authenticated))

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        # aiosmtpd passes the null reverse-path as "<>" and needs a non-empty mail_from for RCPT
        # to be accepted, so it stays "<>" in the envelope; `handle_DATA` maps it to "".
        reply = self.mail_reply(address, envelope.smtp_utf8)
        if not isinstance(reply, str):
            reply = await self._on_relay_loop(reply)
        if reply == MAIL_OK:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return reply

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        reply = self.rcpt_reply(
            peer=peer,
            authenticated=bool(session.authenticated),
            login=_login(session),
            mail_from=envelope.mail_from or "<>",
            address=address,
            smtputf8=envelope.smtp_utf8,
            accepted=len(envelope.rcpt_tos),
        )
        if not isinstance(reply, str):
            reply = await reply
        if reply == RCPT_OK:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        assert isinstance(content, bytes)
        # RelaySMTP's DATA reader has refused bare line endings already and put the relay's
        # trace field in front; under another aiosmtpd protocol both are done here.
        traced = getattr(envelope, "deliverypool_traced", False)
        envelope.content = envelope.original_content = None
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        return await self.message_reply(
            mail_from=envelope.mail_from or "<>",
            recipients=tuple(envelope.rcpt_tos),
            content=content,
            peer=peer,
            helo=session.host_name or "unknown",
            login=_login(session),
            authenticated=bool(session.authenticated),
            traced=traced,
        )

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
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        peer = session.peer[0] if isinstance(session.peer, tuple) else session.peer
        ok = self.credentials(auth_data.login, auth_data.password, peer) is not None
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def _login(session: Session) -> str | None:
    """The user an aiosmtpd session authenticated as, or None."""
    from aiosmtpd.smtp import LoginPassword

    data = session.auth_data
    return data.login.decode("utf-8", "replace") if isinstance(data, LoginPassword) else None
