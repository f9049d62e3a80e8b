"""The RFC 8601 ``Authentication-Results`` header field for an
:class:`~deliverypool.auth.authenticator.AuthResult`.

One ``resinfo`` per method, each on its own folded line::

    Authentication-Results: relay.example;
    	spf=pass smtp.mailfrom=user@example.com;
    	spf=none smtp.helo=mx.example.com;
    	dkim=pass header.d=example.com header.s=sel;
    	dmarc=pass (p=reject dis=none) header.from=example.com

Comments carry the why (the SPF mechanism or problem, the DMARC policy and disposition);
they are cut to printable ASCII without parentheses or backslashes, so that nothing a sender
chose (an SPF explanation, a domain) can break the field's structure.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from deliverypool._core import SpfOutcome

if TYPE_CHECKING:
    from deliverypool.auth.authenticator import AuthResult

__all__ = ["authentication_results"]

_UNSAFE = re.compile(r"[^\x20-\x7e]|[()\\]")
_TOKEN = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~@-]+$")


def _comment(text: str) -> str:
    text = _UNSAFE.sub("", text).strip()
    return f" ({text[:200]})" if text else ""


def _value(text: str) -> str:
    """A property value: as is when it is a token (an address or domain), else quoted."""
    if _TOKEN.match(text):
        return text
    return '"' + _UNSAFE.sub("", text).replace('"', "") + '"'


def _spf(outcome: SpfOutcome) -> str:
    why = outcome.mechanism or outcome.detail or outcome.reason
    if outcome.identity == "helo":
        return f"spf={outcome.result}{_comment(why)} smtp.helo={_value(outcome.domain)}"
    return f"spf={outcome.result}{_comment(why)} smtp.mailfrom={_value(outcome.sender)}"


def authentication_results(authserv_id: str, result: AuthResult) -> str:
    """The whole field: ``Authentication-Results: ...`` folded, ending in CRLF."""
    resinfo = [_spf(outcome) for outcome in (result.spf, result.helo) if outcome is not None]
    for signature in result.dkim:
        line = f"dkim={signature.result} header.d={_value(signature.domain)}"
        if signature.selector:
            line += f" header.s={_value(signature.selector)}"
        resinfo.append(line)
    if result.dmarc is not None:
        dmarc = result.dmarc
        if dmarc.policy is not None:
            policy = f"p={dmarc.p}" + (f" sp={dmarc.sp}" if dmarc.sp else "") + f" dis={dmarc.disposition}"
        else:
            policy = dmarc.reason
        resinfo.append(f"dmarc={dmarc.result}{_comment(policy)} header.from={_value(dmarc.from_domain)}")
    return "Authentication-Results: " + _value(authserv_id) + ";\r\n\t" + ";\r\n\t".join(resinfo) + "\r\n"
