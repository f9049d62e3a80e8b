"""Routing by authentication, piece by piece (the end to end runs are tests/test_auth_relay.py
and tests/test_postfix_milter_auth.py): the invariant under any authentication facts and random
rule sets with relay pools (hypothesis), the SRS checks at RCPT and their reversal, the spool's
envelope sender and its migration, the Authentication-Results fields removed in the relay's
name, the metrics' closed labels."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deliverypool import REASONS, AuthFacts, Policy, PolicyError, classify
from deliverypool import config as cfg
from deliverypool.errors import MessageRefused
from deliverypool.ingress.srs import SRS_OUTCOMES, SrsBounces
from deliverypool.mail.headers import strip_authentication_results
from deliverypool.observe.events import AuthProblem, MessageAccepted, MessageAuth, SrsChecked
from deliverypool.observe.metrics import MetricsRecorder
from deliverypool.queue.schema import MIGRATIONS, SCHEMA_VERSION
from deliverypool.queue.spool import NewMessage, Spool
from deliverypool.auth import SPF_RESULTS, DMARC_RESULTS, SrsRewriter
from tests.messages import GLOBAL_DSN, ORDINARY
from tests.test_pools import TENANTS, rule_sets

NOW = 1_700_000_000
DAY = 86_400

auth_facts = st.builds(
    AuthFacts,
    spf=st.sampled_from([None, *SPF_RESULTS]),
    own_sender=st.booleans(),
    dmarc=st.sampled_from([None, *DMARC_RESULTS]),
    disposition=st.sampled_from(["none", "quarantine", "reject"]),
    unsure=st.booleans(),
    srs_bounce=st.booleans(),
)


@st.composite
def with_relay_pools(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, str], list[dict[str, Any]], str | None]:
    """test_pools' random pools and rules, plus relay-class pools (and rules naming them) or none."""
    pools, dedicated, rules = draw(rule_sets())
    relay = None
    if draw(st.booleans()):
        relay = "fwd"
        pools = {**pools, "fwd": "relay", "fwd2": "relay"}
        rules = rules + [{"pool": "fwd2", "sender_domains": ["b.example"]}]
    return pools, dedicated, rules, relay


@given(with_relay_pools(), auth_facts, st.sampled_from([ORDINARY[0], GLOBAL_DSN]), st.sampled_from(["s@a.example", "s@b.example", ""]),
       st.sampled_from([None, *TENANTS]), st.sampled_from(["high-risk", "normal"]))
def test_dmarc_failing_mail_never_gets_a_normal_or_relay_pool(
    rule_set: tuple[dict[str, str], dict[str, str], list[dict[str, Any]], str | None], facts: AuthFacts, body: bytes, sender: str,
    tenant: str | None, unknown: str,
) -> None:
    pools, dedicated, rules, relay = rule_set
    try:
        policy = Policy(pools=pools, pool_tenants=dedicated or None, rules=rules, relay_pool=relay, auth_unknown_pool=unknown)  # type: ignore[arg-type]
    except PolicyError:
        return  # a random rule set the core refuses (a dedicated pool named by the added rule)
    decision = classify(body, mail_from=sender, tenant=tenant, policy=policy, auth=facts)
    assert decision.auth == facts
    reasons = set(decision.reasons)
    assert reasons <= set(REASONS)
    # What the facts say, and nothing else from them.
    enforced = facts.dmarc == "fail" and facts.disposition != "none"
    assert ("dmarc-fail" in reasons) == (enforced and not facts.unsure)
    assert ("srs-bounce" in reasons) == facts.srs_bounce
    relayed = bool(sender) and not facts.own_sender
    assert ("relayed-spf-fail" in reasons) == (relayed and facts.spf not in (None, "pass", "temperror"))
    unknown_reason = (enforced and facts.unsure) or facts.dmarc == "temperror" or (relayed and facts.spf == "temperror")
    assert ("auth-unknown" in reasons) == unknown_reason
    # The invariant: dmarc-fail (and srs-bounce) mail leaves from a high-risk pool only.
    classes = {pools.get(p, "normal" if p == "normal" else "high-risk") for p in decision.recipient_pools or (decision.pool,)}
    if reasons & {"dmarc-fail", "srs-bounce"}:
        assert decision.pool_class == "high-risk" and classes == {"high-risk"}, (decision, pools)
    # Relayed mail never leaves from a normal pool; from a relay pool only when nothing made it high-risk.
    if "relayed-spf-fail" in reasons:
        assert decision.pool_class in ("relay", "high-risk")
        if relay is None:
            assert decision.pool_class == "high-risk"
    if decision.pool_class == "relay":
        assert reasons & {"relayed-spf-fail"} and not reasons & {"dmarc-fail", "srs-bounce", "dsn"}


# --- SRS at RCPT and at the end of data --------------------------------------------------------


def bounces(now: list[int]) -> SrsBounces:
    srs = SrsBounces(SrsRewriter("relay.test", [b"new", b"old"], max_age_days=21), clock=lambda: now[0])
    return srs


def test_srs_addresses_are_checked_at_rcpt_and_reversed_at_the_end_of_data() -> None:
    now = [NOW]
    srs = bounces(now)
    seen: list[tuple[str, str, str | None]] = []
    srs.on_outcome = lambda outcome, address, peer: seen.append((outcome, address, peer))
    address = srs.forward("alice@forwarded.example")
    assert address is not None and address.startswith("SRS0=") and address.endswith("@relay.test")
    assert srs.forward("") is None
    # Other domains are not its business; its own domain is, whatever the case.
    assert srs.rcpt_reply("bob@dest.test") is None
    assert srs.rcpt_reply(address.upper().replace("@RELAY.TEST", "@Relay.Test"), "192.0.2.1") == "250 2.1.5 OK"
    forged = "SRS0=AAAA=" + address.split("=", 2)[2]
    assert srs.rcpt_reply(forged) == f"550 5.1.1 <{forged}>: invalid SRS address (bad-hash)"
    assert srs.rcpt_reply("postmaster@relay.test") == "550 5.1.1 <postmaster@relay.test>: invalid SRS address (not-srs)"
    assert srs.reverse(("carol@x.test", address)) == (("carol@x.test", "alice@forwarded.example"), True)
    assert srs.reverse(("carol@x.test",)) == (("carol@x.test",), False)
    assert srs.only([address, address]) and not srs.only([address, "carol@x.test"]) and not srs.only([])
    # Expired between RCPT and DATA: a 4xx, so that the client comes back and gets the 550.
    now[0] += 22 * DAY
    with pytest.raises(MessageRefused) as refused:
        srs.reverse((address,))
    assert refused.value.reply.startswith("450 4.1.1") and "(expired)" in refused.value.reply
    assert srs.rcpt_reply(address) == f"550 5.1.1 <{address}>: invalid SRS address (expired)"
    assert [o for o, _, _ in seen] == ["reversed", "bad-hash", "not-srs", "expired"]
    assert seen[0][2] == "192.0.2.1"
    assert {o for o, _, _ in seen} <= set(SRS_OUTCOMES)


# --- the spool ----------------------------------------------------------------------------------


def test_the_spool_keeps_the_envelope_sender_apart_and_migrates_old_spools(tmp_path: Path) -> None:
    # A spool of the previous version, with a message waiting.
    old = tmp_path / "old"
    old.mkdir()
    conn = sqlite3.connect(old / "spool.sqlite3", isolation_level=None)
    for script in MIGRATIONS[: SCHEMA_VERSION - 1]:
        for statement in filter(None, (s.strip() for s in script.split(";"))):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    conn.execute("INSERT INTO messages (queue_id, mail_from, pool, reasons, received_at, size, body) VALUES ('Q1', 'a@b.example', 'normal', '', 0, 3, x'6869')")
    conn.execute("INSERT INTO recipients (message, address, state, next_attempt, updated_at) VALUES (1, 'x@y.example', 'queued', 0, 0)")
    conn.close()

    async def main() -> tuple[list[Any], list[Any]]:
        async with Spool(old) as spool:
            migrated = list(await spool.pending())
        async with Spool(tmp_path / "new") as spool:
            job = await spool.accept(NewMessage("alice@forwarded.example", ("bob@dest.test",), b"Subject: x\r\n\r\nhi\r\n", "relay",
                                                ("relayed-spf-fail",), envelope_from="SRS0=abcd=JZ=forwarded.example=alice@relay.test"))
            assert (job.sender, job.mail_from) == ("SRS0=abcd=JZ=forwarded.example=alice@relay.test", "alice@forwarded.example")
        async with Spool(tmp_path / "new") as spool:
            return migrated, list(await spool.pending())

    migrated, recovered = asyncio.run(main())
    assert [(j.queue_id, j.sender, j.envelope_from) for j in migrated] == [("Q1", "a@b.example", None)]
    [job] = recovered
    assert (job.mail_from, job.sender, job.pool) == ("alice@forwarded.example", "SRS0=abcd=JZ=forwarded.example=alice@relay.test", "relay")


# --- the Authentication-Results field -----------------------------------------------------------


def test_only_the_fields_in_the_relays_name_are_removed() -> None:
    message = (
        b"Authentication-Results: Relay.Test;\r\n\tspf=pass smtp.mailfrom=a@b\r\n"
        b"Authentication-Results: mx.other.test; dkim=pass\r\n"
        b"Authentication-Results: relay.test.evil; spf=pass\r\n"
        b"Subject: x\r\n\r\nAuthentication-Results: relay.test; in the body\r\n"
    )
    stripped, removed = strip_authentication_results(message, "relay.test")
    assert removed == 1
    assert stripped == message.replace(b"Authentication-Results: Relay.Test;\r\n\tspf=pass smtp.mailfrom=a@b\r\n", b"")


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_of_authentication_come_from_closed_sets(tmp_path: Path) -> None:
    conf = cfg.loads('[pools.normal]\nsource_addresses = ["127.0.0.2"]\n[pools.high-risk]\nsource_addresses = ["127.0.0.3"]\n')
    recorder = MetricsRecorder(conf)

    def accepted(auth: MessageAuth | None) -> MessageAccepted:
        return MessageAccepted(0.0, "Q", None, "normal", (), None, 1, None, auth=auth)

    recorder(accepted(MessageAuth("fail", "fail", "reject", True)))
    recorder(accepted(MessageAuth("made-up", "made-up", "made-up", False)))
    recorder(accepted(MessageAuth(None, None, "none", False)))
    recorder(accepted(None))
    recorder(SrsChecked(0.0, "bad-hash", "SRS0=x@relay.test", None))
    recorder(SrsChecked(0.0, "whatever", "x@relay.test", None))
    recorder(AuthProblem(0.0, "Q", "acme", "own-domain-no-key", "acme.example"))
    counts, _ = recorder.take()
    found = {(name, labels): value for (name, labels), value in counts.items() if "spf" in name or "dmarc" in name or "srs" in name or "auth" in name}
    assert found == {
        ("deliverypool_spf_results_total", (("result", "fail"),)): 1,
        ("deliverypool_spf_results_total", (("result", "other"),)): 1,
        ("deliverypool_dmarc_results_total", (("result", "fail"), ("disposition", "reject"))): 1,
        ("deliverypool_dmarc_results_total", (("result", "other"), ("disposition", "other"))): 1,
        ("deliverypool_srs_total", (("outcome", "rewritten"),)): 1,
        ("deliverypool_srs_total", (("outcome", "bad-hash"),)): 1,
        ("deliverypool_srs_total", (("outcome", "other"),)): 1,
        ("deliverypool_auth_problems_total", (("problem", "own-domain-no-key"),)): 1,
    }


def test_an_srs_bounce_leaves_high_risk_without_auth_enabled_too() -> None:
    """SRS alone (bounces to addresses written before [auth] was turned off): the reason still
    makes the bounce high-risk."""
    from deliverypool.routing.router import Router
    from deliverypool.routing.scores import ScoredRouter, Submission

    router = ScoredRouter(Router(None))
    submission = Submission("", ("alice@forwarded.example",), client_address="192.0.2.1")
    ordinary = asyncio.run(router.route(ORDINARY[0], submission))
    bounce = asyncio.run(router.route(ORDINARY[0], submission, srs_bounce=True))
    assert (ordinary.pool, ordinary.reasons, ordinary.auth) == ("normal", (), None)
    assert (bounce.pool, bounce.reasons) == ("high-risk", ("srs-bounce",))


def test_sighup_rotates_the_srs_keys_and_a_broken_file_keeps_them(tmp_path: Path) -> None:
    """Relay.reload (SIGHUP) takes the SRS key file again: new addresses are signed with the new
    first key, addresses made before still reverse while their key is listed and stop when it
    is gone; a key file that cannot be read keeps the keys in use; another SRS domain needs a
    restart and changes nothing."""
    from deliverypool.app import Relay

    keys, path = tmp_path / "srs.keys", tmp_path / "relay.toml"

    def write(domain: str = "srs.relay.test") -> None:
        path.write_text(
            f'[spool]\ndirectory = "{tmp_path / "spool"}"\n[dns]\ncheck_sender_domain = false\n'
            '[pools.normal]\nsource_addresses = [{ address = "127.0.0.1" }]\n'
            '[pools.high-risk]\nsource_addresses = [{ address = "127.0.0.2" }]\n'
            f'[auth.srs]\ndomain = "{domain}"\nkey_file = "srs.keys"\n'
        )

    keys.write_text("first\n")
    write()
    relay = Relay(cfg.load(path))
    srs = relay.srs_bounces
    assert srs is not None
    before = srs.forward("alice@forwarded.example")
    assert before is not None and srs.rcpt_reply(before) == "250 2.1.5 OK"

    keys.write_text("second\nfirst\n")
    assert asyncio.run(relay.reload(path))
    after = srs.forward("alice@forwarded.example")
    assert after is not None and after != before, "the new first key signs"
    assert srs.rcpt_reply(before) == srs.rcpt_reply(after) == "250 2.1.5 OK", "the old key still verifies"

    keys.unlink()
    assert not asyncio.run(relay.reload(path)), "an unreadable key file: refused"
    assert srs.forward("alice@forwarded.example") == after and srs.rcpt_reply(before) == "250 2.1.5 OK"

    keys.write_text("second\n")
    write(domain="other.relay.test")
    assert asyncio.run(relay.reload(path))
    assert srs.domain == "srs.relay.test" and srs.rcpt_reply(before) == "250 2.1.5 OK", "another domain: nothing changed"

    write()
    assert asyncio.run(relay.reload(path))
    assert srs.rcpt_reply(before) == f"550 5.1.1 <{before}>: invalid SRS address (bad-hash)", "the first key is gone"
    assert srs.rcpt_reply(after) == "250 2.1.5 OK"
