"""The admin API's credentials in tests: a token file (``tests:TOKEN``, mode 0600, a token new
each session), the ``[admin]`` table naming it, the header a client sends; and the webhook
receivers' check, which is the documented Standard Webhooks snippet itself
(docs/operations/admin-api.md), loaded from the page."""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOKEN = secrets.token_urlsafe(32)
READ_TOKEN = secrets.token_urlsafe(32)
HEADERS: Mapping[str, str] = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def token_file(directory: Path) -> Path:
    """A token file in `directory`: ``tests`` may do anything, ``scraper`` only read."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "admin-tokens"
    path.write_text(f"# the tests' tokens\ntests:{TOKEN}\nscraper:{READ_TOKEN}:read\n")
    path.chmod(0o600)
    return path


def admin_toml(directory: Path, port: int, extra: str = "") -> str:
    """The ``[admin]`` table of a loopback listener on `port` with the tests' token file."""
    return f'[admin]\naddress = "127.0.0.1:{port}"\ntoken_file = "{token_file(directory)}"\n{extra}'


def secret_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "webhook-secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def documented_snippet(name: str = "verify_webhook") -> Callable[..., Any]:
    """The function `name` of the ```python block that defines it in docs/operations/admin-api.md."""
    page = (REPO / "docs" / "operations" / "admin-api.md").read_text(encoding="utf-8")
    for block in re.findall(r"^```python\n(.*?)^```", page, flags=re.M | re.S):
        if f"def {name}(" in block:
            namespace: dict[str, Any] = {}
            exec(compile(block, "docs/operations/admin-api.md", "exec"), namespace)
            function: Callable[..., Any] = namespace[name]
            return function
    raise AssertionError(f"docs/operations/admin-api.md defines no {name}()")
