//! A private variant of a public corpus: a seeded, consistent renaming of its words, so text recalled from the public original does not match.
//!
//! A *word* is a maximal run of ASCII letters. Each word type (case-folded) that is not kept is
//! renamed to another word type of the same corpus with the same length and a similar frequency:
//! the types of one length are sorted by how often they occur, cut into bands of at most
//! [`BAND`] types, and each band is shuffled by the world's seed into a permutation of itself.
//! The renaming is applied everywhere the corpus's text is (titles, blocks, page ids and links),
//! with each letter keeping the case it had, so `SELECT`, `Select` and `select` stay one word.
//!
//! What this keeps: every byte that is not a letter, every length (a document's bytes are the same
//! number), the word-level sequence structure exactly (a bijection on word types: a word n-gram
//! model sees the same counts under other names) and, closely, the unigram frequencies and the
//! letters' statistics (every name is a word of the same corpus, of the same length and band).
//! What it costs: content words stand where others stood, so the text reads as grammatical
//! nonsense ("the planet statement returns one column of each row"). English function words,
//! words of one or two letters, the domain's own name and the words the sites' paths are built
//! from are kept.

use std::collections::{BTreeMap, BTreeSet};

use super::corpus::{Block, Doc};
use super::generate::Rng;

/// The most word types one band of a permutation holds.
const BAND: usize = 64;
/// A band left with fewer types than this joins the band before it.
const MIN_BAND: usize = 8;

/// English function words and the words site paths are made of: never renamed.
const KEPT: &[&str] = &[
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "although",
    "among",
    "and",
    "another",
    "any",
    "are",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "can",
    "cannot",
    "could",
    "did",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "either",
    "else",
    "every",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "however",
    "into",
    "its",
    "itself",
    "just",
    "may",
    "might",
    "more",
    "most",
    "must",
    "neither",
    "nor",
    "not",
    "now",
    "off",
    "once",
    "one",
    "only",
    "other",
    "others",
    "our",
    "ours",
    "out",
    "over",
    "own",
    "same",
    "shall",
    "she",
    "should",
    "since",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "therefore",
    "these",
    "they",
    "this",
    "those",
    "though",
    "three",
    "through",
    "thus",
    "too",
    "two",
    "under",
    "until",
    "upon",
    "very",
    "was",
    "were",
    "what",
    "when",
    "whenever",
    "where",
    "whether",
    "which",
    "while",
    "who",
    "whom",
    "whose",
    "why",
    "will",
    "with",
    "within",
    "without",
    "would",
    "yet",
    "you",
    "your",
    "yours",
    // what the sites' paths and chrome are made of
    "admin",
    "archive",
    "html",
    "http",
    "https",
    "index",
    "json",
    "page",
    "pages",
    "robots",
    "search",
    "sitemap",
    "txt",
    "wiki",
    "www",
    "xml",
];

/// The renaming of one corpus: case-folded word type → its new name (same length).
pub struct Renaming {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Renaming {
    /// The renaming of `docs` for `seed`, keeping the words of `keep` (the domain's name) too.
    pub fn of(docs: &[Doc], seed: u64, keep: &[&str]) -> Self {
        let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for d in docs {
            for t in texts(d) {
                for w in words(t.as_bytes()) {
                    *counts.entry(w.to_ascii_lowercase()).or_default() += 1;
                }
            }
        }
        let kept: BTreeSet<Vec<u8>> = KEPT
            .iter()
            .chain(keep)
            .flat_map(|k| words(k.as_bytes()).map(<[u8]>::to_ascii_lowercase))
            .collect();
        let mut by_len: BTreeMap<usize, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for (w, n) in counts {
            if w.len() > 2 && !kept.contains(&w) {
                by_len.entry(w.len()).or_default().push((n, w));
            }
        }
        let mut rng = Rng::new(seed, "private");
        let mut map = BTreeMap::new();
        for (_, mut types) in by_len {
            types.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            for band in bands(types.len()) {
                let from: Vec<&Vec<u8>> = types[band].iter().map(|(_, w)| w).collect();
                let mut to = from.clone();
                rng.shuffle(&mut to);
                for (f, t) in from.into_iter().zip(to) {
                    map.insert(f.clone(), t.clone());
                }
            }
        }
        Self { map }
    }

    /// How many word types are renamed (a type may, by chance, keep its own name).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `text` with every renamed word replaced, letter case kept.
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.as_bytes().to_vec();
        let mut i = 0;
        while i < out.len() {
            if !out[i].is_ascii_alphabetic() {
                i += 1;
                continue;
            }
            let start = i;
            while i < out.len() && out[i].is_ascii_alphabetic() {
                i += 1;
            }
            let word = &mut out[start..i];
            if let Some(new) = self.map.get(&word.to_ascii_lowercase()) {
                for (c, n) in word.iter_mut().zip(new) {
                    *c = if c.is_ascii_uppercase() {
                        n.to_ascii_uppercase()
                    } else {
                        *n
                    };
                }
            }
        }
        // Only ASCII letters were replaced by ASCII letters: the bytes are still UTF-8.
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }

    /// `doc` renamed: its id, title, blocks and links.
    pub fn doc(&self, doc: &Doc) -> Doc {
        Doc {
            id: self.apply(&doc.id),
            title: self.apply(&doc.title),
            blocks: doc
                .blocks
                .iter()
                .map(|b| Block {
                    k: b.k.clone(),
                    t: self.apply(&b.t),
                })
                .collect(),
            links: doc.links.iter().map(|l| self.apply(l)).collect(),
        }
    }
}

/// Every text of a page the renaming reads.
fn texts(d: &Doc) -> impl Iterator<Item = &str> {
    [d.id.as_str(), d.title.as_str()]
        .into_iter()
        .chain(d.blocks.iter().map(|b| b.t.as_str()))
        .chain(d.links.iter().map(String::as_str))
}

/// The maximal runs of ASCII letters of `text`.
fn words(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|b| !b.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
}

/// `n` items cut into consecutive bands of at most [`BAND`], none under [`MIN_BAND`] unless it is
/// the only one.
fn bands(n: usize) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> =
        (0..n).step_by(BAND).map(|s| s..(s + BAND).min(n)).collect();
    if out.len() > 1 && out.last().is_some_and(|r| r.len() < MIN_BAND) {
        let last = out.pop().expect("two bands");
        out.last_mut().expect("one band").end = last.end;
    }
    out
}

/// The corpus as the world serves it: every page renamed by one [`Renaming`].
pub fn variant(docs: &[Doc], seed: u64, domain: &str) -> Vec<Doc> {
    let r = Renaming::of(docs, seed, &[domain]);
    docs.iter().map(|d| r.doc(d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, text: &str) -> Doc {
        Doc {
            id: id.into(),
            title: text.split('.').next().unwrap_or("").into(),
            blocks: text
                .split("\n\n")
                .map(|t| Block {
                    k: "p".into(),
                    t: t.into(),
                })
                .collect(),
            links: vec!["lang_select.html".into()],
        }
    }

    fn corpus() -> Vec<Doc> {
        let words = [
            "select", "insert", "update", "delete", "column", "values", "window", "vacuum",
            "pragma", "schema", "virtual", "trigger", "cursor", "record", "commit", "unique",
        ];
        (0..40)
            .map(|i| {
                let body: Vec<String> = (0..30)
                    .map(|k| words[(i * 7 + k * 3) % words.len()].to_string())
                    .collect();
                doc(
                    &format!("lang_{}.html", words[i % words.len()]),
                    &format!(
                        "The {} statement in SQLite. Use SELECT or Select.\n\n{}",
                        words[i % 16],
                        body.join(" the ")
                    ),
                )
            })
            .collect()
    }

    #[test]
    fn the_renaming_is_a_seeded_bijection_that_keeps_every_length_and_non_letter() {
        let docs = corpus();
        let a = variant(&docs, 1, "SQLite");
        assert_eq!(a, variant(&docs, 1, "SQLite"), "fixed by the seed");
        assert_ne!(
            a,
            variant(&docs, 2, "SQLite"),
            "another seed, another variant"
        );
        for (o, v) in docs.iter().zip(&a) {
            let (ot, vt) = (o.text(), v.text());
            assert_eq!(ot.len(), vt.len());
            for (x, y) in ot.bytes().zip(vt.bytes()) {
                assert_eq!(x.is_ascii_alphabetic(), y.is_ascii_alphabetic());
                assert_eq!(x.is_ascii_uppercase(), y.is_ascii_uppercase());
                if !x.is_ascii_alphabetic() {
                    assert_eq!(x, y);
                }
            }
            assert!(
                vt.contains("The ") && vt.contains(" the "),
                "function words stay"
            );
            assert!(vt.contains("SQLite"), "the domain's name stays");
        }
        // One word, one name, whatever its case; distinct words keep distinct names.
        let r = Renaming::of(&docs, 1, &["SQLite"]);
        let sel = r.apply("select");
        assert_eq!(r.apply("SELECT"), sel.to_ascii_uppercase());
        assert_eq!(r.apply("Select")[1..], sel[1..]);
        let names: BTreeSet<String> = [
            "select", "insert", "update", "delete", "column", "values", "window", "vacuum",
        ]
        .iter()
        .map(|w| r.apply(w))
        .collect();
        assert_eq!(names.len(), 8);
        let moved = ["select", "insert", "update", "delete", "column", "values"]
            .iter()
            .filter(|w| r.apply(w) != **w)
            .count();
        assert!(moved >= 3, "most content words are renamed ({moved} of 6)");
        // Ids and links are renamed alike, so links still find their pages.
        let ids: BTreeSet<&str> = a.iter().map(|d| d.id.as_str()).collect();
        assert!(a
            .iter()
            .all(|d| d.links.iter().all(|l| ids.contains(l.as_str()))));
        assert!(a.iter().all(|d| d.id.ends_with(".html")));
    }

    #[test]
    fn bands_are_cut_evenly_and_a_short_tail_joins_the_band_before() {
        assert_eq!(bands(0), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(bands(5), vec![0..5]);
        assert_eq!(bands(64), vec![0..64]);
        assert_eq!(bands(70), vec![0..70]);
        assert_eq!(bands(134), vec![0..64, 64..134]);
        assert_eq!(bands(136), vec![0..64, 64..128, 128..136]);
    }
}
