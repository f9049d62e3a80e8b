"""Relay configuration: the documented example loads, defaults are right, and every bad value
is refused with an error that names its key."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deliverypool import config as cfg

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
[pools.normal]
source_addresses = ["192.0.2.10"]
[pools.high-risk]
source_addresses = ["192.0.2.20"]
"""


def documented_example() -> str:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks, "README.md has no ```toml block"
    return blocks[0]


def test_the_documented_example_loads() -> None:
    conf = cfg.loads(documented_example())
    assert set(conf.pools) == {"normal", "high-risk"}
    normal = conf.pools["normal"]
    assert [s.address for s in normal.source_addresses][:2] == [ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("192.0.2.11")]
    assert conf.high_risk_pool.delivery in ("mx", "smarthost")
    assert conf.policy.score_header is not None


def test_defaults() -> None:
    conf = cfg.loads(MINIMAL)
    assert (conf.listener.host, conf.listener.port) == ("127.0.0.1", 2525)
    assert conf.listener.allowed_networks == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    pool = conf.pools["high-risk"]
    assert pool.max_age == 5 * 86400
    assert pool.delivery == "mx" and pool.mx_port == 25 and pool.tls == "opportunistic"
    assert conf.normal_pool.name == "normal" and conf.high_risk_pool.name == "high-risk"


def test_durations_sizes_and_weights() -> None:
    conf = cfg.loads(
        MINIMAL.replace(
            'source_addresses = ["192.0.2.10"]',
            'source_addresses = ["192.0.2.10", { address = "2001:db8::1", weight = 3 }]\nmax_age = "2d"\n'
            'retry = { initial = "30s", maximum = "1h", factor = 3 }',
        )
        + '[listener]\nsize_limit = "10MB"\naddress = "[::1]:2600"\n'
    )
    normal = conf.pools["normal"]
    assert normal.source_addresses[1].weight == 3
    assert normal.max_age == 2 * 86400
    assert (normal.retry.initial, normal.retry.maximum, normal.retry.factor) == (30, 3600, 3)
    assert conf.listener.size_limit == 10 * 1024 * 1024
    assert (conf.listener.host, conf.listener.port) == ("::1", 2600)


def test_retry_delay_grows_caps_and_jitters() -> None:
    retry = cfg.RetryConfig(initial=60, maximum=3600, factor=2, jitter=0.2)
    assert retry.delay(1, 0.5) == 60
    assert retry.delay(3, 0.5) == 240
    assert retry.delay(100, 0.5) == 3600
    assert retry.delay(1, 0.0) == pytest.approx(48) and retry.delay(1, 0.999999) == pytest.approx(72, rel=1e-4)


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (('"192.0.2.20"]', '"192.0.2.20", "10.0.0.300"]'), "pools.high-risk.source_addresses[1]", "not an IP address"),
        (('"192.0.2.20"]', '"192.0.2.10"]'), "pools.high-risk.source_addresses[0]", "also a source address of the normal pool"),
        (('["192.0.2.20"]', "[]"), "pools.high-risk.source_addresses", "non-empty"),
        (('["192.0.2.10"]', '["192.0.2.10"]\nmax_age = "soon"'), "pools.normal.max_age", "not a duration"),
        (('["192.0.2.10"]', '["192.0.2.10"]\ndelivery = "smarthost"'), "pools.normal.smarthost", "required"),
        (('["192.0.2.10"]', '["192.0.2.10"]\nsmarthost = "relay.example:25"'), "pools.normal.smarthost", "delivery is \"mx\""),
        (('["192.0.2.10"]', '["192.0.2.10"]\nmax_connections_per_destination = 0'), "pools.normal.max_connections_per_destination", "at least 1"),
        (('["192.0.2.10"]', '["192.0.2.10"]\nehlo_name = "not a name"'), "pools.normal.ehlo_name", "not a host name"),
        (('["192.0.2.10"]', '["192.0.2.10"]\nretyr = {}'), "pools.normal.retyr", "unknown key"),
        (('["192.0.2.10"]', '["192.0.2.10"]\nretry = { jitter = 1.5 }'), "pools.normal.retry.jitter", "below 1"),
        (('["192.0.2.10"]', '["192.0.2.10"]\ntls = "maybe"'), "pools.normal.tls", "opportunistic"),
        (("[pools.high-risk]", "[pools.risky]"), "policy.high_risk_pool", "no pool named 'high-risk'"),
    ],
)
def test_errors_name_the_key(change: tuple[str, str], key: str, problem: str) -> None:
    text = MINIMAL.replace(*change)
    assert text != MINIMAL
    with pytest.raises(cfg.ConfigError) as error:
        cfg.loads(text)
    assert error.value.key == key
    assert problem in str(error.value)
    assert str(error.value).startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[listener]\naddress = "127.0.0.1:99999"', "listener.address"),
        ('[listener]\nallowed_networks = ["10.0.0.0/8", "banana"]', "listener.allowed_networks[1]"),
        ('[listener]\nauth_users = { bob = "pw" }', "listener.auth_users"),
        ('[listener]\ntls_certificate = "cert.pem"', "listener.tls_key"),
        ('[listener]\nsize_limit = "big"', "listener.size_limit"),
        ('[policy]\nthreshold = "high"', "policy.threshold"),
        ('[policy]\nunknown_domain_pool = "maybe"', "policy.unknown_domain_pool"),
        ('[policy.tenants]\nacme = "x"', "policy.tenants.acme"),
        ('[dns]\nnameservers = ["ns.example:53"]', "dns.nameservers[0]"),
        ('[spool]\ndirectroy = "/tmp"', "spool.directroy"),
        ('[dns]\ntimeout = -1', "dns.timeout"),
    ],
)
def test_errors_in_other_sections(extra: str, key: str) -> None:
    with pytest.raises(cfg.ConfigError) as error:
        cfg.loads(MINIMAL + extra)
    assert error.value.key == key


def test_unknown_top_level_key_and_bad_toml() -> None:
    with pytest.raises(cfg.ConfigError, match=r"^hostnmae: unknown key"):
        cfg.loads('hostnmae = "x"\n' + MINIMAL)
    with pytest.raises(cfg.ConfigError, match=r"not valid TOML"):
        cfg.loads("[pools.normal\n")
    with pytest.raises(cfg.ConfigError, match=r"^pools: required"):
        cfg.loads("")


def test_load_resolves_the_spool_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(MINIMAL + '[spool]\ndirectory = "queue"\n')
    assert cfg.load(path).spool.directory == tmp_path / "queue"
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load(tmp_path / "missing.toml")


@given(
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"\A[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,3}\Z"),
    ),
    port=st.integers(1, 65535),
)
def test_host_port_round_trip(host: str, port: int) -> None:
    written = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert cfg.parse_host_port("k", written) == (host, port)
    assert cfg.parse_host_port("k", host, 25) == (host, 25)


@given(st.integers(0, 10**6), st.sampled_from(["", "s", "m", "h", "d", "w"]))
def test_duration_units(amount: int, unit: str) -> None:
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert cfg.parse_duration("k", f"{amount}{unit}") == amount * scale
