#!/usr/bin/env python3
"""Extracts the main text of a Debian documentation package's HTML pages into a gptx corpus snapshot.

Usage: extract_doc_set.py sqlite|postgresql <html-root> <out.jsonl> [--drop PREFIX ...]
  sqlite:     <html-root> is usr/share/doc/sqlite3 from `apt-get download sqlite3-doc; dpkg -x ...`
              (all pages, including lang_*.html, c3ref/, session/, releaselog/, syntax/).
  postgresql: <html-root> is usr/share/doc/postgresql-doc-15/html from postgresql-doc-15.
  --drop PREFIX leaves out every page whose id starts with PREFIX (may be repeated).

One JSON object per page, sorted by id (the page's path under <html-root>), the same format as
extract_python_docs.py:
  {"id": "c3ref/open.html", "title": str,
   "blocks": [{"k": "h1"|"h2"|"h3"|"p"|"pre"|"li", "t": str}, ...],
   "links": ["c3ref/sqlite3.html", ...]}   # other pages of the same output set, in order of first mention

Only content is kept: the site header, menus, search box, tables of contents, navigation
header/footer tables, scripts, syntax-diagram SVGs and "last modified" footers are dropped, and so
is each page's link back to its section's front page. Whitespace outside <pre> is collapsed, HTML
entities are decoded, non-breaking spaces become spaces. Pages with less than MIN_TEXT bytes of text
are left out, and so are index pages, lists of names and pages that repeat others (see PROFILES).
The script is deterministic: the same package gives the same bytes.
"""
import html.parser
import json
import os
import posixpath
import re
import sys

MIN_TEXT = 300  # bytes of UTF-8 text a page needs to be kept

HEAD = {"h1": "h1", "h2": "h2", "h3": "h3", "h4": "h3", "h5": "h3", "h6": "h3"}
LEAF = {"p", "dt", "td", "th", "caption", "figcaption"}          # text holders, kind "p"
CONTAINER = {"div", "table", "thead", "tbody", "tfoot", "tr", "ul", "ol", "dl", "dd",
             "blockquote", "section", "article", "center", "form", "figure"}
BLOCK = set(HEAD) | LEAF | CONTAINER | {"pre", "li"}
BOUNDARY = {"div", "table", "ul", "ol", "dl", "blockquote", "section", "article", "figure"}
VOID = {"br", "hr", "img", "input", "meta", "link", "wbr", "col", "area", "base", "source",
        "param", "track", "embed"}

# Per set: (tag, attribute, regex on the attribute's value) of elements dropped with their content,
# and regexes of whole blocks (after whitespace collapsing) that are page chrome.
PROFILES = {
    "sqlite": {
        "drop": [("div", "class", r"^(tagline|menu|searchmenu|fancy_toc)\b"),
                 ("div", "class", r"^imgcontainer$")],
        "chrome": [r"^This page last modified on\b",
                   r"^See also lists of Objects, Constants, and Functions\.$"],
        # generated indexes and lists of names (navigation), and pages that repeat others:
        # capi3ref.html is all of c3ref/ on one page, changes.html all of releaselog/,
        # requirements.html excerpts of the other pages
        # a paragraph that is only a link to a syntax diagram is the diagram's label
        "label_links": r"(^|/)syntax/",
        "skip_pages": ["capi3ref.html", "changes.html", "chronology.html", "doc_backlink_crossref.html",
                       "doc_keyword_crossref.html", "doc_pagelink_crossref.html",
                       "doc_target_crossref.html", "doclist.html", "docs.html", "keyword_index.html",
                       "lang.html", "requirements.html", "sitemap.html", "syntax.html",
                       "syntaxdiagrams.html", "c3ref/constlist.html", "c3ref/funclist.html",
                       "c3ref/objlist.html", "session/constlist.html", "session/funclist.html"],
    },
    "postgresql": {
        "drop": [("div", "class", r"^(navheader|navfooter|toc)$")],
        "chrome": [],
        "label_links": None,
        "skip_pages": ["bookindex.html"],
    },
}
ALWAYS_DROP = {"script", "style", "svg", "button", "noscript", "select", "textarea", "map"}


class Page(html.parser.HTMLParser):
    def __init__(self, page, profile):
        super().__init__(convert_charrefs=True)
        self.page = page
        self.drop_rules = [(t, a, re.compile(r)) for t, a, r in profile["drop"]]
        self.chrome = [re.compile(r) for r in profile["chrome"]]
        self.label_links = profile["label_links"] and re.compile(profile["label_links"])
        self.label_a = 0        # depth inside a diagram-label link
        self.labelled = False   # the current block has a diagram-label link
        self.skip_tag = None    # tag of the dropped element we are inside
        self.skip_n = 0         # open elements of that tag inside it (itself included)
        self.stack = []         # open block elements: [tag, dropped]
        self.rows = []          # open table rows: [cell number, [(cell number, block), ...]]
        self.in_a = 0
        self.buf = []
        self.buf_label = []     # per piece of self.buf: inside a diagram-label link
        self.buf_links = []
        self.blocks = []
        self.links = []
        self.title = ""
        self.in_title = False
        self.fancy_title = 0    # SQLite's <div class="fancy_title"> is the page's h1

    # -- blocks ------------------------------------------------------------------------------
    def kind(self):
        if self.fancy_title:
            return "h1"
        for tag, _ in reversed(self.stack):
            if tag == "pre":
                return "pre"
            if tag in HEAD:
                return HEAD[tag]
            if tag == "li":
                return "li"
            if tag in BOUNDARY:
                break
        return "p"

    def flush(self):
        text, links = "".join(self.buf), self.buf_links
        outside = "".join(t for t, lab in zip(self.buf, self.buf_label) if not lab)
        labelled = self.labelled
        self.buf, self.buf_links, self.buf_label, self.labelled = [], [], [], False
        if any(d for _, d in self.stack):
            return
        kind = self.kind()
        text = text.replace("\xa0", " ")
        if kind == "pre":
            text = text.strip("\n").rstrip()
            text = "\n".join(line.rstrip() for line in text.split("\n"))
        else:
            text = re.sub(r"\s+", " ", text).strip()
        if not text.strip() or (labelled and not outside.strip()):
            return
        if kind != "pre" and any(r.search(text) for r in self.chrome):
            return
        block = {"k": kind, "t": text}
        if self.rows:
            self.rows[-1][1].append((self.rows[-1][0], block))
        else:
            self.blocks.append(block)
        for link in links:
            if link not in self.links:
                self.links.append(link)

    def close_to(self, names, stop=()):
        """Pops the innermost open element in `names` (and everything inside it), unless an element
        in `stop` comes first."""
        for i in range(len(self.stack) - 1, -1, -1):
            tag = self.stack[i][0]
            if tag in stop:
                return
            if tag in names:
                self.truncate(i)
                return

    def truncate(self, n):
        """Closes the open elements from the top of the stack down to index n."""
        while len(self.stack) > n:
            if self.stack.pop()[0] == "tr":
                self.end_row()

    def end_row(self):
        """A table row whose cells hold only paragraphs becomes one block, "cell | cell | ..."."""
        _, cells = self.rows.pop()
        out = self.rows[-1][1] if self.rows else None
        if any(c is None or b["k"] != "p" for c, b in cells):
            if out is not None:
                out.append((None, None))  # a row with a nested table is kept block by block
                out.extend(cells)
            else:
                self.blocks.extend(b for _, b in cells if b)
            return
        if not cells:
            return
        texts = {}
        for c, b in cells:
            texts.setdefault(c, []).append(b["t"])
        block = {"k": "p", "t": " | ".join(" ".join(t) for _, t in sorted(texts.items()))}
        if out is not None:
            out.append((self.rows[-1][0], block))
        else:
            self.blocks.append(block)

    def open_block(self, tag):
        self.flush()
        # HTML's implied end tags, for SQLite's unclosed <p> and <li>
        if self.stack and self.stack[-1][0] == "p":
            self.truncate(len(self.stack) - 1)
        if tag == "li":
            self.close_to({"li"}, stop={"ul", "ol"})
        elif tag in ("dt", "dd"):
            self.close_to({"dt", "dd"}, stop={"dl"})
        elif tag == "tr":
            self.close_to({"tr"}, stop={"table", "thead", "tbody", "tfoot"})
        elif tag in ("td", "th"):
            self.close_to({"td", "th"}, stop={"tr", "table"})
        # a heading inside a link is a link back to the section's front page
        self.stack.append([tag, tag in HEAD and self.in_a > 0])
        if tag == "tr":
            self.rows.append([0, []])
        elif tag in ("td", "th") and self.rows:
            self.rows[-1][0] += 1

    def close_block(self, tag):
        self.flush()
        if any(t == tag for t, _ in self.stack):
            self.close_to({tag})

    # -- parser callbacks --------------------------------------------------------------------
    def dropped(self, tag, a):
        if tag in ALWAYS_DROP:
            return True
        return any(tag == t and r.search(a.get(attr) or "") for t, attr, r in self.drop_rules)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "title" and not self.skip_tag:
            self.in_title = True
            return
        if self.skip_tag:
            if tag == self.skip_tag:
                self.skip_n += 1
            return
        if self.dropped(tag, a):
            if tag == "button":
                for entry in reversed(self.stack):  # e.g. SQLite's "select-stmt: [hide]" label
                    if entry[0] in LEAF or entry[0] in HEAD:
                        entry[1] = True
                        break
            if tag not in VOID:
                self.skip_tag, self.skip_n = tag, 1
            return
        if tag == "div" and a.get("class") == "fancy_title":
            self.open_block("div")
            self.fancy_title = len(self.stack)
            return
        if tag in BLOCK:
            self.open_block(tag)
        elif tag == "br":
            self.buf.append("\n" if self.kind() == "pre" else " ")
            self.buf_label.append(self.label_a > 0)
        elif tag == "a":
            self.in_a += 1
            href = a.get("href", "")
            if self.label_links and self.label_links.search(href):
                self.label_a, self.labelled = self.in_a, True
            if href and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", href) and not href.startswith(("#", "/")):
                path = href.split("#")[0].split("?")[0]
                target = posixpath.normpath(posixpath.join(posixpath.dirname(self.page), path))
                if target.endswith(".html") and target != self.page:
                    self.buf_links.append(target)

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
            return
        if self.skip_tag:
            if tag == self.skip_tag:
                self.skip_n -= 1
                if self.skip_n == 0:
                    self.skip_tag = None
            return
        if tag in BLOCK:
            if self.fancy_title and tag == "div" and len(self.stack) == self.fancy_title:
                self.flush()
                self.fancy_title = 0
                self.truncate(len(self.stack) - 1)
                return
            self.close_block(tag)
        elif tag == "a":
            if self.label_a == self.in_a:
                self.label_a = 0
            self.in_a = max(0, self.in_a - 1)
        elif tag in ("body", "html"):
            self.flush()

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        elif not self.skip_tag:
            self.buf.append(data)
            self.buf_label.append(self.label_a > 0)

    def close(self):
        super().close()
        self.flush()
        self.truncate(0)


def main():
    args = sys.argv[1:]
    drops = []
    while "--drop" in args:
        i = args.index("--drop")
        drops.append(args[i + 1])
        del args[i:i + 2]
    name, root, out = args
    profile = PROFILES[name]
    pages = []
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".html"):
                pages.append(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/"))
    pages.sort()
    docs = []
    for page in pages:
        if page in profile["skip_pages"] or page.startswith(tuple(drops)):
            continue
        p = Page(page, profile)
        with open(os.path.join(root, page), encoding="utf-8") as f:
            p.feed(f.read())
        p.close()
        if sum(len(b["t"].encode("utf-8")) for b in p.blocks) < MIN_TEXT:
            continue
        title = re.sub(r"\s+", " ", p.title.replace("\xa0", " ")).strip()
        if not title:
            title = next((b["t"] for b in p.blocks if b["k"] in ("h1", "h2", "h3")), page)
        if any(d["blocks"] == p.blocks for d in docs):
            continue  # the same text as a page already taken (SQLite's fileformat2.html)
        docs.append({"id": page, "title": title, "blocks": p.blocks, "links": p.links})
    ids = {d["id"] for d in docs}
    text = 0
    with open(out, "w", encoding="utf-8", newline="\n") as w:
        for d in docs:
            d["links"] = [x for x in d["links"] if x in ids]
            text += sum(len(b["t"].encode("utf-8")) for b in d["blocks"])
            w.write(json.dumps(d, ensure_ascii=False) + "\n")
    print(f"{len(docs)} pages, {text} bytes of text -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
