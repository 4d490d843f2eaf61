//! The tokenize stage's grading: `bin/tokenize` on hidden text plus arbitrary-byte edge cases, in fresh scoring sandboxes.
//!
//! The protocol (SPEC §3): `bin/tokenize encode` maps `{"id", "text_b64"}` lines to `{"id", "ids"}`,
//! `bin/tokenize decode` maps them back to `{"id", "text_b64"}`; `tokenizer/meta.json` declares
//! `{"vocab_size": N}`. Graded: exact round trip (required), every id < N, bytes per token on T,
//! encode throughput. Every way a program can misbehave ends in a failed stage with the reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::agent::tools::ToolError;
use crate::sandbox::programs::{json_problem, one_line, quote, ProgramCall, Programs};
use crate::sandbox::{PathError, WorkspacePath, WorkspaceRoot};
use crate::stages::bpb::Doc;
use crate::stages::common::{hidden_docs, own_sample, program_problem};
use crate::stages::scale;
use crate::stages::scorer::{ScoreContext, Scorer};
use crate::trace::{round, StageScore};
use crate::world::World;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
pub(crate) use crate::stages::contract::{TOKENIZER_META as META, TOKENIZER_PROGRAM as PROGRAM};
/// Most bytes of the agent's own corpus the `check` tool samples.
const CHECK_SAMPLE_BYTES: usize = 64 * 1024;

/// The edge cases every tokenizer is graded on besides T: arbitrary bytes, deterministic.
pub fn edge_cases() -> Vec<Doc> {
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("nul", b"a\0b\0\0\0c\0".to_vec()),
        (
            "invalid-utf8",
            vec![
                0xff, 0xfe, b'x', 0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1, 0xf0, 0x90, 0x28, 0xbc,
                b' ', 0x80, 0xc0, 0xaf, 0xed, 0xa0, 0x80,
            ],
        ),
        ("all-bytes", (0..=255u8).chain((0..=255u8).rev()).collect()),
        (
            "crlf-mix",
            b"line one\r\nline two\nline three\r\r\n\n\rlast\r".to_vec(),
        ),
        ("run-of-a", vec![b'a'; 100_000]),
        ("run-of-nul", vec![0u8; 65_536]),
        ("run-of-space", b" \t".repeat(10_000)),
        (
            "emoji",
            "Family 👩\u{200d}👩\u{200d}👧\u{200d}👦, flag 🏳\u{fe0f}\u{200d}🌈, party 🎉🎉🎉, skin 👍🏽 end"
                .as_bytes()
                .to_vec(),
        ),
        (
            "cjk",
            "漢字とひらがなとカタカナ。한국어 문장입니다. 中文文本测试，标点符号！"
                .as_bytes()
                .to_vec(),
        ),
        (
            "rtl",
            "שלום עולם — مرحبا بالعالم \u{202e}desrever\u{202c} 123 ١٢٣"
                .as_bytes()
                .to_vec(),
        ),
        ("lone-high-bytes", vec![0x80; 300]),
    ];
    // Pseudo-random bytes, the same every time.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    cases.push(("random-bytes", random));
    let mut mixed = b"def f(x):\r\n\treturn x\0 # \xff\xfe caf\xc3\xa9 \xe2\x82\xac ".to_vec();
    mixed.extend_from_slice("🙂 日本 ".repeat(50).as_bytes());
    cases.push(("mixed", mixed));
    cases
        .into_iter()
        .map(|(name, bytes)| Doc {
            name: format!("edge:{name}"),
            bytes,
        })
        .collect()
}

/// Reads and validates `tokenizer/meta.json`.
pub fn read_meta(ws: &WorkspaceRoot, max_vocab: u64) -> Result<u64, String> {
    let p = WorkspacePath::parse(META).expect("valid constant path");
    let data = match ws.read(&p, 64 * 1024) {
        Ok((d, size)) if size <= 64 * 1024 => d,
        Ok((_, size)) => {
            return Err(format!(
                "{META} is {size} bytes; it should be a small JSON object"
            ))
        }
        Err(PathError::NotFound(_)) => return Err(format!("{META} does not exist")),
        Err(e) => return Err(e.to_string()),
    };
    let v: Value = serde_json::from_slice(&data).map_err(|e| format!("{META} is not JSON: {e}"))?;
    let n = v
        .get("vocab_size")
        .ok_or_else(|| format!("{META} has no \"vocab_size\""))?;
    let n = n
        .as_u64()
        .ok_or_else(|| format!("{META}: \"vocab_size\" = {n} is not a positive integer"))?;
    if n < 2 {
        return Err(format!("{META}: \"vocab_size\" = {n} is too small"));
    }
    if n > max_vocab {
        return Err(format!(
            "{META}: \"vocab_size\" = {n} is over this suite's budget of {max_vocab}"
        ));
    }
    Ok(n)
}

#[derive(Deserialize)]
struct EncodeLine {
    #[serde(default)]
    id: Value,
    #[serde(default)]
    ids: Option<Vec<Value>>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct DecodeLine {
    #[serde(default)]
    id: Value,
    #[serde(default)]
    text_b64: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The outcome of grading a tokenizer on a set of documents.
#[derive(Debug, Clone, Default)]
pub struct TokReport {
    /// A fatal problem (crash, garbage output): nothing else is meaningful.
    pub fatal: Option<String>,
    /// Documents that did not come back exactly, with why.
    pub round_trip_failures: Vec<String>,
    pub ids_out_of_range: Vec<String>,
    /// Bytes and tokens of the first `graded` documents (T).
    pub graded_bytes: u64,
    pub graded_tokens: u64,
    pub all_bytes: u64,
    pub encode_seconds: f64,
    pub decode_seconds: f64,
    pub docs: usize,
}

impl TokReport {
    pub fn bytes_per_token(&self) -> f64 {
        if self.graded_tokens == 0 {
            0.0
        } else {
            self.graded_bytes as f64 / self.graded_tokens as f64
        }
    }

    pub fn ok(&self) -> bool {
        self.fatal.is_none()
            && self.round_trip_failures.is_empty()
            && self.ids_out_of_range.is_empty()
    }

    /// Encode throughput in MB/s (program time, start-up included).
    pub fn encode_mb_per_s(&self) -> f64 {
        if self.encode_seconds <= 0.0 {
            0.0
        } else {
            self.all_bytes as f64 / 1e6 / self.encode_seconds
        }
    }
}

/// Reads `encode`'s answers; on hidden data (`hidden`) no message quotes the output.
fn parse_encode(
    out: &[u8],
    docs: &[Doc],
    vocab: u64,
    report: &mut TokReport,
    hidden: bool,
) -> Result<Vec<Vec<u64>>, String> {
    let mut got: Vec<Option<Vec<u64>>> = vec![None; docs.len()];
    for (n, line) in out.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let l: EncodeLine = serde_json::from_slice(line)
            .map_err(|e| not_protocol("encode", n, line, &e, hidden))?;
        let i =
            doc_index(&l.id, docs.len()).ok_or_else(|| not_asked("encode", n, &l.id, hidden))?;
        let name = &docs[i].name;
        if let Some(e) = l.error {
            let e = quote(hidden, || one_line(&e, 200));
            return Err(format!("encode reported an error on {name}{e}"));
        }
        let ids = l
            .ids
            .ok_or_else(|| format!("encode output line {} ({name}) has no \"ids\"", n + 1))?;
        if got[i].is_some() {
            return Err(format!("encode answered {name} twice"));
        }
        let mut out = Vec::with_capacity(ids.len());
        for (k, v) in ids.iter().enumerate() {
            let id = v.as_u64().ok_or_else(|| {
                let v = quote(hidden, || one_line(&v.to_string(), 40));
                format!("encode: {name} id {k} is not a non-negative integer{v}")
            })?;
            if id >= vocab && report.ids_out_of_range.len() < 5 {
                // On hidden data even the value is the program's choice: say only where.
                let id = quote(hidden, || id.to_string());
                report.ids_out_of_range.push(format!(
                    "{name} position {k}: an id ≥ vocab_size {vocab}{id}"
                ));
            }
            out.push(id);
        }
        got[i] = Some(out);
    }
    got.into_iter()
        .enumerate()
        .map(|(i, g)| {
            g.ok_or_else(|| {
                format!(
                    "encode gave no answer for {} (of {} asked)",
                    docs[i].name,
                    docs.len()
                )
            })
        })
        .collect()
}

/// An output line serde could not read; serde's message and the line quoted only when not `hidden`.
fn not_protocol(verb: &str, n: usize, line: &[u8], e: &serde_json::Error, hidden: bool) -> String {
    let what = json_problem(e);
    let line = String::from_utf8_lossy(&line[..line.len().min(120)]);
    let shown = quote(hidden, || format!("{e}: {line:?}"));
    format!(
        "{verb} output line {} is not the protocol ({what}){shown}",
        n + 1
    )
}

/// An output line answering an id that was not asked; the id quoted only when not `hidden`.
fn not_asked(verb: &str, n: usize, id: &Value, hidden: bool) -> String {
    let shown = quote(hidden, || format!("id {}", one_line(&id.to_string(), 80)));
    format!(
        "{verb} output line {} answers an id which was not asked{shown}",
        n + 1
    )
}

fn doc_index(id: &Value, n: usize) -> Option<usize> {
    id.as_str()?
        .strip_prefix('e')?
        .parse::<usize>()
        .ok()
        .filter(|&i| i < n)
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let k = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if k == a.len() && k == b.len() {
        return "identical".into();
    }
    format!(
        "{} bytes came back for {}, first difference at byte {k}",
        b.len(),
        a.len()
    )
}

/// Runs `bin/tokenize <verb>` on JSON lines in a fresh scoring sandbox; a failure comes back as the
/// reason and the program's time.
async fn run_verb(
    programs: &dyn Programs,
    verb: &str,
    lines: impl Iterator<Item = Value>,
    timeout: Duration,
    hidden: bool,
) -> Result<crate::sandbox::programs::ProgramRun, (String, f64)> {
    let mut stdin = Vec::new();
    for l in lines {
        serde_json::to_writer(&mut stdin, &l).expect("in-memory json");
        stdin.push(b'\n');
    }
    let call = ProgramCall {
        label: verb.into(),
        cmd: crate::stages::contract::program_command(PROGRAM, verb),
        stdin,
        timeout,
        hidden,
    };
    let run = programs
        .run(&call)
        .await
        .map_err(|e| (format!("scoring sandbox for {verb}: {e}"), 0.0))?;
    match run.failure(&call) {
        Some(f) => Err((f, run.program_seconds)),
        None => Ok(run),
    }
}

/// Encodes and decodes `docs` through the agent's tokenizer (two fresh scoring sandboxes); the first
/// `graded` documents count for bytes per token.
pub async fn grade(
    programs: &dyn Programs,
    docs: &[Doc],
    graded: usize,
    vocab: u64,
    timeout: Duration,
    hidden: bool,
) -> TokReport {
    let mut report = TokReport {
        docs: docs.len(),
        all_bytes: docs.iter().map(|d| d.bytes.len() as u64).sum(),
        ..Default::default()
    };
    let lines = docs
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"id": format!("e{i}"), "text_b64": B64.encode(&d.bytes)}));
    let run = match run_verb(programs, "encode", lines, timeout, hidden).await {
        Ok(r) => r,
        Err((f, seconds)) => {
            report.encode_seconds = seconds;
            report.fatal = Some(f);
            return report;
        }
    };
    report.encode_seconds = run.program_seconds;
    let encoded = match parse_encode(&run.stdout, docs, vocab, &mut report, hidden) {
        Ok(e) => e,
        Err(f) => {
            report.fatal = Some(f);
            return report;
        }
    };
    drop(run);
    for (d, ids) in docs.iter().zip(&encoded).take(graded) {
        report.graded_bytes += d.bytes.len() as u64;
        report.graded_tokens += ids.len() as u64;
    }
    let lines = encoded
        .iter()
        .enumerate()
        .map(|(i, ids)| json!({"id": format!("e{i}"), "ids": ids}));
    let run = match run_verb(programs, "decode", lines, timeout, hidden).await {
        Ok(r) => r,
        Err((f, seconds)) => {
            report.decode_seconds = seconds;
            report.fatal = Some(f);
            return report;
        }
    };
    report.decode_seconds = run.program_seconds;
    let mut seen: HashMap<usize, ()> = HashMap::new();
    for (n, line) in run.stdout.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let l: DecodeLine = match serde_json::from_slice(line) {
            Ok(l) => l,
            Err(e) => {
                report.fatal = Some(not_protocol("decode", n, line, &e, hidden));
                return report;
            }
        };
        let Some(i) = doc_index(&l.id, docs.len()) else {
            report.fatal = Some(not_asked("decode", n, &l.id, hidden));
            return report;
        };
        let name = &docs[i].name;
        if seen.insert(i, ()).is_some() {
            report.fatal = Some(format!("decode answered {name} twice"));
            return report;
        }
        let problem = match (l.error, l.text_b64) {
            (Some(e), _) => Some(format!(
                "{name}: decode reported an error{}",
                quote(hidden, || one_line(&e, 200))
            )),
            (None, None) => Some(format!("{name}: decode gave no text_b64")),
            (None, Some(t)) => match B64.decode(t.as_bytes()) {
                Err(e) => Some(format!(
                    "{name}: decode's text_b64 is not base64{}",
                    quote(hidden, || e.to_string())
                )),
                Ok(back) if back == docs[i].bytes => None,
                Ok(back) => Some(format!(
                    "{name}: {}",
                    first_difference(&docs[i].bytes, &back)
                )),
            },
        };
        if let Some(p) = problem {
            report.round_trip_failures.push(p);
        }
    }
    for (i, d) in docs.iter().enumerate() {
        if !seen.contains_key(&i) {
            report
                .round_trip_failures
                .push(format!("{}: decode gave no answer", d.name));
        }
    }
    report
}

/// Grades the tokenize stage on T and the edge cases.
pub(crate) struct TokenizeScorer {
    pub world: Arc<World>,
}

/// The stage's score from a report (pure: unit-tested).
pub fn stage_score(
    report: &TokReport,
    vocab: u64,
    gates: &BTreeMap<String, f64>,
    reference_bpt: Option<f64>,
) -> StageScore {
    let bpt = report.bytes_per_token();
    let mut m = Map::new();
    m.insert("vocab_size".into(), json!(vocab));
    m.insert(
        "round_trip".into(),
        json!(report.fatal.is_none() && report.round_trip_failures.is_empty()),
    );
    m.insert(
        "ids_in_vocab".into(),
        json!(report.fatal.is_none() && report.ids_out_of_range.is_empty()),
    );
    m.insert("bytes_per_token".into(), json!(round(bpt, 4)));
    m.insert("test_bytes".into(), json!(report.graded_bytes));
    m.insert("test_tokens".into(), json!(report.graded_tokens));
    m.insert("documents".into(), json!(report.docs));
    m.insert(
        "encode_seconds".into(),
        json!(round(report.encode_seconds, 3)),
    );
    m.insert(
        "decode_seconds".into(),
        json!(round(report.decode_seconds, 3)),
    );
    m.insert(
        "encode_mb_per_s".into(),
        json!(round(report.encode_mb_per_s(), 4)),
    );
    if !report.round_trip_failures.is_empty() {
        m.insert(
            "round_trip_failures".into(),
            json!(report.round_trip_failures),
        );
    }
    if !report.ids_out_of_range.is_empty() {
        m.insert("ids_out_of_range".into(), json!(report.ids_out_of_range));
    }
    if let Some(f) = &report.fatal {
        return StageScore {
            metrics: m,
            ..StageScore::zero("failed", f.clone())
        }
        .with_public(format!(
            "{PROGRAM} failed on the hidden texts (it crashed, hung, or its output did not follow the protocol)"
        ));
    }
    let need = crate::config::gates::TOKENIZE_BYTES_PER_TOKEN.value(gates);
    let mut problems = Vec::new();
    let mut public = Vec::new();
    if let Some(first) = report.round_trip_failures.first() {
        problems.push(format!(
            "round trip failed on {} of {} documents (first: {first})",
            report.round_trip_failures.len(),
            report.docs
        ));
        public.push("the round trip was not exact on every hidden text".to_string());
    }
    if let Some(first) = report.ids_out_of_range.first() {
        problems.push(format!("ids outside the vocabulary ({first})"));
        public.push("ids outside the vocabulary".to_string());
    }
    let exact = problems.is_empty();
    if bpt < need {
        problems.push(format!("bytes per token {bpt:.3} < {need}"));
        public.push(format!("bytes per token below {need}"));
    }
    // A failed round trip or an id out of range earns nothing for its bytes per token.
    let quality = exact.then(|| scale::tokenize(bpt, reference_bpt)).flatten();
    let normalized = Some(scale::score(problems.is_empty(), quality));
    StageScore {
        status: if exact {
            "scored".into()
        } else {
            "failed".into()
        },
        passed: problems.is_empty(),
        metrics: m,
        reason: (!problems.is_empty()).then(|| format!("gate not met: {}", problems.join("; "))),
        normalized,
        public_reason: (!public.is_empty()).then(|| format!("gate not met: {}", public.join("; "))),
    }
}

#[async_trait]
impl Scorer for TokenizeScorer {
    async fn check(&self, ctx: &ScoreContext<'_>) -> Result<Value, ToolError> {
        let ws = ctx.workspace();
        let mut errors = Vec::new();
        let vocab = read_meta(ws, ctx.scoring.max_vocab_size)
            .map_err(|e| errors.push(e))
            .ok();
        if let Some(p) = program_problem(ws, PROGRAM) {
            errors.push(p);
        }
        let Some(programs) = ctx.programs else {
            errors.push("this run has no scoring sandbox".into());
            return Ok(json!({"ok": false, "errors": errors}));
        };
        let (Some(vocab), true) = (vocab, errors.is_empty()) else {
            return Ok(json!({"ok": false, "errors": errors}));
        };
        let mut docs = own_sample(ws, CHECK_SAMPLE_BYTES);
        let graded = docs.len();
        docs.extend(edge_cases().into_iter().filter(|d| d.bytes.len() < 8192));
        let timeout = Duration::from_secs_f64(ctx.scoring.timeout_seconds);
        let report = grade(programs, &docs, graded, vocab, timeout, false).await;
        let mut errors: Vec<String> = report.fatal.iter().cloned().collect();
        errors.extend(report.round_trip_failures.iter().cloned());
        errors.extend(report.ids_out_of_range.iter().cloned());
        Ok(json!({
            "ok": report.ok(),
            "vocab_size": vocab,
            "documents": docs.len(),
            "sample": format!("{graded} documents of your corpus ({} bytes) and a few arbitrary-byte cases", report.graded_bytes),
            "bytes_per_token": round(report.bytes_per_token(), 4),
            "encode_mb_per_s": round(report.encode_mb_per_s(), 4),
            "errors": errors,
            "message": if report.ok() { "round trip exact and ids in range on the sample; the grade uses hidden text" } else { "problems found" },
        }))
    }

    async fn score(&self, ctx: &ScoreContext<'_>) -> StageScore {
        let ws = ctx.workspace();
        let vocab = match read_meta(ws, ctx.scoring.max_vocab_size) {
            Ok(v) => v,
            Err(e) => return StageScore::precondition("failed", e),
        };
        if let Some(p) = program_problem(ws, PROGRAM) {
            return StageScore::precondition("failed", p);
        }
        let Some(programs) = ctx.programs else {
            return StageScore::zero("failed", "this run has no scoring sandbox");
        };
        let mut docs = match hidden_docs(&self.world) {
            Ok((test, _)) => test,
            Err(e) => return StageScore::zero("error", e),
        };
        let graded = docs.len();
        docs.extend(edge_cases());
        let timeout = Duration::from_secs_f64(ctx.scoring.timeout_seconds);
        let report = grade(programs, &docs, graded, vocab, timeout, true).await;
        stage_score(
            &report,
            vocab,
            ctx.gates,
            ctx.reference.get("tokenize_bytes_per_token").copied(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each input line's id and text (encode: the document; decode: the ids as bytes), answered by `f`.
    fn echo(stdin: &[u8], f: fn(&str, &[u8]) -> String) -> Vec<u8> {
        let mut out = String::new();
        for l in stdin.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(l).unwrap();
            let text = match v["ids"].as_array() {
                Some(ids) => ids.iter().map(|i| i.as_u64().unwrap() as u8).collect(),
                None => B64.decode(v["text_b64"].as_str().unwrap()).unwrap(),
            };
            out += &f(v["id"].as_str().unwrap(), &text);
            out.push('\n');
        }
        out.into_bytes()
    }

    /// A tokenizer that puts the text it reads into its answers, in every way a line can fail: the
    /// reasons quote its output on the agent's own data, never on hidden data.
    #[tokio::test]
    async fn output_on_hidden_data_is_never_quoted() {
        use crate::sandbox::programs::{Answer, Answering};
        fn text(t: &[u8]) -> String {
            String::from_utf8_lossy(t).into_owned()
        }
        fn encode_then(cmd: &str, i: &[u8], decode: fn(&str, &[u8]) -> String) -> Vec<u8> {
            match cmd.ends_with("decode") {
                true => echo(i, decode),
                false => echo(i, |id, t| json!({"id": id, "ids": t}).to_string()),
            }
        }
        let answers: [Answer; 8] = [
            |_, i| echo(i, |_, t| text(t)),
            |_, i| echo(i, |id, t| json!({"id": id, "ids": text(t)}).to_string()),
            |_, i| echo(i, |id, t| json!({"id": id, "ids": [text(t)]}).to_string()),
            |_, i| echo(i, |_, t| json!({"id": text(t)}).to_string()),
            |_, i| echo(i, |id, t| json!({"id": id, "error": text(t)}).to_string()),
            |c, i| encode_then(c, i, |_, t| text(t)),
            |c, i| encode_then(c, i, |_, t| json!({"id": text(t)}).to_string()),
            |c, i| {
                encode_then(c, i, |id, t| {
                    json!({"id": id, "error": text(t)}).to_string()
                })
            },
        ];
        let docs = [Doc {
            name: "t1".into(),
            bytes: b"SECRET hidden words of a test document".to_vec(),
        }];
        for (n, answer) in answers.into_iter().enumerate() {
            for hidden in [true, false] {
                let p = Answering(answer);
                let r = grade(&p, &docs, 1, 256, Duration::from_secs(5), hidden).await;
                assert!(!r.ok(), "answer {n}");
                let said = format!("{:?} {:?}", r.fatal, r.round_trip_failures);
                assert_eq!(said.contains("SECRET"), !hidden, "{n} {hidden}: {said}");
            }
        }
    }

    #[test]
    fn edge_cases_cover_arbitrary_bytes() {
        let cases = edge_cases();
        let all: Vec<u8> = cases.iter().flat_map(|d| d.bytes.clone()).collect();
        for b in 0..=255u8 {
            assert!(all.contains(&b), "byte {b} missing");
        }
        assert!(cases.iter().any(|d| std::str::from_utf8(&d.bytes).is_err()));
        assert!(cases.iter().any(|d| d.bytes.is_empty()));
        assert!(cases.iter().any(|d| d.bytes.len() >= 100_000));
    }

    #[test]
    fn scores_gate_and_normalise() {
        let r = TokReport {
            graded_bytes: 3000,
            graded_tokens: 1000,
            docs: 3,
            ..Default::default()
        };
        let gates = BTreeMap::from([("tokenize_bytes_per_token".to_string(), 2.0)]);
        let s = stage_score(&r, 4096, &gates, Some(5.0));
        assert_eq!((s.passed, s.normalized), (true, Some(0.75))); // ½ + ½ · 2 / 4
        let mut bad = r.clone();
        bad.round_trip_failures
            .push("edge:nul: 3 bytes came back for 8".into());
        let s = stage_score(&bad, 4096, &gates, Some(5.0));
        assert_eq!((s.passed, s.normalized), (false, Some(0.0)));
        assert!(s.reason.unwrap().contains("round trip failed on 1 of 3"));
        let mut low = r.clone();
        low.graded_tokens = 2000;
        let s = stage_score(&low, 4096, &gates, Some(5.0));
        assert_eq!(s.normalized, Some(0.5 * 0.5 / 4.0)); // below the gate: half its q
        assert!(!s.passed && s.reason.unwrap().contains("bytes per token 1.500 < 2"));
    }
}
