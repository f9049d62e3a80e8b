"""Relay configuration: the documented example loads, defaults are right, and every bad value
is refused with an error that names its key."""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from deliverypool import config as cfg
from deliverypool.config.schema import main as schema_main
from deliverypool.config.schema import schema_text
from deliverypool.routing.pools import policy_from_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
[pools.normal]
source_addresses = ["192.0.2.10"]
[pools.high-risk]
source_addresses = ["192.0.2.20"]
"""


def documented_example() -> str:
    """The TOML block of the relay's configuration page (docs/guide/relay-configuration.md, up
    to its first subheading)."""
    lines = (REPO / "docs" / "guide" / "relay-configuration.md").read_text(encoding="utf-8").splitlines(keepends=True)
    assert lines[0] == "# Configuration\n", 'docs/guide/relay-configuration.md does not start with "# Configuration"'
    blocks: list[str] = []
    fence: list[str] | None = None  # the lines of the code block being read
    language = ""
    for line in lines[1:]:
        if fence is None and line.startswith("#"):
            break  # the next heading ends the section
        if line.startswith("```"):
            if fence is None:
                fence, language = [], line[3:].strip()
            else:
                if language == "toml":
                    blocks.append("".join(fence))
                fence = None
        elif fence is not None:
            fence.append(line)
    assert len(blocks) == 1, f"the Configuration section has {len(blocks)} ```toml blocks, expected one"
    return blocks[0]


def test_the_documented_example_loads() -> None:
    conf = cfg.loads(documented_example())
    assert conf.hostname == "relay.example.net"
    assert set(conf.pools) == {"normal", "high-risk", "relay"}
    assert conf.pools["relay"].pool_class == "relay" and conf.policy.relay_pool == "relay"
    assert (conf.auth.enabled, conf.auth.auth_unknown_pool, conf.auth.add_authentication_results) == (True, "high-risk", True)
    normal, high_risk = conf.normal_pool, conf.high_risk_pool
    assert [(s.address, s.weight) for s in normal.source_addresses] == [
        (ipaddress.ip_address("192.0.2.10"), 1),
        (ipaddress.ip_address("192.0.2.11"), 1),
        (ipaddress.ip_address("2001:db8::10"), 2),
    ]
    assert (normal.retry.initial, normal.retry.maximum, normal.retry.factor, normal.retry.jitter) == (60, 4 * 3600, 2, 0.2)
    assert (normal.max_age, normal.idle_timeout, normal.connect_timeout, normal.command_timeout) == (5 * 86400, 2, 30, 300)
    assert (normal.ehlo_name, normal.delivery, normal.tls, normal.smarthost) == ("out1.example.net", "mx", "opportunistic", None)
    assert (high_risk.delivery, high_risk.smarthost, high_risk.max_age) == ("smarthost", ("smarthost.example.net", 25), 2 * 86400)
    listener = conf.listener
    assert (listener.host, listener.port, listener.size_limit) == ("127.0.0.1", 2525, 25 * 1024 * 1024)
    assert listener.trusted_score_networks == (ipaddress.ip_network("10.1.2.3/32"),)
    assert listener.tls_key == Path("/etc/deliverypool/relay.key") and dict(listener.auth_users) == {"app1": "a-long-random-password"}
    assert (conf.policy.threshold, conf.policy.score_header) == (5.0, "X-Spam-Score")
    assert conf.tenants["app1"].threshold == 3.0 and conf.tenants["app1"].auth_users == ("app1",)
    assert (conf.dns.nameservers, conf.dns.timeout) == ((("127.0.0.53", 53),), 2.0)
    assert conf.spool.directory == Path("/var/spool/deliverypool")
    assert conf.admin.token_file == Path("/etc/deliverypool/admin-tokens") and not conf.admin.open_metrics and not conf.admin.open_reads
    assert conf.alerts.secret_file == Path("/etc/deliverypool/webhook-secret")


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


def test_spool_spent_files_is_a_size_that_reaches_the_spool(tmp_path: Path) -> None:
    """`spool.spent_files`: 64 MiB unless set; a positive size; the relay's spool keeps that
    much."""
    from deliverypool.app import Relay

    assert cfg.loads(MINIMAL).spool.spent_files == 64 * 1024 * 1024
    conf = cfg.loads(MINIMAL + f'[spool]\ndirectory = "{tmp_path}"\nspent_files = "8MiB"\n')
    assert conf.spool.spent_files == 8 * 1024 * 1024
    assert Relay(conf).spool.spent_files == 8 * 1024 * 1024
    for bad in ("0", "-1", '"many"'):
        with pytest.raises(cfg.ConfigError, match="spool.spent_files"):
            cfg.loads(MINIMAL + f"[spool]\nspent_files = {bad}\n")


def test_listener_in_flow_delay_is_a_delay_that_zero_turns_off() -> None:
    """`listener.in_flow_delay`: 1 s unless set; any duration; 0 (or "0s") for none; anything
    else refused naming the key."""
    assert cfg.loads(MINIMAL).listener.in_flow_delay == 1.0
    for text, seconds in (('"250ms"', 0.25), ("2", 2.0), ("0", 0.0), ('"0s"', 0.0), ("0.0", 0.0)):
        assert cfg.loads(MINIMAL + f"[listener]\nin_flow_delay = {text}\n").listener.in_flow_delay == seconds
    for bad in ("-1", '"soon"', "true", '"-1s"'):
        with pytest.raises(cfg.ConfigError, match="listener.in_flow_delay"):
            cfg.loads(MINIMAL + f"[listener]\nin_flow_delay = {bad}\n")


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
        ('[tenants.acme]\nthreshold = "x"', "tenants.acme.threshold"),
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


def test_the_spools_defaults_are_the_librarys_defaults() -> None:
    """A Spool or DeliveryEngine built without a configuration (embedding) gets the same reserve,
    spent-file budget and memory budget as a relay whose file leaves them out, and the schema
    shows each default as a size that parses back to it."""
    import inspect

    from deliverypool.config.units import parse_size
    from deliverypool.outbound.scheduler import DeliveryEngine
    from deliverypool.queue.spool import Spool

    spool = cfg.loads(MINIMAL).spool
    library = {
        "reserve": inspect.signature(Spool).parameters["reserve"].default,
        "spent_files": inspect.signature(Spool).parameters["spent_files"].default,
        "memory_budget": inspect.signature(DeliveryEngine).parameters["memory_budget"].default,
    }
    schema = json.loads(schema_text())["$defs"]["SpoolConfig"]["properties"]
    for key, default in library.items():
        assert getattr(spool, key) == default, key
        assert parse_size(schema[key]["default"]) == default, key


def test_load_resolves_the_spool_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(MINIMAL + '[spool]\ndirectory = "queue"\n')
    assert cfg.load(path).spool.directory == tmp_path / "queue"
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("smarthost", "expected"),
    [
        ("relay.example:587", ("relay.example", 587)),
        ("Relay.Example.NET", ("relay.example.net", 25)),  # the ASCII form, as mail/address.py gives it
        ("bücher.example:25", ("xn--bcher-kva.example", 25)),
        ("localhost:2525", ("localhost", 2525)),
        ("192.0.2.25", ("192.0.2.25", 25)),
        ("[2001:db8::25]:2525", ("2001:db8::25", 2525)),
        ("2001:db8::25", ("2001:db8::25", 25)),
    ],
)
def test_smarthost(smarthost: str, expected: tuple[str, int]) -> None:
    conf = cfg.loads(MINIMAL.replace('["192.0.2.10"]', f'["192.0.2.10"]\ndelivery = "smarthost"\nsmarthost = "{smarthost}"'))
    assert conf.pools["normal"].smarthost == expected


@pytest.mark.parametrize(
    ("smarthost", "message"),
    [
        ("a..b:25", "pools.normal.smarthost: not a host name or IP address: 'a..b'"),
        ("relay:25", "pools.normal.smarthost: not a host name or IP address: 'relay'"),  # one label: only localhost
        ("-relay.example", "pools.normal.smarthost: not a host name or IP address: '-relay.example'"),
        ("relay.example:0", "pools.normal.smarthost: bad port '0': 'relay.example:0'"),
        ("[2001:db8::25", "pools.normal.smarthost: unclosed '[': '[2001:db8::25'"),
        ("", "pools.normal.smarthost: expected host:port: ''"),
    ],
)
def test_smarthost_must_be_a_host_name_or_address(smarthost: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError) as error:
        cfg.loads(MINIMAL.replace('["192.0.2.10"]', f'["192.0.2.10"]\ndelivery = "smarthost"\nsmarthost = "{smarthost}"'))
    assert str(error.value) == message


@given(
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"\A[a-z][a-z0-9]{0,10}(\.[a-z][a-z0-9-]{0,9}[a-z0-9]){1,3}\Z"),
    ),
    port=st.integers(1, 65535),
)
def test_smarthost_round_trip(host: str, port: int) -> None:
    written = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    pool = {"source_addresses": ["192.0.2.10"], "delivery": "smarthost"}
    data = {"pools": {"normal": {**pool, "smarthost": written}, "high-risk": {**pool, "source_addresses": ["192.0.2.20"], "smarthost": host}}}
    conf = cfg.from_dict(data)
    assert conf.pools["normal"].smarthost == (host, port)
    assert conf.pools["high-risk"].smarthost == (host, 25)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[listener]\nmax_recipients = \"5\"", "listener.max_recipients: must be an integer, got a string"),
        ("[listener]\nline_length_limit = 99", "listener.line_length_limit: must be at least 100, got 99"),
        ("[listener]\nsize_limit = 1.5", 'listener.size_limit: must be a whole number of bytes or a string like "25MB", got a number'),
        ("[listener]\nsize_limit = \"0k\"", "listener.size_limit: must be a positive size, got '0k'"),
        ("[listener]\naddress = \"127.0.0.1\"", "listener.address: needs a port (host:port): '127.0.0.1'"),
        ("[listener]\nallow_plaintext_auth = 1", "listener.allow_plaintext_auth: must be true or false, got an integer"),
        ("[listener]\ntls_key = \"\"", "listener.tls_key: must be a non-empty string, got an empty one"),
        ("[policy]\nthreshold = true", "policy.threshold: must be a number, got a boolean"),
        ("[policy]\nthreshold = nan", "policy.threshold: must be a finite number, got nan"),
        ('[policy]\nscore_header = "X Spam"', "policy.score_header: not a header field name: 'X Spam'"),
        ('[tenants."acme.corp"]\nthreshold = "x"', 'tenants."acme.corp".threshold: must be a number, got a string'),
        ("[dns]\ncheck_sender_domain = \"yes\"", "dns.check_sender_domain: must be true or false, got a string"),
        ("[dns]\ntimeout = 0", "dns.timeout: must be longer than zero, got 0"),
        ("[dns]\nnameservers = \"127.0.0.53\"", "dns.nameservers: must be an array, got a string"),
        ("[spool]\ndirectory = 5", "spool.directory: must be a non-empty string, got an integer"),
        ("[pools.normal.retry]\nmaximum = \"1s\"", "pools.normal.retry.maximum: must not be shorter than initial"),
        ("[pools.normal.retry]\nfactor = 0.5", "pools.normal.retry.factor: must be at least 1, got 0.5"),
        ("[pools.extra]\nsource_addresses = [{ address = \"192.0.2.30\", weight = 0 }]", "pools.extra.source_addresses[0].weight: must be at least 1, got 0"),
        ("[pools.extra]\nsource_addresses = [\"192.0.2.30\", \"192.0.2.30\"]", "pools.extra.source_addresses[1]: 192.0.2.30 is listed twice"),
        ("[pools.extra]\nsource_addresses = [3]", "pools.extra.source_addresses[0]: must be a table, got an integer"),
        ("[pools.extra]\nehlo_name = \"x.example\"", "pools.extra.source_addresses: required: the addresses this pool sends from"),
        ('[pools.extra]\nsource_addresses = ["192.0.2.30"]\nname = "other"', "pools.extra.name: unknown key"),
        ('[pools.extra]\nsource_addresses = ["192.0.2.30"]\nmx_port = 65536', "pools.extra.mx_port: must be at most 65535, got 65536"),
        ('[pools.extra]\nsource_addresses = ["192.0.2.30"]\ndelivery = "lmtp"', "pools.extra.delivery: must be 'mx' or 'smarthost', got 'lmtp'"),
    ],
)
def test_error_messages(extra: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError) as error:
        cfg.loads(MINIMAL + extra)
    assert str(error.value) == message
    assert (error.value.key, error.value.problem) == tuple(message.split(": ", 1))


def test_every_problem_is_reported_one_per_line() -> None:
    text = 'hostname = "not a name"\n[listener]\nmax_recipients = 0\n[dns]\ntimeout = "soon"\n' + MINIMAL + 'retyr = {}\n'
    with pytest.raises(cfg.ConfigError) as error:
        cfg.loads(text)
    assert str(error.value).splitlines() == [
        "hostname: not a host name: 'not a name'",
        "listener.max_recipients: must be at least 1, got 0",
        "dns.timeout: not a duration (like 500ms, 90s, 15m, 4h, 5d, 1w): 'soon'",
        "pools.high-risk.retyr: unknown key",
    ]
    assert error.value.key == "hostname" and error.value.problem == "not a host name: 'not a name'"
    assert [key for key, _ in error.value.errors] == ["hostname", "listener.max_recipients", "dns.timeout", "pools.high-risk.retyr"]


def test_the_hostname_is_the_default_ehlo_and_listener_name() -> None:
    conf = cfg.loads('hostname = "relay.example.net"\n' + MINIMAL + 'ehlo_name = "bulk.example.net"\n')
    assert conf.pools["normal"].ehlo_name == "relay.example.net"
    assert conf.pools["high-risk"].ehlo_name == "bulk.example.net"
    assert conf.listener.hostname == "relay.example.net" and conf.hostname == "relay.example.net"
    assert cfg.loads(MINIMAL).pools["normal"].ehlo_name == "localhost"


def test_pools_are_named_by_their_key() -> None:
    conf = cfg.loads(MINIMAL)
    assert {name: pool.name for name, pool in conf.pools.items()} == {"normal": "normal", "high-risk": "high-risk"}
    # A pool given as an object is named by its key too, without renaming the caller's object.
    pool = cfg.PoolConfig(source_addresses=(cfg.SourceAddress(address=ipaddress.ip_address("192.0.2.30")),))
    conf = cfg.from_dict({"pools": {"normal": cfg.loads(MINIMAL).pools["normal"], "high-risk": pool}})
    assert conf.high_risk_pool.name == "high-risk" and pool.name == ""


def test_the_configuration_is_immutable_and_typed() -> None:
    conf = cfg.loads(MINIMAL + '[listener]\ntls_certificate = "c.pem"\ntls_key = "k.pem"\nauth_users = { bob = "pw" }\n[tenants.acme]\nthreshold = 2\n')
    with pytest.raises(ValueError, match="frozen"):
        conf.hostname = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        conf.pools["normal"].retry.initial = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        conf.pools["x"] = conf.normal_pool  # type: ignore[index]
    with pytest.raises(TypeError):
        conf.listener.auth_users["eve"] = "pw"  # type: ignore[index]
    assert conf.listener.tls_certificate == Path("c.pem") and isinstance(conf.listener.tls_key, Path)
    assert conf.tenants["acme"].threshold == 2.0 and isinstance(conf.tenants["acme"].threshold, float)
    with pytest.raises(TypeError):
        conf.tenants["eve"] = conf.tenants["acme"]  # type: ignore[index]
    assert isinstance(conf.pools["normal"].source_addresses[0].address, ipaddress.IPv4Address)
    assert isinstance(conf.listener.allowed_networks[0], ipaddress.IPv4Network)
    assert conf.listener.address == ("127.0.0.1", 2525)


@pytest.mark.parametrize("text", [MINIMAL, "documented"])
def test_a_dump_loads_back_the_same(text: str) -> None:
    conf = cfg.loads(documented_example() if text == "documented" else text)
    dumped = conf.model_dump(mode="json")
    assert json.loads(json.dumps(dumped)) == dumped  # plain JSON: strings, numbers, tables
    assert dumped["listener"]["address"] == "127.0.0.1:2525"
    assert cfg.from_dict(dumped) == conf
    assert [p.name for p in cfg.from_dict(dumped).pools.values()] == list(conf.pools)


# --- durations and sizes (config/units.py) -----------------------------------------------

DURATION_SCALES = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SIZE_SCALES = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# What a duration or a size may be made of; anything else is garbage.
UNIT_TEXT = set("0123456789." + " \t\n\r\f\v" + "msmhdwkgib" + "MSHDWKGIB")
spaces = st.sampled_from(["", " ", "  ", "\t"])


@given(st.integers(1, 10**9), st.sampled_from(sorted(DURATION_SCALES)), spaces, spaces, spaces)
def test_duration_whole_units(amount: int, unit: str, before: str, between: str, after: str) -> None:
    assert cfg.parse_duration(f"{before}{amount}{between}{unit}{after}") == amount * DURATION_SCALES[unit]


@given(st.integers(0, 10**6), st.from_regex(r"\A[0-9]{1,6}\Z"), st.sampled_from(sorted(DURATION_SCALES)))
def test_duration_decimals(whole: int, fraction: str, unit: str) -> None:
    number = f"{whole}.{fraction}"
    if float(number) == 0:
        with pytest.raises(ValueError, match="longer than zero"):
            cfg.parse_duration(number + unit)
    else:
        assert cfg.parse_duration(number + unit) == float(number) * DURATION_SCALES[unit]


@given(st.floats(min_value=0, exclude_min=True, allow_infinity=False, allow_nan=False))
def test_duration_format_round_trip(seconds: float) -> None:
    text = cfg.format_duration(seconds)
    assert cfg.parse_duration(text) == seconds
    assert cfg.parse_duration(seconds) == seconds  # a number is seconds
    assert cfg.format_duration(cfg.parse_duration(text)) == text


DURATION_ORDER = ["w", "d", "h", "m", "s", "ms"]


@given(st.integers(1, 10**6), st.sampled_from(DURATION_ORDER))
def test_duration_format_picks_the_largest_exact_unit(amount: int, unit: str) -> None:
    text = cfg.format_duration(amount * DURATION_SCALES[unit])
    written = re.fullmatch(r"([1-9][0-9]*)(w|d|h|m|s|ms)", text)
    assert written, text
    picked = DURATION_ORDER.index(written[2])
    assert picked <= DURATION_ORDER.index(unit)
    if picked > 0:  # the next larger unit does not divide it
        assert int(written[1]) * DURATION_SCALES[written[2]] % DURATION_SCALES[DURATION_ORDER[picked - 1]] != 0


@pytest.mark.parametrize(("parse", "points"), [(cfg.parse_duration, 1), (cfg.parse_size, 0)], ids=["duration", "size"])
@given(text=st.one_of(st.text(max_size=20), st.text(alphabet=sorted(UNIT_TEXT), max_size=8)))
def test_garbage_is_refused(parse: Callable[[object], float], points: int, text: str) -> None:
    try:
        value = parse(text)
    except ValueError as exc:
        assert repr(text) in str(exc)  # the message shows what was written
        return
    # Whatever is accepted is made of ASCII digits, a decimal point for a duration, a unit
    # and spaces, and is a positive finite amount.
    assert set(text) <= UNIT_TEXT and text.count(".") <= points
    assert 0 < value < float("inf")


@given(st.one_of(st.text(alphabet=sorted(UNIT_TEXT), max_size=8), st.floats(), st.integers(-5, 5), st.booleans()))
def test_a_delay_is_a_duration_or_zero(value: object) -> None:
    """`parse_delay` (listener.in_flow_delay) takes what `parse_duration` takes, the same, and
    zero written any way a duration could be; it refuses the rest."""
    from deliverypool.config.units import parse_delay

    try:
        expected: float | None = cfg.parse_duration(value)
    except ValueError as exc:
        expected = 0.0 if "longer than zero" in str(exc) and not (isinstance(value, (int, float)) and value < 0) else None
    if expected is None:
        with pytest.raises(ValueError):
            parse_delay(value)
    else:
        assert parse_delay(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "s", "5 s s", "-5s", "+5s", "5sec", "5S", "1e3s", "5.s", ".5s", "5,5s", "5 5s", "٥s", "5\u2003s", "0", "0ms", "0.0h", "9" * 400, -1, 0, 0.0, float("inf"), float("nan"), 10**400, True, None, [5], {"s": 5}],
)
def test_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        cfg.parse_duration(value)


@given(
    st.integers(1, 10**12),
    st.sampled_from(["k", "m", "g"]),
    st.sampled_from(["", "i"]),
    st.sampled_from(["", "b"]),
    st.booleans(),
    spaces,
)
def test_size_units_are_powers_of_1024_in_any_spelling(amount: int, prefix: str, infix: str, suffix: str, upper: bool, between: str) -> None:
    unit = prefix + infix + suffix
    text = f"{amount}{between}{unit.upper() if upper else unit}"
    assert cfg.parse_size(text) == amount * SIZE_SCALES[prefix]
    assert cfg.parse_size(f"{amount}B") == cfg.parse_size(f"{amount}") == cfg.parse_size(amount) == amount


@given(st.integers(1, 2**70))
def test_size_format_round_trip(size: int) -> None:
    text = cfg.format_size(size)
    assert cfg.parse_size(text) == size
    assert re.fullmatch(r"[1-9][0-9]*(GiB|MiB|KiB|B)", text)
    assert text.endswith("B") and (text[-3:] not in ("KiB", "MiB", "GiB") or size % 1024 == 0)


def test_format_examples() -> None:
    assert [cfg.format_size(n) for n in (1, 1023, 1024, 1536, 25 * 1024**2, 3 * 1024**3, 1024**4)] == ["1B", "1023B", "1KiB", "1536B", "25MiB", "3GiB", "1024GiB"]
    assert [cfg.format_duration(s) for s in (0.5, 1, 90, 120, 3600, 5 * 86400, 14 * 86400, 0.0001, 1.5e-7)] == ["500ms", "1s", "90s", "2m", "1h", "5d", "2w", "0.0001s", "0.00000015s"]


@pytest.mark.parametrize("value", ["", "MB", "1.5MB", "-1k", "25 MB B", "25TB", "25KK", "٥k", "0", "0k", 0, -1, 1.0, 1.5, True, None, ["25MB"]])
def test_size_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        cfg.parse_size(value)


# --- the JSON Schema for editors (docs/relay.schema.json) ---------------------------------

SCHEMA_FILE = REPO / "docs" / "relay.schema.json"


def schema_validator() -> Any:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_the_committed_schema_is_what_the_models_generate() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "docs/relay.schema.json is stale: run .venv/bin/python -m deliverypool.config.schema docs/relay.schema.json"
    )


def test_every_key_in_the_schema_has_a_description() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    tables = [schema, *(d for d in schema["$defs"].values() if "properties" in d)]
    tables += [alt for d in schema["$defs"].values() for alt in d.get("anyOf", []) if "properties" in alt]
    keys = {(table.get("title"), key): prop for table in tables for key, prop in table["properties"].items()}
    assert len(keys) > 40  # every table was found, SourceAddress's inside its anyOf too
    assert [key for key, prop in keys.items() if not prop.get("description")] == []
    # The keys are exactly the models' fields: none missing, none invented.
    models: list[type[BaseModel]] = [cfg.RelayConfig, cfg.ListenerConfig, cfg.SpoolConfig, cfg.PolicyConfig, cfg.DnsConfig, cfg.PoolConfig, cfg.RetryConfig, cfg.SourceAddress, cfg.ScoreConfig, cfg.MilterConfig,
                                      cfg.TenantConfig, cfg.MonitorConfig, cfg.AdminConfig, cfg.AlertsConfig, cfg.ObserveConfig, cfg.LimitsConfig, cfg.StateConfig, cfg.DnsblConfig, cfg.DkimConfig, cfg.DkimKeyConfig,
                                      cfg.RuleConfig, cfg.WarmupConfig, cfg.AuthConfig, cfg.SrsConfig]
    assert {(m.__name__ if m is not cfg.RelayConfig else schema["title"], info.alias or f) for m in models for f, info in m.model_fields.items()} == set(keys)


def test_the_schema_accepts_what_loads_accepts() -> None:
    validator = schema_validator()
    assert list(validator.iter_errors(tomllib.loads(documented_example()))) == []
    assert list(validator.iter_errors(tomllib.loads(MINIMAL))) == []
    for duration in (90, 0.5, "90s", "500ms", "1.5h", "1w"):
        for size in (1000, "25MB", "512k", "10MiB"):
            data = tomllib.loads(MINIMAL + f"[dns]\ntimeout = {json.dumps(duration)}\n[listener]\nsize_limit = {json.dumps(size)}\n")
            assert list(validator.iter_errors(data)) == [], (duration, size)
            cfg.from_dict(data)


@pytest.mark.parametrize(
    "extra",
    [
        '[dns]\ntimeout = "soon"',
        "[dns]\ntimeout = -1",
        '[listener]\nsize_limit = "big"',
        '[listener]\nsize_limit = "1.5MB"',
        '[listener]\nhostnmae = "x"',
        '[listener]\nhostname = "not a name"',
        '[listener]\naddress = "127.0.0.1"',
        '[pools.extra]\nsource_addresses = ["10.0.0.300"]',
        '[pools.extra]\nsource_addresses = []',
        '[pools.extra]\nehlo_name = "x.example"',
        '[pools.extra]\nsource_addresses = [{ address = "192.0.2.30", weight = 0 }]',
        '[pools.extra]\nsource_addresses = ["192.0.2.30"]\ntls = "maybe"',
        '[pools.extra]\nsource_addresses = ["192.0.2.30"]\nname = "extra"',
        "[pools.normal.retry]\njitter = 1.5",
        '[policy]\nscore_header = "X Spam"',
        '[tenants.acme]\nthreshold = "x"',
        '[tenants.acme]\nauth_users = "acme-app"',
        '[monitor]\nfactor = 1',
    ],
)
def test_the_schema_refuses_what_loads_refuses(extra: str) -> None:
    data = tomllib.loads(MINIMAL + extra)
    assert list(schema_validator().iter_errors(data)) != []
    with pytest.raises(cfg.ConfigError):
        cfg.from_dict(data)


def test_the_schema_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schema_main([str(tmp_path / "schema.json")]) == 0
    assert (tmp_path / "schema.json").read_text() == SCHEMA_FILE.read_text()
    assert schema_main([]) == 0
    assert capsys.readouterr().out == SCHEMA_FILE.read_text()
    assert schema_main(["--help"]) == 2


def test_tenants_and_the_monitor_tables() -> None:
    conf = cfg.loads(
        MINIMAL
        + '[tenants.acme]\nauth_users = ["acme-app"]\nnetworks = ["10.1.0.0/16"]\ndomains = ["ACME.Example."]\nthreshold = 3.0\n'
        + '[monitor]\nwindow = "2s"\nmin_dsns = 5\n[admin]\naddress = "127.0.0.1:9425"\n[alerts]\nwebhook = "http://127.0.0.1:8080/x"\n'
    )
    acme = conf.tenants["acme"]
    assert (acme.auth_users, acme.domains, acme.threshold) == (("acme-app",), ("acme.example",), 3.0)
    assert acme.networks == (ipaddress.ip_network("10.1.0.0/16"),)
    assert (conf.monitor.window, conf.monitor.min_dsns, conf.monitor.factor, conf.monitor.resolve_at) == (2.0, 5, 4.0, 2.0)
    assert conf.monitor.tick == 0.2 and conf.admin.address == ("127.0.0.1", 9425)
    assert cfg.loads(MINIMAL).admin.address is None and cfg.loads(MINIMAL).alerts.webhook is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # The old table is an error that names the new key.
        ("[policy.tenants]\nacme = 3.0", "policy.tenants: per-tenant thresholds moved: write [tenants.acme] threshold"),
        ("[tenants.none]", "tenants.none: 'none' is the label of mail without a tenant"),
        ('[tenants."a b"]', 'tenants."a b": a tenant name is'),
        ('[tenants.a]\nauth_users = ["u"]\n[tenants.b]\nauth_users = ["u"]', "tenants.b.auth_users[0]: 'u' is also an AUTH user of tenant 'a'"),
        ('[tenants.a]\nnetworks = ["10.0.0.0/8"]\n[tenants.b]\nnetworks = ["10.0.0.0/8"]', "tenants.b.networks[0]: 10.0.0.0/8 is also a network of tenant 'a'"),
        ('[tenants.a]\ndomains = ["not a domain"]', "tenants.a.domains[0]: not a domain name"),
        ('[alerts]\nwebhook = "ftp://x"', "alerts.webhook: not an http:// or https:// URL"),
        ("[monitor]\nfactor = 2.0\nresolve_factor = 2.0", "monitor.resolve_factor: must be below factor"),
        ("[monitor]\nmin_dsns = 0", "monitor.min_dsns: must be at least 1"),
    ],
)
def test_tenant_and_monitor_mistakes_name_their_key(extra: str, expected: str) -> None:
    with pytest.raises(cfg.ConfigError) as error:
        cfg.loads(MINIMAL + extra)
    assert str(error.value).startswith(expected), str(error.value)


def test_auth_table(tmp_path: Path) -> None:
    """[auth]: defaults, SRS with its key file read at load (relative to the configuration),
    and errors in one line naming the key."""
    base = {"pools": {name: {"source_addresses": [{"address": f"127.0.0.{i}"}]} for i, name in enumerate(("normal", "high-risk"), 1)}}
    config = cfg.from_dict(base)
    assert (config.auth.enabled, config.auth.auth_unknown_pool, config.auth.srs) == (False, "high-risk", None)
    (tmp_path / "srs.keys").write_text("# the first signs\nnew-key\nold-key\n")
    config = cfg.from_dict({**base, "auth": {"srs": {"domain": "srs.relay.example", "key_file": "srs.keys"}}}, base=tmp_path)
    assert config.auth.srs is not None and (config.auth.srs.max_age_days, config.auth.srs.separator) == (21, "=")
    assert config.auth.srs.keys == (b"new-key", b"old-key")
    assert policy_from_config(config).auth_unknown_pool == "high-risk"
    with pytest.raises(cfg.ConfigError, match=r"auth\.auth_unknown_pool"):
        cfg.from_dict({**base, "auth": {"auth_unknown_pool": "relay"}})
    with pytest.raises(cfg.ConfigError, match=r"auth\.srs\.key_file"):
        cfg.from_dict({**base, "auth": {"srs": {"domain": "srs.relay.example"}}})
    for content, problem in ((None, "No such file or directory"), ("# nothing\n\n", "holds no key")):
        if content is not None:
            (tmp_path / "empty.keys").write_text(content)
        with pytest.raises(cfg.ConfigError) as error:
            cfg.from_dict({**base, "auth": {"srs": {"domain": "srs.relay.example", "key_file": str(tmp_path / "empty.keys")}}})
        [line] = str(error.value).splitlines()
        assert line.startswith("auth.srs.key_file: SRS key file ") and line.endswith(problem), line
    lenient = cfg.from_dict({**base, "auth": {"enabled": True, "auth_unknown_pool": "normal"}})
    assert policy_from_config(lenient).auth_unknown_pool == "normal"
    # The SRS example of the configuration page loads, with a key file of the test's.
    page = (REPO / "docs" / "guide" / "relay-configuration.md").read_text(encoding="utf-8")
    srs = page[page.index("```toml\n[auth.srs]") + len("```toml\n") :]
    srs = srs[: srs.index("```")].replace("/etc/deliverypool/srs.keys", str(tmp_path / "srs.keys"))
    documented = cfg.loads(documented_example().replace("# [auth.srs]: see", "# see") + srs)
    assert documented.auth.srs is not None and (documented.auth.srs.domain, documented.auth.srs.keys) == ("srs.example.net", (b"new-key", b"old-key"))
