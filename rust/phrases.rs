//! The wording of bounces and delay notices, in groups, each with the software that writes it.
//!
//! Phrases come from what mail software writes: Postfix's built-in bounce templates, Exim's
//! `deliver.c`, sendmail's `savemail.c`, `qmail-send.c`, Courier's `module.dsn` templates,
//! Exchange / Office 365 and IIS SMTP NDRs, Lotus Domino, GroupWise, Gmail, Yahoo!, content
//! gateways (amavisd-new, Barracuda), list servers (Mailman, fml), Dovecot's Sieve reject,
//! OpenSMTPD, masqmail and UUPC/extended. A group's `origin` says so. A group added because
//! corpus samples needed it, and not found in any template, is `Origin::Corpus` with the
//! corpus families (`lhost-*`/`rhost-*` file names) it was introduced for: the corpus tool's
//! leave-one-family-out run disables those to show which rules exist only for one family.
//!
//! Phrases are lowercase; white space in them matches any run of white space; a leading `^`
//! anchors a subject phrase at the start of the subject (after a leading `[list]` tag), a
//! trailing `$` at its end. Subject forms are anchored because people write the same words
//! ("mail delivery failed - help"): a template's subject has a fixed shape. Non-ASCII phrases are UTF-8 and match
//! subjects (decoded, lowercased) and 8-bit bodies written in UTF-8.

use crate::labels::closed_set;

closed_set! {
    /// Where a group is looked for, and which signal a match adds (see `dsn::Signal`); the
    /// `kind` of a `PHRASE_GROUPS` row in Python.
    #[derive(Debug)]
    pub enum Kind {
        /// A subject as bounce and delay templates write it ("Undelivered Mail Returned to Sender").
        SubjectForm = "subject-form",
        /// A word bounces use in subjects, which people use too ("undeliverable", "bounce").
        SubjectWord = "subject-word",
        /// A reply or forward prefix at the start of the subject ("Re:", "Fwd:", "AW:"): the
        /// subject is a person's, whatever bounce wording follows, so subject signals do not fire.
        ReplyPrefix = "reply-prefix",
        /// A sentence from a bounce or delay template body ("This is the qmail-send program at").
        BodyTemplate = "body-template",
        /// Wording bounce explanations and SMTP replies use ("user unknown", "mailbox is full").
        BodyWording = "body-wording",
    }
}

impl Kind {
    pub fn in_subject(self) -> bool {
        matches!(self, SubjectForm | SubjectWord | ReplyPrefix)
    }
}

/// Why a group is in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Written by this software (its source, templates or documented messages).
    Template(&'static str),
    /// Wording of the misses reported from the outside test sets, whose software was not
    /// identified.
    Report(&'static str),
    /// Introduced for these corpus families; not found in a template source.
    Corpus(&'static [&'static str]),
}

impl Origin {
    /// The corpus families the group exists for (empty when it comes from a source).
    pub fn families(self) -> &'static [&'static str] {
        match self {
            Corpus(families) => families,
            _ => &[],
        }
    }

    pub fn source(self) -> Option<&'static str> {
        match self {
            Template(s) | Report(s) => Some(s),
            Corpus(_) => None,
        }
    }
}

#[derive(Debug)]
pub struct Group {
    /// Stable name (`exim-failure-body`): the corpus tool and tests disable groups by name.
    pub name: &'static str,
    pub kind: Kind,
    pub origin: Origin,
    pub phrases: &'static [&'static str],
}

use Kind::*;
use Origin::*;

/// Every phrase group. The index of a group is its id in the matchers; names are unique.
pub const GROUPS: &[Group] = &[
    // ---- subjects: the forms templates write -------------------------------------------------
    Group {
        name: "postfix-subject",
        kind: SubjectForm,
        origin: Template("Postfix bounce(8) built-in templates (bounce_templates.c): failure, delay, success, verify"),
        phrases: &[
            "^undelivered mail returned to sender",
            "^delayed mail (still being retried)",
            "^successful mail delivery report",
            "^mail delivery status report",
            "^postmaster copy: undelivered mail",
            "^postmaster warning: delayed mail",
        ],
    },
    Group {
        name: "exim-subject",
        kind: SubjectForm,
        // "Mail delivery failed: returning message to sender"; "Warning: message <id> delayed <t>".
        origin: Template("Exim deliver.c: bounce and delay-warning subjects"),
        phrases: &["^mail delivery failed: returning message to sender", "^mail delivery failed$", "^warning: message"],
    },
    Group {
        name: "sendmail-subject",
        kind: SubjectForm,
        origin: Template("sendmail savemail.c returntosender(): Returned mail / Warning / Postmaster notify"),
        phrases: &["^returned mail:", "^warning: could not send message", "^postmaster notify:", "^postmaster warning:"],
    },
    Group {
        name: "qmail-subject",
        kind: SubjectForm,
        origin: Template("qmail-send.c (and the qmail-derived MTAs of Yahoo! and others): \"failure notice\""),
        phrases: &["^failure notice$"],
    },
    Group {
        name: "courier-subject",
        kind: SubjectForm,
        origin: Template("Courier module.dsn/dsnsubjectnotice.txt, dsnsubjectwarn.txt"),
        phrases: &["^notice: mail delivery status.", "^warning: delayed mail."],
    },
    Group {
        name: "exchange-subject",
        kind: SubjectForm,
        origin: Template("Exchange Server, Exchange Online and IIS SMTP NDR / DSN subjects; Gmail's DSN subjects"),
        phrases: &[
            "^undeliverable:",
            "^delivery delayed:",
            "^delivery status notification",
        ],
    },
    Group {
        name: "exchange-localised-subject",
        kind: SubjectForm,
        origin: Template("Exchange / Outlook NDR subject prefix in its shipped languages (de, fr, es, it, nl, pt, ja, zh)"),
        phrases: &[
            "^unzustellbar:",
            "^non remis",
            "^no se puede entregar:",
            "^non recapitabile:",
            "^onbestelbaar:",
            "^não é possível entregar:",
            "^não entregue:",
            "^配信不能:",
            "^无法投递:",
            "^無法傳遞:",
        ],
    },
    Group {
        name: "domino-subject",
        kind: SubjectForm,
        origin: Template("Lotus Domino router: \"DELIVERY FAILURE: ...\"; content gateways' \"Delivery Failure\" notices"),
        phrases: &["^delivery failure:", "^delivery failure$", "^delivery failure notification", "^delivery failure report"],
    },
    Group {
        name: "groupwise-subject",
        kind: SubjectForm,
        origin: Template("Novell GroupWise status message"),
        phrases: &["^message status - undeliverable"],
    },
    Group {
        name: "failed-mail-subject",
        kind: SubjectForm,
        // UUPC/extended: "Failed mail for <address>"; list servers: "FAILED MAIL to <address>".
        origin: Template("UUPC/extended rmail Bounce(); list-server failed-mail notices"),
        phrases: &["^failed mail"],
    },
    Group {
        name: "smail-subject",
        kind: SubjectForm,
        origin: Template("smail 3 returned mail (\"mail failed, returning to sender\")"),
        phrases: &["^mail failed, returning to sender"],
    },
    Group {
        name: "delay-warning-subject",
        kind: SubjectForm,
        origin: Report("delay notices among the outside sets' misses (\"Mail Delivery Warning\")"),
        phrases: &["^mail delivery warning"],
    },
    Group {
        name: "gateway-subject",
        kind: SubjectForm,
        origin: Template("Barracuda (\"Message you sent blocked by our bulk email filter\"), amavisd-new (\"Undeliverable mail, ...\"), cc:Mail and MS Mail (\"Undeliverable Mail\")"),
        phrases: &["^message you sent blocked", "^undeliverable mail,", "^undeliverable mail$"],
    },
    // ---- subjects: words --------------------------------------------------------------------
    Group {
        name: "bounce-subject-words",
        kind: SubjectWord,
        // The words of the forms above, anywhere in the subject: they also start subjects of
        // MTAs not listed (X1, MXLogic, Mimecast, ...), and people use them.
        origin: Template("the failure wording of the subject forms above (Postfix, Exim, sendmail, Exchange, Domino)"),
        phrases: &[
            "undeliverable",
            "undelivered",
            "returned mail",
            "returned to sender",
            "returning message to sender",
            "delivery notification",
            "delivery failed",
            "delivery failure",
            "delivery has failed",
            "mail delivery failed",
            "failure notice",
            "delivery status notification",
            "delivery problem",
            "failed delivery",
            "non-delivery",
            "nondeliverable",
            "non delivery",
            "non-deliverable",
            "not delivered",
            "could not be delivered",
            "couldn't be delivered",
            "could not send message",
            "could not send mail",
            "permanent delivery failure",
            "delivery delayed",
            "delayed mail",
            "mail failure",
            "mail system error",
            "returned message",
            "message not delivered",
            "bounce",
        ],
    },
    Group {
        name: "localised-subject-words",
        kind: SubjectWord,
        origin: Template("non-delivery wording of localised NDRs (Exchange, Domino, Gmail) in German, French, Spanish, Portuguese, Italian, Dutch, Nordic, Polish, Czech, Russian, Chinese, Korean"),
        phrases: &[
            "unzustellbar",
            "nicht zustellbar",
            "non remis",
            "non distribuable",
            "échec de la remise",
            "echec de la remise",
            "impossible de remettre",
            "no se puede entregar",
            "no entregado",
            "não entregue",
            "não é possível entregar",
            "nao entregue",
            "falha na entrega",
            "non recapitabile",
            "mancata consegna",
            "impossibile recapitare",
            "onbestelbaar",
            "niet bezorgd",
            "kan inte levereras",
            "kunne ikke leveres",
            "ei voitu toimittaa",
            "niedostarczalne",
            "nie dostarczono",
            "nedoručitelné",
            "недоставленное",
            "не доставлено",
            "невозможно доставить",
            "ошибка доставки",
            "无法投递",
            "投递失败",
            "無法傳遞",
            "전달되지",
        ],
    },
    // ---- subjects: reply and forward prefixes -----------------------------------------------
    Group {
        name: "reply-prefix",
        kind: ReplyPrefix,
        origin: Template("reply and forward prefixes of mail clients (RFC 5322 3.6.5 \"Re:\"; Outlook's localised RE/FW, AW/WG, TR, RV, SV/VS, Antw/Doorst, R/I, Odp/PD, 回复/转发, 返信/転送, Отв/Пересл)"),
        phrases: &[
            "^re:", "^re :", "^fw:", "^fwd:", "^fw :", "^aw:", "^wg:", "^tr:", "^tr :", "^rv:", "^sv:", "^vs:",
            "^antw:", "^doorst:", "^r:", "^i:", "^odp:", "^pd:", "^ynt:", "^ilt:", "^回复:", "^回复：",
            "^答复:", "^答复：", "^转发:", "^转发：", "^回覆:", "^轉寄:", "^返信:", "^転送:", "^отв:",
            "^пересл:",
        ],
    },
    // ---- bodies: template sentences -----------------------------------------------------------
    Group {
        name: "postfix-body",
        kind: BodyTemplate,
        origin: Template("Postfix bounce(8) built-in templates (bounce_templates.c)"),
        phrases: &[
            "this is the mail system at host",
            "i'm sorry to have to inform you that your message could not be delivered",
            "this is a warning only. you do not need to resend your message.",
            "your message could not be delivered for more than",
            "enclosed is the mail delivery report that you requested",
        ],
    },
    Group {
        name: "exim-body",
        kind: BodyTemplate,
        origin: Template("Exim deliver.c: bounce and delay-warning texts, print_address_error()"),
        phrases: &[
            "this message was created automatically by mail delivery software",
            "could not be delivered to one or more of its recipients",
            "has not yet been delivered to one or more of its recipients",
            "the following address(es) failed",
            "smtp error from remote mail server after",
            "smtp error from remote mailer after",
            "this is a copy of the message, including all the headers",
            "no action is required on your part. delivery attempts will continue",
        ],
    },
    Group {
        name: "sendmail-body",
        kind: BodyTemplate,
        origin: Template("sendmail savemail.c errbody()"),
        phrases: &[
            "the original message was received at",
            "the following addresses had permanent fatal errors",
            "the following addresses had transient non-fatal errors",
            "the following addresses had successful delivery notifications",
            "transcript of session follows",
            "this is a warning message only",
            "you do not need to resend your message",
        ],
    },
    Group {
        name: "qmail-body",
        kind: BodyTemplate,
        origin: Template("qmail-send.c bounce text"),
        phrases: &[
            "this is the qmail-send program at",
            "i'm afraid i wasn't able to deliver your message",
            "this is a permanent error; i've given up",
            "below this line is a copy of the message",
        ],
    },
    Group {
        name: "courier-body",
        kind: BodyTemplate,
        origin: Template("Courier module.dsn/dsnheader.txt, dsnfailed.txt, dsndelayed.txt"),
        phrases: &[
            "this is a delivery status notification from",
            "running the courier mail server",
            "your message to the following recipients cannot be delivered",
            "the delivery of the following e-mail message has been delayed",
        ],
    },
    Group {
        name: "exchange-body",
        kind: BodyTemplate,
        origin: Template("Exchange 5.5-2019, Exchange Online and IIS SMTP NDR and delay texts"),
        phrases: &[
            "delivery has failed to these recipients or groups",
            "delivery has failed to these recipients or distribution lists",
            "your message did not reach some or all of the intended recipients",
            "the following recipient(s) could not be reached",
            "the following recipient(s) cannot be reached",
            "microsoft exchange will not try to redeliver this message",
            "diagnostic information for administrators",
            "delivery is delayed to these recipients or groups",
            "this message hasn't been delivered yet",
            "this is an automatically generated delivery status notification",
            "delivery to the following recipients failed",
            "delivery to the following recipients has been delayed",
            "unable to deliver message to the following recipients",
        ],
    },
    Group {
        name: "exchange-localised-body",
        kind: BodyTemplate,
        origin: Template("Exchange 2010+ NDR first line in German, French, Spanish, Italian, Dutch, Portuguese"),
        phrases: &[
            "fehler bei der zustellung an folgende empfänger oder gruppen",
            "la remise a échoué pour ces destinataires ou groupes",
            "error en la entrega a estos destinatarios o grupos",
            "recapito non riuscito a questi destinatari o gruppi",
            "bezorging is mislukt voor deze ontvangers of groepen",
            "falha na entrega para estes destinatários ou grupos",
        ],
    },
    Group {
        name: "smail-body",
        kind: BodyTemplate,
        origin: Template("smail 3 returned mail section rulers"),
        phrases: &["failed addresses follow:", "message log follows:"],
    },
    Group {
        name: "gmail-body",
        kind: BodyTemplate,
        origin: Template("Gmail bounce and delay notices (old and current wording)"),
        phrases: &[
            "delivery to the following recipient failed permanently",
            "delivery to the following recipients failed permanently",
            "delivery to the following recipient has been delayed",
            "technical details of permanent failure",
            "technical details of temporary failure",
            "because the address couldn't be found, or is unable to receive mail",
            "there was a temporary problem delivering your message to",
            "the response from the remote server was",
        ],
    },
    Group {
        name: "yahoo-body",
        kind: BodyTemplate,
        origin: Template("Yahoo! Mail failure notices"),
        phrases: &["sorry, we were unable to deliver your message to the following address", "unable to deliver message to the following address"],
    },
    Group {
        name: "domino-groupwise-body",
        kind: BodyTemplate,
        origin: Template("Lotus Domino (\"Your message ... was not delivered to:\"), Novell GroupWise"),
        phrases: &["was not delivered to:", "the message that you sent was undeliverable to the following"],
    },
    Group {
        name: "gateway-body",
        kind: BodyTemplate,
        origin: Template("amavisd-new sender notifications; Dovecot Pigeonhole Sieve reject"),
        phrases: &[
            "this nondelivery report was generated by the program amavisd-new",
            "our content checker found",
            "your message was automatically rejected by dovecot",
            "was automatically rejected:",
        ],
    },
    Group {
        name: "small-mta-body",
        kind: BodyTemplate,
        origin: Template("OpenSMTPD bounce.c, masqmail failmsg.tpl, UUPC/extended rmail"),
        phrases: &[
            "this is the mailer-daemon, please do not reply to this email",
            "an error has occurred while attempting to deliver a message for the following list of recipients",
            "this message was sent to you by the mailer daemon",
            "sorry, but your mail could not be delivered to all recipients",
            "failed message follows",
        ],
    },
    Group {
        name: "list-server-body",
        kind: BodyTemplate,
        origin: Template("Mailman 2 (refuse.txt; Moderate.py: non-member and member-moderation rejections)"),
        phrases: &["has been rejected by the list moderator", "your message has been automatically rejected"],
    },
    Group {
        name: "dsn-fields-body",
        kind: BodyTemplate,
        // Gateways without MIME write the RFC 3464 fields into the text.
        origin: Template("RFC 3464 per-recipient fields written as text (non-MIME gateways, Domino, X.400)"),
        phrases: &["final-recipient: rfc822;", "diagnostic-code: smtp;", "original-recipient: rfc822;", "remote-mta: dns;"],
    },
    Group {
        name: "reported-failure-body",
        kind: BodyTemplate,
        origin: Report("failure and delay notices among the outside sets' misses"),
        phrases: &[
            "could not deliver message to the following recipient",
            "your mail cannot be delivered to the following address",
            "delivery of your message has been postponed",
            "delivery of the message has been postponed",
            "delivery has been postponed",
        ],
    },
    // ---- bodies: explanation wording --------------------------------------------------------
    Group {
        name: "failure-wording",
        kind: BodyWording,
        origin: Template("explanations in bounce texts (Postfix, Exim, Exchange, Gmail, Courier: \"could not be delivered\", \"was not delivered\", ...)"),
        phrases: &[
            "could not be delivered",
            "couldn't be delivered",
            "cannot be delivered",
            "can't be delivered",
            "was not delivered",
            "wasn't delivered",
            "delivery has failed",
            "delivery failed",
            "delivery failure",
            "permanent error",
            "permanent fatal error",
            "undeliverable",
            "undelivered",
            "unable to deliver",
            "returned mail",
            "non-delivery",
            "message could not be",
        ],
    },
    Group {
        name: "smtp-reply-wording",
        kind: BodyWording,
        origin: Template("SMTP replies MTAs quote in bounces (RFC 5321 550/552 texts; Postfix, sendmail, Exchange, qmail)"),
        phrases: &[
            "user unknown",
            "unknown user",
            "no such user",
            "mailbox unavailable",
            "mailbox is full",
            "mailbox full",
            "recipient address rejected",
            "no mailbox here by that name",
            "relay access denied",
            "quota exceeded",
        ],
    },
    // ---- corpus families ----------------------------------------------------------------------
    Group {
        name: "fml-notice",
        kind: SubjectForm,
        // fml's "You <address> are not member (<list>)" and "Loop Alert: Duplicated Message-ID".
        origin: Corpus(&["lhost-fml"]),
        phrases: &["are not member (", "^loop alert:"],
    },
    Group {
        name: "fml-notice-body",
        kind: BodyTemplate,
        origin: Corpus(&["lhost-fml"]),
        phrases: &["you are not a member of this mailing list", "duplicated message-id"],
    },
    Group {
        name: "au-one-net-body",
        kind: BodyTemplate,
        // "Your mail sent on: <date>\n Could not be delivered to: <address>\n As their mailbox is full."
        origin: Corpus(&["lhost-kddi"]),
        phrases: &["could not be delivered to: <"],
    },
    Group {
        name: "au-one-net-subject",
        kind: SubjectForm,
        // au one net (KDDI): "メールエラー通知" ("mail error notice") from no-reply@.
        origin: Corpus(&["lhost-kddi"]),
        phrases: &["メールエラー", "エラー通知"],
    },
];

/// The group called `name`.
pub fn group_id(name: &str) -> Option<usize> {
    GROUPS.iter().position(|g| g.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::normalise;

    #[test]
    fn names_are_unique_and_phrases_normalised() {
        for (i, group) in GROUPS.iter().enumerate() {
            assert!(GROUPS[..i].iter().all(|g| g.name != group.name), "{} twice", group.name);
            assert!(!group.phrases.is_empty(), "{}", group.name);
            for phrase in group.phrases {
                let text = phrase.strip_prefix('^').unwrap_or(phrase);
                let text = text.strip_suffix('$').unwrap_or(text);
                assert_eq!(normalise(text), text.as_bytes(), "{}: {phrase:?} is not lowercase, trimmed, single-spaced", group.name);
                assert!(!phrase.starts_with('^') && !phrase.ends_with('$') || group.kind.in_subject(), "{}: only subjects have ends", group.name);
            }
        }
        assert!(GROUPS.len() < 128, "the disabled set is a u128");
    }
}
