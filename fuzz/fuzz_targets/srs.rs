//! The SRS parser on arbitrary addresses: `reverse` never panics and refuses what it did not
//! sign; `forward` then `reverse` gives the sender back, and an SRS0 sender becomes SRS1 that
//! reverses to it.
//!
//! Input: byte 0 picks the day and the separator, the rest is the address.
//!
//! Found: an empty local part, and a domain holding '=', were rewritten to SRS0 addresses
//! that reverse() refuses (fixed: forward() refuses them).
#![no_main]

use deliverypool::auth::srs::{is_srs, Srs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else { return };
    let Ok(address) = std::str::from_utf8(rest) else { return };
    let separator = ['=', '+', '-'][usize::from(seed % 3)];
    let Ok(srs) = Srs::new("relay.example", vec![b"key".to_vec(), b"old".to_vec()], 21, 4, separator) else { return };
    let now = u64::from(seed) * 86_400 * 7;
    let _ = srs.reverse(address, now);
    if let Ok(forwarded) = srs.forward(address, now) {
        let host = address.rsplit_once('@').map(|(_, h)| h).unwrap_or_default();
        if forwarded == address {
            assert!(host.eq_ignore_ascii_case("relay.example"));
            return;
        }
        assert!(is_srs(&forwarded));
        let back = srs.reverse(&forwarded, now).expect("what forward() wrote reverses");
        if !is_srs(address) {
            assert_eq!(back, address);
        }
    }
});
