"""The admin API's security (issue 21): nobody but the operator may release a restricted sender.

* The attack of the issue, against `deliverypool relay` started from the documented example
  configuration (docs/guide/relay-configuration.md, with this machine's ports and files): every
  variant is refused (401/403/415) and the sender stays restricted; the operator's release with
  the token works, and is audited.
* The same from a web page in a real headless Chromium (tests/chromium.py): fetch no-cors with
  text/plain, fetch with credentials and JSON (a preflight), form POSTs, from a same-site and a
  cross-site origin.
* Mutual TLS with trustme certificates; tokens, their file and its rotation; the relay that
  refuses to start with a public address and no credential; the command-line clients.
* Bad input (oversize, malformed, slow, many connections) while the relay's SMTP goes on.
* Signed webhooks: every POST checked with the documented snippet and the standardwebhooks
  reference implementation; a tampered body fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import trustme
from aiohttp import web
from hypothesis import example, given
from hypothesis import strategies as st

from deliverypool import config as cfg
from deliverypool.config.credentials import (
    TokenStore,
    client_token,
    new_token,
    new_webhook_secret,
    parse_tokens,
    parse_webhook_secrets,
    webhook_secrets,
)
from deliverypool.config.loader import tomllib  # type: ignore[attr-defined]
from deliverypool.observe.alerts import Webhook
from deliverypool.observe.events import ADMIN_REFUSALS, AdminRefused, AdminRelease, Event
from tests.admin_api import HEADERS, READ_TOKEN, SECRET, TOKEN, admin_toml, documented_snippet, secret_file, token_file
from tests.chromium import cannot_start, chromium
from tests.smtp_sinks import eventually, free_port, message, relay_config, sink, webhook_receiver
from tests.test_config import documented_example
from tests.test_crash import RelayProcess, crash_config
from tests.test_relay import running

Run = Callable[[Coroutine[Any, Any, Any]], Any]
SENDER = "bad@acme.example"
RESTRICTED = "550 5.1.8 Access denied, bad outbound sender"


# --- a relay from the documented example ------------------------------------------------------


def toml_text(data: Mapping[str, Any]) -> str:
    """The TOML of parsed TOML (tables, arrays, inline tables in arrays, scalars)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"

    lines: list[str] = []

    def table(prefix: str, body: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"[{prefix}]")
        lines.extend(f"{json.dumps(k)} = {value(v)}" for k, v in scalars.items())
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k), v)

    table("", data)
    return "\n".join(lines) + "\n"


def documented_relay(tmp_path: Path, *, sink_port: int, hook_port: int) -> tuple[Path, cfg.RelayConfig]:
    """The documented example with this machine's places: loopback ports and source addresses,
    trustme certificates, the tests' token and secret files, a nameserver that never answers
    (nothing leaves loopback), no Redis, no blocklist zones, and the issue's limits
    (per_day = 1, action = "block"). Its file and its configuration."""
    data = tomllib.loads(documented_example())
    assert data["admin"]["token_file"] and data["alerts"]["secret_file"], "the example names the admin token and the webhook secret"
    ca = trustme.CA()
    ca.issue_cert("relay.example.net").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "relay.pem"))
    data["listener"].update(address=f"127.0.0.1:{free_port()}", tls_certificate=str(tmp_path / "relay.pem"), tls_key=str(tmp_path / "relay.pem"))
    data["spool"]["directory"] = str(tmp_path / "spool")
    data["dns"].update(nameservers=[f"127.0.0.1:{free_port()}"], timeout="200ms")
    data["pools"]["normal"]["source_addresses"] = ["127.0.0.2"]
    data["pools"]["high-risk"].update(source_addresses=["127.0.0.3"], smarthost=f"127.0.0.1:{sink_port}")
    data["pools"]["relay"]["source_addresses"] = ["127.0.0.4"]
    del data["state"], data["dnsbl"]
    data["limits"] = {"per_day": 1, "action": "block"}
    data["admin"].update(address=f"127.0.0.1:{free_port()}", token_file=str(token_file(tmp_path)))
    data["alerts"].update(webhook=f"http://127.0.0.1:{hook_port}/hook", secret_file=str(secret_file(tmp_path)), retry_initial="100ms")
    data.setdefault("observe", {})["flush_interval"] = "100ms"
    path = tmp_path / "relay.toml"
    path.write_text(toml_text(data))
    return path, cfg.load(path)


def admin_url(conf: cfg.RelayConfig) -> str:
    assert conf.admin.address is not None
    return "http://%s:%d" % conf.admin.address


async def restrict(conf: cfg.RelayConfig) -> None:
    """SENDER's first recipient is taken, the second refused: it is restricted."""
    replies = []
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=conf.listener.port, start_tls=False) as smtp:
        await smtp.mail(SENDER)
        for rcpt in ("one@far.example", "two@far.example"):
            try:
                await smtp.rcpt(rcpt)
                replies.append("250")
            except aiosmtplib.SMTPRecipientRefused as exc:
                replies.append(f"{exc.code} {exc.message}")
        await smtp.data(message("limited", sender=SENDER))
    assert replies == ["250", RESTRICTED]


async def request(method: str, url: str, *, data: Any = None, headers: Mapping[str, str] | None = None, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, data=data, headers=headers, **kwargs) as response:
            text = await response.text()
            assert not [h for h in response.headers if h.lower().startswith("access-control-")]
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text


async def answers(url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        return (await request("GET", url))[0] > 0
    return False


async def restricted(conf: cfg.RelayConfig) -> list[str]:
    """The restricted senders, as the operator reads them (GET /api/senders with the token)."""
    status, body = await request("GET", admin_url(conf) + "/api/senders", headers=HEADERS)
    assert status == 200, body
    return [r["sender"] for r in body["senders"]]


# The issue's request and every variant without the right token: (headers, status, reason).
ATTEMPTS: list[tuple[dict[str, str], int, str]] = [
    # The issue's request, as it was.
    ({"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://evil.example"}, 403, "cross-site"),
    ({"Content-Type": "text/plain;charset=UTF-8"}, 401, "no-credential"),
    ({"Content-Type": "application/json"}, 401, "no-credential"),
    ({"Content-Type": "application/json", "Authorization": "Bearer " + "x" * 43}, 401, "bad-credential"),
    ({"Content-Type": "application/json", "Authorization": f"Bearer {READ_TOKEN}"}, 403, "read-only"),
    ({"Content-Type": "text/plain;charset=UTF-8", **HEADERS}, 415, "content-type"),
    ({"Content-Type": "application/x-www-form-urlencoded", **HEADERS}, 415, "content-type"),
    ({"Content-Type": "application/json", "Origin": "https://evil.example", **HEADERS}, 403, "cross-site"),
    ({"Content-Type": "application/json", "Sec-Fetch-Site": "same-site", **HEADERS}, 403, "cross-site"),
]


@pytest.mark.slow
def test_the_issues_attack_fails_against_the_documented_relay(tmp_path: Path) -> None:
    """`deliverypool relay` from the documented example: the issue's curl (text/plain, a foreign
    Origin) and every variant without the token are refused (403, 401, 415) and the sender stays
    restricted; with the token, from an HTTP client and from `deliverypool senders --admin`, the
    release works and is logged with the token's name, never the token."""
    from deliverypool.cli.senders import senders_command

    sink_port, hook_port = free_port(), free_port()
    path, conf = documented_relay(tmp_path, sink_port=sink_port, hook_port=hook_port)
    relay = RelayProcess(path, conf.listener.port, "asyncio", workers=1)
    release = admin_url(conf) + "/api/senders/release"
    body = json.dumps({"sender": SENDER})

    async def main() -> list[dict[str, Any]]:
        async with sink("127.0.0.1", sink_port), webhook_receiver(hook_port, SECRET) as hooks:
            try:
                await relay.start()
                await eventually(lambda: answers(admin_url(conf) + "/healthz"), what="the admin listener")
                await restrict(conf)
                await eventually(lambda: any(h["type"] == "sender-restricted" for h in hooks), what="the signed sender-restricted alert")
                for headers, status, reason in ATTEMPTS:
                    answer = await request("POST", release, data=body, headers=headers)
                    assert answer[0] == status and answer[1]["reason"] == reason, (headers, answer)
                # The reads need the token too; the health check as well (no open_metrics here).
                assert (await request("GET", admin_url(conf) + "/api/senders"))[0] == 401
                assert (await request("GET", admin_url(conf) + "/api/alerts", headers={"Authorization": f"Bearer {READ_TOKEN}"}))[0] == 200
                assert await restricted(conf) == [SENDER]
                # The operator: first through the command line, to list; then an HTTP client releases.
                out = io.StringIO()
                assert await asyncio.to_thread(senders_command, "list", str(path), admin="", as_json=True, out=out) == 0
                assert [r["sender"] for r in json.loads(out.getvalue())["senders"]] == [SENDER]
                status, answer = await request("POST", release, data=body, headers={"Content-Type": "application/json", **HEADERS})
                assert status == 200 and answer["released"]["sender"] == SENDER
                assert await restricted(conf) == []
                out = io.StringIO()
                assert await asyncio.to_thread(senders_command, "release", str(path), address=SENDER, admin="", out=out) == 1  # not restricted now
                await eventually(lambda: any(h["type"] == "sender-released" for h in hooks), what="the signed sender-released alert")
                assert hooks.rejected == []
                return list(hooks)
            finally:
                relay.stop()

    hooks = asyncio.run(main())
    assert [h["type"] for h in hooks] == ["sender-restricted", "sender-released"]
    log = relay.log.read_text()
    assert f"admin: release of {SENDER} by tests from 127.0.0.1: released (tenant -, per_day)" in log
    assert "admin: refused POST /api/senders/release from 127.0.0.1 (no credential): 403 cross-site" in log
    assert "(scraper): 403 read-only" in log
    events = [json.loads(line) for line in (conf.spool.directory / "events.jsonl").read_text().splitlines()]
    releases = [e for e in events if e["kind"] == "admin-release"]
    assert [(e["sender"], e["result"], e["who"], e["client"]) for e in releases] == [
        (SENDER, "released", "tests", "127.0.0.1"), (SENDER, "not-restricted", "tests", "127.0.0.1")
    ]
    refused = [e["reason"] for e in events if e["kind"] == "admin-refused" and e["path"] == "/api/senders/release"]
    assert refused == [reason for _, _, reason in ATTEMPTS]
    for text in (log, (conf.spool.directory / "events.jsonl").read_text()):
        assert TOKEN not in text and READ_TOKEN not in text


# --- the browser ------------------------------------------------------------------------------

ATTACK_PAGE = """<!doctype html>
<html><body>
<iframe name="sink" id="sink"></iframe>
<form id="json-form" method="POST" enctype="text/plain" target="sink" action="{admin}/api/senders/release">
  <input name='{{"sender": "{sender}", "x": "' value='"}}'>
</form>
<form id="plain-form" method="POST" target="sink" action="{admin}/api/senders/release">
  <input name="sender" value="{sender}">
</form>
<script>
const release = "{admin}/api/senders/release";
const body = JSON.stringify({{sender: "{sender}"}});
function attempt(promise) {{ return promise.then(r => "answered " + r.type + " " + r.status, e => "failed: " + e.name); }}
function submitted(id) {{
  return new Promise(done => {{
    const frame = document.getElementById("sink");
    frame.onload = () => done("loaded");
    document.getElementById(id).submit();
  }});
}}
</script>
</body></html>
"""

# (what the page does, what it reports, the reason the admin listener refuses it for)
BROWSER_ATTEMPTS = [
    ('attempt(fetch(release, {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body}))', "answered opaque 0", "cross-site"),
    ('attempt(fetch(release, {method: "POST", mode: "no-cors", body}))', "answered opaque 0", "cross-site"),
    ('attempt(fetch(release, {method: "POST", mode: "cors", credentials: "include", headers: {"Content-Type": "application/json"}, body}))',
     "failed: TypeError", "preflight"),
    ('attempt(fetch(release, {method: "POST", headers: {"Authorization": "Bearer guess"}, body}))', "failed: TypeError", "preflight"),
    ('submitted("json-form")', "loaded", "cross-site"),
    ('submitted("plain-form")', "loaded", "cross-site"),
    ('attempt(fetch("{admin}/api/senders", {mode: "no-cors", credentials: "include"}))', "answered opaque 0", "cross-site"),
]


@contextlib.asynccontextmanager
async def attacker_site(admin: str) -> AsyncIterator[int]:
    """Another origin on loopback serving the attack page (the admin URL filled in)."""
    page = ATTACK_PAGE.format(admin=admin, sender=SENDER)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


def test_a_web_page_cannot_release_a_sender(tmp_path: Path) -> None:
    """A page from another origin (same-site: 127.0.0.1 on another port; cross-site: localhost)
    tries the release every way a browser allows; each request reaches the listener and is
    refused, the sender stays restricted; then the operator's release with the token works."""
    hook_port = free_port()
    _, conf = documented_relay(tmp_path, sink_port=free_port(), hook_port=hook_port)
    admin = admin_url(conf)

    async def main() -> None:
        try:
            browser_context = chromium()
            browser = await browser_context.__aenter__()
        except RuntimeError as exc:
            cannot_start(str(exc))
        try:
            async with webhook_receiver(hook_port, SECRET), running(conf) as relay, attacker_site(admin) as port:
                events: list[Event] = []
                relay.observer.bus.subscribe("test", events.append)
                limits = relay.limits
                assert limits is not None
                await restrict(conf)
                tab = await browser.new_page()
                for origin in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/"):
                    await browser.goto(tab, origin)
                    for script, outcome, reason in BROWSER_ATTEMPTS:
                        before = len([e for e in events if isinstance(e, AdminRefused)])
                        # (The page learns of the answer, or of the refused preflight, after the listener
                        # has dealt with the request.)
                        assert await browser.evaluate(tab, script.replace("{admin}", admin)) == outcome, (origin, script)
                        assert [r.sender for r in await limits.restrictions()] == [SENDER], (origin, script)
                        # The request (or its preflight) did reach the listener, which refused it.
                        await eventually(lambda: len([e for e in events if isinstance(e, AdminRefused)]) > before, what=f"the refusal of {script}")
                        refusal = [e for e in events if isinstance(e, AdminRefused)][before]
                        assert (refusal.reason, refusal.client, refusal.who) == (reason, "127.0.0.1", None), (origin, script, refusal)
                assert await restricted(conf) == [SENDER]
                assert not [e for e in events if isinstance(e, AdminRelease)]
                # The same release with the token, from an HTTP client: done.
                status, answer = await request("POST", admin + "/api/senders/release", json={"sender": SENDER}, headers=HEADERS)
                assert status == 200 and answer["released"]["sender"] == SENDER
                assert await limits.restrictions() == []
        finally:
            await browser_context.__aexit__(None, None, None)

    asyncio.run(main())


# --- mutual TLS -------------------------------------------------------------------------------


def test_mutual_tls_admits_only_certificates_of_the_client_ca(aio_run: Run, tmp_path: Path) -> None:
    server_ca, client_ca, stranger_ca = trustme.CA(), trustme.CA(), trustme.CA()
    files = {name: tmp_path / f"{name}.pem" for name in ("server", "server-ca", "client-ca", "alice", "mallory")}
    server_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    server_ca.cert_pem.write_to_path(str(files["server-ca"]))
    client_ca.cert_pem.write_to_path(str(files["client-ca"]))
    client_ca.issue_cert("alice.ops.test", common_name="alice").private_key_and_cert_chain_pem.write_to_path(str(files["alice"]))
    stranger_ca.issue_cert("mallory.test", common_name="mallory").private_key_and_cert_chain_pem.write_to_path(str(files["mallory"]))
    data = relay_config(tmp_path / "spool").model_dump(mode="json")
    port = free_port()
    data["admin"] = {"address": f"127.0.0.1:{port}", "tls_certificate": str(files["server"]), "tls_key": str(files["server"]), "client_ca": str(files["client-ca"])}
    data["limits"] = {"per_day": 5, "action": "block"}
    conf = cfg.from_dict(data)
    url = f"https://127.0.0.1:{port}"

    def context(client: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(files["server-ca"]))
        if client is not None:
            ctx.load_cert_chain(str(files[client]))
        return ctx

    async def main() -> None:
        from deliverypool.cli.monitor import monitor_command

        events: list[Event] = []
        async with running(conf) as relay:
            relay.observer.bus.subscribe("test", events.append)
            for client in (None, "mallory"):
                with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                    await request("GET", url + "/api/senders", ssl=context(client))
            assert (await request("GET", url + "/api/senders", ssl=context("alice")))[0] == 200
            status, answer = await request("POST", url + "/api/senders/release", json={"sender": SENDER}, ssl=context("alice"))
            assert status == 404 and answer["released"] is None  # not restricted; but admitted
            # A browser holding the certificate still cannot be used from a page.
            status, answer = await request("POST", url + "/api/senders/release", json={"sender": SENDER}, headers={"Origin": "https://evil.example"}, ssl=context("alice"))
            assert (status, answer["reason"]) == (403, "cross-site")
            await eventually(lambda: any(isinstance(e, AdminRelease) for e in events), what="the audit event")
            assert [(e.who, e.result) for e in events if isinstance(e, AdminRelease)] == [("alice", "not-restricted")]
            out = io.StringIO()
            code = await asyncio.to_thread(
                monitor_command, f"127.0.0.1:{port}", cacert=str(files["server-ca"]), cert=str(files["alice"]), as_json=True, out=out
            )
            assert code == 0 and "tenants" in json.loads(out.getvalue())
            assert await asyncio.to_thread(monitor_command, f"127.0.0.1:{port}", cacert=str(files["server-ca"]), as_json=True, out=io.StringIO()) == 1
        # Certificates and tokens together: both are needed; the audit names the token.
        both = cfg.from_dict({**data, "admin": {**data["admin"], "token_file": str(token_file(tmp_path))}})
        async with running(both) as relay:
            events.clear()
            relay.observer.bus.subscribe("test", events.append)
            status, answer = await request("GET", url + "/api/senders", ssl=context("alice"))
            assert (status, answer["reason"]) == (401, "no-credential")
            assert (await request("GET", url + "/api/senders", ssl=context("alice"), headers=HEADERS))[0] == 200
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                await request("GET", url + "/api/senders", ssl=context(None), headers=HEADERS)
            await eventually(lambda: any(isinstance(e, AdminRefused) for e in events), what="the audit event")
            assert [(e.reason, e.who) for e in events if isinstance(e, AdminRefused)] == [("no-credential", "alice")]

    aio_run(main())


# --- configuration, tokens, the command line -------------------------------------------------

MINIMAL = '[pools.normal]\nsource_addresses = ["192.0.2.10"]\n[pools.high-risk]\nsource_addresses = ["192.0.2.20"]\n'


@pytest.mark.parametrize("address", ["0.0.0.0:9425", "[::]:9425", "192.0.2.5:9425", "admin.example.net:9425"])
def test_a_public_admin_address_without_a_credential_is_refused_in_one_line(address: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.loads(MINIMAL + f'[admin]\naddress = "{address}"\n')
    assert caught.value.key == "admin.address" and "\n" not in str(caught.value)
    assert "set admin.token_file (or admin.token_env, or admin.client_ca)" in str(caught.value)
    for credential in ('token_file = "tokens"', 'token_env = "ADMIN_TOKENS"'):
        assert cfg.loads(MINIMAL + f'[admin]\naddress = "{address}"\n{credential}\n').admin.has_credential
    for loopback in ("127.0.0.1:9425", "127.1.2.3:9425", "[::1]:9425", "localhost:9425"):
        assert cfg.loads(MINIMAL + f'[admin]\naddress = "{loopback}"\n').admin.address is not None


@pytest.mark.parametrize(
    ("admin", "key"),
    [
        ('address = "127.0.0.1:9425"\ntls_certificate = "a.pem"', "admin.tls_key"),
        ('address = "127.0.0.1:9425"\nclient_ca = "ca.pem"', "admin.client_ca"),
        ('address = "127.0.0.1:9425"\ntoken_env = "1BAD"', "admin.token_env"),
        ('address = "127.0.0.1:9425"\nmax_body = 100', "admin.max_body"),
    ],
)
def test_admin_settings_that_do_not_go_together(admin: str, key: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.loads(MINIMAL + f"[admin]\n{admin}\n")
    assert caught.value.key == key


def test_relative_files_are_relative_to_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "relay.toml"
    path.parent.mkdir()
    path.write_text(
        MINIMAL + '[spool]\ndirectory = "spool"\nreserve = "32MB"\n[admin]\naddress = "127.0.0.1:9425"\ntoken_file = "tokens"\n'
        '[alerts]\nwebhook = "http://127.0.0.1:1/x"\nsecret_file = "/abs/secret"\n'
    )
    conf = cfg.load(path)
    assert conf.admin.token_file == path.parent / "tokens" and conf.spool.directory == path.parent / "spool"
    assert conf.alerts.secret_file == Path("/abs/secret")
    assert conf.spool.reserve == 32 * 1024 * 1024  # kept when the directory is rebased (it was reset before)


@pytest.mark.parametrize(
    ("admin", "files", "environ", "problem"),
    [
        ('address = "0.0.0.0:{port}"', {}, {}, "admin.address: 0.0.0.0 is not a loopback address and the admin API has no credential"),
        ('address = "127.0.0.1:{port}"\ntoken_file = "missing"', {}, {}, "admin.token_file: {dir}/missing does not exist"),
        ('address = "127.0.0.1:{port}"\ntoken_file = "tokens"', {"tokens": "alice:short\n"}, {}, "admin.token_file: {dir}/tokens: line 1: the token must be"),
        ('address = "127.0.0.1:{port}"\ntoken_env = "DP_TEST_TOKENS"', {}, {}, "admin.token_env: the environment variable DP_TEST_TOKENS is not set"),
        ('address = "127.0.0.1:{port}"\ntls_certificate = "no.pem"\ntls_key = "no.pem"\ntoken_file = "tokens"',
         {"tokens": f"a:{'t' * 40}\n", "no.pem": "not a certificate\n"}, {}, "admin.tls_certificate: cannot load"),
        ('address = "127.0.0.1:{port}"\n[alerts]\nwebhook = "http://127.0.0.1:1/hook"\nsecret_file = "secret"', {"secret": "whsec_!!\n"}, {},
         "alerts.secret_file: {dir}/secret: line 1: not base64 after whsec_"),
    ],
)
def test_the_relay_refuses_to_start_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, admin: str, files: dict[str, str], environ: dict[str, str], problem: str
) -> None:
    """`deliverypool relay` stops before it listens (exit status 2), with one line naming the key."""
    from deliverypool.cli.relay import relay_command

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    listen = free_port()
    path = tmp_path / "relay.toml"
    path.write_text(crash_config(tmp_path / "spool", listen, free_port()) + "[admin]\n" + admin.format(port=free_port()) + "\n")
    monkeypatch.delenv("DP_TEST_TOKENS", raising=False)
    assert relay_command(str(path)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and problem.format(dir=tmp_path) in lines[0], lines
    assert TOKEN not in lines[0] and "short" not in lines[0]
    with pytest.raises(OSError):  # nothing listened
        with socket_to(listen):
            pass


@contextlib.contextmanager
def socket_to(port: int) -> Any:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        yield s


_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
entry_names = st.builds(lambda a, b: a + b, st.sampled_from(_ALNUM), st.text(_ALNUM + "_.@-", max_size=20))
entry_tokens = st.text(_ALNUM + "._~+/=-", min_size=32, max_size=64)


@given(st.lists(st.tuples(entry_names, entry_tokens, st.sampled_from(["admin", "read"])), max_size=4, unique_by=(lambda e: e[0], lambda e: e[1])))
def test_token_files_read_back_what_was_written(entries: list[tuple[str, str, str]]) -> None:
    text = "# tokens\n\n" + "".join(f"{n}:{t}{':read' if r == 'read' else ''}\n" for n, t, r in entries)
    assert parse_tokens(text) == entries


@given(st.text(st.characters(blacklist_characters="\n"), max_size=80), entry_tokens)
def test_a_bad_token_line_is_named_never_quoted(garbage: str, token: str) -> None:
    """Whatever is wrong with a line, the error names the line and never repeats a token."""
    for line in (f"{garbage}{token}", f"name:{token}:{garbage}", f"{garbage}:{token}", f"name:{token[:31]}{garbage}", f"{token}:read", f"{token}:{token}", f"{token[:31]}:{garbage}"):
        try:
            parse_tokens(f"ok:{'k' * 40}\n{line}\n")
        except ValueError as exc:
            assert str(exc).startswith("line 2: ") and token not in str(exc) and token[:31] not in str(exc)


def test_tokens_rotate_without_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens"
    old, new = new_token(), new_token()
    path.write_text(f"alice:{old}\n")
    store = TokenStore(cfg.AdminConfig(address=("127.0.0.1", 9425), token_file=path), {})
    assert store.match(old) is not None and store.match(new) is None and store.match(old + "x") is None
    path.write_text(f"alice:{old}\nbob:{new}:read\n")
    assert store.match(new) == store.tokens[1] and store.tokens[1].role == "read"
    path.write_text(f"bob:{new}:read\n")
    assert store.match(old) is None and store.match(new) is not None
    path.write_text("bob:not-a-token-at-all\n")  # a bad edit keeps what worked
    assert store.match(new) is not None
    assert any("line 1" in r.getMessage() and "stay in force" in r.getMessage() for r in caplog.records)
    assert all(new not in r.getMessage() and old not in r.getMessage() for r in caplog.records)
    assert any("can be read or written by other users" in r.getMessage() for r in caplog.records) == bool(path.stat().st_mode & 0o006)


def test_tokens_from_the_environment_and_for_the_clients(tmp_path: Path) -> None:
    a, b = new_token(), new_token()
    admin = cfg.AdminConfig(address=("127.0.0.1", 9425), token_env="DP_TOKENS", token_file=token_file(tmp_path))
    store = TokenStore(admin, {"DP_TOKENS": f"ci:{a}, cron:{b}:read"})
    assert [(t.name, t.role) for t in store.tokens] == [("tests", "admin"), ("scraper", "read"), ("ci", "admin"), ("cron", "read")]
    with pytest.raises(cfg.ConfigError, match="admin.token_env: a name of its entries is also a name in admin.token_file"):
        TokenStore(admin, {"DP_TOKENS": f"tests:{a}"})
    # The clients: DELIVERYPOOL_ADMIN_TOKEN first, then token_env, then token_file; by name.
    assert client_token(admin, environ={"DELIVERYPOOL_ADMIN_TOKEN": f"me:{b}"}) == b
    assert client_token(admin, environ={"DELIVERYPOOL_ADMIN_TOKEN": b}) == b
    assert client_token(admin, environ={"DP_TOKENS": f"ci:{a}"}) == a
    assert client_token(admin, environ={}) == TOKEN
    assert client_token(admin, name="scraper", environ={}) == READ_TOKEN
    with pytest.raises(cfg.ConfigError, match="no token named 'nobody'"):
        client_token(admin, name="nobody", environ={})
    assert client_token(None, environ={}) is None


# --- bad input while mail flows ---------------------------------------------------------------


async def raw_exchange(port: int, data: bytes, *, then: bytes = b"", wait: float = 0.0, read: bool = True) -> bytes:
    """Sends `data` (then, after `wait` seconds, `then`) on a new connection; returns what the
    server answered before closing (b"" if nothing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if wait:
            await asyncio.sleep(wait)
        if then:
            with contextlib.suppress(ConnectionError):
                writer.write(then)
                await writer.drain()
        return await asyncio.wait_for(reader.read(), 10) if read else b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def head(path: str, headers: str = "", method: str = "POST") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n{headers}\r\n".encode()


def test_bad_input_gets_clear_answers_and_smtp_goes_on(aio_run: Run, tmp_path: Path) -> None:
    """Oversize bodies (by Content-Length and chunked), malformed JSON, unknown routes, huge
    headers, a slow body, a slow header and a flood of connections: each gets its 4xx/503 or is
    closed, nothing is read past the limit; mail sent meanwhile is accepted and delivered."""
    sink_port, admin_port = free_port(), free_port()
    data = relay_config(tmp_path / "spool", smarthost=f"127.0.0.1:{sink_port}").model_dump(mode="json")
    data.update(tomllib.loads(admin_toml(tmp_path, admin_port, 'max_body = "4k"\ntimeout = "2s"\nmax_connections = 8\n')))
    data["limits"] = {"per_day": 1000, "action": "block"}
    conf = cfg.from_dict(data)

    async def main() -> None:
        async with sink("127.0.0.1", sink_port) as mx, running(conf) as relay:
            events: list[Event] = []
            relay.observer.bus.subscribe("test", events.append)
            release = "/api/senders/release"
            json_type = "Content-Type: application/json\r\n"
            # 50 MB announced: 413 after the header, while the client has sent 1 KiB of it.
            answer = await raw_exchange(admin_port, head(release, json_type + "Content-Length: 52428800\r\n") + b"{" * 1024)
            assert answer.startswith(b"HTTP/1.1 413 ") and b'"too-large"' in answer
            chunked = head(release, json_type + "Transfer-Encoding: chunked\r\n") + b"1000\r\n" + b" " * 4096 + b"\r\n" + b"1000\r\n" + b" " * 4096 + b"\r\n0\r\n\r\n"
            assert (await raw_exchange(admin_port, chunked)).startswith(b"HTTP/1.1 413 ")
            bad_json = head(release, json_type + "Content-Length: 9\r\n") + b'{"sender"'
            assert b'"bad-json"' in (answer := await raw_exchange(admin_port, bad_json)) and answer.startswith(b"HTTP/1.1 400 ")
            assert (await raw_exchange(admin_port, head("/nothing/here", method="GET") + b"")).startswith(b"HTTP/1.1 404 ")
            many = "".join(f"X-Filler-{i}: {'y' * 100}\r\n" for i in range(100))
            answer = await raw_exchange(admin_port, head("/api/senders", many, method="GET"))
            assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request") and b'"bad-request"' in answer
            # A body that stops coming: 408 after admin.timeout.
            slow_body = head(release, json_type + "Content-Length: 100\r\n") + b'{"sender": '
            answer = await raw_exchange(admin_port, slow_body)
            assert answer.startswith(b"HTTP/1.1 408 ") and b'"timeout"' in answer
            # A header that never ends, and a flood: 8 such connections held, the next ones get
            # 503 at once; the held ones are closed by the listener (admin.timeout).
            held = [await asyncio.open_connection("127.0.0.1", admin_port) for _ in range(8)]
            for _, writer in held:
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            await eventually(lambda: len(relay.observer.admin._runner.server.connections) == 8, what="eight connections held")
            flood = await asyncio.gather(*(raw_exchange(admin_port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") for _ in range(20)))
            assert all(a.startswith(b"HTTP/1.1 503 ") for a in flood), flood[:2]
            # Mail goes on meanwhile: SMTP is another listener on the same event loop.
            for i in range(5):
                await aiosmtplib.send(message(f"during {i}"), sender="alice@sender.test", recipients=["bob@dest.test"], hostname="127.0.0.1",
                                      port=conf.listener.port, start_tls=False)
            for reader, writer in held:  # closed by the listener, not by us
                assert await asyncio.wait_for(reader.read(), 30) == b""
                writer.close()
            await mx.wait_for(5)
            # Every refusal was audited with its reason.
            await eventually(lambda: sum(isinstance(e, AdminRefused) for e in events) >= 26, what="the audit events")
            reasons = [e.reason for e in events if isinstance(e, AdminRefused)]
            assert {"too-large", "bad-json", "not-found", "bad-request", "timeout", "too-many-connections"} <= set(reasons) <= set(ADMIN_REFUSALS)
            assert reasons.count("too-many-connections") == 20
            # And it still answers.
            assert (await request("GET", f"http://127.0.0.1:{admin_port}/healthz", headers=HEADERS))[0] == 200

    aio_run(main())


# --- signed webhooks --------------------------------------------------------------------------


def test_every_webhook_post_is_signed_and_the_documented_check_holds(tmp_path: Path) -> None:
    """Two secrets (a rotation): each POST carries both signatures; the documented snippet and
    the standardwebhooks reference implementation accept each, a retry keeps its webhook-id
    with a new signature, and a tampered body, an old timestamp or another secret fail."""
    import standardwebhooks

    verify = documented_snippet()
    second = new_webhook_secret()
    keys = parse_webhook_secrets(f"{SECRET}\n# the old one, until the receiver has the new\n{second}\n")
    port = free_port()
    seen: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        return web.Response(status=500 if len(seen) == 1 else 200)  # the first attempt fails

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        webhook = Webhook(cfg.AlertsConfig(webhook=f"http://127.0.0.1:{port}/hook", retry_initial=0.05), keys)
        await webhook.start()
        try:
            webhook.post({"id": "a1", "type": "dsn-surge", "state": "firing", "tenant": "acme", "note": "caf\u00e9"})
            webhook.post({"id": "a2", "type": "dsn-surge", "state": "resolved", "tenant": "acme"})
            await eventually(lambda: len(seen) == 3, what="three POSTs")
        finally:
            await webhook.stop()
            await runner.cleanup()

    asyncio.run(main())
    (first, body), (retry, _), (other, _) = seen
    assert first["webhook-id"] == retry["webhook-id"] != other["webhook-id"]
    assert first["Content-Type"] == "application/json" and json.loads(body)["note"] == "caf\u00e9"
    for headers, raw in seen:
        assert len(headers["webhook-signature"].split()) == 2 and all(s.startswith("v1,") for s in headers["webhook-signature"].split())
        for secret in (SECRET, second):
            verify(secret, headers, raw)
            standardwebhooks.Webhook(secret).verify(raw, headers)
    with pytest.raises(ValueError, match="no valid webhook-signature"):
        verify(SECRET, first, body.replace(b"firing", b"resolved"))
    with pytest.raises(ValueError, match="no valid webhook-signature"):
        verify(new_webhook_secret(), first, body)
    with pytest.raises(ValueError, match="no valid webhook-signature"):
        verify(SECRET, {**first, "webhook-id": "msg_other"}, body)
    stale = {**first, "webhook-timestamp": str(int(time.time()) - 3600)}
    with pytest.raises(ValueError, match="too far from now"):
        verify(SECRET, stale, body)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body.replace(b"firing", b"resolved"), first)


def test_a_webhook_secret_is_generated_once_and_shared(tmp_path: Path) -> None:
    alerts = cfg.AlertsConfig(webhook="http://127.0.0.1:1/hook")
    found: list[list[bytes]] = []
    threads = [threading.Thread(target=lambda: found.append(webhook_secrets(alerts, tmp_path))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    path = tmp_path / "webhook-secret"
    assert len({tuple(keys) for keys in found}) == 1 and len(found[0][0]) == 32
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text().startswith("whsec_")
    assert [p.name for p in tmp_path.iterdir()] == ["webhook-secret"]  # no file left aside
    assert webhook_secrets(alerts, tmp_path) == found[0]
    bad = tmp_path / "bad"
    bad.write_text("whsec_" + base64.b64encode(b"short").decode() + "\n")
    with pytest.raises(cfg.ConfigError, match=r"alerts.secret_file: .*line 1: the key is 5 bytes"):
        webhook_secrets(cfg.AlertsConfig(webhook="http://127.0.0.1:1/hook", secret_file=bad), tmp_path)


def test_a_wrong_token_never_reaches_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A wrong token is logged as "bad-credential" without the token; a token in the path or
    the query is not echoed either (the path is, bounded; the query is not)."""
    port = free_port()
    data = relay_config(tmp_path / "spool").model_dump(mode="json")
    data.update(tomllib.loads(admin_toml(tmp_path, port)))
    conf = cfg.from_dict(data)
    wrong = new_token()

    async def main() -> None:
        async with running(conf):
            assert (await request("GET", f"http://127.0.0.1:{port}/api/tenants", headers={"Authorization": f"Bearer {wrong}"}))[0] == 401
            assert (await request("GET", f"http://127.0.0.1:{port}/api/tenants?token={wrong}"))[0] == 401
            assert (await request("GET", f"http://127.0.0.1:{port}/api/tenants", headers={"Authorization": f"Basic {wrong}"}))[0] == 401

    asyncio.run(main())
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "deliverypool.admin")
    assert "401 bad-credential: unknown token" in text and "401 no-credential" in text and "expected Authorization: Bearer TOKEN" in text
    assert wrong not in text and TOKEN not in text



def test_open_routes_and_host_names(tmp_path: Path) -> None:
    """Without any credential a loopback listener serves only what is opened; open_reads opens
    the reads, never a change; a loopback listener answers only loopback Host names (a page on
    a name its DNS points at 127.0.0.1 gets 403) and no answer carries a CORS permission."""

    def config(admin: str) -> cfg.RelayConfig:
        data = relay_config(tmp_path / "spool").model_dump(mode="json")
        data.update(tomllib.loads(admin))
        data["limits"] = {"per_day": 5, "action": "block"}
        return cfg.from_dict(data)

    bare_port, open_port = free_port(), free_port()
    bare = config(f'[admin]\naddress = "127.0.0.1:{bare_port}"\nopen_metrics = true\n')
    reads = config(admin_toml(tmp_path, open_port, "open_reads = true\n"))

    async def main() -> None:
        async with running(bare):
            url = f"http://127.0.0.1:{bare_port}"
            assert (await request("GET", url + "/metrics"))[0] == 200 and (await request("GET", url + "/healthz"))[0] == 200
            status, body = await request("GET", url + "/api/alerts")
            assert status == 401 and "admin.token_file" in body["error"]
            assert (await request("POST", url + "/api/senders/release", json={"sender": SENDER}))[0] == 401
            assert (await request("GET", url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}))[0] == 401  # no such token
        async with running(reads):
            url = f"http://127.0.0.1:{open_port}"
            assert (await request("GET", url + "/api/alerts"))[0] == 200 and (await request("GET", url + "/metrics"))[0] == 401
            assert (await request("POST", url + "/api/senders/release", json={"sender": SENDER}))[0] == 401
            assert (await request("GET", url + "/api/senders", headers={"Sec-Fetch-Site": "cross-site"}))[0] == 403
            for host, status in ((f"localhost:{open_port}", 200), (f"127.0.0.1:{open_port}", 200), (f"[::1]:{open_port}", 200),
                                 (f"rebound.example:{open_port}", 403), ("127.0.0.1.nip.example", 403)):
                answer = await request("GET", url + "/api/alerts", headers={"Host": host, **HEADERS})
                assert answer[0] == status, (host, answer)
            status, body = await request("OPTIONS", url + "/api/senders/release", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
            assert (status, body["reason"]) == (403, "preflight")

    asyncio.run(main())


# --- the guard as a policy --------------------------------------------------------------------


@contextlib.contextmanager
def relay_in_thread(conf: cfg.RelayConfig) -> Any:
    """An embedded relay on an event loop of its own thread, for synchronous clients."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Future[None] | None = None

    async def serve() -> None:
        nonlocal stop
        stop = loop.create_future()
        async with running(conf):
            started.set()
            await stop

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()))
    thread.start()
    try:
        assert started.wait(30), "the relay did not start"
        yield
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(30)
        loop.close()


HOSTS = ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "127.9.9.9", "LOCALHOST", "evil.example:{port}", "127.0.0.1.evil.example", "[2001:db8::1]:80"]
ORIGINS = [None, "null", "https://evil.example", "http://127.0.0.1:{port}", "http://localhost:{port}"]
FETCH_SITES = [None, "none", "same-origin", "same-site", "cross-site"]
AUTHORIZATIONS = [None, "Bearer {token}", "bearer {token}", "Bearer  {token} ", "Bearer {read}", "Bearer {token}x", "Basic {token}", "Bearer"]
CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "Application/JSON", "text/plain", "text/plain;charset=UTF-8",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx", "application/json-patch+json"]


def expected(host: str, origin: str | None, site: str | None, authorization: str | None, content_type: str | None) -> tuple[int, str]:
    """What the admin API must answer a release with these headers (the sender is not
    restricted: an admitted request gets 404), written from the documentation, not the code."""
    name = host[1:host.index("]")] if host.startswith("[") else host.split(":")[0]
    if name.lower() != "localhost" and not (name.startswith("127.") and name.replace(".", "").isdigit() and name.count(".") == 3) and name != "::1":
        return 403, "bad-host"
    if site in ("cross-site", "same-site") or origin is not None or site not in (None, "none"):
        return 403, "cross-site"
    token = None
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
        if token not in (TOKEN, READ_TOKEN):
            return 401, "bad-credential"
    if token is None:
        return 401, "no-credential"
    if token == READ_TOKEN:
        return 403, "read-only"
    if content_type is None or content_type.split(";")[0].strip().lower() != "application/json":
        return 415, "content-type"
    return 404, "admitted"


def test_the_guard_admits_a_change_only_when_every_rule_holds(tmp_path: Path) -> None:
    """Hypothesis over the headers a client (or a browser) can send with a release: the answer is
    the documented one, and the route runs (404: not restricted) only for a loopback Host, no
    browser marker, an admin token and JSON."""
    import http.client

    port = free_port()
    data = relay_config(tmp_path / "spool").model_dump(mode="json")
    data.update(tomllib.loads(admin_toml(tmp_path, port)))
    data["limits"] = {"per_day": 5, "action": "block"}
    conf = cfg.from_dict(data)

    def mostly(good: list[Any], every: list[Any]) -> st.SearchStrategy[Any]:
        """Half of the time a value that passes its rule: so that all five pass often enough."""
        return st.sampled_from(good) | st.sampled_from(every)

    seen: set[str] = set()

    @given(
        mostly(HOSTS[:5], HOSTS), mostly([None], ORIGINS), mostly([None, "none"], FETCH_SITES),
        mostly(AUTHORIZATIONS[:3], AUTHORIZATIONS), mostly(CONTENT_TYPES[1:4], CONTENT_TYPES),
    )
    # The read-only token with every other rule passing is one draw in about seventy: without it
    # pinned, a run could miss that answer and fail the coverage check below by chance.
    @example(HOSTS[0], None, None, "Bearer {read}", CONTENT_TYPES[1])
    def check(host: str, origin: str | None, site: str | None, authorization: str | None, content_type: str | None) -> None:
        fill = {"port": str(port), "token": TOKEN, "read": READ_TOKEN}
        host = host.format(**fill)
        origin, authorization = (v.format(**fill) if v is not None else None for v in (origin, authorization))
        headers = {"Host": host, **{k: v for k, v in (("Origin", origin), ("Sec-Fetch-Site", site), ("Authorization", authorization),
                                                        ("Content-Type", content_type)) if v is not None}}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("POST", "/api/senders/release", body=json.dumps({"sender": SENDER}), headers=headers)
            response = connection.getresponse()
            body = json.loads(response.read())
        finally:
            connection.close()
        status, reason = expected(host, origin, site, authorization, content_type)
        seen.add(reason)
        assert response.status == status, (headers, body)
        assert body.get("reason", "admitted") == reason, (headers, body)
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]

    with relay_in_thread(conf):
        check()
    assert seen == {"bad-host", "cross-site", "bad-credential", "no-credential", "read-only", "content-type", "admitted"}


@pytest.mark.slow
def test_deliverypool_relay_with_a_public_admin_address_and_no_credential_refuses_to_start(tmp_path: Path) -> None:
    """The command itself, as an operator runs it (the in-process variants are above)."""
    import subprocess
    import sys

    listen = free_port()
    path = tmp_path / "relay.toml"
    path.write_text(crash_config(tmp_path / "spool", listen, free_port()) + '[admin]\naddress = "0.0.0.0:9425"\n')
    done = subprocess.run([sys.executable, "-m", "deliverypool.cli", "relay", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"deliverypool relay: {path}: admin.address: 0.0.0.0 is not a loopback address and the admin API has no credential: "
        "set admin.token_file (or admin.token_env, or admin.client_ca)"
    ]
    assert not (tmp_path / "spool").exists()  # it stopped before anything
