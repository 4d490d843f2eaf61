//! Verified bits per byte: the `bin/lm` protocol, parsing its answers, and the four checks of SPEC §3.
//!
//! [`verify`] drives one verification through [`Programs`] (each call in a fresh scoring sandbox):
//!
//! 1. `score` on every document (hidden ids, shuffled); the tokens must spell each document exactly
//!    and every logprob must be a finite number ≤ 0;
//! 2. `score` again, in another fresh sandbox, on a few documents drawn after the first answer, under
//!    new ids: the numbers must agree within 1e-6 (determinism);
//! 3. `next` at K positions drawn from fresh randomness after `score` answered: each distribution must
//!    sum to 1 within 1e-3 and give the scored token the scored logprob within 1e-3.
//!
//! The first failure rejects the model with its reason (e.g. `inconsistent: doc t3 position 812:
//! score -2.1000, next -0.3100`). The pure parts ([`parse_score`], [`check_next`], …) are public for
//! the benchmark and the tests.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::sandbox::programs::{json_problem, one_line, ProgramCall, ProgramRun, Programs};

/// Tolerance of the `next` checks (sum and agreement with `score`).
pub(crate) const NEXT_TOLERANCE: f64 = 1e-3;
/// Tolerance of the determinism check.
pub(crate) const REPEAT_TOLERANCE: f64 = 1e-6;
/// A logprob above this is a probability above 1.
const MAX_LOGPROB: f64 = 1e-6;
/// Documents scored a second time for the determinism check.
pub(crate) const REPEATED_DOCS: usize = 2;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A document to score: a name for messages (never shown to the model) and its bytes.
#[derive(Debug, Clone)]
pub struct Doc {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Why a model was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// The program crashed, hung or could not run.
    Failed,
    /// Output lines that are not the protocol.
    Malformed,
    /// Tokens that do not concatenate to the document.
    Spelling,
    /// A logprob that is NaN, infinite or above 0.
    InvalidLogprob,
    NonDeterministic,
    /// A `next` distribution that does not sum to 1.
    Unnormalised,
    /// `next` disagrees with `score` (e.g. a model that peeks ahead).
    Inconsistent,
}

impl RejectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Malformed => "malformed",
            Self::Spelling => "tokens do not spell the text",
            Self::InvalidLogprob => "invalid logprob",
            Self::NonDeterministic => "non-deterministic",
            Self::Unnormalised => "unnormalised",
            Self::Inconsistent => "inconsistent",
        }
    }
}

/// A rejection: its kind and the exact place and numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: RejectKind,
    pub detail: String,
    /// Where in `detail` a quote of the program's output (or of the document) begins: it is cut off
    /// when the documents include hidden ones ([`Rejection::shown`]).
    #[serde(skip)]
    quote_at: Option<usize>,
}

impl Rejection {
    pub fn new(kind: RejectKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            quote_at: None,
        }
    }

    /// `detail`, then `: ` and a quote of what the program printed (or of the document's text).
    fn quoting(mut self, quote: impl std::fmt::Display) -> Self {
        self.quote_at = Some(self.detail.len());
        self.detail = format!("{}: {quote}", self.detail);
        self
    }

    /// The rejection as a message may show it: without its quote when the call read hidden data
    /// (the program's output on it can carry hidden text into the trace, score.json and the verdict).
    pub fn shown(mut self, hidden: bool) -> Self {
        if let (true, Some(at)) = (hidden, self.quote_at.take()) {
            self.detail.truncate(at);
        }
        self
    }

    /// Another kind, `prefix` before the detail (its quote kept apart).
    fn prefixed(mut self, kind: RejectKind, prefix: &str) -> Self {
        self.kind = kind;
        self.detail.insert_str(0, prefix);
        self.quote_at = self.quote_at.map(|at| at + prefix.len());
        self
    }

    /// The kind alone, with no detail taken from hidden documents or the program's output on them.
    pub fn public(&self) -> String {
        let what = match self.kind {
            RejectKind::Failed => "a call crashed, hung, ran out of memory or could not run",
            RejectKind::Malformed => "its output did not follow the protocol",
            RejectKind::Spelling => "its tokens did not spell a text exactly",
            RejectKind::InvalidLogprob => "a logprob was NaN, infinite or above 0",
            RejectKind::NonDeterministic => "scoring the same document twice gave other numbers",
            RejectKind::Unnormalised => "a `next` distribution did not sum to 1",
            RejectKind::Inconsistent => "`next` disagreed with `score`",
        };
        format!("{} ({what})", self.kind.as_str())
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

fn reject(kind: RejectKind, detail: impl Into<String>) -> Rejection {
    Rejection::new(kind, detail)
}

/// One document as `score` answered: token boundaries (end offsets) and logprobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub ends: Vec<u32>,
    pub logprobs: Vec<f64>,
}

impl Scored {
    /// −Σ logprobs / ln 2.
    pub fn bits(&self) -> f64 {
        -self.logprobs.iter().sum::<f64>() / std::f64::consts::LN_2
    }

    fn token<'a>(&self, doc: &'a [u8], i: usize) -> &'a [u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &doc[start..self.ends[i] as usize]
    }
}

/// The `score` input: one `{"id", "text_b64"}` line per document, under the given ids.
pub fn score_input<'a>(docs: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, bytes) in docs {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"id": id, "text_b64": B64.encode(bytes)}),
        )
        .expect("in-memory json");
        out.push(b'\n');
    }
    out
}

#[derive(Deserialize)]
struct ScoreLine<'a> {
    #[serde(default)]
    id: serde_json::Value,
    #[serde(borrow, default)]
    tokens_b64: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    logprobs: Option<Vec<f64>>,
    #[serde(default)]
    error: Option<String>,
}

/// What a line that failed to parse probably is; serde's message and the line are its quote.
fn bad_json(label: &str, line_no: usize, line: &[u8], e: &serde_json::Error) -> Rejection {
    let at = format!("{label} output line {line_no}");
    if ["NaN", "Infinity"]
        .iter()
        .any(|w| line.windows(w.len()).any(|x| x == w.as_bytes()))
    {
        let what = format!("{at} holds NaN or Infinity; logprobs must be finite numbers");
        return reject(RejectKind::InvalidLogprob, what);
    }
    let text = String::from_utf8_lossy(&line[..line.len().min(200)]);
    let what = format!("{at} is not the protocol ({})", json_problem(e));
    reject(RejectKind::Malformed, what).quoting(format_args!("{e}: {text:?}"))
}

/// A quoted token (or other string) of the program's output, on one line and short.
fn quoted(s: &str) -> String {
    format!("{:?}", one_line(s, 40))
}

/// An id the program answered, as a quote.
fn id_of(id: &serde_json::Value) -> String {
    format!("id {}", one_line(&id.to_string(), 80))
}

/// The non-empty lines of an output.
fn lines(out: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    out.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
}

/// Parses `score`'s output for documents sent under `ids` (answers may come in any order): every id
/// answered once, tokens spelling the document exactly, one finite logprob ≤ 0 per token.
pub fn parse_score(
    label: &str,
    out: &[u8],
    ids: &[&str],
    docs: &[&Doc],
) -> Result<Vec<Scored>, Rejection> {
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut scored: Vec<Option<Scored>> = vec![None; ids.len()];
    let mut scratch = Vec::new();
    for (line_no, line) in lines(out) {
        let parsed: ScoreLine =
            serde_json::from_slice(line).map_err(|e| bad_json(label, line_no, line, &e))?;
        let id = parsed.id.as_str().unwrap_or_default();
        let Some(&i) = index.get(id) else {
            let what = format!("{label} output line {line_no} answers an id which was not asked");
            return Err(reject(RejectKind::Malformed, what).quoting(id_of(&parsed.id)));
        };
        let doc = docs[i];
        if let Some(e) = parsed.error {
            let what = format!("{label} reported an error on doc {}", doc.name);
            return Err(reject(RejectKind::Failed, what).quoting(one_line(&e, 300)));
        }
        let (Some(tokens), Some(logprobs)) = (parsed.tokens_b64, parsed.logprobs) else {
            return Err(reject(
                RejectKind::Malformed,
                format!(
                    "{label} output line {line_no} (doc {}) lacks tokens_b64 or logprobs",
                    doc.name
                ),
            ));
        };
        if scored[i].is_some() {
            return Err(reject(
                RejectKind::Malformed,
                format!("{label} answered doc {} twice (line {line_no})", doc.name),
            ));
        }
        if tokens.len() != logprobs.len() {
            return Err(reject(
                RejectKind::Malformed,
                format!(
                    "{label}: doc {} has {} tokens but {} logprobs",
                    doc.name,
                    tokens.len(),
                    logprobs.len()
                ),
            ));
        }
        let mut ends = Vec::with_capacity(tokens.len());
        let mut at = 0usize;
        for (t, tok) in tokens.iter().enumerate() {
            scratch.clear();
            if B64.decode_vec(tok.as_bytes(), &mut scratch).is_err() {
                let what = format!("{label}: doc {} token {t} is not base64", doc.name);
                return Err(reject(RejectKind::Malformed, what).quoting(quoted(tok)));
            }
            if scratch.is_empty() {
                return Err(reject(
                    RejectKind::Spelling,
                    format!("doc {} token {t} is empty", doc.name),
                ));
            }
            let end = at + scratch.len();
            if end > doc.bytes.len() || doc.bytes[at..end] != scratch[..] {
                let rest = &doc.bytes[at.min(doc.bytes.len())..];
                let k = rest
                    .iter()
                    .zip(&scratch)
                    .take_while(|(a, b)| a == b)
                    .count();
                let expected = rest
                    .get(k)
                    .map_or("the end of the text".into(), |b| format!("0x{b:02x}"));
                return Err(reject(
                    RejectKind::Spelling,
                    format!("doc {} byte {}", doc.name, at + k),
                )
                .quoting(format_args!(
                    "the text has {expected}, token {t} has 0x{:02x}",
                    scratch[k.min(scratch.len() - 1)]
                )));
            }
            at = end;
            ends.push(end as u32);
        }
        if at != doc.bytes.len() {
            return Err(reject(
                RejectKind::Spelling,
                format!(
                    "doc {}: the tokens spell {at} of its {} bytes",
                    doc.name,
                    doc.bytes.len()
                ),
            ));
        }
        if let Some((t, lp)) = logprobs
            .iter()
            .enumerate()
            .find(|(_, lp)| !lp.is_finite() || **lp > MAX_LOGPROB)
        {
            return Err(reject(
                RejectKind::InvalidLogprob,
                format!(
                    "doc {} token {t}: logprob {lp:.4} (a probability above 1)",
                    doc.name
                ),
            ));
        }
        scored[i] = Some(Scored { ends, logprobs });
    }
    scored
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.ok_or_else(|| {
                reject(
                    RejectKind::Malformed,
                    format!(
                        "{label} gave no answer for doc {} (of {} asked)",
                        docs[i].name,
                        ids.len()
                    ),
                )
            })
        })
        .collect()
}

/// Compares a second scoring of a document with the first.
pub(crate) fn check_repeat(doc: &Doc, first: &Scored, again: &Scored) -> Result<(), Rejection> {
    if let Some(t) = first.ends.iter().zip(&again.ends).position(|(a, b)| a != b) {
        return Err(reject(
            RejectKind::NonDeterministic,
            format!(
                "doc {} was tokenised differently the second time, from token {t}",
                doc.name
            ),
        ));
    }
    for (t, (a, b)) in first.logprobs.iter().zip(&again.logprobs).enumerate() {
        if (a - b).abs() > REPEAT_TOLERANCE {
            return Err(reject(
                RejectKind::NonDeterministic,
                format!(
                    "doc {} token {t}: logprob {a:.6} the first time, {b:.6} the second",
                    doc.name
                ),
            ));
        }
    }
    Ok(())
}

/// A checked position: document index (into the scored docs) and token index.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub doc: usize,
    pub token: usize,
}

/// K distinct positions over all tokens of `scored`, uniformly (all of them when there are fewer).
pub fn draw_positions(rng: &mut impl Rng, scored: &[&Scored], k: usize) -> Vec<Position> {
    let mut starts = Vec::with_capacity(scored.len());
    let mut total = 0usize;
    for s in scored {
        starts.push(total);
        total += s.ends.len();
    }
    let mut picks: Vec<usize> = if total <= k {
        (0..total).collect()
    } else {
        rand::seq::index::sample(rng, total, k).into_vec()
    };
    picks.sort_unstable();
    picks
        .into_iter()
        .map(|g| {
            let doc = starts.partition_point(|&s| s <= g) - 1;
            Position {
                doc,
                token: g - starts[doc],
            }
        })
        .collect()
}

/// The `next` input: `{"id": "q<i>", "context_b64": [tokens before the position]}` per position.
pub fn next_input(positions: &[Position], docs: &[&Doc], scored: &[&Scored]) -> Vec<u8> {
    let mut out = Vec::new();
    for (q, p) in positions.iter().enumerate() {
        let s = scored[p.doc];
        let doc = &docs[p.doc].bytes;
        out.extend_from_slice(format!("{{\"id\":\"q{q}\",\"context_b64\":[").as_bytes());
        for i in 0..p.token {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(B64.encode(s.token(doc, i)).as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b"]}\n");
    }
    out
}

#[derive(Deserialize)]
struct NextLine<'a> {
    #[serde(default)]
    id: serde_json::Value,
    #[serde(borrow, default)]
    dist: Option<Vec<(Cow<'a, str>, f64)>>,
    #[serde(default)]
    error: Option<String>,
}

/// What `next` said at one position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NextCheck {
    pub doc: usize,
    pub token: usize,
    pub score_logprob: f64,
    pub next_logprob: f64,
    pub sum: f64,
}

/// Checks `next`'s answers at `positions`: each a distribution summing to 1 that agrees with `score`.
pub fn check_next(
    out: &[u8],
    positions: &[Position],
    docs: &[&Doc],
    scored: &[&Scored],
) -> Result<Vec<NextCheck>, Rejection> {
    let mut checks: Vec<Option<NextCheck>> = vec![None; positions.len()];
    let mut scratch = Vec::new();
    for (line_no, line) in lines(out) {
        let parsed: NextLine =
            serde_json::from_slice(line).map_err(|e| bad_json("next", line_no, line, &e))?;
        let q = parsed
            .id
            .as_str()
            .and_then(|s| s.strip_prefix('q'))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&q| q < positions.len());
        let Some(q) = q else {
            let what = format!("next output line {line_no} answers an id which was not asked");
            return Err(reject(RejectKind::Malformed, what).quoting(id_of(&parsed.id)));
        };
        let p = positions[q];
        let doc = docs[p.doc];
        let here = format!("doc {} position {}", doc.name, p.token);
        if let Some(e) = parsed.error {
            let what = format!("next reported an error at {here}");
            return Err(reject(RejectKind::Failed, what).quoting(one_line(&e, 300)));
        }
        let Some(dist) = parsed.dist else {
            return Err(reject(
                RejectKind::Malformed,
                format!("next output line {line_no} ({here}) has no dist"),
            ));
        };
        if checks[q].is_some() {
            return Err(reject(
                RejectKind::Malformed,
                format!("next answered {here} twice"),
            ));
        }
        let actual = scored[p.doc].token(&doc.bytes, p.token);
        // The decoder accepts only canonical base64, so equal strings are equal tokens.
        let actual_b64 = B64.encode(actual);
        let mut sum = 0.0f64;
        let mut found = None;
        let mut seen: HashSet<&str> = HashSet::with_capacity(dist.len());
        for (tok, lp) in &dist {
            if !lp.is_finite() || *lp > MAX_LOGPROB {
                let what = format!("next at {here}: logprob {lp:.4} for a token");
                return Err(reject(RejectKind::InvalidLogprob, what).quoting(quoted(tok)));
            }
            scratch.clear();
            if B64.decode_vec(tok.as_bytes(), &mut scratch).is_err() || scratch.is_empty() {
                let what = format!("next at {here}: a token is not base64 of one or more bytes");
                return Err(reject(RejectKind::Malformed, what).quoting(quoted(tok)));
            }
            if !seen.insert(tok) {
                let what = format!("next at {here}: a token appears twice in the distribution");
                return Err(reject(RejectKind::Malformed, what).quoting(quoted(tok)));
            }
            sum += lp.exp();
            if *tok == actual_b64 {
                found = Some(*lp);
            }
        }
        let score_lp = scored[p.doc].logprobs[p.token];
        if (sum - 1.0).abs() > NEXT_TOLERANCE {
            return Err(reject(
                RejectKind::Unnormalised,
                format!("{here}: next's probabilities sum to {sum:.6}"),
            ));
        }
        let Some(next_lp) = found else {
            let what =
                format!("{here}: score gave its token logprob {score_lp:.4}, next leaves it out");
            return Err(reject(RejectKind::Inconsistent, what).quoting(quoted(&actual_b64)));
        };
        if (next_lp - score_lp).abs() > NEXT_TOLERANCE {
            return Err(reject(
                RejectKind::Inconsistent,
                format!("{here}: score {score_lp:.4}, next {next_lp:.4}"),
            ));
        }
        checks[q] = Some(NextCheck {
            doc: p.doc,
            token: p.token,
            score_logprob: score_lp,
            next_logprob: next_lp,
            sum,
        });
    }
    checks
        .into_iter()
        .enumerate()
        .map(|(q, c)| {
            c.ok_or_else(|| {
                let p = positions[q];
                reject(
                    RejectKind::Malformed,
                    format!(
                        "next gave no answer for doc {} position {}",
                        docs[p.doc].name, p.token
                    ),
                )
            })
        })
        .collect()
}

/// One program call as the trace records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRecord {
    pub label: String,
    pub seconds: f64,
    pub program_seconds: f64,
    pub cpu_seconds: f64,
    pub max_rss_kb: u64,
    pub stdin_bytes: u64,
    pub stdout_bytes: u64,
}

impl CallRecord {
    fn of(call: &ProgramCall, run: &ProgramRun) -> Self {
        Self {
            label: call.label.clone(),
            seconds: run.seconds,
            program_seconds: run.program_seconds,
            cpu_seconds: run.outcome.cpu_seconds,
            max_rss_kb: run.outcome.max_rss_kb,
            stdin_bytes: call.stdin.len() as u64,
            stdout_bytes: run.stdout_total,
        }
    }
}

/// What to verify: the graded documents, extra documents scored alongside (reported, not checked by
/// `next`), and the knobs.
pub struct VerifyPlan {
    pub docs: Vec<Doc>,
    pub extra: Vec<Doc>,
    pub positions: usize,
    pub timeout: Duration,
    /// Fresh randomness for the hidden ids, the repeated documents and the positions.
    pub seed: u64,
    /// The command prefix (`./bin/lm`).
    pub program: String,
    /// The documents include hidden ones: no stderr of the program goes into a message.
    pub hidden: bool,
}

/// A model that passed: its numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verified {
    pub bpb: f64,
    pub bits: f64,
    pub bytes: u64,
    pub tokens: u64,
    /// Bits per byte of the extra documents (out-of-domain), when there were any.
    pub extra_bpb: Option<f64>,
    /// Per graded document: name, bytes, tokens, bits per byte.
    pub per_doc: Vec<(String, u64, u64, f64)>,
    pub checks: Vec<NextCheck>,
    pub max_next_diff: f64,
    pub max_sum_error: f64,
    pub repeated: Vec<String>,
}

/// The outcome of [`verify`]: the verdict plus everything the trace records about how it was reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    pub result: Result<Verified, Rejection>,
    pub seed: u64,
    pub positions: Vec<(String, usize)>,
    pub calls: Vec<CallRecord>,
    /// Harness-side time: the verification's wall time less its program calls (building inputs,
    /// parsing, checking, arithmetic).
    pub harness_seconds: f64,
    /// Set when the scoring sandbox itself failed (a harness problem, not the model's).
    pub sandbox_error: Option<String>,
}

impl Verification {
    /// How the verdict was reached, as the trace records it: the seed, the positions, every call,
    /// the harness's own time.
    pub fn record(&self) -> serde_json::Value {
        serde_json::json!({
            "seed": self.seed,
            "positions": self.positions,
            "calls": self.calls,
            "harness_seconds": crate::trace::round(self.harness_seconds, 6),
        })
    }

    /// The stage score of a model that did not verify: `rejected` (`error` when the scoring sandbox
    /// itself failed), scored 0, with `record` and the rejection under `verification` in `metrics`.
    pub fn rejected(
        &self,
        rej: &Rejection,
        mut metrics: serde_json::Map<String, serde_json::Value>,
        mut record: serde_json::Value,
        reason: String,
    ) -> crate::trace::StageScore {
        record["rejection"] = serde_json::json!(rej);
        metrics.insert("verified".into(), serde_json::json!(false));
        metrics.insert("verification".into(), record);
        let status = if self.sandbox_error.is_some() {
            "error"
        } else {
            "rejected"
        };
        crate::trace::StageScore::zero(status, reason)
            .with_metrics(metrics)
            .with_public(format!(
                "bin/lm was rejected on the hidden documents: {}",
                rej.public()
            ))
    }

    /// The program time of the (first) `score` call.
    pub fn score_seconds(&self) -> Option<f64> {
        self.calls
            .iter()
            .find(|c| c.label == "score")
            .map(|c| c.program_seconds)
    }
}

/// Runs one call; a sandbox failure becomes `Err(message)`, a misbehaving program `Ok(Err(rejection))`.
async fn call(
    programs: &dyn Programs,
    v: &mut Verification,
    plan: &VerifyPlan,
    (label, verb): (&str, &str),
    stdin: Vec<u8>,
) -> Result<Result<ProgramRun, Rejection>, String> {
    let c = ProgramCall {
        label: label.into(),
        cmd: format!("{} {verb}", plan.program),
        stdin,
        timeout: plan.timeout,
        hidden: plan.hidden,
    };
    let run = programs
        .run(&c)
        .await
        .map_err(|e| format!("scoring sandbox for {label}: {e}"))?;
    v.calls.push(CallRecord::of(&c, &run));
    Ok(match run.failure(&c) {
        Some(f) => Err(reject(RejectKind::Failed, f)),
        None => Ok(run),
    })
}

/// Verifies a model on `plan.docs` (see the module docs for the procedure).
pub async fn verify(programs: &dyn Programs, plan: &VerifyPlan) -> Verification {
    let mut v = Verification {
        result: Err(reject(RejectKind::Failed, "not run")),
        seed: plan.seed,
        positions: vec![],
        calls: vec![],
        harness_seconds: 0.0,
        sandbox_error: None,
    };
    let started = Instant::now();
    match verify_inner(programs, plan, &mut v).await {
        Ok(r) => v.result = r.map_err(|rej| rej.shown(plan.hidden)),
        Err(e) => {
            v.result = Err(reject(RejectKind::Failed, e.clone()));
            v.sandbox_error = Some(e);
        }
    }
    // Everything but the program calls (their containers included) is the harness's own work.
    let calls: f64 = v.calls.iter().map(|c| c.seconds).sum();
    v.harness_seconds = (started.elapsed().as_secs_f64() - calls).max(0.0);
    v
}

/// Unwraps a check's result, or returns its rejection as the verdict.
macro_rules! or_reject {
    ($e:expr) => {
        match $e {
            Ok(x) => x,
            Err(rej) => return Ok(Err(rej)),
        }
    };
}

async fn verify_inner(
    programs: &dyn Programs,
    plan: &VerifyPlan,
    v: &mut Verification,
) -> Result<Result<Verified, Rejection>, String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed);
    let all: Vec<&Doc> = plan.docs.iter().chain(&plan.extra).collect();
    let n = plan.docs.len();
    // Hidden, shuffled ids: the model cannot tell T from the extra documents or find them again.
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.shuffle(&mut rng);
    let ids: Vec<String> = (0..all.len())
        .map(|i| format!("d{}", order[i] + 1))
        .collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut send: Vec<usize> = (0..all.len()).collect();
    send.sort_by_key(|&i| order[i]);
    let input = score_input(
        send.iter()
            .map(|&i| (ids[i].as_str(), all[i].bytes.as_slice())),
    );

    let run = or_reject!(call(programs, v, plan, ("score", "score"), input).await?);
    let scored = or_reject!(parse_score("score", &run.stdout, &id_refs, &all));
    drop(run);
    // Drawn only now, after `score` has answered.
    let graded: Vec<&Scored> = scored[..n].iter().collect();
    let docs: Vec<&Doc> = all[..n].to_vec();
    let positions = draw_positions(&mut rng, &graded, plan.positions);
    v.positions = positions
        .iter()
        .map(|p| (docs[p.doc].name.clone(), p.token))
        .collect();
    let mut repeat: Vec<usize> = (0..n).collect();
    repeat.shuffle(&mut rng);
    repeat.truncate(REPEATED_DOCS);
    let repeat_ids: Vec<String> = (0..repeat.len())
        .map(|i| format!("r{}{}", i + 1, rng.random_range(100..1000)))
        .collect();
    let repeat_input = score_input(
        repeat
            .iter()
            .zip(&repeat_ids)
            .map(|(&d, id)| (id.as_str(), docs[d].bytes.as_slice())),
    );

    if !repeat.is_empty() {
        let again =
            or_reject!(call(programs, v, plan, ("score again", "score"), repeat_input).await?);
        let rdocs: Vec<&Doc> = repeat.iter().map(|&d| docs[d]).collect();
        let rids: Vec<&str> = repeat_ids.iter().map(String::as_str).collect();
        // Tokens that spelled the text the first time and not now are a non-deterministic model.
        let second = or_reject!(
            parse_score("score (second time)", &again.stdout, &rids, &rdocs).map_err(|rej| {
                match rej.kind {
                    RejectKind::Spelling => {
                        rej.prefixed(RejectKind::NonDeterministic, "the second scoring: ")
                    }
                    _ => rej,
                }
            })
        );
        for (k, &d) in repeat.iter().enumerate() {
            or_reject!(check_repeat(docs[d], graded[d], &second[k]));
        }
    }
    let next_in = next_input(&positions, &docs, &graded);
    let checks = if positions.is_empty() {
        vec![]
    } else {
        let next = or_reject!(call(programs, v, plan, ("next", "next"), next_in).await?);
        or_reject!(check_next(&next.stdout, &positions, &docs, &graded))
    };
    let verified = summarise(
        &docs,
        &graded,
        &all[n..],
        &scored[n..],
        checks,
        repeat.iter().map(|&d| docs[d].name.clone()).collect(),
    );
    Ok(Ok(verified))
}

/// The bits-per-byte arithmetic over verified answers.
pub fn summarise(
    docs: &[&Doc],
    scored: &[&Scored],
    extra_docs: &[&Doc],
    extra: &[Scored],
    checks: Vec<NextCheck>,
    repeated: Vec<String>,
) -> Verified {
    let mut bits = 0.0;
    let mut bytes = 0u64;
    let mut tokens = 0u64;
    let mut per_doc = Vec::new();
    for (d, s) in docs.iter().zip(scored) {
        let b = s.bits();
        bits += b;
        bytes += d.bytes.len() as u64;
        tokens += s.ends.len() as u64;
        per_doc.push((
            d.name.clone(),
            d.bytes.len() as u64,
            s.ends.len() as u64,
            b / d.bytes.len().max(1) as f64,
        ));
    }
    let extra_bytes: u64 = extra_docs.iter().map(|d| d.bytes.len() as u64).sum();
    let extra_bpb =
        (extra_bytes > 0).then(|| extra.iter().map(Scored::bits).sum::<f64>() / extra_bytes as f64);
    let max_next_diff = checks
        .iter()
        .map(|c| (c.next_logprob - c.score_logprob).abs())
        .fold(0.0, f64::max);
    let max_sum_error = checks
        .iter()
        .map(|c| (c.sum - 1.0).abs())
        .fold(0.0, f64::max);
    Verified {
        bpb: if bytes == 0 { 0.0 } else { bits / bytes as f64 },
        bits,
        bytes,
        tokens,
        extra_bpb,
        per_doc,
        checks,
        max_next_diff,
        max_sum_error,
        repeated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(name: &str, text: &str) -> Doc {
        Doc {
            name: name.into(),
            bytes: text.as_bytes().to_vec(),
        }
    }

    fn line(id: &str, toks: &[&[u8]], lps: &[f64]) -> String {
        let t: Vec<String> = toks.iter().map(|t| B64.encode(t)).collect();
        serde_json::json!({"id": id, "tokens_b64": t, "logprobs": lps}).to_string() + "\n"
    }

    /// Each input line's id and text (the documents, decoded), answered by `f`, one line each.
    fn echo(stdin: &[u8], f: fn(&str, &str) -> String) -> Vec<u8> {
        let mut out = String::new();
        for l in stdin.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            let text = B64.decode(v["text_b64"].as_str().unwrap_or("")).unwrap();
            out += &f(v["id"].as_str().unwrap(), &String::from_utf8_lossy(&text));
            out.push('\n');
        }
        out.into_bytes()
    }

    /// A program that puts the documents it reads into its answers, in every way a line can fail:
    /// the reason quotes its output on the agent's own data, never on hidden data.
    #[tokio::test]
    async fn output_on_hidden_data_is_never_quoted() {
        use crate::sandbox::programs::{Answer, Answering};
        let secret = "SECRET hidden words of a test document";
        let answers: [Answer; 6] = [
            |_, i| echo(i, |_, t| t.to_string()),
            |_, i| echo(i, |id, t| json!({"id": id, "tokens_b64": t}).to_string()),
            |_, i| echo(i, |_, t| json!({"id": t}).to_string()),
            |_, i| echo(i, |id, t| json!({"id": id, "error": t}).to_string()),
            |_, i| {
                echo(i, |id, t| {
                    json!({"id": id, "tokens_b64": [t], "logprobs": [-1.0]}).to_string()
                })
            },
            // One token per document, which `next` then leaves out: the token is the document.
            |cmd, i| match cmd.ends_with("next") {
                true => echo(i, |id, _| {
                    json!({"id": id, "dist": [["AA==", 0.0]]}).to_string()
                }),
                false => echo(i, |id, t| {
                    json!({"id": id, "tokens_b64": [B64.encode(t)], "logprobs": [-1.0]}).to_string()
                }),
            },
        ];
        let b64 = B64.encode(secret);
        for (n, answer) in answers.into_iter().enumerate() {
            for hidden in [true, false] {
                let plan = VerifyPlan {
                    docs: vec![doc("t1", secret)],
                    extra: vec![],
                    positions: 4,
                    timeout: Duration::from_secs(5),
                    seed: 7,
                    program: "./bin/lm".into(),
                    hidden,
                };
                let rej = verify(&Answering(answer), &plan).await.result.unwrap_err();
                let said = rej.to_string();
                let quoted = said.contains("SECRET") || said.contains(&b64[b64.len() - 20..]);
                assert_eq!(quoted, !hidden, "answer {n}, hidden {hidden}: {said}");
                assert!(said.contains("line 1") || said.contains("doc t1"), "{said}");
            }
        }
    }

    #[test]
    fn score_lines_are_matched_by_id_and_must_spell_the_text() {
        let a = doc("a", "hi!");
        let b = doc("b", "yo");
        let docs = [&a, &b];
        let out =
            line("x2", &[b"y", b"o"], &[-1.0, -2.0]) + &line("x1", &[b"hi", b"!"], &[-0.5, -0.25]);
        let s = parse_score("score", out.as_bytes(), &["x1", "x2"], &docs).unwrap();
        assert_eq!(s[0].ends, vec![2, 3]);
        assert!((s[1].bits() - 3.0 / std::f64::consts::LN_2).abs() < 1e-12);

        let wrong = line("x1", &[b"hI", b"!"], &[-0.5, -0.25]) + &line("x2", &[b"yo"], &[-1.0]);
        let e = parse_score("score", wrong.as_bytes(), &["x1", "x2"], &docs).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tokens do not spell the text: doc a byte 1: the text has 0x69, token 0 has 0x49"
        );
        let short = line("x1", &[b"hi"], &[-0.5]) + &line("x2", &[b"yo"], &[-1.0]);
        let e = parse_score("score", short.as_bytes(), &["x1", "x2"], &docs).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tokens do not spell the text: doc a: the tokens spell 2 of its 3 bytes"
        );
        let missing = line("x1", &[b"hi!"], &[-0.5]);
        let e = parse_score("score", missing.as_bytes(), &["x1", "x2"], &docs).unwrap_err();
        assert_eq!(e.kind, RejectKind::Malformed);
        assert!(e.detail.contains("no answer for doc b"), "{e}");
        let nan = "{\"id\":\"x1\",\"tokens_b64\":[\"aGkh\"],\"logprobs\":[NaN]}\n";
        let e = parse_score("score", nan.as_bytes(), &["x1"], &[&a]).unwrap_err();
        assert_eq!(e.kind, RejectKind::InvalidLogprob);
        let pos = line("x1", &[b"hi!"], &[0.5]);
        let e = parse_score("score", pos.as_bytes(), &["x1"], &[&a]).unwrap_err();
        assert_eq!(e.kind, RejectKind::InvalidLogprob);
        let garbage = "hello\n";
        let e = parse_score("score", garbage.as_bytes(), &["x1"], &[&a]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("malformed: score output line 1 is not the protocol"),
            "{e}"
        );
    }

    #[test]
    fn positions_are_distinct_and_cover_small_inputs() {
        let s1 = Scored {
            ends: (1..=10).collect(),
            logprobs: vec![-1.0; 10],
        };
        let s2 = Scored {
            ends: (1..=5).collect(),
            logprobs: vec![-1.0; 5],
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let all = draw_positions(&mut rng, &[&s1, &s2], 64);
        assert_eq!(all.len(), 15);
        assert_eq!(all[10], Position { doc: 1, token: 0 });
        let some = draw_positions(&mut rng, &[&s1, &s2], 4);
        assert_eq!(some.len(), 4);
        assert!(some
            .windows(2)
            .all(|w| (w[0].doc, w[0].token) < (w[1].doc, w[1].token)));
    }

    #[test]
    fn next_must_sum_to_one_and_agree_with_score() {
        let d = doc("t1", "ab");
        let s = Scored {
            ends: vec![1, 2],
            logprobs: vec![(0.5f64).ln(), (0.25f64).ln()],
        };
        let pos = [Position { doc: 0, token: 1 }];
        let input = next_input(&pos, &[&d], &[&s]);
        assert_eq!(
            String::from_utf8(input).unwrap(),
            "{\"id\":\"q0\",\"context_b64\":[\"YQ==\"]}\n"
        );
        let dist = |pairs: &[(&[u8], f64)]| {
            let v: Vec<(String, f64)> =
                pairs.iter().map(|(t, p)| (B64.encode(t), p.ln())).collect();
            serde_json::json!({"id": "q0", "dist": v}).to_string()
        };
        let good = dist(&[(b"a", 0.5), (b"b", 0.25), (b"c", 0.25)]);
        let c = check_next(good.as_bytes(), &pos, &[&d], &[&s]).unwrap();
        assert!((c[0].sum - 1.0).abs() < 1e-12);
        let unnorm = dist(&[(b"a", 0.9), (b"b", 0.25), (b"c", 0.25)]);
        let e = check_next(unnorm.as_bytes(), &pos, &[&d], &[&s]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unnormalised: doc t1 position 1: next's probabilities sum to 1.400000"
        );
        let peek = dist(&[(b"a", 0.25), (b"b", 0.5), (b"c", 0.25)]);
        let e = check_next(peek.as_bytes(), &pos, &[&d], &[&s]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "inconsistent: doc t1 position 1: score -1.3863, next -0.6931"
        );
        let dup = dist(&[(b"a", 0.5), (b"a", 0.25), (b"b", 0.25)]);
        assert_eq!(
            check_next(dup.as_bytes(), &pos, &[&d], &[&s])
                .unwrap_err()
                .kind,
            RejectKind::Malformed
        );
    }

    #[test]
    fn repeats_must_match() {
        let d = doc("t1", "ab");
        let a = Scored {
            ends: vec![1, 2],
            logprobs: vec![-1.0, -2.0],
        };
        let mut b = a.clone();
        assert!(check_repeat(&d, &a, &b).is_ok());
        b.logprobs[1] = -2.001;
        assert_eq!(
            check_repeat(&d, &a, &b).unwrap_err().to_string(),
            "non-deterministic: doc t1 token 1: logprob -2.000000 the first time, -2.001000 the second"
        );
    }
}
