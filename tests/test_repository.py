"""The repository itself: no merge left half done."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_no_tracked_file_holds_conflict_markers() -> None:
    try:
        files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        import pytest

        pytest.skip("not a git checkout (an installed copy of the tests)")
    marked = []
    for name in files:
        path = REPO / name
        if path.suffix in {".py", ".rs", ".md", ".toml", ".sh", ".pyi", ".json", ".txt"} and path.is_file():
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "=======":
                    marked.append(f"{name}:{number}")
    assert not marked, marked


def test_the_metrics_table_names_every_routing_reason() -> None:
    import re

    import pytest

    from deliverypool import REASONS

    page = REPO / "docs" / "operations" / "monitoring.md"
    if not page.is_file():
        pytest.skip("no docs/ beside the tests (an installed copy of the tests)")
    row = next(line for line in page.read_text().splitlines() if line.startswith("| `deliverypool_messages_total`"))
    named = set(re.findall(r"`([a-z-]+)`", row.split("`reason`", 1)[1]))
    assert set(REASONS) | {"none"} <= named, sorted(set(REASONS) - named)
