"""The one way deliverypool runs a coroutine to completion from synchronous code."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


def run(main: Coroutine[Any, Any, _T], loop: str | None = None) -> _T:
    """Runs `main` on uvloop when it is installed (or when `loop` is "uvloop", which then must
    be), else on the stdlib loop; `loop="asyncio"` forces the stdlib loop."""
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            return uvloop.run(main)
    return asyncio.run(main)
