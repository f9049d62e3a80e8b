"""`deliverypool senders list|release`: the restricted senders of a relay, read and released
in its state backend directly (the state database in the spool, or the ``[state] redis``), so
it works whether the relay runs or not, and a release applies at once on every worker and
every node sharing that state. With ``--admin``, through the running relay's admin API instead
(``GET /api/senders``, ``POST /api/senders/release``): the relay's audit log then names the
token that released (cli/admin_client.py says where the token comes from)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.parse
from typing import TextIO

from deliverypool.config import ConfigError, load
from deliverypool.observe.admin import restriction_json
from deliverypool.observe.surge import iso_time
from deliverypool.state.backends import BackendUnavailable, Restriction
from deliverypool.state.limits import backends_for

__all__ = ["senders_command"]


def senders_command(
    action: str,
    config_path: str,
    *,
    tenant: str | None = None,
    address: str | None = None,
    as_json: bool = False,
    out: TextIO = sys.stdout,
    admin: str | None = None,
    token_name: str | None = None,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> int:
    """Exit status 0; 1 when the sender to release is not restricted or the state (or the admin
    API: `admin`, "" for the configuration's address) cannot be reached or refuses; 2 for a bad
    configuration."""
    try:
        config = load(config_path)
    except ConfigError as exc:
        print(f"deliverypool senders: {config_path}: {exc}", file=sys.stderr)
        return 2
    if admin is not None:
        return _through_api(action, config_path, admin or None, tenant, address, as_json, out, token_name=token_name, cacert=cacert, cert=cert, key=key)
    backend, local = backends_for(config, config.spool.directory)

    async def listed() -> list[Restriction]:
        await backend.open()
        try:
            return [r for r in await backend.restrictions(time.time()) if tenant is None or r.tenant == tenant]
        finally:
            await backend.close()

    async def released() -> Restriction | None:
        from deliverypool.mail.address import sender_key

        assert address is not None
        sender = sender_key(address)
        found = None
        for store in (backend, local):
            if store is None:
                continue
            await store.open()
            try:
                found = await store.release(sender) or found
            finally:
                await store.close()
        return found

    try:
        if action == "release":
            restriction = asyncio.run(released())
            if restriction is None:
                print(f"deliverypool senders: {address} is not restricted", file=sys.stderr)
                return 1
            out.write(json.dumps({"released": restriction_json(restriction)}) + "\n" if as_json else f"released {restriction.sender}\n")
            return 0
        restrictions = asyncio.run(listed())
    except BackendUnavailable as exc:
        print(f"deliverypool senders: the state backend {config.state.redis} is unreachable: {exc}", file=sys.stderr)
        return 1
    if as_json:
        out.write(json.dumps({"senders": [restriction_json(r) for r in restrictions]}) + "\n")
        return 0
    _table(restrictions, out)
    return 0


def _table(restrictions: list[Restriction], out: TextIO) -> None:
    if restrictions:
        out.write(f"{'SENDER':<36} {'TENANT':<12} {'LIMIT':<18} {'COUNT':>11}  {'ACTION':<21} {'SINCE':<21} UNTIL\n")
    for r in restrictions:
        until = iso_time(r.until) if r.until is not None else "released"
        out.write(f"{r.sender:<36} {r.tenant or '-':<12} {r.window:<18} {f'{r.count}/{r.maximum}':>11}  {r.action:<21} {iso_time(r.since):<21} {until}\n")
    out.write(f"{len(restrictions)} restricted sender(s)\n")


def _through_api(
    action: str,
    config_path: str,
    admin: str | None,
    tenant: str | None,
    address: str | None,
    as_json: bool,
    out: TextIO,
    *,
    token_name: str | None,
    cacert: str | None,
    cert: str | None,
    key: str | None,
) -> int:
    from deliverypool.cli.admin_client import AdminError, admin_client, refusal

    try:
        client = admin_client(admin=admin, config_path=config_path, token_name=token_name, cacert=cacert, cert=cert, key=key)
    except (ConfigError, ValueError) as exc:
        print(f"deliverypool senders: {exc}", file=sys.stderr)
        return 2
    try:
        if action == "release":
            path = "/api/senders/release"
            status, body = client.request("POST", path, {"sender": address})
            if status == 404 and isinstance(body, dict) and "released" in body:
                print(f"deliverypool senders: {address} is not restricted", file=sys.stderr)
                return 1
        else:
            path = "/api/senders" + (f"?{urllib.parse.urlencode({'tenant': tenant})}" if tenant is not None else "")
            status, body = client.request("GET", path)
    except AdminError as exc:
        print(f"deliverypool senders: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"deliverypool senders: {refusal(client, path, status, body)}", file=sys.stderr)
        return 1
    if action == "release":
        out.write(json.dumps(body) + "\n" if as_json else f"released {body['released']['sender']}\n")
        return 0
    restrictions = [Restriction.from_json(r) for r in body["senders"]]
    if as_json:
        out.write(json.dumps({"senders": [restriction_json(r) for r in restrictions]}) + "\n")
    else:
        _table(restrictions, out)
    return 0
