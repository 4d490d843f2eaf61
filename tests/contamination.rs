//! The contamination ledger on the real `frontier` world: T's public originals are spans too.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use gptx::config::suite::Home;
use gptx::stages::contamination::SpanIndex;
use gptx::stages::contract::CONTAMINATION_MIN_SPANS;
use gptx::world::{self, corpus, generate, private::Renaming, World, WorldConfig};

fn home() -> Home {
    Home::locate().expect("gptx home")
}

/// Seed 1's frontier world, generated without baselines and written (with a manifest) to a
/// temporary directory, once for this binary.
fn frontier1() -> &'static (tempfile::TempDir, World) {
    static W: std::sync::OnceLock<(tempfile::TempDir, World)> = std::sync::OnceLock::new();
    W.get_or_init(|| {
        let (cfg, _, dir) = WorldConfig::load(&home(), "frontier").unwrap();
        let g = world::Corpora::load(&cfg, &dir).unwrap().generate(&cfg, 1);
        let server = std::fs::read(dir.join("server.py")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (world_hash, _) = world::write_world(&g, &server, tmp.path()).unwrap();
        let manifest = manifest(&cfg, &dir, &g, world_hash);
        std::fs::write(
            tmp.path().join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let w = World::load(tmp.path()).unwrap();
        (tmp, w)
    })
}

/// The manifest `world::ensure` would write, but for the baselines and statistics (never read).
fn manifest(
    cfg: &WorldConfig,
    dir: &Path,
    g: &generate::Generated,
    world_hash: String,
) -> world::Manifest {
    let corpus_ref = |file: &str| {
        let (docs, sha256) = corpus::load(&dir.join(file)).unwrap();
        world::CorpusRef {
            file: file.into(),
            sha256,
            docs: docs.len(),
        }
    };
    let split = |file: &str, docs: &[generate::HiddenDoc]| world::Split {
        file: file.into(),
        docs: docs.len(),
        bytes: docs.iter().map(|d| d.text.len() as u64).sum(),
    };
    world::Manifest {
        name: cfg.name.clone(),
        generator_version: 1,
        seed: 1,
        world_hash,
        corpus: corpus_ref(&cfg.corpus),
        ood_corpus: None,
        site_corpora: cfg
            .sites
            .iter()
            .map(|s| (s.host.clone(), corpus_ref(&s.corpus)))
            .collect(),
        hosts: g.hosts.clone(),
        seed_urls: g.seed_urls.clone(),
        served: g.served.iter().map(|(p, _)| p.clone()).collect(),
        gold_file: "gold.jsonl".into(),
        test: split("hidden/test.jsonl", &g.test),
        ood: split("hidden/ood.jsonl", &g.ood),
        disallowed: g.disallowed.clone(),
        canaries: g.canaries.clone(),
        trap: Default::default(),
        stats: world::Stats {
            web_files: 0,
            web_bytes: 0,
            pages_per_host: Default::default(),
            served_pages: 0,
            gold_bytes: 0,
            mirror_pages: 0,
            latin1_pages: 0,
            transient_503_pages: 0,
            redirects: 0,
            build_seconds: 0.0,
        },
        baselines: world::Baselines {
            uniform: 8.0,
            unigram: 0.0,
            gzip: 0.0,
            xz: 0.0,
            xz_conditional: 0.0,
            test_bytes: 0,
            context_bytes: 0,
            seconds: 0.0,
        },
        request_budget: cfg.request_budget,
        target: g.target.clone(),
    }
}

/// SQLite's public pages by their text as the world renames it.
fn public_by_renamed() -> HashMap<String, String> {
    let (cfg, _, dir) = WorldConfig::load(&home(), "frontier").unwrap();
    let site = cfg.sites.iter().find(|s| s.target).unwrap();
    let (docs, _) = corpus::load(&dir.join(&site.corpus)).unwrap();
    let r = Renaming::of(&docs, 1, &[site.domain.as_str()]);
    docs.iter().map(|d| (r.doc(d).text(), d.text())).collect()
}

fn line(url: &str, text: &str) -> String {
    serde_json::json!({"url": url, "text": text}).to_string() + "\n"
}

/// An agent that remembers SQLite's public documentation writes T's public original: a hit, where
/// the index of T as served alone saw nothing. The public text of every served SQLite page is no
/// hit, and T as served still is.
#[test]
fn the_public_original_of_t_is_found_and_served_pages_public_text_is_not() {
    let (_tmp, w) = frontier1();
    let test = w.test_docs().unwrap();
    let gold = w.gold().unwrap();

    let (served_only, index) = indexes();

    let public = public_by_renamed();
    // The T document with the most public text apart from its variant.
    let (doc, original) = test
        .iter()
        .map(|d| (d, public.get(&d.text).expect("T's public original")))
        .max_by_key(|(_, o)| {
            index
                .find(o.as_bytes())
                .len()
                .saturating_sub(served_only.find(o.as_bytes()).len())
        })
        .unwrap();
    assert_ne!(&doc.text, original, "the variant renames it");
    let remembered = line("https://sqlite.org/remembered.html", original);
    let found = index.find(remembered.as_bytes()).len();
    let missed = served_only.find(remembered.as_bytes()).len();
    eprintln!("T's public original: {found} spans (T as served alone: {missed})");
    assert!(found >= 100, "{found}");
    assert!(missed < CONTAMINATION_MIN_SPANS, "{missed}");
    // T as served is still a hit.
    let variant = index.find(line("http://x/", &doc.text).as_bytes()).len();
    assert!(variant >= 100, "{variant}");

    // Every served SQLite page's public text, written as a corpus: no hit.
    let host = &w.manifest.target.as_ref().unwrap().host;
    let sqlite: Vec<&(String, String)> = gold.iter().filter(|(u, _)| u.contains(host)).collect();
    assert!(sqlite.len() > 100, "{}", sqlite.len());
    let corpus: String = sqlite
        .iter()
        .map(|(url, t)| line(url, public.get(t).expect("a served page's original")))
        .collect();
    let found = index.find(corpus.as_bytes()).len();
    eprintln!(
        "{} served SQLite pages' public text: {found} spans",
        sqlite.len()
    );
    assert!(found < CONTAMINATION_MIN_SPANS, "{found}");

    // A world whose corpus is not the one it was built from: warned, and T as served is indexed.
    let mut other = w.clone();
    for c in other.manifest.site_corpora.values_mut() {
        c.sha256 = "0".repeat(64);
    }
    let (index, warnings) = SpanIndex::of_world(&other, &home()).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("not the corpus"), "{warnings:?}");
    assert_eq!(index.len(), ood_only(w).len());
}

/// T as served alone against the web (the index before the public originals and the
/// out-of-domain documents), and the world's index, built once.
fn indexes() -> &'static (SpanIndex, SpanIndex) {
    static I: std::sync::OnceLock<(SpanIndex, SpanIndex)> = std::sync::OnceLock::new();
    I.get_or_init(|| {
        let (_tmp, w) = frontier1();
        let test = w.test_docs().unwrap();
        let t0 = Instant::now();
        let served_only = against_web(w, test.iter().map(|d| d.text.as_str()));
        let before = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let (index, warnings) = SpanIndex::of_world(w, &home()).unwrap();
        let after = t0.elapsed().as_secs_f64();
        eprintln!(
            "frontier index: {} spans in {before:.2} s (T as served); {} spans in {after:.2} s (all)",
            served_only.len(),
            index.len()
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        (served_only, index)
    })
}

/// The index of these texts against the world's served web.
fn against_web<'a>(w: &World, texts: impl IntoIterator<Item = &'a str>) -> SpanIndex {
    let mut b = SpanIndex::builder(texts);
    for (_, t) in &w.gold().unwrap() {
        b.served(t.as_bytes());
    }
    b.served_dir(&w.web_dir()).unwrap();
    b.finish()
}

/// The out-of-domain documents of the world, as `hidden/ood.jsonl` has them.
fn ood_docs(w: &World) -> Vec<generate::HiddenDoc> {
    let text = std::fs::read_to_string(w.dir.join(&w.manifest.ood.file)).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The index of T as served and the out-of-domain documents.
fn ood_only(w: &World) -> SpanIndex {
    let (test, ood) = (w.test_docs().unwrap(), ood_docs(w));
    against_web(w, test.iter().chain(&ood).map(|d| d.text.as_str()))
}

/// The hidden out-of-domain documents are indexed too: one written as a corpus line is a hit.
#[test]
fn an_out_of_domain_document_is_found() {
    let (_tmp, w) = frontier1();
    let (served_only, index) = indexes();
    let ood = ood_docs(w);
    assert!(ood.len() > 10, "{}", ood.len());
    let doc = ood.iter().max_by_key(|d| d.text.len()).unwrap();
    let written = line("https://docs.python.org/remembered.html", &doc.text);
    let found = index.find(written.as_bytes()).len();
    eprintln!(
        "an out-of-domain document ({} bytes): {found} spans",
        doc.text.len()
    );
    assert!(found >= 100, "{found}");
    assert!(served_only.find(written.as_bytes()).len() < CONTAMINATION_MIN_SPANS);
}
