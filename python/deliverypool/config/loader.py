"""Reading the TOML file into a `RelayConfig`, with every problem as a `ConfigError`."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deliverypool.config.errors import ConfigError, from_validation_error
from deliverypool.config.model import RelayConfig, SpoolConfig
from deliverypool.config.dkim import model_context  # after model.py, which imports it while it initialises

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["from_dict", "load", "loads"]


def from_dict(data: Mapping[str, Any], *, base: Path | None = None) -> RelayConfig:
    """Builds and validates a configuration from parsed TOML (or an equivalent dict). A
    relative spool directory is taken relative to `base` (the configuration file's folder).
    Raises `ConfigError` listing every problem found."""
    try:
        # The folder relative key files are read from (config/dkim.py).
        config = RelayConfig.model_validate(data, context=model_context(base))
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    directory = config.spool.directory
    if base is not None and not directory.is_absolute():
        config = config.model_copy(update={"spool": SpoolConfig(directory=base / directory)})
    return config


def loads(text: str, *, base: Path | None = None) -> RelayConfig:
    """Parses and validates the text of a configuration file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", f"not valid TOML: {exc}") from None
    return from_dict(data, base=base)


def load(path: str | Path) -> RelayConfig:
    """Reads and validates a relay configuration file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(file), "not UTF-8 text") from None
    return loads(text, base=file.resolve().parent)
