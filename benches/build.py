"""The one check every timed benchmark makes first: that the extension is an optimised build.

A plain ``maturin develop`` (what ``scripts/setup.sh`` does for the tests) builds the Rust core
without optimisation, 10 to 30 times slower, and figures taken on it say nothing. Quick mode
(the test command's check that a benchmark runs) does not time anything and skips this."""

from __future__ import annotations

from deliverypool._core import BUILD_PROFILE

REBUILD = ".venv/bin/maturin develop --release --extras test,bench,uvloop,milter"


def not_release(what: str) -> str | None:
    """Why `what` must not be timed with this build, or None for a release build."""
    if BUILD_PROFILE == "release":
        return None
    return f"{what}: the extension is a {BUILD_PROFILE} build; timing it would mislead. Build it with `{REBUILD}` first."


if __name__ == "__main__":
    import sys

    problem = not_release(sys.argv[1] if len(sys.argv) > 1 else "benchmark")
    if problem:
        print(problem, file=sys.stderr)
    sys.exit(2 if problem else 0)
