#!/usr/bin/env python3
"""The offline world's web server: serves routes.json's pages, redirects and traps; logs every request.

Usage: server.py --root DIR --log FILE [--port 80] [--bind 0.0.0.0]

DIR holds routes.json and the files it names (paths relative to DIR). Each request is answered, in
order: rate limit (429) → unknown host (404) → exact redirect → prefix redirect → page (a first 503
for `transient_503` pages, `?print=1` for print views, other query parameters ignored) → the host's
search form (`search`: `path?q=words&page=N` lists the pages whose title holds every word) → endless
calendar trap → add-slash 301 → the host's 404 page (answered 200 on a `soft_404` host). Page and trap bodies are gzipped by the host's
`gzip` policy ("always", "accept" = when Accept-Encoding allows it, "never"). Every request, including
malformed ones, becomes one JSON line in the log:
  {"t": unix time, "client": ip, "method": s, "host": s, "path": s (with "?query"), "status": int,
   "bytes": body bytes sent, "ua": s}, plus "refused": "budget" for a request past the world's
  request budget (routes.json's optional "request_budget": requests one client may make in all,
  refused ones counted; past it every request is 429 for the rest of the server's life).
Startup prints `gptx-web listening on <bind>:<port>`; SIGTERM stops the server with exit code 0.
A malformed routes.json exits with code 2 and a message naming the key at fault.
Only the standard library is used.
"""
import argparse
import collections
import datetime
import gzip
import html
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A connection idle (or trickling a request) for this long is dropped, so slow clients cannot pin threads.
IDLE_TIMEOUT_S = 20
# Connections served at once; more are refused with a canned 503 (each costs a thread, and the
# container's pids limit is 256).
MAX_CONNECTIONS = 128
# A GET/HEAD/other request body up to this size is read and discarded to keep the connection usable;
# a larger (or chunked) one closes the connection after the response instead.
MAX_DISCARD_BODY = 1 << 20
# The month `/events/` shows: the world's "today" (its pages say "Last updated on Nov 28, 2026").
TRAP_HOME_MONTH = (2026, 11)
GZIP_POLICIES = ("always", "accept", "never")
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# RFC 3986 unreserved characters: percent-encoding them does not change a URL, so %7E and ~ match alike.
UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
PCT = re.compile(r"%([0-9A-Fa-f]{2})")
TRAP_DATE = re.compile(r"([0-9]{4})/([0-9]{2})/(?:([0-9]{2})/)?")


# ---------------------------------------------------------------------------------------------------
# routes.json


class ConfigError(Exception):
    """routes.json is unreadable or malformed; the message names the key at fault."""


class Routes:
    """routes.json, checked and with file paths resolved to absolute paths under the root."""

    def __init__(self, root, data):
        self.root = os.path.realpath(root)
        if not isinstance(data, dict):
            raise ConfigError("routes.json: the top level must be an object")
        if data.get("version") != 1:
            raise ConfigError(f"routes.json: 'version' must be 1, not {data.get('version')!r}")

        rl = _obj(data, "rate_limit", "rate_limit")
        self.rate_requests = _int(rl, "requests", "rate_limit.requests", minimum=1)
        self.rate_seconds = _num(rl, "per_seconds", "rate_limit.per_seconds")
        # Requests one client may make in all; None for no budget.
        self.request_budget = None
        if data.get("request_budget") is not None:
            self.request_budget = _int(data, "request_budget", "request_budget", minimum=1)

        # host → (gzip policy, absolute 404 file or None, trap prefix or None)
        self.hosts = {}
        # host → the status of its not-found page (200 on a soft-404 host, else 404)
        self.not_found_status = {}
        # host → (search path, [(lower-cased title, title, url path)])
        self.search = {}
        for host, cfg in _obj(data, "hosts", "hosts").items():
            where = f"hosts[{host!r}]"
            if not isinstance(cfg, dict):
                raise ConfigError(f"routes.json: {where} must be an object")
            if host != host.lower() or not host or "/" in host or ":" in host:
                raise ConfigError(f"routes.json: {where}: a host is a lower-case name without port or '/'")
            policy = cfg.get("gzip", "never")
            if policy not in GZIP_POLICIES:
                raise ConfigError(f"routes.json: {where}.gzip must be one of {GZIP_POLICIES}, not {policy!r}")
            not_found = cfg.get("not_found")
            if not_found is not None:
                not_found = self._file(not_found, f"{where}.not_found")
            trap = cfg.get("trap")
            if trap is not None:
                if not isinstance(trap, dict):
                    raise ConfigError(f"routes.json: {where}.trap must be an object or null")
                prefix = trap.get("prefix")
                if not (isinstance(prefix, str) and prefix.startswith("/") and prefix.endswith("/")):
                    raise ConfigError(
                        f"routes.json: {where}.trap.prefix must be a path starting and ending with '/'")
                trap = prefix
            self.hosts[host] = (policy, not_found, trap)
            soft = cfg.get("soft_404", False)
            if not isinstance(soft, bool):
                raise ConfigError(f"routes.json: {where}.soft_404 must be true or false")
            self.not_found_status[host] = 200 if soft else 404
            search = cfg.get("search")
            if search is not None:
                self.search[host] = self._search(search, f"{where}.search")

        # "host/path" → (content type, absolute file, absolute print file or None, transient_503)
        self.pages = {}
        for key, page in _obj(data, "pages", "pages").items():
            where = f"pages[{key!r}]"
            self._check_key(key, where)
            if not isinstance(page, dict):
                raise ConfigError(f"routes.json: {where} must be an object")
            ctype = page.get("type")
            if not isinstance(ctype, str) or not ctype or "\n" in ctype or "\r" in ctype:
                raise ConfigError(f"routes.json: {where}.type must be a content type")
            path = self._file(page.get("file"), f"{where}.file")
            print_path = page.get("print")
            if print_path is not None:
                print_path = self._file(print_path, f"{where}.print")
            transient = page.get("transient_503", False)
            if not isinstance(transient, bool):
                raise ConfigError(f"routes.json: {where}.transient_503 must be true or false")
            self.pages[key] = (ctype, path, print_path, transient)

        # "host/path" → (status, location)
        self.redirects = {}
        for key, red in _obj(data, "redirects", "redirects").items():
            where = f"redirects[{key!r}]"
            self._check_key(key, where)
            if not isinstance(red, dict):
                raise ConfigError(f"routes.json: {where} must be an object")
            self.redirects[key] = (_status(red, where), _location(red, "location", where))

        # [(host, prefix, status, replace)], first match wins
        self.redirect_prefixes = []
        prefixes = data.get("redirect_prefixes")
        if not isinstance(prefixes, list):
            raise ConfigError("routes.json: 'redirect_prefixes' must be a list")
        for i, red in enumerate(prefixes):
            where = f"redirect_prefixes[{i}]"
            if not isinstance(red, dict):
                raise ConfigError(f"routes.json: {where} must be an object")
            host = red.get("host")
            if host not in self.hosts:
                raise ConfigError(f"routes.json: {where}.host {host!r} is not in 'hosts'")
            prefix = red.get("prefix")
            if not (isinstance(prefix, str) and prefix.startswith("/")):
                raise ConfigError(f"routes.json: {where}.prefix must be a path starting with '/'")
            replace = _location(red, "replace", where)
            self.redirect_prefixes.append((host, prefix, _status(red, where), replace))

    def _search(self, search, where):
        """A host's search form: its path and its index file's entries."""
        if not isinstance(search, dict):
            raise ConfigError(f"routes.json: {where} must be an object or null")
        path = search.get("path")
        if not (isinstance(path, str) and path.startswith("/")):
            raise ConfigError(f"routes.json: {where}.path must be a path starting with '/'")
        index = self._file(search.get("index"), f"{where}.index")
        try:
            with open(index, "rb") as f:
                entries = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"routes.json: {where}.index: cannot read {index}: {e}") from None
        if not isinstance(entries, list) or not all(
                isinstance(x, dict) and isinstance(x.get("title"), str) and isinstance(x.get("path"), str)
                for x in entries):
            raise ConfigError(f"routes.json: {where}.index must hold a list of {{\"title\", \"path\"}}")
        return path, [(x["title"].lower(), x["title"], x["path"]) for x in entries]

    def _check_key(self, key, where):
        """A route key is "host/path" with a known host."""
        host, slash, _ = key.partition("/")
        if not slash or host not in self.hosts:
            raise ConfigError(f"routes.json: {where}: the key must be 'host/path' with a host from 'hosts'")

    def _file(self, rel, where):
        """The absolute path of an existing file named relative to the root, never outside it."""
        if not isinstance(rel, str) or not rel:
            raise ConfigError(f"routes.json: {where} must be a file path relative to the root")
        path = os.path.realpath(os.path.join(self.root, rel))
        if os.path.isabs(rel) or os.path.commonpath([self.root, path]) != self.root:
            raise ConfigError(f"routes.json: {where}: {rel!r} is outside the root")
        if not os.path.isfile(path):
            raise ConfigError(f"routes.json: {where}: no such file {rel!r} under {self.root}")
        return path


def _obj(data, key, where):
    value = data.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"routes.json: '{where}' must be an object")
    return value


def _int(data, key, where, minimum):
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"routes.json: '{where}' must be an integer ≥ {minimum}, not {value!r}")
    return value


def _num(data, key, where):
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"routes.json: '{where}' must be a positive number, not {value!r}")
    return float(value)


def _status(red, where):
    status = red.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 300 <= status <= 399:
        raise ConfigError(f"routes.json: {where}.status must be a 3xx status, not {status!r}")
    return status


def _location(red, key, where):
    value = red.get(key)
    if not isinstance(value, str) or not value or any(c in value for c in "\r\n"):
        raise ConfigError(f"routes.json: {where}.{key} must be a non-empty single-line string")
    return value


def load_routes(root):
    path = os.path.join(root, "routes.json")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # bad UTF-8 or bad JSON
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    return Routes(root, data)


# ---------------------------------------------------------------------------------------------------
# Shared state: rate limits, transient 503s, the request log


class RateLimiter:
    """A sliding window per client: over `limit` requests in the last `window` seconds (counting the
    current one, and counting refused ones) is too many."""

    def __init__(self, limit, window):
        self.limit = limit
        self.window = window
        self.lock = threading.Lock()
        # Only the newest limit+1 times matter: the window holds more than `limit` requests exactly
        # when the oldest of those is still inside it. So memory per client stays bounded. (Clients
        # are the few containers of one run; their entries are never pruned.)
        self.clients = {}

    def allow(self, client, now):
        with self.lock:
            times = self.clients.get(client)
            if times is None:
                times = self.clients[client] = collections.deque(maxlen=self.limit + 1)
            times.append(now)
            return not (len(times) > self.limit and now - times[0] < self.window)


class RequestBudget:
    """Requests one client may make in all: past `limit` (refused ones counted too) every request
    is refused, for the rest of the server's life."""

    def __init__(self, limit):
        self.limit = limit
        self.lock = threading.Lock()
        self.spent = collections.Counter()

    def spend(self, client):
        with self.lock:
            self.spent[client] += 1
            return self.spent[client] <= self.limit


class RequestLog:
    """The JSON-lines request log; one line per request, written whole under a lock and flushed.

    Every request served is logged: once the log reaches `max_bytes` (or cannot be written), the
    server answers every further request 503 without serving it, so no request goes unlogged."""

    def __init__(self, path, max_bytes=64 * 1024 * 1024):
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8")
        self.failed = False
        self.max_bytes = max_bytes
        self.written = self.file.tell()

    def full(self):
        with self.lock:
            return self.failed or self.written >= self.max_bytes

    def write(self, record):
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n"
        with self.lock:
            if self.written >= self.max_bytes:
                return
            try:
                self.file.write(line)
                self.file.flush()
                self.written += len(line)
            except (OSError, ValueError) as e:  # disk full, closed at shutdown: say it once, refuse from now on
                if not self.failed:
                    self.failed = True
                    print(f"gptx-web: cannot write the request log: {e}", file=sys.stderr, flush=True)

    def close(self):
        with self.lock:
            try:
                self.file.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------------
# The search form

SEARCH_PER_PAGE = 10
SEARCH_MAX_WORDS = 8


def search_page(host, search, query):
    """The results page of a host's search form: titles holding every query word, 10 a page."""
    path, entries = search
    params = urllib.parse.parse_qs(query, keep_blank_values=True) if query else {}
    q = " ".join(params.get("q", [""])[0].split())[:200]
    words = q.lower().split()[:SEARCH_MAX_WORDS]
    try:
        page = max(1, min(int(params.get("page", ["1"])[0]), 10_000))
    except ValueError:
        page = 1
    hits = [(t, p) for low, t, p in entries if words and all(w in low for w in words)]
    e = html.escape
    shown = hits[(page - 1) * SEARCH_PER_PAGE: page * SEARCH_PER_PAGE]
    body = [f'<form class="search" action="{e(path)}" method="get">'
            f'<input type="text" name="q" value="{e(q)}"> <button type="submit">Search</button></form>']
    if not words:
        body.append("<p>Type words that appear in a page's title.</p>")
    else:
        body.append(f"<p>{len(hits)} pages match <b>{e(q)}</b>.</p>")
        body.append('<ul class="results">' + "".join(
            f'<li><a href="{e(p)}">{e(t)}</a></li>' for t, p in shown) + "</ul>")
        if page * SEARCH_PER_PAGE < len(hits):
            nxt = urllib.parse.urlencode({"q": q, "page": page + 1})
            body.append(f'<p><a rel="next" href="{e(path)}?{e(nxt)}">More results</a></p>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>Search — {e(host)}</title>\n</head>\n<body>\n"
        f"<header class=\"site-header\"><a class=\"brand\" href=\"/\">{e(host)}</a></header>\n"
        "<main id=\"content\">\n<h1>Search</h1>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    ).encode("utf-8")


# ---------------------------------------------------------------------------------------------------
# The endless calendar trap


def trap_page(host, prefix, rest):
    """The calendar page at `prefix + rest`, or None when `rest` is not a valid month or day."""
    if rest == "":
        return _month_page(host, prefix, *TRAP_HOME_MONTH)
    m = TRAP_DATE.fullmatch(rest)
    if not m:
        return None
    year, month = int(m.group(1)), int(m.group(2))
    if not (1 <= year <= 9999 and 1 <= month <= 12):
        return None
    if m.group(3) is None:
        return _month_page(host, prefix, year, month)
    try:
        day = datetime.date(year, month, int(m.group(3)))
    except ValueError:
        return None
    return _day_page(host, prefix, day)


def _month_url(prefix, year, month):
    return f"{prefix}{year:04d}/{month:02d}/"


def _day_url(prefix, day):
    return f"{prefix}{day.year:04d}/{day.month:02d}/{day.day:02d}/"


def _month_name(year, month):
    return f"{MONTHS[month - 1]} {year}"


def _shift_day(day, days):
    try:
        return day + datetime.timedelta(days=days)
    except OverflowError:  # before year 1 or after 9999: the calendar ends there
        return None


def _page(host, prefix, title, body):
    e = html.escape
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{e(title)}</title>\n</head>\n<body>\n"
        f"<header class=\"site-header\">\n<a class=\"brand\" href=\"/\">{e(host)}</a>\n"
        "<nav class=\"top-nav\"><ul>\n<li><a href=\"/\">Home</a></li>\n"
        f"<li><a href=\"{e(prefix)}\">Events</a></li>\n</ul></nav>\n</header>\n"
        f"<main id=\"content\">\n<h1>{e(title)}</h1>\n{body}</main>\n"
        "<footer class=\"site-footer\"><p>Community events calendar.</p></footer>\n"
        "</body>\n</html>\n"
    ).encode("utf-8")


def _month_page(host, prefix, year, month):
    e = html.escape
    first = datetime.date(year, month, 1)
    days = []
    day = first
    while day is not None and day.month == month:
        label = f"{WEEKDAYS[day.weekday()]}, {day.day} {_month_name(year, month)}"
        days.append(f"<li><a href=\"{e(_day_url(prefix, day))}\">{e(label)}</a></li>\n")
        day = _shift_day(day, 1)
    pager = []
    prev_day = _shift_day(first, -1)
    if prev_day is not None:
        pager.append(f"<a class=\"prev\" href=\"{e(_month_url(prefix, prev_day.year, prev_day.month))}\">"
                     f"Previous month: {e(_month_name(prev_day.year, prev_day.month))}</a>")
    nxt = (year + month // 12, month % 12 + 1)
    if nxt[0] <= 9999:
        pager.append(f"<a class=\"next\" href=\"{e(_month_url(prefix, *nxt))}\">"
                     f"Next month: {e(_month_name(*nxt))}</a>")
    body = (
        "<p>Meetups, sprints and release parties, day by day.</p>\n"
        f"<p class=\"views\">Month view · "
        f"<a href=\"{e(_month_url(prefix, year, month))}?view=week\">Week view</a></p>\n"
        f"<ul class=\"days\">\n{''.join(days)}</ul>\n"
        f"<nav class=\"pager\">{' | '.join(pager)}</nav>\n"
    )
    return _page(host, prefix, f"Events — {_month_name(year, month)}", body)


def _day_page(host, prefix, day):
    e = html.escape
    pager = []
    prev_day, next_day = _shift_day(day, -1), _shift_day(day, 1)
    if prev_day is not None:
        pager.append(f"<a class=\"prev\" href=\"{e(_day_url(prefix, prev_day))}\">"
                     f"Previous day: {prev_day.isoformat()}</a>")
    if next_day is not None:
        pager.append(f"<a class=\"next\" href=\"{e(_day_url(prefix, next_day))}\">"
                     f"Next day: {next_day.isoformat()}</a>")
    month = _month_name(day.year, day.month)
    body = (
        f"<p>{WEEKDAYS[day.weekday()]}, {day.day} {e(month)}</p>\n"
        f"<p class=\"empty\">No events on {day.isoformat()}.</p>\n"
        f"<nav class=\"pager\">{' | '.join(pager)}</nav>\n"
        f"<p><a href=\"{e(_month_url(prefix, day.year, day.month))}\">Back to {e(month)}</a></p>\n"
    )
    return _page(host, prefix, f"Events — {day.isoformat()}", body)


# ---------------------------------------------------------------------------------------------------
# Requests


class Reply:
    """A response to send: status, body, content type, extra headers, and whether gzip may apply."""

    __slots__ = ("status", "body", "ctype", "headers", "compressible", "refused")

    def __init__(self, status, body, ctype=TEXT, headers=(), compressible=False):
        self.status = status
        self.body = body
        self.ctype = ctype
        self.headers = list(headers)
        self.compressible = compressible
        # Why it was refused, when the log should say so ("budget").
        self.refused = None


def text_reply(status, message, headers=()):
    return Reply(status, (message + "\n").encode("utf-8"), TEXT, headers)


def normalize_path(path):
    """Decodes percent-escapes of unreserved characters and upper-cases the rest (RFC 3986 §6.2.2),
    so equivalent spellings of a path find the same route."""
    def fix(m):
        c = chr(int(m.group(1), 16))
        return c if c in UNRESERVED else "%" + m.group(1).upper()
    return PCT.sub(fix, path) if "%" in path else path


def accepts_gzip(header):
    """Whether an Accept-Encoding value allows gzip (a `q=0` refuses it)."""
    for item in header.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() in ("gzip", "x-gzip"):
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


class World:
    """Routing over the loaded routes, with the state that outlives one request."""

    def __init__(self, routes):
        self.routes = routes
        self.limiter = RateLimiter(routes.rate_requests, routes.rate_seconds)
        self.budget = RequestBudget(routes.request_budget) if routes.request_budget else None
        self.answered_503 = set()  # (client, "host/path") already given their one 503
        self.lock = threading.Lock()

    def route(self, client, host, path, query):
        """The reply to a GET/HEAD of `host` + `path` (+ `query`, raw, or "") from `client`."""
        r = self.routes
        if host not in r.hosts:
            return text_reply(404, f"404 Not Found: no site is served at {host or '(no host)'}")
        _, not_found, trap = r.hosts[host]
        key = host + path

        red = r.redirects.get(key)
        if red is not None:
            return self._redirect(*red)
        for p_host, prefix, status, replace in r.redirect_prefixes:
            if p_host == host and path.startswith(prefix):
                location = replace + path[len(prefix):]
                return self._redirect(status, location + ("?" + query if query else ""))

        page = r.pages.get(key)
        if page is not None:
            ctype, file, print_file, transient = page
            if transient:
                with self.lock:
                    first = (client, key) not in self.answered_503
                    self.answered_503.add((client, key))
                if first:
                    return text_reply(503, "503 Service Unavailable: try again in a moment",
                                      [("Retry-After", "1")])
            params = urllib.parse.parse_qs(query, keep_blank_values=True) if query else {}
            if print_file is not None and "1" in params.get("print", ()):
                file = print_file
            return Reply(200, read_file(file), ctype, compressible=True)

        search = r.search.get(host)
        if search is not None and path == search[0]:
            return Reply(200, search_page(host, search, query), HTML, compressible=True)

        if trap is not None and path.startswith(trap):
            body = trap_page(host, trap, path[len(trap):])
            if body is not None:
                return Reply(200, body, HTML, compressible=True)

        if not path.endswith("/") and key + "/" in r.pages:
            return self._redirect(301, path + "/" + ("?" + query if query else ""))

        if not_found is not None:
            try:
                return Reply(r.not_found_status.get(host, 404), read_file(not_found), HTML)
            except OSError:
                pass
        return text_reply(404, f"404 Not Found: {path}")

    @staticmethod
    def _redirect(status, location):
        body = f"{status} Redirect: {location}"
        return text_reply(status, body, [("Location", location)])


def split_host(value):
    """The lower-cased host of a Host header or URI authority, without port or trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):  # IPv6 literal
        end = value.find("]")
        return value[: end + 1] if end > 0 else value
    return value.partition(":")[0].rstrip(".")


class Handler(BaseHTTPRequestHandler):
    """One connection; each request goes through `_serve`, malformed ones through `send_error`."""

    protocol_version = "HTTP/1.1"
    server_version = "gptx-web/1"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S  # socket timeout, applied by StreamRequestHandler.setup

    def handle_one_request(self):
        # Per-request fields for the log; the stdlib leaves the previous request's values around.
        self.log_host = ""
        self.log_path = None
        self.logged = False
        self.headers = None
        self.path = ""
        super().handle_one_request()

    # The stdlib looks up do_<METHOD> and answers 501 when it is missing; every method other than
    # GET and HEAD is answered 405 instead.
    def __getattr__(self, name):
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def do_GET(self):
        self._serve()

    def do_HEAD(self):
        self._serve()

    def _serve(self):
        world = self.server.world
        client = self.client_address[0] if self.client_address else ""
        try:
            self._discard_body()
        except OSError:  # timed out or reset mid-body: answer if still possible, then drop the connection
            self.close_connection = True
        try:
            target = self.path
            if target.startswith("/"):
                host = split_host(self.headers.get("Host", ""))
            elif "://" in target:  # absolute-URI request line, as sent to proxies
                parts = urllib.parse.urlsplit(target)
                host = split_host(parts.netloc.rpartition("@")[2])
                target = parts.path or "/"
                if parts.query:
                    target += "?" + parts.query
            else:
                self.log_path = target
                self.close_connection = True
                self._send(text_reply(400, "400 Bad Request: the target must be a path or an absolute URI"))
                return
            self.log_host, self.log_path = host, target
            path, _, query = target.partition("#")[0].partition("?")

            if self.server.log.full():
                # Nothing is served that the log cannot hold.
                self.close_connection = True
                reply = text_reply(503, "503 Service Unavailable: this world's request log is full")
            elif world.budget is not None and not world.budget.spend(client):
                reply = text_reply(
                    429, f"429 Too Many Requests: this crawl's budget of {world.budget.limit} requests is spent")
                reply.refused = "budget"
            elif not world.limiter.allow(client, time.monotonic()):
                limit = f"{world.routes.rate_requests} requests per {world.routes.rate_seconds:g} s"
                reply = text_reply(429, f"429 Too Many Requests: the limit is {limit}",
                                   [("Retry-After", "1")])
            elif self.command not in ("GET", "HEAD"):
                reply = text_reply(405, f"405 Method Not Allowed: {self.command}", [("Allow", "GET, HEAD")])
            else:
                reply = world.route(client, host, normalize_path(path), query)
                if reply.status == 200 and reply.compressible:
                    policy = world.routes.hosts[host][0]
                    accepted = accepts_gzip(self.headers.get("Accept-Encoding", ""))
                    if policy == "always" or (policy == "accept" and accepted):
                        reply.body = gzip.compress(reply.body, compresslevel=6, mtime=0)
                        reply.headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
                    elif policy == "accept":
                        reply.headers.append(("Vary", "Accept-Encoding"))
        except Exception:  # a bug must cost one request, not the server
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            reply = text_reply(500, "500 Internal Server Error")
        self._send(reply)

    def _discard_body(self):
        """Reads a small request body so the next request on the connection starts where it should;
        with a chunked or large one the connection is closed after the response instead."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return
        length = self.headers.get("Content-Length")
        if not length:
            return
        try:
            n = int(length)
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_DISCARD_BODY:
            self.close_connection = True
            return
        while n > 0:
            chunk = self.rfile.read(min(n, 65536))
            if not chunk:
                self.close_connection = True
                return
            n -= len(chunk)

    def _send(self, reply):
        """Writes the reply (no body for HEAD) and logs it; a client gone away only ends the connection."""
        sent = 0
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.ctype)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and reply.body:
                self.wfile.write(reply.body)
                sent = len(reply.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        finally:
            self._log(reply.status, sent, reply.refused)

    def send_error(self, code, message=None, explain=None):
        """The stdlib's answer to an unparseable request (400, 414, 431, 505...): a short text body,
        logged like any other request, and the connection closed."""
        self.close_connection = True
        # The stdlib writes no status line for HTTP/0.9, its default before the version is parsed;
        # a garbled HTTP/1.x request line still deserves one.
        version = getattr(self, "request_version", "HTTP/0.9")
        if version == "HTTP/0.9" and len(getattr(self, "raw_requestline", b"").split()) != 2:
            self.request_version = "HTTP/1.0"
        if not getattr(self, "command", None):
            self.command = ""
        phrase = message or self.responses.get(code, ("Error",))[0]
        self._send(text_reply(code, f"{code} {phrase}"))

    def _log(self, status, sent, refused=None):
        if self.logged:
            return
        self.logged = True
        headers = getattr(self, "headers", None)
        path = self.log_path
        if path is None:
            path = getattr(self, "path", None) or ""
        record = {
            "t": time.time(),
            "client": self.client_address[0] if self.client_address else "",
            "method": getattr(self, "command", None) or "",
            "host": self.log_host,
            "path": path,
            "status": status,
            "bytes": sent,
            "ua": (headers.get("User-Agent", "") if headers is not None else "") or "",
        }
        if refused:
            record["refused"] = refused
        self.server.log.write(record)

    # Silence the stdlib's stderr access log; the JSON log above replaces it.
    def log_request(self, code="-", size="-"):
        pass

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    """A threaded server with a cap on concurrent connections and quiet handling of vanished clients."""

    daemon_threads = True
    block_on_close = False  # SIGTERM must not wait for idle keep-alive connections
    request_queue_size = 128

    def __init__(self, address, world, log):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.world = world
        self.log = log
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, Handler)

    def server_bind(self):
        # HTTPServer.server_bind resolves the bind address with getfqdn, a DNS lookup that can stall
        # on an isolated network; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread could be started for it
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _refuse(self, request, client_address):
        """Too many connections: a canned 503 without reading the request, then close."""
        body = b"503 Service Unavailable: too many connections\n"
        try:
            request.settimeout(1.0)
            head = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
                    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n" % len(body))
            request.sendall(head + body)
            sent = len(body)
        except OSError:
            sent = 0
        self.log.write({"t": time.time(), "client": client_address[0] if client_address else "", "method": "",
                        "host": "", "path": "", "status": 503, "bytes": sent, "ua": ""})
        self.shutdown_request(request)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # reset, broken pipe, timeout: the client's business
            return
        print(f"gptx-web: error serving {client_address}:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()


# ---------------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="directory holding routes.json and the site files")
    ap.add_argument("--log", required=True, help="request log (JSON lines, appended)")
    ap.add_argument("--port", type=int, default=80, help="port to listen on (0: any free port)")
    ap.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    ap.add_argument("--log-max-bytes", type=int, default=64 * 1024 * 1024,
                    help="past this the log takes no more lines and every request is answered 503")
    args = ap.parse_args(argv)

    try:
        routes = load_routes(args.root)
    except ConfigError as e:
        print(f"gptx-web: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        log = RequestLog(args.log, args.log_max_bytes)
    except OSError as e:
        print(f"gptx-web: cannot open the request log {args.log}: {e.strerror or e}",
              file=sys.stderr, flush=True)
        return 2
    try:
        server = Server((args.bind, args.port), World(routes), log)
    except (OSError, OverflowError) as e:
        print(f"gptx-web: cannot listen on {args.bind}:{args.port}: {e}", file=sys.stderr, flush=True)
        log.close()
        return 1

    # SIGTERM (docker stop) and SIGINT end the process at once: the log is closed under its lock (no
    # half-written line) and the process exits without unwinding the main thread or finalising the
    # interpreter. Unwinding serve_forever by an exception could stall under load (seen with two busy
    # cores: the server outlived a 20 s grace after SIGTERM); requests in flight are abandoned.
    def stop(signum, frame):
        log.close()
        sys.stdout.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"gptx-web listening on {args.bind}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        log.close()
    return 0


if __name__ == "__main__":
    code = main()
    # Leave without interpreter finalisation: daemon threads still blocked on idle keep-alive sockets
    # can stall it, and nothing is left to flush (the log is closed, stdout is flushed per line).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
