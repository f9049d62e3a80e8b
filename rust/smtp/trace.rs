//! The relay's `Received:` trace field (RFC 5321 §4.4), written in front of each message as it
//! is taken out of the DATA reader (one copy of the message, not two). The same text as
//! `deliverypool.mail.headers.received_field`, which the embedding path (aiosmtpd) still uses.

use std::time::{SystemTime, UNIX_EPOCH};

/// `Received: from HELO ([PEER])\r\n\tby BY (deliverypool) with PROTOCOL; DATE\r\n`, with the
/// HELO name cut to 100 printable ASCII characters (no parentheses, non-ASCII as `?`), the
/// protocol ESMTP or ESMTPA (authenticated), the date in UTC as RFC 5322 writes it.
pub fn received(helo: &[u8], peer: &str, by: &str, authenticated: bool, now: SystemTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(120 + helo.len().min(100) + by.len());
    out.extend_from_slice(b"Received: from ");
    let mut kept = 0;
    for chunk in helo.utf8_chunks() {
        for c in chunk.valid().chars() {
            if kept == 100 {
                break;
            }
            if c.is_control() || matches!(c, '(' | ')') {
                continue;
            }
            out.push(if c.is_ascii() { c as u8 } else { b'?' });
            kept += 1;
        }
        // An invalid sequence is one unprintable character to Python (a surrogate): dropped.
    }
    if kept == 0 && helo.is_empty() {
        out.extend_from_slice(b"unknown");
    }
    out.extend_from_slice(b" ([");
    out.extend(peer.bytes().map(|b| if (0x20..0x7f).contains(&b) { b } else { b'?' }));
    out.extend_from_slice(b"])\r\n\tby ");
    out.extend(by.bytes().map(|b| if (0x20..0x7f).contains(&b) { b } else { b'?' }));
    out.extend_from_slice(if authenticated { b" (deliverypool) with ESMTPA; " } else { b" (deliverypool) with ESMTP; " });
    out.extend_from_slice(rfc5322_date(now).as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// `Mon, 01 Jan 2026 00:00:00 -0000` (UTC, as Python's `email.utils.formatdate()`).
pub fn rfc5322_date(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} -0000",
        WEEKDAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil for days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 -0000");
        assert_eq!(rfc5322_date(UNIX_EPOCH + Duration::from_secs(951_782_400)), "Tue, 29 Feb 2000 00:00:00 -0000");
        assert_eq!(rfc5322_date(UNIX_EPOCH + Duration::from_secs(1_767_225_599)), "Wed, 31 Dec 2025 23:59:59 -0000");
    }

    #[test]
    fn field() {
        let field = received(b"client (x)\r\n\xc3\xa9", "192.0.2.1", "relay.test", true, UNIX_EPOCH);
        assert_eq!(field, b"Received: from client x? ([192.0.2.1])\r\n\tby relay.test (deliverypool) with ESMTPA; Thu, 01 Jan 1970 00:00:00 -0000\r\n");
    }
}
