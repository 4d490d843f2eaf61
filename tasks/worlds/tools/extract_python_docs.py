#!/usr/bin/env python3
"""Extracts the main text of Debian's python3.11-doc HTML pages into gptx's corpus snapshot.

Usage: extract_python_docs.py <html-root> <out.jsonl> [page.html ...]
  <html-root> is usr/share/doc/python3.11/html from `apt-get download python3.11-doc; dpkg -x ...`.
  With page names after the output, only those pages are taken, and pages without Sphinx's main div
  (the SQLite documentation, for the out-of-domain set) are read from their first heading on.

One JSON object per page, sorted by path:
  {"id": "library/os.path.html", "title": str,
   "blocks": [{"k": "h1"|"h2"|"h3"|"p"|"pre"|"li", "t": str}, ...],
   "links": ["library/os.html", ...]}   # other pages this page links to, in order of first mention

Only the text inside <div class="body" role="main"> is kept; permalink marks are dropped, whitespace
outside <pre> is collapsed. The script is deterministic: the same package gives the same bytes.
"""
import html.parser
import json
import os
import posixpath
import re
import sys

BLOCKS = {"h1": "h1", "h2": "h2", "h3": "h3", "h4": "h3", "h5": "h3", "h6": "h3",
          "p": "p", "pre": "pre", "li": "li", "dt": "p", "td": "p", "th": "p", "caption": "p"}
VOID = {"br", "hr", "img", "input", "meta", "link", "wbr", "col", "area", "base", "source"}


class Main(html.parser.HTMLParser):
    def __init__(self, page, generic=False):
        self.generic = generic
        self.script = False
        super().__init__(convert_charrefs=True)
        self.page = page
        self.depth = 0          # depth inside the main div (0 = outside)
        self.skip = 0           # depth inside a permalink anchor
        self.stack = []         # open block kinds
        self.buf = []
        self.blocks = []
        self.links = []
        self.title = ""
        self.in_title = False

    def flush(self):
        text = "".join(self.buf)
        self.buf = []
        kind = self.stack[-1] if self.stack else "p"
        if kind != "pre":
            text = re.sub(r"\s+", " ", text).strip()
        else:
            text = text.strip("\n")
        if text.strip():
            self.blocks.append({"k": kind, "t": text})

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "title":
            self.in_title = True
        if tag in ("script", "style"):
            self.script = True
        if self.depth == 0:
            if (tag == "div" and a.get("role") == "main") or (self.generic and tag in ("h1", "h2")):
                self.depth = 1
            if not (self.generic and self.depth):
                return
        if self.generic:
            self.depth = 1  # the whole rest of the body counts; nesting is not tracked
            if tag in BLOCKS:
                self.flush()
                self.stack.append(BLOCKS[tag])
            elif tag in ("div", "table", "tr", "ul", "ol", "blockquote"):
                self.flush()
            return
        if tag not in VOID:
            self.depth += 1
        if tag == "a":
            if "headerlink" in (a.get("class") or ""):
                self.skip = self.depth
            href = a.get("href") or ""
            if href and "://" not in href and not href.startswith(("#", "mailto:")):
                target = posixpath.normpath(posixpath.join(posixpath.dirname(self.page), href.split("#")[0]))
                if target.endswith(".html") and target != self.page and target not in self.links:
                    self.links.append(target)
        if tag in BLOCKS:
            self.flush()
            self.stack.append(BLOCKS[tag])
        elif tag == "br":
            self.buf.append("\n" if self.stack and self.stack[-1] == "pre" else " ")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag in ("script", "style"):
            self.script = False
        if self.generic:
            if self.depth and (tag in BLOCKS or tag in ("div", "table", "tr", "ul", "ol", "blockquote")):
                self.flush()
                if tag in BLOCKS and self.stack:
                    self.stack.pop()
            if tag in ("body", "html"):
                self.flush()
                self.depth = 0
            return
        if self.depth == 0:
            return
        if tag in BLOCKS:
            self.flush()
            if self.stack:
                self.stack.pop()
        if self.skip and self.depth == self.skip and tag == "a":
            self.skip = 0
        self.depth -= 1
        if self.depth == 0:
            self.flush()

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        if self.depth and not self.skip and not self.script:
            self.buf.append(data)


def main():
    root, out, only = sys.argv[1], sys.argv[2], sys.argv[3:]
    pages = []
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".html"):
                pages.append(os.path.relpath(os.path.join(d, f), root))
    pages = sorted(p for p in pages if not only or p in only)
    n = 0
    with open(out, "w", encoding="utf-8") as w:
        for page in pages:
            if page.startswith(("_", "genindex")) or page in ("search.html", "py-modindex.html"):
                continue
            p = Main(page, generic=bool(only))
            with open(os.path.join(root, page), encoding="utf-8") as f:
                p.feed(f.read())
            p.close()
            if not p.blocks:
                continue
            title = re.sub(r"\s+", " ", p.title).replace(" — Python 3.11.2 documentation", "").strip()
            if only:
                p.links = [x for x in p.links if x in only]
            w.write(json.dumps({"id": page, "title": title, "blocks": p.blocks, "links": p.links},
                               ensure_ascii=False) + "\n")
            n += 1
    print(f"{n} pages -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
