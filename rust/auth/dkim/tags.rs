//! Tag lists (RFC 6376 §3.2): `name=value; name=value;`, white space and folding allowed
//! around names, `=`, values and semicolons. The DKIM-Signature field's value and key records.

use std::ops::Range;

/// One tag: its name, its value without surrounding white space, and where the value lies in
/// the input with that white space (what a verifier deletes from `b=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub span: Range<usize>,
}

const fn is_fws(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim(bytes: &[u8]) -> (usize, usize) {
    let start = bytes.iter().position(|&b| !is_fws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|&b| !is_fws(b)).map_or(start, |p| p + 1);
    (start, end.max(start))
}

/// A tag list's tags, in order, with `offset` added to every span; None when the list is not
/// one: a part without `=`, a bad name, a name given twice, or a value with bytes outside
/// printable ASCII and white space.
pub fn parse(input: &[u8], offset: usize) -> Option<Vec<Tag<'_>>> {
    let mut tags: Vec<Tag<'_>> = Vec::new();
    let mut start = 0;
    loop {
        let end = memchr::memchr(b';', &input[start..]).map_or(input.len(), |p| start + p);
        let part = &input[start..end];
        let (from, to) = trim(part);
        if from < to {
            let eq = memchr::memchr(b'=', part)?;
            let (name_from, name_to) = trim(&part[..eq]);
            let name = &part[name_from..name_to];
            let valid_name = name.first().is_some_and(u8::is_ascii_alphabetic) && name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_name || tags.iter().any(|tag| tag.name == name) {
                return None;
            }
            let raw = &part[eq + 1..];
            let (value_from, value_to) = trim(raw);
            let value = &raw[value_from..value_to];
            if !value.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b';' || is_fws(b)) {
                return None;
            }
            let at = offset + start + eq + 1;
            tags.push(Tag { name, value, span: at..at + raw.len() });
        }
        if end >= input.len() {
            return Some(tags);
        }
        start = end + 1;
    }
}

/// The value of `name`, if the list has it.
pub fn get<'a>(tags: &[Tag<'a>], name: &[u8]) -> Option<&'a [u8]> {
    tags.iter().find(|tag| tag.name == name).map(|tag| tag.value)
}

/// A value with every white space byte removed (base64 values may be folded anywhere).
pub fn compact(value: &[u8]) -> Vec<u8> {
    value.iter().copied().filter(|&b| !is_fws(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_with_folding_and_a_final_semicolon() {
        let input = b"v=1; a=rsa-sha256;\r\n\td=example.com ; b= ab\r\n cd ;";
        let tags = parse(input, 100).unwrap();
        let names: Vec<&[u8]> = tags.iter().map(|t| t.name).collect();
        assert_eq!(names, [&b"v"[..], b"a", b"d", b"b"]);
        assert_eq!(get(&tags, b"d"), Some(&b"example.com"[..]));
        assert_eq!(compact(get(&tags, b"b").unwrap()), b"abcd");
        let b = &tags[3];
        assert_eq!(&input[b.span.start - 100..b.span.end - 100], b" ab\r\n cd ");
    }

    #[test]
    fn bad_lists() {
        for input in [&b"v=1; v=1"[..], b"novalue", b"1a=x", b"a=\x01", b"a=\xc3\xa9"] {
            assert_eq!(parse(input, 0), None, "{:?}", String::from_utf8_lossy(input));
        }
        assert_eq!(parse(b"", 0), Some(vec![]));
        assert_eq!(parse(b"a=;", 0).unwrap()[0].value, b"");
    }
}
