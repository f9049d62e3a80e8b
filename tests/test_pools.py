"""Pools with a class and the ordered routing rules (rust/pools.rs, routing/pools.py; docs/concepts/pools.md):
the invariant under random rule sets (hypothesis against a reference model written here), the
refusals at load with their keys, the warm-up counters shared by workers, the spool's
per-recipient pools, and the blocklist watch by class."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from deliverypool import POOL_CLASSES, REASONS, REPORT_KINDS, Policy, PolicyError, classify, classify_many
from deliverypool import config as cfg
from deliverypool.outbound.sources import SourcePicker, WarmupLedger
from deliverypool.queue.schema import MIGRATIONS
from deliverypool.queue.listing import listing
from deliverypool.queue.spool import NewMessage, Spool
from deliverypool.routing.pools import domain_forms, policy_from_config
from deliverypool.state.warmup import CLAIM_SHARE, SqliteWarmupCounter, granted
from deliverypool.watch.dnsbl import BlocklistWatch
from tests.messages import GLOBAL_DSN, MDN, ORDINARY

# --- the invariant, against a reference model ---------------------------------------------

TENANTS = ["acme", "globex", "initech"]
DOMAINS = ["a.example", "b.example", "mail.a.example", "gmail.test", "x.gmail.test"]
PATTERNS = ["a.example", "*.a.example", "gmail.test", "*.gmail.test", "b.example"]
STREAMS = ["bulk", "transactional", "news"]
# Reasons that always make mail high-risk under the default policy options.
ALWAYS_HIGH_RISK = {"dsn", "spam-score", "sender-domain-no-records", "sender-domain-unknown", "unscannable", "dmarc-fail", "auth-unknown", "srs-bounce"}
# Reasons of the relay class: such mail goes the high-risk way when there is no relay pool.
RELAY_REASONS = {"relayed-spf-fail"}


def pattern_matches(pattern: str, domain: str) -> bool:
    if pattern.startswith("*."):
        return domain.endswith("." + pattern[2:])
    return domain == pattern


@st.composite
def rule_sets(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, str], list[dict[str, Any]]]:
    """Pools (name -> class, some a tenant's) and rules naming them with random conditions; a
    rule that could only match high-risk mail names a high-risk pool, and a dedicated pool is
    named by rules of its tenant alone (what the core requires)."""
    pools = {"normal": "normal", "high-risk": "high-risk"}
    for i in range(draw(st.integers(0, 4))):
        pools[f"p{i}"] = draw(st.sampled_from(["normal", "high-risk"]))
    dedicated = {name: draw(st.sampled_from(TENANTS)) for name in pools if name.startswith("p") and draw(st.booleans())}
    rules: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 8))):
        rule: dict[str, Any] = {"pool": draw(st.sampled_from(sorted(pools)))}
        if draw(st.booleans()):
            rule["tenants"] = draw(st.lists(st.sampled_from(TENANTS), min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):
            rule["sender_domains"] = draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):
            rule["recipient_domains"] = draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):
            rule["header_values"] = draw(st.lists(st.sampled_from(STREAMS), min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):
            rule["min_size"] = draw(st.integers(0, 400))
        if draw(st.booleans()):
            rule["max_size"] = draw(st.integers(400, 2000))
        if draw(st.booleans()):
            rule["reasons"] = draw(st.lists(st.sampled_from(REASONS), min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):
            rule["report_kinds"] = draw(st.lists(st.sampled_from(REPORT_KINDS), min_size=1, max_size=2, unique=True))
        pool = rule["pool"]
        only_risky = set(rule.get("reasons", ["none"])) <= ALWAYS_HIGH_RISK | RELAY_REASONS or set(rule.get("report_kinds", ["none"])) == {"dsn"}
        if only_risky and pools[pool] == "normal":
            rule["pool"] = pool = "high-risk"
        if pool in dedicated:
            rule["tenants"] = [dedicated[pool]]
        rules.append(rule)
    return pools, dedicated, rules


def expected_route(
    pools: dict[str, str], rules: list[dict[str, Any]], decision_class: str, reasons: tuple[str, ...], report_kind: str | None,
    tenant: str | None, sender_domain: str, recipient_domain: str | None, header: str | None, size: int,
) -> tuple[str, int | None]:
    """The reference model: the first rule of the message's class whose conditions all hold."""
    for index, rule in enumerate(rules):
        if pools[rule["pool"]] != decision_class:
            continue
        checks = [
            "tenants" not in rule or tenant in rule["tenants"],
            "sender_domains" not in rule or any(pattern_matches(p, sender_domain) for p in rule["sender_domains"]),
            "recipient_domains" not in rule or (recipient_domain is not None and any(pattern_matches(p, recipient_domain) for p in rule["recipient_domains"])),
            "header_values" not in rule or header in rule["header_values"],
            size >= rule.get("min_size", 0) and size <= rule.get("max_size", 1 << 62),
            "reasons" not in rule or bool(set(rule["reasons"]) & set(reasons)),
            "report_kinds" not in rule or report_kind in rule["report_kinds"],
        ]
        if all(checks):
            return rule["pool"], index
    return ("high-risk" if decision_class == "high-risk" else "normal"), None


MESSAGES = [ORDINARY[0], ORDINARY[4], GLOBAL_DSN, MDN]


@given(
    rule_sets(),
    st.sampled_from(MESSAGES),
    st.sampled_from([None, *TENANTS]),
    st.sampled_from(DOMAINS),
    st.lists(st.sampled_from(DOMAINS), min_size=1, max_size=4),
    st.sampled_from([None, *STREAMS]),
    st.booleans(),
    st.sampled_from([None, 1.0, 9.0]),
    st.sampled_from([None, "has-records", "no-records", "unknown"]),
)
def test_high_risk_mail_never_gets_a_normal_pool_and_the_first_matching_rule_wins(
    rule_set: tuple[dict[str, str], dict[str, str], list[dict[str, Any]]],
    body: bytes,
    tenant: str | None,
    sender_domain: str,
    recipient_domains: list[str],
    stream: str | None,
    trusted: bool,
    score: float | None,
    status: str | None,
) -> None:
    pools, dedicated, rules = rule_set
    policy = Policy(pools=pools, pool_tenants=dedicated or None, rules=rules, route_header="X-Stream")  # type: ignore[arg-type]
    message = (f"X-Stream: {stream}\r\n".encode() if stream else b"") + body
    recipients = [f"r{i}@{d}" for i, d in enumerate(recipient_domains)]
    decision = classify(
        message, mail_from=f"s@{sender_domain}", score=score, tenant=tenant, policy=policy, sender_domain=status,  # type: ignore[arg-type]
        recipients=recipients, untrusted_route_header=not trusted,
    )
    risky = decision.high_risk
    assert risky == bool(set(decision.reasons) & ALWAYS_HIGH_RISK)
    high_risk_pools = {name for name, c in pools.items() if c == "high-risk"}
    # The invariant: mail with a high-risk reason only ever gets high-risk pools.
    assert (decision.pool in high_risk_pools) == risky
    assert all((pool in high_risk_pools) == risky for pool in decision.recipient_pools)
    assert decision.pool_class == ("high-risk" if risky else "normal")
    # A tenant's dedicated pool carries only that tenant's mail.
    for pool in decision.recipient_pools:
        assert pool not in dedicated or dedicated[pool] == tenant
    # Each recipient's pool is the first matching rule's, else its class's default.
    header = stream if trusted else None
    expected = [
        expected_route(pools, rules, decision.pool_class, decision.reasons, decision.report_kind, tenant, sender_domain, domain, header, len(message))
        for domain in (recipient_domains if policy.per_recipient else [None])
    ]
    if policy.per_recipient:
        assert list(decision.recipient_pools) == [pool for pool, _ in expected]
    else:
        assert decision.recipient_pools == (decision.pool,) * len(recipients)
    pool, rule = expected[0]
    assert decision.pool == pool
    assert decision.rule == (None if rule is None else policy.rules[rule])
    # A batch decides the same.
    [batch] = classify_many([message], mail_from=[f"s@{sender_domain}"], score=[score], tenant=[tenant], policy=policy,
                            sender_domain=[status], recipients=[recipients], untrusted_route_header=not trusted)  # type: ignore[list-item]
    assert (batch.pool, batch.rule, batch.recipient_pools) == (decision.pool, decision.rule, decision.recipient_pools)


def test_the_default_policy_and_two_pool_policies_decide_as_before() -> None:
    assert POOL_CLASSES == ("normal", "high-risk", "relay")
    policy = Policy(normal_pool="clean", high_risk_pool="quarantine")
    assert policy.pools == {"clean": "normal", "quarantine": "high-risk"} and policy.rules == () and not policy.per_recipient
    decision = classify(GLOBAL_DSN, policy=policy, recipients=["a@b.example", "c@d.example"])
    assert (decision.pool, decision.pool_class, decision.rule, decision.recipient_pools) == ("quarantine", "high-risk", None, ("quarantine",) * 2)
    assert classify(ORDINARY[0]).recipient_pools == ()


def test_the_route_header_counts_once_and_only_when_trusted() -> None:
    policy = Policy(pools={"normal": "normal", "high-risk": "high-risk", "bulk": "normal"}, route_header="X-Stream",
                    rules=[{"name": "bulk", "header_values": ["Bulk"], "pool": "bulk"}])
    once = b"X-Stream: bulk\r\n" + ORDINARY[0]
    assert classify(once, policy=policy).rule == "bulk"
    assert classify(once, policy=policy, untrusted_route_header=True).rule is None
    assert classify(b"X-Stream: bulk\r\n" + once, policy=policy).rule is None
    assert classify(once, policy=policy, score=9.0).pool == "high-risk"


def test_refusals_name_the_policy_key() -> None:
    pools = {"normal": "normal", "high-risk": "high-risk", "out": "normal"}
    cases: list[tuple[dict[str, Any], tuple[Any, ...], str]] = [
        ({"rules": [{"pool": "nope"}]}, ("rules", 0, "pool"), "no pool named 'nope'"),
        ({"rules": [{"pool": "out", "reasons": ["spam-score"]}]}, ("rules", 0, "pool"), "matches only high-risk mail"),
        ({"rules": [{"pool": "out", "colour": "red"}]}, ("rules", 0, "pool"), "unknown key 'colour'"),
        ({"rules": [{"pool": "out", "tenants": "acme"}]}, ("rules", 0, "tenants"), "not a string"),
        ({"rules": [{"pool": "out", "header_values": ["x"]}]}, ("rules", 0, "header_values"), "route_header"),
        ({"normal_pool": "gone"}, ("normal_pool",), "no pool named 'gone'"),
        ({"pool_tenants": {"out": "acme"}, "rules": [{"pool": "out"}]}, ("rules", 0, "pool"), "dedicated to tenant 'acme'"),
    ]
    for kwargs, key, problem in cases:
        with pytest.raises(PolicyError) as error:
            Policy(pools=pools, **kwargs)
        assert error.value.key == key, kwargs
        assert error.value.problem is not None and problem in error.value.problem, (kwargs, error.value.problem)
    with pytest.raises(PolicyError) as error:
        Policy(pools={"normal": "normal", "high-risk": "bulk"})  # type: ignore[dict-item]
    assert error.value.key == ("pools",)
    assert PolicyError("x").key is None


# --- the configuration ------------------------------------------------------------------------

BASE = """
[tenants.acme]
networks = ["10.1.0.0/16"]
[tenants.globex]
networks = ["10.2.0.0/16"]
[pools.normal]
source_addresses = ["192.0.2.10"]
[pools.high-risk]
source_addresses = ["192.0.2.20"]
[pools.acme-out]
tenant = "acme"
source_addresses = ["192.0.2.30"]
[pools.acme-risky]
class = "high-risk"
tenant = "acme"
source_addresses = ["192.0.2.31"]
"""
ACME_RULES = """
[[policy.rules]]
name = "acme"
tenants = ["acme"]
pool = "acme-out"
[[policy.rules]]
name = "acme-risky"
tenants = ["acme"]
pool = "acme-risky"
"""


@pytest.mark.parametrize(
    ("change", "extra", "message"),
    [
        # A risky rule to a normal pool.
        (None, '[[policy.rules]]\nreasons = ["dsn"]\npool = "normal"\n',
         'policy.rules[0].pool: \'normal\' is a normal pool, but the rule (reasons = ["dsn"]) matches only high-risk mail, which never leaves from a normal pool: name a high-risk pool'),
        # An unknown pool.
        (None, '[[policy.rules]]\npool = "acme-bulk"\n', "policy.rules[0].pool: no pool named 'acme-bulk' (defined: normal, high-risk, acme-out, acme-risky)"),
        # No default for a class.
        (("[pools.high-risk]", '[pools.shared-risky]\nclass = "high-risk"'), ACME_RULES,
         "policy.high_risk_pool: no pool named 'high-risk' (defined: normal, shared-risky, acme-out, acme-risky), and no rule without conditions "
         "names a high-risk pool: high-risk mail that no rule matches needs a default pool"),
        # A duplicate address across pools.
        (('["192.0.2.31"]', '["192.0.2.10"]'), ACME_RULES,
         "pools.acme-risky.source_addresses[0]: 192.0.2.10 is also a source address of the normal pool 'normal': no address belongs to two pools"),
        # A tenant's pool for everybody.
        (None, '[[policy.rules]]\npool = "acme-out"\n', "policy.rules[0].pool: 'acme-out' is dedicated to tenant 'acme': the rule must have tenants = [\"acme\"]"),
        (None, '[[policy.rules]]\ntenants = ["globex"]\npool = "acme-out"\n', "policy.rules[0].pool: 'acme-out' is dedicated to tenant 'acme': the rule must have tenants = [\"acme\"]"),
        (None, '[[policy.rules]]\ntenants = ["hooli"]\npool = "normal"\n', "policy.rules[0].tenants[0]: no tenant named 'hooli' (defined: acme, globex)"),
        (('tenant = "acme"\nsource_addresses = ["192.0.2.30"]', 'tenant = "hooli"\nsource_addresses = ["192.0.2.30"]'), "", "pools.acme-out.tenant: no tenant named 'hooli' (defined: acme, globex)"),
        (None, '[[policy.rules]]\nreasons = ["bounce"]\npool = "high-risk"\n', "policy.rules[0].reasons[0]: not a reason: 'bounce' (expected one of " + ", ".join(REASONS) + ")"),
        (None, '[[policy.rules]]\nrecipient_domains = ["*"]\npool = "normal"\n', "policy.rules[0].recipient_domains[0]: not a domain or *.domain: '*'"),
        (None, '[[policy.rules]]\nheader_values = ["bulk"]\npool = "normal"\n', "policy.rules[0].header_values: set policy.route_header: the header these values are of"),
        (None, '[[policy.rules]]\nmin_size = "2MB"\nmax_size = "1MB"\npool = "normal"\n', "policy.rules[0].max_size: must not be below min_size (2097152 bytes)"),
        (None, '[[policy.rules]]\nname = "x y"\npool = "normal"\n', "policy.rules[0].name: not a rule name (1-63 letters, digits, '_', '.' or '-'): 'x y'"),
        (None, '[[policy.rules]]\nname = "a"\npool = "normal"\n[[policy.rules]]\nname = "a"\npool = "high-risk"\n', "policy.rules[1].name: 'a' also names rules[0]"),
        (None, '[policy]\nrelay_pool = "relay"\n', "policy.relay_pool: no pool named 'relay' (defined: normal, high-risk, acme-out, acme-risky)"),
        (None, '[pools.fwd]\nclass = "relay"\nsource_addresses = ["192.0.2.40"]\n',
         "policy.relay_pool: no relay_pool is set, and no rule without conditions names a relay pool: relay mail that no rule matches needs a default pool"),
        (None, '[policy]\nnormal_pool = "acme-out"\n', "policy.normal_pool: 'acme-out' is dedicated to tenant 'acme': a default pool is everybody's"),
        (None, '[pools.x]\nclass = "bulk"\nsource_addresses = ["192.0.2.50"]\n', "pools.x.class: must be 'normal', 'high-risk' or 'relay', got 'bulk'"),
        (None, '[pools.x]\nsource_addresses = [{ address = "192.0.2.50", warmup = { start = 2025-01-01, per_day = [10, 5] } }]\n',
         "pools.x.source_addresses[0].warmup.per_day[1]: must not be below the day before (10): a warm-up rises"),
        (None, '[pools.x]\nsource_addresses = [{ address = "192.0.2.50", warmup = { start = 2025-01-01T10:00:00, per_day = [10] } }]\n',
         "pools.x.source_addresses[0].warmup.start: must be a date without a time (like 2025-06-01), got '2025-01-01T10:00:00'"),
    ],
)
def test_invalid_rule_sets_are_refused_at_load_with_one_line_naming_the_key(change: tuple[str, str] | None, extra: str, message: str) -> None:
    text = BASE if change is None else BASE.replace(*change)
    assert change is None or text != BASE
    with pytest.raises(cfg.ConfigError) as error:
        cfg.loads(text + extra)
    assert str(error.value) == message


def test_a_configuration_with_rules_and_the_classes_it_implies() -> None:
    conf = cfg.loads(
        BASE
        + ACME_RULES
        + '[[policy.rules]]\nrecipient_domains = ["Gmail.test", "*.bücher.example"]\npool = "normal"\n'
        + '[pools.relay-out]\nsource_addresses = ["192.0.2.60"]\n[policy]\nrelay_pool = "relay-out"\nroute_header = "X-Stream"\n'
    )
    assert {name: pool.pool_class for name, pool in conf.pools.items()} == {
        "normal": "normal", "high-risk": "high-risk", "acme-out": "normal", "acme-risky": "high-risk", "relay-out": "relay",
    }
    assert conf.policy.rules[2].recipient_domains == ("gmail.test", "*.xn--bcher-kva.example")
    assert domain_forms("*.xn--bcher-kva.example") == ("*.xn--bcher-kva.example", "*.bücher.example")
    assert domain_forms("a.example") == ("a.example",)
    policy = policy_from_config(conf)
    assert policy.rules == ("acme", "acme-risky", "rules[2]") and policy.per_recipient and policy.relay_pool == "relay-out"
    assert policy.pool_tenants == {"acme-out": "acme", "acme-risky": "acme"}
    decision = classify(ORDINARY[0], tenant="globex", policy=policy, recipients=["a@x.bücher.example", "b@other.example"])
    assert decision.recipient_pools == ("normal", "normal") and decision.rule == "rules[2]"
    # The pool's class is kept through a dump and a load.
    dumped = conf.model_dump(mode="json")
    assert dumped["pools"]["acme-risky"]["class"] == "high-risk"
    assert cfg.from_dict(dumped) == conf


# --- warm-up ---------------------------------------------------------------------------------

WARM = cfg.WarmupConfig(start=datetime.date(2025, 6, 1), per_day=(2, 5, 50))


def test_a_warmup_schedule_rises_by_day_then_ends() -> None:
    assert [WARM.cap(datetime.date(2025, 6, d)) for d in (1, 2, 3, 4)] == [2, 5, 50, None]
    assert WARM.cap(datetime.date(2025, 5, 31)) == 0
    assert [granted(64, cap, count) for cap, count in ((2, 0), (2, 1), (2, 2), (1000, 0), (1000, 990), (10, 11))] == [1, 1, 0, 64, 2, 0]
    assert CLAIM_SHARE == 4


def test_workers_sharing_the_state_database_never_send_more_than_the_cap(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], int]:
        counters = [SqliteWarmupCounter(tmp_path / "state.sqlite3") for _ in range(3)]
        for counter in counters:
            await counter.open()
        try:
            grants = await asyncio.gather(*(c.claim("192.0.2.7", 20000, 64, 100) for c in counters for _ in range(40)))
            await counters[0].release("192.0.2.7", 20000, 5)
            return list(grants), await counters[1].sent("192.0.2.7", 20000)
        finally:
            for counter in counters:
                await counter.close()

    grants, sent = asyncio.run(main())
    assert sum(grants) == 100 and sent == 95
    assert max(grants) <= 25  # a quarter of what is left, at most


def test_nodes_sharing_redis_never_send_more_than_the_cap_and_an_unreachable_redis_sends_nothing() -> None:
    from deliverypool.state.warmup import RedisWarmupCounter
    from tests.redis_server import redis_server

    async def main(url: str, server: Any) -> tuple[list[int], int, bool]:
        counters = [RedisWarmupCounter(url, prefix="t:", timeout=2.0) for _ in range(3)]
        for counter in counters:
            await counter.open()
        try:
            grants = await asyncio.gather(*(c.claim("192.0.2.7", 20000, 64, 100) for c in counters for _ in range(40)))
            await counters[0].release("192.0.2.7", 20000, 5)
            sent = await counters[1].sent("192.0.2.7", 20000)
            server.kill()
            # Redis gone: the ledger leaves the warming-up address out rather than guess.
            ledger = WarmupLedger({ipaddress.ip_address("192.0.2.7"): WARM}, RedisWarmupCounter(url, timeout=0.2),
                                  clock=lambda: datetime.datetime(2025, 6, 1, 12, tzinfo=datetime.timezone.utc).timestamp())
            await ledger.start()
            usable = ledger.available(ipaddress.ip_address("192.0.2.7"))
            await ledger.stop()
            return list(grants), sent, usable
        finally:
            for counter in counters:
                await counter.close()

    with redis_server() as server:
        grants, sent, usable = asyncio.run(main(server.url, server))
    assert sum(grants) == 100 and sent == 95 and max(grants) <= 25
    assert usable is False


def test_the_ledger_leaves_an_address_out_at_its_cap_and_the_rotation_moves_its_share(tmp_path: Path) -> None:
    now = datetime.datetime(2025, 6, 1, 12, tzinfo=datetime.timezone.utc).timestamp()
    warm, other = ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("192.0.2.8")
    pool = cfg.loads(
        '[pools.normal]\nsource_addresses = [{ address = "192.0.2.7", warmup = { start = 2025-06-01, per_day = [3] } }, "192.0.2.8"]\n'
        '[pools.high-risk]\nsource_addresses = ["192.0.2.9"]\n'
    ).pools["normal"]
    clock = [now]

    async def main() -> list[str]:
        ledger = WarmupLedger({warm: WARM.model_copy(update={"per_day": (3,)})}, SqliteWarmupCounter(tmp_path / "state.sqlite3"), clock=lambda: clock[0])
        picker = SourcePicker(ledger)
        await ledger.start()
        picked = []
        for _ in range(10):
            source = picker.pick(pool, 4, lambda pool, address: False)
            assert source is not None
            if picker.take(str(source.address)):
                picked.append(str(source.address))
            await asyncio.sleep(0.01)  # a claim in the background
        clock[0] += 86400  # the next day: no cap any more (the schedule had one day)
        picked.append("|")
        for _ in range(4):
            source = picker.pick(pool, 4, lambda pool, address: False)
            assert source is not None and picker.take(str(source.address))
            picked.append(str(source.address))
        await ledger.stop()
        return picked

    picked = asyncio.run(main())
    today, tomorrow = picked[: picked.index("|")], picked[picked.index("|") + 1 :]
    assert today.count(str(warm)) == 3 and today.count(str(other)) == 7
    assert sorted(tomorrow) == [str(warm), str(warm), str(other), str(other)]
    assert warm.version == other.version == 4


def test_weighted_rotation_shares_connections_by_weight_exactly() -> None:
    pool = cfg.loads(
        '[pools.normal]\nsource_addresses = ["192.0.2.1", { address = "192.0.2.2", weight = 3 }, "2001:db8::1"]\n'
        '[pools.high-risk]\nsource_addresses = ["192.0.2.9"]\n'
    ).pools["normal"]
    picker = SourcePicker()
    order = [str(picker.pick(pool, 4, lambda p, a: False).address) for _ in range(8)]  # type: ignore[union-attr]
    assert order == ["192.0.2.2", "192.0.2.1", "192.0.2.2", "192.0.2.2"] * 2
    # A drained address's share goes to the others; never another family's or pool's.
    assert {str(picker.pick(pool, 4, lambda p, a: a == "192.0.2.2").address) for _ in range(4)} == {"192.0.2.1"}  # type: ignore[union-attr]
    assert picker.pick(pool, 4, lambda p, a: True) is None
    assert str(picker.pick(pool, 6, lambda p, a: False).address) == "2001:db8::1"  # type: ignore[union-attr]


# --- the spool and the watch -------------------------------------------------------------------


def test_the_spool_keeps_each_recipients_pool_and_recovers_a_job_per_pool(tmp_path: Path) -> None:
    async def main() -> list[Any]:
        async with Spool(tmp_path) as spool:
            job = await spool.accept(NewMessage("a@b.example", ("x@gmail.test", "y@c.example", "z@gmail.test"), b"Subject: x\r\n\r\nhi\r\n", "normal",
                                                recipient_pools=("gmail", "normal", "gmail")))
            single = await spool.accept(NewMessage("a@b.example", ("w@c.example",), b"Subject: y\r\n\r\nhi\r\n", "normal", recipient_pools=("normal",)))
        assert job.by_pool() == {"gmail": ((1, "x@gmail.test"), (3, "z@gmail.test")), "normal": ((2, "y@c.example"),)}
        assert single.recipient_pools == () and single.by_pool() == {"normal": ((4, "w@c.example"),)}
        async with Spool(tmp_path) as spool:
            return await spool.pending()

    pending = asyncio.run(main())
    assert sorted((j.pool, tuple(a for _, a in j.recipients)) for j in pending) == [
        ("gmail", ("x@gmail.test", "z@gmail.test")), ("normal", ("w@c.example",)), ("normal", ("y@c.example",)),
    ]
    assert [(row.address, row.pool) for row in listing(tmp_path)] == [
        ("x@gmail.test", "gmail"), ("y@c.example", "normal"), ("z@gmail.test", "gmail"), ("w@c.example", "normal"),
    ]
    conn = sqlite3.connect(tmp_path / "spool.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("SELECT pool FROM recipients ORDER BY id").fetchall() == [("gmail",), (None,), ("gmail",), (None,)]


def test_a_listed_address_of_a_tenants_high_risk_pool_is_expected_and_kept(tmp_path: Path) -> None:
    conf = cfg.loads(BASE + ACME_RULES + '[dnsbl]\nzones = ["bl.test"]\n')
    watch = BlocklistWatch(conf, state_path=tmp_path / "state.sqlite3", leader=False, run_loops=False)
    drains = {address: source.drains for address, source in watch.sources.items()}
    assert drains == {"192.0.2.10": ("normal",), "192.0.2.20": (), "192.0.2.30": ("acme-out",), "192.0.2.31": ()}


def test_the_example_of_the_pools_page_loads_and_routes_as_it_says() -> None:
    import json
    import re

    import jsonschema

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    page = Path(__file__).resolve().parents[1] / "docs" / "concepts" / "pools.md"
    if not page.is_file():
        pytest.skip("no docs/ beside the tests (an installed copy of the tests)")
    [example] = re.findall(r"```toml\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    schema = json.loads((page.parents[1] / "relay.schema.json").read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(tomllib.loads(example))) == []
    conf = cfg.loads(example)
    policy = policy_from_config(conf)
    assert policy.pools["bounces"] == policy.pools["acme-risky"] == "high-risk"
    assert classify(ORDINARY[0], tenant="acme", policy=policy, recipients=["a@gmail.com"]).recipient_pools == ("acme-out",)
    assert classify(GLOBAL_DSN, tenant="acme", policy=policy, mail_from="").pool == "acme-risky"
    assert classify(GLOBAL_DSN, tenant="globex", policy=policy, mail_from="").pool == "bounces"
    split = classify(ORDINARY[0], tenant="globex", policy=policy, recipients=["a@gmail.com", "b@example.org"])
    assert split.recipient_pools == ("gmail", "normal")
    stream = b"X-Stream: Newsletter\r\n" + ORDINARY[0]
    assert classify(stream, tenant="globex", policy=policy).pool == "bulk"
    assert classify(stream, tenant="globex", policy=policy, untrusted_route_header=True).pool == "normal"
    assert classify(stream, tenant="globex", policy=policy, score=9.0).pool == "high-risk"


def test_a_batch_routes_each_messages_recipients() -> None:
    from deliverypool.routing.router import Router

    policy = Policy(pools={"normal": "normal", "high-risk": "high-risk", "gmail": "normal"},
                    rules=[{"recipient_domains": ["gmail.test"], "pool": "gmail"}])
    router = Router(policy=policy)
    decisions = asyncio.run(router.route_many([ORDINARY[0], GLOBAL_DSN], recipients=[["a@gmail.test", "b@x.test"], ["c@gmail.test"]]))
    assert [d.recipient_pools for d in decisions] == [("gmail", "normal"), ("high-risk",)]
    decision = asyncio.run(router.route(ORDINARY[0], recipients=["a@gmail.test"]))
    assert (decision.pool, decision.rule) == ("gmail", "rules[0]")
    # Without rules on recipient domains, recipients are not even passed on.
    assert asyncio.run(Router().route(ORDINARY[0], recipients=["a@gmail.test"])).recipient_pools == ()
