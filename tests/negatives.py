"""Mail that is not a DSN, written here: hundreds of varied messages of the kinds a bounce
detector confuses with bounces. Nothing is copied from third-party mail; the shapes follow
what the software named in each function writes (Mailman and Google Groups list headers,
RFC 3834 auto-replies, RFC 8098 MDNs, RFC 5965 ARF, RFC 7489 DMARC and RFC 8460 TLS-RPT
reports, iCalendar invitations, ...), the wording is made up.

`negatives()` returns `(kind, envelope sender, message)` triples, deterministic (seeded). The
envelope sender is what the message itself says (`""` for the null reverse-path automatic
replies use), so tests can classify with and without it.
"""

from __future__ import annotations

import base64
import quopri
import random
from collections.abc import Callable, Iterator
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

Message = tuple[str, str, bytes]

_PEOPLE = [
    ("Ann Smith", "ann@example.com"),
    ("Bob Müller", "bob.mueller@example.de"),
    ("Chloé Martin", "chloe@example.fr"),
    ("Dai Nakamura", "dai@example.jp"),
    ("Eva Nowak", "eva.nowak@example.pl"),
    ("Farid Haddad", "farid@example.org"),
    ("Greta Jansen", "greta@example.nl"),
    ("Hugo Silva", "hugo@example.com.br"),
    ("Ivan Petrov", "ivan@example.ru"),
    ("Jo Lee", "jo@example.kr"),
]

# A postmaster and an administrator who write as people.
_STAFF = [("Postmaster", "postmaster@example.org"), ("System Administrator", "admin@example.net")]

_TOPICS = [
    "lunch on friday?", "the quarterly numbers", "Meeting notes", "trip to Lisbon", "Your draft",
    "Besprechung am Montag", "Réunion de lundi", "Reunión del martes", "会議の件", "Отчёт за май",
    "photos from the weekend", "Server migration plan", "invoice 2291", "re-org", "Bug 4412",
]

_BOUNCE_TALK = [
    ("why did my mail bounce?", "I sent the report to Carl and it bounced. Any idea why?"),
    ("bounce rate is up again", "Our newsletter bounce rate went from 1% to 4% this month; most are user unknown."),
    ("Undeliverable messages from our server", "Customers say our replies come back undeliverable. Can you check the SPF record?"),
    ("delivery failure to example.net", "Every message to example.net fails with 'mailbox unavailable'. Is their MX down?"),
    ("Returned mail problem", "I keep getting returned mail when I write to the list. The message could not be delivered, it says."),
    ("mail delivery failed - help", "After the migration, mail delivery failed for three users. Their mailboxes were full."),
    ("Non-delivery reports", "How do I stop Exchange from sending non-delivery reports for spam?"),
    ("Mailer-daemon messages", "I get messages from MAILER-DAEMON about mail I never sent. Backscatter?"),
]

# Bounce text a person pastes or forwards: Postfix, Exim, sendmail, qmail, Exchange wording.
_PASTED_BOUNCES = [
    "This is the mail system at host mx.example.net.\n\nI'm sorry to have to inform you that your message could not\n"
    "be delivered to one or more recipients. It's attached below.\n\n<carl@example.net>: host mx.example.net said:\n"
    "550 5.1.1 <carl@example.net>: Recipient address rejected: User unknown\n",
    "This message was created automatically by mail delivery software.\n\nA message that you sent could not be delivered "
    "to one or more of its\nrecipients. This is a permanent error. The following address(es) failed:\n\n  carl@example.net\n"
    "    SMTP error from remote mail server after RCPT TO:<carl@example.net>:\n    550 No such user\n",
    "The original message was received at Mon, 1 Jan 2024 10:00:00 +0100\nfrom localhost [127.0.0.1]\n\n"
    "   ----- The following addresses had permanent fatal errors -----\n<carl@example.net>\n    (reason: 550 5.1.1 User unknown)\n\n"
    "   ----- Transcript of session follows -----\n... while talking to mx.example.net.:\n>>> RCPT To:<carl@example.net>\n",
    "Hi. This is the qmail-send program at mx.example.net.\nI'm afraid I wasn't able to deliver your message to the following addresses.\n"
    "This is a permanent error; I've given up. Sorry it didn't work out.\n\n<carl@example.net>:\nSorry, no mailbox here by that name. (#5.1.1)\n",
    "Delivery has failed to these recipients or groups:\n\ncarl@example.net\nThe e-mail address you entered couldn't be found.\n\n"
    "Diagnostic information for administrators:\n\nGenerating server: EX1.example.net\nRemote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound'\n",
]

_FORWARD_SUBJECTS = [
    "Fwd: Returned mail: see transcript for details",
    "FW: Undeliverable: Quarterly numbers",
    "Fwd: Mail delivery failed: returning message to sender",
    "Fwd: failure notice",
    "WG: Unzustellbar: Besprechung",
    "TR: Non remis : réunion",
    "Fw: Delivery Status Notification (Failure)",
    "RE: Undelivered Mail Returned to Sender",
    "AW: Undeliverable: Angebot",
    "Re: Returned mail: User unknown",
]

_FORWARD_MARKERS = [
    "---------- Forwarded message ---------\nFrom: Mail Delivery Subsystem <mailer-daemon@example.net>\nDate: Mon, 1 Jan 2024\n"
    "Subject: Returned mail\nTo: {addr}\n\n",
    "-----Original Message-----\nFrom: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@example.net>\n"
    "Sent: Monday, January 1, 2024 10:00 AM\nSubject: Undeliverable: hello\n\n",
    "Begin forwarded message:\n\n> From: MAILER-DAEMON@example.net\n> Subject: failure notice\n\n",
    "On Mon, 1 Jan 2024, Mail Delivery System <MAILER-DAEMON@example.net> wrote:\n",
]


def _date(rng: random.Random) -> str:
    moment = datetime(2016, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=rng.randrange(5_000_000))
    return format_datetime(moment)


def _encode_subject(rng: random.Random, subject: str) -> str:
    """The subject as written, or RFC 2047-encoded (B or Q) as clients do for non-ASCII."""
    if subject.isascii() and rng.random() < 0.7:
        return subject
    data = subject.encode()
    if rng.random() < 0.5:
        return "=?utf-8?b?" + base64.b64encode(data).decode() + "?="
    return "=?UTF-8?Q?" + quopri.encodestring(data, header=True).decode() + "?="


class _Writer:
    """Builds one message: header fields in order, then a body; LF or CRLF line ends."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.fields: list[tuple[str, str]] = []

    def add(self, name: str, value: str) -> _Writer:
        self.fields.append((name, value))
        return self

    def common(self, from_: str, to: str, subject: str, domain: str = "example.com") -> _Writer:
        rng = self.rng
        self.add("Received", f"from mail.{domain} (mail.{domain} [192.0.2.{rng.randrange(1, 250)}])\n\tby mx.example.org "
                 f"(Postfix) with ESMTPS id {rng.randrange(16**10):010X}\n\tfor <{to}>; {_date(rng)}")
        self.add("From", from_).add("To", to).add("Subject", _encode_subject(rng, subject))
        self.add("Date", _date(rng)).add("Message-ID", f"<{rng.randrange(10**12)}.{rng.randrange(10**6)}@{domain}>")
        return self

    def build(self, body: str, content_type: str | None = "text/plain; charset=utf-8", qp: bool = False) -> bytes:
        fields = list(self.fields)
        if content_type:
            fields.append(("MIME-Version", "1.0"))
            fields.append(("Content-Type", content_type))
        data = body.encode()
        if qp:
            fields.append(("Content-Transfer-Encoding", "quoted-printable"))
            data = quopri.encodestring(data)
        elif not data.isascii():
            fields.append(("Content-Transfer-Encoding", "8bit"))
        text = "".join(f"{name}: {value}\n" for name, value in fields).encode() + b"\n" + data
        if self.rng.random() < 0.3:
            text = text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return text


def _person(rng: random.Random) -> tuple[str, str]:
    name, addr = rng.choice(_PEOPLE)
    return f"{name} <{addr}>", addr


def person_to_person(rng: random.Random) -> Iterator[Message]:
    for _ in range(60):
        from_, addr = _person(rng)
        to = rng.choice(_PEOPLE)[1]
        subject = rng.choice(_TOPICS)
        if rng.random() < 0.3:
            subject = rng.choice(["Re: ", "AW: ", "RE: ", "Fwd: "]) + subject
        body = rng.choice(["Shall we?", "See the attached numbers.", "Danke, bis dann.", "Merci !", "了解です。", "Да, согласен."])
        w = _Writer(rng).common(from_, to, subject, addr.split("@")[1])
        if rng.random() < 0.5:
            w.add("User-Agent", rng.choice(["Mozilla Thunderbird", "Microsoft Outlook 16.0", "Apple Mail (2.3654)"]))
        yield "person", addr, w.build(body, qp=rng.random() < 0.3)
    # Staff who write as people, from postmaster and admin addresses.
    for name, addr in _STAFF:
        for subject, body in [("please whitelist us", "Could you whitelist 192.0.2.7? Thanks."),
                              ("scheduled maintenance", "The mail server restarts at 22:00 tonight."),
                              ("your mailbox quota", "Please archive old mail; quotas change next month.")]:
            to = rng.choice(_PEOPLE)[1]
            yield "person", addr, _Writer(rng).common(f"{name} <{addr}>", to, subject, addr.split("@")[1]).build(body)


def talk_about_bounces(rng: random.Random) -> Iterator[Message]:
    for subject, text in _BOUNCE_TALK:
        for variant in range(5):
            from_, addr = _person(rng)
            body = text
            if variant >= 2:
                # Pasted the bounce into the message.
                body += "\n\nThis is what came back:\n\n" + rng.choice(_PASTED_BOUNCES)
            subject_variant = subject if variant != 4 else "Re: " + subject
            yield "talk-about-bounces", addr, _Writer(rng).common(from_, "it@example.org", subject_variant).build(body)


def forwarded_bounces(rng: random.Random) -> Iterator[Message]:
    for subject in _FORWARD_SUBJECTS:
        for variant in range(4):
            from_, addr = _person(rng)
            marker = rng.choice(_FORWARD_MARKERS).format(addr=addr)
            pasted = rng.choice(_PASTED_BOUNCES)
            if variant == 1:
                pasted = "".join("> " + line + "\n" for line in pasted.splitlines())
            body = "Can you look at this? It happens every day.\n\n" + marker + pasted
            w = _Writer(rng).common(from_, "helpdesk@example.org", subject)
            if variant == 3:
                # Forwarded as an attachment: the bounce is a message/rfc822 part.
                inner = (
                    "From: Mail Delivery System <MAILER-DAEMON@example.net>\nTo: " + addr + "\n"
                    "Subject: Undelivered Mail Returned to Sender\nAuto-Submitted: auto-replied\n"
                    "Content-Type: multipart/report; report-type=delivery-status; boundary=\"in\"\n\n"
                    "--in\nContent-Type: text/plain\n\n" + pasted + "\n--in\nContent-Type: message/delivery-status\n\n"
                    "Reporting-MTA: dns; mx.example.net\n\nFinal-Recipient: rfc822; carl@example.net\nAction: failed\n"
                    "Status: 5.1.1\n\n--in--\n"
                )
                body = (
                    "--out\nContent-Type: text/plain; charset=utf-8\n\nSee the attached bounce.\n"
                    "--out\nContent-Type: message/rfc822\n\n" + inner + "--out--\n"
                )
                yield "forwarded-bounce", addr, w.build(body, 'multipart/mixed; boundary="out"')
            else:
                yield "forwarded-bounce", addr, w.build(body)


def _list_headers(w: _Writer, rng: random.Random, name: str, manager: str) -> None:
    domain = "lists.example.org"
    w.add("List-Id", f"<{name}.{domain}>").add("List-Post", f"<mailto:{name}@{domain}>")
    w.add("List-Unsubscribe", f"<mailto:{name}-request@{domain}?subject=unsubscribe>").add("Precedence", "list")
    if manager == "mailman":
        w.add("Sender", f"\"{name}\" <{name}-bounces@{domain}>").add("Errors-To", f"{name}-bounces@{domain}")
        w.add("X-Mailman-Version", "2.1.39")
    elif manager == "google":
        w.add("Mailing-list", f"list {name}@googlegroups.com; contact {name}+owners@googlegroups.com")
        w.add("X-Google-Group-Id", str(rng.randrange(10**12)))
    elif manager == "ezmlm":
        w.add("Mailing-List", f"contact {name}-help@{domain}; run by ezmlm")
        w.add("Delivered-To", f"mailing list {name}@{domain}")


def mailing_list_posts(rng: random.Random) -> Iterator[Message]:
    subjects = _TOPICS + ["[ANN] release 2.4", "bounce processing in 3.1?", "Re: delivery failures after upgrade",
                          "Undeliverable messages to the archive", "failure notice handling", "Mail delivery failed for some members"]
    for i in range(70):
        name = rng.choice(["users", "dev", "announce", "neko"])
        manager = rng.choice(["mailman", "google", "ezmlm"])
        from_, addr = _person(rng)
        subject = f"[{name}] " + rng.choice(subjects) if rng.random() < 0.6 else rng.choice(subjects)
        w = _Writer(rng)
        if manager == "ezmlm" or i % 10 == 0:
            # qmail's lines in the Received trail; one kind says "invoked for bounce" (the list
            # once relayed a bounce, or qmail handled the post's own bounce path).
            w.add("Received", f"(qmail {rng.randrange(99999)} invoked for bounce); {_date(rng)}")
            w.add("Received", f"(qmail {rng.randrange(99999)} invoked by uid 89); {_date(rng)}")
        w.add("Return-Path", f"<{name}-bounces@lists.example.org>")
        w.common(from_, f"{name}@lists.example.org", subject, addr.split("@")[1])
        _list_headers(w, rng, name, manager)
        body = rng.choice(["Here are the notes.", "The patch is attached.", "+1 from me.",
                           "Members whose mail bounces are disabled after 5 bounces; the user unknown ones at once."])
        if "bounce" in subject or "deliver" in subject.lower():
            body += "\n\n> " + rng.choice(_PASTED_BOUNCES).replace("\n", "\n> ")
        yield "list-post", f"{name}-bounces@lists.example.org", w.build(body + "\n-- \nlist info: https://lists.example.org/\n")


def newsletters(rng: random.Random) -> Iterator[Message]:
    shops = [("Shop News", "news@shop.example"), ("Example Air", "no-reply@air.example"), ("Daily Digest", "noreply@digest.example"),
             ("Parcel Service", "donotreply@parcel.example"), ("Bank", "do-not-reply@bank.example")]
    subjects = ["Große Rabatte", "Your weekly digest", "Flash sale: 40% off", "Free delivery this weekend",
                "Delivery times over the holidays", "New: same-day delivery", "Your statement is ready", "We miss you"]
    for _ in range(60):
        name, addr = rng.choice(shops)
        w = _Writer(rng).add("Return-Path", f"<bounce-{rng.randrange(10**8)}@mailer.{addr.split('@')[1]}>")
        w.common(f"{name} <{addr}>", rng.choice(_PEOPLE)[1], rng.choice(subjects), addr.split("@")[1])
        w.add("List-Unsubscribe", f"<https://{addr.split('@')[1]}/u?id={rng.randrange(10**9)}>").add("Precedence", "bulk")
        w.add("Feedback-ID", f"{rng.randrange(10**6)}:campaign:esp")
        html = ("<html><body><h1>Offers</h1><p>Delivery is free this week. If this message is not displayed "
                "correctly, view it online.</p><p>Unsubscribe</p></body></html>")
        body = f"--alt\nContent-Type: text/plain; charset=utf-8\n\nOffers this week.\n--alt\nContent-Type: text/html; charset=utf-8\n\n{html}\n--alt--\n"
        yield "newsletter", f"bounce@mailer.{addr.split('@')[1]}", w.build(body, 'multipart/alternative; boundary="alt"')


def order_and_shipping(rng: random.Random) -> Iterator[Message]:
    notices = [
        ("Your order #{n} has shipped", "Your parcel is on its way. Estimated delivery: Friday."),
        ("Delivery scheduled for tomorrow", "Your delivery window is 10:00-12:00."),
        ("Delivery attempt failed - we missed you", "We tried to deliver your parcel {n} today but nobody was home. "
         "It could not be delivered; please pick a new delivery date."),
        ("Order confirmation {n}", "Thank you for your order. Delivery to: 12 High Street."),
        ("Your parcel could not be delivered", "The address was incomplete, so the parcel could not be delivered. "
         "It has been returned to the depot."),
        ("Delivery failed: address not found", "Our driver could not find the address. The delivery failed and will be retried."),
        ("Undelivered parcel {n}", "Parcel {n} was undelivered today. Reschedule online."),
        ("Lieferung verspätet", "Ihre Lieferung verzögert sich um einen Tag."),
        ("Votre colis n'a pas pu être livré", "Le livreur n'a pas pu livrer votre colis."),
    ]
    for _ in range(60):
        subject, text = rng.choice(notices)
        n = rng.randrange(10**6, 10**7)
        sender = rng.choice(["no-reply@parcel.example", "orders@shop.example", "Shop <service@shop.example>"])
        addr = sender.split("<")[-1].rstrip(">")
        w = _Writer(rng).add("Return-Path", f"<bounces@{addr.split('@')[1]}>")
        w.common(sender, rng.choice(_PEOPLE)[1], subject.format(n=n), addr.split("@")[1])
        yield "order", f"bounces@{addr.split('@')[1]}", w.build(text.format(n=n))


def auto_replies(rng: random.Random) -> Iterator[Message]:
    subjects = ["Out of Office: {s}", "Automatic reply: {s}", "Auto: {s}", "Abwesenheitsnotiz: {s}",
                "Réponse automatique : {s}", "Respuesta automática: {s}", "Away until Monday", "Autoreply: {s}", "Re: {s}"]
    bodies = ["I am out of the office until Monday with limited access to email.",
              "Ich bin bis zum 5. nicht im Büro. Ihre Nachricht wird nicht weitergeleitet.",
              "This mailbox is no longer monitored. Your message has not been read; please write to support@example.com.",
              "Thank you for your message. This is an automatic reply: we received it and will answer within two days."]
    for _ in range(50):
        from_, addr = _person(rng)
        w = _Writer(rng).add("Return-Path", "<>")
        w.common(from_, rng.choice(_PEOPLE)[1], rng.choice(subjects).format(s=rng.choice(_TOPICS)), addr.split("@")[1])
        w.add("Auto-Submitted", rng.choice(["auto-replied", "auto-replied (vacation)", "auto-generated"]))
        if rng.random() < 0.5:
            w.add("X-Autoreply", "yes").add("Precedence", "auto_reply")
        if rng.random() < 0.3:
            w.add("X-Auto-Response-Suppress", "All")
        yield "auto-reply", "", w.build(rng.choice(bodies))


def challenge_response(rng: random.Random) -> Iterator[Message]:
    systems = [
        ("Please confirm your message", "Your message to {to} has been held. To have it delivered, reply to this "
         "message or visit the confirmation page. Unconfirmed messages are deleted after 7 days."),
        ("Confirm your email address to deliver your message", "I use a challenge-response spam filter. Your message "
         "will not be delivered until you confirm you are a person."),
        ("Your message is awaiting verification", "The recipient only accepts mail from approved senders. "
         "Your message has not been delivered yet; click the link to verify."),
        ("[TMDA] Re: {s}", "This message was created automatically by TMDA. Your original message is held in a pending queue."),
    ]
    for _ in range(30):
        subject, text = rng.choice(systems)
        to = rng.choice(_PEOPLE)[1]
        w = _Writer(rng).add("Return-Path", "<>")
        w.common(f"Spam filter <confirm-{rng.randrange(10**6)}@example.com>", rng.choice(_PEOPLE)[1],
                 subject.format(s=rng.choice(_TOPICS)), "example.com")
        w.add("Auto-Submitted", "auto-replied").add("X-Challenge", "yes")
        yield "challenge-response", "", w.build(text.format(to=to))


def mdns(rng: random.Random) -> Iterator[Message]:
    for i in range(30):
        from_, addr = _person(rng)
        subject = rng.choice(["Read: {s}", "Gelesen: {s}", "Lu : {s}", "Disposition notification", "Return Receipt (displayed) - {s}"])
        w = _Writer(rng).add("Return-Path", "<>" if i % 2 else f"<{addr}>")
        w.common(from_, rng.choice(_PEOPLE)[1], subject.format(s=rng.choice(_TOPICS)), addr.split("@")[1])
        if i % 3 == 2:
            # Lotus Notes' and Outlook's plain receipts: no report part at all.
            yield "mdn", addr, w.build("Your message\n\n  To: ann@example.com\n  Subject: notes\n\nwas read on 1 Jan 2024 10:00.")
            continue
        body = (
            "--mdn\nContent-Type: text/plain\n\nThe message you sent was displayed. This is no guarantee that it was read.\n"
            "--mdn\nContent-Type: message/disposition-notification\n\nReporting-UA: mail.example.com; Thunderbird\n"
            f"Final-Recipient: rfc822;{addr}\nOriginal-Message-ID: <1@example.com>\n"
            "Disposition: manual-action/MDN-sent-manually; displayed\n--mdn--\n"
        )
        yield "mdn", addr, w.build(body, 'multipart/report; report-type=disposition-notification; boundary="mdn"')


def arf_reports(rng: random.Random) -> Iterator[Message]:
    for i in range(25):
        w = _Writer(rng).add("Return-Path", "<>" if i % 2 else "<scomp@aol.example>")
        w.common("Abuse Desk <abuse@isp.example>", "postmaster@example.org", rng.choice(["Abuse report", "Email Feedback Report for IP 192.0.2.7", "complaint about message from 192.0.2.7"]), "isp.example")
        body = (
            "--arf\nContent-Type: text/plain\n\nThis is an email abuse report for an email message received from IP 192.0.2.7.\n"
            "--arf\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nUser-Agent: SomeGenerator/1.0\nVersion: 1\n"
            "Original-Mail-From: <someone@example.org>\nSource-IP: 192.0.2.7\n"
            "--arf\nContent-Type: message/rfc822\n\nFrom: someone@example.org\nSubject: buy now\n\nspam\n--arf--\n"
        )
        yield "arf", "", w.build(body, 'multipart/report; report-type=feedback-report; boundary="arf"')


def dmarc_reports(rng: random.Random) -> Iterator[Message]:
    reporters = [("noreply-dmarc-support@google.example", "google.example"), ("dmarcreport@microsoft.example", "microsoft.example"),
                 ("dmarc_agg@yahoo.example", "yahoo.example")]
    for _ in range(25):
        addr, org = rng.choice(reporters)
        rid = rng.randrange(10**18)
        w = _Writer(rng).add("Return-Path", f"<{addr}>")
        w.common(addr, "dmarc-rua@example.org", f"Report domain: example.org Submitter: {org} Report-ID: <{rid}>", org)
        payload = base64.b64encode(bytes(rng.randrange(256) for _ in range(300))).decode()
        body = (
            "--d\nContent-Type: text/plain\n\nThis is an aggregate report from " + org + ".\n"
            f"--d\nContent-Type: application/gzip; name=\"{org}!example.org!1700000000!1700086400.xml.gz\"\n"
            f"Content-Transfer-Encoding: base64\n\n{payload}\n--d--\n"
        )
        yield "dmarc", addr, w.build(body, 'multipart/mixed; boundary="d"')


def tls_reports(rng: random.Random) -> Iterator[Message]:
    for _ in range(20):
        w = _Writer(rng).add("Return-Path", "<tlsrpt-noreply@google.example>")
        w.common("tlsrpt-noreply@google.example", "tlsrpt@example.org",
                 f"Report Domain: example.org Submitter: google.example Report-ID: <{rng.randrange(10**12)}@google.example>", "google.example")
        w.add("TLS-Report-Domain", "example.org").add("TLS-Report-Submitter", "google.example")
        body = (
            "--t\nContent-Type: text/plain\n\nThis is an aggregate TLS report from google.example\n"
            "--t\nContent-Type: application/tlsrpt+gzip\nContent-Transfer-Encoding: base64\n\n"
            + base64.b64encode(b"{\"policies\": [{\"summary\": {\"total-failure-session-count\": 2}}]}").decode()
            + "\n--t--\n"
        )
        yield "tls-rpt", "tlsrpt-noreply@google.example", w.build(body, 'multipart/report; report-type=tlsrpt; boundary="t"')


def calendar_invites(rng: random.Random) -> Iterator[Message]:
    for _ in range(30):
        from_, addr = _person(rng)
        what = rng.choice(["Delivery review", "Weekly sync", "Post-mortem: mail delivery outage", "Planning"])
        subject = rng.choice(["Invitation: {w} @ Mon 8 Jan 10:00", "Updated invitation: {w}", "Accepted: {w}", "Declined: {w}", "Canceled: {w}"]).format(w=what)
        ics = ("BEGIN:VCALENDAR\nMETHOD:REQUEST\nPRODID:-//Example//Calendar//EN\nBEGIN:VEVENT\nDTSTART:20240108T100000Z\n"
               f"DTEND:20240108T110000Z\nSUMMARY:{what}\nORGANIZER:mailto:{addr}\nEND:VEVENT\nEND:VCALENDAR\n")
        body = (f"--c\nContent-Type: text/plain; charset=utf-8\n\nYou have been invited to {what}.\n"
                f"--c\nContent-Type: text/calendar; method=REQUEST; charset=utf-8\n\n{ics}--c--\n")
        w = _Writer(rng).common(from_, rng.choice(_PEOPLE)[1], subject, addr.split("@")[1])
        yield "calendar", addr, w.build(body, 'multipart/alternative; boundary="c"')


GENERATORS: list[Callable[[random.Random], Iterator[Message]]] = [
    person_to_person, talk_about_bounces, forwarded_bounces, mailing_list_posts, newsletters, order_and_shipping,
    auto_replies, challenge_response, mdns, arf_reports, dmarc_reports, tls_reports, calendar_invites,
]


def negatives(seed: int = 2024) -> list[Message]:
    """Every negative message, the same for the same seed."""
    rng = random.Random(seed)
    return [message for generator in GENERATORS for message in generator(rng)]
