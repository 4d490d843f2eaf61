//! The world generator (determinism, splits, manifest) and the crawl scorer on crafted corpora.

use std::collections::BTreeMap;

use gptx::config::suite::Home;
use gptx::stages::contamination::SpanIndex;
use gptx::stages::contract::CONTAMINATION_MIN_SPANS;
use gptx::stages::crawl;
use gptx::world::{self, generate, World, WorldConfig};

fn home() -> Home {
    Home::locate().expect("gptx home")
}

fn mini() -> World {
    world::ensure(&home(), "mini", 1, &world::Quiet)
        .expect("the mini world builds")
        .0
}

fn gates() -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("crawl_recall".to_string(), 0.5),
        ("crawl_precision".to_string(), 0.8),
    ])
}

fn line(url: &str, text: &str) -> String {
    serde_json::json!({"url": url, "text": text}).to_string() + "\n"
}

/// One line of the web server's request log: `url`'s host, and its path and query as requested.
fn logged(url: &str, status: u16) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    serde_json::json!({"host": host, "path": path, "status": status}).to_string() + "\n"
}

/// A request log in which the server answered 200 at every URL.
fn answered(urls: &[&str]) -> String {
    urls.iter().map(|u| logged(u, 200)).collect()
}

fn score(w: &World, corpus: &str, log: &str) -> gptx::trace::StageScore {
    crawl::score_blocking(w, Some(corpus.as_bytes()), log, &gates(), None)
}

fn recall(s: &gptx::trace::StageScore) -> f64 {
    s.metrics["recall"].as_f64().unwrap()
}

/// The `n`th gold page of docs.gptx.test (URL, text).
fn docs_page(gold: &[(String, String)], n: usize) -> (&str, &str) {
    let (u, t) = gold
        .iter()
        .filter(|(u, _)| u.starts_with("http://docs.gptx.test/"))
        .nth(n)
        .unwrap();
    (u, t)
}

/// `url` with the first letter of its path percent-encoded (`/os.html` → `/%6fs.html`).
fn escaped(url: &str, upper: bool) -> String {
    let at = url.find("://").unwrap() + 3;
    let at = at + url[at..].find('/').unwrap() + 1;
    let hex = format!("%{:02x}", url.as_bytes()[at]);
    let hex = if upper { hex.to_uppercase() } else { hex };
    format!("{}{hex}{}", &url[..at], &url[at + 1..])
}

#[test]
fn same_seed_same_world_other_seed_other_world() {
    let h = home();
    let (cfg, _, dir) = WorldConfig::load(&h, "mini").unwrap();
    let corpora = world::Corpora::load(&cfg, &dir).unwrap();
    let a = corpora.generate(&cfg, 1);
    let b = corpora.generate(&cfg, 1);
    let c = corpora.generate(&cfg, 2);
    assert_eq!(a.web, b.web, "same seed, same pages");
    assert_eq!(
        serde_json::to_string(&a.routes).unwrap(),
        serde_json::to_string(&b.routes).unwrap()
    );
    assert_ne!(a.web, c.web, "another seed changes the world");
    // The world hash itself: equal for equal seeds, different otherwise, and the same as the built
    // world's manifest says.
    let server = std::fs::read(dir.join("server.py")).unwrap();
    let hash = |g: &generate::Generated| {
        let t = tempfile::tempdir().unwrap();
        world::write_world(g, &server, t.path()).unwrap().0
    };
    let (ha, hb, hc) = (hash(&a), hash(&b), hash(&c));
    assert_eq!(ha, hb);
    assert_ne!(ha, hc);
    assert_eq!(ha, mini().manifest.world_hash);
    let ids = |g: &generate::Generated| g.test.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
    assert_ne!(ids(&a), ids(&c), "another seed holds out other documents");

    // T, the served pages and the out-of-domain set are disjoint, and T never reaches web/.
    let served: std::collections::HashSet<&str> =
        a.served.iter().map(|(p, _)| p.doc.as_str()).collect();
    for d in &a.test {
        assert!(
            !served.contains(d.id.as_str()),
            "{} is both served and hidden",
            d.id
        );
        let probe = d.text.lines().max_by_key(|l| l.len()).unwrap();
        for (path, bytes) in &a.web {
            assert!(
                !String::from_utf8_lossy(bytes).contains(&gptx::world::html::esc(probe)),
                "a line of hidden document {} is in {path}",
                d.id
            );
        }
    }
    let total: usize = a.test.iter().map(|d| d.text.len()).sum();
    assert!((100_000..=220_000).contains(&total), "T is {total} bytes");
    let gold: u64 = a.served.iter().map(|(p, _)| p.bytes).sum();
    assert!(
        (1_000_000..=2_000_000).contains(&gold),
        "served gold is {gold} bytes"
    );
}

/// The frontier world as generated (no baselines: those take minutes), with its config.
fn frontier(seed: u64) -> (generate::Generated, WorldConfig, Vec<u8>) {
    let (cfg, _, dir) = WorldConfig::load(&home(), "frontier").unwrap();
    let corpora = world::Corpora::load(&cfg, &dir).unwrap();
    let server = std::fs::read(dir.join("server.py")).unwrap();
    (corpora.generate(&cfg, seed), cfg, server)
}

/// Seed 1's frontier world, generated once for the tests that only read it.
fn frontier1() -> &'static generate::Generated {
    static G: std::sync::OnceLock<generate::Generated> = std::sync::OnceLock::new();
    G.get_or_init(|| frontier(1).0)
}

#[test]
fn frontier_is_deterministic_and_holds_t_out_of_its_sqlite_site() {
    let (b, cfg, server) = frontier(1);
    let a = frontier1();
    let (c, _, _) = frontier(2);
    let hash = |g: &generate::Generated| {
        let t = tempfile::tempdir().unwrap();
        world::write_world(g, &server, t.path()).unwrap().0
    };
    assert_eq!(hash(a), hash(&b), "same seed, same world");
    // The shipped reference values were measured on the world these sources build (the build
    // itself takes minutes, for its baselines; the hash needs only the files).
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(home().tasks().join("worlds/frontier.reference.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        reference["world_hash"].as_str(),
        Some(hash(a).as_str()),
        "the frontier world changed: measure it again with `gptx world reference --suite frontier`"
    );
    assert_ne!(hash(a), hash(&c), "another seed, another world");

    // Five sites, about 3,000 routes (whole families of SQLite's pages are withheld), and a budget
    // far below them.
    let target = a.target.clone().expect("frontier has a target site");
    assert_eq!(
        (target.host.as_str(), target.domain.as_str()),
        ("sqlite.gptx.test", "SQLite")
    );
    assert_eq!(a.hosts.len(), 5, "{:?}", a.hosts);
    assert_eq!(a.seed_urls.len(), 4, "every site's home but the mirror's");
    let budget = cfg.request_budget.unwrap();
    assert_eq!(a.routes.request_budget, Some(budget));
    let routes = a.routes.pages.len();
    assert!(routes >= 2_900, "{routes} routes");
    assert!(
        routes as u32 >= 3 * budget,
        "the budget must leave most of the web unfetched"
    );

    // T: SQLite pages only, none served, none of their text anywhere under web/.
    let total: usize = a.test.iter().map(|d| d.text.len()).sum();
    assert!(
        (cfg.test_bytes..cfg.test_bytes + 40_000).contains(&total),
        "T is {total} bytes"
    );
    let served_sqlite: std::collections::HashSet<String> = a
        .served
        .iter()
        .filter(|(p, _)| p.site == target.host)
        .map(|(p, _)| format!("{}/{}", p.site, p.doc))
        .collect();
    assert_eq!(served_sqlite.len(), target.served);
    let gold: std::collections::HashSet<&str> = a.served.iter().map(|(_, t)| t.as_str()).collect();
    let web: String = a
        .web
        .values()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    for d in &a.test {
        assert!(d.id.starts_with("sqlite.gptx.test/"), "{}", d.id);
        assert!(
            !served_sqlite.contains(&d.id),
            "{} is served and hidden",
            d.id
        );
        assert!(!gold.contains(d.text.as_str()));
        let probe = d.text.lines().max_by_key(|l| l.len()).unwrap();
        assert!(
            !web.contains(&gptx::world::html::esc(probe)),
            "a line of hidden document {} is under web/",
            d.id
        );
    }
    // Out-of-domain documents: from the general web and PostgreSQL's site, never SQLite's.
    assert!(a
        .ood
        .iter()
        .any(|d| d.id.starts_with("ood/docs.gptx.test/")));
    assert!(a.ood.iter().any(|d| d.id.starts_with("ood/pg.gptx.test/")));
    assert!(a.ood.iter().all(|d| !d.id.contains("sqlite")));
}

/// Distinct 12-word sequences of `text`, hashed.
fn sequences(text: &str) -> std::collections::HashSet<u64> {
    use std::hash::{Hash, Hasher};
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    words
        .windows(world::holdout::SEQUENCE_WORDS)
        .map(|w| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            w.hash(&mut h);
            h.finish()
        })
        .collect()
}

/// The crawl instruction's per-host robots sentence is what the generated world disallows, and
/// its draw sentence is how T was drawn: pages of 2,000 to `max_test_doc_bytes` bytes, at least
/// `test_bytes` of them.
#[test]
fn the_instructions_robots_and_draw_sentences_match_the_generated_world() {
    use gptx::stages::contract::{robots_rules, HIDDEN_MIN_DOC_BYTES};
    let g = frontier1();
    let (cfg, _, _) = WorldConfig::load(&home(), "frontier").unwrap();
    let said: BTreeMap<String, Vec<String>> = robots_rules(&cfg)
        .into_iter()
        .filter(|(_, rules)| !rules.is_empty())
        .collect();
    assert_eq!(said, g.disallowed);
    let sizes: Vec<usize> = g.test.iter().map(|d| d.text.len()).collect();
    assert!(
        sizes
            .iter()
            .all(|n| (HIDDEN_MIN_DOC_BYTES..=cfg.max_test_doc_bytes).contains(n)),
        "{sizes:?}"
    );
    let total: usize = sizes.iter().sum();
    assert!(total >= cfg.test_bytes, "{total}");
}

#[test]
fn frontier_t_is_a_private_variant_drawn_as_whole_families_with_no_near_copy_served() {
    let g = frontier1();
    let (cfg, _, dir) = WorldConfig::load(&home(), "frontier").unwrap();
    assert!(cfg.private && cfg.holdout == world::holdout::Holdout::Families);
    let site = cfg.sites.iter().find(|s| s.target).unwrap();
    let (public, _) = world::corpus::load(&dir.join(&site.corpus)).unwrap();

    // The variant: every T document has the shape of a public page (the same bytes but letters,
    // the same letters' case), yet almost none of its 12-word sequences is public text.
    let public_seqs: std::collections::HashSet<u64> =
        public.iter().flat_map(|d| sequences(&d.text())).collect();
    let variant = world::private::variant(&public, 1, &site.domain);
    let mut recalled = 0;
    let mut all = 0;
    for d in &g.test {
        let id = d.id.strip_prefix("sqlite.gptx.test/").unwrap();
        let k = variant
            .iter()
            .position(|v| v.id == id)
            .expect("a variant page");
        let original = public[k].text();
        assert_eq!(d.text, variant[k].text());
        assert_ne!(d.text, original, "{id} is public text");
        assert!(d
            .text
            .bytes()
            .zip(original.bytes())
            .all(|(a, b)| a.is_ascii_alphabetic() == b.is_ascii_alphabetic()
                && (a.is_ascii_alphabetic() || a == b)));
        let seqs = sequences(&d.text);
        recalled += seqs.iter().filter(|s| public_seqs.contains(s)).count();
        all += seqs.len();
    }
    let share = recalled as f64 / all as f64;
    eprintln!("T's 12-word sequences that are public text: {recalled} of {all} ({share:.4})");
    assert!(share < 0.01, "{share} of T's sequences are public text");

    // Whole families: no page of a T document's family is served, and what T shares with the
    // served web is boilerplate only.
    let family = world::holdout::families(&variant);
    let ids: std::collections::HashMap<&str, usize> = variant
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    let served: std::collections::HashSet<&str> = g
        .served
        .iter()
        .filter(|(p, _)| p.site == "sqlite.gptx.test")
        .map(|(p, _)| p.doc.as_str())
        .collect();
    let t_families: std::collections::HashSet<usize> = g
        .test
        .iter()
        .map(|d| family[ids[d.id.strip_prefix("sqlite.gptx.test/").unwrap()]])
        .collect();
    for (i, d) in variant.iter().enumerate() {
        if t_families.contains(&family[i]) {
            assert!(
                !served.contains(d.id.as_str()),
                "{} of a T family is served",
                d.id
            );
        }
    }
    let web_seqs: std::collections::HashSet<u64> =
        g.served.iter().flat_map(|(_, t)| sequences(t)).collect();
    let mut worst = (0.0, String::new());
    for d in &g.test {
        let seqs = sequences(&d.text);
        let elsewhere = seqs.iter().filter(|s| web_seqs.contains(s)).count() as f64;
        let share = elsewhere / seqs.len().max(1) as f64;
        if share > worst.0 {
            worst = (share, d.id.clone());
        }
    }
    eprintln!(
        "T families: {}; most of one T document's 12-word sequences served: {:.3} ({})",
        t_families.len(),
        worst.0,
        worst.1
    );
    assert!(
        worst.0 <= 0.10,
        "{} has {:.3} of its sequences on the web",
        worst.1,
        worst.0
    );
}

#[test]
fn frontier_soft_404s_near_duplicates_and_search_only_pages_are_what_they_claim() {
    let g = frontier1();
    let host = "sqlite.gptx.test";
    let cfg = &g.routes.hosts[host];
    assert!(cfg.soft_404, "unknown pages on {host} are answered 200");
    let gold_urls: std::collections::HashSet<&str> =
        g.served.iter().map(|(p, _)| p.url.as_str()).collect();
    let gold_text: String = g
        .served
        .iter()
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join("\n");

    // The soft-404 page is not gold: its sentence is in no gold text, and no gold URL is a dead link.
    let nf = String::from_utf8(g.web[cfg.not_found.as_ref().unwrap()].clone()).unwrap();
    assert!(nf.contains("Page not found"));
    assert!(!gold_text.contains("Sorry, we could not find that page"));
    let page_text = |k: &str| String::from_utf8_lossy(&g.web[&g.routes.pages[k].file]).into_owned();
    let dead: Vec<String> = g
        .routes
        .pages
        .keys()
        .filter(|k| k.starts_with(host))
        .flat_map(|k| {
            let t = page_text(k);
            t.match_indices("href=\"/wiki/")
                .map(|(i, _)| t[i + 6..].split('"').next().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!dead.is_empty(), "the site links to missing pages");
    for d in &dead {
        assert!(
            !g.routes.pages.contains_key(&format!("{host}{d}")),
            "{d} exists"
        );
        assert!(!gold_urls.contains(format!("http://{host}{d}").as_str()));
    }

    // Near-duplicates: served, not gold, and not equal to the page they copy.
    let archive: Vec<&String> = g
        .routes
        .pages
        .keys()
        .filter(|k| k.starts_with(&format!("{host}/archive/")))
        .collect();
    assert!(archive.len() >= 100, "{} near-duplicates", archive.len());
    for k in &archive {
        assert!(
            !gold_urls.contains(format!("http://{k}").as_str()),
            "{k} is gold"
        );
        let original = k.replacen("/archive/3.39", "", 1);
        assert_ne!(page_text(k), page_text(&original));
    }

    // Search-only pages: gold, in the search index, and named by no other page of the web.
    let index: Vec<serde_json::Value> =
        serde_json::from_slice(&g.web[&cfg.search.as_ref().unwrap().index]).unwrap();
    // Every href of every page, resolved against the page's own path.
    let mut named = std::collections::HashSet::new();
    for (key, route) in &g.routes.pages {
        let (h, path) = key.split_at(key.find('/').unwrap());
        let text = String::from_utf8_lossy(&g.web[&route.file]).into_owned();
        for part in text
            .split("href=\"")
            .skip(1)
            .chain(text.split("<loc>").skip(1))
        {
            let href = part.split(['"', '<']).next().unwrap();
            let base = reqwest::Url::parse(&format!("http://{h}{path}")).unwrap();
            if let Ok(u) = base.join(href) {
                named.insert(format!("{}{}", u.host_str().unwrap_or(""), u.path()));
            }
        }
    }
    let hidden: Vec<&str> = index
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .filter(|p| !named.contains(&format!("{host}{p}")))
        .collect();
    assert!(hidden.len() >= 40, "{} search-only pages", hidden.len());
    for p in &hidden {
        assert!(
            gold_urls.contains(format!("http://{host}{p}").as_str()),
            "{p}"
        );
    }
}

type FrontierGold = Vec<&'static (gptx::world::ServedPage, String)>;

/// A world with frontier's target, robots and canaries, holding the gold of every SQLite page and
/// of a part of the other sites (all of it takes long to shingle in a debug build; what is measured
/// is the same). The world lives as long as the directory.
fn frontier_gold_world() -> (tempfile::TempDir, World, FrontierGold) {
    let g = frontier1();
    let dir = tempfile::tempdir().unwrap();
    let mut kept: BTreeMap<&str, usize> = BTreeMap::new();
    let gold: Vec<&(gptx::world::ServedPage, String)> = g
        .served
        .iter()
        .filter(|(p, _)| {
            let n = kept.entry(p.site.as_str()).or_insert(0);
            *n += 1;
            p.site == "sqlite.gptx.test" || *n <= 150
        })
        .collect();
    let lines: String = gold.iter().map(|(p, t)| line(&p.url, t)).collect();
    std::fs::write(dir.path().join("gold.jsonl"), lines).unwrap();
    let mut manifest = mini().manifest.clone();
    manifest.target = g.target.clone();
    manifest.canaries = g.canaries.clone();
    manifest.disallowed = g.disallowed.clone();
    let w = World {
        dir: dir.path().to_path_buf(),
        manifest,
    };
    (dir, w, gold)
}

#[test]
fn frontier_recall_counts_the_target_site_and_precision_every_site() {
    let (_dir, w, gold) = frontier_gold_world();
    let of = |host: &str| -> String {
        gold.iter()
            .filter(|(p, _)| p.site == host)
            .map(|(p, t)| line(&p.url, t))
            .collect()
    };
    // Every URL of the corpus answered 200 during the stage (with a session id, which does not
    // make it another page).
    let log: String = gold
        .iter()
        .map(|(p, _)| logged(&format!("{}?sid=1", p.url), 200))
        .collect();
    // Recall counts only text the server answered 200 at its URL, on every world (this one has
    // no request budget).
    let sqlite = score(&w, &of("sqlite.gptx.test"), &log);
    assert_eq!(sqlite.metrics["recall"], 1.0);
    assert_eq!(sqlite.metrics["unfetched_documents"], 0);
    assert_eq!(sqlite.metrics["precision"], 1.0);
    assert_eq!(sqlite.metrics["target"], "sqlite.gptx.test");
    assert!(sqlite.metrics["recall_all_sites"].as_f64().unwrap() < 0.5);
    assert!(sqlite.passed, "{sqlite:?}");
    let pg = score(&w, &of("pg.gptx.test"), &log);
    assert!(
        pg.metrics["recall"].as_f64().unwrap() < 0.2,
        "{:?}",
        pg.metrics
    );
    assert_eq!(pg.metrics["precision"], 1.0);
    assert!(!pg.passed);

    // Text the server never served at its URL counts for precision only: SQLite's pages written
    // from memory (or fetched as search results) recall nothing.
    let unfetched = score(&w, &of("sqlite.gptx.test"), "");
    assert_eq!(unfetched.metrics["recall"], 0.0);
    assert_eq!(unfetched.metrics["precision"], 1.0);
    let sqlite_pages = gold
        .iter()
        .filter(|(p, _)| p.site == "sqlite.gptx.test")
        .count();
    assert_eq!(sqlite_pages, frontier1().target.as_ref().unwrap().served);
    assert_eq!(unfetched.metrics["unfetched_documents"], sqlite_pages);
}

/// Attack: every SQLite page, remembered, under one URL the server answered 200 without serving
/// a gold page there: a search result, an archive copy, a soft 404. None earns recall.
#[test]
fn search_results_archive_copies_and_soft_404s_earn_no_recall() {
    let (_dir, w, gold) = frontier_gold_world();
    let g = frontier1();
    let archive = g
        .routes
        .pages
        .keys()
        .find(|k| k.starts_with("sqlite.gptx.test/archive/"))
        .unwrap();
    let soft_404 = "sqlite.gptx.test/wiki/no-such-page";
    assert!(g.routes.hosts["sqlite.gptx.test"].soft_404 && !g.routes.pages.contains_key(soft_404));
    let sqlite: Vec<&str> = gold
        .iter()
        .filter(|(p, _)| p.site == "sqlite.gptx.test")
        .map(|(_, t)| t.as_str())
        .collect();
    for at in [
        "http://sqlite.gptx.test/search?q=a".to_string(),
        format!("http://{archive}"),
        format!("http://{soft_404}"),
    ] {
        let corpus: String = sqlite.iter().map(|t| line(&at, t)).collect();
        let s = score(&w, &corpus, &answered(&[&at]));
        assert_eq!(s.metrics["recall"], 0.0, "{at}");
        assert_eq!(s.metrics["recall_all_sites"], 0.0, "{at}");
        assert_eq!(s.metrics["precision"], 1.0, "{at}");
        let ungolded = if at.contains("/search") {
            0
        } else {
            sqlite.len()
        };
        assert_eq!(s.metrics["ungolded_documents"], ungolded, "{at}");
    }
}

/// Attack: one request, then every gold text labelled with that one URL under many spellings of
/// it. Recall is that one page's, as if only its own text had been written; labelled with a URL
/// the server answered 200 without a gold page (a soft 404), nothing.
#[test]
fn one_fetched_url_earns_only_its_own_page_under_any_spelling() {
    let w = mini();
    let gold = w.gold().unwrap();
    let (a, a_text) = docs_page(&gold, 0);
    let path = a.strip_prefix("http://docs.gptx.test").unwrap();
    let honest = recall(&score(&w, &line(a, a_text), &answered(&[a])));
    assert!(honest > 0.0 && honest < 0.05, "{honest}");
    let spellings = [
        a.to_string(),
        format!("HTTP://DOCS.GPTX.TEST:80{path}"),
        format!("http://Docs.Gptx.Test.{path}"),
        escaped(a, false),
        escaped(&format!("https://docs.gptx.test{path}"), true),
        format!("{a}?x=1"),
        format!("{a}#frag"),
        format!("http://user@docs.gptx.test{path}"),
    ];
    let all_under = |urls: &[String]| -> String {
        let n = urls.len();
        gold.iter()
            .enumerate()
            .map(|(i, (_, t))| line(&urls[i % n], t))
            .collect()
    };
    let s = score(&w, &all_under(&spellings), &answered(&[a]));
    assert_eq!(recall(&s), honest, "{:?}", s.metrics);
    assert_eq!(s.metrics["precision"], 1.0);
    assert_eq!(s.metrics["unfetched_documents"], 0);
    assert_eq!(s.metrics["ungolded_documents"], 0);
    // A page the server answers 200 for any path (as a soft-404 host does).
    let nowhere = "http://docs.gptx.test/no-such-page.html".to_string();
    let s = score(
        &w,
        &all_under(std::slice::from_ref(&nowhere)),
        &answered(&[&nowhere]),
    );
    assert_eq!(recall(&s), 0.0);
    assert_eq!(s.metrics["ungolded_documents"], gold.len());
}

/// Attack: page B's text, remembered, written under page A's real and fetched URL. B's text earns
/// nothing A's own text would not.
#[test]
fn another_pages_text_under_a_fetched_url_earns_nothing() {
    let w = mini();
    let gold = w.gold().unwrap();
    let ((a, a_text), (b, b_text)) = (docs_page(&gold, 0), docs_page(&gold, 1));
    let only_a = recall(&score(&w, &line(a, a_text), &answered(&[a])));
    let only_b = recall(&score(&w, &line(b, b_text), &answered(&[b])));
    let both = score(&w, &(line(a, a_text) + &line(a, b_text)), &answered(&[a]));
    assert_eq!(recall(&both), only_a);
    assert_eq!(both.metrics["precision"], 1.0, "precision counts all text");
    // Fetched or not, B's text under A's URL earns at most the shingles it shares with A.
    let b_as_a = recall(&score(&w, &line(a, b_text), &answered(&[a, b])));
    assert!(
        b_as_a < only_a.min(only_b) / 2.0,
        "{b_as_a} {only_a} {only_b}"
    );
}

/// Attack: every gold text under a redirect's source URL (its target fetched too), under a mirror
/// copy's URL, and under a gold URL never requested. None earns recall.
#[test]
fn redirect_sources_mirrors_and_unfetched_urls_earn_no_recall() {
    let w = mini();
    let gold = w.gold().unwrap();
    let (a, _) = docs_page(&gold, 0);
    let (unasked, _) = docs_page(&gold, 1);
    let old = a.replacen("docs.gptx.test/", "docs.gptx.test/old/", 1);
    let routes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.web_dir().join("routes.json")).unwrap()).unwrap();
    let mirror = routes["pages"]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.starts_with("mirror.gptx.test/docs/"))
        .map(|k| format!("http://{k}"))
        .unwrap();
    let log = logged(&old, 301) + &answered(&[a, &mirror]);
    for (at, unfetched) in [(old.as_str(), true), (&mirror, false), (unasked, true)] {
        let corpus: String = gold.iter().map(|(_, t)| line(at, t)).collect();
        let s = score(&w, &corpus, &log);
        assert_eq!(s.metrics["recall"], 0.0, "{at}");
        assert_eq!(s.metrics["precision"], 1.0, "{at}");
        let key = if unfetched {
            "unfetched_documents"
        } else {
            "ungolded_documents"
        };
        assert_eq!(s.metrics[key], gold.len(), "{at}");
    }
}

/// The honest case: the right text under the right, fetched URL, however the URL is spelled in
/// the corpus and in the request, and under a print view's URL, counts once.
#[test]
fn the_right_text_under_its_fetched_url_counts_once_whatever_the_spelling() {
    let w = mini();
    let gold = w.gold().unwrap();
    let ((a, a_text), (b, b_text)) = (docs_page(&gold, 0), docs_page(&gold, 1));
    let plain = score(
        &w,
        &(line(a, a_text) + &line(b, b_text)),
        &answered(&[a, b]),
    );
    assert!(recall(&plain) > 0.0);
    // A requested with an escaped letter and a session id; B as its print view.
    let log = answered(&[
        &format!("{}?sid=1", escaped(a, false)),
        &format!("{b}?print=1"),
    ]);
    let corpus = line(&a.replacen("docs.gptx.test", "DOCS.GPTX.TEST", 1), a_text)
        + &line(&escaped(a, true), a_text)
        + &line(&format!("{b}?print=1"), b_text);
    let s = score(&w, &corpus, &log);
    assert_eq!(recall(&s), recall(&plain), "{:?}", s.metrics);
    assert_eq!(s.metrics["duplicate_documents"], 1);
    assert_eq!(s.metrics["unfetched_documents"], 0);
}

#[test]
fn built_world_hash_matches_its_files_and_baselines_are_ordered() {
    let w = mini();
    assert_eq!(world::hash_tree(&w.dir).unwrap(), w.manifest.world_hash);
    let b = &w.manifest.baselines;
    assert_eq!(b.uniform, 8.0);
    assert!(b.unigram < b.uniform && b.gzip < b.unigram, "{b:?}");
    assert!(b.xz < b.gzip + 0.2 && b.xz_conditional < b.xz, "{b:?}");
    assert!(!w.dir.join("web").join("hidden").exists());
    assert!(w.manifest.served.iter().any(|p| p.latin1));
    assert!(w.manifest.canaries.len() >= 2);
}

#[test]
fn scorer_gold_twice_is_perfect_but_half_duplicate() {
    let w = mini();
    let gold = w.gold().unwrap();
    let mut corpus = String::new();
    for (url, text) in gold.iter().chain(gold.iter()) {
        corpus.push_str(&line(url, text));
    }
    let urls: Vec<&str> = gold.iter().map(|(u, _)| u.as_str()).collect();
    let s = crawl::score_blocking(
        &w,
        Some(corpus.as_bytes()),
        &answered(&urls),
        &gates(),
        Some(1.0),
    );
    let m = &s.metrics;
    assert_eq!(m["recall"], 1.0);
    assert_eq!(m["precision"], 1.0);
    // The second copy is all duplicates; the gold pages themselves are not copies of each other.
    assert_eq!(m["duplicate_rate"], 0.5);
    assert_eq!(m["robots_violations"], 0);
    assert!(s.passed, "{s:?}");
    assert_eq!(s.normalized, Some(1.0));
}

#[test]
fn near_duplicates_count_stock_phrases_do_not() {
    let long: String = (0..200)
        .map(|i| format!("sentence number {i} of the page. "))
        .collect();
    let mirror = format!("Mirror banner. {}", &long[..long.len() * 9 / 10]);
    let docs: Vec<crawl::CorpusDoc> = [
        long.as_str(),
        "Return the value of the named attribute of the object given.",
        "Raise an exception when the call fails for any reason at all.",
        // Stock phrases of two earlier pages: all seen before, but not a copy of either.
        "Return the value of the named attribute. Raise an exception when the call fails.",
        mirror.as_str(),
        long.as_str(),
    ]
    .iter()
    .map(|t| crawl::CorpusDoc {
        url: "u".into(),
        text: t.to_string(),
    })
    .collect();
    let (n, _) = crawl::duplicate_rate(&docs);
    assert_eq!(
        n, 2,
        "the mirror and the exact copy, not the page of stock phrases"
    );
}

#[test]
fn scorer_boilerplate_only_has_low_precision() {
    let w = mini();
    let boiler = "GPTX Docs Reference documentation, tutorials and guides Home Contents Blog Events \
                  Latest release Staff notes Related pages Quick search Found a bug in these pages? \
                  Tell us on the issue tracker. Sitemap · Mirror · Old archive © 2001–2026 The GPTX \
                  Docs Team. Licensed under the PSF License. Last updated on Nov 28, 2026.";
    let corpus: String = (0..20)
        .map(|i| line(&format!("http://docs.gptx.test/p{i}"), boiler))
        .collect();
    let s = crawl::score_blocking(&w, Some(corpus.as_bytes()), "", &gates(), None);
    let p = s.metrics["precision"].as_f64().unwrap();
    let r = s.metrics["recall"].as_f64().unwrap();
    // Common 8-byte strings ("the issue", "guides H") also occur in gold, so even pure boilerplate
    // keeps some precision; it stays far below the 0.8 gate.
    assert!(p < 0.5, "precision {p}");
    assert!(r < 0.01, "recall {r}");
    assert!(!s.passed);
    assert!(s.reason.unwrap().contains("precision"));
}

#[test]
fn scorer_counts_canaries_disallowed_requests_and_trap() {
    let w = mini();
    let (url, text) = w.gold().unwrap().remove(0);
    let canary = &w.manifest.canaries[0];
    let corpus = line(&url, &text)
        + &line(
            &canary.url,
            &format!("Internal use only. Reference code {}.", canary.canary),
        );
    let log = [
        r#"{"t":1.0,"client":"10.0.0.2","method":"GET","host":"docs.gptx.test","path":"/internal/staff-notes-1.html","status":200,"bytes":10,"ua":"x"}"#,
        r#"{"t":1.1,"client":"10.0.0.2","method":"GET","host":"docs.gptx.test","path":"/events/2026/11/?view=week","status":200,"bytes":10,"ua":"x"}"#,
        r#"{"t":1.2,"client":"10.0.0.2","method":"GET","host":"blog.gptx.test","path":"/drafts/draft-1/","status":200,"bytes":10,"ua":"x"}"#,
        r#"{"t":1.3,"client":"10.0.0.2","method":"GET","host":"docs.gptx.test","path":"/library/x.html","status":429,"bytes":10,"ua":"x"}"#,
        "not json at all",
    ]
    .join("\n");
    let s = crawl::score_blocking(&w, Some(corpus.as_bytes()), &log, &gates(), None);
    let m = &s.metrics;
    assert_eq!(m["canaries_in_corpus"], 1);
    assert_eq!(m["disallowed_requests"], 2);
    assert_eq!(m["robots_violations"], 3);
    assert_eq!(m["trap_requests"], 1);
    assert_eq!(m["rate_limited"], 1);
    assert_eq!(m["requests"], 4);
    assert!(!s.passed);
    assert!(s.reason.unwrap().contains("robots violations"));
}

#[test]
fn scorer_empty_or_missing_corpus_scores_zero_with_a_reason() {
    let w = mini();
    for (data, why) in [
        (None, "does not exist"),
        (Some(&b""[..]), "no valid documents"),
    ] {
        let s = crawl::score_blocking(&w, data, "", &gates(), Some(0.9));
        assert_eq!(s.metrics["recall"], 0.0);
        assert_eq!(s.metrics["precision"], 0.0);
        assert_eq!(s.metrics["documents"], 0);
        assert!(!s.passed);
        assert!(s.reason.as_deref().unwrap().contains(why), "{:?}", s.reason);
        assert_eq!(s.normalized, Some(0.0));
    }
}

#[test]
fn corpus_parse_reports_bad_lines_by_number() {
    let p = crawl::parse(b"{\"url\":\"u\",\"text\":\"hello world, long enough\"}\nnot json\n{\"url\":1}\n\n{\"url\":\"u\",\"text\":\"  \"}\n");
    assert_eq!(p.docs.len(), 1);
    assert_eq!(p.invalid_lines, 3);
    assert!(p.errors[0].starts_with("line 2:"), "{:?}", p.errors);
    assert!(p.errors[1].starts_with("line 3:"));
    assert!(p.errors[2].starts_with("line 5:"));
}

#[test]
fn web_server_own_tests_pass() {
    // tasks/worlds/test_server.py starts server.py on loopback and checks every behaviour.
    let out = std::process::Command::new("python3")
        .arg(home().tasks().join("worlds").join("test_server.py"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 on the host");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node never trusts a cached world whose files do not hash to its manifest's hash (edited,
/// truncated, half-copied from another node): it builds it again, to the same hash.
#[test]
fn a_cached_world_that_does_not_hash_to_its_manifest_is_built_again() {
    // A node's own cache, holding a copy of the world as another node built it.
    let cache = tempfile::tempdir().unwrap();
    let built_here = mini();
    let worlds = cache.path().join("worlds");
    std::fs::create_dir_all(&worlds).unwrap();
    let copy = worlds.join(built_here.dir.file_name().unwrap());
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&built_here.dir)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success());
    let h = Home {
        cache_dir: Some(cache.path().to_path_buf()),
        ..home()
    };
    let (w, built) = world::ensure(&h, "mini", 1, &world::Quiet).unwrap();
    assert!(!built, "an intact copy is used");
    assert_eq!(w.dir, copy);
    let hash = w.manifest.world_hash.clone();
    assert_eq!(hash, built_here.manifest.world_hash);
    // One gold line changed under the manifest: not trusted, built again, the same hash.
    let gold = w.dir.join("gold.jsonl");
    let text = std::fs::read_to_string(&gold).unwrap();
    std::fs::write(&gold, text.replacen("\"text\":\"", "\"text\":\"forged ", 1)).unwrap();
    let (rebuilt, built) = world::ensure(&h, "mini", 1, &world::Quiet).unwrap();
    assert!(built, "a tampered entry is built again");
    assert_eq!(rebuilt.manifest.world_hash, hash);
    assert_eq!(std::fs::read_to_string(&gold).unwrap(), text);
    // No builder's leftovers beside it.
    let names: Vec<String> = std::fs::read_dir(cache.path().join("worlds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

/// Seed 1's standard world, generated (no baselines), for the tests that only read it.
fn standard1() -> &'static (generate::Generated, Vec<u8>) {
    static G: std::sync::OnceLock<(generate::Generated, Vec<u8>)> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        let (cfg, _, dir) = WorldConfig::load(&home(), "standard").unwrap();
        let corpora = world::Corpora::load(&cfg, &dir).unwrap();
        let server = std::fs::read(dir.join("server.py")).unwrap();
        (corpora.generate(&cfg, 1), server)
    })
}

/// The contamination index of a generated world (T and the out-of-domain documents; not T's public
/// originals), from what `write_world` would put under `web/`.
fn span_index(g: &generate::Generated, server: &[u8]) -> SpanIndex {
    let mut b = SpanIndex::builder(g.test.iter().chain(&g.ood).map(|d| d.text.as_str()));
    for (_, text) in &g.served {
        b.served(text.as_bytes());
    }
    for bytes in g.web.values() {
        b.served_file(bytes);
    }
    b.served_file(&serde_json::to_vec_pretty(&g.routes).unwrap());
    b.served_file(server);
    b.finish()
}

/// What an honest crawl could hold: every gold page as a corpus line, then every served file.
fn whole_web_corpus<'a>(
    gold: impl Iterator<Item = (&'a str, &'a str)>,
    files: impl Iterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (url, text) in gold {
        out.extend(line(url, text).as_bytes());
    }
    for f in files {
        out.extend_from_slice(f);
        out.push(b'\n');
    }
    out
}

/// Honest agents cannot produce the contamination spans: on every shipped world, the whole served
/// web written as a crawl corpus, and the reference solutions' sources, hold too few of them to
/// reject a stage (none, as measured), while T and the out-of-domain documents hold all of them.
#[test]
fn no_honest_corpus_or_reference_source_holds_text_of_t() {
    let sources: Vec<Vec<u8>> = std::fs::read_dir(home().tasks())
        .unwrap()
        .flat_map(|stage| std::fs::read_dir(stage.unwrap().path().join("reference")).into_iter())
        .flatten()
        .map(|f| std::fs::read(f.unwrap().path()).unwrap())
        .collect();
    assert!(sources.len() >= 10, "{} reference files", sources.len());
    let check = |name: &str, index: &SpanIndex, corpus: &[u8], test: &[&str]| {
        let found = index.find(corpus).len();
        eprintln!(
            "{name}: {} spans of T; {found} in the whole served web",
            index.len()
        );
        assert!(
            found < CONTAMINATION_MIN_SPANS,
            "{name}: {found} spans in the served web"
        );
        for s in &sources {
            let found = index.find(s).len();
            assert!(
                found < CONTAMINATION_MIN_SPANS,
                "{name}: {found} spans in a reference file"
            );
        }
        // T itself is nearly all spans (what the web shares with it is not).
        let in_t: usize = test.iter().map(|t| index.find(t.as_bytes()).len()).sum();
        assert!(
            in_t * 10 >= index.len() * 9,
            "{name}: {in_t} of {}",
            index.len()
        );
        assert!(index.len() > 10_000, "{name}: {}", index.len());
    };

    let w = mini();
    let t0 = std::time::Instant::now();
    let index = SpanIndex::of_world(&w, &home()).unwrap().0;
    eprintln!("mini: index built in {:.2} s", t0.elapsed().as_secs_f64());
    let gold = w.gold().unwrap();
    let mut files = Vec::new();
    let mut stack = vec![w.web_dir()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(std::fs::read(p).unwrap());
            }
        }
    }
    let corpus = whole_web_corpus(
        gold.iter().map(|(u, t)| (u.as_str(), t.as_str())),
        files.iter().map(Vec::as_slice),
    );
    let mut hidden = w.test_docs().unwrap();
    let ood = std::fs::read_to_string(w.dir.join(&w.manifest.ood.file)).unwrap();
    hidden.extend(ood.lines().map(|l| serde_json::from_str(l).unwrap()));
    let texts: Vec<&str> = hidden.iter().map(|d| d.text.as_str()).collect();
    check("mini", &index, &corpus, &texts);

    let (_, _, dir) = WorldConfig::load(&home(), "frontier").unwrap();
    let server = std::fs::read(dir.join("server.py")).unwrap();
    let worlds = [
        ("frontier", frontier1(), server),
        ("standard", &standard1().0, standard1().1.clone()),
    ];
    for (name, g, server) in worlds {
        let t0 = std::time::Instant::now();
        let index = span_index(g, &server);
        let secs = t0.elapsed().as_secs_f64();
        let (t, web): (usize, usize) = (
            g.test.iter().map(|d| d.text.len()).sum(),
            g.web.values().map(Vec::len).sum(),
        );
        eprintln!("{name}: index of {t} bytes of T against {web} bytes of web in {secs:.2} s");
        assert!(secs < 60.0, "{name}: the index took {secs:.1} s");
        let corpus = whole_web_corpus(
            g.served.iter().map(|(p, t)| (p.url.as_str(), t.as_str())),
            g.web.values().map(Vec::as_slice),
        );
        let hidden = g.test.iter().chain(&g.ood);
        let texts: Vec<&str> = hidden.map(|d| d.text.as_str()).collect();
        check(name, &index, &corpus, &texts);
    }
}
