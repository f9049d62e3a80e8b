//! Scanner, DSN detection and policy on arbitrary bytes: no panic, and no runaway time
//! (libFuzzer's -timeout flags an input that takes too long).
#![no_main]

use deliverypool::address::first_address;
use deliverypool::policy::{classify, Envelope, Policy};
use deliverypool::scan::{header_block, scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let facts = scan(data, Some("x-spam-score"));
    assert!(facts.header_length <= data.len());
    let (start, body) = header_block(data);
    assert!(start <= body && body <= data.len() && start == facts.header_start && body - start == facts.header_length);
    first_address(&String::from_utf8_lossy(data));
    let policy = Policy { score_header: Some("x-spam-score".into()), ..Policy::default() };
    for mail_from in [None, Some(""), Some("a@b.example")] {
        let envelope = Envelope { mail_from, ..Envelope::default() };
        let decision = classify(data, &envelope, &policy).expect("no score was given, so classify cannot fail");
        assert_eq!(decision.message_id(data).map(|m| m.into_owned()), facts.message_id);
        decision.header_from(data);
    }
});
