//! The SMTP server engine on arbitrary client bytes, split across reads at arbitrary points:
//! no panic, no runaway time, the same replies and the same decisions asked for however the
//! input is split, and every reply line printable ASCII ending in CRLF.
//!
//! Input: byte 0 picks the limits, byte 1 seeds the read sizes; the rest is what the client
//! sends. The decisions are a fixed function of what is asked (a sender holding `x` is refused,
//! a recipient holding `q` refused and one holding `z` answered 421; AUTH as `u` succeeds), so
//! that refusals, closes and authenticated sessions are all reached.
#![no_main]

use std::time::UNIX_EPOCH;

use deliverypool::smtp::server::{Config, Event, Server};
use libfuzzer_sys::fuzz_target;

fn decide(event: Event, server: &mut Server, seen: &mut Vec<Vec<u8>>) -> Option<Vec<u8>> {
    let reply: Vec<u8> = match event {
        Event::Mail => {
            let address = server.mail().map(|m| m.address.clone()).unwrap_or_default();
            seen.push([b"MAIL ".as_slice(), &address].concat());
            if address.contains(&b'x') { b"550 5.1.8 no".to_vec() } else { b"250 2.1.0 OK".to_vec() }
        }
        Event::Rcpt => {
            let address = server.rcpt().map(|r| r.address.clone()).unwrap_or_default();
            seen.push([b"RCPT ".as_slice(), &address].concat());
            if address.contains(&b'z') {
                b"421 4.7.0 bye".to_vec()
            } else if address.contains(&b'q') {
                b"550 5.1.1 no\r\n".to_vec()
            } else {
                b"250 2.1.5 OK".to_vec()
            }
        }
        Event::Message => {
            let (trace, body) = server.take_message().expect("a message for Event::Message");
            assert!(trace.starts_with(b"Received: from ") && trace.ends_with(b"\r\n"));
            assert!(!server.envelope().recipients.is_empty());
            seen.push([b"MESSAGE ".as_slice(), &body.into_vec()].concat());
            b"250 2.0.0 queued".to_vec()
        }
        Event::Auth => {
            let auth = server.auth().cloned().expect("an attempt for Event::Auth");
            seen.push([b"AUTH ".as_slice(), &auth.login, b" ", &auth.password].concat());
            match auth.failure {
                Some(failure) => failure.as_bytes().to_vec(),
                None if auth.login == b"u" => b"235 2.7.0 OK".to_vec(),
                None => b"535 5.7.8 no".to_vec(),
            }
        }
        // The handshake fails: the session ends here.
        Event::StartTls => {
            seen.push(b"STARTTLS".to_vec());
            return None;
        }
    };
    Some(reply)
}

/// Runs the session in reads whose sizes `seed` picks (one read without a seed).
fn run(data: &[u8], config: &Config, mut seed: Option<u32>) -> (Vec<u8>, Vec<Vec<u8>>, bool) {
    let mut server = Server::new(config.clone(), "192.0.2.1");
    server.set_clock(Some(UNIX_EPOCH));
    let mut seen = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let size = match seed.as_mut() {
            None => data.len(),
            Some(state) => {
                *state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                if *state >> 28 == 0 { data.len() } else { 1 + (*state >> 16) as usize % 9 }
            }
        };
        let end = (at + size).min(data.len());
        pending.extend_from_slice(&data[at..end]);
        at = end;
        let used = server.drive(&pending, |event, server| decide(event, server, &mut seen));
        assert!(used <= pending.len());
        pending.drain(..used);
        if server.closed() || server.waiting() == Some(Event::StartTls) {
            break;
        }
        assert!(pending.is_empty() || server.waiting().is_some(), "input left unread with nothing pending");
    }
    (server.take_output(), seen, server.closed())
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let mut config = Config::new("relay.test");
    config.size_limit = [0, 40, 300, 1 << 20][input[0] as usize % 4];
    config.line_limit = [100, 1001][(input[0] >> 2) as usize % 2];
    config.command_limit = [100, 512][(input[0] >> 3) as usize % 2];
    config.auth = input[0] & 0x10 != 0;
    config.auth_requires_tls = input[0] & 0x20 != 0;
    config.tls = input[0] & 0x40 != 0;
    config.call_limit = if input[0] & 0x80 != 0 { 3 } else { 10_000 };
    let data = &input[2..];
    let whole = run(data, &config, None);
    let split = run(data, &config, Some(u32::from(input[1])));
    assert_eq!(split, whole, "the same session however the reads split it");
    let (output, _, _) = whole;
    assert!(output.ends_with(b"\r\n"));
    for line in output.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").expect("every line ends in CRLF");
        assert!(line.len() >= 3 && line[..3].iter().all(u8::is_ascii_digit), "{line:?}");
        assert!(line.iter().all(|&b| (0x20..0x7f).contains(&b)), "{line:?}");
    }
});
