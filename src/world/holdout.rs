//! Which pages of a corpus are held out as hidden documents: moderate-sized pages one by one, or whole families of pages that share text.
//!
//! A *family* is a connected group of pages that share text: two pages are joined when they share
//! a line of 40 bytes or more, or when at least [`CONTAINMENT`] of the smaller page's distinct
//! 12-word sequences are also in the other. Text that more than [`COMMON`] pages share (a stock
//! sentence, a navigation line) joins nobody: it is boilerplate, not kinship. Holding out whole
//! families means no held-out page has a near-copy on the web, and a random draw of whole families
//! of served pages is drawn the way T is.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::corpus::Doc;

/// How a world draws its hidden documents from a corpus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Holdout {
    /// Pages one by one, in the seed's order.
    #[default]
    Pages,
    /// Whole families of pages, in the seed's order.
    Families,
}

/// The share of the smaller page's 12-word sequences two pages must share to be one family.
pub const CONTAINMENT: f64 = 0.03;
/// Words in one sequence.
pub const SEQUENCE_WORDS: usize = 12;
/// Text shared by more pages than this is boilerplate and joins no family.
pub const COMMON: usize = 50;
/// The shortest line whose repetition joins two pages.
const LINE_BYTES: usize = 40;
/// Smallest page that may be a hidden document.
pub const MIN_DOC: usize = 2_000;

/// Moderate-sized pages, in `order`, until `bytes` of text are held out.
pub(crate) fn hold_out(
    order: &[usize],
    sizes: &[usize],
    bytes: usize,
    max_doc: usize,
) -> Vec<usize> {
    let mut out = Vec::new();
    let mut total = 0;
    for &i in order {
        if total >= bytes {
            break;
        }
        if sizes[i] >= MIN_DOC && sizes[i] <= max_doc {
            out.push(i);
            total += sizes[i];
        }
    }
    out
}

/// What a draw holds out.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Held {
    /// The hidden documents, in draw order.
    pub docs: Vec<usize>,
    /// Every page not served: the hidden documents and the rest of their families.
    pub pages: BTreeSet<usize>,
}

/// Whole families, in the order their first page has in `order`, until `bytes` of hidden
/// documents (pages of `MIN_DOC..=max_doc` bytes) are held out. A family larger than `bytes` in
/// all is never held out: it would take the web with it.
pub(crate) fn hold_out_families(
    order: &[usize],
    family: &[usize],
    sizes: &[usize],
    bytes: usize,
    max_doc: usize,
) -> Held {
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in order {
        members.entry(family[i]).or_default().push(i);
    }
    let mut held = Held::default();
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for &i in order {
        if total >= bytes {
            break;
        }
        if !seen.insert(family[i]) {
            continue;
        }
        let pages = &members[&family[i]];
        let all: usize = pages.iter().map(|&p| sizes[p]).sum();
        let docs: Vec<usize> = pages
            .iter()
            .copied()
            .filter(|&p| sizes[p] >= MIN_DOC && sizes[p] <= max_doc)
            .collect();
        if docs.is_empty() || all > bytes {
            continue;
        }
        total += docs.iter().map(|&p| sizes[p]).sum::<usize>();
        held.docs.extend(docs);
        held.pages.extend(pages.iter().copied());
    }
    held
}

/// The family of every page: the smallest index of its group.
pub fn families(docs: &[Doc]) -> Vec<usize> {
    let keys: Vec<(Vec<u64>, Vec<u64>)> = docs.iter().map(|d| keys(&d.text())).collect();
    let mut owners: HashMap<u64, Vec<u32>> = HashMap::new();
    for (i, (lines, seqs)) in keys.iter().enumerate() {
        for &k in lines.iter().chain(seqs) {
            owners.entry(k).or_default().push(i as u32);
        }
    }
    let mut set = UnionFind::new(docs.len());
    let mut shared: HashMap<(u32, u32), usize> = HashMap::new();
    for (i, (lines, seqs)) in keys.iter().enumerate() {
        let me = i as u32;
        for k in lines {
            let o = &owners[k];
            if o.len() <= COMMON {
                o.iter().for_each(|&j| set.join(i, j as usize));
            }
        }
        for k in seqs {
            let o = &owners[k];
            if o.len() <= COMMON {
                for &j in o.iter().filter(|&&j| j > me) {
                    *shared.entry((me, j)).or_default() += 1;
                }
            }
        }
    }
    for ((a, b), n) in shared {
        let smaller = keys[a as usize].1.len().min(keys[b as usize].1.len());
        if n as f64 >= CONTAINMENT * smaller as f64 {
            set.join(a as usize, b as usize);
        }
    }
    (0..docs.len()).map(|i| set.root(i)).collect()
}

/// The distinct keys of a page's long lines and of its 12-word sequences, sorted.
fn keys(text: &str) -> (Vec<u64>, Vec<u64>) {
    let mut lines: Vec<u64> = text
        .lines()
        .filter(|l| l.len() >= LINE_BYTES)
        .map(|l| fnv(l.as_bytes()) ^ 0x6c69_6e65)
        .collect();
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    let mut seqs: Vec<u64> = words
        .windows(SEQUENCE_WORDS)
        .map(|w| fnv(w.join(" ").as_bytes()))
        .collect();
    for v in [&mut lines, &mut seqs] {
        v.sort_unstable();
        v.dedup();
    }
    (lines, seqs)
}

/// FNV-1a, 64 bits: stable across builds, so worlds are too.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Disjoint sets whose root is always their smallest member.
struct UnionFind(Vec<usize>);

impl UnionFind {
    fn new(n: usize) -> Self {
        Self((0..n).collect())
    }
    fn root(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
    fn join(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.root(a), self.root(b));
        let (lo, hi) = (ra.min(rb), ra.max(rb));
        self.0[hi] = lo;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::corpus::Block;

    fn doc(id: &str, text: &str) -> Doc {
        Doc {
            id: id.into(),
            title: id.into(),
            blocks: vec![Block {
                k: "p".into(),
                t: text.into(),
            }],
            links: vec![],
        }
    }

    /// `n` distinct words, as one text.
    fn prose(tag: &str, n: usize) -> String {
        (0..n)
            .map(|k| format!("{tag}{k}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn pages_that_contain_each_others_text_are_one_family_and_stock_text_joins_nobody() {
        let a = prose("alpha", 400);
        let shared: String = a.split(' ').take(40).collect::<Vec<_>>().join(" ");
        let stock =
            "This sentence is printed at the foot of every page of the manual, word for word";
        let mut docs = vec![
            doc("a", &a),
            doc("b", &format!("{} {shared}", prose("beta", 300))),
            doc("c", &format!("{} {stock}", prose("gamma", 300))),
            doc(
                "line",
                &format!(
                    "{}\nA line of more than forty bytes that two pages share.",
                    prose("delta", 10)
                ),
            ),
            doc(
                "line2",
                &format!(
                    "{}\nA line of more than forty bytes that two pages share.",
                    prose("eps", 10)
                ),
            ),
        ];
        for k in 0..COMMON {
            docs.push(doc(
                &format!("s{k}"),
                &format!("{} {stock}", prose(&format!("z{k}x"), 50)),
            ));
        }
        let f = families(&docs);
        assert_eq!(f[1], f[0], "b holds 40 of a's sequences: one family");
        assert_ne!(f[2], f[0]);
        assert_eq!(f[4], f[3], "a shared long line joins two pages");
        assert_ne!(
            f[2], f[5],
            "a sentence on more than {COMMON} pages joins nobody"
        );
        assert_eq!(f[0], 0, "a family is named by its first page");
    }

    #[test]
    fn whole_families_are_held_out_and_one_too_large_is_passed_over() {
        // Pages 0 and 1 are a family, 2 alone, 3..6 a family too large to hold out.
        let family = [0, 0, 2, 3, 3, 3];
        let sizes = [3_000, 500, 4_000, 90_000, 3_000, 3_000];
        let held = hold_out_families(&[3, 1, 2, 0, 4, 5], &family, &sizes, 5_000, 40_000);
        assert_eq!(
            held.docs,
            vec![0, 2],
            "page 1 is too small to be T, but not served"
        );
        assert_eq!(held.pages, BTreeSet::from([0, 1, 2]));
        let one = hold_out_families(&[1, 0, 2], &family, &sizes, 3_500, 40_000);
        assert_eq!(one.docs, vec![0]);
        assert_eq!(
            one.pages,
            BTreeSet::from([0, 1]),
            "page 2's family is too large for what is left"
        );
    }
}
