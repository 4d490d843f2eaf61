//! Criterion bench of the harness side of verified bits per byte: building the inputs, parsing
//! recorded `score` and `next` outputs of realistic size (≈200 KB of text in ≈65k tokens, K = 64),
//! the checks and the arithmetic. The model's own `score` time on T is the yardstick (goal: < 10%).

use std::io::Read;

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use gptx::stages::bpb::{self, Doc, Scored};
use rand::SeedableRng;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// ≈200 KB of real documentation text in 16 documents.
fn docs() -> Vec<Doc> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tasks/worlds/corpus/python-3.11-docs.jsonl.xz"
    );
    let mut text = String::new();
    xz2::read::XzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let mut docs = Vec::new();
    let mut total = 0;
    for line in text.lines().skip(40) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let blocks = v["blocks"].as_array().unwrap();
        let t: Vec<&str> = blocks.iter().filter_map(|b| b["t"].as_str()).collect();
        let t = t.join("\n\n");
        if t.len() < 4000 || t.len() > 30000 {
            continue;
        }
        total += t.len();
        docs.push(Doc {
            name: format!("t{}", docs.len() + 1),
            bytes: t.as_bytes().to_vec(),
        });
        if total >= 200_000 {
            break;
        }
    }
    docs
}

/// What a model would print: tokens of 1–5 bytes (≈3 on average) with varied logprobs.
fn record_score(docs: &[Doc], ids: &[String]) -> (Vec<u8>, Vec<Scored>) {
    let mut out = Vec::new();
    let mut all = Vec::new();
    for (d, id) in docs.iter().zip(ids) {
        let (mut at, mut i) = (0usize, 0usize);
        let mut toks = Vec::new();
        let mut ends = Vec::new();
        let mut lps = Vec::new();
        while at < d.bytes.len() {
            let n = (1 + (i * 7 + 3) % 5).min(d.bytes.len() - at);
            toks.push(B64.encode(&d.bytes[at..at + n]));
            at += n;
            ends.push(at as u32);
            lps.push(-(0.2 + ((i * 13) % 29) as f64 * 0.1371234567891));
            i += 1;
        }
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"id": id, "tokens_b64": toks, "logprobs": lps}),
        )
        .unwrap();
        out.push(b'\n');
        all.push(Scored {
            ends,
            logprobs: lps,
        });
    }
    (out, all)
}

/// `next` answers over a vocabulary of `vocab` tokens that agree with `score`.
fn record_next(
    docs: &[&Doc],
    scored: &[&Scored],
    positions: &[bpb::Position],
    vocab: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (q, p) in positions.iter().enumerate() {
        let s = scored[p.doc];
        let start = if p.token == 0 {
            0
        } else {
            s.ends[p.token - 1] as usize
        };
        let actual = &docs[p.doc].bytes[start..s.ends[p.token] as usize];
        let lp = s.logprobs[p.token];
        let rest = ((1.0 - lp.exp()) / (vocab - 1) as f64).ln();
        let mut dist = vec![(B64.encode(actual), lp)];
        for k in 0..vocab - 1 {
            dist.push((B64.encode([0xff, (k >> 8) as u8, k as u8]), rest));
        }
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"id": format!("q{q}"), "dist": dist}),
        )
        .unwrap();
        out.push(b'\n');
    }
    out
}

fn bench(c: &mut Criterion) {
    let docs = docs();
    let ids: Vec<String> = (0..docs.len()).map(|i| format!("d{}", i + 1)).collect();
    let (score_out, scored) = record_score(&docs, &ids);
    let tokens: usize = scored.iter().map(|s| s.ends.len()).sum();
    let bytes: usize = docs.iter().map(|d| d.bytes.len()).sum();
    println!(
        "recorded: {} documents, {bytes} bytes, {tokens} tokens, score output {} bytes",
        docs.len(),
        score_out.len()
    );
    let doc_refs: Vec<&Doc> = docs.iter().collect();
    let scored_refs: Vec<&Scored> = scored.iter().collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let positions = bpb::draw_positions(&mut rng, &scored_refs, 64);
    for vocab in [256usize, 8192] {
        let next_out = record_next(&doc_refs, &scored_refs, &positions, vocab);
        println!("vocab {vocab}: next output {} bytes", next_out.len());
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        c.bench_function(
            &format!("verify harness side, 200 KB / {tokens} tokens, K=64, vocab {vocab}"),
            |b| {
                b.iter(|| {
                    let input = bpb::score_input(
                        id_refs
                            .iter()
                            .copied()
                            .zip(docs.iter().map(|d| d.bytes.as_slice())),
                    );
                    let parsed =
                        bpb::parse_score("score", &score_out, &id_refs, &doc_refs).unwrap();
                    let refs: Vec<&Scored> = parsed.iter().collect();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
                    let pos = bpb::draw_positions(&mut rng, &refs, 64);
                    let next_in = bpb::next_input(&pos, &doc_refs, &refs);
                    let checks = bpb::check_next(&next_out, &pos, &doc_refs, &refs).unwrap();
                    let v = bpb::summarise(&doc_refs, &refs, &[], &[], checks, vec![]);
                    (input.len(), next_in.len(), v.bpb)
                })
            },
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
