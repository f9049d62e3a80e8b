//! The phrase automaton against the slow reference matcher, and the detector on messages whose
//! headers make it read the body. Input: phrases (one a line, at most 16, up to 32 bytes each)
//! up to the first NUL byte, then the text.
#![no_main]

use deliverypool::dsn::{detect_with, DetectOptions};
use deliverypool::matcher::{found_groups, reference, Matcher};
use deliverypool::scan::index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(0);
    let (head, text) = (&data[..split], &data[(split + 1).min(data.len())..]);
    let lines: Vec<String> = head.split(|&b| b == b'\n').take(16).map(|l| String::from_utf8_lossy(&l[..l.len().min(32)]).into_owned()).collect();
    let phrases: Vec<(&str, u16)> = lines.iter().enumerate().map(|(i, p)| (p.as_str(), (i % 5) as u16)).collect();
    let matcher = Matcher::new(phrases.iter().copied());
    for anchored in [false, true] {
        assert_eq!(found_groups(&matcher, text, anchored), reference(&phrases, text, anchored));
    }
    // A daemon sender leaves the verdict open: the subject and the body are matched.
    let mut message = b"From: MAILER-DAEMON@example.org\nSubject: ".to_vec();
    message.extend_from_slice(&text[..text.len().min(200)]);
    message.extend_from_slice(b"\n\n");
    message.extend_from_slice(text);
    let facts = index(&message, None);
    for disabled_groups in [0, u128::MAX] {
        let detection = detect_with(&facts, &message, None, &DetectOptions { disabled_groups });
        if let Some(dsn) = detection.dsn {
            assert!(dsn.strength >= 1.0 && !dsn.signals.is_empty());
        }
    }
});
