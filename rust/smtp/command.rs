//! The parts of an SMTP command line the server reads: the keyword of MAIL and RCPT, the path
//! in angle brackets, the ESMTP parameters, and xtext (RFC 3461 §4).
//!
//! Addresses are returned as the bytes the client sent, never decoded or rewritten (no lossy
//! UTF-8, no dropped CR, no unquoting): whether an address is usable is decided by the relay's
//! one address parser (`deliverypool.mail.address.parse_mailbox`), which names the problem.

/// `arg` without its leading `keyword` (ASCII case-insensitive, e.g. `FROM:`) and the white
/// space after it; None when it does not start with the keyword.
pub fn strip_keyword<'a>(arg: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let head = arg.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword).then(|| trim_start(&arg[keyword.len()..]))
}

pub fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    &bytes[start..]
}

pub fn trim(bytes: &[u8]) -> &[u8] {
    let bytes = trim_start(bytes);
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |p| p + 1);
    &bytes[..end]
}

/// A path that cannot be read: no closing bracket, a source route without its colon, or
/// something glued to the closing bracket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Reads a reverse- or forward-path: `<address>` (the address may hold quoted strings, in
/// which `>` and white space are text), `<@a,@b:address>` (the source route dropped, RFC 5321
/// §4.1.1.3), `<>` (empty), or, as lenient servers take it, a bare address up to the first
/// white space. Returns the address and the rest of the line (the parameters).
pub fn path(arg: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let Some(inner) = arg.strip_prefix(b"<") else {
        let end = arg.iter().position(u8::is_ascii_whitespace).unwrap_or(arg.len());
        if end == 0 || arg[..end].contains(&b'>') {
            return Err(Malformed);
        }
        return Ok((&arg[..end], trim_start(&arg[end..])));
    };
    let mut quoted = false;
    let mut escaped = false;
    let mut close = None;
    for (i, &byte) in inner.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted {
            match byte {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else if byte == b'"' {
            quoted = true;
        } else if byte == b'>' {
            close = Some(i);
            break;
        } else if byte == b'<' {
            return Err(Malformed);
        }
    }
    let close = close.ok_or(Malformed)?;
    let mut address = &inner[..close];
    let rest = &inner[close + 1..];
    if !rest.is_empty() && !rest[0].is_ascii_whitespace() {
        return Err(Malformed);
    }
    if address.first() == Some(&b'@') {
        let colon = address.iter().position(|&b| b == b':').ok_or(Malformed)?;
        address = &address[colon + 1..];
        if address.is_empty() {
            return Err(Malformed);
        }
    }
    Ok((address, trim_start(rest)))
}

/// One ESMTP parameter: its keyword upper-cased, its value as sent (None for a bare keyword).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter<'a> {
    pub keyword: Vec<u8>,
    pub value: Option<&'a [u8]>,
}

/// The parameters after a path, separated by white space: `KEYWORD` or `KEYWORD=value`. Err
/// for an empty keyword, a keyword that is not letters, digits and hyphens, or an empty value.
pub fn parameters(text: &[u8]) -> Result<Vec<Parameter<'_>>, Malformed> {
    let mut out = Vec::new();
    for word in text.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()) {
        let (keyword, value) = match word.iter().position(|&b| b == b'=') {
            Some(eq) => (&word[..eq], Some(&word[eq + 1..])),
            None => (word, None),
        };
        if keyword.is_empty() || !keyword.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') || value == Some(b"") {
            return Err(Malformed);
        }
        out.push(Parameter { keyword: keyword.to_ascii_uppercase(), value });
    }
    Ok(out)
}

/// True for xtext (RFC 3461 §4): printable ASCII but `+` and `=`, and `+XX` with two
/// upper-case hex digits.
pub fn is_xtext(value: &[u8]) -> bool {
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'+' => {
                let hex = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
                if !(hex(value.get(i + 1)) && hex(value.get(i + 2))) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            33..=126 => i += 1,
            _ => return false,
        }
    }
    true
}

/// xtext decoded (`+XX` to the byte); the input must be xtext.
pub fn xtext_decode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'+' {
            let digit = |b: u8| if b.is_ascii_digit() { b - b'0' } else { b - b'A' + 10 };
            if let (Some(&h), Some(&l)) = (value.get(i + 1), value.get(i + 2)) {
                out.push(digit(h) << 4 | digit(l));
                i += 3;
                continue;
            }
        }
        out.push(value[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(path(b"<a@b.test>"), Ok((&b"a@b.test"[..], &b""[..])));
        assert_eq!(path(b"<a@b.test> SIZE=10 BODY=8BITMIME"), Ok((&b"a@b.test"[..], &b"SIZE=10 BODY=8BITMIME"[..])));
        assert_eq!(path(b"<>"), Ok((&b""[..], &b""[..])));
        assert_eq!(path(b"<@relay.test,@r2.test:a@b.test>"), Ok((&b"a@b.test"[..], &b""[..])));
        assert_eq!(path(b"<\"a > b\"@c.test> X"), Ok((&b"\"a > b\"@c.test"[..], &b"X"[..])));
        assert_eq!(path(b"<\"a\\\"> b\"@c.test>"), Ok((&b"\"a\\\"> b\"@c.test"[..], &b""[..])));
        assert_eq!(path(b"a@b.test SIZE=1"), Ok((&b"a@b.test"[..], &b"SIZE=1"[..])));
        assert_eq!(path(b"<a\xff\r@b>"), Ok((&b"a\xff\r@b"[..], &b""[..])));
        for bad in [&b"<a@b"[..], b"<a@b>x", b"<@relay:>", b"<@relay>", b"", b"<a<b>", b"a>b"] {
            assert_eq!(path(bad), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn keywords_and_parameters() {
        assert_eq!(strip_keyword(b"from: <a@b>", b"FROM:"), Some(&b"<a@b>"[..]));
        assert_eq!(strip_keyword(b"FRO", b"FROM:"), None);
        let params = parameters(b"size=10  SMTPUTF8\tenvid=a+2Bb").unwrap();
        assert_eq!(params.len(), 3);
        assert_eq!((params[0].keyword.as_slice(), params[0].value), (&b"SIZE"[..], Some(&b"10"[..])));
        assert_eq!((params[1].keyword.as_slice(), params[1].value), (&b"SMTPUTF8"[..], None));
        assert_eq!(params[2].value, Some(&b"a+2Bb"[..]));
        for bad in [&b"=x"[..], b"SIZE=", b"X\xff=1", b"A_B"] {
            assert_eq!(parameters(bad), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn xtext() {
        assert!(is_xtext(b"rfc822;a+2Bb@c.test"));
        assert!(!is_xtext(b"a+2b"));
        assert!(!is_xtext(b"a=b"));
        assert!(!is_xtext(b"a b"));
        assert!(!is_xtext(b"a+4"));
        assert_eq!(xtext_decode(b"a+2Bb+3D"), b"a+b=");
    }
}
