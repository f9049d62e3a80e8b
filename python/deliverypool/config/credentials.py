"""The secrets the configuration names by path or environment variable: the admin API's bearer
tokens (``[admin] token_file``, ``token_env``), its TLS certificate and client CA, and the alert
webhook's signing secrets (``[alerts] secret_file``).

They are read at start, not by the models: the documented example names files that exist only
on the operator's machine, and a token file is read again whenever it changes (rotation without
a restart). Every problem is a `ConfigError` naming the key; a token never appears in a message
or a log line, and the server keeps only the tokens' SHA-256 digests.

Token file (and ``token_env``) format: one ``NAME:TOKEN`` entry a line (``token_env``: entries
separated by commas or newlines), ``NAME:TOKEN:read`` for a token that may only read; blank
lines and ``#`` comments are ignored. NAME is what the audit log says (1-63 letters, digits,
``_.@-``); TOKEN is 32-512 characters of the base64/base64url/hex alphabets, e.g.
``python -c "import secrets; print(secrets.token_urlsafe(32))"``.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import logging
import os
import re
import secrets
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from deliverypool.config.errors import ConfigError
from deliverypool.config.observe import AdminConfig, AlertsConfig

if TYPE_CHECKING:
    from deliverypool.config.model import RelayConfig

__all__ = [
    "CLIENT_TOKEN_ENV",
    "ROLES",
    "WEBHOOK_SECRET_FILE",
    "Token",
    "TokenStore",
    "check",
    "client_token",
    "new_token",
    "new_webhook_secret",
    "parse_tokens",
    "parse_webhook_secrets",
    "server_ssl_context",
    "webhook_secrets",
]

log = logging.getLogger("deliverypool.admin")

# The variable `deliverypool monitor` and `deliverypool senders --admin` take their token from
# (TOKEN or NAME:TOKEN), before the configuration's token_env and token_file.
CLIENT_TOKEN_ENV: Final = "DELIVERYPOOL_ADMIN_TOKEN"
ROLES: Final = ("admin", "read")
TOKEN_NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}"
_TOKEN_NAME: Final = re.compile(TOKEN_NAME_PATTERN)
_TOKEN: Final = re.compile(r"[A-Za-z0-9._~+/=-]{32,512}")
_SEPARATORS: Final = re.compile(r"[,\n]")
# The webhook secret the relay generates when [alerts] secret_file is not set (in the spool).
WEBHOOK_SECRET_FILE: Final = "webhook-secret"
SECRET_PREFIX: Final = "whsec_"


@dataclass(frozen=True)
class Token:
    """A token the admin API accepts: its name (the audit log's "who"), its role (``admin``
    may change things, ``read`` only reads) and the SHA-256 digest of the token."""

    name: str
    role: str
    digest: bytes


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def new_token() -> str:
    """A fresh token (43 characters of base64url, 256 bits)."""
    return secrets.token_urlsafe(32)


def parse_tokens(text: str, *, separators: re.Pattern[str] | None = None) -> list[tuple[str, str, str]]:
    """``(name, token, role)`` of every entry of a token file's text. Raises ValueError naming
    the line, never quoting any of it (a token may be where a name was expected)."""
    entries: list[tuple[str, str, str]] = []
    names: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for number, line in enumerate((separators or re.compile("\n")).split(text), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"entry {number}" if separators is not None else f"line {number}"
        parts = line.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"{where}: expected NAME:TOKEN or NAME:TOKEN:read")
        name, token = parts[0].strip(), parts[1].strip()
        role = parts[2].strip() if len(parts) == 3 else "admin"
        if not _TOKEN_NAME.fullmatch(name):
            raise ValueError(f"{where}: the name must be 1-63 letters, digits, '_', '.', '@' or '-'")
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"{where}: the token must be 32-512 characters of A-Z a-z 0-9 . _ ~ + / = -")
        if role not in ROLES:
            raise ValueError(f"{where}: the third field must be 'read' or absent")
        if name in names:
            raise ValueError(f"{where}: the name is also on {'entry' if separators is not None else 'line'} {names[name]}")
        if token in tokens:
            raise ValueError(f"{where}: the token is also on {'entry' if separators is not None else 'line'} {tokens[token]}")
        names[name], tokens[token] = number, number
        entries.append((name, token, role))
    return entries


def _read_file(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path} is not UTF-8 text") from None


def _file_entries(admin: AdminConfig) -> list[tuple[str, str, str]]:
    if admin.token_file is None:
        return []
    try:
        return parse_tokens(_read_file(admin.token_file, "admin.token_file"))
    except ValueError as exc:
        raise ConfigError("admin.token_file", f"{admin.token_file}: {exc}") from None


def _env_entries(admin: AdminConfig, environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    if admin.token_env is None:
        return []
    value = environ.get(admin.token_env)
    if not value or not value.strip():
        raise ConfigError("admin.token_env", f"the environment variable {admin.token_env} is not set")
    try:
        return parse_tokens(value, separators=_SEPARATORS)
    except ValueError as exc:
        raise ConfigError("admin.token_env", f"{admin.token_env}: {exc}") from None


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TokenStore:
    """The tokens the admin API accepts: token_env's (fixed at start) and token_file's, read
    again when the file changes (its modification time, size or inode): a new token works and a
    removed one stops working at the next request, without a restart. A file that turns bad
    keeps the tokens read before (with an error in the log)."""

    def __init__(self, admin: AdminConfig, environ: Mapping[str, str] = os.environ) -> None:
        self.admin = admin
        self._env = _env_entries(admin, environ)
        self._state = _file_state(admin.token_file) if admin.token_file is not None else None
        self.tokens = self._load(_file_entries(admin))
        self._warn_mode()

    def _load(self, file_entries: list[tuple[str, str, str]]) -> tuple[Token, ...]:
        names = {name for name, _, _ in file_entries}
        for name, _, _ in self._env:
            if name in names:
                raise ConfigError("admin.token_env", "a name of its entries is also a name in admin.token_file")
        return tuple(Token(name, role, digest(token)) for name, token, role in (*file_entries, *self._env))

    def _warn_mode(self) -> None:
        path = self.admin.token_file
        if path is None:
            return
        try:
            mode = path.stat().st_mode
        except OSError:
            return
        if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
            log.warning("admin.token_file: %s can be read or written by other users (mode %04o): chmod 600 it", path, stat.S_IMODE(mode))

    def refresh(self) -> None:
        """Reads token_file again if it changed since it was last read."""
        path = self.admin.token_file
        if path is None:
            return
        state = _file_state(path)
        if state == self._state:
            return
        self._state = state
        try:
            tokens = self._load(_file_entries(self.admin))
        except ConfigError as exc:
            log.error("%s; the tokens read before stay in force", exc)
            return
        if tokens != self.tokens:
            log.warning("admin.token_file: %s changed: %d token(s) now (%s)", path, len(tokens), ", ".join(t.name for t in tokens) or "none")
        self.tokens = tokens
        self._warn_mode()

    def match(self, presented: str) -> Token | None:
        """The token `presented` is, or None. Compares SHA-256 digests in constant time (every
        token is compared, whichever matches)."""
        self.refresh()
        wanted = digest(presented)
        found = None
        for token in self.tokens:
            if hmac.compare_digest(token.digest, wanted):
                found = token
        return found


def client_token(admin: AdminConfig | None, *, name: str | None = None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The token a command-line client sends: ``DELIVERYPOOL_ADMIN_TOKEN`` (TOKEN or
    NAME:TOKEN) when set; else, with a configuration, the entry named `name` (default: the
    first) of its token_env variable or its token_file. None when there is none."""
    value = environ.get(CLIENT_TOKEN_ENV, "").strip()
    if value:
        parts = value.split(":")
        return parts[1].strip() if len(parts) >= 2 else value
    if admin is None:
        return None
    entries: list[tuple[str, str, str]] = []
    if admin.token_env is not None and environ.get(admin.token_env, "").strip():
        entries += _env_entries(admin, environ)
    entries += _file_entries(admin)
    if name is not None:
        for entry_name, token, _ in entries:
            if entry_name == name:
                return token
        key = "admin.token_file" if admin.token_file is not None else "admin.token_env"
        raise ConfigError(key, f"no token named {name!r}")
    return entries[0][1] if entries else None


def server_ssl_context(admin: AdminConfig) -> ssl.SSLContext | None:
    """The listener's TLS context (None without tls_certificate): TLS 1.2 or later, and with
    client_ca, a client certificate signed by it required (CERT_REQUIRED)."""
    if admin.tls_certificate is None or admin.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(admin.tls_certificate, admin.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("admin.tls_certificate", f"cannot load {admin.tls_certificate} with {admin.tls_key}: {_ssl_problem(exc)}") from None
    if admin.client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(admin.client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("admin.client_ca", f"cannot load {admin.client_ca}: {_ssl_problem(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _ssl_problem(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


# --- the webhook's secrets (Standard Webhooks) ------------------------------------------------


def new_webhook_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def parse_webhook_secrets(text: str) -> list[bytes]:
    """The keys of a secret file: one ``whsec_<base64>`` a line (blank lines and ``#``
    comments ignored), each 24 to 64 bytes. Raises ValueError naming the line."""
    keys: list[bytes] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith(SECRET_PREFIX):
            raise ValueError(f"line {number}: expected {SECRET_PREFIX}<base64>")
        try:
            key = base64.b64decode(line[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"line {number}: not base64 after {SECRET_PREFIX}") from None
        if not 24 <= len(key) <= 64:
            raise ValueError(f"line {number}: the key is {len(key)} bytes, expected 24 to 64")
        keys.append(key)
    if not keys:
        raise ValueError(f"no secret in it (expected a {SECRET_PREFIX}<base64> line)")
    return keys


def _generated_secret(path: Path) -> None:
    """Creates `path` with a new secret (mode 0600) unless it exists; two workers starting at
    once end with the same file (written aside, then linked into place)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(new_webhook_secret() + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(aside, path)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
        else:
            log.warning(
                "alerts.secret_file is not set: the webhook's POSTs are signed with a secret generated in %s; "
                "give it to the receiver (docs/operations/admin-api.md)", path,
            )
    finally:
        os.unlink(aside)


def webhook_secrets(alerts: AlertsConfig, spool_root: Path) -> list[bytes]:
    """The keys the webhook signs with: secret_file's, else the one generated in the spool."""
    if alerts.secret_file is not None:
        path, key = alerts.secret_file, "alerts.secret_file"
    else:
        path, key = spool_root / WEBHOOK_SECRET_FILE, "alerts.webhook"
        try:
            _generated_secret(path)
        except OSError as exc:
            raise ConfigError(key, f"cannot create the signing secret {path}: {exc.strerror or exc}") from None
    try:
        return parse_webhook_secrets(_read_file(path, key))
    except ValueError as exc:
        raise ConfigError(key, f"{path}: {exc}") from None


def check(config: RelayConfig, *, admin: bool = True, environ: Mapping[str, str] = os.environ) -> None:
    """What a relay (`admin`: and its admin listener) checks before it listens: the admin
    listener's tokens and certificates, and the webhook's secret file when set. Raises
    `ConfigError` for the first problem."""
    if admin and config.admin.address is not None:
        TokenStore(config.admin, environ)
        server_ssl_context(config.admin)
    alerts = config.alerts
    if alerts.webhook is not None and alerts.secret_file is not None:
        try:
            parse_webhook_secrets(_read_file(alerts.secret_file, "alerts.secret_file"))
        except ValueError as exc:
            raise ConfigError("alerts.secret_file", f"{alerts.secret_file}: {exc}") from None
