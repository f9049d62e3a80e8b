use std::time::UNIX_EPOCH;

use super::*;

fn config() -> Config {
    let mut config = Config::new("relay.test");
    config.size_limit = 1500;
    config.auth = true;
    config.auth_requires_tls = false;
    config.tls = true;
    config
}

/// A decider that takes every sender and recipient but `refused@x.test`, takes messages and
/// AUTH for carol/s3cret, and records what it saw.
#[derive(Default)]
struct Script {
    seen: Vec<String>,
}

impl Script {
    fn decide(&mut self, event: Event, server: &mut Server) -> Option<Vec<u8>> {
        let reply: &[u8] = match event {
            Event::Mail => {
                let mail = server.mail().unwrap();
                self.seen.push(format!("MAIL {}", String::from_utf8_lossy(&mail.address)));
                b"250 2.1.0 OK"
            }
            Event::Rcpt => {
                let rcpt = server.rcpt().unwrap();
                self.seen.push(format!("RCPT {}", String::from_utf8_lossy(&rcpt.address)));
                if rcpt.address == b"refused@x.test" {
                    b"550 5.1.1 no"
                } else {
                    b"250 2.1.5 OK"
                }
            }
            Event::Message => {
                let (trace, body) = server.take_message().unwrap();
                assert!(trace.starts_with(b"Received: from "));
                let rcpts = server.envelope().recipients.len();
                let from = String::from_utf8_lossy(&server.envelope().mail.address).into_owned();
                self.seen.push(format!("MESSAGE {from} {rcpts} {}", String::from_utf8_lossy(&body.into_vec())));
                b"250 2.0.0 queued"
            }
            Event::Auth => {
                let auth = server.auth().unwrap().clone();
                self.seen.push(format!("AUTH {:?} {:?}", auth.failure, String::from_utf8_lossy(&auth.login)));
                if auth.failure.is_none() && auth.login == b"carol" && auth.password == b"s3cret" {
                    b"235 2.7.0 Authentication successful"
                } else if let Some(failure) = auth.failure {
                    failure.as_bytes()
                } else {
                    b"535 5.7.8 Authentication credentials invalid"
                }
            }
            Event::StartTls => {
                self.seen.push("STARTTLS".into());
                return None;
            }
        };
        Some(reply.to_vec())
    }
}

/// Runs a session fed in reads cut at `cuts`; returns the replies and what the script saw.
fn session(input: &[u8], cuts: &[usize]) -> (String, Vec<String>) {
    let mut server = Server::new(config(), "192.0.2.1");
    server.set_clock(Some(UNIX_EPOCH));
    let mut script = Script::default();
    let mut start = 0;
    let mut pending: Vec<u8> = Vec::new();
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        let end = end.clamp(start, input.len());
        pending.extend_from_slice(&input[start..end]);
        start = end;
        let used = server.drive(&pending, |event, server| script.decide(event, server));
        pending.drain(..used);
        if server.waiting() == Some(Event::StartTls) {
            server.tls_started();
        }
    }
    (String::from_utf8(server.take_output()).unwrap(), script.seen)
}

fn replies(output: &str) -> Vec<&str> {
    output.split("\r\n").filter(|l| !l.is_empty()).collect()
}

#[test]
fn a_pipelined_transaction_in_one_read() {
    let input = b"EHLO client.test\r\nMAIL FROM:<a@b.test> SIZE=20\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<refused@x.test>\r\nDATA\r\nSubject: s\r\n\r\n..hi\r\n.\r\nQUIT\r\n";
    let (output, seen) = session(input, &[]);
    let lines = replies(&output);
    assert_eq!(lines[0], "220 relay.test deliverypool");
    assert_eq!(lines[1], "250-relay.test");
    assert!(lines.contains(&"250-PIPELINING") && lines.contains(&"250-CHUNKING") && lines.contains(&"250-DSN"));
    assert!(lines.contains(&"250-SIZE 1500") && lines.contains(&"250-STARTTLS") && lines.contains(&"250-AUTH LOGIN PLAIN"));
    let after_ehlo: Vec<&str> = lines.iter().copied().skip_while(|l| *l != "250 HELP").skip(1).collect();
    assert_eq!(after_ehlo, ["250 2.1.0 OK", "250 2.1.5 OK", "550 5.1.1 no", "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 queued", "221 2.0.0 Bye"]);
    assert_eq!(seen, ["MAIL a@b.test", "RCPT x@y.test", "RCPT refused@x.test", "MESSAGE a@b.test 1 Subject: s\r\n\r\n.hi\r\n"]);
}

#[test]
fn every_split_gives_the_same_session() {
    // (STARTTLS is not here: the bytes of a later read come after the handshake, and count.)
    let inputs: [&[u8]; 3] = [
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nhi\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<x@y.test>\r\nBDAT 4\r\nab\r\nBDAT 3 LAST\r\ncd\nRSET\r\nQUIT\r\n",
        b"EHLO c\r\nAUTH PLAIN\r\nAGNhcm9sAHMzY3JldA==\r\nAUTH LOGIN\r\nNOOP\r\nMAIL FROM:<a@b.test>\r\nXYZZY\r\n\r\nQUIT\r\n",
        b"HELO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 0 LAST\r\nDATA\r\nx\n.\r\n.\r\nQUIT\r\n",
    ];
    for input in inputs {
        let whole = session(input, &[]);
        for cut in 0..=input.len() {
            assert_eq!(session(input, &[cut]), whole, "cut at {cut} of {:?}", String::from_utf8_lossy(input));
        }
        for size in 1..4 {
            let cuts: Vec<usize> = (size..input.len()).step_by(size).collect();
            assert_eq!(session(input, &cuts), whole, "reads of {size}");
        }
    }
}

#[test]
fn smuggling_nul_long_lines_and_size_are_refused_and_the_session_goes_on() {
    let prelude = "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n";
    for (body, reply) in [
        ("a\n.\r\nMAIL FROM:<evil@x.test>\r\n.\r\n", "554 5.6.0 Message contains a bare LF or CR; use CRLF line endings (SMTP smuggling)"),
        ("a\0b\r\n.\r\n", "554 5.6.0 Message contains a NUL character (RFC 5321 4.5.2)"),
        (&format!("{}\r\n.\r\n", "x".repeat(1000)), "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)"),
        (&"0123456789\r\n".repeat(200), "552 5.3.4 Error: too much mail data"),
    ] {
        let body = if body.ends_with(".\r\n") { body.to_owned() } else { format!("{body}.\r\n") };
        let (output, seen) = session(format!("{prelude}{body}NOOP\r\n").as_bytes(), &[]);
        let lines = replies(&output);
        assert_eq!(&lines[lines.len() - 2..], [reply, "250 OK"], "{body:?}");
        assert!(!seen.iter().any(|s| s.starts_with("MESSAGE")), "{seen:?}");
    }
}

#[test]
fn bdat_chunks_and_their_checks() {
    let prelude = "EHLO c\r\nMAIL FROM:<a@b.test> BODY=8BITMIME\r\nRCPT TO:<x@y.test>\r\n";
    // Chunks pipelined with the envelope; a dot line is text in BDAT.
    let (output, seen) = session(format!("{prelude}BDAT 5\r\n.\r\nx\rBDAT 3 LAST\r\n\nyzNOOP\r\n").as_bytes(), &[]);
    assert!(output.ends_with("250 2.0.0 5 octets received\r\n250 2.0.0 queued\r\n250 OK\r\n"), "{output}");
    assert_eq!(seen.last().unwrap(), "MESSAGE a@b.test 1 .\r\nx\r\nyz\r\n");
    // A bare LF in a chunk refuses the message; the chunks after it find no transaction.
    let (output, _) = session(format!("{prelude}BDAT 3\r\na\nbBDAT 1 LAST\r\nc").as_bytes(), &[]);
    assert!(output.ends_with("554 5.6.0 Message contains a bare LF or CR; use CRLF line endings (SMTP smuggling)\r\n503 5.5.1 Error: need MAIL command\r\n"), "{output}");
    // Without recipients the chunk is read and thrown away.
    let (output, seen) = session(b"EHLO c\r\nBDAT 10 LAST\r\nQUIT\r\nQUITNOOP\r\n", &[]);
    assert!(output.ends_with("503 5.5.1 Error: need MAIL command\r\n250 OK\r\n"), "{output}");
    assert!(seen.is_empty());
    // Over the size limit.
    let big = "z".repeat(600) + "\r\n";
    let (output, _) = session(format!("{prelude}BDAT 602\r\n{big}BDAT 602\r\n{big}BDAT 602 LAST\r\n{big}").as_bytes(), &[]);
    assert!(output.ends_with("250 2.0.0 602 octets received\r\n250 2.0.0 602 octets received\r\n552 5.3.4 Error: too much mail data\r\n"), "{output}");
    // DATA after BDAT, and a bad BDAT.
    let (output, _) = session(format!("{prelude}BDAT 1\r\nxDATA\r\nBDAT x\r\n").as_bytes(), &[]);
    assert!(output.ends_with("503 5.5.1 Error: DATA after BDAT\r\n501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"), "{output}");
}

#[test]
fn starttls_drops_what_was_pipelined_after_it() {
    let (output, seen) = session(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\n", &[]);
    assert!(output.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{output}");
    assert_eq!(seen, ["STARTTLS"]);
    // After the handshake the session starts over: MAIL needs a new EHLO, STARTTLS is not offered.
    let mut server = Server::new(config(), "192.0.2.1");
    let mut script = Script::default();
    server.drive(b"EHLO c\r\nSTARTTLS\r\n", |e, s| script.decide(e, s));
    server.tls_started();
    server.clear_output();
    server.drive(b"MAIL FROM:<a@b.test>\r\nEHLO c\r\nSTARTTLS\r\n", |e, s| script.decide(e, s));
    let output = String::from_utf8(server.take_output()).unwrap();
    assert!(output.starts_with("503 5.5.1 Error: send HELO first\r\n"), "{output}");
    assert!(!output.contains("250-STARTTLS") && output.ends_with("503 5.5.1 TLS already active\r\n"), "{output}");
}

#[test]
fn auth_exchanges() {
    let (output, seen) = session(b"EHLO c\r\nAUTH LOGIN\r\nY2Fyb2w=\r\nczNjcmV0\r\nAUTH PLAIN\r\n", &[]);
    assert!(output.contains("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n503 5.5.1 Already authenticated\r\n"), "{output}");
    assert_eq!(seen, ["AUTH None \"carol\""]);
    let (output, seen) = session(b"EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN !!!!\r\nAUTH PLAIN AGNhcm9s\r\nAUTH\r\nAUTH PLAIN a b\r\nAUTH CRAM-MD5\r\n", &[]);
    assert!(output.ends_with(
        "334 \r\n501 5.7.0 Auth aborted\r\n501 5.5.2 Can't decode base64\r\n501 5.5.2 Can't split auth value\r\n501 5.5.4 Not enough value\r\n501 5.5.4 Too many values\r\n504 5.5.4 Unrecognized authentication type\r\n"
    ), "{output}");
    assert_eq!(seen.len(), 5, "every failed exchange is the caller's to count: {seen:?}");
    // Not offered before TLS when it needs TLS.
    let mut strict = config();
    strict.auth_requires_tls = true;
    let mut server = Server::new(strict, "p");
    server.drive(b"EHLO c\r\nAUTH PLAIN AGNhcm9sAHMzY3JldA==\r\n", |_, _| None);
    let output = String::from_utf8(server.take_output()).unwrap();
    assert!(!output.contains("AUTH LOGIN") && output.ends_with("538 5.7.11 Encryption required for requested authentication mechanism\r\n"));
}

#[test]
fn command_limits() {
    // A command line over the limit is read to its end and answered once.
    let long = format!("EHLO c\r\nMAIL FROM:<{}@b.test>\r\nNOOP\r\n", "a".repeat(600));
    let (output, _) = session(long.as_bytes(), &[]);
    assert!(output.ends_with("500 5.5.2 Command line too long\r\n250 OK\r\n"), "{output}");
    let endless = format!("EHLO c\r\nNOOP {}\r\nNOOP\r\n", "a".repeat(5000));
    for cut in [10, 700, 2000, 4999] {
        let (output, _) = session(endless.as_bytes(), &[cut]);
        assert!(output.ends_with("500 5.5.2 Command line too long\r\n250 OK\r\n"), "{output}");
    }
    // Five unknown commands end the session.
    let (output, _) = session(b"A\r\nB\r\nC\r\nD\r\nE\r\nNOOP\r\n", &[]);
    assert!(output.ends_with("500 5.5.1 Error: command \"D\" not recognized\r\n421 4.7.0 relay.test Too many unrecognized commands; closing connection\r\n"), "{output}");
    // Each command at most call_limit times.
    let mut limited = config();
    limited.call_limit = 3;
    let mut server = Server::new(limited, "p");
    server.drive(&b"NOOP\r\n".repeat(5), |_, _| None);
    assert!(server.closed());
    assert!(String::from_utf8(server.take_output()).unwrap().ends_with("250 OK\r\n421 4.7.0 NOOP sent too many times\r\n"));
    // Echoed bytes are printable ASCII.
    let (output, _) = session(b"\x01\xff\r\nX\x07Y\r\n", &[]);
    assert!(output.ends_with("500 5.5.2 Error: bad syntax\r\n500 5.5.1 Error: command \"X?Y\" not recognized\r\n"), "{output}");
}

#[test]
fn mail_and_rcpt_parameters() {
    let mut server = Server::new(config(), "p");
    let mut mails = Vec::new();
    let mut rcpts = Vec::new();
    let input = b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=10 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=<>\r\n\
RCPT TO:<x@y.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x+2By@y.test\r\nRCPT TO:<z@y.test> NOTIFY=NEVER\r\n\
RCPT TO:<z@y.test> NOTIFY=NEVER,SUCCESS\r\nRCPT TO:<z@y.test> ORCPT=rfc822\r\nRCPT TO:<z@y.test> FOO=1\r\nRSET\r\n\
MAIL FROM:<a@b.test> SIZE=1501\r\nMAIL FROM:<a@b.test> RET=ALL\r\nMAIL FROM:<a@b.test> ENVID=a=b\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\n\
MAIL FROM:<a@b.test> SMTPUTF8=1\r\nMAIL FROM:<a@b.test> X-Y\r\nMAIL FROM:<a@b.test> SIZE=x\r\nMAIL FROM:<a@b.test\r\nMAIL TO:<a@b.test>\r\n";
    server.drive(input, |event, server| {
        match event {
            Event::Mail => mails.push(server.mail().unwrap().clone()),
            Event::Rcpt => rcpts.push(server.rcpt().unwrap().clone()),
            _ => {}
        }
        Some(b"250 2.0.0 OK".to_vec())
    });
    let output = String::from_utf8(server.take_output()).unwrap();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(
        (mail.size, mail.body, mail.smtputf8, mail.ret, mail.envid.as_deref()),
        (Some(10), Some(Body::EightBitMime), true, Some(Ret::Headers), Some(&b"QQ+2B1"[..]))
    );
    assert_eq!(rcpts.len(), 2);
    assert_eq!(rcpts[0].notify.map(Notify::to_text).as_deref(), Some("SUCCESS,DELAY"));
    assert_eq!(rcpts[0].orcpt.as_deref(), Some(&b"rfc822;x+2By@y.test"[..]));
    assert_eq!(rcpts[1].notify.map(Notify::bits), Some(Notify::NEVER));
    let lines = replies(&output);
    assert_eq!(
        lines[lines.len() - 13..],
        [
            "501 5.5.4 Error: NOTIFY is NEVER, or SUCCESS, FAILURE, DELAY",
            "501 5.5.4 Error: ORCPT must be addr-type;xtext",
            "555 5.5.4 RCPT TO parameters not recognized or not implemented",
            "250 2.0.0 OK",
            "552 5.3.4 Error: message size exceeds fixed maximum message size",
            "501 5.5.4 Error: RET can only be FULL or HDRS",
            "501 5.5.4 Error: ENVID must be xtext of at most 100 characters",
            "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME",
            "501 5.5.4 Error: SMTPUTF8 takes no arguments",
            "555 5.5.4 MAIL FROM parameters not recognized or not implemented",
            "501 5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>]",
            "553 5.1.3 Error: malformed address",
            "501 5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>]",
        ]
    );
}

#[test]
fn sequence_errors_and_answers() {
    let (output, _) = session(b"MAIL FROM:<a@b.test>\r\nHELO c\r\nRCPT TO:<x@y.test>\r\nDATA\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<c@d.test>\r\nDATA\r\nMAIL FROM:<a@b.test> SIZE=1\r\n", &[]);
    assert_eq!(
        replies(&output)[1..],
        [
            "503 5.5.1 Error: send HELO first",
            "250 relay.test",
            "503 5.5.1 Error: need MAIL command",
            "503 5.5.1 Error: need RCPT command",
            "250 2.1.0 OK",
            "503 5.5.1 Error: nested MAIL command",
            "503 5.5.1 Error: need RCPT command",
            "503 5.5.1 Error: nested MAIL command",
        ]
    );
    // A refused MAIL leaves no transaction; a 421 from the caller ends the session.
    let mut server = Server::new(config(), "p");
    server.drive(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\n", |event, _| {
        Some(if event == Event::Mail { b"421 4.7.0 go away\xff".to_vec() } else { b"250 OK".to_vec() })
    });
    assert!(server.closed());
    assert!(String::from_utf8(server.take_output()).unwrap().ends_with("250 HELP\r\n421 4.7.0 go away?\r\n"));
}

#[test]
fn an_answer_given_later_reads_on_from_where_it_stopped() {
    let mut server = Server::new(config(), "p");
    let input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nNOOP\r\n";
    let used = server.drive(input, |_, _| None);
    assert_eq!(server.waiting(), Some(Event::Mail));
    assert_eq!(&input[used..], b"RCPT TO:<x@y.test>\r\nNOOP\r\n");
    assert_eq!(server.feed(&input[used..]), (0, None), "nothing is read while an event waits");
    server.answer(b"250 2.1.0 OK");
    let rest = &input[used..];
    let used = server.drive(rest, |_, _| Some(b"250 2.1.5 OK".to_vec()));
    assert_eq!(used, rest.len());
    assert_eq!(server.envelope().recipients.len(), 1);
    assert!(String::from_utf8(server.take_output()).unwrap().ends_with("250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 OK\r\n"));
}

#[test]
fn base64() {
    assert_eq!(base64_decode(b"AGNhcm9sAHMzY3JldA==").unwrap(), b"\0carol\0s3cret");
    assert_eq!(base64_decode(b"").unwrap(), b"");
    assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
    assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
    for bad in [&b"YQ="[..], b"Y===", b"Y!==", b"YQ==YQ=="] {
        assert_eq!(base64_decode(bad), None, "{bad:?}");
    }
}
