//! Verification of the DKIM-Signature fields a message carries (RFC 6376 §6), against key
//! records the caller looked up (`key_queries` names them; DNS is the caller's). Each signature
//! gets a result in RFC 8601's words and, unless it plainly passed, a reason. Nothing about a
//! message or a record is an error: it is a result.

use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ED25519, RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY};

use super::canon::{self, BodyHasher, Canon};
use super::header::{self, Field};
use super::sign::selected_fields;
use super::tags::{self, Tag};
use super::{Algorithm, DkimResult, VerifyReason, B64};

/// What the caller's lookup of a key record found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookup<'a> {
    /// The name's TXT records (each record's strings joined).
    Records(Vec<&'a [u8]>),
    /// No such name, or no TXT record: there is no key.
    NotFound,
    /// The lookup failed (timeout, SERVFAIL): no answer now.
    TempError,
}

/// One signature's check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `d=` lowercased (empty when the signature has none).
    pub domain: String,
    /// `s=` (empty when none).
    pub selector: String,
    /// `a=` lowercased, as written (at most 32 bytes; empty when none).
    pub algorithm: String,
    pub result: DkimResult,
    pub reason: Option<VerifyReason>,
}

fn text(value: Option<&[u8]>, limit: usize) -> String {
    let value = value.unwrap_or_default();
    String::from_utf8_lossy(&value[..value.len().min(limit)]).to_ascii_lowercase()
}

/// A signature read from its field.
struct Parsed<'a> {
    algorithm: Algorithm,
    header_canon: Canon,
    body_canon: Canon,
    domain: String,
    headers: Vec<&'a [u8]>,
    body_hash: Vec<u8>,
    signature: Vec<u8>,
    length: Option<u64>,
    identity_domain: Option<String>,
    /// The field without the value of `b=`.
    unsigned_field: Vec<u8>,
}

fn number(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn canonicalization(value: Option<&[u8]>) -> Option<(Canon, Canon)> {
    let value = value.unwrap_or(b"simple/simple");
    let text = std::str::from_utf8(value).ok()?.to_ascii_lowercase();
    let (header, body) = text.split_once('/').unwrap_or((&text, "simple"));
    Some((Canon::from_name(header)?, Canon::from_name(body)?))
}

/// The tags of a DKIM-Signature field, with the offset of its value in the field.
fn field_tags<'a>(field: &Field<'a>) -> Option<Vec<Tag<'a>>> {
    let colon = memchr::memchr(b':', field.raw)?;
    tags::parse(&field.raw[colon + 1..], colon + 1)
}

fn parse<'a>(field: &Field<'a>, now: u64) -> Result<Parsed<'a>, (DkimResult, VerifyReason)> {
    use DkimResult::{Neutral, Permerror, Policy};
    let syntax = (Neutral, VerifyReason::SignatureSyntax);
    let tags = field_tags(field).ok_or(syntax)?;
    let get = |name: &[u8]| tags::get(&tags, name);
    if get(b"v") != Some(b"1") {
        return Err(if get(b"v").is_none() { syntax } else { (Neutral, VerifyReason::UnsupportedVersion) });
    }
    let algorithm = match get(b"a").map(<[u8]>::to_ascii_lowercase).as_deref() {
        Some(b"rsa-sha256") => Algorithm::RsaSha256,
        Some(b"ed25519-sha256") => Algorithm::Ed25519Sha256,
        Some(b"rsa-sha1") => return Err((Policy, VerifyReason::RsaSha1)),
        Some(_) => return Err((Neutral, VerifyReason::UnsupportedAlgorithm)),
        None => return Err(syntax),
    };
    let (Some(b), Some(bh), Some(d), Some(h), Some(s)) = (get(b"b"), get(b"bh"), get(b"d"), get(b"h"), get(b"s")) else {
        return Err(syntax);
    };
    if d.is_empty() || s.is_empty() {
        return Err(syntax);
    }
    let (header_canon, body_canon) = canonicalization(get(b"c")).ok_or(syntax)?;
    let signature = B64.decode(tags::compact(b)).map_err(|_| syntax)?;
    let body_hash = B64.decode(tags::compact(bh)).map_err(|_| syntax)?;
    let headers: Vec<&[u8]> = h.split(|&b| b == b':').map(<[u8]>::trim_ascii).collect();
    if headers.iter().any(|name| name.is_empty()) {
        return Err(syntax);
    }
    let length = match get(b"l") {
        Some(value) => Some(number(value).ok_or(syntax)?),
        None => None,
    };
    let timestamp = match get(b"t") {
        Some(value) => Some(number(value).ok_or(syntax)?),
        None => None,
    };
    if let Some(value) = get(b"x") {
        let expires = number(value).ok_or(syntax)?;
        if timestamp.is_some_and(|t| expires < t) {
            return Err(syntax);
        }
        if now > expires {
            return Err((Permerror, VerifyReason::Expired));
        }
    }
    let domain = text(Some(d), 253);
    let identity_domain = match get(b"i") {
        Some(identity) => {
            let at = memchr::memrchr(b'@', identity).ok_or(syntax)?;
            let of = text(Some(&identity[at + 1..]), 253);
            if of != domain && !of.ends_with(&format!(".{domain}")) {
                return Err((Permerror, VerifyReason::IdentityMismatch));
            }
            Some(of)
        }
        None => None,
    };
    if !headers.iter().any(|name| name.eq_ignore_ascii_case(b"from")) {
        return Err((Permerror, VerifyReason::FromNotSigned));
    }
    let span = tags.iter().find(|tag| tag.name == b"b").map(|tag| tag.span.clone()).ok_or(syntax)?;
    let mut unsigned_field = Vec::with_capacity(field.raw.len());
    unsigned_field.extend_from_slice(&field.raw[..span.start]);
    unsigned_field.extend_from_slice(&field.raw[span.end..]);
    Ok(Parsed { algorithm, header_canon, body_canon, domain, headers, body_hash, signature, length, identity_domain, unsigned_field })
}

/// A usable public key from a key record.
struct PublicKey {
    algorithm: Algorithm,
    /// RSA: the RSAPublicKey DER; Ed25519: the 32 bytes.
    key: Vec<u8>,
    strict: bool,
}

fn list_has(value: Option<&[u8]>, wanted: &[&[u8]]) -> bool {
    value.map_or(true, |list| list.split(|&b| b == b':').any(|item| wanted.iter().any(|w| item.trim_ascii().eq_ignore_ascii_case(w))))
}

fn parse_key(record: &[u8]) -> Result<PublicKey, VerifyReason> {
    let tags = tags::parse(record, 0).ok_or(VerifyReason::KeySyntax)?;
    let get = |name: &[u8]| tags::get(&tags, name);
    if let Some(version) = get(b"v") {
        if version != b"DKIM1" || tags.first().map(|t| t.name) != Some(b"v") {
            return Err(VerifyReason::KeySyntax);
        }
    }
    if !list_has(get(b"h"), &[b"sha256"]) {
        return Err(VerifyReason::KeyHashNotAllowed);
    }
    if !list_has(get(b"s"), &[b"*", b"email"]) {
        return Err(VerifyReason::KeyNotForEmail);
    }
    let algorithm = match get(b"k").map(<[u8]>::to_ascii_lowercase).as_deref() {
        None | Some(b"rsa") => Algorithm::RsaSha256,
        Some(b"ed25519") => Algorithm::Ed25519Sha256,
        Some(_) => return Err(VerifyReason::KeySyntax),
    };
    let data = tags::compact(get(b"p").ok_or(VerifyReason::KeySyntax)?);
    if data.is_empty() {
        return Err(VerifyReason::KeyRevoked);
    }
    let data = B64.decode(data).map_err(|_| VerifyReason::KeySyntax)?;
    let key = match algorithm {
        Algorithm::RsaSha256 => {
            let rsa = rsa_public_key(&data).ok_or(VerifyReason::KeySyntax)?;
            if modulus_bits(rsa).ok_or(VerifyReason::KeySyntax)? < 1024 {
                return Err(VerifyReason::KeyTooShort);
            }
            rsa.to_vec()
        }
        Algorithm::Ed25519Sha256 if data.len() == 32 => data,
        Algorithm::Ed25519Sha256 => return Err(VerifyReason::KeySyntax),
    };
    let strict = get(b"t").is_some_and(|flags| flags.split(|&b| b == b':').any(|flag| flag.trim_ascii() == b"s"));
    Ok(PublicKey { algorithm, key, strict })
}

/// One DER element: its tag, its content and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 3 || rest.len() < count {
            return None;
        }
        (rest[..count].iter().fold(0usize, |n, &b| (n << 8) | usize::from(b)), &rest[count..])
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The RSAPublicKey in a SubjectPublicKeyInfo (what keys publish), or the record's data when
/// it is a bare RSAPublicKey (some do).
fn rsa_public_key(data: &[u8]) -> Option<&[u8]> {
    let (tag, content, _) = der(data)?;
    if tag != 0x30 {
        return None;
    }
    let (first, inner, rest) = der(content)?;
    if first == 0x02 {
        der(rest)?; // the exponent
        return Some(data);
    }
    let (oid_tag, oid, _) = der(inner)?;
    if first != 0x30 || oid_tag != 0x06 || oid != RSA_ENCRYPTION {
        return None;
    }
    let (bits_tag, bits, _) = der(rest)?;
    match bits.split_first() {
        Some((0, key)) if bits_tag == 0x03 => Some(key),
        _ => None,
    }
}

fn modulus_bits(rsa: &[u8]) -> Option<usize> {
    let (_, content, _) = der(rsa)?;
    let (tag, modulus, _) = der(content)?;
    if tag != 0x02 {
        return None;
    }
    let start = modulus.iter().position(|&b| b != 0)?;
    Some((modulus.len() - start) * 8 - modulus[start].leading_zeros() as usize)
}

fn is_signature(field: &Field<'_>) -> bool {
    field.is(b"dkim-signature")
}

/// The names to look up (`SELECTOR._domainkey.DOMAIN`) for the first `max` signatures that
/// can be read, each once.
pub fn key_queries(message: &[u8], max: usize) -> Vec<String> {
    let header = header::parse(message);
    let mut names: Vec<String> = Vec::new();
    for field in header.fields.iter().filter(|f| is_signature(f)).take(max) {
        let Some(tags) = field_tags(field) else { continue };
        if let (Some(d), Some(s)) = (tags::get(&tags, b"d"), tags::get(&tags, b"s")) {
            if !d.is_empty() && !s.is_empty() {
                let name = format!("{}._domainkey.{}", text(Some(s), 63), text(Some(d), 253));
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// Checks the first `max` signatures of `message` (the others are `policy`,
/// `too-many-signatures`), `lookup` answering for their key records, `now` the time in
/// seconds since the epoch (for `x=`).
pub fn verify<'k>(message: &[u8], lookup: &dyn Fn(&str) -> KeyLookup<'k>, now: u64, max: usize) -> Vec<Verdict> {
    let header = header::parse(message);
    let body = &message[header.body_start..];
    // Body hashes by canonicalisation and length limit, each computed once.
    let mut hashes: BodyHashes = Vec::new();
    let mut verdicts = Vec::new();
    for (n, field) in header.fields.iter().filter(|f| is_signature(f)).enumerate() {
        let tags = field_tags(field);
        let tag = |name: &[u8]| tags.as_ref().and_then(|t| tags::get(t, name));
        let mut verdict =
            Verdict { domain: text(tag(b"d"), 253), selector: text(tag(b"s"), 63), algorithm: text(tag(b"a"), 32), result: DkimResult::Pass, reason: None };
        let outcome = if n >= max {
            Err((DkimResult::Policy, VerifyReason::TooManySignatures))
        } else if header.malformed {
            Err((DkimResult::Permerror, VerifyReason::MalformedMessage))
        } else {
            check(field, &header.fields, body, &mut hashes, lookup, now, &verdict.selector)
        };
        match outcome {
            Ok(reason) => verdict.reason = reason,
            Err((result, reason)) => {
                verdict.result = result;
                verdict.reason = Some(reason);
            }
        }
        verdicts.push(verdict);
    }
    verdicts
}

type BodyHashes = Vec<((Canon, Option<u64>), (Vec<u8>, u64))>;

fn check<'k>(
    field: &Field<'_>,
    fields: &[Field<'_>],
    body: &[u8],
    hashes: &mut BodyHashes,
    lookup: &dyn Fn(&str) -> KeyLookup<'k>,
    now: u64,
    selector: &str,
) -> Result<Option<VerifyReason>, (DkimResult, VerifyReason)> {
    use DkimResult::{Fail, Permerror, Temperror};
    let parsed = parse(field, now)?;
    let key = match lookup(&format!("{selector}._domainkey.{}", parsed.domain)) {
        KeyLookup::TempError => return Err((Temperror, VerifyReason::KeyDnsError)),
        KeyLookup::NotFound => return Err((Permerror, VerifyReason::KeyNotFound)),
        KeyLookup::Records(records) => {
            let mut first_error = VerifyReason::KeyNotFound;
            let mut found = None;
            for (i, record) in records.iter().enumerate() {
                match parse_key(record) {
                    Ok(key) => {
                        found = Some(key);
                        break;
                    }
                    Err(error) if i == 0 => first_error = error,
                    Err(_) => {}
                }
            }
            found.ok_or((Permerror, first_error))?
        }
    };
    if key.algorithm != parsed.algorithm {
        return Err((Permerror, VerifyReason::KeyTypeMismatch));
    }
    if key.strict && parsed.identity_domain.as_ref().is_some_and(|of| *of != parsed.domain) {
        return Err((Permerror, VerifyReason::KeyStrictIdentity));
    }
    let id = (parsed.body_canon, parsed.length);
    let (body_hash, body_length) = match hashes.iter().find(|(k, _)| *k == id) {
        Some((_, found)) => found.clone(),
        None => {
            let mut hasher = BodyHasher::new(parsed.body_canon, parsed.length);
            hasher.update(body);
            let (digest, length) = hasher.finish();
            let found = (digest.as_ref().to_vec(), length);
            hashes.push((id, found.clone()));
            found
        }
    };
    if body_hash != parsed.body_hash {
        return Err((Fail, VerifyReason::BodyHashMismatch));
    }
    let mut data = Vec::with_capacity(2048);
    selected_fields(parsed.header_canon, parsed.headers.iter().copied(), fields, &mut data);
    canon::header_field(parsed.header_canon, &parsed.unsigned_field, &mut data);
    data.truncate(data.len() - 2);
    let verified = match key.algorithm {
        Algorithm::RsaSha256 => UnparsedPublicKey::new(&RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, &key.key).verify(&data, &parsed.signature),
        Algorithm::Ed25519Sha256 => {
            UnparsedPublicKey::new(&ED25519, &key.key).verify(ring::digest::digest(&ring::digest::SHA256, &data).as_ref(), &parsed.signature)
        }
    };
    if verified.is_err() {
        return Err((Fail, VerifyReason::SignatureMismatch));
    }
    Ok(parsed.length.filter(|&l| l < body_length).map(|_| VerifyReason::PartialBody))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::dkim::sign::{sign, SignOptions, SigningKey};
    use ring::signature::KeyPair as _;

    fn ed25519() -> (SigningKey, Vec<u8>) {
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let record = format!("v=DKIM1; k=ed25519; p={}", B64.encode(pair.public_key().as_ref())).into_bytes();
        let options = SignOptions {
            domain: "Example.TEST".into(),
            selector: "sel".into(),
            headers: vec!["Subject".into(), "to".into(), "date".into()],
            oversign: vec![],
            header_canon: Canon::Relaxed,
            body_canon: Canon::Relaxed,
            expire: Some(3600),
        };
        (SigningKey::new(Algorithm::Ed25519Sha256, pkcs8.as_ref(), options).unwrap(), record)
    }

    const MESSAGE: &[u8] = b"From: Alice <alice@example.test>\r\nTo: bob@dest.test\r\nSubject: a long\r\n  folded  subject\r\n\r\nHello  there \r\n\r\n\r\n";

    fn signed(key: &SigningKey, message: &[u8]) -> Vec<u8> {
        let signatures = sign(message, &[key], 1_700_000_000).unwrap();
        let mut out = signatures[0].field.clone();
        out.extend_from_slice(message);
        out
    }

    fn check_with(message: &[u8], record: &[u8], now: u64) -> Vec<Verdict> {
        let lookup = |name: &str| {
            assert_eq!(name, "sel._domainkey.example.test");
            KeyLookup::Records(vec![record])
        };
        verify(message, &lookup, now, 8)
    }

    #[test]
    fn signed_then_verified_and_every_change_fails() {
        let (key, record) = ed25519();
        let message = signed(&key, MESSAGE);
        let text = String::from_utf8_lossy(&message);
        assert!(text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.test; s=sel;\r\n\tt=1700000000; x=1700003600; h=from:from:subject:to;"), "{text}");
        assert_eq!(key_queries(&message, 8), ["sel._domainkey.example.test"]);
        let [verdict] = check_with(&message, &record, 1_700_000_001).try_into().unwrap();
        assert_eq!((verdict.result, verdict.reason, verdict.domain.as_str(), verdict.algorithm.as_str()), (DkimResult::Pass, None, "example.test", "ed25519-sha256"));
        // Relaxed: white space and trailing empty lines do not count, the body's words do.
        let respaced = String::from_utf8(message.clone()).unwrap().replace("Hello  there", "Hello there\t").into_bytes();
        assert_eq!(check_with(&respaced, &record, 1_700_000_001)[0].result, DkimResult::Pass);
        let body = String::from_utf8(message.clone()).unwrap().replace("Hello", "Jello").into_bytes();
        assert_eq!(check_with(&body, &record, 1_700_000_001)[0].reason, Some(VerifyReason::BodyHashMismatch));
        let subject = String::from_utf8(message.clone()).unwrap().replace("folded", "FOLDED").into_bytes();
        assert_eq!(check_with(&subject, &record, 1_700_000_001)[0].reason, Some(VerifyReason::SignatureMismatch));
        // A second From (over-signed) breaks it, and so does a Subject added below the signed one
        // (instances are taken from the bottom up).
        for added in [&b"From: mallory@evil.test\r\n"[..], b"Subject: spoofed\r\n"] {
            let mut more = message.clone();
            let at = more.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
            more.splice(at..at, added.iter().copied());
            assert_eq!(check_with(&more, &record, 1_700_000_001)[0].result, DkimResult::Fail);
        }
        assert_eq!(check_with(&message, &record, 1_700_003_601)[0].reason, Some(VerifyReason::Expired));
    }

    #[test]
    fn key_lookups_and_records() {
        let (key, record) = ed25519();
        let message = signed(&key, MESSAGE);
        let at = |lookup: KeyLookup<'static>| {
            let lookup = move |_: &str| lookup.clone();
            let [verdict] = verify(&message, &lookup, 1_700_000_001, 8).try_into().unwrap();
            (verdict.result, verdict.reason)
        };
        assert_eq!(at(KeyLookup::TempError), (DkimResult::Temperror, Some(VerifyReason::KeyDnsError)));
        assert_eq!(at(KeyLookup::NotFound), (DkimResult::Permerror, Some(VerifyReason::KeyNotFound)));
        assert_eq!(at(KeyLookup::Records(vec![b"v=DKIM1; k=ed25519; p="])), (DkimResult::Permerror, Some(VerifyReason::KeyRevoked)));
        assert_eq!(at(KeyLookup::Records(vec![b"v=DKIM1; p=AAAA"])), (DkimResult::Permerror, Some(VerifyReason::KeySyntax)));
        assert_eq!(at(KeyLookup::Records(vec![b"v=DKIM1; k=ed25519; s=tlsrpt; p=AAAA"])), (DkimResult::Permerror, Some(VerifyReason::KeyNotForEmail)));
        assert_eq!(at(KeyLookup::Records(vec![b"v=DKIM1; k=ed25519; h=sha1; p=AAAA"])), (DkimResult::Permerror, Some(VerifyReason::KeyHashNotAllowed)));
        assert_eq!(at(KeyLookup::Records(vec![b"not a record", b"k=ed25519; p=AAAA"])), (DkimResult::Permerror, Some(VerifyReason::KeySyntax)));
        let leaked: &'static [u8] = Box::leak(record.clone().into_boxed_slice());
        assert_eq!(at(KeyLookup::Records(vec![b"garbage", leaked])), (DkimResult::Pass, None));
    }

    #[test]
    fn signatures_that_cannot_be_read() {
        let lookup = |_: &str| KeyLookup::NotFound;
        let cases: [(&[u8], DkimResult, VerifyReason); 7] = [
            (b"DKIM-Signature: v=1; a=rsa-sha1; d=a.test; s=s; h=from; bh=AA==; b=AA==\r\nFrom: x\r\n\r\n", DkimResult::Policy, VerifyReason::RsaSha1),
            (b"DKIM-Signature: v=2; a=rsa-sha256; d=a.test; s=s; h=from; bh=AA==; b=AA==\r\nFrom: x\r\n\r\n", DkimResult::Neutral, VerifyReason::UnsupportedVersion),
            (b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=s; h=to; bh=AA==; b=AA==\r\nFrom: x\r\n\r\n", DkimResult::Permerror, VerifyReason::FromNotSigned),
            (b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=s; h=from; bh=AA==\r\nFrom: x\r\n\r\n", DkimResult::Neutral, VerifyReason::SignatureSyntax),
            (b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; i=@b.test; s=s; h=from; bh=AA==; b=AA==\r\nFrom: x\r\n\r\n", DkimResult::Permerror, VerifyReason::IdentityMismatch),
            (b"DKIM-Signature: v=1; a=hmac; d=a.test; s=s; h=from; bh=AA==; b=AA==\r\nFrom: x\r\n\r\n", DkimResult::Neutral, VerifyReason::UnsupportedAlgorithm),
            (b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=s; h=from; bh=AA==; b=AA==\r\nnot a field\r\n\r\n", DkimResult::Permerror, VerifyReason::MalformedMessage),
        ];
        for (message, result, reason) in cases {
            let [verdict] = verify(message, &lookup, 0, 8).try_into().unwrap();
            assert_eq!((verdict.result, verdict.reason), (result, Some(reason)), "{}", String::from_utf8_lossy(message));
        }
        let many = b"DKIM-Signature: v=1\r\nDKIM-Signature: v=1\r\nFrom: x\r\n\r\n";
        let verdicts = verify(many, &lookup, 0, 1);
        assert_eq!(verdicts[1].reason, Some(VerifyReason::TooManySignatures));
    }

    #[test]
    fn rsa_public_keys_in_both_encodings() {
        // A 1024-bit modulus (leading byte 0xc0) and exponent 65537, as RSAPublicKey and SPKI.
        let mut modulus = vec![0x00, 0xc0];
        modulus.extend(std::iter::repeat(0x11).take(127));
        let mut rsa = vec![0x30, 0x81, (3 + modulus.len() + 5) as u8, 0x02, 0x81, modulus.len() as u8];
        rsa.extend(&modulus);
        rsa.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        assert_eq!(rsa_public_key(&rsa), Some(&rsa[..]));
        assert_eq!(modulus_bits(&rsa), Some(1024));
        let mut spki = vec![0x30, 0x81, (15 + 4 + rsa.len()) as u8, 0x30, 0x0d, 0x06, 0x09];
        spki.extend(RSA_ENCRYPTION);
        spki.extend([0x05, 0x00, 0x03, 0x81, (rsa.len() + 1) as u8, 0x00]);
        spki.extend(&rsa);
        assert_eq!(rsa_public_key(&spki), Some(&rsa[..]));
        assert_eq!(rsa_public_key(&spki[..spki.len() - 1]), None);
    }

    #[test]
    fn unsigned_messages() {
        let (key, _) = ed25519();
        assert_eq!(sign(b"To: x\r\n\r\n", &[&key], 0).unwrap_err(), crate::auth::dkim::SignProblem::NoFrom);
        assert_eq!(sign(b"From: x\r\nFrom: y\r\n\r\n", &[&key], 0).unwrap_err(), crate::auth::dkim::SignProblem::MultipleFrom);
        assert_eq!(sign(b"From x\r\n\r\n", &[&key], 0).unwrap_err(), crate::auth::dkim::SignProblem::MalformedHeader);
        // LF messages get a signature field with LF.
        let lf = sign(b"From: x\n\nbody", &[&key], 0).unwrap();
        assert!(!lf[0].field.contains(&b'\r') && lf[0].field.ends_with(b"\n"));
    }
}
