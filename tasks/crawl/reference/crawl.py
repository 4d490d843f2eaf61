#!/usr/bin/env python3
"""Reference crawler of the crawl stage: polite crawl, main-text extraction, dedup → data/corpus.jsonl.

The crawl runs in two passes:

1. Crawl. Breadth-first from the seed URLs (and the sitemaps robots.txt announces), each host's
   queue served in turn (so a large site cannot take a limited crawl's every request), one request at
   a time under a global rate limit, obeying robots.txt, following redirects by hand (so robots and
   loop checks apply to every hop), retrying 503/429/connection errors, steering clear of traps.
   Each HTML page is parsed into text blocks (headings, paragraphs, list items, <pre>...) of its
   main element, leaving out what is page furniture by construction: <nav>, <aside>, <footer>,
   <form>, scripts, and elements whose class or id says "sidebar", "menu", "footer"...
2. Select. Blocks that recur on most pages of a host are its template (boilerplate learned by
   frequency); link-dense blocks are navigation; pages that are mostly links are listings. What
   remains is deduplicated (exact hash, then shingle containment against the documents kept; the
   shallowest URL first, then the longest text) and written atomically, one {"url", "text"} JSON
   object per line, under the URL that answered with the page (the last hop of its redirects).

The layers overlap on purpose: frequency and link density alone clean all three sites of the
world, while tags and class names clean a page without needing many pages of its host. Nothing is
specific to one site's template. Standard library only.

Usage: crawl.py [--max-pages N] [--max-seconds S] [--out FILE] [--seed URL ...]
"""

import argparse
import collections
import email.utils
import gzip
import hashlib
import http.client
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import urllib.robotparser
import xml.etree.ElementTree as ET
import zlib
from html.parser import HTMLParser

USER_AGENT = "gptx-reference-crawler/1.0"
DEFAULT_SEEDS = ["http://docs.gptx.test/", "http://blog.gptx.test/"]
# Only hosts of this domain are crawled (the offline world: nothing else exists).
ALLOWED_DOMAIN = "gptx.test"

# Politeness and robustness.
REQUESTS_PER_SECOND = 8.0  # the server answers 429 above 20/s; the task asks for under 10/s
MAX_TRIES = 3  # per request, on 503, 429 and connection errors
MAX_REFUSED_IN_A_ROW = 10  # URLs answered 429 after every try: the server will not serve more
MAX_RETRY_WAIT = 10.0  # seconds; a longer Retry-After is capped
MAX_REDIRECTS = 5
TIMEOUT = 15.0  # seconds per request
MAX_BODY_BYTES = 8 << 20

# URL hygiene.
SESSION_PARAMS = {"sid", "sessionid", "session_id", "session", "phpsessid", "jsessionid",
                  "aspsessionid", "cfid", "cftoken", "fbclid", "gclid", "ref"}
TRACKING_PREFIXES = ("utm_",)
PRINT_PARAMS = {"print", "printable", "printview"}
SKIP_EXTENSIONS = {".css", ".js", ".json", ".xml", ".rss", ".atom", ".txt", ".png", ".jpg", ".jpeg",
                   ".gif", ".svg", ".ico", ".webp", ".pdf", ".zip", ".gz", ".tgz", ".bz2", ".xz",
                   ".tar", ".mp3", ".mp4", ".avi", ".woff", ".woff2", ".ttf", ".eot", ".exe", ".dmg"}
SITEMAP_LINK = re.compile(r"/sitemap[\w.-]*\.xml$", re.I)
MAX_URL_LENGTH = 300
MAX_PATH_DEPTH = 12

# Trap avoidance. A URL's pattern is its host and path with digit runs masked
# (/events/2026/11/04/ → /events/#/#/#/). A pattern whose pages keep bringing no new text is
# abandoned; date-like patterns (calendars, the classic endless trap) get a much shorter leash.
PATTERN_STRIKES = 25
DATE_PATTERN_STRIKES = 3
DATE_PATTERN_MAX = 20
DATE_LIKE = re.compile(r"(?:^|[/_=-])(1[89]\d\d|2\d\d\d)[/_-](0?[1-9]|1[0-2])(?:[/_-]|$)")

# Extraction and selection.
# A block on at least this many pages of a host, and on at least this share of them, is template
# text. The share is high because real content repeats too: "Note" heads 45% of the docs pages.
BOILERPLATE_MIN_PAGES = 5
BOILERPLATE_SHARE = 0.7
LINK_DENSE = 0.5  # a block whose text is mostly link text is navigation
LISTING_LINK_SHARE = 0.5  # a page whose remaining text is mostly link text is a listing
MIN_TEXT_CHARS = 100  # a page with less main text is not worth a document
NEAR_DUPLICATE = 0.8  # share of a document's shingles already kept that makes it a duplicate
SHINGLE_WORDS = 5

PROGRESS_EVERY = 50


def log(msg):
    print(f"[crawl] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# URLs


def host_allowed(host):
    return host == ALLOWED_DOMAIN or host.endswith("." + ALLOWED_DOMAIN)


def normalize_url(href, base=None):
    """The canonical form of a link, or None when it is not worth crawling.

    Resolves it against `base`, drops the fragment and session/tracking parameters, lower-cases
    scheme and host, drops a default port and sorts the query; refuses other schemes and domains,
    print views, and URLs of files rather than pages.
    """
    try:
        url = urllib.parse.urljoin(base, href.strip()) if base else href.strip()
        url, _fragment = urllib.parse.urldefrag(url)
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # e.g. a malformed port or IPv6 literal
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if scheme not in ("http", "https") or not host_allowed(host):
        return None
    netloc = host if port in (None, 80 if scheme == "http" else 443) else f"{host}:{port}"
    path = parts.path or "/"
    if os.path.splitext(path.rsplit("/", 1)[-1])[1].lower() in SKIP_EXTENSIONS:
        return None
    params = []
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        k = key.lower()
        if k in PRINT_PARAMS and value.lower() not in ("", "0", "false", "no"):
            return None  # a print view duplicates its page
        if k not in SESSION_PARAMS and not k.startswith(TRACKING_PREFIXES):
            params.append((key, value))
    url = urllib.parse.urlunsplit((scheme, netloc, path, urllib.parse.urlencode(sorted(params)), ""))
    return url if len(url) <= MAX_URL_LENGTH else None


def looks_like_trap(url):
    """Structural trap signs: a very deep path, or a (non-numeric) segment repeated over and over."""
    segments = [s for s in urllib.parse.urlsplit(url).path.split("/") if s]
    if len(segments) > MAX_PATH_DEPTH:
        return True
    repeats = collections.Counter(s for s in segments if not s.isdigit())
    return bool(repeats) and max(repeats.values()) >= 3


def url_pattern(url):
    parts = urllib.parse.urlsplit(url)
    return parts.netloc + re.sub(r"\d+", "#", parts.path)


def is_date_like(url):
    parts = urllib.parse.urlsplit(url)
    return bool(DATE_LIKE.search(parts.path) or DATE_LIKE.search(parts.query))


# ---------------------------------------------------------------------------------------------------
# HTTP


class Response:
    def __init__(self, url, status, headers, body):
        self.url = url
        self.status = status
        self.headers = headers
        self.body = body  # decompressed

    @property
    def content_type(self):
        return (self.headers.get("Content-Type") or "").lower()

    @property
    def redirect(self):
        """The Location of a redirect response, else None."""
        if self.status in (301, 302, 303, 307, 308):
            return self.headers.get("Location")
        return None


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hands 3xx responses back to the caller, which follows them itself (robots, loops, dedup)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class FetchError(Exception):
    pass


class HostQueues:
    """The crawl frontier: a FIFO queue per host, served in turn (one URL of each host with URLs
    waiting, round after round), so no one large site takes every request of a limited crawl."""

    def __init__(self):
        self.hosts = []  # in first-seen order
        self.queues = {}  # host -> deque of URLs
        self.next = 0  # index into self.hosts of the host whose turn it is

    def append(self, url):
        host = urllib.parse.urlsplit(url).hostname or ""
        if host not in self.queues:
            self.hosts.append(host)
            self.queues[host] = collections.deque()
        self.queues[host].append(url)

    def popleft(self):
        for k in range(len(self.hosts)):
            i = (self.next + k) % len(self.hosts)
            if self.queues[self.hosts[i]]:
                self.next = i + 1
                return self.queues[self.hosts[i]].popleft()
        raise IndexError("pop from an empty frontier")

    def __len__(self):
        return sum(len(q) for q in self.queues.values())


class Fetcher:
    """GETs under a global rate limit, with retries and backoff (Retry-After honoured) and gzip."""

    def __init__(self, rate, deadline):
        # No proxies: the world is on the local network.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
        self.interval = 1.0 / rate
        self.next_slot = 0.0
        self.deadline = deadline
        self.requests = 0
        self.statuses = collections.Counter()

    def get(self, url):
        """The response to GET `url`, whatever its status; FetchError when none could be had."""
        for attempt in range(1, MAX_TRIES + 1):
            last = attempt == MAX_TRIES
            backoff = 2.0 ** (attempt - 1)
            try:
                resp = self._request(url)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                if last:
                    raise FetchError(f"{url}: {getattr(e, 'reason', e)}") from None
                self._pause(backoff)
                continue
            if resp.status not in (429, 503) or last:
                return resp
            self._pause(retry_after(resp.headers, default=backoff))

    def _request(self, url):
        req = urllib.request.Request(url, headers={
            "User-Agent": USER_AGENT,
            "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.5",
            "Accept-Encoding": "gzip",
        })
        self._wait_turn()
        self.requests += 1
        try:
            with self.opener.open(req, timeout=TIMEOUT) as resp:
                status, headers, body = resp.status, resp.headers, resp.read(MAX_BODY_BYTES)
        except urllib.error.HTTPError as e:  # 3xx (not followed), 4xx and 5xx are answers too
            status, headers = e.code, e.headers
            try:
                body = e.read(MAX_BODY_BYTES)
            except (OSError, http.client.HTTPException):
                body = b""
        self.statuses[status] += 1
        return Response(url, status, headers, decompress(body, headers))

    def _wait_turn(self):
        """The rate limit: requests go out at least `interval` seconds apart."""
        now = time.monotonic()
        if now < self.next_slot:
            time.sleep(self.next_slot - now)
        self.next_slot = max(now, self.next_slot) + self.interval

    def _pause(self, seconds):
        time.sleep(max(0.0, min(seconds, self.deadline - time.monotonic())))


def retry_after(headers, default):
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped."""
    value = (headers.get("Retry-After") or "").strip()
    seconds = default
    if value.isdigit():
        seconds = float(value)
    elif value:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            pass
    return min(max(seconds, 0.5), MAX_RETRY_WAIT)


def decompress(body, headers):
    """The body without its Content-Encoding. Some servers gzip without being asked (or saying so),
    hence the magic-number check; an undecodable body becomes empty rather than garbage."""
    encoding = (headers.get("Content-Encoding") or "").lower()
    try:
        if "gzip" in encoding or body[:2] == b"\x1f\x8b":
            return gzip.decompress(body)
        if "deflate" in encoding:
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate
    except (OSError, EOFError, zlib.error):
        return b""
    return body


META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def decode_html(body, content_type):
    """An HTML body as text: charset from the Content-Type header, else from a <meta>, else UTF-8."""
    candidates = []
    m = re.search(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", content_type, re.I)
    if m:
        candidates.append(m.group(1))
    m = META_CHARSET.search(body[:4096])
    if m:
        candidates.append(m.group(1).decode("ascii", "replace"))
    for charset in candidates:
        try:
            return body.decode(charset, errors="replace")
        except LookupError:  # an unknown charset name
            continue
    return body.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------
# robots.txt


class Robots:
    """robots.txt per host, fetched before anything else on the host. As RFC 9309 says: a 4xx answer
    means everything is allowed; an unreachable or failing server means nothing is."""

    def __init__(self, fetcher):
        self.fetcher = fetcher
        self.parsers = {}
        self.sitemaps = []  # announced by the robots.txt files read so far

    def allowed(self, url):
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self.parsers:
            self.parsers[key] = self._load(*key)
        return self.parsers[key].can_fetch(USER_AGENT, url)

    def _load(self, scheme, netloc):
        rp = urllib.robotparser.RobotFileParser()
        url = f"{scheme}://{netloc}/robots.txt"
        try:
            resp = self.fetcher.get(url)
            for _ in range(MAX_REDIRECTS):  # robots.txt may itself redirect
                if not resp.redirect:
                    break
                resp = self.fetcher.get(urllib.parse.urljoin(resp.url, resp.redirect))
        except FetchError as e:
            log(f"robots.txt unreachable, not crawling {netloc}: {e}")
            rp.disallow_all = True
            return rp
        if resp.status == 200:
            rp.parse(resp.body.decode("utf-8", errors="replace").splitlines())
            self.sitemaps.extend(rp.site_maps() or [])
            delay = rp.crawl_delay(USER_AGENT)
            if delay:  # one request at a time overall, so the slowest host sets the pace
                self.fetcher.interval = max(self.fetcher.interval, min(float(delay), MAX_RETRY_WAIT))
        elif 400 <= resp.status < 500:
            rp.allow_all = True
        else:
            log(f"robots.txt of {netloc} answered {resp.status}; not crawling it")
            rp.disallow_all = True
        return rp


# ---------------------------------------------------------------------------------------------------
# HTML → a small tree → text blocks

VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
             "source", "track", "wbr"}
# Never main content: left out with everything inside. (<header> is handled apart: inside an
# article it holds the title.)
DROP_TAGS = {"head", "script", "style", "noscript", "template", "svg", "math", "iframe", "object",
             "canvas", "nav", "aside", "footer", "form", "button", "select", "textarea", "menu", "dialog"}
# Elements that end a run of text; all others are inline.
BLOCK_TAGS = {"address", "article", "blockquote", "body", "caption", "center", "dd", "details", "div",
              "dl", "dt", "fieldset", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6",
              "header", "hr", "html", "legend", "li", "main", "ol", "p", "pre", "section", "summary",
              "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul"}
# Class or id words of page furniture, as in readability-style extractors. ("header" is not one:
# an "entry-header" holds the title; a site's header is <header> or recurring text.)
FURNITURE_WORDS = {"nav", "navbar", "navigation", "menu", "sidebar", "footer", "foot", "masthead",
                   "breadcrumb", "breadcrumbs", "widget", "banner", "share", "social", "comment",
                   "comments", "meta", "pager", "pagination", "toolbar", "cookie", "advert", "ads",
                   "related", "skip", "print"}
NEVER_FURNITURE = {"html", "body", "main", "article"}
# Opening one of these closes an open element of the same family (up to a boundary), as browsers do.
IMPLIED_END = {
    "p": ({"p"}, {"div", "td", "th", "li", "body", "blockquote", "section", "article", "main"}),
    "li": ({"li"}, {"ul", "ol", "menu"}),
    "dt": ({"dt", "dd"}, {"dl"}),
    "dd": ({"dt", "dd"}, {"dl"}),
    "tr": ({"tr", "td", "th"}, {"table", "tbody", "thead", "tfoot"}),
    "td": ({"td", "th"}, {"tr", "table"}),
    "th": ({"td", "th"}, {"tr", "table"}),
    "option": ({"option"}, {"select", "datalist"}),
}
CLOSES_P = (BLOCK_TAGS | DROP_TAGS) - {"body", "html", "head", "td", "th", "li", "dd", "dt", "tr",
                                       "tbody", "thead", "tfoot", "script", "style", "template"}


class Node:
    __slots__ = ("tag", "attrs", "children")

    def __init__(self, tag, attrs):
        self.tag = tag
        self.attrs = attrs
        self.children = []  # Nodes and strings


class TreeBuilder(HTMLParser):
    """A forgiving HTML parser that builds a tree of Nodes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def _close_until(self, tags, boundary):
        for i in range(len(self.stack) - 1, 0, -1):
            tag = self.stack[i].tag
            if tag in tags:
                del self.stack[i:]
                return
            if tag in boundary:
                return

    def handle_starttag(self, tag, attrs):
        if tag in IMPLIED_END:
            self._close_until(*IMPLIED_END[tag])
        if tag in CLOSES_P and self.stack[-1].tag == "p":
            self.stack.pop()
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID_TAGS:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS and self.stack[-1].tag == tag:
            self.stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return
        # A stray end tag closes nothing.

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse_html(text):
    builder = TreeBuilder()
    try:
        builder.feed(text)
        builder.close()
    except Exception as e:  # html.parser is forgiving, but a bad page must never stop the crawl
        log(f"HTML parse problem (keeping what was parsed): {e}")
    return builder.root


def iter_nodes(node):
    """Every element under `node` (itself included), in document order."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed([c for c in n.children if isinstance(c, Node)]))


def text_of(node):
    parts = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, str):
            parts.append(n)
        elif n.tag not in ("script", "style"):
            stack.extend(reversed(n.children))
    return "".join(parts)


def is_furniture(node):
    """Whether an element's class or id names page furniture (sidebar, menu, footer...)."""
    if node.tag in NEVER_FURNITURE:
        return False
    names = f"{node.attrs.get('class', '')} {node.attrs.get('id', '')}".lower()
    return any(w in FURNITURE_WORDS for w in re.split(r"[\s_-]+", names))


class Block:
    """A paragraph-like piece of text; `link_chars` counts its characters inside links."""

    __slots__ = ("text", "link_chars")

    def __init__(self, text, link_chars):
        self.text = text
        self.link_chars = link_chars

    def link_dense(self):
        return self.link_chars > LINK_DENSE * len(self.text)


class Page:
    """What a fetched HTML page gives: its links, its robots <meta> and the blocks of its main text."""

    def __init__(self, url, html_text):
        tree = parse_html(html_text)
        self.url = url
        self.host = urllib.parse.urlsplit(url).netloc
        self.noindex = nofollow = False
        base = url
        for n in iter_nodes(tree):
            if n.tag == "meta" and n.attrs.get("name", "").lower() == "robots":
                content = n.attrs.get("content", "").lower()
                self.noindex |= "noindex" in content or "none" in content
                nofollow |= "nofollow" in content or "none" in content
            elif n.tag == "base" and n.attrs.get("href"):
                base = urllib.parse.urljoin(url, n.attrs["href"])
        self.links, self.sitemaps = ([], []) if nofollow else links_of(tree, base)
        self.blocks = extract_blocks(main_root(tree))


def links_of(tree, base):
    """The crawlable links of a page (rel=nofollow ones left out) and the sitemaps it links to."""
    links, sitemaps = [], []
    for n in iter_nodes(tree):
        href = n.attrs.get("href") if n.tag in ("a", "area") else None
        if not href or "nofollow" in n.attrs.get("rel", "").lower().split():
            continue
        url = normalize_url(href, base)
        if url:
            links.append(url)
        elif SITEMAP_LINK.search(urllib.parse.urlsplit(href).path):
            sitemaps.append(urllib.parse.urljoin(base, href))
    return links, sitemaps


def main_root(tree):
    """The element holding the main content: <main> (or role=main), else a lone <article>, else <body>."""
    mains, articles, body = [], [], None
    for n in iter_nodes(tree):
        if n.tag == "main" or n.attrs.get("role") == "main":
            mains.append(n)
        elif n.tag == "article":
            articles.append(n)
        elif n.tag == "body" and body is None:
            body = n
    if mains:
        return max(mains, key=lambda n: len(text_of(n)))
    if len(articles) == 1:
        return articles[0]
    return body or tree


def extract_blocks(root):
    """The text blocks under `root`, without dropped tags and furniture. Runs of inline text are cut
    at block elements; <pre> keeps its text as is, other text has its whitespace collapsed."""
    blocks = []
    run = []  # (text, inside a link)

    def flush():
        text = " ".join("".join(t for t, _ in run).split())
        if text:
            link_text = " ".join("".join(t for t, in_link in run if in_link).split())
            blocks.append(Block(text, len(link_text)))
        run.clear()

    def walk(node, in_link, in_article):
        for child in node.children:
            if isinstance(child, str):
                run.append((child, in_link))
                continue
            tag = child.tag
            if tag in DROP_TAGS or is_furniture(child) or (tag == "header" and not in_article):
                continue
            if tag == "br":
                run.append(("\n", in_link))
            elif tag == "pre":
                flush()
                text = text_of(child).strip("\n")
                if text.strip():
                    link_chars = sum(len(text_of(a)) for a in iter_nodes(child) if a.tag == "a")
                    blocks.append(Block(text, link_chars))
            elif tag in BLOCK_TAGS:
                flush()
                walk(child, in_link, in_article or tag in ("article", "main"))
                flush()
            else:
                walk(child, in_link or tag == "a", in_article)

    walk(root, False, root.tag in ("article", "main"))
    flush()
    return blocks


# ---------------------------------------------------------------------------------------------------
# Selection and dedup


def mask(text):
    """A block's template key: case-folded, digits masked ("Posted on 2026-02-23" ~ "... 2026-03-01")."""
    return re.sub(r"\d+", "#", text.lower())


class Boilerplate:
    """A host's template text, learned from its pages: blocks that recur on most of them."""

    def __init__(self, pages):
        self.pages = collections.Counter(p.host for p in pages)
        self.counts = collections.defaultdict(collections.Counter)  # host → block key → pages
        for p in pages:
            self.counts[p.host].update({self.key(b) for b in p.blocks})

    @staticmethod
    def key(block):
        # A post's title and the same title as a link in every page's sidebar are different blocks.
        return mask(block.text), block.link_dense()

    def is_template(self, host, block):
        seen = self.counts[host][self.key(block)]
        return seen >= BOILERPLATE_MIN_PAGES and seen >= BOILERPLATE_SHARE * self.pages[host]


def main_text(page, boilerplate, stats):
    """The page's main text, or None for pages not worth a document (counted in `stats`)."""
    if page.noindex:
        stats["noindex_pages"] += 1
        return None
    blocks = [b for b in page.blocks if not boilerplate.is_template(page.host, b)]
    chars = sum(len(b.text) for b in blocks)
    if chars == 0 or sum(b.link_chars for b in blocks) >= LISTING_LINK_SHARE * chars:
        stats["listing_pages"] += 1
        return None
    text = "\n\n".join(b.text for b in blocks if not b.link_dense())
    if len(text) < MIN_TEXT_CHARS:
        stats["short_pages"] += 1
        return None
    return text


def shingles(text):
    """Hashes of the word 5-grams of a text."""
    words = text.split()
    if len(words) < SHINGLE_WORDS:
        return {hash(tuple(words))} if words else set()
    return {hash(tuple(words[i:i + SHINGLE_WORDS])) for i in range(len(words) - SHINGLE_WORDS + 1)}


def url_depth(url):
    """The number of segments of a URL's path."""
    return len([s for s in urllib.parse.urlsplit(url).path.split("/") if s])


def deduplicate(docs):
    """Drops exact and near duplicates from (url, text) pairs; a document goes when most of its
    shingles are already in kept documents. Documents at shallower URLs are judged first, so of a
    page and its copy under an archive path or on a mirror (which live deeper than what they copy)
    the page at its own URL stays, even when the copy's text is longer (an added note); of equally
    deep ones the longer, so of a page and a shortened copy the complete one stays. Returns the kept
    ones in crawl order."""
    kept, hashes, seen = set(), set(), set()
    for i in sorted(range(len(docs)), key=lambda i: (url_depth(docs[i][0]), -len(docs[i][1]))):
        text = docs[i][1]
        digest = hashlib.sha1(" ".join(text.split()).encode("utf-8")).digest()
        if digest in hashes:
            continue
        own = shingles(text)
        if own and len(own & seen) >= NEAR_DUPLICATE * len(own):
            continue
        hashes.add(digest)
        seen |= own
        kept.add(i)
    return [d for i, d in enumerate(docs) if i in kept]


# ---------------------------------------------------------------------------------------------------
# The crawler


class Crawler:
    def __init__(self, seeds, max_pages, max_seconds):
        self.t0 = time.monotonic()
        # Stop crawling a little early: selecting and writing need some time too.
        self.deadline = self.t0 + max(1.0, max_seconds - min(30.0, 0.1 * max_seconds))
        self.max_pages = max_pages
        self.fetcher = Fetcher(REQUESTS_PER_SECOND, self.deadline)
        self.robots = Robots(self.fetcher)
        self.queue = HostQueues()
        self.seen = set()  # every URL queued or reached by a redirect
        self.sitemaps = []  # linked from pages, not read yet (robots.txt ones: self.robots.sitemaps)
        self.sitemaps_read = set()
        self.refused_in_a_row = 0
        self.pages = []  # a Page per fetched HTML page, in crawl order
        self.texts_seen = collections.defaultdict(set)  # host → block keys (for trap detection)
        self.patterns = collections.defaultdict(lambda: [0, 0])  # URL pattern → [pages, useful pages]
        self.stats = collections.Counter()
        for seed in seeds:
            url = normalize_url(seed)
            if url:
                self.enqueue(url)
            else:
                log(f"ignoring seed {seed}: not an http(s) URL in {ALLOWED_DOMAIN}")

    def enqueue(self, url):
        if url not in self.seen:
            self.seen.add(url)
            self.queue.append(url)

    def elapsed(self):
        return time.monotonic() - self.t0

    def run(self):
        while self.queue and len(self.pages) < self.max_pages:
            if time.monotonic() >= self.deadline:
                log("time budget spent; stopping the crawl")
                break
            if self.refused_in_a_row >= MAX_REFUSED_IN_A_ROW:
                log(f"{self.refused_in_a_row} URLs in a row refused with 429; stopping the crawl")
                break
            url = self.queue.popleft()
            try:
                self.visit(url)
                self.read_new_sitemaps()
            except Exception as e:  # one bad page must not stop the crawl
                self.stats["errors"] += 1
                log(f"error on {url}: {type(e).__name__}: {e}")
        log(f"crawl over: {len(self.pages)} pages, {len(self.queue)} URLs left in the queue")

    def visit(self, url):
        reason = self.should_skip(url)
        if reason:
            self.stats[reason] += 1
            return
        resp = self.fetch_following_redirects(url)
        if resp is None:
            return
        self.refused_in_a_row = self.refused_in_a_row + 1 if resp.status == 429 else 0
        if resp.status != 200:
            if resp.status >= 500 or resp.status == 429:
                self.stats["errors"] += 1
                log(f"giving up on {url}: status {resp.status} after {MAX_TRIES} tries")
            return
        if resp.content_type and "html" not in resp.content_type:
            self.stats["not_html"] += 1
            return
        page = Page(resp.url, decode_html(resp.body, resp.content_type))
        self.pages.append(page)
        self.note_usefulness(page)
        for link in page.links:
            self.enqueue(link)
        self.sitemaps.extend(page.sitemaps)
        page.links = page.sitemaps = None  # not needed any more
        if len(self.pages) % PROGRESS_EVERY == 0:
            log(f"{len(self.pages)} pages, {len(self.queue)} queued, {self.fetcher.requests} requests, "
                f"{self.elapsed():.0f} s")

    def should_skip(self, url):
        """Why `url` must not be fetched (a trap, robots.txt), or None."""
        if looks_like_trap(url):
            return "trap_skipped"
        pages, useful = self.patterns[url_pattern(url)]
        if is_date_like(url):
            if pages >= DATE_PATTERN_MAX or (pages >= DATE_PATTERN_STRIKES and useful == 0):
                return "trap_skipped"
        elif pages >= PATTERN_STRIKES and useful == 0:
            return "trap_skipped"
        if not self.robots.allowed(url):
            return "robots_blocked"
        return None

    def fetch_following_redirects(self, url):
        """GET `url`, following redirects by hand: each hop must stay in the world, pass
        should_skip, not loop and not lead to a URL already known. None when there is no page."""
        chain = [url]
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self.fetcher.get(url)
            except FetchError as e:
                self.stats["errors"] += 1
                log(f"fetch failed: {e}")
                return None
            if not resp.redirect:
                return resp
            target = normalize_url(resp.redirect, url)
            if target is None:
                self.stats["redirects_out_of_scope"] += 1
                return None
            if target in chain:
                self.stats["redirect_loops"] += 1
                log(f"redirect loop: {' -> '.join(chain + [target])}")
                return None
            if target in self.seen:  # queued or fetched under its own name already
                self.stats["redirects_to_known_urls"] += 1
                return None
            self.seen.add(target)
            reason = self.should_skip(target)
            if reason:
                self.stats[reason] += 1
                return None
            chain.append(target)
            url = target
        self.stats["redirect_loops"] += 1
        log(f"too many redirects: {' -> '.join(chain)}")
        return None

    def note_usefulness(self, page):
        """A page is useful when it brings enough text not seen on its host before. Patterns whose
        pages never are (calendars, endless pagination) are then abandoned by should_skip."""
        seen = self.texts_seen[page.host]
        novel = 0
        for b in page.blocks:
            key = mask(b.text)
            if key not in seen and not b.link_dense():
                novel += len(b.text)
            seen.add(key)
        counts = self.patterns[url_pattern(page.url)]
        counts[0] += 1
        counts[1] += novel >= MIN_TEXT_CHARS

    def read_new_sitemaps(self):
        pending, self.sitemaps = self.robots.sitemaps + self.sitemaps, []
        for sitemap in pending:
            if sitemap not in self.sitemaps_read:
                self.sitemaps_read.add(sitemap)
                self.read_sitemap(sitemap, depth=0)

    def read_sitemap(self, url, depth):
        """Queues the page URLs of a sitemap, or of the sitemaps of a sitemap index."""
        if not host_allowed((urllib.parse.urlsplit(url).hostname or "").lower()):
            return
        if not self.robots.allowed(url):
            self.stats["robots_blocked"] += 1
            return
        try:
            resp = self.fetcher.get(url)
            root = ET.fromstring(resp.body) if resp.status == 200 else None
        except (FetchError, ET.ParseError) as e:
            root = None
            log(f"sitemap {url}: {e}")
        if root is None:
            self.stats["bad_sitemaps"] += 1
            return
        is_index = root.tag.endswith("sitemapindex")
        new = 0
        for loc in root.iter():
            if not loc.tag.endswith("loc") or not (loc.text or "").strip():
                continue
            if is_index:
                if depth < 2 and loc.text.strip() not in self.sitemaps_read:
                    self.sitemaps_read.add(loc.text.strip())
                    self.read_sitemap(loc.text.strip(), depth + 1)
                continue
            target = normalize_url(loc.text.strip())
            if target and target not in self.seen:
                new += 1
                self.enqueue(target)
        log(f"sitemap {url}: {new} new URLs")

    def documents(self):
        """Pass 2: (url, main text) of every page worth a document, in crawl order."""
        boilerplate = Boilerplate(self.pages)
        docs = []
        for page in self.pages:
            text = main_text(page, boilerplate, self.stats)
            if text is not None:
                docs.append((page.url, text))
        return docs


def write_corpus(path, docs):
    """Writes the JSON lines to a temporary file next to `path`, then renames it into place."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".corpus-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for url, text in docs:
                f.write(json.dumps({"url": url, "text": text}, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-pages", type=int, default=2000, help="HTML pages to fetch at most")
    ap.add_argument("--max-seconds", type=float, default=900, help="wall-clock budget of the whole run")
    ap.add_argument("--out", default="data/corpus.jsonl", help="the JSON-lines file to write")
    ap.add_argument("--seed", action="append", help="a seed URL (repeatable; default: the world's two sites)")
    args = ap.parse_args(argv)

    crawler = Crawler(args.seed or DEFAULT_SEEDS, args.max_pages, args.max_seconds)
    try:
        crawler.run()
    except KeyboardInterrupt:
        log("interrupted; writing what was crawled so far")
    candidates = crawler.documents()
    docs = deduplicate(candidates)
    write_corpus(args.out, docs)

    s, f = crawler.stats, crawler.fetcher
    log(f"done in {crawler.elapsed():.1f} s: {len(crawler.pages)} pages fetched, {len(docs)} kept, "
        f"{len(candidates) - len(docs)} duplicates dropped, {s['listing_pages']} listing, "
        f"{s['short_pages']} short and {s['noindex_pages']} noindex pages left out; "
        f"{s['robots_blocked']} URLs blocked by robots.txt, {s['trap_skipped']} trap URLs skipped, "
        f"{s['redirect_loops']} redirect loops, {s['errors']} errors")
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(f.statuses.items()))
    log(f"{f.requests} requests ({statuses}); wrote {len(docs)} documents to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
