"""Where messages come from: a message file, an mbox file, a Maildir (or any folder of
message files), or standard input."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

# An mbox separator: a "From " line at the start of the file or after a blank line.
_MBOX_SEPARATOR = re.compile(rb"(?:\A|(?<=\n\n)|(?<=\r\n\r\n))From [^\r\n]*(?:\r\n|\n|\r)")


def split_mbox(data: bytes) -> list[bytes]:
    """Splits mbox data into messages, without their From_ lines. Data that does not start with
    a From_ line is one message."""
    starts = [m for m in _MBOX_SEPARATOR.finditer(data)]
    if not starts or starts[0].start() != 0:
        return [data]
    messages = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(data)
        body = data[match.end() : end]
        # The blank line before the next separator belongs to the mbox format.
        if i + 1 < len(starts):
            body = body[:-2] if body.endswith(b"\r\n") else body[:-1]
        messages.append(body)
    return messages


def _maildir_files(folder: Path) -> list[Path]:
    subfolders = [folder / name for name in ("cur", "new") if (folder / name).is_dir()]
    if not subfolders:
        subfolders = [folder]
    return sorted(p for sub in subfolders for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))


def read_messages(path: str) -> Iterator[tuple[str, bytes]]:
    """Yields (source, message bytes) for every message at `path`. The source is the path as
    given, with "#N" (1-based) for the Nth message of an mbox holding several. Raises OSError
    when the path cannot be read."""
    if path == "-":
        yield from _from_bytes("-", sys.stdin.buffer.read())
        return
    target = Path(path)
    if target.is_dir():
        for file in _maildir_files(target):
            yield from _from_bytes(str(file), file.read_bytes())
        return
    yield from _from_bytes(path, target.read_bytes())


def _from_bytes(source: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    # An .eml file is one message by definition: a From_ line inside it is an unescaped
    # quotation (as in bounces that paste the original), not an mbox separator.
    messages = [data] if source.lower().endswith(".eml") else split_mbox(data)
    if len(messages) == 1:
        yield source, data
        return
    for number, message in enumerate(messages, start=1):
        yield f"{source}#{number}", message
