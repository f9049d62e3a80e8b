//! A compact probabilistic set of Message-IDs: the messages a relay has sent, so that a DSN
//! about a message it never sent (backscatter) can be told apart, without storing the IDs.
//!
//! A Bloom filter with `k` hash functions over `m` bits, sized from the expected number of
//! IDs and the false-positive rate wanted: `m = -n ln p / (ln 2)^2`, `k = (m / n) ln 2`.
//! Membership has no false negatives; a false positive (an ID never added reported present)
//! happens with probability about `p` while no more than `n` IDs were added. The bits are
//! atomic words, so adding and testing need no lock and the filter may be shared by threads.
//!
//! The hash is fixed (FNV-1a 64 mixed by SplitMix64, double hashing for the `k` probes), so a
//! filter written to disk reads back the same in another process or release: `to_bytes` and
//! `from_bytes` are the persisted form. Filters of the same size union bit by bit.
//!
//! IDs are normalised before hashing: white space around them and one pair of angle brackets
//! are removed, so `<a@b>`, ` <a@b> ` and `a@b` are the same ID (DSNs quote the original's
//! Message-ID as written, with or without its brackets).

use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"DPSEEN1\0";
const HEADER: usize = MAGIC.len() + 8 + 4 + 8;
/// Filters larger than this (256 MiB of bits) are refused: a sizing mistake, not a use.
pub const MAX_BITS: u64 = 1 << 31;

/// Why a filter cannot be made or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeenError {
    /// `expected` is zero, or the false-positive rate is not in (0, 0.5].
    BadSize(String),
    /// The bytes are not a filter written by `to_bytes`.
    Corrupt(&'static str),
    /// `union` of filters of different shapes.
    Mismatch,
}

impl std::fmt::Display for SeenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeenError::BadSize(why) => write!(f, "{why}"),
            SeenError::Corrupt(why) => write!(f, "not a Message-ID filter: {why}"),
            SeenError::Mismatch => write!(f, "the filters have different sizes or hash counts"),
        }
    }
}

impl std::error::Error for SeenError {}

#[derive(Debug)]
pub struct SeenFilter {
    bits: Vec<AtomicU64>,
    /// Number of bits (a multiple of 64).
    m: u64,
    k: u32,
    added: AtomicU64,
}

/// `id` without surrounding white space and one pair of angle brackets.
pub fn normalize(id: &[u8]) -> &[u8] {
    let trimmed = id.trim_ascii();
    match trimmed {
        [b'<', inner @ .., b'>'] => inner.trim_ascii(),
        _ => trimmed,
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl SeenFilter {
    /// A filter for about `expected` IDs with false-positive rate `fp_rate`.
    pub fn with_capacity(expected: u64, fp_rate: f64) -> Result<Self, SeenError> {
        if expected == 0 {
            return Err(SeenError::BadSize("expected must be at least 1".into()));
        }
        if !(fp_rate > 0.0 && fp_rate <= 0.5) {
            return Err(SeenError::BadSize(format!("fp_rate must be in (0, 0.5], got {fp_rate}")));
        }
        let ln2 = std::f64::consts::LN_2;
        let bits = (-(expected as f64) * fp_rate.ln() / (ln2 * ln2)).ceil().max(64.0);
        if bits > MAX_BITS as f64 {
            return Err(SeenError::BadSize(format!("{expected} IDs at {fp_rate} need {bits} bits, more than {MAX_BITS}")));
        }
        let m = (bits as u64).div_ceil(64) * 64;
        let k = ((m as f64 / expected as f64) * ln2).round().clamp(1.0, 32.0) as u32;
        Ok(Self::empty(m, k))
    }

    fn empty(m: u64, k: u32) -> Self {
        let words = (m / 64) as usize;
        SeenFilter { bits: (0..words).map(|_| AtomicU64::new(0)).collect(), m, k, added: AtomicU64::new(0) }
    }

    #[inline]
    fn probes(&self, id: &[u8]) -> impl Iterator<Item = u64> {
        let base = fnv1a(normalize(id));
        let h1 = splitmix(base);
        let h2 = splitmix(base ^ 0x5851_f42d_4c95_7f2d) | 1;
        let m = self.m;
        (0..u64::from(self.k)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % m)
    }

    /// Adds `id`; returns whether it was (probably) present already.
    pub fn add(&self, id: &[u8]) -> bool {
        let mut present = true;
        for bit in self.probes(id) {
            let mask = 1u64 << (bit % 64);
            let before = self.bits[(bit / 64) as usize].fetch_or(mask, Ordering::Relaxed);
            present &= before & mask != 0;
        }
        if !present {
            self.added.fetch_add(1, Ordering::Relaxed);
        }
        present
    }

    /// Whether `id` was (probably) added: never false for an added ID.
    pub fn contains(&self, id: &[u8]) -> bool {
        self.probes(id).all(|bit| self.bits[(bit / 64) as usize].load(Ordering::Relaxed) & (1u64 << (bit % 64)) != 0)
    }

    /// IDs added that were not present before (an estimate of the distinct IDs).
    pub fn added(&self) -> u64 {
        self.added.load(Ordering::Relaxed)
    }

    pub fn bits(&self) -> u64 {
        self.m
    }

    pub fn hashes(&self) -> u32 {
        self.k
    }

    /// The expected false-positive rate now: `(1 - e^(-k n / m))^k` for the IDs added so far.
    pub fn false_positive_rate(&self) -> f64 {
        let fill = 1.0 - (-(f64::from(self.k)) * self.added() as f64 / self.m as f64).exp();
        fill.powi(self.k as i32)
    }

    /// A new filter holding the IDs of both (same size and hash count required).
    pub fn union(&self, other: &SeenFilter) -> Result<SeenFilter, SeenError> {
        if self.m != other.m || self.k != other.k {
            return Err(SeenError::Mismatch);
        }
        let out = SeenFilter::empty(self.m, self.k);
        for ((o, a), b) in out.bits.iter().zip(&self.bits).zip(&other.bits) {
            o.store(a.load(Ordering::Relaxed) | b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        out.added.store(self.added() + other.added(), Ordering::Relaxed);
        Ok(out)
    }

    /// The persisted form: magic, bits, hash count, IDs added, then the bit words (little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.bits.len() * 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.m.to_le_bytes());
        out.extend_from_slice(&self.k.to_le_bytes());
        out.extend_from_slice(&self.added().to_le_bytes());
        for word in &self.bits {
            out.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SeenFilter, SeenError> {
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            return Err(SeenError::Corrupt("bad magic"));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let m = u64_at(8);
        let k = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
        let added = u64_at(20);
        if m == 0 || m % 64 != 0 || m > MAX_BITS || k == 0 || k > 32 {
            return Err(SeenError::Corrupt("bad size"));
        }
        let words = (m / 64) as usize;
        if bytes.len() != HEADER + words * 8 {
            return Err(SeenError::Corrupt("truncated"));
        }
        let filter = SeenFilter::empty(m, k);
        for (i, word) in filter.bits.iter().enumerate() {
            word.store(u64_at(HEADER + i * 8), Ordering::Relaxed);
        }
        filter.added.store(added, Ordering::Relaxed);
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_ids_are_found_and_brackets_do_not_matter() {
        let filter = SeenFilter::with_capacity(1000, 0.001).unwrap();
        assert!(!filter.add(b"<a@example.com>"));
        assert!(filter.contains(b"a@example.com") && filter.contains(b"  <a@example.com> "));
        assert!(!filter.contains(b"<b@example.com>"));
        assert!(filter.add(b"a@example.com"), "second add finds it");
        assert_eq!(filter.added(), 1);
    }

    #[test]
    fn false_positive_rate_is_near_the_target_at_capacity() {
        let filter = SeenFilter::with_capacity(10_000, 0.01).unwrap();
        for i in 0..10_000 {
            filter.add(format!("<{i}@sent.example>").as_bytes());
        }
        for i in 0..10_000 {
            assert!(filter.contains(format!("{i}@sent.example").as_bytes()));
        }
        let false_positives = (0..100_000).filter(|i| filter.contains(format!("<{i}@never.example>").as_bytes())).count();
        // 1% expected: 1,000 of 100,000; allow for chance.
        assert!((500..1600).contains(&false_positives), "{false_positives}");
        assert!((filter.false_positive_rate() - 0.01).abs() < 0.003);
    }

    #[test]
    fn round_trips_through_bytes_and_unions() {
        let a = SeenFilter::with_capacity(100, 0.01).unwrap();
        let b = SeenFilter::with_capacity(100, 0.01).unwrap();
        a.add(b"one@x");
        b.add(b"two@x");
        let restored = SeenFilter::from_bytes(&a.to_bytes()).unwrap();
        assert!(restored.contains(b"one@x") && !restored.contains(b"two@x"));
        assert_eq!((restored.bits(), restored.hashes(), restored.added()), (a.bits(), a.hashes(), 1));
        let both = a.union(&b).unwrap();
        assert!(both.contains(b"one@x") && both.contains(b"two@x"));
        let other = SeenFilter::with_capacity(100_000, 0.01).unwrap();
        assert_eq!(a.union(&other).unwrap_err(), SeenError::Mismatch);
        let bytes = a.to_bytes();
        assert!(SeenFilter::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(SeenFilter::from_bytes(b"junk").is_err());
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(SeenFilter::with_capacity(0, 0.01).is_err());
        assert!(SeenFilter::with_capacity(10, 0.0).is_err());
        assert!(SeenFilter::with_capacity(10, f64::NAN).is_err());
        assert!(SeenFilter::with_capacity(u64::MAX / 2, 0.0001).is_err());
    }
}
