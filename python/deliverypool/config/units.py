"""Durations and sizes as the configuration file writes them.

A **duration** is a number of seconds or a string: a number (decimals allowed) and a unit,
``ms``, ``s``, ``m``, ``h``, ``d`` or ``w`` (``"500ms"``, ``"90s"``, ``"1.5h"``, ``"5d"``,
``"1w"``); no unit means seconds. Durations are longer than zero, except a **delay**, where
zero (``0``, ``"0s"``) means none.

A **size** is a number of bytes or a string: a whole number and a unit ``B``, ``k``, ``M`` or
``G``, any case, optionally with ``i`` and ``B`` (``"512k"``, ``"25MB"``, ``"25MiB"``). The
units are powers of 1024 whichever way they are written: ``25MB`` is 25 × 1024² =
26,214,400 bytes. Sizes are larger than zero.

`Duration` and `Size` are the annotated types the models use: they accept both forms, and
their JSON Schema says so.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Final

from pydantic import PlainValidator, WithJsonSchema

from deliverypool.config.errors import toml_kind

__all__ = [
    "DURATION_PATTERN",
    "SIZE_PATTERN",
    "Delay",
    "Duration",
    "Size",
    "format_duration",
    "format_size",
    "parse_delay",
    "parse_duration",
    "parse_size",
]

# Written for JSON Schema (ECMA-262) as well as Python, hence no inline flags.
DURATION_PATTERN: Final = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$"
SIZE_PATTERN: Final = r"^\s*(\d+)\s*([kKmMgG][iI]?[bB]?|[bB])?\s*$"

_DURATION: Final = re.compile(DURATION_PATTERN, re.ASCII)  # \d: ASCII digits only, as in JSON Schema
_SIZE: Final = re.compile(SIZE_PATTERN, re.ASCII)
# Largest first: format_duration writes the largest unit that is exact.
DURATION_UNITS: Final = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
SIZE_UNITS: Final = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like ``"90s"``; raises ValueError naming
    the problem for anything else, and for durations that are not longer than zero."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if not match:
            raise ValueError(f"not a duration (like 500ms, 90s, 15m, 4h, 5d, 1w): {value!r}")
        seconds = float(match[1]) * DURATION_UNITS[match[2] or "s"]
    elif _is_number(value):
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except OverflowError:
            seconds = math.inf
    else:
        raise ValueError(f'must be a number of seconds or a string like "90s", got {toml_kind(value)}')
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {value!r}")
    if seconds <= 0:
        raise ValueError(f"must be longer than zero, got {value!r}")
    return seconds


def parse_delay(value: object) -> float:
    """A duration, or zero (``0``, ``"0s"``, ``"0ms"``...) for none."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match and float(match[1]) == 0:
            return 0.0
    elif _is_number(value) and value == 0:
        return 0.0
    return parse_duration(value)


def format_duration(seconds: float) -> str:
    """The shortest string `parse_duration` reads back as exactly `seconds` (> 0): the largest
    unit that divides it (``"5d"``, ``"90s"``, ``"500ms"``), else decimal seconds."""
    for unit, scale in DURATION_UNITS.items():
        # Exact as parse_duration computes it: 0.003 / 0.001 is not 3, but 3 * 0.001 is 0.003.
        count = round(seconds / scale)
        if count >= 1 and count * scale == seconds:
            return f"{count}{unit}"
    # repr is the shortest text that reads back as the same float; Decimal spells it without
    # an exponent, which the duration syntax has no room for.
    return f"{Decimal(repr(seconds)):f}s"


def parse_size(value: object) -> int:
    """Bytes from a whole number of bytes or a string like ``"25MB"`` (k, M and G are powers of
    1024); raises ValueError naming the problem for anything else, and for zero."""
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if not match:
            raise ValueError(f"not a size (like 25MB or 512k): {value!r}")
        size = int(match[1]) * SIZE_UNITS[(match[2] or "b")[0].lower()]
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        raise ValueError(f'must be a whole number of bytes or a string like "25MB", got {toml_kind(value)}')
    if size <= 0:
        raise ValueError(f"must be a positive size, got {value!r}")
    return size


def format_size(size: int) -> str:
    """The string `parse_size` reads back as `size` (> 0), in the largest exact unit, spelt
    the unambiguous way: ``"25MiB"``, ``"512KiB"``, ``"1000B"``."""
    for unit in ("g", "m", "k"):
        if size % SIZE_UNITS[unit] == 0:
            return f"{size // SIZE_UNITS[unit]}{unit.upper()}iB"
    return f"{size}B"


def _number_or_text(number: str, meaning: str, pattern: str, text_meaning: str, minimum: str = "exclusiveMinimum") -> WithJsonSchema:
    """The JSON Schema of a value written either as a plain number (`number` is its JSON type)
    or as a string matching `pattern`."""
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": number, minimum: 0, "description": meaning},
                {"type": "string", "pattern": pattern, "description": text_meaning},
            ]
        }
    )


Duration = Annotated[
    float,
    PlainValidator(parse_duration),
    _number_or_text("number", "seconds", DURATION_PATTERN, "a number and a unit: ms, s, m, h, d or w"),
]
Delay = Annotated[
    float,
    PlainValidator(parse_delay),
    _number_or_text("number", "seconds (0: none)", DURATION_PATTERN, "a number and a unit: ms, s, m, h, d or w", "minimum"),
]
Size = Annotated[
    int,
    PlainValidator(parse_size),
    _number_or_text("integer", "bytes", SIZE_PATTERN, "a whole number and a unit: B, k, M or G (powers of 1024)"),
]
