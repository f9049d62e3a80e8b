"""The documentation against the code: the generated configuration reference names every key,
the Python examples of the pages run, and the documented commands parse.

The site itself is built with ``mkdocs build --strict`` by the test command (scripts/test.sh).
A ``python`` block runs unless the line before it is ``<!-- docs-test: imports-only (why) -->``,
in which case only its imports are executed (the names it uses must exist).
"""

from __future__ import annotations

import ast
import asyncio
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import deliverypool
from deliverypool.cli import build_parser
from deliverypool.config.reference import keys, markdown
from deliverypool.config.schema import json_schema
from tests.dnsserver import NsdServer
from tests.messages import ORDINARY

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md")) + [REPO / "README.md"]
IMPORTS_ONLY = re.compile(r"<!-- docs-test: imports-only \(.+\) -->")

pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason="no docs/ beside the tests (an installed copy of the tests)")


def code_blocks(language: str) -> Iterator[tuple[str, int, str, str]]:
    """(page, line, the line before the block, code) of every fenced block in `language`."""
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == f"```{language}":
                start = i
                body: list[str] = []
                i += 1
                while lines[i].strip() != "```":
                    body.append(lines[i])
                    i += 1
                before = lines[start - 1] if start else ""
                yield str(page.relative_to(REPO)), start + 1, before, "\n".join(body) + "\n"
            i += 1


# --- the configuration reference ------------------------------------------------------------


def test_the_configuration_reference_lists_every_key_of_the_schema() -> None:
    page = markdown()
    sections = re.split(r"^## ", page, flags=re.M)
    found = {(s.split("\n", 1)[0], m) for s in sections for m in re.findall(r"^\| `([^`]+)` \|", s, flags=re.M)}
    expected = set()
    for key in keys():
        heading = "Top level" if not key.table else (f"`[[{key.table[:-2]}]]`" if key.table.endswith("[]") else f"`[{key.table}]`")
        expected.add((heading, key.name))
    assert expected <= found, sorted(expected - found)
    # Every property of every table of the schema, counted independently of keys().
    schema = json_schema()

    def count(node: Any) -> int:
        if isinstance(node, dict):
            return len(node.get("properties", {})) + sum(count(v) for k, v in node.items() if k != "$defs")
        if isinstance(node, list):
            return sum(count(v) for v in node)
        return 0

    top = count(schema)
    defined = {name: count(d) for name, d in schema["$defs"].items()}
    referenced = [m for m in re.findall(r'"\$ref": "#/\$defs/(\w+)"', __import__("json").dumps(schema))]
    assert len(expected) == top + sum(defined[name] for name in referenced), "a table is documented twice or not at all"


def test_the_configuration_reference_is_in_the_site_navigation() -> None:
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for page in ("reference/configuration.md", "reference/cli.md", "reference/api.md"):
        assert page in nav


# --- Python examples ------------------------------------------------------------------------

PYTHON_BLOCKS = list(code_blocks("python"))


def test_there_are_examples_to_check() -> None:
    assert len(PYTHON_BLOCKS) >= 4


@pytest.mark.parametrize(("page", "line", "before", "code"), PYTHON_BLOCKS, ids=[f"{p}:{n}" for p, n, _, _ in PYTHON_BLOCKS])
def test_python_examples_run(page: str, line: int, before: str, code: str, nsd: NsdServer) -> None:
    tree = ast.parse(code, filename=f"{page}:{line}")
    if IMPORTS_ONLY.fullmatch(before.strip()):
        imports = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
        exec(compile(imports, f"{page}:{line}", "exec"), {})
        return
    # What the examples take as given: a message, a batch, a policy, and a nameserver that
    # answers (the documented 127.0.0.1:5353 is this session's NSD).
    code = code.replace('"127.0.0.1:5353"', repr(nsd.address))
    namespace: dict[str, Any] = {
        "raw_bytes": ORDINARY[0],
        "messages": list(ORDINARY),
        "policy": deliverypool.Policy(),
    }
    compiled = compile(code, f"{page}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, namespace)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


# --- documented commands --------------------------------------------------------------------


def documented_commands() -> Iterator[tuple[str, int, list[str]]]:
    """Every ``deliverypool ...`` command line of the pages' shell and console blocks, with its
    optional parts (``[--json]``) left out."""
    for language in ("console", "sh"):
        for page, line, _, code in code_blocks(language):
            for text in code.splitlines():
                text = text.strip()
                if language == "console":
                    if not text.startswith("$ "):
                        continue
                    text = text[2:]
                text = re.sub(r"\[[^\]]*\]", "", text.split(" #", 1)[0]).split("&&")[-1].strip()
                words = shlex.split(text)
                if words and Path(words[0]).name == "deliverypool":
                    yield page, line, words[1:]


COMMANDS = list(documented_commands())


def test_there_are_commands_to_check() -> None:
    assert {words[0] for _, _, words in COMMANDS} >= {"classify", "relay", "milter", "queue", "senders", "dnsbl", "demo"}


@pytest.mark.parametrize(("page", "line", "argv"), COMMANDS, ids=[f"{p}:{n}:{' '.join(a[:2])}" for p, n, a in COMMANDS])
def test_documented_commands_parse(page: str, line: int, argv: list[str]) -> None:
    """Each documented command line is one the parser takes, so no option is documented that
    does not exist."""
    build_parser().parse_args(argv)
