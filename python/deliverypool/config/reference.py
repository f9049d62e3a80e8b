"""The configuration reference, generated from the models' JSON Schema (the same schema
``docs/relay.schema.json`` holds), so that the documentation cannot drift from the code.

The documentation site builds its "Configuration reference" page from :func:`markdown` (a
MkDocs hook, ``docs/hooks.py``); ``python -m deliverypool.config.reference`` prints the page.
``tests/test_docs.py`` checks that every key of the schema is on it.

Each TOML table is a section with one row per key: its type, its default and its
description. Tables of named tables (``[pools.NAME]``, ``[tenants.NAME]``) and arrays of tables
(``[[NAME]]``) are written as TOML writes them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deliverypool.config.schema import json_schema

__all__ = ["Key", "keys", "markdown"]

Schema = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Key:
    """One key of the file: the TOML table it sits in (``""`` for the top level), its name,
    and its schema (``$ref`` resolved)."""

    table: str
    name: str
    schema: Schema
    required: bool

    @property
    def path(self) -> str:
        return f"{self.table}.{self.name}" if self.table else self.name


def _resolve(schema: Schema, root: Schema) -> Schema:
    """The schema with a top-level ``$ref`` replaced by its definition; the referring
    schema's own keys (its description, its default) take precedence."""
    ref = schema.get("$ref")
    if not isinstance(ref, str):
        return schema
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    merged = dict(_resolve(target, root))
    merged.update({k: v for k, v in schema.items() if k != "$ref"})
    return merged


def _table_schema(schema: Schema, root: Schema) -> Schema | None:
    """The schema of a table when `schema` describes one (an object with properties), else
    None."""
    schema = _resolve(schema, root)
    if schema.get("type") == "object" and "properties" in schema:
        return schema
    return None


def _table_branch(schema: Schema, root: Schema) -> Schema | None:
    """The table `schema` describes, or the table branch of an ``anyOf`` (a value that may be
    written plain or as a table, like a source address): its keys are documented too."""
    table = _table_schema(schema, root)
    if table is not None:
        return table
    for option in _resolve(schema, root).get("anyOf", ()):
        table = _table_schema(option, root)
        if table is not None:
            return table
    return None


def keys(schema: Schema | None = None) -> Iterator[Key]:
    """Every key of the configuration file, table by table in the models' order: the
    top-level keys first, then each table's keys, then the tables nested in it."""
    root = schema if schema is not None else json_schema()
    yield from _keys("", root, root)


def _keys(table: str, schema: Schema, root: Schema) -> Iterator[Key]:
    properties: Mapping[str, Schema] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    nested: list[tuple[str, Schema]] = []
    for name, raw in properties.items():
        prop = _resolve(raw, root)
        yield Key(table, name, prop, name in required)
        path = f"{table}.{name}" if table else name
        sub = _table_schema(prop, root)
        if sub is not None:
            nested.append((path, sub))
            continue
        named = prop.get("additionalProperties")
        if prop.get("type") == "object" and isinstance(named, Mapping):
            sub = _table_schema(named, root)
            if sub is not None:
                nested.append((f"{path}.NAME", sub))
            continue
        items = prop.get("items")
        if prop.get("type") == "array" and isinstance(items, Mapping):
            sub = _table_branch(items, root)
            if sub is not None:
                nested.append((f"{path}[]", sub))
    for path, sub in nested:
        yield from _keys(path, sub, root)


def _type(schema: Schema, root: Schema) -> str:
    schema = _resolve(schema, root)
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            kinds: list[str] = []
            outer = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf", "description", "default")}
            for option in schema[combinator]:
                text = _type({**outer, **_resolve(option, root)}, root)
                if text not in kinds:
                    kinds.append(text)
            return " or ".join(kinds)
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, Mapping):
            if _table_schema(items, root) is not None:
                return "array of tables"
            return f"array of {_type(items, root)}"
        return "array"
    if kind == "object":
        if _table_schema(schema, root) is not None:
            return "table"
        named = schema.get("additionalProperties")
        if isinstance(named, Mapping):
            if _table_schema(named, root) is not None:
                return "tables by name"
            return f"table of {_type(named, root)}"
        return "table"
    if isinstance(kind, str):
        fmt = schema.get("format")
        return f"{kind} ({fmt})" if isinstance(fmt, str) else kind
    return "value"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(key: Key) -> str:
    if key.required:
        return "required"
    if "default" not in key.schema:
        return "—"
    default = key.schema["default"]
    if isinstance(default, Mapping) and not default:
        return "none"
    return _cell(f"`{json.dumps(default, ensure_ascii=False)}`")


def _heading(table: str) -> str:
    if not table:
        return "Top level"
    if table.endswith("[]"):
        return f"`[[{table[:-2]}]]`"
    return f"`[{table}]`"


def markdown(schema: Schema | None = None) -> str:
    """The reference page: an introduction, then one section per TOML table."""
    root = schema if schema is not None else json_schema()
    lines = [
        "# Configuration reference",
        "",
        "Every key of the relay's TOML file (`deliverypool relay --config FILE`, also read by",
        "`deliverypool milter`), generated from the configuration models — the same source as",
        "`docs/relay.schema.json`, which editors can use to check the file as you type. An",
        "unknown key, a wrong type or a value out of range stops the relay at start with one line",
        "naming the key. Sizes are bytes or strings like `\"25MB\"` (k, M, G are powers of 1024);",
        "durations are seconds or strings like `\"2s\"`, `\"5m\"`, `\"4h\"`, `\"1d\"`. For a",
        "commented example, see [Relay configuration](../guide/relay-configuration.md).",
        "",
    ]
    by_table: dict[str, list[Key]] = {}
    for key in keys(root):
        by_table.setdefault(key.table, []).append(key)
    for table, table_keys in by_table.items():
        lines += [f"## {_heading(table)}", ""]
        described = _table_description(table, root)
        if described:
            lines += [" ".join(described.split()), ""]
        lines += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key in table_keys:
            description = _cell(str(key.schema.get("description", "")))
            lines.append(f"| `{key.name}` | {_type(key.schema, root)} | {_default(key)} | {description} |")
        lines.append("")
    return "\n".join(lines)


def _table_description(table: str, root: Schema) -> str:
    """The model docstring of the table's schema (its definition's description)."""
    if not table:
        return str(root.get("description", ""))
    schema: Schema = root
    for part in _parts(table):
        if part == "NAME":
            schema = _resolve(schema["additionalProperties"], root)
        elif part == "[]":
            schema = _resolve(schema["items"], root)
        else:
            prop = schema["properties"][part]
            ref = prop.get("$ref")
            schema = _resolve(prop, root)
            if isinstance(ref, str):  # the definition's own description, not the key's
                definition = _resolve({"$ref": ref}, root)
                schema = {**schema, "description": definition.get("description", "")}
    return str(schema.get("description", ""))


def _parts(table: str) -> Sequence[str]:
    parts: list[str] = []
    for part in table.split("."):
        if part.endswith("[]"):
            parts += [part[:-2], "[]"]
        else:
            parts.append(part)
    return parts


if __name__ == "__main__":
    sys.stdout.write(markdown())
