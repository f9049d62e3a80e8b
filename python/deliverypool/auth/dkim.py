"""DKIM at acceptance: the relay's own signatures, and the check of the ones clients put on.

**Signing** (`DkimSigner`): once per message, at acceptance, before it is spooled, so that
every retry and every pool sends the same bytes. The key is chosen by the header From's domain
(the domain DMARC aligns with): the keys configured for that domain, else for its closest parent
whose keys have ``subdomains = true``; a key bound to a tenant (``tenant``, or by default the
tenant whose ``domains`` hold its domain) signs only that tenant's mail, so that no customer
gets another's signature by writing its From. All the keys of the domain sign (RSA and Ed25519:
dual signing). The signing itself is the Rust core's (`deliverypool.dkim_sign`: the body hashed
in one pass over the message's bytes, the GIL released) on a thread of its own, off the event
loop. A message that cannot be signed correctly is sent unsigned with a reason (`UNSIGNED`),
never refused and never lost.

**Checking** (`DkimVerifier`): the DKIM-Signature fields a message arrives with are checked
(keys through the resolver and its cache, `lookup/txt.py`), each with a result in RFC 8601's
words and a reason; a broken signature is reported, never repaired or removed.

The keys are swapped whole by `DkimSigner.reload` (SIGHUP: the configuration file read again);
a configuration that cannot be read keeps the keys in use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from deliverypool._core import DKIM_SIGN_PROBLEMS, DkimKey, DkimVerdict, dkim_key_queries, dkim_sign, dkim_verify, header_block
from deliverypool.config import RelayConfig
from deliverypool.lookup.resolver import Resolver
from deliverypool.lookup.txt import TxtLookup
from deliverypool.mail.address import normalize_domain
from deliverypool.routing.tenants import Tenants

__all__ = ["UNSIGNED", "DkimCheck", "DkimOutcome", "DkimSignature", "DkimSigner", "DkimVerifier", "KeyRing"]

log = logging.getLogger("deliverypool.dkim")

# Why a message went unsigned: the Rust signer's problems, then the relay's own. A closed set
# (metric labels).
UNSIGNED: Final[tuple[str, ...]] = (
    *DKIM_SIGN_PROBLEMS,
    "no-key",  # no key for the From domain (or its parents with subdomains = true)
    "other-tenant",  # the domain's keys are another tenant's
    "error",  # an unexpected failure (logged); the message is sent as it came
)


@dataclass(frozen=True, slots=True)
class DkimSignature:
    """One signature the relay put on."""

    domain: str
    selector: str
    algorithm: str


@dataclass(frozen=True, slots=True)
class DkimCheck:
    """One signature a message arrived with, checked: ``result`` in RFC 8601's words
    (`DKIM_RESULTS`), ``reason`` one of `DKIM_REASONS` or None for a plain pass."""

    domain: str
    selector: str
    algorithm: str
    result: str
    reason: str | None = None

    @classmethod
    def of(cls, verdict: DkimVerdict) -> DkimCheck:
        return cls(verdict.domain, verdict.selector, verdict.algorithm, verdict.result, verdict.reason)


@dataclass(frozen=True, slots=True)
class DkimOutcome:
    """DKIM for one message: the relay's signatures (``signed``) or why there are none
    (``unsigned``, one of `UNSIGNED`; None when signed or when no key is configured at all), and
    the checks of the signatures it arrived with (``checks``)."""

    signed: tuple[DkimSignature, ...] = ()
    unsigned: str | None = None
    checks: tuple[DkimCheck, ...] = ()


class KeyRing:
    """The signing keys of one configuration by domain, each with the tenant it is bound to
    (None: any client's mail)."""

    def __init__(self, config: RelayConfig) -> None:
        dkim = config.dkim
        tenants = Tenants(config.tenants)
        self.by_domain: dict[str, list[tuple[DkimKey, str | None, bool]]] = {}
        for key in dkim.keys:
            owner = key.tenant if key.tenant is not None else tenants.owner_of(key.domain)
            self.by_domain.setdefault(key.domain, []).append((key.signing_key(dkim), owner, key.subdomains))
        self.count = len(dkim.keys)

    def __bool__(self) -> bool:
        return self.count > 0

    def keys_for(self, domain: str, tenant: str | None) -> tuple[list[DkimKey], str | None]:
        """The keys that sign mail from `domain` (ASCII, lowercased) of `tenant`, or why none do."""
        labels = domain.split(".")
        for i in range(len(labels) - 1):
            entries = self.by_domain.get(".".join(labels[i:]))
            if entries is None:
                continue
            entries = [e for e in entries if i == 0 or e[2]]
            if not entries:
                continue
            keys = [key for key, owner, _ in entries if owner is None or owner == tenant]
            return (keys, None) if keys else ([], "other-tenant")
        return [], "no-key"


@functools.lru_cache(maxsize=4096)
def _ascii_domain(domain: str) -> str | None:
    return normalize_domain(domain)


class DkimSigner:
    """Signs messages with the keys of the configuration (`KeyRing`), on a thread of its own."""

    def __init__(self, config: RelayConfig, *, executor: concurrent.futures.Executor | None = None) -> None:
        self.keys = KeyRing(config)
        self._executor = executor
        self._own_executor = executor is None
        self.clock = time.time

    def _pool(self) -> concurrent.futures.Executor:
        if self._executor is None:
            # Signing holds no GIL: a thread per core of this worker is enough to keep it busy.
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="deliverypool-dkim")
        return self._executor

    def reload(self, config: RelayConfig) -> None:
        """Uses the keys of `config` from now on (each was read and checked when it loaded)."""
        self.keys = KeyRing(config)

    def choose(self, from_domain: str | None, tenant: str | None) -> tuple[list[DkimKey], str | None]:
        """The keys for a message whose header From is in `from_domain`, or why there are none."""
        if not from_domain:
            return [], "no-from"
        domain = _ascii_domain(from_domain)
        if domain is None:
            return [], "no-key"
        return self.keys.keys_for(domain, tenant)

    def signatures(self, content: bytes, keys: Sequence[DkimKey]) -> tuple[bytes, DkimOutcome]:
        """The DKIM-Signature fields for `content` (empty when unsigned) and what was done, on
        the calling thread (the milter's, or the executor's)."""
        signing = dkim_sign(content, keys, int(self.clock()))
        if signing.problem is not None:
            return b"", DkimOutcome(unsigned=signing.problem)
        return signing.header, DkimOutcome(signed=tuple(DkimSignature(key.domain, key.selector, key.algorithm) for key in keys))

    def sign_now(self, content: bytes, keys: Sequence[DkimKey]) -> tuple[bytes, DkimOutcome]:
        """Signs `content` with `keys` on the calling thread: the signed message, and what was done."""
        header, outcome = self.signatures(content, keys)
        return (b"".join((header, content)) if header else content), outcome

    async def sign(self, content: bytes, *, from_domain: str | None, tenant: str | None) -> tuple[bytes, DkimOutcome | None]:
        """The message to spool and what DKIM did; None for the outcome when no key is
        configured at all. Never raises: a failure sends the message unsigned."""
        if not self.keys:
            return content, None
        keys, why = self.choose(from_domain, tenant)
        if not keys:
            return content, DkimOutcome(unsigned=why)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool(), self.sign_now, content, keys)
        except Exception:
            log.exception("DKIM signing failed for a message from domain %s (sent unsigned)", from_domain)
            return content, DkimOutcome(unsigned="error")

    def close(self) -> None:
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


_SIGNATURE_FIELD: Final = re.compile(rb"(?im)^dkim-signature[ \t]*:")
_FIELD_START: Final = re.compile(rb"(?=^DKIM-Signature: )", re.M)


def field_values(header: bytes) -> list[str]:
    """The values of the DKIM-Signature fields in `header` (what `signatures` made), folded
    with LF as a milter hands them to the MTA."""
    values = []
    for field in _FIELD_START.split(header):
        if field:
            value = field[len(b"DKIM-Signature: ") :].rstrip(b"\r\n").replace(b"\r\n", b"\n")
            values.append(value.decode("ascii"))
    return values


def has_signature(content: bytes) -> bool:
    """Whether the header block holds a DKIM-Signature field (cheap: no parse). The name in
    any case somewhere in the block comes first: a lower-case copy and a substring search cost
    a fifth of the case-insensitive search over the block (14,800 instructions a message in
    callgrind), and most mail that passes has no signature."""
    start, length = header_block(content)
    if b"dkim-signature" not in content[start : start + length].lower():
        return False
    return _SIGNATURE_FIELD.search(content, start, start + length) is not None


class DkimVerifier:
    """Checks the signatures a message arrives with; the keys through `resolver` and its cache."""

    def __init__(
        self, resolver: Resolver | Callable[[], Resolver], *, max_signatures: int = 8, executor: concurrent.futures.Executor | None = None
    ) -> None:
        # A factory is called at the first message with a signature (a relay that needs no
        # other DNS makes no resolver until then).
        self._resolver = resolver
        self._txt: TxtLookup | None = None
        self.max_signatures = max_signatures
        self.executor = executor
        self.clock = time.time

    @property
    def txt(self) -> TxtLookup:
        if self._txt is None:
            resolver = self._resolver if isinstance(self._resolver, Resolver) else self._resolver()
            self._txt = TxtLookup(resolver)
        return self._txt

    async def keys(self, names: Sequence[str]) -> dict[str, tuple[bytes, ...] | None]:
        """Each name's key records: a tuple (empty: there are none), or None (lookup failed)."""
        answers = await asyncio.gather(*(self.txt.records(name) for name in names))
        found: dict[str, tuple[bytes, ...] | None] = {}
        for name, answer in zip(names, answers):
            found[name] = answer.records if answer.outcome == "positive" else () if answer.outcome == "negative" else None
        return found

    async def verify(self, content: bytes) -> tuple[DkimCheck, ...]:
        """The checks of every signature of `content` (none: an empty tuple). Never raises: a
        failure of the check itself is a temperror of each signature."""
        if not has_signature(content):
            return ()
        try:
            keys: Mapping[str, tuple[bytes, ...] | None] = await self.keys(dkim_key_queries(content, self.max_signatures))
            loop = asyncio.get_running_loop()
            verdicts = await loop.run_in_executor(self.executor, dkim_verify, content, keys, int(self.clock()), self.max_signatures)
        except Exception:
            log.exception("DKIM check failed")
            return (DkimCheck("", "", "", "temperror", None),)
        return tuple(DkimCheck.of(v) for v in verdicts)
