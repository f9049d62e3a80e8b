//! The SMTP client engine and its reply parser on arbitrary server bytes, split across reads at
//! arbitrary points: no panic, the same events, commands written and transaction outcomes
//! however the bytes are split, nothing but whole command lines written (no CR or LF inside a
//! line: a server cannot make the client inject a command), every recipient's outcome accounted
//! for, and the replies a plain line-by-line reading of RFC 5321 §4.2 gives (the reference below).
//!
//! Input: byte 0 picks the TLS policy, where the body is, its 8-bit flag and the recipients;
//! byte 1 seeds the read sizes; the rest is what the server sends.
#![no_main]

use deliverypool::smtp::client::{Client, Envelope, Event, Rcpt, Refusal, TlsPolicy};
use deliverypool::smtp::reply::{Reply, ReplyError, ReplyParser, MAX_LINE, MAX_REPLY};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Trace {
    events: Vec<Event>,
    output: Vec<u8>,
    /// Where in the output each body went, with its suffix.
    bodies: Vec<(usize, &'static [u8])>,
    outcomes: Vec<String>,
}

fn envelope(options: u8) -> Envelope {
    let recipients: &[&str] = match (options >> 4) & 3 {
        0 => &["a@x.test"],
        1 => &["a@x.test", "b@x.test"],
        2 => &["jos\u{e9}@x.test", "b@x.test", "c@x.test"],
        _ => &["a@x.test", "b\r\nRSET@x", "c@x.test", "d@x.test"],
    };
    Envelope {
        mail_from: "s@sender.test".into(),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        size: 12,
        eight_bit: options & 8 != 0,
        in_memory: options & 4 != 0,
        ends_with_crlf: true,
        ret: Some("HDRS".into()),
        envid: Some("e n=v".into()),
        notify: vec![Some("FAILURE".into()); recipients.len()],
        orcpt: vec![Some("o@x".into()); recipients.len()],
    }
}

/// Runs a session over `data` read in pieces `seed` picks (one read without a seed), acting on
/// every event at once, as the asyncio protocol does.
fn run(data: &[u8], options: u8, mut seed: Option<u32>) -> Trace {
    let policy = [TlsPolicy::Opportunistic, TlsPolicy::Required, TlsPolicy::Never, TlsPolicy::Opportunistic][usize::from(options & 3)];
    let mut client = Client::new("relay.test", policy, "mx.test[192.0.2.1]:25");
    let envelope = envelope(options);
    let mut trace = Trace { events: Vec::new(), output: Vec::new(), bodies: Vec::new(), outcomes: Vec::new() };
    let mut transactions = 0;
    let mut at = 0;
    let mut finished = false;
    while at < data.len() && !finished {
        let size = match seed.as_mut() {
            None => data.len(),
            Some(state) => {
                *state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                if *state >> 28 == 0 { data.len() } else { 1 + (*state >> 16) as usize % 9 }
            }
        };
        let end = (at + size).min(data.len());
        let mut event = client.receive(&data[at..end]);
        at = end;
        loop {
            trace.output.extend(client.take_output());
            if event == Event::Pending {
                break;
            }
            trace.events.push(event);
            let mut next = Event::Pending;
            match event {
                Event::Ready | Event::Done => {
                    if event == Event::Done {
                        trace.outcomes.push(describe(&client, envelope.recipients.len()));
                    }
                    if transactions < 3 && client.is_ready() {
                        transactions += 1;
                        next = client.begin(envelope.clone());
                    } else if client.is_ready() {
                        client.quit();
                    }
                }
                Event::StartTls => {
                    // Where TLS starts depends on when the 220 arrived; the injection check
                    // (bytes after it in the same read) is the one place where timing is the point.
                    finished = true;
                    break;
                }
                Event::Refused => {
                    if client.refusal() == Some(&Refusal::DataAfterStartTls) {
                        trace.events.pop();
                        trace.events.push(Event::StartTls);
                    }
                    finished = true;
                    break;
                }
                Event::Closed => {
                    finished = true;
                    break;
                }
                Event::SendBody => {
                    let frame = client.body_frame().expect("a body frame while the body is due");
                    trace.bodies.push((trace.output.len(), frame.suffix()));
                }
                Event::Pending => {}
            }
            if next == Event::Pending && client.holds_input() {
                next = client.receive(&[]);
            }
            event = next;
        }
    }
    if !finished {
        let event = client.connection_lost("closed");
        trace.output.extend(client.take_output());
        trace.events.push(event);
        if event == Event::Done {
            trace.outcomes.push(describe(&client, envelope.recipients.len()));
        }
    }
    trace
}

fn describe(client: &Client, count: usize) -> String {
    let outcome = client.outcome().expect("an outcome after Done");
    assert_eq!(outcome.recipients.len(), count);
    let mut text = format!("reconnect={} ", outcome.reconnect);
    for rcpt in &outcome.recipients {
        match rcpt {
            Rcpt::Reply(index) => text += &outcome.replies[*index].to_string(),
            Rcpt::Untried => text += "untried",
            Rcpt::Local(local) => text += &local.text(),
            Rcpt::Lost => text += outcome.lost.as_deref().expect("a lost recipient has the reason"),
        }
        text.push('|');
    }
    if let Some(last) = outcome.last {
        assert!(last < outcome.replies.len());
    }
    text
}

/// RFC 5321 §4.2 line by line: each line (ended by LF, one CR before it dropped) is a code of
/// three digits (2-5 first), then space, '-' or the end; '-' continues the reply. An unfinished
/// last line is checked as far as it goes.
fn reference(data: &[u8]) -> Vec<Result<Reply, ReplyError>> {
    fn start(line: &[u8], code: Option<u16>) -> Result<u16, ReplyError> {
        if line.len() < 3 || !(b'2'..=b'5').contains(&line[0]) || !line[1].is_ascii_digit() || !line[2].is_ascii_digit() {
            return Err(ReplyError::BadCode);
        }
        if !matches!(line.get(3), None | Some(b' ' | b'-')) {
            return Err(ReplyError::BadSeparator);
        }
        let this = u16::from(line[0] - b'0') * 100 + u16::from(line[1] - b'0') * 10 + u16::from(line[2] - b'0');
        if code.is_some_and(|c| c != this) {
            return Err(ReplyError::CodeChanged);
        }
        Ok(this)
    }
    let mut replies = Vec::new();
    let mut code = None;
    let mut text: Vec<u8> = Vec::new();
    let mut first_len = 0;
    let mut rest = data;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let mut line = &rest[..end];
        rest = &rest[end + 1..];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let this = match start(line, code) {
            Ok(this) => this,
            Err(error) => {
                replies.push(Err(error));
                return replies;
            }
        };
        if line.len() + 2 > MAX_LINE {
            replies.push(Err(ReplyError::LineTooLong));
            return replies;
        }
        let line_text = line.get(4..).unwrap_or_default();
        if code.is_some() {
            text.push(b'\n');
        } else {
            first_len = line_text.len();
        }
        if text.len() + line_text.len() > MAX_REPLY {
            replies.push(Err(ReplyError::TooLong));
            return replies;
        }
        text.extend_from_slice(line_text);
        code = Some(this);
        if line.get(3) == Some(&b'-') {
            continue;
        }
        let enhanced = deliverypool::smtp::reply::enhanced_code(&text[..first_len]);
        replies.push(Ok(Reply { code: this, enhanced, text: String::from_utf8_lossy(&text).into_owned() }));
        text.clear();
        code = None;
    }
    let separator_known = rest.len() >= 5 || (rest.len() == 4 && rest[3] != b'\r');
    if rest.len() >= 3 {
        let checked = if separator_known { start(rest, code) } else { start(&rest[..3], None) };
        if let Err(error) = checked {
            replies.push(Err(error));
            return replies;
        }
    }
    if rest.len() + 1 > MAX_LINE {
        replies.push(Err(ReplyError::LineTooLong));
    }
    replies
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let (options, seed, data) = (input[0], input[1], &input[2..]);
    let whole = run(data, options, None);
    let split = run(data, options, Some(u32::from(seed) | 1));
    assert_eq!(whole, split);
    // Only whole command lines: CRLF-terminated, no CR or LF inside.
    let text = whole.output.split(|&b| b == b'\n');
    for line in text.clone().take(text.count().saturating_sub(1)) {
        assert!(line.ends_with(b"\r") && !line[..line.len() - 1].contains(&b'\r'), "{:?}", String::from_utf8_lossy(&whole.output));
    }
    assert!(whole.output.is_empty() || whole.output.ends_with(b"\r\n"));
    // The parser against the line-by-line reference.
    assert_eq!(ReplyParser::parse_all(data), reference(data));
});
