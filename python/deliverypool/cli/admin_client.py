"""The admin API seen from the command line (`deliverypool monitor`, `deliverypool senders
--admin`): where the listener is and which credential to send, from the same places the relay
reads them.

* The address: ``--admin HOST:PORT``, else the configuration's ``[admin] address`` (a wildcard
  address is reached on loopback), else ``127.0.0.1:9425``.
* The token: ``DELIVERYPOOL_ADMIN_TOKEN`` (``TOKEN`` or ``NAME:TOKEN``), else with ``--config``
  the entry of ``[admin] token_env`` or ``token_file`` named ``--token-name`` (default: the
  first); see :func:`deliverypool.config.credentials.client_token`.
* TLS: HTTPS when the configuration has ``[admin] tls_certificate`` or a ``--cacert`` /
  ``--cert`` is given; the server's certificate is checked against ``--cacert`` (else the
  system's CAs), and ``--cert``/``--key`` is the client certificate of a listener with
  ``client_ca``.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from deliverypool.config import load
from deliverypool.config.credentials import client_token

__all__ = ["DEFAULT_ADMIN", "AdminClient", "AdminError", "admin_client", "refusal"]

DEFAULT_ADMIN = "127.0.0.1:9425"


class AdminError(OSError):
    """The listener could not be reached, or answered something that is not JSON."""


@dataclass
class AdminClient:
    base: str  # scheme://host:port
    token: str | None = None
    context: ssl.SSLContext | None = None
    timeout: float = 10.0

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(HTTP status, the JSON answer) of one request; raises `AdminError` when the listener
        cannot be reached or does not answer JSON."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                return int(response.status), json.load(response)
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    return exc.code, json.load(exc)
                except ValueError:
                    return exc.code, {"error": exc.reason}
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise AdminError(f"cannot reach {self.base}{path}: {reason}") from None

    def get(self, path: str) -> Any:
        """The JSON of a GET answered 200; anything else is an `AdminError` saying why."""
        status, body = self.request("GET", path)
        if status != 200:
            raise AdminError(refusal(self, path, status, body))
        return body


def refusal(client: AdminClient, path: str, status: int, body: Any) -> str:
    """One line for an answer that is not a success, with what to do about a credential."""
    error = body.get("error") if isinstance(body, dict) else None
    line = f"{client.base}{path} answered {status}" + (f": {error}" if error else "")
    if status == 401:
        line += " (set DELIVERYPOOL_ADMIN_TOKEN, or give --config with the relay's [admin] token_file or token_env)"
    return line


def _reach(host: str) -> str:
    """Where to connect for a listen host: a wildcard is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def admin_client(
    *,
    admin: str | None = None,
    config_path: str | None = None,
    token_name: str | None = None,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    timeout: float = 10.0,
) -> AdminClient:
    """The client of a relay's admin API (see the module documentation). Raises `ConfigError`
    for a configuration or token file that cannot be used, ValueError for a bad certificate."""
    config = load(config_path).admin if config_path is not None else None
    if admin is None:
        if config is not None and config.address is not None:
            admin = f"{_reach(config.address[0])}:{config.address[1]}"
        else:
            admin = DEFAULT_ADMIN
    token = client_token(config, name=token_name)
    tls = cacert is not None or cert is not None or (config is not None and config.tls_certificate is not None)
    context = None
    if tls:
        try:
            context = ssl.create_default_context(cafile=cacert)
            if cert is not None:
                context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot use the certificates ({cacert or '-'}, {cert or '-'}): {exc}") from None
    return AdminClient(f"{'https' if tls else 'http'}://{admin}", token, context, timeout)
