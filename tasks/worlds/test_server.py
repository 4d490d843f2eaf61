#!/usr/bin/env python3
"""Tests of the offline world's web server (server.py), run as a subprocess and spoken to over HTTP.

Run: python3 tasks/worlds/test_server.py
"""
import gzip
import http.client
import importlib.util
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
DOCS = "docs.gptx.test"
BLOG = "blog.gptx.test"
SQ = "sqlite.gptx.test"

FILES = {
    "sites/docs/index.html": b"<html><body>docs home</body></html>\n",
    "sites/docs/os.html": b"<html><body>os module \xe2\x80\x94 utf-8</body></html>\n",
    "sites/docs/_print/os.html": b"<html><body>os (print)</body></html>\n",
    "sites/docs/flaky.html": b"<html><body>flaky page</body></html>\n",
    "sites/docs/guide/index.html": b"<html><body>guide</body></html>\n",
    "sites/docs/_404.html": b"<html><body>docs: page not found</body></html>\n",
    "sites/blog/post.html": b"<html><body>caf\xe9 cr\xe8me br\xfbl\xe9e</body></html>\n",
    "sites/blog/index.html": b"<html><body>" + b"blog index " * 200 + b"</body></html>\n",
    "sites/sq/_404.html": b"<html><body>Page not found. Try the search.</body></html>\n",
    "sites/sq/lang.html": b"<html><body>SQL as understood by SQLite</body></html>\n",
    "sites/sq/_search.json": json.dumps(
        [{"title": f"Pragma number {i}", "path": f"/pragma{i}.html"} for i in range(23)]
        + [{"title": "SQL Language <Expressions>", "path": "/lang_expr.html"}]).encode(),
}
LATIN1 = "text/html; charset=iso-8859-1"
UTF8 = "text/html; charset=utf-8"


def routes(rate_requests):
    return {
        "version": 1,
        "rate_limit": {"requests": rate_requests, "per_seconds": 1.0},
        "hosts": {
            DOCS: {"gzip": "accept", "not_found": "sites/docs/_404.html", "trap": {"prefix": "/events/"}},
            BLOG: {"gzip": "always", "not_found": None, "trap": None},
            SQ: {"gzip": "never", "not_found": "sites/sq/_404.html", "trap": None, "soft_404": True,
                 "search": {"path": "/search", "index": "sites/sq/_search.json"}},
        },
        "pages": {
            f"{DOCS}/": {"file": "sites/docs/index.html", "type": UTF8},
            f"{DOCS}/library/os.html": {"file": "sites/docs/os.html", "type": UTF8,
                                        "print": "sites/docs/_print/os.html"},
            f"{DOCS}/flaky.html": {"file": "sites/docs/flaky.html", "type": UTF8, "transient_503": True},
            f"{DOCS}/guide/": {"file": "sites/docs/guide/index.html", "type": UTF8},
            f"{BLOG}/": {"file": "sites/blog/index.html", "type": UTF8},
            f"{BLOG}/posts/cafe/": {"file": "sites/blog/post.html", "type": LATIN1},
            f"{SQ}/lang.html": {"file": "sites/sq/lang.html", "type": UTF8},
        },
        "redirects": {
            f"{DOCS}/latest/": {"status": 302, "location": f"http://{DOCS}/"},
            f"{DOCS}/loop/a": {"status": 302, "location": "/loop/b"},
            f"{DOCS}/loop/b": {"status": 302, "location": "/loop/a"},
        },
        "redirect_prefixes": [
            {"host": DOCS, "prefix": "/old/", "status": 301, "replace": "/"},
            {"host": BLOG, "prefix": "/p/", "status": 301, "replace": "/posts/"},
        ],
    }


def make_root(rate_requests, budget=None):
    root = tempfile.mkdtemp(prefix="gptx-web-test-")
    for rel, data in FILES.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    r = routes(rate_requests)
    if budget is not None:
        r["request_budget"] = budget
    with open(os.path.join(root, "routes.json"), "w") as f:
        json.dump(r, f)
    return root


class Running:
    """server.py in a subprocess on 127.0.0.1 and a free port, with its own root and log."""

    def __init__(self, rate_requests, extra=(), budget=None):
        self.root = make_root(rate_requests, budget)
        self.log = os.path.join(self.root, "requests.jsonl")
        self.stderr = open(os.path.join(self.root, "stderr.txt"), "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", SERVER, "--root", self.root, "--log", self.log, "--port", "0",
             "--bind", "127.0.0.1", *extra],
            stdout=subprocess.PIPE, stderr=self.stderr)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("gptx-web listening on 127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"server did not start: {line!r} {self.stderr_text()}")
        self.port = int(line.strip().rpartition(":")[2])

    def stderr_text(self):
        self.stderr.seek(0)
        return self.stderr.read()

    def log_lines(self):
        with open(self.log) as f:
            return [json.loads(line) for line in f]

    def stop(self):
        """SIGTERM; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)  # generous: CI runs this beside heavy tests on 2 cores
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)
        return self.proc.returncode


class ServerCase(unittest.TestCase):
    """Shared helpers: each request is checked against the log line it must produce."""

    rate = 1000
    budget = None
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = Running(cls.rate, budget=cls.budget)

    @classmethod
    def tearDownClass(cls):
        stderr = cls.server.stderr_text()
        rc = cls.server.stop()
        if rc != 0:
            raise AssertionError(f"server exited with {rc} on SIGTERM")
        if "Traceback" in stderr:
            raise AssertionError(f"server printed a traceback:\n{stderr}")

    def expect_logged(self, before, **fields):
        """Waits for the log line after `before` lines and checks its fields."""
        deadline = time.monotonic() + 3
        while True:
            lines = self.server.log_lines()
            if len(lines) > before or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self.assertEqual(len(lines), before + 1, f"expected one new log line, got {lines[before:]}")
        line = lines[before]
        for key, value in fields.items():
            self.assertEqual(line[key], value, f"log field {key} of {line}")
        keys = {"t", "client", "method", "host", "path", "status", "bytes", "ua"}
        self.assertEqual(set(line) - {"refused"}, keys)
        self.assertEqual(line["client"], "127.0.0.1")
        self.assertIsInstance(line["t"], float)
        return line

    def request(self, path, host=DOCS, method="GET", headers=None, conn=None, log_host=None):
        """(response, raw body); asserts the request was logged with its status and body size
        (and `log_host`, the host as the server understood it, when it differs from the header)."""
        before = len(self.server.log_lines())
        own = conn is None
        if own:
            conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
        try:
            h = {"Host": host, "User-Agent": "gptx-test/1"}
            h.update(headers or {})
            conn.request(method, path, headers=h)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            if own:
                conn.close()
        if method != "HEAD":
            self.assertEqual(int(resp.getheader("Content-Length")), len(body))
        self.expect_logged(before, method=method, host=log_host or host, path=path, status=resp.status,
                           bytes=len(body), ua="gptx-test/1")
        return resp, body


class TestLogCap(unittest.TestCase):
    """A full request log serves nothing more: no request goes unlogged."""

    def test_past_the_cap_every_request_is_refused(self):
        server = Running(1000, ["--log-max-bytes", "1500"])
        try:
            statuses = []
            for i in range(30):
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
                conn.request("GET", f"/nope-{i}", headers={"Host": DOCS})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                statuses.append(resp.status)
            logged = server.log_lines()
            self.assertIn(503, statuses)
            self.assertEqual(statuses.index(503), len(logged), f"{statuses} {len(logged)}")
            self.assertTrue(all(s == 503 for s in statuses[len(logged):]), statuses)
            self.assertLessEqual(os.path.getsize(server.log), 1500 + 400)
        finally:
            server.stop()


class TestPages(ServerCase):
    def test_page_bytes_exact(self):
        resp, body = self.request("/library/os.html")
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, FILES["sites/docs/os.html"])
        self.assertEqual(resp.getheader("Content-Type"), UTF8)
        self.assertIsNone(resp.getheader("Content-Encoding"))

    def test_latin1_unchanged(self):
        resp, body = self.request("/posts/cafe/", host=BLOG, headers={"Accept-Encoding": "identity"})
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Content-Type"), LATIN1)
        self.assertEqual(gzip.decompress(body), FILES["sites/blog/post.html"])  # blog gzips always
        self.assertIn(b"caf\xe9", gzip.decompress(body))

    def test_session_parameter_same_page(self):
        _, plain = self.request("/library/os.html")
        resp, body = self.request("/library/os.html?sid=xyz&lang=en")
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, plain)

    def test_print_view(self):
        resp, body = self.request("/library/os.html?print=1")
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, FILES["sites/docs/_print/os.html"])
        _, body = self.request("/?print=1")  # no print view: the page itself
        self.assertEqual(body, FILES["sites/docs/index.html"])

    def test_transient_503_then_200(self):
        resp, _ = self.request("/flaky.html")
        self.assertEqual(resp.status, 503)
        self.assertEqual(resp.getheader("Retry-After"), "1")
        resp, body = self.request("/flaky.html")
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, FILES["sites/docs/flaky.html"])
        resp, _ = self.request("/flaky.html?print=1")
        self.assertEqual(resp.status, 200)

    def test_host_header_port_and_case(self):
        resp, body = self.request("/", host="Docs.GPTX.test:80", log_host=DOCS)
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, FILES["sites/docs/index.html"])

    def test_percent_encoded_unreserved(self):
        resp, body = self.request("/library/%6Fs.html")
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, FILES["sites/docs/os.html"])

    def test_head_has_no_body(self):
        resp, body = self.request("/library/os.html", method="HEAD")
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, b"")
        self.assertEqual(int(resp.getheader("Content-Length")), len(FILES["sites/docs/os.html"]))

    def test_head_gzip_length(self):
        resp, body = self.request("/", host=BLOG, method="HEAD")
        self.assertEqual(body, b"")
        _, full = self.request("/", host=BLOG)
        self.assertEqual(int(resp.getheader("Content-Length")), len(full))

    def test_post_405(self):
        before = len(self.server.log_lines())
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
        conn.request("POST", "/", body=b"hello", headers={"Host": DOCS})
        resp = conn.getresponse()
        resp.read()
        self.assertEqual(resp.status, 405)
        self.assertEqual(resp.getheader("Allow"), "GET, HEAD")
        self.expect_logged(before, method="POST", status=405)
        # the body was discarded, so the connection still works
        resp, body = self.request("/", conn=conn)
        self.assertEqual(body, FILES["sites/docs/index.html"])
        conn.close()

    def test_other_method_405(self):
        resp, _ = self.request("/", method="BREW")
        self.assertEqual(resp.status, 405)

    def test_keep_alive(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
        for _ in range(3):
            resp, body = self.request("/library/os.html", conn=conn)
            self.assertEqual(body, FILES["sites/docs/os.html"])
            self.assertFalse(resp.will_close)
        conn.close()


class TestRedirects(ServerCase):
    def test_prefix_301_keeps_query(self):
        resp, _ = self.request("/old/library/os.html?sid=1")
        self.assertEqual(resp.status, 301)
        self.assertEqual(resp.getheader("Location"), "/library/os.html?sid=1")
        resp, _ = self.request("/p/cafe/", host=BLOG)
        self.assertEqual(resp.status, 301)
        self.assertEqual(resp.getheader("Location"), "/posts/cafe/")

    def test_exact_302(self):
        resp, _ = self.request("/latest/")
        self.assertEqual(resp.status, 302)
        self.assertEqual(resp.getheader("Location"), f"http://{DOCS}/")

    def test_loop_returns_each_redirect(self):
        resp, _ = self.request("/loop/a")
        self.assertEqual((resp.status, resp.getheader("Location")), (302, "/loop/b"))
        resp, _ = self.request("/loop/b")
        self.assertEqual((resp.status, resp.getheader("Location")), (302, "/loop/a"))

    def test_add_slash(self):
        resp, _ = self.request("/guide")
        self.assertEqual(resp.status, 301)
        self.assertEqual(resp.getheader("Location"), "/guide/")
        resp, _ = self.request("/posts/cafe", host=BLOG)
        self.assertEqual((resp.status, resp.getheader("Location")), (301, "/posts/cafe/"))


class TestNotFound(ServerCase):
    def test_404_with_not_found_page(self):
        resp, body = self.request("/no/such/page.html")
        self.assertEqual(resp.status, 404)
        self.assertEqual(body, FILES["sites/docs/_404.html"])
        self.assertEqual(resp.getheader("Content-Type"), UTF8)

    def test_404_without_not_found_page(self):
        resp, body = self.request("/nothing", host=BLOG)
        self.assertEqual(resp.status, 404)
        self.assertTrue(body)
        self.assertIsNone(resp.getheader("Content-Encoding"))  # errors are never gzipped

    def test_unknown_host(self):
        resp, body = self.request("/", host="evil.example")
        self.assertEqual(resp.status, 404)
        self.assertIn(b"evil.example", body)


class TestSoft404(ServerCase):
    def test_a_soft_404_host_answers_200_with_its_not_found_page(self):
        resp, body = self.request("/no/such/page.html", host=SQ)
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, FILES["sites/sq/_404.html"])
        self.assertEqual(self.server.log_lines()[-1]["status"], 200)
        resp, _ = self.request("/lang.html", host=SQ)
        self.assertEqual(resp.status, 200)

    def test_other_hosts_keep_a_real_404(self):
        resp, _ = self.request("/no/such/page.html")
        self.assertEqual(resp.status, 404)


class TestSearch(ServerCase):
    def test_every_word_must_be_in_the_title_and_results_come_ten_a_page(self):
        resp, body = self.request("/search?q=PRAGMA+number", host=SQ)
        self.assertEqual(resp.status, 200)
        self.assertIn(b"23 pages match", body)
        self.assertEqual(body.count(b'<li><a href="/pragma'), 10)
        self.assertIn(b'href="/search?q=PRAGMA+number&amp;page=2"', body)
        _, last = self.request("/search?q=PRAGMA+number&page=3", host=SQ)
        self.assertEqual(last.count(b'<li><a href="/pragma'), 3)
        self.assertNotIn(b"More results", last)
        _, both = self.request("/search?q=pragma+expressions", host=SQ)
        self.assertIn(b"0 pages match", both)

    def test_titles_and_queries_are_escaped_and_odd_input_is_harmless(self):
        _, body = self.request("/search?q=%3Cexpr", host=SQ)
        self.assertIn(b"SQL Language &lt;Expressions&gt;", body)
        self.assertIn(b'value="&lt;expr"', body)
        for q in ["/search", "/search?q=", "/search?page=x&q=pragma", "/search?q=%ff%fe&page=-5"]:
            resp, body = self.request(q, host=SQ)
            self.assertEqual(resp.status, 200, q)
            self.assertIn(b'<form class="search"', body)

    def test_a_huge_query_is_cut_and_its_echo_stays_small(self):
        # An agent that wants text of its own choosing on a served page (or a slow server) sends
        # a 60 KB query: the page echoes at most 200 characters of it and matches 8 words.
        q = "pragma+" * 8_000 + "x" * 4_000
        resp, body = self.request(f"/search?q={q}", host=SQ)
        self.assertEqual(resp.status, 200)
        self.assertLess(len(body), 4_000)
        self.assertNotIn(b"x" * 201, body)
        self.assertIn(b"23 pages match", body)

    def test_no_search_on_a_host_without_one(self):
        resp, _ = self.request("/search?q=os")
        self.assertEqual(resp.status, 404)

    def test_a_bad_search_index_is_refused_naming_the_key(self):
        root = make_root(1000)
        with open(os.path.join(root, "sites/sq/_search.json"), "w") as f:
            f.write('[{"title": 3}]')
        proc = subprocess.run([sys.executable, SERVER, "--root", root, "--log", os.path.join(root, "l"),
                               "--port", "0", "--bind", "127.0.0.1"], capture_output=True, timeout=10)
        shutil.rmtree(root, ignore_errors=True)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b".search.index", proc.stderr)


class TestGzip(ServerCase):
    def test_always(self):
        resp, body = self.request("/", host=BLOG)
        self.assertEqual(resp.getheader("Content-Encoding"), "gzip")
        self.assertEqual(resp.getheader("Vary"), "Accept-Encoding")
        self.assertEqual(gzip.decompress(body), FILES["sites/blog/index.html"])

    def test_accept(self):
        resp, body = self.request("/library/os.html", headers={"Accept-Encoding": "gzip, deflate"})
        self.assertEqual(resp.getheader("Content-Encoding"), "gzip")
        self.assertEqual(gzip.decompress(body), FILES["sites/docs/os.html"])
        resp, body = self.request("/library/os.html", headers={"Accept-Encoding": "identity"})
        self.assertIsNone(resp.getheader("Content-Encoding"))
        self.assertEqual(body, FILES["sites/docs/os.html"])
        resp, body = self.request("/library/os.html", headers={"Accept-Encoding": "gzip;q=0"})
        self.assertIsNone(resp.getheader("Content-Encoding"))

    def test_trap_gzip(self):
        resp, body = self.request("/events/", headers={"Accept-Encoding": "gzip"})
        self.assertEqual(resp.getheader("Content-Encoding"), "gzip")
        self.assertIn(b"November 2026", gzip.decompress(body))


class TestTrap(ServerCase):
    def test_events_home_is_november_2026(self):
        resp, body = self.request("/events/")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Content-Type"), UTF8)
        text = body.decode("utf-8")
        self.assertIn("<title>Events — November 2026</title>", text)
        self.assertIn('href="/"', text)
        self.assertIn('href="/events/2026/11/01/"', text)
        self.assertIn('href="/events/2026/11/30/"', text)
        self.assertNotIn('href="/events/2026/11/31/"', text)
        self.assertIn('href="/events/2026/12/"', text)
        self.assertIn('href="/events/2026/10/"', text)
        self.assertIn('href="/events/2026/11/?view=week"', text)

    def test_month_pages_never_end(self):
        _, body = self.request("/events/2026/12/")
        self.assertIn(b"Events \xe2\x80\x94 December 2026", body)
        self.assertIn(b'href="/events/2027/01/"', body)
        _, again = self.request("/events/2026/12/?view=week")
        self.assertEqual(body, again)  # deterministic from the path
        _, feb = self.request("/events/2024/02/")
        self.assertIn(b'href="/events/2024/02/29/"', feb)

    def test_day_page(self):
        resp, body = self.request("/events/2026/11/05/")
        self.assertEqual(resp.status, 200)
        self.assertIn(b"No events on 2026-11-05", body)
        self.assertIn(b'href="/events/2026/11/04/"', body)
        self.assertIn(b'href="/events/2026/11/06/"', body)
        self.assertIn(b'href="/events/2026/11/"', body)
        _, body = self.request("/events/2026/12/31/")
        self.assertIn(b'href="/events/2027/01/01/"', body)

    def test_edges_of_the_calendar(self):
        resp, body = self.request("/events/9999/12/31/")
        self.assertEqual(resp.status, 200)
        self.assertNotIn(b"10000", body)
        resp, body = self.request("/events/0001/01/")
        self.assertEqual(resp.status, 200)
        self.assertNotIn(b"Previous month", body)

    def test_bad_dates_404(self):
        for path in ("/events/2026/13/", "/events/2026/02/30/", "/events/0000/01/", "/events/2026/1/",
                     "/events/2026/11", "/events/abc/", "/events/2026/11/05/x/"):
            resp, body = self.request(path)
            self.assertEqual(resp.status, 404, path)
            self.assertEqual(body, FILES["sites/docs/_404.html"])

    def test_no_trap_on_other_host(self):
        resp, _ = self.request("/events/", host=BLOG)
        self.assertEqual(resp.status, 404)


class TestRobustness(ServerCase):
    def raw(self, data, timeout=5):
        """Sends raw bytes and reads until the server closes the connection."""
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=timeout) as s:
            s.sendall(data)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk

    def test_garbage_request_line(self):
        before = len(self.server.log_lines())
        out = self.raw(b"\x00\xff garbage !! \r\n\r\n")
        self.assertIn(b"400", out)
        self.expect_logged(before, status=400)
        resp, body = self.request("/")
        self.assertEqual(body, FILES["sites/docs/index.html"])

    def test_bad_version_and_long_line(self):
        before = len(self.server.log_lines())
        out = self.raw(b"GET / HTTP/9.9\r\nHost: docs.gptx.test\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1."), out)
        self.expect_logged(before, status=505)
        # exactly one byte over the stdlib's 65536-byte line limit, so nothing is left unread
        out = self.raw(b"GET /" + b"a" * (65537 - 5))
        self.assertIn(b"414", out)
        self.expect_logged(before + 1, status=414)
        resp, _ = self.request("/")
        self.assertEqual(resp.status, 200)

    def test_absolute_uri_request_line(self):
        before = len(self.server.log_lines())
        out = self.raw(b"GET http://docs.gptx.test/library/os.html?x=1 HTTP/1.1\r\nHost: ignored\r\n"
                       b"Connection: close\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:100])
        self.assertTrue(out.endswith(FILES["sites/docs/os.html"]))
        self.expect_logged(before, host=DOCS, path="/library/os.html?x=1", status=200)

    def test_silent_client_does_not_block_others(self):
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=5) as idle:
            idle.sendall(b"GET / HT")  # half a request line, then nothing
            resp, body = self.request("/")
            self.assertEqual(body, FILES["sites/docs/index.html"])

    def test_client_disconnects_mid_response(self):
        before = len(self.server.log_lines())
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: blog.gptx.test\r\n\r\n")
        self.expect_logged(before, host=BLOG, status=200)  # bytes: whatever got out before the reset
        resp, _ = self.request("/")
        self.assertEqual(resp.status, 200)


class TestRateLimit(ServerCase):
    rate = 5

    def test_429_after_the_limit(self):
        for _ in range(5):
            resp, _ = self.request("/")
            self.assertEqual(resp.status, 200)
        resp, body = self.request("/")
        self.assertEqual(resp.status, 429)
        self.assertEqual(resp.getheader("Retry-After"), "1")
        self.assertTrue(body)
        resp, _ = self.request("/library/os.html")  # refused requests count too
        self.assertEqual(resp.status, 429)
        time.sleep(1.1)
        resp, _ = self.request("/")
        self.assertEqual(resp.status, 200)


class TestRequestBudget(ServerCase):
    budget = 4

    def test_429_for_the_rest_once_the_budget_is_spent_and_logged_as_such(self):
        for path in ["/", "/library/os.html", "/", "/robots.txt"]:
            resp, _ = self.request(path)
            self.assertNotEqual(resp.status, 429)
        for path in ["/", "/library/os.html"]:
            before = len(self.server.log_lines())
            resp, body = self.request(path)
            self.assertEqual(resp.status, 429)
            self.assertIn(b"budget of 4 requests is spent", body)
            self.assertEqual(self.server.log_lines()[before].get("refused"), "budget")
        # Waiting does not bring the budget back (a rate limit would).
        time.sleep(1.1)
        resp, _ = self.request("/")
        self.assertEqual(resp.status, 429)
        lines = self.server.log_lines()
        self.assertTrue(all("refused" not in l for l in lines[:4]))

    def test_a_bad_budget_is_refused_naming_the_key(self):
        root = make_root(1000, budget=0)
        proc = subprocess.run([sys.executable, SERVER, "--root", root, "--log", os.path.join(root, "l"),
                               "--port", "0", "--bind", "127.0.0.1"], capture_output=True, timeout=10)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b"request_budget", proc.stderr)


class TestFunctions(unittest.TestCase):
    """The pure helpers, imported directly."""

    @classmethod
    def setUpClass(cls):
        spec = importlib.util.spec_from_file_location("gptx_web_server", SERVER)
        cls.m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cls.m)

    def test_trap_page(self):
        page = self.m.trap_page
        self.assertIsNone(page("h", "/events/", "\uff12\uff10\uff12\uff16/11/"))  # no non-ASCII digits
        self.assertIsNone(page("h", "/events/", "2026/11/31/"))
        self.assertIn(b"No events on 2028-02-29", page("h", "/events/", "2028/02/29/"))
        self.assertEqual(page("h", "/events/", ""), page("h", "/events/", "2026/11/"))

    def test_normalize_path(self):
        self.assertEqual(self.m.normalize_path("/%7euser/%2f%41"), "/~user/%2FA")
        self.assertEqual(self.m.normalize_path("/100%/x"), "/100%/x")

    def test_accepts_gzip(self):
        ok = self.m.accepts_gzip
        self.assertTrue(ok("gzip, deflate, br"))
        self.assertTrue(ok("br;q=1.0, GZIP;q=0.5"))
        self.assertFalse(ok("gzip;q=0"))
        self.assertFalse(ok("identity"))
        self.assertFalse(ok("gzip;q=bad"))

    def test_split_host(self):
        self.assertEqual(self.m.split_host("Docs.GPTX.test:8080"), "docs.gptx.test")
        self.assertEqual(self.m.split_host("docs.gptx.test."), "docs.gptx.test")
        self.assertEqual(self.m.split_host("[::1]:80"), "[::1]")


class TestStartup(unittest.TestCase):
    def run_server(self, mutate):
        root = make_root(10)
        try:
            with open(os.path.join(root, "routes.json")) as f:
                data = json.load(f)
            mutate(data)
            with open(os.path.join(root, "routes.json"), "w") as f:
                json.dump(data, f)
            return subprocess.run(
                [sys.executable, SERVER, "--root", root, "--log", os.path.join(root, "log"), "--port", "0",
                 "--bind", "127.0.0.1"], capture_output=True, text=True, timeout=10)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def test_malformed_routes_exit_2_naming_the_key(self):
        cases = [
            (lambda d: d["rate_limit"].pop("requests"), "rate_limit.requests"),
            (lambda d: d["hosts"][DOCS].update(gzip="sometimes"), "gzip"),
            (lambda d: d["pages"][f"{DOCS}/"].update(file="../../etc/passwd"), f"pages['{DOCS}/'].file"),
            (lambda d: d["pages"][f"{DOCS}/"].update(file="missing.html"), f"pages['{DOCS}/'].file"),
            (lambda d: d["redirects"][f"{DOCS}/latest/"].update(status=200), "status"),
            (lambda d: d["pages"].update({"nohost.test/": d["pages"][f"{DOCS}/"]}), "nohost.test/"),
            (lambda d: d["redirect_prefixes"][1].update(prefix="p/"), "redirect_prefixes[1].prefix"),
            (lambda d: d.update(version=2), "version"),
        ]
        for mutate, key in cases:
            out = self.run_server(mutate)
            self.assertEqual(out.returncode, 2, out.stderr)
            self.assertIn(key, out.stderr)
            self.assertEqual(out.stdout, "")

    def test_not_json(self):
        root = make_root(10)
        try:
            with open(os.path.join(root, "routes.json"), "w") as f:
                f.write("{not json")
            out = subprocess.run([sys.executable, SERVER, "--root", root, "--log", os.path.join(root, "log"),
                                  "--port", "0"], capture_output=True, text=True, timeout=10)
            self.assertEqual(out.returncode, 2)
            self.assertIn("not valid JSON", out.stderr)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
