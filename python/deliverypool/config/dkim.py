"""The configuration of DKIM signing and verification: ``[dkim]`` and its ``[[dkim.keys]]``.

Each key's file is read and checked when the configuration is loaded (at start, and again on
SIGHUP): unreadable, not a PEM private key, encrypted, the wrong type, too short, or another
algorithm than ``algorithm`` says are refused with one line naming the key, for example
``dkim.keys[0].key_file: too short: a 1024-bit RSA key (at least 2048 bits)``. A relative
``key_file`` is relative to the configuration file (the loader passes its folder as the
validation context's ``base``).

These models use the scalar types of :mod:`deliverypool.config.model`; `RelayConfig` names them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Optional

from pydantic import Field, PlainValidator, PrivateAttr, ValidationInfo, WithJsonSchema, field_validator, model_validator

from deliverypool._core import DkimKey, DkimKeyError
from deliverypool.config.errors import Invalid
from deliverypool.config.model import Bool, FilePath, HeaderName, Int, Text, _Table
from deliverypool.config.observe import DomainName
from deliverypool.config.units import Duration

__all__ = ["DEFAULT_HEADERS", "DkimConfig", "DkimKeyConfig", "KeyFileError", "read_private_key"]

# The fields signed by default: RFC 6376 §5.4.1's list, with the list fields (RFC 2369, RFC
# 8058: List-Unsubscribe-Post must be signed for one-click unsubscribe) and the MIME fields. A
# field is signed once per instance present; From also once more (over-signed).
DEFAULT_HEADERS: Final = (
    "From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID", "In-Reply-To", "References",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-ID", "Content-Description",
    "Resent-Date", "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc", "Resent-Message-ID",
    "List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Subscribe", "List-Post",
    "List-Owner", "List-Archive", "Sender", "Feedback-ID",
)
# RSA keys ring signs with (bits).
RSA_MIN_BITS: Final = 2048
RSA_MAX_BITS: Final = 4096

SELECTOR_PATTERN: Final = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*$"
_SELECTOR: Final = re.compile(SELECTOR_PATTERN)
Algorithm = Literal["rsa-sha256", "ed25519-sha256"]


def _selector(value: object) -> str:
    if not isinstance(value, str) or not _SELECTOR.fullmatch(value) or len(value) > 63:
        raise ValueError(f"not a selector (DNS labels of letters, digits, '-' and '_'): {value!r}")
    return value.lower()


Selector = Annotated[str, PlainValidator(_selector), WithJsonSchema({"type": "string", "pattern": SELECTOR_PATTERN})]


class KeyFileError(ValueError):
    """A key file that cannot be used; the message is the problem, in the README's words."""


def read_private_key(path: Path) -> tuple[str, bytes, int]:
    """The algorithm (``rsa-sha256``, ``ed25519-sha256``), the PKCS#8 DER and the size in bits
    of the PEM private key in `path`. Raises `KeyFileError`."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{str(path)!r} is encrypted: give the key without a passphrase (file permissions protect it)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{str(path)!r} is not a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        bits = key.key_size
        if bits < RSA_MIN_BITS:
            raise KeyFileError(f"too short: a {bits}-bit RSA key (at least {RSA_MIN_BITS} bits)")
        if bits > RSA_MAX_BITS:
            raise KeyFileError(f"a {bits}-bit RSA key: at most {RSA_MAX_BITS} bits are supported")
        algorithm = "rsa-sha256"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        bits, algorithm = 256, "ed25519-sha256"
    else:
        kinds = ((ec.EllipticCurvePrivateKey, "an elliptic-curve (EC)"), (ed448.Ed448PrivateKey, "an Ed448"))
        kind = next((name for cls, name in kinds if isinstance(key, cls)), "another kind of")
        raise KeyFileError(f"wrong type: {kind} key (DKIM signs with RSA or Ed25519)")
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return algorithm, der, bits


class DkimKeyConfig(_Table):
    """One signing key: the domain it signs for (d=), its selector (s=), its private key file."""

    domain: DomainName = Field(description="The signing domain (d=): mail whose header From is in this domain is signed with this key.")
    selector: Selector = Field(description="The selector (s=): the public key is published at SELECTOR._domainkey.DOMAIN.")
    key_file: FilePath = Field(
        description=(
            "PEM private key (RSA 2048 to 4096 bits, or Ed25519), unencrypted; relative to the configuration file. "
            "Read and checked at start and on SIGHUP. deliverypool dkim keygen writes one."
        )
    )
    algorithm: Optional[Algorithm] = Field(
        None, description='"rsa-sha256" or "ed25519-sha256": checked against the key file; absent: the file\'s.'
    )
    tenant: Optional[Text] = Field(
        None,
        description=(
            "Only this tenant's mail is signed with the key. Default: the tenant whose domains hold the domain, if one "
            "does (no other tenant's mail gets its signature); else any client's mail."
        ),
    )
    subdomains: Bool = Field(False, description="Also sign mail from subdomains of domain with d=domain (relaxed DMARC alignment).")
    headers: Optional[tuple[HeaderName, ...]] = Field(None, description="The fields to sign (default: dkim.headers). From always is.")
    oversign: Optional[tuple[HeaderName, ...]] = Field(None, description="Fields signed once more than present (default: dkim.oversign).")
    expire: Optional[Duration] = Field(None, description="x=: signatures expire this long after signing (default: dkim.expire).")

    _der: bytes = PrivateAttr(default=b"")
    _algorithm: str = PrivateAttr(default="")
    _bits: int = PrivateAttr(default=0)
    _path: Path = PrivateAttr(default=Path())

    @model_validator(mode="after")
    def _read_key(self, info: ValidationInfo) -> DkimKeyConfig:
        base = (info.context or {}).get("base") if isinstance(info.context, dict) else None
        path = self.key_file if self.key_file.is_absolute() or base is None else Path(base) / self.key_file
        try:
            algorithm, der, bits = read_private_key(path)
        except KeyFileError as exc:
            raise Invalid(str(exc), "key_file") from None
        if self.algorithm is not None and self.algorithm != algorithm:
            raise Invalid(f"the key file holds an {algorithm} key", "algorithm")
        self._der, self._algorithm, self._bits, self._path = der, algorithm, bits, path
        return self

    @property
    def path(self) -> Path:
        """The key file as read (relative paths resolved)."""
        return self._path

    @property
    def key_algorithm(self) -> str:
        return self._algorithm

    @property
    def bits(self) -> int:
        return self._bits

    def signing_key(self, defaults: DkimConfig) -> DkimKey:
        """The Rust key, with `defaults` for what the key leaves out. Raises DkimKeyError."""
        return DkimKey(
            self._der,
            algorithm=self._algorithm,
            domain=self.domain,
            selector=self.selector,
            headers=list(self.headers if self.headers is not None else defaults.headers),
            oversign=list(self.oversign if self.oversign is not None else defaults.oversign),
            canonicalization=defaults.canonicalization,
            expire=_seconds(self.expire if self.expire is not None else defaults.expire),
        )


def _seconds(duration: float | None) -> int | None:
    return None if duration is None else max(1, round(duration))


class DkimConfig(_Table):
    """DKIM: the keys mail is signed with at acceptance, and the check of signatures clients
    already put on (docs/guide/dkim.md)."""

    keys: tuple[DkimKeyConfig, ...] = Field(
        (), description="The signing keys. Several for one domain sign it several times (RSA and Ed25519, or two selectors while rotating)."
    )
    headers: tuple[HeaderName, ...] = Field(
        DEFAULT_HEADERS, description="The fields signed, each instance present (RFC 6376 §5.4.1's list and the list and MIME fields by default)."
    )
    oversign: tuple[HeaderName, ...] = Field(("From",), description="Fields signed once more than present, so that none can be added. From always is.")
    canonicalization: Literal["relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple"] = Field(
        "relaxed/relaxed", description="c=: header/body canonicalization."
    )
    expire: Optional[Duration] = Field(None, description="x=: signatures expire this long after signing; absent: no x=.")
    verify: Bool = Field(
        True, description="Check the DKIM signatures a message arrives with (keys looked up through [dns]); the results go with the decision and the event."
    )
    max_signatures: Int = Field(8, ge=1, le=50, description="Signatures checked per message; any more are reported as policy (too-many-signatures).")

    @field_validator("keys")
    @classmethod
    def _once_each(cls, keys: tuple[DkimKeyConfig, ...]) -> tuple[DkimKeyConfig, ...]:
        seen: set[tuple[str, str]] = set()
        for i, key in enumerate(keys):
            if (key.domain, key.selector) in seen:
                raise Invalid(f"{key.selector}._domainkey.{key.domain} is configured twice", i, "selector")
            seen.add((key.domain, key.selector))
        return keys

    @model_validator(mode="after")
    def _keys_usable(self) -> DkimConfig:
        for i, key in enumerate(self.keys):
            try:
                key.signing_key(self)
            except DkimKeyError as exc:
                raise Invalid(str(exc), "keys", i, "key_file") from None
        return self


def model_context(base: Path | None) -> dict[str, Any]:
    """The validation context of a configuration loaded from a file in folder `base`."""
    return {"base": base} if base is not None else {}

