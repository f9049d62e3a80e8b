//! SPF macro strings (RFC 7208 §7): parsing and expansion.
//!
//! A macro string is parsed once, with the record, into literal text, escapes and macros; a
//! syntax error anywhere is a syntax error of the record (a `permerror`). Expansion asks the
//! caller for each letter's value (`%{p}` needs DNS, so the evaluator supplies it).

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// A macro letter (RFC 7208 §7.2). `c`, `r` and `t` are allowed only in explanation text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Letter {
    /// `<sender>`
    S,
    /// local-part of `<sender>`
    L,
    /// domain of `<sender>`
    O,
    /// `<domain>`, the domain being evaluated
    D,
    /// `<ip>`, dotted (IPv4) or in nibbles (IPv6)
    I,
    /// the validated domain name of `<ip>`
    P,
    /// `in-addr` or `ip6`
    V,
    /// the HELO/EHLO domain
    H,
    /// the SMTP client's address, readable (explanation only)
    C,
    /// the receiving host's domain (explanation only)
    R,
    /// the current time in seconds (explanation only)
    T,
}

impl Letter {
    fn parse(c: u8) -> Option<Letter> {
        Some(match c.to_ascii_lowercase() {
            b's' => Letter::S,
            b'l' => Letter::L,
            b'o' => Letter::O,
            b'd' => Letter::D,
            b'i' => Letter::I,
            b'p' => Letter::P,
            b'v' => Letter::V,
            b'h' => Letter::H,
            b'c' => Letter::C,
            b'r' => Letter::R,
            b't' => Letter::T,
            _ => return None,
        })
    }

    pub fn as_char(self) -> char {
        match self {
            Letter::S => 's',
            Letter::L => 'l',
            Letter::O => 'o',
            Letter::D => 'd',
            Letter::I => 'i',
            Letter::P => 'p',
            Letter::V => 'v',
            Letter::H => 'h',
            Letter::C => 'c',
            Letter::R => 'r',
            Letter::T => 't',
        }
    }

    fn explanation_only(self) -> bool {
        matches!(self, Letter::C | Letter::R | Letter::T)
    }
}

/// The delimiters a macro may split on (RFC 7208 §7.1), in bit order.
const DELIMITERS: &[u8; 7] = b".-+,/_=";

/// One `%{...}` expansion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Macro {
    pub letter: Letter,
    /// An uppercase letter: the value is URL-escaped (RFC 7208 §7.3).
    pub escape: bool,
    /// Keep this many right-hand parts (after reversal); None keeps all.
    pub keep: Option<u32>,
    pub reverse: bool,
    /// A bit per member of `DELIMITERS`; 0 means `.` alone.
    pub delimiters: u8,
}

impl Macro {
    fn splits_on(&self, c: char) -> bool {
        let mask = if self.delimiters == 0 { 1 } else { self.delimiters };
        DELIMITERS.iter().enumerate().any(|(i, &d)| mask & (1 << i) != 0 && c == char::from(d))
    }

    /// The value after the transformers: split on the delimiters, reversed, the right-hand
    /// `keep` parts, joined with dots.
    pub fn transform(&self, value: &str, out: &mut String) {
        let mut parts: Vec<&str> = value.split(|c| self.splits_on(c)).collect();
        if self.reverse {
            parts.reverse();
        }
        let skip = match self.keep {
            Some(n) => parts.len().saturating_sub(usize::try_from(n).unwrap_or(usize::MAX)),
            None => 0,
        };
        let start = out.len();
        for (i, part) in parts.iter().skip(skip).enumerate() {
            if i > 0 {
                out.push('.');
            }
            out.push_str(part);
        }
        if self.escape {
            let expanded = out.split_off(start);
            url_escape(&expanded, out);
        }
    }
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn url_escape(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// A piece of a macro string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// `%%`, `%_` or `%-`: what it stands for (`%`, a space, `%20`).
    Escape(&'static str),
    Macro(Macro),
}

/// A parsed macro string.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MacroString {
    pub parts: Vec<Part>,
}

/// Why a macro string is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MacroError {
    /// A character outside the visible ASCII range (spaces allowed only in explanations).
    BadCharacter(char),
    /// A `%` not followed by `{`, `%`, `_` or `-`.
    BadPercent,
    /// `%{` without its `}`.
    Unterminated,
    /// Not a macro letter, or `c`/`r`/`t` outside an explanation.
    BadLetter(char),
    /// A transformer or delimiter that is not one (`%{d0}`, `%{dx}`).
    BadTransformer,
    /// A domain-spec that does not end with `.toplabel` or a macro (RFC 7208 §7.1).
    BadDomainEnd,
}

impl fmt::Display for MacroError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MacroError::BadCharacter(c) => write!(f, "invalid character {c:?}"),
            MacroError::BadPercent => f.write_str("'%' must start %{...}, %%, %_ or %-"),
            MacroError::Unterminated => f.write_str("unterminated %{"),
            MacroError::BadLetter(c) => write!(f, "invalid macro letter {c:?}"),
            MacroError::BadTransformer => f.write_str("invalid macro transformer"),
            MacroError::BadDomainEnd => f.write_str("a domain must end with a top-level label or a macro"),
        }
    }
}

/// Where a macro string is used: what it may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// A domain-spec: visible characters, no `c`/`r`/`t`, and a valid domain end.
    DomainSpec,
    /// An unknown modifier's value: visible characters, no `c`/`r`/`t`.
    Modifier,
    /// Explanation text (the TXT record `exp=` points to): spaces and every letter.
    Explanation,
}

impl MacroString {
    pub fn parse(text: &str, context: Context) -> Result<MacroString, MacroError> {
        let bytes = text.as_bytes();
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b == b'%' {
                let escape = match bytes.get(i + 1) {
                    Some(b'%') => Some("%"),
                    Some(b'_') => Some(" "),
                    Some(b'-') => Some("%20"),
                    Some(b'{') => None,
                    _ => return Err(MacroError::BadPercent),
                };
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                if let Some(escape) = escape {
                    parts.push(Part::Escape(escape));
                    i += 2;
                    continue;
                }
                let end = bytes.iter().skip(i + 2).position(|&c| c == b'}').ok_or(MacroError::Unterminated)? + i + 2;
                parts.push(Part::Macro(parse_macro(bytes.get(i + 2..end).unwrap_or_default(), context)?));
                i = end + 1;
                continue;
            }
            let allowed = (0x21..=0x7e).contains(&b) || (b == b' ' && context == Context::Explanation);
            if !allowed {
                // Report the character, not the byte, for UTF-8 input.
                let c = text.get(i..).and_then(|rest| rest.chars().next()).unwrap_or(char::from(b));
                return Err(MacroError::BadCharacter(c));
            }
            literal.push(char::from(b));
            i += 1;
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let parsed = MacroString { parts };
        if context == Context::DomainSpec && !parsed.has_domain_end() {
            return Err(MacroError::BadDomainEnd);
        }
        Ok(parsed)
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// RFC 7208 §7.1: `domain-end = ( "." toplabel [ "." ] ) / macro-expand`.
    fn has_domain_end(&self) -> bool {
        match self.parts.last() {
            None => false,
            Some(Part::Macro(_) | Part::Escape(_)) => true,
            Some(Part::Literal(text)) => {
                let text = text.strip_suffix('.').unwrap_or(text);
                match text.rfind('.') {
                    Some(dot) => is_toplabel(text.get(dot + 1..).unwrap_or_default()),
                    None => false,
                }
            }
        }
    }

    /// The expansion, with `value` giving each letter's value.
    pub fn expand<'v, E>(&self, mut value: impl FnMut(Letter) -> Result<Cow<'v, str>, E>) -> Result<String, E> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Escape(text) => out.push_str(text),
                Part::Macro(m) => m.transform(&value(m.letter)?, &mut out),
            }
        }
        Ok(out)
    }

    /// Whether expanding this string needs `letter`'s value.
    pub fn uses(&self, letter: Letter) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Macro(m) if m.letter == letter))
    }
}

fn parse_macro(inside: &[u8], context: Context) -> Result<Macro, MacroError> {
    let (&first, mut rest) = inside.split_first().ok_or(MacroError::BadLetter('}'))?;
    let letter = Letter::parse(first).ok_or(MacroError::BadLetter(char::from(first)))?;
    if letter.explanation_only() && context != Context::Explanation {
        return Err(MacroError::BadLetter(char::from(first)));
    }
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let keep = if digits > 0 {
        let (number, after) = rest.split_at(digits);
        rest = after;
        // Any number beyond the parts a name can have keeps them all.
        let n = number.iter().fold(0u32, |n, &d| n.saturating_mul(10).saturating_add(u32::from(d - b'0')));
        if n == 0 {
            return Err(MacroError::BadTransformer);
        }
        Some(n)
    } else {
        None
    };
    let reverse = matches!(rest.first(), Some(b'r' | b'R'));
    if reverse {
        rest = rest.get(1..).unwrap_or_default();
    }
    let mut delimiters = 0u8;
    for &c in rest {
        let bit = DELIMITERS.iter().position(|&d| d == c).ok_or(MacroError::BadTransformer)?;
        delimiters |= 1 << bit;
    }
    Ok(Macro { letter, escape: first.is_ascii_uppercase(), keep, reverse, delimiters })
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`
pub fn is_toplabel(label: &str) -> bool {
    let bytes = label.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-') {
        return false;
    }
    if !bytes.contains(&b'-') {
        return bytes.iter().any(u8::is_ascii_alphabetic);
    }
    matches!((bytes.first(), bytes.last()), (Some(f), Some(l)) if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric())
}

impl fmt::Display for MacroString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(text) => f.write_str(text)?,
                Part::Escape(" ") => f.write_str("%_")?,
                Part::Escape("%20") => f.write_str("%-")?,
                Part::Escape(_) => f.write_str("%%")?,
                Part::Macro(m) => {
                    let letter = m.letter.as_char();
                    write!(f, "%{{{}", if m.escape { letter.to_ascii_uppercase() } else { letter })?;
                    if let Some(n) = m.keep {
                        write!(f, "{n}")?;
                    }
                    if m.reverse {
                        f.write_char('r')?;
                    }
                    for (i, &d) in DELIMITERS.iter().enumerate() {
                        if m.delimiters & (1 << i) != 0 {
                            f.write_char(char::from(d))?;
                        }
                    }
                    f.write_char('}')?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of RFC 7208 §7.4's examples.
    fn rfc_value(letter: Letter) -> Result<Cow<'static, str>, ()> {
        Ok(Cow::Borrowed(match letter {
            Letter::S => "strong-bad@email.example.com",
            Letter::L => "strong-bad",
            Letter::O | Letter::D => "email.example.com",
            Letter::I => "192.0.2.3",
            Letter::V => "in-addr",
            Letter::H => "mx.example.org",
            Letter::P => "mx.example.org",
            Letter::C => "192.0.2.3",
            Letter::R => "example.net",
            Letter::T => "1000",
        }))
    }

    fn expand(text: &str) -> String {
        MacroString::parse(text, Context::Explanation).unwrap().expand(rfc_value).unwrap()
    }

    #[test]
    fn rfc_7208_section_7_4_examples() {
        assert_eq!(expand("%{s}"), "strong-bad@email.example.com");
        assert_eq!(expand("%{o}"), "email.example.com");
        assert_eq!(expand("%{d}"), "email.example.com");
        assert_eq!(expand("%{d4}"), "email.example.com");
        assert_eq!(expand("%{d3}"), "email.example.com");
        assert_eq!(expand("%{d2}"), "example.com");
        assert_eq!(expand("%{d1}"), "com");
        assert_eq!(expand("%{dr}"), "com.example.email");
        assert_eq!(expand("%{d2r}"), "example.email");
        assert_eq!(expand("%{l}"), "strong-bad");
        assert_eq!(expand("%{l-}"), "strong.bad");
        assert_eq!(expand("%{lr}"), "strong-bad");
        assert_eq!(expand("%{lr-}"), "bad.strong");
        assert_eq!(expand("%{l1r-}"), "strong");
        assert_eq!(expand("%{ir}.%{v}._spf.%{d2}"), "3.2.0.192.in-addr._spf.example.com");
        assert_eq!(expand("%{lr-}.lp._spf.%{d2}"), "bad.strong.lp._spf.example.com");
        assert_eq!(expand("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}"), "bad.strong.lp.3.2.0.192.in-addr._spf.example.com");
        assert_eq!(expand("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}"), "3.2.0.192.in-addr.strong.lp._spf.example.com");
        assert_eq!(expand("%{d2}.trusted-domains.example.net"), "example.com.trusted-domains.example.net");
        assert_eq!(expand("%{S}"), "strong-bad%40email.example.com");
        assert_eq!(expand("%%%_%-"), "% %20");
    }

    #[test]
    fn syntax_errors() {
        for (text, context) in [
            ("%{x}", Context::Explanation),
            ("%{d0}", Context::Explanation),
            ("%{d2x}", Context::Explanation),
            ("%{d", Context::Explanation),
            ("%(d)", Context::Explanation),
            ("100%", Context::Explanation),
            ("%{c}.example.com", Context::DomainSpec),
            ("a b", Context::Modifier),
            ("example.123", Context::DomainSpec),
            ("museum", Context::DomainSpec),
            ("foo.example.com-", Context::DomainSpec),
            ("", Context::DomainSpec),
        ] {
            assert!(MacroString::parse(text, context).is_err(), "{text:?} parsed");
        }
        for text in ["%{d}", "foo.example.com.", "o-o.example.com", "%{d}.x-2", "%%", "a.123-4"] {
            assert!(MacroString::parse(text, Context::DomainSpec).is_ok(), "{text:?} refused");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["%{d2r-.}x.%{S}", "a%%b%_c%-d", "%{ir}.%{v}._spf.%{d2}"] {
            let parsed = MacroString::parse(text, Context::Explanation).unwrap();
            assert_eq!(MacroString::parse(&parsed.to_string(), Context::Explanation).unwrap(), parsed);
        }
    }
}
