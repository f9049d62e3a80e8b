//! RFC 2047 encoded words in unstructured header text (Subject), and raw 8-bit header text.
//!
//! Decoding serves matching, not display: an unknown charset or a broken word is kept as it
//! stands instead of failing.

use std::borrow::Cow;
use std::sync::LazyLock;

use encoding_rs::{Encoding, ISO_2022_JP, UTF_8, WINDOWS_1252};
use memchr::memmem;

/// Built once: building a finder costs more than searching a typical Subject.
static WORD_START: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"=?"));

/// Decodes header text: encoded words become text in their charset, whitespace between two
/// adjacent encoded words is dropped (RFC 2047 section 6.2), raw bytes are read as UTF-8, or
/// ISO-2022-JP when they carry its escapes, or else Windows-1252.
pub fn decode_header_text(raw: &[u8]) -> Cow<'_, str> {
    if WORD_START.find(raw).is_none() {
        return decode_raw(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut pos = 0;
    let mut last_was_word = false;
    while pos < raw.len() {
        let found = WORD_START.find(&raw[pos..]).map(|i| pos + i);
        let literal_end = found.unwrap_or(raw.len());
        if let Some(start) = found {
            if let Some((decoded, end)) = decode_word(raw, start) {
                let between = &raw[pos..start];
                let only_space = between.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
                if !(last_was_word && only_space) {
                    out.push_str(&decode_raw(between));
                }
                out.push_str(&decoded);
                pos = end;
                last_was_word = true;
                continue;
            }
            // Not a valid encoded word: keep "=?" literally and go on after it.
            out.push_str(&decode_raw(&raw[pos..start + 2]));
            pos = start + 2;
            last_was_word = false;
            continue;
        }
        out.push_str(&decode_raw(&raw[pos..literal_end]));
        pos = literal_end;
        last_was_word = false;
    }
    Cow::Owned(out)
}

const MAX_WORD_BYTES: usize = 1024;

/// `=?charset?enc?text?=` starting at `start`; returns the text and the offset after `?=`.
fn decode_word(raw: &[u8], start: usize) -> Option<(String, usize)> {
    let rest = &raw[start + 2..];
    let q1 = rest.iter().take(64).position(|&b| b == b'?')?;
    let charset = &rest[..q1];
    let encoding = *rest.get(q1 + 1)?;
    if rest.get(q1 + 2) != Some(&b'?') {
        return None;
    }
    let body_start = q1 + 3;
    // An encoded word holds no white space (and RFC 2047 caps it at 75 bytes): looking for its
    // end past a generous window would make text full of "=?" quadratic.
    let window = &rest[body_start..rest.len().min(body_start + MAX_WORD_BYTES)];
    let body_len = memmem::find(window, b"?=")?;
    let body = &rest[body_start..body_start + body_len];
    if body.iter().any(|&b| b == b' ' || b == b'\t' || b == b'\n' || b == b'\r') {
        return None;
    }
    let bytes = match encoding {
        b'B' | b'b' => decode_base64(body)?,
        b'Q' | b'q' => decode_q(body),
        _ => return None,
    };
    // RFC 2231 language suffix: charset*lang.
    let charset = charset.split(|&b| b == b'*').next().unwrap_or(charset);
    let text = match Encoding::for_label(charset) {
        Some(enc) => enc.decode_without_bom_handling(&bytes).0.into_owned(),
        None => decode_raw(&bytes).into_owned(),
    };
    Some((text, start + 2 + body_start + body_len + 2))
}

/// Borrowed when the bytes are already the text (UTF-8 without escapes, the common case).
fn decode_raw(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        if !s.contains('\x1b') {
            return Cow::Borrowed(s);
        }
        return ISO_2022_JP.decode_without_bom_handling(bytes).0;
    }
    let (text, _, had_errors) = UTF_8.decode(bytes);
    if !had_errors {
        return text;
    }
    WINDOWS_1252.decode_without_bom_handling(bytes).0
}

fn decode_q(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'_' => out.push(b' '),
            b'=' if i + 2 < body.len() => {
                match (hex(body[i + 1]), hex(body[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'='),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Lenient base64: stops at padding, skips characters outside the alphabet.
pub fn decode_base64(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &b in body {
        let v = u32::from(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        });
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_b_and_q_words_in_many_charsets() {
        assert_eq!(decode_header_text(b"=?UTF-8?B?44Gr44KD44KT44GT?="), "にゃんこ");
        assert_eq!(decode_header_text(b"=?iso-8859-1?q?Unzustellbar=3A_Test?="), "Unzustellbar: Test");
        assert_eq!(decode_header_text(b"=?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?="), "日本語");
        assert_eq!(decode_header_text(b"=?koi8-r?B?7sXEz9PUwdfMxc7Ozw==?="), "Недоставленно");
    }

    #[test]
    fn whitespace_between_adjacent_words_is_dropped() {
        assert_eq!(decode_header_text(b"=?utf-8?q?a?= =?utf-8?q?b?= c"), "ab c");
        assert_eq!(decode_header_text(b"x =?utf-8?q?a?="), "x a");
    }

    #[test]
    fn broken_words_and_raw_bytes_do_not_fail() {
        assert_eq!(decode_header_text(b"=?utf-8?x?abc?= tail"), "=?utf-8?x?abc?= tail");
        assert_eq!(decode_header_text(b"=?unknown-cs?q?abc?="), "abc");
        assert_eq!(decode_header_text(b"caf\xe9"), "café");
        assert_eq!(decode_header_text("déjà".as_bytes()), "déjà");
        assert_eq!(decode_header_text(b"=?"), "=?");
    }
}
