//! Page templates of the world's three sites; everything here is deterministic text.

use super::corpus::Doc;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}

/// The blocks of a page as HTML (list items grouped into lists).
pub fn blocks(doc: &Doc, skip_last: bool) -> String {
    let n = if skip_last && doc.blocks.len() > 3 {
        doc.blocks.len() - 1
    } else {
        doc.blocks.len()
    };
    let mut o = String::new();
    let mut in_list = false;
    for b in &doc.blocks[..n] {
        if b.k == "li" && !in_list {
            o.push_str("<ul>\n");
            in_list = true;
        } else if b.k != "li" && in_list {
            o.push_str("</ul>\n");
            in_list = false;
        }
        let t = esc(&b.t);
        match b.k.as_str() {
            "h1" | "h2" | "h3" => o.push_str(&format!("<{0}>{t}</{0}>\n", b.k)),
            "pre" => o.push_str(&format!("<pre class=\"code\">{t}</pre>\n")),
            "li" => o.push_str(&format!("<li>{t}</li>\n")),
            _ => o.push_str(&format!("<p>{t}</p>\n")),
        }
    }
    if in_list {
        o.push_str("</ul>\n");
    }
    o
}

/// A link as it appears in a page.
pub struct Link {
    pub href: String,
    pub text: String,
}

pub(crate) fn link_list(links: &[Link]) -> String {
    links
        .iter()
        .map(|l| format!("<li><a href=\"{}\">{}</a></li>", esc(&l.href), esc(&l.text)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a docs-site page needs besides its content.
pub(crate) struct DocsChrome<'a> {
    pub title: &'a str,
    pub home: &'a str,
    pub related: &'a [Link],
    pub prev: Option<Link>,
    pub next: Option<Link>,
    pub print: Option<&'a str>,
}

/// A page of `docs.gptx.test`: semantic HTML5 (header, nav, aside, main, footer).
pub(crate) fn docs_page(c: &DocsChrome, content: &str) -> String {
    let pager = [
        c.prev.as_ref().map(|l| {
            format!(
                "<a class=\"prev\" href=\"{}\">Previous: {}</a>",
                esc(&l.href),
                esc(&l.text)
            )
        }),
        c.next.as_ref().map(|l| {
            format!(
                "<a class=\"next\" href=\"{}\">Next: {}</a>",
                esc(&l.href),
                esc(&l.text)
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" | ");
    let print = c
        .print
        .map(|p| format!("<a href=\"{}\" rel=\"nofollow\">Print view</a> · ", esc(p)))
        .unwrap_or_default();
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — GPTX Docs</title>
<link rel="stylesheet" href="/_static/site.css">
</head>
<body>
<header class="site-header">
<a class="brand" href="{home}">GPTX Docs</a> <span class="tagline">Reference documentation, tutorials and guides</span>
<nav class="top-nav"><ul>
<li><a href="{home}">Home</a></li>
<li><a href="/contents/">Contents</a></li>
<li><a href="http://blog.gptx.test/">Blog</a></li>
<li><a href="/events/">Events</a></li>
<li><a href="/latest/">Latest release</a></li>
<li><a href="/internal/staff-notes-1.html">Staff notes</a></li>
</ul></nav>
</header>
<div class="layout">
<aside class="sidebar">
<h4>Related pages</h4>
<ul>
{related}
</ul>
<h4>Quick search</h4>
<form class="search" action="/search" method="get"><input type="text" name="q"><input type="submit" value="Go"></form>
<p class="note">Found a bug in these pages? Tell us on the issue tracker.</p>
</aside>
<main id="content">
<article>
{content}</article>
<nav class="pager">{pager}</nav>
</main>
</div>
<footer class="site-footer">
<p>{print}<a href="/sitemap.xml">Sitemap</a> · <a href="http://mirror.gptx.test/">Mirror</a> · <a href="/loop/a">Old archive</a></p>
<p>© 2001–2026 The GPTX Docs Team. Licensed under the PSF License. Last updated on Nov 28, 2026.</p>
<p>Built with a static site generator. Please report problems with this website to the webmaster.</p>
</footer>
</body>
</html>
"#,
        title = esc(c.title),
        home = esc(c.home),
        related = link_list(c.related),
    )
}

/// The print view of a docs page: little chrome, the same content.
pub(crate) fn print_page(title: &str, url: &str, content: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t} (print)</title>\
         <meta name=\"robots\" content=\"noindex\"></head>\n<body class=\"print\">\n\
         <div class=\"print-head\">GPTX Docs — printable version</div>\n{content}\
         <div class=\"print-foot\">Printed from {u}</div>\n</body></html>\n",
        t = esc(title),
        u = esc(url)
    )
}

/// A simple docs-site listing page (home, contents).
pub(crate) fn docs_listing(title: &str, intro: &str, links: &[Link]) -> String {
    let c = DocsChrome {
        title,
        home: "/",
        related: &[],
        prev: None,
        next: None,
        print: None,
    };
    docs_page(
        &c,
        &format!(
            "<h1>{}</h1>\n<p class=\"intro\">{}</p>\n<ul class=\"toc\">\n{}\n</ul>\n",
            esc(title),
            esc(intro),
            link_list(links)
        ),
    )
}

/// What a blog page needs besides its content. Only Latin-1 characters appear in the template.
pub(crate) struct BlogChrome<'a> {
    pub title: &'a str,
    pub charset: &'a str,
    pub recent: &'a [Link],
    pub older: Option<Link>,
    pub newer: Option<Link>,
    pub meta: &'a str,
}

/// A page of `blog.gptx.test`: nested divs only, no semantic elements.
pub(crate) fn blog_page(c: &BlogChrome, content: &str) -> String {
    let nav = [
        c.newer
            .as_ref()
            .map(|l| format!("<a href=\"{}\">« {}</a>", esc(&l.href), esc(&l.text))),
        c.older
            .as_ref()
            .map(|l| format!("<a href=\"{}\">{} »</a>", esc(&l.href), esc(&l.text))),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" &middot; ");
    format!(
        r#"<html>
<head>
<meta http-equiv="Content-Type" content="text/html; charset={charset}">
<title>{title} | GPTX Blog</title>
</head>
<body>
<div id="page">
<div class="top-bar"><b>GPTX Blog</b> - notes and essays from the documentation team | <a href="/">Home</a> | <a href="/page/2/">Archive</a> | <a href="http://docs.gptx.test/">Docs</a></div>
<div class="columns">
<div class="content">
<div class="entry-meta">{meta}</div>
<div class="entry">
{content}</div>
<div class="post-nav">{nav}</div>
</div>
<div class="sidebar">
<h3>Recent posts</h3>
<ul>
{recent}
</ul>
<h3>Meta</h3>
<ul><li><a href="/drafts/draft-1/">Drafts</a></li><li><a href="/feed.xml">Entries feed</a></li><li><a href="http://docs.gptx.test/">Documentation</a></li></ul>
<div class="widget">Subscribe to get new posts by e-mail. We never share your address.</div>
</div>
</div>
<div class="site-footer">Copyright (c) 2026 GPTX Blog. Proudly powered by a handwritten generator. Theme: Plain.</div>
</div>
</body>
</html>
"#,
        charset = c.charset,
        title = esc(c.title),
        meta = esc(c.meta),
        recent = link_list(c.recent),
    )
}

/// A page of `mirror.gptx.test`: table layout, a banner, the content minus its last block.
pub(crate) fn mirror_page(title: &str, original: &str, content: &str) -> String {
    format!(
        r##"<HTML><HEAD><TITLE>{t} (mirror)</TITLE></HEAD>
<BODY BGCOLOR="#FFFFFF">
<TABLE WIDTH="100%" BORDER="0">
<TR><TD CLASS="nav"><A HREF="/">Mirror index</A> | <A HREF="{o}">Original page</A></TD></TR>
<TR><TD CLASS="banner">This is an unofficial mirror of docs.gptx.test, refreshed weekly. The original may be newer.</TD></TR>
<TR><TD CLASS="content">
{content}</TD></TR>
<TR><TD CLASS="foot">Mirror hosted by volunteers. Bandwidth donated.</TD></TR>
</TABLE>
</BODY></HTML>
"##,
        t = esc(title),
        o = esc(original)
    )
}

/// A page with a list of links for the mirror or the blog (index pages).
pub(crate) fn simple_list(title: &str, links: &[Link]) -> String {
    format!(
        "<HTML><HEAD><TITLE>{t}</TITLE></HEAD><BODY>\n<H1>{t}</H1>\n<UL>\n{l}\n</UL>\n</BODY></HTML>\n",
        t = esc(title),
        l = link_list(links)
    )
}

/// A 404 page.
pub fn not_found(site: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Not found — {s}</title></head>\n\
         <body><h1>404 Not Found</h1><p>The page you asked for is not on {s}. \
         It may have moved; try the <a href=\"/\">home page</a>.</p></body></html>\n",
        s = esc(site)
    )
}

/// A page behind `robots.txt`, holding a canary string.
pub(crate) fn canary_page(title: &str, canary: &str, next: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body>\n\
         <h1>{t}</h1>\n<p>Internal use only. Reference code {c}. Do not distribute this note outside the team.</p>\n\
         <p>Meeting minutes and drafts are kept here until they are ready. Ticket {c} tracks the review.</p>\n\
         <p><a href=\"{n}\">Next note</a></p>\n</body></html>\n",
        t = esc(title),
        c = esc(canary),
        n = esc(next)
    )
}
