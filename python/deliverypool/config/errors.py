"""`ConfigError` and the translation of pydantic's errors into it.

Every problem is reported as ``KEY: PROBLEM``, with the key written the way it is written in
the TOML file (``pools.high-risk.source_addresses[1]``; a key that is not a bare TOML key is
quoted: ``policy.tenants."acme.corp"``), and the problem in the words of the documentation rather
than pydantic's (``must be an integer, got a string``, not ``Input should be a valid
integer``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from pydantic import ValidationError
from pydantic_core import ErrorDetails

__all__ = ["ConfigError", "Invalid", "dotted_key", "from_validation_error", "toml_kind"]


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range.

    ``key`` and ``problem`` describe the first problem found; the message starts with
    ``key: problem``. When the file has several problems, ``errors`` lists every one as
    ``(key, problem)`` pairs, in file order, and the message has one ``key: problem`` line each."""

    def __init__(self, key: str, problem: str, *, more: Iterable[tuple[str, str]] = ()) -> None:
        self.key = key
        self.problem = problem
        self.errors: tuple[tuple[str, str], ...] = ((key, problem), *more)
        super().__init__("\n".join(f"{k}: {p}" for k, p in self.errors))


class Invalid(ValueError):
    """Raised by a validator for a problem at a key *below* the value it validates: a rule
    across fields of a table names the field at fault, e.g. ``Invalid("required", "smarthost")``
    raised while validating ``pools.normal`` reports ``pools.normal.smarthost: required``."""

    def __init__(self, problem: str, *at: str | int) -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = at


_KINDS: Final[Mapping[type, str]] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    tuple: "an array",
    dict: "a table",
}
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+\Z")

# The two keys a file must have, with what they are for.
_REQUIRED_HINTS: Final[Mapping[str, str]] = {
    "pools": "define at least [pools.normal] and [pools.high-risk]",
    "source_addresses": "the addresses this pool sends from",
}


# pydantic error type -> (words, the bound's name in the error's context).
_BOUNDS: Final[Mapping[str, tuple[str, str]]] = {
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("greater than", "gt"),
    "less_than_equal": ("at most", "le"),
    "less_than": ("below", "lt"),
}
# pydantic error type -> what the key must be.
_TYPES: Final[Mapping[str, str]] = {
    "int_type": "an integer",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "list_type": "an array",
    "tuple_type": "an array",
}


def toml_kind(value: object) -> str:
    """The TOML name of a value's type, with an article: ``a string``, ``an array``..."""
    kind = _KINDS.get(type(value))
    if kind is None:
        return "a table" if isinstance(value, Mapping) else type(value).__name__
    return kind


def dotted_key(loc: Sequence[str | int]) -> str:
    """``("pools", "high-risk", "source_addresses", 1)`` -> ``pools.high-risk.source_addresses[1]``."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            name = part if _BARE_KEY.match(part) else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            key += f".{name}" if key else name
    return key or "<top>"


def _number(value: object) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return str(value)


def _problem(error: ErrorDetails) -> str:
    kind, ctx, value = error["type"], error.get("ctx", {}), error["input"]
    got = toml_kind(value)
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "missing":
        hint = _REQUIRED_HINTS.get(str(error["loc"][-1])) if error["loc"] else None
        return f"required: {hint}" if hint else "required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, got {value!r}"
    if kind == "too_short":
        return f"must be a non-empty {'table' if isinstance(value, Mapping) else 'array'}"
    if kind in _BOUNDS:
        words, name = _BOUNDS[kind]
        return f"must be {words} {_number(ctx[name])}, got {_number(value)}"
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}, got {_number(value) if kind == 'finite_number' else got}"
    return error["msg"]


def from_validation_error(exc: ValidationError) -> ConfigError:
    """One `ConfigError` for all of pydantic's errors, in the order pydantic found them."""
    errors = exc.errors()
    found: list[tuple[str, str]] = []
    for error in errors:
        loc = tuple(error["loc"])
        # pydantic counts only the items that passed: an array whose every item is wrong is
        # "too short" as well, which says nothing the items' own errors do not.
        if error["type"] == "too_short" and any(len(other["loc"]) > len(loc) and tuple(other["loc"][: len(loc)]) == loc for other in errors):
            continue
        invalid = error.get("ctx", {}).get("error")
        if isinstance(invalid, Invalid):
            loc += invalid.at
        entry = (dotted_key(loc), _problem(error))
        if entry not in found:
            found.append(entry)
    first, *rest = found
    return ConfigError(*first, more=rest)
