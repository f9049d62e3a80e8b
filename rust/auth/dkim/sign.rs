//! Signing: the key pairs parsed once, then `sign` per message (one body-hash pass per body
//! canonicalisation, whatever the number of keys: dual RSA and Ed25519 signing reads the body
//! once).

use std::fmt;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};

use super::canon::{self, BodyHasher, Canon};
use super::header::{self, Field};
use super::{Algorithm, SignProblem, B64};

/// What a key signs and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignOptions {
    /// `d=`, in ASCII (A-labels).
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// The fields to sign, lowercased: each instance present is signed.
    pub headers: Vec<String>,
    /// Fields signed once more than present, so that none can be added (From always is).
    pub oversign: Vec<String>,
    pub header_canon: Canon,
    pub body_canon: Canon,
    /// `x=` this many seconds after `t=`; None: no `x=`.
    pub expire: Option<u64>,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A private key and what it signs. Thread-safe.
pub struct SigningKey {
    pair: Pair,
    options: SignOptions,
}

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The DER is not a key of the algorithm (ring's words).
    Rejected { algorithm: Algorithm, why: String },
    /// A domain or selector that is not letters, digits, `.`, `-` and `_`.
    BadName(String),
    /// A header name to sign that is not a field name.
    BadHeader(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Rejected { algorithm, why } => write!(f, "not a usable {algorithm} private key (PKCS#8 DER): {why}"),
            KeyError::BadName(name) => write!(f, "{name:?} is not a domain or selector (letters, digits, '.', '-', '_')"),
            KeyError::BadHeader(name) => write!(f, "{name:?} is not a header field name"),
        }
    }
}

impl std::error::Error for KeyError {}

fn valid_label(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl SigningKey {
    /// A key from its PKCS#8 DER (RSA: 2048 to 4096 bits, as ring signs).
    pub fn new(algorithm: Algorithm, der: &[u8], mut options: SignOptions) -> Result<SigningKey, KeyError> {
        let pair = match algorithm {
            Algorithm::RsaSha256 => RsaKeyPair::from_pkcs8(der).map(Pair::Rsa),
            Algorithm::Ed25519Sha256 => Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map(Pair::Ed25519),
        }
        .map_err(|e| KeyError::Rejected { algorithm, why: e.to_string() })?;
        for name in [&options.domain, &options.selector] {
            if !valid_label(name) {
                return Err(KeyError::BadName(name.clone()));
            }
        }
        for name in options.headers.iter_mut().chain(options.oversign.iter_mut()) {
            if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
                return Err(KeyError::BadHeader(name.clone()));
            }
            name.make_ascii_lowercase();
        }
        // From is always signed, and once more than present (RFC 6376 §8.15).
        for list in [&mut options.headers, &mut options.oversign] {
            if !list.iter().any(|name| name == "from") {
                list.insert(0, "from".to_owned());
            }
        }
        let mut seen = Vec::new();
        options.headers.retain(|name| if seen.contains(name) { false } else { seen.push(name.clone()); true });
        options.domain.make_ascii_lowercase();
        Ok(SigningKey { pair, options })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.pair {
            Pair::Rsa(_) => Algorithm::RsaSha256,
            Pair::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }

    /// The key's size in bits (Ed25519: 256).
    pub fn bits(&self) -> usize {
        match &self.pair {
            Pair::Rsa(pair) => pair.public().modulus_len() * 8,
            Pair::Ed25519(_) => 256,
        }
    }

    pub fn options(&self) -> &SignOptions {
        &self.options
    }
}

/// One signature made: the DKIM-Signature field to put in front of the message (with its line
/// ending, the message's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub field: Vec<u8>,
}

/// Signs `message` with every key, `now` the `t=` (seconds since the epoch). A message the
/// signer must not sign (no From, several, a malformed header) is a `SignProblem`; nothing
/// about its content is an error otherwise.
pub fn sign(message: &[u8], keys: &[&SigningKey], now: u64) -> Result<Vec<Signature>, SignProblem> {
    let header = header::parse(message);
    if header.malformed {
        return Err(SignProblem::MalformedHeader);
    }
    match header.fields.iter().filter(|f| f.is(b"from")).count() {
        0 => return Err(SignProblem::NoFrom),
        1 => {}
        _ => return Err(SignProblem::MultipleFrom),
    }
    let body = &message[header.body_start..];
    // One pass over the body per canonicalisation the keys use.
    let mut hashes: Vec<(Canon, String)> = Vec::with_capacity(2);
    for key in keys {
        let canon = key.options.body_canon;
        if !hashes.iter().any(|(c, _)| *c == canon) {
            let mut hasher = BodyHasher::new(canon, None);
            hasher.update(body);
            hashes.push((canon, B64.encode(hasher.finish().0)));
        }
    }
    let newline: &[u8] = if header.crlf { b"\r\n" } else { b"\n" };
    let rng = SystemRandom::new();
    let mut signatures = Vec::with_capacity(keys.len());
    for key in keys {
        let body_hash = hashes.iter().find(|(c, _)| *c == key.options.body_canon).map_or("", |(_, h)| h.as_str());
        signatures.push(sign_one(key, &header.fields, body_hash, newline, now, &rng)?);
    }
    Ok(signatures)
}

/// The names of `h=`: each configured field once per instance, the over-signed ones once more.
fn signed_names<'k>(options: &'k SignOptions, fields: &[Field<'_>]) -> Vec<&'k str> {
    let mut names = Vec::new();
    for name in &options.headers {
        let present = fields.iter().filter(|f| f.is(name.as_bytes())).count();
        let extra = usize::from(options.oversign.contains(name));
        names.extend(std::iter::repeat(name.as_str()).take(present + extra));
    }
    names
}

/// The canonical fields `names` select, each name taking its instances from the bottom up
/// (RFC 6376 §5.4.2); a name with no instance left adds nothing.
pub(crate) fn selected_fields<'n>(canon: Canon, names: impl Iterator<Item = &'n [u8]>, fields: &[Field<'_>], out: &mut Vec<u8>) {
    let mut used: Vec<(&[u8], usize)> = Vec::new();
    for name in names {
        let skip = match used.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, count)) => {
                *count += 1;
                *count - 1
            }
            None => {
                used.push((name, 1));
                0
            }
        };
        if let Some(field) = fields.iter().rev().filter(|f| f.is(name)).nth(skip) {
            canon::header_field(canon, field.raw, out);
        }
    }
}

fn sign_one(key: &SigningKey, fields: &[Field<'_>], body_hash: &str, newline: &[u8], now: u64, rng: &SystemRandom) -> Result<Signature, SignProblem> {
    let options = &key.options;
    let names = signed_names(options, fields);
    let mut field: Vec<u8> = Vec::with_capacity(512);
    field.extend_from_slice(b"DKIM-Signature: v=1; a=");
    field.extend_from_slice(key.algorithm().as_str().as_bytes());
    field.extend_from_slice(format!("; c={}/{}; d={}; s={};", options.header_canon, options.body_canon, options.domain, options.selector).as_bytes());
    field.extend_from_slice(newline);
    field.extend_from_slice(format!("\tt={now};").as_bytes());
    if let Some(expire) = options.expire {
        field.extend_from_slice(format!(" x={};", now.saturating_add(expire)).as_bytes());
    }
    field.extend_from_slice(b" h=");
    let mut line = 12;
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            field.push(b':');
            line += 1;
        }
        if line + name.len() > 76 {
            field.extend_from_slice(newline);
            field.push(b'\t');
            line = 1;
        }
        field.extend_from_slice(name.as_bytes());
        line += name.len();
    }
    field.push(b';');
    field.extend_from_slice(newline);
    field.extend_from_slice(format!("\tbh={body_hash};").as_bytes());
    field.extend_from_slice(newline);
    field.extend_from_slice(b"\tb=");

    let mut data = Vec::with_capacity(2048);
    selected_fields(options.header_canon, names.iter().map(|n| n.as_bytes()), fields, &mut data);
    canon::header_field(options.header_canon, &field, &mut data);
    data.truncate(data.len() - 2); // the signature field is hashed without its CRLF
    let signature = match &key.pair {
        Pair::Rsa(pair) => {
            let mut out = vec![0; pair.public().modulus_len()];
            pair.sign(&RSA_PKCS1_SHA256, rng, &data, &mut out).map_err(|_| SignProblem::CryptoFailure)?;
            out
        }
        Pair::Ed25519(pair) => pair.sign(ring::digest::digest(&ring::digest::SHA256, &data).as_ref()).as_ref().to_vec(),
    };
    let encoded = B64.encode(signature);
    for (i, chunk) in encoded.as_bytes().chunks(72).enumerate() {
        if i > 0 {
            field.extend_from_slice(newline);
            field.push(b'\t');
        }
        field.extend_from_slice(chunk);
    }
    field.extend_from_slice(newline);
    Ok(Signature { field })
}
