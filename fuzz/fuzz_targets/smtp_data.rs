//! The SMTP DATA reader on arbitrary client bytes, split across reads at arbitrary points:
//! no panic, no runaway time, the same outcome however the input is split, and the outcome a
//! plain line-by-line reading of RFC 5321 gives (the reference below). A message read without
//! a problem, dot-stuffed again and terminated, reads back as itself.
//!
//! Input: byte 0 picks the line limit, byte 1 the size limit, byte 2 seeds the read sizes;
//! the rest is what the client sends after 354.
#![no_main]

use deliverypool::smtp_data::{dot_stuff, Content, DataReader, Problem};
use libfuzzer_sys::fuzz_target;

struct Outcome {
    consumed: usize,
    done: bool,
    problem: Option<Problem>,
    message: Option<Vec<u8>>,
}

/// Feeds `data` in reads whose sizes `seed` picks, or in one read without a seed.
fn read(data: &[u8], size_limit: usize, line_limit: usize, mut seed: Option<u32>) -> Outcome {
    let mut reader = DataReader::new(size_limit, line_limit, None);
    let mut consumed = 0;
    let mut at = 0;
    while at < data.len() && !reader.done() {
        // Read sizes from a small LCG: mostly short reads (every split point gets tried), some of
        // a few lines (the reader's run of whole lines then starts and stops mid-read), some long.
        let size = match seed.as_mut() {
            None => data.len(),
            Some(state) => {
                *state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                match *state >> 28 {
                    0 => data.len(),
                    1..=5 => 1 + (*state >> 16) as usize % 97,
                    _ => 1 + (*state >> 16) as usize % 7,
                }
            }
        };
        let end = (at + size).min(data.len());
        let used = reader.feed(&data[at..end]);
        assert!(used <= end - at);
        assert!(used == end - at || reader.done(), "a read is consumed whole unless the data ended in it");
        consumed += used;
        at = end;
    }
    Outcome { consumed, done: reader.done(), problem: reader.problem(), message: reader.take().map(Content::into_vec) }
}

/// What RFC 5321 says, line by line: lines end at CRLF only; the first line that is exactly
/// "." ends the data; a line starting with a dot loses it. Returns (bytes up to and including
/// the terminator, the message, every problem its lines have), or None without a terminator.
fn reference(data: &[u8], size_limit: usize, line_limit: usize) -> Option<(usize, Vec<u8>, Vec<Problem>)> {
    let mut message = Vec::new();
    let mut problems = Vec::new();
    let mut start = 0;
    loop {
        let end = start + data[start..].windows(2).position(|w| w == b"\r\n")?;
        let line = &data[start..end];
        if line == b"." {
            let received = start;
            if received > size_limit {
                problems.insert(0, Problem::TooLarge);
            }
            return Some((end + 2, message, problems));
        }
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            problems.push(Problem::BareLineEnding);
        }
        if line.contains(&0) {
            problems.push(Problem::Nul);
        }
        if line.len() + 2 > line_limit {
            problems.push(Problem::LineTooLong);
        }
        message.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        message.extend_from_slice(b"\r\n");
        start = end + 2;
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 3 {
        return;
    }
    let line_limit = [8, 40, 1001, usize::MAX][input[0] as usize % 4];
    let size_limit = [0, 16, 200, 1 << 20][input[1] as usize % 4];
    let data = &input[3..];
    let split = read(data, size_limit, line_limit, Some(u32::from(input[2])));
    let whole = read(data, size_limit, line_limit, None);
    assert_eq!((split.consumed, split.done, split.problem, &split.message), (whole.consumed, whole.done, whole.problem, &whole.message));

    match reference(data, size_limit, line_limit) {
        None => assert!(!split.done && split.consumed == data.len()),
        Some((end, message, problems)) => {
            assert!(split.done && split.consumed == end, "the data ends after the first lone dot line");
            match split.problem {
                None => {
                    assert!(problems.is_empty(), "refused by the rules: {problems:?}");
                    assert_eq!(split.message.as_deref(), Some(message.as_slice()));
                }
                Some(Problem::TooLarge) => assert_eq!(problems.first(), Some(&Problem::TooLarge)),
                Some(problem) => assert!(problems.contains(&problem) && problems.first() != Some(&Problem::TooLarge), "{problem:?} not in {problems:?}"),
            }
            // Sent on again: dot-stuffed and terminated, the message reads back as itself.
            if let Some(message) = split.message.filter(|m| m.is_empty() || m.ends_with(b"\r\n")) {
                let mut sent = dot_stuff(&message).unwrap_or_else(|| message.clone());
                sent.extend_from_slice(b".\r\n");
                let again = read(&sent, usize::MAX, usize::MAX, Some(u32::from(input[2])));
                assert_eq!(again.message.as_deref(), Some(message.as_slice()));
                assert_eq!(again.consumed, sent.len());
            }
        }
    }
});
