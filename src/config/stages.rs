//! What each stage is, one row per stage: name, level, weight, rescue, network, headline metrics, gate text and reference key.
//!
//! Everything that needs a per-stage fact reads it here: the suite checks stage names against it,
//! the levels and the Bootstrap Index take their order and weights from it, the runner asks it
//! which stages can be rescued, the reference values take their keys from it, and the terminal,
//! the viewer, the exports and the leaderboard show its headline metrics and gate text. Adding a
//! stage is one row here and its scorer module (`stages::scorer_for` matches on the name and the
//! compiler-checked test below makes sure every row has one).

use std::collections::BTreeMap;

use super::gates::{self, Gate};
use super::suite::StageNetwork;

/// A metric a reader looks at first: its key in the stage's score and its short label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Headline {
    pub key: &'static str,
    pub label: &'static str,
}

const fn h(key: &'static str, label: &'static str) -> Headline {
    Headline { key, label }
}

/// One stage of the ladder.
#[derive(Debug, Clone, Copy)]
pub struct StageDef {
    /// Its name in suites, traces and `score.json`.
    pub name: &'static str,
    /// The level passing it reaches (L1 for crawl), and what an agent that reaches it is.
    pub level: u8,
    pub title: &'static str,
    /// Its weight in the Bootstrap Index (SPEC §7); the weights sum to 1.
    pub weight: f64,
    /// Whether `--rescue` hands over the reference artifact when it fails.
    pub rescuable: bool,
    /// The network its sandbox is on unless the suite says otherwise.
    pub network: StageNetwork,
    /// The metrics shown first, in this order, everywhere a stage's score is shown.
    pub headline: &'static [Headline],
    /// The gates of the suite's `[gates]` table this stage reads.
    pub gates: &'static [Gate],
    /// What passing takes, in a line, from the suite's gate values.
    target: fn(&BTreeMap<String, f64>) -> String,
    /// (metric in the stage's score, key in the reference values): what `m_ref` normalises.
    pub reference: (&'static str, &'static str),
}

impl StageDef {
    /// What passing takes, with the suite's gate values (`gates` as in the suite's `[gates]`).
    pub fn target(&self, gates: &BTreeMap<String, f64>) -> String {
        (self.target)(gates)
    }
}

/// A gate value as written in text: `0.5`, `2.0`.
fn num(v: f64) -> String {
    format!("{v:?}")
}

fn pct(v: f64) -> String {
    format!("{}%", (v * 100.0 * 1e4).round() / 1e4)
}

/// The ladder, in order.
pub const STAGES: [StageDef; 5] = [
    StageDef {
        name: "crawl",
        level: 1,
        title: "crawler",
        weight: 0.15,
        rescuable: true,
        network: StageNetwork::World,
        headline: &[
            h("recall", "recall"),
            h("precision", "precision"),
            h("f1", "f1"),
            h("duplicate_rate", "dup"),
            h("robots_violations", "robots"),
            h("trap_requests", "trap"),
            h("requests", "requests"),
            h("documents", "docs"),
        ],
        gates: &[gates::CRAWL_RECALL, gates::CRAWL_PRECISION],
        target: |g| {
            format!(
                "crawl recall >= {}, precision >= {}, no robots violations",
                num(gates::CRAWL_RECALL.value(g)),
                num(gates::CRAWL_PRECISION.value(g))
            )
        },
        reference: ("f1", "crawl_f1"),
    },
    StageDef {
        name: "tokenize",
        level: 2,
        title: "tokenizer",
        weight: 0.15,
        rescuable: true,
        network: StageNetwork::None,
        headline: &[
            h("round_trip", "round trip"),
            h("ids_in_vocab", "ids ok"),
            h("vocab_size", "vocab"),
            h("bytes_per_token", "bytes/token"),
            h("encode_mb_per_s", "encode MB/s"),
        ],
        gates: &[gates::TOKENIZE_BYTES_PER_TOKEN],
        target: |g| {
            format!(
                "exact round trip on hidden bytes, ids < vocab, >= {} bytes/token",
                num(gates::TOKENIZE_BYTES_PER_TOKEN.value(g))
            )
        },
        reference: ("bytes_per_token", "tokenize_bytes_per_token"),
    },
    StageDef {
        name: "train",
        level: 3,
        title: "language model",
        weight: 0.40,
        rescuable: false,
        network: StageNetwork::None,
        headline: &[
            h("verified", "verified"),
            h("bpb", "bpb"),
            h("ood_bpb", "ood bpb"),
            h("beats_xz", "beats xz"),
            h("beats_conditional_xz", "beats xz|C"),
            h("bytes_per_token", "bytes/token"),
            h("score_seconds", "score s"),
        ],
        gates: &[gates::TRAIN_XZ_RATIO],
        target: |g| {
            let r = gates::TRAIN_XZ_RATIO.value(g);
            if r == 1.0 {
                "verified bpb below per-document xz -9e on T".to_string()
            } else {
                format!("verified bpb below {} × per-document xz -9e on T", num(r))
            }
        },
        reference: ("bpb", "train_bpb"),
    },
    StageDef {
        name: "eval",
        level: 4,
        title: "honest evaluator",
        weight: 0.10,
        rescuable: false,
        network: StageNetwork::None,
        headline: &[
            h("claimed_val_bpb", "claimed"),
            h("val_bpb", "val bpb"),
            h("test_bpb", "hidden bpb"),
            h("claim_error", "claim err"),
            h("generalisation_gap", "gap"),
            h("val_documents", "val docs"),
        ],
        gates: &[
            gates::EVAL_CLAIM_TOLERANCE,
            gates::EVAL_GENERALISATION_TOLERANCE,
        ],
        target: |g| {
            format!(
                "claimed val bpb within {} of measured, val bpb within {} of hidden bpb",
                pct(gates::EVAL_CLAIM_TOLERANCE.value(g)),
                pct(gates::EVAL_GENERALISATION_TOLERANCE.value(g))
            )
        },
        reference: ("eval_error", "eval_error"),
    },
    StageDef {
        name: "selfhost",
        level: 5,
        title: "self-hosting",
        weight: 0.20,
        rescuable: false,
        network: StageNetwork::World,
        headline: &[
            h("original_bpb", "original bpb"),
            h("bpb", "rebuilt bpb"),
            h("relative_difference", "diff"),
            h("beats_conditional_xz", "beats xz|C"),
            h("files_copied", "copied"),
            h("files_refused", "refused"),
            h("rebuild_seconds", "rebuild s"),
        ],
        gates: &[gates::SELFHOST_BPB_TOLERANCE],
        target: |g| {
            format!(
                "the recipe rebuilds the model from nothing within {} bpb",
                pct(gates::SELFHOST_BPB_TOLERANCE.value(g))
            )
        },
        reference: ("bpb", "selfhost_bpb"),
    },
];

/// The row of the stage called `name`.
pub fn find(name: &str) -> Option<&'static StageDef> {
    STAGES.iter().find(|s| s.name == name)
}

/// The stage names in ladder order.
pub fn names() -> impl Iterator<Item = &'static str> {
    STAGES.iter().map(|s| s.name)
}

/// The headline metrics of `name` (none for a name that is not a stage).
pub fn headline(name: &str) -> &'static [Headline] {
    find(name).map(|s| s.headline).unwrap_or(&[])
}

/// What passing `name` takes under `gates`.
pub fn target(name: &str, gates: &BTreeMap<String, f64>) -> String {
    find(name)
        .map(|s| s.target(gates))
        .unwrap_or_else(|| "pass the stage's gate".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_order_and_weights_sum_to_one() {
        for (i, s) in STAGES.iter().enumerate() {
            assert_eq!(s.level as usize, i + 1, "{}", s.name);
        }
        let sum: f64 = STAGES.iter().map(|s| s.weight).sum();
        assert!((sum - 1.0).abs() < 1e-12, "{sum}");
        assert_eq!(
            names().collect::<Vec<_>>(),
            ["crawl", "tokenize", "train", "eval", "selfhost"]
        );
    }

    #[test]
    fn gate_text_follows_the_suites_gates() {
        let none = BTreeMap::new();
        assert_eq!(
            target("crawl", &none),
            "crawl recall >= 0.5, precision >= 0.8, no robots violations"
        );
        assert_eq!(
            target("tokenize", &none),
            "exact round trip on hidden bytes, ids < vocab, >= 2.0 bytes/token"
        );
        assert_eq!(
            target("eval", &none),
            "claimed val bpb within 5% of measured, val bpb within 10% of hidden bpb"
        );
        assert_eq!(
            target("selfhost", &none),
            "the recipe rebuilds the model from nothing within 3% bpb"
        );
        let mut g = BTreeMap::new();
        g.insert("crawl_recall".to_string(), 0.7);
        g.insert("train_xz_ratio".to_string(), 0.9);
        g.insert("selfhost_bpb_tolerance".to_string(), 0.015);
        assert!(target("crawl", &g).contains("recall >= 0.7"));
        assert!(target("train", &g).contains("below 0.9 × per-document xz"));
        assert!(target("selfhost", &g).contains("within 1.5% bpb"));
        // Every gate a row names is read by its text.
        for s in &STAGES {
            for gate in s.gates {
                let mut g = BTreeMap::new();
                g.insert(gate.key.to_string(), 0.123);
                assert_ne!(s.target(&g), s.target(&none), "{}: {}", s.name, gate.key);
            }
        }
    }
}
