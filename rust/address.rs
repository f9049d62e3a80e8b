//! The first address of an address-list header field (From), as a caller that checks the
//! sender's domain needs it: RFC 5322 `address-list`, read leniently in the way Python's
//! `email.utils.getaddresses` reads it.
//!
//! Display names, comments, quoted strings and groups are understood: in
//! `"Doe, John" <John@Example.COM> (work), b@c` the first address is `john@example.com`. A
//! mailbox with angle brackets yields what is inside them (white space and comments removed,
//! an obsolete source route `@a,@b:` dropped); one without yields its first word that holds an
//! `@` outside quotes (comments removed, white space between words). A candidate counts when it
//! has a local part and a domain around its last unquoted `@`; the first mailbox with one wins.
//!
//! Work is proportional to the field's length. It runs when a caller asks (`Decision`'s
//! `header_from`), not on the routing path.

/// `local@domain` from a header field, lowercased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    text: String,
    /// Where the `@` between the local part and the domain is in `text`.
    at: usize,
}

impl Address {
    /// `local@domain`, lowercased (the quotes of a quoted local part kept).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The local part, lowercased.
    pub fn local_part(&self) -> &str {
        self.text.get(..self.at).unwrap_or_default()
    }

    /// The domain, lowercased, as written otherwise (not IDNA-encoded; a trailing dot kept).
    pub fn domain(&self) -> &str {
        self.text.get(self.at + 1..).unwrap_or_default()
    }

    pub fn into_string(self) -> String {
        self.text
    }
}

/// The first usable address of an address list (see the module documentation), or None.
pub fn first_address(value: &str) -> Option<Address> {
    let bytes = value.as_bytes();
    let (mut start, mut i) = (0, 0);
    loop {
        match bytes.get(i) {
            // A mailbox ends at a comma, a group's display name at its colon, a group at `;`.
            None | Some(b',' | b':' | b';') => {
                if let Some(address) = mailbox_address(&value[start..i]) {
                    return Some(address);
                }
                if i >= bytes.len() {
                    return None;
                }
                (start, i) = (i + 1, i + 1);
            }
            Some(b'"') => i = quoted_end(bytes, i),
            Some(b'(') => i = comment_end(bytes, i),
            // A route's `:` and `,` inside angle brackets do not end the mailbox.
            Some(b'<') => i = angle_end(bytes, i),
            Some(_) => i += 1,
        }
    }
}

/// The address of one mailbox (`Name <addr>` or `addr`), if it has a usable one.
fn mailbox_address(mailbox: &str) -> Option<Address> {
    let bytes = mailbox.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => i = quoted_end(bytes, i),
            b'(' => i = comment_end(bytes, i),
            b'<' => {
                let end = angle_end(bytes, i);
                let closed = end > i + 1 && bytes.get(end - 1) == Some(&b'>');
                let inner = &mailbox[i + 1..if closed { end - 1 } else { end }];
                return parse(without_route(&words(inner).concat()));
            }
            _ => i += 1,
        }
    }
    // No angle brackets: the first word with an unquoted `@`.
    words(mailbox).iter().find(|word| unquoted_at(word).is_some()).and_then(|word| parse(word))
}

/// The words of `text`: comments removed, split at white space outside quoted strings.
fn words(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut words = vec![String::new()];
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let next = match b {
            b'(' => {
                i = comment_end(bytes, i);
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {
                if words.last().is_some_and(|w| !w.is_empty()) {
                    words.push(String::new());
                }
                i += 1;
                continue;
            }
            b'"' => quoted_end(bytes, i),
            // A run up to the next byte that ends or interrupts a word (all ASCII, so the run
            // ends on a character boundary).
            _ => bytes[i..]
                .iter()
                .position(|b| matches!(b, b'(' | b' ' | b'\t' | b'\r' | b'\n' | b'"'))
                .map_or(bytes.len(), |n| i + n),
        };
        if let Some(word) = words.last_mut() {
            word.push_str(&text[i..next]);
        }
        i = next;
    }
    words
}

/// `@a.example,@b.example:user@c.example` (an obsolete source route) as `user@c.example`.
fn without_route(address: &str) -> &str {
    match address.strip_prefix('@') {
        Some(_) => address.find(':').map_or(address, |colon| &address[colon + 1..]),
        None => address,
    }
}

/// `local@domain`, both non-empty, lowercased.
fn parse(candidate: &str) -> Option<Address> {
    let at = unquoted_at(candidate)?;
    let (local, domain) = (&candidate[..at], &candidate[at + 1..]);
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    let lower = |s: &str| if s.is_ascii() { s.to_ascii_lowercase() } else { s.to_lowercase() };
    let local = lower(local);
    let at = local.len();
    let mut text = local;
    text.push('@');
    text.push_str(&lower(domain));
    Some(Address { text, at })
}

/// The last `@` outside quoted strings.
fn unquoted_at(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut i, mut last) = (0, None);
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => i = quoted_end(bytes, i),
            b'@' => {
                last = Some(i);
                i += 1;
            }
            _ => i += 1,
        }
    }
    last
}

/// Just past the quoted string starting at `open` (a `"`), or the end of the input.
fn quoted_end(bytes: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Just past the (nested) comment starting at `open` (a `(`), or the end of the input.
fn comment_end(bytes: &[u8], open: usize) -> usize {
    let (mut i, mut depth) = (open + 1, 1usize);
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// Just past the `>` closing the angle address that starts at `open` (a `<`), or the end.
fn angle_end(bytes: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => i = quoted_end(bytes, i),
            b'>' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(value: &str) -> Option<(String, String)> {
        first_address(value).map(|a| (a.as_str().to_owned(), a.domain().to_owned()))
    }

    fn pair(address: &str, domain: &str) -> Option<(String, String)> {
        Some((address.to_owned(), domain.to_owned()))
    }

    #[test]
    fn reads_names_quotes_comments_groups_and_routes() {
        for (value, address) in [
            ("alice@example.com", "alice@example.com"),
            ("Alice <Alice@Example.COM>", "alice@example.com"),
            ("\"Doe, John\" <j@x.example> (work), b@c.example", "j@x.example"),
            ("j@x.example (John Doe)", "j@x.example"),
            ("John Doe j@x.example", "j@x.example"),
            ("MAILER-DAEMON@mx.example.net (Mail Delivery System)", "mailer-daemon@mx.example.net"),
            ("=?utf-8?q?J=C3=B6rg?= <joerg@example.de>", "joerg@example.de"),
            ("\"a@b\"@c.example", "\"a@b\"@c.example"),
            ("\"john smith\"@Example.org", "\"john smith\"@example.org"),
            ("<\"odd>name\"@x.example>", "\"odd>name\"@x.example"),
            ("team: a@x.example, b@y.example;", "a@x.example"),
            ("undisclosed-recipients:;, c@z.example", "c@z.example"),
            ("<@relay.example,@other.example:user@final.example>", "user@final.example"),
            ("a(comment)@b.example", "a@b.example"),
            ("Name < a @ b.example >", "a@b.example"),
            ("x (a, b: c) <y@z.example>", "y@z.example"),
            ("[ÄÖ] <Ärger@Bücher.example>", "ärger@bücher.example"),
        ] {
            let found = first_address(value).unwrap_or_else(|| panic!("{value:?}: no address"));
            assert_eq!(found.as_str(), address, "{value:?}");
            assert_eq!(Some(found.domain()), address.rsplit_once('@').map(|(_, d)| d), "{value:?}");
        }
    }

    #[test]
    fn none_when_absent_or_unusable() {
        for value in ["", "   ", "Mail Delivery System <>", "<>", "MAILER-DAEMON", "@example.com", "user@", "<user@>",
                      "undisclosed-recipients:;", "(only a comment)", "\"unclosed@x", "<unclosed@", "Name <"] {
            assert_eq!(first_address(value), None, "{value:?}");
        }
        // Unclosed brackets and comments end at the end of the field.
        assert_eq!(first("<unclosed@x.example"), pair("unclosed@x.example", "x.example"));
        assert_eq!(first("a@b.example (unclosed"), pair("a@b.example", "b.example"));
        // The first mailbox without a usable address is passed over.
        assert_eq!(first("Mail Delivery System <>, postmaster@x.example"), pair("postmaster@x.example", "x.example"));
    }

    #[test]
    fn total_on_any_text() {
        let pieces = ["\"", "(", ")", "<", ">", "@", ",", ":", ";", "\\", " ", "a", "é", "\r\n", "."];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            if let Some(address) = first_address(&text) {
                assert!(!address.local_part().is_empty() && !address.domain().is_empty(), "{text:?}");
                assert_eq!(address.as_str(), format!("{}@{}", address.local_part(), address.domain()));
            }
        }
    }
}
