"""The Python face of deliverypool.auth without a network: the check objects' arguments and
errors, the closed sets, and the Authentication-Results field (RFC 8601) built from results
reached on answers given here."""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import deliverypool.auth as auth
from deliverypool.auth import (
    AuthError,
    AuthResult,
    DkimIdentity,
    DmarcCheck,
    DmarcOutcome,
    SpfCheck,
    SpfOutcome,
    authentication_results,
)


def run(check: Any, zone: dict[tuple[str, str], tuple[str, tuple[Any, ...], str]]) -> Any:
    while isinstance(step := check.step(), tuple):
        for qtype, name in step:
            check.answer(qtype, name, *zone.get((qtype, name), ("negative", (), "nxdomain")))
    return step


def spf(ip: str, mail_from: str, helo: str, txt: dict[str, str], identity: str = "mailfrom") -> SpfOutcome:
    zone = {("TXT", name): ("positive", (text.encode(),), "records") for name, text in txt.items()}
    outcome = run(SpfCheck(ip, mail_from, helo, identity=identity), zone)  # type: ignore[arg-type]
    assert isinstance(outcome, SpfOutcome)
    return outcome


def test_dkim_identities_from_the_dkim_outcome() -> None:
    from deliverypool.auth.dkim import DkimCheck, DkimOutcome
    from deliverypool.auth.dkim import DkimSignature as Signed

    outcome = DkimOutcome(
        signed=(Signed("tenant.example", "s1", "ed25519-sha256"),),
        checks=(DkimCheck("esp.example", "k", "rsa-sha256", "fail", "body-hash-mismatch"), DkimCheck("tenant.example", "k2", "rsa-sha256", "pass")),
    )
    assert DkimIdentity.from_outcome(outcome) == (
        DkimIdentity("tenant.example", "pass", "s1"),
        DkimIdentity("esp.example", "fail", "k"),
        DkimIdentity("tenant.example", "pass", "k2"),
    )


def test_closed_sets_are_labels() -> None:
    for table in (auth.SPF_RESULTS, auth.SPF_REASONS, auth.DMARC_RESULTS, auth.DMARC_REASONS, auth.DMARC_POLICIES, auth.SRS_ERRORS):
        assert len(set(table)) == len(table)
        assert all(name.replace("-", "").isalnum() and name.islower() for name in table)


def test_bad_arguments_are_auth_errors() -> None:
    with pytest.raises(AuthError, match="invalid IP address"):
        SpfCheck("999.1.1.1", "a@example.com", "h.example.com")
    with pytest.raises(AuthError, match="identity"):
        SpfCheck("192.0.2.1", "a@example.com", "h.example.com", identity="from")  # type: ignore[arg-type]
    check = SpfCheck("192.0.2.1", "a@example.com", "h.example.com")
    with pytest.raises(AuthError, match="record type"):
        check.answer("SRV", "example.com", "positive", ())
    with pytest.raises(AuthError, match="outcome"):
        check.answer("TXT", "example.com", "maybe", ())
    with pytest.raises(AuthError, match="invalid A records"):
        check.answer("A", "example.com", "positive", ("not-an-address",))
    with pytest.raises(AuthError, match="SPF result"):
        DmarcCheck("example.com", spf=("example.com", "passed"))
    with pytest.raises(ValueError, match="DkimIdentity.result"):
        DkimIdentity("example.com", "ok")  # type: ignore[arg-type]
    assert issubclass(AuthError, ValueError)


def test_steps_ask_then_answer() -> None:
    check = SpfCheck("[192.0.2.1]", "<a@Example.COM>", "h.example.com")
    assert check.step() == (("TXT", "example.com"),)
    check.answer("TXT", "example.com", "unknown", detail="servfail")
    outcome = check.step()
    assert isinstance(outcome, SpfOutcome)
    assert (outcome.result, outcome.reason, outcome.detail) == ("temperror", "dns-error", "TXT example.com: servfail")
    assert outcome.sender == "a@Example.COM"
    # The round's answers may go with the step instead.
    check = SpfCheck("192.0.2.1", "a@example.com", "h.example.com")
    outcome = check.step([("TXT", "example.com", "positive", (b"v=spf1 ip4:192.0.2.0/24 -all",), "records")])
    assert isinstance(outcome, SpfOutcome) and (outcome.result, outcome.mechanism) == ("pass", "ip4:192.0.2.0/24")
    with pytest.raises(AuthError, match="record type"):
        check.step([("SRV", "example.com", "positive", (), "")])


def result_for(mail_from: str = "user@example.com") -> AuthResult:
    txt = {"example.com": "v=spf1 ip4:192.0.2.0/24 -all", "h.example.com": "v=spf1 -all"}
    mailfrom = spf("192.0.2.1", mail_from, "h.example.com", txt)
    helo = spf("192.0.2.1", mail_from, "h.example.com", txt, identity="helo")
    dkim = (DkimIdentity("example.com", "pass", "sel1"), DkimIdentity("esp.example", "fail", "s"))
    zone = {("TXT", "_dmarc.example.com"): ("positive", (b"v=DMARC1; p=reject; sp=quarantine",), "records")}
    dmarc = run(DmarcCheck("example.com", dkim=[(s.domain, s.result == "pass") for s in dkim], spf=(mailfrom.domain, mailfrom.result)), zone)
    assert isinstance(dmarc, DmarcOutcome)
    return AuthResult(mailfrom, helo, None, dmarc, dkim)


def test_authentication_results_field() -> None:
    field = result_for().authentication_results("relay.example")
    assert field == (
        "Authentication-Results: relay.example;\r\n"
        "\tspf=pass (ip4:192.0.2.0/24) smtp.mailfrom=user@example.com;\r\n"
        "\tspf=fail (-all) smtp.helo=h.example.com;\r\n"
        "\tdkim=pass header.d=example.com header.s=sel1;\r\n"
        "\tdkim=fail header.d=esp.example header.s=s;\r\n"
        "\tdmarc=pass (p=reject sp=quarantine dis=none) header.from=example.com\r\n"
    )
    # It is one well-formed header field.
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(field.encode() + b"\r\nbody\r\n")
    assert len(parsed.get_all("Authentication-Results") or []) == 1


@given(local=st.text(min_size=1, max_size=30))
def test_nothing_a_sender_writes_breaks_the_field(local: str) -> None:
    mail_from = f"{local}@example.com"
    try:
        result = result_for(mail_from)
    except AuthError:
        return
    field = authentication_results("relay.example", result)
    value = field.split(":", 1)[1]
    assert field.endswith("\r\n") and "\r\n" not in value[:-2].replace("\r\n\t", "")
    assert value.count("(") == value.count(")")
    assert all(32 <= ord(c) < 127 or c in "\r\n\t" for c in field)
