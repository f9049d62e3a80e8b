"""The milter chain of the milter guide (docs/guide/milter.md, "A scoring milter before
deliverypool's"), as written: a private Postfix (tests/postfix.py) with the guide's lines and the
chain's `smtpd_milters`, rspamd's proxy worker in milter mode first (tests/rspamd.py, its
`milter_headers.conf` from the guide), `deliverypool milter` second with the guide's TOML
(the score from rspamd's X-Spam-Status, `trust_score_header = true`) and pools without source
addresses. The sink records which source address each message left from.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from tests.dnsserver import NsdServer
from tests.postfix import PostfixInstance, chain_blocks, postfix_installed
from tests.rspamd import GTUBE, SPAM_MARKER, RspamdServer, rspamd_installed
from tests.smtp_sinks import HIGH_RISK_SOURCE, NORMAL_SOURCE, Delivery, SinkHandler, free_port
from tests.test_postfix_milter import Milter, message, message_id, need

pytestmark = pytest.mark.slow


@dataclass
class Chain:
    postfix: PostfixInstance
    milter: Milter
    sink: SinkHandler

    def arrived(self, mid: str, seconds: float = 60.0) -> Delivery:
        deadline = time.monotonic() + seconds
        while True:
            found = [d for d in list(self.sink.deliveries) if message_id(d.content) == mid]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"{mid} did not arrive\n{self.postfix.log()[-3000:]}\n{self.milter.log()[-2000:]}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def chain(nsd: NsdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    need(postfix_installed(), "Postfix")
    need(rspamd_installed(), "rspamd")
    blocks = chain_blocks()
    work = tmp_path_factory.mktemp("chain")
    proxy_port = free_port()
    rspamd = RspamdServer(free_port(), proxy_port=proxy_port, milter_headers=blocks["milter_headers.conf"])
    rspamd.start()
    sink = SinkHandler("sink")
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    milter_port = free_port()
    config = work / "relay.toml"
    # The guide's TOML as written, then what this machine needs (addresses, DNS); the pools
    # without source addresses, which Postfix binds.
    config.write_text(
        blocks["relay.toml"].replace("[milter]\n", f'[milter]\naddress = "127.0.0.1:{milter_port}"\n')
        + f'[dns]\nnameservers = ["{nsd.address}"]\ntimeout = "1s"\n'
        + "[pools.normal]\n[pools.high-risk]\n"
    )
    milter = Milter(config, milter_port, work / "milter.log")
    postfix = PostfixInstance(
        port=free_port(),
        relay_port=controller.port,
        milter_port=milter_port,
        normal_source=NORMAL_SOURCE,
        high_risk_source=HIGH_RISK_SOURCE,
        extra_main=blocks["main.cf"],
        rspamd_milter_port=proxy_port,
    )
    try:
        milter.start()
        postfix.start()
        yield Chain(postfix, milter, sink)
    finally:
        postfix.close()
        milter.stop()
        controller.stop()
        rspamd.close()


def test_the_guide_has_the_chain_blocks() -> None:
    blocks = chain_blocks()
    assert set(blocks) == {"main.cf", "milter_headers.conf", "relay.toml"}
    assert "smtpd_milters = inet:127.0.0.1:11332, inet:127.0.0.1:8893" in blocks["main.cf"]
    assert "trust_score_header = true" in blocks["relay.toml"]


def send(chain: Chain, content: str, sender: str = "alice@mx-only.dp.test") -> None:
    with smtplib.SMTP("127.0.0.1", chain.postfix.port, timeout=60) as client:
        assert client.sendmail(sender, ["bob@dest.test"], content.encode()) == {}


def test_the_scoring_milter_before_deliverypools_decides_the_pool(chain: Chain) -> None:
    ordinary = message("chain ordinary", body="Lunch at noon?")
    scored = message(f"chain scored {SPAM_MARKER}")
    # The clients' own score headers count for nothing: dropped before any milter sees them.
    forged_low = message(f"chain forged low {SPAM_MARKER}", extra="X-Spam-Status: No, score=-100\r\n")
    forged_high = message("chain forged high", body="See you.", extra="X-Spam-Status: Yes, score=50\r\n")
    for content in (ordinary, scored, forged_low, forged_high):
        send(chain, content)
    peers = {name: chain.arrived(message_id(content.encode())).peer for name, content in
             (("ordinary", ordinary), ("scored", scored), ("forged_low", forged_low), ("forged_high", forged_high))}
    assert peers == {"ordinary": NORMAL_SOURCE, "scored": HIGH_RISK_SOURCE, "forged_low": HIGH_RISK_SOURCE, "forged_high": NORMAL_SOURCE}
    log = chain.milter.log()
    # The score came from rspamd's header (rspamd was not asked again), read once.
    assert "pool=high-risk transport=dp-high-risk reasons=spam-score spam=header:7" in log
    assert "pool=normal transport=dp-normal reasons=- spam=header:" in log
    delivered = chain.arrived(message_id(forged_high.encode())).content
    assert b"score=50" not in delivered and b"X-Spam-Status: No, score=" in delivered


def test_rspamd_rejects_what_it_scores_for_reject_before_deliverypool_sees_it(chain: Chain) -> None:
    content = message("chain gtube", body=GTUBE)
    routed = chain.milter.log().count("routed queue_id=")
    with smtplib.SMTP("127.0.0.1", chain.postfix.port, timeout=60) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@mx-only.dp.test", ["bob@dest.test"], content.encode())
    assert refused.value.smtp_code == 554 and b"5.7.1" in refused.value.smtp_error
    assert chain.milter.log().count("routed queue_id=") == routed
