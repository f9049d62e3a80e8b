"""The JSON Schema of the configuration file, for editors (``docs/relay.schema.json``).

Regenerate it after changing the models::

    .venv/bin/python -m deliverypool.config.schema docs/relay.schema.json

``tests/test_config.py`` fails while the committed file differs from what the models generate.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema, to_jsonable_python

from deliverypool.config.model import RelayConfig

__all__ = ["json_schema", "schema_text"]

SCHEMA_ID = "https://github.com/deliverypool/deliverypool/blob/main/docs/relay.schema.json"


class _TomlSchema(GenerateJsonSchema):
    """TOML has no null: an optional key is one that may be left out, so its schema is the
    value's alone (no ``"null"`` alternative, no ``"default": null``). Titles are left out:
    each property's description says more than its capitalised name."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        generated = super().default_schema(schema)
        if generated.get("default", ...) is None:
            del generated["default"]
        return generated

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def encode_default(self, dft: Any) -> Any:
        # By value, not by the field's serializer (pydantic < 2.9 cannot encode ipaddress
        # objects that way); the defaults the file would write are given by the models.
        return to_jsonable_python(dft, fallback=str)


def _plain_refs(schema: Any) -> Any:
    """``{"allOf": [{"$ref": R}], ...}`` as ``{"$ref": R, ...}``: what pydantic before 2.9 wrote
    for a reference with a description beside it (draft 2020-12 allows the siblings), so that
    every supported pydantic writes the same file."""
    if isinstance(schema, list):
        return [_plain_refs(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    plain = {key: _plain_refs(value) for key, value in schema.items()}
    wrapped = plain.get("allOf")
    if isinstance(wrapped, list) and len(wrapped) == 1 and set(wrapped[0]) == {"$ref"}:
        del plain["allOf"]
        plain = {"$ref": wrapped[0]["$ref"], **plain}
    return plain


def json_schema() -> dict[str, Any]:
    """The schema of a relay configuration file, as a JSON object."""
    generated: dict[str, Any] = _plain_refs(RelayConfig.model_json_schema(schema_generator=_TomlSchema))
    return {"$schema": _TomlSchema.schema_dialect, "$id": SCHEMA_ID, "title": "deliverypool relay configuration", **{k: v for k, v in generated.items() if k != "title"}}


def schema_text() -> str:
    """`json_schema` as the text of ``docs/relay.schema.json``."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deliverypool.config.schema [PATH]``: writes the schema to PATH, or prints it."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: python -m deliverypool.config.schema [PATH]", file=sys.stderr)
        return 2
    if args:
        Path(args[0]).write_text(schema_text(), encoding="utf-8")
    else:
        sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
