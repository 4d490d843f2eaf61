//! The world generator: corpus + config + seed → three sites, routes, gold text, hidden splits.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::corpus::Doc;
use super::html::{self, BlogChrome, DocsChrome, Link};
use super::{Canary, ServedPage, WorldConfig};

pub(crate) const DOCS: &str = "docs.gptx.test";
pub(crate) const BLOG: &str = "blog.gptx.test";
pub(crate) const MIRROR: &str = "mirror.gptx.test";
pub(crate) const HOSTS: [&str; 3] = [DOCS, BLOG, MIRROR];

pub(crate) const TRAP_PREFIX: &str = "/events/";

/// A small deterministic generator (SplitMix64): the world must not change when a dependency does.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: &str) -> Self {
        let h = Sha256::digest(format!("{seed}:{stream}").as_bytes());
        Rng(u64::from_le_bytes(h[..8].try_into().expect("8 bytes")))
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
    pub fn hex(&mut self, n: usize) -> String {
        let mut s = String::new();
        while s.len() < n {
            s.push_str(&format!("{:016x}", self.next_u64()));
        }
        s.truncate(n);
        s
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PageRoute {
    pub file: String,
    #[serde(rename = "type")]
    pub content_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub print: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub transient_503: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    pub status: u16,
    pub location: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedirectPrefix {
    pub host: String,
    pub prefix: String,
    pub status: u16,
    pub replace: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trap {
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostCfg {
    pub gzip: String,
    pub not_found: Option<String>,
    pub trap: Option<Trap>,
    /// The not-found page is answered with status 200.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub soft_404: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchCfg>,
}

/// A host's search form: the path it answers and its index file (`[{"title", "path"}]`).
#[derive(Debug, Clone, Serialize)]
pub struct SearchCfg {
    pub path: String,
    pub index: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateLimit {
    pub requests: u32,
    pub per_seconds: f64,
}

/// `web/routes.json`, the web server's whole view of the world.
#[derive(Debug, Clone, Serialize)]
pub struct Routes {
    pub version: u32,
    pub rate_limit: RateLimit,
    /// Requests one client may make in all (absent: no budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_budget: Option<u32>,
    pub hosts: BTreeMap<String, HostCfg>,
    pub pages: BTreeMap<String, PageRoute>,
    pub redirects: BTreeMap<String, Redirect>,
    pub redirect_prefixes: Vec<RedirectPrefix>,
}

/// One hidden document (T or out-of-domain).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HiddenDoc {
    pub id: String,
    pub text: String,
}

/// Everything the generator makes; the caller writes it to disk.
pub struct Generated {
    /// Files under `web/`, by relative path.
    pub web: BTreeMap<String, Vec<u8>>,
    pub routes: Routes,
    /// Served content pages with their gold text, in serving order.
    pub served: Vec<(ServedPage, String)>,
    pub test: Vec<HiddenDoc>,
    pub ood: Vec<HiddenDoc>,
    pub canaries: Vec<Canary>,
    pub disallowed: BTreeMap<String, Vec<String>>,
    pub mirror_pages: usize,
    pub latin1_pages: usize,
    pub transient_503: usize,
    /// Every host served, and the URLs the crawl starts from.
    pub hosts: Vec<String>,
    pub seed_urls: Vec<String>,
    /// The site T was held out from, when the world has one.
    pub target: Option<super::sites::Target>,
}

pub(crate) fn file_for(host: &str, path: &str) -> String {
    let p = path.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        format!("sites/{host}/{p}__index.html")
    } else {
        format!("sites/{host}/{p}")
    }
}

/// `to` relative to the directory of `from` (both absolute paths on one host).
pub fn relative(from: &str, to: &str) -> String {
    let from_dir: Vec<&str> = {
        let mut v: Vec<&str> = from.trim_start_matches('/').split('/').collect();
        v.pop();
        v
    };
    let to_parts: Vec<&str> = to.trim_start_matches('/').split('/').collect();
    let common = from_dir
        .iter()
        .zip(to_parts.iter())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out: Vec<&str> = vec![".."; from_dir.len() - common];
    out.extend(&to_parts[common..]);
    let s = out.join("/");
    if s.is_empty() {
        "./".into()
    } else {
        s
    }
}

pub(crate) fn slug(id: &str) -> String {
    id.trim_end_matches(".html")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn latin1_bytes(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| u8::try_from(c as u32).unwrap_or(b'?'))
        .collect()
}

/// What the general web's `robots.txt` files disallow for `User-agent: *` (the mirror has none):
/// the scorer's robots rules and the crawl instruction's.
pub(crate) fn general_robots() -> BTreeMap<String, Vec<String>> {
    let rules = |r: &[&str]| r.iter().map(|x| x.to_string()).collect();
    BTreeMap::from([
        (DOCS.to_string(), rules(&["/internal/", "/search"])),
        (BLOG.to_string(), rules(&["/drafts/"])),
    ])
}

/// Splits the corpus and renders the world: the three general sites from `docs`, then each of
/// `sites`. With a target site, T comes from it and the pages held out of `docs` are
/// out-of-domain documents instead.
pub fn generate(
    cfg: &WorldConfig,
    seed: u64,
    docs: &[Doc],
    ood_docs: &[Doc],
    sites: &[(&super::sites::SiteConfig, &[Doc])],
) -> Generated {
    let vertical = sites.iter().any(|(s, _)| s.target);
    let (test_idx, served_idx, ood) = split(cfg, seed, docs, ood_docs, sites.len(), vertical);

    // Sites: the blog takes a share of the pages, including the Latin-1 ones.
    let mut rng = Rng::new(seed, "sites");
    let mut latin1: BTreeSet<usize> = BTreeSet::new();
    let mut candidates: Vec<usize> = served_idx
        .iter()
        .copied()
        .filter(|&i| docs[i].latin1())
        .collect();
    candidates.sort_by_key(|&i| (!docs[i].non_ascii(), i));
    for &i in candidates.iter().take(cfg.latin1_pages) {
        latin1.insert(i);
    }
    let mut blog_idx = Vec::new();
    let mut docs_idx = Vec::new();
    for &i in &served_idx {
        if latin1.contains(&i) || rng.chance(cfg.blog_share) {
            blog_idx.push(i);
        } else {
            docs_idx.push(i);
        }
    }
    docs_idx.sort_by(|&a, &b| docs[a].id.cmp(&docs[b].id));

    let mut g = Generated {
        web: BTreeMap::new(),
        routes: Routes {
            version: 1,
            rate_limit: RateLimit {
                requests: cfg.rate_limit,
                per_seconds: 1.0,
            },
            request_budget: cfg.request_budget,
            hosts: BTreeMap::new(),
            pages: BTreeMap::new(),
            redirects: BTreeMap::new(),
            redirect_prefixes: vec![],
        },
        served: vec![],
        test: test_idx
            .iter()
            .map(|&i| HiddenDoc {
                id: docs[i].id.clone(),
                text: docs[i].text(),
            })
            .collect(),
        ood,
        canaries: vec![],
        disallowed: BTreeMap::new(),
        mirror_pages: 0,
        latin1_pages: latin1.len(),
        transient_503: 0,
        hosts: HOSTS.iter().map(|h| h.to_string()).collect(),
        seed_urls: vec![format!("http://{DOCS}/"), format!("http://{BLOG}/")],
        target: None,
    };
    for host in HOSTS {
        let nf = file_for(host, "/_404.html");
        g.web.insert(nf.clone(), html::not_found(host).into_bytes());
        g.routes.hosts.insert(
            host.into(),
            HostCfg {
                gzip: if host == BLOG { "always" } else { "accept" }.into(),
                not_found: Some(nf),
                trap: (host == DOCS).then(|| Trap {
                    prefix: TRAP_PREFIX.into(),
                }),
                soft_404: false,
                search: None,
            },
        );
    }

    // Canaries behind robots.txt.
    let mut crng = Rng::new(seed, "canaries");
    let n_canary = cfg.canary_pages.max(2);
    let docs_canaries = n_canary.div_ceil(2);
    for k in 1..=n_canary {
        let canary = format!("gptx-canary-{}", crng.hex(16));
        let (host, path, next) = if k <= docs_canaries {
            let next = if k < docs_canaries {
                format!("/internal/staff-notes-{}.html", k + 1)
            } else {
                "/internal/staff-notes-1.html".into()
            };
            (DOCS, format!("/internal/staff-notes-{k}.html"), next)
        } else {
            let j = k - docs_canaries;
            let next = format!("/drafts/draft-{}/", if k < n_canary { j + 1 } else { 1 });
            (BLOG, format!("/drafts/draft-{j}/"), next)
        };
        add_page(
            &mut g,
            host,
            &path,
            html::canary_page(&format!("Staff note {k}"), &canary, &next).into_bytes(),
            "text/html; charset=utf-8",
        );
        g.canaries.push(Canary {
            url: format!("http://{host}{path}"),
            canary,
        });
    }
    g.disallowed.extend(general_robots());

    let docs_path = |i: usize| format!("/{}", docs[i].id);
    let blog_path = |i: usize| format!("/posts/{}/", slug(&docs[i].id));
    let on_docs: BTreeMap<&str, usize> =
        docs_idx.iter().map(|&i| (docs[i].id.as_str(), i)).collect();

    // docs.gptx.test content pages.
    let mut lrng = Rng::new(seed, "links");
    let mut broken_left = cfg.broken_links;
    let mut mirror_candidates = docs_idx.clone();
    lrng.shuffle(&mut mirror_candidates);
    let mirror: BTreeSet<usize> = mirror_candidates
        .into_iter()
        .take(cfg.mirror_pages)
        .collect();
    let mut sitemap = Vec::new();
    for (pos, &i) in docs_idx.iter().enumerate() {
        let doc = &docs[i];
        let path = docs_path(i);
        let link = |to: &str, text: &str, rng: &mut Rng| -> Link {
            let href = match rng.below(10) {
                0..=3 => relative(&path, to),
                4..=5 => to.to_string(),
                6 => format!("http://{DOCS}{to}"),
                7 => format!("/old{to}"),
                _ => format!("{}#{}", relative(&path, to), rng.hex(6)),
            };
            Link {
                href,
                text: text.to_string(),
            }
        };
        let mut related = Vec::new();
        for target in doc
            .links
            .iter()
            .filter_map(|l| on_docs.get(l.as_str()))
            .take(8)
        {
            related.push(link(&docs_path(*target), &docs[*target].title, &mut lrng));
        }
        for _ in 0..2 {
            let t = docs_idx[lrng.below(docs_idx.len())];
            if t != i {
                related.push(link(&docs_path(t), &docs[t].title, &mut lrng));
            }
        }
        if !blog_idx.is_empty() && lrng.chance(0.3) {
            let b = blog_idx[lrng.below(blog_idx.len())];
            related.push(Link {
                href: format!("http://{BLOG}{}", blog_path(b)),
                text: format!("Blog: {}", docs[b].title),
            });
        }
        if broken_left > 0 && lrng.chance(0.2) {
            broken_left -= 1;
            related.push(Link {
                href: format!("/library/{}-legacy.html", lrng.hex(6)),
                text: "Legacy version of this page".into(),
            });
        }
        let prev = pos
            .checked_sub(1)
            .map(|p| link(&docs_path(docs_idx[p]), &docs[docs_idx[p]].title, &mut lrng));
        let next = docs_idx.get(pos + 1).map(|&n| {
            let mut l = link(&docs_path(n), &docs[n].title, &mut lrng);
            if lrng.chance(0.25) {
                l.href = format!("{}?sid={}", docs_path(n), lrng.hex(12));
            }
            l
        });
        let home = if lrng.chance(0.3) {
            format!("/?sid={}", lrng.hex(12))
        } else {
            "/".to_string()
        };
        let print = format!("{}?print=1", path.rsplit('/').next().unwrap_or(""));
        let content = html::blocks(doc, false);
        let page = html::docs_page(
            &DocsChrome {
                title: &doc.title,
                home: &home,
                related: &related,
                prev,
                next,
                print: Some(&print),
            },
            &content,
        );
        let url = format!("http://{DOCS}{path}");
        let file = file_for(DOCS, &path);
        let print_file = format!("sites/{DOCS}/_print{path}");
        g.web.insert(file.clone(), page.into_bytes());
        g.web.insert(
            print_file.clone(),
            html::print_page(&doc.title, &url, &content).into_bytes(),
        );
        let transient = lrng.chance(cfg.transient_503_share);
        g.transient_503 += transient as usize;
        g.routes.pages.insert(
            format!("{DOCS}{path}"),
            PageRoute {
                file,
                content_type: "text/html; charset=utf-8".into(),
                print: Some(print_file),
                transient_503: transient,
            },
        );
        if !lrng.chance(0.1) {
            sitemap.push(url.clone());
        }
        let text = doc.text();
        g.served.push((served(&url, DOCS, doc, &text, false), text));
        if mirror.contains(&i) {
            let mpath = format!("/docs/{}", doc.id);
            add_page(
                &mut g,
                MIRROR,
                &mpath,
                html::mirror_page(&doc.title, &url, &html::blocks(doc, true)).into_bytes(),
                "text/html; charset=utf-8",
            );
            g.mirror_pages += 1;
        }
    }

    // docs.gptx.test: home, contents, robots, sitemap, redirects.
    let toc: Vec<Link> = docs_idx
        .iter()
        .map(|&i| Link {
            href: docs_path(i),
            text: docs[i].title.clone(),
        })
        .collect();
    let first_half: Vec<Link> = toc
        .iter()
        .step_by(3)
        .map(|l| Link {
            href: l.href.trim_start_matches('/').to_string(),
            text: l.text.clone(),
        })
        .collect();
    add_page(
        &mut g,
        DOCS,
        "/",
        html::docs_listing(
            "GPTX Docs",
            "Welcome. These pages document the language, its library and its tools. Start with a topic below or open the full contents.",
            &first_half,
        )
        .into_bytes(),
        "text/html; charset=utf-8",
    );
    add_page(
        &mut g,
        DOCS,
        "/contents/",
        html::docs_listing("Contents", "Every page of this site.", &toc).into_bytes(),
        "text/html; charset=utf-8",
    );
    add_page(
        &mut g,
        DOCS,
        "/robots.txt",
        format!(
            "# robots.txt for {DOCS}\nUser-agent: *\nDisallow: /internal/\nDisallow: /search\n\nUser-agent: BadBot\nDisallow: /\n\nSitemap: http://{DOCS}/sitemap.xml\n"
        )
        .into_bytes(),
        "text/plain; charset=utf-8",
    );
    sitemap.push(format!("http://{DOCS}/library/{}-legacy.html", lrng.hex(6)));
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\n",
    );
    for u in &sitemap {
        xml.push_str(&format!("  <url><loc>{}</loc></url>\n", html::esc(u)));
    }
    xml.push_str("</urlset>\n");
    add_page(
        &mut g,
        DOCS,
        "/sitemap.xml",
        xml.into_bytes(),
        "application/xml",
    );
    let redirect = |status: u16, location: &str| Redirect {
        status,
        location: location.into(),
    };
    g.routes.redirects.insert(
        format!("{DOCS}/latest/"),
        redirect(302, &format!("http://{DOCS}/")),
    );
    g.routes
        .redirects
        .insert(format!("{DOCS}/loop/a"), redirect(302, "/loop/b"));
    g.routes
        .redirects
        .insert(format!("{DOCS}/loop/b"), redirect(302, "/loop/a"));
    g.routes.redirect_prefixes.push(RedirectPrefix {
        host: DOCS.into(),
        prefix: "/old/".into(),
        status: 301,
        replace: "/".into(),
    });
    g.routes.redirect_prefixes.push(RedirectPrefix {
        host: BLOG.into(),
        prefix: "/p/".into(),
        status: 301,
        replace: "/posts/".into(),
    });

    // blog.gptx.test: posts (some in Latin-1), paginated archive, robots.
    let mut brng = Rng::new(seed, "blog");
    let recent: Vec<Link> = blog_idx
        .iter()
        .take(5)
        .map(|&i| Link {
            href: blog_path(i),
            text: docs[i].title.clone(),
        })
        .collect();
    for (pos, &i) in blog_idx.iter().enumerate() {
        let doc = &docs[i];
        let path = blog_path(i);
        let is_latin1 = latin1.contains(&i);
        let charset = if is_latin1 { "iso-8859-1" } else { "utf-8" };
        let newer = pos.checked_sub(1).map(|p| Link {
            href: blog_path(blog_idx[p]),
            text: docs[blog_idx[p]].title.clone(),
        });
        let older = blog_idx.get(pos + 1).map(|&n| Link {
            href: if brng.chance(0.3) {
                format!("/p/{}/", slug(&docs[n].id))
            } else {
                relative(&path, &blog_path(n))
            },
            text: docs[n].title.clone(),
        });
        let meta = format!(
            "Posted on 2026-{:02}-{:02} by the docs team",
            1 + (pos % 12),
            1 + brng.below(28)
        );
        let page = html::blog_page(
            &BlogChrome {
                title: &doc.title,
                charset,
                recent: &recent,
                older,
                newer,
                meta: &meta,
            },
            &html::blocks(doc, false),
        );
        let bytes = if is_latin1 {
            latin1_bytes(&page)
        } else {
            page.into_bytes()
        };
        let file = file_for(BLOG, &path);
        g.web.insert(file.clone(), bytes);
        let transient = brng.chance(cfg.transient_503_share);
        g.transient_503 += transient as usize;
        g.routes.pages.insert(
            format!("{BLOG}{path}"),
            PageRoute {
                file,
                content_type: format!("text/html; charset={charset}"),
                print: None,
                transient_503: transient,
            },
        );
        let url = format!("http://{BLOG}{path}");
        let text = doc.text();
        g.served
            .push((served(&url, BLOG, doc, &text, is_latin1), text));
    }
    let per_page = 10;
    let pages = blog_idx.len().div_ceil(per_page).max(1);
    for p in 1..=pages {
        let items: Vec<Link> = blog_idx
            .iter()
            .skip((p - 1) * per_page)
            .take(per_page)
            .map(|&i| Link {
                href: blog_path(i),
                text: docs[i].title.clone(),
            })
            .collect();
        let body = format!(
            "<h2>Posts, page {p} of {pages}</h2>\n<ul class=\"archive\">\n{}\n</ul>\n",
            items
                .iter()
                .map(|l| format!(
                    "<li><a href=\"{}\">{}</a></li>",
                    html::esc(&l.href),
                    html::esc(&l.text)
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let page = html::blog_page(
            &BlogChrome {
                title: if p == 1 { "Home" } else { "Archive" },
                charset: "utf-8",
                recent: &recent,
                older: (p < pages).then(|| Link {
                    href: format!("/page/{}/", p + 1),
                    text: "Older posts".into(),
                }),
                newer: (p > 1).then(|| Link {
                    href: if p == 2 {
                        "/".into()
                    } else {
                        format!("/page/{}/", p - 1)
                    },
                    text: "Newer posts".into(),
                }),
                meta: "",
            },
            &body,
        );
        let path = if p == 1 {
            "/".to_string()
        } else {
            format!("/page/{p}/")
        };
        add_page(
            &mut g,
            BLOG,
            &path,
            page.into_bytes(),
            "text/html; charset=utf-8",
        );
    }
    add_page(
        &mut g,
        BLOG,
        "/robots.txt",
        b"User-agent: *\nDisallow: /drafts/\n".to_vec(),
        "text/plain; charset=utf-8",
    );

    // mirror.gptx.test index (no robots.txt: a 404 there means everything is allowed).
    let mlinks: Vec<Link> = docs_idx
        .iter()
        .filter(|i| mirror.contains(i))
        .map(|&i| Link {
            href: format!("/docs/{}", docs[i].id),
            text: docs[i].title.clone(),
        })
        .collect();
    add_page(
        &mut g,
        MIRROR,
        "/",
        html::simple_list("Mirror of docs.gptx.test", &mlinks).into_bytes(),
        "text/html; charset=utf-8",
    );
    if vertical {
        // The general web's held-out pages are out of the target's domain.
        for d in std::mem::take(&mut g.test) {
            g.ood.push(HiddenDoc {
                id: format!("ood/{DOCS}/{}", d.id),
                text: d.text,
            });
        }
    }
    g.target = super::sites::add(&mut g, sites, seed, cfg);
    g
}

/// The general web's split: the documents held out of it (T, or with a target site its share of
/// the out-of-domain documents), the pages it serves in serving order, and the out-of-domain
/// documents of `ood_docs`.
fn split(
    cfg: &WorldConfig,
    seed: u64,
    docs: &[Doc],
    ood_docs: &[Doc],
    sites: usize,
    vertical: bool,
) -> (Vec<usize>, Vec<usize>, Vec<HiddenDoc>) {
    use super::holdout::{families, hold_out, hold_out_families, Holdout};
    // With a target, each of the general web and the other sites gives its share of ood_bytes.
    let general_held = if vertical {
        cfg.ood_bytes / sites.max(1)
    } else {
        cfg.test_bytes
    };
    let mut rng = Rng::new(seed, "split");
    let mut order: Vec<usize> = (0..docs.len()).collect();
    rng.shuffle(&mut order);
    let sizes: Vec<usize> = docs.iter().map(|d| d.text().len()).collect();
    let max = cfg.max_test_doc_bytes;
    let (test_idx, held) = if !vertical && cfg.holdout == Holdout::Families {
        let h = hold_out_families(&order, &families(docs), &sizes, general_held, max);
        (h.docs, h.pages)
    } else {
        let t = hold_out(&order, &sizes, general_held, max);
        let held = t.iter().copied().collect();
        (t, held)
    };
    let mut served_idx = Vec::new();
    let mut served_bytes = 0;
    for &i in &order {
        if held.contains(&i) {
            continue;
        }
        if cfg.served_bytes > 0 && served_bytes >= cfg.served_bytes {
            break;
        }
        served_idx.push(i);
        served_bytes += sizes[i];
    }
    let mut ood_order: Vec<usize> = (0..ood_docs.len()).collect();
    rng.shuffle(&mut ood_order);
    let mut ood = Vec::new();
    let mut ood_bytes = 0;
    for &i in &ood_order {
        if cfg.ood_bytes > 0 && ood_bytes >= cfg.ood_bytes {
            break;
        }
        let text = ood_docs[i].text();
        ood_bytes += text.len();
        ood.push(HiddenDoc {
            id: format!("ood/{}", ood_docs[i].id),
            text,
        });
    }
    (test_idx, served_idx, ood)
}

pub(crate) fn served(url: &str, site: &str, doc: &Doc, text: &str, latin1: bool) -> ServedPage {
    ServedPage {
        url: url.into(),
        site: site.into(),
        doc: doc.id.clone(),
        bytes: text.len() as u64,
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
        latin1,
    }
}

pub(crate) fn add_page(
    g: &mut Generated,
    host: &str,
    path: &str,
    bytes: Vec<u8>,
    content_type: &str,
) {
    let file = file_for(host, path);
    g.web.insert(file.clone(), bytes);
    g.routes.pages.insert(
        format!("{host}{path}"),
        PageRoute {
            file,
            content_type: content_type.into(),
            print: None,
            transient_503: false,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative("/library/os.html", "/library/sys.html"),
            "sys.html"
        );
        assert_eq!(
            relative("/library/os.html", "/tutorial/index.html"),
            "../tutorial/index.html"
        );
        assert_eq!(
            relative("/index.html", "/library/os.html"),
            "library/os.html"
        );
        assert_eq!(relative("/posts/a/", "/posts/b/"), "../b/");
    }

    #[test]
    fn routes_name_a_request_budget_only_when_the_world_has_one() {
        let mut r = Routes {
            version: 1,
            rate_limit: RateLimit {
                requests: 20,
                per_seconds: 1.0,
            },
            request_budget: None,
            hosts: BTreeMap::new(),
            pages: BTreeMap::new(),
            redirects: BTreeMap::new(),
            redirect_prefixes: vec![],
        };
        // Absent, not null: a world without a budget writes the routes.json it always wrote.
        assert!(!serde_json::to_string(&r)
            .unwrap()
            .contains("request_budget"));
        r.request_budget = Some(800);
        assert!(serde_json::to_string(&r)
            .unwrap()
            .contains("\"request_budget\":800"));
    }

    #[test]
    fn rng_is_stable() {
        let mut a = Rng::new(1, "x");
        let mut b = Rng::new(1, "x");
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(Rng::new(2, "x").next_u64(), Rng::new(1, "x").next_u64());
    }
}
