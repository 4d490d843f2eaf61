//! A world's extra documentation sites (`[[sites]]`): a corpus each on its own host, with paginated listings, a search form, soft-404s and near-duplicates; one may hold the vertical target T.
//!
//! A site's content pages are `/<doc id>`. They are reached through the paginated listing
//! (`/pages/N/`), links between pages, the sitemap when the site has one, and the search form
//! (`/search?q=`). A share of them is *search-only*: no listing, link or sitemap names them, so
//! only a crawler that uses the form finds them. Some pages have a near-duplicate under
//! `/archive/<release>/`, a copy with small edits that is not gold. Some link to pages that do not
//! exist, which a soft-404 site answers with status 200 and a "not found" page. The target site's
//! held-out pages are T; the other sites' held-out pages are out-of-domain documents.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::corpus::Doc;
use super::generate::{add_page, file_for, relative, served, slug, Generated, HiddenDoc, Rng};
use super::holdout::{self, hold_out, hold_out_families, Holdout};
use super::html::{self, esc, Link};

/// One `[[sites]]` entry of a world's config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// The site's host, under `gptx.test`.
    pub host: String,
    /// What the site documents, as the instructions name it (`SQLite`).
    pub domain: String,
    /// The site's corpus, relative to `tasks/worlds/`.
    pub corpus: String,
    /// T is held out from this site's pages (at most one site is the target).
    #[serde(default)]
    pub target: bool,
    /// Pages per listing page.
    #[serde(default = "default_page_size")]
    pub listing_page_size: usize,
    /// Share of the served pages reachable only through the search form.
    #[serde(default)]
    pub search_only_share: f64,
    /// Pages that get a near-duplicate under `/archive/<archive_release>/`.
    #[serde(default)]
    pub near_duplicates: usize,
    #[serde(default = "default_release")]
    pub archive_release: String,
    /// Unknown pages are answered 200 with the "not found" page.
    #[serde(default)]
    pub soft_404: bool,
    /// Links to pages that do not exist.
    #[serde(default)]
    pub dead_links: usize,
    /// `robots.txt` names a sitemap of the linked pages.
    #[serde(default)]
    pub sitemap: bool,
}

fn default_page_size() -> usize {
    20
}
fn default_release() -> String {
    "previous".into()
}

/// What the manifest says of the target site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub host: String,
    pub domain: String,
    /// Pages of the site held out as T.
    pub held_out: usize,
    /// Pages of the site served.
    pub served: usize,
}

/// The path the search form answers on every site.
pub const SEARCH_PATH: &str = "/search";
/// Disallowed by every site's robots.txt.
pub(crate) const ADMIN_PREFIX: &str = "/admin/";

/// Checks the `[[sites]]` of a config; the message names the field at fault.
pub(crate) fn validate(sites: &[SiteConfig], reserved: &[&str]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (i, s) in sites.iter().enumerate() {
        let at = format!("sites[{i}]");
        let host_ok = s.host.ends_with(".gptx.test")
            && s.host
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
        if !host_ok {
            return Err(format!(
                "{at}.host {:?} must be a lower-case name under gptx.test",
                s.host
            ));
        }
        if reserved.contains(&s.host.as_str()) || !seen.insert(s.host.clone()) {
            return Err(format!("{at}.host {:?} is used twice", s.host));
        }
        if s.domain.trim().is_empty() {
            return Err(format!("{at}.domain must name what the site documents"));
        }
        if s.listing_page_size == 0 {
            return Err(format!("{at}.listing_page_size must be above 0"));
        }
        if !(0.0..1.0).contains(&s.search_only_share) {
            return Err(format!(
                "{at}.search_only_share is a share from 0 up to (not including) 1"
            ));
        }
        let release_ok = !s.archive_release.is_empty()
            && s.archive_release
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !release_ok {
            return Err(format!(
                "{at}.archive_release must be letters, digits, '.' or '-'"
            ));
        }
    }
    if sites.iter().filter(|s| s.target).count() > 1 {
        return Err("at most one of `sites` may be the target".into());
    }
    Ok(())
}

/// Paths of a site that no page may take: the search form, robots.txt, the sitemap, the search
/// index and the "not found" page's files, and the folders of listings, archive copies, the
/// disallowed section and dead links.
const RESERVED_IDS: [&str; 5] = [
    "search",
    "robots.txt",
    "sitemap.xml",
    "_search.json",
    "_404.html",
];
const RESERVED_FOLDERS: [&str; 4] = ["pages/", "archive/", "admin/", "wiki/"];

/// Checks that every page id of a site's corpus can be its path: unique, a plain relative path,
/// and none of the site's own paths; the message names the page. (A private variant keeps this:
/// its renaming keeps the words these paths are made of, and every other byte.)
pub(crate) fn check_ids(docs: &[Doc]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (i, d) in docs.iter().enumerate() {
        let id = d.id.as_str();
        let at = format!("page {} (id {id:?})", i + 1);
        let plain = !id.is_empty()
            && !id.starts_with('/')
            && id
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
            && !id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "?#%\\".contains(c));
        if !plain {
            return Err(format!(
                "{at}: an id must be a relative path of non-empty segments, without '..', spaces, '?', '#', '%' or '\\'"
            ));
        }
        if RESERVED_IDS.contains(&id) || RESERVED_FOLDERS.iter().any(|f| id.starts_with(f)) {
            return Err(format!(
                "{at}: the site serves its own page at that path (reserved: {}, and {})",
                RESERVED_IDS.join(", "),
                RESERVED_FOLDERS.map(|f| format!("{f}…")).join(", ")
            ));
        }
        if !seen.insert(id) {
            return Err(format!("{at}: another page has the same id"));
        }
    }
    Ok(())
}

/// Adds every site to `g`: T from the target site, out-of-domain documents from the others (each
/// its share of the world's `ood_bytes`, when a site is the target), and their pages, routes and
/// gold.
pub(crate) fn add(
    g: &mut Generated,
    sites: &[(&SiteConfig, &[Doc])],
    seed: u64,
    cfg: &super::WorldConfig,
) -> Option<Target> {
    let vertical = sites.iter().any(|(s, _)| s.target);
    let ood_bytes = if vertical {
        cfg.ood_bytes / sites.len().max(1)
    } else {
        0
    };
    let mut target = None;
    for (site, docs) in sites {
        let mut rng = Rng::new(seed, &format!("site:{}", site.host));
        let mut order: Vec<usize> = (0..docs.len()).collect();
        rng.shuffle(&mut order);
        let want = if site.target {
            cfg.test_bytes
        } else {
            ood_bytes
        };
        let families = site.target && cfg.holdout == Holdout::Families;
        let (hidden, held) = held_out(docs, &order, want, cfg.max_test_doc_bytes, families);
        for &i in &hidden {
            let doc = HiddenDoc {
                id: format!(
                    "{}{}/{}",
                    if site.target { "" } else { "ood/" },
                    site.host,
                    docs[i].id
                ),
                text: docs[i].text(),
            };
            if site.target {
                g.test.push(doc);
            } else {
                g.ood.push(doc);
            }
        }
        let mut served_idx: Vec<usize> = (0..docs.len()).filter(|i| !held.contains(i)).collect();
        served_idx.sort_by(|&a, &b| docs[a].id.cmp(&docs[b].id));
        let n = render(g, site, docs, &served_idx, &mut rng);
        if site.target {
            target = Some(Target {
                host: site.host.clone(),
                domain: site.domain.clone(),
                held_out: hidden.len(),
                served: n,
            });
        }
    }
    target
}

/// The hidden documents of one site, and every page it does not serve: whole families, or pages
/// one by one of those that share no long line with another page (hidden text must not be served
/// under another URL).
fn held_out(
    docs: &[Doc],
    order: &[usize],
    want: usize,
    max_doc: usize,
    families: bool,
) -> (Vec<usize>, BTreeSet<usize>) {
    if families {
        let sizes: Vec<usize> = docs.iter().map(|d| d.text().len()).collect();
        let h = hold_out_families(order, &holdout::families(docs), &sizes, want, max_doc);
        return (h.docs, h.pages);
    }
    let shared = shared_lines(docs);
    let sizes: Vec<usize> = docs
        .iter()
        .map(|d| {
            let t = d.text();
            if t.lines().any(|l| shared.contains(l)) {
                0
            } else {
                t.len()
            }
        })
        .collect();
    let hidden = hold_out(order, &sizes, want, max_doc);
    let held = hidden.iter().copied().collect();
    (hidden, held)
}

/// Lines of 40 bytes or more that occur in more than one page of `docs`.
fn shared_lines(docs: &[Doc]) -> BTreeSet<String> {
    let mut first: BTreeMap<String, usize> = BTreeMap::new();
    let mut shared = BTreeSet::new();
    for (i, d) in docs.iter().enumerate() {
        for l in d.text().lines().filter(|l| l.len() >= 40) {
            match first.get(l) {
                Some(&j) if j != i => {
                    shared.insert(l.to_string());
                }
                Some(_) => {}
                None => {
                    first.insert(l.to_string(), i);
                }
            }
        }
    }
    shared
}

/// Renders one site's pages; returns how many content pages it serves.
fn render(
    g: &mut Generated,
    cfg: &SiteConfig,
    docs: &[Doc],
    served_idx: &[usize],
    rng: &mut Rng,
) -> usize {
    let host = cfg.host.as_str();
    let path_of = |i: usize| format!("/{}", docs[i].id);
    let search_only: BTreeSet<usize> = served_idx
        .iter()
        .copied()
        .filter(|_| rng.chance(cfg.search_only_share))
        .collect();
    let linked: Vec<usize> = served_idx
        .iter()
        .copied()
        .filter(|i| !search_only.contains(i))
        .collect();
    let by_id: BTreeMap<&str, usize> = linked.iter().map(|&i| (docs[i].id.as_str(), i)).collect();
    let mut dup_candidates = linked.clone();
    rng.shuffle(&mut dup_candidates);
    let dups: BTreeSet<usize> = dup_candidates
        .into_iter()
        .filter(|&i| docs[i].blocks.len() >= 3)
        .take(cfg.near_duplicates)
        .collect();
    let mut dead_left = cfg.dead_links;
    let listing = |n: usize| format!("/pages/{n}/");

    for &i in served_idx {
        let doc = &docs[i];
        let path = path_of(i);
        let mut related: Vec<Link> = doc
            .links
            .iter()
            .filter_map(|l| by_id.get(l.as_str()))
            .filter(|&&t| t != i)
            .take(10)
            .map(|&t| Link {
                href: relative(&path, &path_of(t)),
                text: docs[t].title.clone(),
            })
            .collect();
        let archive = format!("/archive/{}{}", cfg.archive_release, path);
        if dups.contains(&i) {
            related.push(Link {
                href: archive.clone(),
                text: format!("This page for release {}", cfg.archive_release),
            });
        }
        if dead_left > 0 && rng.chance(0.25) {
            dead_left -= 1;
            related.push(Link {
                href: format!("/wiki/{}-{}.html", slug(&doc.id), rng.hex(6)),
                text: "Discussion of this page".into(),
            });
        }
        let content = html::blocks(doc, false);
        let page = site_page(cfg, &doc.title, &content, &related);
        add_page(
            g,
            host,
            &path,
            page.into_bytes(),
            "text/html; charset=utf-8",
        );
        let url = format!("http://{host}{path}");
        let text = doc.text();
        g.served.push((served(&url, host, doc, &text, false), text));
        if dups.contains(&i) {
            let edited = near_duplicate(doc, &cfg.archive_release, rng);
            let note = format!(
                "<p class=\"banner\">You are reading the documentation of release {}. The current page is <a href=\"{}\">here</a>.</p>\n",
                esc(&cfg.archive_release),
                esc(&path)
            );
            let page = site_page(
                cfg,
                &doc.title,
                &(note + &html::blocks(&edited, false)),
                &[],
            );
            add_page(
                g,
                host,
                &archive,
                page.into_bytes(),
                "text/html; charset=utf-8",
            );
        }
    }

    // Listing pages, the home page and the search index.
    let per = cfg.listing_page_size;
    let pages = linked.len().div_ceil(per).max(1);
    for n in 1..=pages {
        let items: Vec<Link> = linked
            .iter()
            .skip((n - 1) * per)
            .take(per)
            .map(|&i| Link {
                href: path_of(i),
                text: docs[i].title.clone(),
            })
            .collect();
        let mut body = format!(
            "<h1>All pages, {n} of {pages}</h1>\n<ul class=\"listing\">\n{}\n</ul>\n",
            html::link_list(&items)
        );
        body.push_str("<p class=\"pager\">");
        if n > 1 {
            body.push_str(&format!("<a href=\"{}\">Previous</a> ", listing(n - 1)));
        }
        if n < pages {
            body.push_str(&format!("<a href=\"{}\">Next</a>", listing(n + 1)));
        }
        body.push_str("</p>\n");
        let page = site_page(cfg, "All pages", &body, &[]);
        add_page(
            g,
            host,
            &listing(n),
            page.into_bytes(),
            "text/html; charset=utf-8",
        );
    }
    let home = format!(
        "<h1>{d} documentation</h1>\n<p>This site documents {d}: {n} pages. Browse <a href=\"{l}\">all pages</a>, or use the search form: not every page is listed.</p>\n{f}",
        d = esc(&cfg.domain),
        n = served_idx.len(),
        l = listing(1),
        f = search_form()
    );
    add_page(
        g,
        host,
        "/",
        site_page(cfg, &format!("{} documentation", cfg.domain), &home, &[]).into_bytes(),
        "text/html; charset=utf-8",
    );
    let index: Vec<serde_json::Value> = served_idx
        .iter()
        .map(|&i| serde_json::json!({"title": docs[i].title, "path": path_of(i)}))
        .collect();
    let index_file = file_for(host, "/_search.json");
    g.web.insert(
        index_file.clone(),
        serde_json::to_vec(&index).expect("search index serialises"),
    );
    let mut robots = format!("User-agent: *\nDisallow: {ADMIN_PREFIX}\n");
    if cfg.sitemap {
        robots.push_str(&format!("\nSitemap: http://{host}/sitemap.xml\n"));
        let mut xml = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\n",
        );
        for &i in &linked {
            xml.push_str(&format!(
                "  <url><loc>http://{host}{}</loc></url>\n",
                esc(&path_of(i))
            ));
        }
        xml.push_str("</urlset>\n");
        add_page(g, host, "/sitemap.xml", xml.into_bytes(), "application/xml");
    }
    add_page(
        g,
        host,
        "/robots.txt",
        robots.into_bytes(),
        "text/plain; charset=utf-8",
    );
    let nf = file_for(host, "/_404.html");
    g.web.insert(
        nf.clone(),
        site_page(cfg, "Page not found", &not_found_body(), &[]).into_bytes(),
    );
    g.routes.hosts.insert(
        host.into(),
        super::generate::HostCfg {
            gzip: "accept".into(),
            not_found: Some(nf),
            trap: None,
            soft_404: cfg.soft_404,
            search: Some(super::generate::SearchCfg {
                path: SEARCH_PATH.into(),
                index: index_file,
            }),
        },
    );
    g.disallowed.insert(host.into(), vec![ADMIN_PREFIX.into()]);
    g.hosts.push(host.into());
    g.seed_urls.push(format!("http://{host}/"));
    served_idx.len()
}

/// The body of a site's "not found" page (a soft-404 site answers it with status 200).
pub(crate) fn not_found_body() -> String {
    format!(
        "<h1>Page not found</h1>\n<p>Sorry, we could not find that page. It may have been renamed or removed. Try the search form below or start again from the home page.</p>\n{}",
        search_form()
    )
}

fn search_form() -> String {
    format!(
        "<form class=\"search\" action=\"{SEARCH_PATH}\" method=\"get\"><input type=\"text\" name=\"q\" placeholder=\"Words in a page title\"> <button type=\"submit\">Search</button></form>\n"
    )
}

/// A copy of `doc` with small edits: one block dropped, some words changed, a release note added.
fn near_duplicate(doc: &Doc, release: &str, rng: &mut Rng) -> Doc {
    let mut d = doc.clone();
    if d.blocks.len() > 3 {
        let drop = 1 + rng.below(d.blocks.len() - 1);
        d.blocks.remove(drop);
    }
    for b in d.blocks.iter_mut().filter(|b| b.k == "p") {
        if rng.chance(0.3) {
            b.t =
                b.t.replacen(" the ", " this ", 1)
                    .replacen(" is ", " was ", 1)
                    .replacen(" can ", " could ", 1);
        }
    }
    d.blocks.push(super::corpus::Block {
        k: "p".into(),
        t: format!("This page was last revised for release {release}; later releases may differ."),
    });
    d
}

/// A page of a documentation site: a banner, a sidebar of related pages, the content, a footer.
fn site_page(cfg: &SiteConfig, title: &str, content: &str, related: &[Link]) -> String {
    let side = if related.is_empty() {
        String::new()
    } else {
        format!(
            "<div class=\"sidebar\"><h4>See also</h4><ul>\n{}\n</ul></div>\n",
            html::link_list(related)
        )
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{t} | {d} Docs</title>\n</head>\n<body>\n\
<div class=\"menu\"><a href=\"/\">{d} Docs</a> | <a href=\"/pages/1/\">All pages</a> | <a href=\"{SEARCH_PATH}\">Search</a> | <a href=\"http://docs.gptx.test/\">GPTX Docs</a></div>\n\
<div class=\"page\">\n{side}<div class=\"content\">\n{content}</div>\n</div>\n\
<div class=\"footer\">{d} documentation, served by {h}. Mirrored for offline reading.</div>\n</body>\n</html>\n",
        t = esc(title),
        d = esc(&cfg.domain),
        h = esc(&cfg.host),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(host: &str) -> SiteConfig {
        SiteConfig {
            host: host.into(),
            domain: "SQLite".into(),
            corpus: "c".into(),
            target: false,
            listing_page_size: 20,
            search_only_share: 0.1,
            near_duplicates: 0,
            archive_release: "3.39".into(),
            soft_404: true,
            dead_links: 0,
            sitemap: false,
        }
    }

    #[test]
    fn bad_sites_are_refused_naming_the_field() {
        let ok = [site("sqlite.gptx.test")];
        assert_eq!(validate(&ok, &["docs.gptx.test"]), Ok(()));
        let e = validate(&[site("sqlite.example.com")], &[]).unwrap_err();
        assert!(e.contains("sites[0].host"), "{e}");
        let e = validate(&[site("docs.gptx.test")], &["docs.gptx.test"]).unwrap_err();
        assert!(e.contains("used twice"), "{e}");
        let mut two = [site("a.gptx.test"), site("b.gptx.test")];
        two[0].target = true;
        two[1].target = true;
        assert!(validate(&two, &[]).unwrap_err().contains("at most one"));
        let mut s = site("a.gptx.test");
        s.search_only_share = 1.0;
        assert!(validate(&[s], &[])
            .unwrap_err()
            .contains("search_only_share"));
        let mut s = site("a.gptx.test");
        s.archive_release = "../x".into();
        assert!(validate(&[s], &[]).unwrap_err().contains("archive_release"));
    }

    #[test]
    fn page_ids_that_would_take_a_sites_own_path_are_refused_naming_the_page() {
        let page = |id: &str| Doc {
            id: id.into(),
            title: "T".into(),
            blocks: vec![],
            links: vec![],
        };
        let ok = [page("lang_select.html"), page("c3ref/open.html")];
        assert_eq!(check_ids(&ok), Ok(()));
        for (id, why) in [
            ("search", "reserved"),
            ("robots.txt", "reserved"),
            ("sitemap.xml", "reserved"),
            ("_search.json", "reserved"),
            ("_404.html", "reserved"),
            ("pages/2/index.html", "reserved"),
            ("archive/3.39/lang.html", "reserved"),
            ("admin/x.html", "reserved"),
            ("wiki/x.html", "reserved"),
            ("../etc/passwd", "relative path"),
            ("/abs.html", "relative path"),
            ("a//b.html", "relative path"),
            ("a b.html", "relative path"),
            ("a?q=1", "relative path"),
            ("a%2F.html", "relative path"),
            ("", "relative path"),
        ] {
            let e = check_ids(&[page("ok.html"), page(id)]).unwrap_err();
            assert!(e.starts_with("page 2 (id ") && e.contains(why), "{id}: {e}");
        }
        let e = check_ids(&[page("a.html"), page("a.html")]).unwrap_err();
        assert!(e.contains("same id"), "{e}");
    }

    #[test]
    fn a_near_duplicate_differs_a_little() {
        let doc = Doc {
            id: "a.html".into(),
            title: "A".into(),
            blocks: (0..6)
                .map(|k| super::super::corpus::Block {
                    k: "p".into(),
                    t: format!("Block {k}: the table is what the query can read."),
                })
                .collect(),
            links: vec![],
        };
        let d = near_duplicate(&doc, "3.39", &mut Rng::new(1, "t"));
        assert_ne!(d.text(), doc.text());
        assert_eq!(d.blocks.len(), doc.blocks.len());
        assert!(d.text().contains("release 3.39"));
    }
}
