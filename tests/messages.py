"""Ordinary and report messages written for the tests."""

from __future__ import annotations

ORDINARY = [
    b"From: Alice <alice@example.com>\nTo: bob@example.org\nSubject: lunch on friday?\n"
    b"Message-ID: <1@example.com>\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n\nShall we?\n",
    # A person talking about bounces is not a bounce.
    b"From: Carol <carol@example.com>\nTo: ops@example.org\nSubject: Re: our newsletter bounced\n"
    b"\nThe message could not be delivered to three users; the mailbox was full.\n",
    # Replying to postmaster is ordinary mail too.
    b"From: dave@example.com\nTo: postmaster@example.org\nSubject: please whitelist us\n\nThanks.\n",
    # A forwarded bounce, as an attachment: the attached DSN is not this message's own part.
    b"From: erin@example.com\nTo: it@example.org\nSubject: Fwd: weird error\nMIME-Version: 1.0\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\n\n--outer\nContent-Type: text/plain\n\n"
    b"See attached.\n--outer\nContent-Type: message/rfc822\n\n"
    b"From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered Mail Returned to Sender\n"
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"inner\"\n\n"
    b"--inner\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; x@example.net\n"
    b"Action: failed\nStatus: 5.1.1\n\n--inner--\n--outer--\n",
    # Newsletters, 8-bit subjects, no body.
    b"From: news@shop.example\nTo: frank@example.org\nSubject: =?utf-8?q?Gro=C3=9Fe_Rabatte?=\n"
    b"Precedence: bulk\nList-Unsubscribe: <mailto:unsub@shop.example>\n\nBuy.\n",
    "From: grace@example.jp\nSubject: 会議の件\n\n本文\n".encode(),
    b"From: heidi@example.com\nSubject: no body",
]

MDN = (
    b"From: ivan@example.com\nTo: judy@example.org\nSubject: Read: hello\nMIME-Version: 1.0\n"
    b"Content-Type: multipart/report; report-type=disposition-notification; boundary=b\n\n"
    b"--b\nContent-Type: text/plain\n\nYour message was displayed.\n"
    b"--b\nContent-Type: message/disposition-notification\n\n"
    b"Final-Recipient: rfc822; ivan@example.com\nDisposition: manual-action/MDN-sent-manually; displayed\n--b--\n"
)

GLOBAL_DSN = (
    b"From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\nTo: kim@example.org\n"
    b"Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
    b"Content-Type: multipart/report; report-type=global-delivery-status; boundary=g\n\n"
    b"--g\nContent-Type: text/plain; charset=utf-8\n\nSorry.\n"
    b"--g\nContent-Type: message/global-delivery-status\n\n"
    b"Reporting-MTA: dns; mx.example.com\n\n"
    + "Final-Recipient: utf-8; пользователь@пример.рф\nAction: failed\nStatus: 5.1.1\n\n".encode()
    + b"--g\nContent-Type: message/global-headers\n\nSubject: hi\n\n--g--\n"
)
