//! Closed sets of names that deliverypool outputs: each is one table, an enum whose members
//! carry their public name, with `as_str`, `ALL` (every member, in table order) and
//! `from_name`. Metrics labels and configuration name these, so a name is written once, in its
//! table, and nowhere else; the Python module exports every table as a tuple (`REASONS`,
//! `SIGNALS`, `DEFECTS`, `REPORT_KINDS`, `DSN_KINDS`).
//!
//! The tables live next to the code that produces their members: reasons in `policy.rs`,
//! signals (with their class and points) and report kinds in `dsn.rs`, phrase-group kinds in
//! `phrases.rs`, defects here (the scanner and the policy both add them). Adding a member is
//! one line in its table.

/// Something with a closed set of public names.
pub trait Label: Copy + 'static {
    /// Every member, in table order.
    const ALL: &'static [Self];
    /// The public name.
    fn as_str(self) -> &'static str;
}

/// Defines a closed set: `closed_set! { /// doc  pub enum Name { Member = "name", ... } }`.
///
/// The enum is `Copy`, `Eq`, `Hash` and `Ord` (table order); `Display` writes the name.
/// `Debug` is the caller's choice: `#[derive(Debug)]` among the attributes prints the member
/// (`Dsn`), `debug_as_name` after the enum's name prints the public name as a string
/// (`"dsn"`), so a list of them reads like the list of names it stands for.
///
/// A table whose members carry a constant besides their name (a signal's points) names a const
/// accessor after the enum and gives each row its value, so that a member is still one row:
/// `pub enum Name, fn spec() -> Spec { Member = "name" => Spec { ... }, ... }`.
macro_rules! closed_set {
    ($(#[$meta:meta])* $vis:vis enum $name:ident $($debug:ident)?, $(#[$fn_meta:meta])* fn $accessor:ident() -> $data_ty:ty {
        $($(#[$row_meta:meta])* $member:ident = $label:literal => $data:expr,)+
    }) => {
        closed_set! { $(#[$meta])* $vis enum $name $($debug)? { $($(#[$row_meta])* $member = $label,)+ } }
        impl $name {
            $(#[$fn_meta])*
            pub const fn $accessor(self) -> $data_ty {
                match self {
                    $($name::$member => $data,)+
                }
            }
        }
    };
    ($(#[$meta:meta])* $vis:vis enum $name:ident debug_as_name { $($rows:tt)+ }) => {
        closed_set! { $(#[$meta])* $vis enum $name { $($rows)+ } }
        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Debug::fmt(self.as_str(), f)
            }
        }
    };
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$row_meta:meta])* $member:ident = $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $($(#[$row_meta])* $member,)+
        }

        impl $name {
            /// Every member, in table order.
            pub const ALL: &'static [$name] = &[$($name::$member,)+];

            /// The public name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$member => $label,)+
                }
            }

            /// The member called `name`, if there is one.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($label => Some($name::$member),)+
                    _ => None,
                }
            }
        }

        impl $crate::labels::Label for $name {
            const ALL: &'static [Self] = $name::ALL;
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use closed_set;

closed_set! {
    /// What was odd about a message (`defects` of a scan or a decision). Message content never
    /// raises: whatever the scanner or the policy could not take at face value is named here.
    pub enum Defect debug_as_name {
        // The header block (scan.rs).
        /// No blank line within `ScanLimits::max_header_bytes`.
        HeaderTooLarge = "header-too-large",
        /// A continuation line before the first field.
        ContinuationWithoutField = "continuation-without-field",
        /// A line that is neither a field nor a continuation ended the header block.
        MissingHeaderBodySeparator = "missing-header-body-separator",
        /// Bytes of 128 and above in a header field.
        EightBitHeader = "8bit-header",
        /// A non-empty message without a single header field.
        NoHeaderFields = "no-header-fields",
        // Skipped before the first field (scan.rs, `header_start`).
        /// A UTF-8 byte-order mark.
        LeadingBom = "leading-bom",
        /// Blank lines (Exchange NDRs saved from Outlook, ...).
        LeadingBlankLines = "leading-blank-lines",
        /// An mbox `From ` separator line.
        MboxFromLine = "mbox-from-line",
        /// An escaped mbox separator, `>From `.
        EscapedFromLine = "escaped-from-line",
        /// Up to `JUNK_LINES` lines that are not fields, followed by at least two lines of a
        /// header block.
        JunkBeforeHeader = "junk-before-header",
        // The MIME structure (scan.rs).
        InvalidContentType = "invalid-content-type",
        MultipartWithoutBoundary = "multipart-without-boundary",
        /// The MIME walk stopped at `ScanLimits::max_body_bytes` or its search budget.
        BodyScanTruncated = "body-scan-truncated",
        TooManyParts = "too-many-parts",
        MultipartTooDeep = "multipart-too-deep",
        DeliveryStatusWithoutRecipients = "delivery-status-without-recipients",
        // The trusted spam-score header (policy.rs).
        /// Present, but the client is not the relay's own filter.
        ScoreHeaderUntrusted = "score-header-untrusted",
        /// Present once, but not a number.
        ScoreHeaderInvalid = "score-header-invalid",
        /// Present more than once: someone else wrote one, so neither counts.
        ScoreHeaderRepeated = "score-header-repeated",
    }
}

impl Defect {
    /// The scanner stopped before it had read the whole header block or MIME structure, so a
    /// DSN's markers could lie beyond what it saw: the header block over its limit, more parts
    /// or deeper nesting than it walks. Not `BodyScanTruncated`: the part headers read before
    /// that limit (4 MiB) cover where every report format puts its report, and legitimate mail
    /// with large attachments reaches it.
    pub fn unscannable(self) -> bool {
        matches!(self, Defect::HeaderTooLarge | Defect::TooManyParts | Defect::MultipartTooDeep)
    }
}

/// Checks the invariants every table must keep: names unique, found again by `from_name`, and
/// usable as metrics labels as they stand (lowercase ASCII letters, digits and `-`).
#[cfg(test)]
pub(crate) fn check_table<T: Label + PartialEq + std::fmt::Debug>(from_name: fn(&str) -> Option<T>) {
    let mut seen = std::collections::HashSet::new();
    for &member in T::ALL {
        let name = member.as_str();
        assert!(seen.insert(name), "{name:?} is in the table twice");
        assert_eq!(from_name(name), Some(member));
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{name:?} is not a plain label"
        );
    }
    assert_eq!(from_name("no-such-name"), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::dsn::{DsnKind, ReportKind, Signal, SignalClass};
    use crate::phrases::Kind;
    use crate::policy::Reason;

    #[test]
    fn tables_keep_their_invariants() {
        check_table(Defect::from_name);
        check_table(Reason::from_name);
        check_table(Signal::from_name);
        check_table(ReportKind::from_name);
        check_table(DsnKind::from_name);
        check_table(SignalClass::from_name);
        check_table(Kind::from_name);
    }

    #[test]
    fn debug_prints_the_name_or_the_member_as_chosen() {
        assert_eq!(format!("{:?}", [Defect::EightBitHeader]), r#"["8bit-header"]"#);
        assert_eq!(format!("{:?}", [Signal::NullSender, Signal::BounceBody]), r#"["null-sender", "bounce-body"]"#);
        assert_eq!(format!("{:?}", Some(ReportKind::AutoReply)), "Some(AutoReply)");
        assert_eq!(Defect::ScoreHeaderRepeated.to_string(), "score-header-repeated");
    }
}
