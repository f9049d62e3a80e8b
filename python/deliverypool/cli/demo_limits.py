"""The demo's third act, a compromised account: the tenant ``initech``'s application user
(AUTH ``initech-app``, sender limit ``per_day = 20``, action ``block``) starts sending 30
recipients. The relay takes 20, refuses the rest at RCPT with 550 5.1.8, restricts the sender
and raises the alert; an administrator releases it through the admin API (``POST
/api/senders/release`` with the demo's token, as ``deliverypool senders release --admin`` does)
and its mail flows again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import aiosmtplib

from deliverypool.app import Relay

__all__ = ["LIMITS_LISTENER", "LIMITS_TENANTS", "LimitsAct", "compromised_account", "release_through_api"]

USER, PASSWORD = "initech-app", "demo-password"
# Merged into the demo's configuration (cli/demo.py).
LIMITS_TENANTS: dict[str, Any] = {
    "initech": {"auth_users": [USER], "domains": ["initech.test"], "limits": {"per_day": 20, "action": "block"}},
}
LIMITS_LISTENER: dict[str, Any] = {"auth_users": {USER: PASSWORD}, "allow_plaintext_auth": True}


@dataclass
class LimitsAct:
    accepted: int = 0
    refused: list[str] = field(default_factory=list)
    alert: dict[str, Any] | None = None
    released: bool = False
    after_release: int = 0


async def _send(port: int, recipients: list[str], act: LimitsAct, content: bytes) -> int:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    taken = 0
    async with smtp:
        await smtp.login(USER, PASSWORD)
        await smtp.mail("newsletter@sender.test")
        for rcpt in recipients:
            try:
                await smtp.rcpt(rcpt)
                taken += 1
            except aiosmtplib.SMTPRecipientRefused as exc:
                act.refused.append(f"{exc.code} {exc.message}")
        if taken:
            await smtp.data(content)
    return taken


async def release_through_api(admin: str, token: str, sender: str) -> tuple[int, Any]:
    """POST /api/senders/release as an operator's client would: the token, a JSON body."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://{admin}/api/senders/release", json={"sender": sender}, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            return response.status, await response.json()


async def compromised_account(
    relay: Relay, listen_port: int, out: TextIO, *, content: bytes, admin: str | None, token_file: Path | None = None, timeout: float = 10.0
) -> LimitsAct:
    act = LimitsAct()
    limits = relay.limits
    if limits is None:
        return act
    out.write(f"\nact 3: initech's account ({USER}, limit per_day = 20, action block) is compromised and sends 30 recipients...\n")
    for batch in range(3):
        act.accepted += await _send(listen_port, [f"victim{batch}-{i}@shop.test" for i in range(10)], act, content)
    out.write(f"  {act.accepted} recipients accepted, {len(act.refused)} refused: {act.refused[0] if act.refused else '-'}\n")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while act.alert is None and loop.time() < deadline:
        active, _ = await relay.observer.alerts()
        act.alert = next((a for a in active if a.get("type") == "sender-restricted"), None)
        await asyncio.sleep(0.05)
    if act.alert is not None:
        a = act.alert
        out.write(f"ALERT {a['type']} {a['state']}: tenant={a['tenant']} sender={a['sender']} limit={a['window']} {a['count']}/{a['maximum']} action={a['action']}\n")
    else:
        out.write("no sender-restricted alert (PROBLEM)\n")
    for r in await limits.restrictions():
        out.write(f"  restricted: {r.sender} (tenant {r.tenant}) until released; `deliverypool senders list` shows it\n")
    if admin and token_file is not None:
        hint = (
            f"curl -H \"Authorization: Bearer $(cut -d: -f2 {token_file})\" -H 'Content-Type: application/json' "
            f"-d '{{\"sender\": \"{USER}\"}}' http://{admin}/api/senders/release"
        )
        token = token_file.read_text().strip().split(":")[1]
        status, _ = await release_through_api(admin, token, USER)
        act.released = status == 200
    else:
        hint = f"deliverypool senders release {USER}"
        act.released = await limits.release(USER) is not None
    out.write(f"  the administrator releases it ({hint}): {'released' if act.released else 'NOT released (PROBLEM)'}\n")
    before = len(act.refused)
    act.after_release = await _send(listen_port, ["after-release@shop.test"], act, content)
    out.write(f"  after the release: {act.after_release} accepted, {len(act.refused) - before} refused\n")
    return act
