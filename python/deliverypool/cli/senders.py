"""`deliverypool senders list|release`: the restricted senders of a relay, read and released
in its state backend directly (the state database in the spool, or the ``[state] redis``), so
it works whether the relay runs or not, and a release applies at once on every worker and
every node sharing that state. (The same on the admin API: ``GET /api/senders``, ``POST
/api/senders/release``.)"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import TextIO

from deliverypool.config import ConfigError, load
from deliverypool.observe.admin import restriction_json
from deliverypool.observe.surge import iso_time
from deliverypool.state.backends import BackendUnavailable, Restriction
from deliverypool.state.limits import backends_for

__all__ = ["senders_command"]


def senders_command(
    action: str, config_path: str, *, tenant: str | None = None, address: str | None = None, as_json: bool = False, out: TextIO = sys.stdout
) -> int:
    """Exit status 0; 1 when the sender to release is not restricted or the state cannot be
    reached; 2 for a bad configuration."""
    try:
        config = load(config_path)
    except ConfigError as exc:
        print(f"deliverypool senders: {config_path}: {exc}", file=sys.stderr)
        return 2
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
    if restrictions:
        out.write(f"{'SENDER':<36} {'TENANT':<12} {'LIMIT':<18} {'COUNT':>11}  {'ACTION':<21} {'SINCE':<21} UNTIL\n")
    for r in restrictions:
        until = iso_time(r.until) if r.until is not None else "released"
        out.write(f"{r.sender:<36} {r.tenant or '-':<12} {r.window:<18} {f'{r.count}/{r.maximum}':>11}  {r.action:<21} {iso_time(r.since):<21} {until}\n")
    out.write(f"{len(restrictions)} restricted sender(s)\n")
    return 0
