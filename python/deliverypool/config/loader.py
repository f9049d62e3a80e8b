"""Reading the TOML file into a `RelayConfig`, with every problem as a `ConfigError`."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from deliverypool.config.errors import ConfigError, from_validation_error
from deliverypool.config.model import RelayConfig
from deliverypool.config.dkim import model_context  # after model.py, which imports it while it initialises

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["Command", "from_dict", "load", "loads"]

# Who reads the file: `deliverypool relay` (and everything else), or `deliverypool milter`.
Command = Literal["relay", "milter"]

T = TypeVar("T", bound=BaseModel)


def from_dict(data: Mapping[str, Any], *, base: Path | None = None, command: Command = "relay") -> RelayConfig:
    """Builds and validates a configuration from parsed TOML (or an equivalent dict). A
    relative spool directory is taken relative to `base` (the configuration file's folder).
    `command` is who reads it: for ``"milter"`` the pools need no source addresses (Postfix
    binds them). Raises `ConfigError` listing every problem found."""
    try:
        # The folder relative key files are read from (config/dkim.py), and who reads the file.
        config = RelayConfig.model_validate(data, context={"command": command, **model_context(base)})
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    return config if base is None else _relative_to(config, base)


def _relative_to(config: RelayConfig, base: Path) -> RelayConfig:
    """The configuration with its relative paths taken from `base`: the spool directory, the
    admin listener's token file, certificates and client CA, and the webhook's secret file."""

    def rebased(table: T, *keys: str) -> T:
        update = {}
        for key in keys:
            path = getattr(table, key)
            if path is not None and not path.is_absolute():
                update[key] = base / path
        return table.model_copy(update=update) if update else table

    return config.model_copy(
        update={
            "spool": rebased(config.spool, "directory"),
            "admin": rebased(config.admin, "token_file", "tls_certificate", "tls_key", "client_ca"),
            "alerts": rebased(config.alerts, "secret_file"),
        }
    )


def loads(text: str, *, base: Path | None = None, command: Command = "relay") -> RelayConfig:
    """Parses and validates the text of a configuration file (for `command`, see `from_dict`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", f"not valid TOML: {exc}") from None
    return from_dict(data, base=base, command=command)


def load(path: str | Path, *, command: Command = "relay") -> RelayConfig:
    """Reads and validates a configuration file (for `command`, see `from_dict`)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(file), "not UTF-8 text") from None
    return loads(text, base=file.resolve().parent, command=command)
