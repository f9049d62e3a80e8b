//! One-pass phrase matching: every phrase of a set is looked for in a single left-to-right pass
//! over the text, whatever the number of phrases (an Aho-Corasick automaton made into a
//! deterministic table, over byte classes).
//!
//! Matching is ASCII case-insensitive (phrases are given in lowercase; non-ASCII bytes compare
//! exactly), and a run of white space (space, tab, CR, LF) in the text matches one space in a
//! phrase, so a sentence wrapped differently, or with CRLF line ends, still matches. A phrase
//! that starts with `^` matches only at the start of the text and one that ends with `$` only at
//! its end, when the caller asks for the ends to be marked (subjects: Exchange writes
//! `Undeliverable:` first and qmail writes exactly `failure notice`, a person may write the
//! words anywhere).
//!
//! The white-space rule costs nothing per byte: a state whose last symbol was white space loops
//! on more white space, which is what reading the collapsed text would do.

/// Each phrase belongs to a group; a match reports the group.
pub type GroupId = u16;

const CLASS_OTHER: u8 = 0;
const CLASS_SPACE: u8 = 1;
const CLASS_START: u8 = 2;
const CLASS_END: u8 = 3;

pub struct Matcher {
    /// Byte to symbol class: uppercase ASCII shares its lowercase letter's class, white space
    /// is one class, bytes in no phrase are `CLASS_OTHER`.
    classes: [u8; 256],
    stride: usize,
    /// `next[state + class]`, states premultiplied by `stride`. States at or above
    /// `first_match` end at least one phrase.
    next: Vec<u32>,
    first_match: u32,
    /// For match state `s`, `out_ranges[(s - first_match) / stride]` is a range of `out_groups`:
    /// the groups of every phrase that ends there (its own and those of its suffixes).
    out_ranges: Vec<(u32, u32)>,
    out_groups: Vec<GroupId>,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// A phrase as the automaton sees it: lowercase, white space runs as one space, trimmed.
pub fn normalise(phrase: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(phrase.len());
    for b in phrase.trim().bytes() {
        let b = b.to_ascii_lowercase();
        if is_space(b) {
            if out.last() != Some(&b' ') {
                out.push(b' ');
            }
        } else {
            out.push(b);
        }
    }
    out
}

impl Matcher {
    /// Builds the automaton for `(phrase, group)` pairs. Empty phrases are ignored.
    pub fn new<'a>(phrases: impl IntoIterator<Item = (&'a str, GroupId)>) -> Matcher {
        let phrases: Vec<(Vec<u8>, bool, bool, GroupId)> = phrases
            .into_iter()
            .filter_map(|(p, g)| {
                let (at_start, p) = p.strip_prefix('^').map_or((false, p), |rest| (true, rest));
                let (at_end, p) = p.strip_suffix('$').map_or((false, p), |rest| (true, rest));
                let text = normalise(p);
                (!text.is_empty()).then_some((text, at_start, at_end, g))
            })
            .collect();

        let mut classes = [CLASS_OTHER; 256];
        let mut count: u8 = 4;
        for (text, _, _, _) in &phrases {
            for &b in text {
                if b == b' ' || classes[b as usize] != CLASS_OTHER {
                    continue;
                }
                classes[b as usize] = count;
                if b.is_ascii_lowercase() {
                    classes[b.to_ascii_uppercase() as usize] = count;
                }
                count = count.checked_add(1).expect("at most 253 distinct phrase bytes");
            }
        }
        for b in [b' ', b'\t', b'\r', b'\n'] {
            classes[b as usize] = CLASS_SPACE;
        }
        let stride = count as usize;
        let symbol = |b: u8| classes[b as usize] as usize;

        // The trie: goto[node * stride + class] (0 = none, the root is node 0), the class that
        // leads into each node, and the groups of phrases ending at each node.
        let mut goto: Vec<u32> = vec![0; stride];
        let mut into: Vec<u8> = vec![CLASS_OTHER];
        let mut ends: Vec<Vec<GroupId>> = vec![Vec::new()];
        for (text, at_start, at_end, group) in &phrases {
            let mut node = 0usize;
            let symbols = at_start
                .then_some(CLASS_START as usize)
                .into_iter()
                .chain(text.iter().map(|&b| symbol(b)))
                .chain(at_end.then_some(CLASS_END as usize));
            for class in symbols {
                let child = goto[node * stride + class] as usize;
                node = if child != 0 {
                    child
                } else {
                    let id = into.len();
                    goto[node * stride + class] = id as u32;
                    goto.extend(std::iter::repeat(0).take(stride));
                    into.push(class as u8);
                    ends.push(Vec::new());
                    id
                };
            }
            if !ends[node].contains(group) {
                ends[node].push(*group);
            }
        }

        // Breadth first: failure links, outputs inherited along them, and the full transition
        // table (a missing edge follows the failure link's transition, known already since
        // that node is shallower).
        let nodes = into.len();
        let mut fail = vec![0usize; nodes];
        let mut next = vec![0u32; nodes * stride];
        let mut order = Vec::with_capacity(nodes);
        let mut queue = std::collections::VecDeque::new();
        for class in 0..stride {
            let child = goto[class] as usize;
            next[class] = child as u32;
            if child != 0 {
                queue.push_back(child);
            }
        }
        order.push(0);
        while let Some(node) = queue.pop_front() {
            order.push(node);
            let inherited = ends[fail[node]].clone();
            for group in inherited {
                if !ends[node].contains(&group) {
                    ends[node].push(group);
                }
            }
            for class in 0..stride {
                let child = goto[node * stride + class] as usize;
                if child != 0 {
                    fail[child] = next[fail[node] * stride + class] as usize;
                    next[node * stride + class] = child as u32;
                    queue.push_back(child);
                } else {
                    next[node * stride + class] = next[fail[node] * stride + class];
                }
            }
            // White space collapses: after a space, more space keeps the state.
            if into[node] == CLASS_SPACE {
                next[node * stride + CLASS_SPACE as usize] = node as u32;
            }
        }

        // Renumber: states without output first (root stays 0), then match states, so the hot
        // loop tests one comparison per byte.
        let mut renumbered = vec![0u32; nodes];
        let (plain, matching): (Vec<usize>, Vec<usize>) = order.iter().partition(|&&n| ends[n].is_empty());
        for (new, &old) in plain.iter().chain(&matching).enumerate() {
            renumbered[old] = (new * stride) as u32;
        }
        let mut table = vec![0u32; nodes * stride];
        for old in 0..nodes {
            let base = renumbered[old] as usize;
            for class in 0..stride {
                table[base + class] = renumbered[next[old * stride + class] as usize];
            }
        }
        let mut out_ranges = Vec::with_capacity(matching.len());
        let mut out_groups = Vec::new();
        for &old in &matching {
            let start = out_groups.len() as u32;
            out_groups.extend_from_slice(&ends[old]);
            out_ranges.push((start, out_groups.len() as u32));
        }
        Matcher {
            classes,
            stride,
            next: table,
            first_match: (plain.len() * stride) as u32,
            out_ranges,
            out_groups,
        }
    }

    /// Runs over `text` and calls `found` with the group of every phrase occurrence, in order
    /// of where it ends; `found` returns true to stop. `anchored` marks the start and the end of
    /// `text` as those `^` and `$` phrases need.
    #[inline]
    pub fn scan(&self, text: &[u8], anchored: bool, mut found: impl FnMut(GroupId) -> bool) {
        let mut state = if anchored { self.next[CLASS_START as usize] } else { 0 };
        for &b in text {
            state = self.next[state as usize + self.classes[b as usize] as usize];
            if state >= self.first_match && self.report(state, &mut found) {
                return;
            }
        }
        if anchored {
            state = self.next[state as usize + CLASS_END as usize];
            if state >= self.first_match {
                self.report(state, &mut found);
            }
        }
    }

    #[cold]
    fn report(&self, state: u32, found: &mut impl FnMut(GroupId) -> bool) -> bool {
        let (start, end) = self.out_ranges[(state - self.first_match) as usize / self.stride];
        self.out_groups[start as usize..end as usize].iter().any(|&g| found(g))
    }

    /// Bytes of the transition table (for the record: it is built once per phrase set).
    pub fn table_bytes(&self) -> usize {
        self.next.len() * size_of::<u32>()
    }
}

/// What the automaton must find, written the slow obvious way: the text collapsed as phrases
/// are, then each phrase looked for at every position. For the tests and the fuzz target.
#[doc(hidden)]
pub fn reference(phrases: &[(&str, GroupId)], text: &[u8], anchored: bool) -> Vec<GroupId> {
    let mut collapsed = Vec::new();
    for &b in text {
        let b = b.to_ascii_lowercase();
        if is_space(b) {
            if collapsed.last() != Some(&b' ') {
                collapsed.push(b' ');
            }
        } else {
            collapsed.push(b);
        }
    }
    let mut found: Vec<GroupId> = phrases
        .iter()
        .filter(|(p, _)| {
            let (at_start, p) = p.strip_prefix('^').map_or((false, *p), |rest| (true, rest));
            let (at_end, p) = p.strip_suffix('$').map_or((false, p), |rest| (true, rest));
            let p = normalise(p);
            if p.is_empty() || (at_start || at_end) && !anchored {
                return false;
            }
            match (at_start, at_end) {
                (true, true) => collapsed == p,
                (true, false) => collapsed.starts_with(&p),
                (false, true) => collapsed.ends_with(&p),
                (false, false) => collapsed.windows(p.len()).any(|w| w == p.as_slice()),
            }
        })
        .map(|(_, g)| *g)
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// The groups the automaton finds, sorted and deduplicated (the reference's form).
#[doc(hidden)]
pub fn found_groups(matcher: &Matcher, text: &[u8], anchored: bool) -> Vec<GroupId> {
    let mut found = Vec::new();
    matcher.scan(text, anchored, |g| {
        found.push(g);
        false
    });
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn automaton(phrases: &[(&str, GroupId)], text: &[u8], anchored: bool) -> Vec<GroupId> {
        found_groups(&Matcher::new(phrases.iter().copied()), text, anchored)
    }

    #[test]
    fn finds_overlapping_phrases_case_and_space_insensitively() {
        let phrases = [("mail delivery failed", 0), ("delivery", 1), ("^undeliverable:", 2), ("able", 3), ("he", 4), ("she", 5), ("^failure notice$", 6)];
        assert_eq!(automaton(&phrases, b"Mail  Delivery\r\n\tFAILED", false), [0, 1]);
        assert_eq!(automaton(&phrases, b"Undeliverable: x", true), [2, 3]);
        assert_eq!(automaton(&phrases, b"Undeliverable: x", false), [3]);
        assert_eq!(automaton(&phrases, b"re: Undeliverable: x", true), [3]);
        assert_eq!(automaton(&phrases, b"ushers", false), [4, 5]);
        assert!(automaton(&phrases, b"", true).is_empty());
        assert_eq!(automaton(&phrases, b"Failure  Notice", true), [6]);
        assert!(automaton(&phrases, b"failure notice handling", true).is_empty());
        assert!(automaton(&phrases, b"failure notice", false).is_empty());
    }

    #[test]
    fn non_ascii_bytes_match_exactly() {
        let phrases = [("unzustellbar", 0), ("недоставленное", 1), ("配信エラー", 2)];
        let text = "Недоставленное / недоставленное, 配信エラー".as_bytes();
        // Uppercase Cyrillic is not folded: the caller lowercases non-ASCII text first.
        assert_eq!(automaton(&phrases, text, false), [1, 2]);
    }

    #[test]
    fn stops_when_asked() {
        let m = Matcher::new([("a", 0), ("b", 1)]);
        let mut seen = Vec::new();
        m.scan(b"abab", false, |g| {
            seen.push(g);
            g == 1
        });
        assert_eq!(seen, [0, 1]);
    }

    /// The automaton against the naive matcher on random phrase sets and texts built from a
    /// small alphabet (so that phrases overlap, repeat and share prefixes and suffixes).
    #[test]
    fn agrees_with_the_naive_matcher() {
        let alphabet = b"abAB  \t\r\n^$:x\xc3\xa9";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut random = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..3000 {
            let count = 1 + random(8);
            let owned: Vec<String> = (0..count)
                .map(|_| {
                    let len = 1 + random(6);
                    let bytes: Vec<u8> = (0..len).map(|_| alphabet[random(alphabet.len())]).collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .collect();
            let phrases: Vec<(&str, GroupId)> = owned.iter().enumerate().map(|(i, p)| (p.as_str(), (i % 4) as GroupId)).collect();
            let len = random(40);
            let text: Vec<u8> = (0..len).map(|_| alphabet[random(alphabet.len())]).collect();
            let anchored = round % 2 == 0;
            assert_eq!(automaton(&phrases, &text, anchored), reference(&phrases, &text, anchored), "{phrases:?} {text:?}");
        }
    }
}
