//! The bytes a header reader stops at, found 64 bytes at a time, one bit per byte: line breaks
//! (CR, LF), and the bytes that end a field name (anything but printable ASCII, and `:`).
//!
//! Header lines are short (60 bytes on average in the corpus) and names shorter: a fresh
//! `memchr2` per line spent more in its set-up than in the search, and a byte loop over each
//! name was the hottest code of the scanner. Here one pass classifies 64 bytes into two masks
//! and each stop then costs a count of trailing zeros. The same pass notes whether any byte it
//! classified has the high bit set, so a header block of plain ASCII needs no second pass to
//! tell that it holds no 8-bit text.
//!
//! The DATA reader (`smtp_data.rs`) uses the line breaks too, to pass over a run of ordinary
//! message lines at a time.

pub struct LineScanner<'a> {
    bytes: &'a [u8],
    /// Offset of the 64 bytes the masks describe.
    chunk: usize,
    /// Bit i set: `bytes[chunk + i]` is CR or LF (bits past the end of `bytes` are clear).
    breaks: u64,
    /// Bit i set: `bytes[chunk + i]` cannot be part of a field name: outside 33..=126, or `:`.
    name_stops: u64,
    /// Some byte of the chunks classified so far is 128 or above.
    saw_eight_bit: bool,
}

impl<'a> LineScanner<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        let masks = masks_at(bytes, 0);
        LineScanner { bytes, chunk: 0, breaks: masks.breaks, name_stops: masks.name_stops, saw_eight_bit: masks.eight_bit != 0 }
    }

    /// Whether a byte of 128 or above lies in any 64 bytes classified so far: when false, every
    /// byte up to the last stop found is ASCII (the converse does not hold: the last chunk may
    /// reach past what the reader used).
    pub fn saw_eight_bit(&self) -> bool {
        self.saw_eight_bit
    }

    /// Offset of the first CR or LF at or after `pos`.
    #[inline]
    pub fn line_break(&mut self, pos: usize) -> Option<usize> {
        self.find(pos, |scanner| scanner.breaks)
    }

    /// Offset of the first byte at or after `pos` that cannot be in a field name (line breaks
    /// included).
    #[inline]
    pub fn name_stop(&mut self, pos: usize) -> Option<usize> {
        self.find(pos, |scanner| scanner.name_stops)
    }

    #[inline]
    fn find(&mut self, pos: usize, mask: impl Fn(&Self) -> u64) -> Option<usize> {
        if pos >= self.bytes.len() {
            return None;
        }
        if pos < self.chunk || pos >= self.chunk + 64 {
            self.load(pos);
        }
        let mut bits = mask(self) & (u64::MAX << (pos - self.chunk));
        loop {
            if bits != 0 {
                return Some(self.chunk + bits.trailing_zeros() as usize);
            }
            if self.chunk + 64 >= self.bytes.len() {
                return None;
            }
            self.load(self.chunk + 64);
            bits = mask(self);
        }
    }

    fn load(&mut self, chunk: usize) {
        let masks = masks_at(self.bytes, chunk);
        self.chunk = chunk;
        self.breaks = masks.breaks;
        self.name_stops = masks.name_stops;
        self.saw_eight_bit |= masks.eight_bit != 0;
    }
}

/// One bit per byte of a 64-byte block.
#[derive(Debug, PartialEq, Eq)]
struct Masks {
    breaks: u64,
    name_stops: u64,
    eight_bit: u64,
}

#[inline]
fn masks_at(bytes: &[u8], at: usize) -> Masks {
    let rest = bytes.get(at..).unwrap_or_default();
    match rest.first_chunk::<64>() {
        Some(block) => masks64(block),
        None => {
            // The tail, padded with a byte of none of the classes: nothing is found past the end.
            let mut block = [b'a'; 64];
            block[..rest.len()].copy_from_slice(rest);
            masks64(&block)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn masks64(block: &[u8; 64]) -> Masks {
    // Detected once by std and cached: each call reads one atomic flag.
    if std::arch::is_x86_feature_detected!("avx2") {
        masks64_avx2(block)
    } else {
        masks64_sse2(block)
    }
}

/// The compiler does not turn the portable version below into vector instructions (it cost
/// half again as many instructions per header block as one memchr2 per line); these do. SSE2
/// is part of the x86_64 baseline; AVX2 halves the work where the CPU has it.
#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(unsafe_code)]
fn masks64_sse2(block: &[u8; 64]) -> Masks {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline, so the intrinsics are always available; the
    // four unaligned 16-byte loads read inside the 64-byte array.
    unsafe {
        let (lf, cr, colon, del, name_min) =
            (_mm_set1_epi8(b'\n' as i8), _mm_set1_epi8(b'\r' as i8), _mm_set1_epi8(b':' as i8), _mm_set1_epi8(127), _mm_set1_epi8(33));
        let mut masks = Masks { breaks: 0, name_stops: 0, eight_bit: 0 };
        for i in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * i).cast::<__m128i>());
            let line_break = _mm_or_si128(_mm_cmpeq_epi8(v, lf), _mm_cmpeq_epi8(v, cr));
            // Signed: bytes of 128 and above are negative, so below 33 as well.
            let outside = _mm_or_si128(_mm_cmplt_epi8(v, name_min), _mm_cmpeq_epi8(v, del));
            let stop = _mm_or_si128(outside, _mm_cmpeq_epi8(v, colon));
            masks.breaks |= u64::from(_mm_movemask_epi8(line_break) as u16) << (16 * i);
            masks.name_stops |= u64::from(_mm_movemask_epi8(stop) as u16) << (16 * i);
            masks.eight_bit |= u64::from(_mm_movemask_epi8(v) as u16) << (16 * i);
        }
        masks
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(unsafe_code)]
fn masks64_avx2(block: &[u8; 64]) -> Masks {
    #[target_feature(enable = "avx2")]
    fn classify(block: &[u8; 64]) -> Masks {
        use std::arch::x86_64::{
            __m256i, _mm256_cmpeq_epi8, _mm256_cmpgt_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256,
            _mm256_set1_epi8,
        };
        let (lf, cr, colon, del, below_name) = (
            _mm256_set1_epi8(b'\n' as i8),
            _mm256_set1_epi8(b'\r' as i8),
            _mm256_set1_epi8(b':' as i8),
            _mm256_set1_epi8(127),
            _mm256_set1_epi8(33),
        );
        let mut masks = Masks { breaks: 0, name_stops: 0, eight_bit: 0 };
        for i in 0..2 {
            // SAFETY: the two unaligned 32-byte loads read inside the 64-byte array.
            let v = unsafe { _mm256_loadu_si256(block.as_ptr().add(32 * i).cast::<__m256i>()) };
            let line_break = _mm256_or_si256(_mm256_cmpeq_epi8(v, lf), _mm256_cmpeq_epi8(v, cr));
            // Signed: 33 > v for every byte below 33 and for every byte of 128 and above.
            let outside = _mm256_or_si256(_mm256_cmpgt_epi8(below_name, v), _mm256_cmpeq_epi8(v, del));
            let stop = _mm256_or_si256(outside, _mm256_cmpeq_epi8(v, colon));
            masks.breaks |= u64::from(_mm256_movemask_epi8(line_break) as u32) << (32 * i);
            masks.name_stops |= u64::from(_mm256_movemask_epi8(stop) as u32) << (32 * i);
            masks.eight_bit |= u64::from(_mm256_movemask_epi8(v) as u32) << (32 * i);
        }
        masks
    }
    // SAFETY: called only after `is_x86_feature_detected!("avx2")` said the CPU has AVX2.
    unsafe { classify(block) }
}

#[cfg(not(target_arch = "x86_64"))]
use masks64_portable as masks64;

#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn masks64_portable(block: &[u8; 64]) -> Masks {
    let mut masks = Masks { breaks: 0, name_stops: 0, eight_bit: 0 };
    for (i, &b) in block.iter().enumerate() {
        masks.breaks |= u64::from(is_line_break(b)) << i;
        masks.name_stops |= u64::from(is_name_stop(b)) << i;
        masks.eight_bit |= u64::from(b >= 128) << i;
    }
    masks
}

#[cfg(any(test, not(target_arch = "x86_64")))]
fn is_line_break(b: u8) -> bool {
    b == b'\n' || b == b'\r'
}

#[cfg(any(test, not(target_arch = "x86_64")))]
fn is_name_stop(b: u8) -> bool {
    !(33..=126).contains(&b) || b == b':'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every<'a>(bytes: &'a [u8], find: impl Fn(&mut LineScanner<'a>, usize) -> Option<usize>) -> Vec<usize> {
        let mut scanner = LineScanner::new(bytes);
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(i) = find(&mut scanner, pos) {
            out.push(i);
            pos = i + 1;
        }
        out
    }

    #[test]
    fn finds_every_stop_as_a_byte_loop_does() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for len in [0, 1, 2, 63, 64, 65, 127, 128, 129, 300, 1000] {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        [b'\n', b'\r', b'a', b' ', b':', b'~', b'!', 0x7f, 0x80, 0xff, 0x8d, 0x00, b'\t'][(seed % 13) as usize]
                    })
                    .collect();
                let expected = |f: fn(u8) -> bool| (0..len).filter(|&i| f(bytes[i])).collect::<Vec<_>>();
                assert_eq!(every(&bytes, LineScanner::line_break), expected(is_line_break), "{bytes:?}");
                assert_eq!(every(&bytes, LineScanner::name_stop), expected(is_name_stop), "{bytes:?}");
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn intrinsics_agree_with_the_portable_version() {
        let mut seed = 0x2545f4914f6cdd1du64;
        for _ in 0..2000 {
            let mut block = [0u8; 64];
            for b in &mut block {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = (seed >> 24) as u8;
            }
            assert_eq!(masks64_sse2(&block), masks64_portable(&block));
            if std::arch::is_x86_feature_detected!("avx2") {
                assert_eq!(masks64_avx2(&block), masks64_portable(&block));
            }
        }
        let every_byte: Vec<u8> = (0..=255).collect();
        for block in every_byte.chunks_exact(64) {
            let block: &[u8; 64] = block.try_into().unwrap();
            assert_eq!(masks64_sse2(block), masks64_portable(block));
            if std::arch::is_x86_feature_detected!("avx2") {
                assert_eq!(masks64_avx2(block), masks64_portable(block));
            }
        }
    }

    #[test]
    fn jumps_forward_and_back() {
        let bytes = b"a\nb\rc\r\n".repeat(40);
        let mut scanner = LineScanner::new(&bytes);
        assert_eq!(scanner.line_break(150), memchr::memchr2(b'\n', b'\r', &bytes[150..]).map(|i| i + 150));
        assert_eq!(scanner.line_break(3), Some(3));
        assert_eq!(scanner.line_break(bytes.len()), None);
        assert_eq!(scanner.line_break(0), Some(1));
        assert_eq!(scanner.name_stop(2), Some(3));
    }
}
