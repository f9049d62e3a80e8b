//! The SMTP client of one outbound connection, without I/O: the caller feeds it the bytes the
//! server sends (any split), writes the bytes it hands back, and acts on its events. No socket,
//! no clock, no runtime: asyncio drives it in `python/deliverypool/outbound/client.py`, tests
//! and the fuzz target drive it from byte strings.
//!
//! A connection goes: greeting (220) -> EHLO (HELO when EHLO is refused with 5xx) -> STARTTLS
//! when the TLS policy says so and the server offers it (the caller starts TLS on [`Event::StartTls`],
//! then [`Client::tls_started`] sends EHLO again and what the first EHLO said is forgotten,
//! RFC 3207 §4.2) -> [`Event::Ready`]. Then any number of transactions ([`Client::begin`], one
//! at a time), then [`Client::quit`].
//!
//! A transaction is MAIL, one RCPT per recipient, then the body. With PIPELINING (RFC 2920) the
//! commands up to DATA go in one write, so a message costs one round trip to the reply of DATA
//! and one more for its body; with CHUNKING (RFC 3030) as well and the body in memory, `BDAT
//! <size> LAST` and the body follow in the same write: one round trip in all. A body the caller
//! streams from a file is sent with BDAT only once the RCPT replies are in (a large body is not
//! sent to a server that takes no recipient). Without PIPELINING each command waits for the
//! reply to the one before. Every reply is read in order and counted against its command, as
//! RFC 2920 §3.1 requires (a DATA accepted after every RCPT was refused gets a lone dot).
//!
//! Per recipient the outcome is its RCPT reply when refused, the final reply (to the end of
//! data, or BDAT, or a refused DATA) when accepted, or: untried (a 452 "too many recipients"
//! after the first: sent at once in the next transaction), local (an address that needs
//! SMTPUTF8 the server lacks: 553 5.6.7, RFC 6531 §3.2; a message over the server's SIZE: 552
//! 5.3.4, RFC 1870 §6.1), or lost (the connection ended first).
//!
//! Between transactions a connection is only reset (RSET) after one that did not end with a
//! 2xx final reply; the RSET goes in front of the next MAIL, in the same write when pipelining.
//! A transaction on a reused connection that the server closed (or answered 421) before it
//! replied to MAIL is not an attempt at all: [`Outcome::reconnect`].

use std::collections::VecDeque;
use std::fmt::Write as _;

use super::reply::{Extensions, Reply, ReplyError, ReplyParser};

/// When to use STARTTLS (the pool's `tls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// When offered; a refused STARTTLS goes on in plain text (Postfix's "may").
    Opportunistic,
    /// Always: a server that does not offer it, or refuses it, is not used.
    Required,
    /// Never.
    Never,
}

/// What the caller must do after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing yet: wait for more bytes.
    Pending,
    /// The session is set up: a transaction may begin.
    Ready,
    /// Start TLS on the connection now, then call [`Client::tls_started`].
    StartTls,
    /// The session could not be set up ([`Client::refusal`] says why): close the connection.
    Refused,
    /// Write the body now, framed as [`Client::body_frame`] says, then wait for more bytes.
    SendBody,
    /// The transaction is over: [`Client::outcome`].
    Done,
    /// The connection is finished (QUIT answered, the server closed it, or it broke while no
    /// transaction was running): close it.
    Closed,
}

impl Event {
    pub const ALL: [Event; 7] =
        [Event::Pending, Event::Ready, Event::StartTls, Event::Refused, Event::SendBody, Event::Done, Event::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Pending => "pending",
            Event::Ready => "ready",
            Event::StartTls => "start-tls",
            Event::Refused => "refused",
            Event::SendBody => "send-body",
            Event::Done => "done",
            Event::Closed => "closed",
        }
    }
}

/// A reply the client gives itself for a recipient it did not (or could not) send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Local {
    /// The address needs SMTPUTF8 and the server does not offer it (RFC 6531 §3.2).
    NoSmtputf8,
    /// The message is larger than the server's SIZE (RFC 1870 §6.1).
    TooBig { size: u64, limit: u64 },
    /// The address holds a byte no command may carry (a control character).
    BadAddress,
}

impl Local {
    pub fn text(&self) -> String {
        match self {
            Local::NoSmtputf8 => "553 5.6.7 The next hop does not support SMTPUTF8, which this address needs".to_owned(),
            Local::TooBig { size, limit } => {
                format!("552 5.3.4 The message ({size} bytes) is larger than the next hop takes (SIZE {limit})")
            }
            Local::BadAddress => "553 5.1.3 The address cannot be sent: it holds a control character".to_owned(),
        }
    }
}

/// Why a session could not be set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The server's reply (to the greeting, EHLO/HELO, or STARTTLS when TLS is required).
    Reply(Reply),
    /// TLS is required and the server does not offer STARTTLS.
    TlsNotOffered,
    /// The server sent something that is not a reply.
    Malformed(ReplyError),
    /// The server sent bytes after its 220 to STARTTLS, before TLS started (they would be
    /// read as if they came over TLS: CVE-2011-0411's injection).
    DataAfterStartTls,
    /// The connection ended (why).
    Lost(String),
}

impl Refusal {
    pub fn text(&self) -> String {
        match self {
            Refusal::Reply(reply) => reply.to_string(),
            Refusal::TlsNotOffered => "STARTTLS is required and the server does not offer it".to_owned(),
            Refusal::Malformed(error) => format!("the server sent {error}"),
            Refusal::DataAfterStartTls => "the server sent data after its reply to STARTTLS".to_owned(),
            Refusal::Lost(why) => why.clone(),
        }
    }
}

/// One recipient's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rcpt {
    /// The server's reply: `Outcome::replies[index]`.
    Reply(usize),
    /// Not sent in this transaction (452 too many recipients): send it in the next.
    Untried,
    Local(Local),
    /// The connection ended (or broke) before its outcome was known.
    Lost,
}

/// What a transaction gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// One per recipient given to [`Client::begin`], in order.
    pub recipients: Vec<Rcpt>,
    /// The distinct server replies the recipients point at.
    pub replies: Vec<Reply>,
    /// The reply that ended the transaction (to the body, or MAIL, or DATA), if the server gave one.
    pub last: Option<usize>,
    /// The server closed a reused connection before this transaction got a reply to MAIL:
    /// nothing was attempted; send the same again on a new connection.
    pub reconnect: bool,
    /// Why the connection ended, when it did (then the lost recipients' reply says so).
    pub lost: Option<String>,
}

/// A transaction's envelope.
#[derive(Clone, Debug, Default)]
pub struct Envelope {
    /// The reverse-path as it goes on the wire (domain in ASCII); "" for the null sender.
    pub mail_from: String,
    /// The forward-paths as they go on the wire.
    pub recipients: Vec<String>,
    /// The message's size as stored.
    pub size: u64,
    /// The body holds 8-bit bytes (or may: a body file is not read to find out).
    pub eight_bit: bool,
    /// The body is in memory: with PIPELINING and CHUNKING it goes in the same write as the
    /// commands. A body streamed from a file goes after the RCPT replies.
    pub in_memory: bool,
    /// The body ends with CRLF (else DATA ends it with one before the dot).
    pub ends_with_crlf: bool,
    /// RFC 3461 parameters, sent when the server offers DSN: RET, ENVID, and per recipient
    /// NOTIFY and the original recipient (ORCPT).
    pub ret: Option<String>,
    pub envid: Option<String>,
    pub notify: Vec<Option<String>>,
    pub orcpt: Vec<Option<String>>,
}

/// How the caller writes the body on [`Event::SendBody`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyFrame {
    /// DATA: dot-stuff the body and write `suffix()` after it. BDAT: the body as stored.
    pub dot_stuff: bool,
    /// Ends with CRLF already (DATA needs only the dot then).
    ends_with_crlf: bool,
    empty: bool,
}

impl BodyFrame {
    /// What follows the body: the end of data for DATA (RFC 5321 §4.1.1.4), nothing for BDAT.
    pub fn suffix(&self) -> &'static [u8] {
        match (self.dot_stuff, self.ends_with_crlf || self.empty) {
            (false, _) => b"",
            (true, true) => b".\r\n",
            (true, false) => b"\r\n.\r\n",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    /// Waiting for the caller's `tls_started`.
    TlsPending,
    Ready,
    Transaction,
    Quit,
    Closed,
}

/// A command whose reply is awaited, or will be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Rset,
    Mail,
    /// The recipient's index in the envelope.
    Rcpt(usize),
    Data,
    /// The end of data (after the body).
    DataEnd,
    Bdat,
    /// The lone dot after a DATA the server should have refused.
    Dot,
}

#[derive(Debug)]
struct Txn {
    /// Commands still to write (without PIPELINING, or a BDAT that waits for the RCPT replies).
    todo: VecDeque<Cmd>,
    /// Commands written whose replies are awaited, in order.
    awaiting: VecDeque<Cmd>,
    envelope: Envelope,
    outcome: Outcome,
    /// Per recipient: accepted by RCPT, its outcome waiting for the final reply.
    accepted: Vec<bool>,
    any_accepted: bool,
    /// MAIL was refused: its reply is everyone's.
    mail_refused: Option<usize>,
    /// MAIL was answered (a close after it is a lost attempt, not a reconnect).
    mail_answered: bool,
    /// A 452 "too many recipients" was seen: RCPTs not yet sent are not sent.
    too_many: bool,
    reused: bool,
    /// MAIL carries SMTPUTF8 (an address needs it and the server offers it).
    smtputf8: bool,
    body: Option<BodyFrame>,
    /// The body is being written by the caller (`SendBody` given).
    body_sent: bool,
    /// The transaction ended in a way that leaves the server mid-transaction: RSET next time.
    needs_rset: bool,
}

/// The client side of one SMTP connection.
#[derive(Debug)]
pub struct Client {
    ehlo_name: String,
    tls: TlsPolicy,
    /// The connection's name in the text of a lost recipient's reply ("host[ip]:port").
    peer: String,
    state: State,
    parser: ReplyParser,
    out: Vec<u8>,
    extensions: Extensions,
    /// EHLO was refused and HELO used: no extensions.
    helo: bool,
    tls_active: bool,
    /// The server's first reply (the greeting), kept for the log.
    greeting: Option<Reply>,
    refusal: Option<Refusal>,
    txn: Option<Txn>,
    /// The last transaction ended without a 2xx final reply.
    needs_rset: bool,
    transactions: u32,
    /// Why the connection cannot carry another transaction, once it cannot.
    broken: Option<String>,
    last_outcome: Option<Outcome>,
    /// Bytes of a read after an event the caller had to act on first.
    held: Vec<u8>,
}

impl Client {
    pub fn new(ehlo_name: &str, tls: TlsPolicy, peer: &str) -> Client {
        Client {
            ehlo_name: ehlo_name.to_owned(),
            tls,
            peer: peer.to_owned(),
            state: State::Greeting,
            parser: ReplyParser::new(),
            out: Vec::new(),
            extensions: Extensions::default(),
            helo: false,
            tls_active: false,
            greeting: None,
            refusal: None,
            txn: None,
            needs_rset: false,
            transactions: 0,
            broken: None,
            last_outcome: None,
            held: Vec::new(),
        }
    }

    /// Bytes to write to the server now (taken: the next call starts afresh).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    pub fn greeting(&self) -> Option<&Reply> {
        self.greeting.as_ref()
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// True when HELO was used (EHLO refused).
    pub fn used_helo(&self) -> bool {
        self.helo
    }

    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }

    /// The outcome of the last transaction that ended (`Event::Done`).
    pub fn outcome(&self) -> Option<&Outcome> {
        self.last_outcome.as_ref()
    }

    /// Takes the outcome of the last transaction.
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.last_outcome.take()
    }

    /// The body's framing while a transaction waits for it.
    pub fn body_frame(&self) -> Option<BodyFrame> {
        self.txn.as_ref().and_then(|txn| txn.body)
    }

    /// Transactions begun on this connection.
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// True while the connection can carry a transaction.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready && self.broken.is_none()
    }

    /// Why the connection can carry no more transactions, if it cannot.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Reads what the server sent; returns what the caller must do. Every reply in `input` is
    /// handled in this one call (pipelined replies arrive together), up to the first event the
    /// caller must act on before more replies make sense (`Ready`, `StartTls`, `SendBody`
    /// after a 354, `Done`...): bytes after it are held, and read by the next call, which may
    /// pass no bytes (call `receive(b"")` after acting when [`Client::holds_input`]). So the
    /// events are the same however the server's bytes are split into reads.
    pub fn receive(&mut self, input: &[u8]) -> Event {
        if self.held.is_empty() {
            return self.consume(input);
        }
        let mut held = std::mem::take(&mut self.held);
        held.extend_from_slice(input);
        self.consume(&held)
    }

    /// True when bytes of a read were held back for the next `receive`.
    pub fn holds_input(&self) -> bool {
        !self.held.is_empty()
    }

    fn consume(&mut self, input: &[u8]) -> Event {
        let mut at = 0;
        while at < input.len() {
            if self.state == State::Closed {
                return Event::Pending;
            }
            if self.state == State::TlsPending {
                // Nothing may come between the 220 to STARTTLS and the TLS handshake.
                return self.refuse(Refusal::DataAfterStartTls);
            }
            let (used, reply) = self.parser.parse(&input[at..]);
            at += used;
            let event = match reply {
                None => return Event::Pending,
                Some(Err(error)) => return self.malformed(error),
                Some(Ok(reply)) => self.on_reply(reply),
            };
            if event == Event::StartTls && (at < input.len() || self.parser.pending()) {
                // Anything after the 220 would be read as if it came over TLS (CVE-2011-0411).
                return self.refuse(Refusal::DataAfterStartTls);
            }
            if event != Event::Pending {
                if at < input.len() {
                    self.held = input[at..].to_vec();
                }
                return event;
            }
        }
        Event::Pending
    }

    /// The connection ended (closed by the server, reset, or the caller's timer ran out:
    /// `why` says which). Returns the event that ends whatever was waiting.
    pub fn connection_lost(&mut self, why: &str) -> Event {
        let state = self.state;
        self.state = State::Closed;
        if self.broken.is_none() {
            self.broken = Some(why.to_owned());
        }
        match state {
            State::Greeting | State::Ehlo | State::Helo | State::StartTls | State::TlsPending => {
                self.refusal = Some(Refusal::Lost(why.to_owned()));
                Event::Refused
            }
            State::Transaction => self.finish_lost(why),
            State::Ready | State::Quit | State::Closed => Event::Closed,
        }
    }

    /// TLS is up: EHLO again (what the plain-text EHLO said no longer counts).
    pub fn tls_started(&mut self) {
        if self.state == State::TlsPending {
            self.tls_active = true;
            self.extensions = Extensions::default();
            self.state = State::Ehlo;
            self.hello("EHLO");
        }
    }

    /// Ends the session: QUIT (its reply gives `Event::Closed`).
    pub fn quit(&mut self) {
        if matches!(self.state, State::Ready) && self.broken.is_none() {
            self.state = State::Quit;
            self.out.extend_from_slice(b"QUIT\r\n");
        } else {
            self.state = State::Closed;
        }
    }

    /// Starts a transaction (the connection must be ready). Returns `Event::SendBody` when the
    /// body must be written right after the output, `Event::Done` when the transaction ended
    /// before anything was sent (every recipient refused locally, or the connection unusable),
    /// else `Event::Pending`.
    pub fn begin(&mut self, envelope: Envelope) -> Event {
        let count = envelope.recipients.len();
        let mut outcome = Outcome { recipients: vec![Rcpt::Lost; count], ..Outcome::default() };
        if self.state != State::Ready || self.broken.is_some() {
            // The server closed the connection (or said it would) while it was idle.
            outcome.reconnect = self.transactions > 0;
            let why = self.broken.as_deref().unwrap_or("the connection is not ready");
            outcome.lost = Some(format!("451 4.4.2 Connection to {} lost: {why}", self.peer));
            self.state = State::Closed;
            self.last_outcome = Some(outcome);
            return Event::Done;
        }
        let ext = &self.extensions;
        // What cannot be sent at all, decided before anything is.
        let sender_problem = if !clean(&envelope.mail_from) {
            Some(Local::BadAddress)
        } else if !envelope.mail_from.is_ascii() && !ext.smtputf8 {
            Some(Local::NoSmtputf8)
        } else {
            match ext.size_limit {
                Some(limit) if envelope.size > limit => Some(Local::TooBig { size: envelope.size, limit }),
                _ => None,
            }
        };
        if let Some(problem) = sender_problem {
            outcome.recipients = vec![Rcpt::Local(problem); count];
            self.last_outcome = Some(outcome);
            return Event::Done;
        }
        let mut todo = VecDeque::with_capacity(count + 3);
        if self.needs_rset {
            todo.push_back(Cmd::Rset);
        }
        let reused = self.transactions > 0;
        todo.push_back(Cmd::Mail);
        let mut smtputf8 = !envelope.mail_from.is_ascii();
        for (index, address) in envelope.recipients.iter().enumerate() {
            if !clean(address) {
                outcome.recipients[index] = Rcpt::Local(Local::BadAddress);
            } else if !address.is_ascii() && !ext.smtputf8 {
                outcome.recipients[index] = Rcpt::Local(Local::NoSmtputf8);
            } else {
                smtputf8 |= !address.is_ascii();
                todo.push_back(Cmd::Rcpt(index));
            }
        }
        if todo.len() == 1 + usize::from(self.needs_rset) {
            // Every recipient was refused here: nothing to send (an RSET still owed waits).
            self.last_outcome = Some(outcome);
            return Event::Done;
        }
        let chunking = ext.chunking;
        let pipelining = ext.pipelining;
        let bdat_now = chunking && pipelining && envelope.in_memory;
        todo.push_back(if chunking { Cmd::Bdat } else { Cmd::Data });
        let body = Some(BodyFrame { dot_stuff: !chunking, ends_with_crlf: envelope.ends_with_crlf, empty: envelope.size == 0 });
        let mut txn = Txn {
            todo,
            awaiting: VecDeque::new(),
            accepted: vec![false; count],
            envelope,
            outcome,
            any_accepted: false,
            mail_refused: None,
            mail_answered: false,
            too_many: false,
            reused,
            smtputf8,
            body,
            body_sent: false,
            needs_rset: false,
        };
        self.needs_rset = false;
        self.transactions += 1;
        self.state = State::Transaction;
        let mut event = Event::Pending;
        if pipelining {
            // RFC 2920 §3.1: RSET, MAIL and RCPT may be followed by more commands in a group;
            // DATA and BDAT end it.
            while let Some(cmd) = txn.todo.front().copied() {
                if cmd == Cmd::Bdat && !bdat_now {
                    break;
                }
                txn.todo.pop_front();
                self.write_command(&txn, cmd);
                txn.awaiting.push_back(cmd);
                if cmd == Cmd::Bdat {
                    txn.body_sent = true;
                    event = Event::SendBody;
                }
            }
        } else if let Some(cmd) = txn.todo.pop_front() {
            self.write_command(&txn, cmd);
            txn.awaiting.push_back(cmd);
        }
        self.txn = Some(txn);
        event
    }

    fn write_command(&mut self, txn: &Txn, cmd: Cmd) {
        let envelope = &txn.envelope;
        let dsn = self.extensions.dsn;
        match cmd {
            Cmd::Rset => self.out.extend_from_slice(b"RSET\r\n"),
            Cmd::Mail => {
                let mut line = format!("MAIL FROM:<{}>", envelope.mail_from);
                if self.extensions.size_offered {
                    let _ = write!(line, " SIZE={}", envelope.size);
                }
                if envelope.eight_bit && self.extensions.eight_bit_mime {
                    line.push_str(" BODY=8BITMIME");
                }
                if txn.smtputf8 {
                    line.push_str(" SMTPUTF8");
                }
                if dsn {
                    if let Some(ret) = envelope.ret.as_deref().filter(|r| keyword(r)) {
                        let _ = write!(line, " RET={ret}");
                    }
                    if let Some(envid) = &envelope.envid {
                        let _ = write!(line, " ENVID={}", xtext(envid));
                    }
                }
                command(&mut self.out, &[&line]);
            }
            Cmd::Rcpt(index) => {
                let mut line = format!("RCPT TO:<{}>", envelope.recipients[index]);
                if dsn {
                    if let Some(Some(notify)) = envelope.notify.get(index).filter(|n| n.as_deref().is_some_and(keyword)) {
                        let _ = write!(line, " NOTIFY={notify}");
                    }
                    if let Some(Some(orcpt)) = envelope.orcpt.get(index) {
                        let _ = write!(line, " ORCPT=rfc822;{}", xtext(orcpt));
                    }
                }
                command(&mut self.out, &[&line]);
            }
            Cmd::Data => self.out.extend_from_slice(b"DATA\r\n"),
            Cmd::Bdat => command(&mut self.out, &["BDAT ", &envelope.size.to_string(), " LAST"]),
            Cmd::DataEnd | Cmd::Dot => {}
        }
    }

    fn hello(&mut self, verb: &str) {
        command(&mut self.out, &[verb, " ", &self.ehlo_name]);
    }

    fn on_reply(&mut self, reply: Reply) -> Event {
        match self.state {
            State::Greeting => {
                if reply.code == 220 {
                    self.greeting = Some(reply);
                    self.state = State::Ehlo;
                    self.hello("EHLO");
                    Event::Pending
                } else {
                    self.refuse(Refusal::Reply(reply))
                }
            }
            State::Ehlo => {
                if reply.code == 250 {
                    self.extensions = Extensions::from_ehlo(&reply);
                    self.after_hello()
                } else if reply.code / 100 == 5 && !self.tls_active {
                    // RFC 5321 §3.2: a server that does not know EHLO gets HELO.
                    self.state = State::Helo;
                    self.hello("HELO");
                    Event::Pending
                } else {
                    self.refuse(Refusal::Reply(reply))
                }
            }
            State::Helo => {
                if reply.code == 250 {
                    self.helo = true;
                    self.extensions = Extensions::default();
                    self.after_hello()
                } else {
                    self.refuse(Refusal::Reply(reply))
                }
            }
            State::StartTls => {
                if reply.code == 220 {
                    self.state = State::TlsPending;
                    Event::StartTls
                } else if self.tls == TlsPolicy::Required || reply.code == 421 {
                    self.refuse(Refusal::Reply(reply))
                } else {
                    // Opportunistic: a refused STARTTLS goes on in plain text.
                    self.state = State::Ready;
                    Event::Ready
                }
            }
            State::Transaction => self.on_transaction_reply(reply),
            State::Quit => {
                self.state = State::Closed;
                Event::Closed
            }
            State::Ready => {
                // Unsolicited: a 421 before an idle close, or junk. Either way, done.
                self.broken = Some(format!("the server said {reply} while idle"));
                self.state = State::Closed;
                Event::Closed
            }
            State::TlsPending | State::Closed => Event::Pending,
        }
    }

    fn after_hello(&mut self) -> Event {
        let wants_tls = self.tls != TlsPolicy::Never && !self.tls_active;
        if wants_tls && self.extensions.starttls {
            self.state = State::StartTls;
            self.out.extend_from_slice(b"STARTTLS\r\n");
            return Event::Pending;
        }
        if self.tls == TlsPolicy::Required && !self.tls_active {
            return self.refuse(Refusal::TlsNotOffered);
        }
        self.state = State::Ready;
        Event::Ready
    }

    fn refuse(&mut self, refusal: Refusal) -> Event {
        self.refusal = Some(refusal);
        self.state = State::Closed;
        self.broken = Some("the session was refused".to_owned());
        Event::Refused
    }

    fn malformed(&mut self, error: ReplyError) -> Event {
        let why = format!("the server sent {error}");
        match self.state {
            State::Transaction => {
                self.state = State::Closed;
                self.broken = Some(why.clone());
                self.finish_lost(&why)
            }
            State::Greeting | State::Ehlo | State::Helo | State::StartTls | State::TlsPending => {
                self.refuse(Refusal::Malformed(error))
            }
            State::Ready | State::Quit | State::Closed => {
                self.broken = Some(why);
                self.state = State::Closed;
                Event::Closed
            }
        }
    }

    fn on_transaction_reply(&mut self, reply: Reply) -> Event {
        let Some(mut txn) = self.txn.take() else {
            self.state = State::Closed;
            return Event::Closed;
        };
        let Some(cmd) = txn.awaiting.pop_front() else {
            // A reply to no command.
            self.txn = Some(txn);
            self.broken = Some("the server sent a reply to no command".to_owned());
            return self.finish_lost("the server sent a reply to no command");
        };
        let closing = (reply.code == 421).then(|| reply.clone());
        let positive = reply.is_positive();
        match cmd {
            Cmd::Rset => {
                if !positive {
                    // A reused connection that cannot be reset: start afresh elsewhere.
                    self.txn = Some(txn);
                    self.broken = Some(format!("RSET was answered {reply}"));
                    return self.finish_reconnect();
                }
            }
            Cmd::Mail => {
                if closing.is_some() && txn.reused {
                    self.txn = Some(txn);
                    self.broken = Some(format!("MAIL was answered {reply}"));
                    return self.finish_reconnect();
                }
                txn.mail_answered = true;
                if !positive {
                    let index = push_reply(&mut txn.outcome, reply);
                    txn.mail_refused = Some(index);
                    txn.outcome.last = Some(index);
                    for slot in &mut txn.outcome.recipients {
                        if *slot == Rcpt::Lost {
                            *slot = Rcpt::Reply(index);
                        }
                    }
                    txn.needs_rset = true;
                    txn.todo.clear();
                }
            }
            Cmd::Rcpt(index) => {
                if txn.mail_refused.is_none() {
                    if positive {
                        txn.accepted[index] = true;
                        txn.any_accepted = true;
                    } else if too_many_recipients(&reply) && (txn.any_accepted || txn.first_wire() != Some(index)) {
                        txn.outcome.recipients[index] = Rcpt::Untried;
                        txn.too_many = true;
                    } else {
                        let at = push_reply(&mut txn.outcome, reply.clone());
                        txn.outcome.recipients[index] = Rcpt::Reply(at);
                    }
                }
            }
            Cmd::Data => {
                if reply.code == 354 {
                    if txn.any_accepted && txn.mail_refused.is_none() {
                        txn.awaiting.push_back(Cmd::DataEnd);
                        txn.body_sent = true;
                        self.txn = Some(txn);
                        return Event::SendBody;
                    }
                    // RFC 2920 §3.1: DATA accepted with no recipient: a lone dot ends it.
                    self.out.extend_from_slice(b".\r\n");
                    txn.awaiting.push_back(Cmd::Dot);
                } else {
                    txn.needs_rset = true;
                    if txn.any_accepted && txn.mail_refused.is_none() {
                        txn.settle_accepted(reply);
                    }
                }
            }
            Cmd::DataEnd | Cmd::Bdat => {
                if txn.any_accepted && txn.mail_refused.is_none() {
                    if !positive {
                        txn.needs_rset = true;
                    }
                    txn.settle_accepted(reply);
                } else {
                    txn.needs_rset = true;
                }
            }
            Cmd::Dot => txn.needs_rset = true,
        }
        if let Some(reply) = closing {
            // 421: the server closes the connection; whoever has no outcome yet (accepted
            // recipients waiting for the final reply included) gets this reply.
            let at = match txn.outcome.replies.iter().rposition(|r| *r == reply) {
                Some(at) => at,
                None => push_reply(&mut txn.outcome, reply),
            };
            for slot in &mut txn.outcome.recipients {
                if *slot == Rcpt::Lost {
                    *slot = Rcpt::Reply(at);
                }
            }
            txn.outcome.last = Some(at);
            self.broken = Some("the server closed the connection (421)".to_owned());
            self.state = State::Closed;
            self.last_outcome = Some(txn.outcome);
            return Event::Done;
        }
        self.advance(txn)
    }

    /// After a reply: the next command without PIPELINING, the late BDAT, or the end.
    fn advance(&mut self, mut txn: Txn) -> Event {
        if !txn.awaiting.is_empty() {
            self.txn = Some(txn);
            return Event::Pending;
        }
        while let Some(cmd) = txn.todo.pop_front() {
            match cmd {
                Cmd::Rcpt(index) if txn.too_many => txn.outcome.recipients[index] = Rcpt::Untried,
                Cmd::Data | Cmd::Bdat if !txn.any_accepted => {
                    txn.needs_rset = true;
                }
                cmd => {
                    self.write_command(&txn, cmd);
                    txn.awaiting.push_back(cmd);
                    if cmd == Cmd::Bdat {
                        txn.body_sent = true;
                        self.txn = Some(txn);
                        return Event::SendBody;
                    }
                    self.txn = Some(txn);
                    return Event::Pending;
                }
            }
        }
        // Every reply is in.
        if txn.outcome.last.is_none() {
            txn.outcome.last = txn.outcome.recipients.iter().find_map(|r| match r {
                Rcpt::Reply(index) => Some(*index),
                _ => None,
            });
        }
        if txn.outcome.recipients.contains(&Rcpt::Lost) {
            // Cannot happen (every recipient sent has a reply or the final one): defer it.
            txn.outcome.lost = Some(format!("451 4.3.0 No reply from {} for this recipient", self.peer));
        }
        self.needs_rset = txn.needs_rset;
        self.state = State::Ready;
        self.last_outcome = Some(txn.outcome);
        Event::Done
    }

    fn finish_reconnect(&mut self) -> Event {
        let Some(mut txn) = self.txn.take() else {
            return Event::Closed;
        };
        txn.outcome.reconnect = true;
        let why = self.broken.as_deref().unwrap_or("closed");
        txn.outcome.lost = Some(format!("451 4.4.2 Connection to {} lost: {why}", self.peer));
        self.state = State::Closed;
        self.last_outcome = Some(txn.outcome);
        Event::Done
    }

    fn finish_lost(&mut self, why: &str) -> Event {
        let Some(mut txn) = self.txn.take() else {
            self.state = State::Closed;
            return Event::Closed;
        };
        self.state = State::Closed;
        if txn.reused && !txn.mail_answered {
            self.txn = Some(txn);
            return self.finish_reconnect();
        }
        // Accepted recipients and those without a reply are lost; refused ones keep theirs.
        txn.outcome.lost = Some(format!("451 4.4.2 Connection to {} lost: {why}", self.peer));
        self.last_outcome = Some(txn.outcome);
        Event::Done
    }
}

impl Txn {
    /// The first recipient that was sent.
    fn first_wire(&self) -> Option<usize> {
        self.outcome.recipients.iter().position(|r| !matches!(r, Rcpt::Local(_)))
    }

    /// Every accepted recipient gets `reply`.
    fn settle_accepted(&mut self, reply: Reply) {
        let at = push_reply(&mut self.outcome, reply);
        for (slot, accepted) in self.outcome.recipients.iter_mut().zip(&self.accepted) {
            if *accepted {
                *slot = Rcpt::Reply(at);
            }
        }
        self.outcome.last = Some(at);
    }
}

/// Appends one command line.
fn command(out: &mut Vec<u8>, parts: &[&str]) {
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

fn push_reply(outcome: &mut Outcome, reply: Reply) -> usize {
    outcome.replies.push(reply);
    outcome.replies.len() - 1
}

/// A 452 that means "no more recipients in this transaction" (RFC 5321 §4.5.3.1.10), not a
/// problem with this recipient.
pub fn too_many_recipients(reply: &Reply) -> bool {
    reply.code == 452
        && (reply.enhanced.is_some_and(|e| (e.class, e.subject, e.detail) == (4, 5, 3))
            || reply.text.to_ascii_lowercase().contains("too many recipients"))
}

/// No byte a command line may not carry (CR, LF, other controls, DEL), no angle bracket.
fn clean(address: &str) -> bool {
    !address.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>')
}

/// A DSN keyword value (RET, NOTIFY): letters and commas.
fn keyword(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphabetic() || b == b',')
}

/// RFC 3461 §4 xtext: `+`, `=`, controls, space and non-ASCII as `+XX`.
pub fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EHLO_ALL: &[u8] = b"250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-SIZE 1000\r\n250 DSN\r\n";

    fn out(client: &mut Client) -> String {
        String::from_utf8(client.take_output()).unwrap()
    }

    /// A client that has read the greeting and this EHLO reply.
    fn ready(ehlo: &[u8]) -> Client {
        let mut client = Client::new("relay.test", TlsPolicy::Never, "mx.test[192.0.2.1]:25");
        assert_eq!(client.receive(b"220 mx.test ESMTP\r\n"), Event::Pending);
        assert_eq!(out(&mut client), "EHLO relay.test\r\n");
        assert_eq!(client.receive(ehlo), Event::Ready);
        client
    }

    fn envelope(recipients: &[&str]) -> Envelope {
        Envelope {
            mail_from: "a@sender.test".into(),
            recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
            size: 10,
            in_memory: true,
            ends_with_crlf: true,
            ..Envelope::default()
        }
    }

    fn texts(client: &Client) -> Vec<String> {
        let outcome = client.outcome().unwrap();
        outcome
            .recipients
            .iter()
            .map(|r| match r {
                Rcpt::Reply(i) => outcome.replies[*i].to_string(),
                Rcpt::Untried => "untried".into(),
                Rcpt::Local(local) => local.text(),
                Rcpt::Lost => outcome.lost.clone().unwrap(),
            })
            .collect()
    }

    #[test]
    fn pipelining_and_chunking_send_everything_in_one_write() {
        let mut client = ready(EHLO_ALL);
        assert_eq!(client.begin(envelope(&["b@x.test", "c@x.test"])), Event::SendBody);
        assert_eq!(
            out(&mut client),
            "MAIL FROM:<a@sender.test> SIZE=10\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nBDAT 10 LAST\r\n"
        );
        assert!(!client.body_frame().unwrap().dot_stuff);
        assert_eq!(client.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 2.0.0 queued\r\n"), Event::Done);
        assert_eq!(texts(&client), ["250 2.0.0 queued", "550 5.1.1 no"]);
        assert!(client.is_ready());
        // A 2xx end: no RSET before the next.
        assert_eq!(client.begin(envelope(&["d@x.test"])), Event::SendBody);
        assert!(out(&mut client).starts_with("MAIL FROM:"));
    }

    #[test]
    fn pipelining_without_chunking_waits_for_354_once() {
        let mut client = ready(b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        let mut env = envelope(&["b@x.test", "c@x.test"]);
        env.eight_bit = true;
        env.ends_with_crlf = false;
        assert_eq!(client.begin(env), Event::Pending);
        assert_eq!(out(&mut client), "MAIL FROM:<a@sender.test> BODY=8BITMIME\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n");
        // Replies in any split: the same.
        for piece in [&b"250 ok\r\n25"[..], b"0 ok\r\n450 4.2.1 busy\r\n354 go\r"] {
            assert_eq!(client.receive(piece), Event::Pending);
        }
        assert_eq!(client.receive(b"\n"), Event::SendBody);
        let frame = client.body_frame().unwrap();
        assert!(frame.dot_stuff);
        assert_eq!(frame.suffix(), b"\r\n.\r\n");
        assert_eq!(client.receive(b"250 done\r\n"), Event::Done);
        assert_eq!(texts(&client), ["250 done", "450 4.2.1 busy"]);
    }

    #[test]
    fn without_pipelining_one_command_at_a_time() {
        let mut client = ready(b"250-mx.test\r\n250 SIZE\r\n");
        assert_eq!(client.begin(envelope(&["b@x.test", "c@x.test"])), Event::Pending);
        assert_eq!(out(&mut client), "MAIL FROM:<a@sender.test> SIZE=10\r\n");
        assert_eq!(client.receive(b"250 ok\r\n"), Event::Pending);
        assert_eq!(out(&mut client), "RCPT TO:<b@x.test>\r\n");
        assert_eq!(client.receive(b"550 no\r\n"), Event::Pending);
        assert_eq!(out(&mut client), "RCPT TO:<c@x.test>\r\n");
        assert_eq!(client.receive(b"250 ok\r\n"), Event::Pending);
        assert_eq!(out(&mut client), "DATA\r\n");
        assert_eq!(client.receive(b"354 go\r\n"), Event::SendBody);
        assert_eq!(client.receive(b"451 4.3.0 later\r\n"), Event::Done);
        assert_eq!(texts(&client), ["550 no", "451 4.3.0 later"]);
        // Not a 2xx end: RSET first next time.
        assert_eq!(client.begin(envelope(&["d@x.test"])), Event::Pending);
        assert_eq!(out(&mut client), "RSET\r\n");
        assert_eq!(client.receive(b"250 ok\r\n"), Event::Pending);
        assert_eq!(out(&mut client), "MAIL FROM:<a@sender.test> SIZE=10\r\n");
    }

    #[test]
    fn too_many_recipients_are_untried() {
        let mut client = ready(b"250-mx.test\r\n250 PIPELINING\r\n");
        assert_eq!(client.begin(envelope(&["a@x", "b@x", "c@x"])), Event::Pending);
        out(&mut client);
        let event = client.receive(b"250 ok\r\n250 ok\r\n452 4.5.3 Too many recipients\r\n452 4.5.3 Too many recipients\r\n354 go\r\n");
        assert_eq!(event, Event::SendBody);
        assert_eq!(client.receive(b"250 ok\r\n"), Event::Done);
        assert_eq!(texts(&client), ["250 ok", "untried", "untried"]);
        // The first recipient's 452 is its own reply (else it would never be sent).
        let mut client = ready(b"250-mx.test\r\n250 PIPELINING\r\n");
        client.begin(envelope(&["a@x"]));
        assert_eq!(client.receive(b"250 ok\r\n452 4.5.3 Too many recipients\r\n554 no valid recipients\r\n"), Event::Done);
        assert_eq!(texts(&client), ["452 4.5.3 Too many recipients"]);
        // Without pipelining, no RCPT is sent after it.
        let mut client = ready(b"250 mx.test\r\n");
        client.begin(envelope(&["a@x", "b@x", "c@x"]));
        out(&mut client);
        client.receive(b"250 ok\r\n250 ok\r\n");
        assert_eq!(out(&mut client), "RCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\n");
        client.receive(b"452 too many recipients\r\n");
        assert_eq!(out(&mut client), "DATA\r\n");
        assert_eq!(texts_after(&mut client, b"354 go\r\n250 ok\r\n"), ["250 ok", "untried", "untried"]);
    }

    fn texts_after(client: &mut Client, input: &[u8]) -> Vec<String> {
        let mut event = Event::Pending;
        let mut at = 0;
        while at < input.len() && event != Event::Done {
            event = client.receive(&input[at..at + 1]);
            at += 1;
        }
        assert_eq!(event, Event::Done);
        texts(client)
    }

    #[test]
    fn refused_mail_and_a_data_accepted_with_no_recipient() {
        let mut client = ready(b"250-mx.test\r\n250 PIPELINING\r\n");
        client.begin(envelope(&["b@x", "c@x"]));
        out(&mut client);
        assert_eq!(client.receive(b"550 5.7.1 sender refused\r\n503 no\r\n503 no\r\n503 no\r\n"), Event::Done);
        assert_eq!(texts(&client), ["550 5.7.1 sender refused", "550 5.7.1 sender refused"]);
        client.begin(envelope(&["b@x"]));
        assert!(out(&mut client).starts_with("RSET\r\nMAIL FROM:"));
        // RFC 2920 §3.1: a DATA accepted although no RCPT was gets a lone dot.
        assert_eq!(client.receive(b"250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n"), Event::Pending);
        assert_eq!(out(&mut client), ".\r\n");
        assert_eq!(client.receive(b"554 no valid recipients\r\n"), Event::Done);
        assert_eq!(texts(&client), ["550 no"]);
        assert_eq!(client.outcome().unwrap().last.map(|i| client.outcome().unwrap().replies[i].code), Some(550));
    }

    #[test]
    fn local_refusals_smtputf8_and_size() {
        let mut client = ready(b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n");
        let mut env = envelope(&["jos\u{e9}@x.test", "plain@x.test", "bad\r\n@x"]);
        assert_eq!(client.begin(env.clone()), Event::Pending);
        assert_eq!(out(&mut client), "MAIL FROM:<a@sender.test> SIZE=10\r\nRCPT TO:<plain@x.test>\r\nDATA\r\n");
        assert_eq!(client.receive(b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n"), Event::SendBody);
        // The final reply came in the same read: held until the body is written.
        assert!(client.holds_input());
        assert_eq!(client.receive(b""), Event::Done);
        let texts = texts(&client);
        assert!(texts[0].starts_with("553 5.6.7"), "{texts:?}");
        assert_eq!(texts[1], "250 ok");
        assert!(texts[2].starts_with("553 5.1.3"));
        env.mail_from = "jos\u{e9}@sender.test".into();
        assert_eq!(client.begin(env.clone()), Event::Done);
        assert!(!client.has_output());
        env.mail_from = "a@sender.test".into();
        env.size = 101;
        assert_eq!(client.begin(env), Event::Done);
        assert!(matches!(client.outcome().unwrap().recipients[1], Rcpt::Local(Local::TooBig { size: 101, limit: 100 })));
        // With SMTPUTF8 offered: the parameter, and the address as it is.
        let mut client = ready(EHLO_ALL);
        client.begin(envelope(&["jos\u{e9}@x.test"]));
        assert!(out(&mut client).starts_with("MAIL FROM:<a@sender.test> SIZE=10 SMTPUTF8\r\nRCPT TO:<jos\u{e9}@x.test>\r\n"));
    }

    #[test]
    fn dsn_parameters_only_when_offered() {
        let mut env = envelope(&["b@x"]);
        env.ret = Some("HDRS".into());
        env.envid = Some("id+1=2".into());
        env.notify = vec![Some("FAILURE,DELAY".into())];
        env.orcpt = vec![Some("b@x".into())];
        let mut client = ready(EHLO_ALL);
        client.begin(env.clone());
        assert_eq!(
            out(&mut client),
            "MAIL FROM:<a@sender.test> SIZE=10 RET=HDRS ENVID=id+2B1+3D2\r\nRCPT TO:<b@x> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@x\r\nBDAT 10 LAST\r\n"
        );
        let mut client = ready(b"250-mx.test\r\n250 PIPELINING\r\n");
        client.begin(env);
        assert_eq!(out(&mut client), "MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@x>\r\nDATA\r\n");
    }

    #[test]
    fn a_file_body_goes_with_bdat_after_the_rcpt_replies() {
        let mut client = ready(EHLO_ALL);
        let mut env = envelope(&["b@x"]);
        env.in_memory = false;
        assert_eq!(client.begin(env.clone()), Event::Pending);
        assert_eq!(out(&mut client), "MAIL FROM:<a@sender.test> SIZE=10\r\nRCPT TO:<b@x>\r\n");
        assert_eq!(client.receive(b"250 ok\r\n250 ok\r\n"), Event::SendBody);
        assert_eq!(out(&mut client), "BDAT 10 LAST\r\n");
        assert_eq!(client.receive(b"250 ok\r\n"), Event::Done);
        // No recipient: no body at all.
        client.begin(env);
        out(&mut client);
        assert_eq!(client.receive(b"250 ok\r\n550 no\r\n"), Event::Done);
        assert!(!client.has_output());
    }

    #[test]
    fn a_reused_connection_closed_before_mail_is_a_reconnect() {
        let mut client = ready(EHLO_ALL);
        client.begin(envelope(&["b@x"]));
        client.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n");
        client.begin(envelope(&["b@x"]));
        assert_eq!(client.connection_lost("closed"), Event::Done);
        assert!(client.outcome().unwrap().reconnect);
        let mut client = ready(EHLO_ALL);
        client.begin(envelope(&["b@x"]));
        client.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n");
        client.begin(envelope(&["b@x"]));
        assert_eq!(client.receive(b"421 4.4.2 idle too long\r\n"), Event::Done);
        assert!(client.outcome().unwrap().reconnect);
        // The first transaction: a lost attempt.
        let mut client = ready(EHLO_ALL);
        client.begin(envelope(&["b@x", "c@x"]));
        assert_eq!(client.receive(b"250 ok\r\n550 no\r\n"), Event::Pending);
        assert_eq!(client.connection_lost("reset by peer"), Event::Done);
        assert!(!client.outcome().unwrap().reconnect);
        assert_eq!(texts(&client), ["550 no", "451 4.4.2 Connection to mx.test[192.0.2.1]:25 lost: reset by peer"]);
        // Closed while idle: the next transaction is a reconnect without a write.
        let mut client = ready(EHLO_ALL);
        client.begin(envelope(&["b@x"]));
        client.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n");
        out(&mut client);
        assert_eq!(client.receive(b"421 bye\r\n"), Event::Closed);
        assert_eq!(client.begin(envelope(&["b@x"])), Event::Done);
        assert!(client.outcome().unwrap().reconnect && !client.has_output());
    }

    #[test]
    fn a_421_mid_transaction_is_everyones_reply() {
        let mut client = ready(b"250-mx.test\r\n250 PIPELINING\r\n");
        client.begin(envelope(&["b@x", "c@x", "d@x"]));
        assert_eq!(client.receive(b"250 ok\r\n250 ok\r\n550 no\r\n421 4.3.2 shutting down\r\n"), Event::Done);
        assert_eq!(texts(&client), ["421 4.3.2 shutting down", "550 no", "421 4.3.2 shutting down"]);
        assert!(!client.is_ready());
    }

    #[test]
    fn starttls() {
        let mut client = Client::new("relay.test", TlsPolicy::Opportunistic, "mx");
        client.receive(b"220 hi\r\n");
        out(&mut client);
        assert_eq!(client.receive(b"250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n"), Event::Pending);
        assert_eq!(out(&mut client), "STARTTLS\r\n");
        assert_eq!(client.receive(b"220 go ahead\r\n"), Event::StartTls);
        client.tls_started();
        assert_eq!(out(&mut client), "EHLO relay.test\r\n");
        assert!(!client.extensions().pipelining, "forgotten after STARTTLS");
        assert_eq!(client.receive(b"250-mx\r\n250 CHUNKING\r\n"), Event::Ready);
        assert!(client.tls_active() && client.extensions().chunking);
        // Injected plain text after the 220.
        let mut client = Client::new("relay.test", TlsPolicy::Opportunistic, "mx");
        client.receive(b"220 hi\r\n250-mx\r\n250 STARTTLS\r\n");
        assert_eq!(client.receive(b"220 go ahead\r\n250 injected\r\n"), Event::Refused);
        assert_eq!(client.refusal(), Some(&Refusal::DataAfterStartTls));
        // Refused: opportunistic goes on in plain text, required gives up.
        for (policy, event) in [(TlsPolicy::Opportunistic, Event::Ready), (TlsPolicy::Required, Event::Refused)] {
            let mut client = Client::new("relay.test", policy, "mx");
            client.receive(b"220 hi\r\n250-mx\r\n250 STARTTLS\r\n");
            assert_eq!(client.receive(b"454 4.7.0 TLS not available\r\n"), event);
        }
        let mut client = Client::new("relay.test", TlsPolicy::Required, "mx");
        assert_eq!(client.receive(b"220 hi\r\n250 mx\r\n"), Event::Refused);
        assert_eq!(client.refusal(), Some(&Refusal::TlsNotOffered));
        let mut client = Client::new("relay.test", TlsPolicy::Never, "mx");
        assert_eq!(client.receive(b"220 hi\r\n250-mx\r\n250 STARTTLS\r\n"), Event::Ready);
    }

    #[test]
    fn greeting_and_helo() {
        let mut client = Client::new("relay.test", TlsPolicy::Opportunistic, "mx");
        assert_eq!(client.receive(b"554 5.7.1 go away\r\n"), Event::Refused);
        assert_eq!(client.refusal().unwrap().text(), "554 5.7.1 go away");
        let mut client = Client::new("relay.test", TlsPolicy::Opportunistic, "mx");
        client.receive(b"220 old\r\n");
        out(&mut client);
        assert_eq!(client.receive(b"502 what\r\n"), Event::Pending);
        assert_eq!(out(&mut client), "HELO relay.test\r\n");
        assert_eq!(client.receive(b"250 old\r\n"), Event::Ready);
        assert!(client.used_helo());
        let mut client = Client::new("relay.test", TlsPolicy::Never, "mx");
        assert_eq!(client.receive(b"220-hi\r\nnonsense\r\n"), Event::Refused);
        assert_eq!(client.refusal(), Some(&Refusal::Malformed(ReplyError::BadCode)));
    }

    #[test]
    fn quit() {
        let mut client = ready(EHLO_ALL);
        client.quit();
        assert_eq!(out(&mut client), "QUIT\r\n");
        assert_eq!(client.receive(b"221 bye\r\n"), Event::Closed);
    }

    #[test]
    fn xtext_encodes() {
        assert_eq!(xtext("a+b=c d\u{e9}"), "a+2Bb+3Dc+20d+C3+A9");
    }
}
