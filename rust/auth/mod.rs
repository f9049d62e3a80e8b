//! Message authentication, one folder per mechanism: `dkim` (RFC 6376, RFC 8463). No DNS here:
//! callers hand in the records they looked up (in Python, `lookup/` is the one DNS path).

pub mod dkim;
