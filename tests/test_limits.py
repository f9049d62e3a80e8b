"""Sender limits on their real backends: the embedded SQLite state database and a real
redis-server (started once for the module), with an injectable clock. The relay-level tests
(SMTP, two relay processes sharing one Redis, the CLI and the admin API) are in
tests/test_limits_relay.py."""

from __future__ import annotations

import asyncio
import contextlib
import calendar
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deliverypool import config as cfg
from deliverypool.routing.tenants import Tenants
from deliverypool.state.backends import Backend, RedisBackend, Restriction, SqliteBackend, Window
from deliverypool.state.limits import REFUSED, UNAVAILABLE, Limiter, next_midnight
from tests.redis_server import RedisServer, redis_server

BACKENDS = ["sqlite", "redis"]
# 2026-03-10 22:30:00 UTC: an hour and a half before midnight.
EVENING = float(calendar.timegm((2026, 3, 10, 22, 30, 0)))


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


class Clock:
    def __init__(self, now: float = EVENING) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Recorder:
    """A LimitsListener that records what it is told."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def restricted(self, restriction: Restriction) -> None:
        self.calls.append(("restricted", {"restriction": restriction}))

    def limit_reached(self, **kwargs: Any) -> None:
        self.calls.append(("limit", kwargs))

    def released(self, restriction: Restriction, **kwargs: Any) -> None:
        self.calls.append(("released", {"restriction": restriction, **kwargs}))

    def backend_unavailable(self, **kwargs: Any) -> None:
        self.calls.append(("down", kwargs))

    def backend_available(self, **kwargs: Any) -> None:
        self.calls.append(("up", kwargs))

    def snapshot(self, restrictions: list[Restriction], **kwargs: Any) -> None:
        self.calls.append(("snapshot", {"restrictions": restrictions}))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls if kind != "snapshot"]


def config(limits: str, tenants: str = "", state: str = "") -> cfg.RelayConfig:
    return cfg.loads(
        f"""
[limits]
{limits}
[tenants.acme]
auth_users = ["acme-app"]
networks = ["127.0.1.0/24"]
domains = ["acme.example"]
{tenants}
[tenants.globex]
networks = ["127.0.2.0/24"]
domains = ["globex.example"]
[state]
{state}
[pools.normal]
source_addresses = ["127.0.0.2"]
[pools.high-risk]
source_addresses = ["127.0.0.3"]
"""
    )


def make_backend(kind: str, tmp_path: Path, redis: RedisServer | None) -> Backend:
    if kind == "sqlite":
        return SqliteBackend(tmp_path / "state.sqlite3")
    assert redis is not None
    return RedisBackend(redis.url, prefix=f"{tmp_path}:")


@asynccontextmanager
async def limiter(conf: cfg.RelayConfig, backend: Backend, clock: Clock, listener: Recorder | None = None, **kwargs: Any) -> AsyncIterator[Limiter]:
    lim = Limiter(conf, Tenants(conf.tenants), backend, clock=clock, listener=listener, leader=False, **kwargs)
    await lim.start()
    try:
        yield lim
    finally:
        await lim.stop()


async def rcpt(lim: Limiter, recipient: str, *, sender: str = "app@acme.example", login: str | None = None, peer: str = "127.0.1.5") -> str | None:
    return await lim.check(login=login, mail_from=sender, recipient=recipient, peer=peer)


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest, redis: RedisServer) -> str:
    return str(request.param)


def test_next_midnight_is_utc() -> None:
    assert next_midnight(EVENING) == calendar.timegm((2026, 3, 11, 0, 0, 0))
    assert next_midnight(calendar.timegm((2026, 3, 11, 0, 0, 0))) == calendar.timegm((2026, 3, 12, 0, 0, 0))


def test_exactly_the_limit_is_accepted_by_concurrent_workers(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    """Two limiters (two workers: two SQLite connections on two threads, or two Redis clients)
    take 60 concurrent recipients of one sender with per_day = 50: 50 are accepted, no more."""
    conf = config('per_day = 50\naction = "block"')
    clock = Clock()

    async def main() -> list[str | None]:
        async with limiter(conf, make_backend(kind, tmp_path, redis), clock) as one, limiter(conf, make_backend(kind, tmp_path, redis), clock) as two:
            return await asyncio.gather(*(rcpt(one if i % 2 else two, f"r{i}@far.example") for i in range(60)))

    replies = asyncio.run(main())
    assert replies.count(None) == 50
    assert replies.count(REFUSED) == 10 and REFUSED == "550 5.1.8 Access denied, bad outbound sender"


def counted(kind: str, tmp_path: Path, redis: RedisServer | None, sender: str, window: str = "per_day") -> int:
    """What the backend holds in `sender`'s `window` (every bucket)."""
    if kind == "sqlite":
        import sqlite3

        with contextlib.closing(sqlite3.connect(tmp_path / "state.sqlite3")) as conn:
            row = conn.execute("SELECT coalesce(sum(count), 0) FROM limits_counts WHERE scope = 's' AND owner = ? AND window = ?", (sender, window))
            return int(row.fetchone()[0])
    import redis as redis_client

    assert redis is not None
    client = redis_client.Redis.from_url(redis.url, decode_responses=True)
    try:
        return sum(int(v) for v in client.hgetall(f"{tmp_path}:c:s:{sender}:{window}").values())
    finally:
        client.close()


def test_leases_check_the_backend_once_per_lease_and_hand_back_what_is_left(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    """Far from its limit, one check counts 64 recipients (itself and a lease of 63); the next 63
    are accepted without the backend; what is left of the last lease is handed back at stop."""
    conf = config("per_day = 100000\nexternal_per_hour = 100000")
    clock = Clock()

    async def main() -> tuple[list[str | None], int, int]:
        async with limiter(conf, make_backend(kind, tmp_path, redis), clock) as lim:
            replies = [await rcpt(lim, f"r{i}@far.example") for i in range(200)]
            held = counted(kind, tmp_path, redis, "app@acme.example")
            return replies, lim.backend_checks, held

    replies, checks, held = asyncio.run(main())
    assert replies == [None] * 200
    assert checks == 4  # 200 recipients in leases of 64
    assert held == 256  # counted when leased: the window never holds fewer than were accepted
    assert counted(kind, tmp_path, redis, "app@acme.example") == 200
    assert counted(kind, tmp_path, redis, "app@acme.example", "external_per_hour") == 200


def test_near_the_limit_there_is_no_lease_and_the_count_is_exact(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    """per_day = 300: leases while the headroom is over 64, shrinking with it, none near the
    limit: one worker accepts exactly 300 of 400 and restricts the sender at the 301st."""
    conf = config('per_day = 300\naction = "block"')
    clock = Clock()

    async def main() -> tuple[list[str | None], int]:
        async with limiter(conf, make_backend(kind, tmp_path, redis), clock) as lim:
            return [await rcpt(lim, f"r{i}@far.example") for i in range(400)], lim.backend_checks

    replies, checks = asyncio.run(main())
    assert replies[:300] == [None] * 300 and set(replies[300:]) == {REFUSED}
    assert 100 < checks < 400  # leases far from the limit, one check per recipient near it
    assert counted(kind, tmp_path, redis, "app@acme.example") == 300


@settings(max_examples=60, deadline=None)
@given(
    limit=st.sampled_from([3, 64, 130, 700, 5000]),
    steps=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 2), st.floats(0, 3)), min_size=1, max_size=250),
)
def test_leases_never_let_a_window_hold_more_than_its_limit(limit: int, steps: list[tuple[int, int, float]]) -> None:
    """Two workers (two SQLite connections on one state database), three senders, the clock
    moving by up to 3 s a step (the whole run inside one day): no sender gets more than
    `limit` recipients accepted; one that asked for more got at least limit minus what the
    other worker's lease may hold back (63); and after both stop, the database holds exactly
    the accepted recipients of the senders that are not restricted."""
    import tempfile

    conf = config(f'per_day = {limit}\naction = "block"')
    clock = Clock()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder)

        async def main() -> dict[str, list[str | None]]:
            replies: dict[str, list[str | None]] = {f"s{i}@acme.example": [] for i in range(3)}
            async with limiter(conf, SqliteBackend(path / "state.sqlite3"), clock) as one, limiter(conf, SqliteBackend(path / "state.sqlite3"), clock) as two:
                for n, (worker, who, advance) in enumerate(steps):
                    clock.now += advance
                    sender = f"s{who}@acme.example"
                    replies[sender].append(await rcpt(one if worker else two, f"r{n}@far.example", sender=sender))
            return replies

        for sender, got in asyncio.run(main()).items():
            accepted = got.count(None)
            assert accepted <= limit
            if len(got) > limit + 63:
                assert accepted >= limit - 63
            if REFUSED not in got:
                assert counted("sqlite", path, None, sender) == accepted


def test_a_window_counts_a_recipient_for_at_least_its_length_and_at_most_one_bucket_more(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    """The documented error bound: an hour window of 60 one-minute buckets counts a recipient
    from its bucket's start for 61 buckets. The tenant limit refuses while its window is full
    and restricts nobody, so the window's content can be watched."""
    backend = make_backend(kind, tmp_path, redis)
    start = 1_800_000_000.0  # a whole minute
    window = (Window("tenant_per_day", "t", "acme", 3600.0, 3),)

    async def main() -> list[bool]:
        from deliverypool.state.backends import Check

        await backend.open()
        try:
            seen = []
            for at in (start + 10, start + 20, start + 30, start + 40):  # the fourth is over
                seen.append((await backend.count(Check("a@x.test", "acme", window, "block", at, None))).accepted)
            for at in (start + 3599, start + 3600 + 59):  # still within the hour, then within its last bucket
                seen.append((await backend.count(Check("a@x.test", "acme", window, "block", at, None))).accepted)
            seen.append((await backend.count(Check("a@x.test", "acme", window, "block", start + 61 * 60, None))).accepted)
            return seen
        finally:
            await backend.close()

    assert asyncio.run(main()) == [True, True, True, False, False, False, True]


def test_internal_and_external_recipients_count_apart_by_the_tenants_domains(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    conf = config('external_per_hour = 2\ninternal_per_hour = 3\naction = "block"')

    async def main() -> tuple[list[str | None], list[str | None], list[str | None]]:
        async with limiter(conf, make_backend(kind, tmp_path, redis), Clock()) as lim:
            # acme's sender: two external (one at another tenant's domain), three internal (a
            # subdomain of acme's domain too), then a third external is one too many.
            first = [await rcpt(lim, r) for r in ("x@far.example", "y@globex.example", "a@acme.example", "b@mx.acme.example", "c@ACME.example", "z@far.example")]
            # Another acme sender: four internal, the fourth over internal_per_hour.
            second = [await rcpt(lim, f"i{i}@acme.example", sender="ops@acme.example") for i in range(4)]
            # A sender of no tenant: every recipient is external, acme.example too.
            third = [await rcpt(lim, r, sender="x@nobody.test", peer="127.0.9.9") for r in ("a@acme.example", "b@acme.example", "c@acme.example")]
            return first, second, third

    first, second, third = asyncio.run(main())
    assert first == [None, None, None, None, None, REFUSED]
    assert second == [None, None, None, REFUSED]
    assert third == [None, None, REFUSED]


def test_a_tenants_limits_override_the_defaults_key_by_key(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    conf = config('per_day = 2\naction = "block"', tenants="limits = { per_day = 0, external_per_hour = 4 }")

    async def main() -> tuple[list[str | None], list[str | None]]:
        async with limiter(conf, make_backend(kind, tmp_path, redis), Clock()) as lim:
            acme = [await rcpt(lim, f"r{i}@far.example") for i in range(5)]  # per_day lifted, 4 an hour
            globex = [await rcpt(lim, f"r{i}@far.example", sender="a@globex.example", peer="127.0.2.5") for i in range(3)]
            return acme, globex

    acme, globex = asyncio.run(main())
    assert acme == [None, None, None, None, REFUSED]
    assert globex == [None, None, REFUSED]


def test_block_until_tomorrow_lifts_at_midnight_utc(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    conf = config('external_per_hour = 1\naction = "block-until-tomorrow"')
    clock, heard = Clock(EVENING), Recorder()
    midnight = calendar.timegm((2026, 3, 11, 0, 0, 0))

    async def main() -> list[str | None]:
        async with limiter(conf, make_backend(kind, tmp_path, redis), clock, heard) as lim:
            replies = [await rcpt(lim, "a@far.example"), await rcpt(lim, "b@far.example")]
            clock.now = EVENING + 75 * 60  # 23:45: the hour window is clear, the restriction holds
            replies.append(await rcpt(lim, "c@far.example"))
            clock.now = midnight - 1
            replies.append(await rcpt(lim, "d@far.example"))
            clock.now = midnight
            replies.append(await rcpt(lim, "e@far.example"))
            replies.append(await rcpt(lim, "f@far.example"))  # a fresh start: counted again
            return replies

    assert asyncio.run(main()) == [None, REFUSED, REFUSED, REFUSED, None, REFUSED]
    restricted = [c for k, c in heard.calls if k == "restricted"]
    assert restricted[0]["restriction"].until == midnight and restricted[0]["restriction"].window == "external_per_hour"
    released = [c for k, c in heard.calls if k == "released"]
    assert released[0]["reason"] == "expired" and released[0]["restriction"].sender == "app@acme.example"
    assert heard.kinds() == ["restricted", "released", "restricted"]


def test_block_holds_until_a_release_made_through_another_worker(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    conf = config('per_day = 2\naction = "block"')
    clock = Clock()

    async def main() -> tuple[list[str | None], list[Restriction], Restriction | None, list[str | None]]:
        async with limiter(conf, make_backend(kind, tmp_path, redis), clock) as one, limiter(conf, make_backend(kind, tmp_path, redis), clock) as two:
            replies = [await rcpt(one, f"r{i}@far.example", sender="App@Acme.Example") for i in range(3)]
            clock.now += 10 * 86400  # "block" never ends by itself
            replies.append(await rcpt(one, "late@far.example", sender="app@acme.example"))
            listed = await two.restrictions("acme")
            released = await two.release("APP@acme.example")
            after = [await rcpt(one, "again@far.example"), await rcpt(one, "twice@far.example"), await rcpt(one, "thrice@far.example")]
            return replies, listed, released, after

    replies, listed, released, after = asyncio.run(main())
    assert replies == [None, None, REFUSED, REFUSED]
    assert [(r.sender, r.tenant, r.window, r.count, r.maximum, r.until) for r in listed] == [("app@acme.example", "acme", "per_day", 2, 2, None)]
    assert released is not None and released.sender == "app@acme.example"
    # The release forgets the counters too: a fresh start, counted again.
    assert after == [None, None, REFUSED]


def test_alert_lets_mail_through_and_reports_once_per_sender_and_window(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    conf = config('per_day = 3\naction = "alert"')
    clock, heard = Clock(), Recorder()

    async def main() -> list[str | None]:
        async with limiter(conf, make_backend(kind, tmp_path, redis), clock, heard) as one, limiter(conf, make_backend(kind, tmp_path, redis), clock, heard) as two:
            replies = [await rcpt(one if i % 2 else two, f"r{i}@far.example") for i in range(10)]
            clock.now += 86400 + 3600  # the next window
            replies += [await rcpt(one, f"s{i}@far.example") for i in range(5)]
            return replies

    assert asyncio.run(main()) == [None] * 15
    limits = [c for k, c in heard.calls if k == "limit"]
    assert [(c["sender"], c["window"], c["count"], c["maximum"], c["refused"]) for c in limits] == [
        ("app@acme.example", "per_day", 4, 3, False),
        ("app@acme.example", "per_day", 4, 3, False),
    ]
    assert "restricted" not in heard.kinds()


def test_the_tenant_limit_refuses_every_sender_of_the_tenant_and_restricts_none(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    conf = config('tenant_per_day = 3\naction = "block"')
    heard = Recorder()

    async def main() -> tuple[list[str | None], list[Restriction]]:
        async with limiter(conf, make_backend(kind, tmp_path, redis), Clock(), heard) as lim:
            replies = [await rcpt(lim, "a@far.example", sender=f"s{i}@acme.example") for i in range(5)]
            replies.append(await rcpt(lim, "b@far.example", sender="other@globex.example", peer="127.0.2.9"))
            return replies, await lim.restrictions()

    replies, restrictions = asyncio.run(main())
    assert replies == [None, None, None, REFUSED, REFUSED, None]
    assert restrictions == []
    limits = [c for k, c in heard.calls if k == "limit"]
    assert [(c["sender"], c["tenant"], c["window"], c["refused"]) for c in limits] == [("*", "acme", "tenant_per_day", True)]


def test_null_sender_mail_never_counts_and_is_never_refused(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    conf = config('per_day = 1\ntenant_per_day = 2\naction = "block"')

    async def main() -> list[str | None]:
        async with limiter(conf, make_backend(kind, tmp_path, redis), Clock()) as lim:
            replies = [await rcpt(lim, f"d{i}@far.example", sender="", login="acme-app") for i in range(5)]  # DSNs of acme
            replies += [await rcpt(lim, "a@far.example", login="acme-app"), await rcpt(lim, "b@far.example", login="acme-app")]
            replies += [await rcpt(lim, "c@far.example", sender="<>", login="acme-app")]  # restricted, still a DSN
            replies += [await rcpt(lim, "e@far.example", sender="other@acme.example")]  # the tenant's window: 2 with the first
            return replies

    # The AUTH identity is the sender (not the envelope address): acme-app's second is over.
    assert asyncio.run(main()) == [None] * 5 + [None, REFUSED, None, None]


def test_a_restart_keeps_the_restriction(kind: str, tmp_path: Path, redis: RedisServer) -> None:
    conf = config('per_day = 1\naction = "block"')
    clock = Clock()

    async def main() -> list[str | None]:
        async with limiter(conf, make_backend(kind, tmp_path, redis), clock) as lim:
            replies = [await rcpt(lim, "a@far.example"), await rcpt(lim, "b@far.example")]
        async with limiter(conf, make_backend(kind, tmp_path, redis), clock) as again:
            replies.append(await rcpt(again, "c@far.example"))
        return replies

    assert asyncio.run(main()) == [None, REFUSED, REFUSED]


def test_redis_down_fails_open_on_this_nodes_counts_and_comes_back(tmp_path: Path) -> None:
    """Redis killed: every check answers at once from the node's state database (exactly the
    limit, counted there), the listener hears it once; Redis back: the counts are Redis's
    again, and a restriction made meanwhile is copied there."""
    with redis_server() as server:
        conf = config('per_day = 3\naction = "block"', state=f'redis = "{server.url}"\ntimeout = "2s"\nretry_interval = "100ms"')
        heard = Recorder()

        async def main() -> tuple[list[str | None], list[str | None], list[str | None], list[str | None]]:
            backend = RedisBackend(server.url, prefix="down:", timeout=2.0)
            async with limiter(conf, backend, Clock(), heard, local=SqliteBackend(tmp_path / "state.sqlite3")) as lim:
                before = [await rcpt(lim, "a@far.example", sender="one@acme.example")]
                server.kill()
                during = [await rcpt(lim, f"r{i}@far.example", sender="two@acme.example") for i in range(5)]
                assert lim.down_since is not None and heard.kinds().count("down") == 1
                server.start()
                for _ in range(100):
                    if lim.down_since is None:
                        break
                    await asyncio.sleep(0.05)
                assert lim.down_since is None, "the limiter did not go back to Redis"
                # Counted in Redis again: a fresh Redis (no persistence) had nothing of "one@".
                after = [await rcpt(lim, f"s{i}@far.example", sender="one@acme.example") for i in range(4)]
                # two@ was restricted on this node while Redis was away: Redis has it now.
                restricted = [r.sender for r in await backend.restrictions(Clock().now)]
                return before, during, after, restricted

        before, during, after, restricted = asyncio.run(main())
        assert before == [None]
        assert during == [None, None, None, REFUSED, REFUSED]
        assert after == [None, None, None, REFUSED]
        assert "two@acme.example" in restricted
        assert heard.kinds().count("down") == 1 and heard.kinds().count("up") == 1
        down = next(c for k, c in heard.calls if k == "down")
        assert down["backend"] == server.url and down["fail"] == "open"
        # The restriction made during the outage and the one after it.
        assert [c["restriction"].sender for k, c in heard.calls if k == "restricted"] == ["two@acme.example", "one@acme.example"]


def test_redis_down_fails_closed_with_451_when_configured(tmp_path: Path) -> None:
    with redis_server() as server:
        conf = config("per_day = 3", state=f'redis = "{server.url}"\nfail = "closed"\ntimeout = "2s"\nretry_interval = "100ms"')

        async def main() -> list[str | None]:
            async with limiter(conf, RedisBackend(server.url, prefix="closed:", timeout=2.0), Clock(), local=SqliteBackend(tmp_path / "s.sqlite3")) as lim:
                replies = [await rcpt(lim, "a@far.example")]
                server.kill()
                replies += [await rcpt(lim, "b@far.example"), await rcpt(lim, "c@far.example", sender="")]
                server.start()
                for _ in range(100):
                    if lim.down_since is None:
                        break
                    await asyncio.sleep(0.05)
                replies.append(await rcpt(lim, "d@far.example"))
                return replies

        # DSNs still flow: limits never refuse the null sender.
        assert asyncio.run(main()) == [None, UNAVAILABLE, None, None]
        assert UNAVAILABLE.startswith("451 4.3.0")


def test_configuration_errors_name_the_key() -> None:
    for text, key in (
        ('[limits]\naction = "quarantine"', "limits.action"),
        ("[limits]\nper_day = -1", "limits.per_day"),
        ('[limits]\nper_day = "10"', "limits.per_day"),
        ('[state]\nredis = "http://127.0.0.1:6379"', "state.redis"),
        ('[state]\nfail = "sometimes"', "state.fail"),
        ('[tenants.a]\nlimits = { per_hour = 3 }', "tenants.a.limits.per_hour"),
    ):
        with pytest.raises(cfg.ConfigError) as error:
            cfg.loads(text + '\n[pools.normal]\nsource_addresses = ["127.0.0.2"]\n[pools.high-risk]\nsource_addresses = ["127.0.0.3"]\n')
        assert error.value.key == key, (text, str(error.value))
