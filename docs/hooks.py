"""MkDocs hooks (mkdocs.yml `hooks:`): the reference pages generated from the code at build time,
so that they cannot drift from it.

- ``reference/configuration.md``: every key of the configuration file, from the models
  (:func:`deliverypool.config.reference.markdown`).
- ``reference/cli.md``: every command's ``--help``, from the argument parser.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from mkdocs.structure.files import File, Files

from deliverypool.cli import build_parser
from deliverypool.config.reference import markdown as configuration_reference


def _commands(parser: argparse.ArgumentParser, prog: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """The parser and every subcommand's, depth first, with their full command lines."""
    found = [(prog, parser)]
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, f"{prog} {name}")
    return found


def cli_reference() -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the page must not depend on it
    try:
        lines = [
            "# Command-line reference",
            "",
            "Every command of `deliverypool`, as its `--help` prints it (generated from the parser).",
            "",
        ]
        for command, parser in _commands(build_parser(), "deliverypool"):
            parser.prog = command
            lines += [f"## `{command}`", "", "```text", parser.format_help().rstrip(), "```", ""]
        return "\n".join(lines)
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "reference/configuration.md", content=configuration_reference()))
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    return files
