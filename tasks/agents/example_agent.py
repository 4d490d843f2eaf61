#!/usr/bin/env python3
"""An example external agent for `gptx run --agent exec:python3 tasks/agents/example_agent.py`.

It speaks gptx's JSON-lines protocol (SPEC §8) on stdin/stdout and logs to stderr (gptx keeps
stderr in the trace). It is a template to copy, not a competitor: in `crawl` it writes and runs a
small breadth-first crawler that honours robots.txt; in every other stage it looks around, calls
`check` and submits. Replace `plan()` with your agent's brain.

Protocol, in short:
  gptx -> agent  {"type":"task","stage":s,"instruction":s,"tools":[...],"limits":{...}}
  agent -> gptx  {"type":"call","id":s,"tool":s,"args":{...}}
  gptx -> agent  {"type":"result","id":s,"ok":true,"output":{...}}
                 {"type":"result","id":s,"ok":false,"error":{"code":s,"message":s}}
  gptx -> agent  {"type":"stop","reason":s}      a budget ended the stage
                 {"type":"done","level":s,"bootstrap_index":f,
                  "stages":[{"stage":s,"passed":b,"status":s,"ended_by":s,"reason":s}]}
  Each stage's instruction ends with "How this stage is graded": every fact the grade depends on.
"""

import json
import re
import sys

CRAWLER = r'''
import collections, html.parser, json, sys, time, urllib.parse, urllib.request, urllib.robotparser

seeds, limit = sys.argv[1].split(","), int(sys.argv[2])

class Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts, self.links, self.skip = [], [], 0
    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "nav", "footer", "header"):
            self.skip += 1
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)
    def handle_endtag(self, tag):
        if tag in ("script", "style", "nav", "footer", "header") and self.skip:
            self.skip -= 1
    def handle_data(self, data):
        if not self.skip and data.strip():
            self.parts.append(data.strip())

robots, seen, out = {}, set(), []
queue = collections.deque(seeds)
while queue and len(out) < limit:
    url = urllib.parse.urldefrag(queue.popleft())[0]
    if url in seen or "?" in url:
        continue
    seen.add(url)
    host = urllib.parse.urlsplit(url).netloc
    if host not in robots:
        rp = urllib.robotparser.RobotFileParser(f"http://{host}/robots.txt")
        try:
            rp.read()
        except Exception:
            rp.parse([])
        robots[host] = rp
    if not robots[host].can_fetch("example-agent", url):
        continue
    time.sleep(0.1)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            if "html" not in r.headers.get("Content-Type", ""):
                continue
            page = r.read().decode(r.headers.get_content_charset() or "utf-8", "replace")
    except Exception as e:
        print(f"{url}: {e}", file=sys.stderr)
        continue
    p = Text()
    p.feed(page)
    text = "\n".join(p.parts)
    if len(text) > 200:
        out.append({"url": url, "text": text})
    for link in p.links:
        nxt = urllib.parse.urljoin(url, link)
        if urllib.parse.urlsplit(nxt).netloc == host and "/events/" not in nxt:
            queue.append(nxt)
with open("data/corpus.jsonl", "w") as f:
    for d in out:
        f.write(json.dumps(d) + "\n")
print(f"{len(out)} documents from {len(seen)} URLs")
'''


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def log(text):
    print(f"[example-agent] {text}", file=sys.stderr, flush=True)


def plan(task):
    """The tool calls for one stage, as (tool, args) pairs."""
    stage, limits = task["stage"], task["limits"]
    calls = [("bash", {"cmd": "ls -la && df -h /workspace | tail -1"})]
    if stage == "crawl":
        seeds = re.findall(r"https?://[^\s)>`]+/", task["instruction"])
        step = int(limits.get("max_step_seconds", 60))
        calls += [
            ("write_file", {"path": "crawler.py", "content": CRAWLER}),
            ("bash", {"cmd": f"mkdir -p data && python3 crawler.py {','.join(seeds)} 60",
                      "timeout_s": step}),
        ]
    return calls + [("check", {}), ("submit", {})]


def main():
    n = 0
    for line in sys.stdin:
        msg = json.loads(line)
        kind = msg.get("type")
        if kind == "done":
            log(f"done: level {msg['level']}, Bootstrap Index {msg['bootstrap_index']:.1f}")
            for s in msg.get("stages", []):
                verdict = "passed" if s["passed"] else f"not passed: {s.get('reason', s['status'])}"
                log(f"  {s['stage']}: {verdict}")
            return
        if kind == "stop":
            log(f"stopped: {msg['reason']}")
            continue
        if kind != "task":
            continue
        log(f"stage {msg['stage']}: {len(msg['instruction'])} characters of instruction")
        for tool, args in plan(msg):
            n += 1
            send({"type": "call", "id": f"c{n}", "tool": tool, "args": args})
            reply = json.loads(sys.stdin.readline() or "null")
            if reply is None:
                return
            if reply.get("type") == "stop":
                log(f"stopped: {reply['reason']}")
                break
            if reply.get("type") == "done":
                log(f"done: level {reply['level']}")
                return
            out = reply.get("output") if reply.get("ok") else reply.get("error")
            log(f"{tool} -> ok={reply.get('ok')} {json.dumps(out)[:200]}")


if __name__ == "__main__":
    main()
