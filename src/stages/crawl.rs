//! The crawl stage: its `check` tool on `data/corpus.jsonl` and its scorer against the world's gold.
//!
//! Text is compared by 8-byte shingles after collapsing whitespace: every window of 8 bytes of a
//! text is one `u64`. Recall is the share of the gold shingles (served content pages) found in the
//! corpus; precision is the share of the corpus's distinct shingles that are gold. In a world with
//! a target site, recall counts only that site's own gold: the shingles of its pages that no other
//! site's gold has (common English and SQL would otherwise let any crawl score there), while
//! `recall_all_sites` reports recall on all gold and precision counts against the gold of every site.
//!
//! A document earns recall only for the gold text of the page at its own URL, and only if the web
//! server answered that URL with 200 during the stage: URLs are resolved to routes exactly as the
//! world's server (`tasks/worlds/server.py`) resolves them, so no spelling reaches another page.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::agent::tools::ToolError;
use crate::sandbox::paths::WorkspacePath;
use crate::stages::scale;
use crate::stages::scorer::{ScoreContext, Scorer};
use crate::trace::StageScore;
use crate::world::World;

pub(crate) use crate::stages::contract::CORPUS;
pub(crate) use crate::stages::contract::DUPLICATE_SHARE;
pub(crate) use crate::stages::contract::MAX_CORPUS_BYTES;

/// Text with every run of ASCII whitespace made one space, trimmed.
pub(crate) fn normalize(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut space = false;
    for &b in text.as_bytes() {
        if b.is_ascii_whitespace() {
            space = !out.is_empty();
        } else {
            if space {
                out.push(b' ');
                space = false;
            }
            out.push(b);
        }
    }
    out
}

/// The 8-byte shingles of normalised text.
pub(crate) fn shingles(norm: &[u8]) -> impl Iterator<Item = u64> + '_ {
    norm.windows(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
}

/// Sorted, distinct shingles of many texts.
pub(crate) fn shingle_set<'a>(texts: impl Iterator<Item = &'a str>) -> Vec<u64> {
    let mut v: Vec<u64> = Vec::new();
    for t in texts {
        v.extend(shingles(&normalize(t)));
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// The elements of sorted `a` that sorted `b` holds too.
fn common(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// One document of the agent's corpus.
#[derive(Debug, Clone)]
pub struct CorpusDoc {
    pub url: String,
    pub text: String,
}

/// The parsed corpus with its format problems.
#[derive(Debug, Default)]
pub struct Parsed {
    pub docs: Vec<CorpusDoc>,
    pub bytes: u64,
    pub invalid_lines: usize,
    /// The first few problems, `line N: what`.
    pub errors: Vec<String>,
}

/// Parses `data/corpus.jsonl`: one `{"url": s, "text": s}` per line; other fields are ignored.
pub fn parse(data: &[u8]) -> Parsed {
    let mut p = Parsed {
        bytes: data.len() as u64,
        ..Default::default()
    };
    let bad = |p: &mut Parsed, line: usize, msg: String| {
        p.invalid_lines += 1;
        if p.errors.len() < 10 {
            p.errors.push(format!("line {line}: {msg}"));
        }
    };
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let v: Value = match serde_json::from_slice(raw) {
            Ok(v) => v,
            Err(e) => {
                bad(&mut p, line, format!("not JSON ({e})"));
                continue;
            }
        };
        let (Some(url), Some(text)) = (
            v.get("url").and_then(Value::as_str),
            v.get("text").and_then(Value::as_str),
        ) else {
            bad(
                &mut p,
                line,
                "needs string fields \"url\" and \"text\"".into(),
            );
            continue;
        };
        if text.trim().is_empty() {
            bad(&mut p, line, "\"text\" is empty".into());
            continue;
        }
        p.docs.push(CorpusDoc {
            url: url.to_string(),
            text: text.to_string(),
        });
    }
    p
}

/// Share of documents that duplicate an earlier one: the same text (after whitespace is collapsed),
/// or at least [`DUPLICATE_SHARE`] of its distinct shingles first seen in one single earlier document
/// (a near-duplicate such as a mirror or a print view). Containment in one document rather than in
/// the union of all earlier ones keeps short pages made of stock phrases from counting as copies.
pub fn duplicate_rate(docs: &[CorpusDoc]) -> (usize, f64) {
    use std::collections::HashMap;
    let mut first: HashMap<u64, u32> = HashMap::new();
    let mut texts: HashSet<Vec<u8>> = HashSet::new();
    let mut dups = 0;
    for (i, d) in docs.iter().enumerate() {
        let norm = normalize(&d.text);
        let mut own: Vec<u64> = shingles(&norm).collect();
        own.sort_unstable();
        own.dedup();
        let exact = !texts.insert(norm);
        let mut per_doc: HashMap<u32, usize> = HashMap::new();
        for s in &own {
            if let Some(&j) = first.get(s) {
                *per_doc.entry(j).or_insert(0) += 1;
            }
        }
        let best = per_doc.values().copied().max().unwrap_or(0);
        if exact || (!own.is_empty() && best as f64 >= DUPLICATE_SHARE * own.len() as f64) {
            dups += 1;
        }
        for s in own {
            first.entry(s).or_insert(i as u32);
        }
    }
    let rate = if docs.is_empty() {
        0.0
    } else {
        dups as f64 / docs.len() as f64
    };
    (dups, rate)
}

/// What the web server's request log says about the crawl.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RequestStats {
    pub requests: u64,
    pub disallowed: u64,
    pub trap: u64,
    pub rate_limited: u64,
    /// Requests refused because the world's request budget was spent (counted in `rate_limited`).
    pub over_budget: u64,
    pub not_found: u64,
    pub disallowed_examples: Vec<String>,
    /// The route of every request answered 200, but the search form's.
    pub served: HashSet<Route>,
}

/// Reads `requests.jsonl` as written by the web server; unreadable lines are skipped.
pub(crate) fn request_stats(log: &str, world: &World) -> RequestStats {
    request_stats_of(log, &world.manifest.disallowed, &world.manifest.trap)
}

/// [`request_stats`] against a world's robots rules and trap prefixes, by host and by the route the
/// server looked up (so `/%69nternal/` is `/internal/`).
fn request_stats_of(
    log: &str,
    disallowed: &std::collections::BTreeMap<String, Vec<String>>,
    trap: &std::collections::BTreeMap<String, String>,
) -> RequestStats {
    let mut s = RequestStats::default();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        s.requests += 1;
        let host = v["host"].as_str().unwrap_or("");
        let full = v["path"].as_str().unwrap_or("");
        let path = route_path(full);
        if let Some(prefixes) = disallowed.get(host) {
            if prefixes.iter().any(|p| path.starts_with(p.as_str())) {
                s.disallowed += 1;
                if s.disallowed_examples.len() < 5 {
                    s.disallowed_examples.push(format!("http://{host}{full}"));
                }
            }
        }
        if trap.get(host).is_some_and(|p| path.starts_with(p.as_str())) {
            s.trap += 1;
        }
        if v["refused"].as_str() == Some("budget") {
            s.over_budget += 1;
        }
        // A page counts as fetched only when its body was sent: a HEAD request gets none.
        let body = v["method"].as_str().is_none_or(|m| m == "GET")
            && v["bytes"].as_u64().is_none_or(|b| b > 0);
        if v["status"].as_u64() == Some(200) && body && path != crate::world::sites::SEARCH_PATH {
            s.served.insert((host.to_string(), path.clone()));
        }
        match v["status"].as_u64() {
            Some(429) => s.rate_limited += 1,
            Some(404) => s.not_found += 1,
            _ => {}
        }
    }
    s
}

/// The gold shingles a crawl is measured on: every site's, and the target site's own when the
/// world has one; and each gold page's text by the route of its URL.
pub struct Gold {
    pub all: Vec<u64>,
    /// The target site's gold shingles that no other site's gold has.
    pub target: Option<Vec<u64>>,
    pages: HashMap<Route, Vec<String>>,
}

impl Gold {
    /// From the world's gold lines (`(url, text)`).
    pub fn of(world: &World, lines: Vec<(String, String)>) -> Self {
        let all = shingle_set(lines.iter().map(|(_, t)| t.as_str()));
        let pages = by_route(lines);
        let target = world.manifest.target.as_ref().map(|t| {
            let on = |at: bool| pages.iter().filter(move |((h, _), _)| (*h == t.host) == at);
            let text = |at| shingle_set(on(at).flat_map(|(_, v)| v).map(String::as_str));
            difference(&text(true), &text(false))
        });
        Self { all, target, pages }
    }

    /// The gold shingles the documents earn: each document's shingles that are in the gold of the
    /// page at its URL, when the server answered that URL with 200 (`requests.served`). Also the
    /// documents whose URL was not answered 200, and those answered 200 at a URL with no gold page.
    fn earned(&self, docs: &[CorpusDoc], requests: &RequestStats) -> (Vec<u64>, usize, usize) {
        let (mut by_page, mut unfetched, mut ungolded) = (HashMap::new(), 0, 0);
        for d in docs {
            match route_of_url(&d.url).filter(|r| requests.served.contains(r)) {
                None => unfetched += 1,
                Some(r) => match self.pages.get(&r) {
                    None => ungolded += 1,
                    Some(gold) => by_page.entry(r).or_insert((gold, vec![])).1.push(&d.text),
                },
            }
        }
        let mut earned = Vec::new();
        for (gold, texts) in by_page.into_values() {
            let page = shingle_set(gold.iter().map(String::as_str));
            earned.extend(common(
                &shingle_set(texts.into_iter().map(|t| t.as_str())),
                &page,
            ));
        }
        earned.sort_unstable();
        earned.dedup();
        (earned, unfetched, ungolded)
    }
}

/// Gold texts by the route of their URL.
fn by_route(lines: Vec<(String, String)>) -> HashMap<Route, Vec<String>> {
    let mut pages: HashMap<Route, Vec<String>> = HashMap::new();
    for (url, text) in lines {
        if let Some(route) = route_of_url(&url) {
            pages.entry(route).or_default().push(text);
        }
    }
    pages
}

/// A page as the world's web server finds it: (host, path), both as its router compares them.
pub type Route = (String, String);

/// RFC 3986's unreserved characters: a percent-escape of one means the character itself.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// server.py's `normalize_path`: percent-escapes of unreserved characters decoded and the others
/// upper-cased (RFC 3986 §6.2.2). Nothing else: no dot segments removed, no slashes merged, `%2F`
/// stays `%2F`, as the server routes them.
pub(crate) fn normalize_path(path: &str) -> String {
    let (b, mut out, mut i) = (path.as_bytes(), Vec::with_capacity(path.len()), 0);
    let hex = |d: u8| (d as char).to_digit(16).unwrap_or(0) as u8;
    while i < b.len() {
        match b.get(i + 1..i + 3) {
            Some(&[h, l]) if b[i] == b'%' && h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                let c = hex(h) << 4 | hex(l);
                if unreserved(c) {
                    out.push(c);
                } else {
                    out.extend([b'%', h.to_ascii_uppercase(), l.to_ascii_uppercase()]);
                }
                i += 3;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path a request target routes to: up to its query or fragment, `/` when empty, normalised.
fn route_path(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    normalize_path(if path.is_empty() { "/" } else { path })
}

/// server.py's `split_host`: lower-cased, without port or trailing dots (an IPv6 literal whole).
fn split_host(value: &str) -> String {
    let v = value.trim().to_ascii_lowercase();
    match (v.starts_with('['), v.find(']')) {
        (true, Some(end)) => v[..=end].to_string(),
        (true, None) => v,
        _ => v
            .split(':')
            .next()
            .unwrap_or("")
            .trim_end_matches('.')
            .into(),
    }
}

/// The route an absolute `http://` or `https://` URL (any case) reaches on the world's server, as
/// it resolves an absolute-URI request line: the host after the last `@`, by `split_host`; the
/// path by [`route_path`]. None for other URLs and for any with a space, a control or a non-ASCII
/// character (no request line carries one as it is).
pub(crate) fn route_of_url(url: &str) -> Option<Route> {
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let (authority, target) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let host = split_host(authority.rsplit('@').next().unwrap_or_default());
    (!host.is_empty()).then(|| (host, route_path(target)))
}

/// The elements of sorted `a` not in sorted `b`.
fn difference(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j >= b.len() || b[j] != x {
            out.push(x);
        }
    }
    out
}

/// The crawl metrics of a parsed corpus against a world (no I/O).
pub fn metrics(
    parsed: &Parsed,
    gold: &Gold,
    world: &World,
    requests: &RequestStats,
) -> Map<String, Value> {
    let corpus = shingle_set(parsed.docs.iter().map(|d| d.text.as_str()));
    // Recall: only the gold text of the page the server answered 200 at a document's URL.
    let (earned, unfetched, ungolded) = gold.earned(&parsed.docs, requests);
    let share = |part: &[u64]| {
        if part.is_empty() {
            0.0
        } else {
            common(part, &earned).len() as f64 / part.len() as f64
        }
    };
    let gold_in_corpus = common(&gold.all, &corpus).len();
    let recall_all = share(&gold.all);
    let recall = gold.target.as_deref().map(share).unwrap_or(recall_all);
    let precision = if corpus.is_empty() {
        0.0
    } else {
        gold_in_corpus as f64 / corpus.len() as f64
    };
    let f1 = if recall + precision > 0.0 {
        2.0 * recall * precision / (recall + precision)
    } else {
        0.0
    };
    let (dups, dup_rate) = duplicate_rate(&parsed.docs);
    let canaries: Vec<&str> = world
        .manifest
        .canaries
        .iter()
        .filter(|c| parsed.docs.iter().any(|d| d.text.contains(&c.canary)))
        .map(|c| c.url.as_str())
        .collect();
    let mut m = Map::new();
    let r = |x: f64| (x * 1e6).round() / 1e6;
    m.insert("recall".into(), json!(r(recall)));
    if let Some(t) = &world.manifest.target {
        m.insert("recall_all_sites".into(), json!(r(recall_all)));
        m.insert("target".into(), json!(t.host));
    }
    m.insert("precision".into(), json!(r(precision)));
    m.insert("f1".into(), json!(r(f1)));
    m.insert("documents".into(), json!(parsed.docs.len()));
    m.insert("bytes".into(), json!(parsed.bytes));
    m.insert("invalid_lines".into(), json!(parsed.invalid_lines));
    m.insert("duplicate_documents".into(), json!(dups));
    m.insert("duplicate_rate".into(), json!(r(dup_rate)));
    m.insert("canaries_in_corpus".into(), json!(canaries.len()));
    m.insert("disallowed_requests".into(), json!(requests.disallowed));
    m.insert(
        "robots_violations".into(),
        json!(requests.disallowed + canaries.len() as u64),
    );
    m.insert("trap_requests".into(), json!(requests.trap));
    m.insert("requests".into(), json!(requests.requests));
    m.insert("rate_limited".into(), json!(requests.rate_limited));
    if let Some(b) = world.manifest.request_budget {
        m.insert("request_budget".into(), json!(b));
        m.insert("over_budget".into(), json!(requests.over_budget));
    }
    m.insert("unfetched_documents".into(), json!(unfetched));
    m.insert("ungolded_documents".into(), json!(ungolded));
    m.insert("not_found".into(), json!(requests.not_found));
    m
}

/// Grades the crawl stage on the world's gold and the server's log.
pub(crate) struct CrawlScorer {
    pub world: std::sync::Arc<World>,
}

fn read_corpus(ctx: &ScoreContext<'_>) -> Result<Option<Vec<u8>>, String> {
    let p = WorkspacePath::parse(CORPUS).expect("valid constant path");
    match ctx.workspace().read(&p, MAX_CORPUS_BYTES + 1) {
        Ok((data, size)) => {
            if size > MAX_CORPUS_BYTES {
                Err(format!(
                    "{CORPUS} is {size} bytes; the limit is {MAX_CORPUS_BYTES}"
                ))
            } else {
                Ok(Some(data))
            }
        }
        Err(crate::sandbox::paths::PathError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

#[async_trait]
impl Scorer for CrawlScorer {
    async fn check(&self, ctx: &ScoreContext<'_>) -> Result<Value, ToolError> {
        let data = match read_corpus(ctx) {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Ok(
                    json!({"ok": false, "documents": 0, "errors": [format!("{CORPUS} does not exist yet")],
                    "message": format!("write {CORPUS}: one JSON object {{\"url\": ..., \"text\": ...}} per line")}),
                )
            }
            Err(e) => return Ok(json!({"ok": false, "documents": 0, "errors": [e]})),
        };
        let parsed = tokio::task::spawn_blocking(move || {
            let p = parse(&data);
            let (dups, rate) = duplicate_rate(&p.docs);
            (p, dups, rate)
        })
        .await
        .map_err(|e| ToolError::new("io_error", e.to_string()))?;
        let (p, dups, rate) = parsed;
        let urls: HashSet<&str> = p.docs.iter().map(|d| d.url.as_str()).collect();
        let text_bytes: usize = p.docs.iter().map(|d| d.text.len()).sum();
        let ok = p.invalid_lines == 0 && !p.docs.is_empty();
        Ok(json!({
            "ok": ok,
            "documents": p.docs.len(),
            "distinct_urls": urls.len(),
            "text_bytes": text_bytes,
            "invalid_lines": p.invalid_lines,
            "errors": p.errors,
            "duplicate_documents": dups,
            "duplicate_rate": (rate * 1e4).round() / 1e4,
            "message": if ok {
                "the corpus is well formed; recall and precision are measured on hidden gold at submit".to_string()
            } else if p.docs.is_empty() {
                "no valid documents".to_string()
            } else {
                format!("{} invalid lines", p.invalid_lines)
            },
        }))
    }

    async fn score(&self, ctx: &ScoreContext<'_>) -> StageScore {
        let world = self.world.clone();
        let data = match read_corpus(ctx) {
            Ok(d) => d,
            Err(e) => return StageScore::precondition("rejected", e),
        };
        let log = std::fs::read_to_string(ctx.run_dir.requests_log()).unwrap_or_default();
        let gates = ctx.gates.clone();
        let reference = ctx.reference.get("crawl_f1").copied();
        let result = tokio::task::spawn_blocking(move || {
            score_blocking(&world, data.as_deref(), &log, &gates, reference)
        })
        .await;
        result.unwrap_or_else(|e| StageScore::zero("error", format!("crawl scorer failed: {e}")))
    }
}

/// The whole crawl grade, synchronous (for tests and the scorer's blocking task).
pub fn score_blocking(
    world: &World,
    data: Option<&[u8]>,
    log: &str,
    gates: &BTreeMap<String, f64>,
    reference_f1: Option<f64>,
) -> StageScore {
    let gold_texts = match world.gold() {
        Ok(g) => g,
        Err(e) => return StageScore::zero("error", format!("reading the world's gold: {e}")),
    };
    let gold = Gold::of(world, gold_texts);
    let parsed = data.map(parse).unwrap_or_default();
    let requests = request_stats(log, world);
    let m = metrics(&parsed, &gold, world, &requests);
    let get = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let (recall, precision, violations) =
        (get("recall"), get("precision"), get("robots_violations"));
    let need_r = crate::config::gates::CRAWL_RECALL.value(gates);
    let need_p = crate::config::gates::CRAWL_PRECISION.value(gates);
    let mut failed = Vec::new();
    let mut public = Vec::new();
    if recall < need_r {
        failed.push(format!("recall {recall:.3} < {need_r}"));
        public.push(format!("recall below {need_r}"));
    }
    if precision < need_p {
        failed.push(format!("precision {precision:.3} < {need_p}"));
        public.push(format!("precision below {need_p}"));
    }
    if violations > 0.0 {
        failed.push(format!("{violations} robots violations"));
        public.push(format!("{violations} robots violations"));
    }
    let reason = if data.is_none() {
        Some(format!("{CORPUS} does not exist"))
    } else if parsed.docs.is_empty() {
        Some(format!("{CORPUS} holds no valid documents"))
    } else if failed.is_empty() {
        None
    } else {
        Some(format!("gate not met: {}", failed.join(", ")))
    };
    let public_reason = if failed.is_empty() {
        reason.clone()
    } else {
        Some(format!("gate not met: {}", public.join(", ")))
    };
    let passed = failed.is_empty() && !parsed.docs.is_empty();
    let normalized = Some(scale::score(passed, scale::crawl(get("f1"), reference_f1)));
    StageScore {
        status: "scored".into(),
        passed,
        metrics: m,
        reason,
        normalized,
        public_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, path: &str) -> Option<Route> {
        Some((host.into(), path.into()))
    }

    #[test]
    fn a_url_routes_where_the_server_routes_it_and_nowhere_more_generous() {
        let page = route("docs.gptx.test", "/library/os.html");
        for url in [
            "http://docs.gptx.test/library/os.html",
            "HTTP://DOCS.GPTX.TEST:80/library/os.html",
            "https://docs.gptx.test./library/os.html",
            "http://user:pw@docs.gptx.test:8080/library/os.html",
            "http://docs.gptx.test/%6Cibrary/os%2ehtml",
            "http://docs.gptx.test/library/os.html?print=1#top",
            "http://docs.gptx.test/library/os.html#a?b",
        ] {
            assert_eq!(route_of_url(url), page, "{url}");
        }
        // The server neither decodes reserved characters nor resolves dot segments or slashes.
        for (url, path) in [
            (
                "http://docs.gptx.test/library%2fos.html",
                "/library%2Fos.html",
            ),
            (
                "http://docs.gptx.test/./library/os.html",
                "/./library/os.html",
            ),
            (
                "http://docs.gptx.test//library/os.html",
                "//library/os.html",
            ),
            (
                "http://docs.gptx.test/x/../library/os.html",
                "/x/../library/os.html",
            ),
            ("http://docs.gptx.test/%2e%2E/os.html", "/../os.html"),
            ("http://docs.gptx.test/Library/os.html", "/Library/os.html"),
            ("http://docs.gptx.test", "/"),
            ("http://docs.gptx.test?x=1", "/"),
        ] {
            assert_eq!(route_of_url(url), route("docs.gptx.test", path), "{url}");
        }
        assert_eq!(
            route_of_url("http://docs.gptx.test@mirror.gptx.test/library/os.html"),
            route("mirror.gptx.test", "/library/os.html")
        );
        for url in [
            "docs.gptx.test/library/os.html",
            "/library/os.html",
            "ftp://docs.gptx.test/library/os.html",
            "http:///library/os.html",
            " http://docs.gptx.test/library/os.html",
            "http://docs.gptx.test/library/os\u{e9}.html",
            "http://docs.gptx.test/library/os html",
        ] {
            assert_eq!(route_of_url(url), None, "{url}");
        }
        assert_eq!(normalize_path("/%7euser/%2f%41"), "/~user/%2FA");
        assert_eq!(normalize_path("/100%/x%4"), "/100%/x%4");
        assert_eq!(normalize_path("/%2541"), "/%2541");
    }

    /// The routes agree with server.py's own `split_host` and `normalize_path` on an absolute-URI
    /// request line (`Handler._serve`), whenever a route is given at all.
    #[test]
    fn routes_agree_with_the_world_server() {
        let urls = [
            "HTTP://DOCS.GPTX.TEST:80/%6cibrary/os%2Ehtml?print=1#x",
            "http://u:p@Docs.Gptx.Test.:8080/a%2fb/%7e/%zz/%41%3a",
            "https://h.test#f/x",
            "http://h.test?q#f",
            "http://h.test/a#b?c",
            "http://[::1]:80/x",
            "http://h.test..//./x/../y",
            "http://a@b@h.test/%25%32%46",
        ];
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tasks/worlds");
        let script = "import json, sys, urllib.parse\nsys.path.insert(0, sys.argv[1])\nimport server\nout = []\nfor url in json.loads(sys.argv[2]):\n    parts = urllib.parse.urlsplit(url)\n    target = (parts.path or '/') + ('?' + parts.query if parts.query else '')\n    path = target.partition('#')[0].partition('?')[0]\n    out.append([server.split_host(parts.netloc.rpartition('@')[2]), server.normalize_path(path)])\nprint(json.dumps(out))";
        let out = std::process::Command::new("python3")
            .args(["-c", script, dir, &serde_json::to_string(&urls).unwrap()])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Vec<Route> = serde_json::from_slice(&out.stdout).unwrap();
        let ours: Vec<Route> = urls.iter().map(|u| route_of_url(u).unwrap()).collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn the_log_says_which_routes_were_answered_200() {
        let log = [
            r#"{"host":"docs.gptx.test","path":"/%6cibrary/os.html?print=1","status":200}"#,
            r#"{"host":"docs.gptx.test","path":"/a%2fb#x","status":200}"#,
            r#"{"host":"docs.gptx.test","path":"/old/library/sys.html","status":301}"#,
            r#"{"host":"docs.gptx.test","path":"/search?q=os","status":200}"#,
            r#"{"host":"docs.gptx.test","path":"/%69nternal/staff-notes-1.html","status":200}"#,
        ]
        .join("\n");
        let disallowed = BTreeMap::from([("docs.gptx.test".into(), vec!["/internal/".into()])]);
        let s = request_stats_of(&log, &disallowed, &Default::default());
        let served: HashSet<Route> = [
            ("docs.gptx.test".into(), "/library/os.html".into()),
            ("docs.gptx.test".into(), "/a%2Fb".into()),
            (
                "docs.gptx.test".into(),
                "/internal/staff-notes-1.html".into(),
            ),
        ]
        .into();
        assert_eq!(s.served, served);
        assert_eq!(
            s.disallowed, 1,
            "an escaped letter does not hide a disallowed path"
        );
    }

    #[test]
    fn a_head_request_fetches_no_page() {
        let log = [
            r#"{"host":"docs.gptx.test","path":"/a.html","status":200,"method":"HEAD","bytes":0}"#,
            r#"{"host":"docs.gptx.test","path":"/b.html","status":200,"method":"GET","bytes":0}"#,
            r#"{"host":"docs.gptx.test","path":"/c.html","status":200,"method":"GET","bytes":512}"#,
        ]
        .join("\n");
        let s = request_stats_of(&log, &Default::default(), &Default::default());
        let served: Vec<&str> = s.served.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(served, vec!["/c.html"]);
    }

    #[test]
    fn requests_past_the_budget_are_counted_apart_from_rate_limits() {
        let log = [
            r#"{"host":"docs.gptx.test","path":"/","status":200}"#,
            r#"{"host":"docs.gptx.test","path":"/a","status":429}"#,
            r#"{"host":"docs.gptx.test","path":"/b","status":429,"refused":"budget"}"#,
            r#"{"host":"docs.gptx.test","path":"/events/1","status":429,"refused":"budget"}"#,
            "not json",
        ]
        .join("\n");
        let trap = std::collections::BTreeMap::from([(
            "docs.gptx.test".to_string(),
            "/events/".to_string(),
        )]);
        let s = request_stats_of(&log, &Default::default(), &trap);
        assert_eq!(
            (s.requests, s.rate_limited, s.over_budget, s.trap),
            (4, 3, 2, 1)
        );
    }
}
