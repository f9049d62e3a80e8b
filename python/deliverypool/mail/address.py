"""Mail addresses, domains and ``host:port`` strings: the one parser of each.

Every part of deliverypool that needs the domain of an address, the ASCII form of a domain or
a ``host:port`` pair asks this module, so that a domain never routes, groups or resolves
differently depending on which code path read it.

Domains are converted with **IDNA 2008** (the ``idna`` package, with the UTS #46 mapping that
browsers and mail software apply to user input) and never with Python's built-in IDNA 2003
codec: ``faß.de`` is ``xn--fa-hia.de``, not ``fass.de``. dnspython is given the same codec
(:data:`IDNA_CODEC`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

import dns.name
import idna

__all__ = [
    "DOT_ATOM_PATTERN",
    "IDNA_CODEC",
    "AddressError",
    "Mailbox",
    "domain_of",
    "normalize_domain",
    "parse_host_port",
    "parse_mailbox",
    "sender_domain",
    "sender_key",
]

# The codec dnspython uses wherever a name is given in Unicode.
IDNA_CODEC: Final = dns.name.IDNA_2008_Practical

_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
# A label of a DNS name that is not a host name: service labels (``_dmarc``, ``_domainkey``)
# and DKIM selectors may hold underscores (RFC 8552).
_DNS_LABEL: Final = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")
# RFC 5321 §4.1.2: atext, and qtextSMTP / quoted-pairSMTP (printable ASCII).
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
# A dot-atom (RFC 5322 §3.2.3), as a pattern to build on.
DOT_ATOM_PATTERN: Final = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_DOT_ATOM: Final = re.compile(rf"{DOT_ATOM_PATTERN}\Z")
_QUOTED: Final = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
# The same with UTF-8 (RFC 6531 §3.3): any non-ASCII character that is not a control.
_DOT_ATOM_UTF8: Final = re.compile(rf"(?:{_ATEXT}|[^\x00-\x7f\x80-\x9f])+(?:\.(?:{_ATEXT}|[^\x00-\x7f\x80-\x9f])+)*\Z")
_QUOTED_UTF8: Final = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|[^\x00-\x7f\x80-\x9f]|\\[\x20-\x7e])*"\Z')
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Lone surrogates: what aiosmtpd's surrogateescape decoding makes of bytes that are not UTF-8.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")

MAX_LOCAL_PART: Final = 64  # RFC 5321 §4.5.3.1.1
MAX_PATH: Final = 254  # RFC 5321 §4.5.3.1.3 (256 with the angle brackets)


class AddressError(ValueError):
    """An address, domain or ``host:port`` string that cannot be used. ``reason`` is a short
    machine-readable name (``no-at``, ``bad-local-part``, ``bad-domain``, ``non-ascii``,
    ``invalid-utf8``, ``control-character``, ``too-long``, ``bad-port``, ...); ``detail`` says
    it in words (ASCII, fit for an SMTP reply)."""

    def __init__(self, text: str, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{detail or reason}: {text!r}")
        self.text = text
        self.reason = reason
        self.detail = detail or reason


def normalize_domain(domain: str, *, allow_underscore: bool = False) -> str | None:
    """The ASCII (IDNA 2008) form of a mail domain, lowercased, without the trailing dot, or
    None when it is not a valid host name: empty, an address literal, a single label, a label
    outside letters/digits/hyphen, an all-numeric top-level label, too long, or a Unicode name
    IDNA 2008 rejects. ``allow_underscore`` also takes labels with underscores, for DNS names
    that are not host names (``_dmarc.example.com``, ``sel._domainkey.example.com``); their
    Unicode labels are still IDNA 2008. White space around the name and around its one trailing dot is ignored,
    so ``"a.test "``, ``"a.test ."`` and ``"a.test. "`` are all ``"a.test"``; a second trailing
    dot (``"a.test.."``, ``"a.test. ."``) is an empty label."""
    domain = domain.strip()
    if domain.endswith("."):
        domain = domain[:-1].rstrip()
    if not domain or domain.startswith("["):
        return None
    if domain.isascii():
        domain = domain.lower()
    elif allow_underscore:  # IDNA 2008 per label: the whole-name codec refuses underscores
        try:
            domain = ".".join(
                label.lower() if label.isascii() else idna.encode(label, uts46=True, transitional=False).decode("ascii")
                for label in domain.split(".")
            )
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
    else:
        try:
            domain = idna.encode(domain, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
    if len(domain) > 253:
        return None
    labels = domain.split(".")
    if len(labels) < 2 or labels[-1].isdigit():
        return None
    label = _DNS_LABEL if allow_underscore else _LABEL
    if not all(label.match(part) for part in labels):
        return None
    return domain


def domain_of(address: str) -> str:
    """The domain part of ``local@domain`` in its ASCII form (lowercased, no trailing dot);
    the part after the last ``@`` lowercased when it is not a valid host name (an address
    literal, say), and ``""`` without an ``@``."""
    _, at, domain = address.rpartition("@")
    if not at:
        return ""
    return normalize_domain(domain) or domain.strip().lower().rstrip(".")


def sender_domain(mail_from: str | None) -> str | None:
    """The domain of an envelope sender (see :func:`domain_of`); None for the null sender
    (``""`` or ``<>``). A sender without ``@`` yields ``""``, which :func:`normalize_domain`
    rejects."""
    if not mail_from:
        return None
    if mail_from[0] == "<" and mail_from[-1] == ">":
        mail_from = mail_from[1:-1]
        if not mail_from:
            return None
    return domain_of(mail_from)


def sender_key(identity: str) -> str:
    """The one form of a sender's identity that its limits are counted under (an AUTH login or
    an envelope sender): a mailbox as ``casefolded-local@ascii-domain`` (the domain in its IDNA
    2008 form, as :func:`parse_mailbox` gives it), anything else stripped and casefolded. So
    ``Alice@Example.COM``, ``alice@example.com`` and ``<alice@example.com>`` are one sender."""
    text = identity.strip()
    if len(text) > 1 and text[0] == "<" and text[-1] == ">":
        text = text[1:-1]
    try:
        box = parse_mailbox(text, smtputf8=True)
    except AddressError:
        return text.casefold()
    return f"{box.local.casefold()}@{box.domain.lower()}"


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A forward- or reverse-path address as RFC 5321 (and RFC 6531 with SMTPUTF8) allows it.

    ``domain`` is the ASCII form (IDNA 2008) or an address literal such as ``[192.0.2.1]``;
    ``utf8`` is True when the local part holds non-ASCII characters, which only a next hop
    that offers SMTPUTF8 can take (a Unicode *domain* needs no SMTPUTF8: its A-label form is
    sent)."""

    local: str
    domain: str
    utf8: bool

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_mailbox(text: str, *, smtputf8: bool = False) -> Mailbox:
    """Parses ``local@domain`` (without angle brackets) as an SMTP path address.

    The local part is a dot-atom or a quoted string of printable ASCII; with ``smtputf8`` it
    may also hold UTF-8 characters (RFC 6531). Control characters are never allowed, nor lone
    surrogates (``invalid-utf8``: the bytes the client sent were not UTF-8). The domain is a
    host name (converted with IDNA 2008) or an address literal. Raises :class:`AddressError`
    naming why otherwise."""
    if _SURROGATE.search(text):
        raise AddressError(text, "invalid-utf8", "not valid UTF-8")
    if _CONTROL.search(text):
        raise AddressError(text, "control-character", "control character in address")
    if len(text.encode("utf-8")) > MAX_PATH:
        raise AddressError(text, "too-long", f"address longer than {MAX_PATH} octets")
    local, at, domain = text.rpartition("@")
    if not at or not local:
        raise AddressError(text, "no-at", "expected local-part@domain")
    utf8 = not local.isascii()
    if utf8 and not smtputf8:
        raise AddressError(text, "non-ascii", "non-ASCII local part without SMTPUTF8")
    atom, quoted = (_DOT_ATOM_UTF8, _QUOTED_UTF8) if utf8 else (_DOT_ATOM, _QUOTED)
    if not (atom.match(local) or quoted.match(local)):
        raise AddressError(text, "bad-local-part", "invalid local part")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError(text, "too-long", f"local part longer than {MAX_LOCAL_PART} octets")
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if literal[:5].lower() == "ipv6:":
            literal = literal[5:]
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            raise AddressError(text, "bad-domain", "invalid address literal") from None
        return Mailbox(local, domain, utf8)
    if not domain.isascii() and not smtputf8:
        # A Unicode domain is fine in either mode (its A-label form is what goes on the wire),
        # but a client that did not announce SMTPUTF8 must not send raw UTF-8 at all.
        raise AddressError(text, "non-ascii", "non-ASCII domain without SMTPUTF8")
    ascii_domain = normalize_domain(domain)
    if ascii_domain is None:
        raise AddressError(text, "bad-domain", "invalid domain")
    return Mailbox(local, ascii_domain, utf8)


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, a bare IPv6 address, or a bare host when
    `default_port` is given. The host is returned as written (without brackets); raises
    :class:`AddressError` for a missing host or port, or a port outside 1-65535."""
    stripped = text.strip()
    if not stripped:
        raise AddressError(text, "empty", "expected host:port")
    host, port_text = stripped, None
    if stripped.startswith("["):
        end = stripped.find("]")
        if end < 0:
            raise AddressError(text, "bad-host", "unclosed '['")
        host, rest = stripped[1:end], stripped[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise AddressError(text, "bad-port", "expected ':port' after ']'")
            port_text = rest[1:]
    elif stripped.count(":") == 1:
        host, port_text = stripped.split(":")
    if not host:
        raise AddressError(text, "bad-host", "missing host")
    if port_text is None:
        if default_port is None:
            raise AddressError(text, "bad-port", "needs a port (host:port)")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AddressError(text, "bad-port", f"bad port {port_text!r}")
    return host, int(port_text)
