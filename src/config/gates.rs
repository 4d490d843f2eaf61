//! The pass thresholds of the stages: each gate's key in a suite's `[gates]` table and its default.

use std::collections::BTreeMap;

/// A pass threshold from the suite's `[gates]` table, with the value used when the suite sets none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    pub key: &'static str,
    pub default: f64,
}

impl Gate {
    /// The suite's value, else the default.
    pub fn value(&self, gates: &BTreeMap<String, f64>) -> f64 {
        gates.get(self.key).copied().unwrap_or(self.default)
    }
}

pub const CRAWL_RECALL: Gate = Gate {
    key: "crawl_recall",
    default: 0.5,
};
pub const CRAWL_PRECISION: Gate = Gate {
    key: "crawl_precision",
    default: 0.8,
};
pub const TOKENIZE_BYTES_PER_TOKEN: Gate = Gate {
    key: "tokenize_bytes_per_token",
    default: 2.0,
};
/// L3: verified bpb below this multiple of per-document `xz -9e` on T.
pub const TRAIN_XZ_RATIO: Gate = Gate {
    key: "train_xz_ratio",
    default: 1.0,
};
pub const EVAL_CLAIM_TOLERANCE: Gate = Gate {
    key: "eval_claim_tolerance",
    default: 0.05,
};
pub const EVAL_GENERALISATION_TOLERANCE: Gate = Gate {
    key: "eval_generalisation_tolerance",
    default: 0.10,
};
pub const SELFHOST_BPB_TOLERANCE: Gate = Gate {
    key: "selfhost_bpb_tolerance",
    default: 0.03,
};
