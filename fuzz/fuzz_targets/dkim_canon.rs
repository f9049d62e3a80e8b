//! The DKIM signer's header reading and canonicalisation on arbitrary messages: no panic; the
//! fields are spans of the message and the body starts after them; each relaxed field is one
//! line (CRLF only at its end), its name lowercased, no white space runs, none around the colon
//! or at the end, and canonicalising it again changes nothing; each simple field is the field
//! with its line endings made CRLF. The streamed body hash equals the hash of the plainly built
//! canonical body, however the body is split. A message the signer signs (Ed25519, both
//! canonicalisations) verifies with its own key.
//!
//! Input: byte 0 picks the body split and the canonicalisations; the rest is the message.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use deliverypool::auth::dkim::canon::{header_field, reference_body, BodyHasher, Canon};
use deliverypool::auth::dkim::header::parse;
use deliverypool::auth::dkim::{sign, verify, Algorithm, DkimResult, KeyLookup, SignOptions, SigningKey};
use libfuzzer_sys::fuzz_target;
use ring::signature::KeyPair as _;

fn keys() -> &'static [(SigningKey, Vec<u8>); 2] {
    static KEYS: OnceLock<[(SigningKey, Vec<u8>); 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let public = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap().public_key().as_ref().to_vec();
        let record = format!("v=DKIM1; k=ed25519; p={}", base64::engine::general_purpose::STANDARD.encode(public)).into_bytes();
        [Canon::Relaxed, Canon::Simple].map(|canon| {
            let options = SignOptions {
                domain: "fuzz.test".into(),
                selector: canon.as_str().into(),
                headers: vec!["subject".into(), "to".into(), "x-a".into()],
                oversign: vec!["subject".into()],
                header_canon: canon,
                body_canon: canon,
                expire: None,
            };
            (SigningKey::new(Algorithm::Ed25519Sha256, pkcs8.as_ref(), options).unwrap(), record.clone())
        })
    })
}

const fn is_wsp(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

fn check_relaxed(line: &[u8]) {
    assert!(line.ends_with(b"\r\n"));
    let content = &line[..line.len() - 2];
    assert!(!content.contains(&b'\n'));
    assert!(!content.windows(2).any(|w| w == b"\r\n"));
    let colon = content.iter().position(|&b| b == b':').unwrap();
    assert!(!content[..colon].iter().any(u8::is_ascii_uppercase));
    assert!(content.get(colon + 1).is_none_or(|&b| !is_wsp(b)));
    assert!(content.last().is_none_or(|&b| !is_wsp(b) || content.len() == colon + 1));
    assert!(!content.windows(2).any(|w| is_wsp(w[0]) && is_wsp(w[1])));
    assert!(!content.contains(&b'\t'));
    let mut again = Vec::new();
    header_field(Canon::Relaxed, content, &mut again);
    assert_eq!(again, line, "relaxed canonicalisation is idempotent");
}

fn simple_expected(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &byte) in raw.iter().enumerate() {
        if byte == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(byte);
    }
    out.extend_from_slice(b"\r\n");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, message)) = data.split_first() else { return };
    let header = parse(message);
    assert!(header.body_start <= message.len());
    let mut end = 0;
    for field in &header.fields {
        let offset = field.raw.as_ptr() as usize - message.as_ptr() as usize;
        assert!(offset >= end && offset + field.raw.len() <= header.body_start.max(offset + field.raw.len()));
        end = offset + field.raw.len();
        assert!(field.raw.starts_with(field.name));
        let mut relaxed = Vec::new();
        header_field(Canon::Relaxed, field.raw, &mut relaxed);
        check_relaxed(&relaxed);
        let mut simple = Vec::new();
        header_field(Canon::Simple, field.raw, &mut simple);
        assert_eq!(simple, simple_expected(field.raw));
    }

    let body = &message[header.body_start..];
    let canon = if control & 1 == 0 { Canon::Relaxed } else { Canon::Simple };
    let expected = reference_body(canon, body);
    let split = usize::from(control >> 1).min(body.len());
    let mut hasher = BodyHasher::new(canon, None);
    hasher.update(&body[..split]);
    hasher.update(&body[split..]);
    let (digest, length) = hasher.finish();
    assert_eq!(digest.as_ref(), ring::digest::digest(&ring::digest::SHA256, &expected).as_ref());
    assert_eq!(length, expected.len() as u64);

    let [relaxed, simple] = keys();
    let signer = if control & 1 == 0 { relaxed } else { simple };
    if let Ok(signatures) = sign(message, &[&signer.0], 1_700_000_000) {
        let mut signed = signatures[0].field.clone();
        signed.extend_from_slice(message);
        if !signed.ends_with(b"\n") {
            signed.extend_from_slice(b"\r\n"); // as SMTP carries it
        }
        let record = signer.1.as_slice();
        let lookup = |_: &str| KeyLookup::Records(vec![record]);
        let verdicts = verify(&signed, &lookup, 1_700_000_000, 8);
        assert_eq!(verdicts[0].result, DkimResult::Pass, "{:?}", verdicts[0]);
    }
});
