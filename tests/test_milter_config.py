"""The `[milter]` and `[score]` tables: the milter guide's examples load, and what they mean."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deliverypool import config as cfg

REPO = Path(__file__).resolve().parents[1]
POOLS = '[pools.normal]\nsource_addresses = ["192.0.2.10"]\n[pools.high-risk]\nsource_addresses = ["198.51.100.7"]\n'


def documented_toml_blocks() -> list[str]:
    """The TOML blocks of the milter guide (docs/guide/milter.md, before its Postfix
    configuration) and of the rspamd page (docs/guide/rspamd.md)."""
    milter = (REPO / "docs" / "guide" / "milter.md").read_text(encoding="utf-8")
    rspamd = (REPO / "docs" / "guide" / "rspamd.md").read_text(encoding="utf-8")
    text = milter[: milter.index("## Postfix configuration (tested)")] + rspamd
    return re.findall(r"^```toml\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_documented_milter_and_score_examples_load() -> None:
    blocks = documented_toml_blocks()
    assert len(blocks) == 2
    config = cfg.loads("\n".join(blocks) + POOLS)
    assert config.milter.address == ("127.0.0.1", 8893)
    assert config.milter.header == "X-Deliverypool-Transport"
    assert (config.transport_for("normal"), config.transport_for("high-risk")) == ("dp-normal", "dp-high-risk")
    assert (config.milter.timeout, config.milter.trust_score_header) == (30.0, False)
    assert (config.score.source, config.score.url, config.score.timeout) == ("rspamd", "http://127.0.0.1:11333", 2.0)
    assert (config.score.fallback, config.score.max_size) == ("no-score", 25 * 1024 * 1024)


def test_defaults_read_the_header_only_and_name_transports_after_pools() -> None:
    config = cfg.loads(POOLS)
    assert config.score.source == "header"
    assert config.milter.transports == {}
    assert config.transport_for("high-risk") == "dp-high-risk"
    renamed = cfg.loads('[milter]\ntransports = { high-risk = "bulk-out" }\n' + POOLS)
    assert (renamed.transport_for("high-risk"), renamed.transport_for("normal")) == ("bulk-out", "dp-normal")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[score]\nurl = "ftp://127.0.0.1"\n', "score.url", "not an http:// or https:// URL with a host"),
        ('[score]\nurl = "http://127.0.0.1:99999"\n', "score.url", "bad port"),
        ('[score]\nsource = "spamassassin"\n', "score.source", ""),
        ('[score]\nfallback = "normal"\n', "score.fallback", ""),
        ('[milter]\ntransports = { nope = "dp-x" }\n', "milter.transports.nope", "no pool named 'nope'"),
        ('[milter]\ntransports = { normal = "dp normal" }\n', "milter.transports.normal", "not a master.cf transport name"),
        ('[milter]\nheader = "X-Bad:Name"\n', "milter.header", "not a header field name"),
    ],
)
def test_bad_values_name_their_key(text: str, key: str, problem: str) -> None:
    with pytest.raises(cfg.ConfigError) as error:
        cfg.loads(text + POOLS)
    assert str(error.value).startswith(f"{key}: ")
    assert problem in str(error.value)
