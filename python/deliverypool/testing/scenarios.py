"""DSNs for the monitor's tests, benchmark and demo, made from real bounces: each template is a
DSN of the shared corpus (``../shared/corpus/sisimai``) with one per-recipient block, a
Reporting-MTA and an attached original; `DsnFactory.dsn` rewrites its recipient, status,
diagnostic, reporting MTA and the original's Message-ID and From, and checks with the scanner
that the result reads as asked. Without the corpus, the relay's own RFC 3464 builder is used.

`SCENARIOS` are the four causes the monitor tells apart, each as a function that makes the
n-th DSN of an attack on a tenant.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deliverypool._core import classify, scan
from deliverypool.mail.dsn import Failure, build_dsn
from deliverypool.corpus import CorpusNotFound, corpus_root
from deliverypool.mail.headers import crlf, header_block

__all__ = ["SCENARIOS", "SENDS_ORIGINALS", "DsnFactory", "DsnSpec", "corpus_folder"]


def corpus_folder() -> Path | None:
    """The corpus's bsd maildir: where deliverypool.corpus finds the corpus ($DELIVERYPOOL_CORPUS,
    else ../shared/corpus/sisimai from the current directory), else beside a source checkout
    that holds this file; None when there is none."""
    try:
        return corpus_root() / "maildir" / "bsd"
    except CorpusNotFound:
        pass
    for root in Path(__file__).resolve().parents:
        folder = root.parent / "shared" / "corpus" / "sisimai" / "maildir" / "bsd"
        if folder.is_dir():
            return folder
    return None


@dataclass(frozen=True)
class DsnSpec:
    recipient: str
    status: str
    diagnostic: str
    original_message_id: str
    original_from: str
    reporting_mta: str


def _action(status: str) -> str:
    """The RFC 3464 Action that goes with a status: 5.x.x failed, 4.x.x delayed, 2.x.x delivered."""
    return {"5": "failed", "4": "delayed"}.get(status[:1], "delivered")


def _address(text: str) -> str | None:
    match = re.search(r"[^\s<>;,\"()]+@[^\s<>;,\"()]+", text)
    return match.group(0) if match else None


class DsnFactory:
    def __init__(self, folder: Path | None = None, *, limit: int = 40, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.templates: list[tuple[bytes, str, str, str, str]] = []
        folder = folder if folder is not None else corpus_folder()
        if folder is None:
            return
        for path in sorted(folder.glob("rfc3464-*.eml")) + sorted(folder.glob("lhost-*.eml")):
            raw = crlf(path.read_bytes())
            raw = raw[header_block(raw)[0] :]
            if max(map(len, raw.split(b"\r\n"))) > 990:
                continue
            facts = scan(raw)
            if len(facts.recipients) != 1 or not (facts.reporting_mta and facts.original_message_id and facts.original_from):
                continue
            recipient = _address(facts.recipients[0].final_recipient or "")
            sender = _address(facts.original_from)
            if recipient is None or sender is None or not facts.recipients[0].status:
                continue
            mta = facts.reporting_mta.split(";", 1)[-1].strip()
            template = (raw, recipient, facts.original_message_id.strip(), sender, mta)
            spec = DsnSpec("probe@check.test", "5.1.1", "smtp; 550 5.1.1 probe", "<probe@check.test>", "probe@from.test", "mx.check.test")
            if self._matches(self._fill(template, spec), spec):
                self.templates.append(template)
            if len(self.templates) >= limit:
                break

    @staticmethod
    def _fill(template: tuple[bytes, str, str, str, str], spec: DsnSpec) -> bytes:
        raw, recipient, message_id, sender, mta = template
        text = raw.decode("latin-1")
        text = re.sub(r"(?im)^(Status:[ \t]*)[245]\.\d+\.\d+[^\r\n]*", lambda m: m.group(1) + spec.status, text, count=1)
        # A delay notice's template made into a failure (or back): the Action goes with the Status.
        text = re.sub(r"(?im)^(Action:[ \t]*)[^\r\n]*", lambda m: m.group(1) + _action(spec.status), text, count=1)
        text = re.sub(r"(?im)^(Diagnostic-Code:)[^\r\n]*((\r\n[ \t][^\r\n]*)*)", lambda m: m.group(1) + " " + spec.diagnostic, text, count=1)
        text = text.replace(message_id, spec.original_message_id)
        for old, new in ((recipient, spec.recipient), (sender, spec.original_from), (mta, spec.reporting_mta)):
            text = re.sub(re.escape(old), lambda _: new, text, flags=re.I)
        return text.encode("latin-1", "replace")

    @staticmethod
    def _matches(dsn: bytes, spec: DsnSpec) -> bool:
        facts = scan(dsn)
        return (
            len(facts.recipients) == 1
            and _address(facts.recipients[0].final_recipient or "") == spec.recipient
            and (facts.recipients[0].status or "").startswith(spec.status)
            and (facts.recipients[0].action or _action(spec.status)).strip().lower() == _action(spec.status)
            and (facts.original_message_id or "").strip() == spec.original_message_id
            and _address(facts.original_from or "") == spec.original_from
            and "dsn" in classify(dsn, mail_from="").reasons
        )

    def dsn(self, spec: DsnSpec) -> bytes:
        """A DSN that reads as `spec` (from a random corpus template, else built)."""
        for _ in range(3):
            if not self.templates:
                break
            made = self._fill(self.rng.choice(self.templates), spec)
            if self._matches(made, spec):
                return made
        original = f"From: <{spec.original_from}>\r\nTo: <{spec.recipient}>\r\nSubject: hello\r\nMessage-ID: {spec.original_message_id}\r\n\r\nHi.\r\n"
        return build_dsn(
            reporting_mta=spec.reporting_mta,
            original_sender=spec.original_from,
            failures=[Failure(spec.recipient, f"550 {spec.status} {spec.diagnostic}", spec.reporting_mta)],
            original=original.encode(),
            queue_id="GENERATED",
            arrival=time.time(),
            now=time.time(),
        )


# An attack scenario: (factory, rng, tenant's own domain, n) -> (DSN spec, client address key).
Scenario = Callable[[DsnFactory, random.Random, str, int], tuple[DsnSpec, str]]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(5, 10)))


def directory_harvest(factory: DsnFactory, rng: random.Random, domain: str, n: int) -> tuple[DsnSpec, str]:
    # The tenant's server rejects guessed addresses at its own domain and bounces to forged senders.
    return DsnSpec(
        f"{_word(rng)}{n}@{domain}", rng.choice(["5.1.1", "5.1.1", "5.1.10"]), "smtp; 550 5.1.1 <x>: Recipient address rejected: User unknown",
        f"<{_word(rng)}.{n}@{_word(rng)}.example>", f"{_word(rng)}@{_word(rng)}.example", f"mx.{domain}",
    ), "usual"


def backscatter(factory: DsnFactory, rng: random.Random, domain: str, n: int) -> tuple[DsnSpec, str]:
    # Spam forged with the tenant's domain bounces from everywhere about mail it never sent.
    far = f"{_word(rng)}.example"
    return DsnSpec(
        f"{_word(rng)}@{far}", rng.choice(["5.1.1", "5.2.2", "5.7.1", "5.1.1"]), "smtp; 550 mailbox unavailable",
        f"<{_word(rng)}{n}@{domain}>", f"{_word(rng)}@{domain}", f"mx.{far}",
    ), "usual"


def spam_attack(factory: DsnFactory, rng: random.Random, domain: str, n: int) -> tuple[DsnSpec, str]:
    # A compromised account sends spam through the relay; the world rejects it as spam.
    far = f"{_word(rng)}.example"
    return DsnSpec(
        f"{_word(rng)}@{far}", rng.choice(["5.7.1", "5.7.1", "5.7.0", "5.7.26"]),
        rng.choice(["smtp; 550 5.7.1 Message rejected as spam", "smtp; 554 5.7.1 Service unavailable; client host blocked using zen.spamhaus.org", "smtp; 550 5.7.1 Our system has detected that this message is likely unsolicited mail"]),
        f"<spam-{n}@{domain}>", f"news@{domain}", f"mx.{far}",
    ), "usual"


def rogue_server(factory: DsnFactory, rng: random.Random, domain: str, n: int) -> tuple[DsnSpec, str]:
    # A server nobody set up, in the tenant's network, replays the same bounce in a loop.
    return DsnSpec(
        f"loop@{domain}", "5.4.6", "smtp; 554 5.4.6 Too many hops", f"<loop-1@{domain}>", f"mailer-daemon@{domain}", "rogue.internal.test",
    ), "rogue"


# Scenarios whose originals went out through the relay first (the compromised account's spam):
# the driver sends a message with the DSN's original Message-ID before the DSN.
SENDS_ORIGINALS = frozenset({"spam-attack"})

SCENARIOS: dict[str, Scenario] = {
    "directory-harvest": directory_harvest,
    "backscatter": backscatter,
    "spam-attack": spam_attack,
    "rogue-server": rogue_server,
}


def ordinary_bounce(factory: DsnFactory, rng: random.Random, domain: str, n: int, relayed_ids: list[str]) -> DsnSpec:
    """An everyday bounce of a message the tenant sent through the relay (1-3% of its mail)."""
    status, text = rng.choice(
        [("5.1.1", "smtp; 550 5.1.1 User unknown"), ("4.2.2", "smtp; 452 4.2.2 Mailbox full"), ("5.2.2", "smtp; 552 5.2.2 Over quota"),
         ("5.4.7", "smtp; 421 4.4.7 Delivery time expired"), ("5.1.2", "smtp; 550 5.1.2 Host unknown"), ("5.7.1", "smtp; 550 5.7.1 Rejected as spam")]
    )
    far = rng.choice(["gmail.example", "outlook.example", "yahoo.example", "web.example", "corp.example", "mail.example"])
    original = rng.choice(relayed_ids) if relayed_ids else f"<ord-{n}@{domain}>"
    return DsnSpec(f"{_word(rng)}@{far}", status, text, original, f"app@{domain}", f"mx.{far}")
