//! The receiving side of SMTP as a state machine: fed the bytes of a connection as they arrive
//! (any split across reads), it writes the replies it can give itself (EHLO, NOOP, RSET, syntax
//! and sequence errors, the refusals of the DATA reader) into an output buffer and stops at
//! each point where the caller must decide ([`Event`]): a sender, a recipient, a message, AUTH
//! credentials, the STARTTLS hand-off. The caller answers with a reply ([`Server::answer`]) and
//! feeds the rest of its input again. No I/O, no clock, no allocation per command beyond the
//! reply text and the command line when it straddles two reads.
//!
//! What it holds to (README "Limits", docs/smtp-engine.md):
//!
//! * a command line ends at LF (a CR before it is dropped, as aiosmtpd did); longer than the
//!   command limit (512, MAIL 548 and RCPT 1012 after EHLO: SIZE, SMTPUTF8, ORCPT) it gets
//!   `500 5.5.2 Command line too long`, read to its end first;
//! * five unknown commands end the session (`421 4.7.0`); each command may come at most
//!   `call_limit` times per connection (`421 4.7.0`);
//! * DATA is read by [`DataReader`]: only `<CRLF>.<CRLF>` ends it, and a bare CR or LF
//!   (554 5.6.0, SMTP smuggling), a NUL (554 5.6.0), a long line (500) or more than the size
//!   limit (552) refuses the message, read to its end so the session stays in step; BDAT
//!   chunks (RFC 3030) go through the same reader without dot handling;
//! * the bytes after STARTTLS that arrived before the handshake are dropped (a man in the
//!   middle could have put them there, CVE-2011-0411), and the session starts over;
//! * every reply, the caller's included, is printable ASCII ending in CRLF (what the client sent
//!   may be echoed: its bytes outside 0x20-0x7e become `?`).

use std::time::SystemTime;

use crate::smtp::command;
use crate::smtp::trace;
use crate::smtp_data::{Content, DataReader, Problem};

/// What a listener offers and enforces; the same for every connection of a listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name in the greeting, EHLO reply and `Received:` field.
    pub hostname: String,
    /// Text after the name in the greeting (`220 HOST IDENT`).
    pub ident: String,
    /// Largest message in bytes (`SIZE`); 0: no limit.
    pub size_limit: usize,
    /// Longest message line, with its CRLF.
    pub line_limit: usize,
    /// Longest command line (RFC 5321 §4.5.3.1.4: 512), raised after EHLO for the extensions.
    pub command_limit: usize,
    /// AUTH PLAIN and LOGIN are offered.
    pub auth: bool,
    /// AUTH only after STARTTLS.
    pub auth_requires_tls: bool,
    /// STARTTLS is offered.
    pub tls: bool,
    /// Unknown commands before the session is ended.
    pub max_unknown: u32,
    /// Times each command may be given on one connection.
    pub call_limit: u32,
}

impl Config {
    pub fn new(hostname: &str) -> Config {
        Config {
            hostname: hostname.to_owned(),
            ident: "deliverypool".to_owned(),
            size_limit: 10 << 20,
            line_limit: 1001,
            command_limit: 512,
            auth: false,
            auth_requires_tls: true,
            tls: false,
            max_unknown: 5,
            call_limit: 10_000,
        }
    }
}

/// Where the caller decides. Each is answered with [`Server::answer`] before the server reads
/// on (but `StartTls`, answered with [`Server::tls_started`] or by closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// MAIL passed the syntax and sequence checks: [`Server::mail`] says what it asks.
    Mail,
    /// RCPT passed the checks: [`Server::rcpt`] is the recipient.
    Rcpt,
    /// A whole message, read without a problem: [`Server::take_message`] gives it, with the
    /// envelope in [`Server::envelope`].
    Message,
    /// An AUTH exchange ended: [`Server::auth`] holds the credentials or why there are none.
    Auth,
    /// `220 Ready to start TLS` is in the output: do the handshake, then call `tls_started`.
    StartTls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Headers,
}

/// NOTIFY (RFC 3461 §4.1): NEVER, or any of SUCCESS, FAILURE, DELAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify(u8);

impl Notify {
    pub const NEVER: u8 = 1;
    pub const SUCCESS: u8 = 2;
    pub const FAILURE: u8 = 4;
    pub const DELAY: u8 = 8;

    pub fn bits(self) -> u8 {
        self.0
    }

    fn parse(value: &[u8]) -> Option<Notify> {
        let mut bits = 0;
        for word in value.split(|&b| b == b',') {
            let bit = match word.to_ascii_uppercase().as_slice() {
                b"NEVER" => Notify::NEVER,
                b"SUCCESS" => Notify::SUCCESS,
                b"FAILURE" => Notify::FAILURE,
                b"DELAY" => Notify::DELAY,
                _ => return None,
            };
            if bits & bit != 0 {
                return None;
            }
            bits |= bit;
        }
        // NEVER stands alone.
        (bits & Notify::NEVER == 0 || bits == Notify::NEVER).then_some(Notify(bits))
    }

    /// `NEVER` or the others joined with commas, in the RFC's order.
    pub fn to_text(self) -> String {
        let names = [(Notify::NEVER, "NEVER"), (Notify::SUCCESS, "SUCCESS"), (Notify::FAILURE, "FAILURE"), (Notify::DELAY, "DELAY")];
        names.iter().filter(|(bit, _)| self.0 & bit != 0).map(|(_, name)| *name).collect::<Vec<_>>().join(",")
    }
}

/// What MAIL asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mail {
    /// The reverse-path as sent; empty for the null path `<>`.
    pub address: Vec<u8>,
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// ENVID, as sent (xtext).
    pub envid: Option<Vec<u8>>,
}

/// One RCPT: the forward-path as sent and its DSN parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipient {
    pub address: Vec<u8>,
    pub notify: Option<Notify>,
    /// ORCPT, as sent (`addr-type;xtext`).
    pub orcpt: Option<Vec<u8>>,
}

/// The transaction so far: the accepted MAIL and recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub mail: Mail,
    pub recipients: Vec<Recipient>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// The end of an AUTH exchange: credentials, or the reply to an exchange that gave none (an
/// abort or undecodable data, which counts as a failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthAttempt {
    /// None when the AUTH command named none, or too many arguments.
    pub mechanism: Option<Mechanism>,
    pub login: Vec<u8>,
    pub password: Vec<u8>,
    pub failure: Option<&'static str>,
}

#[derive(Debug)]
enum Phase {
    Command,
    /// Waiting for the caller's answer to this event.
    Waiting(Event),
    Data(Box<DataReader>),
    /// A BDAT chunk of `left` bytes (of `size`) still to read; `last` ends the message. With a
    /// `refusal` the chunk is read only to be thrown away, and that is its reply.
    Chunk { left: usize, last: bool, size: usize, refusal: Option<&'static str> },
    AuthPlain,
    AuthLoginUser,
    AuthLoginPassword(Vec<u8>),
    /// After STARTTLS, until `tls_started`: input is dropped.
    Handshake,
    /// The last reply is written: nothing more is read.
    Closed,
}

/// The known commands, for the per-command call limit.
const VERBS: [&[u8]; 14] =
    [b"HELO", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"RSET", b"NOOP", b"QUIT", b"VRFY", b"EXPN", b"HELP", b"AUTH", b"STARTTLS"];

pub struct Server {
    config: Config,
    peer: String,
    phase: Phase,
    out: Vec<u8>,
    /// The start of a command line whose end has not arrived.
    line: Vec<u8>,
    /// The current line is over the read limit: read on to its end, then answer 500.
    overlong: bool,
    helo: Option<Vec<u8>>,
    esmtp: bool,
    tls: bool,
    authenticated: bool,
    /// MAIL waiting for its answer, or accepted.
    mail: Option<Mail>,
    mail_accepted: bool,
    pending_rcpt: Option<Recipient>,
    envelope: Envelope,
    /// BDAT chunks of the current message (their reader, not dot-aware).
    chunks: Option<Box<DataReader>>,
    /// The message of `Event::Message` and its `Received:` field.
    message: Option<(Vec<u8>, Content)>,
    message_chunked: bool,
    auth: Option<AuthAttempt>,
    unknown: u32,
    calls: [u32; VERBS.len()],
    /// A command was read since the last `take_activity` (the caller's idle timer restarts).
    activity: bool,
    now: Option<SystemTime>,
}

/// Replies the server gives itself. Where clients or the test suite know aiosmtpd's wording,
/// the text is aiosmtpd's (NOOP's "250 OK", EHLO's last line "250 HELP").
mod reply {
    pub const OK: &str = "250 OK";
    pub const RSET_OK: &str = "250 2.0.0 OK";
    pub const BYE: &str = "221 2.0.0 Bye";
    pub const BAD_SYNTAX: &str = "500 5.5.2 Error: bad syntax";
    pub const TOO_LONG: &str = "500 5.5.2 Command line too long";
    pub const NEED_HELO: &str = "503 5.5.1 Error: send HELO first";
    pub const NEED_EHLO: &str = "503 5.5.1 Error: send EHLO first";
    pub const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command";
    pub const NEED_RCPT: &str = "503 5.5.1 Error: need RCPT command";
    pub const NESTED_MAIL: &str = "503 5.5.1 Error: nested MAIL command";
    pub const MALFORMED: &str = "553 5.1.3 Error: malformed address";
    pub const HELO_SYNTAX: &str = "501 5.5.4 Syntax: HELO hostname";
    pub const EHLO_SYNTAX: &str = "501 5.5.4 Syntax: EHLO hostname";
    pub const MAIL_SYNTAX: &str = "501 5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>]";
    pub const RCPT_SYNTAX: &str = "501 5.5.4 Syntax: RCPT TO:<address> [SP <rcpt-parameters>]";
    pub const DATA_SYNTAX: &str = "501 5.5.4 Syntax: DATA";
    pub const BDAT_SYNTAX: &str = "501 5.5.4 Syntax: BDAT chunk-size [LAST]";
    pub const RSET_SYNTAX: &str = "501 5.5.4 Syntax: RSET";
    pub const QUIT_SYNTAX: &str = "501 5.5.4 Syntax: QUIT";
    pub const STARTTLS_SYNTAX: &str = "501 5.5.4 Syntax: STARTTLS";
    pub const VRFY_SYNTAX: &str = "501 5.5.4 Syntax: VRFY <address>";
    pub const VRFY: &str = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery";
    pub const EXPN: &str = "502 5.5.1 EXPN not implemented";
    pub const HELP: &str = "214 2.0.0 Supported commands: AUTH BDAT DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET STARTTLS VRFY";
    pub const DATA_GO: &str = "354 End data with <CR><LF>.<CR><LF>";
    pub const DATA_AFTER_BDAT: &str = "503 5.5.1 Error: DATA after BDAT";
    pub const BODY: &str = "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME";
    pub const SMTPUTF8_ARGUMENT: &str = "501 5.5.4 Error: SMTPUTF8 takes no arguments";
    pub const SIZE_EXCEEDED: &str = "552 5.3.4 Error: message size exceeds fixed maximum message size";
    pub const RET: &str = "501 5.5.4 Error: RET can only be FULL or HDRS";
    pub const ENVID: &str = "501 5.5.4 Error: ENVID must be xtext of at most 100 characters";
    pub const NOTIFY: &str = "501 5.5.4 Error: NOTIFY is NEVER, or SUCCESS, FAILURE, DELAY";
    pub const ORCPT: &str = "501 5.5.4 Error: ORCPT must be addr-type;xtext";
    pub const MAIL_PARAMETER: &str = "555 5.5.4 MAIL FROM parameters not recognized or not implemented";
    pub const RCPT_PARAMETER: &str = "555 5.5.4 RCPT TO parameters not recognized or not implemented";
    pub const TLS_UNAVAILABLE: &str = "454 4.7.0 TLS not available";
    pub const TLS_ACTIVE: &str = "503 5.5.1 TLS already active";
    pub const TLS_GO: &str = "220 2.0.0 Ready to start TLS";
    pub const AUTH_UNKNOWN_COMMAND: &str = "500 5.5.1 Error: command \"AUTH\" not recognized";
    pub const AUTH_NEEDS_TLS: &str = "538 5.7.11 Encryption required for requested authentication mechanism";
    pub const AUTH_ALREADY: &str = "503 5.5.1 Already authenticated";
    pub const AUTH_NO_VALUE: &str = "501 5.5.4 Not enough value";
    pub const AUTH_TOO_MANY: &str = "501 5.5.4 Too many values";
    pub const AUTH_MECHANISM: &str = "504 5.5.4 Unrecognized authentication type";
    pub const AUTH_IN_TRANSACTION: &str = "503 5.5.1 Error: AUTH not allowed during a mail transaction";
    pub const AUTH_ABORTED: &str = "501 5.7.0 Auth aborted";
    pub const AUTH_BASE64: &str = "501 5.5.2 Can't decode base64";
    pub const AUTH_SPLIT: &str = "501 5.5.2 Can't split auth value";
    pub const LOGIN_USER: &str = "334 VXNlcm5hbWU6";
    pub const LOGIN_PASSWORD: &str = "334 UGFzc3dvcmQ6";
    pub const PLAIN_GO: &str = "334 ";
    pub const TOO_LARGE: &str = "552 5.3.4 Error: too much mail data";
    pub const LINE_TOO_LONG: &str = "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)";
    pub const BARE_LINE_ENDING: &str = "554 5.6.0 Message contains a bare LF or CR; use CRLF line endings (SMTP smuggling)";
    pub const NUL: &str = "554 5.6.0 Message contains a NUL character (RFC 5321 4.5.2)";
}

/// The reply to a message the DATA reader refused.
pub fn refusal(problem: Problem) -> &'static str {
    match problem {
        Problem::TooLarge => reply::TOO_LARGE,
        Problem::LineTooLong => reply::LINE_TOO_LONG,
        Problem::BareLineEnding => reply::BARE_LINE_ENDING,
        Problem::Nul => reply::NUL,
    }
}

/// How long a line may grow before it is known to be too long for any command.
fn read_limit(config: &Config) -> usize {
    config.line_limit.max(config.command_limit + 500)
}

impl Server {
    /// A session for a client at `peer` (its address, for the `Received:` field); the greeting
    /// is in the output.
    pub fn new(config: Config, peer: &str) -> Server {
        let mut server = Server {
            config,
            peer: peer.to_owned(),
            phase: Phase::Command,
            out: Vec::with_capacity(256),
            line: Vec::new(),
            overlong: false,
            helo: None,
            esmtp: false,
            tls: false,
            authenticated: false,
            mail: None,
            mail_accepted: false,
            pending_rcpt: None,
            envelope: Envelope::default(),
            chunks: None,
            message: None,
            message_chunked: false,
            auth: None,
            unknown: 0,
            calls: [0; VERBS.len()],
            activity: false,
            now: None,
        };
        let greeting = format!("220 {} {}", server.config.hostname, server.config.ident);
        server.write(&greeting);
        server
    }

    // --- what the caller reads ---------------------------------------------------------

    /// The replies written since the last call, to send as one write.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn output(&self) -> &[u8] {
        &self.out
    }

    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// True once the session is over (after 221 or a 421): close after sending the output.
    pub fn closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The event awaiting an answer, if any.
    pub fn waiting(&self) -> Option<Event> {
        match self.phase {
            Phase::Waiting(event) => Some(event),
            Phase::Handshake => Some(Event::StartTls),
            _ => None,
        }
    }

    /// True when a command or message bytes were read since the last call (the idle timeout
    /// counts from there).
    pub fn take_activity(&mut self) -> bool {
        std::mem::take(&mut self.activity)
    }

    /// In the middle of a message (DATA or BDAT): what the idle timeout's log line says.
    pub fn in_message(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Chunk { .. }) || self.chunks.is_some()
    }

    pub fn helo(&self) -> Option<&[u8]> {
        self.helo.as_deref()
    }

    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The MAIL awaiting its answer (during [`Event::Mail`]) or accepted.
    pub fn mail(&self) -> Option<&Mail> {
        self.mail.as_ref()
    }

    /// The RCPT awaiting its answer (during [`Event::Rcpt`]).
    pub fn rcpt(&self) -> Option<&Recipient> {
        self.pending_rcpt.as_ref()
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// True when the message came in BDAT chunks.
    pub fn message_chunked(&self) -> bool {
        self.message_chunked
    }

    /// The message of [`Event::Message`] (once): the relay's `Received:` field and the
    /// message, to be joined where the caller makes its own copy.
    pub fn take_message(&mut self) -> Option<(Vec<u8>, Content)> {
        self.message.take()
    }

    pub fn auth(&self) -> Option<&AuthAttempt> {
        self.auth.as_ref()
    }

    /// The clock the `Received:` field reads (tests fix it; None: the system's).
    pub fn set_clock(&mut self, now: Option<SystemTime>) {
        self.now = now;
    }

    // --- what the caller does -----------------------------------------------------------

    /// Reads from `input` until it is used up or an event needs an answer; returns how many
    /// bytes were used (the caller feeds the rest again after answering). While an event
    /// waits, nothing is used.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        let mut used = 0;
        while used < input.len() {
            let (n, event) = self.step(&input[used..]);
            used += n;
            if event.is_some() {
                return (used, event);
            }
            if n == 0 {
                break;
            }
        }
        (used, None)
    }

    fn step(&mut self, rest: &[u8]) -> (usize, Option<Event>) {
        match self.phase {
            Phase::Waiting(_) | Phase::Closed => (0, None),
            Phase::Handshake => (rest.len(), None),
            Phase::Data(_) => self.step_data(rest),
            Phase::Chunk { .. } => self.step_chunk(rest),
            Phase::Command | Phase::AuthPlain | Phase::AuthLoginUser | Phase::AuthLoginPassword(_) => self.read_line(rest),
        }
    }

    fn step_data(&mut self, rest: &[u8]) -> (usize, Option<Event>) {
        self.activity = true;
        let Phase::Data(reader) = &mut self.phase else {
            return (0, None);
        };
        let n = reader.feed(rest);
        let event = if reader.done() { self.end_of_data() } else { None };
        (n, event)
    }

    fn step_chunk(&mut self, rest: &[u8]) -> (usize, Option<Event>) {
        self.activity = true;
        let Phase::Chunk { left, refusal, .. } = &mut self.phase else {
            return (0, None);
        };
        let n = (*left).min(rest.len());
        *left -= n;
        let finished = *left == 0;
        if refusal.is_none() {
            if let Some(reader) = self.chunks.as_mut() {
                reader.feed(&rest[..n]);
            }
        }
        let event = if finished { self.end_of_chunk() } else { None };
        (n, event)
    }

    /// Feeds `input`, answering each event at once with `decide`'s reply; `decide` returns
    /// None when the answer comes later (through [`Server::answer`]; feed the rest of the
    /// input after it). Returns how many bytes were used: after STARTTLS, all of them (what
    /// followed the command is dropped).
    pub fn drive(&mut self, input: &[u8], mut decide: impl FnMut(Event, &mut Server) -> Option<Vec<u8>>) -> usize {
        let mut used = 0;
        loop {
            let (n, event) = self.feed(&input[used..]);
            used += n;
            let Some(event) = event else {
                return used;
            };
            if event == Event::StartTls {
                used = input.len();
            }
            match decide(event, self) {
                Some(reply) => self.answer(&reply),
                None => return used,
            }
        }
    }

    /// The caller's reply to the waiting event (an SMTP reply line, without CRLF). A 2xx to
    /// MAIL or RCPT takes it into the transaction, 235 to AUTH authenticates, a 421 ends the
    /// session. Ignored when no event waits.
    pub fn answer(&mut self, reply: &[u8]) {
        let Phase::Waiting(event) = self.phase else {
            return;
        };
        self.phase = Phase::Command;
        let positive = reply.first() == Some(&b'2');
        match event {
            Event::Mail => {
                if positive {
                    self.mail_accepted = true;
                    if let Some(mail) = &self.mail {
                        self.envelope.mail = mail.clone();
                    }
                } else {
                    self.mail = None;
                }
            }
            Event::Rcpt => {
                if let Some(recipient) = self.pending_rcpt.take() {
                    if positive {
                        self.envelope.recipients.push(recipient);
                    }
                }
            }
            Event::Message => self.reset_transaction(),
            Event::Auth => {
                self.authenticated = reply.starts_with(b"235");
                self.auth = None;
            }
            Event::StartTls => {}
        }
        self.write_bytes(reply);
        if reply.starts_with(b"421") {
            self.close();
        }
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 §4.2),
    /// the client must say EHLO again.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.authenticated = false;
        self.helo = None;
        self.esmtp = false;
        self.reset_transaction();
        self.line.clear();
        self.overlong = false;
        self.phase = Phase::Command;
    }

    /// Ends the session with `reply` (a 421: the idle timeout, a limit the caller enforces).
    pub fn shutdown(&mut self, reply: &[u8]) {
        if !self.closed() {
            self.write_bytes(reply);
            self.close();
        }
    }

    // --- reading commands ---------------------------------------------------------------

    /// One command line (or AUTH response line) out of `input`, joined to what an earlier read
    /// left; returns the bytes used.
    fn read_line(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        let limit = read_limit(&self.config);
        let Some(lf) = memchr::memchr(b'\n', input) else {
            if !self.overlong {
                self.line.extend_from_slice(input);
                if self.line.len() > limit {
                    self.overlong = true;
                    self.line = Vec::new();
                }
            }
            return (input.len(), None);
        };
        let used = lf + 1;
        if std::mem::take(&mut self.overlong) || self.line.len() + lf > limit {
            self.line.clear();
            self.activity = true;
            self.write(reply::TOO_LONG);
            if !matches!(self.phase, Phase::Command) {
                self.phase = Phase::Command;
            }
            return (used, None);
        }
        let event = if self.line.is_empty() {
            self.line_read(&input[..lf])
        } else {
            let mut line = std::mem::take(&mut self.line);
            line.extend_from_slice(&input[..lf]);
            let event = self.line_read(&line);
            line.clear();
            self.line = line;
            event
        };
        (used, event)
    }

    fn line_read(&mut self, raw: &[u8]) -> Option<Event> {
        // aiosmtpd's rstrip(b"\r\n"): every CR and LF at the end.
        let end = raw.iter().rposition(|&b| b != b'\r' && b != b'\n').map_or(0, |p| p + 1);
        let line = &raw[..end];
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::AuthPlain => {
                self.activity = true;
                self.auth_plain(line)
            }
            Phase::AuthLoginUser => {
                self.activity = true;
                self.auth_login_user(line)
            }
            Phase::AuthLoginPassword(user) => {
                self.activity = true;
                self.auth_login_password(user, line)
            }
            _ => self.command(line),
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            self.write(reply::BAD_SYNTAX);
            return None;
        }
        let (verb, arg) = match memchr::memchr(b' ', line) {
            Some(space) => (&line[..space], command::trim(&line[space + 1..])),
            None => (line, &b""[..]),
        };
        if !verb.is_ascii() {
            self.write(reply::BAD_SYNTAX);
            return None;
        }
        let verb = verb.to_ascii_uppercase();
        let limit = match verb.as_slice() {
            b"MAIL" if self.esmtp => self.config.command_limit + 26 + 10,
            b"RCPT" if self.esmtp => self.config.command_limit + 500,
            _ => self.config.command_limit,
        };
        if line.len() > limit {
            self.write(reply::TOO_LONG);
            return None;
        }
        let Some(index) = VERBS.iter().position(|v| *v == verb.as_slice()) else {
            self.unknown += 1;
            if self.unknown >= self.config.max_unknown {
                let goodbye = format!("421 4.7.0 {} Too many unrecognized commands; closing connection", self.config.hostname);
                self.write(&goodbye);
                self.close();
            } else {
                let text = format!("500 5.5.1 Error: command \"{}\" not recognized", String::from_utf8_lossy(&verb));
                self.write(&text);
            }
            return None;
        };
        self.calls[index] += 1;
        if self.calls[index] > self.config.call_limit {
            let text = format!("421 4.7.0 {} sent too many times", String::from_utf8_lossy(&verb));
            self.write(&text);
            self.close();
            return None;
        }
        self.activity = true;
        match verb.as_slice() {
            b"HELO" => self.helo_command(arg, false),
            b"EHLO" => self.helo_command(arg, true),
            b"MAIL" => return self.mail_command(arg),
            b"RCPT" => return self.rcpt_command(arg),
            b"DATA" => self.data_command(arg),
            b"BDAT" => return self.bdat_command(arg),
            b"RSET" => {
                if arg.is_empty() {
                    self.reset_transaction();
                    self.write(reply::RSET_OK);
                } else {
                    self.write(reply::RSET_SYNTAX);
                }
            }
            b"NOOP" => self.write(reply::OK),
            b"QUIT" => {
                if arg.is_empty() {
                    self.write(reply::BYE);
                    self.close();
                } else {
                    self.write(reply::QUIT_SYNTAX);
                }
            }
            b"VRFY" => self.write(if arg.is_empty() { reply::VRFY_SYNTAX } else { reply::VRFY }),
            b"EXPN" => self.write(reply::EXPN),
            b"HELP" => self.write(reply::HELP),
            b"AUTH" => return self.auth_command(arg),
            _ => return self.starttls_command(arg),
        }
        None
    }

    fn helo_command(&mut self, arg: &[u8], extended: bool) {
        if arg.is_empty() {
            self.write(if extended { reply::EHLO_SYNTAX } else { reply::HELO_SYNTAX });
            return;
        }
        self.reset_transaction();
        self.helo = Some(arg.to_vec());
        self.esmtp = extended;
        let host = &self.config.hostname;
        if !extended {
            let text = format!("250 {host}");
            self.write(&text);
            return;
        }
        let mut text = format!("250-{host}\r\n");
        if self.config.size_limit > 0 {
            text.push_str(&format!("250-SIZE {}\r\n", self.config.size_limit));
        }
        text.push_str("250-8BITMIME\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n");
        if self.config.tls && !self.tls {
            text.push_str("250-STARTTLS\r\n");
        }
        if self.config.auth && (self.tls || !self.config.auth_requires_tls) {
            text.push_str("250-AUTH LOGIN PLAIN\r\n");
        }
        text.push_str("250 HELP");
        self.write(&text);
    }

    fn mail_command(&mut self, arg: &[u8]) -> Option<Event> {
        if self.helo.is_none() {
            self.write(reply::NEED_HELO);
            return None;
        }
        if self.mail.is_some() {
            self.write(reply::NESTED_MAIL);
            return None;
        }
        let (address, params) = self.path_and_parameters(arg, b"FROM:", reply::MAIL_SYNTAX)?;
        let mut mail = Mail { address: address.to_vec(), ..Mail::default() };
        for param in &params {
            let problem = match (param.keyword.as_slice(), param.value) {
                (b"SIZE", Some(value)) if value.len() <= 18 && value.iter().all(u8::is_ascii_digit) => {
                    let size = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(u64::MAX);
                    mail.size = Some(size);
                    None
                }
                (b"SIZE", _) => Some(reply::MAIL_SYNTAX),
                (b"BODY", Some(value)) if value.eq_ignore_ascii_case(b"7BIT") => {
                    mail.body = Some(Body::SevenBit);
                    None
                }
                (b"BODY", Some(value)) if value.eq_ignore_ascii_case(b"8BITMIME") => {
                    mail.body = Some(Body::EightBitMime);
                    None
                }
                (b"BODY", _) => Some(reply::BODY),
                (b"SMTPUTF8", None) => {
                    mail.smtputf8 = true;
                    None
                }
                (b"SMTPUTF8", Some(_)) => Some(reply::SMTPUTF8_ARGUMENT),
                (b"RET", Some(value)) if mail.ret.is_none() && value.eq_ignore_ascii_case(b"FULL") => {
                    mail.ret = Some(Ret::Full);
                    None
                }
                (b"RET", Some(value)) if mail.ret.is_none() && value.eq_ignore_ascii_case(b"HDRS") => {
                    mail.ret = Some(Ret::Headers);
                    None
                }
                (b"RET", _) => Some(reply::RET),
                (b"ENVID", Some(value)) if mail.envid.is_none() && value.len() <= 100 && command::is_xtext(value) => {
                    mail.envid = Some(value.to_vec());
                    None
                }
                (b"ENVID", _) => Some(reply::ENVID),
                // RFC 4954 §5: the submitter's identity, which a relay may ignore.
                (b"AUTH", Some(_)) => None,
                _ => Some(reply::MAIL_PARAMETER),
            };
            if let Some(problem) = problem {
                self.write(problem);
                return None;
            }
        }
        if let Some(size) = mail.size {
            if self.config.size_limit > 0 && size > self.config.size_limit as u64 {
                self.write(reply::SIZE_EXCEEDED);
                return None;
            }
        }
        self.mail = Some(mail);
        self.mail_accepted = false;
        self.phase = Phase::Waiting(Event::Mail);
        Some(Event::Mail)
    }

    /// The path and parameters of MAIL (`keyword` `FROM:`) or RCPT (`TO:`), or None when the
    /// reply (`syntax`, or 553 for a path that cannot be read) is written.
    fn path_and_parameters<'a>(&mut self, arg: &'a [u8], keyword: &[u8], syntax: &'static str) -> Option<(&'a [u8], Vec<command::Parameter<'a>>)> {
        let Some(rest) = command::strip_keyword(arg, keyword) else {
            self.write(syntax);
            return None;
        };
        let Ok((address, params)) = command::path(rest) else {
            self.write(reply::MALFORMED);
            return None;
        };
        if !self.esmtp && !params.is_empty() {
            self.write(syntax);
            return None;
        }
        let Ok(params) = command::parameters(params) else {
            self.write(syntax);
            return None;
        };
        Some((address, params))
    }

    fn rcpt_command(&mut self, arg: &[u8]) -> Option<Event> {
        if self.helo.is_none() {
            self.write(reply::NEED_HELO);
            return None;
        }
        if !self.mail_accepted {
            self.write(reply::NEED_MAIL);
            return None;
        }
        let (address, params) = self.path_and_parameters(arg, b"TO:", reply::RCPT_SYNTAX)?;
        let mut recipient = Recipient { address: address.to_vec(), ..Recipient::default() };
        for param in &params {
            let problem = match (param.keyword.as_slice(), param.value) {
                (b"NOTIFY", Some(value)) if recipient.notify.is_none() => match Notify::parse(value) {
                    Some(notify) => {
                        recipient.notify = Some(notify);
                        None
                    }
                    None => Some(reply::NOTIFY),
                },
                (b"NOTIFY", _) => Some(reply::NOTIFY),
                (b"ORCPT", Some(value)) if recipient.orcpt.is_none() && orcpt_valid(value) => {
                    recipient.orcpt = Some(value.to_vec());
                    None
                }
                (b"ORCPT", _) => Some(reply::ORCPT),
                _ => Some(reply::RCPT_PARAMETER),
            };
            if let Some(problem) = problem {
                self.write(problem);
                return None;
            }
        }
        self.pending_rcpt = Some(recipient);
        self.phase = Phase::Waiting(Event::Rcpt);
        Some(Event::Rcpt)
    }

    fn data_command(&mut self, arg: &[u8]) {
        if self.helo.is_none() {
            self.write(reply::NEED_HELO);
            return;
        }
        if self.chunks.is_some() {
            self.write(reply::DATA_AFTER_BDAT);
            return;
        }
        if self.envelope.recipients.is_empty() {
            self.write(reply::NEED_RCPT);
            return;
        }
        if !arg.is_empty() {
            self.write(reply::DATA_SYNTAX);
            return;
        }
        self.write(reply::DATA_GO);
        let expected = self.mail.as_ref().and_then(|m| m.size).and_then(|s| usize::try_from(s).ok());
        self.phase = Phase::Data(Box::new(DataReader::new(self.size_limit(), self.config.line_limit, expected)));
    }

    fn size_limit(&self) -> usize {
        if self.config.size_limit == 0 {
            usize::MAX >> 2
        } else {
            self.config.size_limit
        }
    }

    fn end_of_data(&mut self) -> Option<Event> {
        let Phase::Data(mut reader) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return None;
        };
        if let Some(problem) = reader.problem() {
            self.reset_transaction();
            self.write(refusal(problem));
            return None;
        }
        let message = reader.take().unwrap_or_default();
        self.message_ready(message, false)
    }

    fn message_ready(&mut self, message: Content, chunked: bool) -> Option<Event> {
        let now = self.now.unwrap_or_else(SystemTime::now);
        let helo = self.helo.as_deref().unwrap_or_default();
        let trace = trace::received(helo, &self.peer, &self.config.hostname, self.authenticated, now);
        self.message = Some((trace, message));
        self.message_chunked = chunked;
        self.phase = Phase::Waiting(Event::Message);
        Some(Event::Message)
    }

    fn bdat_command(&mut self, arg: &[u8]) -> Option<Event> {
        let mut words = arg.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty());
        let size = words.next().filter(|w| w.len() <= 18 && w.iter().all(u8::is_ascii_digit));
        let size = size.and_then(|w| std::str::from_utf8(w).ok()).and_then(|w| w.parse::<usize>().ok());
        let last = match words.next() {
            None => Some(false),
            Some(word) if word.eq_ignore_ascii_case(b"LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(size), Some(last), None) = (size, last, words.next()) else {
            // The chunk's size is unknown: its bytes will be read as commands (and mostly
            // refused as such).
            self.write(reply::BDAT_SYNTAX);
            return None;
        };
        let refusal = if self.helo.is_none() {
            Some(reply::NEED_HELO)
        } else if !self.mail_accepted {
            Some(reply::NEED_MAIL)
        } else if self.envelope.recipients.is_empty() {
            Some(reply::NEED_RCPT)
        } else {
            None
        };
        if refusal.is_none() && self.chunks.is_none() {
            let expected = self.mail.as_ref().and_then(|m| m.size).and_then(|s| usize::try_from(s).ok());
            self.chunks = Some(Box::new(DataReader::chunked(self.size_limit(), self.config.line_limit, expected)));
        }
        self.phase = Phase::Chunk { left: size, last, size, refusal };
        if size == 0 {
            return self.end_of_chunk();
        }
        None
    }

    fn end_of_chunk(&mut self) -> Option<Event> {
        let Phase::Chunk { last, size, refusal: refused, .. } = std::mem::replace(&mut self.phase, Phase::Command) else {
            return None;
        };
        if let Some(reply) = refused {
            self.write(reply);
            return None;
        }
        let reader = self.chunks.as_mut()?;
        if last {
            reader.finish();
        }
        if let Some(problem) = reader.problem() {
            // The message is refused; the client sends no more chunks of it (RFC 3030 §4.2),
            // and any it had pipelined find no transaction.
            self.reset_transaction();
            self.write(refusal(problem));
            return None;
        }
        if !last {
            let text = format!("250 2.0.0 {size} octets received");
            self.write(&text);
            return None;
        }
        let message = self.chunks.take().and_then(|mut reader| reader.take()).unwrap_or_default();
        self.message_ready(message, true)
    }

    fn auth_command(&mut self, arg: &[u8]) -> Option<Event> {
        let problem = if self.helo.is_none() {
            Some(reply::NEED_EHLO)
        } else if !self.esmtp || !self.config.auth {
            Some(reply::AUTH_UNKNOWN_COMMAND)
        } else if self.config.auth_requires_tls && !self.tls {
            Some(reply::AUTH_NEEDS_TLS)
        } else if self.authenticated {
            Some(reply::AUTH_ALREADY)
        } else if self.mail.is_some() {
            Some(reply::AUTH_IN_TRANSACTION)
        } else {
            None
        };
        if let Some(problem) = problem {
            self.write(problem);
            return None;
        }
        let mut words = arg.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty());
        let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
        let initial = words.next();
        // As aiosmtpd: an AUTH without a mechanism, or with too many words, is a failed
        // exchange (counted and delayed like a wrong password).
        if mechanism.is_empty() || words.next().is_some() {
            let failure = if mechanism.is_empty() { reply::AUTH_NO_VALUE } else { reply::AUTH_TOO_MANY };
            self.auth = Some(AuthAttempt { mechanism: None, login: Vec::new(), password: Vec::new(), failure: Some(failure) });
            self.phase = Phase::Waiting(Event::Auth);
            return Some(Event::Auth);
        }
        match (mechanism.as_slice(), initial) {
            (b"PLAIN", Some(initial)) => self.auth_plain(initial),
            (b"PLAIN", None) => {
                self.write(reply::PLAIN_GO);
                self.phase = Phase::AuthPlain;
                None
            }
            (b"LOGIN", Some(initial)) => self.auth_login_user(initial),
            (b"LOGIN", None) => {
                self.write(reply::LOGIN_USER);
                self.phase = Phase::AuthLoginUser;
                None
            }
            _ => {
                self.write(reply::AUTH_MECHANISM);
                None
            }
        }
    }

    fn auth_plain(&mut self, response: &[u8]) -> Option<Event> {
        let decoded = match auth_response(response) {
            Ok(decoded) => decoded,
            Err(failure) => return self.auth_done(Mechanism::Plain, Vec::new(), Vec::new(), Some(failure)),
        };
        // authzid \0 authcid \0 passwd (RFC 4616)
        let mut parts = decoded.splitn(3, |&b| b == 0);
        match (parts.next(), parts.next(), parts.next()) {
            (Some(_), Some(login), Some(password)) => self.auth_done(Mechanism::Plain, login.to_vec(), password.to_vec(), None),
            _ => self.auth_done(Mechanism::Plain, Vec::new(), Vec::new(), Some(reply::AUTH_SPLIT)),
        }
    }

    fn auth_login_user(&mut self, response: &[u8]) -> Option<Event> {
        match auth_response(response) {
            Ok(user) => {
                self.write(reply::LOGIN_PASSWORD);
                self.phase = Phase::AuthLoginPassword(user);
                None
            }
            Err(failure) => self.auth_done(Mechanism::Login, Vec::new(), Vec::new(), Some(failure)),
        }
    }

    fn auth_login_password(&mut self, user: Vec<u8>, response: &[u8]) -> Option<Event> {
        match auth_response(response) {
            Ok(password) => self.auth_done(Mechanism::Login, user, password, None),
            Err(failure) => self.auth_done(Mechanism::Login, Vec::new(), Vec::new(), Some(failure)),
        }
    }

    fn auth_done(&mut self, mechanism: Mechanism, login: Vec<u8>, password: Vec<u8>, failure: Option<&'static str>) -> Option<Event> {
        self.auth = Some(AuthAttempt { mechanism: Some(mechanism), login, password, failure });
        self.phase = Phase::Waiting(Event::Auth);
        Some(Event::Auth)
    }

    fn starttls_command(&mut self, arg: &[u8]) -> Option<Event> {
        if !arg.is_empty() {
            self.write(reply::STARTTLS_SYNTAX);
            return None;
        }
        if !self.config.tls {
            self.write(reply::TLS_UNAVAILABLE);
            return None;
        }
        if self.tls {
            self.write(reply::TLS_ACTIVE);
            return None;
        }
        self.write(reply::TLS_GO);
        self.phase = Phase::Handshake;
        Some(Event::StartTls)
    }

    // --- state ----------------------------------------------------------------------------

    fn reset_transaction(&mut self) {
        self.mail = None;
        self.mail_accepted = false;
        self.pending_rcpt = None;
        self.envelope = Envelope::default();
        self.chunks = None;
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.line = Vec::new();
    }

    fn write(&mut self, reply: &str) {
        self.write_bytes(reply.as_bytes());
    }

    /// Appends a reply, each of its lines printable ASCII and ending in CRLF.
    fn write_bytes(&mut self, reply: &[u8]) {
        let reply = reply.strip_suffix(b"\r\n").unwrap_or(reply);
        for (n, line) in reply.split(|&b| b == b'\n').enumerate() {
            if n > 0 {
                self.out.extend_from_slice(b"\r\n");
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.out.extend(line.iter().map(|&b| if (0x20..0x7f).contains(&b) { b } else { b'?' }));
        }
        self.out.extend_from_slice(b"\r\n");
    }
}

/// ORCPT's value (RFC 3461 §4.2): an address type (an atom), `;`, xtext.
fn orcpt_valid(value: &[u8]) -> bool {
    let Some(semi) = value.iter().position(|&b| b == b';') else {
        return false;
    };
    let (kind, address) = (&value[..semi], &value[semi + 1..]);
    !kind.is_empty()
        && kind.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && !address.is_empty()
        && address.len() <= 500
        && command::is_xtext(address)
}

/// A SASL response line: base64, or `*` to abort (RFC 4954 §4).
fn auth_response(line: &[u8]) -> Result<Vec<u8>, &'static str> {
    let line = command::trim(line);
    if line == b"*" {
        return Err(reply::AUTH_ABORTED);
    }
    if line == b"=" {
        return Ok(Vec::new());
    }
    base64_decode(line).ok_or(reply::AUTH_BASE64)
}

/// Standard base64 with padding (what SASL uses); None for anything else.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 4 != 0 {
        return None;
    }
    let value = |b: u8| -> Option<u32> {
        Some(u32::from(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let chunks = text.len() / 4;
    for (n, chunk) in text.chunks_exact(4).enumerate() {
        let padding = if n + 1 == chunks { chunk.iter().rev().take_while(|&&b| b == b'=').count() } else { 0 };
        if padding > 2 {
            return None;
        }
        let mut bits = 0u32;
        for &b in &chunk[..4 - padding] {
            bits = bits << 6 | value(b)?;
        }
        bits <<= 6 * padding as u32;
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - padding]);
    }
    Some(out)
}

#[cfg(test)]
mod tests;
